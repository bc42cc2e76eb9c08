//! The embedded store: a head of recent spans in memory, sealed Parquet blocks on disk,
//! and the manifest that ties them to a position in the WAL.
//!
//! Code map: options, the store's state and start-up (this file); the head and ingestion
//! (`head.rs`); sealing (`seal.rs`); retention and compaction (`retention.rs`); tail
//! sampling of sealed blocks (`tail_pass.rs`); the read trait [`SpanStore`] and queries
//! (`query.rs`).
//!
//! Data flow: the consumer (`faultline-pipeline`) calls [`Store::ingest`] with the spans
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

mod head;
mod index_cache;
mod query;
mod retention;
mod seal;
mod tail_pass;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use roaring::RoaringBitmap;

use faultline_model::span::{Span, TraceId};

use crate::block::BlockReader;
use crate::error::StoreError;
use crate::locs::TraceLocs;
use crate::manifest::{BlockMeta, Manifest};
use crate::rollup::Rollups;
use crate::seqs::SeqRanges;
pub use index_cache::IndexCacheStats;
use index_cache::{IndexCache, IndexSlot};

use head::Head;
pub use query::SpanStore;
pub use tail_pass::TailPassed;

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
    /// Keep at most this many bytes of sealed blocks' search indexes in memory; the
    /// least recently used are evicted and read back from disk when a search needs them
    /// (`index_cache.rs`). `u64::MAX` (the default): all in memory.
    pub max_index_bytes: u64,
    /// Tail sampling of sealed blocks (`crate::tail`); `None` (the default): off.
    pub tail: Option<crate::tail::TailPolicy>,
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
    /// A tail-sampled block and its record are written; the manifest still lists the
    /// undecided block.
    TailBeforeManifest,
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
            max_index_bytes: u64::MAX,
            tail: None,
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

pub(crate) struct Sealed {
    meta: BlockMeta,
    reader: BlockReader,
    services: BTreeSet<String>,
    /// The search index: set at seal, or by the loader thread after a restart; evicted
    /// and read back within `StoreOptions::max_index_bytes` (`index_cache.rs`).
    index: Arc<IndexSlot>,
    /// Number of the block in this process (for [`TraceLocs`]).
    serial: u32,
    /// Ordinals of its traces that also have spans elsewhere (another block or a head).
    split: Mutex<RoaringBitmap>,
    /// When it was sealed in this process (`None`: before this start).
    sealed_at: Option<Instant>,
    /// Its tail-sampling record, once decided (`crate::tail`).
    tail: OnceLock<Arc<crate::tail::TailRecord>>,
}

pub(crate) struct Inner {
    head: Head,
    /// Heads being written, oldest first; still queryable.
    sealing: Vec<Arc<Head>>,
    blocks: Vec<Arc<Sealed>>,
    manifest: Manifest,
    quarantined: Vec<String>,
    /// RED cells of the sealed blocks' spans (their rollup files, and the archive of
    /// evicted ones). The heads keep their own spans' cells; [`Inner::rollups`] reads
    /// them all together, and a head's join these when it is sealed.
    rollups: Rollups,
    /// Clock-skew samples of the client/server calls seen since start.
    skew: crate::skew::SkewSamples,
    /// Tracing health findings since start.
    quality: crate::quality::Quality,
    /// Trace id → blocks holding it.
    locs: TraceLocs,
    /// Traces with spans in more than one place (blocks, heads); searched as a whole.
    split: crate::locs::TraceSet,
    /// The blocks of `blocks` by serial number, kept by [`Inner::register`] and
    /// [`Inner::unregister`]: finding a trace's blocks by a scan of `blocks` cost the
    /// publish step a scan per split trace, under the write lock.
    by_serial: HashMap<u32, Arc<Sealed>>,
    next_serial: u32,
    /// Backlog records not yet in durable blocks: the manifest's pending ranges plus those
    /// deferred since, minus those sealed since.
    pending: SeqRanges,
}

impl Inner {
    /// The RED cells of every span: the sealed blocks', the heads' being sealed and the
    /// head's.
    fn rollups(&self) -> crate::rollup::Layers<'_> {
        let mut layers = Vec::with_capacity(2 + self.sealing.len());
        layers.push(&self.rollups);
        layers.extend(self.sealing.iter().map(|h| &h.rollups));
        layers.push(&self.head.rollups);
        crate::rollup::Layers(layers)
    }

    fn in_heads(&self, id: &TraceId) -> usize {
        usize::from(self.head.by_trace.contains_key(id))
            + self
                .sealing
                .iter()
                .filter(|h| h.by_trace.contains_key(id))
                .count()
    }

    fn block_by_serial(&self, serial: u32) -> Option<&Arc<Sealed>> {
        self.by_serial.get(&serial)
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

    /// Adds a block (already in `blocks`) to the trace locations and `by_serial`.
    fn register(&mut self, b: &Arc<Sealed>) {
        self.by_serial.insert(b.serial, b.clone());
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

    /// Removes a block (already gone from `blocks`) from `by_serial` and the trace
    /// locations; traces left in one place are whole again.
    fn unregister(&mut self, b: &Sealed) {
        self.by_serial.remove(&b.serial);
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
    /// The sealed blocks' search indexes in memory, within `opts.max_index_bytes`.
    index_cache: Arc<IndexCache>,
    inner: RwLock<Inner>,
    seal_lock: Mutex<()>,
    /// The clock-skew estimates last written to `crate::skew::OFFSETS_FILE`.
    offsets_saved: Mutex<Arc<crate::skew::Estimates>>,
    /// Sees every span before the head does (`crate::observer`).
    observer: OnceLock<Arc<dyn crate::SpanObserver>>,
    /// The last sealed head, with when it was sealed, waiting to be freed by the thread
    /// that ingests (see [`Store::retire`]).
    pub(crate) retired: Mutex<Option<(Arc<Head>, std::time::Instant)>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.opts.dir)
            .finish()
    }
}

/// The files of a block, by extension.
pub(crate) const BLOCK_FILES: [&str; 5] = ["parquet", "tidx", "sidx", "red", "tails"];

/// Rollups of blocks evicted for space (see `rollup.rs`).
pub(crate) const ARCHIVE: &str = "archive.rollup";

pub(crate) fn lock_err() -> StoreError {
    StoreError::Encode("store lock poisoned by a panic in another thread".into())
}

impl Store {
    /// Installs the span observer (`crate::observer`); call before the pipeline starts.
    /// Returns false when one was installed already.
    pub fn set_observer(&self, observer: Arc<dyn crate::SpanObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Runs the observer's checkpoint, if one is installed.
    pub(crate) fn checkpoint_observer(&self) -> Result<(), StoreError> {
        match self.observer.get() {
            Some(o) => o.checkpoint().map_err(StoreError::Observer),
            None => Ok(()),
        }
    }

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
        let index_cache = IndexCache::new(opts.max_index_bytes);
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
                || name.ends_with(".tails")
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
                    let tail = OnceLock::new();
                    if meta.tail_decided {
                        let record = crate::tail::TailRecord::read(&dir, &meta.id)
                            .unwrap_or_else(|e| {
                                let reason = format!(
                                    "the tail-sampling record of block {} is unreadable ({e}); its decisions are not counted",
                                    meta.id
                                );
                                tracing::error!(%reason);
                                quarantined.push(reason);
                                crate::tail::TailRecord::default()
                            });
                        let _ = tail.set(Arc::new(record));
                    }
                    blocks.push(Arc::new(Sealed {
                        services: meta.services.iter().cloned().collect(),
                        meta: meta.clone(),
                        reader,
                        index: IndexSlot::loading(&index_cache),
                        serial: blocks.len() as u32,
                        split: Mutex::new(RoaringBitmap::new()),
                        sealed_at: None,
                        tail,
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
            skew: Default::default(),
            quality: Default::default(),
            locs: TraceLocs::default(),
            split: crate::locs::TraceSet::default(),
            by_serial: HashMap::new(),
            pending: manifest.pending.clone(),
        };
        for b in &blocks {
            inner.register(b);
        }
        spawn_index_loader(&dir, &blocks, &index_cache);
        let restored = match crate::skew::load(&dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "clock-skew estimates of the last run are unreadable; they come back as calls arrive");
                Default::default()
            }
        };
        let saved = Arc::new(restored.clone());
        inner.skew.restore(restored);
        let store = Self {
            opts,
            index_cache,
            inner: RwLock::new(inner),
            seal_lock: Mutex::new(()),
            offsets_saved: Mutex::new(saved),
            observer: OnceLock::new(),
            retired: Mutex::new(None),
        };
        Ok((store, report))
    }

    /// Keeps a sealed `head` for the ingesting thread to free ([`Store::free_retired`]):
    /// its spans' strings and lists were allocated there, and freed on the sealer thread
    /// each free went to a page another thread owns (mimalloc's cross-thread frees, 2-3%
    /// of a replay's instructions). One head is kept at most: an earlier one nobody took
    /// is freed here.
    pub(crate) fn retire(&self, head: Arc<Head>) {
        let earlier = match self.retired.lock() {
            Ok(mut r) => r.replace((head, std::time::Instant::now())),
            // A panic elsewhere poisoned the slot: free the head here.
            Err(_) => Some((head, std::time::Instant::now())),
        };
        drop(earlier);
    }

    /// Frees the sealed head kept by [`Store::retire`], if it was sealed at least `age`
    /// ago (`Duration::ZERO`: any). `Store::ingest` calls it before taking spans, and the
    /// pipeline's threads while they wait for a full head to be sealed; the sealer calls
    /// it when idle with a second's age, so a head nobody ingests after is not held in
    /// memory.
    pub fn free_retired(&self, age: std::time::Duration) {
        let head = match self.retired.lock() {
            Ok(mut r) => {
                if r.as_ref().is_some_and(|(_, at)| at.elapsed() >= age) {
                    r.take()
                } else {
                    None
                }
            }
            Err(_) => None,
        };
        // Outside the lock.
        drop(head);
    }

    /// Blocks whose search index is not loaded yet (it loads in the background after
    /// [`Store::open`]; blocks whose index failed to load do not count).
    pub fn indexes_loading(&self) -> usize {
        self.inner
            .read()
            .map(|i| i.blocks.iter().filter(|b| b.index.is_loading()).count())
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

    /// The search indexes in memory: bytes, budget, reads and evictions.
    pub fn index_cache(&self) -> IndexCacheStats {
        self.index_cache.stats()
    }

    /// The configured limit on the blocks' bytes (`u64::MAX`: none).
    pub fn max_bytes(&self) -> u64 {
        self.opts.max_bytes
    }

    /// The configured block size in spans.
    pub fn block_max_spans(&self) -> usize {
        self.opts.block_max_spans
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

/// Starts loading the blocks' search indexes in the background, newest block first, so
/// start-up does not wait for them; searches say which blocks they could not search yet.
fn spawn_index_loader(dir: &Path, blocks: &[Arc<Sealed>], cache: &Arc<IndexCache>) {
    let to_load: Vec<Arc<Sealed>> = blocks.iter().rev().cloned().collect();
    if to_load.is_empty() {
        return;
    }
    let (dir, cache) = (dir.to_path_buf(), cache.clone());
    let spawned = std::thread::Builder::new()
        .name("store-index-loader".into())
        .spawn(move || load_indexes(&dir, to_load, &cache));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the search index loader; searches skip sealed blocks");
    }
}

/// Loads the search index of each block, newest first (see [`Store::open`]), while the
/// budget has room; the rest load when a search needs them.
fn load_indexes(dir: &Path, blocks: Vec<Arc<Sealed>>, cache: &IndexCache) {
    let started = Instant::now();
    let (mut loaded, mut deferred) = (0usize, 0usize);
    for b in blocks {
        // A block deleted by retention meanwhile is simply skipped.
        if !dir.join(format!("{}.parquet", b.meta.id)).exists() {
            continue;
        }
        if !cache.has_room() {
            b.index.defer();
            deferred += 1;
            continue;
        }
        match b.reader.load_index(dir) {
            Ok(index) => {
                b.index.fill(index);
                loaded += 1;
            }
            Err(e) => {
                tracing::error!(block = %b.meta.id, error = %e, "cannot load the search index of a block; searches skip it");
                b.index.fail(e.to_string());
            }
        }
    }
    tracing::info!(
        blocks = loaded,
        deferred,
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
