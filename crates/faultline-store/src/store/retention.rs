//! Retention and compaction. Retention ([`Store::enforce_retention`]) deletes blocks past
//! the retention age, then the oldest while the blocks exceed `max_bytes`, keeping the RED
//! cells of blocks evicted for space in `archive.rollup`. Compaction ([`Store::compact`])
//! merges runs of small adjacent blocks. Both replace the manifest before deleting any
//! file, so a crash leaves at worst unlisted files, removed at the next start.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};

use roaring::RoaringBitmap;

use super::index_cache::IndexSlot;
use super::{ARCHIVE, BLOCK_FILES, Sealed, Store, lock_err};
use crate::FaultPoint;
use crate::block::{self, BlockReader};
use crate::error::StoreError;
use crate::manifest::BlockMeta;
use crate::rollup::Rollups;
use crate::search::BlockIndex;

impl Store {
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
        // Blocks decided by tail sampling merge only with decided ones (their records
        // merge), undecided ones only with undecided ones, and while tail sampling is on
        // undecided blocks wait for their decision.
        let tail_on = self.opts.tail.as_ref().is_some_and(|t| t.enabled);
        let decided = |b: &Sealed| b.tail.get().is_some();
        let mergeable = |b: &Sealed| b.meta.spans < small && (decided(b) || !tail_on);
        // The first run of at least two adjacent small blocks, up to the target size.
        let mut group: Vec<Arc<Sealed>> = Vec::new();
        let mut spans = 0u64;
        for b in &blocks {
            let same = group.first().is_none_or(|g| decided(g) == decided(b));
            if mergeable(b) && same && spans + b.meta.spans <= target {
                spans += b.meta.spans;
                group.push(b.clone());
            } else if group.len() >= 2 {
                break;
            } else {
                group.clear();
                spans = 0;
                if mergeable(b) {
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
        let mut record: Option<crate::tail::TailRecord> = None;
        for b in &group {
            all.extend(b.reader.all()?);
            rollups.merge(&Rollups::read_file(dir, &b.meta.id)?);
            services.extend(b.services.iter().cloned());
            if let Some(r) = b.tail.get() {
                record.get_or_insert_with(Default::default).merge(r);
            }
        }
        let last = group.last().map(|b| b.meta.clone()).ok_or_else(lock_err)?;
        let first = group.first().map(|b| b.meta.clone()).ok_or_else(lock_err)?;
        let id = format!("{}-{}", last.id, first.id);
        // Shifts again with today's estimates: the merged traces may be more complete.
        let estimates = self.inner.read().map_err(|_| lock_err())?.skew.current();
        let (written, index) = block::write_block_indexed(dir, &id, &all, &estimates, None)?;
        rollups.write_file(dir, &id)?;
        let mut record_bytes = 0;
        if let Some(r) = &record {
            record_bytes = r.write(dir, &id)?;
            crate::block::sync_dir(dir)?;
        }
        self.opts.fault(FaultPoint::CompactBeforeManifest)?;
        let bytes = written.bytes + record_bytes;
        let meta = BlockMeta {
            id: id.clone(),
            spans: written.spans,
            traces: written.traces,
            min_start_ns: written.min_start_ns,
            max_end_ns: written.max_end_ns,
            bytes,
            source_seq: last.source_seq,
            services: services.iter().cloned().collect(),
            tail_decided: record.is_some(),
        };
        self.replace_blocks(
            &group,
            Replacement {
                meta,
                index,
                services,
                sealed_at: Some(std::time::Instant::now()),
                record,
            },
        )?;
        tracing::info!(block = %id, merged = group.len(), spans = written.spans, "compacted small blocks");
        Ok(group.len())
    }

    /// Publishes block `new` (its files, and record if any, durable already) in place of
    /// the adjacent blocks `old`: a manifest naming it where they were, then the blocks in
    /// memory and the trace locations, then the old files deleted. A crash before the
    /// manifest leaves `old` listed and the new files unlisted (removed at the next start);
    /// after it, the reverse. Compaction and tail sampling both publish this way.
    pub(crate) fn replace_blocks(
        &self,
        old: &[Arc<Sealed>],
        new: Replacement,
    ) -> Result<(), StoreError> {
        let dir = &self.opts.dir;
        let reader = BlockReader::open(dir, &new.meta.id)?;
        let gone: BTreeSet<String> = old.iter().map(|b| b.meta.id.clone()).collect();
        let mut next = self.inner.read().map_err(|_| lock_err())?.manifest.clone();
        let pos = next
            .blocks
            .iter()
            .position(|b| gone.contains(&b.id))
            .unwrap_or(next.blocks.len());
        next.blocks.retain(|b| !gone.contains(&b.id));
        next.blocks
            .insert(pos.min(next.blocks.len()), new.meta.clone());
        next.store(dir)?;
        {
            let mut inner = self.inner.write().map_err(|_| lock_err())?;
            let pos = inner
                .blocks
                .iter()
                .position(|b| gone.contains(&b.meta.id))
                .unwrap_or(inner.blocks.len());
            inner.blocks.retain(|b| !gone.contains(&b.meta.id));
            for b in old {
                inner.unregister(b);
            }
            let pos = pos.min(inner.blocks.len());
            inner.next_serial += 1;
            let block = Arc::new(Sealed {
                meta: new.meta,
                reader,
                services: new.services,
                index: IndexSlot::with(&self.index_cache, new.index),
                serial: inner.next_serial - 1,
                split: Mutex::new(RoaringBitmap::new()),
                sealed_at: new.sealed_at,
                tail: match new.record {
                    Some(r) => OnceLock::from(Arc::new(r)),
                    None => OnceLock::new(),
                },
            });
            inner.blocks.insert(pos, block.clone());
            inner.register(&block);
            inner.manifest = next;
        }
        for id in &gone {
            for ext in BLOCK_FILES {
                let _ = std::fs::remove_file(dir.join(format!("{id}.{ext}")));
            }
        }
        Ok(())
    }
}

/// A block written to take the place of others ([`Store::replace_blocks`]).
pub(crate) struct Replacement {
    pub(crate) meta: BlockMeta,
    pub(crate) index: BlockIndex,
    pub(crate) services: BTreeSet<String>,
    /// When the blocks it replaces were sealed (tail sampling's wait counts from it).
    pub(crate) sealed_at: Option<std::time::Instant>,
    /// Its tail-sampling record, written beside it already.
    pub(crate) record: Option<crate::tail::TailRecord>,
}
