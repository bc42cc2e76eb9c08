//! The continuous checks' API (`faultline_checks`): consistency rules, their keys, rules
//! tried over history, and continuous assertions.
//!
//! - `GET /api/v1/consistency`: every rule with its keys per class, transitions and
//!   matched spans, and every continuous assertion with its counts and failing traces;
//!   `broken` names why evaluation stopped, if it did.
//! - `GET /api/v1/consistency/rules/{name}/keys?class=missing&limit=100`: keys of one
//!   class (default: every violation class), each with links to the traces of A and B.
//! - `PUT /api/v1/consistency/rules/{name}` (body: a rule's JSON, `name` optional) adds or
//!   replaces a rule (201 new, 200 replaced; 409 for a configured rule's name);
//!   `DELETE` removes one (204; 404 unknown; 409 configured).
//! - `POST /api/v1/consistency/check` with `{"rule": {...}}` or `{"name": "..."}`, and
//!   `"since": "24h"` (default; at most 31 days) and `"limit"` (traces per side, default
//!   20000, at most 200000): the rule evaluated over stored spans.
//! - `GET /api/v1/assertions/continuous`: the continuous assertions alone.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use faultline_checks::{Checks, ChecksError, Class, Rule, RuleDef};

use crate::params::{go_duration, now_ns};
use crate::{ApiError, ApiState};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/consistency", get(list))
        .route("/api/v1/consistency/rules/{name}/keys", get(keys))
        .route(
            "/api/v1/consistency/rules/{name}",
            put(put_rule).delete(delete_rule),
        )
        .route("/api/v1/consistency/check", post(check))
        .route("/api/v1/assertions/continuous", get(continuous))
}

fn checks(st: &ApiState) -> Result<Arc<Checks>, ApiError> {
    st.checks.clone().ok_or_else(|| {
        ApiError::not_found("this process evaluates no continuous checks (run `faultline serve`)")
    })
}

fn checks_err(e: ChecksError) -> ApiError {
    match e {
        ChecksError::Conflict(m) => ApiError::conflict(m),
        other => ApiError::unavailable(other.to_string()),
    }
}

async fn list(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let c = checks(&st)?;
    let c2 = c.clone();
    // The figures wait for the checks' lock, which a flush holds through a commit.
    let (rules, assertions, broken) = tokio::task::spawn_blocking(move || {
        (
            c2.consistency.rules(),
            c2.continuous.views(),
            c2.consistency.broken(),
        )
    })
    .await?;
    Ok(Json(json!({
        "rules": rules, "assertions": assertions, "broken": broken,
    })))
}

async fn continuous(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let c = checks(&st)?;
    let views = tokio::task::spawn_blocking(move || c.continuous.views()).await?;
    Ok(Json(json!({ "assertions": views })))
}

#[derive(serde::Deserialize)]
struct KeysQuery {
    class: Option<String>,
    limit: Option<usize>,
}

async fn keys(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<KeysQuery>,
) -> Result<Json<Value>, ApiError> {
    let c = checks(&st)?;
    let class = match q.class.as_deref() {
        None | Some("violated") => None,
        Some(s) => Some(Class::from_name(s).ok_or_else(|| {
            ApiError::bad_parameter(
                "class",
                format!("class {s:?} is not one of violated, pending, satisfied, repaired, missing, duplicate, orphan, unmatched"),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let n = name.clone();
    let found = tokio::task::spawn_blocking(move || c.consistency.keys(&n, class, limit))
        .await?
        .map_err(checks_err)?;
    match found {
        Some(keys) => Ok(Json(json!({ "rule": name, "keys": keys }))),
        None => Err(ApiError::not_found(format!(
            "no consistency rule is named {name:?}"
        ))),
    }
}

fn parse_rule(name: Option<&str>, mut v: Value) -> Result<Rule, ApiError> {
    if let (Some(name), Some(o)) = (name, v.as_object_mut()) {
        match o.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_parameter(
                    "name",
                    format!("the body names rule {n:?} but the path {name:?}"),
                ));
            }
            _ => {
                o.insert("name".into(), Value::String(name.to_string()));
            }
        }
    }
    let def: RuleDef = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_parameter("rule", format!("the rule is malformed: {e}")))?;
    Rule::new(def).map_err(|e| ApiError::bad_parameter(e.field, e.to_string()))
}

async fn put_rule(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let c = checks(&st)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_parameter("body", format!("the body is not JSON: {e}")))?;
    let rule = parse_rule(Some(&name), v)?;
    let def = rule.def.clone();
    let replaced = tokio::task::spawn_blocking(move || c.consistency.put_rule(rule))
        .await?
        .map_err(checks_err)?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!(def))))
}

async fn delete_rule(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let c = checks(&st)?;
    let n = name.clone();
    let gone = tokio::task::spawn_blocking(move || c.consistency.delete_rule(&n))
        .await?
        .map_err(checks_err)?;
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no rule made through the API is named {name:?}"
        )))
    }
}

async fn check(
    State(st): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_parameter("body", format!("the body is not JSON: {e}")))?;
    let rule = match (v.get("rule"), v["name"].as_str()) {
        (Some(r), _) => parse_rule(None, r.clone())?,
        (None, Some(name)) => {
            let c = checks(&st)?;
            let def = c.consistency.rule_def(name).ok_or_else(|| {
                ApiError::not_found(format!("no consistency rule is named {name:?}"))
            })?;
            parse_rule(None, json!(def))?
        }
        (None, None) => {
            return Err(ApiError::bad_parameter(
                "rule",
                "give `rule` (a rule's JSON) or `name` (a rule in force)",
            ));
        }
    };
    let since = go_duration("since", v["since"].as_str().unwrap_or("24h"))?;
    if since > 31 * 86_400 * 1_000_000_000 {
        return Err(ApiError::bad_parameter(
            "since",
            "since is at most 744h (31 days)",
        ));
    }
    let limit = v["limit"].as_u64().unwrap_or(20_000).clamp(1, 200_000) as usize;
    let store = st.store.clone();
    let now = now_ns();
    let report = tokio::task::spawn_blocking(move || {
        faultline_checks::history::check(
            &rule,
            store.as_ref(),
            now.saturating_sub(since),
            now,
            now,
            limit,
        )
    })
    .await?
    .map_err(checks_err)?;
    Ok(Json(json!(report)))
}
