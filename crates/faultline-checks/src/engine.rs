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
//!   (durable: the store's seal calls it before publishing a block). Sweeps and the
//!   notification hand-over read the map beside the database instead of flushing it:
//!   keys are random, so each flush rewrites B-tree pages all over the table, and flushing
//!   every second cost more than the rules' matching and updates together.
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
//! timers     u64 due ns (big-endian) rk → ()   stale entries are dropped when popped
//! by_class   RULE 0x00 class-u8 KEY    → ()   keys of a rule by class, for the API
//!                                             (not pending or satisfied: those are scanned)
//! counts     RULE                       → 14 × u64 LE: keys per class, entries per class
//! outbox     event key                  → notification Event as JSON, until handed over
//! rules      RULE                       → RuleDef as JSON (rules made through the API)
//! ```
//!
//! If the database fails (disk full, damage), the rules stop evaluating and say so in the
//! API, the metrics and the log; ingestion goes on (checks never stop the store).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use faultline_model::span::Span;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;

use crate::ChecksError;
use crate::rule::{Rule, RuleDef};
use crate::state::{CLASSES, Class, KeyRecord, SpanRef, classify, due};

const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
const TIMERS: TableDefinition<&[u8], ()> = TableDefinition::new("timers");
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
    dirty: HashMap<Vec<u8>, Option<KeyRecord>>,
    dirty_bytes: usize,
    /// Timer and class-index entries to insert (true) or remove (false).
    timers: HashMap<Vec<u8>, bool>,
    index: HashMap<Vec<u8>, bool>,
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

fn timer_key(due: u64, rk: &[u8]) -> Vec<u8> {
    let mut k = due.to_be_bytes().to_vec();
    k.extend_from_slice(rk);
    k
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
            tx.open_table(TIMERS).map_err(db_err)?;
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
                dirty: HashMap::new(),
                dirty_bytes: 0,
                timers: HashMap::new(),
                index: HashMap::new(),
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
        let mut rec = stored.clone().unwrap_or_default();
        let old_due = stored.as_ref().map(|r| due(r, rule));
        if !change(&mut rec) {
            return Ok(());
        }
        let new = classify(&rec, rule);
        let old = rec.class.filter(|_| stored.is_some());
        rec.class = Some(new);
        let new_due = due(&rec, rule);
        // A timer exists at `old_due`; when the due moves later, that timer reschedules
        // itself when it fires (one B-tree insert per key on the hot path, not two).
        if old_due.is_none_or(|d| new_due < d) {
            Self::mark(
                &mut inner.timers,
                &mut inner.dirty_bytes,
                timer_key(new_due, &rk),
                true,
            );
        }
        self.transition(inner, rule, key, old, Some(new), &rec);
        self.put(inner, rk, Some(rec));
        Ok(())
    }

    /// Records a timer or index entry to insert or remove, counting its memory.
    fn mark(map: &mut HashMap<Vec<u8>, bool>, bytes: &mut usize, k: Vec<u8>, add: bool) {
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
            let mut timers = tx.open_table(TIMERS).map_err(db_err)?;
            let mut sorted: Vec<_> = inner.timers.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (k, add) in sorted {
                if *add {
                    timers.insert(k.as_slice(), ()).map_err(db_err)?;
                } else {
                    timers.remove(k.as_slice()).map_err(db_err)?;
                }
            }
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
        // The due timers are the database's and the write-back map's, less those the map
        // removes: the map is not flushed for this, so a sweep writes nothing unless the
        // map outgrows its bound (flushing every second rewrote most of the keys' B-tree).
        let end = (now_ns.saturating_add(1)).to_be_bytes();
        let mut due_keys: Vec<Vec<u8>> = inner
            .timers
            .iter()
            .filter(|(k, add)| **add && k.as_slice() < end.as_slice())
            .map(|(k, _)| k.clone())
            .collect();
        {
            let tx = self.db.begin_read().map_err(db_err)?;
            let t = tx.open_table(TIMERS).map_err(db_err)?;
            for row in t.range(..end.as_slice()).map_err(db_err)? {
                if due_keys.len() >= max.saturating_mul(2) {
                    break;
                }
                let (k, _) = row.map_err(db_err)?;
                let k = k.value();
                if !inner.timers.contains_key(k) {
                    due_keys.push(k.to_vec());
                }
            }
        }
        due_keys.sort_unstable();
        due_keys.truncate(max);
        let mut tx = None;
        for tk in &due_keys {
            let i = &mut *inner;
            Self::mark(&mut i.timers, &mut i.dirty_bytes, tk.clone(), false);
            let Some((due_at, rk)) = tk.split_first_chunk::<8>() else {
                continue;
            };
            let due_at = u64::from_be_bytes(*due_at);
            let Some((name, key)) = split_key(rk) else {
                continue;
            };
            let Some(rule) = rules.get(name) else {
                continue;
            };
            let Some(rec) = self.get(&inner, rk, &mut tx)? else {
                continue;
            };
            let d = due(&rec, rule);
            if d > due_at {
                // The due moved later: this timer moves with it.
                let i = &mut *inner;
                Self::mark(&mut i.timers, &mut i.dirty_bytes, timer_key(d, rk), true);
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
                    let next = timer_key(due(r, rule), rk);
                    let i = &mut *inner;
                    Self::mark(&mut i.timers, &mut i.dirty_bytes, next, true);
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
        Ok(due_keys.len())
    }

    /// Notifications waiting to be handed to the outbox (at most `max`).
    pub fn pending_notifications(
        &self,
        max: usize,
    ) -> Result<Vec<faultline_notify::Event>, ChecksError> {
        // The database's queue and the write-back map's (not flushed for this: the outbox
        // takes each key once, so handing over a transition a crash replays is harmless).
        let inner = self.lock();
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(OUTBOX).map_err(db_err)?;
        let mut rows: Vec<(String, Vec<u8>)> = Vec::new();
        for row in t.iter().map_err(db_err)?.take(max) {
            let (k, v) = row.map_err(db_err)?;
            rows.push((k.value().to_string(), v.value().to_vec()));
        }
        let stored: HashSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
        for (k, v) in &inner.outbox {
            if rows.len() >= max {
                break;
            }
            if !stored.contains(k) {
                rows.push((k.clone(), v.clone()));
            }
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
