//! The sealer thread: seals the store's head into a block when it is due and then
//! truncates the WAL before the store's durable position; enforces retention (age and
//! size) once a second; when nothing needs sealing, decides one block by tail sampling
//! (when it is on and a block is due; looked for once a second) and merges runs of small
//! blocks every ten seconds. A failed seal is retried with backoff while the WAL keeps
//! everything.

use std::time::{Duration, Instant};

use faultline_store::StoreError;

use crate::{Shared, Step};

/// How often retention runs.
pub(crate) const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// How often small blocks are looked for and merged (when nothing needs sealing).
pub(crate) const COMPACT_EVERY: Duration = Duration::from_secs(10);
/// How often a block due for tail sampling is looked for when none was last time.
pub(crate) const TAIL_EVERY: Duration = Duration::from_secs(1);
/// First wait after a failed seal; it doubles up to [`MAX_SEAL_BACKOFF`].
const FIRST_SEAL_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait between seal attempts while sealing fails.
const MAX_SEAL_BACKOFF: Duration = Duration::from_secs(30);

/// The sealer's schedule.
pub(crate) struct Sealer {
    backoff: Duration,
    last_retention: Option<Instant>,
    last_compaction: Instant,
    /// When a tail-sampling pass last found no block due.
    tail_idle: Option<Instant>,
}

impl Sealer {
    pub(crate) fn new() -> Self {
        Self {
            backoff: FIRST_SEAL_BACKOFF,
            last_retention: None,
            last_compaction: Instant::now(),
            tail_idle: None,
        }
    }

    /// Retention when due, then a seal when due, else a compaction when due. `Failed`
    /// means sealing failed: wait [`Sealer::backoff`] before the next step.
    pub(crate) fn step(&mut self, sh: &Shared) -> Step {
        if self
            .last_retention
            .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        {
            self.last_retention = Some(Instant::now());
            retention(sh);
        }
        if !sh.store.should_seal() {
            // A sealed head no ingest has freed since (nothing arrived): free it here.
            sh.store.free_retired(Duration::from_secs(1));
            if self.tail_idle.is_none_or(|t| t.elapsed() >= TAIL_EVERY) {
                match tail_sample(sh) {
                    true => return Step::Worked,
                    false => self.tail_idle = Some(Instant::now()),
                }
            }
            if self.last_compaction.elapsed() >= COMPACT_EVERY {
                self.last_compaction = Instant::now();
                compact(sh);
            }
            return Step::Idle;
        }
        match seal_and_truncate(sh) {
            Ok(()) => {
                self.backoff = FIRST_SEAL_BACKOFF;
                Step::Worked
            }
            Err(_) => Step::Failed,
        }
    }

    /// How long to wait after a failed seal (doubling each time).
    pub(crate) fn backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_SEAL_BACKOFF);
        wait
    }
}

/// Seals the head (if it holds anything or the WAL position can advance), then truncates
/// the WAL before the store's durable position (or before where another consumer still
/// reads, `PipelineOptions::keep_from`, when that is earlier). A failed truncation is only logged: the
/// next seal retries it.
pub(crate) fn seal_and_truncate(sh: &Shared) -> Result<(), StoreError> {
    let sealing = Instant::now();
    match sh.store.seal() {
        Ok(block) => {
            sh.stats.sealing(None);
            if let Some(b) = block {
                sh.stats
                    .blocks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(block = %b.id, spans = b.spans, traces = b.traces, bytes = b.bytes, ms = sealing.elapsed().as_millis() as u64, "sealed a block");
            }
            let keep = sh.opts.keep_from.load(std::sync::atomic::Ordering::Acquire);
            let before = (sh.store.durable_seq() + 1).min(keep);
            if let Err(e) = sh.wal.truncate_before_blocking(before) {
                tracing::warn!(error = %e, "cannot truncate the WAL after sealing; it will be retried after the next block");
            }
            Ok(())
        }
        Err(e) => {
            // The WAL still holds everything; intake keeps accepting within its budget.
            sh.stats.sealing(Some(e.to_string()));
            tracing::error!(error = %e, "sealing a block failed; retrying with backoff");
            Err(e)
        }
    }
}

/// Deletes blocks past the retention age or beyond the size limit, and forgets the
/// pending records the store holds durably.
pub(crate) fn retention(sh: &Shared) {
    sh.opts.pending.remove_through(sh.store.durable_seq());
    if let Err(e) = sh.store.enforce_retention((sh.opts.clock)()) {
        tracing::error!(error = %e, "retention failed; it is retried in a second");
    }
}

/// Decides one block by tail sampling, if one is due; true when one was.
pub(crate) fn tail_sample(sh: &Shared) -> bool {
    let now_s = (sh.opts.clock)() / 1_000_000_000;
    match sh.store.tail_sample(now_s) {
        Ok(Some(p)) => {
            tracing::info!(block = %p.block, now = %p.now, kept = p.kept, dropped = p.dropped, "tail sampling decided a block");
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::error!(error = %e, "tail sampling failed; the block stays undecided and is retried");
            false
        }
    }
}

/// Merges one run of small blocks (one per pass keeps the sealer responsive).
pub(crate) fn compact(sh: &Shared) {
    if let Err(e) = sh.store.compact() {
        tracing::error!(error = %e, "compaction failed; it is retried later");
    }
}
