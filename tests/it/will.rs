//! Will messages.

use std::time::Duration;

use tokio::time::Instant;

use crate::common::*;

async fn watcher(b: &TestBroker) -> Raw {
    let mut w = Raw::client(b.addr, "watcher").await;
    w.sub("will/#", 2).await;
    w
}

/// [MQTT-3.1.2-8] The will is published when the network connection is
/// closed without DISCONNECT, with its QoS [MQTT-3.1.2-16].
#[tokio::test]
async fn will_published_when_socket_dropped() {
    let b = start_broker("").await;
    let mut w = watcher(&b).await;
    let (c, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("dies").will(Will::new("will/dies", b"gone", 1, false)),
    )
    .await;
    drop(c);
    let m = w.recv_publish_ack().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.qos, m.retain),
        ("will/dies", &b"gone"[..], 1, false)
    );
}

/// Will QoS 2 is delivered at QoS 2.
#[tokio::test]
async fn will_qos2_delivered_at_qos2() {
    let b = start_broker("").await;
    let mut w = watcher(&b).await;
    let (c, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("d2").will(Will::new("will/q2", b"x", 2, false)),
    )
    .await;
    drop(c);
    let m = w.recv_publish_ack().await;
    assert_eq!((m.topic.as_str(), m.qos), ("will/q2", 2));
}

/// [MQTT-3.1.2-17] Will retain: the will is stored as a retained message
/// and later subscribers receive it with RETAIN=1.
#[tokio::test]
async fn will_with_retain_is_retained() {
    let b = start_broker("").await;
    let mut w = watcher(&b).await;
    let (c, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("rd").will(Will::new("will/ret", b"last words", 1, true)),
    )
    .await;
    drop(c);
    let live = w.recv_publish_ack().await;
    assert_eq!(live.topic, "will/ret");
    let mut later = Raw::client(b.addr, "later").await;
    later.sub("will/ret", 1).await;
    let m = later.recv_publish_ack().await;
    assert_eq!(
        (m.payload.as_slice(), m.retain, m.qos),
        (&b"last words"[..], true, 1)
    );
}

/// [MQTT-3.1.2-10] After DISCONNECT the will is discarded, not published.
#[tokio::test]
async fn will_not_published_after_disconnect() {
    let b = start_broker("").await;
    let mut w = watcher(&b).await;
    let (c, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("polite").will(Will::new("will/polite", b"no", 1, true)),
    )
    .await;
    c.disconnect().await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("will/marker", b"m", 1, false).await;
    let m = w.recv_publish_ack().await;
    assert_eq!(
        m.topic, "will/marker",
        "will published after DISCONNECT: {m:?}"
    );
    // And it was not retained either.
    let mut later = Raw::client(b.addr, "later").await;
    assert_eq!(
        later.subscribe(&[("will/polite", 1), ("end", 1)]).await,
        vec![1, 1]
    );
    p.publish("end", b"", 1, false).await;
    assert_eq!(later.recv_publish_ack().await.topic, "end");
}

/// [MQTT-3.1.2-8] / [MQTT-3.1.2-24] Keepalive timeout publishes the will
/// (virtual time).
#[tokio::test(start_paused = true)]
async fn will_published_on_keepalive_timeout() {
    let b = start_broker("").await;
    let mut w = Raw::connect_ok(b.addr, &Connect::new("watcher").keepalive(600))
        .await
        .0;
    w.sub("will/#", 1).await;
    let (mut c, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("silent")
            .keepalive(2)
            .will(Will::new("will/silent", b"timeout", 1, false)),
    )
    .await;
    let start = Instant::now();
    let m = w.recv_publish_within(Duration::from_secs(120)).await;
    w.ack_publish(&m).await;
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "will before keepalive expiry: {:?}",
        start.elapsed()
    );
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("will/silent", &b"timeout"[..])
    );
    c.expect_closed().await;
}

/// [MQTT-3.1.2-8] A protocol error closes the connection and publishes the
/// will.
#[tokio::test]
async fn will_published_on_protocol_error() {
    let b = start_broker("").await;
    let mut w = watcher(&b).await;
    let (mut c, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("bad").will(Will::new("will/bad", b"err", 0, false)),
    )
    .await;
    c.send(&[0x00, 0x00, 0xFF, 0xFF]).await;
    c.expect_closed().await;
    let m = w.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("will/bad", &b"err"[..])
    );
}

/// The will of a connection closed by a takeover is published.
#[tokio::test]
async fn will_published_on_takeover() {
    let b = start_broker("").await;
    let mut w = watcher(&b).await;
    let (mut first, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("dup").will(Will::new("will/dup", b"old", 1, false)),
    )
    .await;
    let (mut second, _) = Raw::connect_ok(b.addr, &Connect::new("dup")).await;
    first.expect_closed().await;
    let m = w.recv_publish_ack().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("will/dup", &b"old"[..])
    );
    second.ping().await;
}

/// The will belongs to the connection: a takeover by a client without a
/// will, later dropped, does not publish the first connection's will twice.
#[tokio::test]
async fn will_published_once_across_takeover() {
    let b = start_broker("").await;
    let mut w = watcher(&b).await;
    let (mut first, _) = Raw::connect_ok(
        b.addr,
        &Connect::new("dup").will(Will::new("will/dup", b"old", 1, false)),
    )
    .await;
    let (second, _) = Raw::connect_ok(b.addr, &Connect::new("dup")).await;
    first.expect_closed().await;
    let m = w.recv_publish_ack().await;
    assert_eq!(m.topic, "will/dup");
    drop(second);
    // Barrier: the second connection's close has been processed once a new
    // client with that id gets a fresh (non-taken-over) session.
    let (third, _) = Raw::connect_ok(b.addr, &Connect::new("dup")).await;
    drop(third);
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("will/marker", b"m", 1, false).await;
    let m = w.recv_publish_ack().await;
    assert_eq!(m.topic, "will/marker", "will published twice: {m:?}");
}
