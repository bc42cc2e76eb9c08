//! `faultline experiment run|validate|cleanup`: chaos experiments as files, run against a
//! running faultline and its fault proxy (`faultline_chaos::experiment`).

use std::path::PathBuf;

use faultline_chaos::experiment;

use crate::ClientError;

/// `faultline experiment ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ExperimentCommand {
    /// Run an experiment: exit 0 when its hypothesis held, 1 when broken, 2 when aborted
    /// or invalid.
    Run(RunArgs),
    /// Check an experiment file without running it.
    Validate { file: PathBuf },
    /// Remove the faults of runs that were killed before they could.
    Cleanup {
        #[arg(long, default_value = ".faultline-experiments")]
        state_dir: PathBuf,
    },
}

/// Flags of `faultline experiment run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    file: PathBuf,
    /// faultline's HTTP API (steady-state checks, trace links).
    #[arg(long, env = "FAULTLINE_API", default_value = "http://127.0.0.1:16686")]
    api: String,
    /// The fault proxy's Toxiproxy API.
    #[arg(long, env = "FAULTLINE_PROXY", default_value = "http://127.0.0.1:8474")]
    proxy: String,
    /// Write the journal (JSON) here.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// The run log, so an interrupted run's faults are removed by the next.
    #[arg(long, default_value = ".faultline-experiments")]
    state_dir: PathBuf,
}

/// Runs the command; returns the exit code.
pub fn run(cmd: ExperimentCommand) -> Result<u8, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError(format!("cannot start the async runtime: {e}")))?;
    Ok(match cmd {
        ExperimentCommand::Run(a) => {
            let opts = experiment::run::RunOptions::new(&a.api, &a.proxy, a.state_dir);
            let (j, u, out) = (
                a.journal.as_deref(),
                a.junit.as_deref(),
                &mut std::io::stdout(),
            );
            let run = experiment::run_file(&a.file, &opts, j, u, out);
            rt.block_on(run).map_err(|e| ClientError(e.to_string()))?
        }
        ExperimentCommand::Validate { file } => {
            experiment::Experiment::load(&file).map_err(|e| ClientError(e.to_string()))?;
            println!("{}: valid", file.display());
            0
        }
        ExperimentCommand::Cleanup { state_dir } => {
            let removed = rt
                .block_on(experiment::run::cleanup(&state_dir))
                .map_err(|e| ClientError(e.to_string()))?;
            removed.iter().for_each(|line| println!("removed {line}"));
            0
        }
    })
}
