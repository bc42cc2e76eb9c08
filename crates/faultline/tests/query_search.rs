//! Trace search over spans sent by the Python OpenTelemetry SDK: Jaeger's `/api/traces`
//! by service, operation, tag and duration, the native `/api/v1/traces/summaries`, and
//! Jaeger's api_v3 answering in OTLP JSON; from the head and from sealed blocks.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Server, http_get};

fn send(server: &Server, service: &str, marker: &str) -> String {
    common::send_sdk_trace(server, "grpc", service, marker)
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn get_json(api: u16, path: &str) -> (u16, Value, String) {
    let (status, body) = http_get(api, path).unwrap();
    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, v, body)
}

/// Trace ids a Jaeger search returns.
fn search_ids(api: u16, query: &str) -> Vec<String> {
    let (status, v, body) = get_json(api, &format!("/api/traces?{query}"));
    assert_eq!(status, 200, "{query}: {body}");
    assert_eq!(v["errors"], Value::Null, "{body}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap().to_string())
        .collect()
}

fn wait_searchable(api: u16, service: &str, id: &str) {
    let started = Instant::now();
    while !search_ids(api, &format!("service={service}")).contains(&id.to_string()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{id} searchable"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sdk_traces_are_found_by_service_operation_tag_and_duration_in_v1_summaries_and_v3() {
    let tmp = tempfile::tempdir().unwrap();
    // Blocks of 3 spans: the first trace is sealed into a block before the second arrives.
    let server = Server::start(&tmp.path().join("data"), &["--block-max-spans", "3"]);
    let a = send(&server, "search-a", "ma");
    wait_searchable(server.api, "search-a", &a);
    let started = Instant::now();
    while common::metric(&server.metrics(), "faultline_store_blocks") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "block sealed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = send(&server, "search-a", "mb");
    let c = send(&server, "search-c", "mc");
    wait_searchable(server.api, "search-a", &b);
    wait_searchable(server.api, "search-c", &c);
    let api = server.api;

    // Service alone: newest first.
    assert_eq!(
        search_ids(api, "service=search-a"),
        vec![b.clone(), a.clone()]
    );
    assert_eq!(search_ids(api, "service=search-c"), vec![c.clone()]);
    assert_eq!(search_ids(api, "service=search-a&limit=1"), vec![b.clone()]);
    // Operation, of the root and of a child.
    let op = enc("checkout ma");
    assert_eq!(
        search_ids(api, &format!("service=search-a&operation={op}")),
        vec![a.clone()]
    );
    assert_eq!(
        search_ids(api, "service=search-a&operation=db.query").len(),
        2
    );
    // Tags: as JSON and as tag=k:v; a string on the root, a typed value, a tag on a child,
    // an event attribute, the error tag, a resource attribute.
    let tags = enc(r#"{"marker":"mb"}"#);
    assert_eq!(
        search_ids(api, &format!("service=search-a&tags={tags}")),
        vec![b.clone()]
    );
    for tag in [
        "http.response.status_code:200",
        "cart.express:true",
        "db.system:postgresql",
        "attempt:2",
        "error:true",
        "deployment.environment:test",
        // A double: not indexed, found by reading the candidates.
        "cart.total:12.5",
    ] {
        assert_eq!(
            search_ids(api, &format!("service=search-a&tag={}", enc(tag))).len(),
            2,
            "{tag}"
        );
    }
    assert!(search_ids(api, &format!("service=search-a&tag={}", enc("marker:nope"))).is_empty());
    assert!(
        search_ids(
            api,
            &format!(
                "service=search-a&tag={}&tag={}",
                enc("marker:ma"),
                enc("marker:mb")
            )
        )
        .is_empty(),
        "tags are all required"
    );
    // Duration bounds: the SDK's spans take microseconds to milliseconds.
    assert_eq!(
        search_ids(api, "service=search-a&minDuration=0us&maxDuration=10s").len(),
        2
    );
    assert!(search_ids(api, "service=search-a&minDuration=1h").is_empty());
    // All together, and a time window that ends before the traces began.
    assert_eq!(
        search_ids(
            api,
            &format!(
                "service=search-a&operation=db.query&tag={}&minDuration=1ns&maxDuration=1m",
                enc("marker:ma")
            )
        ),
        vec![a.clone()],
        "the marker is on the root and db.query has none, but both are spans of search-a"
    );
    assert!(search_ids(api, "service=search-a&start=1000000&end=2000000").is_empty());
    // traceID= answers those traces.
    assert_eq!(
        search_ids(api, &format!("traceID={a}&traceID={c}")),
        vec![a.clone(), c.clone()]
    );

    // Bad parameters: 400s that name them.
    for (query, needle) in [
        ("operation=x", "service is required"),
        ("service=search-a&minDuration=5", "minDuration"),
        (
            "service=search-a&minDuration=2s&maxDuration=1s",
            "greater than maxDuration",
        ),
        ("service=search-a&limit=100000", "limit"),
        ("service=search-a&start=abc", "start"),
        ("service=search-a&tag=nocolon", "key:value"),
        ("service=search-a&tags=%5B1%5D", "JSON object"),
    ] {
        let (status, v, body) = get_json(api, &format!("/api/traces?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            v["errors"][0]["msg"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }

    // Summaries.
    let (status, v, body) = get_json(api, "/api/v1/traces/summaries?service=search-a&sort=oldest");
    assert_eq!(status, 200, "{body}");
    assert_eq!(v["complete"], true, "{body}");
    let list = v["traces"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    assert_eq!(list[0]["traceId"], a.as_str(), "oldest first");
    let s = &list[0];
    assert_eq!(s["rootService"], "search-a");
    assert_eq!(s["rootOperation"], "checkout ma");
    assert_eq!(s["spanCount"], 3);
    assert_eq!(s["errorCount"], 1);
    assert_eq!(s["orphanCount"], 0);
    assert_eq!(s["services"], serde_json::json!(["search-a"]));
    assert!(s["endTimeUs"].as_u64().unwrap() >= s["startTimeUs"].as_u64().unwrap());
    let (_, v, _) = get_json(api, "/api/v1/traces/summaries?errors=true&limit=5");
    assert_eq!(
        v["traces"].as_array().unwrap().len(),
        3,
        "every trace has an error span"
    );
    // A search past its time limit answers what it found, marked partial.
    let (status, v, body) = get_json(api, "/api/v1/traces/summaries?service=search-a&timeout=0s");
    assert_eq!(status, 200, "{body}");
    assert_eq!(v["complete"], false, "{body}");
    assert!(body.contains("time limit"), "{body}");
    let (status, _, body) = get_json(api, "/api/traces?service=search-a&timeout=10m");
    assert_eq!(status, 400);
    assert!(body.contains("timeout"), "{body}");
    let (status, _, body) = get_json(api, "/api/v1/traces/summaries?sort=sideways");
    assert_eq!(status, 400);
    assert!(body.contains("sort"), "{body}");

    // api_v3: OTLP JSON.
    let (status, v, body) = get_json(api, &format!("/api/v3/traces/{a}"));
    assert_eq!(status, 200, "{body}");
    let rs = v["result"]["resourceSpans"].as_array().unwrap();
    let spans: Vec<&Value> = rs
        .iter()
        .flat_map(|r| r["scopeSpans"].as_array().unwrap())
        .flat_map(|s| s["spans"].as_array().unwrap())
        .collect();
    assert_eq!(spans.len(), 3, "{body}");
    assert!(
        rs[0]["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv["key"] == "service.name" && kv["value"]["stringValue"] == "search-a"),
        "{body}"
    );
    let root = spans.iter().find(|s| s["name"] == "checkout ma").unwrap();
    let db = spans.iter().find(|s| s["name"] == "db.query").unwrap();
    assert_eq!(root["traceId"], a.as_str());
    assert_eq!(db["parentSpanId"], root["spanId"]);
    assert_eq!(root["kind"], 2, "SERVER as a number");
    assert!(
        root["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(
        root["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv["key"] == "http.response.status_code" && kv["value"]["intValue"] == "200"),
        "{root}"
    );
    let (status, v, body) = get_json(
        api,
        &format!(
            "/api/v3/traces?query.service_name=search-a&query.start_time_min={}&query.start_time_max={}&query.attributes={}",
            enc("2000-01-01T00:00:00Z"),
            enc("2100-01-01T00:00:00Z"),
            enc(r#"{"marker":"mb"}"#)
        ),
    );
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = v["result"]["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["scopeSpans"].as_array().unwrap())
        .flat_map(|s| s["spans"].as_array().unwrap())
        .map(|s| s["traceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b.as_str(); 3], "{body}");
    let (status, v, body) = get_json(api, "/api/v3/traces?query.service_name=search-a");
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("query.start_time_min"),
        "{body}"
    );
    let (status, v, _) = get_json(api, &format!("/api/v3/traces/{}", "ab".repeat(16)));
    assert_eq!((status, v["error"]["httpCode"].as_u64()), (404, Some(404)));
    let (_, v, body) = get_json(api, "/api/v3/services");
    let services = v["services"].as_array().unwrap();
    assert!(
        services.contains(&Value::from("search-a")) && services.contains(&Value::from("search-c")),
        "{body}"
    );
    let (_, v, body) = get_json(api, "/api/v3/operations?service=search-a&span_kind=client");
    let ops = v["operations"].as_array().unwrap();
    assert!(
        ops.iter()
            .any(|o| o["name"] == "db.query" && o["spanKind"] == "client"),
        "{body}"
    );
    assert!(ops.iter().all(|o| o["spanKind"] == "client"), "{body}");
}

/// A string attribute on a span.
fn attr(key: &str, value: &str) -> faultline_model::otlp::common::KeyValue {
    use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// Keys with a fresh value per trace (user ids) are indexed as hashed needles in sealed
/// blocks (with 64 or more distinct values): a search by one finds exactly its traces,
/// combined with other tags, and not another service's spans carrying the same value.
#[test]
fn nearly_unique_values_are_found_exactly_in_sealed_blocks() {
    use faultline_model::otlp::trace::Span;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &["--block-max-spans", "400"]);
    let now = common::now_ns();
    let run = now % 1_000_000_007;
    let regions = ["eu-west", "us-east", "ap-south"];
    // 300 traces: user ids fresh per run, the last one shared by traces 298 and 299.
    let user = |i: u64| format!("user-{run}-{}", i.min(298) * 7919);
    let trace_id = |i: u64| {
        let mut id = now.to_be_bytes().to_vec();
        id.extend_from_slice(&(i + 1).to_be_bytes());
        id
    };
    let spans: Vec<Span> = (0..300u64)
        .map(|i| Span {
            trace_id: trace_id(i),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: "checkout".into(),
            start_time_unix_nano: now + i * 1000,
            end_time_unix_nano: now + i * 1000 + 2_000_000,
            attributes: vec![
                attr("user.id", &user(i)),
                attr("region", regions[(i % 3) as usize]),
            ],
            ..Span::default()
        })
        .collect();
    assert_eq!(
        common::post_otlp(&server, common::otlp_request("shop", spans)),
        200
    );
    // Another service with ids of its own, one of them also a shop user's; in traces
    // 1000.. of its own, except that its span 1 joins shop's trace 6.
    let audit: Vec<Span> = (0..70u64)
        .map(|j| Span {
            trace_id: trace_id(if j == 1 { 6 } else { 1000 + j }),
            span_id: (1000 + j).to_be_bytes().to_vec(),
            name: "audit".into(),
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1_000_000,
            attributes: vec![attr(
                "user.id",
                &if j == 0 {
                    user(5)
                } else {
                    format!("audit-{run}-{j}")
                },
            )],
            ..Span::default()
        })
        .collect();
    assert_eq!(
        common::post_otlp(&server, common::otlp_request("audit", audit)),
        200
    );
    // Filler to seal the 370 spans above into one block.
    let filler: Vec<Span> = (0..40u64)
        .map(|i| Span {
            trace_id: trace_id(2000 + i),
            span_id: (2000 + i).to_be_bytes().to_vec(),
            name: "fill".into(),
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1_000,
            ..Span::default()
        })
        .collect();
    assert_eq!(
        common::post_otlp(&server, common::otlp_request("fill", filler)),
        200
    );
    let started = Instant::now();
    while common::metric(&server.metrics(), "faultline_store_blocks") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "block sealed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And (on ClickHouse too) nothing acknowledged is waiting to be indexed.
    while http_get(server.api, "/")
        .unwrap()
        .1
        .contains("not yet indexed")
    {
        assert!(started.elapsed() < Duration::from_secs(20), "not indexed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let hex = |i: u64| -> String { trace_id(i).iter().map(|b| format!("{b:02x}")).collect() };
    let api = server.api;
    let q = |tags: &[(&str, String)], service: &str| {
        let tags: String = tags
            .iter()
            .map(|(k, v)| format!("&tag={}", enc(&format!("{k}:{v}"))))
            .collect();
        let mut ids = search_ids(
            api,
            &format!("service={service}&limit=50&lookback=1h{tags}"),
        );
        ids.sort();
        ids
    };
    for i in [0u64, 5, 77, 150, 297] {
        assert_eq!(q(&[("user.id", user(i))], "shop"), vec![hex(i)], "user {i}");
        let region = regions[(i % 3) as usize].to_string();
        assert_eq!(
            q(&[("user.id", user(i)), ("region", region)], "shop"),
            vec![hex(i)],
            "user {i} with its region"
        );
        let wrong = regions[((i + 1) % 3) as usize].to_string();
        assert!(q(&[("user.id", user(i)), ("region", wrong)], "shop").is_empty());
    }
    assert_eq!(
        q(&[("user.id", user(298))], "shop"),
        vec![hex(298), hex(299)]
    );
    assert_eq!(q(&[("user.id", user(5))], "audit"), vec![hex(1000)]);
    // Needles do not name the service: trace 6 has an audit span, but its user id is on
    // the shop span, so it is not an audit answer.
    assert!(q(&[("user.id", user(6))], "audit").is_empty());
    assert_eq!(
        q(&[("user.id", format!("audit-{run}-1"))], "audit"),
        vec![hex(6)]
    );
    assert_eq!(
        q(&[("user.id", format!("audit-{run}-9"))], "audit"),
        vec![hex(1009)]
    );
    assert!(q(&[("user.id", user(5))], "fill").is_empty());
    assert!(q(&[("user.id", format!("user-{run}-nobody"))], "shop").is_empty());
}

/// With `--max-index-bytes` below one block's index, every search reads the indexes it
/// needs back from disk, one at a time, and answers exactly as with all of them in
/// memory; also after a restart, when the loader defers what does not fit.
#[test]
fn a_search_index_budget_gives_the_same_answers_reading_indexes_back() {
    use faultline_model::otlp::trace::Span;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = [
        "--block-max-spans",
        "200",
        "--block-max-age-secs",
        "1",
        "--max-index-bytes",
        "1",
    ];
    let mut server = Server::start(&data, &args);
    let now = common::now_ns();
    let run = now % 1_000_000_007;
    // Five blocks of 200 spans, each with a batch tag of its own and fresh user ids.
    let trace_id = |i: u64| {
        let mut id = now.to_be_bytes().to_vec();
        id.extend_from_slice(&(i + 1).to_be_bytes());
        id
    };
    for b in 0..5u64 {
        let spans: Vec<Span> = (0..200u64)
            .map(|j| {
                let i = b * 200 + j;
                Span {
                    trace_id: trace_id(i),
                    span_id: (i + 1).to_be_bytes().to_vec(),
                    name: "work".into(),
                    start_time_unix_nano: now + i * 1000,
                    end_time_unix_nano: now + i * 1000 + 1_000_000 + j * 10_000,
                    attributes: vec![
                        attr("batch", &format!("b{b}")),
                        attr("user.id", &format!("u-{run}-{i}")),
                    ],
                    ..Span::default()
                }
            })
            .collect();
        assert_eq!(
            common::post_otlp(&server, common::otlp_request("jobs", spans)),
            200
        );
        // Sealed before the next, so each batch is a block of its own.
        let started = Instant::now();
        while common::metric(&server.metrics(), "faultline_store_block_spans")
            < (b as f64 + 1.0) * 200.0
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "block {b} sealed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let blocks = common::metric(&server.metrics(), "faultline_store_blocks");
    assert!(blocks >= 3.0, "{blocks} blocks");
    let hex = |i: u64| -> String { trace_id(i).iter().map(|b| format!("{b:02x}")).collect() };
    let check = |api: u16| {
        for b in 0..5u64 {
            let mut ids = search_ids(
                api,
                &format!("service=jobs&limit=500&lookback=1h&tag=batch:b{b}"),
            );
            ids.sort();
            let mut want: Vec<String> = (b * 200..b * 200 + 200).map(hex).collect();
            want.sort();
            assert_eq!(ids, want, "batch {b}");
            let i = b * 200 + 17;
            assert_eq!(
                search_ids(
                    api,
                    &format!(
                        "service=jobs&lookback=1h&tag={}",
                        enc(&format!("user.id:u-{run}-{i}"))
                    )
                ),
                vec![hex(i)]
            );
        }
    };
    check(server.api);
    let m = server.metrics();
    assert!(
        common::metric(&m, "faultline_store_index_loads") >= 4.0
            && common::metric(&m, "faultline_store_index_evictions") >= 4.0,
        "{m}"
    );
    server.stop();
    let server = Server::start(&data, &args);
    // After a restart the indexes load in the background; until then answers say so
    // (partial, "still loading") and leave those blocks out. Wait for them.
    let started = Instant::now();
    while get_json(server.api, "/api/traces?service=jobs&limit=1&lookback=1h")
        .2
        .contains("still loading")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "indexes never loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check(server.api);
    assert!(common::metric(&server.metrics(), "faultline_store_index_loads") >= 4.0);
}
