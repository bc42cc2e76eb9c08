//! Real clients: the Python OpenTelemetry SDK exporters (OTLP/gRPC and OTLP/HTTP, with and
//! without gzip) and a Zipkin client send spans; faultline acknowledges them and
//! `faultline wal dump` shows their services, span names, attributes and events intact.
//! The Python environment comes from `scripts/test` (see `common::python`).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use serde_json::Value;

use common::{Server, client_script, python};

fn run_client(script: &str, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(client_script(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn spans_of_service<'a>(records: &'a [Value], service: &str) -> Vec<&'a Value> {
    records
        .iter()
        .flat_map(|r| r["span_list"].as_array().unwrap())
        .filter(|s| s["resource"]["service.name"] == service)
        .collect()
}

#[test]
fn opentelemetry_sdk_and_zipkin_clients_are_stored_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("data"), &[]);
    let http = server.http_url();
    let grpc = server.grpc_url();
    let zipkin = server.zipkin_url();
    let cases = [
        ("grpc", grpc.as_str(), "none", "py-grpc"),
        ("grpc", grpc.as_str(), "gzip", "py-grpc-gzip"),
        ("http", http.as_str(), "none", "py-http"),
        ("http", http.as_str(), "gzip", "py-http-gzip"),
    ];
    let mut sent = Vec::new();
    for (protocol, endpoint, compression, service) in cases {
        let marker = format!("m-{service}");
        let out = run_client(
            "otel_send.py",
            &[
                "--protocol",
                protocol,
                "--endpoint",
                endpoint,
                "--service",
                service,
                "--marker",
                &marker,
                "--compression",
                compression,
            ],
        );
        sent.push((service, marker, out));
    }
    let z = run_client(
        "zipkin_send.py",
        &[
            "--endpoint",
            &zipkin,
            "--service",
            "py-zipkin",
            "--marker",
            "m-zipkin",
        ],
    );
    server.stop();

    let records = common::wal_dump(&server.data_dir);
    let protocols: Vec<&str> = records
        .iter()
        .map(|r| r["protocol"].as_str().unwrap())
        .collect();
    for p in ["otlp-grpc", "otlp-http-protobuf", "zipkin-json"] {
        assert!(
            protocols.contains(&p),
            "a record arrived over {p}: {protocols:?}"
        );
    }
    for (service, marker, out) in &sent {
        let spans = spans_of_service(&records, service);
        assert_eq!(spans.len(), 3, "{service}: three spans stored");
        let trace_id = out["trace_id"].as_str().unwrap();
        assert!(
            spans.iter().all(|s| s["trace_id"] == trace_id),
            "{service}: trace id intact"
        );
        let root = spans
            .iter()
            .find(|s| s["name"] == format!("checkout {marker}"))
            .unwrap();
        assert_eq!(root["kind"], 2, "SERVER");
        assert_eq!(root["parent_span_id"], "");
        let a = &root["attributes"];
        assert_eq!(a["marker"], marker.as_str());
        assert_eq!(a["http.response.status_code"], 200, "int stays int");
        assert_eq!(a["cart.total"], 12.5, "double stays double");
        assert_eq!(a["cart.express"], true, "bool stays bool");
        assert_eq!(
            a["cart.items"],
            serde_json::json!(["a", "b"]),
            "array intact"
        );
        assert_eq!(root["resource"]["deployment.environment"], "test");
        assert_eq!(root["resource"]["host.name"], "client-host");
        let db = spans.iter().find(|s| s["name"] == "db.query").unwrap();
        assert_eq!(
            db["parent_span_id"], root["span_id"],
            "{service}: parent link intact"
        );
        assert_eq!(db["attributes"]["db.system"], "postgresql");
        assert_eq!(db["events"][0]["name"], "retry");
        assert_eq!(db["events"][0]["attributes"]["attempt"], 2);
        let pay = spans
            .iter()
            .find(|s| s["name"] == "payment.charge")
            .unwrap();
        assert_eq!(pay["status"]["code"], 2, "ERROR status");
        assert_eq!(pay["status"]["message"], "card declined");
        assert!(
            pay["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "exception")
        );
    }
    let zs = spans_of_service(&records, "py-zipkin");
    assert_eq!(zs.len(), 2, "zipkin spans stored");
    let zroot = zs
        .iter()
        .find(|s| s["name"] == "zipkin-root m-zipkin")
        .unwrap();
    assert_eq!(zroot["attributes"]["marker"], "m-zipkin");
    let zchild = zs.iter().find(|s| s["name"] == "zipkin-child").unwrap();
    assert_eq!(zchild["kind"], 3, "CLIENT");
    assert_eq!(zchild["parent_span_id"], zroot["span_id"]);
    let ztrace = z["trace_id"].as_str().unwrap();
    assert!(
        zroot["trace_id"]
            .as_str()
            .unwrap()
            .ends_with(ztrace.trim_start_matches('0')),
        "{ztrace} vs {}",
        zroot["trace_id"]
    );

    // The text dump names services and spans too.
    let out = Command::new(common::BIN)
        .args(["wal", "dump", "--spans"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("services=py-grpc")
            && text.contains("name=\"checkout m-py-http\"")
            && text.contains("\"cart.total\":12.5"),
        "{text}"
    );
}
