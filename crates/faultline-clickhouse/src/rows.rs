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
//! attr_keys Array(String)   attr_values Array(String)   the span's attributes, values as text,
//!                                                       for filters; types are in `otlp`
//! otlp String        the span alone as an OTLP ExportTraceServiceRequest (protobuf):
//!                    resource, scope, events, links and typed attributes, read back as is
//! node String   wal_seq UInt64   span_idx UInt32        which node's WAL record, and where in it
//! ```

use faultline_model::span::{Span, to_otlp};
use prost::Message;

/// The columns of a span's row, in order, as the `INSERT` names them.
pub const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, service, name, kind, status, \
start_ns, duration_ns, attr_keys, attr_values, otlp, node, wal_seq, span_idx";

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
        let otlp = to_otlp(std::slice::from_ref(s)).encode_to_vec();
        string(out, &otlp);
        string(out, node.as_bytes());
        out.extend_from_slice(&wal_seq.to_le_bytes());
        out.extend_from_slice(&u32::try_from(i).unwrap_or(u32::MAX).to_le_bytes());
    }
}

fn string(out: &mut Vec<u8>, b: &[u8]) {
    leb128(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
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

    /// The next UInt64.
    pub fn u64(&mut self) -> Option<u64> {
        let b: [u8; 8] = self.fixed(8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// The next String.
    pub fn string(&mut self) -> Option<&'a [u8]> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return self.fixed(usize::try_from(n).ok()?);
            }
        }
        None
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
