//! `storage = "clickhouse"` end to end: faultline on a real ClickHouse server answers
//! what it acknowledged through the API; while ClickHouse is away, acknowledged spans
//! wait in the WAL, the status page and the answers say so, and everything arrives once
//! ClickHouse is back; a SIGKILL of faultline loses nothing acknowledged; bad storage
//! settings stop the start with the key named.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, http_get, post_otlp};
use faultline_model::ExportTraceServiceRequest;
use faultline_model::otlp::common::{AnyValue, KeyValue, any_value};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;

/// One request of `traces` traces of 3 spans (a root and two children in another
/// service), fresh ids from `r`; their trace ids in hex.
fn request(r: &mut impl FnMut(u64) -> u64, traces: usize) -> (Vec<u8>, Vec<String>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..KeyValue::default()
    };
    let mut front = Vec::new();
    let mut back = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..traces {
        let tid: Vec<u8> = [r(u64::MAX).to_be_bytes(), (r(u64::MAX) | 1).to_be_bytes()].concat();
        ids.push(tid.iter().map(|b| format!("{b:02x}")).collect());
        let root = (r(u64::MAX) | 1).to_be_bytes().to_vec();
        let start = now - r(5_000_000_000);
        let span = |id: Vec<u8>, parent: Vec<u8>, name: &str, kind: i32, ms: u64| Span {
            trace_id: tid.clone(),
            span_id: id,
            parent_span_id: parent,
            name: name.into(),
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start + ms * 1_000_000,
            attributes: vec![kv("region", "eu-west")],
            ..Span::default()
        };
        front.push(span(root.clone(), vec![], "GET /cart", 2, 40));
        for k in 0..2 {
            let id = (r(u64::MAX) | 1).to_be_bytes().to_vec();
            back.push(span(id, root.clone(), &format!("read {k}"), 2, 10 + r(20)));
        }
    }
    let rs = |service: &str, spans: Vec<Span>| ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", service)],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![rs("cart-web", front), rs("cart-db", back)],
    };
    (req.encode_to_vec(), ids)
}

/// The spans of trace `id` the API answers (0 when it answers none or fails).
fn spans_of(api: u16, id: &str) -> usize {
    match http_get(api, &format!("/api/traces/{id}")) {
        Ok((200, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap();
            v["data"][0]["spans"].as_array().map_or(0, Vec::len)
        }
        _ => 0,
    }
}

fn within(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn clickhouse_part(api: u16) -> Value {
    let (_, body) = http_get(api, "/api/v1/status").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "clickhouse")
        .cloned()
        .unwrap_or_else(|| panic!("no clickhouse part: {v}"))
}

#[test]
fn acknowledged_spans_survive_clickhouse_going_away_and_a_sigkill() {
    let mut ch = faultline_clickhouse::testing::Server::start();
    let mut rand = common::seeded_rand("store clickhouse");
    let mut r = move |n: u64| rand(0, n);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let url = format!("http://127.0.0.1:{}", ch.http);
    let flags = [
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        url.as_str(),
        "--clickhouse-database",
        "fl_test",
    ];
    let mut server = Server::start(&data, &flags);
    let mut ids = Vec::new();
    let send = |server: &Server, r: &mut _, ids: &mut Vec<String>, n: usize| {
        for _ in 0..n {
            let (body, mut new) = request(r, 20);
            assert_eq!(post_otlp(server, body), 200);
            ids.append(&mut new);
        }
    };
    send(&server, &mut r, &mut ids, 10);
    within(30, "first traces not readable", || {
        ids.iter().all(|id| spans_of(server.api, id) == 3)
    });
    assert_eq!(clickhouse_part(server.api)["state"], "ok");
    // The node's name was made once, in the data directory.
    let node = std::fs::read_to_string(data.join("clickhouse-node")).unwrap();
    assert!(node.starts_with("node-"), "{node}");

    // ClickHouse goes away: intake still acknowledges, the status page says why the
    // records wait, and answers fail clearly instead of pretending.
    ch.stop();
    let before = ids.len();
    send(&server, &mut r, &mut ids, 10);
    within(
        30,
        "the status page does not say ClickHouse is away",
        || {
            let part = clickhouse_part(server.api);
            part["state"] == "degraded"
                && part["summary"]
                    .as_str()
                    .unwrap()
                    .contains("wait in the WAL")
        },
    );
    let (status, body) = http_get(server.api, &format!("/api/traces/{}", ids[0])).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ClickHouse"), "{body}");

    // It comes back: everything acknowledged arrives, exactly.
    ch.restart();
    within(
        60,
        "traces acknowledged while ClickHouse was away not readable",
        || ids[before..].iter().all(|id| spans_of(server.api, id) == 3),
    );
    within(30, "the clickhouse part did not turn ok", || {
        clickhouse_part(server.api)["state"] == "ok"
    });

    // SIGKILL while records arrive, then a restart on the same data: nothing lost,
    // nothing doubled (RED counts every span once).
    send(&server, &mut r, &mut ids, 5);
    server.kill9();
    let server = Server::start(&data, &flags);
    send(&server, &mut r, &mut ids, 5);
    within(60, "traces lost across the SIGKILL", || {
        ids.iter().all(|id| spans_of(server.api, id) == 3)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_, body) = http_get(
        server.api,
        &format!(
            "/api/v1/red?service=cart-db&start={}&end={}",
            now - 600,
            now + 60
        ),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let count: u64 = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    assert_eq!(count, 2 * ids.len() as u64, "{body}");
}

#[test]
fn bad_storage_settings_stop_the_start_with_the_key_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (flags, want) in [
        (vec!["--storage", "s3"], "`s3` is not a storage"),
        (
            vec!["--storage", "clickhouse", "--clickhouse-url", "ch:8123"],
            "not an http://",
        ),
        (
            vec!["--storage", "clickhouse", "--node-name", "two words"],
            "node name `two words`",
        ),
    ] {
        let out = std::process::Command::new(common::BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(tmp.path())
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} started");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}
