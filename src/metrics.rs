//! Every metric name in one place. Handles are registered once at startup so that the
//! publish path only increments atomics (no key lookup, no string formatting per message).
//! Without an installed recorder (tests, embedding) the handles are no-ops.

use metrics::{counter, gauge, Counter, Gauge};

use crate::session::DropReason;

/// Registered metric handles.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// PUBLISH packets received from clients, by QoS.
    pub messages_received: [Counter; 3],
    /// PUBLISH packets written to clients, by QoS.
    pub messages_sent: [Counter; 3],
    /// Payload bytes received in PUBLISH packets.
    pub payload_bytes_received: Counter,
    /// Messages not delivered to a session, by reason (see `DropReason`).
    pub dropped_queue_full: Counter,
    pub dropped_qos0_offline: Counter,
    pub dropped_session_expired: Counter,
    /// Connections accepted (CONNACK 0 sent).
    pub connections_total: Counter,
    /// Sockets refused because max_connections was reached.
    pub connections_refused_limit: Counter,
    /// Connections closed for a protocol violation.
    pub protocol_errors: Counter,
    /// Clients currently connected.
    pub clients_connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every handle with the installed recorder (if any).
    pub fn new() -> Metrics {
        Metrics {
            messages_received: [
                counter!("roostd_messages_received_total", "qos" => "0"),
                counter!("roostd_messages_received_total", "qos" => "1"),
                counter!("roostd_messages_received_total", "qos" => "2"),
            ],
            messages_sent: [
                counter!("roostd_messages_sent_total", "qos" => "0"),
                counter!("roostd_messages_sent_total", "qos" => "1"),
                counter!("roostd_messages_sent_total", "qos" => "2"),
            ],
            payload_bytes_received: counter!("roostd_payload_received_bytes_total"),
            dropped_queue_full: counter!("roostd_messages_dropped_total", "reason" => "queue_full"),
            dropped_qos0_offline: counter!("roostd_messages_dropped_total", "reason" => "qos0_offline"),
            dropped_session_expired: counter!("roostd_messages_dropped_total", "reason" => "session_expired"),
            connections_total: counter!("roostd_connections_total"),
            connections_refused_limit: counter!("roostd_connections_refused_total", "reason" => "max_connections"),
            protocol_errors: counter!("roostd_protocol_errors_total"),
            clients_connected: gauge!("roostd_clients_connected"),
        }
    }

    /// Counts `n` messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::Qos0Offline => &self.dropped_qos0_offline,
            DropReason::SessionExpired => &self.dropped_session_expired,
        }
        .increment(n);
    }
}
