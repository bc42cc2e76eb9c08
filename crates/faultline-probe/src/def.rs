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
//! [probes.http]                 # exactly one of http, tcp and dns
//! url = "https://127.0.0.1:8443/health"   # http:// or https://
//! method = "GET"                # default GET
//! headers = { "x-probe" = "1" }
//! body = ""                     # sent as is
//! expect_status = [200, 204]    # default: any 2xx or 3xx after redirects
//! expect_body = "ok"            # the body must contain it
//! max_redirects = 5             # same host and port only, as [probe_policy] allows (default 5)
//! ca_file = "/etc/ssl/internal-ca.pem"  # https: CAs trusted besides Mozilla's roots
//! tls_expiry_warning_days = 14  # https: warn (and notify once per certificate) when the
//!                               #   earliest certificate of the chain expires sooner;
//!                               #   0 turns it off (default 14)
//! # [probes.tcp]
//! # host = "db.internal"
//! # port = 5432
//! # [probes.dns]
//! # name = "api.example.com"    # the name asked about
//! # record_type = "A"           # A, AAAA, CNAME, MX, NS, TXT, PTR or SRV (default A)
//! # server = "10.0.0.2:53"      # default: the first nameserver in /etc/resolv.conf
//! # expect = ["203.0.113.7"]    # each must be among the answers (as written in a zone
//! #                             #   file: "10 mx.example.com." for MX); empty: any answer
//! # transport = "udp"           # or "tcp"; a truncated UDP answer is asked again over TCP
//! ```
//!
//! A probe only ever connects to the host and port its definition names (for DNS, the
//! server it names or the system's): redirects to anywhere else fail the check instead of
//! being followed (an upgrade from http on port 80 to https on port 443 of the same host
//! is followed). And only to targets the probe policy (`[probe_policy]`, see
//! [`crate::policy`]) allows: [`ProbeDef::validate_with`] refuses a definition whose
//! target the policy refuses (`http.url`'s host, `tcp.host`, `dns.server`), naming the
//! address, the rule and how to allow it; names are judged again by their addresses at
//! every check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

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
    /// A DNS query check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsTarget>,
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

fn default_warning_days() -> u32 {
    14
}

fn default_record_type() -> String {
    "A".into()
}

fn default_transport() -> String {
    "udp".into()
}

/// Record types a DNS probe can ask for.
pub const RECORD_TYPES: [&str; 8] = ["A", "AAAA", "CNAME", "MX", "NS", "TXT", "PTR", "SRV"];

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
    /// A PEM file of CAs trusted besides Mozilla's roots (https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Days before the certificate's expiry to warn (https); 0: never.
    #[serde(default = "default_warning_days")]
    pub tls_expiry_warning_days: u32,
}

/// What a DNS probe asks, of whom, and what it expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsTarget {
    /// The name asked about.
    pub name: String,
    /// The record type.
    #[serde(default = "default_record_type")]
    pub record_type: String,
    /// `address[:port]` of the server; `None`: the first nameserver of /etc/resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Answers that must all be present; empty: any answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<String>,
    /// `udp` or `tcp`.
    #[serde(default = "default_transport")]
    pub transport: String,
}

impl DnsTarget {
    /// The server's address: `server` with port 53 by default.
    pub fn server_addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let Some(s) = &self.server else {
            return Ok(None);
        };
        if let Ok(a) = s.parse::<std::net::SocketAddr>() {
            return Ok(Some(a));
        }
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .map(|ip| Some(std::net::SocketAddr::new(ip, 53)))
            .map_err(|_| {
                format!("{s:?} is not an address; write 10.0.0.2, 10.0.0.2:5353 or [::1]:53")
            })
    }
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

/// A parsed `http://` or `https://` URL: where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 or 443 when not given).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path][?query]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e}); write http://host:port/path"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?} must start with http:// or https://")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Self {
            tls,
            host,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
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
        if self.port == if self.tls { 443 } else { 80 } {
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

    /// The field naming the probe's target, and the host it names: `http.url`'s host,
    /// `tcp.host`, or `dns.server`'s address (`None`: the system's nameserver, which the
    /// probe does not choose).
    pub fn target(&self) -> Option<(&'static str, String)> {
        if let Some(h) = &self.http {
            HttpUrl::parse(&h.url).ok().map(|u| ("http.url", u.host))
        } else if let Some(t) = &self.tcp {
            Some(("tcp.host", t.host.clone()))
        } else {
            let server = self.dns.as_ref()?.server_addr().ok()??;
            Some(("dns.server", server.ip().to_string()))
        }
    }

    /// [`ProbeDef::validate`], then the target against `policy` (see the module doc).
    pub fn validate_with(&self, policy: &Policy) -> Result<(), DefError> {
        self.validate()?;
        match self.target() {
            Some((field, host)) => policy.judge_host(&host).map_err(|r| DefError {
                probe: self.name.clone(),
                field: field.to_string(),
                message: r.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Checks every field; the first problem found is returned. The target is judged
    /// against the probe policy by [`ProbeDef::validate_with`].
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
        match (&self.http, &self.tcp, &self.dns) {
            (Some(h), None, None) => {
                validate_http(h).map_err(|(f, m)| err(&format!("http.{f}"), m))
            }
            (None, Some(t), None) => {
                if t.host.is_empty() {
                    Err(err("tcp.host", "is empty".into()))
                } else if t.port == 0 {
                    Err(err("tcp.port", "must be 1 to 65535".into()))
                } else {
                    Ok(())
                }
            }
            (None, None, Some(d)) => validate_dns(d).map_err(|(f, m)| err(&format!("dns.{f}"), m)),
            (None, None, None) => Err(err(
                "http",
                "a probe needs a target: an [http] table (url, ...), a [tcp] table (host, port) or a [dns] table (name, ...)"
                    .into(),
            )),
            _ => Err(err(
                if self.dns.is_some() { "dns" } else { "tcp" },
                "a probe has one target: give one of http, tcp and dns".into(),
            )),
        }
    }
}

/// Checks a list of definitions (the configuration file's): each valid and allowed by
/// `policy`, each name once.
pub fn check_all(defs: &[ProbeDef], policy: &Policy) -> Result<(), DefError> {
    let mut names = std::collections::HashSet::new();
    for d in defs {
        d.validate_with(policy)?;
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
    if let Some(f) = &h.ca_file {
        if !h.url.starts_with("https://") {
            return Err(("ca_file", "is for https:// URLs only".into()));
        }
        if !std::path::Path::new(f).is_file() {
            return Err(("ca_file", format!("{f:?} is not a readable file")));
        }
    }
    if h.tls_expiry_warning_days > 3650 {
        return Err((
            "tls_expiry_warning_days",
            format!("{} is more than 3650", h.tls_expiry_warning_days),
        ));
    }
    Ok(())
}

fn validate_dns(d: &DnsTarget) -> Result<(), (&'static str, String)> {
    hickory_proto::rr::Name::from_ascii(&d.name)
        .ok()
        .filter(|_| !d.name.is_empty())
        .ok_or_else(|| ("name", format!("{:?} is not a domain name", d.name)))?;
    if !RECORD_TYPES.contains(&d.record_type.to_ascii_uppercase().as_str()) {
        return Err((
            "record_type",
            format!(
                "{:?}: write one of {}",
                d.record_type,
                RECORD_TYPES.join(", ")
            ),
        ));
    }
    d.server_addr().map_err(|m| ("server", m))?;
    if !matches!(d.transport.as_str(), "udp" | "tcp") {
        return Err(("transport", format!("{:?}: write udp or tcp", d.transport)));
    }
    if d.expect.iter().any(|e| e.trim().is_empty()) {
        return Err(("expect", "an expected answer is empty".into()));
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
                ca_file: None,
                tls_expiry_warning_days: 14,
            }),
            tcp: None,
            dns: None,
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
        assert!(http("https://h/").validate().is_ok());
        let mut d = http("https://h/");
        d.http.as_mut().unwrap().ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(field(&d), "http.ca_file");
        let dns = |f: &dyn Fn(&mut DnsTarget)| {
            let mut t = DnsTarget {
                name: "ok.probe.test".into(),
                record_type: "A".into(),
                server: Some("127.0.0.1:5353".into()),
                expect: vec!["127.0.0.1".into()],
                transport: "udp".into(),
            };
            f(&mut t);
            ProbeDef {
                http: None,
                dns: Some(t),
                ..http("http://h/")
            }
        };
        assert!(dns(&|_| {}).validate().is_ok());
        assert_eq!(field(&dns(&|t| t.name = "a..b".into())), "dns.name");
        assert_eq!(
            field(&dns(&|t| t.record_type = "SOAP".into())),
            "dns.record_type"
        );
        assert_eq!(
            field(&dns(&|t| t.server = Some("ns1".into()))),
            "dns.server"
        );
        assert_eq!(
            field(&dns(&|t| t.transport = "quic".into())),
            "dns.transport"
        );
        assert_eq!(field(&dns(&|t| t.expect = vec![" ".into()])), "dns.expect");
        assert_eq!(
            dns(&|t| t.server = Some("10.0.0.2".into()))
                .dns
                .unwrap()
                .server_addr(),
            Ok(Some("10.0.0.2:53".parse().unwrap()))
        );
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
    fn targets_the_policy_refuses_are_refused_naming_field_address_and_rule() {
        use crate::policy::{Policy, PolicyConfig};
        let p = Policy::default();
        let refused = |d: &ProbeDef| d.validate_with(&p).unwrap_err();
        let e = refused(&http("http://169.254.169.254/latest/meta-data/"));
        assert_eq!((e.probe.as_str(), e.field.as_str()), ("p", "http.url"));
        assert!(
            e.to_string().starts_with(
                "probe \"p\": http.url: 169.254.169.254 is refused (built-in rule \"metadata\")"
            ),
            "{e}"
        );
        assert!(e.message.contains("[probe_policy] exempt"), "{e}");
        let e = refused(&http("http://[::ffff:169.254.169.254]:8080/"));
        assert_eq!(e.field, "http.url");
        assert!(
            e.message.contains("the IPv4 address 169.254.169.254"),
            "{e}"
        );
        let e = refused(&http(
            "https://metadata.google.internal/computeMetadata/v1/",
        ));
        assert!(e.message.contains("names a cloud metadata service"), "{e}");
        let tcp = |host: &str| ProbeDef {
            http: None,
            tcp: Some(TcpTarget {
                host: host.into(),
                port: 80,
            }),
            ..http("http://h/")
        };
        assert_eq!(refused(&tcp("fe80::1")).field, "tcp.host");
        assert_eq!(refused(&tcp("0.0.0.0")).field, "tcp.host");
        let dns = |server: Option<&str>| ProbeDef {
            http: None,
            dns: Some(DnsTarget {
                name: "example.com".into(),
                record_type: "A".into(),
                server: server.map(str::to_string),
                expect: Vec::new(),
                transport: "udp".into(),
            }),
            ..http("http://h/")
        };
        assert_eq!(
            refused(&dns(Some("169.254.169.254:53"))).field,
            "dns.server"
        );
        // The system's nameserver is not the probe's choice, so it is not judged.
        assert!(dns(None).validate_with(&p).is_ok());
        assert!(dns(Some("127.0.0.53")).validate_with(&p).is_ok());
        assert!(http("http://127.0.0.1:8080/").validate_with(&p).is_ok());
        assert!(tcp("db.internal").validate_with(&p).is_ok());
        // A bad field is reported before the target is judged.
        let mut d = http("http://169.254.169.254/");
        d.interval_secs = 0;
        assert_eq!(d.validate_with(&p).unwrap_err().field, "interval_secs");

        let only_ten = Policy::new(&PolicyConfig {
            allow: vec!["10.0.0.0/8".into()],
            ..PolicyConfig::default()
        })
        .unwrap();
        let e = check_all(&[http("http://127.0.0.1:9/")], &only_ten).unwrap_err();
        assert!(
            e.message.contains("is refused ([probe_policy] allow)"),
            "{e}"
        );
        assert!(check_all(&[http("http://10.1.1.1:9/")], &only_ten).is_ok());
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
        let u = HttpUrl::parse("https://example.test/x").unwrap();
        assert_eq!(
            (u.tls, u.port, u.authority().as_str()),
            (true, 443, "example.test")
        );
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
