//! Where each trace is stored: trace id → the blocks holding its spans ([`TraceLocs`]),
//! and which traces are stored in more than one place ([`TraceSet`]).
//!
//! Traces are keyed by a 64-bit mix of both halves of their id (some generators vary only
//! one half). Two traces sharing a key share an entry, so a lookup can name a block that
//! does not hold the trace; callers confirm with the block's trace-id index. The common
//! case, a trace in one block, costs one map entry (12 bytes plus the map's overhead);
//! traces in several blocks keep a list aside.
//!
//! The map is split into [`SHARDS`] maps of unequal shares of the key space. A hash map
//! grows by moving every entry into a table twice the size, and this map grows while the
//! store's write lock is held (a seal adds its block's traces), so every lookup, search
//! and head append waits for it: one map growing past 3.7M traces (about 64M spans)
//! stalled lookups 329-340 ms on the 2 vCPU EPYC host (`faultline-bench publish-pause`;
//! 76-85 ms of it the move itself, in a model of the inserts). Equal shards would all
//! grow in the same seal; shares in a geometric series over one octave (shard `i` takes a
//! share proportional to `2^(i/64)`) make them reach their growth points at totals spread
//! evenly between two powers of two, so one seal grows a few shards at most: about 5 ms
//! at most for the same 3.7M traces (a model of the seal's inserts, 14,000 traces at a
//! time up to 6M).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use faultline_model::span::TraceId;

/// A value with this bit set is an index into the lists of traces in several blocks.
const MANY: u32 = 1 << 31;

/// Number of shards of the map (see the module doc).
const SHARDS: usize = 64;

/// Bits of a key, from bit 40 on, that choose its shard: neither the top seven (the map's
/// tag bits) nor the low ones (its bucket index), so keys within a shard spread as well
/// as in one map. With 4,096 values 27 pairs of neighbouring shards get the same share;
/// 16,384 values would part them, but in a model of the seal's inserts (6M keys, 14,000 at
/// a time) the worst seal was no shorter (5.3-5.8 ms against 4.7) and the mean insert 10%
/// slower (the larger table): the shards' own counts vary more than the ties matter.
const SHARD_BITS: u32 = 12;

/// Which shard each value of a key's [`SHARD_BITS`] goes to: shard `i` takes the values
/// `v` with `floor(64 * log2(1 + v / 4096)) == i`, a share of about
/// `2^((i+1)/64) - 2^(i/64)` of the key space.
static SHARD_OF: LazyLock<[u8; 1 << SHARD_BITS]> = LazyLock::new(|| {
    let n = 1u32 << SHARD_BITS;
    let mut table = [0u8; 1 << SHARD_BITS];
    for (v, slot) in (0u32..).zip(table.iter_mut()) {
        let x = 1.0 + (f64::from(v) + 0.5) / f64::from(n);
        // In 0..SHARDS: log2 of a value in [1, 2) is in [0, 1).
        *slot = ((x.log2() * SHARDS as f64) as usize).min(SHARDS - 1) as u8;
    }
    table
});

fn shard_of(k: u64) -> usize {
    usize::from(SHARD_OF[((k >> 40) as usize) & ((1 << SHARD_BITS) - 1)])
}

/// Trace id → blocks (by their serial number).
#[derive(Debug)]
pub(crate) struct TraceLocs {
    shards: Vec<HashMap<u64, u32, crate::search::IdBuild>>,
    many: Lists,
    free: Vec<u32>,
}

impl Default for TraceLocs {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::default()).collect(),
            many: Lists::default(),
            free: Vec::new(),
        }
    }
}

fn key(id: &TraceId) -> u64 {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&id[0..8]);
    lo.copy_from_slice(&id[8..16]);
    let (hi, lo) = (u64::from_le_bytes(hi), u64::from_le_bytes(lo));
    lo ^ hi.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31)
}

impl TraceLocs {
    /// Records that block `serial` holds `id`; returns whether another block already did.
    pub(crate) fn add(&mut self, id: &TraceId, serial: u32) -> bool {
        debug_assert!(serial < MANY);
        let k = key(id);
        let map = &mut self.shards[shard_of(k)];
        match map.get(&k).copied() {
            None => {
                map.insert(k, serial);
                false
            }
            Some(v) if v & MANY == 0 => {
                if v == serial {
                    return false;
                }
                let slot = match self.free.pop() {
                    Some(i) => {
                        // A freed list keeps its capacity.
                        let list = self.many.get_mut(i);
                        list.clear();
                        list.extend_from_slice(&[v, serial]);
                        i
                    }
                    None => self.many.push(vec![v, serial]),
                };
                map.insert(k, slot | MANY);
                true
            }
            Some(v) => {
                let list = self.many.get_mut(v & !MANY);
                if !list.contains(&serial) {
                    list.push(serial);
                }
                true
            }
        }
    }

    /// Forgets that block `serial` holds `id`.
    pub(crate) fn remove(&mut self, id: &TraceId, serial: u32) {
        let k = key(id);
        let map = &mut self.shards[shard_of(k)];
        match map.get(&k).copied() {
            Some(v) if v & MANY == 0 && v == serial => {
                map.remove(&k);
            }
            Some(v) if v & MANY == 0 => {}
            Some(v) => {
                let slot = v & !MANY;
                let list = self.many.get_mut(slot);
                list.retain(|&s| s != serial);
                match list.len() {
                    0 => {
                        map.remove(&k);
                        self.free.push(slot);
                    }
                    1 => {
                        let only = list[0];
                        list.clear();
                        map.insert(k, only);
                        self.free.push(slot);
                    }
                    _ => {}
                }
            }
            None => {}
        }
    }

    /// The blocks that may hold `id`.
    pub(crate) fn get(&self, id: &TraceId) -> &[u32] {
        let k = key(id);
        match self.shards[shard_of(k)].get(&k) {
            None => &[],
            Some(v) if v & MANY == 0 => std::slice::from_ref(v),
            Some(v) => self.many.get(v & !MANY),
        }
    }
}

/// Lists of a chunk, fixed so that the lists never move.
const LIST_CHUNK: usize = 1 << 14;

/// The lists of traces in several blocks, in chunks of [`LIST_CHUNK`]: one vector of
/// them would move every list when it grows, under the store's write lock (with every
/// trace in two blocks, growing from 2M to 4M lists stalled lookups for 122-130 ms).
#[derive(Debug, Default)]
struct Lists {
    chunks: Vec<Vec<Vec<u32>>>,
    len: usize,
}

impl Lists {
    /// Appends `list`; returns its index.
    fn push(&mut self, list: Vec<u32>) -> u32 {
        if self.len.is_multiple_of(LIST_CHUNK) {
            self.chunks.push(Vec::with_capacity(LIST_CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(list);
        }
        self.len += 1;
        (self.len - 1) as u32
    }

    fn get(&self, i: u32) -> &[u32] {
        let i = i as usize;
        &self.chunks[i / LIST_CHUNK][i % LIST_CHUNK]
    }

    fn get_mut(&mut self, i: u32) -> &mut Vec<u32> {
        let i = i as usize;
        &mut self.chunks[i / LIST_CHUNK][i % LIST_CHUNK]
    }
}

/// A set of trace ids in shards chosen as [`TraceLocs`] chooses them: it grows in the
/// same step (a seal's publish, under the store's write lock), and a trace whose spans
/// reach two heads joins it, which under real SDK batching is most traces at high rates.
#[derive(Debug)]
pub(crate) struct TraceSet {
    shards: Vec<HashSet<TraceId>>,
}

impl Default for TraceSet {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashSet::new()).collect(),
        }
    }
}

impl TraceSet {
    /// Adds `id`; returns whether it was new.
    pub(crate) fn insert(&mut self, id: TraceId) -> bool {
        self.shards[shard_of(key(&id))].insert(id)
    }

    /// Whether `id` is in the set.
    pub(crate) fn contains(&self, id: &TraceId) -> bool {
        self.shards[shard_of(key(id))].contains(id)
    }

    /// Removes `id`; returns whether it was there.
    pub(crate) fn remove(&mut self, id: &TraceId) -> bool {
        self.shards[shard_of(key(id))].remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differing_in_either_half_get_different_keys() {
        let mut a = [7u8; 16];
        let b = a;
        a[0] = 8;
        assert_ne!(key(&a), key(&b));
        let mut c = b;
        c[15] = 8;
        assert_ne!(key(&c), key(&b));
    }

    /// Keys as the store makes them, from ids a generator draws at random.
    fn random_keys(n: usize) -> Vec<[u8; 16]> {
        let mut x = 0x853c_49e6_748f_ea9b_u64;
        (0..n)
            .map(|_| {
                let mut id = [0u8; 16];
                for half in id.chunks_mut(8) {
                    // xorshift64*
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    half.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
                }
                id
            })
            .collect()
    }

    #[test]
    fn shard_shares_double_over_the_shards() {
        let mut sizes = [0usize; SHARDS];
        for &s in SHARD_OF.iter() {
            sizes[usize::from(s)] += 1;
        }
        assert!(
            sizes.iter().all(|&n| n > 0),
            "every shard takes keys: {sizes:?}"
        );
        let (first, last) = (
            sizes[..8].iter().sum::<usize>(),
            sizes[56..].iter().sum::<usize>(),
        );
        let ratio = last as f64 / first as f64;
        assert!(
            (1.7..2.1).contains(&ratio),
            "last eighth / first eighth = {ratio}"
        );
    }

    /// The share of the entries that the shards which grew (changed capacity from
    /// `before`) hold, given each shard's (capacity, length) now; `None` below 100,000.
    fn moved_share(before: &[usize], now: &[(usize, usize)]) -> Option<f64> {
        let total: usize = now.iter().map(|s| s.1).sum();
        let moved: usize = now
            .iter()
            .zip(before)
            .filter(|(s, cap)| s.0 != **cap)
            .map(|(s, _)| s.1)
            .sum();
        (total >= 100_000).then(|| moved as f64 / total as f64)
    }

    /// The point of the shards: adding a seal's worth of traces never makes more than a
    /// few shards grow, so the entries moved at once stay a small part of the map (and of
    /// the split set, which grows in the same step).
    #[test]
    fn growth_moves_a_small_part_of_the_map_at_a_time() {
        let ids = random_keys(400_000);
        let mut l = TraceLocs::default();
        let mut set = TraceSet::default();
        let (mut worst, mut worst_set) = (0.0f64, 0.0f64);
        for (serial, batch) in (1u32..).zip(ids.chunks(1_000)) {
            let caps: Vec<usize> = l.shards.iter().map(HashMap::capacity).collect();
            let set_caps: Vec<usize> = set.shards.iter().map(HashSet::capacity).collect();
            for id in batch {
                l.add(id, serial);
                assert!(set.insert(*id));
            }
            let now: Vec<_> = l.shards.iter().map(|m| (m.capacity(), m.len())).collect();
            let set_now: Vec<_> = set.shards.iter().map(|m| (m.capacity(), m.len())).collect();
            worst = worst.max(moved_share(&caps, &now).unwrap_or(0.0));
            worst_set = worst_set.max(moved_share(&set_caps, &set_now).unwrap_or(0.0));
        }
        assert!(worst > 0.0, "the map grew past 100,000 keys");
        assert!(
            worst <= 0.125,
            "one batch grew shards holding {worst:.3} of the map"
        );
        assert!(worst_set > 0.0 && worst_set <= 0.125, "set: {worst_set:.3}");
        for (serial, batch) in (1u32..).zip(ids.chunks(1_000)) {
            assert!(batch.iter().all(|id| l.get(id).contains(&serial)));
        }
        assert!(ids.iter().all(|id| set.contains(id)));
        assert!(set.remove(&ids[0]) && !set.contains(&ids[0]) && !set.remove(&ids[0]));
    }

    #[test]
    fn add_remove_and_lists() {
        let mut l = TraceLocs::default();
        let a = [1u8; 16];
        let b = [2u8; 16];
        assert!(!l.add(&a, 1));
        assert!(!l.add(&a, 1));
        assert!(l.add(&a, 2));
        assert!(l.add(&a, 3));
        assert!(!l.add(&b, 3));
        assert_eq!(l.get(&a), &[1, 2, 3]);
        l.remove(&a, 2);
        assert_eq!(l.get(&a), &[1, 3]);
        l.remove(&a, 1);
        assert_eq!(l.get(&a), &[3]);
        // The freed list is reused.
        assert!(l.add(&b, 4));
        assert_eq!(l.many.len, 1);
        l.remove(&a, 3);
        assert!(l.get(&a).is_empty());
        assert_eq!(l.get(&b), &[3, 4]);
    }
}
