//! Store tests: block round trips, sealing, crash points around the manifest, quarantine.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use faultline_model::span::{AttrValue, Event, Link, Origin, Span, SpanKind, StatusCode};

use crate::block::{BlockReader, write_block};
use crate::{SpanStore, Store, StoreOptions};

fn origin(service: &str) -> Arc<Origin> {
    Arc::new(Origin {
        service: service.into(),
        resource: vec![
            ("service.name".into(), AttrValue::Str(service.into())),
            ("host.name".into(), AttrValue::Str("h".into())),
        ],
        scope_name: "lib".into(),
        scope_version: "1".into(),
    })
}

fn span(trace: u8, id: u8, parent: Option<u8>, o: &Arc<Origin>) -> Span {
    Span {
        trace_id: [trace; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        name: format!("op-{id}"),
        kind: SpanKind::Server,
        start_ns: 1_000 + u64::from(id),
        end_ns: 5_000 + u64::from(id),
        status: if id.is_multiple_of(2) {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        status_message: if id.is_multiple_of(2) {
            "boom".into()
        } else {
            String::new()
        },
        attributes: vec![
            ("s".into(), AttrValue::Str("v".into())),
            ("i".into(), AttrValue::Int(-7)),
            ("d".into(), AttrValue::Double(1.5)),
            ("b".into(), AttrValue::Bool(true)),
            ("x".into(), AttrValue::Bytes(vec![1, 2, 255])),
            (
                "a".into(),
                AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Str("two".into())]),
            ),
            (
                "k".into(),
                AttrValue::KvList(vec![("inner".into(), AttrValue::Bool(false))]),
            ),
        ],
        events: vec![Event {
            time_ns: 2_000,
            name: "exception".into(),
            attributes: vec![("exception.type".into(), AttrValue::Str("E".into()))],
        }],
        links: vec![Link {
            trace_id: [9; 16],
            span_id: [8; 8],
            attributes: vec![],
        }],
        origin: o.clone(),
    }
}

#[test]
fn block_round_trips_every_field_and_reads_one_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (origin("a"), origin("b"));
    let mut spans = Vec::new();
    for t in 1..=50u8 {
        spans.push(span(t, 1, None, &a));
        spans.push(span(t, 2, Some(1), &b));
    }
    let expected: Vec<Span> = spans
        .iter()
        .filter(|s| s.trace_id == [7; 16])
        .cloned()
        .collect();
    let written = write_block(tmp.path(), "b1", &spans).unwrap();
    assert_eq!((written.spans, written.traces), (100, 50));
    let r = BlockReader::open(tmp.path(), "b1").unwrap();
    assert!(r.contains(&[7; 16]));
    assert!(!r.contains(&[77; 16]));
    let got = r.trace(&[7; 16]).unwrap();
    assert_eq!(got, expected, "every field survives");
    assert_eq!(r.all().unwrap().len(), 100);
    assert!(r.trace(&[77; 16]).unwrap().is_empty());
}

#[test]
fn corrupt_index_or_parquet_is_refused_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    write_block(tmp.path(), "b1", &[span(1, 1, None, &a)]).unwrap();
    let idx = tmp.path().join("b1.tidx");
    let mut bytes = std::fs::read(&idx).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&idx, &bytes).unwrap();
    let e = BlockReader::open(tmp.path(), "b1").unwrap_err().to_string();
    assert!(e.contains("b1.tidx") && e.contains("checksum"), "{e}");
    write_block(tmp.path(), "b2", &[span(1, 1, None, &a)]).unwrap();
    std::fs::write(tmp.path().join("b2.parquet"), b"not parquet").unwrap();
    let e = BlockReader::open(tmp.path(), "b2").unwrap_err().to_string();
    assert!(
        e.contains("b2.parquet") && e.contains("unreadable Parquet"),
        "{e}"
    );
}

fn opts(dir: &std::path::Path) -> StoreOptions {
    StoreOptions {
        block_max_spans: 10,
        block_max_age: Duration::from_secs(3600),
        ..StoreOptions::new(dir)
    }
}

#[test]
fn spans_are_queryable_from_head_sealing_and_blocks_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (origin("a"), origin("b"));
    let (store, report) = Store::open(opts(tmp.path())).unwrap();
    assert_eq!(report.blocks, 0);
    store
        .ingest(1, vec![span(1, 1, None, &a), span(1, 2, Some(1), &b)])
        .unwrap();
    assert_eq!(
        store.trace(&[1; 16]).unwrap().spans.len(),
        2,
        "queryable from the head at once"
    );
    assert!(!store.should_seal());
    for seq in 2..=6u64 {
        store
            .ingest(
                seq,
                vec![
                    span(seq as u8, 1, None, &a),
                    span(1, 10 + seq as u8, Some(1), &a),
                ],
            )
            .unwrap();
    }
    assert!(store.should_seal());
    let meta = store.seal().unwrap().unwrap();
    assert_eq!((meta.spans, meta.source_seq), (12, 6));
    assert_eq!(store.durable_seq(), 6);
    store.ingest(7, vec![span(1, 30, Some(1), &b)]).unwrap();
    let t = store.trace(&[1; 16]).unwrap();
    assert_eq!(t.spans.len(), 8, "block and head together");
    assert!(t.completeness.is_complete());
    assert!(
        t.spans.windows(2).all(|w| w[0].start_ns <= w[1].start_ns),
        "ordered by start"
    );
    assert_eq!(
        store.services().unwrap().0,
        vec!["a".to_string(), "b".to_string()]
    );
    drop(store);
    // After a restart the head is gone (the WAL replays it); the block is back.
    let (store, report) = Store::open(opts(tmp.path())).unwrap();
    assert_eq!((report.blocks, report.spans), (1, 12));
    assert_eq!(store.durable_seq(), 6);
    assert_eq!(store.trace(&[1; 16]).unwrap().spans.len(), 7);
}

#[test]
fn a_crash_before_the_manifest_leaves_no_trace_of_the_block() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    store.ingest(1, vec![span(1, 1, None, &a)]).unwrap();
    store.seal().unwrap();
    drop(store);
    // A block written but never published (crash before the manifest), and a torn temp.
    let dir = tmp.path().join("blocks");
    write_block(&dir, "00000000000000000009", &[span(2, 1, None, &a)]).unwrap();
    std::fs::write(dir.join("00000000000000000010.parquet.tmp"), b"torn").unwrap();
    let (store, report) = Store::open(opts(tmp.path())).unwrap();
    // .parquet, .tidx and .sidx of the unpublished block, and the torn temp.
    assert_eq!(report.removed_orphans, 4, "{report:?}");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("00000000000000000009") || n.contains("00000000000000000010"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        store.durable_seq(),
        1,
        "replay starts after the last published block"
    );
    assert!(store.trace(&[2; 16]).unwrap().spans.is_empty());
    assert_eq!(store.trace(&[1; 16]).unwrap().spans.len(), 1);
}

/// A sealed head waits for the next ingest to free it (the thread that allocated its
/// spans), or for the sealer once it is a second old.
#[test]
fn a_sealed_head_is_freed_by_the_next_ingest_or_when_old() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    let held = || {
        store
            .retired
            .lock()
            .unwrap()
            .as_ref()
            .map(|(h, _)| h.spans.len())
    };
    store
        .ingest(1, vec![span(1, 1, None, &a), span(1, 2, Some(1), &a)])
        .unwrap();
    store.seal().unwrap();
    assert_eq!(held(), Some(2));
    store.free_retired(std::time::Duration::from_secs(3600));
    assert_eq!(held(), Some(2), "younger than asked: kept");
    store.ingest(2, vec![span(2, 1, None, &a)]).unwrap();
    assert_eq!(held(), None, "the ingest freed it");
    store.seal().unwrap();
    assert_eq!(held(), Some(1));
    store.free_retired(std::time::Duration::ZERO);
    assert_eq!(held(), None);
    // Every span is still answered, from the blocks.
    assert_eq!(store.trace(&[1; 16]).unwrap().spans.len(), 2);
    assert_eq!(store.trace(&[2; 16]).unwrap().spans.len(), 1);
}

/// The batch that fills a head lands in the room made for it: the head's spans are not
/// moved to a larger vector on the way to its seal.
#[test]
fn the_batch_crossing_a_block_fits_the_room_of_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let options = StoreOptions {
        block_max_spans: 1_000,
        ..opts(tmp.path())
    };
    let (store, _) = Store::open(options).unwrap();
    let batch = |b: usize| -> Vec<Span> {
        (b * 300..(b + 1) * 300)
            .map(|k| span((k / 256 + 1) as u8, (k % 256) as u8, None, &a))
            .collect()
    };
    store.ingest(1, batch(0)).unwrap();
    let first = store.head_room();
    for b in 1..4 {
        store.ingest(b as u64 + 1, batch(b)).unwrap();
    }
    assert!(store.should_seal(), "1,200 spans fill a 1,000-span block");
    assert_eq!(store.head_spans(), 1_200);
    assert_eq!(store.head_room(), first, "the spans were not moved");
}

#[test]
fn an_unreadable_block_is_quarantined_and_answers_say_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    store.ingest(1, vec![span(1, 1, None, &a)]).unwrap();
    let bad = store.seal().unwrap().unwrap();
    store.ingest(2, vec![span(2, 1, None, &a)]).unwrap();
    store.seal().unwrap();
    drop(store);
    std::fs::write(
        tmp.path()
            .join("blocks")
            .join(format!("{}.parquet", bad.id)),
        b"garbage",
    )
    .unwrap();
    let (store, report) = Store::open(opts(tmp.path())).unwrap();
    assert_eq!(report.blocks, 1);
    assert_eq!(report.quarantined.len(), 1);
    assert!(
        tmp.path()
            .join("blocks/quarantine")
            .join(format!("{}.parquet", bad.id))
            .exists()
    );
    let t = store.trace(&[2; 16]).unwrap();
    assert_eq!(t.spans.len(), 1, "the rest is served");
    assert!(!t.completeness.is_complete());
    assert!(t.completeness.reasons[0].contains("quarantined"));
}

#[test]
fn red_rollups_cover_head_and_blocks_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    // span() starts at 1_000 ns: minute 0.
    store
        .ingest(1, (1..=6).map(|i| span(i, 1, None, &a)).collect())
        .unwrap();
    store.seal().unwrap().unwrap();
    store
        .ingest(2, (7..=9).map(|i| span(i, 1, None, &a)).collect())
        .unwrap();
    let (points, c) = store.red("a", None, None, 0, 60, 60).unwrap();
    assert!(c.is_complete());
    assert_eq!(points[0].count, 9, "blocks and head");
    let (ops, _) = store.operations("a").unwrap();
    assert_eq!(
        ops,
        vec![("op-1".to_string(), faultline_model::span::SpanKind::Server)]
    );
    drop(store);
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    assert_eq!(
        store.red("a", None, None, 0, 60, 60).unwrap().0[0].count,
        6,
        "the block's rollup file; the head replays from the WAL"
    );
    drop(store);
    // A corrupt rollup file is reported, not fatal.
    let red = std::fs::read_dir(tmp.path().join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "red"))
        .unwrap();
    std::fs::write(&red, b"garbage").unwrap();
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    let (points, c) = store.red("a", None, None, 0, 60, 60).unwrap();
    assert_eq!(points[0].count, 0);
    assert!(c.reasons[0].contains("RED rollups"), "{:?}", c.reasons);
}

#[test]
fn retention_deletes_by_age_and_size_and_keeps_red_of_evicted_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let now_ns = 1_900_000_000_000_000_000u64;
    let recent = |trace: u8, id: u8| {
        let mut s = span(trace, id, None, &a);
        s.start_ns = now_ns - 120_000_000_000;
        s.end_ns = s.start_ns + 1_000_000;
        s
    };
    let mut o = opts(tmp.path());
    o.retention = Duration::from_secs(24 * 3600);
    let (store, _) = Store::open(o.clone()).unwrap();
    // Block A: spans from 1970, far past retention. Block B: two minutes old.
    store.ingest(1, vec![span(1, 1, None, &a)]).unwrap();
    let old = store.seal().unwrap().unwrap();
    store.ingest(2, vec![recent(2, 1), recent(2, 2)]).unwrap();
    let b = store.seal().unwrap().unwrap();
    let dir = tmp.path().join("blocks");
    assert!(dir.join(format!("{}.parquet", old.id)).exists());
    let removed = store.enforce_retention(now_ns).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].id, old.id);
    for ext in ["parquet", "tidx", "red"] {
        assert!(
            !dir.join(format!("{}.{ext}", old.id)).exists(),
            "{ext} deleted"
        );
    }
    assert!(
        store.trace(&[1; 16]).unwrap().spans.is_empty(),
        "gone from queries"
    );
    assert_eq!(store.trace(&[2; 16]).unwrap().spans.len(), 2);
    assert_eq!(
        store.red("a", None, None, 0, 60, 60).unwrap().0[0].count,
        0,
        "old RED cells pruned too"
    );
    assert_eq!(store.blocks().len(), 1);
    assert!(
        store.enforce_retention(now_ns).unwrap().is_empty(),
        "idempotent"
    );
    drop(store);

    // Size: room for one block only; the older recent block is evicted, its RED kept.
    o.max_bytes = b.bytes + b.bytes / 2;
    let (store, _) = Store::open(o.clone()).unwrap();
    store.ingest(3, vec![recent(3, 1)]).unwrap();
    store.seal().unwrap().unwrap();
    let removed = store.enforce_retention(now_ns).unwrap();
    assert_eq!(
        removed.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![b.id.clone()]
    );
    assert!(store.trace(&[2; 16]).unwrap().spans.is_empty());
    let minute = (now_ns - 120_000_000_000) / 60_000_000_000 * 60;
    let red_count = |s: &Store| s.red("a", None, None, minute, minute + 60, 60).unwrap().0[0].count;
    assert_eq!(
        red_count(&store),
        3,
        "RED still counts the evicted block's spans"
    );
    drop(store);
    let (store, _) = Store::open(o).unwrap();
    assert_eq!(red_count(&store), 3, "from the archive after a restart");
    assert!(dir.join("archive.rollup").exists());
}

#[test]
fn compaction_merges_small_blocks_and_keeps_every_span_and_red_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let mut o = opts(tmp.path());
    o.block_max_spans = 40; // small blocks are under 10 spans
    let (store, _) = Store::open(o.clone()).unwrap();
    for seq in 1..=5u64 {
        store
            .ingest(
                seq,
                vec![
                    span(seq as u8, 1, None, &a),
                    span(seq as u8, 2, Some(1), &a),
                ],
            )
            .unwrap();
        store.seal().unwrap().unwrap();
    }
    store
        .ingest(6, (0..20).map(|i| span(100 + i, 1, None, &a)).collect())
        .unwrap();
    store.seal().unwrap().unwrap(); // a large block ends the run
    let before: Vec<String> = store.blocks().iter().map(|b| b.id.clone()).collect();
    assert_eq!(store.compact().unwrap(), 5);
    assert_eq!(store.compact().unwrap(), 0, "nothing left to merge");
    let blocks = store.blocks();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].spans, 10);
    assert_eq!(blocks[0].source_seq, 5);
    assert_eq!(store.durable_seq(), 6, "the WAL position is unchanged");
    for t in 1..=5u8 {
        assert_eq!(
            store.trace(&[t; 16]).unwrap().spans.len(),
            2,
            "trace {t} intact"
        );
    }
    assert_eq!(
        store.red("a", None, None, 0, 60, 60).unwrap().0[0].count,
        30
    );
    let dir = tmp.path().join("blocks");
    for id in &before[..5] {
        assert!(
            !dir.join(format!("{id}.parquet")).exists(),
            "old block {id} deleted"
        );
    }
    drop(store);
    let (store, report) = Store::open(o).unwrap();
    assert_eq!((report.blocks, report.removed_orphans), (2, 0));
    assert_eq!(
        store.red("a", None, None, 0, 60, 60).unwrap().0[0].count,
        30,
        "merged RED cells persisted"
    );
    assert_eq!(store.trace(&[3; 16]).unwrap().spans.len(), 2);
}

#[test]
fn traces_split_over_merged_and_kept_blocks_stay_whole_through_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let mut o = opts(tmp.path());
    o.block_max_spans = 40;
    let (store, _) = Store::open(o.clone()).unwrap();
    // Trace 7 in the two small blocks only; trace 8 in both and in the large one after.
    store
        .ingest(1, vec![span(7, 1, None, &a), span(8, 1, None, &a)])
        .unwrap();
    store.seal().unwrap().unwrap();
    store
        .ingest(2, vec![span(7, 2, Some(1), &a), span(8, 2, Some(1), &a)])
        .unwrap();
    store.seal().unwrap().unwrap();
    let mut large: Vec<Span> = (0..19).map(|i| span(100 + i, 1, None, &a)).collect();
    large.push(span(8, 3, Some(1), &a));
    store.ingest(3, large).unwrap();
    store.seal().unwrap().unwrap();
    let lens = |store: &Store| -> Vec<usize> {
        let batch = store.traces(&[[7; 16], [8; 16]]).unwrap();
        let one = [7u8, 8].map(|t| store.trace(&[t; 16]).unwrap().spans.len());
        batch.iter().map(|t| t.spans.len()).chain(one).collect()
    };
    assert_eq!(lens(&store), [2, 3, 2, 3], "before compaction");
    assert_eq!(store.compact().unwrap(), 2);
    assert_eq!(store.blocks().len(), 2);
    assert_eq!(lens(&store), [2, 3, 2, 3], "after compaction");
    // A span of trace 7 in the head joins the merged block's.
    store.ingest(4, vec![span(7, 3, Some(1), &a)]).unwrap();
    assert_eq!(lens(&store), [3, 3, 3, 3], "with the head");
    store.seal().unwrap().unwrap();
    assert_eq!(lens(&store), [3, 3, 3, 3], "sealed");
    drop(store);
    let (store, _) = Store::open(o).unwrap();
    assert_eq!(lens(&store), [3, 3, 3, 3], "after a restart");
}

#[test]
fn dependency_edges_in_either_arrival_order_survive_sealing_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (front, cart, db) = (origin("front"), origin("cart"), origin("db"));
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    // Parent first: front -> cart (the child is an error, id 2).
    store
        .ingest(
            1,
            vec![span(1, 1, None, &front), span(1, 2, Some(1), &cart)],
        )
        .unwrap();
    // Child first, in an earlier request: cart -> db, then its parent arrives.
    store.ingest(2, vec![span(1, 3, Some(2), &db)]).unwrap();
    // Same-service child: no edge.
    store.ingest(3, vec![span(1, 5, Some(3), &db)]).unwrap();
    let (deps, _) = store.dependencies(0, 120).unwrap();
    let got: Vec<(String, String, u64, u64)> = deps
        .into_iter()
        .map(|d| (d.parent, d.child, d.calls, d.errors))
        .collect();
    assert_eq!(
        got,
        vec![
            ("cart".into(), "db".into(), 1, 0),
            ("front".into(), "cart".into(), 1, 1)
        ],
        "edges in both arrival orders, errors of the callee counted"
    );
    store.seal().unwrap().unwrap();
    drop(store);
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    assert_eq!(
        store.dependencies(0, 120).unwrap().0.len(),
        2,
        "persisted with the block"
    );
    assert!(
        store.dependencies(3600, 7200).unwrap().0.is_empty(),
        "time range respected"
    );
}

/// A parent is found among its trace's spans whatever the trace's size (ids scanned up
/// to 64 spans, a map beyond) and whichever of parent and child arrives first.
#[test]
fn calls_are_counted_in_long_traces_in_any_arrival_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (origin("a"), origin("b"));
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    // Chains of 150 spans, each the child of the one before, services alternating: 149
    // calls each. Ids in three orders: parents first, children first, interleaved.
    let ids: Vec<u8> = (1..=150).collect();
    let interleaved: Vec<u8> = ids
        .iter()
        .step_by(2)
        .chain(ids.iter().skip(1).step_by(2))
        .copied()
        .collect();
    let orders = [
        ids.clone(),
        ids.iter().rev().copied().collect(),
        interleaved,
    ];
    let mut seq = 0;
    for (t, order) in orders.iter().enumerate() {
        for batch in order.chunks(20) {
            seq += 1;
            let spans = batch
                .iter()
                .map(|&id| {
                    let o = if id % 2 == 0 { &a } else { &b };
                    span(t as u8 + 1, id, (id > 1).then(|| id - 1), o)
                })
                .collect();
            store.ingest(seq, spans).unwrap();
        }
    }
    let (deps, _) = store.dependencies(0, 120).unwrap();
    let calls: Vec<(String, String, u64)> = deps
        .into_iter()
        .map(|d| (d.parent, d.child, d.calls))
        .collect();
    // b (odd ids) calls a (even ids) 75 times per chain, a calls b 74 times.
    assert_eq!(
        calls,
        vec![
            ("a".into(), "b".into(), 3 * 74),
            ("b".into(), "a".into(), 3 * 75)
        ]
    );
}

/// RED cells and dependency calls count each span once wherever it is: in the head, in
/// a head being sealed (read from the observer's checkpoint, which runs while the head is
/// set aside), back in the head after a failed seal (with a newer head's spans and a call
/// between the two), in a block, and after a restart.
#[test]
fn red_and_calls_count_each_span_once_through_failed_and_good_seals() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::{Mutex, OnceLock, Weak};
    type Seen = (u64, Vec<(String, String, u64)>);
    fn seen(store: &Store) -> Seen {
        let count = store.red("cart", None, None, 0, 60, 60).unwrap().0[0].count;
        let calls = store.dependencies(0, 120).unwrap().0;
        (
            count,
            calls
                .into_iter()
                .map(|d| (d.parent, d.child, d.calls))
                .collect(),
        )
    }
    #[derive(Default)]
    struct Probe {
        store: OnceLock<Weak<Store>>,
        fail: AtomicBool,
        /// Spans ingested during the next checkpoint (into the head after the one being
        /// sealed).
        newer: Mutex<Vec<Span>>,
        seen: Mutex<Vec<Seen>>,
    }
    impl crate::SpanObserver for Probe {
        fn observe(&self, _: &[Span]) {}
        fn checkpoint(&self) -> Result<(), String> {
            if let Some(store) = self.store.get().and_then(Weak::upgrade) {
                self.seen.lock().unwrap().push(seen(&store));
                let newer = std::mem::take(&mut *self.newer.lock().unwrap());
                if !newer.is_empty() {
                    store.ingest(2, newer).unwrap();
                }
            }
            match self.fail.load(SeqCst) {
                true => Err("refused by the test".into()),
                false => Ok(()),
            }
        }
    }
    let calls = |n| vec![("front".to_string(), "cart".to_string(), n)];
    let tmp = tempfile::tempdir().unwrap();
    let (front, cart) = (origin("front"), origin("cart"));
    let store = Arc::new(Store::open(opts(tmp.path())).unwrap().0);
    let probe = Arc::new(Probe::default());
    probe.store.set(Arc::downgrade(&store)).unwrap();
    assert!(store.set_observer(probe.clone()));
    // Trace 1: front -> cart. Trace 2: a cart span whose parent (front) comes later.
    store
        .ingest(
            1,
            vec![
                span(1, 1, None, &front),
                span(1, 2, Some(1), &cart),
                span(2, 3, Some(4), &cart),
            ],
        )
        .unwrap();
    assert_eq!(seen(&store), (2, calls(1)), "in the head");
    // A seal fails; meanwhile trace 2's parent arrives in the next head.
    probe.fail.store(true, SeqCst);
    *probe.newer.lock().unwrap() = vec![span(2, 4, None, &front)];
    assert!(store.seal().is_err(), "the checkpoint refuses");
    assert_eq!(
        seen(&store),
        (2, calls(2)),
        "back in the head, with the newer head's spans and the call between the two"
    );
    probe.fail.store(false, SeqCst);
    store.seal().unwrap().unwrap();
    assert_eq!(seen(&store), (2, calls(2)), "in the block");
    assert_eq!(
        *probe.seen.lock().unwrap(),
        vec![(2, calls(1)), (2, calls(2))],
        "while each head was being sealed"
    );
    store.ingest(3, vec![span(3, 5, None, &cart)]).unwrap();
    assert_eq!(seen(&store), (3, calls(2)), "block and head");
    drop(store);
    let store = Store::open(opts(tmp.path())).unwrap().0;
    assert_eq!(
        seen(&store),
        (2, calls(2)),
        "the block's rollups after a restart"
    );
}

/// Live data first: records 4..=6 are deferred while 7 and 8 are indexed; the manifest
/// keeps 4..=6 pending (so the WAL keeps them) across a restart until their replay is
/// sealed, and no record is replayed twice.
#[test]
fn a_deferred_backlog_becomes_durable_out_of_order() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    for seq in 1..=3u64 {
        store
            .ingest(seq, vec![span(seq as u8, 1, None, &a)])
            .unwrap();
    }
    store.defer(4, 6).unwrap();
    assert!(store.is_pending(5) && !store.is_pending(7));
    store.ingest(7, vec![span(7, 1, None, &a)]).unwrap();
    assert_eq!(
        store.ingested_seq(),
        7,
        "the deferred records count as handed over"
    );
    store.seal().unwrap().unwrap();
    assert_eq!(store.durable_seq(), 3, "the WAL must keep 4..=6");
    assert_eq!(store.source_seq(), 7);
    // Part of the backlog is replayed and sealed, then the process stops.
    store.ingest(4, vec![span(4, 1, None, &a)]).unwrap();
    store.ingest(8, vec![span(8, 1, None, &a)]).unwrap();
    store.seal().unwrap().unwrap();
    assert_eq!(store.durable_seq(), 4);
    assert_eq!(store.pending().ranges(), &[(5, 6)]);
    drop(store);

    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    assert_eq!((store.durable_seq(), store.source_seq()), (4, 8));
    assert_eq!(
        store.pending().ranges(),
        &[(5, 6)],
        "only 5 and 6 are replayed again"
    );
    assert_eq!(store.trace(&[4; 16]).unwrap().spans.len(), 1);
    // 5 was lost from the WAL (say, a quarantined segment); 6 is replayed.
    store.ingest(6, vec![span(6, 1, None, &a)]).unwrap();
    store.finish_pending(5, 6).unwrap();
    assert_eq!(
        store.pending().ranges(),
        &[(5, 6)],
        "not durable before the seal"
    );
    store.seal().unwrap().unwrap();
    assert!(store.pending().is_empty());
    assert_eq!(store.durable_seq(), 8);
    let ids: Vec<String> = store.blocks().iter().map(|b| b.id.clone()).collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "block ids are unique: {ids:?}");
    for t in [1u8, 2, 3, 4, 6, 7, 8] {
        assert_eq!(store.trace(&[t; 16]).unwrap().spans.len(), 1, "trace {t}");
    }
    drop(store);
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    assert!(store.pending().is_empty());
    assert_eq!(store.durable_seq(), 8);
}

/// A range deferred while an older head is being sealed is not written as pending by
/// that seal (it lies above the older head's position, so a restart replays it in
/// order), and an empty head still publishes a finished backlog.
#[test]
fn deferring_during_a_seal_and_finishing_in_an_empty_head() {
    let tmp = tempfile::tempdir().unwrap();
    let a = origin("a");
    let (store, _) = Store::open(opts(tmp.path())).unwrap();
    store.ingest(1, vec![span(1, 1, None, &a)]).unwrap();
    store.defer(2, 3).unwrap();
    store.seal().unwrap().unwrap();
    assert_eq!((store.durable_seq(), store.source_seq()), (1, 3));
    store.ingest(2, vec![span(2, 1, None, &a)]).unwrap();
    store.seal().unwrap().unwrap();
    assert_eq!(store.durable_seq(), 2);
    store.ingest(3, Vec::new()).unwrap();
    store.finish_pending(2, 3).unwrap();
    assert_eq!(
        store.durable_seq(),
        2,
        "3 is not published before the next seal"
    );
    assert!(store.seal().unwrap().is_none(), "the head has no spans");
    assert_eq!(store.durable_seq(), 3);
    let m = crate::Manifest::load(&tmp.path().join("blocks")).unwrap();
    assert!(m.pending.is_empty() && m.source_seq == 3, "{m:?}");
}

/// Format 2: frequent scalar attributes get typed `attr.KEY` columns; the rest stay in the
/// JSON; every span comes back with its attributes in their original order, duplicates,
/// NaN, mixed-type keys and spans without attributes included.
#[test]
fn promoted_attribute_columns_round_trip_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let o = origin("a");
    let mut spans = Vec::new();
    for i in 0..300u32 {
        let mut s = span((i % 200) as u8 + 1, (i / 200) as u8 + 1, None, &o);
        s.attributes = match i % 5 {
            // Promoted keys around JSON ones, and a duplicate of a promoted key.
            0 => vec![
                (
                    "route".into(),
                    AttrValue::Str(format!("/r/{}", i % 7).into()),
                ),
                ("blob".into(), AttrValue::Bytes(vec![1, 2])),
                ("code".into(), AttrValue::Int(200 + i64::from(i % 3))),
                ("route".into(), AttrValue::Str("again".into())),
                ("ms".into(), AttrValue::Double(f64::from(i) / 3.0)),
            ],
            // The same keys in another order, a NaN, and a flag.
            1 => vec![
                ("ms".into(), AttrValue::Double(f64::NAN)),
                ("code".into(), AttrValue::Int(500)),
                ("ok".into(), AttrValue::Bool(false)),
                ("route".into(), AttrValue::Str("/x".into())),
            ],
            // A key whose type varies between spans stays in the JSON.
            2 => vec![("mixed".into(), AttrValue::Int(1))],
            3 => vec![
                ("mixed".into(), AttrValue::Str("one".into())),
                ("route".into(), AttrValue::Str("/y".into())),
            ],
            _ => Vec::new(),
        };
        spans.push(s);
    }
    write_block(tmp.path(), "b1", &spans).unwrap();
    let r = BlockReader::open(tmp.path(), "b1").unwrap();
    let mut got = r.all().unwrap();
    let mut want = spans.clone();
    let key = |s: &Span| (s.trace_id, s.span_id);
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        // NaN != NaN: compare its text.
        assert_eq!(format!("{:?}", g.attributes), format!("{:?}", w.attributes));
    }
    // The typed columns are there for other readers too.
    let cols = parquet_columns(&tmp.path().join("b1.parquet"));
    for c in [
        "attr.route",
        "attr.code",
        "attr.ms",
        "attr.ok",
        "attribute_keys",
    ] {
        assert!(cols.contains(&c.to_string()), "{c} in {cols:?}");
    }
    assert!(!cols.contains(&"attr.mixed".to_string()), "{cols:?}");
    assert!(!cols.contains(&"attr.blob".to_string()), "{cols:?}");
}

/// A block larger than the promotion sample chooses its columns on every n-th span: a key
/// that is an integer on the sampled spans gets its column even though one span the sample
/// skips holds a string under it (which a look at every span would have refused), and that
/// span's string, like every other value, comes back as written.
#[test]
fn promotion_judged_on_a_sample_keeps_the_values_it_did_not_see() {
    use crate::block::schema::PROMOTION_SAMPLE;
    let tmp = tempfile::tempdir().unwrap();
    let o = origin("a");
    let n = 2 * PROMOTION_SAMPLE + 7_000;
    let stride = n.div_ceil(PROMOTION_SAMPLE);
    assert_eq!(
        stride, 3,
        "the test's stray span lies between two sampled ones"
    );
    // One span per trace, all of one shape, trace ids ascending: the block keeps this order.
    let spans: Vec<Span> = (0..n)
        .map(|i| {
            let mut s = span(1, 1, None, &o);
            s.trace_id = (i as u128 + 1).to_be_bytes();
            s.name = "op".into();
            s.status = StatusCode::Unset;
            s.status_message = String::new();
            let code = if i == 1 {
                AttrValue::Str("two hundred".into())
            } else {
                AttrValue::Int(200 + (i % 5) as i64)
            };
            s.attributes = vec![
                ("code".into(), code),
                ("user".into(), AttrValue::Str(format!("u{i}").into())),
            ];
            s
        })
        .collect();
    write_block(tmp.path(), "b1", &spans).unwrap();
    let cols = parquet_columns(&tmp.path().join("b1.parquet"));
    assert!(cols.contains(&"attr.code".to_string()), "{cols:?}");
    let mut got = BlockReader::open(tmp.path(), "b1").unwrap().all().unwrap();
    got.sort_by_key(|s| s.trace_id);
    assert_eq!(got.len(), n);
    for (g, w) in got.iter().zip(&spans) {
        assert_eq!(g.attributes, w.attributes, "trace {:?}", w.trace_id);
    }
}

/// Format 3: a parent in the same trace is stored as a row delta (forwards or backwards:
/// a parent may start after its child under clock skew), an absent parent as its id, and
/// start times as the trace's start plus an offset; all come back exactly, through a trace
/// read and a whole-block read (the search index rebuilt from these columns is checked by
/// the search proptest's reopen).
#[test]
fn parents_as_row_deltas_and_start_offsets_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let o = origin("a");
    let mut spans = Vec::new();
    // A large trace (the map path): span i's parent is span i + 1, which starts earlier
    // only for odd i.
    for i in 1..=40u8 {
        let mut s = span(9, i, (i < 40).then_some(i + 1), &o);
        s.start_ns = 10_000 + u64::from(i) * if i % 2 == 1 { 7 } else { 3 };
        spans.push(s);
    }
    // A small trace with an orphan (parent never sent) and a child before its parent.
    let mut orphan = span(3, 1, Some(99), &o);
    orphan.start_ns = 5_000;
    let mut child = span(3, 2, Some(3), &o);
    child.start_ns = 4_000;
    let mut parent = span(3, 3, None, &o);
    parent.start_ns = 6_000;
    spans.extend([orphan, child, parent]);
    write_block(tmp.path(), "b1", &spans).unwrap();
    let r = BlockReader::open(tmp.path(), "b1").unwrap();
    let key = |s: &Span| (s.trace_id, s.span_id);
    let mut want = spans.clone();
    want.sort_by_key(key);
    for got in [r.all().unwrap(), {
        let mut t = r.trace(&[9; 16]).unwrap();
        t.extend(r.trace(&[3; 16]).unwrap());
        t
    }] {
        let mut got = got;
        got.sort_by_key(key);
        let brief = |v: &[Span]| -> Vec<_> {
            v.iter()
                .map(|s| (s.span_id[0], s.parent_span_id.map(|p| p[0]), s.start_ns))
                .collect()
        };
        assert_eq!(brief(&got), brief(&want));
    }
    let cols = parquet_columns(&tmp.path().join("b1.parquet"));
    for c in [
        "parent_row_delta",
        "trace_start_unix_nano",
        "start_offset_nano",
    ] {
        assert!(cols.contains(&c.to_string()), "{c} in {cols:?}");
    }
}

/// The column names of a Parquet file, as any Parquet reader sees them.
fn parquet_columns(path: &std::path::Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
    parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

/// Several traces read in one pass (`BlockReader::read_traces`, used by searches that
/// return whole traces) equal the same traces read one by one: in the order asked, with
/// repeated and unknown ids, and a trace whose rows continue into the next row group.
#[test]
fn traces_read_together_equal_traces_read_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let o = origin("svc");
    let id = |n: u32| {
        let mut t = [0u8; 16];
        t[..4].copy_from_slice(&n.to_be_bytes());
        t[15] = 1;
        t
    };
    // Traces of 3 spans, so that one of them straddles the first row-group boundary.
    let traces = (crate::block::ROW_GROUP_ROWS / 3 + 50) as u32;
    let mut spans = Vec::with_capacity(traces as usize * 3);
    for n in 0..traces {
        for k in 0..3u8 {
            let mut s = span(0, k + 1, (k > 0).then_some(1), &o);
            s.trace_id = id(n);
            s.attributes.truncate(2);
            s.events.clear();
            s.links.clear();
            spans.push(s);
        }
    }
    write_block(tmp.path(), "b", &spans).unwrap();
    let r = BlockReader::open(tmp.path(), "b").unwrap();
    let boundary = (crate::block::ROW_GROUP_ROWS / 3) as u32; // rows 3n..3n+2 cross it
    let wanted = vec![
        id(boundary),
        id(5),
        id(traces + 9),
        id(traces - 1),
        id(5),
        id(0),
    ];
    let together = r.read_traces(&wanted).unwrap();
    assert_eq!(together.len(), wanted.len());
    for (w, got) in wanted.iter().zip(&together) {
        assert_eq!(got, &r.trace(w).unwrap(), "trace {w:?}");
    }
    assert_eq!(
        together[0].len(),
        3,
        "the trace across the row groups is whole"
    );
    assert!(together[2].is_empty(), "unknown id");
    assert_eq!(together[1], together[4], "a repeated id");
    assert!(
        together[0]
            .iter()
            .filter(|s| s.parent_span_id.is_some())
            .count()
            == 2
    );
}

/// Blocks written before format 4 store `resource_attributes`, and before format 8
/// `attribute_keys`, as plain strings (no Arrow dictionary in the embedded schema): they
/// read back the same.
#[test]
fn blocks_with_plain_resource_strings_read_the_same() {
    use arrow_array::{Array, DictionaryArray, RecordBatch, StringArray, types::Int32Type};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (origin("a"), origin("b"));
    let mut spans = Vec::new();
    for t in 1..=40u8 {
        for k in 1..=3u8 {
            let o = if (t + k) % 2 == 0 { &a } else { &b };
            let mut s = span(t, k, (k > 1).then_some(1), o);
            if t % 3 == 0 {
                // Key lists of two orders.
                s.attributes.reverse();
            }
            spans.push(s);
        }
    }
    write_block(tmp.path(), "b", &spans).unwrap();
    let path = crate::block::parquet_path(tmp.path(), "b");
    let new = BlockReader::open(tmp.path(), "b").unwrap().all().unwrap();
    let (mut want, mut got) = (spans.clone(), new.clone());
    want.sort_by_key(|s| (s.trace_id, s.span_id));
    got.sort_by_key(|s| (s.trace_id, s.span_id));
    assert!(
        got == want,
        "the block reads back its spans, key order kept"
    );
    // A lookup (which reads `attribute_keys` plainly) of a trace whose keys are reversed.
    let lookup = |r: &BlockReader| {
        let mut t = r.trace(&[9; 16]).unwrap();
        t.sort_by_key(|s| s.span_id);
        t
    };
    let nine: Vec<Span> = want
        .iter()
        .filter(|s| s.trace_id == [9; 16])
        .cloned()
        .collect();
    assert!(nine[0].attributes[0].0.as_str() == "k");
    assert!(lookup(&BlockReader::open(tmp.path(), "b").unwrap()) == nine);

    // Rewrite the Parquet file as format 3 wrote it: the same columns, resources and key
    // lists as text.
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned();
    let batches: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
    let schema = batches[0].schema();
    let dicts = ["resource_attributes", "attribute_keys"].map(|c| schema.index_of(c).unwrap());
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for i in dicts {
        assert!(matches!(
            schema.field(i).data_type(),
            DataType::Dictionary(..)
        ));
        fields[i] = Field::new(schema.field(i).name(), DataType::Utf8, false);
    }
    let plain_schema = Arc::new(Schema::new(fields));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(kv)
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        plain_schema.clone(),
        Some(props),
    )
    .unwrap();
    let mut key_lists = std::collections::HashSet::new();
    for batch in &batches {
        let mut cols = batch.columns().to_vec();
        for i in dicts {
            let d = batch
                .column(i)
                .as_any()
                .downcast_ref::<DictionaryArray<Int32Type>>()
                .unwrap();
            let values = d.values().as_any().downcast_ref::<StringArray>().unwrap();
            let text: StringArray = d
                .keys()
                .values()
                .iter()
                .map(|&k| Some(values.value(k as usize)))
                .collect();
            if i == dicts[1] {
                key_lists.extend(text.iter().flatten().map(str::to_string));
            }
            cols[i] = Arc::new(text);
        }
        w.write(&RecordBatch::try_new(plain_schema.clone(), cols).unwrap())
            .unwrap();
    }
    assert_eq!(key_lists.len(), 2, "{key_lists:?}");
    w.close().unwrap();

    let old = BlockReader::open(tmp.path(), "b").unwrap();
    assert_eq!(old.all().unwrap(), new);
    assert_eq!(old.trace(&[7; 16]).unwrap().len(), 3);
    assert!(lookup(&old) == nine);
    assert_eq!(new.len(), 120);
    assert!(new.iter().any(|s| s.service() == "a") && new.iter().any(|s| s.service() == "b"));
}
