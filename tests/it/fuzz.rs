//! Fuzz tests (issue 11).
//!
//! 1. The codec: `decode` against random frames and mutations of valid frames (bit flips,
//!    truncation, changed remaining-length bytes, inserted and deleted bytes, duplicated
//!    packets). It must never panic, a decode loop over the buffer must always make progress
//!    and end, what it accepts must obey the rules it enforces, every error must name the
//!    spec clause it enforces (`[MQTT-x.y.z-n]`), and valid frames decode to what was encoded.
//! 2. The broker: a few dozen concurrent raw connections, each running a seeded random
//!    sequence of mostly valid packets with mutations (takeovers, deep and odd filters and
//!    topics, every QoS, retain, acks out of order, unknown packet ids, garbage, DISCONNECT
//!    mid-stream, abrupt closes). Afterwards the broker must still serve a fresh client, its
//!    task must still run and no connection task may have panicked.
//!
//! The broker fuzz prints its seed; rerun one with `ROOSTD_FUZZ_SEED=<seed>`. To explore:
//! `ROOSTD_FUZZ_SECS` (default 12), `ROOSTD_FUZZ_CONNS` (default 32), `ROOSTD_FUZZ_TOML` (broker
//! settings, e.g. `max_inflight_messages = 3`), `ROOSTD_FUZZ_ANSWER_SECS` (how long a connection
//! may take to answer, default 10). The codec tests take `PROPTEST_CASES`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqttbytes::QoS;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PtConfig, TestError, TestRunner};
use roostd::message::Publication;
use roostd::protocol::codec::encode_publish;
use roostd::protocol::topic::validate_topic_name;
use roostd::protocol::{decode, Packet, ProtocolError};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::common::{self, mqtt_bytes, packet, read_packet, Raw, TIMEOUT};

/// message_size_limit used by the codec tests unless a case picks a small one.
const MAX: usize = 1024 * 1024;

/// `PROPTEST_CASES`, or `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// At most `max` bytes of `b` as hex, then the total length.
fn hex_short(b: &[u8], max: usize) -> String {
    if b.len() <= max {
        hex(b)
    } else {
        format!("{}..(len {})", hex(&b[..max]), b.len())
    }
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

// ===========================================================================
// 1. Codec
// ===========================================================================

/// A valid client packet, as the model of what its bytes must decode to.
#[derive(Debug, Clone)]
enum Valid {
    Connect {
        client_id: String,
        clean: bool,
        keep_alive: u16,
        will: Option<(String, Vec<u8>, u8, bool)>,
        username: Option<String>,
        password: Option<Vec<u8>>,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        dup: bool,
        pkid: u16,
    },
    /// PUBACK (4), PUBREC (5), PUBREL (6), PUBCOMP (7).
    Ack {
        kind: u8,
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
}

impl Valid {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Valid::Connect {
                client_id,
                clean,
                keep_alive,
                will,
                username,
                password,
            } => {
                let mut c = common::Connect::new(client_id)
                    .clean(*clean)
                    .keepalive(*keep_alive);
                if let Some((topic, payload, q, retain)) = will {
                    c = c.will(common::Will::new(topic, payload, *q, *retain));
                }
                if let Some(u) = username {
                    c = c.username(u);
                }
                if let Some(p) = password {
                    c = c.password(p);
                }
                c.bytes()
            }
            Valid::Publish {
                topic,
                payload,
                qos,
                retain,
                dup,
                pkid,
            } => common::publish(topic, payload, *qos, *retain, *dup, *pkid),
            Valid::Ack { kind, pkid } => {
                let first = [0x40, 0x50, 0x62, 0x70][(*kind - 4) as usize];
                let id = pkid.to_be_bytes();
                vec![first, 2, id[0], id[1]]
            }
            Valid::Subscribe { pkid, filters } => {
                let f: Vec<(&str, u8)> = filters.iter().map(|(s, q)| (s.as_str(), *q)).collect();
                common::subscribe(*pkid, &f)
            }
            Valid::Unsubscribe { pkid, filters } => {
                let f: Vec<&str> = filters.iter().map(|s| s.as_str()).collect();
                common::unsubscribe(*pkid, &f)
            }
            Valid::PingReq => vec![0xC0, 0],
            Valid::Disconnect => vec![0xE0, 0],
        }
    }

    fn expected(&self) -> Packet {
        match self.clone() {
            Valid::Connect {
                client_id,
                clean,
                keep_alive,
                will,
                username,
                password,
            } => Packet::Connect(roostd::protocol::Connect {
                level: 4,
                clean_session: clean,
                keep_alive,
                client_id,
                will: will.map(|(topic, payload, q, retain)| roostd::protocol::Will {
                    topic: Bytes::from(topic),
                    payload: Bytes::from(payload),
                    qos: qos(q),
                    retain,
                }),
                username,
                password: password.map(Bytes::from),
            }),
            Valid::Publish {
                topic,
                payload,
                qos: q,
                retain,
                dup,
                pkid,
            } => Packet::Publish {
                pkid: if q == 0 { 0 } else { pkid },
                dup,
                publication: publication(&topic, &payload, q, retain),
            },
            Valid::Ack { kind, pkid } => match kind {
                4 => Packet::PubAck(pkid),
                5 => Packet::PubRec(pkid),
                6 => Packet::PubRel(pkid),
                _ => Packet::PubComp(pkid),
            },
            Valid::Subscribe { pkid, filters } => Packet::Subscribe {
                pkid,
                filters: filters.into_iter().map(|(f, q)| (f, qos(q))).collect(),
            },
            Valid::Unsubscribe { pkid, filters } => Packet::Unsubscribe { pkid, filters },
            Valid::PingReq => Packet::PingReq,
            Valid::Disconnect => Packet::Disconnect,
        }
    }
}

fn publication(topic: &str, payload: &[u8], q: u8, retain: bool) -> Publication {
    Publication {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload),
        qos: qos(q),
        retain,
        received_at: Instant::now(),
    }
}

/// A valid topic name: non-empty, no wildcard, no U+0000; sometimes hundreds of levels.
fn topic_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9/ _$-]{1,24}",
        2 => "[^+#\\x00]{1,12}",
        1 => vec("[a-z]{0,3}", 100..300).prop_map(|l| l.join("/")),
        1 => prop::sample::select(vec!["$SYS/broker/load", "/", "//", "a/", "\u{1F980}/é"])
            .prop_map(String::from),
    ]
}

/// Any UTF-8 string without U+0000: the codec checks no other filter rule (the session
/// answers 0x80).
fn topic_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z/+#]{0,16}",
        2 => "[^\\x00]{0,12}",
        1 => prop::sample::select(vec!["#", "+", "$SYS/#", "+/+/#", "a/#/b", "sport+", ""])
            .prop_map(String::from),
        1 => (1usize..300).prop_map(|n| vec!["+"; n].join("/")),
    ]
}

fn pkid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![8 => vec(any::<u8>(), 0..40), 1 => vec(any::<u8>(), 100..3000)]
}

fn valid_packet() -> impl Strategy<Value = Valid> {
    let will = (topic_name(), payload(), 0u8..3, any::<bool>());
    let login = prop_oneof![
        Just((None, None)),
        "[a-z]{0,8}".prop_map(|u| (Some(u), None)),
        ("[a-z]{0,8}", vec(any::<u8>(), 0..16)).prop_map(|(u, p)| (Some(u), Some(p))),
    ];
    let connect = (
        "[^\\x00]{0,30}",
        any::<bool>(),
        any::<u16>(),
        prop::option::of(will),
        login,
    )
        .prop_map(
            |(client_id, clean, keep_alive, will, (username, password))| Valid::Connect {
                client_id,
                clean,
                keep_alive,
                will,
                username,
                password,
            },
        );
    let publish = (
        topic_name(),
        payload(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        pkid(),
    )
        .prop_map(|(topic, payload, qos, retain, dup, pkid)| Valid::Publish {
            topic,
            payload,
            qos,
            retain,
            dup: dup && qos > 0,
            pkid,
        });
    prop_oneof![
        2 => connect,
        4 => publish,
        2 => (4u8..8, pkid()).prop_map(|(kind, pkid)| Valid::Ack { kind, pkid }),
        2 => (pkid(), vec((topic_filter(), 0u8..3), 1..5))
            .prop_map(|(pkid, filters)| Valid::Subscribe { pkid, filters }),
        1 => (pkid(), vec(topic_filter(), 1..5))
            .prop_map(|(pkid, filters)| Valid::Unsubscribe { pkid, filters }),
        1 => Just(Valid::PingReq),
        1 => Just(Valid::Disconnect),
    ]
}

/// One change to a frame's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, u8),
    /// Replace the remaining-length bytes of the first packet.
    RemainingLength(Vec<u8>),
    /// Replace the first byte (packet type and flags).
    FirstByte(u8),
    /// Append a copy of the whole buffer (a duplicated packet).
    Duplicate,
    /// Set a 2-byte field (a packet id or string length) to 0, 0xFFFF or a random value.
    U16(Index, u16),
    /// Replace the connect-flags byte of a leading CONNECT.
    ConnectFlags(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let rem_len = prop_oneof![
        vec(any::<u8>(), 1..6),
        // Continuation bits on every byte: malformed or awaiting more.
        vec(0x80u8..=0xFF, 1..6),
        (0u32..=268_435_455).prop_map(|n| common::encode_remaining_length(n as usize)),
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..4)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1u8..4).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => rem_len.prop_map(Mutation::RemainingLength),
        1 => any::<u8>().prop_map(Mutation::FirstByte),
        1 => Just(Mutation::Duplicate),
        1 => (any::<Index>(), prop_oneof![Just(0u16), Just(u16::MAX), any::<u16>()])
            .prop_map(|(i, v)| Mutation::U16(i, v)),
        1 => any::<u8>().prop_map(Mutation::ConnectFlags),
    ]
}

/// Length of the fixed header at the start of `b` as far as it goes (1 + up to 4 bytes).
fn header_len(b: &[u8]) -> usize {
    let avail = b.len().saturating_sub(1).min(4);
    let len_bytes = b[1.min(b.len())..1 + avail]
        .iter()
        .position(|x| x & 0x80 == 0)
        .map(|p| p + 1)
        .unwrap_or(avail);
    1 + len_bytes
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::FlipBit(i, bit) if !b.is_empty() => {
            let i = i.index(b.len());
            b[i] ^= 1 << bit;
        }
        Mutation::SetByte(i, v) if !b.is_empty() => {
            let i = i.index(b.len());
            b[i] = *v;
        }
        Mutation::Truncate(i) if !b.is_empty() => {
            let n = i.index(b.len());
            b.truncate(n);
        }
        Mutation::Insert(i, bytes) => {
            let at = i.index(b.len() + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete(i, n) if !b.is_empty() => {
            let at = i.index(b.len());
            let end = (at + *n as usize).min(b.len());
            b.drain(at..end);
        }
        Mutation::RemainingLength(len) if !b.is_empty() => {
            let end = header_len(b).min(b.len());
            b.splice(1..end, len.iter().copied());
        }
        Mutation::FirstByte(v) if !b.is_empty() => b[0] = *v,
        Mutation::Duplicate => {
            let copy = b.clone();
            b.extend(copy);
        }
        Mutation::U16(i, v) if b.len() >= 2 => {
            let at = i.index(b.len() - 1);
            b[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
        Mutation::ConnectFlags(v) if b.first() == Some(&0x10) => {
            // Fixed header, protocol name "MQTT" (6), level (1), then the flags.
            let at = header_len(b) + 7;
            if at < b.len() {
                b[at] = *v;
            }
        }
        _ => {}
    }
}

/// First bytes of every packet type with the right flags, some with wrong ones.
const FIRST_BYTES: [u8; 20] = [
    0x10, 0x20, 0x30, 0x31, 0x32, 0x34, 0x3B, 0x36, 0x40, 0x50, 0x62, 0x60, 0x70, 0x82, 0x80, 0xA2,
    0xC0, 0xE0, 0x00, 0xF0,
];

/// Bytes to decode and the message_size_limit to decode them with.
fn fuzz_input() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let mutated = (vec(valid_packet(), 1..4), vec(mutation(), 0..5)).prop_map(|(pkts, muts)| {
        let mut b: Vec<u8> = pkts.iter().flat_map(|p| p.bytes()).collect();
        for m in &muts {
            apply(&mut b, m);
        }
        b
    });
    let typed = (
        prop::sample::select(FIRST_BYTES.to_vec()),
        vec(any::<u8>(), 0..96),
    )
        .prop_map(|(first, body)| packet(first, &body));
    let bytes = prop_oneof![
        6 => mutated,
        2 => typed,
        2 => vec(any::<u8>(), 0..200),
    ];
    let max = prop_oneof![8 => Just(MAX), 2 => 0usize..300];
    (bytes, max)
}

/// Rules an accepted packet must obey (the decoder enforces them).
fn check_accepted(p: &Packet) -> Result<(), String> {
    let ok = match p {
        Packet::Connect(c) => {
            c.level != 4
                || (!c.client_id.contains('\0')
                    && c.will
                        .as_ref()
                        .is_none_or(|w| validate_topic_name(&w.topic).is_ok())
                    && (c.password.is_none() || c.username.is_some())
                    && c.username.as_ref().is_none_or(|u| !u.contains('\0')))
        }
        Packet::Publish {
            pkid,
            dup,
            publication,
        } => {
            validate_topic_name(&publication.topic).is_ok()
                && std::str::from_utf8(&publication.topic).is_ok()
                && if publication.qos == QoS::AtMostOnce {
                    !dup
                } else {
                    *pkid != 0
                }
        }
        Packet::PubAck(id) | Packet::PubRec(id) | Packet::PubRel(id) | Packet::PubComp(id) => {
            *id != 0
        }
        Packet::Subscribe { pkid, filters } => {
            *pkid != 0 && !filters.is_empty() && filters.iter().all(|(f, _)| !f.contains('\0'))
        }
        Packet::Unsubscribe { pkid, filters } => {
            *pkid != 0 && !filters.is_empty() && filters.iter().all(|f| !f.contains('\0'))
        }
        Packet::PingReq | Packet::Disconnect => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("accepted a packet that breaks a rule: {p:?}"))
    }
}

/// How a decode loop over one buffer ended.
enum End {
    NeedMore,
    Error(ProtocolError),
}

/// Decodes `bytes` until it needs more or fails, checking that every step made progress.
fn drive(bytes: &[u8], max: usize, kinds: &mut Vec<String>) -> Result<End, String> {
    let mut buf = BytesMut::from(bytes);
    // Each packet takes at least its 2-byte fixed header: this many rounds always suffice.
    for _ in 0..bytes.len() / 2 + 2 {
        let before = buf.len();
        match decode(&mut buf, max) {
            Ok(Some(p)) => {
                if buf.len() >= before {
                    return Err(format!("Ok(Some) consumed no bytes: {p:?}"));
                }
                check_accepted(&p)?;
                kinds.push(variant(&format!("{p:?}")));
            }
            Ok(None) => {
                if buf.len() != before {
                    return Err(format!("Ok(None) consumed {} bytes", before - buf.len()));
                }
                return Ok(End::NeedMore);
            }
            Err(e) => return Ok(End::Error(e)),
        }
    }
    Err("decode loop did not end".into())
}

/// The variant name at the start of a Debug string.
fn variant(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

/// An error without a clause: its message, the shortest bytes that gave it, max_remaining.
type Unnamed = (String, Vec<u8>, usize);

/// Random and mutated frames: no panic, progress, accepted packets obey the rules, and every
/// error names its clause. Errors without a clause are collected over all cases (one shortest
/// reproducer per variant) and reported together.
#[test]
fn codec_survives_random_and_mutated_frames() {
    let mut runner = TestRunner::new(PtConfig {
        cases: cases(5000),
        failure_persistence: None,
        ..PtConfig::default()
    });
    let unnamed: Mutex<BTreeMap<String, Unnamed>> = Mutex::default();
    let outcomes: Mutex<BTreeMap<String, u64>> = Mutex::default();
    let result = runner.run(&fuzz_input(), |(bytes, max)| {
        let mut kinds = Vec::new();
        let end = drive(&bytes, max, &mut kinds).map_err(TestCaseError::fail)?;
        let mut outcomes = outcomes.lock().unwrap();
        for k in kinds {
            *outcomes.entry(format!("Ok({k})")).or_default() += 1;
        }
        match end {
            End::NeedMore => *outcomes.entry("Ok(None)".into()).or_default() += 1,
            End::Error(e) => {
                let name = variant(&format!("{e:?}"));
                *outcomes.entry(format!("Err({name})")).or_default() += 1;
                let msg = e.to_string();
                if !msg.contains("[MQTT-") {
                    let mut unnamed = unnamed.lock().unwrap();
                    let entry = unnamed
                        .entry(name)
                        .or_insert_with(|| (msg.clone(), bytes.clone(), max));
                    if bytes.len() < entry.1.len() {
                        *entry = (msg, bytes.clone(), max);
                    }
                }
            }
        }
        Ok(())
    });
    println!(
        "codec fuzz outcomes ({} cases): {:?}",
        runner.config().cases,
        outcomes.lock().unwrap()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (bytes, max))) => panic!(
            "codec fuzz failed: {why}\nreproducer (hex): {} with max_remaining {max}",
            hex(&bytes)
        ),
        Err(e) => panic!("codec fuzz: {e}"),
    }
    let unnamed = unnamed.into_inner().unwrap();
    if !unnamed.is_empty() {
        let mut report = String::from("errors whose message names no spec clause:\n");
        for (variant, (msg, bytes, max)) in &unnamed {
            let _ = writeln!(
                report,
                "  {variant}: {msg:?}  bytes {} (max_remaining {max})",
                hex_short(bytes, 64)
            );
        }
        println!("{report}");
        panic!("{report}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Valid frames, alone or several in one buffer, decode to what was encoded; every strict
    /// prefix of a frame needs more bytes and leaves the buffer alone.
    #[test]
    fn codec_valid_frames_round_trip(pkts in vec(valid_packet(), 1..4)) {
        let bytes: Vec<u8> = pkts.iter().flat_map(|p| p.bytes()).collect();
        let mut buf = BytesMut::from(&bytes[..]);
        for p in &pkts {
            prop_assert_eq!(decode(&mut buf, MAX), Ok(Some(p.expected())));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decode(&mut buf, MAX), Ok(None));

        let first = pkts[0].bytes();
        for cut in 0..first.len() {
            let mut b = BytesMut::from(&first[..cut]);
            prop_assert_eq!(decode(&mut b, MAX), Ok(None), "prefix of {} bytes", cut);
            prop_assert_eq!(b.len(), cut);
        }
    }

    /// The broker's own PUBLISH encoder writes exactly the bytes of the specification, which
    /// decode back to the same message.
    #[test]
    fn codec_publish_encode_decode(
        topic in topic_name(),
        payload in payload(),
        q in 0u8..3,
        retain in any::<bool>(),
        dup in any::<bool>(),
        id in pkid(),
    ) {
        let msg = publication(&topic, &payload, q, retain);
        let mut out = BytesMut::new();
        encode_publish(&mut out, &msg, qos(q), id, dup, retain);
        let dup = dup && q > 0;
        prop_assert_eq!(&out[..], &common::publish(&topic, &payload, q, retain, dup, id)[..]);
        let want = Packet::Publish {
            pkid: if q == 0 { 0 } else { id },
            dup,
            publication: msg,
        };
        prop_assert_eq!(decode(&mut out, MAX), Ok(Some(want)));
        prop_assert!(out.is_empty());
    }
}

// ===========================================================================
// 2. Broker
// ===========================================================================

/// xorshift64*: tiny and deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// In `lo..hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn alnum(&mut self, n: usize) -> Vec<u8> {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..n).map(|_| *self.pick(A)).collect()
    }
}

/// Connections driven at once (`ROOSTD_FUZZ_CONNS` overrides).
const CONNECTIONS: usize = 32;
/// Client ids shared between connections (takeovers).
const SHARED_IDS: u64 = 8;
/// How long a connection may take to answer a PINGREQ or to close; above the broker's
/// backpressure_timeout (5 s), for which a publisher may legitimately not be read.
/// `ROOSTD_FUZZ_ANSWER_SECS` overrides (to measure longer stalls).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One topic level. `filter` allows wildcards; `bad` allows what a topic name must not hold
/// (wildcards, U+0000, invalid UTF-8), which closes the connection.
fn level(rng: &mut Rng, filter: bool, bad: bool) -> Vec<u8> {
    match rng.below(100) {
        0..=49 => rng.pick(&["fz", "a", "b", "c", "d"]).as_bytes().to_vec(),
        50..=57 => Vec::new(),
        58..=64 => {
            let n = rng.range(1, 8);
            rng.alnum(n)
        }
        65 => vec![b'x'; rng.range(200, 3000)],
        66..=70 => rng
            .pick(&["é", "日本", "\u{1F980}", "$SYS", "$x", " "])
            .as_bytes()
            .to_vec(),
        71..=86 if filter => b"+".to_vec(),
        87..=88 if filter => b"#".to_vec(),
        89..=90 if bad => b"a\0b".to_vec(),
        91..=92 if bad => rng
            .pick(&[
                &[0xFFu8][..],
                &[0xC0, 0x80],
                &[0xED, 0xA0, 0x80],
                &[0xE2, 0x82],
            ])
            .to_vec(),
        93..=95 if bad => rng
            .pick(&["+", "#", "sport+", "a#", "+a"])
            .as_bytes()
            .to_vec(),
        96..=99 if bad => {
            let n = rng.range(1, 4);
            rng.bytes(n)
        }
        _ => b"fz".to_vec(),
    }
}

fn join_levels(rng: &mut Rng, filter: bool, bad: bool) -> Vec<u8> {
    if bad && rng.chance(2) {
        // The most levels a topic can have: 65,535 bytes of '/' are 65,536 empty levels.
        return vec![b'/'; rng.range(30_000, 65_536)];
    }
    let n = match rng.below(100) {
        0..=64 => rng.range(1, 5),
        65..=84 => rng.range(5, 40),
        // Around max_topic_levels (200): a deeper topic closes the connection.
        85..=94 => rng.range(150, if bad { 260 } else { 201 }),
        _ if bad || filter => rng.range(260, 3000),
        _ => rng.range(1, 5),
    };
    let mut t = Vec::new();
    for i in 0..n {
        if i > 0 {
            t.push(b'/');
        }
        t.extend(level(rng, filter, bad));
        if t.len() > 60_000 {
            break;
        }
    }
    t.truncate(u16::MAX as usize);
    t
}

/// A PUBLISH or will topic; with `bad`, sometimes an invalid one.
fn topic(rng: &mut Rng, bad: bool) -> Vec<u8> {
    if rng.chance(10) {
        let good = ["$SYS/broker/x", "fz", "/", "a/", "/a", "fz/a/b", "fz/a"];
        let all = ["$SYS/broker/x", "fz", "/", "a/", "/a", "+", "", "a/#", "#"];
        let t = if bad { rng.pick(&all) } else { rng.pick(&good) };
        return t.as_bytes().to_vec();
    }
    join_levels(rng, false, bad)
}

/// A topic filter: valid, odd (deep, `$SYS`, empty levels) or invalid (the SUBACK says 0x80);
/// with `bad`, sometimes one that closes the connection (U+0000, invalid UTF-8).
fn filter(rng: &mut Rng, bad: bool) -> Vec<u8> {
    match rng.below(100) {
        0..=24 => rng
            .pick(&[
                "#", "$SYS/#", "+", "+/#", "fz/#", "fz/+/b", "/#", "+/+", "", "/", "//", "a/#/b",
                "sport+", "$SYS/+/+", "#/", "fz/a",
            ])
            .as_bytes()
            .to_vec(),
        25..=32 => {
            let mut f = "+/".repeat(rng.range(100, 400));
            let last: &&str = rng.pick(&["+", "#", "fz"]);
            f.push_str(last);
            f.into_bytes()
        }
        _ => {
            let mut f = join_levels(rng, true, bad);
            if rng.chance(10) && f.len() < 60_000 {
                f.extend_from_slice(b"/#");
            }
            f
        }
    }
}

fn payload_bytes(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.below(100) {
        0..=84 => rng.range(0, 32),
        85..=98 => rng.range(32, 2000),
        _ => rng.range(2000, 60_000),
    };
    rng.bytes(n)
}

/// A CONNECT; with `bad`, sometimes one the broker must refuse or close on.
fn connect_packet(rng: &mut Rng, worker: usize, session: usize, bad: bool) -> Vec<u8> {
    let id: Vec<u8> = match rng.below(100) {
        0..=49 => format!("fz-{}", rng.below(SHARED_IDS)).into_bytes(),
        50..=79 => format!("fz-{worker}-{session}").into_bytes(),
        80..=84 => Vec::new(),
        85..=89 => {
            let n = rng.range(24, 300);
            rng.alnum(n)
        }
        90..=93 if bad => b"fz\0nul".to_vec(),
        94..=96 if bad => vec![b'f', 0xFF, b'z'],
        _ => "fz-é-\u{1F980}".as_bytes().to_vec(),
    };
    let mut c = common::Connect::new("")
        .client_id_bytes(&id)
        .clean(rng.chance(50))
        .keepalive(*rng.pick(&[0, 0, 1, 2, 30, 60, 60, 65535]));
    if rng.chance(30) {
        let bad_will = bad && rng.chance(30);
        c = c.will(common::Will {
            topic: topic(rng, bad_will),
            payload: payload_bytes(rng),
            qos: if bad_will && rng.chance(20) {
                3
            } else {
                rng.below(3) as u8
            },
            retain: rng.chance(30),
        });
    }
    match rng.below(100) {
        0..=9 => c = c.username("fz"),
        10..=14 => c = c.username("fz").password(b"pw"),
        15..=19 if bad => c = c.password(b"pw"),
        _ => {}
    }
    if bad {
        match rng.below(20) {
            0 => c = c.protocol(b"MQIsdp", 3),
            1 => c = c.protocol(b"MQTT", 5),
            2 => c = c.protocol(b"MQTT", 3),
            3 => c = c.flags(rng.next() as u8),
            4 => c = c.header(0x11),
            _ => {}
        }
    }
    c.bytes()
}

fn sub_packet(header: u8, pid: u16, filters: &[(Vec<u8>, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (f, q) in filters {
        body.extend(mqtt_bytes(f));
        body.push(*q);
    }
    packet(header, &body)
}

fn unsub_packet(pid: u16, filters: &[Vec<u8>]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for f in filters {
        body.extend(mqtt_bytes(f));
    }
    packet(0xA2, &body)
}

fn ack(first: u8, pid: u16) -> Vec<u8> {
    let p = pid.to_be_bytes();
    vec![first, 2, p[0], p[1]]
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(rng.next() as u8);
        return;
    }
    let i = rng.below(b.len() as u64) as usize;
    match rng.below(9) {
        0 => b[i] ^= 1 << rng.below(8),
        1 => b[i] = rng.next() as u8,
        2 => b.truncate(i),
        3 => {
            let n = rng.range(1, 4);
            let ins = rng.bytes(n);
            b.splice(i..i, ins);
        }
        4 => {
            b.remove(i);
        }
        5 if b.len() > 1 => {
            // The remaining length.
            let end = header_len(b).min(b.len());
            let n = rng.range(1, 6);
            let mut len = rng.bytes(n);
            if rng.chance(50) {
                len.iter_mut().for_each(|x| *x |= 0x80);
            }
            b.splice(1..end, len);
        }
        6 => {
            let copy = b.clone();
            b.extend(copy);
        }
        7 => b[0] = rng.next() as u8,
        _ if b.len() >= 2 => {
            let i = rng.below(b.len() as u64 - 1) as usize;
            let r = rng.next() as u16;
            let v: u16 = *rng.pick(&[0, 0xFFFF, r]);
            b[i..i + 2].copy_from_slice(&v.to_be_bytes());
        }
        _ => b[i] ^= 0xFF,
    }
}

#[derive(Default)]
struct Stats {
    sessions: AtomicU64,
    mutated_sessions: AtomicU64,
    bytes_written: AtomicU64,
    packets_written: AtomicU64,
    /// Packets from the broker by type.
    received: [AtomicU64; 16],
    closed_by_broker: AtomicU64,
    write_stalls: AtomicU64,
    liveness_checks: AtomicU64,
    probe_pings: AtomicU64,
    probe_max_ms: AtomicU64,
    /// Slowest PINGRESP or close the sessions waited for.
    answer_max_ms: AtomicU64,
}

struct Shared {
    stats: Stats,
    findings: Mutex<Vec<String>>,
    answer_within: Duration,
}

impl Shared {
    /// Waits (bounded) until the reader's state satisfies `done`; false on timeout.
    async fn answered(
        &self,
        state: &mut watch::Receiver<ReadState>,
        done: impl FnMut(&ReadState) -> bool,
    ) -> bool {
        let t = Instant::now();
        let ok = tokio::time::timeout(self.answer_within, state.wait_for(done))
            .await
            .is_ok();
        if ok {
            let ms = t.elapsed().as_millis() as u64;
            self.stats.answer_max_ms.fetch_max(ms, Ordering::Relaxed);
        }
        ok
    }

    fn finding(&self, f: String) {
        println!("FINDING: {f}");
        self.findings.lock().unwrap().push(f);
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct ReadState {
    pingresps: u64,
    closed: bool,
}

/// What the reader passes to the writer.
struct Owed {
    /// Acks owed to the broker (PUBACK / PUBREC / PUBCOMP).
    acks: mpsc::UnboundedReceiver<Vec<u8>>,
    state: watch::Receiver<ReadState>,
}

/// Why a packet from the broker is invalid, if it is.
fn check_from_broker(p: &common::Packet, seen_connack: bool) -> Option<String> {
    let kind = p.header >> 4;
    let body = &p.body;
    if !seen_connack && kind != 2 {
        return Some("a packet before CONNACK".into());
    }
    let pid_ok = |b: &[u8]| b.len() == 2 && (b[0] != 0 || b[1] != 0);
    let ok = match kind {
        2 => p.header == 0x20 && body.len() == 2 && body[0] <= 1 && body[1] <= 5 && !seen_connack,
        3 => {
            let q = (p.header >> 1) & 3;
            let dup = p.header & 0x08 != 0;
            if q == 3 || (q == 0 && dup) || body.len() < 2 {
                false
            } else {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let rest = 2 + tl + if q > 0 { 2 } else { 0 };
                body.len() >= rest
                    && std::str::from_utf8(&body[2..2 + tl]).is_ok()
                    && validate_topic_name(&body[2..2 + tl]).is_ok()
                    && (q == 0 || pid_ok(&body[2 + tl..rest]))
            }
        }
        4 | 5 | 7 => p.header & 0x0F == 0 && pid_ok(body),
        6 => p.header == 0x62 && pid_ok(body),
        9 => {
            p.header == 0x90
                && body.len() >= 3
                && pid_ok(&body[..2])
                && body[2..].iter().all(|c| matches!(c, 0 | 1 | 2 | 0x80))
        }
        11 => p.header == 0xB0 && pid_ok(body),
        13 => p.header == 0xD0 && body.is_empty(),
        _ => false,
    };
    (!ok).then(|| "an invalid packet".into())
}

/// Reads and parses everything the broker sends, never blocking it; queues the acks the
/// client owes and checks every packet.
async fn read_loop(
    rd: OwnedReadHalf,
    acks: mpsc::UnboundedSender<Vec<u8>>,
    state: watch::Sender<ReadState>,
    subacks: Arc<Mutex<HashMap<u16, usize>>>,
    clean: Arc<AtomicBool>,
    shared: Arc<Shared>,
    tag: String,
) {
    let mut r = BufReader::with_capacity(64 * 1024, rd);
    let mut seen_connack = false;
    loop {
        match read_packet(&mut r).await {
            Ok(Some(p)) => {
                let kind = p.header >> 4;
                shared.stats.received[kind as usize].fetch_add(1, Ordering::Relaxed);
                if let Some(why) = check_from_broker(&p, seen_connack) {
                    shared.finding(format!(
                        "{tag}: broker sent {why}: {}",
                        hex_short(&p.bytes(), 64)
                    ));
                }
                match kind {
                    2 => seen_connack = true,
                    3 => {
                        let q = (p.header >> 1) & 3;
                        if q > 0 && p.body.len() >= 2 {
                            let tl = u16::from_be_bytes([p.body[0], p.body[1]]) as usize;
                            if p.body.len() >= tl + 4 {
                                let pid = u16::from_be_bytes([p.body[2 + tl], p.body[3 + tl]]);
                                let _ = acks.send(ack(if q == 1 { 0x40 } else { 0x50 }, pid));
                            }
                        }
                    }
                    6 if p.body.len() == 2 => {
                        let _ = acks.send(ack(0x70, u16::from_be_bytes([p.body[0], p.body[1]])));
                    }
                    9 if p.body.len() >= 2 && clean.load(Ordering::Relaxed) => {
                        let pid = u16::from_be_bytes([p.body[0], p.body[1]]);
                        if let Some(n) = subacks.lock().unwrap().remove(&pid) {
                            if n != p.body.len() - 2 {
                                shared.finding(format!(
                                    "{tag}: SUBACK with {} return codes for {n} filters \
                                     [MQTT-3.9.3-1]",
                                    p.body.len() - 2
                                ));
                            }
                        }
                    }
                    13 => state.send_modify(|s| s.pingresps += 1),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    shared.finding(format!("{tag}: broker sent a malformed frame: {e}"));
                }
                break;
            }
        }
    }
    state.send_modify(|s| s.closed = true);
}

/// Writes `bytes` whole or in random fragments; false if the connection is gone or stalled.
async fn write(wr: &mut OwnedWriteHalf, rng: &mut Rng, bytes: &[u8], shared: &Shared) -> bool {
    let chunks: Vec<&[u8]> = if bytes.len() > 1 && rng.chance(10) {
        let mut v = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rng.range(1, rest.len().min(8) + 1);
            let (a, b) = rest.split_at(n);
            v.push(a);
            rest = b;
        }
        v
    } else {
        vec![bytes]
    };
    for c in chunks {
        match tokio::time::timeout(Duration::from_secs(3), wr.write_all(c)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                shared.stats.write_stalls.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
    }
    shared
        .stats
        .bytes_written
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    true
}

/// The client's side of one connection.
struct Client {
    rng: Rng,
    /// Percent of packets that break a protocol rule (the broker closes the connection).
    hostile: u64,
    next_pid: u16,
    /// Our QoS 2 publishes the broker may be waiting for a PUBREL for.
    qos2_out: Vec<u16>,
    /// Filters we subscribed to (for UNSUBSCRIBE).
    filters: Vec<Vec<u8>>,
    /// Acks owed to the broker, answered out of order.
    owed: Vec<Vec<u8>>,
}

impl Client {
    fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        self.next_pid
    }

    /// The next packet; `subacks` learns the filter count of each SUBSCRIBE.
    fn op(&mut self, subacks: &Mutex<HashMap<u16, usize>>) -> Vec<u8> {
        if !self.owed.is_empty() && self.rng.chance(40) {
            // An owed ack, out of order; sometimes for the wrong id.
            let i = self.rng.below(self.owed.len() as u64) as usize;
            let mut a = self.owed.swap_remove(i);
            if self.rng.chance(5) {
                a[3] = a[3].wrapping_add(1);
            }
            return a;
        }
        let bad = self.rng.chance(self.hostile);
        let rng = &mut self.rng;
        match rng.below(100) {
            0..=34 => {
                let q = if bad && rng.chance(10) {
                    3
                } else {
                    rng.below(3) as u8
                };
                let retain = rng.chance(20);
                let payload = if retain && rng.chance(20) {
                    Vec::new()
                } else {
                    payload_bytes(rng)
                };
                let pid = if bad && rng.chance(10) {
                    0
                } else {
                    rng.range(1, 40) as u16
                };
                let dup = q > 0 && rng.chance(20);
                let t = topic(rng, bad);
                if q == 2 {
                    self.qos2_out.push(pid);
                }
                common::publish_raw(&t, &payload, q, retain, dup, (q > 0).then_some(pid))
            }
            35..=52 => {
                let n = if rng.chance(5) { 30 } else { rng.range(1, 5) };
                let filters: Vec<(Vec<u8>, u8)> = (0..n)
                    .map(|_| {
                        let q = match rng.below(50) {
                            0 if bad => 3,
                            1 if bad => 0x80 | rng.below(3) as u8,
                            _ => rng.below(3) as u8,
                        };
                        (filter(rng, bad), q)
                    })
                    .collect();
                let header = if bad && rng.chance(10) { 0x80 } else { 0x82 };
                let pid = self.pid();
                subacks.lock().unwrap().insert(pid, n);
                self.filters.extend(filters.iter().map(|f| f.0.clone()));
                sub_packet(header, pid, &filters)
            }
            53..=61 => {
                let n = self.rng.range(1, 4);
                let filters: Vec<Vec<u8>> = (0..n)
                    .map(|_| {
                        if !self.filters.is_empty() && self.rng.chance(70) {
                            self.rng.pick(&self.filters).clone()
                        } else {
                            filter(&mut self.rng, bad)
                        }
                    })
                    .collect();
                let pid = self.pid();
                unsub_packet(pid, &filters)
            }
            62..=73 => {
                // PUBREL for our QoS 2 publish, or for an unknown id.
                let pid = if !self.qos2_out.is_empty() && rng.chance(70) {
                    let i = rng.below(self.qos2_out.len() as u64) as usize;
                    self.qos2_out.swap_remove(i)
                } else {
                    rng.range(1, 65536) as u16
                };
                ack(0x62, pid)
            }
            74..=81 => {
                // An ack for an id the broker may never have used.
                let first = *rng.pick(&[0x40, 0x50, 0x70]);
                ack(first, rng.range(1, 65536) as u16)
            }
            82..=89 if bad => match rng.below(4) {
                0 => connect_packet(rng, 0, 0, true),
                1 => vec![0xE0, 0],
                2 => {
                    let first = *rng.pick(&[0x20, 0x90, 0xB0, 0xD0, 0x00, 0xF0, 0x63, 0xC1]);
                    let n = rng.range(0, 6);
                    packet(first, &rng.bytes(n))
                }
                _ => ack(*rng.pick(&[0x40, 0x50, 0x62, 0x70]), 0),
            },
            _ => vec![0xC0, 0],
        }
    }
}

/// One connection: CONNECT, a random sequence of packets, one way of ending.
async fn session(worker: usize, n: usize, rng: &mut Rng, addr: SocketAddr, shared: &Arc<Shared>) {
    let tag = format!("worker {worker} session {n}");
    let stats = &shared.stats;
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return shared.finding(format!("{tag}: TCP connect failed: {e}")),
        Err(_) => return shared.finding(format!("{tag}: TCP connect timed out")),
    };
    stream.set_nodelay(rng.chance(70)).ok();
    let (rd, mut wr) = stream.into_split();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(ReadState::default());
    let subacks = Arc::new(Mutex::new(HashMap::new()));
    let clean = Arc::new(AtomicBool::new(true));
    let reader = tokio::spawn(read_loop(
        rd,
        ack_tx,
        state_tx,
        subacks.clone(),
        clean.clone(),
        shared.clone(),
        tag.clone(),
    ));
    let mut owed = Owed {
        acks: ack_rx,
        state: state_rx,
    };
    // Half the sessions speak the protocol correctly; the others break rules or bytes.
    let (hostile, mutate_percent) = match rng.below(10) {
        0..=4 => (0, 0),
        5..=6 => (2, 0),
        7..=8 => (1, 2),
        _ => (5, 8),
    };
    let mut client = Client {
        rng: Rng::new(rng.next()),
        hostile,
        next_pid: 0,
        qos2_out: Vec::new(),
        filters: Vec::new(),
        owed: Vec::new(),
    };
    // The last packets written, for the report.
    let mut log: Vec<Vec<u8>> = Vec::new();
    let mut first = if hostile > 0 && rng.chance(5) {
        client.op(&subacks)
    } else {
        let bad = hostile > 0 && rng.chance(20);
        connect_packet(rng, worker, n, bad)
    };
    let mut alive = true;
    let ops = rng.range(0, 80);
    for i in 0..=ops {
        let mut batch = Vec::new();
        for _ in 0..rng.range(1, 4) {
            let mut p = if i == 0 && batch.is_empty() {
                std::mem::take(&mut first)
            } else {
                while let Ok(a) = owed.acks.try_recv() {
                    client.owed.push(a);
                }
                client.op(&subacks)
            };
            if rng.chance(mutate_percent) {
                if rng.chance(80) {
                    mutate(rng, &mut p);
                } else {
                    let n = rng.range(1, 64);
                    p = rng.bytes(n);
                }
                clean.store(false, Ordering::Relaxed);
            }
            log.push(p.clone());
            if log.len() > 12 {
                log.remove(0);
            }
            stats.packets_written.fetch_add(1, Ordering::Relaxed);
            batch.extend(p);
        }
        if !write(&mut wr, rng, &batch, shared).await {
            alive = false;
            break;
        }
        if owed.state.borrow().closed {
            alive = false;
            break;
        }
    }
    let is_clean = clean.load(Ordering::Relaxed);
    if !is_clean {
        stats.mutated_sessions.fetch_add(1, Ordering::Relaxed);
    }
    let report = |what: &str| {
        let packets: Vec<String> = log.iter().map(|p| hex_short(p, 48)).collect();
        format!(
            "{tag}: {what}; clean={is_clean}; last packets written: [{}]",
            packets.join(", ")
        )
    };
    if owed.state.borrow().closed {
        alive = false;
        stats.closed_by_broker.fetch_add(1, Ordering::Relaxed);
    }
    // PINGREQ: a well-framed stream gets PINGRESP or is closed.
    if alive && is_clean {
        stats.liveness_checks.fetch_add(1, Ordering::Relaxed);
        let before = owed.state.borrow().pingresps;
        if write(&mut wr, rng, &[0xC0, 0], shared).await {
            let ok = shared
                .answered(&mut owed.state, |s| s.closed || s.pingresps > before)
                .await;
            if !ok {
                shared.finding(report("PINGREQ neither answered nor closed"));
            }
        }
    }
    if alive {
        match rng.below(10) {
            // DISCONNECT: a well-framed stream must then be closed.
            0..=3 => {
                let sent = write(&mut wr, rng, &[0xE0, 0], shared).await;
                if sent && is_clean && !shared.answered(&mut owed.state, |s| s.closed).await {
                    shared.finding(report("not closed after DISCONNECT"));
                }
            }
            // Half close: the broker must close whatever it was waiting for.
            4..=6 => {
                let _ = wr.shutdown().await;
                if !shared.answered(&mut owed.state, |s| s.closed).await {
                    shared.finding(report("not closed after the client's FIN"));
                }
            }
            // Abrupt close (the will, if any, fires).
            _ => {}
        }
    }
    drop(wr);
    reader.abort();
}

async fn worker(id: usize, seed: u64, addr: SocketAddr, deadline: Instant, shared: Arc<Shared>) {
    let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut n = 0;
    while Instant::now() < deadline {
        session(id, n, &mut rng, addr, &shared).await;
        n += 1;
    }
}

/// A quiet client that pings throughout: the broker must keep answering while under fuzz.
async fn probe(addr: SocketAddr, seed: u64, deadline: Instant, shared: Arc<Shared>) {
    let (mut c, _) =
        Raw::connect_ok(addr, &common::Connect::new(&format!("fz-probe-{seed:x}"))).await;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while Instant::now() < deadline {
        tick.tick().await;
        let t = Instant::now();
        c.send_lossy(&[0xC0, 0]).await;
        match tokio::time::timeout(TIMEOUT, read_packet(&mut c.io)).await {
            Ok(Ok(Some(p))) if p.header == 0xD0 => {
                let ms = t.elapsed().as_millis() as u64;
                shared.stats.probe_pings.fetch_add(1, Ordering::Relaxed);
                shared.stats.probe_max_ms.fetch_max(ms, Ordering::Relaxed);
            }
            Ok(Ok(p)) => {
                return shared.finding(format!("probe: expected PINGRESP, got {p:?}"));
            }
            Ok(Err(e)) => return shared.finding(format!("probe: read error {e}")),
            Err(_) => {
                return shared.finding(format!(
                    "probe: no PINGRESP within {TIMEOUT:?}: the broker stalled"
                ))
            }
        }
    }
}

/// Dozens of concurrent connections of mutated traffic: afterwards the broker serves a fresh
/// client, still runs, no connection task panicked, and no check above found anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_survives_concurrent_mutated_traffic() {
    let seed = std::env::var("ROOSTD_FUZZ_SEED")
        .ok()
        .and_then(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => s.parse().ok(),
            }
        })
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let secs: u64 = std::env::var("ROOSTD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let connections: usize = std::env::var("ROOSTD_FUZZ_CONNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CONNECTIONS);
    println!(
        "broker fuzz: seed {seed:#x}, {connections} connections for {secs} s \
         (rerun with ROOSTD_FUZZ_SEED={seed:#x})"
    );
    let started = Instant::now();
    // Extra broker settings for exploring, e.g. small queues or persistence (with its own
    // persistence_location).
    let extra = std::env::var("ROOSTD_FUZZ_TOML").unwrap_or_default();
    let (broker, router) = common::start_broker_with_router(&extra).await;
    let addr = broker.addr;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let answer_within = std::env::var("ROOSTD_FUZZ_ANSWER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(ANSWER_WITHIN);
    let shared = Arc::new(Shared {
        stats: Stats::default(),
        findings: Mutex::default(),
        answer_within,
    });

    let probe = tokio::spawn(probe(addr, seed, deadline, shared.clone()));
    let workers: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(worker(i, seed, addr, deadline, shared.clone())))
        .collect();
    // Every wait inside is bounded; this bound only turns a bug in this test into a failure.
    let join_by = deadline + answer_within * 2 + Duration::from_secs(10);
    for (i, w) in workers.into_iter().enumerate() {
        let left = join_by.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.finding(format!("worker {i} panicked: {e}")),
            Err(_) => shared.finding(format!("worker {i} did not finish")),
        }
    }
    match tokio::time::timeout(TIMEOUT * 2, probe).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.finding(format!("probe panicked: {e}")),
        Err(_) => shared.finding("probe did not finish".into()),
    }
    let fuzz_time = started.elapsed();

    // The broker still serves a fresh client.
    assert!(broker.is_running(), "Broker::run returned or panicked");
    let topic = format!("fz-after/{seed:x}");
    let (mut sub, _) = Raw::connect_ok(addr, &common::Connect::new("fz-after-sub")).await;
    sub.sub(&topic, 1).await;
    let (mut publ, _) = Raw::connect_ok(addr, &common::Connect::new("fz-after-pub")).await;
    publ.publish(&topic, b"after the fuzz", 1, false).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, topic);
    assert_eq!(p.payload, b"after the fuzz");
    sub.ack_publish(&p).await;
    publ.disconnect().await;
    sub.disconnect().await;
    assert!(broker.is_running(), "Broker::run returned or panicked");

    let s = &shared.stats;
    let rx: Vec<String> = [
        ("CONNACK", 2),
        ("PUBLISH", 3),
        ("PUBACK", 4),
        ("PUBREC", 5),
        ("PUBREL", 6),
        ("PUBCOMP", 7),
        ("SUBACK", 9),
        ("UNSUBACK", 11),
        ("PINGRESP", 13),
    ]
    .iter()
    .map(|(n, i)| format!("{n} {}", s.received[*i].load(Ordering::Relaxed)))
    .collect();
    let st = &router.metrics().stats;
    println!(
        "broker fuzz: {:?}: {} sessions ({} mutated, {} closed by the broker), {} packets / {} \
         bytes written, {} write stalls, {} liveness checks (slowest answer {} ms); received \
         {}; probe {} pings, \
         slowest {} ms; broker counted {} connections, {} protocol errors, {} keepalive \
         timeouts, {} storage pauses",
        fuzz_time,
        s.sessions.load(Ordering::Relaxed),
        s.mutated_sessions.load(Ordering::Relaxed),
        s.closed_by_broker.load(Ordering::Relaxed),
        s.packets_written.load(Ordering::Relaxed),
        s.bytes_written.load(Ordering::Relaxed),
        s.write_stalls.load(Ordering::Relaxed),
        s.liveness_checks.load(Ordering::Relaxed),
        s.answer_max_ms.load(Ordering::Relaxed),
        rx.join(", "),
        s.probe_pings.load(Ordering::Relaxed),
        s.probe_max_ms.load(Ordering::Relaxed),
        st.connections_total.load(Ordering::Relaxed),
        st.protocol_errors.load(Ordering::Relaxed),
        st.keepalive_timeouts.load(Ordering::Relaxed),
        st.storage_pauses.load(Ordering::Relaxed),
    );

    assert_eq!(
        st.panics.load(Ordering::Relaxed),
        0,
        "connection tasks panicked (seed {seed:#x})"
    );
    let findings = shared.findings.lock().unwrap().clone();
    assert!(
        findings.is_empty(),
        "broker fuzz (seed {seed:#x}) found {}:\n{}",
        findings.len(),
        findings.join("\n")
    );
    broker.stop().await.expect("clean shutdown after the fuzz");
}

/// A client that acks every delivery at once and publishes `n` QoS 1 messages in one burst;
/// returns when each of its PUBACKs arrived.
async fn acking_burst(
    addr: SocketAddr,
    id: &str,
    filter: &str,
    topic: &str,
    n: u16,
    start: Arc<tokio::sync::Barrier>,
) -> Vec<Duration> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (rd, mut wr) = s.into_split();
    wr.write_all(&common::Connect::new(id).bytes())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, common::Packet)>();
    tokio::spawn(async move {
        let mut r = BufReader::new(rd);
        while let Ok(Some(p)) = read_packet(&mut r).await {
            let _ = tx.send((Instant::now(), p));
        }
    });
    // Wait for the SUBACK so that both clients are subscribed before either publishes.
    wr.write_all(&common::subscribe(1, &[(filter, 1)]))
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut burst = Vec::new();
    for i in 1..=n {
        burst.extend(common::publish(topic, b"x", 1, false, false, 100 + i));
    }
    let mut sent = false;
    let mut pubacks = Vec::new();
    while pubacks.len() < n as usize {
        let (at, p) = match tokio::time::timeout(TIMEOUT * 3, rx.recv()).await {
            Ok(Some(x)) => x,
            _ => panic!(
                "{id} stalled: {} PUBACKs after {:?}",
                pubacks.len(),
                t0.elapsed()
            ),
        };
        match p.header >> 4 {
            9 if !sent => {
                sent = true;
                start.wait().await;
                wr.write_all(&burst).await.unwrap();
            }
            3 => {
                let tl = u16::from_be_bytes([p.body[0], p.body[1]]) as usize;
                let pid = u16::from_be_bytes([p.body[2 + tl], p.body[3 + tl]]);
                wr.write_all(&ack(0x40, pid)).await.unwrap();
            }
            4 => pubacks.push(at - t0),
            _ => {}
        }
    }
    pubacks
}

/// Found by the broker fuzz (with small queues): two clients that ack every delivery at once,
/// each subscribed to the other's topic, each publishing a QoS 1 burst larger than the
/// in-flight window plus the queue. Each publisher was paused on the other's full queue, so
/// neither connection was read, so neither client's PUBACKs were read, so neither queue
/// drained: both stalled for backpressure_timeout (5 s), then messages to both were dropped
/// (queue_full) although both subscribers kept up. Fixed: a paused connection still reads (a
/// little) and handles the acknowledgements and pings behind its waiting PUBLISHes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_backpressure_does_not_stall_acking_clients() {
    let (b, router) = common::start_broker_with_router(
        "max_inflight_messages = 2\nmax_queued_messages = 10\nbackpressure_timeout = 30",
    )
    .await;
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let x = tokio::spawn(acking_burst(
        b.addr,
        "x",
        "pair/y",
        "pair/x",
        60,
        start.clone(),
    ));
    let y = tokio::spawn(acking_burst(b.addr, "y", "pair/x", "pair/y", 60, start));
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    // Every PUBACK came (acking_burst waits for all 60, bounded), and nothing was dropped:
    // with the stall, both connections stayed paused past backpressure_timeout and the
    // broker then dropped as queue_full.
    assert_eq!((x.len(), y.len()), (60, 60));
    let queue_full = roostd::session::DropReason::QueueFull.index();
    let dropped = router.metrics().stats.dropped[queue_full].load(Ordering::Relaxed);
    assert_eq!(dropped, 0, "messages dropped as queue_full");
}
