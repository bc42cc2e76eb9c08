//! Sampling: the one policy faultline serves to every SDK, and (later in the flow) the
//! arithmetic that turns a stored span's sampling decision into the number of spans it
//! stands for.
//!
//! - [`policy`]: the sampling policy file (TOML, or Jaeger's strategies JSON), validated
//!   into a [`Policy`] that answers "what strategy does service X use" the way Jaeger's
//!   remote sampling protocol expects.
//! - [`reload`]: the policy in force, reloaded from its file without a restart; a file
//!   that does not parse or validate is refused with its reason and the last good policy
//!   stays in force ([`metrics`]: its Prometheus gauges). Its health rule (`sampling policy` on the status page) lives there.
//!
//! This crate knows nothing about HTTP: `faultline-api` serves the strategies as Jaeger's
//! JSON on the sampling port (5778).

pub mod metrics;
pub mod policy;
pub mod reload;

pub use metrics::SamplingMetrics;
pub use policy::{OperationStrategy, Policy, PolicyError, Strategy, StrategyKind};
pub use reload::{PolicyHandle, PolicyStatus};
