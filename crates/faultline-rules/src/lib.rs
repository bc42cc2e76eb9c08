//! Trace assertions: "did this request do what it should?", checked over the spans one
//! trace holds.
//!
//! - [`selector`]: the selector language (which spans), parsed with errors that give
//!   the column and what was expected;
//! - [`assertion`]: assertion files (what must hold of the selected spans) and their
//!   evaluation over a trace's spans.
//!
//! Pure logic over [`faultline_model::span::Span`]: the API reads the spans from the store
//! and the CLI reports; nothing here does I/O.

pub mod assertion;
pub mod selector;

pub use assertion::{AssertionFile, Outcome, check_trace};
pub use selector::{Selector, SelectorError};
