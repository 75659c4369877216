//! TLS listeners: server-auth and mutual TLS with rumqttc, refusal of unknown CAs and of
//! plaintext, handshake timeout, certificate reload without dropping clients, refusal of a
//! broken replacement, startup errors, and mosquitto_pub/mosquitto_sub with --cafile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rumqttc::{
    AsyncClient, Event, MqttOptions, Packet as RPacket, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::*;

/// A CA and certificates it signed, as PEM files in a temp directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("roostd-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// Writes `<stem>.pem`/`<stem>.key` for a leaf with CN `cn` (and localhost/127.0.0.1 SANs).
    fn leaf(&self, stem: &str, cn: &str, not_after: Option<(i32, u8, u8)>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some((y, m, d)) = not_after {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.path(&format!("{stem}.pem")), &c).unwrap();
        std::fs::write(self.path(&format!("{stem}.key")), &k).unwrap();
        (c, k)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ca_pem: &Path, client: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

use rustls::pki_types::pem::PemObject;

fn tls_listener_toml(pki: &Pki, extra: &str) -> String {
    format!(
        "[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\ncertfile = {:?}\nkeyfile = {:?}\n{extra}\n",
        pki.path("server.pem"),
        pki.path("server.key")
    )
}

/// A broker whose only listener is the TLS one described by `listener_toml`.
async fn start_tls_broker(
    global: &str,
    listener_toml: &str,
) -> (
    TestBroker,
    Arc<roostd::router::Router>,
    Arc<tokio::sync::Notify>,
) {
    let text = format!("metrics_port = 0\npersistence = false\n{global}\n{listener_toml}");
    start_from_toml(&text).await
}

async fn tls_connect(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    tokio::time::timeout(
        TIMEOUT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timeout"))?
}

/// TLS + CONNECT; returns the stream and the CONNACK return code.
async fn mqtt_over_tls(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
    id: &str,
) -> (TlsStream<TcpStream>, u8) {
    let mut s = tls_connect(addr, cfg).await.expect("handshake");
    s.write_all(&Connect::new(id).bytes()).await.unwrap();
    let p = tokio::time::timeout(TIMEOUT, read_packet(&mut s))
        .await
        .unwrap()
        .unwrap()
        .expect("CONNACK");
    assert_eq!(p.header, 0x20);
    (s, p.body[1])
}

fn rumqttc_tls(
    id: &str,
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> (
    AsyncClient,
    tokio::sync::mpsc::Receiver<rumqttc::Publish>,
    tokio::sync::oneshot::Receiver<rumqttc::ConnectReturnCode>,
) {
    let mut o = MqttOptions::new(id, "localhost", addr.port());
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(cfg),
    )));
    let (client, mut el) = AsyncClient::new(o, 16);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (ctx, crx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ctx = Some(ctx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(RPacket::ConnAck(a))) => {
                    if let Some(c) = ctx.take() {
                        let _ = c.send(a.code);
                    }
                }
                Ok(Event::Incoming(RPacket::Publish(p))) => {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (client, rx, crx)
}

#[tokio::test]
async fn rumqttc_publishes_and_subscribes_over_server_authenticated_tls() {
    let pki = Pki::new("srvauth");
    pki.leaf("server", "localhost", None);
    let (b, _, _) = start_tls_broker("allow_anonymous = true", &tls_listener_toml(&pki, "")).await;
    let cfg = client_config(&pki.path("ca.pem"), None);
    let (sub, mut rx, connack) = rumqttc_tls("tls-sub", b.addr, cfg.clone());
    assert_eq!(
        tokio::time::timeout(TIMEOUT, connack)
            .await
            .unwrap()
            .unwrap(),
        rumqttc::ConnectReturnCode::Success
    );
    sub.subscribe("tls/#", QoS::AtLeastOnce).await.unwrap();
    // Wait for the subscription with a retained marker that only a subscribed client gets.
    let (publ, _prx, pconn) = rumqttc_tls("tls-pub", b.addr, cfg);
    tokio::time::timeout(TIMEOUT, pconn).await.unwrap().unwrap();
    publ.publish("tls/ready", QoS::AtLeastOnce, true, "ready")
        .await
        .unwrap();
    let first = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.topic, "tls/ready");
    publ.publish("tls/t", QoS::AtLeastOnce, false, "over tls")
        .await
        .unwrap();
    let p = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("tls/t", &b"over tls"[..])
    );
}

#[tokio::test]
async fn mutual_tls_identity_becomes_the_user_name_and_unknown_ca_is_refused() {
    let pki = Pki::new("mutual");
    pki.leaf("server", "localhost", None);
    pki.leaf("client", "device-17", None);
    let other = Pki::new("mutual-other");
    other.leaf("client", "intruder", None);
    let listener = tls_listener_toml(
        &pki,
        &format!(
            "cafile = {:?}\nrequire_certificate = true\nuse_identity_as_username = true",
            pki.path("ca.pem")
        ),
    );
    // Anonymous clients are refused, so only the certificate identity can get in.
    let (b, router, _) = start_tls_broker("allow_anonymous = false", &listener).await;
    let ok = client_config(
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    );
    let (c, _rx, connack) = rumqttc_tls("mutual-ok", b.addr, ok);
    assert_eq!(
        tokio::time::timeout(TIMEOUT, connack)
            .await
            .unwrap()
            .unwrap(),
        rumqttc::ConnectReturnCode::Success
    );
    drop(c);

    // A client certificate signed by another CA is refused during the handshake.
    let bad = client_config(
        &pki.path("ca.pem"),
        Some((&other.path("client.pem"), &other.path("client.key"))),
    );
    let refused = async {
        let mut s = tls_connect(b.addr, bad).await?;
        s.write_all(&Connect::new("intruder").bytes()).await?;
        read_packet(&mut s).await
    };
    let r = tokio::time::timeout(TIMEOUT, refused).await.unwrap();
    assert!(
        !matches!(r, Ok(Some(_))),
        "a foreign client certificate got an MQTT answer: {r:?}"
    );

    // No client certificate at all: refused too (require_certificate).
    let none = client_config(&pki.path("ca.pem"), None);
    let r = tokio::time::timeout(TIMEOUT, async {
        let mut s = tls_connect(b.addr, none).await?;
        s.write_all(&Connect::new("anon").bytes()).await?;
        read_packet(&mut s).await
    })
    .await
    .unwrap();
    assert!(
        !matches!(r, Ok(Some(_))),
        "a client without certificate got an MQTT answer: {r:?}"
    );
    assert!(router.metrics().stats.tls_handshake_failures.load(Relaxed) >= 1);
}

#[tokio::test]
async fn plaintext_mqtt_on_a_tls_port_costs_one_closed_connection() {
    let pki = Pki::new("plain");
    pki.leaf("server", "localhost", None);
    let (b, router, _) =
        start_tls_broker("allow_anonymous = true", &tls_listener_toml(&pki, "")).await;
    let mut raw = Raw::connect(b.addr, &Connect::new("plain")).await;
    let rest = expect_closed(&mut raw.io, TIMEOUT).await;
    assert!(
        rest.first() != Some(&0x20),
        "a plaintext client got a CONNACK from a TLS port"
    );
    assert_eq!(
        router.metrics().stats.tls_handshake_failures.load(Relaxed),
        1
    );
    // The listener still serves TLS clients.
    let (_s, code) = mqtt_over_tls(b.addr, client_config(&pki.path("ca.pem"), None), "after").await;
    assert_eq!(code, 0);
}

#[tokio::test(start_paused = true)]
async fn tls_handshake_timeout_closes_silent_sockets() {
    let pki = Pki::new("hstimeout");
    pki.leaf("server", "localhost", None);
    let (b, router, _) = start_tls_broker(
        "allow_anonymous = true\ntls_handshake_timeout = 7",
        &tls_listener_toml(&pki, ""),
    )
    .await;
    let start = tokio::time::Instant::now();
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    expect_closed(&mut s, Duration::from_secs(60)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(7),
        "closed after {waited:?}, before tls_handshake_timeout"
    );
    assert!(
        waited < Duration::from_secs(9),
        "closed only after {waited:?}"
    );
    assert_eq!(
        router.metrics().stats.tls_handshake_failures.load(Relaxed),
        1
    );
}

fn peer_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn new_certificate_is_used_by_new_clients_while_old_connections_keep_working() {
    let pki = Pki::new("reload");
    pki.leaf("server", "localhost", None);
    let (b, router, reload) = start_tls_broker(
        "allow_anonymous = true\nreload_interval = 1",
        &tls_listener_toml(&pki, ""),
    )
    .await;
    let cfg = client_config(&pki.path("ca.pem"), None);
    let (mut old, code) = mqtt_over_tls(b.addr, cfg.clone(), "old").await;
    assert_eq!(code, 0);
    let old_leaf = peer_leaf(&old);
    old.write_all(&subscribe(1, &[("reload/#", 0)]))
        .await
        .unwrap();
    let suback = read_packet(&mut old).await.unwrap().unwrap();
    assert_eq!(suback.kind(), SUBACK);

    // Replace the certificate on disk; new handshakes must pick it up.
    let (new_pem, _) = pki.leaf("server", "localhost", None);
    let new_leaf = CertificateDer::pem_slice_iter(new_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec();
    assert_ne!(old_leaf, new_leaf);
    let mut seen = None;
    for _ in 0..100 {
        reload.notify_waiters();
        let s = tls_connect(b.addr, cfg.clone()).await.unwrap();
        if peer_leaf(&s) == new_leaf {
            seen = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut fresh = seen.expect("no new handshake used the replaced certificate within 10 s");
    fresh
        .write_all(&Connect::new("fresh").bytes())
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut fresh).await.unwrap().unwrap().body,
        vec![0, 0]
    );

    // The old connection is untouched: it still receives.
    fresh
        .write_all(&publish("reload/x", b"still here", 0, false, false, 0))
        .await
        .unwrap();
    let p = tokio::time::timeout(TIMEOUT, read_packet(&mut old))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.publish().payload, b"still here");
    assert_eq!(router.metrics().stats.tls_reload_failures.load(Relaxed), 0);
}

#[tokio::test]
async fn broken_replacement_certificate_is_refused_and_the_old_one_stays() {
    let pki = Pki::new("broken");
    pki.leaf("server", "localhost", None);
    let (b, router, reload) = start_tls_broker(
        "allow_anonymous = true\nreload_interval = 1",
        &tls_listener_toml(&pki, ""),
    )
    .await;
    let cfg = client_config(&pki.path("ca.pem"), None);
    let before = peer_leaf(&tls_connect(b.addr, cfg.clone()).await.unwrap());
    std::fs::write(
        pki.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for _ in 0..100 {
        reload.notify_waiters();
        if router.metrics().stats.tls_reload_failures.load(Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        router.metrics().stats.tls_reload_failures.load(Relaxed),
        1,
        "a broken certificate was not reported"
    );
    let (s, code) = mqtt_over_tls(b.addr, cfg, "still-ok").await;
    assert_eq!(code, 0);
    assert_eq!(
        peer_leaf(&s),
        before,
        "the old certificate must stay in force"
    );
}

#[tokio::test]
async fn startup_fails_clearly_on_missing_mismatched_or_expired_files() {
    let pki = Pki::new("startup");
    pki.leaf("server", "localhost", None);
    pki.leaf("other", "localhost", None);
    pki.leaf("expired", "localhost", Some((2020, 1, 1)));
    let cases = [
        (
            format!(
                "certfile = {:?}\nkeyfile = {:?}",
                pki.path("missing.pem"),
                pki.path("server.key")
            ),
            "missing.pem",
        ),
        (
            format!(
                "certfile = {:?}\nkeyfile = {:?}",
                pki.path("server.pem"),
                pki.path("other.key")
            ),
            "does not fit",
        ),
        (
            format!(
                "certfile = {:?}\nkeyfile = {:?}",
                pki.path("expired.pem"),
                pki.path("expired.key")
            ),
            "expired",
        ),
        (
            format!(
                "certfile = {:?}\nkeyfile = {:?}\ncafile = {:?}",
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("nope.pem")
            ),
            "nope.pem",
        ),
    ];
    for (files, needle) in cases {
        let text = format!("metrics_enabled = false\npersistence = false\n[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\n{files}\n");
        let cfg = roostd::Config::from_toml_str(&text).unwrap();
        let err = match roostd::Broker::bind(cfg).await {
            Ok(_) => panic!("broker started with bad TLS files: {files}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(needle),
            "error {err:?} does not mention {needle:?}"
        );
    }
}

#[tokio::test]
async fn mosquitto_clients_work_over_tls_with_cafile_and_client_certificates() {
    if !interop_binaries(&["mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let pki = Pki::new("interop");
    pki.leaf("server", "localhost", None);
    pki.leaf("client", "client1", None);
    let listener = tls_listener_toml(&pki, &format!("cafile = {:?}", pki.path("ca.pem")));
    let (b, _, _) = start_tls_broker("allow_anonymous = true", &listener).await;
    let port = b.addr.port().to_string();
    let ca = pki.path("ca.pem");
    let run = |args: Vec<String>| async move {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(&args[0])
                .args(&args[1..])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("mosquitto client timed out")
        .expect("spawn");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let s = |v: &str| v.to_string();
    // Server authentication only (--cafile), retained so the subscriber needs no readiness wait.
    run(vec![
        s("mosquitto_pub"),
        s("--cafile"),
        ca.display().to_string(),
        s("-h"),
        s("localhost"),
        s("-p"),
        port.clone(),
        s("-t"),
        s("tls/interop"),
        s("-m"),
        s("hello tls"),
        s("-q"),
        s("1"),
        s("-r"),
    ])
    .await;
    // Mutual TLS (--cert/--key).
    let out = run(vec![
        s("mosquitto_sub"),
        s("--cafile"),
        ca.display().to_string(),
        s("--cert"),
        pki.path("client.pem").display().to_string(),
        s("--key"),
        pki.path("client.key").display().to_string(),
        s("-h"),
        s("localhost"),
        s("-p"),
        port,
        s("-t"),
        s("tls/#"),
        s("-C"),
        s("1"),
        s("-v"),
    ])
    .await;
    assert_eq!(out.trim(), "tls/interop hello tls");
}

/// A TLS subscriber that stops reading fills its socket, so the broker's TLS layer holds
/// records it could not send; once the client reads again every message still arrives (the
/// broker flushes TLS after its own buffer empties, not only on the next write).
#[tokio::test]
async fn a_tls_subscriber_that_paused_reading_still_gets_everything() {
    let pki = Pki::new("tlsflush");
    pki.leaf("server", "localhost", None);
    let (b, _, _) = start_tls_broker(
        "allow_anonymous = true\nmax_queued_messages = 10000\nmax_queued_bytes = 268435456",
        &tls_listener_toml(&pki, ""),
    )
    .await;
    let cfg = client_config(&pki.path("ca.pem"), None);
    let (mut sub, rc) = mqtt_over_tls(b.addr, cfg.clone(), "tls-slow-sub").await;
    assert_eq!(rc, 0);
    sub.write_all(&subscribe(1, &[("big/#", 0)])).await.unwrap();
    let ack = tokio::time::timeout(TIMEOUT, read_packet(&mut sub))
        .await
        .unwrap()
        .unwrap()
        .expect("SUBACK");
    assert_eq!(ack.header, 0x90);

    // 4 MiB while the subscriber does not read: far more than the socket buffers hold.
    let (mut publ, rc) = mqtt_over_tls(b.addr, cfg, "tls-fast-pub").await;
    assert_eq!(rc, 0);
    let n = 256usize;
    let payload = vec![0x5a; 16 * 1024];
    for _ in 0..n {
        publ.write_all(&publish("big/t", &payload, 0, false, false, 0))
            .await
            .unwrap();
    }
    publ.write_all(&publish("big/end", b"end", 0, false, false, 0))
        .await
        .unwrap();
    publ.flush().await.unwrap();

    let mut got = 0usize;
    loop {
        let p = tokio::time::timeout(TIMEOUT, read_packet(&mut sub))
            .await
            .expect("a message held back in the broker's TLS layer never came")
            .unwrap()
            .expect("broker closed the connection");
        assert_eq!(p.header & 0xF0, 0x30, "expected PUBLISH, got {p:?}");
        if p.body.ends_with(b"end") && p.body.len() < 100 {
            break;
        }
        got += 1;
    }
    assert_eq!(got, n, "messages lost on the way");
}

/// A stream that, like TLS, may accept bytes without sending them until it is flushed, and
/// whose first flushes do not finish at once (`stalls`: how many return Pending first).
struct Buffering(tokio::io::BufWriter<tokio::io::DuplexStream>, usize);

impl tokio::io::AsyncRead for Buffering {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Buffering {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.1 > 0 {
            // As a socket that becomes writable again: not now, but the task is woken.
            self.1 -= 1;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl roostd::connection::Transport for Buffering {}

/// tokio-rustls can take bytes into its buffer without sending them when the socket is full;
/// the connection must flush after its own buffer empties, and again until the flush is done,
/// or the last bytes (here: CONNACK and SUBACK) wait for a next write that may never come.
#[tokio::test]
async fn written_bytes_a_buffering_stream_holds_are_flushed() {
    let config = Arc::new(roostd::Config::default());
    let auth = Arc::new(roostd::auth::live::AuthState::load(None, None).expect("no files"));
    let router = Arc::new(roostd::router::Router::new(
        config.session_limits(),
        roostd::metrics::Metrics::disabled(),
        auth,
        None,
    ));
    let ctx = roostd::connection::Context {
        router,
        config,
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let stream = Buffering(tokio::io::BufWriter::new(theirs), 3);
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    tokio::spawn(roostd::connection::serve(
        stream,
        peer,
        roostd::connection::next_conn_id(),
        ctx,
        roostd::connection::CertUser::NotUsed,
        None,
    ));
    let mut client = ours;
    client
        .write_all(&Connect::new("buffered").bytes())
        .await
        .unwrap();
    let connack = tokio::time::timeout(TIMEOUT, read_packet(&mut client))
        .await
        .expect("CONNACK held in the stream's buffer")
        .unwrap()
        .expect("CONNACK");
    assert_eq!(connack.header, 0x20);
    client
        .write_all(&subscribe(1, &[("a/b", 1)]))
        .await
        .unwrap();
    let suback = tokio::time::timeout(TIMEOUT, read_packet(&mut client))
        .await
        .expect("SUBACK held in the stream's buffer")
        .unwrap()
        .expect("SUBACK");
    assert_eq!(suback.header, 0x90);
}
