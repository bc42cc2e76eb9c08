//! The probe's own span: one CLIENT span per check, in the trace whose `traceparent` the
//! check sent, so the probe's span and the service's spans are one trace. Resource
//! `service.name=faultline-probe`; attributes `faultline.synthetic=true` (which puts the
//! trace in the intake's critical lane), `faultline.probe.name`, `faultline.probe.ok`,
//! `server.address`, `server.port` and, for HTTP, `url.full`, `http.request.method` and
//! `http.response.status_code`, for https `tls.server.not_after_unix`, for DNS
//! `dns.question.name` and `dns.question.type`, and `faultline.probe.warning` when the
//! check passed with one; an event at the end of each phase (`resolve`, `connect`, `tls`,
//! `processing`, `transfer`) with its duration in `faultline.probe.phase_ms`; status ERROR
//! with the reason when the check failed.

use faultline_model::ExportTraceServiceRequest;
use faultline_model::otlp::common::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span, Status, span::Event};

use crate::check::Outcome;
use crate::def::{HttpUrl, ProbeDef};

/// The service name of probe spans.
pub const SERVICE: &str = "faultline-probe";

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// A W3C `traceparent` for a sampled span.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8]) -> String {
    format!(
        "00-{}-{}-01",
        faultline_model::hex(trace_id),
        faultline_model::hex(span_id)
    )
}

/// The span of one check that started at `start_ns` (Unix ns).
pub fn of(
    def: &ProbeDef,
    o: &Outcome,
    (trace_id, span_id): ([u8; 16], [u8; 8]),
    start_ns: u64,
) -> ExportTraceServiceRequest {
    let end_ns = start_ns + o.total.as_nanos() as u64;
    let mut attributes = vec![
        kv("faultline.synthetic", Value::BoolValue(true)),
        kv("faultline.probe.name", s(&def.name)),
        kv("faultline.probe.ok", Value::BoolValue(o.ok)),
    ];
    let name = if let Some(h) = &def.http {
        attributes.push(kv("url.full", s(&h.url)));
        attributes.push(kv("http.request.method", s(&h.method)));
        if let Ok(u) = HttpUrl::parse(&h.url) {
            attributes.push(kv("server.address", s(&u.host)));
            attributes.push(kv("server.port", Value::IntValue(i64::from(u.port))));
        }
        if let Some(st) = o.status {
            attributes.push(kv(
                "http.response.status_code",
                Value::IntValue(i64::from(st)),
            ));
        }
        format!("probe {} {}", def.name, h.method)
    } else if let Some(d) = &def.dns {
        attributes.push(kv("dns.question.name", s(&d.name)));
        attributes.push(kv("dns.question.type", s(&d.record_type)));
        if let Some(a) = o.address {
            attributes.push(kv("server.address", s(&a.ip().to_string())));
            attributes.push(kv("server.port", Value::IntValue(i64::from(a.port()))));
        }
        format!("probe {} dns {}", def.name, d.record_type)
    } else {
        if let Some(t) = &def.tcp {
            attributes.push(kv("server.address", s(&t.host)));
            attributes.push(kv("server.port", Value::IntValue(i64::from(t.port))));
        }
        format!("probe {} connect", def.name)
    };
    if let Some(t) = o.cert_not_after {
        attributes.push(kv("tls.server.not_after_unix", Value::IntValue(t)));
    }
    if let Some(w) = &o.warning {
        attributes.push(kv("faultline.probe.warning", s(w)));
    }
    let mut at = start_ns;
    let events = o
        .phases
        .iter()
        .map(|(phase, d)| {
            at += d.as_nanos() as u64;
            Event {
                time_unix_nano: at.min(end_ns),
                name: phase.as_str().into(),
                attributes: vec![kv(
                    "faultline.probe.phase_ms",
                    Value::DoubleValue(d.as_secs_f64() * 1000.0),
                )],
                ..Event::default()
            }
        })
        .collect();
    let span = Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        name,
        kind: 3, // CLIENT
        start_time_unix_nano: start_ns,
        end_time_unix_nano: end_ns,
        attributes,
        events,
        status: Some(Status {
            code: if o.ok { 1 } else { 2 },
            message: o.error.clone().unwrap_or_default(),
        }),
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s(SERVICE))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "faultline-probe".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans: vec![span],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}
