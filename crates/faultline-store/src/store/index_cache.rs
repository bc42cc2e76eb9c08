//! The sealed blocks' search indexes in memory, within a byte budget
//! (`StoreOptions::max_index_bytes`). Each block has an [`IndexSlot`]: loading (after a
//! restart, until the background loader reaches it), loaded, evicted, or failed. A search
//! that needs an evicted index reads it back from the block's files (`BLOCKID.sidx` and
//! the columns the index keeps, a few tens of milliseconds for a 250,000-span block) and
//! the least recently used loaded indexes are evicted until the total is within the
//! budget again. Without a budget nothing is evicted: every index stays in memory, as the
//! store's memory grows with what it keeps.
//!
//! The budget bounds the indexes (about 30 bytes per stored span on varied traffic), the
//! largest part of the store's memory that grows with what is stored; the trace-id index
//! and the Parquet metadata of each block stay in memory. The index just loaded is never
//! the one evicted, so a budget smaller than one block's index still works, one block at
//! a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::error::StoreError;
use crate::search::BlockIndex;

/// Where a block's index stands.
enum State {
    /// Not loaded yet after a restart (searches say so and skip the block).
    Loading,
    Loaded(Arc<BlockIndex>),
    /// Dropped for the budget, or never loaded for it: read back when needed.
    Evicted,
    /// It cannot be loaded; why.
    Failed(String),
}

/// What a search gets for a block.
pub(crate) enum Got {
    Ready(Arc<BlockIndex>),
    Loading,
    Failed(String),
}

/// The budget and what is in it.
#[derive(Debug)]
pub(crate) struct IndexCache {
    budget: u64,
    used: AtomicU64,
    tick: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    loaded: Mutex<Vec<Weak<IndexSlot>>>,
}

/// Counts for status and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexCacheStats {
    /// Bytes of the indexes in memory (estimated from their allocations).
    pub bytes: u64,
    /// The budget (`u64::MAX`: none).
    pub budget: u64,
    /// Indexes read back for a search since start.
    pub loads: u64,
    /// Indexes dropped for the budget since start.
    pub evictions: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each change under these locks is a single assignment, so a poisoned one is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IndexCache {
    /// A cache holding at most `budget` bytes of indexes (`u64::MAX`: no limit).
    pub(crate) fn new(budget: u64) -> Arc<Self> {
        Arc::new(Self {
            budget,
            used: AtomicU64::new(0),
            tick: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            loaded: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn stats(&self) -> IndexCacheStats {
        IndexCacheStats {
            bytes: self.used.load(Ordering::Relaxed),
            budget: self.budget,
            loads: self.loads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Whether more indexes fit.
    pub(crate) fn has_room(&self) -> bool {
        self.used.load(Ordering::Relaxed) < self.budget
    }

    /// Evicts the least recently used indexes, never `keep`, until within the budget. A
    /// slot busy (being read back) is passed over.
    fn shrink(&self, keep: &IndexSlot) {
        let mut freed = Vec::new();
        let mut loaded = lock(&self.loaded);
        if self.used.load(Ordering::Relaxed) > self.budget {
            let mut candidates: Vec<Arc<IndexSlot>> = loaded
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|s| !std::ptr::eq(s.as_ref(), keep))
                .collect();
            candidates.sort_by_key(|s| s.used.load(Ordering::Relaxed));
            for v in candidates {
                if self.used.load(Ordering::Relaxed) <= self.budget {
                    break;
                }
                if let Some(index) = v.evict() {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    freed.push(index);
                }
            }
        }
        loaded.retain(|w| {
            w.upgrade()
                .is_some_and(|s| s.bytes.load(Ordering::Relaxed) > 0)
        });
        drop(loaded);
        // Freeing an index is millions of deallocations: not on the sealer's or a
        // search's thread.
        if !freed.is_empty() {
            let _ = std::thread::Builder::new()
                .name("store-index-free".into())
                .spawn(move || drop(freed));
        }
    }
}

/// One block's index.
pub(crate) struct IndexSlot {
    state: Mutex<State>,
    /// Bytes counted in the cache while loaded.
    bytes: AtomicU64,
    /// The cache's tick at the last use.
    used: AtomicU64,
    cache: Arc<IndexCache>,
}

impl std::fmt::Debug for IndexSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexSlot")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl IndexSlot {
    /// A slot to be filled by the background loader.
    pub(crate) fn loading(cache: &Arc<IndexCache>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::Loading),
            bytes: AtomicU64::new(0),
            used: AtomicU64::new(0),
            cache: cache.clone(),
        })
    }

    /// A slot holding `index` (just sealed or compacted); the budget is enforced.
    pub(crate) fn with(cache: &Arc<IndexCache>, index: BlockIndex) -> Arc<Self> {
        let slot = Self::loading(cache);
        slot.fill(index);
        slot
    }

    /// Puts `index` in and counts it, evicting others beyond the budget.
    fn fill_locked(self: &Arc<Self>, state: &mut State, index: BlockIndex) -> Arc<BlockIndex> {
        let bytes = (index.heap_bytes() as u64).max(1);
        let index = Arc::new(index);
        *state = State::Loaded(index.clone());
        self.bytes.store(bytes, Ordering::Relaxed);
        self.used.store(
            self.cache.tick.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.cache.used.fetch_add(bytes, Ordering::Relaxed);
        index
    }

    /// Lists it among the loaded (after its lock is released: `shrink` takes the list's
    /// lock and then slots' locks) and enforces the budget.
    fn register(self: &Arc<Self>) {
        lock(&self.cache.loaded).push(Arc::downgrade(self));
        self.cache.shrink(self);
    }

    /// Fills the slot (the background loader, or a new block).
    pub(crate) fn fill(self: &Arc<Self>, index: BlockIndex) {
        {
            let mut state = lock(&self.state);
            self.fill_locked(&mut state, index);
        }
        self.register();
    }

    /// Marks it failed.
    pub(crate) fn fail(&self, why: String) {
        *lock(&self.state) = State::Failed(why);
    }

    /// Marks a slot the loader skipped for the budget: it loads when a search needs it.
    pub(crate) fn defer(&self) {
        let mut state = lock(&self.state);
        if matches!(*state, State::Loading) {
            *state = State::Evicted;
        }
    }

    /// Whether the background loader has not reached it yet.
    pub(crate) fn is_loading(&self) -> bool {
        matches!(*lock(&self.state), State::Loading)
    }

    /// Takes a loaded index out (searches holding it keep it until they finish); `None`
    /// when busy or not loaded.
    fn evict(&self) -> Option<Arc<BlockIndex>> {
        let mut state = match self.state.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if !matches!(*state, State::Loaded(_)) {
            return None;
        }
        let State::Loaded(index) = std::mem::replace(&mut *state, State::Evicted) else {
            return None;
        };
        let bytes = self.bytes.swap(0, Ordering::Relaxed);
        self.cache.used.fetch_sub(bytes, Ordering::Relaxed);
        Some(index)
    }

    /// The index for a search, read back with `load` if it was evicted. Blocking.
    pub(crate) fn get(
        self: &Arc<Self>,
        load: impl FnOnce() -> Result<BlockIndex, StoreError>,
    ) -> Got {
        let index = {
            let mut state = lock(&self.state);
            match &*state {
                State::Loaded(i) => {
                    self.used.store(
                        self.cache.tick.fetch_add(1, Ordering::Relaxed),
                        Ordering::Relaxed,
                    );
                    return Got::Ready(i.clone());
                }
                State::Loading => return Got::Loading,
                State::Failed(e) => return Got::Failed(e.clone()),
                State::Evicted => {}
            }
            // Loaded under the slot's lock: a second search waits for this load.
            match load() {
                Ok(index) => {
                    self.cache.loads.fetch_add(1, Ordering::Relaxed);
                    self.fill_locked(&mut state, index)
                }
                Err(e) => return Got::Failed(e.to_string()),
            }
        };
        self.register();
        Got::Ready(index)
    }
}

impl Drop for IndexSlot {
    fn drop(&mut self) {
        let bytes = self.bytes.swap(0, Ordering::Relaxed);
        self.cache.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}
