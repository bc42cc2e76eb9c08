//! Span and trace types shared by every faultline crate, and conversion into them.
//!
//! faultline's in-flight representation of spans is OTLP's own protobuf model (re-exported
//! from `opentelemetry-proto`), so OTLP requests need no conversion and everything else
//! (OTLP/JSON, Zipkin v2) is converted into it at the edge:
//! - [`otlp_json`]: OTLP/JSON decoding and response encoding;
//! - [`zipkin`]: Zipkin v2 JSON to OTLP;
//! - [`validate`]: the span rules intake enforces before acknowledging;
//! - [`otlp_check`]: the same rules checked on a protobuf body without decoding it (the
//!   intake's common case: every span valid, the body stored as it came);
//! - [`health`]: the status report's vocabulary (each stage judges its own parts);
//! - [`envelope`]: the WAL payload around each accepted request (written by intake, read
//!   by the pipeline and the operator tools);
//! - [`pending`]: which acknowledged WAL records hold which traces until they are
//!   indexed (intake adds, the pipeline removes, trace reads look there);
//! - [`sampling`]: adjusted counts (how many spans a sampled span stands for);
//! - [`semconv`]: OpenTelemetry semantic conventions tables (generated).
//!
//! **Invariant:** this crate does no I/O.

pub mod duration;
pub mod envelope;
pub mod health;
pub mod key;
mod origins;
pub mod otlp_check;
pub mod otlp_decode;
pub mod otlp_json;
pub mod pending;
pub mod sampling;
pub mod semconv;
pub mod span;
#[cfg(test)]
mod test_strategies;
pub mod validate;
pub mod zipkin;

pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// OTLP message types.
pub mod otlp {
    pub use opentelemetry_proto::tonic::common::v1 as common;
    pub use opentelemetry_proto::tonic::resource::v1 as resource;
    pub use opentelemetry_proto::tonic::trace::v1 as trace;
}

use otlp::common::any_value::Value;

/// Errors of the decoders.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The body is not JSON at all (a syntax error, with serde's position).
    #[error("invalid OTLP JSON at line {line} column {column}: {message}")]
    OtlpJsonSyntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the JSON parser expected or found.
        message: String,
    },
    /// The body is JSON but not a valid OTLP/JSON `ExportTraceServiceRequest`; the message
    /// names the offending field.
    #[error("invalid OTLP JSON: {0}")]
    OtlpJson(String),
    /// The body is not valid Zipkin v2 JSON.
    #[error("invalid Zipkin v2 JSON: {0}")]
    ZipkinJson(String),
}

/// The service name used when a resource has none, as OpenTelemetry SDKs do.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Lowercase hex of bytes (trace and span ids in JSON, logs and messages).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Unix nanoseconds as RFC 3339 in UTC with milliseconds (`2026-11-29T10:00:00.250Z`).
pub fn rfc3339(ns: u64) -> String {
    // A small civil-from-days conversion avoids a date dependency for log and status lines.
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// At most 64 bytes of `s`, quoted, with `...` when cut: for error messages that quote
/// client input.
pub(crate) fn clip(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{:?}...", &s[..end])
    } else {
        format!("{s:?}")
    }
}

/// Number of spans in a request.
pub fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// The `service.name` of a resource, or [`UNKNOWN_SERVICE`].
pub fn service_name(resource: Option<&otlp::resource::Resource>) -> &str {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or(UNKNOWN_SERVICE)
}

/// Sorted, distinct `service.name`s of the resources in a request (string values only;
/// a resource without one counts as [`UNKNOWN_SERVICE`]).
pub fn service_names(req: &ExportTraceServiceRequest) -> Vec<String> {
    let mut names: Vec<String> = req
        .resource_spans
        .iter()
        .map(|rs| service_name(rs.resource.as_ref()).to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use otlp::common::{AnyValue, KeyValue};
    use otlp::resource::Resource;
    use otlp::trace::{ResourceSpans, ScopeSpans, Span};

    fn resource(service: Option<Value>, spans: usize) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: service
                    .map(|v| KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue { value: Some(v) }),
                        ..KeyValue::default()
                    })
                    .into_iter()
                    .collect(),
                ..Resource::default()
            }),
            scope_spans: vec![
                ScopeSpans {
                    spans: vec![Span::default(); spans],
                    ..ScopeSpans::default()
                },
                ScopeSpans {
                    spans: vec![Span::default()],
                    ..ScopeSpans::default()
                },
            ],
            schema_url: String::new(),
        }
    }

    fn name(s: &str) -> Option<Value> {
        Some(Value::StringValue(s.into()))
    }

    #[test]
    fn rfc3339_in_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_709_210_096_789_000_000),
            "2024-02-29T12:34:56.789Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_795_000_000_123_000_000),
            "2026-11-18T11:06:40.123Z"
        );
    }

    #[test]
    fn counts_spans_across_resources_and_scopes() {
        assert_eq!(span_count(&ExportTraceServiceRequest::default()), 0);
        let req = ExportTraceServiceRequest {
            resource_spans: vec![resource(name("a"), 2), resource(None, 0)],
        };
        assert_eq!(span_count(&req), 4);
    }

    #[test]
    fn service_names_are_sorted_distinct_with_unknown_fallback() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                resource(name("checkout"), 1),
                resource(name("api"), 1),
                resource(name("checkout"), 3),
                resource(None, 1),
                resource(Some(Value::IntValue(7)), 1),
                ResourceSpans::default(),
            ],
        };
        assert_eq!(
            service_names(&req),
            vec!["api".to_string(), "checkout".into(), UNKNOWN_SERVICE.into()]
        );
        assert!(service_names(&ExportTraceServiceRequest::default()).is_empty());
        assert_eq!(service_name(None), UNKNOWN_SERVICE);
    }
}
