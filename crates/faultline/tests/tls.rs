//! TLS on every listener of a running `faultline serve`, tokens on (issue 18), with
//! certificates the test makes (trustme, `tests/clients/make_certs.py`): the real
//! OpenTelemetry Python SDK exporters (gRPC and HTTP), py-zipkin and a Jaeger API client
//! (`requests`) work over TLS with the right token and are refused without; plaintext
//! clients get nothing; the sampling and fault-proxy APIs answer over TLS; the login
//! cookie is `Secure`; intake asks for client certificates from `--tls-client-ca` while
//! the API does not; a renewed certificate is served without a restart and a broken one
//! leaves the old in use; bad TLS settings stop the start with the file named.

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
        let expect = if protocol == "grpc" {
            "UNAUTHENTICATED"
        } else {
            "401"
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
