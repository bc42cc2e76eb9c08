//! Tracing health: what makes the stored traces less trustworthy, per service, counted
//! as spans arrive and when heads are sealed (in memory, since start):
//!
//! - **orphans**: spans whose parent never arrived, judged when the head holding them is
//!   sealed (a trace that continues in another block or head is not judged: its parent
//!   may be there);
//! - **sampling breaks**: orphans that were sampled (adjusted count above 1): their
//!   parent was most likely dropped by a different sampling decision, not lost;
//! - **conventions** (OpenTelemetry semantic conventions, `faultline_model::semconv`,
//!   generated from the registry): deprecated attribute names (with the registry's note,
//!   usually the replacement); values of the wrong type for the stable attributes in
//!   [`TYPED`]; resources without `service.version` or `deployment.environment.name`.
//!
//! Each finding keeps its count, counts per 10-minute bucket for the last hour (the
//! trend), and up to [`EXAMPLES`] example trace ids. Skewed clocks come from
//! `crate::skew` and callers of a service from the rollups; the report joins them
//! (`Store::tracing_health`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;

use faultline_model::sampling::adjusted_count;
use faultline_model::semconv;
use faultline_model::span::{AttrValue, Span, TraceId};

use crate::block::FastMap;
use crate::text_cache::TextCache;

/// Example trace ids kept per finding.
pub const EXAMPLES: usize = 3;

/// Width of a trend bucket, seconds.
pub const BUCKET_SECS: u64 = 600;

/// Trend buckets kept (an hour).
pub const BUCKETS: usize = 6;

/// Stable attributes whose type the report checks (the registry package names types in
/// prose only, so this short table is kept by hand: the attributes most often sent with
/// the wrong type).
pub const TYPED: &[(&str, Kind)] = &[
    ("client.port", Kind::Int),
    ("db.response.status_code", Kind::Str),
    ("error.type", Kind::Str),
    ("http.request.method", Kind::Str),
    ("http.response.status_code", Kind::Int),
    ("http.route", Kind::Str),
    ("network.peer.port", Kind::Int),
    ("server.address", Kind::Str),
    ("server.port", Kind::Int),
    ("url.full", Kind::Str),
    ("url.path", Kind::Str),
    ("url.scheme", Kind::Str),
];

/// Resource attributes every service should set.
pub const RESOURCE_REQUIRED: &[&str] = &["service.version", "deployment.environment.name"];

/// An attribute type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// An integer.
    Int,
}

impl Kind {
    /// `string` or `int`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Str => "string",
            Self::Int => "int",
        }
    }

    fn matches(self, v: &AttrValue) -> bool {
        matches!(
            (self, v),
            (Self::Str, AttrValue::Str(_)) | (Self::Int, AttrValue::Int(_))
        )
    }
}

/// The type name of a value, for "expected int, got string".
fn kind_name(v: &AttrValue) -> &'static str {
    match v {
        AttrValue::Str(_) => "string",
        AttrValue::Bool(_) => "bool",
        AttrValue::Int(_) => "int",
        AttrValue::Double(_) => "double",
        AttrValue::Bytes(_) => "bytes",
        AttrValue::Array(_) => "array",
        AttrValue::KvList(_) => "map",
        AttrValue::Empty => "empty",
    }
}

/// One finding's count, trend and examples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Spans it was found on since start.
    pub count: u64,
    /// (bucket start, Unix seconds; count), oldest first, the last [`BUCKETS`].
    pub trend: VecDeque<(u64, u64)>,
    /// Example traces.
    pub examples: Vec<TraceId>,
}

impl Tally {
    fn add(&mut self, n: u64, now_s: u64, trace: &TraceId) {
        self.count += n;
        let bucket = now_s - now_s % BUCKET_SECS;
        match self.trend.back_mut() {
            Some((b, c)) if *b == bucket => *c += n,
            _ => {
                self.trend.push_back((bucket, n));
                while self.trend.len() > BUCKETS {
                    self.trend.pop_front();
                }
            }
        }
        if self.examples.len() < EXAMPLES && !self.examples.contains(trace) {
            self.examples.push(*trace);
        }
    }
}

/// What was found about one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceHealth {
    /// Spans received.
    pub spans: u64,
    /// Spans whose parent never arrived.
    pub orphans: Tally,
    /// Orphans that were sampled: broken by a sampling decision.
    pub sampling_breaks: Tally,
    /// Deprecated attribute names, by name.
    pub deprecated: BTreeMap<String, Tally>,
    /// Values of the wrong type, by (attribute, type found).
    pub wrong_type: BTreeMap<(String, &'static str), Tally>,
    /// Spans whose resource lacks a required attribute, by attribute.
    pub missing_resource: BTreeMap<&'static str, Tally>,
}

/// Every service's findings.
#[derive(Debug, Default)]
pub struct Quality {
    services: FastMap<String, ServiceHealth>,
}

/// What an attribute name is checked for.
#[derive(Debug, Clone, Copy)]
enum Check {
    Typed(Kind),
    Deprecated,
}

/// Every checked attribute name in one map: one lookup per attribute.
fn checks() -> &'static FastMap<&'static str, Check> {
    static CHECKS: OnceLock<FastMap<&'static str, Check>> = OnceLock::new();
    CHECKS.get_or_init(|| {
        let mut m: FastMap<&'static str, Check> = semconv::DEPRECATED
            .iter()
            .map(|(k, _)| (*k, Check::Deprecated))
            .collect();
        m.extend(TYPED.iter().map(|(k, kind)| (*k, Check::Typed(*kind))));
        m
    })
}

impl Quality {
    /// Checks the conventions of `spans` as they arrive (`now_s`: Unix seconds).
    pub fn observe(&mut self, spans: &[Span], now_s: u64) {
        let checks = checks();
        // A batch repeats a few dozen keys: each key's check is looked up once, then
        // found by its text's address (observing was 2.5% of a replay's instructions;
        // with the cache and one judgement per run, 1% of them less).
        let mut known = TextCache::new(256);
        // Spans of one request share their origin: find its service and judge its
        // resource once per run of spans.
        for run in spans.chunk_by(|a, b| std::sync::Arc::ptr_eq(&a.origin, &b.origin)) {
            let Some(first) = run.first() else {
                continue;
            };
            let h = match self.services.get_mut(first.service()) {
                Some(h) => h,
                None => self
                    .services
                    .entry(first.service().to_string())
                    .or_default(),
            };
            let missing: Vec<&'static str> = RESOURCE_REQUIRED
                .iter()
                .copied()
                .filter(|want| !first.origin.resource.iter().any(|(k, _)| k == want))
                .collect();
            for s in run {
                h.spans += 1;
                for (k, v) in &s.attributes {
                    let k = k.as_str();
                    match known.get(k, 0, || checks.get(k).copied()) {
                        None => {}
                        Some(Check::Typed(kind)) if !kind.matches(v) => {
                            h.wrong_type
                                .entry((k.to_string(), kind_name(v)))
                                .or_default()
                                .add(1, now_s, &s.trace_id);
                        }
                        Some(Check::Typed(_)) => {}
                        Some(Check::Deprecated) => match h.deprecated.get_mut(k) {
                            Some(t) => t.add(1, now_s, &s.trace_id),
                            None => h.deprecated.entry(k.to_string()).or_default().add(
                                1,
                                now_s,
                                &s.trace_id,
                            ),
                        },
                    }
                }
                for &want in &missing {
                    h.missing_resource
                        .entry(want)
                        .or_default()
                        .add(1, now_s, &s.trace_id);
                }
            }
        }
    }

    /// Counts `span` as an orphan (its parent never arrived in its head).
    pub fn orphan(&mut self, span: &Span, now_s: u64) {
        let h = self.services.entry(span.service().to_string()).or_default();
        if adjusted_count(&span.attributes) > 1.0 {
            h.sampling_breaks.add(1, now_s, &span.trace_id);
        } else {
            h.orphans.add(1, now_s, &span.trace_id);
        }
    }

    /// Every service's findings, by service.
    pub fn services(&self) -> BTreeMap<String, ServiceHealth> {
        self.services
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The tracing-health report: every service's findings, its callers (who should have
/// sent an orphan's parent) and its skewed clocks.
#[derive(Debug, Clone, Default)]
pub struct TracingHealth {
    /// The semantic conventions version the checks come from.
    pub semconv_version: &'static str,
    /// By service, sorted.
    pub services: Vec<ServiceReport>,
}

/// One service in the report.
#[derive(Debug, Clone, Default)]
pub struct ServiceReport {
    /// The service.
    pub service: String,
    /// Its findings.
    pub health: ServiceHealth,
    /// Services that called it in the last hour (the dependency edges), most calls first:
    /// where an orphan's parent should have come from.
    pub callers: Vec<String>,
    /// Its clocks with an estimated offset: host and estimate.
    pub clocks: Vec<(String, crate::skew::Offset)>,
}

/// The report from findings, estimates and dependency edges.
pub fn report(
    services: BTreeMap<String, ServiceHealth>,
    estimates: &crate::skew::Estimates,
    deps: &[crate::rollup::Dependency],
) -> TracingHealth {
    let mut out: BTreeMap<String, ServiceReport> = services
        .into_iter()
        .map(|(service, health)| {
            (
                service.clone(),
                ServiceReport {
                    service,
                    health,
                    ..ServiceReport::default()
                },
            )
        })
        .collect();
    for (clock, offset) in estimates {
        out.entry(clock.service.clone())
            .or_insert_with(|| ServiceReport {
                service: clock.service.clone(),
                ..ServiceReport::default()
            })
            .clocks
            .push((clock.host.clone(), offset.clone()));
    }
    for r in out.values_mut() {
        r.clocks.sort_by(|a, b| a.0.cmp(&b.0));
        let mut callers: Vec<&crate::rollup::Dependency> =
            deps.iter().filter(|d| d.child == r.service).collect();
        callers.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.parent.cmp(&b.parent)));
        r.callers = callers.into_iter().map(|d| d.parent.clone()).collect();
    }
    TracingHealth {
        semconv_version: semconv::VERSION,
        services: out.into_values().collect(),
    }
}

/// The registry's note on a deprecated name (`deprecated` when it has none).
pub fn deprecation_note(name: &str) -> &'static str {
    semconv::deprecated(name).unwrap_or("deprecated")
}

/// `expected int, got string` for a value of type `got` under `attribute` (one of
/// [`TYPED`]).
pub fn wrong_type_note(attribute: &str, got: &str) -> String {
    let want = TYPED
        .iter()
        .find(|(n, _)| *n == attribute)
        .map_or("?", |(_, kind)| kind.as_str());
    format!("expected {want}, got {got}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{Origin, SpanKind, StatusCode};

    use super::*;

    fn span(service: &Arc<Origin>, attrs: Vec<(&str, AttrValue)>, t: u8) -> Span {
        Span {
            trace_id: [t; 16],
            span_id: [t; 8],
            parent_span_id: None,
            name: "op".into(),
            kind: SpanKind::Server,
            start_ns: 0,
            end_ns: 1,
            status: StatusCode::Unset,
            status_message: String::new(),
            attributes: attrs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            events: Vec::new(),
            links: Vec::new(),
            origin: service.clone(),
        }
    }

    #[test]
    fn conventions_are_counted_exactly_with_examples_and_trend() {
        let bare = Arc::new(Origin {
            service: "legacy".into(),
            resource: vec![("service.name".into(), AttrValue::Str("legacy".into()))],
            scope_name: String::new(),
            scope_version: String::new(),
        });
        let good = Arc::new(Origin {
            service: "modern".into(),
            resource: vec![
                ("service.version".into(), AttrValue::Str("1.2".into())),
                (
                    "deployment.environment.name".into(),
                    AttrValue::Str("prod".into()),
                ),
            ],
            scope_name: String::new(),
            scope_version: String::new(),
        });
        let mut q = Quality::default();
        let mut spans = Vec::new();
        for i in 0..10u8 {
            spans.push(span(
                &bare,
                vec![
                    ("http.status_code", AttrValue::Int(200)),
                    ("http.response.status_code", AttrValue::Str("200".into())),
                    ("custom.thing", AttrValue::Int(1)),
                ],
                i,
            ));
        }
        spans.push(span(
            &good,
            vec![("http.response.status_code", AttrValue::Int(200))],
            99,
        ));
        q.observe(&spans, 1_800_000_123);
        q.observe(&spans[..4], 1_800_000_723);
        let s = q.services();
        let legacy = &s["legacy"];
        assert_eq!(legacy.spans, 14);
        let dep = &legacy.deprecated["http.status_code"];
        assert_eq!(dep.count, 14);
        assert_eq!(dep.examples.len(), EXAMPLES);
        assert_eq!(dep.trend, [(1_800_000_000, 10), (1_800_000_600, 4)]);
        assert_eq!(
            legacy.wrong_type[&("http.response.status_code".to_string(), "string")].count,
            14
        );
        assert_eq!(legacy.missing_resource["service.version"].count, 14);
        assert_eq!(
            legacy.missing_resource["deployment.environment.name"].count,
            14
        );
        assert!(!legacy.deprecated.contains_key("custom.thing"));
        let modern = &s["modern"];
        assert_eq!(modern.spans, 1);
        assert!(modern.deprecated.is_empty() && modern.wrong_type.is_empty());
        assert!(modern.missing_resource.is_empty());
        assert_eq!(
            deprecation_note("http.status_code"),
            "Replaced by `http.response.status_code`."
        );
        assert_eq!(
            wrong_type_note("http.response.status_code", "string"),
            "expected int, got string"
        );
    }

    /// A batch whose spans alternate between origins, with keys checked, unchecked and
    /// too long to intern, is judged as each span alone would be.
    #[test]
    fn a_batch_is_judged_as_its_spans_one_by_one() {
        let origin = |service: &str, version: bool| {
            let mut resource = vec![("service.name".into(), AttrValue::Str(service.into()))];
            if version {
                resource.push(("service.version".into(), AttrValue::Str("1".into())));
            }
            Arc::new(Origin {
                service: service.into(),
                resource,
                scope_name: String::new(),
                scope_version: String::new(),
            })
        };
        let origins = [origin("a", false), origin("b", true), origin("a", true)];
        let long = "k".repeat(200);
        let keys = [
            "http.status_code",
            "http.response.status_code",
            "custom.thing",
            long.as_str(),
            "http.method",
        ];
        let mut spans = Vec::new();
        for i in 0..60u8 {
            let attrs = (0..3)
                .map(|j| {
                    let k = keys[(usize::from(i) * 7 + j * 3) % keys.len()];
                    let v = if (usize::from(i) + j) % 2 == 0 {
                        AttrValue::Int(200)
                    } else {
                        AttrValue::Str("200".into())
                    };
                    (k, v)
                })
                .collect();
            spans.push(span(
                &origins[usize::from(i) % 3 / 2 + usize::from(i % 5 == 0)],
                attrs,
                i,
            ));
        }
        let (mut whole, mut one_by_one) = (Quality::default(), Quality::default());
        whole.observe(&spans, 1_800_000_000);
        for s in &spans {
            one_by_one.observe(std::slice::from_ref(s), 1_800_000_000);
        }
        let got = whole.services();
        assert_eq!(got, one_by_one.services());
        assert_eq!(got["a"].spans + got["b"].spans, 60);
        assert!(!got["a"].deprecated.is_empty() && !got["a"].wrong_type.is_empty());
        assert!(!got["a"].missing_resource.is_empty());
    }

    #[test]
    fn sampled_orphans_are_sampling_breaks() {
        let o = Arc::new(Origin {
            service: "svc".into(),
            resource: Vec::new(),
            scope_name: String::new(),
            scope_version: String::new(),
        });
        let mut q = Quality::default();
        q.orphan(&span(&o, Vec::new(), 1), 1_800_000_000);
        q.orphan(
            &span(
                &o,
                vec![("w3c.tracestate", AttrValue::Str("ot=th:c".into()))],
                2,
            ),
            1_800_000_000,
        );
        let s = &q.services()["svc"];
        assert_eq!((s.orphans.count, s.sampling_breaks.count), (1, 1));
        assert_eq!(s.sampling_breaks.examples, [[2u8; 16]]);
    }
}
