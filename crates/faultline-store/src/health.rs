//! The store's part of the status report, `store`: ok while every block is readable;
//! degraded once a block or rollup file was quarantined (its spans are missing from
//! answers, and every answer that could have used it says it is partial).

use faultline_model::health::{Component, Health, human_bytes};
use serde_json::json;

use crate::Store;

/// Figures of the `store` rule.
#[derive(Debug, Clone, Default)]
pub struct StoreFacts {
    /// Blocks listed in the manifest.
    pub blocks: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Why answers may miss data (quarantined files).
    pub quarantined: Vec<String>,
    /// `store.max_bytes` (`u64::MAX`: none).
    pub max_bytes: u64,
}

/// `store`: blocks on disk and quarantined files.
pub fn store(f: &StoreFacts) -> Component {
    let c = if f.quarantined.is_empty() {
        Component::new(
            "store",
            Health::Ok,
            format!(
                "{}, {}",
                faultline_model::health::plural(f.blocks as u64, "block"),
                human_bytes(f.bytes)
            ),
        )
    } else {
        Component::new(
            "store",
            Health::Degraded,
            format!("{} unreadable files quarantined; answers are partial", f.quarantined.len()),
        )
        .action("inspect DATA_DIR/blocks/quarantine; the spans in those files are missing from answers (the WAL no longer holds them)")
    };
    c.details(json!({
        "blocks": f.blocks, "bytes": f.bytes,
        "max_bytes": (f.max_bytes != u64::MAX).then_some(f.max_bytes),
        "quarantined": f.quarantined,
    }))
}

impl Store {
    /// The store's part, judged now.
    pub fn health(&self) -> Component {
        let blocks = self.blocks();
        store(&StoreFacts {
            blocks: blocks.len(),
            bytes: blocks.iter().map(|b| b.bytes).sum(),
            quarantined: self.quarantined(),
            max_bytes: self.max_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantined_file_degrades_the_store() {
        let ok = store(&StoreFacts {
            blocks: 3,
            bytes: 3 << 20,
            max_bytes: u64::MAX,
            ..StoreFacts::default()
        });
        assert_eq!(ok.health, Health::Ok);
        assert_eq!(ok.summary, "3 blocks, 3.0 MiB");
        assert!(ok.details["max_bytes"].is_null());
        let bad = store(&StoreFacts {
            quarantined: vec!["block 7 is unreadable".into()],
            max_bytes: 1 << 30,
            ..StoreFacts::default()
        });
        assert_eq!(bad.health, Health::Degraded);
        assert!(bad.summary.starts_with("1 unreadable files"));
        assert_eq!(bad.details["max_bytes"], 1 << 30);
    }
}
