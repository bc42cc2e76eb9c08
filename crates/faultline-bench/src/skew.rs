//! `faultline-bench skew`: the cost of clock-skew correction on a trace read, where it
//! does work (every trace crosses skewed clocks), to set beside a trace read's latency.
//!
//! Traces of 5 to 30 spans walk through 12 services on 2 hosts each, as client/server
//! pairs; three clocks are off (+2 s, -300 ms, +40 ms). The samples of 2,000 such traces
//! make the estimates; then 20,000 other traces are corrected, and the time is compared
//! with only copying them (what a read does anyway). Then the cost at sealing: the same
//! 20,000 traces ingested into a store and sealed, once with the skewed clocks (each
//! span's shift computed and stored) and once with every clock right.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use faultline_model::span::{AttrValue, Origin, Span, SpanKind, StatusCode};
use faultline_store::skew::{SkewSamples, correct, sample};

const MS: u64 = 1_000_000;

/// The 24 clocks (12 services on 2 hosts), three of them off.
pub(crate) fn origins() -> Vec<(Arc<Origin>, i64)> {
    let mut out = Vec::new();
    for s in 0..12 {
        for h in 0..2 {
            let skew: i64 = match (s, h) {
                (3, 0) => 2_000 * MS as i64,
                (7, 1) => -300 * MS as i64,
                (9, 0) => 40 * MS as i64,
                _ => 0,
            };
            out.push((
                Arc::new(Origin {
                    service: format!("svc-{s}"),
                    resource: vec![(
                        "host.name".into(),
                        AttrValue::Str(format!("svc-{s}-{h}").into()),
                    )],
                    scope_name: String::new(),
                    scope_version: String::new(),
                }),
                skew,
            ));
        }
    }
    out
}

/// One trace of `n` spans starting at `base` (Unix ns): a root server span, then
/// client/server pairs down a chain of random services, each server nested in its client
/// with random network legs.
pub(crate) fn trace(
    rng: &mut SmallRng,
    origins: &[(Arc<Origin>, i64)],
    n: usize,
    (id, base): (u64, u64),
) -> Vec<Span> {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&rng.random::<u64>().to_be_bytes());
    trace_id[8..].copy_from_slice(&id.to_be_bytes());
    let mut spans = Vec::with_capacity(n);
    let (mut start, mut end) = (base, base + rng.random_range(50..1_000) * MS);
    let mut at = rng.random_range(0..origins.len());
    let mut parent = None;
    let mut next_id = id << 8;
    let mut push =
        |spans: &mut Vec<Span>, kind, o: usize, s: u64, e: u64, parent: Option<[u8; 8]>| {
            next_id += 1;
            let skew = origins[o].1;
            spans.push(Span {
                trace_id,
                span_id: next_id.to_be_bytes(),
                parent_span_id: parent,
                name: "op".into(),
                kind,
                start_ns: s.saturating_add_signed(skew),
                end_ns: e.saturating_add_signed(skew),
                status: StatusCode::Unset,
                status_message: String::new(),
                attributes: Vec::new(),
                events: Vec::new(),
                links: Vec::new(),
                origin: origins[o].0.clone(),
            });
            next_id.to_be_bytes()
        };
    parent = Some(push(&mut spans, SpanKind::Server, at, start, end, parent));
    while spans.len() + 2 <= n {
        let len = end - start;
        let cs = start + rng.random_range(0..len / 4);
        let ce = cs + len / 2;
        let client = push(&mut spans, SpanKind::Client, at, cs, ce, parent);
        at = rng.random_range(0..origins.len());
        // Network legs up to 1 ms, and at most an eighth of the call each way.
        let leg = (len / 16).clamp(1, MS);
        let (up, down) = (rng.random_range(0..leg), rng.random_range(0..leg));
        start = cs + up;
        end = ce - down;
        parent = Some(push(
            &mut spans,
            SpanKind::Server,
            at,
            start,
            end,
            Some(client),
        ));
    }
    spans
}

/// Start of trace `i`: one a second.
fn at(i: u64) -> u64 {
    1_800_000_000_000_000_000 + i * 1_000 * MS
}

/// Ingests `traces` into a new store in a temporary directory (records of 200 spans) and
/// seals them as one block; returns the seal's time and the block's bytes.
pub(crate) fn seal_once(traces: &[Vec<Span>]) -> anyhow::Result<(std::time::Duration, u64)> {
    let dir = std::env::temp_dir().join(format!("faultline-bench-seal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = faultline_store::StoreOptions {
        block_max_spans: usize::MAX,
        block_max_age: std::time::Duration::from_secs(3600),
        ..faultline_store::StoreOptions::new(&dir)
    };
    let (store, _) = faultline_store::Store::open(opts)?;
    let mut seq = 0;
    let mut record = Vec::new();
    for t in traces {
        record.extend(t.iter().cloned());
        if record.len() >= 200 {
            seq += 1;
            store.ingest(seq, std::mem::take(&mut record))?;
        }
    }
    store.ingest(seq + 1, record)?;
    let t0 = Instant::now();
    let meta = store
        .seal()?
        .ok_or_else(|| anyhow::anyhow!("nothing sealed"))?;
    let took = t0.elapsed();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((took, meta.bytes))
}

/// Runs the benchmark and prints its figures.
pub fn run() -> anyhow::Result<ExitCode> {
    let origins = origins();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut samples = SkewSamples::default();
    for i in 0..2_000 {
        let n = rng.random_range(5..=30);
        let t = trace(&mut rng, &origins, n, (i, at(i)));
        for c in &t {
            if let Some(p) = t.iter().find(|p| Some(p.span_id) == c.parent_span_id)
                && let Some(x) = sample(p, c)
            {
                samples.observe(x);
            }
        }
    }
    let t0 = Instant::now();
    let rounds = 20;
    let mut estimates = samples.estimates();
    for _ in 1..rounds {
        estimates = samples.estimates();
    }
    let estimate_us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let traces: Vec<Vec<Span>> = (0..20_000u64)
        .map(|i| {
            let n = rng.random_range(5..=30);
            trace(&mut rng, &origins, n, (10_000 + i, at(10_000 + i)))
        })
        .collect();
    let spans: usize = traces.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    let mut kept = 0usize;
    for t in &traces {
        kept += std::hint::black_box(t.clone()).len();
    }
    let copy = t0.elapsed();
    let t0 = Instant::now();
    let mut moved = 0usize;
    for t in &traces {
        let mut c = t.clone();
        moved += correct(&mut c, &estimates).len();
        std::hint::black_box(&c);
    }
    let both = t0.elapsed();
    let per_trace_us = (both.saturating_sub(copy)).as_secs_f64() * 1e6 / traces.len() as f64;
    println!(
        "{} clocks estimated from {} pairs' samples in {estimate_us:.0} µs (recomputed at most once a second)",
        estimates.len(),
        2_000
    );
    println!(
        "{} traces, {spans} spans ({kept} copied), {moved} spans moved: correction {per_trace_us:.2} µs per trace beyond copying it ({:.0} ns per span)",
        traces.len(),
        (both.saturating_sub(copy)).as_nanos() as f64 / spans as f64
    );
    // Sealing: the same traces with and without the skew, best of three each.
    let right: Vec<(Arc<Origin>, i64)> = origins.iter().map(|(o, _)| (o.clone(), 0)).collect();
    let mut rng = SmallRng::seed_from_u64(11);
    let skewed: Vec<Vec<Span>> = (0..20_000u64)
        .map(|i| {
            let n = rng.random_range(5..=30);
            trace(&mut rng, &origins, n, (i, at(i)))
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(11);
    let unskewed: Vec<Vec<Span>> = (0..20_000u64)
        .map(|i| {
            let n = rng.random_range(5..=30);
            trace(&mut rng, &right, n, (i, at(i)))
        })
        .collect();
    let n: usize = skewed.iter().map(Vec::len).sum();
    for (label, traces) in [("right clocks", &unskewed), ("3 clocks off", &skewed)] {
        let mut best = (std::time::Duration::MAX, 0);
        for _ in 0..3 {
            let (took, bytes) = seal_once(traces)?;
            best = (best.0.min(took), bytes);
        }
        println!(
            "seal of {n} spans, {label}: {:.0} ms best of 3, {:.2} bytes per span",
            best.0.as_secs_f64() * 1e3,
            best.1 as f64 / n as f64
        );
    }
    // The skewed traces written without shifts: the difference is the column.
    let dir = std::env::temp_dir().join(format!("faultline-bench-raw-{}", std::process::id()));
    let all: Vec<Span> = skewed.iter().flatten().cloned().collect();
    let written = faultline_store::block::write_block(&dir, "raw", &all)?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "the 3-clocks-off traces written without shifts (no estimates): {:.2} bytes per span",
        written.bytes as f64 / n as f64
    );
    Ok(ExitCode::SUCCESS)
}
