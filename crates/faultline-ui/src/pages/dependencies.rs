//! `/dependencies`: services as nodes, calls as edges with counts and error rates, and
//! the same as a table with the callees' latency.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::{ApiError, ApiState};

use super::{Params, Range, blocking, reasons};
use crate::html::{esc, ms, page as layout, pct, url};

/// `/dependencies`: services as nodes, calls as edges with counts and error rates.
pub(crate) async fn page(
    State(st): State<ApiState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let range = Range::parse(&p)?;
    let (start, end) = (range.start_s(), range.end_s());
    let (deps, c) = blocking(&st, move |store| store.dependencies(start, end)).await?;
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
    Ok(Html(layout(
        "Dependencies",
        &reasons(&st, c.reasons),
        range.refresh,
        &body,
    ))
    .into_response())
}
