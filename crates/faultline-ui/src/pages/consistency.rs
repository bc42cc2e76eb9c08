//! `/consistency`: the continuous checks (`faultline_checks`). Each consistency rule with
//! its keys per class and its violated keys (linked to the traces of A and B), then each
//! continuous assertion with its pass and fail counts and latest failing traces.
//! `?rule=NAME&class=CLASS` lists one rule's keys of one class.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::{ApiError, ApiState};
use faultline_checks::{Class, ContinuousView, KeyView, RuleView};

use crate::html::{esc, page as layout, url};

fn trace_link(link: &str, trace: &str) -> String {
    format!(
        "<a href=\"{}\">{}</a>",
        esc(link),
        esc(&trace[..trace.len().min(8)])
    )
}

fn keys_table(keys: &[KeyView]) -> String {
    if keys.is_empty() {
        return "<p class=muted>None.</p>".into();
    }
    let mut out = String::from(
        "<table><tr><th>Key</th><th>Class</th><th>First (A)</th><th>Then (B)</th><th>Late by</th></tr>",
    );
    for k in keys {
        let a = k
            .first
            .as_ref()
            .map(|f| trace_link(&f.link, &f.trace_id))
            .unwrap_or_else(|| "<span class=muted>none</span>".into());
        let mut b: Vec<String> = k
            .then
            .iter()
            .map(|t| trace_link(&t.link, &t.trace_id))
            .collect();
        if b.is_empty() {
            b.push("<span class=muted>none</span>".into());
        }
        if k.then_total as usize > k.then.len() {
            b.push(format!("(+{})", k.then_total as usize - k.then.len()));
        }
        let late = if k.late_ms > 0.0 {
            format!("{:.1} s", k.late_ms / 1000.0)
        } else {
            String::new()
        };
        let bad = Class::from_name(k.class).is_some_and(Class::is_violation);
        let _ = write!(
            out,
            "<tr class=key data-class=\"{}\"><td>{}</td><td><b class=state-{}>{}</b></td><td>{a}</td><td>{}</td><td>{late}</td></tr>",
            k.class,
            esc(&k.key),
            if bad { "failed" } else { "ok" },
            k.class,
            b.join(" ")
        );
    }
    out.push_str("</table>");
    out
}

fn rule_section(r: &RuleView, violated: &[KeyView]) -> String {
    let d = &r.def;
    let mut out = format!(
        "<section class=rule data-rule=\"{}\"><h2>{}</h2><p><code>{}</code> then <code>{}</code> with the same <code>{}</code> within {}{}{} <span class=muted>({})</span></p><table><tr>",
        esc(&d.name),
        esc(&d.name),
        esc(&d.first),
        esc(&d.then),
        esc(d.key.as_deref().unwrap_or("key")),
        esc(&d.within),
        if d.at_most_one { ", at most once" } else { "" },
        if d.require_first {
            ", never without the first"
        } else {
            ""
        },
        r.source,
    );
    for class in r.keys.keys() {
        let _ = write!(out, "<th>{class}</th>");
    }
    out.push_str("</tr><tr>");
    for (class, n) in &r.keys {
        let _ = write!(
            out,
            "<td class=count data-class=\"{class}\"><a href=\"/consistency?rule={}&amp;class={class}\">{n}</a></td>",
            url(&d.name)
        );
    }
    let _ = write!(
        out,
        "</tr></table><p class=muted>Spans matched since start: {} first, {} then, {} without the key.</p><h3>Violated keys</h3>{}</section>",
        r.spans_first,
        r.spans_then,
        r.spans_unkeyed,
        keys_table(violated)
    );
    out
}

fn assertion_section(a: &ContinuousView) -> String {
    let mut out = format!(
        "<section class=assertion data-assertion=\"{}\"><h2>{}</h2><p>Traces with <code>{}</code>, checked {} s after: {}</p><p><b class=state-ok>{} passed</b> · <b class=state-failed>{} failed</b> · {} skipped · {} waiting</p>",
        esc(&a.name),
        esc(&a.name),
        esc(&a.matcher),
        a.settle_ms / 1000,
        esc(&a.checks.join(", ")),
        a.stats.passed,
        a.stats.failed,
        a.stats.skipped,
        a.pending,
    );
    if !a.stats.examples.is_empty() {
        out.push_str("<table><tr><th>Checked</th><th>Trace</th><th>What failed</th></tr>");
        for e in &a.stats.examples {
            let at = faultline_model::rfc3339(e.checked_ms * 1_000_000);
            let _ = write!(
                out,
                "<tr class=failing><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&at[..at.len().min(19)]),
                trace_link(&e.link, &e.trace_id),
                esc(&e.failures.join("; "))
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
    out
}

/// `/consistency`.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Query(p): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(checks) = st.checks.clone() else {
        return Err(ApiError::not_found(
            "this process evaluates no continuous checks",
        ));
    };
    let class =
        match p.get("class").map(String::as_str) {
            None | Some("violated") => None,
            Some(c) => Some(Class::from_name(c).ok_or_else(|| {
                ApiError::bad_parameter("class", format!("class {c:?} is unknown"))
            })?),
        };
    let only = p.get("rule").cloned();
    let (rules, assertions, listed, broken) = tokio::task::spawn_blocking(move || {
        let rules = checks.consistency.rules();
        let mut listed = Vec::new();
        for r in &rules {
            if only.as_ref().is_some_and(|o| o != &r.def.name) {
                continue;
            }
            let keys = checks.consistency.keys(&r.def.name, class, 50);
            listed.push(keys.ok().flatten().unwrap_or_default());
        }
        let rules: Vec<RuleView> = rules
            .into_iter()
            .filter(|r| only.as_ref().is_none_or(|o| o == &r.def.name))
            .collect();
        (
            rules,
            checks.continuous.views(),
            listed,
            checks.consistency.broken(),
        )
    })
    .await?;
    let mut body = String::from(
        "<p class=muted>Eventual-consistency rules and trace assertions checked continuously on live spans (README: Continuous checks); <a href=\"/api/v1/consistency\">JSON</a>.</p>",
    );
    if let Some(b) = broken {
        let _ = write!(body, "<p class=banner>The rules stopped: {}</p>", esc(&b));
    }
    if rules.is_empty() {
        body.push_str("<p class=muted>No consistency rules. Add <code>[[consistency]]</code> to the configuration or PUT one to <code>/api/v1/consistency/rules/NAME</code>.</p>");
    }
    for (r, keys) in rules.iter().zip(&listed) {
        body.push_str(&rule_section(r, keys));
    }
    if !p.contains_key("rule") {
        body.push_str("<h2>Continuous assertions</h2>");
        if assertions.is_empty() {
            body.push_str("<p class=muted>No continuous assertions. Add <code>[[assertions]]</code> to the configuration.</p>");
        }
        for a in &assertions {
            body.push_str(&assertion_section(a));
        }
    }
    Ok(Html(layout("Continuous checks", &[], Some(30), &body)).into_response())
}
