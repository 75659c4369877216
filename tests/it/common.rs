//! Shared helpers for the integration tests: an in-process broker on an
//! ephemeral port, a raw MQTT 3.1.1 client that builds and parses packets by
//! hand, and a thin wrapper around rumqttc as an independent client.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single expected network event in real-time tests.
/// Only ever used as a timeout (a failing test must not hang), never as a
/// sleep.
pub const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

pub struct TestBroker {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: Option<JoinHandle<Result<(), roostd::BrokerError>>>,
}

impl TestBroker {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// True while `Broker::run` has not returned (no panic, no early exit).
    pub fn is_running(&self) -> bool {
        self.handle
            .as_ref()
            .map(|h| !h.is_finished())
            .unwrap_or(false)
    }

    /// Cancel the shutdown token and wait (bounded) for `run` to return.
    pub async fn stop(mut self) -> Result<(), roostd::BrokerError> {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("broker handle");
        tokio::time::timeout(TIMEOUT, handle)
            .await
            .expect("Broker::run did not return within the timeout after shutdown")
            .expect("broker task panicked")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Full TOML text for a test broker: `extra_toml` holds top-level keys, one
/// 127.0.0.1:0 listener is appended. `allow_anonymous = true` is added unless
/// `extra_toml` sets it.
pub fn config_toml(extra_toml: &str) -> String {
    let mut s = String::new();
    if !extra_toml.contains("allow_anonymous") {
        s.push_str("allow_anonymous = true\n");
    }
    // Several brokers run at once in this process: never the fixed default metrics port.
    if !extra_toml.contains("metrics_") {
        s.push_str("metrics_port = 0\n");
    }
    // Persistence is on by default in ./roostd-data; tests that want it name a directory.
    if !extra_toml.contains("persistence") {
        s.push_str("persistence = false\n");
    }
    s.push_str(extra_toml);
    s.push('\n');
    s.push_str("[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\n");
    s
}

/// Starts a broker from complete TOML text; also returns its shared state (for counters and
/// reports) and its reload handle (what SIGHUP triggers).
pub async fn start_from_toml(
    text: &str,
) -> (
    TestBroker,
    Arc<roostd::router::Router>,
    Arc<tokio::sync::Notify>,
) {
    let cfg = roostd::Config::from_toml_str(text)
        .unwrap_or_else(|e| panic!("config rejected: {e}\n---\n{text}"));
    let broker = roostd::Broker::bind(cfg).await.expect("Broker::bind");
    let (addr, router, reload, shutdown) = (
        broker.local_addrs()[0],
        broker.router(),
        broker.reload_handle(),
        broker.shutdown_token(),
    );
    let handle = tokio::spawn(broker.run());
    (
        TestBroker {
            addr,
            shutdown,
            handle: Some(handle),
        },
        router,
        reload,
    )
}

/// `start_broker` that also returns the broker's shared state.
pub async fn start_broker_with_router(
    extra_toml: &str,
) -> (TestBroker, Arc<roostd::router::Router>) {
    let (b, router, _) = start_from_toml(&config_toml(extra_toml)).await;
    (b, router)
}

/// True when every named binary is on PATH. Otherwise prints "skipped: NAME not found"
/// and returns false, or panics when ROOSTD_REQUIRE_INTEROP=1 (CI installs them).
pub fn interop_binaries(names: &[&str]) -> bool {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
            .unwrap_or(false)
    };
    match names.iter().find(|n| !on_path(n)) {
        None => true,
        Some(missing) => {
            if std::env::var("ROOSTD_REQUIRE_INTEROP").as_deref() == Ok("1") {
                panic!("{missing} not found and ROOSTD_REQUIRE_INTEROP=1");
            }
            println!("skipped: {missing} not found");
            false
        }
    }
}

pub async fn start_broker(extra_toml: &str) -> TestBroker {
    let text = config_toml(extra_toml);
    let cfg = roostd::Config::from_toml_str(&text)
        .unwrap_or_else(|e| panic!("config rejected: {e}\n---\n{text}"));
    let broker = roostd::Broker::bind(cfg).await.expect("Broker::bind");
    let addr: SocketAddr = broker.local_addrs()[0];
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(
        addr.port(),
        0,
        "local_addrs must report the bound ephemeral port"
    );
    let shutdown: CancellationToken = broker.shutdown_token();
    let handle = tokio::spawn(broker.run());
    TestBroker {
        addr,
        shutdown,
        handle: Some(handle),
    }
}

// ---------------------------------------------------------------------------
// Packet encoding
// ---------------------------------------------------------------------------

pub fn encode_remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            return out;
        }
    }
}

/// A packet: fixed-header byte, correctly encoded remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(encode_remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// Two-byte length prefix + bytes (MQTT UTF-8 string / binary data).
pub fn mqtt_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

pub fn mqtt_str(s: &str) -> Vec<u8> {
    mqtt_bytes(s.as_bytes())
}

#[derive(Clone, Debug)]
pub struct Will {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8], qos: u8, retain: bool) -> Will {
        Will {
            topic: topic.as_bytes().to_vec(),
            payload: payload.to_vec(),
            qos,
            retain,
        }
    }
}

/// CONNECT packet builder.
#[derive(Clone, Debug)]
pub struct Connect {
    pub header: u8,
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub client_id: Vec<u8>,
    pub clean_session: bool,
    pub keepalive: u16,
    pub will: Option<Will>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    /// Replaces the computed connect-flags byte verbatim.
    pub flags_override: Option<u8>,
}

impl Connect {
    pub fn new(client_id: &str) -> Connect {
        Connect {
            header: 0x10,
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            client_id: client_id.as_bytes().to_vec(),
            clean_session: true,
            keepalive: 60,
            will: None,
            username: None,
            password: None,
            flags_override: None,
        }
    }
    pub fn clean(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }
    pub fn keepalive(mut self, secs: u16) -> Self {
        self.keepalive = secs;
        self
    }
    pub fn will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }
    pub fn username(mut self, u: &str) -> Self {
        self.username = Some(u.as_bytes().to_vec());
        self
    }
    pub fn password(mut self, p: &[u8]) -> Self {
        self.password = Some(p.to_vec());
        self
    }
    pub fn flags(mut self, flags: u8) -> Self {
        self.flags_override = Some(flags);
        self
    }
    pub fn header(mut self, header: u8) -> Self {
        self.header = header;
        self
    }
    pub fn protocol(mut self, name: &[u8], level: u8) -> Self {
        self.protocol_name = name.to_vec();
        self.level = level;
        self
    }
    pub fn client_id_bytes(mut self, id: &[u8]) -> Self {
        self.client_id = id.to_vec();
        self
    }

    pub fn computed_flags(&self) -> u8 {
        let mut f = 0u8;
        if self.clean_session {
            f |= 0x02;
        }
        if let Some(w) = &self.will {
            f |= 0x04 | ((w.qos & 0x03) << 3);
            if w.retain {
                f |= 0x20;
            }
        }
        if self.password.is_some() {
            f |= 0x40;
        }
        if self.username.is_some() {
            f |= 0x80;
        }
        f
    }

    /// The variable header + payload (the body after the remaining length).
    pub fn body(&self) -> Vec<u8> {
        let mut b = mqtt_bytes(&self.protocol_name);
        b.push(self.level);
        b.push(self.flags_override.unwrap_or_else(|| self.computed_flags()));
        b.extend(self.keepalive.to_be_bytes());
        if self.level == 5 {
            b.push(0); // empty CONNECT properties
        }
        b.extend(mqtt_bytes(&self.client_id));
        if let Some(w) = &self.will {
            if self.level == 5 {
                b.push(0); // empty will properties
            }
            b.extend(mqtt_bytes(&w.topic));
            b.extend(mqtt_bytes(&w.payload));
        }
        if let Some(u) = &self.username {
            b.extend(mqtt_bytes(u));
        }
        if let Some(p) = &self.password {
            b.extend(mqtt_bytes(p));
        }
        b
    }

    pub fn bytes(&self) -> Vec<u8> {
        packet(self.header, &self.body())
    }
}

pub fn publish_raw(
    topic: &[u8],
    payload: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    pid: Option<u16>,
) -> Vec<u8> {
    let mut first = 0x30 | ((qos & 0x03) << 1);
    if retain {
        first |= 0x01;
    }
    if dup {
        first |= 0x08;
    }
    let mut body = mqtt_bytes(topic);
    if let Some(pid) = pid {
        body.extend(pid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

/// PUBLISH; `pid` is written only when `qos > 0`.
pub fn publish(topic: &str, payload: &[u8], qos: u8, retain: bool, dup: bool, pid: u16) -> Vec<u8> {
    publish_raw(
        topic.as_bytes(),
        payload,
        qos,
        retain,
        dup,
        if qos > 0 { Some(pid) } else { None },
    )
}

pub fn subscribe_with_header(header: u8, pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (f, q) in filters {
        body.extend(mqtt_str(f));
        body.push(*q);
    }
    packet(header, &body)
}

pub fn subscribe(pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    subscribe_with_header(0x82, pid, filters)
}

pub fn unsubscribe_with_header(header: u8, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for f in filters {
        body.extend(mqtt_str(f));
    }
    packet(header, &body)
}

pub fn unsubscribe(pid: u16, filters: &[&str]) -> Vec<u8> {
    unsubscribe_with_header(0xA2, pid, filters)
}

fn ack(first: u8, pid: u16) -> Vec<u8> {
    let p = pid.to_be_bytes();
    vec![first, 0x02, p[0], p[1]]
}
pub fn puback(pid: u16) -> Vec<u8> {
    ack(0x40, pid)
}
pub fn pubrec(pid: u16) -> Vec<u8> {
    ack(0x50, pid)
}
pub fn pubrel(pid: u16) -> Vec<u8> {
    ack(0x62, pid)
}
pub fn pubcomp(pid: u16) -> Vec<u8> {
    ack(0x70, pid)
}
pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}
pub fn disconnect() -> Vec<u8> {
    vec![0xE0, 0x00]
}

pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const UNSUBACK: u8 = 11;
pub const PINGRESP: u8 = 13;

// ---------------------------------------------------------------------------
// Packet decoding
// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    pub header: u8,
    pub body: Vec<u8>,
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Packet(type {} header {:#04x} body {:02x?})",
            self.header >> 4,
            self.header,
            self.body
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    pub pid: Option<u16>,
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }

    pub fn bytes(&self) -> Vec<u8> {
        packet(self.header, &self.body)
    }

    /// Packet identifier of a two-byte ack body (PUBACK..PUBCOMP, UNSUBACK).
    pub fn ack_pid(&self) -> u16 {
        assert_eq!(
            self.body.len(),
            2,
            "ack packet with unexpected body: {self:?}"
        );
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    pub fn publish(&self) -> Publish {
        assert_eq!(self.kind(), PUBLISH, "expected PUBLISH, got {self:?}");
        let qos = (self.header >> 1) & 0x03;
        let b = &self.body;
        assert!(b.len() >= 2, "short PUBLISH {self:?}");
        let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
        let topic = String::from_utf8(b[2..2 + tl].to_vec()).expect("broker sent non-UTF-8 topic");
        let mut rest = &b[2 + tl..];
        let pid = if qos > 0 {
            let p = u16::from_be_bytes([rest[0], rest[1]]);
            rest = &rest[2..];
            Some(p)
        } else {
            None
        };
        Publish {
            topic,
            payload: rest.to_vec(),
            qos,
            dup: self.header & 0x08 != 0,
            retain: self.header & 0x01 != 0,
            pid,
        }
    }
}

/// Read exactly one MQTT packet. `Ok(None)` on a clean EOF before the first
/// byte; EOF inside a packet is an `UnexpectedEof` error.
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Packet>> {
    let mut first = [0u8; 1];
    if r.read(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 0;
    loop {
        let b = r.read_u8().await?;
        len += (b & 0x7F) as usize * mult;
        if b & 0x80 == 0 {
            break;
        }
        i += 1;
        if i == 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed remaining length from broker",
            ));
        }
        mult *= 128;
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(Packet {
        header: first[0],
        body,
    }))
}

fn is_close_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Read until EOF (read returns 0 or a reset error). Returns whatever bytes
/// arrived before the close. Panics if the peer keeps the connection open
/// for longer than `within`.
pub async fn expect_closed<R: AsyncRead + Unpin>(r: &mut R, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let res = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if is_close_error(&e) => return,
                Err(e) => panic!("unexpected read error while waiting for close: {e}"),
            }
        }
    })
    .await;
    if res.is_err() {
        panic!("connection was not closed within {within:?}; received meanwhile: {got:02x?}");
    }
    got
}

// ---------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------

pub struct Raw {
    pub io: BufReader<TcpStream>,
    /// PUBLISH packets read while waiting for something else.
    pub pending: VecDeque<Packet>,
    next_pid: u16,
}

impl Raw {
    pub async fn tcp(addr: SocketAddr) -> Raw {
        let s = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("tcp connect timeout")
            .expect("tcp connect");
        s.set_nodelay(true).ok();
        Raw::from_stream(s)
    }

    pub fn from_stream(s: TcpStream) -> Raw {
        Raw {
            io: BufReader::new(s),
            pending: VecDeque::new(),
            next_pid: 0,
        }
    }

    /// TCP connect and send the CONNECT; does not read the CONNACK.
    pub async fn connect(addr: SocketAddr, c: &Connect) -> Raw {
        let mut r = Raw::tcp(addr).await;
        r.send(&c.bytes()).await;
        r
    }

    /// CONNECT, read CONNACK; returns (client, session_present). Panics unless
    /// the CONNACK is exactly 0x20 0x02 SP 0x00.
    pub async fn connect_ok(addr: SocketAddr, c: &Connect) -> (Raw, bool) {
        let mut r = Raw::connect(addr, c).await;
        let p = r.recv().await;
        assert_eq!(p.header, 0x20, "expected CONNACK, got {p:?}");
        assert_eq!(
            p.body.len(),
            2,
            "CONNACK must have remaining length 2: {p:?}"
        );
        assert_eq!(p.body[1], 0x00, "CONNECT refused: {p:?}");
        assert!(p.body[0] <= 1, "reserved CONNACK flags set: {p:?}");
        (r, p.body[0] == 1)
    }

    /// Clean-session client with default keepalive.
    pub async fn client(addr: SocketAddr, id: &str) -> Raw {
        Raw::connect_ok(addr, &Connect::new(id)).await.0
    }

    pub fn next_pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.wrapping_add(1);
        if self.next_pid == 0 {
            self.next_pid = 1;
        }
        self.next_pid
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let s = self.io.get_mut();
        s.write_all(bytes).await.expect("write to broker");
        s.flush().await.expect("flush");
    }

    /// Write ignoring errors (the broker may already have closed).
    pub async fn send_lossy(&mut self, bytes: &[u8]) {
        let s = self.io.get_mut();
        let _ = s.write_all(bytes).await;
        let _ = s.flush().await;
    }

    async fn read_socket(&mut self, within: Duration) -> Packet {
        match tokio::time::timeout(within, read_packet(&mut self.io)).await {
            Err(_) => panic!("no packet from broker within {within:?}"),
            Ok(Err(e)) => panic!("read error while expecting a packet: {e}"),
            Ok(Ok(None)) => panic!("broker closed the connection while a packet was expected"),
            Ok(Ok(Some(p))) => p,
        }
    }

    /// Next packet (stashed PUBLISHes first).
    pub async fn recv(&mut self) -> Packet {
        self.recv_within(TIMEOUT).await
    }

    pub async fn recv_within(&mut self, within: Duration) -> Packet {
        if let Some(p) = self.pending.pop_front() {
            return p;
        }
        self.read_socket(within).await
    }

    /// Wait for a packet of `kind`, stashing PUBLISHes that arrive first.
    /// Any other packet type is a test failure.
    pub async fn expect_kind(&mut self, kind: u8) -> Packet {
        loop {
            let p = self.read_socket(TIMEOUT).await;
            if p.kind() == kind {
                return p;
            }
            if p.kind() == PUBLISH {
                self.pending.push_back(p);
                continue;
            }
            panic!("expected packet type {kind}, got {p:?}");
        }
    }

    /// Next packet must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        let p = self.recv().await;
        p.publish()
    }

    pub async fn recv_publish_within(&mut self, within: Duration) -> Publish {
        self.recv_within(within).await.publish()
    }

    /// Receive a PUBLISH and complete the QoS handshake for it as receiver.
    pub async fn recv_publish_ack(&mut self) -> Publish {
        let p = self.recv_publish().await;
        self.ack_publish(&p).await;
        p
    }

    pub async fn ack_publish(&mut self, p: &Publish) {
        match p.qos {
            0 => {}
            1 => self.send(&puback(p.pid.unwrap())).await,
            2 => {
                let pid = p.pid.unwrap();
                self.send(&pubrec(pid)).await;
                let rel = self.expect_kind(PUBREL).await;
                assert_eq!(
                    rel.header, 0x62,
                    "PUBREL header must be 0x62 [MQTT-3.6.1-1]"
                );
                assert_eq!(rel.ack_pid(), pid);
                self.send(&pubcomp(pid)).await;
            }
            q => panic!("invalid qos {q}"),
        }
    }

    /// SUBSCRIBE and wait for the SUBACK; returns the return codes.
    pub async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
        let pid = self.next_pid();
        self.send(&subscribe(pid, filters)).await;
        let p = self.expect_kind(SUBACK).await;
        assert_eq!(p.header, 0x90, "SUBACK header {p:?}");
        assert_eq!(
            u16::from_be_bytes([p.body[0], p.body[1]]),
            pid,
            "SUBACK packet id [MQTT-3.8.4-2]"
        );
        p.body[2..].to_vec()
    }

    /// SUBSCRIBE asserting every filter granted the requested QoS.
    pub async fn sub(&mut self, filter: &str, qos: u8) {
        let codes = self.subscribe(&[(filter, qos)]).await;
        assert_eq!(codes, vec![qos], "SUBACK for {filter} at QoS {qos}");
    }

    pub async fn unsubscribe(&mut self, filters: &[&str]) {
        let pid = self.next_pid();
        self.send(&unsubscribe(pid, filters)).await;
        let p = self.expect_kind(UNSUBACK).await;
        assert_eq!(p.header, 0xB0);
        assert_eq!(p.ack_pid(), pid);
    }

    /// Publish and complete the sender side of the QoS flow.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let pid = self.next_pid();
        self.send(&publish(topic, payload, qos, retain, false, pid))
            .await;
        match qos {
            0 => {}
            1 => {
                let a = self.expect_kind(PUBACK).await;
                assert_eq!(a.bytes(), puback(pid), "PUBACK must echo the packet id");
            }
            2 => {
                let a = self.expect_kind(PUBREC).await;
                assert_eq!(a.bytes(), pubrec(pid), "PUBREC must echo the packet id");
                self.send(&pubrel(pid)).await;
                let c = self.expect_kind(PUBCOMP).await;
                assert_eq!(c.bytes(), pubcomp(pid), "PUBCOMP must echo the packet id");
            }
            _ => panic!("bad qos"),
        }
    }

    /// PINGREQ and wait for PINGRESP (stashing PUBLISHes that come first).
    pub async fn ping(&mut self) {
        self.send(&pingreq()).await;
        let p = self.expect_kind(PINGRESP).await;
        assert_eq!(p.bytes(), vec![0xD0, 0x00]);
    }

    /// DISCONNECT and wait until the broker has closed the socket.
    pub async fn disconnect(mut self) {
        self.send(&disconnect()).await;
        self.expect_closed().await;
    }

    pub async fn expect_closed(&mut self) -> Vec<u8> {
        self.expect_closed_within(TIMEOUT).await
    }

    pub async fn expect_closed_within(&mut self, within: Duration) -> Vec<u8> {
        let mut got: Vec<u8> = self.pending.drain(..).flat_map(|p| p.bytes()).collect();
        got.extend(expect_closed(&mut self.io, within).await);
        got
    }

    /// The connection must be closed without the CONNECT having been
    /// accepted: nothing at all, or a CONNACK with a non-zero return code.
    pub async fn expect_rejected(&mut self) {
        let got = self.expect_closed().await;
        assert!(
            got.is_empty() || (got.len() == 4 && got[0] == 0x20 && got[1] == 0x02 && got[3] != 0),
            "broker should have closed the connection without accepting; got {got:02x?}"
        );
    }

    /// After a protocol violation: closed, with no response packet at all.
    pub async fn expect_closed_silently(&mut self) {
        let got = self.expect_closed().await;
        assert!(
            got.is_empty(),
            "broker should close without responding; got {got:02x?}"
        );
    }
}

/// A well-behaved client can still connect, subscribe and receive its own
/// QoS 1 message: the broker keeps serving others.
pub async fn assert_broker_alive(b: &TestBroker) {
    assert!(b.is_running(), "Broker::run returned or panicked");
    let (mut c, _) = Raw::connect_ok(b.addr, &Connect::new("alive-check")).await;
    c.sub("alive/check", 1).await;
    c.publish("alive/check", b"still here", 1, false).await;
    let p = c.recv_publish().await;
    assert_eq!(p.topic, "alive/check");
    assert_eq!(p.payload, b"still here");
    c.ack_publish(&p).await;
    c.disconnect().await;
    assert!(b.is_running(), "Broker::run returned or panicked");
}

// ---------------------------------------------------------------------------
// rumqttc client
// ---------------------------------------------------------------------------

pub struct Mq {
    pub client: rumqttc::AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Result<rumqttc::Packet, String>>,
    pending: VecDeque<rumqttc::Publish>,
    task: JoinHandle<()>,
}

impl Drop for Mq {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mq {
    /// Connect with rumqttc and wait for a successful CONNACK.
    pub async fn connect(addr: SocketAddr, id: &str, clean: bool) -> Mq {
        let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        Mq::connect_with(opts).await
    }

    pub async fn connect_with(opts: rumqttc::MqttOptions) -> Mq {
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut mq = Mq {
            client,
            rx,
            pending: VecDeque::new(),
            task,
        };
        match mq.next_packet().await {
            rumqttc::Packet::ConnAck(ack) => {
                assert_eq!(
                    ack.code,
                    rumqttc::ConnectReturnCode::Success,
                    "rumqttc CONNACK"
                );
            }
            other => panic!("expected ConnAck, got {other:?}"),
        }
        mq
    }

    async fn next_packet(&mut self) -> rumqttc::Packet {
        match tokio::time::timeout(TIMEOUT, self.rx.recv()).await {
            Err(_) => panic!("rumqttc: nothing received within {TIMEOUT:?}"),
            Ok(None) => panic!("rumqttc event loop ended"),
            Ok(Some(Err(e))) => panic!("rumqttc connection error: {e}"),
            Ok(Some(Ok(p))) => p,
        }
    }

    /// Next incoming PUBLISH (acks and pings are skipped).
    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        if let Some(p) = self.pending.pop_front() {
            return p;
        }
        loop {
            if let rumqttc::Packet::Publish(p) = self.next_packet().await {
                return p;
            }
        }
    }

    /// Subscribe and wait for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("rumqttc subscribe");
        loop {
            match self.next_packet().await {
                rumqttc::Packet::SubAck(s) => return s.return_codes,
                rumqttc::Packet::Publish(p) => self.pending.push_back(p),
                _ => {}
            }
        }
    }

    /// Publish and wait for the broker's final ack (PUBACK / PUBCOMP); for
    /// QoS 0 nothing is awaited.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: rumqttc::QoS, retain: bool) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("rumqttc publish");
        if qos == rumqttc::QoS::AtMostOnce {
            return;
        }
        loop {
            match self.next_packet().await {
                rumqttc::Packet::PubAck(_) if qos == rumqttc::QoS::AtLeastOnce => return,
                rumqttc::Packet::PubComp(_) if qos == rumqttc::QoS::ExactlyOnce => return,
                rumqttc::Packet::Publish(p) => self.pending.push_back(p),
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// Deterministic xorshift64* generator for the fuzz loop.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}
