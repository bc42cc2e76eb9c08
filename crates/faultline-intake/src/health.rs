//! Intake's parts of the status report: the resources admission watches, each judged by
//! one rule over a snapshot of its figures.
//!
//! | part | ok | degraded | failed |
//! |---|---|---|---|
//! | `wal` | below [`WAL_DEGRADED_AT`] of its budget | above it, or segments were quarantined at start-up | a write or fsync failed (intake answers 503) |
//! | `disk` | at least twice the reserve free | less than twice the reserve | below the reserve (intake refuses writes) |
//! | `memory` | no bound, or below the share where bulk is shed | at or above it | — |
//! | `lanes` | pressure below [`SHED_BULK_AT`] | bulk (and from [`SHED_NORMAL_AT`] normal) traffic is shed | — |

use faultline_model::health::{Component, Health, human_bytes as human};
use serde_json::json;

use crate::admission::{Intake, SHED_BULK_AT, SHED_NORMAL_AT};

/// Share of the WAL budget from which `wal` is degraded.
pub const WAL_DEGRADED_AT: f64 = 0.8;

/// Figures of the `wal` rule.
#[derive(Debug, Clone, Default)]
pub struct WalFacts {
    /// Bytes of the WAL's segments.
    pub size: u64,
    /// The WAL budget.
    pub max: u64,
    /// Why the WAL stopped accepting writes, if it did.
    pub failure: Option<String>,
    /// Segments quarantined at start-up.
    pub quarantined: i64,
    /// Highest acknowledged record.
    pub committed_seq: u64,
}

/// `wal`: room in the write-ahead log, and whether it still accepts writes.
pub fn wal(f: &WalFacts) -> Component {
    let (size, max) = (human(f.size), human(f.max));
    let c = if let Some(reason) = &f.failure {
        Component::new(
            "wal",
            Health::Failed,
            format!("the write-ahead log stopped accepting writes: {reason}"),
        )
        .action("restart faultline after checking the disk holding DATA_DIR/wal; intake answers 503 until then")
    } else if f.size as f64 > f.max as f64 * WAL_DEGRADED_AT {
        Component::new(
            "wal",
            Health::Degraded,
            format!("{size} of {max} used (over 80%); intake refuses writes at 100%"),
        )
        .action("the store is behind or sealing fails (see indexing and sealing); or raise wal.max_bytes")
    } else if f.quarantined > 0 {
        Component::new(
            "wal",
            Health::Degraded,
            format!(
                "{} corrupt segments were quarantined at start-up; their records are lost",
                f.quarantined
            ),
        )
        .action(
            "inspect DATA_DIR/wal/quarantine with `faultline wal verify`, then move the files away",
        )
    } else {
        Component::new("wal", Health::Ok, format!("{size} of {max} used"))
    };
    c.details(json!({"bytes": f.size, "max_bytes": f.max, "committed_seq": f.committed_seq, "quarantined_segments": f.quarantined}))
}

/// `disk`: free space against the reserve intake keeps (`None`: statvfs failed).
pub fn disk(free: Option<u64>, reserve: u64) -> Component {
    let c = match free {
        Some(f) if f < reserve => Component::new(
            "disk",
            Health::Failed,
            format!("{} free, below the reserve of {}: intake refuses writes", human(f), human(reserve)),
        )
        .action("free disk space on the volume holding DATA_DIR, or lower store.max_bytes / store.retention_secs"),
        Some(f) if f < reserve.saturating_mul(2) => Component::new(
            "disk",
            Health::Degraded,
            format!("{} free, near the reserve of {}", human(f), human(reserve)),
        )
        .action("free disk space on the volume holding DATA_DIR"),
        Some(f) => Component::new("disk", Health::Ok, format!("{} free", human(f))),
        None => Component::new("disk", Health::Ok, "free space unknown (statvfs failed)"),
    };
    c.details(json!({"free_bytes": free, "reserve_bytes": reserve}))
}

/// `memory`: resident memory against `intake.max_memory_bytes`.
pub fn memory(resident: u64, bound: Option<u64>) -> Component {
    let share = bound.map(|b| resident as f64 / b.max(1) as f64);
    let c = match (bound, share) {
        (Some(b), Some(x)) if x >= SHED_BULK_AT => Component::new(
            "memory",
            Health::Degraded,
            format!("{} resident of {} ({:.0}%)", human(resident), human(b), x * 100.0),
        )
        .action("memory pressure sheds bulk, then normal traffic: lower store.block_max_spans (the in-memory head) or raise intake.max_memory_bytes"),
        (Some(b), x) => Component::new(
            "memory",
            Health::Ok,
            format!("{} resident of {} ({:.0}%)", human(resident), human(b), x.unwrap_or(0.0) * 100.0),
        ),
        (None, _) => Component::new(
            "memory",
            Health::Ok,
            format!("{} resident; no bound set (intake.max_memory_bytes)", human(resident)),
        ),
    };
    c.details(json!({"resident_bytes": resident, "max_bytes": bound}))
}

/// `lanes`: which priority lanes are shed at this pressure (the largest used share of the
/// WAL budget, the in-flight budget and the memory bound).
pub fn lanes(pressure: f64, critical_services: &[String]) -> Component {
    let shedding: Vec<&str> = [("bulk", SHED_BULK_AT), ("normal", SHED_NORMAL_AT)]
        .iter()
        .filter(|(_, at)| pressure >= *at)
        .map(|(l, _)| *l)
        .collect();
    let c = if shedding.is_empty() {
        Component::new(
            "lanes",
            Health::Ok,
            format!("accepting every lane (pressure {:.0}%)", pressure * 100.0),
        )
    } else {
        Component::new(
            "lanes",
            Health::Degraded,
            format!(
                "shedding {} traffic (pressure {:.0}%); critical spans are still accepted",
                shedding.join(" and "),
                pressure * 100.0
            ),
        )
        .action("the write-ahead log, the in-flight budget or memory is filling: see indexing, sealing and memory; clients retry shed requests")
    };
    c.details(json!({"pressure": pressure, "shed_bulk_at": SHED_BULK_AT, "shed_normal_at": SHED_NORMAL_AT, "shedding": shedding, "critical_services": critical_services}))
}

impl Intake {
    /// Intake's parts, judged now. Blocking (statvfs, `/proc/self/status`).
    pub fn health(&self) -> Vec<Component> {
        let w = self.wal();
        let facts = WalFacts {
            size: w.size_bytes(),
            max: w.options().max_bytes,
            failure: w.failure(),
            quarantined: self.metrics().wal_quarantined_segments.get(),
            committed_seq: w.committed_seq(),
        };
        let (resident, bound) = self.memory();
        vec![
            wal(&facts),
            disk(self.disk_free_bytes(), self.config().min_free_disk_bytes),
            memory(resident, bound),
            lanes(self.pressure(), &self.config().critical_services),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn wal_is_degraded_over_80_percent_and_failed_after_an_io_error() {
        let at = |size| WalFacts {
            size,
            max: 10 * GIB,
            ..WalFacts::default()
        };
        assert_eq!(wal(&at(8 * GIB)).health, Health::Ok);
        let full = wal(&at(8 * GIB + 1));
        assert_eq!(full.health, Health::Degraded);
        assert!(full.summary.contains("over 80%"), "{}", full.summary);
        let quarantined = wal(&WalFacts {
            quarantined: 2,
            ..at(0)
        });
        assert_eq!(quarantined.health, Health::Degraded);
        assert!(quarantined.summary.starts_with("2 corrupt segments"));
        let failed = wal(&WalFacts {
            failure: Some("fsync failed: EIO".into()),
            ..at(9 * GIB)
        });
        assert_eq!(failed.health, Health::Failed);
        assert!(failed.summary.contains("EIO") && failed.action.is_some());
    }

    #[test]
    fn disk_is_failed_below_the_reserve_and_degraded_below_twice_it() {
        let reserve = 256 << 20;
        assert_eq!(disk(Some(reserve - 1), reserve).health, Health::Failed);
        assert_eq!(disk(Some(reserve), reserve).health, Health::Degraded);
        assert_eq!(
            disk(Some(2 * reserve - 1), reserve).health,
            Health::Degraded
        );
        assert_eq!(disk(Some(2 * reserve), reserve).health, Health::Ok);
        let unknown = disk(None, reserve);
        assert_eq!(unknown.health, Health::Ok);
        assert!(unknown.summary.contains("unknown"));
    }

    #[test]
    fn memory_is_degraded_where_bulk_is_shed() {
        assert_eq!(memory(100 * GIB, None).health, Health::Ok);
        let bound = 4 * GIB;
        let below = (bound as f64 * SHED_BULK_AT) as u64 - 1;
        assert_eq!(memory(below, Some(bound)).health, Health::Ok);
        let at = memory((bound as f64 * SHED_BULK_AT) as u64, Some(bound));
        assert_eq!(at.health, Health::Degraded);
        assert!(at.summary.contains("(50%)"), "{}", at.summary);
    }

    #[test]
    fn lanes_name_what_is_shed() {
        assert_eq!(lanes(SHED_BULK_AT - 0.01, &[]).health, Health::Ok);
        let bulk = lanes(SHED_BULK_AT, &[]);
        assert_eq!(bulk.health, Health::Degraded);
        assert!(
            bulk.summary.starts_with("shedding bulk traffic"),
            "{}",
            bulk.summary
        );
        let both = lanes(SHED_NORMAL_AT, &["checkout".into()]);
        assert!(both.summary.starts_with("shedding bulk and normal traffic"));
        assert_eq!(both.details["critical_services"][0], "checkout");
    }
}
