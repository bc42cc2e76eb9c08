//! The trace-id index of a block, `BLOCKID.tidx`: for each trace, the first row of its
//! spans in the Parquet file and how many rows it has (rows are sorted by trace id, so a
//! trace's rows are contiguous). Little endian:
//!
//! ```text
//! 0   8  magic     b"FLTTIDX1"
//! 8   4  version   1
//! 12  4  count     number of entries
//! 16  n  entries   count x (trace_id 16 bytes, first_row u32, rows u32), sorted by id
//! ..  4  crc       CRC32C of everything before it
//! ```
//!
//! It is written to `BLOCKID.tidx.tmp` and fsynced; the writer renames it with the block.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use faultline_model::span::TraceId;

use crate::error::StoreError;

const MAGIC: &[u8; 8] = b"FLTTIDX1";
const VERSION: u32 = 1;
const ENTRY: usize = 24;

/// One trace: its id, first row and number of rows.
pub(crate) type Entry = (TraceId, u32, u32);

/// The entries of trace ids `ids` given in row order (sorted).
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

/// The file's bytes.
pub(crate) fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut idx = Vec::with_capacity(20 + entries.len() * ENTRY);
    idx.extend_from_slice(MAGIC);
    idx.extend_from_slice(&VERSION.to_le_bytes());
    idx.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (t, first, rows) in entries {
        idx.extend_from_slice(t);
        idx.extend_from_slice(&first.to_le_bytes());
        idx.extend_from_slice(&rows.to_le_bytes());
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
    if version != VERSION {
        return Err(corrupt(format!("index version {version} is not supported")));
    }
    let count = u32::from_le_bytes([idx[12], idx[13], idx[14], idx[15]]) as usize;
    if body.len() != 16 + count * ENTRY {
        return Err(corrupt(format!(
            "{count} entries do not fit {} bytes",
            body.len()
        )));
    }
    let mut index = Vec::with_capacity(count);
    for e in body[16..].chunks_exact(ENTRY) {
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
}
