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
//!  "points": [{"start": 1700000000, "seconds": 60, "requests": 400, "requestErrors": 2,
//!              "storedRequests": 40, "requestsPerSecond": 6.67, "requestErrorRate": 0.005,
//!              "count": 1200, "errors": 3, "storedCount": 120,
//!              "storedErrors": 1, "ratePerSecond": 20.0, "errorRate": 0.0025,
//!              "p50Ms": 12.1, "p90Ms": 40.2, "p99Ms": 95.0, "meanMs": 18.4,
//!              "requestP50Ms": 20.3, "requestP90Ms": 61.0, "requestP99Ms": 130.2}]}
//! ```
//!
//! Requests are the service's entry spans: SERVER and CONSUMER spans, and roots of any
//! kind (a span without a parent); `count`, `errors` and `ratePerSecond` count every span
//! (client and internal ones too). Each rate divides by the seconds the point covers:
//! `seconds`, the step, or for the point of the current minute the seconds elapsed in it.
//! Latency (`p50Ms` ... `meanMs`) is over the spans selected (all of the service's, or
//! `spanKind`'s); request latency (`requestP50Ms` ...) over the operations whose spans are
//! all entry spans (SERVER and CONSUMER operations, operations seen only as roots): the
//! service's latency as its callers see it, null when it has none in the point.
//! `requests`, `count` and `errors` are what the stored spans stand for (each weighted by
//! its adjusted count: `faultline_model::sampling`), so rates and error rates are right
//! when SDKs sample; `storedRequests`, `storedCount` and `storedErrors` are the spans
//! stored (equal when nothing is sampled). Latency quantiles come from DDSketches of the stored spans with 1% relative
//! accuracy; the mean is exact over the stored spans. Bad parameters get a 400 that names them (`{"error": "...", "code": 400,
//! "kind": "bad_parameter", "parameter": "step"}`, see `error.rs`).
//!
//! `GET /api/v1/dependencies?start=&end=` (Unix seconds, default the last hour) answers
//! the calls between services: `{"edges": [{"parent", "child", "calls", "errors",
//! "storedCalls", "errorRate", "p50Ms", "p90Ms", "p99Ms", "meanMs"}], "complete", "partialReasons"}`
//! (latency of the callee spans; null for data written before edges had sketches).
//!
//! `GET /api/v1/traces/summaries` lists matching traces without their spans. Parameters:
//! `service`, `operation`, `tag=key:value` (repeated) or `tags` (JSON object),
//! `minDuration`/`maxDuration` (Go durations such as `250ms`; a span of the service within
//! the bounds), `start`/`end` (Unix seconds, fractions allowed; default the last
//! `lookback`, itself default `1h`), `errors=true` (traces with an error span), `sort`
//! (`newest`, `oldest`, `longest`, `shortest`, or `sample`: a random sample spread over the
//! whole range, the same on every asking), `limit` (default 20, at most 1500, as every
//! search: see `params.rs`).
//! Answer:
//!
//! ```json
//! {"traces": [{"traceId": "4bf9...", "startTimeUs": 1700000000000000,
//!              "endTimeUs": 1700000000250000, "durationUs": 250000,
//!              "rootService": "frontend", "rootOperation": "GET /cart", "spanCount": 17,
//!              "errorCount": 1, "orphanCount": 0, "services": ["cart", "frontend"]}],
//!  "limit": 20, "sort": "newest", "complete": true, "partialReasons": []}
//! ```

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use faultline_model::span::SpanKind;
use faultline_store::{SortOrder, TraceQuery, TraceSummary};

use crate::params::{
    TraceQueryBuilder, duration_bounds, get as param, go_duration, num, parse_tags,
};
use crate::{ApiError, ApiState};

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

type Params = Query<Vec<(String, String)>>;

/// `start` and `end` in whole Unix seconds (default the last hour), `start` before `end`.
fn window(p: &[(String, String)]) -> Result<(u64, u64), ApiError> {
    let end = num(p, "end", "seconds")?.unwrap_or_else(|| crate::params::now_ns() / NS);
    let start = num(p, "start", "seconds")?.unwrap_or(end.saturating_sub(3600));
    if start >= end {
        return Err(ApiError::bad_parameter(
            "start",
            format!("start={start} must be before end={end}"),
        ));
    }
    Ok((start, end))
}

/// `GET /api/v1/dependencies?start=&end=` (Unix seconds, default the last hour): calls
/// between services with errors and the callee spans' latency.
async fn dependencies(State(st): State<ApiState>, Query(p): Params) -> Result<Response, ApiError> {
    let (start, end) = window(&p)?;
    let (deps, c) = crate::query(&st, move |store| store.dependencies(start, end)).await?;
    let c = st.with_lag(c, Some((start * NS, end * NS)));
    let edges: Vec<_> = deps
        .iter()
        .map(|d| {
            let l = d.latency_ms;
            json!({
                "parent": d.parent, "child": d.child, "calls": d.calls,
                "errors": d.errors, "storedCalls": d.stored,
                "errorRate": if d.calls == 0 { 0.0 } else { d.errors as f64 / d.calls as f64 },
                "p50Ms": l.map(|l| l[0]), "p90Ms": l.map(|l| l[1]),
                "p99Ms": l.map(|l| l[2]), "meanMs": l.map(|l| l[3]),
            })
        })
        .collect();
    Ok(answer(
        json!({"start": start, "end": end, "edges": edges}),
        c.reasons,
    ))
}

/// Parses a time given as Unix seconds, possibly with a fraction.
fn seconds(p: &[(String, String)], name: &str) -> Result<Option<u64>, ApiError> {
    match param(p, name) {
        None => Ok(None),
        Some(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Ok(Some((s * 1e9) as u64)),
            _ => Err(ApiError::bad_parameter(
                name,
                format!(
                    "{name}={v:?} is not a time in Unix seconds (for example 1700000000 or 1700000000.25)"
                ),
            )),
        },
    }
}

/// Parses `/api/v1/traces/summaries` parameters.
pub fn parse_summaries(p: &[(String, String)], now_ns: u64) -> Result<TraceQuery, ApiError> {
    let end_ns = seconds(p, "end")?.unwrap_or(now_ns);
    let start_ns = match seconds(p, "start")? {
        Some(s) => s,
        None => end_ns.saturating_sub(match param(p, "lookback") {
            Some(l) => go_duration("lookback", l)?,
            None => 3_600_000_000_000,
        }),
    };
    let sort = match param(p, "sort") {
        None => SortOrder::Newest,
        Some(v) => SortOrder::parse(v).ok_or_else(|| {
            ApiError::bad_parameter(
                "sort",
                format!("sort={v:?} is not one of newest, oldest, longest, shortest, sample"),
            )
        })?,
    };
    let errors_only = match param(p, "errors") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ApiError::bad_parameter(
                "errors",
                format!("errors={v:?} must be true or false"),
            ));
        }
    };
    Ok(
        TraceQueryBuilder::new(("start", start_ns), ("end", end_ns))?
            .service(param(p, "service"))
            .operation(param(p, "operation"))
            .tags("tags", parse_tags(p)?)?
            .durations(duration_bounds(p, "minDuration", "maxDuration")?)
            .errors_only(errors_only)
            .sort(sort)
            .limit("limit", num(p, "limit", "traces")?)?
            .time_limit(crate::params::timeout(p)?)
            .build(),
    )
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
async fn summaries(State(st): State<ApiState>, Query(p): Params) -> Result<Response, ApiError> {
    let q = parse_summaries(&p, crate::params::now_ns())?;
    let (limit, sort) = (q.limit, q.sort);
    let range = Some((q.start_ns, q.end_ns));
    let search = crate::gate::Lane::Search;
    let (found, c) = crate::query_in(&st, search, move |store| store.search(&q)).await?;
    let c = st.with_lag(c, range);
    let traces: Vec<_> = found.iter().map(summary_json).collect();
    Ok(answer(
        json!({"traces": traces, "limit": limit, "sort": sort.as_str()}),
        c.reasons,
    ))
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

/// Parses a span kind as Jaeger and OpenTelemetry spell it; `name` is the parameter.
pub fn parse_kind(name: &str, s: &str) -> Result<SpanKind, ApiError> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        "internal" => SpanKind::Internal,
        "unspecified" => SpanKind::Unspecified,
        _ => {
            return Err(ApiError::bad_parameter(
                name,
                format!(
                    "{name} {s:?} is not one of server, client, producer, consumer, internal, unspecified"
                ),
            ));
        }
    })
}

async fn red(State(st): State<ApiState>, Query(p): Params) -> Result<Response, ApiError> {
    let Some(service) = param(&p, "service").map(str::to_string) else {
        return Err(ApiError::bad_parameter(
            "service",
            "service is required, for example /api/v1/red?service=cart",
        ));
    };
    let operation = param(&p, "operation").map(str::to_string);
    let kind = param(&p, "spanKind")
        .map(|k| parse_kind("spanKind", k))
        .transpose()?;
    let step = num(&p, "step", "seconds")?.unwrap_or(60);
    let (start, end) = window(&p)?;
    if step < 60 || step % 60 != 0 {
        return Err(ApiError::bad_parameter(
            "step",
            format!("step={step} must be a multiple of 60 seconds (rollups are per minute)"),
        ));
    }
    if (end - start) / step > MAX_POINTS {
        return Err(ApiError::bad_parameter(
            "step",
            format!(
                "{} points requested; at most {MAX_POINTS}: raise step or narrow start..end",
                (end - start) / step
            ),
        ));
    }
    let (svc, op) = (service.clone(), operation.clone());
    // Keyed by the window's length, not its position: when the store is slow, the last
    // answer for the same kind of window is served, marked stale with its age.
    let key = format!(
        "red\u{0}{svc}\u{0}{op:?}\u{0}{kind:?}\u{0}{}\u{0}{step}",
        end - start
    );
    let (points, c) = crate::query_cached(&st, key, move |store| {
        store.red(&svc, op.as_deref(), kind, start, end, step)
    })
    .await?;
    let c = st.with_lag(c, Some((start * NS, end * NS)));
    let now_s = crate::params::now_ns() / NS;
    let share = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let points: Vec<_> = points
        .iter()
        .map(|p| {
            // The point of the current minute covers only the seconds elapsed.
            let secs = step.min(now_s.saturating_sub(p.start_s)).max(1);
            json!({
                "start": p.start_s, "seconds": secs,
                "requests": p.requests, "requestErrors": p.request_errors,
                "storedRequests": p.stored_requests,
                "requestsPerSecond": p.requests as f64 / secs as f64,
                "requestErrorRate": share(p.request_errors, p.requests),
                "count": p.count, "errors": p.errors,
                "storedCount": p.stored, "storedErrors": p.stored_errors,
                "ratePerSecond": p.count as f64 / secs as f64,
                "errorRate": share(p.errors, p.count),
                "p50Ms": p.p50_ms, "p90Ms": p.p90_ms, "p99Ms": p.p99_ms, "meanMs": p.mean_ms,
                "requestP50Ms": p.request_ms.map(|r| r[0]),
                "requestP90Ms": p.request_ms.map(|r| r[1]),
                "requestP99Ms": p.request_ms.map(|r| r[2]),
            })
        })
        .collect();
    Ok(answer(
        json!({
            "service": service, "operation": operation, "spanKind": kind.map(|k| k.as_str()),
            "start": start, "end": end, "step": step, "points": points,
        }),
        c.reasons,
    ))
}
