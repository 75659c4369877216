//! The `roostd` binary as an operator meets it (issue 12): run as a child process, its exit
//! code, stderr (where its logs go) and stdout are what is checked. Startup errors, two
//! brokers side by side, -p beside [[listener]], colour, -v packet logs, drop warnings,
//! SIGHUP, the empty client id log line, `roostd passwd` and `--help`.
//!
//! Every child gets a scratch directory as its working directory, ports probed by binding
//! 127.0.0.1:0, no RUST_LOG and no NO_COLOR from the environment (unless a test sets it).
//! Readiness is a log line or a CONNACK, never a sleep; every wait is bounded by `WAIT`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_roostd");

/// Bound on a child's start, its exit, one expected log line, one HTTP answer.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A directory of its own under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "roostd-cli-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` in the directory; returns its path.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, text).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once, then released).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&held) {
        *p = l.local_addr().unwrap().port();
    }
    ports
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The log line that says the broker listens on 127.0.0.1:`port`.
fn listen_line(port: u16) -> String {
    format!("Opening ipv4 listen socket on 127.0.0.1:{port}.")
}

/// A roostd command with a clean environment, run in `cwd`, killed if dropped.
fn roostd(args: &[&str], cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A finished one-shot run.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs roostd to its exit (bounded; killed if it does not exit) with RUST_BACKTRACE=1, as
/// on many developer machines.
async fn run(args: &[&str], cwd: &Path) -> Output {
    let mut cmd = roostd(args, cwd);
    cmd.env("RUST_BACKTRACE", "1");
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("roostd {args:?} did not exit within {WAIT:?}"))
        .expect("run roostd");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a user error must look like: exit code 1, exactly one line starting with "Error:",
/// no line said twice, no anyhow "Caused by:" block, no backtrace (RUST_BACKTRACE=1 is set
/// by `run`), no panic; every `once` text exactly once and every `contains` text somewhere.
fn assert_user_error(out: &Output, once: &[&str], contains: &[&str]) {
    assert_eq!(out.code, Some(1), "exit code 1 expected: {out:?}");
    let err = &out.stderr;
    let errors = err.lines().filter(|l| l.starts_with("Error:")).count();
    assert_eq!(errors, 1, "exactly one line starting with Error: {out:?}");
    let mut seen = HashSet::new();
    for line in err.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(seen.insert(line), "line {line:?} said twice: {out:?}");
    }
    for bad in ["Caused by:", "stack backtrace", "panicked"] {
        assert!(!err.contains(bad), "{bad:?} in stderr: {out:?}");
    }
    for text in once {
        assert_eq!(
            err.matches(text).count(),
            1,
            "{text:?} should be said exactly once: {out:?}"
        );
    }
    for text in contains {
        assert!(err.contains(text), "{text:?} missing: {out:?}");
    }
}

/// A child's stderr, collected line by line as it arrives.
#[derive(Clone)]
struct Log {
    text: Arc<Mutex<String>>,
    /// True once stderr reached EOF.
    done: watch::Receiver<bool>,
}

impl Log {
    /// Starts a task that collects `stderr` into the log.
    fn collect(stderr: tokio::process::ChildStderr) -> (Log, JoinHandle<()>) {
        let text = Arc::new(Mutex::new(String::new()));
        let (tx, done) = watch::channel(false);
        let sink = text.clone();
        let task = tokio::spawn(async move {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        sink.lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&line));
                        tx.send_modify(|_| {});
                    }
                }
            }
            tx.send_replace(true);
        });
        (Log { text, done }, task)
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    fn find(&self, needle: &str) -> Option<String> {
        self.text
            .lock()
            .unwrap()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
    }

    /// The first line containing `needle`, waiting (bounded) for it to be logged.
    async fn wait_for(&self, needle: &str) -> String {
        let mut done = self.done.clone();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let eof = *done.borrow_and_update();
                if let Some(line) = self.find(needle) {
                    return Some(line);
                }
                if eof || done.changed().await.is_err() {
                    return self.find(needle);
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "stderr closed without a line containing {needle:?}:\n{}",
                self.text()
            ),
            Err(_) => panic!(
                "no line containing {needle:?} within {WAIT:?}:\n{}",
                self.text()
            ),
        }
    }
}

/// A running roostd; killed (SIGKILL) if dropped before it exited.
struct Broker {
    child: Child,
    log: Log,
    reader: Option<JoinHandle<()>>,
}

impl Broker {
    fn spawn(args: &[&str], cwd: &Path) -> Broker {
        Broker::spawn_with(roostd(args, cwd))
    }

    fn spawn_with(mut cmd: Command) -> Broker {
        cmd.stdout(Stdio::null());
        let mut child = cmd.spawn().expect("start roostd");
        let (log, reader) = Log::collect(child.stderr.take().expect("stderr"));
        Broker {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// Starts roostd and waits for its listen socket on 127.0.0.1:`port`.
    async fn start(args: &[&str], cwd: &Path, port: u16) -> Broker {
        let b = Broker::spawn(args, cwd);
        b.log.wait_for(&listen_line(port)).await;
        b
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("roostd already exited").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// Waits (bounded) for the process to exit; returns its status and its whole stderr.
    async fn exited(&mut self) -> (ExitStatus, String) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "roostd did not exit within {WAIT:?}; stderr so far:\n{}",
                    self.log.text()
                )
            })
            .expect("wait for roostd");
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(WAIT, reader)
                .await
                .expect("stderr not closed after exit")
                .expect("stderr reader");
        }
        (status, self.log.text())
    }

    /// SIGTERM; the broker must exit 0. Returns its whole stderr.
    async fn stop(mut self) -> String {
        self.signal("TERM");
        let (status, log) = self.exited().await;
        assert_eq!(
            status.code(),
            Some(0),
            "roostd must exit 0 on SIGTERM ({status}):\n{log}"
        );
        log
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A broker config with one plain listener on 127.0.0.1:`port`, no metrics endpoint and no
/// persistence; `extra` holds more top-level keys.
fn listener_config(port: u16, extra: &str) -> String {
    format!(
        "allow_anonymous = true\nmetrics_enabled = false\npersistence = false\n{extra}\n[[listener]]\nport = {port}\nbind_address = \"127.0.0.1\"\n"
    )
}

/// GET /metrics over a plain TcpStream; returns the whole answer.
async fn http_get_metrics(port: u16) -> String {
    let answer = tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(local(port))
            .await
            .expect("connect metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("send GET");
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.expect("read answer");
        String::from_utf8_lossy(&body).into_owned()
    })
    .await
    .unwrap_or_else(|_| panic!("no HTTP answer on port {port} within {WAIT:?}"));
    answer
}

/// CONNECT with a fresh clean-session client, CONNACK 0 expected; then DISCONNECT.
async fn connack_ok(port: u16, id: &str) {
    let (c, _) = Raw::connect_ok(local(port), &Connect::new(id)).await;
    c.disconnect().await;
}

// ---------------------------------------------------------------------------
// 1. Startup errors
// ---------------------------------------------------------------------------

/// Runs `roostd --config FILE` with `text` as the file (metrics and persistence kept out of
/// the way by flags, so only the config can fail).
async fn run_config(name: &str, text: &str) -> Output {
    let dir = Scratch::new(name);
    let config = dir.file(&format!("{name}.toml"), text);
    let data = dir.join("data");
    run(
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-port",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await
}

/// A misspelt key is refused at startup: exit 1, one "Error:" line naming the unknown key
/// once, no repeated cause, no backtrace even with RUST_BACKTRACE=1.
#[tokio::test]
async fn an_unknown_key_is_one_error_naming_the_key() {
    let out = run_config("unknownkey", "allow_anonymous = true\nbogus_key = 1\n").await;
    assert_user_error(&out, &["unknown key `bogus_key`"], &["line 2"]);
}

/// A value out of range names the key, the value and the range in words ("from 0 to
/// 65535"), not serde's "expected u16".
#[tokio::test]
async fn a_value_out_of_range_names_key_and_range() {
    let out = run_config("range", "max_inflight_messages = 70000\n").await;
    assert_user_error(
        &out,
        &["`max_inflight_messages = 70000`", "from 0 to 65535"],
        &[],
    );
    assert!(!out.stderr.contains("expected u16"), "{out:?}");
}

/// A value that is none of the allowed words lists them ("must be one of always, interval,
/// never").
#[tokio::test]
async fn a_bad_enum_value_lists_the_allowed_values() {
    let out = run_config("enum", "fsync = \"sometimes\"\n").await;
    assert_user_error(
        &out,
        &[
            "fsync = \"sometimes\"",
            "must be one of always, interval, never",
        ],
        &[],
    );
}

/// A number where a boolean belongs: "must be true or false", naming the key.
#[tokio::test]
async fn a_number_for_a_boolean_says_true_or_false() {
    let out = run_config("bool", "persistence = 3\n").await;
    assert_user_error(&out, &["persistence = 3", "must be true or false"], &[]);
    assert!(!out.stderr.contains("expected a boolean"), "{out:?}");
}

/// A mosquitto.conf given as the config: the error says the file is TOML and points at
/// roostd.example.toml (and names the offending line).
#[tokio::test]
async fn a_mosquitto_conf_gets_a_toml_hint() {
    let out = run_config("mosq", "listener 1883\nallow_anonymous true\n").await;
    assert_user_error(&out, &["roostd.example.toml"], &["TOML", "listener 1883"]);
}

/// A config file that does not exist: exit 1, the error names the file.
#[tokio::test]
async fn a_missing_config_file_is_named() {
    let dir = Scratch::new("missing");
    let missing = dir.join("no-such-roostd.toml");
    let out = run(
        &["--config", missing.to_str().unwrap(), "--metrics-port", "0"],
        dir.path(),
    )
    .await;
    assert_user_error(&out, &[], &["no-such-roostd.toml"]);
}

// ---------------------------------------------------------------------------
// 2. Brokers side by side
// ---------------------------------------------------------------------------

/// Two brokers with their own -p, --metrics-port and --data-dir run side by side: both
/// accept a CONNECT and serve /metrics. A third one on the first one's data directory exits
/// 1 saying the database is in use by another roostd and naming persistence_location /
/// --data-dir; a fourth on the first one's metrics port exits 1 naming the metrics endpoint
/// and --metrics-port. The first two are unharmed and exit 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_side_by_side_and_what_a_third_is_told() {
    let [p1, p2, p3, p4, m1, m2, m3] = free_ports::<7>();
    let dir = Scratch::new("sidebyside");
    let (d1, d2, d4) = (dir.join("d1"), dir.join("d2"), dir.join("d4"));
    let (d1, d2, d4) = (
        d1.to_str().unwrap(),
        d2.to_str().unwrap(),
        d4.to_str().unwrap(),
    );
    let s = |n: u16| n.to_string();

    let a = Broker::spawn(
        &["-p", &s(p1), "--metrics-port", &s(m1), "--data-dir", d1],
        dir.path(),
    );
    a.log.wait_for(&listen_line(p1)).await;
    a.log
        .wait_for(&format!("Serving metrics on http://127.0.0.1:{m1}/metrics"))
        .await;
    let b = Broker::spawn(
        &["-p", &s(p2), "--metrics-port", &s(m2), "--data-dir", d2],
        dir.path(),
    );
    b.log.wait_for(&listen_line(p2)).await;
    b.log
        .wait_for(&format!("Serving metrics on http://127.0.0.1:{m2}/metrics"))
        .await;

    connack_ok(p1, "side-a").await;
    connack_ok(p2, "side-b").await;
    for m in [m1, m2] {
        let answer = http_get_metrics(m).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "/metrics on {m}: {answer}"
        );
        assert!(answer.contains("roostd_"), "/metrics on {m}: {answer}");
    }

    // C: A's data directory.
    let c = run(
        &["-p", &s(p3), "--metrics-port", &s(m3), "--data-dir", d1],
        dir.path(),
    )
    .await;
    assert_user_error(
        &c,
        &[],
        &[
            "in use by another roostd",
            "persistence_location",
            "--data-dir",
        ],
    );

    // D: A's metrics port, its own data directory.
    let d = run(
        &["-p", &s(p4), "--metrics-port", &s(m1), "--data-dir", d4],
        dir.path(),
    )
    .await;
    assert_user_error(
        &d,
        &[],
        &["metrics endpoint", "--metrics-port", &format!(":{m1}")],
    );

    // A still serves (C did not take its database), as does B.
    connack_ok(p1, "side-a-again").await;
    connack_ok(p2, "side-b-again").await;
    let log_a = a.stop().await;
    let log_b = b.stop().await;
    for log in [&log_a, &log_b] {
        assert!(log.contains("roostd stopped."), "{log}");
    }
}

/// `--metrics-port 0` turns the metrics endpoint off: the broker serves MQTT and never logs
/// "Serving metrics".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_port_0_starts_without_a_metrics_endpoint() {
    let [p] = free_ports::<1>();
    let dir = Scratch::new("nometrics");
    let data = dir.join("data");
    let b = Broker::start(
        &[
            "-p",
            &p.to_string(),
            "--metrics-port",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
        p,
    )
    .await;
    connack_ok(p, "no-metrics").await;
    let log = b.stop().await;
    assert!(!log.contains("Serving metrics"), "{log}");
    assert!(
        data.exists(),
        "--data-dir is where the database goes: {log}"
    );
}

/// Without a config the broker listens on localhost as Mosquitto 2 does: 127.0.0.1 and, where
/// the machine has IPv6, [::1] on the same port (a CONNECT there gets CONNACK 0); without
/// IPv6 it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_also_listens_on_the_ipv6_loopback() {
    let [p] = free_ports::<1>();
    let dir = Scratch::new("ipv6");
    let data = dir.join("data");
    let b = Broker::start(
        &[
            "-p",
            &p.to_string(),
            "--metrics-port",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
        p,
    )
    .await;
    // Logged after every listener was opened (or given up).
    b.log.wait_for("Persistence in").await;
    if b.log
        .find(&format!("Opening ipv6 listen socket on [::1]:{p}."))
        .is_some()
    {
        let v6: SocketAddr = format!("[::1]:{p}").parse().unwrap();
        let (c, _) = Raw::connect_ok(v6, &Connect::new("over-ipv6")).await;
        c.disconnect().await;
    } else {
        let note = b.log.find("No IPv6 loopback listener");
        assert!(
            note.is_some(),
            "neither [::1] nor a note why:\n{}",
            b.log.text()
        );
        println!("no IPv6 here: {}", note.unwrap());
    }
    connack_ok(p, "over-ipv4").await;
    b.stop().await;
}

/// After a crash (SIGKILL) the restart says once, not three times, that the database is
/// being repaired, and the persistent session is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_crash_says_repairing_once() {
    let [p] = free_ports::<1>();
    let dir = Scratch::new("crash");
    let config = dir.file(
        "roostd.toml",
        &format!(
            "allow_anonymous = true\nmetrics_enabled = false\npersistence_location = {:?}\nfsync = \"always\"\n[[listener]]\nport = {p}\nbind_address = \"127.0.0.1\"\n",
            dir.join("data").to_str().unwrap()
        ),
    );
    let args = ["--config", config.to_str().unwrap()];
    let mut first = Broker::start(&args, dir.path(), p).await;
    let (mut s, present) = Raw::connect_ok(local(p), &Connect::new("crash-sub").clean(false)).await;
    assert!(!present);
    s.sub("t/#", 1).await;
    s.disconnect().await;
    first.log.wait_for("Client crash-sub disconnected").await;
    first.signal("KILL");
    let (status, log) = first.exited().await;
    assert!(!status.success(), "killed: {status}\n{log}");

    let second = Broker::start(&args, dir.path(), p).await;
    second.log.wait_for("Recovered").await;
    let (s, present) = Raw::connect_ok(local(p), &Connect::new("crash-sub").clean(false)).await;
    assert!(present, "the persistent session survives the crash");
    s.disconnect().await;
    let log = second.stop().await;
    assert_eq!(
        log.matches("repairing").count(),
        1,
        "one repair line after a crash:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// 3. -p beside [[listener]]
// ---------------------------------------------------------------------------

/// `-p` with a config that defines [[listener]] tables warns that -p is ignored; the
/// configured listener is the one opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_with_configured_listeners_warns_that_it_is_ignored() {
    let [port, ignored] = free_ports::<2>();
    let dir = Scratch::new("pignored");
    let config = dir.file("roostd.toml", &listener_config(port, ""));
    let b = Broker::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "-p",
            &ignored.to_string(),
        ],
        dir.path(),
        port,
    )
    .await;
    let warning = b.log.wait_for("is ignored").await;
    assert!(
        warning.contains(&format!("-p {ignored} is ignored")),
        "{warning}"
    );
    connack_ok(port, "p-ignored").await;
    let log = b.stop().await;
    assert!(!log.contains(&listen_line(ignored)), "{log}");
}

// ---------------------------------------------------------------------------
// 4. Colour
// ---------------------------------------------------------------------------

/// Starts a broker with a clean-session client connecting and leaving, stops it, and returns
/// its whole stderr.
async fn log_of_a_short_run(name: &str, no_color: bool) -> String {
    let [p] = free_ports::<1>();
    let dir = Scratch::new(name);
    let data = dir.join("data");
    let mut cmd = roostd(
        &[
            "-p",
            &p.to_string(),
            "--metrics-port",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let b = Broker::spawn_with(cmd);
    b.log.wait_for(&listen_line(p)).await;
    connack_ok(p, "colour-check").await;
    b.log.wait_for("Client colour-check disconnected").await;
    b.stop().await
}

/// Logs written to a pipe carry no ANSI escape codes (they would garble files and log
/// collectors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_a_pipe_have_no_ansi_codes() {
    let log = log_of_a_short_run("pipe", false).await;
    assert!(log.contains("New client connected"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "ANSI codes in piped stderr:\n{log:?}"
    );
}

/// With NO_COLOR set, piped logs carry no ANSI escape codes either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_a_pipe_with_no_color_have_no_ansi_codes() {
    let log = log_of_a_short_run("pipe-nocolor", true).await;
    assert!(log.contains("New client connected"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "ANSI codes in piped stderr:\n{log:?}"
    );
}

/// On a terminal (a pty made by util-linux `script`) logs are coloured, and NO_COLOR turns
/// the colour off. The broker exits by itself: its port is taken, so it logs its start line
/// and the bind error. Skipped (with a note) where `script` is missing.
#[tokio::test]
async fn on_a_terminal_logs_are_coloured_unless_no_color() {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("script").is_file()))
        .unwrap_or(false);
    if !on_path {
        println!("skipped: script (util-linux) not found");
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = Scratch::new("pty");
    let data = dir.join("data");
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line = [
        BIN,
        "-p",
        &port.to_string(),
        "--metrics-port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .map(quote)
    .join(" ");
    for no_color in [false, true] {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .current_dir(dir.path())
            .env("SHELL", "/bin/sh")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .expect("script did not exit")
            .expect("run script");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("starting with embedded defaults") && text.contains("Error:"),
            "expected the start line and the bind error on the terminal: {text:?}"
        );
        assert_eq!(
            text.contains("\x1b["),
            !no_color,
            "NO_COLOR={no_color}: colour on a terminal unless NO_COLOR: {text:?}"
        );
    }
    drop(busy);
}

// ---------------------------------------------------------------------------
// 5. -v
// ---------------------------------------------------------------------------

/// The same traffic for each run: a QoS 1 subscriber on v/t and a QoS 1 publish of 5 bytes,
/// delivered and acknowledged. Returns the broker's whole stderr.
async fn verbose_traffic(verbose: bool) -> String {
    let [p] = free_ports::<1>();
    let dir = Scratch::new(if verbose { "verbose" } else { "quiet" });
    let data = dir.join("data");
    let port = p.to_string();
    let mut args = vec![
        "-p",
        &port,
        "--metrics-port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    if verbose {
        args.push("-v");
    }
    let b = Broker::start(&args, dir.path(), p).await;
    let mut sub = Raw::client(local(p), "v-sub").await;
    sub.sub("v/t", 1).await;
    let mut publ = Raw::client(local(p), "v-pub").await;
    publ.publish("v/t", b"hello", 1, false).await;
    let got = sub.recv_publish_ack().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("v/t", &b"hello"[..])
    );
    if verbose {
        // Every line is awaited (bounded) before the broker is stopped.
        b.log
            .wait_for("Received PUBLISH from v-pub (d0, q1, r0, m1, 'v/t', ... (5 bytes))")
            .await;
        b.log.wait_for("Sending PUBACK to v-pub").await;
        let sending = b.log.wait_for("Sending PUBLISH to v-sub").await;
        assert!(
            sending.contains("(d0, q1, r0, m") && sending.contains(", 'v/t', ... (5 bytes))"),
            "{sending}"
        );
        b.log.wait_for("Received SUBSCRIBE from v-sub").await;
        b.log.wait_for("v-sub 1 v/t").await;
    }
    publ.disconnect().await;
    sub.disconnect().await;
    b.log.wait_for("Client v-sub disconnected").await;
    b.stop().await
}

/// `-v` logs each packet as `mosquitto -v` does: `Received PUBLISH from <id> (d0, q1, r0,
/// m1, '<topic>', ... (N bytes))`, `Sending PUBACK to <id>`, `Sending PUBLISH to <id>`,
/// `Received SUBSCRIBE from <id>` with one `<id> <qos> <filter>` line per filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_logs_every_packet_as_mosquitto_does() {
    let log = verbose_traffic(true).await;
    assert!(log.contains("DEBUG"), "{log}");
}

/// Without -v none of the per-packet lines appear (the connect and disconnect lines do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_verbose_packets_are_not_logged() {
    let log = verbose_traffic(false).await;
    assert!(log.contains("as v-pub"), "client lines are logged: {log}");
    for line in [
        "Received PUBLISH",
        "Sending PUBACK",
        "Sending PUBLISH",
        "Received SUBSCRIBE",
        "DEBUG",
    ] {
        assert!(!log.contains(line), "{line:?} logged without -v:\n{log}");
    }
}

// ---------------------------------------------------------------------------
// 6. Drop warnings
// ---------------------------------------------------------------------------

/// QoS 0 messages to an offline persistent session are dropped (queue_qos0_messages is
/// false by default) and said so: ONE "Outgoing messages are being dropped for client <id>"
/// line for 5 of them (rate-limited per client, at most once per 10 s), naming the reason
/// qos0_offline. The limit is per client: a second offline session gets its own line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_to_an_offline_session_are_warned_once_per_interval() {
    let [p] = free_ports::<1>();
    let dir = Scratch::new("drops");
    let data = dir.join("data");
    let b = Broker::start(
        &[
            "-p",
            &p.to_string(),
            "--metrics-port",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
        p,
    )
    .await;
    for id in ["off-sub", "off-sub2"] {
        let (mut s, _) = Raw::connect_ok(local(p), &Connect::new(id).clean(false)).await;
        s.sub("t/#", 1).await;
        s.disconnect().await;
        // Logged when the connection closes, right before the session is detached.
        b.log.wait_for(&format!("Client {id} disconnected")).await;
    }

    let mut publ = Raw::client(local(p), "off-pub").await;
    for i in 0..5u8 {
        publ.publish("t/x", &[i], 0, false).await;
    }
    // The PINGRESP comes after the 5 PUBLISHes were routed.
    publ.ping().await;
    publ.disconnect().await;
    b.log.wait_for("Client off-pub disconnected").await;
    let log = b.stop().await;
    for id in ["off-sub", "off-sub2"] {
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains(&format!(
                    "Outgoing messages are being dropped for client {id}:"
                ))
            })
            .collect();
        assert_eq!(warnings.len(), 1, "one warning for 5 drops to {id}:\n{log}");
        assert!(warnings[0].contains("qos0_offline"), "{}", warnings[0]);
    }
    assert_eq!(
        log.matches("Outgoing messages are being dropped").count(),
        2,
        "{log}"
    );
}

// ---------------------------------------------------------------------------
// 7. SIGHUP
// ---------------------------------------------------------------------------

/// SIGHUP to a broker with no TLS listener, password_file or acl_file says there is nothing
/// to reload (not "reloading certificates"), and the broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_nothing_to_reload_says_so() {
    let [p] = free_ports::<1>();
    let dir = Scratch::new("hup-nothing");
    let config = dir.file("roostd.toml", &listener_config(p, ""));
    let b = Broker::start(&["--config", config.to_str().unwrap()], dir.path(), p).await;
    b.signal("HUP");
    let line = b.log.wait_for("SIGHUP received").await;
    assert!(line.contains("nothing to reload"), "{line}");
    connack_ok(p, "after-hup").await;
    let log = b.stop().await;
    assert!(!log.contains("reloading certificates"), "{log}");
}

/// SIGHUP with an acl_file configured names the acl_file (and its path) as what is re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_acl_file_names_it() {
    let [p] = free_ports::<1>();
    let dir = Scratch::new("hup-acl");
    let acl = dir.file("roostd.acl", "topic readwrite #\n");
    let config = dir.file(
        "roostd.toml",
        &listener_config(p, &format!("acl_file = {:?}", acl.to_str().unwrap())),
    );
    let b = Broker::start(&["--config", config.to_str().unwrap()], dir.path(), p).await;
    b.signal("HUP");
    let line = b.log.wait_for("SIGHUP received").await;
    assert!(
        line.contains("acl_file") && line.contains(acl.to_str().unwrap()),
        "{line}"
    );
    assert!(!line.contains("nothing to reload"), "{line}");
    assert!(!line.contains("certificates"), "no TLS listener: {line}");
    connack_ok(p, "after-hup-acl").await;
    b.stop().await;
}

/// Replaces `path` by a rename, so that a reload never reads half a file.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// SIGHUP with a password_file and an acl_file names both; a changed file gets a line of its
/// own ("Reloaded ACL file <path>", and none for the unchanged password file); a broken one is
/// refused with a line naming it, and the previous passwords stay in force.
///
/// Each SIGHUP here has a line of its own that says its reload is done, awaited before the
/// next step (a reload still running when the next signal arrives would blur the steps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_changed_files_with_a_line_each() {
    let [p] = free_ports::<1>();
    let dir = Scratch::new("hup-files");
    let pw = dir.join("passwd");
    let pw_s = pw.to_str().unwrap();
    assert_ok(&passwd(&["-b", pw_s, "alice", "secret"], dir.path()).await);
    let acl = dir.file("roostd.acl", "topic readwrite #\n");
    let acl_s = acl.to_str().unwrap();
    let config = dir.file(
        "roostd.toml",
        &listener_config(
            p,
            // No polling: only SIGHUP re-reads.
            &format!("password_file = {pw_s:?}\nacl_file = {acl_s:?}\nreload_interval = 0"),
        ),
    );
    let b = Broker::start(&["--config", config.to_str().unwrap()], dir.path(), p).await;
    let alice = |pass: &[u8]| Connect::new("alice-c").username("alice").password(pass);
    // Serving (the reload watcher runs): the right password is accepted.
    let (c, _) = Raw::connect_ok(local(p), &alice(b"secret")).await;
    c.disconnect().await;

    replace_file(&acl, "topic readwrite #\ntopic read other/#\n");
    b.signal("HUP");
    let line = b.log.wait_for("SIGHUP received").await;
    assert!(
        line.contains(&format!("password_file {pw_s}"))
            && line.contains(&format!("acl_file {acl_s}")),
        "{line}"
    );
    b.log.wait_for(&format!("Reloaded ACL file {acl_s}")).await;
    // The password file is re-read before the ACL in the same reload: its line would be
    // there by now.
    assert!(
        b.log.find("Reloaded password file").is_none(),
        "the password file did not change:\n{}",
        b.log.text()
    );

    replace_file(&pw, "this line has no colon\n");
    b.signal("HUP");
    let refused = b.log.wait_for("Reload refused").await;
    assert!(refused.contains(pw_s), "{refused}");
    let (c, _) = Raw::connect_ok(local(p), &alice(b"secret")).await;
    c.disconnect().await;
    let mut wrong = Raw::connect(local(p), &alice(b"wrong")).await;
    let ack = wrong.recv().await;
    assert_eq!(ack.header, 0x20, "{ack:?}");
    assert_ne!(ack.body[1], 0, "a wrong password is refused: {ack:?}");
    let log = b.stop().await;
    assert_eq!(log.matches("SIGHUP received").count(), 2, "{log}");
}

// ---------------------------------------------------------------------------
// 8. Empty client id
// ---------------------------------------------------------------------------

/// An empty client id with clean session 0 is refused with CONNACK 0x02 [MQTT-3.1.3-8], and
/// the log line says "(empty client id)" instead of leaving a double space ("Client  from").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_client_id_is_named_in_the_log() {
    let [p] = free_ports::<1>();
    let dir = Scratch::new("emptyid");
    let config = dir.file("roostd.toml", &listener_config(p, ""));
    let b = Broker::start(&["--config", config.to_str().unwrap()], dir.path(), p).await;
    let mut c = Raw::connect(local(p), &Connect::new("").clean(false)).await;
    let ack = c.recv().await;
    assert_eq!(
        (ack.header, ack.body.as_slice()),
        (0x20, &[0x00, 0x02][..]),
        "CONNACK 0x02 identifier rejected [MQTT-3.1.3-9]: {ack:?}"
    );
    c.expect_closed().await;
    let line = b.log.wait_for("refused").await;
    assert!(
        line.contains("Client (empty client id) from 127.0.0.1:"),
        "{line}"
    );
    let log = b.stop().await;
    assert!(!log.contains("Client  from"), "{log}");
}

// ---------------------------------------------------------------------------
// 9. roostd passwd
// ---------------------------------------------------------------------------

fn passwd_file(path: &Path) -> roostd::auth::PasswordFile {
    roostd::auth::PasswordFile::load(path)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()))
}

async fn passwd(args: &[&str], cwd: &Path) -> Output {
    let mut all = vec!["passwd"];
    all.extend_from_slice(args);
    run(&all, cwd).await
}

fn assert_ok(out: &Output) {
    assert_eq!(out.code, Some(0), "{out:?}");
}

/// Without -b and with stdin not a terminal there is nobody to prompt: exit 1 and "use -b";
/// the same for -c, which must leave an existing file alone.
#[tokio::test]
async fn passwd_without_a_terminal_says_use_b() {
    let dir = Scratch::new("pw-tty");
    let file = dir.join("passwd");
    let f = file.to_str().unwrap();
    let out = passwd(&[f, "user"], dir.path()).await;
    assert_user_error(&out, &[], &["use -b"]);
    assert!(!file.exists(), "nothing written: {out:?}");

    assert_ok(&passwd(&["-b", f, "keep", "pw"], dir.path()).await);
    let before = std::fs::read(&file).unwrap();
    let out = passwd(&["-c", f, "user3"], dir.path()).await;
    assert_user_error(&out, &[], &["use -b"]);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "-c without a password must not replace the file"
    );
}

/// `-b FILE user pw`, `-b FILE user2 pw2`, `-D FILE user` leave only user2, whose password
/// verifies; `-D` of a missing user exits 1 naming it; `-D` with a password argument is
/// refused and changes nothing.
#[tokio::test]
async fn passwd_batch_add_and_delete() {
    let dir = Scratch::new("pw-batch");
    let file = dir.join("passwd");
    let f = file.to_str().unwrap();
    assert_ok(&passwd(&["-b", f, "user", "pw"], dir.path()).await);
    assert_ok(&passwd(&["-b", f, "user2", "pw2"], dir.path()).await);
    let both = passwd_file(&file);
    assert_eq!(both.len(), 2);
    assert!(both.verify("user", b"pw") && both.verify("user2", b"pw2"));

    assert_ok(&passwd(&["-D", f, "user"], dir.path()).await);
    let left = passwd_file(&file);
    assert_eq!(left.len(), 1, "{:?}", std::fs::read_to_string(&file));
    assert!(left.verify("user2", b"pw2"));
    assert!(!left.verify("user", b"pw"));

    let before = std::fs::read(&file).unwrap();
    let out = passwd(&["-D", f, "nobody"], dir.path()).await;
    assert_user_error(&out, &[], &["nobody"]);
    let out = passwd(&["-D", f, "user2", "pw2"], dir.path()).await;
    assert_user_error(&out, &[], &["-D"]);
    assert_eq!(std::fs::read(&file).unwrap(), before, "file unchanged");
    assert!(passwd_file(&file).verify("user2", b"pw2"));
}

/// `-c -b FILE user3 pw3` replaces the file: it then holds only user3.
#[tokio::test]
async fn passwd_create_replaces_the_file() {
    let dir = Scratch::new("pw-create");
    let file = dir.join("passwd");
    let f = file.to_str().unwrap();
    assert_ok(&passwd(&["-b", f, "user", "pw"], dir.path()).await);
    assert_ok(&passwd(&["-b", f, "user2", "pw2"], dir.path()).await);
    assert_ok(&passwd(&["-c", "-b", f, "user3", "pw3"], dir.path()).await);
    let only = passwd_file(&file);
    assert_eq!(only.len(), 1, "{:?}", std::fs::read_to_string(&file));
    assert!(only.verify("user3", b"pw3"));
    assert!(!only.verify("user", b"pw") && !only.verify("user2", b"pw2"));
}

/// `-U FILE` hashes a plain-text `alice:secret` line in place (the password then verifies
/// and is no longer in the file) and keeps an already hashed line byte for byte.
#[tokio::test]
async fn passwd_update_hashes_plain_lines_only() {
    let dir = Scratch::new("pw-update");
    let hashed_file = dir.join("hashed");
    assert_ok(
        &passwd(
            &["-b", hashed_file.to_str().unwrap(), "bob", "bobpw"],
            dir.path(),
        )
        .await,
    );
    let hashed_line = std::fs::read_to_string(&hashed_file).unwrap();
    let hashed_line = hashed_line.lines().next().unwrap().to_owned();
    assert!(hashed_line.starts_with("bob:$7$"), "{hashed_line}");

    let file = dir.file("passwd", &format!("alice:secret\n{hashed_line}\n"));
    let out = passwd(&["-U", file.to_str().unwrap()], dir.path()).await;
    assert_ok(&out);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("alice:$7$"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert_eq!(
        lines[1], hashed_line,
        "the hashed line is kept byte for byte"
    );
    let pw = passwd_file(&file);
    assert!(pw.verify("alice", b"secret"));
    assert!(pw.verify("bob", b"bobpw"));
}

// ---------------------------------------------------------------------------
// 10. --help
// ---------------------------------------------------------------------------

/// `roostd --help` shows the flags and commands a second instance and a Mosquitto user
/// need: --metrics-port, --data-dir, import-mosquitto-conf.
#[tokio::test]
async fn help_mentions_the_new_flags_and_commands() {
    let dir = Scratch::new("help");
    let out = run(&["--help"], dir.path()).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    for text in [
        "--metrics-port",
        "--data-dir",
        "import-mosquitto-conf",
        "passwd",
    ] {
        assert!(out.stdout.contains(text), "{text} missing: {out:?}");
    }
}

/// `roostd passwd --help` shows mosquitto_passwd's flags -c, -D, -b, -U.
#[tokio::test]
async fn passwd_help_shows_mosquitto_passwd_flags() {
    let dir = Scratch::new("pw-help");
    let out = run(&["passwd", "--help"], dir.path()).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let flags: HashSet<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for flag in ["-c", "-D", "-b", "-U"] {
        assert!(flags.contains(flag), "{flag} missing: {out:?}");
    }
}

/// `roostd import-mosquitto-conf FILE` on a realistic mosquitto.conf (several listeners: all
/// interfaces, TLS, WebSockets on localhost; auth; persistence; a bridge and syslog logging,
/// which cannot be carried over): exit 0, the TOML on stdout is a config roostd accepts with
/// the listeners and values of the original, every unconvertible line has a comment, and
/// stderr says how many.
#[tokio::test]
async fn import_mosquitto_conf_prints_a_config_roostd_accepts() {
    let dir = Scratch::new("import");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        "# office broker\nper_listener_settings false\nallow_anonymous false\npassword_file /etc/mosquitto/passwd\nacl_file /etc/mosquitto/acl\nmax_inflight_messages 40\nmax_queued_messages 5000\nmessage_size_limit 65536\npersistent_client_expiration 2w\n\nlistener 1883\n\nlistener 8883\ncertfile /etc/mosquitto/certs/server.crt\nkeyfile /etc/mosquitto/certs/server.key\ncafile /etc/mosquitto/certs/ca.crt\nrequire_certificate true\nuse_identity_as_username true\n\nlistener 8080 127.0.0.1\nprotocol websockets\n\nconnection hq\naddress 10.0.0.1:1883\nlog_dest syslog\npersistence true\npersistence_location /var/lib/mosquitto/\n",
    )
    .unwrap();
    let out = run(
        &["import-mosquitto-conf", conf.to_str().unwrap()],
        dir.path(),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let config = roostd::Config::from_toml_str(&out.stdout)
        .unwrap_or_else(|e| panic!("the converted config is refused: {e}\n{}", out.stdout));
    assert!(!config.anonymous_allowed());
    assert_eq!(config.max_inflight_messages, 40);
    assert_eq!(config.max_queued_messages, 5000);
    assert_eq!(config.message_size_limit, 65536);
    assert_eq!(config.persistent_client_expiration, "2w");
    let ports: Vec<u16> = config.listener.iter().map(|l| l.port).collect();
    assert_eq!(ports, vec![1883, 8883, 8080], "{}", out.stdout);
    let tls = &config.listener[1];
    assert!(tls.certfile.is_some() && tls.require_certificate && tls.use_identity_as_username);
    let ws = &config.listener[2];
    assert_eq!(ws.protocol, roostd::config::ListenerProtocol::Websockets);
    assert_eq!(ws.bind_address, "127.0.0.1");
    for line in ["connection hq", "address 10.0.0.1:1883", "log_dest syslog"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with('#') && l.contains(line) && l.contains("not converted")),
            "no comment for {line:?}:\n{}",
            out.stdout
        );
    }
    assert!(out.stderr.contains("3 line(s)"), "{out:?}");
}
