//! Column pages for reading a block's rows: the Parquet crate's page reader and Arrow
//! decoding, with zstd pages decompressed here through one decompression context per
//! thread.
//!
//! Why: the Parquet crate makes a fresh zstd compressor and decompressor (about 100 KiB
//! of zeroed state each) for every column chunk it opens. A trace lookup opens one chunk
//! per column, so on varied traffic creating those contexts cost as much CPU (17% of a
//! server answering trace lookups) as decompressing the pages themselves. Here each
//! column chunk is opened as if uncompressed, and every page it yields is decompressed
//! with the thread's context before Arrow decodes it. The bytes on disk are unchanged.
//!
//! Decompressed dictionary pages are kept across reads ([`DICT_CACHE_BYTES`], least
//! recently used evicted): every lookup in a row group needs the same dictionary of each
//! dictionary-encoded column, and decompressing them again for each lookup was 12% of a
//! server answering trace lookups on varied traffic (BENCHMARKS.md).
//!
//! One column of a read can be *marked* ([`read`]'s `marked`): Arrow is handed, instead of
//! that chunk's dictionary page, a page of short marker texts (`"\0GROUP:OFFSET"`, one
//! per entry, naming where the entry lies in the real page; kept like the real page),
//! and the real page goes to the caller ([`Found`]), who looks up only the entries its
//! rows name ([`marker`]). A marked column's own values must never start with a NUL
//! character (`resource_attributes` holds JSON objects), or they would read as markers.
//! Why: Arrow copies a string dictionary into a new array on every read; the block's
//! `resource_attributes` dictionary (every distinct resource's JSON: 284 KB for the 768
//! resources of a varied block) was copied for each trace looked up, 8% of a server
//! answering lookups.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use bytes::Bytes;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, RowGroups, RowSelection, RowSelector,
};
use parquet::arrow::{FieldLevels, ProjectionMask, parquet_to_arrow_field_levels};
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{Page, PageIterator, PageMetadata, PageReader};
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::properties::ReaderProperties;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;

thread_local! {
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Largest page a block may hold once decompressed. Pages are written at about 1 MiB
/// (Parquet's default limit; one row may exceed it, and attribute values are capped far
/// below this); a larger size in a frame's header is damage, refused before it is
/// allocated (a damaged size made `Vec::with_capacity` panic; found by `scripts/fuzz`).
const MAX_PAGE_BYTES: usize = 256 << 20;

/// Decompresses one zstd frame as Parquet writes them (the frame header carries the
/// content size; a frame without it is decoded by streaming), at most [`MAX_PAGE_BYTES`].
fn unzstd(frame: &[u8]) -> Result<Vec<u8>> {
    let too_big = |n: u64| {
        ParquetError::General(format!(
            "damaged block file: a zstd page of {n} bytes (at most {MAX_PAGE_BYTES})"
        ))
    };
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|e| ParquetError::General(format!("zstd page frame: {e}")))?;
    let Some(size) = size else {
        use std::io::Read;
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(frame)
            .and_then(|d| d.take(MAX_PAGE_BYTES as u64 + 1).read_to_end(&mut out))
            .map_err(|e| ParquetError::General(format!("zstd page: {e}")))?;
        if out.len() > MAX_PAGE_BYTES {
            return Err(too_big(out.len() as u64));
        }
        return Ok(out);
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|&n| n <= MAX_PAGE_BYTES)
        .ok_or_else(|| too_big(size))?;
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| ParquetError::General(format!("zstd context: {e}")))?,
            ),
        };
        let out = dctx
            .decompress(frame, size)
            .map_err(|e| ParquetError::General(format!("zstd page: {e}")))?;
        if out.len() != size {
            return Err(ParquetError::General(format!(
                "zstd page decompressed to {} bytes, its header says {size}",
                out.len()
            )));
        }
        Ok(out)
    })
}

/// The most bytes of decompressed dictionary pages kept across reads. Varied traffic's
/// dictionaries take about 0.43 MB per block of 250,000 spans (61.8 MB for 138 blocks of
/// 36M spans, BENCHMARKS.md), so this holds those of about 600 blocks, 150M spans; a
/// single dictionary larger than a quarter of it is not kept. A lookup in a block whose
/// dictionaries are not kept reads and decompresses them: at 36M spans with a cache
/// holding a quarter of them, lookups in random order took 0.63 ms at p50 against 0.40.
/// Search indexes keep about 30 bytes per span in memory; this is under 2.
pub(crate) const DICT_CACHE_BYTES: usize = 256 << 20;

/// A dictionary page's place: the reader's [`cache_id`], the row group, the column.
type DictKey = (u64, usize, usize);

/// Decompressed dictionary pages with the tick of their last use, and the keys by that
/// tick, so the least recently used page is found without a scan (with more blocks than
/// the budget holds, every read evicts, under the one lock all readers share; a full
/// cache holds some 18,000 pages).
#[derive(Default)]
struct Dicts {
    pages: HashMap<DictKey, (Page, u64)>,
    by_use: std::collections::BTreeMap<u64, DictKey>,
    bytes: usize,
    clock: u64,
}

static DICTS: LazyLock<Mutex<Dicts>> = LazyLock::new(|| Mutex::new(Dicts::default()));

/// A new identity for an opened block file's dictionaries (never reused in a process, so
/// a rewritten file opened again cannot meet the pages of the old one).
pub(crate) fn cache_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Drops the kept dictionaries of reader `id` (its block is closed).
pub(crate) fn forget(id: u64) {
    let mut d = DICTS.lock().unwrap_or_else(PoisonError::into_inner);
    d.pages.retain(|k, _| k.0 != id);
    d.by_use.retain(|_, k| k.0 != id);
    d.bytes = d.pages.values().map(|(p, _)| p.buffer().len()).sum();
}

/// Bytes of dictionary pages kept now.
pub fn dict_cache_bytes() -> usize {
    DICTS.lock().unwrap_or_else(PoisonError::into_inner).bytes
}

impl Dicts {
    fn get(&mut self, key: &DictKey) -> Option<Page> {
        self.clock += 1;
        let now = self.clock;
        let (page, used) = self.pages.get_mut(key)?;
        self.by_use.remove(used);
        *used = now;
        self.by_use.insert(now, *key);
        Some(page.clone())
    }

    fn put(&mut self, key: DictKey, page: Page, budget: usize) {
        let n = page.buffer().len();
        if n > budget / 4 {
            return;
        }
        self.clock += 1;
        if let Some((old, used)) = self.pages.insert(key, (page, self.clock)) {
            self.bytes -= old.buffer().len();
            self.by_use.remove(&used);
        }
        self.by_use.insert(self.clock, key);
        self.bytes += n;
        while self.bytes > budget {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.pages.remove(&oldest) {
                self.bytes -= old.buffer().len();
            }
        }
    }
}

/// The real dictionary pages of a marked column that one read met: (row group, the page,
/// decompressed). Arrow saw marker pages in their place.
pub(crate) type Found = Arc<Mutex<Vec<(usize, Page)>>>;

/// Marks [`DictKey`]s of marker pages apart from the real pages' keys in [`DICTS`].
const MARKER_KEY: usize = 1 << (usize::BITS - 1);

/// Writes `n` in decimal.
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// The marker page standing for dictionary page `real` of row group `group`: an entry
/// whose value starts at byte `offset` of the real page is the text `"\0GROUP:OFFSET"`, in
/// Parquet's plain encoding (a 4-byte length, then the bytes). `None` for a dictionary
/// page not in plain encoding (not written by Parquet's v1 writers) or whose entries run
/// past its end: Arrow is given the real one, and judges it.
fn marker_page(group: usize, real: &Page) -> Option<Page> {
    let Page::DictionaryPage {
        buf: values,
        num_values,
        encoding: Encoding::PLAIN | Encoding::PLAIN_DICTIONARY,
        is_sorted,
    } = real
    else {
        return None;
    };
    let mut buf = Vec::with_capacity(*num_values as usize * 16);
    let mut text = Vec::with_capacity(32);
    let mut at = 0usize;
    for _ in 0..*num_values {
        let len = values.get(at..at + 4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        text.clear();
        text.push(0);
        push_decimal(&mut text, group as u64);
        text.push(b':');
        push_decimal(&mut text, at as u64);
        at = at.checked_add(4 + len).filter(|&e| e <= values.len())?;
        buf.extend_from_slice(&(text.len() as u32).to_le_bytes());
        buf.extend_from_slice(&text);
    }
    Some(Page::DictionaryPage {
        buf: Bytes::from(buf),
        num_values: *num_values,
        encoding: Encoding::PLAIN,
        is_sorted: *is_sorted,
    })
}

/// The row group and entry offset a marker text names (see [`marker_page`]); `None` for
/// any other text (a real value: Arrow met no dictionary for this row, as in a page
/// written without one, or the chunk was not marked).
pub(crate) fn marker(text: &str) -> Option<(usize, usize)> {
    let (group, offset) = text.strip_prefix('\0')?.split_once(':')?;
    Some((group.parse().ok()?, offset.parse().ok()?))
}

/// The value of the plain-encoded dictionary entry at byte `offset` of `page`.
pub(crate) fn dictionary_entry(page: &Page, offset: usize) -> Result<&str> {
    let damaged = || {
        ParquetError::General(format!(
            "damaged block file: no dictionary entry of UTF-8 text at byte {offset}"
        ))
    };
    let buf = page.buffer().as_ref();
    let len = buf
        .get(offset..offset.saturating_add(4))
        .ok_or_else(damaged)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let start = offset + 4;
    let bytes = buf
        .get(start..start.saturating_add(len))
        .ok_or_else(damaged)?;
    std::str::from_utf8(bytes).map_err(|_| damaged())
}

/// A page reader over a zstd column chunk opened as uncompressed: decompresses each page,
/// dictionary pages through [`DICTS`] when `dict` names the chunk (only chunks that have a
/// dictionary page are named); a marked chunk's dictionary is handed out as markers.
///
/// A chunk has at most one dictionary page, first. `state` follows it: once passed over
/// (Arrow's reader defers it while skipping rows) or given, a kept dictionary is handed out
/// without reading its bytes from the file, and the inner reader's deferred copy, never
/// taken, is not read either.
struct Unzstd<R: PageReader> {
    inner: R,
    dict: Option<DictKey>,
    state: DictState,
    /// For a marked chunk: its row group, and where its real dictionary page goes.
    mark: Option<(usize, Found)>,
}

/// Where a chunk's reader stands with its dictionary page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DictState {
    /// Not reached yet.
    Ahead,
    /// Passed over by `skip_next_page`; given when asked for.
    Deferred,
    /// Given (or the chunk has none): nothing more to give.
    Given,
}

impl<R: PageReader> Unzstd<R> {
    fn new(inner: R, dict: Option<DictKey>, mark: Option<(usize, Found)>) -> Self {
        Self {
            inner,
            dict,
            state: DictState::Ahead,
            mark,
        }
    }

    /// The dictionary page to give Arrow: `real`, or for a marked chunk its marker page
    /// (kept in [`DICTS`] beside the real one), `real` going to the read's [`Found`].
    fn hand_out(&self, real: Page) -> Page {
        let (Some((group, found)), Some(key)) = (&self.mark, self.dict) else {
            return real;
        };
        let marker_key = (key.0, key.1, key.2 | MARKER_KEY);
        let kept = DICTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&marker_key);
        let Some(marker) = kept.or_else(|| {
            let m = marker_page(*group, &real)?;
            DICTS.lock().unwrap_or_else(PoisonError::into_inner).put(
                marker_key,
                m.clone(),
                DICT_CACHE_BYTES,
            );
            Some(m)
        }) else {
            return real;
        };
        found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((*group, real));
        marker
    }

    /// The chunk's dictionary page when [`DICTS`] keeps it.
    fn kept(&self) -> Option<Page> {
        let key = self.dict?;
        DICTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
    }

    /// Whether the next page is the chunk's dictionary (asked only before it is passed).
    fn dict_next(&mut self) -> Result<bool> {
        if self.state != DictState::Ahead || self.dict.is_none() {
            return Ok(false);
        }
        let next = self.inner.peek_next_page()?.is_some_and(|m| m.is_dict);
        if !next {
            self.state = DictState::Given;
        }
        Ok(next)
    }

    /// `page`, decompressed; a dictionary page from [`DICTS`] when it is kept there.
    fn cached(&mut self, page: Option<Page>) -> Result<Option<Page>> {
        match (page, self.dict) {
            (Some(page @ Page::DictionaryPage { .. }), Some(key)) => {
                self.state = DictState::Given;
                if let Some(kept) = self.kept() {
                    return Ok(Some(self.hand_out(kept)));
                }
                let out = Self::page(Some(page))?;
                if let Some(p) = &out {
                    DICTS.lock().unwrap_or_else(PoisonError::into_inner).put(
                        key,
                        p.clone(),
                        DICT_CACHE_BYTES,
                    );
                }
                Ok(out.map(|p| self.hand_out(p)))
            }
            (page, _) => Self::page(page),
        }
    }

    fn page(page: Option<Page>) -> Result<Option<Page>> {
        let Some(page) = page else { return Ok(None) };
        Ok(Some(match page {
            Page::DataPage {
                buf,
                num_values,
                encoding,
                def_level_encoding,
                rep_level_encoding,
                statistics,
            } => Page::DataPage {
                buf: Bytes::from(unzstd(&buf)?),
                num_values,
                encoding,
                def_level_encoding,
                rep_level_encoding,
                statistics,
            },
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                num_nulls,
                num_rows,
                def_levels_byte_len,
                rep_levels_byte_len,
                is_compressed,
                statistics,
            } => {
                // Levels are stored uncompressed ahead of the values.
                let levels =
                    (def_levels_byte_len as usize).saturating_add(rep_levels_byte_len as usize);
                let buf = if is_compressed && levels <= buf.len() {
                    let mut out = buf[..levels].to_vec();
                    out.extend_from_slice(&unzstd(&buf[levels..])?);
                    Bytes::from(out)
                } else if is_compressed {
                    return Err(ParquetError::General(format!(
                        "a v2 page of {} bytes has {levels} bytes of levels",
                        buf.len()
                    )));
                } else {
                    buf
                };
                Page::DataPageV2 {
                    buf,
                    num_values,
                    encoding,
                    num_nulls,
                    num_rows,
                    def_levels_byte_len,
                    rep_levels_byte_len,
                    is_compressed: false,
                    statistics,
                }
            }
            Page::DictionaryPage {
                buf,
                num_values,
                encoding,
                is_sorted,
            } => Page::DictionaryPage {
                buf: Bytes::from(unzstd(&buf)?),
                num_values,
                encoding,
                is_sorted,
            },
        }))
    }
}

impl<R: PageReader> Iterator for Unzstd<R> {
    type Item = Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

impl<R: PageReader> PageReader for Unzstd<R> {
    fn get_next_page(&mut self) -> Result<Option<Page>> {
        if self.dict_next()?
            && let Some(kept) = self.kept()
        {
            // Passed over, not read: the kept page stands for it.
            self.inner.skip_next_page()?;
            self.state = DictState::Given;
            return Ok(Some(self.hand_out(kept)));
        }
        let page = self.inner.get_next_page()?;
        self.cached(page)
    }

    fn peek_next_page(&mut self) -> Result<Option<PageMetadata>> {
        self.inner.peek_next_page()
    }

    fn skip_next_page(&mut self) -> Result<()> {
        if self.dict_next()? {
            self.state = DictState::Deferred;
        }
        self.inner.skip_next_page()
    }

    fn supports_deferred_dictionary(&self) -> bool {
        self.inner.supports_deferred_dictionary()
    }

    fn take_deferred_dictionary(&mut self) -> Result<Option<Page>> {
        // Arrow's reader asks on every data page it reads.
        match self.state {
            DictState::Given => return Ok(None),
            DictState::Deferred => {
                if let Some(kept) = self.kept() {
                    self.state = DictState::Given;
                    return Ok(Some(self.hand_out(kept)));
                }
            }
            DictState::Ahead => {}
        }
        let page = self.inner.take_deferred_dictionary()?;
        self.cached(page)
    }

    fn at_record_boundary(&mut self) -> Result<bool> {
        self.inner.at_record_boundary()
    }
}

/// A block file read at offsets (`pread`).
///
/// Why: the Parquet crate's reader for `File` duplicates the descriptor, seeks, reads, reads
/// again to find the end, and closes, for every page: five system calls where one does.
/// A trace lookup reads about one page per column, so on varied traffic those calls were
/// about 5% of a server answering lookups (BENCHMARKS.md).
///
/// Cold files: each page is first read with `RWF_NOWAIT`, which answers from the page
/// cache or not at all. The first page not in memory hands every page the read will take
/// ([`Plan`]) to the kernel at once (`posix_fadvise(WILLNEED)`), so the disk serves them
/// side by side instead of one page per column after another. Why: a lookup takes about
/// 25 pages; with the page cache dropped, lookups over 90M spans on a restarted server had
/// p99 11.7-12.5 ms against 5.2-5.3 warm (BENCHMARKS.md, "Cold block files"), and a host
/// that reclaims idle memory (this one pages out file pages unused for about a minute)
/// makes cold the usual state of a block nobody read lately. A warm read costs what it
/// did: one system call per page.
struct At {
    file: Arc<File>,
    len: u64,
    /// What this read will take, until a page not in memory takes it to read ahead.
    plan: Mutex<Option<Plan>>,
    /// The ranges [`ChunkReader::get_bytes`] was asked for, for tests.
    #[cfg(test)]
    asked: Mutex<Vec<(u64, u64)>>,
}

/// Whether `RWF_NOWAIT` reads work here (a file system or kernel without them answers
/// an error other than "would block": then every read just waits, as before).
static NOWAIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

impl At {
    fn new(file: File, plan: Option<Plan>) -> Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file: Arc::new(file),
            len,
            plan: Mutex::new(plan),
            #[cfg(test)]
            asked: Mutex::default(),
        })
    }

    /// Fills `buf` from `start` with what the page cache holds, without waiting for the
    /// disk: the bytes read (0 when the first page is not in memory).
    fn read_cached(&self, buf: &mut [u8], start: u64) -> usize {
        if !NOWAIT.load(Ordering::Relaxed) {
            return 0;
        }
        let mut done = 0;
        while done < buf.len() {
            let mut slice = [std::io::IoSliceMut::new(&mut buf[done..])];
            match rustix::io::preadv2(
                &*self.file,
                &mut slice,
                start + done as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) | Err(rustix::io::Errno::AGAIN) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "RWF_NOWAIT reads unsupported; block reads wait for the disk");
                    NOWAIT.store(false, Ordering::Relaxed);
                    break;
                }
            }
        }
        done
    }

    /// Asks the kernel for every page of the plan at once (the first time only).
    fn read_ahead(&self) {
        let plan = self
            .plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for (offset, len) in plan.map(|p| p.ranges()).unwrap_or_default() {
            if let Some(len) = std::num::NonZeroU64::new(len) {
                // A hint: the reads that follow report what is wrong.
                let _ = rustix::fs::fadvise(
                    &*self.file,
                    offset,
                    Some(len),
                    rustix::fs::Advice::WillNeed,
                );
            }
        }
    }
}

/// What one read of a block will take from its file: for each chosen row group, every
/// column's pages holding a selected row, and its dictionary page unless kept in
/// [`DICTS`].
struct Plan {
    cache: u64,
    meta: Arc<ParquetMetaData>,
    groups: Vec<usize>,
    selection: RowSelection,
}

/// Ranges closer than this are asked for as one: fewer calls, a few bytes more.
const AHEAD_GAP: u64 = 32 << 10;

impl Plan {
    /// The byte ranges (offset, length) of [`Plan::pages`], near ones joined.
    fn ranges(&self) -> Vec<(u64, u64)> {
        let mut joined: Vec<(u64, u64)> = Vec::new();
        for (offset, len) in self.pages() {
            match joined.last_mut() {
                Some((o, l)) if offset <= *o + *l + AHEAD_GAP => {
                    *l = (*l).max(offset + len - *o);
                }
                _ => joined.push((offset, len)),
            }
        }
        joined
    }

    /// The byte ranges (offset, length) of the pages, ascending.
    fn pages(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut selectors = self.selection.iter().copied();
        let mut left: Option<RowSelector> = None;
        let dicts = DICTS.lock().unwrap_or_else(PoisonError::into_inner);
        for &g in &self.groups {
            let rg = self.meta.row_group(g);
            let n = rg.num_rows().max(0) as usize;
            // The selected rows of this group, group-local, from where the selection
            // stands (it counts rows over the chosen groups only).
            let mut picked = Vec::new();
            let mut at = 0;
            while at < n {
                let Some(s) = left.take().or_else(|| selectors.next()) else {
                    break;
                };
                let take = s.row_count.min(n - at);
                if !s.skip && take > 0 {
                    picked.push((at, at + take));
                }
                at += take;
                if take < s.row_count {
                    left = Some(RowSelector {
                        row_count: s.row_count - take,
                        skip: s.skip,
                    });
                }
            }
            for (c, chunk) in rg.columns().iter().enumerate() {
                if let Some(d) = chunk.dictionary_page_offset()
                    && !dicts.pages.contains_key(&(self.cache, g, c))
                {
                    out.push((d as u64, chunk.data_page_offset().saturating_sub(d) as u64));
                }
                let Some(pages) = self.meta.page_index().and_then(|i| i.page_locations(g, c))
                else {
                    out.push(chunk.byte_range());
                    continue;
                };
                for (k, page) in pages.iter().enumerate() {
                    let first = page.first_row_index.max(0) as usize;
                    let end = pages
                        .get(k + 1)
                        .map_or(n, |p| p.first_row_index.max(0) as usize);
                    if picked.iter().any(|&(a, b)| a < end && first < b) {
                        out.push((
                            page.offset.max(0) as u64,
                            page.compressed_page_size.max(0) as u64,
                        ));
                    }
                }
            }
        }
        drop(dicts);
        out.sort_unstable();
        out
    }
}

impl Length for At {
    fn len(&self) -> u64 {
        self.len
    }
}

/// Reads from an offset of an [`At`] onwards (page headers of a chunk without an offset
/// index).
struct AtRead {
    file: Arc<File>,
    pos: u64,
}

impl std::io::Read for AtRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl ChunkReader for At {
    type T = std::io::BufReader<AtRead>;

    fn get_read(&self, start: u64) -> Result<Self::T> {
        Ok(std::io::BufReader::new(AtRead {
            file: self.file.clone(),
            pos: start,
        }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes> {
        let end = start.checked_add(length as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(ParquetError::EOF(format!(
                "damaged block file: {length} bytes at {start} run past its end ({} bytes)",
                self.len
            )));
        }
        #[cfg(test)]
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((start, length as u64));
        let mut buf = vec![0u8; length];
        let done = self.read_cached(&mut buf, start);
        if done < length {
            self.read_ahead();
            self.file
                .read_exact_at(&mut buf[done..], start + done as u64)?;
        }
        Ok(Bytes::from(buf))
    }
}

/// The chosen row groups of one open block file, as Arrow's reader asks for them.
struct Groups {
    /// The reader's [`cache_id`]: names its dictionary pages in [`DICTS`].
    cache: u64,
    file: Arc<At>,
    meta: Arc<ParquetMetaData>,
    groups: Vec<usize>,
    props: Arc<ReaderProperties>,
    /// The marked column (leaf index) and where its real dictionaries go.
    mark: Option<(usize, Found)>,
}

impl Groups {
    fn page_reader(&self, group: usize, column: usize) -> Result<Box<dyn PageReader>> {
        let rg = self.meta.row_group(group);
        let chunk = rg.column(column);
        let locations = self
            .meta
            .page_index()
            .and_then(|i| i.page_locations(group, column).cloned());
        let rows = usize::try_from(rg.num_rows())
            .map_err(|_| ParquetError::General("a row group of negative rows".into()))?;
        // The chunk's ranges were checked when the block was opened ([`check_metadata`]).
        if !matches!(chunk.compression(), Compression::ZSTD(_)) {
            let r = SerializedPageReader::new_with_properties(
                self.file.clone(),
                chunk,
                rows,
                locations,
                self.props.clone(),
            )?;
            return Ok(Box::new(r));
        }
        let plain = chunk
            .clone()
            .into_builder()
            .set_compression(Compression::UNCOMPRESSED)
            .build()?;
        let inner = SerializedPageReader::new_with_properties(
            self.file.clone(),
            &plain,
            rows,
            locations,
            self.props.clone(),
        )?;
        let dict = chunk
            .dictionary_page_offset()
            .is_some()
            .then_some((self.cache, group, column));
        let mark = self
            .mark
            .as_ref()
            .filter(|(c, _)| *c == column)
            .map(|(_, found)| (group, found.clone()));
        Ok(Box::new(Unzstd::new(inner, dict, mark)))
    }
}

/// Refuses a column chunk whose byte range, or whose pages' locations, a damaged file made
/// impossible: the Parquet reader asserts on a negative range, computes the dictionary
/// page's size as `first page - chunk start` and a page's rows as `next page's first row
/// (or the row group's rows) - its first row` unchecked, so each would panic, not fail
/// (all found by `scripts/fuzz`). Valid files have pages in order, inside their chunk,
/// the first starting at row 0 and each at or after the one before, within the group's
/// `rows`.
fn check_ranges(
    chunk: &parquet::file::metadata::ColumnChunkMetaData,
    locations: Option<&[parquet::file::page_index::offset_index::PageLocation]>,
    rows: i64,
) -> Result<()> {
    let damaged = |what: &str| ParquetError::General(format!("damaged block file: {what}"));
    let start = chunk
        .dictionary_page_offset()
        .unwrap_or_else(|| chunk.data_page_offset());
    let start =
        u64::try_from(start).map_err(|_| damaged("a column chunk starts before the file"))?;
    let len = u64::try_from(chunk.compressed_size())
        .map_err(|_| damaged("a column chunk of negative length"))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| damaged("a column chunk ends beyond any file"))?;
    let mut at = start;
    let mut row = 0;
    for (i, l) in locations.unwrap_or_default().iter().enumerate() {
        let first = l.first_row_index;
        if (i == 0 && first != 0) || first < row || first > rows {
            return Err(damaged("a page's first row is out of order"));
        }
        row = first;
        let offset = u64::try_from(l.offset).ok();
        let size = u64::try_from(l.compressed_page_size).ok();
        match (offset, size) {
            (Some(o), Some(n)) if o >= at && o.checked_add(n).is_some_and(|e| e <= end) => {
                at = o + n;
            }
            _ => return Err(damaged("a page lies outside its column chunk")),
        }
    }
    Ok(())
}

/// [`check_ranges`] for every column chunk of a file, when it is opened.
pub(crate) fn check_metadata(meta: &ParquetMetaData) -> Result<()> {
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for (c, chunk) in rg.columns().iter().enumerate() {
            let locations = meta.page_index().and_then(|i| i.page_locations(g, c));
            check_ranges(chunk, locations.map(|l| l.as_slice()), rg.num_rows())?;
        }
    }
    Ok(())
}

/// The pages of one column over the chosen row groups.
struct ColumnPages {
    groups: Arc<Groups>,
    column: usize,
    next: usize,
}

impl Iterator for ColumnPages {
    type Item = Result<Box<dyn PageReader>>;

    fn next(&mut self) -> Option<Self::Item> {
        let group = *self.groups.groups.get(self.next)?;
        self.next += 1;
        Some(self.groups.page_reader(group, self.column))
    }
}

impl PageIterator for ColumnPages {}

/// [`RowGroups`] for Arrow's reader; shares [`Groups`] with the page iterators it hands out.
struct Shared(Arc<Groups>);

impl RowGroups for Shared {
    fn num_rows(&self) -> usize {
        self.0
            .groups
            .iter()
            .map(|&g| self.0.meta.row_group(g).num_rows().max(0) as usize)
            .sum()
    }

    fn column_chunks(&self, i: usize) -> Result<Box<dyn PageIterator>> {
        Ok(Box::new(ColumnPages {
            groups: self.0.clone(),
            column: i,
            next: 0,
        }))
    }

    fn row_groups(&self) -> Box<dyn Iterator<Item = &RowGroupMetaData> + '_> {
        Box::new(self.0.groups.iter().map(|&g| self.0.meta.row_group(g)))
    }

    fn metadata(&self) -> &ParquetMetaData {
        &self.0.meta
    }
}

/// How a block's columns become Arrow fields (every column but the leaves named in
/// `without`), computed once per block.
///
/// `attribute_keys` is read as plain text even where the block's Arrow schema declares a
/// dictionary (format 8): a lookup then decodes only its own rows' key lists, where a
/// dictionary would copy every distinct list of the row group into each read.
pub(crate) fn field_levels(
    meta: &ParquetMetaData,
    hint: &arrow_schema::Fields,
    without: &[&str],
) -> Result<FieldLevels> {
    let schema = meta.file_metadata().schema_descr();
    let leaves = (0..schema.num_columns())
        .filter(|&i| !without.contains(&schema.column(i).path().string().as_str()));
    let hint = lookup_fields(hint);
    parquet_to_arrow_field_levels(schema, ProjectionMask::leaves(schema, leaves), Some(&hint))
}

/// The Arrow fields a lookup reads a block's columns as: the block's own, but
/// `attribute_keys` plain (see [`field_levels`]).
pub(crate) fn lookup_fields(block: &arrow_schema::Fields) -> arrow_schema::Fields {
    block
        .iter()
        .map(|f| match f.data_type() {
            arrow_schema::DataType::Dictionary(_, v) if f.name() == "attribute_keys" => {
                Arc::new(f.as_ref().clone().with_data_type(v.as_ref().clone()))
            }
            _ => f.clone(),
        })
        .collect()
}

/// A reader of every column of `groups` (row group indexes, ascending) of `file`, limited
/// to `selection` (rows counted over those groups only). `meta` must have passed
/// [`check_metadata`] (pages are read at its ranges unchecked). Column `marked` (a leaf
/// index), when given, is read with marker dictionaries (module doc): its values are
/// markers, to look up in the real pages the returned [`Found`] collects, or real values
/// where Arrow met no dictionary.
pub(crate) fn read(
    cache: u64,
    file: File,
    meta: Arc<ParquetMetaData>,
    levels: &FieldLevels,
    (groups, selection): (Vec<usize>, RowSelection),
    batch_size: usize,
    marked: Option<usize>,
) -> Result<(ParquetRecordBatchReader, Found)> {
    let plan = Plan {
        cache,
        meta: meta.clone(),
        groups: groups.clone(),
        selection: selection.clone(),
    };
    let file = Arc::new(At::new(file, Some(plan))?);
    read_from(
        file,
        cache,
        meta,
        levels,
        (groups, selection),
        batch_size,
        marked,
    )
}

/// [`read`] from an opened [`At`].
fn read_from(
    file: Arc<At>,
    cache: u64,
    meta: Arc<ParquetMetaData>,
    levels: &FieldLevels,
    (groups, selection): (Vec<usize>, RowSelection),
    batch_size: usize,
    marked: Option<usize>,
) -> Result<(ParquetRecordBatchReader, Found)> {
    let found = Found::default();
    let shared = Shared(Arc::new(Groups {
        cache,
        file,
        meta,
        groups,
        props: Arc::new(ReaderProperties::builder().build()),
        mark: marked.map(|c| (c, found.clone())),
    }));
    let reader = ParquetRecordBatchReader::try_new_with_row_groups(
        levels,
        &shared,
        batch_size,
        Some(selection),
    )?;
    Ok((reader, found))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use parquet::arrow::arrow_reader::{
        ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelector,
    };
    use parquet::file::metadata::PageIndexPolicy;

    use faultline_model::span::{AttrValue, Event, Origin, Span, SpanKind, StatusCode};

    use super::*;

    /// Spans whose columns take every path: zstd with and without dictionaries (repeated
    /// and unique strings, events on some spans), uncompressed columns, nulls.
    fn spans(n: u32) -> Vec<Span> {
        let origins: Vec<Arc<Origin>> = (0..5)
            .map(|i| {
                Arc::new(Origin {
                    service: format!("svc-{i}"),
                    resource: vec![
                        (
                            "service.name".into(),
                            AttrValue::Str(format!("svc-{i}").into()),
                        ),
                        (
                            "host.name".into(),
                            AttrValue::Str(format!("host-{}", i * 7).into()),
                        ),
                    ],
                    scope_name: "lib".into(),
                    scope_version: String::new(),
                })
            })
            .collect();
        (0..n)
            .map(|i| {
                let trace = i / 3;
                let mut trace_id = [0u8; 16];
                trace_id[..4].copy_from_slice(&trace.to_be_bytes());
                let mut span_id = [0u8; 8];
                span_id[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
                span_id[7] = 1;
                let start = 1_700_000_000_000_000_000 + u64::from(trace) * 1_000_003;
                Span {
                    trace_id,
                    span_id,
                    parent_span_id: None,
                    name: format!("op-{}", i % 11),
                    kind: SpanKind::Client,
                    start_ns: start + u64::from(i % 3) * 977,
                    end_ns: start
                        + u64::from(i % 3) * 977
                        + u64::from(i.wrapping_mul(7919) % 100_000),
                    status: if i % 13 == 0 {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    status_message: String::new(),
                    attributes: vec![
                        (
                            "user.id".into(),
                            AttrValue::Str(format!("user-{}", trace * 31).into()),
                        ),
                        (
                            "region".into(),
                            AttrValue::Str(["eu", "us"][(trace % 2) as usize].into()),
                        ),
                        ("n".into(), AttrValue::Int(i64::from(i % 5))),
                    ],
                    events: if i % 7 == 0 {
                        vec![Event {
                            time_ns: start + u64::from(i),
                            name: "exception".into(),
                            attributes: vec![(
                                "m".into(),
                                AttrValue::Str(format!("failed {i}").into()),
                            )],
                        }]
                    } else {
                        Vec::new()
                    },
                    links: Vec::new(),
                    origin: origins[(trace % 5) as usize].clone(),
                }
            })
            .collect()
    }

    /// Rows read here equal the Parquet crate's own reader over the same selections:
    /// single rows, runs across page boundaries, the first and the last row.
    #[test]
    fn pages_read_equal_parquets_own_reader() {
        let tmp = tempfile::tempdir().unwrap();
        let n = 3 * 2048 + 500;
        crate::block::write_block(tmp.path(), "b", &spans(n)).unwrap();
        let path = crate::block::parquet_path(tmp.path(), "b");
        let file = File::open(&path).unwrap();
        let meta = ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )
        .unwrap();
        let zstd_columns = meta.metadata().row_group(0).columns().iter();
        assert!(
            zstd_columns
                .filter(|c| matches!(c.compression(), Compression::ZSTD(_)))
                .count()
                >= 4,
            "the block exercises zstd pages"
        );
        let levels = field_levels(meta.metadata(), meta.schema().fields(), &[]).unwrap();
        let n = n as usize;
        let cache = cache_id();
        let selections: Vec<Vec<(usize, usize)>> = vec![
            vec![(0, 1)],
            vec![(n - 1, 1)],
            vec![(2040, 20)],
            vec![(5, 3), (2047, 2), (4100, 3000 - 900), (n - 3, 3)],
            vec![(0, n)],
        ];
        for ranges in selections {
            let mut selectors = Vec::new();
            let mut pos = 0;
            for &(first, rows) in &ranges {
                selectors.push(RowSelector::skip(first - pos));
                selectors.push(RowSelector::select(rows));
                pos = first + rows;
            }
            selectors.push(RowSelector::skip(n - pos));
            // Twice: the second read takes its dictionaries from the cache.
            let ours: Vec<Vec<_>> = (0..2)
                .map(|_| {
                    read(
                        cache,
                        File::open(&path).unwrap(),
                        meta.metadata().clone(),
                        &levels,
                        (vec![0], RowSelection::from(selectors.clone())),
                        1024,
                        None,
                    )
                    .unwrap()
                    .0
                    .collect::<std::result::Result<_, _>>()
                    .unwrap()
                })
                .collect();
            assert_eq!(
                ours[0], ours[1],
                "{ranges:?} read again from kept dictionaries"
            );
            let ours = ours.into_iter().next().unwrap();
            // Parquet's reader, told the field types a lookup reads.
            let plain = Arc::new(arrow_schema::Schema::new(lookup_fields(
                meta.schema().fields(),
            )));
            let as_lookups = ArrowReaderMetadata::try_new(
                meta.metadata().clone(),
                ArrowReaderOptions::new().with_schema(plain),
            )
            .unwrap();
            let theirs: Vec<_> = ParquetRecordBatchReaderBuilder::new_with_metadata(
                File::open(&path).unwrap(),
                as_lookups,
            )
            .with_row_selection(RowSelection::from(selectors))
            .with_batch_size(1024)
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
            let rows: usize = ours
                .iter()
                .map(|b: &arrow_array::RecordBatch| b.num_rows())
                .sum();
            assert_eq!(
                rows,
                ranges.iter().map(|r| r.1).sum::<usize>(),
                "{ranges:?}"
            );
            assert_eq!(ours, theirs, "{ranges:?}");
        }
        assert!(kept(cache) > 0, "dictionary pages are kept");
        forget(cache);
        assert_eq!(kept(cache), 0, "a closed reader's dictionaries are dropped");
    }

    fn kept(id: u64) -> usize {
        let d = DICTS.lock().unwrap();
        d.pages.keys().filter(|k| k.0 == id).count()
    }

    fn dict_page(bytes: usize) -> Page {
        Page::DictionaryPage {
            buf: Bytes::from(vec![7u8; bytes]),
            num_values: 1,
            encoding: parquet::basic::Encoding::PLAIN,
            is_sorted: false,
        }
    }

    /// Reads at offsets return the file's bytes; a range past the end is refused with the
    /// file named as damaged, not read short.
    #[test]
    fn reads_at_offsets() {
        use std::io::{Read, Write};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        File::create(&path).unwrap().write_all(&data).unwrap();
        let at = At::new(File::open(&path).unwrap(), None).unwrap();
        assert_eq!(at.len(), 10_000);
        assert_eq!(at.get_bytes(9_990, 10).unwrap().as_ref(), &data[9_990..]);
        assert_eq!(at.get_bytes(0, 0).unwrap().len(), 0);
        let err = at.get_bytes(9_995, 10).unwrap_err().to_string();
        assert!(err.contains("damaged block file"), "{err}");
        assert!(at.get_bytes(u64::MAX, 2).is_err());
        let mut rest = Vec::new();
        at.get_read(9_000).unwrap().read_to_end(&mut rest).unwrap();
        assert_eq!(rest, &data[9_000..]);
    }

    /// One chunk's pages, zstd-compressed, counting the dictionary pages it hands out.
    struct Fake {
        pages: std::collections::VecDeque<Page>,
        deferred: Option<Page>,
        dict_reads: Arc<AtomicU64>,
    }

    impl Fake {
        fn new(dict_reads: &Arc<AtomicU64>) -> Self {
            let z = |b: &[u8]| Bytes::from(zstd::bulk::compress(b, 1).unwrap());
            let pages = [
                Page::DictionaryPage {
                    buf: z(b"the dictionary"),
                    num_values: 1,
                    encoding: parquet::basic::Encoding::PLAIN,
                    is_sorted: false,
                },
                Page::DataPage {
                    buf: z(b"the values"),
                    num_values: 1,
                    encoding: parquet::basic::Encoding::RLE_DICTIONARY,
                    def_level_encoding: parquet::basic::Encoding::RLE,
                    rep_level_encoding: parquet::basic::Encoding::RLE,
                    statistics: None,
                },
            ];
            Self {
                pages: pages.into(),
                deferred: None,
                dict_reads: dict_reads.clone(),
            }
        }
    }

    impl Iterator for Fake {
        type Item = Result<Page>;
        fn next(&mut self) -> Option<Self::Item> {
            self.get_next_page().transpose()
        }
    }

    impl PageReader for Fake {
        fn get_next_page(&mut self) -> Result<Option<Page>> {
            let p = self.pages.pop_front();
            if p.as_ref().is_some_and(|p| p.is_dictionary_page()) {
                self.dict_reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(p)
        }
        fn peek_next_page(&mut self) -> Result<Option<PageMetadata>> {
            Ok(self.pages.front().map(|p| PageMetadata {
                num_rows: Some(1),
                num_levels: Some(1),
                is_dict: p.is_dictionary_page(),
            }))
        }
        fn skip_next_page(&mut self) -> Result<()> {
            if let Some(p) = self.pages.pop_front()
                && p.is_dictionary_page()
            {
                self.deferred = Some(p);
            }
            Ok(())
        }
        fn supports_deferred_dictionary(&self) -> bool {
            true
        }
        fn take_deferred_dictionary(&mut self) -> Result<Option<Page>> {
            let p = self.deferred.take();
            if p.is_some() {
                self.dict_reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(p)
        }
    }

    /// Once a chunk's dictionary is kept, later readers of the chunk hand it out without
    /// reading it again, whether Arrow's reader deferred it (skipping rows first) or read
    /// it in order, and each reader gives it once.
    #[test]
    fn kept_dictionaries_are_not_read_again() {
        let reads = Arc::new(AtomicU64::new(0));
        let key = (cache_id(), 0, 0);
        let open = || Unzstd::new(Fake::new(&reads), Some(key), None);
        let dict_text = |p: Option<Page>| {
            let p = p.unwrap();
            assert!(p.is_dictionary_page());
            p.buffer().to_vec()
        };
        // A reader that skips to a data page, then installs the deferred dictionary once.
        let deferred = || {
            let mut r = open();
            r.skip_next_page().unwrap();
            assert_eq!(
                r.get_next_page().unwrap().unwrap().buffer().as_ref(),
                b"the values"
            );
            assert_eq!(
                dict_text(r.take_deferred_dictionary().unwrap()),
                b"the dictionary"
            );
            assert!(
                r.take_deferred_dictionary().unwrap().is_none(),
                "given once"
            );
        };
        // First reader: reads the dictionary and keeps it.
        deferred();
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        // Second reader, deferred again: the kept page, nothing read.
        deferred();
        // Third reader, in order: the kept page stands for the one passed over.
        let mut r = open();
        assert_eq!(dict_text(r.get_next_page().unwrap()), b"the dictionary");
        assert_eq!(
            r.get_next_page().unwrap().unwrap().buffer().as_ref(),
            b"the values"
        );
        assert!(
            r.take_deferred_dictionary().unwrap().is_none(),
            "given once"
        );
        assert!(r.get_next_page().unwrap().is_none());
        assert_eq!(reads.load(Ordering::Relaxed), 1, "read from the file once");
        forget(key.0);
    }

    /// Past the budget the least recently used pages go; a page over a quarter of the
    /// budget is never kept; replacing a page counts its bytes once.
    #[test]
    fn kept_dictionaries_stay_within_their_budget() {
        let mut d = Dicts::default();
        for c in 0..4 {
            d.put((1, 0, c), dict_page(100), 400);
        }
        assert_eq!(d.bytes, 400);
        assert!(d.get(&(1, 0, 0)).is_some());
        d.put((1, 0, 4), dict_page(100), 400);
        assert_eq!(d.bytes, 400);
        assert!(d.get(&(1, 0, 1)).is_none(), "the least recently used went");
        assert!(d.get(&(1, 0, 0)).is_some(), "the one used since stayed");
        d.put((1, 0, 0), dict_page(50), 400);
        assert_eq!(d.bytes, 350);
        d.put((1, 0, 9), dict_page(101), 400);
        assert!(d.get(&(1, 0, 9)).is_none(), "over a quarter of the budget");
        assert_eq!(d.bytes, 350);
    }

    proptest::proptest! {
        /// The cache keeps what a plain least-recently-used list keeps, through any mix
        /// of reads, new pages, replaced pages of other sizes and pages too big to keep.
        #[test]
        fn kept_dictionaries_follow_a_plain_lru_list(
            ops in proptest::collection::vec((0u64..3, 0usize..12, 0usize..300, proptest::bool::ANY), 1..400)
        ) {
            let (mut d, mut model) = (Dicts::default(), Vec::<(DictKey, usize)>::new());
            for (block, column, size, put) in ops {
                let key = (block, 0, column);
                if put {
                    let size = 10 + size;
                    d.put(key, dict_page(size), 1000);
                    if size <= 250 {
                        model.retain(|(k, _)| *k != key);
                        model.push((key, size));
                        while model.iter().map(|m| m.1).sum::<usize>() > 1000 {
                            model.remove(0);
                        }
                    }
                } else {
                    let got = d.get(&key).map(|p| p.buffer().len());
                    let at = model.iter().position(|(k, _)| *k == key);
                    proptest::prop_assert_eq!(got, at.map(|i| model[i].1));
                    if let Some(i) = at {
                        let m = model.remove(i);
                        model.push(m);
                    }
                }
                proptest::prop_assert_eq!(d.bytes, model.iter().map(|m| m.1).sum::<usize>());
                proptest::prop_assert_eq!(d.by_use.len(), d.pages.len());
            }
        }
    }

    /// A marked column reads to the same values as Parquet's own reader once its markers
    /// are looked up: Arrow dictionary and plain string fields, batches across row groups,
    /// dictionaries kept from an earlier read, and a chunk whose dictionary overflowed
    /// into plain pages (real values among the markers).
    /// A file of 3,000 rows in row groups of 700 and pages of 100 rows: a dictionary
    /// column of 40 repeating resources (`res`), the same texts plain (`plain`), and 600
    /// texts that overflow a 2 KB dictionary (`big`). Returns its path, its metadata with
    /// the page index, and the texts.
    fn small_groups(
        dir: &std::path::Path,
    ) -> (
        std::path::PathBuf,
        ArrowReaderMetadata,
        Vec<String>,
        Vec<String>,
    ) {
        use arrow_array::{ArrayRef, DictionaryArray, RecordBatch, StringArray};
        use arrow_schema::{DataType, Field, Schema};
        use parquet::arrow::ArrowWriter;
        use parquet::basic::ZstdLevel;
        use parquet::file::properties::WriterProperties;

        let n = 3000usize;
        // 40 resources that repeat, and 600 texts that overflow a 2 KB dictionary.
        let res: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{{\"service.name\":\"svc-{}\",\"pad\":\"{}\"}}",
                    (i / 7) % 40,
                    "x".repeat(i % 40 + 20)
                )
            })
            .map(|s| s[..s.len().min(80)].to_string())
            .collect();
        let big: Vec<String> = (0..n)
            .map(|i| format!("value number {:040}", i % 600))
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "res",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("plain", DataType::Utf8, false),
            Field::new("big", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                res.iter()
                    .map(String::as_str)
                    .collect::<DictionaryArray<arrow_array::types::Int32Type>>(),
            ),
            Arc::new(StringArray::from_iter_values(res.iter())),
            Arc::new(StringArray::from_iter_values(big.iter())),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let path = dir.join("m.parquet");
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .set_max_row_group_row_count(Some(700))
            .set_data_page_row_count_limit(100)
            .set_write_batch_size(100)
            .set_column_dictionary_page_size_limit("big".into(), 2048)
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let meta = ArrowReaderMetadata::load(
            &File::open(&path).unwrap(),
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )
        .unwrap();
        (path, meta, res, big)
    }

    /// A read's plan holds every byte range the read then asks for, and only the pages of
    /// its rows: selections within one page, across pages and across row groups; once a
    /// read kept the dictionaries, the next plan leaves their pages out.
    #[test]
    fn a_reads_plan_covers_what_it_reads_and_little_else() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, meta, res, _) = small_groups(tmp.path());
        let n = res.len();
        let levels = field_levels(meta.metadata(), meta.schema().fields(), &[]).unwrap();
        let groups: Vec<usize> = (0..meta.metadata().num_row_groups()).collect();
        let cache = cache_id();
        let planned = |groups: &[usize], selection: &RowSelection| {
            Plan {
                cache,
                meta: meta.metadata().clone(),
                groups: groups.to_vec(),
                selection: selection.clone(),
            }
            .pages()
        };
        // (first row, rows) over the whole file: in one page, across a page boundary,
        // across the boundary of groups 0 and 1 (700), and in the last group.
        for ranges in [vec![(5, 1)], vec![(95, 10)], vec![(690, 20), (2950, 50)]] {
            // The groups holding the rows, and a selection over those groups only.
            let groups: Vec<usize> = groups
                .iter()
                .copied()
                .filter(|&g| {
                    let (a, b) = (g * 700, (g * 700 + 700).min(n));
                    ranges.iter().any(|&(f, r)| f < b && a < f + r)
                })
                .collect();
            let mut selectors = Vec::new();
            let mut pos = groups[0] * 700;
            for &(first, rows) in &ranges {
                let from = first.max(pos);
                // Skip what lies between, counting only rows of the chosen groups.
                let gap: usize = (pos..from).filter(|r| groups.contains(&(r / 700))).count();
                selectors.push(RowSelector::skip(gap));
                selectors.push(RowSelector::select(first + rows - from));
                pos = first + rows;
            }
            let last_end = (groups[groups.len() - 1] * 700 + 700).min(n);
            selectors.push(RowSelector::skip(last_end - pos));
            let selection = RowSelection::from(selectors);
            for pass in 0..2 {
                let plan = planned(&groups, &selection);
                let plan_bytes: u64 = plan.iter().map(|r| r.1).sum();
                let group_bytes: u64 = groups
                    .iter()
                    .flat_map(|&g| meta.metadata().row_group(g).columns())
                    .map(|c| c.byte_range().1)
                    .sum();
                assert!(
                    plan_bytes * 2 < group_bytes,
                    "{ranges:?} pass {pass}: {plan_bytes} bytes planned of the groups' {group_bytes}"
                );
                let at = Arc::new(At::new(File::open(&path).unwrap(), None).unwrap());
                let (reader, _) = read_from(
                    at.clone(),
                    cache,
                    meta.metadata().clone(),
                    &levels,
                    (groups.clone(), selection.clone()),
                    1024,
                    None,
                )
                .unwrap();
                let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
                assert_eq!(rows, ranges.iter().map(|r| r.1).sum::<usize>());
                let asked = at.asked.lock().unwrap().clone();
                assert!(!asked.is_empty());
                for (start, len) in asked {
                    assert!(
                        plan.iter()
                            .any(|&(o, l)| o <= start && start + len <= o + l),
                        "{ranges:?} pass {pass}: {len} bytes at {start} read, not planned: {plan:?}"
                    );
                }
                if pass == 1 {
                    let before = planned(&[], &selection);
                    assert!(before.is_empty(), "no groups, no pages");
                }
            }
        }
        // Dictionaries kept by those reads are not planned again.
        let selection = RowSelection::from(vec![RowSelector::select(1), RowSelector::skip(699)]);
        let kept_plan: u64 = planned(&[0], &selection).iter().map(|r| r.1).sum();
        forget(cache);
        let cold_plan: u64 = planned(&[0], &selection).iter().map(|r| r.1).sum();
        assert!(
            kept_plan < cold_plan,
            "with dictionaries kept {kept_plan} bytes, without {cold_plan}"
        );
    }

    #[test]
    fn marked_columns_read_the_same_values() {
        use arrow_array::{Array, DictionaryArray, StringArray};

        let tmp = tempfile::tempdir().unwrap();
        let (path, meta, res, big) = small_groups(tmp.path());
        let n = res.len();
        check_metadata(meta.metadata()).unwrap();
        let levels = field_levels(meta.metadata(), meta.schema().fields(), &[]).unwrap();
        let groups: Vec<usize> = (0..meta.metadata().num_row_groups()).collect();
        assert!(groups.len() >= 4);
        let selectors = vec![
            RowSelector::skip(650),
            RowSelector::select(100),
            RowSelector::skip(600),
            RowSelector::select(1200),
            RowSelector::skip(n - 2550),
        ];
        let want: Vec<usize> = (650..750).chain(1350..2550).collect();
        let cache = cache_id();
        for (column, texts) in [(0usize, &res), (1, &res), (2, &big)] {
            let (mut markers, mut real) = (0, 0);
            for _pass in 0..2 {
                let (reader, found) = read(
                    cache,
                    File::open(&path).unwrap(),
                    meta.metadata().clone(),
                    &levels,
                    (groups.clone(), RowSelection::from(selectors.clone())),
                    1024,
                    Some(column),
                )
                .unwrap();
                let mut got = Vec::new();
                for b in reader {
                    let b = b.unwrap();
                    let c = b.column(column);
                    let c = arrow_cast_utf8(c.as_ref());
                    let dicts = found.lock().unwrap();
                    for v in c {
                        got.push(match marker(&v) {
                            Some((g, offset)) => {
                                markers += 1;
                                let page = &dicts.iter().rev().find(|(x, _)| *x == g).unwrap().1;
                                dictionary_entry(page, offset).unwrap().to_string()
                            }
                            None => {
                                real += 1;
                                v
                            }
                        });
                    }
                }
                let expected: Vec<String> = want.iter().map(|&i| texts[i].clone()).collect();
                assert_eq!(got, expected, "column {column}");
            }
            assert!(markers > 0, "column {column} was read with markers");
            if column == 2 {
                assert!(
                    real > 0,
                    "the overflowed dictionary's plain pages give real values"
                );
            }
        }

        /// Every value of a string or dictionary-of-strings column, as text.
        fn arrow_cast_utf8(c: &dyn Array) -> Vec<String> {
            if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                return s.iter().map(|v| v.unwrap().to_string()).collect();
            }
            let d = c
                .as_any()
                .downcast_ref::<DictionaryArray<arrow_array::types::Int32Type>>()
                .unwrap();
            let values = d.values().as_any().downcast_ref::<StringArray>().unwrap();
            d.keys()
                .iter()
                .map(|k| values.value(k.unwrap() as usize).to_string())
                .collect()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod range_tests {
    use super::check_ranges;
    use parquet::file::metadata::ColumnChunkMetaData;
    use parquet::file::page_index::offset_index::PageLocation;
    use parquet::schema::types::{ColumnDescriptor, ColumnPath, Type};
    use std::sync::Arc;

    fn chunk(start: i64, len: i64) -> ColumnChunkMetaData {
        let t = Type::primitive_type_builder("c", parquet::basic::Type::INT64)
            .build()
            .unwrap();
        let d = ColumnDescriptor::new(Arc::new(t), 0, 0, ColumnPath::from("c"));
        ColumnChunkMetaData::builder(Arc::new(d))
            .set_data_page_offset(start)
            .set_total_compressed_size(len)
            .build()
            .unwrap()
    }

    fn page(offset: i64, size: i32) -> PageLocation {
        PageLocation {
            offset,
            compressed_page_size: size,
            first_row_index: 0,
        }
    }

    #[test]
    fn pages_outside_their_chunk_are_refused_not_panicked_on() {
        let c = chunk(100, 50);
        assert!(check_ranges(&c, None, 10).is_ok());
        assert!(check_ranges(&c, Some(&[page(100, 20), page(120, 30)]), 10).is_ok());
        // A dictionary page before the first data page is room in the chunk, not damage.
        assert!(check_ranges(&c, Some(&[page(110, 40)]), 10).is_ok());
        for bad in [
            vec![page(90, 10)],                 // before the chunk: the fuzzer's crash
            vec![page(100, 20), page(110, 20)], // overlapping
            vec![page(140, 20)],                // past the chunk's end
            vec![page(100, -1)],
            vec![page(-5, 10)],
            vec![page(i64::MAX, i32::MAX)],
        ] {
            let e = check_ranges(&c, Some(&bad), 10).unwrap_err();
            assert!(e.to_string().contains("damaged block file"), "{e}");
        }
        assert!(check_ranges(&chunk(-1, 10), None, 10).is_err());
        assert!(check_ranges(&chunk(10, -1), None, 10).is_err());
    }

    #[test]
    fn a_zstd_page_claiming_an_impossible_size_is_refused_not_allocated() {
        use super::{MAX_PAGE_BYTES, unzstd};
        let page = vec![7u8; 4096];
        let frame = zstd::bulk::compress(&page, 3).unwrap();
        assert_eq!(unzstd(&frame).unwrap(), page);
        // The frame header's content size (after the magic and descriptor) set to 2^62:
        // the fuzzer's crash (12-03) was a capacity overflow allocating it.
        let mut big = zstd::bulk::Compressor::new(3).unwrap();
        big.include_contentsize(true).unwrap();
        let mut damaged = big.compress(&page).unwrap();
        let fhd = damaged[4];
        assert_eq!(fhd >> 6, 1, "a 2-byte content size field: {fhd:#x}");
        // Rewrite the descriptor for an 8-byte size and put a huge one in.
        let single = fhd & 0x20 != 0;
        let at = 5 + usize::from(!single);
        damaged[4] = (fhd & 0x3f) | 0xc0;
        damaged.splice(at..at + 2, (1u64 << 62).to_le_bytes());
        let e = unzstd(&damaged).unwrap_err().to_string();
        assert!(e.contains("damaged block file"), "{e}");
        // A frame without a size, streaming past the bound: refused too.
        let huge = vec![0u8; MAX_PAGE_BYTES + 1];
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        c.include_contentsize(false).unwrap();
        let frame = c.compress(&huge).unwrap();
        let e = unzstd(&frame).unwrap_err().to_string();
        assert!(e.contains("damaged block file"), "{e}");
    }

    fn at_row(offset: i64, first_row_index: i64) -> PageLocation {
        PageLocation {
            first_row_index,
            ..page(offset, 10)
        }
    }

    #[test]
    fn pages_whose_rows_are_out_of_order_are_refused_not_panicked_on() {
        let c = chunk(100, 50);
        let good = [at_row(100, 0), at_row(110, 4), at_row(120, 9)];
        assert!(check_ranges(&c, Some(&good), 10).is_ok());
        for bad in [
            // The second page starts before the first: the fuzzer's crash (12-03), a
            // subtraction in the reader's `peek_next_page`.
            vec![at_row(100, 0), at_row(110, 7), at_row(120, 3)],
            vec![at_row(100, 2)],                  // not from row 0
            vec![at_row(100, 0), at_row(110, 11)], // past the group's rows
            vec![at_row(100, -1)],
        ] {
            let e = check_ranges(&c, Some(&bad), 10).unwrap_err();
            assert!(e.to_string().contains("out of order"), "{e}");
        }
    }
}
