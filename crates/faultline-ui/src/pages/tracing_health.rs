//! `/tracing-health`: per service, what makes its traces less trustworthy, from
//! `GET /api/v1/tracing-health`'s data (`faultline_store::quality`): orphans with the
//! services that should have sent their parents, traces broken by sampling, skewed clocks,
//! and semantic-convention violations, each with its count, its trend over the last hour
//! and links to example traces; then what tail sampling decided (`faultline_store::tail`),
//! by root service and policy.

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use faultline_api::{ApiError, ApiState};
use faultline_store::quality::{Tally, TracingHealth};

use super::{blocking, trace_link};
use crate::html::{esc, page as layout};

/// `/tracing-health`.
pub(crate) async fn page(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let (report, tail) = blocking(&st, |store| {
        Ok((store.tracing_health()?, store.tail_sampling()?))
    })
    .await?;
    let body = render(&report) + &render_tail(&tail);
    Ok(Html(layout("Tracing health", &[], None, &body)).into_response())
}

/// Tail sampling's decisions: kept by each policy and dropped, traces and spans.
fn render_tail(r: &faultline_store::tail::TailReport) -> String {
    let mut out = String::from("<h2>Tail sampling</h2>");
    let Some(p) = &r.policy else {
        out.push_str("<p id=tail-off>Tail sampling is off: every stored trace is kept (<code>[tail_sampling] enabled = true</code> in the configuration file turns it on).</p>");
        return out;
    };
    let _ = write!(
        out,
        "<p>Traces are decided {} s after their block is sealed: kept when {}{}, and of the rest about {} per second per root service; RED and dependencies count every span. {} blocks decided, {} waiting. Also as JSON: <a href=\"/api/v1/tail-sampling\">/api/v1/tail-sampling</a>.</p>",
        p.wait_secs,
        if p.keep_errors {
            "they have an error"
        } else {
            "(errors: not kept by rule)"
        },
        if p.keep_slower_than_p99 {
            " or are slower than their root operation's p99"
        } else {
            ""
        },
        p.rest_traces_per_second,
        r.blocks_decided,
        r.blocks_waiting
    );
    out.push_str("<table id=tail-sampling><tr><th>root service</th><th>kept: error</th><th>kept: slow</th><th>kept: rate</th><th>dropped</th></tr>");
    for (s, d) in &r.services {
        let t =
            |t: &faultline_store::tail::Tally| format!("{} traces ({} spans)", t.traces, t.spans);
        let _ = write!(
            out,
            "<tr data-service=\"{}\"><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            esc(s),
            esc(s),
            t(&d.kept_error),
            t(&d.kept_slow),
            t(&d.kept_rate),
            t(&d.dropped)
        );
    }
    out.push_str("</table>");
    out
}

fn examples(t: &Tally) -> String {
    t.examples
        .iter()
        .map(|id| trace_link(id, &faultline_model::hex(id)[..8]))
        .collect::<Vec<_>>()
        .join(" ")
}

fn trend(t: &Tally) -> String {
    t.trend
        .iter()
        .map(|(_, c)| c.to_string())
        .collect::<Vec<_>>()
        .join(" · ")
}

/// One finding's row.
fn row(out: &mut String, service: &str, kind: &str, what: &str, t: &Tally) {
    let _ = write!(
        out,
        "<tr class=finding data-service=\"{}\" data-kind=\"{kind}\"><td>{}</td><td>{kind}</td><td>{what}</td><td class=num>{}</td><td class=muted>{}</td><td>{}</td></tr>",
        esc(service),
        esc(service),
        t.count,
        trend(t),
        examples(t)
    );
}

fn render(r: &TracingHealth) -> String {
    let mut out = format!(
        "<p>Findings since faultline started. Conventions: OpenTelemetry semantic conventions {}. Trend: spans per 10 minutes over the last hour, oldest first. Also as JSON: <a href=\"/api/v1/tracing-health\">/api/v1/tracing-health</a>.</p>",
        esc(r.semconv_version)
    );
    out.push_str("<table id=tracing-health><tr><th>service</th><th>finding</th><th>what</th><th>spans</th><th>trend</th><th>examples</th></tr>");
    let mut any = false;
    for s in &r.services {
        let h = &s.health;
        let from = if s.callers.is_empty() {
            "no caller seen in the last hour".to_string()
        } else {
            format!("parent expected from {}", s.callers.join(", "))
        };
        if h.orphans.count > 0 {
            row(&mut out, &s.service, "orphans", &esc(&from), &h.orphans);
            any = true;
        }
        if h.sampling_breaks.count > 0 {
            let what = format!("sampled spans whose parent was not kept; {from}");
            row(
                &mut out,
                &s.service,
                "sampling breaks",
                &esc(&what),
                &h.sampling_breaks,
            );
            any = true;
        }
        for (host, o) in &s.clocks {
            let _ = write!(
                out,
                "<tr class=finding data-service=\"{}\" data-kind=\"clock skew\"><td>{}</td><td>clock skew</td><td>{} is {} {} (median of {} calls from {}, spread {})</td><td class=num>{}</td><td></td><td></td></tr>",
                esc(&s.service),
                esc(&s.service),
                esc(if host.is_empty() {
                    "(no host.name)"
                } else {
                    host
                }),
                faultline_model::health::human_duration(o.offset_ns.unsigned_abs()),
                if o.offset_ns > 0 { "ahead" } else { "behind" },
                o.samples,
                esc(&o.callers.join(", ")),
                faultline_model::health::human_duration(o.spread_ns.unsigned_abs()),
                o.samples
            );
            any = true;
        }
        for (k, t) in &h.deprecated {
            let note = faultline_store::quality::deprecation_note(k);
            let what = format!("<code>{}</code>: {}", esc(k), esc(note));
            row(&mut out, &s.service, "deprecated attribute", &what, t);
            any = true;
        }
        for ((k, got), t) in &h.wrong_type {
            let what = format!(
                "<code>{}</code>: {}",
                esc(k),
                faultline_store::quality::wrong_type_note(k, got)
            );
            row(&mut out, &s.service, "wrong type", &what, t);
            any = true;
        }
        for (k, t) in &h.missing_resource {
            let what = format!("resource lacks <code>{}</code>", esc(k));
            row(&mut out, &s.service, "missing resource attribute", &what, t);
            any = true;
        }
    }
    out.push_str("</table>");
    if !any {
        out.push_str("<p id=all-good>Nothing found: no orphans, sampling breaks, skewed clocks or convention violations since start.</p>");
    }
    out
}
