//! The single-threaded heart of the WAL: recovery at open, appending framed records to the
//! active segment, syncing, rolling segments, and deleting segments a consumer no longer
//! needs.
//!
//! [`WalCore`] does no locking and spawns nothing, so it is driven directly by the
//! model-based tests; [`crate::Wal`] runs one on a dedicated thread and adds group commit.
//! The on-disk layout it writes is documented in [`crate::format`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::WalError;
use crate::format::{
    self, SEGMENT_HEADER_LEN, encode_record, encode_segment_header, parse_segment_file_name,
    scan_segment, segment_file_name,
};
use crate::vfs::{Vfs, VfsFile};

/// Name of the directory (inside the WAL directory) that receives corrupt files.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Durability of an acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after fdatasync of the record returned (the default).
    #[default]
    Fsync,
    /// Acknowledge after write(): survives a process crash, not a power failure.
    Os,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(Self::Fsync),
            "os" => Ok(Self::Os),
            other => Err(format!(
                "unknown durability mode {other:?}; use \"fsync\" (default) or \"os\""
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fsync => "fsync",
            Self::Os => "os",
        })
    }
}

/// Settings of a WAL.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment is sealed once it reaches this size.
    pub segment_bytes: u64,
    /// Total size of all segments beyond which appends are refused (retryably).
    pub max_bytes: u64,
    /// When an append is acknowledged.
    pub durability: Durability,
    /// Largest group-commit batch, in payload bytes.
    pub max_batch_bytes: usize,
    /// In `os` mode, how often written data is synced in the background.
    pub os_sync_interval: std::time::Duration,
    /// The lowest sequence number the next record may get. The binary sets it past the
    /// store's `source_seq` (the position up to which the store sealed in order, and above
    /// which it replays; not `durable_seq`, which lags behind a pending backlog), so a WAL
    /// directory that lost its segments (deleted by hand, or restored from a backup) never
    /// hands out a number the store would skip as already sealed.
    pub min_next_seq: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_bytes: 4 << 30,
            durability: Durability::Fsync,
            max_batch_bytes: 32 << 20,
            os_sync_interval: std::time::Duration::from_secs(1),
            min_next_seq: 1,
        }
    }
}

/// A file that recovery moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where the file was.
    pub original: PathBuf,
    /// Where it is now.
    pub moved_to: PathBuf,
    /// Why it was moved.
    pub reason: String,
}

/// What recovery found and did at open.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments kept.
    pub segments: usize,
    /// Valid records kept.
    pub records: u64,
    /// Highest sequence number kept (0 when empty).
    pub last_seq: u64,
    /// Bytes cut from the torn tail of the last segment.
    pub truncated_bytes: u64,
    /// Why the tail was cut, if it was.
    pub truncation_reason: Option<String>,
    /// Segments moved to quarantine.
    pub quarantined: Vec<Quarantined>,
    /// Files in the directory that are not segments; left alone.
    pub ignored: Vec<PathBuf>,
}

/// A segment as the writer and readers know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its valid length in bytes.
    pub len: u64,
    /// Sequence number of its last record, if it has any.
    pub last_seq: Option<u64>,
}

struct Active<F> {
    file: F,
    index: usize,
}

/// The WAL writer without threads.
pub struct WalCore<V: Vfs> {
    vfs: Arc<V>,
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<SegmentMeta>,
    active: Option<Active<V::File>>,
    next_seq: u64,
    total_bytes: u64,
    buf: Vec<u8>,
    failed: Option<String>,
    unsynced: bool,
}

impl<V: Vfs> std::fmt::Debug for WalCore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalCore")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq)
            .field("total_bytes", &self.total_bytes)
            .field("failed", &self.failed)
            .finish()
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WalError {
    let path = path.to_path_buf();
    move |source| WalError::Io { op, path, source }
}

impl<V: Vfs> WalCore<V> {
    /// Opens (creating if needed) the WAL in `dir` and recovers it.
    ///
    /// Recovery never refuses to start because of a bad file: a torn tail of the last
    /// segment is truncated, a corrupt sealed segment (or any segment with a bad header) is
    /// moved to `quarantine/`, and files that are not segments are ignored. Only an I/O
    /// error on the directory itself is returned as an error.
    pub fn open(
        vfs: Arc<V>,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<(Self, RecoveryReport), WalError> {
        vfs.create_dir_all(dir)
            .map_err(io_err("create directory", dir))?;
        let names = vfs.list_files(dir).map_err(io_err("list directory", dir))?;
        let mut report = RecoveryReport::default();
        let mut seg_names: Vec<(u64, String)> = Vec::new();
        for name in names {
            match parse_segment_file_name(&name) {
                Some(seq) => seg_names.push((seq, name)),
                None => {
                    let path = dir.join(&name);
                    tracing::warn!(path = %path.display(), "ignoring a file that is not a WAL segment");
                    report.ignored.push(path);
                }
            }
        }
        seg_names.sort();
        let mut segments: Vec<SegmentMeta> = Vec::new();
        let mut next_seq = 1u64;
        let count = seg_names.len();
        // One buffer for every segment, made as large as the segment before reading: a
        // segment runs past its nominal size by up to a record, and reading one into a
        // buffer reserved short doubled it (a 64 MiB copy and 128 MiB of fresh pages per
        // segment, about 3% of the CPU of a restart replaying 1.6 GB of WAL).
        let mut bytes = Vec::new();
        for (i, (name_seq, name)) in seg_names.into_iter().enumerate() {
            let path = dir.join(&name);
            let is_last = i + 1 == count;
            let len = vfs.len(&path).map_err(io_err("stat segment", &path))?;
            bytes.clear();
            bytes.reserve(len as usize);
            vfs.read_at_into(&path, 0, len as usize, &mut bytes)
                .map_err(io_err("read segment", &path))?;
            let scan = scan_segment(&bytes);
            // Never hand out a sequence number twice, even around a quarantined segment.
            let highest_seen = scan.records.last().map(|r| r.seq).unwrap_or(name_seq);
            let problem = match (&scan.header, &scan.problem) {
                (None, p) => Some(p.clone().unwrap_or_else(|| "bad header".into())),
                (Some(h), _) if h.first_seq != name_seq => Some(format!(
                    "header says first sequence {} but the file name says {name_seq}",
                    h.first_seq
                )),
                (Some(_), _) if name_seq < next_seq && !segments.is_empty() => Some(format!(
                    "starts at sequence {name_seq}, which overlaps the previous segment (next expected {next_seq})"
                )),
                (Some(_), Some(p)) if !is_last => Some(format!("corrupt sealed segment: {p}")),
                _ => None,
            };
            if let Some(reason) = problem {
                let moved_to = quarantine(&*vfs, dir, &path)?;
                tracing::error!(
                    path = %path.display(), moved_to = %moved_to.display(), %reason,
                    "moved a corrupt WAL segment to quarantine"
                );
                report.quarantined.push(Quarantined {
                    original: path,
                    moved_to,
                    reason,
                });
                next_seq = next_seq.max(highest_seen.saturating_add(1));
                continue;
            }
            let mut valid_len = scan.valid_len;
            if let Some(p) = &scan.problem {
                // Last segment: a torn tail from a crash. Cut it.
                let cut = len - valid_len;
                vfs.truncate(&path, valid_len)
                    .map_err(io_err("truncate torn tail of", &path))?;
                tracing::warn!(path = %path.display(), bytes = cut, reason = %p, "truncated the torn tail of the last WAL segment");
                report.truncated_bytes = cut;
                report.truncation_reason = Some(p.clone());
            }
            if scan.header.is_some() && valid_len < SEGMENT_HEADER_LEN as u64 {
                valid_len = SEGMENT_HEADER_LEN as u64;
            }
            let last_seq = scan.records.last().map(|r| r.seq);
            report.records += scan.records.len() as u64;
            if let Some(l) = last_seq {
                next_seq = next_seq.max(l + 1);
            } else {
                next_seq = next_seq.max(name_seq);
            }
            segments.push(SegmentMeta {
                first_seq: name_seq,
                path,
                len: valid_len,
                last_seq,
            });
        }
        if opts.min_next_seq > next_seq {
            tracing::info!(
                from = next_seq,
                to = opts.min_next_seq,
                "WAL numbering continues after the store's durable position"
            );
            next_seq = opts.min_next_seq;
        }
        report.segments = segments.len();
        report.last_seq = next_seq - 1;
        let total_bytes = segments.iter().map(|s| s.len).sum();
        let mut core = Self {
            vfs,
            dir: dir.to_path_buf(),
            opts,
            segments,
            active: None,
            next_seq,
            total_bytes,
            buf: Vec::new(),
            failed: None,
            unsynced: false,
        };
        // Keep appending to the last segment if it has room and is the segment where the
        // next sequence number belongs.
        if let Some(last) = core.segments.last() {
            let continues = last.last_seq.map(|l| l + 1).unwrap_or(last.first_seq) == next_seq;
            if continues && last.len < core.opts.segment_bytes {
                let file = core
                    .vfs
                    .open_append(&last.path)
                    .map_err(io_err("open segment", &last.path))?;
                core.active = Some(Active {
                    file,
                    index: core.segments.len() - 1,
                });
            }
        }
        Ok((core, report))
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Total bytes of all segments.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> &[SegmentMeta] {
        &self.segments
    }

    /// The options in force.
    pub fn options(&self) -> &WalOptions {
        &self.opts
    }

    /// Whether records were written since the last successful sync.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// Why the WAL stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Whether `payload_bytes` more bytes of payload in `records` records fit the budget.
    pub fn fits(&self, records: usize, payload_bytes: usize) -> bool {
        let framed = payload_bytes as u64 + (records * format::RECORD_HEADER_LEN) as u64;
        self.total_bytes + framed + SEGMENT_HEADER_LEN as u64 <= self.opts.max_bytes
    }

    fn fail(&mut self, reason: String) -> WalError {
        tracing::error!(%reason, "the WAL stops accepting writes");
        self.failed = Some(reason.clone());
        WalError::Failed { reason }
    }

    fn check_failed(&self) -> Result<(), WalError> {
        match &self.failed {
            Some(reason) => Err(WalError::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn ensure_active(&mut self) -> Result<(), WalError> {
        if self.active.is_some() {
            return Ok(());
        }
        let path = self.dir.join(segment_file_name(self.next_seq));
        let created_ms = now_ns() / 1_000_000;
        let header = encode_segment_header(self.next_seq, created_ms);
        let result = (|| {
            // A leftover file of the same name (possible only after a crash while creating
            // it, with nothing acknowledged in it) is replaced.
            if self.vfs.len(&path).is_ok() {
                self.vfs.remove(&path)?;
            }
            let mut file = self.vfs.open_append(&path)?;
            file.write_all(&header)?;
            file.sync_data()?;
            self.vfs.sync_dir(&self.dir)?;
            Ok::<_, std::io::Error>(file)
        })();
        match result {
            Ok(file) => {
                self.segments.push(SegmentMeta {
                    first_seq: self.next_seq,
                    path,
                    len: SEGMENT_HEADER_LEN as u64,
                    last_seq: None,
                });
                self.total_bytes += SEGMENT_HEADER_LEN as u64;
                self.active = Some(Active {
                    file,
                    index: self.segments.len() - 1,
                });
                Ok(())
            }
            Err(e) if is_no_space(&e) => {
                // Nothing was acknowledged in this file: remove it so the directory stays
                // clean, and refuse retryably.
                let _ = self.vfs.remove(&path);
                Err(WalError::NoSpace { path })
            }
            Err(e) => Err(self.fail(format!("creating segment {} failed: {e}", path.display()))),
        }
    }

    /// Writes `payloads` as consecutive records (not yet durable) and returns the sequence
    /// number of the first. All or none are written.
    pub fn append(&mut self, payloads: &[&[u8]], time_ns: u64) -> Result<u64, WalError> {
        self.append_at(payloads, time_ns).map(|(first, _)| first)
    }

    /// [`WalCore::append`], also returning where the first record starts: the first
    /// sequence number of its segment and its byte offset there (the following records
    /// follow it, [`format::framed_len`] apart).
    pub fn append_at(
        &mut self,
        payloads: &[&[u8]],
        time_ns: u64,
    ) -> Result<(u64, (u64, u64)), WalError> {
        self.check_failed()?;
        if payloads.is_empty() {
            return Ok((self.next_seq, (0, 0)));
        }
        for p in payloads {
            if p.len() > format::MAX_PAYLOAD {
                return Err(WalError::RecordTooLarge {
                    len: p.len(),
                    max: format::MAX_PAYLOAD,
                });
            }
        }
        let bytes: usize = payloads.iter().map(|p| p.len()).sum();
        if !self.fits(payloads.len(), bytes) {
            return Err(WalError::Full {
                size: self.total_bytes,
                max: self.opts.max_bytes,
            });
        }
        self.ensure_active()?;
        let first = self.next_seq;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut buf, first + i as u64, time_ns, p);
        }
        let result = self.write_active(&buf);
        self.buf = buf;
        let written = result?;
        let Some(active) = self.active.as_ref() else {
            return Err(self.fail("active segment vanished".into()));
        };
        let seg = &mut self.segments[active.index];
        let at = (seg.first_seq, seg.len);
        seg.len += written;
        seg.last_seq = Some(first + payloads.len() as u64 - 1);
        self.total_bytes += written;
        self.next_seq += payloads.len() as u64;
        self.unsynced = true;
        Ok((first, at))
    }

    fn write_active(&mut self, buf: &[u8]) -> Result<u64, WalError> {
        let Some(active) = self.active.as_mut() else {
            return Err(self.fail("no active segment".into()));
        };
        let seg_len = self.segments[active.index].len;
        let path = self.segments[active.index].path.clone();
        match active.file.write_all(buf) {
            Ok(()) => Ok(buf.len() as u64),
            Err(e) if is_no_space(&e) => {
                // Undo the partial write so the segment ends on a record boundary; the
                // records before it were already synced (or are synced next). If the undo
                // fails too, the file's state is unknown and we stop.
                match active.file.set_len(seg_len) {
                    Ok(()) => Err(WalError::NoSpace { path }),
                    Err(e2) => Err(self.fail(format!(
                        "write to {} failed ({e}) and undoing it failed ({e2})",
                        path.display()
                    ))),
                }
            }
            Err(e) => Err(self.fail(format!("write to {} failed: {e}", path.display()))),
        }
    }

    /// Makes every record appended so far durable. An error here is final: the WAL stops
    /// accepting writes, because after a failed fsync the kernel may have dropped the dirty
    /// pages and a retried fsync could report success for data that is gone.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_failed()?;
        if !self.unsynced {
            return Ok(());
        }
        if let Some(active) = self.active.as_mut()
            && let Err(e) = active.file.sync_data()
        {
            let path = self.segments[active.index].path.display().to_string();
            return Err(self.fail(format!("fdatasync of {path} failed: {e}")));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Seals the active segment if it is full. Call after [`WalCore::sync`].
    pub fn maybe_roll(&mut self) -> Result<(), WalError> {
        let full = match &self.active {
            Some(a) => self.segments[a.index].len >= self.opts.segment_bytes,
            None => false,
        };
        if full {
            self.sync()?;
            self.active = None;
        }
        Ok(())
    }

    /// Deletes every sealed segment whose records all precede `seq`, oldest first, and
    /// returns how many were deleted. The active segment is never deleted.
    pub fn truncate_before(&mut self, seq: u64) -> Result<usize, WalError> {
        let active_index = self.active.as_ref().map(|a| a.index);
        let mut removable = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            // The active segment is written to; the last one, even when full and not
            // active, is what tells the next start where numbering continues.
            if Some(i) == active_index || i + 1 == self.segments.len() {
                break;
            }
            let next_first = self
                .segments
                .get(i + 1)
                .map(|s| s.first_seq)
                .unwrap_or(self.next_seq);
            let end = seg.last_seq.map(|l| l + 1).unwrap_or(next_first);
            if end <= seq {
                removable += 1;
            } else {
                break;
            }
        }
        if removable == 0 {
            return Ok(0);
        }
        for seg in &self.segments[..removable] {
            self.vfs
                .remove(&seg.path)
                .map_err(io_err("remove segment", &seg.path))?;
        }
        self.vfs
            .sync_dir(&self.dir)
            .map_err(io_err("sync directory", &self.dir))?;
        let freed: u64 = self.segments[..removable].iter().map(|s| s.len).sum();
        self.segments.drain(..removable);
        self.total_bytes -= freed;
        if let Some(a) = self.active.as_mut() {
            a.index -= removable;
        }
        Ok(removable)
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn quarantine<V: Vfs>(vfs: &V, dir: &Path, path: &Path) -> Result<PathBuf, WalError> {
    let qdir = dir.join(QUARANTINE_DIR);
    vfs.create_dir_all(&qdir)
        .map_err(io_err("create quarantine directory", &qdir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "segment".into());
    let moved_to = qdir.join(format!("{name}.{}", now_ns()));
    vfs.rename(path, &moved_to)
        .map_err(io_err("move to quarantine", path))?;
    vfs.sync_dir(dir).map_err(io_err("sync directory", dir))?;
    vfs.sync_dir(&qdir)
        .map_err(io_err("sync directory", &qdir))?;
    Ok(moved_to)
}
