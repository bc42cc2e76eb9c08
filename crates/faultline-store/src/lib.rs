//! faultline's embedded span store.
//!
//! - [`store`]: the head (recent spans in memory), sealing into blocks, the manifest's
//!   position in the WAL, and the [`SpanStore`] trait the query layer uses;
//! - [`block`]: the Parquet block format and its trace-id index;
//! - [`manifest`]: the atomically replaced list of blocks;
//! - [`rollup`]: RED cells per minute with latency sketches, persisted beside each block;
//! - [`search`]: trace summaries, each block's search index and how a search runs;
//! - [`quality`]: tracing health per service (orphans, sampling breaks, convention
//!   violations);
//! - [`seqs`]: sets of WAL sequence numbers (the backlog replayed out of order);
//! - [`skew`]: clock-skew estimates from client/server calls, and their read-time
//!   correction of a trace's spans;
//! - [`tail`]: tail-sampling policies, decisions and their records;
//! - [`varint`]: the LEB128 varints of the index files.
//!
//! **Architecture invariant:** the store knows nothing about HTTP, protobuf or the WAL's
//! file format: it receives [`faultline_model::span::Span`]s tagged with a sequence number,
//! and says up to which sequence number everything is durable.

pub mod block;
pub mod error;
pub mod health;
mod locs;
pub mod manifest;
pub mod observer;
mod prefetch;
pub mod quality;
pub mod rollup;
pub mod search;
pub mod seqs;
pub mod skew;
pub mod store;
pub mod tail;
mod text_cache;
pub mod varint;

#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use manifest::{BlockMeta, Manifest};
pub use observer::SpanObserver;
pub use rollup::{Dependency, RedPoint};
pub use search::{SortOrder, TraceQuery, TraceSummary};
pub use store::{
    Completeness, FaultHook, FaultPoint, OpenReport, SpanStore, Store, StoreOptions, TailPassed,
    TraceAnswer,
};

#[cfg(test)]
mod search_tests;
#[cfg(test)]
mod tail_tests;
