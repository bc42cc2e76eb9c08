//! The embedded store: a head of recent spans in memory, sealed Parquet blocks on disk,
//! and the manifest that ties them to a position in the WAL.
//!
//! Data flow: the consumer (the binary's pipeline) calls [`Store::ingest`] with the spans
//! of each WAL record and its sequence number; spans are queryable from the head at once.
//! When the head is large or old enough ([`Store::should_seal`]), [`Store::seal`] writes it
//! as a block, publishes a new manifest whose `source_seq` is the last WAL record in the
//! block, and only then drops the head. The consumer may then truncate the WAL before
//! [`Store::durable_seq`] + 1.
//!
//! **Invariant:** every span acknowledged by intake is in the WAL after `durable_seq`, in
//! the head, or in a block listed in the manifest; a crash at any point leaves the
//! manifest naming only complete blocks, and replay from `durable_seq + 1` rebuilds the
//! head.
//!
//! **Invariant:** start-up never fails because of a bad block: an unreadable block is moved
//! to `blocks/quarantine/`, reported, and every answer that could have used it says it is
//! partial.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use faultline_model::span::{Span, TraceId};

use faultline_model::span::SpanKind;

use crate::block::{self, BlockReader};
use crate::error::StoreError;
use crate::locs::TraceLocs;
use crate::manifest::{BlockMeta, Manifest};
use crate::rollup::{RedPoint, Rollups};
use crate::search::{Agg, BlockIndex, MAX_VERIFY_TRACES, TopK, TraceQuery, TraceSummary};
use crate::seqs::SeqRanges;
use roaring::RoaringBitmap;

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Directory of blocks and the manifest (`DATA_DIR/blocks`).
    pub dir: PathBuf,
    /// Seal the head once it holds this many spans.
    pub block_max_spans: usize,
    /// Seal the head once its oldest span arrived this long ago.
    pub block_max_age: Duration,
    /// Delete blocks whose spans all ended longer ago than this.
    pub retention: Duration,
    /// Delete the oldest blocks while the blocks take more bytes than this.
    pub max_bytes: u64,
    /// Crash tests only: called at the points where a crash leaves files behind that no
    /// manifest lists yet (or that the manifest no longer lists); an error stops the
    /// operation there, as a crash would.
    pub fault: Option<FaultHook>,
}

/// Where [`StoreOptions::fault`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// A sealed block's files are written and fsynced; the manifest does not list it yet.
    SealBeforeManifest,
    /// A compacted block's files are written; the manifest still lists the old blocks.
    CompactBeforeManifest,
    /// The manifest no longer lists retired blocks; their files are not deleted yet.
    RetentionBeforeDelete,
}

/// A fault hook (see [`StoreOptions::fault`]).
#[derive(Clone)]
pub struct FaultHook(pub Arc<dyn Fn(FaultPoint) -> std::io::Result<()> + Send + Sync>);

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

impl StoreOptions {
    /// Defaults for a data directory.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("blocks"),
            block_max_spans: 250_000,
            block_max_age: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_bytes: u64::MAX,
            fault: None,
        }
    }

    /// Runs the fault hook at `point`, if any.
    pub(crate) fn fault(&self, point: FaultPoint) -> Result<(), StoreError> {
        match &self.fault {
            Some(hook) => (hook.0)(point).map_err(|source| StoreError::Io {
                op: "continue (fault injected) in",
                path: self.dir.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Whether an answer covers everything it should, and if not, why not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completeness {
    /// Reasons the answer may be missing data; empty when complete.
    pub reasons: Vec<String>,
}

impl Completeness {
    /// True when nothing is missing.
    pub fn is_complete(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// The spans of one trace.
#[derive(Debug, Clone)]
pub struct TraceAnswer {
    /// Spans ordered by start time (empty when the trace is unknown).
    pub spans: Vec<Span>,
    /// Whether the answer is complete.
    pub completeness: Completeness,
}

/// Read access to stored spans; the query layer depends on this trait only, so another
/// backend (ClickHouse) can stand behind it.
pub trait SpanStore: Send + Sync {
    /// One trace by id.
    fn trace(&self, trace_id: &TraceId) -> Result<TraceAnswer, StoreError>;
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
}

#[derive(Default)]
struct Head {
    /// RED cells of the head's spans, written beside the block when it is sealed.
    rollups: Rollups,
    spans: Vec<Span>,
    by_trace: HashMap<TraceId, Vec<u32>>,
    /// Span positions by (trace, span id), to find parents for dependency edges.
    by_span: HashMap<(TraceId, faultline_model::span::SpanId), u32>,
    /// Spans whose parent has not arrived yet, by (trace, parent span id).
    waiting: HashMap<(TraceId, faultline_model::span::SpanId), Vec<u32>>,
    services: BTreeSet<String>,
    /// Highest sequence number of a record in this head (names the block).
    max_seq: u64,
    /// Every record up to this one that is not pending was ingested into this head or an
    /// earlier one: the manifest's `source_seq` once this head is sealed.
    in_order: u64,
    /// Pending (backlog) records ingested into this head.
    backlog: SeqRanges,
    /// Pending ranges whose replay finished before or in this head: once it is sealed,
    /// nothing in them is pending any more (numbers without a record included).
    finished: SeqRanges,
    started: Option<Instant>,
}

/// The manifest once `head` is durable, and (in `pending`) what is still pending then.
/// Heads are sealed one at a time and in order, so everything an earlier head held is
/// durable already.
fn advanced(manifest: &Manifest, pending: &mut SeqRanges, head: &Head) -> Manifest {
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

/// A call between services found while ingesting: child start, parent service, child
/// service, child is an error, child duration.
type Edge = (u64, String, String, bool, u64);

impl Head {
    /// Adds spans; returns the service-to-service calls their arrival completed.
    fn push(&mut self, seq: u64, spans: Vec<Span>) -> Vec<Edge> {
        if self.started.is_none() && !spans.is_empty() {
            self.started = Some(Instant::now());
        }
        let mut edges = Vec::new();
        for s in spans {
            self.rollups.add(&s);
            let idx = self.spans.len() as u32;
            if let Some(p) = s.parent_span_id {
                match self.by_span.get(&(s.trace_id, p)) {
                    Some(&pi) => {
                        let parent = &self.spans[pi as usize];
                        if parent.service() != s.service() {
                            edges.push((
                                s.start_ns,
                                parent.service().to_string(),
                                s.service().to_string(),
                                s.is_error(),
                                s.duration_ns(),
                            ));
                        }
                    }
                    None => self.waiting.entry((s.trace_id, p)).or_default().push(idx),
                }
            }
            if let Some(children) = self.waiting.remove(&(s.trace_id, s.span_id)) {
                for ci in children {
                    let child = &self.spans[ci as usize];
                    if child.service() != s.service() {
                        edges.push((
                            child.start_ns,
                            s.service().to_string(),
                            child.service().to_string(),
                            child.is_error(),
                            child.duration_ns(),
                        ));
                    }
                }
            }
            self.by_span.insert((s.trace_id, s.span_id), idx);
            self.by_trace.entry(s.trace_id).or_default().push(idx);
            if !self.services.contains(s.service()) {
                self.services.insert(s.service().to_string());
            }
            self.spans.push(s);
        }
        for (start, p, c, err, dur) in &edges {
            self.rollups.add_edge(*start, p, c, *err, *dur);
        }
        self.max_seq = self.max_seq.max(seq);
        edges
    }

    /// Removes from `pending` what this head makes durable once it is sealed.
    fn settle(&self, pending: &mut SeqRanges) {
        pending.subtract(&self.backlog);
        pending.subtract(&self.finished);
    }

    /// Takes over a newer head's spans and positions (after a failed seal).
    fn absorb(&mut self, newer: Head) {
        let _ = self.push(newer.max_seq, newer.spans);
        self.in_order = self.in_order.max(newer.in_order);
        self.backlog.union(&newer.backlog);
        self.finished.union(&newer.finished);
    }

    fn trace(&self, id: &TraceId, out: &mut Vec<Span>) {
        if let Some(rows) = self.by_trace.get(id) {
            out.extend(rows.iter().map(|&i| self.spans[i as usize].clone()));
        }
    }

    /// Adds the head's traces matching `q` to `top` (source `HEAD + found.len()`), keeping
    /// their summaries in `found`; traces for which `is_split` holds (spans elsewhere too)
    /// add this part's findings to `agg` instead. Exact: reads the spans.
    fn search(
        &self,
        q: &TraceQuery,
        top: &mut TopK,
        found: &mut Vec<TraceSummary>,
        agg: &mut HashMap<TraceId, Agg>,
        is_split: &dyn Fn(&TraceId) -> bool,
    ) {
        let mut refs: Vec<&Span> = Vec::new();
        for (id, rows) in &self.by_trace {
            refs.clear();
            refs.extend(rows.iter().map(|&i| &self.spans[i as usize]));
            if is_split(id) {
                let mut part = Agg {
                    mask: q.part_mask(&refs),
                    ..Agg::default()
                };
                for s in &refs {
                    part.start_ns = part.start_ns.min(s.start_ns);
                    part.end_ns = part.end_ns.max(s.end_ns.max(s.start_ns));
                    part.errors += u32::from(s.is_error());
                }
                agg.entry(*id).or_default().merge(&part);
                continue;
            }
            let start = refs.iter().map(|s| s.start_ns).min().unwrap_or(0);
            let end = refs
                .iter()
                .map(|s| s.end_ns.max(s.start_ns))
                .max()
                .unwrap_or(0);
            if start > q.end_ns || end < q.start_ns || !top.would_take(q.sort.key(start, end)) {
                continue;
            }
            let Some(summary) = TraceSummary::of_refs(&refs) else {
                continue;
            };
            if q.trace_matches(&refs, &summary) {
                top.push(q.sort.key(start, end), HEAD + found.len(), 0);
                found.push(summary);
            }
        }
    }
}

/// Sources at or above this in a [`TopK`] are head traces (see [`Head::search`]).
const HEAD: usize = usize::MAX / 2;
/// Sources at or above this are traces stored in several places.
const SPLIT: usize = usize::MAX / 4 * 3;

struct Sealed {
    meta: BlockMeta,
    reader: BlockReader,
    services: BTreeSet<String>,
    /// The search index: set at seal, or by the loader thread after a restart.
    index: OnceLock<BlockIndex>,
    /// Why the search index could not be loaded, if it could not.
    index_error: OnceLock<String>,
    /// Number of the block in this process (for [`TraceLocs`]).
    serial: u32,
    /// Ordinals of its traces that also have spans elsewhere (another block or a head).
    split: Mutex<RoaringBitmap>,
}

struct Inner {
    head: Head,
    /// Heads being written, oldest first; still queryable.
    sealing: Vec<Arc<Head>>,
    blocks: Vec<Arc<Sealed>>,
    manifest: Manifest,
    quarantined: Vec<String>,
    /// RED cells of every span: the blocks' rollup files plus everything ingested since.
    rollups: Rollups,
    /// Trace id → blocks holding it.
    locs: TraceLocs,
    /// Traces with spans in more than one place (blocks, heads); searched as a whole.
    split: HashSet<TraceId>,
    next_serial: u32,
    /// Backlog records not yet in durable blocks: the manifest's pending ranges plus those
    /// deferred since, minus those sealed since.
    pending: SeqRanges,
}

impl Inner {
    fn in_heads(&self, id: &TraceId) -> usize {
        usize::from(self.head.by_trace.contains_key(id))
            + self
                .sealing
                .iter()
                .filter(|h| h.by_trace.contains_key(id))
                .count()
    }

    fn block_by_serial(&self, serial: u32) -> Option<&Arc<Sealed>> {
        self.blocks.iter().find(|b| b.serial == serial)
    }

    /// Marks `id` as stored in several places, in every block holding it.
    fn mark_split(&mut self, id: &TraceId) {
        self.split.insert(*id);
        for &serial in self.locs.get(id) {
            if let Some(b) = self.block_by_serial(serial)
                && let Some(ord) = b.reader.ordinal(id)
                && let Ok(mut bits) = b.split.lock()
            {
                bits.insert(ord as u32);
            }
        }
    }

    /// Adds a block (already in `blocks`) to the trace locations.
    fn register(&mut self, b: &Arc<Sealed>) {
        for ord in 0..b.reader.traces() {
            let Some(id) = b.reader.trace_id_at(ord) else {
                continue;
            };
            let elsewhere = self.locs.add(&id, b.serial);
            if elsewhere || self.in_heads(&id) > 0 || self.split.contains(&id) {
                self.mark_split(&id);
            }
        }
    }

    /// Removes a block (already gone from `blocks`) from the trace locations; traces left
    /// in one place are whole again.
    fn unregister(&mut self, b: &Sealed) {
        for ord in 0..b.reader.traces() {
            let Some(id) = b.reader.trace_id_at(ord) else {
                continue;
            };
            self.locs.remove(&id, b.serial);
            if !self.split.contains(&id) {
                continue;
            }
            let places: Vec<u32> = self.locs.get(&id).to_vec();
            let holders: Vec<&Arc<Sealed>> = places
                .iter()
                .filter_map(|&s| self.block_by_serial(s))
                .filter(|b| b.reader.contains(&id))
                .collect();
            if holders.len() + self.in_heads(&id) <= 1 {
                for h in holders {
                    if let (Some(ord), Ok(mut bits)) = (h.reader.ordinal(&id), h.split.lock()) {
                        bits.remove(ord as u32);
                    }
                }
                self.split.remove(&id);
            }
        }
    }
}

/// What opening the store found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Blocks opened.
    pub blocks: usize,
    /// Spans in them.
    pub spans: u64,
    /// Blocks moved to quarantine, with the reason.
    pub quarantined: Vec<String>,
    /// Unlisted block files deleted (left by a crash before the manifest was published).
    pub removed_orphans: usize,
}

/// The embedded store.
pub struct Store {
    opts: StoreOptions,
    inner: RwLock<Inner>,
    seal_lock: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.opts.dir)
            .finish()
    }
}

/// The files of a block, by extension.
const BLOCK_FILES: [&str; 4] = ["parquet", "tidx", "sidx", "red"];

/// Rollups of blocks evicted for space (see `rollup.rs`).
const ARCHIVE: &str = "archive.rollup";

fn lock_err() -> StoreError {
    StoreError::Encode("store lock poisoned by a panic in another thread".into())
}

impl Store {
    /// Opens the store in `opts.dir`: loads the manifest, opens its blocks (quarantining
    /// unreadable ones) and deletes files no manifest lists. Blocking.
    pub fn open(opts: StoreOptions) -> Result<(Self, OpenReport), StoreError> {
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let manifest = Manifest::load(&dir)?;
        let mut report = OpenReport::default();
        let mut blocks = Vec::new();
        let mut quarantined = Vec::new();
        let listed: BTreeSet<&str> = manifest.blocks.iter().map(|b| b.id.as_str()).collect();
        for entry in std::fs::read_dir(&dir).map_err(|source| StoreError::Io {
            op: "list",
            path: dir.clone(),
            source,
        })? {
            let entry = entry.map_err(|source| StoreError::Io {
                op: "list",
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or_default();
            let is_block_file = name.ends_with(".parquet")
                || name.ends_with(".tidx")
                || name.ends_with(".sidx")
                || name.ends_with(".red")
                || name.ends_with(".tmp");
            if is_block_file
                && name != "manifest.json.tmp"
                && (!listed.contains(stem) || name.ends_with(".tmp"))
            {
                tracing::warn!(file = %entry.path().display(), "deleting a block file no manifest lists (left by a crash; its spans are replayed from the WAL)");
                let _ = std::fs::remove_file(entry.path());
                report.removed_orphans += 1;
            }
        }
        let mut rollups = match Rollups::read_path(&dir.join(ARCHIVE)) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!(
                    "archived RED rollups are unreadable ({e}); RED answers miss evicted blocks"
                );
                tracing::error!(%reason);
                quarantined.push(reason);
                Rollups::default()
            }
        };
        for meta in &manifest.blocks {
            match BlockReader::open(&dir, &meta.id) {
                Ok(reader) => {
                    match Rollups::read_file(&dir, &meta.id) {
                        Ok(r) => rollups.merge(&r),
                        Err(e) => {
                            let reason = format!(
                                "RED rollups of block {} are unreadable ({e}); RED answers miss its {} spans",
                                meta.id, meta.spans
                            );
                            tracing::error!(%reason);
                            quarantined.push(reason);
                        }
                    }
                    report.blocks += 1;
                    report.spans += meta.spans;
                    blocks.push(Arc::new(Sealed {
                        services: meta.services.iter().cloned().collect(),
                        meta: meta.clone(),
                        reader,
                        index: OnceLock::new(),
                        index_error: OnceLock::new(),
                        serial: blocks.len() as u32,
                        split: Mutex::new(RoaringBitmap::new()),
                    }));
                }
                Err(e) => {
                    let reason = format!(
                        "block {} ({} spans) is unreadable and was quarantined: {e}",
                        meta.id, meta.spans
                    );
                    tracing::error!(%reason);
                    quarantine(&dir, &meta.id);
                    report.quarantined.push(reason.clone());
                    quarantined.push(reason);
                }
            }
        }
        let mut inner = Inner {
            head: Head::default(),
            sealing: Vec::new(),
            next_serial: blocks.len() as u32,
            blocks: blocks.clone(),
            manifest: manifest.clone(),
            quarantined,
            rollups,
            locs: TraceLocs::default(),
            split: HashSet::new(),
            pending: manifest.pending.clone(),
        };
        for b in &blocks {
            inner.register(b);
        }
        // Search indexes load in the background, newest block first, so start-up does not
        // wait for them; searches say which blocks they could not search yet.
        let to_load: Vec<Arc<Sealed>> = blocks.iter().rev().cloned().collect();
        if !to_load.is_empty() {
            let dir = dir.clone();
            let spawned = std::thread::Builder::new()
                .name("store-index-loader".into())
                .spawn(move || load_indexes(&dir, to_load));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the search index loader; searches skip sealed blocks");
            }
        }
        let store = Self {
            opts,
            inner: RwLock::new(inner),
            seal_lock: Mutex::new(()),
        };
        Ok((store, report))
    }

    /// Blocks whose search index is not loaded yet (it loads in the background after
    /// [`Store::open`]; blocks whose index failed to load do not count).
    pub fn indexes_loading(&self) -> usize {
        self.inner
            .read()
            .map(|i| {
                i.blocks
                    .iter()
                    .filter(|b| b.index.get().is_none() && b.index_error.get().is_none())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits until every search index is loaded (or failed), at most `limit`; returns
    /// whether they all were.
    pub fn wait_for_indexes(&self, limit: Duration) -> bool {
        let started = Instant::now();
        loop {
            if self.indexes_loading() == 0 {
                return true;
            }
            if started.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The highest WAL sequence number such that it and every record before it are in
    /// durable blocks: the WAL may be truncated before the next one.
    pub fn durable_seq(&self) -> u64 {
        self.inner
            .read()
            .map(|i| i.manifest.durable_prefix())
            .unwrap_or(0)
    }

    /// The manifest's `source_seq`: in-order replay after a restart starts after it (the
    /// pending ranges below it are replayed separately, see [`Store::pending`]).
    pub fn source_seq(&self) -> u64 {
        self.inner
            .read()
            .map(|i| i.manifest.source_seq)
            .unwrap_or(0)
    }

    /// The highest WAL sequence number up to which every record not pending is ingested
    /// (durable or in memory).
    pub fn ingested_seq(&self) -> u64 {
        self.inner
            .read()
            .map(|i| {
                i.head
                    .in_order
                    .max(i.manifest.source_seq)
                    .max(i.sealing.iter().map(|h| h.in_order).max().unwrap_or(0))
            })
            .unwrap_or(0)
    }

    /// Backlog records not yet in durable blocks (ingested into the head or not).
    pub fn pending(&self) -> SeqRanges {
        self.inner
            .read()
            .map(|i| i.pending.clone())
            .unwrap_or_default()
    }

    /// Whether record `seq` belongs to the backlog and is not yet durable.
    pub fn is_pending(&self, seq: u64) -> bool {
        self.inner
            .read()
            .map(|i| i.pending.contains(seq))
            .unwrap_or(false)
    }

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

    /// Adds the spans of WAL record `seq`; they are queryable when this returns.
    pub fn ingest(&self, seq: u64, spans: Vec<Span>) -> Result<(), StoreError> {
        let mut inner = self.inner.write().map_err(|_| lock_err())?;
        if inner.pending.contains(seq) {
            inner.head.backlog.insert(seq);
        } else {
            inner.head.in_order = inner.head.in_order.max(seq);
        }
        for s in &spans {
            inner.rollups.add(s);
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
        let edges = inner.head.push(seq, spans);
        for (start, p, c, err, dur) in &edges {
            inner.rollups.add_edge(*start, p, c, *err, *dur);
        }
        Ok(())
    }

    /// Spans in memory, not yet in a durable block.
    pub fn head_spans(&self) -> usize {
        self.inner
            .read()
            .map(|i| i.head.spans.len() + i.sealing.iter().map(|h| h.spans.len()).sum::<usize>())
            .unwrap_or(0)
    }

    /// Why answers may miss data: quarantined blocks and unreadable rollup files.
    pub fn quarantined(&self) -> Vec<String> {
        self.inner
            .read()
            .map(|i| i.quarantined.clone())
            .unwrap_or_default()
    }

    /// The configured limit on the blocks' bytes (`u64::MAX`: none).
    pub fn max_bytes(&self) -> u64 {
        self.opts.max_bytes
    }

    /// The configured block size in spans.
    pub fn block_max_spans(&self) -> usize {
        self.opts.block_max_spans
    }

    /// Whether the head is due to be sealed.
    pub fn should_seal(&self) -> bool {
        self.inner
            .read()
            .map(|i| {
                i.head.spans.len() >= self.opts.block_max_spans
                    || i.head
                        .started
                        .is_some_and(|s| s.elapsed() >= self.opts.block_max_age)
                    // Positions without spans (dead letters, deferred or finished backlog
                    // ranges) are published at once: an idle server would otherwise keep
                    // them pending, and replay them after a restart.
                    || (i.head.spans.is_empty()
                        && (!i.head.finished.is_empty()
                            || !i.head.backlog.is_empty()
                            || i.head.in_order > i.manifest.source_seq))
            })
            .unwrap_or(false)
    }

    /// Writes the head as a block and publishes it. Blocking (encoding and fsync): call
    /// from a blocking thread. Returns the new block, or `None` when the head was empty.
    pub fn seal(&self) -> Result<Option<BlockMeta>, StoreError> {
        let _one_at_a_time = self.seal_lock.lock().map_err(|_| lock_err())?;
        let head = {
            let mut inner = self.inner.write().map_err(|_| lock_err())?;
            if inner.head.spans.is_empty() {
                // Nothing to write, but the WAL position may still advance (records
                // without spans, finished backlog ranges).
                let head = std::mem::take(&mut inner.head);
                let mut pending = inner.pending.clone();
                let m = advanced(&inner.manifest, &mut pending, &head);
                if m != inner.manifest {
                    if let Err(e) = m.store(&self.opts.dir) {
                        inner.head = head;
                        return Err(e);
                    }
                    inner.manifest = m;
                }
                inner.pending = pending;
                return Ok(None);
            }
            let head = Arc::new(std::mem::take(&mut inner.head));
            inner.sealing.push(head.clone());
            head
        };
        let serial = {
            let mut inner = self.inner.write().map_err(|_| lock_err())?;
            inner.next_serial += 1;
            inner.next_serial - 1
        };
        let result = self.write_and_publish(&head, serial);
        let mut inner = self.inner.write().map_err(|_| lock_err())?;
        match result {
            Ok((sealed, manifest)) => {
                let meta = sealed.meta.clone();
                let sealed = Arc::new(sealed);
                inner.sealing.retain(|h| !Arc::ptr_eq(h, &head));
                inner.blocks.push(sealed.clone());
                inner.manifest = manifest;
                head.settle(&mut inner.pending);
                inner.register(&sealed);
                Ok(Some(meta))
            }
            Err(e) => {
                // Keep the spans queryable and sealable: put them back in front of the head.
                inner.sealing.retain(|h| !Arc::ptr_eq(h, &head));
                let mut restored = Arc::try_unwrap(head).unwrap_or_else(|h| Head {
                    rollups: {
                        let mut r = Rollups::default();
                        r.merge(&h.rollups);
                        r
                    },
                    spans: h.spans.clone(),
                    by_trace: h.by_trace.clone(),
                    by_span: h.by_span.clone(),
                    waiting: h.waiting.clone(),
                    services: h.services.clone(),
                    max_seq: h.max_seq,
                    in_order: h.in_order,
                    backlog: h.backlog.clone(),
                    finished: h.finished.clone(),
                    started: h.started,
                });
                let newer = std::mem::take(&mut inner.head);
                // The global rollups already counted these spans and the calls among them;
                // calls between the two heads stay uncounted (this path only runs after a
                // failed seal).
                restored.absorb(newer);
                inner.head = restored;
                Err(e)
            }
        }
    }

    /// A block id for `head` no listed block or file has: `max_seq`, with a suffix when a
    /// seal that failed after renaming its files (or publishing its manifest) left that
    /// name taken.
    fn block_id(&self, head: &Head) -> Result<String, StoreError> {
        let base = format!("{:020}", head.max_seq);
        let listed: HashSet<String> = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            inner.manifest.blocks.iter().map(|b| b.id.clone()).collect()
        };
        // File checks outside the lock.
        let taken = |id: &str| {
            listed.contains(id)
                || BLOCK_FILES
                    .iter()
                    .any(|ext| self.opts.dir.join(format!("{id}.{ext}")).exists())
        };
        if !taken(&base) {
            return Ok(base);
        }
        Ok((1u32..)
            .map(|k| format!("{base}_{k}"))
            .find(|id| !taken(id))
            .unwrap_or(base))
    }

    fn write_and_publish(
        &self,
        head: &Head,
        serial: u32,
    ) -> Result<(Sealed, Manifest), StoreError> {
        let id = self.block_id(head)?;
        let (written, index) = block::write_block_indexed(&self.opts.dir, &id, &head.spans)?;
        head.rollups.write_file(&self.opts.dir, &id)?;
        self.opts.fault(FaultPoint::SealBeforeManifest)?;
        let meta = BlockMeta {
            id: id.clone(),
            spans: written.spans,
            traces: written.traces,
            min_start_ns: written.min_start_ns,
            max_end_ns: written.max_end_ns,
            bytes: written.bytes,
            source_seq: head.in_order.max(head.max_seq),
            services: head.services.iter().cloned().collect(),
        };
        let mut next = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            let mut pending = inner.pending.clone();
            advanced(&inner.manifest, &mut pending, head)
        };
        next.blocks.push(meta.clone());
        next.store(&self.opts.dir)?;
        let reader = BlockReader::open(&self.opts.dir, &id)?;
        let sealed = Sealed {
            meta,
            reader,
            services: head.services.clone(),
            index: OnceLock::from(index),
            index_error: OnceLock::new(),
            serial,
            split: Mutex::new(RoaringBitmap::new()),
        };
        Ok((sealed, next))
    }

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

    /// Deletes blocks past the retention age, then the oldest blocks while the blocks
    /// exceed `max_bytes`, and drops RED cells older than the retention age. The manifest
    /// is replaced before any file is deleted, so a crash leaves at worst unlisted files
    /// (removed at the next start). Blocking. Returns the deleted blocks.
    pub fn enforce_retention(&self, now_ns: u64) -> Result<Vec<BlockMeta>, StoreError> {
        let _one_at_a_time = self.seal_lock.lock().map_err(|_| lock_err())?;
        let cutoff_ns =
            now_ns.saturating_sub(self.opts.retention.as_nanos().min(u128::from(u64::MAX)) as u64);
        let cutoff_minute = cutoff_ns / 60_000_000_000;
        let manifest = self.inner.read().map_err(|_| lock_err())?.manifest.clone();
        let mut expired: Vec<BlockMeta> = Vec::new();
        let mut evicted: Vec<BlockMeta> = Vec::new();
        let mut kept: Vec<BlockMeta> = Vec::new();
        for b in manifest.blocks {
            if b.max_end_ns < cutoff_ns {
                expired.push(b);
            } else {
                kept.push(b);
            }
        }
        let mut total: u64 = kept.iter().map(|b| b.bytes).sum();
        while total > self.opts.max_bytes && !kept.is_empty() {
            let b = kept.remove(0);
            total -= b.bytes;
            evicted.push(b);
        }
        if expired.is_empty() && evicted.is_empty() {
            if let Ok(mut inner) = self.inner.write() {
                inner.rollups.prune_before(cutoff_minute);
            }
            return Ok(Vec::new());
        }
        let dir = &self.opts.dir;
        if !evicted.is_empty() {
            // Keep the RED cells of blocks evicted for space.
            let mut archive = Rollups::read_path(&dir.join(ARCHIVE))?;
            for b in &evicted {
                match Rollups::read_file(dir, &b.id) {
                    Ok(r) => archive.merge(&r),
                    Err(e) => {
                        tracing::warn!(block = %b.id, error = %e, "evicting a block whose rollups are unreadable")
                    }
                }
            }
            archive.prune_before(cutoff_minute);
            archive.write_path(&dir.join(ARCHIVE))?;
        }
        let mut next = self.inner.read().map_err(|_| lock_err())?.manifest.clone();
        let gone: BTreeSet<&str> = expired
            .iter()
            .chain(&evicted)
            .map(|b| b.id.as_str())
            .collect();
        next.blocks.retain(|b| !gone.contains(b.id.as_str()));
        next.store(dir)?;
        {
            let mut inner = self.inner.write().map_err(|_| lock_err())?;
            let removed: Vec<Arc<Sealed>> = inner
                .blocks
                .iter()
                .filter(|b| gone.contains(b.meta.id.as_str()))
                .cloned()
                .collect();
            inner.blocks.retain(|b| !gone.contains(b.meta.id.as_str()));
            for b in &removed {
                inner.unregister(b);
            }
            inner
                .manifest
                .blocks
                .retain(|b| !gone.contains(b.id.as_str()));
            inner.rollups.prune_before(cutoff_minute);
        }
        self.opts.fault(FaultPoint::RetentionBeforeDelete)?;
        for id in &gone {
            for ext in BLOCK_FILES {
                let path = dir.join(format!("{id}.{ext}"));
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete a retired block file; it is removed at the next start");
                }
            }
        }
        for b in &expired {
            tracing::info!(block = %b.id, spans = b.spans, bytes = b.bytes, "deleted a block past the retention age");
        }
        for b in &evicted {
            tracing::info!(block = %b.id, spans = b.spans, bytes = b.bytes, "deleted the oldest block to stay within store.max_bytes");
        }
        Ok(expired.into_iter().chain(evicted).collect())
    }

    /// Merges runs of adjacent small blocks (each under a quarter of `block_max_spans`)
    /// into one block of up to `block_max_spans` spans, so low traffic does not leave
    /// thousands of tiny files. The new block (with the merged RED cells) is written and
    /// fsynced, then the manifest is replaced, then the old files are deleted: a crash at
    /// any point leaves either the old blocks or the new one listed, and the other side
    /// unlisted (removed at the next start). Blocking. Returns how many blocks were merged.
    pub fn compact(&self) -> Result<usize, StoreError> {
        let _one_at_a_time = self.seal_lock.lock().map_err(|_| lock_err())?;
        let small = (self.opts.block_max_spans / 4).max(1) as u64;
        let target = self.opts.block_max_spans as u64;
        let blocks: Vec<Arc<Sealed>> = self.inner.read().map_err(|_| lock_err())?.blocks.clone();
        // The first run of at least two adjacent small blocks, up to the target size.
        let mut group: Vec<Arc<Sealed>> = Vec::new();
        let mut spans = 0u64;
        for b in &blocks {
            if b.meta.spans < small && spans + b.meta.spans <= target {
                spans += b.meta.spans;
                group.push(b.clone());
            } else if group.len() >= 2 {
                break;
            } else {
                group.clear();
                spans = 0;
                if b.meta.spans < small {
                    spans = b.meta.spans;
                    group.push(b.clone());
                }
            }
        }
        if group.len() < 2 {
            return Ok(0);
        }
        let dir = &self.opts.dir;
        let mut all = Vec::with_capacity(spans as usize);
        let mut rollups = Rollups::default();
        let mut services = BTreeSet::new();
        for b in &group {
            all.extend(b.reader.all()?);
            rollups.merge(&Rollups::read_file(dir, &b.meta.id)?);
            services.extend(b.services.iter().cloned());
        }
        let last = group.last().map(|b| b.meta.clone()).ok_or_else(lock_err)?;
        let first = group.first().map(|b| b.meta.clone()).ok_or_else(lock_err)?;
        let id = format!("{}-{}", last.id, first.id);
        let (written, index) = block::write_block_indexed(dir, &id, &all)?;
        rollups.write_file(dir, &id)?;
        self.opts.fault(FaultPoint::CompactBeforeManifest)?;
        let meta = BlockMeta {
            id: id.clone(),
            spans: written.spans,
            traces: written.traces,
            min_start_ns: written.min_start_ns,
            max_end_ns: written.max_end_ns,
            bytes: written.bytes,
            source_seq: last.source_seq,
            services: services.iter().cloned().collect(),
        };
        let reader = BlockReader::open(dir, &id)?;
        let gone: BTreeSet<String> = group.iter().map(|b| b.meta.id.clone()).collect();
        let mut next = self.inner.read().map_err(|_| lock_err())?.manifest.clone();
        let pos = next
            .blocks
            .iter()
            .position(|b| gone.contains(&b.id))
            .unwrap_or(next.blocks.len());
        next.blocks.retain(|b| !gone.contains(&b.id));
        next.blocks.insert(pos.min(next.blocks.len()), meta.clone());
        next.store(dir)?;
        {
            let mut inner = self.inner.write().map_err(|_| lock_err())?;
            let pos = inner
                .blocks
                .iter()
                .position(|b| gone.contains(&b.meta.id))
                .unwrap_or(inner.blocks.len());
            inner.blocks.retain(|b| !gone.contains(&b.meta.id));
            for b in &group {
                inner.unregister(b);
            }
            let pos = pos.min(inner.blocks.len());
            inner.next_serial += 1;
            let merged = Arc::new(Sealed {
                meta,
                reader,
                services,
                index: OnceLock::from(index),
                index_error: OnceLock::new(),
                serial: inner.next_serial - 1,
                split: Mutex::new(RoaringBitmap::new()),
            });
            inner.blocks.insert(pos, merged.clone());
            inner.register(&merged);
            inner.manifest = next;
        }
        for old in &gone {
            for ext in BLOCK_FILES {
                let _ = std::fs::remove_file(dir.join(format!("{old}.{ext}")));
            }
        }
        tracing::info!(block = %id, merged = gone.len(), spans = written.spans, "compacted small blocks");
        Ok(gone.len())
    }

    /// The manifest's blocks.
    pub fn blocks(&self) -> Vec<BlockMeta> {
        self.inner
            .read()
            .map(|i| i.manifest.blocks.clone())
            .unwrap_or_default()
    }

    fn completeness(inner: &Inner) -> Completeness {
        Completeness {
            reasons: inner.quarantined.clone(),
        }
    }
}

/// Loads the search index of each block (see [`Store::open`]).
fn load_indexes(dir: &Path, blocks: Vec<Arc<Sealed>>) {
    let started = Instant::now();
    let mut loaded = 0usize;
    for b in blocks {
        // A block deleted by retention meanwhile is simply skipped.
        if !dir.join(format!("{}.parquet", b.meta.id)).exists() {
            continue;
        }
        match b.reader.load_index(dir) {
            Ok(index) => {
                let _ = b.index.set(index);
                loaded += 1;
            }
            Err(e) => {
                tracing::error!(block = %b.meta.id, error = %e, "cannot load the search index of a block; searches skip it");
                let _ = b.index_error.set(e.to_string());
            }
        }
    }
    tracing::info!(
        blocks = loaded,
        ms = started.elapsed().as_millis() as u64,
        "search indexes loaded"
    );
}

fn quarantine(dir: &Path, id: &str) {
    let q = dir.join("quarantine");
    let _ = std::fs::create_dir_all(&q);
    for ext in BLOCK_FILES {
        let from = dir.join(format!("{id}.{ext}"));
        if from.exists() {
            let _ = std::fs::rename(&from, q.join(format!("{id}.{ext}")));
        }
    }
}

impl SpanStore for Store {
    fn trace(&self, trace_id: &TraceId) -> Result<TraceAnswer, StoreError> {
        let (blocks, mut spans, completeness) = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            let mut spans = Vec::new();
            inner.head.trace(trace_id, &mut spans);
            for h in &inner.sealing {
                h.trace(trace_id, &mut spans);
            }
            let blocks: Vec<Arc<Sealed>> = inner
                .locs
                .get(trace_id)
                .iter()
                .filter_map(|&s| inner.block_by_serial(s))
                .filter(|b| b.reader.contains(trace_id))
                .cloned()
                .collect();
            (blocks, spans, Self::completeness(&inner))
        };
        // Block reads happen outside the lock.
        for b in blocks {
            spans.extend(b.reader.trace(trace_id)?);
        }
        spans.sort_by_key(|s| s.start_ns);
        // A span can be in a sealing head and, once published, in its block too.
        let mut seen = BTreeSet::new();
        spans.retain(|s| seen.insert(s.span_id));
        Ok(TraceAnswer {
            spans,
            completeness,
        })
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
            inner.rollups.operations(service),
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
            inner.rollups.dependencies(start_s, end_s),
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
            .rollups
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
                .rollups
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
                .rollups
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
        let (blocks, mut completeness) = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            let is_split = |id: &TraceId| inner.split.contains(id) || inner.in_heads(id) > 1;
            inner
                .head
                .search(q, &mut top, &mut head_found, &mut agg, &is_split);
            for h in &inner.sealing {
                h.search(q, &mut top, &mut head_found, &mut agg, &is_split);
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
        // Newest blocks first: with the default order they fill the top quickly.
        let mut budget = MAX_VERIFY_TRACES;
        let mut unverified = 0;
        let (mut loading, mut broken) = (0usize, Vec::new());
        let mut timed_out = 0usize;
        for (bi, (b, split)) in blocks.iter().enumerate().rev() {
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
            let Some(index) = b.index.get() else {
                match b.index_error.get() {
                    Some(e) => broken.push(format!("block {} is not searchable: {e}", b.meta.id)),
                    None => loading += 1,
                }
                continue;
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
                    Some(id) => TraceSummary::of(&self.trace(id)?.spans),
                    None => None,
                }
            } else if source >= HEAD {
                head_found.get(source - HEAD).cloned()
            } else {
                blocks.get(source).and_then(|(b, _)| {
                    let index = b.index.get()?;
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
