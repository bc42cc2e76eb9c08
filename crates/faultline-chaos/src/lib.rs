//! Fault injection. This crate owns the fault proxy: TCP proxies whose connections pass
//! through toxics (latency, bandwidth, slow close, timeout, reset, slicing, data limits,
//! down) in either direction, driven through Toxiproxy's HTTP API so Toxiproxy's clients
//! and Chaos Toolkit's toxiproxy driver work unmodified.
//!
//! - [`toxic`]: what a toxic is, its JSON, validation and update merging;
//! - `link.rs`: one direction of one connection, the toxics applied to its data;
//! - `proxy.rs`: a listener, its connections and their toxics;
//! - [`http`]: HTTP mode, per-request faults and a span per request;
//! - [`registry`]: the proxies by name, every API operation, the durable state (and the
//!   removal at start of faults left by a crashed run);
//! - [`api`]: the HTTP API;
//! - [`experiment`]: experiments as files, their runs and reports (`faultline experiment`).

pub mod api;
pub mod experiment;
pub mod http;
mod link;
mod proxy;
pub mod registry;
pub mod toxic;

pub use api::router;
pub use proxy::DIAL_TIMEOUT;
pub use registry::{ApiError, Proxies, Restored, STATE_FILE};

/// Toxiproxy's API port.
pub const DEFAULT_API: &str = "127.0.0.1:8474";
