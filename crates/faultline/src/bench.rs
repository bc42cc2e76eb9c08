//! `faultline bench trace-by-id` and `faultline bench red`: query latency measured on a
//! stopped server's data directory, at the store level (no HTTP), for BENCHMARKS.md.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use faultline_store::{OpenReport, SpanStore, Store, StoreOptions};

fn open(data_dir: &Path) -> anyhow::Result<(Store, OpenReport, f64)> {
    let started = Instant::now();
    let (store, report) = Store::open(StoreOptions::new(data_dir))
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    Ok((store, report, started.elapsed().as_secs_f64() * 1e3))
}

/// "ms p50 .. p90 .. p99 .. max .." of sorted latencies in milliseconds.
fn percentiles(lat: &mut [f64]) -> String {
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    format!(
        "ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    )
}

/// Samples trace ids spread over every block and times each lookup.
pub fn trace_by_id(data_dir: &Path, samples: usize) -> anyhow::Result<ExitCode> {
    let (store, report, open_ms) = open(data_dir)?;
    let ids = store.sample_trace_ids(samples);
    anyhow::ensure!(
        !ids.is_empty(),
        "no sealed blocks in {}",
        data_dir.display()
    );
    let mut lat = Vec::with_capacity(ids.len());
    let mut spans = 0usize;
    for id in &ids {
        let t = Instant::now();
        let answer = store.trace(id).context("lookup failed")?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(!answer.spans.is_empty(), "a sampled trace was not found");
        spans += answer.spans.len();
    }
    println!(
        "{} blocks, {} spans (opened in {open_ms:.0} ms); {} lookups ({:.1} spans each): {}",
        report.blocks,
        report.spans,
        lat.len(),
        spans as f64 / lat.len() as f64,
        percentiles(&mut lat)
    );
    Ok(ExitCode::SUCCESS)
}

/// One service over the last hour of the data, for every service in turn.
pub fn red(data_dir: &Path, samples: usize) -> anyhow::Result<ExitCode> {
    let (store, report, _) = open(data_dir)?;
    let (services, _) = store.services().context("cannot list services")?;
    anyhow::ensure!(
        !services.is_empty(),
        "no services in {}",
        data_dir.display()
    );
    let end_s = store
        .blocks()
        .iter()
        .map(|b| b.max_end_ns / 1_000_000_000)
        .max()
        .unwrap_or(0)
        + 60;
    let start_s = end_s.saturating_sub(3600);
    let mut lat = Vec::with_capacity(samples);
    let mut spans = 0u64;
    for i in 0..samples.max(1) {
        let service = &services[i % services.len()];
        let t = Instant::now();
        let (points, _) = store
            .red(service, None, None, start_s, end_s, 60)
            .context("RED query failed")?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        spans += points.iter().map(|p| p.count).sum::<u64>();
    }
    println!(
        "{} blocks, {} spans, {} services; {} queries of one service over one hour in 60 s steps ({:.0} spans each on average): {}",
        report.blocks,
        report.spans,
        services.len(),
        lat.len(),
        spans as f64 / lat.len() as f64,
        percentiles(&mut lat)
    );
    Ok(ExitCode::SUCCESS)
}
