//! Sealing fails: acknowledgements go on while the WAL has room, then become retryable
//! refusals; the status says sealing is failing and why; once the fault is gone, everything
//! acknowledged is sealed and returned by `/api/traces/{id}`. Two faults: a real full disk
//! (the blocks directory on a small tmpfs, filled up; mounted in a private mount namespace
//! with `unshare`, so no privileges beyond those of the test are needed), and an I/O error
//! (the blocks directory replaced by a file).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, http_get, metric};

const FLAGS: &[&str] = &[
    "--block-max-spans",
    "2000",
    "--block-max-age-secs",
    "1",
    "--wal-segment-bytes",
    "1048576",
    "--wal-max-bytes",
    "8388608",
];

#[test]
fn acknowledged_spans_survive_a_sealing_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, FLAGS);
    // Break sealing before any block is written.
    let outage = common::SealingOutage::start(&data);
    survive_outage(&tmp, &server, "cannot create block directory", move || {
        outage.repair();
    });
}

#[test]
fn acknowledged_spans_survive_a_full_disk_during_sealing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let blocks = data.join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let blocks_arg = blocks.to_str().unwrap().to_string();
    let mut wrapper = mount_namespace();
    wrapper.extend(["sh", "-c"]);
    let server = Server::start_wrapped(
        &data,
        &[
            &wrapper[..],
            &[
                "mount -t tmpfs -o size=16m faultline-test \"$0\" && exec \"$@\"",
                &blocks_arg,
            ],
        ]
        .concat(),
        FLAGS,
    );
    // The test sees the tmpfs through the server's root, /proc/PID/root.
    let inside = std::path::PathBuf::from(format!("/proc/{}/root", server.child.id()))
        .join(blocks.strip_prefix("/").unwrap());
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T %b"])
        .arg(&inside)
        .output()
        .unwrap();
    let fs = String::from_utf8_lossy(&fs.stdout).to_string();
    assert!(
        fs.starts_with("tmpfs "),
        "the blocks are on the tmpfs: {fs}"
    );
    // Fill it: sealing now fails with ENOSPC.
    let filler = inside.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        loop {
            match f.write_all(&chunk).and_then(|()| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
    survive_outage(&tmp, &server, "No space left on device", move || {
        std::fs::remove_file(&filler).unwrap();
    });
}

/// The `unshare` flags that give a private mount namespace where tmpfs can be mounted: as
/// root `--mount` is enough; otherwise an unprivileged user namespace is needed too.
fn mount_namespace() -> Vec<&'static str> {
    let candidates: [&[&'static str]; 2] = [
        &["unshare", "--mount"],
        &["unshare", "--user", "--map-root-user", "--mount"],
    ];
    for c in candidates {
        let probe = Command::new(c[0])
            .args(&c[1..])
            .args([
                "sh",
                "-c",
                "d=$(mktemp -d) && mount -t tmpfs -o size=1m probe \"$d\"",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if probe.is_ok_and(|s| s.success()) {
            return c.to_vec();
        }
    }
    panic!(
        "this test mounts a small tmpfs in a private mount namespace (util-linux `unshare`), \
         which needs root or unprivileged user namespaces; neither works here"
    );
}

/// Runs load against `server` while sealing is broken, checks the outage is reported with
/// `why`, calls `repair`, and checks every acknowledged trace is then returned.
fn survive_outage(tmp: &tempfile::TempDir, server: &Server, why: &str, repair: impl FnOnce()) {
    let log = tmp.path().join("ack.log");
    let load = common::loadgen(&[
        "--protocol",
        "http",
        "--endpoint",
        &server.http_url(),
        "--duration",
        "4",
        "--concurrency",
        "4",
        "--rate",
        "20000",
        "--spans-per-request",
        "100",
        "--templates",
        "4",
        "--timeout",
        "3",
        "--ack-log",
        log.to_str().unwrap(),
    ]);
    // While it runs: sealing is reported as failing.
    let started = Instant::now();
    while metric(&server.metrics(), "faultline_store_seal_failing") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "sealing fails");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sealing = common::status_part(server.api, "sealing");
    assert_eq!(sealing["state"], "degraded", "{sealing}");
    assert!(
        sealing["summary"].as_str().unwrap().contains(why),
        "the status says why: {sealing}"
    );
    let summary = load.wait();
    // The WAL filled up: later requests were refused, retryably, and none failed.
    let refused = summary["requests_refused"].as_u64().unwrap();
    assert!(refused > 0, "the WAL budget turned writes away: {summary}");
    assert_eq!(summary["requests_failed"], 0, "{summary}");

    // The fault is gone: everything acknowledged is sealed and queryable.
    repair();
    let started = Instant::now();
    loop {
        let m = server.metrics();
        if metric(&m, "faultline_store_seal_failing") == 0.0
            && metric(&m, "faultline_store_indexed_seq")
                >= metric(&m, "faultline_wal_committed_seq")
            && metric(&m, "faultline_store_head_spans") == 0.0
            && metric(&m, "faultline_backlog_ranges") == 0.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sealing resumed:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids = common::acked_trace_ids(&log);
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
