//! `GET /api/v1/alerts`: every alert rule of the configuration file (`faultline_alerts`)
//! with whether it fires and its incidents, newest last:
//!
//! ```json
//! {"alerts": [{"name": "checkout-slow", "description": "p99 of checkout POST /checkout above 800 ms for 5 minutes",
//!              "rule": {"name": "checkout-slow", "service": "checkout", ...}, "firing": true,
//!              "incidents": [{"start": 1740000000, "end": null, "fired_at": 1740000315,
//!                             "message": "p99 of ... for 5 minutes: 1.24 s in the last minute"}]}]}
//! ```
//!
//! `GET /api/v1/notifications?limit=N`: the outbox (`faultline_notify`): each receiver with
//! its counts, and the newest N (default 100, at most 1000) transitions with their
//! delivery to each receiver:
//!
//! ```json
//! {"receivers": [{"name": "ops-hook", "kind": "webhook", "target": "https://hooks.example.com/…",
//!                 "waiting": 0, "sent": 12, "failedAttempts": 1, "gaveUp": 0, "lastError": null}],
//!  "events": [{"key": "probe/checkout/1740000000000/down", "kind": "probe", "subject": "checkout",
//!              "state": "down", "at": 1740000000000, "message": "HTTP 500, expected 200",
//!              "link": "/trace/0af7...", "enqueuedAt": 1740000000100,
//!              "deliveries": [{"receiver": "ops-hook", "state": "sent", "batch": "5f0c...",
//!                              "attempts": 1, "lastError": null, "sentAt": 1740000010200,
//!                              "nextAttemptAt": null}]}]}
//! ```

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

/// The alerts route.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/alerts", get(list))
        .route("/api/v1/notifications", get(notifications))
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn notifications(
    State(st): State<ApiState>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit: give 1 to 1000"));
    }
    let Some(o) = st.outbox.clone() else {
        return Ok(Json(json!({ "receivers": [], "events": [] })));
    };
    // It walks the outbox's events under its lock: off the executor.
    let (receivers, events) =
        tokio::task::spawn_blocking(move || (o.receivers(), o.events(limit))).await?;
    Ok(Json(json!({ "receivers": receivers, "events": events })))
}

async fn list(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let Some(alerts) = st.alerts.clone() else {
        return Ok(Json(json!({ "alerts": [] })));
    };
    let all = tokio::task::spawn_blocking(move || alerts.list()).await?;
    let out: Vec<Value> = all
        .iter()
        .map(|(rule, state)| {
            json!({
                "name": rule.name, "description": rule.describe(), "rule": rule,
                "firing": state.firing, "incidents": state.incidents,
            })
        })
        .collect();
    Ok(Json(json!({ "alerts": out })))
}
