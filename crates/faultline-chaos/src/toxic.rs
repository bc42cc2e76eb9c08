//! Toxics: what a fault is (its type, direction, toxicity and attributes), how it is read
//! from and written as Toxiproxy's JSON, and how an update merges into it.
//!
//! JSON shape, as Toxiproxy 2.x writes it (attributes list every attribute of the type,
//! zeros included, integers):
//! `{"attributes":{"latency":1000,"jitter":0},"name":"latency_downstream","type":"latency","stream":"downstream","toxicity":1}`
//!
//! Types and attributes (units as Toxiproxy's): `latency` (`latency`, `jitter`: ms),
//! `bandwidth` (`rate`: KB/s, 1 KB = 1000 bytes; 0 stalls the direction),
//! `slow_close` (`delay`: ms), `timeout` (`timeout`: ms; 0 never closes), `reset_peer`
//! (`timeout`: ms), `slicer` (`average_size`, `size_variation`: bytes, `delay`: µs),
//! `limit_data` (`bytes`), `noop`, and faultline's `down` (no attributes: an affected
//! connection is closed at once; Toxiproxy has no such toxic and takes a proxy down with
//! `enabled: false`, which faultline supports as well).
//!
//! HTTP faults, faultline's own, for proxies created with `"protocol": "http"`: each acts
//! on the requests matching its `method` (empty: any) and `path` (empty: any; exact, or a
//! prefix when it ends in `*`), on a share of them (`toxicity`, drawn per request):
//! `http_error` (`status`, default 503: answered by the proxy, not forwarded),
//! `http_delay` (`delay` ms before forwarding), `http_abort` (`bytes`: the response body
//! is cut after that many bytes and the connection closed). Their JSON attributes hold
//! `method` and `path` as strings beside the numbers.

use serde_json::{Map, Value, json};

/// Direction of the data a toxic acts on: `upstream` is client to server, `downstream`
/// server to client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// A toxic's type with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Latency {
        latency: u64,
        jitter: u64,
    },
    Bandwidth {
        rate: u64,
    },
    SlowClose {
        delay: u64,
    },
    Timeout {
        timeout: u64,
    },
    ResetPeer {
        timeout: u64,
    },
    Slicer {
        average_size: u64,
        size_variation: u64,
        delay: u64,
    },
    LimitData {
        bytes: u64,
    },
    Noop,
    Down,
    HttpError {
        status: u64,
    },
    HttpDelay {
        delay: u64,
    },
    HttpAbort {
        bytes: u64,
    },
}

/// The type names accepted, for error messages.
pub const TYPES: &str = "latency, bandwidth, slow_close, timeout, reset_peer, slicer, limit_data, noop, down, http_error, http_delay, http_abort";

/// The requests an HTTP fault acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    /// `GET`, `POST`...; empty: any.
    pub method: String,
    /// Exact path, or a prefix ending in `*`; empty: any.
    pub path: String,
}

impl Route {
    /// Whether a request matches.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.method.is_empty() || self.method.eq_ignore_ascii_case(method))
            && (self.path.is_empty()
                || match self.path.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => path == self.path,
                })
    }
}

impl Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Latency { .. } => "latency",
            Kind::Bandwidth { .. } => "bandwidth",
            Kind::SlowClose { .. } => "slow_close",
            Kind::Timeout { .. } => "timeout",
            Kind::ResetPeer { .. } => "reset_peer",
            Kind::Slicer { .. } => "slicer",
            Kind::LimitData { .. } => "limit_data",
            Kind::Noop => "noop",
            Kind::Down => "down",
            Kind::HttpError { .. } => "http_error",
            Kind::HttpDelay { .. } => "http_delay",
            Kind::HttpAbort { .. } => "http_abort",
        }
    }

    /// Whether this is an HTTP fault (for proxies with `"protocol": "http"`).
    pub fn is_http(&self) -> bool {
        matches!(
            self,
            Kind::HttpError { .. } | Kind::HttpDelay { .. } | Kind::HttpAbort { .. }
        )
    }

    /// The type with every attribute 0, or `None` for an unknown type.
    fn zero(type_name: &str) -> Option<Kind> {
        Some(match type_name {
            "latency" => Kind::Latency {
                latency: 0,
                jitter: 0,
            },
            "bandwidth" => Kind::Bandwidth { rate: 0 },
            "slow_close" => Kind::SlowClose { delay: 0 },
            "timeout" => Kind::Timeout { timeout: 0 },
            "reset_peer" => Kind::ResetPeer { timeout: 0 },
            "slicer" => Kind::Slicer {
                average_size: 0,
                size_variation: 0,
                delay: 0,
            },
            "limit_data" => Kind::LimitData { bytes: 0 },
            "noop" => Kind::Noop,
            "down" => Kind::Down,
            "http_error" => Kind::HttpError { status: 503 },
            "http_delay" => Kind::HttpDelay { delay: 0 },
            "http_abort" => Kind::HttpAbort { bytes: 0 },
            _ => return None,
        })
    }

    /// The attributes as `(name, value)`, in Toxiproxy's order.
    pub fn attributes(&self) -> Vec<(&'static str, u64)> {
        match *self {
            Kind::Latency { latency, jitter } => vec![("latency", latency), ("jitter", jitter)],
            Kind::Bandwidth { rate } => vec![("rate", rate)],
            Kind::SlowClose { delay } => vec![("delay", delay)],
            Kind::Timeout { timeout } | Kind::ResetPeer { timeout } => vec![("timeout", timeout)],
            Kind::Slicer {
                average_size,
                size_variation,
                delay,
            } => vec![
                ("average_size", average_size),
                ("size_variation", size_variation),
                ("delay", delay),
            ],
            Kind::LimitData { bytes } | Kind::HttpAbort { bytes } => vec![("bytes", bytes)],
            Kind::HttpError { status } => vec![("status", status)],
            Kind::HttpDelay { delay } => vec![("delay", delay)],
            Kind::Noop | Kind::Down => vec![],
        }
    }

    fn set(&mut self, name: &str, v: u64) {
        match (self, name) {
            (Kind::Latency { latency, .. }, "latency") => *latency = v,
            (Kind::Latency { jitter, .. }, "jitter") => *jitter = v,
            (Kind::Bandwidth { rate }, "rate") => *rate = v,
            (Kind::SlowClose { delay } | Kind::HttpDelay { delay }, "delay") => *delay = v,
            (Kind::HttpError { status }, "status") => *status = v,
            (Kind::HttpAbort { bytes }, "bytes") => *bytes = v,
            (Kind::Timeout { timeout } | Kind::ResetPeer { timeout }, "timeout") => *timeout = v,
            (Kind::Slicer { average_size, .. }, "average_size") => *average_size = v,
            (Kind::Slicer { size_variation, .. }, "size_variation") => *size_variation = v,
            (Kind::Slicer { delay, .. }, "delay") => *delay = v,
            (Kind::LimitData { bytes }, "bytes") => *bytes = v,
            _ => {}
        }
    }

    /// Lays `attrs` over the current values: keys present change, others stay, unknown
    /// keys are ignored (as Toxiproxy does).
    fn merge(&mut self, attrs: &Map<String, Value>) -> Result<(), ToxicError> {
        let names: Vec<&'static str> = self.attributes().iter().map(|(n, _)| *n).collect();
        for name in names {
            let Some(v) = attrs.get(name) else { continue };
            let n = v.as_u64().ok_or_else(|| {
                ToxicError::BadRequest(format!(
                    "bad request body: attribute {name} of a {} toxic must be a whole number of at least 0, got {v}",
                    self.type_name()
                ))
            })?;
            self.set(name, n);
        }
        self.check()
    }

    /// Values that would make a toxic misbehave (Toxiproxy crashes on some of them).
    fn check(&self) -> Result<(), ToxicError> {
        if let Kind::HttpError { status } = *self
            && !(100..=599).contains(&status)
        {
            return Err(ToxicError::BadRequest(format!(
                "http_error toxic: status {status} is not an HTTP status (100 to 599)"
            )));
        }
        if let Kind::Slicer {
            average_size,
            size_variation,
            ..
        } = *self
        {
            if average_size == 0 {
                return Err(ToxicError::BadRequest(
                    "slicer toxic: average_size must be at least 1 byte".into(),
                ));
            }
            if size_variation >= average_size {
                return Err(ToxicError::BadRequest(format!(
                    "slicer toxic: size_variation ({size_variation}) must be smaller than average_size ({average_size})"
                )));
            }
        }
        Ok(())
    }
}

/// A toxic on a proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    pub name: String,
    pub kind: Kind,
    pub stream: Stream,
    /// Share of connections (drawn per connection and direction) the toxic acts on; for
    /// HTTP faults, share of matching requests (drawn per request).
    pub toxicity: f32,
    /// The requests an HTTP fault acts on (empty for the others).
    pub route: Route,
}

/// Reads an HTTP fault's `method` and `path` attributes over `route`.
fn merge_route(route: &mut Route, attrs: &Map<String, Value>) -> Result<(), ToxicError> {
    for (key, slot) in [("method", &mut route.method), ("path", &mut route.path)] {
        match attrs.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => *slot = s.clone(),
            Some(other) => {
                return Err(ToxicError::BadRequest(format!(
                    "bad request body: attribute {key} of an HTTP fault must be a string, got {other}"
                )));
            }
        }
    }
    if !route.method.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(ToxicError::BadRequest(format!(
            "HTTP fault: method {:?} is not an HTTP method such as GET",
            route.method
        )));
    }
    if !(route.path.is_empty() || route.path.starts_with('/') || route.path == "*") {
        return Err(ToxicError::BadRequest(format!(
            "HTTP fault: path {:?} must start with / (a trailing * matches a prefix)",
            route.path
        )));
    }
    Ok(())
}

/// A refused toxic request, with Toxiproxy's status and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToxicError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid toxic type")]
    InvalidType(String),
    #[error("stream was invalid, can be either upstream or downstream")]
    InvalidStream,
}

impl Toxic {
    /// Reads a toxic to create from Toxiproxy's JSON: `type` required, `stream` default
    /// `downstream`, `name` default `TYPE_STREAM`, `toxicity` default 1, attributes
    /// default 0.
    pub fn parse(v: &Value) -> Result<Toxic, ToxicError> {
        let obj = v.as_object().ok_or_else(|| {
            ToxicError::BadRequest(format!(
                "bad request body: a toxic is a JSON object, got {v}"
            ))
        })?;
        let attrs = match obj.get("attributes") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(ToxicError::BadRequest(format!(
                    "bad request body: attributes must be an object, got {other}"
                )));
            }
        };
        let stream = match obj.get("stream") {
            None | Some(Value::Null) => Stream::Downstream,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("upstream") => Stream::Upstream,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("downstream") => Stream::Downstream,
            Some(_) => return Err(ToxicError::InvalidStream),
        };
        let type_name = obj.get("type").and_then(Value::as_str).unwrap_or_default();
        let mut kind =
            Kind::zero(type_name).ok_or_else(|| ToxicError::InvalidType(type_name.to_string()))?;
        let name = match obj.get("name") {
            None | Some(Value::Null) => format!("{type_name}_{}", stream.as_str()),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) => format!("{type_name}_{}", stream.as_str()),
            Some(other) => {
                return Err(ToxicError::BadRequest(format!(
                    "bad request body: name must be a string, got {other}"
                )));
            }
        };
        let toxicity = toxicity(obj.get("toxicity"), 1.0)?;
        kind.merge(&attrs)?;
        let mut route = Route::default();
        if kind.is_http() {
            merge_route(&mut route, &attrs)?;
        }
        Ok(Toxic {
            name,
            kind,
            stream,
            toxicity,
            route,
        })
    }

    /// Merges an update: present attributes and `toxicity` change; name, type and stream
    /// cannot.
    pub fn update(&self, v: &Value) -> Result<Toxic, ToxicError> {
        let obj = v.as_object().ok_or_else(|| {
            ToxicError::BadRequest(format!(
                "bad request body: a toxic is a JSON object, got {v}"
            ))
        })?;
        let mut next = self.clone();
        next.toxicity = toxicity(obj.get("toxicity"), self.toxicity)?;
        match obj.get("attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                next.kind.merge(m)?;
                if next.kind.is_http() {
                    merge_route(&mut next.route, m)?;
                }
            }
            Some(other) => {
                return Err(ToxicError::BadRequest(format!(
                    "bad request body: attributes must be an object, got {other}"
                )));
            }
        }
        Ok(next)
    }

    /// Toxiproxy's JSON for this toxic.
    pub fn to_json(&self) -> Value {
        let mut attrs: Map<String, Value> = self
            .kind
            .attributes()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        if self.kind.is_http() {
            attrs.insert("method".into(), Value::from(self.route.method.clone()));
            attrs.insert("path".into(), Value::from(self.route.path.clone()));
        }
        json!({
            "attributes": attrs,
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream.as_str(),
            "toxicity": self.toxicity,
        })
    }
}

fn toxicity(v: Option<&Value>, default: f32) -> Result<f32, ToxicError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(1.0) as f32),
        Some(other) => Err(ToxicError::BadRequest(format!(
            "bad request body: toxicity must be a number between 0 and 1, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Toxic, ToxicError> {
        Toxic::parse(&v)
    }

    #[test]
    fn defaults_follow_toxiproxy() {
        let t = parse(json!({"type": "latency", "attributes": {"latency": 100}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.name, "latency_downstream");
        assert_eq!(t.stream, Stream::Downstream);
        assert_eq!(t.toxicity, 1.0);
        assert_eq!(
            t.to_json(),
            json!({"attributes": {"latency": 100, "jitter": 0}, "name": "latency_downstream",
                   "type": "latency", "stream": "downstream", "toxicity": 1.0})
        );
        let up = parse(json!({"type": "limit_data", "stream": "UPSTREAM"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (up.stream, up.name.as_str()),
            (Stream::Upstream, "limit_data_upstream")
        );
    }

    #[test]
    fn bad_toxics_are_refused_with_toxiproxys_messages() {
        let cases = [
            (json!({"type": "gremlin"}), "invalid toxic type"),
            (json!({}), "invalid toxic type"),
            (
                json!({"type": "latency", "stream": "sideways"}),
                "stream was invalid, can be either upstream or downstream",
            ),
            (
                json!({"type": "latency", "attributes": {"latency": "100"}}),
                "bad request body: attribute latency of a latency toxic must be a whole number of at least 0, got \"100\"",
            ),
            (
                json!({"type": "bandwidth", "attributes": {"rate": -1}}),
                "bad request body: attribute rate of a bandwidth toxic must be a whole number of at least 0, got -1",
            ),
            (
                json!({"type": "slicer"}),
                "slicer toxic: average_size must be at least 1 byte",
            ),
            (
                json!({"type": "slicer", "attributes": {"average_size": 10, "size_variation": 10}}),
                "slicer toxic: size_variation (10) must be smaller than average_size (10)",
            ),
            (
                json!({"type": "latency", "toxicity": "all"}),
                "bad request body: toxicity must be a number between 0 and 1, got \"all\"",
            ),
        ];
        for (v, want) in cases {
            let got = parse(v.clone()).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), Some(want), "{v}");
        }
    }

    #[test]
    fn http_faults_carry_a_route() {
        let t = parse(json!({"type": "http_error", "toxicity": 0.5,
                             "attributes": {"method": "GET", "path": "/price*"}}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.kind, Kind::HttpError { status: 503 });
        assert!(t.route.matches("get", "/price/7") && !t.route.matches("POST", "/price"));
        assert_eq!(
            t.to_json()["attributes"],
            json!({"status": 503, "method": "GET", "path": "/price*"})
        );
        let u = t
            .update(&json!({"attributes": {"status": 500}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u.kind, u.route.path.as_str()),
            (Kind::HttpError { status: 500 }, "/price*")
        );
        for (v, want) in [
            (
                json!({"type": "http_error", "attributes": {"status": 700}}),
                "status 700 is not an HTTP status",
            ),
            (
                json!({"type": "http_delay", "attributes": {"path": "price"}}),
                "must start with /",
            ),
            (
                json!({"type": "http_abort", "attributes": {"method": 7}}),
                "attribute method of an HTTP fault must be a string",
            ),
        ] {
            let got = parse(v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(got.contains(want), "{got}");
        }
        assert!(Route::default().matches("PUT", "/anything"));
    }

    #[test]
    fn an_update_merges() {
        let t = parse(json!({"type": "latency", "attributes": {"latency": 100, "jitter": 10}}))
            .unwrap_or_else(|e| panic!("{e}"));
        let u = t
            .update(&json!({"attributes": {"latency": 1000}, "type": "timeout", "name": "x"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            u.kind,
            Kind::Latency {
                latency: 1000,
                jitter: 10
            }
        );
        assert_eq!((u.name.as_str(), u.toxicity), ("latency_downstream", 1.0));
        let v = u
            .update(&json!({"toxicity": 0.5}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((v.toxicity, v.kind), (0.5, u.kind));
    }
}
