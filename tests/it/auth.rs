//! Password file and ACL: CONNACK codes, a users x topics x read/write matrix for user,
//! anonymous and pattern rules, per-delivery read checks for wildcard subscriptions, reload
//! with a good and a broken file, and interop with the real mosquitto_passwd/mosquitto_pub.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::common::*;

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("roostd-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }
    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker with the given password and ACL files (anonymous allowed unless `extra` says so).
async fn broker(
    files: &Files,
    extra: &str,
) -> (
    TestBroker,
    std::sync::Arc<roostd::router::Router>,
    std::sync::Arc<tokio::sync::Notify>,
) {
    let text = config_toml(&format!(
        "password_file = {:?}\nacl_file = {:?}\nreload_interval = 1\n{extra}",
        files.path("passwords"),
        files.path("acl")
    ));
    start_from_toml(&text).await
}

const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic read public/#
topic write sensors/#
topic write public/#

user bob
topic read sensors/#
topic deny sensors/secret
topic write bob/#

pattern readwrite clients/%c/#
pattern read users/%u/#
";

fn write_users(files: &Files) {
    for (u, p) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        roostd::auth::set_user(&files.path("passwords"), u, p.as_bytes()).unwrap();
    }
    std::fs::write(files.path("acl"), ACL).unwrap();
}

async fn login(addr: std::net::SocketAddr, id: &str, user: Option<(&str, &str)>) -> Raw {
    let mut c = Connect::new(id);
    if let Some((u, p)) = user {
        c = c.username(u).password(p.as_bytes());
    }
    Raw::connect_ok(addr, &c).await.0
}

async fn connack_code(addr: std::net::SocketAddr, c: &Connect) -> u8 {
    let mut r = Raw::connect(addr, c).await;
    let p = r.recv().await;
    assert_eq!(p.header, 0x20, "expected CONNACK, got {p:?}");
    p.body[1]
}

async fn suback_codes(r: &mut Raw, filters: &[(&str, u8)]) -> Vec<u8> {
    let pid = r.next_pid();
    r.send(&subscribe(pid, filters)).await;
    r.expect_kind(SUBACK).await.body[2..].to_vec()
}

/// Publishes at QoS 1 and waits for the PUBACK (denied publishes are acknowledged too).
async fn publish_acked(r: &mut Raw, topic: &str, payload: &[u8]) {
    let pid = r.next_pid();
    r.send(&publish(topic, payload, 1, false, false, pid)).await;
    let ack = r.expect_kind(PUBACK).await;
    assert_eq!(ack.ack_pid(), pid);
}

/// Publishes `marker` to `topic` and returns every PUBLISH `r` receives up to and including it.
async fn received_until(r: &mut Raw, publisher: &mut Raw, topic: &str) -> Vec<Publish> {
    publish_acked(publisher, topic, b"marker").await;
    let mut got = Vec::new();
    loop {
        let p = r.recv_publish().await;
        let done = p.topic == topic && p.payload == b"marker";
        got.push(p);
        if done {
            return got;
        }
    }
}

#[tokio::test]
async fn credentials_decide_the_connack_code() {
    let files = Files::new("connack");
    write_users(&files);
    let (b, _, _) = broker(&files, "allow_anonymous = false").await;
    assert_eq!(
        connack_code(
            b.addr,
            &Connect::new("a").username("alice").password(b"alice-pw")
        )
        .await,
        0
    );
    // Wrong password, unknown user, user name without password: 0x05, as Mosquitto answers 3.1.1.
    assert_eq!(
        connack_code(
            b.addr,
            &Connect::new("a2").username("alice").password(b"nope")
        )
        .await,
        5
    );
    assert_eq!(
        connack_code(
            b.addr,
            &Connect::new("a3").username("mallory").password(b"x")
        )
        .await,
        5
    );
    assert_eq!(
        connack_code(b.addr, &Connect::new("a4").username("alice")).await,
        5
    );
    // Anonymous refused with allow_anonymous = false.
    assert_eq!(connack_code(b.addr, &Connect::new("anon")).await, 5);
}

#[tokio::test]
async fn plain_text_password_file_stops_startup_with_file_and_line() {
    let files = Files::new("plain");
    std::fs::write(files.path("passwords"), "alice:secret\n").unwrap();
    std::fs::write(files.path("acl"), "").unwrap();
    let cfg = roostd::Config::from_toml_str(&config_toml(&format!(
        "password_file = {:?}",
        files.path("passwords")
    )))
    .unwrap();
    let err = roostd::Broker::bind(cfg)
        .await
        .err()
        .expect("a plain-text password file was accepted")
        .to_string();
    assert!(err.contains("passwords:1"), "{err}");
}

#[tokio::test]
async fn acl_matrix_for_users_anonymous_and_patterns() {
    let files = Files::new("matrix");
    write_users(&files);
    let (b, router, _) = broker(&files, "").await;
    let mut alice = login(b.addr, "alice-c", Some(("alice", "alice-pw"))).await;
    let mut bob = login(b.addr, "bob-c", Some(("bob", "bob-pw"))).await;
    let mut anon = login(b.addr, "anon-c", None).await;

    // SUBSCRIBE: granted where a read rule overlaps the filter, 0x80 otherwise.
    assert_eq!(
        suback_codes(
            &mut anon,
            &[("public/#", 1), ("alice/#", 1), ("sensors/#", 1)]
        )
        .await,
        vec![1, 0x80, 0x80]
    );
    assert_eq!(
        suback_codes(
            &mut alice,
            &[
                ("alice/#", 1),
                ("sensors/#", 1),
                ("users/alice/#", 1),
                ("users/bob/#", 1)
            ]
        )
        .await,
        vec![1, 0x80, 1, 0x80]
    );
    // `#` is allowed for bob (he can read sensors/...), but each delivery is checked.
    assert_eq!(
        suback_codes(&mut bob, &[("#", 1), ("sensors/secret", 1)]).await,
        vec![1, 0x80]
    );

    // alice writes sensors/1 (allowed): bob reads it. sensors/secret is denied to bob,
    // alice/private is not readable by bob: neither leaks through his `#`.
    publish_acked(&mut alice, "sensors/1", b"21.5").await;
    publish_acked(&mut alice, "sensors/secret", b"s3cret").await;
    publish_acked(&mut alice, "alice/private", b"diary").await;
    let got = received_until(&mut bob, &mut alice, "sensors/2").await;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        topics,
        vec!["sensors/1", "sensors/2"],
        "bob's # leaked or lost messages"
    );

    // bob has no write access to sensors/#: acknowledged, not delivered, counted.
    let denied_before = router.metrics().stats.dropped
        [roostd::session::DropReason::NotAuthorized.index()]
    .load(Relaxed);
    publish_acked(&mut bob, "sensors/9", b"forged").await;
    let after = router.metrics().stats.dropped[roostd::session::DropReason::NotAuthorized.index()]
        .load(Relaxed);
    assert!(after > denied_before, "a denied PUBLISH was not counted");
    // anonymous reads public/#, which alice writes; bob cannot write public/.
    publish_acked(&mut bob, "public/news", b"from bob").await;
    let got = received_until(&mut anon, &mut alice, "public/news").await;
    assert_eq!(
        got.len(),
        1,
        "anonymous got bob's denied public/news: {got:?}"
    );

    // Patterns: %c lets each client use its own subtree only.
    assert_eq!(
        suback_codes(
            &mut alice,
            &[("clients/alice-c/#", 1), ("clients/bob-c/#", 1)]
        )
        .await,
        vec![1, 0x80]
    );
    publish_acked(&mut bob, "clients/alice-c/cmd", b"from bob").await; // denied: not bob's %c
                                                                       // alice-c may write its own subtree; its own marker comes back to it.
    publish_acked(&mut alice, "clients/alice-c/marker", b"marker").await;
    let mut got = Vec::new();
    loop {
        let p = alice.recv_publish().await;
        let done = p.topic == "clients/alice-c/marker";
        // alice also receives her own earlier alice/private (she subscribed alice/#).
        if p.topic.starts_with("clients/") {
            got.push(p.topic);
        }
        if done {
            break;
        }
    }
    assert_eq!(
        got,
        vec!["clients/alice-c/marker"],
        "bob wrote into alice-c's %c subtree"
    );
}

#[tokio::test]
async fn sys_topics_need_an_explicit_acl_rule() {
    let files = Files::new("sys");
    write_users(&files);
    std::fs::write(
        files.path("acl"),
        format!(
            "{ACL}
user bob
topic read $SYS/#
"
        ),
    )
    .unwrap();
    let (b, _, _) = broker(&files, "sys_interval = 1").await;
    // alice has `topic read public/#` etc. but no $SYS rule: refused.
    let mut alice = login(b.addr, "alice-sys", Some(("alice", "alice-pw"))).await;
    assert_eq!(suback_codes(&mut alice, &[("$SYS/#", 0)]).await, vec![0x80]);
    // bob has an explicit rule: granted, and the broker's $SYS messages reach him.
    let mut bob = login(b.addr, "bob-sys", Some(("bob", "bob-pw"))).await;
    assert_eq!(
        suback_codes(&mut bob, &[("$SYS/broker/version", 0)]).await,
        vec![0]
    );
    let p = bob.recv_publish().await;
    assert_eq!(p.topic, "$SYS/broker/version");
    assert!(
        p.payload.starts_with(b"roostd "),
        "{:?}",
        String::from_utf8_lossy(&p.payload)
    );
}

#[tokio::test]
async fn acl_reload_applies_new_rules_and_refuses_a_broken_file() {
    let files = Files::new("reload");
    write_users(&files);
    let (b, _, reload) = broker(&files, "").await;
    let mut alice = login(b.addr, "alice-r", Some(("alice", "alice-pw"))).await;
    assert_eq!(suback_codes(&mut alice, &[("news/#", 0)]).await, vec![0x80]);
    std::fs::write(
        files.path("acl"),
        format!("{ACL}\nuser alice\ntopic read news/#\n"),
    )
    .unwrap();
    let mut granted = false;
    for _ in 0..50 {
        reload.notify_waiters();
        if suback_codes(&mut alice, &[("news/#", 0)]).await == vec![0] {
            granted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(granted, "the edited ACL was not applied within 5 s");
    // A broken file is refused: the rules just loaded stay in force.
    std::fs::write(files.path("acl"), "user alice\nthis is not a rule\n").unwrap();
    for _ in 0..5 {
        reload.notify_waiters();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        suback_codes(&mut alice, &[("news/#", 0), ("alice/#", 0)]).await,
        vec![0, 0]
    );
}

#[tokio::test]
async fn password_file_written_by_mosquitto_passwd_is_accepted_by_roostd_and_mosquitto_pub() {
    if !interop_binaries(&["mosquitto_passwd", "mosquitto_pub"]) {
        return;
    }
    let files = Files::new("interop");
    let st = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(files.path("passwords"))
        .args(["carol", "carol pw"])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(files.path("acl"), "user carol\ntopic readwrite #\n").unwrap();
    let (b, _, _) = broker(&files, "allow_anonymous = false").await;
    assert_eq!(
        connack_code(
            b.addr,
            &Connect::new("c1").username("carol").password(b"carol pw")
        )
        .await,
        0
    );
    assert_eq!(
        connack_code(
            b.addr,
            &Connect::new("c2").username("carol").password(b"wrong")
        )
        .await,
        5
    );
    let mut sub = login(b.addr, "carol-sub", Some(("carol", "carol pw"))).await;
    assert_eq!(suback_codes(&mut sub, &[("interop/#", 1)]).await, vec![1]);
    let out = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port().to_string(),
            "-u",
            "carol",
            "-P",
            "carol pw",
            "-t",
            "interop/pw",
            "-m",
            "via mosquitto_pub",
            "-q",
            "1",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("interop/pw", &b"via mosquitto_pub"[..])
    );
    // And with a wrong password mosquitto_pub is refused.
    let out = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port().to_string(),
            "-u",
            "carol",
            "-P",
            "bad",
            "-t",
            "x",
            "-m",
            "x",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
}

/// The README's auth section, run as written: `examples/auth/` (roostd.toml + acl) with a
/// password file made by `roostd passwd -c -b` and `roostd passwd -b`, the real binary started
/// with `--config roostd.toml` from that directory (only the port is changed: never a fixed
/// port in a test). Anonymous and wrong passwords get CONNACK 0x05; alice publishes readings,
/// bob reads them but may not write them; everyone has users/<name>/#.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_auth_example_runs_as_written() {
    use std::io::BufRead;
    let files = Files::new("example");
    let dir = files.dir.clone();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/auth");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::fs::read_to_string(example.join("roostd.toml")).unwrap();
    assert!(
        config.contains("port = 1883"),
        "the example listens on 1883"
    );
    // Top-level keys go before the [[listener]] table.
    let config = "metrics_enabled = false\nsys_interval = 0\n".to_string()
        + &config.replace("port = 1883", &format!("port = {port}"));
    std::fs::write(dir.join("roostd.toml"), config).unwrap();
    std::fs::copy(example.join("acl"), dir.join("acl")).unwrap();
    let bin = env!("CARGO_BIN_EXE_roostd");
    for args in [
        &["passwd", "-c", "-b", "passwords", "alice", "secret"][..],
        &["passwd", "-b", "passwords", "bob", "builder"][..],
    ] {
        let out = std::process::Command::new(bin)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "roostd {args:?}: {out:?}");
    }
    let mut child = std::process::Command::new(bin)
        .args(["--config", "roostd.toml"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let found = lines
            .by_ref()
            .any(|l| l.is_ok_and(|l| l.contains("listen socket")));
        // Keep reading so the broker's log pipe never fills.
        std::thread::spawn(move || lines.for_each(drop));
        found
    });
    let started = tokio::time::timeout(Duration::from_secs(30), ready).await;
    let guard = KillOnDrop(child);
    assert!(started.unwrap().unwrap(), "roostd did not start listening");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for c in [
        Connect::new("anon"),
        Connect::new("mallory").username("alice").password(b"wrong"),
    ] {
        let mut r = Raw::connect(addr, &c).await;
        let p = r.recv().await;
        assert_eq!((p.header, p.body[1]), (0x20, 0x05), "{c:?}");
    }
    let (mut alice, _) = Raw::connect_ok(
        addr,
        &Connect::new("alice-1")
            .username("alice")
            .password(b"secret"),
    )
    .await;
    let (mut bob, _) = Raw::connect_ok(
        addr,
        &Connect::new("bob-1").username("bob").password(b"builder"),
    )
    .await;
    bob.send(&subscribe(1, &[("sensors/#", 1), ("users/bob/#", 1)]))
        .await;
    assert_eq!(&bob.expect_kind(SUBACK).await.body[2..], &[1, 1]);
    // bob may not write readings: acknowledged (3.1.1 has no refusal) but not delivered.
    bob.send(&publish("sensors/fake", b"x", 1, false, false, 1))
        .await;
    bob.expect_kind(PUBACK).await;
    alice
        .send(&publish("sensors/1/temp", b"21.5", 1, false, false, 1))
        .await;
    alice.expect_kind(PUBACK).await;
    let m = bob.recv_publish_ack().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("sensors/1/temp", &b"21.5"[..])
    );
    bob.send(&publish("users/bob/note", b"mine", 1, false, false, 2))
        .await;
    bob.expect_kind(PUBACK).await;
    let m = bob.recv_publish_ack().await;
    assert_eq!(
        m.topic, "users/bob/note",
        "the sensors/fake PUBLISH was not delivered"
    );
    drop(guard);
}

/// Kills a child process when dropped (a failing test must not leave a broker running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
