//! Who may do what. Bearer tokens with scopes, checked on every listener before a body is
//! read ([`guard`]: an axum layer for the HTTP listeners, a tonic interceptor for OTLP/gRPC),
//! by the route → scope map of [`routes`]; the tokens, stored as SHA-256 hashes in a file
//! and/or `FAULTLINE_TOKENS` ([`tokens`], where the format is documented), re-read when
//! the file changes; the failed attempts counted in `/metrics`; the audit log of control
//! actions ([`audit`]); the `faultline token` command ([`cli`]).
//!
//! Off by default: with no token file and no `FAULTLINE_TOKENS`, every route is open, which
//! `faultline serve` allows only while every listener binds a loopback address
//! ([`Auth::check_exposure`]) or the configuration says `[auth] allow_unauthenticated =
//! true`. With tokens configured (even none yet, in an empty file), every listener checks.
//!
//! Answers to a refused request say nothing that helps an attacker: 401 with
//! `WWW-Authenticate: Bearer` whether the token is missing or unknown (never which), 403
//! naming the scope the route needs when the token is known but lacks it.
//!
//! Metrics (prefixed `faultline_`): `auth_failures_total{listener, reason}` (`missing`,
//! `unknown`, `scope`), `auth_tokens` (tokens in force), `auth_token_file_refused` (1 while
//! the newest version of the token file is refused), `auth_audit_write_failures_total`.

pub mod audit;
pub mod cli;
pub mod guard;
pub mod routes;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock, mpsc};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;

pub use guard::{GrpcGuard, protect};
pub use routes::{Access, Listener};
pub use tokens::{Entry, Scopes, TokenSet};

/// How often the token file is read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Send spans (OTLP, Zipkin) and fetch sampling strategies.
    Ingest,
    /// Query traces, metrics, status; see the UI.
    Read,
    /// Operator routes: dead letters, configuration (API rules), the audit log.
    Admin,
    /// The fault proxy and chaos experiments.
    Chaos,
    /// Create, change, pause and delete synthetic probes.
    Probes,
}

impl Scope {
    /// Every scope, in the order they are printed.
    pub const ALL: [Scope; 5] = [
        Scope::Ingest,
        Scope::Read,
        Scope::Admin,
        Scope::Chaos,
        Scope::Probes,
    ];

    /// Its name in token files and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
            Scope::Chaos => "chaos",
            Scope::Probes => "probes",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!("unknown scope {s:?} (scopes: ingest, read, admin, chaos, probes)")
            })
    }
}

/// The `[auth]` section of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The token file (format in [`tokens`]), read again when it changes.
    pub token_file: Option<PathBuf>,
    /// Serve without tokens on a non-loopback address, on purpose.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

/// Why auth could not start, or why `serve` must not.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file cannot be read.
    #[error(
        "cannot read the token file {path}: {source}; fix the path ([auth] token_file, --token-file)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file or `FAULTLINE_TOKENS` is not valid.
    #[error("{what} is not valid: {message}")]
    Invalid {
        /// Which source.
        what: String,
        /// The line and what is wrong.
        message: String,
    },
    /// A listener binds a non-loopback address while no tokens are configured.
    #[error(
        "the {listener} listener binds {addr}, which is not a loopback address, and no tokens are configured: anyone who can reach it could read traces, change probes and drive the fault proxy. Configure tokens ([auth] token_file, --token-file or FAULTLINE_TOKENS; `faultline token new NAME --scopes read` makes one), or set [auth] allow_unauthenticated = true (faultline proxy: --allow-unauthenticated) to serve open on purpose"
    )]
    Exposed {
        /// The listener's name.
        listener: String,
        /// Its address.
        addr: SocketAddr,
    },
    /// Standard input or output failed (`faultline token`).
    #[error("{0}")]
    Io(String),
}

/// Who made a request: a token's name, or `anonymous` while auth is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub Arc<str>);

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No bearer token.
    Missing,
    /// A token that is not in force.
    Unknown,
    /// A known token without the scope.
    Scope,
}

impl Denied {
    fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Unknown => "unknown",
            Denied::Scope => "scope",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Debug, Default)]
struct Metrics {
    failures: Family<FailureLabels, Counter>,
    tokens: Gauge,
    refused: Gauge,
    audit_failures: Counter,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "auth_failures",
            "Requests refused for a missing or unknown token (401) or a missing scope (403)",
            self.failures.clone(),
        );
        r.register("auth_tokens", "Tokens in force", self.tokens.clone());
        r.register(
            "auth_token_file_refused",
            "1 while the newest version of the token file is refused (the previous tokens stay in force)",
            self.refused.clone(),
        );
        r.register(
            "auth_audit_write_failures",
            "Audit records that could not be written",
            self.audit_failures.clone(),
        );
    }
}

#[derive(Debug)]
struct State {
    /// The tokens in force: the file's, the environment's and the internal ones.
    tokens: Arc<TokenSet>,
    /// The file's bytes last judged (in force or refused), so a version is judged once.
    seen: Option<Vec<u8>>,
    /// The file's tokens in force.
    file: TokenSet,
}

#[derive(Debug)]
struct Inner {
    enabled: bool,
    file: Option<PathBuf>,
    env: TokenSet,
    internal: Mutex<TokenSet>,
    state: RwLock<State>,
    metrics: Metrics,
    audit: OnceLock<Arc<audit::AuditLog>>,
}

/// The tokens in force and what checks them; cheap to clone.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.clone(),
        source,
    })
}

fn parse(what: &str, bytes: &[u8]) -> Result<TokenSet, AuthError> {
    let invalid = |message: String| AuthError::Invalid {
        what: what.to_string(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8".into()))?;
    TokenSet::parse(text).map_err(|e| invalid(e.to_string()))
}

impl Auth {
    /// Auth off: every route open (loopback, tests).
    pub fn disabled() -> Auth {
        Self::build(false, None, TokenSet::default(), TokenSet::default(), None)
    }

    /// What `faultline serve` and `faultline proxy` start with: the tokens of the
    /// configuration and of `FAULTLINE_TOKENS`, refused when serving open where it must
    /// not ([`Auth::check_exposure`]), the audit log in `data_dir` (when there is one) kept
    /// for `retention`, and
    /// the token file's watcher (kept while the answer's [`Watcher`] lives). Blocking.
    pub fn start(
        cfg: &AuthConfig,
        listeners: &[(&str, SocketAddr)],
        data_dir: Option<&std::path::Path>,
        retention: Duration,
    ) -> Result<(Auth, Watcher), AuthError> {
        let env = std::env::var("FAULTLINE_TOKENS").ok();
        let auth = Auth::open(cfg, env.as_deref())?;
        auth.check_exposure(listeners, cfg.allow_unauthenticated)?;
        match data_dir {
            Some(dir) => {
                let log = audit::AuditLog::open(dir, retention).map_err(|e| {
                    AuthError::Io(format!(
                        "cannot open the audit log in {}: {e}; check the data directory's permissions",
                        dir.join("audit").display()
                    ))
                })?;
                auth.set_audit(Arc::new(log));
            }
            None => tracing::warn!(
                "no directory for the audit log: control actions are logged but not kept (give a state directory to keep them)"
            ),
        }
        let watcher = auth
            .watch(RELOAD_EVERY)
            .map_err(|e| AuthError::Io(format!("cannot start the token file's watcher: {e}")))?;
        if auth.enabled() {
            tracing::info!(
                tokens = auth.token_count(),
                "bearer tokens required on every listener"
            );
        }
        Ok((auth, watcher))
    }

    /// Registers the metrics in the process's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
    }

    /// How many tokens are in force.
    pub fn token_count(&self) -> usize {
        self.inner
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tokens
            .len()
    }

    /// Auth from the configuration and `env_tokens` (`FAULTLINE_TOKENS`). Blocking (reads
    /// the token file); a bad file stops the start.
    pub fn open(cfg: &AuthConfig, env_tokens: Option<&str>) -> Result<Auth, AuthError> {
        let env = match env_tokens {
            Some(text) => parse("FAULTLINE_TOKENS", text.as_bytes())?,
            None => TokenSet::default(),
        };
        let (file, seen) = match &cfg.token_file {
            Some(path) => {
                let bytes = read_file(path)?;
                let what = format!("the token file {}", path.display());
                (parse(&what, &bytes)?, Some(bytes))
            }
            None => (TokenSet::default(), None),
        };
        let enabled = cfg.token_file.is_some() || env_tokens.is_some();
        let auth = Self::build(enabled, cfg.token_file.clone(), env, file, seen);
        auth.refresh()?;
        Ok(auth)
    }

    fn build(
        enabled: bool,
        file_path: Option<PathBuf>,
        env: TokenSet,
        file: TokenSet,
        seen: Option<Vec<u8>>,
    ) -> Auth {
        Auth {
            inner: Arc::new(Inner {
                enabled,
                file: file_path,
                env,
                internal: Mutex::new(TokenSet::default()),
                state: RwLock::new(State {
                    tokens: Arc::default(),
                    seen,
                    file,
                }),
                metrics: Metrics::default(),
                audit: OnceLock::new(),
            }),
        }
    }

    /// Whether tokens are checked.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// Recomputes the tokens in force from the file's, the environment's and the
    /// internal ones.
    fn refresh(&self) -> Result<(), AuthError> {
        let internal = self
            .inner
            .internal
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default();
        let mut st = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
        let merged = st
            .file
            .merged(&self.inner.env)
            .and_then(|m| m.merged(&internal))
            .map_err(|message| AuthError::Invalid {
                what: "the token file with FAULTLINE_TOKENS".into(),
                message,
            })?;
        self.inner.metrics.tokens.set(merged.len() as i64);
        st.tokens = Arc::new(merged);
        Ok(())
    }

    /// Adds a token for a client inside this process (scheduled experiments calling the
    /// API) and answers its secret: random, never written anywhere.
    pub fn mint_internal(&self, name: &str, scopes: Scopes) -> Result<String, AuthError> {
        let secret = cli::random_token().map_err(AuthError::Io)?;
        if let Ok(mut set) = self.inner.internal.lock() {
            let entry = Entry {
                name: name.into(),
                scopes,
                hash: tokens::hash(&secret),
            };
            set.add(entry).map_err(|message| AuthError::Invalid {
                what: "an internal token".into(),
                message,
            })?;
        }
        self.refresh()?;
        Ok(secret)
    }

    /// Reads the token file again if its bytes changed: a valid version replaces the
    /// file's tokens at once; an invalid or unreadable one is logged (once per version)
    /// and the tokens in force stay. Blocking. Answers whether the tokens changed.
    pub fn reload(&self) -> bool {
        let Some(path) = self.inner.file.clone() else {
            return false;
        };
        let bytes = match read_file(&path) {
            Ok(b) => b,
            Err(e) => {
                let mut st = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
                if st.seen.is_some() {
                    tracing::warn!("{e}; the tokens in force stay until it can be read");
                    st.seen = None;
                }
                self.inner.metrics.refused.set(1);
                return false;
            }
        };
        {
            let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
            if st.seen.as_deref() == Some(&bytes[..]) {
                return false;
            }
        }
        let what = format!("the token file {}", path.display());
        let parsed = parse(&what, &bytes).and_then(|set| {
            set.merged(&self.inner.env)
                .map(|_| set)
                .map_err(|message| AuthError::Invalid {
                    what: what.clone(),
                    message: format!("{message} (with FAULTLINE_TOKENS)"),
                })
        });
        let mut st = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
        st.seen = Some(bytes);
        match parsed {
            Ok(set) => {
                let n = set.len();
                st.file = set;
                drop(st);
                self.inner.metrics.refused.set(0);
                if let Err(e) = self.refresh() {
                    tracing::warn!("{e}");
                }
                tracing::info!(file = %path.display(), tokens = n, "token file reloaded");
                true
            }
            Err(e) => {
                self.inner.metrics.refused.set(1);
                tracing::warn!("{e}; the previous tokens stay in force until the file is fixed");
                false
            }
        }
    }

    /// Starts a thread reading the token file every `every` (none without a file); it
    /// stops when the answer is dropped.
    pub fn watch(&self, every: Duration) -> std::io::Result<Watcher> {
        let (stop, stopped) = mpsc::channel::<()>();
        if self.inner.file.is_some() {
            let auth = self.clone();
            std::thread::Builder::new()
                .name("auth-tokens".into())
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                        auth.reload();
                    }
                })?;
        }
        Ok(Watcher { _stop: stop })
    }

    /// Checks a request's token (`credential`, the part after `Bearer `) for `need`;
    /// counts a refusal in `faultline_auth_failures_total`.
    pub fn check(
        &self,
        listener: Listener,
        credential: Option<&str>,
        need: Scope,
    ) -> Result<Identity, Denied> {
        if !self.inner.enabled {
            return Ok(Identity("anonymous".into()));
        }
        let tokens = self
            .inner
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tokens
            .clone();
        let result = match credential.map(|c| tokens.find(c)) {
            None => Err(Denied::Missing),
            Some(None) => Err(Denied::Unknown),
            Some(Some(e)) if !e.scopes.contains(need) => Err(Denied::Scope),
            Some(Some(e)) => Ok(Identity(e.name.clone())),
        };
        if let Err(d) = result {
            self.inner
                .metrics
                .failures
                .get_or_create(&FailureLabels {
                    listener: listener.as_str(),
                    reason: d.as_str(),
                })
                .inc();
            tracing::debug!(listener = listener.as_str(), reason = d.as_str(), scope = %need, "request refused");
        }
        result
    }

    /// The name of the token `credential` (`None` when unknown or auth is off).
    pub fn name_of(&self, credential: &str) -> Option<Arc<str>> {
        let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        st.tokens.find(credential).map(|e| e.name.clone())
    }

    /// Refuses to serve open on a non-loopback address: `Err` when tokens are off, some
    /// listener's address is not loopback, and `allow_unauthenticated` is not set.
    pub fn check_exposure(
        &self,
        listeners: &[(&str, SocketAddr)],
        allow_unauthenticated: bool,
    ) -> Result<(), AuthError> {
        if self.inner.enabled {
            return Ok(());
        }
        let Some((name, addr)) = listeners.iter().find(|(_, a)| !a.ip().is_loopback()) else {
            return Ok(());
        };
        if allow_unauthenticated {
            tracing::warn!(
                listener = name, addr = %addr,
                "serving without tokens on a non-loopback address ([auth] allow_unauthenticated = true)"
            );
            return Ok(());
        }
        Err(AuthError::Exposed {
            listener: name.to_string(),
            addr: *addr,
        })
    }

    /// Sets the audit log the guard writes control actions to.
    pub fn set_audit(&self, log: Arc<audit::AuditLog>) {
        let _ = self.inner.audit.set(log);
    }

    /// The audit log, once set.
    pub fn audit_log(&self) -> Option<Arc<audit::AuditLog>> {
        self.inner.audit.get().cloned()
    }

    /// Writes `r` to the audit log (off the executor), counting a failure.
    pub async fn record(&self, r: audit::Record) {
        let Some(log) = self.audit_log() else {
            return;
        };
        let written = tokio::task::spawn_blocking(move || log.append(&r)).await;
        if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
            self.inner.metrics.audit_failures.inc();
            tracing::warn!("cannot write the audit log: {e}");
        }
    }
}

/// Stops the token file's watcher thread when dropped.
#[derive(Debug)]
pub struct Watcher {
    _stop: mpsc::Sender<()>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tokens::line;

    fn metrics_text(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).unwrap();
        out
    }

    fn open_file(text: &str) -> (tempfile::TempDir, PathBuf, Auth, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        let mut reg = Registry::with_prefix("faultline");
        let cfg = AuthConfig {
            token_file: Some(path.clone()),
            allow_unauthenticated: false,
        };
        let auth = Auth::open(&cfg, None).unwrap();
        auth.register_metrics(&mut reg);
        (dir, path, auth, reg)
    }

    #[test]
    fn scopes_decide_and_failures_are_counted_by_reason() {
        let (_d, _p, auth, reg) = open_file(&line("grafana", Scopes::parse("read").unwrap(), "g"));
        let l = Listener::Api;
        assert_eq!(
            auth.check(l, Some("g"), Scope::Read),
            Ok(Identity("grafana".into()))
        );
        assert_eq!(auth.check(l, Some("g"), Scope::Admin), Err(Denied::Scope));
        assert_eq!(auth.check(l, Some("x"), Scope::Read), Err(Denied::Unknown));
        assert_eq!(auth.check(l, None, Scope::Read), Err(Denied::Missing));
        assert_eq!(auth.check(l, None, Scope::Read), Err(Denied::Missing));
        let m = metrics_text(&reg);
        for want in [
            "faultline_auth_failures_total{listener=\"api\",reason=\"missing\"} 2",
            "faultline_auth_failures_total{listener=\"api\",reason=\"unknown\"} 1",
            "faultline_auth_failures_total{listener=\"api\",reason=\"scope\"} 1",
            "faultline_auth_tokens 1",
        ] {
            assert!(m.contains(want), "{want} in\n{m}");
        }
    }

    #[test]
    fn a_changed_file_is_taken_and_a_bad_one_keeps_the_tokens_in_force() {
        let (_d, path, auth, reg) = open_file(&line("a", Scopes::ALL, "ta"));
        assert!(!auth.reload(), "unchanged: nothing to do");
        std::fs::write(&path, line("b", Scopes::parse("ingest").unwrap(), "tb")).unwrap();
        assert!(auth.reload());
        assert_eq!(
            auth.check(Listener::Api, Some("ta"), Scope::Read),
            Err(Denied::Unknown)
        );
        assert!(
            auth.check(Listener::OtlpHttp, Some("tb"), Scope::Ingest)
                .is_ok()
        );
        // A bad version: refused, b stays in force, the gauge says so.
        std::fs::write(&path, "b ingest not-a-hash\n").unwrap();
        assert!(!auth.reload());
        assert!(
            auth.check(Listener::OtlpHttp, Some("tb"), Scope::Ingest)
                .is_ok()
        );
        assert!(metrics_text(&reg).contains("faultline_auth_token_file_refused 1"));
        // A deleted file: the same.
        std::fs::remove_file(&path).unwrap();
        assert!(!auth.reload());
        assert!(
            auth.check(Listener::OtlpHttp, Some("tb"), Scope::Ingest)
                .is_ok()
        );
        // Fixed: taken, the gauge cleared.
        std::fs::write(&path, line("c", Scopes::ALL, "tc")).unwrap();
        assert!(auth.reload());
        assert!(auth.check(Listener::Api, Some("tc"), Scope::Admin).is_ok());
        assert!(metrics_text(&reg).contains("faultline_auth_token_file_refused 0"));
    }

    #[test]
    fn the_watcher_takes_a_change_without_being_asked() {
        let (_d, path, auth, _reg) = open_file("");
        assert_eq!(
            auth.check(Listener::Api, Some("t"), Scope::Read),
            Err(Denied::Unknown)
        );
        let _w = auth.watch(Duration::from_millis(20)).unwrap();
        std::fs::write(&path, line("late", Scopes::ALL, "t")).unwrap();
        let started = std::time::Instant::now();
        while auth.check(Listener::Api, Some("t"), Scope::Read).is_err() {
            assert!(started.elapsed() < Duration::from_secs(5), "not reloaded");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn env_tokens_and_internal_tokens_join_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, line("a", Scopes::ALL, "ta")).unwrap();
        let cfg = AuthConfig {
            token_file: Some(path),
            allow_unauthenticated: false,
        };
        let env = line("ci", Scopes::parse("ingest").unwrap(), "tci");
        let auth = Auth::open(&cfg, Some(&env)).unwrap();
        assert!(
            auth.check(Listener::Zipkin, Some("tci"), Scope::Ingest)
                .is_ok()
        );
        let secret = auth
            .mint_internal(
                "faultline-experiments",
                Scopes::parse("read,chaos").unwrap(),
            )
            .unwrap();
        assert_eq!(
            auth.check(Listener::Api, Some(&secret), Scope::Chaos),
            Ok(Identity("faultline-experiments".into()))
        );
        // A name clash between the file and the environment stops the start.
        let clash = line("a", Scopes::ALL, "other");
        let e = Auth::open(&cfg, Some(&clash)).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn open_listeners_on_other_addresses_need_tokens_or_an_explicit_setting() {
        let lo: SocketAddr = "127.0.0.1:4317".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:16686".parse().unwrap();
        let off = Auth::disabled();
        assert!(off.check_exposure(&[("OTLP/gRPC", lo)], false).is_ok());
        let e = off
            .check_exposure(&[("OTLP/gRPC", lo), ("HTTP API", any)], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("HTTP API") && e.contains("0.0.0.0:16686"), "{e}");
        assert!(e.contains("allow_unauthenticated"), "{e}");
        assert!(off.check_exposure(&[("HTTP API", any)], true).is_ok());
        let (_d, _p, on, _r) = open_file("");
        assert!(on.check_exposure(&[("HTTP API", any)], false).is_ok());
        // Off means open.
        assert!(off.check(Listener::Api, None, Scope::Admin).is_ok());
    }
}
