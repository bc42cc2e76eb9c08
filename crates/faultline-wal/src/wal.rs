//! The threaded WAL: group commit on a dedicated thread, acknowledgements through oneshot
//! channels, consumer cursors.
//!
//! Group commit: every append is a message to one writer thread. The thread takes the first
//! waiting message, drains every other message already queued (up to
//! [`WalOptions::max_batch_bytes`]), writes them all with one `write`, calls fdatasync once,
//! and only then answers each caller. While it syncs, new appends queue up and form the
//! next batch, so the number of fsyncs per second adapts to the load and each append waits
//! for at most about two fsyncs. Nothing blocking ever runs on the async executor.
//!
//! Failure: a failed write or fsync is final for this process. The writer answers every
//! waiting and later append with [`WalError::Failed`]; callers reject their requests with a
//! retryable error and readiness turns false. Restarting recovers from what is on disk.
//!
//! Cursor files live in `cursors/NAME.cursor` (16 bytes, little endian):
//! ```text
//!   0  8  magic   b"FLTCURS1"
//!   8  8  seq     every record with a sequence number below this one is consumed
//!  16  4  crc     CRC32C of bytes 0..16
//! ```
//! They are written atomically (temporary file, fsync, rename, fsync of the directory).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::core::{Durability, RecoveryReport, WalCore, WalOptions, now_ns};
use crate::error::WalError;
use crate::reader::{ReadFs, SegmentRef, WalReader};
use crate::vfs::{StdFs, Vfs};

/// Receives timings from the writer thread (for metrics). Calls happen on that thread and
/// must be quick.
pub trait WalObserver: Send + Sync + 'static {
    /// One group commit: records and bytes written, time to write, time to fsync (zero in
    /// `os` mode).
    fn batch(&self, _records: usize, _bytes: u64, _write: Duration, _sync: Duration) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;
impl WalObserver for NoopObserver {}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Its sequence number.
    pub seq: u64,
    /// The first sequence number of the segment holding it (which names the file).
    pub segment: u64,
    /// Byte offset of its record header in that segment ([`Wal::read_record`]).
    pub offset: u64,
}

/// An append waiting for its group commit: the payload and where to send the answer.
type Pending = (Vec<u8>, oneshot::Sender<Result<Ack, WalError>>);

enum Command {
    Append {
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Ack, WalError>>,
    },
    TruncateBefore {
        seq: u64,
        reply: oneshot::Sender<Result<usize, WalError>>,
    },
}

struct Shared {
    committed_seq: AtomicU64,
    total_bytes: AtomicU64,
    failed: Mutex<Option<String>>,
    segments: Mutex<Vec<SegmentRef>>,
}

struct Inner {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    fs: Arc<dyn ReadFs>,
    dir: PathBuf,
    opts: WalOptions,
    write_vfs: Arc<dyn CursorFs>,
}

/// A handle on an open WAL; cheap to clone. The writer thread stops when the last handle
/// is dropped, after finishing the batch in hand.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.inner.dir).finish()
    }
}

/// The writes cursors need, object-safe.
trait CursorFs: Send + Sync {
    fn write_atomic(&self, path: &Path, data: &[u8]) -> std::io::Result<()>;
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()>;
}

impl<V: Vfs> CursorFs for V {
    fn write_atomic(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        Vfs::write_atomic(self, path, data)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        Vfs::create_dir_all(self, dir)
    }
}

impl Wal {
    /// Opens the WAL in `dir` on the real file system, recovers it and starts the writer.
    pub fn open(
        dir: &Path,
        opts: WalOptions,
        observer: Arc<dyn WalObserver>,
    ) -> Result<(Self, RecoveryReport), WalError> {
        Self::open_with(Arc::new(StdFs), dir, opts, observer)
    }

    /// Like [`Wal::open`] with any file system (tests use a simulated one).
    pub fn open_with<V: Vfs>(
        vfs: Arc<V>,
        dir: &Path,
        opts: WalOptions,
        observer: Arc<dyn WalObserver>,
    ) -> Result<(Self, RecoveryReport), WalError> {
        let (core, report) = WalCore::open(vfs.clone(), dir, opts.clone())?;
        let shared = Arc::new(Shared {
            committed_seq: AtomicU64::new(core.next_seq() - 1),
            total_bytes: AtomicU64::new(core.total_bytes()),
            failed: Mutex::new(None),
            segments: Mutex::new(segment_refs(&core)),
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer_loop(core, rx, thread_shared, observer))
            .map_err(|source| WalError::Io {
                op: "start writer thread for",
                path: dir.to_path_buf(),
                source,
            })?;
        let fs: Arc<dyn ReadFs> = vfs.clone();
        let write_vfs: Arc<dyn CursorFs> = vfs;
        Ok((
            Self {
                inner: Arc::new(Inner {
                    tx,
                    shared,
                    fs,
                    dir: dir.to_path_buf(),
                    opts,
                    write_vfs,
                }),
            },
            report,
        ))
    }

    /// Appends one record and waits until it is durable (per the durability mode).
    pub async fn append(&self, payload: Vec<u8>) -> Result<Ack, WalError> {
        let rx = self.submit(payload)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Appends one record and blocks the calling thread until it is durable. Not for use
    /// on the async executor.
    pub fn append_blocking(&self, payload: Vec<u8>) -> Result<Ack, WalError> {
        let rx = self.submit(payload)?;
        rx.blocking_recv().map_err(|_| WalError::Closed)?
    }

    fn submit(
        &self,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<Ack, WalError>>, WalError> {
        if let Some(reason) = self.failure() {
            return Err(WalError::Failed { reason });
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Append { payload, reply })
            .map_err(|_| WalError::Closed)?;
        Ok(rx)
    }

    /// Deletes sealed segments whose records all precede `seq` (a consumer's checkpoint).
    pub async fn truncate_before(&self, seq: u64) -> Result<usize, WalError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Command::TruncateBefore { seq, reply })
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Highest acknowledged sequence number (0 when empty).
    pub fn committed_seq(&self) -> u64 {
        self.inner.shared.committed_seq.load(Ordering::Acquire)
    }

    /// Total size of the segments in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.inner.shared.total_bytes.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn options(&self) -> &WalOptions {
        &self.inner.opts
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Why the WAL stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner
            .shared
            .failed
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Records from `from` up to the committed high-water mark, oldest first.
    pub fn read_from(&self, from: u64) -> WalReader {
        let segments = self
            .inner
            .shared
            .segments
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        WalReader::new(self.inner.fs.clone(), segments, from, self.committed_seq())
    }

    /// The committed record `seq` at the place its [`Ack`] named (`segment`, `offset`),
    /// checked (magic, sequence number, CRC) as any read is. `Ok(None)` when its segment
    /// is gone: truncation deletes a segment only once the store holds its records.
    pub fn read_record(
        &self,
        seq: u64,
        segment: u64,
        offset: u64,
    ) -> Result<Option<crate::reader::Record>, WalError> {
        if seq > self.committed_seq() {
            return Ok(None);
        }
        let seg = self
            .inner
            .shared
            .segments
            .lock()
            .map(|g| g.iter().find(|s| s.first_seq == segment).cloned())
            .unwrap_or_else(|p| {
                p.into_inner()
                    .iter()
                    .find(|s| s.first_seq == segment)
                    .cloned()
            });
        let Some(seg) = seg else {
            return Ok(None);
        };
        let fs = &self.inner.fs;
        let io = |op: &'static str| {
            let path = seg.path.clone();
            move |source| WalError::Io { op, path, source }
        };
        let read = |len: usize| match fs.read_at(&seg.path, offset, len) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            other => other.map(Some).map_err(io("read record")),
        };
        let bad = |detail: String| WalError::BadRecord {
            seq,
            offset,
            path: seg.path.clone(),
            detail,
        };
        let Some(header) = read(crate::format::RECORD_HEADER_LEN)? else {
            return Ok(None);
        };
        let len = match header.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            Some(b) => (u32::from_le_bytes(b) as usize).min(crate::format::MAX_PAYLOAD),
            None => return Err(bad("the segment ends inside its header".into())),
        };
        let Some(bytes) = read(crate::format::framed_len(len) as usize)? else {
            return Ok(None);
        };
        let rec = crate::format::decode_record_at(&bytes, 0, seq).map_err(bad)?;
        Ok(Some(crate::reader::Record {
            seq: rec.seq,
            time_ns: rec.time_ns,
            payload: rec.payload.to_vec(),
            segment,
            offset,
        }))
    }

    /// A reader that follows the log from `from`, reading only new bytes on each poll.
    pub fn tail(&self, from: u64) -> Tailer {
        Tailer {
            wal: self.clone(),
            next_seq: from.max(1),
            pos: None,
            buf: ReadBuf::default(),
        }
    }

    /// Blocking form of [`Wal::truncate_before`], for consumer threads.
    pub fn truncate_before_blocking(&self, seq: u64) -> Result<usize, WalError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Command::TruncateBefore { seq, reply })
            .map_err(|_| WalError::Closed)?;
        rx.blocking_recv().map_err(|_| WalError::Closed)?
    }

    /// The named consumer cursor.
    pub fn cursor(&self, name: &str) -> Result<Cursor, WalError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(WalError::BadCursor {
                path: self.inner.dir.join("cursors").join(name),
                reason: "cursor names use letters, digits, '-' and '_' only".into(),
            });
        }
        let path = self
            .inner
            .dir
            .join("cursors")
            .join(format!("{name}.cursor"));
        let position = match self.inner.fs.read_at(&path, 0, 64) {
            Ok(bytes) => decode_cursor(&bytes).map_err(|reason| WalError::BadCursor {
                path: path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(source) => {
                return Err(WalError::Io {
                    op: "read cursor",
                    path,
                    source,
                });
            }
        };
        Ok(Cursor {
            wal: self.clone(),
            path,
            position,
        })
    }
}

fn segment_refs<V: Vfs>(core: &WalCore<V>) -> Vec<SegmentRef> {
    core.segments()
        .iter()
        .map(|s| SegmentRef {
            first_seq: s.first_seq,
            path: s.path.clone(),
        })
        .collect()
}

/// Follows the WAL: each [`Tailer::poll`] returns the committed records after the last
/// one returned, reading only bytes it has not read before (a consumer polling an active
/// 64 MiB segment must not re-read it each time).
#[derive(Debug)]
pub struct Tailer {
    wal: Wal,
    next_seq: u64,
    /// Segment being read and the byte offset of the record carrying `next_seq`.
    pos: Option<(SegmentRef, u64)>,
    /// The bytes of the last read, kept for the next one (see [`Vfs::read_at_into`]).
    buf: ReadBuf,
}

/// A read buffer whose `Debug` shows its size, not its bytes.
#[derive(Default)]
struct ReadBuf(Vec<u8>);

impl std::fmt::Debug for ReadBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadBuf({} bytes)", self.0.len())
    }
}

impl Tailer {
    /// Sequence number of the next record this tailer will return.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Up to about `max_bytes` of committed records after the last ones returned (at least
    /// one record when one is committed). Blocking file reads: call from a blocking
    /// context. Records lost to a quarantined or truncated segment are skipped.
    pub fn poll(&mut self, max_bytes: usize) -> Result<Vec<crate::reader::Record>, WalError> {
        let committed = self.wal.committed_seq();
        let mut out = Vec::new();
        let mut budget = max_bytes;
        while self.next_seq <= committed && budget > 0 {
            let Some((seg, offset)) = self.locate()? else {
                break;
            };
            let fs = &self.wal.inner.fs;
            let io = |op: &'static str| {
                let path = seg.path.clone();
                move |source| WalError::Io { op, path, source }
            };
            let len = match fs.file_len(&seg.path) {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Truncated under us: find where the next record lives now.
                    self.pos = None;
                    continue;
                }
                Err(e) => return Err(io("stat segment")(e)),
            };
            let want = (len.saturating_sub(offset) as usize)
                .min(budget.max(crate::format::RECORD_HEADER_LEN));
            let bytes = &mut self.buf.0;
            fs.read_at_into(&seg.path, offset, want, bytes)
                .map_err(io("read segment"))?;
            let mut at = 0usize;
            let mut progressed = false;
            loop {
                if self.next_seq > committed {
                    break;
                }
                match crate::format::decode_record_at(bytes, at, self.next_seq) {
                    Ok(rec) => {
                        let framed = crate::format::framed_len(rec.payload.len()) as usize;
                        out.push(crate::reader::Record {
                            seq: rec.seq,
                            time_ns: rec.time_ns,
                            payload: rec.payload.to_vec(),
                            segment: seg.first_seq,
                            offset: offset + at as u64,
                        });
                        at += framed;
                        self.next_seq += 1;
                        budget = budget.saturating_sub(framed);
                        progressed = true;
                        if budget == 0 {
                            break;
                        }
                    }
                    Err(_) if at == 0 && (bytes.len() as u64) < len - offset => {
                        // One record larger than the budget: read it whole, and only it.
                        // (Reading the rest of the segment here, as this once did, made
                        // every poll that ended on a large record read tens of megabytes
                        // into a buffer then dropped as oversized: a sixth of the
                        // pipeline thread in a catch-up, copying and zeroing pages.)
                        let Some(framed) = crate::format::record_framed_len(bytes) else {
                            break;
                        };
                        let want = framed.min(len - offset);
                        if want <= bytes.len() as u64 {
                            break;
                        }
                        fs.read_at_into(&seg.path, offset, want as usize, bytes)
                            .map_err(io("read segment"))?;
                        if crate::format::decode_record_at(bytes, 0, self.next_seq).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            self.pos = Some((seg.clone(), offset + at as u64));
            if !progressed {
                // Nothing more here: move on if a later segment holds the next record.
                let later = self
                    .segments()
                    .into_iter()
                    .find(|s| s.first_seq > seg.first_seq);
                match later {
                    Some(next) if next.first_seq <= self.next_seq || offset + at as u64 >= len => {
                        self.next_seq = self.next_seq.max(next.first_seq);
                        self.pos = Some((next, crate::format::SEGMENT_HEADER_LEN as u64));
                    }
                    _ => break,
                }
            }
        }
        // A record larger than the budget made the buffer large: do not keep that.
        if self.buf.0.capacity() > max_bytes.max(1 << 20).saturating_mul(2) {
            self.buf = ReadBuf::default();
        }
        Ok(out)
    }

    fn segments(&self) -> Vec<SegmentRef> {
        self.wal
            .inner
            .shared
            .segments
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The segment and offset of `next_seq`, scanning its segment once if needed.
    fn locate(&mut self) -> Result<Option<(SegmentRef, u64)>, WalError> {
        if let Some(p) = &self.pos {
            return Ok(Some(p.clone()));
        }
        let segs = self.segments();
        let Some(first) = segs.first() else {
            return Ok(None);
        };
        if self.next_seq < first.first_seq {
            self.next_seq = first.first_seq;
        }
        let Some(seg) = segs
            .iter()
            .rev()
            .find(|s| s.first_seq <= self.next_seq)
            .cloned()
        else {
            return Ok(None);
        };
        let mut offset = crate::format::SEGMENT_HEADER_LEN as u64;
        if seg.first_seq < self.next_seq {
            let fs = &self.wal.inner.fs;
            let len = fs.file_len(&seg.path).map_err(|source| WalError::Io {
                op: "stat segment",
                path: seg.path.clone(),
                source,
            })?;
            let bytes = fs
                .read_at(&seg.path, 0, len as usize)
                .map_err(|source| WalError::Io {
                    op: "read segment",
                    path: seg.path.clone(),
                    source,
                })?;
            let scan = crate::format::scan_segment(&bytes);
            match scan.records.iter().find(|r| r.seq >= self.next_seq) {
                Some(r) => {
                    self.next_seq = r.seq;
                    offset = r.offset;
                }
                None => offset = scan.valid_len,
            }
        }
        self.pos = Some((seg.clone(), offset));
        Ok(Some((seg, offset)))
    }
}

const CURSOR_MAGIC: &[u8; 8] = b"FLTCURS1";

fn encode_cursor(seq: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(CURSOR_MAGIC);
    b.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode_cursor(b: &[u8]) -> Result<u64, String> {
    if b.len() != 20 {
        return Err(format!("{} bytes, expected 20", b.len()));
    }
    if &b[0..8] != CURSOR_MAGIC {
        return Err("bad magic number".into());
    }
    let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    if crc32c::crc32c(&b[0..16]) != crc {
        return Err("checksum mismatch".into());
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[8..16]);
    Ok(u64::from_le_bytes(s))
}

/// A named, durable consumer position.
#[derive(Debug)]
pub struct Cursor {
    wal: Wal,
    path: PathBuf,
    position: u64,
}

impl Cursor {
    /// The first sequence number not yet consumed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Records from the cursor's position up to the committed high-water mark.
    pub fn read(&self) -> WalReader {
        self.wal.read_from(self.position)
    }

    /// Durably records that every record below `next_seq` is consumed. Blocking (fsync):
    /// call from a blocking context.
    pub fn checkpoint(&mut self, next_seq: u64) -> Result<(), WalError> {
        let fs = &self.wal.inner.write_vfs;
        if let Some(parent) = self.path.parent() {
            fs.create_dir_all(parent).map_err(|source| WalError::Io {
                op: "create cursor directory",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        fs.write_atomic(&self.path, &encode_cursor(next_seq))
            .map_err(|source| WalError::Io {
                op: "write cursor",
                path: self.path.clone(),
                source,
            })?;
        self.position = next_seq;
        Ok(())
    }
}

fn writer_loop<V: Vfs>(
    mut core: WalCore<V>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    observer: Arc<dyn WalObserver>,
) {
    let opts = core.options().clone();
    let mut pending: Vec<Pending> = Vec::new();
    let mut last_sync = Instant::now();
    loop {
        let first = match opts.durability {
            Durability::Fsync => match rx.recv() {
                Ok(c) => c,
                Err(_) => break,
            },
            Durability::Os => match rx.recv_timeout(opts.os_sync_interval) {
                Ok(c) => c,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    background_sync(&mut core, &shared, &mut last_sync);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut later = None;
        let mut bytes = 0usize;
        match first {
            Command::Append { payload, reply } => {
                bytes += payload.len();
                pending.push((payload, reply));
            }
            other => later = Some(other),
        }
        while later.is_none() && bytes < opts.max_batch_bytes {
            match rx.try_recv() {
                Ok(Command::Append { payload, reply }) => {
                    bytes += payload.len();
                    pending.push((payload, reply));
                }
                Ok(other) => later = Some(other),
                Err(_) => break,
            }
        }
        if !pending.is_empty() {
            commit_batch(&mut core, &mut pending, &shared, &*observer);
        }
        if opts.durability == Durability::Os && last_sync.elapsed() >= opts.os_sync_interval {
            background_sync(&mut core, &shared, &mut last_sync);
        }
        if let Some(Command::TruncateBefore { seq, reply }) = later {
            let result = core.truncate_before(seq);
            publish(&core, &shared);
            let _ = reply.send(result);
        }
    }
    // Last handle gone: make what was written durable before the thread ends.
    let _ = core.sync();
}

fn background_sync<V: Vfs>(core: &mut WalCore<V>, shared: &Shared, last_sync: &mut Instant) {
    *last_sync = Instant::now();
    if core.sync().is_err() {
        publish(core, shared);
    }
}

fn publish<V: Vfs>(core: &WalCore<V>, shared: &Shared) {
    shared
        .total_bytes
        .store(core.total_bytes(), Ordering::Relaxed);
    if let Some(reason) = core.failure()
        && let Ok(mut f) = shared.failed.lock()
    {
        *f = Some(reason.to_string());
    }
    if let Ok(mut s) = shared.segments.lock() {
        *s = segment_refs(core);
    }
}

fn commit_batch<V: Vfs>(
    core: &mut WalCore<V>,
    pending: &mut Vec<Pending>,
    shared: &Shared,
    observer: &dyn WalObserver,
) {
    // Keep the prefix that fits the budget; the rest is refused retryably. Order is kept:
    // nothing after a refused record is accepted in this batch.
    let mut fit = 0usize;
    let mut fit_bytes = 0usize;
    for (p, _) in pending.iter() {
        if !core.fits(fit + 1, fit_bytes + p.len()) {
            break;
        }
        fit += 1;
        fit_bytes += p.len();
    }
    let refused: Vec<_> = pending.drain(fit..).collect();
    for (_, reply) in refused {
        let _ = reply.send(Err(WalError::Full {
            size: core.total_bytes(),
            max: core.options().max_bytes,
        }));
    }
    if pending.is_empty() {
        return;
    }
    let segments_before = core.segments().len();
    let started = Instant::now();
    let payloads: Vec<&[u8]> = pending.iter().map(|(p, _)| p.as_slice()).collect();
    let appended = core.append_at(&payloads, now_ns());
    let write_time = started.elapsed();
    let result = appended.and_then(|first| {
        let sync_started = Instant::now();
        if core.options().durability == Durability::Fsync {
            core.sync()?;
        }
        let sync_time = sync_started.elapsed();
        observer.batch(payloads.len(), fit_bytes as u64, write_time, sync_time);
        core.maybe_roll()?;
        Ok(first)
    });
    // Publish before answering, so a caller that sees its ack also sees the record as
    // committed.
    if core.segments().len() != segments_before || result.is_err() {
        publish(core, shared);
    } else {
        shared
            .total_bytes
            .store(core.total_bytes(), Ordering::Relaxed);
    }
    if result.is_ok() {
        shared
            .committed_seq
            .store(core.next_seq() - 1, Ordering::Release);
    }
    match result {
        Ok((first, (segment, mut offset))) => {
            for (i, (payload, reply)) in pending.drain(..).enumerate() {
                let _ = reply.send(Ok(Ack {
                    seq: first + i as u64,
                    segment,
                    offset,
                }));
                offset += crate::format::framed_len(payload.len());
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let retryable = e.is_retryable();
            for (_, reply) in pending.drain(..) {
                let err = if retryable {
                    match &e {
                        WalError::NoSpace { path } => WalError::NoSpace { path: path.clone() },
                        _ => WalError::Full {
                            size: core.total_bytes(),
                            max: core.options().max_bytes,
                        },
                    }
                } else {
                    WalError::Failed {
                        reason: msg.clone(),
                    }
                };
                let _ = reply.send(Err(err));
            }
        }
    }
}
