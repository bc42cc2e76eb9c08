//! Intake: the receivers (OTLP/gRPC, OTLP/HTTP, Zipkin v2) and the admission rules in
//! front of the WAL.
//!
//! **Invariant:** a request is answered with success only after the WAL acknowledged the
//! record holding its spans; every refusal happens before that, with a retryable status
//! when retrying can help. Intake knows the WAL's API, not its file format.

pub mod admission;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;

pub use admission::{Accepted, Admitted, IngestError, Intake, IntakeConfig, Lane};
pub use faultline_model::envelope::Protocol;
pub use metrics::{Metrics, MetricsObserver};
