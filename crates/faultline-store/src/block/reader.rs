//! Reading a block: [`BlockReader`] keeps the Parquet metadata and the trace-id index in
//! memory, so a trace lookup reads and decompresses only the pages holding its rows.
//! Formats 1 and 2 (absolute start times, every parent as an id, no promoted columns)
//! are read as well as format 3.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use arrow_array::{Array, FixedSizeBinaryArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::Schema;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use serde_json::Value as Json;

use faultline_model::span::{
    AttrValue, Attributes, Event, Key, Link, Origin, Span, SpanKind, StatusCode, TraceId,
};

use super::json::{attrs_from_json, unhex, value_from_json};
use super::schema::ATTR_PREFIX;
use super::{FastMap, pages, parquet_path, tidx, tidx_path};
use crate::error::StoreError;
use crate::search::{self, BlockIndex, LightRows, Postings};

/// An open block: its Parquet metadata and trace-id index, kept in memory so a lookup
/// reads only the pages holding the trace.
#[derive(Debug)]
pub struct BlockReader {
    id: String,
    path: PathBuf,
    meta: ArrowReaderMetadata,
    /// How the block's columns decode into Arrow fields, for [`pages::read`]: every
    /// column but `trace_id`, whose values a read takes from `index` (a lookup's rows are
    /// one trace's; decompressing that column's page was 15% of the bytes a lookup
    /// decompressed, BENCHMARKS.md).
    levels: parquet::arrow::FieldLevels,
    /// Trace ids with (first row, rows), in row order: a trace's ordinal is its position.
    index: Vec<(TraceId, u32, u32)>,
    /// Ordinals sorted by trace id ([`tidx::by_id`]); empty when `index` is sorted.
    by_id: Vec<u32>,
    /// Names this reader's dictionary pages kept by [`pages`].
    cache: u64,
    /// The `resource_attributes` column (leaf index): read with marker dictionaries, its
    /// entries looked up only for the rows read (`pages.rs`).
    resources: Option<usize>,
}

impl Drop for BlockReader {
    fn drop(&mut self) {
        pages::forget(self.cache);
    }
}

/// Every row's trace id, from the block's `trace_id` column (the trace-id index keeps
/// only row counts and a checksum of the ids, see `tidx.rs`).
fn trace_id_column(file: &File, meta: &ArrowReaderMetadata) -> Result<Vec<TraceId>, String> {
    let schema = meta.metadata().file_metadata().schema_descr();
    let mask = parquet::arrow::ProjectionMask::columns(schema, ["trace_id"]);
    let file = file.try_clone().map_err(|e| e.to_string())?;
    let batches = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| e.to_string())?;
    let rows = meta.metadata().file_metadata().num_rows();
    // The footer's count is a hint, not trusted for the allocation.
    let mut ids = Vec::with_capacity(usize::try_from(rows).unwrap_or(0).min(1 << 22));
    for batch in batches {
        let batch = batch.map_err(|e| e.to_string())?;
        let column = batch
            .column_by_name("trace_id")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
            .filter(|c| c.value_length() == 16 && c.null_count() == 0)
            .ok_or("no trace_id column of 16-byte ids without nulls")?;
        for i in 0..column.len() {
            let mut t = [0u8; 16];
            t.copy_from_slice(column.value(i));
            ids.push(t);
        }
    }
    Ok(ids)
}

impl BlockReader {
    /// Opens block `id` in `dir`, checking the index's magic, version and checksum.
    pub fn open(dir: &Path, id: &str) -> Result<Self, StoreError> {
        let path = parquet_path(dir, id);
        let ipath = tidx_path(dir, id);
        let stored = tidx::read(&ipath)?;
        let corrupt = |p: &Path, reason: String| StoreError::Corrupt {
            path: p.to_path_buf(),
            reason,
        };
        let file = File::open(&path).map_err(|source| StoreError::Io {
            op: "open block",
            path: path.clone(),
            source,
        })?;
        // Only the offset index (where each page starts): a lookup reads the pages of its
        // rows. The column index (page minimums and maximums, written by formats before 7)
        // is neither read nor kept.
        let meta = ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new()
                .with_offset_index_policy(parquet::file::metadata::PageIndexPolicy::Optional),
        )
        .map_err(|e| corrupt(&path, format!("unreadable Parquet: {e}")))?;
        let levels = pages::field_levels(meta.metadata(), meta.schema().fields(), &["trace_id"])
            .map_err(|e| corrupt(&path, format!("unreadable Parquet schema: {e}")))?;
        // Every reader (ours and Parquet's own) trusts these ranges: check them once here.
        pages::check_metadata(meta.metadata())
            .map_err(|e| corrupt(&path, format!("unreadable Parquet: {e}")))?;
        let index = match stored {
            tidx::Stored::Entries(e) => e,
            tidx::Stored::Rows { rows, ids_crc } => {
                let ids = trace_id_column(&file, &meta)
                    .map_err(|e| corrupt(&path, format!("unreadable trace_id column: {e}")))?;
                tidx::with_ids(&rows, ids_crc, &ids).map_err(|e| corrupt(&path, e))?
            }
        };
        let by_id = tidx::by_id(&index).map_err(|e| corrupt(&ipath, e))?;
        let resources = meta
            .metadata()
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().string() == "resource_attributes");
        Ok(Self {
            id: id.to_string(),
            path,
            meta,
            levels,
            index,
            by_id,
            cache: pages::cache_id(),
            resources,
        })
    }

    /// The block id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The trace id of ordinal `i` (its position in row order), if any.
    pub fn trace_id_at(&self, i: usize) -> Option<TraceId> {
        self.index.get(i).map(|e| e.0)
    }

    /// The ordinal of `trace_id` (its position in row order), if the block holds it.
    pub fn ordinal(&self, trace_id: &TraceId) -> Option<usize> {
        if self.by_id.is_empty() {
            return self.index.binary_search_by(|e| e.0.cmp(trace_id)).ok();
        }
        let at = self
            .by_id
            .binary_search_by(|&o| self.index[o as usize].0.cmp(trace_id))
            .ok()?;
        Some(self.by_id[at] as usize)
    }

    /// Number of traces in the block.
    pub fn traces(&self) -> usize {
        self.index.len()
    }

    /// Whether the block may hold `trace_id` (exact: the index lists every trace).
    pub fn contains(&self, trace_id: &TraceId) -> bool {
        self.ordinal(trace_id).is_some()
    }

    /// The spans of one trace, reading only the row groups and pages that hold them.
    pub fn trace(&self, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
        let Some(pos) = self.ordinal(trace_id) else {
            return Ok(Vec::new());
        };
        let (id, first, rows) = self.index[pos];
        self.read_ranges(&[(u64::from(first), u64::from(rows), id)])
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
                let (p, body) = Postings::build(&refs, &traces, None)?;
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
        // Format 6: each span's clock shift (older blocks: none).
        let has_shift = arrow_schema.index_of("clock_shift_nano").is_ok();
        if has_shift {
            names.push("clock_shift_nano");
        }
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
            let shift = if has_shift {
                Some(col::<Int64Array>(&b, "clock_shift_nano").map_err(corrupt)?)
            } else {
                None
            };
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
                let shift = shift.map_or(0, |c| c.value(i));
                rows.start_ns
                    .push(pos.start_ns(i).saturating_add_signed(shift));
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
        let ranges: Vec<(u64, u64, TraceId)> = self
            .index
            .iter()
            .map(|&(id, first, rows)| (u64::from(first), u64::from(rows), id))
            .collect();
        self.read_ranges(&ranges)
    }

    /// The spans of several traces, in one pass over the block: every column is read
    /// once, with a selection of the rows of all of them. Answers one list per id, in the
    /// order asked (empty for an id the block does not hold).
    pub fn read_traces(&self, ids: &[TraceId]) -> Result<Vec<Vec<Span>>, StoreError> {
        // (first row, rows, index of the id), in row order.
        let mut ranges: Vec<(u64, u64, usize)> = ids
            .iter()
            .enumerate()
            .filter_map(|(k, id)| {
                let pos = self.ordinal(id)?;
                let (_, first, rows) = self.index[pos];
                Some((u64::from(first), u64::from(rows), k))
            })
            .collect();
        ranges.sort_unstable();
        ranges.dedup_by_key(|r| r.0);
        let spans = self.read_ranges(
            &ranges
                .iter()
                .map(|&(f, n, k)| (f, n, ids[k]))
                .collect::<Vec<_>>(),
        )?;
        let mut out = vec![Vec::new(); ids.len()];
        let mut it = spans.into_iter();
        for &(_, n, k) in &ranges {
            out[k] = it.by_ref().take(n as usize).collect();
        }
        // Another id naming a trace already read (a repeated id) gets a copy.
        for (k, id) in ids.iter().enumerate() {
            if out[k].is_empty()
                && let Some(j) = ids[..k].iter().position(|x| x == id)
            {
                out[k] = out[j].clone();
            }
        }
        Ok(out)
    }

    /// Reads the rows of `ranges` ((first row, rows, the trace id they hold), sorted, not
    /// overlapping): the row groups holding them, and within those a selection of exactly
    /// their rows. The `trace_id` column is not read: each span gets its range's id.
    fn read_ranges(&self, ranges: &[(u64, u64, TraceId)]) -> Result<Vec<Span>, StoreError> {
        let md = self.meta.metadata();
        let mut groups = Vec::new();
        let mut selectors = Vec::new();
        let mut group_start = 0u64;
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let mut next = ranges.iter().peekable();
        for (i, rg) in md.row_groups().iter().enumerate() {
            let n = rg.num_rows().max(0) as u64;
            let g_end = group_start + n;
            // The ranges in this group; a trace can continue into the next group (groups
            // are cut by row count), so a range is clipped here and finished there.
            let mut pos = group_start;
            let mut picked = false;
            while let Some(&&(first, rows, _)) = next.peek() {
                if first >= g_end {
                    break;
                }
                let (from, to) = (first.max(group_start), (first + rows).min(g_end));
                if from > pos {
                    selectors.push(RowSelector::skip((from - pos) as usize));
                }
                selectors.push(RowSelector::select((to - from) as usize));
                pos = to;
                picked = true;
                if first + rows <= g_end {
                    next.next();
                } else {
                    break;
                }
            }
            if picked {
                groups.push(i);
                if g_end > pos {
                    selectors.push(RowSelector::skip((g_end - pos) as usize));
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
        let (reader, found) = pages::read(
            self.cache,
            file,
            self.meta.metadata().clone(),
            &self.levels,
            (groups, RowSelection::from(selectors)),
            8192,
            self.resources,
        )
        .map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(total as usize);
        let mut fixups = Vec::new();
        let corrupt = |reason| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let mut trace_ids = ranges
            .iter()
            .flat_map(|&(_, rows, id)| std::iter::repeat_n(id, rows as usize));
        for batch in reader {
            let batch = batch.map_err(|e| corrupt(e.to_string()))?;
            let found = found.lock().unwrap_or_else(PoisonError::into_inner);
            from_batch(&batch, &found, &mut trace_ids, &mut out, &mut fixups).map_err(corrupt)?;
        }
        if out.len() as u64 != total {
            return Err(corrupt(format!(
                "{} rows read where the trace-id index names {total}",
                out.len()
            )));
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

/// A string column as Arrow gives it: plain, or an Arrow dictionary where the block's
/// Arrow schema declares one (`resource_attributes` from format 4, `attribute_keys` from
/// format 8, though lookups read the latter plainly: `pages::field_levels`).
enum Strs<'a> {
    Plain(&'a StringArray),
    Dict(&'a [i32], &'a StringArray),
}

impl<'a> Strs<'a> {
    fn of(b: &'a RecordBatch, name: &str) -> Result<Self, String> {
        use arrow_array::{DictionaryArray, types::Int32Type};
        let c = b
            .column_by_name(name)
            .ok_or_else(|| format!("column {name} is missing"))?;
        if let Some(a) = c.as_any().downcast_ref::<StringArray>() {
            return Ok(Self::Plain(a));
        }
        let d = c
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()
            .ok_or_else(|| format!("column {name} has the wrong type {}", c.data_type()))?;
        let values = d
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| format!("column {name}'s dictionary is not strings"))?;
        let keys = d.keys().values();
        if keys
            .iter()
            .any(|&k| usize::try_from(k).map_or(true, |k| k >= values.len()))
        {
            return Err(format!("column {name} has a key outside its dictionary"));
        }
        Ok(Self::Dict(keys, values))
    }

    fn value(&self, i: usize) -> &'a str {
        match self {
            Self::Plain(a) => a.value(i),
            Self::Dict(keys, values) => values.value(keys[i] as usize),
        }
    }
}

/// The promoted attribute columns of a batch (format 2), to put attributes back together.
struct PromotedColumns<'a> {
    keys: Strs<'a>,
    columns: FastMap<&'a str, &'a dyn Array>,
}

impl<'a> PromotedColumns<'a> {
    /// `None` for a block without promoted columns (format 1, or nothing promoted).
    fn of(b: &'a RecordBatch) -> Result<Option<Self>, String> {
        if b.column_by_name("attribute_keys").is_none() {
            return Ok(None);
        }
        let keys = Strs::of(b, "attribute_keys")?;
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
            Some(AttrValue::Str(a.value(i).into()))
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
        last: &mut Option<(String, Vec<Key>)>,
    ) -> Result<Attributes, String> {
        let text = self.keys.value(i);
        if last.as_ref().is_none_or(|(t, _)| t != text) {
            let list: Vec<String> = serde_json::from_str(text)
                .map_err(|e| format!("bad attribute_keys in a block: {e}"))?;
            *last = Some((text.to_string(), list.into_iter().map(Key::from).collect()));
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
            if let Some(slot) = others
                .iter_mut()
                .find(|o| o.is_some_and(|(ok, _)| *ok == k.as_str()))
                && let Some((_, v)) = slot.take()
            {
                out.push((k.clone(), value_from_json(v)));
            }
        }
        out.extend(
            others
                .into_iter()
                .flatten()
                .map(|(k, v)| (Key::new(k), value_from_json(v))),
        );
        Ok(out)
    }
}

/// Origins [`from_batch`] remembers (the oldest is forgotten first).
const MAX_ORIGINS: usize = 64;

/// Appends the spans of `b` to `out`, the `i`th row's trace id the next of `trace_ids`
/// (the batch carries no `trace_id` column, see [`BlockReader::levels`]); parents stored
/// as row deltas are left unset and listed in `fixups` (index in `out`, delta) for
/// [`resolve_parents`]. `dicts` holds the real dictionary pages of the resource column
/// when it was read with markers.
fn from_batch(
    b: &RecordBatch,
    dicts: &[(usize, parquet::column::page::Page)],
    trace_ids: &mut impl Iterator<Item = TraceId>,
    out: &mut Vec<Span>,
    fixups: &mut Vec<(usize, i32)>,
) -> Result<(), String> {
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
    let res = Strs::of(b, "resource_attributes")?;
    let scope_name = col::<StringArray>(b, "scope_name")?;
    let scope_version = col::<StringArray>(b, "scope_version")?;
    let events = col::<StringArray>(b, "events")?;
    let links = col::<StringArray>(b, "links")?;
    // Most spans have no events, no links and no attributes beyond the promoted ones:
    // their empty texts are answered without the parser.
    let parse = |s: &str| match s {
        "[]" => Ok(Json::Array(Vec::new())),
        "{}" => Ok(Json::Object(serde_json::Map::new())),
        s => {
            serde_json::from_str::<Json>(s).map_err(|e| format!("bad JSON in a block column: {e}"))
        }
    };
    let promoted = PromotedColumns::of(b)?;
    let mut last_keys: Option<(String, Vec<Key>)> = None;
    let mut origins: Vec<(&str, Arc<Origin>)> = Vec::new();
    for i in 0..b.num_rows() {
        let t = trace_ids
            .next()
            .ok_or("more rows read than the trace-id index names")?;
        let mut sid = [0u8; 8];
        sid.copy_from_slice(span.value(i));
        let parent_id = if parent.is_null(i) {
            None
        } else {
            let mut p = [0u8; 8];
            p.copy_from_slice(parent.value(i));
            Some(p)
        };
        // Origins seen in this batch, by their columns' text: spans sorted by trace
        // alternate between a few services.
        let text = res.value(i);
        let known = origins.iter().find(|(t, o)| {
            (std::ptr::eq(*t, text) || *t == text)
                && o.service == service.value(i)
                && o.scope_name == scope_name.value(i)
                && o.scope_version == scope_version.value(i)
        });
        let origin = match known {
            Some((_, o)) => o.clone(),
            None => {
                // A marker names the entry of the real dictionary to parse.
                let json = match pages::marker(text) {
                    Some((group, offset)) => dicts
                        .iter()
                        .rev()
                        .find(|(g, _)| *g == group)
                        .ok_or_else(|| format!("no dictionary of row group {group} was read"))
                        .and_then(|(_, page)| {
                            pages::dictionary_entry(page, offset).map_err(|e| e.to_string())
                        })?,
                    None => text,
                };
                let o = Arc::new(Origin {
                    service: service.value(i).to_string(),
                    resource: attrs_from_json(&parse(json)?),
                    scope_name: scope_name.value(i).to_string(),
                    scope_version: scope_version.value(i).to_string(),
                });
                if origins.len() == MAX_ORIGINS {
                    origins.remove(0);
                }
                origins.push((text, o.clone()));
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
