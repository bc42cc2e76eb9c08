//! Experiment runs kept for the UI and the resilience score: the journals of the runs
//! `serve` scheduled and of those `faultline experiment run` reported
//! (`POST /api/v1/experiments/runs`), newest last, at most [`MAX_RUNS`].
//!
//! File: `experiments.json` in the data directory, replaced durably after each run
//! (`faultline_wal::durable`); JSON `{"version": 1, "runs": [JOURNAL, ...]}` where each
//! JOURNAL is `report::journal`'s.
//!
//! A service's **resilience score** is the share of its experiments whose hypothesis held
//! at their latest run, each weighted by the experiment's `severity` (1 to 5): 1.0 when
//! every experiment held. A run aborted because the steady state did not hold *before*
//! the method proved nothing and is left out; a run aborted by a stop condition or a
//! failed activity counts as not held. The score over time is the same share per UTC day,
//! over that day's runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

/// Most runs kept.
pub const MAX_RUNS: usize = 1000;

/// The runs, shared by the scheduler, the API and the UI.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    runs: Mutex<Vec<Value>>,
}

/// A failure to read or keep the runs.
#[derive(Debug, thiserror::Error)]
#[error("experiment history {path}: {reason}")]
pub struct HistoryError {
    pub path: PathBuf,
    pub reason: String,
}

/// The file's name in the data directory.
pub const FILE: &str = "experiments.json";

/// Whether a journal's run counts for the score, and whether it held.
fn verdict(j: &Value) -> Option<bool> {
    match j["status"].as_str() {
        Some("completed") => Some(j["deviated"] != true),
        Some("aborted")
            if j["abortReason"]
                .as_str()
                .is_some_and(|r| r.starts_with("the steady state did not hold before")) =>
        {
            None
        }
        Some("aborted") => Some(false),
        _ => None,
    }
}

/// The service a run is about: the experiment's, else its first check's.
pub fn service_of(j: &Value) -> String {
    j["experiment"]["service"]
        .as_str()
        .or_else(|| j["steadyStates"]["before"][0]["answer"]["service"].as_str())
        .unwrap_or("(none)")
        .to_string()
}

impl History {
    /// Reads the runs kept in `dir` (none when the file does not exist yet). Blocking.
    pub fn open(dir: &Path) -> Result<History, HistoryError> {
        let path = dir.join(FILE);
        let runs = match std::fs::read(&path) {
            Ok(bytes) => {
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| HistoryError {
                    path: path.clone(),
                    reason: format!("{e}; fix or remove the file"),
                })?;
                v["runs"].as_array().cloned().unwrap_or_default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(HistoryError {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        Ok(History {
            path,
            runs: Mutex::new(runs),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Value>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a run's journal durably. Blocking (an fsync): call it off the executor.
    pub fn record(&self, journal: Value) -> Result<(), HistoryError> {
        if journal["run"].as_str().is_none() || journal["experiment"]["title"].as_str().is_none() {
            return Err(HistoryError {
                path: self.path.clone(),
                reason: "a run's journal needs \"run\" and \"experiment\".\"title\" (write it with faultline experiment run --journal)".into(),
            });
        }
        let bytes = {
            let mut runs = self.lock();
            runs.retain(|r| r["run"] != journal["run"]);
            runs.push(journal);
            let excess = runs.len().saturating_sub(MAX_RUNS);
            runs.drain(..excess);
            json!({"version": 1, "runs": *runs}).to_string()
        };
        faultline_wal::durable::replace_file(&self.path, bytes.as_bytes()).map_err(|e| {
            HistoryError {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// Summaries of the newest `limit` runs, newest first.
    pub fn summaries(&self, limit: usize) -> Vec<Value> {
        self.lock()
            .iter()
            .rev()
            .take(limit)
            .map(|j| {
                json!({
                    "run": j["run"], "title": j["experiment"]["title"], "service": service_of(j),
                    "severity": j["experiment"]["severity"], "startedUs": j["startedUs"],
                    "seconds": j["seconds"], "status": j["status"], "deviated": j["deviated"],
                    "abortReason": j["abortReason"], "exitCode": j["exitCode"],
                    "tracesTouched": j["tracesTouched"],
                })
            })
            .collect()
    }

    /// One run's journal.
    pub fn get(&self, run: &str) -> Option<Value> {
        self.lock().iter().find(|j| j["run"] == run).cloned()
    }

    /// Resilience score per service: now (latest run of each experiment) and per UTC day.
    pub fn scores(&self) -> Vec<Value> {
        let runs = self.lock();
        // service -> title -> (started, severity, held) of the latest counted run
        let mut latest: BTreeMap<String, BTreeMap<String, (u64, f64, bool)>> = BTreeMap::new();
        // service -> day -> (held weight, weight, runs)
        let mut daily: BTreeMap<String, BTreeMap<u64, (f64, f64, u64)>> = BTreeMap::new();
        for j in runs.iter() {
            let Some(held) = verdict(j) else { continue };
            let service = service_of(j);
            let started = j["startedUs"].as_u64().unwrap_or(0);
            let severity = j["experiment"]["severity"].as_f64().unwrap_or(1.0);
            let title = j["experiment"]["title"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let slot = latest
                .entry(service.clone())
                .or_default()
                .entry(title)
                .or_insert((0, severity, held));
            if started >= slot.0 {
                *slot = (started, severity, held);
            }
            let day = started / 86_400_000_000 * 86_400;
            let d = daily
                .entry(service)
                .or_default()
                .entry(day)
                .or_insert((0.0, 0.0, 0));
            d.0 += if held { severity } else { 0.0 };
            d.1 += severity;
            d.2 += 1;
        }
        latest
            .into_iter()
            .map(|(service, exps)| {
                let total: f64 = exps.values().map(|e| e.1).sum();
                let held: f64 = exps.values().filter(|e| e.2).map(|e| e.1).sum();
                let days = daily.remove(&service).unwrap_or_default();
                json!({
                    "service": service,
                    "score": if total > 0.0 { held / total } else { 0.0 },
                    "experiments": exps.iter().map(|(t, e)| json!({"title": t, "severity": e.1, "held": e.2, "startedUs": e.0})).collect::<Vec<_>>(),
                    "daily": days.iter().map(|(d, (h, w, n))| json!({"day": d, "score": if *w > 0.0 { h / w } else { 0.0 }, "runs": n})).collect::<Vec<_>>(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, title: &str, severity: u8, day: u64, status: &str, deviated: bool) -> Value {
        json!({"run": id, "experiment": {"title": title, "service": "frontend", "severity": severity},
               "startedUs": day * 86_400_000_000 + 1, "status": status, "deviated": deviated,
               "abortReason": if status == "aborted" { json!("stop condition x fired during y") } else { Value::Null }})
    }

    #[test]
    fn the_score_weighs_the_latest_run_of_each_experiment_by_severity() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let h = History::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        for j in [
            run("a1", "timeout", 3, 1, "completed", true),
            run("a2", "timeout", 3, 2, "completed", false),
            run("b1", "slow", 1, 2, "completed", true),
            run("c1", "down", 2, 2, "aborted", false),
        ] {
            h.record(j).unwrap_or_else(|e| panic!("{e}"));
        }
        let s = &h.scores()[0];
        // timeout held (3), slow broke (1), down aborted by a stop condition (2): 3 / 6.
        assert_eq!(s["score"], 0.5);
        assert_eq!(
            s["daily"][0],
            json!({"day": 86_400, "score": 0.0, "runs": 1})
        );
        assert_eq!(
            s["daily"][1],
            json!({"day": 172_800, "score": 0.5, "runs": 3})
        );
        // Kept across a reopen; a journal without a run id is refused.
        let again = History::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.summaries(10).len(), 4);
        assert_eq!(again.summaries(1)[0]["run"], "c1");
        assert!(again.record(json!({"status": "completed"})).is_err());
    }
}
