//! Chaos experiment runs (`faultline_chaos::experiment`): the scheduled runs of this
//! process and those `faultline experiment run` reported, with each service's resilience
//! score.
//!
//! - `GET /api/v1/experiments?limit=N`: the newest N runs (default 100, at most 1000) and
//!   the scores: `{"runs": [{"run", "title", "service", "severity", "startedUs", "seconds",
//!   "status", "deviated", "abortReason", "exitCode", "tracesTouched"}], "scores":
//!   [{"service", "score", "experiments": [{"title", "severity", "held", "startedUs"}],
//!   "daily": [{"day", "score", "runs"}]}]}`;
//! - `GET /api/v1/experiments/runs/{run}`: one run's journal;
//! - `POST /api/v1/experiments/runs`: keeps a journal (`faultline experiment run` sends
//!   its own); 201, or 400 naming what is missing.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use faultline_chaos::experiment::history::History;
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/experiments", get(list))
        .route("/api/v1/experiments/runs", post(record))
        .route("/api/v1/experiments/runs/{run}", get(one))
}

fn history(st: &ApiState) -> Result<Arc<History>, ApiError> {
    st.experiments.clone().ok_or_else(|| {
        ApiError::unavailable("this process keeps no experiment runs (it is not faultline serve)")
    })
}

#[derive(serde::Deserialize)]
struct ListParams {
    limit: Option<usize>,
}

async fn list(
    State(st): State<ApiState>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let h = history(&st)?;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        json!({"runs": h.summaries(limit), "scores": h.scores()}),
    ))
}

async fn one(State(st): State<ApiState>, Path(run): Path<String>) -> Result<Json<Value>, ApiError> {
    history(&st)?
        .get(&run)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no experiment run {run}")))
}

async fn record(State(st): State<ApiState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let h = history(&st)?;
    let journal: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_parameter("body", format!("the body is not a JSON journal: {e}"))
    })?;
    let run = journal["run"].as_str().unwrap_or_default().to_string();
    tokio::task::spawn_blocking(move || h.record(journal))
        .await?
        .map_err(|e| ApiError::bad_parameter("body", e.reason))?;
    Ok((StatusCode::CREATED, Json(json!({"run": run}))).into_response())
}
