//! RED rollups: per minute and per (service, operation, span kind), the span count, the
//! error count, their estimates weighted by each span's adjusted count (how many spans a
//! sampled span stands for: `faultline_model::sampling`), the same four figures over the
//! cell's entry spans (requests: SERVER and CONSUMER spans, and roots of any kind), and a
//! mergeable latency sketch
//! (DDSketch, 1% relative accuracy, of the stored spans), computed from every span the
//! store receives. Rates and error rates come from the weighted estimates, so they stay
//! right when services sample at different rates. They answer "rate, errors and latency of service X
//! over the last hour" from at most 60 x operations cells, whatever the span volume.
//!
//! In memory, [`Rollups`] holds every minute. On disk, each sealed block has a rollup file
//! `BLOCKID.red` with the cells of the spans in that block, written and fsynced with the
//! block before the manifest names it; at start-up the files of the listed blocks are
//! merged back, and the WAL replay adds the head's spans. Layout (little endian):
//!
//! ```text
//! 0   8  magic     b"FLTRED01"
//! 8   4  version   6 (versions 1, without edges, 2, without edge sketches, 3, without
//!                  weighted counts, and 4, without entry counts, are still read: their
//!                  weights are the counts, their entries the SERVER and CONSUMER cells';
//!                  version 5 is version 6's body stored uncompressed from byte 12)
//! 12  4  raw       (version 6) the body's length once decompressed, at most 1 GiB
//! 16  ..  body      (version 6) one zstd frame holding everything from `cells` through
//!                  the last edge below. Cells repeat names and sketch bins: varied
//!                  traffic's files shrank from 1.40 to 0.46 bytes per span.
//! the body:
//!     4  cells     number of cells
//! then per cell:
//!     8  minute    Unix minute (seconds / 60)
//!     1  kind      OTLP span kind (0-5)
//!     2  n         service name length, then n bytes of UTF-8
//!     2  m         operation name length, then m bytes of UTF-8
//!     8  count     spans
//!     8  errors    spans with status ERROR
//!     8  weighted  (version 4) sum of the spans' adjusted counts, f64
//!     8  w_errors  (version 4) the same over the error spans, f64
//!     8  entries   (version 5) entry spans: SERVER or CONSUMER, or without a parent
//!     8  e_errors  (version 5) entry spans with status ERROR
//!     8  w_entries (version 5) sum of the entry spans' adjusted counts, f64
//!     8  w_e_errs  (version 5) the same over the failing entry spans, f64
//!     4  k         sketch length, then k bytes: the DDSketch in DataDog's Java-compatible
//!                  encoding (durations in milliseconds, exact count, sum, min and max)
//! then (version 2 and later) the service dependency edges:
//!     4  edges     number of edges
//!     per edge: 8 minute, 2+n parent service, 2+m child service, 8 calls, 8 errors,
//!               (version 4) 8 weighted calls and 8 weighted errors as f64,
//!               and (version 3) 4+k the child spans' latency sketch, encoded as above
//! ..  4  crc       CRC32C of everything before it
//! ```
//!
//! Dependency edges: a call from service P to service C is a span of C whose parent span
//! (in the same head) belongs to P, counted in the child's minute. Parent and child are
//! matched within one head (the spans ingested between two seals), in either arrival
//! order; a pair split across a seal is not counted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sketches_ddsketch::{Config, DDSketch};

use faultline_model::span::{Span, SpanId, SpanKind, TraceId};

use crate::error::StoreError;

const MAGIC: &[u8; 8] = b"FLTRED01";
const VERSION: u32 = 6;

/// The largest decompressed body a version 6 file may claim (damage past it is refused
/// before anything is allocated).
const MAX_BODY: usize = 1 << 30;

/// One cell: a minute of one (service, operation, kind).
#[derive(Clone)]
pub struct Cell {
    /// Spans.
    pub count: u64,
    /// Spans with status ERROR.
    pub errors: u64,
    /// Sum of the spans' adjusted counts: the spans they stand for.
    pub weighted: f64,
    /// The same over the error spans.
    pub weighted_errors: f64,
    /// The entry spans among them (requests: SERVER, CONSUMER or roots); counts, errors,
    /// and their weighted sums. Unused for dependency edges.
    pub entries: Entries,
    /// Durations in milliseconds, but for the newest ones still in `pending`: read it
    /// through [`Cell::sketch`].
    sketch: DDSketch,
    /// The newest durations in milliseconds, oldest first, not yet in `sketch` (see
    /// [`Cell::add_duration`]). Allocated by the first: cells read from files and merged
    /// into the store's never hold any.
    pending: Vec<f64>,
}

/// How many durations a cell holds back from its sketch.
const PENDING: usize = 32;

/// A cell's entry spans (see [`Cell::entries`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Entries {
    /// Entry spans stored.
    pub count: u64,
    /// Those with status ERROR.
    pub errors: u64,
    /// Sum of their adjusted counts.
    pub weighted: f64,
    /// The same over the failing ones.
    pub weighted_errors: f64,
}

impl Entries {
    fn merge(&mut self, o: &Entries) {
        self.count += o.count;
        self.errors += o.errors;
        self.weighted += o.weighted;
        self.weighted_errors += o.weighted_errors;
    }
}

/// Whether a span is an entry into its service: a request it serves (SERVER), a message
/// it consumes (CONSUMER), or the root of its trace.
pub fn is_entry(s: &Span) -> bool {
    matches!(s.kind, SpanKind::Server | SpanKind::Consumer) || s.parent_span_id.is_none()
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("count", &self.count)
            .field("errors", &self.errors)
            .finish()
    }
}

impl Default for Cell {
    fn default() -> Self {
        Self {
            count: 0,
            errors: 0,
            weighted: 0.0,
            weighted_errors: 0.0,
            entries: Entries::default(),
            sketch: DDSketch::new(Config::defaults()),
            pending: Vec::new(),
        }
    }
}

impl Cell {
    /// Adds one duration in milliseconds. Durations join the sketch [`PENDING`] at a
    /// time: a span's cell is one of hundreds, each with a kilobyte or more of sketch
    /// bins, and adding each span's duration on its own stalled on a cache miss at nearly
    /// every bin increment (3.5% of a replay's CPU samples on that one instruction);
    /// added together, the misses overlap (1.6%). The sketch comes out the same: the same
    /// durations added in the same order. Sorting them first, so the bins are walked in
    /// address order, cost more than it saved.
    fn add_duration(&mut self, ms: f64) {
        if self.pending.len() == PENDING {
            self.flush();
        } else if self.pending.capacity() == 0 {
            self.pending.reserve_exact(PENDING);
        }
        self.pending.push(ms);
    }

    /// Moves the pending durations into the sketch.
    fn flush(&mut self) {
        for &v in &self.pending {
            self.sketch.add(v);
        }
        self.pending.clear();
    }

    /// The sketch of every duration added: the cell's own, or a copy with the pending
    /// ones added when there are any.
    fn sketch(&self) -> std::borrow::Cow<'_, DDSketch> {
        if self.pending.is_empty() {
            return std::borrow::Cow::Borrowed(&self.sketch);
        }
        let mut s = self.sketch.clone();
        for &v in &self.pending {
            s.add(v);
        }
        std::borrow::Cow::Owned(s)
    }

    /// A cell of stored figures (a decoded file's).
    fn stored(counts: (u64, u64, f64, f64), entries: Entries, sketch: DDSketch) -> Self {
        let (count, errors, weighted, weighted_errors) = counts;
        Self {
            count,
            errors,
            weighted,
            weighted_errors,
            entries,
            sketch,
            pending: Vec::new(),
        }
    }

    /// Whether every span of the cell is an entry span (its sketch is request latency).
    fn all_entries(&self) -> bool {
        self.count > 0 && self.entries.count == self.count
    }

    /// The RED figures of this cell as a point starting at `start_s`; `requests` is the
    /// merged sketch of its all-entry cells ([`Self::all_entries`]).
    fn point(&self, start_s: u64, requests: &DDSketch) -> RedPoint {
        let rq = |p: f64| requests.quantile(p).ok().flatten();
        let request_ms = match (rq(0.5), rq(0.9), rq(0.99)) {
            (Some(a), Some(b), Some(c)) if requests.count() > 0 => Some([a, b, c]),
            _ => None,
        };
        let sketch = self.sketch();
        let q = |p: f64| {
            if self.count == 0 {
                None
            } else {
                sketch.quantile(p).ok().flatten()
            }
        };
        let stored = sketch.count();
        RedPoint {
            start_s,
            count: estimate(self.weighted),
            errors: estimate(self.weighted_errors),
            stored: self.count,
            stored_errors: self.errors,
            requests: estimate(self.entries.weighted),
            request_errors: estimate(self.entries.weighted_errors),
            stored_requests: self.entries.count,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            mean_ms: if stored == 0 {
                None
            } else {
                sketch.sum().map(|s| s / stored as f64)
            },
            request_ms,
        }
    }

    fn merge(&mut self, other: &Cell) {
        self.count += other.count;
        self.errors += other.errors;
        self.weighted += other.weighted;
        self.weighted_errors += other.weighted_errors;
        self.entries.merge(&other.entries);
        // Pending durations first, so the sketch is the one adding every duration one
        // by one would have made. Sketches made with the same config always merge.
        self.flush();
        let _ = self.sketch.merge(&other.sketch());
    }
}

/// An f64 from 8 little-endian bytes (`take` always yields 8 here).
fn f64_at(b: &[u8]) -> f64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    f64::from_le_bytes(a)
}

/// A sum of adjusted counts as a whole number of spans (sums of 1s are exact).
fn estimate(weighted: f64) -> u64 {
    if weighted.is_finite() && weighted > 0.0 {
        weighted.round() as u64
    } else {
        0
    }
}

/// Maps of the rollups: foldhash, seeded per map. Each span looks up its service and
/// operation in the head's and the store's cells; with std's SipHash those lookups were
/// about 1% of the server's time in a catch-up.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// service -> operation -> kind -> cell, for one minute.
type MinuteCells = Map<String, Map<String, [Option<Box<Cell>>; 6]>>;

/// Calls, errors and the callee spans' latency of each (caller, callee) edge in one
/// minute: caller -> callee -> cell, nested so that counting a call looks both names up
/// without allocating them (a flat `(String, String)` key needed two new strings per
/// call, a tenth of the pipeline thread's time during a catch-up).
type MinuteEdges = Map<String, Map<String, Cell>>;

/// Rollups by minute.
#[derive(Default)]
pub struct Rollups {
    minutes: BTreeMap<u64, MinuteCells>,
    edges: BTreeMap<u64, MinuteEdges>,
}

/// A service dependency over a time range.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependency {
    /// Calling service (the parent span's).
    pub parent: String,
    /// Called service (the child span's).
    pub child: String,
    /// Calls: child spans whose parent is in the other service, estimated from their
    /// adjusted counts.
    pub calls: u64,
    /// Calls whose child span is an error, estimated likewise.
    pub errors: u64,
    /// Calls stored (child spans kept by sampling).
    pub stored: u64,
    /// Latency of the calls (the child spans) in milliseconds: p50, p90, p99 (1% relative
    /// accuracy) and the exact mean; `None` when the data predates edge sketches.
    pub latency_ms: Option<[f64; 4]>,
}

impl std::fmt::Debug for Rollups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollups")
            .field("minutes", &self.minutes.len())
            .finish()
    }
}

/// One point of a RED series.
#[derive(Debug, Clone, PartialEq)]
pub struct RedPoint {
    /// Start of the step, Unix seconds.
    pub start_s: u64,
    /// Spans in the step, estimated from the stored spans' adjusted counts (equal to
    /// `stored` when nothing was sampled).
    pub count: u64,
    /// Error spans in the step, estimated likewise.
    pub errors: u64,
    /// Spans stored in the step.
    pub stored: u64,
    /// Error spans stored in the step.
    pub stored_errors: u64,
    /// Requests in the step: entry spans (SERVER, CONSUMER or roots, see [`is_entry`]),
    /// estimated from their adjusted counts.
    pub requests: u64,
    /// Failing requests, estimated likewise.
    pub request_errors: u64,
    /// Requests stored.
    pub stored_requests: u64,
    /// Latency quantiles and mean in milliseconds (None when there were no spans).
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Mean.
    pub mean_ms: Option<f64>,
    /// Request latency in milliseconds (p50, p90, p99): the durations of the operations
    /// whose spans are all entry spans (SERVER and CONSUMER operations, and operations seen
    /// only as roots), so a service's own latency as its callers see it, without its
    /// client and internal spans. `None` when no such operation has spans in the point.
    pub request_ms: Option<[f64; 3]>,
}

impl Rollups {
    /// Adds one span, weighted by its adjusted count.
    pub fn add(&mut self, s: &Span) {
        self.add_weighted(s, faultline_model::sampling::adjusted_count(&s.attributes));
    }

    /// Adds one span whose adjusted count is known (`weight`).
    pub fn add_weighted(&mut self, s: &Span, weight: f64) {
        let minute = s.start_ns / 60_000_000_000;
        let cells = self.minutes.entry(minute).or_default();
        let ops = match cells.get_mut(s.service()) {
            Some(o) => o,
            None => cells.entry(s.service().to_string()).or_default(),
        };
        let kinds = match ops.get_mut(s.name.as_str()) {
            Some(k) => k,
            None => ops.entry(s.name.clone()).or_default(),
        };
        let cell = kinds[s.kind as usize].get_or_insert_with(Box::default);
        cell.count += 1;
        cell.weighted += weight;
        let error = s.is_error();
        if error {
            cell.errors += 1;
            cell.weighted_errors += weight;
        }
        if is_entry(s) {
            let e = &mut cell.entries;
            e.count += 1;
            e.weighted += weight;
            if error {
                e.errors += 1;
                e.weighted_errors += weight;
            }
        }
        cell.add_duration(s.duration_ns() as f64 / 1e6);
    }

    /// Counts one call from `parent` to `child` service, in the child span's minute, with
    /// the child span's duration and adjusted count.
    pub fn add_edge(
        &mut self,
        start_ns: u64,
        parent: &str,
        child: &str,
        (error, duration_ns, weight): (bool, u64, f64),
    ) {
        let callers = self.edges.entry(start_ns / 60_000_000_000).or_default();
        let callees = match callers.get_mut(parent) {
            Some(c) => c,
            None => callers.entry(parent.to_string()).or_default(),
        };
        let e = match callees.get_mut(child) {
            Some(e) => e,
            None => callees.entry(child.to_string()).or_default(),
        };
        e.count += 1;
        e.weighted += weight;
        if error {
            e.errors += 1;
            e.weighted_errors += weight;
        }
        e.add_duration(duration_ns as f64 / 1e6);
    }

    /// Service dependencies with calls in `[start_s, end_s)`, sorted by parent and child.
    pub fn dependencies(&self, start_s: u64, end_s: u64) -> Vec<Dependency> {
        Layers(vec![self]).dependencies(start_s, end_s)
    }
}

/// Rollups read together as one: their cells are summed at query time. The store keeps
/// its sealed blocks' cells in one [`Rollups`] and each head's in its own (a span is
/// counted once, in its head, whose cells join the store's when it is sealed).
pub struct Layers<'a>(pub Vec<&'a Rollups>);

impl Layers<'_> {
    /// [`Rollups::dependencies`] over every layer.
    pub fn dependencies(&self, start_s: u64, end_s: u64) -> Vec<Dependency> {
        let mut acc: BTreeMap<(String, String), Cell> = BTreeMap::new();
        for edges in self.0.iter().flat_map(|r| {
            r.edges
                .range(start_s / 60..end_s.div_ceil(60))
                .map(|(_, e)| e)
        }) {
            for (parent, children) in edges {
                for (child, cell) in children {
                    acc.entry((parent.clone(), child.clone()))
                        .or_default()
                        .merge(cell);
                }
            }
        }
        acc.into_iter()
            .map(|((parent, child), c)| {
                let sketch = c.sketch();
                let q = |p: f64| sketch.quantile(p).ok().flatten();
                let latency_ms = match (q(0.5), q(0.9), q(0.99), sketch.sum()) {
                    (Some(a), Some(b), Some(d), Some(sum)) if sketch.count() > 0 => {
                        Some([a, b, d, sum / sketch.count() as f64])
                    }
                    _ => None,
                };
                Dependency {
                    parent,
                    child,
                    calls: estimate(c.weighted),
                    errors: estimate(c.weighted_errors),
                    stored: c.count,
                    latency_ms,
                }
            })
            .collect()
    }

    /// The RED series of `service` (and `operation`, and `kind`, when given) from
    /// `start_s` to `end_s` (Unix seconds) in steps of `step_s` (a multiple of 60).
    pub fn series(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
        step_s: u64,
    ) -> Vec<RedPoint> {
        let step_m = (step_s / 60).max(1);
        let first = start_s / 60;
        let last = end_s.saturating_sub(1) / 60;
        let mut out = Vec::new();
        let mut m = first - first % step_m;
        while m <= last {
            let (acc, requests) = self.merged(
                service,
                operation,
                kind,
                m.max(first)..(m + step_m).min(last + 1),
            );
            out.push(acc.point(m * 60, &requests));
            m += step_m;
        }
        out
    }

    /// One RED point for all of `[start_s, end_s)` (its `start_s` is the range's start).
    pub fn total(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
    ) -> RedPoint {
        let minutes = start_s / 60..end_s.saturating_sub(1) / 60 + 1;
        let (acc, requests) = self.merged(service, operation, kind, minutes);
        acc.point(start_s, &requests)
    }

    /// Every cell of a service (operation, kind) in a range of minutes, merged, and the
    /// sketches of its all-entry cells merged apart (request latency).
    fn merged(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        minutes: std::ops::Range<u64>,
    ) -> (Cell, DDSketch) {
        let mut acc = Cell::default();
        let mut requests = DDSketch::new(Config::defaults());
        if minutes.is_empty() {
            return (acc, requests);
        }
        // Each (minute, operation, kind) once, with its cells from every layer: in name
        // order, not the maps', so floating-point sums (the sketches' sums, the weighted
        // counts) come out the same to the last bit on every read of the same cells,
        // whichever process or backend built the maps; and a cell's parts are summed
        // before it is judged all-entry, as one map holding them all would have.
        let mut cells: BTreeMap<(u64, &str, usize), Vec<&Cell>> = BTreeMap::new();
        for r in &self.0 {
            for (m, services) in r.minutes.range(minutes.clone()) {
                let Some(ops) = services.get(service) else {
                    continue;
                };
                for (op, kinds) in ops {
                    if operation.is_some_and(|o| o != op.as_str()) {
                        continue;
                    }
                    for (k, c) in kinds.iter().enumerate() {
                        if let Some(c) = c
                            && kind.is_none_or(|want| want as usize == k)
                        {
                            cells.entry((*m, op.as_str(), k)).or_default().push(c);
                        }
                    }
                }
            }
        }
        for parts in cells.into_values() {
            let whole;
            let c = match parts.as_slice() {
                [one] => *one,
                _ => {
                    let mut sum = Cell::default();
                    for p in &parts {
                        sum.merge(p);
                    }
                    whole = sum;
                    &whole
                }
            };
            acc.merge(c);
            if c.all_entries() {
                // Sketches made with the same config always merge.
                let _ = requests.merge(&c.sketch());
            }
        }
        (acc, requests)
    }

    /// The latency distribution of a service's requests (its all-entry operations, as
    /// [`RedPoint::request_ms`]), or of one operation, over `[start_s, end_s)`: for each
    /// upper bound in `bounds_ms` (ascending), the spans at most that long and longer than
    /// the previous bound, and a last count for the rest. Counts come from the merged
    /// sketch (1% relative accuracy on the bounds), so they sum to the exact span count.
    pub fn distribution(
        &self,
        service: &str,
        operation: Option<&str>,
        start_s: u64,
        end_s: u64,
        bounds_ms: &[f64],
    ) -> Vec<u64> {
        let (acc, requests) = self.merged(
            service,
            operation,
            None,
            start_s / 60..end_s.saturating_sub(1) / 60 + 1,
        );
        let sketch = if operation.is_some() {
            acc.sketch().into_owned()
        } else {
            requests
        };
        let n = sketch.count() as u64;
        // Rank of a value: the largest q whose quantile is at most the value.
        let rank = |v: f64| -> u64 {
            if n == 0 {
                return 0;
            }
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            if sketch.quantile(1.0).ok().flatten().is_some_and(|q| q <= v) {
                return n;
            }
            for _ in 0..30 {
                let mid = (lo + hi) / 2.0;
                match sketch.quantile(mid).ok().flatten() {
                    Some(q) if q <= v => lo = mid,
                    _ => hi = mid,
                }
            }
            (lo * n as f64).round() as u64
        };
        let mut out = Vec::with_capacity(bounds_ms.len() + 1);
        let mut below = 0u64;
        for &b in bounds_ms {
            let r = rank(b).max(below).min(n);
            out.push(r - below);
            below = r;
        }
        out.push(n - below);
        out
    }

    /// Operations of `service` seen in the rollups, with their span kinds.
    pub fn operations(&self, service: &str) -> Vec<(String, SpanKind)> {
        let mut out = std::collections::BTreeSet::new();
        for services in self.0.iter().flat_map(|r| r.minutes.values()) {
            if let Some(ops) = services.get(service) {
                for (op, kinds) in ops {
                    for (k, c) in kinds.iter().enumerate() {
                        if c.is_some() {
                            out.insert((op.clone(), k as u8));
                        }
                    }
                }
            }
        }
        out.into_iter()
            .map(|(o, k)| (o, SpanKind::from_i32(i32::from(k))))
            .collect()
    }
}

impl Rollups {
    /// Adds every cell of `other`.
    pub fn merge(&mut self, other: &Rollups) {
        for (minute, edges) in &other.edges {
            let dst = self.edges.entry(*minute).or_default();
            for (parent, children) in edges {
                let d = dst.entry(parent.clone()).or_default();
                for (child, c) in children {
                    d.entry(child.clone()).or_default().merge(c);
                }
            }
        }
        for (minute, services) in &other.minutes {
            let dst = self.minutes.entry(*minute).or_default();
            for (service, ops) in services {
                let dops = dst.entry(service.clone()).or_default();
                for (op, kinds) in ops {
                    let dkinds = dops.entry(op.clone()).or_default();
                    for (k, c) in kinds.iter().enumerate() {
                        if let Some(c) = c {
                            dkinds[k].get_or_insert_with(Box::default).merge(c);
                        }
                    }
                }
            }
        }
    }

    /// The rollups cut into parts stored and read apart (the ClickHouse backend keeps
    /// one row per part): for each minute, the cells of each service (`Some(service)`)
    /// and the minute's dependency edges (`None`). Merging every part gives back the whole.
    pub fn parts(&self) -> Vec<(u64, Option<String>, Rollups)> {
        let mut out = Vec::new();
        for (minute, services) in &self.minutes {
            for (service, ops) in services {
                let mut part = Rollups::default();
                part.minutes
                    .entry(*minute)
                    .or_default()
                    .insert(service.clone(), ops.clone());
                out.push((*minute, Some(service.clone()), part));
            }
        }
        for (minute, edges) in &self.edges {
            let mut part = Rollups::default();
            part.edges.insert(*minute, edges.clone());
            out.push((*minute, None, part));
        }
        out
    }

    /// Drops every minute before `minute` (retention).
    pub fn prune_before(&mut self, minute: u64) {
        self.minutes = self.minutes.split_off(&minute);
        self.edges = self.edges.split_off(&minute);
    }

    /// Writes the rollups to `path` durably (temporary name, fsync, rename). Blocking.
    pub fn write_path(&self, path: &Path) -> Result<(), StoreError> {
        use std::io::Write;
        let mut tmp_name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io {
                op,
                path: p,
                source,
            }
        };
        let mut f = std::fs::File::create(&tmp).map_err(io("create rollup file", &tmp))?;
        f.write_all(&self.encode())
            .map_err(io("write rollup file", &tmp))?;
        f.sync_all().map_err(io("fsync rollup file", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename rollup file", &tmp))
    }

    /// Reads a rollup file; a missing file is empty.
    pub fn read_path(path: &Path) -> Result<Self, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::decode(&bytes).map_err(|reason| StoreError::Corrupt {
                path: path.to_path_buf(),
                reason,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StoreError::Io {
                op: "read rollup file",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.edges.is_empty()
    }

    /// The RED series of `service` (and `operation`, and `kind`, when given) from
    /// `start_s` to `end_s` (Unix seconds) in steps of `step_s` (a multiple of 60).
    pub fn series(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
        step_s: u64,
    ) -> Vec<RedPoint> {
        Layers(vec![self]).series(service, operation, kind, start_s, end_s, step_s)
    }

    /// One RED point for all of `[start_s, end_s)` (its `start_s` is the range's start).
    pub fn total(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
    ) -> RedPoint {
        Layers(vec![self]).total(service, operation, kind, start_s, end_s)
    }

    /// The latency distribution of a service's requests or of one operation (see
    /// [`Layers::distribution`]).
    pub fn distribution(
        &self,
        service: &str,
        operation: Option<&str>,
        start_s: u64,
        end_s: u64,
        bounds_ms: &[f64],
    ) -> Vec<u64> {
        Layers(vec![self]).distribution(service, operation, start_s, end_s, bounds_ms)
    }

    /// Operations of `service` seen in the rollups, with their span kinds.
    pub fn operations(&self, service: &str) -> Vec<(String, SpanKind)> {
        Layers(vec![self]).operations(service)
    }

    /// Encodes the file format of the module doc.
    pub fn encode(&self) -> Vec<u8> {
        let body = self.body();
        let mut out = Vec::with_capacity(body.len() / 2 + 20);
        out.extend_from_slice(MAGIC);
        // Level 3: a block's cells (about 300 KB on varied traffic) take about a
        // millisecond; higher levels save 5% more.
        match zstd::bulk::compress(&body, 3) {
            Ok(packed) => {
                out.extend_from_slice(&VERSION.to_le_bytes());
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(&packed);
            }
            // zstd fails only when it cannot allocate its context: the same cells,
            // uncompressed, are a valid version 5 file.
            Err(_) => {
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&body);
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The cells and edges, as version 5 stores them from byte 12.
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut cells = 0u32;
        for (minute, services) in &self.minutes {
            for (service, ops) in services {
                for (op, kinds) in ops {
                    for (k, c) in kinds.iter().enumerate() {
                        let Some(c) = c else { continue };
                        cells += 1;
                        out.extend_from_slice(&minute.to_le_bytes());
                        out.push(k as u8);
                        for name in [service, op] {
                            let b = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
                            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
                            out.extend_from_slice(b);
                        }
                        out.extend_from_slice(&c.count.to_le_bytes());
                        out.extend_from_slice(&c.errors.to_le_bytes());
                        out.extend_from_slice(&c.weighted.to_le_bytes());
                        out.extend_from_slice(&c.weighted_errors.to_le_bytes());
                        let e = &c.entries;
                        out.extend_from_slice(&e.count.to_le_bytes());
                        out.extend_from_slice(&e.errors.to_le_bytes());
                        out.extend_from_slice(&e.weighted.to_le_bytes());
                        out.extend_from_slice(&e.weighted_errors.to_le_bytes());
                        let sk = c.sketch().to_java_bytes();
                        out.extend_from_slice(&(sk.len() as u32).to_le_bytes());
                        out.extend_from_slice(&sk);
                    }
                }
            }
        }
        out[0..4].copy_from_slice(&cells.to_le_bytes());
        let n_edges: usize = self
            .edges
            .values()
            .flat_map(|e| e.values())
            .map(|c| c.len())
            .sum();
        out.extend_from_slice(&(n_edges as u32).to_le_bytes());
        for (minute, edges) in &self.edges {
            for (parent, child, c) in edges
                .iter()
                .flat_map(|(p, cs)| cs.iter().map(move |(ch, c)| (p, ch, c)))
            {
                out.extend_from_slice(&minute.to_le_bytes());
                for name in [parent, child] {
                    let b = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
                    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
                    out.extend_from_slice(b);
                }
                out.extend_from_slice(&c.count.to_le_bytes());
                out.extend_from_slice(&c.errors.to_le_bytes());
                out.extend_from_slice(&c.weighted.to_le_bytes());
                out.extend_from_slice(&c.weighted_errors.to_le_bytes());
                let sk = c.sketch().to_java_bytes();
                out.extend_from_slice(&(sk.len() as u32).to_le_bytes());
                out.extend_from_slice(&sk);
            }
        }
        out
    }

    /// Decodes the file format; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 20 || &bytes[0..8] != MAGIC {
            return Err("not a faultline rollup file (bad magic)".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err("checksum mismatch".into());
        }
        let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
        if !(1..=VERSION).contains(&version) {
            return Err(format!(
                "rollup version {version} is not supported (this build reads 1 to {VERSION})"
            ));
        }
        if version < 6 {
            return Self::decode_body(&body[12..], version);
        }
        let raw = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
        if raw > MAX_BODY {
            return Err(format!(
                "the rollup body claims {raw} bytes decompressed (at most {MAX_BODY})"
            ));
        }
        let inner = zstd::bulk::decompress(&body[16..], raw)
            .map_err(|e| format!("the rollup body does not decompress: {e}"))?;
        if inner.len() != raw {
            return Err(format!(
                "the rollup body decompressed to {} bytes, its header says {raw}",
                inner.len()
            ));
        }
        Self::decode_body(&inner, 5)
    }

    /// Decodes the cells and edges of a file of `version` (5 for version 6's body), from
    /// the cell count on.
    fn decode_body(body: &[u8], version: u32) -> Result<Self, String> {
        if body.len() < 4 {
            return Err("truncated cell count".into());
        }
        let cells = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let mut r = Rollups::default();
        let mut pos = 4usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = body.get(pos..pos + n).ok_or("truncated cell")?;
            pos += n;
            Ok(s)
        };
        for _ in 0..cells {
            let mut m = [0u8; 8];
            m.copy_from_slice(take(8)?);
            let kind = take(1)?[0] as usize;
            if kind > 5 {
                return Err(format!("span kind {kind} out of range"));
            }
            let mut names = Vec::with_capacity(2);
            for _ in 0..2 {
                let l = take(2)?;
                let n = u16::from_le_bytes([l[0], l[1]]) as usize;
                names.push(String::from_utf8(take(n)?.to_vec()).map_err(|_| "name is not UTF-8")?);
            }
            let mut c = [0u8; 8];
            c.copy_from_slice(take(8)?);
            let mut e = [0u8; 8];
            e.copy_from_slice(take(8)?);
            let (count, errors) = (u64::from_le_bytes(c), u64::from_le_bytes(e));
            let (weighted, weighted_errors) = if version >= 4 {
                (f64_at(take(8)?), f64_at(take(8)?))
            } else {
                (count as f64, errors as f64)
            };
            let entries = if version >= 5 {
                let mut u = [0u8; 8];
                u.copy_from_slice(take(8)?);
                let n = u64::from_le_bytes(u);
                u.copy_from_slice(take(8)?);
                let ne = u64::from_le_bytes(u);
                Entries {
                    count: n,
                    errors: ne,
                    weighted: f64_at(take(8)?),
                    weighted_errors: f64_at(take(8)?),
                }
            } else if kind == SpanKind::Server as usize || kind == SpanKind::Consumer as usize {
                // Older files did not mark roots: their SERVER and CONSUMER spans count.
                Entries {
                    count,
                    errors,
                    weighted,
                    weighted_errors,
                }
            } else {
                Entries::default()
            };
            let l = take(4)?;
            let k = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
            let sketch =
                DDSketch::from_java_bytes(take(k)?).map_err(|e| format!("bad sketch: {e:?}"))?;
            let op = names.pop().unwrap_or_default();
            let service = names.pop().unwrap_or_default();
            let slot = r
                .minutes
                .entry(u64::from_le_bytes(m))
                .or_default()
                .entry(service)
                .or_default()
                .entry(op)
                .or_default();
            slot[kind] = Some(Box::new(Cell::stored(
                (count, errors, weighted, weighted_errors),
                entries,
                sketch,
            )));
        }
        if version >= 2 {
            let l = take(4)?;
            let n = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
            for _ in 0..n {
                let mut m = [0u8; 8];
                m.copy_from_slice(take(8)?);
                let mut names = Vec::with_capacity(2);
                for _ in 0..2 {
                    let l = take(2)?;
                    let len = u16::from_le_bytes([l[0], l[1]]) as usize;
                    names.push(
                        String::from_utf8(take(len)?.to_vec()).map_err(|_| "name is not UTF-8")?,
                    );
                }
                let mut c = [0u8; 8];
                c.copy_from_slice(take(8)?);
                let mut e = [0u8; 8];
                e.copy_from_slice(take(8)?);
                let (count, errors) = (u64::from_le_bytes(c), u64::from_le_bytes(e));
                let (weighted, weighted_errors) = if version >= 4 {
                    (f64_at(take(8)?), f64_at(take(8)?))
                } else {
                    (count as f64, errors as f64)
                };
                let sketch = if version >= 3 {
                    let l = take(4)?;
                    let k = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
                    DDSketch::from_java_bytes(take(k)?)
                        .map_err(|e| format!("bad edge sketch: {e:?}"))?
                } else {
                    DDSketch::new(Config::defaults())
                };
                let child = names.pop().unwrap_or_default();
                let parent = names.pop().unwrap_or_default();
                r.edges
                    .entry(u64::from_le_bytes(m))
                    .or_default()
                    .entry(parent)
                    .or_default()
                    .insert(
                        child,
                        Cell::stored(
                            (count, errors, weighted, weighted_errors),
                            Entries::default(),
                            sketch,
                        ),
                    );
            }
        }
        if pos != body.len() {
            return Err(format!(
                "{} unexpected bytes after the last entry",
                body.len() - pos
            ));
        }
        Ok(r)
    }

    /// Writes `BLOCKID.red` durably (temporary name, fsync, rename). Blocking.
    pub fn write_file(&self, dir: &Path, id: &str) -> Result<(), StoreError> {
        self.write_path(&dir.join(format!("{id}.red")))
    }

    /// Reads `BLOCKID.red`.
    pub fn read_file(dir: &Path, id: &str) -> Result<Self, StoreError> {
        let path = dir.join(format!("{id}.red"));
        let bytes = std::fs::read(&path).map_err(|source| StoreError::Io {
            op: "read rollup file",
            path: path.clone(),
            source,
        })?;
        Self::decode(&bytes).map_err(|reason| StoreError::Corrupt { path, reason })
    }
}

/// Builds rollups from spans that arrive in any order, finding the service-to-service
/// calls among them by matching each child to its parent by ids, as the embedded store's
/// head does for its own rollups; for writers that keep rollups outside a store (the
/// ClickHouse writer). Memory grows with the spans pushed (about 40 bytes each): start a
/// new one for each stretch of spans whose calls are matched together.
#[derive(Debug, Default)]
pub struct RollupBuilder {
    rollups: Rollups,
    services: Vec<String>,
    service_ids: Map<String, u32>,
    /// Every span pushed: its service.
    seen: Map<(TraceId, SpanId), u32>,
    /// Children whose parent has not arrived, by the parent's ids.
    waiting: Map<(TraceId, SpanId), Vec<WaitingChild>>,
}

/// A child span waiting for its parent: start, service, and (error, duration, weight).
type WaitingChild = (u64, u32, (bool, u64, f64));

impl RollupBuilder {
    /// Adds one span, weighted by its adjusted count, and the calls its arrival completes.
    pub fn push(&mut self, s: &Span) {
        let weight = faultline_model::sampling::adjusted_count(&s.attributes);
        self.rollups.add_weighted(s, weight);
        let me = self.service_id(s.service());
        if let Some(p) = s.parent_span_id {
            let call = (s.is_error(), s.duration_ns(), weight);
            match self.seen.get(&(s.trace_id, p)) {
                Some(&parent) if parent != me => {
                    let parent = self.services[parent as usize].clone();
                    self.rollups
                        .add_edge(s.start_ns, &parent, s.service(), call);
                }
                Some(_) => {}
                None => self
                    .waiting
                    .entry((s.trace_id, p))
                    .or_default()
                    .push((s.start_ns, me, call)),
            }
        }
        if let Some(children) = self.waiting.remove(&(s.trace_id, s.span_id)) {
            for (start, child, call) in children {
                if child != me {
                    let child = self.services[child as usize].clone();
                    self.rollups.add_edge(start, s.service(), &child, call);
                }
            }
        }
        self.seen.insert((s.trace_id, s.span_id), me);
    }

    /// What was built so far.
    pub fn rollups(&self) -> &Rollups {
        &self.rollups
    }

    fn service_id(&mut self, service: &str) -> u32 {
        if let Some(&id) = self.service_ids.get(service) {
            return id;
        }
        let id = self.services.len() as u32;
        self.services.push(service.to_string());
        self.service_ids.insert(service.to_string(), id);
        id
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{Origin, StatusCode};

    use super::*;

    pub(super) fn span(service: &str, op: &str, minute: u64, ms: u64, error: bool) -> Span {
        let start = minute * 60_000_000_000 + 1_000;
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: op.into(),
            kind: SpanKind::Server,
            start_ns: start,
            end_ns: start + ms * 1_000_000,
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: String::new(),
            attributes: vec![],
            events: vec![],
            links: vec![],
            origin: Arc::new(Origin {
                service: service.into(),
                ..Origin::default()
            }),
        }
    }

    #[test]
    fn the_builder_finds_calls_in_any_arrival_order_and_parts_merge_back() {
        // A trace: frontend -> cart -> cart (internal) -> db, over two minutes.
        let mk = |svc: &str, id: u8, parent: Option<u8>, minute: u64, ms: u64| {
            let mut s = span(svc, "op", minute, ms, svc == "db");
            s.span_id = [id; 8];
            s.parent_span_id = parent.map(|p| [p; 8]);
            s
        };
        let spans = [
            mk("frontend", 1, None, 1000, 40),
            mk("cart", 2, Some(1), 1000, 30),
            mk("cart", 3, Some(2), 1001, 20),
            mk("db", 4, Some(3), 1001, 5),
        ];
        let deps = |r: &Rollups| {
            r.dependencies(1000 * 60, 1002 * 60)
                .into_iter()
                .map(|d| (d.parent, d.child, d.calls, d.errors))
                .collect::<Vec<_>>()
        };
        let want = vec![
            ("cart".to_string(), "db".to_string(), 1, 1),
            ("frontend".to_string(), "cart".to_string(), 1, 0),
        ];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let mut b = RollupBuilder::default();
            for i in order {
                b.push(&spans[i]);
            }
            assert_eq!(deps(b.rollups()), want, "order {order:?}");
            let parts = b.rollups().parts();
            // Two services in minute 1000, two in 1001, edges in both minutes.
            assert_eq!(parts.len(), 6, "order {order:?}");
            let mut whole = Rollups::default();
            for (_, _, p) in &parts {
                whole.merge(p);
            }
            assert_eq!(deps(&whole), want);
            let total = |r: &Rollups, svc| r.total(svc, None, None, 1000 * 60, 1002 * 60);
            for svc in ["frontend", "cart", "db"] {
                assert_eq!(total(&whole, svc), total(b.rollups(), svc), "{svc}");
            }
            assert_eq!(total(&whole, "cart").count, 2);
        }
    }

    #[test]
    fn the_same_cells_answer_the_same_floats_on_every_decoding() {
        // Durations with fractions of a millisecond in many operations: summed in the
        // maps' order (random per map), the mean differed in its last bits.
        let mut r = Rollups::default();
        for op in 0..60u64 {
            for i in 0..5u64 {
                let mut s = span("cart", &format!("op-{op}"), 1000, 1, false);
                s.end_ns = s.start_ns + 1_000_000 + op * 7_919_777 + i * 104_729_311;
                r.add(&s);
            }
        }
        let bytes = r.encode();
        let answers: std::collections::HashSet<String> = (0..20)
            .map(|_| {
                let d = Rollups::decode(&bytes).unwrap();
                let t = d.total("cart", None, None, 1000 * 60, 1001 * 60);
                format!("{:?} {:?}", t.mean_ms.map(f64::to_bits), t.p99_ms)
            })
            .collect();
        assert_eq!(answers.len(), 1, "{answers:?}");
    }

    #[test]
    fn durations_held_back_read_as_if_each_was_added() {
        // A cell keeps up to PENDING durations out of its sketch: every read, the file and
        // a merge must count them. Counts on each side of a batch, edges alike, and a
        // merge of two cells that both hold some back.
        let ms = |i: usize, salt: u64| 1 + (i as u64 * 7_919 + salt) % 997;
        let minute = 1000u64;
        for n in [1, PENDING - 1, PENDING, PENDING + 1, 3 * PENDING + 5] {
            let (mut a, mut b) = (Rollups::default(), Rollups::default());
            let (mut want_a, mut want_b) = (
                DDSketch::new(Config::defaults()),
                DDSketch::new(Config::defaults()),
            );
            for i in 0..n {
                a.add(&span("cart", "GET", minute, ms(i, 0), false));
                a.add_edge(
                    minute * 60_000_000_000,
                    "web",
                    "cart",
                    (false, ms(i, 0) * 1_000_000, 1.0),
                );
                want_a.add(ms(i, 0) as f64);
            }
            for i in 0..PENDING + 3 {
                b.add(&span("cart", "GET", minute, ms(i, 5), false));
                want_b.add(ms(i, 5) as f64);
            }
            let range = (minute * 60, (minute + 1) * 60);
            let check = |r: &Rollups, want: &DDSketch, what: &str| {
                let t = r.total("cart", None, None, range.0, range.1);
                let q = |p: f64| want.quantile(p).unwrap();
                assert_eq!(t.stored as usize, want.count(), "{what}: {n} spans");
                assert_eq!(
                    (t.p50_ms, t.p90_ms, t.p99_ms),
                    (q(0.5), q(0.9), q(0.99)),
                    "{what}: {n} spans"
                );
                assert_eq!(
                    t.mean_ms.map(f64::to_bits),
                    want.sum().map(|s| (s / want.count() as f64).to_bits()),
                    "{what}: {n} spans"
                );
                let cell = r.minutes[&minute]["cart"]["GET"][SpanKind::Server as usize]
                    .as_ref()
                    .unwrap();
                assert_eq!(
                    cell.sketch().to_java_bytes(),
                    want.to_java_bytes(),
                    "{what}: {n} spans"
                );
            };
            check(&a, &want_a, "added");
            let deps = a.dependencies(range.0, range.1);
            assert_eq!(deps.len(), 1);
            let latency = deps[0].latency_ms.unwrap();
            assert_eq!(
                latency[..3],
                [0.5, 0.9, 0.99].map(|p| want_a.quantile(p).unwrap().unwrap()),
                "edge of {n} calls"
            );
            let decoded = Rollups::decode(&a.encode()).unwrap();
            check(&decoded, &want_a, "decoded");
            assert_eq!(decoded.dependencies(range.0, range.1), deps);
            b.merge(&a);
            let _ = want_b.merge(&want_a);
            check(&b, &want_b, "merged");
        }
    }

    #[test]
    fn series_counts_errors_and_quantiles() {
        let mut r = Rollups::default();
        for i in 1..=100u64 {
            r.add(&span("cart", "GET", 1000, i, i % 10 == 0));
            r.add(&span("cart", "POST", 1001, 500, false));
        }
        r.add(&span("other", "GET", 1000, 7, false));
        let s = r.series("cart", None, None, 1000 * 60, 1002 * 60, 60);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].count, s[0].errors), (100, 10));
        let p50 = s[0].p50_ms.unwrap();
        assert!((49.0..=52.0).contains(&p50), "p50 {p50} within 1%");
        assert!((98.0..=101.0).contains(&s[0].p99_ms.unwrap()));
        assert!((s[0].mean_ms.unwrap() - 50.5).abs() < 1e-6, "exact mean");
        assert_eq!(s[1].count, 100);
        let one = r.series(
            "cart",
            Some("GET"),
            Some(SpanKind::Server),
            1000 * 60,
            1002 * 60,
            120,
        );
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].count, 100, "operation filter");
        assert_eq!(
            r.series(
                "cart",
                None,
                Some(SpanKind::Client),
                1000 * 60,
                1001 * 60,
                60
            )[0]
            .count,
            0
        );
        assert_eq!(r.operations("cart").len(), 2);
    }

    #[test]
    fn file_round_trip_and_corruption() {
        let mut r = Rollups::default();
        for i in 0..50u64 {
            r.add(&span("svc", "op", 7 + i % 3, i + 1, i % 5 == 0));
        }
        let bytes = r.encode();
        let back = Rollups::decode(&bytes).unwrap();
        assert_eq!(
            back.series("svc", None, None, 0, 20 * 60, 60),
            r.series("svc", None, None, 0, 20 * 60, 60)
        );
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(Rollups::decode(&bad).unwrap_err().contains("checksum"));
        assert!(Rollups::decode(b"nonsense").is_err());
        let mut merged = Rollups::default();
        merged.merge(&r);
        merged.merge(&back);
        assert_eq!(
            merged.series("svc", None, None, 0, 20 * 60, 1200)[0].count,
            100
        );
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod edge_tests {
    use super::tests::span;
    use super::*;
    #[test]
    fn edges_round_trip_with_their_latency() {
        let mut r = Rollups::default();
        for ms in 1..=100u64 {
            r.add_edge(1_000, "a", "b", (ms % 10 == 0, ms * 1_000_000, 1.0));
        }
        let back = Rollups::decode(&r.encode()).unwrap();
        let deps = back.dependencies(0, 120);
        assert_eq!(deps.len(), 1);
        let d = &deps[0];
        assert_eq!((d.calls, d.errors), (100, 10));
        let [p50, p90, p99, mean] = d.latency_ms.unwrap();
        assert!((p50 - 50.0).abs() <= 1.0, "{p50}");
        assert!((p90 - 90.0).abs() <= 1.5, "{p90}");
        assert!((p99 - 99.0).abs() <= 1.5, "{p99}");
        assert!((mean - 50.5).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn distribution_counts_every_span_into_the_right_bucket() {
        let mut r = Rollups::default();
        let origin = std::sync::Arc::new(faultline_model::span::Origin {
            service: "svc".into(),
            ..Default::default()
        });
        // 100 spans of 1..=100 ms in minute 0.
        for ms in 1..=100u64 {
            r.add(&Span {
                trace_id: [1; 16],
                span_id: [ms as u8; 8],
                parent_span_id: None,
                name: "op".into(),
                kind: SpanKind::Server,
                start_ns: 1_000,
                end_ns: 1_000 + ms * 1_000_000,
                status: faultline_model::span::StatusCode::Unset,
                status_message: String::new(),
                attributes: Vec::new(),
                events: Vec::new(),
                links: Vec::new(),
                origin: origin.clone(),
            });
        }
        let d = r.distribution("svc", None, 0, 60, &[10.5, 50.5, 90.5]);
        assert_eq!(d.iter().sum::<u64>(), 100);
        for (got, want) in d.iter().zip([10u64, 40, 40, 10]) {
            assert!(got.abs_diff(want) <= 1, "{d:?}");
        }
        assert_eq!(r.distribution("nobody", None, 0, 60, &[1.0]), vec![0, 0]);
    }

    #[test]
    fn request_latency_leaves_client_and_internal_spans_out() {
        use super::tests::span;
        let mut r = Rollups::default();
        // 100 requests of 100..199 ms; each makes a 1 ms client call and 1 ms of work.
        for i in 0..100u64 {
            let mut server = span("api", "GET /", 1000, 100 + i, false);
            server.kind = SpanKind::Server;
            server.parent_span_id = Some([9; 8]);
            r.add(&server);
            for kind in [SpanKind::Client, SpanKind::Internal] {
                let mut s = span("api", "call", 1000, 1, false);
                s.kind = kind;
                s.parent_span_id = Some([1; 8]);
                r.add(&s);
            }
        }
        let t = r.total("api", None, None, 1000 * 60, 1001 * 60);
        assert_eq!((t.count, t.requests), (300, 100));
        let [p50, _, p99] = t.request_ms.unwrap();
        assert!((148.0..=152.0).contains(&p50), "request p50 {p50}");
        assert!((196.0..=201.0).contains(&p99), "request p99 {p99}");
        assert!(t.p50_ms.unwrap() < 2.0, "all spans: two thirds are 1 ms");
        let d = r.distribution("api", None, 1000 * 60, 1001 * 60, &[10.0]);
        assert_eq!(d, vec![0, 100], "the distribution is of the requests");
        assert_eq!(
            r.total(
                "api",
                Some("call"),
                Some(SpanKind::Client),
                1000 * 60,
                1001 * 60
            )
            .request_ms,
            None
        );
    }

    /// Cells spread over layers answer as one map holding them all: every query, on
    /// spans split at random over three layers, among them operations that are entries on
    /// some spans only (a cell's parts are judged all-entry together, not apart).
    #[test]
    fn layers_answer_as_their_cells_merged() {
        use super::tests::span;
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut layers = [Rollups::default(), Rollups::default(), Rollups::default()];
        let mut whole = Rollups::default();
        let svcs = ["api", "cart", "db"];
        for i in 0..3_000u64 {
            let svc = svcs[next(3) as usize];
            let op = ["GET /", "call", "work"][next(3) as usize];
            let mut s = span(svc, op, 1000 + next(5), 1 + next(400), next(20) == 0);
            s.kind = [SpanKind::Server, SpanKind::Client, SpanKind::Internal][next(3) as usize];
            // Internal spans are roots (entries) on some spans and children on others.
            s.parent_span_id = (next(2) == 0).then_some([i as u8; 8]);
            let weight = [1.0, 1.0, 4.0][next(3) as usize];
            let l = next(3) as usize;
            layers[l].add_weighted(&s, weight);
            whole.add_weighted(&s, weight);
            let callee = svcs[next(3) as usize];
            if callee != svc {
                let call = (next(10) == 0, 1 + next(100) * 1_000_000, weight);
                layers[l].add_edge(s.start_ns, svc, callee, call);
                whole.add_edge(s.start_ns, svc, callee, call);
            }
        }
        let view = Layers(layers.iter().collect());
        let one = Layers(vec![&whole]);
        let (from, to) = (1000 * 60, 1005 * 60);
        for svc in svcs {
            assert_eq!(view.operations(svc), one.operations(svc), "{svc}");
            for op in [None, Some("GET /"), Some("call"), Some("work")] {
                for kind in [None, Some(SpanKind::Server), Some(SpanKind::Internal)] {
                    let (a, b) = (
                        view.series(svc, op, kind, from, to, 120),
                        one.series(svc, op, kind, from, to, 120),
                    );
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{svc} {op:?} {kind:?}");
                    let (a, b) = (
                        view.total(svc, op, kind, from, to),
                        one.total(svc, op, kind, from, to),
                    );
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{svc} {op:?} {kind:?}");
                }
                let bounds = [5.0, 50.0, 200.0];
                assert_eq!(
                    view.distribution(svc, op, from, to, &bounds),
                    one.distribution(svc, op, from, to, &bounds),
                    "{svc} {op:?}"
                );
            }
        }
        // Calls exactly; the mean latency to rounding (the sketches' sums add in another
        // order, as they do when a restart merges the block files).
        let (a, b) = (view.dependencies(from, to), one.dependencies(from, to));
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            let key = |d: &Dependency| {
                (
                    d.parent.clone(),
                    d.child.clone(),
                    d.calls,
                    d.errors,
                    d.stored,
                )
            };
            assert_eq!(key(a), key(b));
            let (la, lb) = (a.latency_ms.unwrap(), b.latency_ms.unwrap());
            assert_eq!(la[..3], lb[..3], "quantiles of {} -> {}", a.parent, a.child);
            assert!((la[3] - lb[3]).abs() < 1e-9 * lb[3], "mean {la:?} {lb:?}");
        }
        // The comparison compares something: requests and calls were counted.
        let t = one.total("api", None, None, from, to);
        assert!(
            t.count > 500 && t.requests > 100 && t.request_ms.is_some(),
            "{t:?}"
        );
        assert_eq!(one.dependencies(from, to).len(), 6);
    }

    /// Version 5 files (the same body, uncompressed) still read; version 6 is smaller on
    /// cells that repeat names; a body whose claimed size is a lie is refused by name.
    #[test]
    fn version_5_files_read_and_version_6_is_compressed() {
        let mut r = Rollups::default();
        for i in 0..400u64 {
            r.add(&span(
                &format!("svc-{}", i % 7),
                &format!("GET /api/item/{}", i % 13),
                7 + i % 5,
                i + 1,
                i % 9 == 0,
            ));
        }
        r.add_edge(7 * 60 * 1_000_000_000, "a", "b", (true, 5_000_000, 2.0));
        let body = r.body();
        let mut v5 = Vec::new();
        v5.extend_from_slice(MAGIC);
        v5.extend_from_slice(&5u32.to_le_bytes());
        v5.extend_from_slice(&body);
        let crc = crc32c::crc32c(&v5);
        v5.extend_from_slice(&crc.to_le_bytes());
        let v6 = r.encode();
        assert_eq!(u32::from_le_bytes([v6[8], v6[9], v6[10], v6[11]]), 6);
        assert!(v6.len() * 2 < v5.len(), "{} against {}", v6.len(), v5.len());
        for bytes in [&v5, &v6] {
            let back = Rollups::decode(bytes).unwrap();
            for i in 0..7 {
                let svc = format!("svc-{i}");
                assert_eq!(
                    back.series(&svc, None, None, 0, 20 * 60, 60),
                    r.series(&svc, None, None, 0, 20 * 60, 60)
                );
                assert_eq!(back.operations(&svc), r.operations(&svc));
            }
            assert_eq!(r.dependencies(0, 3600).len(), 1);
            assert_eq!(back.dependencies(0, 3600), r.dependencies(0, 3600));
        }
        let lie = |raw: u32| {
            let mut b = v6[..v6.len() - 4].to_vec();
            b[12..16].copy_from_slice(&raw.to_le_bytes());
            let crc = crc32c::crc32c(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            Rollups::decode(&b).unwrap_err()
        };
        assert!(lie(u32::MAX).contains("at most"), "{}", lie(u32::MAX));
        assert!(
            lie(body.len() as u32 - 1).contains("rollup body"),
            "{}",
            lie(body.len() as u32 - 1)
        );
        assert!(
            lie(body.len() as u32 + 1).contains("rollup body"),
            "{}",
            lie(body.len() as u32 + 1)
        );
    }

    #[test]
    fn version_2_edges_are_read_without_latency() {
        let mut r = Rollups::default();
        r.add_edge(1_000, "a", "b", (false, 5_000_000, 1.0));
        // A version 2 file: the same layout without edge sketches.
        let mut v2 = Vec::new();
        v2.extend_from_slice(MAGIC);
        v2.extend_from_slice(&2u32.to_le_bytes());
        v2.extend_from_slice(&0u32.to_le_bytes());
        v2.extend_from_slice(&1u32.to_le_bytes());
        v2.extend_from_slice(&0u64.to_le_bytes());
        for name in ["a", "b"] {
            v2.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v2.extend_from_slice(name.as_bytes());
        }
        v2.extend_from_slice(&3u64.to_le_bytes());
        v2.extend_from_slice(&1u64.to_le_bytes());
        let crc = crc32c::crc32c(&v2);
        v2.extend_from_slice(&crc.to_le_bytes());
        let back = Rollups::decode(&v2).unwrap();
        let d = &back.dependencies(0, 120)[0];
        assert_eq!((d.calls, d.errors, d.latency_ms), (3, 1, None));
    }

    #[test]
    fn requests_are_entry_spans_and_survive_the_file() {
        use super::tests::span as base;
        let mut r = Rollups::default();
        let child = |kind: SpanKind, error: bool| Span {
            kind,
            parent_span_id: Some([1; 8]),
            ..base("svc", "op", 0, 5, error)
        };
        // Entries: a SERVER child, a CONSUMER child, an INTERNAL root (failing).
        r.add(&child(SpanKind::Server, false));
        r.add(&child(SpanKind::Consumer, true));
        r.add(&Span {
            kind: SpanKind::Internal,
            ..base("svc", "job", 0, 5, true)
        });
        // Not entries: CLIENT and INTERNAL children.
        r.add(&child(SpanKind::Client, true));
        r.add(&child(SpanKind::Internal, false));
        let check = |r: &Rollups| {
            let t = r.total("svc", None, None, 0, 60);
            assert_eq!((t.requests, t.request_errors, t.stored_requests), (3, 2, 3));
            assert_eq!((t.count, t.errors), (5, 3));
            let server = r.total("svc", None, Some(SpanKind::Server), 0, 60);
            assert_eq!(server.requests, 1);
        };
        check(&r);
        check(&Rollups::decode(&r.encode()).unwrap());
    }
}
