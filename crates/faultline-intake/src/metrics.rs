//! Prometheus metrics of intake and the WAL. They register into the process's registry
//! (the binary owns it and serves it on `GET /metrics`; the pipeline registers its own).
//!
//! Names (all prefixed `faultline_`):
//! - `intake_requests_total{protocol,outcome}`: requests by outcome (`accepted`,
//!   `partial`, `invalid`, `too_large`, `unsupported`, `refused`, `failed`).
//! - `intake_spans_total{protocol,outcome}`: spans `accepted`, `rejected` (invalid) or
//!   `refused` (not acknowledged because of a budget or failure).
//! - `intake_bytes_total{protocol}`: request body bytes received (as sent, before gunzip).
//! - `wal_append_seconds`: time from handing a request's record to the WAL to its
//!   acknowledgement (queueing, write and fsync).
//! - `wal_fsync_seconds`, `wal_write_seconds`, `wal_batch_records`: per group commit.
//! - `intake_shed_spans{lane, reason}`: spans refused (retryably) under pressure to keep
//!   room for more important lanes (see `admission.rs`).
//! - `wal_size_bytes`, `wal_max_bytes`, `wal_committed_seq`, `wal_failed`,
//!   `wal_quarantined_segments`, `wal_truncated_bytes`: state of the log.
//!
//! The WAL gauges are set from the WAL before each scrape (`Intake::refresh_gauges`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use faultline_wal::WalObserver;

use faultline_model::envelope::Protocol;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolOutcome {
    protocol: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneReason {
    lane: &'static str,
    reason: &'static str,
}

/// Intake's and the WAL's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Family<ProtocolOutcome, Counter>,
    spans: Family<ProtocolOutcome, Counter>,
    bytes: Family<ProtocolLabel, Counter>,
    shed: Family<LaneReason, Counter>,
    ack_seconds: Latency,
    fsync_seconds: Latency,
    write_seconds: Latency,
    batch_records: BatchRecords,
    /// WAL size in bytes.
    pub wal_size_bytes: Gauge,
    /// WAL budget in bytes.
    pub wal_max_bytes: Gauge,
    /// Highest acknowledged WAL sequence number.
    pub wal_committed_seq: Gauge,
    /// 1 once the WAL stopped accepting writes.
    pub wal_failed: Gauge,
    /// Segments moved to quarantine at start-up.
    pub wal_quarantined_segments: Gauge,
    /// Bytes cut from a torn tail at start-up.
    pub wal_truncated_bytes: Gauge,
}

/// A latency histogram from 50 µs doubling over 18 buckets.
#[derive(Debug, Clone)]
struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.000_05, 2.0, 18)))
    }
}

/// Records per group commit, from 1 doubling over 14 buckets.
#[derive(Debug, Clone)]
struct BatchRecords(Histogram);

impl Default for BatchRecords {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(1.0, 2.0, 14)))
    }
}

impl Metrics {
    /// Creates every metric and registers it in `registry` (prefix it with `faultline`).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        m.register(registry);
        // Pre-create the common series so dashboards see zeros, not gaps.
        for p in Protocol::ALL {
            let _ = m.bytes.get_or_create(&ProtocolLabel {
                protocol: p.as_str(),
            });
            for outcome in ["accepted", "rejected", "refused"] {
                let _ = m.spans.get_or_create(&ProtocolOutcome {
                    protocol: p.as_str(),
                    outcome,
                });
            }
            let _ = m.requests.get_or_create(&ProtocolOutcome {
                protocol: p.as_str(),
                outcome: "accepted",
            });
        }
        m
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "intake_shed_spans",
            "Spans refused (retryably) to keep room for more important lanes, by lane and reason",
            self.shed.clone(),
        );
        r.register(
            "intake_requests",
            "Intake requests by protocol and outcome",
            self.requests.clone(),
        );
        r.register(
            "intake_spans",
            "Spans by protocol and outcome",
            self.spans.clone(),
        );
        r.register(
            "intake_bytes",
            "Request body bytes received, as sent",
            self.bytes.clone(),
        );
        r.register(
            "wal_append_seconds",
            "Time from WAL submission to acknowledgement",
            self.ack_seconds.0.clone(),
        );
        r.register(
            "wal_fsync_seconds",
            "fdatasync latency per group commit",
            self.fsync_seconds.0.clone(),
        );
        r.register(
            "wal_write_seconds",
            "write latency per group commit",
            self.write_seconds.0.clone(),
        );
        r.register(
            "wal_batch_records",
            "Records per group commit",
            self.batch_records.0.clone(),
        );
        let gauges = [
            (
                "wal_size_bytes",
                "Total size of WAL segments",
                &self.wal_size_bytes,
            ),
            (
                "wal_max_bytes",
                "WAL budget (wal.max_bytes)",
                &self.wal_max_bytes,
            ),
            (
                "wal_committed_seq",
                "Highest acknowledged WAL sequence number",
                &self.wal_committed_seq,
            ),
            (
                "wal_failed",
                "1 once the WAL stopped accepting writes after an I/O error",
                &self.wal_failed,
            ),
            (
                "wal_quarantined_segments",
                "WAL segments moved to quarantine at start-up",
                &self.wal_quarantined_segments,
            ),
            (
                "wal_truncated_bytes",
                "Bytes cut from a torn WAL tail at start-up",
                &self.wal_truncated_bytes,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
    }

    /// Counts one request and its spans.
    pub fn request(&self, protocol: Protocol, outcome: &'static str, body_bytes: usize) {
        let p = protocol.as_str();
        self.requests
            .get_or_create(&ProtocolOutcome {
                protocol: p,
                outcome,
            })
            .inc();
        self.bytes
            .get_or_create(&ProtocolLabel { protocol: p })
            .inc_by(body_bytes as u64);
    }

    /// Counts spans by outcome (`accepted`, `rejected`, `refused`).
    pub fn spans(&self, protocol: Protocol, outcome: &'static str, n: u64) {
        if n > 0 {
            self.spans
                .get_or_create(&ProtocolOutcome {
                    protocol: protocol.as_str(),
                    outcome,
                })
                .inc_by(n);
        }
    }

    /// Counts spans shed from `lane` because of `reason` (`wal` or `inflight`).
    pub fn shed(&self, lane: &'static str, reason: &'static str, n: u64) {
        self.shed
            .get_or_create(&LaneReason { lane, reason })
            .inc_by(n);
    }

    /// Records the time a request waited for its WAL acknowledgement.
    pub fn ack_latency(&self, d: Duration) {
        self.ack_seconds.0.observe(d.as_secs_f64());
    }
}

/// Feeds WAL group-commit timings into [`Metrics`].
#[derive(Debug)]
pub struct MetricsObserver(pub Arc<Metrics>);

impl WalObserver for MetricsObserver {
    fn batch(&self, records: usize, _bytes: u64, write: Duration, sync: Duration) {
        self.0.write_seconds.0.observe(write.as_secs_f64());
        if !sync.is_zero() {
            self.0.fsync_seconds.0.observe(sync.as_secs_f64());
        }
        self.0.batch_records.0.observe(records as f64);
    }
}
