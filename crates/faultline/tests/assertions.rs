//! Trace assertions (`POST /api/v1/assertions/run`) over traces the real OpenTelemetry
//! Python SDK sent: each kind of check passes or fails as the spans say, a failure names
//! the span that broke it, a search checks every trace it finds, and bad files are refused
//! with the assertion, field and selector column.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, http_call};
use serde_json::{Value, json};

fn run(server: &Server, body: &Value) -> (u16, Value) {
    let (status, text) = http_call(
        server.api,
        "POST",
        "/api/v1/assertions/run",
        &body.to_string(),
    )
    .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The assertions about `otel_send.py`'s trace: a SERVER root "checkout MARKER", a
/// "db.query" CLIENT child with db.system=postgresql, a failing "payment.charge".
fn file() -> Value {
    json!({"name": "checkout", "assertions": [
        {"name": "one db query", "select": "{ name = \"db.query\" }", "count": 1},
        {"name": "db under the checkout", "select": "{ kind = server } > { .db.system = \"postgresql\" }", "minCount": 1},
        {"name": "payment declined", "select": "{ name = \"payment.charge\" }", "status": "error"},
        {"name": "no errors", "select": "{ status = error }", "count": 0},
        {"name": "quick db", "select": "{ name = \"db.query\" }", "maxDuration": "10s"},
        {"name": "db before payment", "select": "{ name = \"db.query\" }", "before": "{ name = \"payment.charge\" }"}
    ]})
}

#[test]
fn assertions_check_sdk_traces_and_name_the_spans_that_break_them() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let send = |marker: &str| {
        let out = std::process::Command::new(common::python())
            .arg(common::client_script("otel_send.py"))
            .args(["--protocol", "http", "--endpoint", &server.http_url()])
            .args(["--service", "assert-svc", "--marker", marker])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        v
    };
    let first = send("a-1");
    let second = send("a-2");
    let id = first["trace_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let (status, v) = run(&server, &json!({"assertions": file(), "traceId": id}));
        if status == 200 {
            break v;
        }
        assert!(status == 404 && Instant::now() < deadline, "{status} {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let results = &answer["traces"][0]["results"];
    let by = |n: &str| {
        results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    for n in [
        "one db query",
        "db under the checkout",
        "payment declined",
        "quick db",
        "db before payment",
    ] {
        assert_eq!(by(n)["pass"], true, "{n}: {}", by(n));
    }
    let errors = by("no errors");
    assert_eq!(errors["pass"], false);
    assert_eq!(errors["message"], "expected 0 spans, found 1");
    assert_eq!(
        errors["spans"],
        json!([first["span_ids"][2]]),
        "names payment.charge"
    );
    assert_eq!(
        (&answer["pass"], &answer["checked"], &answer["failed"]),
        (&json!(false), &json!(1), &json!(1))
    );

    // Over a search: every trace of the service is checked.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = run(
            &server,
            &json!({"assertions": {"assertions": [
            {"name": "one db query", "select": "{ name = \"db.query\" }", "count": 1}]},
            "search": {"service": "assert-svc", "lookback": "1h"}}),
        );
        assert_eq!(status, 200, "{v}");
        if v["checked"] == 2 {
            assert_eq!(v["pass"], true, "{v}");
            let mut ids: Vec<&str> = v["traces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["traceId"].as_str().unwrap())
                .collect();
            ids.sort();
            let mut want = vec![id, second["trace_id"].as_str().unwrap()];
            want.sort();
            assert_eq!(ids, want);
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Bad input.
    let (status, v) = run(
        &server,
        &json!({"assertions": {"assertions": [
        {"name": "typo", "select": "{ nam = \"x\" }"}]}, "traceId": id}),
    );
    assert_eq!(status, 400);
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("assertions[0] (typo).select")
            && msg.contains("at column 3")
            && msg.contains("expected a field"),
        "{msg}"
    );
    let (status, _) = run(
        &server,
        &json!({"assertions": file(), "traceId": "00000000000000000000000000000001"}),
    );
    assert_eq!(status, 404);
    let (status, v) = run(&server, &json!({"assertions": file()}));
    assert_eq!((status, v["parameter"].as_str()), (400, Some("traceId")));
    let (status, v) = run(&server, &json!({"assertions": file(), "traceId": "xyz"}));
    assert_eq!((status, v["parameter"].as_str()), (400, Some("traceId")));
}

#[test]
fn faultline_assert_reports_junit_and_exit_codes_for_ci() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let out = std::process::Command::new(common::python())
        .arg(common::client_script("otel_send.py"))
        .args(["--protocol", "grpc", "--endpoint", &server.grpc_url()])
        .args(["--service", "cli-svc", "--marker", "c-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let id = sent["trace_id"].as_str().unwrap();
    let write = |name: &str, v: &Value| {
        let p = work.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let failing = write("failing.json", &file());
    let passing = write(
        "passing.json",
        &json!({"assertions": [
        {"name": "one db query", "select": "{ name = \"db.query\" }", "count": 1}]}),
    );
    let bad = write(
        "bad.json",
        &json!({"assertions": [{"name": "b", "select": "{ kind = sever }"}]}),
    );
    let api = format!("http://127.0.0.1:{}", server.api);
    let assert_cmd = |file: &std::path::Path, extra: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .arg("assert")
            .arg(file)
            .args(["--api", &api])
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = assert_cmd(&passing, &["--trace", id]);
        if code == 0 {
            assert!(text.contains(&format!("PASS trace {id}")), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "{code}: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let junit = work.path().join("junit.xml");
    let (code, text) = assert_cmd(
        &failing,
        &["--trace", id, "--junit", junit.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{text}");
    let payment = sent["span_ids"][2].as_str().unwrap();
    assert!(
        text.contains("FAIL no errors: expected 0 spans, found 1") && text.contains(payment),
        "{text}"
    );
    assert!(text.contains(&format!("{api}/trace/{id}")), "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"6\" failures=\"1\"")
            && xml.contains("<failure message=\"expected 0 spans, found 1\">"),
        "{xml}"
    );
    // A trace is read by id from acknowledged records at once; search sees it once it
    // is indexed (on ClickHouse: once the writer sent it), which may be a moment later.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, text) = loop {
        let (code, text) = assert_cmd(&passing, &["--service", "cli-svc", "--since", "1h"]);
        if code != 2 || !text.contains("no trace matched") || Instant::now() > deadline {
            break (code, text);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 traces checked, 0 failed"), "{text}");
    let (code, text) = assert_cmd(&passing, &["--service", "nobody"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no trace matched"), "{text}");
    let (code, text) = assert_cmd(&bad, &["--trace", id]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("assertions[0] (b).select") && text.contains("at column 10"),
        "{text}"
    );
}
