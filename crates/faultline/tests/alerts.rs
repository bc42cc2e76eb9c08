//! Alert rules in a running server: a planted p99 regression on one operation fires its
//! rule, named with the operation and the value measured, and is one webhook message
//! (tests/clients/notify_receivers.py), while a rule on a healthy operation stays quiet;
//! once the regression ends the rule resolves, in the API and as one more message; a bad
//! rule stops `serve` with a message naming the field. Rules judge whole minutes (15 s
//! after each ends), so resolving takes one to two minutes of wall-clock time.

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
fn a_p99_regression_fires_its_rule_naming_the_operation_and_resolves_when_it_ends() {
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
    // The first fast minute after the regression (`last + 1`) is judged at most about
    // 100 s from now.
    let last = common::last_slow_minute();
    // Three fast minutes, then four slow ones up to `last`; the cart stays fast.
    let mut all = Vec::new();
    for m in last - 6..=last {
        let minute_ns = m * 60_000_000_000;
        let ms = if m + 3 >= last { 1200 } else { 40 };
        all.extend(spans("POST /checkout", minute_ns, ms, 0xa1));
        all.extend(spans("GET /cart", minute_ns, 30, 0xa2));
    }
    assert_eq!(post_otlp(&server, request(all).encode_to_vec()), 200);
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
    firing_checks(&server, &alerts, &received);
    let start = alerts["alerts"][0]["incidents"][0]["start"]
        .as_u64()
        .unwrap();

    // The regression ends: minute `last + 1` is fast. The rule resolves when that minute
    // is judged, 15 s after it ends.
    let mut fast = spans("POST /checkout", (last + 1) * 60_000_000_000, 40, 0xa1);
    fast.extend(spans("GET /cart", (last + 1) * 60_000_000_000, 30, 0xa2));
    assert_eq!(post_otlp(&server, request(fast).encode_to_vec()), 200);
    let resolves_at = (last + 2) * 60 + 15;
    let now_s = common::now_ns() / 1_000_000_000;
    eprintln!(
        "the rule should resolve in {} s",
        resolves_at.saturating_sub(now_s)
    );
    let deadline = Instant::now() + Duration::from_secs(resolves_at.saturating_sub(now_s) + 30);
    let alerts = loop {
        let (_, body) = http_get(server.api, "/api/v1/alerts").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["alerts"][0]["firing"] == false {
            break v;
        }
        assert!(Instant::now() < deadline, "never resolved: {body}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        common::now_ns() / 1_000_000_000 >= resolves_at,
        "resolved before the fast minute was judged: {alerts}"
    );
    let slow = &alerts["alerts"][0];
    let incidents = slow["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "the same incident, ended: {alerts}");
    assert_eq!(incidents[0]["start"], start);
    assert_eq!(
        incidents[0]["end"],
        (last + 1) * 60,
        "it ended with the first fast minute: {alerts}"
    );
    let cart = &alerts["alerts"][1];
    assert_eq!(cart["firing"], false);
    assert!(cart["incidents"].as_array().unwrap().is_empty());
    let (_, page) = http_get(server.api, "/alerts").unwrap();
    let section = page
        .split("<section class=\"alert quiet\" data-name=\"checkout-slow\">")
        .nth(1)
        .unwrap_or_else(|| panic!("{page}"));
    let section = section.split("</section>").next().unwrap();
    assert_eq!(
        section.matches("<tr class=incident>").count(),
        1,
        "{section}"
    );
    assert!(!section.contains("ongoing"), "{section}");
    // Exactly one "resolved" message, and nothing more, however many evaluations follow.
    let deadline = Instant::now() + Duration::from_secs(15);
    while messages(&received).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no resolved message: {:?}",
            messages(&received)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(6));
    let all = messages(&received);
    assert_eq!(all.len(), 2, "one firing, one resolved: {all:?}");
    let body = &all[1]["body"];
    assert_eq!(body["title"], "alert checkout-slow resolved", "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(
        events[0]["key"],
        format!("alert/checkout-slow/{start}/resolved")
    );
    assert_eq!(events[0]["state"], "resolved");
    let said = events[0]["message"].as_str().unwrap();
    assert!(
        said.starts_with("resolved: p99 of checkout POST /checkout above 500 ms for 2 minutes; ")
            && said.ends_with(" ms in the last minute"),
        "{said}"
    );
    let resolved = all
        .iter()
        .flat_map(|m| m["body"]["events"].as_array().unwrap().iter())
        .filter(|e| e["state"] == "resolved")
        .count();
    assert_eq!(resolved, 1);
}

/// The receiver's records, in order.
fn messages(received: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(received)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One OTLP request of `spans` from service `checkout`.
fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
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
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// While the regression lasts: fired once, named with the operation and what it measured,
/// in the API, the page and one webhook message; the healthy operation's rule is quiet.
fn firing_checks(server: &Server, alerts: &Value, received: &std::path::Path) {
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
    let got = messages(received);
    assert_eq!(got.len(), 1, "{got:?}");
    let events = got[0]["body"]["events"].as_array().unwrap();
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
    assert_eq!(got[0]["body"]["title"], "alert checkout-slow is firing");
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
