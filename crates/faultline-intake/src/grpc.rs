//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! tonic decodes the request (gzip accepted, size limited by `max_request_bytes`); the
//! answer is an `ExportTraceServiceResponse` with partial success, or a status:
//! INVALID_ARGUMENT (malformed, nothing valid), RESOURCE_EXHAUSTED (too large),
//! UNAVAILABLE (budget, disk or WAL failure; retryable by OTLP exporters).

use std::sync::Arc;

use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use faultline_model::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};

use crate::admission::{IngestError, Intake};
use crate::envelope::Protocol;

/// The gRPC trace service.
#[derive(Debug, Clone)]
pub struct OtlpGrpc {
    intake: Arc<Intake>,
}

/// The tonic service, configured with gzip and the request size limit.
pub fn grpc_service(intake: Arc<Intake>) -> TraceServiceServer<OtlpGrpc> {
    let limit = intake.config().max_request_bytes;
    TraceServiceServer::new(OtlpGrpc { intake })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
}

/// tonic refuses a message over the decoding limit with OUT_OF_RANGE, which OTLP exporters
/// treat as retryable and would resend forever. This rewrites it, in the trailers-only
/// response tonic sends for that case, to RESOURCE_EXHAUSTED (not retryable without
/// RetryInfo). Our own handler never answers OUT_OF_RANGE, so only the limit is affected.
pub fn remap_oversize_status<B>(
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let headers = resp.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11")
    {
        headers.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("8"),
        );
    }
    resp
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

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let protocol = Protocol::OtlpGrpc;
        let req = request.into_inner();
        // One encoding serves both the size accounting and the WAL record.
        let raw = req.encode_to_vec();
        let wire_len = raw.len();
        let intake = &self.intake;
        let result = match intake.admit(wire_len) {
            Ok(ticket) => {
                intake
                    .ingest(protocol, req, Some(&raw), Vec::new(), &ticket)
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(accepted) => {
                let outcome = if accepted.rejected_spans > 0 {
                    "partial"
                } else {
                    "accepted"
                };
                intake.metrics().request(protocol, outcome, wire_len);
                Ok(Response::new(ExportTraceServiceResponse {
                    partial_success: (accepted.rejected_spans > 0).then(|| {
                        ExportTracePartialSuccess {
                            rejected_spans: accepted.rejected_spans as i64,
                            error_message: accepted.message.unwrap_or_default(),
                        }
                    }),
                }))
            }
            Err(e) => {
                intake.metrics().request(protocol, e.outcome(), wire_len);
                Err(to_status(&e))
            }
        }
    }
}
