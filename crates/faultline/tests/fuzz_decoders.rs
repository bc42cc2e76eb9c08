//! Fuzzing of the decoders that read what other programs and the disk hand us: OTLP
//! protobuf and JSON, Zipkin v2 JSON, the WAL's envelope, segment and record readers, the
//! selector, assertion and rule languages, and the query parameter parsers; the files and
//! control bodies operators hand us (token file, sampling policy, experiment file, fault
//! proxy and toxic bodies, probe definitions, alert rules); a store whose
//! block, trace-id index, search index, rollup or manifest file is damaged; then the
//! intake routes of a running server (gzip bodies included).
//!
//! Property-based with arbitrary bytes and with mutations of valid inputs (bytes flipped,
//! inserted, removed, truncated, spliced), because the stable toolchain here has no
//! coverage-guided fuzzer. The property: no panic, and every answer is a value or an
//! error, never a crash; decoded requests also go through validation and conversion. The
//! test suite runs a bounded number of cases per decoder (`FAULTLINE_FUZZ_CASES`, default
//! 2,000); `scripts/fuzz` runs many more. A crash found becomes a case in `regressions()`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::Server;
use faultline_model::envelope::{self, Protocol};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;

/// Cases per decoder (`FAULTLINE_FUZZ_CASES`).
fn cases() -> u32 {
    std::env::var("FAULTLINE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// One change to a valid input.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// Copies a slice of the input over another place (repeats fields, breaks lengths).
    Splice(usize, usize, usize),
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len().max(1);
        match e {
            Edit::Flip(at, x) => {
                if !v.is_empty() {
                    v[at % n] ^= x | 1;
                }
            }
            Edit::Insert(at, bytes) => {
                let at = at % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Edit::Remove(at, len) => {
                let at = at % n;
                let end = (at + len).min(v.len());
                if at < end {
                    v.drain(at..end);
                }
            }
            Edit::Truncate(at) => v.truncate(at % n),
            Edit::Splice(from, len, to) => {
                if !v.is_empty() {
                    let from = from % v.len();
                    let end = (from + len).min(v.len());
                    let piece = v[from..end].to_vec();
                    let to = to % (v.len() + 1);
                    v.splice(to..to, piece);
                }
            }
        }
    }
    v
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, x)| Edit::Flip(a, x)),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'"'),
                    Just(b'{'),
                    Just(b'['),
                    Just(0xff),
                    Just(0)
                ],
                1..9
            )
        )
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 1..16usize).prop_map(|(a, l)| Edit::Remove(a, l)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1..64usize, any::<usize>()).prop_map(|(f, l, t)| Edit::Splice(f, l, t)),
    ]
}

/// Arbitrary bytes, or one of `seeds` with a few edits.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        4 => (0..n, prop::collection::vec(edit(), 1..6))
            .prop_map(move |(i, e)| apply(seeds[i].clone(), &e)),
    ]
}

/// Runs `check` on `cases()` inputs made from `seeds` (and on the seeds themselves); a
/// panic fails the test with the input that caused it (proptest shrinks it).
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, check: impl Fn(&[u8])) {
    for s in &seeds {
        check(s);
    }
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    runner
        .run(&inputs(seeds), |input| {
            check(&input);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "fuzz {name}: {} cases in {:.1?}",
        cases(),
        started.elapsed()
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const OTLP_JSON: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}},{"key":"region","value":{"stringValue":"eu-west"}}]},"scopeSpans":[{"scope":{"name":"manual","version":"1.0"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173","name":"POST /checkout","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","attributes":[{"key":"http.status_code","value":{"intValue":"500"}},{"key":"ok","value":{"boolValue":false}},{"key":"ratio","value":{"doubleValue":0.5}},{"key":"list","value":{"arrayValue":{"values":[{"stringValue":"a"},{"intValue":"1"}]}}},{"key":"map","value":{"kvlistValue":{"values":[{"key":"k","value":{"bytesValue":"AAEC"}}]}}}],"events":[{"timeUnixNano":"1544712660500000000","name":"exception","attributes":[{"key":"exception.message","value":{"stringValue":"boom"}}]}],"links":[{"traceId":"5b8efff798038103d269b633813fc60d","spanId":"eee19b7ec3c1b175"}],"status":{"code":2,"message":"failed"}}]}]}]}"#;

const ZIPKIN: &str = r#"[{"id":"352bff9a74ca9ad2","traceId":"5af7183fb1d4cf5f","parentId":"6b221d5bc9e6496c","name":"get /api","timestamp":1556604172355737,"duration":1431,"kind":"SERVER","localEndpoint":{"serviceName":"backend","ipv4":"192.168.99.1","port":3306},"remoteEndpoint":{"ipv4":"172.19.0.2","port":58648},"tags":{"http.method":"GET","http.path":"/api","error":"boom"},"annotations":[{"timestamp":1556604172355800,"value":"retry"}],"shared":true},{"id":"6b221d5bc9e6496c","traceId":"5af7183fb1d4cf5f","name":"root","timestamp":1556604172355000,"duration":5000,"localEndpoint":{"serviceName":"frontend"}}]"#;

fn otlp_proto() -> Vec<u8> {
    faultline_model::otlp_json::decode(OTLP_JSON.as_bytes())
        .unwrap()
        .encode_to_vec()
}

/// The harnesses the libFuzzer targets run (`fuzz/`), so both fuzz the same thing.
#[path = "../../../fuzz/src/lib.rs"]
mod harness;
use harness::ingest_like;

/// Crashes found by fuzzing, kept as cases: each must be refused or read, not panic.
fn regressions() -> Vec<(&'static str, Vec<u8>)> {
    vec![]
}

/// Limits the OTLP seed keeps with nothing to spare: its longest value is 8 bytes, its
/// name 14, its span has 5 attributes.
fn tight_limits() -> faultline_model::validate::Limits {
    faultline_model::validate::Limits {
        max_attribute_value_bytes: 8,
        max_attributes_per_span: 5,
        max_span_name_bytes: 14,
    }
}

#[test]
fn otlp_protobuf_and_json_and_zipkin_decoders_never_panic() {
    assert!(
        faultline_model::otlp_check::check(&otlp_proto(), &tight_limits()).is_some(),
        "the seed must pass the walk under the tight limits, or they test nothing"
    );
    fuzz("otlp protobuf", vec![otlp_proto(), Vec::new()], |b| {
        let direct = faultline_model::otlp_decode::spans(b, 1);
        if let Ok(req) = faultline_model::ExportTraceServiceRequest::decode(b) {
            // The pipeline's direct decoder reads it too, to the same spans.
            let want = format!("{:?}", faultline_model::span::from_otlp_owned(req.clone()));
            match &direct {
                Ok(got) => assert_eq!(format!("{got:?}"), want),
                Err(e) => panic!("the direct decoder refused what prost read: {e}"),
            }
            ingest_like(req);
        }
        // Intake's walk passes only bodies prost reads and validation keeps whole (under
        // the default limits and under limits the seed just keeps).
        for limits in [faultline_model::validate::Limits::default(), tight_limits()] {
            if let Some(c) = faultline_model::otlp_check::check(b, &limits) {
                let Ok(mut req) = faultline_model::ExportTraceServiceRequest::decode(b) else {
                    panic!("intake's walk passed a body prost refuses");
                };
                let v = faultline_model::validate::validate_and_filter(&mut req, &limits);
                assert_eq!((v.accepted_spans, v.rejected_spans), (c.spans, 0));
            }
        }
    });
    fuzz(
        "otlp json",
        vec![OTLP_JSON.as_bytes().to_vec(), b"{}".to_vec()],
        |b| {
            if let Ok(req) = faultline_model::otlp_json::decode(b) {
                ingest_like(req);
            }
        },
    );
    fuzz("zipkin json", vec![ZIPKIN.as_bytes().to_vec()], |b| {
        if let Ok(batch) = faultline_model::zipkin::decode_v2_json(b) {
            ingest_like(batch.request);
        }
    });
    for (name, input) in regressions() {
        let _ = faultline_model::otlp_json::decode(&input);
        let _ = faultline_model::zipkin::decode_v2_json(&input);
        eprintln!("regression {name} read without a panic");
    }
}

#[test]
fn wal_envelope_segment_and_record_readers_never_panic() {
    use faultline_wal::format;
    let proto = otlp_proto();
    let envelopes = vec![
        envelope::encode(Protocol::OtlpHttpProtobuf, 1, &proto),
        envelope::encode(Protocol::OtlpHttpJson, 1, OTLP_JSON.as_bytes()),
        envelope::encode(Protocol::ZipkinJson, 2, ZIPKIN.as_bytes()),
    ];
    fuzz("wal envelope", envelopes.clone(), |b| {
        if let Ok(env) = envelope::decode(b) {
            // The pipeline's direct decoder reads whatever the generated types read, to
            // the same spans (compared as text: a mutated double may be NaN).
            let direct = env.spans();
            if let Ok(req) = env.request() {
                let want = format!("{:?}", faultline_model::span::from_otlp_owned(req.clone()));
                match &direct {
                    Ok(got) => assert_eq!(format!("{got:?}"), want),
                    Err(e) => panic!("the direct decoder refused what prost read: {e}"),
                }
                ingest_like(req);
            }
        }
    });
    let mut segment = format::encode_segment_header(7, 1_700_000_000_000).to_vec();
    for (i, e) in envelopes.iter().enumerate() {
        format::encode_record(&mut segment, 7 + i as u64, 1_700_000_000_000_000_000, e);
    }
    fuzz("wal segment", vec![segment], harness::wal_segment);
}

#[test]
fn selector_assertion_rule_and_query_parsers_never_panic() {
    let selectors = [
        r#"{ service = "checkout" && .http.route =~ "/api/*" } > { kind = client && duration > 100ms }"#,
        r#"{ !(status = error) || .retry = true && resource.region != "eu" } >> { name = "SELECT" }"#,
        r#"{ .http.status_code >= 500 && .ratio < 0.5 && duration <= 2s }"#,
    ];
    fuzz(
        "selector",
        selectors.iter().map(|s| s.as_bytes().to_vec()).collect(),
        |b| {
            let _ = faultline_rules::Selector::parse(&text(b));
        },
    );
    let file = r#"{"name": "checkout", "assertions": [
        {"name": "one db call", "select": "{ service = \"postgres\" }", "count": 1},
        {"name": "fast", "select": "{ kind = server }", "maxDuration": "800ms", "minDuration": "1ms"},
        {"name": "status", "select": "{ name = \"POST /checkout\" }", "attribute": {"key": "http.status_code", "min": 200, "max": 299}},
        {"name": "order", "select": "{ name = \"reserve\" }", "before": "{ name = \"charge\" }"}
    ]}"#;
    fuzz("assertion file", vec![file.as_bytes().to_vec()], |b| {
        let _ = faultline_rules::AssertionFile::parse(&text(b));
    });
    let rules = r#"[{"name": "order-shipped", "first": "{ name = \"order.created\" }", "then": "{ name = \"shipment.created\" }", "key": "order.id", "within": "10m", "at_most_one": true, "require_first": true, "grace": "30s", "keep": "1h"}]"#;
    fuzz("consistency rules", vec![rules.as_bytes().to_vec()], |b| {
        let _ = faultline_checks::rule::parse_rules(&text(b));
    });
    let params = [
        "1h30m",
        "2024-02-29T23:59:59.123456789+05:30",
        r#"{"http.status_code":"500","error":"true"}"#,
        "http.status_code=500 error=true",
    ];
    fuzz(
        "query parameters",
        params.iter().map(|s| s.as_bytes().to_vec()).collect(),
        |b| {
            use faultline_api::params;
            let v = text(b);
            let _ = faultline_model::duration::parse_ns(&v);
            let _ = params::parse_go_duration(&v);
            let _ = params::parse_rfc3339("start", &v);
            let _ = params::json_tags("tags", &v);
            let pairs = vec![
                ("tags".to_string(), v.clone()),
                ("tag".to_string(), v.clone()),
                ("timeout".to_string(), v.clone()),
                ("minDuration".to_string(), v.clone()),
                ("maxDuration".to_string(), v.clone()),
                ("limit".to_string(), v),
            ];
            let _ = params::parse_tags(&pairs);
            let _ = params::timeout(&pairs);
            let _ = params::num(&pairs, "limit", "a number");
        },
    );
}

#[test]
fn operator_files_and_control_bodies_never_panic() {
    use faultline_auth::{Scope, Scopes, tokens};
    let token_file = [
        tokens::line("ops", Scopes::of(&[Scope::Read, Scope::Admin]), "secret-1"),
        tokens::line("ci", Scopes::of(&[Scope::Ingest]), "secret-2"),
        "# a comment".to_string(),
    ]
    .join("\n");
    // Each seed is a valid input, so the mutations start from what the parser accepts.
    assert_eq!(tokens::TokenSet::parse(&token_file).unwrap().len(), 2);
    fuzz("token file", vec![token_file.into_bytes()], |b| {
        let _ = tokens::TokenSet::parse(&text(b));
    });
    let toml_policy = r#"[default_strategy]
type = "probabilistic"
param = 0.1
operation_strategies = [{ operation = "GET /health", type = "probabilistic", param = 0.0 }]
[[service_strategies]]
service = "search"
type = "ratelimiting"
param = 20
"#;
    let json_policy = r#"{"default_strategy": {"type": "probabilistic", "param": 0.5},
        "service_strategies": [{"service": "checkout", "type": "probabilistic", "param": 1.0,
        "operation_strategies": [{"operation": "PlaceOrder", "type": "probabilistic", "param": 1}]}]}"#;
    faultline_sampling::Policy::parse(toml_policy, false, "policy.toml").unwrap();
    faultline_sampling::Policy::parse(json_policy, true, "policy.json").unwrap();
    fuzz(
        "sampling policy",
        vec![toml_policy.into(), json_policy.into()],
        |b| {
            let t = text(b);
            let _ = faultline_sampling::Policy::parse(&t, false, "policy.toml");
            let _ = faultline_sampling::Policy::parse(&t, true, "policy.json");
        },
    );
    let experiment = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/resilience/experiments/pricing-timeout.json"),
    )
    .unwrap();
    faultline_chaos::experiment::Experiment::parse(&text(&experiment)).unwrap();
    fuzz("experiment file", vec![experiment], |b| {
        let _ = faultline_chaos::experiment::Experiment::parse(&text(b));
    });
    let bodies = [
        r#"{"name": "db", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:5432", "enabled": true}"#,
        r#"{"type": "latency", "stream": "downstream", "toxicity": 0.5, "attributes": {"latency": 300, "jitter": 50}}"#,
        r#"{"type": "http_error", "attributes": {"status": 503, "method": "GET", "path": "/price*"}}"#,
        r#"{"type": "slicer", "attributes": {"average_size": 10, "size_variation": 5, "delay": 100}}"#,
    ];
    let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    faultline_chaos::registry::ProxyFields::parse(&v(bodies[0])).unwrap();
    for t in &bodies[1..] {
        faultline_chaos::toxic::Toxic::parse(&v(t)).unwrap();
    }
    fuzz(
        "fault proxy bodies",
        bodies.iter().map(|s| s.as_bytes().to_vec()).collect(),
        |b| {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(b) {
                let _ = faultline_chaos::registry::ProxyFields::parse(&v);
                let _ = faultline_chaos::toxic::Toxic::parse(&v);
            }
        },
    );
    let probes = [
        r#"{"name": "shop", "interval_secs": 30, "http": {"url": "https://shop.example/health", "expect_status": [200], "expect_body": "ok"}}"#,
        r#"{"name": "db", "interval_secs": 60, "paused": true, "tcp": {"host": "127.0.0.1", "port": 5432}}"#,
    ];
    for p in probes {
        let d: faultline_probe::ProbeDef = serde_json::from_str(p).unwrap();
        d.validate().unwrap();
    }
    fuzz(
        "probe definition",
        probes.iter().map(|s| s.as_bytes().to_vec()).collect(),
        |b| {
            if let Ok(d) = serde_json::from_slice::<faultline_probe::ProbeDef>(b) {
                let _ = d.validate();
            }
        },
    );
    let alerts = r#"{"name": "checkout-slow", "service": "checkout", "operation": "POST /checkout", "p99_above_ms": 500, "for_minutes": 2}"#;
    let r: faultline_alerts::RuleDef = serde_json::from_str(alerts).unwrap();
    r.validate().unwrap();
    fuzz("alert rule", vec![alerts.into()], |b| {
        if let Ok(r) = serde_json::from_slice::<faultline_alerts::RuleDef>(b) {
            let _ = r.validate();
        }
    });
}

/// POSTs raw bytes; the status (0 when the connection failed).
fn post(port: u16, path: &str, content_type: &str, gzip: bool, body: &[u8]) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let enc = if gzip {
        "content-encoding: gzip\r\n"
    } else {
        ""
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\ncontent-type: {content_type}\r\n{enc}content-length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn intake_routes_answer_every_mutated_body_and_stay_up() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let routes: Vec<(u16, &str, &str, Vec<u8>)> = vec![
        (
            server.http,
            "/v1/traces",
            "application/x-protobuf",
            otlp_proto(),
        ),
        (
            server.http,
            "/v1/traces",
            "application/json",
            OTLP_JSON.as_bytes().to_vec(),
        ),
        (
            server.zipkin,
            "/api/v2/spans",
            "application/json",
            ZIPKIN.as_bytes().to_vec(),
        ),
    ];
    // Server-side cases are slower (a connection each): a tenth of the in-process count.
    let n = (cases() / 10).max(20);
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let mut statuses = std::collections::BTreeMap::new();
    for (port, path, ct, seed) in &routes {
        for gzip in [false, true] {
            let seeds = vec![seed.clone()];
            let strategy = inputs(seeds);
            for _ in 0..n {
                let body = strategy.new_tree(&mut runner).unwrap().current();
                // Gzip bodies: mutated before compressing (the decoder behind gzip) and
                // after it (gzip's own framing), alternately.
                let body = match (gzip, body.len() % 2) {
                    (false, _) => body,
                    (true, 0) => gz(&body),
                    (true, _) => apply(gz(seed), &[Edit::Flip(body.len(), 0x5a)]),
                };
                let status = post(*port, path, ct, gzip, &body);
                assert!(
                    matches!(status, 200 | 202 | 400 | 413 | 415),
                    "{path} ({ct}, gzip {gzip}) answered {status} to {} bytes; log: {}",
                    body.len(),
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
                *statuses.entry(status).or_insert(0u32) += 1;
            }
        }
    }
    eprintln!("intake statuses over {} bodies: {statuses:?}", 6 * n);
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 0,
        "no body was refused: the mutations did not reach the decoders"
    );
    // Still up, and a valid request is still taken.
    assert_eq!(
        post(
            server.http,
            "/v1/traces",
            "application/x-protobuf",
            false,
            &otlp_proto()
        ),
        200
    );
    let (status, _) = common::http_get(server.api, "/ready").unwrap();
    assert_eq!(status, 200);
}

/// Spans of ten traces over three services with every attribute type, from the OTLP seed.
fn store_spans() -> Vec<faultline_model::span::Span> {
    let seed = faultline_model::span::from_otlp(
        &faultline_model::otlp_json::decode(OTLP_JSON.as_bytes()).unwrap(),
    );
    let mut out = Vec::new();
    for t in 0..10u8 {
        for i in 0..4u8 {
            let mut s = seed[0].clone();
            s.trace_id = [t + 1; 16];
            s.span_id = [i + 1; 8];
            s.parent_span_id = (i > 0).then_some([1; 8]);
            s.start_ns += u64::from(t) * 1_000_000 + u64::from(i) * 1_000;
            s.end_ns = s.start_ns + u64::from(i + 1) * 7_000_000;
            let mut o = (*s.origin).clone();
            o.service = ["checkout", "cart", "postgres"][usize::from(i % 3)].into();
            s.origin = std::sync::Arc::new(o);
            out.push(s);
        }
    }
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn damaged_block_index_rollup_and_manifest_files_never_panic_the_store() {
    use faultline_store::{SpanStore, Store, StoreOptions, TraceQuery};
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let opts = |dir: &std::path::Path| StoreOptions {
        block_max_spans: 10,
        block_max_age: Duration::from_secs(3600),
        ..StoreOptions::new(dir)
    };
    let spans = store_spans();
    {
        let (store, _) = Store::open(opts(&pristine)).unwrap();
        for (seq, chunk) in spans.chunks(10).enumerate() {
            store.ingest(seq as u64 + 1, chunk.to_vec()).unwrap();
            store.seal().unwrap();
        }
    }
    let blocks = pristine.join("blocks");
    let mut files: Vec<String> = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    files.sort();
    for ext in ["parquet", "tidx", "sidx", "red"] {
        assert!(
            files.iter().any(|f| f.ends_with(ext)),
            "a sealed block has a .{ext} file: {files:?}"
        );
    }
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(blocks.join(f)).unwrap())
        .collect();
    // Each case damages one file (chosen by the input's length) of a copy of the store.
    let n = (cases() / 20).max(20);
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    // A panic on one of the store's own threads (the index loader) does not fail this test
    // by itself: count every panic (the longer fuzz run found one that way).
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        previous(info);
    }));
    let (mut opened, mut refused) = (0u32, 0u32);
    for case in 0..n {
        let which = case as usize % files.len();
        let strategy = inputs(vec![seeds[which].clone()]);
        let bytes = strategy.new_tree(&mut runner).unwrap().current();
        let dir = tmp.path().join(format!("case-{case}"));
        copy_dir(&pristine, &dir);
        std::fs::write(dir.join("blocks").join(&files[which]), &bytes).unwrap();
        if std::env::var_os("FAULTLINE_FUZZ_VERBOSE").is_some() {
            std::fs::write(
                std::env::temp_dir().join("faultline-fuzz-last-case"),
                &bytes,
            )
            .unwrap();
            eprintln!("case {case}: {} ({} bytes)", files[which], bytes.len());
        }
        match Store::open(opts(&dir)) {
            Err(e) => {
                // Refusing to open names what is wrong.
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
            Ok((store, _)) => {
                opened += 1;
                for t in 1..=10u8 {
                    let _ = store.trace(&[t; 16]);
                }
                let _ = store.services();
                let _ = store.operations("checkout");
                // The hour of the spans (the API caps the points a query asks for).
                let (from, to) = (1_544_710_000, 1_544_713_600);
                let _ = store.dependencies(from, to);
                let _ = store.red("checkout", None, None, from, to, 60);
                let _ = store.red_total("checkout", None, None, from, to);
                let _ = store.search(&TraceQuery {
                    service: Some("checkout".into()),
                    end_ns: u64::MAX,
                    limit: 20,
                    ..TraceQuery::default()
                });
            }
        }
        // The store may still be loading indexes in the background: best effort.
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!(
        "fuzz store files: {n} damaged copies of {} files, {opened} opened, {refused} refused",
        files.len()
    );
    let panics = PANICS.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        panics, 0,
        "{panics} panics while reading damaged stores (see above)"
    );
}
