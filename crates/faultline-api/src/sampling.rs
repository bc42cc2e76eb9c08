//! The sampling port (5778 by default): Jaeger's remote sampling protocol, so every SDK
//! (Jaeger clients, OpenTelemetry's Jaeger remote samplers) takes its sampling strategy
//! from the one policy in faultline's configuration; and `GET /api/v1/sampling` on the API
//! port, which shows that policy, where it came from and whether its file was refused.
//!
//! `GET /sampling?service=NAME` (the agent's path) and `GET /api/sampling?service=NAME`
//! (the collector's) answer the service's strategy as the protobuf JSON of Jaeger's
//! `SamplingStrategyResponse`:
//!
//! ```json
//! {"strategyType": "PROBABILISTIC",
//!  "probabilisticSampling": {"samplingRate": 0.5},
//!  "operationSampling": {"defaultSamplingProbability": 0.5,
//!    "defaultLowerBoundTracesPerSecond": 0, "defaultUpperBoundTracesPerSecond": 0,
//!    "perOperationStrategies": [
//!      {"operation": "PlaceOrder", "probabilisticSampling": {"samplingRate": 1}}]}}
//! ```
//!
//! or `{"strategyType": "RATE_LIMITING", "rateLimitingSampling": {"maxTracesPerSecond": 20}}`.
//! `operationSampling` is present only when the service has per-operation strategies.
//! A missing `service` parameter is a 400 naming it (native error shape).

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use faultline_sampling::{PolicyHandle, Strategy, StrategyKind};

use crate::{ApiError, ApiState, Shape, shaped};

/// The sampling port's routes, answering from `policy`.
pub fn router(policy: PolicyHandle) -> Router {
    shaped(
        Router::new()
            .route("/sampling", get(strategy))
            .route("/api/sampling", get(strategy))
            .with_state(policy),
        Shape::Native,
    )
}

/// The API port's view of the policy.
pub fn api_router() -> Router<ApiState> {
    Router::new().route("/api/v1/sampling", get(policy_view))
}

#[derive(Debug, Deserialize)]
struct ServiceParam {
    service: Option<String>,
}

async fn strategy(
    State(policy): State<PolicyHandle>,
    Query(q): Query<ServiceParam>,
) -> Result<Json<StrategyResponse>, ApiError> {
    let service = q.service.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::bad_parameter(
            "service",
            "the service parameter is required: /sampling?service=NAME, NAME as the SDK reports service.name",
        )
    })?;
    Ok(Json(StrategyResponse::from(
        &policy.current().strategy_for(&service),
    )))
}

async fn policy_view(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let Some(policy) = st.process.sampling_policy() else {
        return Err(ApiError::not_found(
            "this process serves no sampling policy (it is the binary's sampling port that does)",
        ));
    };
    let status = policy.status();
    let current = policy.current();
    let services: serde_json::Map<String, Value> = current
        .services()
        .map(|name| {
            (
                name.to_string(),
                json!(StrategyResponse::from(&current.strategy_for(name))),
            )
        })
        .collect();
    Ok(Json(json!({
        "source": status.source.as_ref().map(|p| p.display().to_string()),
        "generation": status.generation,
        "loaded_unix_secs": status.loaded_unix_secs,
        "reloads": status.reloads,
        "refusals": status.refusals,
        "last_error": status.last_error,
        "last_error_unix_secs": status.last_error_unix_secs,
        "default": StrategyResponse::from(current.default_strategy()),
        "services": services,
    })))
}

/// Jaeger's `SamplingStrategyResponse` in protobuf JSON (see the module header).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StrategyResponse {
    strategy_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilistic_sampling: Option<Probabilistic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limiting_sampling: Option<RateLimiting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    operation_sampling: Option<OperationSampling>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Probabilistic {
    sampling_rate: f64,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct RateLimiting {
    max_traces_per_second: u32,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct OperationSampling {
    default_sampling_probability: f64,
    default_lower_bound_traces_per_second: f64,
    default_upper_bound_traces_per_second: f64,
    per_operation_strategies: Vec<PerOperation>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct PerOperation {
    operation: String,
    probabilistic_sampling: Probabilistic,
}

impl From<&Strategy> for StrategyResponse {
    fn from(s: &Strategy) -> Self {
        match s.kind {
            StrategyKind::Probabilistic(p) => Self {
                strategy_type: "PROBABILISTIC",
                probabilistic_sampling: Some(Probabilistic { sampling_rate: p }),
                rate_limiting_sampling: None,
                operation_sampling: (!s.operations.is_empty()).then(|| OperationSampling {
                    default_sampling_probability: p,
                    default_lower_bound_traces_per_second: 0.0,
                    default_upper_bound_traces_per_second: 0.0,
                    per_operation_strategies: s
                        .operations
                        .iter()
                        .map(|o| PerOperation {
                            operation: o.operation.clone(),
                            probabilistic_sampling: Probabilistic {
                                sampling_rate: o.probability,
                            },
                        })
                        .collect(),
                }),
            },
            StrategyKind::RateLimiting(n) => Self {
                strategy_type: "RATE_LIMITING",
                probabilistic_sampling: None,
                rate_limiting_sampling: Some(RateLimiting {
                    max_traces_per_second: n,
                }),
                operation_sampling: None,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use faultline_sampling::Policy;

    use super::*;

    async fn get_json(app: Router, uri: &str) -> (StatusCode, Value) {
        let resp = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn policy() -> PolicyHandle {
        PolicyHandle::fixed(
            Policy::parse(
                r#"
[default_strategy]
type = "probabilistic"
param = 0.1
[[service_strategies]]
service = "checkout"
type = "probabilistic"
param = 0.5
operation_strategies = [{ operation = "PlaceOrder", type = "probabilistic", param = 1.0 }]
[[service_strategies]]
service = "search"
type = "ratelimiting"
param = 20
"#,
                false,
                "test.toml",
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn strategies_in_jaegers_json() {
        let app = router(policy());
        let (s, v) = get_json(app.clone(), "/sampling?service=checkout").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            v,
            json!({"strategyType": "PROBABILISTIC",
                "probabilisticSampling": {"samplingRate": 0.5},
                "operationSampling": {"defaultSamplingProbability": 0.5,
                    "defaultLowerBoundTracesPerSecond": 0.0,
                    "defaultUpperBoundTracesPerSecond": 0.0,
                    "perOperationStrategies": [{"operation": "PlaceOrder",
                        "probabilisticSampling": {"samplingRate": 1.0}}]}})
        );
        let (_, v) = get_json(app.clone(), "/api/sampling?service=search").await;
        assert_eq!(
            v,
            json!({"strategyType": "RATE_LIMITING",
                "rateLimitingSampling": {"maxTracesPerSecond": 20}})
        );
        let (_, v) = get_json(app.clone(), "/sampling?service=unknown").await;
        assert_eq!(
            v,
            json!({"strategyType": "PROBABILISTIC", "probabilisticSampling": {"samplingRate": 0.1}})
        );
        for uri in ["/sampling", "/sampling?service="] {
            let (s, v) = get_json(app.clone(), uri).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(v["parameter"], "service", "{uri}: {v}");
            assert_eq!(v["kind"], "bad_parameter");
        }
    }
}
