//! Experiments `serve` runs on a schedule (`[[experiments]]` in the configuration: `file`,
//! `every`, optional `proxy`), against its own API and fault proxy, one at a time (two
//! experiments injecting at once would confound each other's hypotheses). The first run
//! of each comes one interval after the start, never at boot. Each run is recorded in the
//! [`History`]. With tokens on, `serve` gives the runs a token of their own (`read` and
//! `chaos`, made at start and never written anywhere).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::history::History;
use super::run::RunOptions;
use super::{Experiment, parse_duration};

/// A scheduled experiment, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduled {
    /// The experiment file.
    pub file: PathBuf,
    /// How often, a duration such as `"1h"` (at least `10s`).
    pub every: String,
    /// The fault proxy's API [default: serve's own `--fault-proxy`].
    #[serde(default)]
    pub proxy: Option<String>,
}

/// Checks every scheduled experiment (its file, its interval, a proxy to use); the error
/// names the entry.
pub fn check(list: &[Scheduled], own_proxy: Option<&str>) -> Result<(), String> {
    for (i, s) in list.iter().enumerate() {
        let at = format!("experiments[{i}] ({})", s.file.display());
        if parse_duration(&s.every).is_none_or(|d| d < Duration::from_secs(10)) {
            return Err(format!(
                "{at}: every = {:?} must be a duration of at least \"10s\"",
                s.every
            ));
        }
        if s.proxy.is_none() && own_proxy.is_none() {
            return Err(format!(
                "{at}: no fault proxy: set proxy, or run serve with --fault-proxy"
            ));
        }
        Experiment::load(&s.file).map_err(|e| format!("{at}: {e}"))?;
    }
    Ok(())
}

/// Starts one task per scheduled experiment.
pub fn start(
    list: Vec<Scheduled>,
    api: String,
    own_proxy: Option<String>,
    state_dir: PathBuf,
    history: Arc<History>,
    token: Option<String>,
    tls: Option<faultline_tls::client::ClientConfig>,
) {
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    for s in list {
        let every = parse_duration(&s.every).unwrap_or(Duration::from_secs(3600));
        let proxy = s.proxy.clone().or(own_proxy.clone()).unwrap_or_default();
        let mut opts = RunOptions::new(&api, &proxy, state_dir.clone());
        opts.token = token.clone().or(opts.token);
        opts.tls = tls.clone();
        let (history, lock) = (history.clone(), one_at_a_time.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _turn = lock.lock().await;
                let e = match Experiment::load(&s.file) {
                    Ok(e) => e,
                    Err(err) => {
                        tracing::error!(error = %err, "scheduled experiment not run");
                        continue;
                    }
                };
                let result = super::run::run(&e, &opts, |line| {
                    tracing::debug!(experiment = %e.title, "{line}");
                })
                .await;
                let r = match result {
                    Ok(r) => r,
                    Err(err) => {
                        tracing::error!(experiment = %e.title, error = %err, "scheduled experiment failed to run");
                        continue;
                    }
                };
                tracing::info!(experiment = %e.title, exit = r.outcome.exit_code(), "scheduled experiment ran");
                let journal = super::report::journal(&e, &r);
                let h = history.clone();
                if let Ok(Err(err)) = tokio::task::spawn_blocking(move || h.record(journal)).await {
                    tracing::error!(error = %err, "cannot keep the experiment's run");
                }
            }
        });
    }
}
