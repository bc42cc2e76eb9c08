//! `faultline serve`: opens the WAL (recovering it), binds every listener, and serves until
//! SIGINT or SIGTERM.
//!
//! What happens when the WAL fails (a write or fsync error): the WAL refuses every later
//! append, so intake answers 503 / UNAVAILABLE (retryable) and `GET /ready` turns 503 with
//! the reason, while `/health` and `/metrics` keep answering so the failure is visible.
//! The process stays up on purpose, to keep serving reads; acknowledgements resume only
//! after a restart, which recovers the WAL from what is on disk.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use faultline_intake::{Intake, IntakeConfig, Metrics, MetricsObserver};
use faultline_model::validate::Limits;
use faultline_wal::{Durability, Wal, WalOptions};

use crate::ServeArgs;
use crate::config::FileConfig;

/// How long before its receipt a span in the backlog may have started, for deciding which
/// answers the backlog can touch: an answer about times that ended longer before the
/// backlog's oldest record is complete.
const BACKLOG_REACH: std::time::Duration = std::time::Duration::from_secs(3600);

/// Settings after merging file, environment and flags.
#[derive(Debug)]
struct Settings {
    data_dir: PathBuf,
    otlp_grpc: SocketAddr,
    otlp_http: SocketAddr,
    zipkin: SocketAddr,
    http: SocketAddr,
    wal: WalOptions,
    intake: IntakeConfig,
    block_max_spans: Option<usize>,
    block_max_age_secs: Option<u64>,
    retention_secs: Option<u64>,
    store_max_bytes: Option<u64>,
    backlog_rate: u64,
    index_rate: u64,
}

fn settings(args: ServeArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let addr = |flag: Option<SocketAddr>, file: Option<SocketAddr>, default: &str| {
        flag.or(file)
            .map(Ok)
            .unwrap_or_else(|| default.parse::<SocketAddr>())
    };
    let durability: Durability = args
        .durability
        .or(file.wal.durability)
        .map(|d| d.parse::<Durability>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .unwrap_or_default();
    let defaults = WalOptions::default();
    let wal = WalOptions {
        durability,
        max_bytes: args
            .wal_max_bytes
            .or(file.wal.max_bytes)
            .unwrap_or(defaults.max_bytes),
        segment_bytes: args
            .wal_segment_bytes
            .or(file.wal.segment_bytes)
            .unwrap_or(defaults.segment_bytes),
        ..defaults
    };
    anyhow::ensure!(
        wal.segment_bytes >= 4096,
        "wal.segment_bytes must be at least 4096"
    );
    let d = IntakeConfig::default();
    let dl = Limits::default();
    let fi = file.intake;
    let max_memory = args.max_memory_bytes.or(fi.max_memory_bytes);
    if let Some(m) = max_memory {
        anyhow::ensure!(
            m >= 16 << 20,
            "intake.max_memory_bytes ({m}) must be at least 16 MiB (it is in bytes)"
        );
    }
    let intake = IntakeConfig {
        max_request_bytes: args
            .max_request_bytes
            .or(fi.max_request_bytes)
            .unwrap_or(d.max_request_bytes),
        max_inflight_bytes: fi.max_inflight_bytes.unwrap_or(match max_memory {
            // Request bodies in flight must not take the memory bound by themselves.
            Some(m) => d
                .max_inflight_bytes
                .min(usize::try_from(m / 4).unwrap_or(usize::MAX)),
            None => d.max_inflight_bytes,
        }),
        max_memory_bytes: max_memory,
        min_free_disk_bytes: args
            .min_free_disk_bytes
            .or(fi.min_free_disk_bytes)
            .unwrap_or(d.min_free_disk_bytes),
        retry_after_secs: fi.retry_after_secs.unwrap_or(d.retry_after_secs),
        critical_services: if args.critical_services.is_empty() {
            fi.critical_services.unwrap_or_default()
        } else {
            args.critical_services.clone()
        },
        limits: Limits {
            max_attribute_value_bytes: fi
                .max_attribute_value_bytes
                .unwrap_or(dl.max_attribute_value_bytes),
            max_attributes_per_span: fi
                .max_attributes_per_span
                .unwrap_or(dl.max_attributes_per_span),
            ..dl
        },
    };
    Ok(Settings {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./faultline-data")),
        otlp_grpc: addr(args.otlp_grpc, file.listen.otlp_grpc, "127.0.0.1:4317")?,
        otlp_http: addr(args.otlp_http, file.listen.otlp_http, "127.0.0.1:4318")?,
        zipkin: addr(args.zipkin, file.listen.zipkin, "127.0.0.1:9411")?,
        http: addr(args.http, file.listen.http, "127.0.0.1:16686")?,
        wal,
        intake,
        block_max_spans: args.block_max_spans.or(file.store.block_max_spans),
        block_max_age_secs: args.block_max_age_secs.or(file.store.block_max_age_secs),
        retention_secs: args.retention_secs.or(file.store.retention_secs),
        store_max_bytes: args.store_max_bytes.or(file.store.max_bytes),
        backlog_rate: args
            .backlog_rate
            .or(file.store.backlog_spans_per_second)
            .unwrap_or(crate::pipeline::DEFAULT_BACKLOG_RATE),
        index_rate: args
            .index_rate
            .or(file.store.max_index_spans_per_second)
            .unwrap_or(u64::MAX),
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FAULTLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `faultline serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let s = settings(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("faultline")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(s))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone)]
struct ApiState {
    intake: Arc<Intake>,
    ready: Arc<AtomicBool>,
    store: Arc<faultline_store::Store>,
    pipeline: Arc<crate::pipeline::PipelineStats>,
    dlq_dir: PathBuf,
}

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}; is another process using it? choose another address with {flag}")
    })
}

async fn serve(s: Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let wal_dir = s.data_dir.join("wal");
    let opts = s.wal.clone();
    let observer = Arc::new(MetricsObserver(metrics.clone()));
    let dir = wal_dir.clone();
    let (wal, report) = tokio::task::spawn_blocking(move || Wal::open(&dir, opts, observer))
        .await
        .context("WAL recovery task failed")?
        .with_context(|| format!("cannot open the write-ahead log in {}", wal_dir.display()))?;
    tracing::info!(
        dir = %wal_dir.display(),
        segments = report.segments,
        records = report.records,
        last_seq = report.last_seq,
        truncated_bytes = report.truncated_bytes,
        quarantined = report.quarantined.len(),
        ignored = report.ignored.len(),
        durability = %s.wal.durability,
        "write-ahead log recovered"
    );
    metrics
        .wal_quarantined_segments
        .set(report.quarantined.len() as i64);
    metrics
        .wal_truncated_bytes
        .set(report.truncated_bytes as i64);
    if s.wal.durability == Durability::Os {
        tracing::warn!("wal.durability = \"os\": acknowledged data can be lost on power failure");
    }
    anyhow::ensure!(
        s.backlog_rate >= 1,
        "store.backlog_spans_per_second must be at least 1 (0 would never replay the backlog, and the WAL could not be truncated)"
    );
    anyhow::ensure!(
        s.index_rate >= 1,
        "store.max_index_spans_per_second must be at least 1 (leave it unset for no limit)"
    );
    let mut store_opts = faultline_store::StoreOptions::new(&s.data_dir);
    if let Some(n) = s.block_max_spans {
        anyhow::ensure!(n > 0, "store.block_max_spans must be at least 1");
        store_opts.block_max_spans = n;
    }
    if let Some(secs) = s.block_max_age_secs {
        store_opts.block_max_age = std::time::Duration::from_secs(secs);
    }
    if let Some(secs) = s.retention_secs {
        anyhow::ensure!(secs >= 60, "store.retention_secs must be at least 60");
        store_opts.retention = std::time::Duration::from_secs(secs);
    }
    if let Some(bytes) = s.store_max_bytes {
        store_opts.max_bytes = bytes;
    }
    let (store, store_report) =
        tokio::task::spawn_blocking(move || faultline_store::Store::open(store_opts))
            .await
            .context("store start-up task failed")?
            .context("cannot open the store")?;
    tracing::info!(
        blocks = store_report.blocks,
        spans = store_report.spans,
        quarantined = store_report.quarantined.len(),
        removed_orphans = store_report.removed_orphans,
        replay_from_seq = store.durable_seq() + 1,
        "store opened"
    );
    let store = Arc::new(store);
    let pipeline_stats = Arc::new(crate::pipeline::PipelineStats::default());
    let pipeline_stop = Arc::new(AtomicBool::new(false));
    let dlq_dir = crate::dlq::dir(&s.data_dir);
    let pipeline = crate::pipeline::spawn(
        wal.clone(),
        store.clone(),
        pipeline_stats.clone(),
        pipeline_stop.clone(),
        dlq_dir.clone(),
        s.backlog_rate,
        s.index_rate,
    )
    .context("cannot start the store pipeline thread")?;
    let intake = Arc::new(Intake::new(wal.clone(), metrics.clone(), s.intake.clone()));
    let lag_wal = wal.clone();
    let lag_store = store.clone();
    let lag_stats = pipeline_stats.clone();
    let lag: Arc<faultline_api::LagFn> = Arc::new(move |range: Option<(u64, u64)>| {
        let committed = lag_wal.committed_seq();
        let indexed = lag_store.ingested_seq();
        let mut reasons = Vec::new();
        if committed > indexed {
            reasons.push(format!(
                "{} acknowledged WAL records are not yet indexed",
                committed - indexed
            ));
        }
        // The backlog holds spans received since its oldest record; a span may have
        // started up to BACKLOG_REACH before it was received.
        let oldest = lag_stats.backlog.oldest_ns.load(Ordering::Relaxed);
        let touches = range.is_none_or(|(_, end)| {
            oldest == 0 || end.saturating_add(BACKLOG_REACH.as_nanos() as u64) >= oldest
        });
        if touches {
            reasons.extend(lag_stats.backlog.reason());
        }
        reasons
    });
    let status_fn: Arc<faultline_api::status::StatusFn> = {
        let (intake, store, pipeline) = (intake.clone(), store.clone(), pipeline_stats.clone());
        let dlq_dir = dlq_dir.clone();
        Arc::new(move || status(&intake, &store, &pipeline, &dlq_dir))
    };
    let query_state = faultline_api::ApiState {
        store: store.clone(),
        lag,
        status: status_fn,
        cache: Arc::new(faultline_api::QueryCache::new(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(300),
        )),
    };
    let query = faultline_api::router(query_state.clone())
        .merge(faultline_ui::router().with_state(query_state));

    let grpc_l = bind(s.otlp_grpc, "OTLP/gRPC", "--otlp-grpc").await?;
    let http_l = bind(s.otlp_http, "OTLP/HTTP", "--otlp-http").await?;
    let zipkin_l = bind(s.zipkin, "Zipkin", "--zipkin").await?;
    let api_l = bind(s.http, "the HTTP API", "--http").await?;

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let grpc = tonic::transport::Server::builder()
        // Exports are large (hundreds of KiB); the 64 KiB HTTP/2 default window would
        // cost a round trip per window.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .layer(tower::util::MapResponseLayer::new(
            faultline_intake::grpc::remap_oversize_status,
        ))
        .add_service(faultline_intake::grpc::grpc_service(intake.clone()))
        .serve_with_incoming_shutdown(
            // Our own listener (so bind errors are ours to explain), with tonic's
            // TCP_NODELAY: without it Nagle's algorithm adds ~40 ms to every export.
            tonic::transport::server::TcpIncoming::from(grpc_l).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    let http = axum::serve(
        nodelay(http_l),
        faultline_intake::http::otlp_router(intake.clone()),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let zipkin = axum::serve(
        nodelay(zipkin_l),
        faultline_intake::http::zipkin_router(intake.clone()),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let api_state = ApiState {
        intake: intake.clone(),
        ready: ready.clone(),
        store: store.clone(),
        pipeline: pipeline_stats.clone(),
        dlq_dir: dlq_dir.clone(),
    };
    let api = axum::serve(nodelay(api_l), api_router(api_state).merge(query))
        .with_graceful_shutdown(stopped(stop_rx.clone()));

    let tasks = vec![
        tokio::spawn(async move { grpc.await.context("OTLP/gRPC server failed") }),
        tokio::spawn(async move { http.await.context("OTLP/HTTP server failed") }),
        tokio::spawn(async move { zipkin.await.context("Zipkin server failed") }),
        tokio::spawn(async move { api.await.context("HTTP API server failed") }),
    ];
    ready.store(true, Ordering::Release);
    tracing::info!(
        otlp_grpc = %s.otlp_grpc, otlp_http = %s.otlp_http, zipkin = %s.zipkin, http = %s.http,
        data_dir = %s.data_dir.display(),
        "faultline is accepting spans"
    );
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.context("server task panicked")??;
    }
    pipeline_stop.store(true, Ordering::Release);
    let _ = tokio::task::spawn_blocking(move || pipeline.join()).await;
    Ok(())
}

/// Answers go out at once instead of waiting for Nagle's algorithm.
fn nodelay(
    l: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    l.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Bytes as `512.5 KiB`, `3.9 GiB`.
fn human(n: u64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{n} B")
}

/// The health of each part, for `/api/v1/status` and the status page.
fn status(
    intake: &Intake,
    store: &faultline_store::Store,
    pipeline: &crate::pipeline::PipelineStats,
    dlq_dir: &std::path::Path,
) -> faultline_api::status::Status {
    use faultline_api::status::{Component, Health, Status};
    use serde_json::json;
    let wal = intake.wal();
    let mut parts = Vec::new();

    let (size, max) = (wal.size_bytes(), wal.options().max_bytes);
    let wal_quarantined = intake.metrics().wal_quarantined_segments.get();
    let (health, summary, action) = if let Some(reason) = wal.failure() {
        (
            Health::Failed,
            format!("the write-ahead log stopped accepting writes: {reason}"),
            Some("restart faultline after checking the disk holding DATA_DIR/wal; intake answers 503 until then".to_string()),
        )
    } else if size.saturating_mul(10) > max.saturating_mul(8) {
        (
            Health::Degraded,
            format!("{} of {} used (over 80%); intake refuses writes at 100%", human(size), human(max)),
            Some("the store is behind or sealing fails (see indexing and sealing); or raise wal.max_bytes".to_string()),
        )
    } else if wal_quarantined > 0 {
        (
            Health::Degraded,
            format!("{wal_quarantined} corrupt segments were quarantined at start-up; their records are lost"),
            Some("inspect DATA_DIR/wal/quarantine with `faultline wal verify`, then move the files away".to_string()),
        )
    } else {
        (
            Health::Ok,
            format!("{} of {} used", human(size), human(max)),
            None,
        )
    };
    parts.push(Component {
        name: "wal",
        health,
        summary,
        action,
        details: json!({"bytes": size, "max_bytes": max, "committed_seq": wal.committed_seq(), "quarantined_segments": wal_quarantined}),
    });

    let reserve = intake.config().min_free_disk_bytes;
    let free = intake.disk_free_bytes();
    let (health, summary, action) = match free {
        Some(f) if f < reserve => (
            Health::Failed,
            format!("{} free, below the reserve of {}: intake refuses writes", human(f), human(reserve)),
            Some("free disk space on the volume holding DATA_DIR, or lower store.max_bytes / store.retention_secs".to_string()),
        ),
        Some(f) if f < reserve.saturating_mul(2) => (
            Health::Degraded,
            format!("{} free, near the reserve of {}", human(f), human(reserve)),
            Some("free disk space on the volume holding DATA_DIR".to_string()),
        ),
        Some(f) => (Health::Ok, format!("{} free", human(f)), None),
        None => (Health::Ok, "free space unknown (statvfs failed)".to_string(), None),
    };
    parts.push(Component {
        name: "disk",
        health,
        summary,
        action,
        details: json!({"free_bytes": free, "reserve_bytes": reserve}),
    });

    let committed = wal.committed_seq();
    let indexed = store.ingested_seq();
    let behind = committed.saturating_sub(indexed);
    let undecodable = pipeline.undecodable.load(Ordering::Relaxed);
    let loading = store.indexes_loading();
    // Undecodable records are dead letters (their own part below).
    let (health, summary, action) = if behind > 100 {
        (
            Health::Degraded,
            format!("{behind} acknowledged records are not yet indexed; answers say they are partial"),
            Some("indexing catches up by itself; if it does not, the load is above what this machine indexes (see BENCHMARKS.md)".to_string()),
        )
    } else if loading > 0 {
        (
            Health::Degraded,
            format!("search indexes of {loading} blocks are still loading after a restart"),
            None,
        )
    } else {
        (Health::Ok, format!("{behind} records behind"), None)
    };
    parts.push(Component {
        name: "indexing",
        health,
        summary,
        action,
        details: json!({"committed_seq": committed, "indexed_seq": indexed, "records_behind": behind, "undecodable_records": undecodable, "search_indexes_loading": loading, "head_spans": store.head_spans()}),
    });

    let b = &pipeline.backlog;
    let backlog_reason = b.reason();
    parts.push(Component {
        name: "backlog",
        health: if backlog_reason.is_some() { Health::Degraded } else { Health::Ok },
        summary: backlog_reason.clone().unwrap_or_else(|| {
            format!(
                "none; {} spans replayed since start",
                b.replayed_spans.load(Ordering::Relaxed)
            )
        }),
        action: backlog_reason.map(|_| {
            "nothing to do: live data is indexed first and the backlog follows; raise store.backlog_spans_per_second (--backlog-rate) to replay faster".to_string()
        }),
        details: json!({
            "pending_spans": b.spans.load(Ordering::Relaxed),
            "pending_records": b.records.load(Ordering::Relaxed),
            "pending_ranges": b.ranges.load(Ordering::Relaxed),
            "oldest": match b.oldest_ns.load(Ordering::Relaxed) { 0 => None, ns => Some(crate::walcmd::time_rfc3339(ns)) },
            "replayed_spans": b.replayed_spans.load(Ordering::Relaxed),
            "rate_spans_per_second": b.rate.load(Ordering::Relaxed),
            "skips_to_live": b.skips.load(Ordering::Relaxed),
        }),
    });

    let failing = pipeline.seal_failing.load(Ordering::Relaxed);
    let seal_error = pipeline.seal_error.lock().ok().and_then(|e| e.clone());
    parts.push(Component {
        name: "sealing",
        health: if failing { Health::Degraded } else { Health::Ok },
        summary: if failing {
            format!(
                "sealing blocks fails: {}; the WAL keeps accepting within wal.max_bytes",
                seal_error.as_deref().unwrap_or("see the log")
            )
        } else {
            format!("{} blocks sealed since start", pipeline.blocks.load(Ordering::Relaxed))
        },
        action: failing.then(|| "free disk space or fix permissions on DATA_DIR/blocks; sealing retries with backoff".to_string()),
        details: json!({"failing": failing, "error": seal_error, "blocks_sealed": pipeline.blocks.load(Ordering::Relaxed)}),
    });

    let blocks = store.blocks();
    let bytes: u64 = blocks.iter().map(|b| b.bytes).sum();
    let quarantined = store.quarantined();
    let max_bytes = store.max_bytes();
    parts.push(Component {
        name: "store",
        health: if quarantined.is_empty() { Health::Ok } else { Health::Degraded },
        summary: if quarantined.is_empty() {
            format!("{} blocks, {}", blocks.len(), human(bytes))
        } else {
            format!("{} unreadable files quarantined; answers are partial", quarantined.len())
        },
        action: (!quarantined.is_empty()).then(|| {
            "inspect DATA_DIR/blocks/quarantine; the spans in those files are missing from answers (the WAL no longer holds them)".to_string()
        }),
        details: json!({"blocks": blocks.len(), "bytes": bytes, "max_bytes": (max_bytes != u64::MAX).then_some(max_bytes), "quarantined": quarantined}),
    });
    let (rss, bound) = intake.memory();
    let share = bound.map(|b| rss as f64 / b.max(1) as f64);
    parts.push(Component {
        name: "memory",
        health: match share {
            Some(x) if x >= faultline_intake::admission::SHED_BULK_AT => Health::Degraded,
            _ => Health::Ok,
        },
        summary: match bound {
            Some(b) => format!("{} resident of {} ({:.0}%)", human(rss), human(b), share.unwrap_or(0.0) * 100.0),
            None => format!("{} resident; no bound set (intake.max_memory_bytes)", human(rss)),
        },
        action: share.filter(|&x| x >= faultline_intake::admission::SHED_BULK_AT).map(|_| {
            "memory pressure sheds bulk, then normal traffic: lower store.block_max_spans (the in-memory head) or raise intake.max_memory_bytes".to_string()
        }),
        details: json!({"resident_bytes": rss, "max_bytes": bound}),
    });
    let pressure = intake.pressure();
    let shedding: Vec<&str> = [
        ("bulk", faultline_intake::admission::SHED_BULK_AT),
        ("normal", faultline_intake::admission::SHED_NORMAL_AT),
    ]
    .iter()
    .filter(|(_, at)| pressure >= *at)
    .map(|(l, _)| *l)
    .collect();
    parts.push(Component {
        name: "lanes",
        health: if shedding.is_empty() { Health::Ok } else { Health::Degraded },
        summary: if shedding.is_empty() {
            format!("accepting every lane (pressure {:.0}%)", pressure * 100.0)
        } else {
            format!(
                "shedding {} traffic (pressure {:.0}%); critical spans are still accepted",
                shedding.join(" and "),
                pressure * 100.0
            )
        },
        action: (!shedding.is_empty()).then(|| {
            "the write-ahead log, the in-flight budget or memory is filling: see indexing, sealing and memory; clients retry shed requests".to_string()
        }),
        details: json!({"pressure": pressure, "shed_bulk_at": faultline_intake::admission::SHED_BULK_AT, "shed_normal_at": faultline_intake::admission::SHED_NORMAL_AT, "shedding": shedding, "critical_services": intake.config().critical_services}),
    });
    let dead = crate::dlq::count(dlq_dir);
    parts.push(Component {
        name: "dead letters",
        health: if dead == 0 { Health::Ok } else { Health::Degraded },
        summary: if dead == 0 {
            "none".to_string()
        } else {
            format!("{dead} WAL records could not be processed and were set aside; their spans are not indexed")
        },
        action: (dead > 0).then(|| {
            "`faultline dlq list DATA_DIR` shows why; after a fix `faultline dlq replay --all`, or `faultline dlq drop DATA_DIR --all`".to_string()
        }),
        details: json!({"records": dead, "moved_since_start": pipeline.dead_letters.load(Ordering::Relaxed), "dir": dlq_dir.display().to_string()}),
    });
    Status { components: parts }
}

fn api_router(state: ApiState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/dlq/replay", axum::routing::post(dlq_replay))
        .with_state(state)
}

async fn ready(State(st): State<ApiState>) -> impl IntoResponse {
    if let Some(reason) = st.intake.wal().failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the write-ahead log stopped accepting writes ({reason}); restart faultline\n"
            ),
        );
    }
    if st.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or stopping\n".to_string(),
        )
    }
}

/// `POST /api/v1/dlq/replay?all=true` or `?seq=N&seq=M`: appends dead letters' payloads to
/// the WAL as new records, then deletes them; answers how many.
async fn dlq_replay(
    State(st): State<ApiState>,
    axum::extract::Query(p): axum::extract::Query<Vec<(String, String)>>,
) -> impl IntoResponse {
    let all = p.iter().any(|(k, v)| k == "all" && v == "true");
    let mut seqs = Vec::new();
    for (k, v) in &p {
        if k == "seq" {
            match v.parse::<u64>() {
                Ok(n) => seqs.push(n),
                Err(_) => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("seq={v:?} is not a sequence number\n"),
                    );
                }
            }
        }
    }
    if !all && seqs.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "say which dead letters: all=true or seq=N (repeated)\n".to_string(),
        );
    }
    let dir = st.dlq_dir.clone();
    let letters = match tokio::task::spawn_blocking(move || crate::dlq::read_all(&dir)).await {
        Ok((letters, _)) => letters,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let mut replayed = Vec::new();
    for (path, d) in letters {
        if !(all || seqs.contains(&d.seq)) {
            continue;
        }
        match st.intake.wal().append(d.payload).await {
            Ok(ack) => {
                let file = path.clone();
                let removed =
                    tokio::task::spawn_blocking(move || std::fs::remove_file(&file)).await;
                if !matches!(removed, Ok(Ok(()))) {
                    tracing::warn!(file = %path.display(), "replayed a dead letter but cannot delete it; drop it with `faultline dlq drop`");
                }
                replayed.push(format!("{} -> {}", d.seq, ack.seq));
            }
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the WAL refused the replay after {} records: {e}; retry later\n",
                        replayed.len()
                    ),
                );
            }
        }
    }
    (
        StatusCode::OK,
        format!(
            "replayed {} dead letters (old seq -> new seq): {}\n",
            replayed.len(),
            replayed.join(", ")
        ),
    )
}

async fn health() -> &'static str {
    "ok\n"
}

async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    st.intake.refresh_gauges();
    let m = st.intake.metrics();
    let blocks = st.store.blocks();
    m.store_head_spans.set(st.store.head_spans() as i64);
    m.store_blocks.set(blocks.len() as i64);
    m.store_block_bytes
        .set(blocks.iter().map(|b| b.bytes).sum::<u64>() as i64);
    m.store_block_spans
        .set(blocks.iter().map(|b| b.spans).sum::<u64>() as i64);
    m.store_indexed_seq.set(st.store.ingested_seq() as i64);
    m.store_undecodable_records
        .set(st.pipeline.undecodable.load(Ordering::Relaxed) as i64);
    m.store_seal_failing
        .set(i64::from(st.pipeline.seal_failing.load(Ordering::Relaxed)));
    // Counting dead letters reads a directory: not on the executor.
    let dir = st.dlq_dir.clone();
    let dead = tokio::task::spawn_blocking(move || crate::dlq::count(&dir))
        .await
        .unwrap_or(0);
    m.dlq_records.set(dead as i64);
    m.dlq_moved
        .set(st.pipeline.dead_letters.load(Ordering::Relaxed) as i64);
    let b = &st.pipeline.backlog;
    m.backlog_spans.set(b.spans.load(Ordering::Relaxed) as i64);
    m.backlog_replayed_spans
        .set(b.replayed_spans.load(Ordering::Relaxed) as i64);
    m.backlog_ranges
        .set(b.ranges.load(Ordering::Relaxed) as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.intake.metrics().encode(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(512), "512 B");
        assert_eq!(super::human(524_800), "512.5 KiB");
        assert_eq!(super::human(4 << 30), "4.0 GiB");
    }
}
