//! Tail sampling: which stored traces to keep once they are complete, and the record of
//! every decision.
//!
//! **Where it runs.** After the WAL and after the rollups: spans are acknowledged, indexed
//! (RED, dependencies and the tracing-health findings see every span) and sealed into a
//! block as always. A block sealed at least [`TailPolicy::wait_secs`] ago is then decided
//! once (`store/tail_pass.rs`): each of its traces is kept or dropped by [`decide`], and the
//! block is rewritten without the dropped traces, beside a record of what was decided. The
//! new block and its record are durable before the manifest names them, so a crash leaves
//! either the old block (decided again after the restart) or the new one with its record:
//! a dropped trace is a recorded decision, never a loss.
//!
//! **Policies** ([`TailPolicy`]), in order, for each trace (times corrected for clock
//! skew; a trace with spans in several blocks is judged as a whole):
//! 1. `keep_errors`: a trace with an error span is kept;
//! 2. `keep_slower_than_p99`: a trace longer than the p99 of its root operation (service,
//!    name and span kind) over the last hour (from the rollups, which saw every span) is
//!    kept;
//! 3. the rest: per root service, about `rest_traces_per_second` traces per second of the
//!    block's time range are kept, chosen by a hash of the trace id (so the parts of one
//!    trace in different blocks get the same decision); the others are dropped.
//!
//! **The record** `BLOCKID.tails` (JSON, [`TailRecord`]): `{"version": 1,
//! "decided_at_s", "services": {SERVICE: {"kept_error", "kept_slow", "kept_rate",
//! "dropped": {"traces", "spans"}}}, "dropped": [hex trace ids]}`, counted by root
//! service. Compaction merges the records of the blocks it merges; retention deletes a
//! record with its block. A trace looked up by id that was dropped is answered as such.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use faultline_model::span::{Span, SpanKind, TraceId};

/// The tail-sampling policy (`[tail_sampling]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailPolicy {
    /// Off by default.
    pub enabled: bool,
    /// How long after its block is sealed a trace is decided (its spans have arrived).
    pub wait_secs: u64,
    /// Keep every trace with an error span.
    pub keep_errors: bool,
    /// Keep every trace slower than its root operation's p99 over the last hour.
    pub keep_slower_than_p99: bool,
    /// Of the rest, keep about this many traces per second per root service (0: none).
    pub rest_traces_per_second: f64,
}

impl Default for TailPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            wait_secs: 30,
            keep_errors: true,
            keep_slower_than_p99: true,
            rest_traces_per_second: 10.0,
        }
    }
}

/// Longest wait accepted: a decision later than this keeps undecided blocks too long.
pub const MAX_WAIT_SECS: u64 = 3600;

impl TailPolicy {
    /// Checks the values; the error names the key and what is accepted.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_WAIT_SECS).contains(&self.wait_secs) {
            return Err(format!(
                "tail_sampling.wait_secs = {} must be from 1 to {MAX_WAIT_SECS}",
                self.wait_secs
            ));
        }
        if !self.rest_traces_per_second.is_finite() || self.rest_traces_per_second < 0.0 {
            return Err(format!(
                "tail_sampling.rest_traces_per_second = {} must be a number of at least 0",
                self.rest_traces_per_second
            ));
        }
        Ok(())
    }
}

/// Why a trace was kept or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It has an error span.
    KeptError,
    /// It is slower than its root operation's p99.
    KeptSlow,
    /// Within the rate of the rest.
    KeptRate,
    /// Beyond the rate of the rest.
    Dropped,
}

impl Decision {
    /// Whether the trace stays.
    pub fn keeps(self) -> bool {
        self != Self::Dropped
    }
}

/// What the policy needs to know about one trace.
#[derive(Debug, Clone)]
pub struct TraceFacts {
    /// Any error span.
    pub error: bool,
    /// Duration (clock-skew corrected), nanoseconds.
    pub duration_ns: u64,
    /// The root operation's p99 over the last hour, nanoseconds, if known.
    pub root_p99_ns: Option<u64>,
    /// The share (0 to 1) of its root service's other traces the rate allows.
    pub rest_share: f64,
}

/// The decision for a trace with id `id` (see the module header).
pub fn decide(policy: &TailPolicy, id: &TraceId, facts: &TraceFacts) -> Decision {
    if policy.keep_errors && facts.error {
        return Decision::KeptError;
    }
    if policy.keep_slower_than_p99 && facts.root_p99_ns.is_some_and(|p| facts.duration_ns > p) {
        return Decision::KeptSlow;
    }
    if unit(id) < facts.rest_share {
        Decision::KeptRate
    } else {
        Decision::Dropped
    }
}

/// The trace id hashed to [0, 1): the same for every part of a trace.
fn unit(id: &TraceId) -> f64 {
    let h = twox_hash::XxHash64::oneshot(0x7a11_5a3d, id);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The share of `n` rest traces of one service spread over `secs` seconds that the rate
/// keeps.
pub fn rest_share(policy: &TailPolicy, n: usize, secs: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    (policy.rest_traces_per_second * secs.max(1.0) / n as f64).min(1.0)
}

/// The root service, operation and span kind of a trace: its earliest span without a
/// parent (else its earliest span).
pub fn root(spans: &[&Span]) -> Option<(String, String, SpanKind)> {
    spans
        .iter()
        .filter(|s| s.parent_span_id.is_none())
        .min_by_key(|s| s.start_ns)
        .or_else(|| spans.iter().min_by_key(|s| s.start_ns))
        .map(|s| (s.service().to_string(), s.name.clone(), s.kind))
}

/// Traces and their spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Traces.
    pub traces: u64,
    /// Spans of those traces in the decided blocks.
    pub spans: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.traces += other.traces;
        self.spans += other.spans;
    }
}

/// The decisions of one root service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDecisions {
    /// Kept: an error span.
    pub kept_error: Tally,
    /// Kept: slower than the root operation's p99.
    pub kept_slow: Tally,
    /// Kept: within the rate of the rest.
    pub kept_rate: Tally,
    /// Dropped by the rate.
    pub dropped: Tally,
}

impl ServiceDecisions {
    /// Counts one trace of `spans` spans.
    pub fn count(&mut self, d: Decision, spans: u64) {
        let t = match d {
            Decision::KeptError => &mut self.kept_error,
            Decision::KeptSlow => &mut self.kept_slow,
            Decision::KeptRate => &mut self.kept_rate,
            Decision::Dropped => &mut self.dropped,
        };
        t.add(Tally { traces: 1, spans });
    }

    /// Adds another's counts.
    pub fn merge(&mut self, o: &ServiceDecisions) {
        self.kept_error.add(o.kept_error);
        self.kept_slow.add(o.kept_slow);
        self.kept_rate.add(o.kept_rate);
        self.dropped.add(o.dropped);
    }
}

/// The record of a decided block (format in the module header).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailRecord {
    /// Format version (1).
    pub version: u32,
    /// When the decision was made, Unix seconds (the latest, for merged records).
    pub decided_at_s: u64,
    /// Decisions by root service.
    pub services: BTreeMap<String, ServiceDecisions>,
    /// The dropped traces, hex ids, sorted.
    pub dropped: Vec<String>,
}

/// File extension of a block's record.
pub const RECORD_EXT: &str = "tails";

impl TailRecord {
    /// Adds another record (compaction).
    pub fn merge(&mut self, o: &TailRecord) {
        self.version = 1;
        self.decided_at_s = self.decided_at_s.max(o.decided_at_s);
        for (s, d) in &o.services {
            self.services.entry(s.clone()).or_default().merge(d);
        }
        self.dropped.extend(o.dropped.iter().cloned());
        self.dropped.sort();
        self.dropped.dedup();
    }

    /// Whether trace `hex_id` (lower-case hex) was dropped.
    pub fn dropped(&self, hex_id: &str) -> bool {
        self.dropped
            .binary_search_by(|d| d.as_str().cmp(hex_id))
            .is_ok()
    }

    /// Writes `BLOCKID.tails` in `dir` durably (temporary file, fsync, rename; the caller
    /// fsyncs the directory). Returns its size in bytes.
    pub fn write(&self, dir: &std::path::Path, id: &str) -> Result<u64, crate::StoreError> {
        use std::io::Write;
        let path = dir.join(format!("{id}.{RECORD_EXT}"));
        let tmp = dir.join(format!("{id}.{RECORD_EXT}.tmp"));
        let io = |op: &'static str, p: &std::path::Path| {
            let path = p.to_path_buf();
            move |source| crate::StoreError::Io { op, path, source }
        };
        let body =
            serde_json::to_vec(self).map_err(|e| crate::StoreError::Encode(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(io("create tail-sampling record", &tmp))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(io("write tail-sampling record", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename tail-sampling record", &tmp))?;
        Ok(body.len() as u64)
    }

    /// Reads `BLOCKID.tails` in `dir`.
    pub fn read(dir: &std::path::Path, id: &str) -> Result<Self, crate::StoreError> {
        let path = dir.join(format!("{id}.{RECORD_EXT}"));
        let text = std::fs::read(&path).map_err(|source| crate::StoreError::Io {
            op: "read tail-sampling record",
            path: path.clone(),
            source,
        })?;
        let r: TailRecord =
            serde_json::from_slice(&text).map_err(|e| crate::StoreError::Corrupt {
                path: path.clone(),
                reason: format!("not a tail-sampling record: {e}"),
            })?;
        if r.version != 1 {
            return Err(crate::StoreError::Corrupt {
                path,
                reason: format!(
                    "tail-sampling record version {}, this build reads 1",
                    r.version
                ),
            });
        }
        Ok(r)
    }
}

/// Every decided block's decisions, summed, and the policy in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TailReport {
    /// The policy (`None`: tail sampling is off).
    pub policy: Option<TailPolicy>,
    /// Decisions by root service, over the blocks still stored.
    pub services: BTreeMap<String, ServiceDecisions>,
    /// Blocks decided, and blocks waiting for their decision.
    pub blocks_decided: usize,
    /// See `blocks_decided`.
    pub blocks_waiting: usize,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn facts(error: bool, ms: u64, p99_ms: Option<u64>, share: f64) -> TraceFacts {
        TraceFacts {
            error,
            duration_ns: ms * 1_000_000,
            root_p99_ns: p99_ms.map(|p| p * 1_000_000),
            rest_share: share,
        }
    }

    #[test]
    fn errors_and_slow_traces_stay_and_the_rest_follows_the_rate() {
        let p = TailPolicy {
            enabled: true,
            ..TailPolicy::default()
        };
        let id = [7u8; 16];
        assert_eq!(
            decide(&p, &id, &facts(true, 1, Some(100), 0.0)),
            Decision::KeptError
        );
        assert_eq!(
            decide(&p, &id, &facts(false, 101, Some(100), 0.0)),
            Decision::KeptSlow
        );
        assert_eq!(
            decide(&p, &id, &facts(false, 100, Some(100), 0.0)),
            Decision::Dropped
        );
        assert_eq!(
            decide(&p, &id, &facts(false, 100, None, 1.0)),
            Decision::KeptRate
        );
        let off = TailPolicy {
            keep_errors: false,
            keep_slower_than_p99: false,
            ..p.clone()
        };
        assert_eq!(
            decide(&off, &id, &facts(true, 500, Some(1), 0.0)),
            Decision::Dropped
        );
        // The share kept by the rate is close to the share asked, over many ids.
        let kept = (0..20_000u32)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                decide(&p, &id, &facts(false, 1, None, 0.1)) == Decision::KeptRate
            })
            .count();
        assert!((1_800..2_200).contains(&kept), "{kept}");
        assert!((rest_share(&p, 1000, 10.0) - 0.1).abs() < 1e-9);
        assert_eq!(rest_share(&p, 5, 10.0), 1.0);
    }

    #[test]
    fn bad_values_name_the_key() {
        let p = TailPolicy {
            wait_secs: 0,
            ..TailPolicy::default()
        };
        assert!(p.check().unwrap_err().contains("tail_sampling.wait_secs"));
        let p = TailPolicy {
            rest_traces_per_second: -1.0,
            ..TailPolicy::default()
        };
        assert!(
            p.check()
                .unwrap_err()
                .contains("tail_sampling.rest_traces_per_second")
        );
        assert!(TailPolicy::default().check().is_ok());
    }

    #[test]
    fn records_round_trip_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = TailRecord {
            version: 1,
            decided_at_s: 10,
            ..TailRecord::default()
        };
        a.services
            .entry("api".into())
            .or_default()
            .count(Decision::Dropped, 5);
        a.dropped = vec!["01".repeat(16)];
        a.write(dir.path(), "b1").unwrap();
        let back = TailRecord::read(dir.path(), "b1").unwrap();
        assert_eq!(back, a);
        let mut b = TailRecord {
            version: 1,
            decided_at_s: 20,
            dropped: vec!["00".repeat(16)],
            ..TailRecord::default()
        };
        b.services
            .entry("api".into())
            .or_default()
            .count(Decision::KeptError, 3);
        b.merge(&a);
        assert_eq!(b.decided_at_s, 20);
        assert_eq!(
            b.services["api"].dropped,
            Tally {
                traces: 1,
                spans: 5
            }
        );
        assert_eq!(
            b.services["api"].kept_error,
            Tally {
                traces: 1,
                spans: 3
            }
        );
        assert!(b.dropped(&"01".repeat(16)) && b.dropped(&"00".repeat(16)));
        assert!(!b.dropped(&"02".repeat(16)));
        std::fs::write(dir.path().join("b2.tails"), b"{").unwrap();
        let err = TailRecord::read(dir.path(), "b2").unwrap_err().to_string();
        assert!(err.contains("b2.tails"), "{err}");
    }
}
