//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The service is written against tonic's server primitives rather than the generated
//! `TraceServiceServer`, with a codec that hands over the request's raw protobuf bytes:
//! intake checks them in one walk (decoding them only when a span is invalid or pressure
//! calls for shedding), and stores the same bytes in the WAL when every span is valid. The
//! generated server would decode, and intake would have to encode again (about a third of
//! the per-request CPU, measured with `faultline-bench decode`).
//!
//! Answers: an `ExportTraceServiceResponse` (with partial success when spans were
//! dropped), or a status: INVALID_ARGUMENT (malformed, nothing valid), RESOURCE_EXHAUSTED
//! (too large), UNAVAILABLE (budget, disk, in-flight limit or WAL failure; retryable by
//! OTLP exporters). Gzip is accepted and used for answers when the client accepts it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use faultline_model::{ExportTracePartialSuccess, ExportTraceServiceResponse};

use crate::admission::{IngestError, Intake, Lane};
use faultline_model::envelope::Protocol;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The gRPC trace service.
#[derive(Debug, Clone)]
pub struct OtlpGrpc {
    intake: Arc<Intake>,
}

/// The service, ready for `tonic::transport::Server::add_service`.
pub fn grpc_service(intake: Arc<Intake>) -> OtlpGrpc {
    OtlpGrpc { intake }
}

impl NamedService for OtlpGrpc {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

/// tonic refuses a message over the decoding limit with OUT_OF_RANGE, which OTLP exporters
/// treat as retryable and would resend forever. This rewrites it, in the trailers-only
/// response tonic sends for that case, to RESOURCE_EXHAUSTED (not retryable without
/// RetryInfo). Our own handler never answers OUT_OF_RANGE, so only the limit is affected.
pub fn remap_oversize_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11")
    {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

impl<B> tonic::codegen::Service<http::Request<B>> for OtlpGrpc
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let intake = self.intake.clone();
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                Ok(Status::unimplemented(format!(
                    "{} is not served here; faultline serves {EXPORT_PATH}",
                    req.uri().path()
                ))
                .into_http())
            });
        }
        Box::pin(async move {
            let limit = intake.config().max_request_bytes;
            let mut grpc = Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(Export(intake), req).await)
        })
    }
}

struct Export(Arc<Intake>);

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let intake = self.0.clone();
        let lane = Lane::from_hint(
            request
                .metadata()
                .get("x-faultline-lane")
                .and_then(|v| v.to_str().ok()),
        );
        Box::pin(async move { export(&intake, request.into_inner(), lane).await })
    }
}

async fn export(
    intake: &Intake,
    raw: Bytes,
    lane: Lane,
) -> Result<Response<ExportTraceServiceResponse>, Status> {
    let protocol = Protocol::OtlpGrpc;
    let wire_len = raw.len();
    let result = async {
        let ticket = intake.admit(wire_len)?;
        intake.ingest_protobuf(protocol, &raw, &ticket, lane).await
    }
    .await;
    match result {
        Ok(accepted) => {
            let outcome = if accepted.rejected_spans > 0 {
                "partial"
            } else {
                "accepted"
            };
            intake.metrics().request(protocol, outcome, wire_len);
            Ok(Response::new(ExportTraceServiceResponse {
                partial_success: (accepted.rejected_spans > 0).then(|| ExportTracePartialSuccess {
                    rejected_spans: accepted.rejected_spans as i64,
                    error_message: accepted.message.unwrap_or_default(),
                }),
            }))
        }
        Err(e) => {
            intake.metrics().request(protocol, e.outcome(), wire_len);
            if e.is_retryable() {
                tracing::warn!(protocol = %protocol, error = %e, "refused a request");
            }
            Err(to_status(&e))
        }
    }
}

fn to_status(e: &IngestError) -> Status {
    let msg = e.to_string();
    match e {
        IngestError::Invalid(_) | IngestError::Unsupported(_) => Status::invalid_argument(msg),
        IngestError::TooLarge(_) => Status::resource_exhausted(msg),
        IngestError::Busy(_) | IngestError::Full(_) | IngestError::Unavailable(_) => {
            Status::unavailable(msg)
        }
    }
}

/// Decodes nothing: the request message arrives as its protobuf bytes. Responses are
/// encoded with prost.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

#[derive(Debug, Clone, Copy, Default)]
struct ResponseEncoder;

impl Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}
