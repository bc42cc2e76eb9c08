//! Priority lanes under pressure: with sealing broken the WAL fills; from 50% of its budget
//! `bulk` requests are shed, from 80% `normal` ones, with retryable 429s and counted by
//! lane; spans with errors and spans of critical services are still accepted and become
//! queryable once sealing works again.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, http_get, metric};

fn request(service: &str, trace: u8, error: bool) -> Vec<u8> {
    common::one_span_request(service, &[trace; 16], error)
}

/// POSTs an OTLP/HTTP request, with `x-faultline-lane: bulk` when asked; status and body.
fn post(server: &Server, body: Vec<u8>, bulk: bool) -> (u16, String, Option<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = common::reqwest_client()
            .post(format!("{}/v1/traces", server.http_url()))
            .header("content-type", "application/x-protobuf")
            .body(body);
        if bulk {
            req = req.header("x-faultline-lane", "bulk");
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, resp.text().await.unwrap(), retry)
    })
}

#[test]
fn under_pressure_bulk_then_normal_are_shed_and_critical_spans_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--block-max-spans",
            "2000",
            "--block-max-age-secs",
            "1",
            "--wal-segment-bytes",
            "1048576",
            "--wal-max-bytes",
            "6291456",
            "--critical-service",
            "payments",
        ],
    );
    // Sealing broken: nothing leaves the WAL, so it fills.
    let outage = common::SealingOutage::start(&data);
    let summary = common::loadgen(&[
        "--protocol",
        "http",
        "--endpoint",
        &server.http_url(),
        "--duration",
        "3",
        "--concurrency",
        "4",
        "--rate",
        "20000",
        "--spans-per-request",
        "100",
        "--templates",
        "4",
        "--timeout",
        "3",
    ])
    .wait();
    assert_eq!(summary["requests_failed"], 0, "{summary}");
    let m = server.metrics();
    let used = metric(&m, "faultline_wal_size_bytes") / metric(&m, "faultline_wal_max_bytes");
    assert!(
        (0.8..1.0).contains(&used),
        "normal traffic filled the WAL to the shedding point, not beyond: {used}"
    );
    assert!(
        metric(
            &m,
            "faultline_intake_shed_spans_total{lane=\"normal\",reason=\"wal\"}"
        ) > 0.0,
        "{m}"
    );

    // Now: normal and bulk are shed with retryable 429s; critical is accepted.
    let (status, body, retry) = post(&server, request("web", 1, false), false);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("shedding normal traffic"), "{body}");
    assert!(retry.is_some(), "Retry-After");
    let (status, body, _) = post(&server, request("web", 2, false), true);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("shedding bulk traffic"), "{body}");
    let (status, body, _) = post(&server, request("web", 3, true), false);
    assert_eq!(status, 200, "an error span is critical: {body}");
    let (status, body, _) = post(&server, request("payments", 4, false), false);
    assert_eq!(status, 200, "a critical service: {body}");
    let (status, body, _) = post(&server, request("web", 5, true), true);
    assert_eq!(
        status, 429,
        "a bulk replay stays bulk even with errors: {body}"
    );
    let m = server.metrics();
    assert!(
        metric(
            &m,
            "faultline_intake_shed_spans_total{lane=\"bulk\",reason=\"wal\"}"
        ) >= 2.0
    );
    let lanes = common::status_part(server.api, "lanes");
    assert_eq!(lanes["state"], "degraded", "{lanes}");
    assert!(
        lanes["summary"]
            .as_str()
            .unwrap()
            .contains("shedding bulk and normal"),
        "{lanes}"
    );

    // Sealing works again: the WAL drains, the critical spans are queryable, and normal
    // traffic is accepted again.
    outage.repair();
    let started = Instant::now();
    for id in ["03", "04"] {
        while http_get(server.api, &format!("/api/traces/{}", id.repeat(16)))
            .unwrap()
            .0
            != 200
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "trace {id} indexed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    loop {
        let (status, _, _) = post(&server, request("web", 6, false), false);
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "normal traffic accepted again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Memory is pressure too: with a bound below what the process already uses, normal and
/// bulk requests are shed with reason `memory`, critical ones are accepted, and the status
/// shows the memory part degraded.
#[test]
fn over_the_memory_bound_only_critical_spans_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["--max-memory-bytes", "16777216"]);
    let (status, body, retry) = post(&server, request("web", 1, false), false);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("resident memory"), "{body}");
    assert!(retry.is_some(), "Retry-After");
    let (status, body, _) = post(&server, request("web", 2, false), true);
    assert_eq!(status, 429, "{body}");
    let (status, body, _) = post(&server, request("web", 3, true), false);
    assert_eq!(status, 200, "an error span is critical: {body}");
    let m = server.metrics();
    assert_eq!(
        metric(
            &m,
            "faultline_intake_shed_spans_total{lane=\"normal\",reason=\"memory\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "faultline_intake_shed_spans_total{lane=\"bulk\",reason=\"memory\"}"
        ),
        1.0
    );
    let memory = common::status_part(server.api, "memory");
    assert_eq!(memory["state"], "degraded", "{memory}");
    assert!(memory["details"]["resident_bytes"].as_u64().unwrap() > 16 << 20);
}
