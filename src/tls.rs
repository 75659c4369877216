//! TLS for listeners: rustls (ring provider) server configs built from PEM files, optional
//! client-certificate verification, certificate identity extraction, and reload of changed
//! files without touching established connections. A bad new file is refused: the previous
//! configuration stays in force, the error is logged and counted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::IdentitySource;
use crate::metrics::Metrics;
use crate::router::Router;

/// A TLS configuration that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {detail}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("certificate {path} {detail}")]
    Validity { path: PathBuf, detail: String },
    #[error("{0}")]
    Config(String),
}

/// The files and options of one TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (PEM), leaf first.
    pub certfile: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub keyfile: PathBuf,
    /// CA certificates (PEM) that sign client certificates; enables client-certificate checks.
    pub cafile: Option<PathBuf>,
    /// Refuse clients without a valid certificate during the handshake.
    pub require_certificate: bool,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The loaded material, with the raw bytes kept to notice changes on disk.
struct Loaded {
    config: Arc<ServerConfig>,
    /// The file contents this config was built from (cert, key, ca).
    contents: (Vec<u8>, Vec<u8>, Option<Vec<u8>>),
    /// Leaf certificate expiry, seconds since the epoch.
    not_after: i64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads every file and builds a server config, refusing unparsable files, a key that does
/// not match the certificate, and a certificate that is expired or not yet valid.
fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let cert_pem = read("certfile", &files.certfile)?;
    let key_pem = read("keyfile", &files.keyfile)?;
    let ca_pem = match &files.cafile {
        Some(p) => Some(read("cafile", p)?),
        None => None,
    };
    let invalid = |what: &'static str, path: &Path, detail: String| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("certfile", &files.certfile, e.to_string()))?;
    let Some(leaf) = certs.first() else {
        return Err(invalid(
            "certfile",
            &files.certfile,
            "contains no certificate".into(),
        ));
    };
    let not_after = check_validity(leaf, &files.certfile)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            "keyfile",
            &files.keyfile,
            format!("no usable private key: {e}"),
        )
    })?;

    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.cafile, &ca_pem) {
        (Some(ca_path), Some(ca_pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert = cert.map_err(|e| invalid("cafile", ca_path, e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid("cafile", ca_path, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(invalid("cafile", ca_path, "contains no certificate".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.require_certificate {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| invalid("cafile", ca_path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => {
            if files.require_certificate {
                return Err(TlsError::Config(
                    "require_certificate = true needs a cafile to verify client certificates"
                        .into(),
                ));
            }
            builder.with_no_client_auth()
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            "keyfile",
            &files.keyfile,
            format!("does not fit certfile {}: {e}", files.certfile.display()),
        )
    })?;
    Ok(Loaded {
        config: Arc::new(config),
        contents: (cert_pem, key_pem, ca_pem),
        not_after,
    })
}

/// Returns the certificate's notAfter (unix seconds) if it is valid now.
fn check_validity(cert: &CertificateDer<'_>, path: &Path) -> Result<i64, TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| TlsError::Invalid {
            what: "certfile",
            path: path.to_path_buf(),
            detail: format!("unparsable certificate: {e}"),
        })?;
    let validity = parsed.validity();
    let now = unix_now();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now > until {
        return Err(TlsError::Validity {
            path: path.to_path_buf(),
            detail: format!("expired at {}", validity.not_after),
        });
    }
    if now < from {
        return Err(TlsError::Validity {
            path: path.to_path_buf(),
            detail: format!("is not valid before {}", validity.not_before),
        });
    }
    Ok(until)
}

/// The identity in a client certificate: its subject CN, or its first subject alternative
/// name (DNS name, e-mail or URI).
pub fn certificate_identity(cert: &CertificateDer<'_>, source: IdentitySource) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    match source {
        IdentitySource::Cn => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        IdentitySource::San => {
            let san = parsed.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(s)
                | x509_parser::extensions::GeneralName::RFC822Name(s)
                | x509_parser::extensions::GeneralName::URI(s) => Some(s.to_string()),
                _ => None,
            })
        }
    }
}

/// A TLS listener's live configuration.
pub struct TlsAcceptor {
    /// For log lines and the metric label.
    pub label: String,
    files: TlsFiles,
    current: RwLock<Loaded>,
    /// Expiry of the current certificate, unix seconds (read by the metrics renderer).
    not_after: Arc<AtomicI64>,
}

impl TlsAcceptor {
    /// Loads the files; startup fails on any problem.
    pub fn new(
        label: String,
        files: TlsFiles,
        metrics: &Metrics,
    ) -> Result<Arc<TlsAcceptor>, TlsError> {
        let loaded = load(&files)?;
        let not_after = Arc::new(AtomicI64::new(loaded.not_after));
        metrics.track_certificate_expiry(&label, not_after.clone());
        Ok(Arc::new(TlsAcceptor {
            label,
            files,
            current: RwLock::new(loaded),
            not_after,
        }))
    }

    /// The acceptor for a new handshake (established connections keep theirs).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().config.clone())
    }

    /// Re-reads the files; swaps the config in if they changed and are good. Returns
    /// Ok(true) when a new config is in force, Ok(false) when nothing changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let cert = read("certfile", &self.files.certfile)?;
        let key = read("keyfile", &self.files.keyfile)?;
        let ca = match &self.files.cafile {
            Some(p) => Some(read("cafile", p)?),
            None => None,
        };
        {
            let cur = self.current.read();
            if cur.contents.0 == cert && cur.contents.1 == key && cur.contents.2 == ca {
                return Ok(false);
            }
        }
        let loaded = load(&self.files)?;
        self.not_after.store(loaded.not_after, Relaxed);
        *self.current.write() = loaded;
        Ok(true)
    }
}

/// Polls the files of every TLS listener every `interval` (if non-zero) and on `sighup`.
pub async fn watch(
    listeners: Vec<Arc<TlsAcceptor>>,
    interval: Duration,
    sighup: Arc<Notify>,
    router: Arc<Router>,
    shutdown: CancellationToken,
) {
    let poll = !interval.is_zero();
    let mut tick = tokio::time::interval(if poll {
        interval
    } else {
        Duration::from_secs(3600)
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // Remember a refused file set so it is reported once, not at every poll.
    let mut last_error: Vec<Option<String>> = vec![None; listeners.len()];
    // Registered before the first wait and again as soon as it fires, so a SIGHUP that comes
    // while a reload runs is not lost (`notify_waiters` only wakes registered waiters).
    let mut hup = Box::pin(sighup.notified());
    hup.as_mut().enable();
    loop {
        tokio::select! {
            _ = tick.tick(), if poll => {}
            _ = &mut hup => {
                hup = Box::pin(sighup.notified());
                hup.as_mut().enable();
            }
            _ = shutdown.cancelled() => return,
        }
        for (l, last) in listeners.iter().zip(last_error.iter_mut()) {
            match l.reload() {
                Ok(true) => {
                    *last = None;
                    info!(
                        "Listener {}: new TLS certificate/key/CA loaded; new handshakes use it.",
                        l.label
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    let msg = e.to_string();
                    if last.as_deref() != Some(msg.as_str()) {
                        router
                            .metrics()
                            .stats
                            .tls_reload_failures
                            .fetch_add(1, Relaxed);
                        error!("Listener {}: TLS reload refused, keeping the previous certificate: {msg}", l.label);
                        *last = Some(msg);
                    }
                }
            }
        }
    }
}
