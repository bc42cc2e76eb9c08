//! Tag postings of a block: for each (service, tag key, tag value) the traces with a span
//! of that service carrying the tag, and the (service, key) pairs left unindexed. Kept on
//! disk in `BLOCKID.sidx`, little endian:
//!
//! ```text
//! 0   8  magic    b"FLTSIDX1"
//! 8   4  version  1
//! 12  4  length   bytes of the compressed body
//! 16  n  body     zstd-compressed:
//!          u32 term count, then per term: service, key, value (each u32 length + UTF-8)
//!                                         and a bitmap (u32 length + Roaring portable format)
//!          u32 unindexed count, then per entry: service, key (u32 length + UTF-8)
//! ..  4  crc      CRC32C of everything before it
//! ```
//!
//! Written to a temporary name, fsynced and renamed; an unreadable file is rebuilt from
//! the block's spans when the block opens.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;

use faultline_model::span::Span;

use super::max_distinct_values;
use super::query::{Tag, for_each_origin_tag, for_each_span_tag, indexed_text};
use crate::error::StoreError;

const SIDX_MAGIC: &[u8; 8] = b"FLTSIDX1";
const SIDX_VERSION: u32 = 1;

/// Hash of a (service, key) or (service, key, value) term. Deterministic within a process;
/// two terms sharing a hash would share a posting set, which has a chance of about one in
/// 10^10 per block and could only add candidates.
fn term_hash(parts: &[&str]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x6661_756c_746c_696e).build_hasher();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
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

    fn to_bitmap(&self) -> RoaringBitmap {
        match self {
            Self::Few(v) => v.iter().copied().collect(),
            Self::Many(b) => b.clone(),
        }
    }
}

/// Tag postings of one block, in memory.
#[derive(Debug, Default)]
pub(crate) struct Postings {
    /// Hash of (service, key, value) → traces.
    terms: HashMap<u64, Posting, IdBuild>,
    /// Hashes of (service, key) pairs with values not in `terms`.
    unindexed: HashSet<u64, IdBuild>,
}

/// Postings as built from spans, with their strings (what the file holds).
struct BuiltTerm {
    service: String,
    key: String,
    value: String,
    traces: RoaringBitmap,
}

impl Postings {
    /// Builds the postings of a block from its spans in row order, with `traces` giving
    /// each trace's first row and row count; returns them and the compressed file body.
    pub(crate) fn build(
        spans: &[&Span],
        traces: &[(u32, u32)],
    ) -> Result<(Self, Vec<u8>), StoreError> {
        let mut ids: HashMap<u64, usize, IdBuild> = HashMap::default();
        let mut built: Vec<BuiltTerm> = Vec::new();
        let mut unindexed: HashMap<u64, (String, String), IdBuild> = HashMap::default();
        let mut origins_seen: Vec<*const faultline_model::span::Origin> = Vec::new();
        for (t, &(first, rows)) in traces.iter().enumerate() {
            let end = (first + rows) as usize;
            origins_seen.clear();
            for s in spans.get(first as usize..end).unwrap_or_default() {
                let svc = s.service();
                let mut add = |k: &str, v: Tag<'_>| match indexed_text(v) {
                    Some(text) => {
                        let h = term_hash(&[svc, k, &text]);
                        let i = *ids.entry(h).or_insert_with(|| {
                            built.push(BuiltTerm {
                                service: svc.to_string(),
                                key: k.to_string(),
                                value: text.to_string(),
                                traces: RoaringBitmap::new(),
                            });
                            built.len() - 1
                        });
                        built[i].traces.insert(t as u32);
                    }
                    None => {
                        unindexed
                            .entry(term_hash(&[svc, k]))
                            .or_insert_with(|| (svc.to_string(), k.to_string()));
                    }
                };
                for_each_span_tag(s, &mut add);
                // A resource's tags are the same for all its spans: once per trace.
                let o = std::sync::Arc::as_ptr(&s.origin);
                if !origins_seen.contains(&o) {
                    origins_seen.push(o);
                    for_each_origin_tag(&s.origin, &mut add);
                }
            }
        }
        // Keys with too many distinct values become unindexed.
        let mut distinct: HashMap<u64, usize, IdBuild> = HashMap::default();
        for b in &built {
            *distinct
                .entry(term_hash(&[&b.service, &b.key]))
                .or_default() += 1;
        }
        let cap = max_distinct_values(traces.len());
        built.retain(|b| {
            let h = term_hash(&[&b.service, &b.key]);
            if distinct.get(&h).is_some_and(|&n| n > cap) {
                unindexed
                    .entry(h)
                    .or_insert_with(|| (b.service.clone(), b.key.clone()));
                false
            } else {
                true
            }
        });
        built.sort_by(|a, b| (&a.service, &a.key, &a.value).cmp(&(&b.service, &b.key, &b.value)));
        let mut un: Vec<(String, String)> = unindexed.into_values().collect();
        un.sort();
        let body = encode(&built, &un)?;
        let postings = Self {
            terms: built
                .into_iter()
                .map(|b| {
                    (
                        term_hash(&[&b.service, &b.key, &b.value]),
                        Posting::from_bitmap(b.traces),
                    )
                })
                .collect(),
            unindexed: un.iter().map(|(s, k)| term_hash(&[s, k])).collect(),
        };
        Ok((postings, body))
    }

    /// Whether (service, key) has values the postings do not hold.
    pub(crate) fn is_unindexed(&self, service: &str, key: &str) -> bool {
        self.unindexed.contains(&term_hash(&[service, key]))
    }

    /// The traces with a span of `service` carrying `key` = `value`.
    pub(crate) fn lookup(&self, service: &str, key: &str, value: &str) -> Option<RoaringBitmap> {
        self.terms
            .get(&term_hash(&[service, key, value]))
            .map(Posting::to_bitmap)
    }

    fn decode(body: &[u8]) -> Result<Self, String> {
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
            fn str(&mut self) -> Result<&'a str, String> {
                let n = self.u32()? as usize;
                std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
            }
        }
        let mut c = Cur(body);
        let n = c.u32()? as usize;
        let mut terms = HashMap::with_capacity_and_hasher(n.min(1 << 20), IdBuild::default());
        for _ in 0..n {
            let s = c.str()?;
            let k = c.str()?;
            let v = c.str()?;
            let len = c.u32()? as usize;
            let bitmap = RoaringBitmap::deserialize_from(c.take(len)?)
                .map_err(|e| format!("bitmap of {k}={v}: {e}"))?;
            terms.insert(term_hash(&[s, k, v]), Posting::from_bitmap(bitmap));
        }
        let n = c.u32()? as usize;
        let mut unindexed = HashSet::with_capacity_and_hasher(n.min(1 << 20), IdBuild::default());
        for _ in 0..n {
            let s = c.str()?;
            let k = c.str()?;
            unindexed.insert(term_hash(&[s, k]));
        }
        if !c.0.is_empty() {
            return Err(format!("{} bytes after the last entry", c.0.len()));
        }
        Ok(Self { terms, unindexed })
    }
}

/// The compressed body of a postings file (layout in the module docs).
fn encode(terms: &[BuiltTerm], unindexed: &[(String, String)]) -> Result<Vec<u8>, StoreError> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = Vec::new();
    body.extend_from_slice(&(terms.len() as u32).to_le_bytes());
    let mut bm = Vec::new();
    for t in terms {
        put_str(&mut body, &t.service);
        put_str(&mut body, &t.key);
        put_str(&mut body, &t.value);
        bm.clear();
        t.traces
            .serialize_into(&mut bm)
            .map_err(|e| StoreError::Encode(format!("search index bitmap: {e}")))?;
        body.extend_from_slice(&(bm.len() as u32).to_le_bytes());
        body.extend_from_slice(&bm);
    }
    body.extend_from_slice(&(unindexed.len() as u32).to_le_bytes());
    for (s, k) in unindexed {
        put_str(&mut body, s);
        put_str(&mut body, k);
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
    if version != SIDX_VERSION {
        return Err(corrupt(format!(
            "search index version {version} is not supported"
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
    Postings::decode(&body).map_err(corrupt)
}
