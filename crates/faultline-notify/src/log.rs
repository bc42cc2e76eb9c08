//! The outbox log: `DATA_DIR/outbox.log`, every change to the outbox appended and
//! fdatasynced before it counts, read back whole at start. Layout:
//!
//! ```text
//! header  8  magic    b"FLOUT001"
//!         4  version  1, little endian
//! then per record:
//!         4  len      body length, little endian
//!         4  crc      CRC32C of the body
//!       len  body     one JSON object, its kind in "t":
//!   {"t":"open","at":MS}                                   the outbox was created
//!   {"t":"event","at":MS,"to":[RECEIVER...],"event":{...}}  a transition to send
//!   {"t":"batch","at":MS,"id":ID,"receiver":R,"keys":[KEY...]}  a message formed, before
//!                                                           its first attempt
//!   {"t":"failed","at":MS,"id":ID,"error":TEXT}             an attempt that failed
//!   {"t":"sent","at":MS,"id":ID}                            the receiver accepted it
//!   {"t":"gave_up","at":MS,"id":ID,"error":TEXT}            retried for too long
//! ```
//!
//! A torn or corrupt tail (a crash mid-append) is cut off at start: the records before it
//! are intact because each append is synced before the next. At start the log is
//! rewritten (temporary file, fsync, rename) when most of it is history no longer kept.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Event;

const MAGIC: &[u8; 8] = b"FLOUT001";
const VERSION: u32 = 1;
const HEADER: usize = 12;

/// One change to the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Rec {
    Open {
        at: u64,
    },
    Event {
        at: u64,
        to: Vec<String>,
        event: Event,
    },
    Batch {
        at: u64,
        id: String,
        receiver: String,
        keys: Vec<String>,
    },
    Failed {
        at: u64,
        id: String,
        error: String,
    },
    Sent {
        at: u64,
        id: String,
    },
    GaveUp {
        at: u64,
        id: String,
        error: String,
    },
}

/// The records of `path` (none if it does not exist), how many bytes of it are valid,
/// and whether a torn or corrupt tail followed them.
pub(crate) fn read(path: &Path) -> std::io::Result<(Vec<Rec>, u64, bool)> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0, false)),
        Err(e) => return Err(e),
    }
    if bytes.len() < HEADER {
        // Created but the header never reached the disk: nothing was ever appended.
        return Ok((Vec::new(), 0, !bytes.is_empty()));
    }
    if &bytes[..8] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an outbox log (wrong magic); move it aside",
        ));
    }
    let (mut out, mut at) = (Vec::new(), HEADER);
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 8) else {
            return Ok((out, at as u64, true));
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            return Ok((out, at as u64, true));
        };
        match serde_json::from_slice::<Rec>(body) {
            Ok(r) if crc32c::crc32c(body) == crc => out.push(r),
            _ => return Ok((out, at as u64, true)),
        }
        at += 8 + len;
    }
    Ok((out, at as u64, false))
}

fn frame(r: &Rec) -> std::io::Result<Vec<u8>> {
    let body = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    let mut f = Vec::with_capacity(body.len() + 8);
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    f.extend_from_slice(&body);
    Ok(f)
}

/// Appends records, each synced before `append` returns.
#[derive(Debug)]
pub(crate) struct Appender {
    file: std::fs::File,
    path: PathBuf,
}

impl Appender {
    /// Opens `path` for appending after its first `valid` bytes (a torn tail is cut off),
    /// writing the header if it is new.
    pub(crate) fn open(path: &Path, valid: u64) -> std::io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        if valid < HEADER as u64 {
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            file.write_all(&VERSION.to_le_bytes())?;
        } else {
            file.set_len(valid)?;
        }
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0))?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one record and syncs it. Blocking.
    pub(crate) fn append(&mut self, r: &Rec) -> std::io::Result<()> {
        self.file.write_all(&frame(r)?)?;
        self.file.sync_data()
    }

    /// Replaces the log with `records` (temporary file, fsync, rename). Blocking.
    pub(crate) fn rewrite(&mut self, records: &[Rec]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        let mut all = Vec::new();
        all.extend_from_slice(MAGIC);
        all.extend_from_slice(&VERSION.to_le_bytes());
        for r in records {
            all.extend_from_slice(&frame(r)?);
        }
        f.write_all(&all)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        *self = Self::open(&self.path, all.len() as u64)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.log");
        let mut a = Appender::open(&path, 0).unwrap();
        let recs = vec![
            Rec::Open { at: 1 },
            Rec::Sent {
                at: 2,
                id: "b1".into(),
            },
        ];
        for r in &recs {
            a.append(r).unwrap();
        }
        drop(a);
        let whole = std::fs::metadata(&path).unwrap().len();
        // A record cut short, then one with a bad checksum.
        for tail in [
            &[40u8, 0, 0, 0, 1, 2, 3][..],
            &[2, 0, 0, 0, 0, 0, 0, 0, b'{', b'}'],
        ] {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(tail).unwrap();
            drop(f);
            let (got, valid, torn) = read(&path).unwrap();
            assert_eq!((got, valid, torn), (recs.clone(), whole, true));
            // Appending after the cut leaves a clean log.
            let mut a = Appender::open(&path, valid).unwrap();
            a.append(&Rec::Open { at: 3 }).unwrap();
            drop(a);
            let (got, _, torn) = read(&path).unwrap();
            assert!(!torn);
            assert_eq!(got.len(), 3);
            let mut a = Appender::open(&path, whole).unwrap();
            a.rewrite(&recs).unwrap();
        }
        std::fs::write(&path, b"NOTALOG!\x01\0\0\0").unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .contains("move it aside")
        );
    }
}
