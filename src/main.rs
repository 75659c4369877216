//! The roostd command line: flags, config file, logging; runs until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tracing::info;
use tracing_subscriber::EnvFilter;

use roostd::config::DEFAULT_PORT;
use roostd::{Broker, Config};

/// roostd: an MQTT 3.1.1 broker.
///
/// Without --config it listens on 127.0.0.1:1883 and allows anonymous clients, as Mosquitto 2
/// does with no configuration. roostd.example.toml documents every option and its default.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (see roostd.example.toml).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Port of the default listener (127.0.0.1), used when the config defines no [[listener]].
    #[arg(short, long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// More log output: -v debug, -vv trace. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Add or update a user in a Mosquitto password file (PBKDF2-SHA512, `$7$`, as
    /// mosquitto_passwd writes). Prompts for the password unless -b is given.
    Passwd {
        /// Batch mode: the password is the last argument (visible in the process list).
        #[arg(short = 'b')]
        batch: bool,
        /// The password file; created (mode 0600) if missing.
        file: PathBuf,
        /// The user name.
        username: String,
        /// The password, with -b.
        password: Option<String>,
    },
}

fn passwd(
    batch: bool,
    file: &std::path::Path,
    username: &str,
    password: Option<String>,
) -> anyhow::Result<()> {
    let password = match (batch, password) {
        (true, Some(p)) => p,
        (true, None) => anyhow::bail!("-b needs the password as the last argument"),
        (false, Some(_)) => anyhow::bail!("a password on the command line needs -b"),
        (false, None) => {
            let first = rpassword::prompt_password("Password: ").context("reading the password")?;
            let again =
                rpassword::prompt_password("Reenter password: ").context("reading the password")?;
            if first != again {
                anyhow::bail!("the passwords do not match");
            }
            first
        }
    };
    roostd::auth::set_user(file, username, password.as_bytes())
        .with_context(|| format!("updating {}", file.display()))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Passwd {
        batch,
        file,
        username,
        password,
    }) = cli.command
    {
        return passwd(batch, &file, &username, password);
    }
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // To stderr, as Mosquitto logs; through a queue and a thread of its own, so a closed or
    // full stderr never fails, blocks or panics anything (roostd::logging).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(roostd::logging::sink())
        .with_ansi(roostd::logging::colour())
        .log_internal_errors(false)
        .init();

    let config = match &cli.config {
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
                "roostd {} starting with embedded defaults (no config file): listening on 127.0.0.1:{} only, anonymous clients allowed.",
                env!("CARGO_PKG_VERSION"),
                cli.port
            );
            Config::default()
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async move {
        // Signal handlers before the listeners: a SIGTERM right after "listen socket" is
        // logged must shut down cleanly, not kill the process by the default action.
        let signals = Signals::register();
        let broker = Broker::bind_with_default_port(config, cli.port).await?;
        let shutdown = broker.shutdown_token();
        let reload = broker.reload_handle();
        signals.spawn(shutdown, reload);
        broker.run().await?;
        info!("roostd stopped.");
        Ok::<(), anyhow::Error>(())
    });
    // The last lines ("roostd stopped.") are written before the process exits.
    roostd::logging::flush();
    result
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

    fn spawn(
        self,
        shutdown: tokio_util::sync::CancellationToken,
        reload: std::sync::Arc<tokio::sync::Notify>,
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
                        info!("SIGHUP received: reloading certificates.");
                        reload.notify_waiters();
                    }
                });
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reload;
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                info!("Signal received, shutting down.");
                shutdown.cancel();
            });
        }
    }
}
