//! Toxiproxy's HTTP API (2.x) over [`Proxies`], so Toxiproxy's clients and Chaos
//! Toolkit's toxiproxy driver work unmodified: the same routes, status codes (201 for a
//! proxy created and for `/populate`, 200 for a toxic created, 204 for deletes and
//! `/reset`), JSON shapes and error bodies (`{"error":"proxy not found","status":404}`).
//! As Toxiproxy does, it refuses any request whose `User-Agent` starts with `Mozilla/`
//! (403), so a web page a browser opens cannot drive the proxy.
//!
//! Differences, all deliberate: `/version` answers `2.12.0+faultline.VERSION` (the API
//! level, with faultline's version as build metadata); `/metrics` is always served, with
//! faultline's names; JSON keys are matched exactly (Toxiproxy matches them in any case);
//! an empty `listen` means loopback on a free port (Toxiproxy: every interface).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::registry::{ApiError, Proxies, ProxyFields};

/// The Toxiproxy API level this speaks, with faultline's version as build metadata.
pub fn version() -> String {
    format!("2.12.0+faultline.{}", env!("CARGO_PKG_VERSION"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            format!(
                "{}\n",
                json!({"error": self.message, "status": self.status})
            ),
        )
            .into_response()
    }
}

fn ok(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        v.to_string(),
    )
        .into_response()
}

fn body(bytes: &Bytes) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(400, "bad request body: EOF"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(400, format!("bad request body: {e}")))
}

/// The router for the API; serve it on its own listener (Toxiproxy's port is 8474).
pub fn router(proxies: Proxies) -> Router {
    Router::new()
        .route("/proxies", get(list).post(create))
        .route("/populate", post(populate))
        .route(
            "/proxies/{proxy}",
            get(show).post(update).patch(update).delete(remove),
        )
        .route("/proxies/{proxy}/toxics", get(toxics).post(add_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(show_toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(remove_toxic),
        )
        .route("/reset", post(reset))
        .route("/version", get(version_route))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn(no_browsers))
        .with_state(proxies)
}

/// A browser's request (a page posting to the loopback API) is refused, as Toxiproxy
/// refuses it.
async fn no_browsers(req: Request, next: Next) -> Response {
    let browser = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"));
    if browser {
        return (StatusCode::FORBIDDEN, "User agent not allowed\n").into_response();
    }
    next.run(req).await
}

async fn list(State(p): State<Proxies>) -> Response {
    ok(StatusCode::OK, p.list())
}

async fn create(State(p): State<Proxies>, b: Bytes) -> Result<Response, ApiError> {
    let f = ProxyFields::parse(&body(&b)?)?;
    let out = p.create(f)?;
    p.persist().await;
    Ok(ok(StatusCode::CREATED, out))
}

async fn populate(State(p): State<Proxies>, b: Bytes) -> Response {
    let result = match body(&b) {
        Ok(v) => p.populate(&v),
        Err(e) => Err((e, None)),
    };
    p.persist().await;
    match result {
        Ok(done) => {
            let list = if done.is_empty() {
                Value::Null
            } else {
                Value::Array(done)
            };
            ok(StatusCode::CREATED, json!({ "proxies": list }))
        }
        Err((e, done)) => {
            let status =
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let list = done.map_or(Value::Null, Value::Array);
            ok(
                status,
                json!({"error": e.message, "status": e.status, "proxies": list}),
            )
        }
    }
}

async fn show(State(p): State<Proxies>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(ok(StatusCode::OK, p.get(&name)?))
}

async fn update(
    State(p): State<Proxies>,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    p.get(&name)?;
    let f = ProxyFields::parse(&body(&b)?)?;
    let out = p.update(&name, f);
    p.persist().await;
    Ok(ok(StatusCode::OK, out?))
}

async fn remove(State(p): State<Proxies>, Path(name): Path<String>) -> Result<Response, ApiError> {
    p.delete(&name)?;
    p.persist().await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn toxics(State(p): State<Proxies>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(ok(StatusCode::OK, p.toxics(&name)?))
}

async fn add_toxic(
    State(p): State<Proxies>,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    p.get(&name)?;
    let out = p.add_toxic(&name, &body(&b)?)?;
    p.persist().await;
    Ok(ok(StatusCode::OK, out))
}

async fn show_toxic(
    State(p): State<Proxies>,
    Path((name, toxic)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(ok(StatusCode::OK, p.toxic(&name, &toxic)?))
}

async fn update_toxic(
    State(p): State<Proxies>,
    Path((name, toxic)): Path<(String, String)>,
    b: Bytes,
) -> Result<Response, ApiError> {
    p.toxic(&name, &toxic)?;
    let out = p.update_toxic(&name, &toxic, &body(&b)?)?;
    p.persist().await;
    Ok(ok(StatusCode::OK, out))
}

async fn remove_toxic(
    State(p): State<Proxies>,
    Path((name, toxic)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    p.remove_toxic(&name, &toxic)?;
    p.persist().await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset(State(p): State<Proxies>) -> Result<Response, ApiError> {
    let r = p.reset();
    p.persist().await;
    r?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn version_route() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=utf-8"),
        )],
        format!("{}\n", json!({ "version": version() })),
    )
        .into_response()
}

async fn metrics(State(p): State<Proxies>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        p.metrics_text(),
    )
        .into_response()
}
