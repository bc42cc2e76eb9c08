//! The scheduling priority of the indexing threads (`store.indexing_nice`): they run at a
//! higher nice value than the rest of the process, so when reads and indexing want the
//! cores at once (a catch-up after a burst or a restart, a seal during a burst of
//! searches) the kernel runs the reads first and gives indexing the rest. When no read
//! waits, indexing has the cores to itself: nice changes shares under contention, not
//! speed alone.
//!
//! Measured on two cores during a catch-up of 21.7M spans, 4 HTTP clients reading for
//! 20 s (`scripts/bench-read-catchup`; BENCHMARKS.md, "Indexing threads at a lower
//! priority"): at nice 10 against 0, 5,165 against 3,199 lookups a second at p99 5.4
//! against 9.1 ms, 515 against 279 searches a second at p99 24 against 40 ms; the
//! catch-up took 8-12% longer while the reads ran. The clients shared the two cores, so
//! part of that gain is their own CPU.
//!
//! Intake, the WAL writer and the query threads keep the process's priority: an
//! acknowledgement waits for nothing the indexing threads do, and what they fall behind
//! waits in the WAL, whose budget sheds load as before.
//!
//! Linux keeps a nice value per thread, and `setpriority(PRIO_PROCESS, 0, n)` sets the
//! calling thread's; threads started by an indexing thread (a seal's index builder)
//! inherit it. Elsewhere the call would set the whole process's, so it is not made.

/// The nice value added to the indexing threads' by default.
pub const DEFAULT_INDEXING_NICE: i32 = 10;

/// The largest nice value Linux has (the lowest priority).
pub const MAX_NICE: i32 = 19;

/// Raises the calling thread's nice value by `by` (capped at [`MAX_NICE`]); 0 leaves it.
/// Raising needs no privilege. A refusal (a sandbox that forbids the call) is logged and
/// the thread runs on at its priority.
pub(crate) fn lower_current_thread(by: i32, name: &str) {
    if by <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let result = rustix::process::getpriority_process(None).and_then(|now| {
            let to = now.saturating_add(by).min(MAX_NICE);
            rustix::process::setpriority_process(None, to).map(|()| to)
        });
        match result {
            Ok(to) => tracing::debug!(thread = name, nice = to, "indexing thread priority lowered"),
            Err(e) => tracing::warn!(
                thread = name,
                error = %e,
                "cannot lower the indexing thread's priority (store.indexing_nice); reads share the cores with indexing evenly"
            ),
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::debug!(
        thread = name,
        "store.indexing_nice applies on Linux only (elsewhere the call would lower the whole process)"
    );
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The nice value of thread `tid` of this process, from `/proc` (field 19 of `stat`,
    /// counted after the parenthesised name, which may hold spaces).
    fn nice_of(tid: &str) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        // Fields from the third (state) on: nice is the nineteenth field.
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    fn own_tid() -> String {
        std::fs::read_link("/proc/thread-self")
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn only_the_calling_thread_is_lowered_and_never_past_the_cap() {
        let here = own_tid();
        let base = nice_of(&here);
        // Already at 17 or more, a raise by 3 could not be told from none.
        assert!(
            base + 3 <= MAX_NICE,
            "run the tests at a nice value below 17, not {base}"
        );
        let (lowered, capped) = std::thread::scope(|s| {
            let one = s.spawn(|| {
                lower_current_thread(3, "test");
                nice_of(&own_tid())
            });
            let two = s.spawn(|| {
                lower_current_thread(40, "test");
                nice_of(&own_tid())
            });
            (one.join().unwrap(), two.join().unwrap())
        });
        assert_eq!(lowered, base + 3);
        assert_eq!(capped, MAX_NICE);
        assert_eq!(
            nice_of(&here),
            base,
            "the caller's thread kept its priority"
        );
        let unchanged = std::thread::spawn(|| {
            lower_current_thread(0, "test");
            nice_of(&own_tid())
        })
        .join()
        .unwrap();
        assert_eq!(unchanged, base);
    }
}
