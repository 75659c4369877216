//! SUBSCRIBE / UNSUBSCRIBE, topic matching, retained messages.

use std::collections::BTreeSet;

use crate::common::*;

/// [MQTT-3.8.4-1] / [MQTT-3.8.4-5] / [MQTT-3.9.3-1] One SUBACK return code per
/// filter, in order; 0x80 for invalid filters [MQTT-4.7.1-2] /
/// [MQTT-4.7.1-3] / [MQTT-4.7.3-1].
#[tokio::test]
async fn suback_grants_qos_and_rejects_invalid_filters() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "c").await;
    c.send(&subscribe(
        10,
        &[
            ("a/b", 0),
            ("c/+", 1),
            ("d/#", 2),
            ("a/#/b", 1),
            ("sport+", 0),
            ("#a", 1),
            ("", 0),
            ("+/+/#", 2),
        ],
    ))
    .await;
    let p = c.recv().await;
    assert_eq!(
        p.bytes(),
        vec![0x90, 0x0A, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80, 0x80, 0x80, 0x80, 0x02]
    );
    // The connection stays usable and the valid filters are active.
    let mut pb = Raw::client(b.addr, "p").await;
    pb.publish("d/x", b"ok", 2, false).await;
    let m = c.recv_publish_ack().await;
    assert_eq!((m.topic.as_str(), m.qos), ("d/x", 2));
}

/// [MQTT-3.8.3-3] SUBSCRIBE with no topic filter is a protocol violation.
#[tokio::test]
async fn subscribe_without_filters_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "c").await;
    c.send(&[0x82, 0x02, 0x00, 0x01]).await;
    c.expect_closed_silently().await;
}

/// [MQTT-3.8.1-1] SUBSCRIBE fixed-header flags must be 0010.
#[tokio::test]
async fn subscribe_bad_header_flags_is_closed() {
    let b = start_broker("").await;
    for header in [0x80u8, 0x83, 0x8A] {
        let mut c = Raw::client(b.addr, "c").await;
        c.send(&subscribe_with_header(header, 1, &[("a", 0)])).await;
        c.expect_closed_silently().await;
    }
}

/// [MQTT-3.8.3-4] Requested QoS 3, or reserved bits in the options byte.
#[tokio::test]
async fn subscribe_bad_requested_qos_is_closed() {
    let b = start_broker("").await;
    for opts in [0x03u8, 0x04, 0x05, 0x80, 0xFC] {
        let mut c = Raw::client(b.addr, "c").await;
        c.send(&subscribe(1, &[("a", opts)])).await;
        c.expect_closed_silently().await;
    }
    assert_broker_alive(&b).await;
}

/// [MQTT-2.3.1-1] SUBSCRIBE with packet id 0.
#[tokio::test]
async fn subscribe_packet_id_zero_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "c").await;
    c.send(&subscribe(0, &[("a", 0)])).await;
    c.expect_closed_silently().await;
}

/// [MQTT-3.8.4-2] SUBACK echoes the packet id.
#[tokio::test]
async fn suback_echoes_packet_id() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "c").await;
    for pid in [0xBEEFu16, 1, 0xFFFF] {
        c.send(&subscribe(pid, &[("e/p", 1)])).await;
        let [hi, lo] = pid.to_be_bytes();
        assert_eq!(c.recv().await.bytes(), vec![0x90, 0x03, hi, lo, 0x01]);
    }
}

/// [MQTT-3.8.4-3] Subscribing again to an identical filter replaces the
/// subscription: one delivery, at the new QoS.
#[tokio::test]
async fn resubscribe_replaces_qos() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("r/t", 0).await;
    s.sub("r/t", 1).await;
    s.sub("marker", 0).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("r/t", b"x", 1, false).await;
    p.publish("marker", b"m", 0, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!((m.topic.as_str(), m.qos), ("r/t", 1), "new QoS must apply");
    let m = s.recv_publish_ack().await;
    assert_eq!(
        m.topic, "marker",
        "resubscribe created a second subscription: {m:?}"
    );
}

/// [MQTT-3.10.4-4] / [MQTT-3.10.4-5] UNSUBACK with the same packet id, even
/// when no subscription matched.
#[tokio::test]
async fn unsubscribe_unknown_filter_gets_unsuback() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "c").await;
    c.send(&unsubscribe(0x0102, &["never/subscribed"])).await;
    assert_eq!(c.recv().await.bytes(), vec![0xB0, 0x02, 0x01, 0x02]);
    c.send(&unsubscribe(0xFFFE, &["x", "y/#"])).await;
    assert_eq!(c.recv().await.bytes(), vec![0xB0, 0x02, 0xFF, 0xFE]);
}

/// [MQTT-3.10.4-1] / [MQTT-3.10.4-2] UNSUBSCRIBE deletes the subscription and
/// delivery stops.
#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    assert_eq!(
        s.subscribe(&[("u/t", 1), ("u/marker", 1)]).await,
        vec![1, 1]
    );
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("u/t", b"before", 1, false).await;
    assert_eq!(s.recv_publish_ack().await.payload, b"before");

    s.send(&unsubscribe(77, &["u/t"])).await;
    let ack = s.expect_kind(UNSUBACK).await;
    assert_eq!(ack.bytes(), vec![0xB0, 0x02, 0x00, 77]);
    p.publish("u/t", b"after", 1, false).await;
    p.publish("u/marker", b"m", 1, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(
        m.topic, "u/marker",
        "delivery continued after UNSUBSCRIBE: {m:?}"
    );
}

/// [MQTT-3.10.1-1] UNSUBSCRIBE fixed-header flags must be 0010.
#[tokio::test]
async fn unsubscribe_bad_header_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "c").await;
    c.send(&unsubscribe_with_header(0xA0, 1, &["a"])).await;
    c.expect_closed_silently().await;
}

/// [MQTT-3.10.3-2] UNSUBSCRIBE with no topic filter.
#[tokio::test]
async fn unsubscribe_without_filters_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "c").await;
    c.send(&[0xA2, 0x02, 0x00, 0x01]).await;
    c.expect_closed_silently().await;
}

/// Publish each topic (QoS 1) then `end`, collect what `filter` received
/// before `end`.
async fn matched(filter: &str, topics: &[&str]) -> Vec<String> {
    let b = start_broker("").await;
    let mut s = Raw::client(b.addr, "s").await;
    assert_eq!(s.subscribe(&[(filter, 1), ("end", 1)]).await, vec![1, 1]);
    let mut p = Raw::client(b.addr, "p").await;
    for t in topics {
        p.publish(t, t.as_bytes(), 1, false).await;
    }
    p.publish("end", b"", 1, false).await;
    let mut got = Vec::new();
    loop {
        let m = s.recv_publish_ack().await;
        if m.topic == "end" {
            return got;
        }
        assert_eq!(m.payload, m.topic.as_bytes());
        got.push(m.topic);
    }
}

/// [MQTT-4.7.1-3] `+` matches exactly one level (including an empty one).
#[tokio::test]
async fn plus_matches_exactly_one_level() {
    let got = matched(
        "s/+/t",
        &["s/x/t", "s/x/y/t", "s/t", "s//t", "s/x/t/u", "s/x"],
    )
    .await;
    assert_eq!(got, vec!["s/x/t", "s//t"]);
    let got = matched("+", &["a", "a/b", "/a", "b"]).await;
    assert_eq!(got, vec!["a", "b"]);
}

/// [MQTT-4.7.1-2] `#` matches the parent level and any number of children.
#[tokio::test]
async fn hash_matches_parent_and_children() {
    let got = matched(
        "sport/#",
        &[
            "sport",
            "sport/tennis",
            "sport/tennis/player1",
            "sports",
            "sport/",
            "other/sport",
        ],
    )
    .await;
    assert_eq!(
        got,
        vec!["sport", "sport/tennis", "sport/tennis/player1", "sport/"]
    );
}

/// Topic matching is case sensitive and exact for literal filters.
#[tokio::test]
async fn literal_filter_matches_exactly() {
    let got = matched("a/b", &["a/b", "A/b", "a/b/", "/a/b", "a/bc"]).await;
    assert_eq!(got, vec!["a/b"]);
}

/// [MQTT-4.7.2-1] `#` and `+/x` do not match topics starting with `$`;
/// `$SYS/#` does.
#[tokio::test]
async fn wildcards_do_not_match_dollar_topics() {
    let b = start_broker("").await;
    let mut all = Raw::client(b.addr, "all").await;
    assert_eq!(all.subscribe(&[("#", 1), ("+/x", 1)]).await, vec![1, 1]);
    let mut sys = Raw::client(b.addr, "sys").await;
    assert_eq!(
        sys.subscribe(&[("$SYS/#", 1), ("$test/+", 1)]).await,
        vec![1, 1]
    );
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("$SYS/x", b"sys", 1, false).await;
    p.publish("$test/x", b"test", 1, false).await;
    p.publish("plain/x", b"plain", 1, false).await;

    let m = all.recv_publish_ack().await;
    assert_eq!(m.topic, "plain/x", "`#`/`+/x` matched a $ topic: {m:?}");
    // The broker's own `$SYS/broker/...` (retained) messages may come first.
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = sys.recv_publish_ack().await;
        if !m.topic.starts_with("$SYS/broker/") {
            got.push(m.topic);
        }
    }
    assert_eq!(
        got,
        vec!["$SYS/x", "$test/x"],
        "`$SYS/#` must match $SYS/x and `$test/+` $test/x"
    );
}

/// [MQTT-3.3.1-6] / [MQTT-3.3.1-8] A new subscription gets the retained
/// message after the SUBACK, with RETAIN=1.
#[tokio::test]
async fn retained_message_sent_after_suback_with_retain_flag() {
    let b = start_broker("").await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("ret/a", b"stored", 1, true).await;
    let mut s = Raw::client(b.addr, "s").await;
    s.send(&subscribe(3, &[("ret/#", 1)])).await;
    let first = s.recv().await;
    assert_eq!(
        first.bytes(),
        vec![0x90, 0x03, 0x00, 0x03, 0x01],
        "SUBACK must come first"
    );
    let m = s.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.qos),
        ("ret/a", &b"stored"[..], 1)
    );
    assert!(
        m.retain,
        "[MQTT-3.3.1-8] retained message must have RETAIN=1"
    );
    assert!(!m.dup);
}

/// Retained delivery QoS is min(stored QoS, granted QoS).
#[tokio::test]
async fn retained_message_qos_downgraded_to_granted() {
    let b = start_broker("").await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("rq", b"v", 2, true).await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("rq", 1).await;
    let m = s.recv_publish_ack().await;
    assert_eq!((m.qos, m.retain), (1, true));
}

/// Every retained topic matching a wildcard is sent.
#[tokio::test]
async fn retained_messages_for_wildcard_subscription() {
    let b = start_broker("").await;
    let mut p = Raw::client(b.addr, "p").await;
    for t in ["w/a", "w/b/c", "w", "x/a"] {
        p.publish(t, t.as_bytes(), 1, true).await;
    }
    let mut s = Raw::client(b.addr, "s").await;
    assert_eq!(s.subscribe(&[("w/#", 1), ("end", 1)]).await, vec![1, 1]);
    let mut got = BTreeSet::new();
    for _ in 0..3 {
        let m = s.recv_publish_ack().await;
        assert!(m.retain);
        assert_eq!(m.payload, m.topic.as_bytes());
        got.insert(m.topic);
    }
    p.publish("end", b"", 1, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(m.topic, "end", "extra retained message: {m:?}");
    assert_eq!(
        got,
        ["w", "w/a", "w/b/c"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

/// The latest retained message per topic replaces the previous one.
#[tokio::test]
async fn latest_retained_message_wins() {
    let b = start_broker("").await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("lr", b"v1", 1, true).await;
    p.publish("lr", b"v2", 0, true).await;
    p.publish("lr", b"not retained", 1, false).await; // does not replace
    let mut s = Raw::client(b.addr, "s").await;
    assert_eq!(s.subscribe(&[("lr", 1), ("end", 1)]).await, vec![1, 1]);
    let m = s.recv_publish_ack().await;
    assert_eq!(
        (m.payload.as_slice(), m.retain, m.qos),
        (&b"v2"[..], true, 0)
    );
    p.publish("end", b"", 1, false).await;
    assert_eq!(
        s.recv_publish_ack().await.topic,
        "end",
        "more than one retained message"
    );
}

/// [MQTT-3.3.1-10] / [MQTT-3.3.1-11] A retained PUBLISH with an empty payload
/// removes the retained message, is forwarded normally, and is not stored.
#[tokio::test]
async fn empty_retained_payload_deletes_and_is_not_stored() {
    let b = start_broker("").await;
    let mut live = Raw::client(b.addr, "live").await;
    live.sub("del", 1).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("del", b"v", 1, true).await;
    assert_eq!(live.recv_publish_ack().await.payload, b"v");
    p.publish("del", b"", 1, true).await;
    let m = live.recv_publish_ack().await;
    assert!(
        m.payload.is_empty(),
        "empty retained publish must be forwarded to existing subscribers"
    );
    // A zero-byte retained message on a topic that never had one.
    p.publish("fresh", b"", 1, true).await;

    let mut s = Raw::client(b.addr, "s").await;
    assert_eq!(
        s.subscribe(&[("del", 1), ("fresh", 1), ("end", 1)]).await,
        vec![1, 1, 1]
    );
    p.publish("end", b"", 1, false).await;
    let m = s.recv_publish_ack().await;
    assert_eq!(
        m.topic, "end",
        "a retained message survived deletion or an empty one was stored: {m:?}"
    );
}

/// Retained messages are also delivered on re-subscription
/// ([MQTT-3.8.4-3]: the retained messages are re-sent).
#[tokio::test]
async fn retained_resent_on_resubscribe() {
    let b = start_broker("").await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("rr", b"v", 0, true).await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("rr", 0).await;
    assert!(s.recv_publish().await.retain);
    s.sub("rr", 0).await;
    let m = s.recv_publish().await;
    assert_eq!((m.payload.as_slice(), m.retain), (&b"v"[..], true));
}

/// retain_available = false: a PUBLISH with RETAIN=1 closes the connection
/// (Mosquitto's behaviour); non-retained publishes work.
#[tokio::test]
async fn retain_unavailable_closes_on_retained_publish() {
    let b = start_broker("retain_available = false").await;
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("nr", 1).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("nr", b"plain", 1, false).await;
    assert_eq!(s.recv_publish_ack().await.payload, b"plain");
    p.send(&publish("nr", b"retained", 1, true, false, 99))
        .await;
    p.expect_closed_silently().await;
    // Not stored either.
    let mut s2 = Raw::client(b.addr, "s2").await;
    assert_eq!(s2.subscribe(&[("nr", 1), ("end", 1)]).await, vec![1, 1]);
    let mut p2 = Raw::client(b.addr, "p2").await;
    p2.publish("end", b"", 1, false).await;
    assert_eq!(s2.recv_publish_ack().await.topic, "end");
}
