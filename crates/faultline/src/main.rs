//! The `faultline` binary: command line, configuration and wiring. The libraries do the
//! work; this crate connects them (`serve`, `proxy`, `experiment`) and hosts the operator
//! tools (`wal`, `dlq`, `query`, `report`, `token`); benchmarks are the `faultline-bench` binary.

mod alloc;
mod config;
mod dlq;
mod proxycmd;
mod serve;
mod walcmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// faultline: a trace backend that never loses what it acknowledged.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the receivers and the HTTP API with the embedded store.
    Serve(Box<config::ServeArgs>),
    /// Operator tools for the write-ahead log.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Dead letters: WAL records the pipeline could not process.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Query a running faultline from the terminal.
    Query {
        #[command(subcommand)]
        command: faultline_client::query::QueryCommand,
    },
    /// The fault proxy alone, driven through Toxiproxy's HTTP API.
    Proxy(proxycmd::ProxyArgs),
    /// Chaos experiments as files, checked against the trace data.
    Experiment {
        #[command(subcommand)]
        command: faultline_client::experiment::ExperimentCommand,
    },
    /// Check trace assertions over a trace or a search, for CI (exit 0, 1 or 2).
    Assert(Box<faultline_client::assert::AssertArgs>),
    /// Eventual-consistency rules: try one over stored spans, list those in force.
    Rules {
        #[command(subcommand)]
        command: faultline_client::rules::RulesCommand,
    },
    /// Reports about the stored traces from a running faultline.
    Report {
        #[command(subcommand)]
        command: faultline_client::query::ReportCommand,
    },
    /// Bearer tokens: make a token and its line for the token file.
    Token {
        #[command(subcommand)]
        command: faultline_auth::cli::TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Lists the dead letters of DATA_DIR (sequence number, attempts, reason).
    List {
        /// The data directory.
        data_dir: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Asks the running faultline to append dead letters to its WAL again (after a fix);
    /// one that fails again comes back.
    Replay {
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Sequence numbers to replay.
        seqs: Vec<u64>,
        /// faultline's HTTP API.
        #[arg(long, default_value = "http://127.0.0.1:16686")]
        api: String,
    },
    /// Deletes dead letters for good.
    Drop {
        /// The data directory.
        data_dir: PathBuf,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Sequence numbers to drop.
        seqs: Vec<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Check every segment and record; exit 1 if anything is corrupt.
    Verify {
        /// The WAL directory (DATA_DIR/wal) or the data directory.
        dir: PathBuf,
    },
    /// Print a line per record: sequence, time, protocol, spans, services.
    Dump {
        /// The WAL directory (DATA_DIR/wal) or the data directory.
        dir: PathBuf,
        /// Also print every span (name, ids, attributes).
        #[arg(long)]
        spans: bool,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// Start at this sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print at most this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
}

fn client(r: Result<u8, faultline_client::ClientError>) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::from(r?))
}

fn main() -> ExitCode {
    alloc::configure();
    // Every reqwest client made without a TLS configuration takes the default provider.
    faultline_tls::client::install_default_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Wal { command } => match command {
            WalCommand::Verify { dir } => walcmd::verify(&dir),
            WalCommand::Dump {
                dir,
                spans,
                json,
                from,
                limit,
            } => walcmd::dump(
                &dir,
                faultline_pipeline::inspect::DumpOptions {
                    spans,
                    json,
                    from,
                    limit,
                },
            ),
        },
        Command::Query { command } => client(faultline_client::query::run(command)),
        Command::Assert(args) => client(faultline_client::assert::run(*args)),
        Command::Rules { command } => client(faultline_client::rules::run(command)),
        Command::Proxy(args) => proxycmd::run(args),
        Command::Experiment { command } => client(faultline_client::experiment::run(command)),
        Command::Report { command } => client(faultline_client::query::report(command)),
        Command::Token { command } => {
            let (mut input, mut out) = (std::io::stdin().lock(), std::io::stdout());
            let code = faultline_auth::cli::run(command, &mut input, &mut out);
            code.map(ExitCode::from).map_err(anyhow::Error::from)
        }
        Command::Dlq { command } => match command {
            DlqCommand::List { data_dir, json } => dlq::list(&data_dir, json),
            DlqCommand::Replay { all, seqs, api } => {
                client(faultline_client::dlq::replay(&api, all, &seqs))
            }
            DlqCommand::Drop {
                data_dir,
                all,
                seqs,
            } => dlq::drop(&data_dir, all, &seqs),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("faultline: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
