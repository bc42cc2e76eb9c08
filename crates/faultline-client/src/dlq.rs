//! `faultline dlq replay --api URL (--all | SEQ...)`: asks the running server, which owns
//! the WAL, to append dead letters as new records again (`POST /api/v1/dlq/replay`, the
//! `admin` scope when tokens are on); one that fails again comes back.

use crate::ClientError;
use crate::query::{api_error, post};

/// Runs the replay; the exit code (0 replayed, 1 refused).
pub fn replay(api: &str, all: bool, seqs: &[u64]) -> Result<u8, ClientError> {
    if !all && seqs.is_empty() {
        return Err(ClientError(
            "say which dead letters to replay: --all, or their sequence numbers (see `faultline dlq list`)".into(),
        ));
    }
    let query = if all {
        "all=true".to_string()
    } else {
        seqs.iter()
            .map(|s| format!("seq={s}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let url = format!("{}/api/v1/dlq/replay?{query}", api.trim_end_matches('/'));
    let (status, v) = post(&url, String::new())?;
    if (200..300).contains(&status) {
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
        Ok(0)
    } else {
        eprintln!("replay failed ({status}): {}", api_error(&v));
        Ok(1)
    }
}
