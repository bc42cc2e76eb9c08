//! Disk budget: when the WAL reaches its configured maximum, or the disk's free space falls
//! below the reserve, requests are refused with a retryable status (HTTP 503 with
//! Retry-After, gRPC UNAVAILABLE) before anything is acknowledged. The spans here have
//! error status, so they are in the `critical` lane, which is refused only by these hard
//! limits (shedding of the other lanes is in `intake_lanes.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use prost::Message;

use common::{Server, metric};
use faultline_model::ExportTraceServiceRequest;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span, Status};

fn request(n: u8, spans: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: vec![n.max(1); 16],
                        span_id: ((i as u64) + 1).to_be_bytes().to_vec(),
                        name: "budget".repeat(20),
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 2,
                        status: Some(Status {
                            code: 2,
                            message: String::new(),
                        }),
                        ..Span::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_budget_refuses_retryably_before_acknowledging() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 1_000_000u64;
    let server = Server::start(
        &tmp.path().join("data"),
        &["--wal-max-bytes", &budget.to_string()],
    );
    let client = common::reqwest_client();
    let mut acked = 0u64;
    let refusal = loop {
        let resp = client
            .post(format!("{}/v1/traces", server.http_url()))
            .header("content-type", "application/x-protobuf")
            .body(request(1, 400).encode_to_vec())
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 200 {
            acked += 1;
            assert!(acked < 1000, "the budget never took effect");
            continue;
        }
        break resp;
    };
    assert_eq!(refusal.status().as_u16(), 503);
    assert_eq!(refusal.headers().get("retry-after").unwrap(), "1");
    let body = refusal.bytes().await.unwrap();
    #[derive(prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let st = RpcStatus::decode(body).unwrap();
    assert_eq!(st.code, 14, "UNAVAILABLE");
    assert!(
        st.message.contains("write-ahead log is full") && st.message.contains("wal.max_bytes"),
        "{}",
        st.message
    );
    assert!(acked > 3, "accepted {acked} requests before the budget");

    let mut grpc = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let e = grpc.export(request(2, 400)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");

    let m = server.metrics();
    assert_eq!(
        metric(&m, "faultline_wal_committed_seq"),
        acked as f64,
        "only the accepted requests are in the WAL"
    );
    assert!(metric(&m, "faultline_wal_size_bytes") <= budget as f64);
    assert!(
        metric(
            &m,
            "faultline_intake_requests_total{protocol=\"otlp-http-protobuf\",outcome=\"refused\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "faultline_intake_requests_total{protocol=\"otlp-grpc\",outcome=\"refused\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_refuses_retryably() {
    let tmp = tempfile::tempdir().unwrap();
    // A reserve larger than any disk: the disk always looks full.
    let server = Server::start(
        &tmp.path().join("data"),
        &["--min-free-disk-bytes", "18000000000000000000"],
    );
    let resp = common::reqwest_client()
        .post(format!(
            "{}/api/v2/spans",
            format_args!("http://127.0.0.1:{}", server.zipkin)
        ))
        .header("content-type", "application/json")
        .body(r#"[{"traceId":"0102030405060708","id":"0102030405060708","name":"x"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("intake.min_free_disk_bytes") && text.contains("free disk space"),
        "{text}"
    );
    assert_eq!(
        metric(&server.metrics(), "faultline_wal_committed_seq"),
        0.0
    );
}
