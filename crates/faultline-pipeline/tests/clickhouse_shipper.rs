//! The ClickHouse writer against a real ClickHouse server: every acknowledged WAL record
//! reaches ClickHouse, exactly once in answers, across a crash between insert and
//! checkpoint, and across ClickHouse going away and coming back.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use faultline_clickhouse::ClickHouse;
use faultline_clickhouse::testing::{Server, rng};
use faultline_model::envelope::{Protocol, encode_request};
use faultline_model::span::{AttrValue, Origin, Span, SpanKind, StatusCode, to_otlp};
use faultline_pipeline::clickhouse::{ShipError, Shipper, ShipperOptions, Writer};
use faultline_wal::{NoopObserver, Wal, WalOptions};

/// A record of 1-6 traces of 1-10 spans, fresh ids and values; its traces.
fn record(r: &mut impl FnMut(u64) -> u64) -> Vec<Vec<Span>> {
    let base = 1_764_000_000_000_000_000u64;
    (0..1 + r(6))
        .map(|_| {
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&r(u64::MAX).to_be_bytes());
            trace[8..].copy_from_slice(&(r(u64::MAX) | 1).to_be_bytes());
            let service = format!("svc-{}", r(5));
            let origin = Arc::new(Origin {
                resource: vec![
                    (
                        "service.name".into(),
                        AttrValue::Str(service.as_str().into()),
                    ),
                    (
                        "host.name".into(),
                        AttrValue::Str(format!("h{}", r(9)).into()),
                    ),
                ],
                service,
                scope_name: "shipper-test".into(),
                scope_version: String::new(),
            });
            let start = base + r(1_000_000_000_000);
            (0..1 + r(10))
                .map(|i| Span {
                    trace_id: trace,
                    span_id: (r(u64::MAX) | 1).to_be_bytes(),
                    parent_span_id: None,
                    name: format!("op-{}", r(7)),
                    kind: SpanKind::Server,
                    start_ns: start + i * 1000,
                    end_ns: start + i * 1000 + 1 + r(1_000_000_000),
                    status: if r(20) == 0 {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    status_message: String::new(),
                    attributes: vec![(
                        "user.id".into(),
                        AttrValue::Str(format!("{:x}", r(u64::MAX)).into()),
                    )],
                    events: vec![],
                    links: vec![],
                    origin: origin.clone(),
                })
                .collect()
        })
        .collect()
}

/// Appends `n` records to `wal`; returns their traces.
fn append(wal: &Wal, r: &mut impl FnMut(u64) -> u64, n: usize) -> Vec<Vec<Span>> {
    let mut traces = Vec::new();
    for _ in 0..n {
        let rec = record(r);
        let spans: Vec<Span> = rec.iter().flatten().cloned().collect();
        let payload = encode_request(
            Protocol::OtlpHttpProtobuf,
            spans.len() as u32,
            &to_otlp(&spans),
        );
        wal.append_blocking(payload).unwrap();
        traces.extend(rec);
    }
    traces
}

fn check(ch: &ClickHouse, traces: &[Vec<Span>]) {
    let total: usize = traces.iter().map(Vec::len).sum();
    assert_eq!(ch.span_count().unwrap(), total as u64);
    for t in traces {
        let mut want = t.clone();
        want.sort_by_key(|s| (s.start_ns, s.span_id));
        assert_eq!(ch.trace(&t[0].trace_id).unwrap(), want);
    }
}

#[test]
fn every_acknowledged_record_reaches_clickhouse_once_across_a_crash_and_an_outage() {
    let mut server = Server::start();
    let mut r = rng("clickhouse shipper");
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default(), Arc::new(NoopObserver)).unwrap();
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let opts = ShipperOptions {
        batch_spans: 60,
        ..ShipperOptions::default()
    };
    let mut traces = append(&wal, &mut r, 40);
    // Some batches, then a crash between an insert and its checkpoint: the cursor is
    // set back to where it was before the last batches.
    let mut shipper = Shipper::new(ch.clone(), &wal, "clickhouse", opts.clone()).unwrap();
    let mut positions = vec![shipper.position()];
    for _ in 0..3 {
        assert!(shipper.step().unwrap() > 0);
        positions.push(shipper.position());
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    drop(shipper);
    wal.cursor("clickhouse")
        .unwrap()
        .checkpoint(positions[1])
        .unwrap();
    // ClickHouse goes away while records keep arriving: steps fail and the cursor stays.
    server.stop();
    traces.extend(append(&wal, &mut r, 25));
    let mut shipper = Shipper::new(ch.clone(), &wal, "clickhouse", opts.clone()).unwrap();
    assert_eq!(shipper.position(), positions[1]);
    for _ in 0..2 {
        let e = shipper.step().unwrap_err();
        assert!(matches!(e, ShipError::ClickHouse(_)), "{e}");
        assert_eq!(shipper.position(), positions[1]);
    }
    assert!(shipper.stats().last_error.lock().unwrap().is_some());
    // It comes back: the waiting batch goes first, then everything else.
    server.restart();
    while shipper.step().unwrap() > 0 {}
    assert_eq!(shipper.position(), wal.committed_seq() + 1);
    let stats = shipper.stats();
    assert_eq!(stats.failures.load(Ordering::Relaxed), 2);
    assert!(stats.last_error.lock().unwrap().is_none());
    check(&ch, &traces);
    // `run` on a thread ships what arrives next, and stops when told.
    traces.extend(append(&wal, &mut r, 10));
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let runner = std::thread::spawn(move || shipper.run(&s));
    let want = wal.committed_seq() + 1;
    let started = Instant::now();
    while wal.cursor("clickhouse").unwrap().position() < want {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "run shipped nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    check(&ch, &traces);
    // A record that does not decode is counted and passed, not retried for ever: the
    // cursor moves past it, so the WAL can be truncated there.
    wal.append_blocking(b"not an envelope".to_vec()).unwrap();
    let mut shipper = Shipper::new(ch.clone(), &wal, "clickhouse", opts).unwrap();
    assert_eq!(shipper.step().unwrap(), 0);
    assert_eq!(shipper.stats().undecodable.load(Ordering::Relaxed), 1);
    assert_eq!(shipper.position(), wal.committed_seq() + 1);
    check(&ch, &traces);
}

/// Waits up to 30 s for `f`.
fn within(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_writer_thread_reports_how_far_behind_it_is_and_why() {
    let mut server = Server::start();
    let mut r = rng("clickhouse writer");
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default(), Arc::new(NoopObserver)).unwrap();
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let opts = ShipperOptions {
        batch_spans: 60,
        backoff: (Duration::from_millis(50), Duration::from_millis(200)),
        ..ShipperOptions::default()
    };
    let mut traces = append(&wal, &mut r, 30);
    let mut shipper = Shipper::new(ch.clone(), &wal, "clickhouse", opts).unwrap();
    // The pipeline's truncation floor: nothing may go before the chunk the writer rebuilds.
    let floor = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    shipper.publish_keep_from(floor.clone());
    assert_eq!(floor.load(Ordering::SeqCst), 0);
    let writer = Writer::spawn(shipper, wal.clone()).unwrap();
    let view = writer.view();
    within("the writer shipped nothing", || view.behind() == 0);
    assert_eq!(view.partial_reason(), None);
    check(&ch, &traces);
    // ClickHouse goes away: what arrives waits, and answers say why they may be partial.
    server.stop();
    traces.extend(append(&wal, &mut r, 5));
    within(
        "no partial reason naming the failure while ClickHouse is down",
        || {
            view.partial_reason()
                .is_some_and(|r| r.contains("cannot reach ClickHouse"))
        },
    );
    let health = view.health("http://ch");
    assert_eq!(health.health, faultline_model::health::Health::Degraded);
    assert!(health.action.unwrap().contains("http://ch"));
    let reason = view.partial_reason().unwrap();
    assert!(reason.contains("5 acknowledged WAL records"), "{reason}");
    assert!(reason.contains("cannot reach ClickHouse"), "{reason}");
    server.restart();
    within("the writer did not catch up", || view.behind() == 0);
    assert_eq!(view.partial_reason(), None);
    let health = view.health("http://ch");
    assert_eq!(
        health.health,
        faultline_model::health::Health::Ok,
        "{health:?}"
    );
    assert!(view.stats().failures.load(Ordering::Relaxed) > 0);
    writer.shutdown();
    check(&ch, &traces);
    // Records behind a stopped writer are counted.
    append(&wal, &mut r, 2);
    assert_eq!(view.behind(), 2);
}

/// On ClickHouse a trace by id is read from ClickHouse plus the WAL records still
/// pending: a record must stay pending until the writer has sent it, not only until the
/// node's own store indexed it, or the trace answers 404 between the two (a trace that
/// was readable a moment before).
#[test]
fn pending_records_are_forgotten_when_sent_not_when_indexed() {
    use faultline_model::pending::{PendingTraces, RecordAt};
    let server = Server::start();
    let mut r = rng("pending until shipped");
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default(), Arc::new(NoopObserver)).unwrap();
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let pending = Arc::new(PendingTraces::default());
    let mut records = Vec::new();
    for _ in 0..12 {
        let rec = record(&mut r);
        let spans: Vec<Span> = rec.iter().flatten().cloned().collect();
        let payload = encode_request(
            Protocol::OtlpHttpProtobuf,
            spans.len() as u32,
            &to_otlp(&spans),
        );
        let ack = wal.append_blocking(payload).unwrap();
        let at = RecordAt {
            seq: ack.seq,
            segment: ack.segment,
            offset: ack.offset,
        };
        pending.add(at, rec.iter().map(|t| t[0].trace_id));
        records.push((at, rec));
    }
    let opts = ShipperOptions {
        batch_spans: 40,
        ..ShipperOptions::default()
    };
    let mut shipper = Shipper::new(ch.clone(), &wal, "clickhouse", opts).unwrap();
    shipper.forget_pending_when_sent(pending.clone());
    let reads = faultline_pipeline::pending::WithPending::wrap(
        Arc::new(ch.clone()),
        wal.clone(),
        pending.clone(),
    );
    let every_trace_reads_whole = |stage: &str| {
        for (_, rec) in &records {
            for t in rec {
                let mut want = t.clone();
                want.sort_by_key(|s| (s.start_ns, s.span_id));
                let mut got = reads.trace(&t[0].trace_id).unwrap().spans;
                got.sort_by_key(|s| (s.start_ns, s.span_id));
                assert_eq!(got, want, "{stage}");
            }
        }
    };
    every_trace_reads_whole("nothing indexed or sent");
    // The node's own pipeline indexes everything (and sweeps what is durable) before
    // the writer sends anything.
    for (at, _) in &records {
        pending.remove(at.seq);
    }
    pending.remove_through(wal.committed_seq());
    assert!(records.iter().all(|(at, _)| pending.has_record(at.seq)));
    every_trace_reads_whole("indexed here, not yet in ClickHouse");
    // Batch by batch: what is sent leaves the map, the rest stays.
    let mut steps = 0;
    while shipper.step().unwrap() > 0 {
        steps += 1;
        let sent = shipper.position();
        for (at, rec) in &records {
            assert_eq!(
                pending.has_record(at.seq),
                at.seq >= sent,
                "record {}",
                at.seq
            );
            let in_ch = !ch.trace(&rec[0][0].trace_id).unwrap().is_empty();
            assert_eq!(in_ch, at.seq < sent, "record {}", at.seq);
        }
        every_trace_reads_whole("partly sent");
    }
    assert!(steps > 1, "one batch only: the test shows no partial state");
    assert!(pending.is_empty());
    // A note that comes after its record was sent (intake hears its acknowledgement
    // late) is dropped rather than left for reads to go over.
    let (at, rec) = &records[3];
    pending.add(*at, [rec[0][0].trace_id]);
    assert!(!pending.has_record(at.seq));
    every_trace_reads_whole("all sent");
}
