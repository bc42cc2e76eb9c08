//! Probes that cannot be turned against their host (issue 18): a probe aimed at a
//! refused address is refused when defined, through the API (400 naming the probe, the
//! address, the rule and how to allow it) and in the configuration file (the server does
//! not start); a redirect to the cloud metadata address is refused and never followed; an
//! allow list without loopback refuses loopback probes, by address when defined and by
//! resolved address when checked, nothing ever connecting.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Server, http_call, http_get};

fn call(server: &Server, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http_call(server.api, method, path, &body.to_string()).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Starts a server with `policy` as its configuration file's `[probe_policy]`.
fn with_policy(dir: &std::path::Path, policy: &str) -> Server {
    let config = dir.join("faultline.toml");
    std::fs::write(&config, format!("[probe_policy]\n{policy}")).unwrap();
    Server::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

/// A listener no one should reach: whether anything connected to it by now.
struct Witness(TcpListener);

impl Witness {
    fn on(ip: &str) -> (Self, u16) {
        let l = TcpListener::bind((ip, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        (Self(l), port)
    }

    fn connected(&self) -> bool {
        self.0.accept().is_ok()
    }
}

/// A loopback HTTP server answering `302 Found` to `location(path)` for every request;
/// its port.
fn redirector(location: impl Fn(&str) -> String + Send + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let _ = write!(
                s,
                "HTTP/1.1 302 Found\r\nlocation: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                location(&path)
            );
        }
    });
    port
}

/// Waits for the probe's first result.
fn first_result(server: &Server, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(server.api, &format!("/api/v1/probes/{name}")).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        if !v["last"].is_null() {
            return v["last"].clone();
        }
        assert!(Instant::now() < deadline, "no result for {name}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

/// The probe span of a result's trace, once stored.
fn probe_span(server: &Server, result: &Value) -> Value {
    let id = result["traceId"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(server.api, &format!("/api/traces/{id}")).unwrap();
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            return v["data"][0]["spans"][0].clone();
        }
        assert!(Instant::now() < deadline, "trace {id}: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn probes_aimed_at_refused_addresses_are_refused_when_defined_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let metadata = json!({"name": "meta", "interval_secs": 5,
        "http": {"url": "http://169.254.169.254/latest/meta-data/"}});
    let (status, body) = call(&server, "POST", "/api/v1/probes", &metadata);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["parameter"], "http.url");
    assert_eq!(
        body["error"],
        "probe \"meta\": http.url: 169.254.169.254 is refused (built-in rule \"metadata\"): it is a cloud metadata address, through which a probe could read the host's cloud credentials; to probe it anyway, add \"169.254.169.254\" to [probe_policy] exempt"
    );
    for (def, field, says) in [
        (
            json!({"name": "mapped", "tcp": {"host": "::ffff:169.254.169.254", "port": 80}}),
            "tcp.host",
            "probe \"mapped\": tcp.host: ::ffff:169.254.169.254 (the IPv4 address 169.254.169.254) is refused (built-in rule \"metadata\")",
        ),
        (
            json!({"name": "decimal", "http": {"url": "http://2852039166/latest/meta-data/"}}),
            "http.url",
            "probe \"decimal\": http.url: 2852039166 (the IPv4 address 169.254.169.254) is refused (built-in rule \"metadata\")",
        ),
        (
            json!({"name": "gcp", "http": {"url": "http://metadata.google.internal/computeMetadata/v1/"}}),
            "http.url",
            "probe \"gcp\": http.url: metadata.google.internal is refused (built-in rule \"metadata\"): it names a cloud metadata service",
        ),
        (
            json!({"name": "alibaba", "dns": {"name": "example.com", "server": "100.100.100.200"}}),
            "dns.server",
            "probe \"alibaba\": dns.server: 100.100.100.200 is refused (built-in rule \"metadata\")",
        ),
        (
            json!({"name": "link", "http": {"url": "http://[fe80::1]:8080/"}}),
            "http.url",
            "probe \"link\": http.url: fe80::1 is refused (built-in rule \"link-local\")",
        ),
        (
            json!({"name": "zero", "tcp": {"host": "0.0.0.0", "port": 22}}),
            "tcp.host",
            "probe \"zero\": tcp.host: 0.0.0.0 is refused (built-in rule \"unspecified\")",
        ),
    ] {
        let (status, body) = call(&server, "POST", "/api/v1/probes", &def);
        assert_eq!(
            (status, body["parameter"].as_str()),
            (400, Some(field)),
            "{body}"
        );
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with(says), "{error}");
        assert!(error.contains("to [probe_policy] exempt"), "{error}");
    }
    // A probe to an allowed address is made; replacing its target with a refused one is
    // refused, and the probe keeps its definition.
    let (_w, port) = Witness::on("127.0.0.1");
    let fine = json!({"name": "fine", "interval_secs": 60,
        "tcp": {"host": "127.0.0.1", "port": port}});
    let (status, body) = call(&server, "POST", "/api/v1/probes", &fine);
    assert_eq!(status, 201, "{body}");
    let moved = json!({"name": "fine", "interval_secs": 60,
        "tcp": {"host": "169.254.169.254", "port": 80}});
    let (status, body) = call(&server, "PUT", "/api/v1/probes/fine", &moved);
    assert_eq!(
        (status, body["parameter"].as_str()),
        (400, Some("tcp.host")),
        "{body}"
    );
    let (_, body) = http_get(server.api, "/api/v1/probes").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fine"], "no refused probe was made");
    assert_eq!(v["probes"][0]["definition"]["tcp"]["host"], "127.0.0.1");
    let saved = std::fs::read_to_string(server.data_dir.join("probes.json")).unwrap();
    assert!(!saved.contains("169.254"), "{saved}");
}

#[test]
fn a_configuration_file_probe_at_a_refused_address_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("faultline.toml");
    std::fs::write(
        &config,
        "[[probes]]\nname = \"meta\"\n[probes.http]\nurl = \"http://169.254.169.254/latest/meta-data/iam/\"\n",
    )
    .unwrap();
    let p = common::Ports::new();
    let mut child = Command::new(common::BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--otlp-grpc", &format!("127.0.0.1:{}", p.grpc)])
        .args(["--otlp-http", &format!("127.0.0.1:{}", p.http)])
        .args(["--zipkin", &format!("127.0.0.1:{}", p.zipkin)])
        .args(["--http", &format!("127.0.0.1:{}", p.api)])
        .args(["--sampling", &format!("127.0.0.1:{}", p.sampling)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("faultline started with a probe aimed at the metadata address");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "faultline: error: probes: probe \"meta\": http.url: 169.254.169.254 is refused (built-in rule \"metadata\"): it is a cloud metadata address, through which a probe could read the host's cloud credentials; to probe it anyway, add \"169.254.169.254\" to [probe_policy] exempt"
        ),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("data").join("wal").exists(),
        "refused before anything was opened"
    );
}

#[test]
fn a_redirect_to_the_metadata_address_is_refused_and_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    // 127.0.0.2 is reachable (all of 127.0.0.0/8 is loopback) and denied: a redirect
    // there shows a refused target is never connected to.
    let (denied, denied_port) = Witness::on("127.0.0.2");
    let server = with_policy(tmp.path(), "deny = [\"127.0.0.2/32\"]\n");
    let port = redirector(move |path| match path {
        "/denied" => format!("http://127.0.0.2:{denied_port}/"),
        _ => "http://169.254.169.254/latest/meta-data/".to_string(),
    });
    for (name, path) in [("meta", "/"), ("denied", "/denied")] {
        let def = json!({"name": name, "interval_secs": 3, "timeout_secs": 3.0,
            "http": {"url": format!("http://127.0.0.1:{port}{path}")}});
        let (status, body) = call(&server, "POST", "/api/v1/probes", &def);
        assert_eq!(status, 201, "{body}");
    }
    let meta = first_result(&server, "meta");
    assert_eq!(meta["ok"], false);
    assert_eq!(meta["status"], 302);
    assert_eq!(
        meta["error"],
        "redirect refused, not followed: HTTP 302 to \"http://169.254.169.254/latest/meta-data/\"; 169.254.169.254 is refused (built-in rule \"metadata\"): it is a cloud metadata address, through which a probe could read the host's cloud credentials; to probe it anyway, add \"169.254.169.254\" to [probe_policy] exempt"
    );
    // One exchange with the probe's own target and nothing after it: no attempt to reach
    // the metadata address (which would have hung or failed in a second connect).
    assert_eq!(
        phase_names(&meta),
        ["connect", "processing", "resolve", "transfer"]
    );
    assert!(meta["totalMs"].as_f64().unwrap() < 2000.0, "{meta}");
    let span = probe_span(&server, &meta);
    let events: Vec<&str> = span["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["fields"][0]["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["resolve", "connect", "processing", "transfer"],
        "one connect, to the probe's target: {span}"
    );

    let denied_result = first_result(&server, "denied");
    assert_eq!(
        denied_result["error"],
        format!(
            "redirect refused, not followed: HTTP 302 to \"http://127.0.0.2:{denied_port}/\"; 127.0.0.2 is refused ([probe_policy] deny entry \"127.0.0.2/32\"): it is on the deny list; to allow it, remove \"127.0.0.2/32\" from [probe_policy] deny"
        )
    );
    assert!(
        !denied.connected(),
        "the refused redirect target was connected to"
    );
}

#[test]
fn an_allow_list_without_loopback_refuses_loopback_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let (witness, port) = Witness::on("127.0.0.1");
    let server = with_policy(
        tmp.path(),
        "allow = [\"10.0.0.0/8\", \"*.example.internal\"]\n",
    );
    // An address is judged when the probe is defined.
    let literal = json!({"name": "loop", "interval_secs": 2,
        "http": {"url": format!("http://127.0.0.1:{port}/")}});
    let (status, body) = call(&server, "POST", "/api/v1/probes", &literal);
    assert_eq!(
        (status, body["parameter"].as_str()),
        (400, Some("http.url")),
        "{body}"
    );
    assert_eq!(
        body["error"],
        "probe \"loop\": http.url: 127.0.0.1 is refused ([probe_policy] allow): it is not on the allow list (10.0.0.0/8, *.example.internal); to allow it, add \"127.0.0.1\" (or a range or name covering it) to [probe_policy] allow"
    );
    // A name can only be judged by its addresses: the probe is made, and each check
    // refuses what the name resolves to before connecting.
    let named = json!({"name": "named", "interval_secs": 2,
        "tcp": {"host": "localhost", "port": port}});
    let (status, body) = call(&server, "POST", "/api/v1/probes", &named);
    assert_eq!(status, 201, "{body}");
    let r = first_result(&server, "named");
    assert_eq!(r["ok"], false);
    let error = r["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused in resolve, not connected: localhost resolves to "),
        "{error}"
    );
    assert!(error.contains("127.0.0.1"), "{error}");
    assert!(
        error.contains("none of them allowed; ")
            && error.contains(" is refused ([probe_policy] allow): it is not on the allow list"),
        "{error}"
    );
    assert!(phase_names(&r).is_empty(), "failed in resolve: {r}");
    assert!(!witness.connected(), "a refused address was connected to");
}
