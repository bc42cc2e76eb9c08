//! The Jaeger v1 query API over stored spans: spans sent by the Python OpenTelemetry SDK
//! come back from `/api/traces/{id}` with parent references, typed tags, resource
//! attributes as process tags and events as logs, from the head at once, from sealed
//! blocks, and after SIGKILL and restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Server, http_get};

fn send(server: &Server, service: &str, marker: &str) -> String {
    common::send_sdk_trace(server, "http", service, marker)
}

/// Polls until the trace has `spans` spans (indexing is asynchronous but must take well
/// under a second).
fn get_trace(api: u16, id: &str, spans: usize) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let (status, body) = http_get(api, &format!("/api/traces/{id}")).unwrap();
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["data"][0]["spans"].as_array().map(|a| a.len()) == Some(spans) {
                return (v, started.elapsed());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "trace {id} not queryable: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tag<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("tag {key} in {span}"))
}

fn check_shape(v: &Value, id: &str, marker: &str, service: &str) {
    assert_eq!(v["total"], 1);
    assert_eq!(v["errors"], Value::Null);
    let t = &v["data"][0];
    assert_eq!(t["traceID"], id);
    let spans = t["spans"].as_array().unwrap();
    let root = spans
        .iter()
        .find(|s| s["operationName"] == format!("checkout {marker}"))
        .unwrap();
    let db = spans
        .iter()
        .find(|s| s["operationName"] == "db.query")
        .unwrap();
    let pay = spans
        .iter()
        .find(|s| s["operationName"] == "payment.charge")
        .unwrap();
    assert_eq!(root["references"], serde_json::json!([]));
    assert_eq!(db["references"][0]["refType"], "CHILD_OF");
    assert_eq!(db["references"][0]["spanID"], root["spanID"]);
    assert_eq!(tag(root, "http.response.status_code")["type"], "int64");
    assert_eq!(tag(root, "http.response.status_code")["value"], 200);
    assert_eq!(tag(root, "cart.total")["type"], "float64");
    assert_eq!(tag(root, "cart.express")["type"], "bool");
    assert_eq!(tag(root, "marker")["value"], marker);
    assert_eq!(tag(root, "span.kind")["value"], "server");
    assert_eq!(tag(pay, "error")["value"], true);
    assert_eq!(
        tag(pay, "otel.status_description")["value"],
        "card declined"
    );
    let retry = &db["logs"][0];
    assert!(
        retry["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000,
        "microseconds"
    );
    assert!(
        retry["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["key"] == "event" && f["value"] == "retry")
    );
    assert!(
        retry["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["key"] == "attempt" && f["value"] == 2)
    );
    let pid = root["processID"].as_str().unwrap();
    let process = &t["processes"][pid];
    assert_eq!(process["serviceName"], service);
    let ptags = process["tags"].as_array().unwrap();
    assert!(
        ptags
            .iter()
            .any(|t| t["key"] == "deployment.environment" && t["value"] == "test"),
        "{process}"
    );
    assert!(ptags.iter().all(|t| t["key"] != "service.name"));
    for s in spans {
        assert!(s["duration"].as_u64().is_some() && s["startTime"].as_u64().unwrap() > 0);
    }
}

#[test]
fn sdk_spans_come_back_from_head_blocks_and_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Tiny blocks, so the second trace is read from a sealed Parquet block.
    let mut server = Server::start(&data, &["--block-max-spans", "3"]);
    let a = send(&server, "query-a", "qa");
    let (v, took) = get_trace(server.api, &a, 3);
    check_shape(&v, &a, "qa", "query-a");
    assert!(
        took < Duration::from_secs(1),
        "queryable within a second, took {took:?}"
    );
    let b = send(&server, "query-b", "qb");
    let (v, _) = get_trace(server.api, &b, 3);
    check_shape(&v, &b, "qb", "query-b");

    // Wait for the blocks to be sealed and published.
    let started = Instant::now();
    while common::metric(&server.metrics(), "faultline_store_blocks") < 2.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "blocks sealed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Traces by id answered from the WAL at once; the service list is ClickHouse's.
    common::wait_in_clickhouse(&server);
    let (status, body) = http_get(server.api, "/api/services").unwrap();
    assert_eq!(status, 200);
    let services: Value = serde_json::from_str(&body).unwrap();
    for s in ["query-a", "query-b"] {
        assert!(
            services["data"]
                .as_array()
                .unwrap()
                .contains(&Value::from(s)),
            "{services}"
        );
    }

    // SIGKILL, restart: both traces survive (blocks, and the WAL replayed into the head).
    let c = send(&server, "query-c", "qc");
    server.kill9();
    let server = Server::start(&data, &["--block-max-spans", "1000"]);
    for (id, marker, service) in [
        (&a, "qa", "query-a"),
        (&b, "qb", "query-b"),
        (&c, "qc", "query-c"),
    ] {
        let (v, _) = get_trace(server.api, id, 3);
        check_shape(&v, id, marker, service);
    }

    // The terminal client prints the same trace as a tree.
    let out = Command::new(common::BIN)
        .args([
            "query",
            "trace",
            &a,
            "--api",
            &format!("http://127.0.0.1:{}", server.api),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with(&format!("trace {a} - 3 spans")), "{text}");
    assert!(
        text.contains("query-a checkout qa")
            && text.contains("  query-a db.query")
            && text.contains("payment.charge  [error]"),
        "{text}"
    );
    let out = Command::new(common::BIN)
        .args([
            "query",
            "trace",
            "00ff",
            "--api",
            &format!("http://127.0.0.1:{}", server.api),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trace not found"));
    let out = Command::new(common::BIN)
        .args([
            "query",
            "red",
            "query-a",
            "--since",
            "600",
            "--step",
            "300",
            "--api",
            &format!("http://127.0.0.1:{}", server.api),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("query-a: 300 s steps"),
        "{text}"
    );
    assert!(
        text.lines().count() >= 4,
        "a header and two or three steps: {text}"
    );

    // Errors: a bad id is a 400 naming it, an unknown one a 404, both in Jaeger's envelope.
    let (status, body) = http_get(server.api, "/api/traces/not-hex").unwrap();
    assert_eq!(status, 400);
    assert!(
        body.contains("\"code\":400") && body.contains("not-hex"),
        "{body}"
    );
    let (status, body) = http_get(server.api, &format!("/api/traces/{}", "ab".repeat(16))).unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("trace not found"), "{body}");
}
