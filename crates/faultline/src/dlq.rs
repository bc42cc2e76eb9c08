//! `faultline dlq list|drop|replay`: the operator's view of the dead letters (WAL records
//! the pipeline could not process; the file format is in `faultline_pipeline::dlq`).
//! `list` and `drop` work on the files of a data directory; `replay` (in
//! `faultline_client::dlq`) asks the running server, which owns the WAL, to append the
//! payloads as new records (one that fails again comes back).

use std::path::Path;
use std::process::ExitCode;

use faultline_pipeline::dlq::{dir, read_all};

/// `faultline dlq list DATA_DIR [--json]`.
pub fn list(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (letters, bad) = read_all(&dir(data_dir));
    for (path, d) in &letters {
        if json {
            println!("{}", d.summary_json(path));
        } else {
            println!(
                "seq {} · {} attempts · {} payload bytes · {}",
                d.seq,
                d.attempts,
                d.payload.len(),
                d.reason
            );
        }
    }
    for (path, reason) in &bad {
        eprintln!("unreadable dead letter {}: {reason}", path.display());
    }
    if !json {
        println!(
            "{} dead letters in {}",
            letters.len(),
            dir(data_dir).display()
        );
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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
