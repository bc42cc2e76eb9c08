//! The ClickHouse storage backend (issue 19), for when one machine is not enough: spans
//! in ClickHouse tables that several faultline nodes share, reached over ClickHouse's
//! HTTP interface. This crate owns:
//!
//! - [`client`]: the HTTP client (statements, RowBinary inserts and answers, errors that
//!   name the server and what to do);
//! - [`schema`]: the versioned schema and its migrations, applied at start-up and refused
//!   when the server is too old or the schema newer than this binary;
//! - [`rows`]: the RowBinary encoding of spans, the format of every insert;
//! - [`ClickHouse`]: the store over them: idempotent inserts of WAL records and of their
//!   rollups, and every read of the query trait `faultline_store::SpanStore` (`query.rs`);
//! - [`settings`]: `storage = "clickhouse"` and the `[clickhouse]` section of
//!   `faultline serve`'s configuration;
//! - `testing` (feature `testing`): a real ClickHouse server on loopback for tests.
//!
//! One SQL dialect runs on Debian's ClickHouse 18.16 and on current ClickHouse (what each
//! accepts is in `docs/clickhouse-groundwork.md`): no skipping indices, `Map`,
//! `LowCardinality`, `INSERT … SETTINGS` or aggregate aliases that shadow a column;
//! settings go as URL parameters.
//!
//! **Idempotence.** Each span is keyed by the node that acknowledged it, its WAL record's
//! sequence number and its index in the record. The spans table is a
//! `ReplacingMergeTree` whose sorting key holds that key, and reads keep one row per key
//! (`LIMIT 1 BY` the key, or `FINAL`), so a
//! record inserted twice (a crash between ClickHouse's acknowledgement and the WAL
//! checkpoint, or a retry after a timeout whose insert did land) answers once.

pub mod client;
mod query;
pub mod rows;
pub mod schema;
pub mod settings;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Client, Config};
pub use query::{FALLBACK, WithLocal};
pub use store::{ClickHouse, RollupPart};

/// What went wrong talking to ClickHouse, said so an operator knows what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChError {
    /// The server could not be reached or the exchange broke off.
    #[error(
        "cannot reach ClickHouse at {url}: {reason}; check that the server runs and that `url` in the [clickhouse] configuration is right"
    )]
    Unreachable { url: String, reason: String },
    /// The server answered with an error.
    #[error("ClickHouse at {url} refused {what}: {message}")]
    Server {
        url: String,
        what: String,
        message: String,
    },
    /// The server is older than the SQL this backend sends.
    #[error(
        "ClickHouse at {url} is version {version}; faultline needs {min} or newer. Upgrade the server"
    )]
    TooOld {
        url: String,
        version: String,
        min: String,
    },
    /// The database holds a schema written by a newer faultline.
    #[error(
        "the faultline schema in ClickHouse database `{database}` is at version {found}, newer than this faultline knows ({known}); upgrade faultline on this node, or point it at another database"
    )]
    SchemaNewer {
        database: String,
        found: u32,
        known: u32,
    },
    /// An answer that does not parse as the query's format.
    #[error("ClickHouse at {url} answered {what} with something unreadable: {reason}")]
    BadAnswer {
        url: String,
        what: String,
        reason: String,
    },
    /// The configuration cannot work.
    #[error("the [clickhouse] configuration is wrong: {0}")]
    Config(String),
}

impl ChError {
    /// True when retrying cannot help until someone changes the configuration, the
    /// server or faultline (a server too old, a schema too new, a setting that cannot
    /// work), false for what passes (the server away, a refused statement).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::TooOld { .. } | Self::SchemaNewer { .. } | Self::Config(_)
        )
    }
}
