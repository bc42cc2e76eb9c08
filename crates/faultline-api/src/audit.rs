//! `GET /api/v1/audit?limit=N&who=NAME`: the audit log of control actions
//! (`faultline_auth::audit`, where the record format is documented), newest first: the
//! newest N (default 100, at most 1000), only those of token NAME when given. It needs
//! the `admin` scope when tokens are on.
//!
//! ```json
//! {"records": [{"at": 1767225600123, "who": "ops-alice", "listener": "api",
//!               "method": "POST", "target": "/api/v1/probes/checkout/pause", "status": 200}],
//!  "unreadable": 0}
//! ```

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

/// The audit route.
pub fn router() -> Router<ApiState> {
    Router::new().route("/api/v1/audit", get(list))
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
    who: Option<String>,
}

/// The newest `limit` records (of `who`), and how many lines were unreadable; empty when
/// this process keeps no audit log. Off the executor.
pub async fn recent(
    st: &ApiState,
    limit: usize,
    who: Option<String>,
) -> Result<(Vec<faultline_auth::audit::Record>, u64), ApiError> {
    let Some(log) = st.auth.as_ref().and_then(|a| a.audit_log()) else {
        return Ok((Vec::new(), 0));
    };
    let who = who.filter(|w| !w.is_empty());
    Ok(tokio::task::spawn_blocking(move || log.recent(limit, who.as_deref())).await?)
}

async fn list(
    State(st): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_parameter("limit", "limit: give 1 to 1000"));
    }
    let (records, bad) = recent(&st, limit, q.who).await?;
    Ok(Json(json!({ "records": records, "unreadable": bad })))
}
