//! `GET /api/v1/alerts`: every alert rule of the configuration file (`faultline_alerts`)
//! with whether it fires and its incidents, newest last:
//!
//! ```json
//! {"alerts": [{"name": "checkout-slow", "description": "p99 of checkout POST /checkout above 800 ms for 5 minutes",
//!              "rule": {"name": "checkout-slow", "service": "checkout", ...}, "firing": true,
//!              "incidents": [{"start": 1740000000, "end": null, "fired_at": 1740000315,
//!                             "message": "p99 of ... for 5 minutes: 1.24 s in the last minute"}]}]}
//! ```

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

/// The alerts route.
pub fn router() -> Router<ApiState> {
    Router::new().route("/api/v1/alerts", get(list))
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
