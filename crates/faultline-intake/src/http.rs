//! HTTP receivers: OTLP/HTTP (`POST /v1/traces`, protobuf or JSON) and Zipkin v2
//! (`POST /api/v2/spans`, JSON), both with optional gzip.
//!
//! Bodies are read here with an explicit limit, before and after gunzip, so neither a
//! large body nor a gzip bomb can make faultline buffer more than `max_request_bytes`.
//! Error bodies follow OTLP/HTTP: a `google.rpc.Status` in the request's encoding (for
//! Zipkin, plain text), and retryable refusals carry `Retry-After`.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;

use faultline_model::{ExportTracePartialSuccess, ExportTraceServiceResponse};

use crate::admission::{Accepted, IngestError, Intake, Lane};
use faultline_model::envelope::Protocol;

/// `google.rpc.Status`, the error body of OTLP/HTTP in protobuf.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// The OTLP/HTTP router.
pub fn otlp_router(intake: Arc<Intake>) -> Router {
    Router::new()
        .route("/v1/traces", post(otlp_traces))
        .layer(DefaultBodyLimit::disable())
        .with_state(intake)
}

/// The Zipkin router.
pub fn zipkin_router(intake: Arc<Intake>) -> Router {
    Router::new()
        .route("/api/v2/spans", post(zipkin_spans))
        .layer(DefaultBodyLimit::disable())
        .with_state(intake)
}

fn status_of(e: &IngestError) -> StatusCode {
    match e {
        IngestError::Invalid(_) => StatusCode::BAD_REQUEST,
        IngestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        IngestError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IngestError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        IngestError::Full(_) | IngestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn grpc_code_of(e: &IngestError) -> i32 {
    match e {
        IngestError::Invalid(_) | IngestError::Unsupported(_) => 3,
        IngestError::TooLarge(_) => 8,
        IngestError::Busy(_) | IngestError::Full(_) | IngestError::Unavailable(_) => 14,
    }
}

fn error_response(intake: &Intake, e: &IngestError, enc: Option<Encoding>) -> Response {
    let status = status_of(e);
    let message = e.to_string();
    let (content_type, body) = match enc {
        Some(Encoding::Protobuf) => (
            "application/x-protobuf",
            RpcStatus {
                code: grpc_code_of(e),
                message,
            }
            .encode_to_vec(),
        ),
        Some(Encoding::Json) => (
            "application/json",
            serde_json::json!({ "code": grpc_code_of(e), "message": message })
                .to_string()
                .into_bytes(),
        ),
        None => (
            "text/plain; charset=utf-8",
            format!("{message}\n").into_bytes(),
        ),
    };
    let mut resp = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    if e.is_retryable() {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(intake.config().retry_after_secs),
        );
    }
    resp
}

/// The lane the sender asks for with `x-faultline-lane` (only `bulk` has an effect).
fn lane_hint(headers: &HeaderMap) -> Lane {
    Lane::from_hint(
        headers
            .get("x-faultline-lane")
            .and_then(|v| v.to_str().ok()),
    )
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, IngestError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok(v)) if v.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") || v.is_empty() => Ok(false),
        Some(Ok(v)) => Err(IngestError::Unsupported(format!(
            "content encoding {v:?} is not supported; send gzip or no Content-Encoding"
        ))),
        Some(Err(_)) => Err(IngestError::Unsupported(
            "Content-Encoding header is not valid text".into(),
        )),
    }
}

/// Reads at most `max` bytes of `body`; `None` if it is longer. A longer body is read to
/// its end and discarded (up to [`DRAIN_LIMIT`]), so the client receives the 413 instead of
/// a broken connection that its exporter would retry.
async fn read_limited(body: Body, max: usize) -> Result<Option<Bytes>, IngestError> {
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| IngestError::Invalid(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total <= max {
            buf.extend_from_slice(&data);
        } else if total > max.saturating_add(DRAIN_LIMIT) {
            return Ok(None);
        }
    }
    Ok((total <= max).then(|| buf.freeze()))
}

/// How much of an oversized body is read and thrown away before the connection is cut.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads the body (and gunzips it) within `max` bytes each.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<(Bytes, usize), IngestError> {
    let too_large = |what: &str| {
        IngestError::TooLarge(format!(
            "{what} exceeds the limit of {max} bytes (intake.max_request_bytes); send smaller batches"
        ))
    };
    let gzip = is_gzip(headers)?;
    let raw = read_limited(body, max)
        .await?
        .ok_or_else(|| too_large("request body"))?;
    let wire_len = raw.len();
    if !gzip {
        return Ok((raw, wire_len));
    }
    // Decompression is CPU work proportional to the output: keep it off the executor.
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity((raw.len() * 4).min(max));
        let mut dec = flate2::read::GzDecoder::new(&raw[..]).take(max as u64 + 1);
        dec.read_to_end(&mut out).map(|_| out)
    })
    .await
    .map_err(|e| IngestError::Unavailable(format!("decompression task failed: {e}")))?
    .map_err(|e| IngestError::Invalid(format!("request body is not valid gzip: {e}")))?;
    if out.len() > max {
        return Err(too_large("decompressed request body"));
    }
    Ok((Bytes::from(out), wire_len))
}

async fn otlp_traces(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let enc = match media_type(&headers).as_deref() {
        Some("application/x-protobuf") | Some("application/protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        other => {
            let e = IngestError::Unsupported(format!(
                "content type {} is not supported on /v1/traces; send application/x-protobuf or application/json",
                other
                    .map(|o| format!("{o:?}"))
                    .unwrap_or_else(|| "(none)".into())
            ));
            intake
                .metrics()
                .request(Protocol::OtlpHttpProtobuf, e.outcome(), 0);
            return error_response(&intake, &e, Some(Encoding::Json));
        }
    };
    let protocol = match enc {
        Encoding::Protobuf => Protocol::OtlpHttpProtobuf,
        Encoding::Json => Protocol::OtlpHttpJson,
    };
    match otlp_inner(&intake, &headers, body, enc, protocol).await {
        Ok((accepted, wire_len)) => {
            let outcome = if accepted.rejected_spans > 0 {
                "partial"
            } else {
                "accepted"
            };
            intake.metrics().request(protocol, outcome, wire_len);
            let resp = ExportTraceServiceResponse {
                partial_success: (accepted.rejected_spans > 0).then(|| ExportTracePartialSuccess {
                    rejected_spans: accepted.rejected_spans as i64,
                    error_message: accepted.message.clone().unwrap_or_default(),
                }),
            };
            match enc {
                Encoding::Protobuf => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    resp.encode_to_vec(),
                )
                    .into_response(),
                Encoding::Json => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    faultline_model::otlp_json::encode_response(&resp),
                )
                    .into_response(),
            }
        }
        Err((e, wire_len)) => {
            intake.metrics().request(protocol, e.outcome(), wire_len);
            if !matches!(
                e,
                IngestError::Invalid(_) | IngestError::TooLarge(_) | IngestError::Unsupported(_)
            ) {
                tracing::warn!(protocol = %protocol, error = %e, "refused a request");
            }
            error_response(&intake, &e, Some(enc))
        }
    }
}

async fn otlp_inner(
    intake: &Intake,
    headers: &HeaderMap,
    body: Body,
    enc: Encoding,
    protocol: Protocol,
) -> Result<(Accepted, usize), (IngestError, usize)> {
    let (bytes, wire_len) = read_body(headers, body, intake.config().max_request_bytes)
        .await
        .map_err(|e| (e, 0))?;
    let ticket = intake.admit(bytes.len()).map_err(|e| (e, wire_len))?;
    let lane = lane_hint(headers);
    let accepted = match enc {
        Encoding::Protobuf => {
            intake
                .ingest_protobuf(protocol, &bytes, &ticket, lane)
                .await
        }
        Encoding::Json => {
            let req = faultline_model::otlp_json::decode(&bytes)
                .map_err(|e| (IngestError::Invalid(e.to_string()), wire_len))?;
            intake
                .ingest(protocol, req, None, Vec::new(), &ticket, lane)
                .await
        }
    };
    accepted.map(|a| (a, wire_len)).map_err(|e| (e, wire_len))
}

async fn zipkin_spans(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let protocol = Protocol::ZipkinJson;
    match media_type(&headers).as_deref() {
        None | Some("application/json") => {}
        Some(other) => {
            let e = IngestError::Unsupported(format!(
                "content type {other:?} is not supported on /api/v2/spans; send Zipkin v2 JSON as application/json"
            ));
            intake.metrics().request(protocol, e.outcome(), 0);
            return error_response(&intake, &e, None);
        }
    }
    let result = async {
        let (bytes, wire_len) = read_body(&headers, body, intake.config().max_request_bytes)
            .await
            .map_err(|e| (e, 0))?;
        let ticket = intake.admit(bytes.len()).map_err(|e| (e, wire_len))?;
        let lane = lane_hint(&headers);
        let batch = faultline_model::zipkin::decode_v2_json(&bytes)
            .map_err(|e| (IngestError::Invalid(e.to_string()), wire_len))?;
        intake
            .ingest(protocol, batch.request, None, batch.rejected, &ticket, lane)
            .await
            .map(|a| (a, wire_len))
            .map_err(|e| (e, wire_len))
    }
    .await;
    match result {
        Ok((accepted, wire_len)) => {
            let outcome = if accepted.rejected_spans > 0 {
                "partial"
            } else {
                "accepted"
            };
            intake.metrics().request(protocol, outcome, wire_len);
            match accepted.message {
                Some(m) => (StatusCode::ACCEPTED, format!("{m}\n")).into_response(),
                None => StatusCode::ACCEPTED.into_response(),
            }
        }
        Err((e, wire_len)) => {
            intake.metrics().request(protocol, e.outcome(), wire_len);
            error_response(&intake, &e, None)
        }
    }
}
