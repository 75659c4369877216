//! Hardening (issue 11): what an attacker or a careless operator found, one test per item.
//! Every broker here runs on the tokio test runtime's worker threads (2 MiB stacks, as in
//! the binary), so a recursion that a client can deepen would abort the test process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::common::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("roostd-hard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn persistent(dir: &Path, extra: &str) -> String {
    format!("persistence = true\npersistence_location = {dir:?}\nfsync = \"always\"\n{extra}")
}

/// The deepest topic and filter a client can send: 65,535 '/' are 65,536 levels (MQTT strings
/// stop at 65,535 bytes, so "100,000 levels" cannot be encoded; this is the maximum).
fn deepest_topic() -> String {
    "/".repeat(65_535)
}

async fn ping_ok(c: &mut Raw) {
    c.send(&pingreq()).await;
    c.expect_kind(PINGRESP).await;
}

/// Item 1: a PUBLISH to a 65,536-level topic and SUBSCRIBEs to 65,536-level filters (a 1 MiB
/// SUBSCRIBE holding 15 of them) with max_topic_levels raised: routed, matched, delivered, and
/// the subscriber's disconnect removes them from the trie, without recursion. The broker
/// answers throughout and serves a fresh client afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepest_topics_and_filters_do_not_overflow_the_stack() {
    let (b, router) = start_broker_with_router(
        "max_topic_levels = 65536\nmessage_size_limit = 1048576\nmax_queued_bytes = 67108864",
    )
    .await;
    let topic = deepest_topic();
    let mut hash = "+/".repeat(32_767);
    hash.push('#');
    let mut sub = Raw::client(b.addr, "deep-sub").await;
    let mut filters: Vec<(&str, u8)> = vec![(&topic, 1), (&hash, 1)];
    let many: Vec<String> = (0..13)
        .map(|i| format!("{i}{}", "/+".repeat(32_766)))
        .collect();
    filters.extend(many.iter().map(|f| (f.as_str(), 0)));
    let packet = subscribe(1, &filters);
    assert!(packet.len() > 900_000, "a SUBSCRIBE of about 1 MiB");
    sub.send(&packet).await;
    let suback = sub.expect_kind(SUBACK).await;
    assert_eq!(&suback.body[2..4], &[1, 1], "deep filters granted");
    let mut publ = Raw::client(b.addr, "deep-pub").await;
    publ.send(&publish(&topic, b"deep", 1, true, false, 1))
        .await;
    publ.expect_kind(PUBACK).await;
    let got = sub.recv_publish_ack().await;
    assert_eq!(got.topic.len(), 65_535);
    assert_eq!(got.payload, b"deep");
    // A filter matching the retained deep topic: the retained walk is a loop too.
    let mut late = Raw::client(b.addr, "deep-late").await;
    late.send(&subscribe(1, &[("#", 0)])).await;
    late.expect_kind(SUBACK).await;
    assert_eq!(late.recv_publish().await.topic.len(), 65_535);
    // Disconnecting removes every deep filter from the trie (Trie::remove was recursive).
    sub.send(&disconnect()).await;
    sub.expect_closed().await;
    let mut fresh = Raw::client(b.addr, "fresh").await;
    ping_ok(&mut fresh).await;
    assert_eq!(
        router.subscription_count(),
        1,
        "only the '#' of deep-late is left"
    );
    assert_eq!(
        router
            .metrics()
            .stats
            .panics
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(b.is_running());
}

/// Item 1, the limit: with the default max_topic_levels (200), a PUBLISH with 201 levels
/// closes the connection and a SUBSCRIBE filter with 201 levels is refused with 0x80 while
/// the connection stays; 200 levels are fine.
#[tokio::test]
async fn max_topic_levels_refuses_deeper_topics_and_filters() {
    let b = start_broker("").await;
    let ok = "a/".repeat(199) + "a";
    let deep = "a/".repeat(200) + "a";
    let mut c = Raw::client(b.addr, "levels").await;
    c.send(&subscribe(1, &[(&ok, 0), (&deep, 0)])).await;
    let suback = c.expect_kind(SUBACK).await;
    assert_eq!(&suback.body[2..], &[0x00, 0x80]);
    ping_ok(&mut c).await;
    c.send(&publish(&ok, b"x", 0, false, false, 0)).await;
    assert_eq!(c.recv_publish().await.topic, ok);
    c.send(&publish(&deep, b"x", 0, false, false, 0)).await;
    c.expect_closed().await;
    // A will topic over the limit is refused at CONNECT.
    let mut w = Raw::connect(
        b.addr,
        &Connect::new("deep-will").will(Will::new(&deep, b"w", 0, false)),
    )
    .await;
    w.expect_closed().await;
}

/// Item 8: a retained message on the deepest topic, stored on disk, then a matching
/// SUBSCRIBE after a restart: no crash loop (the retained walk was recursive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_deep_retained_message_is_served_after_a_restart() {
    let dir = tmp("deep-retained");
    let toml = persistent(&dir, "max_topic_levels = 65536");
    let b = start_broker(&toml).await;
    let topic = deepest_topic();
    let mut p = Raw::client(b.addr, "deep-pub").await;
    p.send(&publish(&topic, b"kept", 1, true, false, 1)).await;
    p.expect_kind(PUBACK).await;
    drop(p);
    b.stop().await.unwrap();
    for _ in 0..2 {
        let b = start_broker(&toml).await;
        let mut s = Raw::client(b.addr, "deep-sub").await;
        s.send(&subscribe(1, &[("+/#", 0)])).await;
        s.expect_kind(SUBACK).await;
        let m = s.recv_publish().await;
        assert_eq!((m.topic.len(), m.retain), (65_535, true));
        ping_ok(&mut s).await;
        drop(s);
        b.stop().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 2: the real binary with stdout and stderr as pipes whose readers have gone (as with
/// `roostd 2>&1 | head -1`, a closed terminal, a dead log collector): every client still gets
/// its CONNACK and messages, and SIGTERM still stops the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_sink_without_a_reader_breaks_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tmp("logpipe");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("roostd.toml");
    std::fs::write(&config, "metrics_enabled = false\npersistence = false\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_roostd"))
        .arg("--config")
        .arg(&config)
        .arg("-p")
        .arg(port.to_string())
        .arg("-v")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start roostd");
    drop(child.stdout.take());
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while err.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line.contains("listen socket") {
                return true; // `err` is dropped here: nobody reads the pipe any more
            }
            line.clear();
        }
        false
    });
    assert!(tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .unwrap()
        .unwrap());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut sub = Raw::client(addr, "pipe-sub").await;
    sub.send(&subscribe(1, &[("pipe/#", 1)])).await;
    sub.expect_kind(SUBACK).await;
    // Each connection logs lines ("New client connected", "disconnected", -v packets).
    for i in 0..50 {
        let mut p = Raw::client(addr, &format!("pipe-pub-{i}")).await;
        p.send(&publish("pipe/t", &[i as u8], 1, false, false, 1))
            .await;
        p.expect_kind(PUBACK).await;
        p.send(&disconnect()).await;
    }
    for i in 0..50 {
        assert_eq!(sub.recv_publish_ack().await.payload, vec![i as u8]);
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("roostd ignored SIGTERM")
        .unwrap()
        .unwrap();
    assert!(status.success(), "roostd exited with {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 3 [MQTT-3.1.0-1]: not-MQTT bytes as the first packet (an HTTP request, noise starting
/// with 0x00, a PUBLISH) close the connection at once, not at the CONNECT timeout (set to 60 s
/// here: the bound below is far under it).
#[tokio::test]
async fn a_first_byte_that_is_not_connect_closes_at_once() {
    let b = start_broker("connect_timeout = 60").await;
    let inputs: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x00, 0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3],
        &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
        &[0x82],
    ];
    for bytes in inputs {
        let mut c = Raw::tcp(b.addr).await;
        c.send(bytes).await;
        let got = c.expect_closed_within(Duration::from_secs(5)).await;
        assert!(
            got.is_empty(),
            "nothing is answered to {bytes:02x?}: {got:02x?}"
        );
    }
}

/// Item 4 [MQTT-1.5.3-2]: U+0000 in any UTF-8 string field closes the connection: client id,
/// will topic, user name, topic name, SUBSCRIBE filter (it was answered with 0x80),
/// UNSUBSCRIBE filter.
#[tokio::test]
async fn nul_in_any_string_field_closes_the_connection() {
    let b = start_broker("").await;
    let connects = [
        Connect::new("x").client_id_bytes(b"a\0b"),
        Connect::new("x").will(Will::new("w\0t", b"p", 0, false)),
        Connect::new("x").username("u\0"),
    ];
    for c in &connects {
        let mut r = Raw::connect(b.addr, c).await;
        assert!(r.expect_closed().await.is_empty(), "no CONNACK for {c:?}");
    }
    let packets = [
        publish_raw(b"t/\0", b"x", 0, false, false, None),
        subscribe(1, &[("a/\0", 1)]),
        unsubscribe(1, &["\0"]),
    ];
    for p in packets {
        let mut c = Raw::client(b.addr, "nul").await;
        c.send(&p).await;
        assert!(
            c.expect_closed().await.is_empty(),
            "nothing answered to {p:02x?}"
        );
    }
}

/// Item 5 [MQTT-3.1.4-2]: 100 connections opened back to back with one client id, their
/// CONNECTs sent newest first (so the handshakes race the other way round): the newest
/// connection is the one left standing, every older one is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_storm_leaves_the_newest_connection() {
    let b = start_broker("").await;
    let mut socks = Vec::new();
    for _ in 0..100 {
        socks.push(Raw::tcp(b.addr).await);
    }
    let connect = Connect::new("storm").clean(false).bytes();
    for s in socks.iter_mut().rev() {
        s.send_lossy(&connect).await;
    }
    let mut newest = socks.pop().unwrap();
    for s in &mut socks {
        s.expect_closed().await;
    }
    assert_eq!(
        newest.recv().await.header,
        0x20,
        "the newest got its CONNACK"
    );
    ping_ok(&mut newest).await;
    newest.send(&subscribe(1, &[("storm", 1)])).await;
    newest.expect_kind(SUBACK).await;
}

/// Item 6 [MQTT-3.3.1-6]: every retained message matching a new subscription reaches the
/// subscriber: 2,000 of them with max_queued_messages at its default 1,000, at QoS 1 (paced
/// by the in-flight window) and at QoS 0 (paced by TCP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matching_retained_message_is_delivered() {
    let b = start_broker("").await;
    let mut p = Raw::client(b.addr, "ret-pub").await;
    for i in 0..2000u32 {
        p.send(&publish(
            &format!("base/{i}"),
            &i.to_be_bytes(),
            1,
            true,
            false,
            (i % 60000 + 1) as u16,
        ))
        .await;
        p.expect_kind(PUBACK).await;
    }
    for qos in [1u8, 0] {
        let mut s = Raw::client(b.addr, &format!("ret-sub-{qos}")).await;
        s.send(&subscribe(1, &[("base/#", qos)])).await;
        s.expect_kind(SUBACK).await;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 2000 {
            let m = s.recv_publish_ack().await;
            assert!(m.retain, "[MQTT-3.3.1-8] flagged retained");
            seen.insert(m.topic);
        }
        ping_ok(&mut s).await;
    }
}

/// Item 7 [MQTT-3.1.2-24]: a silent client with keepalive 2 s is closed within
/// 1.5 x 2 s + 0.5 s of its last packet (paused time), and its will is published.
#[tokio::test(start_paused = true)]
async fn keepalive_is_enforced_within_half_a_second() {
    let b = start_broker("").await;
    let mut watcher = Raw::connect_ok(b.addr, &Connect::new("watcher").keepalive(0))
        .await
        .0;
    watcher.send(&subscribe(1, &[("will/ka", 0)])).await;
    watcher.expect_kind(SUBACK).await;
    let (mut c, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("ka-silent")
            .keepalive(2)
            .will(Will::new("will/ka", b"gone", 0, false)),
    )
    .await;
    let start = Instant::now();
    c.expect_closed_within(Duration::from_secs(60)).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3),
        "closed early: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(3500),
        "closed late: {elapsed:?}"
    );
    assert_eq!(watcher.recv_publish().await.payload, b"gone");
}

/// Item 9: max_retained_messages / max_retained_bytes: a retained PUBLISH over them is
/// delivered but not retained, counted; the topic keeps its previous message.
#[tokio::test]
async fn retained_messages_are_bounded() {
    let (b, router) =
        start_broker_with_router("max_retained_messages = 2\nmax_retained_bytes = 1000").await;
    let mut live = Raw::client(b.addr, "live").await;
    live.send(&subscribe(1, &[("r/#", 0)])).await;
    live.expect_kind(SUBACK).await;
    let mut p = Raw::client(b.addr, "ret-pub").await;
    for (i, (topic, size)) in [("r/a", 10), ("r/b", 10), ("r/c", 10), ("r/a", 2000)]
        .iter()
        .enumerate()
    {
        p.send(&publish(
            topic,
            &vec![b'x'; *size],
            1,
            true,
            false,
            i as u16 + 1,
        ))
        .await;
        p.expect_kind(PUBACK).await;
        assert_eq!(
            live.recv_publish().await.topic,
            *topic,
            "delivered live all the same"
        );
    }
    assert_eq!(
        router
            .metrics()
            .stats
            .retained_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let mut s = Raw::client(b.addr, "ret-sub").await;
    s.send(&subscribe(1, &[("r/#", 0)])).await;
    s.expect_kind(SUBACK).await;
    let mut got = [s.recv_publish().await, s.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(got[0].topic, "r/a");
    assert_eq!(
        got[0].payload.len(),
        10,
        "the refused 2,000 bytes left the old one"
    );
    assert_eq!(got[1].topic, "r/b");
    ping_ok(&mut s).await;
}

/// Item 10 [MQTT-3.3.1-1]: a QoS 1 message sent and not acknowledged before a restart goes
/// out again with DUP=1 after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_qos1_messages_in_flight_carry_dup() {
    let dir = tmp("dup");
    let toml = persistent(&dir, "");
    let b = start_broker(&toml).await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("dup-sub").clean(false)).await;
    s.send(&subscribe(1, &[("dup/#", 1)])).await;
    s.expect_kind(SUBACK).await;
    let mut p = Raw::client(b.addr, "dup-pub").await;
    for i in 1..=3u16 {
        p.send(&publish("dup/t", &[i as u8], 1, false, false, i))
            .await;
        p.expect_kind(PUBACK).await;
    }
    for _ in 0..3 {
        let m = s.recv_publish().await;
        assert!(!m.dup, "first delivery");
    }
    drop((s, p));
    b.stop().await.unwrap();
    let b = start_broker(&toml).await;
    let (mut s, present) = Raw::connect_ok(b.addr, &Connect::new("dup-sub").clean(false)).await;
    assert!(present);
    for i in 1..=3u8 {
        let m = s.recv_publish_ack().await;
        assert_eq!(m.payload, vec![i]);
        assert!(m.dup, "re-sent after the restart without DUP: {m:?}");
    }
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stores `n` QoS 1 messages of `size` bytes for an offline persistent session, then restarts.
async fn stored_queue(dir: &Path, toml: &str, id: &str, n: u32, size: usize) -> TestBroker {
    let b = start_broker(toml).await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new(id).clean(false)).await;
    s.send(&subscribe(1, &[("q/#", 1)])).await;
    s.expect_kind(SUBACK).await;
    s.send(&disconnect()).await;
    s.expect_closed().await;
    let mut p = Raw::client(b.addr, "q-pub").await;
    let mut payload = vec![0u8; size];
    for i in 0..n {
        payload[..4].copy_from_slice(&i.to_be_bytes());
        p.send(&publish(
            "q/t",
            &payload,
            1,
            false,
            false,
            (i % 60000 + 1) as u16,
        ))
        .await;
        p.expect_kind(PUBACK).await;
    }
    drop(p);
    b.stop().await.unwrap();
    let _ = dir;
    start_broker(toml).await
}

/// Receives and acknowledges until `n` distinct messages (by their 4-byte counter) arrived.
async fn drain(s: &mut Raw, n: usize) -> std::collections::BTreeSet<u32> {
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n {
        let m = s.recv_publish_ack().await;
        seen.insert(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
    }
    seen
}

/// Item 12: after a restart, a client reconnects to a session with many stored messages
/// and, while they load, connects again on a second socket: the second connection gets them
/// all (the first one's load is dropped, the new owner loads again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_while_the_stored_queue_loads_gets_every_message() {
    let dir = tmp("load-takeover");
    let toml = persistent(&dir, "max_queued_messages = 10000");
    let b = stored_queue(&dir, &toml, "lt-sub", 3000, 16).await;
    let first = Raw::connect(b.addr, &Connect::new("lt-sub").clean(false)).await;
    let (mut second, present) = Raw::connect_ok(b.addr, &Connect::new("lt-sub").clean(false)).await;
    assert!(present);
    let seen = drain(&mut second, 3000).await;
    assert_eq!(seen.len(), 3000);
    drop(first);
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 13: a stored offline queue is bounded by max_queued_bytes too (it was bounded by count
/// only), and is streamed into memory as the client takes it, not loaded at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_queues_are_bounded_by_bytes_and_streamed() {
    let dir = tmp("bytes");
    // 64 KiB messages; 150 of them are 9.6 MiB.
    let toml = persistent(
        &dir,
        "max_queued_messages = 10000\nmax_queued_bytes = 16777216",
    );
    let b = stored_queue(&dir, &toml, "big-sub", 150, 64 * 1024).await;
    // More while offline after the restart: the stored queue is at 9.6 MiB of 16 MiB, so
    // about 100 more fit; the rest is dropped (queue_full).
    let mut p = Raw::client(b.addr, "q-pub2").await;
    let mut payload = vec![0u8; 64 * 1024];
    for i in 150..400u32 {
        payload[..4].copy_from_slice(&i.to_be_bytes());
        p.send(&publish("q/t", &payload, 1, false, false, (i + 1) as u16))
            .await;
        p.expect_kind(PUBACK).await;
    }
    let (mut s, present) = Raw::connect_ok(b.addr, &Connect::new("big-sub").clean(false)).await;
    assert!(present);
    let mut seen = std::collections::BTreeSet::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), read_packet(&mut s.io)).await {
            Ok(Ok(Some(p))) if p.kind() == PUBLISH => {
                let m = p.publish();
                s.ack_publish(&m).await;
                seen.insert(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
            }
            Ok(Ok(Some(p))) => panic!("unexpected {p:?}"),
            _ => break,
        }
    }
    assert!(
        (0..150).all(|i| seen.contains(&i)),
        "every message stored before the restart"
    );
    let bound = 16 * 1024 * 1024 / (64 * 1024 + 7);
    assert!(
        seen.len() <= bound && seen.len() >= bound - 2,
        "{} messages delivered; max_queued_bytes allows {bound}",
        seen.len()
    );
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 13, streaming: while a client holds its in-flight window full (it does not
/// acknowledge), the session keeps about one chunk of its 300 stored 64 KiB messages
/// (19 MiB) in memory, not all of them; acknowledging then brings every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_queue_is_loaded_a_chunk_at_a_time() {
    let dir = tmp("stream");
    let toml = persistent(
        &dir,
        "max_queued_messages = 10000\nmax_queued_bytes = 67108864",
    );
    let b = stored_queue(&dir, &toml, "stream-sub", 300, 64 * 1024).await;
    b.stop().await.unwrap();
    let (b, router) = start_broker_with_router(&toml).await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("stream-sub").clean(false)).await;
    let mut window = Vec::new();
    for _ in 0..20 {
        window.push(s.recv_publish().await);
    }
    // The window is full (max_inflight_messages 20): nothing more is sent until acks.
    let report = router.slow_clients(10);
    let me = report.iter().find(|c| c.client_id == "stream-sub");
    let queued_bytes = me.map_or(0, |c| c.queued_bytes);
    assert!(
        queued_bytes <= 2 * 1024 * 1024,
        "{queued_bytes} bytes queued in memory: the stored queue was loaded at once"
    );
    for m in &window {
        s.ack_publish(m).await;
    }
    let seen = drain(&mut s, 280).await;
    assert!(seen.len() >= 280);
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// [MQTT-3.1.2-24] Only complete control packets count: a client trickling single bytes of a
/// packet (0xC0, and never the rest of the PINGREQ) is closed 1.5 x keepalive after its last
/// complete packet, not kept alive by the bytes (review of issue 11; paused time).
#[tokio::test(start_paused = true)]
async fn a_byte_trickle_does_not_defeat_keepalive() {
    let b = start_broker("").await;
    let (mut c, _) = Raw::connect_ok(b.addr, &Connect::new("trickle").keepalive(2)).await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.send(&[0xC0]).await;
    c.expect_closed_within(Duration::from_secs(60)).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed <= Duration::from_millis(3500),
        "kept alive by a partial packet: closed after {elapsed:?}"
    );
}
