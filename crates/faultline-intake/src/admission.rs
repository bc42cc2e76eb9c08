//! Admission: everything that decides, before anything is acknowledged, whether a request
//! is taken, partly taken, or refused, and then hands it to the WAL.
//!
//! Order of checks, cheapest first, so overload costs as little as possible:
//! 1. the WAL is healthy (else `Unavailable`, retryable);
//! 2. the request fits the in-flight byte budget (else `Busy`, 429, retryable);
//! 3. the WAL budget and the disk's free space leave room (else `Full`, 503, retryable);
//! 4. (the caller decodes the body; a malformed body is `Invalid`, 400). An OTLP
//!    protobuf body ([`Intake::ingest_protobuf`]) met below the shedding pressure of its
//!    lane is first checked in one walk over its bytes (`faultline_model::otlp_check`):
//!    when every span in it is valid it goes to step 7 as it came, undecoded; otherwise it
//!    is decoded and takes steps 5-7;
//! 5. each span is validated; invalid spans are removed and reported as OTLP partial
//!    success; a request with no valid span left is `Invalid`;
//! 6. priority lanes, decided per trace: a trace is `critical` when the request holds a
//!    span of it with error status, a span of it from a service in
//!    `intake.critical_services`, or a synthetic probe span of it (attribute
//!    `faultline.synthetic=true`); the rest of a request is `bulk` when its sender says so
//!    (header or gRPC metadata `x-faultline-lane: bulk`, for replays and imports) and
//!    `normal` otherwise. Under pressure (the largest used share of the WAL budget, the
//!    in-flight budget and, when `intake.max_memory_bytes` is set, resident memory) `bulk`
//!    is shed from [`SHED_BULK_AT`] (whole: a replay stays bulk even with errors, so it
//!    never crowds out live traffic) and `normal` from [`SHED_NORMAL_AT`]: a request with no
//!    critical trace gets `Busy` (429, retryable, Retry-After); a request with critical
//!    traces keeps them whole and sheds the others, answered as OTLP partial success (the
//!    shed spans counted as rejected, with the reason). Either way the shed spans are
//!    counted in `faultline_intake_shed_spans{lane,reason}`. Critical traces are refused
//!    only by the hard limits above (a full WAL or disk). An OpenTelemetry SDK batches up
//!    to 512 spans, so with a few percent of failing requests nearly every batch holds an
//!    error span: deciding per request would shed nothing;
//! 7. the envelope is appended to the WAL and the request answered only when the WAL
//!    acknowledged it; with [`Intake::with_pending`], the request's trace ids are noted
//!    first, with where the WAL put the record, so reads by id find them before the store
//!    indexed them (`faultline_model::pending`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use faultline_model::ExportTraceServiceRequest;
use faultline_model::pending::{PendingTraces, RecordAt};
use faultline_model::span::TraceId;
use faultline_model::validate::{Limits, validate_and_filter};
use faultline_wal::{Wal, WalError};

use crate::metrics::Metrics;
use faultline_model::envelope::{self, Protocol};

/// Limits and budgets of intake.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// Largest request body, compressed or not (after gunzip too).
    pub max_request_bytes: usize,
    /// Span validation limits.
    pub limits: Limits,
    /// Refuse new requests when the disk holding the WAL has less free space than this.
    pub min_free_disk_bytes: u64,
    /// Bytes of request bodies being processed at once, beyond which requests get 429.
    pub max_inflight_bytes: usize,
    /// Seconds a refused client is told to wait (Retry-After).
    pub retry_after_secs: u32,
    /// Services whose traces are always in the `critical` lane.
    pub critical_services: Vec<String>,
    /// Resident memory the process should stay under: its used share is pressure like
    /// the WAL's (`None`: memory is not watched).
    pub max_memory_bytes: Option<u64>,
}

/// Spans removed from a request under pressure.
#[derive(Debug)]
struct Shed {
    lane: Lane,
    reason: &'static str,
    spans: u64,
    message: String,
}

fn is_error(sp: &faultline_model::otlp::trace::Span) -> bool {
    sp.status.as_ref().is_some_and(|st| st.code == 2)
}

fn is_synthetic(sp: &faultline_model::otlp::trace::Span) -> bool {
    sp.attributes.iter().any(|kv| {
        kv.key == "faultline.synthetic"
            && matches!(
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(faultline_model::otlp::common::any_value::Value::BoolValue(
                    true
                ))
            )
    })
}

/// Pressure (share of the WAL or in-flight budget in use) from which `bulk` is shed.
pub const SHED_BULK_AT: f64 = 0.5;
/// Pressure from which `normal` is shed.
pub const SHED_NORMAL_AT: f64 = 0.8;

/// How important a request is when faultline is under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// Replays and imports: shed first.
    Bulk,
    /// Everything else.
    Normal,
    /// Errors, critical services, synthetic probes: accepted while there is room at all.
    Critical,
}

impl Lane {
    /// `bulk`, `normal` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bulk => "bulk",
            Self::Normal => "normal",
            Self::Critical => "critical",
        }
    }

    /// The lane a sender asks for (`x-faultline-lane`); only `bulk` lowers the lane, and
    /// no sender can raise it.
    pub fn from_hint(h: Option<&str>) -> Self {
        match h {
            Some(v) if v.eq_ignore_ascii_case("bulk") => Self::Bulk,
            _ => Self::Normal,
        }
    }
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 << 20,
            limits: Limits::default(),
            min_free_disk_bytes: 256 << 20,
            max_inflight_bytes: 512 << 20,
            retry_after_secs: 1,
            critical_services: Vec::new(),
            max_memory_bytes: None,
        }
    }
}

/// Why a request was not acknowledged. Each maps to one HTTP status and one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The payload is malformed or has no valid span (400 / INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The body is larger than allowed (413 / RESOURCE_EXHAUSTED).
    #[error("{0}")]
    TooLarge(String),
    /// Content type or encoding not supported (415 / INVALID_ARGUMENT).
    #[error("{0}")]
    Unsupported(String),
    /// Too much work in flight; retry (429 / UNAVAILABLE).
    #[error("{0}")]
    Busy(String),
    /// Out of WAL budget or disk; retry later (503 / UNAVAILABLE).
    #[error("{0}")]
    Full(String),
    /// The WAL stopped after an I/O error; retry against a restarted server (503 /
    /// UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
}

impl IngestError {
    /// The metrics outcome label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::TooLarge(_) => "too_large",
            Self::Unsupported(_) => "unsupported",
            Self::Busy(_) | Self::Full(_) => "refused",
            Self::Unavailable(_) => "failed",
        }
    }

    /// Whether the client should retry the same request later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Busy(_) | Self::Full(_) | Self::Unavailable(_))
    }
}

/// What happened to an acknowledged request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans written to the WAL.
    pub accepted_spans: u64,
    /// Invalid spans dropped (reported as partial success).
    pub rejected_spans: u64,
    /// Why spans were dropped, if any were.
    pub message: Option<String>,
    /// WAL sequence number of the record (None when nothing needed storing).
    pub seq: Option<u64>,
}

/// Used shares of the budgets that make pressure.
#[derive(Debug, Clone, Copy)]
struct BudgetUse {
    wal: f64,
    inflight: f64,
    memory: f64,
}

impl BudgetUse {
    fn pressure(self) -> f64 {
        self.wal.max(self.inflight).max(self.memory)
    }
}

/// Admission ticket: holds in-flight budget until the request is answered.
#[derive(Debug)]
pub struct Admitted {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Intake in front of one WAL.
#[derive(Debug)]
pub struct Intake {
    wal: Wal,
    metrics: Arc<Metrics>,
    cfg: IntakeConfig,
    inflight: Arc<Semaphore>,
    inflight_permits: u32,
    data_dir: PathBuf,
    memory: ResidentMemory,
    /// Where acknowledged records' trace ids go until indexed (`None`: nowhere).
    pending: Option<Arc<PendingTraces>>,
}

/// Resident memory of this process, read from `/proc/self/status` at most every
/// [`MEMORY_EVERY`] (a procfs read does not touch a disk, so it may run on the executor).
#[derive(Debug)]
struct ResidentMemory {
    base: Instant,
    /// Nanoseconds after `base` of the last read, and the bytes read then.
    read_at: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// How long a reading of resident memory is used.
const MEMORY_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

impl ResidentMemory {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            read_at: std::sync::atomic::AtomicU64::new(0),
            bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn get(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.base.elapsed().as_nanos() as u64;
        let last = self.read_at.load(Relaxed);
        if last == 0 || now.saturating_sub(last) >= MEMORY_EVERY.as_nanos() as u64 {
            self.read_at.store(now.max(1), Relaxed);
            if let Some(b) = resident_bytes() {
                self.bytes.store(b, Relaxed);
            }
        }
        self.bytes.load(Relaxed)
    }
}

/// This process's resident set (`VmRSS`), if the platform says.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// In-flight budget is counted in KiB so large budgets fit a semaphore's permit count.
fn permits_for(bytes: usize) -> u32 {
    (bytes.div_ceil(1024)).max(1).min(u32::MAX as usize) as u32
}

impl Intake {
    /// Intake writing to `wal`; `data_dir` is the directory whose disk is watched.
    pub fn new(wal: Wal, metrics: Arc<Metrics>, cfg: IntakeConfig) -> Self {
        let inflight_permits = permits_for(cfg.max_inflight_bytes);
        let data_dir = wal.dir().to_path_buf();
        Self {
            wal,
            metrics,
            inflight: Arc::new(Semaphore::new(inflight_permits as usize)),
            inflight_permits,
            cfg,
            data_dir,
            memory: ResidentMemory::new(),
            pending: None,
        }
    }

    /// Notes each acknowledged record's trace ids in `pending`, so a trace can be read
    /// by id before the store indexed it (`faultline_model::pending`).
    pub fn with_pending(mut self, pending: Arc<PendingTraces>) -> Self {
        self.pending = Some(pending);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &IntakeConfig {
        &self.cfg
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The WAL.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Free bytes on the disk holding the WAL, if the file system says.
    pub fn disk_free_bytes(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.data_dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// The largest used share of the WAL budget, the in-flight budget and the memory bound
    /// (0 to 1, or above when memory is over its bound).
    pub fn pressure(&self) -> f64 {
        self.budget_use().pressure()
    }

    /// Resident memory of the process (as last read) and the configured bound.
    pub fn memory(&self) -> (u64, Option<u64>) {
        (self.memory.get(), self.cfg.max_memory_bytes)
    }

    /// Used shares of the budgets.
    fn budget_use(&self) -> BudgetUse {
        let max = self.wal.options().max_bytes.max(1);
        let wal = self.wal.size_bytes() as f64 / max as f64;
        let used = self
            .inflight_permits
            .saturating_sub(self.inflight.available_permits() as u32);
        let memory = match self.cfg.max_memory_bytes {
            Some(bound) => self.memory.get() as f64 / bound.max(1) as f64,
            None => 0.0,
        };
        BudgetUse {
            wal,
            inflight: f64::from(used) / f64::from(self.inflight_permits.max(1)),
            memory,
        }
    }

    /// The traces of a validated request that are critical (see the module doc), and how
    /// many of its spans belong to them.
    fn critical_traces(&self, request: &ExportTraceServiceRequest) -> (HashSet<Vec<u8>>, u64) {
        let mut critical: HashSet<Vec<u8>> = HashSet::new();
        for rs in &request.resource_spans {
            let service = faultline_model::service_name(rs.resource.as_ref());
            let whole = self.cfg.critical_services.iter().any(|c| c == service);
            for sp in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                if whole || is_error(sp) || is_synthetic(sp) {
                    critical.insert(sp.trace_id.clone());
                }
            }
        }
        let spans = if critical.is_empty() {
            0
        } else {
            request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .filter(|sp| critical.contains(&sp.trace_id))
                .count() as u64
        };
        (critical, spans)
    }

    /// Admits and ingests the spans of faultline's own synthetic probes, in the critical
    /// lane, as a receiver would a request that came over the network; why not, in words.
    pub async fn ingest_synthetic(&self, request: ExportTraceServiceRequest) -> Result<(), String> {
        use prost::Message;
        let ticket = self
            .admit(request.encoded_len())
            .map_err(|e| e.to_string())?;
        self.ingest(
            Protocol::Probe,
            request,
            None,
            Vec::new(),
            &ticket,
            Lane::Critical,
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }

    /// Checks 1-3 of the module doc for a request of `body_bytes`.
    pub fn admit(&self, body_bytes: usize) -> Result<Admitted, IngestError> {
        if let Some(reason) = self.wal.failure() {
            return Err(IngestError::Unavailable(format!(
                "faultline cannot acknowledge writes: {reason}"
            )));
        }
        let wanted = permits_for(body_bytes).min(self.inflight_permits);
        let permit = match self.inflight.clone().try_acquire_many_owned(wanted) {
            Ok(p) => Some(p),
            Err(_) => {
                return Err(IngestError::Busy(format!(
                    "too many request bytes in flight (limit {} bytes, intake.max_inflight_bytes); retry after {} s",
                    self.cfg.max_inflight_bytes, self.cfg.retry_after_secs
                )));
            }
        };
        let max = self.wal.options().max_bytes;
        let size = self.wal.size_bytes();
        if size.saturating_add(body_bytes as u64) > max {
            return Err(IngestError::Full(format!(
                "write-ahead log is full ({size} of {max} bytes, wal.max_bytes); retry after {} s",
                self.cfg.retry_after_secs
            )));
        }
        if let Some(free) = self.disk_free_bytes()
            && free
                < self
                    .cfg
                    .min_free_disk_bytes
                    .saturating_add(body_bytes as u64)
        {
            return Err(IngestError::Full(format!(
                "disk holding {} has {free} bytes free, below the reserve of {} bytes (intake.min_free_disk_bytes); free disk space, retry after {} s",
                self.data_dir.display(),
                self.cfg.min_free_disk_bytes,
                self.cfg.retry_after_secs
            )));
        }
        Ok(Admitted { _permit: permit })
    }

    /// Validates `request`, writes what is valid to the WAL and waits for the
    /// acknowledgement. `raw` is the request's own protobuf encoding when the caller has
    /// it; it is stored as is when no span had to be removed.
    pub async fn ingest(
        &self,
        protocol: Protocol,
        mut request: ExportTraceServiceRequest,
        raw: Option<&[u8]>,
        pre_rejected: Vec<String>,
        _ticket: &Admitted,
        lane_hint: Lane,
    ) -> Result<Accepted, IngestError> {
        let v = validate_and_filter(&mut request, &self.cfg.limits);
        let rejected = v.rejected_spans + pre_rejected.len() as u64;
        let mut reasons = pre_rejected;
        reasons.extend(v.reasons);
        self.metrics.spans(protocol, "rejected", rejected);
        let message = if reasons.is_empty() {
            None
        } else {
            let shown: Vec<&str> = reasons.iter().take(5).map(String::as_str).collect();
            let more = reasons.len().saturating_sub(shown.len());
            let mut m = format!("rejected {rejected} invalid span(s): {}", shown.join("; "));
            if more > 0 {
                m.push_str(&format!("; and {more} more"));
            }
            Some(m)
        };
        if v.accepted_spans == 0 {
            if rejected > 0 {
                return Err(IngestError::Invalid(message.unwrap_or_default()));
            }
            return Ok(Accepted::default());
        }
        let mut accepted = v.accepted_spans;
        let mut rejected = rejected;
        let mut message = message;
        let mut modified = v.modified;
        let shed = self
            .shed(&mut request, lane_hint, accepted)
            .inspect_err(|_| {
                self.metrics.spans(protocol, "shed", accepted);
            })?;
        if let Some(shed) = shed {
            self.metrics
                .shed(shed.lane.as_str(), shed.reason, shed.spans);
            self.metrics.spans(protocol, "shed", shed.spans);
            accepted -= shed.spans;
            rejected += shed.spans;
            modified = true;
            message = Some(match message {
                Some(m) => format!("{m}; {}", shed.message),
                None => shed.message,
            });
        }
        let spans = u32::try_from(accepted).unwrap_or(u32::MAX);
        let payload = match raw {
            Some(raw) if !modified && rejected == 0 => envelope::encode(protocol, spans, raw),
            _ => envelope::encode_request(protocol, spans, &request),
        };
        let done = Accepted {
            accepted_spans: accepted,
            rejected_spans: rejected,
            message,
            seq: None,
        };
        self.append(protocol, payload, done, trace_ids(&request))
            .await
    }

    /// Ingests an OTLP protobuf request body: when every span in it is valid and nothing
    /// needs shedding (the common case), the body goes to the WAL as it came after one
    /// walk over its bytes (`faultline_model::otlp_check`); otherwise it is decoded and
    /// takes [`Intake::ingest`]'s path, which judges, trims and reports it.
    pub async fn ingest_protobuf(
        &self,
        protocol: Protocol,
        raw: &[u8],
        ticket: &Admitted,
        lane_hint: Lane,
    ) -> Result<Accepted, IngestError> {
        use prost::Message;
        if self.budget_use().pressure() < shed_from(lane_hint)
            && let Some(checked) = faultline_model::otlp_check::check(raw, &self.cfg.limits)
        {
            self.metrics.spans(protocol, "rejected", 0);
            let spans = u32::try_from(checked.spans).unwrap_or(u32::MAX);
            let done = Accepted {
                accepted_spans: checked.spans,
                ..Accepted::default()
            };
            let payload = envelope::encode(protocol, spans, raw);
            return self
                .append(protocol, payload, done, checked.trace_ids)
                .await;
        }
        let request = ExportTraceServiceRequest::decode(raw).map_err(|e| {
            IngestError::Invalid(format!(
                "request body is not a valid OTLP ExportTraceServiceRequest protobuf: {e}"
            ))
        })?;
        self.ingest(protocol, request, Some(raw), Vec::new(), ticket, lane_hint)
            .await
    }

    /// Appends an accepted request's envelope to the WAL and answers once the WAL
    /// acknowledged it, noting its traces as pending first.
    async fn append(
        &self,
        protocol: Protocol,
        payload: Vec<u8>,
        done: Accepted,
        trace_ids: impl IntoIterator<Item = TraceId>,
    ) -> Result<Accepted, IngestError> {
        let accepted = done.accepted_spans;
        let started = Instant::now();
        let result = self.wal.append(payload).await;
        self.metrics.ack_latency(started.elapsed());
        match result {
            Ok(ack) => {
                if let Some(p) = &self.pending {
                    let at = RecordAt {
                        seq: ack.seq,
                        segment: ack.segment,
                        offset: ack.offset,
                    };
                    p.add(at, trace_ids);
                }
                self.metrics.spans(protocol, "accepted", accepted);
                Ok(Accepted {
                    seq: Some(ack.seq),
                    ..done
                })
            }
            Err(e) => {
                self.metrics.spans(protocol, "refused", accepted);
                Err(match e {
                    WalError::Full { .. } | WalError::NoSpace { .. } => IngestError::Full(format!(
                        "{e}; retry after {} s",
                        self.cfg.retry_after_secs
                    )),
                    WalError::RecordTooLarge { .. } => IngestError::TooLarge(e.to_string()),
                    other => IngestError::Unavailable(format!(
                        "faultline cannot acknowledge writes: {other}"
                    )),
                })
            }
        }
    }

    /// Sheds what pressure allows no room for (see the module doc): `Err(Busy)` when no
    /// trace of the request is critical; `Ok(Some(shed))` after removing the spans of the
    /// non-critical traces from `request`; `Ok(None)` when everything stays.
    fn shed(
        &self,
        request: &mut ExportTraceServiceRequest,
        lane_hint: Lane,
        accepted: u64,
    ) -> Result<Option<Shed>, IngestError> {
        let lane = if lane_hint == Lane::Bulk {
            Lane::Bulk
        } else {
            Lane::Normal
        };
        let at = shed_from(lane);
        let used = self.budget_use();
        let pressure = used.pressure();
        if pressure < at {
            return Ok(None);
        }
        // A bulk request (a replay, an import) stays bulk even with errors: it must not
        // crowd out live traffic.
        let (critical, critical_spans) = if lane == Lane::Bulk {
            (HashSet::new(), 0)
        } else {
            self.critical_traces(request)
        };
        if critical_spans >= accepted && lane != Lane::Bulk {
            return Ok(None);
        }
        let (reason, what) = if used.wal >= at {
            ("wal", "write-ahead log")
        } else if used.memory >= at {
            ("memory", "resident memory")
        } else {
            ("inflight", "in-flight requests")
        };
        if critical.is_empty() {
            self.metrics.shed(lane.as_str(), reason, accepted);
            return Err(IngestError::Busy(format!(
                "shedding {} traffic under pressure ({what} at {:.0}% of its budget); retry after {} s; traces with errors and critical services are still accepted",
                lane.as_str(),
                pressure * 100.0,
                self.cfg.retry_after_secs
            )));
        }
        for rs in &mut request.resource_spans {
            for ss in &mut rs.scope_spans {
                ss.spans.retain(|sp| critical.contains(&sp.trace_id));
            }
            rs.scope_spans.retain(|ss| !ss.spans.is_empty());
        }
        request
            .resource_spans
            .retain(|rs| !rs.scope_spans.is_empty());
        let spans = accepted - critical_spans;
        Ok(Some(Shed {
            lane,
            reason,
            spans,
            message: format!(
                "shed {spans} span(s) of {} traffic under pressure ({what} at {:.0}% of its budget): only traces with errors, critical services or synthetic probes were kept; the shed spans are not stored",
                lane.as_str(),
                pressure * 100.0
            ),
        }))
    }

    /// Refreshes the gauges that mirror WAL state; called before each scrape.
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.wal_size_bytes.set(self.wal.size_bytes() as i64);
        m.wal_max_bytes.set(self.wal.options().max_bytes as i64);
        m.wal_committed_seq.set(self.wal.committed_seq() as i64);
        m.wal_failed.set(i64::from(self.wal.failure().is_some()));
    }
}

/// The pressure from which a request of `lane` is shed (a critical hint counts as normal:
/// criticality is decided per trace).
fn shed_from(lane: Lane) -> f64 {
    if lane == Lane::Bulk {
        SHED_BULK_AT
    } else {
        SHED_NORMAL_AT
    }
}

/// The trace ids of a request's spans (repeats included; ids of another length, which
/// validation refuses, left out).
fn trace_ids(request: &ExportTraceServiceRequest) -> impl Iterator<Item = TraceId> + '_ {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter_map(|sp| TraceId::try_from(sp.trace_id.as_slice()).ok())
}
