//! The audit log: every control action (a request the route map marks as control: probe,
//! rule, dead-letter and fault-proxy changes, experiment runs reported), who made it,
//! when, and how it ended, including refusals of a known token for a missing scope.
//! Requests without a known token are not recorded (they are counted in
//! `faultline_auth_failures_total`): a caller without a token cannot grow this file.
//!
//! Kept as long as the store keeps spans (its retention), one file per UTC day:
//! `DATA_DIR/audit/audit-DAY.log`, DAY the Unix day number. Each record is one line of
//! JSON, appended and fdatasynced before the action's answer is sent:
//!
//! ```text
//! {"at":1767225600123,"who":"ops-alice","peer":"10.0.3.7:51234","listener":"api",
//!  "method":"POST","target":"/api/v1/probes/checkout/pause","status":200}
//! {"at":1767225601000,"who":"ci","peer":"10.0.3.9:40112","listener":"fault-proxy",
//!  "method":"POST","target":"/proxies","object":"redis","status":201}
//! ```
//!
//! - `at`: Unix milliseconds; `who`: the token's name (`anonymous` while auth is off);
//! - `peer`: the client's address as the listener saw it (absent in records written
//!   before it was kept, and for actions that came through no listener);
//! - `listener`: `api` or `fault-proxy`; `method`, `target`: the HTTP method and the path
//!   with its query (at most 1024 bytes), which names the object for most routes;
//! - `object`: the `name` field of a JSON body of at most 64 KiB, when there is one (the
//!   object a `POST` creates); absent otherwise;
//! - `status`: the answer's HTTP status (403 for a token without the scope).
//!
//! A torn last line (a crash mid-write) is skipped when read. Files of days wholly older
//! than the retention are deleted at start and at the first record of each day.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 86_400_000;

/// Longest `target` kept.
pub const MAX_TARGET: usize = 1024;

/// One control action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix milliseconds.
    pub at: u64,
    /// The token's name.
    pub who: String,
    /// The client's address, `IP:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The listener.
    pub listener: String,
    /// The HTTP method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The `name` of the body's JSON object, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The answer's status.
    pub status: u16,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The audit log of one data directory.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    retention: Duration,
    open: Mutex<Option<(u64, std::fs::File)>>,
}

fn file_of(dir: &Path, day: u64) -> PathBuf {
    dir.join(format!("audit-{day}.log"))
}

/// The days of the files in `dir`, ascending.
fn days(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("audit-")?
                        .strip_suffix(".log")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

impl AuditLog {
    /// Opens (creating) `DATA_DIR/audit`, deleting files past `retention`. Blocking.
    pub fn open(data_dir: &Path, retention: Duration) -> std::io::Result<AuditLog> {
        let dir = data_dir.join("audit");
        std::fs::create_dir_all(&dir)?;
        let log = AuditLog {
            dir,
            retention,
            open: Mutex::new(None),
        };
        log.prune(now_ms());
        Ok(log)
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn prune(&self, now_ms: u64) {
        let oldest_kept = now_ms.saturating_sub(self.retention.as_millis() as u64) / DAY_MS;
        for day in days(&self.dir).into_iter().filter(|d| *d < oldest_kept) {
            if let Err(e) = std::fs::remove_file(file_of(&self.dir, day)) {
                tracing::warn!(
                    "cannot delete the old audit log {}: {e}",
                    file_of(&self.dir, day).display()
                );
            }
        }
    }

    /// Appends `r` and syncs it. Blocking.
    pub fn append(&self, r: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let day = r.at / DAY_MS;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.as_ref().is_none_or(|(d, _)| *d != day) {
            *open = None;
            self.prune(r.at);
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file_of(&self.dir, day))?;
            *open = Some((day, f));
        }
        if let Some((_, f)) = open.as_mut() {
            f.write_all(&line)?;
            f.sync_data()?;
        }
        Ok(())
    }

    /// The newest records, newest first: at most `limit`, only `who`'s when given, and how
    /// many lines could not be read. Blocking.
    pub fn recent(&self, limit: usize, who: Option<&str>) -> (Vec<Record>, u64) {
        let (mut out, mut bad) = (Vec::new(), 0u64);
        for day in days(&self.dir).into_iter().rev() {
            let Ok(f) = std::fs::File::open(file_of(&self.dir, day)) else {
                bad += 1;
                continue;
            };
            let mut of_day: Vec<Record> = Vec::new();
            for line in std::io::BufReader::new(f).split(b'\n') {
                match line.map(|l| serde_json::from_slice::<Record>(&l)) {
                    Ok(Ok(r)) => {
                        if who.is_none_or(|w| w == r.who) {
                            of_day.push(r);
                        }
                    }
                    _ => bad += 1,
                }
            }
            out.extend(of_day.into_iter().rev());
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        (out, bad)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(at: u64, who: &str, target: &str) -> Record {
        Record {
            at,
            who: who.into(),
            peer: Some("127.0.0.1:40000".into()),
            listener: "api".into(),
            method: "POST".into(),
            target: target.into(),
            object: None,
            status: 200,
        }
    }

    #[test]
    fn records_read_back_newest_first_filtered_and_past_a_torn_line() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), Duration::from_secs(30 * 86_400)).unwrap();
        let now = now_ms();
        log.append(&rec(now - DAY_MS, "alice", "/a")).unwrap();
        log.append(&rec(now, "bob", "/b")).unwrap();
        log.append(&Record {
            object: Some("redis".into()),
            ..rec(now + 1, "alice", "/c")
        })
        .unwrap();
        let (all, bad) = log.recent(10, None);
        assert_eq!(bad, 0);
        let targets: Vec<&str> = all.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(targets, ["/c", "/b", "/a"]);
        assert_eq!(all[0].object.as_deref(), Some("redis"));
        let (alice, _) = log.recent(10, Some("alice"));
        assert_eq!(alice.len(), 2);
        assert_eq!(log.recent(1, None).0[0].target, "/c");
        // A crash mid-line: that line is skipped, the rest read.
        let today = file_of(log.dir(), now / DAY_MS);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&today)
            .unwrap();
        f.write_all(b"{\"at\":1,\"who\":").unwrap();
        let (all, bad) = log.recent(10, None);
        assert_eq!((all.len(), bad), (3, 1));
        // The format is one JSON object a line, as documented.
        let text = std::fs::read_to_string(&today).unwrap();
        assert!(text.starts_with("{\"at\":"), "{text}");
        assert!(text.contains("\"object\":\"redis\""), "{text}");
    }

    #[test]
    fn files_past_the_retention_are_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let log = AuditLog::open(tmp.path(), week).unwrap();
        let now = now_ms();
        log.append(&rec(now - 10 * DAY_MS, "old", "/old")).unwrap();
        log.append(&rec(now - 3 * DAY_MS, "mid", "/mid")).unwrap();
        log.append(&rec(now, "new", "/new")).unwrap();
        // The day change to today pruned the ten-day-old file.
        let whos: Vec<String> = log.recent(10, None).0.into_iter().map(|r| r.who).collect();
        assert_eq!(whos, ["new", "mid"]);
        // And a restart prunes too.
        drop(log);
        let short = AuditLog::open(tmp.path(), Duration::from_secs(86_400)).unwrap();
        let whos: Vec<String> = short
            .recent(10, None)
            .0
            .into_iter()
            .map(|r| r.who)
            .collect();
        assert_eq!(whos, ["new"]);
    }

    #[test]
    fn clip_keeps_characters_whole() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("abc", 10), "abc");
    }
}
