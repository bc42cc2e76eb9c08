//! The live evaluation of consistency rules ([`Consistency`]): spans in, keys classified,
//! state in `DATA_DIR/checks.redb` (a [redb] database), within a memory bound.
//!
//! - **Observe** (the pipeline's threads, through the store's observer): each span is
//!   matched against the rules whose selectors can match its service
//!   (`faultline_rules::SelectorIndex`) outside any lock; matches update their key's
//!   record in a write-back map (on the `checks` thread, see `lib.rs`). Records are read from the map, else from the database.
//! - **Flush**: the map, the timers, the class index, the counts and the notifications
//!   queued by transitions go to the database in one transaction. A flush happens when the
//!   map holds a quarter of the memory bound (not durable) and at every checkpoint
//!   (durable: the store's seal calls it before publishing a block). Sweeps read the map
//!   beside the database instead of flushing it: keys are random, so each flush rewrites
//!   B-tree pages all over the table, and flushing every second cost more than the rules'
//!   matching and updates together. The notification hand-over flushes durably, but only
//!   when transitions are queued: a notification is sent only once the key state behind it
//!   survives a crash.
//!   After a crash the database is exactly the last checkpoint, and every span after it
//!   is replayed from the WAL; applying a span twice changes nothing (`state.rs`), so no
//!   key's outcome is lost or counted twice.
//! - **Sweep** (once a second, only while indexing has no backlog, so a B still being
//!   replayed is not declared missing): timers due now expire pending keys (missing, or
//!   orphan) and forget settled keys `keep` after their last span.
//! - The memory bound: the map is flushed at a quarter of it, redb's page cache gets
//!   another quarter, an eighth is a Bloom filter of the keys on disk (`filter.rs`, so
//!   a key seen for the first time costs no read), and the rest is headroom for a flush's transaction (its pages stay
//!   in memory until it commits) and the allocator. A million pending keys live on disk,
//!   not in memory (`faultline-bench checks-memory` measures it).
//!
//! **Tables** of `checks.redb` (keys are bytes; `rk` is `RULE 0x00 KEY`):
//!
//! ```text
//! keys       rk                         → KeyRecord (format in state.rs)
//! timer_lists u64 second (BE) u64 seq (BE) → up to 32 timers due in that second that
//!                                             one flush wrote: n × (u64 LE due ns, u16 LE
//!                                             length, rk); stale timers are dropped
//!                                             when they fire
//! by_class   RULE 0x00 class-u8 KEY    → ()   keys of a rule by class, for the API
//!                                             (not pending or satisfied: those are scanned)
//! counts     RULE                       → 14 × u64 LE: keys per class, entries per class
//! outbox     event key                  → notification Event as JSON, until handed over
//! rules      RULE                       → RuleDef as JSON (rules made through the API)
//! ```
//!
//! Timers are kept as lists, one per second of due time per flush, not one B-tree entry
//! per key: a new key cost two random inserts (its record and its timer), and the
//! timer's was as dear as the record's (a profile of the `checks` thread). The sweep
//! takes the due lists whole and writes back what is left of a list it took in part.
//! Databases of earlier versions, with a `timers` table of one entry per timer, are
//! converted when opened.
//!
//! If the database fails (disk full, damage), the rules stop evaluating and say so in the
//! API, the metrics and the log; ingestion goes on (checks never stop the store).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use faultline_model::span::Span;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;

use crate::rule::{Rule, RuleDef};
use crate::state::{CLASSES, Class, KeyRecord, SpanRef, classify, due};
use crate::{ChecksError, FastMap};

const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
const TIMER_LISTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("timer_lists");
/// Earlier versions' timers, one entry each: `u64 due ns (BE) rk → ()`.
const TIMERS_V1: TableDefinition<&[u8], ()> = TableDefinition::new("timers");
const SECOND_NS: u64 = 1_000_000_000;
/// Timers per list at most, so a list stays about a kilobyte, a few to a B-tree page: one
/// list per second's timers made megabyte values, and with them a million pending keys
/// went 9 MiB over the 64 MiB memory bound (`faultline-bench checks-memory`); 1,024 per
/// list were 4 MiB over, 96 one MiB, 32 none.
const LIST_MAX: usize = 32;

/// A timer: when it is due (ns), and the key of the record it is for.
type Timer = (u64, Vec<u8>);
const BY_CLASS: TableDefinition<&[u8], ()> = TableDefinition::new("by_class");
const COUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("counts");
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
const RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("rules");

/// Bytes a record entry of the write-back map is counted as beyond its key's length and
/// its B spans (the hash table slot at its load factor, the key's and record's headers,
/// allocator rounding); measured with `faultline-bench checks-memory`.
const RECORD_ENTRY: usize = 176;
/// The same for a timer or class-index entry.
const SMALL_ENTRY: usize = 80;

/// Keys per class of one rule, and how many times keys entered each class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub keys: [u64; 7],
    pub entered: [u64; 7],
}

impl Counts {
    fn encode(&self) -> Vec<u8> {
        self.keys
            .iter()
            .chain(&self.entered)
            .flat_map(|n| n.to_le_bytes())
            .collect()
    }
    fn decode(b: &[u8]) -> Counts {
        let mut c = Counts::default();
        for (i, chunk) in b.chunks_exact(8).take(14).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            let n = u64::from_le_bytes(w);
            if i < 7 {
                c.keys[i] = n;
            } else {
                c.entered[i - 7] = n;
            }
        }
        c
    }
}

/// Spans a rule saw since start (not persisted: replays count again).
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    first: u64,
    then: u64,
    unkeyed: u64,
}

/// A span matched to one side of a rule ([`Consistency::matches`]); `key` is `None` when
/// the span lacks the key attribute.
#[derive(Debug, Clone)]
pub struct Hit {
    pub rule: Arc<Rule>,
    pub is_first: bool,
    pub key: Option<String>,
    pub span: SpanRef,
}

/// A rule with its figures, for the API and the UI.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    #[serde(flatten)]
    pub def: RuleDef,
    /// `config` or `api`.
    pub source: &'static str,
    /// Keys per class.
    pub keys: BTreeMap<&'static str, u64>,
    /// Keys currently violated (missing + duplicate + orphan).
    pub violated: u64,
    /// How many times keys entered each class.
    pub entered: BTreeMap<&'static str, u64>,
    /// Spans matched since start: A, B, and those lacking the key attribute.
    pub spans_first: u64,
    pub spans_then: u64,
    pub spans_unkeyed: u64,
}

/// One key, for the API and the UI.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub key: String,
    pub class: &'static str,
    pub first: Option<SpanView>,
    pub then: Vec<SpanView>,
    /// Distinct B spans seen.
    pub then_total: u32,
    /// How late the first B was past `within`, milliseconds.
    pub late_ms: f64,
}

/// A span a key refers to, with its trace's link.
#[derive(Debug, Clone, Serialize)]
pub struct SpanView {
    pub trace_id: String,
    pub span_id: String,
    pub start_ns: u64,
    pub link: String,
}

impl KeyView {
    /// The view of `rec`, the record of `key` under `rule`, in `class`.
    pub fn new(rule: &Rule, key: String, class: Class, rec: &KeyRecord) -> KeyView {
        KeyView {
            class: class.name(),
            first: rec.a.as_ref().map(SpanView::from),
            then: rec.bs.iter().map(SpanView::from).collect(),
            then_total: rec.b_total,
            late_ms: rec.late_ns(rule) as f64 / 1e6,
            key,
        }
    }
}

impl From<&SpanRef> for SpanView {
    fn from(r: &SpanRef) -> Self {
        let trace_id = faultline_model::hex(&r.trace);
        SpanView {
            link: format!("/trace/{trace_id}"),
            trace_id,
            span_id: faultline_model::hex(&r.span),
            start_ns: r.start_ns,
        }
    }
}

struct Inner {
    /// Records changed since the last flush (`None`: deleted).
    dirty: FastMap<Vec<u8>, Option<KeyRecord>>,
    dirty_bytes: usize,
    /// Timers set since the last flush.
    timers: Vec<Timer>,
    /// Stored timer lists the sweep took: removed (`None`) or replaced by what is left.
    lists: BTreeMap<[u8; 16], Option<Vec<u8>>>,
    /// The sequence number of the next timer list written.
    list_seq: u64,
    /// Class-index entries to insert (true) or remove (false).
    index: FastMap<Vec<u8>, bool>,
    counts: HashMap<String, Counts>,
    seen: HashMap<String, Seen>,
    /// Notifications queued by transitions since the last flush.
    outbox: Vec<(String, Vec<u8>)>,
    /// Why evaluation stopped, if it did.
    broken: Option<String>,
    /// A non-durable commit happened since the last durable one.
    unsynced: bool,
    /// Keys the database may hold (`filter.rs`): a new key costs no read.
    filter: crate::filter::KeyFilter,
}

/// The rules in force, with their sides' selectors indexed by service (side `2i` is rule
/// `i`'s A, `2i + 1` its B, in [`RuleSet::all`]'s order).
struct RuleSet {
    config: Vec<Arc<Rule>>,
    api: Vec<Arc<Rule>>,
    sides: faultline_rules::SelectorIndex,
}

impl RuleSet {
    fn new(config: Vec<Arc<Rule>>, api: Vec<Arc<Rule>>) -> RuleSet {
        let sides = faultline_rules::SelectorIndex::new(
            config.iter().chain(&api).flat_map(|r| [&r.first, &r.then]),
        );
        RuleSet { config, api, sides }
    }
    fn all(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.config.iter().chain(&self.api)
    }
    fn get(&self, name: &str) -> Option<&Arc<Rule>> {
        self.all().find(|r| r.name() == name)
    }
}

/// Live evaluation of consistency rules; see the module doc.
pub struct Consistency {
    db: Arc<Database>,
    path: PathBuf,
    rules: RwLock<Arc<RuleSet>>,
    inner: Mutex<Inner>,
    bound: usize,
}

impl std::fmt::Debug for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consistency")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn db_err(e: impl Into<redb::Error>) -> ChecksError {
    ChecksError::Db(e.into().to_string())
}

fn record_key(rule: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(rule.len() + 1 + key.len());
    k.extend_from_slice(rule.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn split_key(rk: &[u8]) -> Option<(&str, &str)> {
    let at = rk.iter().position(|b| *b == 0)?;
    Some((
        std::str::from_utf8(&rk[..at]).ok()?,
        std::str::from_utf8(&rk[at + 1..]).ok()?,
    ))
}

/// Whether keys of `class` are in the `by_class` table: every class but the two that hold
/// almost every key (pending, satisfied), which would double the writes of the hot path.
fn indexed(class: Class) -> bool {
    !matches!(class, Class::Pending | Class::Satisfied)
}

fn list_key(second: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&second.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn encode_list<'a>(timers: impl IntoIterator<Item = &'a Timer>) -> Vec<u8> {
    let mut out = Vec::new();
    for (due, rk) in timers {
        // Record keys are a rule name and an attribute value: far below 64 KiB.
        let len = u16::try_from(rk.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&due.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&rk[..usize::from(len)]);
    }
    out
}

fn decode_list(mut b: &[u8]) -> Option<Vec<Timer>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (due, rest) = b.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len));
        let rk = rest.get(..len)?;
        out.push((u64::from_le_bytes(*due), rk.to_vec()));
        b = &rest[len..];
    }
    Some(out)
}

/// Writes `timers` as lists, one per second of due time (of at most [`LIST_MAX`]),
/// numbered from `seq` on.
fn write_lists(
    table: &mut redb::Table<&[u8], &[u8]>,
    timers: &mut [Timer],
    seq: &mut u64,
) -> Result<(), ChecksError> {
    timers.sort_unstable();
    let seconds = timers.chunk_by(|a, b| a.0 / SECOND_NS == b.0 / SECOND_NS);
    for chunk in seconds.flat_map(|c| c.chunks(LIST_MAX)) {
        let key = list_key(chunk[0].0 / SECOND_NS, *seq);
        *seq += 1;
        table
            .insert(key.as_slice(), encode_list(chunk).as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

/// Converts earlier versions' `timers` table (one entry per timer) into timer lists, and
/// returns the next list sequence number.
fn convert_timers(tx: &redb::WriteTransaction) -> Result<u64, ChecksError> {
    let mut lists = tx.open_table(TIMER_LISTS).map_err(db_err)?;
    let mut seq = match lists.last().map_err(db_err)? {
        None => 0,
        Some(_) => {
            // Sequence numbers are ordered within a second, not across: find the largest.
            let mut max = 0;
            for row in lists.iter().map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                if let Some(s) = k
                    .value()
                    .get(8..16)
                    .and_then(|s| <[u8; 8]>::try_from(s).ok())
                {
                    max = max.max(u64::from_be_bytes(s));
                }
            }
            max + 1
        }
    };
    let old_exists = tx
        .list_tables()
        .map_err(db_err)?
        .any(|t| t.name() == TIMERS_V1.name());
    if !old_exists {
        return Ok(seq);
    }
    let mut timers = Vec::new();
    {
        let old = tx.open_table(TIMERS_V1).map_err(db_err)?;
        for row in old.iter().map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            if let Some((due, rk)) = k.value().split_first_chunk::<8>() {
                timers.push((u64::from_be_bytes(*due), rk.to_vec()));
            }
        }
    }
    write_lists(&mut lists, &mut timers, &mut seq)?;
    drop(lists);
    tx.delete_table(TIMERS_V1).map_err(db_err)?;
    tracing::info!(
        timers = timers.len(),
        "converted the consistency rules' timers to timer lists"
    );
    Ok(seq)
}

fn index_key(rule: &str, class: Class, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(rule.len() + 2 + key.len());
    k.extend_from_slice(rule.as_bytes());
    k.push(0);
    k.push(class as u8);
    k.extend_from_slice(key.as_bytes());
    k
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Opens (creating) `checks.redb` in `data_dir` with a page cache of `cache_bytes`.
pub fn open_db(data_dir: &Path, cache_bytes: usize) -> Result<Arc<Database>, ChecksError> {
    let path = data_dir.join(crate::DB_FILE);
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(&path)
        .map_err(|e| ChecksError::Open {
            path: path.clone(),
            reason: redb::Error::from(e).to_string(),
        })?;
    Ok(Arc::new(db))
}

impl Consistency {
    /// Opens the rules' state in `db`; `config` are the configuration's rules, and rules
    /// made through the API come back from the database. `memory_bytes` bounds the
    /// write-back map (the caller gave the page cache the other half).
    pub fn open(
        db: Arc<Database>,
        path: PathBuf,
        config: Vec<Rule>,
        memory_bytes: usize,
    ) -> Result<Self, ChecksError> {
        let tx = db.begin_write().map_err(db_err)?;
        let mut counts = HashMap::new();
        let mut api = Vec::new();
        {
            tx.open_table(KEYS).map_err(db_err)?;
            tx.open_table(OUTBOX).map_err(db_err)?;
            tx.open_table(BY_CLASS).map_err(db_err)?;
            let c = tx.open_table(COUNTS).map_err(db_err)?;
            for row in c.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                counts.insert(k.value().to_string(), Counts::decode(v.value()));
            }
            let r = tx.open_table(RULES).map_err(db_err)?;
            for row in r.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let name = k.value().to_string();
                if config.iter().any(|c| c.name() == name) {
                    tracing::warn!(rule = %name, "a rule made through the API has the name of a configured rule; the configured one is used");
                    continue;
                }
                let def: RuleDef = serde_json::from_slice(v.value()).map_err(|e| {
                    ChecksError::Db(format!("stored rule {name:?} is unreadable: {e}"))
                })?;
                match Rule::new(def) {
                    Ok(rule) => api.push(Arc::new(rule)),
                    Err(e) => {
                        tracing::error!(error = %e, "a stored rule no longer checks; it is ignored (delete it through the API)")
                    }
                }
            }
        }
        let list_seq = convert_timers(&tx)?;
        tx.commit().map_err(db_err)?;
        let mut filter = crate::filter::KeyFilter::new(memory_bytes / 8);
        {
            let read = db.begin_read().map_err(db_err)?;
            let keys = read.open_table(KEYS).map_err(db_err)?;
            for row in keys.iter().map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                filter.insert(k.value());
            }
        }
        Ok(Consistency {
            db,
            path,
            rules: RwLock::new(Arc::new(RuleSet::new(
                config.into_iter().map(Arc::new).collect(),
                api,
            ))),
            inner: Mutex::new(Inner {
                dirty: FastMap::default(),
                dirty_bytes: 0,
                timers: Vec::new(),
                lists: BTreeMap::new(),
                list_seq,
                index: FastMap::default(),
                counts,
                seen: HashMap::new(),
                outbox: Vec::new(),
                broken: None,
                unsynced: false,
                filter,
            }),
            bound: memory_bytes.max(1 << 20),
        })
    }

    fn rule_set(&self) -> Arc<RuleSet> {
        match self.rules.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any rule is in force.
    pub fn is_empty(&self) -> bool {
        self.rule_set().all().next().is_none()
    }

    /// Why evaluation stopped, if it did.
    pub fn broken(&self) -> Option<String> {
        self.lock().broken.clone()
    }

    /// Matches spans against every rule and updates their keys.
    pub fn observe(&self, spans: &[Span]) {
        let hits = self.matches(spans);
        self.apply_hits(hits);
    }

    /// What `spans` mean to the rules (cheap: selectors only, no lock, no I/O).
    pub fn matches(&self, spans: &[Span]) -> Vec<Hit> {
        let rules = self.rule_set();
        let all: Vec<&Arc<Rule>> = rules.all().collect();
        let mut hits = Vec::new();
        for s in spans {
            for side in rules.sides.candidates(s) {
                let (rule, is_first) = (all[side / 2], side % 2 == 0);
                let (selector, key) = if is_first {
                    (&rule.first, &rule.first_key)
                } else {
                    (&rule.then, &rule.then_key)
                };
                if selector.matches_span(s) {
                    hits.push(Hit {
                        rule: rule.clone(),
                        is_first,
                        key: crate::rule::key_value(s, key),
                        span: SpanRef {
                            trace: s.trace_id,
                            span: s.span_id,
                            start_ns: s.start_ns,
                        },
                    });
                }
            }
        }
        hits
    }

    /// Applies what [`Self::matches`] found to the keys.
    pub fn apply_hits(&self, hits: Vec<Hit>) {
        if hits.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if inner.broken.is_some() {
            return;
        }
        let mut tx = None;
        for h in hits {
            // Looked up before inserting: no name copied per span.
            if !inner.seen.contains_key(h.rule.name()) {
                inner
                    .seen
                    .insert(h.rule.name().to_string(), Seen::default());
            }
            let Some(seen) = inner.seen.get_mut(h.rule.name()) else {
                continue;
            };
            let Some(key) = h.key else {
                seen.unkeyed += 1;
                continue;
            };
            if h.is_first {
                seen.first += 1;
            } else {
                seen.then += 1;
            }
            let (is_first, r) = (h.is_first, h.span);
            if let Err(e) = self.apply(&mut inner, &h.rule, &key, &mut tx, |rec| {
                rec.add(is_first, r)
            }) {
                self.fail(&mut inner, e);
                return;
            }
        }
        if inner.dirty_bytes > self.bound / 4
            && let Err(e) = self.flush_locked(&mut inner, false)
        {
            self.fail(&mut inner, e);
        }
    }

    fn fail(&self, inner: &mut Inner, e: ChecksError) {
        tracing::error!(error = %e, file = %self.path.display(), "consistency rules stopped: their database failed; ingestion goes on. Free space or move the file aside and restart");
        inner.broken = Some(e.to_string());
    }

    /// A key's record: the write-back map's, else the database's through `tx` (opened on
    /// first use and kept by the caller for its batch; valid until the next flush).
    fn get(
        &self,
        inner: &Inner,
        rk: &[u8],
        tx: &mut Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
    ) -> Result<Option<KeyRecord>, ChecksError> {
        if let Some(r) = inner.dirty.get(rk) {
            return Ok(r.clone());
        }
        if !inner.filter.may_contain(rk) {
            return Ok(None);
        }
        if tx.is_none() {
            let read = self.db.begin_read().map_err(db_err)?;
            *tx = Some(read.open_table(KEYS).map_err(db_err)?);
        }
        let Some(t) = tx.as_ref() else {
            return Ok(None);
        };
        match t.get(rk).map_err(db_err)? {
            None => Ok(None),
            Some(v) => KeyRecord::decode(v.value()).map(Some).ok_or_else(|| {
                ChecksError::Db(format!(
                    "the record of key {:?} is damaged",
                    String::from_utf8_lossy(rk)
                ))
            }),
        }
    }

    /// Loads a key's record, lets `change` modify it (returning whether it did), then
    /// reclassifies it and records the transition.
    fn apply(
        &self,
        inner: &mut Inner,
        rule: &Rule,
        key: &str,
        tx: &mut Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
        change: impl FnOnce(&mut KeyRecord) -> bool,
    ) -> Result<(), ChecksError> {
        let rk = record_key(rule.name(), key);
        let stored = self.get(inner, &rk, tx)?;
        let existed = stored.is_some();
        let old_due = stored.as_ref().map(|r| due(r, rule));
        let mut rec = stored.unwrap_or_default();
        // `change` adds spans or sets `expired`; the class it read is still the old one.
        let old = rec.class.filter(|_| existed);
        if !change(&mut rec) {
            return Ok(());
        }
        let new = classify(&rec, rule);
        rec.class = Some(new);
        let new_due = due(&rec, rule);
        // A timer exists at `old_due`; when the due moves later, that timer reschedules
        // itself when it fires (one B-tree insert per key on the hot path, not two).
        if old_due.is_none_or(|d| new_due < d) {
            Self::add_timer(inner, new_due, rk.clone());
        }
        self.transition(inner, rule, key, old, Some(new), &rec);
        self.put(inner, rk, Some(rec));
        Ok(())
    }

    /// Sets a timer, counting its memory.
    fn add_timer(inner: &mut Inner, due: u64, rk: Vec<u8>) {
        inner.dirty_bytes += rk.len() + SMALL_ENTRY;
        inner.timers.push((due, rk));
    }

    /// Records an index entry to insert or remove, counting its memory.
    fn mark(map: &mut FastMap<Vec<u8>, bool>, bytes: &mut usize, k: Vec<u8>, add: bool) {
        let size = k.len() + SMALL_ENTRY;
        if map.insert(k, add).is_none() {
            *bytes += size;
        }
    }

    fn put(&self, inner: &mut Inner, rk: Vec<u8>, rec: Option<KeyRecord>) {
        if rec.is_some() {
            inner.filter.insert(&rk);
        }
        let size = rk.len() + RECORD_ENTRY + rec.as_ref().map_or(0, |r| 32 * r.bs.len());
        if inner.dirty.insert(rk, rec).is_none() {
            inner.dirty_bytes += size;
        }
    }

    fn transition(
        &self,
        inner: &mut Inner,
        rule: &Rule,
        key: &str,
        old: Option<Class>,
        new: Option<Class>,
        rec: &KeyRecord,
    ) {
        if old == new {
            return;
        }
        let c = inner.counts.entry(rule.name().to_string()).or_default();
        if let Some(o) = old {
            c.keys[o as usize] = c.keys[o as usize].saturating_sub(1);
            if indexed(o) {
                Self::mark(
                    &mut inner.index,
                    &mut inner.dirty_bytes,
                    index_key(rule.name(), o, key),
                    false,
                );
            }
        }
        if let Some(n) = new {
            c.keys[n as usize] += 1;
            c.entered[n as usize] += 1;
            if indexed(n) {
                Self::mark(
                    &mut inner.index,
                    &mut inner.dirty_bytes,
                    index_key(rule.name(), n, key),
                    true,
                );
            }
        }
        if !rule.def.notify {
            return;
        }
        let was = old.filter(|c| c.is_violation());
        let is = new.filter(|c| c.is_violation());
        // Leaving a violation resolves it (also into another violation: orphan, then
        // duplicate once its A and two Bs are in); entering one fires it.
        let mut events = Vec::new();
        if let Some(o) = was.filter(|o| Some(*o) != is) {
            let ekey = format!("consistency/{}/{key}/{}/resolved", rule.name(), o.name());
            events.push((ekey, "resolved", new.unwrap_or(Class::Satisfied)));
        }
        if let Some(n) = is {
            let ekey = format!("consistency/{}/{key}/{}", rule.name(), n.name());
            events.push((ekey, "firing", n));
        }
        for (ekey, state, class) in events {
            let link = rec
                .a
                .as_ref()
                .or(rec.bs.first())
                .map(|r| format!("/trace/{}", faultline_model::hex(&r.trace)));
            let ev = faultline_notify::Event {
                key: ekey.clone(),
                kind: "consistency".into(),
                subject: rule.name().to_string(),
                state: state.into(),
                at: now_ms(),
                message: describe(rule, key, class, rec),
                link,
            };
            if let Ok(json) = serde_json::to_vec(&ev) {
                inner.outbox.push((ekey, json));
            }
        }
    }

    /// Writes what changed since the last flush in one transaction; `durable` makes it
    /// (and every flush before it) survive a crash.
    pub fn flush(&self, durable: bool) -> Result<(), ChecksError> {
        let mut inner = self.lock();
        if inner.broken.is_some() {
            return Ok(());
        }
        let r = self.flush_locked(&mut inner, durable);
        if let Err(e) = &r {
            self.fail(&mut inner, e.clone());
        }
        r
    }

    fn flush_locked(&self, inner: &mut Inner, durable: bool) -> Result<(), ChecksError> {
        let nothing = inner.dirty.is_empty()
            && inner.timers.is_empty()
            && inner.lists.is_empty()
            && inner.index.is_empty()
            && inner.outbox.is_empty();
        if nothing && (!durable || !inner.unsynced) {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| ChecksError::Db(e.to_string()))?;
        {
            // In key order: neighbouring inserts touch the same B-tree pages.
            let mut dirty: Vec<_> = inner.dirty.iter().collect();
            dirty.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut keys = tx.open_table(KEYS).map_err(db_err)?;
            for (k, v) in dirty {
                match v {
                    Some(rec) => {
                        keys.insert(k.as_slice(), rec.encode().as_slice())
                            .map_err(db_err)?;
                    }
                    None => {
                        keys.remove(k.as_slice()).map_err(db_err)?;
                    }
                }
            }
            let mut lists = tx.open_table(TIMER_LISTS).map_err(db_err)?;
            for (k, v) in &inner.lists {
                match v {
                    Some(v) => {
                        lists.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
                    }
                    None => {
                        lists.remove(k.as_slice()).map_err(db_err)?;
                    }
                }
            }
            let i = &mut *inner;
            write_lists(&mut lists, &mut i.timers, &mut i.list_seq)?;
            let mut index = tx.open_table(BY_CLASS).map_err(db_err)?;
            let mut sorted: Vec<_> = inner.index.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (k, add) in sorted {
                if *add {
                    index.insert(k.as_slice(), ()).map_err(db_err)?;
                } else {
                    index.remove(k.as_slice()).map_err(db_err)?;
                }
            }
            let mut counts = tx.open_table(COUNTS).map_err(db_err)?;
            for (rule, c) in &inner.counts {
                counts
                    .insert(rule.as_str(), c.encode().as_slice())
                    .map_err(db_err)?;
            }
            let mut outbox = tx.open_table(OUTBOX).map_err(db_err)?;
            for (k, v) in &inner.outbox {
                outbox.insert(k.as_str(), v.as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        inner.unsynced = !durable;
        inner.dirty.clear();
        inner.dirty_bytes = 0;
        inner.timers.clear();
        inner.lists.clear();
        inner.index.clear();
        inner.outbox.clear();
        Ok(())
    }

    /// Fires the timers due at `now_ns` (at most `max`): pending keys past their deadline
    /// become missing or orphan, settled keys past `keep` are forgotten. Returns how many
    /// timers fired. Call only while indexing has caught up.
    pub fn sweep(&self, now_ns: u64, max: usize) -> Result<usize, ChecksError> {
        let rules = self.rule_set();
        let mut inner = self.lock();
        if inner.broken.is_some() {
            return Ok(0);
        }
        // The map is not flushed for this, so a sweep writes nothing unless the map
        // outgrows its bound (flushing every second rewrote most of the keys' B-tree).
        let mut due_now = self.take_due(&mut inner, now_ns, max)?;
        due_now.sort_unstable();
        due_now.dedup();
        let mut tx = None;
        for (due_at, rk) in &due_now {
            let (due_at, rk) = (*due_at, rk.as_slice());
            let Some((name, key)) = split_key(rk) else {
                continue;
            };
            let Some(rec) = self.get(&inner, rk, &mut tx)? else {
                continue;
            };
            let Some(rule) = rules.get(name) else {
                // The rule was deleted (through the API, or from the configuration file
                // while the process was down): its keys go as their timers fire.
                let i = &mut *inner;
                if let Some(class) = rec.class.filter(|c| indexed(*c)) {
                    let ik = index_key(name, class, key);
                    Self::mark(&mut i.index, &mut i.dirty_bytes, ik, false);
                }
                self.put(&mut inner, rk.to_vec(), None);
                continue;
            };
            let d = due(&rec, rule);
            if d > due_at {
                // The due moved later: this timer moves with it.
                Self::add_timer(&mut inner, d, rk.to_vec());
                continue;
            }
            if d < due_at {
                continue; // a stale timer: an earlier one was set when the due moved
            }
            if !rec.expired && classify(&rec, rule) == Class::Pending {
                self.apply(&mut inner, rule, key, &mut tx, |r| {
                    r.expired = true;
                    true
                })?;
                // This timer is used up; the next one is when the key is forgotten.
                if let Some(Some(r)) = inner.dirty.get(rk) {
                    let next = due(r, rule);
                    Self::add_timer(&mut inner, next, rk.to_vec());
                }
            } else {
                let class = rec.class.unwrap_or(Class::Pending);
                let c = inner.counts.entry(name.to_string()).or_default();
                c.keys[class as usize] = c.keys[class as usize].saturating_sub(1);
                let i = &mut *inner;
                if indexed(class) {
                    Self::mark(
                        &mut i.index,
                        &mut i.dirty_bytes,
                        index_key(name, class, key),
                        false,
                    );
                }
                self.put(&mut inner, rk.to_vec(), None);
            }
        }
        if inner.dirty_bytes > self.bound / 4 {
            self.flush_locked(&mut inner, false)?;
        }
        Ok(due_now.len())
    }

    /// Takes up to `max` timers due at `now_ns` out of those set since the last flush and
    /// the stored lists, in due order of their seconds. A stored list taken whole is
    /// removed at the next flush, one taken in part is replaced by what is left of it; until
    /// then the sweep reads those changes instead of the database's lists.
    fn take_due(
        &self,
        inner: &mut Inner,
        now_ns: u64,
        max: usize,
    ) -> Result<Vec<Timer>, ChecksError> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < inner.timers.len() && out.len() < max {
            if inner.timers[i].0 <= now_ns {
                out.push(inner.timers.swap_remove(i));
            } else {
                i += 1;
            }
        }
        let end = list_key(now_ns / SECOND_NS + 1, 0);
        let mut lists: Vec<([u8; 16], Option<Vec<Timer>>)> = inner
            .lists
            .range(..end)
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, decode_list(v))))
            .collect();
        {
            let tx = self.db.begin_read().map_err(db_err)?;
            let t = tx.open_table(TIMER_LISTS).map_err(db_err)?;
            // Enough lists to fill `max`.
            let mut found =
                out.len() + lists.iter().flat_map(|l| &l.1).map(Vec::len).sum::<usize>();
            for row in t.range(..end.as_slice()).map_err(db_err)? {
                if found >= max {
                    break;
                }
                let (k, v) = row.map_err(db_err)?;
                let Ok(k) = <[u8; 16]>::try_from(k.value()) else {
                    continue;
                };
                if inner.lists.contains_key(&k) {
                    continue;
                }
                let timers = decode_list(v.value());
                found += timers.as_ref().map_or(0, Vec::len);
                lists.push((k, timers));
            }
        }
        lists.sort_unstable_by_key(|l| l.0);
        for (k, timers) in lists {
            if out.len() >= max {
                break;
            }
            let Some(timers) = timers else {
                tracing::error!(
                    file = %self.path.display(),
                    "a timer list of the consistency rules is damaged; its keys will not expire (they are still classified as spans arrive)"
                );
                inner.lists.insert(k, None);
                continue;
            };
            let (mut now, later): (Vec<Timer>, Vec<Timer>) =
                timers.into_iter().partition(|t| t.0 <= now_ns);
            let rest = now.split_off(now.len().min(max - out.len()));
            out.extend(now);
            let left: Vec<&Timer> = rest.iter().chain(&later).collect();
            if left.is_empty() {
                inner.lists.insert(k, None);
            } else {
                let v = encode_list(left);
                inner.dirty_bytes += v.len() + SMALL_ENTRY;
                inner.lists.insert(k, Some(v));
            }
        }
        Ok(out)
    }

    /// Notifications waiting to be handed to the outbox (at most `max`), each durable
    /// with the key state that made it.
    ///
    /// Transitions queued since the last flush are flushed durably first. Handing over a
    /// transition that only the write-back map holds let a crash take back the state
    /// behind a notification already sent: a key declared orphan (its B in, its A not yet)
    /// fired, the crash returned the key to pending, and its A, re-sent after the restart,
    /// made it repaired without ever passing through orphan again, so the firing was never
    /// resolved. The durable flush costs one transaction per tick with new transitions,
    /// and none while nothing changes class into or out of a violation.
    pub fn pending_notifications(
        &self,
        max: usize,
    ) -> Result<Vec<faultline_notify::Event>, ChecksError> {
        let mut inner = self.lock();
        if !inner.outbox.is_empty() && inner.broken.is_none() {
            let r = self.flush_locked(&mut inner, true);
            if let Err(e) = &r {
                self.fail(&mut inner, e.clone());
            }
            r?;
        }
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(OUTBOX).map_err(db_err)?;
        let mut rows: Vec<(String, Vec<u8>)> = Vec::new();
        for row in t.iter().map_err(db_err)?.take(max) {
            let (k, v) = row.map_err(db_err)?;
            rows.push((k.value().to_string(), v.value().to_vec()));
        }
        drop(inner);
        let mut out = Vec::new();
        for (k, v) in rows {
            match serde_json::from_slice(&v) {
                Ok(ev) => out.push(ev),
                Err(e) => {
                    tracing::error!(key = %k, error = %e, "a queued notification is unreadable; it is dropped")
                }
            }
        }
        Ok(out)
    }

    /// Forgets notifications the outbox holds now (durably).
    pub fn notifications_handed_over(&self, keys: &[String]) -> Result<(), ChecksError> {
        let mut inner = self.lock();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(OUTBOX).map_err(db_err)?;
            for k in keys {
                t.remove(k.as_str()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        let gone: HashSet<&String> = keys.iter().collect();
        inner.outbox.retain(|(k, _)| !gone.contains(k));
        Ok(())
    }

    /// The definition of the rule in force named `name` (no lock but the rules').
    pub fn rule_def(&self, name: &str) -> Option<RuleDef> {
        self.rule_set().get(name).map(|r| r.def.clone())
    }

    /// Every rule with its figures.
    pub fn rules(&self) -> Vec<RuleView> {
        let rules = self.rule_set();
        let inner = self.lock();
        let view = |r: &Arc<Rule>, source| {
            let c = inner.counts.get(r.name()).copied().unwrap_or_default();
            let seen = inner.seen.get(r.name()).copied().unwrap_or_default();
            let by = |a: &[u64; 7]| CLASSES.iter().map(|c| (c.name(), a[*c as usize])).collect();
            RuleView {
                def: r.def.clone(),
                source,
                keys: by(&c.keys),
                violated: CLASSES
                    .iter()
                    .filter(|c| c.is_violation())
                    .map(|k| c.keys[*k as usize])
                    .sum(),
                entered: by(&c.entered),
                spans_first: seen.first,
                spans_then: seen.then,
                spans_unkeyed: seen.unkeyed,
            }
        };
        rules
            .config
            .iter()
            .map(|r| view(r, "config"))
            .chain(rules.api.iter().map(|r| view(r, "api")))
            .collect()
    }

    /// Keys of `rule` in `class` (every violation class when `None`), at most `limit`.
    pub fn keys(
        &self,
        rule: &str,
        class: Option<Class>,
        limit: usize,
    ) -> Result<Option<Vec<KeyView>>, ChecksError> {
        let rules = self.rule_set();
        let Some(r) = rules.get(rule) else {
            return Ok(None);
        };
        self.flush(false)?;
        let classes: Vec<Class> = match class {
            Some(c) => vec![c],
            None => CLASSES.into_iter().filter(|c| c.is_violation()).collect(),
        };
        let tx = self.db.begin_read().map_err(db_err)?;
        let index = tx.open_table(BY_CLASS).map_err(db_err)?;
        let keys = tx.open_table(KEYS).map_err(db_err)?;
        let mut out = Vec::new();
        for c in classes {
            if !indexed(c) {
                // The bulk classes have no index: scan the rule's keys, up to `limit` found
                // (they are common, so the scan ends soon).
                let prefix = record_key(rule, "");
                for row in keys.range(prefix.as_slice()..).map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    let k = k.value();
                    if !k.starts_with(&prefix) || out.len() >= limit {
                        break;
                    }
                    if let Some(rec) = KeyRecord::decode(v.value()).filter(|r| r.class == Some(c)) {
                        let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                        out.push(KeyView::new(r, key, c, &rec));
                    }
                }
                continue;
            }
            let prefix = index_key(rule, c, "");
            for row in index.range(prefix.as_slice()..).map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                let k = k.value();
                if !k.starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let Some(v) = keys
                    .get(record_key(rule, &key).as_slice())
                    .map_err(db_err)?
                else {
                    continue;
                };
                let Some(rec) = KeyRecord::decode(v.value()) else {
                    continue;
                };
                out.push(KeyView::new(r, key, c, &rec));
            }
        }
        Ok(Some(out))
    }

    /// Adds or replaces a rule made through the API (durably). A configured rule's name
    /// is refused.
    pub fn put_rule(&self, rule: Rule) -> Result<bool, ChecksError> {
        let mut set = self.rules.write().unwrap_or_else(|p| p.into_inner());
        if set.config.iter().any(|r| r.name() == rule.name()) {
            return Err(ChecksError::Conflict(format!(
                "rule {:?} comes from the configuration file; change it there",
                rule.name()
            )));
        }
        let json = serde_json::to_vec(&rule.def).map_err(|e| ChecksError::Db(e.to_string()))?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RULES).map_err(db_err)?;
            t.insert(rule.name(), json.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        let mut api: Vec<Arc<Rule>> = set.api.clone();
        let existed = api.iter().any(|r| r.name() == rule.name());
        api.retain(|r| r.name() != rule.name());
        api.push(Arc::new(rule));
        *set = Arc::new(RuleSet::new(set.config.clone(), api));
        Ok(existed)
    }

    /// Deletes a rule made through the API; its keys are forgotten as their timers fire.
    pub fn delete_rule(&self, name: &str) -> Result<bool, ChecksError> {
        let mut set = self.rules.write().unwrap_or_else(|p| p.into_inner());
        if set.config.iter().any(|r| r.name() == name) {
            return Err(ChecksError::Conflict(format!(
                "rule {name:?} comes from the configuration file; remove it there"
            )));
        }
        if !set.api.iter().any(|r| r.name() == name) {
            return Ok(false);
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RULES).map_err(db_err)?;
            t.remove(name).map_err(db_err)?;
            let mut c = tx.open_table(COUNTS).map_err(db_err)?;
            c.remove(name).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        self.lock().counts.remove(name);
        *set = Arc::new(RuleSet::new(
            set.config.clone(),
            set.api
                .iter()
                .filter(|r| r.name() != name)
                .cloned()
                .collect(),
        ));
        Ok(true)
    }

    /// Records of `rule`'s keys on disk (after a flush), for the tests.
    #[cfg(test)]
    pub(crate) fn stored_keys(&self, rule: &str) -> usize {
        let _ = self.flush(false);
        let prefix = record_key(rule, "");
        let Ok(tx) = self.db.begin_read() else {
            return 0;
        };
        let Ok(keys) = tx.open_table(KEYS) else {
            return 0;
        };
        let Ok(rows) = keys.range(prefix.as_slice()..) else {
            return 0;
        };
        rows.filter_map(Result::ok)
            .take_while(|(k, _)| k.value().starts_with(&prefix))
            .count()
    }

    /// Bytes of the write-back map now.
    pub fn memory_bytes(&self) -> usize {
        self.lock().dirty_bytes
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let rules = self.rules();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        out.push_str("# HELP faultline_consistency_keys Keys of a consistency rule by class.\n# TYPE faultline_consistency_keys gauge\n");
        for r in &rules {
            for (class, n) in &r.keys {
                let _ = writeln!(
                    out,
                    "faultline_consistency_keys{{rule=\"{}\",class=\"{class}\"}} {n}",
                    esc(&r.def.name)
                );
            }
        }
        out.push_str("# HELP faultline_consistency_transitions_total Times keys of a rule entered a class.\n# TYPE faultline_consistency_transitions_total counter\n");
        for r in &rules {
            for (class, n) in &r.entered {
                let _ = writeln!(
                    out,
                    "faultline_consistency_transitions_total{{rule=\"{}\",class=\"{class}\"}} {n}",
                    esc(&r.def.name)
                );
            }
        }
        out.push_str("# HELP faultline_consistency_spans_total Spans a rule matched since start, by side.\n# TYPE faultline_consistency_spans_total counter\n");
        for r in &rules {
            for (side, n) in [
                ("first", r.spans_first),
                ("then", r.spans_then),
                ("unkeyed", r.spans_unkeyed),
            ] {
                let _ = writeln!(
                    out,
                    "faultline_consistency_spans_total{{rule=\"{}\",side=\"{side}\"}} {n}",
                    esc(&r.def.name)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP faultline_consistency_memory_bytes Bytes of the rules' write-back map.\n# TYPE faultline_consistency_memory_bytes gauge\nfaultline_consistency_memory_bytes {}",
            self.memory_bytes()
        );
        let _ = writeln!(
            out,
            "# HELP faultline_consistency_broken 1 when the rules stopped because their database failed.\n# TYPE faultline_consistency_broken gauge\nfaultline_consistency_broken {}",
            u8::from(self.broken().is_some())
        );
        out
    }
}

/// A transition in words, for notifications.
fn describe(rule: &Rule, key: &str, class: Class, rec: &KeyRecord) -> String {
    let k = &rule.first_key;
    let within = &rule.def.within;
    match class {
        Class::Missing => format!(
            "{k}={key}: no span matching {} within {within} of its first span",
            rule.def.then
        ),
        Class::Duplicate => format!(
            "{k}={key}: {} spans matching {} where at most one is allowed",
            rec.b_total, rule.def.then
        ),
        Class::Orphan => format!(
            "{k}={key}: a span matching {} without any span matching {}",
            rule.def.then, rule.def.first
        ),
        Class::Repaired => format!(
            "{k}={key}: the span matching {} came {:.1}s late",
            rule.def.then,
            rec.late_ns(rule) as f64 / 1e9
        ),
        Class::Satisfied => format!("{k}={key}: now consistent"),
        Class::Pending | Class::Unmatched => format!("{k}={key}: {}", class.name()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod timer_tests {
    use super::*;

    fn rule() -> Rule {
        Rule::new(RuleDef {
            name: "order-shipped".into(),
            first: r#"{ service = "orders" }"#.into(),
            then: r#"{ service = "shipping" }"#.into(),
            key: Some("order.id".into()),
            first_key: None,
            then_key: None,
            within: "10s".into(),
            at_most_one: true,
            require_first: true,
            grace: "0s".into(),
            keep: "1h".into(),
            notify: false,
        })
        .unwrap()
    }

    fn hit(rule: &Arc<Rule>, n: u64, start_s: u64) -> Hit {
        Hit {
            rule: rule.clone(),
            is_first: true,
            key: Some(format!("o{n}")),
            span: SpanRef {
                trace: [1; 16],
                span: n.to_be_bytes(),
                start_ns: start_s * SECOND_NS,
            },
        }
    }

    #[test]
    fn lists_round_trip_and_damage_is_refused() {
        let timers = vec![
            (5, b"a\0k1".to_vec()),
            (7, Vec::new()),
            (u64::MAX, vec![9; 300]),
        ];
        let bytes = encode_list(&timers);
        assert_eq!(decode_list(&bytes), Some(timers));
        assert_eq!(decode_list(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_list(&bytes[..9]), None);
        assert_eq!(decode_list(&[]), Some(vec![]));
    }

    #[test]
    fn timers_of_earlier_versions_are_converted_and_fire() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path(), 1 << 20).unwrap();
        let path = dir.path().join(crate::DB_FILE);
        let c = Consistency::open(db.clone(), path.clone(), vec![rule()], 8 << 20).unwrap();
        let r = c.rule_set().config[0].clone();
        c.apply_hits((0..300).map(|n| hit(&r, n, 1000 + n % 5)).collect());
        c.flush(true).unwrap();
        drop(c);
        // Rewrite the timers as an earlier version kept them: one entry per timer.
        let tx = db.begin_write().unwrap();
        {
            let lists = tx.open_table(TIMER_LISTS).unwrap();
            let mut old = tx.open_table(TIMERS_V1).unwrap();
            let mut n = 0;
            for row in lists.iter().unwrap() {
                let (_, v) = row.unwrap();
                for (due, rk) in decode_list(v.value()).unwrap() {
                    let mut k = due.to_be_bytes().to_vec();
                    k.extend_from_slice(&rk);
                    old.insert(k.as_slice(), ()).unwrap();
                    n += 1;
                }
            }
            assert_eq!(n, 300);
        }
        tx.delete_table(TIMER_LISTS).unwrap();
        tx.commit().unwrap();
        let c = Consistency::open(db.clone(), path, vec![rule()], 8 << 20).unwrap();
        let read = db.begin_read().unwrap();
        assert!(
            read.list_tables().unwrap().all(|t| t.name() != "timers"),
            "the old table is gone"
        );
        drop(read);
        assert_eq!(c.sweep(1009 * SECOND_NS, 10_000).unwrap(), 0);
        // Due 10 s after each order: the first second's 60 fire at 1010 s.
        assert_eq!(c.sweep(1010 * SECOND_NS, 10_000).unwrap(), 60);
        assert_eq!(c.sweep(1020 * SECOND_NS, 10_000).unwrap(), 240);
        assert_eq!(c.rules()[0].keys["missing"], 300);
        assert_eq!(c.rules()[0].keys["pending"], 0);
    }
}
