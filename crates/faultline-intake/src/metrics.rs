//! Prometheus metrics of intake and the WAL, served as text on `GET /metrics`.
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
//! - `store_head_spans`, `store_blocks`, `store_block_bytes`, `store_block_spans`,
//!   `store_indexed_seq`, `store_undecodable_records`, `store_seal_failing`,
//!   `dlq_records`, `dlq_moved`, `backlog_spans`, `backlog_replayed_spans`,
//!   `backlog_ranges`: the store,
//!   the dead letters and the WAL backlog replayed behind live data, set by the binary
//!   before each scrape.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use faultline_wal::WalObserver;

use crate::envelope::Protocol;

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

/// All metrics of one faultline process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<ProtocolOutcome, Counter>,
    spans: Family<ProtocolOutcome, Counter>,
    bytes: Family<ProtocolLabel, Counter>,
    shed: Family<LaneReason, Counter>,
    ack_seconds: Histogram,
    fsync_seconds: Histogram,
    write_seconds: Histogram,
    batch_records: Histogram,
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
    /// Spans in the store's head (in memory, not yet in a block).
    pub store_head_spans: Gauge,
    /// Blocks in the store.
    pub store_blocks: Gauge,
    /// Bytes of the store's blocks.
    pub store_block_bytes: Gauge,
    /// Spans in the store's blocks.
    pub store_block_spans: Gauge,
    /// WAL records decoded into the store.
    pub store_indexed_seq: Gauge,
    /// WAL records the pipeline could not decode.
    pub store_undecodable_records: Gauge,
    /// 1 while sealing blocks fails.
    pub store_seal_failing: Gauge,
    /// Dead letters on disk (`faultline dlq list`).
    pub dlq_records: Gauge,
    /// WAL records moved to the dead letters since start.
    pub dlq_moved: Gauge,
    /// Spans of the WAL backlog not yet replayed.
    pub backlog_spans: Gauge,
    /// Backlog spans replayed since start.
    pub backlog_replayed_spans: Gauge,
    /// Backlog ranges not yet replayed (0: no backlog).
    pub backlog_ranges: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("faultline");
        let requests = Family::<ProtocolOutcome, Counter>::default();
        let spans = Family::<ProtocolOutcome, Counter>::default();
        let bytes = Family::<ProtocolLabel, Counter>::default();
        let shed = Family::<LaneReason, Counter>::default();
        registry.register(
            "intake_shed_spans",
            "Spans refused (retryably) to keep room for more important lanes, by lane and reason",
            shed.clone(),
        );
        let latency = || Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let ack_seconds = latency();
        let fsync_seconds = latency();
        let write_seconds = latency();
        let batch_records = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "intake_requests",
            "Intake requests by protocol and outcome",
            requests.clone(),
        );
        registry.register(
            "intake_spans",
            "Spans by protocol and outcome",
            spans.clone(),
        );
        registry.register(
            "intake_bytes",
            "Request body bytes received, as sent",
            bytes.clone(),
        );
        registry.register(
            "wal_append_seconds",
            "Time from WAL submission to acknowledgement",
            ack_seconds.clone(),
        );
        registry.register(
            "wal_fsync_seconds",
            "fdatasync latency per group commit",
            fsync_seconds.clone(),
        );
        registry.register(
            "wal_write_seconds",
            "write latency per group commit",
            write_seconds.clone(),
        );
        registry.register(
            "wal_batch_records",
            "Records per group commit",
            batch_records.clone(),
        );
        let m = Self {
            wal_size_bytes: Gauge::default(),
            wal_max_bytes: Gauge::default(),
            wal_committed_seq: Gauge::default(),
            wal_failed: Gauge::default(),
            wal_quarantined_segments: Gauge::default(),
            wal_truncated_bytes: Gauge::default(),
            store_head_spans: Gauge::default(),
            store_blocks: Gauge::default(),
            store_block_bytes: Gauge::default(),
            store_block_spans: Gauge::default(),
            store_indexed_seq: Gauge::default(),
            store_undecodable_records: Gauge::default(),
            store_seal_failing: Gauge::default(),
            dlq_records: Gauge::default(),
            dlq_moved: Gauge::default(),
            backlog_spans: Gauge::default(),
            backlog_replayed_spans: Gauge::default(),
            backlog_ranges: Gauge::default(),
            registry,
            requests,
            spans,
            bytes,
            shed,
            ack_seconds,
            fsync_seconds,
            write_seconds,
            batch_records,
        };
        let mut m = m;
        let gauges = [
            (
                "wal_size_bytes",
                "Total size of WAL segments",
                m.wal_size_bytes.clone(),
            ),
            (
                "wal_max_bytes",
                "WAL budget (wal.max_bytes)",
                m.wal_max_bytes.clone(),
            ),
            (
                "wal_committed_seq",
                "Highest acknowledged WAL sequence number",
                m.wal_committed_seq.clone(),
            ),
            (
                "wal_failed",
                "1 once the WAL stopped accepting writes after an I/O error",
                m.wal_failed.clone(),
            ),
            (
                "wal_quarantined_segments",
                "WAL segments moved to quarantine at start-up",
                m.wal_quarantined_segments.clone(),
            ),
            (
                "wal_truncated_bytes",
                "Bytes cut from a torn WAL tail at start-up",
                m.wal_truncated_bytes.clone(),
            ),
        ];
        let store_gauges = [
            (
                "store_head_spans",
                "Spans in memory, not yet in a block",
                m.store_head_spans.clone(),
            ),
            (
                "store_blocks",
                "Blocks in the store",
                m.store_blocks.clone(),
            ),
            (
                "store_block_bytes",
                "Bytes of the store's blocks",
                m.store_block_bytes.clone(),
            ),
            (
                "store_block_spans",
                "Spans in the store's blocks",
                m.store_block_spans.clone(),
            ),
            (
                "store_indexed_seq",
                "Highest WAL sequence number indexed by the store",
                m.store_indexed_seq.clone(),
            ),
            (
                "store_undecodable_records",
                "WAL records the store pipeline could not decode",
                m.store_undecodable_records.clone(),
            ),
            (
                "store_seal_failing",
                "1 while sealing blocks fails",
                m.store_seal_failing.clone(),
            ),
            (
                "dlq_records",
                "Dead letters on disk (faultline dlq list)",
                m.dlq_records.clone(),
            ),
            (
                "dlq_moved",
                "WAL records moved to the dead letters since start",
                m.dlq_moved.clone(),
            ),
            (
                "backlog_spans",
                "Spans of the WAL backlog not yet replayed (live data is indexed first)",
                m.backlog_spans.clone(),
            ),
            (
                "backlog_replayed_spans",
                "Backlog spans replayed since start",
                m.backlog_replayed_spans.clone(),
            ),
            (
                "backlog_ranges",
                "WAL ranges deferred behind live data and not yet replayed (0: no backlog)",
                m.backlog_ranges.clone(),
            ),
        ];
        for (name, help, g) in gauges.into_iter().chain(store_gauges) {
            m.registry.register(name, help, g);
        }
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
        self.ack_seconds.observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Feeds WAL group-commit timings into [`Metrics`].
#[derive(Debug)]
pub struct MetricsObserver(pub Arc<Metrics>);

impl WalObserver for MetricsObserver {
    fn batch(&self, records: usize, _bytes: u64, write: Duration, sync: Duration) {
        self.0.write_seconds.observe(write.as_secs_f64());
        if !sync.is_zero() {
            self.0.fsync_seconds.observe(sync.as_secs_f64());
        }
        self.0.batch_records.observe(records as f64);
    }
}
