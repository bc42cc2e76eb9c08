//! Probe definitions: what a probe calls, how often, and what counts as success; and their
//! validation, whose errors name the field that is wrong. The same shape is read from the
//! configuration file (`[[probes]]`) and from the API's JSON:
//!
//! ```toml
//! [[probes]]
//! name = "checkout-health"      # letters, digits, '.', '_' and '-'; at most 64
//! interval_secs = 30            # 1 to 86400 (default 60)
//! timeout_secs = 5.0            # more than 0, at most the interval (default 10, or the interval)
//! retries = 1                   # failed checks in a row before the probe is down (default 0)
//! paused = false
//! [probes.http]                 # exactly one of http and tcp
//! url = "http://127.0.0.1:8080/health"
//! method = "GET"                # default GET
//! headers = { "x-probe" = "1" }
//! body = ""                     # sent as is
//! expect_status = [200, 204]    # default: any 2xx or 3xx after redirects
//! expect_body = "ok"            # the body must contain it
//! max_redirects = 5             # followed only to the same host and port (default 5)
//! # [probes.tcp]
//! # host = "db.internal"
//! # port = 5432
//! ```
//!
//! A probe only ever connects to the host and port its definition names: redirects to
//! anywhere else fail the check instead of being followed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest probe name.
pub const MAX_NAME: usize = 64;
/// Longest interval: a day.
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// One probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeDef {
    /// Unique name.
    pub name: String,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Seconds a check may take; `None`: 10, or the interval if shorter.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Failed checks in a row before the probe counts as down.
    #[serde(default)]
    pub retries: u32,
    /// Paused probes are kept but not run.
    #[serde(default)]
    pub paused: bool,
    /// An HTTP check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTarget>,
    /// A TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpTarget>,
}

fn default_interval() -> u64 {
    60
}

fn default_method() -> String {
    "GET".into()
}

fn default_redirects() -> u8 {
    5
}

/// What an HTTP probe calls and expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// `http://host[:port]/path?query`.
    pub url: String,
    /// Request method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Accepted status codes; empty: any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
    /// Text the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// Redirects followed (same host and port only).
    #[serde(default = "default_redirects")]
    pub max_redirects: u8,
}

/// What a TCP probe connects to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A definition that cannot be used: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("probe {probe:?}: {field}: {message}")]
pub struct DefError {
    /// The probe's name (as given).
    pub probe: String,
    /// The field, as written in the definition (`http.url`).
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// A parsed `http://` URL: where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 when not given).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path][?query]`; `https` is refused with what to do.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e}); write http://host:port/path"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{url:?}: https probes are not supported by this build yet; probe the service over http, or its port with a tcp probe"
                ));
            }
            _ => return Err(format!("{url:?} must start with http://")),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Self {
            host,
            port: uri.port_u16().unwrap_or(80),
            path: if path.is_empty() { "/".into() } else { path },
        })
    }

    /// `host:port` as the `Host` header wants it.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl ProbeDef {
    /// The timeout in effect.
    pub fn timeout(&self) -> std::time::Duration {
        let secs = self
            .timeout_secs
            .unwrap_or_else(|| (self.interval_secs as f64).min(10.0));
        std::time::Duration::from_secs_f64(secs)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), DefError> {
        let err = |field: &str, message: String| DefError {
            probe: self.name.clone(),
            field: field.to_string(),
            message,
        };
        if self.name.is_empty()
            || self.name.len() > MAX_NAME
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(err(
                "name",
                format!(
                    "must be 1 to {MAX_NAME} letters, digits, '.', '_' or '-' (it appears in URLs and metric labels)"
                ),
            ));
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&self.interval_secs) {
            return Err(err(
                "interval_secs",
                format!(
                    "{} is out of range; write 1 to {MAX_INTERVAL_SECS} seconds",
                    self.interval_secs
                ),
            ));
        }
        if let Some(t) = self.timeout_secs
            && !(t > 0.0 && t <= self.interval_secs as f64)
        {
            return Err(err(
                "timeout_secs",
                format!(
                    "{t} must be more than 0 and at most the interval ({} s), so that checks of one probe never overlap",
                    self.interval_secs
                ),
            ));
        }
        if self.retries > 100 {
            return Err(err("retries", format!("{} is more than 100", self.retries)));
        }
        match (&self.http, &self.tcp) {
            (Some(h), None) => validate_http(h).map_err(|(f, m)| err(&format!("http.{f}"), m)),
            (None, Some(t)) => {
                if t.host.is_empty() {
                    Err(err("tcp.host", "is empty".into()))
                } else if t.port == 0 {
                    Err(err("tcp.port", "must be 1 to 65535".into()))
                } else {
                    Ok(())
                }
            }
            (None, None) => Err(err(
                "http",
                "a probe needs a target: an [http] table (url, ...) or a [tcp] table (host, port)"
                    .into(),
            )),
            (Some(_), Some(_)) => Err(err(
                "tcp",
                "a probe has one target: give either http or tcp, not both".into(),
            )),
        }
    }
}

/// [`check_all`], giving the list back when it passes.
pub fn checked(list: Vec<ProbeDef>) -> Result<Vec<ProbeDef>, DefError> {
    check_all(&list).map(|()| list)
}

/// Checks a list of definitions (the configuration file's): each valid, each name once.
pub fn check_all(defs: &[ProbeDef]) -> Result<(), DefError> {
    let mut names = std::collections::HashSet::new();
    for d in defs {
        d.validate()?;
        if !names.insert(d.name.as_str()) {
            return Err(DefError {
                probe: d.name.clone(),
                field: "name".into(),
                message: "is used by another probe; names are unique".into(),
            });
        }
    }
    Ok(())
}

fn validate_http(h: &HttpTarget) -> Result<(), (&'static str, String)> {
    HttpUrl::parse(&h.url).map_err(|m| ("url", m))?;
    hyper::Method::from_bytes(h.method.as_bytes())
        .map_err(|_| ("method", format!("{:?} is not an HTTP method", h.method)))?;
    for (k, v) in &h.headers {
        hyper::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ("headers", format!("{k:?} is not a header name")))?;
        hyper::header::HeaderValue::from_str(v).map_err(|_| {
            (
                "headers",
                format!("the value of {k:?} is not a valid header value"),
            )
        })?;
        if k.eq_ignore_ascii_case("host") || k.eq_ignore_ascii_case("traceparent") {
            return Err((
                "headers",
                format!("{k:?} is set by the probe itself (from the url, and the probe's trace)"),
            ));
        }
    }
    if let Some(bad) = h.expect_status.iter().find(|s| !(100..=599).contains(*s)) {
        return Err((
            "expect_status",
            format!("{bad} is not an HTTP status (100-599)"),
        ));
    }
    if h.max_redirects > 20 {
        return Err((
            "max_redirects",
            format!("{} is more than 20", h.max_redirects),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn http(url: &str) -> ProbeDef {
        ProbeDef {
            name: "p".into(),
            interval_secs: 10,
            timeout_secs: None,
            retries: 0,
            paused: false,
            http: Some(HttpTarget {
                url: url.into(),
                method: "GET".into(),
                headers: BTreeMap::new(),
                body: None,
                expect_status: Vec::new(),
                expect_body: None,
                max_redirects: 5,
            }),
            tcp: None,
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let field = |d: &ProbeDef| d.validate().unwrap_err().field;
        assert!(http("http://127.0.0.1:8080/x").validate().is_ok());
        assert_eq!(
            field(&ProbeDef {
                name: "a b".into(),
                ..http("http://h/")
            }),
            "name"
        );
        assert_eq!(
            field(&ProbeDef {
                interval_secs: 0,
                ..http("http://h/")
            }),
            "interval_secs"
        );
        assert_eq!(
            field(&ProbeDef {
                timeout_secs: Some(11.0),
                ..http("http://h/")
            }),
            "timeout_secs"
        );
        assert_eq!(field(&http("ftp://h/")), "http.url");
        let e = http("https://h/").validate().unwrap_err();
        assert!(e.message.contains("not supported by this build"), "{e}");
        let mut d = http("http://h/");
        d.http.as_mut().unwrap().method = "GE T".into();
        assert_eq!(field(&d), "http.method");
        let mut d = http("http://h/");
        d.http
            .as_mut()
            .unwrap()
            .headers
            .insert("traceparent".into(), "x".into());
        assert_eq!(field(&d), "http.headers");
        let mut d = http("http://h/");
        d.http.as_mut().unwrap().expect_status = vec![200, 700];
        assert_eq!(field(&d), "http.expect_status");
        let mut d = http("http://h/");
        d.tcp = Some(TcpTarget {
            host: "h".into(),
            port: 1,
        });
        assert_eq!(field(&d), "tcp");
        d.http = None;
        d.tcp = Some(TcpTarget {
            host: "h".into(),
            port: 0,
        });
        assert_eq!(field(&d), "tcp.port");
        d.tcp = None;
        assert_eq!(field(&d), "http");
    }

    #[test]
    fn urls_parse_with_default_port_and_path() {
        let u = HttpUrl::parse("http://example.test").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.test", 80, "/")
        );
        let u = HttpUrl::parse("http://[::1]:8080/a/b?c=d").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/a/b?c=d")
        );
        assert_eq!(u.authority(), "[::1]:8080");
    }

    #[test]
    fn unknown_fields_are_refused_when_read() {
        let e = toml::from_str::<ProbeDef>(
            "name = \"x\"\nintervall_secs = 5\n[tcp]\nhost = \"h\"\nport = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("intervall_secs"), "{e}");
    }
}
