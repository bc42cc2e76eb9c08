//! What the pipeline threads report while they run: counters for `/metrics`, the facts the
//! health rules judge (`health.rs`), and the backlog's progress for partial answers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters the pipeline exposes.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records decoded into the store.
    pub records: AtomicU64,
    /// Spans handed to the store.
    pub spans: AtomicU64,
    /// Records that could not be decoded (they became dead letters).
    pub undecodable: AtomicU64,
    /// Blocks sealed.
    pub blocks: AtomicU64,
    /// Set when sealing failed; cleared by the next success.
    pub seal_failing: AtomicBool,
    /// Why the last seal failed, while sealing fails.
    pub seal_error: Mutex<Option<String>>,
    /// Records moved to the dead letters since start.
    pub dead_letters: AtomicU64,
    /// The backlog being replayed.
    pub backlog: BacklogStats,
}

impl PipelineStats {
    /// Records a seal's outcome.
    pub(crate) fn sealing(&self, error: Option<String>) {
        self.seal_failing.store(error.is_some(), Ordering::Relaxed);
        if let Ok(mut e) = self.seal_error.lock() {
            *e = error;
        }
    }

    /// Why the last seal failed, while sealing fails.
    pub fn seal_error(&self) -> Option<String> {
        self.seal_error.lock().ok().and_then(|e| e.clone())
    }
}

/// What the backlog thread reports.
#[derive(Debug, Default)]
pub struct BacklogStats {
    /// Records and spans handed to the backlog and not yet replayed (counted when a range
    /// is handed over, so they lag a range's scan briefly).
    pub records: AtomicU64,
    /// See `records`.
    pub spans: AtomicU64,
    /// Append time (Unix ns) of the oldest record not yet replayed; 0 when none.
    pub oldest_ns: AtomicU64,
    /// Ranges still to replay (including the one being replayed).
    pub ranges: AtomicU64,
    /// Spans replayed since start.
    pub replayed_spans: AtomicU64,
    /// Times the ingest thread skipped ahead to live data.
    pub skips: AtomicU64,
    /// The configured replay rate, spans per second.
    pub rate: AtomicU64,
    /// Set while the ingest thread is behind: its last poll filled half its budget and
    /// more was committed, or the head is full.
    pub live_behind: AtomicBool,
    /// Set while the ingest thread finds nothing new: no live data waits, so the backlog
    /// replays at full speed (the configured rate caps it only while live data flows).
    pub live_idle: AtomicBool,
}

impl BacklogStats {
    /// A reason answers may be partial while a backlog is pending, or `None`.
    pub fn reason(&self) -> Option<String> {
        let ranges = self.ranges.load(Ordering::Relaxed);
        if ranges == 0 {
            return None;
        }
        let spans = self.spans.load(Ordering::Relaxed);
        let oldest = self.oldest_ns.load(Ordering::Relaxed);
        let since = if oldest == 0 {
            "(still being counted)".to_string()
        } else {
            format!("received since {}", faultline_model::rfc3339(oldest))
        };
        Some(format!(
            "backlog: {spans} acknowledged spans ({} WAL records) {since} are not indexed yet; they are replayed in the background at up to {} spans/s",
            self.records.load(Ordering::Relaxed),
            self.rate.load(Ordering::Relaxed)
        ))
    }

    /// Takes `records` and `spans` off the counts of what is left to replay.
    pub(crate) fn replayed(&self, records: u64, spans: u64) {
        let sub = |a: &AtomicU64, n: u64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.records, records);
        sub(&self.spans, spans);
    }

    /// Clears the counts once no range is left.
    pub(crate) fn clear(&self) {
        self.records.store(0, Ordering::Relaxed);
        self.spans.store(0, Ordering::Relaxed);
        self.oldest_ns.store(0, Ordering::Relaxed);
    }
}
