//! Helpers shared by the integration tests: start `faultline serve` on free loopback
//! ports, wait for readiness, kill it, and read its WAL back.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_faultline");

/// A run of the load generator (`faultline-bench loadgen`) on its own thread, in-process:
/// the server binary no longer carries it.
pub struct Load(std::thread::JoinHandle<Result<serde_json::Value, String>>);

/// Starts the load generator with `faultline-bench loadgen`'s flags.
pub fn loadgen(args: &[&str]) -> Load {
    let args = faultline_bench::loadgen::parse_args(args)
        .unwrap_or_else(|e| panic!("bad loadgen flags {args:?}: {e}"));
    Load(std::thread::spawn(move || {
        faultline_bench::loadgen::run(&args).map_err(|e| format!("{e:#}"))
    }))
}

impl Load {
    /// Waits for the run and answers its summary (`spans_ok`, `requests_failed`, ...);
    /// panics if the load generator itself failed.
    pub fn wait(self) -> serde_json::Value {
        match self.0.join() {
            Ok(Ok(summary)) => summary,
            Ok(Err(e)) => panic!("loadgen failed: {e}"),
            Err(_) => panic!("loadgen panicked"),
        }
    }
}

/// A free loopback port (bound and released); see [`low_port_listener`].
pub fn free_port() -> u16 {
    low_port_listener().local_addr().unwrap().port()
}

/// A loopback listener on a free port in 20000-31999, below Linux's ephemeral range (see
/// `faultline_clickhouse::testing::low_port_listener`; its ClickHouse servers take
/// 14000-19999).
pub fn low_port_listener() -> TcpListener {
    faultline_clickhouse::testing::low_port_listener(20_000..32_000)
}

thread_local! {
    /// ClickHouse servers of this test, by faultline data directory (see
    /// [`storage_flags`]); dropped, so stopped, when the test's thread ends.
    static CLICKHOUSE: std::cell::RefCell<Vec<(PathBuf, faultline_clickhouse::testing::Server)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The storage flags of a faultline on `data_dir`: none for the embedded store; with
/// `FAULTLINE_TEST_STORAGE=clickhouse`, `--storage clickhouse` on a ClickHouse server of
/// its own, started for the first faultline on `data_dir` and kept for every restart on
/// it, so the same tests run unchanged on both backends (`scripts/test` runs the API
/// contract tests both ways).
pub fn storage_flags(data_dir: &Path) -> Vec<String> {
    if std::env::var("FAULTLINE_TEST_STORAGE").as_deref() != Ok("clickhouse") {
        return Vec::new();
    }
    let port = CLICKHOUSE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, s)) = c.iter().find(|(d, _)| d == data_dir) {
            return s.http;
        }
        let s = faultline_clickhouse::testing::Server::start();
        let port = s.http;
        c.push((data_dir.to_path_buf(), s));
        port
    });
    [
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &format!("http://127.0.0.1:{port}"),
        "--node-name",
        "test-node",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Whether the tests run on ClickHouse (`FAULTLINE_TEST_STORAGE=clickhouse`).
pub fn on_clickhouse() -> bool {
    std::env::var("FAULTLINE_TEST_STORAGE").as_deref() == Ok("clickhouse")
}

pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub grpc: u16,
    pub http: u16,
    pub zipkin: u16,
    pub api: u16,
    pub sampling: u16,
    pub log: PathBuf,
}

pub struct Ports {
    pub grpc: u16,
    pub http: u16,
    pub zipkin: u16,
    pub api: u16,
    pub sampling: u16,
}

impl Ports {
    pub fn new() -> Self {
        Self {
            grpc: free_port(),
            http: free_port(),
            zipkin: free_port(),
            api: free_port(),
            sampling: free_port(),
        }
    }
}

impl Server {
    /// Starts a server on `data_dir` with extra flags and waits until `/ready`. Ports are
    /// picked free and released before faultline binds them, so another process (a
    /// client's ephemeral port) can take one in between: then it retries on new ports.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        for _ in 0..5 {
            match Self::try_start_on(data_dir, Ports::new(), extra) {
                Ok(s) => return s,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("faultline exited during start-up; log:\n{log}"),
            }
        }
        panic!("no free ports after 5 attempts");
    }

    pub fn start_on(data_dir: &Path, p: Ports, extra: &[&str]) -> Server {
        Self::try_start_on(data_dir, p, extra)
            .unwrap_or_else(|log| panic!("faultline exited during start-up; log:\n{log}"))
    }

    /// Like [`Server::start`], run through `wrapper` (a command that ends by executing the
    /// rest of its arguments, so the child's pid stays faultline's).
    pub fn start_wrapped(data_dir: &Path, wrapper: &[&str], extra: &[&str]) -> Server {
        for _ in 0..5 {
            match Self::try_start_wrapped(data_dir, Ports::new(), wrapper, extra) {
                Ok(s) => return s,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("faultline exited during start-up; log:\n{log}"),
            }
        }
        panic!("no free ports after 5 attempts");
    }

    fn try_start_on(data_dir: &Path, p: Ports, extra: &[&str]) -> Result<Server, String> {
        Self::try_start_wrapped(data_dir, p, &[], extra)
    }

    fn try_start_wrapped(
        data_dir: &Path,
        p: Ports,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Result<Server, String> {
        let log = data_dir.with_extension(format!("{}.log", p.api));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--otlp-grpc", &format!("127.0.0.1:{}", p.grpc)])
            .args(["--otlp-http", &format!("127.0.0.1:{}", p.http)])
            .args(["--zipkin", &format!("127.0.0.1:{}", p.zipkin)])
            .args(["--http", &format!("127.0.0.1:{}", p.api)])
            .args(["--sampling", &format!("127.0.0.1:{}", p.sampling)])
            .args(storage_flags(data_dir))
            .args(extra)
            .env("FAULTLINE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            data_dir: data_dir.to_path_buf(),
            grpc: p.grpc,
            http: p.http,
            zipkin: p.zipkin,
            api: p.api,
            sampling: p.sampling,
            log,
        };
        s.try_wait_ready(Duration::from_secs(30))?;
        Ok(s)
    }

    pub fn wait_ready(&mut self, limit: Duration) {
        if let Err(log) = self.try_wait_ready(limit) {
            panic!("faultline exited during start-up; log:\n{log}");
        }
    }

    fn try_wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exit status {status}\n{}", self.log_text()));
            }
            if let Ok(body) = http_get(self.api, "/ready")
                && body.0 == 200
            {
                return Ok(());
            }
            // With TLS on, plaintext `/ready` gets no answer: the log says it instead.
            if self.log_text().contains("faultline is accepting spans") {
                return Ok(());
            }
            assert!(
                started.elapsed() < limit,
                "faultline not ready after {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn zipkin_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v2/spans", self.zipkin)
    }

    pub fn metrics(&self) -> String {
        http_get(self.api, "/metrics").unwrap().1
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // On ClickHouse, a read that fell back to the node's own store (which holds every
        // span of a one-node test) would let a test pass without ClickHouse answering:
        // none of the suite's ClickHouse run may.
        if on_clickhouse() && !std::thread::panicking() {
            let log = self.log_text();
            let line = log
                .lines()
                .find(|l| l.contains(faultline_clickhouse::FALLBACK));
            assert!(
                line.is_none(),
                "faultline answered without ClickHouse: {}",
                line.unwrap_or_default()
            );
        }
    }
}

/// A minimal blocking HTTP/1.1 GET (status, body), so tests need no client runtime.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_call(port, "GET", path, "")
}

/// A minimal blocking HTTP/1.1 request with a JSON body (status, body).
pub fn http_call(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A reqwest client. The workspace's reqwest does TLS with no crypto provider of its own,
/// so the process's default (ring) is installed first.
pub fn reqwest_client() -> reqwest::Client {
    faultline_tls::client::install_default_provider();
    reqwest::Client::new()
}

/// POSTs an OTLP/HTTP protobuf body to `/v1/traces` from a synchronous test; the status.
pub fn post_otlp(server: &Server, body: Vec<u8>) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest_client()
            .post(format!("{}/v1/traces", server.http_url()))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// The value of an unlabelled or exactly labelled metric line, 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs `faultline wal dump --json --spans` and parses every line.
pub fn wal_dump(data_dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["wal", "dump", "--json", "--spans"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wal dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The Python interpreter of the test venv (set up by scripts/test).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FAULTLINE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python test environment: run ./scripts/test (it creates .venv with the OpenTelemetry SDK), or set FAULTLINE_TEST_PYTHON"
    );
    venv
}

pub fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/clients")
        .join(name)
}

/// A helper server from `tests/clients`, killed when dropped.
pub struct Fixture(pub Child);

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tests/clients/SCRIPT ARGS` in the test venv and reads the one JSON line it
/// prints once it serves (its ports).
pub fn python_fixture<S: AsRef<std::ffi::OsStr>>(
    script: &str,
    args: &[S],
) -> (Fixture, serde_json::Value) {
    python_fixture_at(&client_script(script), args, &[])
}

/// [`python_fixture`] for a script anywhere, with extra environment variables.
pub fn python_fixture_at<S: AsRef<std::ffi::OsStr>>(
    script: &Path,
    args: &[S],
    env: &[(&str, &str)],
) -> (Fixture, serde_json::Value) {
    use std::io::BufRead;
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fixture = Fixture(child);
    let v = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{}: {e}: {line:?}", script.display()));
    (fixture, v)
}

/// Sends one known trace with the Python OpenTelemetry SDK (`tests/clients/otel_send.py`:
/// three spans, one failing with a recorded exception) over `protocol` (`http` or `grpc`);
/// returns its trace id.
pub fn send_sdk_trace(server: &Server, protocol: &str, service: &str, marker: &str) -> String {
    let endpoint = match protocol {
        "grpc" => server.grpc_url(),
        _ => server.http_url(),
    };
    let out = std::process::Command::new(python())
        .arg(client_script("otel_send.py"))
        .args(["--protocol", protocol, "--endpoint", &endpoint])
        .args(["--service", service, "--marker", marker])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    v["trace_id"].as_str().unwrap().to_string()
}

/// Breaks sealing the way a full or broken disk would (block writes fail) by putting a
/// file where the blocks directory is; [`SealingOutage::repair`] puts it back.
pub struct SealingOutage {
    blocks: PathBuf,
    away: PathBuf,
}

impl SealingOutage {
    pub fn start(data_dir: &Path) -> Self {
        let blocks = data_dir.join("blocks");
        let away = data_dir.join("blocks.away");
        std::fs::rename(&blocks, &away).unwrap();
        std::fs::write(&blocks, b"not a directory").unwrap();
        Self { blocks, away }
    }

    pub fn repair(self) {
        std::fs::remove_file(&self.blocks).unwrap();
        std::fs::rename(&self.away, &self.blocks).unwrap();
    }
}

/// The part `name` of `/api/v1/status`.
pub fn status_part(api: u16, name: &str) -> serde_json::Value {
    let (_, body) = http_get(api, "/api/v1/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no part {name} in {status}"))
}

/// The Unix minute to end a planted regression with, so that an alert rule over the
/// minutes up to it fires at once and keeps firing at least 40 s. A minute is judged 15 s
/// after it ends (the alerts' GRACE_SECS), so the minutes judged now end with `judged -
/// 1`: the regression ends with that one or, when the judged window moves on within 40 s,
/// with the next.
pub fn last_slow_minute() -> u64 {
    let now_s = now_ns() / 1_000_000_000;
    let judged = (now_s - 15) / 60;
    if (judged + 1) * 60 + 15 - now_s < 40 {
        judged
    } else {
        judged - 1
    }
}

/// On ClickHouse ([`on_clickhouse`]), waits until the server's writer has sent every
/// acknowledged record to ClickHouse (its status part's `behind_records` is 0), so a read
/// that follows sees all of them; on the embedded store, returns at once.
pub fn wait_in_clickhouse(server: &Server) {
    if !on_clickhouse() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let part = status_part(server.api, "clickhouse");
        if part["details"]["behind_records"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "records not in ClickHouse after 30 s: {part}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An OTLP/HTTP protobuf body with `spans` of one service (`service.name` = `service`).
pub fn otlp_request(service: &str, spans: Vec<faultline_model::otlp::trace::Span>) -> Vec<u8> {
    otlp_request_with(vec![("service.name", service)], spans)
}

/// An OTLP/HTTP protobuf body with `spans` under one resource of string attributes.
pub fn otlp_request_with(
    resource: Vec<(&str, &str)>,
    spans: Vec<faultline_model::otlp::trace::Span>,
) -> Vec<u8> {
    use faultline_model::ExportTraceServiceRequest;
    use faultline_model::otlp::common::{AnyValue, KeyValue, any_value::Value};
    use faultline_model::otlp::resource::Resource;
    use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans};
    use prost::Message;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource
                    .into_iter()
                    .map(|(k, v)| KeyValue {
                        key: k.into(),
                        value: Some(AnyValue {
                            value: Some(Value::StringValue(v.into())),
                        }),
                        ..KeyValue::default()
                    })
                    .collect(),
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}

/// Now, in Unix nanoseconds.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// An OTLP/HTTP protobuf body with one span of `service` in trace `trace_id`, starting now;
/// with error status if `error`.
pub fn one_span_request(service: &str, trace_id: &[u8], error: bool) -> Vec<u8> {
    use faultline_model::otlp::trace::{Span, Status};
    let now = now_ns();
    otlp_request(
        service,
        vec![Span {
            trace_id: trace_id.to_vec(),
            span_id: trace_id[..8].to_vec(),
            name: "op".into(),
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1_000_000,
            status: error.then(|| Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Span::default()
        }],
    )
}

/// Acknowledged trace ids from a `faultline-bench loadgen --ack-log` file.
pub fn acked_trace_ids(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(2))
        .flat_map(|ids| ids.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The directory of the Node.js test clients, with their packages installed (by
/// scripts/test: `npm ci` in tests/clients/node).
pub fn node_clients() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/node");
    assert!(
        dir.join("node_modules/@opentelemetry/sampler-jaeger-remote")
            .exists(),
        "the Node.js test clients are not installed: run ./scripts/test (it runs npm ci in tests/clients/node), or npm ci there yourself"
    );
    dir
}

// ---- Planted clock skew (tests/clock_skew.rs, tests/ui_browser.rs) ----

const MS: u64 = 1_000_000;
/// How far api's clock is ahead in [`send_skewed_traces`].
pub const API_SKEW: u64 = 2_000 * MS;
/// How far host db-2's clock is ahead.
pub const DB2_SKEW: u64 = 300 * MS;

use faultline_model::otlp::common::{AnyValue as SkewAnyValue, KeyValue as SkewKeyValue};
use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span as OtlpSpan};

/// A xorshift generator for the planted-skew traffic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn skew_kv(k: &str, v: &str) -> SkewKeyValue {
    SkewKeyValue {
        key: k.into(),
        value: Some(SkewAnyValue {
            value: Some(faultline_model::otlp::common::any_value::Value::StringValue(v.into())),
        }),
        ..SkewKeyValue::default()
    }
}

pub fn resource_spans(service: &str, host: &str, spans: Vec<OtlpSpan>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(faultline_model::otlp::resource::Resource {
            attributes: vec![skew_kv("service.name", service), skew_kv("host.name", host)],
            ..faultline_model::otlp::resource::Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    }
}

pub fn skew_span(
    trace: &[u8; 16],
    id: u64,
    parent: u64,
    name: &str,
    kind: i32,
    start: u64,
    end: u64,
) -> OtlpSpan {
    OtlpSpan {
        trace_id: trace.to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            parent.to_be_bytes().to_vec()
        },
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..OtlpSpan::default()
    }
}

/// One request: frontend → api (clock 2 s fast) → db on db-1 (right) or db-2 (300 ms
/// fast), with random network legs and durations; with `skew` false every clock is right.
/// One request in ten (`n % 20` is 3 or 8) is slow in the frontend itself (400 ms after
/// the call returns) and carries `checkout.variant=b` on its root span (the others `a`):
/// the planted cause. Returns the request body.
fn skewed_trace(
    rng: &mut Rng,
    n: u64,
    base: u64,
    skew: bool,
) -> ([u8; 16], faultline_model::ExportTraceServiceRequest) {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&rng.next().to_be_bytes());
    t[8..].copy_from_slice(&n.to_be_bytes());
    let id = |k: u64| n * 16 + k;
    let (c, s) = (3, 2); // OTLP client and server kinds
    let slow = matches!(n % 20, 3 | 8);
    let root_len = rng.range(80, 200) * MS;
    let call_start = base + rng.range(1, 10) * MS;
    let call_len = root_len - rng.range(15, 40) * MS;
    let root_len = root_len + if slow { 400 * MS } else { 0 };
    let api_skew = if skew { API_SKEW } else { 0 };
    let (up, down) = (rng.range(200, 3_000) * 1000, rng.range(200, 3_000) * 1000);
    let (api_s, api_e) = (call_start + up, call_start + call_len - down);
    let db_host = if n.is_multiple_of(2) { "db-1" } else { "db-2" };
    let db_skew = if n.is_multiple_of(2) || !skew {
        0
    } else {
        DB2_SKEW
    };
    let q_start = api_s + rng.range(2, 8) * MS;
    let q_end = q_start + rng.range(5, (api_e - api_s) / MS - 10) * MS;
    let (up2, down2) = (rng.range(100, 1_500) * 1000, rng.range(100, 1_500) * 1000);
    let req = faultline_model::ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans(
                "frontend",
                "fe-1",
                vec![
                    OtlpSpan {
                        attributes: vec![skew_kv("checkout.variant", if slow { "b" } else { "a" })],
                        ..skew_span(&t, id(1), 0, "GET /checkout", s, base, base + root_len)
                    },
                    skew_span(
                        &t,
                        id(2),
                        id(1),
                        "POST /api/order",
                        c,
                        call_start,
                        call_start + call_len,
                    ),
                ],
            ),
            resource_spans(
                "api",
                "api-1",
                vec![
                    skew_span(
                        &t,
                        id(3),
                        id(2),
                        "POST /api/order",
                        s,
                        api_s + api_skew,
                        api_e + api_skew,
                    ),
                    skew_span(
                        &t,
                        id(4),
                        id(3),
                        "INSERT orders",
                        c,
                        q_start + api_skew,
                        q_end + api_skew,
                    ),
                ],
            ),
            resource_spans(
                "db",
                db_host,
                vec![skew_span(
                    &t,
                    id(5),
                    id(4),
                    "INSERT orders",
                    s,
                    q_start + up2 + db_skew,
                    q_end - down2 + db_skew,
                )],
            ),
        ],
    };
    (t, req)
}

/// Sends `n` traces of [`skewed_trace`] from five minutes ago; returns their ids (hex).
pub fn send_skewed_traces(server: &Server, n: u64) -> Vec<String> {
    send_traces_with_skew(server, n, true, now_ns() - 5 * 60 * 1_000 * MS)
}

/// [`send_skewed_traces`], with or without the skew, the first starting at `base` (Unix
/// ns) and one every 500 ms: the same traces (ids, shapes, durations) either way.
pub fn send_traces_with_skew(server: &Server, n: u64, skew: bool, base: u64) -> Vec<String> {
    use prost::Message;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let (t, req) = skewed_trace(&mut rng, i, base + i * 500 * MS, skew);
            assert_eq!(post_otlp(server, req.encode_to_vec()), 200);
            faultline_model::hex(&t)
        })
        .collect()
}

/// A seeded xorshift generator of integers in `[lo, hi)`, its seed printed under `name`
/// so a failing run can be replayed (the seed is the time unless `FAULTLINE_TEST_SEED` is set).
pub fn seeded_rand(name: &str) -> impl FnMut(u64, u64) -> u64 {
    // FAULTLINE_TEST_SEED replays the choices of a failed run (its log prints the seed).
    let seed = std::env::var("FAULTLINE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{name} seed {seed} (FAULTLINE_TEST_SEED={seed} replays it)");
    let mut x = seed | 1;
    move |lo: u64, hi: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lo + x % (hi - lo)
    }
}

/// A token file with one token per scope, named `t-SCOPE`, its secret [`secret`]`(SCOPE)`.
pub fn token_file(dir: &Path) -> PathBuf {
    use faultline_auth::{Scope, Scopes, tokens::line};
    let lines: Vec<String> = Scope::ALL
        .iter()
        .map(|s| line(&format!("t-{s}"), Scopes::of(&[*s]), &format!("secret-{s}")))
        .collect();
    let path = dir.join("tokens");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The secret of [`token_file`]'s token for `s`.
pub fn secret(s: faultline_auth::Scope) -> String {
    format!("secret-{s}")
}

/// Runs a client script from `tests/clients`: (succeeded, stdout, stderr). `requests`
/// lets REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE, when set (as on many machines), override
/// the CA a session was given (the OpenTelemetry HTTP exporter's), so they are removed
/// unless `env` sets them.
pub fn run_py(script: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(python())
        .arg(client_script(script))
        .args(args)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    outcome(out)
}

/// A finished command as (succeeded, stdout, stderr).
pub fn outcome(out: std::process::Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
