//! How interactive store reads run: trace lookups and trace searches each have their own
//! pool of reader threads, as many as the machine has cores, taking reads first come,
//! first served ([`Lane`]); other reads (reports, dependencies, lists) run on Tokio's
//! blocking pool as before.
//!
//! Why: a lookup is a few hundred microseconds of CPU. On Tokio's blocking pool every
//! read starts on its own thread, so with more reads than cores the kernel slices them
//! all, every answer waits for the others, and each read lands on whichever thread woke,
//! its caches cold. A fixed pool runs at most one read per core and a thread that
//! finishes takes the next read at once, warm. Four Jaeger clients on two cores, 10.2M
//! spans: lookups p99 4.25-4.28 to 3.25-3.40 ms with 8% more of them per second and 6%
//! less server CPU each; searches of 20 whole traces p99 19.2-20.0 to 15.3-16.2 ms
//! (BENCHMARKS.md, "Interactive reads on their own threads"). A semaphore in front of
//! the blocking pool was measured too and lost: handing the slot on costs two wake-ups
//! per read, and the lookups per second fell by 10%.
//!
//! The lanes are separate so a search (20 whole traces, tens of milliseconds) never
//! holds up a lookup; reads of unbounded length (the tracing-health and tail-sampling
//! reports) go to neither pool, so they cannot stall a queue. A read whose caller went
//! away while it waited (a client that gave up under load) is not started.
//!
//! Reads that wait on the disk hold their thread, so only as many wait at once as there
//! are cores: over 90M spans with the page cache dropped, lookups had p99 11.1 ms here
//! against 9.6 on the blocking pool (BENCHMARKS.md, "Cold block files"). A block read
//! that finds its file cold therefore asks the kernel for all of its pages at once
//! (`faultline-store`'s `block/pages.rs`), which brought that to 6.4-6.8 ms.
//!
//! A lane holds at most [`MAX_QUEUED`] waiting reads; past that a read is refused at once
//! (503 with `Retry-After`) instead of joining a wait its client will give up on. Each
//! lane's queue, reads run, time waited, refusals and abandoned reads are in `/metrics`
//! ([`metrics_text`]).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};
use std::time::Instant;

/// The queue a store read waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// One trace by id: bounded work.
    Lookup,
    /// A trace search, and the traces it returns.
    Search,
    /// Anything else: Tokio's blocking pool, no queue.
    Other,
}

/// A queued read; answers whether it ran (false: its caller had gone away).
type Job = Box<dyn FnOnce() -> bool + Send>;

/// Reads a lane lets wait before it refuses more. A lookup takes about 0.5 ms of a
/// thread and a search of 20 whole traces 10-40 ms, so on two cores a full lookup queue
/// is 0.15-0.35 s of waiting (800 clients asking without pause: p50 0.34 s, the refusals
/// taking their share of the cores) and a full search queue 3-10 s: about what a client
/// waits before it gives up, past which queueing only serves reads nobody reads.
pub const MAX_QUEUED: usize = 512;

/// Reader threads and the reads waiting for them, with when each was queued.
struct Pool {
    queue: Mutex<VecDeque<(Instant, Job)>>,
    ready: Condvar,
    /// Reader threads started.
    threads: std::sync::atomic::AtomicUsize,
    counts: Counts,
}

/// What a lane has done since start.
#[derive(Default)]
struct Counts {
    ran: AtomicU64,
    waited_ns: AtomicU64,
    refused: AtomicU64,
    abandoned: AtomicU64,
    /// When a refusal was last logged: seconds since [`START`] plus one (0: never).
    warned_at: AtomicU64,
}

/// When this process first used a lane (a clock for [`Counts::warned_at`]).
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Pool {
    /// A pool of `threads` named `name-N`; none when not even one thread starts (the
    /// reads then go to Tokio's blocking pool).
    fn start(name: &str, threads: usize) -> Option<Arc<Self>> {
        let pool = Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            threads: Default::default(),
            counts: Counts::default(),
        });
        let mut started = 0;
        for i in 0..threads {
            let p = pool.clone();
            match std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || p.work())
            {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, pool = name, "cannot start a reader thread"),
            }
        }
        pool.threads.store(started, Ordering::Relaxed);
        (started > 0).then_some(pool)
    }

    /// Queues `job`, or refuses it when [`MAX_QUEUED`] reads already wait.
    fn push(&self, job: Job, lane: Lane) -> Result<(), Failed> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= MAX_QUEUED {
            drop(q);
            let refused = self.counts.refused.fetch_add(1, Ordering::Relaxed) + 1;
            // Refusals are answered without a log line each (a flood of clients that do
            // not wait would write one per request); one line per lane every 10 s says
            // it is happening.
            let now = START.elapsed().as_secs() + 1;
            let last = self.counts.warned_at.load(Ordering::Relaxed);
            if (last == 0 || now >= last + 10)
                && self
                    .counts
                    .warned_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    lane = lane.name(),
                    queued = MAX_QUEUED,
                    refused_since_start = refused,
                    "store reads refused: the lane's queue is full (faultline_query_refused_total counts them)"
                );
            }
            return Err(Failed::Busy {
                lane: lane.name(),
                queued: MAX_QUEUED,
                threads: self.threads.load(Ordering::Relaxed),
            });
        }
        q.push_back((Instant::now(), job));
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    fn work(&self) {
        loop {
            let (queued, job) = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if let Some(job) = q.pop_front() {
                        break job;
                    }
                    q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let c = &self.counts;
            let waited = u64::try_from(queued.elapsed().as_nanos()).unwrap_or(u64::MAX);
            c.waited_ns.fetch_add(waited, Ordering::Relaxed);
            // A read that panics answers its caller with an error (its reply is dropped);
            // the thread lives on for the next.
            match std::panic::catch_unwind(AssertUnwindSafe(job)) {
                Ok(false) => c.abandoned.fetch_add(1, Ordering::Relaxed),
                _ => c.ran.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Threads per pool: the cores this process may use.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

static LOOKUPS: LazyLock<Option<Arc<Pool>>> =
    LazyLock::new(|| Pool::start("faultline-lookup", threads()));
static SEARCHES: LazyLock<Option<Arc<Pool>>> =
    LazyLock::new(|| Pool::start("faultline-search", threads()));

/// Why a read gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// On Tokio's blocking pool: it panicked or the runtime is shutting down.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    /// On a reader thread: it panicked.
    #[error("the store read panicked (its message went to standard error)")]
    Panicked,
    /// Its lane's queue was full.
    #[error(
        "too many {lane} reads are waiting ({queued} queued for {threads} reader threads); retry shortly, or send fewer queries at once"
    )]
    Busy {
        /// The lane's name.
        lane: &'static str,
        /// Reads waiting.
        queued: usize,
        /// The lane's reader threads.
        threads: usize,
    },
}

/// Runs blocking read `f` in `lane` and answers what it returned.
pub(crate) async fn run<T: Send + 'static>(
    lane: Lane,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    let pool = match lane {
        Lane::Lookup => LOOKUPS.as_deref(),
        Lane::Search => SEARCHES.as_deref(),
        Lane::Other => None,
    };
    run_on(pool, lane, f).await
}

/// [`run`] on `pool` (Tokio's blocking pool when none).
async fn run_on<T: Send + 'static>(
    pool: Option<&Pool>,
    lane: Lane,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    let Some(pool) = pool else {
        return Ok(tokio::task::spawn_blocking(f).await?);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.push(
        Box::new(move || {
            // A caller that went away while the read waited (a client that gave up) costs
            // no read; one that goes away during it finds the read done anyway.
            if tx.is_closed() {
                return false;
            }
            let _ = tx.send(f());
            true
        }),
        lane,
    )?;
    rx.await.map_err(|_| Failed::Panicked)
}

impl Lane {
    /// Its name in metrics and messages.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Lookup => "lookup",
            Lane::Search => "search",
            Lane::Other => "other",
        }
    }
}

/// A metric family of the lanes: name, type, help, the value of one lane.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Pool) -> String,
);

/// Each lane's queue and counts since start, in the OpenMetrics text format.
pub fn metrics_text() -> String {
    use std::fmt::Write;
    let lanes: Vec<(&str, &Pool)> = [(Lane::Lookup, &LOOKUPS), (Lane::Search, &SEARCHES)]
        .into_iter()
        .filter_map(|(lane, pool)| Some((lane.name(), pool.as_deref()?)))
        .collect();
    let mut out = String::new();
    let families: [Family; 5] = [
        (
            "faultline_query_queued",
            "gauge",
            "Store reads waiting for a reader thread, by lane.",
            |p| {
                p.queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
                    .to_string()
            },
        ),
        (
            "faultline_query_reads",
            "counter",
            "Store reads run on reader threads, by lane.",
            |p| p.counts.ran.load(Ordering::Relaxed).to_string(),
        ),
        (
            "faultline_query_wait_seconds",
            "counter",
            "Time store reads waited for a reader thread, summed, by lane.",
            |p| {
                format!(
                    "{:.6}",
                    p.counts.waited_ns.load(Ordering::Relaxed) as f64 / 1e9
                )
            },
        ),
        (
            "faultline_query_refused",
            "counter",
            "Store reads refused (503) because their lane's queue was full, by lane.",
            |p| p.counts.refused.load(Ordering::Relaxed).to_string(),
        ),
        (
            "faultline_query_abandoned",
            "counter",
            "Store reads not run because their caller left while they waited, by lane.",
            |p| p.counts.abandoned.load(Ordering::Relaxed).to_string(),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let sample = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        for (lane, pool) in &lanes {
            let _ = writeln!(out, "{sample}{{lane=\"{lane}\"}} {}", value(pool));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Twice as many reads as threads, each holding its thread until released: only as
    /// many start as there are threads (a thread per read would start them all), and
    /// the rest run, each with its own answer, once the first are released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_runs_as_many_reads_as_cores_and_the_rest_after() {
        let n = threads();
        let running = Arc::new(AtomicUsize::new(0));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let mut reads = Vec::new();
        for k in 0..2 * n {
            let (running, release) = (running.clone(), release.clone());
            reads.push(tokio::spawn(run(Lane::Lookup, move || {
                running.fetch_add(1, Ordering::SeqCst);
                let (open, cv) = &*release;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                k
            })));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            n,
            "one read per thread at a time"
        );
        // Another lane is not held up by a full one.
        let other = tokio::time::timeout(Duration::from_secs(5), run(Lane::Search, || 7));
        assert_eq!(other.await.unwrap().unwrap(), 7);
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        for (k, r) in reads.into_iter().enumerate() {
            let got = tokio::time::timeout(Duration::from_secs(5), r)
                .await
                .unwrap();
            assert_eq!(got.unwrap().unwrap(), k, "each read answers its own result");
        }
        assert_eq!(running.load(Ordering::SeqCst), 2 * n);
    }

    /// A read whose caller went away while it waited for a thread is never started.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_caller_left_while_it_waited_is_skipped() {
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let mut holders = Vec::new();
        for _ in 0..threads() {
            let release = release.clone();
            holders.push(tokio::spawn(run(Lane::Search, move || {
                let (open, cv) = &*release;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            })));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let left = tokio::spawn(run(Lane::Search, move || r.fetch_add(1, Ordering::SeqCst)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        left.abort();
        let _ = left.await;
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        for h in holders {
            h.await.unwrap().unwrap();
        }
        // A read queued after the abandoned one has run, so the pool passed it.
        assert_eq!(run(Lane::Search, || 5).await.unwrap(), 5);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the abandoned read ran");
        let counts = &SEARCHES.as_deref().unwrap().counts;
        assert!(counts.abandoned.load(Ordering::SeqCst) >= 1, "not counted");
    }

    /// A lane with [`MAX_QUEUED`] reads waiting refuses the next at once (503), counts it,
    /// and still answers every read it queued; the metrics name each lane's figures.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_lane_refuses_at_once_and_answers_what_it_queued() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::start("test-full", 1).unwrap()));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let (r, s) = (release.clone(), started.clone());
        let holder = tokio::spawn(run_on(Some(pool), Lane::Lookup, move || {
            s.fetch_add(1, Ordering::SeqCst);
            let (open, cv) = &*r;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        }));
        // The pool's one thread holds before the others are queued: tasks spawned together
        // reach the lane in any order, and a read queued ahead of the holder would run
        // and leave the queue one short.
        for _ in 0..1000 {
            if started.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(started.load(Ordering::SeqCst), 1, "the holder started");
        let queued: Vec<_> = (0..MAX_QUEUED)
            .map(|k| tokio::spawn(run_on(Some(pool), Lane::Lookup, move || k)))
            .collect();
        for _ in 0..1000 {
            let waiting = pool.queue.lock().unwrap().len();
            if started.load(Ordering::SeqCst) == 1 && waiting == MAX_QUEUED {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            pool.queue.lock().unwrap().len(),
            MAX_QUEUED,
            "the queue filled"
        );
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            run_on(Some(pool), Lane::Lookup, || usize::MAX),
        )
        .await
        .expect("refused at once, not queued behind the held thread");
        let Err(
            e @ Failed::Busy {
                queued: MAX_QUEUED,
                threads: 1,
                ..
            },
        ) = refused
        else {
            panic!("a full lane queued another read: {refused:?}");
        };
        let api = crate::error::ApiError::from(e);
        assert_eq!(
            api.kind().status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(api.message().contains("lookup"), "{}", api.message());
        assert_eq!(pool.counts.refused.load(Ordering::SeqCst), 1);
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        holder.await.unwrap().unwrap();
        for (k, q) in queued.into_iter().enumerate() {
            assert_eq!(q.await.unwrap().unwrap(), k, "a queued read answered");
        }
        assert_eq!(
            pool.counts.ran.load(Ordering::SeqCst),
            MAX_QUEUED as u64 + 1
        );
        assert!(pool.counts.waited_ns.load(Ordering::SeqCst) > 0);
        let text = metrics_text();
        for line in [
            "# TYPE faultline_query_queued gauge",
            "# TYPE faultline_query_refused counter",
            "faultline_query_reads_total{lane=\"lookup\"} ",
            "faultline_query_wait_seconds_total{lane=\"search\"} ",
            "faultline_query_abandoned_total{lane=\"search\"} ",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_read_that_panics_answers_an_error_and_the_thread_serves_the_next() {
        for _ in 0..threads() + 1 {
            let failed = run(Lane::Search, || -> u8 { panic!("a damaged block") }).await;
            assert!(matches!(failed, Err(Failed::Panicked)), "{failed:?}");
        }
        assert_eq!(run(Lane::Search, || 3).await.unwrap(), 3);
    }
}
