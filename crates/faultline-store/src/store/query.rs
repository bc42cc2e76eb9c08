//! Queries: the read trait [`SpanStore`] the API and the UI use, and the store's answers
//! from the head, the sealing heads and the blocks (trace by id, services, operations,
//! dependencies, RED, search), plus trace-id sampling for benchmarks.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use roaring::RoaringBitmap;

use faultline_model::span::{Span, SpanKind, TraceId};

use super::index_cache::Got;
use super::{Completeness, Sealed, Store, TraceAnswer, lock_err};
use crate::error::StoreError;
use crate::rollup::RedPoint;
use crate::search::{Agg, MAX_VERIFY_TRACES, SortOrder, TopK, TraceQuery, TraceSummary};

/// Read access to stored spans; the query layer depends on this trait only, so another
/// backend (ClickHouse) can stand behind it.
pub trait SpanStore: Send + Sync {
    /// One trace by id.
    fn trace(&self, trace_id: &TraceId) -> Result<TraceAnswer, StoreError>;
    /// Several traces by id, in the order asked (a store may read them together: the
    /// embedded store reads each block once for all of them).
    fn traces(&self, ids: &[TraceId]) -> Result<Vec<TraceAnswer>, StoreError> {
        ids.iter().map(|id| self.trace(id)).collect()
    }
    /// Services that emitted spans, sorted.
    fn services(&self) -> Result<(Vec<String>, Completeness), StoreError>;
    /// Operations of a service with their span kinds, sorted.
    fn operations(
        &self,
        service: &str,
    ) -> Result<(Vec<(String, SpanKind)>, Completeness), StoreError>;
    /// Service dependencies with calls in `[start_s, end_s)`.
    fn dependencies(
        &self,
        start_s: u64,
        end_s: u64,
    ) -> Result<(Vec<crate::rollup::Dependency>, Completeness), StoreError>;
    /// RED series of a service (and operation, and kind) over `[start_s, end_s)` in steps
    /// of `step_s` seconds (a multiple of 60).
    fn red(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
        step_s: u64,
    ) -> Result<(Vec<RedPoint>, Completeness), StoreError>;
    /// Summaries of the traces matching `q`, best first by `q.sort`, at most `q.limit`.
    fn search(&self, q: &TraceQuery) -> Result<(Vec<TraceSummary>, Completeness), StoreError>;
    /// RED figures of a service (and operation, and kind) over all of `[start_s, end_s)`.
    fn red_total(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
    ) -> Result<(RedPoint, Completeness), StoreError>;
    /// Span counts of a service (and operation) over `[start_s, end_s)` between the
    /// ascending latency bounds in milliseconds, plus a last count above them (see
    /// `Rollups::distribution`).
    fn latency_distribution(
        &self,
        service: &str,
        operation: Option<&str>,
        start_s: u64,
        end_s: u64,
        bounds_ms: &[f64],
    ) -> Result<(Vec<u64>, Completeness), StoreError>;
    /// Every clock's estimated offset (`crate::skew`); none when the store keeps no
    /// samples.
    fn clock_offsets(&self) -> std::sync::Arc<crate::skew::Estimates> {
        std::sync::Arc::default()
    }
    /// The tracing-health report (`crate::quality`); empty when the store keeps none.
    fn tracing_health(&self) -> Result<crate::quality::TracingHealth, StoreError> {
        Ok(crate::quality::TracingHealth::default())
    }
    /// What tail sampling decided (`crate::tail`); empty when the store does none.
    fn tail_sampling(&self) -> Result<crate::tail::TailReport, StoreError> {
        Ok(crate::tail::TailReport::default())
    }
    /// When tail sampling dropped trace `id` (Unix seconds), if it did.
    fn dropped_by_policy(&self, _id: &TraceId) -> Option<u64> {
        None
    }
    /// [`Self::trace`], and when it has no spans, [`Self::dropped_by_policy`].
    fn trace_or_dropped(&self, id: &TraceId) -> Result<(TraceAnswer, Option<u64>), StoreError> {
        let answer = self.trace(id)?;
        let dropped = answer
            .spans
            .is_empty()
            .then(|| self.dropped_by_policy(id))
            .flatten();
        Ok((answer, dropped))
    }
}

/// Sources at or above this in a [`TopK`] are head traces (see [`Head::search`]).
pub(crate) const HEAD: usize = usize::MAX / 2;
/// Sources at or above this are traces stored in several places.
const SPLIT: usize = usize::MAX / 4 * 3;

impl Store {
    /// Up to `n` trace ids spread evenly over the sealed blocks (for benchmarks and
    /// spot checks).
    pub fn sample_trace_ids(&self, n: usize) -> Vec<TraceId> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        let total: usize = inner.blocks.iter().map(|b| b.reader.traces()).sum();
        if total == 0 || n == 0 {
            return Vec::new();
        }
        let step = (total / n).max(1);
        let mut out = Vec::with_capacity(n);
        let mut k = step / 2;
        let mut base = 0;
        for b in &inner.blocks {
            let len = b.reader.traces();
            while k < base + len && out.len() < n {
                if let Some(t) = b.reader.trace_id_at(k - base) {
                    out.push(t);
                }
                k += step;
            }
            base += len;
        }
        out
    }
}

impl SpanStore for Store {
    fn tail_sampling(&self) -> Result<crate::tail::TailReport, StoreError> {
        self.tail_report()
    }

    fn dropped_by_policy(&self, id: &TraceId) -> Option<u64> {
        Store::dropped_by_policy(self, id)
    }

    fn clock_offsets(&self) -> std::sync::Arc<crate::skew::Estimates> {
        match self.inner.read() {
            Ok(inner) => inner.skew.current(),
            Err(_) => std::sync::Arc::default(),
        }
    }

    fn tracing_health(&self) -> Result<crate::quality::TracingHealth, StoreError> {
        let (services, estimates, deps) = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            let now_s = super::head::unix_now_s();
            (
                inner.quality.services(),
                inner.skew.current(),
                inner
                    .rollups()
                    .dependencies(now_s.saturating_sub(3600), now_s + 60),
            )
        };
        Ok(crate::quality::report(services, &estimates, &deps))
    }

    fn trace(&self, trace_id: &TraceId) -> Result<TraceAnswer, StoreError> {
        let mut all = self.traces(std::slice::from_ref(trace_id))?;
        Ok(all.pop().unwrap_or(TraceAnswer {
            spans: Vec::new(),
            completeness: Completeness::default(),
        }))
    }

    fn traces(&self, ids: &[TraceId]) -> Result<Vec<TraceAnswer>, StoreError> {
        // Heads under the lock; blocks, each with the ids it holds, read outside it.
        let (mut spans, by_block, completeness) = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            let mut spans: Vec<Vec<Span>> = vec![Vec::new(); ids.len()];
            let mut by_block: Vec<(Arc<Sealed>, Vec<usize>)> = Vec::new();
            for (k, id) in ids.iter().enumerate() {
                inner.head.trace(id, &mut spans[k]);
                for h in &inner.sealing {
                    h.trace(id, &mut spans[k]);
                }
                let holders = inner
                    .locs
                    .get(id)
                    .iter()
                    .filter_map(|&s| inner.block_by_serial(s))
                    .filter(|b| b.reader.contains(id));
                for b in holders {
                    match by_block.iter_mut().find(|(x, _)| Arc::ptr_eq(x, b)) {
                        Some((_, ks)) => ks.push(k),
                        None => by_block.push((b.clone(), vec![k])),
                    }
                }
            }
            (spans, by_block, Self::completeness(&inner))
        };
        for (b, ks) in by_block {
            let wanted: Vec<TraceId> = ks.iter().map(|&k| ids[k]).collect();
            for (k, found) in ks.into_iter().zip(b.reader.read_traces(&wanted)?) {
                spans[k].extend(found);
            }
        }
        Ok(spans
            .into_iter()
            .map(|mut s| {
                s.sort_by_key(|s| s.start_ns);
                // A span can be in a sealing head and, once published, in its block too.
                let mut seen = BTreeSet::new();
                s.retain(|s| seen.insert(s.span_id));
                TraceAnswer {
                    spans: s,
                    completeness: completeness.clone(),
                }
            })
            .collect())
    }

    fn services(&self) -> Result<(Vec<String>, Completeness), StoreError> {
        let inner = self.inner.read().map_err(|_| lock_err())?;
        let mut all: BTreeSet<String> = inner.head.services.clone();
        for h in &inner.sealing {
            all.extend(h.services.iter().cloned());
        }
        for b in &inner.blocks {
            all.extend(b.services.iter().cloned());
        }
        Ok((all.into_iter().collect(), Self::completeness(&inner)))
    }

    fn operations(
        &self,
        service: &str,
    ) -> Result<(Vec<(String, SpanKind)>, Completeness), StoreError> {
        let inner = self.inner.read().map_err(|_| lock_err())?;
        Ok((
            inner.rollups().operations(service),
            Self::completeness(&inner),
        ))
    }

    fn dependencies(
        &self,
        start_s: u64,
        end_s: u64,
    ) -> Result<(Vec<crate::rollup::Dependency>, Completeness), StoreError> {
        let inner = self.inner.read().map_err(|_| lock_err())?;
        Ok((
            inner.rollups().dependencies(start_s, end_s),
            Self::completeness(&inner),
        ))
    }

    fn red(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
        step_s: u64,
    ) -> Result<(Vec<RedPoint>, Completeness), StoreError> {
        let inner = self.inner.read().map_err(|_| lock_err())?;
        let points = inner
            .rollups()
            .series(service, operation, kind, start_s, end_s, step_s);
        Ok((points, Self::completeness(&inner)))
    }

    fn red_total(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
    ) -> Result<(RedPoint, Completeness), StoreError> {
        let inner = self.inner.read().map_err(|_| lock_err())?;
        Ok((
            inner
                .rollups()
                .total(service, operation, kind, start_s, end_s),
            Self::completeness(&inner),
        ))
    }

    fn latency_distribution(
        &self,
        service: &str,
        operation: Option<&str>,
        start_s: u64,
        end_s: u64,
        bounds_ms: &[f64],
    ) -> Result<(Vec<u64>, Completeness), StoreError> {
        let inner = self.inner.read().map_err(|_| lock_err())?;
        Ok((
            inner
                .rollups()
                .distribution(service, operation, start_s, end_s, bounds_ms),
            Self::completeness(&inner),
        ))
    }

    fn search(&self, q: &TraceQuery) -> Result<(Vec<TraceSummary>, Completeness), StoreError> {
        let started = Instant::now();
        let mut q = q.clone();
        q.tags.truncate(crate::search::MAX_TAGS);
        let q = &q;
        let mut top = TopK::new(q.limit);
        let mut head_found = Vec::new();
        let mut agg: HashMap<TraceId, Agg> = HashMap::new();
        let estimates = self.clock_offsets();
        let (blocks, mut completeness) = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            let is_split = |id: &TraceId| inner.split.contains(id) || inner.in_heads(id) > 1;
            inner.head.search(
                q,
                &estimates,
                &mut top,
                &mut head_found,
                &mut agg,
                &is_split,
            );
            for h in &inner.sealing {
                h.search(
                    q,
                    &estimates,
                    &mut top,
                    &mut head_found,
                    &mut agg,
                    &is_split,
                );
            }
            let blocks: Vec<(Arc<Sealed>, RoaringBitmap)> = inner
                .blocks
                .iter()
                .map(|b| {
                    let split = b.split.lock().map(|s| s.clone()).unwrap_or_default();
                    (b.clone(), split)
                })
                .collect();
            (blocks, Self::completeness(&inner))
        };
        let mut budget = MAX_VERIFY_TRACES;
        let mut unverified = 0;
        let (mut loading, mut broken) = (0usize, Vec::new());
        let mut timed_out = 0usize;
        let ranges: Vec<(u64, u64)> = blocks
            .iter()
            .map(|(b, _)| (b.meta.min_start_ns, b.meta.max_end_ns))
            .collect();
        for bi in visit_order(q.sort, &ranges) {
            let (b, split) = &blocks[bi];
            if q.time_limit.is_some_and(|l| started.elapsed() >= l) {
                timed_out += 1;
                continue;
            }
            // Blocks outside the range hold no matching trace, except parts of split ones.
            if (b.meta.min_start_ns > q.end_ns || b.meta.max_end_ns < q.start_ns)
                && split.is_empty()
            {
                continue;
            }
            if split.is_empty() && out_of_reach(q, &b.meta, &top) {
                continue;
            }
            let index = match b.index.get(|| b.reader.load_index(&self.opts.dir)) {
                Got::Ready(i) => i,
                Got::Loading => {
                    loading += 1;
                    continue;
                }
                Got::Failed(e) => {
                    broken.push(format!("block {} is not searchable: {e}", b.meta.id));
                    continue;
                }
            };
            let reader = &b.reader;
            let mut verify = |t: usize| -> Result<Option<Vec<Span>>, StoreError> {
                match reader.trace_id_at(t) {
                    Some(id) => reader.trace(&id).map(Some),
                    None => Ok(None),
                }
            };
            let outcome = index.search(
                q,
                &mut top,
                bi,
                split,
                &mut agg,
                &|t| reader.trace_id_at(t),
                &mut budget,
                &mut verify,
            )?;
            unverified += outcome.unverified;
        }
        // Traces stored in several places, judged as a whole.
        let split_ids: Vec<TraceId> = agg
            .iter()
            .filter(|(_, a)| a.matches(q))
            .map(|(id, _)| *id)
            .collect();
        for (i, id) in split_ids.iter().enumerate() {
            if let Some(a) = agg.get(id) {
                top.push(q.sort.key(a.start_ns, a.end_ns), SPLIT + i, 0);
            }
        }
        if timed_out > 0 {
            completeness.reasons.push(format!(
                "the search stopped at its time limit of {} ms with {timed_out} of {} blocks not searched; narrow the time range or add filters",
                q.time_limit.map_or(0, |l| l.as_millis()),
                blocks.len()
            ));
        }
        if loading > 0 {
            completeness.reasons.push(format!(
                "the search indexes of {loading} blocks are still loading after a restart; their traces are not in this answer"
            ));
        }
        completeness.reasons.extend(broken);
        if unverified > 0 {
            completeness.reasons.push(format!(
                "{unverified} candidate traces were not checked because a searched tag is not indexed (its values are long, non-text or nearly unique) and one search checks at most {MAX_VERIFY_TRACES}; narrow the time range or add filters"
            ));
        }
        let mut out: Vec<TraceSummary> = Vec::new();
        for (_, source, t) in top.into_sorted() {
            let summary = if source >= SPLIT {
                match split_ids.get(source - SPLIT) {
                    Some(id) => {
                        let mut spans = self.trace(id)?.spans;
                        crate::skew::correct(&mut spans, &estimates);
                        TraceSummary::of(&spans)
                    }
                    None => None,
                }
            } else if source >= HEAD {
                head_found.get(source - HEAD).cloned()
            } else {
                blocks.get(source).and_then(|(b, _)| {
                    let Got::Ready(index) = b.index.get(|| b.reader.load_index(&self.opts.dir))
                    else {
                        return None;
                    };
                    b.reader
                        .trace_id_at(t as usize)
                        .map(|id| index.summary(t as usize, id))
                })
            };
            out.extend(summary);
        }
        Ok((out, completeness))
    }
}

/// Whether no trace of the block can enter a full top: ordered by start time, its traces
/// start within the block's bounds (which hold clock-corrected times too), so a block
/// whose bound ranks below the top's last is not read, nor its index loaded. Traces also
/// stored elsewhere (split) are judged whole and never skipped by this.
/// The order to search blocks in, given each one's (earliest start, latest end) in seal
/// order: for newest-first answers by their latest end
/// (descending), for oldest-first by their earliest start, so the top fills from the blocks
/// that can hold its traces and [`out_of_reach`] passes over the rest; otherwise newest
/// sealed first. Seal order is not time order: a backlog replayed behind live data (after
/// a burst or a restart) seals older traces into newer blocks, and visited in seal order
/// those filled the top with traces the live blocks then had to displace, one block at a
/// time.
fn visit_order(sort: SortOrder, ranges: &[(u64, u64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ranges.len()).rev().collect();
    match sort {
        SortOrder::Newest => order.sort_by_key(|&i| std::cmp::Reverse(ranges[i].1)),
        SortOrder::Oldest => order.sort_by_key(|&i| ranges[i].0),
        _ => {}
    }
    order
}

fn out_of_reach(q: &TraceQuery, meta: &crate::manifest::BlockMeta, top: &TopK) -> bool {
    let bound = match q.sort {
        SortOrder::Newest => q.sort.key(meta.max_end_ns, meta.max_end_ns),
        SortOrder::Oldest => q.sort.key(meta.min_start_ns, meta.min_start_ns),
        _ => return false,
    };
    !top.would_take(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks are searched by their time ranges, not in the order they were sealed: a
    /// backlog replayed behind live data seals older traces after newer ones.
    #[test]
    fn blocks_are_searched_in_time_order_not_seal_order() {
        // Seal order: live (100-200), replayed backlog (0-90), live (200-300), backlog
        // (90-100).
        let ranges = [(100, 200), (0, 90), (200, 300), (90, 100)];
        assert_eq!(visit_order(SortOrder::Newest, &ranges), vec![2, 0, 3, 1]);
        assert_eq!(visit_order(SortOrder::Oldest, &ranges), vec![1, 3, 0, 2]);
        // Orders that times do not bound: newest sealed first, as before.
        assert_eq!(visit_order(SortOrder::Longest, &ranges), vec![3, 2, 1, 0]);
        // Equal ends: newest sealed first.
        assert_eq!(
            visit_order(SortOrder::Newest, &[(0, 5), (1, 5)]),
            vec![1, 0]
        );
    }
}
