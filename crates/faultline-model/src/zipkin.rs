//! Zipkin v2 JSON (`POST /api/v2/spans`) converted to OTLP.
//!
//! Mapping: spans are grouped by `localEndpoint.serviceName` into one resource each
//! (`service.name`, [`crate::UNKNOWN_SERVICE`] when absent) with scope `zipkin`; 64-bit
//! trace ids are left-padded to 128 bits; `kind` SERVER/CLIENT/PRODUCER/CONSUMER map to
//! OTLP kinds 2/3/4/5 (absent: 0, unspecified); `timestamp` and `duration` (microseconds)
//! become start and end in nanoseconds; tags become string attributes, and an `error` tag
//! (or `otel.status_code=ERROR`) sets status ERROR with the tag as message; annotations
//! become events; `remoteEndpoint` becomes `peer.service` (its serviceName), the address
//! under both the old and the current semantic-convention names (`net.peer.ip` and
//! `network.peer.address`) and the port likewise (`net.peer.port` and
//! `network.peer.port`, integers); the `localEndpoint` address becomes `net.host.ip`;
//! `shared` becomes `zipkin.shared`. A span without `timestamp` gets start and end 0.
//!
//! A span whose own fields are invalid (missing or malformed ids, unknown kind, fields of
//! the wrong JSON type) is not converted and is reported by index, so the rest of the
//! batch is kept, as OTLP partial success does. A body that is not a JSON array is an
//! error.

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

use crate::clip;

fn hex_id(field: &str, s: &str, lens: &[usize], index: usize) -> Result<Vec<u8>, String> {
    let bad = || {
        let want = lens
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(" or ");
        format!(
            "span {index}: {field} {} is not {want} hex characters",
            clip(s)
        )
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
                "span {index}: kind {} is not SERVER, CLIENT, PRODUCER or CONSUMER; omit it for a local span",
                clip(other)
            ));
        }
    };
    let (start, end) = match z.timestamp {
        Some(ts) => {
            let start = ts.saturating_mul(1000);
            let duration = z.duration.unwrap_or(0).saturating_mul(1000);
            (start, start.saturating_add(duration))
        }
        None => (0, 0),
    };
    let mut attributes = Vec::with_capacity(z.tags.len() + 7);
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
        attributes.push(attr("net.host.ip", Value::StringValue(ip.clone())));
    }
    if let Some(remote) = &z.remote_endpoint {
        if let Some(s) = remote.service_name.as_ref().filter(|s| !s.is_empty()) {
            attributes.push(attr("peer.service", Value::StringValue(s.clone())));
        }
        if let Some(ip) = remote.ipv4.as_ref().or(remote.ipv6.as_ref()) {
            attributes.push(attr("net.peer.ip", Value::StringValue(ip.clone())));
            attributes.push(attr("network.peer.address", Value::StringValue(ip.clone())));
        }
        if let Some(p) = remote.port.filter(|p| *p != 0) {
            attributes.push(attr("net.peer.port", Value::IntValue(p)));
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
                rejected.push(format!(
                    "span {index}: {e}; send spans as described at https://zipkin.io/zipkin-api/#/default/post_spans"
                ));
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

    const TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";

    /// Decodes a batch of one span that must convert.
    fn one(span: &str) -> Span {
        let b = decode_v2_json(format!("[{span}]").as_bytes()).unwrap();
        assert!(b.rejected.is_empty(), "{:?}", b.rejected);
        assert_eq!(crate::span_count(&b.request), 1);
        b.request.resource_spans[0].scope_spans[0].spans[0].clone()
    }

    /// Decodes a batch of one span that must be rejected, returning the reason.
    fn rejected(span: &str) -> String {
        let b = decode_v2_json(format!("[{span}]").as_bytes()).unwrap();
        assert_eq!(crate::span_count(&b.request), 0);
        assert!(b.request.resource_spans.is_empty());
        assert_eq!(b.rejected.len(), 1, "{:?}", b.rejected);
        b.rejected[0].clone()
    }

    fn attr(s: &Span, key: &str) -> Option<Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    }

    fn string(v: &str) -> Option<Value> {
        Some(Value::StringValue(v.into()))
    }

    fn find<'a>(b: &'a ZipkinBatch, service: &str) -> &'a [Span] {
        b.request
            .resource_spans
            .iter()
            .find(|rs| crate::service_name(rs.resource.as_ref()) == service)
            .map(|rs| rs.scope_spans[0].spans.as_slice())
            .unwrap()
    }

    #[test]
    fn converts_the_zipkin_api_example() {
        let b = decode_v2_json(
            br#"[{"id": "352bff9a74ca9ad2", "traceId": "5af7183fb1d4cf5f", "parentId": "6b221d5bc9e6496c",
                 "name": "get /api", "timestamp": 1556604172355737, "duration": 1431, "kind": "SERVER",
                 "localEndpoint": {"serviceName": "backend", "ipv4": "192.168.99.1", "port": 3306},
                 "remoteEndpoint": {"ipv4": "172.19.0.2", "port": 58648},
                 "tags": {"http.method": "GET", "http.path": "/api"}, "debug": false}]"#,
        )
        .unwrap();
        assert!(b.rejected.is_empty());
        let s = &find(&b, "backend")[0];
        assert_eq!(s.name, "get /api");
        assert_eq!(
            s.span_id,
            vec![0x35, 0x2b, 0xff, 0x9a, 0x74, 0xca, 0x9a, 0xd2]
        );
        assert_eq!(
            s.parent_span_id,
            vec![0x6b, 0x22, 0x1d, 0x5b, 0xc9, 0xe6, 0x49, 0x6c]
        );
        assert_eq!(s.start_time_unix_nano, 1_556_604_172_355_737_000);
        assert_eq!(s.end_time_unix_nano, 1_556_604_172_357_168_000);
        assert_eq!(attr(s, "http.path"), string("/api"));
        assert!(s.status.is_none());
    }

    #[test]
    fn groups_by_service_with_scope_zipkin() {
        let b = decode_v2_json(
            format!(
                r#"[{{"traceId": "{TRACE}", "id": "0000000000000001", "localEndpoint": {{"serviceName": "b"}}}},
                    {{"traceId": "{TRACE}", "id": "0000000000000002", "localEndpoint": {{"serviceName": "a"}}}},
                    {{"traceId": "{TRACE}", "id": "0000000000000003", "localEndpoint": {{"serviceName": "b"}}}},
                    {{"traceId": "{TRACE}", "id": "0000000000000004", "localEndpoint": {{"ipv4": "10.0.0.1"}}}},
                    {{"traceId": "{TRACE}", "id": "0000000000000005", "localEndpoint": {{"serviceName": ""}}}},
                    {{"traceId": "{TRACE}", "id": "0000000000000006"}}]"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(b.request.resource_spans.len(), 3);
        assert_eq!(
            crate::service_names(&b.request),
            vec![
                "a".to_string(),
                "b".to_string(),
                UNKNOWN_SERVICE.to_string()
            ]
        );
        assert_eq!(find(&b, "b").len(), 2);
        assert_eq!(find(&b, UNKNOWN_SERVICE).len(), 3);
        for rs in &b.request.resource_spans {
            assert_eq!(rs.scope_spans.len(), 1);
            assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "zipkin");
        }
        assert_eq!(crate::span_count(&b.request), 6);
    }

    #[test]
    fn pads_64_bit_trace_ids_and_keeps_128_bit_ones() {
        let s = one(r#"{"traceId": "5af7183fb1d4cf5f", "id": "6b221d5bc9e6496c"}"#);
        assert_eq!(
            s.trace_id,
            vec![
                0, 0, 0, 0, 0, 0, 0, 0, 0x5a, 0xf7, 0x18, 0x3f, 0xb1, 0xd4, 0xcf, 0x5f
            ]
        );
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6B221D5BC9E6496C"}}"#
        ));
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!((s.trace_id[0], s.trace_id[15]), (0x46, 0x24));
        assert_eq!(s.span_id[0], 0x6b);
        assert!(s.parent_span_id.is_empty());
    }

    #[test]
    fn maps_kinds() {
        for (kind, want) in [
            (r#""kind": "SERVER","#, 2),
            (r#""kind": "CLIENT","#, 3),
            (r#""kind": "PRODUCER","#, 4),
            (r#""kind": "CONSUMER","#, 5),
            ("", 0),
        ] {
            let s = one(&format!(
                r#"{{{kind} "traceId": "{TRACE}", "id": "6b221d5bc9e6496c"}}"#
            ));
            assert_eq!(s.kind, want, "{kind}");
        }
    }

    #[test]
    fn maps_times_in_microseconds() {
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "timestamp": 1000, "duration": 25}}"#
        ));
        assert_eq!(
            (s.start_time_unix_nano, s.end_time_unix_nano),
            (1_000_000, 1_025_000)
        );
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "timestamp": 1000}}"#
        ));
        assert_eq!(
            (s.start_time_unix_nano, s.end_time_unix_nano),
            (1_000_000, 1_000_000)
        );
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "duration": 7}}"#
        ));
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (0, 0));
    }

    #[test]
    fn maps_tags_and_error_status() {
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "tags": {{"http.method": "GET", "error": "timeout"}}}}"#
        ));
        assert_eq!(attr(&s, "http.method"), string("GET"));
        assert_eq!(attr(&s, "error"), string("timeout"));
        let status = s.status.clone().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "timeout"));

        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "tags": {{"error": ""}}}}"#
        ));
        assert_eq!(s.status.unwrap().code, 2);

        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c",
                 "tags": {{"otel.status_code": "ERROR", "otel.status_description": "bad"}}}}"#
        ));
        let status = s.status.clone().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "bad"));
        assert_eq!(attr(&s, "otel.status_code"), string("ERROR"));

        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "tags": {{"otel.status_code": "OK"}}}}"#
        ));
        assert_eq!(s.status.unwrap().code, 1);

        // The error tag wins over otel.status_code.
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "tags": {{"otel.status_code": "OK", "error": "x"}}}}"#
        ));
        assert_eq!(s.status.unwrap().code, 2);
    }

    #[test]
    fn maps_annotations_to_events() {
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c",
                 "annotations": [{{"timestamp": 1472470996238000, "value": "foo"}}, {{"timestamp": 5, "value": "ws"}}]}}"#
        ));
        assert_eq!(s.events.len(), 2);
        assert_eq!(s.events[0].name, "foo");
        assert_eq!(s.events[0].time_unix_nano, 1_472_470_996_238_000_000);
        assert_eq!(
            (s.events[1].name.as_str(), s.events[1].time_unix_nano),
            ("ws", 5000)
        );
    }

    #[test]
    fn maps_endpoints() {
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c",
                 "localEndpoint": {{"serviceName": "backend", "ipv4": "192.168.99.1", "port": 3306}},
                 "remoteEndpoint": {{"serviceName": "frontend", "ipv4": "172.19.0.2", "port": 58648}}}}"#
        ));
        assert_eq!(attr(&s, "net.host.ip"), string("192.168.99.1"));
        assert_eq!(attr(&s, "peer.service"), string("frontend"));
        assert_eq!(attr(&s, "net.peer.ip"), string("172.19.0.2"));
        assert_eq!(attr(&s, "network.peer.address"), string("172.19.0.2"));
        assert_eq!(attr(&s, "net.peer.port"), Some(Value::IntValue(58648)));
        assert_eq!(attr(&s, "network.peer.port"), Some(Value::IntValue(58648)));

        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c",
                 "localEndpoint": {{"ipv6": "::1"}}, "remoteEndpoint": {{"ipv6": "2001:db8::c001"}}}}"#
        ));
        assert_eq!(attr(&s, "net.host.ip"), string("::1"));
        assert_eq!(attr(&s, "network.peer.address"), string("2001:db8::c001"));
        assert_eq!(attr(&s, "peer.service"), None);
        assert_eq!(attr(&s, "network.peer.port"), None);

        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c"}}"#
        ));
        assert!(s.attributes.is_empty());
    }

    #[test]
    fn maps_shared() {
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "shared": true, "debug": true}}"#
        ));
        assert_eq!(attr(&s, "zipkin.shared"), Some(Value::BoolValue(true)));
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "shared": false}}"#
        ));
        assert_eq!(attr(&s, "zipkin.shared"), None);
    }

    #[test]
    fn rejects_each_bad_field() {
        assert_eq!(
            rejected(r#"{"traceId": "xyz", "id": "6b221d5bc9e6496c"}"#),
            "span 0: traceId \"xyz\" is not 16 or 32 hex characters"
        );
        assert_eq!(
            rejected(r#"{"traceId": "5af7183fb1d4cf5g", "id": "6b221d5bc9e6496c"}"#),
            "span 0: traceId \"5af7183fb1d4cf5g\" is not 16 or 32 hex characters"
        );
        assert_eq!(
            rejected(r#"{"id": "6b221d5bc9e6496c"}"#),
            "span 0: traceId is missing"
        );
        assert_eq!(
            rejected(&format!(r#"{{"traceId": "{TRACE}", "id": "123"}}"#)),
            "span 0: id \"123\" is not 16 hex characters"
        );
        assert_eq!(
            rejected(&format!(r#"{{"traceId": "{TRACE}", "id": "{TRACE}"}}"#)),
            format!("span 0: id \"{TRACE}\" is not 16 hex characters")
        );
        assert_eq!(
            rejected(&format!(r#"{{"traceId": "{TRACE}"}}"#)),
            "span 0: id is missing"
        );
        assert_eq!(
            rejected(&format!(
                r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "parentId": "zz21d5bc9e6496cc"}}"#
            )),
            "span 0: parentId \"zz21d5bc9e6496cc\" is not 16 hex characters"
        );
        assert!(
            rejected(&format!(
                r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "kind": "SIDEWAYS"}}"#
            ))
            .starts_with("span 0: kind \"SIDEWAYS\" is not SERVER, CLIENT, PRODUCER or CONSUMER")
        );
        let r = rejected(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "tags": {{"n": 5}}}}"#
        ));
        assert!(r.starts_with("span 0: invalid type: integer `5`"), "{r}");
        let r = rejected("1");
        assert!(r.starts_with("span 0: invalid type: integer `1`"), "{r}");
        // Non-ASCII and very long ids are refused without panicking, and clipped.
        let r = rejected(&format!(
            r#"{{"traceId": "é{}", "id": "6b221d5bc9e6496c"}}"#,
            "a".repeat(1000)
        ));
        assert!(r.len() < 200, "{r}");
        assert_eq!(
            rejected(&format!(r#"{{"traceId": "{TRACE}", "id": "ééééééé6"}}"#)),
            "span 0: id \"ééééééé6\" is not 16 hex characters"
        );
    }

    #[test]
    fn an_empty_parent_id_means_root() {
        let s = one(&format!(
            r#"{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c", "parentId": ""}}"#
        ));
        assert!(s.parent_span_id.is_empty());
    }

    #[test]
    fn rejects_by_index_and_keeps_the_rest() {
        let b = decode_v2_json(
            format!(
                r#"[{{"traceId": "{TRACE}", "id": "6b221d5bc9e6496c"}},
                    {{"traceId": "{TRACE}", "id": "bad"}},
                    {{"traceId": "{TRACE}", "id": "6b221d5bc9e6496d"}},
                    {{"traceId": "xyz", "id": "6b221d5bc9e6496e"}}]"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(crate::span_count(&b.request), 2);
        assert_eq!(b.rejected.len(), 2);
        assert!(b.rejected[0].starts_with("span 1: id \"bad\""));
        assert_eq!(
            b.rejected[1],
            "span 3: traceId \"xyz\" is not 16 or 32 hex characters"
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let e = decode_v2_json(b"{}").unwrap_err().to_string();
        assert!(e.starts_with("invalid Zipkin v2 JSON: "), "{e}");
        assert!(e.contains("JSON array"), "{e}");
        assert!(decode_v2_json(b"[{").is_err());
        assert!(decode_v2_json(b"").is_err());
        assert!(decode_v2_json(b"not json").is_err());
        let b = decode_v2_json(b"[]").unwrap();
        assert!(b.request.resource_spans.is_empty() && b.rejected.is_empty());
    }
}
