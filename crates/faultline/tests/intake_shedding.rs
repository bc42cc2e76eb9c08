//! Shedding that keeps whole error traces: SDK-sized batches (510 spans, 30 traces of 17
//! spans) at ten times the store's capacity, as an OpenTelemetry SDK exports them: most
//! batches hold a few failing traces among healthy ones, a quarter hold none.
//!
//! Under pressure a batch with failing traces is answered 200 with OTLP partial success:
//! its failing traces are kept whole and its healthy traces are shed, counted as rejected
//! with the reason; a batch without any is refused whole with a retryable 429. Afterwards
//! every failing trace of every acknowledged batch is queryable with all its spans, a shed
//! healthy trace is not stored, and the server's shed counter equals what the clients
//! were told.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;

use common::{Server, http_get, metric};
use faultline_model::ExportTraceServiceResponse;

const TRACES: usize = 30;
const SPANS_PER_TRACE: usize = 17;
/// Index rate the store is capped at: the capacity the load is ten times of.
const CAPACITY: f64 = 20_000.0;

/// The trace id of trace `k` of batch `n`.
fn trace_id(n: u64, k: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    let n = n + 1;
    id[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    id[8..].copy_from_slice(&((n << 8) | k as u64).to_be_bytes());
    id
}

/// Which traces of batch `n` fail: none in every fourth batch, else every fifth trace.
fn failing(n: u64, k: usize) -> bool {
    n % 4 != 3 && k % 5 == 2
}

/// Batch `n`: 30 traces of 17 spans, the failing ones with one error span.
fn batch(n: u64) -> Vec<u8> {
    use faultline_model::otlp::trace::{Span, Status};
    let now = common::now_ns();
    let mut spans = Vec::with_capacity(TRACES * SPANS_PER_TRACE);
    for k in 0..TRACES {
        let id = trace_id(n, k);
        for i in 0..SPANS_PER_TRACE {
            spans.push(Span {
                trace_id: id.to_vec(),
                span_id: (((k as u64) << 16) | (i as u64 + 1)).to_be_bytes().to_vec(),
                parent_span_id: if i == 0 {
                    Vec::new()
                } else {
                    ((k as u64) << 16 | 1).to_be_bytes().to_vec()
                },
                name: format!("op-{}", i % 5),
                start_time_unix_nano: now + i as u64 * 1000,
                end_time_unix_nano: now + i as u64 * 1000 + 300_000,
                status: (failing(n, k) && i == SPANS_PER_TRACE / 2).then(|| Status {
                    code: 2,
                    message: "payment declined".into(),
                }),
                ..Span::default()
            });
        }
    }
    common::otlp_request("shop", spans)
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Default)]
struct Tally {
    /// Batches acknowledged whole, with partial success, or refused with 429.
    whole: u64,
    partial: u64,
    refused: u64,
    /// Spans the server said it shed (partial success) or refused (429).
    shed_spans: u64,
    /// Failing traces of acknowledged batches, and healthy traces shed from them.
    kept_failing: Vec<[u8; 16]>,
    shed_healthy: Vec<[u8; 16]>,
    problems: Vec<String>,
}

async fn send(url: String, rate: f64, secs: f64) -> Tally {
    let client = common::reqwest_client();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let per_batch = (TRACES * SPANS_PER_TRACE) as f64;
    let interval = Duration::from_secs_f64(per_batch / rate);
    let limit = Arc::new(tokio::sync::Semaphore::new(128));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        tokio::time::sleep_until((start + interval * n as u32).into()).await;
        let body = batch(n);
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (client, url, tally) = (client.clone(), url.clone(), tally.clone());
        let this = n;
        n += 1;
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(format!("{url}/v1/traces"))
                .header("content-type", "application/x-protobuf")
                .timeout(Duration::from_secs(20))
                .body(body)
                .send()
                .await;
            drop(permit);
            // What came back, read before the tally is locked.
            let answer = match res {
                Ok(r) if r.status() == 200 => {
                    let bytes = r.bytes().await.unwrap_or_default();
                    Ok(ExportTraceServiceResponse::decode(&bytes[..]).unwrap())
                }
                Ok(r) => Err((
                    r.status().as_u16(),
                    r.headers().contains_key("retry-after"),
                    String::new(),
                )),
                Err(e) => Err((0, false, e.to_string())),
            };
            let failing_ids: Vec<[u8; 16]> = (0..TRACES)
                .filter(|&k| failing(this, k))
                .map(|k| trace_id(this, k))
                .collect();
            let mut t = tally.lock().unwrap();
            match answer {
                Ok(resp) => {
                    let rejected = resp
                        .partial_success
                        .as_ref()
                        .map_or(0, |p| p.rejected_spans);
                    if rejected == 0 {
                        t.whole += 1;
                    } else {
                        let msg = resp
                            .partial_success
                            .map(|p| p.error_message)
                            .unwrap_or_default();
                        if !msg.contains("shed") {
                            t.problems.push(format!(
                                "batch {this}: partial success without the reason: {msg}"
                            ));
                        }
                        let healthy = (TRACES - failing_ids.len()) * SPANS_PER_TRACE;
                        if rejected as usize != healthy {
                            t.problems.push(format!(
                                "batch {this}: {rejected} spans shed, {healthy} healthy"
                            ));
                        }
                        t.partial += 1;
                        t.shed_spans += rejected as u64;
                        t.shed_healthy.extend(
                            (0..TRACES)
                                .filter(|&k| !failing(this, k))
                                .map(|k| trace_id(this, k)),
                        );
                    }
                    t.kept_failing.extend(failing_ids);
                }
                Err((429, true, _)) => {
                    if !failing_ids.is_empty() {
                        t.problems
                            .push(format!("batch {this} with failing traces refused whole"));
                    }
                    t.refused += 1;
                    t.shed_spans += (TRACES * SPANS_PER_TRACE) as u64;
                }
                Err((code, _, e)) => t.problems.push(format!("batch {this}: HTTP {code} {e}")),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    std::mem::take(&mut *tally.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_sdk_batches_keep_their_failing_traces_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &[
            "--index-rate",
            &CAPACITY.to_string(),
            "--wal-max-bytes",
            "33554432",
            "--wal-segment-bytes",
            "1048576",
            "--block-max-spans",
            "20000",
            "--block-max-age-secs",
            "1",
        ],
    );
    let before = server.metrics();
    // Long enough that what the WAL and the backlog absorb before shedding starts is a
    // small part of the whole (at 5 s, on a slow day, it was 60%).
    let t = send(server.http_url(), CAPACITY * 10.0, 9.0).await;
    eprintln!(
        "batches: {} whole, {} partial, {} refused; {} spans shed; {} failing traces kept",
        t.whole,
        t.partial,
        t.refused,
        t.shed_spans,
        t.kept_failing.len()
    );
    assert!(
        t.problems.is_empty(),
        "{:?}",
        &t.problems[..t.problems.len().min(5)]
    );
    assert!(t.partial > 0, "pressure never built up: {t:?}");
    assert!(
        t.refused > 0,
        "batches without failing traces are refused whole"
    );
    let offered = (t.whole + t.partial + t.refused) * (TRACES * SPANS_PER_TRACE) as u64;
    let healthy_offered = offered - t.kept_failing.len() as u64 * SPANS_PER_TRACE as u64;
    assert!(
        t.shed_spans * 2 > healthy_offered,
        "the normal share is shed: {} of {healthy_offered} healthy spans",
        t.shed_spans
    );
    // The server counted what it told the clients.
    let m = server.metrics();
    let counted: f64 = ["wal", "inflight", "memory"]
        .iter()
        .map(|r| {
            let key =
                format!("faultline_intake_shed_spans_total{{lane=\"normal\",reason=\"{r}\"}}");
            metric(&m, &key) - metric(&before, &key)
        })
        .sum();
    assert_eq!(counted, t.shed_spans as f64);

    // Every failing trace of an acknowledged batch becomes queryable, whole.
    let start = Instant::now();
    for id in &t.kept_failing {
        let id = hex(id);
        loop {
            let (code, body) = http_get(server.api, &format!("/api/traces/{id}")).unwrap();
            let n = (code == 200)
                .then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
                .and_then(|v| v["data"][0]["spans"].as_array().map(Vec::len))
                .unwrap_or(0);
            if n == SPANS_PER_TRACE {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "failing trace {id} not queryable whole: {code}, {n} spans"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "failing traces queryable {:?} after the overload",
        start.elapsed()
    );
    // A healthy trace shed from a partly accepted batch was never stored.
    for id in t.shed_healthy.iter().step_by(97).take(20) {
        let (code, _) = http_get(server.api, &format!("/api/traces/{}", hex(id))).unwrap();
        assert_eq!(code, 404, "shed trace {} was stored", hex(id));
    }
}
