//! Sessions: takeover, clean/persistent sessions, offline queues, in-flight
//! re-delivery, expiry.

use std::time::Duration;

use crate::common::*;

/// [MQTT-3.1.4-2] A second connection with the same client id closes the
/// first one; the second one works.
#[tokio::test]
async fn takeover_closes_first_connection() {
    let b = start_broker("").await;
    let (mut first, _) = Raw::connect_ok(b.addr, &Connect::new("same-id")).await;
    let (mut second, _) = Raw::connect_ok(b.addr, &Connect::new("same-id")).await;
    first.expect_closed().await;
    second.ping().await;
    second.sub("take/t", 0).await;
    second.publish("take/t", b"mine", 0, false).await;
    assert_eq!(second.recv_publish().await.payload, b"mine");
}

/// [MQTT-3.1.4-2] / [MQTT-3.2.2-2] Takeover with clean session 0 keeps the
/// session: subscriptions of the first connection deliver to the second.
#[tokio::test]
async fn takeover_keeps_persistent_session() {
    let b = start_broker("").await;
    let (mut first, _) = Raw::connect_ok(b.addr, &Connect::new("tk").clean(false)).await;
    first.sub("tk/#", 1).await;
    let (mut second, sp) = Raw::connect_ok(b.addr, &Connect::new("tk").clean(false)).await;
    assert!(sp, "taken-over persistent session must be present");
    first.expect_closed().await;
    let mut p = Raw::client(b.addr, "pub").await;
    p.publish("tk/a", b"1", 1, false).await;
    let m = second.recv_publish_ack().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.qos),
        ("tk/a", &b"1"[..], 1)
    );
}

/// [MQTT-3.1.2-6] Clean session 1: subscriptions do not survive a reconnect.
#[tokio::test]
async fn clean_session_subscriptions_do_not_survive() {
    let b = start_broker("").await;
    let (mut c, _) = Raw::connect_ok(b.addr, &Connect::new("cs").clean(true)).await;
    c.sub("cs/t", 1).await;
    c.disconnect().await;

    let (mut c, sp) = Raw::connect_ok(b.addr, &Connect::new("cs").clean(true)).await;
    assert!(!sp);
    c.sub("cs/marker", 1).await;
    let mut p = Raw::client(b.addr, "pub").await;
    p.publish("cs/t", b"old subscription", 1, false).await;
    p.publish("cs/marker", b"marker", 1, false).await;
    let m = c.recv_publish_ack().await;
    assert_eq!(
        m.topic, "cs/marker",
        "message for the discarded subscription was delivered: {m:?}"
    );
}

/// [MQTT-3.1.2-4] / [MQTT-3.1.2-5] Clean session 0: subscriptions survive,
/// QoS 1 messages published while offline are delivered on reconnect, in
/// order.
#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_qos1() {
    let b = start_broker("").await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("ps").clean(false)).await;
    s.sub("ps/#", 1).await;
    s.disconnect().await;

    let mut p = Raw::client(b.addr, "pub").await;
    for i in 0..3 {
        p.publish(&format!("ps/{i}"), format!("m{i}").as_bytes(), 1, false)
            .await;
    }

    let (mut s, sp) = Raw::connect_ok(b.addr, &Connect::new("ps").clean(false)).await;
    assert!(sp);
    for i in 0..3 {
        let m = s.recv_publish_ack().await;
        assert_eq!(m.topic, format!("ps/{i}"));
        assert_eq!(m.payload, format!("m{i}").into_bytes());
        assert_eq!(m.qos, 1);
        assert!(!m.dup, "never-sent message must not have DUP set");
    }
    // The stored subscription still routes live messages (no re-subscribe).
    p.publish("ps/live", b"live", 1, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(m.topic, "ps/live");
}

/// Offline queue bounded by max_queued_messages: exactly the limit is
/// delivered on reconnect (Mosquitto keeps the oldest and drops new ones).
#[tokio::test]
async fn offline_queue_is_bounded_by_max_queued_messages() {
    let b = start_broker("max_queued_messages = 5").await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("bq").clean(false)).await;
    s.sub("bq/#", 1).await;
    s.disconnect().await;

    let mut p = Raw::client(b.addr, "pub").await;
    for i in 0..12u8 {
        p.publish("bq/t", &[i], 1, false).await;
    }

    let (mut s, sp) = Raw::connect_ok(b.addr, &Connect::new("bq").clean(false)).await;
    assert!(sp);
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = s.recv_publish_ack().await;
        assert_eq!(m.topic, "bq/t");
        got.push(m.payload[0]);
    }
    // Everything queued has now been offered; a fresh message comes next.
    p.publish("bq/end", b"end", 1, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(
        m.topic, "bq/end",
        "more than max_queued_messages were queued; received {got:?} then {m:?}"
    );
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "queued messages out of order");
    assert_eq!(
        got,
        vec![0, 1, 2, 3, 4],
        "expected the oldest 5 messages (Mosquitto drops new ones when full)"
    );
}

/// [MQTT-4.4.0-1] / [MQTT-3.3.1-1] Unacknowledged in-flight QoS 1 messages
/// are re-sent on reconnect with DUP=1 and their original packet ids, before
/// the queued ones, in order.
#[tokio::test]
async fn inflight_qos1_resent_with_dup_on_reconnect() {
    let b = start_broker("max_inflight_messages = 2").await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("rs").clean(false)).await;
    s.sub("rs/#", 1).await;

    let mut p = Raw::client(b.addr, "pub").await;
    for i in 0..5u8 {
        p.publish("rs/t", &[i], 1, false).await;
    }
    let m0 = s.recv_publish().await;
    let m1 = s.recv_publish().await;
    assert_eq!((m0.payload.clone(), m1.payload.clone()), (vec![0], vec![1]));
    assert!(!m0.dup && !m1.dup);
    assert_ne!(m0.pid, m1.pid);
    drop(s); // network failure, nothing acknowledged

    let (mut s, sp) = Raw::connect_ok(b.addr, &Connect::new("rs").clean(false)).await;
    assert!(sp);
    let r0 = s.recv_publish().await;
    let r1 = s.recv_publish().await;
    assert_eq!(r0.payload, vec![0], "first re-sent message: {r0:?}");
    assert_eq!(r1.payload, vec![1], "second re-sent message: {r1:?}");
    assert!(
        r0.dup && r1.dup,
        "re-delivered PUBLISH must have DUP=1 [MQTT-3.3.1-1]: {r0:?} {r1:?}"
    );
    assert_eq!(r0.pid, m0.pid, "original packet id [MQTT-4.4.0-1]");
    assert_eq!(r1.pid, m1.pid, "original packet id [MQTT-4.4.0-1]");
    assert_eq!(r0.qos, 1);
    s.ack_publish(&r0).await;
    s.ack_publish(&r1).await;
    for i in 2..5u8 {
        let m = s.recv_publish_ack().await;
        assert_eq!(m.payload, vec![i]);
        assert!(
            !m.dup,
            "first delivery of a queued message must have DUP=0: {m:?}"
        );
    }
}

/// [MQTT-4.4.0-1] An outgoing QoS 2 message that reached PUBREL: on
/// reconnect the broker re-sends the PUBREL with the same packet id (not
/// the PUBLISH).
#[tokio::test]
async fn unacknowledged_pubrel_resent_on_reconnect() {
    let b = start_broker("").await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("q2s").clean(false)).await;
    s.sub("q2/t", 2).await;
    let mut p = Raw::client(b.addr, "pub").await;
    p.publish("q2/t", b"once", 2, false).await;
    let m = s.recv_publish().await;
    assert_eq!(m.qos, 2);
    let pid = m.pid.unwrap();
    s.send(&pubrec(pid)).await;
    let rel = s.recv().await;
    assert_eq!(rel.bytes(), pubrel(pid));
    drop(s); // no PUBCOMP

    let (mut s, sp) = Raw::connect_ok(b.addr, &Connect::new("q2s").clean(false)).await;
    assert!(sp);
    let rel = s.recv().await;
    assert_eq!(
        rel.bytes(),
        pubrel(pid),
        "expected PUBREL re-sent with the original id, got {rel:?}"
    );
    s.send(&pubcomp(pid)).await;
    p.publish("q2/t", b"next", 2, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(
        m.payload, b"next",
        "the completed message must not be delivered again"
    );
}

/// QoS 0 messages are not queued for offline clients by default
/// (queue_qos0_messages = false), while QoS 1 ones are.
#[tokio::test]
async fn qos0_not_queued_for_offline_client_by_default() {
    let b = start_broker("").await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("q0").clean(false)).await;
    assert_eq!(s.subscribe(&[("q0/#", 0), ("q1/#", 1)]).await, vec![0, 1]);
    s.disconnect().await;

    let mut p = Raw::client(b.addr, "pub").await;
    p.publish("q0/a", b"qos0", 0, false).await;
    p.publish("q1/a", b"qos1", 1, false).await;

    let (mut s, sp) = Raw::connect_ok(b.addr, &Connect::new("q0").clean(false)).await;
    assert!(sp);
    let m = s.recv_publish_ack().await;
    assert_eq!(
        m.topic, "q1/a",
        "QoS 0 message was queued for an offline client: {m:?}"
    );
}

/// queue_qos0_messages = true: QoS 0 messages are queued too.
#[tokio::test]
async fn qos0_queued_when_enabled() {
    let b = start_broker("queue_qos0_messages = true").await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("q0").clean(false)).await;
    assert_eq!(s.subscribe(&[("q0/#", 0), ("q1/#", 1)]).await, vec![0, 1]);
    s.disconnect().await;

    let mut p = Raw::client(b.addr, "pub").await;
    p.publish("q0/a", b"qos0", 0, false).await;
    p.publish("q1/a", b"qos1", 1, false).await;

    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("q0").clean(false)).await;
    let m = s.recv_publish_ack().await;
    assert_eq!((m.topic.as_str(), m.qos), ("q0/a", 0));
    let m = s.recv_publish_ack().await;
    assert_eq!(m.topic, "q1/a");
}

/// persistent_client_expiration = "1h": a session unused for more than an
/// hour is discarded (virtual time).
#[tokio::test(start_paused = true)]
async fn persistent_session_expires() {
    let b = start_broker("persistent_client_expiration = \"1h\"").await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("exp").clean(false)).await;
    s.sub("exp/t", 1).await;
    s.disconnect().await;
    tokio::time::sleep(Duration::from_secs(3600 + 120)).await;
    let (_s, sp) = Raw::connect_ok(b.addr, &Connect::new("exp").clean(false)).await;
    assert!(!sp, "session should have expired after 1h");
}

/// Control for the expiry test: within the hour the session is kept.
#[tokio::test(start_paused = true)]
async fn persistent_session_kept_before_expiry() {
    let b = start_broker("persistent_client_expiration = \"1h\"").await;
    let (mut s, _) = Raw::connect_ok(b.addr, &Connect::new("exp").clean(false)).await;
    s.sub("exp/t", 1).await;
    s.disconnect().await;
    tokio::time::sleep(Duration::from_secs(1800)).await;
    let (_s, sp) = Raw::connect_ok(b.addr, &Connect::new("exp").clean(false)).await;
    assert!(sp, "session must survive 30 minutes with a 1h expiration");
}
