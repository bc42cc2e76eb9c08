//! Continuous checks end to end (`faultline_checks`): order and shipment flows planted
//! through the real OpenTelemetry Python SDK (HTTP and gRPC exporters at once) while
//! faultline is killed with SIGKILL ten times; afterwards every key is in exactly the
//! class its flow was planted for, counts match, trace links open, `faultline rules
//! check` over the stored spans agrees, and /metrics and /consistency show it. Then
//! continuous assertions over an SDK service's traces catch planted regressions; and bad
//! rules are refused with the field and the selector's column.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, http_call, http_get, metric};
use serde_json::{Value, json};

const PER_CLASS: usize = 60;

fn rule_json() -> Value {
    json!({
        "name": "order-shipped",
        "first": "{ service = \"orders\" && name = \"create order\" }",
        "then": "{ service = \"shipping\" && name = \"ship order\" }",
        "key": "order.id",
        "within": "2s",
        "grace": "1s",
        "at_most_one": true,
        "require_first": true,
    })
}

fn config(dir: &Path, hook_port: u64) -> std::path::PathBuf {
    let path = dir.join("faultline.toml");
    std::fs::write(
        &path,
        format!(
            "[notify]\ngroup_secs = 0\n[[notify.receivers]]\nname = \"hook\"\nwebhook = {{ url = \"http://127.0.0.1:{hook_port}/hook\" }}\n"
        ) + r#"
[[consistency]]
name = "order-shipped"
first = '{ service = "orders" && name = "create order" }'
then = '{ service = "shipping" && name = "ship order" }'
key = "order.id"
within = "2s"
grace = "1s"
at_most_one = true
require_first = true

[checks]
memory_mb = 64
"#,
    )
    .unwrap();
    path
}

/// The engine's class for a planted flow.
fn class_of(planted: &str) -> &'static str {
    match planted {
        "on_time" => "satisfied",
        "late" => "repaired",
        "missing" => "missing",
        "duplicate" => "duplicate",
        "orphan" => "orphan",
        other => panic!("unknown planted class {other}"),
    }
}

fn get_json(server: &Server, path: &str) -> Value {
    let (status, body) = http_get(server.api, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn counts(server: &Server) -> BTreeMap<String, u64> {
    let v = get_json(server, "/api/v1/consistency");
    let rule = &v["rules"][0];
    rule["keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

fn flows(endpoint_file: &Path, protocol: &str, prefix: &str, seed: u32) -> std::process::Child {
    std::process::Command::new(common::python())
        .arg(common::client_script("order_flows.py"))
        .args(["--endpoint-file", endpoint_file.to_str().unwrap()])
        .args(["--protocol", protocol, "--prefix", prefix])
        .args(["--per-class", &(PER_CLASS / 2).to_string()])
        .args(["--within-ms", "2000", "--batch", "3", "--pause-ms", "100"])
        .args(["--seed", &seed.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn truth(child: std::process::Child) -> (HashMap<String, String>, u64) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "order_flows.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    eprintln!("flows: {} exports, {} retries", v["exports"], v["retries"]);
    let keys = v["keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, c)| (k.clone(), class_of(c.as_str().unwrap()).to_string()))
        .collect();
    (keys, v["retries"].as_u64().unwrap())
}

#[test]
fn planted_flows_keep_exact_outcomes_across_ten_sigkills() {
    let mut rand = common::seeded_rand("consistency crash test");
    let seed = rand(0, 1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let received = tmp.path().join("received.jsonl");
    let (_receivers, ports) = common::python_fixture(
        "notify_receivers.py",
        &["--out", received.to_str().unwrap()],
    );
    let cfg = config(tmp.path(), ports["http_port"].as_u64().unwrap());
    // Small blocks: seals, and so checkpoints, happen throughout.
    let flags = [
        "--config",
        cfg.to_str().unwrap(),
        "--block-max-spans",
        "40",
        "--block-max-age-secs",
        "1",
    ];
    let (http_ep, grpc_ep) = (tmp.path().join("http.ep"), tmp.path().join("grpc.ep"));
    let mut server = Server::start(&data, &flags);
    std::fs::write(&http_ep, server.http_url()).unwrap();
    std::fs::write(&grpc_ep, server.grpc_url()).unwrap();
    let mut senders = [
        flows(&http_ep, "http", "h", seed as u32),
        flows(&grpc_ep, "grpc", "g", seed as u32 + 1),
    ];
    for kill in 0..10 {
        // Every kill lands while both senders are still sending.
        for s in &mut senders {
            assert!(
                s.try_wait().unwrap().is_none(),
                "a sender finished before kill {kill}"
            );
        }
        std::thread::sleep(Duration::from_millis(rand(200, 900)));
        server.kill9();
        server = Server::start(&data, &flags);
        std::fs::write(&http_ep, server.http_url()).unwrap();
        std::fs::write(&grpc_ep, server.grpc_url()).unwrap();
    }
    let mut want: HashMap<String, String> = HashMap::new();
    let mut retries = 0;
    for s in senders {
        let (keys, r) = truth(s);
        want.extend(keys);
        retries += r;
    }
    assert!(
        retries > 0,
        "no export was refused: the kills missed the flows"
    );
    assert_eq!(want.len(), 5 * PER_CLASS);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for c in want.values() {
        *expected.entry(c.clone()).or_default() += 1;
    }
    // Missing and orphan keys are declared once their deadline (2 s + 1 s) passed and
    // indexing caught up.
    let started = Instant::now();
    loop {
        let got: BTreeMap<String, u64> = counts(&server)
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        if got == expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "counts {got:?}, want {expected:?}; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Every key, one by one, in the class its flow was planted for.
    let mut seen = HashMap::new();
    for class in [
        "satisfied",
        "repaired",
        "missing",
        "duplicate",
        "orphan",
        "pending",
    ] {
        let v = get_json(
            &server,
            &format!("/api/v1/consistency/rules/order-shipped/keys?class={class}&limit=10000"),
        );
        for k in v["keys"].as_array().unwrap() {
            let key = k["key"].as_str().unwrap().to_string();
            assert_eq!(
                want.get(&key).map(String::as_str),
                Some(class),
                "key {key} is {class}: {k}"
            );
            assert!(seen.insert(key, k.clone()).is_none(), "a key listed twice");
            if class == "duplicate" {
                assert_eq!(k["then_total"], 2, "{k}");
            }
            if class == "repaired" {
                let late = k["late_ms"].as_f64().unwrap();
                assert!((2900.0..3100.0).contains(&late), "late by {late} ms: {k}");
            }
        }
    }
    assert_eq!(seen.len(), want.len());
    // The links open the traces of A and B.
    let missing = seen.values().find(|k| k["class"] == "missing").unwrap();
    let (status, body) = http_get(
        server.api,
        &format!(
            "/api/traces/{}",
            missing["first"]["trace_id"].as_str().unwrap()
        ),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("create order"), "{body}");
    let orphan = seen.values().find(|k| k["class"] == "orphan").unwrap();
    let link = orphan["then"][0]["link"].as_str().unwrap();
    let (status, page) = http_get(server.api, link).unwrap();
    assert_eq!(status, 200, "{link}");
    assert!(page.contains("ship order"));
    // The same rule over the stored spans, from the command line, agrees.
    let rule_file = tmp.path().join("rule.json");
    std::fs::write(&rule_file, rule_json().to_string()).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "rules",
            "check",
            rule_file.to_str().unwrap(),
            "--since",
            "30m",
            "--json",
        ])
        .args(["--api", &format!("http://127.0.0.1:{}", server.api)])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let history: BTreeMap<String, u64> = report["keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(history, expected, "{report}");
    assert_eq!(report["truncated"], false);
    // Metrics and the page.
    let m = server.metrics();
    assert_eq!(
        metric(
            &m,
            "faultline_consistency_keys{rule=\"order-shipped\",class=\"missing\"}"
        ),
        PER_CLASS as f64
    );
    let (status, page) = http_get(server.api, "/consistency").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("order-shipped") && page.contains("data-class=\"missing\""));
    // Through the outbox: every violated key fired once; a key violated only for a
    // while (its A or B was still on its way when the grace ran out) fired and
    // resolved; no transition went out in two different messages.
    let violated: Vec<String> = seen
        .values()
        .filter(|k| ["missing", "duplicate", "orphan"].contains(&k["class"].as_str().unwrap()))
        .map(|k| {
            format!(
                "consistency/order-shipped/{}/{}",
                k["key"].as_str().unwrap(),
                k["class"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(violated.len(), 3 * PER_CLASS);
    let started = Instant::now();
    let events = loop {
        let mut events: HashMap<String, (String, String)> = HashMap::new();
        for line in std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
        {
            let v: Value = serde_json::from_str(line).unwrap();
            if v["failed"] == true {
                continue;
            }
            let id = v["body"]["id"].as_str().unwrap().to_string();
            for e in v["body"]["events"].as_array().unwrap() {
                let key = e["key"].as_str().unwrap().to_string();
                let state = e["state"].as_str().unwrap().to_string();
                if let Some((other, _)) = events.get(&key) {
                    assert_eq!(other, &id, "transition {key} sent in two messages");
                }
                events.insert(key, (id.clone(), state));
            }
        }
        // A key violated for a while fired; its resolution may still be on its way.
        let unresolved: Vec<&String> = events
            .iter()
            .filter(|(key, (_, state))| {
                state == "firing"
                    && !violated.contains(key)
                    && !events.contains_key(&format!("{key}/resolved"))
            })
            .map(|(key, _)| key)
            .collect();
        if violated.iter().all(|k| events.contains_key(k)) && unresolved.is_empty() {
            break events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {} violations notified; fired and never resolved, though no longer \
             violated: {unresolved:?}",
            violated.iter().filter(|k| events.contains_key(*k)).count(),
            violated.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    for key in events.keys() {
        assert!(key.starts_with("consistency/order-shipped/"), "{key}");
    }
}

#[test]
fn continuous_assertions_catch_planted_regressions() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("checkout.json"),
        json!({"name": "checkout", "assertions": [
            {"name": "one db query", "select": "{ name = \"db.query\" }", "count": 1},
            {"name": "payment called", "select": "{ kind = server } > { name = \"payment.charge\" }", "count": 1},
            {"name": "quick db", "select": "{ name = \"db.query\" }", "maxDuration": "200ms"}
        ]})
        .to_string(),
    )
    .unwrap();
    let cfg = tmp.path().join("faultline.toml");
    std::fs::write(
        &cfg,
        r#"
[[assertions]]
name = "checkout"
file = "checkout.json"
match = '{ service = "checkout-svc" && kind = server }'
settle = "1s"
"#,
    )
    .unwrap();
    let server = Server::start(
        &tmp.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let out = std::process::Command::new(common::python())
        .arg(common::client_script("checkout_variants.py"))
        .args(["--endpoint", &server.http_url(), "--each", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let started = Instant::now();
    let a = loop {
        let v = get_json(&server, "/api/v1/assertions/continuous");
        let a = v["assertions"][0].clone();
        if a["passed"].as_u64().unwrap() + a["failed"].as_u64().unwrap() == 16 {
            break a;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{a}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(a["passed"], 4, "{a}");
    assert_eq!(a["failed"], 12, "{a}");
    // Each failing example is a planted regression, failing for its planted reason.
    let ids = |variant: &str| -> Vec<String> {
        sent[variant]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let reasons = [
        ("extra_db", "one db query"),
        ("no_payment", "payment called"),
        ("slow_db", "quick db"),
    ];
    for ex in a["examples"].as_array().unwrap() {
        let trace = ex["trace_id"].as_str().unwrap();
        assert!(
            !ids("ok").contains(&trace.to_string()),
            "a good trace failed: {ex}"
        );
        let (variant, check) = reasons
            .iter()
            .find(|(v, _)| ids(v).contains(&trace.to_string()))
            .unwrap();
        let failures = ex["failures"].as_array().unwrap();
        assert_eq!(failures.len(), 1, "{variant}: {ex}");
        assert!(
            failures[0].as_str().unwrap().starts_with(check),
            "{variant}: {ex}"
        );
    }
    assert_eq!(a["examples"].as_array().unwrap().len(), 12);
    let m = server.metrics();
    assert_eq!(
        metric(
            &m,
            "faultline_assertion_traces_total{assertion=\"checkout\",result=\"fail\"}"
        ),
        12.0
    );
    let (_, page) = http_get(server.api, "/consistency").unwrap();
    assert!(
        page.contains("4 passed") && page.contains("12 failed"),
        "{page}"
    );
}

#[test]
fn bad_rules_are_refused_with_the_field_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let put = |name: &str, body: &Value| {
        let (status, text) = http_call(
            server.api,
            "PUT",
            &format!("/api/v1/consistency/rules/{name}"),
            &body.to_string(),
        )
        .unwrap();
        (status, text)
    };
    let mut bad = rule_json();
    bad["then"] = json!("{ service = }");
    let (status, text) = put("order-shipped", &bad);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("then") && text.contains("column 13"),
        "{text}"
    );
    let mut bad = rule_json();
    bad["within"] = json!("soon");
    let (status, text) = put("order-shipped", &bad);
    assert_eq!(status, 400);
    assert!(
        text.contains("within") && text.contains("not a duration"),
        "{text}"
    );
    let (status, text) = put("other-name", &rule_json());
    assert_eq!(status, 400);
    assert!(text.contains("the path"), "{text}");
    // A good one is created, then replaced, listed, and deleted.
    assert_eq!(put("order-shipped", &rule_json()).0, 201);
    assert_eq!(put("order-shipped", &rule_json()).0, 200);
    let v = get_json(&server, "/api/v1/consistency");
    assert_eq!(v["rules"][0]["source"], "api");
    let (status, _) = http_call(
        server.api,
        "DELETE",
        "/api/v1/consistency/rules/order-shipped",
        "",
    )
    .unwrap();
    assert_eq!(status, 204);
    // A bad configuration stops start-up with the rule and field.
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[consistency]]\nname = \"r\"\nfirst = '{ name = \"a\" }'\nthen = '{ name = \"b\" } > { }'\nkey = \"k\"\nwithin = \"1m\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(tmp.path().join("data2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"r\"") && err.contains("then") && err.contains("one span"),
        "{err}"
    );
    // A bad rule file is refused by the CLI before anything is sent.
    let file = tmp.path().join("bad.json");
    std::fs::write(&file, bad.to_string()).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["rules", "check", file.to_str().unwrap()])
        .args(["--api", &format!("http://127.0.0.1:{}", server.api)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("within"));
}
