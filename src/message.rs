//! The application message as it travels through the broker.

use bytes::Bytes;
use mqttbytes::QoS;

/// One published message, shared by every subscriber it is delivered to (`Arc<Publication>`).
///
/// `topic` and `payload` are slices of one allocation made when the PUBLISH was decoded, so a
/// message queued for an offline session never pins a connection's read buffer.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Topic name bytes, validated UTF-8 without wildcards or U+0000.
    pub topic: Bytes,
    /// Application payload.
    pub payload: Bytes,
    /// QoS the publisher sent it with; each delivery uses min(this, granted QoS).
    pub qos: QoS,
    /// Whether the publisher asked for it to be retained.
    pub retain: bool,
    /// When the broker decoded it (publish-to-delivery latency).
    pub received_at: std::time::Instant,
}

impl Publication {
    /// Bytes this message accounts for in queue limits (topic + payload).
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// Topic for log lines.
    pub fn topic_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.topic)
    }
}

/// The smaller of two QoS levels.
pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// QoS from a stored byte (validated 0..=2 when read; anything larger reads as 2).
pub fn qos_from_stored(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
