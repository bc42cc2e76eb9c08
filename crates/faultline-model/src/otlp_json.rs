//! OTLP/JSON (<https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding>):
//! decoding `ExportTraceServiceRequest` bodies and encoding `ExportTraceServiceResponse`.
//!
//! Rules: lowerCamelCase names, hex trace and span ids, enums as integers, 64-bit integers
//! as decimal strings or numbers, unknown fields ignored. Decoding uses
//! `opentelemetry-proto`'s serde derive, after a pre-pass over the parsed
//! [`serde_json::Value`] that fixes what the derive gets wrong or reports poorly:
//! - ids that are not hex are refused with the field's path (the derive names no field,
//!   and accepts a `0x` prefix);
//! - `null` fields are dropped (proto3 JSON: null means the default);
//! - `arrayValue`/`kvlistValue` without `values` and key-values without `key` get the
//!   empty default (proto3 JSON omits empty fields);
//! - `doubleValue` as a string (`"1.5"`, `"NaN"`, `"Infinity"`, `"-Infinity"`) is accepted;
//! - `bytesValue` in URL-safe or unpadded base64 is accepted;
//! - uint32 fields as strings and enums as integer strings or by name
//!   (`SPAN_KIND_SERVER`, `STATUS_CODE_ERROR`) are accepted;
//! - malformed timestamps, enums and attribute values are refused with the field's path.

use std::fmt;

use serde_json::{Map, Number, Value as Json};

use crate::otlp::common::{AnyValue, KeyValue, any_value::Value};
use crate::otlp::trace::Span;
use crate::{ExportTraceServiceRequest, ExportTraceServiceResponse, ModelError};

const SPEC_HINT: &str = "send an ExportTraceServiceRequest as described at https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding";

/// Attributes as one plain JSON object (`{"http.route": "/cart", "retries": 2}`), for
/// people and tools rather than OTLP: bytes as hex, arrays and key-value lists nested.
pub fn plain_attributes(attrs: &[KeyValue]) -> Json {
    Json::Object(
        attrs
            .iter()
            .map(|kv| (kv.key.clone(), plain_value(kv.value.as_ref())))
            .collect(),
    )
}

/// One attribute value as plain JSON (see [`plain_attributes`]).
pub fn plain_value(v: Option<&AnyValue>) -> Json {
    match v.and_then(|v| v.value.as_ref()) {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => Number::from_f64(*d).map_or(Json::Null, Json::Number),
        Some(Value::BytesValue(b)) => Json::String(crate::hex(b)),
        Some(Value::ArrayValue(a)) => {
            Json::Array(a.values.iter().map(|v| plain_value(Some(v))).collect())
        }
        Some(Value::KvlistValue(kv)) => plain_attributes(&kv.values),
        Some(Value::StringValueStrindex(i)) => serde_json::json!({ "string_table_index": i }),
    }
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`.
pub fn decode(body: &[u8]) -> Result<ExportTraceServiceRequest, ModelError> {
    let mut root: Json = serde_json::from_slice(body).map_err(syntax_error)?;
    let mut fixups = Vec::new();
    normalize_request(&mut root, &mut fixups).map_err(ModelError::OtlpJson)?;
    let mut req: ExportTraceServiceRequest = serde_json::from_value(root)
        .map_err(|e| ModelError::OtlpJson(format!("{e}; {SPEC_HINT}")))?;
    for f in &fixups {
        f.apply(&mut req);
    }
    Ok(req)
}

/// Encodes an `ExportTraceServiceResponse` as OTLP/JSON: `{}` when empty, otherwise
/// `partialSuccess` with `rejectedSpans` as a decimal string (proto3 JSON int64) and
/// `errorMessage`, each omitted when it has its default value.
pub fn encode_response(resp: &ExportTraceServiceResponse) -> Vec<u8> {
    let mut root = Map::new();
    if let Some(p) = &resp.partial_success {
        let mut ps = Map::new();
        if p.rejected_spans != 0 {
            ps.insert(
                "rejectedSpans".into(),
                Json::String(p.rejected_spans.to_string()),
            );
        }
        if !p.error_message.is_empty() {
            ps.insert("errorMessage".into(), Json::String(p.error_message.clone()));
        }
        root.insert("partialSuccess".into(), Json::Object(ps));
    }
    Json::Object(root).to_string().into_bytes()
}

fn syntax_error(e: serde_json::Error) -> ModelError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    ModelError::OtlpJsonSyntax {
        line: e.line(),
        column: e.column(),
        message,
    }
}

// ---- field paths for error messages (built only when an error is reported) ----

#[derive(Clone, Copy)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg,
}

impl<'a> Path<'a> {
    fn root(key: &'static str) -> Self {
        Path {
            parent: None,
            seg: Seg::Key(key),
        }
    }
    fn key(&'a self, key: &'static str) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Key(key),
        }
    }
    fn index(&'a self, i: usize) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Index(i),
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.parent {
            p.fmt(f)?;
        }
        match self.seg {
            Seg::Key(k) if self.parent.is_some() => write!(f, ".{k}"),
            Seg::Key(k) => f.write_str(k),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A short description of a JSON value for error messages.
fn show(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(_) => "a boolean".into(),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) => crate::clip(s),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

// ---- where a non-finite doubleValue must be written after deserialization ----

/// The attribute list an attribute belongs to (indices into the request).
#[derive(Clone, Copy, Debug)]
enum AttrsAt {
    Resource(usize),
    Scope(usize, usize),
    Span(usize, usize, usize),
    Event(usize, usize, usize, usize),
    Link(usize, usize, usize, usize),
}

/// serde_json cannot hold NaN or infinities, so such a `doubleValue` is replaced by 0 in
/// the pre-pass and written back here.
#[derive(Debug)]
struct Fixup {
    at: AttrsAt,
    /// Attribute index, then array/kvlist element indices down to the value.
    indices: Vec<usize>,
    value: f64,
}

impl Fixup {
    fn apply(&self, req: &mut ExportTraceServiceRequest) {
        // A miss can only mean the derive read the JSON differently; nothing to fix then.
        let _ = self.try_apply(req);
    }

    fn try_apply(&self, req: &mut ExportTraceServiceRequest) -> Option<()> {
        fn span(
            req: &mut ExportTraceServiceRequest,
            r: usize,
            s: usize,
            k: usize,
        ) -> Option<&mut Span> {
            req.resource_spans
                .get_mut(r)?
                .scope_spans
                .get_mut(s)?
                .spans
                .get_mut(k)
        }
        let attrs: &mut Vec<KeyValue> = match self.at {
            AttrsAt::Resource(r) => {
                &mut req.resource_spans.get_mut(r)?.resource.as_mut()?.attributes
            }
            AttrsAt::Scope(r, s) => {
                &mut req
                    .resource_spans
                    .get_mut(r)?
                    .scope_spans
                    .get_mut(s)?
                    .scope
                    .as_mut()?
                    .attributes
            }
            AttrsAt::Span(r, s, k) => &mut span(req, r, s, k)?.attributes,
            AttrsAt::Event(r, s, k, e) => &mut span(req, r, s, k)?.events.get_mut(e)?.attributes,
            AttrsAt::Link(r, s, k, l) => &mut span(req, r, s, k)?.links.get_mut(l)?.attributes,
        };
        let (first, rest) = self.indices.split_first()?;
        let mut any: &mut AnyValue = attrs.get_mut(*first)?.value.as_mut()?;
        for &i in rest {
            any = match any.value.as_mut()? {
                Value::ArrayValue(a) => a.values.get_mut(i)?,
                Value::KvlistValue(l) => l.values.get_mut(i)?.value.as_mut()?,
                _ => return None,
            };
        }
        any.value = Some(Value::DoubleValue(self.value));
        Some(())
    }
}

// ---- the pre-pass ----

type Fixups = Vec<Fixup>;

/// The object at `v`, with its `null` members removed (proto3 JSON: null is the default).
fn object<'v>(v: &'v mut Json, path: &Path) -> Result<&'v mut Map<String, Json>, String> {
    match v {
        Json::Object(m) => {
            if m.values().any(Json::is_null) {
                m.retain(|_, v| !v.is_null());
            }
            Ok(m)
        }
        other => Err(format!(
            "{path} is {}, not an object; {SPEC_HINT}",
            show(other)
        )),
    }
}

/// The array member `key` of `obj` (empty when absent).
fn array<'v>(
    obj: &'v mut Map<String, Json>,
    key: &'static str,
    path: &Path,
) -> Result<&'v mut [Json], String> {
    match obj.get_mut(key) {
        None => Ok(&mut []),
        Some(Json::Array(a)) => Ok(a),
        Some(other) => Err(format!(
            "{} is {}, not an array; {SPEC_HINT}",
            path.key(key),
            show(other)
        )),
    }
}

fn hex_id(obj: &Map<String, Json>, key: &'static str, path: &Path) -> Result<(), String> {
    match obj.get(key) {
        None => Ok(()),
        Some(Json::String(s)) if s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(())
        }
        Some(other) => Err(format!(
            "{} {} is not a hex string; send trace ids as 32 and span ids as 16 hex characters (not base64)",
            path.key(key),
            show(other)
        )),
    }
}

fn string_field(obj: &Map<String, Json>, key: &'static str, path: &Path) -> Result<(), String> {
    match obj.get(key) {
        None | Some(Json::String(_)) => Ok(()),
        Some(other) => Err(format!(
            "{} is {}, not a string",
            path.key(key),
            show(other)
        )),
    }
}

/// A uint64 field: a number or a decimal string (left as is; the derive reads both).
fn u64_field(obj: &Map<String, Json>, key: &'static str, path: &Path) -> Result<(), String> {
    let ok = match obj.get(key) {
        None => true,
        Some(Json::Number(n)) => n.is_u64(),
        Some(Json::String(s)) => s.parse::<u64>().is_ok(),
        Some(_) => false,
    };
    if ok {
        return Ok(());
    }
    let shown = obj.get(key).map(show).unwrap_or_default();
    Err(format!(
        "{} {shown} is not an unsigned 64-bit integer; send nanoseconds since the Unix epoch as a decimal string or a number",
        path.key(key)
    ))
}

/// A uint32 field: a number, or a decimal string (rewritten to a number for the derive).
fn u32_field(obj: &mut Map<String, Json>, key: &'static str, path: &Path) -> Result<(), String> {
    let Some(v) = obj.get_mut(key) else {
        return Ok(());
    };
    let parsed = match v {
        Json::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Json::String(s) => s.parse::<u32>().ok(),
        _ => None,
    };
    match parsed {
        Some(n) => {
            *v = Json::Number(n.into());
            Ok(())
        }
        None => Err(format!(
            "{} {} is not an unsigned 32-bit integer",
            path.key(key),
            show(v)
        )),
    }
}

/// An enum field: an integer, an integer string or a value name (rewritten to a number).
fn enum_field(
    obj: &mut Map<String, Json>,
    key: &'static str,
    names: &[(&str, i32)],
    path: &Path,
) -> Result<(), String> {
    let Some(v) = obj.get_mut(key) else {
        return Ok(());
    };
    let parsed = match v {
        Json::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Json::String(s) => s
            .parse::<i32>()
            .ok()
            .or_else(|| names.iter().find(|(n, _)| n == s).map(|(_, i)| *i)),
        _ => None,
    };
    match parsed {
        Some(n) => {
            *v = Json::Number(n.into());
            Ok(())
        }
        None => {
            let valid: Vec<String> = names.iter().map(|(n, i)| format!("{i} ({n})")).collect();
            Err(format!(
                "{} {} is not a valid value; send one of {}",
                path.key(key),
                show(v),
                valid.join(", ")
            ))
        }
    }
}

const SPAN_KINDS: &[(&str, i32)] = &[
    ("SPAN_KIND_UNSPECIFIED", 0),
    ("SPAN_KIND_INTERNAL", 1),
    ("SPAN_KIND_SERVER", 2),
    ("SPAN_KIND_CLIENT", 3),
    ("SPAN_KIND_PRODUCER", 4),
    ("SPAN_KIND_CONSUMER", 5),
];

const STATUS_CODES: &[(&str, i32)] = &[
    ("STATUS_CODE_UNSET", 0),
    ("STATUS_CODE_OK", 1),
    ("STATUS_CODE_ERROR", 2),
];

fn normalize_request(root: &mut Json, fixups: &mut Fixups) -> Result<(), String> {
    let req = match root {
        Json::Object(_) => object(root, &Path::root("request"))?,
        other => {
            return Err(format!(
                "the body is {}, not an object; {SPEC_HINT}",
                show(other)
            ));
        }
    };
    let rs_path = Path::root("resourceSpans");
    for (r, rs) in array(req, "resourceSpans", &Path::root("request"))?
        .iter_mut()
        .enumerate()
    {
        let path = rs_path.index(r);
        let rs = object(rs, &path)?;
        if let Some(res) = rs.get_mut("resource") {
            let p = path.key("resource");
            let res = object(res, &p)?;
            attributes(res, &p, AttrsAt::Resource(r), fixups)?;
            u32_field(res, "droppedAttributesCount", &p)?;
        }
        let ss_path = path.key("scopeSpans");
        for (s, ss) in array(rs, "scopeSpans", &path)?.iter_mut().enumerate() {
            let path = ss_path.index(s);
            let ss = object(ss, &path)?;
            if let Some(scope) = ss.get_mut("scope") {
                let p = path.key("scope");
                let scope = object(scope, &p)?;
                attributes(scope, &p, AttrsAt::Scope(r, s), fixups)?;
                u32_field(scope, "droppedAttributesCount", &p)?;
            }
            let spans_path = path.key("spans");
            for (k, span) in array(ss, "spans", &path)?.iter_mut().enumerate() {
                normalize_span(span, &spans_path.index(k), (r, s, k), fixups)?;
            }
        }
    }
    Ok(())
}

fn normalize_span(
    span: &mut Json,
    path: &Path,
    (r, s, k): (usize, usize, usize),
    fixups: &mut Fixups,
) -> Result<(), String> {
    let span = object(span, path)?;
    hex_id(span, "traceId", path)?;
    hex_id(span, "spanId", path)?;
    hex_id(span, "parentSpanId", path)?;
    string_field(span, "name", path)?;
    string_field(span, "traceState", path)?;
    enum_field(span, "kind", SPAN_KINDS, path)?;
    u64_field(span, "startTimeUnixNano", path)?;
    u64_field(span, "endTimeUnixNano", path)?;
    for key in [
        "flags",
        "droppedAttributesCount",
        "droppedEventsCount",
        "droppedLinksCount",
    ] {
        u32_field(span, key, path)?;
    }
    attributes(span, path, AttrsAt::Span(r, s, k), fixups)?;
    let events_path = path.key("events");
    for (e, ev) in array(span, "events", path)?.iter_mut().enumerate() {
        let path = events_path.index(e);
        let ev = object(ev, &path)?;
        u64_field(ev, "timeUnixNano", &path)?;
        string_field(ev, "name", &path)?;
        u32_field(ev, "droppedAttributesCount", &path)?;
        attributes(ev, &path, AttrsAt::Event(r, s, k, e), fixups)?;
    }
    let links_path = path.key("links");
    for (l, link) in array(span, "links", path)?.iter_mut().enumerate() {
        let path = links_path.index(l);
        let link = object(link, &path)?;
        hex_id(link, "traceId", &path)?;
        hex_id(link, "spanId", &path)?;
        string_field(link, "traceState", &path)?;
        u32_field(link, "droppedAttributesCount", &path)?;
        u32_field(link, "flags", &path)?;
        attributes(link, &path, AttrsAt::Link(r, s, k, l), fixups)?;
    }
    if let Some(status) = span.get_mut("status") {
        let p = path.key("status");
        let status = object(status, &p)?;
        string_field(status, "message", &p)?;
        enum_field(status, "code", STATUS_CODES, &p)?;
    }
    Ok(())
}

/// The `attributes` member of `owner`.
fn attributes(
    owner: &mut Map<String, Json>,
    path: &Path,
    at: AttrsAt,
    fixups: &mut Fixups,
) -> Result<(), String> {
    let p = path.key("attributes");
    let mut indices = Vec::new();
    for (i, kv) in array(owner, "attributes", path)?.iter_mut().enumerate() {
        indices.push(i);
        key_value(kv, &p.index(i), at, &mut indices, fixups)?;
        indices.pop();
    }
    Ok(())
}

fn key_value(
    kv: &mut Json,
    path: &Path,
    at: AttrsAt,
    indices: &mut Vec<usize>,
    fixups: &mut Fixups,
) -> Result<(), String> {
    let kv = object(kv, path)?;
    match kv.get("key") {
        None => {
            kv.insert("key".into(), Json::String(String::new()));
        }
        Some(Json::String(_)) => {}
        Some(other) => {
            return Err(format!(
                "{} is {}, not a string",
                path.key("key"),
                show(other)
            ));
        }
    }
    if let Some(v) = kv.get_mut("value") {
        any_value(v, &path.key("value"), at, indices, fixups)?;
    }
    Ok(())
}

fn any_value(
    v: &mut Json,
    path: &Path,
    at: AttrsAt,
    indices: &mut Vec<usize>,
    fixups: &mut Fixups,
) -> Result<(), String> {
    let obj = object(v, path)?;
    if let Some(a) = obj.get_mut("arrayValue") {
        let p = path.key("arrayValue");
        let a = object(a, &p)?;
        let values_path = p.key("values");
        let values = a.entry("values").or_insert_with(|| Json::Array(Vec::new()));
        let Json::Array(items) = values else {
            return Err(format!("{values_path} is {}, not an array", show(values)));
        };
        for (i, item) in items.iter_mut().enumerate() {
            indices.push(i);
            any_value(item, &values_path.index(i), at, indices, fixups)?;
            indices.pop();
        }
    }
    if let Some(l) = obj.get_mut("kvlistValue") {
        let p = path.key("kvlistValue");
        let l = object(l, &p)?;
        let values_path = p.key("values");
        let values = l.entry("values").or_insert_with(|| Json::Array(Vec::new()));
        let Json::Array(items) = values else {
            return Err(format!("{values_path} is {}, not an array", show(values)));
        };
        for (i, item) in items.iter_mut().enumerate() {
            indices.push(i);
            key_value(item, &values_path.index(i), at, indices, fixups)?;
            indices.pop();
        }
    }
    if let Some(d) = obj.get_mut("doubleValue") {
        let p = path.key("doubleValue");
        match d {
            Json::Number(_) => {}
            Json::String(s) => {
                let parsed: Option<f64> = match s.as_str() {
                    "NaN" => Some(f64::NAN),
                    "Infinity" => Some(f64::INFINITY),
                    "-Infinity" => Some(f64::NEG_INFINITY),
                    other => other.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
                };
                let Some(f) = parsed else {
                    return Err(format!(
                        "{p} {} is not a number; send a JSON number, or \"NaN\", \"Infinity\" or \"-Infinity\"",
                        show(d)
                    ));
                };
                match Number::from_f64(f) {
                    Some(n) => *d = Json::Number(n),
                    None => {
                        *d = Json::Number(0.into());
                        fixups.push(Fixup {
                            at,
                            indices: indices.clone(),
                            value: f,
                        });
                    }
                }
            }
            other => return Err(format!("{p} is {}, not a number", show(other))),
        }
    }
    if let Some(i) = obj.get("intValue") {
        let ok = match i {
            Json::Number(n) => n.is_i64(),
            Json::String(s) => s.parse::<i64>().is_ok(),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "{} {} is not a signed 64-bit integer; send a decimal string or a number",
                path.key("intValue"),
                show(i)
            ));
        }
    }
    if let Some(b) = obj.get_mut("bytesValue") {
        let p = path.key("bytesValue");
        let Json::String(s) = b else {
            return Err(format!("{p} is {}, not a base64 string", show(b)));
        };
        if s.contains(['-', '_']) {
            *s = s.replace('-', "+").replace('_', "/");
        }
        if !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
        {
            return Err(format!("{p} {} is not base64", show(b)));
        }
        while s.len() % 4 != 0 {
            s.push('=');
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ExportTracePartialSuccess;

    /// The OTLP spec's example trace, extended with every attribute type and the
    /// alternative encodings the spec allows.
    const EXAMPLE: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
          "scope": {"name": "my.library", "version": "1.0.0",
                    "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
          "spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b173",
            "name": "I'm a server span",
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": 1544712661000000000,
            "kind": 2,
            "unknownField": {"ignored": true},
            "attributes": [
              {"key": "my.span.attr", "value": {"stringValue": "some value"}},
              {"key": "as.string", "value": {"intValue": "42"}},
              {"key": "as.number", "value": {"intValue": 42}},
              {"key": "flag", "value": {"boolValue": true}},
              {"key": "ratio", "value": {"doubleValue": 0.5}},
              {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}]}}},
              {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}},
              {"key": "raw", "value": {"bytesValue": "AQID"}}
            ],
            "events": [{"timeUnixNano": "1544712660500000000", "name": "retry", "attributes": [{"key": "attempt", "value": {"intValue": "2"}}]}],
            "links": [{"traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175",
                       "attributes": [{"key": "why", "value": {"stringValue": "batch"}}]}],
            "status": {"code": 2, "message": "boom"}
          }, {
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b173",
            "parentSpanId": "",
            "name": "root"
          }]
        }]
      }]
    }"#;

    fn wrap(span: &str) -> String {
        format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span}]}}]}}]}}"#)
    }

    fn first_span(req: &ExportTraceServiceRequest) -> &Span {
        &req.resource_spans[0].scope_spans[0].spans[0]
    }

    fn attr(span: &Span, k: &str) -> Value {
        span.attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
            .unwrap()
    }

    #[test]
    fn decodes_the_spec_example() {
        let req = decode(EXAMPLE.as_bytes()).unwrap();
        let span = first_span(&req);
        assert_eq!(
            span.trace_id,
            vec![
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c
            ]
        );
        assert_eq!(
            span.span_id,
            vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
        );
        assert_eq!(
            span.parent_span_id,
            vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x73]
        );
        assert_eq!(span.name, "I'm a server span");
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(
            attr(span, "my.span.attr"),
            Value::StringValue("some value".into())
        );
        assert_eq!(attr(span, "as.string"), Value::IntValue(42));
        assert_eq!(attr(span, "as.number"), Value::IntValue(42));
        assert_eq!(attr(span, "flag"), Value::BoolValue(true));
        assert_eq!(attr(span, "ratio"), Value::DoubleValue(0.5));
        assert_eq!(attr(span, "raw"), Value::BytesValue(vec![1, 2, 3]));
        let Value::ArrayValue(list) = attr(span, "list") else {
            panic!("list is not an array");
        };
        assert_eq!(list.values.len(), 2);
        assert_eq!(list.values[1].value, Some(Value::IntValue(1)));
        let Value::KvlistValue(map) = attr(span, "map") else {
            panic!("map is not a kvlist");
        };
        assert_eq!(map.values[0].key, "k");
        assert_eq!(span.events[0].name, "retry");
        assert_eq!(span.events[0].time_unix_nano, 1_544_712_660_500_000_000);
        assert_eq!(span.events[0].attributes[0].key, "attempt");
        assert_eq!(span.links[0].trace_id.len(), 16);
        assert_eq!(span.links[0].span_id.len(), 8);
        assert_eq!(span.links[0].attributes[0].key, "why");
        let status = span.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "boom"));
        let scope = req.resource_spans[0].scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("my.library", "1.0.0")
        );
        let root = &req.resource_spans[0].scope_spans[0].spans[1];
        assert!(root.parent_span_id.is_empty());
        assert_eq!(root.start_time_unix_nano, 0);
        assert_eq!(crate::service_names(&req), vec!["my.service".to_string()]);
        assert_eq!(crate::span_count(&req), 2);
    }

    #[test]
    fn accepts_proto3_json_alternatives() {
        let body = wrap(
            r#"{"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "eee19b7ec3c1b174",
                "name": null, "events": null, "kind": "SPAN_KIND_CLIENT", "flags": "1",
                "droppedAttributesCount": "3", "status": {"code": "STATUS_CODE_OK"},
                "attributes": [
                  {"key": "empty.array", "value": {"arrayValue": {}}},
                  {"key": "empty.map", "value": {"kvlistValue": {}}},
                  {"value": {"stringValue": "no key"}},
                  {"key": "d.str", "value": {"doubleValue": "1.5"}},
                  {"key": "d.int", "value": {"doubleValue": 3}},
                  {"key": "d.nan", "value": {"doubleValue": "NaN"}},
                  {"key": "nested.inf", "value": {"arrayValue": {"values": [
                      {"stringValue": "x"},
                      {"kvlistValue": {"values": [{"key": "neg", "value": {"doubleValue": "-Infinity"}}]}}]}}},
                  {"key": "b.unpadded", "value": {"bytesValue": "AQI"}},
                  {"key": "b.urlsafe", "value": {"bytesValue": "-_8"}},
                  {"key": "unknown.member", "value": {"stringValue": "x", "futureValue": 1}},
                  {"key": "null.value", "value": null}
                ]}"#,
        );
        let req = decode(body.as_bytes()).unwrap();
        let span = first_span(&req);
        assert_eq!(span.trace_id[0], 0x5b);
        assert_eq!(span.name, "");
        assert_eq!(span.kind, 3);
        assert_eq!(span.flags, 1);
        assert_eq!(span.dropped_attributes_count, 3);
        assert_eq!(span.status.as_ref().unwrap().code, 1);
        assert!(matches!(attr(span, "empty.array"), Value::ArrayValue(a) if a.values.is_empty()));
        assert!(matches!(attr(span, "empty.map"), Value::KvlistValue(m) if m.values.is_empty()));
        assert_eq!(attr(span, ""), Value::StringValue("no key".into()));
        assert_eq!(attr(span, "d.str"), Value::DoubleValue(1.5));
        assert_eq!(attr(span, "d.int"), Value::DoubleValue(3.0));
        assert!(matches!(attr(span, "d.nan"), Value::DoubleValue(f) if f.is_nan()));
        let Value::ArrayValue(a) = attr(span, "nested.inf") else {
            panic!("nested.inf is not an array");
        };
        let Some(Value::KvlistValue(m)) = &a.values[1].value else {
            panic!("nested.inf[1] is not a kvlist");
        };
        assert_eq!(
            m.values[0].value.as_ref().unwrap().value,
            Some(Value::DoubleValue(f64::NEG_INFINITY))
        );
        assert_eq!(attr(span, "b.unpadded"), Value::BytesValue(vec![1, 2]));
        assert_eq!(attr(span, "b.urlsafe"), Value::BytesValue(vec![0xfb, 0xff]));
        assert_eq!(attr(span, "unknown.member"), Value::StringValue("x".into()));
        let null_value = span
            .attributes
            .iter()
            .find(|kv| kv.key == "null.value")
            .unwrap();
        assert!(null_value.value.is_none());
    }

    #[test]
    fn non_finite_doubles_land_in_every_attribute_list() {
        let inf = r#"[{"key": "x", "value": {"doubleValue": "Infinity"}}]"#;
        let body = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":{inf}}},"scopeSpans":[{{"scope":{{"attributes":{inf}}},
                "spans":[{{"events":[{{"attributes":{inf}}}],"links":[{{"attributes":{inf}}}]}}]}}]}}]}}"#
        );
        let req = decode(body.as_bytes()).unwrap();
        let want = Some(Value::DoubleValue(f64::INFINITY));
        let rs = &req.resource_spans[0];
        let ss = &rs.scope_spans[0];
        let span = &ss.spans[0];
        for attrs in [
            &rs.resource.as_ref().unwrap().attributes,
            &ss.scope.as_ref().unwrap().attributes,
            &span.events[0].attributes,
            &span.links[0].attributes,
        ] {
            assert_eq!(attrs[0].value.as_ref().unwrap().value, want);
        }
    }

    #[test]
    fn syntax_errors_carry_the_position() {
        let e = decode(b"{\"resourceSpans\": }").unwrap_err().to_string();
        assert_eq!(e, "invalid OTLP JSON at line 1 column 19: expected value");
        let e = decode(b"{\"resourceSpans\": [").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid OTLP JSON at line 1 column 19: "),
            "{e}"
        );
        let e = decode(b"").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid OTLP JSON at line 1 column 0: "),
            "{e}"
        );
    }

    #[test]
    fn bad_ids_name_the_field() {
        let e = decode(wrap(r#"{"traceId": "zz"}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "invalid OTLP JSON: resourceSpans[0].scopeSpans[0].spans[0].traceId \"zz\" is not a hex string"
            ),
            "{e}"
        );
        let e = decode(wrap(r#"{"spanId": "0xeee19b7ec3c1b174"}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("spans[0].spanId \"0xeee19b7ec3c1b174\""), "{e}");
        let e = decode(wrap(r#"{"parentSpanId": "abc"}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("spans[0].parentSpanId \"abc\""), "{e}");
        let e = decode(wrap(r#"{"spanId": "7u4Zfsn..."}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base64"), "{e}");
        let e = decode(wrap(r#"{}, {"links": [{"traceId": 12}]}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("spans[1].links[0].traceId the number 12"), "{e}");
    }

    #[test]
    fn bad_fields_name_the_field() {
        for (span, needle) in [
            (
                r#"{"startTimeUnixNano": "abc"}"#,
                "spans[0].startTimeUnixNano \"abc\"",
            ),
            (
                r#"{"endTimeUnixNano": -1}"#,
                "spans[0].endTimeUnixNano the number -1",
            ),
            (
                r#"{"kind": "SIDEWAYS"}"#,
                "spans[0].kind \"SIDEWAYS\" is not a valid value",
            ),
            (r#"{"status": {"code": 7.5}}"#, "spans[0].status.code"),
            (
                r#"{"name": 5}"#,
                "spans[0].name is the number 5, not a string",
            ),
            (
                r#"{"events": [{"timeUnixNano": true}]}"#,
                "spans[0].events[0].timeUnixNano",
            ),
            (r#"{"flags": "x"}"#, "spans[0].flags \"x\""),
            (
                r#"{"attributes": [{"key": "n", "value": {"intValue": "4x"}}]}"#,
                "spans[0].attributes[0].value.intValue \"4x\"",
            ),
            (
                r#"{"attributes": [{"key": "n", "value": {"doubleValue": "fast"}}]}"#,
                "spans[0].attributes[0].value.doubleValue \"fast\"",
            ),
            (
                r#"{"attributes": [{"key": "a", "value": {"arrayValue": {"values": [{"bytesValue": "!!"}]}}}]}"#,
                "attributes[0].value.arrayValue.values[0].bytesValue \"!!\" is not base64",
            ),
            (
                r#"{"attributes": {}}"#,
                "spans[0].attributes is an object, not an array",
            ),
            (
                r#"{"attributes": [{"key": 1}]}"#,
                "spans[0].attributes[0].key is the number 1",
            ),
            (
                "7",
                "resourceSpans[0].scopeSpans[0].spans[0] is the number 7, not an object",
            ),
        ] {
            let e = decode(wrap(span).as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with("invalid OTLP JSON: "), "{e}");
            assert!(e.contains(needle), "{needle} not in {e}");
        }
        let e = decode(b"\"text\"").unwrap_err().to_string();
        assert!(e.contains("the body is \"text\", not an object"), "{e}");
        let e = decode(br#"{"resourceSpans": {}}"#).unwrap_err().to_string();
        assert!(
            e.contains("request.resourceSpans is an object, not an array"),
            "{e}"
        );
    }

    #[test]
    fn empty_and_unknown_bodies_decode_to_empty_requests() {
        assert_eq!(decode(b"{}").unwrap(), ExportTraceServiceRequest::default());
        let req = decode(br#"{"resourceSpans": null, "somethingNew": [1, 2]}"#).unwrap();
        assert_eq!(crate::span_count(&req), 0);
    }

    #[test]
    fn encodes_responses() {
        assert_eq!(
            encode_response(&ExportTraceServiceResponse::default()),
            b"{}"
        );
        let r = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "bad ids".into(),
            }),
        };
        // Compared as JSON values: key order depends on serde_json's preserve_order
        // feature, which another crate of the workspace enables.
        let got: serde_json::Value = serde_json::from_slice(&encode_response(&r)).unwrap();
        assert_eq!(
            got,
            serde_json::json!({"partialSuccess": {"errorMessage": "bad ids", "rejectedSpans": "3"}})
        );
        let r = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess::default()),
        };
        assert_eq!(encode_response(&r), br#"{"partialSuccess":{}}"#);
        // int64 is a string even when large (the OTLP derive would write a number), and
        // messages are escaped.
        let r = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: i64::MAX,
                error_message: "\"quoted\"\n".into(),
            }),
        };
        let v: Json = serde_json::from_slice(&encode_response(&r)).unwrap();
        assert_eq!(v["partialSuccess"]["rejectedSpans"], i64::MAX.to_string());
        assert_eq!(v["partialSuccess"]["errorMessage"], "\"quoted\"\n");
    }
}
