//! Crash, corruption and fault tests of the WAL (unit tests with access to internals).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;

use crate::core::{WalCore, WalOptions};
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::reader::{ReadFs, SegmentRef, WalReader};
use crate::sim::SimFs;
use crate::vfs::{StdFs, Vfs};
use crate::wal::{Wal, WalObserver};
use crate::{Durability, WalError};

fn all_records<V: Vfs>(core: &WalCore<V>, fs: Arc<V>) -> Vec<(u64, Vec<u8>)> {
    let refs = core
        .segments()
        .iter()
        .map(|s| SegmentRef {
            first_seq: s.first_seq,
            path: s.path.clone(),
        })
        .collect();
    let fs: Arc<dyn ReadFs> = fs;
    WalReader::new(fs, refs, 0, core.next_seq() - 1)
        .map(|r| {
            let r = r.unwrap();
            (r.seq, r.payload)
        })
        .collect()
}

/// A WAL on `fs` at `dir`, opened with `opts` and no observer.
fn open_sim(fs: &Arc<SimFs>, dir: &Path, opts: WalOptions) -> Wal {
    Wal::open_with(fs.clone(), dir, opts, Arc::new(crate::NoopObserver))
        .unwrap()
        .0
}

fn small_opts() -> WalOptions {
    WalOptions {
        segment_bytes: 200,
        max_bytes: 1 << 30,
        ..WalOptions::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Sync,
    Crash(u64),
    TruncateBefore(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..4).prop_map(Op::Append),
        3 => Just(Op::Sync),
        1 => any::<u64>().prop_map(Op::Crash),
        1 => any::<u8>().prop_map(Op::TruncateBefore),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The WAL against a model: after any sequence of appends, syncs, truncations, clean
    /// reopens and crashes that drop unsynced bytes, every synced (acknowledged) record is
    /// read back intact and in order; records that were written but not synced either
    /// survive as a prefix or vanish; sequence numbers never repeat.
    #[test]
    fn wal_matches_model_across_crashes(ops in prop::collection::vec(op(), 1..60)) {
        let fs = Arc::new(SimFs::default());
        let dir = PathBuf::from("/wal");
        let (mut core, _) = WalCore::open(fs.clone(), &dir, small_opts()).unwrap();
        let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut unsynced: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut highest_seq_ever = 0u64;
        for op in ops {
            match op {
                Op::Append(payloads) => {
                    let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
                    let first = core.append(&refs, 1).unwrap();
                    // Records lost unsynced in a crash were never acknowledged nor visible
                    // to readers, so their numbers may be handed out again; acknowledged
                    // numbers never are.
                    let last_acked = acked.last().map(|(s, _)| *s).unwrap_or(0);
                    prop_assert!(first > last_acked && first > highest_seq_ever.min(last_acked), "sequence {first} reused");
                    for (i, p) in payloads.into_iter().enumerate() {
                        unsynced.push((first + i as u64, p));
                    }
                    highest_seq_ever = core.next_seq() - 1;
                    core.maybe_roll().unwrap();
                    // A roll syncs the sealed segment.
                    if !core.has_unsynced() {
                        acked.append(&mut unsynced);
                    }
                }
                Op::Sync => {
                    core.sync().unwrap();
                    acked.append(&mut unsynced);
                }
                Op::TruncateBefore(frac) => {
                    let upto = acked.last().map(|(s, _)| *s).unwrap_or(0);
                    let cut = upto * u64::from(frac) / 255;
                    core.truncate_before(cut).unwrap();
                    let first_kept = core.segments().first().map(|s| s.first_seq).unwrap_or(u64::MAX);
                    prop_assert!(acked.iter().all(|(s, _)| *s < cut || *s >= first_kept), "truncation removed records at or after {cut}");
                    acked.retain(|(s, _)| *s >= first_kept);
                    unsynced.retain(|(s, _)| *s >= first_kept);
                }
                Op::Reopen => {
                    core.sync().unwrap();
                    acked.append(&mut unsynced);
                    drop(core);
                    let (c, report) = WalCore::open(fs.clone(), &dir, small_opts()).unwrap();
                    prop_assert!(report.quarantined.is_empty());
                    prop_assert_eq!(report.truncated_bytes, 0);
                    core = c;
                }
                Op::Crash(seed) => {
                    drop(core);
                    fs.crash(seed);
                    let (c, report) = WalCore::open(fs.clone(), &dir, small_opts()).unwrap();
                    prop_assert!(report.quarantined.is_empty(), "quarantined after a crash: {:?}", report.quarantined);
                    core = c;
                    let got = all_records(&core, fs.clone());
                    prop_assert!(got.len() >= acked.len(), "lost acknowledged records: had {}, got {}", acked.len(), got.len());
                    prop_assert_eq!(&got[..acked.len()], &acked[..]);
                    let extra = &got[acked.len()..];
                    prop_assert!(extra.len() <= unsynced.len());
                    prop_assert_eq!(extra, &unsynced[..extra.len()]);
                    acked = got;
                    unsynced.clear();
                    prop_assert!(core.next_seq() > acked.last().map(|(s, _)| *s).unwrap_or(0));
                    highest_seq_ever = highest_seq_ever.max(core.next_seq() - 1);
                }
            }
        }
        core.sync().unwrap();
        acked.append(&mut unsynced);
        let got = all_records(&core, fs.clone());
        prop_assert_eq!(got, acked);
    }
}

/// Builds a WAL in a temp dir with `segments` sealed-or-active segments of 3 records each.
fn build_real(dir: &Path, records: usize) -> Vec<PathBuf> {
    let opts = WalOptions {
        segment_bytes: 3 * format::framed_len(10) + SEGMENT_HEADER_LEN as u64,
        ..WalOptions::default()
    };
    let (mut core, _) = WalCore::open(Arc::new(StdFs), dir, opts).unwrap();
    for i in 0..records {
        let payload = format!("record-{i:03}");
        core.append(&[payload.as_bytes()], 0).unwrap();
        core.sync().unwrap();
        core.maybe_roll().unwrap();
    }
    core.segments().iter().map(|s| s.path.clone()).collect()
}

fn reopen_real(dir: &Path) -> (Vec<(u64, Vec<u8>)>, crate::RecoveryReport) {
    let (core, report) = WalCore::open(Arc::new(StdFs), dir, WalOptions::default()).unwrap();
    (all_records(&core, Arc::new(StdFs)), report)
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// The corruption table: each damage, and how many of the 9 records (3 segments of 3)
/// must survive, how many segments are quarantined, and whether a tail was truncated.
#[test]
fn corruption_table() {
    struct Case {
        name: &'static str,
        damage: fn(&Path, &[PathBuf]),
        survivors: usize,
        quarantined: usize,
        truncated: bool,
        ignored: usize,
    }
    let rec = format::framed_len(10);
    let hdr = SEGMENT_HEADER_LEN as u64;
    let _ = (rec, hdr);
    let cases = [
        Case {
            name: "clean",
            damage: |_, _| {},
            survivors: 9,
            quarantined: 0,
            truncated: false,
            ignored: 0,
        },
        Case {
            name: "torn tail: half a record appended to the last segment",
            damage: |_, segs| {
                let last = segs.last().unwrap();
                let mut rec = Vec::new();
                format::encode_record(&mut rec, 10, 0, b"torn-recrd");
                let len = std::fs::metadata(last).unwrap().len();
                patch(last, len, &rec[..rec.len() / 2]);
            },
            survivors: 9,
            quarantined: 0,
            truncated: true,
            ignored: 0,
        },
        Case {
            name: "bad checksum in the last record of the last segment",
            damage: |_, segs| {
                let last = segs.last().unwrap();
                let len = std::fs::metadata(last).unwrap().len();
                patch(last, len - 1, b"X");
            },
            survivors: 8,
            quarantined: 0,
            truncated: true,
            ignored: 0,
        },
        Case {
            name: "bad checksum in a sealed segment",
            damage: |_, segs| {
                let len = std::fs::metadata(&segs[1]).unwrap().len();
                patch(&segs[1], len - 3, b"XYZ");
            },
            survivors: 6,
            quarantined: 1,
            truncated: false,
            ignored: 0,
        },
        Case {
            name: "zeroed header of a sealed segment",
            damage: |_, segs| patch(&segs[0], 0, &[0u8; SEGMENT_HEADER_LEN]),
            survivors: 6,
            quarantined: 1,
            truncated: false,
            ignored: 0,
        },
        Case {
            name: "zeroed header of the last segment",
            damage: |_, segs| patch(segs.last().unwrap(), 0, &[0u8; SEGMENT_HEADER_LEN]),
            survivors: 6,
            quarantined: 1,
            truncated: false,
            ignored: 0,
        },
        Case {
            name: "truncated sealed segment",
            damage: |_, segs| {
                let len = std::fs::metadata(&segs[0]).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&segs[0])
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            },
            survivors: 6,
            quarantined: 1,
            truncated: false,
            ignored: 0,
        },
        Case {
            name: "empty file with a segment name at the end",
            damage: |dir, _| {
                std::fs::write(dir.join(format::segment_file_name(10)), b"").unwrap();
            },
            survivors: 9,
            quarantined: 1,
            truncated: false,
            ignored: 0,
        },
        Case {
            name: "garbage file in the directory",
            damage: |dir, _| std::fs::write(dir.join("notes.txt"), b"operator scribbles").unwrap(),
            survivors: 9,
            quarantined: 0,
            truncated: false,
            ignored: 1,
        },
        Case {
            name: "garbage bytes in a file with a segment name",
            damage: |dir, _| {
                std::fs::write(dir.join(format::segment_file_name(99)), vec![0xAB; 500]).unwrap()
            },
            survivors: 9,
            quarantined: 1,
            truncated: false,
            ignored: 0,
        },
    ];
    for case in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let segs = build_real(&dir, 9);
        assert_eq!(segs.len(), 3, "setup: three segments");
        (case.damage)(&dir, &segs);
        let (records, report) = reopen_real(&dir);
        assert_eq!(records.len(), case.survivors, "{}: survivors", case.name);
        assert_eq!(
            report.quarantined.len(),
            case.quarantined,
            "{}: quarantined",
            case.name
        );
        assert_eq!(
            report.truncated_bytes > 0,
            case.truncated,
            "{}: truncated",
            case.name
        );
        assert_eq!(report.ignored.len(), case.ignored, "{}: ignored", case.name);
        for q in &report.quarantined {
            assert!(q.moved_to.exists(), "{}: quarantined file kept", case.name);
        }
        // Surviving records are intact and in order.
        for w in records.windows(2) {
            assert!(w[0].0 < w[1].0, "{}: order", case.name);
        }
        for (_, p) in &records {
            assert!(p.starts_with(b"record-"), "{}: payload intact", case.name);
        }
        // A second start-up finds nothing more to fix, and the WAL accepts writes.
        let (core, report2) = WalCore::open(Arc::new(StdFs), &dir, WalOptions::default()).unwrap();
        assert!(
            report2.quarantined.is_empty(),
            "{}: second open quarantines nothing",
            case.name
        );
        assert_eq!(
            report2.truncated_bytes, 0,
            "{}: second open truncates nothing",
            case.name
        );
        let mut core = core;
        let next = core.append(&[b"after"], 0).unwrap();
        core.sync().unwrap();
        assert!(
            records.iter().all(|(s, _)| *s < next),
            "{}: no sequence reuse",
            case.name
        );
    }
}

#[derive(Default)]
struct CountingObserver {
    batches: AtomicUsize,
    records: AtomicUsize,
}

impl WalObserver for CountingObserver {
    fn batch(&self, records: usize, _bytes: u64, _w: Duration, _s: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs_and_acks_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let observer = Arc::new(CountingObserver::default());
    let (wal, _) = Wal::open(
        &tmp.path().join("wal"),
        WalOptions::default(),
        observer.clone(),
    )
    .unwrap();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let ack = wal.append(format!("t{t}-{i}").into_bytes()).await.unwrap();
                seqs.push(ack.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        64 * 20,
        "every append acknowledged with a unique sequence"
    );
    assert_eq!(wal.committed_seq(), 64 * 20);
    let batches = observer.batches.load(Ordering::Relaxed);
    assert_eq!(observer.records.load(Ordering::Relaxed), 64 * 20);
    assert!(
        batches < 64 * 20 / 2,
        "group commit batched: {batches} fsyncs for 1280 appends"
    );
    let read: Vec<_> = wal.read_from(1).map(|r| r.unwrap()).collect();
    assert_eq!(read.len(), 64 * 20);
}

#[test]
fn fsync_failure_stops_acknowledgements_for_good() {
    let fs = Arc::new(SimFs::default());
    let wal = open_sim(&fs, Path::new("/wal"), WalOptions::default());
    wal.append_blocking(b"before".to_vec()).unwrap();
    fs.fail_next_sync();
    let err = wal.append_blocking(b"during".to_vec()).unwrap_err();
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    assert!(!err.is_retryable());
    // The next fsync would succeed, but the WAL must not retry or accept anything.
    let err = wal.append_blocking(b"after".to_vec()).unwrap_err();
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    assert!(wal.failure().unwrap().contains("fdatasync"));
    assert_eq!(wal.committed_seq(), 1);
}

#[test]
fn no_space_is_retryable_and_leaves_a_clean_log() {
    let fs = Arc::new(SimFs::default());
    let dir = Path::new("/wal");
    let wal = open_sim(&fs, dir, WalOptions::default());
    wal.append_blocking(b"one".to_vec()).unwrap();
    fs.set_no_space(true);
    let err = wal.append_blocking(b"two".to_vec()).unwrap_err();
    assert!(matches!(err, WalError::NoSpace { .. }), "{err}");
    assert!(err.is_retryable());
    fs.set_no_space(false);
    wal.append_blocking(b"three".to_vec()).unwrap();
    drop(wal);
    std::thread::sleep(Duration::from_millis(50));
    fs.crash(7);
    let (core, report) = WalCore::open(fs.clone(), dir, WalOptions::default()).unwrap();
    assert!(report.quarantined.is_empty());
    let payloads: Vec<Vec<u8>> = all_records(&core, fs).into_iter().map(|(_, p)| p).collect();
    assert_eq!(payloads, vec![b"one".to_vec(), b"three".to_vec()]);
}

#[test]
fn budget_refuses_retryably_and_truncation_frees_it() {
    let fs = Arc::new(SimFs::default());
    let opts = WalOptions {
        segment_bytes: 256,
        max_bytes: 1024,
        ..WalOptions::default()
    };
    let wal = open_sim(&fs, Path::new("/wal"), opts);
    let mut accepted = 0;
    let err = loop {
        match wal.append_blocking(vec![7u8; 100]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, WalError::Full { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(accepted >= 5, "accepted {accepted}");
    assert!(wal.size_bytes() <= 1024);
    let mut cursor = wal.cursor("store").unwrap();
    assert_eq!(cursor.position(), 1);
    assert_eq!(cursor.read().count(), accepted);
    cursor.checkpoint(accepted as u64).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let removed = rt.block_on(wal.truncate_before(cursor.position())).unwrap();
    assert!(removed > 0);
    wal.append_blocking(vec![7u8; 100]).unwrap();
    // The cursor is durable.
    assert_eq!(wal.cursor("store").unwrap().position(), accepted as u64);
    assert!(wal.cursor("../etc").is_err());
}

#[test]
fn os_mode_acknowledges_without_waiting_for_fsync() {
    let fs = Arc::new(SimFs::default());
    let opts = WalOptions {
        durability: Durability::Os,
        os_sync_interval: Duration::from_secs(3600),
        ..WalOptions::default()
    };
    let wal = open_sim(&fs, Path::new("/wal"), opts);
    wal.append_blocking(vec![0]).unwrap();
    let syncs_before = fs.syncs();
    for i in 1..10u8 {
        wal.append_blocking(vec![i]).unwrap();
    }
    assert_eq!(
        fs.syncs(),
        syncs_before,
        "os mode does not fsync per append"
    );
    assert_eq!(wal.committed_seq(), 10);
}

#[test]
fn tailer_returns_every_committed_record_once_across_rolls_and_truncation() {
    let fs = Arc::new(SimFs::default());
    let opts = WalOptions {
        segment_bytes: 300,
        ..WalOptions::default()
    };
    let wal = open_sim(&fs, Path::new("/wal"), opts);
    let mut tail = wal.tail(1);
    assert!(
        tail.poll(1 << 20).unwrap().is_empty(),
        "nothing committed yet"
    );
    let mut seen = Vec::new();
    for round in 0..20u64 {
        for i in 0..7u64 {
            let payload = format!("r{round}-{i}").repeat((i as usize % 3) + 1);
            wal.append_blocking(payload.into_bytes()).unwrap();
        }
        // Small budgets force many partial reads.
        loop {
            let got = tail.poll(64).unwrap();
            if got.is_empty() {
                break;
            }
            seen.extend(got.into_iter().map(|r| r.seq));
        }
        if round % 5 == 4 {
            wal.truncate_before_blocking(tail.next_seq()).unwrap();
        }
    }
    let expected: Vec<u64> = (1..=140).collect();
    assert_eq!(seen, expected, "every record once, in order");
    // A tailer from before the oldest kept record skips what truncation removed.
    let mut old = wal.tail(1);
    let got: Vec<u64> = old
        .poll(1 << 20)
        .unwrap()
        .into_iter()
        .map(|r| r.seq)
        .collect();
    assert!(got[0] > 1, "truncated records are skipped, not an error");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(got.last(), Some(&140));
    // A tailer from the middle of a segment finds its place.
    let mid_seq = got[0] + 1;
    let mut mid = wal.tail(mid_seq);
    let got: Vec<u64> = mid
        .poll(1 << 20)
        .unwrap()
        .into_iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(got.first(), Some(&mid_seq));
    assert_eq!(got.last(), Some(&140));
}

/// Regression: a poll whose budget ran out in front of a record larger than what was left
/// of it read the whole rest of the segment to get that one record.
#[test]
fn a_record_larger_than_the_budget_left_is_read_alone() {
    let fs = Arc::new(SimFs::default());
    let opts = WalOptions {
        segment_bytes: 64 << 20,
        ..WalOptions::default()
    };
    let wal = open_sim(&fs, Path::new("/wal"), opts);
    // 400 records of 10 to 30 KB: about 8 MB in one segment.
    let sizes: Vec<usize> = (0..400).map(|i| 10_000 + (i * 7_919) % 20_000).collect();
    for (i, n) in sizes.iter().enumerate() {
        wal.append_blocking(vec![i as u8; *n]).unwrap();
    }
    let mut tail = wal.tail(1);
    let budget = 100_000;
    let mut seen = 0usize;
    let mut polls = 0u64;
    let before = fs.bytes_read();
    loop {
        let got = tail.poll(budget).unwrap();
        if got.is_empty() {
            break;
        }
        for r in &got {
            assert_eq!(r.payload.len(), sizes[seen], "record {}", r.seq);
            seen += 1;
        }
        polls += 1;
    }
    assert_eq!(seen, sizes.len(), "every record once");
    let total: u64 = sizes.iter().map(|&n| crate::format::framed_len(n)).sum();
    let read = fs.bytes_read() - before;
    // Each poll reads its budget, and past it at most the one record that did not fit
    // (with what is read again of a record cut at the end of a read); reading the rest
    // of the segment each time would be hundreds of megabytes here.
    assert!(
        read <= total + polls * budget as u64,
        "{read} bytes read for {total} bytes of records in {polls} polls"
    );
}

/// Regression: when the last segment was full at start-up (no active segment), truncating
/// before the next sequence number removed every segment, and the next start numbered
/// records from 1 again, below what the store had already made durable: new records were
/// then skipped as "already durable" and truncated away. Found by the pipeline's crash test.
#[test]
fn sequence_numbers_survive_truncating_everything() {
    let fs = Arc::new(SimFs::default());
    let dir = Path::new("/wal");
    let opts = WalOptions {
        segment_bytes: 64,
        ..small_opts()
    };
    let (mut core, _) = WalCore::open(fs.clone(), dir, opts.clone()).unwrap();
    for i in 0..5u8 {
        core.append(&[&[i; 80][..]], 0).unwrap();
        core.sync().unwrap();
    }
    drop(core);
    // Reopened with the last segment full: nothing is active.
    let (mut core, _) = WalCore::open(fs.clone(), dir, opts.clone()).unwrap();
    assert_eq!(core.next_seq(), 6);
    core.truncate_before(6).unwrap();
    drop(core);
    let (mut core, report) = WalCore::open(fs.clone(), dir, opts.clone()).unwrap();
    assert_eq!(core.next_seq(), 6, "numbering restarted: {report:?}");
    assert_eq!(core.append(&[b"next"], 0).unwrap(), 6);
    // The floor from the store: never hand out a number at or below what it made durable.
    drop(core);
    let floor = WalOptions {
        min_next_seq: 100,
        ..opts
    };
    let (mut core, _) = WalCore::open(fs, dir, floor).unwrap();
    assert_eq!(core.next_seq(), 100);
    assert_eq!(core.append(&[b"after the floor"], 0).unwrap(), 100);
}

/// An acknowledgement says where its record lies; `read_record` reads exactly that
/// record back, across segment rolls and group commits, until truncation removes it.
#[tokio::test]
async fn acks_place_records_that_read_record_finds() {
    let fs = Arc::new(SimFs::default());
    let opts = WalOptions {
        segment_bytes: 300,
        ..WalOptions::default()
    };
    let wal = open_sim(&fs, Path::new("/wal"), opts);
    // Concurrent appends share group commits: several records per batch.
    let mut acks = Vec::new();
    for wave in 0..12u64 {
        let mut tasks = Vec::new();
        for i in 0..5u64 {
            let w = wal.clone();
            let n = wave * 5 + i;
            let payload = format!("record {n} ")
                .repeat(1 + (n as usize % 5))
                .into_bytes();
            tasks.push(tokio::spawn(async move {
                (w.append(payload.clone()).await.unwrap(), payload)
            }));
        }
        for t in tasks {
            acks.push(t.await.unwrap());
        }
    }
    let segments: std::collections::BTreeSet<u64> = acks.iter().map(|(a, _)| a.segment).collect();
    assert!(segments.len() > 3, "the records span several segments");
    for (ack, payload) in &acks {
        let rec = wal.read_record(ack.seq, ack.segment, ack.offset).unwrap();
        assert_eq!(
            rec.map(|r| (r.seq, r.payload)),
            Some((ack.seq, payload.clone()))
        );
    }
    // A wrong place is an error naming the record, not another record's payload.
    let (a, _) = &acks[10];
    let err = wal.read_record(a.seq + 1, a.segment, a.offset).unwrap_err();
    assert!(
        matches!(err, WalError::BadRecord { seq, .. } if seq == a.seq + 1),
        "{err}"
    );
    // Not committed yet, or truncated away: nothing.
    assert!(
        wal.read_record(1_000, a.segment, a.offset)
            .unwrap()
            .is_none()
    );
    let last = acks.iter().map(|(a, _)| a.seq).max().unwrap();
    wal.truncate_before(last).await.unwrap();
    let (first, _) = acks.iter().find(|(a, _)| a.seq == 1).unwrap();
    assert!(
        wal.read_record(1, first.segment, first.offset)
            .unwrap()
            .is_none()
    );
    let (newest, p) = acks.iter().find(|(a, _)| a.seq == last).unwrap();
    let rec = wal
        .read_record(newest.seq, newest.segment, newest.offset)
        .unwrap();
    assert_eq!(
        rec.map(|r| r.payload),
        Some(p.clone()),
        "the active segment stays"
    );
}
