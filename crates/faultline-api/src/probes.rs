//! `/api/v1/probes`: synthetic probes (`faultline_probe`), made, changed and removed here
//! or in the configuration file, and what they found.
//!
//! - `GET /api/v1/probes`: every probe with its state and last result;
//! - `POST /api/v1/probes` with a definition (JSON, the shape of `faultline_probe::def`):
//!   creates it (201; 409 if the name is taken; 400 naming the field that is wrong);
//! - `GET /api/v1/probes/{name}`: the probe with its last 100 results and its incidents;
//! - `PUT /api/v1/probes/{name}`: replaces it (the body's name must be the path's);
//! - `POST /api/v1/probes/{name}/pause` and `/resume`; `DELETE /api/v1/probes/{name}`.
//!
//! Probes from the configuration file are listed but change only there (409).
//!
//! A probe as JSON:
//!
//! ```json
//! {"name": "checkout", "source": "api", "state": "down", "paused": false,
//!  "definition": {"name": "checkout", "interval_secs": 30, "http": {"url": "..."}},
//!  "checks": 120, "passed": 118,
//!  "uptime": {"24h": {"checks": 120, "passed": 118, "ratio": 0.9833}, "7d": {...}, "30d": {...}},
//!  "last": {"at": 1700000000000, "ok": false, "totalMs": 12.5, "lagMs": 0.4,
//!           "phases": {"resolve": 0.1, "connect": 0.3, "processing": 11.9, "transfer": 0.2},
//!           "status": 503, "error": "HTTP 503, expected 2xx or 3xx",
//!           "traceId": "4bf9...", "trace": "/trace/4bf9...", "spanError": null,
//!           "certNotAfter": 1700250000 (https), "warning": "the certificate expires in ..."},
//!  "phaseLatency": [{"phase": "connect", "checks": 120, "p50Ms": 0.3, "p90Ms": 0.5, "p99Ms": 2.1},
//!                   ..., {"phase": "total", ...}],
//!  "incidents": [{"start": 1700000000000, "end": null, "firstFailure": {...}}]}
//! ```
//!
//! `checks` and `passed` count the results kept (the store's retention); `uptime` is the
//! share of checks that passed over each window (`ratio` null without checks);
//! `phaseLatency` is over the last day's kept results (the last 1,000 checks); `trace`
//! opens the check's trace, which holds the probe's span and, when the
//! service propagates `traceparent`, the service's spans.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use faultline_probe::{CheckResult, ProbeDef, ProbeError, ProbeView, Probes};

use crate::{ApiError, ApiState};

/// Results shown for one probe.
const SHOWN_RESULTS: usize = 100;

/// The probe routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/probes", get(list).post(create))
        .route(
            "/api/v1/probes/{name}",
            get(one).put(replace).delete(remove),
        )
        .route("/api/v1/probes/{name}/pause", post(pause))
        .route("/api/v1/probes/{name}/resume", post(resume))
}

fn probes(st: &ApiState) -> Result<&Probes, ApiError> {
    st.probes
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this faultline runs no probes"))
}

fn error(e: ProbeError) -> ApiError {
    match e {
        ProbeError::Invalid(d) => ApiError::bad_parameter(&d.field, d.to_string()),
        ProbeError::NotFound(_) => ApiError::not_found(e.to_string()),
        ProbeError::Exists(_) | ProbeError::FromConfig(_) | ProbeError::TooMany => {
            ApiError::conflict(e.to_string())
        }
        ProbeError::File { .. } => ApiError::unavailable(e.to_string()),
    }
}

/// A check's result as JSON (see the module doc).
pub fn result_json(r: &CheckResult) -> Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let phases: serde_json::Map<String, Value> = r
        .outcome
        .phases
        .iter()
        .map(|(p, d)| (p.as_str().to_string(), json!(ms(*d))))
        .collect();
    let id = faultline_model::hex(&r.trace_id);
    json!({
        "at": r.at_ms, "ok": r.outcome.ok, "totalMs": ms(r.outcome.total),
        "lagMs": ms(r.lag), "phases": phases, "status": r.outcome.status,
        "error": r.outcome.error, "traceId": id, "trace": format!("/trace/{id}"),
        "spanError": r.span_error, "certNotAfter": r.outcome.cert_not_after,
        "warning": r.outcome.warning,
    })
}

fn now_ms() -> u64 {
    crate::params::now_ns() / 1_000_000
}

/// A probe as JSON, with up to `results` results.
pub fn probe_json(v: &ProbeView, results: usize) -> Value {
    let (checks, passed) = v.checks;
    json!({
        "name": v.def.name, "source": v.source, "state": v.state, "paused": v.def.paused,
        "definition": v.def, "checks": checks, "passed": passed,
        "uptime": v.uptime.iter().map(|u| (u.window.to_string(), json!({
            "checks": u.checks, "passed": u.passed,
            "ratio": (u.checks > 0).then(|| u.passed as f64 / u.checks as f64),
        }))).collect::<serde_json::Map<String, Value>>(),
        "last": v.results.first().map(result_json),
        "results": v.results.iter().take(results).map(result_json).collect::<Vec<_>>(),
        "phaseLatency": v.phase_latency(now_ms().saturating_sub(86_400_000)),
        "incidents": v.incidents.iter().map(|i| json!({
            "start": i.start_ms, "end": i.end_ms, "firstFailure": result_json(&i.first_failure),
        })).collect::<Vec<_>>(),
    })
}

async fn list(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let all: Vec<Value> = probes(&st)?
        .list()
        .iter()
        .map(|v| probe_json(v, 0))
        .collect();
    Ok(Json(json!({ "probes": all })))
}

async fn one(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = probes(&st)?
        .get(&name)
        .ok_or_else(|| error(ProbeError::NotFound(name)))?;
    Ok(Json(probe_json(&v, SHOWN_RESULTS)))
}

/// The JSON body as a definition; serde's message names the field.
fn parse(body: &[u8]) -> Result<ProbeDef, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a probe definition: {e}; see GET /api/v1/probes for the shape"
        ))
    })
}

async fn create(State(st): State<ApiState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let def = parse(&body)?;
    let name = def.name.clone();
    let p = probes(&st)?;
    p.put(def, false).await.map_err(error)?;
    let v = p
        .get(&name)
        .ok_or_else(|| error(ProbeError::NotFound(name)))?;
    Ok((StatusCode::CREATED, Json(probe_json(&v, 0))).into_response())
}

async fn replace(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let def = parse(&body)?;
    if def.name != name {
        return Err(ApiError::bad_parameter(
            "name",
            format!(
                "the body names {:?} but the path {name:?}; to rename, create the new probe and delete the old",
                def.name
            ),
        ));
    }
    let p = probes(&st)?;
    p.put(def, true).await.map_err(error)?;
    let v = p
        .get(&name)
        .ok_or_else(|| error(ProbeError::NotFound(name)))?;
    Ok(Json(probe_json(&v, 0)))
}

async fn set_paused(st: &ApiState, name: String, paused: bool) -> Result<Json<Value>, ApiError> {
    let p = probes(st)?;
    p.set_paused(&name, paused).await.map_err(error)?;
    let v = p
        .get(&name)
        .ok_or_else(|| error(ProbeError::NotFound(name)))?;
    Ok(Json(probe_json(&v, 0)))
}

async fn pause(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&st, name, true).await
}

async fn resume(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&st, name, false).await
}

async fn remove(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    probes(&st)?.delete(&name).await.map_err(error)?;
    Ok(StatusCode::NO_CONTENT)
}
