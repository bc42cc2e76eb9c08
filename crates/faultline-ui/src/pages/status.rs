//! `/status`: the health of each part, with what to do about it (the same parts as
//! `GET /api/v1/status`), and a timeline of each part's health over `range` (default 1h,
//! at most 24h: `faultline_api::status::History`).

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::params::get as param;
use faultline_api::status::Health;
use faultline_api::{ApiError, ApiState};

use super::Params;
use crate::chart::Lane;
use crate::html::{esc, page as layout};

/// The health of every part over the page's `range`, from the sampled history.
fn timeline(st: &ApiState, p: &[(String, String)]) -> Result<String, ApiError> {
    let text = param(p, "range").unwrap_or("1h");
    let range = faultline_api::params::go_duration("range", text)? / 1_000_000_000;
    if !(60..=86_400).contains(&range) {
        return Err(ApiError::bad_parameter(
            "range",
            "range must be from 1m to 24h: the history is kept for 24 hours",
        ));
    }
    let to = faultline_api::params::now_ns() / 1_000_000_000;
    let runs = st.history.runs(to - range);
    let lanes: Vec<Lane<'_>> = runs
        .iter()
        .map(|(name, runs)| {
            (
                *name,
                runs.iter()
                    .map(|r| (r.health.as_str(), r.from_s, r.to_s))
                    .collect(),
            )
        })
        .collect();
    let mut out = format!("<section><h2>Over the last {}</h2>", esc(text));
    if lanes.is_empty() {
        out.push_str("<p class=muted>No samples yet: health is sampled every 15 s from start.</p>");
    } else {
        out.push_str(&crate::chart::timeline(
            "health-timeline",
            "Health of each part",
            (to - range, to),
            &lanes,
        ));
        out.push_str("<p class=muted>Sampled every 15 s since faultline started (kept in memory for 24 hours; <a href=\"/api/v1/status/history\">JSON</a>).</p>");
    }
    out.push_str("</section>");
    Ok(out)
}

/// `/status`: the health of each part, with what to do about it.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let s = faultline_api::status::current(&st).await?;
    // No faster than every 5 s, as every page (0: off).
    let refresh = param(&p, "refresh")
        .and_then(|r| r.parse::<u64>().ok())
        .filter(|r| *r != 0)
        .map(|r| r.max(5));
    let mut body = format!(
        "<p>Overall: <b class=\"state-{}\" id=overall>{}</b> · <a href=\"/api/v1/status\">JSON</a> · <a href=\"/status?refresh=10\">refresh every 10 s</a></p>",
        s.health().as_str(),
        s.health().as_str()
    );
    body.push_str("<table id=status><tr><th>Part</th><th>State</th><th>What is going on</th><th>What to do</th></tr>");
    for c in &s.components {
        let _ = write!(
            body,
            "<tr class=\"component state-{}\" data-name=\"{}\"><td>{}</td><td><b>{}</b></td><td>{}</td><td>{}</td></tr>",
            c.health.as_str(),
            c.name,
            c.name,
            c.health.as_str(),
            esc(&c.summary),
            c.action.as_deref().map(esc).unwrap_or_default()
        );
    }
    body.push_str("</table>");
    body.push_str(&timeline(&st, &p)?);
    let partial: Vec<String> = s
        .components
        .iter()
        .filter(|c| c.health != Health::Ok)
        .map(|c| format!("{}: {}", c.name, c.summary))
        .collect();
    Ok(Html(layout("Status", &partial, refresh, &body)).into_response())
}
