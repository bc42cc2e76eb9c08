//! Adjusted counts: services sampling at 100%, 10% and 1% with OpenTelemetry's consistent
//! probability sampling (`th` and `rv` in the `ot` tracestate entry) send only the spans
//! they keep; faultline's RED rates, error rates and dependency calls still match the
//! unsampled traffic the test generated, and the stored counts say what was kept.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Server, http_get, now_ns, otlp_request, post_otlp};
use faultline_model::otlp::trace::{Span, Status};

/// splitmix64: a fixed seed makes the draw, and so the test, repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const RANGE: u64 = 1 << 56;

/// The rejection threshold of probability `p` as the specification writes it: 14 hex
/// digits, trailing zeros removed.
fn threshold(p: f64) -> (u64, String) {
    // The kept share in integers (exact at this magnitude), so 1% is the specification's
    // `fd70a3d70a3d71`; (1 - p) * 2^56 in floating point would lose the last digit.
    let t = RANGE - (p * RANGE as f64).round() as u64;
    let hex = format!("{t:014x}");
    let th = hex.trim_end_matches('0');
    (t, if th.is_empty() { "0".into() } else { th.into() })
}

/// What one service really did, and what it sent.
#[derive(Default, Debug)]
struct Truth {
    spans: u64,
    errors: u64,
    sent: u64,
}

/// One span of `service` in a trace with randomness `rv`, kept when `rv >= t`.
fn span(rng: &mut Rng, start: u64, rv: u64, th: &str, parent: Option<[u8; 8]>) -> (Span, bool) {
    let error = rng.unit() < 0.05;
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&rng.next().to_be_bytes());
    trace_id[9..].copy_from_slice(&rv.to_be_bytes()[1..]);
    let span = Span {
        trace_id: trace_id.to_vec(),
        span_id: rng.next().to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        trace_state: format!("ot=th:{th};rv:{rv:014x}"),
        name: "GET /item".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000 + rng.next() % 50_000_000,
        status: error.then(|| Status {
            code: 2,
            message: "failed".into(),
        }),
        ..Span::default()
    };
    (span, error)
}

/// Sends `spans` of `service` in requests of 2,000.
fn send(server: &Server, service: &str, spans: Vec<Span>) {
    let mut spans = spans;
    while !spans.is_empty() {
        let rest = spans.split_off(spans.len().min(2000));
        assert_eq!(post_otlp(server, otlp_request(service, spans)), 200);
        spans = rest;
    }
}

fn red_total(server: &Server, service: &str, start: u64, end: u64) -> (u64, u64, u64, u64) {
    let step = (end - start).div_ceil(60) * 60;
    let (status, body) = http_get(
        server.api,
        &format!(
            "/api/v1/red?service={service}&start={start}&end={}&step={step}",
            start + step
        ),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let sum = |k: &str| {
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[k].as_u64().unwrap())
            .sum::<u64>()
    };
    (
        sum("count"),
        sum("errors"),
        sum("storedCount"),
        sum("storedErrors"),
    )
}

#[test]
fn red_rates_and_error_rates_match_the_unsampled_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("data"), &[]);
    let mut rng = Rng(0x5eed_0ffa_1700);
    let now = now_ns();
    let window_start = now - 10 * 60 * 1_000_000_000;
    let at = |rng: &mut Rng| window_start + rng.next() % (9 * 60 * 1_000_000_000);

    // Each service's own traces, so every service sends about 20,000 spans: one in a
    // hundred of 2,000,000 traces is as many as all of 20,000.
    let services = [
        ("frontend", 1.0, 20_000u64),
        ("catalog", 0.1, 200_000),
        ("payments", 0.01, 2_000_000),
    ];
    let mut truths = Vec::new();
    for (service, p, traces) in services {
        let (t, th) = threshold(p);
        let mut truth = Truth::default();
        let mut kept = Vec::new();
        for _ in 0..traces {
            let rv = rng.next() >> 8;
            let start = at(&mut rng);
            let (s, error) = span(&mut rng, start, rv, &th, None);
            truth.spans += 1;
            truth.errors += u64::from(error);
            if rv >= t {
                kept.push(s);
            }
        }
        truth.sent = kept.len() as u64;
        send(&server, service, kept);
        truths.push((service, p, truth));
    }

    // Calls from a fully sampled caller to a callee sampled at 10% in the same traces
    // (consistent decisions: the callee keeps a subset of the caller's traces).
    let (t_edge, th_edge) = threshold(0.1);
    let (mut callers, mut callees) = (Vec::new(), Vec::new());
    let (mut calls, mut call_errors) = (0u64, 0u64);
    for _ in 0..20_000 {
        let rv = rng.next() >> 8;
        let start = at(&mut rng);
        let (caller, _) = span(&mut rng, start, rv, "0", None);
        let mut parent = [0u8; 8];
        parent.copy_from_slice(&caller.span_id);
        let (mut callee, error) = span(&mut rng, start + 1000, rv, &th_edge, Some(parent));
        callee.trace_id = caller.trace_id.clone();
        calls += 1;
        call_errors += u64::from(error);
        callers.push(caller);
        if rv >= t_edge {
            callees.push(callee);
        }
    }
    // One request per pair batch, so parent and child meet in the same head.
    let mut body = Vec::new();
    body.extend(callers);
    send(&server, "edge-caller", body);
    send(&server, "edge-callee", callees);

    let start_s = window_start / 1_000_000_000 - 60;
    let end_s = now / 1_000_000_000 + 60;
    for (service, p, truth) in &truths {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (count, errors, stored, stored_errors) = loop {
            let r = red_total(&server, service, start_s, end_s);
            if r.2 == truth.sent {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "{service}: stored {} of {} sent",
                r.2,
                truth.sent
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(stored_errors <= stored);
        let rate_error = (count as f64 - truth.spans as f64).abs() / truth.spans as f64;
        assert!(
            rate_error <= 0.02,
            "{service} at {p}: estimated {count} spans, truly {} (stored {stored}): off by {:.2}%",
            truth.spans,
            rate_error * 100.0
        );
        let (est, real) = (
            errors as f64 / count as f64,
            truth.errors as f64 / truth.spans as f64,
        );
        assert!(
            (est - real).abs() <= 0.005,
            "{service} at {p}: error rate {est:.4}, truly {real:.4}"
        );
        if *p < 1.0 {
            assert!(
                stored < truth.spans / 2,
                "{service}: only the kept spans are stored ({stored} of {})",
                truth.spans
            );
        }
    }

    // Dependency calls are weighted by the callee's adjusted count.
    let deadline = Instant::now() + Duration::from_secs(60);
    let edge = loop {
        let (_, body) = http_get(
            server.api,
            &format!("/api/v1/dependencies?start={start_s}&end={end_s}"),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let edge = v["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["parent"] == "edge-caller" && e["child"] == "edge-callee")
            .cloned();
        if let Some(e) = edge {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no edge-caller -> edge-callee edge: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let est = edge["calls"].as_u64().unwrap() as f64;
    assert!(
        (est - calls as f64).abs() / calls as f64 <= 0.1,
        "calls estimated {est}, truly {calls}: {edge}"
    );
    assert!(edge["storedCalls"].as_u64().unwrap() < calls / 5, "{edge}");
    let err_rate = edge["errors"].as_u64().unwrap() as f64 / est;
    assert!(
        (err_rate - call_errors as f64 / calls as f64).abs() <= 0.02,
        "{edge}"
    );
    server.stop();
}

#[test]
fn the_threshold_encoding_matches_the_specification() {
    // The examples of OpenTelemetry's tracestate probability sampling specification.
    assert_eq!(threshold(1.0).1, "0");
    assert_eq!(threshold(0.5).1, "8");
    assert_eq!(threshold(0.25).1, "c");
    assert_eq!(threshold(0.01).1, "fd70a3d70a3d71");
}
