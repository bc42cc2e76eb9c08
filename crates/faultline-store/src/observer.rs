//! Span observers: code outside the store that must see every span the store indexes,
//! with the same durability (the continuous checks of `faultline-checks`).
//!
//! The store calls [`SpanObserver::observe`] with a record's spans in [`Store::ingest`]
//! before they enter the head, and [`SpanObserver::checkpoint`] in [`Store::seal`] after
//! the head is cut and before the manifest publishing it is written. So every span in a
//! published block was observed and checkpointed, and every span not yet in one is replayed
//! from the WAL after a crash: an observer whose effects are idempotent per span (applying
//! a span twice changes nothing) loses nothing and counts nothing twice.
//!
//! [`Store::ingest`]: crate::Store::ingest
//! [`Store::seal`]: crate::Store::seal

use faultline_model::span::Span;

/// Sees the spans the store indexes; see the module doc for the guarantees.
pub trait SpanObserver: Send + Sync {
    /// A record's spans, before the store holds them. Called from the pipeline's threads:
    /// keep it short and never block on I/O for long.
    fn observe(&self, spans: &[Span]);
    /// Makes durable everything observed so far. An error fails the seal, which the
    /// pipeline retries with backoff (nothing is published meanwhile).
    fn checkpoint(&self) -> Result<(), String>;
}
