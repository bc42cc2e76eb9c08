//! The ClickHouse backend against a real ClickHouse server (Debian's `clickhouse-server`,
//! which `scripts/test` installs), started per test on loopback ports with its own data
//! directory: migrations, exact round trips of varied spans, idempotent re-inserts, and
//! the errors an operator sees.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use faultline_clickhouse::testing::{Server, rng};
use faultline_clickhouse::{ChError, ClickHouse, Client, Config};
use faultline_model::span::{AttrValue, Event, Link, Origin, Span, SpanKind, StatusCode};

/// Traces of 1-12 spans over 6 services, each span with fresh ids and values, typed
/// attributes, sometimes events, links and an error status.
fn traces(r: &mut impl FnMut(u64) -> u64, n: usize) -> Vec<Vec<Span>> {
    let services = ["api", "cart", "pay'ments", "db\\proxy", "search", "ünïcode"];
    let origins: Vec<Arc<Origin>> = services
        .iter()
        .map(|s| {
            Arc::new(Origin {
                service: s.to_string(),
                resource: vec![
                    ("service.name".into(), AttrValue::Str(s.to_string())),
                    (
                        "host.name".into(),
                        AttrValue::Str(format!("host-{}", s.len())),
                    ),
                ],
                scope_name: "io.faultline.test".into(),
                scope_version: "1.2".into(),
            })
        })
        .collect();
    let base = 1_764_000_000_000_000_000u64;
    (0..n)
        .map(|_| {
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&r(u64::MAX).to_be_bytes());
            trace[8..].copy_from_slice(&r(u64::MAX).to_be_bytes());
            let start = base + r(3_600_000_000_000);
            let count = 1 + r(12) as usize;
            let mut spans: Vec<Span> = Vec::new();
            for i in 0..count {
                let id = (r(u64::MAX) | 1).to_be_bytes();
                let offset = r(50_000_000);
                let dur = 1 + r(2_000_000_000);
                let mut attributes = vec![
                    (
                        "user.id".into(),
                        AttrValue::Str(format!("u-{:x}", r(u64::MAX))),
                    ),
                    (
                        "http.status_code".into(),
                        AttrValue::Int(200 + r(300) as i64),
                    ),
                    ("ratio".into(), AttrValue::Double(r(1000) as f64 / 7.0)),
                    ("cached".into(), AttrValue::Bool(r(2) == 0)),
                ];
                // Attributes of other types, anywhere among the others.
                if r(3) == 0 {
                    let at = r(attributes.len() as u64 + 1) as usize;
                    attributes.insert(
                        at,
                        (
                            "tags".into(),
                            AttrValue::Array(vec![AttrValue::Str("a".into()), AttrValue::Int(2)]),
                        ),
                    );
                }
                if r(4) == 0 {
                    let at = r(attributes.len() as u64 + 1) as usize;
                    attributes.insert(
                        at,
                        (
                            "digest".into(),
                            AttrValue::Bytes(r(u64::MAX).to_be_bytes().to_vec()),
                        ),
                    );
                }
                if r(5) == 0 {
                    attributes.push(("ratio.extreme".into(), AttrValue::Double(-1.0e-300 / 3.0)));
                }
                let error = r(10) == 0;
                spans.push(Span {
                    trace_id: trace,
                    span_id: id,
                    parent_span_id: (i > 0).then(|| spans[r(i as u64) as usize].span_id),
                    name: format!("op-{}", r(20)),
                    kind: [SpanKind::Server, SpanKind::Client, SpanKind::Internal][r(3) as usize],
                    start_ns: start + offset,
                    end_ns: start + offset + dur,
                    status: if error {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    status_message: if error { "boom".into() } else { String::new() },
                    attributes,
                    events: if error {
                        vec![Event {
                            time_ns: start + offset + 1,
                            name: "exception".into(),
                            attributes: vec![(
                                "exception.message".into(),
                                AttrValue::Str(format!("failed {}", r(1000))),
                            )],
                        }]
                    } else {
                        vec![]
                    },
                    links: if r(8) == 0 {
                        vec![Link {
                            trace_id: [7; 16],
                            span_id: [9; 8],
                            attributes: vec![],
                        }]
                    } else {
                        vec![]
                    },
                    origin: origins[r(origins.len() as u64) as usize].clone(),
                });
            }
            spans
        })
        .collect()
}

#[test]
fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let server = Server::start();
    ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let client = Client::new(server.config("faultline")).unwrap();
    assert_eq!(
        faultline_clickhouse::schema::current(&client).unwrap(),
        faultline_clickhouse::schema::LATEST
    );
    // A second start (or a second node) finds the schema current and changes nothing.
    ClickHouse::open(server.config("faultline"), "node-b").unwrap();
    let tables = client
        .query_text("SELECT name FROM system.tables WHERE database = 'faultline' ORDER BY name")
        .unwrap();
    assert_eq!(
        tables.lines().collect::<Vec<_>>(),
        [
            "faultline_schema",
            "rollups",
            "spans",
            "trace_index",
            "trace_index_mv"
        ]
    );
    // A newer faultline wrote version 99: this one refuses to start on it.
    client
        .query("INSERT INTO faultline_schema (version, name) VALUES (99, 'from the future')")
        .unwrap();
    let e = ClickHouse::open(server.config("faultline"), "node-a").unwrap_err();
    assert!(matches!(e, ChError::SchemaNewer { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade faultline"), "{e}");
    // Another database on the same server is separate.
    ClickHouse::open(server.config("other"), "node-a").unwrap();
    assert!(server.log().lines().count() < 1000);
}

#[test]
fn varied_spans_read_back_exactly_and_a_record_inserted_twice_answers_once() {
    let server = Server::start();
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let mut r = rng("clickhouse round trip");
    let traces = traces(&mut r, 120);
    // WAL records hold spans of several traces, in arrival order.
    let all: Vec<Span> = traces.iter().flatten().cloned().collect();
    let mut records: Vec<(u64, Vec<Span>)> = Vec::new();
    let mut rest = &all[..];
    let mut seq = 1000;
    while !rest.is_empty() {
        let n = (1 + r(40) as usize).min(rest.len());
        records.push((seq, rest[..n].to_vec()));
        rest = &rest[n..];
        seq += 1 + r(3);
    }
    // In batches of a few records, then some records again, as after a crash between
    // ClickHouse's acknowledgement and the WAL checkpoint.
    for batch in records.chunks(5) {
        let refs: Vec<(u64, &[Span])> = batch.iter().map(|(s, v)| (*s, v.as_slice())).collect();
        ch.insert(&refs).unwrap();
    }
    let again: Vec<(u64, &[Span])> = records
        .iter()
        .filter(|_| r(3) == 0)
        .map(|(s, v)| (*s, v.as_slice()))
        .collect();
    ch.insert(&again).unwrap();
    assert_eq!(ch.span_count().unwrap(), all.len() as u64);
    for t in &traces {
        let mut want = t.clone();
        want.sort_by_key(|a| (a.start_ns, a.span_id));
        let got = ch.trace(&t[0].trace_id).unwrap();
        assert_eq!(got, want, "trace {}", faultline_model::hex(&t[0].trace_id));
    }
    assert!(ch.trace(&[0xab; 16]).unwrap().is_empty());
    let mut services: Vec<String> = all.iter().map(|s| s.service().to_string()).collect();
    services.sort();
    services.dedup();
    assert_eq!(ch.services().unwrap(), services);
    // Another node's record of the same sequence number is a different record.
    ch.insert(&[(1000, &records[0].1[..1])]).unwrap();
    let other = ClickHouse::open(server.config("faultline"), "node-b").unwrap();
    other.insert(&[(1000, &records[0].1[..1])]).unwrap();
    assert_eq!(ch.span_count().unwrap(), all.len() as u64 + 1);
}

#[test]
fn errors_name_the_server_and_the_statement() {
    let server = Server::start();
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let e = ch
        .client()
        .query("SELECT * FROM no_such_table")
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ChError::Server { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.http))
            && text.contains("SELECT * FROM no_such_table")
            && text.contains("Code: 60"),
        "{text}"
    );
    // A server that is not there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = ClickHouse::open(
        Config::new(&format!("http://127.0.0.1:{port}"), "faultline"),
        "node-a",
    )
    .unwrap_err();
    assert!(matches!(e, ChError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}
