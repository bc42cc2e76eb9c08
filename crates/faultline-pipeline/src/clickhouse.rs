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
//! **Tail sampling.** With a store given ([`Shipper::send_decisions_of`]), the writer
//! also sends the traces the node's tail sampling dropped (schema version 3) every few
//! seconds: all decisions of the blocks still stored at start (again after a restart,
//! which adds nothing), then each new one. Reads on any node answer those traces as
//! dropped. A decision not sent yet when the node dies is sent when it starts again.
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
use faultline_model::pending::PendingTraces;
use faultline_model::span::{Span, TraceId, from_otlp_owned};
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
    /// How long ClickHouse keeps spans, if it is this node's to say: [`Shipper::run`]
    /// drops the day partitions older than that on its server, at start and hourly.
    pub retention: Option<Duration>,
}

impl Default for ShipperOptions {
    fn default() -> Self {
        Self {
            batch_spans: 50_000,
            batch_bytes: 32 << 20,
            idle: Duration::from_millis(100),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            retention: None,
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
    /// The writer's thread could not be started.
    #[error("cannot start the ClickHouse writer's thread: {0}")]
    Thread(String),
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
    /// The rollup chunk being built.
    rollups: ChunkRollups,
    /// The rollup parts of the waiting batch.
    parts: Vec<RollupPart>,
    /// Where [`Self::position`] and [`Self::keep_from`] are published after each step.
    published: Published,
    /// The tail-sampling decisions to send, when a store was given.
    decisions: Option<Decisions>,
    /// The records reads by trace id take from the WAL, forgotten once sent.
    pending: Option<Arc<PendingTraces>>,
}

/// Where the writer is in sending a store's tail-sampling decisions.
struct Decisions {
    store: Arc<faultline_store::Store>,
    /// Decisions made before this second are sent.
    since: u64,
    /// The traces sent whose decision was made in second `since`.
    sent: std::collections::HashSet<TraceId>,
    /// When to look again.
    next: std::time::Instant,
}

impl std::fmt::Debug for Decisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decisions")
            .field("since", &self.since)
            .finish()
    }
}

/// How often the writer looks for new tail-sampling decisions.
const DECISIONS_EVERY: Duration = Duration::from_secs(1);

/// A writer's positions as other threads see them.
#[derive(Debug, Clone)]
struct Published {
    position: Arc<AtomicU64>,
    keep_from: Arc<AtomicU64>,
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
            rollups: ChunkRollups::starting_at(position),
            parts: Vec::new(),
            decisions: None,
            pending: None,
            published: Published {
                position: Arc::new(AtomicU64::new(position)),
                keep_from: Arc::new(AtomicU64::new(0)),
            },
        };
        me.rebuild_chunk(wal, position)?;
        me.publish();
        Ok(me)
    }

    /// Publishes [`Self::keep_from`] into `keep_from` from now on (the pipeline's
    /// truncation floor, `PipelineOptions::keep_from`).
    pub fn publish_keep_from(&mut self, keep_from: Arc<AtomicU64>) {
        self.published.keep_from = keep_from;
        self.publish();
    }

    /// Makes `pending` (what reads by trace id take from the WAL) forget a record once it
    /// is in ClickHouse, and only then: reads answer from ClickHouse, so a record the
    /// node's own store indexed but this writer has not sent is still pending for them.
    pub fn forget_pending_when_sent(&mut self, pending: Arc<PendingTraces>) {
        pending.follow_shipping();
        if let Some(sent) = self.position().checked_sub(1) {
            pending.shipped_through(sent);
        }
        self.pending = Some(pending);
    }

    /// Tells the pending map that everything before the batch's end is in ClickHouse
    /// (or passed over as undecodable).
    fn forget_sent(&self) {
        if let (Some(p), Some(sent)) = (&self.pending, self.batch_next.checked_sub(1)) {
            p.shipped_through(sent);
        }
    }

    fn publish(&self) {
        let p = &self.published;
        p.position.store(self.position(), Ordering::Release);
        p.keep_from.store(self.keep_from(), Ordering::Release);
    }

    /// Rebuilds the current chunk's rollups from its records before `position` (already
    /// in ClickHouse), so the next parts written hold the whole chunk.
    fn rebuild_chunk(&mut self, wal: &Wal, position: u64) -> Result<(), ShipError> {
        let chunk = self.rollups.chunk();
        if chunk >= position {
            return Ok(());
        }
        let mut tail = wal.tail(chunk);
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
                    self.rollups.rebuild(&spans);
                }
            }
        }
        if first.is_none_or(|f| f > chunk.max(1)) {
            tracing::warn!(
                chunk,
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
        self.rollups.chunk().min(self.cursor.position())
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
                self.publish();
                self.forget_sent();
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
        // Readable now: answers need not wait for the checkpoint's fsync to stop saying
        // these records are missing.
        self.published
            .position
            .store(self.batch_next, Ordering::Release);
        self.forget_sent();
        // Only now: a crash before this line inserts the batch again, harmlessly.
        self.cursor.checkpoint(self.batch_next)?;
        self.publish();
        Ok(records)
    }

    /// Reads records after the batch's end until the batch is full or the WAL has no more,
    /// and makes the batch's rollup parts.
    fn fill(&mut self) -> Result<(), ShipError> {
        let read = self.read_batch();
        // Also when a WAL read failed after some records joined the batch: the next step
        // ships the batch as it is, so its parts must be made now or those records would
        // never be counted in the rollups.
        self.parts = self.rollups.add(&self.batch);
        read
    }

    /// The reading part of [`Self::fill`].
    fn read_batch(&mut self) -> Result<(), ShipError> {
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
        Ok(())
    }

    /// Sends the tail-sampling decisions `store` makes (see the module doc).
    pub fn send_decisions_of(&mut self, store: Arc<faultline_store::Store>) {
        self.decisions = Some(Decisions {
            store,
            since: 0,
            sent: std::collections::HashSet::new(),
            next: std::time::Instant::now(),
        });
    }

    /// Sends the decisions made since the last call that succeeded, when it is time to
    /// look; on failure they are sent at the next look.
    fn send_decisions(&mut self) {
        let Some(d) = &mut self.decisions else {
            return;
        };
        if std::time::Instant::now() < d.next {
            return;
        }
        d.next = std::time::Instant::now() + DECISIONS_EVERY;
        let new: Vec<(TraceId, u64)> = d
            .store
            .tail_dropped_since(d.since)
            .into_iter()
            .filter(|(id, at)| *at > d.since || !d.sent.contains(id))
            .collect();
        if new.is_empty() {
            return;
        }
        if let Err(e) = self.ch.insert_dropped(&new) {
            tracing::warn!(error = %e, "cannot send tail-sampling decisions to ClickHouse; retrying");
            return;
        }
        let newest = new.iter().map(|(_, at)| *at).max().unwrap_or(d.since);
        if newest > d.since {
            d.since = newest;
            d.sent.clear();
        }
        d.sent.extend(
            new.iter()
                .filter(|(_, at)| *at == d.since)
                .map(|(id, _)| *id),
        );
    }

    /// Drops ClickHouse's days older than `keep`; how long until the next pass (an hour,
    /// or a minute after a failure).
    fn apply_retention(&self, keep: Duration) -> Duration {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(keep)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        match self.ch.drop_days_before(cutoff) {
            Ok(dropped) => {
                for (table, day) in dropped {
                    tracing::info!(%table, day, "retention: dropped a day of ClickHouse partitions");
                }
                Duration::from_secs(3600)
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot drop old ClickHouse partitions; retrying in a minute");
                Duration::from_secs(60)
            }
        }
    }

    /// Ships until `stop` is set, pausing when the WAL has nothing new and backing off
    /// exponentially while ClickHouse fails; first brings ClickHouse's schema up to date,
    /// retrying while it is away. Blocking: run it on a thread of its own.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut backoff = self.opts.backoff.0;
        while !stop.load(Ordering::Relaxed) {
            match self.ch.migrate() {
                Ok(_) => break,
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut last) = self.stats.last_error.lock() {
                        *last = Some(e.to_string());
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot bring ClickHouse's schema up to date; spans wait in the WAL");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.opts.backoff.1);
                }
            }
        }
        backoff = self.opts.backoff.0;
        let mut retention_at = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(keep) = self.opts.retention
                && std::time::Instant::now() >= retention_at
            {
                retention_at = std::time::Instant::now() + self.apply_retention(keep);
            }
            self.send_decisions();
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

/// The rollups of the chunk of WAL records being shipped (see the module doc), and the
/// parts each batch makes to insert with it.
#[derive(Debug)]
pub struct ChunkRollups {
    chunk: u64,
    builder: RollupBuilder,
}

impl ChunkRollups {
    /// The rollups of the chunk of record `seq`, empty.
    pub fn starting_at(seq: u64) -> Self {
        Self {
            chunk: chunk_of(seq),
            builder: RollupBuilder::default(),
        }
    }

    /// The first sequence number of the chunk.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// Adds spans of the chunk that are already in ClickHouse (after a restart).
    pub fn rebuild(&mut self, spans: &[Span]) {
        for s in spans {
            self.builder.push(s);
        }
    }

    /// Adds a batch of records (in sequence order) to their chunks' rollups and returns
    /// the parts to insert with it: of each chunk the batch touched, the (minute,
    /// service) parts its spans fell in and every edge part (a call completes in the
    /// minute of its child, which an earlier batch may have brought).
    pub fn add(&mut self, batch: &[(u64, Vec<Span>)]) -> Vec<RollupPart> {
        let mut parts = Vec::new();
        let mut touched = BTreeSet::new();
        let mut last = None;
        for (seq, spans) in batch {
            if chunk_of(*seq) != self.chunk {
                if let Some(last) = last.take() {
                    parts.extend(self.parts(last, &touched));
                }
                touched.clear();
                self.chunk = chunk_of(*seq);
                self.builder = RollupBuilder::default();
            }
            let mut prev: Option<(u64, &str)> = None;
            for s in spans {
                self.builder.push(s);
                // A request's spans come grouped by service: one insert per run.
                let at = (s.start_ns / 60_000_000_000, s.service());
                if prev != Some(at) {
                    touched.insert((at.0, at.1.to_string()));
                    prev = Some(at);
                }
            }
            last = Some(*seq);
        }
        if let Some(last) = last {
            parts.extend(self.parts(last, &touched));
        }
        parts
    }

    /// The parts to write for records up to `version`: those of the touched (minute,
    /// service) pairs, and every edge part.
    fn parts(&self, version: u64, touched: &BTreeSet<(u64, String)>) -> Vec<RollupPart> {
        self.builder
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
                chunk: self.chunk,
                version,
                cells: part.encode(),
            })
            .collect()
    }
}

/// Acknowledged records a writer may be behind before its status turns degraded (about
/// a batch and a half of 500-span requests, as the embedded pipeline's `indexing` health
/// allows 100 records).
pub const BEHIND_OK: u64 = 150;

/// What the rest of the process sees of a running writer (cheap to clone).
#[derive(Debug, Clone)]
pub struct WriterView {
    wal: Wal,
    stats: Arc<ShipperStats>,
    position: Arc<AtomicU64>,
}

impl WriterView {
    /// Acknowledged WAL records not yet in ClickHouse.
    pub fn behind(&self) -> u64 {
        (self.wal.committed_seq() + 1).saturating_sub(self.position.load(Ordering::Acquire))
    }

    /// The writer's figures.
    pub fn stats(&self) -> &ShipperStats {
        &self.stats
    }

    /// Why an answer read from ClickHouse may miss acknowledged spans now, if it may:
    /// acknowledged records the writer has not sent yet (as the embedded pipeline says of
    /// records not yet indexed), with its last error while inserts fail.
    pub fn partial_reason(&self) -> Option<String> {
        let behind = self.behind();
        if behind == 0 {
            return None;
        }
        let error = self.stats.last_error.lock().ok().and_then(|e| e.clone());
        Some(match error {
            Some(e) => format!(
                "{behind} acknowledged WAL records are not yet indexed in ClickHouse; the writer retries: {e}"
            ),
            None => format!("{behind} acknowledged WAL records are not yet indexed in ClickHouse"),
        })
    }
}

impl WriterView {
    /// The writer's part of the status page: degraded while it is more than
    /// [`BEHIND_OK`] records behind or its inserts fail.
    pub fn health(&self, url: &str) -> faultline_model::health::Component {
        use faultline_model::health::{Component, Health};
        let behind = self.behind();
        let error = self.stats.last_error.lock().ok().and_then(|e| e.clone());
        let shipped = self.stats.spans.load(Ordering::Relaxed);
        let c = match (&error, behind > BEHIND_OK) {
            (Some(e), _) => Component::new(
                "clickhouse",
                Health::Degraded,
                format!("{behind} acknowledged records wait in the WAL: {e}"),
            )
            .action(format!(
                "check that ClickHouse at {url} runs and accepts inserts; the WAL keeps what waits, within its budget"
            )),
            (None, true) => Component::new(
                "clickhouse",
                Health::Degraded,
                format!("catching up: {behind} acknowledged records not in ClickHouse yet"),
            ),
            (None, false) => Component::new(
                "clickhouse",
                Health::Ok,
                format!("{shipped} spans written to {url} since start"),
            ),
        };
        c.details(serde_json::json!({
            "url": url,
            "behind_records": behind,
            "spans_written": shipped,
            "inserts": self.stats.inserts.load(Ordering::Relaxed),
            "failed_inserts": self.stats.failures.load(Ordering::Relaxed),
            "undecodable_records": self.stats.undecodable.load(Ordering::Relaxed),
            "last_error": error,
        }))
    }
}

/// A [`Shipper`] on a thread of its own.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    view: WriterView,
}

impl Writer {
    /// The writer of a node: brings ClickHouse's schema up to date now when ClickHouse is
    /// up (so reads find the tables; else the thread retries; refused for good, as a
    /// server too old or a schema too new, it is an error), and ships `wal` from its
    /// cursor `clickhouse`, keeping the pipeline's truncation floor
    /// (`pipeline.keep_from`, held at 0 until then) at where the WAL must be kept,
    /// ClickHouse's days within `retention`, sending the tail-sampling decisions of
    /// `store`, and forgetting in `pipeline.pending` what it sent
    /// ([`Shipper::forget_pending_when_sent`]).
    pub fn start(
        ch: ClickHouse,
        wal: &Wal,
        pipeline: &crate::PipelineOptions,
        retention: Duration,
        store: Arc<faultline_store::Store>,
    ) -> Result<Self, ShipError> {
        let keep_from = pipeline.keep_from.clone();
        keep_from.store(0, Ordering::Release);
        match ch.migrate() {
            Err(e) if e.is_permanent() => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "ClickHouse is not ready; spans wait in the WAL"),
            Ok(_) => {}
        }
        let opts = ShipperOptions {
            retention: Some(retention),
            ..ShipperOptions::default()
        };
        let mut shipper = Shipper::new(ch, wal, "clickhouse", opts)?;
        shipper.publish_keep_from(keep_from);
        shipper.send_decisions_of(store);
        shipper.forget_pending_when_sent(pipeline.pending.clone());
        Self::spawn(shipper, wal.clone()).map_err(|e| ShipError::Thread(e.to_string()))
    }

    /// Starts `shipper` (of `wal`) on the thread `clickhouse-writer`.
    pub fn spawn(shipper: Shipper, wal: Wal) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let view = WriterView {
            wal,
            stats: shipper.stats(),
            position: shipper.published.position.clone(),
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("clickhouse-writer".into())
            .spawn(move || shipper.run(&s))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            view,
        })
    }

    /// What the rest of the process sees of it.
    pub fn view(&self) -> WriterView {
        self.view.clone()
    }

    /// Stops the thread after its current step and waits for it.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
