//! The fault proxy (`faultline proxy`, and inside `serve` with `--fault-proxy`) driven by
//! unmodified third-party clients: Toxiproxy's Python client adds and removes every toxic
//! and each effect is measured on real connections; Chaos Toolkit runs experiments through
//! its toxiproxy driver; a SIGKILLed proxy comes back without the faults it held.

#![allow(clippy::unwrap_used)]

mod common;

/// The tests of this file run one at a time: latency, bandwidth and timing figures are measured on real connections, and
/// two at once on a 2-core machine would measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, free_port, http_call, http_get};
use serde_json::Value;

/// `faultline proxy` on a free API port (retried if another process takes it first).
struct Proxy {
    child: Child,
    api: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(state: Option<&Path>) -> Proxy {
        Self::start_on(free_port(), state)
    }

    fn start_on(api: u16, state: Option<&Path>) -> Proxy {
        let mut c = Command::new(BIN);
        c.args(["proxy", "--api", &format!("127.0.0.1:{api}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(s) = state {
            c.arg("--state-dir").arg(s);
        }
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(api, "/version").is_ok_and(|r| r.0 == 200) {
                return Proxy { child, api };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("faultline proxy exited during start-up: {status}");
            }
            assert!(Instant::now() < deadline, "faultline proxy did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn run_script(script: &str, args: &[&str]) -> Value {
    let out = Command::new(common::python())
        .arg(common::client_script(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v:#}"))
}

fn within(v: &Value, k: &str, lo: f64, hi: f64) {
    let x = f(v, k);
    assert!((lo..=hi).contains(&x), "{k} = {x}, expected {lo}..={hi}");
}

#[test]
fn toxiproxy_python_drives_every_toxic_and_the_effects_are_measured() {
    let _serial = serial();
    let proxy = Proxy::start(None);
    let r = run_script("toxiproxy_drive.py", &[&proxy.api.to_string()]);
    assert!(r["listen_port_assigned"].as_bool().unwrap(), "{r:#}");
    // latency within 10% of the toxic's value, per direction and stacked; removal ends it.
    within(&r, "latency_down_added_ms", 180.0, 220.0);
    within(&r, "latency_both_added_ms", 270.0, 330.0);
    assert_eq!(
        r["update_merged"],
        serde_json::json!({"latency": 200, "jitter": 50})
    );
    within(&r, "jitter_min_ms", 140.0, 205.0);
    within(&r, "jitter_max_ms", 195.0, 265.0);
    assert!(
        f(&r, "jitter_max_ms") - f(&r, "jitter_min_ms") > 30.0,
        "jitter spreads the delays: {r:#}"
    );
    within(&r, "latency_removed_added_ms", -5.0, 5.0);
    // toxicity 0.5 over 40 connections: binomial, 40·0.5 ± 5σ.
    within(&r, "toxicity_half_delayed_of_40", 6.0, 34.0);
    within(&r, "live_connection_added_ms", 180.0, 240.0);
    // bandwidth within 10% of 1,000 KB/s; without it far faster.
    assert_eq!(r["bandwidth_bytes"], 2_000_000);
    within(&r, "bandwidth_rate_kb_s", 900.0, 1100.0);
    assert!(f(&r, "unlimited_rate_kb_s") > 10_000.0, "{r:#}");
    // slow_close delays the close by 300 ms, passing the data.
    within(&r, "plain_close_after_data_ms", 0.0, 50.0);
    within(&r, "slow_close_after_data_ms", 270.0, 400.0);
    assert_eq!(r["slow_close_bytes"], 1000);
    // timeout: nothing through, closed after 250 ms; 0 never closes.
    assert_eq!(r["timeout_bytes"], 0);
    within(&r, "timeout_closed_ms", 225.0, 400.0);
    assert_eq!(
        (&r["timeout0_bytes"], &r["timeout0_error"]),
        (&0.into(), &"TimeoutError".into())
    );
    // reset_peer: the client sees a reset, at once or after the toxic's timeout.
    assert_eq!(r["reset_error"], "ConnectionResetError", "{r:#}");
    assert_eq!(r["reset_bytes"], 0);
    assert_eq!(r["reset_after_error"], "ConnectionResetError", "{r:#}");
    within(&r, "reset_after_ms", 270.0, 450.0);
    // slicer: every byte, in many small pieces, paced by the delay.
    assert_eq!(r["slicer_bytes"], 20_000);
    within(&r, "slicer_recv_calls", 40.0, 20_000.0);
    within(&r, "slicer_ms", 100.0, 2_000.0);
    // limit_data: exactly the limit, then closed.
    assert_eq!(
        (&r["limit_bytes"], &r["limit_closed"]),
        (&1000.into(), &true.into())
    );
    // down: a disabled proxy refuses connections and says so; enabled again it works.
    assert_eq!(r["down_refused"], true);
    assert_eq!(r["down_listed_enabled"], false);
    within(&r, "up_again_rtt_ms", 0.0, 50.0);
    assert_eq!(r["accepted_right_after_disable"], 0, "{r:#}");
    assert_eq!(r["down_toxic_echo"], "closed");
    // Errors as Toxiproxy answers them.
    let e = &r["errors"];
    assert_eq!(e["duplicate_proxy"], "ProxyExists");
    assert_eq!(e["busy_port"][0], 500);
    assert!(
        e["busy_port"][1]["error"]
            .as_str()
            .unwrap()
            .contains("bind: Address already in use"),
        "{e:#}"
    );
    let expect = |k: &str, status: u16, msg: &str| {
        assert_eq!(
            e[k],
            serde_json::json!([status, {"error": msg, "status": status}]),
            "{k}"
        );
    };
    expect("missing_upstream", 400, "missing required field: upstream");
    expect("unknown_proxy", 404, "proxy not found");
    expect("duplicate_toxic", 409, "toxic already exists");
    expect("unknown_toxic", 404, "toxic not found");
    assert_eq!(
        e["unknown_toxic_type"],
        serde_json::json!({"error": "invalid toxic type", "status": 400})
    );
    assert_eq!(e["bad_json"], serde_json::json!([400, "bad request body:"]));
    assert_eq!(
        e["browser"],
        serde_json::json!([403, "User agent not allowed"])
    );
    // populate keeps a matching proxy (with its toxic) and adds the new one; reset clears.
    assert_eq!(r["populate"], serde_json::json!([201, ["echo", "extra"]]));
    assert_eq!(r["populate_kept_toxic"], serde_json::json!(["once"]));
    assert_eq!(r["reset_status"], 204);
    assert_eq!(r["after_reset_toxics"], serde_json::json!([]));
    assert_eq!(r["proxies"], serde_json::json!(["echo", "extra", "source"]));
    assert_eq!(r["metrics_has_bytes"], true);
}

#[test]
fn chaos_toolkit_experiments_run_through_the_toxiproxy_driver() {
    let _serial = serial();
    let proxy = Proxy::start(None);
    let work = tempfile::tempdir().unwrap();
    let r = run_script(
        "chaostoolkit_run.py",
        &[&proxy.api.to_string(), work.path().to_str().unwrap()],
    );
    let (holds, breaks) = (&r["holds"], &r["breaks"]);
    assert_eq!(
        (&holds["exit"], &holds["status"], &holds["deviated"]),
        (&0.into(), &"completed".into(), &false.into()),
        "{r:#}"
    );
    within(holds, "method_rtt_ms", 45.0, 80.0);
    assert_eq!(holds["extra_enabled_while_disabled"], false);
    assert_eq!(holds["failed_activities"], serde_json::json!([]));
    // The 300 ms experiment breaks its hypothesis and says so with its exit code.
    assert_eq!(
        (&breaks["exit"], &breaks["deviated"]),
        (&1.into(), &true.into()),
        "{r:#}"
    );
    within(breaks, "method_rtt_ms", 280.0, 360.0);
    for run in [holds, breaks] {
        // Each toxic of the driver added, measured through the proxy, removed.
        let t = &run["toxics"];
        within(t, "bandwidth-kbps", 90.0, 110.0);
        assert_eq!(t["limit-bytes"], 10, "{t:#}");
        within(t, "timeout-closed-ms", 270.0, 700.0);
        within(t, "slicer-recv-calls", 10.0, 5000.0);
        within(t, "slow-close-eof-ms", 270.0, 700.0);
        assert!(f(t, "after-all-removed-kbps") > 1000.0, "{t:#}");
        assert_eq!(run["rollbacks"], serde_json::json!(["succeeded"]));
        assert_eq!(run["toxics_after"], serde_json::json!([]), "rolled back");
        assert_eq!(run["proxies_after"], serde_json::json!(["echo"]));
    }
}

/// An echo server on a thread; its port.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Milliseconds for a 4-byte echo through `port`, or the error.
fn echo_ms(port: u16) -> Result<f64, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    s.write_all(b"ping").map_err(|e| e.to_string())?;
    let mut got = [0u8; 4];
    s.read_exact(&mut got).map_err(|e| e.to_string())?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

fn create(api: u16, body: &str) -> Value {
    let (status, text) = http_call(api, "POST", "/proxies", body).unwrap();
    assert_eq!(status, 201, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn listen_port(p: &Value) -> u16 {
    p["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Puts faults in place on a fresh state: a latency toxic on `slow` and `down` disabled.
fn plant_faults(api: u16, echo: u16) -> (u16, u16) {
    let slow = create(
        api,
        &format!(r#"{{"name":"slow","listen":"127.0.0.1:0","upstream":"127.0.0.1:{echo}"}}"#),
    );
    let down = create(
        api,
        &format!(r#"{{"name":"down","listen":"127.0.0.1:0","upstream":"127.0.0.1:{echo}"}}"#),
    );
    let (slow, down) = (listen_port(&slow), listen_port(&down));
    let (status, _) = http_call(
        api,
        "POST",
        "/proxies/slow/toxics",
        r#"{"type":"latency","attributes":{"latency":300}}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = http_call(api, "POST", "/proxies/down", r#"{"enabled":false}"#).unwrap();
    assert_eq!(status, 200);
    assert!(echo_ms(slow).unwrap() >= 290.0);
    assert!(echo_ms(down).is_err(), "a disabled proxy refuses");
    (slow, down)
}

/// After a restart: both proxies listen on their ports again, without toxics, enabled.
fn assert_faults_gone(api: u16, slow: u16, down: u16) {
    let (_, text) = http_get(api, "/proxies").unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    for (name, port) in [("slow", slow), ("down", down)] {
        assert_eq!(listen_port(&all[name]), port, "{all:#}");
        assert_eq!(all[name]["enabled"], true, "{all:#}");
        assert_eq!(all[name]["toxics"], serde_json::json!([]), "{all:#}");
        let ms = echo_ms(port).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(ms < 100.0, "{name}: {ms} ms: a fault outlived the crash");
    }
}

#[test]
fn a_sigkilled_proxy_comes_back_without_its_faults() {
    let _serial = serial();
    let state = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let mut proxy = Proxy::start(Some(state.path()));
    let api = proxy.api;
    let (slow, down) = plant_faults(api, echo);
    proxy.child.kill().unwrap();
    proxy.child.wait().unwrap();
    drop(proxy);
    let proxy = Proxy::start_on(api, Some(state.path()));
    assert_faults_gone(proxy.api, slow, down);
}

#[test]
fn serve_runs_the_fault_proxy_and_a_restart_removes_its_faults() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let api = free_port();
    let flag = format!("127.0.0.1:{api}");
    let mut server = Server::start(data.path(), &["--fault-proxy", &flag]);
    let (slow, down) = plant_faults(api, echo);
    let m = server.metrics();
    assert_eq!(
        common::metric(&m, "faultline_proxy_toxics{proxy=\"slow\"}"),
        1.0
    );
    assert_eq!(
        common::metric(&m, "faultline_proxy_enabled{proxy=\"down\"}"),
        0.0
    );
    server.kill9();
    let _server = Server::start(data.path(), &["--fault-proxy", &flag]);
    assert_faults_gone(api, slow, down);
}

/// A GET through an HTTP proxy with a `traceparent`: (status, body, whether the body was
/// as long as its content-length, milliseconds).
fn get_traced(port: u16, path: &str, traceparent: &str) -> (u16, String, bool, f64) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: pricing\r\ntraceparent: {traceparent}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let length = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
    });
    let whole = length.is_none_or(|n| body.len() >= n);
    (status, body.to_string(), whole, ms)
}

fn add_toxic(api: u16, proxy: &str, body: &str) -> (u16, String) {
    http_call(api, "POST", &format!("/proxies/{proxy}/toxics"), body).unwrap()
}

/// The spans of a trace from the Jaeger API once `n` are there: (service, span).
fn trace_spans(api: u16, trace: &str, n: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(api, &format!("/api/traces/{trace}")).unwrap();
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            let t = &v["data"][0];
            let spans: Vec<(String, Value)> = t["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let pid = s["processID"].as_str().unwrap();
                    (
                        t["processes"][pid]["serviceName"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                        s.clone(),
                    )
                })
                .collect();
            if spans.len() >= n {
                return spans;
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace} never had {n} spans"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

#[test]
fn http_faults_answer_delay_and_cut_requests_and_show_in_the_trace() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let api = free_port();
    let server = Server::start(data.path(), &["--fault-proxy", &format!("127.0.0.1:{api}")]);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/resilience/services.py");
    let otlp = server.http_url();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str())];
    let (_pricing, v) = common::python_fixture_at(&script, &["pricing"], &env);
    let pricing = v["port"].as_u64().unwrap() as u16;
    let proxy = create(
        api,
        &format!(
            r#"{{"name":"pricing","protocol":"http","listen":"127.0.0.1:0","upstream":"127.0.0.1:{pricing}"}}"#
        ),
    );
    assert_eq!(proxy["protocol"], "http");
    let port = listen_port(&proxy);
    // Each kind of fault on its kind of proxy only.
    let (status, body) = add_toxic(
        api,
        "pricing",
        r#"{"type":"latency","attributes":{"latency":10}}"#,
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("speaks HTTP: its faults are http_error, http_delay and http_abort"),
        "{body}"
    );
    let tcp = create(
        api,
        &format!(r#"{{"name":"tcp","listen":"127.0.0.1:0","upstream":"127.0.0.1:{pricing}"}}"#),
    );
    assert!(
        tcp.get("protocol").is_none(),
        "a TCP proxy keeps Toxiproxy's shape: {tcp}"
    );
    let (status, body) = add_toxic(api, "tcp", r#"{"type":"http_error"}"#);
    assert!(
        status == 400 && body.contains("create the proxy with \\\"protocol\\\": \\\"http\\\""),
        "{body}"
    );

    let tp = |n: u8| {
        format!(
            "00-{:032x}-{:016x}-01",
            0xfa01_0000u128 + u128::from(n),
            0xbeef_0000u64 + u64::from(n)
        )
    };
    let (status, body, whole, _) = get_traced(port, "/price", &tp(0));
    assert_eq!((status, whole), (200, true), "{body}");
    assert!(body.contains("price"), "{body}");

    let (status, _) = add_toxic(
        api,
        "pricing",
        r#"{"name":"err","type":"http_error","attributes":{"status":503,"method":"GET","path":"/price"}}"#,
    );
    assert_eq!(status, 200);
    let (status, body, _, _) = get_traced(port, "/price", &tp(1));
    assert_eq!(status, 503);
    assert!(
        body.contains("injected by faultline proxy pricing"),
        "{body}"
    );
    let (status, _, _, _) = get_traced(port, "/other", &tp(2));
    assert_eq!(
        status, 404,
        "another path is forwarded (pricing has no /other)"
    );
    http_call(api, "DELETE", "/proxies/pricing/toxics/err", "").unwrap();

    add_toxic(
        api,
        "pricing",
        r#"{"name":"slow","type":"http_delay","attributes":{"delay":300,"path":"/pri*"}}"#,
    );
    let (status, _, _, ms) = get_traced(port, "/price", &tp(3));
    assert!(
        status == 200 && (300.0..900.0).contains(&ms),
        "{status} after {ms} ms"
    );
    http_call(api, "DELETE", "/proxies/pricing/toxics/slow", "").unwrap();

    add_toxic(
        api,
        "pricing",
        r#"{"name":"cut","type":"http_abort","attributes":{"bytes":3}}"#,
    );
    let (status, body, whole, _) = get_traced(port, "/price", &tp(4));
    assert_eq!(status, 200);
    assert!(
        !whole && body.len() <= 3,
        "the body is cut after 3 bytes: {body:?}"
    );
    http_call(api, "DELETE", "/proxies/pricing/toxics/cut", "").unwrap();

    add_toxic(
        api,
        "pricing",
        r#"{"name":"half","type":"http_error","toxicity":0.5}"#,
    );
    let failed = (0..40)
        .filter(|i| get_traced(port, "/price", &tp(100 + i)).0 == 503)
        .count();
    assert!(
        (6..=34).contains(&failed),
        "toxicity 0.5 drawn per request: {failed} of 40"
    );

    // The traces: the proxy's span under the caller's, with the fault named on it, and
    // the service behind the proxy under the proxy's span.
    let spans = trace_spans(server.api, &format!("{:032x}", 0xfa01_0001u128), 1);
    let (service, span) = &spans[0];
    assert_eq!(service, "faultline-proxy");
    assert_eq!(
        tag(span, "faultline.fault"),
        Some(&Value::from("http_error 503"))
    );
    assert_eq!(
        span["references"][0]["spanID"],
        format!("{:016x}", 0xbeef_0001u64)
    );
    let spans = trace_spans(server.api, &format!("{:032x}", 0xfa01_0000u128), 2);
    let proxy_span = spans.iter().find(|(s, _)| s == "faultline-proxy").unwrap();
    let backend = spans.iter().find(|(s, _)| s == "pricing").unwrap();
    assert!(tag(&proxy_span.1, "faultline.fault").is_none());
    assert_eq!(
        backend.1["references"][0]["spanID"], proxy_span.1["spanID"],
        "{spans:#?}"
    );
    let spans = trace_spans(server.api, &format!("{:032x}", 0xfa01_0004u128), 2);
    let cut = spans.iter().find(|(s, _)| s == "faultline-proxy").unwrap();
    assert_eq!(
        tag(&cut.1, "faultline.fault"),
        Some(&Value::from("http_abort after 3 bytes"))
    );
    assert_eq!(tag(&cut.1, "error"), Some(&Value::Bool(true)));
}

#[test]
fn a_standalone_proxy_exports_its_http_spans_over_otlp() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let api = free_port();
    let child = Command::new(BIN)
        .args(["proxy", "--api", &format!("127.0.0.1:{api}")])
        .args(["--otlp-endpoint", &server.http_url()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _proxy = Proxy { child, api };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(api, "/version").is_ok_and(|r| r.0 == 200) {
        assert!(Instant::now() < deadline, "faultline proxy did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    let upstream = echo_http_server();
    let p = create(
        api,
        &format!(
            r#"{{"name":"web","protocol":"http","listen":"127.0.0.1:0","upstream":"127.0.0.1:{upstream}"}}"#
        ),
    );
    add_toxic(
        api,
        "web",
        r#"{"type":"http_delay","attributes":{"delay":50}}"#,
    );
    let trace = "fa020000000000000000000000000001";
    let (status, _, _, _) = get_traced(
        listen_port(&p),
        "/hello",
        &format!("00-{trace}-00000000000000a1-01"),
    );
    assert_eq!(status, 200);
    let spans = trace_spans(server.api, trace, 1);
    let (service, span) = &spans[0];
    assert_eq!(service, "faultline-proxy");
    assert_eq!(
        tag(span, "faultline.fault"),
        Some(&Value::from("http_delay 50ms"))
    );
}

/// A minimal HTTP/1.1 server answering 200 "hello" to every request; its port.
fn echo_http_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                );
            });
        }
    });
    port
}
