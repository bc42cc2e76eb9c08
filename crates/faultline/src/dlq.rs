//! `faultline dlq list|drop|replay`: the operator's view of the dead letters (WAL records
//! the pipeline could not process; the file format is in `faultline_pipeline::dlq`).
//! `list` and `drop` work on the files of a data directory; `replay` asks the running
//! server, which owns the WAL, to append the payloads as new records (one that fails again
//! comes back).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
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

/// `faultline dlq replay --api URL (--all | SEQ...)`: asks the running server to append the
/// payloads to its WAL again.
pub fn replay(api: &str, all: bool, seqs: &[u64]) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        all || !seqs.is_empty(),
        "say which dead letters to replay: --all, or their sequence numbers (see `faultline dlq list`)"
    );
    let query = if all {
        "all=true".to_string()
    } else {
        seqs.iter()
            .map(|s| format!("seq={s}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let url = format!("{}/api/v1/dlq/replay?{query}", api.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (status, body) = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach faultline at {url}; is it running? (--api)"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::Ok((status, body))
    })?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        let list = v["replayed"].as_array().cloned().unwrap_or_default();
        let pairs: Vec<String> = list
            .iter()
            .map(|r| format!("{} -> {}", r["seq"], r["newSeq"]))
            .collect();
        println!(
            "replayed {} dead letters (old seq -> new seq): {}",
            pairs.len(),
            pairs.join(", ")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let msg = v["error"].as_str().map_or(body.clone(), str::to_string);
        eprintln!("replay failed ({status}): {msg}");
        Ok(ExitCode::from(1))
    }
}
