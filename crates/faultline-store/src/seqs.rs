//! Sets of WAL sequence numbers as sorted, disjoint, inclusive ranges.
//!
//! The store uses them for the backlog: WAL records the pipeline skipped to index live data
//! first, which are replayed later and so become durable out of order. The sets stay small
//! (a range per skip, shrinking as the backlog is sealed), so a sorted `Vec` is enough.

use serde::{Deserialize, Serialize};

/// Sorted, disjoint, non-adjacent inclusive ranges `(first, last)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeqRanges(Vec<(u64, u64)>);

impl SeqRanges {
    /// The ranges, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of sequence numbers in the set.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|&(a, b)| b - a + 1).sum()
    }

    /// The smallest member.
    pub fn first(&self) -> Option<u64> {
        self.0.first().map(|r| r.0)
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        let i = self.0.partition_point(|&(_, last)| last < seq);
        self.0.get(i).is_some_and(|&(first, _)| first <= seq)
    }

    /// Adds `first..=last` (nothing if `first > last`).
    pub fn insert_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        // Ranges that overlap or touch the new one merge with it.
        let lo = self
            .0
            .partition_point(|&(_, l)| l.saturating_add(1) < first);
        let hi = self
            .0
            .partition_point(|&(f, _)| f <= last.saturating_add(1));
        let (mut a, mut b) = (first, last);
        if lo < hi {
            a = a.min(self.0[lo].0);
            b = b.max(self.0[hi - 1].1);
        }
        self.0.splice(lo..hi, [(a, b)]);
    }

    /// Adds one number.
    pub fn insert(&mut self, seq: u64) {
        // The common case: the next number of the last range.
        if let Some(last) = self.0.last_mut()
            && last.1.checked_add(1) == Some(seq)
        {
            last.1 = seq;
            return;
        }
        self.insert_range(seq, seq);
    }

    /// Adds every member of `other`.
    pub fn union(&mut self, other: &SeqRanges) {
        for &(a, b) in &other.0 {
            self.insert_range(a, b);
        }
    }

    /// Removes `first..=last`.
    pub fn remove_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < first || a > last {
                out.push((a, b));
                continue;
            }
            if a < first {
                out.push((a, first - 1));
            }
            if b > last {
                out.push((last + 1, b));
            }
        }
        self.0 = out;
    }

    /// Removes every member of `other`.
    pub fn subtract(&mut self, other: &SeqRanges) {
        for &(a, b) in &other.0 {
            self.remove_range(a, b);
        }
    }

    /// Keeps only members at most `last`.
    pub fn clip_above(&mut self, last: u64) {
        if last == u64::MAX {
            return;
        }
        self.remove_range(last + 1, u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        InsertRange(u64, u64),
        Remove(u64, u64),
        Clip(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..64).prop_map(Op::Insert),
            (0u64..64, 0u64..12).prop_map(|(a, n)| Op::InsertRange(a, a + n)),
            (0u64..64, 0u64..12).prop_map(|(a, n)| Op::Remove(a, a + n)),
            (0u64..80).prop_map(Op::Clip),
        ]
    }

    proptest! {
        /// The ranges behave like a set of numbers, and stay sorted, disjoint and
        /// non-adjacent.
        #[test]
        fn ranges_match_a_set(ops in proptest::collection::vec(op(), 0..40)) {
            let mut r = SeqRanges::default();
            let mut model = BTreeSet::new();
            for o in ops {
                match o {
                    Op::Insert(s) => { r.insert(s); model.insert(s); }
                    Op::InsertRange(a, b) => { r.insert_range(a, b); model.extend(a..=b); }
                    Op::Remove(a, b) => { r.remove_range(a, b); for s in a..=b { model.remove(&s); } }
                    Op::Clip(l) => { r.clip_above(l); model.retain(|&s| s <= l); }
                }
                for w in r.ranges().windows(2) {
                    prop_assert!(w[0].1 + 1 < w[1].0, "{:?}", r);
                }
                prop_assert_eq!(r.len(), model.len() as u64);
                for s in 0..90 {
                    prop_assert_eq!(r.contains(s), model.contains(&s), "{} in {:?}", s, r);
                }
            }
        }
    }

    #[test]
    fn union_and_subtract() {
        let mut a = SeqRanges::default();
        a.insert_range(1, 10);
        let mut b = SeqRanges::default();
        b.insert_range(3, 4);
        b.insert(8);
        a.subtract(&b);
        assert_eq!(a.ranges(), &[(1, 2), (5, 7), (9, 10)]);
        a.union(&b);
        assert_eq!(a.ranges(), &[(1, 10)]);
        assert_eq!(a.first(), Some(1));
    }
}
