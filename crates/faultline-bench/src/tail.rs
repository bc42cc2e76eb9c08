//! `faultline-bench tail`: what tail sampling costs and saves. 40,000 traces of 5 to 30
//! spans (the clock-skew benchmark's shapes, clocks right) over 120 seconds, 2% with a
//! failing span, are ingested into a store and sealed; the store is reopened with the
//! default policy (errors, slower than p99, 10 traces per second per root service of the
//! rest) and every block decided. Prints the decision rate, what was kept by which policy
//! and the block bytes before and after.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use faultline_model::span::{Span, StatusCode};
use faultline_store::tail::TailPolicy;
use faultline_store::{Store, StoreOptions};

use crate::skew::{origins, trace};

const MS: u64 = 1_000_000;

/// Runs the benchmark and prints its figures.
pub fn run() -> anyhow::Result<ExitCode> {
    let right: Vec<_> = origins().into_iter().map(|(o, _)| (o, 0)).collect();
    let mut rng = SmallRng::seed_from_u64(5);
    let base = 1_800_000_000_000_000_000u64;
    let traces: Vec<Vec<Span>> = (0..40_000u64)
        .map(|i| {
            let n = rng.random_range(5..=30);
            let mut t = trace(&mut rng, &right, n, (i, base + i * 3 * MS));
            for s in t.iter_mut().filter(|s| s.parent_span_id.is_none()) {
                s.name = format!("GET /{}", s.service());
            }
            if rng.random_range(0..100) < 2 {
                let k = rng.random_range(0..t.len());
                t[k].status = StatusCode::Error;
            }
            t
        })
        .collect();
    let spans: usize = traces.iter().map(Vec::len).sum();
    let dir = std::env::temp_dir().join(format!("faultline-bench-tail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = StoreOptions {
        block_max_spans: 250_000,
        block_max_age: Duration::from_secs(3600),
        ..StoreOptions::new(&dir)
    };
    {
        let (store, _) = Store::open(opts.clone())?;
        let mut record = Vec::new();
        let mut seq = 0;
        for t in &traces {
            record.extend(t.iter().cloned());
            if record.len() >= 200 {
                seq += 1;
                store.ingest(seq, std::mem::take(&mut record))?;
                if store.should_seal() {
                    store.seal()?;
                }
            }
        }
        store.ingest(seq + 1, record)?;
        store.seal()?;
    }
    let policy = TailPolicy {
        enabled: true,
        ..TailPolicy::default()
    };
    let (store, _) = Store::open(StoreOptions {
        tail: Some(policy),
        ..opts
    })?;
    let before: u64 = store.blocks().iter().map(|b| b.bytes).sum();
    // The rollups' hour ends at the traces' time.
    let now_s = (base + 120_000 * MS) / 1_000_000_000;
    let t0 = Instant::now();
    let mut blocks = 0;
    while store.tail_sample(now_s)?.is_some() {
        blocks += 1;
    }
    let took = t0.elapsed();
    let after: u64 = store.blocks().iter().map(|b| b.bytes).sum();
    let report = store.tail_report()?;
    let mut all = faultline_store::tail::ServiceDecisions::default();
    for d in report.services.values() {
        all.merge(d);
    }
    println!(
        "{} traces, {spans} spans in {blocks} blocks decided in {:.2} s: {:.0} spans per second (read, judge, rewrite, fsync)",
        traces.len(),
        took.as_secs_f64(),
        spans as f64 / took.as_secs_f64()
    );
    println!(
        "kept: {} with an error, {} slower than p99, {} by the rate; dropped {} ({:.1}% of spans)",
        all.kept_error.traces,
        all.kept_slow.traces,
        all.kept_rate.traces,
        all.dropped.traces,
        100.0 * all.dropped.spans as f64 / spans as f64
    );
    println!(
        "block bytes: {before} before, {after} after ({:.2} -> {:.2} bytes per span sent; the records' dropped ids included)",
        before as f64 / spans as f64,
        after as f64 / spans as f64
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
