//! One key's state under one rule ([`KeyRecord`]): its A span, up to [`MAX_B`] B spans,
//! whether its deadline passed, and the class that follows ([`classify`]).
//!
//! Applying a span is idempotent ([`KeyRecord::add`] ignores a span id it holds), and the
//! class depends only on the spans' own times and the `expired` flag, never on when the
//! spans arrived. So replaying spans after a crash, or evaluating stored spans with
//! `faultline rules check`, reaches the same classes as live evaluation did.
//!
//! **Record format** (the value of the `keys` table in `checks.redb`), little-endian:
//!
//! ```text
//! u8  version (1)
//! u8  flags: bit 0 has A, bit 1 expired
//! u8  class (Class as u8)
//! u32 distinct B spans seen (exact up to MAX_B, at least that beyond)
//! [A: 16 trace id, 8 span id, u64 start ns]      when has A
//! u8  stored B count n (≤ MAX_B), then n × (16 trace id, 8 span id, u64 start ns),
//!     by start time
//! ```

use crate::rule::Rule;

/// B spans remembered per key (enough to tell one from several, and to link them).
pub const MAX_B: usize = 4;

/// A span a key refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRef {
    pub trace: [u8; 16],
    pub span: [u8; 8],
    pub start_ns: u64,
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Class {
    /// Waiting: an A within its deadline, or a B waiting for its A within the grace.
    Pending = 0,
    /// A B came within `within` of the A.
    Satisfied = 1,
    /// A B came, later than `within` (the key had been, or would have been, violated).
    Repaired = 2,
    /// Violated: `within` (and the grace) passed with no B.
    Missing = 3,
    /// Violated: more than one B, and the rule allows one.
    Duplicate = 4,
    /// Violated: a B whose key had no A, and the rule requires one.
    Orphan = 5,
    /// A B without an A, where the rule allows that (not a violation).
    Unmatched = 6,
}

/// Every class, in order.
pub const CLASSES: [Class; 7] = [
    Class::Pending,
    Class::Satisfied,
    Class::Repaired,
    Class::Missing,
    Class::Duplicate,
    Class::Orphan,
    Class::Unmatched,
];

impl Class {
    /// The name used in the API, metrics and UI.
    pub fn name(self) -> &'static str {
        match self {
            Class::Pending => "pending",
            Class::Satisfied => "satisfied",
            Class::Repaired => "repaired",
            Class::Missing => "missing",
            Class::Duplicate => "duplicate",
            Class::Orphan => "orphan",
            Class::Unmatched => "unmatched",
        }
    }

    /// The class named `s`.
    pub fn from_name(s: &str) -> Option<Class> {
        CLASSES.into_iter().find(|c| c.name() == s)
    }

    /// Whether the class is a violation (missing, duplicate, orphan).
    pub fn is_violation(self) -> bool {
        matches!(self, Class::Missing | Class::Duplicate | Class::Orphan)
    }

    fn from_u8(b: u8) -> Option<Class> {
        CLASSES.get(usize::from(b)).copied()
    }
}

/// One key's state under one rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRecord {
    pub a: Option<SpanRef>,
    /// Up to [`MAX_B`] distinct B spans, by start time.
    pub bs: Vec<SpanRef>,
    /// Distinct B spans seen (exact up to [`MAX_B`]).
    pub b_total: u32,
    /// Set when the deadline passed while the key was pending (see [`due`]).
    pub expired: bool,
    /// The class last computed.
    pub class: Option<Class>,
}

impl KeyRecord {
    /// Adds a span on one side; false when the record already held it (nothing changes).
    pub fn add(&mut self, is_first: bool, r: SpanRef) -> bool {
        if is_first {
            match &self.a {
                Some(a) if a.span == r.span && a.trace == r.trace => false,
                // Two As for one key: the earliest is the one B must follow.
                Some(a) if a.start_ns <= r.start_ns => false,
                _ => {
                    self.a = Some(r);
                    true
                }
            }
        } else {
            if self
                .bs
                .iter()
                .any(|b| b.span == r.span && b.trace == r.trace)
            {
                return false;
            }
            self.b_total = self.b_total.saturating_add(1);
            // Keep the earliest MAX_B, so the first B is the same in any arrival order.
            let at = self.bs.partition_point(|b| b.start_ns <= r.start_ns);
            if at < MAX_B {
                self.bs.insert(at, r);
                self.bs.truncate(MAX_B);
            }
            true
        }
    }

    /// How late the first B was past `within`, in nanoseconds (0 when on time or none).
    pub fn late_ns(&self, rule: &Rule) -> u64 {
        match (self.a, self.bs.first()) {
            (Some(a), Some(b)) => b
                .start_ns
                .saturating_sub(a.start_ns.saturating_add(rule.within_ns)),
            _ => 0,
        }
    }

    /// Encodes the record (format in the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * (1 + self.bs.len()));
        out.push(1);
        out.push(u8::from(self.a.is_some()) | (u8::from(self.expired) << 1));
        out.push(self.class.map_or(0, |c| c as u8));
        out.extend_from_slice(&self.b_total.to_le_bytes());
        let put = |out: &mut Vec<u8>, r: &SpanRef| {
            out.extend_from_slice(&r.trace);
            out.extend_from_slice(&r.span);
            out.extend_from_slice(&r.start_ns.to_le_bytes());
        };
        if let Some(a) = &self.a {
            put(&mut out, a);
        }
        out.push(self.bs.len() as u8);
        for b in &self.bs {
            put(&mut out, b);
        }
        out
    }

    /// Decodes a record; `None` when the bytes are not one (a damaged database).
    pub fn decode(bytes: &[u8]) -> Option<KeyRecord> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return None;
        }
        let flags = r.u8()?;
        let class = Class::from_u8(r.u8()?)?;
        let b_total = u32::from_le_bytes(r.take()?);
        let a = if flags & 1 != 0 {
            Some(r.span_ref()?)
        } else {
            None
        };
        let n = usize::from(r.u8()?);
        if n > MAX_B {
            return None;
        }
        let mut bs = Vec::with_capacity(n);
        for _ in 0..n {
            bs.push(r.span_ref()?);
        }
        r.0.is_empty().then_some(KeyRecord {
            a,
            bs,
            b_total,
            expired: flags & 2 != 0,
            class: Some(class),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn span_ref(&mut self) -> Option<SpanRef> {
        Some(SpanRef {
            trace: self.take()?,
            span: self.take()?,
            start_ns: u64::from_le_bytes(self.take()?),
        })
    }
}

/// The class of `rec` under `rule`. Time enters only through `rec.expired`.
pub fn classify(rec: &KeyRecord, rule: &Rule) -> Class {
    match (rec.a, rec.bs.first()) {
        (Some(_), None) if rec.expired => Class::Missing,
        (Some(_), None) | (None, None) => Class::Pending,
        (Some(a), Some(b)) => {
            if rule.def.at_most_one && rec.b_total > 1 {
                Class::Duplicate
            } else if b.start_ns <= a.start_ns.saturating_add(rule.within_ns) {
                Class::Satisfied
            } else {
                Class::Repaired
            }
        }
        (None, Some(_)) if !rec.expired => Class::Pending,
        (None, Some(_)) if rule.def.require_first => Class::Orphan,
        (None, Some(_)) => Class::Unmatched,
    }
}

/// When the record's timer is due (Unix ns): while pending, when its deadline passes
/// (A's start + `within` + `grace`, or a lone B's start + `grace`); afterwards, when the
/// key is forgotten (its latest span + `keep`).
pub fn due(rec: &KeyRecord, rule: &Rule) -> u64 {
    let pending = !rec.expired && classify(rec, rule) == Class::Pending;
    match (pending, rec.a) {
        (true, Some(a)) => a
            .start_ns
            .saturating_add(rule.within_ns)
            .saturating_add(rule.grace_ns),
        (true, None) => rec
            .bs
            .first()
            .map_or(0, |b| b.start_ns.saturating_add(rule.grace_ns)),
        (false, _) => rec
            .a
            .iter()
            .chain(rec.bs.last())
            .map(|r| r.start_ns)
            .max()
            .unwrap_or(0)
            .saturating_add(rule.keep_ns),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::rule::{Rule, RuleDef};

    fn rule(at_most_one: bool, require_first: bool) -> Rule {
        Rule::new(RuleDef {
            name: "r".into(),
            first: "{ name = \"a\" }".into(),
            then: "{ name = \"b\" }".into(),
            key: Some("k".into()),
            first_key: None,
            then_key: None,
            within: "10s".into(),
            at_most_one,
            require_first,
            grace: "1s".into(),
            keep: "1h".into(),
            notify: true,
        })
        .unwrap()
    }

    fn r(id: u8, s: u64) -> SpanRef {
        SpanRef {
            trace: [id; 16],
            span: [id; 8],
            start_ns: s * 1_000_000_000,
        }
    }

    #[test]
    fn classes_of_planted_keys() {
        let strict = rule(true, true);
        let loose = rule(false, false);
        let mut on_time = KeyRecord::default();
        on_time.add(true, r(1, 100));
        assert_eq!(classify(&on_time, &strict), Class::Pending);
        assert_eq!(due(&on_time, &strict), 111_000_000_000);
        on_time.add(false, r(2, 105));
        assert_eq!(classify(&on_time, &strict), Class::Satisfied);
        assert_eq!(due(&on_time, &strict), 105_000_000_000 + 3_600_000_000_000);

        let mut late = KeyRecord::default();
        late.add(true, r(1, 100));
        late.expired = true;
        assert_eq!(classify(&late, &strict), Class::Missing);
        late.add(false, r(2, 125));
        assert_eq!(classify(&late, &strict), Class::Repaired);
        assert_eq!(late.late_ns(&strict), 15_000_000_000);

        let mut dup = KeyRecord::default();
        dup.add(true, r(1, 100));
        dup.add(false, r(2, 101));
        dup.add(false, r(3, 102));
        assert_eq!(classify(&dup, &strict), Class::Duplicate);
        assert_eq!(classify(&dup, &loose), Class::Satisfied);

        let mut orphan = KeyRecord::default();
        orphan.add(false, r(2, 100));
        assert_eq!(classify(&orphan, &strict), Class::Pending);
        assert_eq!(due(&orphan, &strict), 101_000_000_000);
        orphan.expired = true;
        assert_eq!(classify(&orphan, &strict), Class::Orphan);
        assert_eq!(classify(&orphan, &loose), Class::Unmatched);
        // The A arriving late makes it whole.
        orphan.add(true, r(1, 99));
        assert_eq!(classify(&orphan, &strict), Class::Satisfied);
    }

    #[test]
    fn the_same_span_twice_changes_nothing() {
        let mut k = KeyRecord::default();
        assert!(k.add(true, r(1, 100)));
        assert!(!k.add(true, r(1, 100)));
        assert!(k.add(false, r(2, 101)));
        assert!(!k.add(false, r(2, 101)));
        assert_eq!(k.b_total, 1);
        // A later A does not replace the earliest.
        assert!(!k.add(true, r(3, 150)));
        assert_eq!(k.a, Some(r(1, 100)));
    }

    #[test]
    fn damaged_records_are_refused() {
        let mut k = KeyRecord::default();
        k.add(true, r(1, 100));
        k.add(false, r(2, 101));
        k.class = Some(Class::Satisfied);
        let bytes = k.encode();
        assert_eq!(KeyRecord::decode(&bytes), Some(k));
        for cut in 0..bytes.len() {
            assert_eq!(KeyRecord::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert_eq!(KeyRecord::decode(&bad), None);
        let mut bad = bytes.clone();
        bad[2] = 99;
        assert_eq!(KeyRecord::decode(&bad), None);
    }

    proptest! {
        /// Any order and any repetition of the same spans gives the same record.
        #[test]
        fn order_and_repeats_do_not_matter(
            spans in proptest::collection::vec((any::<bool>(), 0u8..6), 1..12),
            shuffle in any::<u64>(),
        ) {
            let strict = rule(true, true);
            let refs: Vec<(bool, SpanRef)> = spans
                .iter()
                .map(|(f, id)| (*f, r(*id + if *f { 0 } else { 100 }, u64::from(*id) * 7)))
                .collect();
            let mut once = KeyRecord::default();
            for (f, x) in &refs {
                once.add(*f, *x);
            }
            let mut again = KeyRecord::default();
            let mut order = refs.clone();
            order.extend(refs.iter().copied());
            let n = order.len();
            for i in 0..n {
                order.swap(i, (shuffle as usize).wrapping_mul(i + 7) % n);
            }
            for (f, x) in &order {
                again.add(*f, *x);
            }
            // The stored Bs may differ beyond MAX_B; what matters is the class.
            prop_assert_eq!(once.a, again.a);
            prop_assert_eq!(classify(&once, &strict), classify(&again, &strict));
            prop_assert_eq!(once.bs.first(), again.bs.first());
            let distinct_b: std::collections::HashSet<[u8; 8]> =
                refs.iter().filter(|(f, _)| !f).map(|(_, x)| x.span).collect();
            if distinct_b.len() <= MAX_B {
                prop_assert_eq!(once.b_total, again.b_total);
            }
        }
    }
}
