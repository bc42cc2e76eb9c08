//! The tail-sampling pass ([`Store::tail_sample`]): the oldest undecided block sealed at
//! least the policy's wait ago is decided trace by trace (`crate::tail`), rewritten
//! without the dropped traces beside its record, and swapped in the manifest, as
//! compaction swaps blocks (`Store::replace_blocks`). Also what the decisions add up to ([`Store::tail_report`]) and
//! whether a trace id was dropped ([`Store::dropped_by_policy`]).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use faultline_model::span::{Span, SpanKind, TraceId};

use super::{Sealed, SpanStore, Store, lock_err};
use crate::FaultPoint;
use crate::block;
use crate::error::StoreError;
use crate::manifest::BlockMeta;
use crate::rollup::Rollups;
use crate::skew;
use crate::tail::{self, Decision, TailPolicy, TailRecord, TailReport, TraceFacts};

/// A trace's root service, operation and span kind.
type Root = (String, String, SpanKind);

/// What the policy looks at in one trace: any error, the corrected duration, the root.
type Facts = (bool, u64, Option<Root>);

/// A block's spans grouped by trace, each trace's decision, and the record.
struct Judged {
    spans: Vec<Span>,
    groups: Vec<Range<usize>>,
    decisions: Vec<Decision>,
    record: TailRecord,
}

/// What one pass decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailPassed {
    /// The block decided.
    pub block: String,
    /// Its replacement (the same id when nothing was dropped).
    pub now: String,
    /// Traces kept and dropped.
    pub kept: u64,
    /// See `kept`.
    pub dropped: u64,
}

impl Store {
    /// Decides the oldest block sealed at least the policy's wait ago that tail sampling
    /// has not decided yet (one per call). Blocking. `None` when tail sampling is off or
    /// no block is due.
    pub fn tail_sample(&self, now_s: u64) -> Result<Option<TailPassed>, StoreError> {
        let Some(policy) = self.opts.tail.clone().filter(|p| p.enabled) else {
            return Ok(None);
        };
        let _one_at_a_time = self.seal_lock.lock().map_err(|_| lock_err())?;
        let wait = Duration::from_secs(policy.wait_secs);
        let (block, estimates) = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            let due = inner
                .blocks
                .iter()
                .find(|b| b.tail.get().is_none() && b.sealed_at.is_none_or(|t| t.elapsed() >= wait))
                .cloned();
            (due, inner.skew.current())
        };
        let Some(block) = block else {
            return Ok(None);
        };
        let judged = self.judge(&policy, &block, &estimates, now_s)?;
        let dropped = judged.record.dropped.len() as u64;
        let kept = judged.groups.len() as u64 - dropped;
        let old = block.meta.id.clone();
        let now = if dropped == 0 {
            self.mark_decided(&block, judged.record)?;
            old.clone()
        } else {
            self.rewrite(&block, judged, &estimates)?
        };
        Ok(Some(TailPassed {
            block: old,
            now,
            kept,
            dropped,
        }))
    }

    /// Every trace of `block` decided by `policy`.
    fn judge(
        &self,
        policy: &TailPolicy,
        block: &Sealed,
        estimates: &skew::Estimates,
        now_s: u64,
    ) -> Result<Judged, StoreError> {
        let mut spans = block.reader.all()?;
        spans.sort_by_key(|s| s.trace_id);
        let mut groups: Vec<Range<usize>> = Vec::new();
        let mut first = 0;
        for i in 1..=spans.len() {
            if i == spans.len() || spans[i].trace_id != spans[first].trace_id {
                groups.push(first..i);
                first = i;
            }
        }
        let facts = self.facts(&spans, &groups, estimates)?;
        // Each root operation's p99 over the last hour, from the rollups (every span).
        let p99: HashMap<Root, Option<u64>> = {
            let roots: HashSet<&Root> = facts.iter().filter_map(|f| f.2.as_ref()).collect();
            let inner = self.inner.read().map_err(|_| lock_err())?;
            roots
                .into_iter()
                .map(|r| {
                    let p = inner
                        .rollups()
                        .total(
                            &r.0,
                            Some(&r.1),
                            Some(r.2),
                            now_s.saturating_sub(3600),
                            now_s + 60,
                        )
                        .p99_ms
                        .map(|ms| (ms * 1e6) as u64);
                    (r.clone(), p)
                })
                .collect()
        };
        // First errors and slow traces; the rest, per root service, then share the rate
        // over the block's time range.
        let no_root = (String::new(), String::new(), SpanKind::Unspecified);
        let root_of = |f: &Facts| f.2.clone().unwrap_or_else(|| no_root.clone());
        let mut decisions: Vec<Decision> = groups
            .iter()
            .zip(&facts)
            .map(|(g, f)| {
                let facts = TraceFacts {
                    error: f.0,
                    duration_ns: f.1,
                    root_p99_ns: p99.get(&root_of(f)).copied().flatten(),
                    rest_share: 0.0,
                };
                tail::decide(policy, &spans[g.start].trace_id, &facts)
            })
            .collect();
        let mut rest: HashMap<String, usize> = HashMap::new();
        for (f, d) in facts.iter().zip(&decisions) {
            if *d == Decision::Dropped {
                *rest.entry(root_of(f).0).or_default() += 1;
            }
        }
        let secs = block
            .meta
            .max_end_ns
            .saturating_sub(block.meta.min_start_ns) as f64
            / 1e9;
        let mut record = TailRecord {
            version: 1,
            decided_at_s: now_s,
            ..TailRecord::default()
        };
        for ((g, f), d) in groups.iter().zip(&facts).zip(decisions.iter_mut()) {
            let root = root_of(f);
            if *d == Decision::Dropped {
                let facts = TraceFacts {
                    error: false,
                    duration_ns: 0,
                    root_p99_ns: None,
                    rest_share: tail::rest_share(policy, rest[&root.0], secs),
                };
                *d = tail::decide(policy, &spans[g.start].trace_id, &facts);
            }
            record
                .services
                .entry(root.0)
                .or_default()
                .count(*d, g.len() as u64);
            if !d.keeps() {
                record
                    .dropped
                    .push(faultline_model::hex(&spans[g.start].trace_id));
            }
        }
        record.dropped.sort();
        Ok(Judged {
            spans,
            groups,
            decisions,
            record,
        })
    }

    /// Per trace (rows `groups` of `spans`): any error, the corrected duration, the root.
    /// Traces with spans elsewhere too are judged whole.
    fn facts(
        &self,
        spans: &[Span],
        groups: &[Range<usize>],
        estimates: &skew::Estimates,
    ) -> Result<Vec<Facts>, StoreError> {
        let split: Vec<TraceId> = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            groups
                .iter()
                .map(|g| spans[g.start].trace_id)
                .filter(|id| inner.split.contains(id))
                .collect()
        };
        let whole: HashMap<TraceId, Vec<Span>> = split
            .iter()
            .copied()
            .zip(self.traces(&split)?.into_iter().map(|a| a.spans))
            .collect();
        let skewed = skew::skewed_services(estimates);
        Ok(groups
            .iter()
            .map(|g| {
                let refs: Vec<&Span> = match whole.get(&spans[g.start].trace_id) {
                    Some(w) if !w.is_empty() => w.iter().collect(),
                    _ => spans[g.clone()].iter().collect(),
                };
                let shifts = skew::may_move(refs.iter().copied(), &skewed)
                    .then(|| skew::shifts(&refs, estimates));
                let (mut start, mut end) = (u64::MAX, 0u64);
                for (i, s) in refs.iter().enumerate() {
                    let d = shifts.as_ref().map_or(0, |v| v[i]);
                    start = start.min(s.start_ns.saturating_add_signed(d));
                    end = end.max(s.end_ns.max(s.start_ns).saturating_add_signed(d));
                }
                (
                    refs.iter().any(|s| s.is_error()),
                    end.saturating_sub(start),
                    tail::root(&refs),
                )
            })
            .collect())
    }

    /// Nothing dropped: the record says the block is decided, and the manifest too.
    fn mark_decided(&self, block: &Sealed, record: TailRecord) -> Result<(), StoreError> {
        let dir = &self.opts.dir;
        let record_bytes = record.write(dir, &block.meta.id)?;
        block::sync_dir(dir)?;
        let mut next = self.inner.read().map_err(|_| lock_err())?.manifest.clone();
        if let Some(m) = next.blocks.iter_mut().find(|m| m.id == block.meta.id) {
            m.tail_decided = true;
            m.bytes += record_bytes;
        }
        next.store(dir)?;
        let mut inner = self.inner.write().map_err(|_| lock_err())?;
        inner.manifest = next;
        let _ = block.tail.set(Arc::new(record));
        Ok(())
    }

    /// Writes the kept traces of `block` as a new block with the record, swaps it in the
    /// manifest and deletes the old files; returns the new id.
    fn rewrite(
        &self,
        block: &Arc<Sealed>,
        judged: Judged,
        estimates: &skew::Estimates,
    ) -> Result<String, StoreError> {
        let dir = &self.opts.dir;
        let old = block.meta.id.clone();
        let Judged {
            spans,
            groups,
            decisions,
            record,
        } = judged;
        let kept_spans: Vec<Span> = groups
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| d.keeps())
            .flat_map(|(g, _)| spans[g.clone()].iter().cloned())
            .collect();
        let id = self.unused_id(&format!("{old}t"))?;
        let (written, index) = block::write_block_indexed(dir, &id, &kept_spans, estimates, None)?;
        // The rollups stay as they were: they counted every span.
        Rollups::read_file(dir, &old)?.write_file(dir, &id)?;
        // The record counts: it holds the dropped ids.
        let record_bytes = record.write(dir, &id)?;
        block::sync_dir(dir)?;
        self.opts.fault(FaultPoint::TailBeforeManifest)?;
        let meta = BlockMeta {
            id: id.clone(),
            spans: written.spans,
            traces: written.traces,
            min_start_ns: written.min_start_ns,
            max_end_ns: written.max_end_ns,
            bytes: written.bytes + record_bytes,
            source_seq: block.meta.source_seq,
            services: block.meta.services.clone(),
            tail_decided: true,
        };
        self.replace_blocks(
            std::slice::from_ref(block),
            super::retention::Replacement {
                meta,
                index,
                services: block.services.clone(),
                sealed_at: block.sealed_at,
                record: Some(record),
            },
        )?;
        Ok(id)
    }

    /// The decisions of every stored block, summed by root service, with the policy.
    pub fn tail_report(&self) -> Result<TailReport, StoreError> {
        let inner = self.inner.read().map_err(|_| lock_err())?;
        let mut report = TailReport {
            policy: self.opts.tail.clone().filter(|p| p.enabled),
            ..TailReport::default()
        };
        for b in &inner.blocks {
            match b.tail.get() {
                Some(r) => {
                    report.blocks_decided += 1;
                    for (s, d) in &r.services {
                        report.services.entry(s.clone()).or_default().merge(d);
                    }
                }
                None => report.blocks_waiting += 1,
            }
        }
        if report.policy.is_none() {
            report.blocks_waiting = 0;
        }
        Ok(report)
    }

    /// The traces tail sampling dropped in decisions made at or after `since_s` (Unix
    /// seconds), with when, from the blocks still stored: what a ClickHouse node's
    /// writer sends on so that every node answers them as dropped.
    pub fn tail_dropped_since(&self, since_s: u64) -> Vec<(TraceId, u64)> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for r in inner.blocks.iter().filter_map(|b| b.tail.get()) {
            if r.decided_at_s < since_s {
                continue;
            }
            out.extend(
                r.dropped
                    .iter()
                    .filter_map(|hex| crate::block::unhex::<16>(hex))
                    .map(|id| (id, r.decided_at_s)),
            );
        }
        out
    }

    /// When trace `id` was dropped by tail sampling (Unix seconds), if it was and its
    /// block is still stored.
    pub fn dropped_by_policy(&self, id: &TraceId) -> Option<u64> {
        let hex = faultline_model::hex(id);
        let inner = self.inner.read().ok()?;
        inner
            .blocks
            .iter()
            .filter_map(|b| b.tail.get())
            .find(|r| r.dropped(&hex))
            .map(|r| r.decided_at_s)
    }
}
