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

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};

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

type Job = Box<dyn FnOnce() + Send>;

/// Reader threads and the reads waiting for them.
struct Pool {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

impl Pool {
    /// A pool of `threads` named `name-N`; none when not even one thread starts (the
    /// reads then go to Tokio's blocking pool).
    fn start(name: &str, threads: usize) -> Option<Arc<Self>> {
        let pool = Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
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
        (started > 0).then_some(pool)
    }

    fn push(&self, job: Job) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(job);
        self.ready.notify_one();
    }

    fn work(&self) {
        loop {
            let job = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if let Some(job) = q.pop_front() {
                        break job;
                    }
                    q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            // A read that panics answers its caller with an error (its reply is dropped);
            // the thread lives on for the next.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
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
}

/// Runs blocking read `f` in `lane` and answers what it returned.
pub(crate) async fn run<T: Send + 'static>(
    lane: Lane,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    let pool = match lane {
        Lane::Lookup => LOOKUPS.as_ref(),
        Lane::Search => SEARCHES.as_ref(),
        Lane::Other => None,
    };
    let Some(pool) = pool else {
        return Ok(tokio::task::spawn_blocking(f).await?);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.push(Box::new(move || {
        // A caller that went away while the read waited (a client that gave up) costs
        // no read; one that goes away during it finds the read done anyway.
        if !tx.is_closed() {
            let _ = tx.send(f());
        }
    }));
    rx.await.map_err(|_| Failed::Panicked)
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
