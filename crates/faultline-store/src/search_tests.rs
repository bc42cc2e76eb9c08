//! Search tests: the store's answers against a brute-force model over every span, across
//! the head, sealed blocks, traces split by a seal, a reopen, a lost search index, and
//! indexes evicted for a memory budget and read back.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use faultline_model::span::{AttrValue, Event, Origin, Span, SpanKind, StatusCode, TraceId};

use crate::search::{SortOrder, TraceQuery, TraceSummary};
use crate::{SpanStore, Store, StoreOptions};

const SERVICES: [&str; 3] = ["api", "db", "cache"];
const NAMES: [&str; 2] = ["get", "put"];

/// A generated span: (service, name, parent choice, duration µs, error, k value, n, long).
type Gen = (usize, usize, Option<usize>, u64, bool, u8, i64, bool);

fn build(traces: &[Vec<Gen>]) -> Vec<Vec<Span>> {
    let origins: Vec<Arc<Origin>> = SERVICES
        .iter()
        .map(|s| {
            Arc::new(Origin {
                service: s.to_string(),
                resource: vec![
                    ("service.name".into(), AttrValue::Str((*s).into())),
                    ("region".into(), AttrValue::Str(format!("r-{s}").into())),
                ],
                scope_name: "lib".into(),
                scope_version: "1".into(),
            })
        })
        .collect();
    traces
        .iter()
        .enumerate()
        .map(|(t, spans)| {
            let mut tid: TraceId = [0; 16];
            tid[0] = 1;
            tid[15] = t as u8;
            let base = 1_000_000_000_000 + t as u64 * 10_000_000;
            spans
                .iter()
                .enumerate()
                .map(|(j, &(svc, name, parent, dur_us, err, k, n, long))| {
                    let mut attributes = vec![
                        ("k".into(), AttrValue::Str(format!("v{k}").into())),
                        ("n".into(), AttrValue::Int(n)),
                        ("d".into(), AttrValue::Double(n as f64 + 0.5)),
                    ];
                    if long {
                        attributes.push(("long".into(), AttrValue::Str("x".repeat(200).into())));
                    }
                    Span {
                        trace_id: tid,
                        span_id: [j as u8 + 1, t as u8, 0, 0, 0, 0, 0, 1],
                        // Parent index past the spans means "parent never arrived": an orphan.
                        parent_span_id: parent.map(|p| {
                            if p < j {
                                [p as u8 + 1, t as u8, 0, 0, 0, 0, 0, 1]
                            } else {
                                [0xee, t as u8, 0, 0, 0, 0, 0, 2]
                            }
                        }),
                        name: NAMES[name].into(),
                        kind: SpanKind::Server,
                        start_ns: base + j as u64 * 1000,
                        end_ns: base + j as u64 * 1000 + dur_us * 1000,
                        status: if err {
                            StatusCode::Error
                        } else {
                            StatusCode::Unset
                        },
                        status_message: if err { "boom".into() } else { String::new() },
                        attributes,
                        events: if err {
                            vec![Event {
                                time_ns: base,
                                name: "exception".into(),
                                attributes: vec![(
                                    "exception.type".into(),
                                    AttrValue::Str(format!("E{k}").into()),
                                )],
                            }]
                        } else {
                            Vec::new()
                        },
                        links: Vec::new(),
                        origin: origins[svc].clone(),
                    }
                })
                .collect()
        })
        .collect()
}

fn model(all: &[Span], q: &TraceQuery) -> Vec<TraceSummary> {
    let mut by_trace: BTreeMap<TraceId, Vec<&Span>> = BTreeMap::new();
    for s in all {
        by_trace.entry(s.trace_id).or_default().push(s);
    }
    let mut out: Vec<TraceSummary> = by_trace
        .values()
        .filter_map(|spans| {
            let sum = TraceSummary::of_refs(spans)?;
            q.trace_matches(spans, &sum).then_some(sum)
        })
        .collect();
    out.sort_by(|a, b| {
        q.sort
            .key(b.start_ns, b.end_ns)
            .cmp(&q.sort.key(a.start_ns, a.end_ns))
            .then(a.trace_id.cmp(&b.trace_id))
    });
    out.truncate(q.limit);
    out
}

fn check(store: &Store, all: &[Span], q: &TraceQuery) -> Result<(), TestCaseError> {
    let (got, completeness) = store.search(q).unwrap();
    prop_assert!(completeness.is_complete(), "{:?}", completeness);
    let want = model(all, q);
    // Equal sort keys may pick different traces: compare keys, then each summary exactly.
    let keys = |v: &[TraceSummary]| -> Vec<u64> {
        v.iter().map(|s| q.sort.key(s.start_ns, s.end_ns)).collect()
    };
    prop_assert_eq!(keys(&got), keys(&want), "query {:?}", q);
    let every = model(
        all,
        &TraceQuery {
            limit: usize::MAX,
            ..q.clone()
        },
    );
    for g in &got {
        prop_assert!(every.contains(g), "{:?} is not an answer to {:?}", g, q);
    }
    Ok(())
}

fn gen_span() -> impl Strategy<Value = Gen> {
    (
        0..SERVICES.len(),
        0..NAMES.len(),
        prop::option::weighted(0.8, 0..8usize),
        1..50u64,
        prop::bool::weighted(0.2),
        0..3u8,
        0..3i64,
        prop::bool::weighted(0.1),
    )
}

fn gen_query() -> impl Strategy<Value = TraceQuery> {
    (
        prop::option::of(0..SERVICES.len()),
        prop::option::of(0..NAMES.len()),
        prop::collection::vec((0..6usize, 0..3u8), 0..3),
        prop::option::of(1..40u64),
        prop::option::of(1..60u64),
        prop::option::of((0..30u64, 0..30u64)),
        any::<bool>(),
        0..5usize,
        1..12usize,
    )
        .prop_map(|(svc, op, tags, min, max, window, errors, sort, limit)| {
            let (start_ns, end_ns) = match window {
                Some((a, b)) => (
                    1_000_000_000_000 + a.min(b) * 10_000_000,
                    1_000_000_000_000 + a.max(b) * 10_000_000 + 5_000_000,
                ),
                None => (0, u64::MAX),
            };
            TraceQuery {
                service: svc.map(|s| SERVICES[s].to_string()),
                operation: op.map(|o| NAMES[o].to_string()),
                tags: tags
                    .into_iter()
                    .map(|(k, v)| match k {
                        0 => ("k".to_string(), format!("v{v}")),
                        1 => ("n".to_string(), v.to_string()),
                        // A double: not indexed, checked by reading the trace.
                        2 => ("d".to_string(), format!("{}.5", v)),
                        3 => ("region".to_string(), format!("r-{}", SERVICES[v as usize])),
                        4 => ("exception.type".to_string(), format!("E{v}")),
                        _ => ("error".to_string(), "true".to_string()),
                    })
                    .collect(),
                min_duration_ns: min.map(|m| m * 1000),
                max_duration_ns: max.map(|m| m * 1000),
                start_ns,
                end_ns,
                errors_only: errors,
                sort: [
                    SortOrder::Newest,
                    SortOrder::Oldest,
                    SortOrder::Longest,
                    SortOrder::Shortest,
                    SortOrder::Sample,
                ][sort],
                limit,
                time_limit: None,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn search_matches_a_brute_force_model_across_head_blocks_and_reopen(
        traces in prop::collection::vec(prop::collection::vec(gen_span(), 1..8), 1..30),
        seal_every in 3..40usize,
        queries in prop::collection::vec(gen_query(), 12),
        // No budget, or one so small that indexes are evicted and read back.
        max_index_bytes in prop_oneof![Just(u64::MAX), 1u64..20_000],
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            block_max_spans: 1_000,
            block_max_age: Duration::from_secs(3600),
            max_index_bytes,
            ..StoreOptions::new(tmp.path())
        };
        let built = build(&traces);
        // Interleave traces so many are split across seals: span j of every trace, then j+1.
        let mut order = Vec::new();
        let longest = built.iter().map(Vec::len).max().unwrap_or(0);
        for j in 0..longest {
            for t in &built {
                if let Some(s) = t.get(j) {
                    order.push(s.clone());
                }
            }
        }
        let all = order.clone();
        {
            let (store, _) = Store::open(opts.clone()).unwrap();
            for (i, s) in order.into_iter().enumerate() {
                store.ingest(i as u64 + 1, vec![s]).unwrap();
                if (i + 1) % seal_every == 0 {
                    store.seal().unwrap();
                }
            }
            for q in &queries {
                check(&store, &all, q)?;
            }
            store.seal().unwrap();
        }
        // Reopened: the index comes from the Parquet columns and the postings file; one
        // postings file is lost and rebuilt.
        if let Some(sidx) = std::fs::read_dir(tmp.path().join("blocks"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "sidx"))
        {
            std::fs::write(&sidx, b"garbage").unwrap();
        }
        let (store, report) = Store::open(opts).unwrap();
        prop_assert!(report.quarantined.is_empty());
        prop_assert!(store.wait_for_indexes(Duration::from_secs(30)));
        for q in &queries {
            check(&store, &all, q)?;
        }
    }
}

#[test]
fn a_memory_budget_evicts_indexes_and_searches_read_them_back() {
    let tmp = tempfile::tempdir().unwrap();
    let traces: Vec<Vec<Gen>> = (0..60u8)
        .map(|t| {
            (0..6usize)
                .map(|j| {
                    (
                        j % 3,
                        j % 2,
                        j.checked_sub(1),
                        100 + u64::from(t) * 10,
                        t % 7 == 0,
                        t % 5,
                        i64::from(t),
                        false,
                    )
                })
                .collect()
        })
        .collect();
    let all: Vec<Span> = build(&traces).into_iter().flatten().collect();
    let query = |service: &str| TraceQuery {
        service: Some(service.into()),
        end_ns: u64::MAX,
        limit: 1000,
        ..TraceQuery::default()
    };
    let answers = |store: &Store| -> Vec<Vec<TraceSummary>> {
        SERVICES
            .iter()
            .map(|s| {
                let (found, c) = store.search(&query(s)).unwrap();
                assert!(c.is_complete(), "{c:?}");
                found
            })
            .collect()
    };
    let mut want = None;
    for budget in [u64::MAX, 1] {
        let dir = tmp.path().join(budget.to_string());
        let opts = StoreOptions {
            max_index_bytes: budget,
            ..StoreOptions::new(&dir)
        };
        let (store, _) = Store::open(opts.clone()).unwrap();
        // Six blocks of ten traces each.
        for (i, chunk) in all.chunks(60).enumerate() {
            store.ingest(i as u64 + 1, chunk.to_vec()).unwrap();
            store.seal().unwrap();
        }
        let got = answers(&store);
        let stats = store.index_cache();
        if budget == u64::MAX {
            assert_eq!((stats.loads, stats.evictions), (0, 0));
            assert!(stats.bytes > 0);
            assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 3 * 60, "{got:?}");
            want = Some(got);
            continue;
        }
        assert_eq!(
            Some(&got),
            want.as_ref(),
            "the same answers within a budget"
        );
        assert!(stats.evictions >= 5 && stats.loads >= 5, "{stats:?}");
        // Only the index last used is held: the budget is smaller than one.
        let one = stats.bytes;
        drop(store);
        // Reopened, the loader stops at the budget; searches read the rest back.
        let (store, _) = Store::open(opts).unwrap();
        assert!(store.wait_for_indexes(Duration::from_secs(30)));
        assert_eq!(Some(&answers(&store)), want.as_ref());
        let stats = store.index_cache();
        assert!(stats.loads >= 5, "{stats:?}");
        assert!(
            stats.bytes <= one * 2,
            "one index at a time: {stats:?} (one is {one})"
        );
    }
}

#[test]
fn summaries_count_roots_errors_orphans_and_services() {
    let spans = build(&[vec![
        (0, 0, None, 10, false, 0, 0, false),
        (1, 1, Some(0), 5, true, 0, 0, false),
        (2, 0, Some(7), 3, true, 0, 0, false),
    ]])
    .remove(0);
    let s = TraceSummary::of(&spans).unwrap();
    assert_eq!(s.root_service.as_deref(), Some("api"));
    assert_eq!(s.root_name.as_deref(), Some("get"));
    assert_eq!(s.span_count, 3);
    assert_eq!(s.error_count, 2);
    assert_eq!(s.orphan_count, 1);
    assert_eq!(s.services, vec!["api", "cache", "db"]);
    assert_eq!(s.duration_ns(), 10_000);
}

#[test]
fn sealed_summaries_count_orphans_of_small_and_large_traces() {
    // The block index scans the ids of a trace of up to 48 spans and hashes a larger
    // one's: traces on both sides of the bound, each with one span whose parent never
    // arrived and one whose parent is the span before it.
    let shape = |n: usize| -> Vec<Gen> {
        (0..n)
            .map(|j| {
                let parent = match j {
                    0 => None,
                    _ if j == n / 2 => Some(n + 5),
                    _ => Some(j - 1),
                };
                (j % 3, j % 2, parent, 10 + j as u64, false, 0, 0, false)
            })
            .collect()
    };
    let traces = build(&[shape(5), shape(48), shape(49), shape(120)]);
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::new(tmp.path())).unwrap();
    for (i, t) in traces.iter().enumerate() {
        store.ingest(i as u64 + 1, t.clone()).unwrap();
    }
    store.seal().unwrap();
    assert!(store.wait_for_indexes(Duration::from_secs(30)));
    let (got, completeness) = store
        .search(&TraceQuery {
            end_ns: u64::MAX,
            limit: 10,
            ..TraceQuery::default()
        })
        .unwrap();
    assert!(completeness.is_complete(), "{completeness:?}");
    assert_eq!(got.len(), traces.len());
    for t in &traces {
        let g = got.iter().find(|g| g.trace_id == t[0].trace_id).unwrap();
        assert_eq!(g.span_count as usize, t.len());
        assert_eq!(g.orphan_count, 1, "trace of {} spans", t.len());
        assert_eq!(g, &TraceSummary::of(t).unwrap());
    }
}

#[test]
fn nearly_unique_values_become_needles_and_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::new(tmp.path())).unwrap();
    let o = Arc::new(Origin {
        service: "svc".into(),
        ..Origin::default()
    });
    let n = 3000u32;
    for t in 0..n {
        let mut tid = [0u8; 16];
        tid[12..].copy_from_slice(&t.to_be_bytes());
        store
            .ingest(
                u64::from(t) + 1,
                vec![Span {
                    trace_id: tid,
                    span_id: [1; 8],
                    parent_span_id: None,
                    name: "op".into(),
                    kind: SpanKind::Server,
                    start_ns: 1_000_000 + u64::from(t),
                    end_ns: 2_000_000 + u64::from(t),
                    status: StatusCode::Unset,
                    status_message: String::new(),
                    attributes: vec![(
                        "request.id".into(),
                        AttrValue::Str(format!("req-{t}").into()),
                    )],
                    events: Vec::new(),
                    links: Vec::new(),
                    origin: o.clone(),
                }],
            )
            .unwrap();
    }
    store.seal().unwrap();
    let dir = tmp.path().join("blocks");
    let sidx = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "sidx"))
        .unwrap();
    let postings =
        crate::search::read_postings(&dir, sidx.path().file_stem().unwrap().to_str().unwrap())
            .unwrap();
    assert!(
        matches!(
            postings.find("svc", "request.id", "req-1234"),
            Some(crate::search::Found::Candidates(c)) if c.len() == 1
        ),
        "3000 distinct values in 3000 traces are needles, not postings"
    );
    assert!(matches!(
        postings.find("svc", "request.id", "req-no-such"),
        Some(crate::search::Found::Candidates(c)) if c.is_empty()
    ));
    let (found, c) = store
        .search(&TraceQuery {
            service: Some("svc".into()),
            tags: vec![("request.id".into(), "req-1234".into())],
            end_ns: u64::MAX,
            limit: 5,
            ..TraceQuery::default()
        })
        .unwrap();
    assert!(c.is_complete());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].start_ns, 1_001_234);
}

#[test]
fn a_search_past_its_time_limit_answers_what_it_found_marked_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::new(tmp.path())).unwrap();
    let built = build(&[
        vec![(0, 0, None, 5, false, 0, 0, false)],
        vec![(0, 0, None, 5, false, 0, 0, false)],
        vec![(0, 0, None, 5, false, 0, 0, false)],
    ]);
    // Two traces in two sealed blocks, one in the head.
    for (i, t) in built.into_iter().enumerate() {
        store.ingest(i as u64 + 1, t).unwrap();
        if i < 2 {
            store.seal().unwrap();
        }
    }
    let q = TraceQuery {
        service: Some("api".into()),
        end_ns: u64::MAX,
        limit: 10,
        ..TraceQuery::default()
    };
    let (all, c) = store.search(&q).unwrap();
    assert_eq!((all.len(), c.is_complete()), (3, true));
    let (found, c) = store
        .search(&TraceQuery {
            time_limit: Some(Duration::ZERO),
            ..q
        })
        .unwrap();
    assert_eq!(found.len(), 1, "the head is always searched");
    assert!(
        c.reasons
            .iter()
            .any(|r| r.contains("time limit") && r.contains("2 of 2 blocks not searched")),
        "{c:?}"
    );
}

#[test]
fn blocks_with_more_operations_than_two_bytes_count_still_search_right() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::new(tmp.path())).unwrap();
    let o = Arc::new(Origin {
        service: "svc".into(),
        ..Origin::default()
    });
    let n = 70_000u32;
    let spans: Vec<Span> = (0..n)
        .map(|t| {
            let mut tid = [0u8; 16];
            tid[12..].copy_from_slice(&t.to_be_bytes());
            Span {
                trace_id: tid,
                span_id: [1; 8],
                parent_span_id: None,
                name: format!("op-{t}"),
                kind: SpanKind::Server,
                start_ns: 1_000_000 + u64::from(t),
                end_ns: 2_000_000 + u64::from(t),
                status: StatusCode::Unset,
                status_message: String::new(),
                attributes: Vec::new(),
                events: Vec::new(),
                links: Vec::new(),
                origin: o.clone(),
            }
        })
        .collect();
    store.ingest(1, spans).unwrap();
    store.seal().unwrap();
    let (found, c) = store
        .search(&TraceQuery {
            service: Some("svc".into()),
            operation: Some("op-69999".into()),
            end_ns: u64::MAX,
            limit: 5,
            ..TraceQuery::default()
        })
        .unwrap();
    assert!(c.is_complete(), "{c:?}");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].root_name.as_deref(), Some("op-69999"));
    assert_eq!(found[0].start_ns, 1_000_000 + 69_999);
}

#[test]
fn the_sample_order_spreads_over_the_range_and_is_stable() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::new(tmp.path())).unwrap();
    let origin = Arc::new(Origin {
        service: "api".into(),
        ..Origin::default()
    });
    // 2000 one-span traces a second apart (starts in whole microseconds, as some SDKs
    // send), one in twenty failing; four sealed blocks and the head.
    let base = 1_700_000_000_000_000_000u64;
    let mut seq = 0;
    for chunk in 0..5u64 {
        let spans: Vec<Span> = (chunk * 400..(chunk + 1) * 400)
            .map(|i| {
                let mut tid: TraceId = [7; 16];
                tid[8..].copy_from_slice(&i.to_be_bytes());
                let start = base + i * 1_000_000_000 + (i * 7919 % 1000) * 1000;
                Span {
                    trace_id: tid,
                    span_id: [1; 8],
                    parent_span_id: None,
                    name: "get".into(),
                    kind: faultline_model::span::SpanKind::Server,
                    start_ns: start,
                    end_ns: start + 5_000_000,
                    status: if i % 20 == 3 {
                        faultline_model::span::StatusCode::Error
                    } else {
                        faultline_model::span::StatusCode::Unset
                    },
                    status_message: String::new(),
                    attributes: Vec::new(),
                    events: Vec::new(),
                    links: Vec::new(),
                    origin: origin.clone(),
                }
            })
            .collect();
        seq += 1;
        store.ingest(seq, spans).unwrap();
        if chunk < 4 {
            store.seal().unwrap();
        }
    }
    let q = TraceQuery {
        service: Some("api".into()),
        start_ns: base,
        end_ns: u64::MAX,
        sort: SortOrder::Sample,
        limit: 200,
        ..TraceQuery::default()
    };
    let (found, c) = store.search(&q).unwrap();
    assert!(c.is_complete());
    assert_eq!(found.len(), 200);
    let older = found
        .iter()
        .filter(|t| t.start_ns < base + 1000 * 1_000_000_000)
        .count();
    assert!(
        (70..=130).contains(&older),
        "{older} of 200 in the older half"
    );
    let failing = found.iter().filter(|t| t.error_count > 0).count();
    assert!(
        (2..=22).contains(&failing),
        "{failing} of 200 failing, 5% sent"
    );
    let (again, _) = store.search(&q).unwrap();
    let ids = |v: &[TraceSummary]| v.iter().map(|t| t.trace_id).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&found), "the same sample on every asking");
    let (newest, _) = store
        .search(&TraceQuery {
            sort: SortOrder::Newest,
            ..q
        })
        .unwrap();
    assert!(
        newest
            .iter()
            .all(|t| t.start_ns >= base + 1800 * 1_000_000_000)
    );
}

/// The head tells its first 63 services apart by a bit per trace and lets the rest share
/// one; traces arrive out of start order. Every service's search, in every order, gives
/// what the model gives, and a service the head never saw finds nothing.
#[test]
fn head_search_by_service_holds_past_63_services_and_out_of_order_arrival() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::new(tmp.path())).unwrap();
    let origins: Vec<Arc<Origin>> = (0..80)
        .map(|i| {
            Arc::new(Origin {
                service: format!("svc-{i}"),
                ..Origin::default()
            })
        })
        .collect();
    let base = 1_700_000_000_000_000_000u64;
    let mut all = Vec::new();
    // 400 traces of 1-4 spans; trace i starts at a time unrelated to when it arrives.
    for i in 0..400u64 {
        let mut tid: TraceId = [3; 16];
        tid[8..].copy_from_slice(&i.to_be_bytes());
        let start = base + (i * 7_919 % 400) * 1_000_000_000;
        let spans: Vec<Span> = (0..1 + i % 4)
            .map(|j| Span {
                trace_id: tid,
                span_id: [j as u8 + 1; 8],
                parent_span_id: (j > 0).then_some([1; 8]),
                name: "op".into(),
                kind: SpanKind::Server,
                start_ns: start + j * 1_000_000,
                end_ns: start + j * 1_000_000 + (i % 13 + 1) * 10_000_000,
                status: StatusCode::Unset,
                status_message: String::new(),
                attributes: vec![("k".into(), AttrValue::Str(format!("v{}", i % 3).into()))],
                events: Vec::new(),
                links: Vec::new(),
                origin: origins[((i * 31 + j * 17) % 80) as usize].clone(),
            })
            .collect();
        all.extend(spans.iter().cloned());
        store.ingest(i + 1, spans).unwrap();
    }
    let mut checked = 0;
    for svc in (0..80)
        .map(|i| format!("svc-{i}"))
        .chain(["absent".to_string()])
    {
        for sort in [SortOrder::Newest, SortOrder::Oldest, SortOrder::Longest] {
            for tags in [vec![], vec![("k".to_string(), "v1".to_string())]] {
                let q = TraceQuery {
                    service: Some(svc.clone()),
                    tags,
                    start_ns: 0,
                    end_ns: u64::MAX,
                    sort,
                    limit: 3,
                    ..TraceQuery::default()
                };
                check(&store, &all, &q).unwrap();
                checked += usize::from(!model(&all, &q).is_empty());
            }
        }
    }
    assert!(checked > 400, "only {checked} queries had answers");
}
