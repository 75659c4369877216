//! roostd load generator: a lean MQTT 3.1.1 client over tokio, written so that the client is
//! never the bottleneck (raw packet bytes, 1 MiB read buffers, one write per batch).
//!
//! ```text
//! cargo bench --bench loadgen -- fanin   --port 1883 --clients 8  --qos 0 --payload 64 --seconds 5
//! cargo bench --bench loadgen -- fanout  --port 1883 --clients 8  --qos 1 --messages 100000
//! cargo bench --bench loadgen -- pairs   --port 1883 --clients 16 --qos 0
//! cargo bench --bench loadgen -- latency --port 1883 --rate 10000 --seconds 5
//! cargo bench --bench loadgen -- idle    --port 1883 --clients 2000 --broker-pid 1234
//! ```
//!
//! Every payload starts with (publisher id u32, sequence u64, send time ns u64), so subscribers
//! count received, lost, duplicated and reordered messages per publisher. Each run prints one
//! `RESULT key=value ...` line. Exit status: 0 ok, 1 a QoS 1 message was lost, 2 an error
//! (connection refused or closed, protocol error, missing PUBACK, bad arguments).
//! Every loop is bounded in count and time; only loopback addresses are accepted.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Bytes of (publisher id, sequence, timestamp) at the start of every payload.
const STAMP_LEN: usize = 4 + 8 + 8;
/// Keepalive sent in CONNECT. Not 0: rumqttd refuses keepalive 0. Longer than any run.
const KEEPALIVE_SECS: u16 = 900;
/// Longest run accepted, so that every loop ends by itself.
const MAX_SECONDS: f64 = 600.0;
/// A publisher writes at most this many bytes per write call.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Read buffer of a subscriber or a QoS 1 publisher's ack reader.
const READ_BUF_BYTES: usize = 1024 * 1024;
/// How long one handshake step (TCP connect, CONNACK, SUBACK) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle readers wake up to check whether they are done.
const POLL: Duration = Duration::from_millis(50);
/// Latency samples kept at most (memory bound).
const MAX_LATENCY_SAMPLES: usize = 20_000_000;

const USAGE: &str = "\
usage: loadgen SCENARIO [options]      (cargo bench --bench loadgen -- SCENARIO [options])

scenarios:
  fanin     N publishers -> 1 wildcard subscriber
  fanout    1 publisher -> N subscribers (msgs_per_sec counts deliveries)
  pairs     N publisher/subscriber pairs, one topic each
  latency   N pairs at a fixed --rate per publisher; p50/p99/p99.9 of publish-to-delivery time
  idle      open N connections (CONNECT + SUBSCRIBE), hold them, report connect rate and,
            with --broker-pid, broker RSS per connection

options:
  --host IP            loopback address of the broker (default 127.0.0.1; nothing else allowed)
  --port P             broker port (default 1883)
  --qos 0|1            QoS of publishes and subscriptions (default 0)
  --payload BYTES      payload size, at least 20 (default 64)
  --clients N          publishers (fanin), subscribers (fanout), pairs (pairs, latency) or
                       connections (idle); defaults 8, 8, 16, 1, 1000
  --seconds S          publish for S seconds (default 5; with --messages a time cap of 120)
  --messages M         publish M messages per publisher, then stop
  --window W           unacknowledged QoS 1 publishes per publisher (default 100)
  --rate R             messages per second per publisher (latency: default 10000; others: unlimited)
  --drain S            after publishers stop, wait at most S seconds without progress (default 5)
  --broker-pid PID     sample the broker's VmRSS and CPU time from /proc/PID
  --label NAME         broker name written into the RESULT line (default broker)
  --hold S             idle: keep connections open S seconds after the RSS sample (default 1)
  --concurrency C      idle: connection handshakes in progress at once (default 64)
  --threads T          tokio worker threads (default 1: a current-thread runtime)
";

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    FanIn,
    FanOut,
    Pairs,
    Latency,
    Idle,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fanin",
            Scenario::FanOut => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Latency => "latency",
            Scenario::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    scenario: Scenario,
    addr: SocketAddr,
    qos: u8,
    payload: usize,
    clients: usize,
    seconds: f64,
    messages: Option<u64>,
    window: usize,
    rate: Option<u64>,
    drain: Duration,
    broker_pid: Option<u32>,
    label: String,
    hold: Duration,
    concurrency: usize,
    threads: usize,
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: cannot parse {value:?}"))
}

/// Parses the command line. `Ok(None)`: nothing to run (no scenario, e.g. plain `cargo bench`).
fn parse_args(raw: Vec<String>) -> Result<Option<Args>, String> {
    let mut scenario = None;
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        // cargo bench passes --bench to harness = false targets.
        if arg == "--bench" {
            continue;
        }
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if let Some(flag) = arg.strip_prefix("--") {
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = it.next().ok_or_else(|| format!("--{flag} needs a value"))?;
                    (flag.to_string(), v)
                }
            };
            flags.insert(name, value);
        } else if scenario.is_none() {
            scenario = Some(match arg.as_str() {
                "fanin" => Scenario::FanIn,
                "fanout" => Scenario::FanOut,
                "pairs" => Scenario::Pairs,
                "latency" => Scenario::Latency,
                "idle" => Scenario::Idle,
                other => return Err(format!("unknown scenario {other:?}")),
            });
        } else {
            return Err(format!("unexpected argument {arg:?}"));
        }
    }
    let Some(scenario) = scenario else {
        return Ok(None);
    };
    let mut take = |name: &str| flags.remove(name);

    let host = take("host").unwrap_or_else(|| "127.0.0.1".into());
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        parse_num("--host", &host)?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "--host {ip}: only loopback addresses (127.0.0.0/8, ::1) are allowed"
        ));
    }
    let port: u16 = take("port").map_or(Ok(1883), |v| parse_num("--port", &v))?;
    let qos: u8 = take("qos").map_or(Ok(0), |v| parse_num("--qos", &v))?;
    if qos > 1 {
        return Err("--qos must be 0 or 1".into());
    }
    let payload: usize = take("payload").map_or(Ok(64), |v| parse_num("--payload", &v))?;
    if !(STAMP_LEN..=256 * 1024).contains(&payload) {
        return Err(format!("--payload must be {STAMP_LEN}..=262144 bytes"));
    }
    let default_clients = match scenario {
        Scenario::FanIn | Scenario::FanOut => 8,
        Scenario::Pairs => 16,
        Scenario::Latency => 1,
        Scenario::Idle => 1000,
    };
    let clients: usize =
        take("clients").map_or(Ok(default_clients), |v| parse_num("--clients", &v))?;
    if !(1..=100_000).contains(&clients) {
        return Err("--clients must be 1..=100000".into());
    }
    let messages: Option<u64> = take("messages")
        .map(|v| parse_num("--messages", &v))
        .transpose()?;
    let seconds: f64 = match take("seconds") {
        Some(v) => parse_num("--seconds", &v)?,
        None if messages.is_some() => 120.0,
        None => 5.0,
    };
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!("--seconds must be in (0, {MAX_SECONDS}]"));
    }
    let window: usize = take("window").map_or(Ok(100), |v| parse_num("--window", &v))?;
    if !(1..=30_000).contains(&window) {
        return Err("--window must be 1..=30000".into());
    }
    let mut rate: Option<u64> = take("rate").map(|v| parse_num("--rate", &v)).transpose()?;
    if scenario == Scenario::Latency && rate.is_none() {
        rate = Some(10_000);
    }
    if rate == Some(0) {
        return Err("--rate must be positive".into());
    }
    let drain: f64 = take("drain").map_or(Ok(5.0), |v| parse_num("--drain", &v))?;
    if !(0.0..=120.0).contains(&drain) {
        return Err("--drain must be 0..=120 seconds".into());
    }
    let broker_pid = take("broker-pid")
        .map(|v| parse_num("--broker-pid", &v))
        .transpose()?;
    let label = take("label").unwrap_or_else(|| "broker".into());
    if label.contains(char::is_whitespace) || label.contains('=') {
        return Err("--label must not contain spaces or '='".into());
    }
    let hold: f64 = take("hold").map_or(Ok(1.0), |v| parse_num("--hold", &v))?;
    if !(0.0..=MAX_SECONDS).contains(&hold) {
        return Err("--hold must be 0..=600 seconds".into());
    }
    let concurrency: usize =
        take("concurrency").map_or(Ok(64), |v| parse_num("--concurrency", &v))?;
    let threads: usize = take("threads").map_or(Ok(1), |v| parse_num("--threads", &v))?;
    // Subscribers over MQTT-over-WebSockets to this port (publishers stay on TCP).
    let ws_port: Option<u16> = take("ws-port")
        .map(|v| parse_num("--ws-port", &v))
        .transpose()?;
    if let Some(p) = ws_port {
        let _ = WS_ADDR.set(SocketAddr::new(ip, p));
    }
    if let Some(unknown) = flags.keys().next() {
        return Err(format!("unknown option --{unknown}"));
    }
    Ok(Some(Args {
        scenario,
        addr: SocketAddr::new(ip, port),
        qos,
        payload,
        clients,
        seconds,
        messages,
        window,
        rate,
        drain: Duration::from_secs_f64(drain),
        broker_pid,
        label,
        hold: Duration::from_secs_f64(hold),
        concurrency: concurrency.clamp(1, 10_000),
        threads: threads.clamp(1, 64),
    }))
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 packets, by hand

/// Nanoseconds since the first call: the payload timestamp (one process, one clock).
fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn encode_connect(out: &mut BytesMut, client_id: &str) {
    out.put_u8(0x10);
    put_remaining_length(out, 10 + 2 + client_id.len());
    put_str(out, b"MQTT");
    out.put_u8(4); // protocol level 3.1.1
    out.put_u8(0x02); // clean session
    out.put_u16(KEEPALIVE_SECS);
    put_str(out, client_id.as_bytes());
}

fn encode_subscribe(out: &mut BytesMut, pkid: u16, filter: &str, qos: u8) {
    out.put_u8(0x82);
    put_remaining_length(out, 2 + 2 + filter.len() + 1);
    out.put_u16(pkid);
    put_str(out, filter.as_bytes());
    out.put_u8(qos);
}

/// A stamped PUBLISH; the rest of the payload is filler.
#[allow(clippy::too_many_arguments)]
fn encode_publish(
    out: &mut BytesMut,
    topic: &[u8],
    qos: u8,
    pkid: u16,
    pub_id: u32,
    seq: u64,
    ts: u64,
    filler: &[u8],
) {
    let id_len = if qos > 0 { 2 } else { 0 };
    out.put_u8(0x30 | (qos << 1));
    put_remaining_length(out, 2 + topic.len() + id_len + STAMP_LEN + filler.len());
    put_str(out, topic);
    if qos > 0 {
        out.put_u16(pkid);
    }
    out.put_u32(pub_id);
    out.put_u64(seq);
    out.put_u64(ts);
    out.put_slice(filler);
}

/// One frame's fixed header: (first byte, header length, remaining length), or None if the
/// buffer does not hold the whole header yet.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((b0, 2 + i, len)));
        }
    }
    Err("malformed remaining length from the broker".into())
}

/// A connected client with its read buffer (bytes read past a handshake packet stay there).
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Set for a WebSocket connection: frames are taken apart into `rbuf`.
    ws: Option<WsIn>,
}

/// Subscribers connect here over WebSockets when `--ws-port` is given.
static WS_ADDR: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();

/// The incoming side of a WebSocket: raw bytes, and what is left of the current frame.
#[derive(Default)]
struct WsIn {
    raw: BytesMut,
    left: usize,
}

impl WsIn {
    /// Moves the payload of the frames in `raw` (server frames: unmasked) into `out`.
    fn unframe(&mut self, out: &mut BytesMut) -> Result<(), String> {
        loop {
            if self.left > 0 {
                let n = self.left.min(self.raw.len());
                if n == 0 {
                    return Ok(());
                }
                out.extend_from_slice(&self.raw[..n]);
                self.raw.advance(n);
                self.left -= n;
                continue;
            }
            let b = &self.raw[..];
            if b.len() < 2 {
                return Ok(());
            }
            let (len, at) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => return Ok(()),
                n => (n as usize, 2),
            };
            match b[0] & 0x0F {
                0x0 | 0x2 => {
                    self.raw.advance(at);
                    self.left = len;
                }
                0x8 => return Err("the broker closed the WebSocket".into()),
                _ => {
                    // Control frames (pong): skipped whole.
                    if self.raw.len() < at + len {
                        return Ok(());
                    }
                    self.raw.advance(at + len);
                }
            }
        }
    }
}

/// One masked binary frame holding `payload` (mask 0: XOR leaves the bytes as they are).
fn ws_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x82);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

impl Conn {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &self.ws {
            None => self.stream.write_all(bytes).await,
            Some(_) => self.stream.write_all(&ws_frame(bytes)).await,
        }
    }

    /// Reads what the socket has into `rbuf` (through the WebSocket frames if one).
    async fn read(&mut self) -> Result<usize, String> {
        match &mut self.ws {
            None => self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| e.to_string()),
            Some(ws) => {
                ws.raw.reserve(64 * 1024);
                let n = self
                    .stream
                    .read_buf(&mut ws.raw)
                    .await
                    .map_err(|e| e.to_string())?;
                ws.unframe(&mut self.rbuf)?;
                Ok(n)
            }
        }
    }
}

/// Reads until one whole packet is buffered; returns (first byte, body) and consumes it.
async fn read_packet(conn: &mut Conn, what: &str) -> Result<(u8, Vec<u8>), String> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Some((b0, hlen, rem)) = fixed_header(&conn.rbuf)? {
            if conn.rbuf.len() >= hlen + rem {
                let body = conn.rbuf[hlen..hlen + rem].to_vec();
                conn.rbuf.advance(hlen + rem);
                return Ok((b0, body));
            }
        }
        match tokio::time::timeout_at(deadline, conn.read()).await {
            Err(_) => return Err(format!("no {what} within {HANDSHAKE_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(format!("reading {what}: {e}")),
            Ok(Ok(0)) => return Err(format!("broker closed the connection before {what}")),
            Ok(Ok(_)) => {}
        }
    }
}

/// TCP connect (and the WebSocket upgrade when `ws`) + CONNECT/CONNACK.
async fn open(addr: SocketAddr, client_id: &str, ws: bool) -> Result<Conn, String> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => return Err(format!("{client_id}: TCP connect to {addr} timed out")),
        Ok(Err(e)) => return Err(format!("{client_id}: TCP connect to {addr}: {e}")),
        Ok(Ok(s)) => s,
    };
    stream
        .set_nodelay(true)
        .map_err(|e| format!("{client_id}: TCP_NODELAY: {e}"))?;
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(256),
        ws: None,
    };
    if ws {
        conn.stream
            .write_all(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
            .await
            .map_err(|e| format!("{client_id}: writing the upgrade: {e}"))?;
        let mut head = BytesMut::with_capacity(512);
        let end = loop {
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.stream.read_buf(&mut head));
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(format!("{client_id}: no WebSocket upgrade answer")),
            }
        };
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!("{client_id}: WebSocket upgrade refused"));
        }
        head.advance(end);
        conn.ws = Some(WsIn { raw: head, left: 0 });
    }
    let mut out = BytesMut::with_capacity(64);
    encode_connect(&mut out, client_id);
    conn.write(&out)
        .await
        .map_err(|e| format!("{client_id}: writing CONNECT: {e}"))?;
    let (b0, body) = read_packet(&mut conn, "CONNACK")
        .await
        .map_err(|e| format!("{client_id}: {e}"))?;
    if b0 != 0x20 || body.len() != 2 {
        return Err(format!(
            "{client_id}: expected CONNACK, got packet type {}",
            b0 >> 4
        ));
    }
    if body[1] != 0 {
        return Err(format!(
            "{client_id}: CONNACK refused with return code {}",
            body[1]
        ));
    }
    Ok(conn)
}

/// SUBSCRIBE/SUBACK with one filter.
async fn subscribe(conn: &mut Conn, client_id: &str, filter: &str, qos: u8) -> Result<(), String> {
    let mut out = BytesMut::with_capacity(64);
    encode_subscribe(&mut out, 1, filter, qos);
    conn.write(&out)
        .await
        .map_err(|e| format!("{client_id}: writing SUBSCRIBE: {e}"))?;
    let (b0, body) = read_packet(conn, "SUBACK")
        .await
        .map_err(|e| format!("{client_id}: {e}"))?;
    if b0 != 0x90 || body.len() != 3 {
        return Err(format!(
            "{client_id}: expected SUBACK, got packet type {}",
            b0 >> 4
        ));
    }
    if body[2] == 0x80 {
        return Err(format!("{client_id}: SUBSCRIBE {filter:?} refused (0x80)"));
    }
    Ok(())
}

/// Opens `specs.len()` connections (each optionally subscribed), `concurrency` at a time.
/// Returns them in the order of `specs`.
async fn open_many(
    addr: SocketAddr,
    specs: Vec<(String, Option<String>)>,
    qos: u8,
    concurrency: usize,
) -> Result<Vec<Conn>, String> {
    let total = specs.len();
    let mut slots: Vec<Option<Conn>> = (0..total).map(|_| None).collect();
    let mut pending = specs.into_iter().enumerate();
    let mut set = JoinSet::new();
    let mut first_error = None;
    loop {
        while set.len() < concurrency && first_error.is_none() {
            let Some((i, (client_id, filter))) = pending.next() else {
                break;
            };
            set.spawn(async move {
                // Subscribers over WebSockets with --ws-port.
                let ws = filter.is_some().then(|| WS_ADDR.get().copied()).flatten();
                let mut conn = open(ws.unwrap_or(addr), &client_id, ws.is_some()).await?;
                if let Some(filter) = filter {
                    subscribe(&mut conn, &client_id, &filter, qos).await?;
                }
                Ok::<_, String>((i, conn))
            });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        match done {
            Ok(Ok((i, conn))) => slots[i] = Some(conn),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("connect task failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        let opened = slots.iter().filter(|s| s.is_some()).count();
        return Err(format!("{e} ({opened} of {total} connections opened)"));
    }
    Ok(slots.into_iter().flatten().collect())
}

// ---------------------------------------------------------------------------------------------
// /proc sampling

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid` (or "self") in seconds, assuming USER_HZ = 100 (Linux default).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat; after the name they are at 11 and 12.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// One /proc sample: (time since start, broker RSS KiB, broker CPU s, client CPU s).
type Sample = (Duration, Option<u64>, Option<f64>, Option<f64>);

/// Samples the broker's RSS and CPU time and our own CPU time every 100 ms during a run, so
/// CPU use is reported over the busy part of the run (not the final wait for stragglers).
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
    pid: Option<u32>,
    start: Instant,
}

fn sample(pid: Option<u32>, start: Instant) -> Sample {
    (
        start.elapsed(),
        pid.and_then(rss_kib),
        pid.and_then(|p| cpu_seconds(&p.to_string())),
        cpu_seconds("self"),
    )
}

impl Sampler {
    fn start(pid: Option<u32>, start: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(std::sync::Mutex::new(vec![sample(pid, start)]));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        tokio::spawn(async move {
            // Bounded: stops when told or after the longest possible run.
            for _ in 0..(MAX_SECONDS as u64 * 30) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut v) = samples2.lock() {
                    v.push(sample(pid, start));
                }
            }
        });
        Sampler {
            stop,
            samples,
            pid,
            start,
        }
    }

    /// (peak broker RSS, broker CPU share, client CPU share), the shares over [0, busy_until].
    fn finish(&self, busy_until: Duration) -> (Option<u64>, Option<f64>, Option<f64>) {
        self.stop.store(true, Ordering::Relaxed);
        let last = sample(self.pid, self.start);
        let Ok(mut samples) = self.samples.lock() else {
            return (None, None, None);
        };
        samples.push(last);
        let peak = samples.iter().filter_map(|s| s.1).max();
        let first = samples[0];
        // The first sample at or after the end of the busy part.
        let end = samples
            .iter()
            .find(|s| s.0 >= busy_until)
            .copied()
            .unwrap_or(last);
        let secs = (end.0 - first.0).as_secs_f64().max(1e-3);
        let share = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a) / secs);
        (peak, share(first.2, end.2), share(first.3, end.3))
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic scenarios

/// State the publishers share with the subscribers.
struct Shared {
    start: Instant,
    /// Publishers that have finished (successfully or not).
    pubs_done: AtomicUsize,
    /// Messages each publisher sent (QoS 1: acknowledged); final once it is done.
    sent: Vec<AtomicU64>,
    /// Set when a publisher fails: subscribers stop waiting.
    aborted: AtomicBool,
}

struct PubSpec {
    id: u32,
    topic: String,
}

struct SubSpec {
    filter: String,
    /// Publisher ids this subscriber must receive everything from.
    expects: Vec<u32>,
}

struct PubReport {
    sent: u64,
    finished: Duration,
}

/// Sends until the message count or the deadline is reached. QoS 1: at most `window`
/// unacknowledged publishes; every PUBACK is checked against the packet ids in flight.
async fn run_publisher(
    conn: Conn,
    spec: PubSpec,
    args: Arc<Args>,
    shared: Arc<Shared>,
) -> Result<PubReport, String> {
    let who = format!("publisher {}", spec.id);
    let result = publish_loop(conn, &spec, &args, &shared, &who).await;
    let sent = match &result {
        Ok(r) => r.sent,
        Err(_) => 0,
    };
    shared.sent[spec.id as usize].store(sent, Ordering::Release);
    if result.is_err() {
        shared.aborted.store(true, Ordering::Release);
    }
    shared.pubs_done.fetch_add(1, Ordering::AcqRel);
    result
}

async fn publish_loop(
    conn: Conn,
    spec: &PubSpec,
    args: &Args,
    shared: &Shared,
    who: &str,
) -> Result<PubReport, String> {
    let Conn { stream, rbuf, .. } = conn;
    let (reader, mut writer) = stream.into_split();
    let qos = args.qos;
    let deadline = shared.start + Duration::from_secs_f64(args.seconds);
    let limit = args.messages.unwrap_or(u64::MAX);
    let filler = vec![0x5Au8; args.payload - STAMP_LEN];
    let topic = spec.topic.as_bytes();
    let frame_len = 5 + 2 + topic.len() + 2 + args.payload;
    let max_batch = (WRITE_BATCH_BYTES / frame_len).max(1) as u64;

    // QoS 1 flow control: permits = free window slots; the ack reader returns them.
    let window = Arc::new(Semaphore::new(args.window));
    let in_flight: Arc<Vec<AtomicBool>> =
        Arc::new((0..65536).map(|_| AtomicBool::new(false)).collect());
    let acked = Arc::new(AtomicU64::new(0));
    let final_sent = Arc::new(AtomicU64::new(u64::MAX));
    let ack_reader = (qos > 0).then(|| {
        tokio::spawn(read_pubacks(
            reader,
            rbuf,
            window.clone(),
            in_flight.clone(),
            acked.clone(),
            final_sent.clone(),
            who.to_string(),
        ))
    });

    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES + frame_len);
    let mut seq = 0u64;
    let mut pkid = 0u16;
    while seq < limit {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let mut batch = max_batch.min(limit - seq);
        if let Some(rate) = args.rate {
            let due = ((now - shared.start).as_secs_f64() * rate as f64) as u64;
            if due <= seq {
                let next = shared.start + Duration::from_secs_f64((seq + 1) as f64 / rate as f64);
                tokio::time::sleep_until(next.min(deadline).into()).await;
                continue;
            }
            batch = batch.min(due - seq);
        }
        if qos > 0 {
            // Wait for one free slot, then take every other free one up to the batch size.
            let permit = match tokio::time::timeout_at(deadline.into(), window.acquire()).await {
                Err(_) => break,
                Ok(Err(_)) => return Err(format!("{who}: the PUBACK reader stopped")),
                Ok(Ok(p)) => p,
            };
            permit.forget();
            let mut got = 1;
            while got < batch {
                match window.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        got += 1;
                    }
                    Err(_) => break,
                }
            }
            batch = got;
        }
        out.clear();
        let ts = now_ns();
        for _ in 0..batch {
            if qos > 0 {
                pkid = pkid.wrapping_add(1).max(1);
                if in_flight[pkid as usize].swap(true, Ordering::AcqRel) {
                    return Err(format!(
                        "{who}: packet id {pkid} still unacknowledged after 65535 later publishes (a PUBACK was lost)"
                    ));
                }
            }
            encode_publish(&mut out, topic, qos, pkid, spec.id, seq, ts, &filler);
            seq += 1;
        }
        // Bounded: a broker that stops reading must not hang the run.
        let stall = deadline + args.drain + Duration::from_secs(5);
        match tokio::time::timeout_at(stall.into(), writer.write_all(&out)).await {
            Err(_) => {
                return Err(format!(
                    "{who}: the broker stopped reading (write stalled after {seq} messages)"
                ))
            }
            Ok(Err(e)) => return Err(format!("{who}: writing PUBLISH after {seq} messages: {e}")),
            Ok(Ok(())) => {}
        }
    }

    if let Some(reader) = ack_reader {
        final_sent.store(seq, Ordering::Release);
        let wait = args.drain + Duration::from_secs(5);
        match tokio::time::timeout(wait, reader).await {
            Err(_) => {
                return Err(format!(
                    "{who}: {} of {seq} PUBACKs missing {wait:?} after the last publish",
                    seq - acked.load(Ordering::Acquire)
                ))
            }
            Ok(Err(e)) => return Err(format!("{who}: PUBACK reader failed: {e}")),
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Ok(Ok(()))) => {}
        }
    }
    let finished = shared.start.elapsed();
    // DISCONNECT, so the broker sees a clean end.
    let _ = writer.write_all(&[0xE0, 0x00]).await;
    let _ = writer.shutdown().await;
    Ok(PubReport {
        sent: seq,
        finished,
    })
}

/// Reads PUBACKs until `final_sent` are acknowledged.
async fn read_pubacks(
    mut reader: OwnedReadHalf,
    mut rbuf: BytesMut,
    window: Arc<Semaphore>,
    in_flight: Arc<Vec<AtomicBool>>,
    acked: Arc<AtomicU64>,
    final_sent: Arc<AtomicU64>,
    who: String,
) -> Result<(), String> {
    rbuf.reserve(64 * 1024);
    loop {
        let mut freed = 0;
        while let Some((b0, hlen, rem)) = fixed_header(&rbuf)? {
            if rbuf.len() < hlen + rem {
                break;
            }
            if b0 == 0x40 {
                if rem != 2 {
                    return Err(format!("{who}: PUBACK with remaining length {rem}"));
                }
                let pkid = u16::from_be_bytes([rbuf[hlen], rbuf[hlen + 1]]);
                if !in_flight[pkid as usize].swap(false, Ordering::AcqRel) {
                    return Err(format!(
                        "{who}: PUBACK for packet id {pkid}, which is not in flight"
                    ));
                }
                freed += 1;
            }
            rbuf.advance(hlen + rem);
        }
        if freed > 0 {
            window.add_permits(freed);
            acked.fetch_add(freed as u64, Ordering::AcqRel);
        }
        if acked.load(Ordering::Acquire) >= final_sent.load(Ordering::Acquire) {
            return Ok(());
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
        match tokio::time::timeout(POLL, reader.read_buf(&mut rbuf)).await {
            Err(_) => {}
            Ok(Ok(0)) => {
                return Err(format!(
                    "{who}: broker closed the connection after {} PUBACKs",
                    acked.load(Ordering::Acquire)
                ))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{who}: reading PUBACKs: {e}")),
        }
    }
}

/// What a subscriber saw from one publisher.
#[derive(Default)]
struct Track {
    /// Bit per sequence number received.
    seen: Vec<u64>,
    /// Highest sequence number + 1 seen so far.
    next: u64,
    unique: u64,
    dup: u64,
    reorder: u64,
}

impl Track {
    fn record(&mut self, seq: u64) {
        let word = (seq / 64) as usize;
        if word >= self.seen.len() {
            self.seen.resize((word + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.seen[word] & bit != 0 {
            self.dup += 1;
            return;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq < self.next {
            self.reorder += 1;
        } else {
            self.next = seq + 1;
        }
    }
}

struct SubReport {
    /// Indexed by publisher id; only the expected ones are filled.
    tracks: Vec<Track>,
    expects: Vec<u32>,
    /// Time from start to the last delivery.
    last_delivery: Duration,
    /// Publish-to-delivery times in ns (latency scenario only).
    latencies: Vec<u64>,
}

async fn run_subscriber(
    conn: Conn,
    index: usize,
    spec: SubSpec,
    args: Arc<Args>,
    shared: Arc<Shared>,
) -> Result<SubReport, String> {
    let who = format!("subscriber {index}");
    let mut conn = conn;
    let n_pubs = shared.sent.len();
    let mut tracks: Vec<Track> = (0..n_pubs).map(|_| Track::default()).collect();
    let record_latency = args.scenario == Scenario::Latency;
    let mut latencies = Vec::new();
    let mut acks = BytesMut::with_capacity(64 * 1024);
    let mut last_delivery = Duration::ZERO;
    let mut last_progress = Instant::now();
    let hard_stop =
        shared.start + Duration::from_secs_f64(args.seconds) + args.drain + Duration::from_secs(60);
    conn.rbuf.reserve(READ_BUF_BYTES);
    let mut received = 0u64;
    loop {
        // Parse every complete frame before reading again.
        let arrived = now_ns();
        let mut got = 0u64;
        while let Some((b0, hlen, rem)) = fixed_header(&conn.rbuf)? {
            let total = hlen + rem;
            if conn.rbuf.len() < total {
                break;
            }
            if b0 >> 4 == 3 {
                let body = &conn.rbuf[hlen..total];
                let qos = (b0 >> 1) & 3;
                let topic_len = body
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                    .ok_or_else(|| format!("{who}: truncated PUBLISH"))?;
                let mut at = 2 + topic_len;
                if qos > 0 {
                    let id = body
                        .get(at..at + 2)
                        .ok_or_else(|| format!("{who}: truncated PUBLISH"))?;
                    acks.put_u8(0x40);
                    acks.put_u8(0x02);
                    acks.put_slice(id);
                    at += 2;
                }
                let stamp = body
                    .get(at..at + STAMP_LEN)
                    .ok_or_else(|| format!("{who}: PUBLISH payload without a loadgen stamp"))?;
                let pub_id = u32::from_be_bytes([stamp[0], stamp[1], stamp[2], stamp[3]]) as usize;
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&stamp[4..12]);
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&stamp[12..20]);
                let track = tracks
                    .get_mut(pub_id)
                    .ok_or_else(|| format!("{who}: message from unknown publisher {pub_id}"))?;
                track.record(u64::from_be_bytes(seq));
                if record_latency && latencies.len() < MAX_LATENCY_SAMPLES {
                    latencies.push(arrived.saturating_sub(u64::from_be_bytes(ts)));
                }
                got += 1;
            }
            conn.rbuf.advance(total);
        }
        if !acks.is_empty() {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.write(&acks)).await {
                Err(_) => return Err(format!("{who}: the broker stopped reading PUBACKs")),
                Ok(Err(e)) => return Err(format!("{who}: writing PUBACKs: {e}")),
                Ok(Ok(())) => {}
            }
            acks.clear();
        }
        let now = Instant::now();
        if got > 0 {
            received += got;
            last_delivery = now - shared.start;
            last_progress = now;
        }
        // Done when every publisher has finished and all they sent is here, or nothing more
        // arrived for `drain` after they finished (the rest is lost).
        if shared.pubs_done.load(Ordering::Acquire) == n_pubs {
            let expected: u64 = spec
                .expects
                .iter()
                .map(|&p| shared.sent[p as usize].load(Ordering::Acquire))
                .sum();
            let unique: u64 = spec
                .expects
                .iter()
                .map(|&p| tracks[p as usize].unique)
                .sum();
            if unique >= expected || shared.aborted.load(Ordering::Acquire) {
                break;
            }
            if now - last_progress > args.drain {
                break;
            }
        }
        if now > hard_stop {
            return Err(format!(
                "{who}: still receiving at the hard time limit ({received} messages)"
            ));
        }
        if conn.rbuf.capacity() - conn.rbuf.len() < 64 * 1024 {
            conn.rbuf.reserve(READ_BUF_BYTES);
        }
        match tokio::time::timeout(POLL, conn.read()).await {
            Err(_) => {}
            Ok(Ok(0)) => {
                return Err(format!(
                    "{who}: broker closed the connection after {received} messages"
                ))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{who}: reading: {e}")),
        }
    }
    let _ = conn.write(&[0xE0, 0x00]).await;
    Ok(SubReport {
        tracks,
        expects: spec.expects,
        last_delivery,
        latencies,
    })
}

/// The topology of a traffic scenario.
fn plan(args: &Args, run: u32) -> (Vec<PubSpec>, Vec<SubSpec>) {
    let n = args.clients;
    let base = format!("lg/{run}");
    match args.scenario {
        Scenario::FanIn => (
            (0..n as u32)
                .map(|id| PubSpec {
                    id,
                    topic: format!("{base}/in/{id}"),
                })
                .collect(),
            vec![SubSpec {
                filter: format!("{base}/in/+"),
                expects: (0..n as u32).collect(),
            }],
        ),
        Scenario::FanOut => (
            vec![PubSpec {
                id: 0,
                topic: format!("{base}/out"),
            }],
            (0..n)
                .map(|_| SubSpec {
                    filter: format!("{base}/out"),
                    expects: vec![0],
                })
                .collect(),
        ),
        Scenario::Pairs | Scenario::Latency => (
            (0..n as u32)
                .map(|id| PubSpec {
                    id,
                    topic: format!("{base}/pair/{id}"),
                })
                .collect(),
            (0..n as u32)
                .map(|id| SubSpec {
                    filter: format!("{base}/pair/{id}"),
                    expects: vec![id],
                })
                .collect(),
        ),
        Scenario::Idle => (Vec::new(), Vec::new()),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs fanin/fanout/pairs/latency. Returns the RESULT fields and whether a QoS 1 message
/// was lost.
async fn run_traffic(args: Arc<Args>, run: u32) -> Result<(String, bool), String> {
    let (pubs, subs) = plan(&args, run);
    let sub_conns = open_many(
        args.addr,
        subs.iter()
            .enumerate()
            .map(|(i, s)| (format!("lg{run}s{i}"), Some(s.filter.clone())))
            .collect(),
        args.qos,
        args.concurrency,
    )
    .await?;
    let pub_conns = open_many(
        args.addr,
        pubs.iter()
            .map(|p| (format!("lg{run}p{}", p.id), None))
            .collect(),
        args.qos,
        args.concurrency,
    )
    .await?;
    let n_pubs = pubs.len();
    let n_subs = subs.len();

    let start = Instant::now();
    let sampler = Sampler::start(args.broker_pid, start);
    let shared = Arc::new(Shared {
        start,
        pubs_done: AtomicUsize::new(0),
        sent: (0..n_pubs).map(|_| AtomicU64::new(0)).collect(),
        aborted: AtomicBool::new(false),
    });
    let mut sub_tasks = Vec::with_capacity(n_subs);
    for (i, (conn, spec)) in sub_conns.into_iter().zip(subs).enumerate() {
        sub_tasks.push(tokio::spawn(run_subscriber(
            conn,
            i,
            spec,
            args.clone(),
            shared.clone(),
        )));
    }
    let mut pub_tasks = Vec::with_capacity(n_pubs);
    for (conn, spec) in pub_conns.into_iter().zip(pubs) {
        pub_tasks.push(tokio::spawn(run_publisher(
            conn,
            spec,
            args.clone(),
            shared.clone(),
        )));
    }

    let mut errors = Vec::new();
    let mut published = 0u64;
    let mut pub_finished = Duration::ZERO;
    for task in pub_tasks {
        match task.await {
            Ok(Ok(r)) => {
                published += r.sent;
                pub_finished = pub_finished.max(r.finished);
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("publisher task failed: {e}")),
        }
    }
    let mut reports = Vec::with_capacity(n_subs);
    for task in sub_tasks {
        match task.await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("subscriber task failed: {e}")),
        }
    }
    let busy_until = reports
        .iter()
        .map(|r| r.last_delivery)
        .max()
        .unwrap_or_default()
        .max(pub_finished);
    let (rss_peak, broker_cpu, client_cpu) = sampler.finish(busy_until);
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }

    let (mut expected, mut delivered, mut lost) = (0u64, 0u64, 0u64);
    let (mut dup, mut reorder) = (0u64, 0u64);
    let mut last = Duration::ZERO;
    let mut latencies = Vec::new();
    for r in &mut reports {
        for &p in &r.expects {
            let t = &r.tracks[p as usize];
            let sent = shared.sent[p as usize].load(Ordering::Acquire);
            expected += sent;
            delivered += t.unique;
            lost += sent.saturating_sub(t.unique);
            dup += t.dup;
            reorder += t.reorder;
        }
        last = last.max(r.last_delivery);
        latencies.append(&mut r.latencies);
    }
    let secs = last.as_secs_f64().max(1e-9);
    let mut line = String::new();
    let _ = write!(
        line,
        "pubs={n_pubs} subs={n_subs} seconds={:.2} published={published} expected={expected} delivered={delivered} \
         msgs_per_sec={:.0} pub_per_sec={:.0} lost={lost} dup={dup} reorder={reorder}",
        secs,
        delivered as f64 / secs,
        published as f64 / pub_finished.as_secs_f64().max(1e-9),
    );
    if args.scenario == Scenario::Latency {
        latencies.sort_unstable();
        let us = |p: f64| percentile(&latencies, p) as f64 / 1000.0;
        let _ = write!(
            line,
            " rate={} p50_us={:.0} p99_us={:.0} p999_us={:.0} max_us={:.0}",
            args.rate.unwrap_or(0),
            us(50.0),
            us(99.0),
            us(99.9),
            latencies.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    }
    if let Some(kib) = rss_peak {
        let _ = write!(line, " rss_kib={kib}");
    }
    if let Some(c) = broker_cpu {
        let _ = write!(line, " broker_cpu={c:.2}");
    }
    if let Some(c) = client_cpu {
        let _ = write!(line, " client_cpu={c:.2}");
    }
    let qos1_lost = args.qos > 0 && lost > 0;
    let _ = write!(line, " status={}", if qos1_lost { "lost" } else { "ok" });
    Ok((line, qos1_lost))
}

/// Opens N connections with CONNECT + SUBSCRIBE, measures the rate and the broker's RSS growth.
async fn run_idle(args: Arc<Args>, run: u32) -> Result<String, String> {
    let n = args.clients;
    let pid = args.broker_pid;
    let rss_before = pid.and_then(rss_kib);
    let started = Instant::now();
    let conns = open_many(
        args.addr,
        (0..n)
            .map(|i| (format!("lg{run}i{i}"), Some(format!("lg/{run}/idle/{i}"))))
            .collect(),
        args.qos,
        args.concurrency,
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    // Let the broker settle (lazy allocations, freed handshake buffers) before sampling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = pid.and_then(rss_kib);
    tokio::time::sleep(args.hold).await;
    let mut line = format!(
        "conns={} seconds={took:.2} connect_per_sec={:.0}",
        conns.len(),
        conns.len() as f64 / took.max(1e-9)
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let _ = write!(
            line,
            " rss_before_kib={before} rss_kib={after} kib_per_conn={:.2}",
            after.saturating_sub(before) as f64 / n as f64
        );
    }
    line.push_str(" status=ok");
    drop(conns);
    Ok(line)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            eprint!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: starting the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let run = (now_ns() as u32 ^ std::process::id() ^ 0x9E37_79B9) % 100_000;
    let args = Arc::new(args);
    let head = format!(
        "RESULT scenario={} broker={} qos={} payload={}",
        args.scenario.name(),
        args.label,
        args.qos,
        args.payload
    );
    let outcome = runtime.block_on(async {
        match args.scenario {
            Scenario::Idle => run_idle(args.clone(), run).await.map(|l| (l, false)),
            _ => run_traffic(args.clone(), run).await,
        }
    });
    // Do not wait for tasks that are blocked on a dead broker.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok((line, lost)) => {
            println!("{head} {line}");
            if lost {
                eprintln!("loadgen: QoS 1 messages were lost");
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            println!("{head} status=error");
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}
