//! A token bucket of spans per second: `store.max_index_spans_per_second` (both pipeline
//! threads share one) and the backlog's replay rate.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A token bucket of spans per second holding at most a tenth of a second's worth.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A bucket refilled at `rate` spans per second (`u64::MAX`: no limit).
    pub fn new(rate: u64) -> Self {
        let rate = rate as f64;
        Self {
            rate,
            state: Mutex::new(((rate / 10.0).max(1.0), Instant::now())),
        }
    }

    /// Whether the bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.rate >= u64::MAX as f64
    }

    /// Waits until `spans` may be processed (a request larger than the bucket waits for
    /// it to be full, then leaves it in debt). Returns early when `stop` is set.
    pub fn take(&self, spans: u64, stop: &AtomicBool) {
        if self.is_unlimited() {
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
                *at = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_the_rate_over_time() {
        let stop = AtomicBool::new(false);
        let limit = RateLimit::new(2_000);
        let started = Instant::now();
        // 600 spans at 2,000/s: the first 200 are the burst, the rest take ~0.2 s.
        for _ in 0..60 {
            limit.take(10, &stop);
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn no_limit_never_waits_and_stop_ends_a_wait() {
        let stop = AtomicBool::new(false);
        let free = RateLimit::new(u64::MAX);
        assert!(free.is_unlimited());
        let started = Instant::now();
        free.take(u64::MAX / 2, &stop);
        assert!(started.elapsed() < Duration::from_millis(50));
        let slow = RateLimit::new(1);
        slow.take(1_000, &stop);
        stop.store(true, Ordering::Release);
        let started = Instant::now();
        slow.take(1, &stop);
        assert!(started.elapsed() < Duration::from_millis(200));
    }
}
