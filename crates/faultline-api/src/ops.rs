//! What the API asks of the rest of the process, and the operator routes that ask it.
//!
//! The API reads spans through `SpanStore`; everything else it needs (why answers may be
//! partial, the health of each part, readiness, metrics, dead-letter replay) comes through
//! [`Process`], which the binary implements by wiring intake, the pipeline and the store.
//! The API knows none of them.
//!
//! Routes (native error shape):
//!
//! - `GET /ready`: 200 `ready` once accepting spans; 503 with the reason while starting,
//!   stopping, or after the WAL failed;
//! - `GET /health`: 200 `ok` while the process answers at all;
//! - `GET /metrics`: the Prometheus text exposition (OpenMetrics);
//! - `POST /api/v1/dlq/replay?all=true` or `?seq=N&seq=M`: appends dead letters to the WAL
//!   again and deletes them; answers `{"replayed": [{"seq": 12, "newSeq": 4711}]}`.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use faultline_model::health::Component;
use serde_json::json;

use crate::{ApiError, ApiState};

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetters {
    /// Every one.
    All,
    /// These WAL sequence numbers.
    Seqs(Vec<u64>),
}

/// A dead letter appended to the WAL again: its old and its new sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The record's sequence number when it failed.
    pub seq: u64,
    /// Its sequence number now.
    pub new_seq: u64,
}

/// Why a dead-letter replay stopped.
#[derive(Debug, thiserror::Error)]
#[error("{message} (after replaying {} dead letters)", replayed.len())]
pub struct ReplayError {
    /// What was replayed before it stopped.
    pub replayed: Vec<Replayed>,
    /// What went wrong and what to do.
    pub message: String,
    /// Whether retrying later can help (the WAL is full or failing).
    pub retryable: bool,
}

/// What the API asks of the rest of the process.
pub trait Process: Send + Sync {
    /// Reasons, beyond the store's own, why an answer about `range` (Unix ns, inclusive;
    /// `None`: no time range) may miss acknowledged data.
    fn partial_reasons(&self, range: Option<(u64, u64)>) -> Vec<String>;
    /// Every part's health, in a stable order. Blocking.
    fn status(&self) -> Vec<Component>;
    /// `Err(reason)` while faultline does not accept spans.
    fn ready(&self) -> Result<(), String>;
    /// The Prometheus text exposition. Blocking.
    fn metrics(&self) -> String;
    /// Appends dead letters to the WAL again and deletes them. Blocking.
    fn replay_dead_letters(&self, which: &DeadLetters) -> Result<Vec<Replayed>, ReplayError>;
    /// The sampling policy this process serves, if it serves one.
    fn sampling_policy(&self) -> Option<faultline_sampling::PolicyHandle> {
        None
    }
}

/// A process with nothing beyond the store (tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreOnly;

impl Process for StoreOnly {
    fn partial_reasons(&self, _: Option<(u64, u64)>) -> Vec<String> {
        Vec::new()
    }
    fn status(&self) -> Vec<Component> {
        Vec::new()
    }
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    fn metrics(&self) -> String {
        String::new()
    }
    fn replay_dead_letters(&self, _: &DeadLetters) -> Result<Vec<Replayed>, ReplayError> {
        Ok(Vec::new())
    }
}

/// The operator routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/dlq/replay", post(dlq_replay))
}

async fn ready(State(st): State<ApiState>) -> Result<&'static str, ApiError> {
    match st.process.ready() {
        Ok(()) => Ok("ready\n"),
        // Probes ask every few seconds: an expected answer, not worth a log line each.
        Err(reason) => Err(ApiError::unavailable(format!("not ready: {reason}")).quiet()),
    }
}

async fn health() -> &'static str {
    "ok\n"
}

async fn metrics(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let p = st.process.clone();
    let mut text = tokio::task::spawn_blocking(move || p.metrics()).await?;
    // The probes' metrics under blackbox_exporter's names (no `faultline_` prefix), before
    // the OpenMetrics end marker.
    if let Some(probes) = &st.probes {
        let end = text.rfind("# EOF").unwrap_or(text.len());
        text.insert_str(end, &probes.metrics_text());
    }
    if let Some(c) = st.checks.clone() {
        let checks = tokio::task::spawn_blocking(move || c.metrics_text()).await?;
        let end = text.rfind("# EOF").unwrap_or(text.len());
        text.insert_str(end, &checks);
    }
    let end = text.rfind("# EOF").unwrap_or(text.len());
    text.insert_str(end, &crate::gate::metrics_text());
    if let Some(o) = st.outbox.clone() {
        // It walks the outbox's events under its lock: off the executor.
        let outbox = tokio::task::spawn_blocking(move || o.metrics_text()).await?;
        let end = text.rfind("# EOF").unwrap_or(text.len());
        text.insert_str(end, &outbox);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Parses `all=true` or repeated `seq=N`.
pub fn parse_dead_letters(p: &[(String, String)]) -> Result<DeadLetters, ApiError> {
    let mut seqs = Vec::new();
    let mut all = false;
    for (k, v) in p {
        match k.as_str() {
            "all" => match v.as_str() {
                "true" => all = true,
                "false" => {}
                _ => {
                    return Err(ApiError::bad_parameter(
                        "all",
                        format!("all={v:?} must be true or false"),
                    ));
                }
            },
            "seq" => seqs.push(v.parse::<u64>().map_err(|_| {
                ApiError::bad_parameter(
                    "seq",
                    format!("seq={v:?} is not a WAL sequence number (see `faultline dlq list`)"),
                )
            })?),
            _ => {}
        }
    }
    match (all, seqs.is_empty()) {
        (true, true) => Ok(DeadLetters::All),
        (true, false) => Err(ApiError::bad_request("give all=true or seq=N, not both")),
        (false, false) => Ok(DeadLetters::Seqs(seqs)),
        (false, true) => Err(ApiError::bad_request(
            "say which dead letters: all=true or seq=N (repeated)",
        )),
    }
}

async fn dlq_replay(
    State(st): State<ApiState>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let which = parse_dead_letters(&p)?;
    let proc = st.process.clone();
    let done = tokio::task::spawn_blocking(move || proc.replay_dead_letters(&which)).await?;
    let list = |r: &[Replayed]| {
        r.iter()
            .map(|r| json!({"seq": r.seq, "newSeq": r.new_seq}))
            .collect::<Vec<_>>()
    };
    match done {
        Ok(replayed) => Ok(Json(json!({"replayed": list(&replayed)}))),
        Err(e) if e.retryable => Err(ApiError::unavailable(e.to_string())),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
