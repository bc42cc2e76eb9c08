//! `faultline-bench query`: query latency as a client sees it, over HTTP with several
//! concurrent clients, against a running faultline (or any Jaeger-compatible query API):
//!
//! - `--kind trace`: `GET /api/traces/{id}` for trace ids taken from loadgen ack logs
//!   (`--ids FILE`, repeatable), spread over the whole file;
//! - `--kind search`: `GET /api/traces?{--query}` (Jaeger search returning whole traces),
//!   the same query repeatedly;
//! - `--kind rare`: searches for one rare value each, as someone looking for one user's
//!   requests would: the value of tag `--tag-key` (default `user.id`) and the service of
//!   the span carrying it, taken from up to 200 traces of the ack logs (fetched by id
//!   before the clock starts), plus `--query` (e.g. `limit=20&lookback=24h`).
//! - `--kind path`: `GET {--query}`, any path of the API (RED: `/api/v1/red?...`).
//!
//! Each client sends one request after the other for `--seconds`; the answer must be 200
//! (a 404 for a trace id counts as an error and is reported). Prints requests per second
//! and latency percentiles in milliseconds; `--json` prints them as JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Flags of `faultline-bench query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Base URL of the query API.
    #[arg(long, default_value = "http://127.0.0.1:16686")]
    pub api: String,
    /// `trace` (by id), `search` or `rare`.
    #[arg(long, default_value = "trace")]
    pub kind: String,
    /// Loadgen ack logs with the trace ids to look up (`--kind trace`).
    #[arg(long)]
    pub ids: Vec<PathBuf>,
    /// The search's query string (`--kind search`), e.g.
    /// `service=gateway&tag=region:eu-west&minDuration=100ms&limit=20&lookback=1h`; for
    /// `--kind trace`, parameters added to each lookup (`raw=true`: no clock-skew
    /// correction).
    #[arg(long, default_value = "")]
    pub query: String,
    /// The tag whose values `--kind rare` searches for.
    #[arg(long, default_value = "user.id")]
    pub tag_key: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// How long to run.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Trace ids from ack logs (`<request> <spans> <id>,<id>,...` per line).
fn read_ids(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read ack log {}", f.display()))?;
        for line in text.lines() {
            if let Some(list) = line.split(' ').nth(2) {
                ids.extend(
                    list.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
            }
        }
    }
    Ok(ids)
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Search URLs for `--kind rare`: per sampled trace, the service and value of the first
/// span carrying `--tag-key`.
async fn rare_queries(args: &QueryArgs, base: &str) -> anyhow::Result<Vec<String>> {
    let ids = read_ids(&args.ids)?;
    anyhow::ensure!(!ids.is_empty(), "no trace ids: give --ids ACK_LOG");
    let stride = (7919 % ids.len()).max(1);
    let client = crate::http_client()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let mut out = Vec::new();
    for i in 0..ids.len().min(200) {
        let id = &ids[(i * stride) % ids.len()];
        let url = format!("{base}/api/traces/{id}");
        let body = async {
            client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await
        }
        .await
        .with_context(|| format!("cannot fetch {url}"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).with_context(|| format!("{url} is not JSON"))?;
        let t = &v["data"][0];
        let found = t["spans"].as_array().into_iter().flatten().find_map(|s| {
            let tag = s["tags"]
                .as_array()?
                .iter()
                .find(|g| g["key"] == args.tag_key.as_str())?;
            let value = match &tag["value"] {
                serde_json::Value::String(x) => x.clone(),
                other => other.to_string(),
            };
            let service = t["processes"][s["processID"].as_str()?]["serviceName"].as_str()?;
            Some((service.to_string(), value))
        });
        if let Some((service, value)) = found {
            let extra = if args.query.is_empty() {
                String::new()
            } else {
                format!("&{}", args.query)
            };
            out.push(format!(
                "{base}/api/traces?service={}&tag={}{extra}",
                enc(&service),
                enc(&format!("{}:{value}", args.tag_key))
            ));
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "none of the sampled traces has a span with tag {:?}",
        args.tag_key
    );
    Ok(out)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the benchmark.
pub fn run(args: &QueryArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    let base = args.api.trim_end_matches('/').to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let paths: Vec<String> = match args.kind.as_str() {
        "trace" => {
            let ids = read_ids(&args.ids)?;
            anyhow::ensure!(!ids.is_empty(), "no trace ids: give --ids ACK_LOG");
            // Spread over the whole file: a stride prime to its length.
            let stride = 7919 % ids.len().max(1);
            let stride = if stride == 0 { 1 } else { stride };
            let params = if args.query.is_empty() {
                String::new()
            } else {
                format!("?{}", args.query)
            };
            (0..ids.len().min(100_000))
                .map(|i| {
                    format!(
                        "{base}/api/traces/{}{params}",
                        ids[(i * stride) % ids.len()]
                    )
                })
                .collect()
        }
        "search" => {
            anyhow::ensure!(!args.query.is_empty(), "give --query for --kind search");
            vec![format!("{base}/api/traces?{}", args.query)]
        }
        "rare" => runtime.block_on(rare_queries(args, &base))?,
        "path" => {
            anyhow::ensure!(
                args.query.starts_with('/'),
                "give --query /PATH?QUERY for --kind path"
            );
            vec![format!("{base}{}", args.query)]
        }
        other => anyhow::bail!("unknown --kind {other:?}; use trace, search, rare or path"),
    };
    let paths = Arc::new(paths);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let results = runtime.block_on(async {
        let client = crate::http_client()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(args.clients)
            .build()
            .context("cannot build the HTTP client")?;
        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let (client, paths) = (client.clone(), paths.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = Vec::new();
                let mut traces = 0u64;
                let mut checked = 0u64;
                let mut i = c;
                while Instant::now() < deadline {
                    let url = &paths[i % paths.len()];
                    i += 7;
                    let t = Instant::now();
                    match client.get(url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(b) => {
                                lat.push(t.elapsed().as_secs_f64() * 1e3);
                                // Traces in the answer (Jaeger's `data` array), on every
                                // 16th answer: parsing them all would take CPU from the
                                // server being measured on the same cores.
                                if lat.len() % 16 == 1 {
                                    checked += 1;
                                    traces += serde_json::from_slice::<serde_json::Value>(&b)
                                        .ok()
                                        .and_then(|v| v["data"].as_array().map(Vec::len))
                                        .unwrap_or(0)
                                        as u64;
                                }
                            }
                            Err(e) => errors.push(e.to_string()),
                        },
                        Ok(r) => errors.push(format!("HTTP {} for {url}", r.status())),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (lat, errors, traces, checked)
            }));
        }
        let mut all = (Vec::new(), Vec::new(), 0u64, 0u64);
        for t in tasks {
            let (l, e, n, c) = t.await.context("a client panicked")?;
            all.0.extend(l);
            all.1.extend(e);
            all.2 += n;
            all.3 += c;
        }
        anyhow::Ok(all)
    })?;
    let (mut lat, errors, traces, checked) = results;
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    Ok(serde_json::json!({
        "kind": args.kind, "clients": args.clients, "requests": n,
        "requests_per_second": n as f64 / args.seconds,
        "traces_per_answer": if checked == 0 { 0.0 } else { traces as f64 / checked as f64 },
        "latency_ms": {"p50": pct(&lat, 0.5), "p90": pct(&lat, 0.9), "p99": pct(&lat, 0.99), "max": pct(&lat, 1.0)},
        "errors": errors.len(), "first_error": errors.first(),
    }))
}

/// Prints a summary of [`run`].
pub fn print(args: &QueryArgs, v: &serde_json::Value) {
    if args.json {
        println!("{v}");
        return;
    }
    let l = &v["latency_ms"];
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    println!(
        "{} over HTTP, {} clients: {} requests ({:.0}/s, {:.1} traces each); latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; errors {}{}",
        args.kind,
        args.clients,
        v["requests"],
        f(&v["requests_per_second"]),
        f(&v["traces_per_answer"]),
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"]),
        v["errors"],
        v["first_error"]
            .as_str()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}
