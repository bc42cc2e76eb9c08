//! Trace assertions: "did this request do what it should?", checked over the spans one
//! trace holds.
//!
//! - [`selector`]: the selector language (which spans), parsed with errors that give
//!   the column and what was expected;
//! - [`assertion`]: assertion files (what must hold of the selected spans) and their
//!   evaluation over a trace's spans;
//! - [`index`]: many selectors grouped by the service they require, so a span is tried
//!   only against those that can match it.
//!
//! Pure logic over [`faultline_model::span::Span`]: the API reads the spans from the store
//! and the CLI reports; nothing here does I/O.

pub mod assertion;
pub mod index;
pub mod selector;

pub use assertion::{AssertionFile, Outcome, check_trace};
pub use index::SelectorIndex;
pub use selector::{Selector, SelectorError};
