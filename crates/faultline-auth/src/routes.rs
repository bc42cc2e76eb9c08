//! The route → scope map, in one place: which scope each route of each listener needs,
//! which routes stay open, and which are control actions (recorded in the audit log).
//!
//! | listener | routes | scope |
//! |---|---|---|
//! | OTLP/gRPC | `TraceService/Export` | `ingest` |
//! | OTLP/HTTP | `POST /v1/traces` | `ingest` |
//! | Zipkin | `POST /api/v2/spans` | `ingest` |
//! | sampling | `GET /sampling`, `GET /api/sampling` | `ingest`: the SDKs that send spans fetch it, with the token they send spans with |
//! | HTTP API | `GET /ready`, `GET /health` | open: orchestrators' probes carry no token, and they say nothing but up or not |
//! | HTTP API | `GET /public/status`, `GET /ui.js` | open: the public status page is meant for outsiders; the script holds no data |
//! | HTTP API | `GET`/`POST /login`, `POST /logout` | open: the UI's login form (which sets the token cookie) |
//! | HTTP API | `GET /metrics` | `read` (Prometheus sends `authorization` from its scrape config) |
//! | HTTP API | every other `GET` of the query API (Jaeger v1, api_v3, native, status, probes, alerts, checks, experiments, sampling, tracing health), every UI page | `read` |
//! | HTTP API | `POST /api/v1/assertions/run`, `POST /api/v1/consistency/check` | `read` (queries sent as a body; they change nothing) |
//! | HTTP API | `GET /api/v1/audit`, `GET /audit` | `admin` |
//! | HTTP API | `POST /api/v1/dlq/replay`, `PUT`/`DELETE /api/v1/consistency/rules/{name}` | `admin`, control |
//! | HTTP API | `POST /api/v1/probes`, `PUT`/`DELETE /api/v1/probes/{name}`, `POST .../pause`, `POST .../resume` | `probes`, control |
//! | HTTP API | `POST /api/v1/experiments/runs` | `chaos`, control |
//! | HTTP API | any other method | `admin`, control (unknown routes answer 404 after the check) |
//! | fault proxy API | every route (`/proxies...`, `/populate`, `/reset`, `/version`, `/metrics`) | `chaos`; control when not `GET` |
//!
//! The same table is [`TABLE`]; [`access`] answers from it, first match first, then the
//! listener's default. `HEAD` is treated as `GET`.

use axum::http::Method;

use crate::Scope;

/// A listener of `faultline serve` (or `faultline proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// OTLP/gRPC (4317).
    OtlpGrpc,
    /// OTLP/HTTP (4318).
    OtlpHttp,
    /// Zipkin (9411).
    Zipkin,
    /// Jaeger remote sampling (5778).
    Sampling,
    /// The HTTP API and the UI (16686).
    Api,
    /// The fault proxy's Toxiproxy API (8474).
    FaultProxy,
}

impl Listener {
    /// The name in metrics and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::OtlpGrpc => "otlp-grpc",
            Listener::OtlpHttp => "otlp-http",
            Listener::Zipkin => "zipkin",
            Listener::Sampling => "sampling",
            Listener::Api => "api",
            Listener::FaultProxy => "fault-proxy",
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token.
    Open,
    /// A token with `scope`; `control`: a control action, recorded in the audit log.
    Needs {
        /// The scope the token must have.
        scope: Scope,
        /// Whether the request changes what faultline does (audited).
        control: bool,
    },
}

const fn needs(scope: Scope) -> Access {
    Access::Needs {
        scope,
        control: false,
    }
}

const fn control(scope: Scope) -> Access {
    Access::Needs {
        scope,
        control: true,
    }
}

/// One line of the map: a listener, methods (`GET`, `POST|PUT`, or `*` for any), a path
/// pattern whose `{x}` segments match any one segment, and what it needs.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The listener.
    pub listener: Listener,
    /// `|`-separated methods, or `*`.
    pub methods: &'static str,
    /// The path pattern.
    pub path: &'static str,
    /// What a matching request needs.
    pub access: Access,
}

const fn rule(
    listener: Listener,
    methods: &'static str,
    path: &'static str,
    access: Access,
) -> Rule {
    Rule {
        listener,
        methods,
        path,
        access,
    }
}

use Listener::{Api, FaultProxy, OtlpGrpc, OtlpHttp, Sampling, Zipkin};
use Scope::{Admin, Chaos, Ingest, Probes, Read};

/// Every route of every listener, with the scope it needs.
pub const TABLE: &[Rule] = &[
    rule(
        OtlpGrpc,
        "POST",
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        needs(Ingest),
    ),
    rule(OtlpHttp, "POST", "/v1/traces", needs(Ingest)),
    rule(Zipkin, "POST", "/api/v2/spans", needs(Ingest)),
    rule(Sampling, "GET", "/sampling", needs(Ingest)),
    rule(Sampling, "GET", "/api/sampling", needs(Ingest)),
    // The API port: open routes.
    rule(Api, "GET", "/ready", Access::Open),
    rule(Api, "GET", "/health", Access::Open),
    rule(Api, "GET", "/public/status", Access::Open),
    rule(Api, "GET", "/ui.js", Access::Open),
    rule(Api, "GET|POST", "/login", Access::Open),
    rule(Api, "POST", "/logout", Access::Open),
    // Admin.
    rule(Api, "GET", "/api/v1/audit", needs(Admin)),
    rule(Api, "GET", "/audit", needs(Admin)),
    rule(Api, "POST", "/api/v1/dlq/replay", control(Admin)),
    rule(
        Api,
        "PUT|DELETE",
        "/api/v1/consistency/rules/{name}",
        control(Admin),
    ),
    // Probes.
    rule(Api, "POST", "/api/v1/probes", control(Probes)),
    rule(Api, "PUT|DELETE", "/api/v1/probes/{name}", control(Probes)),
    rule(Api, "POST", "/api/v1/probes/{name}/pause", control(Probes)),
    rule(Api, "POST", "/api/v1/probes/{name}/resume", control(Probes)),
    // Chaos.
    rule(Api, "POST", "/api/v1/experiments/runs", control(Chaos)),
    // Queries sent as a body.
    rule(Api, "POST", "/api/v1/assertions/run", needs(Read)),
    rule(Api, "POST", "/api/v1/consistency/check", needs(Read)),
    // Everything else read through GET: the metrics, the query API and the UI pages.
    rule(Api, "GET", "/metrics", needs(Read)),
    rule(Api, "GET", "/api/services", needs(Read)),
    rule(
        Api,
        "GET",
        "/api/services/{service}/operations",
        needs(Read),
    ),
    rule(Api, "GET", "/api/operations", needs(Read)),
    rule(Api, "GET", "/api/dependencies", needs(Read)),
    rule(Api, "GET", "/api/traces", needs(Read)),
    rule(Api, "GET", "/api/traces/{id}", needs(Read)),
    rule(Api, "GET", "/api/v3/services", needs(Read)),
    rule(Api, "GET", "/api/v3/operations", needs(Read)),
    rule(Api, "GET", "/api/v3/traces", needs(Read)),
    rule(Api, "GET", "/api/v3/traces/{trace_id}", needs(Read)),
    rule(Api, "GET", "/api/v1/red", needs(Read)),
    rule(Api, "GET", "/api/v1/traces/summaries", needs(Read)),
    rule(Api, "GET", "/api/v1/dependencies", needs(Read)),
    rule(Api, "GET", "/api/v1/status", needs(Read)),
    rule(Api, "GET", "/api/v1/status/history", needs(Read)),
    rule(Api, "GET", "/api/v1/sampling", needs(Read)),
    rule(Api, "GET", "/api/v1/tracing-health", needs(Read)),
    rule(Api, "GET", "/api/v1/tail-sampling", needs(Read)),
    rule(Api, "GET", "/api/v1/steady-state", needs(Read)),
    rule(Api, "GET", "/api/v1/alerts", needs(Read)),
    rule(Api, "GET", "/api/v1/notifications", needs(Read)),
    rule(Api, "GET", "/api/v1/consistency", needs(Read)),
    rule(
        Api,
        "GET",
        "/api/v1/consistency/rules/{name}/keys",
        needs(Read),
    ),
    rule(Api, "GET", "/api/v1/assertions/continuous", needs(Read)),
    rule(Api, "GET", "/api/v1/experiments", needs(Read)),
    rule(Api, "GET", "/api/v1/experiments/runs/{run}", needs(Read)),
    rule(Api, "GET", "/api/v1/probes", needs(Read)),
    rule(Api, "GET", "/api/v1/probes/{name}", needs(Read)),
    rule(Api, "GET", "/", needs(Read)),
    rule(Api, "GET", "/service/{name}", needs(Read)),
    rule(Api, "GET", "/search", needs(Read)),
    rule(Api, "GET", "/trace/{id}", needs(Read)),
    rule(Api, "GET", "/compare", needs(Read)),
    rule(Api, "GET", "/dependencies", needs(Read)),
    rule(Api, "GET", "/probes", needs(Read)),
    rule(Api, "GET", "/probes/{name}", needs(Read)),
    rule(Api, "GET", "/alerts", needs(Read)),
    rule(Api, "GET", "/experiments", needs(Read)),
    rule(Api, "GET", "/consistency", needs(Read)),
    rule(Api, "GET", "/status", needs(Read)),
    rule(Api, "GET", "/tracing-health", needs(Read)),
    // The fault proxy's API: chaos for everything, reads included (they name upstreams).
    rule(FaultProxy, "GET", "/proxies", needs(Chaos)),
    rule(FaultProxy, "POST", "/proxies", control(Chaos)),
    rule(FaultProxy, "POST", "/populate", control(Chaos)),
    rule(FaultProxy, "GET", "/proxies/{proxy}", needs(Chaos)),
    rule(
        FaultProxy,
        "POST|PATCH|DELETE",
        "/proxies/{proxy}",
        control(Chaos),
    ),
    rule(FaultProxy, "GET", "/proxies/{proxy}/toxics", needs(Chaos)),
    rule(
        FaultProxy,
        "POST",
        "/proxies/{proxy}/toxics",
        control(Chaos),
    ),
    rule(
        FaultProxy,
        "GET",
        "/proxies/{proxy}/toxics/{toxic}",
        needs(Chaos),
    ),
    rule(
        FaultProxy,
        "POST|PATCH|DELETE",
        "/proxies/{proxy}/toxics/{toxic}",
        control(Chaos),
    ),
    rule(FaultProxy, "POST", "/reset", control(Chaos)),
    rule(FaultProxy, "GET", "/version", needs(Chaos)),
    rule(FaultProxy, "GET", "/metrics", needs(Chaos)),
];

fn safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn method_matches(methods: &str, method: &Method) -> bool {
    let m = if *method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    methods == "*" || methods.split('|').any(|x| x == m)
}

/// Whether `path` matches `pattern` (`{x}` matches one non-empty segment).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.starts_with('{') && a.ends_with('}') => {
                if b.is_empty() {
                    return false;
                }
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// What a request of `method` on `path` at `listener` needs.
pub fn access(listener: Listener, method: &Method, path: &str) -> Access {
    let found = TABLE.iter().find(|r| {
        r.listener == listener && method_matches(r.methods, method) && path_matches(r.path, path)
    });
    if let Some(r) = found {
        return r.access;
    }
    // Unknown routes (answered 404 after the check): reads need the listener's reading
    // scope, anything else the strongest.
    match listener {
        OtlpGrpc | OtlpHttp | Zipkin | Sampling => needs(Ingest),
        FaultProxy if safe(method) => needs(Chaos),
        FaultProxy => control(Chaos),
        Api if safe(method) => needs(Read),
        Api => control(Admin),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_one_segment_per_placeholder() {
        assert!(path_matches("/api/v1/probes/{name}", "/api/v1/probes/a"));
        assert!(!path_matches("/api/v1/probes/{name}", "/api/v1/probes/"));
        assert!(!path_matches(
            "/api/v1/probes/{name}",
            "/api/v1/probes/a/pause"
        ));
        assert!(path_matches("/", "/"));
        assert!(!path_matches("/", "/x"));
    }

    #[test]
    fn the_map_gives_each_kind_of_route_its_scope() {
        let a = |l, m: &str, p| access(l, &Method::from_bytes(m.as_bytes()).unwrap(), p);
        assert_eq!(a(Api, "GET", "/ready"), Access::Open);
        assert_eq!(a(Api, "HEAD", "/health"), Access::Open);
        assert_eq!(a(Api, "GET", "/metrics"), needs(Read));
        assert_eq!(a(Api, "GET", "/api/v1/probes/x"), needs(Read));
        assert_eq!(a(Api, "DELETE", "/api/v1/probes/x"), control(Probes));
        assert_eq!(a(Api, "POST", "/api/v1/probes/x/pause"), control(Probes));
        assert_eq!(
            a(Api, "GET", "/api/v1/consistency/rules/r/keys"),
            needs(Read)
        );
        assert_eq!(a(Api, "PUT", "/api/v1/consistency/rules/r"), control(Admin));
        assert_eq!(a(Api, "POST", "/api/v1/dlq/replay"), control(Admin));
        assert_eq!(a(Api, "GET", "/audit"), needs(Admin));
        assert_eq!(a(Api, "POST", "/api/v1/experiments/runs"), control(Chaos));
        assert_eq!(a(Api, "POST", "/api/v1/assertions/run"), needs(Read));
        // Unknown: reads need read, writes admin.
        assert_eq!(a(Api, "GET", "/nope"), needs(Read));
        assert_eq!(a(Api, "PATCH", "/api/v1/status"), control(Admin));
        assert_eq!(a(FaultProxy, "GET", "/proxies"), needs(Chaos));
        assert_eq!(
            a(FaultProxy, "DELETE", "/proxies/p/toxics/t"),
            control(Chaos)
        );
        assert_eq!(a(FaultProxy, "PUT", "/whatever"), control(Chaos));
        assert_eq!(a(OtlpHttp, "POST", "/v1/traces"), needs(Ingest));
        assert_eq!(a(Zipkin, "GET", "/anything"), needs(Ingest));
        assert_eq!(a(Sampling, "GET", "/sampling"), needs(Ingest));
    }
}
