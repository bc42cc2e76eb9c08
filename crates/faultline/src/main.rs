//! The `faultline` binary: command line, configuration and wiring. The libraries do the
//! work; this crate connects them (`serve`), and hosts the operator tools (`wal verify`,
//! `wal dump`) and the load generator (`loadgen`).

mod bench;
mod config;
mod dlq;
mod loadgen;
mod pipeline;
mod query;
mod serve;
mod walcmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's allocator: a profile of the store pipeline at 200k spans/s
/// spent about 30% of its samples in glibc malloc and free (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(Box<ServeArgs>),
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
        command: query::QueryCommand,
    },
    /// Send realistic traces to a faultline (or any OTLP receiver) and report throughput.
    Loadgen(loadgen::LoadgenArgs),
    /// Micro-benchmarks that give the ceilings BENCHMARKS.md compares against.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
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
enum BenchCommand {
    /// Single-core protobuf decode (and validate, and re-encode) rate of loadgen's requests.
    Decode {
        /// Seconds per stage.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Spans per request.
        #[arg(long, default_value_t = 500)]
        spans_per_request: usize,
        /// Distinct requests.
        #[arg(long, default_value_t = 32)]
        templates: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Trace search latency of the store in DATA_DIR (stop the server first): service plus
    /// one tag plus minDuration over the last 24 hours of the data, in several shapes.
    Search {
        /// The data directory.
        data_dir: PathBuf,
        /// Queries per shape.
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
    /// RED latency of the store in DATA_DIR (stop the server first): one hour of one
    /// service, for every service, repeatedly.
    Red {
        /// The data directory.
        data_dir: PathBuf,
        /// Queries.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
    },
    /// Trace-by-id latency of the store in DATA_DIR (stop the server first): samples trace
    /// ids spread over every block and times each lookup.
    TraceById {
        /// The data directory.
        data_dir: PathBuf,
        /// Lookups.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
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

/// Flags of `faultline serve`; each also reads a `FAULTLINE_*` variable and overrides the
/// config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "FAULTLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./faultline-data].
    #[arg(long, env = "FAULTLINE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "FAULTLINE_OTLP_GRPC")]
    pub otlp_grpc: Option<SocketAddr>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318].
    #[arg(long, env = "FAULTLINE_OTLP_HTTP")]
    pub otlp_http: Option<SocketAddr>,
    /// Zipkin listen address [default: 127.0.0.1:9411].
    #[arg(long, env = "FAULTLINE_ZIPKIN")]
    pub zipkin: Option<SocketAddr>,
    /// HTTP API listen address [default: 127.0.0.1:16686].
    #[arg(long, env = "FAULTLINE_HTTP")]
    pub http: Option<SocketAddr>,
    /// WAL durability: fsync (default) or os.
    #[arg(long, env = "FAULTLINE_DURABILITY")]
    pub durability: Option<String>,
    /// WAL budget in bytes [default: 4 GiB].
    #[arg(long, env = "FAULTLINE_WAL_MAX_BYTES")]
    pub wal_max_bytes: Option<u64>,
    /// WAL segment size in bytes [default: 64 MiB].
    #[arg(long, env = "FAULTLINE_WAL_SEGMENT_BYTES")]
    pub wal_segment_bytes: Option<u64>,
    /// Largest request body in bytes [default: 16 MiB].
    #[arg(long, env = "FAULTLINE_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Refuse requests when the disk has less free space than this [default: 256 MiB].
    #[arg(long, env = "FAULTLINE_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// A service whose spans are never shed under pressure (repeat for several; replaces
    /// intake.critical_services).
    #[arg(
        long = "critical-service",
        env = "FAULTLINE_CRITICAL_SERVICES",
        value_delimiter = ','
    )]
    pub critical_services: Vec<String>,
    /// Seal the in-memory head into a block at this many spans [default: 250000].
    #[arg(long, env = "FAULTLINE_BLOCK_MAX_SPANS")]
    pub block_max_spans: Option<usize>,
    /// Seal the head when its oldest span is this many seconds old [default: 60].
    #[arg(long, env = "FAULTLINE_BLOCK_MAX_AGE_SECS")]
    pub block_max_age_secs: Option<u64>,
    /// Delete blocks whose spans all ended more than this many seconds ago [default: 7 days].
    #[arg(long, env = "FAULTLINE_RETENTION_SECS")]
    pub retention_secs: Option<u64>,
    /// Delete the oldest blocks while blocks take more than this many bytes [default: no limit].
    #[arg(long, env = "FAULTLINE_STORE_MAX_BYTES")]
    pub store_max_bytes: Option<u64>,
    /// Replay a WAL backlog (after a restart or a stall) at most this many spans per
    /// second, after live data [default: 100000].
    #[arg(long, env = "FAULTLINE_BACKLOG_RATE")]
    pub backlog_rate: Option<u64>,
    /// Index at most this many spans per second, backlog included [default: no limit].
    #[arg(long, env = "FAULTLINE_INDEX_RATE")]
    pub index_rate: Option<u64>,
    /// Resident memory to stay under: shed bulk traffic from half of it, normal from 80%
    /// [default: not watched].
    #[arg(long, env = "FAULTLINE_MAX_MEMORY_BYTES")]
    pub max_memory_bytes: Option<u64>,
}

fn main() -> ExitCode {
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
            } => walcmd::dump(&dir, spans, json, from, limit),
        },
        Command::Loadgen(args) => loadgen::run(args),
        Command::Query { command } => query::run(command),
        Command::Dlq { command } => match command {
            DlqCommand::List { data_dir, json } => dlq::list(&data_dir, json),
            DlqCommand::Replay { all, seqs, api } => dlq::replay(&api, all, &seqs),
            DlqCommand::Drop {
                data_dir,
                all,
                seqs,
            } => dlq::drop(&data_dir, all, &seqs),
        },
        Command::Bench { command } => match command {
            BenchCommand::Decode {
                seconds,
                spans_per_request,
                templates,
                json,
            } => loadgen::bench_decode(seconds, spans_per_request, templates, json),
            BenchCommand::TraceById { data_dir, samples } => bench::trace_by_id(&data_dir, samples),
            BenchCommand::Red { data_dir, samples } => bench::red(&data_dir, samples),
            BenchCommand::Search { data_dir, samples } => bench::search(&data_dir, samples),
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
