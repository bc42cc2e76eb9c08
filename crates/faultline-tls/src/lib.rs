//! TLS on every listener. Owns the `[tls]` settings, the server configurations built
//! from the PEM files they name, their reloading when the files change, and
//! [`Incoming`], the listener every server of the process accepts connections from
//! (plain TCP or TLS, the same type either way).
//!
//! One certificate serves every listener. With `client_ca` set, the intake listeners
//! (OTLP/gRPC, OTLP/HTTP, Zipkin) ask their clients for a certificate issued by one of
//! its CAs: required by default, or only checked when offered (`client_cert =
//! "optional"`). The API, UI, sampling and fault-proxy listeners never ask for one (their
//! callers are people and SDK samplers; tokens say who they are).
//!
//! Reloading: a thread looks at the files' modification times and sizes every two
//! seconds; when one changed it loads them all again and, when they are good, new
//! handshakes use them (connections already open keep theirs). A bad set (unreadable,
//! not PEM, a key that does not match the certificate) is refused with a warning, counted
//! in `faultline_tls_reloads_total{result="failed"}`, and the previous certificate stays
//! in use, so a half-copied file never takes the server off the air.

pub mod client;
mod incoming;
mod load;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use serde::Deserialize;

pub use incoming::{Conn, Incoming, Peer};

/// How often the reload thread looks at the files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The `[tls]` section: TLS is on when `cert` and `key` are given.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA certificates; with it, intake listeners ask clients for a certificate.
    pub client_ca: Option<PathBuf>,
    /// Whether an intake client without a certificate is refused (with `client_ca`).
    #[serde(default)]
    pub client_cert: ClientCert,
}

/// The command-line flags of TLS (`serve` and `proxy`); each overrides its file setting.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain: TLS on every listener (with --tls-key) [default: plaintext].
    #[arg(long, env = "FAULTLINE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FAULTLINE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CAs whose client certificates intake requires [default: none asked for].
    #[arg(long, env = "FAULTLINE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// `self` (the file's `[tls]`) with the flags given in `args` in place of its values.
    pub fn with_flags(&self, args: &TlsArgs) -> TlsConfig {
        TlsConfig {
            cert: args.tls_cert.clone().or(self.cert.clone()),
            key: args.tls_key.clone().or(self.key.clone()),
            client_ca: args.tls_client_ca.clone().or(self.client_ca.clone()),
            client_cert: self.client_cert,
        }
    }

    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

/// Whether intake clients must present a certificate (`client_ca` set).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientCert {
    /// A client without a certificate from `client_ca` is refused at the handshake.
    #[default]
    Required,
    /// A certificate is checked when a client offers one; clients without one connect.
    Optional,
}

/// What went wrong loading the TLS files; every message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read the TLS {what} {}: {source}; check the path and the file's permissions",
        path.display()
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the TLS {what} file {} holds no {label} in PEM form; give a PEM file with a `-----BEGIN {label}-----` block",
        path.display()
    )]
    NoPem {
        what: &'static str,
        label: &'static str,
        path: PathBuf,
    },
    #[error("cannot use the TLS {what} in {}: {detail}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "the TLS key {} does not belong to the certificate {} ({detail}); give the key the certificate was issued for",
        key.display(), cert.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("TLS settings: {0}")]
    Settings(String),
}

/// Which kind of server a listener is: what it offers in ALPN and whether it asks for
/// client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// OTLP/gRPC: HTTP/2, client certificates when configured.
    GrpcIntake,
    /// OTLP/HTTP and Zipkin: HTTP/1.1, client certificates when configured.
    HttpIntake,
    /// The API and UI, the sampling endpoint, the fault-proxy API: HTTP/1.1.
    Http,
}

/// The loaded certificate and the server configurations built from it; swapped whole on
/// reload.
#[derive(Debug)]
struct Loaded {
    grpc_intake: Arc<ServerConfig>,
    http_intake: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// The server's own certificate (the chain's first), which in-process clients pin.
    leaf: rustls::pki_types::CertificateDer<'static>,
    /// The server certificate's expiry, seconds since the Unix epoch.
    not_after: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Default)]
struct TlsMetrics {
    handshake_failures: Family<ListenerLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    not_after: Gauge,
}

/// What the files looked like when last loaded: changed files are loaded again.
type Stamp = Vec<Option<(SystemTime, u64)>>;

#[derive(Debug)]
struct Inner {
    cfg: TlsConfig,
    current: RwLock<Arc<Loaded>>,
    stamp: Mutex<Stamp>,
    metrics: TlsMetrics,
}

/// The process's TLS: cheap to clone, shared by every listener.
#[derive(Clone, Debug)]
pub struct Tls {
    inner: Arc<Inner>,
}

impl Tls {
    /// Loads the files `cfg` names; `None` when TLS is off. Fails on settings that say
    /// too little (a certificate without a key) and on any file that cannot be used.
    pub fn load(cfg: &TlsConfig) -> Result<Option<Tls>, TlsError> {
        let (cert, key) = match (&cfg.cert, &cfg.key) {
            (None, None) if cfg.client_ca.is_some() => {
                return Err(TlsError::Settings(
                    "client_ca needs the server's own certificate too; set tls.cert and tls.key (--tls-cert, --tls-key)".into(),
                ));
            }
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => {
                return Err(TlsError::Settings(
                    "tls.cert is set but tls.key is not; give the certificate's private key with tls.key (--tls-key)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(TlsError::Settings(
                    "tls.key is set but tls.cert is not; give the certificate chain with tls.cert (--tls-cert)".into(),
                ));
            }
        };
        let stamp = stamp(cfg);
        let loaded = load::load(cert, key, cfg.client_ca.as_deref(), cfg.client_cert)?;
        let metrics = TlsMetrics::default();
        metrics.not_after.set(loaded.not_after);
        let _ = metrics.reloads.get_or_create(&ResultLabel { result: "ok" });
        let _ = metrics
            .reloads
            .get_or_create(&ResultLabel { result: "failed" });
        tracing::info!(
            cert = %cert.display(),
            expires = loaded.not_after,
            client_ca = ?cfg.client_ca,
            "TLS on every listener"
        );
        Ok(Some(Tls {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                current: RwLock::new(Arc::new(loaded)),
                stamp: Mutex::new(stamp),
                metrics,
            }),
        }))
    }

    /// Adds `faultline_tls_*` to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.inner.metrics;
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by listener (a plaintext client, an untrusted or missing client certificate, a client that gave up)",
            m.handshake_failures.clone(),
        );
        registry.register(
            "tls_reloads",
            "Loads of changed certificate files; failed ones leave the previous certificate in use",
            m.reloads.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the served certificate expires, seconds since the Unix epoch",
            m.not_after.clone(),
        );
    }

    /// The configuration new handshakes on a `role` listener use.
    fn config(&self, role: Role) -> Arc<ServerConfig> {
        let l = self
            .inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match role {
            Role::GrpcIntake => l.grpc_intake.clone(),
            Role::HttpIntake => l.http_intake.clone(),
            Role::Http => l.http.clone(),
        }
    }

    /// When the served certificate expires (seconds since the Unix epoch).
    pub fn not_after(&self) -> i64 {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .not_after
    }

    fn handshake_failed(&self, listener: &'static str) {
        self.inner
            .metrics
            .handshake_failures
            .get_or_create(&ListenerLabel { listener })
            .inc();
    }

    /// Loads the files again when any changed since the last load; `Ok(true)` when a new
    /// certificate is in use. On an error the previous one stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let cfg = &self.inner.cfg;
        let now = stamp(cfg);
        let mut last = self.inner.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return Ok(false);
        }
        // A failed load is not retried until the files change again.
        *last = now;
        let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
            return Ok(false);
        };
        let result = |r| ResultLabel { result: r };
        match load::load(cert, key, cfg.client_ca.as_deref(), cfg.client_cert) {
            Ok(l) => {
                self.inner.metrics.not_after.set(l.not_after);
                self.inner
                    .metrics
                    .reloads
                    .get_or_create(&result("ok"))
                    .inc();
                tracing::info!(cert = %cert.display(), expires = l.not_after, "TLS certificate reloaded");
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(l);
                Ok(true)
            }
            Err(e) => {
                let m = &self.inner.metrics;
                m.reloads.get_or_create(&result("failed")).inc();
                Err(e)
            }
        }
    }

    /// Starts the thread that reloads changed files every `every`; it stops when the
    /// answer is dropped.
    pub fn watch(&self, every: Duration) -> std::io::Result<Watcher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let tls = self.clone();
        std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if let Err(e) = tls.reload_if_changed() {
                        tracing::warn!(
                            "{e}; the previous certificate stays in use until the files are fixed"
                        );
                    }
                }
            })?;
        Ok(Watcher { _stop: stop })
    }
}

/// Keeps the reload thread running; dropping it stops the thread.
#[derive(Debug)]
pub struct Watcher {
    _stop: mpsc::Sender<()>,
}

fn stamp(cfg: &TlsConfig) -> Stamp {
    let of = |p: &Option<PathBuf>| {
        p.as_deref()
            .and_then(|p: &Path| std::fs::metadata(p).ok())
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    vec![of(&cfg.cert), of(&cfg.key), of(&cfg.client_ca)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;
