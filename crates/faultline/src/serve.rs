//! `faultline serve`: opens the WAL (recovering it) and the store, starts the pipeline,
//! binds every listener, and serves until SIGINT or SIGTERM. Wiring only: every part's
//! behaviour, health rules and metrics live in its own crate; [`Wiring`] hands them to the
//! API through `faultline_api::Process`.
//!
//! What happens when the WAL fails (a write or fsync error): the WAL refuses every later
//! append, so intake answers 503 / UNAVAILABLE (retryable) and `GET /ready` turns 503 with
//! the reason, while `/health` and `/metrics` keep answering so the failure is visible.
//! The process stays up on purpose, to keep serving reads; acknowledgements resume only
//! after a restart, which recovers the WAL from what is on disk.
//!
//! With `storage = "clickhouse"` the ClickHouse writer ships the WAL to ClickHouse (and
//! holds WAL truncation back to where it reads), and the API and the UI read ClickHouse.
//! The embedded store keeps running for what works on this node's own spans as they
//! arrive: continuous checks, tail sampling, clock skew, tracing health and alerts.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

use faultline_alerts::Alerts;
use faultline_api::{ApiState, DeadLetters, Process, QueryCache, ReplayError, Replayed};
use faultline_auth::{Auth, Listener, Scope, Scopes, protect};
use faultline_chaos::experiment::history::History;
use faultline_checks::Checks;
use faultline_clickhouse::{ClickHouse, WithLocal};
use faultline_intake::http::{otlp_router, zipkin_router};
use faultline_intake::{Intake, Metrics, MetricsObserver};
use faultline_model::health::Component;
use faultline_notify::Outbox;
use faultline_pipeline::clickhouse::{Writer, WriterView};
use faultline_pipeline::pending::WithPending;
use faultline_pipeline::{Pipeline, PipelineMetrics, PipelineView};
use faultline_sampling::{Policy, PolicyHandle, SamplingMetrics};
use faultline_store::{SpanStore, Store};
use faultline_tls::{Incoming, Peer, Role, Tls};
use faultline_wal::{Durability, Wal};

use crate::config::{ServeArgs, Settings};

pub(crate) fn init_logging() {
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
    let s = Settings::load(args)?;
    // The policy first (file I/O, before the runtime): a bad policy file stops the start
    // before anything is opened.
    let sampling = match &s.sampling_policy {
        Some(path) => PolicyHandle::from_file(path).context(
            "cannot start with this sampling policy; fix it or start without --sampling-policy",
        )?,
        None => PolicyHandle::fixed(Policy::default()),
    };
    let _policy_watcher = sampling
        .watch(std::time::Duration::from_secs(1))
        .context("cannot start the sampling policy watcher thread")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("faultline")
        .build()
        .context("cannot start the async runtime")?;
    let (l, r) = (listeners(&s.listen), s.store.retention);
    let (auth, _token_watcher) = faultline_auth::Auth::start(&s.auth, &l, Some(&s.data_dir), r)?;
    let tls = faultline_tls::Tls::load(&s.tls)?;
    let every = faultline_tls::RELOAD_EVERY;
    let _tls_watcher = tls.as_ref().map(|t| t.watch(every)).transpose()?;
    runtime.block_on(serve(s, sampling, auth, tls))?;
    Ok(ExitCode::SUCCESS)
}

/// Every listener's name and address, for the check that none is open where it must not.
fn listeners(l: &crate::config::Listen) -> Vec<(&'static str, SocketAddr)> {
    let mut v = vec![("OTLP/gRPC", l.otlp_grpc), ("OTLP/HTTP", l.otlp_http)];
    v.extend([
        ("Zipkin", l.zipkin),
        ("HTTP API", l.http),
        ("sampling", l.sampling),
    ]);
    v.extend(l.fault_proxy.map(|a| ("fault proxy API", a)));
    v
}

/// What the API asks of the process, answered from intake, the pipeline and the store.
struct Wiring {
    intake: Arc<Intake>,
    store: Arc<Store>,
    pipeline: PipelineView,
    registry: Registry,
    pipeline_metrics: PipelineMetrics,
    ready: Arc<AtomicBool>,
    sampling: PolicyHandle,
    sampling_metrics: SamplingMetrics,
    proxies: Option<faultline_chaos::Proxies>,
    /// The ClickHouse writer and its server's URL, with `storage = "clickhouse"`.
    writer: Option<(WriterView, String)>,
}

impl Process for Wiring {
    fn partial_reasons(&self, range: Option<(u64, u64)>) -> Vec<String> {
        match &self.writer {
            // Answers come from ClickHouse: what matters is what the writer has not sent.
            Some((w, _)) => w.partial_reason().into_iter().collect(),
            None => self.pipeline.partial_reasons(range),
        }
    }

    fn status(&self) -> Vec<Component> {
        let mut parts = self.intake.health();
        parts.extend(self.pipeline.health());
        parts.extend(self.writer.iter().map(|(w, url)| w.health(url)));
        parts.push(self.store.health());
        parts.push(self.sampling.health());
        faultline_api::status::sort_parts(&mut parts);
        parts
    }

    fn ready(&self) -> Result<(), String> {
        if let Some(reason) = self.intake.wal().failure() {
            return Err(format!(
                "the write-ahead log stopped accepting writes ({reason}); restart faultline"
            ));
        }
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("starting or stopping".into())
        }
    }

    fn metrics(&self) -> String {
        self.intake.refresh_gauges();
        self.pipeline_metrics.refresh(&self.pipeline);
        self.sampling_metrics.refresh(&self.sampling);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if let Some(p) = &self.proxies {
            let end = out.rfind("# EOF").unwrap_or(out.len());
            out.insert_str(end, &p.metrics_text());
        }
        out
    }

    fn sampling_policy(&self) -> Option<PolicyHandle> {
        Some(self.sampling.clone())
    }

    fn replay_dead_letters(&self, which: &DeadLetters) -> Result<Vec<Replayed>, ReplayError> {
        let wanted = |seq: u64| match which {
            DeadLetters::All => true,
            DeadLetters::Seqs(s) => s.contains(&seq),
        };
        let pairs = |v: Vec<(u64, u64)>| {
            v.into_iter()
                .map(|(seq, new_seq)| Replayed { seq, new_seq })
                .collect::<Vec<_>>()
        };
        faultline_pipeline::dlq::replay(self.intake.wal(), self.pipeline.dlq_dir(), wanted)
            .map(pairs)
            .map_err(|e| ReplayError {
                message: format!("the WAL refused the replay: {}; retry later", e.source),
                replayed: pairs(e.replayed),
                retryable: true,
            })
    }
}

/// The probes, their spans going through intake's critical lane as an SDK's would.
async fn start_probes(
    s: &Settings,
    intake: Arc<Intake>,
    outbox: &Outbox,
) -> anyhow::Result<faultline_probe::Probes> {
    let sink = faultline_probe::FnSink(move |r| -> faultline_probe::Submitted {
        let intake = intake.clone();
        Box::pin(async move { intake.ingest_synthetic(r).await })
    });
    let (dir, retention) = (&s.data_dir, s.store.retention);
    let (sink, outbox) = (Arc::new(sink), Some(outbox.clone()));
    faultline_probe::Probes::start(dir, s.probes.clone(), sink, outbox, retention)
        .await
        .context("cannot start the probes")
}

/// The OTLP/gRPC server on our own listener (bind errors are ours to explain; TLS;
/// TCP_NODELAY, without which Nagle's algorithm adds ~40 ms to every export).
async fn grpc_server(
    intake: Arc<Intake>,
    auth: Auth,
    l: Incoming,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        // Exports are large (hundreds of KiB); the 64 KiB HTTP/2 default window would
        // cost a round trip per window.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .layer(tower::util::MapResponseLayer::new(
            faultline_intake::grpc::remap_oversize_status,
        ))
        .add_service(InterceptedService::new(
            faultline_intake::grpc::grpc_service(intake),
            faultline_auth::GrpcGuard::new(&auth),
        ))
        .serve_with_incoming_shutdown(l, stop)
        .await
}

/// Binds `addr` and accepts on it, with TLS when it is on.
pub(crate) async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &str,
    tls: Option<&Tls>,
    role: Role,
) -> anyhow::Result<Incoming> {
    let l = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}; is another process using it? choose another address with {flag}")
    })?;
    Ok(Incoming::new(l, tls, role, what)?)
}

/// Opens and recovers the WAL, logging what recovery did. Numbering continues after
/// `store_seq`, the store's `source_seq` (above it the store replays; at or below it a
/// record would be skipped as sealed), whatever is left in the directory.
async fn open_wal(s: &Settings, metrics: &Arc<Metrics>, store_seq: u64) -> anyhow::Result<Wal> {
    let wal_dir = s.data_dir.join("wal");
    let mut opts = s.wal.clone();
    opts.min_next_seq = store_seq + 1;
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
    Ok(wal)
}

/// Opens the consistency rules and continuous assertions and makes them the store's span
/// observer (before the pipeline replays anything).
async fn open_checks(s: &Settings, store: &Arc<Store>) -> anyhow::Result<Arc<Checks>> {
    let (d, c) = (s.data_dir.clone(), s.checks.clone());
    let clock = faultline_checks::system_clock();
    let open = move || Checks::open(&d, c.rules, c.assertions, c.memory_bytes, clock);
    let checks = Arc::new(tokio::task::spawn_blocking(open).await??);
    store.set_observer(checks.clone());
    Ok(checks)
}

/// The checks' periodic work: once a second, off the executor. Nothing is declared
/// violated while the pipeline replays a backlog (a span may still be on its way).
async fn tick_checks(checks: Arc<Checks>, store: Arc<Store>, p: PipelineView, o: Outbox) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let caught_up = p.stats().backlog.reason().is_none();
        let (c, st, o) = (checks.clone(), store.clone(), o.clone());
        let now = faultline_pipeline::system_clock()();
        let tick = move || c.tick(st.as_ref(), now, caught_up, Some(&o));
        match tokio::task::spawn_blocking(tick).await {
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the continuous checks' periodic work failed; retried in a second")
            }
            Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// With `storage = "clickhouse"`: the ClickHouse backend and its writer
/// (`Writer::start`), which holds the pipeline's WAL truncation back to where it reads.
async fn start_writer(
    s: &Settings,
    wal: &Wal,
    st: Arc<Store>,
) -> anyhow::Result<Option<(Arc<ClickHouse>, Writer)>> {
    let Some(c) = s.clickhouse.clone() else {
        return Ok(None);
    };
    let (wal, pipeline, days) = (wal.clone(), s.pipeline.clone(), c.retention);
    let start = move || -> anyhow::Result<(Arc<ClickHouse>, Writer)> {
        let ch = ClickHouse::connect(c.config, &c.node)?;
        Ok((
            Arc::new(ch.clone()),
            Writer::start(ch, &wal, &pipeline, days, st)?,
        ))
    };
    let started = tokio::task::spawn_blocking(start).await?;
    Ok(Some(started.context("cannot start the ClickHouse writer")?))
}

/// The notification outbox, delivering, and the alert rules over `store`.
async fn start_notify(
    s: &Settings,
    store: &Arc<dyn SpanStore>,
) -> anyhow::Result<(Outbox, Alerts)> {
    let (d, notify) = (s.data_dir.clone(), s.notify.clone());
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(&d, notify)).await?;
    let outbox = outbox.context("cannot open the notification outbox")?;
    outbox
        .start()
        .context("cannot start notification delivery")?;
    let (d, rules, st, o) = (
        s.data_dir.clone(),
        s.alerts.clone(),
        store.clone(),
        outbox.clone(),
    );
    let alerts = tokio::task::spawn_blocking(move || Alerts::open(&d, rules, st, Some(o)));
    Ok((
        outbox,
        alerts.await?.context("cannot start the alert rules")?,
    ))
}

/// Opens the store, logging what start-up found.
async fn open_store(s: &Settings) -> anyhow::Result<Arc<Store>> {
    let opts = s.store.clone();
    let (store, report) = tokio::task::spawn_blocking(move || Store::open(opts))
        .await
        .context("store start-up task failed")?
        .context("cannot open the store")?;
    tracing::info!(
        blocks = report.blocks,
        spans = report.spans,
        quarantined = report.quarantined.len(),
        removed_orphans = report.removed_orphans,
        replay_from_seq = store.durable_seq() + 1,
        "store opened"
    );
    Ok(Arc::new(store))
}

async fn serve(
    s: Settings,
    sampling: PolicyHandle,
    auth: Auth,
    tls: Option<Tls>,
) -> anyhow::Result<()> {
    let mut registry = Registry::with_prefix("faultline");
    auth.register_metrics(&mut registry);
    tls.iter().for_each(|t| t.register_metrics(&mut registry));
    let metrics = Arc::new(Metrics::new(&mut registry));
    let pipeline_metrics = PipelineMetrics::new(&mut registry);
    let sampling_metrics = SamplingMetrics::new(&mut registry);
    let store = open_store(&s).await?;
    let checks = open_checks(&s, &store).await?;
    let wal = open_wal(&s, &metrics, store.source_seq()).await?;
    let writer = start_writer(&s, &wal, store.clone()).await?;
    // Before intake opens: everything committed so far is the backlog behind live data.
    let pipeline = Pipeline::spawn(wal.clone(), store.clone(), s.pipeline.clone())
        .context("cannot start the store pipeline")?;
    // What the API and the alerts read: on ClickHouse, every node's spans; traces by id
    // also from acknowledged records not indexed yet.
    let reads = WithLocal::reads(writer.as_ref().map(|(c, _)| c.as_ref()), store.clone());
    let pending = s.pipeline.pending.clone();
    let reads = WithPending::wrap(reads, wal.clone(), pending.clone());
    let intake = Arc::new(Intake::new(wal, metrics, s.intake.clone()).with_pending(pending));
    let ready = Arc::new(AtomicBool::new(false));
    let (outbox, alerts) = start_notify(&s, &reads).await?;
    let (st, p, o) = (store.clone(), pipeline.view(), outbox.clone());
    tokio::spawn(tick_checks(checks.clone(), st, p, o));
    alerts.start().context("cannot start the alerts thread")?;
    let proxies = match s.listen.fault_proxy {
        Some(_) => Some(faultline_chaos::Proxies::open(&s.data_dir).await?.0),
        None => None,
    };
    if let Some(p) = &proxies {
        let i = intake.clone(); // HTTP proxies' spans take the critical lane, as probes' do.
        p.send_spans_to(move |r| {
            let i = i.clone();
            async move { i.ingest_synthetic(r).await }
        });
    }
    let d = s.data_dir.clone();
    let history = tokio::task::spawn_blocking(move || History::open(&d)).await??;
    let history = Arc::new(history);
    let url = s.clickhouse.as_ref().map(|c| c.config.url.clone());
    let view = writer.as_ref().zip(url).map(|((_, w), u)| (w.view(), u));
    let state = ApiState {
        store: reads,
        process: Arc::new(Wiring {
            intake: intake.clone(),
            store,
            pipeline: pipeline.view(),
            registry,
            pipeline_metrics,
            ready: ready.clone(),
            sampling: sampling.clone(),
            sampling_metrics,
            proxies: proxies.clone(),
            writer: view,
        }),
        cache: Arc::new(QueryCache::new(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(300),
        )),
        history: Arc::default(),
        probes: Some(start_probes(&s, intake.clone(), &outbox).await?),
        alerts: Some(alerts),
        outbox: Some(outbox),
        experiments: Some(history.clone()),
        checks: Some(checks),
        auth: Some(auth.clone()),
    };
    tokio::spawn(faultline_api::status::sample_forever(state.clone()));
    let l = s.listen;
    let t = tls.as_ref();
    let grpc_l = bind(l.otlp_grpc, "OTLP/gRPC", "--otlp-grpc", t, Role::GrpcIntake).await?;
    let http_l = bind(l.otlp_http, "OTLP/HTTP", "--otlp-http", t, Role::HttpIntake).await?;
    let zipkin_l = bind(l.zipkin, "Zipkin", "--zipkin", t, Role::HttpIntake).await?;
    let api_l = bind(l.http, "the HTTP API", "--http", t, Role::Http).await?;
    let sampling_l = bind(
        l.sampling,
        "Jaeger remote sampling",
        "--sampling",
        t,
        Role::Http,
    )
    .await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let grpc = grpc_server(
        intake.clone(),
        auth.clone(),
        grpc_l,
        stopped(stop_rx.clone()),
    );
    let peer = |r: axum::Router| r.into_make_service_with_connect_info::<Peer>();
    let otlp = protect(otlp_router(intake.clone()), &auth, Listener::OtlpHttp);
    let http = axum::serve(http_l, peer(otlp)).with_graceful_shutdown(stopped(stop_rx.clone()));
    let zipkin = protect(zipkin_router(intake.clone()), &auth, Listener::Zipkin);
    let zipkin =
        axum::serve(zipkin_l, peer(zipkin)).with_graceful_shutdown(stopped(stop_rx.clone()));
    let app = faultline_api::router()
        .merge(faultline_ui::router())
        .with_state(state);
    let app = protect(app, &auth, Listener::Api);
    let api = axum::serve(api_l, peer(app)).with_graceful_shutdown(stopped(stop_rx.clone()));
    let sampling_app = protect(
        faultline_api::sampling::router(sampling),
        &auth,
        Listener::Sampling,
    );
    let sampling_srv = axum::serve(sampling_l, peer(sampling_app))
        .with_graceful_shutdown(stopped(stop_rx.clone()));

    let mut tasks = vec![
        tokio::spawn(async move { grpc.await.context("OTLP/gRPC server failed") }),
        tokio::spawn(async move { http.await.context("OTLP/HTTP server failed") }),
        tokio::spawn(async move { zipkin.await.context("Zipkin server failed") }),
        tokio::spawn(async move { api.await.context("HTTP API server failed") }),
        tokio::spawn(async move {
            sampling_srv
                .await
                .context("Jaeger remote sampling server failed")
        }),
    ];
    tasks.extend(start_chaos(&s, proxies, history, &auth, t, stop_rx.clone()).await?);
    ready.store(true, Ordering::Release);
    tracing::info!(
        otlp_grpc = %l.otlp_grpc, otlp_http = %l.otlp_http, zipkin = %l.zipkin, http = %l.http,
        sampling = %l.sampling,
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
    let _ = tokio::task::spawn_blocking(move || pipeline.shutdown()).await;
    if let Some((_, w)) = writer {
        let _ = tokio::task::spawn_blocking(move || w.shutdown()).await;
    }
    Ok(())
}

/// The fault proxy's API (with `--fault-proxy`) and the scheduled experiments.
async fn start_chaos(
    s: &Settings,
    proxies: Option<faultline_chaos::Proxies>,
    history: Arc<History>,
    auth: &Auth,
    tls: Option<&Tls>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let l = s.listen;
    // With TLS on, scheduled runs call this process over https, trusting its certificate.
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (api, own) = (
        format!("{scheme}://{}", l.http),
        l.fault_proxy.map(|a| format!("{scheme}://{a}")),
    );
    let runs = s.data_dir.join("experiment-runs");
    let client_tls = tls.map(Tls::self_client_config).transpose()?;
    // Scheduled runs call this process's API and proxy with a token of their own.
    let token = match auth.enabled() && !s.experiments.is_empty() {
        true => Some(auth.mint_internal(
            "faultline-experiments",
            Scopes::of(&[Scope::Read, Scope::Chaos]),
        )?),
        false => None,
    };
    let (e, h) = (s.experiments.clone(), history);
    faultline_chaos::experiment::schedule::start(e, api, own, runs, h, token, client_tls);
    let (Some(addr), Some(p)) = (l.fault_proxy, proxies) else {
        return Ok(None);
    };
    let t = crate::proxycmd::serve_api(addr, "--fault-proxy", p, auth, tls, stop).await?;
    Ok(Some(t))
}

pub(crate) async fn shutdown_signal() {
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
