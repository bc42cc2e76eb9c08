//! The ClickHouse writer ([`Shipper`], issue 19): acknowledged WAL records to ClickHouse,
//! the WAL staying the durability point.
//!
//! A named WAL cursor (`DATA_DIR/wal/cursors/NAME.cursor`) holds the first record not yet
//! in ClickHouse. Each [`Shipper::step`] reads the records after it (up to a batch of
//! spans or payload bytes), decodes them as the pipeline does (envelope, OTLP, flat
//! spans), inserts them in one request, and only once ClickHouse acknowledged that insert
//! moves the cursor past them, durably. A crash or a failed insert leaves the cursor
//! where it was, so the records are inserted again: spans are keyed by (node, record,
//! index), and ClickHouse answers each once however often it was inserted. While
//! ClickHouse is down or slow the batch waits and [`Shipper::run`] retries with
//! exponential backoff; the WAL absorbs what arrives meanwhile, within its budget, as it
//! does for the embedded store. The WAL may be truncated only before
//! [`Shipper::position`].
//!
//! A record that does not decode passed the WAL's checksum, so it is a bug or a format
//! of another version: it is counted and logged, and skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use faultline_clickhouse::{ChError, ClickHouse};
use faultline_model::envelope;
use faultline_model::span::{Span, from_otlp_owned};
use faultline_wal::{Cursor, Record, Tailer, Wal, WalError};

/// Batching and retrying.
#[derive(Debug, Clone)]
pub struct ShipperOptions {
    /// Spans per insert at most (a record is never split).
    pub batch_spans: usize,
    /// Payload bytes read from the WAL per insert at most.
    pub batch_bytes: usize,
    /// Pause of [`Shipper::run`] when the WAL has nothing new.
    pub idle: Duration,
    /// First and largest pause between failed attempts.
    pub backoff: (Duration, Duration),
}

impl Default for ShipperOptions {
    fn default() -> Self {
        Self {
            batch_spans: 50_000,
            batch_bytes: 32 << 20,
            idle: Duration::from_millis(100),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// What went wrong in a step; the step's records wait for the next.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// ClickHouse refused or could not be reached.
    #[error(transparent)]
    ClickHouse(#[from] ChError),
    /// The WAL could not be read or the cursor not written.
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Figures of the writer, for the status page and `/metrics`.
#[derive(Debug, Default)]
pub struct ShipperStats {
    /// Records whose spans ClickHouse acknowledged.
    pub records: AtomicU64,
    /// Spans ClickHouse acknowledged.
    pub spans: AtomicU64,
    /// Inserts acknowledged.
    pub inserts: AtomicU64,
    /// Inserts that failed (each retried).
    pub failures: AtomicU64,
    /// Records skipped because they do not decode.
    pub undecodable: AtomicU64,
    /// The last failure, until an insert succeeds again.
    pub last_error: Mutex<Option<String>>,
}

/// Ships acknowledged WAL records to ClickHouse (see the module doc).
#[derive(Debug)]
pub struct Shipper {
    ch: ClickHouse,
    cursor: Cursor,
    tailer: Tailer,
    opts: ShipperOptions,
    stats: Arc<ShipperStats>,
    /// Records read and not yet acknowledged by ClickHouse, and the sequence after them.
    batch: Vec<(u64, Vec<Span>)>,
    batch_next: u64,
    /// Records the tailer returned beyond the last batch.
    read_ahead: VecDeque<Record>,
}

impl Shipper {
    /// A writer from `wal` to `ch` that keeps its position in the WAL cursor `cursor`.
    pub fn new(
        ch: ClickHouse,
        wal: &Wal,
        cursor: &str,
        opts: ShipperOptions,
    ) -> Result<Self, ShipError> {
        let cursor = wal.cursor(cursor)?;
        let tailer = wal.tail(cursor.position());
        Ok(Self {
            ch,
            batch_next: cursor.position(),
            cursor,
            tailer,
            opts,
            stats: Arc::default(),
            batch: Vec::new(),
            read_ahead: VecDeque::new(),
        })
    }

    /// The writer's figures.
    pub fn stats(&self) -> Arc<ShipperStats> {
        self.stats.clone()
    }

    /// The first record not yet durably in ClickHouse: the WAL may be truncated before it.
    pub fn position(&self) -> u64 {
        self.cursor.position()
    }

    /// Reads the next batch (or retries the waiting one), inserts it and moves the
    /// cursor past it; returns the records shipped (0: nothing new). Blocking.
    pub fn step(&mut self) -> Result<usize, ShipError> {
        if self.batch.is_empty() {
            self.fill()?;
        }
        if self.batch.is_empty() {
            // Only undecodable records were read: move past them, or the WAL could never
            // be truncated there.
            if self.batch_next > self.cursor.position() {
                self.cursor.checkpoint(self.batch_next)?;
            }
            return Ok(0);
        }
        let refs: Vec<(u64, &[Span])> = self
            .batch
            .iter()
            .map(|(seq, spans)| (*seq, spans.as_slice()))
            .collect();
        if let Err(e) = self.ch.insert(&refs) {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.stats.last_error.lock() {
                *last = Some(e.to_string());
            }
            return Err(e.into());
        }
        let spans: usize = self.batch.iter().map(|(_, s)| s.len()).sum();
        let records = self.batch.len();
        self.batch.clear();
        self.stats.inserts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(records as u64, Ordering::Relaxed);
        self.stats.spans.fetch_add(spans as u64, Ordering::Relaxed);
        if let Ok(mut last) = self.stats.last_error.lock() {
            *last = None;
        }
        // Only now: a crash before this line inserts the batch again, harmlessly.
        self.cursor.checkpoint(self.batch_next)?;
        Ok(records)
    }

    /// Reads records after the batch's end until the batch is full or the WAL has no more.
    fn fill(&mut self) -> Result<(), ShipError> {
        let mut spans = 0;
        let mut bytes = 0;
        while spans < self.opts.batch_spans && bytes < self.opts.batch_bytes {
            let Some(r) = self.read_ahead.pop_front() else {
                let records = self.tailer.poll(self.opts.batch_bytes)?;
                if records.is_empty() {
                    break;
                }
                self.read_ahead.extend(records);
                continue;
            };
            bytes += r.payload.len();
            self.batch_next = r.seq + 1;
            match envelope::decode(&r.payload).and_then(|e| e.request()) {
                Ok(req) => {
                    let s = from_otlp_owned(req);
                    spans += s.len();
                    self.batch.push((r.seq, s));
                }
                Err(e) => {
                    self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(seq = r.seq, error = %e, "a WAL record does not decode; it is skipped, not sent to ClickHouse");
                }
            }
        }
        Ok(())
    }

    /// Ships until `stop` is set, pausing when the WAL has nothing new and backing off
    /// exponentially while ClickHouse fails. Blocking: run it on a thread of its own.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut backoff = self.opts.backoff.0;
        while !stop.load(Ordering::Relaxed) {
            match self.step() {
                Ok(0) => std::thread::sleep(self.opts.idle),
                Ok(_) => backoff = self.opts.backoff.0,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "writing to ClickHouse failed; the records wait in the WAL");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.opts.backoff.1);
                }
            }
        }
    }
}
