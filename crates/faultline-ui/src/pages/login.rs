//! `/login`: the UI's login for read access when tokens are on (`faultline_auth`). The
//! form takes a token; `POST /login` checks it for the `read` scope and keeps it in the
//! `faultline_token` cookie (`HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` when the
//! request came over TLS: our listener's (`[tls]`), or a proxy's in front that says
//! `X-Forwarded-Proto: https`), then sends the browser to `next` (a path on this server only). `POST /logout`
//! clears the cookie.
//!
//! CSRF: the cookie is `SameSite=Strict`, so another site's page never sends it; the guard
//! refuses the cookie on unsafe methods unless the request comes from faultline's own
//! pages (`Sec-Fetch-Site`/`Origin`), and the login and logout forms are checked the same
//! way, so another site cannot log a browser in or out either. A wrong token is answered
//! 401 like any other (and counted in `faultline_auth_failures_total`).

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use faultline_api::params::get as param;
use faultline_api::{ApiError, ApiState};
use faultline_auth::guard::{COOKIE, same_origin};
use faultline_auth::{Denied, Listener, Scope};

use crate::html::{esc, page as layout};

/// `next` when it is a path on this server, `/` otherwise (no open redirect).
fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

fn form(next: &str, message: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(m) = message {
        body.push_str(&format!("<p class=err id=error>{}</p>", esc(m)));
    }
    body.push_str(&format!(
        "<form class=q id=login method=post action=\"/login\"><input type=hidden name=next value=\"{}\"><label>Token <input type=password name=token autocomplete=current-password required autofocus></label> <button>Log in</button></form><p class=muted>A token with the <b>read</b> scope (<code>faultline token new NAME --scopes read</code>). It is kept in an HttpOnly cookie for this browser session.</p><form method=post action=\"/logout\"><button>Log out</button></form>",
        esc(next)
    ));
    body
}

/// `GET /login?next=PATH`.
pub(crate) async fn page(Query(p): crate::pages::Params) -> Response {
    let next = local(param(&p, "next"));
    Html(layout("Log in", &[], None, &form(&next, None))).into_response()
}

/// The login form's fields.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Whether the browser reached us over TLS: our own listener's (the connection's
/// [`Peer`](faultline_tls::Peer)), or a proxy's in front of us (`X-Forwarded-Proto`).
fn tls(headers: &HeaderMap, ext: &axum::http::Extensions) -> bool {
    ext.get::<axum::extract::ConnectInfo<faultline_tls::Peer>>()
        .is_some_and(|c| c.0.tls)
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, secure: bool, clear: bool) -> Option<HeaderValue> {
    let mut c = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    if clear {
        c.push_str("; Max-Age=0");
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).ok()
}

fn see_other(to: &str, set_cookie: Option<HeaderValue>) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = set_cookie {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

fn refused(status: StatusCode, next: &str, message: &str) -> Response {
    let html = layout("Log in", &[], None, &form(next, Some(message)));
    (status, Html(html)).into_response()
}

/// `POST /login`.
pub(crate) async fn login(
    State(st): State<ApiState>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    Form(f): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let next = local(f.next.as_deref());
    if !same_origin(&headers) {
        return Ok(refused(
            StatusCode::FORBIDDEN,
            &next,
            "This form must be sent from faultline's own login page.",
        ));
    }
    let Some(auth) = st.auth.as_ref().filter(|a| a.enabled()) else {
        return Ok(see_other(&next, None)); // tokens are off: nothing to keep
    };
    let token = f.token.trim();
    // A cookie value cannot hold spaces, quotes, commas, semicolons or backslashes.
    let cookie_safe = token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'));
    if !cookie_safe {
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            &next,
            "This token cannot be kept in a cookie; send it as an Authorization header instead.",
        ));
    }
    Ok(match auth.check(Listener::Api, Some(token), Scope::Read) {
        Ok(_) => see_other(&next, cookie(token, tls(&headers, &ext), false)),
        Err(Denied::Scope) => refused(
            StatusCode::FORBIDDEN,
            &next,
            "This token does not have the read scope.",
        ),
        Err(_) => refused(
            StatusCode::UNAUTHORIZED,
            &next,
            "This token is not accepted.",
        ),
    })
}

/// `POST /logout`.
pub(crate) async fn logout(headers: HeaderMap, ext: axum::http::Extensions) -> Response {
    if !same_origin(&headers) {
        return refused(
            StatusCode::FORBIDDEN,
            "/",
            "This form must be sent from faultline's own pages.",
        );
    }
    see_other("/login", cookie("", tls(&headers, &ext), true))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(local(Some("/search?x=1")), "/search?x=1");
        for bad in ["//evil.example/x", "https://evil.example", "/\\evil", "x"] {
            assert_eq!(local(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local(None), "/");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let c = cookie("t", false, false).unwrap();
        assert_eq!(c, "faultline_token=t; Path=/; HttpOnly; SameSite=Strict");
        let c = cookie("t", true, false).unwrap();
        assert!(c.to_str().unwrap().ends_with("; Secure"));
        let c = cookie("", false, true).unwrap();
        assert!(c.to_str().unwrap().contains("Max-Age=0"));
    }
}
