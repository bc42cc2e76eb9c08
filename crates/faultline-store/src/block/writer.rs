//! Writing a block: spans grouped by trace in start order, traces of one shape together
//! (see [`by_shape`]), encoded into Parquet with the
//! writer settings below (each one's reason beside it), the trace-id index and the search
//! postings, all fsynced under temporary names and renamed together.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, FixedSizeBinaryBuilder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use faultline_model::hex;
use faultline_model::span::{AttrValue, Origin, Span};

use super::json::{attrs_str, write_attr_pairs, write_attrs, write_json_str};
use super::schema::{ATTR_PREFIX, Promo, block_schema, choose_promoted};
use super::{FastMap, parquet_path, tidx, tidx_path};
use crate::error::StoreError;
use crate::search::{self, BlockIndex, Hashed, LightRows, Postings, SpanTerms};
use crate::skew::Estimates;

/// Largest row group.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;
/// Largest data page, in rows.
pub const PAGE_ROWS: usize = 2048;

/// Summary of a written block.
#[derive(Debug, Clone)]
pub struct WrittenBlock {
    /// Spans written.
    pub spans: u64,
    /// Distinct traces.
    pub traces: u64,
    /// Earliest span start, Unix nanoseconds.
    pub min_start_ns: u64,
    /// Latest span end, Unix nanoseconds.
    pub max_end_ns: u64,
    /// Bytes of the Parquet file plus the trace-id and search indexes.
    pub bytes: u64,
}

/// Writes `spans` (any order) as block `id` in `dir`, durably. Blocking: call off the
/// async executor.
pub fn write_block(dir: &Path, id: &str, spans: &[Span]) -> Result<WrittenBlock, StoreError> {
    write_block_indexed(dir, id, spans, &Estimates::default(), None).map(|(w, _)| w)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// [`write_block`], also returning the block's search index; spans of clocks in
/// `estimates` that fall outside their parent get their shift stored (`crate::skew`).
/// `terms`, when given, holds the spans' hashed tags in `spans`' order (a head's, from
/// ingest): the index then reads the spans' strings only for terms new to the block.
pub(crate) fn write_block_indexed(
    dir: &Path,
    id: &str,
    spans: &[Span],
    estimates: &Estimates,
    terms: Option<&SpanTerms>,
) -> Result<(WrittenBlock, BlockIndex), StoreError> {
    let base = spans.as_ptr() as usize;
    let all = spans;
    // Sort references, not spans: the head stays queryable (and unmoved) while it is written.
    // The order (trace id, start, span id) is read from each span once, into keys sorted
    // side by side: comparing through the references reached two cold spans per comparison
    // (a twentieth of a seal's time).
    let mut keys: Vec<(u128, u64, u64, usize)> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                u128::from_be_bytes(s.trace_id),
                s.start_ns,
                u64::from_be_bytes(s.span_id),
                i,
            )
        })
        .collect();
    keys.sort_unstable();
    let sorted: Vec<&Span> = keys.iter().map(|k| &spans[k.3]).collect();
    let ids: Vec<[u8; 16]> = keys.iter().map(|k| k.0.to_be_bytes()).collect();
    // Each sorted span's service and name hashed, from ingest when the head kept them.
    let kept = terms.filter(|t| t.len() == all.len());
    let parts: Vec<u64> = keys
        .iter()
        .map(|k| {
            kept.and_then(|t| t.shape(k.3))
                .unwrap_or_else(|| search::shape_part(&all[k.3]))
        })
        .collect();
    drop(keys);
    let (spans, entries) = by_shape(sorted, tidx::entries(ids.iter()), &parts);
    drop((ids, parts));
    std::fs::create_dir_all(dir).map_err(io_err("create block directory", dir))?;
    let traces: Vec<(u32, u32)> = entries.iter().map(|e| (e.1, e.2)).collect();
    // Each row's hashed tags: a row is a reference into `all`, so its position there is
    // its offset from the start.
    let pre: Option<Vec<Hashed<'_>>> = terms.filter(|t| t.len() == all.len()).and_then(|t| {
        spans
            .iter()
            .map(|s| {
                let at = (*s as *const Span as usize).checked_sub(base)?
                    / std::mem::size_of::<Span>().max(1);
                t.get(at)
            })
            .collect()
    });
    let shifts = clock_shifts(&spans, &traces, estimates);
    // The bounds hold the stored times and the clock-corrected ones (the search index's),
    // so a search may skip a block by them whichever it compares.
    let min_start_ns = spans
        .iter()
        .zip(&shifts)
        .map(|(s, sh)| s.start_ns.min(s.start_ns.saturating_add_signed(*sh)))
        .min()
        .unwrap_or(0);
    let max_end_ns = spans
        .iter()
        .zip(&shifts)
        .map(|(s, sh)| {
            let end = s.end_ns.max(s.start_ns);
            end.max(end.saturating_add_signed(*sh))
        })
        .max()
        .unwrap_or(0);
    let tmp_pq = dir.join(format!("{id}.parquet.tmp"));
    // Trace-id index: one entry per trace, in row order.
    // The Parquet file and the search index take about the same time and share nothing
    // but the sorted spans: built side by side, a seal takes about half as long when a
    // core is free (catching up after a burst or a restart).
    let (written, indexed) = std::thread::scope(|scope| {
        let index = std::thread::Builder::new()
            .name("store-seal-index".into())
            .spawn_scoped(scope, || -> Result<_, StoreError> {
                // Search index: postings on disk, span and trace columns in memory.
                let (postings, body) = Postings::build(&spans, &traces, pre.as_deref())?;
                let mut light = LightRows::default();
                for (i, (s, shift)) in spans.iter().zip(&shifts).enumerate() {
                    crate::prefetch::ahead(&spans, i, crate::prefetch::Reach::Parts);
                    light.push_span(s, *shift);
                }
                Ok((BlockIndex::build(light, &traces, postings), body))
            });
        let written = write_parquet(&tmp_pq, &spans, &shifts, (min_start_ns, max_end_ns));
        let indexed = match index {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(StoreError::Encode(
                    "the search index builder panicked".into(),
                ))
            }),
            Err(e) => Err(StoreError::Io {
                op: "start the search index builder",
                path: dir.to_path_buf(),
                source: e,
            }),
        };
        (written, indexed)
    });
    written?;
    let (index, body) = indexed?;
    let idx = tidx::encode(&entries);
    let tmp_idx = dir.join(format!("{id}.tidx.tmp"));
    tidx::write_tmp(&tmp_idx, &idx)?;
    let sidx_bytes = search::write_postings(dir, id, &body)?;

    let final_pq = parquet_path(dir, id);
    std::fs::rename(&tmp_idx, tidx_path(dir, id))
        .map_err(io_err("rename trace index", &tmp_idx))?;
    std::fs::rename(&tmp_pq, &final_pq).map_err(io_err("rename block file", &tmp_pq))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync block directory", dir))?;
    let bytes =
        std::fs::metadata(&final_pq).map(|m| m.len()).unwrap_or(0) + idx.len() as u64 + sidx_bytes;
    Ok((
        WrittenBlock {
            spans: spans.len() as u64,
            traces: entries.len() as u64,
            min_start_ns,
            max_end_ns,
            bytes,
        },
        index,
    ))
}

/// Whole traces (`spans` sorted by trace id, then start) reordered so that traces of one
/// shape sit together: by the service and name of their first span, their number of
/// spans, and a hash of every span's service and name in order; ties keep trace-id order.
/// Requests of one endpoint make traces of one shape, so neighbouring rows then repeat
/// their names, services, kinds, attribute keys, values and parent links: on varied
/// traffic the Parquet file is 9% smaller than in trace-id order, 17% with the dictionary
/// indices compressed (see [`write_parquet`]). Each trace's
/// spans stay together in start order, which is all that readers rely on (the trace-id
/// index lists the traces in row order, see `tidx.rs`). `traces` are the trace-id index
/// entries of `spans`, `parts` each span's `search::shape_part` (kept from ingest: the
/// strings read here in trace order were cold, 2.2% of a replay's CPU samples). Returns
/// the spans in their new order and its trace-id index entries.
fn by_shape<'a>(
    spans: Vec<&'a Span>,
    traces: Vec<tidx::Entry>,
    parts: &[u64],
) -> (Vec<&'a Span>, Vec<tidx::Entry>) {
    use std::hash::{BuildHasher, Hasher};
    let state = foldhash::fast::FixedState::with_seed(11);
    let mut keyed: Vec<(&str, &str, u32, u64, u32)> = traces
        .iter()
        .map(|&(_, first, rows)| {
            let range = first as usize..(first + rows) as usize;
            let mut h = state.build_hasher();
            for part in parts.get(range.clone()).unwrap_or_default() {
                h.write_u64(*part);
            }
            let head = spans[range.start];
            (head.service(), head.name.as_str(), rows, h.finish(), first)
        })
        .collect();
    keyed.sort_unstable();
    let mut order = Vec::with_capacity(spans.len());
    let mut entries = Vec::with_capacity(keyed.len());
    for &(_, _, rows, _, first) in &keyed {
        let trace = &spans[first as usize..(first + rows) as usize];
        entries.push((trace[0].trace_id, order.len() as u32, rows));
        order.extend_from_slice(trace);
    }
    (order, entries)
}

/// Each sorted span's clock shift: 0 unless its trace has a span on a clock with an
/// estimate and [`crate::skew::shifts_with`] moves it. The clocks' offsets are looked up
/// once per resource for the whole block.
fn clock_shifts(spans: &[&Span], traces: &[(u32, u32)], estimates: &Estimates) -> Vec<i64> {
    let mut out = vec![0i64; spans.len()];
    if estimates.is_empty() {
        return out;
    }
    let mut offsets = crate::skew::Offsets::new(estimates);
    for &(first, count) in traces {
        let rows = first as usize..(first as usize + count as usize).min(spans.len());
        let trace = &spans[rows.clone()];
        if offsets.any(trace) {
            out[rows].copy_from_slice(&crate::skew::shifts_with(trace, &mut offsets));
        }
    }
    out
}

/// Writes the sorted spans, with their clock shifts, as Parquet at `tmp` and fsyncs it.
fn write_parquet(
    tmp: &Path,
    spans: &[&Span],
    shifts: &[i64],
    (min_start_ns, max_end_ns): (u64, u64),
) -> Result<(), StoreError> {
    let promoted = choose_promoted(spans);
    let derived = derive_rows(spans);
    let mut props = WriterProperties::builder();
    // A dictionary pays for a column whose values repeat; for one whose values are nearly
    // unique (trace ids and starts, durations, per-trace ids) it is as large as the data,
    // and a trace lookup decodes all of it before reading its few rows (measured: a fifth
    // of a lookup on varied traffic).
    let unrepeated = unrepeated_columns(spans, &derived, &promoted);
    for column in &unrepeated {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false);
    }
    // Unrepeated numbers (durations, counters) split into byte streams before zstd: their
    // high bytes are alike and compress away, where plain 8-byte values interleave them
    // with the random low bytes (varied traffic: durations 4.07 to 3.6 bytes per span).
    for column in numeric_columns(&unrepeated, &promoted) {
        props = props.set_column_encoding(ColumnPath::from(column), Encoding::BYTE_STREAM_SPLIT);
    }
    // Events carry absolute times, so their text is unique per span: a dictionary grows to
    // its 1 MiB limit and a lookup decompresses all of it (measured: a third of a trace
    // read on varied traffic). Spans without events repeat "[]", which zstd absorbs.
    props = props.set_column_dictionary_enabled(ColumnPath::from("events"), false);
    // Random span ids stay uncompressed: zstd cannot shrink them, and a lookup reading
    // them decompresses nothing. Dictionary indices (service, name, kind, status, promoted
    // attributes) are compressed: with traces of one shape side by side they repeat in
    // runs zstd halves (varied traffic: 4.4 to 2.2 bytes per span for these columns
    // together; a trace lookup 26 µs slower at the store, 3% fewer lookups a second over
    // HTTP in alternated runs, sealing about 5% slower).
    props = props.set_column_compression(ColumnPath::from("span_id"), Compression::UNCOMPRESSED);
    if !unrepeated.iter().any(|c| c == "duration_nano") {
        // Dictionary indices are bit-packed already; uncompressed, a lookup reads the
        // dictionary page without decompressing it.
        props = props
            .set_column_compression(ColumnPath::from("duration_nano"), Compression::UNCOMPRESSED);
    }
    let props = props
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(StoreError::parquet)?,
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // No statistics: nothing reads them (a lookup finds its pages by the offset index,
        // a search by the search index), page minimums and maximums of text columns cost
        // 0.6 bytes per span on varied traffic, and chunk ones compare every value of
        // every column while writing (BENCHMARKS.md, "Varints read inline").
        .set_statistics_enabled(EnabledStatistics::None)
        // Small pages: a trace-by-id lookup decompresses only the pages holding its rows.
        .set_data_page_row_count_limit(PAGE_ROWS)
        // Span ids are unique: a dictionary only adds its indices (1.6 bytes per span
        // measured). Start times within a trace are close: delta encoding.
        .set_column_dictionary_enabled(ColumnPath::from("span_id"), false)
        .set_column_dictionary_enabled(ColumnPath::from("parent_span_id"), false)
        // Offsets within a trace: a small dictionary when they repeat, else byte streams
        // (varied traffic: 3.42 bytes per span, delta encoding 3.76).
        .set_column_dictionary_page_size_limit(ColumnPath::from("start_offset_nano"), 64 << 10)
        .set_column_encoding(
            ColumnPath::from("start_offset_nano"),
            Encoding::BYTE_STREAM_SPLIT,
        )
        .set_key_value_metadata(Some(vec![
            parquet::file::metadata::KeyValue::new(
                "faultline.block.format".into(),
                "8".to_string(),
            ),
            parquet::file::metadata::KeyValue::new(
                "faultline.block.min_start_ns".into(),
                min_start_ns.to_string(),
            ),
            parquet::file::metadata::KeyValue::new(
                "faultline.block.max_end_ns".into(),
                max_end_ns.to_string(),
            ),
        ]))
        .build();
    let file = File::create(tmp).map_err(io_err("create block file", tmp))?;
    let schema = block_schema(&promoted);
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(StoreError::parquet)?;
    for ((chunk, rows), shifts) in spans
        .chunks(ROW_GROUP_ROWS)
        .zip(derived.chunks(ROW_GROUP_ROWS))
        .zip(shifts.chunks(ROW_GROUP_ROWS))
    {
        let mut b = Columns::sized(chunk, rows, &promoted)?;
        for (i, ((s, d), shift)) in chunk.iter().zip(rows).zip(shifts).enumerate() {
            crate::prefetch::ahead(chunk, i, crate::prefetch::Reach::Values);
            b.push(s, d)?;
            b.shift.append_value(*shift);
        }
        writer
            .write(&b.finish(&schema)?)
            .map_err(StoreError::parquet)?;
    }
    let file = writer.into_inner().map_err(StoreError::parquet)?;
    file.sync_all().map_err(io_err("fsync block file", tmp))
}

/// The numeric columns among `unrepeated`: `duration_nano` and promoted int and double
/// attributes.
fn numeric_columns<'a>(
    unrepeated: &'a [String],
    promoted: &'a [(String, Promo)],
) -> impl Iterator<Item = &'a str> {
    unrepeated.iter().map(String::as_str).filter(|c| {
        *c == "duration_nano"
            || promoted.iter().any(|(key, promo)| {
                matches!(promo, Promo::Int | Promo::Double)
                    && c.strip_prefix(ATTR_PREFIX) == Some(key.as_str())
            })
    })
}

/// A column whose distinct values exceed this share of its rows gets no dictionary.
const DICTIONARY_MAX_DISTINCT: f64 = 0.05;

/// A duration or numeric promoted attribute column whose distinct values, in the sample of
/// every eighth span, exceed this share of the sample gets no dictionary. A value scattered
/// 8 times over the block shows as 63% distinct in the sample; loadgen's templates (each
/// value 16 times, every one in the sample) as 51%. Below the cut-off a dictionary stores
/// the numbers in about half the bytes (measured on the templated traffic: durations 4.2
/// to 2.0 bytes per span). String columns keep the block-wide 5%
/// ([`DICTIONARY_MAX_DISTINCT`] of the sample): their values repeat within a trace (a
/// user's id on each of its spans), which zstd over the plain column captures better than a
/// dictionary (measured on the varied traffic: `user.id` 0.63 bytes per span plain, 1.53
/// with a dictionary).
const SAMPLE_MAX_DISTINCT: f64 = 0.6;

/// Columns whose values rarely repeat (see [`write_parquet`]): the trace columns when
/// traces are short, and the duration and promoted attribute columns whose distinct
/// values, counted on every eighth span, exceed their share of that sample
/// ([`SAMPLE_MAX_DISTINCT`] for numbers, [`DICTIONARY_MAX_DISTINCT`] for strings).
fn unrepeated_columns(
    spans: &[&Span],
    derived: &[Derived],
    promoted: &[(String, Promo)],
) -> Vec<String> {
    let rows = spans.len().max(1) as f64;
    let mut out = Vec::new();
    let traces = derived
        .windows(2)
        .filter(|w| w[0].trace_start != w[1].trace_start)
        .count()
        + 1;
    if traces as f64 / rows > DICTIONARY_MAX_DISTINCT {
        out.extend(["trace_id".to_string(), "trace_start_unix_nano".to_string()]);
    }
    let state = foldhash::fast::FixedState::with_seed(7);
    // Per column: distinct values seen, and spans sampled that carry it (a key on a few
    // spans is judged against those, not all).
    let mut sets: Vec<(
        std::collections::HashSet<u64, foldhash::fast::FixedState>,
        usize,
    )> = vec![Default::default(); promoted.len() + 1];
    for s in spans.iter().step_by(8) {
        sets[0].0.insert(s.duration_ns());
        sets[0].1 += 1;
        for (i, (key, _)) in promoted.iter().enumerate() {
            if let Some((_, v)) = s.attributes.iter().find(|(k, _)| k == key) {
                sets[i + 1].0.insert(value_hash(&state, v));
                sets[i + 1].1 += 1;
            }
        }
    }
    let high = |(distinct, carried): &(std::collections::HashSet<u64, _>, usize), share: f64| {
        distinct.len() as f64 > (*carried).max(1) as f64 * share
    };
    if high(&sets[0], SAMPLE_MAX_DISTINCT) {
        out.push("duration_nano".into());
    }
    for (i, (key, promo)) in promoted.iter().enumerate() {
        let share = match promo {
            Promo::Int | Promo::Double => SAMPLE_MAX_DISTINCT,
            Promo::Str | Promo::Bool => DICTIONARY_MAX_DISTINCT,
        };
        if high(&sets[i + 1], share) {
            out.push(format!("{ATTR_PREFIX}{key}"));
        }
    }
    out
}

/// A hash of an attribute value, for counting a column's distinct values: a string's
/// without copying it (the sample reads a few thousand cold values a block).
fn value_hash(state: &foldhash::fast::FixedState, v: &AttrValue) -> u64 {
    use std::hash::BuildHasher;
    match v {
        AttrValue::Str(s) => state.hash_one(s.as_str()),
        AttrValue::Int(i) => state.hash_one(i),
        AttrValue::Double(d) => state.hash_one(d.to_bits()),
        AttrValue::Bool(b) => state.hash_one(b),
        other => state.hash_one(other.to_text()),
    }
}

/// A builder of one promoted attribute column.
enum PromoBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Double(arrow_array::builder::Float64Builder),
    Bool(arrow_array::builder::BooleanBuilder),
}

impl PromoBuilder {
    /// A builder for `n` values; texts of `text_bytes` per row (see [`text_reserve`]).
    fn new(p: Promo, n: usize, text_bytes: usize) -> Self {
        match p {
            Promo::Str => Self::Str(StringBuilder::with_capacity(n, text_reserve(n, text_bytes))),
            Promo::Int => Self::Int(Int64Builder::with_capacity(n)),
            Promo::Double => Self::Double(arrow_array::builder::Float64Builder::with_capacity(n)),
            Promo::Bool => Self::Bool(arrow_array::builder::BooleanBuilder::with_capacity(n)),
        }
    }

    /// Appends `v` if it has the column's type; false (nothing appended) otherwise.
    fn append(&mut self, v: &AttrValue) -> bool {
        match (self, v) {
            (Self::Str(b), AttrValue::Str(s)) => b.append_value(s),
            (Self::Int(b), AttrValue::Int(i)) => b.append_value(*i),
            (Self::Double(b), AttrValue::Double(d)) => b.append_value(*d),
            (Self::Bool(b), AttrValue::Bool(x)) => b.append_value(*x),
            _ => return false,
        }
        true
    }

    fn append_null(&mut self) {
        match self {
            Self::Str(b) => b.append_null(),
            Self::Int(b) => b.append_null(),
            Self::Double(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Double(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Per row of a sorted block: its trace's start, and how many rows before it its parent
/// is when the parent is in the same trace in this block.
#[derive(Debug, Clone, Copy)]
struct Derived {
    trace_start: u64,
    parent_delta: Option<i32>,
}

/// [`Derived`] for spans grouped by trace, each trace in start order.
fn derive_rows(spans: &[&Span]) -> Vec<Derived> {
    let mut out = Vec::with_capacity(spans.len());
    let mut a = 0;
    while a < spans.len() {
        let t = spans[a].trace_id;
        let b = a + spans[a..].iter().take_while(|s| s.trace_id == t).count();
        let group = &spans[a..b];
        let trace_start = group.iter().map(|s| s.start_ns).min().unwrap_or(0);
        // Small traces: a scan; large ones: a map (first row of each span id).
        let map: Option<FastMap<[u8; 8], usize>> = (group.len() > 32).then(|| {
            let mut m = FastMap::with_capacity_and_hasher(group.len(), Default::default());
            for (i, s) in group.iter().enumerate() {
                m.entry(s.span_id).or_insert(i);
            }
            m
        });
        for (i, s) in group.iter().enumerate() {
            let parent_row = s.parent_span_id.and_then(|p| match &map {
                Some(m) => m.get(&p).copied(),
                None => group.iter().position(|g| g.span_id == p),
            });
            out.push(Derived {
                trace_start,
                parent_delta: parent_row.and_then(|q| i32::try_from(i as i64 - q as i64).ok()),
            });
        }
        a = b;
    }
    out
}

/// The column builders of one row group; [`Columns::push`] adds a span, [`Columns::finish`]
/// makes the batch. Builders are sized up front: growing builders of a quarter million
/// rows copied them over and over (memmove and freshly zeroed pages showed in profiles of
/// sealing).
struct Columns<'a> {
    trace: FixedSizeBinaryBuilder,
    span: FixedSizeBinaryBuilder,
    parent: FixedSizeBinaryBuilder,
    parent_delta: Int32Builder,
    trace_start: Int64Builder,
    service: StringBuilder,
    name: StringBuilder,
    kind: Int32Builder,
    offset: Int64Builder,
    dur: Int64Builder,
    status: Int32Builder,
    status_msg: StringBuilder,
    attrs: StringBuilder,
    res: Resources,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    events: StringBuilder,
    links: StringBuilder,
    adjusted: arrow_array::builder::Float64Builder,
    shift: Int64Builder,
    /// Scratch for JSON values.
    buf: String,
    promoted: Promoted<'a>,
}

/// A text column as an Arrow dictionary: per row the key of its text, each distinct text
/// once. Parquet dictionary-encodes such a column as it does plain text, and the file's
/// Arrow schema declares it a dictionary; the column is built without copying a text into
/// it per row.
#[derive(Default)]
struct TextDictionary {
    keys: Vec<i32>,
    texts: Vec<String>,
    by_text: FastMap<String, i32>,
}

impl TextDictionary {
    /// An empty dictionary with room for `rows` keys.
    fn with_rows(rows: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rows),
            ..Self::default()
        }
    }

    /// The key of `text`, added if new.
    fn key(&mut self, text: &str) -> i32 {
        if let Some(&k) = self.by_text.get(text) {
            return k;
        }
        let k = i32::try_from(self.texts.len()).unwrap_or(i32::MAX);
        self.texts.push(text.to_string());
        self.by_text.insert(text.to_string(), k);
        k
    }

    fn finish(self) -> Result<ArrayRef, StoreError> {
        let values: Arc<dyn arrow_array::Array> =
            Arc::new(arrow_array::StringArray::from(self.texts));
        let keys = arrow_array::Int32Array::from(self.keys);
        Ok(Arc::new(
            arrow_array::DictionaryArray::<arrow_array::types::Int32Type>::try_new(keys, values)
                .map_err(StoreError::arrow)?,
        ))
    }
}

/// The `resource_attributes` column as an Arrow dictionary of each distinct resource's
/// JSON. A resource is serialised once per origin (the spans of one sender share it), not
/// once per span: spans sorted by trace alternate between services, and the text of a
/// resource is about 400 bytes.
#[derive(Default)]
struct Resources {
    dict: TextDictionary,
    by_origin: FastMap<*const Origin, i32>,
}

impl Resources {
    fn push(&mut self, o: &Arc<Origin>) {
        let ptr = Arc::as_ptr(o);
        let key = match self.by_origin.get(&ptr) {
            Some(&k) => k,
            None => {
                let k = self.dict.key(&attrs_str(&o.resource));
                self.by_origin.insert(ptr, k);
                k
            }
        };
        self.dict.keys.push(key);
    }
}

/// The promoted attribute columns and the `attribute_keys` column that keeps key order
/// (an Arrow dictionary: spans of one shape repeat a list of about 20 keys, 300-400 bytes
/// of JSON).
struct Promoted<'a> {
    keys: TextDictionary,
    keys_buf: String,
    /// The key of `keys_buf` in `keys`, once looked up.
    last_key: Option<i32>,
    last_keys: Vec<&'a str>,
    /// The column of each of `last_keys`, if promoted.
    last_columns: Vec<Option<usize>>,
    columns: Vec<PromoBuilder>,
    column_of: FastMap<&'a str, usize>,
    filled: Vec<bool>,
    residual: Vec<(&'a str, &'a AttrValue)>,
}

/// Spans of a row group [`Columns::sized`] writes first to size its builders, at most.
const SIZE_SAMPLE: usize = 2048;

/// The most bytes a text builder reserves up front. A sample that happens to hold one
/// huge value (a long stack trace) would otherwise reserve its average over the whole
/// row group; past this a builder grows as it fills.
const TEXT_RESERVE_MAX: usize = 256 << 20;

/// Bytes reserved for `n` texts of `per_row` bytes each: an eighth more, at most
/// [`TEXT_RESERVE_MAX`].
fn text_reserve(n: usize, per_row: usize) -> usize {
    let bytes = n.saturating_mul(per_row);
    bytes.saturating_add(bytes / 8).min(TEXT_RESERVE_MAX)
}

/// Bytes per row of each text column of a row group, as [`Columns::sized`] measured them.
#[derive(Debug, Default)]
struct TextBytes {
    service: usize,
    name: usize,
    status_msg: usize,
    attrs: usize,
    scope_name: usize,
    scope_version: usize,
    events: usize,
    links: usize,
    /// Per promoted column; 0 for those that are not text.
    promoted: Vec<usize>,
}

impl<'a> Columns<'a> {
    /// Builders for the rows of `chunk`, each text builder sized once: every n-th span
    /// ([`SIZE_SAMPLE`] at most) is written into small builders first and the texts' bytes
    /// per row, an eighth more, make the capacities. Builders grown by doubling from a
    /// guess copied themselves into fresh memory a dozen times (promoted text columns
    /// started at 1 KiB); that growth was 3% of a catch-up's CPU on varied traffic.
    fn sized(
        chunk: &[&'a Span],
        rows: &[Derived],
        promoted: &'a [(String, Promo)],
    ) -> Result<Self, StoreError> {
        let stride = chunk.len().div_ceil(SIZE_SAMPLE).max(1);
        let mut probe = Self::new(
            chunk.len().div_ceil(stride),
            promoted,
            &TextBytes::default(),
        );
        // One row at a scrambled place in each stride: rows sorted by trace shape repeat
        // with the traces' length, and every n-th row could be the same span of each trace.
        for k in 0..chunk.len().div_ceil(stride) {
            let jitter = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let i = k * stride + (jitter % stride as u64) as usize;
            if let (Some(s), Some(d)) = (chunk.get(i), rows.get(i)) {
                probe.push(s, d)?;
            }
        }
        Ok(Self::new(chunk.len(), promoted, &probe.text_bytes()))
    }

    /// The bytes per row of the texts pushed so far.
    fn text_bytes(&self) -> TextBytes {
        let rows = self.span.len().max(1);
        let per_row = |b: &StringBuilder| b.values_slice().len().div_ceil(rows);
        TextBytes {
            service: per_row(&self.service),
            name: per_row(&self.name),
            status_msg: per_row(&self.status_msg),
            attrs: per_row(&self.attrs),
            scope_name: per_row(&self.scope_name),
            scope_version: per_row(&self.scope_version),
            events: per_row(&self.events),
            links: per_row(&self.links),
            promoted: self
                .promoted
                .columns
                .iter()
                .map(|c| match c {
                    PromoBuilder::Str(b) => per_row(b),
                    _ => 0,
                })
                .collect(),
        }
    }

    /// Builders for `n` rows whose texts take `bytes` per row (see [`text_reserve`]).
    fn new(n: usize, promoted: &'a [(String, Promo)], bytes: &TextBytes) -> Self {
        let strings = |per_row: usize| StringBuilder::with_capacity(n, text_reserve(n, per_row));
        Self {
            trace: FixedSizeBinaryBuilder::with_capacity(n, 16),
            span: FixedSizeBinaryBuilder::with_capacity(n, 8),
            parent: FixedSizeBinaryBuilder::with_capacity(n, 8),
            parent_delta: Int32Builder::with_capacity(n),
            trace_start: Int64Builder::with_capacity(n),
            service: strings(bytes.service),
            name: strings(bytes.name),
            kind: Int32Builder::with_capacity(n),
            offset: Int64Builder::with_capacity(n),
            dur: Int64Builder::with_capacity(n),
            status: Int32Builder::with_capacity(n),
            status_msg: strings(bytes.status_msg),
            attrs: strings(bytes.attrs),
            res: Resources {
                dict: TextDictionary::with_rows(n),
                ..Resources::default()
            },
            scope_name: strings(bytes.scope_name),
            scope_version: strings(bytes.scope_version),
            events: strings(bytes.events),
            links: strings(bytes.links),
            adjusted: arrow_array::builder::Float64Builder::with_capacity(n),
            shift: Int64Builder::with_capacity(n),
            buf: String::with_capacity(512),
            promoted: Promoted {
                keys: TextDictionary::with_rows(n),
                keys_buf: String::from("[]"),
                last_key: None,
                last_keys: Vec::new(),
                last_columns: Vec::new(),
                columns: promoted
                    .iter()
                    .enumerate()
                    .map(|(i, (_, p))| {
                        PromoBuilder::new(*p, n, bytes.promoted.get(i).copied().unwrap_or(0))
                    })
                    .collect(),
                column_of: promoted
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.as_str(), i))
                    .collect(),
                filled: vec![false; promoted.len()],
                residual: Vec::new(),
            },
        }
    }

    fn push(&mut self, s: &'a Span, d: &Derived) -> Result<(), StoreError> {
        self.trace
            .append_value(s.trace_id)
            .map_err(StoreError::arrow)?;
        self.span
            .append_value(s.span_id)
            .map_err(StoreError::arrow)?;
        match (&s.parent_span_id, d.parent_delta) {
            (Some(_), Some(delta)) => {
                self.parent.append_null();
                self.parent_delta.append_value(delta);
            }
            (Some(p), None) => {
                self.parent.append_value(p).map_err(StoreError::arrow)?;
                self.parent_delta.append_null();
            }
            (None, _) => {
                self.parent.append_null();
                self.parent_delta.append_null();
            }
        }
        self.trace_start
            .append_value(i64::try_from(d.trace_start).unwrap_or(i64::MAX));
        self.offset
            .append_value(i64::try_from(s.start_ns - d.trace_start).unwrap_or(i64::MAX));
        self.service.append_value(s.service());
        self.name.append_value(&s.name);
        self.kind.append_value(s.kind as i32);
        self.dur
            .append_value(i64::try_from(s.duration_ns()).unwrap_or(i64::MAX));
        self.status.append_value(s.status as i32);
        self.status_msg.append_value(&s.status_message);
        self.buf.clear();
        if self.promoted.columns.is_empty() {
            write_attrs(&mut self.buf, &s.attributes);
        } else {
            self.promoted.push(s, &mut self.buf);
        }
        self.attrs.append_value(&self.buf);
        self.res.push(&s.origin);
        self.scope_name.append_value(&s.origin.scope_name);
        self.scope_version.append_value(&s.origin.scope_version);
        self.push_events_and_links(s);
        self.adjusted
            .append_value(faultline_model::sampling::adjusted_count(&s.attributes));
        Ok(())
    }

    fn push_events_and_links(&mut self, s: &Span) {
        let buf = &mut self.buf;
        if s.events.is_empty() {
            self.events.append_value("[]");
        } else {
            buf.clear();
            buf.push('[');
            for (i, e) in s.events.iter().enumerate() {
                if i > 0 {
                    buf.push(',');
                }
                buf.push_str(&format!("{{\"time_unix_nano\":{},\"name\":", e.time_ns));
                write_json_str(buf, &e.name);
                buf.push_str(",\"attributes\":");
                write_attrs(buf, &e.attributes);
                buf.push('}');
            }
            buf.push(']');
            self.events.append_value(&*buf);
        }
        if s.links.is_empty() {
            self.links.append_value("[]");
        } else {
            buf.clear();
            buf.push('[');
            for (i, l) in s.links.iter().enumerate() {
                if i > 0 {
                    buf.push(',');
                }
                buf.push_str(&format!(
                    "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",\"attributes\":",
                    hex(&l.trace_id),
                    hex(&l.span_id)
                ));
                write_attrs(buf, &l.attributes);
                buf.push('}');
            }
            buf.push(']');
            self.links.append_value(&*buf);
        }
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch, StoreError> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.trace.finish()),
            Arc::new(self.span.finish()),
            Arc::new(self.parent.finish()),
            Arc::new(self.parent_delta.finish()),
            Arc::new(self.service.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.trace_start.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.dur.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.status_msg.finish()),
            Arc::new(self.attrs.finish()),
            self.res.dict.finish()?,
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.links.finish()),
            Arc::new(self.adjusted.finish()),
            Arc::new(self.shift.finish()),
        ];
        let p = &mut self.promoted;
        if !p.columns.is_empty() {
            cols.push(std::mem::take(&mut p.keys).finish()?);
            cols.extend(p.columns.iter_mut().map(PromoBuilder::finish));
        }
        RecordBatch::try_new(schema.clone(), cols).map_err(StoreError::arrow)
    }
}

impl<'a> Promoted<'a> {
    /// Promoted keys go to their columns (the first occurrence, if it has the column's
    /// type), the rest to the JSON in `buf`; the key order is kept aside.
    fn push(&mut self, s: &'a Span, buf: &mut String) {
        self.filled.iter_mut().for_each(|f| *f = false);
        self.residual.clear();
        // Most spans repeat the previous span's keys: write the list and look the keys'
        // columns up only when not.
        let same_keys = self.last_keys.len() == s.attributes.len()
            && self
                .last_keys
                .iter()
                .zip(&s.attributes)
                // Interned keys of equal text are one copy: the pointers compare first.
                .all(|(a, (b, _))| std::ptr::eq(*a, b.as_str()) || *a == b.as_str());
        if !same_keys {
            self.last_keys.clear();
            self.last_keys
                .extend(s.attributes.iter().map(|(k, _)| k.as_str()));
            self.last_columns.clear();
            self.last_columns.extend(
                s.attributes
                    .iter()
                    .map(|(k, _)| self.column_of.get(k.as_str()).copied()),
            );
            self.keys_buf.clear();
            self.keys_buf.push('[');
            for (i, (k, _)) in s.attributes.iter().enumerate() {
                if i > 0 {
                    self.keys_buf.push(',');
                }
                write_json_str(&mut self.keys_buf, k);
            }
            self.keys_buf.push(']');
            self.last_key = None;
        }
        for ((k, v), column) in s.attributes.iter().zip(&self.last_columns) {
            match *column {
                Some(c) if !self.filled[c] && self.columns[c].append(v) => self.filled[c] = true,
                _ => self.residual.push((k.as_str(), v)),
            }
        }
        for (c, f) in self.filled.iter().enumerate() {
            if !f {
                self.columns[c].append_null();
            }
        }
        // Looked up for the first span, and for one with other keys than the previous.
        let key = match self.last_key {
            Some(k) => k,
            None => *self.last_key.insert(self.keys.key(&self.keys_buf)),
        };
        self.keys.keys.push(key);
        write_attr_pairs(buf, self.residual.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{AttrValue, Origin, Span, SpanKind, StatusCode};

    use super::*;

    /// `n` spans in traces of 8; durations and `queue_ms` take `distinct` values (each
    /// repeated about `n / distinct` times, scattered as copies of templates are).
    fn spans(n: u64, distinct: u64) -> Vec<Span> {
        let origin = Arc::new(Origin {
            service: "svc".into(),
            resource: Vec::new(),
            scope_name: "lib".into(),
            scope_version: String::new(),
        });
        (0..n)
            .map(|i| {
                let trace = i / 8;
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&trace.to_be_bytes());
                let mut span_id = [0u8; 8];
                span_id.copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).to_be_bytes());
                let value = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24) % distinct;
                let start = 1_700_000_000_000_000_000 + trace * 1_000_003;
                Span {
                    trace_id,
                    span_id,
                    parent_span_id: None,
                    name: "op".into(),
                    kind: SpanKind::Server,
                    start_ns: start,
                    end_ns: start + 1_000 + value * 13,
                    status: StatusCode::Unset,
                    status_message: String::new(),
                    attributes: vec![
                        (
                            "app.queue_ms".into(),
                            AttrValue::Double(value as f64 / 10.0),
                        ),
                        (
                            "user.id".into(),
                            AttrValue::Str(format!("user-{trace}").into()),
                        ),
                    ],
                    events: Vec::new(),
                    links: Vec::new(),
                    origin: origin.clone(),
                }
            })
            .collect()
    }

    fn unrepeated(n: u64, distinct: u64) -> Vec<String> {
        let owned = spans(n, distinct);
        let refs: Vec<&Span> = owned.iter().collect();
        let derived = derive_rows(&refs);
        let promoted = choose_promoted(&refs);
        assert!(
            promoted.iter().any(|(k, _)| k == "app.queue_ms"),
            "the test's attribute is promoted to a column: {promoted:?}"
        );
        unrepeated_columns(&refs, &derived, &promoted)
    }

    /// A span's first value of a promoted key is the one its column takes, so it is the
    /// one counted, whatever the order of the span's keys: a later, unique value of the
    /// same key does not cost the column its dictionary.
    #[test]
    fn the_first_value_of_a_key_judges_its_column() {
        let n = 64_000;
        let mut owned = spans(n, n / 16);
        for (i, s) in owned.iter_mut().enumerate() {
            s.attributes
                .push(("app.queue_ms".into(), AttrValue::Double(1e6 + i as f64)));
            if i % 3 == 0 {
                // user.id first: the keys' places change from span to span.
                s.attributes.swap(0, 1);
            }
        }
        let refs: Vec<&Span> = owned.iter().collect();
        let derived = derive_rows(&refs);
        let promoted = choose_promoted(&refs);
        assert_eq!(
            unrepeated_columns(&refs, &derived, &promoted),
            ["trace_id", "trace_start_unix_nano", "attr.user.id"]
        );
    }

    /// A row group's text builders are sized once from the sample: texts of varied
    /// lengths (names, user ids, an exception event on one span in 40, a residual
    /// attribute on one in 3) fit the first capacity, which is not far above them.
    #[test]
    fn text_builders_are_sized_once_from_the_sample() {
        let mut owned = spans(60_000, 60_000);
        for (i, s) in owned.iter_mut().enumerate() {
            s.name = "op/".repeat(1 + i % 7);
            if i % 40 == 7 {
                s.events.push(faultline_model::span::Event {
                    time_ns: s.start_ns,
                    name: "exception".into(),
                    attributes: vec![(
                        "exception.stacktrace".into(),
                        AttrValue::Str("at frame\n".repeat(20 + i % 30).into()),
                    )],
                });
            }
            if i % 3 == 0 {
                s.attributes.push((
                    format!("rare.{}", i % 1000).into(),
                    AttrValue::Int(i as i64),
                ));
            }
        }
        let refs: Vec<&Span> = owned.iter().collect();
        let derived = derive_rows(&refs);
        let promoted = choose_promoted(&refs);
        assert!(
            promoted
                .iter()
                .any(|(k, p)| k == "user.id" && *p == Promo::Str),
            "the test's text attribute is promoted: {promoted:?}"
        );
        let mut b = Columns::sized(&refs, &derived, &promoted).expect("sized");
        let texts = |b: &Columns| {
            let mut all = vec![
                ("service", &b.service),
                ("name", &b.name),
                ("attrs", &b.attrs),
                ("scope_name", &b.scope_name),
                ("events", &b.events),
            ];
            all.extend(b.promoted.columns.iter().filter_map(|c| match c {
                PromoBuilder::Str(s) => Some(("promoted", s)),
                _ => None,
            }));
            all.iter()
                .map(|(name, s)| (*name, s.values_capacity(), s.values_slice().len()))
                .collect::<Vec<_>>()
        };
        let before = texts(&b);
        for (s, d) in refs.iter().zip(&derived) {
            b.push(s, d).expect("push");
        }
        let after = texts(&b);
        assert_eq!(before.len(), after.len());
        for ((name, capacity, _), (_, grown, len)) in before.iter().zip(&after) {
            assert!(
                len <= capacity && grown == capacity,
                "{name}: {len} bytes written into a first capacity of {capacity} (now {grown})"
            );
            assert!(
                *capacity <= len + len / 2 + 64,
                "{name}: capacity {capacity} for {len} bytes"
            );
        }
    }

    /// A sample's average that would reserve more than [`TEXT_RESERVE_MAX`] for a text
    /// column (one huge value among the sampled rows) reserves that much and no more.
    #[test]
    fn a_text_builder_reserves_at_most_its_limit() {
        let promoted = vec![("user.id".to_string(), Promo::Str)];
        let huge = 2048;
        let bytes = TextBytes {
            attrs: huge,
            events: huge,
            promoted: vec![huge],
            ..TextBytes::default()
        };
        let rows = 256 * 1024;
        let b = Columns::new(rows, &promoted, &bytes);
        let PromoBuilder::Str(user) = &b.promoted.columns[0] else {
            panic!("a text column");
        };
        for (name, reserved) in [
            ("attrs", b.attrs.values_capacity()),
            ("events", b.events.values_capacity()),
            ("user.id", user.values_capacity()),
        ] {
            assert!(
                (TEXT_RESERVE_MAX..TEXT_RESERVE_MAX + 64).contains(&reserved),
                "{name}: {reserved} bytes reserved for {} wanted",
                rows * huge
            );
        }
        // Below the limit, what the sample measured (and an eighth more).
        assert!(b.name.values_capacity() < 64);
        let small = Columns::new(
            rows,
            &promoted,
            &TextBytes {
                name: 16,
                ..TextBytes::default()
            },
        );
        assert!(small.name.values_capacity() >= rows * 18);
    }

    /// Values repeated 16 times in a block (loadgen's templates) keep their dictionary;
    /// values repeated 4 times or fewer (production-like durations) lose it. Traces of 8
    /// spans are too short for the trace columns to keep theirs.
    #[test]
    fn dictionaries_only_where_values_repeat() {
        let n = 64_000;
        assert_eq!(
            unrepeated(n, n / 16),
            ["trace_id", "trace_start_unix_nano", "attr.user.id"]
        );
        let unique = unrepeated(n, n);
        assert!(unique.contains(&"duration_nano".to_string()), "{unique:?}");
        assert!(
            unique.contains(&"attr.app.queue_ms".to_string()),
            "{unique:?}"
        );
        let few_repeats = unrepeated(n, n / 4);
        assert!(
            few_repeats.contains(&"duration_nano".to_string()),
            "{few_repeats:?}"
        );
        // A string repeated on each of a trace's 8 spans is left to zstd.
        assert!(
            few_repeats.contains(&"attr.user.id".to_string()),
            "{few_repeats:?}"
        );
    }

    /// Writes `spans` as block "b" in a new directory; its Parquet file's path and reader.
    #[allow(clippy::unwrap_used)]
    fn written(
        spans: &[Span],
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        parquet::file::serialized_reader::SerializedFileReader<File>,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        crate::block::write_block(tmp.path(), "b", spans).unwrap();
        let path = crate::block::parquet_path(tmp.path(), "b");
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(File::open(&path).unwrap())
                .unwrap();
        (tmp, path, reader)
    }

    /// Format 7: unrepeated numbers are byte-stream-split (strings are not), every column
    /// but `span_id` is compressed, every column has its offset index and none a column
    /// index, and the numbers read back unchanged.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn unrepeated_numbers_split_and_no_column_index() {
        use arrow_array::{Array, Float64Array, Int64Array};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use parquet::file::reader::FileReader;
        let n = 20_000;
        let owned = spans(n, n);
        let (tmp, path, reader) = written(&owned);
        let meta = reader.metadata();
        let format = meta.file_metadata().key_value_metadata().unwrap();
        assert!(
            format
                .iter()
                .any(|kv| kv.key == "faultline.block.format" && kv.value.as_deref() == Some("8"))
        );
        let group = meta.row_group(0);
        for chunk in group.columns() {
            let name = chunk.column_path().string();
            let split = chunk.encodings().any(|e| e == Encoding::BYTE_STREAM_SPLIT);
            let numeric = matches!(name.as_str(), "duration_nano" | "attr.app.queue_ms");
            assert_eq!(
                split,
                numeric,
                "{name}: {:?}",
                chunk.encodings().collect::<Vec<_>>()
            );
            // Everything but the random span ids is zstd-compressed, dictionary indices
            // included (traces of one shape side by side repeat them).
            assert_eq!(
                matches!(chunk.compression(), Compression::ZSTD(_)),
                name != "span_id",
                "{name}: {:?}",
                chunk.compression()
            );
            assert!(
                chunk.column_index_offset().is_none(),
                "{name} has a column index"
            );
            assert!(
                chunk.offset_index_offset().is_some(),
                "{name} lacks its offset index"
            );
        }
        let batches: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut got = Vec::new();
        for b in &batches {
            let d = b.column_by_name("duration_nano").unwrap();
            let d = d.as_any().downcast_ref::<Int64Array>().unwrap();
            let q = b.column_by_name("attr.app.queue_ms").unwrap();
            let q = q.as_any().downcast_ref::<Float64Array>().unwrap();
            got.extend((0..d.len()).map(|i| (d.value(i) as u64, q.value(i).to_bits())));
        }
        // Spans of a trace share their start, so compare the pairs in one order.
        let mut want: Vec<(u64, u64)> = owned
            .iter()
            .map(|s| match s.attributes[0].1 {
                AttrValue::Double(q) => (s.duration_ns(), q.to_bits()),
                _ => unreachable!("the test's spans carry a double first"),
            })
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got.len(), want.len());
        assert!(
            got == want,
            "durations or queue times changed on the way through"
        );
        // The store's own read path (pages through `pages.rs`) reads them alike.
        let read = crate::block::BlockReader::open(tmp.path(), "b")
            .unwrap()
            .all()
            .unwrap();
        let mut ours: Vec<(u64, u64)> = read
            .iter()
            .map(|s| {
                let q = s.attributes.iter().find(|(k, _)| k == "app.queue_ms");
                match q {
                    Some((_, AttrValue::Double(q))) => (s.duration_ns(), q.to_bits()),
                    other => panic!("queue_ms read back as {other:?}"),
                }
            })
            .collect();
        ours.sort_unstable();
        assert!(
            ours == want,
            "the store's reader disagrees with the spans written"
        );
    }

    /// Traces of one shape are written side by side whatever their ids, each trace's spans
    /// together in start order, and every trace is still found by id, with the ordinal
    /// the search index uses.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn traces_of_one_shape_sit_together_and_are_found_by_id() {
        let mut owned = spans(2_400, 2_400);
        // Three shapes by trace (8 spans each): names differ, ids interleave them.
        for s in &mut owned {
            let trace = u64::from_be_bytes(s.trace_id[..8].try_into().unwrap());
            s.trace_id[..8]
                .copy_from_slice(&trace.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            s.name = format!("op-{}", trace % 3);
        }
        let (tmp, _, _) = written(&owned);
        let reader = crate::block::BlockReader::open(tmp.path(), "b").unwrap();
        let rows = reader.all().unwrap();
        let mut changes = 0;
        for w in rows.windows(2) {
            if w[0].trace_id != w[1].trace_id {
                changes += usize::from(w[0].name != w[1].name);
            } else {
                assert!(
                    w[0].start_ns <= w[1].start_ns,
                    "a trace's spans out of start order"
                );
            }
        }
        assert_eq!(changes, 2, "three shapes, three runs of traces");
        assert!(
            rows.windows(2).any(|w| w[0].trace_id > w[1].trace_id),
            "rows are not in trace-id order, or the test proves nothing"
        );
        assert_eq!(reader.traces(), 300);
        for s in owned.iter().step_by(8) {
            let ord = reader.ordinal(&s.trace_id).unwrap();
            assert_eq!(reader.trace_id_at(ord), Some(s.trace_id));
            let got = reader.trace(&s.trace_id).unwrap();
            assert_eq!(got.len(), 8);
            assert!(
                got.iter()
                    .all(|g| g.trace_id == s.trace_id && g.name == s.name)
            );
        }
        assert!(reader.trace(&[0xab; 16]).unwrap().is_empty());
        // The index holds no ids, only their checksum: another block's index (same shape,
        // other ids) over this block's Parquet file is refused by name, not misread.
        for s in &mut owned {
            s.trace_id[15] ^= 1;
        }
        crate::block::write_block(tmp.path(), "c", &owned).unwrap();
        std::fs::copy(
            crate::block::tidx_path(tmp.path(), "c"),
            crate::block::tidx_path(tmp.path(), "b"),
        )
        .unwrap();
        let err = crate::block::BlockReader::open(tmp.path(), "b")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("trace_id column") && err.contains("b.parquet"),
            "{err}"
        );
    }

    /// Traces whose first spans agree are grouped by the names of their other spans, and a
    /// seal given the head's hashes from ingest (appended batch by batch, as a head does)
    /// writes its rows in the order a seal reading the spans' own strings does.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn shapes_kept_from_ingest_order_a_block_as_its_spans_do() {
        let mut owned = spans(2_400, 2_400);
        for (i, s) in owned.iter_mut().enumerate() {
            let trace = u64::from_be_bytes(s.trace_id[..8].try_into().unwrap());
            s.trace_id[..8]
                .copy_from_slice(&trace.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            if i % 8 == 0 {
                // Every trace starts with the same span: only the rest tells them apart.
                s.name = "root".into();
                s.start_ns -= 1;
            } else {
                s.name = format!("op-{}", trace % 3);
            }
        }
        let mut terms = SpanTerms::default();
        for chunk in owned.chunks(100) {
            terms.append(&SpanTerms::of(chunk));
        }
        let rows = |terms: Option<&SpanTerms>| {
            let tmp = tempfile::tempdir().unwrap();
            write_block_indexed(tmp.path(), "b", &owned, &Estimates::default(), terms).unwrap();
            let reader = crate::block::BlockReader::open(tmp.path(), "b").unwrap();
            reader
                .all()
                .unwrap()
                .into_iter()
                .map(|s| (s.trace_id, s.name))
                .collect::<Vec<_>>()
        };
        let kept = rows(Some(&terms));
        assert_eq!(
            kept,
            rows(None),
            "the kept hashes order the block otherwise"
        );
        // The other spans' names by trace, in row order: three runs.
        let mut names: Vec<&str> = kept
            .iter()
            .filter(|(_, n)| n != "root")
            .map(|(_, n)| n.as_str())
            .collect();
        names.dedup();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    /// Start offsets too varied for their small dictionary fall back to byte streams, and
    /// both Parquet's reader and the store's read them back.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn unique_offsets_fall_back_to_byte_streams() {
        use parquet::file::reader::FileReader;
        let mut owned = spans(20_000, 20_000);
        for (i, s) in owned.iter_mut().enumerate() {
            // Each trace's first span stays at its start; the others move by a unique
            // amount, keeping each trace's spans in start order.
            let shift = (i % 8) as u64 * 1_000_000 + (i as u64 * 7_919) % 999_983;
            let shift = if i % 8 == 0 { 0 } else { shift };
            s.start_ns += shift;
            s.end_ns += shift;
        }
        let (tmp, _, reader) = written(&owned);
        let group = reader.metadata().row_group(0);
        let offsets = group
            .columns()
            .iter()
            .find(|c| c.column_path().string() == "start_offset_nano")
            .unwrap();
        assert!(
            offsets
                .encodings()
                .any(|e| e == Encoding::BYTE_STREAM_SPLIT),
            "{:?}",
            offsets.encodings().collect::<Vec<_>>()
        );
        let mut want: Vec<(u64, u64)> = owned.iter().map(|s| (s.start_ns, s.end_ns)).collect();
        let mut got: Vec<(u64, u64)> = crate::block::BlockReader::open(tmp.path(), "b")
            .unwrap()
            .all()
            .unwrap()
            .iter()
            .map(|s| (s.start_ns, s.end_ns))
            .collect();
        want.sort_unstable();
        got.sort_unstable();
        assert!(got == want, "start or end times changed on the way through");
    }
}
