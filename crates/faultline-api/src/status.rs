//! `GET /api/v1/status`: the health of each part of faultline, as the stages judge
//! themselves (intake: `wal`, `disk`, `memory`, `lanes`; the pipeline: `indexing`,
//! `backlog`, `sealing`, `dead letters`; the store: `store`), each with a one-line summary,
//! its figures, and the operator action when it is not healthy. The parts come through
//! [`crate::Process::status`]; this module orders nothing and judges nothing, it serializes.
//! Answer:
//!
//! ```json
//! {"state": "degraded",
//!  "components": [{"name": "store", "state": "degraded",
//!                  "summary": "1 block quarantined",
//!                  "action": "inspect DATA_DIR/blocks/quarantine ...",
//!                  "details": {"blocks": 12, "quarantined": ["block ... unreadable ..."]}}]}
//! ```
//!
//! The status code is 200 whatever the state: the answer is about faultline, and
//! `GET /ready` is the probe for load balancers.
//!
//! [`History`] keeps every part's health sampled every [`SAMPLE_EVERY`] (by
//! [`sample_forever`], which the binary runs) for the last [`KEEP`] samples (24 hours), in
//! memory only: `GET /api/v1/status/history?range=1h` answers the runs of each state,
//! `{"from": 1700000000, "to": 1700003600, "everySeconds": 15, "parts": [{"name": "wal",
//! "runs": [{"state": "ok", "from": 1700000000, "to": 1700003600}]}]}` (Unix seconds; a run
//! lasts from its first sample to the next run's first sample, or to the last sample).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub use faultline_model::health::{Component, Health};

use crate::{ApiError, ApiState};

/// Every part.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The parts, in a stable order.
    pub components: Vec<Component>,
}

impl Status {
    /// The worst health of any part.
    pub fn health(&self) -> Health {
        self.components
            .iter()
            .map(|c| c.health)
            .max()
            .unwrap_or(Health::Ok)
    }

    /// The JSON of the module doc.
    pub fn to_json(&self) -> Value {
        json!({
            "state": self.health().as_str(),
            "components": self.components.iter().map(|c| json!({
                "name": c.name, "state": c.health.as_str(), "summary": c.summary,
                "action": c.action, "details": c.details,
            })).collect::<Vec<_>>(),
        })
    }
}

/// How often [`sample_forever`] samples every part's health.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);
/// Samples kept: 24 hours at [`SAMPLE_EVERY`].
pub const KEEP: usize = 24 * 3600 / 15;

/// One sample: when (Unix seconds) and each part's health.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Unix seconds.
    pub at_s: u64,
    /// (part, health), in the status order.
    pub parts: Vec<(&'static str, Health)>,
}

/// A run of one state of one part: from its first sample to the next run's (or the last
/// sample).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The state.
    pub health: Health,
    /// Unix seconds.
    pub from_s: u64,
    /// Unix seconds.
    pub to_s: u64,
}

/// The recent health of every part (see the module doc).
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Records `status` as sampled at `at_s`, forgetting the oldest beyond [`KEEP`].
    pub fn record(&self, at_s: u64, status: &Status) {
        let sample = Sample {
            at_s,
            parts: status
                .components
                .iter()
                .map(|c| (c.name, c.health))
                .collect(),
        };
        // A poisoned lock only means a panic elsewhere mid-push; the samples stay usable.
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(sample);
        while q.len() > KEEP {
            q.pop_front();
        }
    }

    /// Each part's runs of states over samples at or after `from_s`, parts in the order
    /// they first appear.
    pub fn runs(&self, from_s: u64) -> Vec<(&'static str, Vec<Run>)> {
        let q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(&'static str, Vec<Run>)> = Vec::new();
        for s in q.iter().filter(|s| s.at_s >= from_s) {
            for &(name, health) in &s.parts {
                let i = match out.iter().position(|(n, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        out.push((name, Vec::new()));
                        out.len() - 1
                    }
                };
                let runs = &mut out[i].1;
                match runs.last_mut() {
                    Some(r) if r.health == health => r.to_s = s.at_s,
                    Some(r) => {
                        r.to_s = s.at_s;
                        runs.push(Run {
                            health,
                            from_s: s.at_s,
                            to_s: s.at_s,
                        });
                    }
                    None => runs.push(Run {
                        health,
                        from_s: s.at_s,
                        to_s: s.at_s,
                    }),
                }
            }
        }
        out
    }
}

/// The order of the parts on the status page: along the flow of a span.
pub const ORDER: [&str; 10] = [
    "wal",
    "disk",
    "indexing",
    "backlog",
    "sealing",
    "store",
    "memory",
    "lanes",
    "dead letters",
    "sampling policy",
];

/// Sorts a process's parts in [`ORDER`] (unknown names last, in their order).
pub fn sort_parts(parts: &mut [faultline_model::health::Component]) {
    parts.sort_by_key(|c| {
        ORDER
            .iter()
            .position(|n| *n == c.name)
            .unwrap_or(ORDER.len())
    });
}

/// Samples every part's health into `st.history` every [`SAMPLE_EVERY`], forever (the
/// binary spawns it; it ends with the runtime).
pub async fn sample_forever(st: ApiState) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Ok(s) = current(&st).await {
            st.history
                .record(crate::params::now_ns() / 1_000_000_000, &s);
        }
    }
}

/// The status routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/status/history", get(history))
}

/// `GET /api/v1/status/history?range=1h` (Go duration, at most 24h).
async fn history(
    State(st): State<ApiState>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let range =
        crate::params::go_duration("range", crate::params::get(&p, "range").unwrap_or("1h"))?
            / 1_000_000_000;
    if range == 0 || range > 86_400 {
        return Err(ApiError::bad_parameter(
            "range",
            "range must be from 1s to 24h: the history is kept for 24 hours",
        ));
    }
    let to = crate::params::now_ns() / 1_000_000_000;
    let from = to - range;
    let parts: Vec<Value> = st
        .history
        .runs(from)
        .into_iter()
        .map(|(name, runs)| {
            json!({"name": name, "runs": runs.iter().map(|r| json!({
                "state": r.health.as_str(), "from": r.from_s, "to": r.to_s,
            })).collect::<Vec<_>>()})
        })
        .collect();
    Ok(Json(json!({
        "from": from, "to": to, "everySeconds": SAMPLE_EVERY.as_secs(), "parts": parts,
    })))
}

/// Every part's health, judged now (off the executor: the rules read files and `/proc`).
pub async fn current(st: &ApiState) -> Result<Status, ApiError> {
    let p = st.process.clone();
    let components = tokio::task::spawn_blocking(move || p.status()).await?;
    Ok(Status { components })
}

async fn status(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(current(&st).await?.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_runs_of_states_and_forgets_the_oldest() {
        let h = History::default();
        let status = |wal, disk| Status {
            components: vec![
                Component::new("wal", wal, ""),
                Component::new("disk", disk, ""),
            ],
        };
        for (t, wal) in [
            (100, Health::Ok),
            (115, Health::Ok),
            (130, Health::Degraded),
            (145, Health::Ok),
        ] {
            h.record(t, &status(wal, Health::Ok));
        }
        let runs = h.runs(0);
        assert_eq!(runs[0].0, "wal");
        let wal: Vec<(Health, u64, u64)> = runs[0]
            .1
            .iter()
            .map(|r| (r.health, r.from_s, r.to_s))
            .collect();
        assert_eq!(
            wal,
            vec![
                (Health::Ok, 100, 130),
                (Health::Degraded, 130, 145),
                (Health::Ok, 145, 145)
            ]
        );
        assert_eq!(runs[1].1.len(), 1, "disk was ok throughout");
        assert_eq!(h.runs(131)[0].1[0].from_s, 145, "only samples in the range");
        for t in 0..KEEP as u64 {
            h.record(1000 + t, &status(Health::Failed, Health::Ok));
        }
        let runs = h.runs(0);
        assert_eq!(runs[0].1.len(), 1, "the old samples are forgotten");
        assert_eq!(runs[0].1[0].from_s, 1000);
    }

    #[test]
    fn the_worst_part_decides() {
        let part = |name, health| Component::new(name, health, "");
        let mut s = Status::default();
        assert_eq!(s.health(), Health::Ok);
        s.components.push(part("wal", Health::Ok));
        s.components.push(part("store", Health::Degraded));
        assert_eq!(s.to_json()["state"], "degraded");
        s.components.push(part("disk", Health::Failed));
        assert_eq!(s.health(), Health::Failed);
        assert_eq!(s.to_json()["components"][2]["name"], "disk");
    }
}
