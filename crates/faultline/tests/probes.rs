//! Synthetic probes against a real service: a small HTTP service instrumented with the
//! OpenTelemetry Python SDK (tests/clients/probe_backend.py) that fails in planted ways,
//! probed through the API. Each probe's verdict, reason and phases; a failing probe's
//! trace holding both the probe's span and the service's; the blackbox_exporter metrics;
//! bad definitions refused naming the field; the API's probes kept across a restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Server, http_call, http_get};

/// Starts the instrumented service; its port.
fn backend(server: &Server) -> (common::Fixture, u16) {
    let (f, v) = common::python_fixture("probe_backend.py", &["--otlp", &server.http_url()]);
    (f, v["port"].as_u64().unwrap() as u16)
}

fn call(server: &Server, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http_call(server.api, method, path, &body.to_string()).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn http_probe(name: &str, port: u16, path: &str, extra: Value) -> Value {
    let mut http = json!({"url": format!("http://127.0.0.1:{port}{path}"), "expect_body": "ok"});
    if let (Some(h), Some(e)) = (http.as_object_mut(), extra.as_object()) {
        h.extend(e.clone());
    }
    json!({"name": name, "interval_secs": 2, "timeout_secs": 1.0, "http": http})
}

/// Waits until every named probe has a result; the probes by name.
fn results(server: &Server, names: &[&str]) -> HashMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http_get(server.api, "/api/v1/probes").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let by_name: HashMap<String, Value> = v["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
            .collect();
        if names
            .iter()
            .all(|n| by_name.get(*n).is_some_and(|p| !p["last"].is_null()))
        {
            return by_name;
        }
        assert!(
            Instant::now() < deadline,
            "no result for some of {names:?}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The names of the phases a result completed, sorted.
fn phase_names(result: &Value) -> Vec<String> {
    let mut v: Vec<String> = result["phases"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    v.sort();
    v
}

/// A probe's kept results, oldest first.
fn history(server: &Server, name: &str) -> Vec<Value> {
    let (_, body) = http_get(server.api, &format!("/api/v1/probes/{name}")).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut r = v["results"].as_array().unwrap().clone();
    r.sort_by_key(|x| x["at"].as_u64().unwrap());
    r
}

/// A target that accepts TCP connections and never answers: each is held open, unread,
/// for as long as the test runs.
fn hanging_target() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.extend(s.ok());
        }
    });
    port
}

#[test]
fn probes_find_planted_failures_and_their_traces_join_the_services() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, &[]);
    let (_backend, port) = backend(&server);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hang_port = hanging_target();
    let defs = [
        http_probe("ok", port, "/ok", json!({})),
        http_probe("redirect-in", port, "/redirect-in", json!({})),
        http_probe("fail", port, "/fail", json!({})),
        http_probe("slow", port, "/slow", json!({})),
        http_probe("mismatch", port, "/mismatch", json!({})),
        http_probe("redirect-out", port, "/redirect-out", json!({})),
        json!({"name": "tcp-open", "interval_secs": 2, "tcp": {"host": "127.0.0.1", "port": port}}),
        json!({"name": "tcp-closed", "interval_secs": 2, "tcp": {"host": "127.0.0.1", "port": closed}}),
        // Accepts the connection, reads nothing, never answers: each check hangs for its
        // whole timeout (4 s, twice the others' interval).
        json!({"name": "hang", "interval_secs": 4, "timeout_secs": 4.0,
               "http": {"url": format!("http://127.0.0.1:{hang_port}/"), "expect_body": "ok"}}),
    ];
    for d in &defs {
        let (status, body) = call(&server, "POST", "/api/v1/probes", d);
        assert_eq!(status, 201, "{body}");
    }
    let names: Vec<&str> = defs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    let got = results(&server, &names);
    let last = |n: &str| got[n]["last"].clone();
    let phases = |n: &str| phase_names(&last(n));
    // Verdicts and reasons.
    for n in ["ok", "redirect-in", "tcp-open"] {
        assert_eq!(last(n)["ok"], true, "{n}: {}", last(n));
        assert_eq!(got[n]["state"], "up", "{n}");
    }
    assert_eq!(
        phases("ok"),
        vec!["connect", "processing", "resolve", "transfer"]
    );
    assert_eq!(last("ok")["status"], 200);
    assert_eq!(
        last("redirect-in")["status"],
        200,
        "followed on the same host"
    );
    let error = |n: &str| last(n)["error"].as_str().unwrap_or("").to_string();
    assert_eq!(error("fail"), "HTTP 500, expected 2xx or 3xx");
    assert_eq!(error("slow"), "timed out after 1.0 s during processing");
    assert!(
        error("mismatch").contains("does not contain \"ok\""),
        "{}",
        error("mismatch")
    );
    assert!(
        error("redirect-out").contains("which the probe does not name"),
        "{}",
        error("redirect-out")
    );
    assert!(error("tcp-closed").starts_with(&format!("cannot connect to 127.0.0.1:{closed}")));
    assert_eq!(phases("tcp-closed"), vec!["resolve"], "failed in connect");
    assert_eq!(
        error("hang"),
        "timed out after 4.0 s during processing",
        "{}",
        last("hang")
    );
    for n in [
        "fail",
        "slow",
        "mismatch",
        "redirect-out",
        "tcp-closed",
        "hang",
    ] {
        assert_eq!(last(n)["ok"], false, "{n}");
        assert_eq!(got[n]["state"], "down", "{n}: retries 0");
    }
    // Phases: a wrong status or body fails after the whole exchange; a slow or hanging
    // answer is cut short waiting for the response, so only resolve and connect completed.
    let exchange = vec!["connect", "processing", "resolve", "transfer"];
    for n in ["fail", "mismatch", "redirect-out"] {
        assert_eq!(phases(n), exchange, "{n}: {}", last(n));
    }
    for n in ["slow", "hang"] {
        assert_eq!(phases(n), vec!["connect", "resolve"], "{n}: {}", last(n));
    }
    assert_eq!(phases("tcp-open"), vec!["connect", "resolve"]);
    assert!(last("slow")["totalMs"].as_f64().unwrap() >= 1000.0);

    // A target that hangs delays no other probe: while each hanging check held its
    // connection for its whole 4 s timeout, every other probe's checks started on their
    // 2 s grid (lag under 1 s, starts 2 s +- 1 s apart), slow target included.
    let hung: Vec<Value> = history(&server, "hang");
    let h = &hung[0];
    let h_start = h["at"].as_u64().unwrap();
    let h_total = h["totalMs"].as_f64().unwrap();
    assert!(h_total >= 4000.0, "it hung for its whole timeout: {h}");
    let h_end = h_start + h_total as u64;
    let others: Vec<&str> = names.iter().copied().filter(|n| *n != "hang").collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in &others {
        // Until it has a check started after the hanging one ended.
        let rs = loop {
            let rs = history(&server, n);
            if rs.last().unwrap()["at"].as_u64().unwrap() > h_end {
                break rs;
            }
            assert!(
                Instant::now() < deadline,
                "{n}: no check after {h_end}: {rs:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let at: Vec<u64> = rs.iter().map(|r| r["at"].as_u64().unwrap()).collect();
        let during = at.iter().filter(|a| (h_start..h_end).contains(a)).count();
        assert!(
            during >= 1,
            "{n}: no check started while the hanging one ran ({h_start}..{h_end}): {at:?}"
        );
        for r in &rs {
            let lag = r["lagMs"].as_f64().unwrap();
            assert!(lag < 1000.0, "{n}: a check started {lag} ms late: {r}");
        }
        for w in at.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                (1000..=3000).contains(&gap),
                "{n}: checks {gap} ms apart on a 2 s interval: {at:?} (hang {h_start}..{h_end})"
            );
        }
    }

    // The failing probe's trace: the probe's span and the service's, one trace.
    let (_, body) = http_get(server.api, "/api/v1/probes/fail").unwrap();
    let fail: Value = serde_json::from_str(&body).unwrap();
    let incident = &fail["incidents"][0];
    assert!(incident["end"].is_null(), "{fail}");
    let trace_id = incident["firstFailure"]["traceId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        incident["firstFailure"]["trace"],
        format!("/trace/{trace_id}")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let services = loop {
        let (status, body) = http_get(server.api, &format!("/api/traces/{trace_id}")).unwrap();
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            let mut s: Vec<String> = v["data"][0]["processes"]
                .as_object()
                .unwrap()
                .values()
                .map(|p| p["serviceName"].as_str().unwrap().to_string())
                .collect();
            s.sort();
            s.dedup();
            if s.len() == 2 {
                break (s, v);
            }
        }
        assert!(Instant::now() < deadline, "{status}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(services.0, vec!["faultline-probe", "probe-backend"]);
    let spans = services.1["data"][0]["spans"].as_array().unwrap().clone();
    let probe_span = spans
        .iter()
        .find(|s| {
            s["operationName"]
                .as_str()
                .unwrap()
                .starts_with("probe fail")
        })
        .unwrap();
    let server_span = spans
        .iter()
        .find(|s| s["operationName"] == "GET /fail")
        .unwrap();
    assert_eq!(
        server_span["references"][0]["spanID"], probe_span["spanID"],
        "the service's span is the probe span's child"
    );
    let tags = probe_span["tags"].as_array().unwrap();
    assert!(
        tags.iter()
            .any(|t| t["key"] == "faultline.synthetic" && t["value"] == true)
    );
    assert!(
        tags.iter()
            .any(|t| t["key"] == "http.response.status_code" && t["value"] == 500)
    );

    // The pages: the list with each state, and the failing probe's checks, phases and
    // incident, each linking to its trace.
    let (status, page) = http_get(server.api, "/probes").unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("<tr class=\"probe state-failed\" data-name=\"fail\">"),
        "{page}"
    );
    assert!(
        page.contains("<tr class=\"probe state-ok\" data-name=\"ok\">"),
        "{page}"
    );
    let (_, page) = http_get(server.api, "/probes/fail").unwrap();
    assert!(page.contains("id=\"probe-timeline\"") && page.contains("class=\"run state-failed\""));
    assert!(page.contains("id=\"probe-duration\"") && page.contains("class=tick-y"));
    assert!(
        page.contains("<td>resolve</td>") && page.contains("<td>connect</td>"),
        "{page}"
    );
    let incidents = page.split("id=incidents>").nth(1).unwrap();
    assert_eq!(incidents.matches("<tr class=incident>").count(), 1);
    assert!(
        incidents.contains(&format!("href=\"/trace/{trace_id}\"")),
        "the first failure's trace"
    );
    let (status, _) = http_get(server.api, "/probes/nope").unwrap();
    assert_eq!(status, 404);

    // blackbox_exporter's metrics.
    let m = server.metrics();
    assert_eq!(
        common::metric(&m, "probe_success{probe=\"ok\"}"),
        1.0,
        "{m}"
    );
    assert!(m.contains("probe_success{probe=\"fail\"} 0"), "{m}");
    assert!(common::metric(&m, "probe_duration_seconds{probe=\"ok\",phase=\"connect\"}") > 0.0);
    assert_eq!(
        common::metric(&m, "probe_http_status_code{probe=\"fail\"}"),
        500.0
    );

    // Bad definitions are refused naming the field; names are unique.
    for (def, field) in [
        (
            json!({"name": "x", "interval_secs": 0, "tcp": {"host": "h", "port": 1}}),
            "interval_secs",
        ),
        (
            json!({"name": "x", "http": {"url": "gopher://h/"}}),
            "http.url",
        ),
        (json!({"name": "x"}), "http"),
    ] {
        let (status, body) = call(&server, "POST", "/api/v1/probes", &def);
        assert_eq!(
            (status, body["parameter"].as_str()),
            (400, Some(field)),
            "{body}"
        );
    }
    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/probes",
        &json!({"name": "x", "intervall": 5}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("intervall"),
        "{body}"
    );
    let (status, _) = call(&server, "POST", "/api/v1/probes", &defs[0]);
    assert_eq!(status, 409);
    let (status, _) = call(&server, "DELETE", "/api/v1/probes/nope", &Value::Null);
    assert_eq!(status, 404);

    // Pause, delete, and what remains after a restart.
    let (status, body) = call(&server, "POST", "/api/v1/probes/slow/pause", &Value::Null);
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");
    let (status, _) = call(&server, "DELETE", "/api/v1/probes/mismatch", &Value::Null);
    assert_eq!(status, 204);
    // The public status page: states and uptime, nothing internal, no paused probe.
    let (status, public) = http_get(server.api, "/public/status").unwrap();
    assert_eq!(status, 200);
    let section = |n: &str| {
        public
            .split(&format!(
                "<section class=\"public-probe\" data-name=\"{n}\">"
            ))
            .nth(1)
            .map(|s| s.split("</section>").next().unwrap_or("").to_string())
    };
    assert!(section("fail").unwrap().contains(">down</b>"), "{public}");
    assert!(section("ok").unwrap().contains(">up</b>"), "{public}");
    assert!(
        section("ok").unwrap().contains("class=\"run state-ok\""),
        "a bar of its day"
    );
    assert!(section("slow").is_none(), "paused probes are left out");
    assert!(public.contains("checks failing"), "{public}");
    for internal in ["href=", "/trace/", "127.0.0.1", "HTTP 500", "<script"] {
        assert!(
            !public.contains(internal),
            "the public page shows {internal:?}"
        );
    }
    server.stop();
    let server = Server::start(&data, &[]);
    let (_, body) = http_get(server.api, "/api/v1/probes").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let kept: Vec<(String, bool)> = v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["paused"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(kept.len(), defs.len() - 1, "{kept:?}");
    assert!(kept.contains(&("slow".to_string(), true)));
    assert!(!kept.iter().any(|(n, _)| n == "mismatch"));
    // Results, state and the open incident come back from the results log.
    let (_, body) = http_get(server.api, "/api/v1/probes/fail").unwrap();
    let after: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(after["state"], "down", "{after}");
    assert_eq!(
        after["incidents"][0]["firstFailure"]["traceId"],
        trace_id.as_str(),
        "the same incident"
    );
    assert!(after["incidents"][0]["end"].is_null());
    let day = &after["uptime"]["24h"];
    assert!(
        day["checks"].as_u64().unwrap() >= 1 && day["passed"] == 0,
        "{after}"
    );
    let (_, body) = http_get(server.api, "/api/v1/probes/ok").unwrap();
    let ok: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ok["uptime"]["30d"]["ratio"], 1.0, "{ok}");
}

#[test]
fn https_and_dns_probes_against_real_servers_with_planted_faults() {
    let tmp = tempfile::tempdir().unwrap();
    let (_servers, s) = common::python_fixture(
        "tls_dns_servers.py",
        &["--dir", tmp.path().join("pki").to_str().unwrap()],
    );
    let server = Server::start(&tmp.path().join("data"), &[]);
    let ca = s["ca"].as_str().unwrap();
    let https_warn = |name: &str, host: &str, which: &str, ca_file: bool, warn: Option<u32>| {
        let mut http = json!({"url": format!("https://{host}:{}/health", s["https"][which]), "expect_body": "ok"});
        if ca_file {
            http["ca_file"] = json!(ca);
        }
        if let Some(days) = warn {
            http["tls_expiry_warning_days"] = json!(days);
        }
        json!({"name": name, "interval_secs": 2, "timeout_secs": 1.5, "http": http})
    };
    let https = |name: &str, host: &str, which: &str, ca_file: bool| {
        https_warn(name, host, which, ca_file, None)
    };
    let dns = |name: &str, q: &str, rtype: &str, expect: &[&str], transport: &str| {
        json!({"name": name, "interval_secs": 2, "timeout_secs": 1.5, "dns": {
            "name": q, "record_type": rtype, "expect": expect, "transport": transport,
            "server": format!("127.0.0.1:{}", s["dns"])}})
    };
    let defs = [
        https("tls-soon", "localhost", "soon", true),
        https("tls-fine", "127.0.0.1", "fine", true),
        https("tls-no-ca", "localhost", "fine", false),
        https("tls-untrusted", "localhost", "untrusted", true),
        https("tls-expired", "localhost", "expired", true),
        // The 3-day certificate against custom warning days: 4 warns, 2 does not, 0 never.
        https_warn("tls-warn-4", "localhost", "soon", true, Some(4)),
        https_warn("tls-warn-2", "localhost", "soon", true, Some(2)),
        https_warn("tls-warn-0", "localhost", "soon", true, Some(0)),
        dns("dns-ok", "ok.probe.test", "A", &["127.0.0.1"], "udp"),
        dns("dns-alias", "alias.probe.test", "A", &["127.0.0.1"], "udp"),
        dns("dns-wrong", "wrong.probe.test", "A", &["127.0.0.1"], "udp"),
        dns(
            "dns-mx",
            "mail.probe.test",
            "MX",
            &["10 mx.probe.test."],
            "tcp",
        ),
        dns("dns-txt", "txt.probe.test", "TXT", &["v=faultline"], "udp"),
        dns("dns-v6", "v6.probe.test", "AAAA", &["::1"], "tcp"),
        dns("dns-missing", "nope.probe.test", "A", &[], "udp"),
    ];
    for d in &defs {
        let (status, body) = call(&server, "POST", "/api/v1/probes", d);
        assert_eq!(status, 201, "{body}");
    }
    let names: Vec<&str> = defs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    let got = results(&server, &names);
    let last = |n: &str| got[n]["last"].clone();
    let error = |n: &str| last(n)["error"].as_str().unwrap_or("").to_string();
    for n in [
        "tls-soon",
        "tls-fine",
        "tls-warn-4",
        "tls-warn-2",
        "tls-warn-0",
        "dns-ok",
        "dns-alias",
        "dns-mx",
        "dns-txt",
        "dns-v6",
    ] {
        assert_eq!(last(n)["ok"], true, "{n}: {}", last(n));
    }
    // The certificate expiring in 3 days passes with a warning; the 90-day one without.
    let not_after = |k: &str| s["not_after"][k].as_i64().unwrap();
    assert_eq!(last("tls-soon")["certNotAfter"], not_after("soon"));
    let warning = last("tls-soon")["warning"].as_str().unwrap().to_string();
    assert!(
        warning.starts_with("the certificate expires in 3.0 days")
            || warning.starts_with("the certificate expires in 2.9 days"),
        "{warning}"
    );
    assert!(warning.ends_with("within the 14-day warning"), "{warning}");
    assert_eq!(last("tls-fine")["certNotAfter"], not_after("fine"));
    assert!(last("tls-fine")["warning"].is_null());
    // tls_expiry_warning_days: the same 3-day certificate warns within 4 days, not within
    // 2, and not at all with 0 (off); its expiry is known either way.
    let warning = last("tls-warn-4")["warning"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        warning.starts_with("the certificate expires in ")
            && warning.ends_with("within the 4-day warning"),
        "{}",
        last("tls-warn-4")
    );
    for n in ["tls-warn-2", "tls-warn-0"] {
        assert!(last(n)["warning"].is_null(), "{n}: {}", last(n));
        assert_eq!(last(n)["certNotAfter"], not_after("soon"), "{n}");
    }
    assert_eq!(
        phase_names(&last("tls-soon")),
        ["connect", "processing", "resolve", "tls", "transfer"]
    );
    // A failed handshake completed resolve and connect only; a DNS probe has one phase,
    // whether the answer is wrong or the name missing.
    for n in ["tls-expired", "tls-untrusted"] {
        assert_eq!(phase_names(&last(n)), ["connect", "resolve"], "{n}");
    }
    for n in ["dns-wrong", "dns-missing", "dns-ok"] {
        assert_eq!(phase_names(&last(n)), ["resolve"], "{n}: {}", last(n));
    }
    // Planted TLS faults fail with what to do.
    assert!(
        error("tls-no-ca").contains("is not trusted (unknown issuer); give its CA in http.ca_file"),
        "{}",
        error("tls-no-ca")
    );
    assert!(
        error("tls-untrusted").contains("is not trusted"),
        "{}",
        error("tls-untrusted")
    );
    assert!(
        error("tls-expired").starts_with("the certificate of localhost has expired"),
        "{}",
        error("tls-expired")
    );
    // DNS: a wrong address and a missing name, said as such.
    assert_eq!(
        error("dns-wrong"),
        "wrong.probe.test A is 10.9.8.7, expected 127.0.0.1"
    );
    let missing = error("dns-missing");
    assert!(
        missing.contains("for nope.probe.test A") && missing.contains("Non-Existent Domain"),
        "{missing}"
    );
    // Per-phase latency in the API; the blackbox_exporter certificate metric.
    let (_, body) = http_get(server.api, "/api/v1/probes/tls-fine").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let lat: Vec<&str> = v["phaseLatency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        lat,
        [
            "resolve",
            "connect",
            "tls",
            "processing",
            "transfer",
            "total"
        ]
    );
    let tls = &v["phaseLatency"][2];
    assert!(tls["p50Ms"].as_f64().unwrap() > 0.0 && tls["p99Ms"].as_f64() >= tls["p50Ms"].as_f64());
    let metrics = server.metrics();
    assert!(
        metrics.contains(&format!(
            "probe_ssl_earliest_cert_expiry{{probe=\"tls-soon\"}} {}",
            not_after("soon")
        )),
        "{metrics}"
    );
    // The warning is one notification per certificate, however many checks see it.
    std::thread::sleep(Duration::from_secs(3));
    let (_, body) = http_get(server.api, "/api/v1/notifications").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut keys: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .filter(|k| k.contains("/cert/"))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["tls-soon", "tls-warn-4"]
            .map(|n| format!("probe/{n}/cert/{}/expiring", not_after("soon")))
    );
}
