//! `/compare?t=ID&t=ID`: two traces side by side with their structural difference
//! (`crate::compare`): for every (service, operation) path, the span counts, total
//! durations and errors in each, paths in one trace only first. Search results have a
//! checkbox per trace to pick the two; without two ids the page asks for them.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::{ApiError, ApiState};
use faultline_model::health::plural;
use faultline_model::hex;
use faultline_model::span::TraceId;

use super::{Params, blocking, read_traces, trace_link};
use crate::compare::{PathDiff, compare};
use crate::html::{dur, esc, page as layout};
use crate::insights::trace_duration;

/// The form that asks for two trace ids.
fn form(a: &str, b: &str) -> String {
    format!(
        "<form class=q method=get action=/compare><input name=t placeholder=\"first trace id\" size=34 value=\"{}\"><input name=t placeholder=\"second trace id\" size=34 value=\"{}\"><button type=submit>Compare</button></form>",
        esc(a),
        esc(b)
    )
}

/// `/compare`.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let ids: Vec<&str> = p
        .iter()
        .filter(|(k, v)| k == "t" && !v.trim().is_empty())
        .map(|(_, v)| v.trim())
        .collect();
    if ids.len() != 2 {
        let note = if ids.is_empty() {
            "Pick two traces: check two results of a search and press Compare, or give two trace ids.".to_string()
        } else {
            format!(
                "{} given; a comparison takes exactly two.",
                plural(ids.len() as u64, "trace id")
            )
        };
        let body = format!(
            "{}<p class=muted id=compare-help>{}</p>",
            form(
                ids.first().copied().unwrap_or(""),
                ids.get(1).copied().unwrap_or("")
            ),
            esc(&note)
        );
        let status = if ids.is_empty() {
            axum::http::StatusCode::OK
        } else {
            axum::http::StatusCode::BAD_REQUEST
        };
        return Ok((status, Html(layout("Compare traces", &[], None, &body))).into_response());
    }
    let a = faultline_api::jaeger::parse_trace_id("t", ids[0])?;
    let b = faultline_api::jaeger::parse_trace_id("t", ids[1])?;
    let wanted: Vec<TraceId> = vec![a, b];
    let traces = blocking(&st, move |store| {
        // Read apart, so a missing one is named (read_traces leaves empty ones out).
        let mut out = Vec::new();
        for id in &wanted {
            out.push(read_traces(store, std::slice::from_ref(id))?.pop());
        }
        Ok(out)
    })
    .await?;
    let (ta, tb) = match (&traces[0], &traces[1]) {
        (Some(x), Some(y)) => (x, y),
        _ => {
            let missing: Vec<String> = [(a, &traces[0]), (b, &traces[1])]
                .iter()
                .filter(|(_, t)| t.is_none())
                .map(|(id, _)| hex(id))
                .collect();
            return Err(ApiError::not_found(format!(
                "no spans of trace {} are stored; check the id or search again",
                missing.join(" or ")
            )));
        }
    };
    let diff = compare(ta, tb);
    let mut body = form(&hex(&a), &hex(&b));
    body.push_str("<table id=compare-traces><tr><th></th><th>Trace</th><th>Duration</th><th>Spans</th><th>Errors</th></tr>");
    for (label, id, t) in [("A", a, ta), ("B", b, tb)] {
        let _ = write!(
            body,
            "<tr><td><b>{label}</b></td><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            trace_link(&id, &hex(&id)),
            dur(trace_duration(t)),
            t.len(),
            t.iter().filter(|s| s.is_error()).count()
        );
    }
    body.push_str("</table>");
    let changed = diff.iter().filter(|d| d.kind() != "same").count();
    let _ = write!(
        body,
        "<h2>Structure</h2><p class=muted>{} of {} differ. A path is the chain of service and operation from the root; counts and total durations of its spans in A and in B. Clock skew corrected in both.</p><table id=compare>",
        plural(changed as u64, "path"),
        diff.len()
    );
    body.push_str("<tr><th>Path</th><th>Difference</th><th>Spans A</th><th>Spans B</th><th>Time A</th><th>Time B</th><th>Errors A / B</th></tr>");
    for d in &diff {
        row(&mut body, d);
    }
    body.push_str("</table>");
    Ok(Html(layout("Compare traces", &[], None, &body)).into_response())
}

fn row(body: &mut String, d: &PathDiff) {
    let path = d
        .path
        .iter()
        .map(|(s, o)| format!("<b>{}</b> {}", esc(s), esc(o)))
        .collect::<Vec<_>>()
        .join(" › ");
    let what = match d.kind() {
        "only-a" => "only in A",
        "only-b" => "only in B",
        "more" => "more spans in B",
        "fewer" => "fewer spans in B",
        "slower" => "slower in B",
        "faster" => "faster in B",
        _ => "same",
    };
    let t = |n: u32, ns: u64| if n == 0 { "-".to_string() } else { dur(ns) };
    let _ = write!(
        body,
        "<tr class=\"path {}\"><td>{path}</td><td>{what}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{} / {}</td></tr>",
        d.kind(),
        d.a.count,
        d.b.count,
        t(d.a.count, d.a.total_ns),
        t(d.b.count, d.b.total_ns),
        d.a.errors,
        d.b.errors
    );
}
