//! Proptest strategies for OTLP requests as encoders write them (test builds only):
//! shared by the direct decoder's and the intake checker's property tests.

use proptest::prelude::*;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::ExportTraceServiceRequest;
use crate::otlp::common::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList};
use crate::otlp::resource::Resource;
use crate::otlp::trace::{self, ResourceSpans, ScopeSpans, Status};

/// A length-delimited field `tag` holding `bytes`.
pub(crate) fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z.]{1,12}", "[ -~é☃]{0,40}",]
}

pub(crate) fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("service.name".to_string()),
        Just("http.method".to_string()),
        Just("user.id".to_string()),
        Just(crate::sampling::TRACESTATE_ATTR.to_string()),
        text(),
    ]
}

pub(crate) fn any_value() -> impl Strategy<Value = Option<AnyValue>> {
    use crate::otlp::common::any_value::Value;
    let leaf = prop_oneof![
        text().prop_map(Value::StringValue),
        any::<bool>().prop_map(Value::BoolValue),
        any::<i64>().prop_map(Value::IntValue),
        (-1e12f64..1e12).prop_map(Value::DoubleValue),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(Value::BytesValue),
        any::<i32>().prop_map(Value::StringValueStrindex),
    ];
    let value = leaf.prop_recursive(3, 12, 3, |inner| {
        let item = proptest::option::of(inner).prop_map(|value| AnyValue { value });
        prop_oneof![
            proptest::collection::vec(item.clone(), 0..3)
                .prop_map(|values| Value::ArrayValue(ArrayValue { values })),
            proptest::collection::vec((key(), item), 0..3).prop_map(|kvs| {
                Value::KvlistValue(KeyValueList {
                    values: kvs
                        .into_iter()
                        .map(|(key, v)| KeyValue {
                            key,
                            value: Some(v),
                            ..KeyValue::default()
                        })
                        .collect(),
                })
            }),
        ]
    });
    proptest::option::of(proptest::option::of(value).prop_map(|value| AnyValue { value }))
}

pub(crate) fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    proptest::collection::vec(
        (key(), any_value()).prop_map(|(key, value)| KeyValue {
            key,
            value,
            ..KeyValue::default()
        }),
        0..5,
    )
}

/// Ids mostly of the right length, sometimes not (such spans and links are left out).
pub(crate) fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), len),
        1 => Just(vec![0u8; len]),
        1 => proptest::collection::vec(any::<u8>(), 0..len + 2),
    ]
}

pub(crate) fn span() -> impl Strategy<Value = trace::Span> {
    (
        (
            id(16),
            id(8),
            id(8),
            prop_oneof![Just(String::new()), text()],
        ),
        (text(), -1i32..7, any::<u64>(), any::<u64>()),
        attributes(),
        proptest::collection::vec((any::<u64>(), text(), attributes()), 0..3),
        proptest::collection::vec((id(16), id(8), attributes()), 0..2),
        proptest::option::of((text(), -1i32..4)),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent, trace_state),
                (name, kind, start, end),
                attributes,
                events,
                links,
                status,
            )| {
                trace::Span {
                    trace_id,
                    span_id,
                    parent_span_id: parent,
                    trace_state,
                    name,
                    kind,
                    start_time_unix_nano: start,
                    end_time_unix_nano: end,
                    attributes,
                    events: events
                        .into_iter()
                        .map(|(time_unix_nano, name, attributes)| trace::span::Event {
                            time_unix_nano,
                            name,
                            attributes,
                            dropped_attributes_count: 1,
                        })
                        .collect(),
                    links: links
                        .into_iter()
                        .map(|(trace_id, span_id, attributes)| trace::span::Link {
                            trace_id,
                            span_id,
                            attributes,
                            flags: 1,
                            ..trace::span::Link::default()
                        })
                        .collect(),
                    status: status.map(|(message, code)| Status { message, code }),
                    flags: 3,
                    dropped_attributes_count: 2,
                    ..trace::Span::default()
                }
            },
        )
}

pub(crate) fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope = (
        proptest::option::of((text(), text(), attributes())),
        proptest::collection::vec(span(), 0..4),
    )
        .prop_map(|(scope, spans)| ScopeSpans {
            scope: scope.map(|(name, version, attributes)| InstrumentationScope {
                name,
                version,
                attributes,
                dropped_attributes_count: 0,
            }),
            spans,
            schema_url: "https://opentelemetry.io/schemas/1.24.0".into(),
        });
    let rs = (
        proptest::option::of(attributes()),
        proptest::collection::vec(scope, 0..3),
    )
        .prop_map(|(resource, scope_spans)| ResourceSpans {
            resource: resource.map(|attributes| Resource {
                attributes,
                ..Resource::default()
            }),
            scope_spans,
            schema_url: String::new(),
        });
    proptest::collection::vec(rs, 0..3)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}
