//! The trace-id index of a block, `BLOCKID.tidx`: for each trace, in row order, its id
//! and how many rows it has (a trace's rows are contiguous, so its first row is the sum of
//! the rows before it, and its position in this list is its ordinal, the number the
//! search index's postings use). Little endian:
//!
//! ```text
//! 0   8  magic     b"FLTTIDX1"
//! 8   4  version   3
//! 12  4  count     number of entries
//! 16  16n ids      count trace ids, in row order, each once
//! ..  ..  rows     count row counts, each LEB128 (7 bits a byte, low first), at least 1;
//!                  a trace's first row is the sum of those before it
//! ..  4  crc       CRC32C of everything before it
//! ```
//!
//! Version 2 (still read) is the same layout from the time rows were sorted by trace id;
//! now the writer groups traces by shape (`writer.rs`), so a reader sorts the ids itself
//! ([`by_id`]): 4 bytes of memory a trace. Version 1 (still read) stored per entry the
//! trace id, the first row as u32 and the rows as u32: 24 bytes a trace against about 17
//! (1.38 against 0.98 bytes per span on varied traffic).
//!
//! It is written to `BLOCKID.tidx.tmp` and fsynced; the writer renames it with the block.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use faultline_model::span::TraceId;

use crate::error::StoreError;

const MAGIC: &[u8; 8] = b"FLTTIDX1";
const VERSION: u32 = 3;
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
    let mut idx = Vec::with_capacity(20 + entries.len() * 18);
    idx.extend_from_slice(MAGIC);
    idx.extend_from_slice(&VERSION.to_le_bytes());
    idx.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (t, _, _) in entries {
        idx.extend_from_slice(t);
    }
    for (_, _, rows) in entries {
        crate::varint::put(u64::from(*rows), &mut idx);
    }
    let crc = crc32c::crc32c(&idx);
    idx.extend_from_slice(&crc.to_le_bytes());
    idx
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
pub(crate) fn read(path: &Path) -> Result<Vec<Entry>, StoreError> {
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
        1 => read_v1(&body[16..], count),
        2 | 3 => read_v2(&body[16..], count),
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
    let (ids, mut rows) = body.split_at(ids_len);
    let mut index = Vec::with_capacity(count);
    let mut first = 0u32;
    for id in ids.chunks_exact(16) {
        // A varint cut short (or past 64 bits) means the counts do not fit the file.
        let n = crate::varint::take(&mut rows).map_err(|_| misfit())?;
        let n = u32::try_from(n).map_err(|_| "a trace's row count does not fit 32 bits")?;
        if n == 0 {
            return Err("a trace with no rows".into());
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(id);
        index.push((t, first, n));
        first = first
            .checked_add(n)
            .ok_or("the rows of the traces pass 2^32")?;
    }
    if !rows.is_empty() {
        return Err(misfit());
    }
    Ok(index)
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

    #[test]
    fn round_trip_and_damage_is_named() {
        let ids: Vec<TraceId> = vec![[1; 16], [1; 16], [2; 16], [3; 16], [3; 16], [3; 16]];
        let e = entries(ids.iter());
        assert_eq!(e, vec![([1; 16], 0, 2), ([2; 16], 2, 1), ([3; 16], 3, 3)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tidx");
        let bytes = encode(&e);
        write_tmp(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), e);
        let damage = |at: usize, why: &str| {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            std::fs::write(&path, &b).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains(why), "byte {at}: {err}");
        };
        damage(0, "bad magic");
        damage(30, "checksum");
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("checksum"));
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
    /// version 1 files still read; lying bodies are refused by name, not misread.
    #[test]
    fn row_counts_as_varints_and_version_1() {
        let mut ids: Vec<TraceId> = Vec::new();
        for (i, n) in [1u32, 127, 128, 300, 20_000, 5].into_iter().enumerate() {
            ids.extend(std::iter::repeat_n([i as u8 + 1; 16], n as usize));
        }
        let e = entries(ids.iter());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tidx");
        let bytes = encode(&e);
        assert_eq!(bytes.len(), 20 + 6 * 16 + (1 + 1 + 2 + 2 + 3 + 1));
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), e);
        assert_eq!(e[4], ([5; 16], 1 + 127 + 128 + 300, 20_000));
        // Version 1: id, first row, rows per entry.
        let mut v1 = Vec::new();
        for (t, first, rows) in &e {
            v1.extend_from_slice(t);
            v1.extend_from_slice(&first.to_le_bytes());
            v1.extend_from_slice(&rows.to_le_bytes());
        }
        std::fs::write(&path, file(1, e.len() as u32, &v1)).unwrap();
        assert_eq!(read(&path).unwrap(), e);
        let refused = |bytes: Vec<u8>, why: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        };
        refused(file(1, 2, &v1), "do not fit");
        refused(
            file(2, 1, &[[1u8; 16].as_slice(), &[0]].concat()),
            "no rows",
        );
        refused(
            file(2, 1, &[[1u8; 16].as_slice(), &[0x80]].concat()),
            "do not fit",
        );
        refused(
            file(2, 1, &[[1u8; 16].as_slice(), &[1, 1]].concat()),
            "do not fit",
        );
        refused(file(2, 2, &[1u8; 17]), "do not fit");
        refused(file(2, u32::MAX, &[1u8; 17]), "do not fit");
        let big = [[1u8; 16].as_slice(), &[0xff, 0xff, 0xff, 0xff, 0x1f]].concat();
        refused(file(2, 1, &big), "32 bits");
        let two_big = [
            [1u8; 32].as_slice(),
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
        ]
        .concat();
        refused(file(2, 2, &two_big), "2^32");
        refused(file(4, 0, &[]), "version 4");
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
        let back = read(&path).unwrap();
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
