//! faultline's write-ahead log: segmented, checksummed, group-committed, crash-safe.
//!
//! The WAL is the only thing between a client's request and its acknowledgement. Its one
//! promise: a record for which [`Wal::append`] returned `Ok` is on disk (after fdatasync in
//! the default [`Durability::Fsync`] mode) and will be read back after any crash. It knows
//! nothing about spans; payloads are opaque bytes.
//!
//! - [`format`]: the segment and record layout (magic, version, length, CRC32C, sequence).
//! - [`core`]: recovery at open (truncate torn tails, quarantine corrupt segments, never
//!   refuse to start over a bad file), appends, fsync, segment rolling, truncation.
//! - [`wal`]: the writer thread with group commit, acknowledgements, cursors.
//! - [`reader`]: reading records back, and a read-only directory scan for operator tools.
//! - [`vfs`]: the file-system boundary, so tests can simulate crashes and I/O errors.
//! - [`durable`]: replacing a small state file atomically and durably, for the crates
//!   that keep one (probes, alerts, the fault proxy).

pub mod core;
pub mod durable;
pub mod error;
pub mod format;
pub mod reader;
pub mod vfs;
pub mod wal;

#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;

pub use crate::core::{Durability, Quarantined, RecoveryReport, SegmentMeta, WalCore, WalOptions};
pub use crate::error::WalError;
pub use crate::reader::{DirScan, Record, SegmentReport, WalReader, scan_dir};

/// The WAL directory named by an operator: `DIR/wal` when `DIR` is a data directory,
/// else `DIR` itself.
pub fn dir_of(dir: &std::path::Path) -> std::path::PathBuf {
    let inner = dir.join("wal");
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}
pub use crate::vfs::{StdFs, Vfs, VfsFile};
pub use crate::wal::{Ack, Cursor, NoopObserver, Tailer, Wal, WalObserver};
