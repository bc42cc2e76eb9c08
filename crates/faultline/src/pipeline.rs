//! The pipeline from the WAL to the store: a dedicated thread tails the WAL, decodes each
//! record (envelope, OTLP protobuf, flat spans) and hands it to the store; when the store
//! sealed a block, the WAL is truncated before the store's durable position.
//!
//! The sealer thread also enforces retention (age and size) once a second, and merges
//! runs of small blocks every ten seconds when nothing needs sealing.
//!
//! Live data first: everything committed before intake opens is a backlog
//! ([`Store::defer`]), and so is, after a stall, everything up to the newest committed
//! record once the record the ingest thread is about to read was appended more than
//! [`LIVE_FIRST_AFTER`] ago (only while no backlog is pending: under sustained overload
//! skipping again would only pin more of the WAL). The backlog thread counts each range's
//! spans (for the status page and the partial-answer reasons), then replays it at most at
//! the configured rate, and only while the ingest thread has nothing waiting or the WAL is
//! more than half full (the backlog pins the WAL: it cannot be truncated past it). Ranges
//! still pending after a restart (from the manifest) are replayed the same way; in-order
//! ingest starts after the manifest's `source_seq`.
//!
//! `store.max_index_spans_per_second` caps both threads together (a token bucket): it
//! leaves CPU to queries on a shared machine, and the overload test uses it to give the
//! store a small, known capacity.
//!
//! A record that cannot be decoded (it passed its checksum, so this means a bug or a
//! format from another version) is logged with its sequence number and counted in
//! `faultline_store_undecodable_records`; it stays readable with `faultline wal dump`
//! until its segment is truncated. Dead-lettering it is issue 6's work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use faultline_store::Store;
use faultline_wal::Wal;

/// Counters the pipeline exposes.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records decoded into the store.
    pub records: AtomicU64,
    /// Spans handed to the store.
    pub spans: AtomicU64,
    /// Records that could not be decoded.
    pub undecodable: AtomicU64,
    /// Blocks sealed.
    pub blocks: AtomicU64,
    /// Set when sealing failed; cleared by the next success.
    pub seal_failing: AtomicBool,
    /// Why the last seal failed, while sealing fails.
    pub seal_error: std::sync::Mutex<Option<String>>,
    /// Records moved to the dead letters since start.
    pub dead_letters: AtomicU64,
    /// The backlog being replayed.
    pub backlog: BacklogStats,
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
            format!("received since {}", crate::walcmd::time_rfc3339(oldest))
        };
        Some(format!(
            "backlog: {spans} acknowledged spans ({} WAL records) {since} are not indexed yet; they are replayed in the background at up to {} spans/s",
            self.records.load(Ordering::Relaxed),
            self.rate.load(Ordering::Relaxed)
        ))
    }
}

/// A record read by the ingest thread that was appended longer ago than this makes it skip
/// ahead to the newest records (see the module doc).
pub const LIVE_FIRST_AFTER: Duration = Duration::from_secs(5);

/// Default replay rate of the backlog, spans per second.
pub const DEFAULT_BACKLOG_RATE: u64 = 100_000;

/// A token bucket of spans per second holding at most a tenth of a second's worth.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl RateLimit {
    /// A bucket refilled at `rate` spans per second (`u64::MAX`: no limit).
    pub fn new(rate: u64) -> Self {
        let rate = rate as f64;
        Self {
            rate,
            state: std::sync::Mutex::new(((rate / 10.0).max(1.0), std::time::Instant::now())),
        }
    }

    /// Waits until `spans` may be processed (a request larger than the bucket waits for
    /// it to be full, then leaves it in debt).
    pub fn take(&self, spans: u64, stop: &AtomicBool) {
        if self.rate >= u64::MAX as f64 {
            return;
        }
        let burst = (self.rate / 10.0).max(1.0);
        loop {
            let wait = {
                let Ok(mut st) = self.state.lock() else {
                    return;
                };
                let (tokens, at) = &mut *st;
                *tokens = (*tokens + at.elapsed().as_secs_f64() * self.rate).min(burst);
                *at = std::time::Instant::now();
                if *tokens > 0.0 {
                    *tokens -= spans as f64;
                    return;
                }
                Duration::from_secs_f64((-*tokens / self.rate).min(0.1))
            };
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(wait.max(Duration::from_millis(1)));
        }
    }
}

/// Bytes read from the WAL per poll.
const POLL_BYTES: usize = 8 << 20;

/// Starts the pipeline: one thread decodes and ingests, another seals blocks and
/// truncates the WAL, so encoding a block never stalls indexing. Both stop when `stop` is
/// set; the returned handle joins both.
pub fn spawn(
    wal: Wal,
    store: Arc<Store>,
    stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
    dlq_dir: std::path::PathBuf,
    backlog_rate: u64,
    index_rate: u64,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    stats.backlog.rate.store(backlog_rate, Ordering::Relaxed);
    let limit = RateLimit::new(index_rate);
    let (w, st, sa, so) = (wal.clone(), store.clone(), stats.clone(), stop.clone());
    let sealer = std::thread::Builder::new()
        .name("store-sealer".into())
        .spawn(move || seal_loop(w, st, sa, so))?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Everything committed before intake starts is a backlog behind what arrives next.
    let at_open = wal.committed_seq();
    let shared = Arc::new(Shared {
        wal,
        store,
        stats,
        stop,
        dlq_dir,
        limit,
    });
    let sh = shared.clone();
    let backlog = std::thread::Builder::new()
        .name("store-backlog".into())
        .spawn(move || replay_backlog(&sh, rx, backlog_rate))?;
    let ingest = std::thread::Builder::new()
        .name("store-pipeline".into())
        .spawn(move || run(&shared, tx, at_open))?;
    std::thread::Builder::new()
        .name("store-join".into())
        .spawn(move || {
            let _ = ingest.join();
            let _ = backlog.join();
            let _ = sealer.join();
        })
}

/// The head may grow to this many times `block_max_spans` while a block is being sealed;
/// beyond it indexing pauses (intake goes on writing the WAL within its budget), so memory
/// stays bounded when sealing is slower than intake.
const MAX_HEAD_FACTOR: usize = 2;

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// How often small blocks are looked for and merged (when nothing needs sealing).
const COMPACT_EVERY: Duration = Duration::from_secs(10);

fn seal_loop(wal: Wal, store: Arc<Store>, stats: Arc<PipelineStats>, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(10);
    let mut last_retention = std::time::Instant::now() - RETENTION_EVERY;
    let mut last_compaction = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = std::time::Instant::now();
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            if let Err(e) = store.enforce_retention(now_ns) {
                tracing::error!(error = %e, "retention failed; it is retried in a second");
            }
        }
        if !store.should_seal() {
            if last_compaction.elapsed() >= COMPACT_EVERY {
                last_compaction = std::time::Instant::now();
                // One run per pass keeps the sealer responsive; the next pass takes the next.
                if let Err(e) = store.compact() {
                    tracing::error!(error = %e, "compaction failed; it is retried later");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let sealing = std::time::Instant::now();
        match store.seal() {
            Ok(block) => {
                stats.seal_failing.store(false, Ordering::Relaxed);
                if let Ok(mut e) = stats.seal_error.lock() {
                    *e = None;
                }
                backoff = Duration::from_millis(10);
                if let Some(b) = block {
                    stats.blocks.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(block = %b.id, spans = b.spans, traces = b.traces, bytes = b.bytes, ms = sealing.elapsed().as_millis() as u64, "sealed a block");
                }
                if let Err(e) = wal.truncate_before_blocking(store.durable_seq() + 1) {
                    tracing::warn!(error = %e, "cannot truncate the WAL after sealing; it will be retried after the next block");
                }
            }
            Err(e) => {
                // The WAL still holds everything; intake keeps accepting within its budget.
                stats.seal_failing.store(true, Ordering::Relaxed);
                if let Ok(mut last) = stats.seal_error.lock() {
                    *last = Some(e.to_string());
                }
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "sealing a block failed");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Decodes one record and hands its spans to the store.
fn process(store: &Store, stats: &PipelineStats, seq: u64, payload: &[u8]) -> Result<(), String> {
    let req = faultline_intake::envelope::decode(payload)
        .and_then(|env| env.request())
        .map_err(|e| format!("undecodable record: {e}"))?;
    let spans = faultline_model::span::from_otlp_owned(req);
    let n = spans.len() as u64;
    store
        .ingest(seq, spans)
        .map_err(|e| format!("the store refused the record: {e}"))?;
    stats.spans.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Processes a record, retrying with backoff; after [`crate::dlq::MAX_ATTEMPTS`] failures
/// the record becomes a dead letter (durably, before the pipeline moves on).
fn process_or_dead_letter(
    store: &Store,
    stats: &PipelineStats,
    stop: &AtomicBool,
    dlq_dir: &std::path::Path,
    seq: u64,
    payload: &[u8],
) {
    let mut last = String::new();
    for attempt in 1..=crate::dlq::MAX_ATTEMPTS {
        match process(store, stats, seq, payload) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(seq, attempt, error = %e, "processing a WAL record failed");
                last = e;
                if attempt < crate::dlq::MAX_ATTEMPTS {
                    std::thread::sleep(Duration::from_millis(10 << (2 * attempt)));
                }
            }
        }
    }
    let letter = crate::dlq::DeadLetter {
        seq,
        time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        attempts: crate::dlq::MAX_ATTEMPTS,
        reason: last,
        payload: payload.to_vec(),
    };
    // The WAL may be truncated past this record once the store moves on: the dead letter
    // must be on disk first.
    loop {
        match letter.write(dlq_dir) {
            Ok(path) => {
                tracing::error!(seq, file = %path.display(), reason = %letter.reason, "moved a WAL record to the dead letters (`faultline dlq list`)");
                break;
            }
            Err(e) => {
                tracing::error!(seq, error = %e, dir = %dlq_dir.display(), "cannot write a dead letter; retrying in 1 s");
                if stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    stats.undecodable.fetch_add(
        u64::from(letter.reason.starts_with("undecodable")),
        Ordering::Relaxed,
    );
    stats.dead_letters.fetch_add(1, Ordering::Relaxed);
    // Let the store's position move past the record.
    let _ = store.ingest(seq, Vec::new());
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What the ingest and backlog threads share.
struct Shared {
    wal: Wal,
    store: Arc<Store>,
    stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
    dlq_dir: std::path::PathBuf,
    limit: RateLimit,
}

fn run(sh: &Shared, backlog: std::sync::mpsc::Sender<(u64, u64)>, at_open: u64) {
    let Shared {
        wal,
        store,
        stats,
        stop,
        dlq_dir,
        limit,
    } = sh;
    // What an earlier process left pending is replayed in the background, and so is what
    // it acknowledged but did not seal; in-order ingest continues with new records.
    let pending = store.pending();
    let mut next = store.source_seq() + 1;
    let mut ranges = pending.clone();
    if at_open >= next {
        ranges.insert_range(next, at_open);
    }
    // Counted before the store says the records are handed over, so no one sees
    // "indexed, and no backlog" in between.
    let count = |r: &faultline_store::seqs::SeqRanges| r.ranges().len() as u64;
    stats
        .backlog
        .ranges
        .store(count(&ranges), Ordering::Relaxed);
    if at_open >= next {
        match store.defer(next, at_open) {
            Ok(()) => next = at_open + 1,
            Err(e) => {
                tracing::error!(error = %e, "cannot defer the backlog; replaying it in order");
                ranges = pending;
                stats
                    .backlog
                    .ranges
                    .store(count(&ranges), Ordering::Relaxed);
            }
        }
    }
    for &(first, last) in ranges.ranges() {
        let _ = backlog.send((first, last));
    }
    let mut tail = wal.tail(next);
    let max_head = store.block_max_spans().saturating_mul(MAX_HEAD_FACTOR);
    let live = &stats.backlog.live_behind;
    while !stop.load(Ordering::Acquire) {
        if store.head_spans() >= max_head {
            live.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let records = match tail.poll(POLL_BYTES) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the WAL; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Some(first) = records.first() {
            let newest = wal.committed_seq();
            let age = now_ns().saturating_sub(first.time_ns);
            if age > LIVE_FIRST_AFTER.as_nanos() as u64
                && newest > first.seq
                && stats.backlog.ranges.load(Ordering::Relaxed) == 0
            {
                // Counted before the store says the records are handed over, so no one
                // sees "indexed, and no backlog" in between.
                stats.backlog.ranges.fetch_add(1, Ordering::Relaxed);
                match store.defer(first.seq, newest) {
                    Ok(()) => {
                        tracing::info!(
                            first = first.seq,
                            last = newest,
                            behind_ms = age / 1_000_000,
                            "indexing live data first; the records in between are replayed in the background"
                        );
                        stats.backlog.skips.fetch_add(1, Ordering::Relaxed);
                        let _ = backlog.send((first.seq, newest));
                        tail = wal.tail(newest + 1);
                        continue;
                    }
                    Err(e) => {
                        stats.backlog.ranges.fetch_sub(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "cannot defer the backlog; indexing in order");
                    }
                }
            }
        }
        let idle = records.is_empty();
        let read: usize = records.iter().map(|r| r.payload.len()).sum();
        for rec in records {
            limit.take(record_spans(&rec.payload), stop);
            stats.records.fetch_add(1, Ordering::Relaxed);
            process_or_dead_letter(store, stats, stop, dlq_dir, rec.seq, &rec.payload);
        }
        // Behind: this poll filled half its budget and more is committed. (Under steady
        // traffic a record or two always arrives during a batch; that is not behind.)
        live.store(
            read >= POLL_BYTES / 2 && tail.next_seq() <= wal.committed_seq(),
            Ordering::Relaxed,
        );
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spans in a record, from its envelope header (0 if it has none).
fn record_spans(payload: &[u8]) -> u64 {
    faultline_intake::envelope::decode(payload)
        .map(|e| u64::from(e.spans))
        .unwrap_or(0)
}

/// WAL use from which the backlog replays even while live data waits: it keeps the WAL
/// from being truncated, and must drain before the WAL reaches the point where bulk
/// traffic is shed.
const BACKLOG_FIRST_AT: f64 = faultline_intake::admission::SHED_BULK_AT * 0.8;

/// Bytes the backlog thread reads per poll: small, so it yields to live data often.
const BACKLOG_POLL_BYTES: usize = 1 << 20;

/// Counts the spans of the committed records in `first..=last` and finds the oldest
/// append time, reading only envelope headers.
/// The counts are added to `b` as they are read (a large backlog takes seconds to count);
/// the oldest time is set when `oldest_first` (no earlier range is pending).
fn scan_range(
    wal: &Wal,
    first: u64,
    last: u64,
    stop: &AtomicBool,
    b: &BacklogStats,
    oldest_first: bool,
) -> (u64, u64) {
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
        }
        b.records.fetch_add(n, Ordering::Relaxed);
        b.spans.fetch_add(k, Ordering::Relaxed);
        records += n;
        spans += k;
    }
    (records, spans)
}

/// The backlog thread: replays deferred ranges, oldest first, throttled (see the module
/// doc).
fn replay_backlog(sh: &Shared, ranges: std::sync::mpsc::Receiver<(u64, u64)>, rate: u64) {
    let Shared {
        wal,
        store,
        stats,
        stop,
        dlq_dir,
        limit,
    } = sh;
    let b = &stats.backlog;
    let max_head = store.block_max_spans().saturating_mul(MAX_HEAD_FACTOR);
    // Each range with its own tailer: a new tailer scans its segment from the start.
    let mut queue: std::collections::VecDeque<(u64, u64, faultline_wal::Tailer)> =
        Default::default();
    let backlog_limit = RateLimit::new(rate);
    while !stop.load(Ordering::Acquire) {
        // Take every range handed over so far, counting what each holds.
        let wait = if queue.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        match ranges.recv_timeout(wait) {
            Ok((first, last)) => {
                let (records, spans) = scan_range(wal, first, last, stop, b, queue.is_empty());
                tracing::info!(
                    first,
                    last,
                    records,
                    spans,
                    "backlog to replay in the background"
                );
                queue.push_back((first, last, wal.tail(first)));
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if queue.is_empty() {
                    return;
                }
            }
        }
        let Some(&mut (first, last, ref mut tail)) = queue.front_mut() else {
            continue;
        };
        // Live data first: wait while the ingest thread is behind (unless the WAL fills
        // up behind the backlog: it starts before bulk traffic is shed), while the head is
        // full (sealing is behind or failing); keep to the backlog's rate and the index rate.
        let wal_use = wal.size_bytes() as f64 / wal.options().max_bytes.max(1) as f64;
        if (b.live_behind.load(Ordering::Relaxed) && wal_use < BACKLOG_FIRST_AT)
            || store.head_spans() >= max_head
        {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let batch = match tail.poll(BACKLOG_POLL_BYTES) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the backlog from the WAL; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if batch.is_empty() && tail.next_seq() <= last {
            // Committed records that cannot be read now (the reader stops at a damaged
            // frame): never finish the range past them, or the WAL would be truncated
            // over records nobody indexed.
            tracing::error!(
                next = tail.next_seq(),
                last,
                "cannot read the next backlog record from the WAL; retrying in 1 s (`faultline wal verify` checks the segments)"
            );
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let mut done = tail.next_seq() > last;
        for rec in &batch {
            if rec.seq > last {
                done = true;
                break;
            }
            let spans = record_spans(&rec.payload);
            if store.is_pending(rec.seq) {
                backlog_limit.take(spans, stop);
                limit.take(spans, stop);
                stats.records.fetch_add(1, Ordering::Relaxed);
                process_or_dead_letter(store, stats, stop, dlq_dir, rec.seq, &rec.payload);
                b.replayed_spans.fetch_add(spans, Ordering::Relaxed);
            }
            let _ = b
                .records
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(1))
                });
            let _ = b
                .spans
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(spans))
                });
            b.oldest_ns.store(rec.time_ns, Ordering::Relaxed);
        }
        if !done {
            continue;
        }
        if let Err(e) = store.finish_pending(first, last) {
            tracing::error!(error = %e, "cannot finish a backlog range; it is replayed again after a restart");
        }
        queue.pop_front();
        b.ranges.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(first, last, "backlog range replayed");
        if queue.is_empty() {
            b.records.store(0, Ordering::Relaxed);
            b.spans.store(0, Ordering::Relaxed);
            b.oldest_ns.store(0, Ordering::Relaxed);
        }
    }
}
