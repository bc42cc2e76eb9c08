//! A Bloom filter of the keys the checks' database holds, so that a span with a key seen
//! for the first time (the common case: every order is new) costs no database read. A
//! key absent from the filter is absent from the database; a key present may be absent
//! (about 1% of lookups at 10 bits per key, more once keys outnumber the bits tenfold).
//! Forgotten keys stay set until the next start, which rebuilds the filter from the
//! database.

use std::hash::{BuildHasher, Hasher};

/// Bits probed per key.
const PROBES: u64 = 4;

/// The filter; its size is fixed when it is made.
#[derive(Debug)]
pub struct KeyFilter {
    bits: Vec<u64>,
    hasher: std::hash::RandomState,
}

impl KeyFilter {
    /// A filter of `bytes` bytes (at least 8).
    pub fn new(bytes: usize) -> KeyFilter {
        KeyFilter {
            bits: vec![0; (bytes / 8).max(1)],
            hasher: std::hash::RandomState::new(),
        }
    }

    fn probes(&self, key: &[u8]) -> impl Iterator<Item = (usize, u64)> + use<> {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        let x = h.finish();
        let (a, b) = (x & 0xffff_ffff, (x >> 32) | 1);
        let m = self.bits.len() as u64 * 64;
        (0..PROBES).map(move |i| {
            let bit = (a.wrapping_add(i.wrapping_mul(b))) % m;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    /// Marks `key` present.
    pub fn insert(&mut self, key: &[u8]) {
        for (w, mask) in self.probes(key) {
            self.bits[w] |= mask;
        }
    }

    /// False when `key` is certainly absent.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.probes(key).all(|(w, mask)| self.bits[w] & mask != 0)
    }

    /// Bytes it takes.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut f = KeyFilter::new(128 << 10); // 1M bits
        for i in 0..100_000u32 {
            f.insert(format!("rule\0order-{i}").as_bytes());
        }
        for i in 0..100_000u32 {
            assert!(f.may_contain(format!("rule\0order-{i}").as_bytes()));
        }
        let false_positives = (100_000..200_000u32)
            .filter(|i| f.may_contain(format!("rule\0order-{i}").as_bytes()))
            .count();
        assert!(false_positives < 2_000, "{false_positives} of 100000");
    }
}
