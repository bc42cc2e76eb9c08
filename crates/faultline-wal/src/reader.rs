//! Reading records back: the consumer side of the WAL.
//!
//! [`WalReader`] iterates over records from a sequence number, one segment at a time, up to
//! the committed (acknowledged) high-water mark. [`scan_dir`] reads a WAL directory without
//! changing it, for the `wal verify` and `wal dump` operator commands and for tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::WalError;
use crate::format::{parse_segment_file_name, scan_segment};
use crate::vfs::Vfs;

/// One record read back from the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: u64,
    /// Append time, Unix nanoseconds.
    pub time_ns: u64,
    /// The payload as appended.
    pub payload: Vec<u8>,
    /// The first sequence number of its segment (which names the file).
    pub segment: u64,
    /// Byte offset of its record header in that segment ([`crate::Wal::read_record`]).
    pub offset: u64,
}

/// The read operations a reader needs, object-safe so readers need not be generic.
pub trait ReadFs: Send + Sync {
    /// See [`Vfs::read_at`].
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
    /// See [`Vfs::read_at_into`].
    fn read_at_into(
        &self,
        path: &Path,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()>;
    /// See [`Vfs::len`].
    fn file_len(&self, path: &Path) -> std::io::Result<u64>;
}

impl<V: Vfs> ReadFs for V {
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        Vfs::read_at(self, path, offset, len)
    }
    fn read_at_into(
        &self,
        path: &Path,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        Vfs::read_at_into(self, path, offset, len, buf)
    }
    fn file_len(&self, path: &Path) -> std::io::Result<u64> {
        Vfs::len(self, path)
    }
}

/// A segment as a reader sees it.
#[derive(Debug, Clone)]
pub struct SegmentRef {
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
}

/// Iterates over records with `seq >= from` and `seq <= upto`, oldest first.
pub struct WalReader {
    fs: Arc<dyn ReadFs>,
    segments: Vec<SegmentRef>,
    next_segment: usize,
    from: u64,
    upto: u64,
    buffered: std::vec::IntoIter<Record>,
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("from", &self.from)
            .field("upto", &self.upto)
            .finish()
    }
}

impl WalReader {
    /// A reader over `segments` (oldest first) for records in `from..=upto`.
    pub fn new(fs: Arc<dyn ReadFs>, segments: Vec<SegmentRef>, from: u64, upto: u64) -> Self {
        // Skip segments that end before `from`: a segment ends where the next one starts.
        let mut start = 0;
        while start + 1 < segments.len() && segments[start + 1].first_seq <= from {
            start += 1;
        }
        Self {
            fs,
            segments,
            next_segment: start,
            from,
            upto,
            buffered: Vec::new().into_iter(),
        }
    }

    fn load_next(&mut self) -> Result<bool, WalError> {
        while let Some(seg) = self.segments.get(self.next_segment) {
            self.next_segment += 1;
            if seg.first_seq > self.upto {
                return Ok(false);
            }
            let len = match self.fs.file_len(&seg.path) {
                Ok(len) => len,
                // Deleted by truncation while we were reading: its records are consumed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(WalError::Io {
                        op: "stat segment",
                        path: seg.path.clone(),
                        source,
                    });
                }
            };
            let bytes = self
                .fs
                .read_at(&seg.path, 0, len as usize)
                .map_err(|source| WalError::Io {
                    op: "read segment",
                    path: seg.path.clone(),
                    source,
                })?;
            let scan = scan_segment(&bytes);
            let (from, upto) = (self.from, self.upto);
            let records: Vec<Record> = scan
                .records
                .iter()
                .filter(|r| r.seq >= from && r.seq <= upto)
                .map(|r| Record {
                    seq: r.seq,
                    time_ns: r.time_ns,
                    payload: r.payload.to_vec(),
                    segment: seg.first_seq,
                    offset: r.offset,
                })
                .collect();
            if !records.is_empty() {
                self.buffered = records.into_iter();
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Iterator for WalReader {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.buffered.next() {
                return Some(Ok(r));
            }
            match self.load_next() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// What a read-only scan found in one segment file.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// Sequence number from its name.
    pub first_seq: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Valid records.
    pub records: u64,
    /// Bytes after the valid part.
    pub invalid_bytes: u64,
    /// Why the valid part ended early, if it did.
    pub problem: Option<String>,
}

/// A read-only view of a WAL directory.
#[derive(Debug, Clone, Default)]
pub struct DirScan {
    /// Segments in order.
    pub segments: Vec<SegmentReport>,
    /// Files that are not segments.
    pub ignored: Vec<PathBuf>,
    /// Files already in quarantine.
    pub quarantined: Vec<PathBuf>,
}

impl DirScan {
    /// Problems that recovery would treat as corruption (anything but a torn tail of the
    /// last segment).
    pub fn corrupt_segments(&self) -> Vec<&SegmentReport> {
        let last = self.segments.len().saturating_sub(1);
        self.segments
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                s.problem.is_some()
                    && (*i != last || s.problem.as_deref().is_some_and(|p| p.contains("header")))
            })
            .map(|(_, s)| s)
            .collect()
    }
}

/// Scans a WAL directory without changing anything. `visit` sees every valid record.
pub fn scan_dir(
    dir: &Path,
    mut visit: impl FnMut(&SegmentRef, &crate::format::RecordRef<'_>),
) -> Result<DirScan, WalError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| WalError::Io { op, path, source }
    };
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    let mut out = DirScan::default();
    for entry in std::fs::read_dir(dir).map_err(io("read directory", dir))? {
        let entry = entry.map_err(io("read directory", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if name == crate::core::QUARANTINE_DIR {
                for q in std::fs::read_dir(&path).map_err(io("read directory", &path))? {
                    let q = q.map_err(io("read directory", &path))?;
                    out.quarantined.push(q.path());
                }
            }
            continue;
        }
        match parse_segment_file_name(&name) {
            Some(seq) => names.push((seq, path)),
            None => out.ignored.push(path),
        }
    }
    names.sort();
    out.quarantined.sort();
    for (first_seq, path) in names {
        let bytes = std::fs::read(&path).map_err(io("read segment", &path))?;
        let scan = scan_segment(&bytes);
        let seg = SegmentRef {
            first_seq,
            path: path.clone(),
        };
        for r in &scan.records {
            visit(&seg, r);
        }
        out.segments.push(SegmentReport {
            path,
            first_seq,
            len: bytes.len() as u64,
            records: scan.records.len() as u64,
            invalid_bytes: bytes.len() as u64 - scan.valid_len,
            problem: scan.problem,
        });
    }
    Ok(out)
}
