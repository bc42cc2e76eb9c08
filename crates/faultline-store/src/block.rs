//! Sealed blocks: immutable Parquet files of spans, and their trace-id index.
//!
//! A block is two files in `DATA_DIR/blocks/`:
//!
//! - `BLOCKID.parquet`: every span of the block, one row per span, sorted by trace id and
//!   then start time, so the spans of one trace are contiguous. Row groups hold at most
//!   [`ROW_GROUP_ROWS`] rows and pages at most [`PAGE_ROWS`]; columns are zstd-compressed
//!   with dictionary encoding, and the page index is written so a reader can fetch and
//!   decompress only the pages of the rows it wants. The schema (format 3; readable by
//!   DuckDB, ClickHouse or Spark) follows. `span_id` and `parent_span_id` are written
//!   without a dictionary (they are nearly unique), `start_offset_nano` with a small
//!   dictionary falling back to delta encoding; the other columns use dictionaries where
//!   they pay:
//!
//!   | column | type | notes |
//!   |---|---|---|
//!   | `trace_id` | fixed_len_byte_array(16) | |
//!   | `span_id` | fixed_len_byte_array(8) | |
//!   | `parent_span_id` | fixed_len_byte_array(8), nullable | null for roots and for parents stored as a row delta |
//!   | `parent_row_delta` | int32, nullable | the parent is this many rows before (negative: after) in the same trace |
//!   | `service` | string | resource `service.name` |
//!   | `name` | string | operation |
//!   | `kind` | int32 | OTLP span kind (0-5) |
//!   | `trace_start_unix_nano` | int64 | earliest start of the span's trace in this block |
//!   | `start_offset_nano` | int64 | start = `trace_start_unix_nano` + this |
//!   | `duration_nano` | int64 | |
//!   | `status_code` | int32 | 0 unset, 1 ok, 2 error |
//!   | `status_message` | string | |
//!   | `attributes` | string | span attributes as a JSON object (typed, see below) |
//!   | `resource_attributes` | string | resource attributes, JSON |
//!   | `scope_name`, `scope_version` | string | instrumentation scope |
//!   | `events` | string | JSON array of `{"time_unix_nano","name","attributes"}` |
//!   | `links` | string | JSON array of `{"trace_id","span_id","attributes"}` (hex ids) |
//!
//!   Attribute JSON: an object whose values are `{"s": string}`, `{"i": int}`, `{"d":
//!   double}`, `{"b": bool}`, `{"x": hex bytes}`, `{"a": [values]}` or `{"k": {object}}`, so
//!   types survive a round trip; DuckDB reads them with `json_extract`.
//!
//!   Promoted attributes (format 2): a span attribute key present on at least 1% of a
//!   block's spans with one scalar type throughout (string, int, double or bool) gets its
//!   own nullable column `attr.KEY` (utf8, int64, double or boolean), up to
//!   [`MAX_PROMOTED`] keys per block, the most frequent. Such a span's first value for the
//!   key is in that column; everything else stays in `attributes`. When a block has
//!   promoted columns it also has `attribute_keys` (utf8): the JSON array of the span's
//!   attribute keys in their original order, so a reader puts them back in order. Blocks
//!   promote different keys, so read a directory of them by name (DuckDB:
//!   `read_parquet('blocks/*.parquet', union_by_name = true)`, then `"attr.http.route"`).
//!   Typed columns cost about 12 bytes per span less than the same values in JSON for
//!   loadgen's traffic.
//!
//!   Format 3 stores a start time as the trace's start plus an offset (the offsets of
//!   similar traces repeat; absolute times do not) and a parent that is in the same trace
//!   in this block as a row delta instead of its 8-byte id; in SQL:
//!   `trace_start_unix_nano + start_offset_nano`, and the parent's `span_id` from the row
//!   `file_row_number - parent_row_delta` (DuckDB's `read_parquet(..., file_row_number =
//!   true)`). Formats 1 and 2 (`start_unix_nano`, every parent as an id) are still read.
//!   The key-value metadata holds `faultline.block.format` and the block's time range.
//!
//! - `BLOCKID.tidx`: the trace-id index, little endian:
//!
//!   ```text
//!   0   8  magic     b"FLTTIDX1"
//!   8   4  version   1
//!   12  4  count     number of entries
//!   16  n  entries   count x (trace_id 16 bytes, first_row u32, rows u32), sorted by id
//!   ..  4  crc       CRC32C of everything before it
//!   ```
//!
//! - `BLOCKID.sidx`: the search index's tag postings (format in `search.rs`).
//!
//! All files are written to temporary names, fsynced, and renamed; the manifest (see
//! `manifest.rs`) is what makes a block part of the store.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeBinaryBuilder, Int32Builder, Int64Builder, StringBuilder};
use arrow_array::{
    Array, ArrayRef, FixedSizeBinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde_json::Value as Json;

use faultline_model::span::{
    AttrValue, Attributes, Event, Link, Origin, Span, SpanKind, StatusCode, TraceId,
};

use crate::error::StoreError;
use crate::search::{self, BlockIndex, LightRows, Postings};

/// Largest row group.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;
/// Largest data page, in rows.
pub const PAGE_ROWS: usize = 2048;
const TIDX_MAGIC: &[u8; 8] = b"FLTTIDX1";
const TIDX_VERSION: u32 = 1;
const TIDX_ENTRY: usize = 24;

/// The Arrow schema of a block.
pub fn schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
        Field::new("parent_row_delta", DataType::Int32, true),
        s("service"),
        s("name"),
        Field::new("kind", DataType::Int32, false),
        Field::new("trace_start_unix_nano", DataType::Int64, false),
        Field::new("start_offset_nano", DataType::Int64, false),
        Field::new("duration_nano", DataType::Int64, false),
        Field::new("status_code", DataType::Int32, false),
        s("status_message"),
        s("attributes"),
        s("resource_attributes"),
        s("scope_name"),
        s("scope_version"),
        s("events"),
        s("links"),
    ]))
}

/// A hash map with a fast hasher: sealing hashes every attribute key of every span, and
/// SipHash was a visible share of it (a collision would only cost one seal some time).
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// The type of a promoted attribute column (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Promo {
    Str,
    Int,
    Double,
    Bool,
}

impl Promo {
    fn of(v: &AttrValue) -> Option<Self> {
        match v {
            AttrValue::Str(_) => Some(Self::Str),
            AttrValue::Int(_) => Some(Self::Int),
            AttrValue::Double(_) => Some(Self::Double),
            AttrValue::Bool(_) => Some(Self::Bool),
            _ => None,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Self::Str => DataType::Utf8,
            Self::Int => DataType::Int64,
            Self::Double => DataType::Float64,
            Self::Bool => DataType::Boolean,
        }
    }
}

/// Prefix of promoted attribute columns.
const ATTR_PREFIX: &str = "attr.";
/// Most attribute keys promoted to their own columns in one block.
pub const MAX_PROMOTED: usize = 32;

/// The attribute keys of `spans` that get their own column: those on at least 1% of the
/// spans with one scalar type throughout, the most frequent [`MAX_PROMOTED`], by name.
fn choose_promoted(spans: &[&Span]) -> Vec<(String, Promo)> {
    let mut seen: FastMap<&str, (usize, Option<Promo>)> = FastMap::default();
    for s in spans {
        for (k, v) in &s.attributes {
            let e = seen.entry(k.as_str()).or_insert((0, Promo::of(v)));
            e.0 += 1;
            if e.1 != Promo::of(v) {
                e.1 = None;
            }
        }
    }
    let least = spans.len().div_ceil(100).max(1);
    let mut keys: Vec<(&str, usize, Promo)> = seen
        .into_iter()
        .filter_map(|(k, (n, p))| Some((k, n, p?)))
        .filter(|&(_, n, _)| n >= least)
        .collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    keys.truncate(MAX_PROMOTED);
    let mut out: Vec<(String, Promo)> = keys
        .into_iter()
        .map(|(k, _, p)| (k.to_string(), p))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The Arrow schema of a block with `promoted` attribute columns.
fn block_schema(promoted: &[(String, Promo)]) -> SchemaRef {
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if !promoted.is_empty() {
        fields.push(Field::new("attribute_keys", DataType::Utf8, false));
        for (k, p) in promoted {
            fields.push(Field::new(format!("{ATTR_PREFIX}{k}"), p.data_type(), true));
        }
    }
    Arc::new(Schema::new(fields))
}

use faultline_model::hex;

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn value_from_json(v: &Json) -> AttrValue {
    let Some(obj) = v.as_object() else {
        return AttrValue::Empty;
    };
    let Some((tag, inner)) = obj.iter().next() else {
        return AttrValue::Empty;
    };
    match tag.as_str() {
        "s" => AttrValue::Str(inner.as_str().unwrap_or_default().to_string()),
        "i" => AttrValue::Int(inner.as_i64().unwrap_or_default()),
        "d" => AttrValue::Double(match inner.as_str() {
            Some("Infinity") => f64::INFINITY,
            Some("-Infinity") => f64::NEG_INFINITY,
            Some(_) => f64::NAN,
            None => inner.as_f64().unwrap_or(f64::NAN),
        }),
        "b" => AttrValue::Bool(inner.as_bool().unwrap_or_default()),
        "x" => AttrValue::Bytes(
            inner
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .chunks(2)
                .filter_map(|c| {
                    std::str::from_utf8(c)
                        .ok()
                        .and_then(|c| u8::from_str_radix(c, 16).ok())
                })
                .collect(),
        ),
        "a" => AttrValue::Array(
            inner
                .as_array()
                .map(|a| a.iter().map(value_from_json).collect())
                .unwrap_or_default(),
        ),
        "k" => AttrValue::KvList(attrs_from_json(inner)),
        _ => AttrValue::Empty,
    }
}

fn attrs_from_json(v: &Json) -> Attributes {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), value_from_json(v)))
                .collect()
        })
        .unwrap_or_default()
}

fn attrs_str(attrs: &Attributes) -> String {
    let mut out = String::new();
    write_attrs(&mut out, attrs);
    out
}

/// Writes a JSON string literal. Hand-written (with [`write_attrs`]) because building
/// `serde_json::Value` maps per span was the largest cost of sealing a block.
fn write_json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn write_value(out: &mut String, v: &AttrValue) {
    use std::fmt::Write as _;
    match v {
        AttrValue::Str(s) => {
            out.push_str("{\"s\":");
            write_json_str(out, s);
            out.push('}');
        }
        AttrValue::Int(i) => {
            let _ = write!(out, "{{\"i\":{i}}}");
        }
        AttrValue::Double(d) if d.is_finite() => {
            let _ = write!(out, "{{\"d\":{d:?}}}");
        }
        AttrValue::Double(d) => {
            // JSON has no NaN or infinities: spelled as strings, read back by value_from_json.
            let name = if d.is_nan() {
                "NaN"
            } else if *d > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            };
            let _ = write!(out, "{{\"d\":\"{name}\"}}");
        }
        AttrValue::Bool(b) => {
            let _ = write!(out, "{{\"b\":{b}}}");
        }
        AttrValue::Bytes(b) => {
            out.push_str("{\"x\":\"");
            for x in b {
                let _ = write!(out, "{x:02x}");
            }
            out.push_str("\"}");
        }
        AttrValue::Array(a) => {
            out.push_str("{\"a\":[");
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, v);
            }
            out.push_str("]}");
        }
        AttrValue::KvList(kv) => {
            out.push_str("{\"k\":");
            write_attrs(out, kv);
            out.push('}');
        }
        AttrValue::Empty => out.push_str("{}"),
    }
}

/// Writes attributes as a JSON object (see the module doc for the value encoding).
fn write_attrs(out: &mut String, attrs: &Attributes) {
    write_attr_pairs(out, attrs.iter().map(|(k, v)| (k.as_str(), v)));
}

/// [`write_attrs`] over any key-value pairs.
fn write_attr_pairs<'a>(out: &mut String, attrs: impl Iterator<Item = (&'a str, &'a AttrValue)>) {
    out.push('{');
    for (i, (k, v)) in attrs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

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

fn parquet_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.parquet"))
}

fn tidx_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.tidx"))
}

/// Writes `spans` (any order) as block `id` in `dir`, durably. Blocking: call off the
/// async executor.
pub fn write_block(dir: &Path, id: &str, spans: &[Span]) -> Result<WrittenBlock, StoreError> {
    write_block_indexed(dir, id, spans).map(|(w, _)| w)
}

/// [`write_block`], also returning the block's search index.
pub(crate) fn write_block_indexed(
    dir: &Path,
    id: &str,
    spans: &[Span],
) -> Result<(WrittenBlock, BlockIndex), StoreError> {
    // Sort references, not spans: the head stays queryable (and unmoved) while it is written.
    let mut sorted: Vec<&Span> = spans.iter().collect();
    sorted.sort_unstable_by(|a, b| {
        a.trace_id
            .cmp(&b.trace_id)
            .then(a.start_ns.cmp(&b.start_ns))
            .then(a.span_id.cmp(&b.span_id))
    });
    let spans = sorted;
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create block directory", dir))?;
    let final_pq = parquet_path(dir, id);
    let tmp_pq = dir.join(format!("{id}.parquet.tmp"));
    let min_start_ns = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let max_end_ns = spans
        .iter()
        .map(|s| s.end_ns.max(s.start_ns))
        .max()
        .unwrap_or(0);

    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(StoreError::parquet)?,
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Small pages: a trace-by-id lookup decompresses only the pages holding its rows.
        .set_data_page_row_count_limit(PAGE_ROWS)
        // Span ids are unique: a dictionary only adds its indices (1.6 bytes per span
        // measured). Start times within a trace are close: delta encoding.
        .set_column_dictionary_enabled(ColumnPath::from("span_id"), false)
        .set_column_dictionary_enabled(ColumnPath::from("parent_span_id"), false)
        // Offsets within a trace: a small dictionary when they repeat, else delta
        // encoding (offsets rise within a trace).
        .set_column_dictionary_page_size_limit(ColumnPath::from("start_offset_nano"), 64 << 10)
        .set_column_encoding(
            ColumnPath::from("start_offset_nano"),
            Encoding::DELTA_BINARY_PACKED,
        )
        .set_key_value_metadata(Some(vec![
            parquet::file::metadata::KeyValue::new(
                "faultline.block.format".into(),
                "3".to_string(),
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
        // Small dictionary-encoded columns stay uncompressed: they cost little, and every
        // zstd column costs a trace read a fresh zstd context (measured: a quarter of a
        // trace read's time went to creating them).
        .set_column_compression(ColumnPath::from("service"), Compression::UNCOMPRESSED)
        .set_column_compression(ColumnPath::from("name"), Compression::UNCOMPRESSED)
        .set_column_compression(ColumnPath::from("kind"), Compression::UNCOMPRESSED)
        .set_column_compression(ColumnPath::from("status_code"), Compression::UNCOMPRESSED)
        .set_column_compression(
            ColumnPath::from("status_message"),
            Compression::UNCOMPRESSED,
        )
        .set_column_compression(ColumnPath::from("scope_name"), Compression::UNCOMPRESSED)
        .set_column_compression(ColumnPath::from("scope_version"), Compression::UNCOMPRESSED)
        .set_column_compression(ColumnPath::from("links"), Compression::UNCOMPRESSED)
        .set_column_compression(
            ColumnPath::from("resource_attributes"),
            Compression::UNCOMPRESSED,
        )
        .set_column_compression(
            ColumnPath::from("attribute_keys"),
            Compression::UNCOMPRESSED,
        )
        .build();
    let file = File::create(&tmp_pq).map_err(io("create block file", &tmp_pq))?;
    let promoted = choose_promoted(&spans);
    let schema = block_schema(&promoted);
    let derived = derive_rows(&spans);
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(StoreError::parquet)?;
    for (chunk, rows) in spans
        .chunks(ROW_GROUP_ROWS)
        .zip(derived.chunks(ROW_GROUP_ROWS))
    {
        let batch = to_batch(&schema, chunk, rows, &promoted)?;
        writer.write(&batch).map_err(StoreError::parquet)?;
    }
    let file = writer.into_inner().map_err(StoreError::parquet)?;
    file.sync_all().map_err(io("fsync block file", &tmp_pq))?;
    drop(file);

    // Trace-id index: one entry per trace, in row order (rows are sorted by trace id).
    let mut entries: Vec<(TraceId, u32, u32)> = Vec::new();
    for (row, s) in spans.iter().enumerate() {
        match entries.last_mut() {
            Some(last) if last.0 == s.trace_id => last.2 += 1,
            _ => entries.push((s.trace_id, row as u32, 1)),
        }
    }
    let mut idx = Vec::with_capacity(20 + entries.len() * TIDX_ENTRY);
    idx.extend_from_slice(TIDX_MAGIC);
    idx.extend_from_slice(&TIDX_VERSION.to_le_bytes());
    idx.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (t, first, rows) in &entries {
        idx.extend_from_slice(t);
        idx.extend_from_slice(&first.to_le_bytes());
        idx.extend_from_slice(&rows.to_le_bytes());
    }
    let crc = crc32c::crc32c(&idx);
    idx.extend_from_slice(&crc.to_le_bytes());
    let tmp_idx = dir.join(format!("{id}.tidx.tmp"));
    let mut f = File::create(&tmp_idx).map_err(io("create trace index", &tmp_idx))?;
    f.write_all(&idx)
        .map_err(io("write trace index", &tmp_idx))?;
    f.sync_all().map_err(io("fsync trace index", &tmp_idx))?;
    drop(f);

    // Search index: postings on disk, span and trace columns in memory.
    let traces: Vec<(u32, u32)> = entries.iter().map(|e| (e.1, e.2)).collect();
    let (postings, body) = Postings::build(&spans, &traces)?;
    let sidx_bytes = search::write_postings(dir, id, &body)?;
    let mut light = LightRows::default();
    for s in &spans {
        light.push_span(s);
    }
    let index = BlockIndex::build(light, &traces, postings);

    let final_idx = tidx_path(dir, id);
    std::fs::rename(&tmp_idx, &final_idx).map_err(io("rename trace index", &tmp_idx))?;
    std::fs::rename(&tmp_pq, &final_pq).map_err(io("rename block file", &tmp_pq))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync block directory", dir))?;
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

/// A builder of one promoted attribute column.
enum PromoBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Double(arrow_array::builder::Float64Builder),
    Bool(arrow_array::builder::BooleanBuilder),
}

impl PromoBuilder {
    fn new(p: Promo, n: usize) -> Self {
        match p {
            Promo::Str => Self::Str(StringBuilder::new()),
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

/// [`Derived`] for spans sorted by trace id, then start.
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

fn to_batch(
    schema: &SchemaRef,
    spans: &[&Span],
    derived: &[Derived],
    promoted: &[(String, Promo)],
) -> Result<RecordBatch, StoreError> {
    let n = spans.len();
    let mut trace = FixedSizeBinaryBuilder::with_capacity(n, 16);
    let mut span = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut parent = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut parent_delta = Int32Builder::with_capacity(n);
    let mut trace_start = Int64Builder::with_capacity(n);
    // Sized up front: growing builders of a quarter million rows copied them over and
    // over (memmove and freshly zeroed pages showed in profiles of sealing).
    let strings = |bytes_per_row: usize| StringBuilder::with_capacity(n, n * bytes_per_row);
    let mut service = strings(12);
    let mut name = strings(16);
    let mut kind = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut dur = Int64Builder::with_capacity(n);
    let mut status = Int32Builder::with_capacity(n);
    let mut status_msg = strings(1);
    let mut attrs = strings(if promoted.is_empty() { 160 } else { 8 });
    let mut res = strings(160);
    let mut scope_name = strings(8);
    let mut scope_version = strings(4);
    let mut events = strings(2);
    let mut links = strings(2);
    let mut buf = String::with_capacity(512);
    let mut keys = strings(if promoted.is_empty() { 0 } else { 96 });
    let mut keys_buf = String::from("[]");
    let mut last_keys: Vec<&str> = Vec::new();
    let mut columns: Vec<PromoBuilder> = promoted
        .iter()
        .map(|(_, p)| PromoBuilder::new(*p, n))
        .collect();
    let column_of: FastMap<&str, usize> = promoted
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();
    let mut filled = vec![false; promoted.len()];
    let mut residual: Vec<(&str, &AttrValue)> = Vec::new();
    // Spans of one request share their origin; serialise each origin's resource once.
    let mut last_origin: Option<(*const Origin, String)> = None;
    for (s, d) in spans.iter().zip(derived) {
        trace.append_value(s.trace_id).map_err(StoreError::arrow)?;
        span.append_value(s.span_id).map_err(StoreError::arrow)?;
        match (&s.parent_span_id, d.parent_delta) {
            (Some(_), Some(delta)) => {
                parent.append_null();
                parent_delta.append_value(delta);
            }
            (Some(p), None) => {
                parent.append_value(p).map_err(StoreError::arrow)?;
                parent_delta.append_null();
            }
            (None, _) => {
                parent.append_null();
                parent_delta.append_null();
            }
        }
        trace_start.append_value(i64::try_from(d.trace_start).unwrap_or(i64::MAX));
        offset.append_value(i64::try_from(s.start_ns - d.trace_start).unwrap_or(i64::MAX));
        service.append_value(s.service());
        name.append_value(&s.name);
        kind.append_value(s.kind as i32);
        dur.append_value(i64::try_from(s.duration_ns()).unwrap_or(i64::MAX));
        status.append_value(s.status as i32);
        status_msg.append_value(&s.status_message);
        buf.clear();
        if promoted.is_empty() {
            write_attrs(&mut buf, &s.attributes);
        } else {
            // Promoted keys go to their columns (the first occurrence, if it has the
            // column's type), the rest to the JSON; the key order is kept aside.
            filled.iter_mut().for_each(|f| *f = false);
            residual.clear();
            // Most spans repeat the previous span's keys: write the list only when not.
            let same_keys = last_keys.len() == s.attributes.len()
                && last_keys
                    .iter()
                    .zip(&s.attributes)
                    .all(|(a, (b, _))| *a == b.as_str());
            if !same_keys {
                last_keys.clear();
                last_keys.extend(s.attributes.iter().map(|(k, _)| k.as_str()));
                keys_buf.clear();
                keys_buf.push('[');
                for (i, (k, _)) in s.attributes.iter().enumerate() {
                    if i > 0 {
                        keys_buf.push(',');
                    }
                    write_json_str(&mut keys_buf, k);
                }
                keys_buf.push(']');
            }
            for (k, v) in &s.attributes {
                match column_of.get(k.as_str()) {
                    Some(&c) if !filled[c] && columns[c].append(v) => filled[c] = true,
                    _ => residual.push((k.as_str(), v)),
                }
            }
            for (c, f) in filled.iter().enumerate() {
                if !f {
                    columns[c].append_null();
                }
            }
            keys.append_value(&keys_buf);
            write_attr_pairs(&mut buf, residual.iter().copied());
        }
        attrs.append_value(&buf);
        let ptr = Arc::as_ptr(&s.origin);
        match &last_origin {
            Some((p, text)) if *p == ptr => res.append_value(text),
            _ => {
                let text = attrs_str(&s.origin.resource);
                res.append_value(&text);
                last_origin = Some((ptr, text));
            }
        }
        scope_name.append_value(&s.origin.scope_name);
        scope_version.append_value(&s.origin.scope_version);
        if s.events.is_empty() {
            events.append_value("[]");
        } else {
            buf.clear();
            buf.push('[');
            for (i, e) in s.events.iter().enumerate() {
                if i > 0 {
                    buf.push(',');
                }
                buf.push_str(&format!("{{\"time_unix_nano\":{},\"name\":", e.time_ns));
                write_json_str(&mut buf, &e.name);
                buf.push_str(",\"attributes\":");
                write_attrs(&mut buf, &e.attributes);
                buf.push('}');
            }
            buf.push(']');
            events.append_value(&buf);
        }
        if s.links.is_empty() {
            links.append_value("[]");
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
                write_attrs(&mut buf, &l.attributes);
                buf.push('}');
            }
            buf.push(']');
            links.append_value(&buf);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(trace.finish()),
        Arc::new(span.finish()),
        Arc::new(parent.finish()),
        Arc::new(parent_delta.finish()),
        Arc::new(service.finish()),
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(trace_start.finish()),
        Arc::new(offset.finish()),
        Arc::new(dur.finish()),
        Arc::new(status.finish()),
        Arc::new(status_msg.finish()),
        Arc::new(attrs.finish()),
        Arc::new(res.finish()),
        Arc::new(scope_name.finish()),
        Arc::new(scope_version.finish()),
        Arc::new(events.finish()),
        Arc::new(links.finish()),
    ];
    if !promoted.is_empty() {
        cols.push(Arc::new(keys.finish()));
        cols.extend(columns.iter_mut().map(PromoBuilder::finish));
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(StoreError::arrow)
}

/// An open block: its Parquet metadata and trace-id index, kept in memory so a lookup
/// reads only the pages holding the trace.
#[derive(Debug)]
pub struct BlockReader {
    id: String,
    path: PathBuf,
    meta: ArrowReaderMetadata,
    /// Sorted trace ids with (first row, rows).
    index: Vec<(TraceId, u32, u32)>,
}

impl BlockReader {
    /// Opens block `id` in `dir`, checking the index's magic, version and checksum.
    pub fn open(dir: &Path, id: &str) -> Result<Self, StoreError> {
        let path = parquet_path(dir, id);
        let ipath = tidx_path(dir, id);
        let corrupt = |p: &Path, reason: String| StoreError::Corrupt {
            path: p.to_path_buf(),
            reason,
        };
        let idx = std::fs::read(&ipath).map_err(|source| StoreError::Io {
            op: "read trace index",
            path: ipath.clone(),
            source,
        })?;
        if idx.len() < 20 || &idx[0..8] != TIDX_MAGIC {
            return Err(corrupt(
                &ipath,
                "not a faultline trace index (bad magic)".into(),
            ));
        }
        let (body, crc) = idx.split_at(idx.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(corrupt(&ipath, "checksum mismatch".into()));
        }
        let version = u32::from_le_bytes([idx[8], idx[9], idx[10], idx[11]]);
        if version != TIDX_VERSION {
            return Err(corrupt(
                &ipath,
                format!("index version {version} is not supported"),
            ));
        }
        let count = u32::from_le_bytes([idx[12], idx[13], idx[14], idx[15]]) as usize;
        if body.len() != 16 + count * TIDX_ENTRY {
            return Err(corrupt(
                &ipath,
                format!("{count} entries do not fit {} bytes", body.len()),
            ));
        }
        let mut index = Vec::with_capacity(count);
        for e in body[16..].chunks_exact(TIDX_ENTRY) {
            let mut t = [0u8; 16];
            t.copy_from_slice(&e[0..16]);
            index.push((
                t,
                u32::from_le_bytes([e[16], e[17], e[18], e[19]]),
                u32::from_le_bytes([e[20], e[21], e[22], e[23]]),
            ));
        }
        let file = File::open(&path).map_err(|source| StoreError::Io {
            op: "open block",
            path: path.clone(),
            source,
        })?;
        let meta = ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional),
        )
        .map_err(|e| corrupt(&path, format!("unreadable Parquet: {e}")))?;
        Ok(Self {
            id: id.to_string(),
            path,
            meta,
            index,
        })
    }

    /// The block id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The trace id at position `i` of the index (sorted), if any.
    pub fn trace_id_at(&self, i: usize) -> Option<TraceId> {
        self.index.get(i).map(|e| e.0)
    }

    /// The position of `trace_id` in the index, if the block holds it.
    pub fn ordinal(&self, trace_id: &TraceId) -> Option<usize> {
        self.index.binary_search_by(|e| e.0.cmp(trace_id)).ok()
    }

    /// Number of traces in the block.
    pub fn traces(&self) -> usize {
        self.index.len()
    }

    /// Whether the block may hold `trace_id` (exact: the index lists every trace).
    pub fn contains(&self, trace_id: &TraceId) -> bool {
        self.index.binary_search_by(|e| e.0.cmp(trace_id)).is_ok()
    }

    /// The spans of one trace, reading only the row groups and pages that hold them.
    pub fn trace(&self, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
        let Ok(pos) = self.index.binary_search_by(|e| e.0.cmp(trace_id)) else {
            return Ok(Vec::new());
        };
        let (_, first, rows) = self.index[pos];
        self.read_rows(u64::from(first), u64::from(rows))
    }

    /// The trace's (first row, rows) at ordinal `t` of the index.
    pub(crate) fn trace_rows(&self) -> Vec<(u32, u32)> {
        self.index.iter().map(|e| (e.1, e.2)).collect()
    }

    /// Reads the columns the search index keeps in memory and builds it, with the postings
    /// from `BLOCKID.sidx`; when that file is missing or unreadable (a block written
    /// before search existed, or a damaged file) the postings are rebuilt from the spans
    /// and the file rewritten. Blocking.
    pub(crate) fn load_index(&self, dir: &Path) -> Result<BlockIndex, StoreError> {
        let traces = self.trace_rows();
        let postings = match search::read_postings(dir, &self.id) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(block = %self.id, error = %e, "rebuilding the search index of a block");
                let spans = self.all()?;
                let refs: Vec<&Span> = spans.iter().collect();
                let (p, body) = Postings::build(&refs, &traces)?;
                search::write_postings(dir, &self.id, &body)?;
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|source| StoreError::Io {
                        op: "fsync block directory",
                        path: dir.to_path_buf(),
                        source,
                    })?;
                p
            }
        };
        let light = self.light_rows()?;
        Ok(BlockIndex::build(light, &traces, postings))
    }

    fn light_rows(&self) -> Result<LightRows, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let file = File::open(&self.path).map_err(|source| StoreError::Io {
            op: "open block",
            path: self.path.clone(),
            source,
        })?;
        let arrow_schema = self.meta.schema();
        let mut names = vec![
            "span_id",
            "parent_span_id",
            "service",
            "name",
            "duration_nano",
            "status_code",
        ];
        names.extend(position_columns(arrow_schema));
        let mut roots = Vec::new();
        for n in names {
            roots.push(
                arrow_schema
                    .index_of(n)
                    .map_err(|_| corrupt(format!("column {n} is missing")))?,
            );
        }
        let mask = parquet::arrow::ProjectionMask::roots(
            self.meta.metadata().file_metadata().schema_descr(),
            roots,
        );
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_projection(mask)
            .with_batch_size(8192)
            .build()
            .map_err(|e| corrupt(e.to_string()))?;
        let mut rows = LightRows::default();
        // Rows of one trace often repeat the service and name: skip the map for those.
        let mut last_svc: Option<(String, u32)> = None;
        let mut last_name: Option<(String, u32)> = None;
        let mut fixups: Vec<(usize, i32)> = Vec::new();
        for batch in reader {
            let b = batch.map_err(|e| corrupt(e.to_string()))?;
            let span = col::<FixedSizeBinaryArray>(&b, "span_id").map_err(corrupt)?;
            let parent = col::<FixedSizeBinaryArray>(&b, "parent_span_id").map_err(corrupt)?;
            let service = col::<StringArray>(&b, "service").map_err(corrupt)?;
            let name = col::<StringArray>(&b, "name").map_err(corrupt)?;
            let pos = Positions::of(&b).map_err(corrupt)?;
            let dur = col::<Int64Array>(&b, "duration_nano").map_err(corrupt)?;
            let status = col::<Int32Array>(&b, "status_code").map_err(corrupt)?;
            for i in 0..b.num_rows() {
                let mut intern = |cache: &mut Option<(String, u32)>, v: &str| match cache {
                    Some((s, id)) if s == v => *id,
                    _ => {
                        let id = rows.intern(v);
                        *cache = Some((v.to_string(), id));
                        id
                    }
                };
                let svc = intern(&mut last_svc, service.value(i));
                let nm = intern(&mut last_name, name.value(i));
                rows.service.push(svc);
                rows.name.push(nm);
                rows.start_ns.push(pos.start_ns(i));
                rows.dur_ns.push(dur.value(i).max(0) as u64);
                rows.error.push(status.value(i) == StatusCode::Error as i32);
                let mut sid = [0u8; 8];
                let v = span.value(i);
                if v.len() == 8 {
                    sid.copy_from_slice(v);
                }
                if let Some(d) = pos.parent_delta(i) {
                    fixups.push((rows.span_id.len(), d));
                }
                rows.span_id.push(sid);
                rows.parent.push(if parent.is_null(i) {
                    None
                } else {
                    let mut p = [0u8; 8];
                    let v = parent.value(i);
                    if v.len() == 8 {
                        p.copy_from_slice(v);
                    }
                    Some(p)
                });
            }
        }
        let LightRows {
            span_id, parent, ..
        } = &mut rows;
        resolve_parents(&fixups, span_id, |k, id| parent[k] = Some(id)).map_err(corrupt)?;
        Ok(rows)
    }

    /// Every span of the block (for compaction and tests).
    pub fn all(&self) -> Result<Vec<Span>, StoreError> {
        let total: u64 = self.index.iter().map(|e| u64::from(e.2)).sum();
        self.read_rows(0, total)
    }

    fn read_rows(&self, first: u64, rows: u64) -> Result<Vec<Span>, StoreError> {
        let md = self.meta.metadata();
        // Pick the row groups overlapping [first, first + rows), and a selection within them.
        let mut groups = Vec::new();
        let mut selectors = Vec::new();
        let mut group_start = 0u64;
        let end = first + rows;
        for (i, rg) in md.row_groups().iter().enumerate() {
            let n = rg.num_rows().max(0) as u64;
            let g_end = group_start + n;
            if g_end > first && group_start < end {
                groups.push(i);
                let skip = first.saturating_sub(group_start);
                let take = end.min(g_end) - group_start.max(first);
                let rest = n - skip - take;
                if skip > 0 {
                    selectors.push(RowSelector::skip(skip as usize));
                }
                selectors.push(RowSelector::select(take as usize));
                if rest > 0 {
                    selectors.push(RowSelector::skip(rest as usize));
                }
            }
            group_start = g_end;
        }
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let file = match File::open(&self.path) {
            Ok(f) => f,
            // Retention deleted the block after this query picked it: nothing to return.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "open block",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_row_groups(groups)
            .with_row_selection(RowSelection::from(selectors))
            .with_batch_size(8192)
            .build()
            .map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        let mut out = Vec::with_capacity(rows as usize);
        let mut fixups = Vec::new();
        let corrupt = |reason| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        for batch in reader {
            let batch = batch.map_err(|e| corrupt(e.to_string()))?;
            from_batch(&batch, &mut out, &mut fixups).map_err(corrupt)?;
        }
        // Whole traces were read, so every parent stored as a row delta is among them.
        let ids: Vec<[u8; 8]> = out.iter().map(|s| s.span_id).collect();
        resolve_parents(&fixups, &ids, |k, id| out[k].parent_span_id = Some(id))
            .map_err(corrupt)?;
        Ok(out)
    }
}

/// Start times and parent rows of a batch, whatever the block's format: format 3 stores
/// the trace's start and each span's offset from it, and a parent in the same trace as a
/// row delta; older formats store `start_unix_nano` and every parent id.
struct Positions<'a> {
    start: Option<&'a Int64Array>,
    trace_start: Option<&'a Int64Array>,
    offset: Option<&'a Int64Array>,
    parent_delta: Option<&'a Int32Array>,
}

impl<'a> Positions<'a> {
    fn of(b: &'a RecordBatch) -> Result<Self, String> {
        let p = Self {
            start: col::<Int64Array>(b, "start_unix_nano").ok(),
            trace_start: col::<Int64Array>(b, "trace_start_unix_nano").ok(),
            offset: col::<Int64Array>(b, "start_offset_nano").ok(),
            parent_delta: col::<Int32Array>(b, "parent_row_delta").ok(),
        };
        if p.start.is_none() && (p.trace_start.is_none() || p.offset.is_none()) {
            return Err("the block has no start time columns".into());
        }
        Ok(p)
    }

    fn start_ns(&self, i: usize) -> u64 {
        match (self.start, self.trace_start, self.offset) {
            (Some(s), _, _) => s.value(i).max(0) as u64,
            (None, Some(t), Some(o)) => {
                (t.value(i).max(0) as u64).saturating_add(o.value(i).max(0) as u64)
            }
            _ => 0,
        }
    }

    /// How many rows before row `i` its parent is, when stored that way.
    fn parent_delta(&self, i: usize) -> Option<i32> {
        self.parent_delta
            .filter(|d| !d.is_null(i))
            .map(|d| d.value(i))
    }
}

/// Names of the start-time and parent-delta columns a block has.
fn position_columns(schema: &Schema) -> Vec<&'static str> {
    let has = |n: &str| schema.index_of(n).is_ok();
    let mut out = Vec::new();
    if has("start_unix_nano") {
        out.push("start_unix_nano");
    } else {
        out.extend(["trace_start_unix_nano", "start_offset_nano"]);
    }
    if has("parent_row_delta") {
        out.push("parent_row_delta");
    }
    out
}

/// Sets the parents stored as row deltas: `fixups` holds (index in `ids`, delta).
fn resolve_parents(
    fixups: &[(usize, i32)],
    ids: &[[u8; 8]],
    mut set: impl FnMut(usize, [u8; 8]),
) -> Result<(), String> {
    for &(k, delta) in fixups {
        let q = k as i64 - i64::from(delta);
        let id = usize::try_from(q)
            .ok()
            .and_then(|q| ids.get(q))
            .ok_or_else(|| format!("row {k}: its parent row {q} is outside the rows read"))?;
        set(k, *id);
    }
    Ok(())
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| format!("column {name} is missing or has the wrong type"))
}

/// The promoted attribute columns of a batch (format 2), to put attributes back together.
struct PromotedColumns<'a> {
    keys: &'a StringArray,
    columns: FastMap<&'a str, &'a dyn Array>,
}

impl<'a> PromotedColumns<'a> {
    /// `None` for a block without promoted columns (format 1, or nothing promoted).
    fn of(b: &'a RecordBatch) -> Result<Option<Self>, String> {
        let Some(keys) = b.column_by_name("attribute_keys") else {
            return Ok(None);
        };
        let keys = keys
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or("column attribute_keys has the wrong type")?;
        let mut columns = FastMap::default();
        for (f, c) in b.schema_ref().fields().iter().zip(b.columns()) {
            if let Some(k) = f.name().strip_prefix(ATTR_PREFIX) {
                columns.insert(k, c.as_ref());
            }
        }
        Ok(Some(Self { keys, columns }))
    }

    fn value(&self, key: &str, i: usize) -> Option<AttrValue> {
        let c = self.columns.get(key)?;
        if c.is_null(i) {
            return None;
        }
        let any = c.as_any();
        if let Some(a) = any.downcast_ref::<StringArray>() {
            Some(AttrValue::Str(a.value(i).to_string()))
        } else if let Some(a) = any.downcast_ref::<Int64Array>() {
            Some(AttrValue::Int(a.value(i)))
        } else if let Some(a) = any.downcast_ref::<arrow_array::Float64Array>() {
            Some(AttrValue::Double(a.value(i)))
        } else {
            any.downcast_ref::<arrow_array::BooleanArray>()
                .map(|a| AttrValue::Bool(a.value(i)))
        }
    }

    /// Row `i`'s attributes in their original order: each key from its column (first
    /// occurrence) or from the JSON of the others.
    fn attributes(
        &self,
        i: usize,
        rest: &Json,
        last: &mut Option<(String, Vec<String>)>,
    ) -> Result<Attributes, String> {
        let text = self.keys.value(i);
        if last.as_ref().is_none_or(|(t, _)| t != text) {
            let list: Vec<String> = serde_json::from_str(text)
                .map_err(|e| format!("bad attribute_keys in a block: {e}"))?;
            *last = Some((text.to_string(), list));
        }
        let keys = last.as_ref().map(|(_, k)| k.as_slice()).unwrap_or_default();
        // The others, in order; a key found twice in a JSON object keeps one value (as in
        // format 1), so a lookup that finds nothing is skipped, not an error.
        let mut others: Vec<Option<(&String, &Json)>> = rest
            .as_object()
            .map(|m| m.iter().map(Some).collect())
            .unwrap_or_default();
        let mut taken: Vec<&str> = Vec::new();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if !taken.contains(&k.as_str())
                && let Some(v) = self.value(k, i)
            {
                taken.push(k);
                out.push((k.clone(), v));
                continue;
            }
            if let Some(slot) = others.iter_mut().find(|o| o.is_some_and(|(ok, _)| ok == k))
                && let Some((_, v)) = slot.take()
            {
                out.push((k.clone(), value_from_json(v)));
            }
        }
        out.extend(
            others
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), value_from_json(v))),
        );
        Ok(out)
    }
}

/// Appends the spans of `b` to `out`; parents stored as row deltas are left unset and
/// listed in `fixups` (index in `out`, delta) for [`resolve_parents`].
fn from_batch(
    b: &RecordBatch,
    out: &mut Vec<Span>,
    fixups: &mut Vec<(usize, i32)>,
) -> Result<(), String> {
    let trace = col::<FixedSizeBinaryArray>(b, "trace_id")?;
    let span = col::<FixedSizeBinaryArray>(b, "span_id")?;
    let parent = col::<FixedSizeBinaryArray>(b, "parent_span_id")?;
    let service = col::<StringArray>(b, "service")?;
    let name = col::<StringArray>(b, "name")?;
    let kind = col::<Int32Array>(b, "kind")?;
    let pos = Positions::of(b)?;
    let dur = col::<Int64Array>(b, "duration_nano")?;
    let status = col::<Int32Array>(b, "status_code")?;
    let status_msg = col::<StringArray>(b, "status_message")?;
    let attrs = col::<StringArray>(b, "attributes")?;
    let res = col::<StringArray>(b, "resource_attributes")?;
    let scope_name = col::<StringArray>(b, "scope_name")?;
    let scope_version = col::<StringArray>(b, "scope_version")?;
    let events = col::<StringArray>(b, "events")?;
    let links = col::<StringArray>(b, "links")?;
    let parse = |s: &str| {
        serde_json::from_str::<Json>(s).map_err(|e| format!("bad JSON in a block column: {e}"))
    };
    let promoted = PromotedColumns::of(b)?;
    let mut last_keys: Option<(String, Vec<String>)> = None;
    let mut last_origin: Option<Arc<Origin>> = None;
    for i in 0..b.num_rows() {
        let mut t = [0u8; 16];
        t.copy_from_slice(trace.value(i));
        let mut sid = [0u8; 8];
        sid.copy_from_slice(span.value(i));
        let parent_id = if parent.is_null(i) {
            None
        } else {
            let mut p = [0u8; 8];
            p.copy_from_slice(parent.value(i));
            Some(p)
        };
        let origin = match &last_origin {
            Some(o)
                if o.service == service.value(i)
                    && o.scope_name == scope_name.value(i)
                    && o.scope_version == scope_version.value(i)
                    && attrs_str(&o.resource) == res.value(i) =>
            {
                o.clone()
            }
            _ => {
                let o = Arc::new(Origin {
                    service: service.value(i).to_string(),
                    resource: attrs_from_json(&parse(res.value(i))?),
                    scope_name: scope_name.value(i).to_string(),
                    scope_version: scope_version.value(i).to_string(),
                });
                last_origin = Some(o.clone());
                o
            }
        };
        let start_ns = pos.start_ns(i);
        if let Some(d) = pos.parent_delta(i) {
            fixups.push((out.len(), d));
        }
        let events = parse(events.value(i))?
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| Event {
                        time_ns: e["time_unix_nano"].as_u64().unwrap_or(0),
                        name: e["name"].as_str().unwrap_or_default().to_string(),
                        attributes: attrs_from_json(&e["attributes"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let links = parse(links.value(i))?
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| {
                        Some(Link {
                            trace_id: unhex::<16>(l["trace_id"].as_str()?)?,
                            span_id: unhex::<8>(l["span_id"].as_str()?)?,
                            attributes: attrs_from_json(&l["attributes"]),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Span {
            trace_id: t,
            span_id: sid,
            parent_span_id: parent_id,
            name: name.value(i).to_string(),
            kind: SpanKind::from_i32(kind.value(i)),
            start_ns,
            end_ns: start_ns.saturating_add(dur.value(i).max(0) as u64),
            status: StatusCode::from_i32(status.value(i)),
            status_message: status_msg.value(i).to_string(),
            attributes: match &promoted {
                None => attrs_from_json(&parse(attrs.value(i))?),
                Some(p) => p.attributes(i, &parse(attrs.value(i))?, &mut last_keys)?,
            },
            events,
            links,
            origin,
        });
    }
    Ok(())
}
