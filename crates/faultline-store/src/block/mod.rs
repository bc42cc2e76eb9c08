//! Sealed blocks: immutable Parquet files of spans, and their trace-id index.
//!
//! Code map: the Arrow schema and the promoted columns (`schema.rs`), the JSON encoding of
//! attributes (`json.rs`), writing (`writer.rs`), reading (`reader.rs`, through
//! `pages.rs`, which decompresses zstd pages with one context per thread) and the
//! trace-id index (`tidx.rs`, whose layout is documented there).
//!
//! A block is four files in `DATA_DIR/blocks/`, named by the block id:
//!
//! - `BLOCKID.parquet`: every span of the block, one row per span; the spans of one trace
//!   are contiguous and in start order, and traces of one shape sit together (blocks
//!   indexed before trace-id index version 3 are sorted by trace id). Row groups hold at most
//!   [`ROW_GROUP_ROWS`] rows (so a block of the default 250,000 spans is one row group)
//!   and pages at most [`PAGE_ROWS`]; columns are zstd-compressed
//!   with dictionary encoding, and the offset index is written so a reader can fetch and
//!   decompress only the pages of the rows it wants (format 7 writes no column index;
//!   since 2026-12-06 no statistics either, which nothing read: still format 7, as
//!   every reader reads a file with or without them). The schema (format 7; readable by DuckDB,
//!   ClickHouse or Spark) follows. `span_id`, `parent_span_id` and `events` are
//!   written without a dictionary (they are nearly unique; a lookup would decode the
//!   whole dictionary), `start_offset_nano` with a small dictionary falling back to
//!   `BYTE_STREAM_SPLIT` (format 6: delta encoding); the other columns use dictionaries
//!   where they pay (see `writer.rs`), and `duration_nano` and numeric promoted
//!   attributes without one are `BYTE_STREAM_SPLIT` (format 7; a reader needs that
//!   encoding for integers: DuckDB 2.0 and pyarrow 26 read them alike, checked on
//!   10.2M varied spans against format 6):
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
//!   | `adjusted_count` | double | (format 5) how many spans this one stands for: 1/p for a span kept with probability p (`faultline_model::sampling`); 1 when not sampled. `sum(adjusted_count)` estimates the spans sent |
//!   | `clock_shift_nano` | int64 | (format 6) nanoseconds to add to this span's start and end to correct its clock's skew, as estimated when the block was written (`crate::skew`); 0 for spans that fit their parent |
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
//!   promoted columns it also has `attribute_keys` (utf8, an Arrow dictionary from format
//!   8): the JSON array of the span's
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
//!   Format 4 declares `resource_attributes` in the embedded Arrow schema as a dictionary
//!   (int32 keys, utf8 values): each distinct resource's JSON is stored once per column
//!   chunk, as Parquet's dictionary encoding already did; format 3 files (plain utf8 in
//!   the Arrow schema) are read alike. Format 5 adds `adjusted_count`; the store derives
//!   it again from the attributes when reading, so older formats read alike (DuckDB users
//!   of older blocks: their spans count 1). Format 6 adds `clock_shift_nano`, read into
//!   the search index's trace times (older blocks: no shift). Format 7 changes
//!   encodings and statistics only (above), not columns. Format 8 declares
//!   `attribute_keys` in the embedded Arrow schema as a dictionary too (spans of one
//!   shape share their key list, so the writer keeps each distinct list once instead of
//!   copying 300-400 bytes per span); the Parquet column is encoded as before, and format
//!   7 files read alike. The key-value metadata holds
//!   `faultline.block.format` and the block's time range.
//!
//! - `BLOCKID.tidx`: the trace-id index: each trace's row count in row order and a
//!   checksum of the ids, which the reader takes from the `trace_id` column when it opens
//!   the block (format in `tidx.rs`).
//!
//! - `BLOCKID.sidx`: the search index's tag postings (format in `search/postings.rs`).
//!
//! - `BLOCKID.red`: the block's RED and dependency rollup cells (format in `rollup.rs`).
//!
//! All files are written to temporary names, fsynced, and renamed; the manifest (see
//! `manifest.rs`) is what makes a block part of the store.

mod json;
mod pages;
mod reader;
pub(crate) mod schema;
mod tidx;
mod writer;

use crate::error::StoreError;
use std::path::{Path, PathBuf};

pub(crate) use json::unhex;
pub use pages::dict_cache_bytes;
pub use reader::BlockReader;
pub use schema::{MAX_PROMOTED, schema};
pub(crate) use writer::write_block_indexed;
pub use writer::{PAGE_ROWS, ROW_GROUP_ROWS, WrittenBlock, write_block};

/// A hash map with a fast hasher: sealing hashes every attribute key of every span, and
/// SipHash was a visible share of it (a collision would only cost one seal some time).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// Fsyncs directory `dir` (after renames in it).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            op: "fsync block directory",
            path: dir.to_path_buf(),
            source,
        })
}

pub(crate) fn parquet_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.parquet"))
}

pub(crate) fn tidx_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.tidx"))
}
