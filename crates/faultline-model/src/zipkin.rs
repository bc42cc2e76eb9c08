//! Zipkin v2 JSON (`POST /api/v2/spans`) converted to OTLP.
//!
//! Mapping: spans are grouped by `localEndpoint.serviceName` into one resource each
//! (`service.name`, [`crate::UNKNOWN_SERVICE`] when absent) with scope `zipkin`; 64-bit
//! trace ids are left-padded to 128 bits; `kind` SERVER/CLIENT/PRODUCER/CONSUMER map to
//! OTLP kinds 2/3/4/5 (absent: 0, unspecified); `timestamp` and `duration` (microseconds)
//! become start and end in nanoseconds; tags become string attributes, and an `error` tag
//! (or `otel.status_code=ERROR`) sets status ERROR with the tag as message; annotations
//! become events; `remoteEndpoint` becomes `peer.service`, `network.peer.address` and
//! `network.peer.port`; `localEndpoint` addresses become `network.local.address`;
//! `shared` becomes `zipkin.shared`.
//!
//! A span whose own fields are invalid (ids) is not converted and is reported by index,
//! so the rest of the batch is kept, as OTLP partial success does.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::otlp::common::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use crate::otlp::resource::Resource;
use crate::otlp::trace::{ResourceSpans, ScopeSpans, Span, Status, span::Event};
use crate::{ExportTraceServiceRequest, ModelError, UNKNOWN_SERVICE};

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    service_name: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    port: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Annotation {
    timestamp: Option<u64>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZSpan {
    trace_id: Option<String>,
    id: Option<String>,
    parent_id: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    timestamp: Option<u64>,
    duration: Option<u64>,
    #[serde(default)]
    shared: bool,
    local_endpoint: Option<Endpoint>,
    remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

/// A converted batch and the spans that could not be converted.
#[derive(Debug, Default)]
pub struct ZipkinBatch {
    /// The valid spans, as OTLP.
    pub request: ExportTraceServiceRequest,
    /// One reason per span that was not converted.
    pub rejected: Vec<String>,
}

fn hex_id(field: &str, s: &str, lens: &[usize], index: usize) -> Result<Vec<u8>, String> {
    let bad = || {
        let want = lens
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(" or ");
        format!("span {index}: {field} {s:?} is not {want} hex characters")
    };
    if !lens.contains(&s.len()) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(s.len() / 2);
    for pair in s.as_bytes().chunks(2) {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
        out.push((hi * 16 + lo) as u8);
    }
    Ok(out)
}

fn attr(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn convert(z: ZSpan, index: usize) -> Result<(String, Span), String> {
    let trace_id = z
        .trace_id
        .as_deref()
        .ok_or_else(|| format!("span {index}: traceId is missing"))?;
    let mut trace = hex_id("traceId", trace_id, &[16, 32], index)?;
    if trace.len() == 8 {
        let mut padded = vec![0u8; 8];
        padded.extend_from_slice(&trace);
        trace = padded;
    }
    let id =
        z.id.as_deref()
            .ok_or_else(|| format!("span {index}: id is missing"))?;
    let span_id = hex_id("id", id, &[16], index)?;
    let parent = match z.parent_id.as_deref() {
        None | Some("") => Vec::new(),
        Some(p) => hex_id("parentId", p, &[16], index)?,
    };
    let kind = match z.kind.as_deref() {
        Some("SERVER") => 2,
        Some("CLIENT") => 3,
        Some("PRODUCER") => 4,
        Some("CONSUMER") => 5,
        None => 0,
        Some(other) => {
            return Err(format!(
                "span {index}: kind {other:?} is not SERVER, CLIENT, PRODUCER or CONSUMER"
            ));
        }
    };
    let start = z.timestamp.unwrap_or(0).saturating_mul(1000);
    let end = start.saturating_add(z.duration.unwrap_or(0).saturating_mul(1000));
    let mut attributes = Vec::with_capacity(z.tags.len() + 4);
    let mut status = None;
    for (k, v) in &z.tags {
        if k == "error" {
            status = Some(Status {
                code: 2,
                message: v.clone(),
            });
        } else if k == "otel.status_code" && v.eq_ignore_ascii_case("ERROR") && status.is_none() {
            status = Some(Status {
                code: 2,
                message: z
                    .tags
                    .get("otel.status_description")
                    .cloned()
                    .unwrap_or_default(),
            });
        } else if k == "otel.status_code" && v.eq_ignore_ascii_case("OK") && status.is_none() {
            status = Some(Status {
                code: 1,
                message: String::new(),
            });
        }
        attributes.push(attr(k, Value::StringValue(v.clone())));
    }
    let local = z.local_endpoint.unwrap_or_default();
    if let Some(ip) = local.ipv4.as_ref().or(local.ipv6.as_ref()) {
        attributes.push(attr(
            "network.local.address",
            Value::StringValue(ip.clone()),
        ));
    }
    if let Some(remote) = &z.remote_endpoint {
        if let Some(s) = &remote.service_name {
            attributes.push(attr("peer.service", Value::StringValue(s.clone())));
        }
        if let Some(ip) = remote.ipv4.as_ref().or(remote.ipv6.as_ref()) {
            attributes.push(attr("network.peer.address", Value::StringValue(ip.clone())));
        }
        if let Some(p) = remote.port {
            attributes.push(attr("network.peer.port", Value::IntValue(p)));
        }
    }
    if z.shared {
        attributes.push(attr("zipkin.shared", Value::BoolValue(true)));
    }
    let events = z
        .annotations
        .into_iter()
        .map(|a| Event {
            time_unix_nano: a.timestamp.unwrap_or(0).saturating_mul(1000),
            name: a.value.unwrap_or_default(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        })
        .collect();
    let service = local
        .service_name
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
    Ok((
        service,
        Span {
            trace_id: trace,
            span_id,
            parent_span_id: parent,
            name: z.name.unwrap_or_default(),
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            events,
            status,
            ..Span::default()
        },
    ))
}

/// Decodes a Zipkin v2 JSON array of spans into OTLP.
pub fn decode_v2_json(body: &[u8]) -> Result<ZipkinBatch, ModelError> {
    let values: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
        ModelError::ZipkinJson(format!("{e}; the body must be a JSON array of spans"))
    })?;
    let mut by_service: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    let mut rejected = Vec::new();
    for (index, v) in values.into_iter().enumerate() {
        let z: ZSpan = match serde_json::from_value(v) {
            Ok(z) => z,
            Err(e) => {
                rejected.push(format!("span {index}: {e}"));
                continue;
            }
        };
        match convert(z, index) {
            Ok((service, span)) => by_service.entry(service).or_default().push(span),
            Err(reason) => rejected.push(reason),
        }
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr("service.name", Value::StringValue(service))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "zipkin".into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    Ok(ZipkinBatch {
        request: ExportTraceServiceRequest { resource_spans },
        rejected,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BATCH: &str = r#"[
      {"traceId": "5af7183fb1d4cf5f", "id": "6b221d5bc9e6496c", "name": "get /api",
       "kind": "SERVER", "timestamp": 1472470996199000, "duration": 207000, "shared": true,
       "localEndpoint": {"serviceName": "backend", "ipv4": "192.168.99.1", "port": 3306},
       "remoteEndpoint": {"serviceName": "frontend", "ipv4": "172.19.0.2", "port": 58648},
       "annotations": [{"timestamp": 1472470996238000, "value": "foo"}],
       "tags": {"http.method": "GET", "error": "boom"}},
      {"traceId": "463ac35c9f6413ad48485a3953bb6124", "id": "a2fb4a1d1a96d312", "parentId": "0020000000000001",
       "name": "child", "kind": "CLIENT", "localEndpoint": {"serviceName": "frontend"}, "timestamp": 10, "duration": 5},
      {"traceId": "xyz", "id": "a2fb4a1d1a96d312"},
      {"traceId": "463ac35c9f6413ad48485a3953bb6124", "id": "123"},
      {"traceId": "463ac35c9f6413ad48485a3953bb6124"},
      {"traceId": "463ac35c9f6413ad48485a3953bb6124", "id": "a2fb4a1d1a96d313", "kind": "SIDEWAYS"},
      {"traceId": "463ac35c9f6413ad48485a3953bb6124", "id": "a2fb4a1d1a96d314", "tags": {"otel.status_code": "ERROR", "otel.status_description": "bad"}}
    ]"#;

    fn find<'a>(b: &'a ZipkinBatch, service: &str) -> &'a [Span] {
        b.request
            .resource_spans
            .iter()
            .find(|rs| crate::service_name(rs.resource.as_ref()) == service)
            .map(|rs| rs.scope_spans[0].spans.as_slice())
            .unwrap()
    }

    #[test]
    fn maps_fields() {
        let b = decode_v2_json(BATCH.as_bytes()).unwrap();
        let s = &find(&b, "backend")[0];
        assert_eq!(
            s.trace_id,
            hex_id("t", "00000000000000005af7183fb1d4cf5f", &[32], 0).unwrap()
        );
        assert_eq!(s.kind, 2);
        assert_eq!(s.start_time_unix_nano, 1_472_470_996_199_000_000);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 207_000_000);
        assert_eq!(s.status.as_ref().unwrap().code, 2);
        assert_eq!(s.status.as_ref().unwrap().message, "boom");
        assert_eq!(s.events[0].name, "foo");
        assert_eq!(s.events[0].time_unix_nano, 1_472_470_996_238_000_000);
        let keys: Vec<&str> = s.attributes.iter().map(|kv| kv.key.as_str()).collect();
        for k in [
            "http.method",
            "error",
            "peer.service",
            "network.peer.address",
            "network.peer.port",
            "network.local.address",
            "zipkin.shared",
        ] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        let c = &find(&b, "frontend")[0];
        assert_eq!(c.kind, 3);
        assert_eq!(c.parent_span_id.len(), 8);
        assert_eq!(c.trace_id.len(), 16);
        let u = &find(&b, UNKNOWN_SERVICE)[0];
        assert_eq!(u.status.as_ref().unwrap().message, "bad");
    }

    #[test]
    fn rejects_bad_spans_by_index_and_keeps_the_rest() {
        let b = decode_v2_json(BATCH.as_bytes()).unwrap();
        assert_eq!(crate::span_count(&b.request), 3);
        assert_eq!(b.rejected.len(), 4, "{:?}", b.rejected);
        assert!(
            b.rejected[0].starts_with("span 2: traceId \"xyz\""),
            "{}",
            b.rejected[0]
        );
        assert!(b.rejected[1].contains("span 3: id \"123\""));
        assert!(b.rejected[2].contains("span 4: id is missing"));
        assert!(b.rejected[3].contains("SIDEWAYS"));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(
            decode_v2_json(b"{}")
                .unwrap_err()
                .to_string()
                .contains("JSON array")
        );
        assert!(decode_v2_json(b"[{").is_err());
        assert!(decode_v2_json(b"[1]").unwrap().rejected.len() == 1);
    }
}
