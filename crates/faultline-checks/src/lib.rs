//! Continuous checks on live spans, evaluated as the store indexes them:
//!
//! - [`engine`]: eventual-consistency rules ([`rule`]: "every A keyed by K is followed by
//!   a B with the same key within T"), each key classified by [`state`] as pending,
//!   satisfied, repaired, or violated (missing, duplicate, orphan);
//! - [`continuous`]: trace assertions (`faultline_rules`) run on every new trace that
//!   matches a selector, once it settled;
//! - [`history`]: a rule evaluated over stored spans (`faultline rules check`);
//! - [`config`]: their part of the configuration file.
//!
//! [`Checks`] joins the first two and is the store's span observer
//! (`faultline_store::observer`): it sees each record's spans before the head does and
//! checkpoints durably before each seal publishes a block. Their state lives in one
//! database, `DATA_DIR/checks.redb` (tables listed in `engine.rs` and `continuous.rs`).
//!
//! **Invariant:** after a crash the checks' state is the last checkpoint, and every span
//! indexed after it is replayed from the WAL through the observer; since applying a span
//! twice changes nothing, no key's outcome is lost or counted twice, and no trace is
//! checked twice. The checks never stop ingestion: if their database fails they stop and
//! say why.

pub mod config;
pub mod continuous;
pub mod engine;
pub mod filter;
pub mod history;
pub mod rule;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use faultline_model::span::Span;
use faultline_store::SpanStore;

pub use continuous::{Continuous, ContinuousDef, ContinuousView};
pub use engine::{Consistency, KeyView, RuleView};
pub use history::HistoryReport;
pub use rule::{Rule, RuleDef, RuleError};
pub use state::Class;

/// The checks' database in the data directory.
pub const DB_FILE: &str = "checks.redb";
/// Default memory bound of the consistency rules (`[checks] memory_mb`).
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
/// Timers fired per sweep.
pub const SWEEP_MAX: usize = 20_000;

/// Unix nanoseconds now; tests replace it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Hash maps of the hot paths: foldhash, seeded at random per process (keys come from span
/// attributes, so a fixed seed would let a sender aim collisions); the standard SipHash
/// was a tenth of the `checks` thread in a profile.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set of [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The system clock in Unix nanoseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// Why a check could not be done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChecksError {
    /// The database could not be opened.
    #[error("cannot open the checks' database {}: {reason}; if it is damaged, move it aside and restart (rules start over from the spans still in the WAL)", path.display())]
    Open { path: PathBuf, reason: String },
    /// A read or write of the database failed.
    #[error("the checks' database failed: {0}")]
    Db(String),
    /// The store could not be read.
    #[error("cannot read the store: {0}")]
    Store(String),
    /// The change conflicts with the configuration.
    #[error("{0}")]
    Conflict(String),
}

/// The consistency rules and continuous assertions of one server.
///
/// As the store's observer it only matches spans on the pipeline's threads; the key
/// updates go through a bounded queue to the `checks` thread, so the ingest thread does
/// not wait for the database. The queue is first in, first out: a seal's checkpoint,
/// queued after the hits of every span its head holds, is made durable after them.
#[derive(Debug)]
pub struct Checks {
    pub consistency: Arc<Consistency>,
    pub continuous: Continuous,
    queue: Mutex<Option<SyncSender<Msg>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Batches of hits queued for the `checks` thread (each at most a record's spans).
pub const QUEUE_BATCHES: usize = 256;

/// Work for the `checks` thread.
enum Msg {
    Hits(Vec<engine::Hit>),
    /// Everything queued before it is applied; then it answers.
    Barrier(std::sync::mpsc::Sender<()>),
    /// Everything queued before it is applied and made durable; then it answers.
    Checkpoint(std::sync::mpsc::Sender<()>),
}

impl Drop for Checks {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has applied what was queued.
        drop(lock(&self.queue).take());
        if let Some(w) = lock(&self.worker).take() {
            let _ = w.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn work(consistency: Arc<Consistency>, rx: Receiver<Msg>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Hits(h) => consistency.apply_hits(h),
            Msg::Barrier(done) => {
                let _ = done.send(());
            }
            Msg::Checkpoint(done) => {
                // A failure stops the rules (they say so) rather than the store.
                let _ = consistency.flush(true);
                let _ = done.send(());
            }
        }
    }
}

/// What one [`Checks::tick`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub timers: usize,
    pub traces: usize,
    pub notified: usize,
}

impl Checks {
    /// Opens the checks' state in `data_dir` for these rules and assertions, within
    /// `memory_bytes` (a quarter for the rules' write-back map, a quarter for the
    /// database's page cache, the rest headroom; see `engine.rs`).
    pub fn open(
        data_dir: &Path,
        rules: Vec<Rule>,
        assertions: Vec<ContinuousDef>,
        memory_bytes: usize,
        clock: Clock,
    ) -> Result<Checks, ChecksError> {
        let db = engine::open_db(data_dir, memory_bytes / 4)?;
        let consistency = Arc::new(Consistency::open(
            db.clone(),
            data_dir.join(DB_FILE),
            rules,
            memory_bytes,
        )?);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_BATCHES);
        let c = consistency.clone();
        let worker = std::thread::Builder::new()
            .name("checks".into())
            .spawn(move || work(c, rx))
            .map_err(|e| ChecksError::Db(format!("cannot start the checks thread: {e}")))?;
        Ok(Checks {
            consistency,
            continuous: Continuous::open(db, assertions, clock)?,
            queue: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Sends `msg` to the `checks` thread and waits for its answer (false when the thread
    /// is gone).
    fn ask(&self, msg: impl FnOnce(std::sync::mpsc::Sender<()>) -> Msg) -> bool {
        let (done, answer) = std::sync::mpsc::channel();
        let sent = lock(&self.queue)
            .as_ref()
            .is_some_and(|q| q.send(msg(done)).is_ok());
        sent && answer.recv().is_ok()
    }

    /// Waits until every span observed so far has been applied to the keys.
    pub fn sync(&self) {
        self.ask(Msg::Barrier);
    }

    /// The periodic work, once a second on a blocking thread. While indexing has a
    /// backlog (`caught_up` false) nothing is declared: a B or a span still being replayed
    /// would look missing. Notifications go to `outbox` when there is one.
    pub fn tick(
        &self,
        store: &dyn SpanStore,
        now_ns: u64,
        caught_up: bool,
        outbox: Option<&faultline_notify::Outbox>,
    ) -> Result<Tick, ChecksError> {
        let mut t = Tick::default();
        if caught_up {
            t.timers = self.consistency.sweep(now_ns, SWEEP_MAX)?;
            t.traces = self.continuous.run_due(store, 1000)?;
        }
        if let Some(outbox) = outbox {
            let events = self.consistency.pending_notifications(500)?;
            let mut handed = Vec::new();
            for ev in events {
                let key = ev.key.clone();
                match outbox.enqueue(ev) {
                    Ok(_) => handed.push(key),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot hand a consistency notification to the outbox; retried in a second");
                        break;
                    }
                }
            }
            t.notified = handed.len();
            if !handed.is_empty() {
                self.consistency.notifications_handed_over(&handed)?;
            }
        }
        Ok(t)
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        let mut s = self.consistency.metrics_text();
        s.push_str(&self.continuous.metrics_text());
        s
    }
}

impl faultline_store::SpanObserver for Checks {
    fn observe(&self, spans: &[Span]) {
        let hits = self.consistency.matches(spans);
        if !hits.is_empty() {
            // A full queue waits here: the rules keep up or ingestion slows, never lose.
            let queue = lock(&self.queue).clone();
            match queue {
                Some(q) if q.send(Msg::Hits(hits)).is_ok() => {}
                _ => tracing::error!("the checks thread is gone; consistency rules stopped"),
            }
        }
        self.continuous.observe(spans);
    }

    fn checkpoint(&self) -> Result<(), String> {
        self.ask(Msg::Checkpoint);
        self.continuous.flush(true).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
