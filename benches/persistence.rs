//! Persistence benchmark (a bench target with its own main):
//!
//!     cargo bench --bench persistence             # all modes, 4 s each, 1M-message restart
//!     cargo bench --bench persistence -- --quick  # 2 s each, 200k-message restart
//!
//! 1. QoS 1 throughput to a persistent (clean session 0) subscriber, whose every message is
//!    written and deleted again once acknowledged, with persistence off / fsync never /
//!    interval / always; 4 publishers, each with 100 unacknowledged messages in flight.
//! 2. Restart with N queued messages: fill an offline persistent session, stop the broker,
//!    then time `Broker::bind` (recovery) and measure process RSS before and after it, and
//!    the time until the returning client gets its first message.
//!
//! Brokers run in this process on 127.0.0.1:0; nothing else is contacted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    remaining_length(body.len(), &mut v);
    v.extend_from_slice(body);
    v
}

fn connect(id: &str, clean: bool) -> Vec<u8> {
    let mut b = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        if clean { 2 } else { 0 },
        0,
        60,
    ];
    b.extend_from_slice(&(id.len() as u16).to_be_bytes());
    b.extend_from_slice(id.as_bytes());
    packet(0x10, &b)
}

fn publish(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + topic.len() + payload.len());
    b.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&pkid.to_be_bytes());
    b.extend_from_slice(payload);
    packet(0x32, &b)
}

/// Reads one packet: (first byte, body).
async fn read_packet(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
            let mut complete = false;
            while i < buf.len() && i <= 4 {
                len += (buf[i] & 0x7f) as usize * mult;
                mult *= 128;
                if buf[i] & 0x80 == 0 {
                    complete = true;
                    break;
                }
                i += 1;
            }
            if complete && buf.len() >= i + 1 + len {
                let first = buf[0];
                let body = buf[i + 1..i + 1 + len].to_vec();
                buf.drain(..i + 1 + len);
                return Some((first, body));
            }
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn client(addr: SocketAddr, id: &str, clean: bool) -> (TcpStream, Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&connect(id, clean)).await.unwrap();
    let mut buf = Vec::new();
    let (_, body) = read_packet(&mut s, &mut buf).await.unwrap();
    (s, buf, body[0] == 1)
}

async fn subscribe(s: &mut TcpStream, buf: &mut Vec<u8>, filter: &str) {
    let mut b = vec![0, 1];
    b.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    b.extend_from_slice(filter.as_bytes());
    b.push(1);
    s.write_all(&packet(0x82, &b)).await.unwrap();
    read_packet(s, buf).await.unwrap();
}

async fn start(
    dir: &Path,
    persistence: &str,
    extra: &str,
) -> (
    SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
    Duration,
) {
    let text = format!(
        "allow_anonymous = true\nmetrics_enabled = false\nsys_interval = 0\n{persistence}\npersistence_location = {:?}\n{extra}\n[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\n",
        dir
    );
    let started = Instant::now();
    let broker = roostd::Broker::bind(roostd::Config::from_toml_str(&text).unwrap())
        .await
        .unwrap();
    let bind_time = started.elapsed();
    let addr = broker.local_addrs()[0];
    let stop = broker.shutdown_token();
    let handle = tokio::spawn(async move {
        let _ = broker.run().await;
    });
    (addr, stop, handle, bind_time)
}

/// Publishers with a window of 100 QoS 1 messages each, for `secs`; returns acked msgs/s.
async fn publish_load(addr: SocketAddr, publishers: usize, secs: f64, payload: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for p in 0..publishers {
        tasks.push(tokio::spawn(async move {
            let (mut s, mut buf, _) = client(addr, &format!("ppub{p}"), true).await;
            let body = vec![0x5au8; payload];
            let (mut sent, mut acked) = (0u64, 0u64);
            let mut pkid: u16 = 0;
            loop {
                let mut batch = Vec::new();
                while sent - acked < 100 && Instant::now() < deadline {
                    pkid = pkid.wrapping_add(1).max(1);
                    batch.extend(publish("persist/t", pkid, &body));
                    sent += 1;
                }
                if !batch.is_empty() {
                    s.write_all(&batch).await.unwrap();
                }
                if acked == sent && Instant::now() >= deadline {
                    return acked;
                }
                match read_packet(&mut s, &mut buf).await {
                    Some((0x40, _)) => acked += 1,
                    Some(_) => {}
                    None => return acked,
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs
}

async fn throughput(mode: &str, persistence: &str, dir: &Path, secs: f64) {
    let _ = std::fs::remove_dir_all(dir);
    let (addr, stop, handle, _) = start(dir, persistence, "max_queued_messages = 100000").await;
    // A persistent subscriber that reads and acknowledges everything.
    let (mut s, mut buf, _) = client(addr, "psub", false).await;
    subscribe(&mut s, &mut buf, "persist/#").await;
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some((first, body))) =
            tokio::time::timeout(Duration::from_secs(3), read_packet(&mut s, &mut buf)).await
        {
            if first >> 4 == 3 {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let pkid = [body[2 + tl], body[3 + tl]];
                s.write_all(&[0x40, 2, pkid[0], pkid[1]]).await.unwrap();
                n += 1;
            }
        }
        n
    });
    let rate = publish_load(addr, 4, secs, 64).await;
    let delivered = reader.await.unwrap();
    println!("RESULT bench=persistence_qos1 mode={mode} acked_msgs_per_sec={rate:.0} delivered={delivered}");
    stop.cancel();
    let _ = handle.await;
}

async fn restart(dir: &Path, messages: usize) {
    let _ = std::fs::remove_dir_all(dir);
    let limits = format!(
        "max_queued_messages = {}\nmax_queued_bytes = 4294967296\nfsync = \"never\"",
        messages * 2
    );
    let (addr, stop, handle, _) = start(dir, "persistence = true", &limits).await;
    {
        let (mut s, mut buf, _) = client(addr, "sleeper", false).await;
        subscribe(&mut s, &mut buf, "fill/#").await;
        s.write_all(&packet(0xe0, &[])).await.unwrap();
    }
    let filled = Instant::now();
    let (mut s, mut buf, _) = client(addr, "filler", true).await;
    let body = vec![0x33u8; 64];
    let mut acked = 0;
    let mut sent = 0;
    let mut pkid: u16 = 0;
    while acked < messages {
        let mut batch = Vec::new();
        while sent - acked < 500 && sent < messages {
            pkid = pkid.wrapping_add(1).max(1);
            batch.extend(publish("fill/t", pkid, &body));
            sent += 1;
        }
        if !batch.is_empty() {
            s.write_all(&batch).await.unwrap();
        }
        if let Some((0x40, _)) = read_packet(&mut s, &mut buf).await {
            acked += 1;
        }
    }
    let fill_time = filled.elapsed();
    drop(s);
    stop.cancel();
    let _ = handle.await;
    let db = std::fs::metadata(dir.join("roostd.redb"))
        .map(|m| m.len())
        .unwrap_or(0);

    let rss_before = rss_kib();
    let (addr, stop, handle, bind_time) = start(dir, "persistence = true", &limits).await;
    let rss_after_start = rss_kib();
    let reconnect = Instant::now();
    let (mut s, mut buf, present) = client(addr, "sleeper", false).await;
    let first = read_packet(&mut s, &mut buf).await.map(|(f, _)| f >> 4);
    let first_msg = reconnect.elapsed();
    println!(
        "RESULT bench=persistence_restart messages={messages} fill_secs={:.1} db_mib={:.0} recovery_ms={} rss_before_kib={rss_before} rss_after_recovery_kib={rss_after_start} session_present={present} first_message_ms={} first_packet_type={first:?}",
        fill_time.as_secs_f64(),
        db as f64 / 1048576.0,
        bind_time.as_millis(),
        first_msg.as_millis()
    );
    drop(s);
    stop.cancel();
    let _ = handle.await;
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 2.0 } else { 4.0 };
    let restart_messages = if quick { 200_000 } else { 1_000_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("roostd-persist-bench-{}", std::process::id()));
    rt.block_on(async {
        for (mode, cfg) in [
            ("off", "persistence = false"),
            ("never", "persistence = true\nfsync = \"never\""),
            ("interval", "persistence = true\nfsync = \"interval\""),
            ("always", "persistence = true\nfsync = \"always\""),
        ] {
            throughput(mode, cfg, &dir, secs).await;
        }
        restart(&dir, restart_messages).await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
