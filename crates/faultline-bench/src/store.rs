//! `faultline-bench trace-by-id`, `red` and `search`: query
//! latency measured on a stopped server's data directory, at the store level (no HTTP),
//! for BENCHMARKS.md.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use faultline_store::{OpenReport, SortOrder, SpanStore, Store, StoreOptions, TraceQuery};

/// Opens the store and waits for its search indexes (they load in the background), so
/// every benchmark measures the steady state rather than queries racing the loader.
fn open(data_dir: &Path) -> anyhow::Result<(Store, OpenReport, f64)> {
    let started = Instant::now();
    let (store, report) = Store::open(StoreOptions::new(data_dir))
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let loading = Instant::now();
    anyhow::ensure!(
        store.wait_for_indexes(std::time::Duration::from_secs(600)),
        "search indexes did not load within 10 minutes"
    );
    println!(
        "store opened in {open_ms:.0} ms; search indexes loaded {:.0} ms later (background)",
        loading.elapsed().as_secs_f64() * 1e3
    );
    Ok((store, report, open_ms))
}

/// "ms p50 .. p90 .. p99 .. max .." of sorted latencies in milliseconds.
pub(crate) fn percentiles(lat: &mut [f64]) -> String {
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

/// Samples trace ids spread over every block and times each lookup, in a shuffled order
/// (a fixed seed): users do not ask for traces block by block, and lookups in block order
/// found the previous lookup's dictionary pages kept nearly every time, whatever the
/// cache's size.
pub fn trace_by_id(data_dir: &Path, samples: usize) -> anyhow::Result<ExitCode> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let (store, report, open_ms) = open(data_dir)?;
    let mut ids = store.sample_trace_ids(samples);
    ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(12));
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
        "{} blocks, {} spans (opened in {open_ms:.0} ms); {} lookups ({:.1} spans each): {}; dictionary pages kept: {:.1} MB",
        report.blocks,
        report.spans,
        lat.len(),
        spans as f64 / lat.len() as f64,
        percentiles(&mut lat),
        faultline_store::block::dict_cache_bytes() as f64 / 1e6
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

/// Search shapes over the last 24 hours of the data, each repeated `samples` times over
/// every service: the tag values are those `faultline-bench loadgen` sends.
pub fn search(data_dir: &Path, samples: usize) -> anyhow::Result<ExitCode> {
    let (store, report, _) = open(data_dir)?;
    let (services, _) = store.services().context("cannot list services")?;
    anyhow::ensure!(
        !services.is_empty(),
        "no services in {}",
        data_dir.display()
    );
    let end_ns = store
        .blocks()
        .iter()
        .map(|b| b.max_end_ns)
        .max()
        .unwrap_or(0)
        .saturating_add(60_000_000_000);
    let start_ns = end_ns.saturating_sub(24 * 3600 * 1_000_000_000);
    println!(
        "{} blocks, {} spans, {} services; window 24 h; limit 20",
        report.blocks,
        report.spans,
        services.len()
    );
    type Shape = (
        &'static str,
        fn(usize) -> (Vec<(String, String)>, Option<u64>),
        bool,
    );
    let shapes: [Shape; 5] = [
        (
            "service + http.request.method=POST + minDuration 50ms (common tag)",
            |_| {
                (
                    vec![("http.request.method".into(), "POST".into())],
                    Some(50_000_000),
                )
            },
            false,
        ),
        (
            "service + http.response.status_code=500 + minDuration 1ms (rare tag)",
            |_| {
                (
                    vec![("http.response.status_code".into(), "500".into())],
                    Some(1_000_000),
                )
            },
            false,
        ),
        (
            "service + user.id=user-N + minDuration 1ms (one user, 10,000 values)",
            |i| {
                (
                    vec![("user.id".into(), format!("user-{}", (i * 7919) % 10_000))],
                    Some(1_000_000),
                )
            },
            false,
        ),
        (
            "service + retry=true + minDuration 300ms (few matches: scans deep)",
            |_| (vec![("retry".into(), "true".into())], Some(300_000_000)),
            false,
        ),
        (
            "as the first, then reading the 20 whole traces (Jaeger /api/traces)",
            |_| {
                (
                    vec![("http.request.method".into(), "POST".into())],
                    Some(50_000_000),
                )
            },
            true,
        ),
    ];
    for (name, make, fetch) in shapes {
        let mut lat = Vec::with_capacity(samples);
        let mut found = 0usize;
        let mut partial = 0usize;
        for i in 0..samples.max(1) {
            let (tags, min) = make(i);
            // user.id is on frontend spans only.
            let service = if tags[0].0 == "user.id" {
                "frontend".to_string()
            } else {
                services[i % services.len()].clone()
            };
            let q = TraceQuery {
                service: Some(service),
                tags,
                min_duration_ns: min,
                start_ns,
                end_ns,
                sort: SortOrder::Newest,
                limit: 20,
                ..TraceQuery::default()
            };
            let t = Instant::now();
            let (hits, c) = store.search(&q).context("search failed")?;
            if fetch {
                for h in &hits {
                    let a = store.trace(&h.trace_id).context("trace read failed")?;
                    anyhow::ensure!(!a.spans.is_empty(), "a found trace has no spans");
                }
            }
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            found += hits.len();
            partial += usize::from(!c.is_complete());
        }
        println!(
            "{name}: {} queries, {:.1} traces each, {partial} partial: {}",
            lat.len(),
            found as f64 / lat.len() as f64,
            percentiles(&mut lat)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `faultline-bench reseal SRC DST`: rewrites every block of the store in SRC with this
/// build's block writer into DST (RED files copied, a new manifest), so block-layout
/// changes can be measured on the same spans (bytes per span here, query latency with
/// `trace-by-id`/`search` on DST) without ingesting them again.
pub fn reseal(src: &Path, dst: &Path) -> anyhow::Result<ExitCode> {
    use faultline_store::block::{BlockReader, write_block};
    let (from, to) = (src.join("blocks"), dst.join("blocks"));
    anyhow::ensure!(
        !to.exists(),
        "{} exists; give a new directory",
        dst.display()
    );
    std::fs::create_dir_all(&to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut manifest = faultline_store::Manifest::load(&from)?;
    let started = Instant::now();
    let (mut spans, mut before, mut after) = (0u64, 0u64, 0u64);
    for meta in &mut manifest.blocks {
        let all = BlockReader::open(&from, &meta.id)?.all()?;
        let t = Instant::now();
        let written = write_block(&to, &meta.id, &all)?;
        let red = format!("{}.red", meta.id);
        // The rollups are copied as they are; the manifest counts a block without them,
        // as a seal does (`store/seal.rs`), so before and after are counted alike.
        std::fs::copy(from.join(&red), to.join(&red))
            .with_context(|| format!("cannot copy {red}"))?;
        spans += written.spans;
        before += meta.bytes;
        println!(
            "block {}: {} spans, {:.1} -> {:.1} bytes per span (sealed in {} ms)",
            meta.id,
            written.spans,
            meta.bytes as f64 / written.spans.max(1) as f64,
            written.bytes as f64 / written.spans.max(1) as f64,
            t.elapsed().as_millis()
        );
        meta.bytes = written.bytes;
        after += meta.bytes;
    }
    manifest.store(&to)?;
    println!(
        "{} blocks, {spans} spans in {:.1} s: {:.2} -> {:.2} bytes per span (block files as the manifest counts them: without rollups, copied unchanged)",
        manifest.blocks.len(),
        started.elapsed().as_secs_f64(),
        before as f64 / spans.max(1) as f64,
        after as f64 / spans.max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}
