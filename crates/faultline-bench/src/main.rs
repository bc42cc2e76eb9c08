//! `faultline-bench`: the load generator and the benchmarks behind BENCHMARKS.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use faultline_bench::{http, loadgen, store};

/// mimalloc, as the server uses, so decode figures compare with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// faultline's load generator and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "faultline-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send realistic traces to a faultline (or any OTLP receiver) and report throughput.
    Loadgen(loadgen::LoadgenArgs),
    /// Single-core protobuf decode (and validate, and re-encode) rate of loadgen's requests:
    /// the ceiling intake is compared against.
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
        /// Traffic profile, as loadgen's.
        #[arg(long, default_value = "templated")]
        profile: loadgen::Profile,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The ClickHouse backend on loadgen's traffic, against a running ClickHouse server:
    /// inserts per second, bytes per span after merges, trace by id
    /// (`scripts/bench-clickhouse` starts a server and runs it).
    Clickhouse(faultline_bench::clickhouse::ClickHouseArgs),
    /// The fault proxy's added round-trip latency and one connection's throughput with no
    /// toxic, against direct loopback connections (a running `faultline proxy`).
    Proxy(faultline_bench::proxy::ProxyArgs),
    /// A process of the proxy benchmark (servers, or the floor relay).
    #[command(hide = true)]
    ProxyHelper {
        #[command(subcommand)]
        helper: faultline_bench::proxy::Helper,
    },
    /// Query latency over HTTP with concurrent clients, against a running faultline: trace
    /// by id (ids from loadgen ack logs) or Jaeger search with whole traces.
    Query(http::QueryArgs),
    /// Rewrites every block of SRC's store with this build's block writer into DST (a new
    /// directory), to compare block layouts on the same spans.
    Reseal {
        /// The data directory to read.
        src: PathBuf,
        /// The data directory to write (must not exist).
        dst: PathBuf,
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
    /// The cost of clock-skew correction per trace read, on synthetic traces that all
    /// cross skewed clocks.
    Skew,
    /// How long trace lookups wait while seals publish their blocks, as the store's trace
    /// map grows to millions of traces.
    PublishPause {
        /// One-span traces to ingest.
        #[arg(long, default_value_t = 4_500_000)]
        traces: u64,
        /// Spans per block (one per trace without --split).
        #[arg(long, default_value_t = 14_000)]
        block_spans: usize,
        /// Give every trace a second span about one block later (traces in two blocks).
        #[arg(long)]
        split: bool,
    },
    /// What tail sampling costs and saves: synthetic traces sealed, then every block
    /// decided by the default policy.
    Tail,
    /// One consistency rule fed KEYS pending keys: resident memory against its bound.
    ChecksMemory {
        /// Pending keys to create.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// The rules' memory bound (`[checks] memory_mb`).
        #[arg(long, default_value_t = 64)]
        memory_mb: usize,
        /// Spans per observed record.
        #[arg(long, default_value_t = 500)]
        batch: usize,
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

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Loadgen(args) => loadgen::run(&args).map(|summary| {
            loadgen::print(&args, &summary);
            ExitCode::SUCCESS
        }),
        Command::Decode {
            seconds,
            spans_per_request,
            templates,
            profile,
            json,
        } => loadgen::bench_decode(seconds, spans_per_request, (templates, profile), json),
        Command::Query(args) => http::run(&args).map(|v| {
            http::print(&args, &v);
            ExitCode::SUCCESS
        }),
        Command::Reseal { src, dst } => store::reseal(&src, &dst),
        Command::TraceById { data_dir, samples } => store::trace_by_id(&data_dir, samples),
        Command::Red { data_dir, samples } => store::red(&data_dir, samples),
        Command::Search { data_dir, samples } => store::search(&data_dir, samples),
        Command::Skew => faultline_bench::skew::run(),
        Command::Clickhouse(args) => faultline_bench::clickhouse::run(&args),
        Command::Proxy(args) => faultline_bench::proxy::run(&args).map(|v| {
            println!("{v:#}");
            ExitCode::SUCCESS
        }),
        Command::ProxyHelper { helper } => {
            faultline_bench::proxy::helper(&helper).map(|()| ExitCode::SUCCESS)
        }
        Command::Tail => faultline_bench::tail::run(),
        Command::PublishPause {
            traces,
            block_spans,
            split,
        } => faultline_bench::publish::run(traces, block_spans, split),
        Command::ChecksMemory {
            keys,
            memory_mb,
            batch,
        } => faultline_bench::checks::memory(keys, memory_mb, batch).map(|v| {
            println!("{v:#}");
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("faultline-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
