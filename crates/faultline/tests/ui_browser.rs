//! The web UI in headless Chromium (Debian's chromium and chromium-driver, installed by
//! scripts/test), over traces sent by the Python OpenTelemetry SDK and by loadgen: the
//! services page, search to a trace, collapsing and expanding spans, span details, find in
//! trace, a "look here first" error group, the dependency map, and spans moved by
//! clock-skew correction marked (and not with `?raw=1`). Screenshots are kept in
//! the target directory's `tmp/ui-screenshots`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, client_script, http_get, python};

#[test]
fn pages_work_in_a_real_browser() {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: run ./scripts/test, which installs Debian's chromium and chromium-driver"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    // Cross-service traffic for the dependency map, then two SDK traces.
    common::loadgen(&[
        "--protocol",
        "http",
        "--endpoint",
        &server.http_url(),
        "--duration",
        "1",
        "--concurrency",
        "1",
        "--rate",
        "2000",
    ])
    .wait();
    for marker in ["b1", "b2"] {
        common::send_sdk_trace(&server, "http", "browser-svc", marker);
    }
    // Traces with planted clock skew: enough calls for the estimates.
    let skewed = common::send_skewed_traces(&server, 40);
    let skew_trace = skewed.last().unwrap();
    let started = Instant::now();
    loop {
        let (status, body) = http_get(server.api, &format!("/api/traces/{skew_trace}")).unwrap();
        if status == 200 && body.contains("clock skew adjusted") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    loop {
        let (_, body) =
            http_get(server.api, "/api/v1/traces/summaries?service=browser-svc").unwrap();
        if body.matches("\"traceId\"").count() == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A probe of faultline's own /health, checked every second, with a few results.
    let def = format!(
        r#"{{"name":"self-health","interval_secs":1,"http":{{"url":"http://127.0.0.1:{}/health"}}}}"#,
        server.api
    );
    let (status, body) = common::http_call(server.api, "POST", "/api/v1/probes", &def).unwrap();
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    while http_get(server.api, "/api/v1/probes/self-health")
        .unwrap()
        .1
        .matches("\"ok\":true")
        .count()
        < 3
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let out = Command::new(python())
        .arg(client_script("ui_check.py"))
        .args(["--base", &format!("http://127.0.0.1:{}", server.api)])
        .args(["--service", "browser-svc"])
        .arg("--screenshots")
        .arg(&shots)
        .args(["--skew-trace", skew_trace])
        .args(["--probe", "self-health"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser checks failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let seen: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert!(seen["dependency_edges"].as_u64().unwrap() > 0, "{seen}");
    assert_eq!(seen["skew_marks"].as_array().unwrap().len(), 3, "{seen}");
    assert!(
        seen["error_group"]
            .as_str()
            .unwrap()
            .contains("card declined"),
        "{seen}"
    );
    for name in [
        "1-services",
        "2-search",
        "3-trace",
        "4b-service-error-group",
        "5-dependencies",
        "7-skew",
        "7b-skew-raw",
    ] {
        assert!(
            shots.join(format!("{name}.png")).exists(),
            "screenshot {name}"
        );
    }
}
