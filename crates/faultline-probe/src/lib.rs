//! Synthetic probes: checks that call services from outside on a schedule, as Uptime Kuma
//! and Prometheus' blackbox_exporter do, with a twist: every HTTP check sends a W3C
//! `traceparent` and records its own span ([`span`]) in the same trace, so a failed check
//! opens onto the backend trace that explains it.
//!
//! - [`def`]: what a probe is, read from the configuration file or the API, validated;
//! - [`policy`]: whom probes may call (`[probe_policy]`: built-in refusals of metadata,
//!   link-local and other host-only addresses, allow and deny lists) and how much of an
//!   answer they read;
//! - [`check`]: one HTTP, TCP or DNS check, timed phase by phase, its target judged by the
//!   policy before anything is sent;
//! - [`span`]: the probe's span of a check;
//! - [`Probes`] (this module): the set of probes, one scheduling task each, their recent
//!   results, up/down state and incidents, the API's changes kept in `probes.json`, and
//!   the blackbox_exporter metrics.
//!
//! Scheduling: each probe's first check is at a random offset within its interval (1,000
//! probes never fire together), then one every interval, each check on its own task so a
//! target that hangs delays nobody; a check's timeout is at most the interval, so checks
//! of one probe never overlap. A tick that comes late is recorded as `lag` and the next one
//! keeps the original grid. A probe is down after `retries + 1` failed checks in a row and
//! up again after one success; each down period is an incident, with its first failing
//! result (and so its trace).
//!
//! A definition the policy refuses is refused: the configuration file's stop the start
//! ([`Setup::new`]), the API's are answered with the refusal ([`Probes::put`]). A probe
//! kept in `probes.json` that a policy changed since refuses is started all the same,
//! with a warning in the log: each of its checks fails with the refusal, sending nothing,
//! until it is changed, paused or deleted.
//!
//! `probes.json` (the probes made through the API; configuration-file probes are read
//! from the configuration file at every start), written whole to a temporary file,
//! fsynced and renamed over the old one on every change:
//!
//! ```json
//! {"version": 1, "probes": [{"name": "checkout", "interval_secs": 30, "http": {"url": "..."}}]}
//! ```
//!
//! Every result is appended to the results log (`history.rs`, kept as long as the store's
//! retention) and read back at start, which rebuilds each probe's state, incidents and
//! uptime; in memory each probe keeps its last [`MAX_RESULTS`] results, [`MAX_INCIDENTS`]
//! incidents and an hourly count of checks and passes for 31 days (uptime over 24 hours,
//! 7 and 30 days).

pub mod check;
pub mod def;
mod history;
pub mod policy;
pub mod span;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use faultline_model::ExportTraceServiceRequest;

pub use check::{Outcome, Phase};
pub use def::{DefError, ProbeDef};
pub use policy::{Policy, PolicyConfig, PolicyError, Refusal};

/// Results kept per probe.
pub const MAX_RESULTS: usize = 1000;
/// Incidents kept per probe.
pub const MAX_INCIDENTS: usize = 100;
/// Most probes.
pub const MAX_PROBES: usize = 10_000;

/// Where probe spans go (the binary hands them to intake's critical lane).
pub trait SpanSink: Send + Sync + 'static {
    /// Stores one check's span; `Err` says why it could not.
    fn submit(
        &self,
        request: ExportTraceServiceRequest,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// A [`SpanSink`] from a function.
pub struct FnSink<F>(pub F);

/// What a [`FnSink`]'s function returns.
pub type Submitted = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

impl<F> SpanSink for FnSink<F>
where
    F: Fn(ExportTraceServiceRequest) -> Submitted + Send + Sync + 'static,
{
    fn submit(
        &self,
        request: ExportTraceServiceRequest,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        (self.0)(request)
    }
}

/// The configuration file's probes and the policy every probe is held to.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The `[[probes]]`.
    pub defs: Vec<ProbeDef>,
    /// From `[probe_policy]`.
    pub policy: Policy,
}

/// Why the configuration file's probes or policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `[probe_policy]` is not usable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A probe is not usable, or its target is refused by the policy.
    #[error("probes: {0}")]
    Probe(#[from] DefError),
}

impl Setup {
    /// The policy `[probe_policy]` describes, and the `[[probes]]` checked against it: each
    /// valid, allowed, and named once.
    pub fn new(defs: Vec<ProbeDef>, policy: &PolicyConfig) -> Result<Self, SetupError> {
        let policy = Policy::new(policy)?;
        def::check_all(&defs, &policy)?;
        Ok(Self { defs, policy })
    }
}

/// Why a change to the probes was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The definition is not usable.
    #[error(transparent)]
    Invalid(#[from] DefError),
    /// No probe by that name.
    #[error("no probe named {0:?}; GET /api/v1/probes lists them")]
    NotFound(String),
    /// The name is taken.
    #[error("a probe named {0:?} exists; PUT /api/v1/probes/{0} replaces it")]
    Exists(String),
    /// Configuration-file probes change in the configuration file.
    #[error("probe {0:?} is defined in the configuration file; change it there and restart")]
    FromConfig(String),
    /// Too many probes.
    #[error("there are {MAX_PROBES} probes already, the most one faultline runs")]
    TooMany,
    /// `probes.json` could not be read or written.
    #[error("{op} {}: {reason}", path.display())]
    File {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
}

/// Up, down, or not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No check has finished yet (or the probe is paused).
    Unknown,
    /// The last check passed (or failed fewer than `retries + 1` times in a row).
    Up,
    /// `retries + 1` checks in a row failed.
    Down,
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// When it started, Unix milliseconds.
    pub at_ms: u64,
    /// How late it started against its schedule.
    pub lag: Duration,
    /// What it found.
    pub outcome: Outcome,
    /// The trace it sent `traceparent` for (HTTP) or recorded its span in (TCP).
    pub trace_id: [u8; 16],
    /// Why its span could not be stored, if it could not.
    pub span_error: Option<String>,
}

/// A period when a probe was down.
#[derive(Debug, Clone)]
pub struct Incident {
    /// Unix milliseconds of the first failing check.
    pub start_ms: u64,
    /// Unix milliseconds of the check that passed again, if it has.
    pub end_ms: Option<u64>,
    /// The first failing check.
    pub first_failure: CheckResult,
}

/// Where a probe's definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The configuration file.
    Config,
    /// The API (kept in `probes.json`).
    Api,
}

/// Uptime over one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Uptime {
    /// `24h`, `7d` or `30d`.
    pub window: &'static str,
    /// Checks in the window.
    pub checks: u64,
    /// Those that passed.
    pub passed: u64,
}

/// The uptime windows: name and hours.
const WINDOWS: [(&str, u64); 3] = [("24h", 24), ("7d", 7 * 24), ("30d", 30 * 24)];

/// A probe's definition and what is known of it.
#[derive(Debug, Clone)]
pub struct ProbeView {
    /// The definition.
    pub def: ProbeDef,
    /// Where it comes from.
    pub source: Source,
    /// Up or down.
    pub state: State,
    /// The newest results first.
    pub results: Vec<CheckResult>,
    /// The newest incidents first.
    pub incidents: Vec<Incident>,
    /// Checks known (within the results log's retention), and how many passed.
    pub checks: (u64, u64),
    /// Uptime over 24 hours, 7 days and 30 days.
    pub uptime: [Uptime; 3],
}

/// The latency of one phase, or of whole checks (`total`), over some checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseLatency {
    /// The phase's name (`resolve`, `connect`, `tls`, `processing`, `transfer`) or `total`.
    pub phase: &'static str,
    /// Checks that completed the phase.
    pub checks: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, milliseconds.
    pub p90_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
}

impl ProbeView {
    /// Each phase's p50, p90 and p99 (nearest rank) over the kept results (the last
    /// [`MAX_RESULTS`]) at or after `since_ms`, then the whole checks' as `total`. A phase
    /// counts for the checks that completed it, passed or failed; phases no check reached
    /// are left out.
    pub fn phase_latency(&self, since_ms: u64) -> Vec<PhaseLatency> {
        let kept: Vec<&CheckResult> = self
            .results
            .iter()
            .filter(|r| r.at_ms >= since_ms)
            .collect();
        let of = |phase: &'static str, mut ms: Vec<f64>| -> Option<PhaseLatency> {
            if ms.is_empty() {
                return None;
            }
            ms.sort_by(f64::total_cmp);
            let q = |x: f64| ms[((ms.len() as f64 * x).ceil() as usize).clamp(1, ms.len()) - 1];
            Some(PhaseLatency {
                phase,
                checks: ms.len(),
                p50_ms: q(0.5),
                p90_ms: q(0.9),
                p99_ms: q(0.99),
            })
        };
        let mut out: Vec<PhaseLatency> = Phase::ALL
            .iter()
            .filter_map(|p| {
                let ms = kept
                    .iter()
                    .flat_map(|r| r.outcome.phases.iter().filter(|(q, _)| q == p))
                    .map(|(_, d)| d.as_secs_f64() * 1000.0)
                    .collect();
                of(p.as_str(), ms)
            })
            .collect();
        out.extend(of(
            "total",
            kept.iter()
                .map(|r| r.outcome.total.as_secs_f64() * 1000.0)
                .collect(),
        ));
        out
    }
}

struct Runtime {
    def: ProbeDef,
    source: Source,
    state: State,
    failures: u32,
    first_failure: Option<CheckResult>,
    results: VecDeque<CheckResult>,
    incidents: VecDeque<Incident>,
    checks: (u64, u64),
    /// Unix hour -> (checks, passed), 31 days at most.
    hours: BTreeMap<u64, (u64, u64)>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Runtime {
    fn new(def: ProbeDef, source: Source, task: Option<tokio::task::JoinHandle<()>>) -> Self {
        Self {
            def,
            source,
            state: State::Unknown,
            failures: 0,
            first_failure: None,
            results: VecDeque::new(),
            incidents: VecDeque::new(),
            checks: (0, 0),
            hours: BTreeMap::new(),
            task,
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

struct Shared {
    probes: Mutex<BTreeMap<String, Runtime>>,
    sink: Arc<dyn SpanSink>,
    outbox: Option<faultline_notify::Outbox>,
    path: PathBuf,
    results: history::Writer,
    policy: Policy,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Runtime>> {
        // A panic while holding the lock leaves the map consistent (every change is one
        // insert or field update), so a poisoned lock is still usable.
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every probe, running.
#[derive(Clone)]
pub struct Probes {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("probes", &self.shared.lock().len())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    probes: Vec<ProbeDef>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Probes {
    /// Starts the probes of the configuration file and of `DATA_DIR/probes.json` (a name
    /// in both is refused), held to the setup's policy, with their results of the last
    /// `retention` read back from `DATA_DIR/probes/`.
    pub async fn start(
        data_dir: &Path,
        setup: Setup,
        sink: Arc<dyn SpanSink>,
        outbox: Option<faultline_notify::Outbox>,
        retention: Duration,
    ) -> Result<Self, ProbeError> {
        let path = data_dir.join("probes.json");
        let dir = data_dir.join("probes");
        let io = |op, path: &Path, e: String| ProbeError::File {
            op,
            path: path.to_path_buf(),
            reason: e,
        };
        let (p, d) = (path.clone(), dir.clone());
        let (saved, (records, bad)) = tokio::task::spawn_blocking(move || {
            let saved = match std::fs::read(&p) {
                Ok(b) => {
                    serde_json::from_slice::<File>(&b)
                        .map_err(|e| {
                            io("cannot parse", &p, format!("{e}; fix it or move it aside"))
                        })?
                        .probes
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io("cannot read", &p, e.to_string())),
            };
            Ok((saved, history::read(&d, now_ms(), retention)))
        })
        .await
        .map_err(|e| io("cannot read", &path, e.to_string()))??;
        if bad > 0 {
            tracing::warn!(
                "{bad} unreadable probe result records in {} were skipped",
                dir.display()
            );
        }
        let results = history::Writer::start(dir.clone(), retention)
            .map_err(|e| io("cannot open the results log in", &dir, e.to_string()))?;
        let probes = Self {
            shared: Arc::new(Shared {
                probes: Mutex::new(BTreeMap::new()),
                sink,
                outbox,
                path,
                results,
                policy: setup.policy,
            }),
        };
        let offered = probes.rebuild(setup.defs, saved, records)?;
        if let Some(o) = probes.shared.outbox.clone() {
            tokio::task::spawn_blocking(move || {
                offered.into_iter().try_for_each(|e| o.enqueue(e).map(drop))
            })
            .await
            .map_err(|e| io("cannot notify from", &dir, e.to_string()))?
            .map_err(|e| io("cannot notify from", &dir, e.to_string()))?;
        }
        Ok(probes)
    }

    /// Starts the probes, rebuilds their state, incidents and uptime from the results as
    /// they happened, and returns the transitions of the last day to offer the outbox: a
    /// crash can come between a transition's result being synced and its notification
    /// being enqueued (keys the outbox has are ignored).
    fn rebuild(
        &self,
        from_config: Vec<ProbeDef>,
        saved: Vec<ProbeDef>,
        records: Vec<history::Record>,
    ) -> Result<Vec<faultline_notify::Event>, ProbeError> {
        let mut map = self.shared.lock();
        for (defs, source) in [(from_config, Source::Config), (saved, Source::Api)] {
            for def in defs {
                match (source, def.validate_with(&self.shared.policy)) {
                    (Source::Api, Err(e)) if def.validate().is_ok() => tracing::warn!(
                        "{e}; its checks fail, sending nothing, until it is changed, paused or deleted"
                    ),
                    (_, r) => r?,
                }
                if map.contains_key(&def.name) {
                    return Err(ProbeError::Exists(def.name));
                }
                self.insert(&mut map, def, source);
            }
        }
        for r in records {
            if let Some(rt) = map.get_mut(&r.probe) {
                record(rt, r.result());
            }
        }
        let Some(o) = &self.shared.outbox else {
            return Ok(Vec::new());
        };
        let since = o.since_ms().max(now_ms().saturating_sub(86_400_000));
        Ok(map
            .iter()
            .flat_map(|(name, rt)| rt.incidents.iter().map(move |i| (name, i)))
            .filter(|(_, i)| i.start_ms >= since)
            .flat_map(|(name, i)| {
                std::iter::once(event(name, i, true))
                    .chain(i.end_ms.is_some().then(|| event(name, i, false)))
            })
            .collect())
    }

    /// Starts `def`; a probe it replaces (a new definition, a pause) keeps its results,
    /// state, incidents and uptime, and its old task stops.
    fn insert(&self, map: &mut BTreeMap<String, Runtime>, def: ProbeDef, source: Source) {
        let task =
            (!def.paused).then(|| tokio::spawn(run(Arc::downgrade(&self.shared), def.clone())));
        let mut new = Runtime::new(def, source, task);
        if let Some(mut old) = map.remove(&new.def.name) {
            new.state = old.state;
            new.failures = old.failures;
            new.first_failure = old.first_failure.take();
            new.results = std::mem::take(&mut old.results);
            new.incidents = std::mem::take(&mut old.incidents);
            new.checks = old.checks;
            new.hours = std::mem::take(&mut old.hours);
        }
        map.insert(new.def.name.clone(), new);
    }

    /// Every probe.
    pub fn list(&self) -> Vec<ProbeView> {
        self.shared.lock().values().map(view).collect()
    }

    /// One probe.
    pub fn get(&self, name: &str) -> Option<ProbeView> {
        self.shared.lock().get(name).map(view)
    }

    /// Adds a probe (`replace`: or replaces an API probe of the same name) and saves; a
    /// definition whose target the policy refuses is refused.
    pub async fn put(&self, def: ProbeDef, replace: bool) -> Result<(), ProbeError> {
        def.validate_with(&self.shared.policy)?;
        self.put_valid(def, replace).await
    }

    /// [`Probes::put`] of a definition already checked.
    async fn put_valid(&self, def: ProbeDef, replace: bool) -> Result<(), ProbeError> {
        {
            let mut map = self.shared.lock();
            match map.get(&def.name) {
                Some(r) if r.source == Source::Config => {
                    return Err(ProbeError::FromConfig(def.name));
                }
                Some(_) if !replace => return Err(ProbeError::Exists(def.name)),
                None if replace => return Err(ProbeError::NotFound(def.name)),
                None if map.len() >= MAX_PROBES => return Err(ProbeError::TooMany),
                _ => {}
            }
            self.insert(&mut map, def, Source::Api);
        }
        self.save().await
    }

    /// Pauses or resumes an API probe and saves. Resuming holds it to the policy again;
    /// pausing does not (a probe the policy came to refuse can be paused).
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<(), ProbeError> {
        let def = {
            let map = self.shared.lock();
            let r = map
                .get(name)
                .ok_or_else(|| ProbeError::NotFound(name.to_string()))?;
            if r.source == Source::Config {
                return Err(ProbeError::FromConfig(name.to_string()));
            }
            ProbeDef {
                paused,
                ..r.def.clone()
            }
        };
        if paused {
            def.validate()?;
            self.put_valid(def, true).await
        } else {
            self.put(def, true).await
        }
    }

    /// Deletes an API probe and saves.
    pub async fn delete(&self, name: &str) -> Result<(), ProbeError> {
        {
            let mut map = self.shared.lock();
            match map.get(name) {
                None => return Err(ProbeError::NotFound(name.to_string())),
                Some(r) if r.source == Source::Config => {
                    return Err(ProbeError::FromConfig(name.to_string()));
                }
                Some(_) => {
                    map.remove(name);
                }
            }
        }
        self.save().await
    }

    /// Writes the API probes to `probes.json` (off the executor: it fsyncs).
    async fn save(&self) -> Result<(), ProbeError> {
        let file = File {
            version: 1,
            probes: self
                .shared
                .lock()
                .values()
                .filter(|r| r.source == Source::Api)
                .map(|r| r.def.clone())
                .collect(),
        };
        let path = self.shared.path.clone();
        let fail = |op, path: &Path, e: String| ProbeError::File {
            op,
            path: path.to_path_buf(),
            reason: e,
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| fail("cannot encode", &path, e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            faultline_wal::durable::replace_file(&path, &bytes)
                .map_err(|e| fail(e.op, &e.path, e.source.to_string()))
        })
        .await
        .map_err(|e| ProbeError::File {
            op: "cannot write",
            path: self.shared.path.clone(),
            reason: e.to_string(),
        })?
    }

    /// The blackbox_exporter metrics of every probe's last check, in the Prometheus text
    /// format: `probe_success`, `probe_duration_seconds` (the whole check; with `phase`,
    /// each phase) and `probe_http_status_code`, labelled `probe`.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let map = self.shared.lock();
        let mut out = String::new();
        let last = || {
            map.iter()
                .filter_map(|(n, r)| r.results.back().map(|x| (n, x)))
        };
        out.push_str("# HELP probe_success Whether the probe's last check passed.\n# TYPE probe_success gauge\n");
        for (n, x) in last() {
            let _ = writeln!(
                out,
                "probe_success{{probe=\"{n}\"}} {}",
                u8::from(x.outcome.ok)
            );
        }
        out.push_str("# HELP probe_duration_seconds How long the probe's last check took, whole and by phase.\n# TYPE probe_duration_seconds gauge\n");
        for (n, x) in last() {
            let _ = writeln!(
                out,
                "probe_duration_seconds{{probe=\"{n}\"}} {}",
                x.outcome.total.as_secs_f64()
            );
            for (p, d) in &x.outcome.phases {
                let _ = writeln!(
                    out,
                    "probe_duration_seconds{{probe=\"{n}\",phase=\"{}\"}} {}",
                    p.as_str(),
                    d.as_secs_f64()
                );
            }
        }
        out.push_str("# HELP probe_ssl_earliest_cert_expiry The earliest expiry of the certificate chain of the probe's last https check, Unix seconds.\n# TYPE probe_ssl_earliest_cert_expiry gauge\n");
        for (n, x) in last() {
            if let Some(t) = x.outcome.cert_not_after {
                let _ = writeln!(out, "probe_ssl_earliest_cert_expiry{{probe=\"{n}\"}} {t}");
            }
        }
        out.push_str("# HELP probe_http_status_code The HTTP status of the probe's last check.\n# TYPE probe_http_status_code gauge\n");
        for (n, x) in last() {
            if let Some(s) = x.outcome.status {
                let _ = writeln!(out, "probe_http_status_code{{probe=\"{n}\"}} {s}");
            }
        }
        out
    }
}

fn view(r: &Runtime) -> ProbeView {
    ProbeView {
        def: r.def.clone(),
        source: r.source,
        state: if r.def.paused {
            State::Unknown
        } else {
            r.state
        },
        results: r.results.iter().rev().cloned().collect(),
        incidents: r.incidents.iter().rev().cloned().collect(),
        checks: r.checks,
        uptime: WINDOWS.map(|(window, hours)| {
            let from = (now_ms() / 3_600_000).saturating_sub(hours - 1);
            let (checks, passed) = r
                .hours
                .range(from..)
                .fold((0, 0), |a, (_, c)| (a.0 + c.0, a.1 + c.1));
            Uptime {
                window,
                checks,
                passed,
            }
        }),
    }
}

/// A probe's schedule: a check every interval, on its own task. It holds the probes only
/// weakly, so it ends when they are dropped.
async fn run(shared: std::sync::Weak<Shared>, def: ProbeDef) {
    let interval = Duration::from_secs(def.interval_secs);
    let offset =
        Duration::from_millis(rand::random::<u64>() % (interval.as_millis() as u64).max(1));
    let mut next = tokio::time::Instant::now() + offset;
    loop {
        tokio::time::sleep_until(next).await;
        let lag = tokio::time::Instant::now().saturating_duration_since(next);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        tokio::spawn(one(shared, def.clone(), lag));
        next += interval;
        // After a stall (a suspended machine), skip the missed ticks rather than burst.
        let now = tokio::time::Instant::now();
        while next + interval < now {
            next += interval;
        }
    }
}

/// One check: run it, store its span, record the result.
async fn one(shared: Arc<Shared>, def: ProbeDef, lag: Duration) {
    let ids: ([u8; 16], [u8; 8]) = (rand::random(), rand::random());
    let at_ms = now_ms();
    let start_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let started = Instant::now();
    let (policy, timeout) = (&shared.policy, def.timeout());
    let outcome = match (&def.http, &def.tcp, &def.dns) {
        (Some(h), _, _) => {
            let traceparent = span::traceparent(&ids.0, &ids.1);
            check::http(h, &traceparent, timeout, policy).await
        }
        (None, Some(t), _) => check::tcp(t, timeout, policy).await,
        (None, None, Some(d)) => check::dns(d, timeout, policy).await,
        (None, None, None) => return,
    };
    if let (Some(warning), Some(not_after), Some(o)) = (
        &outcome.warning,
        outcome.cert_not_after,
        shared.outbox.clone(),
    ) {
        // Once per certificate: its expiry is in the key, and known keys are ignored.
        let e = faultline_notify::Event {
            key: format!("probe/{}/cert/{not_after}/expiring", def.name),
            kind: "probe".into(),
            subject: def.name.clone(),
            state: "expiring".into(),
            at: at_ms,
            message: warning.clone(),
            link: None,
        };
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || o.enqueue(e)).await {
            tracing::error!(probe = %def.name, "cannot enqueue the certificate warning: {e}");
        }
    }
    debug_assert!(started.elapsed() >= outcome.total);
    let span_error = shared
        .sink
        .submit(span::of(&def, &outcome, ids, start_ns))
        .await
        .err();
    if let Some(e) = &span_error {
        tracing::warn!(probe = %def.name, "the probe's span was not stored: {e}");
    }
    let result = CheckResult {
        at_ms,
        lag,
        outcome,
        trace_id: ids.0,
        span_error,
    };
    let (synced, event) = {
        let mut map = shared.lock();
        let Some(r) = map.get_mut(&def.name) else {
            return;
        };
        // A check of a definition since replaced or paused is not recorded.
        if r.def != def {
            return;
        }
        let rec = history::Record::of(&def.name, &result);
        let Some(transition) = record(r, result) else {
            shared.results.append(rec);
            return;
        };
        // Queued under the lock, so the log keeps the order of the results.
        let synced = shared.results.append_synced(rec);
        (
            synced,
            event(&def.name, &transition, transition.end_ms.is_none()),
        )
    };
    // Synced before it is told (see history.rs); if the sync fails, the outbox is not told
    // and the next start re-offers nothing the log does not hold.
    if synced.await.is_err() {
        return;
    }
    if let Some(o) = shared.outbox.clone() {
        let why = match tokio::task::spawn_blocking(move || o.enqueue(event)).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // The next start re-offers it (the result is synced).
        tracing::error!(probe = %def.name, "cannot enqueue the notification: {why}");
    }
}

/// The notification of an incident's start (`down`) or end.
fn event(probe: &str, i: &Incident, down: bool) -> faultline_notify::Event {
    let f = &i.first_failure;
    let why = f.outcome.error.as_deref().unwrap_or("failed");
    let (state, at, message) = match (down, i.end_ms) {
        (false, Some(end)) => (
            "up",
            end,
            format!(
                "passing again after {} s down (it failed with: {why})",
                end.saturating_sub(i.start_ms).div_ceil(1000)
            ),
        ),
        _ => ("down", i.start_ms, why.to_string()),
    };
    faultline_notify::Event {
        key: format!("probe/{probe}/{}/{state}", i.start_ms),
        kind: "probe".into(),
        subject: probe.to_string(),
        state: state.into(),
        at,
        message,
        link: Some(format!("/trace/{}", faultline_model::hex(&f.trace_id))),
    }
}

/// Adds a result and moves the state (see the module doc); the incident it opened or
/// closed, if it did.
fn record(r: &mut Runtime, result: CheckResult) -> Option<Incident> {
    let mut changed = None;
    r.checks.0 += 1;
    let hour = r.hours.entry(result.at_ms / 3_600_000).or_default();
    hour.0 += 1;
    hour.1 += u64::from(result.outcome.ok);
    while r.hours.len() > 31 * 24 {
        r.hours.pop_first();
    }
    if result.outcome.ok {
        r.checks.1 += 1;
        r.failures = 0;
        r.first_failure = None;
        if r.state == State::Down
            && let Some(i) = r.incidents.back_mut()
        {
            i.end_ms = Some(result.at_ms);
            changed = Some(i.clone());
        }
        r.state = State::Up;
    } else {
        r.failures += 1;
        if r.failures == 1 {
            r.first_failure = Some(result.clone());
        }
        if r.failures > r.def.retries && r.state != State::Down {
            r.state = State::Down;
            let first = r.first_failure.clone().unwrap_or_else(|| result.clone());
            let i = Incident {
                start_ms: first.at_ms,
                end_ms: None,
                first_failure: first,
            };
            changed = Some(i.clone());
            r.incidents.push_back(i);
            if r.incidents.len() > MAX_INCIDENTS {
                r.incidents.pop_front();
            }
        }
    }
    r.results.push_back(result);
    if r.results.len() > MAX_RESULTS {
        r.results.pop_front();
    }
    changed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Nowhere;

    impl SpanSink for Nowhere {
        fn submit(
            &self,
            _: ExportTraceServiceRequest,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn tcp(name: &str, port: u16) -> ProbeDef {
        ProbeDef {
            name: name.into(),
            interval_secs: 1,
            timeout_secs: Some(0.5),
            retries: 1,
            paused: false,
            http: None,
            tcp: Some(def::TcpTarget {
                host: "127.0.0.1".into(),
                port,
            }),
            dns: None,
        }
    }

    fn setup(defs: Vec<ProbeDef>) -> Setup {
        Setup {
            defs,
            policy: Policy::default(),
        }
    }

    fn result(ok: bool, at_ms: u64) -> CheckResult {
        CheckResult {
            at_ms,
            lag: Duration::ZERO,
            outcome: Outcome {
                ok,
                ..Outcome::default()
            },
            trace_id: [at_ms as u8; 16],
            span_error: None,
        }
    }

    #[test]
    fn retries_then_down_then_up_make_one_incident_from_the_first_failure() {
        let mut r = Runtime::new(tcp("p", 1), Source::Api, None);
        record(&mut r, result(true, 1));
        record(&mut r, result(false, 2));
        assert_eq!(r.state, State::Up, "one failure is within retries = 1");
        record(&mut r, result(false, 3));
        record(&mut r, result(false, 4));
        assert_eq!(r.state, State::Down);
        assert_eq!(r.incidents.len(), 1);
        assert_eq!(r.incidents[0].start_ms, 2, "from the first failing check");
        assert_eq!(r.incidents[0].first_failure.trace_id, [2; 16]);
        record(&mut r, result(true, 5));
        assert_eq!((r.state, r.incidents[0].end_ms), (State::Up, Some(5)));
        assert_eq!(r.checks, (5, 2));
    }

    #[test]
    fn phase_latency_is_nearest_rank_over_the_window() {
        let mut r = Runtime::new(tcp("p", 1), Source::Api, None);
        // 100 checks: connect takes i + 1 ms; check 0 is before the window, so the
        // 99 in it take 2 to 100 ms.
        for i in 0..100u64 {
            let mut x = result(true, 1000 + i);
            x.outcome.phases = vec![(Phase::Connect, Duration::from_millis(i + 1))];
            x.outcome.total = Duration::from_millis(2 * (i + 1));
            record(&mut r, x);
        }
        let v = view(&r);
        let l = v.phase_latency(1001);
        assert_eq!(l.len(), 2);
        assert_eq!(
            (
                l[0].phase,
                l[0].checks,
                l[0].p50_ms,
                l[0].p90_ms,
                l[0].p99_ms
            ),
            ("connect", 99, 51.0, 91.0, 100.0)
        );
        assert_eq!((l[1].phase, l[1].p99_ms), ("total", 200.0));
        assert!(v.phase_latency(u64::MAX).is_empty());
    }

    #[tokio::test]
    async fn api_probes_persist_and_config_probes_cannot_be_changed_there() {
        let dir = tempfile::tempdir().unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Probes::start(
            dir.path(),
            setup(vec![tcp("from-config", port)]),
            Arc::new(Nowhere),
            None,
            week,
        )
        .await
        .unwrap();
        p.put(tcp("from-api", port), false).await.unwrap();
        assert!(matches!(
            p.put(tcp("from-api", port), false).await,
            Err(ProbeError::Exists(_))
        ));
        assert!(matches!(
            p.delete("from-config").await,
            Err(ProbeError::FromConfig(_))
        ));
        p.set_paused("from-api", true).await.unwrap();
        // A check within the 1 s interval, for the one running.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let v = p.get("from-config").unwrap();
        assert!(v.checks.0 >= 1 && v.results[0].outcome.ok, "{v:?}");
        assert_eq!(p.get("from-api").unwrap().checks.0, 0, "paused");
        // Replacing a running probe keeps what it found.
        p.put(tcp("second", port), false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let before = p.get("second").unwrap().checks.0;
        assert!(before >= 1);
        p.put(
            ProbeDef {
                retries: 3,
                ..tcp("second", port)
            },
            true,
        )
        .await
        .unwrap();
        assert_eq!(
            p.get("second").unwrap().checks.0,
            before,
            "kept across the change"
        );
        p.delete("second").await.unwrap();
        assert!(
            p.metrics_text()
                .contains("probe_success{probe=\"from-config\"} 1")
        );
        drop(p);
        let again = Probes::start(
            dir.path(),
            setup(vec![tcp("from-config", port)]),
            Arc::new(Nowhere),
            None,
            week,
        )
        .await
        .unwrap();
        let names: Vec<(String, Source, bool)> = again
            .list()
            .into_iter()
            .map(|v| (v.def.name, v.source, v.def.paused))
            .collect();
        assert_eq!(
            names,
            vec![
                ("from-api".into(), Source::Api, true),
                ("from-config".into(), Source::Config, false)
            ]
        );
        again.delete("from-api").await.unwrap();
        let saved = std::fs::read_to_string(dir.path().join("probes.json")).unwrap();
        assert!(saved.contains("\"probes\": []"), "{saved}");
    }

    #[tokio::test]
    async fn the_policy_refuses_definitions_and_a_stored_probe_it_refuses_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        // Made through the API while loopback was allowed.
        let saved = File {
            version: 1,
            probes: vec![tcp("stored", port)],
        };
        std::fs::write(
            dir.path().join("probes.json"),
            serde_json::to_vec(&saved).unwrap(),
        )
        .unwrap();
        let no_loopback = PolicyConfig {
            deny: vec!["127.0.0.0/8".into()],
            ..PolicyConfig::default()
        };
        // The configuration file's probes are checked by Setup::new.
        let e = Setup::new(vec![tcp("cfg", port)], &no_loopback).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "probes: probe \"cfg\": tcp.host: 127.0.0.1 is refused ([probe_policy] deny entry \"127.0.0.0/8\")"
            ),
            "{e}"
        );
        let p = Probes::start(
            dir.path(),
            Setup::new(Vec::new(), &no_loopback).unwrap(),
            Arc::new(Nowhere),
            None,
            week,
        )
        .await
        .unwrap();
        // The API's new definitions are refused.
        match p.put(tcp("new", port), false).await {
            Err(ProbeError::Invalid(d)) => {
                assert_eq!((d.probe.as_str(), d.field.as_str()), ("new", "tcp.host"));
                assert!(d.message.contains("remove \"127.0.0.0/8\""), "{d}");
            }
            other => panic!("{other:?}"),
        }
        assert!(p.get("new").is_none());
        // The stored one runs, and each check fails in resolve without connecting.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let v = p.get("stored").unwrap();
        assert!(v.checks.0 >= 1, "{v:?}");
        let o = &v.results[0].outcome;
        assert!(!o.ok);
        let error = o.error.as_deref().unwrap();
        assert!(
            error.starts_with("refused, not resolved or connected: 127.0.0.1 is refused"),
            "{error}"
        );
        assert!(o.phases.is_empty() && o.address.is_none(), "{o:?}");
        assert_eq!(
            l.accept().map(drop).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "nothing connected"
        );
        // It can be paused, not resumed while refused; replacing it is judged too.
        p.set_paused("stored", true).await.unwrap();
        assert!(matches!(
            p.set_paused("stored", false).await,
            Err(ProbeError::Invalid(_))
        ));
        assert!(p.get("stored").unwrap().def.paused);
        assert!(matches!(
            p.put(tcp("stored", port), true).await,
            Err(ProbeError::Invalid(_))
        ));
        p.delete("stored").await.unwrap();
    }
}
