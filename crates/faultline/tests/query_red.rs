//! RED metrics and operations: spans with known durations and errors come back as exact
//! counts, exact mean and quantiles within the sketch's 1%, from the head, from sealed
//! blocks' rollup files after a restart, and bad parameters get a 400 naming them.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use prost::Message;
use serde_json::Value;

use common::{Server, http_get, metric};
use faultline_model::ExportTraceServiceRequest;
use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value as AV};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span, Status};

fn request(minute_start_ns: u64) -> ExportTraceServiceRequest {
    let spans = (1..=100u64)
        .map(|i| Span {
            trace_id: [i as u8; 16].to_vec(),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: "GET /cart".into(),
            kind: 2,
            start_time_unix_nano: minute_start_ns + i * 1_000,
            end_time_unix_nano: minute_start_ns + i * 1_000 + i * 1_000_000,
            status: Some(Status {
                code: if i % 10 == 0 { 2 } else { 0 },
                message: String::new(),
            }),
            ..Span::default()
        })
        .chain(std::iter::once(Span {
            trace_id: [200; 16].to_vec(),
            span_id: [9; 8].to_vec(),
            name: "SELECT".into(),
            kind: 3,
            start_time_unix_nano: minute_start_ns,
            end_time_unix_nano: minute_start_ns + 5_000_000,
            ..Span::default()
        }))
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(AV::StringValue("red-svc".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn red(api: u16, query: &str) -> (u16, Value) {
    let (status, body) = http_get(api, &format!("/api/v1/red?{query}")).unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn check(v: &Value) {
    let p = &v["points"][0];
    assert_eq!(p["count"], 100, "{v}");
    assert_eq!(p["errors"], 10);
    assert!(
        (p["meanMs"].as_f64().unwrap() - 50.5).abs() < 1e-6,
        "exact mean: {v}"
    );
    let p50 = p["p50Ms"].as_f64().unwrap();
    assert!((49.0..=52.0).contains(&p50), "p50 {p50}");
    let p99 = p["p99Ms"].as_f64().unwrap();
    assert!((98.0..=101.0).contains(&p99), "p99 {p99}");
    // The rate divides by the seconds the point covers: the current minute so far.
    let secs = p["seconds"].as_f64().unwrap();
    assert!((1.0..=60.0).contains(&secs), "{v}");
    assert!((p["ratePerSecond"].as_f64().unwrap() - 100.0 / secs).abs() < 1e-9);
    assert_eq!(p["requests"], 100, "SERVER spans are requests: {v}");
    assert!((p["requestErrorRate"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert!((p["errorRate"].as_f64().unwrap() - 0.1).abs() < 1e-9);
}

#[test]
fn red_is_exact_where_it_can_be_and_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, &["--block-max-age-secs", "1"]);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = now_s / 60 * 60;
    let body = request(minute * 1_000_000_000).encode_to_vec();
    assert_eq!(common::post_otlp(&server, body), 200);
    let q = format!(
        "service=red-svc&operation=GET%20/cart&spanKind=server&start={minute}&end={}&step=60",
        minute + 60
    );
    let started = Instant::now();
    loop {
        let (status, v) = red(server.api, &q);
        assert_eq!(status, 200, "{v}");
        if v["points"][0]["count"] == 100 {
            check(&v);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "RED answered from the head: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, all) = red(
        server.api,
        &format!("service=red-svc&start={minute}&end={}", minute + 120),
    );
    assert_eq!(all["points"].as_array().unwrap().len(), 2);
    assert_eq!(all["points"][0]["count"], 101, "every operation and kind");
    assert_eq!(all["points"][1]["count"], 0);

    let (status, body) = http_get(
        server.api,
        "/api/operations?service=red-svc&spanKind=client",
    )
    .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["data"],
        serde_json::json!([{"name": "SELECT", "spanKind": "client"}])
    );
    let (_, body) = http_get(server.api, "/api/services/red-svc/operations").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"], serde_json::json!(["GET /cart", "SELECT"]));

    for (query, needle) in [
        ("start=1&end=2", "service is required"),
        ("service=x&step=30", "step=30 must be a multiple of 60"),
        ("service=x&start=abc", "start=\"abc\" is not a whole number"),
        ("service=x&start=100&end=50", "must be before"),
        ("service=x&spanKind=sideways", "spanKind \"sideways\""),
        (
            "service=x&start=0&end=100000000&step=60",
            "points requested",
        ),
    ] {
        let (status, v) = red(server.api, query);
        assert_eq!(status, 400, "{query}");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{query}: {v}"
        );
    }

    // Sealed (age 1 s), then restarted: the block's rollup file answers.
    let started = Instant::now();
    while metric(&server.metrics(), "faultline_store_blocks") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    let server = Server::start(&data, &[]);
    let (_, v) = red(server.api, &q);
    check(&v);
    assert_eq!(v["complete"], true, "{v}");
}
