//! Errors of the store, each naming the file and what to do.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a named file or directory.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is unreadable; it is quarantined and the rest is served.
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Parquet or Arrow refused to write.
    #[error("cannot encode a block: {0}")]
    Encode(String),
    /// A span observer could not make its state durable before a seal.
    #[error("cannot checkpoint the continuous checks before publishing a block: {0}")]
    Observer(String),
    /// The manifest is unreadable.
    #[error("manifest {} is unreadable: {reason}; restore it from a backup or move it aside to start with an empty store (the WAL is replayed)", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another storage backend (ClickHouse) failed; its message says which server and
    /// what to do.
    #[error("{0}")]
    Backend(String),
}

impl StoreError {
    pub(crate) fn parquet(e: impl std::fmt::Display) -> Self {
        Self::Encode(e.to_string())
    }

    pub(crate) fn arrow(e: impl std::fmt::Display) -> Self {
        Self::Encode(e.to_string())
    }
}
