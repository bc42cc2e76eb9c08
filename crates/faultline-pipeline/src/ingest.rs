//! The ingest thread: reads the WAL in order from the live position and indexes each
//! record, first of all; skips ahead to live data after a restart or a stall, handing what
//! it skipped to the backlog thread (`backlog.rs`).

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

use faultline_store::seqs::SeqRanges;
use faultline_wal::Tailer;

use crate::process::{process_or_dead_letter, record_spans};
use crate::{Shared, Step};

/// A range of WAL records (`first..=last`) handed to the backlog.
pub(crate) type Range = (u64, u64);

/// The ingest thread's state: where it reads, and where it hands ranges over.
pub(crate) struct Ingest {
    tail: Tailer,
    backlog: Sender<Range>,
    max_head: usize,
}

impl Ingest {
    /// Starts in-order ingest after the store's `source_seq`. Everything committed up to
    /// `at_open` (what an earlier process acknowledged and did not seal), and the store's
    /// pending ranges, become the backlog: they are sent to `backlog` and the store is told
    /// (`Store::defer`), so spans acknowledged from now on are indexed first.
    pub(crate) fn start(sh: &Shared, backlog: Sender<Range>, at_open: u64) -> Self {
        let store = &sh.store;
        let pending = store.pending();
        let mut next = store.source_seq() + 1;
        let mut ranges = pending.clone();
        if at_open >= next {
            ranges.insert_range(next, at_open);
        }
        // Counted before the store says the records are handed over, so no one sees
        // "indexed, and no backlog" in between.
        let count = |r: &SeqRanges| r.ranges().len() as u64;
        let b = &sh.stats.backlog;
        b.ranges.store(count(&ranges), Ordering::Relaxed);
        if at_open >= next {
            match store.defer(next, at_open) {
                Ok(()) => next = at_open + 1,
                Err(e) => {
                    tracing::error!(error = %e, "cannot defer the backlog; replaying it in order");
                    ranges = pending;
                    b.ranges.store(count(&ranges), Ordering::Relaxed);
                }
            }
        }
        // Reads by id wait for the backlog thread to note these ranges' traces.
        sh.opts.pending.expect_scans(count(&ranges));
        for &range in ranges.ranges() {
            let _ = backlog.send(range);
        }
        Self {
            tail: sh.wal.tail(next),
            backlog,
            max_head: sh.max_head(),
        }
    }

    /// One poll: indexes up to `poll_bytes` of records, or skips ahead (see the crate
    /// doc). Pauses while the head is full.
    pub(crate) fn step(&mut self, sh: &Shared) -> Step {
        let live = &sh.stats.backlog.live_behind;
        if sh.store.head_spans() >= self.max_head {
            live.store(true, Ordering::Relaxed);
            // Waiting for a seal: free the last sealed head here, where its spans were
            // allocated, rather than hold it until the next ingest.
            sh.store.free_retired(std::time::Duration::ZERO);
            return Step::Paused;
        }
        let records = match self.tail.poll(sh.poll_bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the WAL; retrying");
                return Step::Failed;
            }
        };
        if let Some(first) = records.first()
            && self.skip_to_live(sh, first.seq, first.time_ns)
        {
            return Step::Worked;
        }
        let idle = records.is_empty();
        sh.stats.backlog.live_idle.store(idle, Ordering::Relaxed);
        let read: usize = records.iter().map(|r| r.payload.len()).sum();
        for rec in records {
            sh.limit.take(record_spans(&rec.payload), &sh.stop);
            process_or_dead_letter(sh, rec.seq, &rec.payload);
        }
        // Behind: this poll filled half its budget and more is committed. (Under steady
        // traffic a record or two always arrives during a batch; that is not behind.)
        live.store(
            read >= sh.poll_bytes / 2 && self.tail.next_seq() <= sh.wal.committed_seq(),
            Ordering::Relaxed,
        );
        if idle { Step::Idle } else { Step::Worked }
    }

    /// After a stall (the record about to be read was appended longer than
    /// `live_first_after` ago), defers everything up to the newest committed record to the
    /// backlog and moves on to live data. Only while no backlog is pending: under sustained
    /// overload skipping again would only pin more of the WAL.
    fn skip_to_live(&mut self, sh: &Shared, first: u64, first_time_ns: u64) -> bool {
        let newest = sh.wal.committed_seq();
        let age = (sh.opts.clock)().saturating_sub(first_time_ns);
        let b = &sh.stats.backlog;
        if age <= sh.opts.live_first_after.as_nanos() as u64
            || newest <= first
            || b.ranges.load(Ordering::Relaxed) != 0
        {
            return false;
        }
        // Counted before the store says the records are handed over.
        b.ranges.fetch_add(1, Ordering::Relaxed);
        match sh.store.defer(first, newest) {
            Ok(()) => {
                tracing::info!(
                    first,
                    last = newest,
                    behind_ms = age / 1_000_000,
                    "indexing live data first; the records in between are replayed in the background"
                );
                b.skips.fetch_add(1, Ordering::Relaxed);
                let _ = self.backlog.send((first, newest));
                self.tail = sh.wal.tail(newest + 1);
                true
            }
            Err(e) => {
                b.ranges.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot defer the backlog; indexing in order");
                false
            }
        }
    }
}
