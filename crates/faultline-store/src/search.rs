//! Trace search and trace summaries: what a block's search index holds, how it is built,
//! written and read, and how a query runs over blocks and the head.
//!
//! Each sealed block has a search index in memory ([`BlockIndex`]):
//!
//! - per span (in the block's row order): the operation (an id into the block's table of
//!   (service, operation name)) and the duration in microseconds;
//! - per trace (in the trace-id index's order): start, end, root operation, error count and
//!   orphan count (spans whose parent is not in the trace);
//! - tag postings: for each (service, tag key, tag value) the set of traces with a span of
//!   that service carrying the tag, as a Roaring bitmap of trace ordinals.
//!
//! The span and trace columns are rebuilt from the block's Parquet columns when the block is
//! opened; only the postings are kept on disk, in `BLOCKID.sidx`, little endian:
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
//! **What is searchable:** a span's attributes, its resource's attributes, its events'
//! attributes, and the tags faultline's Jaeger answers add (`span.kind`, `error=true`,
//! `otel.status_code`, `otel.status_description`, `otel.scope.name`,
//! `otel.scope.version`). Values are compared as text (`500`, `true`). String values up to
//! [`MAX_INDEXED_VALUE`] bytes, integers and booleans are indexed; other values (doubles,
//! arrays, long strings) and keys with more distinct values in a block than
//! [`max_distinct_values`] allows are listed as *unindexed*, and a search on them reads the
//! candidate traces to check (bounded by [`MAX_VERIFY_TRACES`], beyond which the answer is
//! marked partial).
//!
//! **Match semantics** (as Jaeger's Cassandra backend): a trace matches when it has a span
//! of the service (and operation) whose duration is within the bounds, and for each tag a
//! span of the service carrying it; the tag and the duration need not be on the same span.
//! A trace matches the time range when it overlaps it.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;

use faultline_model::span::{AttrValue, Span, SpanId, StatusCode, TraceId};

use crate::error::StoreError;

const SIDX_MAGIC: &[u8; 8] = b"FLTSIDX1";
const SIDX_VERSION: u32 = 1;
/// Longest string value kept in the postings.
pub const MAX_INDEXED_VALUE: usize = 128;
/// How many candidate traces one search reads from blocks to check unindexed tags.
pub const MAX_VERIFY_TRACES: usize = 20_000;
/// Most tags in one search.
pub const MAX_TAGS: usize = 32;
/// No operation (a trace without a root span).
const NO_OP: u32 = u32::MAX;

/// The most distinct values one (service, key) may have in a block before it is listed as
/// unindexed: a key whose values are nearly unique per trace (request ids) would make the
/// postings larger than the spans.
pub fn max_distinct_values(traces: usize) -> usize {
    (traces * 3 / 4).max(1024)
}

/// How search results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Latest start first.
    #[default]
    Newest,
    /// Earliest start first.
    Oldest,
    /// Longest duration first.
    Longest,
    /// Shortest duration first.
    Shortest,
}

impl SortOrder {
    /// Parses `newest`, `oldest`, `longest`/`duration`, `shortest`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "newest" | "start" | "start_desc" => Some(Self::Newest),
            "oldest" | "start_asc" => Some(Self::Oldest),
            "longest" | "duration" | "duration_desc" => Some(Self::Longest),
            "shortest" | "duration_asc" => Some(Self::Shortest),
            _ => None,
        }
    }

    /// Larger is better.
    pub(crate) fn key(self, start_ns: u64, end_ns: u64) -> u64 {
        let dur = end_ns.saturating_sub(start_ns);
        match self {
            Self::Newest => start_ns,
            Self::Oldest => u64::MAX - start_ns,
            Self::Longest => dur,
            Self::Shortest => u64::MAX - dur,
        }
    }
}

/// A trace search.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// Only traces with spans of this service.
    pub service: Option<String>,
    /// Only traces with spans of this operation (of `service` when given).
    pub operation: Option<String>,
    /// Tags (key, value as text) that spans of the service must carry.
    pub tags: Vec<(String, String)>,
    /// Least duration of a matching span.
    pub min_duration_ns: Option<u64>,
    /// Greatest duration of a matching span.
    pub max_duration_ns: Option<u64>,
    /// Traces overlapping `[start_ns, end_ns]`.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// Only traces with at least one error span.
    pub errors_only: bool,
    /// Result order.
    pub sort: SortOrder,
    /// Most results.
    pub limit: usize,
    /// Stop searching sealed blocks after this long and answer with what was found, marked
    /// partial (`None`: no limit).
    pub time_limit: Option<std::time::Duration>,
}

impl TraceQuery {
    fn has_span_filter(&self) -> bool {
        self.service.is_some()
            || self.operation.is_some()
            || self.min_duration_ns.is_some()
            || self.max_duration_ns.is_some()
    }

    /// Bounds in whole microseconds (Jaeger's unit), inclusive.
    fn duration_bounds_us(&self) -> (u64, u64) {
        (
            self.min_duration_ns.map_or(0, |m| m.div_ceil(1000)),
            self.max_duration_ns.map_or(u64::MAX, |m| m / 1000),
        )
    }

    /// Whether a duration is within the bounds, compared in whole microseconds.
    fn duration_ok(&self, dur_ns: u64) -> bool {
        let (lo, hi) = self.duration_bounds_us();
        let us = (dur_ns / 1000).min(u64::from(u32::MAX));
        us >= lo && us <= hi
    }

    /// Whether a span satisfies the service, operation and duration filters.
    pub fn span_matches(&self, s: &Span) -> bool {
        self.service.as_deref().is_none_or(|v| s.service() == v)
            && self.operation.as_deref().is_none_or(|v| s.name == v)
            && self.duration_ok(s.duration_ns())
    }

    /// Whether a span is of the queried service (tags are looked for on these spans).
    fn service_matches(&self, s: &Span) -> bool {
        self.service.as_deref().is_none_or(|v| s.service() == v)
    }

    /// Exact check of a whole trace.
    pub fn trace_matches(&self, spans: &[&Span], summary: &TraceSummary) -> bool {
        summary.overlaps(self.start_ns, self.end_ns)
            && (!self.errors_only || summary.error_count > 0)
            && self.part_mask(spans) == self.full_mask()
    }

    /// Criteria a set of spans satisfies: bit 0 when a span passes the service, operation
    /// and duration filters (or there are none), bit `i + 1` when a span of the service
    /// carries tag `i`.
    pub(crate) fn part_mask(&self, spans: &[&Span]) -> u64 {
        let mut m =
            u64::from(!self.has_span_filter() || spans.iter().any(|s| self.span_matches(s)));
        for (i, (k, v)) in self.tags.iter().enumerate() {
            if spans
                .iter()
                .filter(|s| self.service_matches(s))
                .any(|s| span_has_tag(s, k, v))
            {
                m |= 1 << (i + 1);
            }
        }
        m
    }

    /// Every criterion satisfied.
    pub(crate) fn full_mask(&self) -> u64 {
        (1u64 << (self.tags.len().min(MAX_TAGS) + 1)) - 1
    }

    /// The bits of tags the postings cannot answer (`None` in `sets`).
    fn unindexed_bits(&self, sets: &[Option<RoaringBitmap>]) -> u64 {
        sets.iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .fold(0, |m, (i, _)| m | (1 << (i + 1)))
    }
}

/// What a trace looks like at a glance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSummary {
    /// Trace id.
    pub trace_id: TraceId,
    /// Earliest span start, Unix nanoseconds.
    pub start_ns: u64,
    /// Latest span end, Unix nanoseconds.
    pub end_ns: u64,
    /// Service of the root span (the earliest span without a parent), if there is one.
    pub root_service: Option<String>,
    /// Operation of the root span.
    pub root_name: Option<String>,
    /// Spans.
    pub span_count: u32,
    /// Spans with error status.
    pub error_count: u32,
    /// Spans whose parent is not in the trace.
    pub orphan_count: u32,
    /// Services with spans in the trace, sorted.
    pub services: Vec<String>,
}

impl TraceSummary {
    /// The summary of a trace from its spans (`None` when there are none).
    pub fn of(spans: &[Span]) -> Option<Self> {
        let refs: Vec<&Span> = spans.iter().collect();
        Self::of_refs(&refs)
    }

    /// [`TraceSummary::of`] over references.
    pub fn of_refs(spans: &[&Span]) -> Option<Self> {
        let first = *spans.first()?;
        let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
        let root = spans
            .iter()
            .filter(|s| s.parent_span_id.is_none())
            .min_by_key(|s| s.start_ns);
        let mut services: Vec<String> = spans.iter().map(|s| s.service().to_string()).collect();
        services.sort();
        services.dedup();
        Some(Self {
            trace_id: first.trace_id,
            start_ns: spans.iter().map(|s| s.start_ns).min().unwrap_or(0),
            end_ns: spans
                .iter()
                .map(|s| s.end_ns.max(s.start_ns))
                .max()
                .unwrap_or(0),
            root_service: root.map(|r| r.service().to_string()),
            root_name: root.map(|r| r.name.clone()),
            span_count: spans.len() as u32,
            error_count: spans.iter().filter(|s| s.is_error()).count() as u32,
            orphan_count: spans
                .iter()
                .filter(|s| s.parent_span_id.is_some_and(|p| !ids.contains(&p)))
                .count() as u32,
            services,
        })
    }

    /// Duration from the earliest start to the latest end.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// Whether the trace overlaps `[start_ns, end_ns]`.
    pub fn overlaps(&self, start_ns: u64, end_ns: u64) -> bool {
        self.start_ns <= end_ns && self.end_ns >= start_ns
    }
}

/// A searchable value, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Tag<'a> {
    /// An attribute value.
    Attr(&'a AttrValue),
    /// A string (the tags faultline adds).
    Str(&'a str),
    /// A boolean (`error=true`).
    Bool(bool),
}

/// Calls `f` with every searchable (key, value) of a span: see the module docs.
pub fn for_each_tag(s: &Span, mut f: impl FnMut(&str, Tag<'_>)) {
    for_each_span_tag(s, &mut f);
    for_each_origin_tag(&s.origin, &mut f);
}

/// The searchable tags of the span itself (not of its resource and scope).
fn for_each_span_tag(s: &Span, f: &mut impl FnMut(&str, Tag<'_>)) {
    for (k, v) in &s.attributes {
        f(k, Tag::Attr(v));
    }
    for e in &s.events {
        for (k, v) in &e.attributes {
            f(k, Tag::Attr(v));
        }
    }
    if s.kind != faultline_model::span::SpanKind::Unspecified {
        f("span.kind", Tag::Str(s.kind.as_str()));
    }
    match s.status {
        StatusCode::Error => {
            f("error", Tag::Bool(true));
            f("otel.status_code", Tag::Str("ERROR"));
            if !s.status_message.is_empty() {
                f("otel.status_description", Tag::Str(&s.status_message));
            }
        }
        StatusCode::Ok => f("otel.status_code", Tag::Str("OK")),
        StatusCode::Unset => {}
    }
}

/// The searchable tags of a resource and scope.
fn for_each_origin_tag(o: &faultline_model::span::Origin, f: &mut impl FnMut(&str, Tag<'_>)) {
    for (k, v) in &o.resource {
        f(k, Tag::Attr(v));
    }
    if !o.scope_name.is_empty() {
        f("otel.scope.name", Tag::Str(&o.scope_name));
    }
    if !o.scope_version.is_empty() {
        f("otel.scope.version", Tag::Str(&o.scope_version));
    }
}

/// Whether a span carries the tag `key` with the text `value`.
pub fn span_has_tag(s: &Span, key: &str, value: &str) -> bool {
    let mut found = false;
    for_each_tag(s, |k, v| {
        if !found && k == key && value_text_eq(v, value) {
            found = true;
        }
    });
    found
}

fn value_text_eq(v: Tag<'_>, text: &str) -> bool {
    match v {
        Tag::Attr(AttrValue::Str(s)) => s == text,
        Tag::Str(s) => s == text,
        Tag::Bool(b) => text == if b { "true" } else { "false" },
        Tag::Attr(other) => other.to_text() == text,
    }
}

/// The text under which a value is indexed, or `None` when it is not indexed.
fn indexed_text(v: Tag<'_>) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let short = |s: &str| s.len() <= MAX_INDEXED_VALUE;
    match v {
        Tag::Attr(AttrValue::Str(s)) if short(s) => Some(Cow::Borrowed(s.as_str())),
        Tag::Str(s) if short(s) => Some(Cow::Borrowed(s)),
        Tag::Attr(AttrValue::Int(i)) => Some(Cow::Owned(i.to_string())),
        Tag::Attr(AttrValue::Bool(b)) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Tag::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
        _ => None,
    }
}

/// The light columns of a block's spans, in row order, that the index is built from.
#[derive(Debug, Default)]
pub(crate) struct LightRows {
    pub service: Vec<u32>,
    pub name: Vec<u32>,
    pub start_ns: Vec<u64>,
    pub dur_ns: Vec<u64>,
    pub error: Vec<bool>,
    pub span_id: Vec<SpanId>,
    pub parent: Vec<Option<SpanId>>,
    /// Interned services and names.
    pub strings: Vec<String>,
    ids: HashMap<String, u32, foldhash::fast::FixedState>,
}

impl LightRows {
    pub(crate) fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }

    pub(crate) fn push_span(&mut self, s: &Span) {
        // Neighbouring rows (one trace) often repeat the service and name.
        let n = self.service.len();
        let svc = match n.checked_sub(1) {
            Some(i) if self.strings[self.service[i] as usize] == s.service() => self.service[i],
            _ => self.intern(s.service()),
        };
        let name = match n.checked_sub(1) {
            Some(i) if self.strings[self.name[i] as usize] == s.name => self.name[i],
            _ => self.intern(&s.name),
        };
        self.service.push(svc);
        self.name.push(name);
        self.start_ns.push(s.start_ns);
        self.dur_ns.push(s.duration_ns());
        self.error.push(s.is_error());
        self.span_id.push(s.span_id);
        self.parent.push(s.parent_span_id);
    }
}

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
    fn lookup(&self, service: &str, key: &str, value: &str) -> Option<RoaringBitmap> {
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

/// The in-memory search index of one block.
/// Operation ids per span: two bytes each while a block has at most 65,536 distinct
/// operations (nearly always), four otherwise. At 50M spans the difference is 100 MB.
#[derive(Debug)]
enum OpIds {
    Small(Vec<u16>),
    Large(Vec<u32>),
}

impl OpIds {
    #[inline]
    fn at(&self, i: usize) -> u32 {
        match self {
            Self::Small(v) => u32::from(v[i]),
            Self::Large(v) => v[i],
        }
    }
}

#[derive(Debug)]
pub(crate) struct BlockIndex {
    strings: Vec<String>,
    /// Distinct (service, name) pairs, as string ids.
    ops: Vec<(u32, u32)>,
    span_op: OpIds,
    /// Duration in microseconds, saturating.
    span_dur_us: Vec<u32>,
    trace_first: Vec<u32>,
    trace_start: Vec<u64>,
    trace_end: Vec<u64>,
    root_op: Vec<u32>,
    errors: Vec<u32>,
    orphans: Vec<u32>,
    postings: Postings,
}

impl BlockIndex {
    /// Builds the index from light rows in row order and the traces' (first row, rows).
    pub(crate) fn build(rows: LightRows, traces: &[(u32, u32)], postings: Postings) -> Self {
        let mut op_ids: HashMap<(u32, u32), u32> = HashMap::new();
        let mut ops = Vec::new();
        let n = rows.service.len();
        let mut span_op = Vec::with_capacity(n);
        for i in 0..n {
            let key = (rows.service[i], rows.name[i]);
            let id = *op_ids.entry(key).or_insert_with(|| {
                ops.push(key);
                (ops.len() - 1) as u32
            });
            span_op.push(id);
        }
        let span_op = if ops.len() <= usize::from(u16::MAX) + 1 {
            OpIds::Small(span_op.into_iter().map(|o| o as u16).collect())
        } else {
            OpIds::Large(span_op)
        };
        let span_dur_us = rows
            .dur_ns
            .iter()
            .map(|d| (d / 1000).min(u64::from(u32::MAX)) as u32)
            .collect();
        let t = traces.len();
        let mut idx = Self {
            strings: rows.strings.clone(),
            ops,
            span_op,
            span_dur_us,
            trace_first: Vec::with_capacity(t + 1),
            trace_start: Vec::with_capacity(t),
            trace_end: Vec::with_capacity(t),
            root_op: Vec::with_capacity(t),
            errors: Vec::with_capacity(t),
            orphans: Vec::with_capacity(t),
            postings,
        };
        let mut ids: HashSet<SpanId> = HashSet::new();
        for &(first, count) in traces {
            let (a, b) = (first as usize, (first + count) as usize);
            let b = b.min(n);
            let a = a.min(b);
            idx.trace_first.push(first);
            ids.clear();
            ids.extend(rows.span_id[a..b].iter().copied());
            let mut start = u64::MAX;
            let mut end = 0u64;
            let mut root: Option<(u64, u32)> = None;
            let mut errors = 0u32;
            let mut orphans = 0u32;
            for i in a..b {
                let s = rows.start_ns[i];
                start = start.min(s);
                end = end.max(s.saturating_add(rows.dur_ns[i]));
                errors += u32::from(rows.error[i]);
                match rows.parent[i] {
                    None => {
                        if root.is_none_or(|(rs, _)| s < rs) {
                            root = Some((s, idx.span_op.at(i)));
                        }
                    }
                    Some(p) => orphans += u32::from(!ids.contains(&p)),
                }
            }
            idx.trace_start
                .push(if start == u64::MAX { 0 } else { start });
            idx.trace_end.push(end);
            idx.root_op.push(root.map_or(NO_OP, |r| r.1));
            idx.errors.push(errors);
            idx.orphans.push(orphans);
        }
        idx.trace_first.push(n as u32);
        idx
    }

    fn traces(&self) -> usize {
        self.trace_start.len()
    }

    fn string_id(&self, s: &str) -> Option<u32> {
        self.strings.iter().position(|x| x == s).map(|i| i as u32)
    }

    /// The summary of trace `t` (ordinal) with id `trace_id`.
    pub(crate) fn summary(&self, t: usize, trace_id: TraceId) -> TraceSummary {
        let (a, b) = (
            self.trace_first[t] as usize,
            self.trace_first[t + 1] as usize,
        );
        let mut svcs: Vec<u32> = (a..b)
            .map(|i| self.ops[self.span_op.at(i) as usize].0)
            .collect();
        svcs.sort_unstable();
        svcs.dedup();
        let mut services: Vec<String> = svcs
            .iter()
            .map(|&s| self.strings[s as usize].clone())
            .collect();
        services.sort();
        let root = self.root_op[t];
        let root = (root != NO_OP).then(|| self.ops[root as usize]);
        TraceSummary {
            trace_id,
            start_ns: self.trace_start[t],
            end_ns: self.trace_end[t],
            root_service: root.map(|r| self.strings[r.0 as usize].clone()),
            root_name: root.map(|r| self.strings[r.1 as usize].clone()),
            span_count: (b - a) as u32,
            error_count: self.errors[t],
            orphan_count: self.orphans[t],
            services,
        }
    }

    /// Searches this block: traces wholly in it go to `top` when they match `q` and beat
    /// its worst; traces in `split` (ordinals of traces with spans elsewhere too) add this
    /// part's findings to `agg` for the caller to judge the whole. `verify` reads a trace's
    /// spans for tags the postings cannot answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn search(
        &self,
        q: &TraceQuery,
        top: &mut TopK,
        block: usize,
        split: &RoaringBitmap,
        agg: &mut HashMap<TraceId, Agg>,
        trace_id_at: &dyn Fn(usize) -> Option<TraceId>,
        verify_budget: &mut usize,
        verify: &mut dyn FnMut(usize) -> Result<Option<Vec<Span>>, StoreError>,
    ) -> Result<SearchOutcome, StoreError> {
        let mut outcome = SearchOutcome::default();
        let svc = q.service.as_deref().map(|s| self.string_id(s));
        let name = q.operation.as_deref().map(|s| self.string_id(s));
        let op_ok: Vec<bool> = self
            .ops
            .iter()
            .map(|&(s, n)| svc.is_none_or(|v| v == Some(s)) && name.is_none_or(|v| v == Some(n)))
            .collect();
        // Per tag: the traces the postings say carry it, or `None` when they cannot say.
        let services: Vec<&str> = match &q.service {
            Some(s) => vec![s.as_str()],
            None => {
                let mut v: Vec<&str> = self
                    .ops
                    .iter()
                    .map(|&(s, _)| self.strings[s as usize].as_str())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        };
        let mut tag_sets: Vec<Option<RoaringBitmap>> = Vec::with_capacity(q.tags.len());
        for (k, v) in &q.tags {
            let mut set = RoaringBitmap::new();
            let mut unindexed = false;
            for s in &services {
                if let Some(b) = self.postings.lookup(s, k, v) {
                    set |= b;
                }
                unindexed |= self.postings.is_unindexed(s, k);
            }
            tag_sets.push((!unindexed).then_some(set));
        }
        let to_verify = tag_sets.iter().any(Option::is_none);
        let (lo, hi) = q.duration_bounds_us();
        let span_filter = q.has_span_filter();
        let span_bit = |t: usize| -> bool {
            if !span_filter {
                return true;
            }
            let (a, b) = (
                self.trace_first[t] as usize,
                self.trace_first[t + 1] as usize,
            );
            (a..b).any(|i| {
                let d = u64::from(self.span_dur_us[i]);
                op_ok[self.span_op.at(i) as usize] && d >= lo && d <= hi
            })
        };
        let full = q.full_mask();

        // Traces with spans elsewhere: record what this part has.
        for t in split.iter() {
            let t = t as usize;
            if t >= self.traces() {
                continue;
            }
            let Some(id) = trace_id_at(t) else { continue };
            let mut mask = u64::from(span_bit(t));
            for (i, set) in tag_sets.iter().enumerate() {
                if set.as_ref().is_some_and(|s| s.contains(t as u32)) {
                    mask |= 1 << (i + 1);
                }
            }
            if to_verify && mask | q.unindexed_bits(&tag_sets) != mask {
                if *verify_budget == 0 {
                    outcome.unverified += 1;
                } else {
                    *verify_budget -= 1;
                    if let Some(spans) = verify(t)? {
                        let refs: Vec<&Span> = spans.iter().collect();
                        mask |= q.part_mask(&refs) & q.unindexed_bits(&tag_sets);
                    }
                }
            }
            agg.entry(id).or_default().merge(&Agg {
                mask,
                start_ns: self.trace_start[t],
                end_ns: self.trace_end[t],
                errors: self.errors[t],
            });
        }

        if !op_ok.iter().any(|&b| b) {
            return Ok(outcome);
        }
        let mut candidates: Option<RoaringBitmap> = None;
        for set in tag_sets.iter().flatten() {
            candidates = Some(match candidates {
                Some(c) => c & set,
                None => set.clone(),
            });
        }
        let mut check = |t: usize| -> Result<(), StoreError> {
            if split.contains(t as u32) {
                return Ok(());
            }
            let (start, end) = (self.trace_start[t], self.trace_end[t]);
            if start > q.end_ns || end < q.start_ns {
                return Ok(());
            }
            if q.errors_only && self.errors[t] == 0 {
                return Ok(());
            }
            let key = q.sort.key(start, end);
            if !top.would_take(key) || !span_bit(t) {
                return Ok(());
            }
            if to_verify {
                if *verify_budget == 0 {
                    outcome.unverified += 1;
                    return Ok(());
                }
                *verify_budget -= 1;
                let Some(spans) = verify(t)? else {
                    return Ok(());
                };
                let refs: Vec<&Span> = spans.iter().collect();
                if q.part_mask(&refs) != full {
                    return Ok(());
                }
            }
            top.push(key, block, t as u32);
            Ok(())
        };
        match &candidates {
            Some(c) => {
                for t in c.iter() {
                    if (t as usize) < self.traces() {
                        check(t as usize)?;
                    }
                }
            }
            None => {
                for t in 0..self.traces() {
                    check(t)?;
                }
            }
        }
        Ok(outcome)
    }
}

/// What the parts of a trace stored in several places found, merged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Agg {
    /// Criteria satisfied by some part (see [`TraceQuery::part_mask`]).
    pub mask: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub errors: u32,
}

impl Default for Agg {
    fn default() -> Self {
        Self {
            mask: 0,
            start_ns: u64::MAX,
            end_ns: 0,
            errors: 0,
        }
    }
}

impl Agg {
    pub(crate) fn merge(&mut self, o: &Agg) {
        self.start_ns = self.start_ns.min(o.start_ns);
        self.end_ns = self.end_ns.max(o.end_ns);
        self.mask |= o.mask;
        self.errors += o.errors;
    }

    /// Whether the whole trace matches `q`.
    pub(crate) fn matches(&self, q: &TraceQuery) -> bool {
        self.mask == q.full_mask()
            && self.start_ns <= q.end_ns
            && self.end_ns >= q.start_ns
            && (!q.errors_only || self.errors > 0)
    }
}

/// What searching one block found besides hits.
#[derive(Debug, Default)]
pub(crate) struct SearchOutcome {
    /// Candidates not checked because the verification budget ran out.
    pub unverified: usize,
}

/// The best `k` hits seen, by sort key; `source` says where each came from (block index,
/// or `usize::MAX` for the head with the trace kept aside).
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<std::cmp::Reverse<(u64, usize, u32)>>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(crate) fn would_take(&self, key: u64) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|w| key > w.0.0)
    }

    pub(crate) fn push(&mut self, key: u64, source: usize, t: u32) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse((key, source, t)));
        } else if self.would_take(key) {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse((key, source, t)));
        }
    }

    /// Hits, best first.
    pub(crate) fn into_sorted(self) -> Vec<(u64, usize, u32)> {
        let mut v: Vec<_> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}
