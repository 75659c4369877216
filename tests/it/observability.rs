//! Metrics, $SYS and the Grafana dashboard, checked against real scrapes of /metrics and a
//! real Prometheus server.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A broker with metrics on an ephemeral port; returns it and the metrics address.
async fn broker_with_metrics(extra: &str) -> (TestBroker, SocketAddr) {
    let text = config_toml(&format!("metrics_port = 0\n{extra}"));
    let cfg = roostd::Config::from_toml_str(&text).unwrap();
    let b = roostd::Broker::bind(cfg).await.unwrap();
    let metrics = b.metrics_addr().expect("metrics endpoint");
    let (addr, shutdown) = (b.local_addrs()[0], b.shutdown_token());
    let handle = tokio::spawn(b.run());
    (
        TestBroker {
            addr,
            shutdown,
            handle: Some(handle),
        },
        metrics,
    )
}

/// GET `path` over plain HTTP/1.1; returns (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_string())
    };
    let text = tokio::time::timeout(TIMEOUT, fut)
        .await
        .expect("HTTP timeout")
        .expect("HTTP");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("HTTP response without head");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of the sample `series` (name with labels exactly as rendered), if present.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

async fn scrape(metrics: SocketAddr) -> String {
    let (status, body) = http_get(metrics, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    body
}

#[tokio::test]
async fn counters_count_every_published_and_delivered_message() {
    let (b, metrics) = broker_with_metrics("").await;
    let mut sub = Raw::client(b.addr, "m-sub").await;
    sub.send(&subscribe(1, &[("m/#", 1)])).await;
    sub.expect_kind(SUBACK).await;
    let mut publ = Raw::client(b.addr, "m-pub").await;
    for i in 0..50u16 {
        publ.send(&publish("m/t", b"x", 1, false, false, i + 1))
            .await;
    }
    for _ in 0..50 {
        publ.expect_kind(PUBACK).await;
        sub.recv_publish_ack().await;
    }
    for i in 0..7 {
        publ.send(&publish("m/q0", &[i], 0, false, false, 0)).await;
        sub.recv_publish().await;
    }
    let s = scrape(metrics).await;
    assert_eq!(
        sample(&s, "roostd_messages_received_total{qos=\"1\"}"),
        Some(50.0),
        "{s}"
    );
    assert_eq!(
        sample(&s, "roostd_messages_received_total{qos=\"0\"}"),
        Some(7.0)
    );
    assert_eq!(
        sample(&s, "roostd_messages_sent_total{qos=\"1\"}"),
        Some(50.0)
    );
    assert_eq!(
        sample(&s, "roostd_messages_sent_total{qos=\"0\"}"),
        Some(7.0)
    );
    assert_eq!(sample(&s, "roostd_clients_connected"), Some(2.0));
    assert_eq!(sample(&s, "roostd_subscriptions"), Some(1.0));
    assert!(sample(&s, "roostd_received_bytes_total").unwrap() > 0.0);
    assert!(sample(&s, "process_resident_memory_bytes").unwrap() > 0.0);
}

#[tokio::test]
async fn drops_are_counted_by_reason_and_the_slow_client_is_named() {
    let (b, metrics) = broker_with_metrics("max_queued_messages = 2").await;
    // A persistent session goes offline with a subscription.
    let (mut slow, _) = Raw::connect_ok(b.addr, &Connect::new("slowpoke").clean(false)).await;
    slow.send(&subscribe(1, &[("d/#", 1)])).await;
    slow.expect_kind(SUBACK).await;
    slow.send(&disconnect()).await;
    expect_closed(&mut slow.io, TIMEOUT).await;
    let mut publ = Raw::client(b.addr, "d-pub").await;
    for i in 0..5u16 {
        publ.send(&publish("d/t", b"q1", 1, false, false, i + 1))
            .await;
        publ.expect_kind(PUBACK).await;
    }
    for _ in 0..3 {
        publ.send(&publish("d/t", b"q0", 0, false, false, 0)).await;
    }
    publ.send(&pingreq()).await;
    publ.expect_kind(PINGRESP).await;
    let s = scrape(metrics).await;
    assert_eq!(
        sample(&s, "roostd_messages_dropped_total{reason=\"queue_full\"}"),
        Some(3.0),
        "{s}"
    );
    assert_eq!(
        sample(&s, "roostd_messages_dropped_total{reason=\"qos0_offline\"}"),
        Some(3.0)
    );
    assert_eq!(sample(&s, "roostd_sessions{state=\"offline\"}"), Some(1.0));
    assert_eq!(sample(&s, "roostd_queued_messages"), Some(2.0));
    let (status, body) = http_get(metrics, "/clients/slow").await;
    assert!(status.contains("200"));
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report[0]["client_id"], "slowpoke", "{body}");
    assert_eq!(report[0]["dropped"], 6);
    assert_eq!(report[0]["queued"], 2);
    assert_eq!(report[0]["online"], false);
    // An object keyed by reason, not a list of pairs (issue 12).
    assert_eq!(report[0]["dropped_by_reason"]["queue_full"], 3, "{body}");
    assert_eq!(report[0]["dropped_by_reason"]["qos0_offline"], 3, "{body}");
}

#[tokio::test]
async fn sys_topics_arrive_retained_with_plausible_values() {
    let (b, _) = broker_with_metrics("sys_interval = 1").await;
    let mut c = Raw::client(b.addr, "sys-reader").await;
    // [MQTT-4.7.2-1] `#` does not match $SYS; `$SYS/#` does.
    c.send(&subscribe(1, &[("#", 0), ("$SYS/broker/#", 0)]))
        .await;
    c.expect_kind(SUBACK).await;
    let mut seen = std::collections::HashMap::new();
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/subscriptions/count",
    ];
    // The first values are the retained ones from before this client connected; read on
    // until an update (every second) counts this client and its two subscriptions.
    let fresh = |seen: &std::collections::HashMap<String, String>| {
        wanted.iter().all(|w| seen.contains_key(*w))
            && seen["$SYS/broker/clients/connected"]
                .parse::<u64>()
                .unwrap_or(0)
                >= 1
            && seen["$SYS/broker/subscriptions/count"]
                .parse::<u64>()
                .unwrap_or(0)
                >= 2
    };
    while !fresh(&seen) {
        let p = c.recv_publish().await;
        assert!(
            p.topic.starts_with("$SYS/broker/"),
            "unexpected {}",
            p.topic
        );
        seen.insert(p.topic.clone(), String::from_utf8(p.payload).unwrap());
    }
    assert!(seen["$SYS/broker/version"].starts_with("roostd "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    assert!(
        seen["$SYS/broker/clients/connected"]
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(
        seen["$SYS/broker/subscriptions/count"]
            .parse::<u64>()
            .unwrap()
            >= 2
    );
    seen["$SYS/broker/load/messages/received/1min"]
        .parse::<f64>()
        .unwrap();
}

/// Every metric the dashboard's queries use must be one a real scrape exports.
#[tokio::test]
async fn grafana_dashboard_only_uses_exported_metrics() {
    let dir = std::env::temp_dir().join(format!("roostd-dash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A TLS listener, so the certificate expiry gauge is exported too.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
    let text = format!(
                "allow_anonymous = true\nmetrics_port = 0\npersistence = false\n[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\n[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\ncertfile = {:?}\nkeyfile = {:?}\n",
        dir.join("c.pem"),
        dir.join("k.pem")
    );
    let b = roostd::Broker::bind(roostd::Config::from_toml_str(&text).unwrap())
        .await
        .unwrap();
    let (addr, metrics, shutdown) = (
        b.local_addrs()[0],
        b.metrics_addr().unwrap(),
        b.shutdown_token(),
    );
    let _b = TestBroker {
        addr,
        shutdown,
        handle: Some(tokio::spawn(b.run())),
    };
    // Some traffic so the latency histogram has samples.
    let mut c = Raw::client(addr, "dash").await;
    c.send(&subscribe(1, &[("x", 0)])).await;
    c.expect_kind(SUBACK).await;
    c.send(&publish("x", b"1", 0, false, false, 0)).await;
    c.recv_publish().await;
    let s = scrape(metrics).await;
    let exported: BTreeSet<String> = s
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();

    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/roostd.json"))
            .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(
        exprs.len() >= 15,
        "dashboard has too few queries: {}",
        exprs.len()
    );
    let mut used = BTreeSet::new();
    for e in &exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let rest = &e[i..];
            let starts = (rest.starts_with("roostd_") || rest.starts_with("process_"))
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
            if starts {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                used.insert(rest[..len].to_string());
                i += len;
            } else {
                i += 1;
            }
        }
    }
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf).filter(|b| exported.contains(*b)))
            .unwrap_or(name);
        assert!(
            exported.contains(base),
            "dashboard uses {name}, which /metrics does not export. Exported: {exported:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Start a real Prometheus scraping the broker, then ask its HTTP API.
#[tokio::test]
async fn a_real_prometheus_scrapes_the_broker() {
    let prom = "prometheus";
    if !interop_binaries(&[prom]) {
        return;
    }
    let (b, metrics) = broker_with_metrics("").await;
    let dir = std::env::temp_dir().join(format!("roostd-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: roostd\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"{metrics}\"]\n"),
    )
    .unwrap();
    let web = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = tokio::process::Command::new(prom)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Publish before querying: the counter must be seen increasing.
    let query = |q: &'static str| async move {
        let path = format!("/api/v1/query?query={}", q);
        let fut = async {
            let mut s = TcpStream::connect(web).await.ok()?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(&buf).to_string();
            let body = text.split_once("\r\n\r\n")?.1.to_string();
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        };
        tokio::time::timeout(Duration::from_secs(2), fut)
            .await
            .ok()
            .flatten()
    };
    let wait_for = |q: &'static str, want: f64| async move {
        for _ in 0..240 {
            if let Some(v) = query(q).await {
                if v >= want {
                    return v;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("Prometheus never reported {q} >= {want}");
    };
    // up{job="roostd"} == 1: the target is scraped.
    wait_for("up%7Bjob%3D%22roostd%22%7D", 1.0).await;
    let mut publ = Raw::client(b.addr, "prom-pub").await;
    for i in 0..25u16 {
        publ.send(&publish("prom/t", b"x", 1, false, false, i + 1))
            .await;
        publ.expect_kind(PUBACK).await;
    }
    wait_for("roostd_messages_received_total%7Bqos%3D%221%22%7D", 25.0).await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
