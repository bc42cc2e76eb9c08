//! One sampling policy for every SDK: faultline's sampling port answers Jaeger's remote
//! sampling protocol from the policy file, the real OpenTelemetry JS SDK with
//! `@opentelemetry/sampler-jaeger-remote` applies it, a changed file is taken without a
//! restart, and a bad one is refused while the last good policy stays in force.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, http_get, metric, status_part};

const SPANS: u64 = 4000;

fn policy(checkout_rate: f64) -> String {
    format!(
        r#"
[default_strategy]
type = "probabilistic"
param = 0.1
operation_strategies = [{{ operation = "GET /health", type = "probabilistic", param = 0.0 }}]

[[service_strategies]]
service = "checkout"
type = "probabilistic"
param = {checkout_rate}
operation_strategies = [{{ operation = "PlaceOrder", type = "probabilistic", param = 1.0 }}]

[[service_strategies]]
service = "search"
type = "ratelimiting"
param = 20
"#
    )
}

/// Writes `text` to `path` through a rename, as editors and config management do.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn strategy(server: &Server, service: &str) -> serde_json::Value {
    let (status, body) =
        http_get(server.sampling, &format!("/sampling?service={service}")).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Kept spans of `SPANS` at probability `p`: within 5 standard deviations.
fn assert_near(kept: u64, p: f64, what: &str) {
    let n = SPANS as f64;
    let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
    assert!(
        (kept as f64 - mean).abs() <= 5.0 * sd + 1.0,
        "{what}: kept {kept} of {SPANS}, expected about {mean} (p = {p})"
    );
}

struct Sdk {
    child: std::process::Child,
    lines: BufReader<std::process::ChildStdout>,
}

impl Sdk {
    fn start(server: &Server, service: &str) -> Sdk {
        let dir = common::node_clients();
        let mut child = Command::new("node")
            .current_dir(&dir)
            .arg("jaeger_remote_sampler.js")
            .arg(format!("http://127.0.0.1:{}", server.sampling))
            .arg(service)
            .arg(SPANS.to_string())
            .args(["Browse", "PlaceOrder", "GET /health"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (scripts/test installs Node.js when the machine lacks it)");
        let lines = BufReader::new(child.stdout.take().unwrap());
        Sdk { child, lines }
    }

    /// The next measurement: the SDK's sampler description and the spans kept per operation.
    fn measurement(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "the Node.js client exited without measuring"
        );
        serde_json::from_str(&line).unwrap()
    }

    fn again(&mut self) -> serde_json::Value {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"next\n").unwrap();
        stdin.flush().unwrap();
        self.measurement()
    }
}

impl Drop for Sdk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kept(m: &serde_json::Value, op: &str) -> u64 {
    m["kept"][op].as_u64().unwrap()
}

#[test]
fn the_javascript_sdk_applies_the_policy_and_follows_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sampling.toml");
    std::fs::write(&path, policy(0.25)).unwrap();
    let mut server = Server::start(
        &tmp.path().join("data"),
        &["--sampling-policy", path.to_str().unwrap()],
    );

    // The wire format, as the SDK reads it.
    assert_eq!(
        strategy(&server, "checkout"),
        serde_json::json!({"strategyType": "PROBABILISTIC",
            "probabilisticSampling": {"samplingRate": 0.25},
            "operationSampling": {"defaultSamplingProbability": 0.25,
                "defaultLowerBoundTracesPerSecond": 0.0,
                "defaultUpperBoundTracesPerSecond": 0.0,
                "perOperationStrategies": [
                    {"operation": "PlaceOrder", "probabilisticSampling": {"samplingRate": 1.0}},
                    {"operation": "GET /health", "probabilisticSampling": {"samplingRate": 0.0}}]}})
    );
    assert_eq!(
        strategy(&server, "search")["rateLimitingSampling"]["maxTracesPerSecond"],
        20
    );

    // The real SDK takes the policy: a quarter of checkout's traces, every PlaceOrder,
    // no health checks; an unnamed service gets the default tenth.
    let mut checkout = Sdk::start(&server, "checkout");
    let m = checkout.measurement();
    assert_near(kept(&m, "Browse"), 0.25, "checkout Browse at 0.25");
    assert_eq!(kept(&m, "PlaceOrder"), SPANS, "{m}");
    assert_eq!(kept(&m, "GET /health"), 0, "{m}");
    let mut other = Sdk::start(&server, "inventory");
    let m = other.measurement();
    assert_near(
        kept(&m, "Browse"),
        0.1,
        "inventory Browse at the default 0.1",
    );
    assert_eq!(kept(&m, "GET /health"), 0, "{m}");
    drop(other);

    // A changed file is taken without a restart, and the running SDK follows it.
    replace(&path, &policy(0.75));
    let m = checkout.again();
    assert_near(
        kept(&m, "Browse"),
        0.75,
        "checkout Browse after the reload to 0.75",
    );
    assert_eq!(kept(&m, "PlaceOrder"), SPANS, "{m}");
    let (_, view) = http_get(server.api, "/api/v1/sampling").unwrap();
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["generation"], 2, "{view}");
    assert_eq!(
        view["services"]["checkout"]["probabilisticSampling"]["samplingRate"],
        0.75
    );

    // A bad file is refused: the last good policy stays, and the refusal is visible on
    // the status page, in the API and in the metrics.
    replace(&path, &policy(1.5));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let part = status_part(server.api, "sampling policy");
        if part["state"] == "degraded" {
            let summary = part["summary"].as_str().unwrap();
            assert!(
                summary.contains("param 1.5 is not a probability")
                    && summary.contains("generation 2 stays in force"),
                "{part}"
            );
            assert!(
                part["action"]
                    .as_str()
                    .unwrap()
                    .contains("fix the policy file")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bad policy was not noticed: {part}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        strategy(&server, "checkout")["probabilisticSampling"]["samplingRate"],
        0.75
    );
    let (_, view) = http_get(server.api, "/api/v1/sampling").unwrap();
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert!(
        view["last_error"]
            .as_str()
            .unwrap()
            .contains("service_strategies[0] (\"checkout\")"),
        "{view}"
    );
    let m = server.metrics();
    assert_eq!(metric(&m, "faultline_sampling_policy_refused"), 1.0);
    assert_eq!(metric(&m, "faultline_sampling_policy_generation"), 2.0);

    // Fixing it clears the refusal.
    replace(&path, &policy(0.5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_part(server.api, "sampling policy")["state"] != "ok" {
        assert!(Instant::now() < deadline, "the fixed policy was not taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        strategy(&server, "checkout")["probabilisticSampling"]["samplingRate"],
        0.5
    );
    let (status, body) = http_get(server.sampling, "/sampling").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"parameter\":\"service\""), "{body}");
    server.stop();
}

#[test]
fn a_bad_policy_file_stops_the_start_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sampling.json");
    std::fs::write(
        &path,
        r#"{"default_strategy": {"type": "probabilistic", "param": 0.5},
            "service_strategies": [{"service": "a", "type": "ratelimiting", "param": 2.5}]}"#,
    )
    .unwrap();
    let p = common::Ports::new();
    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--sampling-policy", path.to_str().unwrap()])
        .args(["--otlp-grpc", &format!("127.0.0.1:{}", p.grpc)])
        .args(["--otlp-http", &format!("127.0.0.1:{}", p.http)])
        .args(["--zipkin", &format!("127.0.0.1:{}", p.zipkin)])
        .args(["--http", &format!("127.0.0.1:{}", p.api)])
        .args(["--sampling", &format!("127.0.0.1:{}", p.sampling)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("sampling.json")
            && err.contains("service_strategies[0] (\"a\"): param 2.5 is not a rate"),
        "{err}"
    );
}
