//! The roostd command line: flags, config file, logging; runs until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use roostd::config::DEFAULT_PORT;
use roostd::{Broker, Config};

/// roostd: an MQTT 3.1.1 broker.
///
/// Without --config it listens on 127.0.0.1:1883 (and [::1]:1883 where the machine has IPv6)
/// and allows anonymous clients, as Mosquitto 2 does with no configuration. roostd.example.toml
/// documents every option and its default. Logs go to stderr.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (see roostd.example.toml).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Port of the default listener (127.0.0.1 and ::1) [default: 1883]. Only used when the
    /// config defines no [[listener]]; ignored (with a warning) when it does.
    #[arg(short, long, value_name = "PORT")]
    port: Option<u16>,
    /// Port of the Prometheus metrics endpoint, as metrics_port [default: 9234]; 0 turns the
    /// endpoint off. Needed to run a second roostd beside a running one.
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// Directory of the database, as persistence_location [default: ./roostd-data]. Two
    /// brokers cannot share one.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// More log output: -v debug (every packet, as mosquitto -v), -vv trace. RUST_LOG
    /// overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Manage a Mosquitto password file (PBKDF2-SHA512, `$7$`, as mosquitto_passwd writes),
    /// with mosquitto_passwd's flags: `roostd passwd [-c | -D] FILE USER`,
    /// `roostd passwd -b FILE USER PASSWORD`, `roostd passwd -U FILE`.
    /// Without -b the password is asked for twice on the terminal.
    Passwd(PasswdArgs),
    /// Print the roostd TOML equivalent of a mosquitto.conf (a comment for every line that
    /// cannot be carried over, and why): `roostd import-mosquitto-conf mosquitto.conf >
    /// roostd.toml`.
    ImportMosquittoConf {
        /// The mosquitto.conf to read.
        file: PathBuf,
    },
}

/// What `roostd passwd` was asked to do.
#[derive(Debug, clap::Args)]
struct PasswdArgs {
    /// Create a new password file holding only USER (an existing file is replaced).
    #[arg(short = 'c', conflicts_with_all = ["delete", "update"])]
    create: bool,
    /// Delete USER from the file.
    #[arg(short = 'D', conflicts_with_all = ["batch", "update"])]
    delete: bool,
    /// Batch mode: the password is the last argument (visible in the process list).
    #[arg(short = 'b')]
    batch: bool,
    /// Hash, in place, the plain-text passwords of a `user:password` file.
    #[arg(short = 'U', conflicts_with = "batch")]
    update: bool,
    /// The password file; created (mode 0600) if missing.
    file: PathBuf,
    /// The user name.
    username: Option<String>,
    /// The password, with -b.
    password: Option<String>,
}

fn passwd(a: PasswdArgs) -> anyhow::Result<()> {
    let file = a.file.as_path();
    if a.update {
        if a.username.is_some() {
            anyhow::bail!("-U takes only the password file: roostd passwd -U FILE");
        }
        let n = roostd::auth::hash_plain_file(file)?;
        eprintln_safe(&format!("Hashed {n} password(s) in {}.", file.display()));
        return Ok(());
    }
    let Some(username) = a.username else {
        anyhow::bail!("a user name is needed: roostd passwd [-c | -D] FILE USER, or roostd passwd -b FILE USER PASSWORD");
    };
    if a.delete {
        if a.password.is_some() {
            anyhow::bail!("-D takes no password: roostd passwd -D FILE USER");
        }
        if !roostd::auth::delete_user(file, &username)? {
            anyhow::bail!("user {username} is not in {}", file.display());
        }
        return Ok(());
    }
    let password = match (a.batch, a.password) {
        (true, Some(p)) => p,
        (true, None) => anyhow::bail!("-b needs the password as the last argument"),
        (false, Some(_)) => anyhow::bail!("a password on the command line needs -b"),
        (false, None) => {
            use std::io::IsTerminal;
            if !std::io::stdin().is_terminal() {
                anyhow::bail!("no terminal to ask for the password on: use -b FILE USER PASSWORD");
            }
            let first = rpassword::prompt_password("Password: ").context("reading the password")?;
            let again =
                rpassword::prompt_password("Reenter password: ").context("reading the password")?;
            if first != again {
                anyhow::bail!("the passwords do not match");
            }
            first
        }
    };
    if a.create {
        roostd::auth::create_with_user(file, &username, password.as_bytes())?;
    } else {
        roostd::auth::set_user(file, &username, password.as_bytes())?;
    }
    Ok(())
}

/// Writes a line to stderr; a closed stderr is not an error worth dying of.
fn eprintln_safe(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// An error as one line per cause, each said once: a cause whose text the line before it
/// already holds (`loading x.toml: <the cause>`) is not repeated. No backtrace: these are the
/// user's errors (a typo, a port in use), not the program's.
fn report(e: &anyhow::Error) -> String {
    let mut lines: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if lines.last().is_some_and(|prev| prev.contains(&text)) {
            continue;
        }
        lines.push(text);
    }
    let mut out = format!("Error: {}", lines.first().map(String::as_str).unwrap_or(""));
    for line in lines.iter().skip(1) {
        out.push_str("\n  caused by: ");
        out.push_str(line);
    }
    out
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // After the log lines before it, plainly (no log prefix), once.
            roostd::logging::flush();
            eprintln_safe(&report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Passwd(args)) => return passwd(args),
        Some(Command::ImportMosquittoConf { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let converted = roostd::mosquitto_conf::convert(&text, &file.display().to_string());
            use std::io::Write;
            let mut out = std::io::stdout();
            out.write_all(converted.toml.as_bytes())
                .and_then(|()| out.flush())
                .context("writing the converted config to stdout")?;
            if converted.warnings > 0 {
                eprintln_safe(&format!(
                    "{} line(s) of {} could not be carried over: see the comments in the output.",
                    converted.warnings,
                    file.display()
                ));
            }
            return Ok(());
        }
        None => {}
    }
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // rustls warns about every client that sends an IP address as SNI (mosquitto_pub -h
    // 127.0.0.1 does): noise at the default level.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},rustls=error")));
    // To stderr, as Mosquitto logs; through a queue and a thread of its own, so a closed or
    // full stderr never fails, blocks or panics anything (roostd::logging).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(roostd::logging::sink())
        .with_ansi(roostd::logging::colour())
        .log_internal_errors(false)
        .init();
    // A panic (a bug; connection tasks catch theirs) is reported through the log queue, not
    // written to stderr by the default hook, which would block a worker on a full pipe.
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));

    let mut config = match &cli.config {
        Some(path) => {
            let config =
                Config::load(path).with_context(|| format!("loading {}", path.display()))?;
            info!(
                "roostd {} starting with config {}.",
                env!("CARGO_PKG_VERSION"),
                path.display()
            );
            config
        }
        None => {
            info!(
                "roostd {} starting with embedded defaults (no config file): listening on localhost port {} only, anonymous clients allowed.",
                env!("CARGO_PKG_VERSION"),
                cli.port.unwrap_or(DEFAULT_PORT)
            );
            Config::default()
        }
    };
    if let (Some(port), false) = (cli.port, config.listener.is_empty()) {
        warn!("-p {port} is ignored: the config defines [[listener]] tables (set the port there).");
    }
    match cli.metrics_port {
        Some(0) => config.metrics_enabled = false,
        Some(port) => config.metrics_port = port,
        None => {}
    }
    if let Some(dir) = cli.data_dir {
        config.persistence_location = dir;
    }
    let default_port = cli.port.unwrap_or(DEFAULT_PORT);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async move {
        // Signal handlers before the listeners: a SIGTERM right after "listen socket" is
        // logged must shut down cleanly, not kill the process by the default action.
        let signals = Signals::register();
        let reloadable = reloadable_files(&config);
        let broker = Broker::bind_with_default_port(config, default_port).await?;
        let shutdown = broker.shutdown_token();
        let reload = broker.reload_handle();
        signals.spawn(shutdown, reload, reloadable);
        broker.run().await?;
        info!("roostd stopped.");
        Ok::<(), anyhow::Error>(())
    });
    // The last lines ("roostd stopped.") are written before the process exits.
    roostd::logging::flush();
    result
}

/// What SIGHUP re-reads, in words: only what this config has.
fn reloadable_files(config: &Config) -> String {
    let mut what = Vec::new();
    let tls = config
        .listener
        .iter()
        .filter(|l| l.certfile.is_some())
        .count();
    if tls > 0 {
        what.push(format!("the certificates of {tls} TLS listener(s)"));
    }
    if let Some(p) = &config.password_file {
        what.push(format!("password_file {}", p.display()));
    }
    if let Some(p) = &config.acl_file {
        what.push(format!("acl_file {}", p.display()));
    }
    if what.is_empty() {
        "nothing to reload (no TLS listener, password_file or acl_file configured)".to_string()
    } else {
        format!("re-reading {} where they changed", what.join(", "))
    }
}

/// SIGTERM, SIGINT (shutdown) and SIGHUP (reload), registered at once so none is missed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// `reloadable` says what SIGHUP re-reads (for its log line).
    fn spawn(
        self,
        shutdown: tokio_util::sync::CancellationToken,
        reload: std::sync::Arc<tokio::sync::Notify>,
        reloadable: String,
    ) {
        #[cfg(unix)]
        {
            let Signals { term, int, hup } = self;
            tokio::spawn(async move {
                let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                    match s {
                        Some(mut s) => {
                            s.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = wait(term) => {}
                    _ = wait(int) => {}
                }
                info!("Signal received, shutting down.");
                shutdown.cancel();
            });
            if let Some(mut hup) = hup {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        // Each file that changed (or was refused) gets a line of its own.
                        info!("SIGHUP received: {reloadable}.");
                        reload.notify_waiters();
                    }
                });
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (reload, reloadable);
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                info!("Signal received, shutting down.");
                shutdown.cancel();
            });
        }
    }
}
