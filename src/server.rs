//! Listeners (TCP and TLS), the accept loop with its connection limit, session expiry,
//! metrics/$SYS tasks, and graceful shutdown: cancelling the token stops accepting, closes
//! every connection and `run` returns once they are done (or after a grace period).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::auth::live::AuthState;
use crate::auth::AuthError;
use crate::config::{
    Config, ConfigError, IdentitySource, ListenerConfig, ListenerProtocol, DEFAULT_PORT,
};
use crate::connection::{self, CertUser, Context};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::storage::{StorageError, Store};
use crate::tls::{self, TlsAcceptor, TlsError};
use crate::{http, sys, websocket};

/// How long `run` waits for connections to close after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors starting or running the broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("binding the metrics endpoint {addr} (metrics_bind_address/metrics_port, or --metrics-port PORT; --metrics-port 0 turns it off): {source}")]
    BindMetrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS listener {listener}: {source}")]
    Tls { listener: String, source: TlsError },
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("persistence: {0}")]
    Storage(#[from] StorageError),
}

/// One bound listener.
struct Listener {
    tcp: TcpListener,
    /// Set for TLS listeners.
    tls: Option<Arc<TlsAcceptor>>,
    /// Set when the certificate identity is the user name.
    identity: Option<IdentitySource>,
    /// MQTT over WebSockets (ws, or wss with TLS); the HTTP path accepted, if one is set.
    websocket: Option<Option<Arc<str>>>,
    /// Its connection counts (`roostd_listener_connections{listener, protocol}`).
    stats: Arc<crate::metrics::ListenerStats>,
}

/// A broker with its listeners bound, ready to `run`.
pub struct Broker {
    config: Arc<Config>,
    router: Arc<Router>,
    listeners: Vec<Listener>,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
}

impl Broker {
    /// Validates `config` and binds its listeners (127.0.0.1:1883 when none is configured).
    pub async fn bind(config: Config) -> Result<Broker, BrokerError> {
        Self::bind_with_default_port(config, DEFAULT_PORT).await
    }

    /// As `bind`, with the port of the default listener (the `-p` flag).
    pub async fn bind_with_default_port(
        config: Config,
        default_port: u16,
    ) -> Result<Broker, BrokerError> {
        config.validate()?;
        let metrics = if config.metrics_enabled {
            Metrics::with_exporter()
        } else {
            Metrics::disabled()
        };
        // The MQTT listeners first: a port clash names what the user asked for, not the
        // metrics port.
        let mut listeners = Vec::new();
        let mut effective = config.effective_listeners(default_port);
        let local_only = config.listener.is_empty();
        if local_only {
            // As Mosquitto with no listener configured: the IPv6 loopback too, where the
            // machine has IPv6 (on the port the IPv4 one got, for port 0).
            effective.push(ListenerConfig::plain("::1", default_port));
        }
        for (i, l) in effective.into_iter().enumerate() {
            let mut addr = l.socket_addr()?;
            let ipv6_loopback = local_only && i == 1;
            if ipv6_loopback {
                if let Some(first) = listeners.first() {
                    let first: &Listener = first;
                    if let Ok(v4) = first.tcp.local_addr() {
                        addr.set_port(v4.port());
                    }
                }
            }
            let tcp = match TcpListener::bind(addr).await {
                Ok(tcp) => tcp,
                Err(e) if ipv6_loopback => {
                    info!("No IPv6 loopback listener on {addr} ({e}); IPv4 only.");
                    continue;
                }
                Err(source) => return Err(BrokerError::Bind { addr, source }),
            };
            let local = tcp.local_addr().unwrap_or(addr);
            let tls = match l.tls_files()? {
                Some(files) => Some(
                    TlsAcceptor::new(local.to_string(), files, &metrics).map_err(|source| {
                        BrokerError::Tls {
                            listener: local.to_string(),
                            source,
                        }
                    })?,
                ),
                None => None,
            };
            let ws = l.protocol == ListenerProtocol::Websockets;
            info!(
                "Opening ipv{} listen socket on {local}{}.",
                if local.is_ipv4() { 4 } else { 6 },
                match (tls.is_some(), ws) {
                    (true, true) => " (WebSockets over TLS)",
                    (false, true) => " (WebSockets)",
                    (true, false) => " (TLS)",
                    (false, false) => "",
                }
            );
            if config.anonymous_allowed() && !local.ip().is_loopback() {
                warn!("Listener {local} accepts anonymous clients from the network (allow_anonymous = true).");
            }
            let stats = metrics.listener(
                &local.to_string(),
                match (tls.is_some(), ws) {
                    (false, false) => "mqtt",
                    (true, false) => "mqtts",
                    (false, true) => "ws",
                    (true, true) => "wss",
                },
            );
            listeners.push(Listener {
                tcp,
                tls,
                identity: l.use_identity_as_username.then_some(l.identity_source),
                websocket: (l.protocol == ListenerProtocol::Websockets)
                    .then(|| l.path.as_deref().map(Arc::from)),
                stats,
            });
        }
        let metrics_listener = if config.metrics_enabled {
            let addr = config.metrics_addr()?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::BindMetrics { addr, source })?;
            info!(
                "Serving metrics on http://{}/metrics",
                listener.local_addr().unwrap_or(addr)
            );
            Some(listener)
        } else {
            None
        };
        if !config.anonymous_allowed() && config.password_file.is_none() {
            warn!("allow_anonymous is false and no password_file is configured: only certificate identities (use_identity_as_username) can connect.");
        }
        let auth = Arc::new(AuthState::load(
            config.password_file.as_ref(),
            config.acl_file.as_ref(),
        )?);
        if let Some(p) = auth.passwords() {
            info!("Loaded {} user(s) from password_file.", p.len());
        }
        if auth.acl().is_some() {
            info!("Loaded acl_file: PUBLISH, SUBSCRIBE and every delivery are checked against it.");
        }
        let store = if config.persistence {
            let store = Arc::new(Store::open(
                &config.persistence_location,
                config.fsync_policy(),
            )?);
            store.set_backlog_limit(config.max_storage_backlog);
            Some(store)
        } else {
            None
        };
        let router = Arc::new(
            Router::new(config.session_limits(), metrics, auth, store.clone())
                .with_retained_limits(config.retained_limits()),
        );
        if let Some(store) = &store {
            let started = std::time::Instant::now();
            let recovered = store.recover()?;
            let (sessions, retained, dropped) = (
                recovered.sessions.len(),
                recovered.retained.len(),
                recovered.dropped_records,
            );
            let on_disk: usize = recovered.sessions.iter().map(|s| s.stored_messages).sum();
            router.restore(recovered);
            info!(
                "Recovered {retained} retained message(s) and {sessions} persistent session(s) with {on_disk} stored message(s) (left on disk until their clients return) in {:?}.",
                started.elapsed()
            );
            if dropped > 0 {
                warn!("Dropped {dropped} undecodable record(s) from the database; everything else was recovered.");
            }
        }
        Ok(Broker {
            config: Arc::new(config),
            router,
            listeners,
            metrics_listener,
            shutdown: CancellationToken::new(),
            reload: Arc::new(Notify::new()),
        })
    }

    /// The bound addresses, in config order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.tcp.local_addr().ok())
            .collect()
    }

    /// Address of the metrics endpoint, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Cancel this token to shut the broker down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// `notify_waiters()` on this re-reads certificate files (what SIGHUP does).
    pub fn reload_handle(&self) -> Arc<Notify> {
        self.reload.clone()
    }

    /// The shared routing state (for tests and benchmarks).
    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// Serves until the shutdown token is cancelled, then closes every connection.
    pub async fn run(self) -> Result<(), BrokerError> {
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let ctx = Context {
            router: self.router.clone(),
            config: self.config.clone(),
            shutdown: self.shutdown.clone(),
        };
        let tls_listeners: Vec<Arc<TlsAcceptor>> = self
            .listeners
            .iter()
            .filter_map(|l| l.tls.clone())
            .collect();
        tracker.spawn(crate::auth::live::watch(
            self.router.auth().clone(),
            Duration::from_secs(self.config.reload_interval),
            self.reload.clone(),
            self.shutdown.clone(),
        ));
        if !tls_listeners.is_empty() {
            tracker.spawn(tls::watch(
                tls_listeners,
                Duration::from_secs(self.config.reload_interval),
                self.reload.clone(),
                self.router.clone(),
                self.shutdown.clone(),
            ));
        }
        for listener in self.listeners {
            tracker.spawn(accept_loop(
                listener,
                ctx.clone(),
                limit.clone(),
                tracker.clone(),
            ));
        }
        tracker.spawn(keepalive_loop(self.router.clone(), self.shutdown.clone()));
        if let Some(expiry) = self.config.expiration() {
            tracker.spawn(expire_loop(
                self.router.clone(),
                expiry,
                self.shutdown.clone(),
            ));
        }
        if let Some(listener) = self.metrics_listener {
            tracker.spawn(http::serve(
                listener,
                self.router.clone(),
                self.shutdown.clone(),
            ));
            tracker.spawn(upkeep_loop(self.router.clone(), self.shutdown.clone()));
        }
        if self.config.sys_interval > 0 {
            let interval = Duration::from_secs(self.config.sys_interval);
            tracker.spawn(sys::run(
                self.router.clone(),
                interval,
                self.shutdown.clone(),
            ));
        }
        self.shutdown.cancelled().await;
        // Connections past CONNECT watch the router, not the token (a waiter per connection
        // would make every connection's task bigger).
        self.router.close_all();
        info!(
            "Shutting down: closing {} connection(s).",
            self.config.max_connections - limit.available_permits()
        );
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!("Some connections did not close within {SHUTDOWN_GRACE:?}.");
        }
        if let Some(store) = self.router.store().cloned() {
            // Commit and fsync what is pending, off the async threads.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: Listener,
    ctx: Context,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.tcp.accept() => r,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // E.g. out of file descriptors: wait instead of spinning.
                error!("Accepting a connection failed: {e}; retrying in {backoff:?}.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctx.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.router
                .metrics()
                .stats
                .connections_over_limit
                .fetch_add(1, Relaxed);
            warn!(
                "Refusing connection from {peer}: max_connections ({}) reached.",
                ctx.config.max_connections
            );
            drop(socket);
            continue;
        };
        // Taken here, in accept order: of several connections with one client id, the one
        // accepted last wins [MQTT-3.1.4-2], however their handshakes interleave.
        let conn_id = connection::next_conn_id();
        // Our writer batches; Nagle would only add latency.
        let _ = socket.set_nodelay(true);
        // The permit travels with the connection and is released when it ends.
        let permit = connection::Slot::new(permit, listener.stats.clone());
        match (listener.tls.clone(), &listener.websocket) {
            (None, None) => {
                tracker.spawn(connection::serve(
                    socket,
                    peer,
                    conn_id,
                    ctx.clone(),
                    CertUser::NotUsed,
                    Some(permit),
                ));
            }
            (None, Some(path)) => {
                tracker.spawn(serve_ws(
                    socket,
                    peer,
                    conn_id,
                    ctx.clone(),
                    CertUser::NotUsed,
                    path.clone(),
                    permit,
                ));
            }
            (Some(tls), websocket) => {
                let ctx = ctx.clone();
                let identity = listener.identity;
                let ws = websocket.clone();
                tracker.spawn(serve_tls(
                    socket, peer, conn_id, ctx, tls, identity, ws, permit,
                ));
            }
        }
    }
}

/// Runs the TLS handshake (bounded by tls_handshake_timeout), then serves MQTT over it.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    socket: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    ctx: Context,
    tls: Arc<TlsAcceptor>,
    identity: Option<IdentitySource>,
    websocket: Option<Option<Arc<str>>>,
    permit: connection::Slot,
) {
    let timeout = Duration::from_secs(ctx.config.tls_handshake_timeout);
    // Boxed: the handshake future is several KiB and would otherwise stay in the task.
    let handshake = tokio::select! {
        r = Box::pin(tokio::time::timeout(timeout, tls.acceptor().accept(socket))) => r,
        _ = ctx.shutdown.cancelled() => return,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            ctx.router
                .metrics()
                .stats
                .tls_handshake_failures
                .fetch_add(1, Relaxed);
            let plain = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
                    )
                });
            if plain {
                warn!(
                    "TLS handshake with {peer} on {} failed: not a TLS handshake (a plain MQTT client on a TLS port?).",
                    tls.label
                );
            } else {
                warn!("TLS handshake with {peer} on {} failed: {e}", tls.label);
            }
            return;
        }
        Err(_) => {
            ctx.router
                .metrics()
                .stats
                .tls_handshake_failures
                .fetch_add(1, Relaxed);
            warn!(
                "TLS handshake with {peer} on {} not finished within {timeout:?}, closing.",
                tls.label
            );
            return;
        }
    };
    let user = match identity {
        None => CertUser::NotUsed,
        Some(source) => {
            let id = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| tls::certificate_identity(leaf, source));
            match id {
                Some(id) => CertUser::Identity(id),
                None => CertUser::Missing,
            }
        }
    };
    match websocket {
        None => connection::serve(stream, peer, conn_id, ctx, user, Some(permit)).await,
        Some(path) => serve_ws(stream, peer, conn_id, ctx, user, path, permit).await,
    }
}

/// MQTT over WebSockets: the HTTP upgrade in the connection's own task, within the CONNECT
/// timeout (a slow client does not stall the accept loop), then MQTT over the frames.
async fn serve_ws<S>(
    mut stream: S,
    peer: SocketAddr,
    conn_id: u64,
    ctx: Context,
    user: CertUser,
    path: Option<Arc<str>>,
    permit: connection::Slot,
) where
    S: connection::Transport + 'static,
{
    let limit = Duration::from_secs(ctx.config.connect_timeout);
    let upgraded = tokio::select! {
        r = Box::pin(tokio::time::timeout(limit, websocket::upgrade(&mut stream, path.as_deref()))) => r,
        _ = ctx.shutdown.cancelled() => return,
    };
    let leftover = match upgraded {
        Ok(Ok(u)) => {
            tracing::debug!(
                "WebSocket upgrade from {peer} (subprotocol {}).",
                u.subprotocol.unwrap_or("none")
            );
            u.leftover
        }
        Ok(Err(e)) => {
            info!("WebSocket connection from {peer} refused: {e}");
            return;
        }
        Err(_) => {
            ctx.router
                .metrics()
                .stats
                .connect_timeouts
                .fetch_add(1, Relaxed);
            info!(
                "WebSocket client from {peer} did not finish its upgrade within {}s, closing.",
                ctx.config.connect_timeout
            );
            return;
        }
    };
    // A frame may hold a whole packet: its fixed header (at most 5 bytes) on top of the limit.
    let max = ctx.config.message_size_limit + 5;
    let ws = websocket::WsStream::new(stream, leftover, max);
    connection::serve(ws, peer, conn_id, ctx, user, Some(permit)).await;
}

/// Folds histogram samples into buckets even when nobody scrapes, so memory stays bounded.
async fn upkeep_loop(router: Arc<Router>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => router.metrics().upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Ticks the keepalive wheel: clients silent for 1.5 x their keepalive are closed within a
/// tick (100 ms) of the deadline [MQTT-3.1.2-24] (`crate::keepalive`).
async fn keepalive_loop(router: Arc<Router>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(crate::keepalive::TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => { router.tick_keepalive(); }
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn expire_loop(router: Arc<Router>, expiry: Duration, shutdown: CancellationToken) {
    // Check often enough that a session outlives its expiry by at most a tenth (or a minute).
    let period = (expiry / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => { router.expire_sessions(expiry); }
            _ = shutdown.cancelled() => return,
        }
    }
}
