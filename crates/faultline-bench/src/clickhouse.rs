//! `faultline-bench clickhouse`: the ClickHouse backend on loadgen's traffic, against a
//! running ClickHouse server (`scripts/bench-clickhouse` starts one on loopback): span
//! inserts per second (RowBinary encoding and the HTTP insert, one client thread, as one
//! node's writer would do them, with the rollup parts the writer builds and inserts with
//! each batch), bytes per span on ClickHouse's disk after merges, trace-by-id latency,
//! RED over the whole run for each service, and Jaeger-style search (20 whole traces of a
//! service with a region and a least duration), through the store's read trait.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use faultline_clickhouse::{ClickHouse, Config};
use faultline_model::ExportTraceServiceRequest;
use faultline_model::span::{Span, from_otlp_owned};
use faultline_pipeline::clickhouse::ChunkRollups;
use faultline_store::{SpanStore, TraceQuery};

use crate::loadgen::{Profile, make_template, stamp};

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct ClickHouseArgs {
    /// ClickHouse's HTTP interface.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    pub url: String,
    /// The database to write (made when missing; use a fresh one per run).
    #[arg(long, default_value = "faultline_bench")]
    pub database: String,
    /// Seconds of inserting.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Traffic profile, as loadgen's.
    #[arg(long, default_value = "varied")]
    pub profile: Profile,
    /// Spans per OTLP request (one WAL record each).
    #[arg(long, default_value_t = 500)]
    pub spans_per_request: usize,
    /// Spans per insert.
    #[arg(long, default_value_t = 50_000)]
    pub batch_spans: usize,
    /// Trace-by-id lookups after the inserts (and as many RED and search queries).
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
}

/// p50 and p99 of `ms`, sorted in place.
fn percentiles(ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    (pct(0.5), pct(0.99))
}

/// Runs the benchmark and prints one JSON line.
pub fn run(a: &ClickHouseArgs) -> anyhow::Result<ExitCode> {
    let ch = ClickHouse::open(Config::new(&a.url, &a.database), "bench-node")?;
    let mut rng = SmallRng::seed_from_u64(7);
    let templates: Vec<_> = (0..32)
        .map(|_| make_template(&mut rng, a.spans_per_request, a.profile))
        .collect();
    let nonce = rand::random::<u64>();
    let (mut request, mut spans_total) = (0u64, 0u64);
    let (mut insert_s, mut encode_s) = (0f64, 0f64);
    let (mut rollup_build_s, mut rollup_insert_s, mut parts_total) = (0f64, 0f64, 0usize);
    let mut rollups = ChunkRollups::starting_at(0);
    let mut ids: Vec<String> = Vec::new();
    let started = Instant::now();
    // Loadgen's traces start up to minutes before they are sent: ten minutes of margin.
    let first_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        - 600;
    while started.elapsed().as_secs_f64() < a.seconds {
        // One batch of WAL records, decoded as the pipeline would hand them over.
        let mut records: Vec<(u64, Vec<Span>)> = Vec::new();
        let mut n = 0;
        while n < a.batch_spans {
            let t = &templates[(request % templates.len() as u64) as usize];
            let (body, trace_ids) = stamp(t, nonce, request);
            if request % 97 == 0 {
                ids.extend(trace_ids.into_iter().take(2));
            }
            let spans = from_otlp_owned(
                ExportTraceServiceRequest::decode(&body[..])
                    .context("a request does not decode")?,
            );
            n += spans.len();
            records.push((request, spans));
            request += 1;
        }
        let refs: Vec<(u64, &[Span])> = records.iter().map(|(s, v)| (*s, v.as_slice())).collect();
        let t0 = Instant::now();
        let mut rows = Vec::new();
        for (seq, spans) in &refs {
            faultline_clickhouse::rows::encode_spans("bench-node", *seq, spans, &mut rows);
        }
        encode_s += t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        ch.insert(&refs)?;
        insert_s += t1.elapsed().as_secs_f64();
        spans_total += n as u64;
        let t2 = Instant::now();
        let parts = rollups.add(&records);
        rollup_build_s += t2.elapsed().as_secs_f64();
        let t3 = Instant::now();
        ch.insert_rollups(&parts)?;
        rollup_insert_s += t3.elapsed().as_secs_f64();
        parts_total += parts.len();
    }
    let last_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 60;
    let client = ch.client();
    // Merged as they would be after a while, so the size is the steady state.
    client.query("OPTIMIZE TABLE spans FINAL")?;
    client.query("OPTIMIZE TABLE trace_index FINAL")?;
    client.query("OPTIMIZE TABLE rollups FINAL")?;
    let sizes = client.query_text(&format!(
        "SELECT table, sum(bytes_on_disk), sum(rows) FROM system.parts \
         WHERE database = '{}' AND active GROUP BY table ORDER BY table",
        a.database
    ))?;
    let mut bytes = serde_json::Map::new();
    for line in sizes.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if let [table, b, rows] = f[..] {
            let b: f64 = b.parse().unwrap_or(0.0);
            bytes.insert(
                table.to_string(),
                serde_json::json!({"bytes": b, "rows": rows.parse::<u64>().unwrap_or(0),
                    "bytes_per_span": b / spans_total.max(1) as f64}),
            );
        }
    }
    let stored = ch.span_count()?;
    let mut lat_ms = Vec::new();
    let mut found = 0usize;
    for id in ids.iter().take(a.samples) {
        let mut t = [0u8; 16];
        for (i, b) in t.iter_mut().enumerate() {
            *b = u8::from_str_radix(&id[i * 2..i * 2 + 2], 16).context("a trace id")?;
        }
        let t0 = Instant::now();
        // Through the query trait, as the API reads it (with the tail-sampling check).
        let spans = SpanStore::trace(&ch, &t)?.spans;
        lat_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        found += usize::from(!spans.is_empty());
    }
    let (p50, p99) = percentiles(&mut lat_ms);
    let (reads, red_spans) = reads(&ch, a, first_s, last_s)?;
    let summary = serde_json::json!({
        "profile": format!("{:?}", a.profile).to_lowercase(),
        "spans": spans_total,
        "spans_stored": stored,
        // `insert_s` is the whole insert (encoding and HTTP); `encode_s` times the
        // encoding alone, once more, to say how the insert's time divides.
        "insert_spans_per_second": spans_total as f64 / insert_s,
        "insert_seconds": insert_s,
        "encode_seconds": encode_s,
        "tables": bytes,
        "trace_by_id": {"samples": lat_ms.len(), "found": found, "p50_ms": p50, "p99_ms": p99},
        "rollups": {"parts": parts_total, "build_seconds": rollup_build_s,
            "insert_seconds": rollup_insert_s},
        "reads": reads,
    });
    println!("{summary}");
    anyhow::ensure!(
        red_spans == spans_total,
        "the rollups count {red_spans} spans of {spans_total}"
    );
    anyhow::ensure!(
        stored == spans_total && found == lat_ms.len(),
        "ClickHouse lost spans: {stored} of {spans_total} stored, {found} of {} traces found",
        lat_ms.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// RED over the whole run (an hour's worth of rollup parts reads the same parts per
/// minute) and a series by minute, for each service in turn, and Jaeger search, through
/// the store's read trait; returns their figures and the spans RED counts.
fn reads(
    ch: &ClickHouse,
    a: &ClickHouseArgs,
    first_s: u64,
    last_s: u64,
) -> anyhow::Result<(serde_json::Value, u64)> {
    let (services, _) = SpanStore::services(ch)?;
    let mut red_ms = Vec::new();
    let mut series_ms = Vec::new();
    let mut red_spans = 0u64;
    for svc in &services {
        red_spans += SpanStore::red_total(ch, svc, None, None, first_s, last_s)?
            .0
            .stored;
    }
    for i in 0..a.samples.min(100) {
        let svc = &services[i % services.len()];
        let t0 = Instant::now();
        SpanStore::red_total(ch, svc, None, None, first_s, last_s)?;
        red_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let t0 = Instant::now();
        SpanStore::red(ch, svc, None, None, first_s, last_s, 60)?;
        series_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    // Jaeger search: 20 whole traces of a service in a region, at least 100 ms long.
    let mut search_ms = Vec::new();
    let mut search_found = 0usize;
    for i in 0..a.samples.min(100) {
        let q = TraceQuery {
            service: Some(services[i % services.len()].clone()),
            tags: vec![(
                "region".into(),
                crate::varied::REGIONS[i % crate::varied::REGIONS.len()].into(),
            )],
            min_duration_ns: Some(100_000_000),
            start_ns: first_s * 1_000_000_000,
            end_ns: last_s * 1_000_000_000,
            limit: 20,
            ..TraceQuery::default()
        };
        let t0 = Instant::now();
        let (found, _) = SpanStore::search(ch, &q)?;
        let ids: Vec<_> = found.iter().map(|s| s.trace_id).collect();
        let traces = SpanStore::traces(ch, &ids)?;
        search_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        search_found += traces.len();
    }
    let (red_p50, red_p99) = percentiles(&mut red_ms);
    let (series_p50, series_p99) = percentiles(&mut series_ms);
    let (search_p50, search_p99) = percentiles(&mut search_ms);
    let figures = serde_json::json!({
        "red_total": {"queries": red_ms.len(), "p50_ms": red_p50, "p99_ms": red_p99,
            "minutes": (last_s - first_s) / 60},
        "red_series_by_minute": {"p50_ms": series_p50, "p99_ms": series_p99},
        "search_20_whole_traces": {"queries": search_ms.len(), "traces": search_found,
            "p50_ms": search_p50, "p99_ms": search_p99},
    });
    Ok((figures, red_spans))
}
