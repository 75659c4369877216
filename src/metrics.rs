//! Every metric name in one place.
//!
//! The hot path only adds to relaxed atomics in [`Stats`] (per batch where it can); the
//! Prometheus handles are brought up to date when `/metrics` is scraped, so a message costs no
//! key lookup, lock or string formatting. Labels are bounded (qos, reason, listener), never
//! client ids or topics: per-client figures are in the slow-client report instead.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::session::DropReason;

/// Broker-wide counters, updated on the hot path with relaxed atomics.
#[derive(Debug, Default)]
pub struct Stats {
    /// PUBLISH packets received from clients, by QoS.
    pub received: [AtomicU64; 3],
    /// PUBLISH packets written to clients, by QoS.
    pub sent: [AtomicU64; 3],
    /// Bytes read from client sockets.
    pub bytes_received: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_sent: AtomicU64,
    /// Messages not delivered, by `DropReason::index`.
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    /// Connections accepted (CONNACK 0).
    pub connections_total: AtomicU64,
    /// CONNECTs refused with a non-zero CONNACK.
    pub connections_refused: AtomicU64,
    /// Sockets closed at once because max_connections was reached.
    pub connections_over_limit: AtomicU64,
    /// Sockets that never sent CONNECT in time.
    pub connect_timeouts: AtomicU64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// Connections closed by keepalive timeout.
    pub keepalive_timeouts: AtomicU64,
    /// Clients currently connected.
    pub clients_connected: AtomicI64,
    /// Wills published.
    pub wills_published: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// Certificate reloads refused because the new files were bad.
    pub tls_reload_failures: AtomicU64,
    /// Publishers paused because writes to disk fell behind (max_storage_backlog).
    pub storage_pauses: AtomicU64,
    /// Connection tasks that panicked (caught; the connection was closed).
    pub panics: AtomicU64,
    /// Retained PUBLISHes not retained: over max_retained_messages or max_retained_bytes.
    pub retained_refused: AtomicU64,
}

impl Stats {
    /// Counts `n` messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason.index()].fetch_add(n, Relaxed);
    }

    /// Total messages dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|d| d.load(Relaxed)).sum()
    }

    fn sum(a: &[AtomicU64; 3]) -> u64 {
        a.iter().map(|x| x.load(Relaxed)).sum()
    }

    /// PUBLISH packets received, all QoS.
    pub fn received_total(&self) -> u64 {
        Self::sum(&self.received)
    }

    /// PUBLISH packets sent, all QoS.
    pub fn sent_total(&self) -> u64 {
        Self::sum(&self.sent)
    }
}

/// Figures computed from the session registry at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub sessions_online: u64,
    pub sessions_offline: u64,
    pub queued_messages: u64,
    pub inflight_messages: u64,
    pub subscriptions: u64,
    pub retained_messages: u64,
    /// Topic + payload bytes of the retained messages.
    pub retained_bytes: u64,
    /// Deepest single client queue.
    pub max_client_queue: u64,
    /// Failed storage commits.
    pub storage_errors: u64,
    /// Bytes of writes waiting for the disk.
    pub storage_backlog_bytes: u64,
}

/// Histogram buckets for publish-to-delivery latency, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0, 10.0,
];

/// Prometheus handles, registered once against this broker's own recorder (several brokers
/// in one process, as in the tests, do not share figures).
struct Handles {
    received: [Counter; 3],
    sent: [Counter; 3],
    bytes_received: Counter,
    bytes_sent: Counter,
    dropped: Vec<Counter>,
    connections_total: Counter,
    connections_refused: Counter,
    connections_over_limit: Counter,
    connect_timeouts: Counter,
    protocol_errors: Counter,
    keepalive_timeouts: Counter,
    wills: Counter,
    tls_handshake_failures: Counter,
    tls_reload_failures: Counter,
    clients_connected: Gauge,
    sessions_online: Gauge,
    sessions_offline: Gauge,
    queued: Gauge,
    inflight: Gauge,
    subscriptions: Gauge,
    retained: Gauge,
    max_client_queue: Gauge,
    storage_errors: Counter,
    storage_pauses: Counter,
    storage_backlog: Gauge,
    panics: Counter,
    retained_refused: Counter,
    retained_bytes: Gauge,
    log_write_errors: Counter,
    uptime: Gauge,
    resident_memory: Gauge,
    /// A gauge: the counter type holds whole numbers only, and CPU seconds need fractions.
    cpu_seconds: Gauge,
    open_fds: Gauge,
}

/// Connections of one listener: `roostd_listener_connections{listener, protocol}` (open now)
/// and `roostd_listener_connections_total{listener, protocol}` (accepted).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    pub open: AtomicI64,
}

/// A listener's figures and, with an exporter, their series (accepted, open).
type ListenerSeries = (Arc<ListenerStats>, Option<(Counter, Gauge)>);

/// Metric state of one broker.
pub struct Metrics {
    /// Hot-path counters.
    pub stats: Stats,
    /// Publish-to-delivery latency, sampled once per write batch.
    pub delivery_latency: Histogram,
    exporter: Option<(PrometheusRecorder, Handles)>,
    started: std::time::Instant,
    /// Per TLS listener: the expiry gauge and the certificate's notAfter (unix seconds).
    cert_expiry: parking_lot::Mutex<Vec<(Gauge, Arc<AtomicI64>)>>,
    /// Per listener: its figures and their series.
    listeners: parking_lot::Mutex<Vec<ListenerSeries>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Metrics {
    /// Metrics without a Prometheus exporter (metrics_enabled = false).
    pub fn disabled() -> Metrics {
        Metrics {
            stats: Stats::default(),
            delivery_latency: Histogram::noop(),
            exporter: None,
            started: std::time::Instant::now(),
            cert_expiry: Default::default(),
            listeners: Default::default(),
        }
    }

    /// Metrics with a Prometheus recorder of their own.
    pub fn with_exporter() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("roostd_delivery_latency_seconds".into()),
                &LATENCY_BUCKETS,
            )
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let (handles, latency) = metrics::with_local_recorder(&recorder, || {
            describe();
            let q = |name: &'static str| {
                [
                    counter!(name, "qos" => "0"),
                    counter!(name, "qos" => "1"),
                    counter!(name, "qos" => "2"),
                ]
            };
            let handles = Handles {
                received: q("roostd_messages_received_total"),
                sent: q("roostd_messages_sent_total"),
                bytes_received: counter!("roostd_received_bytes_total"),
                bytes_sent: counter!("roostd_sent_bytes_total"),
                dropped: DropReason::ALL
                    .iter()
                    .map(|r| counter!("roostd_messages_dropped_total", "reason" => r.as_str()))
                    .collect(),
                connections_total: counter!("roostd_connections_total"),
                connections_refused: counter!("roostd_connections_refused_total", "reason" => "connack"),
                connections_over_limit: counter!("roostd_connections_refused_total", "reason" => "max_connections"),
                connect_timeouts: counter!("roostd_connections_refused_total", "reason" => "connect_timeout"),
                protocol_errors: counter!("roostd_protocol_errors_total"),
                keepalive_timeouts: counter!("roostd_keepalive_timeouts_total"),
                wills: counter!("roostd_wills_published_total"),
                tls_handshake_failures: counter!("roostd_tls_handshake_failures_total"),
                tls_reload_failures: counter!("roostd_tls_reload_failures_total"),
                clients_connected: gauge!("roostd_clients_connected"),
                sessions_online: gauge!("roostd_sessions", "state" => "online"),
                sessions_offline: gauge!("roostd_sessions", "state" => "offline"),
                queued: gauge!("roostd_queued_messages"),
                inflight: gauge!("roostd_inflight_messages"),
                subscriptions: gauge!("roostd_subscriptions"),
                retained: gauge!("roostd_retained_messages"),
                max_client_queue: gauge!("roostd_client_queue_max_messages"),
                storage_errors: counter!("roostd_storage_errors_total"),
                storage_pauses: counter!("roostd_storage_backlog_pauses_total"),
                storage_backlog: gauge!("roostd_storage_backlog_bytes"),
                panics: counter!("roostd_panics_total"),
                retained_refused: counter!("roostd_retained_refused_total"),
                retained_bytes: gauge!("roostd_retained_bytes"),
                log_write_errors: counter!("roostd_log_write_errors_total"),
                uptime: gauge!("roostd_uptime_seconds"),
                resident_memory: gauge!("process_resident_memory_bytes"),
                cpu_seconds: gauge!("process_cpu_seconds_total"),
                open_fds: gauge!("process_open_fds"),
            };
            (handles, histogram!("roostd_delivery_latency_seconds"))
        });
        Metrics {
            stats: Stats::default(),
            delivery_latency: latency,
            exporter: Some((recorder, handles)),
            started: std::time::Instant::now(),
            cert_expiry: Default::default(),
            listeners: Default::default(),
        }
    }

    /// Time since the broker started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Drains histogram samples into their buckets; run periodically so that an unscraped
    /// broker does not accumulate samples.
    pub fn upkeep(&self) {
        if let Some((recorder, _)) = &self.exporter {
            recorder.handle().run_upkeep();
        }
    }

    /// Exports `roostd_tls_certificate_expiry_seconds{listener}` computed at each scrape from
    /// `not_after` (unix seconds), which certificate reloads update.
    pub fn track_certificate_expiry(&self, listener: &str, not_after: Arc<AtomicI64>) {
        let gauge = match &self.exporter {
            Some((recorder, _)) => metrics::with_local_recorder(
                recorder,
                || gauge!("roostd_tls_certificate_expiry_seconds", "listener" => listener.to_string()),
            ),
            None => return,
        };
        self.cert_expiry.lock().push((gauge, not_after));
    }

    /// The figures of one listener (label: its address; protocol: mqtt, mqtts, ws, wss).
    pub fn listener(&self, listener: &str, protocol: &'static str) -> Arc<ListenerStats> {
        let stats = Arc::new(ListenerStats::default());
        let series = self.exporter.as_ref().map(|(recorder, _)| {
            metrics::with_local_recorder(recorder, || {
                let labels = [
                    ("listener", listener.to_string()),
                    ("protocol", protocol.to_string()),
                ];
                (
                    counter!("roostd_listener_connections_total", &labels),
                    gauge!("roostd_listener_connections", &labels),
                )
            })
        });
        self.listeners.lock().push((stats.clone(), series));
        stats
    }

    /// The Prometheus text exposition, brought up to date. None when disabled.
    pub fn render(&self, gauges: &Gauges) -> Option<String> {
        let (recorder, h) = self.exporter.as_ref()?;
        let s = &self.stats;
        for q in 0..3 {
            h.received[q].absolute(s.received[q].load(Relaxed));
            h.sent[q].absolute(s.sent[q].load(Relaxed));
        }
        h.bytes_received.absolute(s.bytes_received.load(Relaxed));
        h.bytes_sent.absolute(s.bytes_sent.load(Relaxed));
        for (i, c) in h.dropped.iter().enumerate() {
            c.absolute(s.dropped[i].load(Relaxed));
        }
        h.connections_total
            .absolute(s.connections_total.load(Relaxed));
        h.connections_refused
            .absolute(s.connections_refused.load(Relaxed));
        h.connections_over_limit
            .absolute(s.connections_over_limit.load(Relaxed));
        h.connect_timeouts
            .absolute(s.connect_timeouts.load(Relaxed));
        h.protocol_errors.absolute(s.protocol_errors.load(Relaxed));
        h.keepalive_timeouts
            .absolute(s.keepalive_timeouts.load(Relaxed));
        h.wills.absolute(s.wills_published.load(Relaxed));
        h.tls_handshake_failures
            .absolute(s.tls_handshake_failures.load(Relaxed));
        h.tls_reload_failures
            .absolute(s.tls_reload_failures.load(Relaxed));
        h.clients_connected
            .set(s.clients_connected.load(Relaxed) as f64);
        h.sessions_online.set(gauges.sessions_online as f64);
        h.sessions_offline.set(gauges.sessions_offline as f64);
        h.queued.set(gauges.queued_messages as f64);
        h.inflight.set(gauges.inflight_messages as f64);
        h.subscriptions.set(gauges.subscriptions as f64);
        h.retained.set(gauges.retained_messages as f64);
        h.max_client_queue.set(gauges.max_client_queue as f64);
        h.storage_errors.absolute(gauges.storage_errors);
        h.storage_pauses.absolute(s.storage_pauses.load(Relaxed));
        h.storage_backlog.set(gauges.storage_backlog_bytes as f64);
        h.panics.absolute(s.panics.load(Relaxed));
        h.retained_refused
            .absolute(s.retained_refused.load(Relaxed));
        h.retained_bytes.set(gauges.retained_bytes as f64);
        h.log_write_errors.absolute(crate::logging::write_errors());
        h.uptime.set(self.uptime().as_secs_f64());
        let p = process_figures();
        h.resident_memory.set(p.rss_bytes as f64);
        h.cpu_seconds.set(p.cpu_millis as f64 / 1000.0);
        h.open_fds.set(p.open_fds as f64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for (stats, series) in self.listeners.lock().iter() {
            if let Some((accepted, open)) = series {
                accepted.absolute(stats.accepted.load(Relaxed));
                open.set(stats.open.load(Relaxed) as f64);
            }
        }
        for (gauge, not_after) in self.cert_expiry.lock().iter() {
            gauge.set((not_after.load(Relaxed) - now) as f64);
        }
        let handle = recorder.handle();
        handle.run_upkeep();
        Some(handle.render())
    }
}

fn describe() {
    describe_counter!(
        "roostd_listener_connections_total",
        "Connections accepted, by listener (address) and protocol (mqtt, mqtts, ws, wss)."
    );
    describe_gauge!(
        "roostd_listener_connections",
        "Connections open now, by listener (address) and protocol (mqtt, mqtts, ws, wss)."
    );
    describe_counter!(
        "roostd_panics_total",
        "Connection tasks that panicked; the panic was caught and the connection closed (a bug: please report it)."
    );
    describe_counter!(
        "roostd_retained_refused_total",
        "Retained PUBLISHes delivered but not retained: over max_retained_messages or max_retained_bytes."
    );
    describe_gauge!(
        "roostd_retained_bytes",
        Unit::Bytes,
        "Topic + payload bytes of all retained messages."
    );
    describe_counter!(
        "roostd_log_write_errors_total",
        "Log lines that could not be written (stderr closed or full) and were dropped."
    );
    describe_counter!(
        "roostd_messages_received_total",
        "PUBLISH packets received from clients, by QoS."
    );
    describe_counter!(
        "roostd_messages_sent_total",
        "PUBLISH packets sent to clients, by delivery QoS."
    );
    describe_counter!(
        "roostd_received_bytes_total",
        Unit::Bytes,
        "Bytes read from client sockets."
    );
    describe_counter!(
        "roostd_sent_bytes_total",
        Unit::Bytes,
        "Bytes written to client sockets."
    );
    describe_counter!(
        "roostd_messages_dropped_total",
        // From the reasons themselves, so a new one cannot be missing here.
        format!(
            "Messages not delivered, by reason: {}.",
            DropReason::ALL
                .iter()
                .map(|r| format!("{} ({})", r.as_str(), r.explain()))
                .collect::<Vec<_>>()
                .join("; ")
        )
    );
    describe_counter!(
        "roostd_connections_total",
        "Client connections accepted (CONNACK 0)."
    );
    describe_counter!(
        "roostd_connections_refused_total",
        "Connections refused, by reason."
    );
    describe_counter!(
        "roostd_protocol_errors_total",
        "Connections closed for a protocol violation."
    );
    describe_counter!(
        "roostd_keepalive_timeouts_total",
        "Connections closed by keepalive timeout."
    );
    describe_counter!("roostd_wills_published_total", "Last wills published.");
    describe_counter!(
        "roostd_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out."
    );
    describe_counter!(
        "roostd_tls_reload_failures_total",
        "Certificate reloads refused because the new files were bad."
    );
    describe_gauge!("roostd_clients_connected", "Clients currently connected.");
    describe_gauge!(
        "roostd_sessions",
        "Sessions by state (online, offline persistent)."
    );
    describe_gauge!(
        "roostd_queued_messages",
        "Messages queued for delivery, all sessions."
    );
    describe_gauge!(
        "roostd_inflight_messages",
        "QoS 1/2 messages sent and not yet acknowledged, all sessions."
    );
    describe_gauge!(
        "roostd_subscriptions",
        "Subscriptions (filter, session pairs)."
    );
    describe_gauge!("roostd_retained_messages", "Retained messages.");
    describe_gauge!(
        "roostd_client_queue_max_messages",
        "Deepest queue of any single client."
    );
    describe_counter!(
        "roostd_storage_errors_total",
        "Failed storage commits (persistence)."
    );
    describe_counter!(
        "roostd_storage_backlog_pauses_total",
        "Publishers paused because writes to disk fell behind (max_storage_backlog)."
    );
    describe_gauge!(
        "roostd_storage_backlog_bytes",
        Unit::Bytes,
        "Bytes of writes waiting for the disk (persistence)."
    );
    describe_gauge!(
        "roostd_uptime_seconds",
        Unit::Seconds,
        "Seconds since the broker started."
    );
    describe_gauge!(
        "roostd_tls_certificate_expiry_seconds",
        Unit::Seconds,
        "Seconds until the listener's certificate expires."
    );
    describe_histogram!("roostd_delivery_latency_seconds", Unit::Seconds, "Time from a PUBLISH being decoded to its delivery being encoded for a subscriber (sampled once per write batch).");
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the broker process."
    );
    describe_gauge!(
        "process_cpu_seconds_total",
        Unit::Seconds,
        "CPU time used by the broker process (user + system), to 10 ms; only ever grows, so rate() applies."
    );
    describe_gauge!(
        "process_open_fds",
        "Open file descriptors of the broker process."
    );
}

/// Process figures read from /proc (zero where unavailable).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFigures {
    pub rss_bytes: u64,
    pub cpu_millis: u64,
    pub open_fds: u64,
}

/// Reads this process's memory, CPU time and open descriptors from /proc.
pub fn process_figures() -> ProcessFigures {
    let mut p = ProcessFigures::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            p.rss_bytes = kib * 1024;
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // Index 11 and 12 after ')' (state is index 0); the kernel's USER_HZ is 100 here.
            p.cpu_millis = (ticks(11) + ticks(12)) * 10;
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        p.open_fds = dir.count() as u64;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scrape carries CPU seconds with their fraction (a counter of whole seconds showed
    /// steps or zeros), and the drop counter's help names every reason (from the enum).
    #[test]
    fn cpu_seconds_have_fractions_and_drop_help_lists_every_reason() {
        let m = Metrics::with_exporter();
        let cpu = |text: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with("process_cpu_seconds_total "))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .expect("process_cpu_seconds_total")
        };
        let before = cpu(&m.render(&Gauges::default()).unwrap());
        // Burn a little CPU (tens of ms): whole seconds would show a step of 0 or 1.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert!(x != 1);
        let text = m.render(&Gauges::default()).unwrap();
        let grown = cpu(&text) - before;
        assert!(grown > 0.0 && grown < 1.0, "CPU seconds grew by {grown}");
        let help = text
            .lines()
            .find(|l| l.starts_with("# HELP roostd_messages_dropped_total"))
            .unwrap();
        for r in DropReason::ALL {
            assert!(help.contains(r.as_str()), "{help} lacks {}", r.as_str());
        }
    }
}
