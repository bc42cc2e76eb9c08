//! `/probes`: every synthetic probe with its state, uptime over 24 hours, 7 and 30 days,
//! and its last check; `/probes/{name}`: one probe's checks over the last 24 hours as a
//! timeline (passed, failed), their duration over time, each phase's p50 and p99, its
//! incidents with the first failing check's trace, and the recent checks, each linking to
//! its trace; `/alerts`: every alert rule (`faultline_alerts`), whether it fires, and its
//! incidents; `/public/status`: the probes' state and uptime for the services' users, with
//! nothing internal. Read through the API state.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::{ApiError, ApiState};
use faultline_probe::{CheckResult, ProbeView, Uptime};

use crate::chart::{Lane, Unit, time_chart, timeline};
use crate::html::{esc, page as layout, pct, url};

fn probes(st: &ApiState) -> Result<&faultline_probe::Probes, ApiError> {
    st.probes
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this faultline runs no probes"))
}

fn target(v: &ProbeView) -> String {
    match (&v.def.http, &v.def.tcp, &v.def.dns) {
        (Some(h), _, _) => format!("{} {}", h.method, h.url),
        (None, Some(t), _) => format!("tcp {}:{}", t.host, t.port),
        (None, None, Some(d)) => format!(
            "dns {} {} at {}",
            d.record_type,
            d.name,
            d.server.as_deref().unwrap_or("the system's nameserver")
        ),
        _ => String::new(),
    }
}

fn uptime_cell(u: &Uptime) -> String {
    if u.checks == 0 {
        "<td class=num>-</td>".into()
    } else {
        let r = u.passed as f64 / u.checks as f64;
        format!(
            "<td class=\"num{}\" title=\"{} of {} checks passed\">{}</td>",
            if r < 1.0 { " err" } else { "" },
            u.passed,
            u.checks,
            pct(r)
        )
    }
}

fn when(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02} UTC",
        s % 86400 / 3600,
        s % 3600 / 60,
        s % 60
    )
}

fn trace_cell(r: &CheckResult) -> String {
    let id = faultline_model::hex(&r.trace_id);
    format!("<a class=trace-link href=\"/trace/{id}\">trace</a>")
}

/// A probe's checks of the 24 hours before `now_s`, oldest first, and their runs of
/// passed (`ok`) and failed checks, each lasting until the next check (Unix seconds).
fn last_day(v: &ProbeView, now_s: u64) -> (Vec<&CheckResult>, Vec<(&'static str, u64, u64)>) {
    let day: Vec<&CheckResult> = v
        .results
        .iter()
        .rev()
        .filter(|r| r.at_ms / 1000 + 86_400 >= now_s)
        .collect();
    let mut runs: Vec<(&'static str, u64, u64)> = Vec::new();
    for (i, r) in day.iter().enumerate() {
        let state = if r.outcome.ok { "ok" } else { "failed" };
        let end = day.get(i + 1).map_or(now_s, |n| n.at_ms / 1000);
        match runs.last_mut() {
            Some(last) if last.0 == state => last.2 = end,
            _ => runs.push((state, r.at_ms / 1000, end)),
        }
    }
    (day, runs)
}

/// `/probes`.
pub(crate) async fn list(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let all = probes(&st)?.list();
    let mut body = String::from(
        "<p class=muted>Probes are made in the configuration file or with <code>POST /api/v1/probes</code> (README: Synthetic probes).</p>",
    );
    if all.is_empty() {
        body.push_str("<p class=muted>No probes yet.</p>");
    } else {
        body.push_str("<table id=probes><tr><th>Probe</th><th>Target</th><th>State</th><th>24 h</th><th>7 days</th><th>30 days</th><th>Last check</th><th></th></tr>");
        for v in &all {
            let last = v.results.first();
            let _ = write!(
                body,
                "<tr class=\"probe state-{}\" data-name=\"{}\"><td><a href=\"/probes/{}\">{}</a></td><td>{}</td><td><b>{}</b></td>{}{}{}<td>{}</td><td>{}</td></tr>",
                if v.state == faultline_probe::State::Down {
                    "failed"
                } else {
                    "ok"
                },
                esc(&v.def.name),
                url(&v.def.name),
                esc(&v.def.name),
                esc(&target(v)),
                if v.def.paused {
                    "paused".to_string()
                } else {
                    format!("{:?}", v.state).to_lowercase()
                },
                uptime_cell(&v.uptime[0]),
                uptime_cell(&v.uptime[1]),
                uptime_cell(&v.uptime[2]),
                last.map_or_else(String::new, |r| format!(
                    "{} · {:.1} ms{}",
                    when(r.at_ms),
                    r.outcome.total.as_secs_f64() * 1000.0,
                    r.outcome
                        .error
                        .as_ref()
                        .map(|e| format!(" · <span class=err>{}</span>", esc(e)))
                        .unwrap_or_default()
                )),
                last.map(trace_cell).unwrap_or_default()
            );
        }
        body.push_str("</table>");
    }
    Ok(Html(layout("Probes", &[], Some(30), &body)).into_response())
}

/// `/probes/{name}`.
pub(crate) async fn one(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let v = probes(&st)?.get(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no probe named {name:?}; the probes page lists them"
        ))
    })?;
    let mut body = format!(
        "<p>{} · every {} s · timeout {:.1} s · retries {} · <b>{}</b> · <a href=\"/api/v1/probes/{}\">JSON</a></p>",
        esc(&target(&v)),
        v.def.interval_secs,
        v.def.timeout().as_secs_f64(),
        v.def.retries,
        if v.def.paused {
            "paused".to_string()
        } else {
            format!("{:?}", v.state).to_lowercase()
        },
        url(&name)
    );
    body.push_str("<table id=uptime><tr><th>Uptime</th><th>24 h</th><th>7 days</th><th>30 days</th></tr><tr><td>checks passed</td>");
    for u in &v.uptime {
        body.push_str(&uptime_cell(u));
    }
    body.push_str("</tr></table>");
    let now_s = faultline_api::params::now_ns() / 1_000_000_000;
    let (day, runs) = last_day(&v, now_s);
    body.push_str("<section><h2>Checks</h2><div class=charts>");
    if let Some(first) = day.first() {
        let lanes: Vec<Lane<'_>> = vec![("checks", runs)];
        body.push_str(&timeline(
            "probe-timeline",
            "Passed and failed checks",
            (first.at_ms / 1000, now_s),
            &lanes,
        ));
        let points: Vec<(u64, Option<f64>)> = day
            .iter()
            .map(|r| (r.at_ms / 1000, Some(r.outcome.total.as_secs_f64() * 1000.0)))
            .collect();
        body.push_str(&time_chart(
            "probe-duration",
            "Check duration",
            &points,
            Unit::Millis,
        ));
    } else {
        body.push_str("<p class=muted>No checks in the last 24 hours.</p>");
    }
    body.push_str("</div></section>");
    body.push_str(&phases(&v, now_s.saturating_sub(86_400) * 1000));
    body.push_str(&incidents(&v));
    body.push_str("<section><h2>Recent checks</h2><table id=results><tr><th>When</th><th>Result</th><th>Total</th><th>Phases</th><th></th></tr>");
    for r in v.results.iter().take(50) {
        let phases: Vec<String> = r
            .outcome
            .phases
            .iter()
            .map(|(p, d)| format!("{} {:.1} ms", p.as_str(), d.as_secs_f64() * 1000.0))
            .collect();
        let _ = write!(
            body,
            "<tr class=\"result {}\"><td>{}</td><td>{}</td><td class=num>{:.1} ms</td><td>{}</td><td>{}</td></tr>",
            if r.outcome.ok { "passed" } else { "failed" },
            when(r.at_ms),
            r.outcome.error.as_deref().map_or_else(
                || format!(
                    "passed{}{}",
                    r.outcome
                        .status
                        .map(|s| format!(" (HTTP {s})"))
                        .unwrap_or_default(),
                    r.outcome
                        .warning
                        .as_deref()
                        .map_or(String::new(), |w| format!(
                            " <span class=warn>{}</span>",
                            esc(w)
                        ))
                ),
                |e| format!("<span class=err>{}</span>", esc(e))
            ),
            r.outcome.total.as_secs_f64() * 1000.0,
            esc(&phases.join(", ")),
            trace_cell(r)
        );
    }
    body.push_str("</table></section>");
    Ok(Html(layout(&format!("Probe {name}"), &[], Some(30), &body)).into_response())
}

/// Each phase's p50, p90 and p99 over the last day's kept checks.
fn phases(v: &ProbeView, since_ms: u64) -> String {
    let mut out = String::from(
        "<section><h2>Phases (last 24 hours)</h2><table id=phases><tr><th>Phase</th><th>Checks</th><th>p50</th><th>p90</th><th>p99</th></tr>",
    );
    for l in v.phase_latency(since_ms) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=num>{}</td><td class=num>{:.2} ms</td><td class=num>{:.2} ms</td><td class=num>{:.2} ms</td></tr>",
            l.phase, l.checks, l.p50_ms, l.p90_ms, l.p99_ms
        );
    }
    out.push_str("</table></section>");
    out
}

fn incidents(v: &ProbeView) -> String {
    let mut out = format!("<section><h2>Incidents ({})</h2>", v.incidents.len());
    if v.incidents.is_empty() {
        out.push_str("<p class=muted>None: the probe has not been down.</p></section>");
        return out;
    }
    out.push_str("<table id=incidents><tr><th>From</th><th>To</th><th>Lasted</th><th>First failure</th><th></th></tr>");
    let now_ms = faultline_api::params::now_ns() / 1_000_000;
    for i in &v.incidents {
        let end = i.end_ms.unwrap_or(now_ms);
        let _ = write!(
            out,
            "<tr class=incident><td>{}</td><td>{}</td><td class=num>{}</td><td class=err>{}</td><td>{}</td></tr>",
            when(i.start_ms),
            i.end_ms.map_or_else(|| "ongoing".to_string(), when),
            faultline_model::health::human_duration(end.saturating_sub(i.start_ms) * 1_000_000),
            esc(i.first_failure.outcome.error.as_deref().unwrap_or("")),
            trace_cell(&i.first_failure)
        );
    }
    out.push_str("</table></section>");
    out
}

/// `/alerts`: every alert rule, whether it fires, and its incidents, newest first.
pub(crate) async fn alerts(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let all = match st.alerts.clone() {
        Some(a) => tokio::task::spawn_blocking(move || a.list()).await?,
        None => Vec::new(),
    };
    let mut body = String::from(
        "<p class=muted>Alert rules are set in the configuration file (README: Alerts); <a href=\"/api/v1/alerts\">JSON</a>.</p>",
    );
    if all.is_empty() {
        body.push_str("<p class=muted>No alert rules.</p>");
    }
    for (rule, state) in &all {
        let _ = write!(
            body,
            "<section class=\"alert {}\" data-name=\"{}\"><h2>{} <b class=state-{}>{}</b></h2><p>{}</p>",
            if state.firing { "firing" } else { "quiet" },
            esc(&rule.name),
            esc(&rule.name),
            if state.firing { "failed" } else { "ok" },
            if state.firing { "firing" } else { "not firing" },
            esc(&rule.describe())
        );
        if state.incidents.is_empty() {
            body.push_str("<p class=muted>It has not fired.</p></section>");
            continue;
        }
        body.push_str("<table class=incidents><tr><th>From</th><th>To</th><th>What held</th></tr>");
        for i in state.incidents.iter().rev() {
            let _ = write!(
                body,
                "<tr class=incident><td>{}</td><td>{}</td><td>{}</td></tr>",
                when(i.start * 1000),
                i.end
                    .map_or_else(|| "ongoing".to_string(), |e| when(e * 1000)),
                esc(&i.message)
            );
        }
        body.push_str("</table></section>");
    }
    if let Some(o) = st.outbox.clone() {
        // It walks the outbox's events under its lock: off the executor.
        body.push_str(&tokio::task::spawn_blocking(move || notifications(&o)).await?);
    }
    Ok(Html(layout("Alerts", &[], Some(30), &body)).into_response())
}

/// The outbox: each receiver's counts, and the newest transitions with where each stands.
fn notifications(o: &faultline_notify::Outbox) -> String {
    let mut out = String::from(
        "<section id=notifications><h2>Notifications</h2><p class=muted>Probe incidents and alert transitions, one message per transition and receiver; receivers are set in the configuration file (README: Notifications); <a href=\"/api/v1/notifications\">JSON</a>.</p>",
    );
    let receivers = o.receivers();
    if receivers.is_empty() {
        out.push_str("<p class=muted>No receivers: transitions are kept here only.</p>");
    } else {
        out.push_str("<table class=receivers><tr><th>Receiver</th><th>Kind</th><th>Target</th><th>Waiting</th><th>Sent</th><th>Failed attempts</th><th>Gave up</th><th>Last error</th></tr>");
        for r in &receivers {
            let _ = write!(
                out,
                "<tr class=receiver data-name=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=waiting>{}</td><td class=sent>{}</td><td>{}</td><td>{}</td><td class=err>{}</td></tr>",
                esc(&r.name),
                esc(&r.name),
                r.kind,
                esc(&r.target),
                r.waiting,
                r.sent,
                r.failed_attempts,
                r.gave_up,
                esc(r.last_error.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</table>");
    }
    let events = o.events(50);
    if events.is_empty() {
        out.push_str("<p class=muted>No transitions yet.</p>");
    } else {
        out.push_str("<table class=notifications><tr><th>When</th><th>What</th><th>Message</th><th>Delivery</th></tr>");
    }
    for e in &events {
        let link = e.event.link.as_deref().map_or(String::new(), |l| {
            format!(
                " <a href=\"{}\">{}</a>",
                esc(l),
                if l.starts_with("/trace/") {
                    "trace"
                } else {
                    "open"
                }
            )
        });
        let deliveries: Vec<String> = e
            .deliveries
            .iter()
            .map(|d| {
                let state = serde_json::to_value(d.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let err = d
                    .last_error
                    .as_deref()
                    .map_or(String::new(), |x| format!(": {}", esc(x)));
                format!(
                    "<span class=\"delivery {state}\" title=\"{} attempts\">{} {state}{err}</span>",
                    d.attempts,
                    esc(&d.receiver)
                )
            })
            .collect();
        let _ = write!(
            out,
            "<tr class=notification data-key=\"{}\"><td>{}</td><td>{} {} <b>{}</b></td><td>{}{link}</td><td>{}</td></tr>",
            esc(&e.event.key),
            when(e.event.at),
            esc(&e.event.kind),
            esc(&e.event.subject),
            esc(&e.event.state),
            esc(&e.event.message),
            if deliveries.is_empty() {
                "no receivers".to_string()
            } else {
                deliveries.join("<br>")
            }
        );
    }
    if !events.is_empty() {
        out.push_str("</table>");
    }
    out.push_str("</section>");
    out
}

/// `/public/status`: a status page for the services' users, safe to expose: each probe's
/// state and uptime over 24 hours, 7 and 30 days, a bar of its last day, and when it was
/// down. No targets, errors, traces or links into faultline; paused probes are left out.
pub(crate) async fn public(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let all: Vec<ProbeView> = st
        .probes
        .as_ref()
        .map(|p| p.list())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !v.def.paused)
        .collect();
    let down = all
        .iter()
        .filter(|v| v.state == faultline_probe::State::Down)
        .count();
    let mut body = format!(
        "<h1>Status</h1><p id=overall class={}>{}</p>",
        if down > 0 { "err" } else { "" },
        if all.is_empty() {
            "Nothing is watched yet.".to_string()
        } else if down == 0 {
            "All systems operational.".to_string()
        } else {
            format!("{down} of {} checks failing.", all.len())
        }
    );
    let now_s = faultline_api::params::now_ns() / 1_000_000_000;
    for v in &all {
        let (_, runs) = last_day(v, now_s);
        let _ = write!(
            body,
            "<section class=\"public-probe\" data-name=\"{}\"><h2>{} <b class=state-{}>{}</b></h2><table><tr><th>24 h</th><th>7 days</th><th>30 days</th></tr><tr>{}{}{}</tr></table>",
            esc(&v.def.name),
            esc(&v.def.name),
            if v.state == faultline_probe::State::Down {
                "failed"
            } else {
                "ok"
            },
            match v.state {
                faultline_probe::State::Down => "down",
                faultline_probe::State::Up => "up",
                faultline_probe::State::Unknown => "not checked yet",
            },
            uptime_cell(&v.uptime[0]),
            uptime_cell(&v.uptime[1]),
            uptime_cell(&v.uptime[2]),
        );
        if let Some(first) = runs.first().map(|r| r.1) {
            let lanes: Vec<Lane<'_>> = vec![("last 24 h", runs)];
            body.push_str(&timeline(
                &format!("public-{}", v.def.name),
                "Checks",
                (first, now_s),
                &lanes,
            ));
        }
        let downs: Vec<String> = v
            .incidents
            .iter()
            .take(5)
            .map(|i| {
                format!(
                    "<li>down from {}{}</li>",
                    when(i.start_ms),
                    i.end_ms
                        .map_or_else(|| " (ongoing)".to_string(), |e| format!(" to {}", when(e)))
                )
            })
            .collect();
        if !downs.is_empty() {
            let _ = write!(body, "<ul class=downs>{}</ul>", downs.join(""));
        }
        body.push_str("</section>");
    }
    Ok(Html(crate::html::public_page("Status", &body)).into_response())
}
