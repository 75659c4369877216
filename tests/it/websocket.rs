//! MQTT over WebSockets (MQTT 3.1.1 section 6, RFC 6455): tungstenite as an independent
//! WebSocket client over real sockets, raw bytes for hostile frames, and the TCP side with
//! the raw MQTT client and the real mosquitto_sub.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::*;

/// A broker with a plain MQTT listener (first address) and a WebSocket one (second).
async fn ws_broker(extra_listener: &str) -> (TestBroker, std::net::SocketAddr) {
    let (b, addrs) = ws_broker_all(extra_listener).await;
    (b, addrs[1])
}

/// The same, with every listener's address (more listeners can follow in `extra_listener`).
async fn ws_broker_all(extra_listener: &str) -> (TestBroker, Vec<std::net::SocketAddr>) {
    let toml = config_toml("")
        + &format!(
            "[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\nprotocol = \"websockets\"\n{extra_listener}\n"
        );
    let cfg = roostd::Config::from_toml_str(&toml).expect("config");
    let broker = roostd::Broker::bind(cfg).await.expect("bind");
    let addrs = broker.local_addrs();
    let shutdown = broker.shutdown_token();
    let handle = tokio::spawn(broker.run());
    (
        TestBroker {
            addr: addrs[0],
            shutdown,
            handle: Some(handle),
        },
        addrs,
    )
}

type Ws = WebSocketStream<TcpStream>;

async fn ws_connect(addr: std::net::SocketAddr, path: &str, protocol: Option<&str>) -> Ws {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("upgrade timeout")
        .expect("upgrade");
    if protocol.is_some() {
        assert_eq!(
            resp.headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap()),
            Some("mqtt"),
            "[MQTT-6.0.0-4] the server answers with the subprotocol"
        );
    }
    ws
}

/// Reads binary messages until `n` MQTT packets were parsed from their concatenation.
async fn ws_packets<S>(ws: &mut WebSocketStream<S>, buf: &mut Vec<u8>, n: usize) -> Vec<Packet>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    loop {
        while let Some(p) = parse_one(buf) {
            out.push(p);
            if out.len() == n {
                return out;
            }
        }
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("no WebSocket message in time")
            .expect("stream ended")
            .expect("ws error");
        match msg {
            Message::Binary(b) => buf.extend_from_slice(&b),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("[MQTT-6.0.0-1] only binary frames: got {other:?}"),
        }
    }
}

/// One MQTT packet from the front of `buf`, if complete.
fn parse_one(buf: &mut Vec<u8>) -> Option<Packet> {
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len += (b & 0x7F) as usize * mult;
        mult *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < i + len {
        return None;
    }
    let header = buf[0];
    let body = buf[i..i + len].to_vec();
    buf.drain(..i + len);
    Some(Packet { header, body })
}

/// [MQTT-6.0.0-1] [MQTT-6.0.0-2] MQTT in binary frames, packets split across frames and
/// several packets in one frame; messages flow both ways between a WebSocket client and a
/// TCP client, at QoS 0, 1 and 2, retained included.
#[tokio::test]
async fn mqtt_over_websockets_to_and_from_tcp_clients() {
    let (b, ws_addr) = ws_broker("").await;
    let mut ws = ws_connect(ws_addr, "/mqtt", Some("mqtt")).await;
    let connect = Connect::new("ws-client").bytes();
    // CONNECT split across two frames.
    let (a, rest) = connect.split_at(5);
    ws.send(Message::Binary(a.to_vec().into())).await.unwrap();
    ws.send(Message::Binary(rest.to_vec().into()))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let connack = &ws_packets(&mut ws, &mut buf, 1).await[0];
    assert_eq!((connack.header, connack.body[1]), (0x20, 0));
    // SUBSCRIBE and PINGREQ in one frame.
    let mut two = subscribe(1, &[("ws/#", 2)]);
    two.extend(pingreq());
    ws.send(Message::Binary(two.into())).await.unwrap();
    let got = ws_packets(&mut ws, &mut buf, 2).await;
    assert_eq!(got[0].kind(), SUBACK);
    assert_eq!(got[1].kind(), PINGRESP);
    // TCP -> WebSocket at every QoS.
    let mut tcp = Raw::client(b.addr, "tcp-client").await;
    tcp.send(&subscribe(1, &[("tcp/#", 1)])).await;
    tcp.expect_kind(SUBACK).await;
    for qos in 0..=2u8 {
        tcp.send(&publish("ws/in", &[qos], qos, false, false, qos as u16 + 1))
            .await;
        match qos {
            1 => {
                tcp.expect_kind(PUBACK).await;
            }
            2 => {
                tcp.expect_kind(PUBREC).await;
                tcp.send(&pubrel(3)).await;
                tcp.expect_kind(PUBCOMP).await;
            }
            _ => {}
        }
        let p = ws_packets(&mut ws, &mut buf, 1).await.remove(0).publish();
        assert_eq!(
            (p.topic.as_str(), p.payload.clone(), p.qos),
            ("ws/in", vec![qos], qos)
        );
        match qos {
            1 => ws
                .send(Message::Binary(puback(p.pid.unwrap()).into()))
                .await
                .unwrap(),
            2 => {
                ws.send(Message::Binary(pubrec(p.pid.unwrap()).into()))
                    .await
                    .unwrap();
                assert_eq!(ws_packets(&mut ws, &mut buf, 1).await[0].header, 0x62);
                ws.send(Message::Binary(pubcomp(p.pid.unwrap()).into()))
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    // WebSocket -> TCP, retained: a later TCP subscriber gets it too.
    ws.send(Message::Binary(
        publish("tcp/out", b"from ws", 1, true, false, 9).into(),
    ))
    .await
    .unwrap();
    assert_eq!(ws_packets(&mut ws, &mut buf, 1).await[0].kind(), PUBACK);
    let m = tcp.recv_publish_ack().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("tcp/out", &b"from ws"[..])
    );
    let mut late = Raw::client(b.addr, "late").await;
    late.send(&subscribe(1, &[("tcp/out", 0)])).await;
    late.expect_kind(SUBACK).await;
    assert!(late.recv_publish().await.retain);
    // DISCONNECT over the WebSocket: the broker closes it.
    ws.send(Message::Binary(disconnect().into())).await.unwrap();
    let end = tokio::time::timeout(TIMEOUT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the WebSocket stays open after DISCONNECT");
}

/// A text frame closes the connection [MQTT-6.0.0-1]; so does an unmasked frame (RFC 6455
/// 5.1); ping is answered with pong.
#[tokio::test]
async fn text_frames_close_and_pings_are_answered() {
    let (_b, ws_addr) = ws_broker("").await;
    let mut ws = ws_connect(ws_addr, "/", Some("mqtt")).await;
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"hi".to_vec().into()));
    ws.send(Message::Text("CONNECT".into())).await.unwrap();
    let closed = tokio::time::timeout(TIMEOUT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a text frame did not close the connection");
}

/// Raw upgrade, then hand-made frames.
async fn raw_upgraded(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(TIMEOUT, s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{text}"
    );
    s
}

/// A frame header announcing 256 MiB closes the connection at once (nothing that size is
/// buffered), and the broker goes on serving.
#[tokio::test]
async fn an_oversize_frame_closes_without_being_buffered() {
    let (b, ws_addr) = ws_broker("").await;
    let mut s = raw_upgraded(ws_addr).await;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend((256u64 << 20).to_be_bytes());
    frame.extend([1, 2, 3, 4]);
    s.write_all(&frame).await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "not closed");
    // A close frame with 1009 (message too big) before the end.
    assert!(rest.starts_with(&[0x88, 2, 0x03, 0xF1]), "{rest:02x?}");
    let mut c = Raw::client(b.addr, "still-serving").await;
    c.send(&pingreq()).await;
    c.expect_kind(PINGRESP).await;
}

/// A plain HTTP request gets an HTTP error (426) at once, not a hang; a request offering only
/// other subprotocols gets 400; a request for another path than the listener's gets 404.
#[tokio::test]
async fn bad_upgrade_requests_get_http_errors() {
    let (_b, ws_addr) = ws_broker("path = \"/mqtt\"").await;
    let ask = |req: &'static str| async move {
        let mut s = TcpStream::connect(ws_addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(TIMEOUT, s.read_to_end(&mut got))
            .await
            .expect("no answer")
            .unwrap();
        String::from_utf8_lossy(&got).into_owned()
    };
    let plain = ask("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    let chat = ask("GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n").await;
    assert!(chat.starts_with("HTTP/1.1 400"), "{chat}");
    let path = ask("GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").await;
    assert!(path.starts_with("HTTP/1.1 404"), "{path}");
    // An MQTT client on the WebSocket port is closed at once.
    let mut s = TcpStream::connect(ws_addr).await.unwrap();
    s.write_all(&Connect::new("wrong-port").bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(r.is_ok() && got.is_empty(), "{got:02x?}");
}

/// mosquitto_sub on TCP receives what a WebSocket client published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_on_tcp_receives_from_a_websocket_client() {
    if !interop_binaries(&["mosquitto_sub"]) {
        return;
    }
    let (b, ws_addr) = ws_broker("").await;
    let port = b.port().to_string();
    let sub = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "ws/+/x",
                "-C",
                "1",
                "-W",
                "10",
                "-q",
                "1",
            ])
            .output()
            .unwrap()
    });
    // Publish until the subscriber (whose SUBSCRIBE we cannot see) has it: retained makes
    // one publish enough whenever it subscribes.
    let mut ws = ws_connect(ws_addr, "/", Some("mqtt")).await;
    ws.send(Message::Binary(Connect::new("ws-pub").bytes().into()))
        .await
        .unwrap();
    let mut buf = Vec::new();
    ws_packets(&mut ws, &mut buf, 1).await;
    ws.send(Message::Binary(
        publish("ws/1/x", b"hello tcp", 1, true, false, 1).into(),
    ))
    .await
    .unwrap();
    assert_eq!(ws_packets(&mut ws, &mut buf, 1).await[0].kind(), PUBACK);
    let out = tokio::time::timeout(Duration::from_secs(15), sub)
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello tcp");
}

/// A real browser: Debian's Chromium, driven by puppeteer-core (tests/browser/run.mjs),
/// loads MQTT.js and connects over ws and over wss (a test CA). On each it subscribes,
/// publishes a message of its own and receives it, and receives one that mosquitto_pub sent
/// over TCP once the page said it was subscribed. The test asserts on what the page saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_with_mqtt_js_talks_over_ws_and_wss() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !interop_binaries(&["chromium", "node", "mosquitto_pub"]) {
        return;
    }
    if !browser_dir.join("node_modules/puppeteer-core").is_dir() {
        if std::env::var("ROOSTD_REQUIRE_INTEROP").as_deref() == Ok("1") {
            panic!("tests/browser/node_modules missing: run `npm ci` in tests/browser");
        }
        println!("skipped: run `npm ci` in tests/browser");
        return;
    }
    // A CA and a server certificate for 127.0.0.1, as PEM files.
    let dir = std::env::temp_dir().join(format!("roostd-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let (b, addrs) = ws_broker_all(&format!(
        "[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\nprotocol = \"websockets\"\ncertfile = {:?}\nkeyfile = {:?}\n",
        dir.join("server.pem"),
        dir.join("server.key")
    ))
    .await;
    let urls = [
        format!("ws://{}/", addrs[1]),
        format!("wss://{}/mqtt", addrs[2]),
    ];
    // When the page says it is subscribed, mosquitto_pub sends it a message over TCP.
    let mut watcher = Raw::client(b.addr, "browser-watcher").await;
    watcher.send(&subscribe(1, &[("browser/+/ready", 0)])).await;
    watcher.expect_kind(SUBACK).await;
    let port = b.port().to_string();
    let publisher = tokio::spawn(async move {
        for _ in 0..2 {
            let ready = watcher.recv_publish_within(Duration::from_secs(60)).await;
            let n = ready.topic.split('/').nth(1).unwrap().to_string();
            let port = port.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("mosquitto_pub")
                    .args(["-h", "127.0.0.1", "-p", &port, "-q", "1"])
                    .args([
                        "-t",
                        &format!("browser/{n}/from-tcp"),
                        "-m",
                        "from mosquitto_pub",
                    ])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    });
    let chromium = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("chromium"))
                .find(|c| c.is_file())
        })
        .expect("chromium on PATH");
    let mut node = std::process::Command::new("node");
    node.arg(browser_dir.join("run.mjs"))
        .arg("--chromium")
        .arg(&chromium)
        .current_dir(&browser_dir);
    for u in &urls {
        node.args(["--url", u]);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || node.output().unwrap()),
    )
    .await
    .expect("the browser run did not end")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser run failed: {stdout}\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for (n, url) in urls.iter().enumerate() {
        let seen = &report["results"][n]["seen"];
        assert_eq!(report["results"][n]["url"], url.as_str());
        let has = |topic: &str, payload: &str| {
            seen.as_array()
                .unwrap()
                .iter()
                .any(|m| m["topic"] == topic && m["payload"] == payload && m["qos"] == 1)
        };
        assert!(
            has(&format!("browser/{n}/own"), "own message"),
            "{url}: {seen}"
        );
        assert!(
            has(&format!("browser/{n}/from-tcp"), "from mosquitto_pub"),
            "{url}: {seen}"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .unwrap()
        .unwrap();
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Python's paho-mqtt (Debian's python3-paho-mqtt) with `transport="websockets"`: connects,
/// subscribes, publishes and receives its own message; a TCP subscriber gets it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_python_over_websockets() {
    let python = std::path::Path::new("/usr/bin/python3");
    let has_paho = python.is_file()
        && std::process::Command::new(python)
            .args(["-c", "import paho.mqtt.client"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_paho {
        if std::env::var("ROOSTD_REQUIRE_INTEROP").as_deref() == Ok("1") {
            panic!("/usr/bin/python3 with paho-mqtt not found (apt-get install python3-paho-mqtt)");
        }
        println!("skipped: /usr/bin/python3 with paho-mqtt not found");
        return;
    }
    let (b, ws_addr) = ws_broker("").await;
    let mut tcp = Raw::client(b.addr, "paho-watcher").await;
    tcp.send(&subscribe(1, &[("paho/#", 1)])).await;
    tcp.expect_kind(SUBACK).await;
    let script = format!(
        r#"
import sys, paho.mqtt.client as mqtt
got = []
def on_connect(c, u, f, rc):
    if rc != 0: sys.exit("CONNACK %d" % rc)
    c.subscribe("paho/#", qos=1)
def on_subscribe(c, u, mid, granted):
    c.publish("paho/own", "from paho", qos=1)
def on_message(c, u, m):
    print(m.topic, m.payload.decode(), m.qos, flush=True)
    c.disconnect()
c = mqtt.Client(client_id="paho-ws", transport="websockets", protocol=mqtt.MQTTv311)
c.ws_set_options(path="/mqtt")
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", {port}, keepalive=30)
c.loop_forever(timeout=1.0)
"#,
        port = ws_addr.port()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .args(["-c", &script])
                .output()
                .unwrap()
        }),
    )
    .await
    .expect("paho did not finish")
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "paho/own from paho 1"
    );
    let m = tcp.recv_publish_ack().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("paho/own", &b"from paho"[..])
    );
}

/// A fragmented binary message (RFC 6455 5.4: a first frame without FIN, continuation
/// frames) carries MQTT like any other: here the CONNECT comes in three fragments, with a
/// ping between them (control frames may be interleaved), then SUBSCRIBE + PINGREQ.
#[tokio::test]
async fn fragmented_messages_and_interleaved_pings_are_reassembled() {
    let (_b, ws_addr) = ws_broker("").await;
    let mut s = raw_upgraded(ws_addr).await;
    let frame = |first: u8, payload: &[u8]| {
        let mut f = vec![first, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    };
    let connect = Connect::new("fragments").bytes();
    let (a, rest) = connect.split_at(4);
    let (b, c) = rest.split_at(5);
    let mut bytes = frame(0x02, a); // binary, not FIN
    bytes.extend(frame(0x89, b"p")); // ping in between
    bytes.extend(frame(0x00, b)); // continuation, not FIN
    bytes.extend(frame(0x80, c)); // continuation, FIN
    s.write_all(&bytes).await.unwrap();
    // Expect a pong and the CONNACK (both server frames, unmasked).
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !(got.windows(3).any(|w| w == [0x8A, 1, b'p'])
        && got.ends_with(&[0x82, 4, 0x20, 2, 0, 0]))
    {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed; got {got:02x?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// wss: the WebSocket listener with certfile/keyfile, a test CA, tungstenite over rustls.
#[tokio::test]
async fn mqtt_over_wss_with_a_test_ca() {
    use rustls::pki_types::pem::PemObject;
    let dir = std::env::temp_dir().join(format!("roostd-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("s.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("s.key"), key.serialize_pem()).unwrap();
    let (b, wss_addr) = {
        let toml = config_toml("")
            + &format!(
                "[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\nprotocol = \"websockets\"\ncertfile = {:?}\nkeyfile = {:?}\n",
                dir.join("s.pem"),
                dir.join("s.key")
            );
        let broker = roostd::Broker::bind(roostd::Config::from_toml_str(&toml).unwrap())
            .await
            .unwrap();
        let addrs = broker.local_addrs();
        let shutdown = broker.shutdown_token();
        let handle = tokio::spawn(broker.run());
        (
            TestBroker {
                addr: addrs[0],
                shutdown,
                handle: Some(handle),
            },
            addrs[1],
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(wss_addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake with the wss listener");
    let mut req = format!("wss://localhost:{}/mqtt", wss_addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("upgrade");
    ws.send(Message::Binary(Connect::new("wss-client").bytes().into()))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let connack = ws_packets(&mut ws, &mut buf, 1).await.remove(0);
    assert_eq!((connack.header, connack.body[1]), (0x20, 0));
    ws.send(Message::Binary(subscribe(1, &[("wss/#", 1)]).into()))
        .await
        .unwrap();
    assert_eq!(ws_packets(&mut ws, &mut buf, 1).await[0].kind(), SUBACK);
    // A message from TCP arrives over wss.
    let mut tcp = Raw::client(b.addr, "wss-tcp").await;
    tcp.send(&publish("wss/t", b"over tls", 0, false, false, 0))
        .await;
    let m = ws_packets(&mut ws, &mut buf, 1).await.remove(0).publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("wss/t", &b"over tls"[..])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Metrics per listener: `roostd_listener_connections{listener, protocol}` counts the open
/// connections of the TCP and the WebSocket listener apart, and the accepted ones.
#[tokio::test]
async fn connections_are_counted_per_listener() {
    let toml = config_toml("")
        + "[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\nprotocol = \"websockets\"\n";
    let broker = roostd::Broker::bind(roostd::Config::from_toml_str(&toml).unwrap())
        .await
        .unwrap();
    let addrs = broker.local_addrs();
    let metrics = broker.metrics_addr().expect("metrics on");
    let shutdown = broker.shutdown_token();
    let _b = TestBroker {
        addr: addrs[0],
        shutdown,
        handle: Some(tokio::spawn(broker.run())),
    };
    let _tcp = Raw::client(addrs[0], "per-listener-tcp").await;
    let mut ws = ws_connect(addrs[1], "/", Some("mqtt")).await;
    ws.send(Message::Binary(
        Connect::new("per-listener-ws").bytes().into(),
    ))
    .await
    .unwrap();
    let mut buf = Vec::new();
    ws_packets(&mut ws, &mut buf, 1).await;
    let mut s = TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(TIMEOUT, s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    for (addr, protocol) in [(addrs[0], "mqtt"), (addrs[1], "ws")] {
        let open =
            format!("roostd_listener_connections{{listener=\"{addr}\",protocol=\"{protocol}\"}} 1");
        let total = format!(
            "roostd_listener_connections_total{{listener=\"{addr}\",protocol=\"{protocol}\"}} 1"
        );
        assert!(text.contains(&open), "no {open:?} in\n{text}");
        assert!(text.contains(&total), "no {total:?} in\n{text}");
    }
}
