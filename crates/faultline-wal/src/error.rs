//! Errors of the WAL, each saying what is wrong and what to do.

use std::path::PathBuf;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
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
    /// The WAL reached its configured budget. Retryable.
    #[error("write-ahead log is full ({size} of {max} bytes); retry later, or raise wal.max_bytes")]
    Full {
        /// Current size in bytes.
        size: u64,
        /// The budget in bytes.
        max: u64,
    },
    /// The disk is full. Retryable: nothing was written.
    #[error("no space left on the device holding {}; retry later, or free disk space", path.display())]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// A write or fsync failed earlier; the WAL accepts nothing until restarted.
    #[error(
        "write-ahead log stopped accepting writes after an I/O error ({reason}); restart faultline to recover from disk"
    )]
    Failed {
        /// The original failure.
        reason: String,
    },
    /// A single record is larger than the format allows.
    #[error("record of {len} bytes exceeds the WAL record limit of {max} bytes")]
    RecordTooLarge {
        /// The record length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record is not readable where its acknowledgement placed it.
    #[error("record {seq} at byte {offset} of {}: {detail}; `faultline wal verify` checks the segments", path.display())]
    BadRecord {
        /// The record's sequence number.
        seq: u64,
        /// Where it was looked for.
        offset: u64,
        /// Its segment file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The WAL was shut down.
    #[error("write-ahead log is shut down")]
    Closed,
    /// A cursor file is unreadable.
    #[error("cursor file {} is corrupt: {reason}; delete it to restart that consumer from the oldest record", path.display())]
    BadCursor {
        /// The cursor file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl WalError {
    /// Whether a client may retry the same request later and expect success.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Full { .. } | Self::NoSpace { .. })
    }
}
