//! PUBLISH flows: QoS 0/1/2 in both directions, validation, in-flight
//! window, overlapping subscriptions.

use std::collections::HashSet;

use rumqttc::QoS;

use crate::common::*;

/// QoS 0/1/2 delivery between two rumqttc clients.
#[tokio::test]
async fn rumqttc_qos0_1_2_delivery() {
    let b = start_broker("").await;
    let mut sub = Mq::connect(b.addr, "rsub", true).await;
    let codes = sub.subscribe("x/#", QoS::ExactlyOnce).await;
    assert_eq!(
        codes,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let mut publ = Mq::connect(b.addr, "rpub", true).await;
    publ.publish("x/0", b"zero", QoS::AtMostOnce, false).await;
    publ.publish("x/1", b"one", QoS::AtLeastOnce, false).await;
    publ.publish("x/2", b"two", QoS::ExactlyOnce, false).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.next_publish().await;
        got.push((p.topic.clone(), p.payload.to_vec(), p.qos, p.retain));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("x/0".to_string(), b"zero".to_vec(), QoS::AtMostOnce, false),
            ("x/1".to_string(), b"one".to_vec(), QoS::AtLeastOnce, false),
            ("x/2".to_string(), b"two".to_vec(), QoS::ExactlyOnce, false),
        ]
    );
}

/// Raw QoS 0 delivery: header 0x30, no packet id, exact payload.
#[tokio::test]
async fn raw_qos0_delivery() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("r/0", 0).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.send(&publish("r/0", b"payload-0", 0, false, false, 0))
        .await;
    let m = s.recv().await;
    assert_eq!(m.bytes(), publish("r/0", b"payload-0", 0, false, false, 0));
}

/// Zero-length payloads are delivered.
#[tokio::test]
async fn empty_payload_delivered() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("e", 1).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("e", b"", 1, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!((m.topic.as_str(), m.payload.len()), ("e", 0));
}

/// A large payload (256 KiB, under the default 1 MiB limit) is delivered
/// intact.
#[tokio::test]
async fn large_payload_delivered_intact() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("big", 1).await;
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("big", &payload, 1, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(m.payload.len(), payload.len());
    assert!(m.payload == payload, "payload corrupted");
}

/// [MQTT-4.3.2-2] / [MQTT-2.3.1-6] QoS 1 PUBLISH is acknowledged with a
/// PUBACK carrying the same packet id.
#[tokio::test]
async fn qos1_publish_gets_puback_with_same_id() {
    let b = start_broker("").await;
    let mut p = Raw::client(b.addr, "p").await;
    for pid in [0x1234u16, 1, 0xFFFF] {
        p.send(&publish("q1", b"x", 1, false, false, pid)).await;
        let a = p.recv().await;
        assert_eq!(a.bytes(), puback(pid));
    }
}

/// [MQTT-4.3.3-2] QoS 2 inbound: PUBREC, then PUBREL gets PUBCOMP, all with
/// the same packet id; the subscriber receives the message.
#[tokio::test]
async fn qos2_publish_flow() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("q2", 0).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.send(&publish("q2", b"exactly", 2, false, false, 7)).await;
    assert_eq!(p.recv().await.bytes(), pubrec(7));
    p.send(&pubrel(7)).await;
    assert_eq!(p.recv().await.bytes(), pubcomp(7));
    let m = s.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.qos),
        ("q2", &b"exactly"[..], 0)
    );
}

/// [MQTT-4.3.3-2] A QoS 2 PUBLISH re-sent with DUP=1 before PUBREL is
/// delivered only once.
#[tokio::test]
async fn qos2_duplicate_before_pubrel_delivered_once() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("dd/#", 0).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.send(&publish("dd/t", b"once", 2, false, false, 9)).await;
    assert_eq!(p.recv().await.bytes(), pubrec(9));
    p.send(&publish("dd/t", b"once", 2, false, true, 9)).await;
    assert_eq!(
        p.recv().await.bytes(),
        pubrec(9),
        "duplicate must be answered with PUBREC again"
    );
    p.send(&pubrel(9)).await;
    assert_eq!(p.recv().await.bytes(), pubcomp(9));
    p.publish("dd/marker", b"m", 1, false).await;

    let m = s.recv_publish().await;
    assert_eq!(m.topic, "dd/t");
    let m = s.recv_publish().await;
    assert_eq!(m.topic, "dd/marker", "QoS 2 message delivered twice");
}

/// The packet id is free again after PUBCOMP: a new QoS 2 message with the
/// same id is a new message and is delivered.
#[tokio::test]
async fn qos2_packet_id_reusable_after_pubcomp() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("re", 0).await;
    let mut p = Raw::client(b.addr, "p").await;
    for payload in [&b"first"[..], b"second"] {
        p.send(&publish("re", payload, 2, false, false, 5)).await;
        assert_eq!(p.recv().await.bytes(), pubrec(5));
        p.send(&pubrel(5)).await;
        assert_eq!(p.recv().await.bytes(), pubcomp(5));
    }
    assert_eq!(s.recv_publish().await.payload, b"first");
    assert_eq!(s.recv_publish().await.payload, b"second");
}

/// Outgoing QoS 2 to a raw subscriber: PUBLISH qos 2 (0x34), PUBREC from
/// the subscriber, PUBREL 0x62 from the broker, PUBCOMP.
#[tokio::test]
async fn outgoing_qos2_handshake() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("o2", 2).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("o2", b"first", 2, false).await;
    let raw = s.recv().await;
    assert_eq!(
        raw.header, 0x34,
        "expected QoS 2 PUBLISH without DUP/RETAIN: {raw:?}"
    );
    let m = raw.publish();
    let pid = m.pid.unwrap();
    assert_ne!(pid, 0, "[MQTT-2.3.1-1]");
    assert_eq!(m.payload, b"first");
    s.send(&pubrec(pid)).await;
    let rel = s.recv().await;
    assert_eq!(
        rel.bytes(),
        pubrel(pid),
        "broker must answer PUBREC with PUBREL 0x62"
    );
    s.send(&pubcomp(pid)).await;
    // The flow is complete: the next message is delivered normally.
    p.publish("o2", b"second", 2, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(
        (m.payload.as_slice(), m.qos, m.dup),
        (&b"second"[..], 2, false)
    );
}

/// [MQTT-3.8.4-6] Delivered QoS is min(published QoS, granted QoS).
#[tokio::test]
async fn delivery_qos_is_min_of_publish_and_granted() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    assert_eq!(
        s.subscribe(&[("m/0", 0), ("m/1", 1), ("m/2", 2)]).await,
        vec![0, 1, 2]
    );
    let mut p = Raw::client(b.addr, "p").await;
    let cases = [
        ("m/0", 2u8, 0u8),
        ("m/1", 2, 1),
        ("m/2", 0, 0),
        ("m/2", 1, 1),
        ("m/2", 2, 2),
        ("m/1", 0, 0),
    ];
    for (topic, pub_qos, want) in cases {
        p.publish(topic, b"q", pub_qos, false).await;
        let m = s.recv_publish_ack().await;
        assert_eq!(m.topic, topic);
        assert_eq!(m.qos, want, "published at {pub_qos} to {topic}");
    }
}

/// [MQTT-3.3.1-9] The RETAIN flag is cleared when forwarding to an
/// established subscription.
#[tokio::test]
async fn retain_flag_cleared_on_normal_forwarding() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("rt", 1).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("rt", b"kept", 1, true).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(m.payload, b"kept");
    assert!(
        !m.retain,
        "[MQTT-3.3.1-9] retain must be 0 on live delivery"
    );
}

/// [MQTT-3.3.2-2] Topic names must not contain wildcards.
#[tokio::test]
async fn publish_topic_with_wildcard_is_closed() {
    let b = start_broker("").await;
    let mut watcher = Raw::client(b.addr, "w").await;
    watcher.sub("#", 0).await;
    for topic in ["a/+", "a/#", "+", "#", "a+b"] {
        let mut c = Raw::client(b.addr, "bad").await;
        c.send(&publish(topic, b"x", 0, false, false, 0)).await;
        c.expect_closed_silently().await;
    }
    // None of them was routed.
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("ok", b"marker", 0, false).await;
    assert_eq!(watcher.recv_publish().await.topic, "ok");
}

/// [MQTT-4.7.3-1] Topic names must be at least one character long.
#[tokio::test]
async fn publish_empty_topic_is_closed() {
    let b = start_broker("").await;
    for qos in [0u8, 1] {
        let mut c = Raw::client(b.addr, "bad").await;
        c.send(&publish("", b"x", qos, false, false, 1)).await;
        c.expect_closed_silently().await;
    }
    assert_broker_alive(&b).await;
}

/// [MQTT-1.5.3-2] Topic containing U+0000.
#[tokio::test]
async fn publish_topic_with_nul_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "bad").await;
    c.send(&publish_raw(b"a\0b", b"x", 0, false, false, None))
        .await;
    c.expect_closed_silently().await;
}

/// [MQTT-3.3.1-4] QoS bits 11 are invalid.
#[tokio::test]
async fn publish_qos3_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "bad").await;
    c.send(&publish_raw(b"t", b"x", 3, false, false, Some(1)))
        .await;
    c.expect_closed_silently().await;
}

/// [MQTT-3.3.1-2] DUP must be 0 for QoS 0 messages.
#[tokio::test]
async fn publish_dup_with_qos0_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "bad").await;
    c.send(&publish_raw(b"t", b"x", 0, false, true, None)).await;
    c.expect_closed_silently().await;
}

/// [MQTT-2.3.1-1] QoS > 0 PUBLISH needs a non-zero packet id.
#[tokio::test]
async fn publish_qos1_packet_id_zero_is_closed() {
    let b = start_broker("").await;
    for qos in [1u8, 2] {
        let mut c = Raw::client(b.addr, "bad").await;
        c.send(&publish("t", b"x", qos, false, false, 0)).await;
        c.expect_closed_silently().await;
    }
}

/// max_inflight_messages = 2: a subscriber that does not ack gets exactly 2
/// QoS 1 messages; each PUBACK releases the next one. In-flight packet ids
/// are distinct and non-zero.
#[tokio::test]
async fn inflight_window_limits_unacked_qos1() {
    let b = start_broker("max_inflight_messages = 2").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("w", 1).await;
    let mut p = Raw::client(b.addr, "p").await;
    for i in 0..5u8 {
        p.publish("w", &[i], 1, false).await;
    }
    let m0 = s.recv_publish().await;
    let m1 = s.recv_publish().await;
    assert_eq!((m0.payload[0], m1.payload[0]), (0, 1));
    let (pid0, pid1) = (m0.pid.unwrap(), m1.pid.unwrap());
    assert!(
        pid0 != 0 && pid1 != 0 && pid0 != pid1,
        "in-flight ids {pid0} {pid1}"
    );
    // Barrier: the next packet must be our PINGRESP, not a third PUBLISH.
    s.send(&pingreq()).await;
    let n = s.recv().await;
    assert_eq!(
        n.bytes(),
        vec![0xD0, 0x00],
        "a third message exceeded the in-flight window: {n:?}"
    );

    s.send(&puback(pid0)).await;
    let m2 = s.recv_publish().await;
    assert_eq!(m2.payload[0], 2);
    let pid2 = m2.pid.unwrap();
    assert!(
        pid2 != 0 && pid2 != pid1,
        "id {pid2} collides with in-flight {pid1}"
    );
    s.send(&pingreq()).await;
    let n = s.recv().await;
    assert_eq!(
        n.bytes(),
        vec![0xD0, 0x00],
        "window exceeded after one PUBACK: {n:?}"
    );

    s.send(&puback(pid1)).await;
    s.send(&puback(pid2)).await;
    let m3 = s.recv_publish_ack().await;
    let m4 = s.recv_publish_ack().await;
    assert_eq!((m3.payload[0], m4.payload[0]), (3, 4));
}

/// [MQTT-4.6.0-2] / [MQTT-4.6.0-6] Messages from one publisher on one topic
/// arrive in order.
#[tokio::test]
async fn qos1_ordering_preserved() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("ord", 1).await;
    let mut p = Raw::client(b.addr, "p").await;
    // Pipeline 200 publishes without waiting for each PUBACK.
    let mut buf = Vec::new();
    for i in 0..200u16 {
        buf.extend(publish("ord", &i.to_be_bytes(), 1, false, false, i + 1));
    }
    p.send(&buf).await;
    let mut acked = HashSet::new();
    for _ in 0..200 {
        acked.insert(p.recv().await.ack_pid());
    }
    assert_eq!(acked.len(), 200);
    for i in 0..200u16 {
        let m = s.recv_publish_ack().await;
        assert_eq!(m.payload, i.to_be_bytes(), "out of order at {i}");
    }
}

/// [MQTT-3.3.5-1] Overlapping subscriptions (a/+ QoS 1, a/# QoS 2): one
/// delivery at the maximum QoS.
#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_max_qos() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    assert_eq!(
        s.subscribe(&[("a/+", 1), ("a/#", 2), ("z", 0)]).await,
        vec![1, 2, 0]
    );
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("a/b", b"once", 2, false).await;
    p.publish("z", b"marker", 0, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!((m.topic.as_str(), m.qos), ("a/b", 2));
    let m = s.recv_publish_ack().await;
    assert_eq!(
        m.topic, "z",
        "overlapping subscriptions delivered a second copy: {m:?}"
    );
}
