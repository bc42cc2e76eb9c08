//! faultline's web UI, served on the HTTP port with the query API: server-rendered pages
//! (`pages.rs`) built from small HTML helpers (`html.rs`), and the trace analysis behind
//! "look here first" (`insights.rs`). No build step: the pages are strings and the one
//! script is embedded.
//!
//! **Architecture invariant:** the UI reads only through [`faultline_store::SpanStore`],
//! like the API, and escapes every value that comes from spans.

pub mod html;
pub mod insights;
pub mod pages;

pub use pages::router;
