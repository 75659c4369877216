//! `$SYS` topics, published retained every sys_interval with the names a Mosquitto user knows.
//! Filters starting with a wildcard do not match them [MQTT-4.7.2-1]: subscribe to `$SYS/#`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqttbytes::QoS;
use tokio_util::sync::CancellationToken;

use crate::message::Publication;
use crate::router::{MatchBuffer, Router};

/// Exponentially damped per-minute rates over 1, 5 and 15 minutes, like Mosquitto's `load/...`.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    last: u64,
    avg: [f64; 3],
}

impl Load {
    fn update(&mut self, total: u64, interval: Duration) {
        let secs = interval.as_secs_f64().max(0.001);
        let per_minute = total.saturating_sub(self.last) as f64 * 60.0 / secs;
        self.last = total;
        for (avg, period) in self.avg.iter_mut().zip([60.0, 300.0, 900.0]) {
            let decay = (-secs / period).exp();
            *avg = *avg * decay + per_minute * (1.0 - decay);
        }
    }
}

/// Publishes `$SYS/broker/...` every `interval` until shutdown.
pub async fn run(router: Arc<Router>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut matches = MatchBuffer::new();
    let mut loads = [Load::default(); 5];
    publish(
        &router,
        &mut matches,
        "$SYS/broker/version",
        format!("roostd {}", env!("CARGO_PKG_VERSION")),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        publish_all(&router, &mut matches, &mut loads, interval);
    }
}

fn publish(router: &Router, matches: &mut MatchBuffer, topic: &str, value: String) {
    let msg = Publication {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::from(value),
        qos: QoS::AtMostOnce,
        retain: true,
        received_at: std::time::Instant::now(),
    };
    let _ = router.publish(Arc::new(msg), matches, None);
}

fn publish_all(
    router: &Router,
    matches: &mut MatchBuffer,
    loads: &mut [Load; 5],
    interval: Duration,
) {
    let m = router.metrics();
    let s = &m.stats;
    let g = router.gauges();
    let received = s.received_total();
    let sent = s.sent_total();
    let bytes_received = s.bytes_received.load(Relaxed);
    let bytes_sent = s.bytes_sent.load(Relaxed);
    let connections = s.connections_total.load(Relaxed);
    let connected = g.sessions_online;
    let mut values: Vec<(String, String)> = vec![
        ("uptime".into(), format!("{} seconds", m.uptime().as_secs())),
        ("clients/connected".into(), connected.to_string()),
        ("clients/active".into(), connected.to_string()),
        (
            "clients/disconnected".into(),
            g.sessions_offline.to_string(),
        ),
        ("clients/inactive".into(), g.sessions_offline.to_string()),
        (
            "clients/total".into(),
            (g.sessions_online + g.sessions_offline).to_string(),
        ),
        ("messages/received".into(), received.to_string()),
        ("messages/sent".into(), sent.to_string()),
        ("publish/messages/received".into(), received.to_string()),
        ("publish/messages/sent".into(), sent.to_string()),
        (
            "publish/messages/dropped".into(),
            s.dropped_total().to_string(),
        ),
        ("bytes/received".into(), bytes_received.to_string()),
        ("bytes/sent".into(), bytes_sent.to_string()),
        (
            "retained messages/count".into(),
            g.retained_messages.to_string(),
        ),
        ("subscriptions/count".into(), g.subscriptions.to_string()),
        (
            "store/messages/count".into(),
            (g.queued_messages + g.inflight_messages).to_string(),
        ),
    ];
    let names = [
        ("messages/received", received),
        ("messages/sent", sent),
        ("bytes/received", bytes_received),
        ("bytes/sent", bytes_sent),
        ("connections", connections),
    ];
    for (load, (name, total)) in loads.iter_mut().zip(names) {
        load.update(total, interval);
        for (avg, window) in load.avg.iter().zip(["1min", "5min", "15min"]) {
            values.push((format!("load/{name}/{window}"), format!("{avg:.2}")));
        }
    }
    let slow = router.slow_clients(10);
    values.push((
        "clients/slow".into(),
        serde_json::to_string(&slow).unwrap_or_else(|_| "[]".into()),
    ));
    for (name, value) in values {
        publish(router, matches, &format!("$SYS/broker/{name}"), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_converges_to_the_per_minute_rate() {
        let mut l = Load::default();
        let mut total = 0;
        for _ in 0..200 {
            total += 100; // 100 per 10 s = 600 per minute
            l.update(total, Duration::from_secs(10));
        }
        assert!((l.avg[0] - 600.0).abs() < 1.0, "{:?}", l.avg);
        assert!((l.avg[1] - 600.0).abs() < 10.0, "{:?}", l.avg);
    }
}
