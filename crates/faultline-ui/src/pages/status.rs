//! `/status`: the health of each part, with what to do about it (the same parts as
//! `GET /api/v1/status`).

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::params::get as param;
use faultline_api::status::Health;
use faultline_api::{ApiError, ApiState};

use super::Params;
use crate::html::{esc, page as layout};

/// `/status`: the health of each part, with what to do about it.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let s = faultline_api::status::current(&st).await?;
    let refresh = param(&p, "refresh").and_then(|r| r.parse().ok());
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
    let partial: Vec<String> = s
        .components
        .iter()
        .filter(|c| c.health != Health::Ok)
        .map(|c| format!("{}: {}", c.name, c.summary))
        .collect();
    Ok(Html(layout("Status", &partial, refresh, &body)).into_response())
}
