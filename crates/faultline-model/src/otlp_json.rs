//! OTLP/JSON (<https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding>):
//! lowerCamelCase names, hex trace and span ids, enums as integers, 64-bit integers as
//! strings or numbers, unknown fields ignored. Decoding uses `opentelemetry-proto`'s serde
//! support, which implements these rules; the tests below hold it to them.

use crate::{ExportTraceServiceRequest, ExportTraceServiceResponse, ModelError};

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`.
pub fn decode(body: &[u8]) -> Result<ExportTraceServiceRequest, ModelError> {
    serde_json::from_slice(body).map_err(|e| ModelError::OtlpJson(e.to_string()))
}

/// Encodes an `ExportTraceServiceResponse` as OTLP/JSON (`{}` when empty).
pub fn encode_response(resp: &ExportTraceServiceResponse) -> Vec<u8> {
    match &resp.partial_success {
        None => b"{}".to_vec(),
        Some(p) => serde_json::json!({
            "partialSuccess": {
                "rejectedSpans": p.rejected_spans.to_string(),
                "errorMessage": p.error_message,
            }
        })
        .to_string()
        .into_bytes(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ExportTracePartialSuccess;
    use crate::otlp::common::any_value::Value;

    const EXAMPLE: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
          "scope": {"name": "my.library", "version": "1.0.0"},
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
              {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}}
            ],
            "events": [{"timeUnixNano": "1544712660500000000", "name": "retry", "attributes": [{"key": "attempt", "value": {"intValue": "2"}}]}],
            "links": [{"traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175"}],
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

    #[test]
    fn decodes_the_spec_rules() {
        let req = decode(EXAMPLE.as_bytes()).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.trace_id[0], 0x5b);
        assert_eq!(
            span.span_id,
            vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
        );
        assert_eq!(span.parent_span_id.len(), 8);
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
                .unwrap()
        };
        assert_eq!(attr("as.string"), Value::IntValue(42));
        assert_eq!(attr("as.number"), Value::IntValue(42));
        assert_eq!(attr("flag"), Value::BoolValue(true));
        assert_eq!(attr("ratio"), Value::DoubleValue(0.5));
        assert!(matches!(attr("list"), Value::ArrayValue(a) if a.values.len() == 2));
        assert!(matches!(attr("map"), Value::KvlistValue(m) if m.values[0].key == "k"));
        assert_eq!(span.events[0].name, "retry");
        assert_eq!(span.links[0].span_id.len(), 8);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        let root = &req.resource_spans[0].scope_spans[0].spans[1];
        assert!(root.parent_span_id.is_empty());
        assert_eq!(crate::service_names(&req), vec!["my.service".to_string()]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = decode(b"{\"resourceSpans\": [").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = decode(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid OTLP JSON"), "{e}");
        assert!(decode(b"\"text\"").is_err());
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
        let v: serde_json::Value = serde_json::from_slice(&encode_response(&r)).unwrap();
        assert_eq!(v["partialSuccess"]["rejectedSpans"], "3");
        assert_eq!(v["partialSuccess"]["errorMessage"], "bad ids");
    }
}
