//! Configuration of `faultline serve`: a TOML file (`--config`), overridden by
//! `FAULTLINE_*` environment variables, overridden by flags.
//!
//! Every key, with its default:
//!
//! ```toml
//! data_dir = "./faultline-data"
//!
//! [listen]                       # loopback by default; use 0.0.0.0 to open up
//! otlp_grpc = "127.0.0.1:4317"
//! otlp_http = "127.0.0.1:4318"
//! zipkin    = "127.0.0.1:9411"
//! http      = "127.0.0.1:16686"  # API, /ready, /health, /metrics
//!
//! [wal]
//! durability    = "fsync"        # or "os": acknowledge after write(), loses data on power failure
//! max_bytes     = 4294967296     # refuse (retryably) beyond this much WAL
//! segment_bytes = 67108864
//!
//! [intake]
//! max_request_bytes         = 16777216   # per request, before and after gunzip
//! max_inflight_bytes        = 536870912  # request bytes being processed at once (else 429)
//! min_free_disk_bytes       = 268435456  # refuse (retryably) when the disk has less free
//! max_attribute_value_bytes = 262144     # larger attribute values reject their span
//! max_attributes_per_span   = 1024
//! retry_after_secs          = 1
//! critical_services         = []         # services whose spans are never shed (lane critical)
//! max_memory_bytes          = (none)     # resident memory bound: shed bulk at 50%, normal at 80%
//!                                        # (also caps max_inflight_bytes at a quarter of it)
//!
//! [store]
//! block_max_spans    = 250000     # seal the in-memory head into a block at this many spans
//! block_max_age_secs = 60         # ... or when its oldest span is this old
//! retention_secs     = 604800     # delete blocks whose spans all ended longer ago (7 days)
//! max_bytes          = (none)     # delete the oldest blocks beyond this many bytes
//! backlog_spans_per_second = 100000 # replay rate of a backlog (live data is indexed first)
//! max_index_spans_per_second = (none) # cap on indexing, backlog included (leaves CPU to queries)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The file format. Unknown keys are errors, so a typo is reported, not ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub wal: WalConfig,
    #[serde(default)]
    pub intake: IntakeFileConfig,
    #[serde(default)]
    pub store: StoreFileConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFileConfig {
    pub block_max_spans: Option<usize>,
    pub block_max_age_secs: Option<u64>,
    pub retention_secs: Option<u64>,
    pub max_bytes: Option<u64>,
    pub backlog_spans_per_second: Option<u64>,
    pub max_index_spans_per_second: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub otlp_grpc: Option<SocketAddr>,
    pub otlp_http: Option<SocketAddr>,
    pub zipkin: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    pub durability: Option<String>,
    pub max_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeFileConfig {
    pub max_request_bytes: Option<usize>,
    pub max_inflight_bytes: Option<usize>,
    pub min_free_disk_bytes: Option<u64>,
    pub max_attribute_value_bytes: Option<usize>,
    pub max_attributes_per_span: Option<usize>,
    pub retry_after_secs: Option<u32>,
    pub critical_services: Option<Vec<String>>,
    pub max_memory_bytes: Option<u64>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid", path.display()))
    }
}
