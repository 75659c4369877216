//! Listeners, the accept loop with its connection limit, session expiry, and graceful
//! shutdown: cancelling the token stops accepting, closes every connection and `run` returns
//! once they are done (or after a grace period).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, DEFAULT_PORT};
use crate::connection::{self, Context};
use crate::metrics::Metrics;
use crate::router::Router;

/// How long `run` waits for connections to close after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors starting or running the broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A broker with its listeners bound, ready to `run`.
pub struct Broker {
    config: Arc<Config>,
    router: Arc<Router>,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
}

impl Broker {
    /// Validates `config` and binds its listeners (127.0.0.1:1883 when none is configured).
    pub async fn bind(config: Config) -> Result<Broker, BrokerError> {
        Self::bind_with_default_port(config, DEFAULT_PORT).await
    }

    /// As `bind`, with the port of the default listener (the `-p` flag).
    pub async fn bind_with_default_port(
        config: Config,
        default_port: u16,
    ) -> Result<Broker, BrokerError> {
        config.validate()?;
        let mut listeners = Vec::new();
        for l in config.effective_listeners(default_port) {
            let addr = l.socket_addr()?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Bind { addr, source })?;
            let local = listener.local_addr().unwrap_or(addr);
            info!(
                "Opening ipv{} listen socket on {local}.",
                if local.is_ipv4() { 4 } else { 6 }
            );
            if config.anonymous_allowed() && !local.ip().is_loopback() {
                warn!("Listener {local} accepts anonymous clients from the network (allow_anonymous = true).");
            }
            listeners.push(listener);
        }
        if !config.anonymous_allowed() {
            warn!("allow_anonymous is false and roostd has no password_file support yet: every client will be refused with CONNACK 0x05.");
        }
        let router = Arc::new(Router::new(config.session_limits(), Metrics::new()));
        Ok(Broker {
            config: Arc::new(config),
            router,
            listeners,
            shutdown: CancellationToken::new(),
        })
    }

    /// The bound addresses, in config order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Cancel this token to shut the broker down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The shared routing state (for tests and benchmarks).
    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// Serves until the shutdown token is cancelled, then closes every connection.
    pub async fn run(self) -> Result<(), BrokerError> {
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let ctx = Context {
            router: self.router.clone(),
            config: self.config.clone(),
            shutdown: self.shutdown.clone(),
        };
        for listener in self.listeners {
            tracker.spawn(accept_loop(
                listener,
                ctx.clone(),
                limit.clone(),
                tracker.clone(),
            ));
        }
        if let Some(expiry) = self.config.expiration() {
            tracker.spawn(expire_loop(
                self.router.clone(),
                expiry,
                self.shutdown.clone(),
            ));
        }
        self.shutdown.cancelled().await;
        info!(
            "Shutting down: closing {} connection(s).",
            self.config.max_connections - limit.available_permits()
        );
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!("Some connections did not close within {SHUTDOWN_GRACE:?}.");
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Context,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // E.g. out of file descriptors: wait instead of spinning.
                error!("Accepting a connection failed: {e}; retrying in {backoff:?}.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctx.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.router.metrics().connections_refused_limit.increment(1);
            warn!(
                "Refusing connection from {peer}: max_connections ({}) reached.",
                ctx.config.max_connections
            );
            drop(socket);
            continue;
        };
        // Our writer batches; Nagle would only add latency.
        let _ = socket.set_nodelay(true);
        let ctx = ctx.clone();
        tracker.spawn(async move {
            connection::serve(socket, peer, ctx).await;
            drop(permit);
        });
    }
}

async fn expire_loop(router: Arc<Router>, expiry: Duration, shutdown: CancellationToken) {
    // Check often enough that a session outlives its expiry by at most a tenth (or a minute).
    let period = (expiry / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => { router.expire_sessions(expiry); }
            _ = shutdown.cancelled() => return,
        }
    }
}
