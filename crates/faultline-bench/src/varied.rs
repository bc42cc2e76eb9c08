//! The `varied` traffic profile of `loadgen` (`--profile varied`): traffic that varies as
//! production does, for benchmarks whose figures must not depend on the generator
//! repeating itself (issue 12).
//!
//! - Traces of 5 to 30 spans over 12 services, a root in `gateway`, children anywhere in
//!   the tree; about 280 bytes per span as OTLP protobuf and about 20 attributes per span
//!   with its resource's: HTTP (method, route, status, the client's address), database
//!   (system, operation, table, a parametrised statement, rows), messaging (system,
//!   destination, a fresh message id); on every span a low-cardinality `region` (4 values,
//!   one per trace), a `user.id` fresh on every trace, a retry flag.
//! - Durations are log-normal (a median per service, sigma 1), children start at random
//!   offsets within their parent; every send multiplies each span's duration by a fresh
//!   factor between 0.6 and 1.6, and the start offsets of each trace's spans (from the
//!   trace's start) by a fresh factor between 0.75 and 1.25 (one per trace, so parents
//!   still start before their children; before 2026-12-04 offsets repeated per template,
//!   which let blocks that group traces by shape compress them unrealistically well).
//! - About 2% of spans fail, with an exception event (3 types, a message with a fresh id, a
//!   short stack trace).
//! - Resources carry 10 attributes (host, pod, instance id, cloud region, SDK).
//!
//! Fresh values cost no encoding at send time: the generator writes each value that must
//! be fresh as a 16-character placeholder ([`TOKEN_LEN`] hex digits), the template records
//! where each placeholder sits, and every send overwrites them with new hex digits (one
//! value per placeholder, so a per-trace value stays the same on all spans of its trace).

use rand::Rng;
use rand::rngs::SmallRng;

use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value};
use faultline_model::otlp::trace::{Span, Status, span::Event};

/// Length of a fresh-value placeholder, hex digits.
pub const TOKEN_LEN: usize = 16;

/// Services: name, median duration in microseconds, kind of work.
pub const SERVICES: &[(&str, u64, Work)] = &[
    ("gateway", 40_000, Work::Http),
    ("frontend", 25_000, Work::Http),
    ("auth", 3_000, Work::Http),
    ("cart", 8_000, Work::Http),
    ("checkout", 30_000, Work::Http),
    ("payment", 60_000, Work::Http),
    ("inventory", 6_000, Work::Http),
    ("shipping", 12_000, Work::Http),
    ("recommendation", 15_000, Work::Http),
    ("search", 20_000, Work::Http),
    ("postgres", 2_000, Work::Db),
    ("kafka", 1_000, Work::Messaging),
];

/// What a service's spans describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// HTTP server or client calls.
    Http,
    /// Database queries.
    Db,
    /// Message publishing.
    Messaging,
}

/// The low-cardinality region of every span (one per trace).
pub const REGIONS: [&str; 4] = ["eu-west", "eu-central", "us-east", "ap-south"];

const ROUTES: &[&str] = &[
    "/api/v1/orders/{id}",
    "/api/v1/cart",
    "/api/v1/items/{id}",
    "/api/v1/users/{id}/profile",
    "/api/v1/checkout",
    "/api/v1/search",
    "/api/v1/recommendations",
    "/api/v1/payments/{id}",
    "/health",
];
const TABLES: &[&str] = &[
    "orders",
    "order_items",
    "users",
    "stock",
    "payments",
    "carts",
];
const EXCEPTIONS: &[(&str, &str)] = &[
    ("TimeoutError", "upstream timed out after 2s waiting for"),
    (
        "ConnectionResetError",
        "connection reset by peer while reading",
    ),
    ("ValueError", "invalid quantity for item"),
];

/// Writes placeholders and remembers them, in the order they were written.
#[derive(Debug, Default)]
pub struct Placeholders {
    /// Every placeholder, 16 hex digits each, unique.
    pub list: Vec<[u8; TOKEN_LEN]>,
}

impl Placeholders {
    /// A new placeholder: random hex (so the template is realistic even unstamped).
    pub fn new_token(&mut self, rng: &mut SmallRng) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [0u8; TOKEN_LEN];
        for b in &mut t {
            *b = HEX[rng.random_range(0..16)];
        }
        self.list.push(t);
        String::from_utf8_lossy(&t).into_owned()
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

/// A log-normal duration in nanoseconds with the given median (µs) and sigma 1.
fn lognormal_ns(rng: &mut SmallRng, median_us: u64) -> u64 {
    // Box-Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let us = median_us as f64 * z.exp();
    (us.clamp(20.0, 30_000_000.0) * 1000.0) as u64
}

/// What one trace shares across its spans.
struct TraceCtx {
    region: &'static str,
    user: String,
    client: String,
}

/// One trace of 5 to 30 spans; each span goes to `by_service[service index]`. Returns the
/// number of spans and, per span, its (start, end) in nanoseconds.
pub fn generate_trace(
    rng: &mut SmallRng,
    trace_id: [u8; 16],
    now_ns: u64,
    by_service: &mut [Vec<Span>],
    ph: &mut Placeholders,
) -> Vec<(u64, u64)> {
    let n = rng.random_range(5..=30usize);
    let ctx = TraceCtx {
        region: REGIONS[rng.random_range(0..REGIONS.len())],
        user: format!("u-{}", ph.new_token(rng)),
        client: format!(
            "10.{}.{}.{}",
            rng.random_range(0..16),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
    };
    let start = now_ns - rng.random_range(0..60_000_000_000u64);
    // (service, span id, start, end) of the spans so far, to pick parents.
    let mut made: Vec<(usize, [u8; 8], u64, u64)> = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let svc = if i == 0 {
            0
        } else {
            rng.random_range(1..SERVICES.len())
        };
        let mut span_id = [0u8; 8];
        rng.fill(&mut span_id);
        span_id[0] |= 1;
        let parent = (i > 0).then(|| made[rng.random_range(0..i)]);
        let dur = lognormal_ns(rng, SERVICES[svc].1);
        let (span_start, span_end) = match parent {
            None => (start, start + dur.max(1_000_000)),
            Some((_, _, ps, pe)) => {
                let room = pe.saturating_sub(ps).max(1);
                let at = ps + rng.random_range(0..room);
                (at, at + dur)
            }
        };
        let mut span = span(
            rng,
            ph,
            &ctx,
            (svc, span_id, parent.map(|p| p.1)),
            (span_start, span_end),
            i == 0,
        );
        span.trace_id = trace_id.to_vec();
        made.push((svc, span_id, span_start, span_end));
        times.push((span_start, span_end));
        by_service[svc].push(span);
    }
    times
}

/// One span of service `svc`.
fn span(
    rng: &mut SmallRng,
    ph: &mut Placeholders,
    ctx: &TraceCtx,
    (svc, span_id, parent): (usize, [u8; 8], Option<[u8; 8]>),
    (start, end): (u64, u64),
    root: bool,
) -> Span {
    let (name, work) = (SERVICES[svc].0, SERVICES[svc].2);
    let failed = rng.random_bool(0.02);
    let mut attrs = vec![
        kv("region", s(ctx.region)),
        kv("user.id", s(ctx.user.clone())),
        kv("retry", Value::BoolValue(rng.random_bool(0.05))),
    ];
    let op = match work {
        Work::Http => http_attrs(rng, &mut attrs, (name, &ctx.client), failed),
        Work::Db => db_attrs(rng, ph, &mut attrs),
        Work::Messaging => {
            let topic = ["orders", "payments", "shipments"][rng.random_range(0..3)];
            attrs.push(kv("messaging.system", s("kafka")));
            attrs.push(kv("messaging.destination.name", s(topic)));
            attrs.push(kv("messaging.message.id", s(ph.new_token(rng))));
            format!("{topic} publish")
        }
    };
    let mut events = Vec::new();
    if failed {
        let (ty, msg) = EXCEPTIONS[rng.random_range(0..EXCEPTIONS.len())];
        events.push(Event {
            time_unix_nano: start + (end - start) / 2,
            name: "exception".into(),
            attributes: vec![
                kv("exception.type", s(ty)),
                kv(
                    "exception.message",
                    s(format!("{msg} {}", ph.new_token(rng))),
                ),
                kv(
                    "exception.stacktrace",
                    s(format!(
                        "{ty}: {msg}\n  at {name}.handler (handler.rs:{})\n  at {name}.serve (server.rs:88)",
                        rng.random_range(10..400)
                    )),
                ),
            ],
            dropped_attributes_count: 0,
        });
    }
    Span {
        trace_id: Vec::new(),
        span_id: span_id.to_vec(),
        trace_state: String::new(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: 1,
        name: op,
        kind: match work {
            Work::Http if root => 2,
            Work::Http => rng.random_range(2..=3),
            Work::Db => 3,
            Work::Messaging => 4,
        },
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: attrs,
        dropped_attributes_count: 0,
        events,
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(Status {
            message: if failed {
                "request failed".into()
            } else {
                String::new()
            },
            code: if failed { 2 } else { 0 },
        }),
    }
}

/// HTTP attributes; returns the operation name.
fn http_attrs(
    rng: &mut SmallRng,
    attrs: &mut Vec<KeyValue>,
    (service, client): (&str, &str),
    failed: bool,
) -> String {
    let route = ROUTES[rng.random_range(0..ROUTES.len())];
    let method = if route.ends_with("checkout") || route.ends_with("cart") {
        "POST"
    } else {
        "GET"
    };
    let status = if failed {
        [500, 502, 503][rng.random_range(0..3)]
    } else if rng.random_bool(0.03) {
        404
    } else {
        200
    };
    let _ = service;
    attrs.extend([
        kv("http.request.method", s(method)),
        kv("http.route", s(route)),
        kv("http.response.status_code", Value::IntValue(status)),
        kv("client.address", s(client)),
    ]);
    format!("{method} {route}")
}

/// Database attributes; returns the operation name.
fn db_attrs(rng: &mut SmallRng, ph: &mut Placeholders, attrs: &mut Vec<KeyValue>) -> String {
    let table = TABLES[rng.random_range(0..TABLES.len())];
    // Parametrised, as drivers send them; one in ten with a literal id.
    let literal = if rng.random_bool(0.1) {
        format!("'{}'", ph.new_token(rng))
    } else {
        "$1".to_string()
    };
    let (op, stmt) = match rng.random_range(0..3) {
        0 => (
            "SELECT",
            format!("SELECT * FROM {table} WHERE id = {literal} LIMIT 20"),
        ),
        1 => (
            "UPDATE",
            format!("UPDATE {table} SET updated_at = now() WHERE id = {literal}"),
        ),
        _ => (
            "INSERT",
            format!("INSERT INTO {table} VALUES ({literal}, $2, $3)"),
        ),
    };
    attrs.extend([
        kv("db.system", s("postgresql")),
        kv("db.operation", s(op)),
        kv("db.sql.table", s(table)),
        kv("db.statement", s(stmt)),
        kv("db.rows_affected", Value::IntValue(rng.random_range(0..50))),
    ]);
    format!("{op} {table}")
}

/// The resource attributes of service `i` in one template.
pub fn resource(rng: &mut SmallRng, i: usize) -> Vec<KeyValue> {
    let name = SERVICES[i].0;
    let pod = format!(
        "{name}-{:08x}-{:05x}",
        rng.random::<u32>(),
        rng.random::<u32>() >> 12
    );
    vec![
        kv("service.name", s(name)),
        kv(
            "service.version",
            s(format!("2.{}.{}", i % 4, rng.random_range(0..9))),
        ),
        kv(
            "service.instance.id",
            s(format!("{:016x}", rng.random::<u64>())),
        ),
        kv("host.name", s(format!("node-{}", rng.random_range(0..24)))),
        kv("k8s.pod.name", s(pod)),
        kv("k8s.namespace.name", s("shop")),
        kv(
            "cloud.region",
            s(REGIONS[rng.random_range(0..REGIONS.len())]),
        ),
        kv("deployment.environment", s("production")),
        kv("telemetry.sdk.language", s("go")),
        kv("telemetry.sdk.version", s("1.28.0")),
    ]
}
