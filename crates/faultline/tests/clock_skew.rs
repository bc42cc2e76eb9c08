//! Clock skew: one service's clock 2 s fast and one host of another 300 ms fast are
//! detected from the calls between them (within 10% of the planted offsets), and the
//! spans that fall outside their parent are moved back in Jaeger's API (with a warning on
//! each) and in the UI's trace view (marked); `raw` shows the stored times.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Server, http_get, send_skewed_traces};

fn jaeger_trace(server: &Server, id: &str, extra: &str) -> Value {
    let (status, body) = http_get(server.api, &format!("/api/traces/{id}{extra}")).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["data"][0].clone()
}

/// Each span's service, start and end (µs) and warnings, by span id.
fn spans_of(t: &Value) -> Vec<(String, String, u64, u64, Option<String>)> {
    t["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let service = t["processes"][s["processID"].as_str().unwrap()]["serviceName"]
                .as_str()
                .unwrap()
                .to_string();
            let start = s["startTime"].as_u64().unwrap();
            (
                s["spanID"].as_str().unwrap().to_string(),
                service,
                start,
                start + s["duration"].as_u64().unwrap(),
                s["warnings"][0].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The amount a warning says a span moved, in milliseconds (negative: earlier).
fn moved_ms(w: &str) -> f64 {
    let rest = w.split("moved ").nth(1).unwrap();
    let (sign, rest) = rest.split_at(1);
    let mut parts = rest.split(' ');
    let n: f64 = parts.next().unwrap().parse().unwrap();
    let unit = parts.next().unwrap().trim_end_matches(';');
    let ms = match unit {
        "s" => n * 1000.0,
        "ms" => n,
        other => panic!("unit {other} in {w}"),
    };
    if sign == "-" { -ms } else { ms }
}

#[test]
fn planted_skew_is_detected_and_corrected_in_the_api_and_the_ui() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("data"), &[]);
    let ids = send_skewed_traces(&server, 60);
    // The estimates are refreshed every second; the last trace is indexed at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (api_moved, db_moved) = loop {
        let (status, body) =
            http_get(server.api, &format!("/api/traces/{}", ids.last().unwrap())).unwrap();
        if status == 404 {
            assert!(Instant::now() < deadline, "not indexed after 20 s: {body}");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let t = serde_json::from_str::<Value>(&body).unwrap()["data"][0].clone();
        let spans = spans_of(&t);
        let w = |svc: &str| {
            spans
                .iter()
                .find(|s| s.1 == svc && s.4.as_deref().is_some_and(|w| !w.contains("same clock")))
                .and_then(|s| s.4.clone())
        };
        if let (Some(a), Some(d)) = (w("api"), w("db")) {
            break (a, d);
        }
        assert!(Instant::now() < deadline, "no corrections after 20 s: {t}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Detected within 10% of what was planted.
    let api = moved_ms(&api_moved);
    assert!(
        (api + 2000.0).abs() <= 200.0,
        "api moved {api} ms: {api_moved}"
    );
    assert!(
        api_moved.contains("api@api-1 is") && api_moved.contains("ahead"),
        "{api_moved}"
    );
    assert!(
        api_moved.contains("client/server calls from frontend@fe-1"),
        "{api_moved}"
    );
    let db = moved_ms(&db_moved);
    assert!((db + 300.0).abs() <= 30.0, "db-2 moved {db} ms: {db_moved}");
    assert!(db_moved.contains("db@db-2"), "{db_moved}");

    // Every trace is consistent after correction: each child within its parent, and the
    // spans that fit (the frontend's, db-1's) were not moved.
    for (n, id) in ids.iter().enumerate().skip(10) {
        let t = jaeger_trace(&server, id, "");
        let spans = spans_of(&t);
        let by_id = |sid: &str| spans.iter().find(|s| s.0 == sid).unwrap();
        for s in t["spans"].as_array().unwrap() {
            let me = by_id(s["spanID"].as_str().unwrap());
            if let Some(r) = s["references"].as_array().unwrap().first() {
                let p = by_id(r["spanID"].as_str().unwrap());
                assert!(
                    me.2 >= p.2 && me.3 <= p.3,
                    "trace {n}: {} [{}, {}] outside {} [{}, {}]",
                    me.1,
                    me.2,
                    me.3,
                    p.1,
                    p.2,
                    p.3
                );
            }
            if me.1 == "frontend" || (me.1 == "db" && n % 2 == 0) {
                assert!(me.4.is_none(), "trace {n}: {} moved: {:?}", me.1, me.4);
            }
        }
        // Stored times on request: the api span is 2 s after its caller ended.
        let raw = spans_of(&jaeger_trace(&server, id, "?raw=true"));
        assert!(raw.iter().all(|s| s.4.is_none()));
        let api_raw = raw.iter().find(|s| s.1 == "api").unwrap();
        let fe_end = raw
            .iter()
            .filter(|s| s.1 == "frontend")
            .map(|s| s.3)
            .max()
            .unwrap();
        assert!(
            api_raw.2 > fe_end,
            "trace {n}: raw times are the stored ones"
        );
    }

    // The UI marks each moved span and offers the stored times.
    let id = ids.last().unwrap();
    let (_, page) = http_get(server.api, &format!("/trace/{id}")).unwrap();
    assert!(page.contains("id=skew"), "{page}");
    assert_eq!(page.matches(" skewed\"").count(), 3, "{page}");
    assert!(page.contains("clock skew: moved −2.00 s"), "{page}");
    assert!(page.contains(&format!("/trace/{id}?raw=1")));
    let (_, raw_page) = http_get(server.api, &format!("/trace/{id}?raw=1")).unwrap();
    assert!(!raw_page.contains(" skewed\""));
    assert!(raw_page.contains("Correct clock skew"));
    server.stop();
}
