//! Decodes an OTLP `ExportTraceServiceRequest` body (protobuf) straight into [`Span`]s,
//! without the generated OTLP types in between: the store pipeline's path from a WAL
//! record to the head ([`crate::envelope::Envelope::spans`]).
//!
//! Through the generated types every attribute key was a `String` allocated by the
//! decoder, then interned and freed, and every key-value pair, event and link a struct
//! converted and dropped; here keys are interned from the body's bytes and only the texts a
//! span keeps are allocated. The result is what [`crate::span::from_otlp_owned`] makes of
//! `ExportTraceServiceRequest::decode(body)` (a property test holds the two together),
//! with protobuf's rules for fields that repeat: a later scalar replaces an earlier one, a
//! message field given twice is merged, repeated fields append, an `AnyValue` given a
//! second value of another kind takes the later. Fields faultline does not keep (schema
//! URLs, scope attributes, dropped counts, flags) are skipped by their wire type, as are
//! fields this build does not know (groups included); a body prost refuses for one of them
//! (text that is not UTF-8 in a schema URL, say) is accepted here. Nesting is limited as
//! prost limits it (100 messages deep).

use std::sync::Arc;

use prost::encoding::{DecodeContext, WireType, skip_field};

use crate::envelope::EnvelopeError;
use crate::key::Key;
use crate::origins::Origins;
use crate::span::{
    AttrValue, Attributes, Event, Link, Origin, Span, SpanKind, StatusCode, TraceId,
    with_tracestate,
};

/// How many messages deep a body may nest (prost's limit).
const DEPTH: u32 = 100;

/// The spans of an OTLP trace request body. `hint` is the number of spans the sender
/// declared (the envelope's header); it only sizes the first allocation.
///
/// Resources met before on this thread are shared, not decoded again
/// ([`crate::origins`]): spans of one resource sent in many requests point at one
/// [`Origin`].
pub fn spans(body: &[u8], hint: usize) -> Result<Vec<Span>, EnvelopeError> {
    crate::origins::with(|origins| all_spans(body, hint, origins))
}

/// What [`spans`] gives, with every resource decoded again and none kept for later
/// decodes: what `faultline-bench decode` measures the shared origins against.
pub fn spans_unshared(body: &[u8], hint: usize) -> Result<Vec<Span>, EnvelopeError> {
    all_spans(body, hint, None)
}

fn all_spans(
    body: &[u8],
    hint: usize,
    mut origins: Option<&mut Origins>,
) -> Result<Vec<Span>, EnvelopeError> {
    // A span takes at least 18 bytes (a trace id with its key and length).
    let mut out = Vec::with_capacity(hint.min(body.len() / 18));
    let mut scratch = Attributes::new();
    for f in Fields::new(body) {
        if let (1, v) = f? {
            let how = (None, origins.as_deref_mut());
            resource_spans(v.bytes()?, DEPTH, how, (&mut out, &mut scratch))?;
        }
    }
    Ok(out)
}

/// The spans of an OTLP trace request body whose trace ids `keep` takes, the others
/// skipped without being decoded (a read of a few traces from a request of hundreds of
/// spans: the record read for a trace not yet indexed). What [`spans`] gives, filtered.
pub fn spans_where(
    body: &[u8],
    keep: &dyn Fn(&TraceId) -> bool,
) -> Result<Vec<Span>, EnvelopeError> {
    let mut out = Vec::new();
    let mut scratch = Attributes::new();
    for f in Fields::new(body) {
        if let (1, v) = f? {
            resource_spans(
                v.bytes()?,
                DEPTH,
                (Some(keep), None),
                (&mut out, &mut scratch),
            )?;
        }
    }
    Ok(out)
}

/// Which spans to decode: all (`None`), or those whose trace id the function takes.
type Keep<'k> = Option<&'k dyn Fn(&TraceId) -> bool>;

/// Which spans to decode, and the thread's origins to share resources through (if any).
type How<'k, 'o> = (Keep<'k>, Option<&'o mut Origins>);

/// Where decoded spans go, and the list a span's attributes are gathered in before they
/// move into a `Vec` of exactly their number (see [`span`]).
type Out<'o> = (&'o mut Vec<Span>, &'o mut Attributes);

pub(crate) fn err(what: &'static str) -> EnvelopeError {
    EnvelopeError::Scan(what)
}

/// One message deeper, or the recursion limit's error (`depth` is how many more levels
/// the body may open; the request itself counts none).
pub(crate) fn enter(depth: u32) -> Result<u32, EnvelopeError> {
    depth
        .checked_sub(1)
        .ok_or_else(|| err("the request nests messages more than 100 deep"))
}

/// A field's value as the wire carries it.
#[derive(Clone, Copy)]
pub(crate) enum Val<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
}

impl<'a> Val<'a> {
    pub(crate) fn bytes(self) -> Result<&'a [u8], EnvelopeError> {
        match self {
            Val::Bytes(b) => Ok(b),
            _ => Err(err("a field has the wrong wire type")),
        }
    }

    pub(crate) fn str(self) -> Result<&'a str, EnvelopeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| err("a string field is not UTF-8"))
    }

    pub(crate) fn varint(self) -> Result<u64, EnvelopeError> {
        match self {
            Val::Varint(v) => Ok(v),
            _ => Err(err("a field has the wrong wire type")),
        }
    }

    pub(crate) fn fixed64(self) -> Result<u64, EnvelopeError> {
        match self {
            Val::Fixed64(v) => Ok(v),
            _ => Err(err("a field has the wrong wire type")),
        }
    }

    /// Checks that the field is a 32-bit one (its value is not kept).
    pub(crate) fn fixed32(self) -> Result<(), EnvelopeError> {
        match self {
            Val::Fixed32 => Ok(()),
            _ => Err(err("a field has the wrong wire type")),
        }
    }
}

/// The fields of one message, in wire order; groups (no OTLP field is one) are skipped,
/// or refused by a strict walk.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    strict: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, strict: false }
    }

    /// A walk that refuses groups instead of skipping them: prost limits how deep groups
    /// nest by the depth of the message holding them, which a walk that only checks
    /// would have to copy exactly; refusing them is simpler and no OTLP encoder writes one.
    pub(crate) fn strict(buf: &'a [u8]) -> Self {
        Self { buf, strict: true }
    }

    fn next_field(&mut self) -> Result<Option<(u32, Val<'a>)>, EnvelopeError> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let buf = &mut self.buf;
            let (tag, wire) = field_key(buf)?;
            let val = match wire {
                WireType::Varint => Val::Varint(varint(buf)?),
                WireType::SixtyFourBit => {
                    let b = take(buf, 8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    Val::Fixed64(u64::from_le_bytes(a))
                }
                WireType::ThirtyTwoBit => {
                    take(buf, 4)?;
                    Val::Fixed32
                }
                WireType::LengthDelimited => {
                    let len = usize::try_from(varint(buf)?)
                        .map_err(|_| err("a field's length overflows"))?;
                    Val::Bytes(take(buf, len)?)
                }
                WireType::StartGroup | WireType::EndGroup if self.strict => {
                    return Err(err("a field is a group"));
                }
                WireType::StartGroup | WireType::EndGroup => {
                    skip_field(wire, tag, buf, DecodeContext::default())?;
                    continue;
                }
            };
            return Ok(Some((tag, val)));
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Val<'a>), EnvelopeError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_field() {
            Ok(f) => f.map(Ok),
            Err(e) => {
                self.buf = &[];
                Some(Err(e))
            }
        }
    }
}

/// The values of the length-delimited fields numbered `want` in message `buf`, every
/// other field skipped (the envelope's trace-id scan).
pub(crate) fn delimited(
    buf: &[u8],
    want: u32,
) -> impl Iterator<Item = Result<&[u8], EnvelopeError>> {
    Fields::new(buf).filter_map(move |f| match f {
        Ok((tag, Val::Bytes(b))) if tag == want => Some(Ok(b)),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}

/// A varint at the front of `buf`, read as prost reads one (at most ten bytes, the tenth
/// 0 or 1). A one-byte value (nearly every field key and most lengths) takes the inlined
/// branch: prost's reader, through `bytes::Buf` and a call per varint, was 4.4% of a
/// replay's instructions (BENCHMARKS.md, "Varints read inline").
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Result<u64, EnvelopeError> {
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
    {
        *buf = rest;
        return Ok(u64::from(b));
    }
    varint_long(buf)
}

/// [`varint`] of two bytes or more, or none.
#[inline(never)]
fn varint_long(buf: &mut &[u8]) -> Result<u64, EnvelopeError> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return Err(err("a varint overflows 64 bits"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *buf = buf.get(i + 1..).unwrap_or_default();
            return Ok(value);
        }
    }
    Err(err("a varint runs past the end of its message"))
}

/// A field's key: its number and wire type, refused as prost refuses them (a key over 32
/// bits, wire type 6 or 7, field number 0).
#[inline(always)]
fn field_key(buf: &mut &[u8]) -> Result<(u32, WireType), EnvelopeError> {
    let key = u32::try_from(varint(buf)?).map_err(|_| err("a field key overflows 32 bits"))?;
    let wire = match key & 7 {
        0 => WireType::Varint,
        1 => WireType::SixtyFourBit,
        2 => WireType::LengthDelimited,
        3 => WireType::StartGroup,
        4 => WireType::EndGroup,
        5 => WireType::ThirtyTwoBit,
        _ => return Err(err("a field has an unknown wire type")),
    };
    let tag = key >> 3;
    if tag == 0 {
        return Err(err("a field is numbered 0"));
    }
    Ok((tag, wire))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], EnvelopeError> {
    if n > buf.len() {
        return Err(err("a field runs past the end"));
    }
    let (v, rest) = buf.split_at(n);
    *buf = rest;
    Ok(v)
}

/// One `ResourceSpans`: its resource (every occurrence merged) first, then its scopes.
///
/// With the thread's origins, a resource sent once is looked up by its bytes (with each
/// scope's) and decoded only when this thread has not met it. A hit is what decoding
/// would give: the bytes are the same, and were decoded without error before. A
/// damaged resource never hits, so it is refused as before, ahead of its scopes.
fn resource_spans(
    buf: &[u8],
    depth: u32,
    (keep, mut origins): How<'_, '_>,
    out: Out<'_>,
) -> Result<(), EnvelopeError> {
    let depth = enter(depth)?;
    // The resource's bytes, unless it came twice.
    let bytes = once(buf, 1)?;
    let mut decoded: Option<(String, Attributes)> = None;
    let mut scopes = 0;
    for f in Fields::new(buf) {
        if let (2, v) = f? {
            scopes += 1;
            let v = match v.bytes() {
                Ok(v) => v,
                Err(e) => {
                    // A damaged resource is refused first, as it always was.
                    if decoded.is_none() {
                        resource(buf, depth)?;
                    }
                    return Err(e);
                }
            };
            // The lookup key, when the scope too came at most once (a damaged `ScopeSpans`
            // is not looked up: decoding it below refuses it).
            let key = match (&origins, bytes) {
                (Some(_), Some(r)) => once(v, 1)
                    .ok()
                    .flatten()
                    .map(|sc| (crate::origins::hash(r, sc), r, sc)),
                _ => None,
            };
            let hit = match (origins.as_deref(), key) {
                (Some(o), Some((h, r, sc))) => o.get(h, r, sc),
                _ => None,
            };
            let origin = match hit {
                Some(origin) => origin,
                None => {
                    let (service, resource) = match &mut decoded {
                        Some(d) => d,
                        d => d.insert(resource(buf, depth)?),
                    };
                    let origin = scope_origin(v, depth, (service, resource))?;
                    if let (Some(o), Some((h, r, sc))) = (origins.as_deref_mut(), key) {
                        o.put(h, r, sc, &origin);
                    }
                    origin
                }
            };
            scope_spans(v, depth, &origin, keep, (&mut *out.0, &mut *out.1))?;
        }
    }
    if scopes == 0 {
        // No spans, but a damaged resource is still refused.
        resource(buf, depth)?;
    }
    Ok(())
}

/// The resource of a `ResourceSpans` (every occurrence merged) and its service name.
fn resource(buf: &[u8], depth: u32) -> Result<(String, Attributes), EnvelopeError> {
    let mut resource = Attributes::new();
    for f in Fields::new(buf) {
        if let (1, v) = f? {
            // Resource: attributes (1).
            let inner = enter(depth)?;
            for f in Fields::new(v.bytes()?) {
                if let (1, v) = f? {
                    resource.push(key_value(v.bytes()?, inner)?);
                }
            }
        }
    }
    let service = match resource.iter().find(|(k, _)| k.as_str() == "service.name") {
        Some((_, AttrValue::Str(s))) => s.to_string(),
        _ => crate::UNKNOWN_SERVICE.to_string(),
    };
    Ok((service, resource))
}

/// The bytes of the message field `number` of `buf` when it came at most once (empty
/// when absent); `None` when it came more than once (its occurrences merge). Reads all of
/// `buf`'s fields, so a damaged one is refused here.
fn once(buf: &[u8], number: u32) -> Result<Option<&[u8]>, EnvelopeError> {
    let mut bytes: Option<&[u8]> = Some(&[]);
    let mut occurrences = 0;
    for f in Fields::new(buf) {
        let (n, v) = f?;
        if n == number {
            let b = v.bytes()?;
            occurrences += 1;
            bytes = (occurrences == 1).then_some(b);
        }
    }
    Ok(bytes)
}

/// The origin of a `ScopeSpans`: its scope's name and version with the resource.
fn scope_origin(
    buf: &[u8],
    depth: u32,
    (service, resource): (&str, &Attributes),
) -> Result<Arc<Origin>, EnvelopeError> {
    let depth = enter(depth)?;
    let (mut scope_name, mut scope_version) = (String::new(), String::new());
    for f in Fields::new(buf) {
        if let (1, v) = f? {
            enter(depth)?;
            for f in Fields::new(v.bytes()?) {
                match f? {
                    (1, v) => v.str()?.clone_into(&mut scope_name),
                    (2, v) => v.str()?.clone_into(&mut scope_version),
                    _ => {}
                }
            }
        }
    }
    Ok(Arc::new(Origin {
        service: service.to_string(),
        resource: resource.clone(),
        scope_name,
        scope_version,
    }))
}

/// The spans of one `ScopeSpans`, all of `origin`.
fn scope_spans(
    buf: &[u8],
    depth: u32,
    origin: &Arc<Origin>,
    keep: Keep<'_>,
    (out, scratch): Out<'_>,
) -> Result<(), EnvelopeError> {
    let depth = enter(depth)?;
    for f in Fields::new(buf) {
        if let (2, v) = f? {
            let buf = v.bytes()?;
            if let Some(keep) = keep
                && !trace_id_of(buf)?.is_some_and(|id| keep(&id))
            {
                continue;
            }
            if let Some(s) = span(buf, depth, origin, scratch)? {
                out.push(s);
            }
        }
    }
    Ok(())
}

/// A span's trace id (its last occurrence, as a decode keeps), when it is 16 bytes.
fn trace_id_of(buf: &[u8]) -> Result<Option<TraceId>, EnvelopeError> {
    let mut id: &[u8] = &[];
    for f in Fields::new(buf) {
        if let (1, v) = f? {
            id = v.bytes()?;
        }
    }
    Ok(id.try_into().ok())
}

/// One span, or `None` when its ids are not of the right length.
///
/// Its attributes are gathered in `scratch` and then moved into a list of exactly their
/// number: pushed one by one into a new list, twenty attributes took four allocations and
/// left room for thirty-two, 672 bytes per span held unused in the head until the seal.
fn span(
    buf: &[u8],
    depth: u32,
    origin: &Arc<Origin>,
    scratch: &mut Attributes,
) -> Result<Option<Span>, EnvelopeError> {
    let depth = enter(depth)?;
    scratch.clear();
    let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let mut trace_state = "";
    let mut name = String::new();
    let (mut kind, mut start_ns, mut end_ns) = (0i32, 0u64, 0u64);
    let mut events = Vec::new();
    let mut links = Vec::new();
    let (mut status, mut status_message) = (0i32, String::new());
    for f in Fields::new(buf) {
        match f? {
            (1, v) => trace_id = v.bytes()?,
            (2, v) => span_id = v.bytes()?,
            (3, v) => trace_state = v.str()?,
            (4, v) => parent = v.bytes()?,
            (5, v) => v.str()?.clone_into(&mut name),
            // An enum is an int32: its low 32 bits.
            (6, v) => kind = v.varint()? as i32,
            (7, v) => start_ns = v.fixed64()?,
            (8, v) => end_ns = v.fixed64()?,
            (9, v) => scratch.push(key_value(v.bytes()?, depth)?),
            (11, v) => events.push(event(v.bytes()?, depth)?),
            (13, v) => {
                if let Some(l) = link(v.bytes()?, depth)? {
                    links.push(l);
                }
            }
            (15, v) => {
                enter(depth)?;
                for f in Fields::new(v.bytes()?) {
                    match f? {
                        (2, v) => v.str()?.clone_into(&mut status_message),
                        (3, v) => status = v.varint()? as i32,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (Ok(trace_id), Ok(span_id)) = (trace_id.try_into(), span_id.try_into()) else {
        return Ok(None);
    };
    // Room for the trace state too, which `with_tracestate` may add.
    let mut attributes =
        Attributes::with_capacity(scratch.len() + usize::from(!trace_state.is_empty()));
    attributes.append(scratch);
    Ok(Some(Span {
        trace_id,
        span_id,
        parent_span_id: <[u8; 8]>::try_from(parent)
            .ok()
            .filter(|p| p.iter().any(|b| *b != 0)),
        name,
        kind: SpanKind::from_i32(kind),
        start_ns,
        end_ns,
        status: StatusCode::from_i32(status),
        status_message,
        attributes: with_tracestate(attributes, trace_state.to_string()),
        events,
        links,
        origin: origin.clone(),
    }))
}

fn event(buf: &[u8], depth: u32) -> Result<Event, EnvelopeError> {
    let depth = enter(depth)?;
    let mut e = Event {
        time_ns: 0,
        name: String::new(),
        attributes: Attributes::new(),
    };
    for f in Fields::new(buf) {
        match f? {
            (1, v) => e.time_ns = v.fixed64()?,
            (2, v) => v.str()?.clone_into(&mut e.name),
            (3, v) => e.attributes.push(key_value(v.bytes()?, depth)?),
            _ => {}
        }
    }
    Ok(e)
}

/// A link, or `None` when its ids are not of the right length.
fn link(buf: &[u8], depth: u32) -> Result<Option<Link>, EnvelopeError> {
    let depth = enter(depth)?;
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    let mut attributes = Attributes::new();
    for f in Fields::new(buf) {
        match f? {
            (1, v) => trace_id = v.bytes()?,
            (2, v) => span_id = v.bytes()?,
            (4, v) => attributes.push(key_value(v.bytes()?, depth)?),
            _ => {}
        }
    }
    Ok(match (trace_id.try_into(), span_id.try_into()) {
        (Ok(trace_id), Ok(span_id)) => Some(Link {
            trace_id,
            span_id,
            attributes,
        }),
        _ => None,
    })
}

/// A `KeyValue`: the key interned from the body's bytes, the value (every occurrence
/// merged).
fn key_value(buf: &[u8], depth: u32) -> Result<(Key, AttrValue), EnvelopeError> {
    match plain_key_value(buf, depth) {
        Some(kv) => Ok(kv),
        None => walked_key_value(buf, depth),
    }
}

/// [`key_value`] by walking the fields: any form, every error.
fn walked_key_value(buf: &[u8], depth: u32) -> Result<(Key, AttrValue), EnvelopeError> {
    let depth = enter(depth)?;
    // The last key is checked for UTF-8 by the interner's lookup (see `Key::from_utf8`),
    // one given before it here.
    let mut key: &[u8] = &[];
    let mut value = AttrValue::Empty;
    for f in Fields::new(buf) {
        match f? {
            (1, v) => {
                if !key.is_empty() {
                    std::str::from_utf8(key).map_err(|_| err("a string field is not UTF-8"))?;
                }
                key = v.bytes()?;
            }
            (2, v) => any_value(v.bytes()?, depth, &mut value)?,
            _ => {}
        }
    }
    let key = Key::from_utf8(key).ok_or(err("a string field is not UTF-8"))?;
    Ok((key, value))
}

/// A `KeyValue` in the form every OTLP encoder writes, read without walking its fields
/// ([`plain_parts`]); `None` for any other form, and for anything wrong (text that is not
/// UTF-8, nesting too deep): [`key_value`]'s walk then reads it, with its errors. The walk
/// took five field reads and two calls for each attribute, and attributes were most of a
/// span's decode (BENCHMARKS.md, "Attributes read in their usual form").
#[inline]
fn plain_key_value(buf: &[u8], depth: u32) -> Option<(Key, AttrValue)> {
    // `key_value` and `any_value` each go one message deeper (`enter` twice).
    depth.checked_sub(2)?;
    let (key, value) = plain_parts(buf)?;
    let value = match value {
        Plain::Str(text) => AttrValue::Str(std::str::from_utf8(text).ok()?.into()),
        Plain::Bool(b) => AttrValue::Bool(b),
        Plain::Int(i) => AttrValue::Int(i),
        Plain::Double(d) => AttrValue::Double(d),
        Plain::Empty => AttrValue::Empty,
    };
    Some((Key::from_utf8(key)?, value))
}

/// The value of a `KeyValue` in its plain form (see [`plain_parts`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Plain<'a> {
    /// `string_value`, its bytes not yet checked for UTF-8.
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// An `AnyValue` with no field.
    Empty,
}

/// The key's bytes and the value of a `KeyValue` body in the form every OTLP encoder
/// writes: the key (field 1), then the value (field 2) holding one string, bool, int or
/// double, or nothing, each once and nothing else, every length within the body. `None`
/// for any other form. Nothing is checked for UTF-8 and no depth is counted: the callers
/// do, as their walks would.
#[inline]
pub(crate) fn plain_parts(buf: &[u8]) -> Option<(&[u8], Plain<'_>)> {
    let mut buf = buf;
    let key = delimited_field(&mut buf, 1)?;
    let mut v = delimited_field(&mut buf, 2)?;
    if !buf.is_empty() {
        return None;
    }
    let value = match v.split_first() {
        None => Plain::Empty,
        Some((&b, rest)) => {
            v = rest;
            match b {
                // string_value (1), length-delimited
                0x0a => {
                    let len = usize::try_from(varint(&mut v).ok()?).ok()?;
                    Plain::Str(take(&mut v, len).ok()?)
                }
                // bool_value (2) and int_value (3), varints
                0x10 => Plain::Bool(varint(&mut v).ok()? != 0),
                0x18 => Plain::Int(varint(&mut v).ok()? as i64),
                // double_value (4), 64-bit
                0x21 => {
                    let bits = take(&mut v, 8).ok()?;
                    Plain::Double(f64::from_le_bytes(bits.try_into().ok()?))
                }
                _ => return None,
            }
        }
    };
    v.is_empty().then_some((key, value))
}

/// The length-delimited field numbered `number` (1 to 15) at the front of `buf`, or
/// `None` when the front is anything else.
#[inline(always)]
fn delimited_field<'a>(buf: &mut &'a [u8], number: u8) -> Option<&'a [u8]> {
    let (&first, rest) = buf.split_first()?;
    if first != (number << 3) | 2 {
        return None;
    }
    *buf = rest;
    let len = usize::try_from(varint(buf).ok()?).ok()?;
    take(buf, len).ok()
}

/// Merges an `AnyValue` into `value`.
fn any_value(buf: &[u8], depth: u32, value: &mut AttrValue) -> Result<(), EnvelopeError> {
    let depth = enter(depth)?;
    for f in Fields::new(buf) {
        match f? {
            (1, v) => *value = AttrValue::Str(v.str()?.into()),
            (2, v) => *value = AttrValue::Bool(v.varint()? != 0),
            (3, v) => *value = AttrValue::Int(v.varint()? as i64),
            (4, v) => *value = AttrValue::Double(f64::from_bits(v.fixed64()?)),
            (5, v) => {
                if !matches!(value, AttrValue::Array(_)) {
                    *value = AttrValue::Array(Vec::new());
                }
                if let AttrValue::Array(items) = value {
                    let inner = enter(depth)?;
                    for f in Fields::new(v.bytes()?) {
                        if let (1, v) = f? {
                            let mut item = AttrValue::Empty;
                            any_value(v.bytes()?, inner, &mut item)?;
                            items.push(item);
                        }
                    }
                }
            }
            (6, v) => {
                if !matches!(value, AttrValue::KvList(_)) {
                    *value = AttrValue::KvList(Attributes::new());
                }
                if let AttrValue::KvList(kvs) = value {
                    let inner = enter(depth)?;
                    for f in Fields::new(v.bytes()?) {
                        if let (1, v) = f? {
                            kvs.push(key_value(v.bytes()?, inner)?);
                        }
                    }
                }
            }
            (7, v) => *value = AttrValue::Bytes(v.bytes()?.to_vec()),
            // A string table index (profiles' dictionary): no text to keep.
            (8, v) => {
                v.varint()?;
                *value = AttrValue::Empty;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;
    use prost::encoding::{encode_key, encode_varint};

    use super::*;
    use crate::ExportTraceServiceRequest;
    use crate::otlp::common::{AnyValue, ArrayValue, InstrumentationScope, KeyValue};
    use crate::otlp::resource::Resource;
    use crate::otlp::trace::{self, ResourceSpans, ScopeSpans};
    use crate::test_strategies::{
        any_value, attributes, cat, field, key_value_forms, request, request_with_attribute, span,
    };

    /// A string value is its text whatever its length, held inline up to 24 bytes (no
    /// allocation of its own) and on the heap beyond, by either way of reading it.
    #[test]
    fn string_values_are_inline_up_to_24_bytes() {
        for text in [
            "",
            "a",
            "eu-west-1",
            "23 bytes of plain text.",
            "24 bytes of plain text..",
            "25 bytes of plain text...",
            "ünïcödé, 21 bytes",
            "ünï: twenty-four bytes",
            "ünï: twenty-five bytes!",
            "SELECT * FROM orders WHERE id = 42",
        ] {
            let value = field(2, &field(1, text.as_bytes()));
            // The plain form, and one the walk reads (a repeated key).
            for kv in [
                cat(&[&field(1, b"k"), &value]),
                cat(&[&field(1, b"x"), &field(1, b"k"), &value]),
            ] {
                let got = spans(&request_with_attribute(&kv), 1).unwrap();
                let (key, v) = &got[0].attributes[0];
                assert_eq!(key.as_str(), "k");
                let AttrValue::Str(s) = v else {
                    panic!("{text:?}: {v:?}")
                };
                assert_eq!(s.as_str(), text);
                assert_eq!(s.is_heap_allocated(), text.len() > 24, "{text:?}");
            }
        }
    }

    /// What the generated types and `from_otlp_owned` make of `body`.
    fn reference(body: &[u8]) -> Result<Vec<Span>, prost::DecodeError> {
        ExportTraceServiceRequest::decode(body).map(crate::span::from_otlp_owned)
    }

    /// Both decoders agree on `body`: the same spans, or both refuse it.
    fn agree(body: &[u8]) -> Result<(), TestCaseError> {
        match (reference(body), spans(body, 0)) {
            (Ok(want), Ok(got)) => prop_assert_eq!(got, want),
            (Err(_), Err(_)) => {}
            (want, got) => prop_assert!(false, "reference {:?}, direct {:?}", want, got),
        }
        Ok(())
    }

    /// Bytes that start with a varint of `len` bytes (the last without the continuation
    /// bit unless `open`), any values, then `tail`.
    fn varint_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            1..12usize,
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 12),
            prop::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(len, open, raw, tail)| {
                let mut b: Vec<u8> = raw[..len].iter().map(|x| x | 0x80).collect();
                if !open {
                    b[len - 1] &= 0x7f;
                }
                b.extend(tail);
                b
            })
    }

    /// Our reader and prost's on `bytes`: the same value and the same bytes left, or both
    /// refusing.
    fn same_read<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
        bytes: &[u8],
        ours: impl Fn(&mut &[u8]) -> Result<T, EnvelopeError>,
        prost: impl Fn(&mut &[u8]) -> Result<T, E>,
    ) -> Result<(), TestCaseError> {
        let (mut a, mut b) = (bytes, bytes);
        match (ours(&mut a), prost(&mut b)) {
            (Ok(x), Ok(y)) => {
                prop_assert_eq!(x, y);
                prop_assert_eq!(a, b);
            }
            (Err(_), Err(_)) => {}
            (x, y) => prop_assert!(false, "ours {:?}, prost {:?}", x, y),
        }
        Ok(())
    }

    /// The bounds, every one: each value of a last byte after 0 to 10 bytes with the
    /// continuation bit (the tenth may be 0 or 1 only), and every cut-off length.
    #[test]
    fn varints_and_keys_at_every_length_and_last_byte_read_as_prost_reads_them() {
        for cont in [0x80u8, 0xff] {
            for len in 0..=10 {
                for last in 0..=255u8 {
                    let mut bytes = vec![cont; len];
                    bytes.push(last);
                    same_read(&bytes, varint, |b| prost::encoding::decode_varint(b)).unwrap();
                    same_read(&bytes, field_key, |b| prost::encoding::decode_key(b)).unwrap();
                }
                let cut = vec![cont; len];
                same_read(&cut, varint, |b| prost::encoding::decode_varint(b)).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Varints and field keys are read, and refused, exactly as prost reads them:
        /// lengths 1 to 11, the tenth byte over 1, keys over 32 bits, wire types 6 and 7,
        /// field number 0, a varint cut off.
        #[test]
        fn varints_and_keys_read_as_prost_reads_them(
            bytes in prop_oneof![varint_bytes(), prop::collection::vec(any::<u8>(), 0..12)],
        ) {
            same_read(&bytes, varint, |b| prost::encoding::decode_varint(b))?;
            same_read(&bytes, field_key, |b| prost::encoding::decode_key(b))?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Requests as an OTLP encoder writes them: the same spans as through the
        /// generated types.
        #[test]
        fn decodes_as_the_generated_types_do(req in request()) {
            agree(&req.encode_to_vec())?;
        }

        /// A request decoded again, its resources now met before (shared, not decoded),
        /// gives the same spans, on the same origins.
        #[test]
        fn resources_met_before_decode_as_they_did(req in request()) {
            let body = req.encode_to_vec();
            agree(&body)?;
            agree(&body)?;
            if let (Ok(a), Ok(b)) = (spans(&body, 0), spans(&body, 0)) {
                for (x, y) in a.iter().zip(&b) {
                    prop_assert!(Arc::ptr_eq(&x.origin, &y.origin));
                }
                // Unshared: the same spans, on origins of their own.
                let c = spans_unshared(&body, 0);
                prop_assert_eq!(c.as_ref().ok(), Some(&a));
                for (x, z) in a.iter().zip(c.iter().flatten()) {
                    prop_assert!(!Arc::ptr_eq(&x.origin, &z.origin));
                }
            } else {
                prop_assert_eq!(
                    spans_unshared(&body, 0).map_err(|e| e.to_string()),
                    spans(&body, 0).map_err(|e| e.to_string())
                );
            }
        }

        /// Fields given twice and out of order (protobuf merges messages, appends repeated
        /// fields, lets later scalars win): two spans' encodings as one span, two resources
        /// and two scopes, the resource after the scopes, two requests end to end.
        #[test]
        fn merges_repeated_fields_as_protobuf_does(
            a in request(),
            b in request(),
            s1 in span(),
            s2 in span(),
            r1 in attributes(),
            r2 in attributes(),
            v1 in any_value(),
            v2 in any_value(),
        ) {
            let mut span_bytes = s1.encode_to_vec();
            span_bytes.extend(s2.encode_to_vec());
            // A key-value whose value comes twice.
            let mut kv = KeyValue { key: "k".into(), value: v1, ..KeyValue::default() }.encode_to_vec();
            kv.extend(KeyValue { key: "k2".into(), value: v2, ..KeyValue::default() }.encode_to_vec());
            span_bytes.extend(field(9, &kv));
            let scope = |name: &str| InstrumentationScope { name: name.into(), ..InstrumentationScope::default() }.encode_to_vec();
            let mut scope_spans = field(2, &span_bytes);
            scope_spans.extend(field(1, &scope("first")));
            scope_spans.extend(field(1, &scope("")));
            let resource = |attributes| Resource { attributes, ..Resource::default() }.encode_to_vec();
            let mut rs = field(2, &scope_spans);
            rs.extend(field(1, &resource(r1)));
            rs.extend(field(1, &resource(r2)));
            let mut body = field(1, &rs);
            body.extend(a.encode_to_vec());
            body.extend(b.encode_to_vec());
            agree(&body)?;
        }

        /// Decoding only the spans of some traces gives those of all the spans.
        #[test]
        fn spans_where_filters_as_decoding_all_does(req in request(), pick in any::<u64>()) {
            let body = req.encode_to_vec();
            let all = spans(&body, 0).unwrap();
            // Some of the request's trace ids, and one it does not hold.
            let mut wanted: Vec<TraceId> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| (pick >> (i % 64)) & 1 == 1)
                .map(|(_, s)| s.trace_id)
                .collect();
            wanted.push([0xEE; 16]);
            let keep = |id: &TraceId| wanted.contains(id);
            let want: Vec<Span> = all.iter().filter(|s| keep(&s.trace_id)).cloned().collect();
            prop_assert_eq!(spans_where(&body, &keep).unwrap(), want);
        }

        /// Cut short anywhere, both refuse the body or read the same spans from it.
        #[test]
        fn truncated_bodies_are_read_alike(req in request(), cut in any::<prop::sample::Index>()) {
            let body = req.encode_to_vec();
            agree(&body[..cut.index(body.len() + 1)])?;
        }
    }

    /// Unknown fields of every wire type (a group included) are skipped; a string that is
    /// not UTF-8 and a field of the wrong wire type are refused by both.
    #[test]
    fn unknown_fields_are_skipped_and_broken_ones_refused() {
        let span = trace::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "op".into(),
            ..trace::Span::default()
        };
        let wrap = |span_bytes: &[u8]| field(1, &field(2, &field(2, span_bytes)));
        let mut unknown = span.encode_to_vec();
        encode_key(99, WireType::StartGroup, &mut unknown);
        encode_key(1, WireType::Varint, &mut unknown);
        encode_varint(5, &mut unknown);
        encode_key(99, WireType::EndGroup, &mut unknown);
        encode_key(98, WireType::ThirtyTwoBit, &mut unknown);
        unknown.extend([0, 0, 0, 0]);
        encode_key(97, WireType::SixtyFourBit, &mut unknown);
        unknown.extend([0; 8]);
        unknown.extend(field(96, b"\xff\xfe"));
        let got = spans(&wrap(&unknown), 1).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got, reference(&wrap(&unknown)).unwrap());
        // The envelope's trace-id scan walks the same way (it refused groups before).
        let payload = crate::envelope::encode(
            crate::envelope::Protocol::OtlpHttpProtobuf,
            1,
            &wrap(&unknown),
        );
        let env = crate::envelope::decode(&payload).unwrap();
        assert_eq!(env.trace_ids().unwrap(), vec![[1u8; 16]]);
        // The name, not UTF-8.
        let mut bad = span.encode_to_vec();
        bad.extend(field(5, b"\xff\xfe"));
        assert!(reference(&wrap(&bad)).is_err());
        assert!(spans(&wrap(&bad), 1).is_err());
        // The start time as a varint.
        let mut wrong = span.encode_to_vec();
        encode_key(7, WireType::Varint, &mut wrong);
        encode_varint(5, &mut wrong);
        assert!(reference(&wrap(&wrong)).is_err());
        assert!(spans(&wrap(&wrong), 1).is_err());
    }

    /// Resources of one request met again in the next are shared per (resource, scope);
    /// a resource given twice in one `ResourceSpans` merges as protobuf merges it; a
    /// damaged resource is refused every time, with or without spans.
    #[test]
    fn resources_are_shared_across_requests_by_resource_and_scope() {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(crate::otlp::common::any_value::Value::StringValue(v.into())),
            }),
            ..KeyValue::default()
        };
        let resource = |svc: &str| Resource {
            attributes: vec![kv("service.name", svc), kv("host.name", "h-1")],
            ..Resource::default()
        };
        let scope = |name: &str, id: u8| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                ..InstrumentationScope::default()
            }),
            spans: vec![trace::Span {
                trace_id: vec![id; 16],
                span_id: vec![id; 8],
                name: format!("op{id}"),
                ..trace::Span::default()
            }],
            ..ScopeSpans::default()
        };
        let request = |groups: Vec<ResourceSpans>| {
            ExportTraceServiceRequest {
                resource_spans: groups,
            }
            .encode_to_vec()
        };
        let group = |svc: &str, scopes: Vec<ScopeSpans>| ResourceSpans {
            resource: Some(resource(svc)),
            scope_spans: scopes,
            ..ResourceSpans::default()
        };
        let first = request(vec![group("cart", vec![scope("lib", 1)])]);
        let second = request(vec![
            group("cart", vec![scope("lib", 2), scope("other", 3)]),
            group("db", vec![scope("lib", 4)]),
        ]);
        let a = spans(&first, 1).unwrap();
        let b = spans(&second, 3).unwrap();
        assert_eq!(a, reference(&first).unwrap());
        assert_eq!(b, reference(&second).unwrap());
        assert!(
            Arc::ptr_eq(&a[0].origin, &b[0].origin),
            "cart/lib not shared"
        );
        assert!(
            !Arc::ptr_eq(&b[0].origin, &b[1].origin),
            "the scope is part of it"
        );
        assert_eq!(b[1].origin.scope_name, "other");
        assert_eq!(b[2].service(), "db");
        // A resource given twice merges (never looked up by one of its occurrences).
        let mut twice = ResourceSpans::default().encode_to_vec();
        twice.extend(field(1, &resource("cart").encode_to_vec()));
        twice.extend(field(
            1,
            &Resource {
                attributes: vec![kv("k8s.pod.name", "p-1")],
                ..Resource::default()
            }
            .encode_to_vec(),
        ));
        twice.extend(field(2, &scope("lib", 5).encode_to_vec()));
        let body = field(1, &twice);
        let got = spans(&body, 1).unwrap();
        assert_eq!(got, reference(&body).unwrap());
        assert_eq!(got[0].origin.resource.len(), 3);
        assert!(!Arc::ptr_eq(&got[0].origin, &a[0].origin));
        let pod = request(vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("k8s.pod.name", "p-1")],
                ..Resource::default()
            }),
            scope_spans: vec![scope("lib", 7)],
            ..ResourceSpans::default()
        }]);
        assert_eq!(spans(&pod, 1).unwrap(), reference(&pod).unwrap());
        // A damaged resource (a key that is not UTF-8), with spans and without.
        let mut bad = Vec::new();
        bad.extend(field(1, &field(1, &field(1, b"\xff\xfe"))));
        let with_spans = {
            let mut g = bad.clone();
            g.extend(field(2, &scope("lib", 6).encode_to_vec()));
            field(1, &g)
        };
        for body in [with_spans, field(1, &bad)] {
            for _ in 0..2 {
                assert!(reference(&body).is_err());
                assert!(spans(&body, 1).is_err());
            }
        }
    }

    /// Values nested as deep as prost allows are read; one level more is refused by both.
    #[test]
    fn nesting_is_limited_as_prost_limits_it() {
        use crate::otlp::common::any_value::Value;
        let mut verdicts = Vec::new();
        for levels in 40..52 {
            let mut v = AnyValue {
                value: Some(Value::IntValue(1)),
            };
            for _ in 0..levels {
                v = AnyValue {
                    value: Some(Value::ArrayValue(ArrayValue { values: vec![v] })),
                };
            }
            let req = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![trace::Span {
                            trace_id: vec![1; 16],
                            span_id: vec![2; 8],
                            attributes: vec![KeyValue {
                                key: "deep".into(),
                                value: Some(v),
                                ..KeyValue::default()
                            }],
                            ..trace::Span::default()
                        }],
                        ..ScopeSpans::default()
                    }],
                    ..ResourceSpans::default()
                }],
            };
            let body = req.encode_to_vec();
            let (want, got) = (reference(&body), spans(&body, 1));
            assert_eq!(want.is_ok(), got.is_ok(), "{levels} levels");
            if let (Ok(want), Ok(got)) = (want, got) {
                assert_eq!(want, got);
            }
            verdicts.push(got_ok(&body));
        }
        assert!(verdicts.first() == Some(&true) && verdicts.last() == Some(&false));
    }

    fn got_ok(body: &[u8]) -> bool {
        spans(body, 1).is_ok()
    }

    /// The plain forms take the short path, every other form the walk, and where the
    /// short path answers it answers what the walk does; whole requests holding each form
    /// decode as the generated types decode them (or both refuse them).
    #[test]
    fn key_values_in_every_form_read_as_the_walk_and_prost_read_them() {
        for (name, kv, plain) in key_value_forms() {
            let short = plain_key_value(&kv, DEPTH);
            assert_eq!(short.is_some(), plain, "{name}: short path taken");
            if let Some(got) = short {
                let walked = walked_key_value(&kv, DEPTH).unwrap();
                assert_eq!(got.0.as_str(), walked.0.as_str(), "{name}");
                assert_eq!(got.1, walked.1, "{name}");
            }
            let body = request_with_attribute(&kv);
            match (reference(&body), spans(&body, 1)) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "{name}"),
                (Err(_), Err(_)) => {}
                (want, got) => panic!("{name}: reference {want:?}, direct {got:?}"),
            }
        }
        // Too deep for the value: the walk's error, not a short answer.
        let kv = cat(&[&field(1, b"k"), &field(2, &field(1, b"v"))]);
        assert!(plain_key_value(&kv, 1).is_none());
        assert!(key_value(&kv, 1).is_err());
        assert!(key_value(&kv, 2).is_ok());
    }

    /// A span's attributes take a list of exactly their number (with room for the trace
    /// state it adds), not a list grown by doubling.
    #[test]
    fn attributes_are_held_in_a_list_of_their_size() {
        for n in [0usize, 1, 5, 17, 33] {
            let mut span = cat(&[&field(1, &[7; 16]), &field(2, &[9; 8])]);
            for i in 0..n {
                span.extend(field(
                    9,
                    &cat(&[
                        &field(1, format!("k{i}").as_bytes()),
                        &field(2, &field(1, b"v")),
                    ]),
                ));
            }
            let plain = field(1, &field(2, &field(2, &span)));
            let got = spans(&plain, 1).unwrap();
            assert_eq!(got[0].attributes.len(), n);
            assert_eq!(got[0].attributes.capacity(), n, "{n} attributes");
            span.extend(field(3, b"ot=th:8"));
            let traced = field(1, &field(2, &field(2, &span)));
            let got = spans(&traced, 1).unwrap();
            assert_eq!(got[0].attributes.len(), n + 1);
            assert_eq!(
                got[0].attributes.capacity(),
                n + 1,
                "{n} attributes and a trace state"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// On any bytes, and on the forms above with a byte changed or cut short, the short
        /// path either declines or answers what the walk answers.
        #[test]
        fn the_short_path_answers_as_the_walk_or_not_at_all(
            form in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
            random in prop::collection::vec(any::<u8>(), 0..24),
        ) {
            let forms = key_value_forms();
            let mut kv = forms[form.index(forms.len())].1.clone();
            if !kv.is_empty() {
                let i = at.index(kv.len());
                if cut { kv.truncate(i) } else { kv[i] = byte }
            }
            for bytes in [kv, random] {
                if let Some(got) = plain_key_value(&bytes, DEPTH) {
                    let walked = walked_key_value(&bytes, DEPTH);
                    prop_assert!(walked.is_ok(), "{:?}: walk refused {:?}", bytes, walked);
                    if let Ok(walked) = walked {
                        prop_assert_eq!(got.0.as_str(), walked.0.as_str());
                        prop_assert_eq!(got.1, walked.1);
                    }
                }
            }
        }
    }
}
