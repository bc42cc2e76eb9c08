//! Model-based test of out-of-order durability (live data first): a pipeline that indexes
//! live records, defers ranges to a backlog, replays them, seals and crashes at random,
//! checked against a model of which WAL records exist. After every step, every record at
//! or below `durable_seq` (the WAL may be truncated there) is in a durable block; after a
//! crash, replaying what the store says (the pending ranges, then what follows
//! `source_seq`) restores every record exactly once.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use faultline_model::span::{Origin, Span, SpanKind, StatusCode};
use proptest::prelude::*;

use crate::{SpanStore, Store, StoreOptions};

/// Records in the simulated WAL; record `s` holds one span of trace `s`, except every
/// seventh, which holds none (as a dead-lettered record is ingested).
const RECORDS: u64 = 60;

fn spans_of(seq: u64, origin: &Arc<Origin>) -> Vec<Span> {
    if seq.is_multiple_of(7) {
        Vec::new()
    } else {
        vec![span_of(seq, origin)]
    }
}

/// Spans record `seq` adds once ingested.
fn holds(seq: u64) -> usize {
    usize::from(!seq.is_multiple_of(7))
}

fn trace_of(seq: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8] = 1;
    id
}

fn span_of(seq: u64, origin: &Arc<Origin>) -> Span {
    Span {
        trace_id: trace_of(seq),
        span_id: (seq + 1).to_be_bytes(),
        parent_span_id: None,
        name: "op".into(),
        kind: SpanKind::Server,
        start_ns: 1_000 + seq,
        end_ns: 2_000 + seq,
        status: StatusCode::Unset,
        status_message: String::new(),
        attributes: Vec::new(),
        events: Vec::new(),
        links: Vec::new(),
        origin: origin.clone(),
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Index up to n records at the live position.
    Live(u64),
    /// Skip ahead: the next n records become a backlog range.
    Defer(u64),
    /// Replay up to n records of the oldest backlog range (finishing it when done).
    Replay(u64),
    Seal,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..8).prop_map(Op::Live),
        2 => (1u64..12).prop_map(Op::Defer),
        3 => (1u64..8).prop_map(Op::Replay),
        2 => Just(Op::Seal),
        1 => Just(Op::Crash),
    ]
}

/// What the pipeline of `faultline serve` keeps: the live position and the backlog queue
/// (each range with the next record to replay).
struct Pipeline {
    live: u64,
    backlog: VecDeque<(u64, u64, u64)>,
}

impl Pipeline {
    /// As after a start: pending ranges first, in-order ingest after `source_seq`.
    fn start(store: &Store) -> Self {
        Self {
            live: store.source_seq() + 1,
            backlog: store
                .pending()
                .ranges()
                .iter()
                .map(|&(a, b)| (a, b, a))
                .collect(),
        }
    }
}

fn count(store: &Store, seq: u64) -> usize {
    store.trace(&trace_of(seq)).unwrap().spans.len()
}

fn opts(dir: &std::path::Path) -> StoreOptions {
    StoreOptions {
        block_max_spans: 1_000,
        block_max_age: Duration::from_secs(3600),
        ..StoreOptions::new(dir)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn deferred_records_are_durable_exactly_once(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let origin = Arc::new(Origin {
            service: "svc".into(),
            resource: Vec::new(),
            scope_name: String::new(),
            scope_version: String::new(),
        });
        let (mut store, _) = Store::open(opts(tmp.path())).unwrap();
        let mut p = Pipeline::start(&store);
        for o in ops {
            match o {
                Op::Live(n) => {
                    for _ in 0..n {
                        if p.live > RECORDS {
                            break;
                        }
                        store.ingest(p.live, spans_of(p.live, &origin)).unwrap();
                        p.live += 1;
                    }
                }
                Op::Defer(n) => {
                    let last = (p.live + n - 1).min(RECORDS);
                    if p.live <= last {
                        store.defer(p.live, last).unwrap();
                        p.backlog.push_back((p.live, last, p.live));
                        p.live = last + 1;
                    }
                }
                Op::Replay(n) => {
                    if let Some((first, last, next)) = p.backlog.front_mut() {
                        for _ in 0..n {
                            if *next > *last {
                                break;
                            }
                            if store.is_pending(*next) {
                                store.ingest(*next, spans_of(*next, &origin)).unwrap();
                            }
                            *next += 1;
                        }
                        if *next > *last {
                            store.finish_pending(*first, *last).unwrap();
                            p.backlog.pop_front();
                        }
                    }
                }
                Op::Seal => {
                    store.seal().unwrap();
                }
                Op::Crash => {
                    let durable = store.durable_seq();
                    drop(store);
                    let (s, _) = Store::open(opts(tmp.path())).unwrap();
                    store = s;
                    prop_assert_eq!(store.durable_seq(), durable);
                    // Only blocks survive: what was durable is there once, nothing else.
                    for seq in 1..=RECORDS {
                        let n = count(&store, seq);
                        prop_assert!(n <= holds(seq), "record {} stored {} times", seq, n);
                        if seq <= durable {
                            prop_assert_eq!(n, holds(seq), "durable record {} lost", seq);
                        }
                        let expected_present = seq <= store.source_seq() && !store.is_pending(seq);
                        prop_assert_eq!(n == holds(seq), expected_present || holds(seq) == 0, "record {}", seq);
                    }
                    p = Pipeline::start(&store);
                }
            }
            // The WAL may be truncated before durable_seq + 1: those records must be in
            // blocks already.
            let durable = store.durable_seq();
            for seq in 1..=durable {
                prop_assert_eq!(count(&store, seq), holds(seq), "record {} below durable_seq {}", seq, durable);
            }
        }
        // Drain: replay every backlog range, index the rest, seal; then again after a
        // restart nothing is replayed twice.
        while let Some((first, last, next)) = p.backlog.pop_front() {
            for seq in next..=last {
                if store.is_pending(seq) {
                    store.ingest(seq, spans_of(seq, &origin)).unwrap();
                }
            }
            store.finish_pending(first, last).unwrap();
        }
        for seq in p.live..=RECORDS {
            store.ingest(seq, spans_of(seq, &origin)).unwrap();
        }
        store.seal().unwrap();
        prop_assert!(store.pending().is_empty(), "{:?}", store.pending());
        prop_assert_eq!(store.durable_seq(), RECORDS);
        drop(store);
        let (store, _) = Store::open(opts(tmp.path())).unwrap();
        for seq in 1..=RECORDS {
            prop_assert_eq!(count(&store, seq), holds(seq), "record {}", seq);
        }
    }
}
