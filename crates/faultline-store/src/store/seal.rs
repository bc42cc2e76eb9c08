//! Sealing: the head becomes a block ([`Store::seal`]): it is moved aside (still
//! queryable), the span observer (if any) checkpoints, the block is written and fsynced,
//! then a manifest naming the block and the WAL position
//! it completes replaces the old one atomically. A failed seal puts the spans back in
//! front of the head.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use roaring::RoaringBitmap;

use super::head::{Head, advanced};
use super::index_cache::IndexSlot;
use super::{BLOCK_FILES, Sealed, Store, lock_err};
use crate::FaultPoint;
use crate::block::{self, BlockReader};
use crate::error::StoreError;
use crate::manifest::{BlockMeta, Manifest};
use crate::rollup::Rollups;

impl Store {
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
                // No span is published here, so the observer needs no checkpoint (and
                // the store's lock is not held while it makes one).
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
        // The observer's state must cover the head before a manifest publishes it.
        let result = self
            .checkpoint_observer()
            .and_then(|()| self.write_and_publish(&head, serial));
        let mut inner = self.inner.write().map_err(|_| lock_err())?;
        match result {
            Ok((sealed, manifest)) => {
                let meta = sealed.meta.clone();
                let sealed = Arc::new(sealed);
                inner.sealing.retain(|h| !Arc::ptr_eq(h, &head));
                inner.blocks.push(sealed.clone());
                // The head's cells join the store's in the same step, so a RED read counts
                // its spans once: before, in the head's layer; after, in the store's.
                inner.rollups.merge(&head.rollups);
                inner.manifest = manifest;
                head.settle(&mut inner.pending);
                inner.register(&sealed);
                // Children whose parent never arrived in this head are orphans, unless
                // their trace goes on elsewhere (the parent may be there).
                let now_s = super::head::unix_now_s();
                for ((trace, _), children) in &head.waiting {
                    if !inner.split.contains(trace) {
                        for &i in children {
                            if let Some(span) = head.spans.get(i as usize) {
                                inner.quality.orphan(span, now_s);
                            }
                        }
                    }
                }
                drop(inner);
                self.retire(head);
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
                    terms: h.terms.clone(),
                    traces: h.traces.clone(),
                    by_trace: h.by_trace.clone(),
                    service_bits: h.service_bits.clone(),
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
                // The restored head keeps its cells; the newer head's spans are counted
                // again into them as they are added, with the calls between the two.
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
        self.unused_id(&format!("{:020}", head.max_seq))
    }

    /// `base`, or `base` with a suffix, such that no listed block and no file has it
    /// (a seal or rewrite that failed after renaming its files leaves the name taken).
    pub(crate) fn unused_id(&self, base: &str) -> Result<String, StoreError> {
        let listed: HashSet<String> = {
            let inner = self.inner.read().map_err(|_| lock_err())?;
            inner.manifest.blocks.iter().map(|b| b.id.clone()).collect()
        };
        let taken = |id: &str| {
            listed.contains(id)
                || BLOCK_FILES
                    .iter()
                    .any(|ext| self.opts.dir.join(format!("{id}.{ext}")).exists())
        };
        Ok(std::iter::once(base.to_string())
            .chain((1u32..).map(|k| format!("{base}_{k}")))
            .find(|id| !taken(id))
            .unwrap_or_else(|| base.to_string()))
    }

    /// Keeps `estimates` for the next start (`crate::skew`) when they changed since last
    /// written. Failing to is logged, not fatal: estimates come back as calls arrive.
    fn save_clock_offsets(&self, estimates: &Arc<crate::skew::Estimates>) {
        let Ok(mut saved) = self.offsets_saved.lock() else {
            return;
        };
        if Arc::ptr_eq(&saved, estimates) || **saved == **estimates {
            return;
        }
        match crate::skew::save(&self.opts.dir, estimates) {
            Ok(()) => *saved = estimates.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the clock-skew estimates for the next start")
            }
        }
    }

    fn write_and_publish(
        &self,
        head: &Head,
        serial: u32,
    ) -> Result<(Sealed, Manifest), StoreError> {
        let id = self.block_id(head)?;
        let estimates = self.inner.read().map_err(|_| lock_err())?.skew.current();
        let (written, index) = block::write_block_indexed(
            &self.opts.dir,
            &id,
            &head.spans,
            &estimates,
            Some(&head.terms),
        )?;
        self.save_clock_offsets(&estimates);
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
            tail_decided: false,
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
            index: IndexSlot::with(&self.index_cache, index),
            serial,
            split: Mutex::new(RoaringBitmap::new()),
            sealed_at: Some(std::time::Instant::now()),
            tail: OnceLock::new(),
        };
        Ok((sealed, next))
    }
}
