//! Attribute keys ([`Key`]), interned when they arrive.
//!
//! A span carries about twenty attribute keys, and nearly every span of a service repeats
//! the same few dozen (`http.method`, `db.system`, `user.id`, …). Kept as one `String`
//! each, every attribute cost an allocation for its key, and the threads that seal and
//! index a head read each copy cold from wherever it was allocated, then free it. A
//! [`Key`] made from text already seen points at one shared copy instead: nothing to
//! free, and the copy stays in cache for every span that uses it (a catch-up after a
//! burst took 4-7% less CPU per span; BENCHMARKS.md, "Interned attribute keys").
//!
//! **Bound:** interned text is never freed, so the interner takes at most
//! [`MAX_INTERNED`] keys of at most [`MAX_INTERNED_LEN`] bytes each (together at most
//! [`MAX_INTERNED_BYTES`]); past that, and for longer keys, a key owns its text as a
//! `String` did. A sender inventing keys costs the process at most those bytes.
//!
//! Keys compare, hash and order by their text, whichever way they are held.
//! Each thread keeps its own table of the keys it has looked up, so interning a key
//! seen before takes no lock.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// At most this many distinct keys are interned in a process.
pub const MAX_INTERNED: usize = 16_384;
/// Keys longer than this are never interned.
pub const MAX_INTERNED_LEN: usize = 128;
/// At most this many bytes of key text are interned in a process.
pub const MAX_INTERNED_BYTES: usize = 1 << 20;

/// An attribute key: shared interned text, or its own.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Interned(&'static str),
    Owned(Box<str>),
}

impl Key {
    /// The key for `text`, interned when the interner takes it.
    pub fn new(text: &str) -> Self {
        match lookup(text) {
            Some(s) => Self(Repr::Interned(s)),
            None => Self(Repr::Owned(text.into())),
        }
    }

    /// The key for `bytes` of a protobuf string field, or `None` when they are not UTF-8.
    /// Bytes this thread has interned before are found by their bytes, without checking
    /// them again (keys were about half of the UTF-8 checking in a WAL body's decode).
    pub fn from_utf8(bytes: &[u8]) -> Option<Self> {
        if let Ok(Some(s)) = LOCAL.try_with(|l| l.borrow().get(bytes).map(|t| t.0)) {
            return Some(Self(Repr::Interned(s)));
        }
        std::str::from_utf8(bytes).ok().map(Self::new)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Interned(s) => s,
            Repr::Owned(s) => s,
        }
    }

    /// Whether the text is shared interned text (for tests and metrics).
    pub fn is_interned(&self) -> bool {
        matches!(self.0, Repr::Interned(_))
    }
}

impl From<String> for Key {
    fn from(text: String) -> Self {
        if text.len() > MAX_INTERNED_LEN {
            return Self(Repr::Owned(text.into_boxed_str()));
        }
        Self::new(&text)
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<&String> for Key {
    fn from(text: &String) -> Self {
        Self::new(text)
    }
}

impl From<Key> for String {
    fn from(k: Key) -> Self {
        match k.0 {
            Repr::Interned(s) => s.to_string(),
            Repr::Owned(s) => s.into_string(),
        }
    }
}

impl Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.as_str(), other.as_str());
        // Interned keys of equal text are the same copy.
        std::ptr::eq(a, b) || a == b
    }
}

impl Eq for Key {}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Key {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Key> for str {
    fn eq(&self, other: &Key) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Key> for &str {
    fn eq(&self, other: &Key) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Key> for String {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A set of interned texts within limits.
struct Interner {
    set: HashSet<&'static str>,
    bytes: usize,
    max_keys: usize,
    max_bytes: usize,
}

impl Interner {
    fn new(max_keys: usize, max_bytes: usize) -> Self {
        Self {
            set: HashSet::new(),
            bytes: 0,
            max_keys,
            max_bytes,
        }
    }

    /// The interned copy of `text`, interning it when there is room.
    fn get_or_insert(&mut self, text: &str) -> Option<&'static str> {
        if let Some(s) = self.set.get(text) {
            return Some(s);
        }
        if text.len() > MAX_INTERNED_LEN
            || self.set.len() >= self.max_keys
            || self.bytes + text.len() > self.max_bytes
        {
            return None;
        }
        // Leaked on purpose: interned text lives as long as the process, within the
        // interner's limits (see the module docs).
        let s: &'static str = Box::leak(Box::from(text));
        self.bytes += s.len();
        self.set.insert(s);
        Some(s)
    }

    fn full(&self) -> bool {
        self.set.len() >= self.max_keys || self.bytes + MAX_INTERNED_LEN > self.max_bytes
    }
}

/// The process's interner, built at first use.
static GLOBAL: Mutex<Option<Interner>> = Mutex::new(None);
/// Set once the global interner can take no more keys (new texts skip its lock then).
static GLOBAL_FULL: AtomicBool = AtomicBool::new(false);

/// Interned text in a thread's table, found by its bytes (it hashes and compares as its
/// bytes do, so a lookup by bytes needs no UTF-8 check first).
#[derive(PartialEq, Eq)]
struct Text(&'static str);

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl Borrow<[u8]> for Text {
    fn borrow(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

thread_local! {
    /// The interned texts this thread has looked up.
    static LOCAL: RefCell<HashSet<Text, foldhash::fast::RandomState>> =
        RefCell::new(HashSet::default());
}

/// The interned copy of `text`: from this thread's table, else the process's (interning
/// it when there is room); `None` when the interner does not take it.
fn lookup(text: &str) -> Option<&'static str> {
    if text.len() > MAX_INTERNED_LEN {
        return None;
    }
    if let Ok(Some(s)) = LOCAL.try_with(|l| l.borrow().get(text.as_bytes()).map(|t| t.0)) {
        return Some(s);
    }
    if GLOBAL_FULL.load(Ordering::Relaxed) {
        return None;
    }
    let found = {
        let mut global = GLOBAL.lock().ok()?;
        let interner =
            global.get_or_insert_with(|| Interner::new(MAX_INTERNED, MAX_INTERNED_BYTES));
        let found = interner.get_or_insert(text);
        if interner.full() {
            GLOBAL_FULL.store(true, Ordering::Relaxed);
        }
        found
    };
    if let Some(s) = found {
        let _ = LOCAL.try_with(|l| l.borrow_mut().insert(Text(s)));
    }
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_bytes_are_the_interned_copy_or_refused_when_not_utf8() {
        let a = Key::new("db.statement.from.bytes");
        let b = Key::from_utf8(b"db.statement.from.bytes").unwrap();
        assert!(b.is_interned());
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        // Not seen before on this thread: checked, then interned.
        let c = Key::from_utf8("r\u{e9}gion.first.seen".as_bytes()).unwrap();
        assert_eq!(c, "r\u{e9}gion.first.seen");
        assert!(c.is_interned());
        // Invalid UTF-8, and a valid prefix of a multi-byte character cut off.
        assert!(Key::from_utf8(b"bad\xff").is_none());
        assert!(Key::from_utf8(&"r\u{e9}".as_bytes()[..2]).is_none());
        // Too long to intern: still a key, owning its text.
        let long = "k".repeat(MAX_INTERNED_LEN + 1);
        let l = Key::from_utf8(long.as_bytes()).unwrap();
        assert!(!l.is_interned());
        assert_eq!(l, long);
    }

    #[test]
    fn equal_texts_share_one_copy_and_compare_as_text() {
        let a = Key::new("http.request.method");
        let b = Key::from("http.request.method".to_string());
        assert!(a.is_interned() && b.is_interned());
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_eq!(a, b);
        // From another thread: the same copy, through the global table.
        let c = std::thread::spawn(|| Key::new("http.request.method"))
            .join()
            .unwrap();
        assert!(std::ptr::eq(a.as_str(), c.as_str()));
        // Long keys keep their own text and still equal the same text.
        let long = "k".repeat(MAX_INTERNED_LEN + 1);
        let l1 = Key::new(&long);
        let l2 = Key::from(long.clone());
        assert!(!l1.is_interned() && !l2.is_interned());
        assert_eq!(l1, l2);
        assert_eq!(l1, long.as_str());
        assert!(a < Key::new("http.response.status_code"));
        let mut set = HashSet::new();
        set.insert(a.clone());
        assert!(set.contains("http.request.method"));
        assert_eq!(
            format!("{a} {a:?}"),
            "http.request.method \"http.request.method\""
        );
    }

    #[test]
    fn the_interner_stops_at_its_limits() {
        let mut by_count = Interner::new(3, 1 << 20);
        for i in 0..3 {
            assert!(by_count.get_or_insert(&format!("k{i}")).is_some());
        }
        assert!(by_count.full());
        // Full: known texts still come back interned, new ones are refused.
        assert!(by_count.get_or_insert("k1").is_some());
        assert!(by_count.get_or_insert("k3").is_none());
        let mut by_bytes = Interner::new(1000, 10);
        assert!(by_bytes.get_or_insert("abcdef").is_some());
        assert!(by_bytes.get_or_insert("ghijkl").is_none());
        assert_eq!(by_bytes.bytes, 6);
        assert_eq!(by_bytes.set.len(), 1);
    }
}
