//! Replacing a small file so that a crash leaves either the old or the new contents, never
//! a mix: write a temporary file beside it (`NAME.tmp`), fsync it, rename it over the old
//! one, fsync the directory. The WAL's segments are appended, not replaced; the state
//! files of probes, alerts and the fault proxy are replaced this way.

use std::io::Write;
use std::path::Path;

/// A failed replacement: the step (`cannot create`, `cannot write`, `cannot fsync`,
/// `cannot rename over`, `cannot fsync the directory of`) and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct ReplaceError {
    pub op: &'static str,
    pub path: std::path::PathBuf,
    pub source: std::io::Error,
}

/// Replaces `path` with `bytes` durably (blocking: call it off the async executor).
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    let fail = |op: &'static str, target: &Path| {
        let target = target.to_path_buf();
        move |source| ReplaceError {
            op,
            path: target,
            source,
        }
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(fail("cannot create", &tmp))?;
    f.write_all(bytes).map_err(fail("cannot write", &tmp))?;
    f.sync_all().map_err(fail("cannot fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(fail("cannot rename over", path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail("cannot fsync the directory of", path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("state.json");
        replace_file(&p, b"one").unwrap_or_else(|e| panic!("{e}"));
        replace_file(&p, b"two").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&p).unwrap_or_default(), b"two");
        assert!(!dir.path().join("state.json.tmp").exists());
        let err = replace_file(&dir.path().join("missing/x.json"), b"x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("cannot create") && err.contains("x.json.tmp"),
            "{err}"
        );
    }
}
