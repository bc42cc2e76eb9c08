//! `/`: every service with its request rate and error rate (requests: entry spans, SERVER
//! and CONSUMER spans and roots, as `/api/v1/red` counts them), its span rate, request
//! latency p50 and p99 over the range (every span's for a service that serves no
//! requests), sortable, with a chart of each over time. Rates divide by exactly the
//! seconds their counts cover (`Range::covered_s`).

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::params::get as param;
use faultline_api::{ApiError, ApiState};

use super::{Params, Range, blocking, reasons};
use crate::chart::{Unit, small_time_chart};
use crate::html::{esc, ms, page as layout, pct, url};

/// `/`: every service with rate, error rate, p50 and p99 over the range, and a chart.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let range = Range::parse(&p)?;
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
    .await?;
    let (mut rows, c) = rows;
    let secs = range.covered_s();
    let key = |r: &(String, Option<faultline_store::RedPoint>, _)| -> f64 {
        let t = r.1.as_ref();
        match sort.as_str() {
            "rate" => -(t.map_or(0, |t| t.requests) as f64),
            "spans" => -(t.map_or(0, |t| t.count) as f64),
            "errors" => -t.map_or(0.0, |t| {
                if t.requests == 0 {
                    0.0
                } else {
                    t.request_errors as f64 / t.requests as f64
                }
            }),
            "p50" => -t
                .and_then(|t| t.request_ms.map(|r| r[0]).or(t.p50_ms))
                .unwrap_or(0.0),
            "p99" => -t
                .and_then(|t| t.request_ms.map(|r| r[2]).or(t.p99_ms))
                .unwrap_or(0.0),
            _ => 0.0,
        }
    };
    rows.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.0.cmp(&b.0)));
    let qs = range.qs();
    let mut body = range.picker("/", &format!("&sort={}", url(&sort)));
    body.push_str("<table id=services><tr>");
    for (k, label) in [
        ("name", "Service"),
        ("rate", "Requests /s"),
        ("errors", "Error rate"),
        ("spans", "Spans /s"),
        ("p50", "p50"),
        ("p99", "p99"),
    ] {
        let _ = write!(body, "<th><a href=\"/?{qs}&sort={k}\">{label}</a></th>");
    }
    body.push_str("<th>p99 over time</th><th>requests /s over time</th></tr>");
    for (name, total, series) in &rows {
        let t = total.as_ref();
        let requests = t.map_or(0, |t| t.requests);
        let errors = t.map_or(0, |t| t.request_errors);
        let spans = t.map_or(0, |t| t.count);
        // Request latency; every span's for a service that serves no requests.
        let p99s: Vec<(u64, Option<f64>)> = series
            .iter()
            .map(|p| (p.start_s, p.request_ms.map(|r| r[2]).or(p.p99_ms)))
            .collect();
        let rates: Vec<(u64, Option<f64>)> = series
            .iter()
            .map(|p| {
                (
                    p.start_s,
                    Some(p.requests as f64 / range.point_s(p.start_s, step)),
                )
            })
            .collect();
        let _ = write!(
            body,
            "<tr class=service-row data-requests={requests} data-request-errors={errors}><td><a href=\"/service/{}?{qs}\">{}</a></td><td class=\"num requests\">{:.3}</td><td class=\"num{}\">{}</td><td class=num>{:.3}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td><td>{}</td></tr>",
            url(name),
            esc(name),
            requests as f64 / secs,
            if errors > 0 { " err" } else { "" },
            if requests == 0 {
                "-".into()
            } else {
                pct(errors as f64 / requests as f64)
            },
            spans as f64 / secs,
            ms(t.and_then(|t| t.request_ms.map(|r| r[0]).or(t.p50_ms))),
            ms(t.and_then(|t| t.request_ms.map(|r| r[2]).or(t.p99_ms))),
            small_time_chart(
                &format!("p99-{name}"),
                &format!("p99 latency of {name}"),
                &p99s,
                Unit::Millis
            ),
            small_time_chart(
                &format!("requests-{name}"),
                &format!("requests per second of {name}"),
                &rates,
                Unit::PerSecond
            ),
        );
    }
    body.push_str("</table>");
    if rows.is_empty() {
        body.push_str("<p class=muted>No services yet: send spans over OTLP or Zipkin.</p>");
    }
    Ok(Html(layout(
        "Services",
        &reasons(&st, c.reasons),
        range.refresh,
        &body,
    ))
    .into_response())
}
