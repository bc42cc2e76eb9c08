//! `/audit`: the audit log of control actions, newest first (`faultline_auth::audit`;
//! `GET /api/v1/audit` for JSON): when, who (the token's name), from where (the client's
//! address), what (method, route and object) and how it ended. `?who=NAME` shows one
//! token's actions, `?limit=N` (default 200, at most 1000) how many. It needs the `admin` scope when tokens are on.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::params::get as param;
use faultline_api::{ApiError, ApiState};

use crate::html::{esc, page as layout, url};

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix milliseconds (the model's RFC 3339, for reading).
pub(crate) fn date_time(ms: u64) -> String {
    let t = faultline_model::rfc3339(ms.saturating_mul(1_000_000));
    format!("{} {} UTC", &t[..10], &t[11..19])
}

/// The page.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Query(p): crate::pages::Params,
) -> Result<Response, ApiError> {
    let limit = match param(&p, "limit") {
        None => 200,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_parameter("limit", "limit: give 1 to 1000"))?,
    };
    let who = param(&p, "who").map(str::to_string);
    let (records, bad) = faultline_api::audit::recent(&st, limit, who.clone()).await?;
    let mut body = String::from(
        "<p class=muted>Every control action (probes, rules, dead letters, the fault proxy, experiment runs), who made it and how it ended; kept as long as spans are; <a href=\"/api/v1/audit\">JSON</a>.</p>",
    );
    if let Some(w) = &who {
        let _ = write!(
            body,
            "<p>Actions of <b>{}</b> only · <a href=\"/audit\">everyone's</a></p>",
            esc(w)
        );
    }
    if bad > 0 {
        let _ = write!(
            body,
            "<p class=warn>{bad} unreadable lines skipped (a write cut short by a crash).</p>"
        );
    }
    if records.is_empty() {
        body.push_str("<p class=muted>No control actions recorded.</p>");
    } else {
        body.push_str("<table id=audit><tr><th>When</th><th>Who</th><th>From</th><th>Where</th><th>What</th><th>Object</th><th>Result</th></tr>");
    }
    for r in &records {
        let class = if r.status >= 400 { "err" } else { "ok" };
        let _ = write!(
            body,
            "<tr class=audit-record><td>{}</td><td><a href=\"/audit?who={}\">{}</a></td><td>{}</td><td>{}</td><td><code>{} {}</code></td><td>{}</td><td class={class}>{}</td></tr>",
            date_time(r.at),
            url(&r.who),
            esc(&r.who),
            esc(r.peer.as_deref().unwrap_or("")),
            esc(&r.listener),
            esc(&r.method),
            esc(&r.target),
            esc(r.object.as_deref().unwrap_or("")),
            r.status
        );
    }
    if !records.is_empty() {
        body.push_str("</table>");
    }
    Ok(Html(layout("Audit log", &[], None, &body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(date_time(1_767_225_600_123), "2026-01-01 00:00:00 UTC");
    }
}
