//! Tokens with scopes on a running `faultline serve` (issue 18): every route of every
//! listener (the route map, `faultline_auth::routes::TABLE`, checked against the routers'
//! source so no route is left out) answers 401 without a token, 403 with a token lacking
//! its scope and passes with the right one; the real OpenTelemetry Python SDK exporters
//! (gRPC and HTTP, the header set through `OTEL_EXPORTER_OTLP_TRACES_HEADERS`), a Zipkin
//! client (the SDK's Zipkin JSON exporter) and a Jaeger query API client (plain `requests`
//! against `/api/traces`) work with the right token and are refused without; refusals are
//! counted in `/metrics`; control actions land in the audit log (API and page); a token
//! file change takes effect without a restart and a bad one keeps the tokens in force; a
//! non-loopback listener without tokens refuses to start.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use faultline_auth::routes::{Access, Listener, TABLE};
use faultline_auth::tokens::line;
use faultline_auth::{Scope, Scopes};
use serde_json::Value;

use common::{Server, free_port, metric, run_py, secret, token_file};

struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// A blocking HTTP/1.1 request with an optional bearer token.
fn call(port: u16, method: &str, path: &str, body: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(auth.as_deref().map(|a| ("authorization", a)));
    call_with(port, method, path, body, &headers)
}

/// A blocking HTTP/1.1 request with these headers (besides Host and Content-Length).
fn call_with(port: u16, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// A concrete path for a route pattern.
fn concrete(pattern: &str) -> String {
    let path: Vec<String> = pattern
        .split('/')
        .map(|seg| match seg {
            "{id}" | "{trace_id}" => "0af7651916cd43dd8448eb211c80319c".to_string(),
            s if s.starts_with('{') => "x1".to_string(),
            s => s.to_string(),
        })
        .collect();
    let path = path.join("/");
    match pattern {
        "/sampling" | "/api/sampling" => format!("{path}?service=svc"),
        "/api/v1/red" | "/api/operations" | "/api/v1/steady-state" => {
            format!("{path}?service=svc")
        }
        _ => path,
    }
}

/// A scope that is not `s`, for the 403 case.
fn other(s: Scope) -> Scope {
    if s == Scope::Ingest {
        Scope::Read
    } else {
        Scope::Ingest
    }
}

/// The paths of `.route("...")` calls in a router's source.
fn routes_in(file: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.split(".route(")
        .skip(1)
        .filter_map(|rest| rest.split('"').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn every_router_route_is_in_the_route_map() {
    let sources = [
        (Listener::OtlpHttp, "crates/faultline-intake/src/http.rs"),
        (Listener::Sampling, "crates/faultline-api/src/sampling.rs"),
        (Listener::FaultProxy, "crates/faultline-chaos/src/api.rs"),
        (Listener::Api, "crates/faultline-ui/src/pages/mod.rs"),
    ];
    let api_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../faultline-api/src");
    let mut files: Vec<(Listener, String)> =
        sources.iter().map(|(l, f)| (*l, f.to_string())).collect();
    for e in std::fs::read_dir(api_dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "sampling.rs" && name.ends_with(".rs") {
            files.push((Listener::Api, format!("crates/faultline-api/src/{name}")));
        }
    }
    let mut missing = Vec::new();
    let mut seen = 0;
    for (listener, file) in &files {
        for path in routes_in(file) {
            seen += 1;
            // Intake's file holds both receivers.
            let known = TABLE.iter().any(|r| {
                (r.listener == *listener
                    || (*listener == Listener::OtlpHttp && r.listener == Listener::Zipkin)
                    || (*listener == Listener::Sampling && r.listener == Listener::Api))
                    && r.path == path
            });
            if !known {
                missing.push(format!("{file}: {path}"));
            }
        }
    }
    assert!(seen > 60, "found only {seen} routes in the routers");
    assert!(
        missing.is_empty(),
        "routes missing from faultline_auth::routes::TABLE: {missing:#?}"
    );
}

fn start_with_tokens(tmp: &Path, extra: &[&str]) -> (Server, u16, std::path::PathBuf) {
    let tokens = token_file(tmp);
    let proxy = free_port();
    let proxy_addr = format!("127.0.0.1:{proxy}");
    let mut flags = vec!["--token-file", tokens.to_str().unwrap()];
    flags.extend(["--fault-proxy", proxy_addr.as_str()]);
    flags.extend(extra);
    let server = Server::start(&tmp.join("data"), &flags);
    (server, proxy, tokens)
}

#[test]
fn every_route_needs_its_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, proxy, _) = start_with_tokens(tmp.path(), &[]);
    let port = |l: Listener| match l {
        Listener::OtlpHttp => server.http,
        Listener::Zipkin => server.zipkin,
        Listener::Sampling => server.sampling,
        Listener::Api => server.api,
        Listener::FaultProxy => proxy,
        Listener::OtlpGrpc => unreachable!(),
    };
    let mut checked = 0;
    for rule in TABLE.iter().filter(|r| r.listener != Listener::OtlpGrpc) {
        for method in rule.methods.split('|') {
            let (p, path) = (port(rule.listener), concrete(rule.path));
            let body = if method == "GET" { "" } else { "{}" };
            let what = format!("{method} {path} on {:?}", rule.listener);
            let none = call(p, method, &path, body, None);
            match rule.access {
                Access::Open => {
                    assert!(
                        ![401, 403].contains(&none.status),
                        "{what} is open: {}",
                        none.status
                    );
                }
                Access::Needs { scope, .. } => {
                    assert_eq!(none.status, 401, "{what} without a token: {}", none.body);
                    assert!(
                        none.head.contains("www-authenticate: bearer"),
                        "{what}: {}",
                        none.head
                    );
                    let wrong = call(p, method, &path, body, Some(&secret(other(scope))));
                    assert_eq!(wrong.status, 403, "{what} with a token lacking {scope}");
                    let v: Value = serde_json::from_str(&wrong.body).unwrap();
                    assert_eq!(
                        v["error"],
                        format!("this route needs a token with the {scope} scope"),
                        "{what}"
                    );
                    let right = call(p, method, &path, body, Some(&secret(scope)));
                    assert!(
                        ![401, 403].contains(&right.status),
                        "{what} with the {scope} scope: {} {}",
                        right.status,
                        right.body
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 75, "checked {checked} route/method pairs");

    // Paths no router knows are checked too (reads need read, anything else admin),
    // so a scan learns nothing without a token.
    for (method, path) in [("GET", "/no-such-page"), ("DELETE", "/api/v1/status")] {
        assert_eq!(
            call(server.api, method, path, "", None).status,
            401,
            "{path}"
        );
    }
    let probe = call(
        server.api,
        "GET",
        "/no-such-page",
        "",
        Some(&secret(Scope::Read)),
    );
    assert_eq!(probe.status, 404);
    let write = call(
        server.api,
        "DELETE",
        "/api/v1/status",
        "",
        Some(&secret(Scope::Read)),
    );
    assert_eq!(write.status, 403, "unknown writes need admin");
    let nope = call(proxy, "GET", "/nothing", "", Some(&secret(Scope::Read)));
    assert_eq!(
        nope.status, 403,
        "the fault proxy's unknown paths need chaos"
    );

    // An unknown token is refused like a missing one, with the same body, and counted.
    let m0 = call(
        server.api,
        "GET",
        "/metrics",
        "",
        Some(&secret(Scope::Read)),
    )
    .body;
    let before = metric(
        &m0,
        "faultline_auth_failures_total{listener=\"api\",reason=\"unknown\"}",
    );
    let a = call(server.api, "GET", "/api/services", "", Some("guess-1"));
    let b = call(server.api, "GET", "/api/services", "", None);
    assert_eq!(
        (a.status, &a.body),
        (401, &b.body),
        "no hint whether it exists"
    );
    call(server.api, "GET", "/api/services", "", Some("guess-2"));
    let m = call(
        server.api,
        "GET",
        "/metrics",
        "",
        Some(&secret(Scope::Read)),
    )
    .body;
    let key = |l: &str, r: &str| {
        format!("faultline_auth_failures_total{{listener=\"{l}\",reason=\"{r}\"}}")
    };
    assert_eq!(metric(&m, &key("api", "unknown")), before + 2.0, "{m}");
    assert!(metric(&m, &key("api", "missing")) > 40.0, "{m}");
    assert!(metric(&m, &key("api", "scope")) > 40.0, "{m}");
    assert!(metric(&m, &key("fault-proxy", "scope")) >= 12.0, "{m}");
    assert!(metric(&m, &key("zipkin", "missing")) >= 1.0, "{m}");
    assert_eq!(metric(&m, "faultline_auth_tokens"), 5.0);

    // Control actions are in the audit log, named, with their result; reads are not.
    let created = call(
        server.api,
        "POST",
        "/api/v1/probes",
        r#"{"name":"audited","interval_secs":60,"paused":true,"tcp":{"host":"127.0.0.1","port":9}}"#,
        Some(&secret(Scope::Probes)),
    );
    assert!(![401, 403].contains(&created.status), "{}", created.body);
    let log = call(
        server.api,
        "GET",
        "/api/v1/audit?limit=1000",
        "",
        Some(&secret(Scope::Admin)),
    );
    assert_eq!(log.status, 200);
    let v: Value = serde_json::from_str(&log.body).unwrap();
    let recs = v["records"].as_array().unwrap();
    let newest = &recs[0];
    assert_eq!(newest["who"], "t-probes");
    assert_eq!(newest["method"], "POST");
    assert_eq!(newest["target"], "/api/v1/probes");
    assert_eq!(newest["object"], "audited");
    assert_eq!(newest["status"], created.status);
    // From where: the connection's address, on every listener.
    assert!(
        recs.iter().all(|r| r["peer"]
            .as_str()
            .unwrap_or_default()
            .starts_with("127.0.0.1:")),
        "{recs:?}"
    );
    assert!(
        recs.iter().any(|r| r["who"] == "t-ingest"
            && r["target"] == "/api/v1/dlq/replay"
            && r["status"] == 403),
        "a refused control action is recorded: {recs:?}"
    );
    assert!(
        recs.iter().any(|r| r["listener"] == "fault-proxy"
            && r["who"] == "t-chaos"
            && r["target"] == "/reset"),
        "{recs:?}"
    );
    assert!(
        recs.iter().all(|r| r["method"] != "GET"),
        "reads are not audited"
    );
    let page = call(
        server.api,
        "GET",
        "/audit?who=t-probes",
        "",
        Some(&secret(Scope::Admin)),
    );
    assert_eq!(page.status, 200);
    assert!(page.body.contains("class=audit-record") && page.body.contains("audited"));
    assert!(
        page.body.contains("<td>127.0.0.1:"),
        "the page shows the peer"
    );
    let on_disk = std::fs::read_dir(server.data_dir.join("audit"))
        .unwrap()
        .count();
    assert_eq!(on_disk, 1, "one file for today");
}

#[test]
fn real_clients_work_with_the_right_token_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _, _) = start_with_tokens(tmp.path(), &[]);
    let ingest = format!("authorization=Bearer%20{}", secret(Scope::Ingest));
    let reader = format!("authorization=Bearer%20{}", secret(Scope::Read));
    let mut trace_id = String::new();
    for (protocol, endpoint) in [("grpc", server.grpc_url()), ("http", server.http_url())] {
        let args = |svc: &'static str| {
            vec![
                "--protocol".to_string(),
                protocol.to_string(),
                "--endpoint".to_string(),
                endpoint.clone(),
                "--service".to_string(),
                svc.to_string(),
                "--marker".to_string(),
                format!("m-{protocol}"),
            ]
        };
        let a = args("auth-svc");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (ok, _, err) = run_py("otel_send.py", &a, &[]);
        assert!(!ok, "{protocol} without a token must fail");
        // The HTTP exporter's log line for a refused batch ("Failed to export span batch
        // code: 401, ..."), not a bare number a port could hold.
        let expect = if protocol == "grpc" {
            "UNAUTHENTICATED"
        } else {
            "code: 401"
        };
        assert!(err.contains(expect), "{protocol}: {err}");
        let env = [("OTEL_EXPORTER_OTLP_TRACES_HEADERS", reader.as_str())];
        let (ok, _, err) = run_py("otel_send.py", &a, &env);
        assert!(!ok, "{protocol} with a read token must fail");
        let expect = if protocol == "grpc" {
            "PERMISSION_DENIED"
        } else {
            "code: 403"
        };
        assert!(err.contains(expect), "{protocol}: {err}");
        let env = [("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ingest.as_str())];
        let (ok, out, err) = run_py("otel_send.py", &a, &env);
        assert!(ok, "{protocol} with an ingest token: {err}");
        let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        trace_id = v["trace_id"].as_str().unwrap().to_string();
    }
    let zipkin = server.zipkin_url();
    let z = [
        "--endpoint",
        zipkin.as_str(),
        "--service",
        "zipkin-auth",
        "--marker",
        "z",
    ];
    let (ok, _, err) = run_py("zipkin_send.py", &z, &[]);
    assert!(!ok && err.contains("HTTP 401"), "{err}");
    let (read, ingest_secret) = (secret(Scope::Read), secret(Scope::Ingest));
    let with = [&z[..], &["--bearer", &read]].concat();
    let (ok, _, err) = run_py("zipkin_send.py", &with, &[]);
    assert!(!ok && err.contains("HTTP 403"), "{err}");
    let with = [&z[..], &["--bearer", &ingest_secret]].concat();
    let (ok, _, err) = run_py("zipkin_send.py", &with, &[]);
    assert!(ok, "zipkin with an ingest token: {err}");

    // The Jaeger query API: read token in, nothing without it.
    let api = format!("http://127.0.0.1:{}", server.api);
    let q = ["--api", api.as_str(), "--trace-id", trace_id.as_str()];
    let ask = |extra: &[&str]| -> Value {
        let args = [&q[..], extra].concat();
        let (ok, out, err) = run_py("jaeger_query.py", &args, &[]);
        assert!(ok, "{err}");
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let v = ask(&["--bearer", &secret(Scope::Read)]);
    assert_eq!(
        (v["status"].as_u64(), v["spans"].as_u64()),
        (Some(200), Some(3)),
        "{v}"
    );
    let services = v["services"].as_array().unwrap();
    assert!(services.iter().any(|s| s == "auth-svc"), "{v}");
    let v = ask(&[]);
    assert_eq!(
        (v["status"].as_u64(), v["spans"].as_u64()),
        (Some(401), Some(0)),
        "{v}"
    );
    assert!(
        v["wwwAuthenticate"].as_str().unwrap().starts_with("Bearer"),
        "{v}"
    );
    let v = ask(&["--bearer", &secret(Scope::Ingest)]);
    assert_eq!(v["status"].as_u64(), Some(403), "{v}");
    assert_eq!(v["servicesStatus"].as_u64(), Some(403), "{v}");
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < Duration::from_secs(15), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_token_file_change_takes_effect_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _, tokens) = start_with_tokens(tmp.path(), &[]);
    let get = |t: &str| call(server.api, "GET", "/api/services", "", Some(t)).status;
    assert_eq!(get("brand-new"), 401);
    let mut text = std::fs::read_to_string(&tokens).unwrap();
    text.push_str(&line("newcomer", Scopes::of(&[Scope::Read]), "brand-new"));
    text.push('\n');
    std::fs::write(&tokens, &text).unwrap();
    wait_for("the new token is taken", || get("brand-new") == 200);
    // A bad version is refused: the tokens in force stay, and the gauge says so.
    std::fs::write(&tokens, format!("{text}broken read not-a-hash\n")).unwrap();
    let refused = || {
        let m = call(server.api, "GET", "/metrics", "", Some("brand-new")).body;
        metric(&m, "faultline_auth_token_file_refused") == 1.0
    };
    wait_for("the bad file is refused", refused);
    assert_eq!(get("brand-new"), 200);
    assert!(
        server
            .log_text()
            .contains("the previous tokens stay in force")
    );
    // A removed token stops working.
    std::fs::write(&tokens, line("only", Scopes::ALL, "only-one")).unwrap();
    wait_for("the removed token is refused", || get("brand-new") == 401);
    assert_eq!(get("only-one"), 200);
}

#[test]
fn a_non_loopback_listener_without_tokens_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let http = format!("0.0.0.0:{}", free_port());
    let out = Command::new(common::BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--http", &http])
        .args(["--otlp-grpc", &format!("127.0.0.1:{}", free_port())])
        .args(["--otlp-http", &format!("127.0.0.1:{}", free_port())])
        .args(["--zipkin", &format!("127.0.0.1:{}", free_port())])
        .args(["--sampling", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the HTTP API listener binds {http}, which is not a loopback address"
        )) && err.contains("allow_unauthenticated = true")
            && err.contains("faultline token new"),
        "{err}"
    );
    assert!(
        !data.join("wal").exists(),
        "nothing opened before the refusal"
    );
    // Said explicitly, it starts open (here the fault proxy's API on every interface).
    let cfg = tmp.path().join("open.toml");
    std::fs::write(&cfg, "[auth]\nallow_unauthenticated = true\n").unwrap();
    let proxy = format!("0.0.0.0:{}", free_port());
    let server = Server::start(
        &data,
        &["--config", cfg.to_str().unwrap(), "--fault-proxy", &proxy],
    );
    assert_eq!(
        call(server.api, "GET", "/api/services", "", None).status,
        200
    );
    assert!(
        server
            .log_text()
            .contains("serving without tokens on a non-loopback address")
    );
}

#[test]
fn the_ui_login_keeps_a_read_token_in_a_strict_http_only_cookie() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _, _) = start_with_tokens(tmp.path(), &[]);
    let port = server.api;
    let origin = format!("http://127.0.0.1:{port}");
    let html = ("accept", "text/html");
    // A browser without a token is sent to the login form, which comes back to the page.
    let a = call_with(port, "GET", "/search?service=a", "", &[html]);
    assert_eq!(a.status, 303);
    assert!(
        a.head
            .contains("location: /login?next=/search%3fservice%3da"),
        "{}",
        a.head
    );
    let a = call_with(port, "GET", "/login?next=/search", "", &[html]);
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("<form class=q id=login method=post"),
        "{}",
        a.body
    );
    let form = ("content-type", "application/x-www-form-urlencoded");
    let post = |body: &str, extra: &[(&str, &str)]| {
        let mut h = vec![form];
        h.extend_from_slice(extra);
        call_with(port, "POST", "/login", body, &h)
    };
    let read = format!("token={}&next=%2Fsearch", secret(Scope::Read));
    let from_here = ("origin", origin.as_str());
    // Wrong token, token without read, another site's form: refused.
    assert_eq!(post("token=nope&next=%2F", &[from_here]).status, 401);
    let ingest = format!("token={}&next=%2F", secret(Scope::Ingest));
    assert_eq!(post(&ingest, &[from_here]).status, 403);
    let evil = post(&read, &[("origin", "http://evil.example")]);
    assert_eq!(evil.status, 403);
    assert!(!evil.head.contains("set-cookie"));
    // The right one: the cookie, and back to the page.
    let ok = post(&read, &[from_here]);
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert!(ok.head.contains("location: /search"), "{}", ok.head);
    let set = format!(
        "set-cookie: faultline_token={}; path=/; httponly; samesite=strict",
        secret(Scope::Read)
    );
    assert!(ok.head.contains(&set), "{}", ok.head);
    assert!(!ok.head.contains("secure"), "plain HTTP: not Secure");
    let behind_tls = post(&read, &[from_here, ("x-forwarded-proto", "https")]);
    assert!(
        behind_tls.head.contains("samesite=strict; secure"),
        "{}",
        behind_tls.head
    );
    let cookie = format!("faultline_token={}", secret(Scope::Read));
    let page = call_with(port, "GET", "/search", "", &[html, ("cookie", &cookie)]);
    assert_eq!(page.status, 200);
    // An admin's cookie drives a control route from faultline's pages only.
    let admin = format!("faultline_token={}", secret(Scope::Admin));
    let replay = |site: &str| {
        let h = [("cookie", admin.as_str()), ("sec-fetch-site", site)];
        call_with(port, "POST", "/api/v1/dlq/replay?all=true", "", &h)
    };
    let cross = replay("cross-site");
    assert_eq!(cross.status, 403);
    assert!(
        cross
            .body
            .contains("cross-site request cannot use the login cookie")
    );
    assert_eq!(replay("same-origin").status, 200);
    // Logging out clears the cookie.
    let out = call_with(
        port,
        "POST",
        "/logout",
        "",
        &[from_here, ("cookie", &cookie)],
    );
    assert_eq!(out.status, 303);
    assert!(
        out.head
            .contains("set-cookie: faultline_token=; path=/; httponly; samesite=strict; max-age=0"),
        "{}",
        out.head
    );
}
