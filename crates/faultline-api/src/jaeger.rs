//! Jaeger's v1 JSON API, as Grafana's Jaeger data source calls it: `GET /api/services` and
//! `GET /api/traces/{id}`, with Jaeger's envelope (`data`, `total`, `limit`, `offset`,
//! `errors`) and trace shape (spans with `references`, typed `tags` and `logs`, and
//! `processes` keyed by `processID`).
//!
//! Mapping from OpenTelemetry: the parent becomes a `CHILD_OF` reference and links
//! `FOLLOWS_FROM` references; span kind, status and scope become the tags `span.kind`,
//! `otel.status_code`, `otel.status_description`, `error=true` and `otel.scope.name`/
//! `otel.scope.version`, as Jaeger's own OTLP receiver writes them; events become logs with
//! an `event` field; resource attributes other than `service.name` become process tags.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use faultline_model::span::{AttrValue, Span, SpanKind, StatusCode as SpanStatus, TraceId};
use faultline_store::Completeness;

use crate::ApiState;

/// The Jaeger v1 routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/services", get(services))
        .route(
            "/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/api/operations", get(operations))
        .route("/api/traces/{id}", get(trace))
}

use faultline_model::hex;

/// Parses a Jaeger trace id: 1 to 32 hex digits (shorter ids are left-padded, as Jaeger
/// does for 64-bit ids).
pub fn parse_trace_id(s: &str) -> Result<TraceId, String> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("trace id {s:?} is not 1 to 32 hexadecimal digits"));
    }
    let padded = format!("{s:0>32}");
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&padded[i * 2..i * 2 + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn tag(key: &str, v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => json!({"key": key, "type": "string", "value": s}),
        AttrValue::Bool(b) => json!({"key": key, "type": "bool", "value": b}),
        AttrValue::Int(i) => json!({"key": key, "type": "int64", "value": i}),
        AttrValue::Double(d) => json!({"key": key, "type": "float64", "value": d}),
        AttrValue::Bytes(b) => json!({"key": key, "type": "binary", "value": hex(b)}),
        // Jaeger has no arrays or maps: they travel as JSON text, as Jaeger's own
        // OTLP translator does.
        other => json!({"key": key, "type": "string", "value": attr_json(other).to_string()}),
    }
}

fn attr_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => json!(s),
        AttrValue::Bool(b) => json!(b),
        AttrValue::Int(i) => json!(i),
        AttrValue::Double(d) => json!(d),
        AttrValue::Bytes(b) => json!(hex(b)),
        AttrValue::Array(a) => Value::Array(a.iter().map(attr_json).collect()),
        AttrValue::KvList(kv) => {
            Value::Object(kv.iter().map(|(k, v)| (k.clone(), attr_json(v))).collect())
        }
        AttrValue::Empty => Value::Null,
    }
}

fn span_json(s: &Span, process_id: &str) -> Value {
    let mut tags: Vec<Value> = s.attributes.iter().map(|(k, v)| tag(k, v)).collect();
    if s.kind != SpanKind::Unspecified {
        tags.push(tag("span.kind", &AttrValue::Str(s.kind.as_str().into())));
    }
    match s.status {
        SpanStatus::Error => {
            tags.push(tag("otel.status_code", &AttrValue::Str("ERROR".into())));
            tags.push(tag("error", &AttrValue::Bool(true)));
            if !s.status_message.is_empty() {
                tags.push(tag(
                    "otel.status_description",
                    &AttrValue::Str(s.status_message.clone()),
                ));
            }
        }
        SpanStatus::Ok => tags.push(tag("otel.status_code", &AttrValue::Str("OK".into()))),
        SpanStatus::Unset => {}
    }
    if !s.origin.scope_name.is_empty() {
        tags.push(tag(
            "otel.scope.name",
            &AttrValue::Str(s.origin.scope_name.clone()),
        ));
    }
    if !s.origin.scope_version.is_empty() {
        tags.push(tag(
            "otel.scope.version",
            &AttrValue::Str(s.origin.scope_version.clone()),
        ));
    }
    let mut references = Vec::new();
    if let Some(p) = &s.parent_span_id {
        references
            .push(json!({"refType": "CHILD_OF", "traceID": hex(&s.trace_id), "spanID": hex(p)}));
    }
    for l in &s.links {
        references.push(json!({"refType": "FOLLOWS_FROM", "traceID": hex(&l.trace_id), "spanID": hex(&l.span_id)}));
    }
    let logs: Vec<Value> = s
        .events
        .iter()
        .map(|e| {
            let mut fields = vec![tag("event", &AttrValue::Str(e.name.clone()))];
            fields.extend(e.attributes.iter().map(|(k, v)| tag(k, v)));
            json!({"timestamp": e.time_ns / 1000, "fields": fields})
        })
        .collect();
    json!({
        "traceID": hex(&s.trace_id),
        "spanID": hex(&s.span_id),
        "operationName": s.name,
        "references": references,
        "startTime": s.start_ns / 1000,
        "duration": s.duration_ns() / 1000,
        "tags": tags,
        "logs": logs,
        "processID": process_id,
        "warnings": Value::Null,
        "flags": 1,
    })
}

/// A Jaeger trace object from spans of one trace.
pub fn trace_json(trace_id: &TraceId, spans: &[Span]) -> Value {
    let mut processes = serde_json::Map::new();
    let mut ids: HashMap<*const faultline_model::span::Origin, String> = HashMap::new();
    let mut by_content: HashMap<String, String> = HashMap::new();
    let mut out_spans = Vec::with_capacity(spans.len());
    for s in spans {
        let key = std::sync::Arc::as_ptr(&s.origin);
        let pid = match ids.get(&key) {
            Some(p) => p.clone(),
            None => {
                let tags: Vec<Value> = s
                    .origin
                    .resource
                    .iter()
                    .filter(|(k, _)| k != "service.name")
                    .map(|(k, v)| tag(k, v))
                    .collect();
                let process = json!({"serviceName": s.service(), "tags": tags});
                // Equal processes from different requests share one id.
                let content = process.to_string();
                let pid = match by_content.get(&content) {
                    Some(p) => p.clone(),
                    None => {
                        let p = format!("p{}", processes.len() + 1);
                        processes.insert(p.clone(), process);
                        by_content.insert(content, p.clone());
                        p
                    }
                };
                ids.insert(key, pid.clone());
                pid
            }
        };
        out_spans.push(span_json(s, &pid));
    }
    json!({"traceID": hex(trace_id), "spans": out_spans, "processes": processes, "warnings": Value::Null})
}

fn envelope(
    status: StatusCode,
    data: Value,
    total: usize,
    errors: Value,
    completeness: &Completeness,
) -> Response {
    let mut body = json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": errors});
    let mut headers = HeaderMap::new();
    if !completeness.is_complete() {
        body["partial"] = json!({"complete": false, "reasons": completeness.reasons});
        let joined = completeness.reasons.join("; ");
        // Header values must be visible ASCII; reasons are ours, but be safe.
        let clean: String = joined
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&clean) {
            headers.insert("x-faultline-partial", v);
        }
    }
    (status, headers, Json(body)).into_response()
}

fn error(status: StatusCode, msg: String) -> Response {
    envelope(
        status,
        Value::Null,
        0,
        json!([{"code": status.as_u16(), "msg": msg}]),
        &Completeness::default(),
    )
}

fn with_lag(st: &ApiState, mut c: Completeness) -> Completeness {
    c.reasons.extend((st.lag)());
    c
}

async fn services(State(st): State<ApiState>) -> Response {
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || store.services()).await {
        Ok(Ok((list, c))) => {
            let n = list.len();
            envelope(
                StatusCode::OK,
                json!(list),
                n,
                Value::Null,
                &with_lag(&st, c),
            )
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query task failed: {e}"),
        ),
    }
}

async fn operations_of(
    st: &ApiState,
    service: String,
    kind: Option<SpanKind>,
) -> Result<(Vec<(String, SpanKind)>, Completeness), Response> {
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || store.operations(&service)).await {
        Ok(Ok((mut ops, c))) => {
            if let Some(k) = kind {
                ops.retain(|(_, kk)| *kk == k);
            }
            Ok((ops, with_lag(st, c)))
        }
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query task failed: {e}"),
        )),
    }
}

/// `GET /api/services/{service}/operations`: operation names.
async fn service_operations(State(st): State<ApiState>, Path(service): Path<String>) -> Response {
    match operations_of(&st, service, None).await {
        Ok((ops, c)) => {
            let mut names: Vec<String> = ops.into_iter().map(|(n, _)| n).collect();
            names.dedup();
            let n = names.len();
            envelope(StatusCode::OK, json!(names), n, Value::Null, &c)
        }
        Err(r) => r,
    }
}

/// `GET /api/operations?service=&spanKind=`: operations with their span kinds.
async fn operations(
    State(st): State<ApiState>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some(service) = q.get("service").filter(|s| !s.is_empty()).cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "parameter service is required".into(),
        );
    };
    let kind = match q.get("spanKind").filter(|s| !s.is_empty()) {
        Some(k) => match crate::native::parse_kind(k) {
            Ok(k) => Some(k),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        None => None,
    };
    match operations_of(&st, service, kind).await {
        Ok((ops, c)) => {
            let data: Vec<Value> = ops
                .iter()
                .map(|(n, k)| json!({"name": n, "spanKind": k.as_str()}))
                .collect();
            let n = data.len();
            envelope(StatusCode::OK, json!(data), n, Value::Null, &c)
        }
        Err(r) => r,
    }
}

async fn trace(State(st): State<ApiState>, Path(id): Path<String>) -> Response {
    let trace_id = match parse_trace_id(&id) {
        Ok(t) => t,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let store = st.store.clone();
    // Block reads are file I/O: off the executor.
    match tokio::task::spawn_blocking(move || store.trace(&trace_id)).await {
        Ok(Ok(answer)) if answer.spans.is_empty() => {
            let c = with_lag(&st, answer.completeness);
            let mut resp = error(StatusCode::NOT_FOUND, "trace not found".into());
            if !c.is_complete()
                && let Ok(v) = HeaderValue::from_str(&c.reasons.join("; "))
            {
                resp.headers_mut().insert("x-faultline-partial", v);
            }
            resp
        }
        Ok(Ok(answer)) => {
            let c = with_lag(&st, answer.completeness);
            envelope(
                StatusCode::OK,
                json!([trace_json(&trace_id, &answer.spans)]),
                1,
                Value::Null,
                &c,
            )
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query task failed: {e}"),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_trace_ids_like_jaeger() {
        assert_eq!(parse_trace_id("1").unwrap()[15], 1);
        assert_eq!(parse_trace_id(&"ab".repeat(16)).unwrap(), [0xab; 16]);
        assert!(parse_trace_id("xyz").unwrap_err().contains("hexadecimal"));
        assert!(parse_trace_id(&"a".repeat(33)).is_err());
        assert!(parse_trace_id("").is_err());
    }
}
