//! `storage = "clickhouse"` end to end: faultline on a real ClickHouse server answers
//! what it acknowledged through the API; while ClickHouse is away, acknowledged spans
//! wait in the WAL, the status page says so and answers come from the node's own spans,
//! marked partial, and everything arrives once ClickHouse is back; a SIGKILL of
//! faultline loses nothing acknowledged; two nodes over a two-shard cluster, under load
//! through both, answer every acknowledged trace from either node across ten SIGKILLs
//! and a minute without ClickHouse; an alert rule on one node judges the spans another
//! node received; traces one node's tail sampling dropped answer as dropped on every
//! node; bad storage settings stop the start with the key named.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ports, Server, http_get, post_otlp};
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
    // Reads answer from this node's own spans, marked partial.
    let (status, body) = http_get(server.api, &format!("/api/traces/{}", ids[0])).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["data"][0]["spans"].as_array().map(Vec::len),
        Some(3),
        "{body}"
    );
    let reasons = v["partial"]["reasons"].to_string();
    assert!(reasons.contains("ClickHouse cannot be read"), "{body}");

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

/// POSTs an OTLP/HTTP protobuf body to port `port`; the status, or `None` when the
/// exchange failed (the node down or killed mid-request).
fn post_raw(port: u16, body: &[u8]) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    s.write_all(body).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Requests of 20 traces sent to one node until stopped, about 15 a second: the trace
/// ids of the acknowledged ones, and how many traces were sent at all.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    acked: Arc<Mutex<Vec<String>>>,
    sent: Arc<AtomicUsize>,
}

impl Load {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            acked: Arc::default(),
            sent: Arc::default(),
        }
    }

    fn through(&mut self, port: u16) {
        let (stop, acked, sent) = (self.stop.clone(), self.acked.clone(), self.sent.clone());
        let mut rand = common::seeded_rand("load through one node");
        self.threads.push(std::thread::spawn(move || {
            let mut r = move |n: u64| rand(0, n);
            while !stop.load(Ordering::Relaxed) {
                let (body, ids) = request(&mut r, 20);
                sent.fetch_add(ids.len(), Ordering::Relaxed);
                if post_raw(port, &body) == Some(200) {
                    acked.lock().unwrap().extend(ids);
                }
                std::thread::sleep(Duration::from_millis(40 + r(40)));
            }
        }));
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.stop.store(false, Ordering::Relaxed);
    }
}

/// The ids of `ids` that node `api` does not answer with exactly 3 spans (read 100 at a
/// time), and the partial reasons of the answers.
fn unreadable(api: u16, ids: &[String]) -> (Vec<String>, Vec<String>) {
    let mut missing = Vec::new();
    let mut reasons = Vec::new();
    for chunk in ids.chunks(100) {
        let query: Vec<String> = chunk.iter().map(|id| format!("traceID={id}")).collect();
        let got = match http_get(api, &format!("/api/traces?{}", query.join("&"))) {
            Ok((200, body)) => serde_json::from_str::<Value>(&body).unwrap(),
            _ => Value::Null,
        };
        if let Some(r) = got["partial"]["reasons"].as_array() {
            reasons.extend(r.iter().filter_map(|r| r.as_str().map(String::from)));
        }
        let whole: std::collections::HashSet<&str> = got["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["spans"].as_array().map(Vec::len) == Some(3))
            .filter_map(|t| t["traceID"].as_str())
            .collect();
        missing.extend(
            chunk
                .iter()
                .filter(|id| !whole.contains(id.as_str()))
                .cloned(),
        );
    }
    (missing, reasons)
}

/// Waits up to `secs` until every node of `apis` answers every trace of `ids` whole.
fn all_readable(secs: u64, apis: &[u16], ids: &[String], what: &str) {
    let started = Instant::now();
    for &api in apis {
        let mut left = ids.to_vec();
        loop {
            left = unreadable(api, &left).0;
            if left.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(secs),
                "{what}: {} of {} traces not readable from the node on port {api}, as {:?}",
                left.len(),
                ids.len(),
                &left[..left.len().min(3)]
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The cart-db spans counted by node `api`'s RED over the last hour.
fn red_count(api: u16) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_, body) = http_get(
        api,
        &format!(
            "/api/v1/red?service=cart-db&start={}&end={}",
            now - 3600,
            now + 60
        ),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["points"]
        .as_array()
        .unwrap_or_else(|| panic!("no points: {body}"))
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn two_nodes_over_two_shards_lose_nothing_acknowledged() {
    let mut shards = faultline_clickhouse::testing::cluster("faultline", 2);
    let tmp = tempfile::tempdir().unwrap();
    let mut rand = common::seeded_rand("clickhouse cluster");
    let flags: Vec<Vec<String>> = (0..2)
        .map(|k| {
            [
                "--storage",
                "clickhouse",
                "--clickhouse-url",
                &format!("http://127.0.0.1:{}", shards[k].http),
                "--clickhouse-database",
                "fl_cluster",
                "--clickhouse-cluster",
                "faultline",
                "--node-name",
                &format!("node-{k}"),
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let data: Vec<_> = (0..2)
        .map(|k| tmp.path().join(format!("node-{k}")))
        .collect();
    let ports = |s: &Server| Ports {
        grpc: s.grpc,
        http: s.http,
        zipkin: s.zipkin,
        api: s.api,
        sampling: s.sampling,
    };
    let start = |k: usize, p: Option<Ports>| {
        let f: Vec<&str> = flags[k].iter().map(String::as_str).collect();
        match p {
            Some(p) => Server::start_on(&data[k], p, &f),
            None => Server::start(&data[k], &f),
        }
    };
    // The first node starts while the second shard has no tables yet: its writer waits.
    let mut nodes = vec![start(0, None), start(1, None)];
    let apis: Vec<u16> = nodes.iter().map(|n| n.api).collect();
    let mut load = Load::new();
    for n in &nodes {
        load.through(n.http);
    }

    // Ten SIGKILLs under load, each node in turn, each restarted on its data.
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(300 + rand(0, 1200)));
        let k = i % 2;
        let p = ports(&nodes[k]);
        nodes[k].kill9();
        nodes[k] = start(k, Some(p));
    }
    std::thread::sleep(Duration::from_secs(1));
    load.stop();
    let acked = load.acked();
    assert!(
        acked.len() > 500,
        "only {} traces acknowledged",
        acked.len()
    );
    all_readable(120, &apis, &acked, "after ten SIGKILLs");

    // ClickHouse away for a minute under load through both nodes.
    for n in &nodes {
        load.through(n.http);
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = load.acked().len();
    for s in &mut shards {
        s.stop();
    }
    let away = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let during: Vec<String> = load.acked()[before..].to_vec();
    assert!(
        !during.is_empty(),
        "nothing acknowledged while ClickHouse is away"
    );
    // Each node answers what it received itself, marked partial.
    let (missing, reasons) = unreadable(apis[0], &during);
    assert!(missing.len() < during.len(), "node 0 answers none of them");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("ClickHouse cannot be read")),
        "{reasons:?}"
    );
    let (status, body) = http_get(apis[1], "/api/services").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ClickHouse cannot be read"), "{body}");
    assert!(body.contains("cart-db"), "{body}");
    for &api in &apis {
        let part = clickhouse_part(api);
        assert_eq!(part["state"], "degraded", "{part}");
    }
    std::thread::sleep(Duration::from_secs(60).saturating_sub(away.elapsed()));
    for s in &mut shards {
        s.restart();
    }
    std::thread::sleep(Duration::from_secs(2));
    load.stop();
    let acked = load.acked();
    all_readable(180, &apis, &acked, "after ClickHouse came back");
    for &api in &apis {
        within(30, "the clickhouse part did not turn ok", || {
            clickhouse_part(api)["state"] == "ok"
        });
    }
    // Every span counted once: at least the acknowledged, at most the sent.
    let counts: Vec<u64> = apis.iter().map(|&api| red_count(api)).collect();
    let sent = load.sent.load(Ordering::Relaxed) as u64;
    assert_eq!(counts[0], counts[1], "the nodes count differently");
    assert!(
        counts[0] >= 2 * acked.len() as u64 && counts[0] <= 2 * sent,
        "RED counts {} cart-db spans; acknowledged {}, sent {}",
        counts[0],
        2 * acked.len(),
        2 * sent
    );
    // Exactly: the cart-db spans ClickHouse holds, each once (a span or a rollup part
    // inserted again across the SIGKILLs must not count twice), summed over the shards.
    let stored: u64 = shards
        .iter()
        .map(|s| {
            faultline_clickhouse::Client::new(s.config("fl_cluster"))
                .unwrap()
                .query_text("SELECT count() FROM spans_local FINAL WHERE service = 'cart-db'")
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(counts[0], stored, "RED against the spans stored");
}

/// faultline `node-K` on database `db` of the ClickHouse server on port `ch`, its data in
/// `dir/node-K`, with the configuration file `config`; on `ports` when given (a restart).
fn node(
    ch: u16,
    db: &str,
    dir: &std::path::Path,
    k: usize,
    config: &std::path::Path,
    ports: Option<Ports>,
) -> Server {
    let (url, name) = (format!("http://127.0.0.1:{ch}"), format!("node-{k}"));
    let flags = [
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        url.as_str(),
        "--clickhouse-database",
        db,
        "--node-name",
        name.as_str(),
        "--config",
        config.to_str().unwrap(),
    ];
    match ports {
        Some(p) => Server::start_on(&dir.join(&name), p, &flags),
        None => Server::start(&dir.join(&name), &flags),
    }
}

/// `n` spans of checkout `POST /checkout` in the minute starting at `minute_ns`, each
/// about `ms` long, fresh trace ids from `r`.
fn checkout_minute(r: &mut impl FnMut(u64) -> u64, minute_ns: u64, ms: u64) -> Vec<Span> {
    (0..30u64)
        .map(|i| {
            let start = minute_ns + i * 1_900_000_000 + r(1_000_000);
            Span {
                trace_id: [r(u64::MAX).to_be_bytes(), (r(u64::MAX) | 1).to_be_bytes()].concat(),
                span_id: (r(u64::MAX) | 1).to_be_bytes().to_vec(),
                name: "POST /checkout".into(),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + ms * 1_000_000 + r(50_000_000),
                ..Span::default()
            }
        })
        .collect()
}

#[test]
fn an_alert_on_one_node_judges_the_spans_another_node_received() {
    let mut ch = faultline_clickhouse::testing::Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut rand = common::seeded_rand("clickhouse alerts");
    let mut r = move |n: u64| rand(0, n);
    let config = tmp.path().join("faultline.toml");
    std::fs::write(
        &config,
        "[[alerts]]\nname = \"checkout-slow\"\nservice = \"checkout\"\n\
         operation = \"POST /checkout\"\np99_above_ms = 500\nfor_minutes = 2\n",
    )
    .unwrap();
    let nodes: Vec<Server> = (0..2)
        .map(|k| node(ch.http, "fl_alerts", tmp.path(), k, &config, None))
        .collect();
    let last = common::last_slow_minute();
    let mut spans = Vec::new();
    for m in last - 3..=last {
        spans.extend(checkout_minute(&mut r, m * 60_000_000_000, 1200));
    }
    // Only the second node receives them.
    let body = common::otlp_request("checkout", spans);
    assert_eq!(post_otlp(&nodes[1], body), 200);
    let incident = |api: u16| -> Option<Value> {
        let (_, body) = http_get(api, "/api/v1/alerts").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        (v["alerts"][0]["firing"] == true).then(|| v["alerts"][0]["incidents"][0].clone())
    };
    within(40, "the first node's rule never fired", || {
        incident(nodes[0].api).is_some()
    });
    within(10, "the second node's rule never fired", || {
        incident(nodes[1].api).is_some()
    });
    // Both judged the same minutes: the same incident start, so their notifications
    // carry the same key (`alert/checkout-slow/START/firing`) for receivers to merge.
    let (a, b) = (incident(nodes[0].api), incident(nodes[1].api));
    assert_eq!(
        a.as_ref().map(|i| &i["start"]),
        b.as_ref().map(|i| &i["start"])
    );
    let msg = a.unwrap()["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("p99 of checkout POST /checkout above 500 ms for 2 minutes"),
        "{msg}"
    );
    ch.stop();
}

/// Trace `id` as node `api` answers it: `Some(spans)`, or `None` when it answers that
/// tail sampling dropped it (anything else fails the test).
fn kept_or_dropped(api: u16, id: &str) -> Option<usize> {
    let (status, body) = http_get(api, &format!("/api/traces/{id}")).unwrap();
    match status {
        200 => Some(spans_of(api, id)),
        404 if body.contains("tail sampling dropped it") => None,
        _ => panic!("trace {id} answered {status}: {body}"),
    }
}

#[test]
fn traces_one_node_dropped_by_tail_sampling_are_dropped_on_every_node() {
    let mut ch = faultline_clickhouse::testing::Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut rand = common::seeded_rand("clickhouse tail sampling");
    let mut r = move |n: u64| rand(0, n);
    let config = tmp.path().join("faultline.toml");
    std::fs::write(
        &config,
        "[store]\nblock_max_age_secs = 1\n\n[tail_sampling]\nenabled = true\n\
         wait_secs = 1\nrest_traces_per_second = 2.0\n",
    )
    .unwrap();
    let node = |k, ports| node(ch.http, "fl_tail", tmp.path(), k, &config, ports);
    let (first, mut second) = (node(0, None), node(1, None));
    // Traces of 3 spans, none failing or slow: about 2 per second of each block's time
    // range are kept, the rest dropped. Only the second node receives them.
    let mut ids = Vec::new();
    for _ in 0..10 {
        let (body, mut new) = request(&mut r, 20);
        assert_eq!(post_otlp(&second, body), 200);
        ids.append(&mut new);
    }
    within(60, "the second node never decided every trace", || {
        let (_, body) = http_get(second.api, "/api/v1/tail-sampling").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let t = &v["totals"];
        let decided: u64 = ["keptError", "keptSlow", "keptRate", "dropped"]
            .iter()
            .map(|k| t[*k]["traces"].as_u64().unwrap_or(0))
            .sum();
        v["blocksWaiting"] == 0 && decided >= ids.len() as u64
    });
    let decided: Vec<Option<usize>> = ids
        .iter()
        .map(|id| kept_or_dropped(second.api, id))
        .collect();
    let dropped = decided.iter().filter(|d| d.is_none()).count();
    assert!(
        dropped > ids.len() / 2 && dropped < ids.len(),
        "{dropped} of {} dropped",
        ids.len()
    );
    // The node that received none of them answers the same, once the decisions are sent
    // (every second), and its search returns the kept traces only.
    let same = |api: u16| {
        ids.iter()
            .zip(&decided)
            .all(|(id, d)| kept_or_dropped(api, id) == d.map(|_| 3))
    };
    within(10, "the other node does not answer the decisions", || {
        same(first.api)
    });
    let (status, body) = http_get(
        first.api,
        "/api/traces?service=cart-web&limit=1000&lookback=1h",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut found: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap().to_string())
        .collect();
    found.sort();
    let mut kept: Vec<String> = ids
        .iter()
        .zip(&decided)
        .filter(|(_, d)| d.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    kept.sort();
    assert_eq!(found, kept, "search on the other node");
    // A SIGKILL and a restart of the deciding node send its decisions again: nothing
    // changes, on either node.
    second.kill9();
    let ports = Ports {
        grpc: second.grpc,
        http: second.http,
        zipkin: second.zipkin,
        api: second.api,
        sampling: second.sampling,
    };
    let second = node(1, Some(ports));
    std::thread::sleep(Duration::from_secs(2));
    assert!(same(second.api), "the deciding node after a restart");
    assert!(same(first.api), "the other node after the restart");
    ch.stop();
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
