//! `/experiments`: chaos experiment runs (scheduled by this process or reported by
//! `faultline experiment run`), newest first, with their verdict and the traces they
//! touched, and each service's resilience score now and per day (`faultline_chaos`'s
//! `history.rs` defines the score).

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use faultline_api::{ApiError, ApiState};

use crate::chart::{Unit, time_chart};
use crate::html::{esc, page as layout, pct, url};

fn verdict(run: &Value) -> (&'static str, &'static str) {
    match (run["status"].as_str(), run["deviated"].as_bool()) {
        (Some("completed"), Some(false)) => ("ok", "held"),
        (Some("completed"), _) => ("failed", "broken"),
        _ => ("warn", "aborted"),
    }
}

fn score_section(scores: &[Value]) -> String {
    let mut out = String::from(
        "<section id=scores><h2>Resilience score</h2><p class=muted>Per service: the share of its experiments whose hypothesis held at their latest run, weighted by severity.</p>",
    );
    if scores.is_empty() {
        out.push_str("<p class=muted>No scored runs yet.</p></section>");
        return out;
    }
    out.push_str("<table><tr><th>Service</th><th>Score</th><th>Experiments (latest run)</th></tr>");
    for s in scores {
        let exps: Vec<String> = s["experiments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "<span class=state-{}>{}</span> (severity {})",
                    if e["held"] == true { "ok" } else { "failed" },
                    esc(e["title"].as_str().unwrap_or_default()),
                    e["severity"]
                )
            })
            .collect();
        let service = s["service"].as_str().unwrap_or_default();
        let _ = write!(
            out,
            "<tr class=score data-service=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(service),
            esc(service),
            pct(s["score"].as_f64().unwrap_or(0.0)),
            exps.join("<br>")
        );
    }
    out.push_str("</table>");
    for s in scores {
        let points: Vec<(u64, Option<f64>)> = s["daily"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                (
                    d["day"].as_u64().unwrap_or(0),
                    d["score"].as_f64().map(|x| x * 100.0),
                )
            })
            .collect();
        if points.len() > 1 {
            let service = s["service"].as_str().unwrap_or_default();
            out.push_str(&time_chart(
                &format!("score-{service}"),
                &format!("Resilience score of {service} per day"),
                &points,
                Unit::Percent,
            ));
        }
    }
    out.push_str("</section>");
    out
}

fn runs_section(runs: &[Value]) -> String {
    let mut out = String::from("<section id=runs><h2>Runs</h2>");
    if runs.is_empty() {
        out.push_str("<p class=muted>No experiment runs yet. Run one with <code>faultline experiment run FILE</code>, or schedule them with <code>[[experiments]]</code> in the configuration (README: Experiments).</p></section>");
        return out;
    }
    out.push_str("<table><tr><th>Started</th><th>Experiment</th><th>Service</th><th>Verdict</th><th>Took</th><th>Traces it touched</th></tr>");
    for r in runs {
        let (class, word) = verdict(r);
        let started = faultline_model::rfc3339(r["startedUs"].as_u64().unwrap_or(0) * 1000);
        let traces: Vec<String> = r["tracesTouched"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .take(5)
            .map(|t| {
                format!(
                    "<a href=\"/trace/{}\">{}</a>",
                    url(t),
                    esc(&t[..t.len().min(8)])
                )
            })
            .collect();
        let why = r["abortReason"]
            .as_str()
            .map(|w| format!(": {}", esc(w)))
            .unwrap_or_default();
        let run = r["run"].as_str().unwrap_or_default();
        let _ = write!(
            out,
            "<tr class=run data-verdict=\"{word}\"><td>{}</td><td><a href=\"/api/v1/experiments/runs/{}\">{}</a></td><td>{}</td><td><b class=state-{class}>{word}</b>{why}</td><td>{:.1} s</td><td>{}</td></tr>",
            esc(&started[..started.len().min(19)]),
            url(run),
            esc(r["title"].as_str().unwrap_or_default()),
            esc(r["service"].as_str().unwrap_or_default()),
            r["seconds"].as_f64().unwrap_or(0.0),
            if traces.is_empty() {
                "<span class=muted>none</span>".to_string()
            } else {
                traces.join(" ")
            },
        );
    }
    out.push_str("</table></section>");
    out
}

/// `/experiments`.
pub(crate) async fn page(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let (runs, scores) = match st.experiments.clone() {
        Some(h) => tokio::task::spawn_blocking(move || (h.summaries(200), h.scores())).await?,
        None => (Vec::new(), Vec::new()),
    };
    let body = format!(
        "<p class=muted>Chaos experiments checked against the trace data (README: Experiments); <a href=\"/api/v1/experiments\">JSON</a>.</p>{}{}",
        score_section(&scores),
        runs_section(&runs)
    );
    Ok(Html(layout("Experiments", &[], Some(30), &body)).into_response())
}
