//! The fault proxy's wiring: `faultline proxy` (the proxy alone, Toxiproxy's API on
//! 127.0.0.1:8474) and the same API inside `serve` when `listen.fault_proxy` is set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use faultline_chaos::Proxies;

/// Flags of `faultline proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Where Toxiproxy's HTTP API listens.
    #[arg(long, env = "FAULTLINE_PROXY_API", default_value = faultline_chaos::DEFAULT_API)]
    pub api: SocketAddr,
    /// Durable state (proxies.json; back after a restart without faults) [default: memory].
    #[arg(long, env = "FAULTLINE_PROXY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Send HTTP proxies' request spans here (OTLP/HTTP, e.g. faultline's
    /// http://127.0.0.1:4318) [default: not recorded].
    #[arg(long, env = "FAULTLINE_PROXY_OTLP")]
    pub otlp_endpoint: Option<String>,
    /// A JSON array of proxies created at start, as `POST /populate` would (Toxiproxy's
    /// `-config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs `faultline proxy` until SIGINT or SIGTERM.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    crate::serve::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("faultline-proxy")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let proxies = open(args.state_dir.as_deref()).await?;
        if let Some(path) = &args.config {
            proxies
                .populate_file(path)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        if let Some(url) = &args.otlp_endpoint {
            proxies.set_span_sink(faultline_chaos::http::OtlpExport::start(url));
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = faultline_chaos::api::serve(args.api, proxies, stop_rx).await;
        let task = task.map_err(anyhow::Error::msg)?;
        crate::serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
        task.await
            .context("fault proxy API task panicked")?
            .map_err(anyhow::Error::msg)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the proxies, durable when `dir` is given (what the start removed is logged).
pub async fn open(dir: Option<&Path>) -> anyhow::Result<Proxies> {
    Ok(match dir {
        Some(dir) => Proxies::open(dir).await?.0,
        None => Proxies::in_memory(),
    })
}
