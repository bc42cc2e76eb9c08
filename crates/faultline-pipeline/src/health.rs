//! The pipeline's parts of the status report, each judged by one rule:
//!
//! | part | ok | degraded | failed |
//! |---|---|---|---|
//! | `indexing` | at most [`BEHIND_RECORDS`] records behind, indexes loaded | more behind, or search indexes still loading | — |
//! | `backlog` | no range pending | a range pending (answers it can touch are partial) | — |
//! | `sealing` | the last seal succeeded | the last seal failed (retried with backoff; the WAL keeps everything) | — |
//! | `dead letters` | none on disk | any on disk (their spans are not indexed) | — |
//!
//! None of them is `failed`: the pipeline never refuses anything itself; when it falls
//! behind, the WAL fills and intake's `wal` and `lanes` parts say so.

use std::path::Path;
use std::sync::atomic::Ordering;

use faultline_model::health::{Component, Health};
use serde_json::json;

use crate::{BacklogStats, PipelineView};

/// Records not yet indexed beyond which `indexing` is degraded.
pub const BEHIND_RECORDS: u64 = 100;

/// Facts the `indexing` rule judges.
#[derive(Debug, Clone, Default)]
pub struct IndexingFacts {
    /// Highest acknowledged WAL record.
    pub committed_seq: u64,
    /// Highest record indexed (every record up to it is indexed or in the backlog).
    pub indexed_seq: u64,
    /// Records that could not be decoded since start (they are dead letters).
    pub undecodable: u64,
    /// Blocks whose search index is still loading after a restart.
    pub indexes_loading: usize,
    /// Spans in the store's head.
    pub head_spans: usize,
}

/// `indexing`: how far the store is behind the WAL.
pub fn indexing(f: &IndexingFacts) -> Component {
    let behind = f.committed_seq.saturating_sub(f.indexed_seq);
    let c = if behind > BEHIND_RECORDS {
        Component::new(
            "indexing",
            Health::Degraded,
            format!("{behind} acknowledged records are not yet indexed; answers say they are partial"),
        )
        .action("indexing catches up by itself; if it does not, the load is above what this machine indexes (see BENCHMARKS.md)")
    } else if f.indexes_loading > 0 {
        Component::new(
            "indexing",
            Health::Degraded,
            format!(
                "search indexes of {} blocks are still loading after a restart",
                f.indexes_loading
            ),
        )
    } else {
        Component::new("indexing", Health::Ok, format!("{behind} records behind"))
    };
    c.details(json!({
        "committed_seq": f.committed_seq, "indexed_seq": f.indexed_seq,
        "records_behind": behind, "undecodable_records": f.undecodable,
        "search_indexes_loading": f.indexes_loading, "head_spans": f.head_spans,
    }))
}

/// `backlog`: acknowledged records replayed behind live data.
pub fn backlog(b: &BacklogStats) -> Component {
    let reason = b.reason();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let c = match reason {
        Some(r) => Component::new("backlog", Health::Degraded, r).action(
            "nothing to do: live data is indexed first and the backlog follows; raise store.backlog_spans_per_second (--backlog-rate) to replay faster",
        ),
        None => Component::new(
            "backlog",
            Health::Ok,
            format!("none; {} spans replayed since start", load(&b.replayed_spans)),
        ),
    };
    c.details(json!({
        "pending_spans": load(&b.spans),
        "pending_records": load(&b.records),
        "pending_ranges": load(&b.ranges),
        "oldest": match load(&b.oldest_ns) { 0 => None, ns => Some(faultline_model::rfc3339(ns)) },
        "replayed_spans": load(&b.replayed_spans),
        "rate_spans_per_second": load(&b.rate),
        "skips_to_live": load(&b.skips),
    }))
}

/// `sealing`: whether heads become blocks.
pub fn sealing(error: Option<&str>, blocks_sealed: u64) -> Component {
    let c = match error {
        Some(e) => Component::new(
            "sealing",
            Health::Degraded,
            format!("sealing blocks fails: {e}; the WAL keeps accepting within wal.max_bytes"),
        )
        .action(
            "free disk space or fix permissions on DATA_DIR/blocks; sealing retries with backoff",
        ),
        None => Component::new(
            "sealing",
            Health::Ok,
            format!("{blocks_sealed} blocks sealed since start"),
        ),
    };
    c.details(json!({"failing": error.is_some(), "error": error, "blocks_sealed": blocks_sealed}))
}

/// `dead letters`: records set aside because processing them failed.
pub fn dead_letters(on_disk: usize, moved_since_start: u64, dir: &Path) -> Component {
    let c = if on_disk == 0 {
        Component::new("dead letters", Health::Ok, "none")
    } else {
        Component::new(
            "dead letters",
            Health::Degraded,
            format!("{on_disk} WAL records could not be processed and were set aside; their spans are not indexed"),
        )
        .action("`faultline dlq list DATA_DIR` shows why; after a fix `faultline dlq replay --all`, or `faultline dlq drop DATA_DIR --all`")
    };
    c.details(json!({"records": on_disk, "moved_since_start": moved_since_start, "dir": dir.display().to_string()}))
}

impl PipelineView {
    /// The pipeline's parts, judged now. Blocking (counts the dead-letter files).
    pub fn health(&self) -> Vec<Component> {
        let st = self.stats();
        let facts = IndexingFacts {
            committed_seq: self.wal.committed_seq(),
            indexed_seq: self.store.ingested_seq(),
            undecodable: st.undecodable.load(Ordering::Relaxed),
            indexes_loading: self.store.indexes_loading(),
            head_spans: self.store.head_spans(),
        };
        let error = if st.seal_failing.load(Ordering::Relaxed) {
            Some(st.seal_error().unwrap_or_else(|| "see the log".into()))
        } else {
            None
        };
        vec![
            indexing(&facts),
            backlog(&st.backlog),
            sealing(error.as_deref(), st.blocks.load(Ordering::Relaxed)),
            dead_letters(
                crate::dlq::count(self.dlq_dir()),
                st.dead_letters.load(Ordering::Relaxed),
                self.dlq_dir(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexing_is_degraded_past_the_threshold_or_while_indexes_load() {
        let at = |behind: u64, loading: usize| {
            indexing(&IndexingFacts {
                committed_seq: 1_000 + behind,
                indexed_seq: 1_000,
                indexes_loading: loading,
                ..IndexingFacts::default()
            })
        };
        assert_eq!(at(0, 0).health, Health::Ok);
        assert_eq!(at(BEHIND_RECORDS, 0).health, Health::Ok);
        let behind = at(BEHIND_RECORDS + 1, 0);
        assert_eq!(behind.health, Health::Degraded);
        assert!(behind.summary.contains("101 acknowledged records"));
        assert!(behind.action.is_some());
        let loading = at(0, 3);
        assert_eq!(loading.health, Health::Degraded);
        assert!(loading.summary.contains("3 blocks"));
        assert_eq!(loading.details["records_behind"], 0);
    }

    #[test]
    fn a_pending_backlog_is_degraded_and_named() {
        let b = BacklogStats::default();
        b.replayed_spans.store(7, Ordering::Relaxed);
        let idle = backlog(&b);
        assert_eq!(idle.health, Health::Ok);
        assert!(idle.summary.contains("7 spans replayed"));
        b.ranges.store(1, Ordering::Relaxed);
        b.spans.store(500, Ordering::Relaxed);
        b.oldest_ns.store(1_000_000_000, Ordering::Relaxed);
        let pending = backlog(&b);
        assert_eq!(pending.health, Health::Degraded);
        assert!(
            pending.summary.contains("500 acknowledged spans"),
            "{}",
            pending.summary
        );
        assert_eq!(pending.details["oldest"], "1970-01-01T00:00:01.000Z");
    }

    #[test]
    fn a_failing_seal_is_degraded_with_its_error() {
        assert_eq!(sealing(None, 4).health, Health::Ok);
        let failing = sealing(Some("No space left on device (os error 28)"), 4);
        assert_eq!(failing.health, Health::Degraded);
        assert!(failing.summary.contains("No space left"));
        assert_eq!(failing.details["failing"], true);
    }

    #[test]
    fn dead_letters_on_disk_are_degraded() {
        let dir = Path::new("/data/dlq");
        assert_eq!(dead_letters(0, 0, dir).health, Health::Ok);
        let some = dead_letters(2, 2, dir);
        assert_eq!(some.health, Health::Degraded);
        assert!(some.summary.starts_with("2 WAL records"));
        assert!(
            some.action
                .as_deref()
                .is_some_and(|a| a.contains("dlq replay"))
        );
    }
}
