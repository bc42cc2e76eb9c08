//! Every route answers errors through one type: each route of the HTTP port is called with
//! bad input (or a method it does not take), and the answer must have the right status and
//! the body its area's clients expect: Jaeger's `errors` array, api_v3's grpc-gateway
//! object, faultline's native JSON, or a UI page. Unknown paths too.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use common::Server;

/// One HTTP/1.1 exchange: status, headers (lowercase names) and body.
fn call(port: u16, method: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Jaeger,
    V3,
    Native,
    Page,
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Checks the body is `shape`'s error body for `status`; returns its message.
fn check(shape: Shape, status: u16, headers: &[(String, String)], body: &str) -> String {
    let json = || -> Value {
        assert!(
            header(headers, "content-type").is_some_and(|t| t.starts_with("application/json")),
            "{headers:?}"
        );
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    match shape {
        Shape::Jaeger => {
            let v = json();
            assert!(v["data"].is_null(), "{v}");
            assert_eq!(
                v["errors"][0]["code"].as_u64(),
                Some(u64::from(status)),
                "{v}"
            );
            v["errors"][0]["msg"].as_str().unwrap().to_string()
        }
        Shape::V3 => {
            let v = json();
            assert_eq!(
                v["error"]["httpCode"].as_u64(),
                Some(u64::from(status)),
                "{v}"
            );
            assert!(v["error"]["grpcCode"].is_u64(), "{v}");
            v["error"]["message"].as_str().unwrap().to_string()
        }
        Shape::Native => {
            let v = json();
            assert_eq!(v["code"].as_u64(), Some(u64::from(status)), "{v}");
            assert!(v["kind"].is_string(), "{v}");
            v["error"].as_str().unwrap().to_string()
        }
        Shape::Page => {
            assert!(
                header(headers, "content-type").is_some_and(|t| t.starts_with("text/html")),
                "{headers:?}"
            );
            assert!(body.starts_with("<!doctype html>"), "{body}");
            assert!(body.contains("class=err"), "{body}");
            body.to_string()
        }
    }
}

#[test]
fn every_route_answers_bad_input_in_its_areas_shape() {
    use Shape::*;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let unknown = "0123456789abcdef0123456789abcdef";
    // (method, path, status, shape, a word the message must contain)
    let table: &[(&str, String, u16, Shape, &str)] = &[
        // Jaeger v1
        ("POST", "/api/services".into(), 405, Jaeger, ""),
        ("POST", "/api/services/cart/operations".into(), 405, Jaeger, ""),
        ("GET", "/api/operations".into(), 400, Jaeger, "service"),
        ("GET", "/api/operations?service=a&spanKind=sideways".into(), 400, Jaeger, "spanKind"),
        ("GET", "/api/dependencies?endTs=soon".into(), 400, Jaeger, "endTs"),
        ("GET", "/api/traces".into(), 400, Jaeger, "service"),
        ("GET", "/api/traces?service=a&limit=99999".into(), 400, Jaeger, "limit"),
        ("GET", "/api/traces?service=a&minDuration=fast".into(), 400, Jaeger, "minDuration"),
        ("GET", "/api/traces?service=a&start=9&end=1".into(), 400, Jaeger, "start"),
        ("GET", "/api/traces?traceID=xyz".into(), 400, Jaeger, "traceID"),
        ("GET", "/api/traces/xyz".into(), 400, Jaeger, "xyz"),
        ("GET", format!("/api/traces/{unknown}"), 404, Jaeger, "not found"),
        // api_v3
        ("POST", "/api/v3/services".into(), 405, V3, ""),
        ("GET", "/api/v3/operations".into(), 400, V3, "service"),
        ("GET", "/api/v3/traces".into(), 400, V3, "start_time_min"),
        (
            "GET",
            "/api/v3/traces?query.start_time_min=2026-01-01T00:00:00Z&query.start_time_max=2026-01-02T00:00:00Z&query.num_traces=99999".into(),
            400,
            V3,
            "num_traces",
        ),
        ("GET", "/api/v3/traces?query.start_time_min=yesterday&query.start_time_max=now".into(), 400, V3, "RFC 3339"),
        ("GET", "/api/v3/traces/xyz".into(), 400, V3, "trace_id"),
        ("GET", format!("/api/v3/traces/{unknown}"), 404, V3, "not found"),
        // native
        ("GET", "/api/v1/red".into(), 400, Native, "service"),
        ("GET", "/api/v1/red?service=a&step=7".into(), 400, Native, "step"),
        ("GET", "/api/v1/red?service=a&start=x".into(), 400, Native, "start"),
        ("GET", "/api/v1/traces/summaries?sort=sideways".into(), 400, Native, "sort"),
        ("GET", "/api/v1/traces/summaries?errors=maybe".into(), 400, Native, "errors"),
        ("GET", "/api/v1/traces/summaries?limit=99999".into(), 400, Native, "limit"),
        ("GET", "/api/v1/dependencies?start=10&end=5".into(), 400, Native, "start"),
        ("POST", "/api/v1/status".into(), 405, Native, ""),
        // operator routes
        ("POST", "/ready".into(), 405, Native, ""),
        ("POST", "/health".into(), 405, Native, ""),
        ("POST", "/metrics".into(), 405, Native, ""),
        ("GET", "/api/v1/dlq/replay".into(), 405, Native, ""),
        ("POST", "/api/v1/dlq/replay".into(), 400, Native, "all=true"),
        ("POST", "/api/v1/dlq/replay?seq=x".into(), 400, Native, "seq"),
        // UI
        ("GET", "/?range=1s".into(), 400, Page, "range"),
        ("GET", "/service/cart?sample=5".into(), 400, Page, "sample"),
        ("GET", "/service/cart?refresh=often".into(), 400, Page, "refresh"),
        ("GET", "/search?tags=novalue".into(), 400, Page, "key=value"),
        ("GET", "/trace/xyz".into(), 400, Page, "xyz"),
        ("GET", format!("/trace/{unknown}"), 404, Page, unknown),
        ("GET", "/dependencies?range=soon".into(), 400, Page, "range"),
        ("POST", "/".into(), 405, Page, ""),
        // unknown paths, in the shape of their area
        ("GET", "/no/such/page".into(), 404, Page, "/no/such/page"),
        ("GET", "/api/nothing".into(), 404, Jaeger, "/api/nothing"),
        ("GET", "/api/v1/nothing".into(), 404, Native, "/api/v1/nothing"),
        ("GET", "/api/v3/nothing".into(), 404, V3, "/api/v3/nothing"),
    ];
    for (method, path, status, shape, word) in table {
        let (got, headers, body) = call(server.api, method, path);
        assert_eq!(got, *status, "{method} {path}: {body}");
        let msg = check(*shape, got, &headers, &body);
        assert!(
            msg.contains(word),
            "{method} {path}: {word:?} not in {msg:?}"
        );
    }
    // A search form with a bad value keeps the form and says what is wrong.
    let (got, headers, body) = call(server.api, "GET", "/search?minDuration=fast");
    assert_eq!(got, 400);
    assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("text/html")));
    assert!(
        body.contains("<form") && body.contains("minDuration"),
        "{body}"
    );
}
