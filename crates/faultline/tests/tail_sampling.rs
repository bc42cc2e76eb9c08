//! Tail sampling, end to end and through crashes: with a policy that keeps failing and
//! slow traces and two traces per second per root service of the rest, traffic of three
//! root services is sent while the server is killed (SIGKILL) at random moments. After the
//! last restart every acknowledged trace is either readable or answered as dropped by
//! policy, every failing and every planted slow trace is readable, the decisions add up
//! exactly to the traces sent, and RED counts every span sent (the rollups come before
//! the decision).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Rng, Server, http_get, metric, now_ns, post_otlp, resource_spans, skew_span};
use faultline_model::otlp::trace::{Span as OtlpSpan, Status};

const MS: u64 = 1_000_000;

/// What the test sent in one trace.
struct Sent {
    id: String,
    error: bool,
    slow: bool,
    /// Spans per service.
    spans: BTreeMap<&'static str, u64>,
}

const ROOTS: [&str; 3] = ["frontend", "checkout", "search"];
const BACKENDS: [&str; 4] = ["api", "db", "cache", "auth"];

/// One trace: a root span of one of three services and 2-7 spans below it in backend
/// services, 5% with a failing span, 1 in 150 slow (3 s instead of 20-120 ms).
fn send_trace(server: &Server, rng: &mut Rng, n: u64) -> Sent {
    use prost::Message;
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&rng.next().to_be_bytes());
    t[8..].copy_from_slice(&n.to_be_bytes());
    let root = ROOTS[(rng.next() % 3) as usize];
    let slow = n % 150 == 7;
    let error = rng.range(0, 100) < 5;
    let start = now_ns() - rng.range(1_000, 5_000) * MS;
    let len = if slow {
        3_000 * MS
    } else {
        rng.range(20, 120) * MS
    };
    let mut by_service: BTreeMap<&'static str, Vec<OtlpSpan>> = BTreeMap::new();
    by_service.entry(root).or_default().push(skew_span(
        &t,
        n * 16 + 1,
        0,
        &format!("GET /{root}"),
        2,
        start,
        start + len,
    ));
    let children = rng.range(2, 8);
    let failing = error.then(|| rng.range(0, children));
    for k in 0..children {
        let svc = BACKENDS[(rng.next() % 4) as usize];
        let s = start + rng.range(1, 10) * MS;
        let e = s + rng.range(1, len / MS - 10) * MS;
        by_service.entry(svc).or_default().push(OtlpSpan {
            status: (failing == Some(k)).then(|| Status {
                code: 2,
                message: "timeout talking to the ledger".into(),
            }),
            ..skew_span(&t, n * 16 + 2 + k, n * 16 + 1, "call", 3, s, e)
        });
    }
    let spans = by_service
        .iter()
        .map(|(s, v)| (*s, v.len() as u64))
        .collect();
    let req = faultline_model::ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(svc, spans)| resource_spans(svc, "host-1", spans))
            .collect(),
    };
    assert_eq!(post_otlp(server, req.encode_to_vec()), 200);
    Sent {
        id: faultline_model::hex(&t),
        error,
        slow,
        spans,
    }
}

fn json(server: &Server, path: &str) -> Value {
    let (status, body) = http_get(server.api, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn start(data: &Path, config: &Path) -> Server {
    Server::start(data, &["--config", config.to_str().unwrap()])
}

#[test]
fn dropped_traces_are_recorded_decisions_through_crashes_and_red_counts_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("faultline.toml");
    std::fs::write(
        &config,
        "[store]\nblock_max_age_secs = 1\n\n[tail_sampling]\nenabled = true\nwait_secs = 1\nrest_traces_per_second = 2.0\n",
    )
    .unwrap();
    let mut server = start(&data, &config);
    let mut rng = Rng(0x5eed_7a11_5a3d_0001);
    let mut sent: Vec<Sent> = Vec::new();
    for round in 0..4 {
        for _ in 0..150 {
            let n = sent.len() as u64;
            sent.push(send_trace(&server, &mut rng, n));
        }
        if round < 3 {
            // Somewhere among seals, decisions and rewrites.
            std::thread::sleep(Duration::from_millis(rng.range(300, 2_500)));
            server.kill9();
            server = start(&data, &config);
        }
    }
    // Everything sealed and decided.
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let r = json(&server, "/api/v1/tail-sampling");
        let head = metric(&server.metrics(), "faultline_store_head_spans");
        let t = &r["totals"];
        let decided: u64 = ["keptError", "keptSlow", "keptRate", "dropped"]
            .iter()
            .map(|k| t[*k]["traces"].as_u64().unwrap())
            .sum();
        if head == 0.0 && r["blocksWaiting"] == 0 && decided >= sent.len() as u64 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "not all decided after 60 s: head {head}, {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["enabled"], true);
    assert_eq!(report["policy"]["restTracesPerSecond"], 2.0);

    // Each trace decided exactly once: the decisions add up to the traces sent, and
    // every failing one was kept for its error.
    let t = &report["totals"];
    let count = |k: &str| t[k]["traces"].as_u64().unwrap();
    let errors = sent.iter().filter(|s| s.error).count() as u64;
    assert_eq!(
        count("keptError") + count("keptSlow") + count("keptRate") + count("dropped"),
        sent.len() as u64,
        "{report}"
    );
    assert_eq!(count("keptError"), errors, "{report}");
    assert!(count("dropped") > sent.len() as u64 / 2, "{report}");
    assert!(count("keptRate") > 0, "{report}");
    let slow = sent.iter().filter(|s| s.slow && !s.error).count() as u64;
    assert!(count("keptSlow") >= slow, "{report}");
    let by_root: u64 = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| ROOTS.contains(&s["service"].as_str().unwrap()) as u64)
        .sum();
    assert_eq!(by_root, 3, "decisions by root service: {report}");

    // No trace missing unexplained.
    let mut dropped = 0;
    for s in &sent {
        let (status, body) = http_get(server.api, &format!("/api/traces/{}", s.id)).unwrap();
        match status {
            200 => {}
            404 if body.contains("tail sampling dropped it") => {
                dropped += 1;
                assert!(
                    !s.error && !s.slow,
                    "{} (error {}, slow {}) dropped",
                    s.id,
                    s.error,
                    s.slow
                );
            }
            _ => panic!("trace {} answered {status}: {body}", s.id),
        }
    }
    assert_eq!(dropped, count("dropped"));
    // The trace view says so too.
    let gone = sent
        .iter()
        .find(|s| {
            !s.error
                && !s.slow
                && http_get(server.api, &format!("/api/traces/{}", s.id))
                    .unwrap()
                    .0
                    == 404
        })
        .unwrap();
    let (status, page) = http_get(server.api, &format!("/trace/{}", gone.id)).unwrap();
    assert_eq!(status, 404);
    assert!(page.contains("tail sampling dropped it"), "{page}");
    let (_, page) = http_get(server.api, "/tracing-health").unwrap();
    assert!(page.contains("id=tail-sampling"), "{page}");

    // RED saw every span sent, dropped or not.
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &sent {
        for (svc, n) in &s.spans {
            *want.entry(svc).or_default() += n;
        }
    }
    for (svc, n) in want {
        let r = json(&server, &format!("/api/v1/red?service={svc}"));
        let got: u64 = r["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["count"].as_u64().unwrap())
            .sum();
        assert_eq!(got, n, "RED count of {svc}");
    }
    server.stop();
}
