//! One error type for every route: [`ApiError`].
//!
//! Handlers return `Result<_, ApiError>`; `?` turns a store error into the right kind. What
//! an error *is* does not depend on the route, how it is *written* does: each router is
//! wrapped with [`shaped`], which writes every error answer of its routes (ours, and axum's
//! own plain-text rejections: a bad path segment, a missing route, a wrong method) in the
//! body its clients expect:
//!
//! | shape | routes | body |
//! |---|---|---|
//! | [`Shape::Jaeger`] | `/api/...` (Jaeger v1) | `{"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": 400, "msg": "..."}]}` |
//! | [`Shape::V3`] | `/api/v3/...` | `{"error": {"grpcCode": 3, "httpCode": 400, "httpStatus": "Bad Request", "message": "..."}}` (grpc-gateway's shape, as Jaeger's HTTP gateway writes it) |
//! | [`Shape::Native`] | `/api/v1/...`, `/ready`, `/metrics`, operator routes | `{"error": "...", "code": 400, "kind": "bad_parameter", "parameter": "step"}` |
//! | [`Shape::Page`] | the web UI | an HTML page in the UI's layout with the message |
//!
//! Kinds and statuses: [`ErrorKind::BadParameter`] 400 (the message names the parameter
//! and a valid value), [`ErrorKind::NotFound`] 404, [`ErrorKind::Unavailable`] 503 with
//! `Retry-After` (retrying can help: an I/O error, a task that could not run),
//! [`ErrorKind::Internal`] 500 (a bug or damaged data; retrying does not help). Bad input
//! is the client's error: it is answered, not logged as ours; 500s and 503s are logged.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use faultline_store::StoreError;

/// What went wrong, which decides the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A parameter or the request is invalid (400).
    BadParameter,
    /// What was asked for does not exist (404).
    NotFound,
    /// The request conflicts with what exists (409): a name taken, a thing owned elsewhere.
    Conflict,
    /// Retrying later can help (503 with `Retry-After`).
    Unavailable,
    /// A bug or damaged data (500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadParameter => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The name in native answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadParameter => "bad_parameter",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The gRPC code (for api_v3's grpc-gateway shape).
    fn grpc_code(self) -> u32 {
        match self {
            Self::BadParameter => 3,
            Self::NotFound => 5,
            Self::Conflict => 6,
            Self::Unavailable => 14,
            Self::Internal => 13,
        }
    }

    fn from_status(s: StatusCode) -> Self {
        match s.as_u16() {
            404 | 405 => Self::NotFound,
            400..=499 => Self::BadParameter,
            503 => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

/// How long clients are told to wait before retrying an unavailable answer.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An error answer of any route.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    kind: ErrorKind,
    /// Overrides the kind's status (405 for a wrong method, 413, ...).
    status: Option<StatusCode>,
    message: String,
    parameter: Option<String>,
    retry_after: Option<Duration>,
    partial: Vec<String>,
    /// Not logged (an expected answer, such as `/ready` while starting).
    quiet: bool,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            message: message.into(),
            parameter: None,
            retry_after: (kind == ErrorKind::Unavailable).then_some(RETRY_AFTER),
            partial: Vec::new(),
            quiet: false,
        }
    }

    /// An expected answer that is not worth a log line (a readiness probe while starting).
    #[must_use]
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Parameter `name` is invalid; `message` says why and what a valid value looks like.
    pub fn bad_parameter(name: &str, message: impl Into<String>) -> Self {
        Self {
            parameter: Some(name.to_string()),
            ..Self::new(ErrorKind::BadParameter, message)
        }
    }

    /// The request is invalid as a whole (no single parameter to blame).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadParameter, message)
    }

    /// What was asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// The request conflicts with what exists (409).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// Retrying after [`RETRY_AFTER`] can help.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// A bug or damaged data.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The answer may be wrong because data is missing (a trace not found while part of
    /// the store is unreadable): the reasons travel with the error.
    #[must_use]
    pub fn with_partial(mut self, reasons: Vec<String>) -> Self {
        self.partial = reasons;
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The parameter to blame, if one is.
    pub fn parameter(&self) -> Option<&str> {
        self.parameter.as_deref()
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(self.kind.status())
    }

    /// The answer in `shape`.
    pub fn render(&self, shape: Shape) -> Response {
        let status = self.status();
        let mut headers = HeaderMap::new();
        if let Some(d) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
        crate::mark_partial(&mut headers, &self.partial);
        let code = status.as_u16();
        let mut resp = match shape {
            Shape::Jaeger => {
                let mut body = json!({"data": null, "total": 0, "limit": 0, "offset": 0,
                    "errors": [{"code": code, "msg": self.message}]});
                if !self.partial.is_empty() {
                    body["partial"] = json!({"complete": false, "reasons": self.partial});
                }
                (status, headers, Json(body)).into_response()
            }
            Shape::V3 => {
                let body = json!({"error": {
                    "grpcCode": self.kind.grpc_code(), "httpCode": code,
                    "httpStatus": status.canonical_reason().unwrap_or(""),
                    "message": self.message,
                }});
                (status, headers, Json(body)).into_response()
            }
            Shape::Native => {
                let mut body =
                    json!({"error": self.message, "code": code, "kind": self.kind.as_str()});
                if let Some(p) = &self.parameter {
                    body["parameter"] = json!(p);
                }
                if !self.partial.is_empty() {
                    body["partialReasons"] = json!(self.partial);
                }
                (status, headers, Json(body)).into_response()
            }
            Shape::Page(page) => {
                let title = status.canonical_reason().unwrap_or("Error");
                (
                    status,
                    headers,
                    Html(page(code, title, &self.message, &self.partial)),
                )
                    .into_response()
            }
        };
        resp.extensions_mut().insert(Rendered);
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            // The disk or the OS refused (EIO, EMFILE, ENOSPC on a read buffer): retrying
            // can help, and the status page says more.
            StoreError::Io { .. } => Self::unavailable(format!("the store cannot read: {e}")),
            StoreError::Observer(_) => Self::unavailable(e.to_string()),
            // ClickHouse unreachable or refusing: retrying can help.
            StoreError::Backend(_) => Self::unavailable(e.to_string()),
            StoreError::Corrupt { .. } | StoreError::Manifest { .. } | StoreError::Encode(_) => {
                Self::internal(e.to_string())
            }
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        if e.is_cancelled() {
            Self::unavailable("the query was cancelled because faultline is shutting down")
        } else {
            Self::internal(format!("the query failed: {e}"))
        }
    }
}

impl From<crate::gate::Failed> for ApiError {
    fn from(e: crate::gate::Failed) -> Self {
        match e {
            crate::gate::Failed::Join(e) => e.into(),
            crate::gate::Failed::Panicked => Self::internal(format!("the query failed: {e}")),
            // Counted in /metrics and logged once in a while by the lane, not per answer.
            crate::gate::Failed::Busy { .. } => Self::unavailable(e.to_string()).quiet(),
        }
    }
}

impl IntoResponse for ApiError {
    /// Native shape unless the router says otherwise (see [`shaped`]).
    fn into_response(self) -> Response {
        match self.kind {
            _ if self.quiet => {}
            ErrorKind::Internal | ErrorKind::Unavailable => {
                tracing::warn!(status = self.status().as_u16(), error = %self.message, "answered with an error")
            }
            ErrorKind::BadParameter | ErrorKind::NotFound | ErrorKind::Conflict => {}
        }
        let mut resp = self.render(Shape::Native);
        resp.extensions_mut().insert(self);
        resp
    }
}

/// Marks a response rendered by [`ApiError::render`] (so [`shaped`] knows which are ours).
#[derive(Debug, Clone, Copy)]
struct Rendered;

/// Renders an HTML error page: status code, title, message and partial-data reasons
/// (unescaped; the function escapes them).
pub type PageFn = fn(u16, &str, &str, &[String]) -> String;

/// The body style of a router's error answers (see the module doc).
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// Jaeger v1's envelope.
    Jaeger,
    /// api_v3's grpc-gateway error object.
    V3,
    /// faultline's own JSON.
    Native,
    /// An HTML page in the UI's layout.
    Page(PageFn),
}

/// Writes every error answer of `router`'s routes in `shape`: ours (re-rendered from the
/// [`ApiError`] they carry) and axum's plain-text rejections (wrapped in an `ApiError` of
/// the matching kind, their text as the message).
pub fn shaped<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    shape: Shape,
) -> axum::Router<S> {
    router.layer(axum::middleware::map_response(
        move |resp: Response| async move { reshape(resp, shape).await },
    ))
}

async fn reshape(resp: Response, shape: Shape) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    if let Some(e) = resp.extensions().get::<ApiError>().cloned() {
        return if matches!(shape, Shape::Native) {
            resp
        } else {
            e.render(shape)
        };
    }
    // Pages and JSON a handler wrote itself (a search form with its error, say) stay as
    // they are; axum's rejections and its empty 404 are plain text or nothing.
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|t| t.as_bytes().starts_with(b"text/plain"));
    if resp.extensions().get::<Rendered>().is_some() || !plain {
        return resp;
    }
    // An axum rejection or fallback: text at most a few hundred bytes.
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => {
                "no such route; see the README for the API's routes".to_string()
            }
            StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_string(),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        }
    } else {
        text
    };
    let mut e = ApiError::new(ErrorKind::from_status(status), message);
    e.status = Some(status);
    let mut out = e.render(shape);
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// The JSON a native error answer carries (for tests and clients).
pub fn native_body(e: &ApiError) -> Value {
    let mut body =
        json!({"error": e.message, "code": e.status().as_u16(), "kind": e.kind.as_str()});
    if let Some(p) = &e.parameter {
        body["parameter"] = json!(p);
    }
    body
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn body(resp: Response) -> (StatusCode, HeaderMap, String) {
        let (p, b) = resp.into_parts();
        let bytes = axum::body::to_bytes(b, 1 << 20).await.unwrap();
        (
            p.status,
            p.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    #[test]
    fn store_errors_map_to_statuses() {
        let io = StoreError::Io {
            op: "read",
            path: "/d/blocks/1.parquet".into(),
            source: std::io::Error::other("EIO"),
        };
        let e = ApiError::from(io);
        assert_eq!(
            (e.status(), e.kind()),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable)
        );
        let corrupt = StoreError::Corrupt {
            path: "/d/blocks/1.tidx".into(),
            reason: "bad checksum".into(),
        };
        assert_eq!(
            ApiError::from(corrupt).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ApiError::from(StoreError::Encode("x".into())).kind(),
            ErrorKind::Internal
        );
    }

    #[tokio::test]
    async fn one_error_in_every_shape() {
        let e = ApiError::bad_parameter("limit", "limit=0x is not a whole number of traces");
        let (s, _, b) = body(e.render(Shape::Jaeger)).await;
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            (s.as_u16(), v["errors"][0]["code"].as_u64()),
            (400, Some(400))
        );
        assert!(v["data"].is_null() && v["errors"][0]["msg"].as_str().unwrap().contains("limit"));
        let (_, _, b) = body(e.render(Shape::V3)).await;
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"]["httpCode"], 400);
        assert_eq!(v["error"]["grpcCode"], 3);
        assert_eq!(v["error"]["httpStatus"], "Bad Request");
        let (_, _, b) = body(e.render(Shape::Native)).await;
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["parameter"].as_str()),
            (Some("bad_parameter"), Some("limit"))
        );
        fn page(code: u16, title: &str, msg: &str, _: &[String]) -> String {
            format!("<h1>{code} {title}</h1><p>{msg}</p>")
        }
        let (_, h, b) = body(e.render(Shape::Page(page))).await;
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(b.contains("limit=0x is not a whole number"), "{b}");
        let (s, h, _) = body(ApiError::unavailable("busy").render(Shape::V3)).await;
        assert_eq!(
            (s.as_u16(), h[header::RETRY_AFTER].to_str().unwrap()),
            (503, "1")
        );
    }

    #[tokio::test]
    async fn routers_shape_our_errors_and_axums_rejections() {
        async fn fails() -> Result<String, ApiError> {
            Err(ApiError::not_found("trace not found")
                .with_partial(vec!["block 7 is quarantined".into()]))
        }
        async fn typed(axum::extract::Path(n): axum::extract::Path<u32>) -> String {
            n.to_string()
        }
        let app = shaped(
            axum::Router::new()
                .route("/t", get(fails))
                .route("/n/{n}", get(typed)),
            Shape::Jaeger,
        );
        let call = |uri: &str| {
            let app = app.clone();
            let req = Request::get(uri).body(Body::empty()).unwrap();
            async move { body(app.oneshot(req).await.unwrap()).await }
        };
        let (s, h, b) = call("/t").await;
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            (s.as_u16(), v["errors"][0]["code"].as_u64()),
            (404, Some(404))
        );
        assert_eq!(v["partial"]["reasons"][0], "block 7 is quarantined");
        assert!(h.contains_key("x-faultline-partial"));
        let (s, _, b) = call("/n/abc").await;
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(s.as_u16(), 400);
        assert!(
            v["errors"][0]["msg"].as_str().unwrap().contains("abc") || !b.is_empty(),
            "{b}"
        );
    }
}
