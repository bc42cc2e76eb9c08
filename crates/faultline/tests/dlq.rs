//! Dead letters: a poison WAL record (a valid record whose payload cannot be processed) is
//! tried a bounded number of times, moved to `DATA_DIR/dlq` with its reason, and the
//! records behind it are indexed without waiting; `faultline dlq list`, `replay` and
//! `drop` act on it, and /metrics and /api/v1/status count it.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline_model::ExportTraceServiceRequest;
use faultline_model::envelope::{Protocol, encode_request};
use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value};
use faultline_model::otlp::resource::Resource;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span};
use faultline_wal::{NoopObserver, Wal, WalOptions};

use common::{Server, http_get, metric};

fn request(trace: u8) -> Vec<u8> {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue("dlq-svc".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![trace; 16],
                    span_id: vec![trace; 8],
                    name: "op".into(),
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_001_000_000,
                    ..Span::default()
                }],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    encode_request(Protocol::OtlpHttpProtobuf, 1, &req)
}

fn dlq(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::BIN)
        .arg("dlq")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_poison_record_becomes_a_dead_letter_and_the_records_behind_it_are_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        // A good record, a poison one, a good one, written straight to the WAL.
        let (wal, _) = Wal::open(
            &data.join("wal"),
            WalOptions::default(),
            Arc::new(NoopObserver),
        )
        .unwrap();
        assert_eq!(wal.append_blocking(request(1)).unwrap().seq, 1);
        assert_eq!(wal.append_blocking(b"FLIN poison".to_vec()).unwrap().seq, 2);
        assert_eq!(wal.append_blocking(request(3)).unwrap().seq, 3);
    }
    let server = Server::start(&data, &[]);
    let api = server.api;
    for t in ["01", "03"] {
        wait_for(
            &format!("trace {t} indexed behind the poison record"),
            || {
                http_get(api, &format!("/api/traces/{}", t.repeat(16)))
                    .unwrap()
                    .0
                    == 200
            },
        );
    }
    wait_for("the dead letter is counted", || {
        metric(&server.metrics(), "faultline_dlq_records") == 1.0
    });
    assert_eq!(metric(&server.metrics(), "faultline_dlq_moved"), 1.0);
    let (ok, text) = dlq(&["list", data.to_str().unwrap(), "--json"]);
    assert!(ok, "{text}");
    let letter: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(letter["seq"], 2);
    assert_eq!(letter["attempts"], 3);
    assert!(
        letter["reason"].as_str().unwrap().contains("undecodable"),
        "{letter}"
    );
    let part = common::status_part(api, "dead letters");
    assert_eq!(part["state"], "degraded", "{part}");
    assert!(
        part["action"]
            .as_str()
            .unwrap()
            .contains("faultline dlq list")
    );

    // Replay: the record goes back into the WAL, fails again, and returns as a new letter.
    let (ok, text) = dlq(&[
        "replay",
        "--all",
        "--api",
        &format!("http://127.0.0.1:{api}"),
    ]);
    assert!(ok && text.contains("replayed 1 dead letters"), "{text}");
    wait_for("the replayed record is a dead letter again", || {
        let (_, text) = dlq(&["list", data.to_str().unwrap(), "--json"]);
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| l["seq"] == 4)
    });
    assert_eq!(metric(&server.metrics(), "faultline_dlq_records"), 1.0);

    // Drop: gone for good.
    let (ok, text) = dlq(&["drop", data.to_str().unwrap()]);
    assert!(
        !ok && text.contains("--all"),
        "a drop names what it drops: {text}"
    );
    let (ok, text) = dlq(&["drop", data.to_str().unwrap(), "--all"]);
    assert!(ok && text.contains("dropped 1"), "{text}");
    assert_eq!(metric(&server.metrics(), "faultline_dlq_records"), 0.0);
}
