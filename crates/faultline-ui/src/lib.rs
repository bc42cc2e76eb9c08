//! faultline's web UI, served on the HTTP port with the query API: server-rendered pages
//! (`pages/`, one module per page) built from small HTML helpers (`html.rs`) and SVG charts
//! with axes (`chart.rs`), the structural difference of two traces (`compare.rs`), the trace
//! analysis behind "look here first" (`insights.rs`) and the waterfall's layout
//! (`waterfall.rs`), the one script (`assets.rs`), and the terminal's renderings of the
//! same views for `faultline query` and `faultline report` (`text.rs`). No build step: the pages are
//! strings and the script is embedded.
//!
//! **Architecture invariant:** the UI reads only through [`faultline_store::SpanStore`],
//! like the API, and escapes every value that comes from spans. Analysis lives outside the
//! handlers, which gather data and render it.

mod assets;
pub mod chart;
pub mod compare;
pub mod html;
pub mod insights;
pub mod pages;
pub mod text;
pub mod waterfall;

pub use pages::router;
