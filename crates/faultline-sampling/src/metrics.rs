//! Prometheus gauges of the sampling policy, registered into the process's registry and
//! set from [`PolicyHandle`] before each scrape (names prefixed `faultline_`):
//!
//! - `sampling_policy_generation`: 1 for the policy read at start, +1 per reload taken;
//! - `sampling_policy_refusals`: versions of the policy file refused since start;
//! - `sampling_policy_refused`: 1 while the newest version of the file is refused (the
//!   last good policy is served meanwhile).

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::PolicyHandle;

/// The sampling policy's gauges.
#[derive(Debug, Default)]
pub struct SamplingMetrics {
    generation: Gauge,
    refusals: Gauge,
    refused: Gauge,
}

impl SamplingMetrics {
    /// Creates the gauges and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "sampling_policy_generation",
            "Sampling policy generation in force (1 at start, +1 per reload)",
            m.generation.clone(),
        );
        registry.register(
            "sampling_policy_refusals",
            "Versions of the sampling policy file refused since start",
            m.refusals.clone(),
        );
        registry.register(
            "sampling_policy_refused",
            "1 while the newest sampling policy file is refused and the last good one is served",
            m.refused.clone(),
        );
        m
    }

    /// Sets the gauges from `policy`.
    pub fn refresh(&self, policy: &PolicyHandle) {
        let s = policy.status();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.generation.set(clamp(s.generation));
        self.refusals.set(clamp(s.refusals));
        self.refused.set(i64::from(s.last_error.is_some()));
    }
}
