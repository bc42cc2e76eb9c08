//! Prometheus metrics of the store and the pipeline, registered into the process's
//! registry and set from [`PipelineView`] before each scrape (names prefixed `faultline_`):
//!
//! - `store_head_spans`, `store_blocks`, `store_block_bytes`, `store_block_spans`,
//!   `store_indexed_seq`: the store;
//! - `store_index_bytes`, `store_index_loads`, `store_index_evictions`: the search
//!   indexes in memory (within `store.max_index_bytes`), read back and evicted since start;
//! - `store_undecodable_records`, `store_seal_failing`: what went wrong;
//! - `dlq_records`, `dlq_moved`: dead letters on disk, and moved since start;
//! - `backlog_spans`, `backlog_replayed_spans`, `backlog_ranges`: the WAL backlog
//!   replayed behind live data;
//! - `pending_trace_records`, `pending_overflowed_records`: (trace, WAL record) pairs
//!   acknowledged and not indexed yet, readable by id from the WAL
//!   (`faultline_model::pending`), and records not noted because that map was full.

use std::sync::atomic::Ordering;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::PipelineView;

/// The store's and the pipeline's gauges.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    store_head_spans: Gauge,
    store_blocks: Gauge,
    store_block_bytes: Gauge,
    store_block_spans: Gauge,
    store_indexed_seq: Gauge,
    store_index_bytes: Gauge,
    store_index_loads: Gauge,
    store_index_evictions: Gauge,
    store_undecodable_records: Gauge,
    store_seal_failing: Gauge,
    dlq_records: Gauge,
    dlq_moved: Gauge,
    backlog_spans: Gauge,
    backlog_replayed_spans: Gauge,
    backlog_ranges: Gauge,
    pending_trace_records: Gauge,
    pending_overflowed_records: Gauge,
}

impl PipelineMetrics {
    /// Creates the gauges and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let gauges = [
            (
                "store_head_spans",
                "Spans in memory, not yet in a block",
                &m.store_head_spans,
            ),
            ("store_blocks", "Blocks in the store", &m.store_blocks),
            (
                "store_block_bytes",
                "Bytes of the store's blocks",
                &m.store_block_bytes,
            ),
            (
                "store_block_spans",
                "Spans in the store's blocks",
                &m.store_block_spans,
            ),
            (
                "store_indexed_seq",
                "Highest WAL sequence number indexed by the store",
                &m.store_indexed_seq,
            ),
            (
                "store_index_bytes",
                "Bytes of search indexes in memory (at most store.max_index_bytes)",
                &m.store_index_bytes,
            ),
            (
                "store_index_loads",
                "Search indexes read back from disk for a search since start",
                &m.store_index_loads,
            ),
            (
                "store_index_evictions",
                "Search indexes dropped from memory for store.max_index_bytes since start",
                &m.store_index_evictions,
            ),
            (
                "store_undecodable_records",
                "WAL records the store pipeline could not decode",
                &m.store_undecodable_records,
            ),
            (
                "store_seal_failing",
                "1 while sealing blocks fails",
                &m.store_seal_failing,
            ),
            (
                "dlq_records",
                "Dead letters on disk (faultline dlq list)",
                &m.dlq_records,
            ),
            (
                "dlq_moved",
                "WAL records moved to the dead letters since start",
                &m.dlq_moved,
            ),
            (
                "backlog_spans",
                "Spans of the WAL backlog not yet replayed (live data is indexed first)",
                &m.backlog_spans,
            ),
            (
                "backlog_replayed_spans",
                "Backlog spans replayed since start",
                &m.backlog_replayed_spans,
            ),
            (
                "backlog_ranges",
                "WAL ranges deferred behind live data and not yet replayed (0: no backlog)",
                &m.backlog_ranges,
            ),
            (
                "pending_trace_records",
                "(trace, WAL record) pairs acknowledged but not indexed yet, readable by id from the WAL",
                &m.pending_trace_records,
            ),
            (
                "pending_overflowed_records",
                "WAL records not noted for reads before indexing because the map was full (their traces wait for indexing)",
                &m.pending_overflowed_records,
            ),
        ];
        for (name, help, g) in gauges {
            registry.register(name, help, g.clone());
        }
        m
    }

    /// Sets every gauge from the pipeline and the store. Blocking (counts the dead-letter
    /// files): call it off the async executor.
    pub fn refresh(&self, view: &PipelineView) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let blocks = view.store.blocks();
        self.store_head_spans.set(g(view.store.head_spans() as u64));
        self.store_blocks.set(g(blocks.len() as u64));
        self.store_block_bytes
            .set(g(blocks.iter().map(|b| b.bytes).sum()));
        self.store_block_spans
            .set(g(blocks.iter().map(|b| b.spans).sum()));
        self.store_indexed_seq.set(g(view.store.ingested_seq()));
        let ix = view.store.index_cache();
        self.store_index_bytes.set(g(ix.bytes));
        self.store_index_loads.set(g(ix.loads));
        self.store_index_evictions.set(g(ix.evictions));
        let st = view.stats();
        self.store_undecodable_records
            .set(g(st.undecodable.load(Ordering::Relaxed)));
        self.store_seal_failing
            .set(i64::from(st.seal_failing.load(Ordering::Relaxed)));
        self.dlq_records
            .set(g(crate::dlq::count(view.dlq_dir()) as u64));
        self.dlq_moved
            .set(g(st.dead_letters.load(Ordering::Relaxed)));
        let b = &st.backlog;
        self.backlog_spans.set(g(b.spans.load(Ordering::Relaxed)));
        self.backlog_replayed_spans
            .set(g(b.replayed_spans.load(Ordering::Relaxed)));
        self.backlog_ranges.set(g(b.ranges.load(Ordering::Relaxed)));
        self.pending_trace_records.set(g(view.pending.len() as u64));
        self.pending_overflowed_records
            .set(g(view.pending.overflowed()));
    }
}
