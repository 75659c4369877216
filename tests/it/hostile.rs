//! Hostile and broken clients. After each attack a well-behaved client must
//! still be served.

use std::time::Duration;

use tokio::net::TcpSocket;

use crate::common::*;

/// Remaining length with a 5th continuation byte is malformed: closed.
#[tokio::test]
async fn malformed_remaining_length_is_closed() {
    let b = start_broker("").await;
    // As the first packet.
    let mut c = Raw::tcp(b.addr).await;
    c.send_lossy(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    c.expect_closed_silently().await;
    // After a valid CONNECT.
    let mut c = Raw::client(b.addr, "c").await;
    c.send_lossy(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    c.expect_closed_silently().await;
    assert_broker_alive(&b).await;
}

/// A header announcing more than message_size_limit is refused at once,
/// without waiting for (or buffering) the body.
#[tokio::test]
async fn oversize_packet_closed_without_waiting_for_body() {
    let b = start_broker("message_size_limit = 1024").await;
    // A packet within the limit is fine.
    let mut s = Raw::client(b.addr, "s").await;
    s.sub("lim", 0).await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("lim", &[7u8; 900], 0, false).await;
    assert_eq!(s.recv_publish().await.payload.len(), 900);

    let mut header = vec![0x30];
    header.extend(encode_remaining_length(1024 * 1024));
    p.send(&header).await; // the 1 MiB body never comes
    p.expect_closed_silently().await;

    // Same for an oversize CONNECT.
    let mut c = Raw::tcp(b.addr).await;
    let mut header = vec![0x10];
    header.extend(encode_remaining_length(1024 * 1024));
    c.send(&header).await;
    c.expect_closed_silently().await;
    assert_broker_alive(&b).await;
}

/// A packet whose remaining length is one byte over the limit is refused.
#[tokio::test]
async fn packet_just_over_size_limit_is_closed() {
    let b = start_broker("message_size_limit = 1024").await;
    let mut p = Raw::client(b.addr, "p").await;
    // topic "t" (2+1 bytes) + payload 1022 = 1025 bytes remaining length.
    let pkt = publish("t", &[0u8; 1022], 0, false, false, 0);
    assert_eq!(&pkt[1..3], &encode_remaining_length(1025)[..]);
    p.send_lossy(&pkt).await;
    p.expect_closed_silently().await;
    assert_broker_alive(&b).await;
}

/// [MQTT-1.5.3-1] Ill-formed UTF-8 (invalid byte, encoded surrogate) in a
/// topic name: closed.
#[tokio::test]
async fn invalid_utf8_topic_is_closed() {
    let b = start_broker("").await;
    for topic in [&b"a\xFFb"[..], b"\xED\xA0\x80", b"\xC0\x80", b"ok/\xE2\x82"] {
        let mut c = Raw::client(b.addr, "c").await;
        c.send(&publish_raw(topic, b"x", 0, false, false, None))
            .await;
        c.expect_closed_silently().await;
    }
    // Invalid UTF-8 in a SUBSCRIBE filter too.
    let mut c = Raw::client(b.addr, "c").await;
    let mut body = vec![0x00, 0x01];
    body.extend(mqtt_bytes(b"a\xFF"));
    body.push(0);
    c.send(&packet(0x82, &body)).await;
    c.expect_closed_silently().await;
    assert_broker_alive(&b).await;
}

/// Reserved packet types 0 and 15: closed.
#[tokio::test]
async fn reserved_packet_types_are_closed() {
    let b = start_broker("").await;
    for pkt in [
        vec![0x00, 0x00],
        vec![0xF0, 0x00],
        vec![0xF0, 0x02, 0x00, 0x01],
    ] {
        let mut c = Raw::client(b.addr, "c").await;
        c.send(&pkt).await;
        c.expect_closed_silently().await;
    }
    assert_broker_alive(&b).await;
}

/// Server-to-client packets sent by a client: closed.
#[tokio::test]
async fn server_only_packets_from_client_are_closed() {
    let b = start_broker("").await;
    let pkts: Vec<Vec<u8>> = vec![
        vec![0x20, 0x02, 0x00, 0x00],       // CONNACK
        vec![0x90, 0x03, 0x00, 0x01, 0x00], // SUBACK
        vec![0xB0, 0x02, 0x00, 0x01],       // UNSUBACK
        vec![0xD0, 0x00],                   // PINGRESP
    ];
    for pkt in pkts {
        let mut c = Raw::client(b.addr, "c").await;
        c.send(&pkt).await;
        c.expect_closed_silently().await;
    }
    assert_broker_alive(&b).await;
}

/// [MQTT-3.6.1-1] PUBREL fixed-header flags must be 0010.
#[tokio::test]
async fn pubrel_with_bad_header_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::client(b.addr, "c").await;
    c.send(&publish("t", b"x", 2, false, false, 1)).await;
    assert_eq!(c.recv().await.bytes(), pubrec(1));
    c.send(&[0x60, 0x02, 0x00, 0x01]).await;
    c.expect_closed_silently().await;
    assert_broker_alive(&b).await;
}

/// PUBACK with remaining length 3 (must be 2): closed.
#[tokio::test]
async fn puback_with_wrong_length_is_closed() {
    let b = start_broker("").await;
    for pkt in [
        vec![0x40, 0x03, 0x00, 0x01, 0x00],
        vec![0x40, 0x01, 0x00],
        vec![0x70, 0x00],
    ] {
        let mut c = Raw::client(b.addr, "c").await;
        c.send(&pkt).await;
        c.expect_closed_silently().await;
    }
    assert_broker_alive(&b).await;
}

/// Other fixed-header flag violations after CONNECT ([MQTT-2.2.2-2]).
#[tokio::test]
async fn reserved_fixed_header_flags_are_closed() {
    let b = start_broker("").await;
    for pkt in [
        vec![0xC1, 0x00],
        vec![0xE2, 0x00],
        vec![0x41, 0x02, 0x00, 0x01],
        vec![0xA3, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
    ] {
        let mut c = Raw::client(b.addr, "c").await;
        c.send(&pkt).await;
        c.expect_closed_silently().await;
    }
    assert_broker_alive(&b).await;
}

/// String lengths inside CONNECT pointing past the end of the packet.
#[tokio::test]
async fn truncated_strings_inside_connect_are_closed() {
    let b = start_broker("").await;
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    // Protocol name length 10, only "MQTT" follows.
    bodies.push(vec![0x00, 0x0A, b'M', b'Q', b'T', b'T']);
    // Client id claims 10 bytes, 3 present.
    let mut body = Connect::new("").body();
    body.truncate(body.len() - 2);
    body.extend([0x00, 0x0A, b'a', b'b', b'c']);
    bodies.push(body);
    // Will flag set, will topic missing entirely.
    let c = Connect::new("w").flags(0x06);
    bodies.push(c.body());
    // Will topic present, will payload length overflows.
    let mut body = Connect::new("w").flags(0x06).body();
    body.extend(mqtt_str("will/t"));
    body.extend([0x01, 0x00, b'x']);
    bodies.push(body);
    // Username flag set, username length overflows.
    let mut body = Connect::new("u").flags(0x82).body();
    body.extend([0x00, 0x20, b'u']);
    bodies.push(body);
    // Password flag set, password missing.
    let mut body = Connect::new("u").username("user").flags(0xC2).body();
    body.extend([0x00]);
    bodies.push(body);
    // Variable header cut short (no keepalive).
    bodies.push(vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02]);
    // Empty CONNECT.
    bodies.push(vec![]);

    for body in bodies {
        let mut c = Raw::tcp(b.addr).await;
        c.send_lossy(&packet(0x10, &body)).await;
        c.expect_rejected().await;
    }
    assert_broker_alive(&b).await;
}

/// Inconsistent lengths inside other packets: topic length beyond the end of
/// a PUBLISH, SUBSCRIBE filter without its options byte.
#[tokio::test]
async fn truncated_fields_inside_packets_are_closed() {
    let b = start_broker("").await;
    let pkts: Vec<Vec<u8>> = vec![
        packet(0x30, &[0x00, 0x10, b'a']), // topic length 16, 1 byte
        packet(0x32, &[0x00, 0x01, b'a']), // QoS 1 without packet id
        packet(0x30, &[0x00]),             // half a length
        packet(0x82, &[0x00, 0x01, 0x00, 0x01, b'a']), // filter without QoS byte
        packet(0x82, &[0x00, 0x01, 0x00, 0x05, b'a', 0x00]), // filter length overflow
        packet(0xA2, &[0x00, 0x01, 0x00, 0x05, b'a']), // unsubscribe overflow
        packet(0x82, &[0x00]),             // no packet id
    ];
    for pkt in pkts {
        let mut c = Raw::client(b.addr, "c").await;
        c.send(&pkt).await;
        c.expect_closed_silently().await;
    }
    assert_broker_alive(&b).await;
}

/// Random bytes after a valid CONNECT, each on its own connection
/// (deterministic xorshift). The broker must survive all of them.
#[tokio::test]
async fn random_bytes_after_connect_do_not_hurt_the_broker() {
    let b = start_broker("").await;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in 0..300 {
        let mut c = Raw::client(b.addr, &format!("fuzz{i}")).await;
        let mut bytes = Vec::new();
        match rng.below(3) {
            // Structurally framed packet with random type/flags and body.
            0 | 1 => {
                let len = rng.below(48) as usize;
                let body: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                bytes.extend(packet(rng.byte(), &body));
                if rng.below(2) == 0 {
                    let len = rng.below(16) as usize;
                    bytes.extend((0..len).map(|_| rng.byte()));
                }
            }
            // Raw noise.
            _ => {
                let len = 1 + rng.below(64) as usize;
                bytes.extend((0..len).map(|_| rng.byte()));
            }
        }
        c.send_lossy(&bytes).await;
        drop(c);
        if i % 50 == 49 {
            assert!(
                b.is_running(),
                "broker stopped after fuzz case {i}: {bytes:02x?}"
            );
        }
    }
    assert_broker_alive(&b).await;
}

/// Random bytes as the very first thing on a connection.
#[tokio::test]
async fn random_bytes_before_connect_do_not_hurt_the_broker() {
    let b = start_broker("").await;
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    for _ in 0..200 {
        let mut c = Raw::tcp(b.addr).await;
        let len = 1 + rng.below(64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if rng.below(2) == 0 {
            bytes[0] = 0x10; // looks like a CONNECT
        }
        c.send_lossy(&bytes).await;
        drop(c);
    }
    assert_broker_alive(&b).await;
}

/// Publishes N x 1 KiB QoS 0 messages as fast as possible; with `with_slow`,
/// a second subscriber that never reads is also subscribed.
///
/// A burst faster than the reading subscriber (which shares these two cores
/// with the broker and the publisher) may overflow its queue: QoS 0 overflow
/// is dropped by design, but every message must be either delivered, in
/// order, or counted as dropped for that client; the QoS 1 marker behind the
/// burst must arrive; the slow subscriber's queue stays bounded.
async fn flood(with_slow: bool) {
    const N: usize = 20_000;
    let (b, router) = start_broker_with_router("max_queued_messages = 100").await;

    // Subscriber that never reads, with a tiny receive buffer.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(b.addr).await.unwrap();
    let mut slow = Raw::from_stream(stream);
    slow.send(&Connect::new("slow").bytes()).await;
    assert_eq!(slow.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x00]);
    if with_slow {
        slow.sub("flood", 0).await;
    }

    // Normal subscriber, read concurrently until the QoS 1 end marker (which
    // is queued behind every flood message routed to it).
    let mut fast = Raw::client(b.addr, "fast").await;
    assert_eq!(
        fast.subscribe(&[("flood", 0), ("flood/end", 1)]).await,
        vec![0, 1]
    );
    let reader = tokio::spawn(async move {
        let mut count = 0usize;
        let mut expected = 0u32;
        let mut first_gap = None;
        let mut end_seen = false;
        loop {
            // Upper bound on silence, so a lost end marker cannot hang the test.
            let next =
                tokio::time::timeout(Duration::from_secs(3), read_packet(&mut fast.io)).await;
            let pkt = match next {
                Err(_) => break,
                Ok(Ok(Some(p))) => p,
                Ok(other) => panic!("fast subscriber connection failed: {other:?}"),
            };
            let m = pkt.publish();
            if m.topic == "flood/end" {
                fast.ack_publish(&m).await;
                end_seen = true;
                break;
            }
            assert_eq!(m.payload.len(), 1024);
            let seq = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            assert!(
                seq >= expected,
                "fast subscriber: reordered message {seq} after {expected}"
            );
            if seq != expected && first_gap.is_none() {
                first_gap = Some((expected, seq));
            }
            expected = seq + 1;
            count += 1;
        }
        // Keep the connection open: a clean session's figures end with it.
        (count, first_gap, end_seen, fast)
    });

    let mut p = Raw::client(b.addr, "flooder").await;
    let mut payload = vec![0xABu8; 1024];
    let publish_all = async {
        let mut batch = Vec::with_capacity(64 * 1100);
        for i in 0..N as u32 {
            payload[..4].copy_from_slice(&i.to_be_bytes());
            batch.extend(publish("flood", &payload, 0, false, false, 0));
            if batch.len() > 60_000 {
                p.send(&batch).await;
                batch.clear();
            }
        }
        p.send(&batch).await;
        p.ping().await; // the publisher's connection is still served
        p.publish("flood/end", b"", 1, false).await;
    };
    tokio::time::timeout(Duration::from_secs(30), publish_all)
        .await
        .expect("publisher blocked by a slow consumer");

    let (count, first_gap, end_seen, _fast) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("fast subscriber reader hung")
        .unwrap();
    let report = router.slow_clients(100);
    let dropped_for = |id: &str| {
        report
            .iter()
            .find(|c| c.client_id == id)
            .map_or(0, |c| c.dropped as usize)
    };
    let fast_dropped = dropped_for("fast");
    assert_eq!(
        count + fast_dropped,
        N,
        "fast subscriber: {count} delivered + {fast_dropped} counted as dropped != {N} published; first gap (expected, got): {first_gap:?}; broker stats: {:?}; report {report:?}",
        router.metrics().stats
    );
    if with_slow {
        let slow_report = report
            .iter()
            .find(|c| c.client_id == "slow")
            .expect("slow client in the report");
        assert!(
            slow_report.queued <= 100,
            "slow client's queue is unbounded: {slow_report:?}"
        );
        assert!(
            slow_report.dropped > 0,
            "slow client dropped nothing: {slow_report:?}"
        );
    }
    println!("fast subscriber: {count} delivered, {fast_dropped} dropped (queue_full) of {N}");
    assert!(
        end_seen,
        "QoS 1 end marker not delivered to the fast subscriber"
    );
    assert_broker_alive(&b).await;
    drop(slow);
}

/// Slow consumer: a QoS 0 subscriber that never reads must not block the
/// publisher, and a normal subscriber still gets every message (the slow
/// one's queue is bounded by max_queued_messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_block_publisher() {
    flood(true).await;
}

/// Control for the slow-consumer test: with no slow subscriber at all, a
/// subscriber that reads continuously gets every one of a fast burst of
/// QoS 0 messages (max_queued_messages = 100 must bound a backlog the
/// client cannot take, not the burst size of a client that keeps up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_burst_to_reading_subscriber_is_not_dropped() {
    flood(false).await;
}

/// A backlog of QoS 0 messages for a client that is not reading must not
/// cost it its QoS 1 messages: Mosquitto's max_queued_messages counts QoS 1/2
/// messages above the in-flight window; QoS 0 ones are bounded separately.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_not_dropped_behind_qos0_backlog() {
    let b = start_broker("max_queued_messages = 100").await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(b.addr).await.unwrap();
    let mut slow = Raw::from_stream(stream);
    slow.send(&Connect::new("slow").bytes()).await;
    assert_eq!(slow.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x00]);
    assert_eq!(
        slow.subscribe(&[("bulk", 0), ("important", 1)]).await,
        vec![0, 1]
    );

    let mut p = Raw::client(b.addr, "p").await;
    let payload = vec![0x55u8; 1024];
    let mut batch = Vec::new();
    for _ in 0..20_000 {
        batch.extend(publish("bulk", &payload, 0, false, false, 0));
    }
    // Two rounds, so the slow client's socket buffers are surely full and
    // its queue is at max_queued_messages when the QoS 1 messages arrive.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), p.send(&batch))
            .await
            .expect("publisher blocked");
        p.ping().await;
    }
    for i in 0..5u8 {
        p.publish("important", &[i], 1, false).await;
    }

    // Now the slow client reads everything it was given.
    let mut important = Vec::new();
    let mut bulk = 0usize;
    while important.len() < 5 {
        let next = tokio::time::timeout(Duration::from_secs(3), read_packet(&mut slow.io)).await;
        let pkt = match next {
            Err(_) => break,
            Ok(Ok(Some(p))) => p,
            Ok(other) => panic!("slow subscriber connection failed: {other:?}"),
        };
        let m = pkt.publish();
        if m.topic == "important" {
            slow.ack_publish(&m).await;
            important.push(m.payload[0]);
        } else {
            bulk += 1;
        }
    }
    assert_eq!(
        important,
        vec![0, 1, 2, 3, 4],
        "QoS 1 messages lost behind {bulk} QoS 0 ones"
    );
}

/// Many sockets opened and dropped without a byte do not leak into failures.
#[tokio::test]
async fn idle_sockets_dropped_immediately() {
    let b = start_broker("").await;
    for _ in 0..200 {
        let c = Raw::tcp(b.addr).await;
        drop(c);
    }
    assert_broker_alive(&b).await;
}
