//! The fault proxy's wiring: `faultline proxy` (the proxy alone, Toxiproxy's API on
//! 127.0.0.1:8474, with the same tokens, TLS and audit log as `serve`) and the same API
//! inside `serve` when `listen.fault_proxy` is set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use faultline_auth::{Auth, AuthConfig, Listener, protect};
use faultline_chaos::Proxies;
use faultline_tls::{Peer, Role, Tls};

/// How long the standalone proxy keeps its audit log (`serve` keeps it with the spans).
const AUDIT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Flags of `faultline proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Where Toxiproxy's HTTP API listens.
    #[arg(long, env = "FAULTLINE_PROXY_API", default_value = faultline_chaos::DEFAULT_API)]
    pub api: SocketAddr,
    /// Durable state (proxies.json; back after a restart without faults) and the audit
    /// log of API calls [default: memory, no audit log kept].
    #[arg(long, env = "FAULTLINE_PROXY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Send HTTP proxies' request spans here (OTLP/HTTP, e.g. faultline's
    /// http://127.0.0.1:4318; FAULTLINE_TOKEN is sent as its bearer token, and
    /// FAULTLINE_CA_FILE's CAs are trusted for https) [default: not recorded].
    #[arg(long, env = "FAULTLINE_PROXY_OTLP")]
    pub otlp_endpoint: Option<String>,
    /// A JSON array of proxies created at start, as `POST /populate` would (Toxiproxy's
    /// `-config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Bearer tokens (every route needs the `chaos` scope), read again when the file
    /// changes [default: none; then --api must be loopback].
    #[arg(long, env = "FAULTLINE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve without tokens on a non-loopback --api, on purpose.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    #[command(flatten)]
    pub tls: faultline_tls::TlsArgs,
}

/// Runs `faultline proxy` until SIGINT or SIGTERM.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    crate::serve::init_logging();
    anyhow::ensure!(
        args.tls.tls_client_ca.is_none(),
        "the fault proxy API asks for no client certificate (tokens say who calls it); drop --tls-client-ca"
    );
    let cfg = AuthConfig {
        token_file: args.token_file.clone(),
        allow_unauthenticated: args.allow_unauthenticated,
    };
    let listeners = [("fault proxy API", args.api)];
    let state = args.state_dir.as_deref();
    let (auth, _token_watcher) = Auth::start(&cfg, &listeners, state, AUDIT_RETENTION)?;
    let tls = Tls::load(&faultline_tls::TlsConfig::default().with_flags(&args.tls))?;
    let every = faultline_tls::RELOAD_EVERY;
    let _tls_watcher = tls.as_ref().map(|t| t.watch(every)).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("faultline-proxy")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let proxies = match state {
            Some(dir) => Proxies::open(dir).await?.0,
            None => Proxies::in_memory(),
        };
        if let Some(path) = &args.config {
            proxies
                .populate_file(path)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        if let Some(url) = &args.otlp_endpoint {
            let token = std::env::var("FAULTLINE_TOKEN").ok();
            let sink = faultline_chaos::http::OtlpExport::start(url, token);
            proxies.set_span_sink(sink.map_err(anyhow::Error::msg)?);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = serve_api(args.api, "--api", proxies, &auth, tls.as_ref(), stop_rx).await?;
        tracing::info!(api = %args.api, tls = tls.is_some(), tokens = auth.enabled(), "fault proxy API (Toxiproxy-compatible) listening");
        crate::serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
        task.await.context("fault proxy API task panicked")?
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Serves the fault proxy's API on `addr` (`flag` names it in errors) behind the token
/// check, with TLS when it is on; the serving task.
pub async fn serve_api(
    addr: SocketAddr,
    flag: &str,
    proxies: Proxies,
    auth: &Auth,
    tls: Option<&Tls>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let l = crate::serve::bind(addr, "the fault proxy API", flag, tls, Role::Http).await?;
    let app = protect(
        faultline_chaos::api::router(proxies),
        auth,
        Listener::FaultProxy,
    );
    let srv = axum::serve(l, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move { drop(stop.wait_for(|v| *v).await) });
    Ok(tokio::spawn(async move {
        srv.await.context("fault proxy API server failed")
    }))
}
