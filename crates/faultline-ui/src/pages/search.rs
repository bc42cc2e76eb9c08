//! `/search`: the form, the results as a list, and duration over time as a scatter plot.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::params::{
    TraceQueryBuilder, duration_bounds, get as param, go_duration, now_ns, num, parse_tags, timeout,
};
use faultline_api::{ApiError, ApiState};
use faultline_model::hex;
use faultline_store::{TraceQuery, TraceSummary};

use super::{Params, RESULT_HEAD, blocking, reasons, summary_row};
use crate::chart::Dot;
use crate::html::{dur, esc, page as layout};

/// `/search`: the form, the results as a list, and duration over time as a scatter plot.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let (services, _) = blocking(&st, |store| store.services()).await?;
    let service = param(&p, "service").map(str::to_string);
    let mut body = String::from("<form class=q method=get action=/search>");
    body.push_str("<select name=service><option value=\"\">(any service)</option>");
    for s in &services {
        let _ = write!(
            body,
            "<option{}>{}</option>",
            if service.as_deref() == Some(s) {
                " selected"
            } else {
                ""
            },
            esc(s)
        );
    }
    body.push_str("</select>");
    for (name, hint, width) in [
        ("operation", "operation", 12),
        ("tags", "tags: {\"k\":\"v\"} or k=v", 24),
        ("minDuration", "min e.g. 100ms", 9),
        ("maxDuration", "max", 7),
        ("lookback", "range e.g. 1h", 7),
        ("limit", "limit", 4),
    ] {
        let _ = write!(
            body,
            "<input name={name} placeholder=\"{}\" size={width} value=\"{}\">",
            esc(hint),
            esc(param(&p, name).unwrap_or(""))
        );
    }
    body.push_str("<button type=submit>Find traces</button></form>");
    if p.is_empty() {
        return Ok(Html(layout("Search", &[], None, &body)).into_response());
    }
    // `tags` as Jaeger's JSON, or space-separated key=value pairs.
    let mut pairs: Vec<(String, String)> = p.clone();
    if let Some(t) = param(&p, "tags").filter(|t| !t.trim_start().starts_with('{')) {
        pairs.retain(|(k, _)| k != "tags");
        for kv in t.split_whitespace() {
            match kv.split_once('=') {
                Some((k, v)) => pairs.push(("tag".into(), format!("{k}:{v}"))),
                None => {
                    return Err(ApiError::bad_parameter(
                        "tags",
                        format!("tags: {kv:?} is not key=value"),
                    ));
                }
            }
        }
    }
    let q = match parse_query(&pairs) {
        Ok(q) => q,
        Err(e) => {
            // The form stays, with what is wrong under it.
            let _ = write!(body, "<p class=err>{}</p>", esc(e.message()));
            return Ok((e.status(), Html(layout("Search", &[], None, &body))).into_response());
        }
    };
    let (found, c) = blocking(&st, move |store| store.search(&q)).await?;
    let _ = write!(body, "<p>{} traces</p>", found.len());
    body.push_str(&scatter(&found));
    let max = found
        .iter()
        .map(TraceSummary::duration_ns)
        .max()
        .unwrap_or(0);
    // Two checked results open the comparison.
    body.push_str("<form id=compare-form method=get action=/compare><button type=submit>Compare the two checked traces</button></form>");
    let _ = write!(body, "<table id=results>{RESULT_HEAD}");
    for s in &found {
        body.push_str(&summary_row(s, max));
    }
    body.push_str("</table>");
    Ok(Html(layout("Search", &reasons(&st, c.reasons), None, &body)).into_response())
}

/// The search form's parameters as a query (the same vocabulary as every search API).
fn parse_query(p: &[(String, String)]) -> Result<TraceQuery, ApiError> {
    let end_ns = now_ns();
    let lookback = param(p, "lookback").unwrap_or("1h");
    let start_ns = end_ns.saturating_sub(go_duration("lookback", lookback)?);
    Ok(
        TraceQueryBuilder::new(("lookback", start_ns), ("end", end_ns))?
            .service(param(p, "service"))
            .operation(param(p, "operation"))
            .tags("tags", parse_tags(p)?)?
            .durations(duration_bounds(p, "minDuration", "maxDuration")?)
            .limit("limit", num(p, "limit", "traces")?)?
            .time_limit(timeout(p)?)
            .build(),
    )
}

/// Duration over start time, with axes; each point opens its trace.
fn scatter(found: &[TraceSummary]) -> String {
    if found.is_empty() {
        return String::new();
    }
    let dots: Vec<Dot> = found
        .iter()
        .map(|s| Dot {
            t_ns: s.start_ns,
            dur_ns: s.duration_ns(),
            href: format!("/trace/{}", hex(&s.trace_id)),
            error: s.error_count > 0,
            title: format!(
                "{} {}",
                dur(s.duration_ns()),
                s.root_name.as_deref().unwrap_or("")
            ),
        })
        .collect();
    format!(
        "{}<p class=muted>Trace duration over start time (UTC), failing traces in red; click a point to open its trace.</p>",
        crate::chart::scatter("scatter", &dots)
    )
}
