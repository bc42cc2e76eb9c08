//! `/service/{name}`: the service's operations, RED over time, the latency distribution of
//! its requests, and "look here first" about the service itself: exemplar traces by its
//! request latency (`by=trace`: by whole-trace duration), its own errors grouped by
//! signature with the callee that caused them, outliers, and which attribute values of its
//! spans set slow and failing requests apart. "Look here first" reads three samples, each
//! a random sample spread over the whole range (search order `sample`): `sample=N` traces
//! of the service (default [`INSIGHT_TRACES`]), and a third as many where a span of the
//! service took at least its request p90, and where one failed; the slow and failing ones
//! are compared with the random one, never mixed into it. The data is gathered in one
//! blocking call ([`gather`]); the analysis is in `insights.rs`; each section is rendered
//! by its own function.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::params::get as param;
use faultline_api::{ApiError, ApiState};
use faultline_model::hex;
use faultline_model::span::{Span, SpanKind};
use faultline_store::{RedPoint, SortOrder, SpanStore, StoreError, TraceQuery};

use super::{Params, Range, blocking, read_traces, reasons, trace_link};
use crate::chart::{Unit, time_chart};
use crate::html::{dur, esc, ms, page as layout_page, pct, url};
use crate::insights::{self, By};

/// Traces of the random sample read for "look here first" by default (each costs about a
/// millisecond; the slow and failing samples add a third as many each); the page's
/// `sample` parameter changes it.
pub const INSIGHT_TRACES: usize = 60;
/// Most traces the `sample` parameter may ask for.
pub const MAX_SAMPLE: usize = 1000;

/// Everything the page shows, read in one blocking call.
struct ServiceData {
    /// Each operation with its kind and RED over the range.
    op_rows: Vec<(String, SpanKind, Option<RedPoint>)>,
    /// RED per step.
    series: Vec<RedPoint>,
    /// Request counts per histogram bucket.
    dist: Vec<u64>,
    /// RED over the whole range (request latency quantiles for the exemplars).
    total: RedPoint,
    /// Every trace read, once.
    traces: Vec<Vec<Span>>,
    /// The samples, as indexes into `traces`.
    samples: Samples,
    /// Why the data may be partial.
    reasons: Vec<String>,
}

/// The three samples of "look here first" (indexes into [`ServiceData::traces`]).
#[derive(Default)]
struct Samples {
    /// Random traces of the service over the range.
    random: Vec<usize>,
    /// Random traces where a span of the service took at least `slow_ns`.
    slow: Vec<usize>,
    /// Random traces where a span of the service failed.
    failing: Vec<usize>,
    /// What made a trace slow: the service's request p90 (or its spans' p90).
    slow_ns: Option<u64>,
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
    let by = match param(&p, "by") {
        None | Some("request") => By::Request,
        Some("trace") => By::Trace,
        Some(v) => {
            return Err(ApiError::bad_parameter(
                "by",
                format!("by={v:?} must be request (the service's own latency) or trace"),
            ));
        }
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
    body.push_str(&look_here_first(&data, &name, &range, by));
    Ok(Html(layout_page(
        &format!("Service {name}"),
        &reasons(&st, data.reasons),
        range.refresh,
        &body,
    ))
    .into_response())
}

/// Reads the operations, RED, the histogram and the three samples of traces.
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
    let (total, _) = store.red_total(svc, None, None, start, end)?;
    let (dist, _) = store.latency_distribution(svc, None, start, end, &histogram_bounds())?;
    let slow_ns = total
        .request_ms
        .map(|r| r[1])
        .or(total.p90_ms)
        .map(|ms| (ms * 1e6) as u64);
    let base = TraceQuery {
        service: Some(svc.to_string()),
        start_ns,
        end_ns,
        limit: sample_n,
        sort: SortOrder::Sample,
        time_limit: Some(std::time::Duration::from_secs(5)),
        ..TraceQuery::default()
    };
    let apart = (sample_n / 3).max(1);
    let slow_q = slow_ns.map(|ns| TraceQuery {
        min_duration_ns: Some(ns),
        limit: apart,
        ..base.clone()
    });
    let failing_q = TraceQuery {
        tags: vec![("error".into(), "true".into())],
        limit: apart,
        ..base.clone()
    };
    // The three searches each scan the range's index; side by side they take the time of
    // the longest instead of the sum.
    type Found = (
        Vec<faultline_store::TraceSummary>,
        faultline_store::Completeness,
    );
    let (random, slow, failing) = std::thread::scope(|scope| {
        let slow = scope.spawn(|| -> Result<Found, StoreError> {
            match &slow_q {
                Some(q) => store.search(q),
                None => Ok(Default::default()),
            }
        });
        let failing = scope.spawn(|| store.search(&failing_q));
        let random = store.search(&base);
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Found, StoreError>>| {
            h.join().unwrap_or_else(|_| {
                Err(StoreError::Encode(
                    "a thread searching for the service page panicked".into(),
                ))
            })
        };
        (random, join(slow), join(failing))
    });
    let ((random, c1), (slow, c2), (failing, c3)) = (random?, slow?, failing?);
    // Read each trace once, whichever samples it is in.
    let mut ids = Vec::new();
    let mut at: HashMap<_, usize> = HashMap::new();
    let mut index = |found: &[faultline_store::TraceSummary]| -> Vec<usize> {
        found
            .iter()
            .map(|f| {
                *at.entry(f.trace_id).or_insert_with(|| {
                    ids.push(f.trace_id);
                    ids.len() - 1
                })
            })
            .collect()
    };
    let (random, slow, failing) = (index(&random), index(&slow), index(&failing));
    let read = read_traces(store, &ids)?;
    // A trace may have gone (retention) between search and read: map the ids that remain.
    let pos: HashMap<_, usize> = read
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.first().map(|s| (s.trace_id, i)))
        .collect();
    let remap = |v: Vec<usize>| -> Vec<usize> {
        v.into_iter()
            .filter_map(|i| pos.get(&ids[i]).copied())
            .collect()
    };
    let samples = Samples {
        random: remap(random),
        slow: remap(slow),
        failing: remap(failing),
        slow_ns,
    };
    let mut reasons = c.reasons;
    for r in c1.reasons.into_iter().chain(c2.reasons).chain(c3.reasons) {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    Ok(ServiceData {
        op_rows,
        series,
        dist,
        total,
        traces: read,
        samples,
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
    // Request latency when the service has entry operations; else every span's.
    let has_requests = series.iter().any(|p| p.request_ms.is_some());
    let p99: Vec<(u64, Option<f64>)> = series
        .iter()
        .map(|p| {
            let v = if has_requests {
                p.request_ms.map(|r| r[2])
            } else {
                p.p99_ms
            };
            (p.start_s, v)
        })
        .collect();
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
        if has_requests {
            "p99 request latency"
        } else {
            "p99 latency (all spans: no requests)"
        },
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

/// Look here first: exemplars, the service's own error groups, outliers, contrasts.
fn look_here_first(d: &ServiceData, svc: &str, range: &Range, by: By) -> String {
    let sm = &d.samples;
    let pick = |v: &[usize]| -> Vec<&Vec<Span>> { v.iter().map(|&i| &d.traces[i]).collect() };
    let (random, slow, failing) = (pick(&sm.random), pick(&sm.slow), pick(&sm.failing));
    let mut body = String::from("<section id=look-here-first><h2>Look here first</h2>");
    body.push_str(&exemplars(d, svc, range, by));
    body.push_str(&error_groups(&failing, svc, range));
    let outliers = insights::outliers(&random);
    let _ = write!(body, "<h3>Outliers ({})</h3>", outliers.len());
    if outliers.is_empty() {
        body.push_str(
            "<p class=muted>Every trace of the random sample has its operation's usual shape.</p>",
        );
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
    body.push_str(&contrast_section(
        svc, range, &random, &slow, &failing, sm.slow_ns,
    ));
    let _ = write!(
        body,
        "<p class=muted id=samples>Read: a random sample of {} of the service's traces spread over the range, {} where a span of {} took at least {} (its request p90), and {} where one failed ({} traces in all; <code>sample=N</code> in the URL reads more).</p></section>",
        random.len(),
        slow.len(),
        esc(svc),
        sm.slow_ns.map_or_else(|| "-".to_string(), dur),
        failing.len(),
        d.traces.len()
    );
    body
}

/// Traces near the service's request p50, p90 and p99 (or the whole traces' quantiles with
/// `by=trace`), and the slowest read, with a switch between the two measures.
fn exemplars(d: &ServiceData, svc: &str, range: &Range, by: By) -> String {
    let sm = &d.samples;
    let requests: Vec<Option<u64>> = d
        .traces
        .iter()
        .map(|t| insights::request_duration(t, svc))
        .collect();
    let wholes: Vec<Option<u64>> = d
        .traces
        .iter()
        .map(|t| Some(insights::trace_duration(t)))
        .collect();
    let from_random = |v: &[Option<u64>]| {
        let known: Vec<u64> = sm.random.iter().filter_map(|&i| v[i]).collect();
        insights::quantiles(&known)
    };
    let (durations, targets, measure) = match by {
        By::Request => {
            let targets = match d.total.request_ms {
                Some(r) => r.map(|ms| Some((ms * 1e6) as u64)),
                None => from_random(&requests),
            };
            (&requests, targets, "request latency")
        }
        By::Trace => (&wholes, from_random(&wholes), "whole-trace duration"),
    };
    let base = format!("/service/{}?range={}", url(svc), url(&range.text));
    let mut body = format!(
        "<h3>Exemplar traces</h3><p class=muted>Chosen by the service's {measure}: {}.</p>",
        match by {
            By::Request => format!(
                "p50, p90 and p99 of all its requests in the range; <a id=by-trace href=\"{base}&by=trace\">choose by whole-trace duration</a>"
            ),
            By::Trace => format!(
                "quantiles of the random sample; <a id=by-request href=\"{base}\">choose by the service's request latency</a>"
            ),
        }
    );
    let picked = insights::exemplars(durations, targets);
    if picked.is_empty() {
        body.push_str("<p class=muted>No traces in this range.</p>");
        return body;
    }
    body.push_str("<table id=exemplars><tr><th></th><th>Target</th><th>Request</th><th>Trace</th><th></th></tr>");
    for e in &picked {
        let t = &d.traces[e.index];
        let Some(first) = t.first() else { continue };
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td></tr>",
            e.label,
            e.target_ns.map_or_else(|| "-".to_string(), dur),
            requests[e.index].map_or_else(|| "-".to_string(), dur),
            dur(insights::trace_duration(t)),
            trace_link(
                &first.trace_id,
                &faultline_model::health::plural(t.len() as u64, "span")
            )
        );
    }
    body.push_str("</table>");
    body
}

/// The service's own errors in the failing sample, grouped by signature, with the callee
/// whose error it passed on.
fn error_groups(failing: &[&Vec<Span>], svc: &str, range: &Range) -> String {
    let groups = insights::error_groups(failing, Some(svc));
    let mut body = format!(
        "<h3>Errors of {} by signature ({})</h3>",
        esc(svc),
        faultline_model::health::plural(groups.len() as u64, "group")
    );
    if groups.is_empty() {
        body.push_str("<p class=muted>No span of this service failed in the range.</p>");
        return body;
    }
    let _ = write!(
        body,
        "<p class=muted>Counts are of the {} sampled traces where a span of {} failed; <a href=\"/search?service={}&tags=error%3Dtrue&lookback={}\">search them all</a>.</p>",
        failing.len(),
        esc(svc),
        url(svc),
        url(&range.text)
    );
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
        let title = if parts.is_empty() {
            "error".to_string()
        } else {
            parts.join(" · ")
        };
        let _ = write!(
            body,
            "<details class=error-group><summary><b>{}</b> × {} <span class=muted>in {}</span>{}</summary><p>Example: {}</p></details>",
            esc(&title),
            g.count,
            esc(&s.operation),
            s.cause
                .as_ref()
                .map(|c| format!(" <span class=cause>caused by {}</span>", esc(c)))
                .unwrap_or_default(),
            trace_link(&g.example, &hex(&g.example)),
        );
    }
    body
}

/// Which attribute values of the service's spans set the slow and the failing samples
/// apart from the random one, with both percentages and a search for each.
fn contrast_section(
    svc: &str,
    range: &Range,
    random: &[&Vec<Span>],
    slow: &[&Vec<Span>],
    failing: &[&Vec<Span>],
    slow_ns: Option<u64>,
) -> String {
    let mut out = String::from("<h3>What sets slow and failing requests apart</h3>");
    if random.len() < 10 {
        out.push_str("<p class=muted>Too few traces in the range to compare.</p>");
        return out;
    }
    let slow_label = format!(
        "slow (a span of {} ≥ {})",
        esc(svc),
        slow_ns.map_or_else(|| "-".to_string(), dur)
    );
    let fail_label = format!("failing (a span of {} failed)", esc(svc));
    // Each finding links to a search for it among the same kind of traces.
    for (label, id, selected, also_tag, min_duration) in [
        (
            slow_label,
            "contrast-slow",
            slow,
            false,
            slow_ns.map(|ns| format!("&minDuration={}us", ns / 1000)),
        ),
        (fail_label, "contrast-errors", failing, true, None),
    ] {
        let findings = insights::contrast(selected, random, svc, 8);
        let _ = write!(
            out,
            "<details open class=contrast id={id}><summary>In {} sampled {label} traces, against {} random ones</summary>",
            selected.len(),
            random.len()
        );
        if findings.is_empty() {
            out.push_str(
                "<p class=muted>No attribute value of this service's spans stands out.</p>",
            );
        } else {
            out.push_str(
                "<table><tr><th>Attribute</th><th>In these</th><th>In the random sample</th></tr>",
            );
            for f in findings {
                let _ = write!(
                    out,
                    "<tr class=finding><td><a href=\"/search?service={}&tags={}{}&lookback={}\">{}={}</a></td><td class=num>{}</td><td class=num>{}</td></tr>",
                    url(svc),
                    url(&search_tags(&f.key, &f.value, also_tag)),
                    min_duration.as_deref().unwrap_or(""),
                    url(&range.text),
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

/// A `tags` search parameter for `key=value` (and `error=true`), as JSON so that values
/// with spaces survive.
fn search_tags(key: &str, value: &str, error: bool) -> String {
    let mut m = serde_json::Map::new();
    m.insert(key.to_string(), value.into());
    if error {
        m.insert("error".into(), "true".into());
    }
    serde_json::Value::Object(m).to_string()
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

/// The service's request latency distribution over the range (its all-entry operations,
/// from the rollups).
fn histogram(bounds: &[f64], counts: &[u64]) -> String {
    let mut out = String::from("<section><h2>Latency distribution</h2>");
    let total: u64 = counts.iter().sum();
    if total == 0 {
        out.push_str("<p class=muted>No requests in this range.</p></section>");
        return out;
    }
    out.push_str(&crate::chart::histogram(
        "histogram",
        "Requests by duration",
        bounds,
        counts,
        "request",
    ));
    let _ = write!(
        out,
        "<p class=muted>All {total} requests of the service in the range: the spans of its SERVER and CONSUMER operations and of operations seen only as roots (bucket edges within 1%).</p></section>"
    );
    out
}
