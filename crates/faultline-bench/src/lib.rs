//! faultline's load generator and benchmarks, apart from the server binary so that it
//! ships the product only. The `faultline-bench` binary runs them (`loadgen`, `decode`,
//! `trace-by-id`, `red`, `search`; see `scripts/bench-*` and BENCHMARKS.md); the
//! integration tests call [`loadgen`] in-process to drive a server under test.
//!
//! - [`loadgen`]: realistic multi-service traces over OTLP/HTTP or OTLP/gRPC, and the
//!   single-core decode ceiling of the same requests; [`varied`] is its production-like
//!   profile (fresh high-cardinality values, varied durations), [`fresh`] its probe of how
//!   soon acknowledged traces are readable;
//! - [`store`]: query latency at the store level on a stopped server's data directory;
//! - [`http`]: query latency over HTTP with concurrent clients, against a running server;
//! - [`skew`]: the cost of clock-skew correction per trace read and per seal;
//! - [`tail`]: what tail sampling costs (decisions per second) and saves (block bytes);
//! - [`proxy`]: the fault proxy's added latency and throughput with no toxic.

pub mod checks;
pub mod clickhouse;
pub mod fresh;
pub mod http;
pub mod loadgen;
pub mod proxy;
pub mod publish;
pub mod skew;
pub mod store;
pub mod tail;
pub mod varied;

/// A reqwest client builder. The workspace's reqwest does TLS with no crypto provider of
/// its own, so the process's default (ring) is installed first; the tests call these
/// benchmarks in-process, where no `main` has done it.
pub(crate) fn http_client() -> reqwest::ClientBuilder {
    faultline_tls::client::install_default_provider();
    reqwest::Client::builder()
}
