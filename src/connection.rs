//! One client's connection: CONNECT handshake with a timeout, then a single task that reads,
//! handles and writes. It decodes every complete frame already buffered before reading again,
//! and writes everything ready (acks and queued deliveries) from one buffer, one syscall per
//! batch. Keepalive is enforced in the read path.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mqttbytes::QoS;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::live::AuthState;
use crate::config::Config;
use crate::message::Publication;
use crate::protocol::codec::{self, Ack};
use crate::protocol::topic::validate_topic_filter;
use crate::protocol::{decode, Connect, Packet, ProtocolError, Will};
use crate::router::{MatchBuffer, Router};
use crate::session::{
    Attachment, DropReason, LoadRequest, Outgoing, Session, LOAD_BYTES, LOAD_MESSAGES,
};
use crate::storage::{LoadedChunk, StorageError};

/// Buffers larger than this are freed when they empty.
const SHRINK_ABOVE: usize = 64 * 1024;
/// A client silent this long (ms) gets its empty buffers freed (`Router::sweep` wakes it).
pub const IDLE_AFTER_MS: u64 = 10_000;
/// Read buffer reserve per read while the client is quiet; idle connections stay this small.
const READ_CHUNK: usize = 1024;
/// Largest reserve per read: a busy client doubles its reserve up to this (fewer syscalls).
/// Also how much one publisher routes per turn before yielding to the subscribers it woke:
/// measured with 8 publishers on one core, 64 KiB turns overflowed the subscriber's queue
/// (37% of QoS 0 dropped, 2.09M msg/s delivered), 16 KiB dropped nothing (2.85M msg/s);
/// 8 KiB and 32 KiB were slower (see BENCHMARKS.md).
const READ_CHUNK_MAX: usize = 16 * 1024;
/// Stop pulling queued deliveries into the write buffer above this many bytes.
const WRITE_HIGH_WATER: usize = 512 * 1024;
/// While paused by backpressure, input is still read up to this many buffered bytes (to find
/// acknowledgements behind waiting PUBLISHes).
const PAUSED_READ: usize = 64 * 1024;
/// Stop reading from a client whose acks we cannot write (it does not read) above this.
const WRITE_LIMIT: usize = 1024 * 1024;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A new connection's id, taken in accept order: when several connections use one client id,
/// the one with the highest id (accepted last) wins [MQTT-3.1.4-2].
pub fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Relaxed)
}

/// Why a connection ended.
#[derive(Debug, Error)]
pub enum CloseReason {
    #[error("sent DISCONNECT")]
    Disconnect,
    #[error("closed its connection")]
    PeerClosed,
    #[error("exceeded keepalive timeout")]
    KeepaliveTimeout,
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("taken over by a new connection with the same client id")]
    TakenOver,
    #[error("broker shutting down")]
    Shutdown,
    #[error("{0}")]
    Refused(&'static str),
    #[error("PUBLISH topic has {levels} levels, over max_topic_levels ({limit})")]
    TooManyLevels { levels: usize, limit: usize },
    #[error("panicked (a bug, counted in roostd_panics_total): {0}")]
    Panic(String),
}

/// Length of the complete frame at the start of `b` (fixed header + remaining length), if
/// it is all there and its length field is well-formed.
fn frame_len(b: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        len |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 2 + i + len;
            return (b.len() >= total).then_some(total);
        }
    }
    None
}

/// Number of levels of a topic name or filter.
fn topic_levels(topic: &[u8]) -> usize {
    topic.iter().filter(|&&b| b == b'/').count() + 1
}

/// A client id for a log line: an empty one (allowed with clean session 1) said so.
fn shown_id(id: &str) -> std::borrow::Cow<'_, str> {
    if id.is_empty() {
        "(empty client id)".into()
    } else {
        shown(id)
    }
}

/// A topic or filter for a log line: long ones shortened (a filter can be 64 KiB).
fn shown(topic: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 80;
    if topic.len() <= SHOWN {
        return topic.into();
    }
    let mut end = SHOWN;
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &topic[..end], topic.len()).into()
}

impl CloseReason {
    /// The will is published on every close but a DISCONNECT packet [MQTT-3.1.2-8]/[MQTT-3.1.2-10],
    /// broker shutdown included (as Mosquitto does): the client did not say goodbye, and a
    /// retained will or one queued for a persistent session is stored before the store closes.
    fn publishes_will(&self) -> bool {
        !matches!(self, CloseReason::Disconnect)
    }
}

/// A connection's place: its max_connections slot and its listener's count of open
/// connections, both given back when the connection ends.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: Arc<crate::metrics::ListenerStats>,
}

impl Slot {
    pub fn new(permit: OwnedSemaphorePermit, listener: Arc<crate::metrics::ListenerStats>) -> Slot {
        listener.accepted.fetch_add(1, Relaxed);
        listener.open.fetch_add(1, Relaxed);
        Slot {
            _permit: permit,
            listener,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.listener.open.fetch_sub(1, Relaxed);
    }
}

/// What every connection needs from the broker.
#[derive(Clone)]
pub struct Context {
    pub router: Arc<Router>,
    pub config: Arc<Config>,
    pub shutdown: CancellationToken,
}

/// What the listener learned from the client certificate for `use_identity_as_username`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertUser {
    /// Not a TLS listener with use_identity_as_username: CONNECT credentials count.
    NotUsed,
    /// The certificate's identity, which becomes the user name.
    Identity(String),
    /// use_identity_as_username is set but the client sent no usable certificate.
    Missing,
}

/// Serves one client until it disconnects; `permit` (a max_connections slot) is held until then.
///
/// The CONNECT handshake runs in its own heap allocation, freed when it ends: only the steady
/// state below sizes the task that every connected client keeps for its whole life.
pub fn serve<S>(
    stream: S,
    peer: SocketAddr,
    conn_id: u64,
    ctx: Context,
    cert_user: CertUser,
    permit: Option<Slot>,
) -> impl Future<Output = ()> + Send
where
    S: Transport,
{
    let router = ctx.router.clone();
    let handshake = Box::pin(handshake(stream, peer, conn_id, ctx, cert_user, permit));
    async move {
        // A panic is caught at the task boundary: logged, counted, and only this connection
        // ends (the steady state catches its own, in `run`, so the session is detached and
        // the log names the client). Nothing more is kept here for it than the router: this
        // future is memory of every connection.
        let mut conn = match Guarded(handshake).await {
            Ok(Some(conn)) => conn,
            Ok(None) => return,
            Err(panic) => {
                router.metrics().stats.panics.fetch_add(1, Relaxed);
                tracing::error!("A connection's CONNECT handshake panicked: {panic}");
                return;
            }
        };
        let reason = conn.run().await;
        if let Err(panic) = Guarded(Box::pin(conn.close(reason))).await {
            router.metrics().stats.panics.fetch_add(1, Relaxed);
            tracing::error!("A connection panicked while closing: {panic}");
        }
    }
}

/// Polls the future, turning a panic into an error with its message.
struct Guarded<F>(F);

impl<F: Future + Unpin> Future for Guarded<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(fut).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Reads and checks CONNECT, authenticates, attaches the session and answers CONNACK (queued
/// in the write buffer). None when the client was refused or went away.
async fn handshake<S>(
    mut stream: S,
    peer: SocketAddr,
    conn_id: u64,
    ctx: Context,
    cert_user: CertUser,
    permit: Option<Slot>,
) -> Option<Connection<S>>
where
    S: Transport,
{
    let stats = &ctx.router.metrics().stats;
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let limit = ctx.config.message_size_limit;

    let first = tokio::select! {
        r = tokio::time::timeout(
            Duration::from_secs(ctx.config.connect_timeout),
            read_packet(&mut stream, &mut inbuf, limit),
        ) => r,
        _ = ctx.shutdown.cancelled() => return None,
    };
    let mut connect = match first {
        Err(_) => {
            stats.connect_timeouts.fetch_add(1, Relaxed);
            info!(
                "Client from {peer} did not send CONNECT within {}s, closing.",
                ctx.config.connect_timeout
            );
            return None;
        }
        Ok(Err(CloseReason::PeerClosed)) => {
            debug!("Socket from {peer} closed before CONNECT.");
            return None;
        }
        Ok(Err(e)) => {
            if let CloseReason::Protocol(p) = &e {
                note_protocol_error(&ctx.router, p);
            }
            if inbuf.first() == Some(&0x16) {
                warn!("Client from {peer} sent a TLS handshake to a plain MQTT listener; closing.");
                return None;
            }
            if inbuf.starts_with(b"GET ") || inbuf.starts_with(b"POST ") {
                warn!("Client from {peer} sent HTTP to an MQTT listener; closing.");
                return None;
            }
            warn!("Bad first packet from {peer}: {e}");
            return None;
        }
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            stats.protocol_errors.fetch_add(1, Relaxed);
            warn!(
                "Client from {peer}: {}",
                ProtocolError::NotConnect(packet_name(&other))
            );
            return None;
        }
    };

    let mut out = BytesMut::new();
    let verdict = match check_connect(&connect, &ctx.config) {
        Err(refusal) => Err(refusal),
        Ok(()) => match authenticate(&connect, &ctx.config, ctx.router.auth(), &cert_user) {
            AuthStep::Decided(verdict) => verdict,
            AuthStep::CheckPassword {
                passwords,
                username,
                password,
            } => {
                let limit = Duration::from_secs(ctx.config.connect_timeout);
                let check = check_password(ctx.router.auth(), passwords, username, password);
                tokio::select! {
                    r = tokio::time::timeout(limit, check) => {
                        r.unwrap_or(Err(Refusal { code: 0x03, reason: "server unavailable: authentication took too long" }))
                    }
                    _ = ctx.shutdown.cancelled() => return None,
                }
            }
        },
    };
    if let Err(refusal) = verdict {
        stats.connections_refused.fetch_add(1, Relaxed);
        codec::encode_connack(&mut out, false, refusal.code);
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
        info!(
            "Client {} from {peer} refused: {}",
            shown_id(&connect.client_id),
            refusal.reason
        );
        return None;
    }
    if let Some(will) = &connect.will {
        let levels = topic_levels(&will.topic);
        if levels > ctx.config.max_topic_levels {
            stats.protocol_errors.fetch_add(1, Relaxed);
            warn!(
                "Client {} from {peer} refused: will topic has {levels} levels, over max_topic_levels ({}).",
                shown_id(&connect.client_id),
                ctx.config.max_topic_levels
            );
            return None;
        }
    }
    if let CertUser::Identity(id) = cert_user {
        // The certificate is the credential; a CONNECT user name/password is ignored.
        connect.username = Some(id);
    }
    connect.password = None;
    let client_id = if connect.client_id.is_empty() {
        // [MQTT-3.1.3-6] empty id with clean session 1: assign a unique one.
        format!("auto-{conn_id:x}-{:x}", std::process::id())
    } else {
        connect.client_id.clone()
    };
    let username: Option<Arc<str>> = connect.username.as_deref().map(Arc::from);

    let attached = match ctx.router.connect(
        &client_id,
        connect.clean_session,
        Attachment {
            conn_id,
            username: username.clone(),
            keepalive_ms: (connect.keep_alive as u64 * 1500).min(u32::MAX as u64) as u32,
        },
    ) {
        Ok(a) => a,
        Err(superseded) => {
            // As if it had been taken over at once: no CONNACK, the socket closes.
            info!("Client {client_id} from {peer} closed: {superseded}.");
            return None;
        }
    };
    // Until the connection is complete, a panic (a bug) must not leave the session attached
    // to a connection that is gone: this guard detaches it when the handshake is dropped.
    stats.connections_total.fetch_add(1, Relaxed);
    stats.clients_connected.fetch_add(1, Relaxed);
    let mut detach = DetachOnDrop {
        router: ctx.router.clone(),
        session: attached.session.clone(),
        conn_id,
        armed: true,
    };
    if attached.took_over {
        info!("Client {client_id} already connected, closing old connection.");
    }
    info!(
        "New client connected from {peer} as {client_id} (p{}, c{}, k{}{}).",
        connect.level,
        connect.clean_session as u8,
        connect.keep_alive,
        connect
            .username
            .as_deref()
            .map(|u| format!(", u'{u}'"))
            .unwrap_or_default()
    );
    codec::encode_connack(&mut out, attached.session_present, 0);

    let mut conn = Connection {
        stream,
        inbuf,
        out,
        router: ctx.router,
        config: ctx.config,
        session: attached.session,
        username,
        will: connect.will.take().map(Box::new),
        congested: None,
        held: None,
        conn_id,
        read_hint: READ_CHUNK as u32,
        keep_alive: connect.keep_alive,
        recheck: None,
        storage_paused: false,
        flush_pending: false,
        _permit: permit,
    };
    // A persistent session back after a restart: its messages come from disk first.
    conn.router.watch_keepalive(&conn.session, conn_id);
    PENDING.with_borrow_mut(|pending| {
        pending.clear();
        // [MQTT-4.4.0-1] re-send unacknowledged messages, in order, before anything new.
        conn.session.state.lock().resend_inflight(pending);
        conn.encode(pending);
    });
    detach.armed = false;
    Some(conn)
}

/// Detaches a session from a connection whose handshake ended without completing (a
/// panic): the session is then offline (or gone, if clean) instead of attached for ever.
struct DetachOnDrop {
    router: Arc<Router>,
    session: Arc<Session>,
    conn_id: u64,
    armed: bool,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.router
                .metrics()
                .stats
                .clients_connected
                .fetch_sub(1, Relaxed);
            self.router.disconnect(&self.session, self.conn_id);
        }
    }
}

fn note_protocol_error(router: &Router, e: &ProtocolError) {
    let stats = &router.metrics().stats;
    stats.protocol_errors.fetch_add(1, Relaxed);
    if matches!(e, ProtocolError::TooLarge { .. }) {
        stats.dropped(DropReason::TooLarge, 1);
    }
}

/// A CONNECT refused with a CONNACK return code.
struct Refusal {
    code: u8,
    reason: &'static str,
}

fn check_connect(c: &Connect, config: &Config) -> Result<(), Refusal> {
    if c.level != 4 {
        // [MQTT-3.1.2-2]
        return Err(Refusal {
            code: 0x01,
            reason: "[MQTT-3.1.2-2] unacceptable protocol level (only MQTT 3.1.1, level 4, is supported)",
        });
    }
    if c.client_id.is_empty() && !c.clean_session {
        return Err(Refusal {
            code: 0x02,
            reason: "[MQTT-3.1.3-8] empty client identifier with clean session 0",
        });
    }
    if c.keep_alive > config.max_keepalive {
        return Err(Refusal {
            code: 0x02,
            reason: "keepalive above max_keepalive",
        });
    }
    Ok(())
}

/// What authentication needs: a decision now, or a password check against password_file.
enum AuthStep {
    Decided(Result<(), Refusal>),
    CheckPassword {
        passwords: Arc<crate::auth::PasswordFile>,
        username: String,
        password: bytes::Bytes,
    },
}

/// Who may connect: a certificate identity (use_identity_as_username), else a user name and
/// password checked against password_file, else anonymous if allow_anonymous. Failures get
/// CONNACK 0x05 "not authorised", as Mosquitto answers MQTT 3.1.1 clients.
fn authenticate(c: &Connect, config: &Config, auth: &AuthState, cert_user: &CertUser) -> AuthStep {
    let refuse = |reason| AuthStep::Decided(Err(Refusal { code: 0x05, reason }));
    match cert_user {
        CertUser::Identity(_) => return AuthStep::Decided(Ok(())),
        CertUser::Missing => {
            return refuse("not authorised: use_identity_as_username is set but the client sent no certificate identity")
        }
        CertUser::NotUsed => {}
    }
    let Some(username) = &c.username else {
        return if config.anonymous_allowed() {
            AuthStep::Decided(Ok(()))
        } else {
            refuse("not authorised: anonymous clients are not allowed (allow_anonymous = false)")
        };
    };
    match auth.passwords() {
        // Without a password file user names are not checked (as Mosquitto).
        None if config.anonymous_allowed() => AuthStep::Decided(Ok(())),
        None => {
            refuse("not authorised: allow_anonymous is false and no password_file is configured")
        }
        Some(passwords) => AuthStep::CheckPassword {
            passwords,
            username: username.clone(),
            password: c.password.clone().unwrap_or_default(),
        },
    }
}

/// Verifies a password on a blocking thread (PBKDF2 is deliberately slow), at most
/// MAX_CONCURRENT_PASSWORD_CHECKS at once so a flood of bad CONNECTs cannot starve anyone.
async fn check_password(
    auth: &AuthState,
    passwords: Arc<crate::auth::PasswordFile>,
    username: String,
    password: bytes::Bytes,
) -> Result<(), Refusal> {
    let Ok(permit) = auth.checks.clone().acquire_owned().await else {
        return Err(Refusal {
            code: 0x03,
            reason: "server unavailable: password checks are shut down",
        });
    };
    let ok = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        passwords.verify(&username, &password)
    })
    .await
    .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Refusal {
            code: 0x05,
            reason: "not authorised: bad user name or password",
        })
    }
}

async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    inbuf: &mut BytesMut,
    limit: usize,
) -> Result<Packet, CloseReason> {
    loop {
        // [MQTT-3.1.0-1] The first packet must be CONNECT: decided on its first byte, before
        // waiting for the rest of a frame whose length came from garbage (HTTP, TLS, noise).
        if let Some(&first) = inbuf.first() {
            if first != 0x10 {
                return Err(ProtocolError::FirstByte(first).into());
            }
        }
        if let Some(p) = decode(inbuf, limit)? {
            return Ok(p);
        }
        inbuf.reserve(READ_CHUNK);
        if rd.read_buf(inbuf).await? == 0 {
            return Err(CloseReason::PeerClosed);
        }
    }
}

/// How often a connection re-checks a wait whose end is a deadline rather than an event (a
/// congested subscriber that may become stalled) or whose notification it may have missed (a
/// commit).
const RECHECK: Duration = Duration::from_millis(20);

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::Publish { .. } => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe { .. } => "SUBSCRIBE",
        Packet::Unsubscribe { .. } => "UNSUBSCRIBE",
        Packet::PingReq => "PINGREQ",
        Packet::Disconnect => "DISCONNECT",
    }
}

thread_local! {
    /// Scratch buffers of the connection this thread is serving: trie matches while routing,
    /// deliveries taken from a session queue. Per thread, not per connection, so an idle
    /// connection keeps none, and a burst leaves no large buffer behind in any one client.
    static MATCHES: RefCell<MatchBuffer> = const { RefCell::new(Vec::new()) };
    static PENDING: RefCell<Vec<Outgoing>> = const { RefCell::new(Vec::new()) };
}

/// Scratch buffers above this many entries are freed after use (a burst's worth).
const SCRATCH_KEEP: usize = 4096;

fn shrink_scratch<T>(v: &mut Vec<T>) {
    if v.capacity() > SCRATCH_KEEP {
        *v = Vec::new();
    }
}

/// A client's byte stream.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Whether `poll_read_ready` tells when data is there; if not, a read is simply tried.
    const READINESS: bool = false;

    fn poll_read_ready(&self, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for TcpStream {
    const READINESS: bool = true;

    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

/// rustls may hold decrypted bytes the socket's readiness does not show: always try a read.
impl Transport for tokio_rustls::server::TlsStream<TcpStream> {}

/// With fsync = always: acknowledgements held until the store has committed everything issued
/// before them (the ticket), in the order they were produced [MQTT-4.6.0-2]. Boxed in the
/// connection, and only once an acknowledgement is held.
/// Also holds a chunk load of the session's stored queue (after a restart): both are rare,
/// and one box keeps them out of every connection.
#[derive(Default)]
struct HeldAcks {
    deferred: VecDeque<(u64, BytesMut)>,
    /// Waits for the store's next commit (the recheck timer covers a missed one).
    commit: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// A chunk of the session's stored queue being read from disk.
    loading: Option<tokio::task::JoinHandle<Result<LoadedChunk, StorageError>>>,
}

/// An accepted connection: everything a connected client keeps for its whole life, so every
/// field here is memory per connection.
struct Connection<S> {
    stream: S,
    /// Bytes read and not yet decoded (freed while the client is quiet).
    inbuf: BytesMut,
    /// Bytes waiting to be written.
    out: BytesMut,
    router: Arc<Router>,
    config: Arc<Config>,
    session: Arc<Session>,
    /// Authenticated user name (or certificate identity), for ACL checks.
    username: Option<Arc<str>>,
    /// The last will, boxed: most clients have none.
    will: Option<Box<Will>>,
    /// A subscriber whose full QoS 1/2 queue this client's messages are waiting on: reading
    /// from this client pauses until it drains (backpressure instead of dropping).
    congested: Option<Arc<Session>>,
    /// Acknowledgements waiting for a commit (fsync = always).
    held: Option<Box<HeldAcks>>,
    conn_id: u64,
    /// Bytes to reserve for the next read (adaptive, READ_CHUNK..=READ_CHUNK_MAX).
    read_hint: u32,
    keep_alive: u16,
    /// While waiting on a congested subscriber or a commit: when to look again. Boxed, and
    /// only then: keepalive needs no timer here (`Router::sweep_keepalive` wakes us).
    recheck: Option<Pin<Box<Sleep>>>,
    /// Reading is paused because writes to disk fell behind (max_storage_backlog).
    storage_paused: bool,
    /// Bytes were written since the last completed flush (TLS may hold some back).
    flush_pending: bool,
    /// The max_connections slot, released when the connection ends.
    _permit: Option<Slot>,
}

impl<S: Transport> Connection<S> {
    /// Serves the client until the connection ends. One hand-written poll function instead
    /// of a `select!`: the task stores no timer and nothing per branch.
    ///
    /// A panic while handling the client is caught here (`CloseReason::Panic`): the
    /// connection then closes as after any error (will, session detached), the rest of the
    /// broker goes on.
    async fn run(&mut self) -> CloseReason {
        let caught = |payload: Box<dyn std::any::Any + Send>| {
            CloseReason::Panic(panic_message(payload.as_ref()))
        };
        // The client may have sent more packets right behind its CONNECT.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process_input())) {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => return reason,
            Err(payload) => return caught(payload),
        }
        std::future::poll_fn(|cx| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.poll_run(cx)))
                .unwrap_or_else(|payload| Poll::Ready(caught(payload)))
        })
        .await
    }

    /// Ready when a read should be tried. A quiet client holds no read buffer: where the
    /// stream can tell (TCP), wait for data before allocating one, then allocate the adaptive
    /// read size at once (not 64 bytes and a second read).
    fn poll_ready_to_read(
        &mut self,
        cx: &mut TaskContext<'_>,
        may_read: bool,
    ) -> Poll<std::io::Result<()>> {
        if !may_read {
            return Poll::Pending;
        }
        if self.inbuf.capacity() > 0 || !S::READINESS {
            return Poll::Ready(Ok(()));
        }
        let ready = self.stream.poll_read_ready(cx);
        if let Poll::Ready(Ok(())) = ready {
            self.inbuf.reserve(self.read_hint as usize);
        }
        ready
    }

    /// [MQTT-3.1.2-24] one and a half times the keepalive; 0 disables it.
    fn keepalive_ms(&self) -> u64 {
        self.keep_alive as u64 * 1500
    }

    /// A packet arrived (or we resumed reading): the keepalive deadline moves.
    fn note_activity(&self) {
        self.session.activity.store(self.router.now_ms(), Relaxed);
    }

    fn poll_run(&mut self, cx: &mut TaskContext<'_>) -> Poll<CloseReason> {
        loop {
            // Takes deliveries and leaves our waker in the session under one lock: a new
            // delivery, a takeover or shutdown after this point wakes us.
            self.take_deliveries(cx.waker());
            if self.session.attached_conn.load(Acquire) != self.conn_id {
                return Poll::Ready(CloseReason::TakenOver);
            }
            if self.router.is_closing() {
                return Poll::Ready(CloseReason::Shutdown);
            }
            let mut progress = false;
            // A failing store (or a dead writer) does not hold anyone: routing then stores
            // nothing (persistent QoS 1/2 is refused), so the backlog cannot grow.
            let eased = |s: &Arc<crate::storage::Store>| s.backlog_eased() || !s.healthy();
            if self.storage_paused && self.router.store().is_none_or(eased) {
                self.storage_paused = false;
                // We were the ones not reading: not the client's silence.
                self.note_activity();
                if let Err(reason) = self.process_input() {
                    return Poll::Ready(reason);
                }
                progress = true;
            }
            progress |= self.release_acks(cx);
            match self.poll_load(cx) {
                Ok(loaded) => progress |= loaded,
                Err(reason) => return Poll::Ready(reason),
            }
            if let Some(s) = &self.congested {
                let mut st = s.state.lock();
                if st.is_congested(self.router.limits()) {
                    // Its connection wakes us when the queue drains.
                    st.wait_for_space(cx.waker());
                } else {
                    drop(st);
                    self.congested = None;
                    // We were the ones not reading (backpressure): not the client's silence.
                    self.note_activity();
                    // Go on with the packets that were left buffered when we paused.
                    if let Err(reason) = self.process_input() {
                        return Poll::Ready(reason);
                    }
                    progress = true;
                }
            }
            let waiting = self.congested.is_some()
                || self.storage_paused
                || self.held.as_ref().is_some_and(|h| !h.deferred.is_empty());
            if waiting && self.recheck.is_none() {
                // A congested subscriber may turn stalled (a deadline, not an event); a
                // commit notification may be missed between the check and the wait.
                self.recheck = Some(Box::pin(tokio::time::sleep(RECHECK)));
            }
            if !self.out.is_empty() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.out) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(CloseReason::PeerClosed),
                    Poll::Ready(Ok(n)) => {
                        self.router
                            .metrics()
                            .stats
                            .bytes_sent
                            .fetch_add(n as u64, Relaxed);
                        self.out.advance(n);
                        if self.out.is_empty() {
                            // A large buffer goes at once; a small one when the client
                            // turns quiet (below).
                            if self.out.capacity() > SHRINK_ABOVE {
                                self.out = BytesMut::new();
                            }
                        }
                        self.flush_pending = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(CloseReason::Io(e)),
                    Poll::Pending => {}
                }
            }
            if self.out.is_empty() && self.flush_pending {
                // TLS may hold records it could not send yet: flushing sends them or waits for
                // writability, and is tried again until done (a no-op for TCP).
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flush_pending = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(CloseReason::Io(e)),
                    Poll::Pending => {}
                }
            }
            // While paused, a little more is read (up to PAUSED_READ), so that the
            // acknowledgements behind the waiting PUBLISHes get through.
            let paused = self.congested.is_some() || self.storage_paused;
            let may_read = self.out.len() < WRITE_LIMIT
                && (!paused || (self.inbuf.len() < PAUSED_READ && self.expects_acks()));
            match self.poll_ready_to_read(cx, may_read) {
                Poll::Ready(Err(e)) => return Poll::Ready(CloseReason::Io(e)),
                Poll::Pending => {}
                Poll::Ready(Ok(())) => {
                    // An empty buffer gets 64 bytes from poll_read_buf (BytesMut grows by that much).
                    let spare = (self.inbuf.capacity() - self.inbuf.len()).max(64);
                    match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.inbuf) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(CloseReason::PeerClosed),
                        Poll::Ready(Ok(n)) => {
                            self.router
                                .metrics()
                                .stats
                                .bytes_received
                                .fetch_add(n as u64, Relaxed);
                            // Adapt the read size: a read that filled the buffer asks for more.
                            let hint = self.read_hint as usize;
                            self.read_hint = if n >= spare {
                                (hint * 2).min(READ_CHUNK_MAX)
                            } else if n < hint / 4 {
                                (hint / 2).max(READ_CHUNK)
                            } else {
                                hint
                            } as u32;
                            match self.process_input() {
                                Err(reason) => return Poll::Ready(reason),
                                Ok(published) if published > 0 => {
                                    // Let the subscribers just woken run before reading more:
                                    // tokio keeps a woken task in this worker's unstealable LIFO
                                    // slot, so a publisher that never yields would starve them.
                                    // Waking ourselves puts this task at the back of the queue.
                                    cx.waker().wake_by_ref();
                                    return Poll::Pending;
                                }
                                Ok(_) => progress = true,
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(CloseReason::Io(e)),
                        Poll::Pending => {}
                    }
                }
            }
            if progress {
                continue;
            }
            if let Some(recheck) = &mut self.recheck {
                if recheck.as_mut().poll(cx).is_ready() {
                    self.recheck = None;
                    continue;
                }
            }
            // Only here, with nothing left to do, and only when `Router::sweep` woke us (the
            // keepalive deadline passed, or the client turned quiet): a plain load otherwise.
            if self.session.swept.load(Relaxed) && self.session.swept.swap(false, Relaxed) {
                if let Some(reason) = self.on_swept() {
                    return Poll::Ready(reason);
                }
            }
            return Poll::Pending;
        }
    }

    /// The sweep found the client silent: close it past its keepalive, or give back the
    /// buffers once it turned quiet (idle connections are the broker's footprint; once per
    /// quiet spell, not on every poll: a QoS 0 subscriber sends nothing for long and still
    /// receives).
    fn on_swept(&mut self) -> Option<CloseReason> {
        let silent = self
            .router
            .now_ms()
            .saturating_sub(self.session.activity.load(Relaxed));
        // While paused by backpressure the silence is ours, not the client's.
        let paused = self.congested.is_some() || self.storage_paused;
        if self.keep_alive > 0 && !paused && silent >= self.keepalive_ms() {
            self.router
                .metrics()
                .stats
                .keepalive_timeouts
                .fetch_add(1, Relaxed);
            return Some(CloseReason::KeepaliveTimeout);
        }
        if silent >= IDLE_AFTER_MS {
            if self.inbuf.is_empty() {
                self.inbuf = BytesMut::new();
                self.read_hint = READ_CHUNK as u32;
            }
            if self.out.is_empty() {
                self.out = BytesMut::new();
            }
        }
        None
    }

    /// After `run`: logs, publishes the will, detaches the session and flushes what is left.
    async fn close(mut self, reason: CloseReason) {
        let stats = &self.router.metrics().stats;
        stats.clients_connected.fetch_sub(1, Relaxed);
        // The address was logged at CONNECT (as Mosquitto); not kept: 32 bytes a client.
        let client_id = &self.session.client_id;
        match &reason {
            CloseReason::Disconnect => info!("Client {client_id} disconnected."),
            CloseReason::Protocol(e) => {
                note_protocol_error(&self.router, e);
                warn!("Client {client_id} disconnected: protocol error: {e}");
            }
            CloseReason::Panic(_) => {
                stats.panics.fetch_add(1, Relaxed);
                tracing::error!("Client {client_id} disconnected: {reason}");
            }
            CloseReason::TooManyLevels { .. } => {
                stats.protocol_errors.fetch_add(1, Relaxed);
                warn!("Client {client_id} disconnected: {reason}");
            }
            other => info!("Client {client_id} disconnected: {other}."),
        }
        // Detached first: whatever happens while the will is routed, the session is not left
        // attached to a connection that is gone.
        self.router.disconnect(&self.session, self.conn_id);
        if reason.publishes_will() {
            if let Some(will) = self.will.take() {
                stats.wills_published.fetch_add(1, Relaxed);
                debug!(
                    "Publishing will of {client_id} on {}",
                    String::from_utf8_lossy(&will.topic)
                );
                MATCHES.with_borrow_mut(|m| {
                    self.router
                        .publish(Arc::new(will.to_publication()), m, None)
                });
            }
        }
        if !matches!(reason, CloseReason::Io(_)) {
            // Best effort: flush what is buffered (e.g. a final ack) and close cleanly.
            let taken_over = matches!(reason, CloseReason::TakenOver);
            let (stream, out) = (&mut self.stream, &self.out);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                if !out.is_empty() && !taken_over {
                    stream.write_all(out).await?;
                }
                stream.shutdown().await
            })
            .await;
        }
    }

    /// Moves held acknowledgements whose data is on disk into the write buffer; true if
    /// the commit wait ended (something may be released).
    /// Also waits for commits while reading is paused for the storage backlog.
    fn release_acks(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let Some(store) = self.router.store() else {
            return false;
        };
        if let Some(held) = &mut self.held {
            let committed = store.committed();
            while held.deferred.front().is_some_and(|(t, _)| *t <= committed) {
                if let Some((_, bytes)) = held.deferred.pop_front() {
                    self.out.extend_from_slice(&bytes);
                }
            }
        }
        let acks_held = self.held.as_ref().is_some_and(|h| !h.deferred.is_empty());
        if !acks_held && !self.storage_paused {
            if let Some(held) = &mut self.held {
                held.commit = None;
            }
            return false;
        }
        let held = self.held.get_or_insert_with(Box::default);
        let wait = held.commit.get_or_insert_with(|| {
            let notify = store.commit_notify.clone();
            Box::pin(async move { notify.notified().await })
        });
        if wait.as_mut().poll(cx).is_ready() {
            held.commit = None;
            return true;
        }
        false
    }

    /// Handles every complete packet already buffered, then makes room for the next read.
    /// Returns how many PUBLISH packets were routed.
    fn process_input(&mut self) -> Result<u64, CloseReason> {
        let acks_from = self.out.len();
        let result = self.process_frames();
        if let Some(store) = self.router.store().filter(|s| s.acks_wait()) {
            // fsync = always: what was just acknowledged waits for the commit of everything
            // issued so far (group commit: many clients share one fsync).
            if self.out.len() > acks_from {
                let held = self.out.split_off(acks_from);
                let ticket = store.issued();
                self.held
                    .get_or_insert_with(Box::default)
                    .deferred
                    .push_back((ticket, held));
            }
        }
        result
    }

    /// Whether the client owes acknowledgements (deliveries in flight to it).
    fn expects_acks(&self) -> bool {
        !self.session.state.lock().inflight.is_empty()
    }

    /// While reading is paused: takes the complete PUBACK, PUBREC, PUBCOMP and PINGREQ
    /// frames out of the buffered input (wherever they are) and handles them; everything else
    /// stays, in order. Acknowledgements of our deliveries and pings do not depend on the
    /// client's own PUBLISHes before them, so handling them first reorders nothing that
    /// matters; PUBREL and DISCONNECT stay in their place.
    fn handle_acks_behind(&mut self, limit: usize) -> Result<(), CloseReason> {
        let mut at = 0;
        let mut kept: Option<BytesMut> = None;
        let mut taken = Vec::new();
        while at < self.inbuf.len() {
            let Some(len) = frame_len(&self.inbuf[at..]) else {
                break; // incomplete (or malformed: the normal decode reports it later)
            };
            let kind = self.inbuf[at] >> 4;
            if matches!(kind, 4 | 5 | 7 | 12) {
                let keep = kept.get_or_insert_with(|| BytesMut::with_capacity(self.inbuf.len()));
                // Bytes before this frame since the last one taken stay.
                let start = taken.last().map_or(0, |&(s, l): &(usize, usize)| s + l);
                keep.extend_from_slice(&self.inbuf[start..at]);
                taken.push((at, len));
            }
            at += len;
        }
        let Some(mut keep) = kept else {
            return Ok(());
        };
        let end = taken.last().map_or(0, |&(s, l)| s + l);
        keep.extend_from_slice(&self.inbuf[end..]);
        let frames: Vec<BytesMut> = taken
            .iter()
            .map(|&(s, l)| BytesMut::from(&self.inbuf[s..s + l]))
            .collect();
        self.inbuf = keep;
        for mut frame in frames {
            if let Some(p) = decode(&mut frame, limit)? {
                self.handle(p)?;
            }
        }
        Ok(())
    }

    fn process_frames(&mut self) -> Result<u64, CloseReason> {
        let limit = self.config.message_size_limit;
        let mut received = [0u64; 3];
        let mut decoded = false;
        let result = loop {
            if self.congested.is_some() || self.storage_paused {
                // Paused (a full subscriber queue, or the disk behind): PUBLISH, SUBSCRIBE
                // and UNSUBSCRIBE wait in the buffer; acknowledgements and pings behind them
                // are handled now. Two clients publishing to each other would otherwise wait
                // on each other's unread PUBACKs until the backpressure timeout.
                // Only a client with deliveries in flight has acks to find (a pure publisher
                // has none: no scan).
                if self.expects_acks() {
                    if let Err(e) = self.handle_acks_behind(limit) {
                        break Err(e);
                    }
                }
                break Ok(());
            }
            match decode(&mut self.inbuf, limit) {
                Ok(Some(p)) => {
                    decoded = true;
                    if let Packet::Publish { publication, .. } = &p {
                        received[publication.qos as usize] += 1;
                    }
                    if let Err(e) = self.handle(p) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(CloseReason::from(e)),
            }
        };
        // [MQTT-3.1.2-24] only a complete control packet counts as activity: a client
        // trickling one byte at a time does not keep its connection alive.
        if decoded {
            self.note_activity();
        }
        let stats = &self.router.metrics().stats;
        for (q, n) in received.iter().enumerate() {
            if *n > 0 {
                stats.received[q].fetch_add(*n, Relaxed);
            }
        }
        result?;
        let hint = self.read_hint as usize;
        if self.inbuf.is_empty() && (hint == READ_CHUNK || self.inbuf.capacity() > 2 * hint) {
            // A quiet client keeps no read buffer between packets: idle connections are the
            // common case and their memory is the broker's footprint. Where the stream tells
            // readiness (TCP) the next read allocates once data is there; a busy client keeps
            // its buffer (its hint is larger) until it turns quiet.
            self.inbuf = BytesMut::new();
        } else {
            self.inbuf.reserve(hint);
        }
        Ok(received.iter().sum())
    }

    /// Moves ready deliveries from the session queue into the write buffer.
    /// Also leaves `waker` in the session, under the same lock.
    fn take_deliveries(&mut self, waker: &Waker) {
        PENDING.with_borrow_mut(|pending| {
            // Nothing left behind by a connection whose poll panicked on this thread.
            pending.clear();
            let mut st = self.session.state.lock();
            if self.session.attached_conn.load(Acquire) != self.conn_id {
                // Taken over: the slot belongs to the new connection (the caller closes).
                return;
            }
            st.set_waker(waker);
            let loading = self.held.as_ref().is_some_and(|h| h.loading.is_some());
            let load = if !loading {
                st.load_request(self.conn_id)
            } else {
                None
            };
            if st.wants_retained() && self.out.len() < WRITE_HIGH_WATER {
                self.router.feed_retained(&self.session, &mut st);
            }
            let mut waiters = Vec::new();
            if !st.queue.is_empty() && self.out.len() < WRITE_HIGH_WATER {
                let budget = WRITE_HIGH_WATER - self.out.len();
                if st.take_ready(self.router.limits(), budget, pending) {
                    // Space again: wake the publishers paused on this queue.
                    waiters = st.take_space_waiters();
                }
            }
            drop(st);
            waiters.into_iter().for_each(Waker::wake);
            // A stored QoS 1/2 message taken now had its "sent" mark issued to the store
            // (for DUP after a restart). With fsync = always it is written only once that
            // mark is on disk, like an acknowledgement: a crash in between must not lead
            // to a re-send without DUP [MQTT-3.3.1-1].
            // (Only looked at under fsync = always: no walk over the batch otherwise.)
            let hold_for = self.router.store().filter(|s| s.acks_wait()).filter(|_| {
                pending.iter().any(|o| {
                    matches!(o, Outgoing::Publish { item, .. } if item.seq != 0 && item.qos != QoS::AtMostOnce)
                })
            });
            let from = self.out.len();
            let ticket = hold_for.map(|store| store.issued());
            self.encode(pending);
            if let Some(ticket) = ticket {
                let held = self.out.split_off(from);
                self.held
                    .get_or_insert_with(Box::default)
                    .deferred
                    .push_back((ticket, held));
            }
            if let Some(request) = load {
                self.start_load(request);
            }
        });
    }

    /// Reads the next chunk of the session's stored queue on a blocking thread.
    fn start_load(&mut self, request: LoadRequest) {
        let Some(store) = self.router.store().cloned() else {
            return;
        };
        let client = self.session.client_id.to_string();
        self.held.get_or_insert_with(Box::default).loading =
            Some(tokio::task::spawn_blocking(move || {
                // What was queued for it before this point must be readable.
                store.flush_blocking();
                store.load_messages(&client, request.after, LOAD_MESSAGES, LOAD_BYTES)
            }));
    }

    /// Takes a finished chunk load into the session (if this connection still owns it; a
    /// load of a connection that was taken over is dropped and the new one loads again).
    /// True if one finished.
    fn poll_load(&mut self, cx: &mut TaskContext<'_>) -> Result<bool, CloseReason> {
        let Some(handle) = self.held.as_mut().and_then(|h| h.loading.as_mut()) else {
            return Ok(false);
        };
        let Poll::Ready(result) = Pin::new(handle).poll(cx) else {
            return Ok(false);
        };
        if let Some(h) = &mut self.held {
            h.loading = None;
        }
        let failure = match result {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let chunk = match failure {
            Ok(chunk) => chunk,
            Err(e) => {
                // Nothing more could reach this client while its queue is on disk: close, so
                // that it reconnects and its next connection loads again (nothing is lost:
                // the messages stay on disk).
                tracing::error!("Loading stored messages of {}: {e}", self.session.client_id);
                return Err(CloseReason::Refused(
                    "its stored messages could not be read; closing so that it reconnects",
                ));
            }
        };
        PENDING.with_borrow_mut(|pending| {
            pending.clear();
            let n = chunk.messages.len();
            let taken = {
                let mut st = self.session.state.lock();
                self.session.attached_conn.load(Acquire) == self.conn_id
                    && st.restore_chunk(self.conn_id, chunk, pending)
            };
            if taken {
                debug!(
                    "Loaded {n} stored message(s) for {}.",
                    self.session.client_id
                );
            }
            self.encode(pending);
        });
        Ok(true)
    }

    /// Encodes (and empties) deliveries taken from the session into the write buffer.
    fn encode(&mut self, pending: &mut Vec<Outgoing>) {
        if pending.is_empty() {
            return;
        }
        // The whole batch at once: the buffer starts empty after each write, and growing it
        // by doubling would copy the batch several times.
        let bytes: usize = pending
            .iter()
            .map(|o| match o {
                // Fixed header (at most 5), topic length, packet id, topic, payload.
                Outgoing::Publish { item, .. } => 9 + item.msg.size(),
                Outgoing::PubRel(_) => 4,
            })
            .sum();
        self.out.reserve(bytes);
        let metrics = self.router.metrics();
        let mut sent = [0u64; 3];
        if let Some(Outgoing::Publish { item, .. }) = pending.first() {
            // One latency sample per batch (its oldest message) keeps the hot path cheap.
            metrics
                .delivery_latency
                .record(item.msg.received_at.elapsed().as_secs_f64());
        }
        for o in pending.drain(..) {
            match o {
                Outgoing::Publish { item, pkid, dup } => {
                    debug!(
                        "Sending PUBLISH to {} (d{}, q{}, r{}, m{pkid}, '{}', ... ({} bytes))",
                        self.session.client_id,
                        (dup && item.qos != QoS::AtMostOnce) as u8,
                        item.qos as u8,
                        item.retain as u8,
                        shown(&item.msg.topic_lossy()),
                        item.msg.payload.len()
                    );
                    codec::encode_publish(
                        &mut self.out,
                        &item.msg,
                        item.qos,
                        pkid,
                        dup,
                        item.retain,
                    );
                    sent[item.qos as usize] += 1;
                }
                Outgoing::PubRel(pkid) => {
                    codec::encode_ack(&mut self.out, Ack::PubRel, pkid);
                    debug!("Sending PUBREL to {} (m{pkid})", self.session.client_id);
                }
            }
        }
        for (q, n) in sent.iter().enumerate() {
            if *n > 0 {
                metrics.stats.sent[q].fetch_add(*n, Relaxed);
            }
        }
        shrink_scratch(pending);
    }

    /// Queues an acknowledgement (and logs it at debug level, as mosquitto -v does).
    fn ack(&mut self, kind: Ack, pkid: u16) {
        codec::encode_ack(&mut self.out, kind, pkid);
        debug!(
            "Sending {} to {} (m{pkid}, rc0)",
            kind.name(),
            self.session.client_id
        );
    }

    /// At debug level, each received packet as mosquitto -v logs it. Costs one level check
    /// when debug is off.
    fn log_received(&self, packet: &Packet) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let id = &self.session.client_id;
        match packet {
            Packet::Publish {
                pkid,
                dup,
                publication: m,
            } => debug!(
                "Received PUBLISH from {id} (d{}, q{}, r{}, m{pkid}, '{}', ... ({} bytes))",
                *dup as u8,
                m.qos as u8,
                m.retain as u8,
                shown(&m.topic_lossy()),
                m.payload.len()
            ),
            Packet::PubAck(m) => debug!("Received PUBACK from {id} (Mid: {m}, RC:0)"),
            Packet::PubRec(m) => debug!("Received PUBREC from {id} (Mid: {m})"),
            Packet::PubRel(m) => debug!("Received PUBREL from {id} (Mid: {m})"),
            Packet::PubComp(m) => debug!("Received PUBCOMP from {id} (Mid: {m}, RC:0)"),
            Packet::Subscribe { filters, .. } => {
                debug!("Received SUBSCRIBE from {id}");
                for (f, q) in filters {
                    debug!("{id} {} {}", *q as u8, shown(f));
                }
            }
            Packet::Unsubscribe { filters, .. } => {
                debug!("Received UNSUBSCRIBE from {id}");
                for f in filters {
                    debug!("{id} {}", shown(f));
                }
            }
            Packet::PingReq => debug!("Received PINGREQ from {id}"),
            Packet::Disconnect => debug!("Received DISCONNECT from {id}"),
            Packet::Connect(_) => debug!("Received CONNECT from {id}"),
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<(), CloseReason> {
        self.log_received(&packet);
        match packet {
            Packet::Connect(_) => return Err(ProtocolError::SecondConnect.into()),
            Packet::Publish {
                pkid,
                dup: _,
                publication,
            } => self.on_publish(pkid, publication)?,
            Packet::PubAck(pkid) => {
                if !self.session.state.lock().puback(pkid) {
                    debug!(
                        "Client {} acknowledged unknown packet id {pkid} (PUBACK)",
                        self.session.client_id
                    );
                }
            }
            Packet::PubRec(pkid) => {
                if self.session.state.lock().pubrec(pkid) {
                    self.ack(Ack::PubRel, pkid);
                } else {
                    debug!(
                        "Client {} sent PUBREC for unknown packet id {pkid}",
                        self.session.client_id
                    );
                }
            }
            Packet::PubRel(pkid) => {
                self.session.state.lock().remove_incoming(pkid);
                // [MQTT-4.3.3-2] PUBCOMP even for an id already released.
                self.ack(Ack::PubComp, pkid);
            }
            Packet::PubComp(pkid) => {
                if !self.session.state.lock().pubcomp(pkid) {
                    debug!(
                        "Client {} sent PUBCOMP for unknown packet id {pkid}",
                        self.session.client_id
                    );
                }
            }
            Packet::Subscribe { pkid, filters } => {
                self.on_subscribe(pkid, filters);
                self.check_storage_backlog();
            }
            Packet::Unsubscribe { pkid, filters } => {
                for f in &filters {
                    self.router.unsubscribe(&self.session, f);
                }
                // [MQTT-3.10.4-4]/[MQTT-3.10.4-5] UNSUBACK even when nothing was subscribed.
                self.ack(Ack::UnsubAck, pkid);
                self.check_storage_backlog();
            }
            Packet::PingReq => {
                codec::encode_pingresp(&mut self.out);
                debug!("Sending PINGRESP to {}", self.session.client_id);
            }
            Packet::Disconnect => {
                // [MQTT-3.14.4-3] the will is discarded.
                self.will = None;
                return Err(CloseReason::Disconnect);
            }
        }
        Ok(())
    }

    /// Routes a message; remembers a congested subscriber so that reading pauses.
    /// Routes a message; remembers a congested subscriber so that reading pauses. Fails when
    /// a persistent subscriber's copy could not be stored: the message is then not
    /// acknowledged (the connection closes and the client re-sends it later).
    fn route(&mut self, publication: Publication) -> Result<(), CloseReason> {
        let qos = publication.qos;
        let outcome = MATCHES.with_borrow_mut(|m| {
            let outcome = self
                .router
                .publish(Arc::new(publication), m, Some(self.session.id));
            shrink_scratch(m);
            outcome
        });
        if self.congested.is_none() {
            self.congested = outcome.congested;
        }
        self.check_storage_backlog();
        if outcome.unstored && qos != QoS::AtMostOnce {
            return Err(CloseReason::Refused(
                "storage is failing: message not acknowledged, closing so the client re-sends it",
            ));
        }
        Ok(())
    }

    /// After what writes to the store (messages, subscription records): if the disk is behind,
    /// stop reading this client until it catches up (TCP slows the client) instead of holding
    /// ever more writes in memory. Acknowledgements, which only delete, are not checked.
    fn check_storage_backlog(&mut self) {
        if let Some(store) = self.router.store() {
            if !self.storage_paused && store.backlogged() && store.healthy() {
                self.storage_paused = true;
                self.router
                    .metrics()
                    .stats
                    .storage_pauses
                    .fetch_add(1, Relaxed);
            }
        }
    }

    fn on_publish(&mut self, pkid: u16, publication: Publication) -> Result<(), CloseReason> {
        let levels = topic_levels(&publication.topic);
        if levels > self.config.max_topic_levels {
            return Err(CloseReason::TooManyLevels {
                levels,
                limit: self.config.max_topic_levels,
            });
        }
        if publication.retain && !self.config.retain_available {
            return Err(CloseReason::Refused(
                "PUBLISH with retain while retain_available is false",
            ));
        }
        let allowed = match self.router.auth().acl() {
            None => true,
            Some(acl) => {
                let topic = std::str::from_utf8(&publication.topic).unwrap_or_default();
                let ok =
                    acl.check_publish(&self.session.client_id, self.username.as_deref(), topic);
                if !ok {
                    debug!(
                        "Denied PUBLISH from {} to {topic} (ACL)",
                        self.session.client_id
                    );
                    self.router
                        .metrics()
                        .stats
                        .dropped(DropReason::NotAuthorized, 1);
                }
                ok
            }
        };
        // A denied message is still acknowledged: 3.1.1 has no negative ack (as Mosquitto).
        match publication.qos {
            QoS::AtMostOnce => {
                if allowed {
                    self.route(publication)?;
                }
            }
            QoS::AtLeastOnce => {
                if allowed {
                    self.route(publication)?;
                }
                self.ack(Ack::PubAck, pkid);
            }
            QoS::ExactlyOnce => {
                // A re-sent PUBLISH whose id awaits PUBREL was already routed: ack only.
                let seen = self.session.state.lock().incoming_qos2.contains(pkid);
                if !seen {
                    if allowed {
                        self.route(publication)?;
                    }
                    self.session.state.lock().add_incoming(pkid);
                }
                self.ack(Ack::PubRec, pkid);
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, pkid: u16, filters: Vec<(String, QoS)>) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut accepted = Vec::with_capacity(filters.len());
        let acl = self.router.auth().acl();
        for (filter, qos) in filters {
            let levels = topic_levels(filter.as_bytes());
            // (Not asked for a filter refused anyway for its depth.)
            let permitted = levels > self.config.max_topic_levels
                || acl.as_ref().is_none_or(|a| {
                    a.check_subscribe(&self.session.client_id, self.username.as_deref(), &filter)
                });
            match validate_topic_filter(&filter) {
                Ok(()) if levels > self.config.max_topic_levels => {
                    info!(
                        "Client {} subscription to {:?} refused: {levels} levels, over max_topic_levels ({})",
                        self.session.client_id,
                        shown(&filter),
                        self.config.max_topic_levels
                    );
                    codes.push(0x80);
                }
                Ok(()) if !permitted => {
                    info!(
                        "Client {} subscription to {:?} refused: not authorised (ACL)",
                        self.session.client_id,
                        shown(&filter)
                    );
                    codes.push(0x80);
                }
                Ok(()) if self.router.subscribe(&self.session, &filter, qos) => {
                    codes.push(qos as u8);
                    accepted.push((filter, qos));
                }
                Ok(()) => codes.push(0x80),
                Err(e) => {
                    info!(
                        "Client {} subscription to {:?} refused: {e}",
                        self.session.client_id,
                        shown(&filter)
                    );
                    codes.push(0x80);
                }
            }
        }
        codec::encode_suback(&mut self.out, pkid, &codes);
        debug!("Sending SUBACK to {}", self.session.client_id);
        if !self.config.retain_available || accepted.is_empty() {
            return;
        }
        // [MQTT-3.3.1-6] retained messages after the SUBACK (already in the write buffer),
        // flagged retained [MQTT-3.3.1-8]: every one, fed as the queue drains
        // (`take_deliveries`), never dropped by the queue limits nor copied at once.
        let mut st = self.session.state.lock();
        for (filter, granted) in accepted {
            st.add_retained_feed(&filter, granted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake dropped after attaching (a panic) detaches its session and takes back the
    /// connected count; a completed one leaves both as they are.
    #[test]
    fn an_unfinished_handshake_detaches_its_session() {
        let config = Config::default();
        let auth = Arc::new(AuthState::load(None, None).expect("no files"));
        let router = Arc::new(Router::new(
            config.session_limits(),
            crate::metrics::Metrics::disabled(),
            auth,
            None,
        ));
        let attach = |id: u64| Attachment {
            conn_id: id,
            username: None,
            keepalive_ms: 0,
        };
        let a = router
            .connect("guarded", false, attach(7))
            .expect("attached");
        router
            .metrics()
            .stats
            .clients_connected
            .fetch_add(1, Relaxed);
        drop(DetachOnDrop {
            router: router.clone(),
            session: a.session.clone(),
            conn_id: 7,
            armed: true,
        });
        assert_eq!(a.session.attached_conn.load(Acquire), 0, "detached");
        assert_eq!(router.metrics().stats.clients_connected.load(Relaxed), 0);
        let b = router
            .connect("guarded", false, attach(8))
            .expect("attached");
        drop(DetachOnDrop {
            router: router.clone(),
            session: b.session.clone(),
            conn_id: 8,
            armed: false,
        });
        assert_eq!(b.session.attached_conn.load(Acquire), 8, "still attached");
    }
}
