//! The pages, one module each: `/` ([`services`]), `/service/{name}` ([`service`]),
//! `/search` ([`search`]), `/trace/{id}` ([`trace`]), `/compare` ([`compare`]),
//! `/dependencies`
//! ([`dependencies`]), `/probes`, `/probes/{name}`, `/alerts` and the public
//! `/public/status` ([`probes`]), `/experiments` ([`experiments`]), `/consistency` ([`consistency`]), `/status` ([`status`]), `/tracing-health` ([`tracing_health`]),
//! `/audit` ([`audit`]), `/login` ([`login`]),
//! and the script they share (`/ui.js`,
//! `assets.rs`). Every page is rendered on the server from the
//! [`faultline_store::SpanStore`]; its URL carries all its parameters (time range as
//! `range=1h`, `refresh=30` to reload every 30 s, sort order, filters), so a view can be
//! bookmarked and shared. Pages whose data may be incomplete say so in a banner. Errors
//! are [`ApiError`]s written as pages in the UI's layout (`html::error_page`); an unknown
//! path answers 404 in the shape of the area it is in (API paths in their API's shape).
//!
//! This module holds what several pages share: the time range, store access off the
//! executor, trace links and result rows.

pub mod audit;
pub mod compare;
pub mod consistency;
pub mod dependencies;
pub mod experiments;
pub mod login;
pub mod probes;
pub mod search;
pub mod service;
pub mod services;
pub mod status;
pub mod trace;
pub mod tracing_health;

use std::fmt::Write as _;

use axum::Router;
use axum::extract::Query;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use faultline_api::params::{get as param, go_duration, now_ns};
use faultline_api::{ApiError, ApiState, Shape, shaped};
use faultline_model::hex;
use faultline_model::span::{Span, TraceId};
use faultline_store::{SpanStore, StoreError, TraceSummary};

use crate::html::{dur, esc, url};

/// The UI routes, their errors written as pages, and the fallback for unknown paths.
pub fn router() -> Router<ApiState> {
    let pages = Router::new()
        .route("/", get(services::page))
        .route("/service/{name}", get(service::page))
        .route("/search", get(search::page))
        .route("/trace/{id}", get(trace::page))
        .route("/compare", get(compare::page))
        .route("/dependencies", get(dependencies::page))
        .route("/probes", get(probes::list))
        .route("/probes/{name}", get(probes::one))
        .route("/alerts", get(probes::alerts))
        .route("/experiments", get(experiments::page))
        .route("/consistency", get(consistency::page))
        .route("/public/status", get(probes::public))
        .route("/status", get(status::page))
        .route("/tracing-health", get(tracing_health::page))
        .route("/audit", get(audit::page))
        .route("/login", get(login::page).post(login::login))
        .route("/logout", axum::routing::post(login::logout))
        .route("/ui.js", get(crate::assets::script));
    shaped(pages, Shape::Page(crate::html::error_page)).fallback(not_found)
}

/// Unknown paths: 404 in the shape of the area the path is in.
async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    let shape = if path.starts_with("/api/v3/") {
        Shape::V3
    } else if path.starts_with("/api/v1/") {
        Shape::Native
    } else if path.starts_with("/api/") {
        Shape::Jaeger
    } else {
        Shape::Page(crate::html::error_page)
    };
    ApiError::not_found(format!(
        "there is no page or route {path}; the UI starts at /, the API's routes are listed in the README"
    ))
    .render(shape)
    .into_response()
}

pub(crate) type Params = Query<Vec<(String, String)>>;

/// Runs store work off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    st: &ApiState,
    f: impl FnOnce(&dyn SpanStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    faultline_api::query(st, f).await
}

/// The time range of a page: `range` (Go duration, default 1h) ending now.
pub(crate) struct Range {
    pub(crate) text: String,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    pub(crate) refresh: Option<u64>,
}

impl Range {
    pub(crate) fn parse(p: &[(String, String)]) -> Result<Self, ApiError> {
        let text = param(p, "range").unwrap_or("1h").to_string();
        let len = go_duration("range", &text)?;
        if len < 60_000_000_000 {
            return Err(ApiError::bad_parameter(
                "range",
                "range must be at least 1m",
            ));
        }
        // Auto-refresh no faster than every 5 s: a page reading the store every second
        // is load nobody asked for (0 means off).
        let refresh = match param(p, "refresh") {
            Some(r) => Some(
                r.parse::<u64>()
                    .map_err(|_| {
                        ApiError::bad_parameter(
                            "refresh",
                            format!("refresh={r:?} is not a number of seconds"),
                        )
                    })?
                    .max(5),
            )
            .filter(|_| r != "0"),
            None => None,
        };
        let end_ns = now_ns();
        Ok(Self {
            text,
            start_ns: end_ns.saturating_sub(len),
            end_ns,
            refresh,
        })
    }

    pub(crate) fn start_s(&self) -> u64 {
        self.start_ns / 1_000_000_000 / 60 * 60
    }

    pub(crate) fn end_s(&self) -> u64 {
        (self.end_ns / 1_000_000_000).div_ceil(60) * 60 + 60
    }

    /// The seconds the rollup cells of [`Self::start_s`]..[`Self::end_s`] cover: from the
    /// start of the first minute to now (the current minute is counted as far as it has
    /// gone). Rates divide by this, exactly what their counts span.
    pub(crate) fn covered_s(&self) -> f64 {
        (self.end_ns as f64 / 1e9 - self.start_s() as f64).max(1.0)
    }

    /// The seconds point `start_s` of a series with step `step` covers (the last one only
    /// as far as now).
    pub(crate) fn point_s(&self, start_s: u64, step: u64) -> f64 {
        (self.end_ns as f64 / 1e9 - start_s as f64).clamp(1.0, step as f64)
    }

    /// A step giving at most 60 points.
    pub(crate) fn step_s(&self) -> u64 {
        ((self.end_s() - self.start_s()) / 60).div_ceil(60).max(1) * 60
    }

    /// The query string that keeps this range.
    pub(crate) fn qs(&self) -> String {
        match self.refresh {
            Some(r) => format!("range={}&refresh={r}", url(&self.text)),
            None => format!("range={}", url(&self.text)),
        }
    }

    pub(crate) fn picker(&self, path: &str, extra: &str) -> String {
        let mut out = String::from("<p>Range: ");
        for r in ["15m", "1h", "6h", "24h", "7d"] {
            let label = if r == "7d" { "7 days" } else { r };
            let r_go = if r == "7d" { "168h" } else { r };
            if self.text == r_go {
                let _ = write!(out, "<b>{label}</b> ");
            } else {
                let _ = write!(out, "<a href=\"{path}?range={r_go}{extra}\">{label}</a> ");
            }
        }
        let _ = write!(
            out,
            "· auto-refresh: <a href=\"{path}?range={}&refresh=30{extra}\">30 s</a> <a href=\"{path}?range={}{extra}\">off</a></p>",
            url(&self.text),
            url(&self.text)
        );
        out
    }
}

/// The page's partial reasons plus the process's (records not yet indexed, a backlog).
pub(crate) fn reasons(st: &ApiState, r: Vec<String>) -> Vec<String> {
    st.with_lag(faultline_store::Completeness { reasons: r }, None)
        .reasons
}

/// The spans of several traces (empty ones left out), in the order asked, with clock skew
/// corrected (`faultline_store::skew`: the analyses of the service page judge durations),
/// read by up to as many threads as the machine has cores (at most 4): each read decodes
/// its own pages.
pub(crate) fn read_traces(
    store: &dyn SpanStore,
    ids: &[TraceId],
) -> Result<Vec<Vec<Span>>, StoreError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    let chunk = ids.len().div_ceil(threads).max(1);
    let estimates = store.clock_offsets();
    let estimates = &*estimates;
    let parts: Vec<Result<Vec<Vec<Span>>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    Ok(store
                        .traces(part)?
                        .into_iter()
                        .map(|a| {
                            let mut spans = a.spans;
                            faultline_store::skew::correct(&mut spans, estimates);
                            spans
                        })
                        .filter(|s| !s.is_empty())
                        .collect())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StoreError::Encode(
                        "a thread reading traces for the page panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(ids.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

pub(crate) fn trace_link(id: &TraceId, text: &str) -> String {
    format!(
        "<a class=trace-link href=\"/trace/{}\">{}</a>",
        hex(id),
        esc(text)
    )
}

/// A search result as a table row, its bar scaled to the longest (`max_ns`).
pub(crate) fn summary_row(s: &TraceSummary, max_ns: u64) -> String {
    let width = if max_ns == 0 {
        0.0
    } else {
        s.duration_ns() as f64 / max_ns as f64 * 200.0
    };
    let root = format!(
        "{} {}",
        s.root_service.as_deref().unwrap_or("(missing root)"),
        s.root_name.as_deref().unwrap_or("")
    );
    format!(
        "<tr class=result><td><input type=checkbox name=t value=\"{}\" form=compare-form aria-label=\"compare\"></td><td>{}</td><td><span class=\"bar{}\" style=\"width:{width:.0}px\"></span> {}</td><td class=num>{}</td><td class=\"num{}\">{}</td><td>{}</td><td class=muted>{}</td></tr>",
        hex(&s.trace_id),
        trace_link(&s.trace_id, &root),
        if s.error_count > 0 { " errbar" } else { "" },
        dur(s.duration_ns()),
        s.span_count,
        if s.error_count > 0 { " err" } else { "" },
        s.error_count,
        esc(&s.services.join(", ")),
        hex(&s.trace_id[..8]),
    )
}

/// The header row of [`summary_row`]s.
pub(crate) const RESULT_HEAD: &str = "<tr><th></th><th>Root</th><th>Duration</th><th>Spans</th><th>Errors</th><th>Services</th><th>Trace</th></tr>";
