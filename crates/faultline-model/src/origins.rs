//! The origins (resource and instrumentation scope) an ingesting thread decoded, kept by
//! their encoded bytes so that the same resource sent again is shared instead of decoded
//! again ([`crate::otlp_decode::spans`]).
//!
//! A sender's resource is the same in every request it sends (an SDK has one per
//! process; a collector forwards each pod's spans under that pod's resource), so
//! most `ResourceSpans` of a request repeat bytes this thread has already decoded. A hit
//! saves decoding the resource's attributes and building its [`Origin`], and every
//! span of that resource then points at one `Arc`: the per-resource caches of a seal (a
//! block's resource texts, a resource's index terms, clock offsets) and the head's
//! memory see one resource instead of one per request. On varied traffic a request of
//! 500 spans holds about 150 `ResourceSpans` of about ten attributes each, which had
//! made about 75,000 origins per block of 250,000 spans.
//!
//! Identical bytes decode to an identical origin, so a hit is what decoding would give.
//! Entries are compared byte for byte, never by hash alone. Memory is bounded per
//! thread: origins whose bytes exceed [`MAX_ENTRY_BYTES`] are not kept, and the cache is
//! emptied once it holds [`MAX_ENTRIES`] entries or [`MAX_BYTES`] of keys.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use crate::span::Origin;

/// Most origins a thread keeps.
pub const MAX_ENTRIES: usize = 4096;
/// Most bytes of encoded resource and scope a thread keeps as keys.
pub const MAX_BYTES: usize = 8 << 20;
/// Largest encoded resource plus scope that is kept.
pub const MAX_ENTRY_BYTES: usize = 16 << 10;

/// One kept origin and the bytes it was decoded from.
struct Entry {
    resource: Box<[u8]>,
    scope: Box<[u8]>,
    origin: Arc<Origin>,
}

/// A thread's origins by the hash of their bytes (one entry per hash: a collision only
/// replaces the older entry).
#[derive(Default)]
pub(crate) struct Origins {
    entries: std::collections::HashMap<u64, Entry, foldhash::fast::FixedState>,
    bytes: usize,
}

/// The key these bytes are kept under (worked out once per lookup: a miss keeps the origin
/// under the key its lookup used).
pub(crate) fn hash(resource: &[u8], scope: &[u8]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x6f72_6967_696e_7321).build_hasher();
    h.write_usize(resource.len());
    h.write(resource);
    h.write(scope);
    h.finish()
}

impl Origins {
    /// The origin decoded from these bytes before, if this thread kept it.
    pub(crate) fn get(&self, key: u64, resource: &[u8], scope: &[u8]) -> Option<Arc<Origin>> {
        self.entries
            .get(&key)
            .filter(|e| *e.resource == *resource && *e.scope == *scope)
            .map(|e| e.origin.clone())
    }

    /// Keeps `origin`, decoded from these bytes, whose [`hash`] is `key`.
    pub(crate) fn put(&mut self, key: u64, resource: &[u8], scope: &[u8], origin: &Arc<Origin>) {
        let size = resource.len() + scope.len();
        if size > MAX_ENTRY_BYTES {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES || self.bytes + size > MAX_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        let entry = Entry {
            resource: resource.into(),
            scope: scope.into(),
            origin: origin.clone(),
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.resource.len() + old.scope.len();
        }
        self.bytes += size;
    }

    /// Origins kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

thread_local! {
    /// This thread's origins.
    static ORIGINS: RefCell<Origins> = RefCell::new(Origins::default());
}

/// Runs `f` with this thread's origins, or with none while the thread is being torn
/// down or when they are in use on this thread already.
pub(crate) fn with<T>(f: impl Fn(Option<&mut Origins>) -> T) -> T {
    ORIGINS
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut o) => f(Some(&mut o)),
            Err(_) => f(None),
        })
        .unwrap_or_else(|_| f(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(service: &str) -> Arc<Origin> {
        Arc::new(Origin {
            service: service.into(),
            ..Origin::default()
        })
    }

    fn put(o: &mut Origins, resource: &[u8], scope: &[u8], origin: &Arc<Origin>) {
        o.put(hash(resource, scope), resource, scope, origin);
    }

    fn get(o: &Origins, resource: &[u8], scope: &[u8]) -> Option<Arc<Origin>> {
        o.get(hash(resource, scope), resource, scope)
    }

    #[test]
    fn origins_are_found_by_their_exact_bytes_and_bounded() {
        let mut o = Origins::default();
        let a = origin("a");
        put(&mut o, b"res-a", b"scope", &a);
        let got = get(&o, b"res-a", b"scope");
        assert!(got.is_some_and(|g| Arc::ptr_eq(&g, &a)));
        // The split between resource and scope is part of the key.
        assert!(get(&o, b"res-", b"ascope").is_none());
        assert!(get(&o, b"res-a", b"scope2").is_none());
        assert!(get(&o, b"res-b", b"scope").is_none());
        // Found by the bytes, not by the key alone (as if two resources' hashes collided).
        assert!(
            o.get(hash(b"res-a", b"scope"), b"res-b", b"scope")
                .is_none()
        );
        // Too large to keep.
        put(&mut o, &vec![7u8; MAX_ENTRY_BYTES + 1], b"", &origin("big"));
        assert!(get(&o, &vec![7u8; MAX_ENTRY_BYTES + 1], b"").is_none());
        // Full: emptied, then the new one kept.
        for i in 0..MAX_ENTRIES + 10 {
            put(&mut o, format!("r{i}").as_bytes(), b"", &origin("x"));
            assert!(o.len() <= MAX_ENTRIES);
        }
        assert!(get(&o, format!("r{}", MAX_ENTRIES + 9).as_bytes(), b"").is_some());
        assert!(get(&o, b"res-a", b"scope").is_none());
        let mut o = Origins::default();
        let big = vec![1u8; MAX_ENTRY_BYTES];
        for i in 0..(MAX_BYTES / MAX_ENTRY_BYTES) + 5 {
            let mut k = big.clone();
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            put(&mut o, &k, b"", &origin("y"));
            assert!(o.bytes <= MAX_BYTES, "{} bytes kept", o.bytes);
        }
    }
}
