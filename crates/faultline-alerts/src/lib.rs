//! Alert rules over the RED rollups: "p99 of checkout POST /checkout above 800 ms for 5
//! minutes", "error rate above 5% for 10 minutes", "no spans from billing for 15 minutes"
//! (rules in `rule.rs`). A rule holds when its condition is true in every one of its last
//! N whole minutes; it fires once when it starts to hold and resolves once when it stops,
//! each firing an incident with what it measured. Alerts are about a service or an
//! operation, never about one span, so a slow hour is one incident, not thousands of
//! messages.
//!
//! Evaluation ([`Alerts::evaluate_at`]) reads `SpanStore::red` for the window, so it costs
//! a few rollup cells whatever the span volume. A minute is judged once it ended 15 s ago
//! ([`GRACE_SECS`]), so spans still on their way to the store count; a window whose
//! answer is partial (a quarantined block, indexes loading) is not judged. The thread
//! started by [`Alerts::start`] evaluates every 5 s (spans that arrive late for a judged
//! minute still count); a rule fires only when it was not firing and resolves only when
//! it was.
//!
//! State survives restarts in `DATA_DIR/alerts.json`, rewritten (temporary file, fsync,
//! rename) at every firing and resolving, so a restart neither fires again an alert that
//! is firing nor forgets its incidents:
//!
//! ```json
//! {"version": 1, "rules": {"checkout-slow": {"firing": true, "judged_minute": 29000000,
//!   "incidents": [{"start": 1740000000, "end": null, "fired_at": 1740000300,
//!                  "message": "p99 of checkout POST /checkout above 800 ms for 5 minutes: 1.24 s in the last minute"}]}}}
//! ```

pub mod rule;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use faultline_store::{RedPoint, SpanStore};

pub use rule::{Condition, RuleDef, RuleError};

/// Seconds after a minute ends before it is judged.
pub const GRACE_SECS: u64 = 15;
/// Incidents kept per rule.
pub const MAX_INCIDENTS: usize = 100;

/// A period when a rule held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Unix seconds: the start of the first minute of the window that made it fire.
    pub start: u64,
    /// Unix seconds: the start of the first minute without the condition.
    pub end: Option<u64>,
    /// Unix seconds of the evaluation that fired it.
    pub fired_at: u64,
    /// What held, with the value measured.
    pub message: String,
}

/// A rule's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Whether it holds now.
    pub firing: bool,
    /// The last whole minute judged (Unix minutes).
    pub judged_minute: Option<u64>,
    /// Its incidents, oldest first.
    pub incidents: Vec<Incident>,
}

/// A rule that started or stopped holding.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The rule.
    pub rule: String,
    /// Unix seconds: the start of the incident it opened or closed.
    pub start: u64,
    /// Fired (true) or resolved.
    pub firing: bool,
    /// In words.
    pub message: String,
}

/// Why alerts could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// A rule is not usable.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// `alerts.json` could not be read or written.
    #[error("{op} {}: {reason}", path.display())]
    File {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    rules: BTreeMap<String, RuleState>,
}

struct Inner {
    rules: Vec<RuleDef>,
    outbox: Option<faultline_notify::Outbox>,
    state: Mutex<BTreeMap<String, RuleState>>,
    store: Arc<dyn SpanStore>,
    path: PathBuf,
}

/// The rules and their states.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("rules", &self.inner.rules.len())
            .finish()
    }
}

impl Alerts {
    /// The rules, with the state kept in `DATA_DIR/alerts.json` for those still defined.
    /// Blocking (reads the file).
    /// Transitions of the last day missing from `outbox` (a crash between saving a
    /// transition and enqueueing it) are enqueued again; keys it has are ignored.
    pub fn open(
        data_dir: &Path,
        rules: Vec<RuleDef>,
        store: Arc<dyn SpanStore>,
        outbox: Option<faultline_notify::Outbox>,
    ) -> Result<Self, AlertError> {
        rule::check_all(&rules)?;
        let path = data_dir.join("alerts.json");
        let mut saved = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice::<Saved>(&b)
                    .map_err(|e| AlertError::File {
                        op: "cannot parse",
                        path: path.clone(),
                        reason: format!("{e}; fix it or move it aside"),
                    })?
                    .rules
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(AlertError::File {
                    op: "cannot read",
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let state: BTreeMap<String, RuleState> = rules
            .iter()
            .map(|r| (r.name.clone(), saved.remove(&r.name).unwrap_or_default()))
            .collect();
        if let Some(o) = &outbox {
            let since = (o.since_ms() / 1000).max(now_secs().saturating_sub(86_400));
            for (rule, s) in &state {
                for i in s.incidents.iter().filter(|i| i.fired_at >= since) {
                    let mut t = Transition {
                        rule: rule.clone(),
                        start: i.start,
                        firing: true,
                        message: i.message.clone(),
                    };
                    let mut offer = vec![event(&t, i.fired_at)];
                    if let Some(end) = i.end {
                        t.firing = false;
                        t.message = format!("resolved: {}", i.message);
                        offer.push(event(&t, end));
                    }
                    for e in offer {
                        o.enqueue(e).map_err(|e| AlertError::File {
                            op: "cannot notify from",
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                    }
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                rules,
                outbox,
                state: Mutex::new(state),
                store,
                path,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, RuleState>> {
        // Every change under the lock is one field update, so a poisoned lock is usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every rule with its state.
    pub fn list(&self) -> Vec<(RuleDef, RuleState)> {
        let state = self.lock();
        self.inner
            .rules
            .iter()
            .map(|r| (r.clone(), state.get(&r.name).cloned().unwrap_or_default()))
            .collect()
    }

    /// Judges every rule on the whole minutes ended [`GRACE_SECS`] before `now_s`; the
    /// rules that fired or resolved, each saved and then enqueued in the outbox. Blocking
    /// (reads the rollups, writes `alerts.json` and the outbox).
    pub fn evaluate_at(&self, now_s: u64) -> Vec<Transition> {
        let end_m = now_s.saturating_sub(GRACE_SECS) / 60;
        let mut out = Vec::new();
        for r in &self.inner.rules {
            let Some((holds, value)) = self.judge(r, end_m) else {
                continue;
            };
            let mut state = self.lock();
            let s = state.entry(r.name.clone()).or_default();
            s.judged_minute = Some(end_m);
            if holds && !s.firing {
                let message = format!("{}: {value}", r.describe());
                s.firing = true;
                s.incidents.push(Incident {
                    start: (end_m - u64::from(r.for_minutes)) * 60,
                    end: None,
                    fired_at: now_s,
                    message: message.clone(),
                });
                if s.incidents.len() > MAX_INCIDENTS {
                    s.incidents.remove(0);
                }
                out.push(Transition {
                    rule: r.name.clone(),
                    start: (end_m - u64::from(r.for_minutes)) * 60,
                    firing: true,
                    message,
                });
            } else if !holds && s.firing {
                s.firing = false;
                // The newest minute is the one that broke the condition: it ended there.
                let mut start = 0;
                if let Some(i) = s.incidents.last_mut() {
                    i.end = Some((end_m - 1) * 60);
                    start = i.start;
                }
                out.push(Transition {
                    rule: r.name.clone(),
                    start,
                    firing: false,
                    message: format!("resolved: {}; {value}", r.describe()),
                });
            }
        }
        // Judged minutes are saved with the next transition; only transitions must last.
        if !out.is_empty()
            && let Err(e) = self.save()
        {
            tracing::warn!("cannot keep the alert states: {e}");
        }
        if let Some(o) = &self.inner.outbox {
            for t in &out {
                if let Err(e) = o.enqueue(event(t, now_s)) {
                    // The next start re-offers it from alerts.json.
                    tracing::error!(rule = %t.rule, "cannot enqueue the notification: {e}");
                }
            }
        }
        out
    }

    /// Whether `r` holds on the `for_minutes` whole minutes before minute `end_m`, and the
    /// last minute's value in words; `None` when the rollups cannot say (partial answer).
    fn judge(&self, r: &RuleDef, end_m: u64) -> Option<(bool, String)> {
        let n = u64::from(r.for_minutes);
        let start_m = end_m.checked_sub(n)?;
        let (points, c) = match self.inner.store.red(
            &r.service,
            r.operation.as_deref(),
            None,
            start_m * 60,
            end_m * 60,
            60,
        ) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(rule = %r.name, "cannot read the rollups: {e}");
                return None;
            }
        };
        if !c.is_complete() {
            tracing::info!(rule = %r.name, "not judged: the rollups are partial ({})", c.reasons.join("; "));
            return None;
        }
        let value = |p: &RedPoint| -> Option<f64> {
            match (r.condition(), &r.operation) {
                (Condition::P99Above(_), Some(_)) => p.p99_ms,
                (Condition::P99Above(_), None) => p.request_ms.map(|q| q[2]).or(p.p99_ms),
                (Condition::ErrorRateAbove(_), Some(_)) => {
                    (p.count > 0).then(|| p.errors as f64 / p.count as f64)
                }
                (Condition::ErrorRateAbove(_), None) => {
                    (p.requests > 0).then(|| p.request_errors as f64 / p.requests as f64)
                }
                (Condition::NoSpans, _) => Some(p.count as f64),
            }
        };
        let holds = points.len() as u64 == n
            && points.iter().all(|p| match (r.condition(), value(p)) {
                (Condition::P99Above(b), Some(v)) => v > b,
                (Condition::ErrorRateAbove(b), Some(v)) => v > b,
                (Condition::NoSpans, Some(v)) => v == 0.0,
                _ => false,
            });
        let last = points.last().and_then(value);
        let words = match (r.condition(), last) {
            (Condition::P99Above(_), Some(ms)) => format!(
                "{} in the last minute",
                faultline_model::health::human_duration((ms * 1e6) as u64)
            ),
            (Condition::ErrorRateAbove(_), Some(v)) => {
                format!("{:.2}% in the last minute", v * 100.0)
            }
            (Condition::NoSpans, Some(v)) => format!("{v} spans in the last minute"),
            (_, None) => "no requests in the last minute".to_string(),
        };
        Some((holds, words))
    }

    /// Writes every rule's state to `alerts.json` durably.
    fn save(&self) -> Result<(), AlertError> {
        let saved = Saved {
            version: 1,
            rules: self.lock().clone(),
        };
        let path = &self.inner.path;
        let fail = |op, e: std::io::Error| AlertError::File {
            op,
            path: path.clone(),
            reason: e.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(|e| AlertError::File {
            op: "cannot encode",
            path: path.clone(),
            reason: e.to_string(),
        })?;
        faultline_wal::durable::replace_file(path, &bytes).map_err(|e| fail(e.op, e.source))?;
        Ok(())
    }

    /// Evaluates every 5 s on a thread of its own, logging each transition, for as long
    /// as the process runs.
    pub fn start(&self) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || {
                loop {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    for t in me.evaluate_at(now) {
                        tracing::warn!(rule = %t.rule, firing = t.firing, "{}", t.message);
                    }
                    std::thread::sleep(Duration::from_secs(5));
                }
            })
            .map(drop)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The notification of a transition that happened at `at_s`.
fn event(t: &Transition, at_s: u64) -> faultline_notify::Event {
    let state = if t.firing { "firing" } else { "resolved" };
    faultline_notify::Event {
        key: format!("alert/{}/{}/{state}", t.rule, t.start),
        kind: "alert".into(),
        subject: t.rule.clone(),
        state: state.into(),
        at: at_s * 1000,
        message: t.message.clone(),
        link: Some("/alerts".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{Origin, Span, SpanKind, StatusCode};
    use faultline_store::{Store, StoreOptions};

    use super::*;

    /// 20 spans of `op` in minute `m`, each `ms` long, `errors` of them failing.
    fn minute(m: u64, op: &str, ms: u64, errors: usize) -> Vec<Span> {
        let origin = Arc::new(Origin {
            service: "checkout".into(),
            ..Origin::default()
        });
        (0..20u64)
            .map(|i| {
                let start = m * 60_000_000_000 + i * 1_000_000_000;
                let mut tid = [3u8; 16];
                tid[..8].copy_from_slice(&m.to_be_bytes());
                tid[8] = i as u8;
                Span {
                    trace_id: tid,
                    span_id: [1; 8],
                    parent_span_id: None,
                    name: op.into(),
                    kind: SpanKind::Server,
                    start_ns: start,
                    end_ns: start + ms * 1_000_000 + i * 1000,
                    status: if (i as usize) < errors {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    status_message: String::new(),
                    attributes: Vec::new(),
                    events: Vec::new(),
                    links: Vec::new(),
                    origin: origin.clone(),
                }
            })
            .collect()
    }

    fn rule(toml_text: &str) -> RuleDef {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_planted_p99_regression_fires_once_and_resolves_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(StoreOptions::new(&dir.path().join("store"))).unwrap();
        let base = 29_000_000u64; // a Unix minute
        // Minutes 0-4 fast (40 ms), 5-8 slow (1.2 s) on POST /checkout, then fast again;
        // GET /cart stays fast throughout.
        for m in 0..14u64 {
            let ms = if (5..9).contains(&m) { 1200 } else { 40 };
            store
                .ingest(m * 2 + 1, minute(base + m, "POST /checkout", ms, 0))
                .unwrap();
            store
                .ingest(m * 2 + 2, minute(base + m, "GET /cart", 30, 0))
                .unwrap();
        }
        let store: Arc<dyn SpanStore> = Arc::new(store);
        let rules = vec![
            rule(
                "name = \"slow\"\nservice = \"checkout\"\noperation = \"POST /checkout\"\np99_above_ms = 800\nfor_minutes = 3\n",
            ),
            rule(
                "name = \"cart\"\nservice = \"checkout\"\noperation = \"GET /cart\"\np99_above_ms = 800\nfor_minutes = 1\n",
            ),
        ];
        let outbox =
            faultline_notify::Outbox::open(dir.path(), faultline_notify::NotifyConfig::default())
                .unwrap();
        let alerts = Alerts::open(
            dir.path(),
            rules.clone(),
            store.clone(),
            Some(outbox.clone()),
        )
        .unwrap();
        let mut seen = Vec::new();
        // Judge each minute as it ends (plus the grace), twice each: nothing twice; and
        // restart after it fired: the restarted process does not fire it again.
        for m in 1..=8u64 {
            for _ in 0..2 {
                seen.extend(
                    alerts
                        .evaluate_at((base + m) * 60 + GRACE_SECS)
                        .into_iter()
                        .map(|t| (m, t)),
                );
            }
        }
        let alerts = Alerts::open(dir.path(), rules, store, Some(outbox.clone())).unwrap();
        for m in 8..=14u64 {
            for _ in 0..2 {
                seen.extend(
                    alerts
                        .evaluate_at((base + m) * 60 + GRACE_SECS)
                        .into_iter()
                        .map(|t| (m, t)),
                );
            }
        }
        let fired: Vec<(u64, bool, &str)> = seen
            .iter()
            .map(|(m, t)| (*m, t.firing, t.rule.as_str()))
            .collect();
        // Minutes 5, 6, 7 are slow by the end of minute 7; minute 9 is fast again.
        assert_eq!(
            fired,
            vec![(8, true, "slow"), (10, false, "slow")],
            "{seen:#?}"
        );
        assert!(
            seen[0]
                .1
                .message
                .starts_with("p99 of checkout POST /checkout above 800 ms for 3 minutes: 1.2"),
            "{}",
            seen[0].1.message
        );
        let (_, s) = alerts
            .list()
            .into_iter()
            .find(|(r, _)| r.name == "slow")
            .unwrap();
        assert_eq!(s.incidents.len(), 1);
        assert_eq!(
            (s.incidents[0].start, s.incidents[0].end),
            ((base + 5) * 60, Some((base + 9) * 60))
        );
        // One notification per transition, through the restart, naming the operation.
        let told: Vec<(String, String)> = outbox
            .events(10)
            .into_iter()
            .rev()
            .map(|e| (e.event.key, e.event.message))
            .collect();
        let start = (base + 5) * 60;
        assert_eq!(told.len(), 2, "{told:?}");
        assert_eq!(told[0].0, format!("alert/slow/{start}/firing"));
        assert_eq!(told[1].0, format!("alert/slow/{start}/resolved"));
        assert!(told[0].1.contains("POST /checkout"), "{}", told[0].1);
    }

    #[test]
    fn error_rate_and_silence() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(StoreOptions::new(&dir.path().join("store"))).unwrap();
        let base = 29_000_000u64;
        // Minutes 0-1: 10% errors; 2-3: 50%; 4-5: nothing at all.
        for m in 0..4u64 {
            let errors = if m < 2 { 2 } else { 10 };
            store
                .ingest(m + 1, minute(base + m, "POST /checkout", 10, errors))
                .unwrap();
        }
        let store: Arc<dyn SpanStore> = Arc::new(store);
        let alerts = Alerts::open(
            dir.path(),
            vec![
                rule("name = \"errors\"\nservice = \"checkout\"\nerror_rate_above = 0.25\nfor_minutes = 2\n"),
                rule("name = \"quiet\"\nservice = \"checkout\"\nno_spans = true\nfor_minutes = 2\n"),
            ],
            store,
            None,
        )
        .unwrap();
        let mut fired = Vec::new();
        for m in 1..=6u64 {
            for t in alerts.evaluate_at((base + m) * 60 + GRACE_SECS) {
                fired.push((m, t.rule, t.firing));
            }
        }
        assert_eq!(
            fired,
            vec![
                (4, "errors".to_string(), true),
                (5, "errors".to_string(), false),
                (6, "quiet".to_string(), true),
            ]
        );
    }
}
