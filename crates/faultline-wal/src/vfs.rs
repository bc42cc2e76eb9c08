//! The file-system boundary of the WAL.
//!
//! Every byte the WAL reads or writes goes through [`Vfs`], so tests can swap the real file
//! system ([`StdFs`]) for a simulated one that loses unsynced bytes at a crash (see
//! `sim.rs`, compiled for tests) or fails on demand. The trait is deliberately small: the
//! operations a log needs, with their durability spelled out.
//!
//! Durability contract the WAL relies on (and the simulator enforces):
//! - bytes written to a file are durable only after [`VfsFile::sync_data`] returns `Ok`;
//! - a created, renamed or removed directory entry is durable only after
//!   [`Vfs::sync_dir`] on its parent returns `Ok`;
//! - [`Vfs::truncate`] makes the new length durable before it returns.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A file opened for appending.
pub trait VfsFile: Send + 'static {
    /// Appends all of `buf` at the end of the file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes every byte written so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes; used to undo a partial write after `ENOSPC`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The directory and file operations the WAL needs.
pub trait Vfs: Send + Sync + 'static {
    /// The append handle type.
    type File: VfsFile;

    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the regular files directly in `dir`.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for appending, creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    /// Reads `len` bytes at `offset`, or fewer at the end of the file.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// [`Vfs::read_at`] into `buf` (its contents replaced), reusing its allocation: a
    /// tailer reading megabytes per poll into fresh buffers spent a tenth of its time
    /// having the kernel zero new pages.
    fn read_at_into(
        &self,
        path: &Path,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        *buf = self.read_at(path, offset, len)?;
        Ok(())
    }
    /// The current length of `path`.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Cuts `path` to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames `from` to `to` (not durable until [`Vfs::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes `path` (not durable until [`Vfs::sync_dir`]).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Writes a small file atomically: temporary file, fsync, rename, fsync of the directory.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = tmp_path(path);
        // A stale temporary file from a crash is overwritten, never appended to.
        if self.len(&tmp).is_ok() {
            self.remove(&tmp)?;
        }
        let mut file = self.open_append(&tmp)?;
        file.write_all(data)?;
        file.sync_data()?;
        drop(file);
        self.rename(&tmp, path)?;
        match path.parent() {
            Some(parent) => self.sync_dir(parent),
            None => Ok(()),
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

/// An append handle on a real file.
#[derive(Debug)]
pub struct StdFile(File);

impl VfsFile for StdFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.seek(SeekFrom::Start(len))?;
        Ok(())
    }
}

impl Vfs for StdFs {
    type File = StdFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn open_append(&self, path: &Path) -> io::Result<StdFile> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(StdFile(file))
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_at_into(path, offset, len, &mut buf)?;
        Ok(buf)
    }

    fn read_at_into(
        &self,
        path: &Path,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        buf.clear();
        buf.reserve(len.min(64 << 20));
        file.take(len as u64).read_to_end(buf)?;
        Ok(())
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn read_at_into_replaces_the_buffer_and_reads_what_read_at_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let fs = StdFs;
        // A buffer holding more than the next read, as after a large record.
        let mut buf = vec![7u8; 50_000];
        for (offset, len) in [
            (0u64, 100usize),
            (9_990, 100),
            (5_000, 0),
            (10_000, 5),
            (1, 9_999),
        ] {
            fs.read_at_into(&path, offset, len, &mut buf).unwrap();
            assert_eq!(
                buf,
                fs.read_at(&path, offset, len).unwrap(),
                "at {offset}+{len}"
            );
            let end = (offset as usize + len).min(data.len());
            assert_eq!(buf, data[(offset as usize).min(end)..end]);
        }
        assert!(
            fs.read_at_into(&dir.path().join("missing"), 0, 1, &mut buf)
                .is_err()
        );
    }
}
