//! faultline's own span type: what the store indexes and the query layer returns.
//!
//! OTLP nests spans under resources and scopes; [`Span`] is flat, with the service name
//! pulled out and the resource and scope shared between the spans of one request through
//! [`Arc`]. Attribute values keep their OTLP types ([`AttrValue`]). [`from_otlp`] converts a
//! request; nothing here knows how spans are stored or served.

use std::sync::Arc;

use crate::ExportTraceServiceRequest;
pub use crate::key::Key;
use crate::otlp::common::{AnyValue, KeyValue, any_value::Value};

/// A 128-bit trace id.
pub type TraceId = [u8; 16];
/// A 64-bit span id.
pub type SpanId = [u8; 8];

/// A string attribute value: up to 24 bytes are held inline, without an allocation of
/// their own (most values: routes, methods, regions, ids, host names). A span's values
/// then sit in its attribute list, which the seal's writer and the index read in trace
/// order, not memory order: one cache miss per span's list instead of one per value.
pub use compact_str::CompactString;

/// An attribute value, typed as in OTLP.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string.
    Str(CompactString),
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Double(f64),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// An array of values.
    Array(Vec<AttrValue>),
    /// A nested list of key-values.
    KvList(Attributes),
    /// No value.
    Empty,
}

impl AttrValue {
    /// Converts an OTLP value.
    pub fn from_otlp(v: Option<&AnyValue>) -> Self {
        match v.and_then(|v| v.value.as_ref()) {
            None => Self::Empty,
            Some(Value::StringValue(s)) => Self::Str(s.as_str().into()),
            Some(Value::BoolValue(b)) => Self::Bool(*b),
            Some(Value::IntValue(i)) => Self::Int(*i),
            Some(Value::DoubleValue(d)) => Self::Double(*d),
            Some(Value::BytesValue(b)) => Self::Bytes(b.clone()),
            Some(Value::ArrayValue(a)) => {
                Self::Array(a.values.iter().map(|v| Self::from_otlp(Some(v))).collect())
            }
            Some(Value::KvlistValue(kv)) => Self::KvList(attrs_from_otlp(&kv.values)),
            // Profiles-only string-table references carry no value for traces.
            Some(Value::StringValueStrindex(_)) => Self::Empty,
        }
    }

    /// The value as text (for display and string matching).
    pub fn to_text(&self) -> String {
        match self {
            Self::Str(s) => s.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Double(d) => d.to_string(),
            Self::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
            Self::Array(a) => {
                let items: Vec<String> = a.iter().map(Self::to_text).collect();
                format!("[{}]", items.join(","))
            }
            Self::KvList(kv) => {
                let items: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.to_text()))
                    .collect();
                format!("{{{}}}", items.join(","))
            }
            Self::Empty => String::new(),
        }
    }
}

/// Key-value attributes in their original order; keys are interned ([`Key`]).
pub type Attributes = Vec<(Key, AttrValue)>;

/// Converts OTLP key-values.
pub fn attrs_from_otlp(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| (Key::new(&kv.key), AttrValue::from_otlp(kv.value.as_ref())))
        .collect()
}

/// Span kind, with OTLP's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum SpanKind {
    /// Not given.
    #[default]
    Unspecified = 0,
    /// Internal operation.
    Internal = 1,
    /// Server side of a request.
    Server = 2,
    /// Client side of a request.
    Client = 3,
    /// Producer of a message.
    Producer = 4,
    /// Consumer of a message.
    Consumer = 5,
}

impl SpanKind {
    /// From OTLP's integer (unknown values become `Unspecified`).
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }

    /// Lower-case name as Jaeger and OpenTelemetry write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Internal => "internal",
            Self::Server => "server",
            Self::Client => "client",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }
}

/// Span status code, with OTLP's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum StatusCode {
    /// Not set.
    #[default]
    Unset = 0,
    /// Explicitly OK.
    Ok = 1,
    /// An error.
    Error = 2,
}

impl StatusCode {
    /// From OTLP's integer (unknown values become `Unset`).
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Ok,
            2 => Self::Error,
            _ => Self::Unset,
        }
    }
}

/// A timed event inside a span.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unix nanoseconds.
    pub time_ns: u64,
    /// Event name (`exception` for recorded exceptions).
    pub name: String,
    /// Its attributes.
    pub attributes: Attributes,
}

/// A link to another span.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Linked trace.
    pub trace_id: TraceId,
    /// Linked span.
    pub span_id: SpanId,
    /// Its attributes.
    pub attributes: Attributes,
}

/// What produced a group of spans: the resource attributes and instrumentation scope.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    /// `service.name` of the resource ([`crate::UNKNOWN_SERVICE`] when absent).
    pub service: String,
    /// All resource attributes, `service.name` included.
    pub resource: Attributes,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// Instrumentation scope version.
    pub scope_version: String,
}

/// One span, flat.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Trace id.
    pub trace_id: TraceId,
    /// Span id.
    pub span_id: SpanId,
    /// Parent span id, `None` for a root.
    pub parent_span_id: Option<SpanId>,
    /// Operation name.
    pub name: String,
    /// Kind.
    pub kind: SpanKind,
    /// Start, Unix nanoseconds.
    pub start_ns: u64,
    /// End, Unix nanoseconds.
    pub end_ns: u64,
    /// Status code.
    pub status: StatusCode,
    /// Status message.
    pub status_message: String,
    /// Span attributes.
    pub attributes: Attributes,
    /// Events.
    pub events: Vec<Event>,
    /// Links.
    pub links: Vec<Link>,
    /// Resource and scope, shared with the other spans of the same origin.
    pub origin: Arc<Origin>,
}

impl Span {
    /// Duration in nanoseconds (0 when the end precedes the start).
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// The service that emitted the span.
    pub fn service(&self) -> &str {
        &self.origin.service
    }

    /// Whether the span is marked as an error.
    pub fn is_error(&self) -> bool {
        self.status == StatusCode::Error
    }
}

fn fixed<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.try_into().ok()
}

fn attrs_into(kvs: Vec<KeyValue>) -> Attributes {
    kvs.into_iter()
        .map(|kv| {
            let v = AttrValue::from_otlp_owned(kv.value);
            (Key::from(kv.key), v)
        })
        .collect()
}

impl AttrValue {
    /// Converts an OTLP value, moving its strings instead of copying them.
    pub fn from_otlp_owned(v: Option<AnyValue>) -> Self {
        match v.and_then(|v| v.value) {
            None => Self::Empty,
            Some(Value::StringValue(s)) => Self::Str(s.into()),
            Some(Value::BoolValue(b)) => Self::Bool(b),
            Some(Value::IntValue(i)) => Self::Int(i),
            Some(Value::DoubleValue(d)) => Self::Double(d),
            Some(Value::BytesValue(b)) => Self::Bytes(b),
            Some(Value::ArrayValue(a)) => Self::Array(
                a.values
                    .into_iter()
                    .map(|v| Self::from_otlp_owned(Some(v)))
                    .collect(),
            ),
            Some(Value::KvlistValue(kv)) => Self::KvList(attrs_into(kv.values)),
            Some(Value::StringValueStrindex(_)) => Self::Empty,
        }
    }
}

fn value_to_otlp(v: &AttrValue) -> AnyValue {
    use crate::otlp::common::{ArrayValue, KeyValueList};
    let value = match v {
        AttrValue::Str(s) => Some(Value::StringValue(s.to_string())),
        AttrValue::Bool(b) => Some(Value::BoolValue(*b)),
        AttrValue::Int(i) => Some(Value::IntValue(*i)),
        AttrValue::Double(d) => Some(Value::DoubleValue(*d)),
        AttrValue::Bytes(b) => Some(Value::BytesValue(b.clone())),
        AttrValue::Array(a) => Some(Value::ArrayValue(ArrayValue {
            values: a.iter().map(value_to_otlp).collect(),
        })),
        AttrValue::KvList(kv) => Some(Value::KvlistValue(KeyValueList {
            values: attrs_to_otlp(kv),
        })),
        AttrValue::Empty => None,
    };
    AnyValue { value }
}

fn attrs_to_otlp(attrs: &Attributes) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            value: Some(value_to_otlp(v)),
            ..KeyValue::default()
        })
        .collect()
}

/// Converts spans back to an OTLP request, one resource and scope per distinct origin, in
/// the order origins first appear.
pub fn to_otlp(spans: &[Span]) -> ExportTraceServiceRequest {
    use crate::otlp::common::InstrumentationScope;
    use crate::otlp::resource::Resource;
    use crate::otlp::trace::{ResourceSpans, ScopeSpans, Status, span};
    let mut groups: Vec<(&Origin, Vec<crate::otlp::trace::Span>)> = Vec::new();
    for s in spans {
        let pos = match groups
            .iter()
            .position(|(o, _)| std::ptr::eq(*o, s.origin.as_ref()) || **o == *s.origin)
        {
            Some(p) => p,
            None => {
                groups.push((s.origin.as_ref(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[pos].1.push(crate::otlp::trace::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name.clone(),
            kind: s.kind as i32,
            start_time_unix_nano: s.start_ns,
            end_time_unix_nano: s.end_ns,
            attributes: attrs_to_otlp(&s.attributes),
            events: s
                .events
                .iter()
                .map(|e| span::Event {
                    time_unix_nano: e.time_ns,
                    name: e.name.clone(),
                    attributes: attrs_to_otlp(&e.attributes),
                    dropped_attributes_count: 0,
                })
                .collect(),
            links: s
                .links
                .iter()
                .map(|l| span::Link {
                    trace_id: l.trace_id.to_vec(),
                    span_id: l.span_id.to_vec(),
                    attributes: attrs_to_otlp(&l.attributes),
                    ..span::Link::default()
                })
                .collect(),
            status: (s.status != StatusCode::Unset || !s.status_message.is_empty()).then(|| {
                Status {
                    message: s.status_message.clone(),
                    code: s.status as i32,
                }
            }),
            ..crate::otlp::trace::Span::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(o, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: attrs_to_otlp(&o.resource),
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: o.scope_name.clone(),
                        version: o.scope_version.clone(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// `attributes` plus the span's W3C tracestate, when it has one, as the
/// [`TRACESTATE_ATTR`](crate::sampling::TRACESTATE_ATTR) attribute (as Jaeger stores it):
/// its `ot=th:` threshold gives the span's adjusted count.
pub(crate) fn with_tracestate(mut attributes: Attributes, trace_state: String) -> Attributes {
    if !trace_state.is_empty()
        && !attributes
            .iter()
            .any(|(k, _)| k == crate::sampling::TRACESTATE_ATTR)
    {
        attributes.push((
            Key::new(crate::sampling::TRACESTATE_ATTR),
            AttrValue::Str(trace_state.into()),
        ));
    }
    attributes
}

/// Like [`from_otlp`], consuming the request so strings move instead of being copied
/// (the store pipeline's path: it decodes a request only to convert it).
pub fn from_otlp_owned(req: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::with_capacity(crate::span_count(&req));
    for rs in req.resource_spans {
        let service = crate::service_name(rs.resource.as_ref()).to_string();
        let resource = rs
            .resource
            .map(|r| attrs_into(r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            let (scope_name, scope_version) =
                ss.scope.map(|s| (s.name, s.version)).unwrap_or_default();
            let origin = Arc::new(Origin {
                service: service.clone(),
                resource: resource.clone(),
                scope_name,
                scope_version,
            });
            for sp in ss.spans {
                let (Some(trace_id), Some(span_id)) =
                    (fixed::<16>(&sp.trace_id), fixed::<8>(&sp.span_id))
                else {
                    continue;
                };
                let (status, status_message) = sp
                    .status
                    .map(|s| (StatusCode::from_i32(s.code), s.message))
                    .unwrap_or_default();
                out.push(Span {
                    trace_id,
                    span_id,
                    parent_span_id: fixed::<8>(&sp.parent_span_id)
                        .filter(|p| p.iter().any(|b| *b != 0)),
                    name: sp.name,
                    kind: SpanKind::from_i32(sp.kind),
                    start_ns: sp.start_time_unix_nano,
                    end_ns: sp.end_time_unix_nano,
                    status,
                    status_message,
                    attributes: with_tracestate(attrs_into(sp.attributes), sp.trace_state),
                    events: sp
                        .events
                        .into_iter()
                        .map(|e| Event {
                            time_ns: e.time_unix_nano,
                            name: e.name,
                            attributes: attrs_into(e.attributes),
                        })
                        .collect(),
                    links: sp
                        .links
                        .into_iter()
                        .filter_map(|l| {
                            Some(Link {
                                trace_id: fixed::<16>(&l.trace_id)?,
                                span_id: fixed::<8>(&l.span_id)?,
                                attributes: attrs_into(l.attributes),
                            })
                        })
                        .collect(),
                    origin: origin.clone(),
                });
            }
        }
    }
    out
}

/// Flattens an (already validated) OTLP request into spans. Spans whose ids are not of the
/// right length are skipped; intake's validation has removed them before this runs.
pub fn from_otlp(req: &ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::with_capacity(crate::span_count(req));
    for rs in &req.resource_spans {
        let service = crate::service_name(rs.resource.as_ref()).to_string();
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attrs_from_otlp(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let origin = Arc::new(Origin {
                service: service.clone(),
                resource: resource.clone(),
                scope_name: ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                scope_version: ss
                    .scope
                    .as_ref()
                    .map(|s| s.version.clone())
                    .unwrap_or_default(),
            });
            for sp in &ss.spans {
                let (Some(trace_id), Some(span_id)) =
                    (fixed::<16>(&sp.trace_id), fixed::<8>(&sp.span_id))
                else {
                    continue;
                };
                out.push(Span {
                    trace_id,
                    span_id,
                    parent_span_id: fixed::<8>(&sp.parent_span_id)
                        .filter(|p| p.iter().any(|b| *b != 0)),
                    name: sp.name.clone(),
                    kind: SpanKind::from_i32(sp.kind),
                    start_ns: sp.start_time_unix_nano,
                    end_ns: sp.end_time_unix_nano,
                    status: sp
                        .status
                        .as_ref()
                        .map(|s| StatusCode::from_i32(s.code))
                        .unwrap_or_default(),
                    status_message: sp
                        .status
                        .as_ref()
                        .map(|s| s.message.clone())
                        .unwrap_or_default(),
                    attributes: with_tracestate(
                        attrs_from_otlp(&sp.attributes),
                        sp.trace_state.clone(),
                    ),
                    events: sp
                        .events
                        .iter()
                        .map(|e| Event {
                            time_ns: e.time_unix_nano,
                            name: e.name.clone(),
                            attributes: attrs_from_otlp(&e.attributes),
                        })
                        .collect(),
                    links: sp
                        .links
                        .iter()
                        .filter_map(|l| {
                            Some(Link {
                                trace_id: fixed::<16>(&l.trace_id)?,
                                span_id: fixed::<8>(&l.span_id)?,
                                attributes: attrs_from_otlp(&l.attributes),
                            })
                        })
                        .collect(),
                    origin: origin.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::otlp::common::{ArrayValue, InstrumentationScope};
    use crate::otlp::resource::Resource;
    use crate::otlp::trace::{
        ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span::Event as OtlpEvent,
    };

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..KeyValue::default()
        }
    }

    #[test]
    fn flattens_resources_scopes_and_values() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", Value::StringValue("cart".into())),
                        kv("host.name", Value::StringValue("h1".into())),
                    ],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        version: "1.2".into(),
                        ..InstrumentationScope::default()
                    }),
                    spans: vec![
                        OtlpSpan {
                            trace_id: vec![1; 16],
                            span_id: vec![2; 8],
                            parent_span_id: vec![3; 8],
                            name: "AddItem".into(),
                            kind: 3,
                            start_time_unix_nano: 100,
                            end_time_unix_nano: 350,
                            attributes: vec![
                                kv("n", Value::IntValue(4)),
                                kv(
                                    "tags",
                                    Value::ArrayValue(ArrayValue {
                                        values: vec![AnyValue {
                                            value: Some(Value::BoolValue(true)),
                                        }],
                                    }),
                                ),
                            ],
                            events: vec![OtlpEvent {
                                time_unix_nano: 200,
                                name: "exception".into(),
                                ..OtlpEvent::default()
                            }],
                            status: Some(Status {
                                code: 2,
                                message: "boom".into(),
                            }),
                            ..OtlpSpan::default()
                        },
                        OtlpSpan {
                            trace_id: vec![1; 16],
                            span_id: vec![4; 8],
                            parent_span_id: vec![],
                            ..OtlpSpan::default()
                        },
                        OtlpSpan {
                            trace_id: vec![1; 15],
                            span_id: vec![5; 8],
                            ..OtlpSpan::default()
                        },
                    ],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        let spans = from_otlp(&req);
        assert_eq!(spans.len(), 2, "the malformed span is skipped");
        let s = &spans[0];
        assert_eq!(s.service(), "cart");
        assert_eq!(s.origin.scope_name, "lib");
        assert_eq!(
            s.origin.resource[1],
            ("host.name".into(), AttrValue::Str("h1".into()))
        );
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.duration_ns(), 250);
        assert!(s.is_error());
        assert_eq!(s.status_message, "boom");
        assert_eq!(s.parent_span_id, Some([3; 8]));
        assert_eq!(s.attributes[0].1, AttrValue::Int(4));
        assert_eq!(
            s.attributes[1].1,
            AttrValue::Array(vec![AttrValue::Bool(true)])
        );
        assert_eq!(s.attributes[1].1.to_text(), "[true]");
        assert_eq!(s.events[0].name, "exception");
        assert_eq!(spans[1].parent_span_id, None);
        assert!(
            Arc::ptr_eq(&spans[0].origin, &spans[1].origin),
            "origin shared, not copied"
        );
    }
}

#[cfg(test)]
mod to_otlp_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn to_otlp_round_trips_through_otlp_json() {
        let o = Arc::new(Origin {
            service: "s".into(),
            resource: vec![
                ("service.name".into(), AttrValue::Str("s".into())),
                ("n".into(), AttrValue::Int(5)),
            ],
            scope_name: "x".into(),
            scope_version: "1".into(),
        });
        let other = Arc::new(Origin {
            service: "t".into(),
            resource: vec![("service.name".into(), AttrValue::Str("t".into()))],
            ..Origin::default()
        });
        let attrs = vec![
            ("d".into(), AttrValue::Double(1.5)),
            ("b".into(), AttrValue::Bytes(vec![1, 2])),
            ("i".into(), AttrValue::Int(-9)),
            ("t".into(), AttrValue::Bool(true)),
            (
                "a".into(),
                AttrValue::Array(vec![AttrValue::Str("x".into())]),
            ),
            (
                "k".into(),
                AttrValue::KvList(vec![("in".into(), AttrValue::Int(1))]),
            ),
        ];
        let s1 = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: "op".into(),
            kind: SpanKind::Server,
            start_ns: 1_700_000_000_000_000_001,
            end_ns: 1_700_000_000_000_000_999,
            status: StatusCode::Error,
            status_message: "m".into(),
            attributes: attrs.clone(),
            events: vec![Event {
                time_ns: 1_700_000_000_000_000_500,
                name: "exception".into(),
                attributes: attrs.clone(),
            }],
            links: vec![Link {
                trace_id: [7; 16],
                span_id: [8; 8],
                attributes: attrs,
            }],
            origin: o.clone(),
        };
        let s2 = Span {
            span_id: [3; 8],
            parent_span_id: Some([2; 8]),
            status: StatusCode::Unset,
            status_message: String::new(),
            origin: other,
            ..s1.clone()
        };
        let s3 = Span {
            span_id: [4; 8],
            ..s1.clone()
        };
        let req = to_otlp(&[s1.clone(), s2.clone(), s3.clone()]);
        assert_eq!(req.resource_spans.len(), 2, "one resource per origin");
        let json = serde_json::to_vec(&req).unwrap();
        let back = crate::otlp_json::decode(&json).unwrap();
        let mut spans = from_otlp(&back);
        spans.sort_by_key(|s| s.span_id);
        assert_eq!(spans, vec![s1, s2, s3]);
    }
}
