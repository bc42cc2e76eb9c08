//! The WAL payload: one envelope per accepted request. Intake writes it; the pipeline, the
//! operator tools (`faultline wal dump`) and dead-letter replay read it. It lives here, in
//! the shared model, so that none of them depends on another's crate.
//!
//! Whatever protocol a request arrived in, intake stores it as an OTLP
//! `ExportTraceServiceRequest` in protobuf encoding (Zipkin and OTLP/JSON are converted
//! first; OTLP/protobuf bodies whose spans are all valid are stored byte for byte), behind
//! a 16-byte header:
//!
//! ```text
//!   0  4  magic       b"FLIN"
//!   4  1  version     1
//!   5  1  protocol    1 otlp-grpc, 2 otlp-http-protobuf, 3 otlp-http-json, 4 zipkin-json,
//!                     5 faultline-probe (the spans of faultline's own synthetic probes)
//!   6  1  lane        0 normal (priority lanes come later)
//!   7  1  reserved    0
//!   8  4  spans       number of spans in the request, little endian
//!  12  4  reserved    0
//!  16  n  body        ExportTraceServiceRequest, protobuf
//! ```
//!
//! The WAL record around it carries the sequence number, time and checksum.

use prost::Message;

use crate::ExportTraceServiceRequest;

/// Envelope magic.
pub const MAGIC: &[u8; 4] = b"FLIN";
/// Envelope version written by this build.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 16;

/// The protocol a request arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP over gRPC.
    OtlpGrpc,
    /// OTLP over HTTP, protobuf body.
    OtlpHttpProtobuf,
    /// OTLP over HTTP, JSON body.
    OtlpHttpJson,
    /// Zipkin v2 JSON.
    ZipkinJson,
    /// Spans of faultline's own synthetic probes (`faultline-probe`), handed to intake in
    /// process.
    Probe,
}

impl Protocol {
    /// Every protocol, for pre-registering metrics.
    pub const ALL: [Protocol; 5] = [
        Protocol::OtlpGrpc,
        Protocol::OtlpHttpProtobuf,
        Protocol::OtlpHttpJson,
        Protocol::ZipkinJson,
        Protocol::Probe,
    ];

    /// The label used in metrics and `wal dump`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtlpGrpc => "otlp-grpc",
            Self::OtlpHttpProtobuf => "otlp-http-protobuf",
            Self::OtlpHttpJson => "otlp-http-json",
            Self::ZipkinJson => "zipkin-json",
            Self::Probe => "faultline-probe",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::OtlpGrpc => 1,
            Self::OtlpHttpProtobuf => 2,
            Self::OtlpHttpJson => 3,
            Self::ZipkinJson => 4,
            Self::Probe => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::OtlpGrpc,
            2 => Self::OtlpHttpProtobuf,
            3 => Self::OtlpHttpJson,
            4 => Self::ZipkinJson,
            5 => Self::Probe,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded envelope header plus its body.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The protocol the request arrived in.
    pub protocol: Protocol,
    /// Priority lane (0 = normal).
    pub lane: u8,
    /// Number of spans in the body.
    pub spans: u32,
    /// `ExportTraceServiceRequest`, protobuf.
    pub body: &'a [u8],
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not an intake envelope or an unknown version.
    #[error("WAL record is not an intake envelope: {0}")]
    Header(String),
    /// The body is not valid OTLP protobuf.
    #[error("WAL record body is not a valid OTLP request: {0}")]
    Body(#[from] prost::DecodeError),
    /// The body's protobuf framing is broken (found without decoding it).
    #[error("WAL record body is not a valid OTLP request: {0}")]
    Scan(&'static str),
}

/// Builds an envelope around an already encoded request body.
pub fn encode(protocol: Protocol, spans: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(protocol.code());
    out.push(0);
    out.push(0);
    out.extend_from_slice(&spans.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(body);
    out
}

/// Builds an envelope by encoding `request`.
pub fn encode_request(
    protocol: Protocol,
    spans: u32,
    request: &ExportTraceServiceRequest,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + request.encoded_len());
    out.extend_from_slice(&encode(protocol, spans, &[]));
    // Encoding into a Vec cannot run out of space.
    let _ = request.encode(&mut out);
    out
}

/// Reads an envelope header.
pub fn decode(payload: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if payload.len() < HEADER_LEN {
        return Err(EnvelopeError::Header(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            payload.len()
        )));
    }
    if &payload[0..4] != MAGIC {
        return Err(EnvelopeError::Header("bad magic number".into()));
    }
    if payload[4] != VERSION {
        return Err(EnvelopeError::Header(format!(
            "envelope version {} is not supported (this build reads {VERSION})",
            payload[4]
        )));
    }
    let protocol = Protocol::from_code(payload[5])
        .ok_or_else(|| EnvelopeError::Header(format!("unknown protocol code {}", payload[5])))?;
    Ok(Envelope {
        protocol,
        lane: payload[6],
        spans: u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]),
        body: &payload[HEADER_LEN..],
    })
}

impl Envelope<'_> {
    /// Decodes the body.
    pub fn request(&self) -> Result<ExportTraceServiceRequest, EnvelopeError> {
        Ok(ExportTraceServiceRequest::decode(self.body)?)
    }

    /// The body's spans, decoded straight from the protobuf (see [`crate::otlp_decode`]):
    /// what `span::from_otlp_owned(self.request()?)` gives, at less cost.
    pub fn spans(&self) -> Result<Vec<crate::span::Span>, EnvelopeError> {
        crate::otlp_decode::spans(self.body, self.spans as usize)
    }

    /// The body's spans of the traces `keep` takes, the others skipped undecoded (see
    /// [`crate::otlp_decode::spans_where`]).
    pub fn spans_where(
        &self,
        keep: &dyn Fn(&crate::span::TraceId) -> bool,
    ) -> Result<Vec<crate::span::Span>, EnvelopeError> {
        crate::otlp_decode::spans_where(self.body, keep)
    }

    /// The trace ids of the body's spans, in order, repeats included, without decoding
    /// anything else: the fields on the path `resource_spans` (1) → `scope_spans` (2) →
    /// `spans` (2) → `trace_id` (1) are followed and every other field is skipped by its
    /// wire type (`otlp_decode`'s walker). Ids that are not 16 bytes (which intake refuses) are left out. Several
    /// times faster than [`Envelope::request`]; the backlog scan uses it to note what a
    /// replayed range holds.
    pub fn trace_ids(&self) -> Result<Vec<crate::span::TraceId>, EnvelopeError> {
        // The header's count is not trusted for the allocation: a span takes at least 18
        // bytes (a trace id and its field key and length).
        let mut out = Vec::with_capacity((self.spans as usize).min(self.body.len() / 18));
        use crate::otlp_decode::delimited;
        for rs in delimited(self.body, 1) {
            for ss in delimited(rs?, 2) {
                for span in delimited(ss?, 2) {
                    for id in delimited(span?, 1) {
                        if let Ok(id) = <[u8; 16]>::try_from(id?) {
                            out.push(id);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The scanner finds exactly the ids a full decode finds, on requests of every shape
    /// (several resources and scopes, attributes and events around the ids, empty
    /// messages), and refuses cut bodies instead of inventing ids.
    #[test]
    fn trace_ids_match_a_full_decode() {
        use crate::otlp::common::{AnyValue, KeyValue, any_value};
        use crate::otlp::trace::{ResourceSpans, ScopeSpans, Span, span::Event};
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            let mut req = ExportTraceServiceRequest::default();
            for _ in 0..rnd(4) {
                let mut rs = ResourceSpans::default();
                for _ in 0..rnd(4) {
                    let mut ss = ScopeSpans::default();
                    for _ in 0..rnd(6) {
                        let id_len = if rnd(20) == 0 { 8 } else { 16 };
                        let id: Vec<u8> = (0..id_len).map(|_| rnd(256) as u8).collect();
                        ss.spans.push(Span {
                            trace_id: id,
                            span_id: (0..8).map(|_| rnd(256) as u8).collect(),
                            name: "x".repeat(rnd(300) as usize),
                            start_time_unix_nano: rnd(u64::MAX),
                            kind: rnd(5) as i32,
                            attributes: (0..rnd(4))
                                .map(|i| KeyValue {
                                    key: format!("k{i}"),
                                    value: Some(AnyValue {
                                        value: Some(
                                            any_value::Value::IntValue(rnd(1 << 40) as i64),
                                        ),
                                    }),
                                    ..KeyValue::default()
                                })
                                .collect(),
                            events: (0..rnd(2))
                                .map(|_| Event {
                                    time_unix_nano: rnd(u64::MAX),
                                    name: "e".into(),
                                    ..Event::default()
                                })
                                .collect(),
                            ..Span::default()
                        });
                    }
                    rs.scope_spans.push(ss);
                }
                req.resource_spans.push(rs);
            }
            let want: Vec<[u8; 16]> = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .filter_map(|s| <[u8; 16]>::try_from(s.trace_id.as_slice()).ok())
                .collect();
            let bytes = encode_request(Protocol::OtlpHttpProtobuf, 0, &req);
            let env = decode(&bytes).unwrap();
            assert_eq!(env.trace_ids().unwrap(), want, "round {round}");
            if bytes.len() > HEADER_LEN + 1 {
                let cut = decode(&bytes[..bytes.len() - 1]).unwrap();
                assert!(
                    cut.trace_ids().is_err(),
                    "round {round}: a cut body is refused"
                );
            }
        }
    }

    #[test]
    fn round_trip() {
        let req = ExportTraceServiceRequest::default();
        let bytes = encode_request(Protocol::ZipkinJson, 7, &req);
        let env = decode(&bytes).unwrap();
        assert_eq!(env.protocol, Protocol::ZipkinJson);
        assert_eq!(env.spans, 7);
        assert_eq!(env.request().unwrap(), req);
    }

    #[test]
    fn refuses_strangers() {
        assert!(decode(b"short").is_err());
        assert!(decode(&[0u8; 32]).is_err());
        let mut bytes = encode(Protocol::OtlpGrpc, 1, b"");
        bytes[5] = 99;
        assert!(
            decode(&bytes)
                .unwrap_err()
                .to_string()
                .contains("protocol code 99")
        );
    }
}
