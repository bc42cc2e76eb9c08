//! The manifest: the list of blocks that make up the store, replaced atomically.
//!
//! `DATA_DIR/blocks/manifest.json` (written as `manifest.json.tmp`, fsynced, renamed, and
//! the directory fsynced):
//!
//! ```json
//! {
//!   "format": "faultline-manifest",
//!   "version": 2,
//!   "source_seq": 1234,
//!   "blocks": [
//!     {"id": "00000000000000000001", "spans": 200000, "traces": 13000,
//!      "min_start_ns": 0, "max_end_ns": 0, "bytes": 4000000, "source_seq": 1200,
//!      "services": ["cart", "frontend"]}
//!   ]
//! }
//! ```
//!
//! `source_seq` is the highest WAL sequence number the store has sealed in order: every
//! record up to it is in listed blocks except those in `pending`. `pending` (omitted when
//! empty) lists inclusive ranges `[first, last]` of records at or below `source_seq` that
//! are not yet in blocks: the backlog the pipeline skipped to index live data first, for
//! example `"pending": [[100, 5000]]`. Records before the first pending one (or up to
//! `source_seq` when none is pending) may be truncated from the WAL; replay after a restart
//! starts after `source_seq` and replays the pending ranges in the background. A block file not listed in the manifest (a crash between writing it and publishing
//! the manifest) is ignored and deleted at start-up; its spans are replayed from the WAL.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::seqs::SeqRanges;

const FORMAT: &str = "faultline-manifest";
/// Version 2 added `pending`; version 1 files are read as having none. A version 1 reader
/// refuses version 2 files instead of ignoring `pending` and losing the backlog.
const VERSION: u32 = 2;

/// One sealed block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    /// Block id (also its file names).
    pub id: String,
    /// Spans in the block.
    pub spans: u64,
    /// Distinct traces.
    pub traces: u64,
    /// Earliest span start.
    pub min_start_ns: u64,
    /// Latest span end.
    pub max_end_ns: u64,
    /// Size on disk.
    pub bytes: u64,
    /// Highest WAL sequence number whose spans this block completes.
    pub source_seq: u64,
    /// Services with spans in the block.
    #[serde(default)]
    pub services: Vec<String>,
    /// Whether tail sampling decided the block (its record is `ID.tails`, `crate::tail`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tail_decided: bool,
}

/// The manifest contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    format: String,
    version: u32,
    /// See the module doc.
    pub source_seq: u64,
    /// Blocks, oldest first.
    pub blocks: Vec<BlockMeta>,
    /// See the module doc.
    #[serde(default, skip_serializing_if = "SeqRanges::is_empty")]
    pub pending: SeqRanges,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            source_seq: 0,
            blocks: Vec::new(),
            pending: SeqRanges::default(),
        }
    }
}

/// Path of the manifest in a blocks directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("manifest.json")
}

impl Manifest {
    /// Loads the manifest, or an empty one if there is none yet.
    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let p = path(dir);
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "read manifest",
                    path: p,
                    source,
                });
            }
        };
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| StoreError::Manifest {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if m.format != FORMAT || !(1..=VERSION).contains(&m.version) {
            return Err(StoreError::Manifest {
                path: p,
                reason: format!(
                    "format {:?} version {} is not {FORMAT:?} version {VERSION}",
                    m.format, m.version
                ),
            });
        }
        let mut m = m;
        m.version = VERSION;
        // Ranges above source_seq are replayed in order anyway; keeping them would replay
        // those records twice.
        m.pending.clip_above(m.source_seq);
        Ok(m)
    }

    /// Every record up to this one is in listed blocks: the WAL may be truncated before
    /// the next.
    pub fn durable_prefix(&self) -> u64 {
        match self.pending.first() {
            Some(first) => first.saturating_sub(1).min(self.source_seq),
            None => self.source_seq,
        }
    }

    /// Replaces the manifest atomically and durably. Blocking.
    pub fn store(&self, dir: &Path) -> Result<(), StoreError> {
        let p = path(dir);
        let tmp = dir.join("manifest.json.tmp");
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { op, path, source }
        };
        let text =
            serde_json::to_vec_pretty(self).map_err(|e| StoreError::Encode(e.to_string()))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io("create manifest", &tmp))?;
            f.write_all(&text).map_err(io("write manifest", &tmp))?;
            f.sync_all().map_err(io("fsync manifest", &tmp))?;
        }
        std::fs::rename(&tmp, &p).map_err(io("rename manifest", &tmp))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync block directory", dir))
    }
}
