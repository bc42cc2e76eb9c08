//! A small cache of values worked out from texts that repeat by address: the attribute
//! keys of a batch of spans. Every span of a service repeats the same few dozen keys, and
//! interned keys (`faultline_model::key`) share one copy of their text, so a value worked
//! out from a key (its hashes, its convention check) can be found again by the text's
//! address and length instead of hashing the text.
//!
//! The cache borrows every text it is given for its whole life (`'t`): while it exists no
//! text it holds can be freed, so an address and length stand for one unchanged text. A
//! key that owns its text (too long to intern) is cached by its own address, which only
//! costs a miss for each copy.

/// Values by (text address, text length, a caller's tag), in a fixed number of slots, the
/// last one met kept per slot.
pub(crate) struct TextCache<'t, V> {
    slots: Vec<Slot<V>>,
    texts: std::marker::PhantomData<&'t str>,
}

#[derive(Clone, Copy)]
struct Slot<V> {
    /// The text's address (0, which no text has, when the slot is empty) and length.
    at: usize,
    len: usize,
    tag: u64,
    value: V,
}

impl<'t, V: Copy + Default> TextCache<'t, V> {
    /// A cache of `slots` slots (rounded up to a power of two; at most 65,536).
    pub(crate) fn new(slots: usize) -> Self {
        let n = slots.clamp(1, 1 << 16).next_power_of_two();
        let empty = Slot {
            at: 0,
            len: 0,
            tag: 0,
            value: V::default(),
        };
        Self {
            slots: vec![empty; n],
            texts: std::marker::PhantomData,
        }
    }

    /// The value for (`text`, `tag`): the cached one, or `make`'s, then cached.
    #[inline]
    pub(crate) fn get(&mut self, text: &'t str, tag: u64, make: impl FnOnce() -> V) -> V {
        let at = text.as_ptr() as usize;
        let bits = self.slots.len().trailing_zeros();
        let i =
            ((at as u64 ^ tag).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (63 - bits) >> 1) as usize;
        match self.slots.get_mut(i) {
            Some(slot) => {
                if slot.at != at || slot.len != text.len() || slot.tag != tag {
                    *slot = Slot {
                        at,
                        len: text.len(),
                        tag,
                        value: make(),
                    };
                }
                slot.value
            }
            None => make(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every answer is `make`'s for that text and tag: more (text, tag) pairs than slots,
    /// met in changing orders, texts that share an address, and equal texts at other
    /// addresses; a pair asked for twice in a row is found, not made again.
    #[test]
    fn answers_what_make_gives() {
        let texts: Vec<String> = (0..40).map(|i| format!("key.{i}")).collect();
        let copies: Vec<String> = texts.clone();
        let whole = "region.name".to_string();
        let make =
            |t: &str, tag: u64| t.len() as u64 * 1_000_003 + tag * 7 + u64::from(t.as_bytes()[0]);
        let mut cache: TextCache<'_, u64> = TextCache::new(64);
        for round in 0..3usize {
            for tag in 0..50u64 {
                for j in 0..texts.len() {
                    let t = if round == 1 {
                        &copies[j]
                    } else {
                        &texts[(j * (round + 1) + tag as usize) % texts.len()]
                    };
                    assert_eq!(cache.get(t, tag, || make(t, tag)), make(t, tag));
                }
            }
            for n in [6, 11, 3, 6] {
                let t = &whole[..n];
                assert_eq!(cache.get(t, 0, || make(t, 0)), make(t, 0), "{t}");
            }
        }
        let t = texts[0].as_str();
        assert_eq!(cache.get(t, 99, || 1), 1);
        assert_eq!(cache.get(t, 99, || 2), 1);
    }
}
