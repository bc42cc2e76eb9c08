//! `GET /api/v1/status`: the health of each part of faultline (write-ahead log, disk,
//! indexing, sealing, store), each with a one-line summary, its figures, and the operator
//! action when it is not healthy. The binary assembles the parts (it owns the WAL and the
//! pipeline); this module defines the shape and serves it. Answer:
//!
//! ```json
//! {"state": "degraded",
//!  "components": [{"name": "store", "state": "degraded",
//!                  "summary": "1 block quarantined",
//!                  "action": "inspect DATA_DIR/blocks/quarantine ...",
//!                  "details": {"blocks": 12, "quarantined": ["block ... unreadable ..."]}}]}
//! ```
//!
//! The status code is 200 whatever the state: the answer is about faultline, and
//! `GET /ready` is the probe for load balancers.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::ApiState;

/// How healthy a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Working as intended.
    Ok,
    /// Working with less than everything (behind, partial, near a limit).
    Degraded,
    /// Not working; intake or queries are refused because of it.
    Failed,
}

impl Health {
    /// `ok`, `degraded` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

/// One part of faultline.
#[derive(Debug, Clone)]
pub struct Component {
    /// Short name (`wal`, `disk`, `indexing`, `sealing`, `store`).
    pub name: &'static str,
    /// Its health.
    pub health: Health,
    /// One line saying what is going on.
    pub summary: String,
    /// What an operator can do about it, when it is not healthy.
    pub action: Option<String>,
    /// Its figures.
    pub details: Value,
}

/// Every part.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The parts, in a stable order.
    pub components: Vec<Component>,
}

impl Status {
    /// The worst health of any part.
    pub fn health(&self) -> Health {
        self.components
            .iter()
            .map(|c| c.health)
            .max()
            .unwrap_or(Health::Ok)
    }

    /// The JSON of the module doc.
    pub fn to_json(&self) -> Value {
        json!({
            "state": self.health().as_str(),
            "components": self.components.iter().map(|c| json!({
                "name": c.name, "state": c.health.as_str(), "summary": c.summary,
                "action": c.action, "details": c.details,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Builds the status on demand.
pub type StatusFn = dyn Fn() -> Status + Send + Sync;

/// The status route.
pub fn router() -> Router<ApiState> {
    Router::new().route("/api/v1/status", get(status))
}

async fn status(State(st): State<ApiState>) -> Response {
    let f = st.status.clone();
    match tokio::task::spawn_blocking(move || f()).await {
        Ok(s) => Json(s.to_json()).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": format!("status task failed: {e}")})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_part_decides() {
        let part = |name, health| Component {
            name,
            health,
            summary: String::new(),
            action: None,
            details: Value::Null,
        };
        let mut s = Status::default();
        assert_eq!(s.health(), Health::Ok);
        s.components.push(part("wal", Health::Ok));
        s.components.push(part("store", Health::Degraded));
        assert_eq!(s.to_json()["state"], "degraded");
        s.components.push(part("disk", Health::Failed));
        assert_eq!(s.health(), Health::Failed);
        assert_eq!(s.to_json()["components"][2]["name"], "disk");
    }
}
