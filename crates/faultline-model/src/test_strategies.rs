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

/// A field of `number` holding the varint `v`.
pub(crate) fn varint_field(number: u32, v: u64) -> Vec<u8> {
    let mut b = Vec::new();
    encode_key(number, WireType::Varint, &mut b);
    encode_varint(v, &mut b);
    b
}

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `KeyValue` bodies in many forms, each with whether it is the plain form (key, then
/// a value of one string, bool, int, double or nothing) that the decoder and intake's walk read without walking
/// its fields.
pub(crate) fn key_value_forms() -> Vec<(&'static str, Vec<u8>, bool)> {
    let key = field(1, b"http.method");
    let text = |t: &[u8]| field(2, &field(1, t));
    let double = cat(&[&[0x21], &2.5f64.to_le_bytes()]);
    let long_key = vec![b'k'; 200];
    let long_value = vec![b'v'; 300];
    vec![
        ("string", cat(&[&key, &text(b"GET")]), true),
        ("empty string", cat(&[&key, &text(b"")]), true),
        ("empty key", cat(&[&field(1, b""), &text(b"GET")]), true),
        ("bool", cat(&[&key, &field(2, &varint_field(2, 1))]), true),
        (
            "bool of 2",
            cat(&[&key, &field(2, &varint_field(2, 2))]),
            true,
        ),
        (
            "bool false",
            cat(&[&key, &field(2, &varint_field(2, 0))]),
            true,
        ),
        (
            "negative int",
            cat(&[&key, &field(2, &varint_field(3, -5i64 as u64))]),
            true,
        ),
        ("int", cat(&[&key, &field(2, &varint_field(3, 300))]), true),
        ("double", cat(&[&key, &field(2, &double)]), true),
        ("empty value", cat(&[&key, &field(2, b"")]), true),
        (
            "long key and value",
            cat(&[&field(1, &long_key), &text(&long_value)]),
            true,
        ),
        (
            "multi-byte utf-8",
            cat(&[&field(1, "clé".as_bytes()), &text("€".as_bytes())]),
            true,
        ),
        ("no value", key.clone(), false),
        ("no key", text(b"GET"), false),
        ("nothing", Vec::new(), false),
        ("value first", cat(&[&text(b"GET"), &key]), false),
        (
            "key twice",
            cat(&[&key, &field(1, b"other"), &text(b"GET")]),
            false,
        ),
        (
            "value twice",
            cat(&[&key, &text(b"GET"), &text(b"PUT")]),
            false,
        ),
        (
            "two kinds in one value",
            cat(&[
                &key,
                &field(2, &cat(&[&field(1, b"GET"), &varint_field(3, 7)])),
            ]),
            false,
        ),
        (
            "unknown field after",
            cat(&[&key, &text(b"GET"), &varint_field(3, 1)]),
            false,
        ),
        (
            "unknown field in value",
            cat(&[
                &key,
                &field(2, &cat(&[&field(1, b"GET"), &varint_field(9, 1)])),
            ]),
            false,
        ),
        (
            "bytes value",
            cat(&[&key, &field(2, &field(7, b"\x00\xff"))]),
            false,
        ),
        (
            "array value",
            cat(&[&key, &field(2, &field(5, &field(1, &field(1, b"a"))))]),
            false,
        ),
        (
            "kvlist value",
            cat(&[
                &key,
                &field(
                    2,
                    &field(6, &field(1, &cat(&[&field(1, b"a"), &text(b"b")]))),
                ),
            ]),
            false,
        ),
        (
            "string index value",
            cat(&[&key, &field(2, &varint_field(8, 3))]),
            false,
        ),
        (
            "key not utf-8",
            cat(&[&field(1, b"\xff\xfe"), &text(b"GET")]),
            false,
        ),
        ("value not utf-8", cat(&[&key, &text(b"\xc3")]), false),
        (
            "key of the wrong wire type",
            cat(&[&varint_field(1, 5), &text(b"GET")]),
            false,
        ),
        (
            "string of the wrong wire type",
            cat(&[&key, &field(2, &varint_field(1, 5))]),
            false,
        ),
        (
            "double cut short",
            cat(&[&key, &field(2, &[0x21, 0, 0, 0, 0])]),
            false,
        ),
        (
            "int varint too long",
            cat(&[&key, &field(2, &cat(&[&[0x18], &[0xff; 10], &[1]]))]),
            false,
        ),
        (
            "value length past the end",
            cat(&[&key, &[0x12, 9, 0x0a, 3]]),
            false,
        ),
        (
            "string length past the end",
            cat(&[&key, &field(2, &[0x0a, 9, b'a'])]),
            false,
        ),
        (
            "key with a long field key",
            cat(&[&[0x8a, 0x00, 0x00], &text(b"GET")]),
            false,
        ),
    ]
}

/// A request of one span whose only attribute is the `KeyValue` body `kv`.
pub(crate) fn request_with_attribute(kv: &[u8]) -> Vec<u8> {
    let span = cat(&[&field(1, &[7; 16]), &field(2, &[9; 8]), &field(9, kv)]);
    field(1, &field(2, &field(2, &span)))
}
