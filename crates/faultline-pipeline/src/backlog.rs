//! The backlog thread: replays deferred WAL ranges (what was committed before a restart,
//! what the store left pending, what the ingest thread skipped after a stall), oldest
//! first, behind live data: at most at the backlog rate while live data flows, and as fast
//! as the store takes it while the ingest thread finds nothing new.
//!
//! It replays only while the ingest thread has nothing waiting, or once the WAL is
//! `backlog_first_at` full (the backlog pins the WAL: it cannot be truncated past it, so it
//! must drain before intake starts shedding), and never while the head is full.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use faultline_model::envelope;
use faultline_model::pending::RecordAt;
use faultline_wal::{Record, Tailer};

use crate::ingest::Range;
use crate::process::{process_or_dead_letter, record_spans};
use crate::rate::RateLimit;
use crate::{POLL_BYTES, Shared, Step};

/// The backlog thread's state: ranges still to replay, each with its own reader.
pub(crate) struct Backlog {
    ranges: Receiver<Range>,
    /// Each range with its own tailer: a new tailer scans its segment from the start.
    queue: VecDeque<(u64, u64, Tailer)>,
    rate: RateLimit,
    max_head: usize,
}

impl Backlog {
    pub(crate) fn new(sh: &Shared, ranges: Receiver<Range>) -> Self {
        sh.stats
            .backlog
            .rate
            .store(sh.opts.backlog_rate, Ordering::Relaxed);
        Self {
            ranges,
            queue: VecDeque::new(),
            rate: RateLimit::new(sh.opts.backlog_rate),
            max_head: sh.max_head(),
        }
    }

    /// Whether a range is queued.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes the ranges handed over so far, counting what each holds; waits up to `wait`
    /// for the first when none is queued. Returns `false` once the ingest side is gone and
    /// nothing is left to replay.
    pub(crate) fn take_ranges(&mut self, sh: &Shared, wait: Duration) -> bool {
        let mut wait = if self.queue.is_empty() {
            wait
        } else {
            Duration::ZERO
        };
        loop {
            match self.ranges.recv_timeout(wait) {
                Ok((first, last)) => {
                    let (records, spans) = scan_range(sh, first, last, self.queue.is_empty());
                    // Ranges deferred later were noted by intake; this counts only the
                    // start's, which come first.
                    sh.opts.pending.scanned();
                    tracing::info!(
                        first,
                        last,
                        records,
                        spans,
                        "backlog to replay in the background"
                    );
                    self.queue.push_back((first, last, sh.wal.tail(first)));
                    wait = Duration::ZERO;
                }
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return !self.queue.is_empty(),
            }
        }
    }

    /// Replays one poll of the oldest range, if live data and the head allow it.
    pub(crate) fn step(&mut self, sh: &Shared) -> Step {
        let Some((first, last, tail)) = self.queue.front_mut() else {
            return Step::Idle;
        };
        let (first, last) = (*first, *last);
        let b = &sh.stats.backlog;
        let wal_use = sh.wal.size_bytes() as f64 / sh.wal.options().max_bytes.max(1) as f64;
        if (b.live_behind.load(Ordering::Relaxed) && wal_use < sh.opts.backlog_first_at)
            || sh.store.head_spans() >= self.max_head
        {
            // As the ingest thread does while paused (`Store::free_retired`).
            sh.store.free_retired(Duration::ZERO);
            return Step::Paused;
        }
        let batch = match tail.poll(sh.backlog_poll_bytes) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the backlog from the WAL; retrying");
                return Step::Failed;
            }
        };
        if batch.is_empty() && tail.next_seq() <= last {
            // Committed records that cannot be read now (the reader stops at a damaged
            // frame): never finish the range past them, or the WAL would be truncated over
            // records nobody indexed.
            tracing::error!(
                next = tail.next_seq(),
                last,
                "cannot read the next backlog record from the WAL; retrying (`faultline wal verify` checks the segments)"
            );
            return Step::Failed;
        }
        let mut done = tail.next_seq() > last;
        for rec in &batch {
            if rec.seq > last {
                done = true;
                break;
            }
            let spans = record_spans(&rec.payload);
            if sh.store.is_pending(rec.seq) {
                // The backlog rate is a cap for busy times: with no live data waiting, the
                // backlog replays as fast as the store takes it.
                if !b.live_idle.load(Ordering::Relaxed) {
                    self.rate.take(spans, &sh.stop);
                }
                sh.limit.take(spans, &sh.stop);
                process_or_dead_letter(sh, rec.seq, &rec.payload);
                b.replayed_spans.fetch_add(spans, Ordering::Relaxed);
            }
            b.replayed(1, spans);
            b.oldest_ns.store(rec.time_ns, Ordering::Relaxed);
        }
        if done {
            self.finish(sh, first, last);
        }
        Step::Worked
    }

    fn finish(&mut self, sh: &Shared, first: u64, last: u64) {
        if let Err(e) = sh.store.finish_pending(first, last) {
            tracing::error!(error = %e, "cannot finish a backlog range; it is replayed again after a restart");
        }
        self.queue.pop_front();
        let b = &sh.stats.backlog;
        b.ranges.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(first, last, "backlog range replayed");
        if self.queue.is_empty() {
            b.clear();
        }
    }
}

/// Counts the spans of the committed records in `first..=last` and finds the oldest
/// append time, reading only envelope headers. The counts are added to the backlog stats
/// as they are read (a large backlog takes seconds to count); the oldest time is set when
/// `oldest_first` (no earlier range is pending). Records intake did not note in
/// `PipelineOptions::pending` (those committed before this start) are noted now, from
/// their trace ids alone, so their traces are readable by id before the replay.
fn scan_range(sh: &Shared, first: u64, last: u64, oldest_first: bool) -> (u64, u64) {
    let (wal, stop, b) = (&sh.wal, &sh.stop, &sh.stats.backlog);
    let (mut records, mut spans) = (0u64, 0u64);
    let mut tail = wal.tail(first);
    while tail.next_seq() <= last && !stop.load(Ordering::Acquire) {
        let batch = match tail.poll(POLL_BYTES) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, first, last, "cannot count the backlog's spans");
                break;
            }
        };
        let (mut n, mut k) = (0u64, 0u64);
        for rec in batch.iter().filter(|r| r.seq <= last) {
            if oldest_first && records == 0 && n == 0 {
                b.oldest_ns.store(rec.time_ns, Ordering::Relaxed);
            }
            n += 1;
            k += record_spans(&rec.payload);
            note_pending(sh, rec);
        }
        b.records.fetch_add(n, Ordering::Relaxed);
        b.spans.fetch_add(k, Ordering::Relaxed);
        records += n;
        spans += k;
    }
    (records, spans)
}

/// Notes `rec`'s trace ids in `PipelineOptions::pending` unless intake did.
fn note_pending(sh: &Shared, rec: &Record) {
    let pending = &sh.opts.pending;
    // A record the store holds already is skipped by the replay, never removed one by one.
    if pending.has_record(rec.seq) || !sh.store.is_pending(rec.seq) {
        return;
    }
    let at = RecordAt {
        seq: rec.seq,
        segment: rec.segment,
        offset: rec.offset,
    };
    // An undecodable record becomes a dead letter at its replay; it has no traces to note.
    if let Ok(ids) = envelope::decode(&rec.payload).and_then(|e| e.trace_ids()) {
        pending.add(at, ids);
    }
}
