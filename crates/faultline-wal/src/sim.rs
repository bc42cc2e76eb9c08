//! A simulated file system for crash and fault tests.
//!
//! It keeps, per file, the bytes written and the bytes known durable, and per directory the
//! entries known durable. [`SimFs::crash`] throws away everything not durable, keeping a
//! random part of each file's unsynced tail (possibly garbled), which is what a power
//! failure can leave behind. Faults can be armed: fail the next fsync, or answer writes with
//! `ENOSPC`. Directories themselves are treated as always durable.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::vfs::{Vfs, VfsFile};

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct State {
    ns: BTreeMap<PathBuf, u64>,
    durable_ns: BTreeMap<PathBuf, u64>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    fail_next_sync: bool,
    no_space: bool,
    syncs: u64,
    bytes_read: u64,
}

/// The simulated file system. Clones share state.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl SimFs {
    /// Simulates a power failure. `seed` picks how much of each unsynced tail survives.
    pub fn crash(&self, seed: u64) {
        let mut st = lock(&self.state);
        st.ns = st.durable_ns.clone();
        let live: Vec<u64> = st.ns.values().copied().collect();
        st.inodes.retain(|ino, _| live.contains(ino));
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for inode in st.inodes.values_mut() {
            let extra = if inode.data.len() > inode.durable.len()
                && inode.data.starts_with(&inode.durable)
            {
                let unsynced = &inode.data[inode.durable.len()..];
                let keep = (rand() % (unsynced.len() as u64 + 1)) as usize;
                let mut tail = unsynced[..keep].to_vec();
                // Sometimes the surviving tail is garbage rather than the bytes written.
                if !tail.is_empty() && rand() % 4 == 0 {
                    let i = (rand() % tail.len() as u64) as usize;
                    tail[i] ^= 0x5A;
                }
                tail
            } else {
                Vec::new()
            };
            let mut data = inode.durable.clone();
            data.extend_from_slice(&extra);
            inode.data = data.clone();
            inode.durable = data;
        }
    }

    /// The next fsync fails with an I/O error.
    pub fn fail_next_sync(&self) {
        lock(&self.state).fail_next_sync = true;
    }

    /// Writes fail with `ENOSPC` while `on`.
    pub fn set_no_space(&self, on: bool) {
        lock(&self.state).no_space = on;
    }

    /// How many file fsyncs succeeded.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Bytes returned by reads so far.
    pub fn bytes_read(&self) -> u64 {
        lock(&self.state).bytes_read
    }
}

/// An append handle on a simulated file.
pub struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
}

impl VfsFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut st = lock(&self.state);
        if st.no_space {
            // A real ENOSPC can leave a partial write behind; so do we.
            if let Some(inode) = st.inodes.get_mut(&self.ino) {
                inode.data.extend_from_slice(&buf[..buf.len() / 2]);
            }
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        let inode = st.inodes.entry(self.ino).or_default();
        inode.data.extend_from_slice(buf);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut st = lock(&self.state);
        if st.fail_next_sync {
            st.fail_next_sync = false;
            return Err(io::Error::other("simulated fsync failure"));
        }
        st.syncs += 1;
        if let Some(inode) = st.inodes.get_mut(&self.ino) {
            inode.durable = inode.data.clone();
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut st = lock(&self.state);
        if let Some(inode) = st.inodes.get_mut(&self.ino) {
            inode.data.truncate(len as usize);
            inode.durable.truncate(len as usize);
        }
        Ok(())
    }
}

impl Vfs for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = lock(&self.state);
        Ok(st
            .ns
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open_append(&self, path: &Path) -> io::Result<SimFile> {
        let mut st = lock(&self.state);
        let ino = match st.ns.get(path) {
            Some(ino) => *ino,
            None => {
                st.next_ino += 1;
                let ino = st.next_ino;
                st.ns.insert(path.to_path_buf(), ino);
                st.inodes.insert(ino, Inode::default());
                ino
            }
        };
        Ok(SimFile {
            state: self.state.clone(),
            ino,
        })
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut st = lock(&self.state);
        let ino = st.ns.get(path).ok_or_else(|| not_found(path))?;
        let data = st.inodes.get(ino).map(|i| i.data.as_slice()).unwrap_or(&[]);
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(len).min(data.len());
        let out = data[start..end].to_vec();
        st.bytes_read += out.len() as u64;
        Ok(out)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let st = lock(&self.state);
        let ino = st.ns.get(path).ok_or_else(|| not_found(path))?;
        Ok(st.inodes.get(ino).map(|i| i.data.len() as u64).unwrap_or(0))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = lock(&self.state);
        let ino = *st.ns.get(path).ok_or_else(|| not_found(path))?;
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.data.truncate(len as usize);
            inode.durable = inode.data.clone();
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        let ino = st.ns.remove(from).ok_or_else(|| not_found(from))?;
        st.ns.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.ns.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        let st = &mut *st;
        st.durable_ns.retain(|p, _| p.parent() != Some(dir));
        for (p, ino) in &st.ns {
            if p.parent() == Some(dir) {
                st.durable_ns.insert(p.clone(), *ino);
            }
        }
        Ok(())
    }
}
