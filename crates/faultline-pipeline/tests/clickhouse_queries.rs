//! Both backends answer alike: the same varied spans go into the embedded store and,
//! through the WAL and the ClickHouse writer, into a real ClickHouse server, and every
//! read of the query trait (traces, services, operations, dependencies, RED series and
//! totals, latency distributions, search) is compared. Then the writer is set back, as
//! after a crash between an insert and its checkpoint, and the answers must not change:
//! spans and rollups re-inserted count once.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use faultline_clickhouse::ClickHouse;
use faultline_clickhouse::testing::{Server, rng};
use faultline_model::envelope::{Protocol, encode_request};
use faultline_model::span::{
    AttrValue, Event, Origin, Span, SpanKind, StatusCode, TraceId, to_otlp,
};
use faultline_pipeline::clickhouse::{CHUNK_RECORDS, Shipper, ShipperOptions};
use faultline_store::{RedPoint, SortOrder, SpanStore, Store, StoreOptions, TraceQuery};
use faultline_wal::{NoopObserver, Wal, WalOptions};

const SERVICES: [&str; 6] = ["frontend", "cart", "checkout", "payment", "db", "queue"];
const REGIONS: [&str; 4] = ["eu-west", "eu-north", "us-east", "ap-south"];

/// One trace: a tree of 2-9 spans over the services, log-normal-ish durations, fresh
/// user ids, a region on every span, 4% errors with exception events, and a quarter of
/// the traces sampled at 1 in 4 (`SampleRate`), spread over `minutes` minutes from `base`.
fn trace(r: &mut impl FnMut(u64) -> u64, base: u64, minutes: u64) -> Vec<Span> {
    let mut id: TraceId = [0; 16];
    id[..8].copy_from_slice(&r(u64::MAX).to_be_bytes());
    id[8..].copy_from_slice(&(r(u64::MAX) | 1).to_be_bytes());
    let start = base + r(minutes * 60_000_000_000);
    let user = format!("u-{:x}", r(u64::MAX));
    let region = REGIONS[r(4) as usize];
    let sampled = r(4) == 0;
    let n = 2 + r(8) as usize;
    let mut spans: Vec<Span> = Vec::with_capacity(n);
    for i in 0..n {
        let parent = (i > 0).then(|| r(i as u64) as usize);
        let service = match parent {
            None => "frontend",
            Some(_) => SERVICES[r(SERVICES.len() as u64) as usize],
        };
        let kind = match (parent, r(3)) {
            (None, _) => SpanKind::Server,
            (_, 0) => SpanKind::Client,
            (_, 1) => SpanKind::Internal,
            _ => SpanKind::Server,
        };
        let at = parent.map_or(start, |p| spans[p].start_ns + 1 + r(5_000_000));
        // Roughly log-normal: 10 us to 3 s.
        let scale = 1 << r(19);
        let dur = 10_000 * (1 + r(scale));
        let error = r(25) == 0;
        let mut attributes = vec![
            ("region".into(), AttrValue::Str(region.into())),
            ("user.id".into(), AttrValue::Str(user.as_str().into())),
            (
                "http.response.status_code".into(),
                AttrValue::Int(if error { 500 } else { 200 }),
            ),
        ];
        if sampled {
            attributes.push(("SampleRate".into(), AttrValue::Int(4)));
        }
        if r(3) == 0 {
            attributes.push((
                "db.latency_ms".into(),
                AttrValue::Double(r(1000) as f64 / 7.0),
            ));
        }
        let events = if error {
            vec![Event {
                time_ns: at + dur / 2,
                name: "exception".into(),
                attributes: vec![(
                    "exception.type".into(),
                    AttrValue::Str(format!("Err{}", r(3)).into()),
                )],
            }]
        } else {
            vec![]
        };
        spans.push(Span {
            trace_id: id,
            span_id: (r(u64::MAX) | 1).to_be_bytes(),
            parent_span_id: parent.map(|p| spans[p].span_id),
            name: format!("{service}-op{}", r(3)),
            kind,
            start_ns: at,
            end_ns: at + dur,
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: if error { "boom".into() } else { String::new() },
            attributes,
            events,
            links: vec![],
            origin: Arc::new(Origin {
                resource: vec![
                    ("service.name".into(), AttrValue::Str(service.into())),
                    (
                        "host.name".into(),
                        AttrValue::Str(format!("{service}-{}", r(3)).into()),
                    ),
                ],
                service: service.into(),
                scope_name: "differential".into(),
                scope_version: String::new(),
            }),
        });
    }
    spans
}

fn shuffle<T>(v: &mut [T], r: &mut impl FnMut(u64) -> u64) {
    for i in (1..v.len()).rev() {
        v.swap(i, r(i as u64 + 1) as usize);
    }
}

fn sorted(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| (s.start_ns, s.span_id));
    spans
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        (None, None) => true,
        _ => false,
    }
}

fn same_point(a: &RedPoint, b: &RedPoint) -> bool {
    (a.start_s, a.count, a.errors, a.stored, a.stored_errors)
        == (b.start_s, b.count, b.errors, b.stored, b.stored_errors)
        && (a.requests, a.request_errors, a.stored_requests)
            == (b.requests, b.request_errors, b.stored_requests)
        && close(a.p50_ms, b.p50_ms)
        && close(a.p90_ms, b.p90_ms)
        && close(a.p99_ms, b.p99_ms)
        && close(a.mean_ms, b.mean_ms)
        && match (a.request_ms, b.request_ms) {
            (Some(x), Some(y)) => x.iter().zip(y).all(|(x, y)| close(Some(*x), Some(y))),
            (x, y) => x.is_none() && y.is_none(),
        }
}

/// Every answer of both backends over `[from_s, to_s)`, compared.
fn compare(emb: &Store, ch: &ClickHouse, ids: &[TraceId], from_s: u64, to_s: u64) {
    let (services, _) = SpanStore::services(ch).unwrap();
    assert_eq!(services, SpanStore::services(emb).unwrap().0);
    assert_eq!(services.len(), SERVICES.len());
    for s in &services {
        assert_eq!(
            SpanStore::operations(ch, s).unwrap().0,
            SpanStore::operations(emb, s).unwrap().0,
            "operations of {s}"
        );
        for step in [60, 300] {
            let (a, _) = SpanStore::red(emb, s, None, None, from_s, to_s, step).unwrap();
            let (b, _) = SpanStore::red(ch, s, None, None, from_s, to_s, step).unwrap();
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!(same_point(x, y), "red of {s}, step {step}:\n{x:?}\n{y:?}");
            }
        }
        let kinds = [None, Some(SpanKind::Server), Some(SpanKind::Client)];
        for kind in kinds {
            let a = SpanStore::red_total(emb, s, None, kind, from_s, to_s)
                .unwrap()
                .0;
            let b = SpanStore::red_total(ch, s, None, kind, from_s, to_s)
                .unwrap()
                .0;
            assert!(same_point(&a, &b), "total of {s} {kind:?}:\n{a:?}\n{b:?}");
        }
        let op = format!("{s}-op1");
        let a = SpanStore::red_total(emb, s, Some(&op), None, from_s, to_s)
            .unwrap()
            .0;
        let b = SpanStore::red_total(ch, s, Some(&op), None, from_s, to_s)
            .unwrap()
            .0;
        assert!(same_point(&a, &b), "total of {s} {op}:\n{a:?}\n{b:?}");
        let bounds = [0.1, 1.0, 10.0, 100.0, 1000.0];
        assert_eq!(
            SpanStore::latency_distribution(ch, s, None, from_s, to_s, &bounds)
                .unwrap()
                .0,
            SpanStore::latency_distribution(emb, s, None, from_s, to_s, &bounds)
                .unwrap()
                .0,
            "distribution of {s}"
        );
    }
    let (a, _) = SpanStore::dependencies(emb, from_s, to_s).unwrap();
    let (b, _) = SpanStore::dependencies(ch, from_s, to_s).unwrap();
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.parent, &x.child, x.calls, x.errors, x.stored),
            (&y.parent, &y.child, y.calls, y.errors, y.stored)
        );
        let (p, q) = (x.latency_ms.unwrap(), y.latency_ms.unwrap());
        assert!(
            p.iter().zip(q).all(|(p, q)| close(Some(*p), Some(q))),
            "{x:?} {y:?}"
        );
    }
    // Traces by id, one by one and together; an unknown id has no spans.
    let want: Vec<Vec<Span>> = SpanStore::traces(emb, ids)
        .unwrap()
        .into_iter()
        .map(|t| sorted(t.spans))
        .collect();
    let got = SpanStore::traces(ch, ids).unwrap();
    for (w, g) in want.iter().zip(got) {
        assert!(!w.is_empty());
        assert_eq!(&sorted(g.spans), w);
    }
    assert_eq!(
        sorted(SpanStore::trace(ch, &ids[0]).unwrap().spans),
        want[0]
    );
    assert!(SpanStore::trace(ch, &[7; 16]).unwrap().spans.is_empty());
}

/// Search answers of both backends: the same traces and summaries when the limit holds
/// them all; with a small limit, the right number of matching traces in order.
fn compare_search(emb: &Store, ch: &ClickHouse, from_ns: u64, to_ns: u64) {
    let q = |service: Option<&str>, tags: &[(&str, &str)]| TraceQuery {
        service: service.map(String::from),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        start_ns: from_ns,
        end_ns: to_ns,
        limit: 100_000,
        ..TraceQuery::default()
    };
    let mut queries = vec![
        q(Some("cart"), &[("region", "eu-west")]),
        q(Some("frontend"), &[]),
        q(None, &[("error", "true")]),
        q(Some("payment"), &[("exception.type", "Err1")]),
        q(Some("db"), &[("host.name", "db-2")]),
        q(
            Some("checkout"),
            &[("span.kind", "client"), ("region", "us-east")],
        ),
        q(None, &[("http.response.status_code", "500")]),
        q(Some("queue"), &[("otel.status_description", "boom")]),
        q(Some("cart"), &[("region", "nowhere")]),
    ];
    let mut with_duration = q(Some("cart"), &[("region", "eu-north")]);
    with_duration.min_duration_ns = Some(20_000_000);
    with_duration.max_duration_ns = Some(900_000_000);
    queries.push(with_duration);
    let mut op = q(Some("payment"), &[]);
    op.operation = Some("payment-op2".into());
    op.errors_only = true;
    queries.push(op);
    let mut nonempty = 0;
    for query in &queries {
        let (mut a, _) = SpanStore::search(emb, query).unwrap();
        let (mut b, c) = SpanStore::search(ch, query).unwrap();
        assert!(c.is_complete(), "{c:?}");
        a.sort_by_key(|s| s.trace_id);
        b.sort_by_key(|s| s.trace_id);
        assert_eq!(a, b, "{query:?}");
        nonempty += usize::from(!a.is_empty());
        // A small limit: that many, all matching, best first.
        for sort in [SortOrder::Newest, SortOrder::Longest, SortOrder::Shortest] {
            let small = TraceQuery {
                limit: 5,
                sort,
                ..query.clone()
            };
            let (got, _) = SpanStore::search(ch, &small).unwrap();
            assert_eq!(got.len(), a.len().min(5), "{small:?}");
            assert!(
                got.iter()
                    .all(|s| a.iter().any(|t| t.trace_id == s.trace_id))
            );
            let keys: Vec<u64> = got.iter().map(|s| sort.key(s.start_ns, s.end_ns)).collect();
            assert!(keys.windows(2).all(|w| w[0] >= w[1]), "{sort:?} {keys:?}");
        }
    }
    assert!(
        nonempty >= queries.len() - 3,
        "too few searches found anything"
    );
}

#[test]
fn both_backends_answer_alike_and_a_reshipped_wal_changes_nothing() {
    let server = Server::start();
    let mut r = rng("clickhouse queries");
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(
        &dir.path().join("wal"),
        WalOptions::default(),
        Arc::new(NoopObserver),
    )
    .unwrap();
    let (emb, _) = Store::open(StoreOptions::new(&dir.path().join("store"))).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let minutes = 12;
    let base = (now / 60_000_000_000 - 30) * 60_000_000_000;
    // More records than a rollup chunk holds, so chunks turn over; each of 1-3 traces
    // whose spans arrive in any order (children before parents too).
    let records = CHUNK_RECORDS as usize + 150;
    let mut ids = Vec::new();
    for _ in 0..records {
        let mut spans: Vec<Span> = (0..1 + r(3))
            .flat_map(|_| trace(&mut r, base, minutes))
            .collect();
        ids.push(spans[0].trace_id);
        shuffle(&mut spans, &mut r);
        let payload = encode_request(
            Protocol::OtlpHttpProtobuf,
            spans.len() as u32,
            &to_otlp(&spans),
        );
        let seq = wal.append_blocking(payload).unwrap().seq;
        emb.ingest(seq, spans).unwrap();
    }
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let opts = ShipperOptions {
        batch_spans: 2_000,
        ..ShipperOptions::default()
    };
    let mut shipper = Shipper::new(ch.clone(), &wal, "clickhouse", opts.clone()).unwrap();
    while shipper.step().unwrap() > 0 {}
    assert_eq!(shipper.position(), wal.committed_seq() + 1);
    assert_eq!(shipper.keep_from(), CHUNK_RECORDS);
    drop(shipper);
    let (from_s, to_s) = (base / 1_000_000_000 - 60, now / 1_000_000_000 + 60);
    let sample: Vec<TraceId> = ids.iter().step_by(37).copied().collect();
    compare(&emb, &ch, &sample, from_s, to_s);
    compare_search(&emb, &ch, base, now);
    // A crash between inserts and their checkpoint, twice: once in the middle of the
    // first chunk (rebuilt from the WAL up to there), once in the second. Everything
    // after is inserted again; nothing may count twice.
    let chunk_ends: BTreeSet<u64> = [CHUNK_RECORDS / 2, CHUNK_RECORDS + 40].into();
    for back in chunk_ends {
        wal.cursor("clickhouse").unwrap().checkpoint(back).unwrap();
        let mut shipper = Shipper::new(ch.clone(), &wal, "clickhouse", opts.clone()).unwrap();
        assert_eq!(shipper.keep_from(), back - back % CHUNK_RECORDS);
        while shipper.step().unwrap() > 0 {}
        compare(&emb, &ch, &sample, from_s, to_s);
    }
    compare_search(&emb, &ch, base, now);
}
