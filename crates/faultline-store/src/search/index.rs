//! The in-memory search index of a block ([`BlockIndex`]): per span its operation and
//! duration, per trace its start, end, root, errors and orphans, and the block's postings;
//! and the search over it. Also the pieces a search over several places shares: [`TopK`]
//! (the best traces so far) and [`Agg`] (what each part of a split trace satisfies).

use std::collections::{BinaryHeap, HashMap, HashSet};

use roaring::RoaringBitmap;

use faultline_model::span::{Span, SpanId, TraceId};

use super::postings::{Found, Postings};
use super::query::{TraceQuery, TraceSummary};
use crate::error::StoreError;

/// No operation (a trace without a root span).
const NO_OP: u32 = u32::MAX;

/// The light columns of a block's spans, in row order, that the index is built from.
#[derive(Debug, Default)]
pub(crate) struct LightRows {
    pub service: Vec<u32>,
    pub name: Vec<u32>,
    pub start_ns: Vec<u64>,
    pub dur_ns: Vec<u64>,
    pub error: Vec<bool>,
    pub span_id: Vec<SpanId>,
    pub parent: Vec<Option<SpanId>>,
    /// Interned services and names.
    pub strings: Vec<String>,
    ids: HashMap<String, u32, foldhash::fast::FixedState>,
}

impl LightRows {
    pub(crate) fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }

    /// Adds a span whose times are to be moved by `shift` nanoseconds (its clock's
    /// correction, `crate::skew`; usually 0).
    pub(crate) fn push_span(&mut self, s: &Span, shift: i64) {
        // Neighbouring rows (one trace) often repeat the service and name.
        let n = self.service.len();
        let svc = match n.checked_sub(1) {
            Some(i) if self.strings[self.service[i] as usize] == s.service() => self.service[i],
            _ => self.intern(s.service()),
        };
        let name = match n.checked_sub(1) {
            Some(i) if self.strings[self.name[i] as usize] == s.name => self.name[i],
            _ => self.intern(&s.name),
        };
        self.service.push(svc);
        self.name.push(name);
        self.start_ns.push(s.start_ns.saturating_add_signed(shift));
        self.dur_ns.push(s.duration_ns());
        self.error.push(s.is_error());
        self.span_id.push(s.span_id);
        self.parent.push(s.parent_span_id);
    }
}

/// The in-memory search index of one block.
/// Operation ids per span: two bytes each while a block has at most 65,536 distinct
/// operations (nearly always), four otherwise. At 50M spans the difference is 100 MB.
#[derive(Debug)]
enum OpIds {
    Small(Vec<u16>),
    Large(Vec<u32>),
}

impl OpIds {
    #[inline]
    fn at(&self, i: usize) -> u32 {
        match self {
            Self::Small(v) => u32::from(v[i]),
            Self::Large(v) => v[i],
        }
    }
}

#[derive(Debug)]
pub(crate) struct BlockIndex {
    strings: Vec<String>,
    /// Distinct (service, name) pairs, as string ids.
    ops: Vec<(u32, u32)>,
    span_op: OpIds,
    /// Duration in microseconds, saturating.
    span_dur_us: Vec<u32>,
    trace_first: Vec<u32>,
    trace_start: Vec<u64>,
    trace_end: Vec<u64>,
    root_op: Vec<u32>,
    errors: Vec<u32>,
    orphans: Vec<u32>,
    postings: Postings,
}

impl BlockIndex {
    /// Bytes held on the heap, estimated from the columns' capacities and the postings'.
    pub(crate) fn heap_bytes(&self) -> usize {
        let strings: usize = self.strings.iter().map(|s| s.capacity() + 24).sum();
        let span_op = match &self.span_op {
            OpIds::Small(v) => v.capacity() * 2,
            OpIds::Large(v) => v.capacity() * 4,
        };
        strings
            + self.ops.capacity() * 8
            + span_op
            + self.span_dur_us.capacity() * 4
            + self.trace_first.capacity() * 4
            + (self.trace_start.capacity() + self.trace_end.capacity()) * 8
            + (self.root_op.capacity() + self.errors.capacity() + self.orphans.capacity()) * 4
            + self.postings.heap_bytes()
    }

    /// Traces of at most this many spans find a parent's id by scanning their own ids
    /// rather than through a hash set.
    const SCAN_IDS_UP_TO: usize = 48;

    /// Builds the index from light rows in row order and the traces' (first row, rows).
    pub(crate) fn build(rows: LightRows, traces: &[(u32, u32)], postings: Postings) -> Self {
        // Hashed with foldhash, not SipHash: the keys are our own string numbers, and
        // SipHash here and in `ids` below was 1.5% of a replay's instructions.
        let mut op_ids: crate::block::FastMap<(u32, u32), u32> = Default::default();
        let mut ops = Vec::new();
        let n = rows.service.len();
        let mut span_op = Vec::with_capacity(n);
        for i in 0..n {
            let key = (rows.service[i], rows.name[i]);
            let id = *op_ids.entry(key).or_insert_with(|| {
                ops.push(key);
                (ops.len() - 1) as u32
            });
            span_op.push(id);
        }
        let span_op = if ops.len() <= usize::from(u16::MAX) + 1 {
            OpIds::Small(span_op.into_iter().map(|o| o as u16).collect())
        } else {
            OpIds::Large(span_op)
        };
        let span_dur_us = rows
            .dur_ns
            .iter()
            .map(|d| (d / 1000).min(u64::from(u32::MAX)) as u32)
            .collect();
        let t = traces.len();
        let mut idx = Self {
            strings: rows.strings.clone(),
            ops,
            span_op,
            span_dur_us,
            trace_first: Vec::with_capacity(t + 1),
            trace_start: Vec::with_capacity(t),
            trace_end: Vec::with_capacity(t),
            root_op: Vec::with_capacity(t),
            errors: Vec::with_capacity(t),
            orphans: Vec::with_capacity(t),
            postings,
        };
        // A trace's span ids, for its orphans: a small trace's are scanned instead.
        let mut ids: HashSet<SpanId, foldhash::fast::FixedState> = HashSet::default();
        for &(first, count) in traces {
            let (a, b) = (first as usize, (first + count) as usize);
            let b = b.min(n);
            let a = a.min(b);
            idx.trace_first.push(first);
            let own = &rows.span_id[a..b];
            let scan = own.len() <= Self::SCAN_IDS_UP_TO;
            ids.clear();
            if !scan {
                ids.extend(own.iter().copied());
            }
            let mut start = u64::MAX;
            let mut end = 0u64;
            let mut root: Option<(u64, u32)> = None;
            let mut errors = 0u32;
            let mut orphans = 0u32;
            for i in a..b {
                let s = rows.start_ns[i];
                start = start.min(s);
                end = end.max(s.saturating_add(rows.dur_ns[i]));
                errors += u32::from(rows.error[i]);
                match rows.parent[i] {
                    None => {
                        if root.is_none_or(|(rs, _)| s < rs) {
                            root = Some((s, idx.span_op.at(i)));
                        }
                    }
                    Some(p) => {
                        let known = if scan {
                            own.contains(&p)
                        } else {
                            ids.contains(&p)
                        };
                        orphans += u32::from(!known);
                    }
                }
            }
            idx.trace_start
                .push(if start == u64::MAX { 0 } else { start });
            idx.trace_end.push(end);
            idx.root_op.push(root.map_or(NO_OP, |r| r.1));
            idx.errors.push(errors);
            idx.orphans.push(orphans);
        }
        idx.trace_first.push(n as u32);
        idx
    }

    fn traces(&self) -> usize {
        self.trace_start.len()
    }

    fn string_id(&self, s: &str) -> Option<u32> {
        self.strings.iter().position(|x| x == s).map(|i| i as u32)
    }

    /// The summary of trace `t` (ordinal) with id `trace_id`.
    pub(crate) fn summary(&self, t: usize, trace_id: TraceId) -> TraceSummary {
        let (a, b) = (
            self.trace_first[t] as usize,
            self.trace_first[t + 1] as usize,
        );
        let mut svcs: Vec<u32> = (a..b)
            .map(|i| self.ops[self.span_op.at(i) as usize].0)
            .collect();
        svcs.sort_unstable();
        svcs.dedup();
        let mut services: Vec<String> = svcs
            .iter()
            .map(|&s| self.strings[s as usize].clone())
            .collect();
        services.sort();
        let root = self.root_op[t];
        let root = (root != NO_OP).then(|| self.ops[root as usize]);
        TraceSummary {
            trace_id,
            start_ns: self.trace_start[t],
            end_ns: self.trace_end[t],
            root_service: root.map(|r| self.strings[r.0 as usize].clone()),
            root_name: root.map(|r| self.strings[r.1 as usize].clone()),
            span_count: (b - a) as u32,
            error_count: self.errors[t],
            orphan_count: self.orphans[t],
            services,
        }
    }

    /// What `q` needs from this block, worked out once per search.
    fn plan(&self, q: &TraceQuery) -> Plan {
        let svc = q.service.as_deref().map(|s| self.string_id(s));
        let name = q.operation.as_deref().map(|s| self.string_id(s));
        let op_ok: Vec<bool> = self
            .ops
            .iter()
            .map(|&(s, n)| svc.is_none_or(|v| v == Some(s)) && name.is_none_or(|v| v == Some(n)))
            .collect();
        // Per tag: the traces the postings say carry it, or `None` when they cannot say.
        let services: Vec<&str> = match &q.service {
            Some(s) => vec![s.as_str()],
            None => {
                let mut v: Vec<&str> = self
                    .ops
                    .iter()
                    .map(|&(s, _)| self.strings[s as usize].as_str())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        };
        let mut tag_sets: Vec<Option<RoaringBitmap>> = Vec::with_capacity(q.tags.len());
        let mut exact = Vec::with_capacity(q.tags.len());
        for (k, v) in &q.tags {
            let mut set = RoaringBitmap::new();
            let (mut unknown, mut candidates) = (false, false);
            for s in &services {
                match self.postings.find(s, k, v) {
                    Some(Found::Exact(b)) => set |= b,
                    Some(Found::Candidates(b)) => {
                        set |= b;
                        candidates = true;
                    }
                    Some(Found::Unindexed) => unknown = true,
                    None => {}
                }
            }
            tag_sets.push((!unknown).then_some(set));
            exact.push(!unknown && !candidates);
        }
        let (lo, hi) = q.duration_bounds_us();
        // Tags whose traces must be checked by reading spans: unindexed, or needles.
        let inexact = exact
            .iter()
            .enumerate()
            .filter(|(_, e)| !**e)
            .fold(0u64, |m, (i, _)| m | (1 << (i + 1)));
        Plan {
            op_ok,
            to_verify: inexact != 0,
            inexact,
            tag_sets,
            lo,
            hi,
            span_filter: q.has_span_filter(),
            full: q.full_mask(),
        }
    }

    /// Whether trace `t` has a span of the operation within the duration bounds.
    fn span_bit(&self, p: &Plan, t: usize) -> bool {
        if !p.span_filter {
            return true;
        }
        let (a, b) = (
            self.trace_first[t] as usize,
            self.trace_first[t + 1] as usize,
        );
        (a..b).any(|i| {
            let d = u64::from(self.span_dur_us[i]);
            p.op_ok[self.span_op.at(i) as usize] && d >= p.lo && d <= p.hi
        })
    }

    /// Traces with spans elsewhere: records in `agg` what this block's part satisfies.
    #[allow(clippy::too_many_arguments)]
    fn split_parts(
        &self,
        q: &TraceQuery,
        p: &Plan,
        split: &RoaringBitmap,
        agg: &mut HashMap<TraceId, Agg>,
        trace_id_at: &dyn Fn(usize) -> Option<TraceId>,
        verify_budget: &mut usize,
        verify: &mut dyn FnMut(usize) -> Result<Option<Vec<Span>>, StoreError>,
        outcome: &mut SearchOutcome,
    ) -> Result<(), StoreError> {
        for t in split.iter() {
            let t = t as usize;
            if t >= self.traces() {
                continue;
            }
            let Some(id) = trace_id_at(t) else { continue };
            let mut mask = u64::from(self.span_bit(p, t));
            for (i, set) in p.tag_sets.iter().enumerate() {
                if p.inexact & (1 << (i + 1)) == 0
                    && set.as_ref().is_some_and(|s| s.contains(t as u32))
                {
                    mask |= 1 << (i + 1);
                }
            }
            if p.to_verify && mask | p.inexact != mask {
                if *verify_budget == 0 {
                    outcome.unverified += 1;
                } else {
                    *verify_budget -= 1;
                    if let Some(spans) = verify(t)? {
                        let refs: Vec<&Span> = spans.iter().collect();
                        mask |= q.part_mask(&refs) & p.inexact;
                    }
                }
            }
            agg.entry(id).or_default().merge(&Agg {
                mask,
                start_ns: self.trace_start[t],
                end_ns: self.trace_end[t],
                errors: self.errors[t],
            });
        }
        Ok(())
    }

    /// Searches this block: traces wholly in it go to `top` when they match `q` and beat
    /// its worst; traces in `split` (ordinals of traces with spans elsewhere too) add this
    /// part's findings to `agg` for the caller to judge the whole. `verify` reads a trace's
    /// spans for tags the postings cannot answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn search(
        &self,
        q: &TraceQuery,
        top: &mut TopK,
        block: usize,
        split: &RoaringBitmap,
        agg: &mut HashMap<TraceId, Agg>,
        trace_id_at: &dyn Fn(usize) -> Option<TraceId>,
        verify_budget: &mut usize,
        verify: &mut dyn FnMut(usize) -> Result<Option<Vec<Span>>, StoreError>,
    ) -> Result<SearchOutcome, StoreError> {
        let mut outcome = SearchOutcome::default();
        let p = self.plan(q);
        self.split_parts(
            q,
            &p,
            split,
            agg,
            trace_id_at,
            verify_budget,
            verify,
            &mut outcome,
        )?;
        if !p.op_ok.iter().any(|&b| b) {
            return Ok(outcome);
        }
        let mut candidates: Option<RoaringBitmap> = None;
        for set in p.tag_sets.iter().flatten() {
            candidates = Some(match candidates {
                Some(c) => c & set,
                None => set.clone(),
            });
        }
        let mut check = |t: usize| -> Result<(), StoreError> {
            if split.contains(t as u32) {
                return Ok(());
            }
            let (start, end) = (self.trace_start[t], self.trace_end[t]);
            if start > q.end_ns || end < q.start_ns {
                return Ok(());
            }
            if q.errors_only && self.errors[t] == 0 {
                return Ok(());
            }
            let key = q.sort.key(start, end);
            if !top.would_take(key) || !self.span_bit(&p, t) {
                return Ok(());
            }
            if p.to_verify {
                if *verify_budget == 0 {
                    outcome.unverified += 1;
                    return Ok(());
                }
                *verify_budget -= 1;
                let Some(spans) = verify(t)? else {
                    return Ok(());
                };
                let refs: Vec<&Span> = spans.iter().collect();
                if q.part_mask(&refs) != p.full {
                    return Ok(());
                }
            }
            top.push(key, block, t as u32);
            Ok(())
        };
        match &candidates {
            Some(c) => {
                for t in c.iter() {
                    if (t as usize) < self.traces() {
                        check(t as usize)?;
                    }
                }
            }
            None => {
                for t in 0..self.traces() {
                    check(t)?;
                }
            }
        }
        Ok(outcome)
    }
}

/// What a query needs from one block (see [`BlockIndex::plan`]).
struct Plan {
    /// Per operation of the block: whether it is the query's service and operation.
    op_ok: Vec<bool>,
    /// Per tag: the traces carrying it (or at most those: needles), or `None` when the
    /// index cannot say.
    tag_sets: Vec<Option<RoaringBitmap>>,
    /// Whether some tag must be checked by reading spans.
    to_verify: bool,
    /// The mask bits of those tags.
    inexact: u64,
    /// Duration bounds in microseconds.
    lo: u64,
    hi: u64,
    /// Whether the query filters spans by operation or duration.
    span_filter: bool,
    /// The mask of a trace meeting every criterion.
    full: u64,
}

/// What the parts of a trace stored in several places found, merged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Agg {
    /// Criteria satisfied by some part (see [`TraceQuery::part_mask`]).
    pub mask: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub errors: u32,
}

impl Default for Agg {
    fn default() -> Self {
        Self {
            mask: 0,
            start_ns: u64::MAX,
            end_ns: 0,
            errors: 0,
        }
    }
}

impl Agg {
    pub(crate) fn merge(&mut self, o: &Agg) {
        self.start_ns = self.start_ns.min(o.start_ns);
        self.end_ns = self.end_ns.max(o.end_ns);
        self.mask |= o.mask;
        self.errors += o.errors;
    }

    /// Whether the whole trace matches `q`.
    pub(crate) fn matches(&self, q: &TraceQuery) -> bool {
        self.mask == q.full_mask()
            && self.start_ns <= q.end_ns
            && self.end_ns >= q.start_ns
            && (!q.errors_only || self.errors > 0)
    }
}

/// What searching one block found besides hits.
#[derive(Debug, Default)]
pub(crate) struct SearchOutcome {
    /// Candidates not checked because the verification budget ran out.
    pub unverified: usize,
}

/// The best `k` hits seen, by sort key; `source` says where each came from (block index,
/// or `usize::MAX` for the head with the trace kept aside).
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<std::cmp::Reverse<(u64, usize, u32)>>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(crate) fn would_take(&self, key: u64) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|w| key > w.0.0)
    }

    pub(crate) fn push(&mut self, key: u64, source: usize, t: u32) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse((key, source, t)));
        } else if self.would_take(key) {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse((key, source, t)));
        }
    }

    /// Hits, best first.
    pub(crate) fn into_sorted(self) -> Vec<(u64, usize, u32)> {
        let mut v: Vec<_> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}
