//! Bad input never gets acknowledged and never takes the server down: each malformed
//! request gets a 4xx (or the gRPC equivalent) with a message naming the problem, the WAL
//! gains nothing from it, and a valid request right after it is still accepted.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use prost::Message;

use common::{Server, metric};
use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span};
use faultline_model::{ExportTraceServiceRequest, ExportTraceServiceResponse};

fn span(trace_id: Vec<u8>, attrs: Vec<KeyValue>) -> Span {
    Span {
        trace_id,
        span_id: vec![7; 8],
        name: "op".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        attributes: attrs,
        ..Span::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue("bad-input-test".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            schema_url: String::new(),
        }],
    }
}

fn valid() -> Vec<u8> {
    request(vec![span(vec![1; 16], vec![])]).encode_to_vec()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    message: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_4xx_and_nothing_is_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let big_attr = KeyValue {
        key: "payload".into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue("x".repeat(10 << 20))),
        }),
        ..KeyValue::default()
    };
    let full = valid();
    let cases = vec![
        Case { name: "truncated protobuf", path: "/v1/traces", content_type: "application/x-protobuf", encoding: None,
            body: full[..full.len() - 5].to_vec(), status: 400, message: "not a valid OTLP ExportTraceServiceRequest" },
        Case { name: "wrong content type", path: "/v1/traces", content_type: "text/plain", encoding: None,
            body: full.clone(), status: 415, message: "content type \"text/plain\" is not supported" },
        Case { name: "invalid JSON", path: "/v1/traces", content_type: "application/json", encoding: None,
            body: b"{\"resourceSpans\": [".to_vec(), status: 400, message: "invalid OTLP JSON" },
        Case { name: "JSON id that is not hex", path: "/v1/traces", content_type: "application/json", encoding: None,
            body: br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not-hex","spanId":"0102030405060708"}]}]}]}"#.to_vec(),
            status: 400, message: "invalid OTLP JSON" },
        Case { name: "trace id of the wrong length", path: "/v1/traces", content_type: "application/x-protobuf", encoding: None,
            body: request(vec![span(vec![1; 15], vec![])]).encode_to_vec(), status: 400, message: "trace id \"010101010101010101010101010101\" is not 16 bytes" },
        Case { name: "JSON span id of the wrong length", path: "/v1/traces", content_type: "application/json", encoding: None,
            body: br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102"}]}]}]}"#.to_vec(),
            status: 400, message: "span id \"0102\" is not 8 bytes" },
        Case { name: "a 10 MB attribute", path: "/v1/traces", content_type: "application/x-protobuf", encoding: None,
            body: request(vec![span(vec![1; 16], vec![big_attr])]).encode_to_vec(), status: 400, message: "max_attribute_value_bytes" },
        Case { name: "oversized body", path: "/v1/traces", content_type: "application/x-protobuf", encoding: None,
            body: vec![0u8; 20 << 20], status: 413, message: "exceeds the limit of 16777216 bytes" },
        Case { name: "gzip bomb", path: "/v1/traces", content_type: "application/x-protobuf", encoding: Some("gzip"),
            body: gzip(&vec![0u8; 200 << 20]), status: 413, message: "decompressed request body exceeds the limit" },
        Case { name: "not gzip", path: "/v1/traces", content_type: "application/x-protobuf", encoding: Some("gzip"),
            body: full.clone(), status: 400, message: "not valid gzip" },
        Case { name: "unsupported encoding", path: "/v1/traces", content_type: "application/x-protobuf", encoding: Some("br"),
            body: full.clone(), status: 415, message: "content encoding \"br\" is not supported" },
        Case { name: "Zipkin: not JSON", path: "/api/v2/spans", content_type: "application/json", encoding: None,
            body: b"[{".to_vec(), status: 400, message: "invalid Zipkin v2 JSON" },
        Case { name: "Zipkin: object instead of array", path: "/api/v2/spans", content_type: "application/json", encoding: None,
            body: b"{}".to_vec(), status: 400, message: "JSON array of spans" },
        Case { name: "Zipkin: ids of the wrong length", path: "/api/v2/spans", content_type: "application/json", encoding: None,
            body: br#"[{"traceId":"abc","id":"0102030405060708","name":"x"}]"#.to_vec(), status: 400, message: "traceId \"abc\" is not 16 or 32 hex characters" },
        Case { name: "Zipkin: protobuf", path: "/api/v2/spans", content_type: "application/x-protobuf", encoding: None,
            body: full.clone(), status: 415, message: "send Zipkin v2 JSON" },
    ];
    let client = common::reqwest_client();
    let mut accepted_valid = 0.0;
    for case in cases {
        let port = if case.path.starts_with("/api/v2") {
            server.zipkin
        } else {
            server.http
        };
        let mut req = client
            .post(format!("http://127.0.0.1:{port}{}", case.path))
            .header("content-type", case.content_type);
        if let Some(enc) = case.encoding {
            req = req.header("content-encoding", enc);
        }
        let resp = req.body(case.body).send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.bytes().await.unwrap();
        // OTLP/HTTP answers errors with google.rpc.Status in the request's encoding.
        let text = if ct.starts_with("application/x-protobuf") {
            #[derive(prost::Message)]
            struct RpcStatus {
                #[prost(int32, tag = "1")]
                code: i32,
                #[prost(string, tag = "2")]
                message: String,
            }
            RpcStatus::decode(&body[..]).unwrap().message
        } else if ct.starts_with("application/json") {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                v["code"],
                if status == 413 { 8 } else { 3 },
                "{}: google.rpc.Status code",
                case.name
            );
            v["message"].as_str().unwrap().to_string()
        } else {
            String::from_utf8_lossy(&body).into_owned()
        };
        assert_eq!(status, case.status, "{}: {text}", case.name);
        assert!(
            text.contains(case.message),
            "{}: message {text:?} should contain {:?}",
            case.name,
            case.message
        );
        let m = server.metrics();
        assert_eq!(
            metric(&m, "faultline_wal_committed_seq"),
            accepted_valid,
            "{}: nothing acknowledged",
            case.name
        );
        // The server keeps serving.
        let ok = client
            .post(format!("{}/v1/traces", server.http_url()))
            .header("content-type", "application/x-protobuf")
            .body(valid())
            .send()
            .await
            .unwrap();
        assert_eq!(
            ok.status().as_u16(),
            200,
            "{}: valid request after it",
            case.name
        );
        accepted_valid += 1.0;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_keeps_valid_spans_and_names_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("data"), &[]);
    let body = request(vec![
        span(vec![2; 16], vec![]),
        span(vec![0; 16], vec![]),
        span(vec![3; 8], vec![]),
    ])
    .encode_to_vec();
    let resp = common::reqwest_client()
        .post(format!("{}/v1/traces", server.http_url()))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let r = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    let p = r.partial_success.unwrap();
    assert_eq!(p.rejected_spans, 2);
    assert!(
        p.error_message.contains("span 1") && p.error_message.contains("span 2"),
        "{}",
        p.error_message
    );

    // The same over gRPC, plus the gRPC status codes of bad input.
    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let r = client
        .export(request(vec![
            span(vec![4; 16], vec![]),
            span(vec![5; 3], vec![]),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.partial_success.unwrap().rejected_spans, 1);
    let e = client
        .export(request(vec![span(vec![5; 3], vec![])]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("trace id"), "{e}");
    let huge = KeyValue {
        key: "blob".into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue("y".repeat(20 << 20))),
        }),
        ..KeyValue::default()
    };
    let e = client
        .export(request(vec![span(vec![6; 16], vec![huge])]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    // A gzip bomb over gRPC: 64 MiB that compresses to a few KiB is refused while
    // decompressing, with RESOURCE_EXHAUSTED, not buffered.
    let bomb = KeyValue {
        key: "bomb".into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue("z".repeat(64 << 20))),
        }),
        ..KeyValue::default()
    };
    let mut gz = client
        .clone()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let e = gz
        .export(request(vec![span(vec![7; 16], vec![bomb])]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("size limit"), "{e}");
    let ok = gz
        .export(request(vec![span(vec![8; 16], vec![])]))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.partial_success.is_none(), "gzip itself is accepted");
    server.stop();

    let records = common::wal_dump(&server.data_dir);
    assert_eq!(records.len(), 3, "one record per accepted request");
    let ids: Vec<String> = records
        .iter()
        .flat_map(|r| {
            r["span_list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["trace_id"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(ids, vec!["02".repeat(16), "04".repeat(16), "08".repeat(16)]);
}
