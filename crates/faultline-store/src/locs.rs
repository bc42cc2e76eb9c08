//! Where each trace is stored: trace id → the blocks holding its spans.
//!
//! Traces are keyed by a 64-bit mix of both halves of their id (some generators vary only
//! one half). Two traces sharing a key share an entry, so a lookup can name a block that
//! does not hold the trace; callers confirm with the block's trace-id index. The common case, a trace in one block, costs one map
//! entry (12 bytes plus the map's overhead); traces in several blocks keep a list aside.

use std::collections::HashMap;

use faultline_model::span::TraceId;

/// A value with this bit set is an index into the lists of traces in several blocks.
const MANY: u32 = 1 << 31;

/// Trace id → blocks (by their serial number).
#[derive(Debug, Default)]
pub(crate) struct TraceLocs {
    map: HashMap<u64, u32, crate::search::IdBuild>,
    many: Vec<Vec<u32>>,
    free: Vec<u32>,
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
        match self.map.get(&k).copied() {
            None => {
                self.map.insert(k, serial);
                false
            }
            Some(v) if v & MANY == 0 => {
                if v == serial {
                    return false;
                }
                let list = vec![v, serial];
                let slot = match self.free.pop() {
                    Some(i) => {
                        self.many[i as usize] = list;
                        i
                    }
                    None => {
                        self.many.push(list);
                        (self.many.len() - 1) as u32
                    }
                };
                self.map.insert(k, slot | MANY);
                true
            }
            Some(v) => {
                let list = &mut self.many[(v & !MANY) as usize];
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
        match self.map.get(&k).copied() {
            Some(v) if v & MANY == 0 && v == serial => {
                self.map.remove(&k);
            }
            Some(v) if v & MANY == 0 => {}
            Some(v) => {
                let slot = (v & !MANY) as usize;
                let list = &mut self.many[slot];
                list.retain(|&s| s != serial);
                match list.len() {
                    0 => {
                        self.map.remove(&k);
                        self.free.push(slot as u32);
                    }
                    1 => {
                        let only = list[0];
                        list.clear();
                        self.map.insert(k, only);
                        self.free.push(slot as u32);
                    }
                    _ => {}
                }
            }
            None => {}
        }
    }

    /// The blocks that may hold `id`.
    pub(crate) fn get(&self, id: &TraceId) -> &[u32] {
        match self.map.get(&key(id)) {
            None => &[],
            Some(v) if v & MANY == 0 => std::slice::from_ref(v),
            Some(v) => &self.many[(v & !MANY) as usize],
        }
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
        assert_eq!(l.many.len(), 1);
        l.remove(&a, 3);
        assert!(l.get(&a).is_empty());
        assert_eq!(l.get(&b), &[3, 4]);
    }
}
