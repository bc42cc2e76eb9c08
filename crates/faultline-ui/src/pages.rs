//! The pages: `/` (services), `/service/{name}`, `/search`, `/trace/{id}`,
//! `/dependencies`, and the small script they share (`/ui.js`). Every page is rendered on
//! the server from the [`faultline_store::SpanStore`]; its URL carries all its parameters
//! (time range as `range=1h`, `refresh=30` to reload every 30 s, sort order, filters), so a
//! view can be bookmarked and shared. Pages whose data may be incomplete say so in a banner.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use faultline_api::ApiState;
use faultline_api::params::{get as param, now_ns, parse_go_duration, parse_tags};
use faultline_model::hex;
use faultline_model::span::{Span, SpanId};
use faultline_store::{SortOrder, SpanStore, StoreError, TraceQuery, TraceSummary};

use crate::html::{chart, dur, esc, ms, page, pct, sparkline, url};
use crate::insights;

/// Traces read for "look here first" by default (each costs about a millisecond); the
/// page's `sample` parameter changes it.
pub const INSIGHT_TRACES: usize = 60;
/// Most traces the `sample` parameter may ask for.
pub const MAX_SAMPLE: usize = 1000;

/// The UI routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(services))
        .route("/service/{name}", get(service))
        .route("/search", get(search))
        .route("/trace/{id}", get(trace))
        .route("/dependencies", get(dependencies))
        .route("/status", get(status))
        .route("/ui.js", get(script))
}

type Params = Query<Vec<(String, String)>>;

/// Runs store work off the async executor; a failure is an error page.
async fn blocking<T: Send + 'static>(
    st: &ApiState,
    f: impl FnOnce(&dyn SpanStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    faultline_api::query(st, f)
        .await
        .map_err(|msg| error_page(StatusCode::INTERNAL_SERVER_ERROR, &msg))
}

fn error_page(status: StatusCode, msg: &str) -> Response {
    (
        status,
        Html(page(
            "Error",
            &[],
            None,
            &format!("<p class=err>{}</p>", esc(msg)),
        )),
    )
        .into_response()
}

/// The time range of a page: `range` (Go duration, default 1h) ending now.
struct Range {
    text: String,
    start_ns: u64,
    end_ns: u64,
    refresh: Option<u64>,
}

impl Range {
    fn parse(p: &[(String, String)]) -> Result<Self, String> {
        let text = param(p, "range").unwrap_or("1h").to_string();
        let len = parse_go_duration(&text).map_err(|e| format!("range: {e}"))?;
        if len < 60_000_000_000 {
            return Err("range must be at least 1m".into());
        }
        let refresh = match param(p, "refresh") {
            Some(r) => Some(
                r.parse::<u64>()
                    .map_err(|_| format!("refresh={r:?} is not a number of seconds"))?,
            ),
            None => None,
        };
        let end_ns = now_ns();
        Ok(Self {
            text,
            start_ns: end_ns.saturating_sub(len),
            end_ns,
            refresh,
        })
    }

    fn start_s(&self) -> u64 {
        self.start_ns / 1_000_000_000 / 60 * 60
    }

    fn end_s(&self) -> u64 {
        (self.end_ns / 1_000_000_000).div_ceil(60) * 60 + 60
    }

    /// A step giving at most 60 points.
    fn step_s(&self) -> u64 {
        ((self.end_s() - self.start_s()) / 60).div_ceil(60).max(1) * 60
    }

    /// The query string that keeps this range.
    fn qs(&self) -> String {
        match self.refresh {
            Some(r) => format!("range={}&refresh={r}", url(&self.text)),
            None => format!("range={}", url(&self.text)),
        }
    }

    fn picker(&self, path: &str, extra: &str) -> String {
        let mut out = String::from("<p>Range: ");
        for r in ["15m", "1h", "6h", "24h", "7d"] {
            let label = if r == "7d" { "7 days" } else { r };
            let r_go = if r == "7d" { "168h" } else { r };
            if self.text == r_go {
                let _ = write!(out, "<b>{label}</b> ");
            } else {
                let _ = write!(out, "<a href=\"{path}?range={r_go}{extra}\">{label}</a> ");
            }
        }
        let _ = write!(
            out,
            "· auto-refresh: <a href=\"{path}?range={}&refresh=30{extra}\">30 s</a> <a href=\"{path}?range={}{extra}\">off</a></p>",
            url(&self.text),
            url(&self.text)
        );
        out
    }
}

fn reasons(st: &ApiState, mut r: Vec<String>) -> Vec<String> {
    r.extend((st.lag)(None));
    r
}

/// `/`: every service with rate, error rate, p50 and p99 over the range, and a chart.
async fn services(State(st): State<ApiState>, Query(p): Params) -> Response {
    let range = match Range::parse(&p) {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let sort = param(&p, "sort").unwrap_or("name").to_string();
    let (start, end, step) = (range.start_s(), range.end_s(), range.step_s());
    let rows = blocking(&st, move |store| {
        let (names, c) = store.services()?;
        let mut rows = Vec::new();
        for s in names {
            let (total, _) = store.red_total(&s, None, None, start, end)?;
            let (series, _) = store.red(&s, None, None, start, end, step)?;
            rows.push((s, Some(total), series));
        }
        Ok((rows, c))
    })
    .await;
    let (mut rows, c) = match rows {
        Ok(v) => v,
        Err(r) => return r,
    };
    let secs = (end - start) as f64;
    let key = |r: &(String, Option<faultline_store::RedPoint>, _)| -> f64 {
        let t = r.1.as_ref();
        match sort.as_str() {
            "rate" => -(t.map_or(0, |t| t.count) as f64),
            "errors" => -t.map_or(0.0, |t| {
                if t.count == 0 {
                    0.0
                } else {
                    t.errors as f64 / t.count as f64
                }
            }),
            "p50" => -t.and_then(|t| t.p50_ms).unwrap_or(0.0),
            "p99" => -t.and_then(|t| t.p99_ms).unwrap_or(0.0),
            _ => 0.0,
        }
    };
    rows.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.0.cmp(&b.0)));
    let qs = range.qs();
    let mut body = range.picker("/", &format!("&sort={}", url(&sort)));
    body.push_str("<table id=services><tr>");
    for (k, label) in [
        ("name", "Service"),
        ("rate", "Rate /s"),
        ("errors", "Error rate"),
        ("p50", "p50"),
        ("p99", "p99"),
    ] {
        let _ = write!(body, "<th><a href=\"/?{qs}&sort={k}\">{label}</a></th>");
    }
    body.push_str("<th>p99 over time</th><th>requests over time</th></tr>");
    for (name, total, series) in &rows {
        let t = total.as_ref();
        let count = t.map_or(0, |t| t.count);
        let errors = t.map_or(0, |t| t.errors);
        let p99s: Vec<Option<f64>> = series.iter().map(|p| p.p99_ms).collect();
        let counts: Vec<Option<f64>> = series.iter().map(|p| Some(p.count as f64)).collect();
        let _ = write!(
            body,
            "<tr class=service-row><td><a href=\"/service/{}?{qs}\">{}</a></td><td class=num>{:.2}</td><td class=\"num{}\">{}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td><td>{}</td></tr>",
            url(name),
            esc(name),
            count as f64 / secs,
            if errors > 0 { " err" } else { "" },
            if count == 0 {
                "-".into()
            } else {
                pct(errors as f64 / count as f64)
            },
            ms(t.and_then(|t| t.p50_ms)),
            ms(t.and_then(|t| t.p99_ms)),
            sparkline(&p99s, 160, 24, "#e08a1e"),
            sparkline(&counts, 160, 24, "#2f6fb5"),
        );
    }
    body.push_str("</table>");
    if rows.is_empty() {
        body.push_str("<p class=muted>No services yet: send spans over OTLP or Zipkin.</p>");
    }
    Html(page(
        "Services",
        &reasons(&st, c.reasons),
        range.refresh,
        &body,
    ))
    .into_response()
}

/// The spans of several traces (empty ones left out), in the order asked, read by up to
/// as many threads as the machine has cores (at most 4): each read decodes its own pages.
fn read_traces(
    store: &dyn SpanStore,
    ids: &[faultline_model::span::TraceId],
) -> Result<Vec<Vec<Span>>, StoreError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    let chunk = ids.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Vec<Span>>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut out = Vec::with_capacity(part.len());
                    for id in part {
                        let a = store.trace(id)?;
                        if !a.spans.is_empty() {
                            out.push(a.spans);
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StoreError::Encode(
                        "a thread reading traces for the page panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(ids.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

fn trace_link(id: &faultline_model::span::TraceId, text: &str) -> String {
    format!(
        "<a class=trace-link href=\"/trace/{}\">{}</a>",
        hex(id),
        esc(text)
    )
}

fn summary_row(s: &TraceSummary, max_ns: u64) -> String {
    let width = if max_ns == 0 {
        0.0
    } else {
        s.duration_ns() as f64 / max_ns as f64 * 200.0
    };
    let root = format!(
        "{} {}",
        s.root_service.as_deref().unwrap_or("(missing root)"),
        s.root_name.as_deref().unwrap_or("")
    );
    format!(
        "<tr class=result><td>{}</td><td><span class=\"bar{}\" style=\"width:{width:.0}px\"></span> {}</td><td class=num>{}</td><td class=\"num{}\">{}</td><td>{}</td><td class=muted>{}</td></tr>",
        trace_link(&s.trace_id, &root),
        if s.error_count > 0 { " errbar" } else { "" },
        dur(s.duration_ns()),
        s.span_count,
        if s.error_count > 0 { " err" } else { "" },
        s.error_count,
        esc(&s.services.join(", ")),
        hex(&s.trace_id[..8]),
    )
}

const RESULT_HEAD: &str = "<tr><th>Root</th><th>Duration</th><th>Spans</th><th>Errors</th><th>Services</th><th>Trace</th></tr>";

/// `/service/{name}`: operations, RED over time, latency histogram, and look here first.
async fn service(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    Query(p): Params,
) -> Response {
    let range = match Range::parse(&p) {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let (start, end, step) = (range.start_s(), range.end_s(), range.step_s());
    let (start_ns, end_ns) = (range.start_ns, range.end_ns);
    let sample_n = match param(&p, "sample") {
        None => INSIGHT_TRACES,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (10..=MAX_SAMPLE).contains(&n) => n,
            _ => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("sample={v:?} must be a number of traces from 10 to {MAX_SAMPLE}"),
                );
            }
        },
    };
    let svc = name.clone();
    let data = blocking(&st, move |store| {
        let (ops, c) = store.operations(&svc)?;
        let mut op_rows = Vec::new();
        for (op, kind) in &ops {
            let (t, _) = store.red_total(&svc, Some(op), Some(*kind), start, end)?;
            op_rows.push((op.clone(), *kind, Some(t)));
        }
        let (series, _) = store.red(&svc, None, None, start, end, step)?;
        let (dist, _) = store.latency_distribution(&svc, None, start, end, &histogram_bounds())?;
        let base = TraceQuery {
            service: Some(svc.clone()),
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
        Ok((op_rows, series, dist, sample, traces, reasons))
    })
    .await;
    let (op_rows, series, dist, sample, traces, partial) = match data {
        Ok(v) => v,
        Err(r) => return r,
    };
    let qs = range.qs();
    let mut body = range.picker(&format!("/service/{}", url(&name)), "");
    let _ = write!(
        body,
        "<p><a href=\"/search?service={}&lookback={}\">Search this service's traces</a></p>",
        url(&name),
        url(&range.text)
    );
    // RED over time.
    body.push_str("<section><h2>Over time</h2>");
    let secs = step as f64;
    let rate: Vec<(u64, Option<f64>)> = series
        .iter()
        .map(|p| (p.start_s, Some(p.count as f64 / secs)))
        .collect();
    let errs: Vec<(u64, Option<f64>)> = series
        .iter()
        .map(|p| {
            (
                p.start_s,
                (p.count > 0).then(|| p.errors as f64 / p.count as f64 * 100.0),
            )
        })
        .collect();
    let p99: Vec<(u64, Option<f64>)> = series.iter().map(|p| (p.start_s, p.p99_ms)).collect();
    body.push_str(&chart("Requests per second", &rate, "/s"));
    body.push_str(&chart("Error rate", &errs, "%"));
    body.push_str(&chart("p99 latency", &p99, "ms"));
    body.push_str("</section>");
    // Operations.
    body.push_str("<section><h2>Operations</h2><table id=operations><tr><th>Operation</th><th>Kind</th><th>Rate /s</th><th>Error rate</th><th>p50</th><th>p99</th></tr>");
    let total_secs = (end - start) as f64;
    for (op, kind, t) in &op_rows {
        let t = t.as_ref();
        let count = t.map_or(0, |t| t.count);
        let errors = t.map_or(0, |t| t.errors);
        let _ = write!(
            body,
            "<tr><td><a href=\"/search?service={}&operation={}&lookback={}\">{}</a></td><td>{}</td><td class=num>{:.2}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            url(&name),
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
    // Latency histogram of every span of the service.
    body.push_str(&histogram(&histogram_bounds(), &dist));
    // Look here first.
    body.push_str("<section id=look-here-first><h2>Look here first</h2>");
    let reps = insights::representatives(&sample);
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
                    &format!("{} spans", r.summary.span_count)
                )
            );
        }
        body.push_str("</table>");
    }
    let groups = insights::error_groups(&traces);
    let _ = write!(
        body,
        "<h3>Errors by signature ({} groups)</h3>",
        groups.len()
    );
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
    let outliers = insights::outliers(&traces);
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
    body.push_str(&contrast_section(&traces));
    let _ = write!(
        body,
        "<p class=muted>From the {} newest traces of the range and up to {} failing ones ({} read; <code>sample=N</code> in the URL reads more).</p></section>",
        sample.len().min(sample_n),
        sample_n / 2,
        traces.len()
    );
    let _ = qs;
    Html(page(
        &format!("Service {name}"),
        &reasons(&st, partial),
        range.refresh,
        &body,
    ))
    .into_response()
}

fn trace_duration(t: &[Span]) -> u64 {
    let start = t.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = t
        .iter()
        .map(|s| s.end_ns.max(s.start_ns))
        .max()
        .unwrap_or(0);
    end.saturating_sub(start)
}

/// What sets the slowest tenth and the failing traces apart, with both percentages.
fn contrast_section(traces: &[Vec<Span>]) -> String {
    let mut out = String::from("<h3>What sets slow and failing traces apart</h3>");
    if traces.len() < 10 {
        out.push_str("<p class=muted>Too few traces read to compare.</p>");
        return out;
    }
    let mut by_dur: Vec<&Vec<Span>> = traces.iter().collect();
    by_dur.sort_by_key(|t| std::cmp::Reverse(trace_duration(t)));
    let slow: Vec<&Vec<Span>> = by_dur[..traces.len().div_ceil(10)].to_vec();
    let failing: Vec<&Vec<Span>> = traces
        .iter()
        .filter(|t| t.iter().any(Span::is_error))
        .collect();
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

/// `/search`: the form, the results as a list, and duration over time as a scatter plot.
async fn search(State(st): State<ApiState>, Query(p): Params) -> Response {
    let services = match blocking(&st, |store| store.services()).await {
        Ok((s, _)) => s,
        Err(r) => return r,
    };
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
        return Html(page("Search", &[], None, &body)).into_response();
    }
    // `tags` as Jaeger's JSON, or space-separated key=value pairs.
    let mut pairs: Vec<(String, String)> = p.clone();
    if let Some(t) = param(&p, "tags").filter(|t| !t.trim_start().starts_with('{')) {
        pairs.retain(|(k, _)| k != "tags");
        for kv in t.split_whitespace() {
            match kv.split_once('=') {
                Some((k, v)) => pairs.push(("tag".into(), format!("{k}:{v}"))),
                None => {
                    return error_page(
                        StatusCode::BAD_REQUEST,
                        &format!("tags: {kv:?} is not key=value"),
                    );
                }
            }
        }
    }
    let q = match parse_query(&pairs) {
        Ok(q) => q,
        Err(e) => {
            body.push_str(&format!("<p class=err>{}</p>", esc(&e)));
            return (
                StatusCode::BAD_REQUEST,
                Html(page("Search", &[], None, &body)),
            )
                .into_response();
        }
    };
    let found = blocking(&st, move |store| store.search(&q)).await;
    let (found, c) = match found {
        Ok(v) => v,
        Err(r) => return r,
    };
    let _ = write!(body, "<p>{} traces</p>", found.len());
    body.push_str(&scatter(&found));
    let max = found
        .iter()
        .map(TraceSummary::duration_ns)
        .max()
        .unwrap_or(0);
    let _ = write!(body, "<table id=results>{RESULT_HEAD}");
    for s in &found {
        body.push_str(&summary_row(s, max));
    }
    body.push_str("</table>");
    Html(page("Search", &reasons(&st, c.reasons), None, &body)).into_response()
}

fn parse_query(p: &[(String, String)]) -> Result<TraceQuery, String> {
    let end_ns = now_ns();
    let lookback = param(p, "lookback").unwrap_or("1h");
    let start_ns =
        end_ns.saturating_sub(parse_go_duration(lookback).map_err(|e| format!("lookback: {e}"))?);
    let (min_duration_ns, max_duration_ns) =
        faultline_api::params::duration_bounds(p, "minDuration", "maxDuration")?;
    let limit = match param(p, "limit") {
        None => 20,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| format!("limit={v:?} must be 1 to 1000"))?,
    };
    Ok(TraceQuery {
        service: param(p, "service").map(str::to_string),
        operation: param(p, "operation").map(str::to_string),
        tags: parse_tags(p)?,
        min_duration_ns,
        max_duration_ns,
        start_ns,
        end_ns,
        errors_only: false,
        sort: SortOrder::Newest,
        limit,
        time_limit: Some(faultline_api::params::timeout(p)?),
    })
}

/// Duration over start time; each point opens its trace.
fn scatter(found: &[TraceSummary]) -> String {
    if found.is_empty() {
        return String::new();
    }
    let (w, h) = (720.0, 160.0);
    let t0 = found.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let t1 = found
        .iter()
        .map(|s| s.start_ns)
        .max()
        .unwrap_or(0)
        .max(t0 + 1);
    let dmax = found
        .iter()
        .map(TraceSummary::duration_ns)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut out = format!(
        "<svg id=scatter width={w} height={h} style=\"background:#fff;border:1px solid #ddd\">"
    );
    for s in found {
        let x = 6.0 + (s.start_ns - t0) as f64 / (t1 - t0) as f64 * (w - 12.0);
        let y = h - 6.0 - s.duration_ns() as f64 / dmax as f64 * (h - 12.0);
        let _ = write!(
            out,
            "<a href=\"/trace/{}\"><circle class=point cx={x:.1} cy={y:.1} r=5 fill=\"{}\"><title>{}</title></circle></a>",
            hex(&s.trace_id),
            if s.error_count > 0 {
                "#d9534f"
            } else {
                "#2f6fb5"
            },
            esc(&format!(
                "{} {}",
                dur(s.duration_ns()),
                s.root_name.as_deref().unwrap_or("")
            ))
        );
    }
    let _ = write!(
        out,
        "</svg><p class=muted>Duration (up to {}) over start time; click a point to open its trace.</p>",
        dur(dmax)
    );
    out
}

/// Spans of the critical path: from each root, repeatedly the child that ends last.
fn critical_path(
    spans: &[Span],
    children: &HashMap<SpanId, Vec<usize>>,
    roots: &[usize],
) -> HashSet<SpanId> {
    let mut out = HashSet::new();
    let Some(&root) = roots.iter().max_by_key(|&&i| spans[i].end_ns) else {
        return out;
    };
    let mut cur = root;
    loop {
        out.insert(spans[cur].span_id);
        match children
            .get(&spans[cur].span_id)
            .and_then(|c| c.iter().copied().max_by_key(|&i| spans[i].end_ns))
        {
            Some(next) if !out.contains(&spans[next].span_id) => cur = next,
            _ => break,
        }
    }
    out
}

/// `/trace/{id}`: the waterfall.
async fn trace(State(st): State<ApiState>, Path(id): Path<String>) -> Response {
    let trace_id = match faultline_api::jaeger::parse_trace_id(&id) {
        Ok(t) => t,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let answer = match blocking(&st, move |store| store.trace(&trace_id)).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let partial = reasons(&st, answer.completeness.reasons);
    let spans = answer.spans;
    if spans.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Html(page(
                "Trace not found",
                &partial,
                None,
                &format!("<p>No spans of trace {} are stored.</p>", esc(&id)),
            )),
        )
            .into_response();
    }
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id {
            Some(p) if ids.contains(&p) => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.end_ns.max(s.start_ns))
        .max()
        .unwrap_or(t0)
        .max(t0 + 1);
    let critical = critical_path(&spans, &children, &roots);
    let summary = TraceSummary::of(&spans);
    let mut body = String::new();
    if let Some(s) = &summary {
        let _ = write!(
            body,
            "<p>{} spans · {} services · {} · {} errors{} · <a href=\"/api/v3/traces/{}\">raw OTLP JSON</a></p>",
            s.span_count,
            s.services.len(),
            dur(s.duration_ns()),
            s.error_count,
            if s.orphan_count > 0 {
                format!(
                    " · <span class=err>{} spans whose parent is missing</span>",
                    s.orphan_count
                )
            } else {
                String::new()
            },
            hex(&trace_id)
        );
    }
    body.push_str("<p><input id=trace-filter placeholder=\"Find in trace (service, operation, attribute)\" size=40> <span class=muted>Critical path in orange; click a span for details.</span></p>");
    body.push_str("<table class=wf id=waterfall>");
    // Depth-first, children by start time.
    let mut stack: Vec<(usize, usize, Option<SpanId>)> =
        roots.iter().rev().map(|&i| (i, 0, None)).collect();
    let mut seen = HashSet::new();
    while let Some((i, depth, parent)) = stack.pop() {
        let s = &spans[i];
        if !seen.insert(s.span_id) {
            continue;
        }
        let kids = children.get(&s.span_id).cloned().unwrap_or_default();
        let mut kids_sorted = kids.clone();
        kids_sorted.sort_by_key(|&k| std::cmp::Reverse(spans[k].start_ns));
        for k in kids_sorted {
            stack.push((k, depth + 1, Some(s.span_id)));
        }
        let left = (s.start_ns - t0) as f64 / (t1 - t0) as f64 * 100.0;
        let width = (s.duration_ns() as f64 / (t1 - t0) as f64 * 100.0).max(0.2);
        let orphan = s.parent_span_id.is_some() && parent.is_none();
        let mut class = String::from("span-row");
        if critical.contains(&s.span_id) {
            class.push_str(" critical");
        }
        if s.is_error() {
            class.push_str(" errspan");
        }
        let search_text = {
            let mut t = format!("{} {} ", s.service(), s.name);
            for (k, v) in &s.attributes {
                let _ = write!(t, "{k}={} ", v.to_text());
            }
            t.to_lowercase()
        };
        let _ = write!(
            body,
            "<tr class=\"{class}\" data-span=\"{}\" data-parent=\"{}\" data-text=\"{}\"><td style=\"padding-left:{}px;white-space:nowrap\"><span class=toggle>{}</span><b>{}</b> {}{}</td><td class=num>{}</td><td class=lane><div class=span style=\"left:{left:.2}%;width:{width:.2}%\"></div></td></tr>",
            hex(&s.span_id),
            parent.map(|p| hex(&p)).unwrap_or_default(),
            esc(&search_text),
            depth * 16,
            if kids.is_empty() { "" } else { "▾" },
            esc(s.service()),
            esc(&s.name),
            if orphan {
                " <span class=orphan>(parent missing)</span>"
            } else {
                ""
            },
            dur(s.duration_ns()),
        );
        let _ = write!(
            body,
            "<tr class=\"detail hidden\" data-detail-of=\"{}\"><td colspan=3>{}</td></tr>",
            hex(&s.span_id),
            span_detail(s, t0)
        );
    }
    body.push_str("</table>");
    Html(page(
        &format!("Trace {}", hex(&trace_id)),
        &partial,
        None,
        &body,
    ))
    .into_response()
}

fn kv_table(title: &str, kvs: &[(String, faultline_model::span::AttrValue)]) -> String {
    if kvs.is_empty() {
        return String::new();
    }
    let mut out = format!("<b>{}</b><table>", esc(title));
    for (k, v) in kvs {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(k),
            esc(&v.to_text())
        );
    }
    out.push_str("</table>");
    out
}

fn span_detail(s: &Span, t0: u64) -> String {
    let mut out = format!(
        "<p>span {} · kind {} · starts at +{} · status {:?}{}</p>",
        hex(&s.span_id),
        s.kind.as_str(),
        dur(s.start_ns.saturating_sub(t0)),
        s.status,
        if s.status_message.is_empty() {
            String::new()
        } else {
            format!(": {}", esc(&s.status_message))
        }
    );
    out.push_str(&kv_table("Attributes", &s.attributes));
    for e in &s.events {
        out.push_str(&kv_table(&format!("Event {}", e.name), &e.attributes));
    }
    for l in &s.links {
        let _ = write!(
            out,
            "<p>Link to {}</p>",
            trace_link(
                &l.trace_id,
                &format!("{} / {}", hex(&l.trace_id), hex(&l.span_id))
            )
        );
    }
    out.push_str(&kv_table("Resource", &s.origin.resource));
    out
}

/// `/dependencies`: services as nodes, calls as edges with counts and error rates.
async fn dependencies(State(st): State<ApiState>, Query(p): Params) -> Response {
    let range = match Range::parse(&p) {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let (start, end) = (range.start_s(), range.end_s());
    let (deps, c) = match blocking(&st, move |store| store.dependencies(start, end)).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut nodes: Vec<&str> = deps
        .iter()
        .flat_map(|d| [d.parent.as_str(), d.child.as_str()])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let mut body = range.picker("/dependencies", "");
    let (w, h) = (720.0f64, 480.0f64);
    let pos: HashMap<&str, (f64, f64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let a = i as f64 / nodes.len().max(1) as f64 * std::f64::consts::TAU;
            (
                *n,
                (w / 2.0 + 0.38 * w * a.cos(), h / 2.0 + 0.4 * h * a.sin()),
            )
        })
        .collect();
    let _ = write!(
        body,
        "<svg id=depmap width={w} height={h} style=\"background:#fff;border:1px solid #ddd\"><defs><marker id=arrow viewBox=\"0 0 10 10\" refX=10 refY=5 markerWidth=6 markerHeight=6 orient=auto><path d=\"M0,0 L10,5 L0,10 z\" fill=#888></path></marker></defs>"
    );
    let max_calls = deps.iter().map(|d| d.calls).max().unwrap_or(1).max(1);
    for d in &deps {
        let (Some(a), Some(b)) = (pos.get(d.parent.as_str()), pos.get(d.child.as_str())) else {
            continue;
        };
        let rate = if d.calls == 0 {
            0.0
        } else {
            d.errors as f64 / d.calls as f64
        };
        let _ = write!(
            body,
            "<line class=edge x1={:.0} y1={:.0} x2={:.0} y2={:.0} stroke=\"{}\" stroke-width={:.1} marker-end=url(#arrow)><title>{} → {}: {} calls, {} errors</title></line>",
            a.0,
            a.1,
            b.0,
            b.1,
            if rate > 0.01 { "#d9534f" } else { "#888" },
            1.0 + 4.0 * d.calls as f64 / max_calls as f64,
            esc(&d.parent),
            esc(&d.child),
            d.calls,
            pct(rate)
        );
    }
    for (n, (x, y)) in &pos {
        let _ = write!(
            body,
            "<a href=\"/service/{}?{}\"><circle class=node cx={x:.0} cy={y:.0} r=8 fill=#2f6fb5></circle><text x={:.0} y={:.0} font-size=12>{}</text></a>",
            url(n),
            range.qs(),
            x + 10.0,
            y + 4.0,
            esc(n)
        );
    }
    body.push_str("</svg><table id=edges><tr><th>Caller</th><th>Callee</th><th>Calls</th><th>Error rate</th><th>p50</th><th>p99</th></tr>");
    for d in &deps {
        let l = d.latency_ms;
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            esc(&d.parent),
            esc(&d.child),
            d.calls,
            if d.calls == 0 {
                "-".into()
            } else {
                pct(d.errors as f64 / d.calls as f64)
            },
            ms(l.map(|l| l[0])),
            ms(l.map(|l| l[2]))
        );
    }
    body.push_str("</table>");
    if deps.is_empty() {
        body.push_str("<p class=muted>No calls between services in this range.</p>");
    }
    Html(page(
        "Dependencies",
        &reasons(&st, c.reasons),
        range.refresh,
        &body,
    ))
    .into_response()
}

/// `/status`: the health of each part, with what to do about it.
async fn status(State(st): State<ApiState>, Query(p): Params) -> Response {
    let f = st.status.clone();
    let s = match tokio::task::spawn_blocking(move || f()).await {
        Ok(s) => s,
        Err(e) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("status task failed: {e}"),
            );
        }
    };
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
        .filter(|c| c.health != faultline_api::status::Health::Ok)
        .map(|c| format!("{}: {}", c.name, c.summary))
        .collect();
    Html(page("Status", &partial, refresh, &body)).into_response()
}

const SCRIPT: &str = r#"// faultline UI: collapse and expand spans, span details, find in trace.
document.addEventListener('DOMContentLoaded', () => {
  const wf = document.getElementById('waterfall');
  if (!wf) return;
  const rows = Array.from(wf.querySelectorAll('tr.span-row'));
  const byParent = new Map();
  rows.forEach(r => {
    const p = r.dataset.parent;
    if (!byParent.has(p)) byParent.set(p, []);
    byParent.get(p).push(r);
  });
  const setHidden = (span, hidden) => {
    (byParent.get(span) || []).forEach(c => {
      c.classList.toggle('hidden', hidden);
      const d = wf.querySelector('tr[data-detail-of="' + c.dataset.span + '"]');
      if (d && hidden) d.classList.add('hidden');
      if (hidden || !c.classList.contains('collapsed')) setHidden(c.dataset.span, hidden);
    });
  };
  rows.forEach(r => {
    const t = r.querySelector('.toggle');
    if (t && t.textContent) {
      t.addEventListener('click', ev => {
        ev.stopPropagation();
        const collapse = !r.classList.contains('collapsed');
        r.classList.toggle('collapsed', collapse);
        t.textContent = collapse ? '▸' : '▾';
        setHidden(r.dataset.span, collapse);
      });
    }
    r.addEventListener('click', () => {
      const d = wf.querySelector('tr[data-detail-of="' + r.dataset.span + '"]');
      if (d) d.classList.toggle('hidden');
    });
  });
  const f = document.getElementById('trace-filter');
  if (f) f.addEventListener('input', () => {
    const q = f.value.trim().toLowerCase();
    rows.forEach(r => {
      r.style.opacity = (!q || r.dataset.text.includes(q)) ? '1' : '0.25';
      r.classList.toggle('match', !!q && r.dataset.text.includes(q));
    });
  });
});
"#;

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}
