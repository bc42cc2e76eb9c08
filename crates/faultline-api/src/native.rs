//! faultline's own API: `GET /api/v1/red` answers rate, errors and latency of a service (or
//! one operation) per step from the RED rollups, at once, whatever the span volume.
//!
//! Parameters: `service` (required), `operation`, `spanKind` (`server`, `client`, ...),
//! `start` and `end` (Unix seconds; default the last hour), `step` (seconds, a multiple
//! of 60, default 60). Answer:
//!
//! ```json
//! {"service": "cart", "operation": null, "spanKind": null, "start": 1700000000,
//!  "end": 1700003600, "step": 60, "complete": true, "partialReasons": [],
//!  "points": [{"start": 1700000000, "count": 1200, "errors": 3, "ratePerSecond": 20.0,
//!              "errorRate": 0.0025, "p50Ms": 12.1, "p90Ms": 40.2, "p99Ms": 95.0,
//!              "meanMs": 18.4}]}
//! ```
//!
//! Latency quantiles come from DDSketches with 1% relative accuracy; counts and the mean
//! are exact. Bad parameters get a 400 that names them.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use faultline_model::span::SpanKind;

use crate::ApiState;

/// Most points one answer may hold.
pub const MAX_POINTS: u64 = 10_080;

/// The native routes.
pub fn router() -> Router<ApiState> {
    Router::new().route("/api/v1/red", get(red))
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg}))).into_response()
}

/// Parses a span kind as Jaeger and OpenTelemetry spell it.
pub fn parse_kind(s: &str) -> Result<SpanKind, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        "internal" => SpanKind::Internal,
        "unspecified" => SpanKind::Unspecified,
        _ => {
            return Err(format!(
                "spanKind {s:?} is not one of server, client, producer, consumer, internal, unspecified"
            ));
        }
    })
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn num(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    match q.get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a whole number of seconds")),
    }
}

async fn red(State(st): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(service) = q.get("service").filter(|s| !s.is_empty()).cloned() else {
        return bad("service is required, for example /api/v1/red?service=cart".into());
    };
    let operation = q.get("operation").filter(|s| !s.is_empty()).cloned();
    let kind = match q.get("spanKind").filter(|s| !s.is_empty()) {
        Some(k) => match parse_kind(k) {
            Ok(k) => Some(k),
            Err(e) => return bad(e),
        },
        None => None,
    };
    let (end, start, step) = match (num(&q, "end"), num(&q, "start"), num(&q, "step")) {
        (Ok(e), Ok(s), Ok(st)) => {
            let end = e.unwrap_or_else(now_s);
            (end, s.unwrap_or(end.saturating_sub(3600)), st.unwrap_or(60))
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
    };
    if step < 60 || step % 60 != 0 {
        return bad(format!(
            "step={step} must be a multiple of 60 seconds (rollups are per minute)"
        ));
    }
    if start >= end {
        return bad(format!("start={start} must be before end={end}"));
    }
    if (end - start) / step > MAX_POINTS {
        return bad(format!(
            "{} points requested; at most {MAX_POINTS}: raise step or narrow start..end",
            (end - start) / step
        ));
    }
    let (svc, op) = (service.clone(), operation.clone());
    let answer = crate::query(&st, move |store| {
        store.red(&svc, op.as_deref(), kind, start, end, step)
    })
    .await;
    let (points, completeness) = match answer {
        Ok(a) => a,
        Err(msg) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": msg})),
            )
                .into_response();
        }
    };
    let mut reasons = completeness.reasons;
    reasons.extend((st.lag)());
    let points: Vec<_> = points
        .iter()
        .map(|p| {
            json!({
                "start": p.start_s, "count": p.count, "errors": p.errors,
                "ratePerSecond": p.count as f64 / step as f64,
                "errorRate": if p.count == 0 { 0.0 } else { p.errors as f64 / p.count as f64 },
                "p50Ms": p.p50_ms, "p90Ms": p.p90_ms, "p99Ms": p.p99_ms, "meanMs": p.mean_ms,
            })
        })
        .collect();
    Json(json!({
        "service": service, "operation": operation, "spanKind": kind.map(|k| k.as_str()),
        "start": start, "end": end, "step": step,
        "complete": reasons.is_empty(), "partialReasons": reasons, "points": points,
    }))
    .into_response()
}
