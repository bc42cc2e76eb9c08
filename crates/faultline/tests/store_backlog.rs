//! Live data first: faultline is killed with more than a million acknowledged spans in the
//! WAL and none in blocks, then restarted. New spans must be queryable within 2 s of their
//! acknowledgement while the backlog is still replaying, and the backlog's traces are
//! readable by id (from the WAL) before their replay, with the spans the store answers
//! once they are indexed; answers say the backlog is pending (spans and oldest time);
//! afterwards the backlog is fully indexed and every
//! acknowledged span is in the store exactly once.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, http_get, metric, one_span_request, post_otlp, status_part};

/// Spans to leave in the WAL before the restart: a million, or
/// `FAULTLINE_BACKLOG_SPANS` (`scripts/bench-degradation` runs larger backlogs).
fn backlog_spans() -> u64 {
    std::env::var("FAULTLINE_BACKLOG_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn loadgen(server: &Server, log: &std::path::Path) -> u64 {
    let v = common::loadgen(&[
        "--protocol",
        "http",
        "--endpoint",
        &server.http_url(),
        "--duration",
        "3",
        "--concurrency",
        "4",
        "--spans-per-request",
        "1000",
        "--templates",
        "8",
        "--ack-log",
        log.to_str().unwrap(),
    ])
    .wait();
    v["spans_ok"].as_u64().unwrap()
}

fn stored_spans(server: &Server) -> f64 {
    let m = server.metrics();
    metric(&m, "faultline_store_block_spans") + metric(&m, "faultline_store_head_spans")
}

#[test]
fn after_a_restart_live_spans_come_first_and_the_backlog_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Nothing is sealed before the kill: the whole load stays a WAL backlog.
    let want = backlog_spans();
    let block = (want * 3).to_string();
    let mut server = Server::start(
        &data,
        &["--block-max-spans", &block, "--block-max-age-secs", "3600"],
    );
    let mut acked = 0u64;
    let mut logs = Vec::new();
    while acked < want {
        let log = tmp.path().join(format!("ack-{}.log", logs.len()));
        acked += loadgen(&server, &log);
        logs.push(log);
        assert!(
            logs.len() < 10 + (want / 500_000) as usize,
            "loadgen acknowledged only {acked} spans"
        );
    }
    server.kill9();
    eprintln!("backlog: {acked} acknowledged spans");

    let mut server = Server::start(&data, &["--backlog-rate", "100000"]);
    let api = server.api;
    // New traces, one at a time: each must be queryable within 2 s of its
    // acknowledgement, while the backlog is still pending.
    let mut worst = Duration::ZERO;
    let mut live_ids = Vec::new();
    for i in 0..20u64 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(0xfeed_0000_0000_0000u64 + i + 1).to_be_bytes());
        id[8..].copy_from_slice(&(i + 1).to_be_bytes());
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            post_otlp(&server, one_span_request("live", &id, false)),
            200
        );
        let acked_at = Instant::now();
        loop {
            let (code, _) = http_get(api, &format!("/api/traces/{hex}")).unwrap();
            if code == 200 {
                break;
            }
            assert!(
                acked_at.elapsed() < Duration::from_secs(2),
                "live trace {hex} not queryable within 2 s of its acknowledgement; log:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        worst = worst.max(acked_at.elapsed());
        live_ids.push(hex);
    }
    eprintln!("slowest live trace became queryable {worst:?} after its acknowledgement");

    // Traces of the backlog are readable by id before their replay, from the WAL: a
    // sample of what was acknowledged before the kill, each whole (the span counts are
    // checked against the indexed answers below).
    let ids: Vec<String> = logs
        .iter()
        .flat_map(|l| common::acked_trace_ids(l))
        .collect();
    let step = (ids.len() / 300).max(1);
    let before: Vec<(String, usize)> = ids
        .iter()
        .step_by(step)
        .map(|id| {
            let (code, body) = http_get(api, &format!("/api/traces/{id}")).unwrap();
            assert_eq!(
                code, 200,
                "backlog trace {id} not readable before its replay: {body}"
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (id.clone(), v["data"][0]["spans"].as_array().unwrap().len())
        })
        .collect();
    let m = server.metrics();
    assert!(metric(&m, "faultline_pending_trace_records") > 0.0);
    assert!(
        metric(&m, "faultline_backlog_replayed_spans") < acked as f64 / 2.0,
        "most of the backlog must still wait for its replay when its traces are read"
    );

    // The backlog was still replaying: the status and the answers say so.
    let backlog = status_part(api, "backlog");
    assert_eq!(backlog["state"], "degraded", "{backlog}");
    eprintln!("backlog after the live checks: {backlog}");
    let pending = backlog["details"]["pending_spans"].as_u64().unwrap();
    assert!(
        pending > 0 && pending <= acked,
        "the backlog must still be pending after the live checks: {backlog}"
    );
    assert!(backlog["details"]["oldest"].is_string(), "{backlog}");
    let (_, body) = http_get(api, &format!("/api/traces/{}", live_ids[0])).unwrap();
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reasons = answer["partial"]["reasons"].to_string();
    assert!(
        reasons.contains("backlog") && reasons.contains("received since"),
        "answers name the pending backlog: {answer}"
    );

    // Only answers about times the backlog can touch say so: yesterday's are complete.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let summaries = |start: u64, end: u64| -> serde_json::Value {
        let (code, body) = http_get(
            api,
            &format!("/api/v1/traces/summaries?start={start}&end={end}&limit=1"),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let recent = summaries(now_s - 600, now_s);
    assert!(
        recent["partialReasons"].to_string().contains("backlog"),
        "{recent}"
    );
    let yesterday = summaries(now_s - 2 * 86_400, now_s - 86_400);
    assert!(
        !yesterday["partialReasons"].to_string().contains("backlog"),
        "{yesterday}"
    );

    // The backlog finishes replaying in the background.
    let start = Instant::now();
    while status_part(api, "backlog")["state"] != "ok" {
        assert!(
            start.elapsed() < Duration::from_secs(90 + want / 20_000),
            "the backlog did not finish: {}",
            status_part(api, "backlog")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "backlog replayed {:?} after the live checks",
        start.elapsed()
    );
    // Every acknowledged span is stored exactly once (nothing was in blocks before).
    assert_eq!(
        stored_spans(&server),
        (acked + live_ids.len() as u64) as f64
    );
    let m = server.metrics();
    assert_eq!(metric(&m, "faultline_backlog_replayed_spans"), acked as f64);
    // Once indexed, nothing stays noted as pending (the sweep runs every second).
    let start = Instant::now();
    while metric(&server.metrics(), "faultline_pending_trace_records") > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pending records not forgotten"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What was read from the WAL before the replay is what the store answers now.
    for (id, spans) in &before {
        let (_, body) = http_get(api, &format!("/api/traces/{id}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["data"][0]["spans"].as_array().unwrap().len(),
            *spans,
            "{id}"
        );
    }
    // A sample of acknowledged traces, whole.
    let step = (ids.len() / 500).max(1);
    for id in ids.iter().step_by(step) {
        let (code, body) = http_get(api, &format!("/api/traces/{id}")).unwrap();
        assert_eq!(code, 200, "acknowledged trace {id} missing: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(!v["partial"].to_string().contains("backlog"), "{v}");
    }
    for id in &live_ids {
        assert_eq!(http_get(api, &format!("/api/traces/{id}")).unwrap().0, 200);
    }

    // After another restart nothing is replayed twice.
    server.stop();
    let server = Server::start(&data, &[]);
    let start = Instant::now();
    while stored_spans(&server) < (acked + live_ids.len() as u64) as f64
        && start.elapsed() < Duration::from_secs(60 + want / 20_000)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stored_spans(&server),
        (acked + live_ids.len() as u64) as f64
    );
}

#[cfg(target_os = "linux")]
/// The nice value in a `/proc` `stat` line: field 19, counted after the parenthesised
/// name (which may hold spaces).
fn nice_in(stat: &str) -> i32 {
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

#[cfg(target_os = "linux")]
/// Each thread of process `pid` by name (the kernel's 15-byte `comm`) with its nice value.
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // the thread ended
        };
        let name = &stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()];
        out.push((name.to_string(), nice_in(&stat)));
    }
    out
}

/// The indexing threads run nicer than the rest of the process (store.indexing_nice,
/// default 10), so reads get the cores first during a catch-up; `--indexing-nice 0` keeps
/// them at the process's priority. Intake, the WAL writer and the readers keep it.
#[cfg(target_os = "linux")]
#[test]
fn indexing_threads_run_below_the_readers_priority() {
    for (flags, added) in [
        (&[][..], 10),
        (&["--indexing-nice", "4"][..], 4),
        (&["--indexing-nice", "0"][..], 0),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(&tmp.path().join("data"), flags);
        // A lookup starts the lookup threads; a span keeps the pipeline busy for a moment.
        assert_eq!(
            post_otlp(&server, one_span_request("svc", &[7; 16], false)),
            200
        );
        let missing = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            http_get(server.api, &format!("/api/traces/{missing}"))
                .unwrap()
                .0,
            404
        );
        // A search starts the search threads.
        let (code, body) = http_get(server.api, "/api/traces?service=svc&lookback=1h").unwrap();
        assert_eq!(code, 200, "{body}");
        let pid = server.child.id();
        let threads = thread_nices(pid);
        // The main thread's (the process's) nice value.
        let base = nice_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap());
        // Already at 10 or more, the default raise could not be told from none.
        assert!(
            base <= 9,
            "run the tests at a nice value below 10, not {base}"
        );
        let want = base + added;
        for name in ["store-sealer", "store-backlog", "store-pipeline"] {
            let nice = threads.iter().find(|(n, _)| n == name).map(|t| t.1);
            assert_eq!(nice, Some(want), "{name} with {flags:?}: {threads:?}");
        }
        for name in ["wal-writer", "faultline-looku", "faultline-searc", "checks"] {
            let nice = threads
                .iter()
                .find(|(n, _)| n.starts_with(name))
                .map(|t| t.1);
            assert_eq!(nice, Some(base), "{name} with {flags:?}: {threads:?}");
        }
        // Intake's and the API's runtime threads (named after the binary, as the main
        // thread is) keep the process's priority.
        let runtime: Vec<_> = threads.iter().filter(|(n, _)| n == "faultline").collect();
        assert!(runtime.len() >= 2, "{threads:?}");
        assert!(runtime.iter().all(|t| t.1 == base), "{threads:?}");
    }
}
