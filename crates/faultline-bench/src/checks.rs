//! `faultline-bench checks-memory`: one consistency rule fed a million pending keys (A
//! spans whose B never comes, each with a fresh key), to show the rules' state stays
//! within its configured memory bound by spilling to `checks.redb`. Reports the process's
//! resident memory over the run (baseline, peak, end), the write-back map's largest size,
//! the database's size on disk and the rate of keys applied, in the data directory given
//! (a temporary one by default).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use faultline_checks::{Checks, Rule, RuleDef};
use faultline_model::span::{AttrValue, Origin, Span, SpanKind, StatusCode};

/// Resident and peak resident memory of this process, KiB (`/proc/self/status`).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs the benchmark; prints a JSON summary.
pub fn memory(keys: u64, memory_mb: usize, batch: usize) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let rule = Rule::new(RuleDef {
        name: "order-shipped".into(),
        first: r#"{ service = "orders" && name = "create order" }"#.into(),
        then: r#"{ service = "shipping" && name = "ship order" }"#.into(),
        key: Some("order.id".into()),
        first_key: None,
        then_key: None,
        within: "1h".into(),
        at_most_one: true,
        require_first: true,
        grace: "30s".into(),
        keep: "24h".into(),
        notify: false,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let origin = Arc::new(Origin {
        service: "orders".into(),
        resource: vec![("service.name".into(), AttrValue::Str("orders".into()))],
        scope_name: "bench".into(),
        scope_version: String::new(),
    });
    let (baseline, _) = rss_kib();
    let checks = Checks::open(
        dir.path(),
        vec![rule],
        vec![],
        memory_mb << 20,
        faultline_checks::system_clock(),
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let started = Instant::now();
    let mut most_map = 0usize;
    let mut most_rss = 0u64;
    let mut n = 0u64;
    while n < keys {
        let spans: Vec<Span> = (0..batch as u64)
            .map(|i| {
                let k = n + i;
                let mut trace = [0u8; 16];
                trace[..8].copy_from_slice(&k.to_be_bytes());
                Span {
                    trace_id: trace,
                    span_id: (k | 1 << 63).to_be_bytes(),
                    parent_span_id: None,
                    name: "create order".into(),
                    kind: SpanKind::Server,
                    start_ns: now + k * 1000,
                    end_ns: now + k * 1000 + 5_000_000,
                    status: StatusCode::Unset,
                    status_message: String::new(),
                    attributes: vec![(
                        "order.id".into(),
                        AttrValue::Str(format!("order-{k:016x}").into()),
                    )],
                    events: vec![],
                    links: vec![],
                    origin: origin.clone(),
                }
            })
            .collect();
        checks.consistency.observe(&spans);
        n += batch as u64;
        most_map = most_map.max(checks.consistency.memory_bytes());
        if n.is_multiple_of(100_000) {
            let (rss, _) = rss_kib();
            most_rss = most_rss.max(rss);
            // A seal's checkpoint, as the store would call it.
            faultline_store::SpanObserver::checkpoint(&checks).map_err(anyhow::Error::msg)?;
            eprintln!(
                "{n} keys, {:.0} keys/s, resident {} MiB",
                n as f64 / started.elapsed().as_secs_f64(),
                rss / 1024
            );
        }
    }
    faultline_store::SpanObserver::checkpoint(&checks).map_err(anyhow::Error::msg)?;
    let secs = started.elapsed().as_secs_f64();
    let pending = checks.consistency.rules()[0].keys["pending"];
    let (end, peak) = rss_kib();
    let db = std::fs::metadata(dir.path().join(faultline_checks::DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(serde_json::json!({
        "keys": n,
        "pending": pending,
        "memory_bound_mib": memory_mb,
        "baseline_resident_mib": baseline / 1024,
        "peak_resident_mib": peak / 1024,
        "largest_sampled_resident_mib": most_rss / 1024,
        "end_resident_mib": end / 1024,
        "growth_over_baseline_mib": peak.saturating_sub(baseline) / 1024,
        "largest_write_back_map_mib": most_map as f64 / (1 << 20) as f64,
        "database_bytes": db,
        "database_bytes_per_key": db as f64 / n as f64,
        "keys_per_second": n as f64 / secs,
        "seconds": secs,
    }))
}
