//! The pipeline from the WAL to the store: a dedicated thread tails the WAL, decodes each
//! record (envelope, OTLP protobuf, flat spans) and hands it to the store; when the store
//! sealed a block, the WAL is truncated before the store's durable position.
//!
//! The sealer thread also enforces retention (age and size) once a second, and merges
//! runs of small blocks every ten seconds when nothing needs sealing.
//!
//! Start-up replays the WAL from the store's durable position, so spans acknowledged but
//! not yet in a block are back in the head before (and while) new ones arrive.
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
    /// Records moved to the dead letters since start.
    pub dead_letters: AtomicU64,
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
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (w, st, sa, so) = (wal.clone(), store.clone(), stats.clone(), stop.clone());
    let sealer = std::thread::Builder::new()
        .name("store-sealer".into())
        .spawn(move || seal_loop(w, st, sa, so))?;
    let ingest = std::thread::Builder::new()
        .name("store-pipeline".into())
        .spawn(move || run(wal, store, stats, stop, dlq_dir))?;
    std::thread::Builder::new()
        .name("store-join".into())
        .spawn(move || {
            let _ = ingest.join();
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
        match store.seal() {
            Ok(block) => {
                stats.seal_failing.store(false, Ordering::Relaxed);
                backoff = Duration::from_millis(10);
                if let Some(b) = block {
                    stats.blocks.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(block = %b.id, spans = b.spans, traces = b.traces, bytes = b.bytes, "sealed a block");
                }
                if let Err(e) = wal.truncate_before_blocking(store.durable_seq() + 1) {
                    tracing::warn!(error = %e, "cannot truncate the WAL after sealing; it will be retried after the next block");
                }
            }
            Err(e) => {
                // The WAL still holds everything; intake keeps accepting within its budget.
                stats.seal_failing.store(true, Ordering::Relaxed);
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

fn run(
    wal: Wal,
    store: Arc<Store>,
    stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
    dlq_dir: std::path::PathBuf,
) {
    let mut tail = wal.tail(store.durable_seq() + 1);
    let max_head = store.block_max_spans().saturating_mul(MAX_HEAD_FACTOR);
    while !stop.load(Ordering::Acquire) {
        if store.head_spans() >= max_head {
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
        let idle = records.is_empty();
        for rec in records {
            stats.records.fetch_add(1, Ordering::Relaxed);
            process_or_dead_letter(&store, &stats, &stop, &dlq_dir, rec.seq, &rec.payload);
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
