//! The check on every request, before any body is read: [`protect`] wraps an axum router
//! (any HTTP listener: OTLP/HTTP, Zipkin, sampling, the API and UI, the fault proxy's API)
//! in a layer that looks up the route in [`crate::routes`], checks the bearer token for its
//! scope, and records control actions in the audit log; [`GrpcGuard`] is the same check as
//! a tonic interceptor, on the gRPC metadata.
//!
//! The token is read from `Authorization: Bearer TOKEN`. On the API listener a browser may
//! send it instead as the `faultline_token` cookie (set by the UI's login, `HttpOnly`,
//! `SameSite=Strict`); a request carrying only the cookie is refused for an unsafe method
//! unless it comes from faultline's own pages (`Sec-Fetch-Site: same-origin`, or an
//! `Origin` whose host is the request's `Host`), so another site cannot drive a logged-in
//! browser.
//!
//! Answers: 401 `{"error": "this route needs a bearer token: send Authorization: Bearer
//! TOKEN"}` with `WWW-Authenticate: Bearer realm="faultline"` when the token is missing
//! or unknown; 403 `{"error": "this route needs a token with the read scope"}`. A
//! browser asking for a UI page (not `/api/...`) without a token is sent to
//! `/login?next=PAGE` instead. gRPC answers UNAUTHENTICATED or PERMISSION_DENIED with the
//! same messages.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::audit::{MAX_TARGET, Record, clip, now_ms};
use crate::routes::{Access, Listener, access};
use crate::{Auth, Denied, Identity, Scope};

/// The cookie the UI's login sets.
pub const COOKIE: &str = "faultline_token";

/// Largest JSON body read for the audit record's `object`.
const OBJECT_BODY_MAX: u64 = 64 << 10;

#[derive(Clone)]
struct Guard {
    auth: Auth,
    listener: Listener,
}

/// `router` with every request checked for `listener`'s route map.
pub fn protect(router: Router, auth: &Auth, listener: Listener) -> Router {
    let g = Guard {
        auth: auth.clone(),
        listener,
    };
    router.layer(middleware::from_fn_with_state(g, guard))
}

/// The token after `Bearer ` in an `authorization` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Where a request's token came from.
enum Credential<'a> {
    None,
    Header(&'a str),
    Cookie(&'a str),
}

fn credential(headers: &HeaderMap, listener: Listener) -> Credential<'_> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    {
        return Credential::Header(t);
    }
    match cookie(headers, COOKIE) {
        Some(t) if listener == Listener::Api && !t.is_empty() => Credential::Cookie(t),
        _ => Credential::None,
    }
}

/// Whether a request comes from faultline's own pages (for a cookie on unsafe methods).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin";
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        // No Origin and no Sec-Fetch-Site: not a browser of this decade, which sends
        // one of them on every cross-site POST.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn wants_page(headers: &HeaderMap, method: &Method) -> bool {
    *method == Method::GET
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// The answer to a refused request.
pub fn refusal(d: Denied, scope: Scope) -> Response {
    match d {
        Denied::Missing | Denied::Unknown => {
            let mut r = json_error(
                StatusCode::UNAUTHORIZED,
                "this route needs a bearer token: send Authorization: Bearer TOKEN",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"faultline\""),
            );
            r
        }
        Denied::Scope => json_error(
            StatusCode::FORBIDDEN,
            &format!("this route needs a token with the {scope} scope"),
        ),
    }
}

async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let Access::Needs { scope, control } = access(g.listener, req.method(), req.uri().path())
    else {
        return next.run(req).await;
    };
    let (checked, from_cookie) = match credential(req.headers(), g.listener) {
        Credential::None => (g.auth.check(g.listener, None, scope), false),
        Credential::Header(t) => (g.auth.check(g.listener, Some(t), scope), false),
        Credential::Cookie(t) => (g.auth.check(g.listener, Some(t), scope), true),
    };
    let who = match checked {
        Ok(who) => who,
        Err(d) => {
            if g.listener == Listener::Api
                && d != Denied::Scope
                && !req.uri().path().starts_with("/api/")
                && wants_page(req.headers(), req.method())
            {
                return login_redirect(req.uri());
            }
            if control && d == Denied::Scope {
                let who = credential_name(&g.auth, req.headers(), g.listener);
                g.auth.record(record(&g, &req, who, None, 403)).await;
            }
            return refusal(d, scope);
        }
    };
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if from_cookie && unsafe_method && !same_origin(req.headers()) {
        return json_error(
            StatusCode::FORBIDDEN,
            "a cross-site request cannot use the login cookie; send Authorization: Bearer TOKEN",
        );
    }
    if !control {
        return next.run(req).await;
    }
    let (req, object) = match body_object(req).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (who_name, rec) = (who.0.clone(), record(&g, &req, who.0, object, 0));
    let resp = next.run(req).await;
    tracing::info!(who = %who_name, method = %rec.method, target = %rec.target, status = resp.status().as_u16(), "control action");
    g.auth
        .record(Record {
            status: resp.status().as_u16(),
            ..rec
        })
        .await;
    resp
}

fn credential_name(auth: &Auth, headers: &HeaderMap, l: Listener) -> std::sync::Arc<str> {
    let t = match credential(headers, l) {
        Credential::Header(t) | Credential::Cookie(t) => t,
        Credential::None => "",
    };
    auth.name_of(t).unwrap_or_else(|| "unknown".into())
}

fn record(
    g: &Guard,
    req: &Request,
    who: std::sync::Arc<str>,
    object: Option<String>,
    status: u16,
) -> Record {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<faultline_tls::Peer>>()
        .map(|c| c.0.addr.to_string());
    Record {
        at: now_ms(),
        who: who.to_string(),
        peer,
        listener: g.listener.as_str().to_string(),
        method: req.method().to_string(),
        target: clip(&target, MAX_TARGET),
        object,
        status,
    }
}

/// The `name` of a small JSON body (read after the token was checked), and the request
/// with its body put back.
async fn body_object(req: Request) -> Result<(Request, Option<String>), Box<Response>> {
    let small = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0 && n <= OBJECT_BODY_MAX);
    if !small {
        return Ok((req, None));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, OBJECT_BODY_MAX as usize)
        .await
        .map_err(|_| {
            Box::new(json_error(
                StatusCode::BAD_REQUEST,
                "cannot read the request body (shorter or longer than its Content-Length)",
            ))
        })?;
    let object = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(|n| clip(n, 256)));
    Ok((Request::from_parts(parts, Body::from(bytes)), object))
}

fn login_redirect(uri: &axum::http::Uri) -> Response {
    let next = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let enc: String = next
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/login?next={enc}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The check as a tonic interceptor for OTLP/gRPC (every method needs `ingest`):
/// `InterceptedService::new(service, GrpcGuard::new(&auth))`.
#[derive(Debug, Clone)]
pub struct GrpcGuard {
    auth: Auth,
}

impl GrpcGuard {
    /// The interceptor.
    pub fn new(auth: &Auth) -> Self {
        Self { auth: auth.clone() }
    }
}

impl tonic::service::Interceptor for GrpcGuard {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match self.auth.check(Listener::OtlpGrpc, token, Scope::Ingest) {
            Ok(Identity(_)) => Ok(req),
            Err(Denied::Scope) => Err(tonic::Status::permission_denied(
                "this service needs a token with the ingest scope",
            )),
            Err(_) => Err(tonic::Status::unauthenticated(
                "this service needs a bearer token: send metadata authorization: Bearer TOKEN",
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::{get, post};
    use http_body_util::BodyExt;
    use tonic::service::Interceptor;
    use tower::ServiceExt;

    use super::*;
    use crate::tokens::line;
    use crate::{AuthConfig, Scopes};

    fn auth_with(lines: &[String]) -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let cfg = AuthConfig {
            token_file: Some(path),
            allow_unauthenticated: false,
        };
        let auth = Auth::open(&cfg, None).unwrap();
        let log = crate::audit::AuditLog::open(dir.path(), std::time::Duration::from_secs(86_400))
            .unwrap();
        auth.set_audit(Arc::new(log));
        (dir, auth)
    }

    /// A router whose handlers count the bodies they read.
    fn app(auth: &Auth, reads: Arc<AtomicUsize>) -> Router {
        let r2 = reads.clone();
        let r = Router::new()
            .route("/api/v1/red", get(|| async { "red" }))
            .route(
                "/api/v1/probes",
                post(move |b: axum::body::Bytes| {
                    r2.fetch_add(1, Ordering::SeqCst);
                    async move { (StatusCode::CREATED, b) }
                }),
            )
            .route("/ready", get(|| async { "ready" }))
            .route("/search", get(|| async { "page" }));
        protect(r, auth, Listener::Api)
    }

    async fn call(app: &Router, req: Request) -> (StatusCode, HeaderMap, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn req(method: &str, uri: &str, token: Option<&str>, body: &str) -> Request {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-length", body.len());
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn refusals_come_before_the_body_is_read_and_say_only_what_is_needed() {
        let (_d, auth) = auth_with(&[
            line("reader", Scopes::parse("read").unwrap(), "r"),
            line("prober", Scopes::parse("probes").unwrap(), "p"),
        ]);
        let reads = Arc::new(AtomicUsize::new(0));
        let app = app(&auth, reads.clone());
        let body = r#"{"name":"checkout"}"#;
        let (s, h, b) = call(&app, req("POST", "/api/v1/probes", None, body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(h["www-authenticate"], "Bearer realm=\"faultline\"");
        assert!(b.contains("needs a bearer token"), "{b}");
        // Unknown and missing look the same.
        let (s2, _, b2) = call(&app, req("POST", "/api/v1/probes", Some("zzz"), body)).await;
        assert_eq!((s2, &b2), (StatusCode::UNAUTHORIZED, &b));
        let (s, _, b) = call(&app, req("POST", "/api/v1/probes", Some("r"), body)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&b).unwrap()["error"],
            "this route needs a token with the probes scope"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 0, "no handler read a body");
        let (s, _, b) = call(&app, req("POST", "/api/v1/probes", Some("p"), body)).await;
        assert_eq!((s, b.as_str()), (StatusCode::CREATED, body), "body intact");
        assert_eq!(
            call(&app, req("GET", "/api/v1/red", Some("r"), "")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, req("GET", "/ready", None, "")).await.0,
            StatusCode::OK
        );
        // The audit log has the 403 and the 201, named; not the 401s, not the read.
        let (recs, _) = auth.audit_log().unwrap().recent(10, None);
        let got: Vec<(String, u16, Option<String>)> = recs
            .into_iter()
            .map(|r| (r.who, r.status, r.object))
            .collect();
        assert_eq!(
            got,
            [
                ("prober".to_string(), 201, Some("checkout".to_string())),
                ("reader".to_string(), 403, None)
            ]
        );
    }

    #[tokio::test]
    async fn the_cookie_works_for_reads_and_for_same_origin_writes_only() {
        let (_d, auth) = auth_with(&[line("ops", Scopes::ALL, "o")]);
        let app = app(&auth, Arc::default());
        let with_cookie = |method: &str, uri: &str, extra: Option<(&str, &str)>| {
            let mut b = Request::builder()
                .method(method)
                .uri(uri)
                .header("cookie", "x=1; faultline_token=o");
            if let Some((k, v)) = extra {
                b = b.header(k, v);
            }
            b.body(Body::empty()).unwrap()
        };
        assert_eq!(
            call(&app, with_cookie("GET", "/api/v1/red", None)).await.0,
            StatusCode::OK
        );
        let cross = with_cookie(
            "POST",
            "/api/v1/probes",
            Some(("sec-fetch-site", "cross-site")),
        );
        assert_eq!(call(&app, cross).await.0, StatusCode::FORBIDDEN);
        let same = with_cookie(
            "POST",
            "/api/v1/probes",
            Some(("sec-fetch-site", "same-origin")),
        );
        assert_eq!(call(&app, same).await.0, StatusCode::CREATED);
        // A browser without a token asking for a page goes to the login form; an API
        // client gets the 401.
        let page = |uri: &str| {
            Request::get(uri)
                .header("accept", "text/html,*/*")
                .body(Body::empty())
                .unwrap()
        };
        let (s, h, _) = call(&app, page("/search?x=1&y=%2F")).await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        assert_eq!(h["location"], "/login?next=/search%3Fx%3D1%26y%3D%252F");
        assert_eq!(
            call(&app, page("/api/v1/red")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn grpc_metadata_is_checked_for_ingest() {
        let (_d, auth) = auth_with(&[
            line("sdk", Scopes::parse("ingest").unwrap(), "i"),
            line("reader", Scopes::parse("read").unwrap(), "r"),
        ]);
        let mut g = GrpcGuard::new(&auth);
        let with = |t: Option<&str>| {
            let mut r = tonic::Request::new(());
            if let Some(t) = t {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            r
        };
        assert!(g.call(with(Some("i"))).is_ok());
        assert_eq!(
            g.call(with(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            g.call(with(Some("nope"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            g.call(with(Some("r"))).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn bearer_and_cookie_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; faultline_token=t"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("t"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
