//! The trace-id index of a block, `BLOCKID.tidx`: for each trace, in row order, how many
//! rows it has (a trace's rows are contiguous, so its first row is the sum of the rows
//! before it, and its position in this list is its ordinal, the number the search
//! index's postings use). The ids themselves are the Parquet file's `trace_id` column,
//! read when the block is opened ([`with_ids`]); the index keeps a checksum of them, so
//! a damaged column is refused rather than misread. Little endian:
//!
//! ```text
//! 0   8  magic     b"FLTTIDX1"
//! 8   4  version   4
//! 12  4  count     number of traces
//! 16  ..  rows     count row counts, each LEB128 (7 bits a byte, low first), at least 1
//! ..  4  ids_crc   CRC32C of the count trace ids (16 bytes each) in row order
//! ..  4  crc       CRC32C of everything before it
//! ```
//!
//! Older versions, still read, held the ids too (16 bytes a trace, 0.9 bytes per span on
//! varied traffic, a copy of the column): version 3 listed after the header the `count`
//! ids in row order, then the row counts as above; version 2 is the same layout from the
//! time rows were sorted by trace id; version 1 stored per entry the id, the first row as
//! u32 and the rows as u32. Rows are no longer sorted by id (the writer groups traces by
//! shape, `writer.rs`), so a reader sorts the ids itself ([`by_id`]): 4 bytes of memory a
//! trace.
//!
//! It is written to `BLOCKID.tidx.tmp` and fsynced; the writer renames it with the block.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use faultline_model::span::TraceId;

use crate::error::StoreError;

const MAGIC: &[u8; 8] = b"FLTTIDX1";
const VERSION: u32 = 4;
/// A version 1 entry's bytes.
const ENTRY_V1: usize = 24;

/// One trace: its id, first row and number of rows.
pub(crate) type Entry = (TraceId, u32, u32);

/// The entries of trace ids `ids` given in row order (the rows of a trace together).
pub(crate) fn entries<'a>(ids: impl Iterator<Item = &'a TraceId>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for (row, t) in ids.enumerate() {
        match out.last_mut() {
            Some(last) if last.0 == *t => last.2 += 1,
            _ => out.push((*t, row as u32, 1)),
        }
    }
    out
}

/// The file's bytes. `entries` are in row order, their rows contiguous from row 0, as
/// [`entries`] makes them.
pub(crate) fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut idx = Vec::with_capacity(24 + entries.len() * 2);
    idx.extend_from_slice(MAGIC);
    idx.extend_from_slice(&VERSION.to_le_bytes());
    idx.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (_, _, rows) in entries {
        crate::varint::put(u64::from(*rows), &mut idx);
    }
    idx.extend_from_slice(&ids_crc(entries.iter().map(|e| &e.0)).to_le_bytes());
    let crc = crc32c::crc32c(&idx);
    idx.extend_from_slice(&crc.to_le_bytes());
    idx
}

/// CRC32C of trace ids, in the order given.
fn ids_crc<'a>(ids: impl Iterator<Item = &'a TraceId>) -> u32 {
    ids.fold(0, |crc, id| crc32c::crc32c_append(crc, id))
}

/// What an index file holds.
#[derive(Debug, PartialEq)]
pub(crate) enum Stored {
    /// Versions 1 to 3: the entries, ids included.
    Entries(Vec<Entry>),
    /// Version 4: each trace's row count, and the checksum of the ids that the block's
    /// `trace_id` column must give ([`with_ids`]).
    Rows { rows: Vec<u32>, ids_crc: u32 },
}

/// The entries of a version 4 index: its row counts with the ids of the block's
/// `trace_id` column (`column`, one id per row). Refused, naming what disagrees, when the
/// column's runs of ids are not the index's traces or its ids not the ones indexed.
pub(crate) fn with_ids(rows: &[u32], crc: u32, column: &[TraceId]) -> Result<Vec<Entry>, String> {
    let total: u64 = rows.iter().map(|&n| u64::from(n)).sum();
    if total != column.len() as u64 {
        return Err(format!(
            "the trace-id index counts {total} rows, the block's trace_id column has {}",
            column.len()
        ));
    }
    let e = entries(column.iter());
    if e.len() != rows.len() || e.iter().zip(rows).any(|(e, &n)| e.2 != n) {
        return Err(format!(
            "the block's trace_id column groups its rows into {} traces unlike the {} of the trace-id index",
            e.len(),
            rows.len()
        ));
    }
    if ids_crc(e.iter().map(|e| &e.0)) != crc {
        return Err("the block's trace_id column does not hold the ids indexed (checksum)".into());
    }
    Ok(e)
}

/// Writes `bytes` to `tmp` and fsyncs it. Blocking.
pub(crate) fn write_tmp(tmp: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |op: &'static str| {
        let path: PathBuf = tmp.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    };
    let mut f = File::create(tmp).map_err(io("create trace index"))?;
    f.write_all(bytes).map_err(io("write trace index"))?;
    f.sync_all().map_err(io("fsync trace index"))
}

/// Reads and checks the index at `path` (magic, version, checksum, size).
pub(crate) fn read(path: &Path) -> Result<Stored, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let idx = std::fs::read(path).map_err(|source| StoreError::Io {
        op: "read trace index",
        path: path.to_path_buf(),
        source,
    })?;
    if idx.len() < 20 || &idx[0..8] != MAGIC {
        return Err(corrupt("not a faultline trace index (bad magic)".into()));
    }
    let (body, crc) = idx.split_at(idx.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let version = u32::from_le_bytes([idx[8], idx[9], idx[10], idx[11]]);
    let count = u32::from_le_bytes([idx[12], idx[13], idx[14], idx[15]]) as usize;
    match version {
        1 => read_v1(&body[16..], count).map(Stored::Entries),
        2 | 3 => read_v2(&body[16..], count).map(Stored::Entries),
        4 => read_v4(&body[16..], count),
        v => Err(format!(
            "index version {v} is not supported (this build reads 1 to {VERSION})"
        )),
    }
    .map_err(corrupt)
}

fn read_v1(entries: &[u8], count: usize) -> Result<Vec<Entry>, String> {
    if Some(entries.len()) != count.checked_mul(ENTRY_V1) {
        return Err(format!(
            "{count} entries do not fit {} bytes",
            entries.len() + 16
        ));
    }
    let mut index = Vec::with_capacity(count);
    for e in entries.chunks_exact(ENTRY_V1) {
        let mut t = [0u8; 16];
        t.copy_from_slice(&e[0..16]);
        index.push((
            t,
            u32::from_le_bytes([e[16], e[17], e[18], e[19]]),
            u32::from_le_bytes([e[20], e[21], e[22], e[23]]),
        ));
    }
    Ok(index)
}

fn read_v2(body: &[u8], count: usize) -> Result<Vec<Entry>, String> {
    let misfit = || format!("{count} entries do not fit {} bytes", body.len() + 16);
    let ids_len = count
        .checked_mul(16)
        .filter(|&n| n <= body.len())
        .ok_or_else(misfit)?;
    let (ids, rest) = body.split_at(ids_len);
    let (rows, rest) = take_rows(rest, count).map_err(|e| e.unwrap_or_else(misfit))?;
    if !rest.is_empty() {
        return Err(misfit());
    }
    let mut index = Vec::with_capacity(count);
    let mut first = 0u32;
    for (id, n) in ids.chunks_exact(16).zip(rows) {
        let mut t = [0u8; 16];
        t.copy_from_slice(id);
        index.push((t, first, n));
        first = first.wrapping_add(n);
    }
    Ok(index)
}

fn read_v4(body: &[u8], count: usize) -> Result<Stored, String> {
    let misfit = || format!("{count} traces do not fit {} bytes", body.len() + 16);
    let (rows, rest) = take_rows(body, count).map_err(|e| e.unwrap_or_else(misfit))?;
    let ids_crc: [u8; 4] = rest.try_into().map_err(|_| misfit())?;
    Ok(Stored::Rows {
        rows,
        ids_crc: u32::from_le_bytes(ids_crc),
    })
}

/// `count` row counts from the front of `body`, and what follows them. `Err(None)`: the
/// counts do not fit the body; `Err(Some(reason))`: a count is impossible.
fn take_rows(mut body: &[u8], count: usize) -> Result<(Vec<u32>, &[u8]), Option<String>> {
    // Every count takes at least a byte: a count past the body is refused before
    // anything is allocated for it.
    if count > body.len() {
        return Err(None);
    }
    let mut rows = Vec::with_capacity(count);
    let mut total = 0u32;
    for _ in 0..count {
        // A varint cut short (or past 64 bits) means the counts do not fit the file.
        let n = crate::varint::take(&mut body).map_err(|_| None)?;
        let n = u32::try_from(n)
            .map_err(|_| Some("a trace's row count does not fit 32 bits".into()))?;
        if n == 0 {
            return Err(Some("a trace with no rows".into()));
        }
        total = total
            .checked_add(n)
            .ok_or(Some("the rows of the traces pass 2^32".to_string()))?;
        rows.push(n);
    }
    Ok((rows, body))
}

/// The ordinals of `entries` sorted by trace id, for lookups by id; empty when the
/// entries already are (every block written before version 3). A trace listed twice is
/// refused: its rows would be ambiguous.
pub(crate) fn by_id(entries: &[Entry]) -> Result<Vec<u32>, String> {
    if entries.windows(2).all(|w| w[0].0 < w[1].0) {
        return Ok(Vec::new());
    }
    let mut order: Vec<u32> = (0..entries.len() as u32).collect();
    order.sort_unstable_by_key(|&o| entries[o as usize].0);
    if let Some(w) = order
        .windows(2)
        .find(|w| entries[w[0] as usize].0 == entries[w[1] as usize].0)
    {
        let t = entries[w[0] as usize].0;
        return Err(format!(
            "trace {} is listed twice",
            faultline_model::hex(&t)
        ));
    }
    Ok(order)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The entries of a version 4 index at `path`, with the ids of `column`.
    fn read_with(path: &Path, column: &[TraceId]) -> Result<Vec<Entry>, String> {
        match read(path).map_err(|e| e.to_string())? {
            Stored::Rows { rows, ids_crc } => with_ids(&rows, ids_crc, column),
            Stored::Entries(e) => Err(format!("an index of version 4 read as {e:?}")),
        }
    }

    #[test]
    fn round_trip_and_damage_is_named() {
        let ids: Vec<TraceId> = vec![[1; 16], [1; 16], [2; 16], [3; 16], [3; 16], [3; 16]];
        let e = entries(ids.iter());
        assert_eq!(e, vec![([1; 16], 0, 2), ([2; 16], 2, 1), ([3; 16], 3, 3)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tidx");
        let bytes = encode(&e);
        assert_eq!(bytes.len(), 16 + 3 + 4 + 4, "no ids in the file");
        write_tmp(&path, &bytes).unwrap();
        assert_eq!(read_with(&path, &ids).unwrap(), e);
        let damage = |at: usize, why: &str| {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            std::fs::write(&path, &b).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains(why), "byte {at}: {err}");
        };
        damage(0, "bad magic");
        damage(17, "checksum");
        damage(20, "checksum");
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("checksum"));
    }

    /// A `trace_id` column that disagrees with the index (other ids, traces merged or
    /// split, rows missing) is refused by name.
    #[test]
    fn a_column_unlike_the_index_is_refused() {
        let ids: Vec<TraceId> = vec![[1; 16], [1; 16], [2; 16], [3; 16], [3; 16], [3; 16]];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tidx");
        std::fs::write(&path, encode(&entries(ids.iter()))).unwrap();
        let refused = |column: Vec<TraceId>, why: &str| {
            let err = read_with(&path, &column).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        };
        let mut other = ids.clone();
        other[2] = [4; 16];
        refused(other, "checksum");
        let mut merged = ids.clone();
        merged[2] = [1; 16];
        refused(merged, "groups its rows into 2 traces unlike the 3");
        let mut split = ids.clone();
        split[1] = [9; 16];
        refused(split, "into 4 traces");
        refused(ids[..5].to_vec(), "counts 6 rows");
    }

    /// Checksummed bytes of an index with `version` and `count` over `body`.
    fn file(version: u32, count: u32, body: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(body);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Row counts of one to three varint bytes round-trip with first rows as running sums;
    /// versions 1 to 3 (ids in the file) still read; lying bodies are refused by name, not
    /// misread.
    #[test]
    fn row_counts_as_varints_and_older_versions() {
        let mut ids: Vec<TraceId> = Vec::new();
        for (i, n) in [1u32, 127, 128, 300, 20_000, 5].into_iter().enumerate() {
            ids.extend(std::iter::repeat_n([i as u8 + 1; 16], n as usize));
        }
        let e = entries(ids.iter());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tidx");
        let bytes = encode(&e);
        assert_eq!(bytes.len(), 16 + (1 + 1 + 2 + 2 + 3 + 1) + 4 + 4);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_with(&path, &ids).unwrap(), e);
        assert_eq!(e[4], ([5; 16], 1 + 127 + 128 + 300, 20_000));
        // Versions 2 and 3: the ids, then the counts.
        let mut v3 = Vec::new();
        for (t, _, _) in &e {
            v3.extend_from_slice(t);
        }
        for (_, _, rows) in &e {
            crate::varint::put(u64::from(*rows), &mut v3);
        }
        for version in [2, 3] {
            std::fs::write(&path, file(version, e.len() as u32, &v3)).unwrap();
            assert_eq!(read(&path).unwrap(), Stored::Entries(e.clone()));
        }
        // Version 1: id, first row, rows per entry.
        let mut v1 = Vec::new();
        for (t, first, rows) in &e {
            v1.extend_from_slice(t);
            v1.extend_from_slice(&first.to_le_bytes());
            v1.extend_from_slice(&rows.to_le_bytes());
        }
        std::fs::write(&path, file(1, e.len() as u32, &v1)).unwrap();
        assert_eq!(read(&path).unwrap(), Stored::Entries(e.clone()));
        let refused = |bytes: Vec<u8>, why: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        };
        refused(file(1, 2, &v1), "do not fit");
        refused(
            file(3, 1, &[[1u8; 16].as_slice(), &[0]].concat()),
            "no rows",
        );
        refused(
            file(3, 1, &[[1u8; 16].as_slice(), &[0x80]].concat()),
            "do not fit",
        );
        refused(
            file(3, 1, &[[1u8; 16].as_slice(), &[1, 1]].concat()),
            "do not fit",
        );
        refused(file(3, 2, &[1u8; 17]), "do not fit");
        refused(file(3, u32::MAX, &[1u8; 17]), "do not fit");
        let big = [[1u8; 16].as_slice(), &[0xff, 0xff, 0xff, 0xff, 0x1f]].concat();
        refused(file(3, 1, &big), "32 bits");
        let two_big = [
            [1u8; 32].as_slice(),
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
        ]
        .concat();
        refused(file(3, 2, &two_big), "2^32");
        // Version 4: counts, then the ids' checksum, nothing else.
        refused(file(4, 1, &[5, 0, 0, 0]), "do not fit");
        refused(file(4, 1, &[5, 0, 0, 0, 0, 0]), "do not fit");
        refused(file(4, u32::MAX, &[5, 0, 0, 0, 0]), "do not fit");
        refused(file(4, 1, &[0, 0, 0, 0, 0]), "no rows");
        assert_eq!(
            read(&{
                std::fs::write(&path, file(4, 1, &[5, 1, 2, 3, 4])).unwrap();
                path.clone()
            })
            .unwrap(),
            Stored::Rows {
                rows: vec![5],
                ids_crc: 0x0403_0201
            }
        );
        refused(file(5, 0, &[]), "version 5");
    }

    /// Entries in row order need not be sorted by id: lookups go through [`by_id`], which
    /// is empty (no memory) for sorted entries and refuses an id listed twice.
    #[test]
    fn ids_out_of_order_are_looked_up_through_a_permutation() {
        let ids: Vec<TraceId> = vec![[9; 16], [9; 16], [2; 16], [5; 16], [5; 16], [1; 16]];
        let e = entries(ids.iter());
        assert_eq!(
            e,
            vec![
                ([9; 16], 0, 2),
                ([2; 16], 2, 1),
                ([5; 16], 3, 2),
                ([1; 16], 5, 1)
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tidx");
        std::fs::write(&path, encode(&e)).unwrap();
        let back = read_with(&path, &ids).unwrap();
        assert_eq!(back, e, "row order kept");
        assert_eq!(by_id(&back).unwrap(), vec![3, 1, 2, 0]);
        let sorted = entries([[1u8; 16], [2; 16], [2; 16]].iter());
        assert!(by_id(&sorted).unwrap().is_empty());
        let twice = vec![([7u8; 16], 0, 1), ([3; 16], 1, 1), ([7; 16], 2, 1)];
        let err = by_id(&twice).unwrap_err();
        assert!(
            err.contains(&"07".repeat(16)) && err.contains("twice"),
            "{err}"
        );
    }
}
