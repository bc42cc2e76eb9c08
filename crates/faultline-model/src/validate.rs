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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value_too_large(v: &AnyValue, max: usize, depth: usize) -> Option<usize> {
    match &v.value {
        Some(Value::StringValue(s)) if s.len() > max => Some(s.len()),
        Some(Value::BytesValue(b)) if b.len() > max => Some(b.len()),
        Some(Value::ArrayValue(a)) if depth < 8 => a
            .values
            .iter()
            .find_map(|v| value_too_large(v, max, depth + 1)),
        Some(Value::KvlistValue(kv)) if depth < 8 => kv.values.iter().find_map(|kv| {
            kv.value
                .as_ref()
                .and_then(|v| value_too_large(v, max, depth + 1))
        }),
        _ => None,
    }
}

fn check_attrs(attrs: &[KeyValue], what: &str, limits: &Limits) -> Result<(), String> {
    for kv in attrs {
        if let Some(size) = kv
            .value
            .as_ref()
            .and_then(|v| value_too_large(v, limits.max_attribute_value_bytes, 0))
        {
            return Err(format!(
                "{what} attribute {:?} is {size} bytes, over the limit of {} (raise limits.max_attribute_value_bytes)",
                truncate(&kv.key, 64),
                limits.max_attribute_value_bytes
            ));
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

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|b| *b != 0)
}

fn check_span(span: &Span, limits: &Limits) -> Result<(), String> {
    if !valid_id(&span.trace_id, 16) {
        return Err(format!(
            "trace id {:?} is not 16 bytes or is all zero",
            hex(&span.trace_id)
        ));
    }
    if !valid_id(&span.span_id, 8) {
        return Err(format!(
            "span id {:?} is not 8 bytes or is all zero",
            hex(&span.span_id)
        ));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(format!(
            "parent span id {:?} is not 8 bytes",
            hex(&span.parent_span_id)
        ));
    }
    if span.end_time_unix_nano != 0 && span.end_time_unix_nano < span.start_time_unix_nano {
        return Err(format!(
            "end time {} is before start time {}",
            span.end_time_unix_nano, span.start_time_unix_nano
        ));
    }
    if span.name.len() > limits.max_span_name_bytes {
        return Err(format!(
            "name is {} bytes, over the limit of {}",
            span.name.len(),
            limits.max_span_name_bytes
        ));
    }
    if span.attributes.len() > limits.max_attributes_per_span {
        return Err(format!(
            "{} attributes, over the limit of {}",
            span.attributes.len(),
            limits.max_attributes_per_span
        ));
    }
    check_attrs(&span.attributes, "span", limits)?;
    for e in &span.events {
        check_attrs(&e.attributes, "event", limits)?;
    }
    for l in &span.links {
        if !valid_id(&l.trace_id, 16) || !valid_id(&l.span_id, 8) {
            return Err(format!(
                "link to {:?}/{:?} has a malformed trace or span id",
                hex(&l.trace_id),
                hex(&l.span_id)
            ));
        }
        check_attrs(&l.attributes, "link", limits)?;
    }
    Ok(())
}

/// Removes invalid spans from `req` in place and reports what happened. Allocates
/// nothing when every span is valid.
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

    fn kv(k: &str, s: String) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(s)),
            }),
            ..KeyValue::default()
        }
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

    #[test]
    fn all_valid_is_untouched() {
        let mut r = req(vec![good(1), good(2)]);
        let before = r.clone();
        let v = validate_and_filter(&mut r, &Limits::default());
        assert_eq!(
            v,
            Validation {
                accepted_spans: 2,
                ..Validation::default()
            }
        );
        assert_eq!(r, before);
    }

    #[test]
    fn each_rule_rejects_and_keeps_the_rest() {
        let limits = Limits {
            max_attribute_value_bytes: 16,
            max_attributes_per_span: 3,
            max_span_name_bytes: 8,
        };
        let bad: Vec<(&str, Span)> = vec![
            (
                "trace id",
                Span {
                    trace_id: vec![1; 15],
                    ..good(2)
                },
            ),
            (
                "trace id",
                Span {
                    trace_id: vec![0; 16],
                    ..good(2)
                },
            ),
            (
                "span id",
                Span {
                    span_id: vec![0; 8],
                    ..good(2)
                },
            ),
            (
                "span id",
                Span {
                    span_id: vec![1; 9],
                    ..good(2)
                },
            ),
            (
                "parent span id",
                Span {
                    parent_span_id: vec![1; 4],
                    ..good(2)
                },
            ),
            (
                "before start",
                Span {
                    end_time_unix_nano: 5,
                    ..good(2)
                },
            ),
            (
                "name is",
                Span {
                    name: "x".repeat(9),
                    ..good(2)
                },
            ),
            (
                "attributes, over",
                Span {
                    attributes: (0..4).map(|i| kv(&format!("k{i}"), "v".into())).collect(),
                    ..good(2)
                },
            ),
            (
                "limits.max_attribute_value_bytes",
                Span {
                    attributes: vec![kv("big", "x".repeat(17))],
                    ..good(2)
                },
            ),
            (
                "event attribute",
                Span {
                    events: vec![Event {
                        attributes: vec![kv("e", "x".repeat(17))],
                        ..Event::default()
                    }],
                    ..good(2)
                },
            ),
            (
                "link",
                Span {
                    links: vec![Link {
                        trace_id: vec![1; 3],
                        span_id: vec![1; 8],
                        ..Link::default()
                    }],
                    ..good(2)
                },
            ),
        ];
        for (needle, span) in bad {
            let mut r = req(vec![good(1), span]);
            let v = validate_and_filter(&mut r, &limits);
            assert_eq!((v.accepted_spans, v.rejected_spans), (1, 1), "{needle}");
            assert!(v.modified);
            assert!(v.reasons[0].contains(needle), "{needle}: {}", v.reasons[0]);
            assert!(v.reasons[0].starts_with("span 1 "), "{}", v.reasons[0]);
            assert_eq!(crate::span_count(&r), 1);
        }
    }

    #[test]
    fn bad_resource_rejects_its_spans_and_empty_groups_go() {
        let limits = Limits {
            max_attribute_value_bytes: 16,
            ..Limits::default()
        };
        let mut r = req(vec![good(1), good(2)]);
        r.resource_spans[0].resource = Some(Resource {
            attributes: vec![kv("huge", "y".repeat(100))],
            ..Resource::default()
        });
        let mut other = req(vec![good(3)]);
        r.resource_spans.push(other.resource_spans.remove(0));
        let v = validate_and_filter(&mut r, &limits);
        assert_eq!((v.accepted_spans, v.rejected_spans), (1, 2));
        assert_eq!(r.resource_spans.len(), 1);
        assert!(v.reasons[0].contains("resource attribute \"huge\""));
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
