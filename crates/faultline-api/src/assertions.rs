//! `POST /api/v1/assertions/run`: trace assertions (`faultline_rules`) checked over one
//! trace or over every trace a search finds.
//!
//! Body: `{"assertions": FILE, "traceId": "4bf9..."}` or `{"assertions": FILE, "search":
//! {"service": "checkout", "operation": "POST /pay", "lookback": "1h", "limit": 100}}`,
//! where FILE is an assertion file's JSON (format in `faultline_rules::assertion`;
//! `limit` default 100, at most 1000). Answer (200 once the checks ran, whatever they
//! found):
//!
//! ```json
//! {"pass": false, "checked": 2, "failed": 1,
//!  "traces": [{"traceId": "4bf9...", "pass": false, "results": [
//!     {"name": "one payment", "pass": false, "message": "expected 1 spans, found 2",
//!      "selected": 2, "spans": ["00f067aa0ba902b7", "..."]}]}]}
//! ```
//!
//! An invalid file is a 400 naming the assertion and field (a selector error gives its
//! column); an unknown trace a 404.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use faultline_rules::{AssertionFile, check_trace};
use faultline_store::{SortOrder, TraceQuery};

use crate::params::{go_duration, now_ns};
use crate::{ApiError, ApiState};

pub fn router() -> Router<ApiState> {
    Router::new().route("/api/v1/assertions/run", post(run))
}

fn trace_id(hex: &str) -> Result<[u8; 16], ApiError> {
    let bad =
        || ApiError::bad_parameter("traceId", format!("traceId {hex:?} is not 32 hex digits"));
    if hex.len() != 32 {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(id)
}

async fn run(State(st): State<ApiState>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_parameter("body", format!("the body is not JSON: {e}")))?;
    let file = AssertionFile::parse(&v["assertions"].to_string())
        .map_err(|e| ApiError::bad_parameter("assertions", e))?;
    let ids: Option<Vec<[u8; 16]>> = match v["traceId"].as_str() {
        Some(hex) => Some(vec![trace_id(hex)?]),
        None => None,
    };
    let search = match (&ids, v.get("search")) {
        (Some(_), _) => None,
        (None, Some(s)) => {
            let service = s["service"].as_str().map(str::to_string);
            let lookback = go_duration("search.lookback", s["lookback"].as_str().unwrap_or("1h"))?;
            let limit = s["limit"].as_u64().unwrap_or(100).clamp(1, 1000) as usize;
            let now = now_ns();
            Some(TraceQuery {
                service,
                operation: s["operation"].as_str().map(str::to_string),
                start_ns: now.saturating_sub(lookback),
                end_ns: now,
                sort: SortOrder::Newest,
                limit,
                time_limit: Some(std::time::Duration::from_secs(10)),
                ..TraceQuery::default()
            })
        }
        (None, None) => {
            return Err(ApiError::bad_parameter(
                "traceId",
                "give traceId (one trace) or search (service, operation, lookback, limit)",
            ));
        }
    };
    let store = st.store.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let ids = match (ids, search) {
            (Some(ids), _) => ids,
            (None, Some(q)) => store.search(&q)?.0.iter().map(|t| t.trace_id).collect(),
            (None, None) => Vec::new(),
        };
        let answers = store.traces(&ids)?;
        Ok::<_, faultline_store::StoreError>(ids.into_iter().zip(answers).collect::<Vec<_>>())
    })
    .await??;
    if v["traceId"].is_string() && answers.iter().all(|(_, a)| a.spans.is_empty()) {
        return Err(ApiError::not_found(format!(
            "trace {} not found; it may not be indexed yet, or be older than the retention",
            v["traceId"].as_str().unwrap_or_default()
        )));
    }
    let hex = faultline_model::hex;
    let traces: Vec<Value> = answers
        .iter()
        .filter(|(_, a)| !a.spans.is_empty())
        .map(|(id, a)| {
            let results = check_trace(&file, &a.spans);
            json!({
                "traceId": hex(id),
                "pass": results.iter().all(|r| r.pass),
                "results": results.iter().map(|r| json!({
                    "name": r.name, "pass": r.pass, "message": r.message, "selected": r.selected,
                    "spans": r.spans.iter().map(|s| hex(s)).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let failed = traces.iter().filter(|t| t["pass"] == false).count();
    Ok(Json(json!({
        "name": file.name, "pass": failed == 0, "checked": traces.len(), "failed": failed,
        "traces": traces,
    })))
}
