//! Retention end to end: spans older than the retention are queryable while in the head,
//! then their block is deleted: they are gone from the API and the disk usage falls.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use prost::Message;

use common::{Server, http_get, metric};
use faultline_model::ExportTraceServiceRequest;
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span};

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn data_past_retention_leaves_the_api_and_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(
        &data,
        &["--retention-secs", "3600", "--block-max-age-secs", "1"],
    );
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        - 7_200_000_000_000;
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (1..=200u64)
                    .map(|i| Span {
                        trace_id: [7; 16].to_vec(),
                        span_id: i.to_be_bytes().to_vec(),
                        name: format!("old-{i}"),
                        start_time_unix_nano: two_hours_ago + i,
                        end_time_unix_nano: two_hours_ago + i + 1_000_000,
                        ..Span::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    assert_eq!(common::post_otlp(&server, req.encode_to_vec()), 200);
    let id = "07".repeat(16);
    let blocks = data.join("blocks");
    let (mut seen, mut peak_bytes) = (false, 0u64);
    let started = Instant::now();
    loop {
        let (code, _) = http_get(server.api, &format!("/api/traces/{id}")).unwrap();
        peak_bytes = peak_bytes.max(dir_bytes(&blocks));
        if code == 200 {
            seen = true;
        }
        let m = server.metrics();
        let sealed_and_gone = metric(&m, "faultline_store_indexed_seq") >= 1.0
            && metric(&m, "faultline_store_head_spans") == 0.0
            && metric(&m, "faultline_store_blocks") == 0.0;
        if seen && code == 404 && sealed_and_gone && peak_bytes > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "seen {seen}, last answer {code}, peak {peak_bytes} bytes:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = dir_bytes(&blocks);
    assert!(
        after < peak_bytes,
        "disk usage falls: {peak_bytes} -> {after} bytes"
    );
    assert!(
        std::fs::read_dir(&blocks).unwrap().all(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            !n.ends_with(".parquet") && !n.ends_with(".tidx")
        }),
        "no block files left"
    );
}
