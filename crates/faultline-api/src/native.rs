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
//!
//! `GET /api/v1/dependencies?start=&end=` (Unix seconds, default the last hour) answers
//! the calls between services: `{"edges": [{"parent", "child", "calls", "errors",
//! "errorRate", "p50Ms", "p90Ms", "p99Ms", "meanMs"}], "complete", "partialReasons"}`
//! (latency of the callee spans; null for data written before edges had sketches).
//!
//! `GET /api/v1/traces/summaries` lists matching traces without their spans. Parameters:
//! `service`, `operation`, `tag=key:value` (repeated) or `tags` (JSON object),
//! `minDuration`/`maxDuration` (Go durations such as `250ms`; a span of the service within
//! the bounds), `start`/`end` (Unix seconds, fractions allowed; default the last
//! `lookback`, itself default `1h`), `errors=true` (traces with an error span), `sort`
//! (`newest`, `oldest`, `longest`, `shortest`), `limit` (default 20, at most 1000).
//! Answer:
//!
//! ```json
//! {"traces": [{"traceId": "4bf9...", "startTimeUs": 1700000000000000,
//!              "endTimeUs": 1700000000250000, "durationUs": 250000,
//!              "rootService": "frontend", "rootOperation": "GET /cart", "spanCount": 17,
//!              "errorCount": 1, "orphanCount": 0, "services": ["cart", "frontend"]}],
//!  "limit": 20, "sort": "newest", "complete": true, "partialReasons": []}
//! ```

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use faultline_model::span::SpanKind;
use faultline_store::{SortOrder, TraceQuery, TraceSummary};

use crate::ApiState;

/// Most points one answer may hold.
pub const MAX_POINTS: u64 = 10_080;

/// The native routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/red", get(red))
        .route("/api/v1/traces/summaries", get(summaries))
        .route("/api/v1/dependencies", get(dependencies))
}

/// Nanoseconds per second.
const NS: u64 = 1_000_000_000;

/// `GET /api/v1/dependencies?start=&end=` (Unix seconds, default the last hour): calls
/// between services with errors and the callee spans' latency.
async fn dependencies(
    State(st): State<ApiState>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let (end, start) = match (
        crate::params::num(&p, "end", "seconds"),
        crate::params::num(&p, "start", "seconds"),
    ) {
        (Ok(e), Ok(s)) => {
            let end = e.unwrap_or_else(now_s);
            (end, s.unwrap_or(end.saturating_sub(3600)))
        }
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    if start >= end {
        return bad(format!("start={start} must be before end={end}"));
    }
    match crate::query(&st, move |store| store.dependencies(start, end)).await {
        Ok((deps, c)) => {
            let mut reasons = c.reasons;
            reasons.extend((st.lag)(Some((start * NS, end * NS))));
            let edges: Vec<_> = deps
                .iter()
                .map(|d| {
                    let l = d.latency_ms;
                    json!({
                        "parent": d.parent, "child": d.child, "calls": d.calls,
                        "errors": d.errors,
                        "errorRate": if d.calls == 0 { 0.0 } else { d.errors as f64 / d.calls as f64 },
                        "p50Ms": l.map(|l| l[0]), "p90Ms": l.map(|l| l[1]),
                        "p99Ms": l.map(|l| l[2]), "meanMs": l.map(|l| l[3]),
                    })
                })
                .collect();
            answer(json!({"start": start, "end": end, "edges": edges}), reasons)
        }
        Err(msg) => failed(msg),
    }
}

/// Default and largest number of summaries per answer.
pub const SUMMARIES_DEFAULT_LIMIT: usize = 20;
/// See [`SUMMARIES_DEFAULT_LIMIT`].
pub const SUMMARIES_MAX_LIMIT: usize = 1000;

/// Parses a time given as Unix seconds, possibly with a fraction.
fn seconds(p: &[(String, String)], name: &str) -> Result<Option<u64>, String> {
    match crate::params::get(p, name) {
        None => Ok(None),
        Some(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Ok(Some((s * 1e9) as u64)),
            _ => Err(format!(
                "{name}={v:?} is not a time in Unix seconds (for example 1700000000 or 1700000000.25)"
            )),
        },
    }
}

/// Parses `/api/v1/traces/summaries` parameters.
pub fn parse_summaries(p: &[(String, String)], now_ns: u64) -> Result<TraceQuery, String> {
    use crate::params::{get, num, parse_go_duration, parse_tags};
    let end_ns = seconds(p, "end")?.unwrap_or(now_ns);
    let start_ns = match seconds(p, "start")? {
        Some(s) => s,
        None => end_ns.saturating_sub(
            get(p, "lookback")
                .map(|l| parse_go_duration(l).map_err(|e| format!("lookback: {e}")))
                .transpose()?
                .unwrap_or(3_600_000_000_000),
        ),
    };
    if start_ns > end_ns {
        return Err("start is after end".into());
    }
    let (min, max) = crate::params::duration_bounds(p, "minDuration", "maxDuration")?;
    let sort = match get(p, "sort") {
        None => SortOrder::Newest,
        Some(v) => SortOrder::parse(v)
            .ok_or_else(|| format!("sort={v:?} is not one of newest, oldest, longest, shortest"))?,
    };
    let errors_only = match get(p, "errors") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(format!("errors={v:?} must be true or false")),
    };
    let limit = match num(p, "limit", "traces")? {
        None | Some(0) => SUMMARIES_DEFAULT_LIMIT,
        Some(n) if n as usize > SUMMARIES_MAX_LIMIT => {
            return Err(format!(
                "limit={n} is above the maximum of {SUMMARIES_MAX_LIMIT}"
            ));
        }
        Some(n) => n as usize,
    };
    let tags = parse_tags(p)?;
    if tags.len() > faultline_store::search::MAX_TAGS {
        return Err(format!(
            "at most {} tags per search",
            faultline_store::search::MAX_TAGS
        ));
    }
    Ok(TraceQuery {
        service: get(p, "service").map(str::to_string),
        operation: get(p, "operation").map(str::to_string),
        tags,
        min_duration_ns: min,
        max_duration_ns: max,
        start_ns,
        end_ns,
        errors_only,
        sort,
        limit,
        time_limit: Some(crate::params::timeout(p)?),
    })
}

/// A trace summary as JSON (times in Unix microseconds).
pub fn summary_json(s: &TraceSummary) -> serde_json::Value {
    json!({
        "traceId": faultline_model::hex(&s.trace_id),
        "startTimeUs": s.start_ns / 1000,
        "endTimeUs": s.end_ns / 1000,
        "durationUs": s.duration_ns() / 1000,
        "rootService": s.root_service,
        "rootOperation": s.root_name,
        "spanCount": s.span_count,
        "errorCount": s.error_count,
        "orphanCount": s.orphan_count,
        "services": s.services,
    })
}

/// `GET /api/v1/traces/summaries`: what matching traces look like, without their spans.
async fn summaries(State(st): State<ApiState>, Query(p): Query<Vec<(String, String)>>) -> Response {
    let q = match parse_summaries(&p, crate::params::now_ns()) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    let (limit, sort) = (q.limit, q.sort);
    let range = Some((q.start_ns, q.end_ns));
    match crate::query(&st, move |store| store.search(&q)).await {
        Ok((found, c)) => {
            let mut reasons = c.reasons;
            reasons.extend((st.lag)(range));
            let traces: Vec<_> = found.iter().map(summary_json).collect();
            answer(
                json!({"traces": traces, "limit": limit, "sort": format!("{sort:?}").to_lowercase()}),
                reasons,
            )
        }
        Err(msg) => failed(msg),
    }
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg}))).into_response()
}

fn failed(msg: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": msg})),
    )
        .into_response()
}

/// A native answer: `body` with `complete` and `partialReasons` added, and the
/// `X-Faultline-Partial` header when there are reasons.
fn answer(mut body: serde_json::Value, reasons: Vec<String>) -> Response {
    let mut headers = axum::http::HeaderMap::new();
    crate::mark_partial(&mut headers, &reasons);
    body["complete"] = json!(reasons.is_empty());
    body["partialReasons"] = json!(reasons);
    (headers, Json(body)).into_response()
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
    // Keyed by the window's length, not its position: when the store is slow, the last
    // answer for the same kind of window is served, marked stale with its age.
    let key = format!(
        "red\u{0}{svc}\u{0}{op:?}\u{0}{kind:?}\u{0}{}\u{0}{step}",
        end - start
    );
    let result = crate::query_cached(&st, key, move |store| {
        store.red(&svc, op.as_deref(), kind, start, end, step)
    })
    .await;
    let (points, completeness) = match result {
        Ok(a) => a,
        Err(msg) => return failed(msg),
    };
    let mut reasons = completeness.reasons;
    reasons.extend((st.lag)(Some((start * NS, end * NS))));
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
    answer(
        json!({
            "service": service, "operation": operation, "spanKind": kind.map(|k| k.as_str()),
            "start": start, "end": end, "step": step, "points": points,
        }),
        reasons,
    )
}
