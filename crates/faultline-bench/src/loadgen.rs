//! `faultline-bench loadgen`: realistic multi-service traces sent over OTLP/HTTP or OTLP/gRPC at
//! a fixed rate or a fixed concurrency, for a fixed time.
//!
//! Requests are generated and encoded before the clock starts (a pool of templates);
//! each send copies a template and stamps fresh trace ids into it at byte offsets found
//! at generation time, so every request carries unique traces and generation costs a
//! memcpy, not an encode. `--ack-log FILE` writes one line per acknowledged request
//! (`<request number> <spans> <trace id>,<trace id>,...`), which the crash tests compare
//! with what survives in the WAL. `--probe-api URL` also measures how soon acknowledged
//! traces are readable by id (see `fresh.rs`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use faultline_model::ExportTraceServiceRequest;
use faultline_model::ExportTraceServiceResponse;
use faultline_model::otlp::common::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value,
};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span, Status, span::Event};

/// Flags of `faultline-bench loadgen`.
#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// grpc or http.
    #[arg(long, default_value = "http")]
    pub protocol: String,
    /// Receiver URL [default: http://127.0.0.1:4318 for http, http://127.0.0.1:4317 for grpc].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Target spans per second (open loop); without it, send as fast as acknowledgements allow.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Spans per request (approximate: whole traces of 5 to 30 spans are packed).
    #[arg(long, default_value_t = 500)]
    pub spans_per_request: usize,
    /// Distinct pre-encoded request templates.
    #[arg(long, default_value_t = 32)]
    pub templates: usize,
    /// Traffic profile: `templated` (9 services, attribute values and timings repeat
    /// across the templates) or `varied` (12 services, ~20 attributes per span, fresh
    /// high-cardinality values and durations on every send; see `varied.rs`).
    #[arg(long, default_value = "templated")]
    pub profile: Profile,
    /// Compress request bodies with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Send `Authorization: Bearer TOKEN` (HTTP header, gRPC metadata).
    #[arg(long)]
    pub bearer: Option<String>,
    /// PEM CA to trust for an `https://` gRPC endpoint (TLS; HTTP stays plaintext).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Write a line per acknowledged request to this file.
    #[arg(long)]
    pub ack_log: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Query API (base URL) to probe: how soon an acknowledged trace is readable by id.
    #[arg(long)]
    pub probe_api: Option<String>,
    /// Seconds between freshness probes.
    #[arg(long, default_value_t = 1.0)]
    pub probe_every: f64,
}

const SERVICES: &[(&str, &[&str])] = &[
    (
        "frontend",
        &["GET /", "GET /product/{id}", "POST /cart", "POST /checkout"],
    ),
    ("cart", &["AddItem", "GetCart", "EmptyCart"]),
    ("checkout", &["PlaceOrder", "PrepareOrder"]),
    ("payment", &["Charge", "Authorize"]),
    ("inventory", &["Reserve", "Lookup"]),
    ("shipping", &["GetQuote", "ShipOrder"]),
    ("auth", &["ValidateToken"]),
    ("recommendation", &["ListRecommendations"]),
    (
        "postgres",
        &["SELECT orders", "INSERT orders", "UPDATE stock"],
    ),
];

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.to_string())
}

/// A traffic profile (see [`LoadgenArgs::profile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The original templates.
    Templated,
    /// Production-like variety (`varied.rs`).
    Varied,
}

/// Where one span's times sit in a varied template, and what they were when generated.
#[derive(Debug, Clone, Copy)]
struct SpanSlot {
    /// Byte offsets of the start and end times.
    start_at: usize,
    end_at: usize,
    /// Nanoseconds from its trace's start to its own, and its duration.
    offset: u64,
    dur: u64,
    /// Its trace, in generation order.
    trace: usize,
}

/// One template: an encoded request and where its trace ids sit.
pub(crate) struct Template {
    body: Vec<u8>,
    spans: usize,
    /// For each trace in the request, the byte offsets of every copy of its id.
    trace_offsets: Vec<Vec<usize>>,
    /// Byte offsets of every span id (as `span_id` and as `parent_span_id`).
    span_offsets: Vec<usize>,
    /// Byte offsets of every timestamp (span start and end, event times: fixed64).
    time_offsets: Vec<usize>,
    /// When the template was generated, Unix nanoseconds.
    created_ns: u64,
    /// Byte offsets of every copy of each fresh-value placeholder (varied profile).
    tokens: Vec<Vec<usize>>,
    /// Each span's times (varied profile: every send moves the start and scales the
    /// duration).
    times: Vec<SpanSlot>,
    /// Per trace (in `trace_offsets` order): its spans, and whether one fails (such traces
    /// are kept when a server sheds the rest of a request under pressure).
    trace_spans: Vec<(usize, bool)>,
}

fn generate_trace(
    rng: &mut SmallRng,
    trace_id: [u8; 16],
    now_ns: u64,
    by_service: &mut [Vec<Span>],
) -> usize {
    let n = rng.random_range(5..=30usize);
    let error_trace = rng.random_bool(0.03);
    let start = now_ns - rng.random_range(0..60_000_000_000u64);
    let mut spans: Vec<(usize, Span)> = Vec::with_capacity(n);
    for i in 0..n {
        let svc = if i == 0 {
            0
        } else {
            rng.random_range(1..SERVICES.len())
        };
        let (_, ops) = SERVICES[svc];
        let op = ops[rng.random_range(0..ops.len())];
        let mut span_id = [0u8; 8];
        rng.fill(&mut span_id);
        span_id[0] |= 1;
        let parent = if i == 0 {
            Vec::new()
        } else {
            spans[rng.random_range(0..i)].1.span_id.clone()
        };
        let offset = if i == 0 {
            0
        } else {
            rng.random_range(0..5_000_000u64)
        };
        let dur = rng.random_range(200_000..(if i == 0 { 400_000_000 } else { 80_000_000u64 }));
        let mut attrs = vec![
            kv(
                "http.request.method",
                s(if i % 3 == 0 { "POST" } else { "GET" }),
            ),
            kv(
                "http.response.status_code",
                Value::IntValue(if error_trace && i == n - 1 { 500 } else { 200 }),
            ),
            kv("http.route", s(op)),
            kv("server.port", Value::IntValue(8080 + svc as i64)),
            kv("retry", Value::BoolValue(rng.random_bool(0.05))),
            kv(
                "app.queue_ms",
                Value::DoubleValue(rng.random_range(0.0..25.0)),
            ),
        ];
        if SERVICES[svc].0 == "postgres" {
            attrs.push(kv("db.system", s("postgresql")));
            attrs.push(kv(
                "db.statement",
                s("SELECT * FROM orders WHERE customer_id = $1 LIMIT 20"),
            ));
        }
        if svc == 0 {
            attrs.push(kv(
                "user.id",
                s(&format!("user-{}", rng.random_range(0..10_000))),
            ));
            attrs.push(kv(
                "feature.flags",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(s("new-cart")),
                    }],
                }),
            ));
        }
        let failed = error_trace && (i == n - 1 || i == 0);
        let mut events = Vec::new();
        if failed {
            events.push(Event {
                time_unix_nano: start + offset + dur / 2,
                name: "exception".into(),
                attributes: vec![
                    kv("exception.type", s("TimeoutError")),
                    kv("exception.message", s("upstream timed out after 2s")),
                ],
                dropped_attributes_count: 0,
            });
        }
        let span = Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            trace_state: String::new(),
            parent_span_id: parent,
            flags: 1,
            name: op.to_string(),
            kind: if i == 0 { 2 } else { rng.random_range(2..=3) },
            start_time_unix_nano: start + offset,
            end_time_unix_nano: start + offset + dur,
            attributes: attrs,
            dropped_attributes_count: 0,
            events,
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status: Some(Status {
                message: if failed {
                    "upstream timed out".into()
                } else {
                    String::new()
                },
                code: if failed { 2 } else { 0 },
            }),
        };
        spans.push((svc, span));
    }
    for (svc, span) in spans {
        by_service[svc].push(span);
    }
    n
}

pub(crate) fn make_template(rng: &mut SmallRng, target_spans: usize, profile: Profile) -> Template {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let services = match profile {
        Profile::Templated => SERVICES.len(),
        Profile::Varied => crate::varied::SERVICES.len(),
    };
    let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); services];
    let mut ids = Vec::new();
    let mut spans = 0;
    let mut ph = crate::varied::Placeholders::default();
    let mut span_times = Vec::new();
    while spans < target_spans.max(1) {
        let mut id = [0u8; 16];
        rng.fill(&mut id);
        ids.push(id);
        spans += match profile {
            Profile::Templated => generate_trace(rng, id, now_ns, &mut by_service),
            Profile::Varied => {
                let t = crate::varied::generate_trace(rng, id, now_ns, &mut by_service, &mut ph);
                let n = t.len();
                let root = t.first().map_or(0, |&(start, _)| start);
                let trace = ids.len() - 1;
                span_times.extend(t.into_iter().map(|(start, end)| (trace, root, start, end)));
                n
            }
        };
    }
    let resource_spans = by_service
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(i, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: match profile {
                    Profile::Templated => vec![
                        kv("service.name", s(SERVICES[i].0)),
                        kv("service.version", s("1.4.2")),
                        kv("host.name", s(&format!("{}-7f9c-{}", SERVICES[i].0, i))),
                        kv("deployment.environment", s("loadtest")),
                        kv("telemetry.sdk.language", s("rust")),
                    ],
                    Profile::Varied => crate::varied::resource(rng, i),
                },
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "faultline-loadgen".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    let req = ExportTraceServiceRequest { resource_spans };
    let span_ids: std::collections::HashSet<Vec<u8>> = req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.span_id.clone())
        .collect();
    let times: std::collections::HashSet<u64> = req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .flat_map(|s| {
            [s.start_time_unix_nano, s.end_time_unix_nano]
                .into_iter()
                .chain(s.events.iter().map(|e| e.time_unix_nano))
        })
        .collect();
    let body = req.encode_to_vec();
    let time_offsets = body
        .windows(8)
        .enumerate()
        .filter(|(_, w)| {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            times.contains(&u64::from_le_bytes(b))
        })
        .map(|(i, _)| i)
        .collect();
    let span_offsets = body
        .windows(8)
        .enumerate()
        .filter(|(_, w)| span_ids.contains(*w))
        .map(|(i, _)| i)
        .collect();
    let trace_offsets = ids
        .iter()
        .map(|id| {
            body.windows(16)
                .enumerate()
                .filter(|(_, w)| *w == id)
                .map(|(i, _)| i)
                .collect()
        })
        .collect();
    let tokens = token_offsets(&body, &ph.list);
    let trace_spans = ids
        .iter()
        .map(|id| {
            let spans = req
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .filter(|sp| sp.trace_id == id);
            spans.fold((0, false), |(n, failing), sp| {
                (
                    n + 1,
                    failing || sp.status.as_ref().is_some_and(|st| st.code == 2),
                )
            })
        })
        .collect();
    let times = span_slots(&body, &span_times);
    Template {
        body,
        spans,
        trace_offsets,
        span_offsets,
        time_offsets,
        created_ns: now_ns,
        tokens,
        times,
        trace_spans,
    }
}

/// Where each span's times sit in `body`, from (trace, trace start, start, end) per span.
/// A time is found behind its field's tag (a span's start is field 7, its end field 8,
/// both fixed64), and each place serves one span: two spans starting at the same
/// nanosecond get one place each (searching by value alone gave both the first, and the
/// second span's end then moved while its start did not, ending some spans before they
/// began).
fn span_slots(body: &[u8], span_times: &[(usize, u64, u64, u64)]) -> Vec<SpanSlot> {
    const START_TAG: u8 = 7 << 3 | 1;
    const END_TAG: u8 = 8 << 3 | 1;
    let mut places: std::collections::HashMap<(u8, u64), std::collections::VecDeque<usize>> =
        Default::default();
    for (p, w) in body.windows(9).enumerate() {
        if w[0] == START_TAG || w[0] == END_TAG {
            let mut v = [0u8; 8];
            v.copy_from_slice(&w[1..]);
            places
                .entry((w[0], u64::from_le_bytes(v)))
                .or_default()
                .push_back(p + 1);
        }
    }
    let mut take = |tag: u8, t: u64| places.get_mut(&(tag, t))?.pop_front();
    span_times
        .iter()
        .filter_map(|&(trace, root, start, end)| {
            Some(SpanSlot {
                start_at: take(START_TAG, start)?,
                end_at: take(END_TAG, end)?,
                offset: start - root,
                dur: end - start,
                trace,
            })
        })
        .collect()
}

/// The offsets of every copy of each placeholder in `body`, in placeholder order.
fn token_offsets(body: &[u8], list: &[[u8; crate::varied::TOKEN_LEN]]) -> Vec<Vec<usize>> {
    let index: std::collections::HashMap<&[u8], usize> =
        list.iter().enumerate().map(|(i, t)| (&t[..], i)).collect();
    let mut out = vec![Vec::new(); list.len()];
    if list.is_empty() {
        return out;
    }
    for (at, w) in body.windows(crate::varied::TOKEN_LEN).enumerate() {
        if let Some(&i) = index.get(w) {
            out[i].push(at);
        }
    }
    out
}

/// A fast, well-mixed 64-bit hash (SplitMix64's finaliser), for fresh values at send time.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Copies a template and stamps unique trace ids: the first 8 bytes of every trace id
/// become `nonce ^ request number` (with the trace's index in the last byte of those 8),
/// and the last 8 bytes are XORed with a mix of those, so both halves vary as W3C's
/// random trace ids do.
/// Timestamps move forward by the template's age.
/// Span ids (and the parent ids that point at them) get their first 4 bytes XORed with a
/// per-request mask, so ids do not repeat across requests, as they would not in real
/// traffic (repeated ids would make blocks compress unrealistically well).
pub(crate) fn stamp(t: &Template, nonce: u64, request: u64) -> (Vec<u8>, Vec<String>) {
    let mut body = t.body.clone();
    // Shift every timestamp by the template's age, so spans carry the time they are sent
    // (time-range queries and RED minutes then see realistic data).
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        .saturating_sub(t.created_ns);
    for &o in &t.time_offsets {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[o..o + 8]);
        body[o..o + 8].copy_from_slice(&u64::from_le_bytes(b).wrapping_add(age).to_le_bytes());
    }
    let mask = ((request as u32).wrapping_mul(0x9E37_79B1) ^ (nonce >> 32) as u32).to_be_bytes();
    for &o in &t.span_offsets {
        for (b, m) in body[o..o + 4].iter_mut().zip(mask) {
            *b ^= m;
        }
    }
    let mut ids = Vec::with_capacity(t.trace_offsets.len());
    for (k, offsets) in t.trace_offsets.iter().enumerate() {
        let prefix_n = nonce ^ (request << 16) ^ k as u64;
        let prefix = prefix_n.to_be_bytes();
        let mix = prefix_n
            .wrapping_mul(0xD6E8_FEB8_6659_FD93)
            .rotate_left(29)
            .to_be_bytes();
        for &o in offsets {
            body[o..o + 8].copy_from_slice(&prefix);
            for (b, m) in body[o + 8..o + 16].iter_mut().zip(mix) {
                *b ^= m;
            }
        }
        if let Some(&o) = offsets.first() {
            ids.push(body[o..o + 16].iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    // Varied profile: a fresh value for every placeholder, every trace's start offsets and
    // every duration scaled by fresh factors.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let seed = nonce ^ request.wrapping_mul(0x2545_F491_4F6C_DD1D);
    for (slot, offsets) in t.tokens.iter().enumerate() {
        let v = mix64(seed ^ (slot as u64).wrapping_mul(0x9E37_79B9));
        for &o in offsets {
            for (i, b) in body[o..o + crate::varied::TOKEN_LEN].iter_mut().enumerate() {
                *b = HEX[((v >> (4 * (i % 16))) & 0xf) as usize];
            }
        }
    }
    // Every span's start offset within its trace is scaled by a fresh factor per trace in
    // [0.75, 1.25) (one factor per trace keeps parents starting before their children),
    // so offsets are fresh nanoseconds on every send, as they are in real traffic.
    let read = |body: &[u8], o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[o..o + 8]);
        u64::from_le_bytes(b)
    };
    for (k, slot) in t.times.iter().enumerate() {
        let stretch = 0.75
            + (mix64(seed ^ 0xBEEF ^ slot.trace as u64) % (1 << 20)) as f64 / f64::from(1 << 21);
        let offset = (slot.offset as f64 * stretch) as u64;
        let start = read(&body, slot.start_at) - slot.offset + offset;
        let factor = 0.6 + (mix64(seed ^ 0xDEAD ^ k as u64) % 1000) as f64 / 1000.0;
        let end = start + (slot.dur as f64 * factor) as u64;
        body[slot.start_at..slot.start_at + 8].copy_from_slice(&start.to_le_bytes());
        body[slot.end_at..slot.end_at + 8].copy_from_slice(&end.to_le_bytes());
    }
    (body, ids)
}

#[derive(Default)]
struct Totals {
    latencies_us: Vec<u32>,
    ok_requests: u64,
    ok_spans: u64,
    partial: u64,
    shed_spans: u64,
    refused: u64,
    errors: u64,
    last_error: Option<String>,
}

enum Outcome {
    Ok,
    /// Acknowledged with OTLP partial success: this many spans were not stored (a server
    /// shedding load keeps the failing traces).
    Partial(u64, String),
    Refused(String),
    Error(String),
}

/// An acknowledgement with OTLP partial success. Loadgen sends only valid spans, so spans
/// are rejected only when the server sheds load: that is a partial acknowledgement, not
/// an error.
fn partial(p: Option<faultline_model::ExportTracePartialSuccess>) -> Outcome {
    let p = p.unwrap_or_default();
    Outcome::Partial(
        u64::try_from(p.rejected_spans).unwrap_or(0),
        format!("partial success: {}", p.error_message),
    )
}

/// gRPC codec that sends pre-encoded bytes and decodes the response.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawEncoder;
#[derive(Debug, Clone, Default)]
struct RespDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RespDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("bad response: {e}")))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = RespDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RespDecoder {
        RespDecoder
    }
}

enum Client {
    Http {
        client: reqwest::Client,
        url: String,
        gzip: bool,
        bearer: Option<String>,
    },
    Grpc {
        channel: tonic::transport::Channel,
        gzip: bool,
        bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    },
}

impl Client {
    async fn send(&self, body: Vec<u8>) -> Outcome {
        match self {
            Client::Http {
                client,
                url,
                gzip,
                bearer,
            } => {
                let mut req = client
                    .post(url)
                    .header("content-type", "application/x-protobuf");
                if let Some(b) = bearer {
                    req = req.header("authorization", b);
                }
                let body = if *gzip {
                    req = req.header("content-encoding", "gzip");
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    if let Err(e) = enc.write_all(&body) {
                        return Outcome::Error(format!("gzip: {e}"));
                    }
                    match enc.finish() {
                        Ok(b) => b,
                        Err(e) => return Outcome::Error(format!("gzip: {e}")),
                    }
                } else {
                    body
                };
                match req.body(body).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let bytes = resp.bytes().await.unwrap_or_default();
                        if status.is_success() {
                            match ExportTraceServiceResponse::decode(bytes) {
                                Ok(r)
                                    if r.partial_success
                                        .as_ref()
                                        .is_some_and(|p| p.rejected_spans > 0) =>
                                {
                                    partial(r.partial_success)
                                }
                                Ok(_) => Outcome::Ok,
                                Err(e) => Outcome::Error(format!("undecodable response: {e}")),
                            }
                        } else if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                            Outcome::Refused(format!("HTTP {status}"))
                        } else {
                            Outcome::Error(format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&bytes)
                            ))
                        }
                    }
                    Err(e) => Outcome::Error(format!("{e}")),
                }
            }
            Client::Grpc {
                channel,
                gzip,
                bearer,
            } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                if *gzip {
                    grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                if let Err(e) = grpc.ready().await {
                    return Outcome::Error(format!("connect: {e}"));
                }
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                );
                let mut req = tonic::Request::new(Bytes::from(body));
                if let Some(b) = bearer {
                    req.metadata_mut().insert("authorization", b.clone());
                }
                match grpc.unary(req, path, RawCodec).await {
                    Ok(resp) => {
                        if resp
                            .get_ref()
                            .partial_success
                            .as_ref()
                            .is_some_and(|p| p.rejected_spans > 0)
                        {
                            partial(resp.get_ref().partial_success.clone())
                        } else {
                            Outcome::Ok
                        }
                    }
                    Err(st)
                        if matches!(
                            st.code(),
                            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        Outcome::Refused(format!("{:?}: {}", st.code(), st.message()))
                    }
                    Err(st) => Outcome::Error(format!("{:?}: {}", st.code(), st.message())),
                }
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

/// Runs `faultline-bench decode`: the single-core ceiling of what intake does per request,
/// on the same requests loadgen sends: protobuf decode alone, decode plus validation,
/// decode plus validation plus re-encode (the gRPC path before intake kept raw bodies),
/// intake's checking walk (`faultline_model::otlp_check`, what intake does with a body
/// whose spans are all valid), and the pipeline's decode of a WAL body straight into spans
/// (`faultline_model::otlp_decode`).
pub fn bench_decode(
    seconds: f64,
    spans_per_request: usize,
    (templates, profile): (usize, Profile),
    json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        templates > 0 && seconds > 0.0,
        "--templates and --seconds must be positive"
    );
    let mut rng = SmallRng::seed_from_u64(42);
    let pool: Vec<Template> = (0..templates)
        .map(|_| make_template(&mut rng, spans_per_request, profile))
        .collect();
    let limits = faultline_model::validate::Limits::default();
    let mut results = serde_json::Map::new();
    // Warm caches and the allocator so the first stage is not penalised.
    for t in pool.iter().cycle().take(pool.len() * 4) {
        let _ = ExportTraceServiceRequest::decode(&t.body[..]);
    }
    // Three rounds over the stages, best round kept: a noisy neighbour or a frequency
    // change hits one round, not the figure.
    let stages = [
        "decode",
        "decode+validate",
        "decode+validate+encode",
        "check (intake's walk)",
        "pipeline decode to spans",
    ];
    let mut best = vec![(0f64, 0f64, 0usize); 5];
    for _round in 0..3 {
        for (si, best_stage) in best.iter_mut().enumerate() {
            let started = Instant::now();
            let (mut spans, mut bytes, mut n) = (0u64, 0u64, 0usize);
            while started.elapsed().as_secs_f64() < seconds / 3.0 {
                let t = &pool[n % pool.len()];
                n += 1;
                if si == 3 {
                    let c = faultline_model::otlp_check::check(&t.body, &limits)
                        .context("a request loadgen sends does not pass intake's walk")?;
                    anyhow::ensure!(c.spans == t.spans as u64, "the walk miscounted spans");
                    bytes += t.body.len() as u64;
                    spans += c.spans;
                    continue;
                }
                if si == 4 {
                    let got = faultline_model::otlp_decode::spans(&t.body, t.spans)
                        .context("a request loadgen sends does not decode into spans")?;
                    anyhow::ensure!(got.len() == t.spans, "the decode miscounted spans");
                    bytes += t.body.len() as u64;
                    spans += got.len() as u64;
                    continue;
                }
                let mut req = ExportTraceServiceRequest::decode(&t.body[..])
                    .context("template does not decode")?;
                if si > 0 {
                    let v = faultline_model::validate::validate_and_filter(&mut req, &limits);
                    anyhow::ensure!(
                        v.rejected_spans == 0,
                        "loadgen produced invalid spans: {:?}",
                        v.reasons
                    );
                }
                bytes += if si == 2 {
                    req.encode_to_vec().len() as u64
                } else {
                    t.body.len() as u64
                };
                spans += t.spans as u64;
            }
            let el = started.elapsed().as_secs_f64();
            let sps = spans as f64 / el;
            if sps > best_stage.0 {
                *best_stage = (sps, bytes as f64 / el / 1e6, n);
            }
        }
    }
    let mut stages: Vec<&str> = stages.to_vec();
    for (stage, b) in origin_stages(&pool, seconds)? {
        stages.push(stage);
        best.push(b);
    }
    for (si, stage) in stages.iter().enumerate() {
        let (sps, mbps, n) = best[si];
        if !json {
            println!(
                "{stage:<24} {sps:>12.0} spans/s {mbps:>8.1} MB/s  (best of 3 rounds, {n} requests of ~{spans_per_request} spans, one core)"
            );
        }
        results.insert(
            (*stage).into(),
            serde_json::json!({"spans_per_second": sps, "mb_per_second": mbps, "requests": n}),
        );
    }
    if json {
        println!("{}", serde_json::Value::Object(results));
    }
    Ok(ExitCode::SUCCESS)
}

/// A stage's best round: spans/s, MB/s, requests.
type Best = (f64, f64, usize);

/// The pipeline's decode with and without the shared origins
/// (`faultline_model::otlp_decode::spans` against `spans_unshared`), on loadgen's requests
/// with one more resource attribute: constant (every resource met before, the best case)
/// or rewritten before every decode so that no resource of any request was met before
/// (the worst case: a sender of many thousands of distinct resources). Each stage's best
/// of three rounds.
fn origin_stages(pool: &[Template], seconds: f64) -> anyhow::Result<Vec<(&'static str, Best)>> {
    const MARK: usize = 16;
    // Each template with a placeholder resource attribute per `ResourceSpans`, and where
    // the placeholders are.
    let mut bodies = Vec::with_capacity(pool.len());
    // Equal resources get equal placeholders, so that unless rewritten a resource is
    // met again as often as in loadgen's requests.
    let mut numbers = std::collections::HashMap::new();
    for t in pool {
        let mut req =
            ExportTraceServiceRequest::decode(&t.body[..]).context("a template does not decode")?;
        for (i, rs) in req.resource_spans.iter_mut().enumerate() {
            let resource = rs.resource.get_or_insert_with(Resource::default);
            let next = numbers.len();
            let number = *numbers.entry(resource.encode_to_vec()).or_insert(next);
            let mark = format!("#{i:07}{number:07}#");
            resource.attributes.push(kv("bench.resource", s(&mark)));
        }
        let body = req.encode_to_vec();
        // A placeholder is `#`, its place in the request and its resource's number in 7
        // digits each, `#` (nothing else in a request has 14 digits between two `#`).
        let mut marks = vec![usize::MAX; req.resource_spans.len()];
        for (at, w) in body.windows(MARK).enumerate() {
            let digits = &w[1..MARK - 1];
            if w[0] == b'#' && w[MARK - 1] == b'#' && digits.iter().all(u8::is_ascii_digit) {
                let i: usize = std::str::from_utf8(&digits[..7])?.parse()?;
                if let Some(m) = marks.get_mut(i) {
                    *m = at + 1;
                }
            }
        }
        anyhow::ensure!(
            !marks.contains(&usize::MAX),
            "a resource placeholder was not found in its request"
        );
        bodies.push((body, t.spans, marks));
    }
    let names = [
        "pipeline decode, resources met before",
        "  the same, not shared",
        "pipeline decode, every resource new",
        "  the same, not shared",
    ];
    let mut best = vec![(0f64, 0f64, 0usize); names.len()];
    let mut fresh = 0u64;
    for _round in 0..3 {
        for (si, best_stage) in best.iter_mut().enumerate() {
            let (shared, new) = (si % 2 == 0, si >= 2);
            let started = Instant::now();
            let (mut spans, mut bytes, mut n) = (0u64, 0u64, 0usize);
            while started.elapsed().as_secs_f64() < seconds / 3.0 {
                let (body, count, marks) = &mut bodies[n % pool.len()];
                n += 1;
                if new {
                    for &at in marks.iter() {
                        fresh += 1;
                        let text = format!("{fresh:0w$x}", w = MARK - 2);
                        body[at..at + MARK - 2].copy_from_slice(text.as_bytes());
                    }
                }
                let got = if shared {
                    faultline_model::otlp_decode::spans(body, *count)
                } else {
                    faultline_model::otlp_decode::spans_unshared(body, *count)
                }
                .context("a request with a resource placeholder does not decode")?;
                anyhow::ensure!(got.len() == *count, "the decode miscounted spans");
                bytes += body.len() as u64;
                spans += got.len() as u64;
            }
            let el = started.elapsed().as_secs_f64();
            let sps = spans as f64 / el;
            if sps > best_stage.0 {
                *best_stage = (sps, bytes as f64 / el / 1e6, n);
            }
        }
    }
    Ok(names.into_iter().zip(best).collect())
}

/// Parses loadgen's flags from `argv` (without a program name), as tests call it.
pub fn parse_args<I, T>(argv: I) -> Result<LoadgenArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: LoadgenArgs,
    }
    let argv = std::iter::once(std::ffi::OsString::from("loadgen"))
        .chain(argv.into_iter().map(Into::into));
    <Cmd as clap::Parser>::try_parse_from(argv).map(|c| c.args)
}

/// Runs the load and answers the summary (JSON: `spans_ok`, `spans_per_second`,
/// `latency_ms`, ...); [`print`] writes it as the command does.
pub fn run(args: &LoadgenArgs) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args))
}

impl Client {
    /// The client `args` ask for (protocol, endpoint, timeout, gzip).
    fn new(args: &LoadgenArgs) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs_f64(args.timeout);
        Ok(match args.protocol.as_str() {
            "http" => {
                let base = args
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:4318".into());
                let url = if base.ends_with("/v1/traces") {
                    base
                } else {
                    format!("{}/v1/traces", base.trim_end_matches('/'))
                };
                Client::Http {
                    client: crate::http_client()
                        .timeout(timeout)
                        .pool_max_idle_per_host(args.concurrency)
                        .build()
                        .context("cannot build the HTTP client")?,
                    url,
                    gzip: args.gzip,
                    bearer: args.bearer.as_ref().map(|b| format!("Bearer {b}")),
                }
            }
            "grpc" => {
                let url = args
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:4317".into());
                let mut endpoint = tonic::transport::Channel::from_shared(url.clone())
                    .with_context(|| format!("invalid endpoint {url}"))?;
                if let Some(ca) = &args.ca {
                    let pem = std::fs::read(ca)
                        .with_context(|| format!("cannot read the CA {}", ca.display()))?;
                    let tls = tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem));
                    endpoint = endpoint
                        .tls_config(tls)
                        .context("cannot use the CA for TLS")?;
                }
                let bearer = match &args.bearer {
                    Some(b) => Some(
                        format!("Bearer {b}")
                            .parse()
                            .context("the bearer token is not valid gRPC metadata")?,
                    ),
                    None => None,
                };
                let channel = endpoint
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .initial_stream_window_size(Some(4 << 20))
                    .initial_connection_window_size(Some(16 << 20))
                    .connect_lazy();
                Client::Grpc {
                    channel,
                    gzip: args.gzip,
                    bearer,
                }
            }
            other => anyhow::bail!("unknown protocol {other:?}; use grpc or http"),
        })
    }
}

/// One answered request, for [`record`].
struct Ack<'a> {
    n: u64,
    template: &'a Template,
    ids: &'a [String],
    took: Duration,
}

/// Adds an answer to `totals` (and the ack log); false when it was refused or failed.
fn record(
    totals: &mut Totals,
    outcome: Outcome,
    ack: Ack<'_>,
    ack_log: Option<&Mutex<std::io::BufWriter<std::fs::File>>>,
    acked_spans: &AtomicU64,
    probe: Option<&crate::fresh::Probe>,
) -> bool {
    let log = |line: String| {
        if let Some(log) = ack_log
            && let Ok(mut w) = log.lock()
        {
            let _ = writeln!(w, "{line}");
        }
    };
    match outcome {
        Outcome::Ok => {
            let spans = ack.template.spans;
            let us = ack.took.as_micros().min(u32::MAX as u128) as u32;
            totals.latencies_us.push(us);
            totals.ok_requests += 1;
            totals.ok_spans += spans as u64;
            acked_spans.fetch_add(spans as u64, Ordering::Relaxed);
            log(format!("{} {spans} {}", ack.n, ack.ids.join(",")));
            if let (Some(p), Some(id)) = (probe, ack.ids.first()) {
                p.acked(id);
            }
            true
        }
        Outcome::Partial(rejected, e) => {
            // The failing traces were kept, the others shed.
            let kept: Vec<(&str, usize)> = ack
                .ids
                .iter()
                .zip(&ack.template.trace_spans)
                .filter(|(_, (_, failing))| *failing)
                .map(|(id, (n, _))| (id.as_str(), *n))
                .collect();
            let spans: usize = kept.iter().map(|(_, n)| n).sum();
            totals.partial += 1;
            totals.shed_spans += rejected;
            totals.ok_spans += spans as u64;
            totals.last_error = Some(e);
            acked_spans.fetch_add(spans as u64, Ordering::Relaxed);
            if !kept.is_empty() {
                let ids: Vec<&str> = kept.iter().map(|(id, _)| *id).collect();
                log(format!("{} {spans} {}", ack.n, ids.join(",")));
            }
            true
        }
        Outcome::Refused(e) => {
            totals.refused += 1;
            totals.last_error = Some(e);
            false
        }
        Outcome::Error(e) => {
            totals.errors += 1;
            totals.last_error = Some(e);
            false
        }
    }
}

async fn run_async(args: &LoadgenArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.templates > 0, "--templates must be at least 1");
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = SmallRng::seed_from_u64(seed);
    let nonce: u64 = rng.random();
    let templates: Arc<Vec<Template>> = Arc::new(
        (0..args.templates)
            .map(|_| make_template(&mut rng, args.spans_per_request, args.profile))
            .collect(),
    );
    let mean_spans =
        templates.iter().map(|t| t.spans).sum::<usize>() as f64 / templates.len() as f64;
    let mean_bytes =
        templates.iter().map(|t| t.body.len()).sum::<usize>() as f64 / templates.len() as f64;
    let client = Arc::new(Client::new(args)?);
    let ack_log = match &args.ack_log {
        Some(p) => Some(Arc::new(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot create ack log {}", p.display()))?,
        )))),
        None => None,
    };
    let duration = Duration::from_secs_f64(args.duration);
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(mean_spans / r.max(1.0)));
    let counter = Arc::new(AtomicU64::new(0));
    let acked_spans = Arc::new(AtomicU64::new(0));
    let probe = match &args.probe_api {
        Some(api) => Some(crate::fresh::Probe::new(
            api,
            Duration::from_secs_f64(args.probe_every.max(0.0)),
        )?),
        None => None,
    };
    let started = Instant::now();
    let probing = probe
        .clone()
        .map(|p| tokio::spawn(p.run(started + duration)));
    let progress = indicatif::ProgressBar::new(duration.as_secs());
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (templates, client, counter, ack_log, acked_spans, probe) = (
            templates.clone(),
            client.clone(),
            counter.clone(),
            ack_log.clone(),
            acked_spans.clone(),
            probe.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut totals = Totals::default();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if let Some(iv) = interval {
                    let due = started + iv.mul_f64(n as f64);
                    if due > started + duration {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                } else if started.elapsed() >= duration {
                    break;
                }
                let t = &templates[(n as usize) % templates.len()];
                let (body, ids) = stamp(t, nonce, n);
                let sent = Instant::now();
                let outcome = client.send(body).await;
                let ack = Ack {
                    n,
                    template: t,
                    ids: &ids,
                    took: sent.elapsed(),
                };
                let logged = (ack_log.as_deref(), probe.as_deref());
                if !record(&mut totals, outcome, ack, logged.0, &acked_spans, logged.1) {
                    // Refused or failed: the receiver may be restarting; don't spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            totals
        }));
    }
    let ticker = {
        let progress = progress.clone();
        let acked_spans = acked_spans.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let el = started.elapsed();
                progress.set_position(el.as_secs().min(duration.as_secs()));
                progress.set_message(format!(
                    "{:.0} spans/s acknowledged",
                    acked_spans.load(Ordering::Relaxed) as f64 / el.as_secs_f64()
                ));
            }
        })
    };
    let mut all = Totals::default();
    for w in workers {
        let t = w.await.context("load worker panicked")?;
        all.latencies_us.extend(t.latencies_us);
        all.ok_requests += t.ok_requests;
        all.ok_spans += t.ok_spans;
        all.partial += t.partial;
        all.shed_spans += t.shed_spans;
        all.refused += t.refused;
        all.errors += t.errors;
        if t.last_error.is_some() {
            all.last_error = t.last_error;
        }
    }
    ticker.abort();
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(log) = &ack_log
        && let Ok(mut w) = log.lock()
    {
        w.flush().context("cannot write the ack log")?;
    }
    all.latencies_us.sort_unstable();
    let l = &all.latencies_us;
    let freshness = match probing {
        Some(t) => Some(t.await.context("the freshness probe panicked")?.json()),
        None => None,
    };
    let summary = serde_json::json!({
        "readable_after_ack_s": freshness,
        "protocol": args.protocol, "seconds": elapsed, "concurrency": args.concurrency,
        "spans_per_request": mean_spans, "request_bytes": mean_bytes,
        "requests_ok": all.ok_requests, "spans_ok": all.ok_spans,
        "spans_per_second": all.ok_spans as f64 / elapsed,
        "requests_partial": all.partial, "spans_shed": all.shed_spans,
        "requests_refused": all.refused, "requests_failed": all.errors,
        "latency_ms": {"p50": percentile(l, 0.5), "p90": percentile(l, 0.9), "p99": percentile(l, 0.99), "max": percentile(l, 1.0)},
        "last_error": all.last_error,
    });
    Ok(summary)
}

/// Prints a summary of [`run`]: JSON with `--json`, else a line of text.
pub fn print(args: &LoadgenArgs, summary: &serde_json::Value) {
    if args.json {
        println!("{summary}");
        return;
    }
    let l = &summary["latency_ms"];
    println!(
        "{} over {:.1} s, concurrency {}: {} requests ({:.0} spans, {:.0} bytes each) acknowledged, {:.0} spans/s; latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}; partly shed {} ({} spans), refused {}, failed {}",
        args.protocol,
        summary["seconds"].as_f64().unwrap_or(0.0),
        args.concurrency,
        summary["requests_ok"],
        summary["spans_per_request"].as_f64().unwrap_or(0.0),
        summary["request_bytes"].as_f64().unwrap_or(0.0),
        summary["spans_per_second"].as_f64().unwrap_or(0.0),
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
        summary["requests_partial"],
        summary["spans_shed"],
        summary["requests_refused"],
        summary["requests_failed"]
    );
    if let Some(e) = summary["last_error"].as_str() {
        println!("last error: {e}");
    }
    let f = &summary["readable_after_ack_s"];
    if !f.is_null() {
        println!(
            "readable by id after acknowledgement: {} probes, s p50 {:.2} p99 {:.2} max {:.2}; never {}{}",
            f["probes"],
            f["p50"].as_f64().unwrap_or(0.0),
            f["p99"].as_f64().unwrap_or(0.0),
            f["max"].as_f64().unwrap_or(0.0),
            f["never"],
            f["last_error"]
                .as_str()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_realistic_traces_and_stamping_makes_ids_unique() {
        let mut rng = SmallRng::seed_from_u64(7);
        let t = make_template(&mut rng, 500, Profile::Templated);
        assert!(t.spans >= 500 && t.spans < 530, "{}", t.spans);
        let req = ExportTraceServiceRequest::decode(&t.body[..]).unwrap();
        assert!(req.resource_spans.len() >= 5, "several services");
        let (a, ids_a) = stamp(&t, 1, 1);
        let (b, ids_b) = stamp(&t, 1, 2);
        assert_eq!(ids_a.len(), t.trace_offsets.len());
        assert!(
            ids_a.iter().all(|id| !ids_b.contains(id)),
            "requests never share trace ids"
        );
        assert!(
            ids_a
                .iter()
                .all(|id| ids_b.iter().all(|other| id[16..] != other[16..])),
            "both halves of the ids vary, as random W3C trace ids do"
        );
        let ra = ExportTraceServiceRequest::decode(&a[..]).unwrap();
        ExportTraceServiceRequest::decode(&b[..]).unwrap();
        // Span ids differ between requests, and every parent still points at a span of the
        // same request.
        let rb = ExportTraceServiceRequest::decode(&b[..]).unwrap();
        let span_ids = |r: &ExportTraceServiceRequest| -> std::collections::HashSet<Vec<u8>> {
            r.resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans[0].spans)
                .map(|s| s.span_id.clone())
                .collect()
        };
        let (sa, sb) = (span_ids(&ra), span_ids(&rb));
        assert!(sa.is_disjoint(&sb), "span ids are unique across requests");
        for sp in ra
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans[0].spans)
        {
            assert!(
                sp.parent_span_id.is_empty() || sa.contains(&sp.parent_span_id),
                "parent resolves"
            );
        }
        // Timestamps moved with the template's age: every span now starts after the
        // template's earliest start, and durations are unchanged.
        let orig = ExportTraceServiceRequest::decode(&t.body[..]).unwrap();
        let o0 = &orig.resource_spans[0].scope_spans[0].spans[0];
        let a0 = &ra.resource_spans[0].scope_spans[0].spans[0];
        assert!(a0.start_time_unix_nano >= o0.start_time_unix_nano);
        assert_eq!(
            a0.end_time_unix_nano - a0.start_time_unix_nano,
            o0.end_time_unix_nano - o0.start_time_unix_nano
        );
        assert!(
            t.time_offsets.len() >= 2 * t.spans,
            "start and end of every span found"
        );
        // Every span's trace id is one of the stamped ids: no copy was missed.
        for rs in &ra.resource_spans {
            for sp in &rs.scope_spans[0].spans {
                let hex: String = sp.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                assert!(ids_a.contains(&hex));
                assert!(
                    (5..=30).contains(
                        &ra.resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans[0].spans)
                            .filter(|s| s.trace_id == sp.trace_id)
                            .count()
                    )
                );
            }
        }
    }

    fn attr<'a>(sp: &'a Span, key: &str) -> Option<&'a Value> {
        sp.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn text(v: Option<&Value>) -> String {
        match v {
            Some(Value::StringValue(s)) => s.clone(),
            other => format!("{other:?}"),
        }
    }

    /// Two spans starting at the same nanosecond each get their own start place, and a
    /// time that only appears elsewhere (an event's) is not taken for a span's.
    #[test]
    fn span_times_are_found_behind_their_own_fields() {
        let span = |id: u8, start: u64, end: u64| Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            events: vec![Event {
                time_unix_nano: 7_000 + u64::from(id),
                ..Default::default()
            }],
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span(1, 5_000, 9_000),
                        span(2, 5_000, 6_000),
                        span(3, 7_001, 8_000),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = req.encode_to_vec();
        let times = [
            (0, 5_000, 5_000, 9_000),
            (0, 5_000, 5_000, 6_000),
            (0, 5_000, 7_001, 8_000),
        ];
        let slots = span_slots(&body, &times);
        assert_eq!(slots.len(), 3);
        let read = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap());
        assert_ne!(slots[0].start_at, slots[1].start_at, "one place each");
        for (slot, &(_, _, start, end)) in slots.iter().zip(&times) {
            assert_eq!((read(slot.start_at), read(slot.end_at)), (start, end));
            assert_eq!(body[slot.start_at - 1], 7 << 3 | 1, "a start field");
        }
        // 7,001 is span 1's event time, earlier in the body than span 3's start.
        assert!(slots[2].start_at > slots[1].end_at);
    }

    #[test]
    fn the_varied_profile_sends_fresh_values_and_durations_every_time() {
        let mut rng = SmallRng::seed_from_u64(11);
        let t = make_template(&mut rng, 500, Profile::Varied);
        let bytes_per_span = t.body.len() as f64 / t.spans as f64;
        assert!(
            (200.0..400.0).contains(&bytes_per_span),
            "about 280 bytes per span as OTLP protobuf: {bytes_per_span:.0}"
        );
        let spans = |body: &[u8]| -> Vec<Span> {
            let r = ExportTraceServiceRequest::decode(body).unwrap();
            r.resource_spans
                .into_iter()
                .flat_map(|rs| rs.scope_spans)
                .flat_map(|ss| ss.spans)
                .collect()
        };
        let (a, _) = stamp(&t, 3, 1);
        let (b, _) = stamp(&t, 3, 2);
        let (sa, sb) = (spans(&a), spans(&b));
        assert_eq!(sa.len(), t.spans);
        // Attributes per span, with its resource's (a span carries them).
        let req = ExportTraceServiceRequest::decode(&a[..]).unwrap();
        let attrs: usize = req
            .resource_spans
            .iter()
            .map(|rs| {
                let res = rs.resource.as_ref().map_or(0, |r| r.attributes.len());
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| &ss.spans)
                    .map(|sp| sp.attributes.len() + res)
                    .sum::<usize>()
            })
            .sum();
        let per_span = attrs as f64 / sa.len() as f64;
        assert!(
            (15.0..25.0).contains(&per_span),
            "about 20 attributes per span: {per_span}"
        );
        // user.id: one per trace, the same on every span of it, fresh on every send.
        let mut by_trace: std::collections::HashMap<&[u8], std::collections::HashSet<String>> =
            Default::default();
        for sp in &sa {
            by_trace
                .entry(&sp.trace_id[..])
                .or_default()
                .insert(text(attr(sp, "user.id")));
        }
        assert!(by_trace.values().all(|users| users.len() == 1));
        let users_a: std::collections::HashSet<String> =
            sa.iter().map(|sp| text(attr(sp, "user.id"))).collect();
        let users_b: std::collections::HashSet<String> =
            sb.iter().map(|sp| text(attr(sp, "user.id"))).collect();
        assert_eq!(users_a.len(), by_trace.len(), "a user per trace");
        assert!(users_a.is_disjoint(&users_b), "fresh users on every send");
        // Per-span fresh values (message ids) differ between sends too.
        let ids = |v: &[Span]| -> Vec<String> {
            v.iter()
                .filter_map(|sp| attr(sp, "messaging.message.id"))
                .map(|u| text(Some(u)))
                .collect()
        };
        assert!(!ids(&sa).is_empty());
        assert!(ids(&sa).iter().zip(ids(&sb)).all(|(x, y)| *x != y));
        // Durations are rescaled on every send.
        let durs = |v: &[Span]| -> Vec<u64> {
            v.iter()
                .map(|sp| sp.end_time_unix_nano - sp.start_time_unix_nano)
                .collect()
        };
        let same = durs(&sa)
            .iter()
            .zip(durs(&sb))
            .filter(|(x, y)| **x == *y)
            .count();
        assert!(
            same * 20 < t.spans,
            "{same} of {} durations repeated",
            t.spans
        );
        // Start offsets within a trace are fresh on every send too, and parents still
        // start before their children.
        let offsets = |v: &[Span]| -> Vec<u64> {
            let mut root: std::collections::HashMap<&[u8], u64> = Default::default();
            for sp in v {
                let r = root.entry(&sp.trace_id[..]).or_insert(u64::MAX);
                *r = (*r).min(sp.start_time_unix_nano);
            }
            v.iter()
                .map(|sp| sp.start_time_unix_nano - root[&sp.trace_id[..]])
                .collect()
        };
        let (oa, ob) = (offsets(&sa), offsets(&sb));
        let nonzero = oa.iter().filter(|&&o| o > 0).count();
        let same = oa
            .iter()
            .zip(&ob)
            .filter(|(x, y)| x > &&0 && x == y)
            .count();
        assert!(
            nonzero * 2 > t.spans,
            "{nonzero} of {} spans start after their root",
            t.spans
        );
        assert!(
            same * 20 < nonzero,
            "{same} of {nonzero} start offsets repeated"
        );
        let starts: std::collections::HashMap<&[u8], u64> = sb
            .iter()
            .map(|sp| (&sp.span_id[..], sp.start_time_unix_nano))
            .collect();
        for sp in &sb {
            if let Some(p) = starts.get(&sp.parent_span_id[..]) {
                assert!(
                    *p <= sp.start_time_unix_nano,
                    "a child starts before its parent"
                );
            }
        }
        // Every stamped span is valid: it ends after it starts.
        for sp in sa.iter().chain(&sb) {
            assert!(sp.end_time_unix_nano >= sp.start_time_unix_nano);
        }
        // 12 services, 4 regions, a few percent of failing spans.
        let r = ExportTraceServiceRequest::decode(&a[..]).unwrap();
        assert!(r.resource_spans.len() >= 10, "{}", r.resource_spans.len());
        let regions: std::collections::HashSet<String> =
            sa.iter().map(|sp| text(attr(sp, "region"))).collect();
        assert_eq!(regions.len(), 4);
        let errors = sa
            .iter()
            .filter(|sp| sp.status.as_ref().is_some_and(|s| s.code == 2))
            .count();
        assert!(errors > 0 && errors * 100 < sa.len() * 6, "{errors} errors");
    }
}
