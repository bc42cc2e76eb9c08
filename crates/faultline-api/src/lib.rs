//! The query API served on the HTTP port: Jaeger's v1 JSON API (`jaeger.rs`), Jaeger's
//! api_v3 over HTTP answering in OTLP JSON (`v3.rs`), and the native RED and trace summary
//! endpoints (`native.rs`), with the parameter parsing they share (`params.rs`).
//!
//! **Architecture invariant:** the API layer knows nothing about file formats; it reads
//! through [`faultline_store::SpanStore`] and is the only layer that serialises JSON for
//! clients.
//!
//! **Invariant:** every answer says whether it is complete: the `X-Faultline-Partial`
//! header lists the reasons (blocks quarantined, WAL records not yet indexed), and Jaeger
//! answers carry the same in a `partial` field (ignored by Jaeger clients).

pub mod jaeger;
pub mod native;
pub mod params;
pub mod status;
pub mod v3;

use std::sync::Arc;

use axum::Router;
use faultline_store::SpanStore;

/// Reasons, beyond the store's own, why answers may be missing data right now (for
/// example WAL records acknowledged but not yet indexed).
pub type LagFn = dyn Fn() -> Vec<String> + Send + Sync;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The span store.
    pub store: Arc<dyn SpanStore>,
    /// Extra reasons an answer may be partial.
    pub lag: Arc<LagFn>,
    /// The health of faultline's parts (`/api/v1/status`, the status page).
    pub status: Arc<status::StatusFn>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// Runs a store query off the async executor (block reads are file I/O and can take
/// milliseconds). The error is the message of a 500 answer.
pub(crate) async fn query<T: Send + 'static>(
    st: &ApiState,
    f: impl FnOnce(&dyn SpanStore) -> Result<T, faultline_store::StoreError> + Send + 'static,
) -> Result<T, String> {
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("query task failed: {e}")),
    }
}

/// Every query route.
pub fn router(state: ApiState) -> Router {
    jaeger::router()
        .merge(native::router())
        .merge(v3::router())
        .merge(status::router())
        .with_state(state)
}

/// Sets `X-Faultline-Partial` to the reasons an answer is incomplete (none: no header).
pub fn mark_partial(headers: &mut axum::http::HeaderMap, reasons: &[String]) {
    if reasons.is_empty() {
        return;
    }
    // Header values must be visible ASCII; reasons are ours, but be safe.
    let clean: String = reasons
        .join("; ")
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(v) = axum::http::HeaderValue::from_str(&clean) {
        headers.insert("x-faultline-partial", v);
    }
}
