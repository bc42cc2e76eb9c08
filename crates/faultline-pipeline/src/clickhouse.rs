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
//! [`Shipper::keep_from`].
//!
//! **Rollups.** With each batch the writer inserts the RED rollups and dependency edges
//! of its records (schema version 2 in `faultline_clickhouse::schema`): records are
//! grouped in chunks of [`CHUNK_RECORDS`] by sequence number, each chunk's rollups are
//! built in memory as its records are shipped (calls matched within the chunk, as the
//! embedded store matches them within a head), and every insert writes the parts its
//! records changed, versioned by the last record counted. A part's content is a function
//! of the WAL alone, so a retry or a re-insert after a crash writes the same or a larger
//! part and nothing counts twice. After a restart the chunk so far is rebuilt from the
//! WAL, which is why the WAL may be truncated only before [`Shipper::keep_from`], the
//! start of the current chunk.
//!
//! A record that does not decode passed the WAL's checksum, so it is a bug or a format
//! of another version: it is counted and logged, and skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::collections::BTreeSet;

use faultline_clickhouse::{ChError, ClickHouse, RollupPart};
use faultline_model::envelope;
use faultline_model::span::{Span, from_otlp_owned};
use faultline_store::rollup::RollupBuilder;
use faultline_wal::{Cursor, Record, Tailer, Wal, WalError};

/// WAL records per rollup chunk: chunk `k` holds the records `k * CHUNK_RECORDS` to
/// `(k + 1) * CHUNK_RECORDS - 1`. Larger chunks mean fewer rollup rows to read per
/// minute and more memory to match calls (about 40 bytes per span of the chunk).
pub const CHUNK_RECORDS: u64 = 1024;

/// The first sequence number of the chunk of record `seq`.
fn chunk_of(seq: u64) -> u64 {
    seq - seq % CHUNK_RECORDS
}

/// Decodes one WAL record into spans as the pipeline does.
fn decode(r: &Record) -> Result<Vec<Span>, faultline_model::envelope::EnvelopeError> {
    envelope::decode(&r.payload)
        .and_then(|e| e.request())
        .map(from_otlp_owned)
}

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
    /// The rollup chunk being built: its first sequence number and its rollups so far.
    chunk: u64,
    builder: RollupBuilder,
    /// The rollup parts of the waiting batch.
    parts: Vec<RollupPart>,
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
        let position = cursor.position();
        let tailer = wal.tail(position);
        let mut me = Self {
            ch,
            batch_next: position,
            cursor,
            tailer,
            opts,
            stats: Arc::default(),
            batch: Vec::new(),
            read_ahead: VecDeque::new(),
            chunk: chunk_of(position),
            builder: RollupBuilder::default(),
            parts: Vec::new(),
        };
        me.rebuild_chunk(wal, position)?;
        Ok(me)
    }

    /// Rebuilds the current chunk's rollups from its records before `position` (already
    /// in ClickHouse), so the next parts written hold the whole chunk.
    fn rebuild_chunk(&mut self, wal: &Wal, position: u64) -> Result<(), ShipError> {
        if self.chunk >= position {
            return Ok(());
        }
        let mut tail = wal.tail(self.chunk);
        let mut first = None;
        'read: loop {
            let records = tail.poll(self.opts.batch_bytes)?;
            if records.is_empty() {
                break;
            }
            for r in records {
                if r.seq >= position {
                    break 'read;
                }
                first.get_or_insert(r.seq);
                if let Ok(spans) = decode(&r) {
                    for s in &spans {
                        self.builder.push(s);
                    }
                }
            }
        }
        if first.is_none_or(|f| f > self.chunk.max(1)) {
            tracing::warn!(
                chunk = self.chunk,
                first_found = ?first,
                "the WAL no longer holds the start of the current rollup chunk; RED figures of its records may be undercounted in ClickHouse. The WAL must be truncated only before the writer's position"
            );
        }
        Ok(())
    }

    /// The writer's figures.
    pub fn stats(&self) -> Arc<ShipperStats> {
        self.stats.clone()
    }

    /// The first record not yet durably in ClickHouse.
    pub fn position(&self) -> u64 {
        self.cursor.position()
    }

    /// Where the WAL may be truncated: the start of the current rollup chunk (rebuilt
    /// from the WAL after a restart), at or before [`Self::position`].
    pub fn keep_from(&self) -> u64 {
        self.chunk.min(self.cursor.position())
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
        if let Err(e) = self
            .ch
            .insert(&refs)
            .and_then(|()| self.ch.insert_rollups(&self.parts))
        {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.stats.last_error.lock() {
                *last = Some(e.to_string());
            }
            return Err(e.into());
        }
        let spans: usize = self.batch.iter().map(|(_, s)| s.len()).sum();
        let records = self.batch.len();
        self.batch.clear();
        self.parts.clear();
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
            match decode(&r) {
                Ok(s) => {
                    spans += s.len();
                    self.batch.push((r.seq, s));
                }
                Err(e) => {
                    self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(seq = r.seq, error = %e, "a WAL record does not decode; it is skipped, not sent to ClickHouse");
                }
            }
        }
        self.roll_up();
        Ok(())
    }

    /// Adds the batch's records to their chunks' rollups and sets the parts to insert
    /// with it: of each chunk the batch touched, the (minute, service) parts its spans
    /// fell in and every edge part (a call completes in the minute of its child, which an
    /// earlier batch may have brought).
    fn roll_up(&mut self) {
        let mut touched = BTreeSet::new();
        let mut last = None;
        for (seq, spans) in &self.batch {
            if chunk_of(*seq) != self.chunk {
                if let Some(last) = last.take() {
                    self.parts
                        .extend(parts_of(&self.builder, self.chunk, last, &touched));
                }
                touched.clear();
                self.chunk = chunk_of(*seq);
                self.builder = RollupBuilder::default();
            }
            for s in spans {
                self.builder.push(s);
                touched.insert((s.start_ns / 60_000_000_000, s.service().to_string()));
            }
            last = Some(*seq);
        }
        if let Some(last) = last {
            self.parts
                .extend(parts_of(&self.builder, self.chunk, last, &touched));
        }
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

/// The parts of `builder` (chunk `chunk`, records up to `version`) to write: those of
/// the touched (minute, service) pairs, and every edge part.
fn parts_of(
    builder: &RollupBuilder,
    chunk: u64,
    version: u64,
    touched: &BTreeSet<(u64, String)>,
) -> Vec<RollupPart> {
    builder
        .rollups()
        .parts()
        .into_iter()
        .filter(|(minute, service, _)| match service {
            Some(s) => touched.contains(&(*minute, s.clone())),
            None => true,
        })
        .map(|(minute, service, part)| RollupPart {
            minute,
            service,
            chunk,
            version,
            cells: part.encode(),
        })
        .collect()
}
