//! The tracing-health report: planted convention violations, orphans, sampling breaks and
//! skewed clocks appear with exact counts, the services that should have sent the missing
//! parents, and example links that open the traces.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    Server, http_get, now_ns, otlp_request, otlp_request_with, post_otlp, send_skewed_traces,
};
use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value as AV};
use faultline_model::otlp::trace::Span;

fn kv(k: &str, v: AV) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

fn full_resource(service: &str) -> Vec<(&str, &str)> {
    vec![
        ("service.name", service),
        ("service.version", "1.0.0"),
        ("deployment.environment.name", "test"),
    ]
}

fn span(trace: u64, id: u64, parent: u64, kind: i32, attrs: Vec<KeyValue>) -> Span {
    let now = now_ns() - 60_000_000_000;
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&0xfeed_u64.to_be_bytes());
    t[8..].copy_from_slice(&trace.to_be_bytes());
    Span {
        trace_id: t.to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            parent.to_be_bytes().to_vec()
        },
        name: "handle".into(),
        kind,
        start_time_unix_nano: now + id * 1000,
        end_time_unix_nano: now + id * 1000 + 5_000_000,
        attributes: attrs,
        ..Span::default()
    }
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn convention<'a>(s: &'a Value, kind: &str, attribute: &str) -> &'a Value {
    s["conventions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind && c["attribute"] == attribute)
        .unwrap_or_else(|| panic!("no {kind} {attribute} in {s}"))
}

#[test]
fn planted_problems_appear_with_exact_counts_and_working_links() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &["--block-max-age-secs", "1"]);

    // "legacy": no service.version or deployment.environment.name; 37 spans with the
    // deprecated http.status_code, 11 of them with http.response.status_code as a string.
    let legacy: Vec<Span> = (0..37)
        .map(|i| {
            let mut a = vec![kv("http.status_code", AV::IntValue(200))];
            if i < 11 {
                a.push(kv(
                    "http.response.status_code",
                    AV::StringValue("200".into()),
                ));
            }
            span(1000 + i, 5000 + i, 0, 2, a)
        })
        .collect();
    assert_eq!(post_otlp(&server, otlp_request("legacy", legacy)), 200);

    // "gateway" calls "orders" in complete traces; 5 more "orders" spans arrive without
    // their parents (lost), and 4 sampled ones (th:c, a quarter) whose parents were not
    // kept.
    let mut gw = Vec::new();
    let mut orders = Vec::new();
    for t in 0..20u64 {
        gw.push(span(2000 + t, 100 + t, 0, 3, Vec::new()));
        orders.push(span(2000 + t, 200 + t, 100 + t, 2, Vec::new()));
    }
    for t in 0..5u64 {
        orders.push(span(3000 + t, 300 + t, 999_000 + t, 2, Vec::new()));
    }
    for t in 0..4u64 {
        let mut s = span(4000 + t, 400 + t, 888_000 + t, 2, Vec::new());
        s.trace_state = "ot=th:c".into();
        orders.push(s);
    }
    assert_eq!(
        post_otlp(&server, otlp_request_with(full_resource("gateway"), gw)),
        200
    );
    assert_eq!(
        post_otlp(&server, otlp_request_with(full_resource("orders"), orders)),
        200
    );
    send_skewed_traces(&server, 30);

    // Orphans are judged when their head is sealed (here after a second).
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let (status, body) = http_get(server.api, "/api/v1/tracing-health").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let done =
            v["services"].as_array().unwrap().iter().any(|s| {
                s["service"] == "orders" && s["orphans"]["count"].as_u64().unwrap_or(0) > 0
            }) && v["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["service"] == "api" && !s["clocks"].as_array().unwrap().is_empty());
        if done {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "report incomplete after 30 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["semconvVersion"], "1.44.0");

    let legacy = service(&report, "legacy");
    assert_eq!(legacy["spans"], 37);
    let dep = convention(legacy, "deprecated", "http.status_code");
    assert_eq!(dep["count"], 37, "{dep}");
    assert_eq!(dep["note"], "Replaced by `http.response.status_code`.");
    let wrong = convention(legacy, "wrong_type", "http.response.status_code");
    assert_eq!(wrong["count"], 11, "{wrong}");
    assert_eq!(wrong["note"], "expected int, got string");
    for attr in ["service.version", "deployment.environment.name"] {
        assert_eq!(convention(legacy, "missing_resource", attr)["count"], 37);
    }
    assert_eq!(legacy["orphans"]["count"], 0);

    let orders = service(&report, "orders");
    assert_eq!(orders["orphans"]["count"], 5, "{orders}");
    assert_eq!(orders["samplingBreaks"]["count"], 4, "{orders}");
    assert_eq!(
        orders["orphans"]["expectedParentFrom"],
        serde_json::json!(["gateway"])
    );
    assert!(
        orders["conventions"].as_array().unwrap().is_empty(),
        "{orders}"
    );
    let gateway = service(&report, "gateway");
    assert_eq!(gateway["orphans"]["count"], 0);

    let api = service(&report, "api");
    let clock = &api["clocks"][0];
    assert_eq!(clock["host"], "api-1");
    let off = clock["offsetMs"].as_f64().unwrap();
    assert!((off - 2000.0).abs() < 200.0, "{clock}");

    // Example links open the traces they name.
    for ex in [
        &dep["examples"][0],
        &orders["orphans"]["examples"][0],
        &orders["samplingBreaks"]["examples"][0],
    ] {
        let id = ex.as_str().unwrap();
        let (status, page) = http_get(server.api, &format!("/trace/{id}")).unwrap();
        assert_eq!(status, 200, "example {id}");
        assert!(page.contains(id), "example {id}");
    }
    assert_eq!(dep["examples"].as_array().unwrap().len(), 3);

    // The page shows the same findings, with links.
    let (status, page) = http_get(server.api, "/tracing-health").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("semantic conventions 1.44.0"), "{page}");
    assert!(
        page.contains("<code>http.status_code</code>: Replaced by `http.response.status_code`.")
    );
    assert!(page.contains("parent expected from gateway"), "{page}");
    assert!(page.contains("api-1 is 2.0"), "{page}");
    let dep_ex = dep["examples"][0].as_str().unwrap();
    assert!(
        page.contains(&format!("href=\"/trace/{dep_ex}\"")),
        "{page}"
    );

    // And in the terminal.
    let out = std::process::Command::new(common::BIN)
        .args(["report", "tracing", "--api"])
        .arg(format!("http://127.0.0.1:{}", server.api))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("orders ("), "{text}");
    assert!(
        text.contains("5 orphan spans (parent expected from gateway)"),
        "{text}"
    );
    assert!(text.contains("4 sampling breaks"), "{text}");
    assert!(
        text.contains("37 spans: deprecated http.status_code: Replaced by"),
        "{text}"
    );
    assert!(text.contains("clock api-1 off by +"), "{text}");
}
