//! Durability end to end: under loadgen traffic faultline is killed with SIGKILL at random
//! moments and restarted, with blocks small enough that sealing and WAL truncation happen
//! throughout; afterwards every acknowledged trace id is returned, whole, by
//! `/api/traces/{id}`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Server, metric};

const STORE_FLAGS: &[&str] = &[
    "--block-max-spans",
    "15000",
    "--block-max-age-secs",
    "1",
    "--wal-segment-bytes",
    "1048576",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_trace_is_queryable_after_sigkills() {
    let mut rand = common::seeded_rand("store crash test");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut logs = Vec::new();
    for cycle in 0..10 {
        let mut server = Server::start(&data, STORE_FLAGS);
        let log = tmp.path().join(format!("ack-{cycle}.log"));
        let endpoint = if cycle % 2 == 0 {
            server.http_url()
        } else {
            server.grpc_url()
        };
        let load = common::loadgen(&[
            "--protocol",
            if cycle % 2 == 0 { "http" } else { "grpc" },
            "--endpoint",
            &endpoint,
            "--duration",
            "1.5",
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
        std::thread::sleep(Duration::from_millis(rand(300, 1400)));
        server.kill9();
        load.wait();
        logs.push(log);
    }
    let server = Server::start(&data, STORE_FLAGS);
    // Let the replay of the WAL backlog finish, then check blocks were sealed (and the
    // WAL truncated) along the way, so the answers below come from blocks as well.
    let started = std::time::Instant::now();
    loop {
        let m = server.metrics();
        let caught_up = metric(&m, "faultline_store_indexed_seq")
            >= metric(&m, "faultline_wal_committed_seq")
            && metric(&m, "faultline_backlog_ranges") == 0.0;
        if caught_up && metric(&m, "faultline_store_blocks") >= 2.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replay and sealing did not finish:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut expected: Vec<(String, u64)> = Vec::new();
    let mut requests = 0;
    for log in &logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let mut p = line.split(' ');
            let (_, _spans, ids) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            requests += 1;
            for id in ids.split(',') {
                expected.push((id.to_string(), 0));
            }
        }
    }
    assert!(
        requests >= 50,
        "load was acknowledged ({requests} requests)"
    );
    let client = common::reqwest_client();
    let base = format!("http://127.0.0.1:{}", server.api);
    let mut missing = Vec::new();
    let mut checked = 0usize;
    for chunk in expected.chunks(64) {
        let futs = chunk.iter().map(|(id, _)| {
            let url = format!("{base}/api/traces/{id}");
            let client = client.clone();
            async move {
                // Replay after restart may still be running: retry briefly.
                for _ in 0..200 {
                    let r = client.get(&url).send().await.unwrap();
                    if r.status().as_u16() == 200 {
                        let v: serde_json::Value =
                            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                        let n = v["data"][0]["spans"]
                            .as_array()
                            .map(|a| a.len())
                            .unwrap_or(0);
                        if (5..=30).contains(&n) {
                            return None;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Some(url)
            }
        });
        let mut set = tokio::task::JoinSet::new();
        for f in futs {
            set.spawn(f);
        }
        while let Some(r) = set.join_next().await {
            checked += 1;
            if let Some(url) = r.unwrap() {
                missing.push(url);
            }
        }
    }
    eprintln!(
        "{requests} acknowledged requests, {checked} traces checked, {} missing",
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged traces missing (the seed is printed above): {:?}",
        &missing[..missing.len().min(10)]
    );
}
