//! Trace search and trace summaries: what a block's search index holds, how it is built,
//! written and read, and how a query runs over blocks and the head.
//!
//! Each sealed block has a search index in memory ([`BlockIndex`]):
//!
//! - per span (in the block's row order): the operation (an id into the block's table of
//!   (service, operation name)) and the duration in microseconds;
//! - per trace (in the trace-id index's order): start, end, root operation, error count and
//!   orphan count (spans whose parent is not in the trace);
//! - tag postings: for each (service, tag key, tag value) the set of traces with a span of
//!   that service carrying the tag, as a Roaring bitmap of trace ordinals.
//!
//! The span and trace columns are rebuilt from the block's Parquet columns when the block is
//! opened; only the postings are kept on disk, in `BLOCKID.sidx` (format in `postings.rs`).
//!
//! Code map: the query vocabulary, trace summaries and which tags a span carries
//! (`query.rs`); the postings and their file (`postings.rs`); the in-memory index of a
//! block and how a search runs over it (`index.rs`).
//!
//! **What is searchable:** a span's attributes, its resource's attributes, its events'
//! attributes, and the tags faultline's Jaeger answers add (`span.kind`, `error=true`,
//! `otel.status_code`, `otel.status_description`, `otel.scope.name`,
//! `otel.scope.version`). Values are compared as text (`500`, `true`). String values up to
//! [`MAX_INDEXED_VALUE`] bytes, integers and booleans are indexed: as postings when a key's
//! values repeat, in a table of (value hash, trace) needles when they are nearly unique (a
//! search checks the few candidate traces a needle names). Other values (doubles, arrays,
//! long strings) are listed as *unindexed*, and a search on them reads the candidate
//! traces to check (bounded by [`MAX_VERIFY_TRACES`], beyond which the answer is marked
//! partial).
//!
//! **Match semantics** (as Jaeger's Cassandra backend): a trace matches when it has a span
//! of the service (and operation) whose duration is within the bounds, and for each tag a
//! span of the service carrying it; the tag and the duration need not be on the same span.
//! A trace matches the time range when it overlaps it.

mod index;
mod postings;
mod query;

pub(crate) use index::{Agg, BlockIndex, LightRows, TopK};
#[cfg(test)]
pub(crate) use postings::Found;
pub(crate) use postings::{
    Hashed, IdBuild, Postings, SpanTerms, read_postings, shape_part, write_postings,
};
pub use query::{SortOrder, Tag, TraceQuery, TraceSummary, for_each_tag, span_has_tag};

/// Longest string value kept in the postings.
pub const MAX_INDEXED_VALUE: usize = 128;
/// How many candidate traces one search reads from blocks to check unindexed tags.
pub const MAX_VERIFY_TRACES: usize = 20_000;
/// Most tags in one search.
pub const MAX_TAGS: usize = 32;
