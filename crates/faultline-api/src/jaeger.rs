//! Jaeger's v1 JSON API, as Grafana's Jaeger data source and Jaeger UI call it: services,
//! operations, dependencies, trace search (`GET /api/traces`) and trace by id, with Jaeger's envelope (`data`, `total`, `limit`, `offset`,
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
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Value, json};

use faultline_model::span::{AttrValue, Span, SpanKind, StatusCode as SpanStatus, TraceId};
use faultline_store::{Completeness, TraceQuery};

use crate::{ApiError, ApiState};

/// The Jaeger v1 routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/services", get(services))
        .route(
            "/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/api/operations", get(operations))
        .route("/api/dependencies", get(dependencies))
        .route("/api/traces", get(search))
        .route("/api/traces/{id}", get(trace))
}

/// Jaeger's default search window when `start` is absent.
const DEFAULT_LOOKBACK_NS: u64 = 2 * 24 * 3600 * 1_000_000_000;

/// Parses Jaeger's `/api/traces` parameters into a query.
pub fn parse_search(p: &[(String, String)], now_ns: u64) -> Result<TraceQuery, ApiError> {
    use crate::params::{TraceQueryBuilder, duration_bounds, get, go_duration, num, parse_tags};
    let Some(service) = get(p, "service") else {
        return Err(ApiError::bad_parameter(
            "service",
            "parameter service is required (or traceID)",
        ));
    };
    let end_ns = match num(p, "end", "microseconds")? {
        Some(us) => us.saturating_mul(1000),
        None => now_ns,
    };
    let start_ns = match num(p, "start", "microseconds")? {
        Some(us) => us.saturating_mul(1000),
        None => match get(p, "lookback").filter(|l| *l != "custom") {
            Some(l) => end_ns.saturating_sub(go_duration("lookback", l)?),
            None => end_ns.saturating_sub(DEFAULT_LOOKBACK_NS),
        },
    };
    Ok(
        TraceQueryBuilder::new(("start", start_ns), ("end", end_ns))?
            .service(Some(service))
            .operation(get(p, "operation"))
            .tags("tags", parse_tags(p)?)?
            .durations(duration_bounds(p, "minDuration", "maxDuration")?)
            .limit("limit", num(p, "limit", "traces")?)?
            .time_limit(crate::params::timeout(p)?)
            .build(),
    )
}

/// `GET /api/traces?service=&operation=&tags=&tag=&minDuration=&maxDuration=&start=&end=&lookback=&limit=`
/// (or `traceID=` repeated): whole traces, newest first.
async fn search(
    State(st): State<ApiState>,
    axum::extract::Query(p): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ids = p
        .iter()
        .filter(|(k, v)| k == "traceID" && !v.is_empty())
        .map(|(_, v)| parse_trace_id("traceID", v))
        .collect::<Result<Vec<_>, _>>()?;
    let raw = wants_raw(&p);
    if !ids.is_empty() {
        return traces_answer(&st, ids, Completeness::default(), None, raw).await;
    }
    let q = parse_search(&p, crate::params::now_ns())?;
    let range = Some((q.start_ns, q.end_ns));
    let search = crate::gate::Lane::Search;
    let (found, c) = crate::query_in(&st, search, move |store| store.search(&q)).await?;
    let ids = found.iter().map(|s| s.trace_id).collect();
    traces_answer(&st, ids, c, range, raw).await
}

/// Reads whole traces and answers them in Jaeger's envelope, in the given order.
async fn traces_answer(
    st: &ApiState,
    ids: Vec<TraceId>,
    c: Completeness,
    range: Option<(u64, u64)>,
    raw: bool,
) -> Result<Response, ApiError> {
    let (traces, reasons) = crate::query_in(st, crate::gate::Lane::Search, move |store| {
        let mut out = Vec::with_capacity(ids.len());
        let mut reasons = Vec::new();
        let estimates = store.clock_offsets();
        for (id, a) in ids.iter().zip(store.traces(&ids)?) {
            reasons.extend(a.completeness.reasons);
            if !a.spans.is_empty() {
                let mut spans = a.spans;
                let warnings = adjust_skew(&mut spans, &estimates, raw);
                out.push((*id, spans, warnings));
            }
        }
        Ok((out, reasons))
    })
    .await?;
    let mut c = st.with_lag(c, range);
    for r in reasons {
        if !c.reasons.contains(&r) {
            c.reasons.push(r);
        }
    }
    let data: Vec<JaegerTrace<'_>> = traces
        .iter()
        .map(|(id, s, w)| trace_json(id, s).with_warnings(w))
        .collect();
    let n = data.len();
    Ok(envelope(data, n, &c))
}

use faultline_model::hex;

/// Parses a Jaeger trace id given as parameter `name`: 1 to 32 hex digits (shorter ids
/// are left-padded, as Jaeger does for 64-bit ids).
pub fn parse_trace_id(name: &str, s: &str) -> Result<TraceId, ApiError> {
    let bad = || {
        ApiError::bad_parameter(
            name,
            format!("{name}: trace id {s:?} is not 1 to 32 hexadecimal digits"),
        )
    };
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = format!("{s:0>32}");
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&padded[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A Jaeger tag value as it is written: strings, bools, int64, float64, or JSON text for
/// what Jaeger has no type for.
enum TagValue<'a> {
    Str(&'a str),
    Owned(String),
    Binary(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// A typed Jaeger tag (`{"key", "type", "value"}`), serialized without building a tree.
struct Tag<'a> {
    key: &'a str,
    value: TagValue<'a>,
}

impl<'a> Tag<'a> {
    fn new(key: &'a str, v: &'a AttrValue) -> Self {
        let value = match v {
            AttrValue::Str(s) => TagValue::Str(s),
            AttrValue::Bool(b) => TagValue::Bool(*b),
            AttrValue::Int(i) => TagValue::Int(*i),
            AttrValue::Double(d) => TagValue::Double(*d),
            AttrValue::Bytes(b) => TagValue::Binary(hex(b)),
            // Jaeger has no arrays or maps: they travel as JSON text, as Jaeger's own
            // OTLP translator does.
            other => TagValue::Owned(attr_json(other).to_string()),
        };
        Self { key, value }
    }

    fn str(key: &'a str, value: &'a str) -> Self {
        Self {
            key,
            value: TagValue::Str(value),
        }
    }
}

impl Serialize for Tag<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(Some(3))?;
        m.serialize_entry("key", self.key)?;
        match &self.value {
            TagValue::Str(s) => {
                m.serialize_entry("type", "string")?;
                m.serialize_entry("value", s)?;
            }
            TagValue::Owned(s) => {
                m.serialize_entry("type", "string")?;
                m.serialize_entry("value", s)?;
            }
            TagValue::Binary(s) => {
                m.serialize_entry("type", "binary")?;
                m.serialize_entry("value", s)?;
            }
            TagValue::Bool(b) => {
                m.serialize_entry("type", "bool")?;
                m.serialize_entry("value", b)?;
            }
            TagValue::Int(i) => {
                m.serialize_entry("type", "int64")?;
                m.serialize_entry("value", i)?;
            }
            TagValue::Double(d) => {
                m.serialize_entry("type", "float64")?;
                m.serialize_entry("value", d)?;
            }
        }
        m.end()
    }
}

fn attr_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => json!(s.as_str()),
        AttrValue::Bool(b) => json!(b),
        AttrValue::Int(i) => json!(i),
        AttrValue::Double(d) => json!(d),
        AttrValue::Bytes(b) => json!(hex(b)),
        AttrValue::Array(a) => Value::Array(a.iter().map(attr_json).collect()),
        AttrValue::KvList(kv) => Value::Object(
            kv.iter()
                .map(|(k, v)| (k.to_string(), attr_json(v)))
                .collect(),
        ),
        AttrValue::Empty => Value::Null,
    }
}

/// A Jaeger span, serialized from the stored span.
struct JaegerSpan<'a> {
    span: &'a Span,
    process_id: &'a str,
    /// Why the span's times differ from what was stored (clock-skew correction).
    warning: Option<&'a str>,
}

/// Jaeger's `references`: the parent as `CHILD_OF`, links as `FOLLOWS_FROM`.
struct References<'a>(&'a Span);

impl Serialize for References<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let s = self.0;
        let n = usize::from(s.parent_span_id.is_some()) + s.links.len();
        let mut seq = ser.serialize_seq(Some(n))?;
        let one = |kind: &'static str, trace: &TraceId, span: &[u8; 8]| {
            [
                ("refType", kind.to_string()),
                ("traceID", hex(trace)),
                ("spanID", hex(span)),
            ]
        };
        if let Some(p) = &s.parent_span_id {
            seq.serialize_element(&Pairs(one("CHILD_OF", &s.trace_id, p)))?;
        }
        for l in &s.links {
            seq.serialize_element(&Pairs(one("FOLLOWS_FROM", &l.trace_id, &l.span_id)))?;
        }
        seq.end()
    }
}

/// A JSON object of string values in a fixed order.
struct Pairs<const N: usize>([(&'static str, String); N]);

impl<const N: usize> Serialize for Pairs<N> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(Some(N))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The span's attributes, then the tags Jaeger derives from kind, status and scope.
struct SpanTags<'a>(&'a Span);

impl Serialize for SpanTags<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let s = self.0;
        let mut seq = ser.serialize_seq(None)?;
        for (k, v) in &s.attributes {
            seq.serialize_element(&Tag::new(k, v))?;
        }
        if s.kind != SpanKind::Unspecified {
            seq.serialize_element(&Tag::str("span.kind", s.kind.as_str()))?;
        }
        match s.status {
            SpanStatus::Error => {
                seq.serialize_element(&Tag::str("otel.status_code", "ERROR"))?;
                seq.serialize_element(&Tag {
                    key: "error",
                    value: TagValue::Bool(true),
                })?;
                if !s.status_message.is_empty() {
                    seq.serialize_element(&Tag::str("otel.status_description", &s.status_message))?;
                }
            }
            SpanStatus::Ok => seq.serialize_element(&Tag::str("otel.status_code", "OK"))?,
            SpanStatus::Unset => {}
        }
        if !s.origin.scope_name.is_empty() {
            seq.serialize_element(&Tag::str("otel.scope.name", &s.origin.scope_name))?;
        }
        if !s.origin.scope_version.is_empty() {
            seq.serialize_element(&Tag::str("otel.scope.version", &s.origin.scope_version))?;
        }
        seq.end()
    }
}

/// Events as Jaeger logs: the event name as field `event`, then its attributes.
struct Logs<'a>(&'a Span);

impl Serialize for Logs<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        struct Fields<'a>(&'a faultline_model::span::Event);
        impl Serialize for Fields<'_> {
            fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut seq = ser.serialize_seq(Some(1 + self.0.attributes.len()))?;
                seq.serialize_element(&Tag::str("event", &self.0.name))?;
                for (k, v) in &self.0.attributes {
                    seq.serialize_element(&Tag::new(k, v))?;
                }
                seq.end()
            }
        }
        #[derive(Serialize)]
        struct Log<'a> {
            timestamp: u64,
            fields: Fields<'a>,
        }
        ser.collect_seq(self.0.events.iter().map(|e| Log {
            timestamp: e.time_ns / 1000,
            fields: Fields(e),
        }))
    }
}

impl Serialize for JaegerSpan<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let s = self.span;
        let mut m = ser.serialize_map(Some(11))?;
        m.serialize_entry("traceID", &hex(&s.trace_id))?;
        m.serialize_entry("spanID", &hex(&s.span_id))?;
        m.serialize_entry("operationName", &s.name)?;
        m.serialize_entry("references", &References(s))?;
        m.serialize_entry("startTime", &(s.start_ns / 1000))?;
        m.serialize_entry("duration", &(s.duration_ns() / 1000))?;
        m.serialize_entry("tags", &SpanTags(s))?;
        m.serialize_entry("logs", &Logs(s))?;
        m.serialize_entry("processID", self.process_id)?;
        match self.warning {
            Some(w) => m.serialize_entry("warnings", &[w])?,
            None => m.serialize_entry("warnings", &())?,
        }
        m.serialize_entry("flags", &1)?;
        m.end()
    }
}

/// A Jaeger process: the service and its resource attributes other than `service.name`.
struct Process<'a>(&'a faultline_model::span::Origin);

impl Serialize for Process<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        struct Tags<'a>(&'a faultline_model::span::Origin);
        impl Serialize for Tags<'_> {
            fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                ser.collect_seq(
                    self.0
                        .resource
                        .iter()
                        .filter(|(k, _)| k != "service.name")
                        .map(|(k, v)| Tag::new(k, v)),
                )
            }
        }
        let mut m = ser.serialize_map(Some(2))?;
        m.serialize_entry("serviceName", self.0.service.as_str())?;
        m.serialize_entry("tags", &Tags(self.0))?;
        m.end()
    }
}

/// A Jaeger trace object from the spans of one trace; serializes straight to JSON text.
pub struct JaegerTrace<'a> {
    trace_id: &'a TraceId,
    spans: &'a [Span],
    /// Per span, its process's index in `processes`.
    process_of: Vec<usize>,
    /// One span's origin per distinct process (equal processes from different requests
    /// share one id).
    processes: Vec<&'a faultline_model::span::Origin>,
    /// Per span index, a warning (empty: none).
    warnings: &'a [Option<String>],
}

/// A Jaeger trace object from spans of one trace.
pub fn trace_json<'a>(trace_id: &'a TraceId, spans: &'a [Span]) -> JaegerTrace<'a> {
    let mut by_ptr: HashMap<*const faultline_model::span::Origin, usize> = HashMap::new();
    let mut by_content: HashMap<String, usize> = HashMap::new();
    let mut processes = Vec::new();
    let mut process_of = Vec::with_capacity(spans.len());
    for s in spans {
        let key = std::sync::Arc::as_ptr(&s.origin);
        let i = match by_ptr.get(&key) {
            Some(&i) => i,
            None => {
                let content = serde_json::to_string(&Process(&s.origin)).unwrap_or_default();
                let i = *by_content.entry(content).or_insert_with(|| {
                    processes.push(&*s.origin);
                    processes.len() - 1
                });
                by_ptr.insert(key, i);
                i
            }
        };
        process_of.push(i);
    }
    JaegerTrace {
        trace_id,
        spans,
        process_of,
        processes,
        warnings: &[],
    }
}

impl<'a> JaegerTrace<'a> {
    /// The trace with a warning on each span that has one (indexed as the spans).
    #[must_use]
    pub fn with_warnings(mut self, warnings: &'a [Option<String>]) -> Self {
        self.warnings = warnings;
        self
    }
}

/// Corrects clock skew in `spans` (`faultline_store::skew`) unless `raw`, and returns a
/// Jaeger warning per moved span, indexed as the spans (empty when nothing moved).
pub fn adjust_skew(
    spans: &mut [Span],
    estimates: &faultline_store::skew::Estimates,
    raw: bool,
) -> Vec<Option<String>> {
    if raw {
        return Vec::new();
    }
    let moved = faultline_store::skew::correct(spans, estimates);
    if moved.is_empty() {
        return Vec::new();
    }
    let mut out = vec![None; spans.len()];
    for a in moved {
        out[a.index] = Some(format!(
            "clock skew adjusted: moved {}{}; {}",
            if a.shift_ns < 0 { "-" } else { "+" },
            faultline_model::health::human_duration(a.shift_ns.unsigned_abs()),
            a.basis
        ));
    }
    out
}

/// Whether the request asks for stored times (`raw=true` or `raw=1`) instead of
/// clock-skew-corrected ones.
pub fn wants_raw(p: &[(String, String)]) -> bool {
    p.iter()
        .any(|(k, v)| k == "raw" && (v == "true" || v == "1"))
}

impl Serialize for JaegerTrace<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let ids: Vec<String> = (1..=self.processes.len())
            .map(|i| format!("p{i}"))
            .collect();
        struct Spans<'a>(&'a JaegerTrace<'a>, &'a [String]);
        impl Serialize for Spans<'_> {
            fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                ser.collect_seq(self.0.spans.iter().zip(&self.0.process_of).enumerate().map(
                    |(i, (s, &p))| JaegerSpan {
                        span: s,
                        process_id: &self.1[p],
                        warning: self.0.warnings.get(i).and_then(|w| w.as_deref()),
                    },
                ))
            }
        }
        struct Processes<'a>(&'a JaegerTrace<'a>, &'a [String]);
        impl Serialize for Processes<'_> {
            fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                ser.collect_map(
                    self.1
                        .iter()
                        .zip(self.0.processes.iter().map(|o| Process(o))),
                )
            }
        }
        let mut m = ser.serialize_map(Some(4))?;
        m.serialize_entry("traceID", &hex(self.trace_id))?;
        m.serialize_entry("spans", &Spans(self, &ids))?;
        m.serialize_entry("processes", &Processes(self, &ids))?;
        m.serialize_entry("warnings", &())?;
        m.end()
    }
}

/// Jaeger's success envelope, with `partial` (and `X-Faultline-Partial`) when incomplete.
fn envelope(data: impl Serialize, total: usize, completeness: &Completeness) -> Response {
    #[derive(Serialize)]
    struct Partial<'a> {
        complete: bool,
        reasons: &'a [String],
    }
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        data: T,
        total: usize,
        limit: usize,
        offset: usize,
        errors: (),
        #[serde(skip_serializing_if = "Option::is_none")]
        partial: Option<Partial<'a>>,
    }
    let mut headers = HeaderMap::new();
    let partial = (!completeness.is_complete()).then(|| {
        crate::mark_partial(&mut headers, &completeness.reasons);
        Partial {
            complete: false,
            reasons: &completeness.reasons,
        }
    });
    let body = Envelope {
        data,
        total,
        limit: 0,
        offset: 0,
        errors: (),
        partial,
    };
    (headers, Json(body)).into_response()
}

async fn services(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let (list, c) = crate::query_cached(&st, "services".into(), |store| store.services()).await?;
    let n = list.len();
    Ok(envelope(json!(list), n, &st.with_lag(c, None)))
}

async fn operations_of(
    st: &ApiState,
    service: String,
    kind: Option<SpanKind>,
) -> Result<(Vec<(String, SpanKind)>, Completeness), ApiError> {
    let (mut ops, c) = crate::query(st, move |store| store.operations(&service)).await?;
    if let Some(k) = kind {
        ops.retain(|(_, kk)| *kk == k);
    }
    Ok((ops, st.with_lag(c, None)))
}

/// `GET /api/services/{service}/operations`: operation names.
async fn service_operations(
    State(st): State<ApiState>,
    Path(service): Path<String>,
) -> Result<Response, ApiError> {
    let (ops, c) = operations_of(&st, service, None).await?;
    let mut names: Vec<String> = ops.into_iter().map(|(n, _)| n).collect();
    names.dedup();
    let n = names.len();
    Ok(envelope(json!(names), n, &c))
}

/// `GET /api/operations?service=&spanKind=`: operations with their span kinds.
async fn operations(
    State(st): State<ApiState>,
    axum::extract::Query(p): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    use crate::params::get;
    let Some(service) = get(&p, "service") else {
        return Err(ApiError::bad_parameter(
            "service",
            "parameter service is required",
        ));
    };
    let kind = get(&p, "spanKind")
        .map(|k| crate::native::parse_kind("spanKind", k))
        .transpose()?;
    let (ops, c) = operations_of(&st, service.to_string(), kind).await?;
    let data: Vec<Value> = ops
        .iter()
        .map(|(n, k)| json!({"name": n, "spanKind": k.as_str()}))
        .collect();
    let n = data.len();
    Ok(envelope(json!(data), n, &c))
}

/// `GET /api/dependencies?endTs=&lookback=` (milliseconds, as Jaeger): service calls.
async fn dependencies(
    State(st): State<ApiState>,
    axum::extract::Query(p): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    use crate::params::num;
    let now_ms = crate::params::now_ns() / 1_000_000;
    let end_ms = num(&p, "endTs", "milliseconds")?.unwrap_or(now_ms);
    let lookback_ms = num(&p, "lookback", "milliseconds")?.unwrap_or(3_600_000);
    let (start_s, end_s) = (
        end_ms.saturating_sub(lookback_ms) / 1000,
        end_ms.div_ceil(1000),
    );
    let (deps, c) = crate::query(&st, move |store| store.dependencies(start_s, end_s)).await?;
    let data: Vec<Value> = deps
        .iter()
        .map(|d| json!({"parent": d.parent, "child": d.child, "callCount": d.calls}))
        .collect();
    let n = data.len();
    Ok(envelope(json!(data), n, &st.with_lag(c, None)))
}

/// `GET /api/traces/{id}[?raw=true]`: one trace; clock skew corrected unless `raw`.
async fn trace(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    axum::extract::Query(p): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let trace_id = parse_trace_id("trace id", &id)?;
    let raw = wants_raw(&p);
    let lookup = crate::gate::Lane::Lookup;
    let ((mut answer, dropped), estimates) = crate::query_in(&st, lookup, move |store| {
        Ok((store.trace_or_dropped(&trace_id)?, store.clock_offsets()))
    })
    .await?;
    let c = st.with_lag(answer.completeness, None);
    if answer.spans.is_empty() {
        // A trace may be missing because part of the store is: say so here too.
        return Err(crate::trace_missing(dropped, c.reasons));
    }
    let warnings = adjust_skew(&mut answer.spans, &estimates, raw);
    Ok(envelope(
        [trace_json(&trace_id, &answer.spans).with_warnings(&warnings)],
        1,
        &c,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use faultline_model::span::{Event, Link, Origin};

    /// Jaeger's documented JSON model (model/json in jaeger, and jaeger-ui's types):
    /// every object's keys and the JSON type of each value. A key we emit that is not here,
    /// or a wrong type, fails the test.
    fn check_keys(obj: &Value, allowed: &[(&str, &str)], what: &str) {
        let map = obj
            .as_object()
            .unwrap_or_else(|| panic!("{what} is not an object: {obj}"));
        for (k, v) in map {
            let Some((_, ty)) = allowed.iter().find(|(name, _)| name == k) else {
                panic!("{what} has key {k:?}, not in Jaeger's model");
            };
            let ok = match *ty {
                "string" => v.is_string(),
                "u64" => v.is_u64(),
                "array" => v.is_array(),
                "object" => v.is_object(),
                "null|array" => v.is_null() || v.is_array(),
                "any" => true,
                other => panic!("unknown type {other}"),
            };
            assert!(ok, "{what}.{k} should be {ty}: {v}");
        }
        for (name, _) in allowed
            .iter()
            .filter(|(n, _)| !["warnings", "flags"].contains(n))
        {
            assert!(map.contains_key(*name), "{what} lacks {name}: {obj}");
        }
    }

    fn check_tag(t: &Value) {
        check_keys(
            t,
            &[("key", "string"), ("type", "string"), ("value", "any")],
            "tag",
        );
        let ty = t["type"].as_str().unwrap();
        let v = &t["value"];
        let ok = match ty {
            "string" | "binary" => v.is_string(),
            "bool" => v.is_boolean(),
            "int64" => v.is_i64(),
            "float64" => v.is_f64(),
            other => panic!("tag type {other} is not one of Jaeger's"),
        };
        assert!(ok, "tag value does not match its type: {t}");
    }

    #[test]
    fn trace_json_matches_jaegers_documented_shape() {
        let origin = Arc::new(Origin {
            service: "svc".into(),
            resource: vec![
                ("service.name".into(), AttrValue::Str("svc".into())),
                ("host.name".into(), AttrValue::Str("h".into())),
                ("pid".into(), AttrValue::Int(7)),
            ],
            scope_name: "lib".into(),
            scope_version: "1".into(),
        });
        let attrs = vec![
            ("s".into(), AttrValue::Str("x".into())),
            ("b".into(), AttrValue::Bool(true)),
            ("i".into(), AttrValue::Int(-3)),
            ("d".into(), AttrValue::Double(0.25)),
            ("x".into(), AttrValue::Bytes(vec![1, 2])),
            ("a".into(), AttrValue::Array(vec![AttrValue::Int(1)])),
            (
                "k".into(),
                AttrValue::KvList(vec![("n".into(), AttrValue::Bool(false))]),
            ),
        ];
        let root = Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent_span_id: None,
            name: "root".into(),
            kind: SpanKind::Server,
            start_ns: 1_000_000,
            end_ns: 9_000_000,
            status: SpanStatus::Error,
            status_message: "boom".into(),
            attributes: attrs.clone(),
            events: vec![Event {
                time_ns: 2_000_000,
                name: "exception".into(),
                attributes: attrs.clone(),
            }],
            links: vec![Link {
                trace_id: [2; 16],
                span_id: [3; 8],
                attributes: vec![],
            }],
            origin: origin.clone(),
        };
        let child = Span {
            span_id: [4; 8],
            parent_span_id: Some([1; 8]),
            name: "child".into(),
            status: SpanStatus::Ok,
            ..root.clone()
        };
        let t = serde_json::to_value(trace_json(&[1; 16], &[root, child])).unwrap();
        check_keys(
            &t,
            &[
                ("traceID", "string"),
                ("spans", "array"),
                ("processes", "object"),
                ("warnings", "null|array"),
            ],
            "trace",
        );
        for p in t["processes"].as_object().unwrap().values() {
            check_keys(
                p,
                &[("serviceName", "string"), ("tags", "array")],
                "process",
            );
            p["tags"].as_array().unwrap().iter().for_each(check_tag);
        }
        for s in t["spans"].as_array().unwrap() {
            check_keys(
                s,
                &[
                    ("traceID", "string"),
                    ("spanID", "string"),
                    ("operationName", "string"),
                    ("references", "array"),
                    ("startTime", "u64"),
                    ("duration", "u64"),
                    ("tags", "array"),
                    ("logs", "array"),
                    ("processID", "string"),
                    ("warnings", "null|array"),
                    ("flags", "u64"),
                ],
                "span",
            );
            assert!(
                t["processes"]
                    .get(s["processID"].as_str().unwrap())
                    .is_some(),
                "processID resolves"
            );
            assert_eq!(s["traceID"].as_str().unwrap().len(), 32);
            assert_eq!(s["spanID"].as_str().unwrap().len(), 16);
            s["tags"].as_array().unwrap().iter().for_each(check_tag);
            for r in s["references"].as_array().unwrap() {
                check_keys(
                    r,
                    &[
                        ("refType", "string"),
                        ("traceID", "string"),
                        ("spanID", "string"),
                    ],
                    "reference",
                );
                assert!(["CHILD_OF", "FOLLOWS_FROM"].contains(&r["refType"].as_str().unwrap()));
            }
            for l in s["logs"].as_array().unwrap() {
                check_keys(l, &[("timestamp", "u64"), ("fields", "array")], "log");
                l["fields"].as_array().unwrap().iter().for_each(check_tag);
            }
        }
        // Times are microseconds.
        assert_eq!(t["spans"][0]["startTime"], 1000);
        assert_eq!(t["spans"][0]["duration"], 8000);
        // Every tag of the root, in order, with Jaeger's type and value.
        let tags: Vec<String> = t["spans"][0]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| format!("{}:{}={}", g["key"], g["type"], g["value"]))
            .collect();
        let want = [
            r#""s":"string"="x""#,
            r#""b":"bool"=true"#,
            r#""i":"int64"=-3"#,
            r#""d":"float64"=0.25"#,
            r#""x":"binary"="0102""#,
            r#""a":"string"="[1]""#,
            r#""k":"string"="{\"n\":false}""#,
            r#""span.kind":"string"="server""#,
            r#""otel.status_code":"string"="ERROR""#,
            r#""error":"bool"=true"#,
            r#""otel.status_description":"string"="boom""#,
            r#""otel.scope.name":"string"="lib""#,
            r#""otel.scope.version":"string"="1""#,
        ];
        assert_eq!(tags, want);
        // The child is a CHILD_OF the root; both share one process without service.name.
        assert_eq!(t["spans"][1]["references"][0]["spanID"], "0101010101010101");
        assert_eq!(t["spans"][0]["references"][0]["refType"], "FOLLOWS_FROM");
        assert_eq!(t["processes"].as_object().unwrap().len(), 1);
        assert_eq!(
            t["processes"]["p1"]["tags"],
            json!([
                {"key": "host.name", "type": "string", "value": "h"},
                {"key": "pid", "type": "int64", "value": 7}
            ])
        );
        assert_eq!(t["spans"][0]["logs"][0]["fields"][0]["value"], "exception");
    }

    #[test]
    fn parses_trace_ids_like_jaeger() {
        assert_eq!(parse_trace_id("id", "1").unwrap()[15], 1);
        assert_eq!(parse_trace_id("id", &"ab".repeat(16)).unwrap(), [0xab; 16]);
        let e = parse_trace_id("traceID", "xyz").unwrap_err();
        assert!(e.message().contains("hexadecimal") && e.parameter() == Some("traceID"));
        assert!(parse_trace_id("id", &"a".repeat(33)).is_err());
        assert!(parse_trace_id("id", "").is_err());
    }
}
