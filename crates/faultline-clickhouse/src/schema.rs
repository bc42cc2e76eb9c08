//! The schema faultline keeps in ClickHouse, as numbered migrations applied at start-up.
//!
//! `faultline_schema` records each migration applied (`version UInt32, name String,
//! applied_at DateTime`). At start-up [`migrate`]:
//!
//! 1. reads `version()` and refuses a server older than [`MIN_SERVER`];
//! 2. makes the database when missing;
//! 3. refuses a schema newer than [`LATEST`] (a newer faultline wrote it: this one would
//!    misread its tables);
//! 4. applies the migrations above the recorded version, in order, recording each.
//!
//! Every statement of a migration is idempotent (`IF NOT EXISTS`), so nodes starting
//! together may both apply one: the second finds the tables made and records the version
//! again, which `max(version)` reads the same.
//!
//! The tables live on the one server, or with `cluster` set over a cluster's shards
//! (see `Layout` for how they are spread and made).
//!
//! Version 1, the spans (row format in `rows.rs`):
//!
//! - `spans`: a `ReplacingMergeTree` partitioned by the day of `start_ns` in the
//!   server's time zone (`toYYYYMMDD`, so retention drops whole days), with primary key
//!   `(service, start_ns)` for a service's spans over time, and sorting key
//!   `(service, start_ns, node, wal_seq, span_idx)`, so a span inserted twice is one row
//!   after merges, and reads take one row per key (`LIMIT 1 BY`); granules of 1,024 rows,
//!   not 8,192: a trace's read decompresses a granule of the large `otlp` column per
//!   service it touched, and the smaller granules made trace by id 2-4 times faster;
//! - `trace_index`: `(trace_id, start_ns, service)` of every span, ordered by `trace_id`
//!   and fed by the materialized view `trace_index_mv` on each insert into `spans`.
//!   ClickHouse 18.16 has no data-skipping indices, so this table is how a trace is found
//!   without scanning: its services and time range, then `spans` through its primary key.
//!
//! Version 2, the RED rollups and dependency edges (row format in `rows.rs`):
//!
//! - `rollups`: the writer's rollups of each chunk of WAL records (1,024 records from a
//!   multiple of 1,024), cut into parts of one minute and one service (or the minute's
//!   dependency edges, `edges = 1`), each part's cells in the embedded store's rollup
//!   file format. Each insert of a chunk writes the parts its new records touched with
//!   `version` = the last record counted, and a part's content is always everything the
//!   chunk's records up to `version` put in that minute and service. A
//!   `ReplacingMergeTree(version)` keyed by (edges, service, minute, node, chunk), read
//!   with `argMax(cells, version)` per key: a part inserted again, or a smaller version
//!   after a crash, never counts twice. Partitioned by the day of `minute` (server time zone).
//!
//! Version 3, tail sampling's decisions:
//!
//! - `dropped`: `(trace_id, decided_at, node)` of every trace a node's tail sampling
//!   dropped (its embedded store decides, the writer sends each decision on, again after
//!   a restart). Reads answer these traces as dropped, as the embedded store does; their
//!   spans stay in `spans` until retention drops their day (the RED rollups counted them
//!   before the decision, as on the embedded store). A `ReplacingMergeTree` ordered by
//!   `trace_id` (a decision sent twice is one row after merges; reads group by trace),
//!   partitioned by the day of `decided_at` (server time zone), spread by `cityHash64(trace_id)` like
//!   the spans.

use crate::ChError;
use crate::client::Client;

/// The oldest server whose SQL this backend speaks (Debian 12's `clickhouse-server`).
pub const MIN_SERVER: (u32, u32) = (18, 16);

/// The partition key of the tables partitioned by day.
const BY_DAY: &str = "toYYYYMMDD(toDateTime(intDiv(start_ns, 1000000000)))";

/// Where the tables live: on the one server, or spread over a cluster's shards.
///
/// With a cluster, each table `T` of the migrations below is made on every server as
/// `T_local` (the engine and keys written here), and `T` becomes a `Distributed` table
/// over `T_local` on every shard, so the statements that read and insert name `T` on
/// both layouts. Spans are sent to shard `cityHash64(trace_id)`: a trace's spans, and a
/// span inserted again, land on one shard, whose `ReplacingMergeTree` and
/// `LIMIT 1 BY` keep it once, and whose `trace_index_local` (fed by the view on
/// `spans_local`) finds it. Rollup parts go to shard `cityHash64(node, chunk)`; reads
/// take the newest version of each part across shards (`argMax`), so where a part lands
/// does not change an answer.
///
/// ClickHouse 18.16 runs `ON CLUSTER` statements only with ZooKeeper, so each node makes
/// the tables on the server it is pointed at; every server of the cluster needs a node
/// pointed at it once (its start makes the tables there), and until then inserts
/// fail, naming the missing table, and wait in the WAL.
#[derive(Debug, Clone)]
struct Layout {
    database: String,
    cluster: Option<String>,
}

impl Layout {
    /// `CREATE TABLE` of `name` with `columns` and `engine` (its engine, keys and
    /// settings), plus its `Distributed` table sharded by `shard_by` with a cluster.
    fn table(&self, name: &str, columns: &str, engine: &str, shard_by: &str) -> Vec<String> {
        match &self.cluster {
            None => vec![format!(
                "CREATE TABLE IF NOT EXISTS {name} ({columns}) ENGINE = {engine}"
            )],
            Some(cluster) => vec![
                format!("CREATE TABLE IF NOT EXISTS {name}_local ({columns}) ENGINE = {engine}"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {name} AS {name}_local \
                     ENGINE = Distributed({cluster}, {}, {name}_local, {shard_by})",
                    self.database
                ),
            ],
        }
    }

    /// The name of the table that holds table `name`'s rows on this server.
    fn local(&self, name: &str) -> String {
        match self.cluster {
            None => name.to_string(),
            Some(_) => format!("{name}_local"),
        }
    }
}

/// One migration: its version, a name for the record, its statements.
struct Migration {
    version: u32,
    name: &'static str,
    statements: fn(&Layout) -> Vec<String>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "spans and trace index",
        statements: v1,
    },
    Migration {
        version: 2,
        name: "rollups",
        statements: v2,
    },
    Migration {
        version: 3,
        name: "tail sampling decisions",
        statements: v3,
    },
];

/// The schema version this binary writes and reads.
pub const LATEST: u32 = 3;

fn v1(l: &Layout) -> Vec<String> {
    let mut out = l.table(
        "spans",
        "trace_id FixedString(16),
            span_id FixedString(8),
            parent_span_id FixedString(8),
            service String,
            name String,
            kind UInt8,
            status UInt8,
            start_ns UInt64,
            duration_ns UInt64,
            attr_keys Array(String),
            attr_values Array(String),
            attr_types Array(UInt8),
            otlp String,
            node String,
            wal_seq UInt64,
            span_idx UInt32",
        &format!(
            "ReplacingMergeTree()
            PARTITION BY {BY_DAY}
            PRIMARY KEY (service, start_ns)
            ORDER BY (service, start_ns, node, wal_seq, span_idx)
            SETTINGS index_granularity = 1024"
        ),
        "cityHash64(trace_id)",
    );
    out.extend(l.table(
        "trace_index",
        "trace_id FixedString(16), start_ns UInt64, service String",
        &format!("MergeTree() PARTITION BY {BY_DAY} ORDER BY (trace_id, start_ns)"),
        "cityHash64(trace_id)",
    ));
    out.push(format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS trace_index_mv TO {} AS
            SELECT trace_id, start_ns, service FROM {}",
        l.local("trace_index"),
        l.local("spans")
    ));
    out
}

fn v2(l: &Layout) -> Vec<String> {
    l.table(
        "rollups",
        "minute UInt32,
            edges UInt8,
            service String,
            node String,
            chunk UInt64,
            version UInt64,
            cells String",
        "ReplacingMergeTree(version)
        PARTITION BY toYYYYMMDD(toDateTime(minute * 60))
        ORDER BY (edges, service, minute, node, chunk)",
        "cityHash64(node, chunk)",
    )
}

fn v3(l: &Layout) -> Vec<String> {
    l.table(
        "dropped",
        "trace_id FixedString(16), decided_at UInt32, node String",
        "ReplacingMergeTree()
        PARTITION BY toYYYYMMDD(toDateTime(decided_at))
        ORDER BY trace_id",
        "cityHash64(trace_id)",
    )
}

/// Parses `version()`'s answer into (major, minor).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Brings the database of `client` to [`LATEST`], or says why it cannot; returns the
/// version found before.
pub fn migrate(client: &Client) -> Result<u32, ChError> {
    let cfg = client.config();
    let version = String::from_utf8_lossy(&client.query_server("SELECT version()")?)
        .trim()
        .to_string();
    match parse_version(&version) {
        Some(v) if v >= MIN_SERVER => {}
        Some(_) => {
            return Err(ChError::TooOld {
                url: cfg.url.clone(),
                version,
                min: format!("{}.{}", MIN_SERVER.0, MIN_SERVER.1),
            });
        }
        None => {
            return Err(ChError::BadAnswer {
                url: cfg.url.clone(),
                what: "`SELECT version()`".into(),
                reason: format!("`{version}` is not a version"),
            });
        }
    }
    client.query_server(&format!("CREATE DATABASE IF NOT EXISTS {}", cfg.database))?;
    client.query(
        "CREATE TABLE IF NOT EXISTS faultline_schema (
            version UInt32,
            name String,
            applied_at DateTime DEFAULT now()
        ) ENGINE = MergeTree() ORDER BY version",
    )?;
    let found = current(client)?;
    if found > LATEST {
        return Err(ChError::SchemaNewer {
            database: cfg.database.clone(),
            found,
            known: LATEST,
        });
    }
    let layout = Layout {
        database: cfg.database.clone(),
        cluster: cfg.cluster.clone(),
    };
    check_layout(client, &layout)?;
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tracing::info!(version = m.version, name = m.name, database = %cfg.database, "applying a ClickHouse schema migration");
        for s in (m.statements)(&layout) {
            client.query(&s)?;
        }
        client.query(&format!(
            "INSERT INTO faultline_schema (version, name) VALUES ({}, '{}')",
            m.version,
            m.name.replace('\'', "")
        ))?;
    }
    if let Some(cluster) = &layout.cluster {
        // Every shard answers from its own tables: a shard no node has migrated yet
        // fails this, naming its missing table.
        client
            .query("SELECT count() FROM spans WHERE 0")
            .map_err(|e| match e {
                ChError::Server { url, message, .. } => ChError::Server {
                    url,
                    what: format!(
                        "a read of every shard of cluster `{cluster}` (each server of the cluster needs a faultline node pointed at it once, which makes the tables there)"
                    ),
                    message,
                },
                e => e,
            })?;
    }
    Ok(found)
}

/// Refuses a database whose tables were made for the other layout (a single server's
/// tables under a cluster setting, or the reverse), and a cluster the server does not
/// know.
fn check_layout(client: &Client, layout: &Layout) -> Result<(), ChError> {
    let db = &layout.database;
    if let Some(cluster) = &layout.cluster {
        let known = client.query_text(&format!(
            "SELECT count() FROM system.clusters WHERE cluster = '{cluster}'"
        ))?;
        if known.trim() == "0" {
            return Err(ChError::Config(format!(
                "ClickHouse at {} has no cluster `{cluster}` in its remote_servers; add it to the server's configuration, or remove `cluster`",
                client.config().url
            )));
        }
    }
    let engine = client.query_text(&format!(
        "SELECT engine FROM system.tables WHERE database = '{db}' AND name = 'spans'"
    ))?;
    let distributed = match engine.trim() {
        "" => return Ok(()),
        e => e == "Distributed",
    };
    match (&layout.cluster, distributed) {
        (Some(c), false) => Err(ChError::Config(format!(
            "database `{db}` holds one server's tables, not tables over cluster `{c}`; use another database for the cluster, or remove `cluster`"
        ))),
        (None, true) => Err(ChError::Config(format!(
            "database `{db}` holds tables spread over a cluster; name that cluster in `cluster`, or use another database"
        ))),
        _ => Ok(()),
    }
}

/// The schema version recorded in the database (0 before any migration).
pub fn current(client: &Client) -> Result<u32, ChError> {
    let text = client.query_text("SELECT max(version) FROM faultline_schema")?;
    text.trim().parse().map_err(|_| ChError::BadAnswer {
        url: client.config().url.clone(),
        what: "the schema version".into(),
        reason: format!("`{}` is not a number", text.trim()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("18.16.1\n"), Some((18, 16)));
        assert_eq!(parse_version("26.9.2.1"), Some((26, 9)));
        assert!(parse_version("18.14.19").unwrap() < MIN_SERVER);
        assert!(parse_version("19.1.6").unwrap() >= MIN_SERVER);
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn migrations_are_numbered_in_order_up_to_latest() {
        let v: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(v, (1..=LATEST).collect::<Vec<_>>());
        let one = Layout {
            database: "db".into(),
            cluster: None,
        };
        let spread = Layout {
            cluster: Some("c".into()),
            ..one.clone()
        };
        for m in MIGRATIONS {
            for layout in [&one, &spread] {
                for s in (m.statements)(layout) {
                    assert!(s.contains("IF NOT EXISTS"), "not idempotent: {s}");
                }
            }
        }
    }

    #[test]
    fn a_cluster_spreads_every_table_over_local_tables() {
        let l = Layout {
            database: "db".into(),
            cluster: Some("two".into()),
        };
        let all: Vec<String> = MIGRATIONS.iter().flat_map(|m| (m.statements)(&l)).collect();
        for t in ["spans", "trace_index", "rollups"] {
            let local = format!("CREATE TABLE IF NOT EXISTS {t}_local (");
            assert!(all.iter().any(|s| s.starts_with(&local)), "{t}: {all:?}");
            let dist = format!("ENGINE = Distributed(two, db, {t}_local, cityHash64(");
            assert!(all.iter().any(|s| s.contains(&dist)), "{t}: {all:?}");
        }
        let view = all.iter().find(|s| s.contains("VIEW")).unwrap();
        assert!(view.contains("TO trace_index_local") && view.contains("FROM spans_local"));
    }
}
