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
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (w, st, sa, so) = (wal.clone(), store.clone(), stats.clone(), stop.clone());
    let sealer = std::thread::Builder::new()
        .name("store-sealer".into())
        .spawn(move || seal_loop(w, st, sa, so))?;
    let ingest = std::thread::Builder::new()
        .name("store-pipeline".into())
        .spawn(move || run(wal, store, stats, stop))?;
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

fn run(wal: Wal, store: Arc<Store>, stats: Arc<PipelineStats>, stop: Arc<AtomicBool>) {
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
            let spans = match faultline_intake::envelope::decode(&rec.payload)
                .and_then(|env| env.request())
            {
                Ok(req) => faultline_model::span::from_otlp_owned(req),
                Err(e) => {
                    stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(seq = rec.seq, error = %e, "skipping an undecodable WAL record (inspect it with `faultline wal dump --from SEQ --limit 1`)");
                    Vec::new()
                }
            };
            stats.records.fetch_add(1, Ordering::Relaxed);
            stats.spans.fetch_add(spans.len() as u64, Ordering::Relaxed);
            if let Err(e) = store.ingest(rec.seq, spans) {
                tracing::error!(seq = rec.seq, error = %e, "the store refused a record");
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
