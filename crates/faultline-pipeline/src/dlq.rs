//! Dead letters: WAL records the pipeline could not process after [`MAX_ATTEMPTS`] tries.
//! Each is moved to `DATA_DIR/dlq/SEQ.dead` with the reason and the attempt count, and the
//! pipeline goes on with the next record: nothing behind a poison record waits.
//!
//! File format (little endian), written to a temporary name, fsynced and renamed, so a
//! dead letter is durable before the WAL may be truncated past its record:
//!
//! ```text
//! 0   8  magic     b"FLDEAD01"
//! 8   8  seq       the record's WAL sequence number
//! 16  8  time      when it was dead-lettered, Unix nanoseconds
//! 24  4  attempts  how many times processing was tried
//! 28  4  r         reason length, then r bytes of UTF-8
//! ..  4  p         payload length, then p bytes: the WAL record's payload, unchanged
//! ..  4  crc       CRC32C of everything before it
//! ```
//!
//! The operator commands (`faultline dlq list|drop|replay`) read and delete these files
//! through [`read_all`]; replay asks the running server, which owns the WAL, to append the
//! payloads as new records and delete the dead letters (one that fails again comes back).

use std::path::{Path, PathBuf};

/// Processing attempts before a record becomes a dead letter.
pub const MAX_ATTEMPTS: u32 = 3;
const MAGIC: &[u8; 8] = b"FLDEAD01";

/// One dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// WAL sequence number of the record.
    pub seq: u64,
    /// When it was dead-lettered, Unix nanoseconds.
    pub time_ns: u64,
    /// Processing attempts.
    pub attempts: u32,
    /// Why processing failed (the last error).
    pub reason: String,
    /// The record's payload.
    pub payload: Vec<u8>,
}

/// Why a dead-letter file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterError {
    /// The file does not start with the dead-letter magic number.
    #[error("not a faultline dead letter (bad magic number)")]
    Magic,
    /// The checksum does not match: the file was damaged after it was written.
    #[error("checksum mismatch: the file is damaged")]
    Checksum,
    /// The file ends inside the named field.
    #[error("truncated inside the {0}")]
    Truncated(&'static str),
    /// There are bytes after the payload.
    #[error("bytes after the payload")]
    Trailing,
}

/// The dead-letter directory of a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dlq")
}

impl DeadLetter {
    /// The file's bytes (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.reason.len() + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.time_ns.to_le_bytes());
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.extend_from_slice(&(self.reason.len() as u32).to_le_bytes());
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a dead letter from its file's bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DeadLetterError> {
        if b.len() < 40 || &b[..8] != MAGIC {
            return Err(DeadLetterError::Magic);
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(DeadLetterError::Checksum);
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&body[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize, what: &'static str| {
            body.get(i..i + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
                .ok_or(DeadLetterError::Truncated(what))
        };
        let r = u32_at(28, "reason length")?;
        let reason = body
            .get(32..32 + r)
            .ok_or(DeadLetterError::Truncated("reason"))?;
        let p = u32_at(32 + r, "payload length")?;
        let payload = body
            .get(36 + r..36 + r + p)
            .ok_or(DeadLetterError::Truncated("payload"))?;
        if 36 + r + p != body.len() {
            return Err(DeadLetterError::Trailing);
        }
        Ok(Self {
            seq: u64_at(8),
            time_ns: u64_at(16),
            attempts: u32_at(24, "attempts")? as u32,
            reason: String::from_utf8_lossy(reason).into_owned(),
            payload: payload.to_vec(),
        })
    }

    /// Writes the dead letter durably into `dir` (see the module doc). Blocking.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{:020}.dead", self.seq));
        let tmp = dir.join(format!("{:020}.dead.tmp", self.seq));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&self.encode())?;
        f.sync_all()?;
        std::mem::drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(path)
    }
}

/// Dead letters with their files.
type Letters = Vec<(PathBuf, DeadLetter)>;
/// Unreadable dead-letter files with the reason.
type Unreadable = Vec<(PathBuf, String)>;

/// Deletes the dead letters in `dir` whose sequence number `wanted` picks; how many. An
/// error names the file that could not be deleted.
pub fn drop_letters(
    dir: &Path,
    wanted: impl Fn(u64) -> bool,
) -> Result<usize, (PathBuf, std::io::Error)> {
    let (letters, _) = read_all(dir);
    let mut dropped = 0;
    for (path, _) in letters.into_iter().filter(|(_, d)| wanted(d.seq)) {
        std::fs::remove_file(&path).map_err(|e| (path.clone(), e))?;
        dropped += 1;
    }
    Ok(dropped)
}

impl DeadLetter {
    /// A line of `faultline dlq list --json`.
    pub fn summary_json(&self, path: &Path) -> serde_json::Value {
        serde_json::json!({"seq": self.seq, "time_unix_nano": self.time_ns, "attempts": self.attempts,
            "reason": self.reason, "payload_bytes": self.payload.len(), "file": path.display().to_string()})
    }
}

/// What `faultline dlq list` prints for the dead letters of `data_dir`: for standard
/// output one line per letter (its [`DeadLetter::summary_json`] with `json`, else a
/// sentence) and, without `json`, their count; for standard error one line per
/// unreadable file.
pub fn list_lines(data_dir: &Path, json: bool) -> (Vec<String>, Vec<String>) {
    let (letters, bad) = read_all(&dir(data_dir));
    let mut out: Vec<String> = letters
        .iter()
        .map(|(path, d)| match json {
            true => d.summary_json(path).to_string(),
            false => format!(
                "seq {} · {} attempts · {} payload bytes · {}",
                d.seq,
                d.attempts,
                d.payload.len(),
                d.reason
            ),
        })
        .collect();
    if !json {
        let n = letters.len();
        out.push(format!("{n} dead letters in {}", dir(data_dir).display()));
    }
    let errors = bad
        .iter()
        .map(|(path, why)| format!("unreadable dead letter {}: {why}", path.display()))
        .collect();
    (out, errors)
}

/// Every dead letter in `dir`, by sequence number, with unreadable files reported apart.
pub fn read_all(dir: &Path) -> (Letters, Unreadable) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (ok, bad);
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "dead") {
            continue;
        }
        match std::fs::read(&path) {
            Ok(b) => match DeadLetter::decode(&b) {
                Ok(d) => ok.push((path, d)),
                Err(reason) => bad.push((path, reason.to_string())),
            },
            Err(err) => bad.push((path, err.to_string())),
        }
    }
    ok.sort_by_key(|(_, d)| d.seq);
    (ok, bad)
}

/// Number of dead letters in `dir` (files, readable or not).
pub fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "dead"))
                .count()
        })
        .unwrap_or(0)
}

/// Why a replay stopped: what it replayed before, and the WAL's refusal.
#[derive(Debug, thiserror::Error)]
#[error("replayed {} dead letters, then the WAL refused: {source}", replayed.len())]
pub struct ReplayError {
    /// `(old seq, new seq)` of each dead letter replayed before the error.
    pub replayed: Vec<(u64, u64)>,
    /// The WAL's error (full, or failed).
    #[source]
    pub source: faultline_wal::WalError,
}

/// Appends the payload of every dead letter in `dir` that `wanted` selects (by its WAL
/// sequence number) to `wal` as a new record, then deletes the dead letter; answers
/// `(old seq, new seq)` of each. One that fails processing again comes back as a new dead
/// letter. Blocking (waits for each record's fsync).
pub fn replay(
    wal: &faultline_wal::Wal,
    dir: &Path,
    wanted: impl Fn(u64) -> bool,
) -> Result<Vec<(u64, u64)>, ReplayError> {
    let (letters, _) = read_all(dir);
    let mut replayed = Vec::new();
    for (path, d) in letters {
        if !wanted(d.seq) {
            continue;
        }
        match wal.append_blocking(d.payload) {
            Ok(ack) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "replayed a dead letter but cannot delete it; drop it with `faultline dlq drop`");
                }
                replayed.push((d.seq, ack.seq));
            }
            Err(source) => return Err(ReplayError { replayed, source }),
        }
    }
    Ok(replayed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_round_trip_and_damage_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let d = DeadLetter {
            seq: 42,
            time_ns: 7,
            attempts: 3,
            reason: "bad envelope".into(),
            payload: vec![1, 2, 3],
        };
        let path = d.write(tmp.path()).unwrap();
        let (ok, bad) = read_all(tmp.path());
        assert_eq!((ok.len(), bad.len()), (1, 0));
        assert_eq!(ok[0].1, d);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (ok, bad) = read_all(tmp.path());
        assert_eq!((ok.len(), bad.len()), (0, 1));
        assert!(bad[0].1.contains("checksum"));
        assert_eq!(count(tmp.path()), 1);
    }

    #[test]
    fn the_list_names_each_letter_and_each_unreadable_file() {
        let data = tempfile::tempdir().unwrap();
        let d = DeadLetter {
            seq: 9,
            time_ns: 7,
            attempts: 5,
            reason: "no spans".into(),
            payload: vec![0; 12],
        };
        d.write(&dir(data.path())).unwrap();
        std::fs::write(dir(data.path()).join("10.dead"), b"garbage").unwrap();
        let (out, err) = list_lines(data.path(), false);
        assert_eq!(out[0], "seq 9 · 5 attempts · 12 payload bytes · no spans");
        assert!(out[1].starts_with("1 dead letters in "), "{out:?}");
        assert_eq!(err.len(), 1);
        assert!(err[0].contains("10.dead"), "{err:?}");
        let (out, _) = list_lines(data.path(), true);
        let v: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            (out.len(), &v["seq"], &v["attempts"]),
            (1, &9.into(), &5.into())
        );
    }

    /// Re-checksums a body so that the structural check, not the CRC, must catch it.
    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    #[test]
    fn damaged_files_are_named_never_misread() {
        let d = DeadLetter {
            seq: 9,
            time_ns: 1,
            attempts: 3,
            reason: "bad envelope".into(),
            payload: vec![1, 2, 3],
        };
        let good = d.encode();
        assert_eq!(DeadLetter::decode(&good).unwrap(), d);
        let body = good[..good.len() - 4].to_vec();
        let mut magic = good.clone();
        magic[0] ^= 1;
        let mut long_reason = body.clone();
        long_reason[28..32].copy_from_slice(&10_000u32.to_le_bytes());
        let mut trailing = body.clone();
        trailing.push(0);
        let table: Vec<(&str, Vec<u8>, DeadLetterError)> = vec![
            ("bad magic", magic, DeadLetterError::Magic),
            ("short file", good[..20].to_vec(), DeadLetterError::Magic),
            (
                "one flipped bit",
                {
                    let mut b = good.clone();
                    b[45] ^= 4;
                    b
                },
                DeadLetterError::Checksum,
            ),
            (
                "cut payload",
                sealed(body[..body.len() - 1].to_vec()),
                DeadLetterError::Truncated("payload"),
            ),
            (
                "reason past the end",
                sealed(long_reason),
                DeadLetterError::Truncated("reason"),
            ),
            (
                "bytes after the payload",
                sealed(trailing),
                DeadLetterError::Trailing,
            ),
        ];
        for (what, bytes, want) in table {
            assert_eq!(DeadLetter::decode(&bytes), Err(want), "{what}");
        }
    }
}
