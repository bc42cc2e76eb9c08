//! Continuous trace assertions ([`Continuous`]): every new trace holding a span that
//! matches an assertion's `match` selector is checked once it has settled (`settle` after
//! that span was indexed), with the assertion file's checks (`faultline_rules::assertion`).
//! Pass and fail counts and the latest failing traces are kept per assertion.
//!
//! In the configuration:
//!
//! ```toml
//! [[assertions]]
//! name = "checkout"
//! file = "assertions/checkout.json"     # an assertion file, as for `faultline assert`
//! match = '{ service = "frontend" && kind = server && name = "POST /checkout" }'
//! settle = "10s"                         # default 10s
//! ```
//!
//! State lives in `checks.redb` beside the consistency rules', flushed with them (durably
//! at every checkpoint), so a trace is checked once across crashes: a trace waiting to be
//! checked is in `assert_pending` or is replayed from the WAL, and a trace checked is in
//! `assert_done` (remembered for [`DONE_KEEP_NS`]) before its counts are durable.
//!
//! ```text
//! assert_pending  NAME 0x00 trace-id(16) → u64 due ns
//! assert_done     NAME 0x00 trace-id(16) → u64 checked ns
//! assert_stats    NAME                   → Stats as JSON
//! ```

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use faultline_model::span::Span;
use faultline_rules::{AssertionFile, Selector, check_trace};
use faultline_store::SpanStore;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{ChecksError, FastSet};

const PENDING: TableDefinition<&[u8], u64> = TableDefinition::new("assert_pending");
const DONE: TableDefinition<&[u8], u64> = TableDefinition::new("assert_done");
const STATS: TableDefinition<&str, &[u8]> = TableDefinition::new("assert_stats");

/// Traces waiting to be checked, over all assertions; beyond it new traces are skipped
/// (and counted).
pub const MAX_PENDING: usize = 100_000;
/// How long a checked trace is remembered, so that its late spans or a replay do not
/// check it again (spans of a trace arriving over an hour apart start a second check).
pub const DONE_KEEP_NS: u64 = 3600 * 1_000_000_000;
/// Checked traces remembered at most (the oldest are forgotten first): about 64 bytes of
/// memory each, so at most about 64 MiB.
pub const MAX_DONE: usize = 1_000_000;
/// Changes held in memory before [`Continuous::run_due`] writes them itself (about 100
/// bytes each); otherwise they are written at the checkpoint.
pub const FLUSH_CHANGES: usize = 50_000;
/// Failing traces kept per assertion.
pub const EXAMPLES: usize = 20;

/// A continuous assertion, checked.
#[derive(Debug, Clone)]
pub struct ContinuousDef {
    pub name: String,
    /// Which traces: those with a span matching it (one-span selector).
    pub matcher: Selector,
    pub file: AssertionFile,
    pub settle_ns: u64,
}

impl ContinuousDef {
    /// Checks a definition; the error names the field.
    pub fn new(
        name: &str,
        matcher: &str,
        file: AssertionFile,
        settle: &str,
    ) -> Result<ContinuousDef, String> {
        if name.is_empty() || name.contains('\0') {
            return Err("assertions.name: give the assertion a name".into());
        }
        let m = Selector::parse(matcher).map_err(|e| format!("assertions[{name}].match: {e}"))?;
        if !m.is_single() {
            return Err(format!(
                "assertions[{name}].match: the selector must look at one span (no `>` or `>>`)"
            ));
        }
        let settle_ns = faultline_model::duration::parse_ns(settle).ok_or_else(|| {
            format!("assertions[{name}].settle: {settle:?} is not a duration such as \"10s\"")
        })?;
        Ok(ContinuousDef {
            name: name.to_string(),
            matcher: m,
            file,
            settle_ns,
        })
    }
}

/// A failing trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub trace_id: String,
    pub link: String,
    pub checked_ms: u64,
    /// `name: message` of each failed check.
    pub failures: Vec<String>,
}

/// Figures of one assertion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub passed: u64,
    pub failed: u64,
    /// Traces not checked: gone by the time they settled, or over [`MAX_PENDING`].
    pub skipped: u64,
    pub examples: VecDeque<Example>,
}

/// One assertion with its figures, for the API and the UI.
#[derive(Debug, Clone, Serialize)]
pub struct ContinuousView {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: String,
    pub settle_ms: u64,
    pub checks: Vec<String>,
    pub pending: usize,
    #[serde(flatten)]
    pub stats: Stats,
}

/// An assertion (its position in `defs`) and a trace.
type Entry = (u16, [u8; 16]);

struct Inner {
    /// (due, assertion, trace) in due order, and the same set for membership.
    queue: BTreeSet<(u64, u16, [u8; 16])>,
    queued: FastSet<Entry>,
    done: FastSet<Entry>,
    done_order: VecDeque<(u64, u16, [u8; 16])>,
    stats: HashMap<String, Stats>,
    /// Changes since the last flush: pending (Some(due): insert, None: remove), done.
    pending_changes: HashMap<Vec<u8>, Option<u64>>,
    done_changes: HashMap<Vec<u8>, Option<u64>>,
    stats_dirty: HashSet<String>,
    /// A non-durable commit happened since the last durable one.
    unsynced: bool,
}

/// Continuous assertions; see the module doc.
pub struct Continuous {
    db: Arc<Database>,
    defs: Vec<ContinuousDef>,
    /// The `match` selectors of `defs` by service.
    index: faultline_rules::SelectorIndex,
    inner: Mutex<Inner>,
    clock: crate::Clock,
}

impl std::fmt::Debug for Continuous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Continuous")
            .field("assertions", &self.defs.len())
            .finish_non_exhaustive()
    }
}

fn db_err(e: impl Into<redb::Error>) -> ChecksError {
    ChecksError::Db(e.into().to_string())
}

fn entry_key(name: &str, trace: &[u8; 16]) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(trace);
    k
}

/// The position of the assertion `name` in `defs`.
fn position(defs: &[ContinuousDef], name: &str) -> Option<u16> {
    defs.iter()
        .position(|d| d.name == name)
        .and_then(|i| u16::try_from(i).ok())
}

fn split_entry(k: &[u8]) -> Option<(String, [u8; 16])> {
    let at = k.iter().position(|b| *b == 0)?;
    let trace: [u8; 16] = k.get(at + 1..)?.try_into().ok()?;
    Some((String::from_utf8(k[..at].to_vec()).ok()?, trace))
}

impl Continuous {
    /// Loads the assertions' state from `db`.
    pub fn open(
        db: Arc<Database>,
        defs: Vec<ContinuousDef>,
        clock: crate::Clock,
    ) -> Result<Self, ChecksError> {
        let mut inner = Inner {
            queue: BTreeSet::new(),
            queued: FastSet::default(),
            done: FastSet::default(),
            done_order: VecDeque::new(),
            stats: HashMap::new(),
            pending_changes: HashMap::new(),
            done_changes: HashMap::new(),
            stats_dirty: HashSet::new(),
            unsynced: false,
        };
        let now = clock();
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut p = tx.open_table(PENDING).map_err(db_err)?;
            let mut stale = Vec::new();
            for row in p.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                match split_entry(k.value())
                    .and_then(|(name, t)| Some((position(&defs, &name)?, t)))
                {
                    Some((i, trace)) => {
                        inner.queue.insert((v.value(), i, trace));
                        inner.queued.insert((i, trace));
                    }
                    None => stale.push(k.value().to_vec()),
                }
            }
            for k in stale {
                p.remove(k.as_slice()).map_err(db_err)?;
            }
            let mut d = tx.open_table(DONE).map_err(db_err)?;
            let mut old = Vec::new();
            let mut rows = Vec::new();
            for row in d.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                match split_entry(k.value())
                    .and_then(|(name, t)| Some((position(&defs, &name)?, t)))
                {
                    Some((i, trace)) if v.value().saturating_add(DONE_KEEP_NS) >= now => {
                        rows.push((v.value(), i, trace));
                    }
                    _ => old.push(k.value().to_vec()),
                }
            }
            for k in old {
                d.remove(k.as_slice()).map_err(db_err)?;
            }
            rows.sort();
            for (at, i, trace) in rows {
                inner.done.insert((i, trace));
                inner.done_order.push_back((at, i, trace));
            }
            let s = tx.open_table(STATS).map_err(db_err)?;
            for row in s.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                if let Ok(st) = serde_json::from_slice::<Stats>(v.value()) {
                    inner.stats.insert(k.value().to_string(), st);
                }
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(Continuous {
            db,
            index: faultline_rules::SelectorIndex::new(defs.iter().map(|d| &d.matcher)),
            defs,
            inner: Mutex::new(inner),
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any assertion is configured.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// Queues the traces of spans matching an assertion's selector.
    pub fn observe(&self, spans: &[Span]) {
        // Each (assertion, trace) once per record (sorted and deduplicated below), as a
        // record holds hundreds of spans of few traces.
        let mut hits: Vec<Entry> = Vec::new();
        for s in spans {
            for i in self.index.candidates(s) {
                let e = (i as u16, s.trace_id);
                if self.defs[i].matcher.matches_span(s) {
                    hits.push(e);
                }
            }
        }
        if hits.is_empty() {
            return;
        }
        hits.sort_unstable();
        hits.dedup();
        let now = (self.clock)();
        let mut inner = self.lock();
        for id in hits {
            if inner.queued.contains(&id) || inner.done.contains(&id) {
                continue;
            }
            let d = &self.defs[usize::from(id.0)];
            if inner.queue.len() >= MAX_PENDING {
                inner.stats.entry(d.name.clone()).or_default().skipped += 1;
                inner.stats_dirty.insert(d.name.clone());
                continue;
            }
            let due = now.saturating_add(d.settle_ns);
            inner
                .pending_changes
                .insert(entry_key(&d.name, &id.1), Some(due));
            inner.queue.insert((due, id.0, id.1));
            inner.queued.insert(id);
        }
    }

    /// Checks the traces that settled by now (at most `max`), reading them from `store`.
    /// Blocking (store reads). Returns how many were checked.
    pub fn run_due(&self, store: &dyn SpanStore, max: usize) -> Result<usize, ChecksError> {
        let now = (self.clock)();
        let due: Vec<(u64, u16, [u8; 16])> = {
            let inner = self.lock();
            inner
                .queue
                .iter()
                .take_while(|(d, _, _)| *d <= now)
                .take(max)
                .cloned()
                .collect()
        };
        // One store call for all of them (the store reads each block once).
        let ids: Vec<[u8; 16]> = due.iter().map(|(_, _, t)| *t).collect();
        let answers = store
            .traces(&ids)
            .map_err(|e| ChecksError::Store(e.to_string()))?;
        for (&(at, i, trace), answer) in due.iter().zip(answers) {
            let def = &self.defs[usize::from(i)];
            let name = &def.name;
            let mut inner = self.lock();
            let k = entry_key(name, &trace);
            inner.queue.remove(&(at, i, trace));
            inner.queued.remove(&(i, trace));
            inner.pending_changes.insert(k.clone(), None);
            let stats = inner.stats.entry(name.clone()).or_default();
            if answer.spans.is_empty() {
                stats.skipped += 1;
            } else {
                let failures: Vec<String> = check_trace(&def.file, &answer.spans)
                    .into_iter()
                    .filter(|o| !o.pass)
                    .map(|o| format!("{}: {}", o.name, o.message))
                    .collect();
                if failures.is_empty() {
                    stats.passed += 1;
                } else {
                    stats.failed += 1;
                    let trace_id = faultline_model::hex(&trace);
                    stats.examples.push_front(Example {
                        link: format!("/trace/{trace_id}"),
                        trace_id,
                        checked_ms: now / 1_000_000,
                        failures,
                    });
                    stats.examples.truncate(EXAMPLES);
                }
            }
            inner.stats_dirty.insert(name.clone());
            inner.done.insert((i, trace));
            inner.done_order.push_back((now, i, trace));
            inner.done_changes.insert(k, Some(now));
        }
        // Forget traces checked longer ago than DONE_KEEP_NS, or beyond MAX_DONE.
        let mut inner = self.lock();
        while let Some(&(at, i, trace)) = inner.done_order.front() {
            if at.saturating_add(DONE_KEEP_NS) >= now && inner.done_order.len() <= MAX_DONE {
                break;
            }
            inner.done_order.pop_front();
            inner
                .done_changes
                .insert(entry_key(&self.defs[usize::from(i)].name, &trace), None);
            inner.done.remove(&(i, trace));
        }
        // Written at the next checkpoint (with the store's seal), or now when many
        // changes wait: a write per tick rewrote B-tree pages for a few thousand entries.
        let waiting = inner.pending_changes.len() + inner.done_changes.len();
        drop(inner);
        if waiting > FLUSH_CHANGES {
            self.flush(false)?;
        }
        Ok(due.len())
    }

    /// Writes the changes since the last flush in one transaction (`durable`: synced).
    pub fn flush(&self, durable: bool) -> Result<(), ChecksError> {
        let mut inner = self.lock();
        if inner.pending_changes.is_empty()
            && inner.done_changes.is_empty()
            && inner.stats_dirty.is_empty()
            && (!durable || !inner.unsynced)
        {
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
            let mut p = tx.open_table(PENDING).map_err(db_err)?;
            for (k, v) in &inner.pending_changes {
                match v {
                    Some(due) => p.insert(k.as_slice(), *due).map_err(db_err)?,
                    None => p.remove(k.as_slice()).map_err(db_err)?,
                };
            }
            let mut d = tx.open_table(DONE).map_err(db_err)?;
            for (k, v) in &inner.done_changes {
                match v {
                    Some(at) => d.insert(k.as_slice(), *at).map_err(db_err)?,
                    None => d.remove(k.as_slice()).map_err(db_err)?,
                };
            }
            let mut s = tx.open_table(STATS).map_err(db_err)?;
            for name in &inner.stats_dirty {
                if let Some(st) = inner.stats.get(name) {
                    let json =
                        serde_json::to_vec(st).map_err(|e| ChecksError::Db(e.to_string()))?;
                    s.insert(name.as_str(), json.as_slice()).map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        inner.unsynced = !durable;
        inner.pending_changes.clear();
        inner.done_changes.clear();
        inner.stats_dirty.clear();
        Ok(())
    }

    /// Every assertion with its figures.
    pub fn views(&self) -> Vec<ContinuousView> {
        let inner = self.lock();
        let mut pending: HashMap<u16, usize> = HashMap::new();
        for (i, _) in &inner.queued {
            *pending.entry(*i).or_default() += 1;
        }
        self.defs
            .iter()
            .enumerate()
            .map(|(i, d)| ContinuousView {
                name: d.name.clone(),
                matcher: d.matcher.text().to_string(),
                settle_ms: d.settle_ns / 1_000_000,
                checks: d.file.assertions.iter().map(|a| a.name.clone()).collect(),
                pending: pending.get(&(i as u16)).copied().unwrap_or(0),
                stats: inner.stats.get(&d.name).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from(
            "# HELP faultline_assertion_traces_total Traces checked by a continuous assertion, by result.\n# TYPE faultline_assertion_traces_total counter\n",
        );
        for v in self.views() {
            let name = v.name.replace('\\', "\\\\").replace('"', "\\\"");
            for (result, n) in [
                ("pass", v.stats.passed),
                ("fail", v.stats.failed),
                ("skipped", v.stats.skipped),
            ] {
                let _ = writeln!(
                    out,
                    "faultline_assertion_traces_total{{assertion=\"{name}\",result=\"{result}\"}} {n}"
                );
            }
        }
        out
    }
}
