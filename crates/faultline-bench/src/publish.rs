//! `faultline-bench publish-pause`: how long trace lookups wait while seals publish their
//! blocks, as the store's trace map grows. A seal publishes under the store's write lock
//! (the block joins the list and its traces the trace id → blocks map), so every lookup,
//! search and head append waits for that step; it must stay short when the map holds
//! millions of traces, including the seals that make the map grow.
//!
//! One-span traces with random ids are ingested into a new store in records of 500 spans
//! and sealed every `--block-spans` spans (14,000 by default: the traces of one
//! 250,000-span block of the varied profile), up to `--traces` (4.5M by default: the
//! traces of about 80M varied spans). Meanwhile a thread looks up random traces of the
//! blocks sealed so far, one after the other. Prints the lookups' latency percentiles, how
//! many took over 10 ms, and the slowest lookups with the number of traces stored when
//! they happened.
//!
//! With `--split` every trace gets a second span about one block later, so nearly every
//! trace is stored in two blocks, as when SDKs export each service's spans on their own
//! schedule at a high rate: the store also keeps those traces in its set of split traces,
//! which grows in the same step.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use faultline_model::span::{Origin, Span, SpanKind, StatusCode, TraceId};
use faultline_store::{SpanStore, Store, StoreOptions};

/// Runs the benchmark and prints its figures.
pub fn run(traces: u64, block_spans: usize, split: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        block_spans >= 500,
        "--block-spans must be at least 500 (one record)"
    );
    let dir = std::env::temp_dir().join(format!("faultline-bench-publish-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = measure(&dir, traces, block_spans, split);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(
    dir: &std::path::Path,
    traces: u64,
    block_spans: usize,
    split: bool,
) -> anyhow::Result<ExitCode> {
    let opts = StoreOptions {
        block_max_spans: block_spans,
        block_max_age: Duration::from_secs(3600),
        ..StoreOptions::new(dir)
    };
    let (store, _) = Store::open(opts).context("cannot open a store in the temporary directory")?;
    let store = Arc::new(store);
    let origin = Arc::new(Origin {
        service: "svc".into(),
        resource: Vec::new(),
        scope_name: String::new(),
        scope_version: String::new(),
    });
    // Ids of sealed traces the reader picks from (one in 16), and how many are stored.
    let sealed: Arc<Mutex<Vec<TraceId>>> = Arc::default();
    let stored = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, sealed, stored, stop) =
            (store.clone(), sealed.clone(), stored.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<Vec<(f64, u64)>> {
            let mut rng = SmallRng::seed_from_u64(2);
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = {
                    let ids = sealed
                        .lock()
                        .map_err(|_| anyhow::anyhow!("a thread panicked"))?;
                    if ids.is_empty() {
                        None
                    } else {
                        Some(ids[rng.random_range(0..ids.len())])
                    }
                };
                let Some(id) = id else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let t = Instant::now();
                let answer = store.trace(&id).context("lookup failed")?;
                lat.push((
                    t.elapsed().as_secs_f64() * 1e3,
                    stored.load(Ordering::Relaxed),
                ));
                anyhow::ensure!(!answer.spans.is_empty(), "a sealed trace was not found");
            }
            Ok(lat)
        })
    };
    let mut rng = SmallRng::seed_from_u64(1);
    let mut record = Vec::with_capacity(500);
    let mut pending_ids = Vec::new();
    let t0 = Instant::now();
    let mut seals = 0u32;
    let base = 1_800_000_000_000_000_000u64;
    // With --split, the second span of each trace comes this many traces later: about
    // one block later (a block holds block_spans / 2 of them then).
    let lag = block_spans / 2;
    let mut earlier: std::collections::VecDeque<TraceId> = std::collections::VecDeque::new();
    let mut seq = 0;
    let mut span = |trace_id: TraceId, start_ns: u64| Span {
        trace_id,
        span_id: rng.random(),
        parent_span_id: None,
        name: "GET /".into(),
        kind: SpanKind::Server,
        start_ns,
        end_ns: start_ns + rng.random_range(1_000_000..100_000_000),
        status: StatusCode::Unset,
        status_message: String::new(),
        attributes: Vec::new(),
        events: Vec::new(),
        links: Vec::new(),
        origin: origin.clone(),
    };
    let mut ids = SmallRng::seed_from_u64(3);
    for i in 0..traces {
        let trace_id: TraceId = ids.random();
        if i % 16 == 0 {
            pending_ids.push(trace_id);
        }
        let start_ns = base + i * 1_000;
        record.push(span(trace_id, start_ns));
        if split {
            earlier.push_back(trace_id);
            if earlier.len() > lag
                && let Some(id) = earlier.pop_front()
            {
                record.push(span(id, start_ns));
            }
        }
        if record.len() >= 500 || i + 1 == traces {
            seq += 1;
            store.ingest(seq, std::mem::replace(&mut record, Vec::with_capacity(501)))?;
            if store.should_seal() || i + 1 == traces {
                store.seal()?;
                seals += 1;
                stored.store(i + 1, Ordering::Relaxed);
                sealed
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a thread panicked"))?
                    .append(&mut pending_ids);
            }
        }
    }
    let took = t0.elapsed();
    // A few more lookups against the whole map, then stop.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let lat = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    anyhow::ensure!(!lat.is_empty(), "no lookup ran");
    let over = lat.iter().filter(|(ms, _)| *ms > 10.0).count();
    let mut slowest = lat.clone();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut ms: Vec<f64> = lat.iter().map(|(ms, _)| *ms).collect();
    println!(
        "{traces} traces{} in {seals} blocks of {block_spans} spans, ingested and sealed in {:.1} s",
        if split {
            " of two spans a block apart"
        } else {
            " of one span"
        },
        took.as_secs_f64()
    );
    println!(
        "{} lookups meanwhile: {}; over 10 ms: {over}",
        ms.len(),
        crate::store::percentiles(&mut ms)
    );
    let worst: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|(ms, n)| format!("{ms:.1} ms at {:.2}M traces", *n as f64 / 1e6))
        .collect();
    println!("slowest: {}", worst.join(", "));
    Ok(ExitCode::SUCCESS)
}
