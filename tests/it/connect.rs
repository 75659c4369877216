//! CONNECT / CONNACK / keepalive / PINGREQ, with hand-built bytes.

use std::time::Duration;

use tokio::time::Instant;

use crate::common::*;

/// [MQTT-3.1.0-1] The first packet sent from the client to the server MUST
/// be a CONNECT packet.
#[tokio::test]
async fn first_packet_not_connect_is_closed() {
    let b = start_broker("").await;
    let firsts: Vec<Vec<u8>> = vec![
        pingreq(),
        subscribe(1, &[("a", 0)]),
        publish("a", b"x", 0, false, false, 0),
        disconnect(),
    ];
    for first in firsts {
        let mut c = Raw::tcp(b.addr).await;
        c.send(&first).await;
        c.expect_closed_silently().await;
    }
    assert_broker_alive(&b).await;
}

/// [MQTT-3.1.0-2] A second CONNECT is a protocol violation: disconnect.
#[tokio::test]
async fn second_connect_is_closed() {
    let b = start_broker("").await;
    let (mut c, _) = Raw::connect_ok(b.addr, &Connect::new("twice")).await;
    c.send(&Connect::new("twice").bytes()).await;
    c.expect_closed_silently().await;
}

/// [MQTT-3.1.2-2] Unsupported protocol level: CONNACK 0x01 then close.
#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    let b = start_broker("").await;
    for level in [3u8, 5] {
        let mut c = Raw::connect(b.addr, &Connect::new("lvl").protocol(b"MQTT", level)).await;
        let p = c.recv().await;
        assert_eq!(
            p.bytes(),
            vec![0x20, 0x02, 0x00, 0x01],
            "protocol level {level}"
        );
        let rest = c.expect_closed().await;
        assert!(
            rest.is_empty(),
            "level {level}: bytes after CONNACK: {rest:02x?}"
        );
    }
}

/// [MQTT-3.1.2-1] Wrong protocol name: the server disconnects.
#[tokio::test]
async fn wrong_protocol_name_is_closed() {
    let b = start_broker("").await;
    for name in [&b"MQTX"[..], b"mqtt", b"MQ"] {
        let mut c = Raw::connect(b.addr, &Connect::new("name").protocol(name, 4)).await;
        c.expect_rejected().await;
    }
}

/// [MQTT-3.1.2-3] The reserved flag in the CONNECT flags byte must be 0.
#[tokio::test]
async fn connect_reserved_flag_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::connect(b.addr, &Connect::new("rsv").flags(0x03)).await;
    c.expect_rejected().await;
}

/// [MQTT-3.1.2-11] / [MQTT-3.1.2-13] / [MQTT-3.1.2-15] With will flag 0 the
/// will QoS and will retain bits must be 0.
#[tokio::test]
async fn will_qos_or_retain_without_will_flag_is_closed() {
    let b = start_broker("").await;
    for flags in [0x02 | 0x08, 0x02 | 0x10, 0x02 | 0x20, 0x02 | 0x18 | 0x20] {
        let mut c = Raw::connect(b.addr, &Connect::new("w").flags(flags)).await;
        c.expect_rejected().await;
    }
}

/// [MQTT-3.1.2-14] Will QoS 3 is invalid.
#[tokio::test]
async fn will_qos_3_is_closed() {
    let b = start_broker("").await;
    let c = Connect::new("w3").will(Will::new("will/t", b"bye", 3, false));
    assert_eq!(c.computed_flags() & 0x18, 0x18);
    let mut c = Raw::connect(b.addr, &c).await;
    c.expect_rejected().await;
}

/// [MQTT-3.1.2-22] Password flag set without the user name flag.
#[tokio::test]
async fn password_without_username_is_closed() {
    let b = start_broker("").await;
    let c = Connect::new("pw").password(b"secret");
    assert_eq!(c.computed_flags(), 0x42);
    let mut c = Raw::connect(b.addr, &c).await;
    c.expect_rejected().await;
}

/// [MQTT-2.2.2-2] CONNECT fixed-header flags are reserved (must be 0).
#[tokio::test]
async fn connect_fixed_header_flags_nonzero_is_closed() {
    let b = start_broker("").await;
    for header in [0x11u8, 0x12, 0x18] {
        let mut c = Raw::connect(b.addr, &Connect::new("hdr").header(header)).await;
        c.expect_rejected().await;
    }
}

/// [MQTT-3.1.3-6] Zero-length client id with clean session 1 is accepted and
/// gets a unique id: two such clients do not take each other over.
#[tokio::test]
async fn empty_client_id_with_clean_session_is_accepted() {
    let b = start_broker("").await;
    let (mut c1, sp1) = Raw::connect_ok(b.addr, &Connect::new("")).await;
    assert!(!sp1);
    let (mut c2, sp2) = Raw::connect_ok(b.addr, &Connect::new("")).await;
    assert!(!sp2);
    c2.ping().await;
    c1.ping().await; // would fail if the second client had taken over the first
    c1.sub("anon/t", 0).await;
    c2.publish("anon/t", b"hi", 0, false).await;
    let p = c1.recv_publish().await;
    assert_eq!(p.payload, b"hi");
}

/// [MQTT-3.1.3-8] Zero-length client id with clean session 0: CONNACK 0x02
/// (identifier rejected) and close.
#[tokio::test]
async fn empty_client_id_with_persistent_session_is_rejected() {
    let b = start_broker("").await;
    let mut c = Raw::connect(b.addr, &Connect::new("").clean(false)).await;
    let p = c.recv().await;
    assert_eq!(p.bytes(), vec![0x20, 0x02, 0x00, 0x02]);
    let rest = c.expect_closed().await;
    assert!(rest.is_empty(), "bytes after refusing CONNACK: {rest:02x?}");
}

/// [MQTT-1.5.3-2] A UTF-8 string must not contain U+0000 (client id).
#[tokio::test]
async fn client_id_with_nul_is_closed() {
    let b = start_broker("").await;
    let mut c = Raw::connect(b.addr, &Connect::new("x").client_id_bytes(b"ab\0cd")).await;
    c.expect_rejected().await;
}

/// [MQTT-3.2.2-1] Clean session 1: session present is 0, even if a
/// persistent session existed for that client id.
#[tokio::test]
async fn session_present_is_0_with_clean_session() {
    let b = start_broker("").await;
    let (c, sp) = Raw::connect_ok(b.addr, &Connect::new("sp").clean(true)).await;
    assert!(!sp, "[MQTT-3.2.2-1]");
    c.disconnect().await;
    // Create a persistent session, then connect with clean session 1.
    let (mut c, sp) = Raw::connect_ok(b.addr, &Connect::new("sp").clean(false)).await;
    assert!(!sp);
    c.sub("sp/t", 1).await;
    c.disconnect().await;
    let (c, sp) = Raw::connect_ok(b.addr, &Connect::new("sp").clean(true)).await;
    assert!(
        !sp,
        "[MQTT-3.2.2-1] clean session must discard and report no session"
    );
    c.disconnect().await;
    // And the clean connect discarded the stored session.
    let (_c, sp) = Raw::connect_ok(b.addr, &Connect::new("sp").clean(false)).await;
    assert!(
        !sp,
        "the clean-session connect must have discarded the old session"
    );
}

/// [MQTT-3.2.2-2] / [MQTT-3.2.2-3] Clean session 0: session present 0 the
/// first time, 1 when the server has the session.
#[tokio::test]
async fn session_present_reflects_stored_session() {
    let b = start_broker("").await;
    let (c, sp) = Raw::connect_ok(b.addr, &Connect::new("persist").clean(false)).await;
    assert!(!sp, "no session stored yet [MQTT-3.2.2-3]");
    c.disconnect().await;
    let (c, sp) = Raw::connect_ok(b.addr, &Connect::new("persist").clean(false)).await;
    assert!(sp, "[MQTT-3.2.2-2]");
    // Also after an abrupt drop (no DISCONNECT).
    drop(c);
    let (_c, sp) = Raw::connect_ok(b.addr, &Connect::new("persist").clean(false)).await;
    assert!(sp, "[MQTT-3.2.2-2] after network drop");
}

/// A socket that never sends CONNECT is closed after `connect_timeout`
/// (virtual time).
#[tokio::test(start_paused = true)]
async fn connect_timeout_closes_silent_socket() {
    let b = start_broker("connect_timeout = 3").await;
    let mut c = Raw::tcp(b.addr).await;
    let start = Instant::now();
    let got = c.expect_closed_within(Duration::from_secs(120)).await;
    let elapsed = start.elapsed();
    assert!(got.is_empty());
    assert!(
        elapsed >= Duration::from_secs(3),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "connect_timeout = 3 not honoured: {elapsed:?}"
    );
}

/// A partial CONNECT that stalls is also closed after `connect_timeout`.
#[tokio::test(start_paused = true)]
async fn connect_timeout_closes_stalled_partial_connect() {
    let b = start_broker("connect_timeout = 3").await;
    let mut c = Raw::tcp(b.addr).await;
    let full = Connect::new("slow").bytes();
    c.send(&full[..5]).await;
    let start = Instant::now();
    c.expect_closed_within(Duration::from_secs(120)).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "connect_timeout = 3 not honoured: {elapsed:?}"
    );
}

/// Default connect_timeout is 10 s.
#[tokio::test(start_paused = true)]
async fn connect_timeout_default_is_10s() {
    let b = start_broker("").await;
    let mut c = Raw::tcp(b.addr).await;
    let start = Instant::now();
    c.expect_closed_within(Duration::from_secs(300)).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(10),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(20),
        "closed too late: {elapsed:?}"
    );
}

/// [MQTT-3.1.2-24] No packet within 1.5 x keepalive: the server disconnects.
#[tokio::test(start_paused = true)]
async fn keepalive_expiry_closes_connection() {
    let b = start_broker("").await;
    let (mut c, _) = Raw::connect_ok(b.addr, &Connect::new("ka").keepalive(2)).await;
    let start = Instant::now();
    let got = c.expect_closed_within(Duration::from_secs(120)).await;
    let elapsed = start.elapsed();
    assert!(got.is_empty());
    assert!(
        elapsed >= Duration::from_secs(3),
        "closed before 1.5 x keepalive: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(5),
        "closed long after 1.5 x keepalive: {elapsed:?}"
    );
}

/// [MQTT-3.1.2-23] / [MQTT-3.1.2-24] Control packets within the keepalive
/// keep the connection open; silence then closes it.
#[tokio::test(start_paused = true)]
async fn keepalive_is_reset_by_pingreq() {
    let b = start_broker("").await;
    let (mut c, _) = Raw::connect_ok(b.addr, &Connect::new("ka").keepalive(2)).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await; // simulated client idle time
        c.ping().await;
    }
    // 10 s of virtual time have passed, far beyond 1.5 x 2 s.
    let start = Instant::now();
    c.expect_closed_within(Duration::from_secs(120)).await;
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

/// Keepalive 0 disables the keepalive mechanism.
#[tokio::test(start_paused = true)]
async fn keepalive_zero_never_times_out() {
    let b = start_broker("").await;
    let (mut c, _) = Raw::connect_ok(b.addr, &Connect::new("ka0").keepalive(0)).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    c.ping().await;
}

/// [MQTT-3.12.4-1] PINGREQ is answered with PINGRESP (0xD0 0x00).
#[tokio::test]
async fn pingreq_gets_pingresp() {
    let b = start_broker("").await;
    let (mut c, _) = Raw::connect_ok(b.addr, &Connect::new("ping")).await;
    for _ in 0..3 {
        c.send(&pingreq()).await;
        let p = c.recv().await;
        assert_eq!(p.bytes(), vec![0xD0, 0x00]);
    }
}

/// Keepalive above max_keepalive: CONNACK 0x02 and close (Mosquitto,
/// MQTT 3.1.1). Equal to max_keepalive is accepted.
#[tokio::test]
async fn keepalive_above_max_keepalive_is_rejected() {
    let b = start_broker("max_keepalive = 60").await;
    let mut c = Raw::connect(b.addr, &Connect::new("big").keepalive(61)).await;
    let p = c.recv().await;
    assert_eq!(p.bytes(), vec![0x20, 0x02, 0x00, 0x02]);
    c.expect_closed().await;
    let (mut ok, _) = Raw::connect_ok(b.addr, &Connect::new("edge").keepalive(60)).await;
    ok.ping().await;
}

/// allow_anonymous = false and no credentials: CONNACK 0x05 (not
/// authorized), then close [MQTT-3.2.2-5].
#[tokio::test]
async fn anonymous_refused_when_not_allowed() {
    let b = start_broker("allow_anonymous = false").await;
    let mut c = Raw::connect(b.addr, &Connect::new("anon")).await;
    let p = c.recv().await;
    assert_eq!(p.bytes(), vec![0x20, 0x02, 0x00, 0x05]);
    let rest = c.expect_closed().await;
    assert!(rest.is_empty(), "{rest:02x?}");
}

/// Shutdown closes client connections and `run` returns Ok.
#[tokio::test]
async fn shutdown_closes_clients_and_run_returns() {
    let b = start_broker("").await;
    let (mut c1, _) = Raw::connect_ok(b.addr, &Connect::new("s1")).await;
    let mut c2 = Raw::tcp(b.addr).await; // not yet CONNECTed
    let shutdown = b.shutdown.clone();
    let stopping = tokio::spawn(b.stop());
    c1.expect_closed().await;
    c2.expect_closed().await;
    assert!(shutdown.is_cancelled());
    stopping
        .await
        .unwrap()
        .expect("run() result after shutdown");
}

/// max_connections: a connection beyond the limit is closed without CONNACK.
#[tokio::test]
async fn max_connections_refuses_extra_socket() {
    let b = start_broker("max_connections = 1").await;
    let (mut c1, _) = Raw::connect_ok(b.addr, &Connect::new("one")).await;
    let mut c2 = Raw::tcp(b.addr).await;
    c2.send_lossy(&Connect::new("two").bytes()).await;
    c2.expect_rejected().await;
    c1.ping().await;
}
