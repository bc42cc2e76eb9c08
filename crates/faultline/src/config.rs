//! Configuration of `faultline serve`, in one place: the TOML file (`--config`), the
//! `FAULTLINE_*` environment variables and the flags, merged here into [`Settings`] with
//! precedence flag, then environment, then file, then default. Every value is checked
//! here, with a message that names the key.
//!
//! Every key, with its default, its flag and its variable:
//!
//! ```toml
//! data_dir = "./faultline-data"          # --data-dir, FAULTLINE_DATA_DIR
//! storage  = "embedded"                  # --storage; "clickhouse": spans, rollups and
//!                                        #   queries in ClickHouse, the `[clickhouse]`
//!                                        #   keys in faultline_clickhouse::settings
//!
//! [listen]                               # loopback by default; use 0.0.0.0 to open up
//! otlp_grpc = "127.0.0.1:4317"           # --otlp-grpc, FAULTLINE_OTLP_GRPC
//! otlp_http = "127.0.0.1:4318"           # --otlp-http, FAULTLINE_OTLP_HTTP
//! zipkin    = "127.0.0.1:9411"           # --zipkin, FAULTLINE_ZIPKIN
//! http      = "127.0.0.1:16686"          # --http, FAULTLINE_HTTP (API, UI, /ready, /metrics)
//! sampling  = "127.0.0.1:5778"           # --sampling, FAULTLINE_SAMPLING (Jaeger remote
//!                                        #   sampling: GET /sampling?service=NAME)
//! fault_proxy = (none)                   # --fault-proxy, FAULTLINE_FAULT_PROXY: the fault
//!                                        #   proxy's Toxiproxy API (e.g. 127.0.0.1:8474);
//!                                        #   state in DATA_DIR/proxies.json
//!
//! [auth]                                 # bearer tokens (faultline_auth); without any,
//! token_file = (none)                    #   every route is open, on loopback only
//!                                        #   (--token-file, FAULTLINE_TOKEN_FILE;
//!                                        #   FAULTLINE_TOKENS adds token lines)
//! allow_unauthenticated = false          # true: serve open on other addresses too
//!
//! [tls]                                  # TLS on every listener (faultline_tls); off
//! cert = (none)                          #   without cert and key: --tls-cert,
//! key  = (none)                          #   --tls-key (FAULTLINE_TLS_CERT, _KEY), PEM;
//!                                        #   read again within 2 s of each change
//! client_ca = (none)                     # --tls-client-ca: intake listeners ask clients
//! client_cert = "required"               #   for a certificate from these CAs; or
//!                                        #   "optional" (checked when offered)
//!
//! [sampling]
//! policy_file = (none)                   # --sampling-policy, FAULTLINE_SAMPLING_POLICY;
//!                                        #   TOML, or Jaeger's strategies JSON (*.json);
//!                                        #   read again within a second of each change;
//!                                        #   none: every SDK is told to keep every trace
//!
//! [wal]
//! durability    = "fsync"                # --durability; or "os": acknowledge after write(),
//!                                        #   loses data on power failure
//! max_bytes     = 4294967296             # --wal-max-bytes; refuse (retryably) beyond this
//! segment_bytes = 67108864               # --wal-segment-bytes (at least 4096)
//!
//! [intake]
//! max_request_bytes         = 16777216   # --max-request-bytes; before and after gunzip
//! max_inflight_bytes        = 536870912  # request bytes processed at once (else 429)
//! min_free_disk_bytes       = 268435456  # --min-free-disk-bytes; refuse (retryably) below
//! max_attribute_value_bytes = 262144     # larger attribute values reject their span
//! max_attributes_per_span   = 1024
//! retry_after_secs          = 1
//! critical_services         = []         # --critical-service (repeatable); never shed
//! max_memory_bytes          = (none)     # --max-memory-bytes; shed bulk at 50%, normal at
//!                                        #   80% (also caps max_inflight_bytes at a quarter)
//!
//! [store]
//! block_max_spans    = 250000            # --block-max-spans; seal the head at this many
//! block_max_age_secs = 60                # --block-max-age-secs; ... or when this old
//! retention_secs     = 604800            # --retention-secs (at least 60); 7 days
//! max_bytes          = (none)            # --store-max-bytes; delete the oldest beyond it
//! max_index_bytes    = (none)            # --max-index-bytes; search indexes kept in memory,
//!                                        #   the least recently used read back from disk
//! backlog_spans_per_second   = 100000    # --backlog-rate; backlog replay cap while live
//!                                        #   data flows (none waiting: full speed)
//! max_index_spans_per_second = (none)    # --index-rate; cap on indexing, backlog included
//! indexing_nice              = 10        # --indexing-nice; 0-19, reads get the cores first
//!
//! [tail_sampling]                        # decide stored traces once complete (after the
//! enabled = false                        #   WAL and the rollups; faultline_store::tail)
//! wait_secs = 30                         # after its block is sealed (1 to 3600)
//! keep_errors = true                     # every trace with an error span
//! keep_slower_than_p99 = true            # every trace slower than its root op's p99
//! rest_traces_per_second = 10.0          # of the rest, per root service
//!
//! [[probes]]                             # synthetic probes (repeatable): the fields of
//!                                        #   faultline_probe::def
//! [probe_policy]                         # whom probes may call: allow, deny, exempt,
//!                                        #   max_body_bytes (faultline_probe::policy)
//! [[alerts]]                             # alert rules (repeatable): faultline_alerts::rule
//! [notify]                               # receivers of probe and alert notifications:
//!                                        #   faultline_notify::config
//! [[experiments]]                        # chaos experiments on a schedule (repeatable):
//!                                        #   file, every ("1h"), proxy; runs at /experiments
//! ```
//!
//! Unknown keys are errors, so a typo is reported, not ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use faultline_clickhouse::settings::storage as ch_storage;
use serde::Deserialize;

use faultline_intake::IntakeConfig;
use faultline_model::validate::Limits;
use faultline_pipeline::PipelineOptions;
use faultline_store::StoreOptions;
use faultline_wal::{Durability, WalOptions};

/// Flags of `faultline serve`; each also reads a `FAULTLINE_*` variable and overrides the
/// config file.
#[derive(Debug, Default, clap::Args)]
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
    /// Jaeger remote sampling listen address [default: 127.0.0.1:5778].
    #[arg(long, env = "FAULTLINE_SAMPLING")]
    pub sampling: Option<SocketAddr>,
    /// Run the fault proxy with Toxiproxy's API on this address [default: off].
    #[arg(long, env = "FAULTLINE_FAULT_PROXY")]
    pub fault_proxy: Option<SocketAddr>,
    /// Sampling policy file served to every SDK (TOML, or Jaeger's strategies JSON when
    /// it ends in .json), reloaded when it changes [default: keep every trace].
    #[arg(long, env = "FAULTLINE_SAMPLING_POLICY")]
    pub sampling_policy: Option<PathBuf>,
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
    /// Keep at most this many bytes of search indexes in memory [default: no limit].
    #[arg(long, env = "FAULTLINE_MAX_INDEX_BYTES")]
    pub max_index_bytes: Option<u64>,
    /// Replay a WAL backlog (after a restart or a stall) at most this many spans per
    /// second while live data flows; with none waiting it replays at full speed
    /// [default: 100000].
    #[arg(long, env = "FAULTLINE_BACKLOG_RATE")]
    pub backlog_rate: Option<u64>,
    /// Index at most this many spans per second, backlog included [default: no limit].
    #[arg(long, env = "FAULTLINE_INDEX_RATE")]
    pub index_rate: Option<u64>,
    /// Run indexing this much nicer than the rest (0 to 19): reads first [default: 10].
    #[arg(long, env = "FAULTLINE_INDEXING_NICE")]
    pub indexing_nice: Option<i32>,
    /// Resident memory to stay under: shed bulk traffic from half of it, normal from 80%
    /// [default: not watched].
    #[arg(long, env = "FAULTLINE_MAX_MEMORY_BYTES")]
    pub max_memory_bytes: Option<u64>,
    /// Bearer tokens with scopes, read again when the file changes [default: none].
    #[arg(long, env = "FAULTLINE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: faultline_tls::TlsArgs,
    #[command(flatten)]
    pub storage: faultline_clickhouse::settings::StorageArgs,
}

/// The file format.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    storage: Option<String>,
    #[serde(default)]
    clickhouse: faultline_clickhouse::settings::ClickHouseFile,
    #[serde(default)]
    listen: ListenFile,
    #[serde(default)]
    wal: WalFile,
    #[serde(default)]
    intake: IntakeFile,
    #[serde(default)]
    store: StoreFile,
    #[serde(default)]
    sampling: SamplingFile,
    #[serde(default)]
    auth: faultline_auth::AuthConfig,
    #[serde(default)]
    tls: faultline_tls::TlsConfig,
    tail_sampling: Option<faultline_store::tail::TailPolicy>,
    #[serde(default)]
    probes: Vec<faultline_probe::ProbeDef>,
    #[serde(default)]
    probe_policy: faultline_probe::PolicyConfig,
    #[serde(default)]
    alerts: Vec<faultline_alerts::RuleDef>,
    #[serde(default)]
    notify: faultline_notify::NotifyConfig,
    #[serde(default)]
    experiments: Vec<faultline_chaos::experiment::schedule::Scheduled>,
    #[serde(default)]
    consistency: Vec<faultline_checks::RuleDef>,
    #[serde(default)]
    assertions: Vec<faultline_checks::config::AssertionDef>,
    #[serde(default)]
    checks: faultline_checks::config::ChecksFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplingFile {
    policy_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFile {
    otlp_grpc: Option<SocketAddr>,
    otlp_http: Option<SocketAddr>,
    zipkin: Option<SocketAddr>,
    http: Option<SocketAddr>,
    sampling: Option<SocketAddr>,
    fault_proxy: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalFile {
    durability: Option<String>,
    max_bytes: Option<u64>,
    segment_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntakeFile {
    max_request_bytes: Option<usize>,
    max_inflight_bytes: Option<usize>,
    min_free_disk_bytes: Option<u64>,
    max_attribute_value_bytes: Option<usize>,
    max_attributes_per_span: Option<usize>,
    retry_after_secs: Option<u32>,
    critical_services: Option<Vec<String>>,
    max_memory_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    block_max_spans: Option<usize>,
    block_max_age_secs: Option<u64>,
    retention_secs: Option<u64>,
    max_bytes: Option<u64>,
    max_index_bytes: Option<u64>,
    backlog_spans_per_second: Option<u64>,
    max_index_spans_per_second: Option<u64>,
    indexing_nice: Option<i32>,
}

impl FileConfig {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid", path.display()))
    }
}

/// The listen addresses.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// Zipkin v2.
    pub zipkin: SocketAddr,
    /// The API, the UI, `/ready`, `/metrics`.
    pub http: SocketAddr,
    /// Jaeger remote sampling.
    pub sampling: SocketAddr,
    /// The fault proxy's API, when it runs inside `serve`.
    pub fault_proxy: Option<SocketAddr>,
}

/// Everything `faultline serve` runs with, merged and checked.
#[derive(Debug)]
pub struct Settings {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where each listener binds.
    pub listen: Listen,
    /// The WAL.
    pub wal: WalOptions,
    /// Admission.
    pub intake: IntakeConfig,
    /// The store.
    pub store: StoreOptions,
    /// The pipeline (the backlog-first threshold is set from intake's shedding threshold).
    pub pipeline: PipelineOptions,
    /// The sampling policy file, if one is configured.
    pub sampling_policy: Option<PathBuf>,
    /// Tokens (`[auth]`, the token file from the flag first).
    pub auth: faultline_auth::AuthConfig,
    /// TLS (`[tls]`, each file from its flag first).
    pub tls: faultline_tls::TlsConfig,
    /// The configuration file's probes, checked against the probe policy, and the policy.
    pub probes: faultline_probe::Setup,
    /// The configuration file's alert rules, checked.
    pub alerts: Vec<faultline_alerts::RuleDef>,
    /// Where notifications go, checked.
    pub notify: faultline_notify::NotifyConfig,
    /// Experiments run on a schedule, checked.
    pub experiments: Vec<faultline_chaos::experiment::schedule::Scheduled>,
    /// Consistency rules and continuous assertions, checked.
    pub checks: faultline_checks::config::ChecksConfig,
    /// ClickHouse, with `storage = "clickhouse"`.
    pub clickhouse: Option<faultline_clickhouse::settings::ClickHouseSettings>,
}

impl Settings {
    /// Merges the file named by `--config` (if any), the environment (already in `args`
    /// through clap) and the flags.
    pub fn load(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./faultline-data"));
        let listen = listen(&args, &file.listen)?;
        let own_proxy = listen.fault_proxy.map(|a| a.to_string());
        faultline_chaos::experiment::schedule::check(&file.experiments, own_proxy.as_deref())
            .map_err(|e| anyhow!("{e}"))?;
        let base = args.config.as_deref().and_then(Path::parent);
        let checks = faultline_checks::config::build(
            file.consistency.clone(),
            file.assertions.clone(),
            &file.checks,
            base.unwrap_or(Path::new(".")),
        )
        .map_err(|e| anyhow!("{e}"))?;
        let mut store = store(&args, &file, &data_dir)?;
        let (st, ch) = (file.storage.as_deref(), &file.clickhouse);
        let clickhouse = ch_storage(&args.storage, st, ch, &data_dir, &mut store.retention)?;
        Ok(Self {
            checks,
            clickhouse,
            store,
            listen,
            experiments: file.experiments.clone(),
            wal: wal(&args, file.wal)?,
            intake: intake(&args, file.intake)?,
            pipeline: pipeline(&args, &file.store, &data_dir)?,
            sampling_policy: args.sampling_policy.clone().or(file.sampling.policy_file),
            auth: faultline_auth::AuthConfig {
                token_file: args.token_file.clone().or(file.auth.token_file.clone()),
                ..file.auth.clone()
            },
            tls: file.tls.with_flags(&args.tls),
            probes: faultline_probe::Setup::new(file.probes, &file.probe_policy)?,
            alerts: faultline_alerts::rule::checked(file.alerts)
                .map_err(|e| anyhow!("alerts: {e}"))?,
            notify: file.notify.validate().map(|()| file.notify)?,
            data_dir,
        })
    }
}

fn listen(args: &ServeArgs, f: &ListenFile) -> anyhow::Result<Listen> {
    let addr = |flag: Option<SocketAddr>, file: Option<SocketAddr>, default: &str| {
        flag.or(file)
            .map(Ok)
            .unwrap_or_else(|| default.parse::<SocketAddr>())
    };
    Ok(Listen {
        otlp_grpc: addr(args.otlp_grpc, f.otlp_grpc, "127.0.0.1:4317")?,
        otlp_http: addr(args.otlp_http, f.otlp_http, "127.0.0.1:4318")?,
        zipkin: addr(args.zipkin, f.zipkin, "127.0.0.1:9411")?,
        http: addr(args.http, f.http, "127.0.0.1:16686")?,
        sampling: addr(args.sampling, f.sampling, "127.0.0.1:5778")?,
        fault_proxy: args.fault_proxy.or(f.fault_proxy),
    })
}

fn wal(args: &ServeArgs, f: WalFile) -> anyhow::Result<WalOptions> {
    let durability: Durability = args
        .durability
        .clone()
        .or(f.durability)
        .map(|d| d.parse::<Durability>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("wal.durability: {e}"))?
        .unwrap_or_default();
    let d = WalOptions::default();
    let opts = WalOptions {
        durability,
        max_bytes: args.wal_max_bytes.or(f.max_bytes).unwrap_or(d.max_bytes),
        segment_bytes: args
            .wal_segment_bytes
            .or(f.segment_bytes)
            .unwrap_or(d.segment_bytes),
        ..d
    };
    anyhow::ensure!(
        opts.segment_bytes >= 4096,
        "wal.segment_bytes must be at least 4096"
    );
    Ok(opts)
}

fn intake(args: &ServeArgs, f: IntakeFile) -> anyhow::Result<IntakeConfig> {
    let d = IntakeConfig::default();
    let dl = Limits::default();
    let max_memory = args.max_memory_bytes.or(f.max_memory_bytes);
    if let Some(m) = max_memory {
        anyhow::ensure!(
            m >= 16 << 20,
            "intake.max_memory_bytes ({m}) must be at least 16 MiB (it is in bytes)"
        );
    }
    Ok(IntakeConfig {
        max_request_bytes: args
            .max_request_bytes
            .or(f.max_request_bytes)
            .unwrap_or(d.max_request_bytes),
        max_inflight_bytes: f.max_inflight_bytes.unwrap_or(match max_memory {
            // Request bodies in flight must not take the memory bound by themselves.
            Some(m) => d
                .max_inflight_bytes
                .min(usize::try_from(m / 4).unwrap_or(usize::MAX)),
            None => d.max_inflight_bytes,
        }),
        max_memory_bytes: max_memory,
        min_free_disk_bytes: args
            .min_free_disk_bytes
            .or(f.min_free_disk_bytes)
            .unwrap_or(d.min_free_disk_bytes),
        retry_after_secs: f.retry_after_secs.unwrap_or(d.retry_after_secs),
        critical_services: if args.critical_services.is_empty() {
            f.critical_services.unwrap_or_default()
        } else {
            args.critical_services.clone()
        },
        limits: Limits {
            max_attribute_value_bytes: f
                .max_attribute_value_bytes
                .unwrap_or(dl.max_attribute_value_bytes),
            max_attributes_per_span: f
                .max_attributes_per_span
                .unwrap_or(dl.max_attributes_per_span),
            ..dl
        },
    })
}

fn store(args: &ServeArgs, file: &FileConfig, data_dir: &Path) -> anyhow::Result<StoreOptions> {
    let (f, mut opts) = (&file.store, StoreOptions::new(data_dir));
    if let Some(t) = file.tail_sampling.as_ref() {
        t.check().map_err(anyhow::Error::msg)?;
        opts.tail = t.enabled.then(|| t.clone());
    }
    if let Some(n) = args.block_max_spans.or(f.block_max_spans) {
        anyhow::ensure!(n > 0, "store.block_max_spans must be at least 1");
        opts.block_max_spans = n;
    }
    if let Some(secs) = args.block_max_age_secs.or(f.block_max_age_secs) {
        opts.block_max_age = Duration::from_secs(secs);
    }
    if let Some(secs) = args.retention_secs.or(f.retention_secs) {
        anyhow::ensure!(secs >= 60, "store.retention_secs must be at least 60");
        opts.retention = Duration::from_secs(secs);
    }
    if let Some(bytes) = args.store_max_bytes.or(f.max_bytes) {
        opts.max_bytes = bytes;
    }
    opts.max_index_bytes = args
        .max_index_bytes
        .or(f.max_index_bytes)
        .unwrap_or(u64::MAX);
    Ok(opts)
}

fn pipeline(args: &ServeArgs, f: &StoreFile, data_dir: &Path) -> anyhow::Result<PipelineOptions> {
    let mut opts = PipelineOptions::new(data_dir);
    let (b, i, n) = (args.backlog_rate, args.index_rate, args.indexing_nice);
    opts.backlog_rate = b
        .or(f.backlog_spans_per_second)
        .unwrap_or(opts.backlog_rate);
    opts.index_rate = i
        .or(f.max_index_spans_per_second)
        .unwrap_or(opts.index_rate);
    opts.indexing_nice = n.or(f.indexing_nice).unwrap_or(opts.indexing_nice);
    // The backlog (which pins the WAL) replays first from here, before intake sheds bulk.
    opts.backlog_first_at = faultline_intake::admission::SHED_BULK_AT * 0.8;
    opts.check()?;
    Ok(opts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let f = write(
            "data_dir = \"/from-file\"\n[wal]\nmax_bytes = 1000000\n[store]\nbacklog_spans_per_second = 5\nindexing_nice = 3\nblock_max_spans = 9\n",
        );
        let s = Settings::load(ServeArgs {
            config: Some(f.path().to_path_buf()),
            wal_max_bytes: Some(2_000_000),
            block_max_spans: Some(7),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from-file"));
        assert_eq!(s.wal.max_bytes, 2_000_000);
        assert_eq!(s.store.block_max_spans, 7);
        assert_eq!(s.store.dir, PathBuf::from("/from-file/blocks"));
        assert_eq!(s.pipeline.backlog_rate, 5);
        assert_eq!(s.pipeline.indexing_nice, 3);
        assert_eq!(s.pipeline.dlq_dir, PathBuf::from("/from-file/dlq"));
        assert_eq!(s.listen.http.to_string(), "127.0.0.1:16686");
        assert_eq!(s.intake.max_inflight_bytes, 512 << 20);
    }

    #[test]
    fn the_probe_policy_is_read_and_probes_it_refuses_stop_the_start() {
        let probe =
            "[[probes]]\nname = \"inner\"\n[probes.http]\nurl = \"http://10.1.2.3/health\"\n";
        let load = |text: String| {
            let f = write(&text);
            Settings::load(ServeArgs {
                config: Some(f.path().to_path_buf()),
                ..ServeArgs::default()
            })
        };
        let s = load(format!(
            "{probe}[probe_policy]\nallow = [\"10.0.0.0/8\"]\nmax_body_bytes = 4096\n"
        ))
        .unwrap();
        assert_eq!(s.probes.defs.len(), 1);
        assert_eq!(s.probes.policy.max_body_bytes(), 4096);
        let e = load(format!("{probe}[probe_policy]\ndeny = [\"10.1.0.0/16\"]\n")).unwrap_err();
        assert!(
            e.to_string().starts_with("probes: probe \"inner\": http.url: 10.1.2.3 is refused ([probe_policy] deny entry \"10.1.0.0/16\")"),
            "{e}"
        );
        let e = load("[probe_policy]\nallow = [\"10.0.0.0/40\"]\n".into()).unwrap_err();
        assert!(e.to_string().starts_with("probe_policy.allow: "), "{e}");
        let e = load("[probe_policy]\nalow = []\n".into()).unwrap_err();
        assert!(format!("{e:#}").contains("alow"), "{e:#}");
    }

    #[test]
    fn on_clickhouse_the_node_keeps_a_short_window_and_clickhouse_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(&format!(
            "data_dir = \"{}\"\nstorage = \"clickhouse\"\n[store]\nretention_secs = 86400\n[clickhouse]\nlocal_window_secs = 600\n",
            dir.path().display()
        ));
        let s = Settings::load(ServeArgs {
            config: Some(f.path().to_path_buf()),
            ..ServeArgs::default()
        })
        .unwrap();
        let c = s.clickhouse.unwrap();
        assert_eq!(c.retention, Duration::from_secs(86_400));
        assert_eq!(s.store.retention, Duration::from_secs(600));
        // The embedded store alone keeps the retention.
        let s = Settings::load(ServeArgs {
            retention_secs: Some(7200),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(s.store.retention, Duration::from_secs(7200));
    }

    #[test]
    fn a_memory_bound_caps_the_inflight_budget() {
        let s = Settings::load(ServeArgs {
            max_memory_bytes: Some(256 << 20),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(s.intake.max_inflight_bytes, 64 << 20);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (args, key) in [
            (
                ServeArgs {
                    backlog_rate: Some(0),
                    ..ServeArgs::default()
                },
                "store.backlog_spans_per_second",
            ),
            (
                ServeArgs {
                    index_rate: Some(0),
                    ..ServeArgs::default()
                },
                "store.max_index_spans_per_second",
            ),
            (
                ServeArgs {
                    indexing_nice: Some(20),
                    ..ServeArgs::default()
                },
                "store.indexing_nice",
            ),
            (
                ServeArgs {
                    indexing_nice: Some(-1),
                    ..ServeArgs::default()
                },
                "store.indexing_nice",
            ),
            (
                ServeArgs {
                    retention_secs: Some(5),
                    ..ServeArgs::default()
                },
                "store.retention_secs",
            ),
            (
                ServeArgs {
                    block_max_spans: Some(0),
                    ..ServeArgs::default()
                },
                "store.block_max_spans",
            ),
            (
                ServeArgs {
                    wal_segment_bytes: Some(100),
                    ..ServeArgs::default()
                },
                "wal.segment_bytes",
            ),
            (
                ServeArgs {
                    max_memory_bytes: Some(1000),
                    ..ServeArgs::default()
                },
                "intake.max_memory_bytes",
            ),
            (
                ServeArgs {
                    durability: Some("sometimes".into()),
                    ..ServeArgs::default()
                },
                "wal.durability",
            ),
        ] {
            let e = Settings::load(args).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let typo = write("[store]\nblock_max_span = 3\n");
        let e = Settings::load(ServeArgs {
            config: Some(typo.path().to_path_buf()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("block_max_span"), "{e:#}");
    }
}
