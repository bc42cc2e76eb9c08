//! `GET /api/v1/status`: the health of each part of faultline, as the stages judge
//! themselves (intake: `wal`, `disk`, `memory`, `lanes`; the pipeline: `indexing`,
//! `backlog`, `sealing`, `dead letters`; the store: `store`), each with a one-line summary,
//! its figures, and the operator action when it is not healthy. The parts come through
//! [`crate::Process::status`]; this module orders nothing and judges nothing, it serializes.
//! Answer:
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
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub use faultline_model::health::{Component, Health};

use crate::{ApiError, ApiState};

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

/// The status route.
pub fn router() -> Router<ApiState> {
    Router::new().route("/api/v1/status", get(status))
}

/// Every part's health, judged now (off the executor: the rules read files and `/proc`).
pub async fn current(st: &ApiState) -> Result<Status, ApiError> {
    let p = st.process.clone();
    let components = tokio::task::spawn_blocking(move || p.status()).await?;
    Ok(Status { components })
}

async fn status(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(current(&st).await?.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_part_decides() {
        let part = |name, health| Component::new(name, health, "");
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
