//! Blocks are open Parquet: DuckDB (the Python package) reads the sealed blocks and counts
//! the same spans, in total and per trace, as `/api/traces/{id}` returns.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, client_script, http_get, metric, python};

#[test]
fn duckdb_reads_sealed_blocks_and_agrees_with_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(
        &data,
        &["--block-max-spans", "2000", "--block-max-age-secs", "1"],
    );
    let log = tmp.path().join("acks.log");
    common::loadgen(&[
        "--endpoint",
        &server.http_url(),
        "--duration",
        "1",
        "--concurrency",
        "2",
        "--spans-per-request",
        "200",
        "--ack-log",
        log.to_str().unwrap(),
    ])
    .wait();
    let acked: Vec<(u64, Vec<String>)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let mut p = l.split(' ');
            let _ = p.next();
            let spans = p.next().unwrap().parse().unwrap();
            (
                spans,
                p.next().unwrap().split(',').map(String::from).collect(),
            )
        })
        .collect();
    let total: u64 = acked.iter().map(|(n, _)| n).sum();
    assert!(total > 2000, "enough spans for several blocks ({total})");
    // Wait until everything acknowledged is sealed into blocks.
    let started = Instant::now();
    while metric(&server.metrics(), "faultline_store_block_spans") < total as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "blocks sealed:\n{}",
            server.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sample: Vec<String> = acked
        .iter()
        .step_by(7)
        .map(|(_, ids)| ids[0].clone())
        .take(10)
        .collect();
    let mut api_counts = Vec::new();
    for id in &sample {
        let (status, body) = http_get(server.api, &format!("/api/traces/{id}")).unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        api_counts.push(v["data"][0]["spans"].as_array().unwrap().len() as u64);
    }
    // Dependencies of loadgen's traffic: frontend calls the other services.
    let (status, body) = http_get(server.api, "/api/dependencies?lookback=86400000").unwrap();
    assert_eq!(status, 200, "{body}");
    let deps: serde_json::Value = serde_json::from_str(&body).unwrap();
    let edges = deps["data"].as_array().unwrap();
    assert!(
        edges
            .iter()
            .any(|e| e["parent"] == "frontend" && e["callCount"].as_u64().unwrap() > 0),
        "{deps}"
    );
    assert!(
        edges.iter().all(|e| e["parent"] != e["child"]),
        "no self edges: {deps}"
    );
    let (status, _) = http_get(server.api, "/api/dependencies?endTs=soon").unwrap();
    assert_eq!(status, 400);
    // The native answer adds errors and the callee spans' latency; it agrees on calls.
    let (status, body) = http_get(server.api, "/api/v1/dependencies?start=0").unwrap();
    assert_eq!(status, 200, "{body}");
    let native: serde_json::Value = serde_json::from_str(&body).unwrap();
    let native_edges = native["edges"].as_array().unwrap();
    assert_eq!(native_edges.len(), edges.len(), "{native}");
    for e in native_edges {
        let jaeger = edges
            .iter()
            .find(|j| j["parent"] == e["parent"] && j["child"] == e["child"])
            .unwrap();
        assert_eq!(e["calls"], jaeger["callCount"]);
        let (p50, p99) = (e["p50Ms"].as_f64().unwrap(), e["p99Ms"].as_f64().unwrap());
        // loadgen's child spans last 0.2 to 80 ms.
        assert!(0.1 < p50 && p50 <= p99 && p99 < 90.0, "{e}");
        assert!(e["errors"].as_u64().unwrap() <= e["calls"].as_u64().unwrap());
    }
    server.stop();

    let out = Command::new(python())
        .arg(client_script("duckdb_count.py"))
        .arg(data.join("blocks"))
        .args(&sample)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], total, "DuckDB counts every acknowledged span");
    for (id, n) in sample.iter().zip(api_counts) {
        assert_eq!(
            v["per_trace"][id], n,
            "trace {id}: DuckDB and the API agree"
        );
    }
    assert!(
        v["status_code_sample"] == 200 || v["status_code_sample"] == 500,
        "{v}"
    );
}
