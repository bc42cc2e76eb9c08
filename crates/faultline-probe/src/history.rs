//! The results log: every check's result, appended by a writer thread and read back at
//! start, so results, up/down state, incidents and uptime survive restarts. Kept as long
//! as the store keeps spans (its retention), in one segment per UTC day:
//! `DATA_DIR/probes/results-DAY.log`, DAY the Unix day number. Layout:
//!
//! ```text
//! header  8  magic    b"FLPRB001"
//!         4  version  1, little endian
//! then per record:
//!         4  len      body length, little endian
//!         4  crc      CRC32C of the body
//!       len  body     the result as JSON: {"probe", "at" (Unix ms), "lagUs", "ok",
//!                     "totalUs", "phases": [["resolve", us], ...], "status", "error",
//!                     "traceId" (hex), "spanError", "certNotAfter" (Unix s, https;
//!                     absent otherwise), "warning" (absent when none)}
//! ```
//!
//! The writer appends as results come and fdatasyncs at most once a second (a result is
//! not an acknowledgement to anyone; a crash loses at most the last second of them),
//! except a result that changes a probe's state: it is synced (with all before it) before
//! its notification is enqueued, so the outbox never tells of a transition the log lost. A
//! torn or corrupt tail is ignored when read (counted in the start-up log); segments of
//! days wholly older than the retention are deleted at start and at each new day.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::CheckResult;
use crate::check::{Outcome, Phase};

const MAGIC: &[u8; 8] = b"FLPRB001";
const VERSION: u32 = 1;
const HEADER: usize = 12;
const DAY_MS: u64 = 86_400_000;

/// One result as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    pub probe: String,
    pub at: u64,
    pub lag_us: u64,
    pub ok: bool,
    pub total_us: u64,
    pub phases: Vec<(String, u64)>,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub trace_id: String,
    pub span_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

fn phase(name: &str) -> Option<Phase> {
    Phase::ALL.into_iter().find(|p| p.as_str() == name)
}

impl Record {
    pub(crate) fn of(probe: &str, r: &CheckResult) -> Self {
        let us = |d: Duration| d.as_micros() as u64;
        Self {
            probe: probe.to_string(),
            at: r.at_ms,
            lag_us: us(r.lag),
            ok: r.outcome.ok,
            total_us: us(r.outcome.total),
            phases: r
                .outcome
                .phases
                .iter()
                .map(|(p, d)| (p.as_str().to_string(), us(*d)))
                .collect(),
            status: r.outcome.status,
            error: r.outcome.error.clone(),
            trace_id: faultline_model::hex(&r.trace_id),
            span_error: r.span_error.clone(),
            cert_not_after: r.outcome.cert_not_after,
            warning: r.outcome.warning.clone(),
        }
    }

    pub(crate) fn result(&self) -> CheckResult {
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = self
                .trace_id
                .get(i * 2..i * 2 + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
        }
        CheckResult {
            at_ms: self.at,
            lag: Duration::from_micros(self.lag_us),
            outcome: Outcome {
                ok: self.ok,
                phases: self
                    .phases
                    .iter()
                    .filter_map(|(n, us)| phase(n).map(|p| (p, Duration::from_micros(*us))))
                    .collect(),
                total: Duration::from_micros(self.total_us),
                status: self.status,
                address: None,
                redirects: 0,
                error: self.error.clone(),
                cert_not_after: self.cert_not_after,
                warning: self.warning.clone(),
            },
            trace_id,
            span_error: self.span_error.clone(),
        }
    }
}

fn segment(dir: &Path, day: u64) -> PathBuf {
    dir.join(format!("results-{day}.log"))
}

/// The days of the segments in `dir`, ascending.
fn days(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("results-")?
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

/// Deletes the segments of days wholly older than `retention` before `now_ms`.
fn prune(dir: &Path, now_ms: u64, retention: Duration) {
    let oldest_kept = now_ms.saturating_sub(retention.as_millis() as u64) / DAY_MS;
    for day in days(dir).into_iter().filter(|d| *d < oldest_kept) {
        if let Err(e) = std::fs::remove_file(segment(dir, day)) {
            tracing::warn!(
                "cannot delete the old probe results {}: {e}",
                segment(dir, day).display()
            );
        }
    }
}

/// Every stored result within `retention` of `now_ms`, oldest first, and how many
/// records were unreadable. Blocking.
pub(crate) fn read(dir: &Path, now_ms: u64, retention: Duration) -> (Vec<Record>, u64) {
    prune(dir, now_ms, retention);
    let since = now_ms.saturating_sub(retention.as_millis() as u64);
    let (mut out, mut bad) = (Vec::new(), 0u64);
    for day in days(dir) {
        let mut bytes = Vec::new();
        if std::fs::File::open(segment(dir, day))
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .is_err()
            || bytes.len() < HEADER
            || &bytes[..8] != MAGIC
        {
            bad += 1;
            continue;
        }
        let mut at = HEADER;
        loop {
            if at == bytes.len() {
                break;
            }
            if at + 8 > bytes.len() {
                bad += 1; // a torn frame header
                break;
            }
            let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                as usize;
            let crc =
                u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
            let Some(body) = bytes.get(at + 8..at + 8 + len) else {
                bad += 1; // a torn tail
                break;
            };
            match serde_json::from_slice::<Record>(body) {
                Ok(r) if crc32c::crc32c(body) == crc => {
                    if r.at >= since {
                        out.push(r);
                    }
                }
                _ => {
                    bad += 1;
                    break; // past a corrupt record the framing cannot be trusted
                }
            }
            at += 8 + len;
        }
    }
    out.sort_by_key(|r| r.at);
    (out, bad)
}

/// The writer thread's handle: results sent here are appended to the log.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<(Record, Option<tokio::sync::oneshot::Sender<()>>)>,
}

impl Writer {
    /// Starts the writer thread for `dir` (created if missing).
    pub(crate) fn start(dir: PathBuf, retention: Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("probe-results".into())
            .spawn(move || write_loop(&dir, retention, &rx))?;
        Ok(Self { tx })
    }

    /// Queues a result (never blocks).
    pub(crate) fn append(&self, r: Record) {
        // The thread ends only when every sender is gone.
        let _ = self.tx.send((r, None));
    }

    /// Queues a result; the answer comes once it (and every result before it) is synced.
    pub(crate) fn append_synced(&self, r: Record) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send((r, Some(tx)));
        rx
    }
}

type Queued = (Record, Option<tokio::sync::oneshot::Sender<()>>);

fn write_loop(dir: &Path, retention: Duration, rx: &mpsc::Receiver<Queued>) {
    let mut open: Option<(u64, std::fs::File)> = None;
    let mut dirty = false;
    loop {
        let r = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => Some(r),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some((r, synced)) = r {
            let day = r.at / DAY_MS;
            if open.as_ref().is_none_or(|(d, _)| *d != day) {
                if let Some((_, f)) = open.take() {
                    let _ = f.sync_data();
                }
                prune(dir, r.at, retention);
                match open_segment(dir, day) {
                    Ok(f) => open = Some((day, f)),
                    Err(e) => {
                        tracing::warn!(
                            "cannot open the probe results log in {}: {e}",
                            dir.display()
                        );
                        continue;
                    }
                }
            }
            if let (Some((_, f)), Ok(body)) = (open.as_mut(), serde_json::to_vec(&r)) {
                let mut frame = Vec::with_capacity(body.len() + 8);
                frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
                frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
                frame.extend_from_slice(&body);
                if let Err(e) = f.write_all(&frame) {
                    tracing::warn!("cannot append to the probe results log: {e}");
                }
                dirty = true;
                if let Some(tx) = synced {
                    match f.sync_data() {
                        Ok(()) => {
                            dirty = false;
                            let _ = tx.send(());
                        }
                        // The waiter sees the sender dropped: not synced.
                        Err(e) => tracing::warn!("cannot sync the probe results log: {e}"),
                    }
                }
            }
        } else if dirty {
            if let Some((_, f)) = &open {
                let _ = f.sync_data();
            }
            dirty = false;
        }
    }
    if let Some((_, f)) = open {
        let _ = f.sync_data();
    }
}

fn open_segment(dir: &Path, day: u64) -> std::io::Result<std::fs::File> {
    let path = segment(dir, day);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    if f.metadata()?.len() == 0 {
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        f.write_all(&h)?;
    }
    Ok(f)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(probe: &str, at: u64, ok: bool) -> Record {
        Record {
            probe: probe.into(),
            at,
            lag_us: 5,
            ok,
            total_us: 1200,
            phases: vec![("resolve".into(), 10), ("connect".into(), 90)],
            status: Some(200),
            error: (!ok).then(|| "HTTP 500".into()),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_error: None,
            cert_not_after: None,
            warning: None,
        }
    }

    #[test]
    fn results_round_trip_survive_a_torn_tail_and_expire_with_retention() {
        let dir = tempfile::tempdir().unwrap();
        let now = 40 * DAY_MS + 1000;
        let w = Writer::start(dir.path().to_path_buf(), Duration::from_secs(7 * 86_400)).unwrap();
        w.append(rec("a", 30 * DAY_MS, true)); // older than a week: its day is deleted
        w.append(rec("a", 39 * DAY_MS, false));
        w.append(rec("b", now, true));
        drop(w);
        // The writer thread finishes its queue and syncs when the sender goes.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while days(dir.path()) != vec![39, 40] {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                days(dir.path())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        // A torn record at the end of today's segment.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(segment(dir.path(), 40))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let (got, bad) = read(dir.path(), now, Duration::from_secs(7 * 86_400));
        assert_eq!(bad, 1);
        let kept: Vec<(&str, u64, bool)> =
            got.iter().map(|r| (r.probe.as_str(), r.at, r.ok)).collect();
        assert_eq!(kept, vec![("a", 39 * DAY_MS, false), ("b", now, true)]);
        let r = got[0].result();
        assert_eq!(
            r.outcome.phases,
            vec![
                (Phase::Dns, Duration::from_micros(10)),
                (Phase::Connect, Duration::from_micros(90))
            ]
        );
        assert_eq!(
            faultline_model::hex(&r.trace_id),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(r.outcome.error.as_deref(), Some("HTTP 500"));
    }
}
