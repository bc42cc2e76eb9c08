//! `faultline dlq list|drop|replay`: the operator's view of the dead letters (WAL records
//! the pipeline could not process; the file format is in `faultline_pipeline::dlq`).
//! `list` and `drop` work on the files of a data directory; `replay` (in
//! `faultline_client::dlq`) asks the running server, which owns the WAL, to append the
//! payloads as new records (one that fails again comes back).

use std::path::Path;
use std::process::ExitCode;

use faultline_pipeline::dlq::dir;

/// `faultline dlq list DATA_DIR [--json]`; exits 1 when a dead letter is unreadable.
pub fn list(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (lines, errors) = faultline_pipeline::dlq::list_lines(data_dir, json);
    lines.iter().for_each(|l| println!("{l}"));
    errors.iter().for_each(|l| eprintln!("{l}"));
    Ok(match errors.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}

/// `faultline dlq drop DATA_DIR (--all | SEQ...)`: deletes dead letters for good.
pub fn drop(data_dir: &Path, all: bool, seqs: &[u64]) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        all || !seqs.is_empty(),
        "say which dead letters to drop: --all, or their sequence numbers (see `faultline dlq list`)"
    );
    let dropped =
        faultline_pipeline::dlq::drop_letters(&dir(data_dir), |seq| all || seqs.contains(&seq))
            .map_err(|(path, e)| anyhow::anyhow!("cannot delete {}: {e}", path.display()))?;
    println!("dropped {dropped} dead letters");
    Ok(ExitCode::SUCCESS)
}
