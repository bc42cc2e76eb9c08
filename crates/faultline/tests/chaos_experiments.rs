//! Chaos experiments on the example system (`examples/resilience`): three services
//! instrumented with the OpenTelemetry Python SDK, the frontend reaching its backends
//! through faultline's fault proxy (inside `serve`), a steady load. Chaos Toolkit runs the
//! repository's experiment, whose steady-state probe is faultline's
//! `/api/v1/steady-state`: it holds with the frontend's circuit breaker and breaks without
//! it, and the endpoint names the slow spans. `faultline experiment run` on the same
//! system: held (exit 0), broken with the spans named (exit 1), aborted by a stop
//! condition (exit 2), and a run killed mid-fault has its fault removed by the next.

#![allow(clippy::unwrap_used)]

mod common;

/// The tests of this file run one at a time: each test runs the example system under load and judges its p99, and
/// two at once on a 2-core machine would measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, Server, free_port, http_call, http_get};
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/resilience")
        .join(name)
}

/// Starts `services.py ROLE ARGS` with spans going to `otlp`; its fixture and port.
fn service(role: &str, otlp: &str, args: &[&str]) -> (Fixture, u16) {
    let mut all = vec![role];
    all.extend_from_slice(args);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)];
    let (f, v) = common::python_fixture_at(&example("services.py"), &all, &env);
    (f, v["port"].as_u64().unwrap() as u16)
}

fn proxy(api: u16, name: &str, upstream: u16) -> String {
    let body =
        format!(r#"{{"name":"{name}","listen":"127.0.0.1:0","upstream":"127.0.0.1:{upstream}"}}"#);
    let (status, text) = http_call(api, "POST", "/proxies", &body).unwrap();
    assert_eq!(status, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    format!("http://{}", v["listen"].as_str().unwrap())
}

const STEADY: &str = "/api/v1/steady-state?service=frontend&operation=GET%20/product&window=10s&maxErrorRate=0.01&maxP99=300ms&minRequests=20";

/// Waits until the frontend's steady state holds (the load has filled the window).
fn wait_steady(api: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(api, STEADY).unwrap();
        if status == 200 {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the example system never reached its steady state: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The example system with or without the frontend's breaker, and 40 requests/s on it.
struct System {
    _fixtures: Vec<Fixture>,
    load: Child,
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = self.load.kill();
        let _ = self.load.wait();
    }
}

fn start_system(server: &Server, proxy_api: u16, breaker: bool) -> System {
    for name in ["inventory", "pricing"] {
        let _ = http_call(proxy_api, "DELETE", &format!("/proxies/{name}"), "");
    }
    let otlp = server.http_url();
    let (inv, inv_port) = service("inventory", &otlp, &[]);
    let (pri, pri_port) = service("pricing", &otlp, &[]);
    let inv_url = proxy(proxy_api, "inventory", inv_port);
    let pri_url = proxy(proxy_api, "pricing", pri_port);
    let mut args = vec!["--inventory", &inv_url, "--pricing", &pri_url];
    if !breaker {
        args.push("--no-breaker");
    }
    let (front, front_port) = service("frontend", &otlp, &args);
    let load = Command::new(common::python())
        .arg(example("load.py"))
        .args([&format!("http://127.0.0.1:{front_port}/product"), "40", "0"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    System {
        _fixtures: vec![inv, pri, front],
        load,
    }
}

/// Runs a repository experiment with Chaos Toolkit; (exit code, journal).
fn chaos_run(experiment: &str, proxy_api: u16, api: u16, work: &Path) -> (i32, Value) {
    let chaos = common::python().parent().unwrap().join("chaos");
    let journal = work.join(format!("{experiment}.journal.json"));
    let out = Command::new(chaos)
        .args(["--no-version-check", "--log-file"])
        .arg(work.join("chaostoolkit.log"))
        .args(["run", "--journal-path"])
        .arg(&journal)
        .arg(example(&format!("chaostoolkit/{experiment}")))
        .env("PYTHONPATH", example(""))
        .env("TOXIPROXY_PORT", proxy_api.to_string())
        .env("FAULTLINE_API", format!("http://127.0.0.1:{api}"))
        .current_dir(work)
        .output()
        .unwrap();
    let journal: Value =
        serde_json::from_str(&std::fs::read_to_string(&journal).unwrap_or_else(|e| {
            panic!("no journal ({e}): {}", String::from_utf8_lossy(&out.stderr))
        }))
        .unwrap();
    (out.status.code().unwrap_or(-1), journal)
}

/// The steady-state probe's answer after the method, from the journal.
fn after_probe(journal: &Value) -> Value {
    let after = &journal["steady_states"]["after"]["probes"][0];
    let body = &after["output"]["body"];
    match body {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

#[test]
fn chaos_toolkit_with_the_steady_state_endpoint_passes_with_the_breaker_and_fails_without() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let proxy_api = free_port();
    let server = Server::start(
        data.path(),
        &["--fault-proxy", &format!("127.0.0.1:{proxy_api}")],
    );
    let api = server.api;

    // With the breaker: pricing timing out does not reach the product page.
    let system = start_system(&server, proxy_api, true);
    let before = wait_steady(api);
    assert!(
        before["measured"]["requests"].as_u64().unwrap() >= 20,
        "{before:#}"
    );
    let (code, journal) = chaos_run("pricing-timeout.json", proxy_api, api, work.path());
    let after = after_probe(&journal);
    assert_eq!(
        (
            code,
            journal["status"].as_str(),
            journal["deviated"].as_bool()
        ),
        (0, Some("completed"), Some(false)),
        "the hypothesis should hold with the breaker: {after:#}"
    );
    assert_eq!(after["pass"], true, "{after:#}");
    let (_, toxics) = http_get(proxy_api, "/proxies/pricing/toxics").unwrap();
    assert_eq!(toxics, "[]", "the experiment rolled its fault back");
    drop(system);

    // Without it every product page waits out the timeout: the hypothesis breaks, and the
    // steady-state answer names the slow frontend spans.
    let _system = start_system(&server, proxy_api, false);
    wait_steady(api);
    let (code, journal) = chaos_run("pricing-timeout.json", proxy_api, api, work.path());
    let after = after_probe(&journal);
    assert_eq!(
        (code, journal["deviated"].as_bool()),
        (1, Some(true)),
        "the hypothesis should break without the breaker: {after:#}"
    );
    assert_eq!(after["pass"], false, "{after:#}");
    let p99 = after["measured"]["p99Ms"].as_f64().unwrap();
    assert!(
        p99 > 450.0,
        "p99 {p99} ms: every request waits the 500 ms timeout"
    );
    let violations = after["violations"].as_array().unwrap();
    assert!(!violations.is_empty(), "{after:#}");
    for v in violations {
        assert_eq!(v["operation"], "GET /product");
        assert!(v["durationMs"].as_f64().unwrap() > 300.0, "{v}");
        // The named trace is readable, and holds the pricing call that timed out.
        let id = v["traceId"].as_str().unwrap();
        let (status, body) = http_get(api, &format!("/api/traces/{id}")).unwrap();
        assert_eq!(status, 200);
        assert!(
            body.contains("GET /price") && body.contains("TimeoutError"),
            "{id}"
        );
    }
    let (_, toxics) = http_get(proxy_api, "/proxies/pricing/toxics").unwrap();
    assert_eq!(toxics, "[]", "rolled back even when the hypothesis broke");
}

#[test]
fn steady_state_parameters_are_checked() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    for (query, param) in [
        ("", "service"),
        ("?service=a&maxErrorRate=2", "maxErrorRate"),
        ("?service=a&maxP99=fast", "maxP99"),
        ("?service=a&window=0s", "window"),
        ("?service=a&start=10", "end"),
        ("?service=a&start=20&end=10", "end"),
        ("?service=a&maxTraces=0", "maxTraces"),
    ] {
        let (status, body) = http_get(server.api, &format!("/api/v1/steady-state{query}")).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status, v["parameter"].as_str()),
            (400, Some(param)),
            "{query}: {body}"
        );
    }
    // No requests in the window: nothing proves the steady state.
    let (status, body) = http_get(server.api, "/api/v1/steady-state?service=nobody").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &v["pass"]), (417, &Value::Bool(false)), "{body}");
    assert_eq!(v["checks"][0]["check"], "minRequests");
    let (status, _) = http_get(
        server.api,
        "/api/v1/steady-state?service=nobody&minRequests=0",
    )
    .unwrap();
    assert_eq!(status, 200);
}

/// `faultline experiment run FILE` against the server; (exit code, stdout, journal, JUnit).
fn experiment(
    file: &str,
    server: &Server,
    proxy_api: u16,
    work: &Path,
) -> (i32, String, Value, String) {
    let journal = work.join(format!("{file}.journal.json"));
    let junit = work.join(format!("{file}.junit.xml"));
    let out = experiment_cmd(file, server, proxy_api, work)
        .arg("--journal")
        .arg(&journal)
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let journal: Value = serde_json::from_str(
        &std::fs::read_to_string(&journal).unwrap_or_else(|e| panic!("no journal ({e}): {text}")),
    )
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        text,
        journal,
        std::fs::read_to_string(junit).unwrap(),
    )
}

fn experiment_cmd(file: &str, server: &Server, proxy_api: u16, work: &Path) -> Command {
    let mut c = Command::new(common::BIN);
    c.args(["experiment", "run"])
        .arg(example(&format!("experiments/{file}")))
        .args(["--api", &format!("http://127.0.0.1:{}", server.api)])
        .args(["--proxy", &format!("http://127.0.0.1:{proxy_api}")])
        .arg("--state-dir")
        .arg(work.join("state"));
    c
}

fn toxics(proxy_api: u16, proxy: &str) -> Value {
    let (_, body) = http_get(proxy_api, &format!("/proxies/{proxy}/toxics")).unwrap();
    serde_json::from_str(&body).unwrap()
}

#[test]
fn faultline_experiment_run_holds_breaks_aborts_and_cleans_up_after_a_kill() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let proxy_api = free_port();
    let server = Server::start(
        data.path(),
        &["--fault-proxy", &format!("127.0.0.1:{proxy_api}")],
    );
    let system = start_system(&server, proxy_api, true);
    wait_steady(server.api);

    // Held: exit 0, a journal and a JUnit report without failures.
    let (code, text, journal, junit) =
        experiment("pricing-timeout.json", &server, proxy_api, work.path());
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        (journal["status"].as_str(), &journal["deviated"]),
        (Some("completed"), &Value::Bool(false))
    );
    assert_eq!(
        journal["faultsRemoved"],
        serde_json::json!(["toxic pricing-answers-after-2s on proxy pricing"])
    );
    assert!(junit.contains("failures=\"0\" errors=\"0\""), "{junit}");
    assert!(
        text.contains("Verdict: the hypothesis held (exit 0)"),
        "{text}"
    );
    assert_eq!(toxics(proxy_api, "pricing"), serde_json::json!([]));

    // Aborted by the stop condition: inventory down fails every product page.
    wait_steady(server.api);
    let (code, text, journal, junit) =
        experiment("inventory-down.json", &server, proxy_api, work.path());
    assert_eq!(code, 2, "{text}");
    assert_eq!(journal["status"], "aborted");
    assert!(
        journal["abortReason"]
            .as_str()
            .unwrap()
            .contains("stop condition product-page-failing fired"),
        "{journal:#}"
    );
    assert!(
        journal["method"][1]["seconds"].as_f64().unwrap_or(0.0) < 15.0,
        "stopped before the 20 s wait ended"
    );
    assert!(junit.contains("<error"), "{junit}");
    let (_, body) = http_get(proxy_api, "/proxies/inventory").unwrap();
    assert!(
        body.contains("\"enabled\":true"),
        "inventory is back: {body}"
    );

    // A fault with a duration is removed when it ends, before the method does.
    let file = work.path().join("blip.json");
    std::fs::write(
        &file,
        r#"{"title": "A 2 s blip of pricing errors", "service": "frontend",
            "steady-state-hypothesis": {"title": "any traffic", "checks": [
              {"name": "traffic", "service": "frontend", "window": "10s", "minRequests": 1}]},
            "method": [
              {"type": "proxy-down", "name": "pricing-blip", "proxy": "pricing", "duration": "2s"},
              {"type": "wait", "name": "after", "duration": "1s"}]}"#,
    )
    .unwrap();
    let out = Command::new(common::BIN)
        .args(["experiment", "run"])
        .arg(&file)
        .args(["--api", &format!("http://127.0.0.1:{}", server.api)])
        .args(["--proxy", &format!("http://127.0.0.1:{proxy_api}")])
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg("--journal")
        .arg(work.path().join("blip.journal.json"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let journal: Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("blip.journal.json")).unwrap(),
    )
    .unwrap();
    let blip = &journal["method"][0];
    assert_eq!(blip["output"]["removedAfterSeconds"], 2.0, "{journal:#}");
    assert!(blip["seconds"].as_f64().unwrap() >= 2.0);
    let (_, body) = http_get(proxy_api, "/proxies/pricing").unwrap();
    assert!(body.contains("\"enabled\":true"), "{body}");

    // Killed mid-run: the fault stays until the next run (here `cleanup`) removes it.
    wait_steady(server.api);
    let mut runner = experiment_cmd("pricing-timeout.json", &server, proxy_api, work.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while toxics(proxy_api, "pricing").as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the run never added its fault");
        std::thread::sleep(Duration::from_millis(100));
    }
    runner.kill().unwrap();
    runner.wait().unwrap();
    assert_eq!(
        toxics(proxy_api, "pricing").as_array().unwrap().len(),
        1,
        "the killed run's fault is still there"
    );
    let out = Command::new(common::BIN)
        .args(["experiment", "cleanup", "--state-dir"])
        .arg(work.path().join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains(
                "toxic pricing-answers-after-2s on proxy pricing (left by interrupted run"
            ),
        "{text}"
    );
    assert_eq!(toxics(proxy_api, "pricing"), serde_json::json!([]));
    drop(system);

    // Without the breaker: broken, exit 1, the report names the slow spans.
    let _system = start_system(&server, proxy_api, false);
    wait_steady(server.api);
    let (code, text, journal, junit) =
        experiment("pricing-timeout.json", &server, proxy_api, work.path());
    assert_eq!(code, 1, "{text}");
    assert_eq!(journal["deviated"], true);
    assert!(
        text.contains("Verdict: the hypothesis was BROKEN (exit 1)"),
        "{text}"
    );
    assert!(text.contains("product-page DOES NOT HOLD"), "{text}");
    let touched = journal["tracesTouched"].as_array().unwrap();
    assert!(!touched.is_empty(), "{journal:#}");
    for id in touched.iter().take(3) {
        let id = id.as_str().unwrap();
        assert!(
            text.contains(&format!("/trace/{id}")),
            "the report links {id}: {text}"
        );
        let (status, body) = http_get(server.api, &format!("/api/traces/{id}")).unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("GET /product"), "{id}");
    }
    assert!(junit.contains("failures=\"1\""), "{junit}");
    assert_eq!(toxics(proxy_api, "pricing"), serde_json::json!([]));

    // Every finished run was reported to faultline: the API and the page show them, and
    // the frontend's resilience score counts the latest run of each experiment.
    let (_, body) = http_get(server.api, "/api/v1/experiments").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let verdicts: Vec<(&str, bool)> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_str().unwrap(), r["deviated"] == true))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("completed", true),
            ("completed", false),
            ("aborted", false),
            ("completed", false)
        ],
        "newest first; the killed run never finished: {v:#}"
    );
    let score = &v["scores"][0];
    assert_eq!(score["service"], "frontend");
    // pricing-timeout (severity 3) broke at its latest run, inventory-down (5) aborted,
    // the blip (1) held: 1 / 9.
    let s = score["score"].as_f64().unwrap();
    assert!((s - 1.0 / 9.0).abs() < 1e-9, "{score:#}");
    let (status, page) = http_get(server.api, "/experiments").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("data-verdict=\"broken\"") && page.contains("data-verdict=\"held\""));
    assert!(
        page.contains(&format!("/trace/{}", touched[0].as_str().unwrap())),
        "{page}"
    );
}

#[test]
fn serve_runs_scheduled_experiments_and_keeps_their_runs() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let proxy_api = free_port();
    let cfg = data.path().join("faultline.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nfault_proxy = \"127.0.0.1:{proxy_api}\"\n[[experiments]]\nfile = {:?}\nevery = \"10s\"\n",
            example("experiments/pricing-timeout.json").display().to_string()
        ),
    )
    .unwrap();
    let cfg_arg = cfg.display().to_string();
    let server = Server::start(&data.path().join("d"), &["--config", &cfg_arg]);
    let _system = start_system(&server, proxy_api, true);
    let deadline = Instant::now() + Duration::from_secs(90);
    let run = loop {
        let (_, body) = http_get(server.api, "/api/v1/experiments").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        if let Some(r) = v["runs"].as_array().and_then(|r| r.first()) {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled run within 90 s: {v:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(
        run["title"],
        "The product page stays fast when pricing times out"
    );
    let (status, body) = http_get(
        server.api,
        &format!("/api/v1/experiments/runs/{}", run["run"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(status, 200);
    let journal: Value = serde_json::from_str(&body).unwrap();
    assert!(
        journal["steadyStates"]["before"][0]["answer"]["measured"].is_object(),
        "{journal:#}"
    );
    // Kept across a restart.
    drop(server);
    let server = Server::start(&data.path().join("d"), &["--config", &cfg_arg]);
    let (_, body) = http_get(server.api, "/api/v1/experiments").unwrap();
    assert!(body.contains(run["run"].as_str().unwrap()), "{body}");
    // A schedule that cannot run is refused at start, naming the entry.
    std::fs::write(
        &cfg,
        "[[experiments]]\nfile = \"/nonexistent.json\"\nevery = \"1s\"\n",
    )
    .unwrap();
    let out = Command::new(common::BIN)
        .args(["serve", "--config", &cfg_arg])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("experiments[0] (/nonexistent.json): every = \"1s\" must be a duration of at least \"10s\""), "{err}");
}

#[test]
fn experiments_check_trace_assertions_as_their_steady_state() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let proxy_api = free_port();
    let server = Server::start(
        data.path(),
        &["--fault-proxy", &format!("127.0.0.1:{proxy_api}")],
    );
    let _system = start_system(&server, proxy_api, true);
    wait_steady(server.api);
    // Inventory slower than the frontend's 500 ms timeout: every product page retries its
    // stock call, which the assertion "one stock call per product page" catches.
    let file = work.path().join("stock.json");
    std::fs::write(
        &file,
        r#"{"title": "Each product page reads stock once", "service": "frontend",
            "steady-state-hypothesis": {"title": "one stock call per product page", "checks": [
              {"name": "one-stock-call", "service": "frontend", "operation": "GET /product", "window": "8s",
               "assertions": {"assertions": [{"name": "one stock call",
                 "select": "{ name = \"GET /product\" } > { name = \"GET /stock\" }", "count": 1}]}}]},
            "method": [
              {"type": "toxic", "name": "inventory-slow", "proxy": "inventory",
               "toxic": {"type": "latency", "attributes": {"latency": 700}}},
              {"type": "wait", "name": "observe", "duration": "9s"}]}"#,
    )
    .unwrap();
    let journal = work.path().join("journal.json");
    let out = Command::new(common::BIN)
        .args(["experiment", "run"])
        .arg(&file)
        .args(["--api", &format!("http://127.0.0.1:{}", server.api)])
        .args(["--proxy", &format!("http://127.0.0.1:{proxy_api}")])
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg("--journal")
        .arg(&journal)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&journal).unwrap()).unwrap();
    let before = &j["steadyStates"]["before"][0];
    assert_eq!(before["pass"], true, "{before:#}");
    assert!(before["answer"]["checked"].as_u64().unwrap() > 0);
    let after = &j["steadyStates"]["after"][0]["answer"];
    assert!(after["failed"].as_u64().unwrap() > 0, "{after:#}");
    let v = &after["violations"][0];
    assert_eq!(v["operation"], "one stock call");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("expected 1 spans, found "),
        "{v}"
    );
    // The named span is a stock call of the named trace.
    let (_, body) = http_get(
        server.api,
        &format!("/api/traces/{}", v["traceId"].as_str().unwrap()),
    )
    .unwrap();
    assert!(
        body.contains(v["spanId"].as_str().unwrap()) && body.contains("GET /stock"),
        "{body}"
    );
    assert!(
        text.contains("trace assertions:") && text.contains("one stock call (expected 1 spans"),
        "{text}"
    );
}
