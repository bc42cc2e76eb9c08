//! The storage choice of `faultline serve`: `storage = "embedded"` (the default) or
//! `"clickhouse"`, and the `[clickhouse]` section, merged with their flags and
//! `FAULTLINE_*` variables (flag, then environment, then file, then default):
//!
//! ```toml
//! storage = "embedded"                  # --storage, FAULTLINE_STORAGE; or "clickhouse"
//!
//! [clickhouse]                          # used with storage = "clickhouse"
//! url = "http://127.0.0.1:8123"         # --clickhouse-url, FAULTLINE_CLICKHOUSE_URL;
//!                                       #   https:// for TLS (ClickHouse's https_port)
//! ca_file = "/etc/faultline/ch-ca.pem"  # --clickhouse-ca-file: CAs trusted for https://
//!                                       #   [default: the web PKI roots]
//! database = "faultline"                # --clickhouse-database (made when missing)
//! user = "default"                      # --clickhouse-user
//! password = ""                         # FAULTLINE_CLICKHOUSE_PASSWORD (or here)
//! node = (made once, kept in DATA_DIR/clickhouse-node)
//!                                       # --node-name: this node's name in ClickHouse;
//!                                       #   stable across restarts, its own on each node
//! timeout_secs = 30                     # one request, connection and answer
//! local_window_secs = 3600              # how long the node's own embedded store keeps
//!                                       #   spans beside ClickHouse (at least 60): what
//!                                       #   it computes as spans arrive, and answers
//!                                       #   while ClickHouse is away; ClickHouse keeps
//!                                       #   them for the store's retention_secs
//! cluster = "faultline"                 # --clickhouse-cluster: tables spread over the
//!                                       #   shards of this cluster of the server's
//!                                       #   remote_servers (every node of faultline
//!                                       #   names the same); none: one server
//! ```

use std::path::Path;
use std::time::Duration;

use crate::{ChError, Config};

/// `[clickhouse]` of the configuration file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseFile {
    url: Option<String>,
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    node: Option<String>,
    timeout_secs: Option<u64>,
    cluster: Option<String>,
    ca_file: Option<std::path::PathBuf>,
    local_window_secs: Option<u64>,
}

/// The flags (and variables) of the storage choice.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct StorageArgs {
    /// Where spans are stored: embedded (default) or clickhouse.
    #[arg(long, env = "FAULTLINE_STORAGE")]
    pub storage: Option<String>,
    /// ClickHouse's HTTP interface [default: http://127.0.0.1:8123].
    #[arg(long, env = "FAULTLINE_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// The ClickHouse database [default: faultline].
    #[arg(long, env = "FAULTLINE_CLICKHOUSE_DATABASE")]
    pub clickhouse_database: Option<String>,
    /// The ClickHouse user [default: default].
    #[arg(long, env = "FAULTLINE_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// The ClickHouse password (prefer the variable: flags show in `ps`).
    #[arg(long, env = "FAULTLINE_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,
    /// The ClickHouse cluster whose shards hold the tables [default: none, one server].
    #[arg(long, env = "FAULTLINE_CLICKHOUSE_CLUSTER")]
    pub clickhouse_cluster: Option<String>,
    /// With an https:// URL, the PEM file of the CAs to trust [default: the web PKI roots].
    #[arg(long, env = "FAULTLINE_CLICKHOUSE_CA_FILE")]
    pub clickhouse_ca_file: Option<std::path::PathBuf>,
    /// This node's name in ClickHouse [default: made once, kept in the data directory].
    #[arg(long, env = "FAULTLINE_NODE_NAME")]
    pub node_name: Option<String>,
}

/// ClickHouse as this node uses it: the server and the node's name.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    /// The server.
    pub config: Config,
    /// This node's name (see `ClickHouse::open`).
    pub node: String,
    /// How long the node's own embedded store keeps spans beside ClickHouse (for what it
    /// computes as spans arrive, and for answers while ClickHouse is away).
    pub local_window: Duration,
    /// How long ClickHouse keeps spans: the store's retention (set by the caller).
    pub retention: Duration,
}

/// The storage chosen by `storage` (flag first, then the file's key): `None` for the
/// embedded store, or ClickHouse's settings. The node's name, when not given, is read
/// from `DATA_DIR/clickhouse-node`, made there on the first start. With ClickHouse,
/// `retention` (the store's) becomes ClickHouse's, and the embedded store's is narrowed
/// to the local window.
pub fn storage(
    args: &StorageArgs,
    file_storage: Option<&str>,
    file: &ClickHouseFile,
    data_dir: &Path,
    retention: &mut Duration,
) -> Result<Option<ClickHouseSettings>, ChError> {
    match args
        .storage
        .as_deref()
        .or(file_storage)
        .unwrap_or("embedded")
    {
        "embedded" => return Ok(None),
        "clickhouse" => {}
        other => {
            return Err(ChError::Config(format!(
                "storage = `{other}` is not a storage; use \"embedded\" or \"clickhouse\""
            )));
        }
    }
    let pick = |flag: &Option<String>, key: &Option<String>, default: &str| {
        flag.clone()
            .or_else(|| key.clone())
            .unwrap_or_else(|| default.to_string())
    };
    let mut config = Config::new(
        &pick(&args.clickhouse_url, &file.url, "http://127.0.0.1:8123"),
        &pick(&args.clickhouse_database, &file.database, "faultline"),
    );
    config.user = pick(&args.clickhouse_user, &file.user, "");
    config.password = pick(&args.clickhouse_password, &file.password, "");
    config.cluster = args
        .clickhouse_cluster
        .clone()
        .or_else(|| file.cluster.clone())
        .filter(|c| !c.is_empty());
    config.ca_file = args
        .clickhouse_ca_file
        .clone()
        .or_else(|| file.ca_file.clone());
    if let Some(t) = file.timeout_secs {
        if t == 0 {
            return Err(ChError::Config("timeout_secs must be at least 1".into()));
        }
        config.timeout = Duration::from_secs(t);
    }
    crate::Client::new(config.clone())?;
    let node = match args.node_name.clone().or_else(|| file.node.clone()) {
        Some(n) => n,
        None => node_name(data_dir)?,
    };
    let valid = !node.is_empty()
        && node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid {
        return Err(ChError::Config(format!(
            "node name `{node}`: use 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    let local_window = Duration::from_secs(file.local_window_secs.unwrap_or(3600));
    if local_window < Duration::from_secs(60) {
        return Err(ChError::Config(
            "local_window_secs must be at least 60".into(),
        ));
    }
    let kept = std::mem::replace(retention, (*retention).min(local_window));
    Ok(Some(ClickHouseSettings {
        config,
        node,
        local_window,
        retention: kept,
    }))
}

/// This node's name from `DATA_DIR/clickhouse-node`, made there when missing: the WAL in
/// the data directory is what the name stands for.
fn node_name(data_dir: &Path) -> Result<String, ChError> {
    let path = data_dir.join("clickhouse-node");
    let io = |e: std::io::Error| {
        ChError::Config(format!(
            "cannot read or make the node name file {}: {e}; give --node-name",
            path.display()
        ))
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let name = format!(
                "node-{:x}",
                (nanos as u64) ^ u64::from(std::process::id()) << 32
            );
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let tmp = data_dir.join("clickhouse-node.tmp");
            std::fs::write(&tmp, format!("{name}\n")).map_err(io)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(name)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_by_default_and_clickhouse_with_flags_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let none = StorageArgs::default();
        let file = ClickHouseFile::default();
        assert!(
            storage(&none, None, &file, dir.path(), &mut week())
                .unwrap()
                .is_none()
        );
        let file: ClickHouseFile = toml_like(&[
            ("url", "http://ch:8123"),
            ("database", "traces"),
            ("cluster", "two"),
        ]);
        let args = StorageArgs {
            clickhouse_database: Some("flagged".into()),
            ..StorageArgs::default()
        };
        let s = storage(&args, Some("clickhouse"), &file, dir.path(), &mut week())
            .unwrap()
            .unwrap();
        assert_eq!(s.config.url, "http://ch:8123");
        assert_eq!(s.config.database, "flagged");
        assert_eq!(s.config.cluster.as_deref(), Some("two"));
        // The node's name is made once and kept.
        let again = storage(&args, Some("clickhouse"), &file, dir.path(), &mut week())
            .unwrap()
            .unwrap();
        assert_eq!(s.node, again.node);
        assert!(s.node.starts_with("node-"), "{}", s.node);
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = ClickHouseFile::default();
        let e = storage(
            &StorageArgs::default(),
            Some("s3"),
            &file,
            dir.path(),
            &mut week(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`s3` is not a storage"), "{e}");
        let args = StorageArgs {
            storage: Some("clickhouse".into()),
            node_name: Some("a b".into()),
            ..StorageArgs::default()
        };
        let e = storage(&args, None, &file, dir.path(), &mut week()).unwrap_err();
        assert!(e.to_string().contains("node name `a b`"), "{e}");
        let args = StorageArgs {
            storage: Some("clickhouse".into()),
            clickhouse_url: Some("ch:8123".into()),
            ..StorageArgs::default()
        };
        let e = storage(&args, None, &file, dir.path(), &mut week()).unwrap_err();
        assert!(e.to_string().contains("not an http://"), "{e}");
        let short = ClickHouseFile {
            local_window_secs: Some(10),
            ..ClickHouseFile::default()
        };
        let e = storage(
            &StorageArgs::default(),
            Some("clickhouse"),
            &short,
            dir.path(),
            &mut week(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("local_window_secs"), "{e}");
    }

    fn week() -> Duration {
        Duration::from_secs(7 * 86_400)
    }

    fn toml_like(pairs: &[(&str, &str)]) -> ClickHouseFile {
        let mut f = ClickHouseFile::default();
        for (k, v) in pairs {
            match *k {
                "url" => f.url = Some(v.to_string()),
                "database" => f.database = Some(v.to_string()),
                "cluster" => f.cluster = Some(v.to_string()),
                _ => {}
            }
        }
        f
    }
}
