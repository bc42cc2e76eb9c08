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
