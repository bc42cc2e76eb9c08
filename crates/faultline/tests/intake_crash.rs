//! Crash safety of intake end to end: faultline is killed with SIGKILL at random moments
//! under load, restarted each time, and every span whose request was acknowledged must be
//! in the WAL afterwards. Every start-up must succeed without quarantining anything.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Server, metric};

/// xorshift, seeded from the clock and printed, so a failing run can be repeated with
/// FAULTLINE_CRASH_SEED.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

const NO_SEAL: &[&str] = &[
    "--block-max-spans",
    "1000000000",
    "--block-max-age-secs",
    "100000",
];

#[test]
fn every_acknowledged_span_survives_sigkill() {
    let seed = std::env::var("FAULTLINE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed: FAULTLINE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cycles = 24;
    let mut ack_logs = Vec::new();
    for cycle in 0..cycles {
        if cycle % 6 == 5 {
            // Kill during start-up (recovery) too: the next start must still succeed.
            let mut early = Command::new(BIN)
                .args(["serve", "--data-dir"])
                .arg(&data)
                .args(NO_SEAL)
                .args(["--otlp-grpc", &format!("127.0.0.1:{}", common::free_port())])
                .args(["--otlp-http", &format!("127.0.0.1:{}", common::free_port())])
                .args(["--zipkin", &format!("127.0.0.1:{}", common::free_port())])
                .args(["--http", &format!("127.0.0.1:{}", common::free_port())])
                .args(["--sampling", &format!("127.0.0.1:{}", common::free_port())])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.range(0, 30)));
            early.kill().unwrap();
            early.wait().unwrap();
        }
        let mut server = Server::start(&data, NO_SEAL);
        let m = server.metrics();
        assert_eq!(
            metric(&m, "faultline_wal_quarantined_segments"),
            0.0,
            "cycle {cycle}: a crash must never corrupt a segment\n{}",
            server.log_text()
        );
        let (protocol, endpoint) = if cycle % 2 == 0 {
            ("http", server.http_url())
        } else {
            ("grpc", server.grpc_url())
        };
        let ack_log = tmp.path().join(format!("ack-{cycle}.log"));
        let load = common::loadgen(&[
            "--protocol",
            protocol,
            "--endpoint",
            &endpoint,
            "--duration",
            "1.6",
            "--concurrency",
            "8",
            "--spans-per-request",
            "120",
            "--templates",
            "8",
            "--timeout",
            "3",
            "--ack-log",
            ack_log.to_str().unwrap(),
            "--seed",
            &rng.next().to_string(),
        ]);
        std::thread::sleep(Duration::from_millis(rng.range(100, 1400)));
        server.kill9();
        load.wait();
        ack_logs.push(ack_log);
    }
    // One last start-up runs recovery over the final crash.
    let mut server = Server::start(&data, NO_SEAL);
    server.stop();

    let mut spans_by_trace: HashMap<String, u64> = HashMap::new();
    let scan = faultline_wal::scan_dir(&data.join("wal"), |_, rec| {
        let env = faultline_model::envelope::decode(rec.payload).unwrap();
        let req = env.request().unwrap();
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for sp in &ss.spans {
                    let id: String = sp.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    *spans_by_trace.entry(id).or_default() += 1;
                }
            }
        }
    })
    .unwrap();
    assert!(
        scan.quarantined.is_empty(),
        "nothing quarantined: {:?}",
        scan.quarantined
    );
    assert!(
        scan.segments.iter().all(|s| s.problem.is_none()),
        "recovery left a clean log: {:?}",
        scan.segments
    );

    let (mut acked_requests, mut acked_spans, mut lost) = (0u64, 0u64, Vec::new());
    for log in &ack_logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let mut parts = line.split(' ');
            let (_n, spans, ids) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let spans: u64 = spans.parse().unwrap();
            acked_requests += 1;
            acked_spans += spans;
            let found: u64 = ids
                .split(',')
                .map(|id| spans_by_trace.get(id).copied().unwrap_or(0))
                .sum();
            if found != spans {
                lost.push(format!("{line:.80}: {found} of {spans} spans in the WAL"));
            }
        }
    }
    eprintln!(
        "{cycles} kills: {acked_requests} requests / {acked_spans} spans acknowledged, {} lost",
        lost.len()
    );
    assert!(
        acked_requests >= 100,
        "the load must actually be acknowledged to prove anything ({acked_requests} requests)"
    );
    assert!(
        lost.is_empty(),
        "acknowledged spans lost (seed {seed}):\n{}",
        lost.join("\n")
    );
}
