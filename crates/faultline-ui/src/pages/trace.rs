//! `/trace/{id}`: the waterfall (layout in `waterfall.rs`), with span details, the
//! critical path, marks on spans whose parent is missing, and find in trace. Times are
//! corrected for clock skew (`faultline_store::skew`): each moved span is marked with the
//! amount and the estimate's basis; `?raw=1` shows the stored times.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::{ApiError, ApiState};
use faultline_model::health::plural;
use faultline_model::hex;
use faultline_model::span::Span;
use faultline_store::TraceSummary;

use super::{blocking, reasons, trace_link};
use crate::html::{dur, esc, page as layout_page};
use crate::waterfall::{Row, layout};

/// `/trace/{id}`.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let trace_id = faultline_api::jaeger::parse_trace_id("trace id", &id)?;
    let raw = faultline_api::jaeger::wants_raw(&p);
    let ((answer, dropped), estimates) = blocking(&st, move |store| {
        Ok((store.trace_or_dropped(&trace_id)?, store.clock_offsets()))
    })
    .await?;
    let partial = reasons(&st, answer.completeness.reasons);
    let mut spans = answer.spans;
    let moved = if raw {
        Vec::new()
    } else {
        faultline_store::skew::correct(&mut spans, &estimates)
    };
    if spans.is_empty() {
        let why = dropped.map_or(String::new(), |at| {
            format!(
                ": tail sampling dropped it at {at} (Unix seconds) by policy; see /tracing-health"
            )
        });
        return Err(
            ApiError::not_found(format!("no spans of trace {id} are stored{why}"))
                .with_partial(partial),
        );
    }
    let w = layout(&spans);
    let mut body = String::new();
    if let Some(s) = TraceSummary::of(&spans) {
        let _ = write!(
            body,
            "<p>{} · {} · {} · {}{} · <a href=\"/api/v3/traces/{}\">raw OTLP JSON</a></p>",
            plural(s.span_count, "span"),
            plural(s.services.len() as u64, "service"),
            dur(s.duration_ns()),
            plural(s.error_count, "error"),
            if s.orphan_count > 0 {
                format!(
                    " · <span class=err>{} spans whose parent is missing</span>",
                    s.orphan_count
                )
            } else {
                String::new()
            },
            hex(&trace_id)
        );
    }
    let switch = if raw {
        format!(
            "<p id=skew>Stored times, as the services' clocks reported them. <a href=\"/trace/{}\">Correct clock skew</a></p>",
            hex(&trace_id)
        )
    } else if moved.is_empty() {
        String::new()
    } else {
        format!(
            "<p id=skew class=skew>{} span{} moved to correct clock skew (dashed outline). <a href=\"/trace/{}?raw=1\">Show stored times</a></p>",
            moved.len(),
            if moved.len() == 1 { "" } else { "s" },
            hex(&trace_id)
        )
    };
    body.push_str(&switch);
    body.push_str("<p><input id=trace-filter placeholder=\"Find in trace (service, operation, attribute)\" size=40> <span class=muted>Critical path in orange (its rows marked at the left; striped orange and red where a span on it failed); click a span for details.</span></p>");
    body.push_str("<table class=wf id=waterfall>");
    body.push_str(&ruler(w.t1.saturating_sub(w.t0)));
    for row in &w.rows {
        let adjustment = moved.iter().find(|a| a.index == row.index);
        span_row(&mut body, &spans[row.index], row, (w.t0, w.t1), adjustment);
    }
    body.push_str("</table>");
    Ok(Html(layout_page(
        &format!("Trace {}", hex(&trace_id)),
        &partial,
        None,
        &body,
    ))
    .into_response())
}

/// The time ruler above the lanes: offsets from the trace's start at a round step (the
/// value ticks of `chart.rs`), each placed where a span starting then would.
fn ruler(span_ns: u64) -> String {
    let mut out = String::from(
        "<tr class=ruler id=ruler><td class=muted>from the trace's start</td><td></td><td class=lane>",
    );
    let ms = span_ns as f64 / 1e6;
    let (_, ticks) = crate::chart::value_ticks(ms);
    let step = ticks.get(1).copied().unwrap_or(1.0);
    let mut k = 0usize;
    loop {
        let at = step * k as f64;
        if at > ms * (1.0 + 1e-9) || (ms <= 0.0 && k > 0) {
            break;
        }
        let left = if ms > 0.0 { at / ms * 100.0 } else { 0.0 };
        let _ = write!(
            out,
            "<span class=\"tick{}\" style=\"left:{left:.2}%\" data-ms={at}>{}</span>",
            if left > 85.0 { " end" } else { "" },
            crate::chart::Unit::Millis.label(at)
        );
        k += 1;
    }
    out.push_str("</td></tr>");
    out
}

/// A span's row and its (hidden) detail row; `moved` when clock-skew correction moved it.
fn span_row(
    body: &mut String,
    s: &Span,
    row: &Row,
    (t0, t1): (u64, u64),
    moved: Option<&faultline_store::skew::Adjustment>,
) {
    let left = (s.start_ns - t0) as f64 / (t1 - t0) as f64 * 100.0;
    let width = (s.duration_ns() as f64 / (t1 - t0) as f64 * 100.0).max(0.2);
    let mut class = String::from("span-row");
    if row.critical {
        class.push_str(" critical");
    }
    if s.is_error() {
        class.push_str(" errspan");
    }
    let skew_mark = match moved {
        Some(a) => {
            class.push_str(" skewed");
            format!(
                " <span class=skewmark title=\"{}\">clock skew: moved {}{}</span>",
                esc(&a.basis),
                if a.shift_ns < 0 { "−" } else { "+" },
                faultline_model::health::human_duration(a.shift_ns.unsigned_abs())
            )
        }
        None => String::new(),
    };
    let search_text = {
        let mut t = format!("{} {} ", s.service(), s.name);
        for (k, v) in &s.attributes {
            let _ = write!(t, "{k}={} ", v.to_text());
        }
        t.to_lowercase()
    };
    let _ = write!(
        body,
        "<tr class=\"{class}\" data-span=\"{}\" data-parent=\"{}\" data-text=\"{}\"><td style=\"padding-left:{}px;white-space:nowrap\"><span class=toggle>{}</span><b>{}</b> {}{}{skew_mark}</td><td class=num>{}</td><td class=lane><div class=span style=\"left:{left:.2}%;width:{width:.2}%\" title=\"starts at +{} · lasts {}\"></div></td></tr>",
        hex(&s.span_id),
        row.parent.map(|p| hex(&p)).unwrap_or_default(),
        esc(&search_text),
        row.depth * 16,
        if row.has_children { "▾" } else { "" },
        esc(s.service()),
        esc(&s.name),
        if row.orphan {
            " <span class=orphan>(parent missing)</span>"
        } else {
            ""
        },
        dur(s.duration_ns()),
        dur(s.start_ns.saturating_sub(t0)),
        dur(s.duration_ns()),
    );
    let _ = write!(
        body,
        "<tr class=\"detail hidden\" data-detail-of=\"{}\"><td colspan=3>{}</td></tr>",
        hex(&s.span_id),
        span_detail(s, (t0, row.orphan), moved)
    );
}

fn kv_table(title: &str, kvs: &faultline_model::span::Attributes) -> String {
    if kvs.is_empty() {
        return String::new();
    }
    let mut out = format!("<b>{}</b><table>", esc(title));
    for (k, v) in kvs {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(k),
            esc(&v.to_text())
        );
    }
    out.push_str("</table>");
    out
}

fn span_detail(
    s: &Span,
    (t0, orphan): (u64, bool),
    moved: Option<&faultline_store::skew::Adjustment>,
) -> String {
    let mut out = String::new();
    if let Some(a) = moved {
        let _ = write!(
            out,
            "<p class=skew>Clock skew corrected: moved {}{}; {}.</p>",
            if a.shift_ns < 0 { "−" } else { "+" },
            faultline_model::health::human_duration(a.shift_ns.unsigned_abs()),
            esc(&a.basis)
        );
    }
    let parent = match (&s.parent_span_id, orphan) {
        (None, _) => "none (a root)".to_string(),
        (Some(p), false) => hex(p),
        (Some(p), true) => format!(
            "{} <span class=orphan>(missing from the trace)</span>",
            hex(p)
        ),
    };
    let _ = write!(
        out,
        "<p class=ids>span {} · parent {parent} · kind {} · starts at +{} · status {:?}{}</p>",
        hex(&s.span_id),
        s.kind.as_str(),
        dur(s.start_ns.saturating_sub(t0)),
        s.status,
        if s.status_message.is_empty() {
            String::new()
        } else {
            format!(": {}", esc(&s.status_message))
        }
    );
    out.push_str(&kv_table("Attributes", &s.attributes));
    for e in &s.events {
        // Event times relative to the span's start (negative: before it).
        let at = if e.time_ns >= s.start_ns {
            format!("+{}", dur(e.time_ns - s.start_ns))
        } else {
            format!("−{}", dur(s.start_ns - e.time_ns))
        };
        let title = format!("Event {} at {at}", e.name);
        if e.attributes.is_empty() {
            let _ = write!(out, "<p><b>{}</b></p>", esc(&title));
        } else {
            out.push_str(&kv_table(&title, &e.attributes));
        }
    }
    for l in &s.links {
        let _ = write!(
            out,
            "<p>Link to {}</p>",
            trace_link(
                &l.trace_id,
                &format!("{} / {}", hex(&l.trace_id), hex(&l.span_id))
            )
        );
    }
    out.push_str(&kv_table("Resource", &s.origin.resource));
    out
}
