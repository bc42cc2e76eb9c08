//! The tag index of a block: which traces carry a (service, key, value) tag. Two kinds of
//! entry, chosen per (service, key) by how often its values repeat in the block:
//!
//! - **postings**, for keys whose values repeat (a region, a route, a status): for each
//!   (service, key, value), the traces with a span of that service carrying it, as a
//!   Roaring bitmap of trace ordinals. Exact.
//! - **needles**, for keys whose values are nearly unique (a user id, a request id, a
//!   message id: more distinct values than a quarter of the (trace, value) pairs, and more
//!   than [`NEEDLE_MIN_VALUES`]): a table of (hash of key and value, trace) pairs, sorted,
//!   without the service. A lookup gives candidates; the search checks their spans.
//!   Four plus four bytes per trace and value, where postings cost a bitmap per value per
//!   service.
//!
//! Values not indexed at all (doubles, arrays, strings over [`super::MAX_INDEXED_VALUE`]
//! bytes) list their (service, key) as unindexed: a search on them checks candidate
//! traces' spans. Terms are kept as 64-bit hashes, not text: a lookup hashes the query's.
//! Version 5 hashes a term by chaining XXH3-64 over its parts ([`Hashing::term`]),
//! version 4 by chaining XXH64, versions 2 and 3 by XXH64 over the parts laid out with
//! their lengths ([`term_hash`]); a lookup in a file hashes as its version did.
//!
//! File `BLOCKID.sidx`, little endian:
//!
//! ```text
//! 0   8  magic    b"FLTSIDX1"
//! 8   4  version  5 (the body as version 3's; versions 4 and 5 differ from it
//!                   only in the term hashes)
//! 12  4  length   bytes of the compressed body
//! 16  n  body     zstd-compressed:
//!          u32 trace count of the block
//!          u32 posting count P, then P u64 hashes of (service, key, value),
//!                               then P LEB128 varints (length << 1 | kind),
//!                               then the P postings' traces, each `length` bytes:
//!                                 kind 0: ascending, as LEB128 varints of the gaps
//!                                         (first: the ordinal);
//!                                 kind 1: a bitset, one bit per trace
//!                                         (the smaller of the two)
//!          u32 unindexed count, then per entry: u64 hash of (service, key)
//!          u32 needle-key count, then per entry: u64 hash of (service, key)
//!          u32 needle count N, sorted by hash, then trace:
//!                               N LEB128 varints: each hash of (key, value) as the gap
//!                                                 from the previous (first: itself),
//!                               N traces: u16 when the block has at most 65,536
//!                                         traces, else u32
//! ..  4  crc      CRC32C of everything before it
//! ```
//!
//! Each field kind is a stream of its own so zstd meets alike bytes together (random
//! hashes apart from small lengths and ordinals): on varied traffic 2.65 bytes per span
//! in version 2 became 2.2 in version 3, most of it the needle table (8 bytes per needle
//! before zstd, hash then trace, in version 2). Version 2 files (each posting's hash,
//! kind, u32 length and traces together; needles as u32 hash, u32 trace pairs) are still
//! read.
//!
//! Written to a temporary name, fsynced and renamed; a file of another version or an
//! unreadable one is rebuilt from the block's spans when the block opens.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;

use faultline_model::span::Span;

use super::query::{for_each_origin_tag, for_each_span_tag, indexed_text, is_indexed};
use crate::error::StoreError;
use crate::text_cache::TextCache;

const SIDX_MAGIC: &[u8; 8] = b"FLTSIDX1";
const SIDX_VERSION: u32 = 5;

/// A (service, key) with fewer distinct values than this in a block keeps postings. (Two
/// in tests, so the search model test, whose blocks are small, exercises needles.)
#[cfg(not(test))]
pub(crate) const NEEDLE_MIN_VALUES: usize = 64;
#[cfg(test)]
pub(crate) const NEEDLE_MIN_VALUES: usize = 2;

/// Hash of a (service, key) or (service, key, value) term: XXH64 (a specified algorithm,
/// so files written by one build are read alike by every other) over each part's length
/// as a u32 LE followed by its bytes. A query term sharing a hash with another term of the
/// block would be answered with that term's traces: for a block of 100,000 terms, a
/// chance of about one in 10^14 per query term.
fn term_hash(parts: &[&str]) -> u64 {
    // One-shot over the parts laid out in a reused buffer: the same value as streaming
    // them, at a fraction of the cost for the short strings tags are (the index hashes
    // every tag of every span).
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        for p in parts {
            b.extend_from_slice(&(p.len() as u32).to_le_bytes());
            b.extend_from_slice(p.as_bytes());
        }
        twox_hash::XxHash64::oneshot(TERM_SEED, &b)
    })
}

const TERM_SEED: u64 = 0x6661_756c_746c_696e;

/// How a file's terms are hashed, by its version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Hashing {
    /// Versions 2 and 3: [`term_hash`].
    LaidOut,
    /// Version 4: chained links of XXH64.
    Xxh64,
    /// Version 5 (what this build writes): chained links of XXH3-64.
    #[default]
    Xxh3,
}

impl Hashing {
    fn of_version(version: u32) -> Self {
        match version {
            ..=3 => Self::LaidOut,
            4 => Self::Xxh64,
            _ => Self::Xxh3,
        }
    }

    /// Hash of a (service, key) or (service, key, value) term. Chained (versions 4 and
    /// 5): each part hashed with the hash of the parts before it as the seed (the first
    /// with a fixed seed). Nothing is copied, and the (service, key) hash is the step
    /// before the term's: the index build hashes every tag of every span, and laying the
    /// parts out for one hash ([`term_hash`]) was a fifth of its time. XXH3 hashes the
    /// short strings tags are in half XXH64's time (5.8 against 11.9 ns a link here), and
    /// the links were 8% of the server's time in a catch-up. The chance that a query term
    /// shares a hash with another term of a block is the same for all three.
    fn term(self, parts: &[&str]) -> u64 {
        match self {
            Self::LaidOut => term_hash(parts),
            _ => parts.iter().fold(TERM_SEED, |h, p| self.chain(h, p)),
        }
    }

    /// One link of a chained [`Hashing::term`]: the hash of the parts before and then
    /// `part` (XXH3 with a seed derives no secret for parts up to 240 bytes, which every
    /// indexed value is).
    fn chain(self, before: u64, part: &str) -> u64 {
        match self {
            Self::Xxh64 => twox_hash::XxHash64::oneshot(before, part.as_bytes()),
            Self::Xxh3 | Self::LaidOut => {
                twox_hash::XxHash3_64::oneshot_with_seed(before, part.as_bytes())
            }
        }
    }
}

/// A hasher for keys that are already well-mixed 64-bit hashes: passes them through.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Build-hasher for [`IdHasher`].
pub(crate) type IdBuild = std::hash::BuildHasherDefault<IdHasher>;

/// The traces of one term: a short sorted list, or a bitmap.
#[derive(Debug)]
enum Posting {
    Few(Box<[u32]>),
    Many(RoaringBitmap),
}

/// Up to this many traces a posting is a plain list (a bitmap costs about 100 bytes even
/// for one entry, and most values of a high-cardinality key are in one or two traces).
const FEW: u64 = 8;

impl Posting {
    fn from_bitmap(b: RoaringBitmap) -> Self {
        if b.len() <= FEW {
            Self::Few(b.iter().collect())
        } else {
            Self::Many(b)
        }
    }

    /// The posting of `traces`, ascending and distinct (as [`Postings::build`] groups
    /// them); the same as [`Posting::from_bitmap`] of their bitmap.
    fn from_sorted(traces: &[u32]) -> Result<Self, StoreError> {
        if traces.len() as u64 <= FEW {
            return Ok(Self::Few(traces.into()));
        }
        RoaringBitmap::from_sorted_iter(traces.iter().copied())
            .map(Self::Many)
            .map_err(|e| StoreError::Encode(format!("search index bitmap: {e}")))
    }

    /// Bytes it holds on the heap (a bitmap's serialized size stands for its
    /// containers).
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Few(v) => v.len() * 4,
            Self::Many(b) => b.serialized_size() + 48,
        }
    }

    fn to_bitmap(&self) -> RoaringBitmap {
        match self {
            Self::Few(v) => v.iter().copied().collect(),
            Self::Many(b) => b.clone(),
        }
    }
}

/// What the index knows of one (service, key, value).
#[derive(Debug)]
pub(crate) enum Found {
    /// Exactly these traces carry it.
    Exact(RoaringBitmap),
    /// At most these traces carry it (a needle lookup): check their spans.
    Candidates(RoaringBitmap),
    /// The index does not hold the key's values: check the spans of every candidate.
    Unindexed,
}

/// The tag index of one block, in memory.
#[derive(Debug, Default)]
pub(crate) struct Postings {
    /// Hash of (service, key, value) → traces.
    terms: HashMap<u64, Posting, IdBuild>,
    /// Hashes of (service, key) whose values are not indexed.
    unindexed: HashSet<u64, IdBuild>,
    /// Hashes of (service, key) whose values are in `needles`.
    needle_keys: HashSet<u64, IdBuild>,
    /// (hash of (key, value), trace), sorted.
    needles: Vec<(u32, u32)>,
    /// How the file's terms were hashed.
    hashing: Hashing,
}

/// The 32-bit hash of a (key, value) in the needle table: folded from the file's
/// [`Hashing::term`] of the two.
fn needle_hash(key: &str, value: &str, hashing: Hashing) -> u32 {
    fold_needle(hashing.term(&[key, value]))
}

/// A (key, value) term's hash folded to the needle table's 32 bits.
fn fold_needle(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

impl Postings {
    /// Bytes held on the heap, estimated from the tables' capacities (a hash table entry
    /// is its key, its value and a control byte).
    pub(crate) fn heap_bytes(&self) -> usize {
        let entry = 8 + std::mem::size_of::<Posting>() + 1;
        self.terms.capacity() * entry
            + self.terms.values().map(Posting::heap_bytes).sum::<usize>()
            + (self.unindexed.capacity() + self.needle_keys.capacity()) * 9
            + self.needles.capacity() * 8
    }

    /// Builds the index of a block from its spans in row order, with `traces` giving each
    /// trace's first row and row count; returns it and the compressed file body.
    ///
    /// `pre`, when given, holds each row's hashed tags as [`SpanTerms`] worked them out
    /// at ingest (one entry per row, in row order): the build then reads a span's strings
    /// only for a term the block has not met yet.
    pub(crate) fn build(
        spans: &[&Span],
        traces: &[(u32, u32)],
        pre: Option<&[Hashed<'_>]>,
    ) -> Result<(Self, Vec<u8>), StoreError> {
        Self::build_hashed(spans, traces, Hashing::default(), pre)
    }

    /// [`Postings::build`] with the terms hashed as `hashing` (tests write the hashes of
    /// older versions with it). Chained hashings only: the build hashes link by link, and
    /// versions 2 and 3 (`LaidOut`) are read, never written.
    fn build_hashed(
        spans: &[&Span],
        traces: &[(u32, u32)],
        hashing: Hashing,
        pre: Option<&[Hashed<'_>]>,
    ) -> Result<(Self, Vec<u8>), StoreError> {
        debug_assert!(
            hashing != Hashing::LaidOut,
            "an index is built with chained hashes only"
        );
        // Hashes worked out at ingest are the current version's, one entry per row.
        let pre = pre.filter(|p| hashing == Hashing::default() && p.len() == spans.len());
        let mut occ = Occurrences {
            hashing,
            ..Occurrences::default()
        };
        occ.reserve(spans.len(), pre);
        for (t, &(first, rows)) in traces.iter().enumerate() {
            let range = first as usize..(first + rows) as usize;
            // The rows of a block are a head's spans in trace order, not memory order:
            // ask for the rows a few ahead (and their hashed tags) before they are read.
            for i in range.clone() {
                crate::prefetch::ahead(spans, i, crate::prefetch::Reach::Parts);
                if let Some(h) = pre.and_then(|p| p.get(i + 4)) {
                    crate::prefetch::slice(h.terms, 4);
                    crate::prefetch::slice(h.needles, 2);
                }
            }
            occ.trace(
                spans.get(range.clone()).unwrap_or_default(),
                pre.and_then(|p| p.get(range)),
                t as u32,
            );
        }
        let Occurrences {
            pairs,
            terms,
            unindexed,
            ..
        } = occ;
        // Group the (term, trace) pairs by term with a counting sort over the dense term
        // numbers: traces were visited in order, so each group comes out ascending.
        let mut start = vec![0u32; terms.len() + 1];
        for &(term, _) in &pairs {
            start[term as usize + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let mut grouped = vec![0u32; pairs.len()];
        let mut fill = start.clone();
        for &(term, trace) in &pairs {
            let slot = &mut fill[term as usize];
            grouped[*slot as usize] = trace;
            *slot += 1;
        }
        drop(pairs);
        let group = |i: usize| &grouped[start[i] as usize..start[i + 1] as usize];
        // Per (service, key): distinct values and (trace, value) pairs.
        let mut per_key: HashMap<u64, (usize, usize), IdBuild> = HashMap::default();
        for (i, t) in terms.iter().enumerate() {
            let e = per_key.entry(t.skey).or_default();
            e.0 += 1;
            e.1 += group(i).len();
        }
        let needle_keys: HashSet<u64, IdBuild> = per_key
            .iter()
            .filter(|(_, (distinct, pairs))| {
                *distinct >= NEEDLE_MIN_VALUES && distinct * 4 > *pairs
            })
            .map(|(k, _)| *k)
            .collect();
        // Each posting is its ascending slice of `grouped`: the file is written from the
        // slices, and only a posting of more than `FEW` traces becomes a bitmap (building
        // a bitmap for every term and iterating it to write the file was a third of the
        // index thread's time).
        let mut postings: Vec<(u64, &[u32])> = Vec::new();
        let mut needles: Vec<(u32, u32)> = Vec::new();
        for (i, t) in terms.iter().enumerate() {
            let traces = group(i);
            if needle_keys.contains(&t.skey) {
                needles.extend(traces.iter().map(|&tr| (t.needle, tr)));
            } else {
                postings.push((t.term, traces));
            }
        }
        needles.sort_unstable();
        needles.dedup();
        let mut unindexed: Vec<u64> = unindexed.into_iter().collect();
        unindexed.sort_unstable();
        let mut nkeys: Vec<u64> = needle_keys.iter().copied().collect();
        nkeys.sort_unstable();
        let body = encode(
            (traces.len() as u32, &postings),
            &unindexed,
            &nkeys,
            &needles,
        )?;
        let terms = postings
            .into_iter()
            .map(|(h, traces)| Ok((h, Posting::from_sorted(traces)?)))
            .collect::<Result<_, StoreError>>()?;
        let index = Self {
            terms,
            unindexed: unindexed.into_iter().collect(),
            needle_keys,
            needles,
            hashing,
        };
        Ok((index, body))
    }

    /// What the index knows of `key` = `value` on spans of `service`.
    pub(crate) fn find(&self, service: &str, key: &str, value: &str) -> Option<Found> {
        let h = self.hashing;
        let (skey, term) = match h {
            Hashing::LaidOut => (h.term(&[service, key]), h.term(&[service, key, value])),
            _ => {
                let skey = h.term(&[service, key]);
                (skey, h.chain(skey, value))
            }
        };
        if self.unindexed.contains(&skey) {
            return Some(Found::Unindexed);
        }
        if self.needle_keys.contains(&skey) {
            let h = needle_hash(key, value, self.hashing);
            let from = self.needles.partition_point(|&(x, _)| x < h);
            let traces = self.needles[from..]
                .iter()
                .take_while(|&&(x, _)| x == h)
                .map(|&(_, t)| t);
            return Some(Found::Candidates(traces.collect()));
        }
        self.terms.get(&term).map(|p| Found::Exact(p.to_bitmap()))
    }

    /// Reads a body of `version` 2 to 5 (see the module's format).
    fn decode(body: &[u8], version: u32) -> Result<Self, String> {
        let mut c = Cur(body);
        let traces = c.u32()?;
        let n = c.u32()? as usize;
        let mut terms = HashMap::with_capacity_and_hasher(n.min(1 << 20), IdBuild::default());
        if version == 2 {
            for _ in 0..n {
                let h = c.u64()?;
                let kind = c.take(1)?[0];
                let len = c.u32()? as usize;
                let bitmap = decode_posting(kind, c.take(len)?)
                    .map_err(|e| format!("posting of term {h:016x}: {e}"))?;
                terms.insert(h, Posting::from_bitmap(bitmap));
            }
        } else {
            let hashes = c.take(n.checked_mul(8).ok_or("posting count overflows")?)?;
            let mut heads = Vec::with_capacity(n.min(1 << 20));
            for _ in 0..n {
                heads.push(c.varint()?);
            }
            for (h, head) in hashes.chunks_exact(8).zip(heads) {
                let mut a = [0u8; 8];
                a.copy_from_slice(h);
                let h = u64::from_le_bytes(a);
                let len = usize::try_from(head >> 1).map_err(|_| "a posting's length overflows")?;
                let kind = u8::from(head & 1 == 1);
                let bitmap = decode_posting(kind, c.take(len)?)
                    .map_err(|e| format!("posting of term {h:016x}: {e}"))?;
                terms.insert(h, Posting::from_bitmap(bitmap));
            }
        }
        let unindexed = c.hashes()?;
        let needle_keys = c.hashes()?;
        let n = c.u32()? as usize;
        let needles: Vec<(u32, u32)> = if version == 2 {
            let raw = c.take(n.checked_mul(8).ok_or("needle count overflows")?)?;
            raw.chunks_exact(8)
                .map(|e| {
                    (
                        u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                        u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                    )
                })
                .collect()
        } else {
            let width = if traces <= 1 << 16 { 2 } else { 4 };
            // Each needle takes at least a byte of hash gap and its trace: a count the
            // body cannot hold is refused before anything is allocated for it.
            if n.checked_mul(1 + width).is_none_or(|need| need > c.0.len()) {
                return Err(format!("{n} needles do not fit the body"));
            }
            let mut needles = Vec::with_capacity(n);
            let mut h = 0u32;
            for _ in 0..n {
                let gap = u32::try_from(c.varint()?).map_err(|_| "a needle's hash overflows")?;
                h = h.checked_add(gap).ok_or("a needle's hash overflows")?;
                needles.push((h, 0));
            }
            let raw = c.take(n.checked_mul(width).ok_or("needle count overflows")?)?;
            for (needle, t) in needles.iter_mut().zip(raw.chunks_exact(width)) {
                needle.1 = match t {
                    [a, b] => u32::from(u16::from_le_bytes([*a, *b])),
                    [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
                    _ => 0,
                };
            }
            needles
        };
        if !needles.is_sorted() {
            return Err("the needle table is not sorted".into());
        }
        if !c.0.is_empty() {
            return Err(format!("{} bytes after the last entry", c.0.len()));
        }
        Ok(Self {
            terms,
            unindexed,
            needle_keys,
            needles,
            hashing: Hashing::of_version(version),
        })
    }
}

/// A cursor over a decompressed body.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated body".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn varint(&mut self) -> Result<u64, String> {
        crate::varint::take(&mut self.0).map_err(String::from)
    }
    fn hashes(&mut self) -> Result<HashSet<u64, IdBuild>, String> {
        let n = self.u32()? as usize;
        let mut out = HashSet::with_capacity_and_hasher(n.min(1 << 20), IdBuild::default());
        for _ in 0..n {
            out.insert(self.u64()?);
        }
        Ok(out)
    }
}

/// Tag occurrences while a block's index is built.
#[derive(Default)]
struct Occurrences {
    /// (term number, trace), each term once per trace, traces ascending.
    pairs: Vec<(u32, u32)>,
    /// Per term number: its hashes.
    terms: Vec<Term>,
    /// Term number by hash of (service, key, value).
    number: HashMap<u64, u32, IdBuild>,
    /// Hashes of (service, key) with a value that is not indexed.
    unindexed: HashSet<u64, IdBuild>,
    /// Per term number: one more than the last trace it was counted for (0: none yet).
    /// Most terms repeat on a trace's spans; a hash set of the trace's terms cleared per
    /// trace cost a hash and a probe for each of a span's tags.
    counted: Vec<u32>,
    origins: Vec<*const faultline_model::span::Origin>,
    /// Per resource met in the block: the term numbers of its tags (hashed once, not once
    /// per trace; the spans hold their resources for the whole build, so an address
    /// stands for one resource).
    origin_terms:
        HashMap<*const faultline_model::span::Origin, Vec<u32>, foldhash::fast::FixedState>,
    /// How terms are hashed.
    hashing: Hashing,
}

/// A distinct (service, key, value) of the block.
struct Term {
    /// Hash of (service, key, value).
    term: u64,
    /// Hash of (service, key).
    skey: u64,
    /// The needle hash of (key, value).
    needle: u32,
}

impl Occurrences {
    /// Room for the pairs and terms of a block of `spans` rows, so the tables are not
    /// rehashed and the vectors not copied as they grow. With the hashes from ingest the
    /// span tags' occurrences are counted (pairs are at most that many, plus the
    /// resources' few); distinct terms are guessed at half a span's worth (varied traffic
    /// has about 0.7 per span: fresh values), and never more than the occurrences.
    fn reserve(&mut self, spans: usize, pre: Option<&[Hashed<'_>]>) {
        let occurrences = pre.map(|p| p.iter().map(|h| h.terms.len()).sum::<usize>());
        if let Some(n) = occurrences {
            self.pairs.reserve(n);
        }
        let terms = (spans / 2).min(occurrences.unwrap_or(usize::MAX));
        self.number.reserve(terms);
        self.terms.reserve(terms);
        self.counted.reserve(terms);
    }

    /// Adds the tags of trace `t` (its spans); traces come in ascending order. `pre`, when
    /// given, holds the spans' hashed tags (one entry per span).
    fn trace(&mut self, spans: &[&Span], pre: Option<&[Hashed<'_>]>, t: u32) {
        self.origins.clear();
        let mut services = ServiceHashes::new(self.hashing);
        for (i, s) in spans.iter().enumerate() {
            let o = std::sync::Arc::as_ptr(&s.origin);
            let svc = services.of(s);
            // From the hashes worked out at ingest: a term the block knows is counted from
            // its hash, a new one added from its hashes and its key (the value's bytes,
            // cold by now, are not read again).
            match pre.and_then(|p| p.get(i)) {
                Some(h) => {
                    self.unindexed.extend(h.unindexed.iter().copied());
                    let n_known = h
                        .terms
                        .iter()
                        .take_while(|&&term| self.count_known(term, t))
                        .count();
                    if n_known < h.terms.len() {
                        let mut at = 0;
                        for_each_span_tag(s, &mut |k, v| {
                            if !is_indexed(v) {
                                return;
                            }
                            let j = at;
                            at += 1;
                            if j < n_known {
                                return;
                            }
                            if let (Some(&term), Some(&needle)) = (h.terms.get(j), h.needles.get(j))
                                && !self.count_known(term, t)
                            {
                                let skey = self.hashing.chain(svc, k);
                                self.add_term(term, skey, needle, t);
                            }
                        });
                    }
                }
                None => for_each_span_tag(s, &mut |k, v| {
                    self.add(svc, k, indexed_text(v).as_deref(), t);
                }),
            }
            // A resource's tags are the same for all its spans: once per trace, and hashed
            // once per block.
            if !self.origins.contains(&o) {
                self.origins.push(o);
                match self.origin_terms.get(&o) {
                    Some(numbers) => {
                        for &n in numbers {
                            count_once(&mut self.counted, &mut self.pairs, n, t);
                        }
                    }
                    None => {
                        let mut numbers = Vec::new();
                        for_each_origin_tag(&s.origin, &mut |k, v| {
                            numbers.extend(self.add(svc, k, indexed_text(v).as_deref(), t));
                        });
                        self.origin_terms.insert(o, numbers);
                    }
                }
            }
        }
    }

    /// Counts term `term` for trace `t` if the block has met it already; false when not.
    fn count_known(&mut self, term: u64, t: u32) -> bool {
        match self.number.get(&term) {
            Some(&n) => {
                self.count_number(n, t);
                true
            }
            None => false,
        }
    }

    /// Counts term number `n` for trace `t` (once per trace).
    fn count_number(&mut self, n: u32, t: u32) {
        count_once(&mut self.counted, &mut self.pairs, n, t);
    }

    /// Adds one tag of a span of trace `t` whose service hashes to `svc`: key `k`, and
    /// `text` when its value is indexed. Gives the term's number when it is indexed.
    fn add(&mut self, svc: u64, k: &str, text: Option<&str>, t: u32) -> Option<u32> {
        let h = self.hashing;
        let skey = h.chain(svc, k);
        match text {
            Some(text) => {
                let term = h.chain(skey, text);
                let n = match self.number.get(&term) {
                    Some(&n) => n,
                    None => self.new_term(term, skey, needle_hash(k, text, h)),
                };
                self.count_number(n, t);
                Some(n)
            }
            None => {
                self.unindexed.insert(skey);
                None
            }
        }
    }

    /// Adds term `term` (of (service, key) `skey`, needle hash `needle`), which the block
    /// has not met, for trace `t`.
    fn add_term(&mut self, term: u64, skey: u64, needle: u32, t: u32) {
        let n = self.new_term(term, skey, needle);
        self.count_number(n, t);
    }

    /// Numbers a term new to the block.
    fn new_term(&mut self, term: u64, skey: u64, needle: u32) -> u32 {
        let n = self.terms.len() as u32;
        self.number.insert(term, n);
        self.terms.push(Term { term, skey, needle });
        self.counted.push(0);
        n
    }
}

/// Adds the pair (term number `n`, trace `t`) unless `n` was counted for `t` already
/// (`counted` as [`Occurrences::counted`]).
fn count_once(counted: &mut [u32], pairs: &mut Vec<(u32, u32)>, n: u32, t: u32) {
    if let Some(last) = counted.get_mut(n as usize)
        && *last != t + 1
    {
        *last = t + 1;
        pairs.push((n, t));
    }
}

/// A span's service and name hashed together: a seal groups traces whose spans have the
/// same of these in the same order (`block::writer`'s `by_shape`). [`SpanTerms`] keeps it
/// for each span from ingest, where the strings are in cache; a seal in trace order found
/// them cold (two dependent reads for the service, one for the name).
pub(crate) fn shape_part(s: &Span) -> u64 {
    shape_of(Hashing::default().chain(TERM_SEED, s.service()), &s.name)
}

/// [`shape_part`] from the service's hash (the first link of its spans' term hashes).
fn shape_of(service_hash: u64, name: &str) -> u64 {
    Hashing::default().chain(service_hash, name)
}

/// The first link of spans' term hashes (their service's), worked out once per resource:
/// spans of one resource come together.
struct ServiceHashes {
    hashing: Hashing,
    last: Option<(*const faultline_model::span::Origin, u64)>,
}

impl ServiceHashes {
    fn new(hashing: Hashing) -> Self {
        Self {
            hashing,
            last: None,
        }
    }

    fn of(&mut self, s: &Span) -> u64 {
        let o = std::sync::Arc::as_ptr(&s.origin);
        match self.last {
            Some((lo, svc)) if lo == o => svc,
            _ => {
                let svc = self.hashing.chain(TERM_SEED, s.service());
                self.last = Some((o, svc));
                svc
            }
        }
    }
}

/// One span's hashed tags, as [`SpanTerms::get`] gives them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hashed<'a> {
    /// The terms of its indexed tags, in the order [`for_each_span_tag`] visits them.
    terms: &'a [u64],
    /// The needle hash of each of `terms`' (key, value).
    needles: &'a [u32],
    /// The (service, key) hashes of its unindexed tags.
    unindexed: &'a [u64],
}

/// The hashed tags of spans (not of their resources), worked out when the spans are
/// ingested, while their strings are still in cache: the index thread would otherwise
/// read every key and value again, cold, from wherever they were allocated (the term
/// hashes were an eighth of a catch-up's samples, mostly those reads). Hashed as the
/// current index version hashes ([`Hashing::default`]). With each term its needle hash,
/// so a term new to the block needs only its key (interned, in cache) from the span:
/// twelve bytes per tag, held with the head until it is sealed.
#[derive(Debug, Default, Clone)]
pub(crate) struct SpanTerms {
    /// Per span: its terms, then its unindexed (service, key) hashes.
    hashes: Vec<u64>,
    /// Beside `hashes`, one each: a term's needle hash (0 beside an unindexed hash).
    needles: Vec<u32>,
    /// Per span: where its unindexed hashes start and where its hashes end.
    ends: Vec<(u32, u32)>,
    /// Per span: its service and name hashed ([`shape_part`]), for the seal's order of
    /// traces by shape.
    shapes: Vec<u64>,
    /// Set when the hashes outgrew 32-bit offsets, or spans were added without them:
    /// then none are given out.
    broken: bool,
    /// Scratch for one span's unindexed hashes.
    scratch: Vec<u64>,
}

impl SpanTerms {
    /// The hashed tags of `spans`.
    pub(crate) fn of(spans: &[Span]) -> Self {
        let mut out = Self::default();
        out.hashes.reserve(spans.len() * 24);
        out.needles.reserve(spans.len() * 24);
        out.ends.reserve(spans.len());
        out.shapes.reserve(spans.len());
        let mut services = ServiceHashes::new(Hashing::default());
        // The first links of a tag's hashes, (service, key) and the key alone (where a
        // needle hash starts), depend on its service and key only: every span repeats
        // its keys, so each is hashed once per batch instead of twice per tag (those two
        // links were half of the hashing at ingest, 3% of a replay's instructions).
        let mut keys = TextCache::new(256);
        for s in spans {
            out.push(s, services.of(s), &mut keys);
        }
        out
    }

    fn push<'s>(&mut self, s: &'s Span, svc: u64, keys: &mut TextCache<'s, (u64, u64)>) {
        let h = Hashing::default();
        let (hashes, needles, scratch) = (&mut self.hashes, &mut self.needles, &mut self.scratch);
        scratch.clear();
        for_each_span_tag(s, &mut |k, v| {
            let (skey, key) = keys.get(k, svc, || (h.chain(svc, k), h.chain(TERM_SEED, k)));
            match indexed_text(v) {
                Some(text) => {
                    hashes.push(h.chain(skey, &text));
                    // `needle_hash`, from the key's cached link.
                    needles.push(fold_needle(h.chain(key, &text)));
                }
                None => scratch.push(skey),
            }
        });
        let mid = self.hashes.len();
        self.hashes.extend_from_slice(&self.scratch);
        self.needles.resize(self.hashes.len(), 0);
        match (u32::try_from(mid), u32::try_from(self.hashes.len())) {
            (Ok(mid), Ok(end)) => self.ends.push((mid, end)),
            _ => self.broken = true,
        }
        self.shapes.push(shape_of(svc, &s.name));
    }

    /// Adds `other`'s spans after these.
    pub(crate) fn append(&mut self, other: &SpanTerms) {
        if other.broken {
            self.forget();
        }
        if self.broken {
            return;
        }
        let base = self.hashes.len();
        self.hashes.extend_from_slice(&other.hashes);
        self.needles.extend_from_slice(&other.needles);
        self.shapes.extend_from_slice(&other.shapes);
        for &(mid, end) in &other.ends {
            match (
                u32::try_from(base + mid as usize),
                u32::try_from(base + end as usize),
            ) {
                (Ok(mid), Ok(end)) => self.ends.push((mid, end)),
                _ => self.broken = true,
            }
        }
    }

    /// Makes room for `spans` more spans' hashes at once (see `Head::reserve`).
    pub(crate) fn reserve(&mut self, spans: usize) {
        if !self.broken {
            self.ends.reserve(spans);
            self.shapes.reserve(spans);
            self.hashes.reserve(spans.saturating_mul(24));
            self.needles.reserve(spans.saturating_mul(24));
        }
    }

    /// Notes that spans were added without their hashes: none are given out any more.
    pub(crate) fn forget(&mut self) {
        self.broken = true;
        self.hashes = Vec::new();
        self.needles = Vec::new();
        self.ends = Vec::new();
        self.shapes = Vec::new();
    }

    /// The `i`-th span's [`shape_part`], worked out at ingest.
    pub(crate) fn shape(&self, i: usize) -> Option<u64> {
        if self.broken {
            return None;
        }
        self.shapes.get(i).copied()
    }

    /// How many spans' hashes are held (0 once broken).
    pub(crate) fn len(&self) -> usize {
        if self.broken { 0 } else { self.ends.len() }
    }

    /// The hashed tags of the `i`-th span.
    pub(crate) fn get(&self, i: usize) -> Option<Hashed<'_>> {
        if self.broken {
            return None;
        }
        let start = match i.checked_sub(1) {
            Some(p) => self.ends.get(p)?.1 as usize,
            None => 0,
        };
        let (mid, end) = (self.ends.get(i)?.0 as usize, self.ends.get(i)?.1 as usize);
        Some(Hashed {
            terms: self.hashes.get(start..mid)?,
            needles: self.needles.get(start..mid)?,
            unindexed: self.hashes.get(mid..end)?,
        })
    }
}

/// The traces of a posting as the smaller of gap varints (kind 0) and a bitset over the
/// block's `traces` (kind 1).
fn encode_posting(b: &[u32], traces: u32, out: &mut Vec<u8>) -> u8 {
    let mut prev = 0u32;
    let start = out.len();
    for (i, &t) in b.iter().enumerate() {
        crate::varint::put(u64::from(if i == 0 { t } else { t - prev }), out);
        prev = t;
    }
    let bits = (traces as usize).div_ceil(8);
    if out.len() - start <= bits {
        return 0;
    }
    out.truncate(start);
    out.resize(start + bits, 0);
    for &t in b {
        out[start + (t / 8) as usize] |= 1 << (t % 8);
    }
    1
}

/// Reads a posting written by [`encode_posting`].
fn decode_posting(kind: u8, bytes: &[u8]) -> Result<RoaringBitmap, String> {
    let mut out = Vec::new();
    match kind {
        0 => {
            let (mut rest, mut prev) = (bytes, 0u32);
            while !rest.is_empty() {
                let v = crate::varint::take(&mut rest).map_err(|e| format!("a posting: {e}"))?;
                let v = u32::try_from(v).map_err(|_| "a posting overflows")?;
                prev = if out.is_empty() {
                    v
                } else {
                    prev.checked_add(v).ok_or("a posting overflows")?
                };
                out.push(prev);
            }
        }
        1 => {
            for (i, &b) in bytes.iter().enumerate() {
                for bit in 0..8 {
                    if b & (1 << bit) != 0 {
                        out.push(i as u32 * 8 + bit);
                    }
                }
            }
        }
        k => return Err(format!("unknown posting kind {k}")),
    }
    RoaringBitmap::from_sorted_iter(out).map_err(|e| format!("a posting is not ascending: {e}"))
}

/// The body of a version 3 file (see the module's format), compressed.
fn encode<L: AsRef<[u32]>>(
    (traces, postings): (u32, &[(u64, L)]),
    unindexed: &[u64],
    needle_keys: &[u64],
    needles: &[(u32, u32)],
) -> Result<Vec<u8>, StoreError> {
    let mut body = Vec::new();
    body.extend_from_slice(&traces.to_le_bytes());
    body.extend_from_slice(&(postings.len() as u32).to_le_bytes());
    let mut payload = Vec::new();
    let mut heads = Vec::with_capacity(postings.len() * 2);
    for (h, b) in postings {
        body.extend_from_slice(&h.to_le_bytes());
        let before = payload.len();
        let kind = encode_posting(b.as_ref(), traces, &mut payload);
        crate::varint::put(
            ((payload.len() - before) as u64) << 1 | u64::from(kind),
            &mut heads,
        );
    }
    body.extend_from_slice(&heads);
    body.extend_from_slice(&payload);
    for list in [unindexed, needle_keys] {
        body.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for h in list {
            body.extend_from_slice(&h.to_le_bytes());
        }
    }
    body.extend_from_slice(&(needles.len() as u32).to_le_bytes());
    let mut prev = 0u32;
    for &(h, _) in needles {
        crate::varint::put(u64::from(h - prev), &mut body);
        prev = h;
    }
    let narrow = traces <= 1 << 16;
    for &(_, t) in needles {
        if narrow {
            body.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            body.extend_from_slice(&t.to_le_bytes());
        }
    }
    zstd::bulk::compress(&body, 3)
        .map_err(|e| StoreError::Encode(format!("search index compression: {e}")))
}

/// Path of a block's search index.
pub(crate) fn sidx_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.sidx"))
}

/// Writes the postings durably (temporary name, fsync, rename; the caller fsyncs the
/// directory). Returns the file size.
pub(crate) fn write_postings(dir: &Path, id: &str, body: &[u8]) -> Result<u64, StoreError> {
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(SIDX_MAGIC);
    out.extend_from_slice(&SIDX_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{id}.sidx.tmp"));
    let io = |op: &'static str| {
        let path = tmp.clone();
        move |source| StoreError::Io { op, path, source }
    };
    let mut f = File::create(&tmp).map_err(io("create search index"))?;
    f.write_all(&out).map_err(io("write search index"))?;
    f.sync_all().map_err(io("fsync search index"))?;
    drop(f);
    std::fs::rename(&tmp, sidx_path(dir, id)).map_err(io("rename search index"))?;
    Ok(out.len() as u64)
}

/// Reads a block's postings, checking magic, version and checksum.
pub(crate) fn read_postings(dir: &Path, id: &str) -> Result<Postings, StoreError> {
    let path = sidx_path(dir, id);
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.clone(),
        reason,
    };
    let data = std::fs::read(&path).map_err(|source| StoreError::Io {
        op: "read search index",
        path: path.clone(),
        source,
    })?;
    if data.len() < 20 || &data[0..8] != SIDX_MAGIC {
        return Err(corrupt("not a faultline search index (bad magic)".into()));
    }
    let (all, crc) = data.split_at(data.len() - 4);
    if crc32c::crc32c(all).to_le_bytes() != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if !(2..=SIDX_VERSION).contains(&version) {
        return Err(corrupt(format!(
            "search index version {version} is not supported (this build reads 2 to \
             {SIDX_VERSION}); the index is rebuilt from the block's spans"
        )));
    }
    let len = u32::from_le_bytes([data[12], data[13], data[14], data[15]]) as usize;
    if all.len() != 16 + len {
        return Err(corrupt(format!(
            "body of {len} bytes does not fit the file"
        )));
    }
    // Bound the decompressed size: a term costs at least 16 bytes and a trace bit.
    let body = zstd::bulk::decompress(&all[16..], 1 << 30)
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    Postings::decode(&body, version).map_err(corrupt)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Files on disk hold these hashes: a change of algorithm must bump the version.
    #[test]
    fn term_hashes_are_fixed() {
        let got = [
            term_hash(&["cart", "region", "eu-west"]),
            term_hash(&["cart", "regione", "u-west"]),
            u64::from(needle_hash("user.id", "u-1", Hashing::LaidOut)),
        ];
        assert_eq!(
            got,
            [0xb859_bf82_e567_7b05, 0x668f_b5b0_0cb0_afe8, 0x68e2_6f9c],
            "{got:x?}"
        );
    }

    #[test]
    fn chained_hashes_are_fixed_and_tell_parts_apart() {
        // Version 4's and version 5's, each fixed by the files that hold them.
        for (h, want) in [
            (
                Hashing::Xxh64,
                [0xc591_6bdd_0c51_264c, 0x0e59_1c45_dedb_dc0c, 0xbc24_d37d],
            ),
            // Version 5's agree with the reference XXH3 (Python's `xxhash.xxh3_64`).
            (
                Hashing::Xxh3,
                [0x12e5_6fc9_ffa4_e91b, 0xcb4d_93d2_f47e_8541, 0x09e8_fbec],
            ),
        ] {
            let got = [
                h.term(&["cart", "region", "eu-west"]),
                h.term(&["cart", "region"]),
                u64::from(needle_hash("user.id", "u-1", h)),
            ];
            assert_eq!(got, want, "{h:?}: {got:x?}");
            assert_eq!(
                h.chain(h.term(&["cart", "region"]), "eu-west"),
                h.term(&["cart", "region", "eu-west"])
            );
            // Where one part ends and the next begins matters.
            assert_ne!(
                h.term(&["cart", "region", "eu-west"]),
                h.term(&["cart", "regione", "u-west"])
            );
            assert_ne!(h.term(&["ab", "c"]), h.term(&["a", "bc"]));
            assert_ne!(
                needle_hash("user.id", "u-1", h),
                needle_hash("user.id", "u-1", Hashing::LaidOut)
            );
        }
        assert_ne!(
            Hashing::Xxh3.term(&["cart", "region", "eu-west"]),
            Hashing::Xxh64.term(&["cart", "region", "eu-west"])
        );
    }

    /// A version 4 file (XXH64 terms) still answers as this build's version 5 does, with
    /// both kinds of entry (postings for a region, needles for a user id) and unindexed
    /// keys, on the same spans.
    #[test]
    fn version_4_terms_read_as_version_5() {
        use faultline_model::span::{AttrValue, Origin, SpanKind, StatusCode};
        let origin = |svc: &str| {
            std::sync::Arc::new(Origin {
                service: svc.into(),
                resource: vec![("service.name".into(), AttrValue::Str(svc.into()))],
                ..Origin::default()
            })
        };
        let origins = [origin("cart"), origin("checkout")];
        let spans: Vec<Span> = (0..3_000u32)
            .map(|i| Span {
                trace_id: {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&(i / 3).to_be_bytes());
                    b
                },
                span_id: u64::from(i + 1).to_be_bytes(),
                parent_span_id: None,
                name: "GET /cart".into(),
                kind: SpanKind::Server,
                start_ns: 1_700_000_000_000_000_000 + u64::from(i) * 1_000,
                end_ns: 1_700_000_000_000_000_000 + u64::from(i) * 1_000 + 500,
                status: if i % 50 == 0 {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                },
                status_message: String::new(),
                attributes: vec![
                    (
                        "region".into(),
                        AttrValue::Str(format!("r{}", i % 4).into()),
                    ),
                    (
                        "user.id".into(),
                        AttrValue::Str(format!("u-{}", i / 3).into()),
                    ),
                    (
                        "http.status_code".into(),
                        AttrValue::Int(200 + i64::from(i % 3)),
                    ),
                    ("ratio".into(), AttrValue::Double(f64::from(i) / 7.0)),
                ],
                events: Vec::new(),
                links: Vec::new(),
                origin: origins[(i % 2) as usize].clone(),
            })
            .collect();
        let refs: Vec<&Span> = spans.iter().collect();
        let traces: Vec<(u32, u32)> = (0..1_000u32).map(|t| (t * 3, 3)).collect();
        let read = |h: Hashing, version: u32| {
            let (_, body) = Postings::build_hashed(&refs, &traces, h, None).unwrap();
            let body = zstd::bulk::decompress(&body, 1 << 30).unwrap();
            let p = Postings::decode(&body, version).unwrap();
            assert_eq!(p.hashing, h, "version {version}");
            p
        };
        let (v4, v5) = (read(Hashing::Xxh64, 4), read(Hashing::Xxh3, 5));
        let asks = [
            ("cart", "region", "r0"),
            ("checkout", "region", "r3"),
            ("cart", "user.id", "u-17"),
            ("checkout", "user.id", "u-500"),
            ("cart", "http.status_code", "201"),
            ("cart", "error", "true"),
            ("checkout", "span.kind", "server"),
            ("cart", "ratio", "1"),
            ("cart", "region", "r9"),
            ("nobody", "region", "r0"),
        ];
        for (svc, k, v) in asks {
            let (a, b) = (v4.find(svc, k, v), v5.find(svc, k, v));
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{svc} {k}={v}");
        }
        // Each kind of answer is there, so the comparison above compares something.
        assert!(matches!(v5.find("cart", "region", "r0"), Some(Found::Exact(b)) if b.len() == 750));
        assert!(matches!(
            v5.find("cart", "user.id", "u-17"),
            Some(Found::Candidates(_))
        ));
        assert!(matches!(
            v5.find("cart", "ratio", "1"),
            Some(Found::Unindexed)
        ));
        assert!(v5.find("cart", "region", "r9").is_none());
        // Looked up with the other version's hashes, a term is not found.
        let (_, body) = Postings::build_hashed(&refs, &traces, Hashing::Xxh64, None).unwrap();
        let body = zstd::bulk::decompress(&body, 1 << 30).unwrap();
        let misread = Postings::decode(&body, 5).unwrap();
        assert!(misread.find("cart", "region", "r0").is_none());
    }

    /// The index built from hashes worked out at ingest is the one built from the strings,
    /// byte for byte: spans of several services and resources, repeated and fresh values,
    /// numbers, unindexed values (doubles, long strings) between indexed ones, events,
    /// errors; rows in another order than ingest's, as a seal sorts them.
    #[test]
    fn hashes_from_ingest_build_the_same_index() {
        use faultline_model::span::{AttrValue, Origin, SpanKind, StatusCode};
        let origin = |svc: &str, host: &str| {
            std::sync::Arc::new(Origin {
                service: svc.into(),
                resource: vec![
                    ("service.name".into(), AttrValue::Str(svc.into())),
                    ("host.name".into(), AttrValue::Str(host.into())),
                ],
                scope_name: "lib".into(),
                ..Origin::default()
            })
        };
        let origins = [
            origin("cart", "h1"),
            origin("checkout", "h2"),
            origin("cart", "h3"),
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let spans: Vec<Span> = (0..4_000u32)
            .map(|i| {
                let trace = i / 8;
                let mut attributes = vec![
                    (
                        "region".into(),
                        AttrValue::Str(format!("r{}", rnd(4)).into()),
                    ),
                    (
                        "user.id".into(),
                        AttrValue::Str(format!("u-{trace}").into()),
                    ),
                    ("ratio".into(), AttrValue::Double(rnd(1000) as f64 / 7.0)),
                    (
                        "http.status_code".into(),
                        AttrValue::Int(200 + rnd(5) as i64),
                    ),
                ];
                if rnd(5) == 0 {
                    attributes.push((
                        "req.id".into(),
                        AttrValue::Str(format!("q{}", rnd(1 << 40)).into()),
                    ));
                }
                if rnd(7) == 0 {
                    attributes.push(("body".into(), AttrValue::Str("x".repeat(300).into())));
                }
                if rnd(3) == 0 {
                    // Keys too long to intern: each span owns its copy of the text.
                    let long = format!("{}{}", "k".repeat(130), rnd(2));
                    attributes.push((long.into(), AttrValue::Str(format!("v{}", rnd(3)).into())));
                }
                let error = rnd(20) == 0;
                Span {
                    trace_id: {
                        let mut b = [0u8; 16];
                        b[..4].copy_from_slice(&trace.to_be_bytes());
                        b
                    },
                    span_id: u64::from(i + 1).to_be_bytes(),
                    parent_span_id: None,
                    name: format!("op{}", rnd(3)),
                    kind: if rnd(2) == 0 {
                        SpanKind::Server
                    } else {
                        SpanKind::Unspecified
                    },
                    start_ns: 1_700_000_000_000_000_000 + u64::from(i) * 1_000,
                    end_ns: 1_700_000_000_000_000_000 + u64::from(i) * 1_000 + 500,
                    status: if error {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    status_message: if error {
                        format!("boom {}", rnd(3))
                    } else {
                        String::new()
                    },
                    attributes,
                    events: if error {
                        vec![faultline_model::span::Event {
                            time_ns: 0,
                            name: "exception".into(),
                            attributes: vec![(
                                "exception.type".into(),
                                AttrValue::Str(format!("E{}", rnd(4)).into()),
                            )],
                        }]
                    } else {
                        Vec::new()
                    },
                    links: Vec::new(),
                    origin: origins[rnd(3) as usize].clone(),
                }
            })
            .collect();
        // Ingest's hashes come in requests of 100 spans; rows are the spans by trace,
        // the traces in reverse.
        let mut terms = SpanTerms::default();
        for chunk in spans.chunks(100) {
            terms.append(&SpanTerms::of(chunk));
        }
        assert_eq!(terms.len(), spans.len());
        // The seal's shape parts, appended with the batches, are each span's own.
        for (i, s) in spans.iter().enumerate() {
            assert_eq!(terms.shape(i), Some(shape_part(s)), "span {i}");
        }
        assert_eq!(terms.shape(spans.len()), None);
        let order: Vec<usize> = (0..spans.len()).rev().collect();
        let mut rows: Vec<usize> = Vec::new();
        let mut traces: Vec<(u32, u32)> = Vec::new();
        for t in (0..500u32).rev() {
            let first = rows.len() as u32;
            rows.extend(order.iter().copied().filter(|&i| i as u32 / 8 == t).rev());
            traces.push((first, rows.len() as u32 - first));
        }
        let refs: Vec<&Span> = rows.iter().map(|&i| &spans[i]).collect();
        let pre: Vec<Hashed<'_>> = rows.iter().map(|&i| terms.get(i).unwrap()).collect();
        let (from_strings, a) = Postings::build(&refs, &traces, None).unwrap();
        let (from_ingest, b) = Postings::build(&refs, &traces, Some(&pre)).unwrap();
        assert_eq!(a, b, "the index files differ");
        assert_eq!(from_strings.terms.len(), from_ingest.terms.len());
        assert!(from_ingest.find("cart", "region", "r1").is_some());
        // A resource's tags are hashed once per block and counted in every trace that has
        // one of its spans.
        for o in &origins {
            for (k, v) in &o.resource {
                let AttrValue::Str(v) = v else { continue };
                let want: RoaringBitmap = traces
                    .iter()
                    .enumerate()
                    .filter(|(_, (first, n))| {
                        refs[*first as usize..(first + n) as usize].iter().any(|s| {
                            s.service() == o.service
                                && s.origin
                                    .resource
                                    .contains(&(k.clone(), AttrValue::Str(v.clone())))
                        })
                    })
                    .map(|(t, _)| t as u32)
                    .collect();
                assert!(want.len() > 100, "{k}={v}: {}", want.len());
                match from_ingest.find(&o.service, k, v) {
                    Some(Found::Exact(got)) => assert_eq!(got, want, "{k}={v}"),
                    other => panic!("{k}={v}: {other:?}"),
                }
            }
        }
        // The build's reserve holds this block's pairs and terms: nothing grows while the
        // traces are counted (no table rehashed, no vector copied).
        let mut occ = Occurrences::default();
        occ.reserve(refs.len(), Some(&pre));
        let room = (
            occ.pairs.capacity(),
            occ.number.capacity(),
            occ.terms.capacity(),
        );
        for (t, &(first, n)) in traces.iter().enumerate() {
            let r = first as usize..(first + n) as usize;
            occ.trace(&refs[r.clone()], Some(&pre[r]), t as u32);
        }
        assert!(occ.pairs.len() > room.0 / 4, "{} pairs", occ.pairs.len());
        assert!(occ.terms.len() > 1_000, "{} terms", occ.terms.len());
        assert_eq!(
            (
                occ.pairs.capacity(),
                occ.number.capacity(),
                occ.terms.capacity()
            ),
            room
        );
        // Hashes from other spans (one missing, so every row's shifts) build another index.
        let wrong: Vec<Hashed<'_>> = rows
            .iter()
            .map(|&i| terms.get(i.saturating_sub(1)).unwrap())
            .collect();
        let (_, c) = Postings::build(&refs, &traces, Some(&wrong)).unwrap();
        assert_ne!(a, c, "the hashes from ingest were not used");
        // Spans added without hashes: none are given out.
        let mut broken = terms.clone();
        broken.forget();
        broken.append(&SpanTerms::of(&spans[..10]));
        assert_eq!(broken.len(), 0);
        assert!(broken.get(0).is_none());
        assert!(broken.shape(0).is_none());
    }

    #[test]
    fn postings_round_trip_in_the_smaller_encoding() {
        let traces = 20_000u32;
        for set in [
            vec![],
            vec![0],
            vec![5, 6, 7, 300, 19_999],
            (0..traces).step_by(3).collect::<Vec<_>>(),
            (0..traces).collect(),
        ] {
            let b: RoaringBitmap = set.iter().copied().collect();
            let mut out = Vec::new();
            let kind = encode_posting(&set, traces, &mut out);
            assert!(
                out.len() <= (traces as usize).div_ceil(8),
                "{} bytes",
                out.len()
            );
            assert_eq!(kind == 1, set.len() > 2000, "{} traces", set.len());
            assert_eq!(decode_posting(kind, &out).unwrap(), b);
        }
        assert!(decode_posting(0, &[0x80]).is_err(), "cut inside a varint");
        assert!(decode_posting(9, &[]).is_err(), "unknown kind");
    }

    /// A posting made from its ascending traces is the one made from their bitmap: a
    /// list up to `FEW` traces, a bitmap past that, with the same traces.
    #[test]
    fn postings_from_sorted_traces_are_those_from_bitmaps() {
        for n in [0u32, 1, 7, 8, 9, 100, 5_000] {
            let traces: Vec<u32> = (0..n).map(|i| i * 3 + 1).collect();
            let bitmap: RoaringBitmap = traces.iter().copied().collect();
            let (got, want) = (
                Posting::from_sorted(&traces).unwrap(),
                Posting::from_bitmap(bitmap.clone()),
            );
            assert_eq!(
                matches!(got, Posting::Few(_)),
                matches!(want, Posting::Few(_)),
                "{n} traces"
            );
            assert_eq!(got.to_bitmap(), bitmap, "{n} traces");
        }
        assert!(Posting::from_sorted(&[5, 3, 1, 2, 4, 6, 7, 8, 9, 10]).is_err());
    }

    /// Postings as the ascending lists `encode` writes.
    fn lists(postings: &[(u64, RoaringBitmap)]) -> Vec<(u64, Vec<u32>)> {
        postings
            .iter()
            .map(|(h, b)| (*h, b.iter().collect()))
            .collect()
    }

    /// A version 2 body (the layout before separate streams), for the reading test.
    fn encode_v2(
        traces: u32,
        postings: &[(u64, RoaringBitmap)],
        keys: &[u64],
        needles: &[(u32, u32)],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&traces.to_le_bytes());
        body.extend_from_slice(&(postings.len() as u32).to_le_bytes());
        for (h, b) in postings {
            body.extend_from_slice(&h.to_le_bytes());
            let mut bm = Vec::new();
            body.push(encode_posting(
                &b.iter().collect::<Vec<_>>(),
                traces,
                &mut bm,
            ));
            body.extend_from_slice(&(bm.len() as u32).to_le_bytes());
            body.extend_from_slice(&bm);
        }
        for list in [&[][..], keys] {
            body.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for h in list {
                body.extend_from_slice(&h.to_le_bytes());
            }
        }
        body.extend_from_slice(&(needles.len() as u32).to_le_bytes());
        for (h, t) in needles {
            body.extend_from_slice(&h.to_le_bytes());
            body.extend_from_slice(&t.to_le_bytes());
        }
        body
    }

    /// Version 3 answers as version 2 did, for blocks of few traces (u16 ordinals) and of
    /// many (u32), with repeated needle hashes; damaged bodies are refused.
    #[test]
    fn version_3_streams_read_as_version_2() {
        let skey = term_hash(&["svc", "user.id"]);
        for traces in [1_000u32, 70_000] {
            let postings: Vec<(u64, RoaringBitmap)> = (0..50u64)
                .map(|i| {
                    let b: RoaringBitmap = (0..traces)
                        .filter(|t| (t + i as u32).is_multiple_of(i as u32 + 2))
                        .collect();
                    (term_hash(&["svc", "region", &i.to_string()]), b)
                })
                .collect();
            let mut needles: Vec<(u32, u32)> = (0..5_000u32)
                .map(|i| {
                    (
                        needle_hash("user.id", &format!("u-{}", i / 2), Hashing::LaidOut),
                        (i * 7919) % traces,
                    )
                })
                .collect();
            needles.sort_unstable();
            needles.dedup();
            let v3 = zstd::bulk::decompress(
                &encode((traces, &lists(&postings)), &[], &[skey], &needles).unwrap(),
                1 << 30,
            )
            .unwrap();
            let v2 = encode_v2(traces, &postings, &[skey], &needles);
            assert!(v3.len() < v2.len(), "{} against {}", v3.len(), v2.len());
            for (version, body) in [(2, &v2), (3, &v3)] {
                let p = Postings::decode(body, version).unwrap();
                assert_eq!(p.needles, needles, "version {version}, {traces} traces");
                for (i, (_, want)) in postings.iter().enumerate() {
                    match p.find("svc", "region", &i.to_string()) {
                        Some(Found::Exact(got)) => assert_eq!(&got, want),
                        other => panic!("version {version}: {other:?}"),
                    }
                }
                match p.find("svc", "user.id", "u-7") {
                    Some(Found::Candidates(got)) => {
                        assert_eq!(got.len(), 2, "the two needles of u-7");
                        assert!(got.contains(14 * 7919 % traces));
                    }
                    other => panic!("version {version}: {other:?}"),
                }
            }
            // Cut anywhere, or one byte too many: refused, never a panic.
            for cut in [4, 9, v3.len() / 2, v3.len() - 1] {
                assert!(Postings::decode(&v3[..cut], 3).is_err(), "cut at {cut}");
            }
            let mut long = v3.clone();
            long.push(0);
            assert!(Postings::decode(&long, 3).is_err());
        }
        // A varint that never ends.
        let mut c = Cur(&[0xff; 11]);
        assert!(c.varint().is_err());
    }

    /// Damaged bodies of either version are refused or read, never a panic: random bytes,
    /// and a valid body with bytes flipped.
    #[test]
    fn damaged_bodies_never_panic() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let postings: Vec<(u64, RoaringBitmap)> = (0..20u64)
            .map(|i| {
                (
                    i,
                    (0..3_000u32).filter(|t| t % (i as u32 + 1) == 0).collect(),
                )
            })
            .collect();
        let needles: Vec<(u32, u32)> = (0..500u32).map(|i| (i * 97, i % 3_000)).collect();
        let valid = zstd::bulk::decompress(
            &encode((3_000, &lists(&postings)), &[1], &[2], &needles).unwrap(),
            1 << 30,
        )
        .unwrap();
        assert!(Postings::decode(&valid, 3).is_ok());
        for round in 0..2_000 {
            let body: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 256) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut b = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % b.len();
                    b[at] ^= (next() as u8) | 1;
                }
                b
            };
            for version in [2, 3, 4, 5] {
                let _ = Postings::decode(&body, version);
            }
        }
    }
}
