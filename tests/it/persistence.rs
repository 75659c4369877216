//! Persistence: retained messages, persistent sessions with their subscriptions, queued and
//! in-flight QoS 1/2 messages and inbound QoS 2 state survive a restart; with fsync =
//! "always", nothing acknowledged is lost when the broker process is killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("roostd-persist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn start(dir: &Path) -> TestBroker {
    start_broker(&format!(
        "persistence = true\npersistence_location = {dir:?}\nfsync = \"always\""
    ))
    .await
}

async fn offline_subscriber(addr: SocketAddr, id: &str, filter: &str, qos: u8) {
    let (mut s, _) = Raw::connect_ok(addr, &Connect::new(id).clean(false)).await;
    s.send(&subscribe(1, &[(filter, qos)])).await;
    s.expect_kind(SUBACK).await;
    s.send(&disconnect()).await;
    expect_closed(&mut s.io, TIMEOUT).await;
}

async fn publish_acked(p: &mut Raw, topic: &str, payload: &[u8], retain: bool) {
    let pid = p.next_pid();
    p.send(&publish(topic, payload, 1, retain, false, pid))
        .await;
    assert_eq!(p.expect_kind(PUBACK).await.ack_pid(), pid);
}

#[tokio::test]
async fn sessions_queued_messages_and_retained_survive_a_restart() {
    let dir = tmp("restart");
    let b = start(&dir).await;
    offline_subscriber(b.addr, "keeper", "keep/#", 1).await;
    let mut p = Raw::client(b.addr, "keep-pub").await;
    for i in 0..5u8 {
        publish_acked(&mut p, "keep/t", &[i], false).await;
    }
    publish_acked(&mut p, "keep/retained", b"r", true).await;
    drop(p);
    b.stop().await.unwrap();

    let b = start(&dir).await;
    // [MQTT-3.2.2-2] the session is still there, with its subscription and queue.
    let (mut sub, present) = Raw::connect_ok(b.addr, &Connect::new("keeper").clean(false)).await;
    assert!(present, "persistent session lost across the restart");
    let mut got = Vec::new();
    for _ in 0..6 {
        let m = sub.recv_publish_ack().await;
        got.push((m.topic, m.payload));
    }
    let want: Vec<(String, Vec<u8>)> = (0..5u8)
        .map(|i| ("keep/t".to_string(), vec![i]))
        .chain([("keep/retained".to_string(), b"r".to_vec())])
        .collect();
    assert_eq!(got, want, "queued messages lost or reordered");
    // The subscription itself survived: a new message still arrives.
    let mut p = Raw::client(b.addr, "keep-pub2").await;
    publish_acked(&mut p, "keep/after", b"a", false).await;
    assert_eq!(sub.recv_publish_ack().await.topic, "keep/after");
    // Retained survived [MQTT-3.3.1-6].
    let mut fresh = Raw::client(b.addr, "fresh").await;
    fresh.send(&subscribe(1, &[("keep/retained", 1)])).await;
    fresh.expect_kind(SUBACK).await;
    let r = fresh.recv_publish().await;
    assert!(r.retain);
    assert_eq!(r.payload, b"r");
    drop((sub, p, fresh));
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn inbound_qos2_state_survives_so_a_resent_publish_is_not_delivered_twice() {
    let dir = tmp("qos2in");
    let b = start(&dir).await;
    offline_subscriber(b.addr, "q2-sub", "q2/#", 2).await;
    let (mut p, _) = Raw::connect_ok(b.addr, &Connect::new("q2-pub").clean(false)).await;
    p.send(&publish("q2/t", b"once", 2, false, false, 7)).await;
    assert_eq!(p.expect_kind(PUBREC).await.ack_pid(), 7);
    drop(p);
    b.stop().await.unwrap();

    let b = start(&dir).await;
    // The publisher did not see PUBCOMP: it re-sends with DUP [MQTT-4.3.3-2]; the broker
    // must recognise the id and not route it again.
    let (mut p, present) = Raw::connect_ok(b.addr, &Connect::new("q2-pub").clean(false)).await;
    assert!(present);
    p.send(&publish("q2/t", b"once", 2, false, true, 7)).await;
    assert_eq!(p.expect_kind(PUBREC).await.ack_pid(), 7);
    p.send(&pubrel(7)).await;
    assert_eq!(p.expect_kind(PUBCOMP).await.ack_pid(), 7);
    p.send(&publish("q2/marker", b"m", 1, false, false, 8))
        .await;
    p.expect_kind(PUBACK).await;
    let (mut sub, present) = Raw::connect_ok(b.addr, &Connect::new("q2-sub").clean(false)).await;
    assert!(present);
    let first = sub.recv_publish_ack().await;
    assert_eq!(
        (first.topic.as_str(), first.payload.as_slice()),
        ("q2/t", &b"once"[..])
    );
    let second = sub.recv_publish_ack().await;
    assert_eq!(
        second.topic, "q2/marker",
        "the re-sent QoS 2 message was delivered twice"
    );
    drop((p, sub));
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn outgoing_qos2_in_flight_is_resent_with_its_packet_id_after_a_restart() {
    let dir = tmp("qos2out");
    let b = start(&dir).await;
    let (mut sub, _) = Raw::connect_ok(b.addr, &Connect::new("q2o-sub").clean(false)).await;
    sub.send(&subscribe(1, &[("q2o/#", 2)])).await;
    sub.expect_kind(SUBACK).await;
    let mut p = Raw::client(b.addr, "q2o-pub").await;
    p.send(&publish("q2o/t", b"x", 2, false, false, 1)).await;
    p.expect_kind(PUBREC).await;
    p.send(&pubrel(1)).await;
    p.expect_kind(PUBCOMP).await;
    let first = sub.recv_publish().await;
    let pid = first.pid.unwrap();
    assert!(!first.dup);
    drop((sub, p)); // no PUBREC from the subscriber
    b.stop().await.unwrap();

    let b = start(&dir).await;
    let (mut sub, present) = Raw::connect_ok(b.addr, &Connect::new("q2o-sub").clean(false)).await;
    assert!(present);
    // [MQTT-4.4.0-1] re-sent with DUP and the same packet id.
    let again = sub.recv_publish().await;
    assert_eq!(
        (again.pid, again.dup, again.payload.as_slice()),
        (Some(pid), true, &b"x"[..])
    );
    sub.ack_publish(&again).await;
    drop(sub);
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_clean_session_reconnect_removes_the_stored_session() {
    let dir = tmp("cleanup");
    let b = start(&dir).await;
    offline_subscriber(b.addr, "gone", "g/#", 1).await;
    let (c, present) = Raw::connect_ok(b.addr, &Connect::new("gone").clean(true)).await;
    assert!(!present);
    drop(c);
    b.stop().await.unwrap();
    let b = start(&dir).await;
    let (_c, present) = Raw::connect_ok(b.addr, &Connect::new("gone").clean(false)).await;
    assert!(!present, "a discarded session came back from disk");
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The broker binary as a child process, killed with SIGKILL on drop.
struct ChildBroker {
    child: Child,
    addr: SocketAddr,
}

impl ChildBroker {
    fn start(config: &Path, port: u16) -> ChildBroker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roostd"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start roostd");
        // Ready when it logs its listen socket (no sleeping); logs go to stderr.
        let out = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if line.contains("listen socket") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("roostd did not start listening");
        ChildBroker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Crash test: under QoS 1 load with fsync = "always" the broker is killed with SIGKILL;
/// after a restart every message whose PUBACK the publisher received reaches the persistent
/// subscriber, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_broker_is_killed() {
    let dir = tmp("crash");
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("roostd.toml");
    std::fs::write(
        &config,
        format!(
            "allow_anonymous = true\nmetrics_enabled = false\nsys_interval = 0\npersistence_location = {:?}\nfsync = \"always\"\nmax_queued_messages = 100000\n[[listener]]\nport = {port}\nbind_address = \"127.0.0.1\"\n",
            dir.join("data")
        ),
    )
    .unwrap();
    let mut broker = ChildBroker::start(&config, port);
    offline_subscriber(broker.addr, "crash-sub", "crash/#", 1).await;

    // Publish with a window of 50 unacknowledged messages; kill the broker mid-stream.
    let mut publ = Raw::from_stream(TcpStream::connect(broker.addr).await.unwrap());
    publ.send(&Connect::new("crash-pub").bytes()).await;
    assert_eq!(publ.recv().await.header, 0x20);
    let mut acked = Vec::new();
    let mut next: u16 = 1;
    let mut killed = false;
    loop {
        while next <= 5000 && (next as usize) - acked.len() <= 50 {
            let payload = (next as u32).to_be_bytes();
            if publ
                .io
                .get_mut()
                .write_all(&publish("crash/t", &payload, 1, false, false, next))
                .await
                .is_err()
            {
                break;
            }
            next += 1;
        }
        if !killed && acked.len() >= 400 {
            broker.kill();
            killed = true;
        }
        match tokio::time::timeout(TIMEOUT, read_packet(&mut publ.io)).await {
            Ok(Ok(Some(p))) if p.kind() == PUBACK => acked.push(p.ack_pid() as u32),
            Ok(Ok(Some(p))) => panic!("unexpected {p:?}"),
            _ => break, // connection gone (killed)
        }
        if next > 5000 && acked.len() as u16 == next - 1 {
            break;
        }
    }
    assert!(
        killed,
        "the broker was not killed under load (only {} acks)",
        acked.len()
    );
    eprintln!("crash test: {} acknowledged before the kill", acked.len());
    drop(publ);

    let broker = ChildBroker::start(&config, port);
    let (mut sub, present) =
        Raw::connect_ok(broker.addr, &Connect::new("crash-sub").clean(false)).await;
    assert!(present, "the persistent session was lost in the crash");
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), read_packet(&mut sub.io)).await {
            Ok(Ok(Some(p))) if p.kind() == PUBLISH => {
                let m = p.publish();
                sub.ack_publish(&m).await;
                received.push(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
            }
            Ok(Ok(Some(p))) => panic!("unexpected {p:?}"),
            _ => break,
        }
    }
    // In order (at least once: a repeat of the previous message is allowed).
    assert!(
        received.windows(2).all(|w| w[1] >= w[0]),
        "messages out of order after the crash"
    );
    let missing: Vec<u32> = acked
        .iter()
        .filter(|s| !received.contains(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged message(s) lost in the crash (first: {:?}); acked {}, received {}",
        missing.len(),
        missing.first(),
        acked.len(),
        received.len()
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_expired_persistent_session_is_removed_from_disk() {
    let dir = tmp("expiry");
    let (b, router) = start_broker_with_router(&format!(
        "persistence = true\npersistence_location = {dir:?}\nfsync = \"always\"\npersistent_client_expiration = \"1s\""
    ))
    .await;
    offline_subscriber(b.addr, "short-lived", "e/#", 1).await;
    let mut p = Raw::client(b.addr, "e-pub").await;
    publish_acked(&mut p, "e/t", b"queued", false).await;
    drop(p);
    // The expiry check runs every second; wait (bounded) until only nothing is left.
    let mut expired = false;
    for _ in 0..100 {
        if router.session_count() == 0 {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(expired, "the session did not expire within 5 s");
    b.stop().await.unwrap();
    let b = start(&dir).await;
    let (_c, present) = Raw::connect_ok(b.addr, &Connect::new("short-lived").clean(false)).await;
    assert!(!present, "an expired session came back from disk");
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A disk slower than the message rate pauses publishers (max_storage_backlog) instead of
/// holding ever more writes in memory; nothing is dropped and the paused publisher goes on once
/// the writes caught up. With a 1-byte limit every persisted message pauses its publisher.
#[tokio::test]
async fn publishers_pause_while_writes_to_disk_are_behind() {
    let dir = tmp("backlog");
    let (b, router, _) = start_from_toml(&config_toml(&format!(
        "persistence = true\npersistence_location = {dir:?}\nfsync = \"never\"\nmax_storage_backlog = 1"
    )))
    .await;
    offline_subscriber(b.addr, "slow-disk-sub", "bl/#", 1).await;
    let mut p = Raw::client(b.addr, "slow-disk-pub").await;
    // All at once: the broker has to stop reading in the middle and go on later.
    let n = 200u16;
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend(publish("bl/t", &i.to_be_bytes(), 1, false, false, i + 1));
    }
    p.send(&burst).await;
    for i in 0..n {
        assert_eq!(p.expect_kind(PUBACK).await.ack_pid(), i + 1);
    }
    let pauses = router
        .metrics()
        .stats
        .storage_pauses
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(pauses > 0, "the publisher was never paused");
    let (mut s, present) =
        Raw::connect_ok(b.addr, &Connect::new("slow-disk-sub").clean(false)).await;
    assert!(present);
    for i in 0..n {
        let m = s.recv_publish_ack().await;
        assert_eq!(m.payload, i.to_be_bytes().to_vec(), "message {i}");
    }
    drop(s);
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Subscription records are writes too: a persistent client sending SUBSCRIBEs faster than the
/// disk takes them is paused the same way, and every SUBACK still comes, in order.
#[tokio::test]
async fn subscribers_pause_too_while_writes_to_disk_are_behind() {
    let dir = tmp("backlog-sub");
    let (b, router, _) = start_from_toml(&config_toml(&format!(
        "persistence = true\npersistence_location = {dir:?}\nfsync = \"never\"\nmax_storage_backlog = 1"
    )))
    .await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("many-filters").clean(false)).await;
    let n = 100u16;
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend(subscribe(i + 1, &[(&format!("f/{i}"), 1)]));
    }
    s.send(&burst).await;
    for i in 0..n {
        let ack = s.expect_kind(SUBACK).await;
        assert_eq!(
            ack.body,
            vec![((i + 1) >> 8) as u8, (i + 1) as u8, 1],
            "SUBACK {i}"
        );
    }
    let pauses = router
        .metrics()
        .stats
        .storage_pauses
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(pauses > 0, "the subscriber was never paused");
    drop(s);
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// [MQTT-3.1.2-8] Broker shutdown ends a connection without DISCONNECT: its will is published
/// (as Mosquitto does) and, being retained and queued for a persistent session, is on disk
/// after the restart.
#[tokio::test]
async fn wills_are_published_at_shutdown_and_kept_across_the_restart() {
    let dir = tmp("shutdown-will");
    let b = start(&dir).await;
    offline_subscriber(b.addr, "watcher", "status/#", 1).await;
    let will = Will::new("status/dev", b"offline", 1, true);
    let (dev, _) = Raw::connect_ok(b.addr, &Connect::new("dev").will(will)).await;
    b.stop().await.unwrap();
    drop(dev);

    let b = start(&dir).await;
    let (mut w, present) = Raw::connect_ok(b.addr, &Connect::new("watcher").clean(false)).await;
    assert!(present);
    let m = w.recv_publish_ack().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("status/dev", &b"offline"[..])
    );
    let mut fresh = Raw::client(b.addr, "fresh").await;
    fresh.send(&subscribe(1, &[("status/dev", 1)])).await;
    fresh.expect_kind(SUBACK).await;
    let r = fresh.recv_publish().await;
    assert!(r.retain, "the retained will was not kept");
    assert_eq!(r.payload, b"offline");
    drop((w, fresh));
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
