//! `GET /api/v1/steady-state`: is a service (or one of its operations) in its steady state
//! right now? The check chaos experiments make before, during and after a fault, callable
//! by Chaos Toolkit's own `http` probes (tolerance `200`) and by `faultline experiment`.
//!
//! Parameters: `service` (required), `operation`, the window (`window`, a Go duration
//! ending now, default `1m`; or `start` and `end` in Unix seconds), and the bounds, each
//! optional: `maxErrorRate` (0 to 1), `maxP99` (a Go duration, e.g. `500ms`), `minRate`
//! (requests per second), `minRequests` (default 1: a window without requests proves
//! nothing, so it fails unless `minRequests=0`), `maxTraces` (how many traces are read,
//! default 2000, at most 20000).
//!
//! Computed **from spans**, not rollups, so a window of seconds is exact: the service's
//! requests are its entry spans (SERVER, CONSUMER, or without a parent) that start in the
//! window, read from the traces the search finds (a uniform sample, the store's `sample`
//! order, when there are more than `maxTraces`; then `sampled` is true and the rate comes
//! from the rollups). Answer, 200 when every bound holds and 417 (Expectation Failed)
//! when one does not:
//!
//! ```json
//! {"pass": false, "service": "frontend", "operation": null,
//!  "window": {"start": 1700000000, "end": 1700000060, "seconds": 60},
//!  "measured": {"requests": 118, "errors": 9, "errorRate": 0.076, "p50Ms": 21.0,
//!               "p99Ms": 812.4, "requestsPerSecond": 1.97},
//!  "checks": [{"check": "maxErrorRate", "bound": 0.05, "measured": 0.076, "pass": false}],
//!  "violations": [{"traceId": "4bf9...", "spanId": "00f0...", "operation": "GET /cart",
//!                  "startTimeUs": 1700000012000000, "durationMs": 812.4, "error": true,
//!                  "reasons": ["error", "slower than 500 ms"]}],
//!  "examined": {"traces": 118, "sampled": false}, "complete": true, "partialReasons": []}
//! ```
//!
//! `violations` lists up to 20 of the spans that break a bound (errors when the error rate
//! is over, spans slower than `maxP99` when the p99 is over), newest first, so a failed
//! check names the requests to look at.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use faultline_model::span::{Span, SpanKind};
use faultline_store::{Completeness, SortOrder, SpanStore, StoreError, TraceQuery};

use crate::ApiState;
use crate::error::ApiError;
use crate::params::{get as param, go_duration, now_ns};

const NS: u64 = 1_000_000_000;

/// Most spans named in `violations`.
pub const MAX_VIOLATIONS: usize = 20;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct SteadyQuery {
    pub service: String,
    pub operation: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub max_error_rate: Option<f64>,
    pub max_p99_ns: Option<u64>,
    pub min_rate: Option<f64>,
    pub min_requests: u64,
    pub max_traces: usize,
}

/// A request span that broke a bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub operation: String,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub error: bool,
    pub reasons: Vec<String>,
}

/// The verdict and what it rests on.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub pass: bool,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rate: f64,
    /// (name, bound, measured, pass)
    pub checks: Vec<(&'static str, f64, Option<f64>, bool)>,
    pub violations: Vec<Violation>,
    pub traces: usize,
    pub sampled: bool,
    pub completeness: Completeness,
}

fn is_request(s: &Span, q: &SteadyQuery) -> bool {
    s.service() == q.service
        && q.operation.as_deref().is_none_or(|o| s.name == o)
        && (matches!(s.kind, SpanKind::Server | SpanKind::Consumer) || s.parent_span_id.is_none())
        && (q.start_ns..q.end_ns).contains(&s.start_ns)
}

fn quantile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i] as f64 / 1e6)
}

/// Evaluates `q` over the store (blocking: call it off the executor).
pub fn evaluate(store: &dyn SpanStore, q: &SteadyQuery) -> Result<Verdict, StoreError> {
    let search = TraceQuery {
        service: Some(q.service.clone()),
        operation: q.operation.clone(),
        start_ns: q.start_ns,
        end_ns: q.end_ns,
        sort: SortOrder::Sample,
        limit: q.max_traces,
        time_limit: Some(std::time::Duration::from_secs(10)),
        ..TraceQuery::default()
    };
    let (found, mut completeness) = store.search(&search)?;
    let ids: Vec<[u8; 16]> = found.iter().map(|t| t.trace_id).collect();
    let sampled = found.len() >= q.max_traces;
    let mut requests: Vec<&Span> = Vec::new();
    let answers = store.traces(&ids)?;
    for a in &answers {
        completeness
            .reasons
            .extend(a.completeness.reasons.iter().cloned());
        requests.extend(a.spans.iter().filter(|s| is_request(s, q)));
    }
    completeness.reasons.sort();
    completeness.reasons.dedup();
    let mut durations: Vec<u64> = requests.iter().map(|s| s.duration_ns()).collect();
    durations.sort_unstable();
    let errors = requests.iter().filter(|s| s.is_error()).count() as u64;
    let n = requests.len() as u64;
    let secs = ((q.end_ns - q.start_ns) as f64 / NS as f64).max(1e-3);
    let rate = if sampled {
        let (total, _) = store.red_total(
            &q.service,
            q.operation.as_deref(),
            None,
            q.start_ns / NS,
            q.end_ns.div_ceil(NS),
        )?;
        total.requests as f64 / secs
    } else {
        n as f64 / secs
    };
    let error_rate = (n > 0).then(|| errors as f64 / n as f64);
    let p99 = quantile(&durations, 0.99);
    let mut checks = vec![(
        "minRequests",
        q.min_requests as f64,
        Some(n as f64),
        n >= q.min_requests,
    )];
    if let Some(b) = q.max_error_rate {
        checks.push((
            "maxErrorRate",
            b,
            error_rate,
            error_rate.is_some_and(|r| r <= b),
        ));
    }
    if let Some(b) = q.max_p99_ns {
        let bound = b as f64 / 1e6;
        checks.push(("maxP99Ms", bound, p99, p99.is_some_and(|p| p <= bound)));
    }
    if let Some(b) = q.min_rate {
        checks.push(("minRate", b, Some(rate), rate >= b));
    }
    let error_over = q
        .max_error_rate
        .is_some_and(|b| error_rate.is_some_and(|r| r > b));
    let slow_over = q
        .max_p99_ns
        .filter(|b| p99.is_some_and(|p| p > *b as f64 / 1e6));
    let mut violations: Vec<Violation> = requests
        .iter()
        .filter_map(|s| {
            let mut reasons = Vec::new();
            if error_over && s.is_error() {
                reasons.push("error".to_string());
            }
            if let Some(b) = slow_over
                && s.duration_ns() > b
            {
                reasons.push(format!("slower than {} ms", b as f64 / 1e6));
            }
            (!reasons.is_empty()).then(|| Violation {
                trace_id: s.trace_id,
                span_id: s.span_id,
                operation: s.name.clone(),
                start_ns: s.start_ns,
                duration_ns: s.duration_ns(),
                error: s.is_error(),
                reasons,
            })
        })
        .collect();
    violations.sort_by_key(|v| std::cmp::Reverse(v.start_ns));
    violations.truncate(MAX_VIOLATIONS);
    Ok(Verdict {
        pass: checks.iter().all(|c| c.3),
        requests: n,
        errors,
        p50_ms: quantile(&durations, 0.5),
        p99_ms: p99,
        rate,
        checks,
        violations,
        traces: found.len(),
        sampled,
        completeness,
    })
}

fn number(
    pairs: &[(String, String)],
    name: &str,
    lo: f64,
    hi: f64,
) -> Result<Option<f64>, ApiError> {
    let Some(v) = param(pairs, name) else {
        return Ok(None);
    };
    match v.parse::<f64>() {
        Ok(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
        _ => Err(ApiError::bad_parameter(
            name,
            format!("{name}={v:?} must be a number from {lo} to {hi}"),
        )),
    }
}

/// Reads the query parameters (see the module's documentation).
pub fn parse(pairs: &[(String, String)], now: u64) -> Result<SteadyQuery, ApiError> {
    let service = param(pairs, "service").filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::bad_parameter(
            "service",
            "service is required, for example /api/v1/steady-state?service=cart&maxErrorRate=0.01",
        )
    })?;
    let (start_ns, end_ns) = match (param(pairs, "start"), param(pairs, "end")) {
        (None, None) => {
            let w = param(pairs, "window").map_or(Ok(60 * NS), |v| go_duration("window", v))?;
            if w == 0 || w > 86_400 * NS {
                return Err(ApiError::bad_parameter(
                    "window",
                    "window must be more than 0 and at most 24h",
                ));
            }
            (now.saturating_sub(w), now)
        }
        _ => {
            let secs = |name: &str| -> Result<u64, ApiError> {
                let v = param(pairs, name).unwrap_or_default();
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_parameter(
                        name,
                        format!(
                            "{name}={v:?} must be Unix seconds; give both start and end, or window"
                        ),
                    )
                })
            };
            let (s, e) = (secs("start")?, secs("end")?);
            if s >= e {
                return Err(ApiError::bad_parameter("end", "end must be after start"));
            }
            (s * NS, e * NS)
        }
    };
    let max_traces = number(pairs, "maxTraces", 1.0, 20_000.0)?.map_or(2000, |x| x as usize);
    Ok(SteadyQuery {
        service: service.to_string(),
        operation: param(pairs, "operation").map(str::to_string),
        start_ns,
        end_ns,
        max_error_rate: number(pairs, "maxErrorRate", 0.0, 1.0)?,
        max_p99_ns: param(pairs, "maxP99")
            .map(|v| go_duration("maxP99", v))
            .transpose()?,
        min_rate: number(pairs, "minRate", 0.0, 1e12)?,
        min_requests: number(pairs, "minRequests", 0.0, 1e12)?.map_or(1, |x| x as u64),
        max_traces,
    })
}

/// The answer's JSON.
pub fn to_json(q: &SteadyQuery, v: &Verdict) -> Value {
    let hex = faultline_model::hex;
    json!({
        "pass": v.pass,
        "service": q.service,
        "operation": q.operation,
        "window": {"start": q.start_ns / NS, "end": q.end_ns.div_ceil(NS),
                   "seconds": (q.end_ns - q.start_ns) as f64 / NS as f64},
        "measured": {
            "requests": v.requests, "errors": v.errors,
            "errorRate": (v.requests > 0).then(|| v.errors as f64 / v.requests as f64),
            "p50Ms": v.p50_ms, "p99Ms": v.p99_ms, "requestsPerSecond": v.rate,
        },
        "checks": v.checks.iter().map(|(c, b, m, p)| json!({"check": c, "bound": b, "measured": m, "pass": p})).collect::<Vec<_>>(),
        "violations": v.violations.iter().map(|x| json!({
            "traceId": hex(&x.trace_id), "spanId": hex(&x.span_id), "operation": x.operation,
            "startTimeUs": x.start_ns / 1000, "durationMs": x.duration_ns as f64 / 1e6,
            "error": x.error, "reasons": x.reasons,
        })).collect::<Vec<_>>(),
        "examined": {"traces": v.traces, "sampled": v.sampled},
        "complete": v.completeness.is_complete(),
        "partialReasons": v.completeness.reasons,
    })
}

async fn steady_state(
    State(st): State<ApiState>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let q = parse(&p, now_ns())?;
    let store = st.store.clone();
    let q2 = q.clone();
    let v = tokio::task::spawn_blocking(move || evaluate(store.as_ref(), &q2)).await??;
    let mut headers = axum::http::HeaderMap::new();
    crate::mark_partial(&mut headers, &v.completeness.reasons);
    let status = if v.pass {
        StatusCode::OK
    } else {
        StatusCode::EXPECTATION_FAILED
    };
    Ok((status, headers, axum::Json(to_json(&q, &v))).into_response())
}

pub fn router() -> Router<ApiState> {
    Router::new().route("/api/v1/steady-state", get(steady_state))
}
