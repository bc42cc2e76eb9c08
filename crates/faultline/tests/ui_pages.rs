//! The UI's pages over HTTP: a planted cause (one attribute value in 90% of slow traces and
//! 5% of the others) is ranked first on the service page, failing traces are grouped by
//! their exception, and every page answers with the content it should.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use common::{Server, http_get, post_otlp};
use faultline_model::ExportTraceServiceRequest;
use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span, Status, span::Event};

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// 200 traces of `checkout-api`: every tenth is slow (2 s instead of 40 ms); db.pool=exhausted
/// is on 18 of the 20 slow ones and 9 of the 180 others. Nine traces fail: six with a
/// TimeoutError whose message differs only in a number, three with ConnectionRefused.
fn planted(now_ns: u64) -> ExportTraceServiceRequest {
    let mut spans = Vec::new();
    for t in 0..200u32 {
        let mut trace_id = vec![0xab; 16];
        trace_id[12..].copy_from_slice(&t.to_be_bytes());
        let slow = t % 10 == 0;
        let planted = if slow {
            t / 10 < 18
        } else {
            t % 20 == 1 && t < 180
        };
        let start = now_ns - u64::from(200 - t) * 2_000_000_000;
        let dur = if slow {
            2_000_000_000
        } else {
            40_000_000 + u64::from(t) * 10_000
        };
        let root_id = vec![1, 0, 0, 0, t as u8, 0, 0, 1];
        let db_id = vec![2, 0, 0, 0, t as u8, 0, 0, 1];
        let failing = (101..=109).contains(&t);
        let (exc, msg) = if t <= 106 {
            ("TimeoutError", format!("timed out after {} ms", 1000 + t))
        } else {
            (
                "ConnectionRefused",
                "connection refused by 10.0.0.7".to_string(),
            )
        };
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: root_id.clone(),
            name: "POST /checkout".into(),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + dur,
            attributes: vec![
                kv(
                    "region",
                    s(["eu-west", "us-east", "ap-south", "us-west"][t as usize % 4]),
                ),
                kv("cache.hit", Value::BoolValue(t % 3 == 0)),
                kv("request.id", s(&format!("req-{t}"))),
            ],
            status: failing.then(|| Status {
                code: 2,
                message: String::new(),
            }),
            ..Span::default()
        });
        spans.push(Span {
            trace_id,
            span_id: db_id,
            parent_span_id: root_id,
            name: "SELECT orders".into(),
            kind: 3,
            start_time_unix_nano: start + 1_000_000,
            end_time_unix_nano: start + dur - 1_000_000,
            attributes: vec![
                kv("db.pool", s(if planted { "exhausted" } else { "ok" })),
                kv("db.system", s("postgresql")),
            ],
            events: if failing {
                vec![Event {
                    time_unix_nano: start + 2_000_000,
                    name: "exception".into(),
                    attributes: vec![
                        kv("exception.type", s(exc)),
                        kv("exception.message", s(&msg)),
                    ],
                    ..Event::default()
                }]
            } else {
                Vec::new()
            },
            status: failing.then(|| Status {
                code: 2,
                message: msg.clone(),
            }),
            ..Span::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("checkout-api"))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn get(api: u16, path: &str) -> String {
    let (status, body) = http_get(api, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The text of the first element after `marker` that starts with `open`, tags removed.
fn first_after(html: &str, marker: &str, open: &str) -> String {
    let from = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in page"));
    let rest = &html[from..];
    let start = rest
        .find(open)
        .unwrap_or_else(|| panic!("{open} after {marker}"));
    let end = rest[start..]
        .find("</tr>")
        .map_or(rest.len(), |e| start + e);
    let mut text = String::new();
    let mut in_tag = false;
    for c in rest[start..end].chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_service_page_ranks_a_planted_cause_first_and_groups_errors_by_exception() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert_eq!(post_otlp(&server, planted(now).encode_to_vec()), 200);
    let started = Instant::now();
    loop {
        let body = get(
            server.api,
            "/api/v1/traces/summaries?service=checkout-api&limit=1000",
        );
        if body.matches("\"traceId\"").count() == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{body}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let body = get(
        server.api,
        "/api/v1/traces/summaries?service=checkout-api&limit=1000",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: std::collections::HashSet<&str> = v["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 200, "distinct traces");
    let page = get(server.api, "/service/checkout-api?sample=200&range=1h");
    assert!(
        page.contains("a random sample of 200 of the service's traces"),
        "every trace in the random sample: {}",
        &page[page.find("id=samples").unwrap_or(0)..]
    );
    // The slow sample: traces with a span at least the request p90 (about 42 ms): the 20
    // slow ones and some of the fast ones just under it.
    let top = first_after(&page, "id=contrast-slow", "<tr class=finding>");
    assert!(
        top.starts_with("db.pool=exhausted ") && top.ends_with(" 13.5%"),
        "the planted cause ranks first, against 27 of the 200: {top}"
    );
    assert!(
        page.contains(
            "/search?service=checkout-api&tags=%7B%22db.pool%22%3A%22exhausted%22%7D&minDuration="
        ),
        "the finding links to its search"
    );
    // Errors: one group of the six timeouts (numbers masked), one of the three refusals.
    let groups: Vec<&str> = page.split("<details class=error-group>").skip(1).collect();
    assert_eq!(groups.len(), 2, "{page}");
    assert!(
        groups[0].contains("TimeoutError · timed out after # ms") && groups[0].contains("× 6"),
        "{}",
        groups[0]
    );
    assert!(
        groups[1].contains("ConnectionRefused") && groups[1].contains("× 3"),
        "{}",
        groups[1]
    );
    assert!(page.contains("<table id=exemplars>") && page.contains(">slowest<"));
    assert!(page.contains("id=\"histogram\"") && page.contains("id=operations"));
    assert!(
        page.contains("All 200 requests of the service"),
        "the histogram counts the requests (root SERVER spans), not the client spans"
    );
    // Every operation has its figures over the range: 200 root spans, 9 failing.
    let op = first_after(
        &page,
        "id=operations",
        "<tr><td><a href=\"/search?service=checkout-api&operation=POST",
    );
    // 200 spans over the hour (and the seconds of the current minute): 0.055-0.056 /s.
    let rate: f64 = op.split(' ').nth(3).unwrap().parse().unwrap();
    assert!((0.05..=0.06).contains(&rate), "{op}");
    assert!(
        op.starts_with("POST /checkout server ") && op.contains(" 4.5% "),
        "{op}"
    );
    let services_page = get(server.api, "/?range=1h");
    let row = first_after(&services_page, "id=services", "<tr class=service-row ");
    let cols: Vec<&str> = row.split(' ').collect();
    let num = |i: usize| cols[i].parse::<f64>().unwrap();
    // 200 requests (the root spans) and 400 spans over the hour.
    assert_eq!(cols[0], "checkout-api", "{row}");
    assert!((0.0545..=0.0562).contains(&num(1)), "requests /s: {row}");
    assert_eq!(cols[2], "4.5%", "9 of 200 requests failed: {row}");
    assert!((0.109..0.1112).contains(&num(3)), "spans /s: {row}");
    let (status, body) = http_get(server.api, "/service/checkout-api?sample=5").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("sample"), "{body}");

    // The other pages.
    let services = get(server.api, "/?range=1h&sort=p99");
    assert!(
        services.contains("href=\"/service/checkout-api?range=1h\""),
        "{services}"
    );
    let search = get(
        server.api,
        "/search?service=checkout-api&tags=db.pool%3Dexhausted&minDuration=1s&lookback=1h&limit=50",
    );
    assert_eq!(
        search.matches("<tr class=result>").count(),
        18,
        "the slow traces with the planted value"
    );
    assert!(search.contains("id=\"scatter\"") && search.contains("class=tick-y"));
    let id = search
        .split("href=\"/trace/")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let trace = get(server.api, &format!("/trace/{id}"));
    assert_eq!(trace.matches("<tr class=\"span-row").count(), 2, "{trace}");
    assert!(
        trace.contains(&format!("href=\"/api/v3/traces/{id}\"")),
        "raw OTLP JSON link"
    );
    assert!(
        trace.contains("span-row critical"),
        "the critical path is marked"
    );
    let (status, _) = http_get(server.api, &format!("/trace/{}", "ef".repeat(16))).unwrap();
    assert_eq!(status, 404);
    // A span whose parent never arrived is marked in the waterfall.
    let mut orphan = planted(now);
    let spans = &mut orphan.resource_spans[0].scope_spans[0].spans;
    spans.truncate(2);
    for sp in spans.iter_mut() {
        sp.trace_id = vec![0xcd; 16];
    }
    spans[1].parent_span_id = vec![9; 8];
    assert_eq!(post_otlp(&server, orphan.encode_to_vec()), 200);
    let started = Instant::now();
    let page = loop {
        let (status, body) = http_get(server.api, &format!("/trace/{}", "cd".repeat(16))).unwrap();
        if status == 200 {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        page.contains("(parent missing)") && page.contains("1 spans whose parent is missing"),
        "{page}"
    );
    // Nothing acknowledged waits to be indexed (on ClickHouse the writer may still be
    // checkpointing the batch that made the trace readable).
    while get(server.api, "/").contains("not yet indexed") {
        assert!(started.elapsed() < Duration::from_secs(20), "not indexed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deps = get(server.api, "/dependencies?range=1h");
    assert!(deps.contains("id=depmap"));
    assert!(
        !deps.contains("class=partial"),
        "complete data says nothing"
    );
}

#[test]
fn pages_say_plainly_when_a_block_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, &["--block-max-spans", "100"]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert_eq!(post_otlp(&server, planted(now).encode_to_vec()), 200);
    let started = Instant::now();
    while common::metric(&server.metrics(), "faultline_store_blocks") < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a block sealed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let page = get(server.api, "/?range=1h");
    assert!(!page.contains("id=partial"), "complete before the damage");
    let status: serde_json::Value =
        serde_json::from_str(&get(server.api, "/api/v1/status")).unwrap();
    assert_eq!(status["state"], "ok", "{status}");
    let names: Vec<&str> = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "wal",
            "disk",
            "indexing",
            "backlog",
            "sealing",
            "store",
            "memory",
            "lanes",
            "dead letters",
            "sampling policy"
        ]
    );
    server.stop();
    // Damage one block's trace-id index: it is quarantined at the next start.
    let tidx = std::fs::read_dir(data.join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "tidx"))
        .unwrap();
    std::fs::write(&tidx, b"not an index").unwrap();
    let server = Server::start(&data, &[]);
    for path in [
        "/?range=1h",
        "/service/checkout-api?range=1h",
        "/search?service=checkout-api&lookback=1h",
        "/dependencies?range=1h",
    ] {
        let page = get(server.api, path);
        let banner = page
            .split("<div class=partial id=partial>")
            .nth(1)
            .unwrap_or_else(|| panic!("{path} has the partial banner: {page}"));
        assert!(
            banner.starts_with("<b>Partial data.</b>") && banner.contains("quarantined"),
            "{path}: {banner}"
        );
    }
    // The status says which part is degraded, why, and what to do.
    let status: serde_json::Value =
        serde_json::from_str(&get(server.api, "/api/v1/status")).unwrap();
    assert_eq!(status["state"], "degraded", "{status}");
    let store = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "store")
        .unwrap();
    assert_eq!(store["state"], "degraded");
    assert!(
        store["action"]
            .as_str()
            .unwrap()
            .contains("blocks/quarantine"),
        "{store}"
    );
    assert!(
        store["details"]["quarantined"][0]
            .as_str()
            .unwrap()
            .contains("quarantined")
    );
    let page = get(server.api, "/status");
    let row = first_after(
        &page,
        "id=status",
        "<tr class=\"component state-degraded\" data-name=\"store\">",
    );
    assert!(
        row.starts_with("store degraded 1 unreadable files quarantined"),
        "{row}"
    );
    assert!(row.contains("inspect DATA_DIR/blocks/quarantine"), "{row}");
}

/// One request to `frontend` (a SERVER root, or with `root_kind` another kind) calling
/// `api` (CLIENT in frontend, SERVER and an INTERNAL child in api); `failing` marks the
/// root and the api server span as errors.
fn request(n: u32, now_ns: u64, root_kind: i32, failing: bool) -> Vec<ResourceSpans> {
    let mut trace_id = vec![0xcd; 16];
    trace_id[12..].copy_from_slice(&n.to_be_bytes());
    let start = now_ns - 120_000_000_000 + u64::from(n) * 100_000_000;
    let id = |k: u8| vec![k, 0, 0, 0, (n >> 8) as u8, n as u8, 0, 1];
    let status = failing.then(|| Status {
        code: 2,
        message: "boom".into(),
    });
    let span = |k: u8, parent: Option<u8>, kind: i32, name: &str, failing: bool| Span {
        trace_id: trace_id.clone(),
        span_id: id(k),
        parent_span_id: parent.map(id).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: start + u64::from(k) * 1_000_000,
        end_time_unix_nano: start + 50_000_000 - u64::from(k) * 1_000_000,
        status: if failing { status.clone() } else { None },
        ..Span::default()
    };
    let rs = |service: &str, spans: Vec<Span>| ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", s(service))],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    };
    vec![
        rs(
            "frontend",
            vec![
                span(1, None, root_kind, "GET /checkout", failing),
                span(2, Some(1), 3, "POST /api", false),
            ],
        ),
        rs(
            "api",
            vec![
                Span {
                    // An exception 2 ms into the span, when it fails.
                    events: if failing {
                        vec![Event {
                            time_unix_nano: start + 5_000_000,
                            name: "exception".into(),
                            ..Event::default()
                        }]
                    } else {
                        Vec::new()
                    },
                    ..span(3, Some(2), 2, "POST /api", failing)
                },
                span(4, Some(3), 1, "validate", false),
            ],
        ),
    ]
}

#[test]
fn request_rates_count_entry_spans_and_match_the_requests_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("data"), &[]);
    let now = common::now_ns();
    // 300 requests over the last two minutes, 1 in 20 failing; every third frontend root
    // is INTERNAL (a root counts as a request whatever its kind).
    let (sent, failed) = (300u32, 15u64);
    for n in 0..sent {
        let kind = if n % 3 == 0 { 1 } else { 2 };
        let req = ExportTraceServiceRequest {
            resource_spans: request(n, now, kind, n % 20 == 7),
        };
        assert_eq!(post_otlp(&server, req.encode_to_vec()), 200);
    }
    // Indexed: the services page no longer says records are waiting.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(server.api, "/").contains("not yet indexed") {
        assert!(Instant::now() < deadline, "not indexed after 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both services: 300 requests (frontend's roots; api's SERVER spans), though frontend
    // sent 600 spans and api 600.
    for svc in ["frontend", "api"] {
        let v: serde_json::Value = serde_json::from_str(&get(
            server.api,
            &format!(
                "/api/v1/red?service={svc}&start={}",
                now / 1_000_000_000 - 600
            ),
        ))
        .unwrap();
        let sum = |k: &str| -> u64 {
            v["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[k].as_u64().unwrap())
                .sum()
        };
        assert_eq!(sum("requests"), u64::from(sent), "{svc}: {v}");
        assert_eq!(sum("requestErrors"), failed, "{svc}");
        assert_eq!(sum("count"), 2 * u64::from(sent), "{svc}: spans apart");
        for p in v["points"].as_array().unwrap() {
            let (secs, req) = (
                p["seconds"].as_u64().unwrap(),
                p["requests"].as_u64().unwrap(),
            );
            assert!((1..=60).contains(&secs), "{p}");
            let rate = p["requestsPerSecond"].as_f64().unwrap();
            assert!((rate - req as f64 / secs as f64).abs() < 1e-9, "{p}");
        }
    }
    // The services page says the same: requests and failed requests exactly, the error
    // rate of requests (5.0%), not of spans.
    let page = get(server.api, "/?range=15m");
    for svc in ["frontend", "api"] {
        let row = page
            .split("<tr class=service-row ")
            .find(|r| r.contains(&format!(">{svc}</a>")))
            .unwrap();
        assert!(
            row.starts_with(&format!(
                "data-requests={sent} data-request-errors={failed}>"
            )),
            "{row}"
        );
        assert!(row.contains(">5.0%<"), "{row}");
    }
    // No dead ends: an unknown service is a 404 that says so and suggests the near ones.
    let (status, body) = http_get(server.api, "/service/fronten").unwrap();
    assert_eq!(status, 404);
    assert!(
        body.contains("no service named") && body.contains("did you mean frontend"),
        "{body}"
    );
    // The services page: each service's charts over time have axes too.
    let page = get(server.api, "/?range=15m");
    assert!(page.contains("id=\"requests-frontend\"") && page.contains("id=\"p99-frontend\""));
    let small = page.split("id=\"requests-frontend\">").nth(1).unwrap();
    let small = small.split("</figure>").next().unwrap();
    assert!(
        small.contains(">0/s</text>") && small.contains("class=tick-x"),
        "{small}"
    );
    // The service page's request chart: the value axis from 0 to a nice top at or above
    // the busiest minute's rate, the time axis over the points, a point per minute.
    let page = get(server.api, "/service/frontend?range=15m");
    let svg = page
        .split("id=\"chart-requests\">")
        .nth(1)
        .unwrap()
        .split("</figure>")
        .next()
        .unwrap();
    let attr = |k: &str| -> f64 {
        svg.split(&format!("{k}="))
            .nth(1)
            .unwrap()
            .split([' ', '>'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let top = attr("data-y-max");
    // 279-300 requests in one minute (or two): at most 5 /s, at least 2.3.
    assert!((2.3..=10.0).contains(&top), "y max {top}: {svg}");
    assert!(svg.contains(">0/s</text>"), "{svg}");
    assert!(
        attr("data-x-max") - attr("data-x-min") >= 840.0,
        "15 minutes of points: {svg}"
    );
    assert!(svg.matches("class=tick-x").count() >= 2, "{svg}");
    // A failing trace: its critical path keeps its own mark on failing spans, span details
    // name the parent, and events show their time within the span; plurals are right.
    let mut id = [0xcdu8; 16];
    id[12..].copy_from_slice(&7u32.to_be_bytes());
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let page = get(server.api, &format!("/trace/{id}"));
    assert!(
        page.contains("4 spans · 2 services") && page.contains("· 2 errors"),
        "{page}"
    );
    assert!(
        page.contains("class=\"span-row critical errspan\""),
        "{page}"
    );
    assert!(page.contains(".wf .critical.errspan .span{background:repeating-linear-gradient"));
    assert!(page.contains("parent none (a root)"), "{page}");
    assert!(page.contains("parent 0200000000070001"), "{page}");
    assert!(page.contains("Event exception at +2.0 ms"), "{page}");
    // The time ruler: offsets from 0 up to the trace's 48 ms, 10 ms apart.
    let ruler = page
        .split("id=ruler>")
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    for label in [">0<", ">10.0 ms<", ">40.0 ms<"] {
        assert!(ruler.contains(label), "{label} in {ruler}");
    }
    assert!(
        !ruler.contains(">50.0 ms<"),
        "no tick past the trace's end: {ruler}"
    );
    assert!(
        page.contains("title=\"starts at +0 µs · lasts 48.0 ms\""),
        "{page}"
    );
    // Two traces compared: a failing request (an exception, same shape) against an INTERNAL
    // root one (another root path), path by path.
    let other = {
        let mut x = [0xcdu8; 16];
        x[12..].copy_from_slice(&9u32.to_be_bytes());
        x.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let cmp = get(server.api, &format!("/compare?t={id}&t={other}"));
    assert!(
        cmp.contains("id=compare-traces") && cmp.contains("id=compare>"),
        "{cmp}"
    );
    // Request 9's root is INTERNAL, 7's SERVER: the same names, so the same paths; the
    // failing one differs in errors only.
    assert!(cmp.matches("<tr class=\"path ").count() == 4, "{cmp}");
    assert!(
        cmp.contains("<td class=num>1 / 0</td>"),
        "errors A / B: {cmp}"
    );
    let (status, body) = http_get(server.api, &format!("/compare?t={id}")).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("exactly two"), "{body}");
    let (status, body) = http_get(
        server.api,
        &format!("/compare?t={id}&t=0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("0123456789abcdef0123456789abcdef"), "{body}");
    // Auto-refresh no faster than every 5 s.
    let page = get(server.api, "/?refresh=1");
    assert!(page.contains("http-equiv=refresh content=\"5\""), "{page}");
    server.stop();
}

/// The text of `html` with tags removed and whitespace collapsed.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Five services traced by the real Python SDK (tests/clients/otel_scenario.py): each has
/// its own slow attribute value; frontend raises ValueError itself and fails when auth
/// (TokenExpiredError) or payment (CardDeclinedError) does. Each service page must name
/// its own slow attribute first and no other service's, its own errors (frontend's with
/// the callee that caused them) with the counts sent, and the services page the requests
/// and failing requests sent, exactly.
#[test]
fn each_service_page_names_its_own_slow_attribute_and_errors_on_sdk_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 10_000;
    let out = std::process::Command::new(common::python())
        .arg(common::client_script("otel_scenario.py"))
        .args(["--endpoint", &server.http_url()])
        .args(["--requests", "400", "--seed", &seed.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spans = sent["spans"].as_u64().unwrap();
    let started = Instant::now();
    loop {
        let m = server.metrics();
        // Stored, and (on ClickHouse too) nothing acknowledged is waiting to be indexed.
        if common::metric(&m, "faultline_store_head_spans")
            + common::metric(&m, "faultline_store_block_spans")
            >= spans as f64
            && !get(server.api, "/").contains("not yet indexed")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "seed {seed}: {m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let services = sent["services"].as_object().unwrap();
    let planted: Vec<&str> = services
        .values()
        .map(|s| s["slow"].as_str().unwrap())
        .collect();
    let overview = get(server.api, "/?range=1h");
    for (name, s) in services {
        let ctx = format!("seed {seed}, service {name}");
        // The services page: requests and failing requests sent, exactly.
        let row = overview
            .split("<tr class=service-row ")
            .find(|r| r.contains(&format!(">{name}</a>")))
            .unwrap_or_else(|| panic!("{ctx}: no row"));
        let (requests, errors) = (
            s["requests"].as_u64().unwrap(),
            s["errors"].as_u64().unwrap(),
        );
        assert!(
            row.starts_with(&format!(
                "data-requests={requests} data-request-errors={errors}>"
            )),
            "{ctx}: {row}"
        );
        let cols: Vec<String> = row
            .split("<td")
            .skip(1)
            .map(|c| text_of(&format!("<td{c}")))
            .collect();
        let range_s = 3600.0;
        let rate: f64 = cols[1].parse().unwrap();
        // The hour and the seconds of the current minute: within 1.7%.
        assert!(
            rate <= requests as f64 / range_s + 0.0005
                && rate >= requests as f64 / (range_s + 60.0) - 0.0005,
            "{ctx}: {} requests /s",
            cols[1]
        );
        assert_eq!(
            cols[2],
            format!("{:.1}%", errors as f64 * 100.0 / requests as f64),
            "{ctx}: error rate"
        );

        let page = get(server.api, &format!("/service/{name}?range=1h&sample=300"));
        assert!(
            page.contains(&format!("All {requests} requests of the service")),
            "{ctx}: the latency distribution is of its requests"
        );
        // Its own slow attribute first, and no other service's.
        let slow = page
            .split("id=contrast-slow>")
            .nth(1)
            .and_then(|p| p.split("</details>").next())
            .unwrap();
        let first = first_after(slow, "<table>", "<tr class=finding>");
        let want = s["slow"].as_str().unwrap();
        assert!(first.starts_with(&format!("{want} ")), "{ctx}: {first}");
        for other in planted.iter().filter(|p| **p != want) {
            assert!(
                !page.contains(&format!(">{other}<")),
                "{ctx}: shows {other}"
            );
        }
        // Its own errors: every exception raised in it, and for frontend the callees'.
        let groups: Vec<String> = page
            .split("<details class=error-group>")
            .skip(1)
            .map(|g| text_of(g.split("</summary>").next().unwrap()))
            .collect();
        let mut want_groups: Vec<(String, u64)> = Vec::new();
        for (exc, n) in s["own_exceptions"].as_object().unwrap() {
            want_groups.push((exc.clone(), n.as_u64().unwrap()));
        }
        for (cause, n) in s["caused_by"].as_object().unwrap() {
            want_groups.push((format!("caused by {cause}"), n.as_u64().unwrap()));
        }
        assert_eq!(groups.len(), want_groups.len(), "{ctx}: {groups:#?}");
        for (what, n) in &want_groups {
            assert!(
                groups
                    .iter()
                    .any(|g| g.contains(what.as_str()) && g.contains(&format!("× {n} "))),
                "{ctx}: no group of {n} for {what}: {groups:#?}"
            );
        }
        for exc in ["ValueError", "TokenExpiredError", "CardDeclinedError"] {
            let own = s["own_exceptions"].get(exc).is_some();
            let caused = s["caused_by"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k.ends_with(exc));
            assert_eq!(
                groups.iter().any(|g| g.contains(exc)),
                own || caused,
                "{ctx}: {exc} in {groups:#?}"
            );
        }
    }
}

/// The status page: a lane per part in the health timeline (sampled from start), the
/// history as JSON, and auto-refresh no faster than every 5 s.
#[test]
fn the_status_page_shows_each_parts_health_over_time() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let started = Instant::now();
    let v: serde_json::Value = loop {
        let v: serde_json::Value =
            serde_json::from_str(&get(server.api, "/api/v1/status/history?range=1h")).unwrap();
        if !v["parts"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["everySeconds"], 15);
    assert_eq!(
        v["to"].as_u64().unwrap() - v["from"].as_u64().unwrap(),
        3600
    );
    let parts = v["parts"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"wal") && names.contains(&"store"),
        "{names:?}"
    );
    for p in parts {
        let run = &p["runs"][0];
        assert!(
            ["ok", "degraded", "failed"].contains(&run["state"].as_str().unwrap()),
            "{p}"
        );
        assert!(
            run["from"].as_u64().unwrap() >= v["from"].as_u64().unwrap(),
            "{p}"
        );
    }
    let page = get(server.api, "/status?refresh=1");
    assert!(
        page.contains("<meta http-equiv=refresh content=\"5\">"),
        "no faster than 5 s"
    );
    assert_eq!(
        page.matches("<text class=lane").count(),
        names.len(),
        "a lane per part"
    );
    assert!(!get(server.api, "/status?refresh=0").contains("http-equiv=refresh"));
    let (status, body) = http_get(server.api, "/api/v1/status/history?range=48h").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("24 hours"), "{body}");
}
