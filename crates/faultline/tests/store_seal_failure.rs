//! Sealing fails (here the blocks directory is replaced by a file, as a full or broken
//! disk would make writes fail): acknowledgements go on while the WAL has room, then become
//! retryable refusals; the status says sealing is failing; once the directory is back,
//! everything acknowledged is sealed and returned by `/api/traces/{id}`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, http_get, metric};

#[test]
fn acknowledged_spans_survive_a_sealing_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--block-max-spans",
            "2000",
            "--block-max-age-secs",
            "1",
            "--wal-segment-bytes",
            "1048576",
            "--wal-max-bytes",
            "8388608",
        ],
    );
    // Break sealing before any block is written.
    let outage = common::SealingOutage::start(&data);

    let log = tmp.path().join("ack.log");
    let load = Command::new(BIN)
        .args([
            "loadgen",
            "--protocol",
            "http",
            "--endpoint",
            &server.http_url(),
        ])
        .args(["--duration", "4", "--concurrency", "4", "--rate", "20000"])
        .args([
            "--spans-per-request",
            "100",
            "--templates",
            "4",
            "--timeout",
            "3",
        ])
        .arg("--ack-log")
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs: sealing is reported as failing.
    let started = Instant::now();
    while metric(&server.metrics(), "faultline_store_seal_failing") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "sealing fails");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sealing = common::status_part(server.api, "sealing");
    assert_eq!(sealing["state"], "degraded", "{sealing}");
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The WAL filled up: later requests were refused, retryably, and none failed.
    let refused: u64 = text
        .split("refused ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(refused > 0, "the WAL budget turned writes away: {text}");
    assert!(text.contains("failed 0"), "{text}");

    // Space is back: everything acknowledged is sealed and queryable.
    outage.repair();
    let started = Instant::now();
    loop {
        let m = server.metrics();
        if metric(&m, "faultline_store_seal_failing") == 0.0
            && metric(&m, "faultline_store_indexed_seq")
                >= metric(&m, "faultline_wal_committed_seq")
            && metric(&m, "faultline_store_head_spans") == 0.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sealing resumed:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ids = Vec::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        if let Some(list) = line.split(' ').nth(2) {
            ids.extend(list.split(',').map(str::to_string));
        }
    }
    assert!(
        ids.len() > 100,
        "load was acknowledged before the WAL filled: {}",
        ids.len()
    );
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| {
            http_get(server.api, &format!("/api/traces/{id}"))
                .unwrap()
                .0
                != 200
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged traces missing: {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)]
    );
}
