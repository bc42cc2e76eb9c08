//! The head: spans in memory since the last seal, queryable at once, with the dependency
//! edges their arrival completes; and how records enter it ([`Store::ingest`]) or are
//! deferred to the backlog ([`Store::defer`], [`Store::finish_pending`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use faultline_model::sampling::adjusted_count;
use faultline_model::span::{Span, SpanId, TraceId};

use super::query::HEAD;

/// The head's maps: keyed by ids that clients choose, so with a per-process random seed;
/// foldhash rather than SipHash (hashing ids was 3% of indexing).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use super::{Store, lock_err};
use crate::error::StoreError;
use crate::manifest::Manifest;
use crate::rollup::Rollups;
use crate::search::{Agg, SpanTerms, TopK, TraceQuery, TraceSummary};
use crate::seqs::SeqRanges;
use crate::skew::{self, Sample};

/// The most spans of a trace whose parents are found by scanning its span ids (see
/// [`Head::find_span`]).
const SCAN_MAX: usize = 64;

/// The most spans a new head makes room for up front (see [`Head::reserve`]).
const HEAD_RESERVE_MAX: usize = 1 << 20;

/// The most services a head tells apart in [`HeadTrace::services`]; later ones share the
/// last bit.
const SERVICE_BITS: usize = 63;

/// One trace of the head: where its spans are, and what a search can judge without
/// reading them.
#[derive(Clone)]
pub(crate) struct HeadTrace {
    pub(crate) id: TraceId,
    /// Positions of its spans in [`Head::spans`], in arrival order.
    pub(crate) rows: Vec<u32>,
    /// Their span ids, beside `rows`: a span's parent is found among them (see
    /// [`Head::find_span`]).
    ids: Vec<SpanId>,
    /// Earliest start and latest end of its spans as stored (before clock shifts).
    start_ns: u64,
    end_ns: u64,
    /// Bit `i` when a span of the head's `i`-th service is here (see [`Head::service_bit`]).
    services: u64,
}

#[derive(Default)]
pub(crate) struct Head {
    /// RED cells of the head's spans, written beside the block when it is sealed.
    pub(crate) rollups: Rollups,
    pub(crate) spans: Vec<Span>,
    /// The spans' hashed tags, in `spans`' order, for the search index of the block this
    /// head becomes (`crate::search::SpanTerms`).
    pub(crate) terms: SpanTerms,
    /// The head's traces in the order their first span arrived: about the order of their
    /// starts, so a search for the newest reads from the end and fills its top at once.
    pub(crate) traces: Vec<HeadTrace>,
    /// Position of each trace in `traces`.
    pub(crate) by_trace: FastMap<TraceId, u32>,
    /// Bit number of each service (the first [`SERVICE_BITS`]; the rest share bit 63).
    pub(crate) service_bits: FastMap<String, u32>,
    /// Span positions by (trace, span id), to find parents for dependency edges: only
    /// for traces of more than [`SCAN_MAX`] spans (see [`Head::find_span`]).
    pub(crate) by_span: FastMap<(TraceId, SpanId), u32>,
    /// Spans whose parent has not arrived yet, by (trace, parent span id).
    pub(crate) waiting: FastMap<(TraceId, SpanId), Vec<u32>>,
    pub(crate) services: BTreeSet<String>,
    /// Highest sequence number of a record in this head (names the block).
    pub(crate) max_seq: u64,
    /// Every record up to this one that is not pending was ingested into this head or an
    /// earlier one: the manifest's `source_seq` once this head is sealed.
    pub(crate) in_order: u64,
    /// Pending (backlog) records ingested into this head.
    pub(crate) backlog: SeqRanges,
    /// Pending ranges whose replay finished before or in this head: once it is sealed,
    /// nothing in them is pending any more (numbers without a record included).
    pub(crate) finished: SeqRanges,
    pub(crate) started: Option<Instant>,
}

/// The manifest once `head` is durable, and (in `pending`) what is still pending then.
/// Heads are sealed one at a time and in order, so everything an earlier head held is
/// durable already.
pub(crate) fn advanced(manifest: &Manifest, pending: &mut SeqRanges, head: &Head) -> Manifest {
    let mut next = manifest.clone();
    next.source_seq = next.source_seq.max(head.in_order);
    head.settle(pending);
    let mut listed = pending.clone();
    // Ranges deferred after this head was taken lie above its position: a restart
    // replays them in order.
    listed.clip_above(next.source_seq);
    next.pending = listed;
    next
}

impl Head {
    /// Makes room for a block's worth of spans (at most [`HEAD_RESERVE_MAX`]) at once:
    /// growing the span vector and the maps by doubling moved every span again and
    /// again, 8% of indexing time in a profile of a backlog's replay (BENCHMARKS.md).
    /// The vectors get a quarter more: a head is sealed once it holds a block's worth,
    /// so the batch that crosses the mark (one per ingesting thread) lands past it. With
    /// room for exactly a block, every head's spans were copied once more, into twice the
    /// memory (in a replay, 3.7% of the CPU samples under that copy, and a peak 7% higher).
    /// Untouched capacity costs address space, not resident memory.
    pub(crate) fn reserve(&mut self, block_spans: usize) {
        let n = block_spans.min(HEAD_RESERVE_MAX);
        let room = n.saturating_add(n / 4);
        self.spans.reserve(room);
        self.terms.reserve(room);
        self.by_trace.reserve(n / 8);
        self.traces.reserve(n / 8);
    }

    /// The bit of `service` in [`HeadTrace::services`] (`service_bits`), noting a service
    /// new to the head (in `services`). Takes the two fields, not the head, so that it can
    /// be called while a span of the head is borrowed.
    fn service_bit(
        (service_bits, services): (&mut FastMap<String, u32>, &mut BTreeSet<String>),
        service: &str,
    ) -> u64 {
        if let Some(&i) = service_bits.get(service) {
            return 1 << i;
        }
        if !services.contains(service) {
            services.insert(service.to_string());
        }
        let n = service_bits.len();
        if n < SERVICE_BITS {
            service_bits.insert(service.to_string(), n as u32);
            1 << n
        } else {
            1 << SERVICE_BITS
        }
    }

    /// The bits a trace of `services` may have, as [`Head::service_bit`] gives them
    /// (0 when none of them is in the head).
    fn bits_of<'a>(&self, services: impl IntoIterator<Item = &'a str>) -> u64 {
        services.into_iter().fold(0, |m, name| {
            m | match self.service_bits.get(name) {
                Some(&i) => 1 << i,
                None if self.services.contains(name) => 1 << SERVICE_BITS,
                None => 0,
            }
        })
    }

    /// Adds spans, and to the head's rollups the spans and the service-to-service calls
    /// their arrival completed; returns the clock-skew samples of the client/server pairs
    /// it matched.
    /// `terms` are the spans' hashed tags (`SpanTerms::of`).
    pub(crate) fn push(
        &mut self,
        seq: u64,
        spans: Vec<Span>,
        weights: &[f64],
        terms: &SpanTerms,
    ) -> Vec<Sample> {
        if terms.len() == spans.len() {
            self.terms.append(terms);
        } else {
            self.terms.forget();
        }
        if self.started.is_none() && !spans.is_empty() {
            self.started = Some(Instant::now());
        }
        let mut samples = Vec::new();
        // Spans of one request share their resource: its service's bit is looked up once.
        let mut last: Option<(*const faultline_model::span::Origin, u64)> = None;
        // The batch is moved in at once and its spans worked on where they lie: moved one
        // by one, each 184-byte span was copied three times (out of the batch, on the
        // stack, into the head), about 1% of a replay's CPU.
        let first = self.spans.len();
        self.spans.extend(spans);
        for n in 0..self.spans.len() - first {
            let weight = weights.get(n).copied().unwrap_or(1.0);
            let idx = (first + n) as u32;
            let s = &self.spans[first + n];
            self.rollups.add_weighted(s, weight);
            let (start, end) = (s.start_ns, s.end_ns.max(s.start_ns));
            let at = *self.by_trace.entry(s.trace_id).or_insert_with(|| {
                self.traces.push(HeadTrace {
                    id: s.trace_id,
                    rows: Vec::new(),
                    ids: Vec::new(),
                    start_ns: start,
                    end_ns: end,
                    services: 0,
                });
                (self.traces.len() - 1) as u32
            }) as usize;
            if let Some(p) = s.parent_span_id {
                match self.find_span(at, p) {
                    Some(pi) => {
                        let parent = &self.spans[pi as usize];
                        samples.extend(skew::sample(parent, s));
                        if parent.service() != s.service() {
                            self.rollups.add_edge(
                                s.start_ns,
                                parent.service(),
                                s.service(),
                                (s.is_error(), s.duration_ns(), weight),
                            );
                        }
                    }
                    None => self.waiting.entry((s.trace_id, p)).or_default().push(idx),
                }
            }
            if let Some(children) = self.waiting.remove(&(s.trace_id, s.span_id)) {
                for ci in children {
                    let child = &self.spans[ci as usize];
                    samples.extend(skew::sample(s, child));
                    if child.service() != s.service() {
                        self.rollups.add_edge(
                            child.start_ns,
                            s.service(),
                            child.service(),
                            (
                                child.is_error(),
                                child.duration_ns(),
                                adjusted_count(&child.attributes),
                            ),
                        );
                    }
                }
            }
            let origin = std::sync::Arc::as_ptr(&s.origin);
            let bit = match last {
                Some((o, bit)) if o == origin => bit,
                _ => {
                    let fields = (&mut self.service_bits, &mut self.services);
                    let bit = Self::service_bit(fields, s.service());
                    last = Some((origin, bit));
                    bit
                }
            };
            let t = &mut self.traces[at];
            t.rows.push(idx);
            t.ids.push(s.span_id);
            match t.rows.len() {
                n if n <= SCAN_MAX => {}
                n if n == SCAN_MAX + 1 => {
                    let trace = s.trace_id;
                    for (id, row) in t.ids.iter().zip(&t.rows) {
                        self.by_span.insert((trace, *id), *row);
                    }
                }
                _ => {
                    self.by_span.insert((s.trace_id, s.span_id), idx);
                }
            }
            let t = &mut self.traces[at];
            t.start_ns = t.start_ns.min(start);
            t.end_ns = t.end_ns.max(end);
            t.services |= bit;
        }
        self.max_seq = self.max_seq.max(seq);
        samples
    }

    /// The position of the span `id` of trace `at` (the latest if the id came twice).
    /// A trace's ids are scanned up to [`SCAN_MAX`] of them: near each other and hot, as
    /// its spans arrive together, where a map of every span of the head (250,000 entries)
    /// took a cache miss for each span stored and each parent looked up (1.7% of a
    /// replay's CPU samples). Larger traces are looked up in [`Head::by_span`].
    fn find_span(&self, at: usize, id: SpanId) -> Option<u32> {
        let t = self.traces.get(at)?;
        if t.rows.len() > SCAN_MAX {
            return self.by_span.get(&(t.id, id)).copied();
        }
        let i = t.ids.iter().rposition(|x| *x == id)?;
        t.rows.get(i).copied()
    }

    /// Removes from `pending` what this head makes durable once it is sealed.
    pub(crate) fn settle(&self, pending: &mut SeqRanges) {
        pending.subtract(&self.backlog);
        pending.subtract(&self.finished);
    }

    /// Takes over a newer head's spans and positions (after a failed seal).
    pub(crate) fn absorb(&mut self, newer: Head) {
        let weights: Vec<f64> = newer
            .spans
            .iter()
            .map(|s| adjusted_count(&s.attributes))
            .collect();
        let _ = self.push(newer.max_seq, newer.spans, &weights, &newer.terms);
        self.in_order = self.in_order.max(newer.in_order);
        self.backlog.union(&newer.backlog);
        self.finished.union(&newer.finished);
    }

    pub(crate) fn trace(&self, id: &TraceId, out: &mut Vec<Span>) {
        if let Some(&at) = self.by_trace.get(id) {
            let rows = &self.traces[at as usize].rows;
            out.extend(rows.iter().map(|&i| self.spans[i as usize].clone()));
        }
    }

    /// Adds the head's traces matching `q` to `top` (source `HEAD + found.len()`), keeping
    /// their summaries in `found`; traces for which `is_split` holds (spans elsewhere too)
    /// add this part's findings to `agg` instead. Exact: reads the spans. Times are
    /// corrected for clock skew by `estimates` (`crate::skew`), as sealed blocks store them.
    pub(crate) fn search(
        &self,
        q: &TraceQuery,
        estimates: &skew::Estimates,
        top: &mut TopK,
        found: &mut Vec<TraceSummary>,
        agg: &mut HashMap<TraceId, Agg>,
        is_split: &dyn Fn(&TraceId) -> bool,
    ) {
        let skewed = skew::skewed_services(estimates);
        let skewed_bits = self.bits_of(skewed.iter().copied());
        // A trace without a span of the queried service cannot match on its own.
        let wanted = q.service.as_deref().map(|v| self.bits_of([v]));
        let full = q.full_mask();
        let mut refs: Vec<&Span> = Vec::new();
        // Newest first for the default order, oldest first for `Oldest`: the top fills
        // with its final members early and bounds the rest.
        let n = self.traces.len();
        let oldest = q.sort == crate::search::SortOrder::Oldest;
        for k in 0..n {
            let t = &self.traces[if oldest { k } else { n - 1 - k }];
            let split = is_split(&t.id);
            if !split && wanted.is_some_and(|w| t.services & w == 0) {
                continue;
            }
            let moves = t.services & skewed_bits != 0;
            if !split && !moves {
                // Unshifted, the range is exact: most traces fall to the time window or
                // the top-K bound before any span is read.
                let (start, end) = (t.start_ns, t.end_ns);
                if start > q.end_ns || end < q.start_ns || !top.would_take(q.sort.key(start, end)) {
                    continue;
                }
            }
            let id = &t.id;
            refs.clear();
            refs.extend(t.rows.iter().map(|&i| &self.spans[i as usize]));
            // What spans match does not depend on clock shifts (they move a span's start
            // and end alike): a trace that cannot match is passed over before its shifts
            // are planned, which cost most of a search while the head is large.
            let mask = q.part_mask(&refs);
            if !split && (mask != full || (q.errors_only && !refs.iter().any(|s| s.is_error()))) {
                continue;
            }
            let shifts = moves.then(|| skew::shifts(&refs, estimates));
            let (start, end) = span_range(&refs, shifts.as_deref());
            if split {
                let part = Agg {
                    mask,
                    start_ns: start,
                    end_ns: end,
                    errors: refs.iter().map(|s| u32::from(s.is_error())).sum(),
                };
                agg.entry(*id).or_default().merge(&part);
                continue;
            }
            if start > q.end_ns || end < q.start_ns || !top.would_take(q.sort.key(start, end)) {
                continue;
            }
            let Some(mut summary) = TraceSummary::of_refs(&refs) else {
                continue;
            };
            (summary.start_ns, summary.end_ns) = (start, end);
            if q.trace_matches(&refs, &summary) {
                top.push(q.sort.key(start, end), HEAD + found.len(), 0);
                found.push(summary);
            }
        }
    }
}

/// The earliest start and latest end of `spans`, each moved by its shift when given.
fn span_range(spans: &[&Span], shifts: Option<&[i64]>) -> (u64, u64) {
    let (mut start, mut end) = (u64::MAX, 0u64);
    for (i, s) in spans.iter().enumerate() {
        let d = shifts.map_or(0, |v| v[i]);
        start = start.min(s.start_ns.saturating_add_signed(d));
        end = end.max(s.end_ns.max(s.start_ns).saturating_add_signed(d));
    }
    (if start == u64::MAX { 0 } else { start }, end)
}

impl Store {
    /// Declares records `first..=last` a backlog: the caller moves on to the records after
    /// `last` and replays these later through [`Store::ingest`], then calls
    /// [`Store::finish_pending`]. Until they are sealed the WAL keeps them, and a restart
    /// replays whichever are not yet durable.
    pub fn defer(&self, first: u64, last: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.write().map_err(|_| lock_err())?;
        inner.pending.insert_range(first, last);
        inner.head.in_order = inner.head.in_order.max(last);
        Ok(())
    }

    /// Says that every record of `first..=last` that exists was ingested: once the head
    /// holding the last of them is sealed, the range is no longer pending.
    pub fn finish_pending(&self, first: u64, last: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.write().map_err(|_| lock_err())?;
        inner.head.finished.insert_range(first, last);
        Ok(())
    }

    /// Where the head's spans lie and the room around them (for tests of the reserve).
    #[cfg(test)]
    pub(crate) fn head_room(&self) -> (usize, usize) {
        self.inner.read().map_or((0, 0), |i| {
            (i.head.spans.as_ptr() as usize, i.head.spans.capacity())
        })
    }

    /// Adds the spans of WAL record `seq`; they are queryable when this returns.
    pub fn ingest(&self, seq: u64, spans: Vec<Span>) -> Result<(), StoreError> {
        // A sealed head is freed by the thread that allocated its spans (`Store::retire`).
        self.free_retired(std::time::Duration::ZERO);
        // Before the head holds them, so a seal's checkpoint covers every span it writes.
        if let Some(o) = self.observer.get()
            && !spans.is_empty()
        {
            o.observe(&spans);
        }
        // Each span's adjusted count, once and before the lock (rollups and edges use it).
        let weights: Vec<f64> = spans
            .iter()
            .map(|s| adjusted_count(&s.attributes))
            .collect();
        // The search index's hashes too, while the spans' strings are in cache.
        let terms = SpanTerms::of(&spans);
        let mut inner = self.inner.write().map_err(|_| lock_err())?;
        if inner.pending.contains(seq) {
            inner.head.backlog.insert(seq);
        } else {
            inner.head.in_order = inner.head.in_order.max(seq);
        }
        for s in &spans {
            // A trace new to the head but already in a block or a sealing head is split.
            if !inner.head.by_trace.contains_key(&s.trace_id)
                && !inner.split.contains(&s.trace_id)
                && (!inner.locs.get(&s.trace_id).is_empty() || inner.in_heads(&s.trace_id) > 0)
            {
                let holders = inner
                    .locs
                    .get(&s.trace_id)
                    .iter()
                    .filter_map(|&b| inner.block_by_serial(b))
                    .filter(|b| b.reader.contains(&s.trace_id))
                    .count()
                    + inner.in_heads(&s.trace_id);
                if holders > 0 {
                    inner.mark_split(&s.trace_id);
                }
            }
        }
        inner.quality.observe(&spans, unix_now_s());
        if inner.head.spans.capacity() == 0 {
            inner.head.reserve(self.opts.block_max_spans);
        }
        // The head counts the spans and calls in its rollups, which join the store's
        // when it is sealed (each span is added to one sketch only).
        let samples = inner.head.push(seq, spans, &weights, &terms);
        for x in samples {
            inner.skew.observe(x);
        }
        Ok(())
    }
}

/// Now, in Unix seconds (0 if the clock is before 1970).
pub(crate) fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
