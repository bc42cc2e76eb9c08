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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
