//! TLS on every listener of a running `faultline serve`, tokens on (issue 18), with
//! certificates the test makes (trustme, `tests/clients/make_certs.py`): the real
//! OpenTelemetry Python SDK exporters (gRPC and HTTP), py-zipkin and a Jaeger API client
//! (`requests`) work over TLS with the right token and are refused without; plaintext
//! clients get nothing; the sampling and fault-proxy APIs answer over TLS; the login
//! cookie is `Secure`; intake asks for client certificates from `--tls-client-ca` while
//! the API does not; a renewed certificate is served without a restart and a broken one
//! leaves the old in use; bad TLS settings stop the start with the file named. The
//! terminal commands speak https (`FAULTLINE_CA_FILE`), scheduled experiments call their
//! own process over TLS, and `faultline proxy` alone takes tokens and TLS and keeps an
//! audit log that names each caller's address.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use faultline_auth::Scope;
use serde_json::Value;

use common::{BIN, Server, client_script, free_port, metric, python, run_py, secret, token_file};

/// A CA and its certificates (see `make_certs.py`).
struct Certs(PathBuf);

impl Certs {
    fn make(dir: &Path) -> Certs {
        let out = Command::new(python())
            .arg(client_script("make_certs.py"))
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Certs(dir.to_path_buf())
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

/// One request through `https_call.py`: `{status, headers, body}` or `{error}`.
fn https(url: &str, args: &[&str]) -> Value {
    let (ok, out, err) = run_py("https_call.py", &[&[url], args].concat(), &[]);
    assert!(ok, "{err}");
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn start(tmp: &Path, certs: &Certs, extra: &[&str]) -> Server {
    let (cert, key) = (certs.file("server.pem"), certs.file("server.key"));
    let mut flags = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    flags.extend(extra);
    Server::start(&tmp.join("data"), &flags)
}

/// Sends the SDK's three-span trace; the trace id, or the exporter's complaint.
fn otel_send(protocol: &str, port: u16, env: &[(&str, &str)]) -> Result<String, String> {
    let endpoint = format!("https://127.0.0.1:{port}");
    let args = [
        "--protocol",
        protocol,
        "--endpoint",
        endpoint.as_str(),
        "--service",
        "tls-svc",
        "--marker",
        protocol,
    ];
    let (ok, out, err) = run_py("otel_send.py", &args, env);
    match ok {
        true => {
            let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
            Ok(v["trace_id"].as_str().unwrap().to_string())
        }
        false => Err(err),
    }
}

#[test]
fn real_clients_work_over_tls_with_the_right_token_only() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::make(&tmp.path().join("certs"));
    let tokens = token_file(tmp.path());
    let proxy = free_port();
    let proxy_addr = format!("127.0.0.1:{proxy}");
    let server = start(
        tmp.path(),
        &certs,
        &[
            "--token-file",
            tokens.to_str().unwrap(),
            "--fault-proxy",
            &proxy_addr,
        ],
    );
    let ca = certs.file("ca.pem");
    let ingest = format!("authorization=Bearer%20{}", secret(Scope::Ingest));
    let mut trace_id = String::new();
    for (protocol, port) in [("grpc", server.grpc), ("http", server.http)] {
        let trust = ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca.as_str());
        let err = otel_send(protocol, port, &[trust]).unwrap_err();
        // The HTTP exporter's log line for a refused batch ("Failed to export span batch
        // code: 401, ..."): a bare "401" also matches a port number in its other messages.
        let expect = if protocol == "grpc" {
            "UNAUTHENTICATED"
        } else {
            "code: 401"
        };
        assert!(err.contains(expect), "{protocol} without a token: {err}");
        let with_token = [
            trust,
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ingest.as_str()),
        ];
        trace_id = otel_send(protocol, port, &with_token)
            .unwrap_or_else(|e| panic!("{protocol} over TLS with an ingest token: {e}"));
        // Not trusting the server's CA: the SDK refuses the server.
        let err = otel_send(protocol, port, &with_token[1..]).unwrap_err();
        assert!(
            !err.contains(expect),
            "{protocol} must fail before HTTP: {err}"
        );
    }

    // py-zipkin over TLS.
    let zipkin = format!("https://127.0.0.1:{}", server.zipkin);
    let z = [
        "--endpoint",
        zipkin.as_str(),
        "--service",
        "zipkin-tls",
        "--marker",
        "z",
    ];
    let with_ca = [&z[..], &["--ca", ca.as_str()]].concat();
    let (ok, _, err) = run_py("pyzipkin_send.py", &with_ca, &[]);
    assert!(!ok && err.contains("HTTP 401"), "{err}");
    let ingest_secret = secret(Scope::Ingest);
    let with_token = [&with_ca[..], &["--bearer", ingest_secret.as_str()]].concat();
    let (ok, out, err) = run_py("pyzipkin_send.py", &with_token, &[]);
    assert!(ok, "py-zipkin over TLS with an ingest token: {err}");
    let zipkin_trace: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let (ok, _, err) = run_py(
        "pyzipkin_send.py",
        &[&z[..], &["--bearer", &ingest_secret]].concat(),
        &[],
    );
    assert!(
        !ok && err.contains("SSLError"),
        "an untrusted server must be refused: {err}"
    );

    // The Jaeger query API client (requests, trusting the CA through REQUESTS_CA_BUNDLE).
    let api = format!("https://127.0.0.1:{}", server.api);
    let bundle = [("REQUESTS_CA_BUNDLE", ca.as_str())];
    for (trace, spans, service) in [
        (trace_id.as_str(), 3, "tls-svc"),
        (zipkin_trace["trace_id"].as_str().unwrap(), 2, "zipkin-tls"),
    ] {
        let q = ["--api", api.as_str(), "--trace-id", trace];
        let read = secret(Scope::Read);
        let (ok, out, err) = run_py(
            "jaeger_query.py",
            &[&q[..], &["--bearer", &read]].concat(),
            &bundle,
        );
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(
            (v["status"].as_u64(), v["spans"].as_u64()),
            (Some(200), Some(spans)),
            "{v}"
        );
        assert!(
            v["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == service),
            "{v}"
        );
        let (ok, out, err) = run_py("jaeger_query.py", &q, &bundle);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(v["status"].as_u64(), Some(401), "{v}");
    }

    // Plaintext at TLS ports: no HTTP answer at all.
    for port in [
        server.api,
        server.http,
        server.zipkin,
        server.sampling,
        proxy,
    ] {
        let v = https(&format!("http://127.0.0.1:{port}/"), &[]);
        assert!(v["error"].is_string(), "port {port}: {v}");
    }

    // The other listeners answer over TLS, with their tokens.
    let sampling = format!(
        "https://127.0.0.1:{}/sampling?service=tls-svc",
        server.sampling
    );
    let v = https(
        &sampling,
        &["--ca", &ca, "--bearer", &secret(Scope::Ingest)],
    );
    assert_eq!(v["status"], 200, "{v}");
    let version = format!("https://127.0.0.1:{proxy}/version");
    let v = https(&version, &["--ca", &ca, "--bearer", &secret(Scope::Chaos)]);
    assert_eq!(v["status"], 200, "{v}");
    let v = https(&version, &["--ca", &ca]);
    assert_eq!(v["status"], 401, "{v}");

    // The login cookie is Secure because the connection is TLS.
    let origin = format!("Origin: {api}");
    let form = format!("token={}&next=/", secret(Scope::Read));
    let login = format!("{api}/login");
    let args = [
        "--ca", &ca, "--method", "POST", "--data", &form, "--header", &origin,
    ];
    let args = [
        &args[..],
        &[
            "--header",
            "Content-Type: application/x-www-form-urlencoded",
        ],
    ]
    .concat();
    let v = https(&login, &args);
    assert_eq!(v["status"], 303, "{v}");
    let cookie = v["headers"]["set-cookie"].as_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.ends_with("; Secure"),
        "{cookie}"
    );

    // The certificate's expiry and the plaintext attempts, in /metrics.
    let v = https(
        &format!("{api}/metrics"),
        &["--ca", &ca, "--bearer", &secret(Scope::Read)],
    );
    let text = v["body"].as_str().unwrap();
    let expiry = metric(text, "faultline_tls_certificate_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(expiry > now.as_secs_f64() + 86_400.0, "{expiry}");
    let failed = metric(
        text,
        "faultline_tls_handshake_failures_total{listener=\"Zipkin\"}",
    );
    assert!(
        failed >= 2.0,
        "plaintext and untrusting clients at Zipkin: {failed}"
    );
}

#[test]
fn intake_asks_for_client_certificates_and_the_api_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::make(&tmp.path().join("certs"));
    let clients = Certs::make(&tmp.path().join("clients"));
    let client_ca = clients.file("ca.pem");
    let server = start(tmp.path(), &certs, &["--tls-client-ca", &client_ca]);
    let ca = certs.file("ca.pem");
    let trust = ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca.as_str());
    let (cert, key) = (clients.file("client.pem"), clients.file("client.key"));
    let (stranger_cert, stranger_key) = (certs.file("client.pem"), certs.file("client.key"));
    let mut trace_id = String::new();
    for (protocol, port) in [("grpc", server.grpc), ("http", server.http)] {
        let err = otel_send(protocol, port, &[trust]).unwrap_err();
        assert!(
            err.contains("failed"),
            "{protocol} without a client certificate: {err}"
        );
        let stranger = [
            trust,
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                stranger_cert.as_str(),
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
                stranger_key.as_str(),
            ),
        ];
        let err = otel_send(protocol, port, &stranger).unwrap_err();
        assert!(
            err.contains("failed"),
            "{protocol} with another CA's certificate: {err}"
        );
        let good = [
            trust,
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                cert.as_str(),
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", key.as_str()),
        ];
        trace_id = otel_send(protocol, port, &good)
            .unwrap_or_else(|e| panic!("{protocol} with the client certificate: {e}"));
    }
    let zipkin = format!("https://127.0.0.1:{}", server.zipkin);
    let z = [
        "--endpoint",
        zipkin.as_str(),
        "--service",
        "zipkin-mtls",
        "--marker",
        "z",
        "--ca",
        ca.as_str(),
    ];
    let (ok, _, err) = run_py("pyzipkin_send.py", &z, &[]);
    assert!(!ok, "py-zipkin without a client certificate: {err}");
    let with_cert = [
        &z[..],
        &["--client-cert", cert.as_str(), "--client-key", key.as_str()],
    ]
    .concat();
    let (ok, _, err) = run_py("pyzipkin_send.py", &with_cert, &[]);
    assert!(ok, "py-zipkin with the client certificate: {err}");

    // The API asks for none: a reader without a certificate gets the trace.
    let api = format!("https://127.0.0.1:{}", server.api);
    let q = ["--api", api.as_str(), "--trace-id", trace_id.as_str()];
    let (ok, out, err) = run_py(
        "jaeger_query.py",
        &q,
        &[("REQUESTS_CA_BUNDLE", ca.as_str())],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (v["status"].as_u64(), v["spans"].as_u64()),
        (Some(200), Some(3)),
        "{v}"
    );
    let v = https(&format!("{api}/metrics"), &["--ca", &ca]);
    let text = v["body"].as_str().unwrap();
    for l in ["OTLP/gRPC", "OTLP/HTTP", "Zipkin"] {
        let n = metric(
            text,
            &format!("faultline_tls_handshake_failures_total{{listener=\"{l}\"}}"),
        );
        assert!(n >= 1.0, "{l}: {n}");
    }
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let first = Certs::make(&live);
    let second = Certs::make(&tmp.path().join("second"));
    let server = start(tmp.path(), &first, &[]);
    let url = format!("https://127.0.0.1:{}/ready", server.api);
    let (ca1, ca2) = (tmp.path().join("ca1.pem"), second.file("ca.pem"));
    std::fs::copy(live.join("ca.pem"), &ca1).unwrap();
    let ca1 = ca1.to_str().unwrap().to_string();
    assert_eq!(https(&url, &["--ca", &ca1])["status"], 200);
    assert!(https(&url, &["--ca", &ca2])["error"].is_string());

    // Renewal: the key, then the certificate (as a renewal tool copies them).
    std::fs::copy(second.0.join("server.key"), live.join("server.key")).unwrap();
    std::fs::copy(second.0.join("server.pem"), live.join("server.pem")).unwrap();
    let started = Instant::now();
    while https(&url, &["--ca", &ca2])["status"] != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not reloaded; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        https(&url, &["--ca", &ca1])["error"].is_string(),
        "the old certificate is gone"
    );

    // A broken certificate file: refused, the renewed one stays in use.
    std::fs::write(
        live.join("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    let started = Instant::now();
    while !server
        .log_text()
        .contains("the previous certificate stays in use")
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(https(&url, &["--ca", &ca2])["status"], 200);
    let v = https(
        &format!("https://127.0.0.1:{}/metrics", server.api),
        &["--ca", &ca2],
    );
    let text = v["body"].as_str().unwrap();
    assert_eq!(
        metric(text, "faultline_tls_reloads_total{result=\"ok\"}"),
        1.0,
        "{text}"
    );
    assert!(metric(text, "faultline_tls_reloads_total{result=\"failed\"}") >= 1.0);
}

#[test]
fn bad_tls_settings_stop_the_start_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::make(&tmp.path().join("certs"));
    let (cert, key) = (certs.file("server.pem"), certs.file("server.key"));
    let missing = tmp.path().join("nope.pem");
    let missing = missing.to_str().unwrap();
    let other_key = Certs::make(&tmp.path().join("other")).file("server.key");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--tls-cert", &cert], "tls.key is not"),
        (vec!["--tls-key", &key], "tls.cert is not"),
        (vec!["--tls-cert", missing, "--tls-key", &key], "nope.pem"),
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            "does not belong to the certificate",
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &key,
            ],
            "holds no CERTIFICATE",
        ),
    ];
    for (flags, want) in cases {
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} started");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}

/// Runs a `faultline` command with `env`: (succeeded, stdout, stderr).
fn faultline(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("FAULTLINE_CA_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    common::outcome(out)
}

/// Waits up to `secs` for `f` to give a value.
fn within<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn terminal_commands_and_scheduled_experiments_reach_a_tls_server() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::make(&tmp.path().join("certs"));
    let tokens = token_file(tmp.path());
    let proxy = free_port();
    // A scheduled experiment: a latency toxic on proxy `p` for a second, checked against
    // a service with no traffic (the point is that the run reaches the API and the proxy
    // API, both on TLS with tokens on).
    let experiment = tmp.path().join("experiment.json");
    std::fs::write(
        &experiment,
        r#"{"title": "Scheduled over TLS",
            "steady-state-hypothesis": {"title": "quiet", "checks": [
              {"name": "quiet", "service": "tls-exp", "window": "10s", "minRequests": 0}]},
            "method": [
              {"type": "toxic", "name": "slow", "proxy": "p", "duration": "1s",
               "toxic": {"type": "latency", "attributes": {"latency": 10}}}]}"#,
    )
    .unwrap();
    let cfg = tmp.path().join("faultline.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nfault_proxy = \"127.0.0.1:{proxy}\"\n[[experiments]]\nfile = {:?}\nevery = \"10s\"\n",
            experiment.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let tokens = tokens.to_str().unwrap().to_string();
    let server = start(
        tmp.path(),
        &certs,
        &["--config", &cfg, "--token-file", &tokens],
    );
    let ca = certs.file("ca.pem");
    let chaos = secret(Scope::Chaos);
    // The proxy the experiment needs, made over TLS with the chaos token.
    let v = https(
        &format!("https://127.0.0.1:{proxy}/proxies"),
        &[
            "--ca",
            &ca,
            "--bearer",
            &chaos,
            "--method",
            "POST",
            "--data",
            r#"{"name": "p", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}"#,
        ],
    );
    assert_eq!(v["status"], 201, "{v}");

    // The terminal commands: https with the CA given in FAULTLINE_CA_FILE and a token.
    let api = format!("https://127.0.0.1:{}", server.api);
    let red = ["query", "red", "tls-exp", "--api", &api, "--json"];
    let read = secret(Scope::Read);
    let (ok, out, err) = faultline(
        &red,
        &[("FAULTLINE_CA_FILE", &ca), ("FAULTLINE_TOKEN", &read)],
    );
    assert!(ok, "faultline query over https: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v.is_object(), "{out}");
    // Without the CA the server is refused, and the message says how to trust it.
    let (ok, _, err) = faultline(&red, &[("FAULTLINE_TOKEN", &read)]);
    assert!(!ok, "an unknown CA must be refused");
    assert!(
        err.contains("UnknownIssuer") && err.contains("FAULTLINE_CA_FILE"),
        "{err}"
    );
    // With the CA and without a token: the API's 401, said.
    let (ok, _, err) = faultline(&red, &[("FAULTLINE_CA_FILE", &ca)]);
    assert!(!ok && err.contains("bearer token"), "{err}");
    // A CA file that is not one is named.
    let (ok, _, err) = faultline(
        &red,
        &[("FAULTLINE_CA_FILE", &tokens), ("FAULTLINE_TOKEN", &read)],
    );
    assert!(!ok && err.contains(&tokens), "{err}");

    // The scheduled run called the API and the proxy API over https (its own token).
    let admin = secret(Scope::Admin);
    let run = within(60, "a scheduled run", || {
        let v = https(
            &format!("{api}/api/v1/experiments"),
            &["--ca", &ca, "--bearer", &read],
        );
        let body: Value = serde_json::from_str(v["body"].as_str()?).ok()?;
        body["runs"].as_array()?.first().cloned()
    });
    let v = https(
        &format!(
            "{api}/api/v1/experiments/runs/{}",
            run["run"].as_str().unwrap()
        ),
        &["--ca", &ca, "--bearer", &read],
    );
    let journal: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert!(
        journal["steadyStates"]["before"][0]["answer"]["measured"].is_object(),
        "the run's check reached the API: {journal:#}"
    );
    assert_eq!(journal["status"], "completed", "{journal:#}");
    // The audit log names both callers and where they called from.
    let v = https(
        &format!("{api}/api/v1/audit"),
        &["--ca", &ca, "--bearer", &admin],
    );
    let audit: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    let records = audit["records"].as_array().unwrap();
    let find = |who: &str, method: &str, target: &str| {
        records
            .iter()
            .find(|r| r["who"] == who && r["method"] == method && r["target"] == target)
            .unwrap_or_else(|| panic!("no {who} {target} in {audit:#}; the run: {journal:#}"))
    };
    let mine = find("t-chaos", "POST", "/proxies");
    assert_eq!(mine["status"], 201, "{mine}");
    let toxic = find("faultline-experiments", "POST", "/proxies/p/toxics");
    assert_eq!(toxic["status"], 200, "{toxic}");
    for r in [mine, toxic] {
        let peer = r["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.1:"), "{r}");
    }
}

#[test]
fn the_lone_fault_proxy_takes_tokens_and_tls_and_keeps_an_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::make(&tmp.path().join("certs"));
    let tokens = token_file(tmp.path());
    let tokens = tokens.to_str().unwrap();
    let (cert, key, ca) = (
        certs.file("server.pem"),
        certs.file("server.key"),
        certs.file("ca.pem"),
    );
    // Open on a non-loopback address: refused, saying what to do.
    let open = format!("0.0.0.0:{}", free_port());
    let (ok, _, err) = faultline(&["proxy", "--api", &open], &[]);
    assert!(!ok, "started open on {open}");
    assert!(
        err.contains("no tokens are configured") && err.contains("--allow-unauthenticated"),
        "{err}"
    );
    // Client certificates are not a thing of this API.
    let (ok, _, err) = faultline(
        &[
            "proxy",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        &[],
    );
    assert!(!ok && err.contains("drop --tls-client-ca"), "{err}");

    let port = free_port();
    let state = tmp.path().join("state");
    // Killed when the test ends, passed or not (it holds the test's inherited files).
    let child = common::Fixture(
        Command::new(BIN)
            .args(["proxy", "--api", &format!("127.0.0.1:{port}")])
            .args([
                "--token-file",
                tokens,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ])
            .arg("--state-dir")
            .arg(&state)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("https://127.0.0.1:{port}");
    let version = format!("{base}/version");
    within(20, "the proxy API over TLS", || {
        (https(&version, &["--ca", &ca])["status"] == 401).then_some(())
    });
    let v = https(&version, &["--ca", &ca, "--bearer", &secret(Scope::Chaos)]);
    assert_eq!(v["status"], 200, "{v}");
    // Plaintext at the TLS port: no answer.
    let v = https(&format!("http://127.0.0.1:{port}/version"), &[]);
    assert!(v["error"].is_string(), "{v}");
    let create = |token: &str| {
        https(
            &format!("{base}/proxies"),
            &[
                "--ca",
                &ca,
                "--bearer",
                token,
                "--method",
                "POST",
                "--data",
                r#"{"name": "redis", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:6379"}"#,
            ],
        )
    };
    assert_eq!(create(&secret(Scope::Read))["status"], 403);
    assert_eq!(create(&secret(Scope::Chaos))["status"], 201);
    drop(child);

    // The audit log in the state directory: the refusal and the change, with the peer.
    let mut lines = Vec::new();
    for e in std::fs::read_dir(state.join("audit")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        lines.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    let got: Vec<(String, u64)> = lines
        .iter()
        .map(|r| {
            (
                r["who"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("t-read".to_string(), 403), ("t-chaos".to_string(), 201)],
        "{lines:?}"
    );
    for r in &lines {
        assert_eq!(r["listener"], "fault-proxy", "{r}");
        assert_eq!(r["target"], "/proxies", "{r}");
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    }
    // The body is read only once the token may make the change.
    assert_eq!(lines[1]["object"], "redis", "{lines:?}");
}
