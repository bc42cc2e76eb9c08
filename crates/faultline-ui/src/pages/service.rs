//! `/service/{name}`: the service's operations, RED over time, the latency distribution of
//! every span, and "look here first" (representative traces, errors grouped by signature,
//! outliers, and what sets slow and failing traces apart). The data is gathered in one
//! blocking call ([`gather`]); the analysis is in `insights.rs`; each section is rendered
//! by its own function.

use std::collections::HashSet;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::params::get as param;
use faultline_api::{ApiError, ApiState};
use faultline_model::hex;
use faultline_model::span::{Span, SpanKind};
use faultline_store::{RedPoint, SpanStore, StoreError, TraceQuery, TraceSummary};

use super::{Params, Range, blocking, read_traces, reasons, trace_link};
use crate::chart::{Unit, time_chart};
use crate::html::{dur, esc, ms, page as layout_page, pct, url};
use crate::insights;

/// Traces read for "look here first" by default (each costs about a millisecond); the
/// page's `sample` parameter changes it.
pub const INSIGHT_TRACES: usize = 60;
/// Most traces the `sample` parameter may ask for.
pub const MAX_SAMPLE: usize = 1000;

/// Everything the page shows, read in one blocking call.
struct ServiceData {
    /// Each operation with its kind and RED over the range.
    op_rows: Vec<(String, SpanKind, Option<RedPoint>)>,
    /// RED per step.
    series: Vec<RedPoint>,
    /// Span counts per histogram bucket.
    dist: Vec<u64>,
    /// The newest traces of the range.
    sample: Vec<TraceSummary>,
    /// The sample's traces and failing ones, read whole.
    traces: Vec<Vec<Span>>,
    /// Why the data may be partial.
    reasons: Vec<String>,
}

/// `/service/{name}`.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let range = Range::parse(&p)?;
    let sample_n = match param(&p, "sample") {
        None => INSIGHT_TRACES,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (10..=MAX_SAMPLE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_parameter(
                    "sample",
                    format!("sample={v:?} must be a number of traces from 10 to {MAX_SAMPLE}"),
                ));
            }
        },
    };
    let svc = name.clone();
    let (known, c) = blocking(&st, move |store| store.services()).await?;
    // Only a complete list can say a service is unknown (a quarantined block may hold it).
    if c.is_complete() && !known.contains(&svc) {
        let mut near: Vec<&String> = known
            .iter()
            .filter(|k| k.contains(svc.as_str()) || svc.contains(k.as_str()))
            .collect();
        near.truncate(5);
        let hint = if near.is_empty() {
            format!(
                "{} services are known; the services page lists them",
                known.len()
            )
        } else {
            format!(
                "did you mean {}?",
                near.iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(ApiError::not_found(format!(
            "no service named {name:?} has spans in the stored data; {hint}"
        )));
    }
    let (start, end, step) = (range.start_s(), range.end_s(), range.step_s());
    let window = (range.start_ns, range.end_ns);
    let svc = name.clone();
    let data = blocking(&st, move |store| {
        gather(store, &svc, (start, end, step), window, sample_n)
    })
    .await?;
    let mut body = range.picker(&format!("/service/{}", url(&name)), "");
    let _ = write!(
        body,
        "<p><a href=\"/search?service={}&lookback={}\">Search this service's traces</a></p>",
        url(&name),
        url(&range.text)
    );
    body.push_str(&over_time(&data.series, step, &range));
    body.push_str(&operations(&name, &range, &data.op_rows, range.covered_s()));
    body.push_str(&histogram(&histogram_bounds(), &data.dist));
    body.push_str(&look_here_first(&data, sample_n));
    Ok(Html(layout_page(
        &format!("Service {name}"),
        &reasons(&st, data.reasons),
        range.refresh,
        &body,
    ))
    .into_response())
}

/// Reads the operations, RED, the histogram and the sample of traces (the newest of the
/// range and up to half as many failing ones).
fn gather(
    store: &dyn SpanStore,
    svc: &str,
    (start, end, step): (u64, u64, u64),
    (start_ns, end_ns): (u64, u64),
    sample_n: usize,
) -> Result<ServiceData, StoreError> {
    let (ops, c) = store.operations(svc)?;
    let mut op_rows = Vec::new();
    for (op, kind) in &ops {
        let (t, _) = store.red_total(svc, Some(op), Some(*kind), start, end)?;
        op_rows.push((op.clone(), *kind, Some(t)));
    }
    let (series, _) = store.red(svc, None, None, start, end, step)?;
    let (dist, _) = store.latency_distribution(svc, None, start, end, &histogram_bounds())?;
    let base = TraceQuery {
        service: Some(svc.to_string()),
        start_ns,
        end_ns,
        limit: sample_n.max(400),
        time_limit: Some(std::time::Duration::from_secs(5)),
        ..TraceQuery::default()
    };
    let (sample, c2) = store.search(&base)?;
    let (failing, _) = store.search(&TraceQuery {
        errors_only: true,
        limit: sample_n / 2,
        ..base.clone()
    })?;
    // Read the newest traces and the failing ones (both bounded).
    let mut ids: Vec<_> = sample.iter().take(sample_n).map(|s| s.trace_id).collect();
    let mut seen: HashSet<_> = ids.iter().copied().collect();
    for f in failing.iter().take(sample_n / 2) {
        if seen.insert(f.trace_id) {
            ids.push(f.trace_id);
        }
    }
    let traces = read_traces(store, &ids)?;
    let mut reasons = c.reasons;
    for r in c2.reasons {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    Ok(ServiceData {
        op_rows,
        series,
        dist,
        sample,
        traces,
        reasons,
    })
}

/// Requests per second, their error rate and p99 per step (requests: entry spans, as
/// `/api/v1/red` counts them; each point divides by the seconds it covers).
fn over_time(series: &[RedPoint], step: u64, range: &Range) -> String {
    let rate: Vec<(u64, Option<f64>)> = series
        .iter()
        .map(|p| {
            (
                p.start_s,
                Some(p.requests as f64 / range.point_s(p.start_s, step)),
            )
        })
        .collect();
    let errs: Vec<(u64, Option<f64>)> = series
        .iter()
        .map(|p| {
            (
                p.start_s,
                (p.requests > 0).then(|| p.request_errors as f64 / p.requests as f64 * 100.0),
            )
        })
        .collect();
    let p99: Vec<(u64, Option<f64>)> = series.iter().map(|p| (p.start_s, p.p99_ms)).collect();
    let mut body = String::from("<section><h2>Over time</h2>");
    body.push_str("<div class=charts>");
    body.push_str(&time_chart(
        "chart-requests",
        "Requests per second",
        &rate,
        Unit::PerSecond,
    ));
    body.push_str(&time_chart(
        "chart-errors",
        "Error rate of requests",
        &errs,
        Unit::Percent,
    ));
    body.push_str(&time_chart(
        "chart-p99",
        "p99 latency (all spans)",
        &p99,
        Unit::Millis,
    ));
    body.push_str("</div>");
    body.push_str("</section>");
    body
}

/// The operations table, each linking to its search.
fn operations(
    name: &str,
    range: &Range,
    op_rows: &[(String, SpanKind, Option<RedPoint>)],
    total_secs: f64,
) -> String {
    let mut body = String::from(
        "<section><h2>Operations</h2><table id=operations><tr><th>Operation</th><th>Kind</th><th>Rate /s</th><th>Error rate</th><th>p50</th><th>p99</th></tr>",
    );
    for (op, kind, t) in op_rows {
        let t = t.as_ref();
        let count = t.map_or(0, |t| t.count);
        let errors = t.map_or(0, |t| t.errors);
        let _ = write!(
            body,
            "<tr><td><a href=\"/search?service={}&operation={}&lookback={}\">{}</a></td><td>{}</td><td class=num>{:.2}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            url(name),
            url(op),
            url(&range.text),
            esc(op),
            kind.as_str(),
            count as f64 / total_secs,
            if count == 0 {
                "-".into()
            } else {
                pct(errors as f64 / count as f64)
            },
            ms(t.and_then(|t| t.p50_ms)),
            ms(t.and_then(|t| t.p99_ms)),
        );
    }
    body.push_str("</table></section>");
    body
}

/// Look here first: representatives, error groups, outliers, contrasts.
fn look_here_first(d: &ServiceData, sample_n: usize) -> String {
    let (sample, traces) = (&d.sample, &d.traces);
    let mut body = String::from("<section id=look-here-first><h2>Look here first</h2>");
    let reps = insights::representatives(sample);
    if reps.is_empty() {
        body.push_str("<p class=muted>No traces in this range.</p>");
    } else {
        body.push_str("<h3>Representative traces</h3><table id=representatives>");
        for r in &reps {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.label,
                dur(r.summary.duration_ns()),
                trace_link(
                    &r.summary.trace_id,
                    &faultline_model::health::plural(r.summary.span_count, "span")
                )
            );
        }
        body.push_str("</table>");
    }
    body.push_str(&error_groups(traces));
    let outliers = insights::outliers(traces);
    let _ = write!(body, "<h3>Outliers ({})</h3>", outliers.len());
    if outliers.is_empty() {
        body.push_str("<p class=muted>Every trace read has its operation's usual shape.</p>");
    } else {
        body.push_str("<table id=outliers>");
        for o in outliers.iter().take(20) {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                trace_link(&o.trace_id, &hex(&o.trace_id[..8])),
                esc(&o.root),
                esc(&o.reason)
            );
        }
        body.push_str("</table>");
    }
    body.push_str(&contrast_section(traces));
    let _ = write!(
        body,
        "<p class=muted>From the {} newest traces of the range and up to {} failing ones ({} read; <code>sample=N</code> in the URL reads more).</p></section>",
        sample.len().min(sample_n),
        sample_n / 2,
        traces.len()
    );
    body
}

/// Failing traces grouped by the signature of their deepest error.
fn error_groups(traces: &[Vec<Span>]) -> String {
    let groups = insights::error_groups(traces);
    let mut body = format!("<h3>Errors by signature ({} groups)</h3>", groups.len());
    if groups.is_empty() {
        body.push_str("<p class=muted>No failing traces among those read.</p>");
    }
    for g in &groups {
        let s = &g.signature;
        let mut parts: Vec<String> = Vec::new();
        for p in [
            s.exception_type.clone(),
            s.exception_message.clone(),
            s.status_message.clone(),
            s.http_status.map(|h| format!("HTTP {h}")),
        ]
        .into_iter()
        .flatten()
        {
            if !parts.contains(&p) {
                parts.push(p);
            }
        }
        let title = parts.join(" · ");
        let _ = write!(
            body,
            "<details class=error-group><summary><b>{}</b> × {} <span class=muted>in {} {}</span></summary><p>Example: {}</p><p class=muted>Signature: service {}, operation {}{}{}{}{}</p></details>",
            if title.is_empty() {
                "error".into()
            } else {
                esc(&title)
            },
            g.count,
            esc(&s.service),
            esc(&s.operation),
            trace_link(&g.example, &hex(&g.example)),
            esc(&s.service),
            esc(&s.operation),
            s.exception_type
                .as_ref()
                .map(|e| format!(", exception {}", esc(e)))
                .unwrap_or_default(),
            s.exception_message
                .as_ref()
                .map(|e| format!(", message “{}”", esc(e)))
                .unwrap_or_default(),
            s.status_message
                .as_ref()
                .map(|e| format!(", status “{}”", esc(e)))
                .unwrap_or_default(),
            s.http_status
                .map(|h| format!(", HTTP {h}"))
                .unwrap_or_default(),
        );
    }
    body
}

/// What sets the slowest tenth and the failing traces apart, with both percentages.
fn contrast_section(traces: &[Vec<Span>]) -> String {
    let mut out = String::from("<h3>What sets slow and failing traces apart</h3>");
    if traces.len() < 10 {
        out.push_str("<p class=muted>Too few traces read to compare.</p>");
        return out;
    }
    let (slow, failing) = insights::slow_and_failing(traces);
    for (label, id, selected) in [
        ("slowest 10%", "contrast-slow", slow),
        ("failing", "contrast-errors", failing),
    ] {
        let findings = insights::contrast(&selected, traces, 8);
        let _ = write!(
            out,
            "<details open class=contrast id={id}><summary>In the {label} traces ({} of {})</summary>",
            selected.len(),
            traces.len()
        );
        if findings.is_empty() {
            out.push_str("<p class=muted>No attribute value stands out.</p>");
        } else {
            out.push_str(
                "<table><tr><th>Attribute</th><th>In these traces</th><th>In all traces</th></tr>",
            );
            for f in findings {
                let _ = write!(
                    out,
                    "<tr class=finding><td>{}={}</td><td class=num>{}</td><td class=num>{}</td></tr>",
                    esc(&f.key),
                    esc(&f.value),
                    pct(f.selected),
                    pct(f.baseline)
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</details>");
    }
    out
}

/// Bucket bounds of the latency histogram: 1-2-5 steps from 100 µs to 100 s, in ms.
fn histogram_bounds() -> Vec<f64> {
    let mut out = Vec::new();
    let mut e = 0.1f64;
    while e <= 100_000.0 {
        for m in [1.0, 2.0, 5.0] {
            out.push(e * m);
        }
        e *= 10.0;
    }
    out
}

/// The service's span latency distribution over the range (every span, from the rollups).
fn histogram(bounds: &[f64], counts: &[u64]) -> String {
    let mut out = String::from("<section><h2>Latency distribution</h2>");
    let total: u64 = counts.iter().sum();
    if total == 0 {
        out.push_str("<p class=muted>No spans in this range.</p></section>");
        return out;
    }
    let first = counts.iter().position(|&c| c > 0).unwrap_or(0);
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    let d = |ms: f64| dur((ms * 1e6) as u64);
    out.push_str("<table id=histogram>");
    for i in first..=last {
        let label = if i == 0 {
            format!("≤ {}", d(bounds[0]))
        } else if i == bounds.len() {
            format!("> {}", d(bounds[i - 1]))
        } else {
            format!("{} – {}", d(bounds[i - 1]), d(bounds[i]))
        };
        let _ = write!(
            out,
            "<tr><td class=num>{label}</td><td><span class=bar style=\"width:{}px\"></span> {} <span class=muted>({})</span></td></tr>",
            counts[i] * 300 / max,
            counts[i],
            pct(counts[i] as f64 / total as f64)
        );
    }
    let _ = write!(
        out,
        "</table><p class=muted>All {total} spans of the service in the range (bucket edges within 1%).</p></section>"
    );
    out
}
