//! Decoding client packets and encoding broker packets.
//!
//! Framing (fixed header, remaining length, the size limit checked before the body is buffered)
//! is mqttbytes' `check`. On top of it this module enforces what mqttbytes 0.6 accepts but the
//! specification forbids (../shared/DESIGN.md lists them): exact fixed-header flags, the CONNECT
//! reserved bit and flag consistency, protocol level, packet id 0, topic rules, SUBSCRIBE option
//! bits, empty SUBSCRIBE/UNSUBSCRIBE and trailing bytes. PUBLISH and SUBSCRIBE are parsed here
//! directly: PUBLISH is the hot path and mqttbytes allocates a `String` per topic; SUBSCRIBE
//! needs its option byte checked. Every error names the clause it enforces.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqttbytes::QoS;
use thiserror::Error;

use super::topic::{validate_topic_name, TopicError};
use crate::message::Publication;

/// A protocol violation by the client; the connection is closed and the message logged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("[MQTT-2.2.3-1] malformed remaining length")]
    MalformedRemainingLength,
    #[error(
        "[MQTT-2.2.3] remaining length of {size} bytes exceeds message_size_limit ({limit} bytes)"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("[MQTT-2.2.1] reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("[MQTT-2.2.2-2] invalid fixed header flags {flags:#06b} for {packet}")]
    BadFlags { packet: &'static str, flags: u8 },
    #[error("[MQTT-3.1.0-1] {0} received before CONNECT")]
    NotConnect(&'static str),
    #[error("[MQTT-3.1.0-2] second CONNECT on one connection")]
    SecondConnect,
    #[error("[MQTT-3.1.0-1] first packet is not CONNECT (first byte {0:#04x})")]
    FirstByte(u8),
    #[error("[MQTT-2.2.1] {0} is sent by servers, not clients")]
    ServerPacket(&'static str),
    #[error("[MQTT-3.1.2-1] protocol name is not \"MQTT\"")]
    ProtocolName,
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag is set")]
    ConnectReserved,
    #[error("[MQTT-3.1.2-11] will QoS or retain set without the will flag")]
    WillFlags,
    #[error("[MQTT-3.1.2-14] will QoS 3")]
    WillQos,
    #[error("[MQTT-3.1.2-22] password flag set without username flag")]
    PasswordWithoutUsername,
    #[error("will topic invalid: {0}")]
    WillTopic(TopicError),
    #[error("[MQTT-1.5.3-1] {0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("[MQTT-1.5.3-2] {0} contains U+0000")]
    Nul(&'static str),
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    PublishQos3,
    #[error("[MQTT-3.3.1-2] DUP flag set on a QoS 0 PUBLISH")]
    DupOnQos0,
    #[error("topic name invalid: {0}")]
    TopicName(TopicError),
    #[error("[MQTT-2.3.1-1] packet identifier 0 in {0}")]
    PacketIdZero(&'static str),
    #[error("[MQTT-3.8.3-3] SUBSCRIBE without a topic filter")]
    EmptySubscribe,
    #[error("[MQTT-3.8.3-4] SUBSCRIBE requested QoS 3 or set reserved option bits ({0:#04x})")]
    SubscribeOptions(u8),
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE without a topic filter")]
    EmptyUnsubscribe,
    #[error("[MQTT-4.8.0-1] malformed {packet}: {detail}")]
    Malformed {
        packet: &'static str,
        detail: &'static str,
    },
}

/// CONNECT after validation. Outcomes that need a CONNACK before closing are separate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level; anything but 4 gets CONNACK 0x01 [MQTT-3.1.2-2].
    pub level: u8,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// The last will carried by CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

impl Will {
    /// The message to publish when the will fires.
    pub fn to_publication(&self) -> Publication {
        Publication {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            received_at: std::time::Instant::now(),
        }
    }
}

/// A client-to-server packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    Publish {
        pkid: u16,
        dup: bool,
        publication: Publication,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        /// (filter, requested QoS); filters are checked by the session, which answers 0x80.
        filters: Vec<(String, QoS)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
}

impl PartialEq for Publication {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.payload == other.payload
            && self.qos == other.qos
            && self.retain == other.retain
    }
}
impl Eq for Publication {}

fn qos_from(bits: u8) -> Option<QoS> {
    match bits {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

/// Reads one complete packet from `buf`, removing its bytes. `Ok(None)` means more bytes are
/// needed. `max_remaining` is message_size_limit, checked on the fixed header before the
/// body is buffered. After an error the connection must be closed (the buffer is left as is).
pub fn decode(buf: &mut BytesMut, max_remaining: usize) -> Result<Option<Packet>, ProtocolError> {
    let header = match mqttbytes::check(buf.iter(), max_remaining) {
        Ok(h) => h,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
            return Err(ProtocolError::TooLarge {
                size,
                limit: max_remaining,
            })
        }
        Err(_) => return Err(ProtocolError::MalformedRemainingLength),
    };
    let frame_len = header.frame_length();
    let byte1 = buf[0];
    let header_len = fixed_header_len(buf);
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0F;
    let expect_flags = |packet: &'static str, want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(ProtocolError::BadFlags { packet, flags })
        }
    };
    match packet_type {
        1 => {
            expect_flags("CONNECT", 0)?;
            let frame = buf.split_to(frame_len).freeze();
            decode_connect(frame, header_len).map(|c| Some(Packet::Connect(c)))
        }
        3 => {
            // One allocation for topic + payload: queued messages must not pin the read buffer.
            let frame = Bytes::copy_from_slice(&buf[header_len..frame_len]);
            buf.advance(frame_len);
            decode_publish(flags, frame).map(Some)
        }
        4..=7 => {
            let (name, want) = match packet_type {
                4 => ("PUBACK", 0),
                5 => ("PUBREC", 0),
                6 => ("PUBREL", 0b0010),
                _ => ("PUBCOMP", 0),
            };
            expect_flags(name, want)?;
            if frame_len - header_len != 2 {
                return Err(ProtocolError::Malformed {
                    packet: name,
                    detail: "remaining length is not 2",
                });
            }
            let pkid = u16::from_be_bytes([buf[header_len], buf[header_len + 1]]);
            buf.advance(frame_len);
            if pkid == 0 {
                return Err(ProtocolError::PacketIdZero(name));
            }
            Ok(Some(match packet_type {
                4 => Packet::PubAck(pkid),
                5 => Packet::PubRec(pkid),
                6 => Packet::PubRel(pkid),
                _ => Packet::PubComp(pkid),
            }))
        }
        8 => {
            expect_flags("SUBSCRIBE", 0b0010)?;
            let mut body = buf.split_to(frame_len).freeze();
            body.advance(header_len);
            decode_subscribe(body).map(Some)
        }
        10 => {
            expect_flags("UNSUBSCRIBE", 0b0010)?;
            let mut body = buf.split_to(frame_len).freeze();
            body.advance(header_len);
            decode_unsubscribe(body).map(Some)
        }
        12 | 14 => {
            let name = if packet_type == 12 {
                "PINGREQ"
            } else {
                "DISCONNECT"
            };
            expect_flags(name, 0)?;
            if frame_len != header_len {
                return Err(ProtocolError::Malformed {
                    packet: name,
                    detail: "remaining length is not 0",
                });
            }
            buf.advance(frame_len);
            Ok(Some(if packet_type == 12 {
                Packet::PingReq
            } else {
                Packet::Disconnect
            }))
        }
        2 => Err(ProtocolError::ServerPacket("CONNACK")),
        9 => Err(ProtocolError::ServerPacket("SUBACK")),
        11 => Err(ProtocolError::ServerPacket("UNSUBACK")),
        13 => Err(ProtocolError::ServerPacket("PINGRESP")),
        other => Err(ProtocolError::ReservedPacketType(other)),
    }
}

/// Length of the fixed header at the start of `buf`, which `check` has already validated:
/// the first byte plus 1..=4 remaining-length bytes, the last of which is below 0x80.
fn fixed_header_len(buf: &[u8]) -> usize {
    let len_bytes = buf[1..]
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .unwrap_or(3)
        + 1;
    1 + len_bytes
}

fn read_u16(b: &mut Bytes, packet: &'static str) -> Result<u16, ProtocolError> {
    if b.len() < 2 {
        return Err(ProtocolError::Malformed {
            packet,
            detail: "truncated",
        });
    }
    Ok(b.get_u16())
}

fn read_u8(b: &mut Bytes, packet: &'static str) -> Result<u8, ProtocolError> {
    if b.is_empty() {
        return Err(ProtocolError::Malformed {
            packet,
            detail: "truncated",
        });
    }
    Ok(b.get_u8())
}

fn read_binary(b: &mut Bytes, packet: &'static str) -> Result<Bytes, ProtocolError> {
    let len = read_u16(b, packet)? as usize;
    if len > b.len() {
        return Err(ProtocolError::Malformed {
            packet,
            detail: "string length beyond the packet",
        });
    }
    Ok(b.split_to(len))
}

fn read_string(
    b: &mut Bytes,
    packet: &'static str,
    what: &'static str,
) -> Result<String, ProtocolError> {
    let raw = read_binary(b, packet)?;
    let text = String::from_utf8(raw.to_vec()).map_err(|_| ProtocolError::Utf8(what))?;
    // [MQTT-1.5.3-2] U+0000 makes any UTF-8 string field malformed: close the connection.
    if text.contains('\0') {
        return Err(ProtocolError::Nul(what));
    }
    Ok(text)
}

fn decode_connect(mut b: Bytes, header_len: usize) -> Result<Connect, ProtocolError> {
    const P: &str = "CONNECT";
    b.advance(header_len);
    let name = read_binary(&mut b, P)?;
    let level = read_u8(&mut b, P)?;
    if &name[..] != b"MQTT" {
        // 3.1 clients send "MQIsdp" with level 3: refuse them like any other level.
        if &name[..] == b"MQIsdp" {
            return Ok(Connect {
                level,
                clean_session: true,
                keep_alive: 0,
                client_id: String::new(),
                will: None,
                username: None,
                password: None,
            });
        }
        return Err(ProtocolError::ProtocolName);
    }
    let flags = read_u8(&mut b, P)?;
    let keep_alive = read_u16(&mut b, P)?;
    if level != 4 {
        // The rest of the packet may follow another version's layout; the caller answers 0x01.
        return Ok(Connect {
            level,
            clean_session: true,
            keep_alive,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
        });
    }
    if flags & 0x01 != 0 {
        return Err(ProtocolError::ConnectReserved);
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(ProtocolError::WillFlags);
    }
    let will_qos = qos_from(will_qos_bits).ok_or(ProtocolError::WillQos)?;
    let has_user = flags & 0x80 != 0;
    let has_pass = flags & 0x40 != 0;
    if has_pass && !has_user {
        return Err(ProtocolError::PasswordWithoutUsername);
    }
    let client_id = read_string(&mut b, P, "client identifier")?;
    let will = if will_flag {
        let topic = read_binary(&mut b, P)?;
        if std::str::from_utf8(&topic).is_err() {
            return Err(ProtocolError::Utf8("will topic"));
        }
        validate_topic_name(&topic).map_err(ProtocolError::WillTopic)?;
        let payload = read_binary(&mut b, P)?;
        Some(Will {
            // Own allocations: the will outlives the frame and must not pin it.
            topic: Bytes::copy_from_slice(&topic),
            payload: Bytes::copy_from_slice(&payload),
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_user {
        Some(read_string(&mut b, P, "user name")?)
    } else {
        None
    };
    let password = if has_pass {
        Some(Bytes::copy_from_slice(&read_binary(&mut b, P)?))
    } else {
        None
    };
    if !b.is_empty() {
        return Err(ProtocolError::Malformed {
            packet: P,
            detail: "trailing bytes after the payload",
        });
    }
    Ok(Connect {
        level,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_publish(flags: u8, mut b: Bytes) -> Result<Packet, ProtocolError> {
    const P: &str = "PUBLISH";
    let qos = qos_from((flags >> 1) & 0x03).ok_or(ProtocolError::PublishQos3)?;
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(ProtocolError::DupOnQos0);
    }
    let topic = read_binary(&mut b, P)?;
    if std::str::from_utf8(&topic).is_err() {
        return Err(ProtocolError::Utf8("topic name"));
    }
    validate_topic_name(&topic).map_err(ProtocolError::TopicName)?;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        let id = read_u16(&mut b, P)?;
        if id == 0 {
            return Err(ProtocolError::PacketIdZero(P));
        }
        id
    };
    Ok(Packet::Publish {
        pkid,
        dup,
        publication: Publication {
            topic,
            payload: b,
            qos,
            retain,
            received_at: std::time::Instant::now(),
        },
    })
}

fn decode_subscribe(mut b: Bytes) -> Result<Packet, ProtocolError> {
    const P: &str = "SUBSCRIBE";
    let pkid = read_u16(&mut b, P)?;
    if pkid == 0 {
        return Err(ProtocolError::PacketIdZero(P));
    }
    let mut filters = Vec::new();
    while !b.is_empty() {
        let filter = read_string(&mut b, P, "topic filter")?;
        let options = read_u8(&mut b, P)?;
        let qos = match qos_from(options) {
            Some(q) => q,
            None => return Err(ProtocolError::SubscribeOptions(options)),
        };
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        return Err(ProtocolError::EmptySubscribe);
    }
    Ok(Packet::Subscribe { pkid, filters })
}

fn decode_unsubscribe(mut b: Bytes) -> Result<Packet, ProtocolError> {
    const P: &str = "UNSUBSCRIBE";
    let pkid = read_u16(&mut b, P)?;
    if pkid == 0 {
        return Err(ProtocolError::PacketIdZero(P));
    }
    let mut filters = Vec::new();
    while !b.is_empty() {
        filters.push(read_string(&mut b, P, "topic filter")?);
    }
    if filters.is_empty() {
        return Err(ProtocolError::EmptyUnsubscribe);
    }
    Ok(Packet::Unsubscribe { pkid, filters })
}

// ---- encoding (server to client) ----

fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// CONNACK with a return code (0 accepted, 1 protocol version, 2 identifier, 5 not authorized...).
pub fn encode_connack(out: &mut BytesMut, session_present: bool, code: u8) {
    out.put_slice(&[0x20, 0x02, session_present as u8, code]);
}

/// PUBACK, PUBREC, PUBREL (flags 0b0010) or PUBCOMP.
pub fn encode_ack(out: &mut BytesMut, kind: Ack, pkid: u16) {
    let b1 = match kind {
        Ack::PubAck => 0x40,
        Ack::PubRec => 0x50,
        Ack::PubRel => 0x62,
        Ack::PubComp => 0x70,
        Ack::UnsubAck => 0xB0,
    };
    let id = pkid.to_be_bytes();
    out.put_slice(&[b1, 0x02, id[0], id[1]]);
}

/// The acknowledgement packets the broker sends, all `type, 2, pkid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    UnsubAck,
}

impl Ack {
    /// The packet's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Ack::PubAck => "PUBACK",
            Ack::PubRec => "PUBREC",
            Ack::PubRel => "PUBREL",
            Ack::PubComp => "PUBCOMP",
            Ack::UnsubAck => "UNSUBACK",
        }
    }
}

/// SUBACK with one return code per filter (0..=2 granted, 0x80 failure).
pub fn encode_suback(out: &mut BytesMut, pkid: u16, codes: &[u8]) {
    out.put_u8(0x90);
    put_remaining_length(out, 2 + codes.len());
    out.put_u16(pkid);
    out.put_slice(codes);
}

/// PINGRESP.
pub fn encode_pingresp(out: &mut BytesMut) {
    out.put_slice(&[0xD0, 0x00]);
}

/// PUBLISH to a subscriber. `pkid` is ignored for QoS 0.
pub fn encode_publish(
    out: &mut BytesMut,
    msg: &Publication,
    qos: QoS,
    pkid: u16,
    dup: bool,
    retain: bool,
) {
    let mut b1 = 0x30 | ((qos as u8) << 1) | retain as u8;
    if dup && qos != QoS::AtMostOnce {
        b1 |= 0x08;
    }
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + msg.topic.len() + id_len + msg.payload.len();
    out.reserve(5 + remaining);
    out.put_u8(b1);
    put_remaining_length(out, remaining);
    out.put_u16(msg.topic.len() as u16);
    out.put_slice(&msg.topic);
    if id_len != 0 {
        out.put_u16(pkid);
    }
    out.put_slice(&msg.payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8]) -> Result<Option<Packet>, ProtocolError> {
        let mut b = BytesMut::from(bytes);
        decode(&mut b, 1024)
    }

    #[test]
    fn publish_roundtrip() {
        let msg = Publication {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: false,
            received_at: std::time::Instant::now(),
        };
        let mut out = BytesMut::new();
        encode_publish(&mut out, &msg, QoS::AtLeastOnce, 7, true, false);
        assert_eq!(
            &out[..],
            &[0x3A, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i']
        );
        match dec(&out).unwrap().unwrap() {
            Packet::Publish {
                pkid,
                dup,
                publication,
            } => {
                assert_eq!((pkid, dup), (7, true));
                assert_eq!(publication, msg);
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        assert_eq!(dec(&[0x30]), Ok(None));
        assert_eq!(dec(&[0x30, 5, 0, 1]), Ok(None));
    }

    #[test]
    fn fixed_header_flags_are_exact() {
        // [MQTT-2.2.2-2] PUBREL must be 0x62, SUBSCRIBE 0x82, UNSUBSCRIBE 0xA2, CONNECT 0x10.
        assert!(matches!(
            dec(&[0x60, 2, 0, 1]),
            Err(ProtocolError::BadFlags { .. })
        ));
        assert!(matches!(
            dec(&[0x80, 6, 0, 1, 0, 1, b'a', 0]),
            Err(ProtocolError::BadFlags { .. })
        ));
        assert!(matches!(
            dec(&[0xA0, 5, 0, 1, 0, 1, b'a']),
            Err(ProtocolError::BadFlags { .. })
        ));
        assert!(matches!(
            dec(&[0xC1, 0]),
            Err(ProtocolError::BadFlags { .. })
        ));
        assert_eq!(dec(&[0x62, 2, 0, 1]), Ok(Some(Packet::PubRel(1))));
    }

    #[test]
    fn publish_rules() {
        // [MQTT-3.3.1-4]
        assert_eq!(
            dec(&[0x36, 5, 0, 1, b'a', 0, 1]),
            Err(ProtocolError::PublishQos3)
        );
        // [MQTT-3.3.1-2]
        assert_eq!(dec(&[0x38, 3, 0, 1, b'a']), Err(ProtocolError::DupOnQos0));
        // [MQTT-3.3.2-2]
        assert_eq!(
            dec(&[0x30, 3, 0, 1, b'#']),
            Err(ProtocolError::TopicName(TopicError::WildcardInName))
        );
        // [MQTT-2.3.1-1]
        assert_eq!(
            dec(&[0x32, 5, 0, 1, b'a', 0, 0]),
            Err(ProtocolError::PacketIdZero("PUBLISH"))
        );
        // [MQTT-1.5.3-1]
        assert_eq!(
            dec(&[0x30, 3, 0, 1, 0xFF]),
            Err(ProtocolError::Utf8("topic name"))
        );
    }

    #[test]
    fn subscribe_rules() {
        // [MQTT-3.8.3-3]
        assert_eq!(dec(&[0x82, 2, 0, 1]), Err(ProtocolError::EmptySubscribe));
        // [MQTT-3.8.3-4]
        assert_eq!(
            dec(&[0x82, 6, 0, 1, 0, 1, b'a', 3]),
            Err(ProtocolError::SubscribeOptions(3))
        );
        assert_eq!(
            dec(&[0x82, 6, 0, 1, 0, 1, b'a', 0x41]),
            Err(ProtocolError::SubscribeOptions(0x41))
        );
        assert_eq!(
            dec(&[0x82, 6, 0, 1, 0, 1, b'a', 1]),
            Ok(Some(Packet::Subscribe {
                pkid: 1,
                filters: vec![("a".into(), QoS::AtLeastOnce)]
            }))
        );
        // [MQTT-3.10.3-2]
        assert_eq!(dec(&[0xA2, 2, 0, 1]), Err(ProtocolError::EmptyUnsubscribe));
    }

    #[test]
    fn size_limit_is_checked_on_the_header() {
        let mut b = BytesMut::from(&[0x30, 0x80, 0x80, 0x01][..]); // 16384 bytes announced
        assert_eq!(
            decode(&mut b, 1024),
            Err(ProtocolError::TooLarge {
                size: 16384,
                limit: 1024
            })
        );
        assert_eq!(
            dec(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(ProtocolError::MalformedRemainingLength)
        );
    }

    #[test]
    fn connect_flag_rules() {
        let base = |flags: u8| {
            vec![
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 1, b'c',
            ]
        };
        assert!(matches!(dec(&base(0x02)), Ok(Some(Packet::Connect(_)))));
        // [MQTT-3.1.2-3]
        assert_eq!(dec(&base(0x03)), Err(ProtocolError::ConnectReserved));
        // [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15]
        assert_eq!(dec(&base(0x0A)), Err(ProtocolError::WillFlags));
        assert_eq!(dec(&base(0x22)), Err(ProtocolError::WillFlags));
        // [MQTT-3.1.2-22]
        assert_eq!(
            dec(&base(0x42)),
            Err(ProtocolError::PasswordWithoutUsername)
        );
        // [MQTT-3.1.2-1]
        let mut bad = base(0x02);
        bad[4] = b'X';
        assert_eq!(dec(&bad), Err(ProtocolError::ProtocolName));
        // Trailing bytes
        let mut long = base(0x02);
        long[1] = 14;
        long.push(0);
        assert!(matches!(dec(&long), Err(ProtocolError::Malformed { .. })));
    }

    /// [MQTT-1.5.3-2] U+0000 in any UTF-8 string field is malformed: decoding fails (the
    /// connection closes), for every field that carries one.
    #[test]
    fn nul_in_every_string_field_is_malformed() {
        fn s(text: &[u8]) -> Vec<u8> {
            let mut v = (text.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(text);
            v
        }
        fn frame(first: u8, body: Vec<u8>) -> Vec<u8> {
            let mut v = vec![first, body.len() as u8];
            v.extend(body);
            v
        }
        let connect = |flags: u8, payload: Vec<u8>| {
            let mut body = s(b"MQTT");
            body.extend([4, flags, 0, 60]);
            body.extend(payload);
            frame(0x10, body)
        };
        // Client identifier.
        assert_eq!(
            dec(&connect(0x02, s(b"a\0b"))),
            Err(ProtocolError::Nul("client identifier"))
        );
        // Will topic.
        let mut will = s(b"id");
        will.extend(s(b"w\0t"));
        will.extend(s(b"payload"));
        assert_eq!(
            dec(&connect(0x06, will)),
            Err(ProtocolError::WillTopic(TopicError::Nul))
        );
        // User name.
        let mut user = s(b"id");
        user.extend(s(b"u\0"));
        assert_eq!(
            dec(&connect(0x82, user)),
            Err(ProtocolError::Nul("user name"))
        );
        // Topic name.
        let mut publish = s(b"t\0");
        publish.extend(b"x");
        assert_eq!(
            dec(&frame(0x30, publish)),
            Err(ProtocolError::TopicName(TopicError::Nul))
        );
        // SUBSCRIBE filter (was answered with SUBACK 0x80 before: issue 11, item 4).
        let mut sub = vec![0, 1];
        sub.extend(s(b"a/\0"));
        sub.push(1);
        assert_eq!(
            dec(&frame(0x82, sub)),
            Err(ProtocolError::Nul("topic filter"))
        );
        // UNSUBSCRIBE filter.
        let mut unsub = vec![0, 1];
        unsub.extend(s(b"\0"));
        assert_eq!(
            dec(&frame(0xA2, unsub)),
            Err(ProtocolError::Nul("topic filter"))
        );
        // The same fields without U+0000 decode.
        assert!(matches!(
            dec(&connect(0x02, s(b"ab"))),
            Ok(Some(Packet::Connect(_)))
        ));
        let mut unsub = vec![0, 1];
        unsub.extend(s(b"a/#"));
        assert_eq!(
            dec(&frame(0xA2, unsub)),
            Ok(Some(Packet::Unsubscribe {
                pkid: 1,
                filters: vec!["a/#".into()]
            }))
        );
    }

    /// Every error names the clause (or section) it enforces.
    #[test]
    fn every_error_names_a_clause() {
        let all = [
            ProtocolError::MalformedRemainingLength,
            ProtocolError::TooLarge { size: 2, limit: 1 },
            ProtocolError::ReservedPacketType(0),
            ProtocolError::BadFlags {
                packet: "X",
                flags: 1,
            },
            ProtocolError::NotConnect("X"),
            ProtocolError::SecondConnect,
            ProtocolError::FirstByte(0),
            ProtocolError::ServerPacket("X"),
            ProtocolError::ProtocolName,
            ProtocolError::ConnectReserved,
            ProtocolError::WillFlags,
            ProtocolError::WillQos,
            ProtocolError::PasswordWithoutUsername,
            ProtocolError::WillTopic(TopicError::Empty),
            ProtocolError::Utf8("x"),
            ProtocolError::Nul("x"),
            ProtocolError::PublishQos3,
            ProtocolError::DupOnQos0,
            ProtocolError::TopicName(TopicError::TooLong),
            ProtocolError::PacketIdZero("X"),
            ProtocolError::EmptySubscribe,
            ProtocolError::SubscribeOptions(3),
            ProtocolError::EmptyUnsubscribe,
            ProtocolError::Malformed {
                packet: "X",
                detail: "y",
            },
        ];
        for e in all {
            assert!(e.to_string().contains("[MQTT-"), "{e}");
        }
    }
}
