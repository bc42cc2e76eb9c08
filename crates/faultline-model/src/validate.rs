//! The span rules intake enforces before acknowledging, and the partial-success report.
//!
//! A span is refused when its ids are malformed (trace id not 16 bytes or all zero, span
//! id not 8 bytes or all zero, parent id neither empty nor 8 bytes, link ids likewise),
//! when it ends before it starts, when its name or an attribute value is larger than the
//! limits, or when it has too many attributes. A resource whose attributes break a limit
//! refuses all its spans. Valid spans of the same request are kept.

use crate::ExportTraceServiceRequest;
use crate::otlp::common::{AnyValue, KeyValue, any_value::Value};
use crate::otlp::trace::Span;

/// Size limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest string or bytes attribute value (nested values included).
    pub max_attribute_value_bytes: usize,
    /// Most attributes on one span.
    pub max_attributes_per_span: usize,
    /// Longest span name.
    pub max_span_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_attribute_value_bytes: 256 << 10,
            max_attributes_per_span: 1024,
            max_span_name_bytes: 4 << 10,
        }
    }
}

/// What validation kept and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// Spans kept.
    pub accepted_spans: u64,
    /// Spans removed.
    pub rejected_spans: u64,
    /// Reasons for the first ten removed spans.
    pub reasons: Vec<String>,
    /// Whether the request was changed.
    pub modified: bool,
}

const MAX_REASONS: usize = 10;

/// Nesting depth of array/kvlist attribute values beyond which a value is refused. The
/// protobuf and JSON decoders cannot produce deeper values (their recursion limits stop
/// at about 50), so this only bounds the recursion for hand-built requests.
pub(crate) const MAX_VALUE_DEPTH: usize = 64;

/// Lowercase hex of an id, at most 32 bytes of it (ids in requests can be any length).
fn hex(b: &[u8]) -> String {
    let mut s = crate::hex(&b[..b.len().min(32)]);
    if b.len() > 32 {
        s.push_str("...");
    }
    s
}

enum BadValue {
    TooLarge(usize),
    TooDeep,
}

fn check_value(v: &AnyValue, max: usize, depth: usize) -> Result<(), BadValue> {
    match &v.value {
        Some(Value::StringValue(s)) if s.len() > max => Err(BadValue::TooLarge(s.len())),
        Some(Value::BytesValue(b)) if b.len() > max => Err(BadValue::TooLarge(b.len())),
        Some(Value::ArrayValue(_) | Value::KvlistValue(_)) if depth >= MAX_VALUE_DEPTH => {
            Err(BadValue::TooDeep)
        }
        Some(Value::ArrayValue(a)) => a
            .values
            .iter()
            .try_for_each(|v| check_value(v, max, depth + 1)),
        Some(Value::KvlistValue(kv)) => kv.values.iter().try_for_each(|kv| match &kv.value {
            Some(v) => check_value(v, max, depth + 1),
            None => Ok(()),
        }),
        _ => Ok(()),
    }
}

fn check_attrs(attrs: &[KeyValue], what: &str, limits: &Limits) -> Result<(), String> {
    let max = limits.max_attribute_value_bytes;
    for kv in attrs {
        let Some(v) = &kv.value else { continue };
        match check_value(v, max, 0) {
            Ok(()) => {}
            Err(BadValue::TooLarge(size)) => {
                return Err(format!(
                    "{what} attribute {:?} is {size} bytes, over the limit of {max}; shorten it or raise limits.max_attribute_value_bytes",
                    truncate(&kv.key, 64),
                ));
            }
            Err(BadValue::TooDeep) => {
                return Err(format!(
                    "{what} attribute {:?} nests arrays or kvlists more than {MAX_VALUE_DEPTH} deep; flatten it",
                    truncate(&kv.key, 64),
                ));
            }
        }
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Checks an id's length and that it is not all zero; `what` names it in the message.
pub(crate) fn check_id(id: &[u8], len: usize, what: &str) -> Result<(), String> {
    if id.len() != len {
        return Err(format!(
            "{what} {:?} is not {len} bytes (it has {})",
            hex(id),
            id.len()
        ));
    }
    if id.iter().all(|b| *b == 0) {
        return Err(format!("{what} is all zero; generate a random non-zero id"));
    }
    Ok(())
}

/// What the rules look at in a span besides its attribute values, events and links.
pub(crate) struct Shape<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub start_ns: u64,
    pub end_ns: u64,
    pub name_bytes: usize,
    pub attributes: usize,
}

/// The rules on a span's ids, times, name length and attribute count.
pub(crate) fn check_shape(span: &Shape<'_>, limits: &Limits) -> Result<(), String> {
    check_id(span.trace_id, 16, "trace id")?;
    check_id(span.span_id, 8, "span id")?;
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(format!(
            "parent span id {:?} is not 8 bytes (it has {}); leave it empty for a root span",
            hex(span.parent_span_id),
            span.parent_span_id.len()
        ));
    }
    if span.end_ns != 0 && span.end_ns < span.start_ns {
        return Err(format!(
            "end time {} is before start time {}",
            span.end_ns, span.start_ns
        ));
    }
    if span.name_bytes > limits.max_span_name_bytes {
        return Err(format!(
            "name is {} bytes, over the limit of {}; shorten it or raise limits.max_span_name_bytes",
            span.name_bytes, limits.max_span_name_bytes
        ));
    }
    if span.attributes > limits.max_attributes_per_span {
        return Err(format!(
            "{} attributes, over the limit of {}; drop some or raise limits.max_attributes_per_span",
            span.attributes, limits.max_attributes_per_span
        ));
    }
    Ok(())
}

fn check_span(span: &Span, limits: &Limits) -> Result<(), String> {
    check_shape(
        &Shape {
            trace_id: &span.trace_id,
            span_id: &span.span_id,
            parent_span_id: &span.parent_span_id,
            start_ns: span.start_time_unix_nano,
            end_ns: span.end_time_unix_nano,
            name_bytes: span.name.len(),
            attributes: span.attributes.len(),
        },
        limits,
    )?;
    check_attrs(&span.attributes, "span", limits)?;
    for e in &span.events {
        check_attrs(&e.attributes, "event", limits)?;
    }
    for l in &span.links {
        check_id(&l.trace_id, 16, "link trace id")?;
        check_id(&l.span_id, 8, "link span id")?;
        check_attrs(&l.attributes, "link", limits)?;
    }
    Ok(())
}

/// Removes invalid spans from `req` in place (and the scope and resource groups left
/// empty by that) and reports what happened. Reasons name the span by its index in the
/// request and its span id. Allocates nothing when every span is valid.
pub fn validate_and_filter(req: &mut ExportTraceServiceRequest, limits: &Limits) -> Validation {
    let mut v = Validation::default();
    let mut index = 0usize;
    for rs in &mut req.resource_spans {
        let resource_err = rs
            .resource
            .as_ref()
            .and_then(|r| check_attrs(&r.attributes, "resource", limits).err());
        for ss in &mut rs.scope_spans {
            let scope_err = ss
                .scope
                .as_ref()
                .and_then(|s| check_attrs(&s.attributes, "scope", limits).err());
            let base = index;
            index += ss.spans.len();
            let mut i = 0usize;
            ss.spans.retain(|span| {
                let n = base + i;
                i += 1;
                let err = match resource_err.as_ref().or(scope_err.as_ref()) {
                    Some(e) => Err(e.clone()),
                    None => check_span(span, limits),
                };
                match err {
                    Ok(()) => {
                        v.accepted_spans += 1;
                        true
                    }
                    Err(reason) => {
                        v.rejected_spans += 1;
                        if v.reasons.len() < MAX_REASONS {
                            v.reasons
                                .push(format!("span {n} ({}): {reason}", hex(&span.span_id)));
                        }
                        false
                    }
                }
            });
        }
    }
    if v.rejected_spans > 0 {
        v.modified = true;
        for rs in &mut req.resource_spans {
            rs.scope_spans.retain(|ss| !ss.spans.is_empty());
        }
        req.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::otlp::common::{ArrayValue, InstrumentationScope, KeyValueList};
    use crate::otlp::resource::Resource;
    use crate::otlp::trace::{ResourceSpans, ScopeSpans, span::Event, span::Link};

    fn good(n: u8) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![n.max(1); 8],
            name: "op".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            ..Span::default()
        }
    }

    fn any(v: Value) -> AnyValue {
        AnyValue { value: Some(v) }
    }

    fn kv_value(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(any(v)),
            ..KeyValue::default()
        }
    }

    fn kv(k: &str, s: String) -> KeyValue {
        kv_value(k, Value::StringValue(s))
    }

    fn req(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource::default()),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn small() -> Limits {
        Limits {
            max_attribute_value_bytes: 16,
            max_attributes_per_span: 3,
            max_span_name_bytes: 8,
        }
    }

    /// Validates `[good(1), bad]` and returns the reason `bad` was refused, checking that
    /// the good span is kept.
    fn refused(bad: Span, limits: &Limits) -> String {
        let mut r = req(vec![good(1), bad]);
        let v = validate_and_filter(&mut r, limits);
        assert_eq!(
            (v.accepted_spans, v.rejected_spans),
            (1, 1),
            "{:?}",
            v.reasons
        );
        assert!(v.modified);
        assert_eq!(v.reasons.len(), 1);
        assert_eq!(crate::span_count(&r), 1);
        assert_eq!(r.resource_spans[0].scope_spans[0].spans[0], good(1));
        v.reasons[0].clone()
    }

    fn nested(depth: usize, leaf: Value) -> Value {
        (0..depth).fold(leaf, |v, i| {
            if i % 2 == 0 {
                Value::ArrayValue(ArrayValue {
                    values: vec![any(Value::BoolValue(true)), any(v)],
                })
            } else {
                Value::KvlistValue(KeyValueList {
                    values: vec![kv_value("inner", v)],
                })
            }
        })
    }

    #[test]
    fn defaults() {
        let l = Limits::default();
        assert_eq!(l.max_attribute_value_bytes, 256 * 1024);
        assert_eq!(l.max_attributes_per_span, 1024);
        assert_eq!(l.max_span_name_bytes, 4 * 1024);
    }

    #[test]
    fn all_valid_is_untouched() {
        let root = Span {
            parent_span_id: Vec::new(),
            end_time_unix_nano: 0, // still running is fine
            ..good(2)
        };
        let child = Span {
            parent_span_id: vec![2; 8],
            name: "x".repeat(8),
            attributes: vec![
                kv("a", "y".repeat(16)),
                kv_value("b", nested(10, Value::BytesValue(vec![0; 16]))),
                kv_value("c", Value::IntValue(1)),
            ],
            events: vec![Event {
                attributes: vec![kv("e", "z".repeat(16))],
                ..Event::default()
            }],
            links: vec![Link {
                trace_id: vec![3; 16],
                span_id: vec![3; 8],
                attributes: vec![kv("l", "w".repeat(16))],
                ..Link::default()
            }],
            ..good(3)
        };
        let mut r = req(vec![good(1), root, child]);
        r.resource_spans[0].resource = Some(Resource {
            attributes: vec![kv("service.name", "svc".into())],
            ..Resource::default()
        });
        // Empty groups that were already there are left alone when nothing is removed.
        r.resource_spans.push(ResourceSpans::default());
        let before = r.clone();
        let v = validate_and_filter(&mut r, &small());
        assert_eq!(
            v,
            Validation {
                accepted_spans: 3,
                ..Validation::default()
            }
        );
        assert!(!v.modified);
        assert_eq!(v.reasons.capacity(), 0);
        assert_eq!(r, before);
    }

    #[test]
    fn trace_id_must_be_16_non_zero_bytes() {
        let r = refused(
            Span {
                trace_id: vec![1; 15],
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("trace id \"0101"), "{r}");
        assert!(r.contains("is not 16 bytes (it has 15)"), "{r}");
        let r = refused(
            Span {
                trace_id: vec![0; 16],
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("trace id is all zero"), "{r}");
        let r = refused(
            Span {
                trace_id: Vec::new(),
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("is not 16 bytes (it has 0)"), "{r}");
    }

    #[test]
    fn span_id_must_be_8_non_zero_bytes() {
        let r = refused(
            Span {
                span_id: vec![0; 8],
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("span id is all zero"), "{r}");
        let r = refused(
            Span {
                span_id: vec![2; 9],
                ..good(2)
            },
            &small(),
        );
        assert!(
            r.contains("span id \"020202020202020202\" is not 8 bytes (it has 9)"),
            "{r}"
        );
    }

    #[test]
    fn parent_id_must_be_empty_or_8_bytes() {
        let r = refused(
            Span {
                parent_span_id: vec![1; 4],
                ..good(2)
            },
            &small(),
        );
        assert!(
            r.contains("parent span id \"01010101\" is not 8 bytes (it has 4)"),
            "{r}"
        );
    }

    #[test]
    fn end_must_not_precede_start() {
        let r = refused(
            Span {
                end_time_unix_nano: 5,
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("end time 5 is before start time 10"), "{r}");
    }

    #[test]
    fn name_limit() {
        let r = refused(
            Span {
                name: "x".repeat(9),
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("name is 9 bytes, over the limit of 8"), "{r}");
        assert!(r.contains("raise limits.max_span_name_bytes"), "{r}");
    }

    #[test]
    fn attribute_count_limit() {
        let r = refused(
            Span {
                attributes: (0..4).map(|i| kv(&format!("k{i}"), "v".into())).collect(),
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("4 attributes, over the limit of 3"), "{r}");
        assert!(r.contains("raise limits.max_attributes_per_span"), "{r}");
    }

    #[test]
    fn attribute_value_limit_names_key_size_and_limit() {
        let r = refused(
            Span {
                attributes: vec![kv("big", "x".repeat(17))],
                ..good(2)
            },
            &small(),
        );
        assert!(
            r.ends_with(
                "span attribute \"big\" is 17 bytes, over the limit of 16; shorten it or raise limits.max_attribute_value_bytes"
            ),
            "{r}"
        );
        let r = refused(
            Span {
                attributes: vec![kv_value("blob", Value::BytesValue(vec![0; 20]))],
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("span attribute \"blob\" is 20 bytes"), "{r}");
    }

    #[test]
    fn attribute_value_limit_reaches_nested_values() {
        for depth in [1, 2, 9, 40] {
            let r = refused(
                Span {
                    attributes: vec![kv_value(
                        "deep",
                        nested(depth, Value::StringValue("x".repeat(17))),
                    )],
                    ..good(2)
                },
                &small(),
            );
            assert!(
                r.contains("span attribute \"deep\" is 17 bytes"),
                "{depth}: {r}"
            );
        }
        let r = refused(
            Span {
                attributes: vec![kv_value(
                    "too.deep",
                    nested(MAX_VALUE_DEPTH + 1, Value::BoolValue(true)),
                )],
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("span attribute \"too.deep\" nests"), "{r}");
    }

    #[test]
    fn event_and_link_attributes_are_limited() {
        let r = refused(
            Span {
                events: vec![Event {
                    attributes: vec![kv("e", "x".repeat(17))],
                    ..Event::default()
                }],
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("event attribute \"e\" is 17 bytes"), "{r}");
        let r = refused(
            Span {
                links: vec![Link {
                    trace_id: vec![1; 16],
                    span_id: vec![1; 8],
                    attributes: vec![kv("l", "x".repeat(17))],
                    ..Link::default()
                }],
                ..good(2)
            },
            &small(),
        );
        assert!(r.contains("link attribute \"l\" is 17 bytes"), "{r}");
    }

    #[test]
    fn link_ids_are_checked() {
        let link = |trace_id: Vec<u8>, span_id: Vec<u8>| Span {
            links: vec![Link {
                trace_id,
                span_id,
                ..Link::default()
            }],
            ..good(2)
        };
        let r = refused(link(vec![1; 3], vec![1; 8]), &small());
        assert!(
            r.contains("link trace id \"010101\" is not 16 bytes (it has 3)"),
            "{r}"
        );
        let r = refused(link(vec![1; 16], vec![1; 7]), &small());
        assert!(
            r.contains("link span id \"01010101010101\" is not 8 bytes (it has 7)"),
            "{r}"
        );
        let r = refused(link(vec![1; 16], vec![0; 8]), &small());
        assert!(r.contains("link span id is all zero"), "{r}");
    }

    #[test]
    fn reasons_name_span_index_and_id() {
        let mut r = req(vec![
            good(1),
            Span {
                trace_id: Vec::new(),
                span_id: vec![0xab; 8],
                ..good(2)
            },
        ]);
        let v = validate_and_filter(&mut r, &small());
        assert!(
            v.reasons[0].starts_with("span 1 (abababababababab): trace id"),
            "{}",
            v.reasons[0]
        );
        // Indexes count across resources and scopes; huge ids are clipped.
        let mut r = req(vec![good(1)]);
        r.resource_spans.push(
            req(vec![
                good(1),
                Span {
                    span_id: vec![9; 1000],
                    ..good(1)
                },
            ])
            .resource_spans
            .remove(0),
        );
        let v = validate_and_filter(&mut r, &small());
        assert!(v.reasons[0].starts_with("span 2 (0909"), "{}", v.reasons[0]);
        assert!(v.reasons[0].len() < 300, "{}", v.reasons[0]);
    }

    #[test]
    fn bad_resource_rejects_its_spans_and_empty_groups_go() {
        let mut r = req(vec![good(1), good(2)]);
        r.resource_spans[0].resource = Some(Resource {
            attributes: vec![kv("huge", "y".repeat(100))],
            ..Resource::default()
        });
        let mut other = req(vec![good(3)]);
        r.resource_spans.push(other.resource_spans.remove(0));
        let v = validate_and_filter(&mut r, &small());
        assert_eq!((v.accepted_spans, v.rejected_spans), (1, 2));
        assert!(v.modified);
        assert_eq!(r.resource_spans.len(), 1);
        assert_eq!(r.resource_spans[0].scope_spans[0].spans[0], good(3));
        assert_eq!(v.reasons.len(), 2);
        assert!(
            v.reasons[0].contains(
                "resource attribute \"huge\" is 100 bytes, over the limit of 16; shorten it or raise limits.max_attribute_value_bytes"
            ),
            "{}",
            v.reasons[0]
        );
        assert!(v.reasons[1].starts_with("span 1 "), "{}", v.reasons[1]);
    }

    #[test]
    fn bad_scope_rejects_its_spans_only() {
        let mut r = req(vec![good(1)]);
        r.resource_spans[0].scope_spans.push(ScopeSpans {
            scope: Some(InstrumentationScope {
                attributes: vec![kv("s", "x".repeat(17))],
                ..InstrumentationScope::default()
            }),
            spans: vec![good(2)],
            ..ScopeSpans::default()
        });
        let v = validate_and_filter(&mut r, &small());
        assert_eq!((v.accepted_spans, v.rejected_spans), (1, 1));
        assert!(
            v.reasons[0].contains("scope attribute \"s\""),
            "{}",
            v.reasons[0]
        );
        assert_eq!(r.resource_spans[0].scope_spans.len(), 1);
    }

    #[test]
    fn valid_spans_between_invalid_ones_keep_their_order() {
        let bad = || Span {
            span_id: vec![0; 8],
            ..good(1)
        };
        let mut r = req(vec![bad(), good(1), bad(), good(2), good(3), bad()]);
        let v = validate_and_filter(&mut r, &small());
        assert_eq!((v.accepted_spans, v.rejected_spans), (3, 3));
        assert_eq!(
            r.resource_spans[0].scope_spans[0].spans,
            vec![good(1), good(2), good(3)]
        );
        let idx: Vec<&str> = v.reasons.iter().map(|r| &r[..7]).collect();
        assert_eq!(idx, ["span 0 ", "span 2 ", "span 5 "]);
    }

    #[test]
    fn reasons_are_capped() {
        let mut r = req((0..50)
            .map(|_| Span {
                trace_id: vec![],
                ..good(1)
            })
            .collect());
        let v = validate_and_filter(&mut r, &Limits::default());
        assert_eq!(v.rejected_spans, 50);
        assert_eq!(v.reasons.len(), MAX_REASONS);
        assert!(r.resource_spans.is_empty());
    }
}
