//! The pipeline from the WAL to the store: everything that happens to an acknowledged
//! record after intake wrote it.
//!
//! Three threads share one [`Shared`] context:
//!
//! - **ingest** (`ingest.rs`) tails the WAL from the live position, decodes each record
//!   (envelope, OTLP protobuf, flat spans; `process.rs`) and hands it to the store, where
//!   it is queryable at once;
//! - **backlog** (`backlog.rs`) replays deferred ranges behind live data;
//! - **sealer** (`sealer.rs`) seals the head into blocks, then truncates the WAL before
//!   the store's durable position; it also runs retention every second and compaction
//!   every ten seconds.
//!
//! **Live data first:** everything committed before intake opens is a backlog
//! (`Store::defer`), and so is, after a stall, everything up to the newest committed
//! record once the record the ingest thread is about to read was appended more than
//! [`PipelineOptions::live_first_after`] ago (only while no backlog is pending). The
//! backlog thread counts each range's spans (for the status page and the partial-answer
//! reasons), then replays it at most at the backlog rate, and only while the ingest thread
//! has nothing waiting or the WAL is more than `backlog_first_at` full. Ranges still
//! pending after a restart (from the manifest) are replayed the same way; in-order ingest
//! starts after the manifest's `source_seq`.
//!
//! **Dead letters** (`dlq.rs`): a record that fails processing [`dlq::MAX_ATTEMPTS`] times
//! is written durably to `DATA_DIR/dlq/` with the reason, and the pipeline goes on.
//!
//! `index_rate` caps both replaying threads together (a token bucket, `rate.rs`): it
//! leaves CPU to queries on a shared machine, and the overload test uses it to give the
//! store a small, known capacity. With a cap or without, the three threads run at a
//! higher nice value than the rest of the process (`indexing_nice`, `priority.rs`): reads
//! that want the cores get them first, and indexing takes what is left. Indexing pauses
//! while the head holds [`MAX_HEAD_FACTOR`] blocks' worth of spans, so memory stays
//! bounded when sealing is slower than intake (intake goes on writing the WAL within its
//! budget).
//!
//! **Architecture invariant:** the pipeline knows the WAL's API, the envelope (from
//! `faultline-model`) and the store's API; it knows nothing about receivers, HTTP or
//! admission. Thresholds it shares with admission are given in [`PipelineOptions`].
//!
//! **Invariant:** after every step, a record at or below the store's `durable_seq` is in a
//! durable block (the WAL may be truncated there); every acknowledged record is in the
//! WAL, the store or the dead letters, and a restart replays exactly what is not durable.
//! `tests.rs` checks this against the crash-simulating WAL file system, crashing at every
//! step of defer, replay, seal and truncate.

pub mod clickhouse;
pub mod dlq;
pub mod health;
pub mod inspect;
pub mod metrics;
pub mod pending;
pub mod priority;

mod backlog;
mod ingest;
mod process;
mod rate;
mod sealer;
mod stats;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use faultline_model::pending::PendingTraces;
use faultline_store::Store;
use faultline_wal::Wal;

pub use dlq::{DeadLetter, DeadLetterError};
pub use metrics::PipelineMetrics;
pub use rate::RateLimit;
pub use stats::{BacklogStats, PipelineStats};

/// Default replay rate of the backlog, spans per second.
pub const DEFAULT_BACKLOG_RATE: u64 = 100_000;

/// A record read by the ingest thread that was appended longer ago than this makes it skip
/// ahead to the newest records (see the crate doc).
pub const DEFAULT_LIVE_FIRST_AFTER: Duration = Duration::from_secs(5);

/// The head may grow to this many times `block_max_spans` while a block is being sealed;
/// beyond it indexing pauses.
pub const MAX_HEAD_FACTOR: usize = 2;

/// Bytes read from the WAL per poll of the ingest thread.
pub(crate) const POLL_BYTES: usize = 8 << 20;

/// Bytes the backlog thread reads per poll: small, so it yields to live data often.
pub(crate) const BACKLOG_POLL_BYTES: usize = 1 << 20;

/// Unix nanoseconds now; tests replace it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock in Unix nanoseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// Settings of the pipeline.
#[derive(Clone)]
pub struct PipelineOptions {
    /// Where dead letters go (`DATA_DIR/dlq`).
    pub dlq_dir: PathBuf,
    /// Most backlog spans replayed per second (at least 1).
    pub backlog_rate: u64,
    /// Most spans indexed per second by both threads together (`u64::MAX`: no limit).
    pub index_rate: u64,
    /// Added to the nice value of the pipeline's threads (0 to [`priority::MAX_NICE`]; 0:
    /// the process's priority), so reads come first when both want the cores.
    pub indexing_nice: i32,
    /// Share of the WAL budget (0 to 1) from which the backlog replays even while live
    /// data waits. The binary sets it below the share at which intake sheds bulk traffic.
    pub backlog_first_at: f64,
    /// How old the next record may be before the ingest thread skips ahead to live data.
    pub live_first_after: Duration,
    /// Wait before the second attempt at a failing record; it grows fourfold per attempt.
    pub retry_backoff: Duration,
    /// Unix nanoseconds now (record ages, retention, dead-letter times).
    pub clock: Clock,
    /// Where another consumer of the WAL still reads from (the ClickHouse writer's
    /// `Shipper::keep_from`): the WAL is truncated only before it. `u64::MAX`: no other
    /// consumer.
    pub keep_from: Arc<std::sync::atomic::AtomicU64>,
    /// Acknowledged records not indexed yet, by trace (intake adds, the pipeline removes
    /// what it indexed and, every second, everything durable); reads look there
    /// ([`pending::WithPending`]).
    pub pending: Arc<PendingTraces>,
}

impl std::fmt::Debug for PipelineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineOptions")
            .field("dlq_dir", &self.dlq_dir)
            .field("backlog_rate", &self.backlog_rate)
            .field("index_rate", &self.index_rate)
            .field("indexing_nice", &self.indexing_nice)
            .field("backlog_first_at", &self.backlog_first_at)
            .field("live_first_after", &self.live_first_after)
            .field("retry_backoff", &self.retry_backoff)
            .finish_non_exhaustive()
    }
}

impl PipelineOptions {
    /// Defaults for a data directory.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dlq_dir: dlq::dir(data_dir),
            backlog_rate: DEFAULT_BACKLOG_RATE,
            index_rate: u64::MAX,
            indexing_nice: priority::DEFAULT_INDEXING_NICE,
            backlog_first_at: 0.4,
            live_first_after: DEFAULT_LIVE_FIRST_AFTER,
            retry_backoff: Duration::from_millis(40),
            clock: system_clock(),
            keep_from: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            pending: Arc::default(),
        }
    }

    /// Refuses settings out of range, naming the configuration key.
    pub fn check(&self) -> Result<(), PipelineError> {
        if self.backlog_rate == 0 {
            return Err(PipelineError::Config(
                "store.backlog_spans_per_second must be at least 1 (0 would never replay the backlog, and the WAL could not be truncated)",
            ));
        }
        if self.index_rate == 0 {
            return Err(PipelineError::Config(
                "store.max_index_spans_per_second must be at least 1 (leave it unset for no limit)",
            ));
        }
        if !(0..=priority::MAX_NICE).contains(&self.indexing_nice) {
            return Err(PipelineError::Config(
                "store.indexing_nice must be from 0 (indexing at the process's priority) to 19 (the lowest)",
            ));
        }
        Ok(())
    }
}

/// Errors starting the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A setting is out of range.
    #[error("{0}")]
    Config(&'static str),
    /// A thread could not be started.
    #[error("cannot start the pipeline thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What the pipeline threads share.
pub(crate) struct Shared {
    pub(crate) wal: Wal,
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<PipelineStats>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) opts: PipelineOptions,
    /// `index_rate`, shared by the ingest and backlog threads.
    pub(crate) limit: RateLimit,
    /// Bytes the ingest thread reads per poll ([`POLL_BYTES`]; smaller in tests).
    pub(crate) poll_bytes: usize,
    /// Bytes the backlog thread reads per poll ([`BACKLOG_POLL_BYTES`]).
    pub(crate) backlog_poll_bytes: usize,
}

impl Shared {
    pub(crate) fn new(wal: Wal, store: Arc<Store>, opts: PipelineOptions) -> Self {
        Self {
            limit: RateLimit::new(opts.index_rate),
            wal,
            store,
            stats: Arc::new(PipelineStats::default()),
            stop: Arc::new(AtomicBool::new(false)),
            opts,
            poll_bytes: POLL_BYTES,
            backlog_poll_bytes: BACKLOG_POLL_BYTES,
        }
    }

    /// Head size at which indexing pauses.
    pub(crate) fn max_head(&self) -> usize {
        self.store.block_max_spans().saturating_mul(MAX_HEAD_FACTOR)
    }

    /// A view for status, metrics and partial answers.
    fn view(&self) -> PipelineView {
        PipelineView {
            wal: self.wal.clone(),
            store: self.store.clone(),
            stats: self.stats.clone(),
            dlq_dir: self.opts.dlq_dir.clone(),
            pending: self.opts.pending.clone(),
        }
    }
}

/// What one step of a pipeline thread did; the thread loops decide how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Did some work: go on at once.
    Worked,
    /// Nothing to do.
    Idle,
    /// Waiting for room (the head is full) or for live data to catch up.
    Paused,
    /// An I/O error; retry after a while.
    Failed,
}

/// The running pipeline: three threads until [`Pipeline::shutdown`].
pub struct Pipeline {
    view: PipelineView,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

/// Starts pipeline thread `name` at nice `nice` above the process's ([`priority`]).
fn thread(
    name: &'static str,
    nice: i32,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, PipelineError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            priority::lower_current_thread(nice, name);
            f()
        })
        .map_err(|source| PipelineError::Thread { name, source })
}

impl Pipeline {
    /// Starts the pipeline. Everything `wal` committed so far is a backlog behind what
    /// arrives next (call this before intake opens).
    pub fn spawn(
        wal: Wal,
        store: Arc<Store>,
        opts: PipelineOptions,
    ) -> Result<Self, PipelineError> {
        opts.check()?;
        let nice = opts.indexing_nice;
        let sh = Arc::new(Shared::new(wal, store, opts));
        let (tx, rx) = std::sync::mpsc::channel();
        let at_open = sh.wal.committed_seq();
        let mut ingest = ingest::Ingest::start(&sh, tx, at_open);
        let mut backlog = backlog::Backlog::new(&sh, rx);
        let mut threads = Vec::new();
        let s = sh.clone();
        threads.push(thread("store-sealer", nice, move || {
            let mut sealer = sealer::Sealer::new();
            while !s.stop.load(Ordering::Acquire) {
                match sealer.step(&s) {
                    Step::Worked => {}
                    Step::Failed => std::thread::sleep(sealer.backoff()),
                    Step::Idle | Step::Paused => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })?);
        let s = sh.clone();
        threads.push(thread("store-backlog", nice, move || {
            while !s.stop.load(Ordering::Acquire) {
                if !backlog.take_ranges(&s, Duration::from_millis(100)) {
                    return;
                }
                match backlog.step(&s) {
                    Step::Worked | Step::Idle => {}
                    Step::Paused => std::thread::sleep(Duration::from_millis(5)),
                    Step::Failed => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        })?);
        let s = sh.clone();
        threads.push(thread("store-pipeline", nice, move || {
            while !s.stop.load(Ordering::Acquire) {
                match ingest.step(&s) {
                    Step::Worked => {}
                    Step::Idle => std::thread::sleep(Duration::from_millis(20)),
                    Step::Paused => std::thread::sleep(Duration::from_millis(10)),
                    Step::Failed => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        })?);
        Ok(Self {
            view: sh.view(),
            stop: sh.stop.clone(),
            threads,
        })
    }

    /// What status, metrics and answers read of the pipeline.
    pub fn view(&self) -> PipelineView {
        self.view.clone()
    }

    /// Stops the threads after their current step and waits for them. Blocking.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// How long before its receipt a span in the backlog may have started, for deciding which
/// answers the backlog can touch: an answer about times that ended longer before the
/// backlog's oldest record is complete.
pub const BACKLOG_REACH: Duration = Duration::from_secs(3600);

/// A cheap handle on the pipeline's progress, for status, metrics and partial answers.
#[derive(Clone)]
pub struct PipelineView {
    wal: Wal,
    store: Arc<Store>,
    stats: Arc<PipelineStats>,
    dlq_dir: PathBuf,
    pending: Arc<PendingTraces>,
}

impl std::fmt::Debug for PipelineView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineView").finish_non_exhaustive()
    }
}

impl PipelineView {
    /// The counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// Where dead letters are.
    pub fn dlq_dir(&self) -> &Path {
        &self.dlq_dir
    }

    /// Why an answer about `range` (Unix ns, inclusive; `None`: no time range) may miss
    /// acknowledged data: records not yet indexed, and a backlog that can touch the range
    /// (a span may have started up to [`BACKLOG_REACH`] before it was received).
    pub fn partial_reasons(&self, range: Option<(u64, u64)>) -> Vec<String> {
        let committed = self.wal.committed_seq();
        let indexed = self.store.ingested_seq();
        let mut reasons = Vec::new();
        if committed > indexed {
            reasons.push(format!(
                "{} acknowledged WAL records are not yet indexed",
                committed - indexed
            ));
        }
        let oldest = self.stats.backlog.oldest_ns.load(Ordering::Relaxed);
        let touches = range.is_none_or(|(_, end)| {
            oldest == 0 || end.saturating_add(BACKLOG_REACH.as_nanos() as u64) >= oldest
        });
        if touches {
            reasons.extend(self.stats.backlog.reason());
        }
        reasons
    }
}
