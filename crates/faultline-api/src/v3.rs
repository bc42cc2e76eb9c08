//! Jaeger's api_v3 over HTTP, answering in OTLP JSON as Jaeger's HTTP gateway does:
//!
//! - `GET /api/v3/services` → `{"services": [...]}`;
//! - `GET /api/v3/operations?service=&span_kind=` → `{"operations": [{"name", "spanKind"}]}`;
//! - `GET /api/v3/traces/{trace_id}` → `{"result": {"resourceSpans": [...]}}`;
//! - `GET /api/v3/traces?query.service_name=&query.operation_name=&query.start_time_min=&query.start_time_max=&query.duration_min=&query.duration_max=&query.num_traces=&query.attributes=`
//!   → the spans of every matching trace in one `{"result": {"resourceSpans": [...]}}`.
//!   Times are RFC 3339 and both bounds are required; durations are Go durations;
//!   `query.search_depth` is taken as a synonym of `query.num_traces` (default 20);
//!   `query.attributes` is a JSON object of tags (`{"http.status_code":"500"}`).
//!
//! Errors are `{"error": {"httpCode": 400, "message": "..."}}`. OTLP JSON follows the OTLP
//! specification: hex trace and span ids, 64-bit integers as strings, enums as numbers.
//! Incomplete answers carry the `X-Faultline-Partial` header.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use faultline_model::span::{Span, to_otlp};
use faultline_store::{Completeness, SortOrder, TraceQuery};

use crate::ApiState;
use crate::params::{get as param, json_tags, num, parse_rfc3339};

/// Default number of traces of a search.
pub const DEFAULT_NUM_TRACES: usize = 20;

/// The api_v3 routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(get_trace))
}

fn err(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(json!({"error": {"httpCode": status.as_u16(), "message": message}})),
    )
        .into_response()
}

fn answer(body: Value, c: &Completeness) -> Response {
    let mut headers = HeaderMap::new();
    crate::mark_partial(&mut headers, &c.reasons);
    (StatusCode::OK, headers, Json(body)).into_response()
}

fn with_lag(st: &ApiState, mut c: Completeness, range: Option<(u64, u64)>) -> Completeness {
    c.reasons.extend((st.lag)(range));
    c
}

/// Spans as `{"result": TracesData}` in OTLP JSON.
pub fn traces_data(spans: &[Span]) -> Value {
    let req = to_otlp(spans);
    let resource_spans = serde_json::to_value(&req.resource_spans).unwrap_or(Value::Null);
    json!({"result": {"resourceSpans": resource_spans}})
}

async fn services(State(st): State<ApiState>) -> Response {
    match crate::query_cached(&st, "services".into(), |store| store.services()).await {
        Ok((list, c)) => answer(json!({"services": list}), &with_lag(&st, c, None)),
        Err(msg) => err(StatusCode::INTERNAL_SERVER_ERROR, msg),
    }
}

async fn operations(
    State(st): State<ApiState>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let Some(service) = param(&p, "service").map(str::to_string) else {
        return err(
            StatusCode::BAD_REQUEST,
            "parameter service is required, for example /api/v3/operations?service=cart".into(),
        );
    };
    let kind = match param(&p, "span_kind") {
        Some(k) => match crate::native::parse_kind(k) {
            Ok(k) => Some(k),
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("span_kind: {e}")),
        },
        None => None,
    };
    match crate::query(&st, move |store| store.operations(&service)).await {
        Ok((ops, c)) => {
            let list: Vec<Value> = ops
                .iter()
                .filter(|(_, k)| kind.is_none_or(|want| *k == want))
                .map(|(n, k)| json!({"name": n, "spanKind": k.as_str()}))
                .collect();
            answer(json!({"operations": list}), &with_lag(&st, c, None))
        }
        Err(msg) => err(StatusCode::INTERNAL_SERVER_ERROR, msg),
    }
}

async fn get_trace(State(st): State<ApiState>, Path(id): Path<String>) -> Response {
    let trace_id = match crate::jaeger::parse_trace_id(&id) {
        Ok(t) => t,
        Err(msg) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("malformed trace_id: {msg}"),
            );
        }
    };
    match crate::query(&st, move |store| store.trace(&trace_id)).await {
        Ok(a) if a.spans.is_empty() => {
            let c = with_lag(&st, a.completeness, None);
            let mut resp = err(StatusCode::NOT_FOUND, "trace not found".into());
            crate::mark_partial(resp.headers_mut(), &c.reasons);
            resp
        }
        Ok(a) => answer(traces_data(&a.spans), &with_lag(&st, a.completeness, None)),
        Err(msg) => err(StatusCode::INTERNAL_SERVER_ERROR, msg),
    }
}

/// Parses api_v3's `query.*` parameters.
pub fn parse_find(p: &[(String, String)]) -> Result<TraceQuery, String> {
    let (Some(min), Some(max)) = (
        param(p, "query.start_time_min"),
        param(p, "query.start_time_max"),
    ) else {
        return Err(
            "query.start_time_min and query.start_time_max are required (RFC 3339 times)".into(),
        );
    };
    let start_ns = parse_rfc3339("query.start_time_min", min)?;
    let end_ns = parse_rfc3339("query.start_time_max", max)?;
    if start_ns > end_ns {
        return Err("query.start_time_min is after query.start_time_max".into());
    }
    let (min_duration_ns, max_duration_ns) =
        crate::params::duration_bounds(p, "query.duration_min", "query.duration_max")
            .map_err(|e| format!("malformed parameter {e}"))?;
    let n = match num(p, "query.num_traces", "traces")? {
        Some(n) => Some(n),
        None => num(p, "query.search_depth", "traces")?,
    };
    let limit = match n {
        None | Some(0) => DEFAULT_NUM_TRACES,
        Some(n) if n as usize > crate::jaeger::MAX_LIMIT => {
            return Err(format!(
                "query.num_traces={n} is above the maximum of {}",
                crate::jaeger::MAX_LIMIT
            ));
        }
        Some(n) => n as usize,
    };
    let tags = match param(p, "query.attributes") {
        Some(v) => json_tags("query.attributes", v)?,
        None => Vec::new(),
    };
    if tags.len() > faultline_store::search::MAX_TAGS {
        return Err(format!(
            "at most {} attributes per search",
            faultline_store::search::MAX_TAGS
        ));
    }
    Ok(TraceQuery {
        service: param(p, "query.service_name").map(str::to_string),
        operation: param(p, "query.operation_name").map(str::to_string),
        tags,
        min_duration_ns,
        max_duration_ns,
        start_ns,
        end_ns,
        errors_only: false,
        sort: SortOrder::Newest,
        limit,
        time_limit: Some(crate::params::timeout(p)?),
    })
}

async fn find_traces(
    State(st): State<ApiState>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let q = match parse_find(&p) {
        Ok(q) => q,
        Err(msg) => return err(StatusCode::BAD_REQUEST, msg),
    };
    let range = Some((q.start_ns, q.end_ns));
    let found = crate::query(&st, move |store| {
        let (found, mut c) = store.search(&q)?;
        let mut spans = Vec::new();
        for s in &found {
            let a = store.trace(&s.trace_id)?;
            for r in a.completeness.reasons {
                if !c.reasons.contains(&r) {
                    c.reasons.push(r);
                }
            }
            spans.extend(a.spans);
        }
        Ok((spans, c))
    })
    .await;
    match found {
        Ok((spans, c)) => answer(traces_data(&spans), &with_lag(&st, c, range)),
        Err(msg) => err(StatusCode::INTERNAL_SERVER_ERROR, msg),
    }
}
