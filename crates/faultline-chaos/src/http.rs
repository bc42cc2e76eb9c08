//! HTTP mode: a proxy created with `"protocol": "http"` speaks HTTP/1.1 to its clients and
//! its upstream, and applies HTTP faults per request (`http_error`, `http_delay`,
//! `http_abort`; see `toxic.rs`). Every request gets a span of its own (service
//! `faultline-proxy`, kind SERVER, the client's `traceparent` as parent, attributes
//! `faultline.proxy`, `faultline.fault` when a fault acted, `http.request.method`,
//! `url.path`, `http.response.status_code`, `server.address`), and the request goes on
//! with a `traceparent` naming that span, so the service behind the proxy joins the same
//! trace and the fault shows in it. Spans go to the [`SpanSink`] the owner sets (inside
//! `serve`: intake; `faultline proxy --otlp-endpoint URL`: [`OtlpExport`]); without one
//! they are not recorded.
//!
//! An upstream that cannot be reached is answered 502 with a JSON error naming it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use faultline_model::ExportTraceServiceRequest;
use faultline_model::span::{AttrValue, Origin, Span, SpanKind, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::link::Chain;
use crate::toxic::{Kind, Toxic};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Where the proxy's spans go.
pub trait SpanSink: Send + Sync {
    /// Takes one request's span (do not block: hand it on).
    fn submit(&self, request: ExportTraceServiceRequest);
}

impl<F: Fn(ExportTraceServiceRequest) + Send + Sync> SpanSink for F {
    fn submit(&self, request: ExportTraceServiceRequest) {
        self(request)
    }
}

/// A [`SpanSink`] that exports over OTLP/HTTP (protobuf) to `ENDPOINT/v1/traces`, for
/// `faultline proxy` running alone: spans are batched (up to 512, or 200 ms) on a task of
/// their own; when 10,000 wait (the endpoint is down) new ones are dropped and counted.
/// An `https://` endpoint is checked against the Mozilla roots and `FAULTLINE_CA_FILE`'s
/// CAs; `token` is sent as `Authorization: Bearer` (an `ingest` token when tokens are on).
pub struct OtlpExport {
    tx: tokio::sync::mpsc::Sender<ExportTraceServiceRequest>,
    pub dropped: std::sync::atomic::AtomicU64,
}

impl OtlpExport {
    /// Starts the exporting task (call inside a Tokio runtime); an error says why the
    /// client cannot be made (a bad `FAULTLINE_CA_FILE`).
    pub fn start(endpoint: &str, token: Option<String>) -> Result<Arc<OtlpExport>, String> {
        let tls = faultline_tls::client::from_env().map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot make the OTLP client: {e}"))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ExportTraceServiceRequest>(10_000);
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = first;
                let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
                while batch.resource_spans.len() < 512 {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(more)) => batch.resource_spans.extend(more.resource_spans),
                        _ => break,
                    }
                }
                let body = prost::Message::encode_to_vec(&batch);
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let sent = req.send().await;
                match sent {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(url = %url, status = %r.status(), "proxy spans refused")
                    }
                    Err(e) => tracing::warn!(url = %url, error = %e, "cannot export proxy spans"),
                }
            }
        });
        Ok(Arc::new(OtlpExport {
            tx,
            dropped: std::sync::atomic::AtomicU64::new(0),
        }))
    }
}

impl SpanSink for OtlpExport {
    fn submit(&self, request: ExportTraceServiceRequest) {
        if self.tx.try_send(request).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The sink, settable after the proxies started.
pub type SinkSlot = Arc<RwLock<Option<Arc<dyn SpanSink>>>>;

/// What an HTTP connection needs.
pub struct HttpCtx {
    pub name: String,
    pub upstream: String,
    pub chain: watch::Receiver<Arc<Chain>>,
    pub sink: SinkSlot,
    pub client: Client<HttpConnector, Body>,
}

/// A client for forwarding requests.
pub fn client() -> Client<HttpConnector, Body> {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(crate::proxy::DIAL_TIMEOUT));
    Client::builder(TokioExecutor::new()).build(c)
}

/// Serves one client connection until it ends or the proxy stops.
pub async fn connection(stream: TcpStream, ctx: Arc<HttpCtx>, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let svc = hyper::service::service_fn(move |req| handle(req, ctx.clone()));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = stop.changed() => {}
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `00-TRACE-SPAN-FLAGS` to (trace id, parent span id, flags).
fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], String)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    if parts.len() < 4 || parts[1].len() != 32 || parts[2].len() != 16 {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    for (i, b) in trace.iter_mut().enumerate() {
        *b = u8::from_str_radix(parts[1].get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    for (i, b) in span.iter_mut().enumerate() {
        *b = u8::from_str_radix(parts[2].get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some((trace, span, parts[3].to_string()))
}

fn json_response(status: u16, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A body that sends what it holds and then fails, so the connection is cut short. It
/// waits a moment between the two: hyper flushes what it buffered while the body is
/// pending, and a failure drops whatever is still buffered.
struct AbortBody {
    data: Option<Bytes>,
    pause: Pin<Box<tokio::time::Sleep>>,
    failed: bool,
}

impl hyper::body::Body for AbortBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if self.pause.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !self.failed {
            self.failed = true;
            return Poll::Ready(Some(Err("response cut by faultline's http_abort".into())));
        }
        Poll::Ready(None)
    }
}

/// The fault that acts on this request, if any (first match whose draw passes).
fn pick(chain: &Chain, method: &str, path: &str) -> Option<Toxic> {
    chain
        .toxics
        .iter()
        .map(|(_, t)| t)
        .find(|t| {
            t.kind.is_http() && t.route.matches(method, path) && rand::random::<f32>() < t.toxicity
        })
        .cloned()
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

async fn handle(req: Request<Incoming>, ctx: Arc<HttpCtx>) -> Result<Response<Body>, Infallible> {
    let start_ns = now_ns();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let (trace_id, parent_id, flags) = match parent {
        Some((t, s, f)) => (t, Some(s), f),
        None => (rand::random(), None, "01".to_string()),
    };
    let span_id: [u8; 8] = rand::random();
    let chain = ctx.chain.borrow().clone();
    let fault = pick(&chain, &method, &path);
    let mut fault_desc = None;
    let mut aborted = false;
    let resp = if let Some(Kind::HttpError { status }) = fault.as_ref().map(|t| &t.kind) {
        fault_desc = Some(format!("http_error {status}"));
        json_response(
            *status as u16,
            serde_json::json!({"error": format!("injected by faultline proxy {} (http_error)", ctx.name)}),
        )
    } else {
        if let Some(Kind::HttpDelay { delay }) = fault.as_ref().map(|t| &t.kind) {
            fault_desc = Some(format!("http_delay {delay}ms"));
            tokio::time::sleep(Duration::from_millis(*delay)).await;
        }
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        match format!("http://{}{pq}", ctx.upstream).parse() {
            Ok(uri) => parts.uri = uri,
            Err(_) => {
                return Ok(json_response(
                    502,
                    serde_json::json!({"error": "bad upstream address"}),
                ));
            }
        }
        for h in HOP_BY_HOP {
            parts.headers.remove(h);
        }
        let tp = format!(
            "00-{}-{}-{flags}",
            faultline_model::hex(&trace_id),
            faultline_model::hex(&span_id)
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(&tp) {
            parts.headers.insert("traceparent", v);
        }
        let out = Request::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
        match ctx.client.request(out).await {
            Ok(r) => {
                let abort = match fault.as_ref().map(|t| &t.kind) {
                    Some(Kind::HttpAbort { bytes }) => Some(*bytes),
                    _ => None,
                };
                match abort {
                    Some(bytes) => {
                        fault_desc = Some(format!("http_abort after {bytes} bytes"));
                        aborted = true;
                        let (parts, body) = r.into_parts();
                        let mut data = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        data.truncate(bytes as usize);
                        Response::from_parts(
                            parts,
                            AbortBody {
                                data: Some(data),
                                pause: Box::pin(tokio::time::sleep(Duration::from_millis(20))),
                                failed: false,
                            }
                            .boxed(),
                        )
                    }
                    None => r.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()),
                }
            }
            Err(e) => json_response(
                502,
                serde_json::json!({"error": format!("faultline proxy {} cannot reach its upstream {}: {e}", ctx.name, ctx.upstream)}),
            ),
        }
    };
    let status = resp.status().as_u16();
    let sink = ctx.sink.read().ok().and_then(|s| s.clone());
    if let Some(sink) = sink {
        let mut attributes = vec![
            (
                "faultline.proxy".into(),
                AttrValue::Str(ctx.name.as_str().into()),
            ),
            (
                "http.request.method".into(),
                AttrValue::Str(method.as_str().into()),
            ),
            ("url.path".into(), AttrValue::Str(path.as_str().into())),
            (
                "http.response.status_code".into(),
                AttrValue::Int(i64::from(status)),
            ),
            (
                "server.address".into(),
                AttrValue::Str(ctx.upstream.as_str().into()),
            ),
        ];
        if let Some(f) = &fault_desc {
            attributes.push(("faultline.fault".into(), AttrValue::Str(f.as_str().into())));
        }
        let error = status >= 500 || aborted;
        let span = Span {
            trace_id,
            span_id,
            parent_span_id: parent_id,
            name: format!("{method} {path}"),
            kind: SpanKind::Server,
            start_ns,
            end_ns: now_ns().max(start_ns),
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: fault_desc.clone().unwrap_or_default(),
            attributes,
            events: Vec::new(),
            links: Vec::new(),
            origin: Arc::new(Origin {
                service: "faultline-proxy".into(),
                resource: vec![(
                    "service.name".into(),
                    AttrValue::Str("faultline-proxy".into()),
                )],
                scope_name: "faultline-chaos".into(),
                scope_version: env!("CARGO_PKG_VERSION").into(),
            }),
        };
        sink.submit(faultline_model::span::to_otlp(&[span]));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_or_refused() {
        let (t, s, f) =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .unwrap_or_else(|| panic!("valid"));
        assert_eq!((t[0], s[7], f.as_str()), (0x0a, 0x31, "01"));
        assert!(parse_traceparent("00-xyz-b7ad6b7169203331-01").is_none());
        assert!(parse_traceparent("").is_none());
    }
}
