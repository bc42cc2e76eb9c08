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
//! Operator commands: `faultline dlq list DATA_DIR`, `faultline dlq drop DATA_DIR`, and
//! `faultline dlq replay` (asks the running server, which owns the WAL, to append the
//! payloads as new records and delete the dead letters; one that fails again comes back).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

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

/// The dead-letter directory of a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dlq")
}

impl DeadLetter {
    fn encode(&self) -> Vec<u8> {
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

    fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < 40 || &b[..8] != MAGIC {
            return Err("not a faultline dead letter (bad magic)".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err("checksum mismatch".into());
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&body[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| -> Result<usize, String> {
            body.get(i..i + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
                .ok_or_else(|| "truncated".to_string())
        };
        let r = u32_at(28)?;
        let reason = body.get(32..32 + r).ok_or("truncated reason")?;
        let p = u32_at(32 + r)?;
        let payload = body.get(36 + r..36 + r + p).ok_or("truncated payload")?;
        if 36 + r + p != body.len() {
            return Err("bytes after the payload".into());
        }
        Ok(Self {
            seq: u64_at(8),
            time_ns: u64_at(16),
            attempts: u32_at(24)? as u32,
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
                Err(reason) => bad.push((path, reason)),
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

/// `faultline dlq list DATA_DIR [--json]`.
pub fn list(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (letters, bad) = read_all(&dir(data_dir));
    for (path, d) in &letters {
        if json {
            println!(
                "{}",
                serde_json::json!({"seq": d.seq, "time_unix_nano": d.time_ns, "attempts": d.attempts,
                    "reason": d.reason, "payload_bytes": d.payload.len(), "file": path.display().to_string()})
            );
        } else {
            println!(
                "seq {} · {} attempts · {} payload bytes · {}",
                d.seq,
                d.attempts,
                d.payload.len(),
                d.reason
            );
        }
    }
    for (path, reason) in &bad {
        eprintln!("unreadable dead letter {}: {reason}", path.display());
    }
    if !json {
        println!(
            "{} dead letters in {}",
            letters.len(),
            dir(data_dir).display()
        );
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `faultline dlq drop DATA_DIR (--all | SEQ...)`: deletes dead letters for good.
pub fn drop(data_dir: &Path, all: bool, seqs: &[u64]) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        all || !seqs.is_empty(),
        "say which dead letters to drop: --all, or their sequence numbers (see `faultline dlq list`)"
    );
    let (letters, _) = read_all(&dir(data_dir));
    let mut dropped = 0;
    for (path, d) in letters {
        if all || seqs.contains(&d.seq) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot delete {}", path.display()))?;
            dropped += 1;
        }
    }
    println!("dropped {dropped} dead letters");
    Ok(ExitCode::SUCCESS)
}

/// `faultline dlq replay --api URL (--all | SEQ...)`: asks the running server to append the
/// payloads to its WAL again.
pub fn replay(api: &str, all: bool, seqs: &[u64]) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        all || !seqs.is_empty(),
        "say which dead letters to replay: --all, or their sequence numbers (see `faultline dlq list`)"
    );
    let query = if all {
        "all=true".to_string()
    } else {
        seqs.iter()
            .map(|s| format!("seq={s}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let url = format!("{}/api/v1/dlq/replay?{query}", api.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (status, body) = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach faultline at {url}; is it running? (--api)"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::Ok((status, body))
    })?;
    if status.is_success() {
        println!("{body}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("replay failed ({status}): {body}");
        Ok(ExitCode::from(1))
    }
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
}
