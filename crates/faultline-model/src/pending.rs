//! Which acknowledged WAL records hold spans of which trace, until the store has indexed
//! them: [`PendingTraces`].
//!
//! Intake adds a record's trace ids once the WAL acknowledged it (with where the record
//! lies, [`RecordAt`]); the pipeline removes a record once its spans are in the store's
//! head, and everything at or below the store's durable position every second (that
//! sweep also removes what a race left behind: a record the pipeline indexed before intake
//! got to add it). A read of a trace by id reads the records named here from the WAL, so
//! an acknowledged trace can be read before indexing gets to it: after a burst, during a
//! replayed backlog, while indexing is throttled.
//!
//! The map is an index over the WAL, never the only copy of anything: losing an entry
//! only means that trace waits for indexing to be readable, and an entry for a record
//! that is also indexed is harmless (the reader drops spans the store already answers).
//! The WAL publishes a record as committed before intake hears its acknowledgement, so
//! the pipeline may index a record before intake adds it: a removal of a record not (yet)
//! noted leaves a tombstone that the later add consumes, and the sweep clears both.
//! It is bounded: beyond `max_entries` (trace, record) pairs new records are not added,
//! nor beyond [`MAX_RECORDS_PER_TRACE`] records for one trace (a trace id every request
//! repeats would make removals and reads of it slow); both are counted in
//! [`PendingTraces::overflowed`].
//!
//! With `storage = "clickhouse"` reads of a trace answer from ClickHouse, not from the
//! node's store, so a record is pending until the ClickHouse writer has sent it: after
//! [`PendingTraces::follow_shipping`] the pipeline's removals are ignored and the writer
//! removes what it sent ([`PendingTraces::shipped_through`]). Otherwise a trace read from
//! the WAL while pending could answer 404 a moment later, once indexed here but not yet
//! in ClickHouse.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::span::TraceId;

/// Where an acknowledged WAL record lies (what `faultline_wal::Ack` says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordAt {
    /// Its sequence number.
    pub seq: u64,
    /// The first sequence number of its segment.
    pub segment: u64,
    /// Byte offset of its record header in the segment.
    pub offset: u64,
}

/// Default bound on (trace, record) pairs: 35-47 bytes each (see `Inner`), so about 190 MB
/// at most; a backlog of about 68M varied spans in 500-span requests fits (17M spans
/// made about 1M pairs).
pub const DEFAULT_MAX_ENTRIES: usize = 4_000_000;

/// Most records noted for one trace; later ones wait for indexing.
pub const MAX_RECORDS_PER_TRACE: usize = 256;

/// Most tombstones kept (removals of records not noted); the oldest go first.
const MAX_TOMBSTONES: usize = 100_000;

/// A trace id folded to 8 bytes, the maps' key. Two traces may share one (a read of one
/// then also reads the other's records, and keeps only its own spans: harmless); ids of
/// 64-bit tracers, whose high half is zero, keep their low half whole.
fn key(id: &TraceId) -> u64 {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&id[..8]);
    lo.copy_from_slice(&id[8..]);
    u64::from_le_bytes(lo) ^ u64::from_le_bytes(hi).rotate_left(29)
}

/// A noted record: where it lies and the keys of its traces (each once).
struct Noted {
    segment: u64,
    offset: u64,
    /// Boxed: the list collected from a record's spans has room for one id per span.
    keys: Box<[u64]>,
}

/// 35-47 bytes per (trace, record) pair on 64-bit targets: an entry of `first` (two
/// `u64`s and the hash table's slack) and the key again in `by_seq`; nearly every trace
/// lies in one record, so `more` stays small. A `HashMap<TraceId, Vec<RecordAt>>` took
/// 214 bytes per pair (a heap list per trace).
#[derive(Default)]
struct Inner {
    /// Trace key → one record holding its spans.
    first: HashMap<u64, u64>,
    /// Trace key → the other records holding its spans, for traces in several.
    more: HashMap<u64, Vec<u64>>,
    by_seq: BTreeMap<u64, Noted>,
    /// Records removed before they were noted (see the module doc).
    removed: std::collections::BTreeSet<u64>,
    entries: usize,
}

impl Inner {
    /// Records noted for trace key `k`.
    fn count(&self, k: u64) -> usize {
        usize::from(self.first.contains_key(&k)) + self.more.get(&k).map_or(0, Vec::len)
    }

    fn note(&mut self, k: u64, seq: u64) {
        match self.first.entry(k) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(seq);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more.entry(k).or_default().push(seq);
            }
        }
        self.entries += 1;
    }

    fn remove(&mut self, seq: u64, keys: Box<[u64]>) {
        for k in keys {
            if self.first.get(&k) == Some(&seq) {
                self.entries -= 1;
                let next = self.more.get_mut(&k).and_then(Vec::pop);
                match next {
                    Some(other) => {
                        self.first.insert(k, other);
                    }
                    None => {
                        self.first.remove(&k);
                    }
                }
            } else if let Some(v) = self.more.get_mut(&k) {
                let before = v.len();
                v.retain(|&s| s != seq);
                self.entries -= before - v.len();
            }
            if self.more.get(&k).is_some_and(Vec::is_empty) {
                self.more.remove(&k);
            }
        }
    }
}

/// Trace id → the acknowledged records holding its spans that the store has not indexed
/// yet (see the module doc). Shared by intake, the pipeline and the read path.
pub struct PendingTraces {
    inner: Mutex<Inner>,
    max_entries: usize,
    overflowed: AtomicU64,
    /// Ranges committed before this start that the backlog has not noted yet.
    unscanned: AtomicU64,
    /// Whether records leave when shipped rather than when indexed (see the module doc).
    shipping: AtomicBool,
    /// While shipping, records below this are sent: a late note of one is dropped.
    shipped: AtomicU64,
}

impl std::fmt::Debug for PendingTraces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTraces")
            .field("entries", &self.len())
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl Default for PendingTraces {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl PendingTraces {
    /// An empty map holding at most `max_entries` (trace, record) pairs.
    pub fn new(max_entries: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_entries,
            overflowed: AtomicU64::new(0),
            unscanned: AtomicU64::new(0),
            shipping: AtomicBool::new(false),
            shipped: AtomicU64::new(0),
        }
    }

    /// From now on a record is forgotten when a writer has sent it elsewhere
    /// ([`Self::shipped_through`]), no longer when the store indexed it: [`Self::remove`]
    /// and [`Self::remove_through`] do nothing (see the module doc).
    pub fn follow_shipping(&self) {
        self.shipping.store(true, Ordering::SeqCst);
    }

    /// Forgets every record at or below `seq`, which a writer has sent to where reads
    /// answer from; a record at or below it noted later is not added.
    pub fn shipped_through(&self, seq: u64) {
        self.shipped
            .fetch_max(seq.saturating_add(1), Ordering::SeqCst);
        self.forget_through(seq);
    }

    fn indexing_removes(&self) -> bool {
        !self.shipping.load(Ordering::SeqCst)
    }

    /// Says that `n` ranges of records committed before this start are still to be noted
    /// (the backlog thread scans them after the start): until they are, a trace missing
    /// here may be in them. Replaces the count of an earlier start over the same map,
    /// whose backlog thread may have stopped before noting everything.
    pub fn expect_scans(&self, n: u64) {
        self.unscanned.store(n, Ordering::SeqCst);
    }

    /// One range announced by [`PendingTraces::expect_scans`] is noted.
    pub fn scanned(&self) {
        let _ = self
            .unscanned
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// Whether records committed before this start are still being noted.
    pub fn scanning(&self) -> bool {
        self.unscanned.load(Ordering::SeqCst) > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map is a cache over the WAL: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that record `at` holds spans of the traces `ids` (duplicates allowed). A
    /// record already noted, or one that would pass the bound, is not added.
    pub fn add(&self, at: RecordAt, ids: impl IntoIterator<Item = TraceId>) {
        let mut keys: Vec<u64> = ids.into_iter().map(|id| key(&id)).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut g = self.lock();
        if g.removed.remove(&at.seq)
            || g.by_seq.contains_key(&at.seq)
            || at.seq < self.shipped.load(Ordering::SeqCst)
        {
            return;
        }
        let crowded = keys.iter().any(|&k| g.count(k) >= MAX_RECORDS_PER_TRACE);
        if g.entries + keys.len() > self.max_entries || crowded {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        for &k in &keys {
            g.note(k, at.seq);
        }
        let noted = Noted {
            segment: at.segment,
            offset: at.offset,
            keys: keys.into_boxed_slice(),
        };
        g.by_seq.insert(at.seq, noted);
    }

    /// Whether record `seq` is noted.
    pub fn has_record(&self, seq: u64) -> bool {
        self.lock().by_seq.contains_key(&seq)
    }

    /// Forgets record `seq` (its spans are in the store now), unless records wait for
    /// shipping ([`Self::follow_shipping`]).
    pub fn remove(&self, seq: u64) {
        if !self.indexing_removes() {
            return;
        }
        let mut g = self.lock();
        match g.by_seq.remove(&seq) {
            Some(noted) => g.remove(seq, noted.keys),
            None => {
                g.removed.insert(seq);
                if g.removed.len() > MAX_TOMBSTONES {
                    g.removed.pop_first();
                }
            }
        }
    }

    /// Forgets every record at or below `seq` (the store's durable position), unless
    /// records wait for shipping ([`Self::follow_shipping`]).
    pub fn remove_through(&self, seq: u64) {
        if self.indexing_removes() {
            self.forget_through(seq);
        }
    }

    fn forget_through(&self, seq: u64) {
        let mut g = self.lock();
        let rest = match seq.checked_add(1) {
            Some(next) => g.by_seq.split_off(&next),
            None => BTreeMap::new(),
        };
        let done = std::mem::replace(&mut g.by_seq, rest);
        for (s, noted) in done {
            g.remove(s, noted.keys);
        }
        let rest = match seq.checked_add(1) {
            Some(next) => g.removed.split_off(&next),
            None => Default::default(),
        };
        g.removed = rest;
    }

    /// The records holding spans of trace `id`, oldest first.
    pub fn records(&self, id: &TraceId) -> Vec<RecordAt> {
        let g = self.lock();
        let k = key(id);
        let seqs = g
            .first
            .get(&k)
            .into_iter()
            .chain(g.more.get(&k).into_iter().flatten());
        let mut at: Vec<RecordAt> = seqs
            .filter_map(|&seq| {
                g.by_seq.get(&seq).map(|n| RecordAt {
                    seq,
                    segment: n.segment,
                    offset: n.offset,
                })
            })
            .collect();
        at.sort_unstable_by_key(|r| r.seq);
        at
    }

    /// (trace, record) pairs held.
    pub fn len(&self) -> usize {
        self.lock().entries
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records not added because the map was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads wait while the start's ranges are unnoted; a range deferred later (its
    /// `scanned` comes without an `expect_scans`) cannot make the count wrap.
    #[test]
    fn scanning_lasts_until_every_announced_range_is_noted() {
        let p = PendingTraces::new(10);
        assert!(!p.scanning());
        p.expect_scans(2);
        p.scanned();
        assert!(p.scanning(), "one of two ranges noted");
        p.scanned();
        assert!(!p.scanning());
        p.scanned();
        assert!(
            !p.scanning(),
            "a later range's scan does not wrap the count"
        );
        p.expect_scans(1);
        assert!(p.scanning());
        // A pipeline stopped with 3 ranges unnoted, then a new start with 1.
        p.expect_scans(3);
        p.expect_scans(1);
        p.scanned();
        assert!(!p.scanning(), "a new start's count replaces the old one");
    }

    fn at(seq: u64) -> RecordAt {
        RecordAt {
            seq,
            segment: 1,
            offset: seq * 100,
        }
    }

    #[test]
    fn records_are_found_by_trace_and_forgotten_by_record() {
        let p = PendingTraces::new(100);
        p.add(at(1), [[1; 16], [2; 16], [1; 16]]);
        p.add(at(2), [[2; 16]]);
        p.add(at(3), [[3; 16]]);
        assert_eq!(p.len(), 4, "duplicates within a record count once");
        assert_eq!(p.records(&[2; 16]), vec![at(1), at(2)]);
        p.remove(1);
        assert_eq!(p.records(&[1; 16]), Vec::new());
        assert_eq!(p.records(&[2; 16]), vec![at(2)]);
        p.remove(1); // twice is harmless
        p.remove_through(2);
        assert_eq!(p.records(&[2; 16]), Vec::new());
        assert_eq!(p.records(&[3; 16]), vec![at(3)]);
        assert_eq!(p.len(), 1);
        p.remove_through(u64::MAX);
        assert!(p.is_empty());
    }

    /// The pipeline indexed record 5 before intake noted it: the late note is dropped, so
    /// nothing stays behind for reads to go over; the sweep clears tombstones.
    #[test]
    fn a_removal_before_the_note_leaves_nothing_behind() {
        let p = PendingTraces::new(100);
        p.remove(5);
        p.add(at(5), [[5; 16]]);
        assert!(p.is_empty() && !p.has_record(5));
        p.add(at(5), [[5; 16]]);
        assert!(p.has_record(5), "a tombstone is consumed once");
        p.remove(6);
        p.remove_through(6);
        p.add(at(6), [[6; 16]]);
        assert!(p.has_record(6), "the sweep cleared the tombstone");
    }

    /// On ClickHouse a record indexed here stays pending until the writer sent it; a
    /// note arriving after its record was sent is dropped.
    #[test]
    fn when_following_shipping_only_the_writer_forgets_records() {
        let p = PendingTraces::new(100);
        p.follow_shipping();
        p.add(at(1), [[1; 16]]);
        p.add(at(2), [[2; 16]]);
        p.remove(1);
        p.remove_through(2);
        assert_eq!(p.records(&[1; 16]), vec![at(1)], "indexed, not yet shipped");
        assert_eq!(p.records(&[2; 16]), vec![at(2)]);
        p.shipped_through(1);
        assert_eq!(p.records(&[1; 16]), Vec::new());
        assert_eq!(p.records(&[2; 16]), vec![at(2)]);
        p.add(at(1), [[1; 16]]);
        assert!(!p.has_record(1), "shipped before intake noted it");
        p.shipped_through(0);
        p.add(at(1), [[1; 16]]);
        assert!(!p.has_record(1), "the shipped position never goes back");
        p.add(at(3), [[3; 16]]);
        assert!(p.has_record(3));
        p.shipped_through(u64::MAX);
        assert!(p.is_empty());
    }

    /// Two traces whose ids fold to one key: a read of either also gets the other's
    /// records (the reader keeps only its own spans), and counts and removals stay right.
    #[test]
    fn traces_sharing_a_key_read_a_superset_and_leave_nothing_behind() {
        let a: TraceId = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut b = [0u8; 16];
        let h = 0x1122_3344_5566_7788u64;
        b[..8].copy_from_slice(&h.to_le_bytes());
        let lo = u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]) ^ h.rotate_left(29);
        b[8..].copy_from_slice(&lo.to_le_bytes());
        assert_eq!(key(&a), key(&b));
        let p = PendingTraces::new(100);
        p.add(at(1), [a, b]);
        assert_eq!(p.len(), 1, "one key in one record");
        p.add(at(2), [b]);
        assert_eq!(p.records(&a), vec![at(1), at(2)]);
        assert_eq!(p.records(&b), vec![at(1), at(2)]);
        p.remove(1);
        assert_eq!(p.records(&a), vec![at(2)]);
        p.remove(2);
        assert!(p.is_empty() && p.records(&b).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u64, Vec<usize>),
        Remove(u64),
        RemoveThrough(u64),
        Shipped(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..40u64, proptest::collection::vec(0..8usize, 0..5))
                .prop_map(|(s, ids)| Op::Add(s, ids)),
            2 => (0..40u64).prop_map(Op::Remove),
            1 => (0..40u64).prop_map(Op::RemoveThrough),
            1 => (0..40u64).prop_map(Op::Shipped),
        ]
    }

    proptest::proptest! {
        /// Against a plain model (record → its traces, the tombstones, the shipped
        /// floor), with removals by indexing or by shipping: every trace's records, the
        /// pair count and which records are noted agree after each step.
        #[test]
        fn the_map_agrees_with_a_plain_model(
            ids in proptest::collection::vec(proptest::array::uniform16(proptest::prelude::any::<u8>()), 8),
            ops in proptest::collection::vec(op(), 1..80),
            shipping in proptest::bool::ANY,
        ) {
            use std::collections::{BTreeMap, BTreeSet};
            let p = PendingTraces::new(1_000);
            if shipping {
                p.follow_shipping();
            }
            let mut noted: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
            let mut tombs: BTreeSet<u64> = BTreeSet::new();
            let mut floor = 0;
            for o in ops {
                match o {
                    Op::Add(seq, which) => {
                        p.add(at(seq), which.iter().map(|&k| ids[k]));
                        if !tombs.remove(&seq) && !noted.contains_key(&seq) && seq >= floor {
                            noted.insert(seq, which.into_iter().collect());
                        }
                    }
                    Op::Remove(seq) => {
                        p.remove(seq);
                        if !shipping && noted.remove(&seq).is_none() {
                            tombs.insert(seq);
                        }
                    }
                    Op::RemoveThrough(seq) => {
                        p.remove_through(seq);
                        if !shipping {
                            noted.retain(|&s, _| s > seq);
                            tombs.retain(|&s| s > seq);
                        }
                    }
                    Op::Shipped(seq) => {
                        p.shipped_through(seq);
                        floor = floor.max(seq + 1);
                        noted.retain(|&s, _| s > seq);
                        tombs.retain(|&s| s > seq);
                    }
                }
                for (k, id) in ids.iter().enumerate() {
                    // Ids drawn twice are one trace.
                    let same: Vec<usize> = (0..ids.len()).filter(|&j| ids[j] == *id).collect();
                    let want: Vec<RecordAt> = noted
                        .iter()
                        .filter(|(_, t)| same.iter().any(|j| t.contains(j)))
                        .map(|(&s, _)| at(s))
                        .collect();
                    proptest::prop_assert_eq!(p.records(id), want, "trace {}", k);
                }
                let pairs: usize = noted
                    .values()
                    .map(|t| t.iter().map(|&j| ids[j]).collect::<BTreeSet<_>>().len())
                    .sum();
                proptest::prop_assert_eq!(p.len(), pairs);
                for seq in 0..40 {
                    proptest::prop_assert_eq!(p.has_record(seq), noted.contains_key(&seq));
                }
            }
        }
    }

    #[test]
    fn one_trace_is_noted_in_a_bounded_number_of_records() {
        let p = PendingTraces::new(10_000);
        for seq in 1..=MAX_RECORDS_PER_TRACE as u64 + 5 {
            p.add(at(seq), [[1; 16]]);
        }
        assert_eq!(p.records(&[1; 16]).len(), MAX_RECORDS_PER_TRACE);
        assert_eq!(p.overflowed(), 5);
    }

    #[test]
    fn a_record_is_noted_once_and_the_bound_holds() {
        let p = PendingTraces::new(3);
        p.add(at(1), [[1; 16], [2; 16]]);
        p.add(at(1), [[9; 16]]);
        assert_eq!(
            p.records(&[9; 16]),
            Vec::new(),
            "a record already noted stays as it is"
        );
        p.add(at(2), [[3; 16], [4; 16]]);
        assert_eq!(p.overflowed(), 1);
        assert_eq!(p.records(&[3; 16]), Vec::new());
        p.add(at(3), [[5; 16]]);
        assert_eq!(p.len(), 3);
        assert!(p.has_record(3) && !p.has_record(2));
    }
}
