//! Tail-sampling tests: decisions after the wait, records that survive restarts, a crash
//! before the manifest, compaction of decided blocks.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use faultline_model::span::{AttrValue, Origin, Span, SpanKind, StatusCode};

use crate::tail::TailPolicy;
use crate::{FaultHook, FaultPoint, SpanStore, Store, StoreOptions, TraceQuery};

const NOW_S: u64 = 2_000_000_000;

fn origin(service: &str) -> Arc<Origin> {
    Arc::new(Origin {
        service: service.into(),
        resource: vec![("service.name".into(), AttrValue::Str(service.into()))],
        scope_name: String::new(),
        scope_version: String::new(),
    })
}

/// Trace `t`: a root and one child, the child failing when `error`.
fn trace(t: u8, error: bool) -> Vec<Span> {
    let o = origin("shop");
    let span = |id: u8, parent: Option<u8>, error: bool| Span {
        trace_id: [t; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        name: format!("op-{id}"),
        kind: SpanKind::Server,
        start_ns: 1_000_000 + u64::from(id),
        end_ns: 5_000_000,
        status: if error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        status_message: String::new(),
        attributes: Vec::new(),
        events: Vec::new(),
        links: Vec::new(),
        origin: o.clone(),
    };
    vec![span(1, None, false), span(2, Some(1), error)]
}

fn opts(dir: &std::path::Path) -> StoreOptions {
    StoreOptions {
        block_max_spans: 1000,
        block_max_age: Duration::from_secs(3600),
        tail: Some(TailPolicy {
            enabled: true,
            wait_secs: 1,
            rest_traces_per_second: 0.0,
            ..TailPolicy::default()
        }),
        ..StoreOptions::new(dir)
    }
}

/// Ingests traces `first..=last` (every fourth failing) as one record and seals them.
fn seal_traces(store: &Store, seq: u64, first: u8, last: u8) {
    let spans = (first..=last).flat_map(|t| trace(t, t % 4 == 0)).collect();
    store.ingest(seq, spans).unwrap();
    store.seal().unwrap().unwrap();
}

fn found(store: &Store) -> usize {
    store
        .search(&TraceQuery {
            service: Some("shop".into()),
            start_ns: 0,
            end_ns: u64::MAX,
            limit: 1000,
            ..TraceQuery::default()
        })
        .unwrap()
        .0
        .len()
}

#[test]
fn blocks_are_decided_after_the_wait_and_the_decisions_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    seal_traces(&store, 1, 1, 20);
    assert_eq!(
        store.tail_sample(NOW_S).unwrap(),
        None,
        "not before the wait"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let passed = store.tail_sample(NOW_S).unwrap().unwrap();
    assert_eq!((passed.kept, passed.dropped), (5, 15));
    assert_ne!(
        passed.now, passed.block,
        "rewritten without the dropped traces"
    );
    assert_eq!(store.tail_sample(NOW_S).unwrap(), None, "decided once");
    let check = |store: &Store| {
        for t in 1..=20u8 {
            let spans = store.trace(&[t; 16]).unwrap().spans.len();
            if t % 4 == 0 {
                assert_eq!(spans, 2, "failing trace {t} kept");
                assert_eq!(store.dropped_by_policy(&[t; 16]), None);
            } else {
                assert_eq!(spans, 0, "trace {t} dropped");
                assert_eq!(store.dropped_by_policy(&[t; 16]), Some(NOW_S));
            }
        }
        assert_eq!(store.dropped_by_policy(&[99; 16]), None, "never stored");
        assert_eq!(found(store), 5);
        // The rollups counted every span before the decision.
        assert_eq!(
            store.red("shop", None, None, 0, 60, 60).unwrap().0[0].count,
            40
        );
        let r = store.tail_report().unwrap();
        let d = r.services["shop"];
        assert_eq!((d.kept_error.traces, d.kept_error.spans), (5, 10));
        assert_eq!((d.dropped.traces, d.dropped.spans), (15, 30));
        assert_eq!(d.kept_rate.traces + d.kept_slow.traces, 0);
        assert_eq!((r.blocks_decided, r.blocks_waiting), (1, 0));
    };
    check(&store);
    drop(store);
    let (store, report) = Store::open(opts(tmp.path())).unwrap();
    assert!(report.quarantined.is_empty(), "{report:?}");
    assert!(store.wait_for_indexes(Duration::from_secs(10)));
    assert_eq!(store.tail_sample(NOW_S).unwrap(), None, "still decided");
    check(&store);
}

#[test]
fn a_crash_before_the_manifest_leaves_the_block_undecided_and_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    o.fault = Some(FaultHook(Arc::new(|p| match p {
        FaultPoint::TailBeforeManifest => Err(std::io::Error::other("crash")),
        _ => Ok(()),
    })));
    let (store, _) = Store::open(o).unwrap();
    seal_traces(&store, 1, 1, 20);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(store.tail_sample(NOW_S).is_err());
    drop(store);
    let (store, report) = Store::open(opts(tmp.path())).unwrap();
    // The rewritten block's files and its record were never listed.
    assert_eq!(report.removed_orphans, 5, "{report:?}");
    assert_eq!(report.spans, 40, "the undecided block is whole");
    assert_eq!(store.dropped_by_policy(&[1; 16]), None);
    // Blocks from before the start are due at once; the decision is the same.
    let passed = store.tail_sample(NOW_S).unwrap().unwrap();
    assert_eq!((passed.kept, passed.dropped), (5, 15));
    assert_eq!(
        store.tail_report().unwrap().services["shop"].dropped.traces,
        15
    );
}

#[test]
fn compaction_waits_for_decisions_and_merges_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    o.block_max_spans = 400; // blocks under 100 spans are small
    let (store, _) = Store::open(o.clone()).unwrap();
    seal_traces(&store, 1, 1, 8);
    seal_traces(&store, 2, 9, 16);
    seal_traces(&store, 3, 17, 24);
    assert_eq!(store.compact().unwrap(), 0, "undecided blocks wait");
    drop(store);
    let (store, _) = Store::open(o).unwrap();
    for _ in 0..3 {
        assert!(store.tail_sample(NOW_S).unwrap().is_some());
    }
    assert_eq!(store.compact().unwrap(), 3);
    let r = store.tail_report().unwrap();
    assert_eq!(r.blocks_decided, 1);
    let d = r.services["shop"];
    assert_eq!((d.kept_error.traces, d.dropped.traces), (6, 18));
    assert_eq!(store.dropped_by_policy(&[9; 16]), Some(NOW_S));
    assert_eq!(store.trace(&[16; 16]).unwrap().spans.len(), 2);
    assert_eq!(store.tail_sample(NOW_S).unwrap(), None);
}

#[test]
fn with_nothing_to_drop_the_block_is_only_marked_decided() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    if let Some(t) = o.tail.as_mut() {
        t.rest_traces_per_second = 1e9;
    }
    let (store, _) = Store::open(o.clone()).unwrap();
    seal_traces(&store, 1, 1, 10);
    drop(store);
    let (store, _) = Store::open(o.clone()).unwrap();
    let passed = store.tail_sample(NOW_S).unwrap().unwrap();
    assert_eq!(
        (passed.block.as_str(), passed.dropped),
        (passed.now.as_str(), 0)
    );
    assert_eq!(
        store.tail_report().unwrap().services["shop"]
            .kept_rate
            .traces,
        8
    );
    drop(store);
    let (store, _) = Store::open(o).unwrap();
    assert_eq!(store.tail_sample(NOW_S).unwrap(), None, "the mark survived");
    assert!(store.wait_for_indexes(Duration::from_secs(10)));
    assert_eq!(found(&store), 10);
}
