//! Alert rules in a running server: a planted p99 regression on one operation fires its
//! rule, named with the operation and the value measured, and is one webhook message
//! (tests/clients/notify_receivers.py), while a rule on a healthy operation stays quiet;
//! a bad rule stops `serve` with a message naming the field. (Resolving is shown on the
//! store in faultline-alerts' tests: it needs minutes to pass.)

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use prost::Message;
use serde_json::Value;

use common::{Server, http_get, post_otlp};
use faultline_model::ExportTraceServiceRequest;
use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value as V};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span};

/// 30 spans of `op` in the minute starting at `minute_ns`, each about `ms` long.
fn spans(op: &str, minute_ns: u64, ms: u64, seed: u8) -> Vec<Span> {
    (0..30u64)
        .map(|i| {
            let start = minute_ns + i * 1_900_000_000;
            let mut trace_id = vec![seed; 16];
            trace_id[8..].copy_from_slice(&(minute_ns / 60_000_000_000 * 100 + i).to_be_bytes());
            Span {
                trace_id,
                span_id: vec![1, 2, 3, 4, 5, 6, 7, i as u8 + 1],
                name: op.into(),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + ms * 1_000_000 + i * 7_000_000,
                ..Span::default()
            }
        })
        .collect()
}

#[test]
fn a_p99_regression_fires_its_rule_naming_the_operation() {
    let tmp = tempfile::tempdir().unwrap();
    let received = tmp.path().join("received.jsonl");
    let (_receivers, ports) = common::python_fixture(
        "notify_receivers.py",
        &["--out", received.to_str().unwrap()],
    );
    let config = tmp.path().join("faultline.toml");
    std::fs::write(
        &config,
        format!(
            "[notify]\ngroup_secs = 0\n[[notify.receivers]]\nname = \"hook\"\nwebhook = {{ url = \"http://127.0.0.1:{}/hook\" }}\n",
            ports["http_port"]
        ) + r#"
[[alerts]]
name = "checkout-slow"
service = "checkout"
operation = "POST /checkout"
p99_above_ms = 500
for_minutes = 2

[[alerts]]
name = "cart-slow"
service = "checkout"
operation = "GET /cart"
p99_above_ms = 500
for_minutes = 2
"#,
    )
    .unwrap();
    let server = Server::start(
        &tmp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let now_m = common::now_ns() / 60_000_000_000;
    // Six minutes back: three fast minutes, then slow ones up to the current minute (so
    // whichever two whole minutes are judged, both are slow); the cart stays fast.
    let mut all = Vec::new();
    for back in 0..=6u64 {
        let minute_ns = (now_m - back) * 60_000_000_000;
        let ms = if back <= 3 { 1200 } else { 40 };
        all.extend(spans("POST /checkout", minute_ns, ms, 0xa1));
        all.extend(spans("GET /cart", minute_ns, 30, 0xa2));
    }
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(V::StringValue("checkout".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: all,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    assert_eq!(post_otlp(&server, req.encode_to_vec()), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let (_, body) = http_get(server.api, "/api/v1/alerts").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["alerts"][0]["firing"] == true {
            break v;
        }
        assert!(Instant::now() < deadline, "never fired: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let slow = &alerts["alerts"][0];
    assert_eq!(slow["name"], "checkout-slow");
    let incidents = slow["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "fired once: {alerts}");
    let message = incidents[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("p99 of checkout POST /checkout above 500 ms for 2 minutes: 1.")
            && message.ends_with(" s in the last minute"),
        "{message}"
    );
    assert!(incidents[0]["end"].is_null());
    let cart = &alerts["alerts"][1];
    assert_eq!(
        (cart["name"].as_str(), &cart["firing"]),
        (Some("cart-slow"), &Value::Bool(false))
    );
    assert!(cart["incidents"].as_array().unwrap().is_empty());
    // The page says the same.
    let (status, page) = http_get(server.api, "/alerts").unwrap();
    assert_eq!(status, 200);
    let section = page
        .split("<section class=\"alert firing\" data-name=\"checkout-slow\">")
        .nth(1)
        .unwrap_or_else(|| panic!("{page}"));
    assert!(section.contains("ongoing") && section.contains("POST /checkout above 500 ms"));
    assert!(page.contains("<section class=\"alert quiet\" data-name=\"cart-slow\">"));
    // It stays one incident while the regression lasts.
    std::thread::sleep(Duration::from_secs(6));
    let (_, body) = http_get(server.api, "/api/v1/alerts").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["alerts"][0]["incidents"].as_array().unwrap().len(),
        1,
        "{body}"
    );
    // One message for the incident, through the outbox, naming the operation.
    let messages: Vec<Value> = std::fs::read_to_string(&received)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let events = messages[0]["body"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    let start = incidents[0]["start"].as_u64().unwrap();
    assert_eq!(
        events[0]["key"],
        format!("alert/checkout-slow/{start}/firing")
    );
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("p99 of checkout POST /checkout above 500 ms"),
        "{}",
        events[0]
    );
    assert_eq!(
        messages[0]["body"]["title"],
        "alert checkout-slow is firing"
    );
}

#[test]
fn a_bad_rule_stops_serve_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("faultline.toml");
    std::fs::write(
        &config,
        "[[alerts]]\nname = \"x\"\nservice = \"checkout\"\np99_above_ms = 500\nfor_minutes = 0\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--data-dir", tmp.path().join("data").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alert rule \"x\": for_minutes: must be 1 to 1440"),
        "{err}"
    );
}
