//! Freshness probe for `faultline-bench loadgen --probe-api URL`: how long after its
//! acknowledgement an acknowledged trace can be read by id.
//!
//! Once per `--probe-every` seconds while the load runs, the probe takes the trace most
//! recently acknowledged (its first trace id and the instant the answer arrived) and polls
//! `GET URL/api/traces/{id}` every 25 ms until it answers 200, or for at most 120 s. The
//! delay from acknowledgement to the first 200 is the sample; probes run concurrently, so
//! a slow one does not delay the next. After the load, unfinished probes keep polling
//! until they are found or time out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a probe waits for its trace before counting it as never readable.
const GIVE_UP: Duration = Duration::from_secs(120);

/// The freshness probe of one load run.
pub struct Probe {
    api: String,
    every: Duration,
    client: reqwest::Client,
    latest: Mutex<Option<(String, Instant)>>,
}

/// What the probes measured.
#[derive(Debug, Default)]
pub struct Freshness {
    /// Seconds from acknowledgement to readable, sorted.
    pub delays: Vec<f64>,
    /// Probes whose trace was not readable within [`GIVE_UP`].
    pub never: usize,
    /// Polls answered with something else than 200 or 404 (the last one).
    pub last_error: Option<String>,
}

impl Probe {
    /// A probe of the query API at `api` (base URL), sampling every `every`.
    pub fn new(api: &str, every: Duration) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(!every.is_zero(), "--probe-every must be positive");
        let client = crate::http_client()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Arc::new(Self {
            api: api.trim_end_matches('/').to_string(),
            every,
            client,
            latest: Mutex::new(None),
        }))
    }

    /// Notes that the trace `id` was acknowledged now.
    pub fn acked(&self, id: &str) {
        if let Ok(mut l) = self.latest.lock() {
            *l = Some((id.to_string(), Instant::now()));
        }
    }

    /// Samples until `end`, then waits for the probes in flight.
    pub async fn run(self: Arc<Self>, end: Instant) -> Freshness {
        let mut tasks = Vec::new();
        let mut tick = tokio::time::interval(self.every);
        tick.tick().await;
        while Instant::now() < end {
            tick.tick().await;
            let sample = self.latest.lock().ok().and_then(|mut l| l.take());
            if let Some((id, acked)) = sample {
                let me = self.clone();
                tasks.push(tokio::spawn(async move { me.poll(&id, acked).await }));
            }
        }
        let mut out = Freshness::default();
        for t in tasks {
            match t.await {
                Ok(Ok(Some(d))) => out.delays.push(d),
                Ok(Ok(None)) => out.never += 1,
                Ok(Err(e)) => {
                    out.never += 1;
                    out.last_error = Some(e);
                }
                Err(e) => out.last_error = Some(format!("probe task: {e}")),
            }
        }
        out.delays.sort_by(f64::total_cmp);
        out
    }

    /// Seconds from `acked` until trace `id` reads 200; None if it never does.
    async fn poll(&self, id: &str, acked: Instant) -> Result<Option<f64>, String> {
        let url = format!("{}/api/traces/{id}", self.api);
        let mut last = None;
        while acked.elapsed() < GIVE_UP {
            match self.client.get(&url).send().await {
                Ok(r) if r.status() == 200 => return Ok(Some(acked.elapsed().as_secs_f64())),
                Ok(r) if r.status() == 404 => {}
                Ok(r) => last = Some(format!("HTTP {} for {url}", r.status())),
                Err(e) => last = Some(format!("{url}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        match last {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

impl Freshness {
    /// The summary's `readable_after_ack_s` object.
    pub fn json(&self) -> serde_json::Value {
        let pct = |p: f64| {
            if self.delays.is_empty() {
                0.0
            } else {
                self.delays[((self.delays.len() - 1) as f64 * p).round() as usize]
            }
        };
        serde_json::json!({
            "probes": self.delays.len() + self.never,
            "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0),
            "never": self.never, "last_error": self.last_error,
        })
    }
}
