//! Crash tests of the pipeline against a model of what was acknowledged.
//!
//! The WAL runs on the crash-simulating file system (`faultline_wal::sim::SimFs`: a crash
//! loses every unsynced byte), the store on a temporary directory (it fsyncs what it
//! publishes; a crash at one of its fault points leaves what a real crash would). The
//! tests drive the real ingest, backlog and sealer steps one at a time: append records
//! (some poison), index live data, stall so the ingest side skips ahead (defer), replay
//! the backlog, seal and truncate, compact, and crash between any two steps or inside a
//! seal or a compaction. After every step:
//!
//! - every acknowledged record at or below `durable_seq` (the WAL may be truncated there)
//!   has all its spans in the store, or is a dead letter on disk;
//! - every acknowledged record above it is still in the WAL;
//! - no record's spans are stored twice.
//!
//! After a final drain every record is stored exactly once, and again after one more
//! crash and restart.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faultline_model::ExportTraceServiceRequest;
use faultline_model::envelope::{self, Protocol};
use faultline_model::otlp::common::{AnyValue, KeyValue, any_value};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span};
use faultline_store::{FaultHook, FaultPoint, SpanStore, Store, StoreOptions};
use faultline_wal::sim::SimFs;
use faultline_wal::{NoopObserver, Wal, WalOptions};
use proptest::prelude::*;

use faultline_model::pending::RecordAt;

use crate::backlog::Backlog;
use crate::ingest::Ingest;
use crate::pending::WithPending;
use crate::sealer::{self, Sealer};
use crate::{PipelineOptions, Shared, Step};

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Content {
    /// `n` spans of one trace, the trace id made from the record's number.
    Spans(u64, usize),
    /// Not an envelope: it becomes a dead letter.
    Poison,
}

fn trace_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[15] = 7;
    id
}

fn payload(content: Content, t0: u64) -> Vec<u8> {
    let Content::Spans(n, spans) = content else {
        return b"not an envelope".to_vec();
    };
    let span = |i: usize| Span {
        trace_id: trace_id(n).to_vec(),
        span_id: ((n << 8) + i as u64 + 1).to_be_bytes().to_vec(),
        parent_span_id: if i == 0 {
            Vec::new()
        } else {
            ((n << 8) + 1).to_be_bytes().to_vec()
        },
        name: format!("op-{}", i % 3),
        kind: 2,
        start_time_unix_nano: t0 + i as u64 * 1_000,
        end_time_unix_nano: t0 + 500_000 + i as u64 * 1_000,
        ..Span::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(format!("svc-{}", n % 3))),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans).map(span).collect(),
                ..ScopeSpans::default()
            }],
            schema_url: String::new(),
        }],
    };
    envelope::encode_request(Protocol::OtlpGrpc, spans as u32, &req)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The pipeline's three steppers over one open WAL and store.
struct Running {
    sh: Shared,
    ingest: Ingest,
    backlog: Backlog,
    sealer: Sealer,
}

/// A WAL on a simulated disk, a store in a directory, the model of what was acknowledged,
/// and the pipeline running over them (stepped by the test).
struct World {
    fs: Arc<SimFs>,
    dir: tempfile::TempDir,
    /// Added to the real clock: a stall makes the next record look old.
    clock_offset: Arc<AtomicU64>,
    /// The store fault point that fails (as a crash would) while armed.
    fault: Arc<Mutex<Option<FaultPoint>>>,
    acked: BTreeMap<u64, Content>,
    next_trace: u64,
    t0: u64,
    run: Option<Running>,
}

const WAL_DIR: &str = "/wal";

impl World {
    fn new() -> Self {
        let mut w = Self {
            fs: Arc::new(SimFs::default()),
            dir: tempfile::tempdir().unwrap(),
            clock_offset: Arc::new(AtomicU64::new(0)),
            fault: Arc::new(Mutex::new(None)),
            acked: BTreeMap::new(),
            next_trace: 1,
            t0: now_ns(),
            run: None,
        };
        w.start();
        w
    }

    fn dlq_dir(&self) -> PathBuf {
        self.dir.path().join("dlq")
    }

    /// Opens the WAL and the store and starts the pipeline as `Pipeline::spawn` does.
    fn start(&mut self) {
        let fault = self.fault.clone();
        let store_opts = StoreOptions {
            block_max_spans: 16,
            block_max_age: Duration::from_secs(3600),
            fault: Some(FaultHook(Arc::new(move |p| {
                if *fault.lock().unwrap() == Some(p) {
                    Err(std::io::Error::other("injected crash"))
                } else {
                    Ok(())
                }
            }))),
            ..StoreOptions::new(self.dir.path())
        };
        let (store, _) = Store::open(store_opts).unwrap();
        let wal_opts = WalOptions {
            segment_bytes: 1024,
            // As `faultline serve` opens it: numbering continues after the store.
            min_next_seq: store.source_seq() + 1,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open_with(
            self.fs.clone(),
            Path::new(WAL_DIR),
            wal_opts,
            Arc::new(NoopObserver),
        )
        .unwrap();
        let offset = self.clock_offset.clone();
        let opts = PipelineOptions {
            live_first_after: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(1),
            clock: Arc::new(move || now_ns() + offset.load(Ordering::SeqCst)),
            ..PipelineOptions::new(self.dir.path())
        };
        let mut sh = Shared::new(wal, Arc::new(store), opts);
        // Small polls, so a step indexes or replays a few records, not everything.
        sh.poll_bytes = 700;
        sh.backlog_poll_bytes = 500;
        let (tx, rx) = mpsc::channel();
        let at_open = sh.wal.committed_seq();
        let ingest = Ingest::start(&sh, tx, at_open);
        let mut backlog = Backlog::new(&sh, rx);
        // As the backlog thread does at once: count (and note) what the start deferred.
        assert!(backlog.take_ranges(&sh, Duration::ZERO));
        self.run = Some(Running {
            sh,
            ingest,
            backlog,
            sealer: Sealer::new(),
        });
    }

    fn run(&mut self) -> &mut Running {
        self.run.as_mut().unwrap()
    }

    /// Power failure: everything in memory and every unsynced WAL byte is lost.
    fn crash(&mut self, seed: u64) {
        // The WAL's writer thread stops when its last handle is dropped; every append was
        // acknowledged, so it holds nothing unwritten.
        self.run = None;
        *self.fault.lock().unwrap() = None;
        self.fs.crash(seed);
        self.start();
    }

    fn append(&mut self, content: Content) {
        let bytes = payload(content, self.t0);
        let ack = self.run().sh.wal.append_blocking(bytes).unwrap();
        if let Content::Spans(n, _) = content {
            // As intake does once the WAL acknowledged the record.
            let at = RecordAt {
                seq: ack.seq,
                segment: ack.segment,
                offset: ack.offset,
            };
            self.run().sh.opts.pending.add(at, [trace_id(n)]);
        }
        self.acked.insert(ack.seq, content);
    }

    fn append_traces(&mut self, n: usize, spans: usize) {
        for _ in 0..n {
            let c = Content::Spans(self.next_trace, spans);
            self.next_trace += 1;
            self.append(c);
        }
    }

    fn ingest(&mut self) -> Step {
        let r = self.run();
        r.ingest.step(&r.sh)
    }

    /// An ingest step that finds its next record old: it defers up to the newest record.
    fn stall(&mut self) -> Step {
        self.clock_offset.store(10_000_000_000, Ordering::SeqCst);
        let step = self.ingest();
        self.clock_offset.store(0, Ordering::SeqCst);
        step
    }

    fn replay(&mut self) -> Step {
        let r = self.run();
        assert!(r.backlog.take_ranges(&r.sh, Duration::ZERO));
        r.backlog.step(&r.sh)
    }

    fn seal(&mut self) -> bool {
        sealer::seal_and_truncate(&self.run().sh).is_ok()
    }

    /// Seals with `point` failing, then crashes: what a crash inside the seal leaves.
    fn crash_inside(&mut self, point: FaultPoint, seed: u64) {
        *self.fault.lock().unwrap() = Some(point);
        match point {
            FaultPoint::SealBeforeManifest => {
                self.seal();
            }
            FaultPoint::CompactBeforeManifest => sealer::compact(&self.run().sh),
            FaultPoint::RetentionBeforeDelete => sealer::retention(&self.run().sh),
            // The model keeps every span: tail sampling is off here (store tests cover it).
            FaultPoint::TailBeforeManifest => {
                sealer::tail_sample(&self.run().sh);
            }
        }
        self.crash(seed);
    }

    fn stored(&self, content: Content) -> usize {
        let Content::Spans(n, _) = content else {
            return 0;
        };
        let store = &self.run.as_ref().unwrap().sh.store;
        store.trace(&trace_id(n)).unwrap().spans.len()
    }

    /// Spans of `content`'s trace a read by id answers (through [`WithPending`], as the
    /// API reads).
    fn readable(&self, content: Content) -> usize {
        let Content::Spans(n, _) = content else {
            return 0;
        };
        let sh = &self.run.as_ref().unwrap().sh;
        let reads = WithPending::wrap(sh.store.clone(), sh.wal.clone(), sh.opts.pending.clone());
        reads.trace(&trace_id(n)).unwrap().spans.len()
    }

    /// Spans the store holds, counting duplicates (blocks plus heads): a trace lookup
    /// would hide a record ingested twice, this does not.
    fn stored_total(&self) -> u64 {
        let store = &self.run.as_ref().unwrap().sh.store;
        store.blocks().iter().map(|b| b.spans).sum::<u64>() + store.head_spans() as u64
    }

    /// Spans of every acknowledged record.
    fn acked_total(&self) -> u64 {
        self.acked
            .values()
            .map(|c| match c {
                Content::Spans(_, k) => *k as u64,
                Content::Poison => 0,
            })
            .sum()
    }

    fn is_dead_letter(&self, seq: u64) -> bool {
        self.dlq_dir().join(format!("{seq:020}.dead")).exists()
    }

    /// The invariants of the module doc.
    fn check(&self) -> Result<(), TestCaseError> {
        let r = self.run.as_ref().unwrap();
        let durable = r.sh.store.durable_seq();
        let mut in_wal = BTreeSet::new();
        let mut tail = r.sh.wal.tail(durable + 1);
        loop {
            let batch = tail.poll(1 << 20).unwrap();
            if batch.is_empty() {
                break;
            }
            in_wal.extend(batch.iter().map(|rec| rec.seq));
        }
        let total = self.stored_total();
        prop_assert!(
            total <= self.acked_total(),
            "the store holds {} spans of {} acknowledged: a record was ingested twice",
            total,
            self.acked_total()
        );
        for (&seq, &content) in &self.acked {
            let n = self.stored(content);
            let want = match content {
                Content::Spans(_, k) => k,
                Content::Poison => 0,
            };
            prop_assert!(
                n <= want,
                "record {} stored {} of {} spans (twice?)",
                seq,
                n,
                want
            );
            // Acknowledged means readable by id, indexed or not, across crashes.
            prop_assert_eq!(
                self.readable(content),
                want,
                "record {}'s trace is not readable in full (durable_seq {})",
                seq,
                durable
            );
            if seq <= durable {
                match content {
                    Content::Spans(..) => prop_assert_eq!(
                        n,
                        want,
                        "record {} is below durable_seq {} but not stored",
                        seq,
                        durable
                    ),
                    Content::Poison => prop_assert!(
                        self.is_dead_letter(seq),
                        "poison record {} is below durable_seq {} but no dead letter",
                        seq,
                        durable
                    ),
                }
            } else {
                prop_assert!(
                    in_wal.contains(&seq),
                    "record {} above durable_seq {} is gone from the WAL",
                    seq,
                    durable
                );
            }
        }
        Ok(())
    }

    /// Runs every step until nothing is left to index or replay, then seals.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            let r = self.run();
            assert!(r.backlog.take_ranges(&r.sh, Duration::ZERO));
            let a = r.ingest.step(&r.sh);
            let b = r.backlog.step(&r.sh);
            if r.sh.store.should_seal() {
                assert_eq!(r.sealer.step(&r.sh), Step::Worked);
            }
            if a == Step::Idle && b == Step::Idle && r.backlog.is_empty() {
                break;
            }
        }
        sealer::seal_and_truncate(&self.run().sh).unwrap();
    }

    /// After a drain: everything exactly once, nothing pending, the WAL truncatable to
    /// the end; and the same after a crash and another drain.
    fn check_final(&mut self, seed: u64) -> Result<(), TestCaseError> {
        for round in 0..2 {
            self.drain();
            self.check()?;
            let r = self.run.as_ref().unwrap();
            prop_assert!(
                r.sh.store.pending().is_empty(),
                "{:?}",
                r.sh.store.pending()
            );
            prop_assert_eq!(r.sh.store.durable_seq(), r.sh.wal.committed_seq());
            prop_assert!(
                r.sh.opts.pending.is_empty(),
                "indexed records are forgotten: {:?}",
                r.sh.opts.pending
            );
            prop_assert_eq!(
                self.stored_total(),
                self.acked_total(),
                "exactly once (round {})",
                round
            );
            for (&seq, &content) in &self.acked {
                match content {
                    Content::Spans(_, k) => {
                        prop_assert_eq!(self.stored(content), k, "record {} (round {})", seq, round)
                    }
                    Content::Poison => prop_assert!(self.is_dead_letter(seq), "record {}", seq),
                }
            }
            let poison = self
                .acked
                .values()
                .filter(|c| **c == Content::Poison)
                .count();
            prop_assert_eq!(crate::dlq::count(&self.dlq_dir()), poison);
            self.crash(seed + round);
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` records of `spans` spans each.
    Append(usize, usize),
    Poison,
    Ingest,
    /// The next record looks old: the ingest side skips ahead to live data.
    Stall,
    Replay,
    Seal,
    Compact,
    Crash(u64),
    CrashInSeal(u64),
    CrashInCompaction(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..6, 0usize..4).prop_map(|(n, k)| Op::Append(n, k)),
        1 => Just(Op::Poison),
        4 => Just(Op::Ingest),
        2 => Just(Op::Stall),
        4 => Just(Op::Replay),
        3 => Just(Op::Seal),
        1 => Just(Op::Compact),
        1 => any::<u64>().prop_map(Op::Crash),
        1 => any::<u64>().prop_map(Op::CrashInSeal),
        1 => any::<u64>().prop_map(Op::CrashInCompaction),
    ]
}

fn apply(w: &mut World, o: &Op) {
    match *o {
        Op::Append(n, k) => w.append_traces(n, k),
        Op::Poison => w.append(Content::Poison),
        Op::Ingest => {
            w.ingest();
        }
        Op::Stall => {
            w.stall();
        }
        Op::Replay => {
            w.replay();
        }
        Op::Seal => {
            w.seal();
        }
        Op::Compact => sealer::compact(&w.run().sh),
        Op::Crash(seed) => w.crash(seed),
        Op::CrashInSeal(seed) => w.crash_inside(FaultPoint::SealBeforeManifest, seed),
        Op::CrashInCompaction(seed) => w.crash_inside(FaultPoint::CompactBeforeManifest, seed),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random interleavings of every step with crashes anywhere.
    #[test]
    fn acknowledged_records_are_stored_exactly_once(ops in proptest::collection::vec(op(), 1..45)) {
        let mut w = World::new();
        for o in &ops {
            apply(&mut w, o);
            w.check()?;
        }
        w.check_final(99)?;
    }
}

/// A script that goes through every kind of step: live data, a stall and its backlog
/// replayed in several polls while live data goes on, seals, truncation, a compaction.
fn script() -> Vec<Op> {
    vec![
        Op::Append(6, 2),
        Op::Ingest,
        Op::Ingest,
        Op::Poison,
        Op::Append(5, 3),
        Op::Stall,
        Op::Append(4, 1),
        Op::Ingest,
        Op::Replay,
        Op::Seal,
        Op::Replay,
        Op::Ingest,
        Op::Replay,
        Op::Replay,
        Op::Seal,
        // Two small blocks (under a quarter of the block size) for the compaction.
        Op::Append(1, 2),
        Op::Ingest,
        Op::Seal,
        Op::Append(1, 3),
        Op::Ingest,
        Op::Seal,
        Op::Compact,
        Op::Append(2, 2),
        Op::Ingest,
        Op::Replay,
        Op::Seal,
    ]
}

/// Crashes after every step of the script, and inside the seal or compaction that
/// follows it; each time the restart must lose nothing and store nothing twice.
#[test]
fn a_crash_after_any_step_loses_nothing() {
    let s = script();
    for k in 0..=s.len() {
        for inside in [
            None,
            Some(FaultPoint::SealBeforeManifest),
            Some(FaultPoint::CompactBeforeManifest),
        ] {
            let mut w = World::new();
            for o in &s[..k] {
                apply(&mut w, o);
                w.check().unwrap();
            }
            match inside {
                None => w.crash(k as u64),
                Some(p) => w.crash_inside(p, k as u64),
            }
            w.check()
                .unwrap_or_else(|e| panic!("crash after step {k} ({inside:?}): {e}"));
            w.check_final(k as u64)
                .unwrap_or_else(|e| panic!("crash after step {k} ({inside:?}): {e}"));
        }
    }
}

/// The script really exercises what it claims: a skip to live data, a backlog replayed
/// over several steps while live data was indexed, WAL truncation and a compaction.
#[test]
fn the_script_defers_replays_truncates_and_compacts() {
    let mut w = World::new();
    let mut skipped = false;
    let mut replay_steps = 0;
    for o in &script() {
        let blocks = w.run().sh.store.blocks().len();
        apply(&mut w, o);
        let r = w.run();
        skipped |= r.sh.stats.backlog.skips.load(Ordering::Relaxed) > 0;
        if matches!(o, Op::Replay) && r.sh.stats.backlog.replayed_spans.load(Ordering::Relaxed) > 0
        {
            replay_steps += 1;
        }
        if matches!(o, Op::Compact) {
            assert!(
                r.sh.store.blocks().len() < blocks,
                "compaction merged nothing"
            );
        }
    }
    assert!(skipped, "no skip to live data");
    assert!(
        replay_steps >= 2,
        "backlog replayed in {replay_steps} steps"
    );
    let first_left = {
        let r = w.run();
        let mut tail = r.sh.wal.tail(0);
        tail.poll(1 << 20).unwrap().first().map(|rec| rec.seq)
    };
    assert!(
        first_left.is_some_and(|s| s > 1),
        "the WAL was never truncated: {first_left:?}"
    );
    w.check().unwrap();
    w.check_final(5).unwrap();
}

/// Another consumer of the WAL (the ClickHouse writer) holds truncation back to where it
/// still reads: the script that truncates above keeps record 3 and everything after it.
#[test]
fn truncation_stops_before_another_consumers_position() {
    let mut w = World::new();
    for o in &script() {
        w.run().sh.opts.keep_from.store(3, Ordering::SeqCst);
        apply(&mut w, o);
    }
    let r = w.run();
    let mut tail = r.sh.wal.tail(0);
    let first_left = tail.poll(1 << 20).unwrap().first().map(|rec| rec.seq);
    assert!(
        first_left.is_some_and(|s| s <= 3),
        "the WAL was truncated past the other consumer: {first_left:?}"
    );
    w.check().unwrap();
}

/// A record that fails processing becomes a dead letter and the records behind it are
/// indexed.
#[test]
fn a_poison_record_is_set_aside_and_the_rest_goes_on() {
    let mut w = World::new();
    w.append_traces(2, 2);
    w.append(Content::Poison);
    w.append_traces(2, 2);
    while w.ingest() == Step::Worked {}
    let r = w.run();
    assert_eq!(r.sh.stats.dead_letters.load(Ordering::Relaxed), 1);
    assert_eq!(r.sh.stats.undecodable.load(Ordering::Relaxed), 1);
    let (letters, bad) = crate::dlq::read_all(&w.dlq_dir());
    assert!(bad.is_empty());
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.seq, 3);
    assert!(
        letters[0].1.reason.contains("undecodable"),
        "{}",
        letters[0].1.reason
    );
    assert_eq!(letters[0].1.payload, b"not an envelope");
    for n in [1, 2, 3, 4] {
        assert_eq!(w.stored(Content::Spans(n, 2)), 2, "trace {n}");
    }
}

/// Retention crashes after the manifest dropped the expired blocks and before their
/// files were deleted: after the restart they stay gone (the WAL does not bring them
/// back) and their files are removed.
#[test]
fn retention_interrupted_by_a_crash_stays_done() {
    let mut w = World::new();
    w.append_traces(4, 2);
    while w.ingest() == Step::Worked {}
    assert!(w.seal());
    assert_eq!(w.run().sh.store.blocks().len(), 1);
    // Eight days later every span is past the seven-day retention.
    w.clock_offset
        .store(8 * 24 * 3600 * 1_000_000_000, Ordering::SeqCst);
    w.crash_inside(FaultPoint::RetentionBeforeDelete, 3);
    w.clock_offset.store(0, Ordering::SeqCst);
    let r = w.run();
    assert!(r.sh.store.blocks().is_empty());
    let parquet = std::fs::read_dir(w.dir.path().join("blocks"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert_eq!(parquet, 0, "retired block files are removed at start-up");
    w.drain();
    for n in 1..=4 {
        assert_eq!(w.stored(Content::Spans(n, 2)), 0, "trace {n} came back");
    }
}
