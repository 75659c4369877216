//! roostd: an MQTT 3.1.1 broker.
//!
//! The way of one message: a [`connection`] decodes a PUBLISH ([`protocol`]), the [`router`]
//! stores it if retained ([`retained`]), matches it against the subscription [`trie`] and
//! pushes one shared copy into each subscriber's [`session`] queue; each subscriber's
//! connection drains its queue into one write. [`server`] owns listeners and shutdown,
//! [`config`] the options. See ARCHITECTURE.md.
//!
//! Embedding (as the tests do):
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = roostd::Config::from_toml_str(
//!     "allow_anonymous = true\nmetrics_port = 0\n[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"",
//! )?;
//! let broker = roostd::Broker::bind(config).await?;
//! let addr = broker.local_addrs()[0];
//! let stop = broker.shutdown_token();
//! let running = tokio::spawn(broker.run());
//! // ... connect clients to `addr` ...
//! stop.cancel();
//! running.await??;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
pub mod connection;
pub mod http;
pub mod keepalive;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod mosquitto_conf;
pub mod protocol;
pub mod retained;
pub mod router;
pub mod server;
pub mod session;
pub mod storage;
pub mod sys;
pub mod tls;
pub mod trie;
pub mod websocket;

pub use config::{Config, ConfigError};
pub use server::{Broker, BrokerError};
