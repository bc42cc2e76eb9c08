//! The RowBinary encoding of spans, the body of every insert into `spans`, and the
//! reading of RowBinary answers.
//!
//! RowBinary is ClickHouse's row format without names or types: each row is its columns'
//! values one after another, in the order the `INSERT`'s column list names them:
//!
//! ```text
//! UInt8/UInt32/UInt64   little-endian, 1/4/8 bytes
//! FixedString(N)        N bytes
//! String                LEB128 length, then the bytes
//! Array(String)         LEB128 count, then each String
//! ```
//!
//! A span's row ([`SPAN_COLUMNS`]):
//!
//! ```text
//! trace_id FixedString(16)   span_id FixedString(8)   parent_span_id FixedString(8) (zeros: a root)
//! service String   name String   kind UInt8 (OTLP)   status UInt8 (OTLP: 0 unset, 1 ok, 2 error)
//! start_ns UInt64   duration_ns UInt64
//! attr_keys Array(String)   attr_values Array(String)   the span's attributes in order, values
//!                                                       as text (for filters and for reading back)
//! attr_types Array(UInt8)    each attribute's type: 0 string, 1 int, 2 double, 3 bool (read back
//!                            from its text exactly), 255 any other (read back from `otlp`)
//! otlp String        what no column holds, as an OTLP ExportTraceServiceRequest of the span
//!                    alone (protobuf): resource, scope, events, links, the status message and
//!                    the attributes of type 255; its ids are zeros, its name empty, its kind,
//!                    status code and times zero, so they cost nothing twice
//! node String   wal_seq UInt64   span_idx UInt32        which node's WAL record, and where in it
//! ```
//!
//! A span is read back from the columns [`SPAN_READ_COLUMNS`] by [`decode_span`], equal
//! to the span written.

use faultline_model::ExportTraceServiceRequest;
use faultline_model::span::{AttrValue, Span, SpanKind, StatusCode, from_otlp_owned, to_otlp};
use prost::Message;

/// The columns of a span's row, in order, as the `INSERT` names them.
pub const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, service, name, kind, status, \
start_ns, duration_ns, attr_keys, attr_values, attr_types, otlp, node, wal_seq, span_idx";

/// The columns [`decode_span`] reads, in order.
pub const SPAN_READ_COLUMNS: &str = "trace_id, span_id, parent_span_id, name, kind, status, \
start_ns, duration_ns, attr_keys, attr_values, attr_types, otlp";

/// `attr_types` of an attribute read back from `otlp`.
const IN_OTLP: u8 = 255;

fn attr_type(v: &AttrValue) -> u8 {
    match v {
        AttrValue::Str(_) => 0,
        AttrValue::Int(_) => 1,
        AttrValue::Double(_) => 2,
        AttrValue::Bool(_) => 3,
        _ => IN_OTLP,
    }
}

/// The `otlp` column of `s`: the span without what the other columns hold.
fn rest(s: &Span) -> Vec<u8> {
    let mut req = to_otlp(std::slice::from_ref(s));
    let span = req
        .resource_spans
        .first_mut()
        .and_then(|rs| rs.scope_spans.first_mut())
        .and_then(|ss| ss.spans.first_mut());
    if let Some(sp) = span {
        // Ids stay, as zeros: a span without them does not convert back.
        sp.trace_id = vec![0; 16];
        sp.span_id = vec![0; 8];
        sp.parent_span_id.clear();
        sp.name.clear();
        sp.kind = 0;
        sp.start_time_unix_nano = 0;
        sp.end_time_unix_nano = 0;
        if let Some(st) = sp.status.as_mut() {
            st.code = 0;
        }
        let mut i = 0;
        sp.attributes.retain(|_| {
            let keep = s
                .attributes
                .get(i)
                .is_none_or(|(_, v)| attr_type(v) == IN_OTLP);
            i += 1;
            keep
        });
    }
    req.encode_to_vec()
}

/// Reads one span from a row of [`SPAN_READ_COLUMNS`]; `None` when the row is truncated
/// or its parts do not decode.
pub fn decode_span(r: &mut RowReader<'_>) -> Option<Span> {
    let trace_id: [u8; 16] = r.fixed(16)?.try_into().ok()?;
    let span_id: [u8; 8] = r.fixed(8)?.try_into().ok()?;
    let parent: [u8; 8] = r.fixed(8)?.try_into().ok()?;
    let name = String::from_utf8(r.string()?.to_vec()).ok()?;
    let kind = r.u8()?;
    let status = r.u8()?;
    let start_ns = r.u64()?;
    let duration = r.u64()?;
    let keys = (0..r.length()?)
        .map(|_| r.string().map(|k| String::from_utf8_lossy(k).into_owned()))
        .collect::<Option<Vec<_>>>()?;
    let values = (0..r.length()?)
        .map(|_| r.string())
        .collect::<Option<Vec<_>>>()?;
    let n = r.length()?;
    let types = r.fixed(n)?;
    let req = ExportTraceServiceRequest::decode(r.string()?).ok()?;
    let mut s = from_otlp_owned(req).pop()?;
    let mut in_otlp = std::mem::take(&mut s.attributes).into_iter();
    if keys.len() != values.len() || keys.len() != types.len() {
        return None;
    }
    for ((k, v), t) in keys.into_iter().zip(values).zip(types) {
        let text = std::str::from_utf8(v).ok()?;
        let value = match *t {
            0 => AttrValue::Str(text.into()),
            1 => AttrValue::Int(text.parse().ok()?),
            2 => AttrValue::Double(text.parse().ok()?),
            3 => AttrValue::Bool(text.parse().ok()?),
            _ => in_otlp.next()?.1,
        };
        s.attributes.push((k.into(), value));
    }
    s.trace_id = trace_id;
    s.span_id = span_id;
    s.parent_span_id = (parent != [0; 8]).then_some(parent);
    s.name = name;
    s.kind = SpanKind::from_i32(i32::from(kind));
    s.status = StatusCode::from_i32(i32::from(status));
    s.start_ns = start_ns;
    s.end_ns = start_ns.checked_add(duration)?;
    Some(s)
}

/// Appends the rows of `spans`, the spans of WAL record `wal_seq` of `node`, to `out`.
pub fn encode_spans(node: &str, wal_seq: u64, spans: &[Span], out: &mut Vec<u8>) {
    for (i, s) in spans.iter().enumerate() {
        out.extend_from_slice(&s.trace_id);
        out.extend_from_slice(&s.span_id);
        out.extend_from_slice(&s.parent_span_id.unwrap_or([0; 8]));
        string(out, s.service().as_bytes());
        string(out, s.name.as_bytes());
        out.push(s.kind as u8);
        out.push(s.status as u8);
        out.extend_from_slice(&s.start_ns.to_le_bytes());
        out.extend_from_slice(&s.duration_ns().to_le_bytes());
        leb128(out, s.attributes.len() as u64);
        for (k, _) in &s.attributes {
            string(out, k.as_bytes());
        }
        leb128(out, s.attributes.len() as u64);
        for (_, v) in &s.attributes {
            string(out, v.to_text().as_bytes());
        }
        leb128(out, s.attributes.len() as u64);
        out.extend(s.attributes.iter().map(|(_, v)| attr_type(v)));
        string(out, &rest(s));
        string(out, node.as_bytes());
        out.extend_from_slice(&wal_seq.to_le_bytes());
        out.extend_from_slice(&u32::try_from(i).unwrap_or(u32::MAX).to_le_bytes());
    }
}

pub(crate) fn string(out: &mut Vec<u8>, b: &[u8]) {
    leb128(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn leb128(out: &mut Vec<u8>, n: u64) {
    faultline_store::varint::put(n, out);
}

/// The columns of a rollup part's row, in order, as the `INSERT` names them.
pub const ROLLUP_COLUMNS: &str = "minute, edges, service, node, chunk, version, cells";

/// Appends the row of one rollup part ([`ROLLUP_COLUMNS`]):
///
/// ```text
/// minute UInt32 (Unix minute)   edges UInt8 (1: the part holds the minute's dependency edges)
/// service String ('' for edges)   node String   chunk UInt64   version UInt64
/// cells String    the part as the embedded store's rollup file (faultline_store::rollup)
/// ```
pub fn encode_rollup(
    out: &mut Vec<u8>,
    minute: u64,
    service: Option<&str>,
    node: &str,
    chunk: u64,
    version: u64,
    cells: &[u8],
) {
    out.extend_from_slice(&u32::try_from(minute).unwrap_or(u32::MAX).to_le_bytes());
    out.push(u8::from(service.is_none()));
    string(out, service.unwrap_or("").as_bytes());
    string(out, node.as_bytes());
    out.extend_from_slice(&chunk.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    string(out, cells);
}

/// A reader of a RowBinary answer.
#[derive(Debug)]
pub struct RowReader<'a> {
    buf: &'a [u8],
}

impl<'a> RowReader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Whether every row was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next `n` bytes (a FixedString(n)).
    pub fn fixed(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// The next UInt32.
    pub fn u32(&mut self) -> Option<u32> {
        let b: [u8; 4] = self.fixed(4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b))
    }

    /// The next UInt64.
    pub fn u64(&mut self) -> Option<u64> {
        let b: [u8; 8] = self.fixed(8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// The next UInt8.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.fixed(1)?[0])
    }

    /// The next length (of a String or an Array): LEB128.
    pub fn length(&mut self) -> Option<usize> {
        let n = faultline_store::varint::take(&mut self.buf).ok()?;
        // No length can exceed what is left to read (an Array's elements take at least a
        // byte each): refuse before anything is allocated for it.
        usize::try_from(n).ok().filter(|&n| n <= self.buf.len())
    }

    /// The next String.
    pub fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.length()?;
        self.fixed(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn strings_read_back_as_written(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut out = Vec::new();
            for i in &items {
                string(&mut out, i);
            }
            let mut r = RowReader::new(&out);
            for i in &items {
                prop_assert_eq!(r.string().unwrap(), i.as_slice());
            }
            prop_assert!(r.is_empty());
        }

        #[test]
        fn a_truncated_answer_reads_as_none_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = RowReader::new(&bytes);
            while r.string().is_some() {}
            let mut r = RowReader::new(&bytes);
            while r.u64().is_some() {}
            let mut r = RowReader::new(&bytes);
            while decode_span(&mut r).is_some() {}
        }
    }

    #[test]
    fn leb128_matches_clickhouse_varints() {
        let enc = |n| {
            let mut v = Vec::new();
            leb128(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
    }
}
