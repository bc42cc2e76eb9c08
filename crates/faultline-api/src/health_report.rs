//! `GET /api/v1/tracing-health`: per service, what makes its traces less trustworthy
//! (`faultline_store::quality`): orphan spans and the services that should have sent
//! their parents, traces broken by sampling decisions, skewed clocks with their offsets,
//! and spans that break the OpenTelemetry semantic conventions (deprecated names with the
//! replacement, values of the wrong type, resources without `service.version` or
//! `deployment.environment.name`). Every finding has its count, a trend (counts per 10
//! minutes, oldest first, Unix-second bucket starts) and example trace ids. Answer:
//!
//! ```json
//! {"semconvVersion": "1.44.0",
//!  "services": [{"service": "legacy", "spans": 1200,
//!    "orphans": {"count": 3, "trend": [[1800000000, 3]], "examples": ["4bf9..."],
//!                "expectedParentFrom": ["frontend"]},
//!    "samplingBreaks": {"count": 0, "trend": [], "examples": [], "expectedParentFrom": []},
//!    "clocks": [{"host": "api-1", "offsetMs": 2000.1, "samples": 256, "spreadMs": 1.2,
//!                "callers": ["frontend@fe-1"], "basis": "calls"}],
//!    "conventions": [{"kind": "deprecated", "attribute": "http.status_code",
//!                     "note": "Replaced by `http.response.status_code`.", "count": 1200,
//!                     "trend": [...], "examples": [...]},
//!                    {"kind": "wrong_type", "attribute": "http.response.status_code",
//!                     "note": "expected int, got string", ...},
//!                    {"kind": "missing_resource", "attribute": "service.version",
//!                     "note": "set it on the SDK's resource", ...}]}]}
//! ```
//!
//! The findings are counted since the process started (in memory).
//!
//! `GET /api/v1/tail-sampling`: what tail sampling (`faultline_store::tail`) decided over
//! the blocks still stored, by root service and policy, so no trace goes missing
//! unexplained:
//!
//! ```json
//! {"enabled": true, "policy": {"waitSecs": 30, "keepErrors": true,
//!   "keepSlowerThanP99": true, "restTracesPerSecond": 10.0},
//!  "blocksDecided": 12, "blocksWaiting": 1,
//!  "services": [{"service": "frontend", "keptError": {"traces": 20, "spans": 310},
//!    "keptSlow": {...}, "keptRate": {...}, "dropped": {...}}],
//!  "totals": {"keptError": {...}, "keptSlow": {...}, "keptRate": {...}, "dropped": {...}}}
//! ```

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use faultline_store::quality::{Tally, TracingHealth};
use faultline_store::tail::{ServiceDecisions, TailReport};

use crate::{ApiError, ApiState, Router};

/// The route.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/tracing-health", get(report))
        .route("/api/v1/tail-sampling", get(tail_report))
}

async fn tail_report(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let r = crate::query(&st, |store| store.tail_sampling()).await?;
    Ok(Json(tail_json(&r)))
}

fn decisions_json(d: &ServiceDecisions) -> Value {
    let t = |t: &faultline_store::tail::Tally| json!({"traces": t.traces, "spans": t.spans});
    json!({
        "keptError": t(&d.kept_error),
        "keptSlow": t(&d.kept_slow),
        "keptRate": t(&d.kept_rate),
        "dropped": t(&d.dropped),
    })
}

/// The tail-sampling report as the API answers it.
pub fn tail_json(r: &TailReport) -> Value {
    let mut totals = ServiceDecisions::default();
    let services: Vec<Value> = r
        .services
        .iter()
        .map(|(s, d)| {
            totals.merge(d);
            let mut v = decisions_json(d);
            v["service"] = json!(s);
            v
        })
        .collect();
    json!({
        "enabled": r.policy.is_some(),
        "policy": r.policy.as_ref().map(|p| json!({
            "waitSecs": p.wait_secs,
            "keepErrors": p.keep_errors,
            "keepSlowerThanP99": p.keep_slower_than_p99,
            "restTracesPerSecond": p.rest_traces_per_second,
        })),
        "blocksDecided": r.blocks_decided,
        "blocksWaiting": r.blocks_waiting,
        "services": services,
        "totals": decisions_json(&totals),
    })
}

async fn report(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let r = crate::query(&st, |store| store.tracing_health()).await?;
    Ok(Json(to_json(&r)))
}

fn tally(t: &Tally) -> Value {
    json!({
        "count": t.count,
        "trend": t.trend.iter().map(|(b, c)| json!([b, c])).collect::<Vec<_>>(),
        "examples": t.examples.iter().map(|id| faultline_model::hex(id)).collect::<Vec<_>>(),
    })
}

/// The report as the API answers it (the UI renders the same data).
pub fn to_json(r: &TracingHealth) -> Value {
    let services: Vec<Value> = r
        .services
        .iter()
        .map(|s| {
            let h = &s.health;
            let mut conventions = Vec::new();
            for (k, t) in &h.deprecated {
                let mut v = tally(t);
                v["kind"] = json!("deprecated");
                v["attribute"] = json!(k);
                v["note"] = json!(faultline_store::quality::deprecation_note(k));
                conventions.push(v);
            }
            for ((k, got), t) in &h.wrong_type {
                let mut v = tally(t);
                v["kind"] = json!("wrong_type");
                v["attribute"] = json!(k);
                v["note"] = json!(faultline_store::quality::wrong_type_note(k, got));
                conventions.push(v);
            }
            for (k, t) in &h.missing_resource {
                let mut v = tally(t);
                v["kind"] = json!("missing_resource");
                v["attribute"] = json!(k);
                v["note"] = json!("set it on the SDK's resource (OTEL_RESOURCE_ATTRIBUTES)");
                conventions.push(v);
            }
            let mut orphans = tally(&h.orphans);
            orphans["expectedParentFrom"] = json!(s.callers);
            let mut breaks = tally(&h.sampling_breaks);
            breaks["expectedParentFrom"] = json!(s.callers);
            json!({
                "service": s.service,
                "spans": h.spans,
                "orphans": orphans,
                "samplingBreaks": breaks,
                "clocks": s.clocks.iter().map(|(host, o)| json!({
                    "host": host,
                    "offsetMs": o.offset_ns as f64 / 1e6,
                    "samples": o.samples,
                    "spreadMs": o.spread_ns as f64 / 1e6,
                    "callers": o.callers,
                    "basis": if o.messages { "messages" } else { "calls" },
                })).collect::<Vec<_>>(),
                "conventions": conventions,
            })
        })
        .collect();
    json!({"semconvVersion": r.semconv_version, "services": services})
}
