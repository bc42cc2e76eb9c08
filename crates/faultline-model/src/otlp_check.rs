//! Checks an OTLP `ExportTraceServiceRequest` protobuf body against intake's span rules
//! ([`crate::validate`]) in one walk over its bytes, without decoding it: the intake's
//! common case, where every span is valid and the body goes to the WAL as it came.
//!
//! Decoding a request through the generated types to validate it allocated every key,
//! value and span and dropped them again, about a fifth of the server's CPU under a load.
//! This walk reads lengths, ids, times and sizes in place and checks that strings are
//! UTF-8; it allocates only the list of trace ids.
//!
//! [`check`] answers `Some` only when decoding the body with prost would succeed and
//! [`crate::validate::validate_and_filter`] would keep every span (a property test holds
//! it to both, on encoder-written, merged, truncated and mutated bodies). `None` means
//! "decode it": the body is malformed, a span breaks a rule, it holds no span, or it is
//! of a shape this walk leaves to the decoder (groups, messages nested more than
//! [`DEPTH`] deep). Fields that protobuf lets repeat are judged as prost merges them:
//! a later id, time or name replaces an earlier one, repeated fields append; a value
//! replaced by a later one is still checked, so such a body may take the decoder's path
//! for a value prost would have dropped, never the other way round.

use crate::envelope::EnvelopeError;
use crate::otlp_decode::{Fields, Plain, Val, enter, err, plain_parts};
use crate::span::TraceId;
use crate::validate::{Limits, MAX_VALUE_DEPTH, Shape, check_id, check_shape};

/// How many messages deep a body this walk accepts may nest; deeper bodies go to the
/// decoder (prost's own limit is 100, and near it prost also refuses unknown fields).
pub const DEPTH: u32 = 64;

/// What [`check`] found in a body whose every span is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Spans in the body (at least one).
    pub spans: u64,
    /// Each span's trace id, in wire order, repeats included.
    pub trace_ids: Vec<TraceId>,
}

/// `Some` when `body` decodes and every span in it keeps to `limits` (see the module doc);
/// `None` when the body must be decoded to be judged.
pub fn check(body: &[u8], limits: &Limits) -> Option<Checked> {
    // Sized for spans of about 256 bytes (SDK spans take 150-400), grown past that: a
    // large body of junk should not reserve memory for spans it does not hold.
    let mut c = Checked {
        spans: 0,
        trace_ids: Vec::with_capacity(body.len() / 256),
    };
    let walk = Walk {
        limits,
        broken: std::cell::Cell::new(false),
    };
    walk.request(body, &mut c).ok()?;
    (c.spans > 0).then_some(c)
}

/// Why a walk stopped: a malformed body or a span that breaks a rule (never shown: the
/// decoder's path reports it).
type Res = Result<(), EnvelopeError>;

fn refuse() -> EnvelopeError {
    err("a span breaks a rule")
}

/// A string field: UTF-8, as prost requires.
fn text(v: Val<'_>) -> Res {
    v.str().map(|_| ())
}

/// A varint field (an integer, a bool, an enum).
fn number(v: Val<'_>) -> Res {
    v.varint().map(|_| ())
}

/// A 64-bit field (a time, a double).
fn time(v: Val<'_>) -> Res {
    v.fixed64().map(|_| ())
}

struct Walk<'l> {
    limits: &'l Limits,
    /// Set when an attribute value breaks a rule (too long, nested too deep). Judged by
    /// what holds the value: a span refuses itself; a resource or scope refuses its spans,
    /// so one without spans breaks nothing (the decoder's path keeps such a request whole:
    /// found by the property test below).
    broken: std::cell::Cell<bool>,
}

impl Walk<'_> {
    fn request(&self, body: &[u8], c: &mut Checked) -> Res {
        let depth = DEPTH;
        for f in Fields::strict(body) {
            if let (1, v) = f? {
                self.resource_spans(v.bytes()?, enter(depth)?, c)?;
            }
        }
        Ok(())
    }

    /// Runs `f` with [`Walk::broken`] cleared; answers whether `f` broke a rule, the flag
    /// left as it was before.
    fn judged(&self, f: impl FnOnce() -> Res) -> Result<bool, EnvelopeError> {
        let before = self.broken.replace(false);
        f()?;
        Ok(self.broken.replace(before))
    }

    fn resource_spans(&self, buf: &[u8], depth: u32, c: &mut Checked) -> Res {
        let (mut broken, spans) = (false, c.spans);
        for f in Fields::strict(buf) {
            match f? {
                (1, v) => broken |= self.judged(|| self.resource(v.bytes()?, enter(depth)?))?,
                (2, v) => self.scope_spans(v.bytes()?, enter(depth)?, c)?,
                (3, v) => text(v)?,
                _ => {}
            }
        }
        if broken && c.spans > spans {
            return Err(refuse());
        }
        Ok(())
    }

    fn resource(&self, buf: &[u8], depth: u32) -> Res {
        for f in Fields::strict(buf) {
            match f? {
                (1, v) => self.key_value(v.bytes()?, enter(depth)?, 0)?,
                (2, v) => number(v)?,
                (3, v) => {
                    enter(depth)?;
                    entity_ref(v.bytes()?)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn scope_spans(&self, buf: &[u8], depth: u32, c: &mut Checked) -> Res {
        let (mut broken, spans) = (false, c.spans);
        for f in Fields::strict(buf) {
            match f? {
                (1, v) => broken |= self.judged(|| self.scope(v.bytes()?, enter(depth)?))?,
                (2, v) => self.span(v.bytes()?, enter(depth)?, c)?,
                (3, v) => text(v)?,
                _ => {}
            }
        }
        if broken && c.spans > spans {
            return Err(refuse());
        }
        Ok(())
    }

    fn scope(&self, buf: &[u8], depth: u32) -> Res {
        for f in Fields::strict(buf) {
            match f? {
                (1 | 2, v) => text(v)?,
                (3, v) => self.key_value(v.bytes()?, enter(depth)?, 0)?,
                (4, v) => number(v)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn span(&self, buf: &[u8], depth: u32, c: &mut Checked) -> Res {
        let mut shape = Shape {
            trace_id: &[],
            span_id: &[],
            parent_span_id: &[],
            start_ns: 0,
            end_ns: 0,
            name_bytes: 0,
            attributes: 0,
        };
        let before = self.broken.replace(false);
        for f in Fields::strict(buf) {
            match f? {
                (1, v) => shape.trace_id = v.bytes()?,
                (2, v) => shape.span_id = v.bytes()?,
                (3, v) => text(v)?,
                (4, v) => shape.parent_span_id = v.bytes()?,
                (5, v) => shape.name_bytes = v.str()?.len(),
                (6 | 10 | 12 | 14, v) => number(v)?,
                (7, v) => shape.start_ns = v.fixed64()?,
                (8, v) => shape.end_ns = v.fixed64()?,
                (9, v) => {
                    self.key_value(v.bytes()?, enter(depth)?, 0)?;
                    shape.attributes += 1;
                }
                (11, v) => self.event(v.bytes()?, enter(depth)?)?,
                (13, v) => self.link(v.bytes()?, enter(depth)?)?,
                (15, v) => {
                    enter(depth)?;
                    status(v.bytes()?)?;
                }
                (16, v) => v.fixed32()?,
                _ => {}
            }
        }
        if self.broken.replace(before) {
            return Err(refuse());
        }
        check_shape(&shape, self.limits).map_err(|_| refuse())?;
        let id = TraceId::try_from(shape.trace_id).map_err(|_| refuse())?;
        c.trace_ids.push(id);
        c.spans += 1;
        Ok(())
    }

    fn event(&self, buf: &[u8], depth: u32) -> Res {
        for f in Fields::strict(buf) {
            match f? {
                (1, v) => time(v)?,
                (2, v) => text(v)?,
                (3, v) => self.key_value(v.bytes()?, enter(depth)?, 0)?,
                (4, v) => number(v)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn link(&self, buf: &[u8], depth: u32) -> Res {
        let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
        for f in Fields::strict(buf) {
            match f? {
                (1, v) => trace_id = v.bytes()?,
                (2, v) => span_id = v.bytes()?,
                (3, v) => text(v)?,
                (4, v) => self.key_value(v.bytes()?, enter(depth)?, 0)?,
                (5, v) => number(v)?,
                (6, v) => v.fixed32()?,
                _ => {}
            }
        }
        check_id(trace_id, 16, "link trace id").map_err(|_| refuse())?;
        check_id(span_id, 8, "link span id").map_err(|_| refuse())
    }

    /// Notes a broken rule when `broken` (see [`Walk::broken`]).
    fn over(&self, broken: bool) {
        if broken {
            self.broken.set(true);
        }
    }

    /// A `KeyValue` whose value sits `level` arrays or lists deep in an attribute.
    fn key_value(&self, buf: &[u8], depth: u32, level: usize) -> Res {
        // The form every encoder writes, judged without walking its fields (as the
        // decoder reads it: `otlp_decode::plain_parts`); the walk judges any other.
        if let Some((key, value)) = plain_parts(buf) {
            enter(depth)?;
            text(Val::Bytes(key))?;
            if let Plain::Str(value) = value {
                let value = Val::Bytes(value).str()?;
                self.over(value.len() > self.limits.max_attribute_value_bytes);
            }
            return Ok(());
        }
        for f in Fields::strict(buf) {
            match f? {
                (1, v) => text(v)?,
                (2, v) => self.any_value(v.bytes()?, enter(depth)?, level)?,
                (3, v) => number(v)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// An `AnyValue` `level` arrays or lists deep: strings and bytes within the size
    /// limit, arrays and lists not nested beyond the rules' depth.
    fn any_value(&self, buf: &[u8], depth: u32, level: usize) -> Res {
        let max = self.limits.max_attribute_value_bytes;
        for f in Fields::strict(buf) {
            match f? {
                (1, v) => self.over(v.str()?.len() > max),
                (7, v) => self.over(v.bytes()?.len() > max),
                (2 | 3 | 8, v) => number(v)?,
                (4, v) => time(v)?,
                (5, v) => {
                    // Nested too deep breaks a rule, but is still walked: the decoder must
                    // be able to read it (`enter` bounds the recursion).
                    self.over(level >= MAX_VALUE_DEPTH);
                    let inner = enter(depth)?;
                    for f in Fields::strict(v.bytes()?) {
                        if let (1, v) = f? {
                            self.any_value(v.bytes()?, enter(inner)?, level + 1)?;
                        }
                    }
                }
                (6, v) => {
                    self.over(level >= MAX_VALUE_DEPTH);
                    let inner = enter(depth)?;
                    for f in Fields::strict(v.bytes()?) {
                        if let (1, v) = f? {
                            self.key_value(v.bytes()?, enter(inner)?, level + 1)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A `Status`: its message UTF-8, its code a varint.
fn status(buf: &[u8]) -> Res {
    for f in Fields::strict(buf) {
        match f? {
            (2, v) => text(v)?,
            (3, v) => number(v)?,
            _ => {}
        }
    }
    Ok(())
}

/// An `EntityRef` of a resource: four strings (two of them repeated).
fn entity_ref(buf: &[u8]) -> Res {
    for f in Fields::strict(buf) {
        if let (1..=4, v) = f? {
            text(v)?;
        }
    }
    Ok(())
}

/// Whether the walk's verdicts hold: a body a walk accepts is one prost decodes and
/// validation keeps whole.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;
    use prost::encoding::{WireType, encode_key, encode_varint};

    use super::*;
    use crate::ExportTraceServiceRequest;
    use crate::otlp::common::{AnyValue, ArrayValue, KeyValue, any_value::Value};
    use crate::otlp::trace::{self, ResourceSpans, ScopeSpans};
    use crate::test_strategies::{
        attributes, field, key_value_forms, request, request_with_attribute, span,
    };
    use crate::validate::validate_and_filter;

    /// The decoder's path: prost, then validation; `Some(trace ids)` when every span of a
    /// non-empty request is kept.
    fn reference(body: &[u8], limits: &Limits) -> Option<Vec<TraceId>> {
        let mut req = ExportTraceServiceRequest::decode(body).ok()?;
        let v = validate_and_filter(&mut req, limits);
        (v.rejected_spans == 0 && v.accepted_spans > 0).then(|| {
            req.resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .map(|s| TraceId::try_from(s.trace_id.as_slice()).unwrap())
                .collect()
        })
    }

    /// A body the walk accepts is one the decoder's path accepts whole, with the same
    /// spans' trace ids.
    fn sound(body: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
        if let Some(c) = check(body, limits) {
            let want = reference(body, limits);
            prop_assert!(want.is_some(), "walk accepted what decoding refuses");
            let want = want.unwrap();
            prop_assert_eq!(c.spans, want.len() as u64);
            prop_assert_eq!(c.trace_ids, want);
        }
        Ok(())
    }

    /// Limits that some generated values, names and attribute lists break.
    fn limits() -> impl Strategy<Value = Limits> {
        (
            prop_oneof![Just(256usize << 10), 4usize..48],
            2usize..8,
            4usize..48,
        )
            .prop_map(|(value, attrs, name)| Limits {
                max_attribute_value_bytes: value,
                max_attributes_per_span: attrs,
                max_span_name_bytes: name,
            })
    }

    /// Makes the spans whose bit is set in `mask` keep the id and time rules (the
    /// generator breaks them too often for a whole request to pass otherwise).
    fn repair(mut req: ExportTraceServiceRequest, mask: u64) -> ExportTraceServiceRequest {
        let mut n = 0u32;
        for s in req
            .resource_spans
            .iter_mut()
            .flat_map(|rs| &mut rs.scope_spans)
            .flat_map(|ss| &mut ss.spans)
        {
            n += 1;
            if (mask >> (n % 64)) & 1 == 0 {
                continue;
            }
            s.trace_id.resize(16, 7);
            s.trace_id[0] |= 1;
            s.span_id.resize(8, 7);
            s.span_id[0] |= 1;
            if s.parent_span_id.len() != 8 {
                s.parent_span_id.clear();
            }
            s.end_time_unix_nano = s.end_time_unix_nano.max(s.start_time_unix_nano);
            for l in &mut s.links {
                l.trace_id = vec![3; 16];
                l.span_id = vec![4; 8];
            }
        }
        req
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Requests as an encoder writes them: the walk accepts exactly those the
        /// decoder's path keeps whole (so the fast path is taken whenever it may be).
        #[test]
        fn agrees_with_decoding_and_validation(
            req in request(),
            mask in prop_oneof![Just(u64::MAX), any::<u64>()],
            limits in limits(),
        ) {
            let body = repair(req, mask).encode_to_vec();
            let want = reference(&body, &limits);
            let got = check(&body, &limits);
            prop_assert_eq!(got.as_ref().map(|c| &c.trace_ids), want.as_ref());
            if let Some(c) = got {
                prop_assert_eq!(c.spans, c.trace_ids.len() as u64);
            }
        }

        /// Fields given twice, messages merged, requests concatenated: whatever the walk
        /// accepts, the decoder's path accepts whole.
        #[test]
        fn merged_bodies_are_judged_soundly(
            a in request(),
            b in request(),
            s1 in span(),
            s2 in span(),
            r1 in attributes(),
            limits in limits(),
        ) {
            let a = repair(a, u64::MAX).encode_to_vec();
            let mut span_bytes = s1.encode_to_vec();
            span_bytes.extend(s2.encode_to_vec());
            let scope_spans = field(2, &span_bytes);
            let resource = crate::otlp::resource::Resource { attributes: r1, ..Default::default() };
            let mut rs = field(2, &scope_spans);
            rs.extend(field(1, &resource.encode_to_vec()));
            let mut body = a.clone();
            body.extend(field(1, &rs));
            body.extend(repair(b, u64::MAX).encode_to_vec());
            sound(&body, &limits)?;
            sound(&[a.as_slice(), a.as_slice()].concat(), &limits)?;
        }

        /// Cut short anywhere, or with one byte changed, a body the walk accepts is one
        /// the decoder's path accepts whole.
        #[test]
        fn damaged_bodies_are_judged_soundly(
            req in request(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            limits in limits(),
        ) {
            let body = repair(req, u64::MAX).encode_to_vec();
            if body.is_empty() {
                return Ok(());
            }
            let i = at.index(body.len());
            sound(&body[..i], &limits)?;
            let mut flipped = body.clone();
            flipped[i] = byte;
            sound(&flipped, &limits)?;
        }
    }

    fn one_span(span: trace::Span) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
        .encode_to_vec()
    }

    fn good() -> trace::Span {
        trace::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "op".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            ..trace::Span::default()
        }
    }

    /// Each rule, broken once: the walk hands the body to the decoder, whose validation
    /// refuses the span; kept, the body passes.
    #[test]
    fn every_rule_sends_the_body_to_the_decoder() {
        let limits = Limits {
            max_attribute_value_bytes: 8,
            max_attributes_per_span: 2,
            max_span_name_bytes: 4,
        };
        let attr = |v: Value| KeyValue {
            key: "k".into(),
            value: Some(AnyValue { value: Some(v) }),
            ..KeyValue::default()
        };
        let mut deep = AnyValue {
            value: Some(Value::IntValue(1)),
        };
        for _ in 0..=MAX_VALUE_DEPTH {
            deep = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values: vec![deep] })),
            };
        }
        let good_body = one_span(good());
        assert_eq!(
            check(&good_body, &limits),
            Some(Checked {
                spans: 1,
                trace_ids: vec![[1; 16]]
            })
        );
        let broken = [
            trace::Span {
                trace_id: vec![1; 15],
                ..good()
            },
            trace::Span {
                trace_id: vec![0; 16],
                ..good()
            },
            trace::Span {
                span_id: vec![0; 8],
                ..good()
            },
            trace::Span {
                parent_span_id: vec![1; 4],
                ..good()
            },
            trace::Span {
                end_time_unix_nano: 9,
                ..good()
            },
            trace::Span {
                name: "toolong".into(),
                ..good()
            },
            trace::Span {
                attributes: vec![attr(Value::BoolValue(true)); 3],
                ..good()
            },
            trace::Span {
                attributes: vec![attr(Value::StringValue("123456789".into()))],
                ..good()
            },
            trace::Span {
                attributes: vec![attr(Value::BytesValue(vec![0; 9]))],
                ..good()
            },
            trace::Span {
                events: vec![trace::span::Event {
                    attributes: vec![attr(Value::StringValue("123456789".into()))],
                    ..Default::default()
                }],
                ..good()
            },
            trace::Span {
                links: vec![trace::span::Link {
                    trace_id: vec![1; 16],
                    span_id: vec![0; 8],
                    ..Default::default()
                }],
                ..good()
            },
        ];
        for (i, s) in broken.into_iter().enumerate() {
            let body = one_span(s);
            assert!(
                ExportTraceServiceRequest::decode(&body[..]).is_ok(),
                "case {i}"
            );
            assert_eq!(
                reference(&body, &limits),
                None,
                "case {i}: validation keeps it"
            );
            assert_eq!(check(&body, &limits), None, "case {i}: the walk passes it");
        }
        // A resource attribute over the limit refuses every span of the resource.
        let mut req = ExportTraceServiceRequest::decode(&good_body[..]).unwrap();
        req.resource_spans[0].resource = Some(crate::otlp::resource::Resource {
            attributes: vec![attr(Value::StringValue("123456789".into()))],
            ..Default::default()
        });
        assert_eq!(check(&req.encode_to_vec(), &limits), None);
        // Values nested past the rules' depth (prost refuses them first: too many
        // messages deep).
        let deep = one_span(trace::Span {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: Some(deep),
                ..KeyValue::default()
            }],
            ..good()
        });
        assert_eq!(check(&deep, &limits), None);
        // No span at all: nothing to store, the decoder's path answers.
        assert_eq!(check(&[], &limits), None);
    }

    /// Attributes in every form (`test_strategies::key_value_forms`, the plain ones judged
    /// without walking their fields): the walk accepts a body exactly when decoding and
    /// validation keep it whole, under the default limits and under limits that the long
    /// value breaks.
    #[test]
    fn key_values_in_every_form_are_judged_as_the_decoder_judges_them() {
        let short = Limits {
            max_attribute_value_bytes: 8,
            ..Limits::default()
        };
        for limits in [Limits::default(), short] {
            let mut kept = 0;
            for (name, kv, _) in key_value_forms() {
                let body = request_with_attribute(&kv);
                let want = reference(&body, &limits);
                kept += usize::from(want.is_some());
                let got = check(&body, &limits).map(|c| c.trace_ids);
                assert_eq!(
                    got, want,
                    "{name}, values up to {}",
                    limits.max_attribute_value_bytes
                );
            }
            assert!(kept > 10, "{kept} forms kept");
        }
    }

    /// Groups and broken wire data go to the decoder; unknown fields are skipped as
    /// prost skips them.
    #[test]
    fn wire_shapes_the_walk_leaves_to_the_decoder() {
        let limits = Limits::default();
        let wrap = |span_bytes: &[u8]| field(1, &field(2, &field(2, span_bytes)));
        let mut unknown = good().encode_to_vec();
        encode_key(98, WireType::ThirtyTwoBit, &mut unknown);
        unknown.extend([0, 0, 0, 0]);
        unknown.extend(field(96, b"\xff\xfe"));
        assert!(check(&wrap(&unknown), &limits).is_some());
        let mut group = good().encode_to_vec();
        encode_key(99, WireType::StartGroup, &mut group);
        encode_key(99, WireType::EndGroup, &mut group);
        assert!(ExportTraceServiceRequest::decode(&wrap(&group)[..]).is_ok());
        assert_eq!(check(&wrap(&group), &limits), None);
        let mut bad_utf8 = good().encode_to_vec();
        bad_utf8.extend(field(3, b"\xff"));
        assert!(ExportTraceServiceRequest::decode(&wrap(&bad_utf8)[..]).is_err());
        assert_eq!(check(&wrap(&bad_utf8), &limits), None);
        let mut wrong_wire = good().encode_to_vec();
        encode_key(16, WireType::Varint, &mut wrong_wire);
        encode_varint(1, &mut wrong_wire);
        assert!(ExportTraceServiceRequest::decode(&wrap(&wrong_wire)[..]).is_err());
        assert_eq!(check(&wrap(&wrong_wire), &limits), None);
    }
}
