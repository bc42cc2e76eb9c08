//! The checks' part of the configuration file, read by `faultline serve`:
//! `[[consistency]]` rules (fields in `rule.rs`), `[[assertions]]` run on live traffic
//! (fields in `continuous.rs`) and their shared settings:
//!
//! ```toml
//! [checks]
//! memory_mb = 64      # bound of the rules' write-back map plus the database page cache
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::continuous::ContinuousDef;
use crate::rule::{Rule, RuleDef, check_all};

/// `[checks]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksFile {
    pub memory_mb: Option<u64>,
}

/// One `[[assertions]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionDef {
    pub name: String,
    /// An assertion file (JSON, as for `faultline assert`), relative to the
    /// configuration file.
    pub file: PathBuf,
    #[serde(rename = "match")]
    pub matcher: String,
    #[serde(default = "default_settle")]
    pub settle: String,
}

fn default_settle() -> String {
    "10s".into()
}

/// Continuous assertions one server runs at most (each checks every matching trace).
pub const MAX_ASSERTIONS: usize = 1_000;

/// The checks' configuration, checked.
#[derive(Debug, Clone)]
pub struct ChecksConfig {
    pub rules: Vec<Rule>,
    pub assertions: Vec<ContinuousDef>,
    pub memory_bytes: usize,
}

/// Checks the configuration's rules and assertions; assertion files are read relative to
/// `base` (the configuration file's directory). Errors name the table and field.
pub fn build(
    rules: Vec<RuleDef>,
    assertions: Vec<AssertionDef>,
    opts: &ChecksFile,
    base: &Path,
) -> Result<ChecksConfig, String> {
    let rules = check_all(rules)?;
    if assertions.len() > MAX_ASSERTIONS {
        return Err(format!(
            "assertions: {} are configured; at most {MAX_ASSERTIONS} are allowed (join assertion files that match the same traces)",
            assertions.len()
        ));
    }
    let mut out = Vec::new();
    for a in assertions {
        if out.iter().any(|d: &ContinuousDef| d.name == a.name) {
            return Err(format!(
                "assertions: {:?} is defined twice; names must be unique",
                a.name
            ));
        }
        let path = base.join(&a.file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "assertions[{}].file: cannot read {}: {e}",
                a.name,
                path.display()
            )
        })?;
        let file = faultline_rules::AssertionFile::parse(&text)
            .map_err(|e| format!("assertions[{}].file {}: {e}", a.name, path.display()))?;
        out.push(ContinuousDef::new(&a.name, &a.matcher, file, &a.settle)?);
    }
    let memory_mb = opts.memory_mb.unwrap_or(64);
    // About 10 MiB is fixed overhead (redb's allocator state and buffers): a million
    // pending keys went over bounds of 32 and 48 MiB (`faultline-bench checks-memory`).
    if !(64..=65_536).contains(&memory_mb) {
        return Err(format!(
            "checks.memory_mb: {memory_mb} is out of range (64 to 65536; about 10 MiB of it is fixed overhead, so smaller bounds cannot be kept)"
        ));
    }
    Ok(ChecksConfig {
        rules,
        assertions: out,
        memory_bytes: (memory_mb as usize) << 20,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn memory_bounds_below_what_can_be_kept_are_refused() {
        let build_with = |mb| {
            let opts = ChecksFile {
                memory_mb: Some(mb),
            };
            build(vec![], vec![], &opts, Path::new("."))
        };
        let e = build_with(48).unwrap_err();
        assert!(
            e.contains("checks.memory_mb: 48 is out of range (64 to 65536"),
            "{e}"
        );
        assert_eq!(build_with(64).unwrap().memory_bytes, 64 << 20);
        assert!(build_with(65_537).is_err());
        let default = build(vec![], vec![], &ChecksFile::default(), Path::new("."));
        assert_eq!(default.unwrap().memory_bytes, 64 << 20);
    }
}
