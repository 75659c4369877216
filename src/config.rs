//! The TOML configuration. Option names follow Mosquitto's where one exists; every option has
//! a default documented here and in `roostd.example.toml`. Unknown keys and bad values stop
//! startup with a message naming the key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::session::SessionLimits;
use crate::storage::FsyncPolicy;
use crate::tls::TlsFiles;

/// Default MQTT port.
pub const DEFAULT_PORT: u16 = 1883;

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The TOML could not be read into a config: the message names the line, the key, the
    /// value and what is allowed (see `describe_toml_error`).
    #[error("{0}")]
    Parse(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// One `[[listener]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// TCP port; 0 picks a free port (tests).
    pub port: u16,
    /// Address to bind. Default "0.0.0.0" (all IPv4 addresses), as Mosquitto's `listener PORT`.
    #[serde(default = "default_bind_address")]
    pub bind_address: String,
    /// Server certificate chain, PEM. With keyfile, makes this a TLS listener. Default none.
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    /// Server private key, PEM. Default none.
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// CA certificates that sign client certificates, PEM. Default none (no client certs).
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// Refuse TLS clients without a certificate signed by cafile. Default false.
    #[serde(default)]
    pub require_certificate: bool,
    /// Use the client certificate's identity as the user name (no password). Default false.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Which identity: "cn" (subject common name) or "san" (first subject alternative name).
    /// Default "cn".
    #[serde(default)]
    pub identity_source: IdentitySource,
    /// "mqtt" (MQTT over TCP, or TLS with certfile/keyfile) or "websockets" (MQTT over
    /// WebSockets: ws, or wss with certfile/keyfile), as Mosquitto's `protocol`. Default "mqtt".
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// With protocol = "websockets": the only HTTP path accepted (e.g. "/mqtt"). Default none:
    /// any path, as Mosquitto (MQTT.js asks for "/", others for "/mqtt").
    #[serde(default)]
    pub path: Option<String>,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    #[default]
    Mqtt,
    Websockets,
}

/// Where `use_identity_as_username` takes the user name from.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySource {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS, e-mail or URI subject alternative name.
    San,
}

fn default_bind_address() -> String {
    "0.0.0.0".to_string()
}

impl ListenerConfig {
    /// A plain TCP listener.
    pub fn plain(bind_address: &str, port: u16) -> ListenerConfig {
        ListenerConfig {
            port,
            bind_address: bind_address.to_string(),
            certfile: None,
            keyfile: None,
            cafile: None,
            require_certificate: false,
            use_identity_as_username: false,
            identity_source: IdentitySource::Cn,
            protocol: ListenerProtocol::Mqtt,
            path: None,
        }
    }

    /// The TLS files, if this is a TLS listener.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.certfile, &self.keyfile) {
            (Some(certfile), Some(keyfile)) => Ok(Some(TlsFiles {
                certfile: certfile.clone(),
                keyfile: keyfile.clone(),
                cafile: self.cafile.clone(),
                require_certificate: self.require_certificate,
            })),
            (None, None) => {
                for (set, key) in [
                    (self.cafile.is_some(), "cafile"),
                    (self.require_certificate, "require_certificate"),
                    (self.use_identity_as_username, "use_identity_as_username"),
                ] {
                    if set {
                        return Err(invalid(
                            &format!("listener.{key}"),
                            format!("listener on port {} has no certfile/keyfile, so it is not a TLS listener", self.port),
                        ));
                    }
                }
                Ok(None)
            }
            (Some(_), None) => Err(invalid(
                "listener.keyfile",
                "certfile is set but keyfile is missing",
            )),
            (None, Some(_)) => Err(invalid(
                "listener.certfile",
                "keyfile is set but certfile is missing",
            )),
        }
    }
    /// Checks the WebSocket settings.
    pub fn check_protocol(&self) -> Result<(), ConfigError> {
        match (&self.path, self.protocol) {
            (Some(_), ListenerProtocol::Mqtt) => Err(invalid(
                "listener.path",
                format!(
                    "listener on port {} has path but is not a websockets listener (protocol = \"websockets\")",
                    self.port
                ),
            )),
            (Some(p), ListenerProtocol::Websockets) if !p.starts_with('/') => {
                Err(invalid("listener.path", format!("`{p}` must start with '/'")))
            }
            _ => Ok(()),
        }
    }

    /// The socket address to bind.
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        let ip: IpAddr = self.bind_address.parse().map_err(|_| {
            invalid(
                "listener.bind_address",
                format!("`{}` is not an IP address", self.bind_address),
            )
        })?;
        Ok(SocketAddr::new(ip, self.port))
    }
}

/// Broker configuration. See roostd.example.toml for every option with its reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[[listener]]` tables. None: one listener on 127.0.0.1:1883 (or `-p`).
    pub listener: Vec<ListenerConfig>,
    /// Allow clients without a user name. Default: true when no listener is configured
    /// (embedded defaults, localhost only), false otherwise, as Mosquitto 2.
    pub allow_anonymous: Option<bool>,
    /// Concurrent client connections at most. Default 100000.
    pub max_connections: usize,
    /// Unacknowledged outgoing QoS 1/2 messages per client. Default 20 (Mosquitto's).
    pub max_inflight_messages: u16,
    /// Messages queued per client beyond the in-flight window. Default 1000 (Mosquitto's).
    pub max_queued_messages: usize,
    /// Bytes (topic + payload) queued per client beyond the in-flight window. Default 16 MiB.
    pub max_queued_bytes: usize,
    /// Largest accepted packet (remaining length) in bytes. Default 1 MiB.
    pub message_size_limit: usize,
    /// Largest keepalive a client may ask for, in seconds. Default 65535.
    pub max_keepalive: u16,
    /// Most levels a topic name or filter may have. A PUBLISH (or will) over it closes the
    /// connection, a SUBSCRIBE filter over it gets 0x80. Default 200 (Mosquitto's fixed
    /// limit): real topics have a handful of levels, and every level costs a trie node.
    pub max_topic_levels: usize,
    /// Retained messages kept at most; a retained PUBLISH for a new topic beyond it is
    /// delivered but not retained (logged and counted). Default 1000000.
    pub max_retained_messages: usize,
    /// Topic + payload bytes of all retained messages at most (they are held in memory, and
    /// on disk with persistence); a retained PUBLISH that would pass it is delivered but not
    /// retained. Default 256 MiB.
    pub max_retained_bytes: usize,
    /// How long a persistent session is kept while its client is offline: a number with a
    /// unit s, h, d, w, m (30 days) or y (365 days), or "never". Default "1d".
    pub persistent_client_expiration: String,
    /// Whether retained messages are supported. Default true.
    pub retain_available: bool,
    /// Queue QoS 0 messages for offline persistent sessions. Default false (Mosquitto's).
    pub queue_qos0_messages: bool,
    /// Seconds a connected subscriber with a full QoS 1/2 queue may hold its publishers back
    /// (they stop being read) before messages to it are dropped; 0 drops at once as Mosquitto.
    /// Default 5.
    pub backpressure_timeout: u64,
    /// Seconds a new socket has to send CONNECT. Default 10.
    pub connect_timeout: u64,
    /// Serve Prometheus metrics over HTTP. Default true.
    pub metrics_enabled: bool,
    /// Address of the metrics endpoint. Default "127.0.0.1": scrapes from this host only.
    pub metrics_bind_address: String,
    /// Port of the metrics endpoint. Default 9234 (the port Mosquitto exporters use); 0 picks
    /// a free port (tests). `--metrics-port 0` on the command line turns the endpoint off.
    pub metrics_port: u16,
    /// Seconds between `$SYS` updates; 0 turns them off. Default 10 (Mosquitto's).
    pub sys_interval: u64,
    /// Seconds a TLS client has to finish its handshake. Default 10.
    pub tls_handshake_timeout: u64,
    /// Seconds between checks of TLS, password and ACL files for changes; 0: only on SIGHUP.
    /// Default 5.
    pub reload_interval: u64,
    /// Mosquitto password file (`mosquitto_passwd` or `roostd passwd`). Default none.
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file. Default none: every client may publish and subscribe to anything.
    pub acl_file: Option<PathBuf>,
    /// Keep retained messages, persistent sessions and their queued messages on disk.
    /// Default true.
    pub persistence: bool,
    /// Directory of the database (created if missing). Default "roostd-data", relative to
    /// the working directory.
    pub persistence_location: PathBuf,
    /// When commits reach the disk: "always" (acknowledgements wait for the fsync, shared by
    /// all clients: group commit), "interval" (an fsync every fsync_interval ms) or "never"
    /// (a checkpoint every 60 s and at clean shutdown). Default "interval".
    pub fsync: FsyncMode,
    /// Milliseconds between fsyncs with fsync = "interval". Default 1000.
    pub fsync_interval: u64,
    /// Bytes of writes waiting for the disk above which publishers are paused until half of
    /// it is written. Default 64 MiB: a disk slower than the message rate must not grow the
    /// broker's memory without bound.
    pub max_storage_backlog: usize,
}

/// The `fsync` option.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    Always,
    #[default]
    Interval,
    Never,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listener: Vec::new(),
            allow_anonymous: None,
            max_connections: 100_000,
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            message_size_limit: 1024 * 1024,
            max_keepalive: 65535,
            max_topic_levels: DEFAULT_MAX_TOPIC_LEVELS,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 256 * 1024 * 1024,
            persistent_client_expiration: "1d".to_string(),
            retain_available: true,
            queue_qos0_messages: false,
            backpressure_timeout: 5,
            connect_timeout: 10,
            metrics_enabled: true,
            metrics_bind_address: "127.0.0.1".to_string(),
            metrics_port: 9234,
            sys_interval: 10,
            tls_handshake_timeout: 10,
            reload_interval: 5,
            password_file: None,
            acl_file: None,
            persistence: true,
            persistence_location: PathBuf::from("roostd-data"),
            fsync: FsyncMode::Interval,
            fsync_interval: 1000,
            max_storage_backlog: crate::storage::DEFAULT_BACKLOG_LIMIT,
        }
    }
}

/// Default `max_topic_levels` (Mosquitto refuses more than 200 levels).
pub const DEFAULT_MAX_TOPIC_LEVELS: usize = 200;

/// The most levels a topic can have: 65,535 bytes of '/' are 65,536 empty levels.
const MQTT_MAX_LEVELS: usize = 65_536;

/// The MQTT maximum remaining length.
const MQTT_MAX_REMAINING: usize = 268_435_455;

/// A TOML or value error as a user reads it: the line, the key and value written there, and
/// what is allowed, in words instead of serde's (`invalid value: integer 70000, expected u16`
/// becomes "`max_inflight_messages = 70000`: must be a whole number from 0 to 65535"). A file
/// that looks like a mosquitto.conf gets a hint that roostd's config is TOML.
pub fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let raw = e.message().trim();
    let line_no = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let line = line_no
        .and_then(|n| text.lines().nth(n - 1))
        .map(str::trim)
        .unwrap_or("");
    let mut msg = match line_no {
        Some(n) => format!("line {n}: "),
        None => String::new(),
    };
    let allowed = friendly_expectation(raw);
    match (line.split_once('='), allowed) {
        (Some((key, value)), Some(allowed)) => {
            msg.push_str(&format!("`{} = {}`: {allowed}", key.trim(), value.trim()));
        }
        (_, _) if raw.starts_with("unknown field") => {
            // "unknown field `x`, expected one of ..."
            let key = raw.split('`').nth(1).unwrap_or(raw);
            msg.push_str(&format!(
                "unknown key `{key}` (roostd.example.toml lists every option)"
            ));
        }
        (_, Some(allowed)) => msg.push_str(&allowed),
        (Some((key, value)), None) if raw.starts_with("wanted string or table") => {
            msg.push_str(&format!(
                "`{} = {}`: must be a string in double quotes",
                key.trim(),
                value.trim()
            ));
        }
        (None, None) if looks_like_mosquitto_conf(text) => {
            msg.push_str(&format!("`{line}` is not TOML"));
        }
        _ => msg.push_str(raw),
    }
    if looks_like_mosquitto_conf(text) {
        msg.push_str(". This file looks like a mosquitto.conf: roostd's config is TOML (`key = value`, see roostd.example.toml); `roostd import-mosquitto-conf FILE` converts one");
    }
    msg
}

/// serde's "expected ..." in words, with the allowed range or values.
fn friendly_expectation(raw: &str) -> Option<String> {
    let expected = raw.rsplit_once("expected ").map(|(_, e)| e.trim())?;
    let range = |max: &str| format!("must be a whole number from 0 to {max}");
    Some(match expected {
        "u8" => range("255"),
        "u16" => range("65535"),
        "u32" => range("4294967295"),
        "u64" | "usize" => range("18446744073709551615"),
        "a boolean" => "must be true or false".to_string(),
        "a string" => "must be a string in double quotes".to_string(),
        "path string" => "must be a path in double quotes".to_string(),
        "a sequence" if raw.contains("map") => {
            "must be a list of tables: write `[[listener]]` (two brackets), one per listener"
                .to_string()
        }
        e if raw.starts_with("unknown variant") => {
            let values: Vec<&str> = e.split('`').skip(1).step_by(2).collect();
            if values.is_empty() {
                return None;
            }
            if raw.starts_with("unknown field") {
                return None;
            }
            format!("must be one of {}", values.join(", "))
        }
        _ => return None,
    })
}

/// A mosquitto.conf has `key value` lines without `=`.
fn looks_like_mosquitto_conf(text: &str) -> bool {
    text.lines().map(str::trim).any(|l| {
        !l.is_empty()
            && !l.starts_with('#')
            && !l.starts_with('[')
            && !l.contains('=')
            && l.split_whitespace().count() >= 2
            && l.split_whitespace()
                .next()
                .is_some_and(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    })
}

/// Parses Mosquitto's expiration syntax: `<n><unit>` with s, h, d, w, m (30 days), y (365 days),
/// or "never".
pub fn parse_expiration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "never" {
        return Ok(None);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("`{s}` is not a number followed by s, h, d, w, m or y, nor \"never\"")
    })?;
    let secs = match unit {
        "s" => 1,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "m" => 30 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(format!("`{s}` has unit `{unit}`; use s, h, d, w, m or y")),
    };
    if n == 0 {
        return Err("must be greater than 0 (use \"never\" to keep sessions forever)".into());
    }
    Ok(Some(Duration::from_secs(n.saturating_mul(secs))))
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(describe_toml_error(text, &e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for l in &self.listener {
            l.socket_addr()?;
            l.tls_files()?;
            l.check_protocol()?;
        }
        if self.max_storage_backlog == 0 {
            return Err(invalid("max_storage_backlog", "must be at least 1"));
        }
        if self.fsync_interval == 0 {
            return Err(invalid("fsync_interval", "must be at least 1 millisecond"));
        }
        if self.tls_handshake_timeout == 0 {
            return Err(invalid(
                "tls_handshake_timeout",
                "must be at least 1 second",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.max_inflight_messages == 0 {
            return Err(invalid(
                "max_inflight_messages",
                "must be between 1 and 65535",
            ));
        }
        if self.max_queued_messages == 0 {
            return Err(invalid("max_queued_messages", "must be at least 1"));
        }
        if self.max_queued_bytes == 0 {
            return Err(invalid("max_queued_bytes", "must be at least 1"));
        }
        if self.message_size_limit == 0 || self.message_size_limit > MQTT_MAX_REMAINING {
            return Err(invalid(
                "message_size_limit",
                format!("must be between 1 and {MQTT_MAX_REMAINING}"),
            ));
        }
        if self.max_topic_levels == 0 || self.max_topic_levels > MQTT_MAX_LEVELS {
            return Err(invalid(
                "max_topic_levels",
                format!("must be between 1 and {MQTT_MAX_LEVELS}"),
            ));
        }
        if self.max_retained_messages == 0 {
            return Err(invalid("max_retained_messages", "must be at least 1"));
        }
        if self.max_retained_bytes == 0 {
            return Err(invalid("max_retained_bytes", "must be at least 1"));
        }
        if self.connect_timeout == 0 {
            return Err(invalid("connect_timeout", "must be at least 1 second"));
        }
        parse_expiration(&self.persistent_client_expiration)
            .map_err(|r| invalid("persistent_client_expiration", r))?;
        self.metrics_addr()?;
        Ok(())
    }

    /// The metrics endpoint address.
    pub fn metrics_addr(&self) -> Result<SocketAddr, ConfigError> {
        let ip: IpAddr = self.metrics_bind_address.parse().map_err(|_| {
            invalid(
                "metrics_bind_address",
                format!("`{}` is not an IP address", self.metrics_bind_address),
            )
        })?;
        Ok(SocketAddr::new(ip, self.metrics_port))
    }

    /// The listeners to open: the configured ones, or 127.0.0.1 on `default_port`.
    pub fn effective_listeners(&self, default_port: u16) -> Vec<ListenerConfig> {
        if self.listener.is_empty() {
            vec![ListenerConfig::plain("127.0.0.1", default_port)]
        } else {
            self.listener.clone()
        }
    }

    /// allow_anonymous after applying its default.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.listener.is_empty())
    }

    /// persistent_client_expiration as a duration (None: never). Validated at load.
    pub fn expiration(&self) -> Option<Duration> {
        parse_expiration(&self.persistent_client_expiration)
            .ok()
            .flatten()
    }

    /// The storage fsync policy.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        match self.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval))
            }
            FsyncMode::Never => FsyncPolicy::Never,
        }
    }

    /// The bounds on retained messages.
    pub fn retained_limits(&self) -> crate::retained::RetainedLimits {
        crate::retained::RetainedLimits {
            max_messages: self.max_retained_messages,
            max_bytes: self.max_retained_bytes,
        }
    }

    /// The per-session limits.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_inflight: self.max_inflight_messages as usize,
            max_queued_messages: self.max_queued_messages,
            max_queued_bytes: self.max_queued_bytes,
            queue_qos0: self.queue_qos0_messages,
            backpressure: Duration::from_secs(self.backpressure_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_documented_defaults() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.max_inflight_messages, 20);
        assert_eq!(c.max_queued_messages, 1000);
        assert!(c.anonymous_allowed());
        assert_eq!(c.expiration(), Some(Duration::from_secs(86_400)));
        assert_eq!(
            c.effective_listeners(1884),
            vec![ListenerConfig::plain("127.0.0.1", 1884)]
        );
    }

    #[test]
    fn configured_listener_disables_anonymous_by_default() {
        let c = Config::from_toml_str("[[listener]]\nport = 1883\n").unwrap();
        assert!(!c.anonymous_allowed());
        assert_eq!(c.effective_listeners(1).len(), 1);
        assert_eq!(c.listener[0].bind_address, "0.0.0.0");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("max_queued_mesages = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_queued_mesages"), "{e}");
        let e = Config::from_toml_str("[[listener]]\nport = 1\nbind = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bind"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("max_inflight_messages = 0", "max_inflight_messages"),
            ("max_inflight_messages = 70000", "max_inflight_messages"),
            (
                "persistent_client_expiration = \"3x\"",
                "persistent_client_expiration",
            ),
            ("message_size_limit = 0", "message_size_limit"),
            ("max_storage_backlog = 0", "max_storage_backlog"),
            ("max_queued_messages = \"many\"", "max_queued_messages"),
            (
                "[[listener]]\nport = 1\nbind_address = \"nowhere\"",
                "bind_address",
            ),
        ] {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn expiration_units() {
        assert_eq!(parse_expiration("2h"), Ok(Some(Duration::from_secs(7200))));
        assert_eq!(
            parse_expiration("1w"),
            Ok(Some(Duration::from_secs(604_800)))
        );
        assert_eq!(parse_expiration("never"), Ok(None));
        assert!(parse_expiration("0d").is_err());
        assert!(parse_expiration("d").is_err());
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../roostd.example.toml");
        Config::from_toml_str(text).unwrap();
    }

    /// Value errors speak the user's language: line, key, value and the allowed range or
    /// values; a mosquitto.conf gets a hint that the file is TOML (issue 12).
    #[test]
    fn parse_errors_name_line_key_value_and_what_is_allowed() {
        let err = |text: &str| Config::from_toml_str(text).unwrap_err().to_string();
        let e = err("# c\nmax_inflight_messages = 70000\n");
        assert_eq!(
            e,
            "line 2: `max_inflight_messages = 70000`: must be a whole number from 0 to 65535"
        );
        assert!(err("fsync = \"sometimes\"").contains("must be one of always, interval, never"));
        assert!(err("persistence = 3").contains("`persistence = 3`: must be true or false"));
        assert!(err("max_queued_messages = -1").contains("from 0 to 18446744073709551615"));
        assert!(err("bogus_key = 1").contains("unknown key `bogus_key`"));
        let m = err("# mosquitto\nlistener 1883\nallow_anonymous true\n");
        assert!(m.contains("line 2: `listener 1883` is not TOML"), "{m}");
        assert!(m.contains("roostd.example.toml") && m.contains("import-mosquitto-conf"));
        assert!(!err("port = \"x\"").contains("mosquitto.conf"));
    }
}
