//! Jaeger's api_v3 over HTTP, answering in OTLP JSON as Jaeger's HTTP gateway does:
//!
//! - `GET /api/v3/services` → `{"services": [...]}`;
//! - `GET /api/v3/operations?service=&span_kind=` → `{"operations": [{"name", "spanKind"}]}`;
//! - `GET /api/v3/traces/{trace_id}` → `{"result": {"resourceSpans": [...]}}`;
//! - `GET /api/v3/traces?query.service_name=&query.operation_name=&query.start_time_min=&query.start_time_max=&query.duration_min=&query.duration_max=&query.num_traces=&query.attributes=`
//!   → the spans of every matching trace in one `{"result": {"resourceSpans": [...]}}`.
//!   Times are RFC 3339 and both bounds are required; durations are Go durations;
//!   `query.search_depth` is taken as a synonym of `query.num_traces` (default and maximum
//!   as every search: [`crate::params::DEFAULT_LIMIT`], [`crate::params::MAX_LIMIT`]);
//!   `query.attributes` is a JSON object of tags (`{"http.status_code":"500"}`).
//!
//! Errors are grpc-gateway's `{"error": {"grpcCode": 3, "httpCode": 400, "httpStatus":
//! "Bad Request", "message": "..."}}` (see `error.rs`). OTLP JSON follows the OTLP
//! specification: hex trace and span ids, 64-bit integers as strings, enums as numbers.
//! Incomplete answers carry the `X-Faultline-Partial` header.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use faultline_model::span::{Span, to_otlp};
use faultline_store::{Completeness, TraceQuery};

use crate::params::{
    TraceQueryBuilder, duration_bounds, get as param, json_tags, num, parse_rfc3339,
};
use crate::{ApiError, ApiState};

/// The api_v3 routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(get_trace))
}

fn answer(body: Value, c: &Completeness) -> Response {
    let mut headers = HeaderMap::new();
    crate::mark_partial(&mut headers, &c.reasons);
    (headers, Json(body)).into_response()
}

/// Spans as `{"result": TracesData}` in OTLP JSON.
pub fn traces_data(spans: &[Span]) -> Value {
    let req = to_otlp(spans);
    let resource_spans = serde_json::to_value(&req.resource_spans).unwrap_or(Value::Null);
    json!({"result": {"resourceSpans": resource_spans}})
}

async fn services(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let (list, c) = crate::query_cached(&st, "services".into(), |store| store.services()).await?;
    Ok(answer(json!({"services": list}), &st.with_lag(c, None)))
}

async fn operations(
    State(st): State<ApiState>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let Some(service) = param(&p, "service").map(str::to_string) else {
        return Err(ApiError::bad_parameter(
            "service",
            "parameter service is required, for example /api/v3/operations?service=cart",
        ));
    };
    let kind = param(&p, "span_kind")
        .map(|k| crate::native::parse_kind("span_kind", k))
        .transpose()?;
    let (ops, c) = crate::query(&st, move |store| store.operations(&service)).await?;
    let list: Vec<Value> = ops
        .iter()
        .filter(|(_, k)| kind.is_none_or(|want| *k == want))
        .map(|(n, k)| json!({"name": n, "spanKind": k.as_str()}))
        .collect();
    Ok(answer(json!({"operations": list}), &st.with_lag(c, None)))
}

async fn get_trace(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let trace_id = crate::jaeger::parse_trace_id("trace_id", &id)?;
    let lookup = crate::gate::Lane::Lookup;
    let (a, dropped) =
        crate::query_in(&st, lookup, move |store| store.trace_or_dropped(&trace_id)).await?;
    let c = st.with_lag(a.completeness, None);
    if a.spans.is_empty() {
        return Err(crate::trace_missing(dropped, c.reasons));
    }
    Ok(answer(traces_data(&a.spans), &c))
}

/// Parses api_v3's `query.*` parameters.
pub fn parse_find(p: &[(String, String)]) -> Result<TraceQuery, ApiError> {
    let (Some(min), Some(max)) = (
        param(p, "query.start_time_min"),
        param(p, "query.start_time_max"),
    ) else {
        return Err(ApiError::bad_parameter(
            "query.start_time_min",
            "query.start_time_min and query.start_time_max are required (RFC 3339 times)",
        ));
    };
    let start_ns = parse_rfc3339("query.start_time_min", min)?;
    let end_ns = parse_rfc3339("query.start_time_max", max)?;
    let (n, name) = match num(p, "query.num_traces", "traces")? {
        Some(n) => (Some(n), "query.num_traces"),
        None => (
            num(p, "query.search_depth", "traces")?,
            "query.search_depth",
        ),
    };
    let tags = match param(p, "query.attributes") {
        Some(v) => json_tags("query.attributes", v)?,
        None => Vec::new(),
    };
    Ok(TraceQueryBuilder::new(
        ("query.start_time_min", start_ns),
        ("query.start_time_max", end_ns),
    )?
    .service(param(p, "query.service_name"))
    .operation(param(p, "query.operation_name"))
    .tags("query.attributes", tags)?
    .durations(duration_bounds(
        p,
        "query.duration_min",
        "query.duration_max",
    )?)
    .limit(name, n)?
    .time_limit(crate::params::timeout(p)?)
    .build())
}

async fn find_traces(
    State(st): State<ApiState>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let q = parse_find(&p)?;
    let range = Some((q.start_ns, q.end_ns));
    let (spans, c) = crate::query_in(&st, crate::gate::Lane::Search, move |store| {
        let (found, mut c) = store.search(&q)?;
        let ids: Vec<_> = found.iter().map(|s| s.trace_id).collect();
        let mut spans = Vec::new();
        for a in store.traces(&ids)? {
            for r in a.completeness.reasons {
                if !c.reasons.contains(&r) {
                    c.reasons.push(r);
                }
            }
            spans.extend(a.spans);
        }
        Ok((spans, c))
    })
    .await?;
    Ok(answer(traces_data(&spans), &st.with_lag(c, range)))
}
