//! A ClickHouse server for tests and benchmarks (feature `testing`): Debian's
//! `clickhouse-server` (or `FAULTLINE_CLICKHOUSE_SERVER`) started on free loopback ports
//! with its own data directory, killed and removed when dropped, and restartable on the
//! same ports and data (to take the server away under load and bring it back); or
//! several, the shards of one cluster ([`cluster`]).
//!
//! Its configuration (`config.xml`, `users.xml` in the data directory) is the minimal one
//! `docs/clickhouse-groundwork.md` found to work on 18.16: loopback only, UTC, the
//! `default` user without a password from 127.0.0.1, and `old_parts_lifetime` of 10 s so a
//! dropped partition does not come back after a restart. Test code: it panics on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use faultline_model::span::{AttrValue, Event, Link, Origin, Span, SpanKind, StatusCode};

use crate::Config;

fn binary() -> PathBuf {
    let p = std::env::var_os("FAULTLINE_CLICKHOUSE_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/clickhouse-server"));
    assert!(
        p.exists(),
        "{} is missing: install Debian's clickhouse-server (scripts/test does), or set FAULTLINE_CLICKHOUSE_SERVER",
        p.display()
    );
    p
}

/// A loopback port free now, below Linux's ephemeral range; see [`low_port_listener`].
/// Ports 14000-19999: the integration tests' helpers pick from 20000-31999.
pub fn free_port() -> u16 {
    low_port_listener(14_000..20_000)
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback listener on a random free port of `range`, which should lie below Linux's
/// ephemeral range (32768-60999 by default): the kernel never hands such a port to an
/// outgoing connection, so one released and bound again (a server started on it, or
/// restarted) cannot have been taken by a connection of this or a parallel test
/// meanwhile. Callers that run side by side take ranges of their own.
pub fn low_port_listener(range: std::ops::Range<u16>) -> std::net::TcpListener {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let width = u64::from(range.end.saturating_sub(range.start)).max(1);
    let mut x = seed | 1;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = u64::from(range.start) + (x ^ NEXT.fetch_add(1, Ordering::Relaxed)) % width;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return l;
        }
    }
    panic!("no free loopback port in {range:?} after 1000 tries")
}

/// The ports of one server: HTTP, native TCP, interserver.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    tcp: u16,
    inter: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            http: free_port(),
            tcp: free_port(),
            inter: free_port(),
        }
    }
}

/// `remote_servers` naming cluster `name` of one shard per native port in `tcp`.
fn remote_servers(name: &str, tcp: &[u16]) -> String {
    let shards: String = tcp
        .iter()
        .map(|p| {
            format!("<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>")
        })
        .collect();
    format!("<remote_servers><{name}>{shards}</{name}></remote_servers>")
}

fn write_config(dir: &Path, ports: Ports, extra: &str) {
    let d = dir.display();
    let Ports { http, tcp, inter } = ports;
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::write(
        dir.join("config.xml"),
        format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/server.err.log</errorlog><size>10M</size><count>1</count></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <interserver_http_port>{inter}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
    <merge_tree><old_parts_lifetime>10</old_parts_lifetime></merge_tree>
    {extra}
</yandex>
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("users.xml"),
        r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#,
    )
    .unwrap();
}

/// A ClickHouse server on loopback ports of its own.
pub struct Server {
    child: Option<Child>,
    /// The HTTP port.
    pub http: u16,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Server {
    /// Starts a server with an empty data directory (three attempts: a port chosen free
    /// can be taken before the server binds it).
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// [`Server::start`] with `extra` added to the configuration (as `https_port` and
    /// `openSSL` for TLS).
    pub fn start_with(extra: &str) -> Self {
        for _ in 0..3 {
            if let Some(s) = Self::try_start(Ports::free(), extra) {
                return s;
            }
        }
        panic!("clickhouse-server did not start on loopback in three attempts");
    }

    fn try_start(ports: Ports, extra: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), ports, extra);
        let mut s = Self {
            child: None,
            http: ports.http,
            dir,
        };
        s.spawn().then_some(s)
    }

    /// Kills the server (as a crash would); its data stays for [`Server::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        let started = Instant::now();
        // The ports were the server's a moment ago; the kernel frees them at once, but
        // retry a little in case the old process is still going away.
        while !self.spawn() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "clickhouse-server did not restart: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Spawns the server and waits until it answers `/ping`; false if it exited.
    fn spawn(&mut self) -> bool {
        let dir = self.dir.path();
        let out = std::fs::File::create(dir.join("log/stdout.log")).unwrap();
        let mut child = Command::new(binary())
            .arg(format!(
                "--config-file={}",
                dir.join("config.xml").display()
            ))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = child.try_wait().unwrap() {
                // rc 70: an address in use.
                eprintln!("clickhouse-server exited with {status}: {}", self.log());
                return false;
            }
            let ok = ureq::get(&format!("http://127.0.0.1:{}/ping", self.http))
                .call()
                .ok()
                .and_then(|r| r.into_body().read_to_string().ok());
            if ok.as_deref() == Some("Ok.\n") {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The configuration of a client of this server, for `database`.
    pub fn config(&self, database: &str) -> Config {
        Config::new(&format!("http://127.0.0.1:{}", self.http), database)
    }

    /// The server's error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/server.err.log")).unwrap_or_default()
    }
}

/// `shards` servers, each one shard of the cluster `name` that every one of them knows
/// (in its `remote_servers`), in shard order (three attempts, as [`Server::start`]).
pub fn cluster(name: &str, shards: usize) -> Vec<Server> {
    'attempt: for _ in 0..3 {
        let ports: Vec<Ports> = (0..shards).map(|_| Ports::free()).collect();
        let tcp: Vec<u16> = ports.iter().map(|p| p.tcp).collect();
        let extra = remote_servers(name, &tcp);
        let mut servers = Vec::with_capacity(shards);
        for p in ports {
            match Server::try_start(p, &extra) {
                Some(s) => servers.push(s),
                None => continue 'attempt,
            }
        }
        return servers;
    }
    panic!("a cluster of {shards} clickhouse-servers did not start on loopback in three attempts");
}

/// A seeded xorshift generator of integers in `[0, n)`, its seed printed under `name` so a
/// failure can be replayed with `FAULTLINE_TEST_SEED`.
pub fn rng(name: &str) -> impl FnMut(u64) -> u64 {
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
    move |n| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    }
}

/// Traces of 1-12 spans over 6 services (names that need quoting among them), each span with fresh ids and values, typed
/// attributes, sometimes events, links and an error status.
pub fn varied_traces(r: &mut impl FnMut(u64) -> u64, n: usize) -> Vec<Vec<Span>> {
    let services = ["api", "cart", "pay'ments", "db\\proxy", "search", "ünïcode"];
    let origins: Vec<Arc<Origin>> = services
        .iter()
        .map(|s| {
            Arc::new(Origin {
                service: s.to_string(),
                resource: vec![
                    ("service.name".into(), AttrValue::Str((*s).into())),
                    (
                        "host.name".into(),
                        AttrValue::Str(format!("host-{}", s.len()).into()),
                    ),
                ],
                scope_name: "io.faultline.test".into(),
                scope_version: "1.2".into(),
            })
        })
        .collect();
    let base = 1_764_000_000_000_000_000u64;
    (0..n)
        .map(|_| {
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&r(u64::MAX).to_be_bytes());
            trace[8..].copy_from_slice(&r(u64::MAX).to_be_bytes());
            let start = base + r(3_600_000_000_000);
            let count = 1 + r(12) as usize;
            let mut spans: Vec<Span> = Vec::new();
            for i in 0..count {
                let id = (r(u64::MAX) | 1).to_be_bytes();
                let offset = r(50_000_000);
                let dur = 1 + r(2_000_000_000);
                let mut attributes = vec![
                    (
                        "user.id".into(),
                        AttrValue::Str(format!("u-{:x}", r(u64::MAX)).into()),
                    ),
                    (
                        "http.status_code".into(),
                        AttrValue::Int(200 + r(300) as i64),
                    ),
                    ("ratio".into(), AttrValue::Double(r(1000) as f64 / 7.0)),
                    ("cached".into(), AttrValue::Bool(r(2) == 0)),
                ];
                // Attributes of other types, anywhere among the others.
                if r(3) == 0 {
                    let at = r(attributes.len() as u64 + 1) as usize;
                    attributes.insert(
                        at,
                        (
                            "tags".into(),
                            AttrValue::Array(vec![AttrValue::Str("a".into()), AttrValue::Int(2)]),
                        ),
                    );
                }
                if r(4) == 0 {
                    let at = r(attributes.len() as u64 + 1) as usize;
                    attributes.insert(
                        at,
                        (
                            "digest".into(),
                            AttrValue::Bytes(r(u64::MAX).to_be_bytes().to_vec()),
                        ),
                    );
                }
                if r(5) == 0 {
                    attributes.push(("ratio.extreme".into(), AttrValue::Double(-1.0e-300 / 3.0)));
                }
                let error = r(10) == 0;
                spans.push(Span {
                    trace_id: trace,
                    span_id: id,
                    parent_span_id: (i > 0).then(|| spans[r(i as u64) as usize].span_id),
                    name: format!("op-{}", r(20)),
                    kind: [SpanKind::Server, SpanKind::Client, SpanKind::Internal][r(3) as usize],
                    start_ns: start + offset,
                    end_ns: start + offset + dur,
                    status: if error {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    status_message: if error { "boom".into() } else { String::new() },
                    attributes,
                    events: if error {
                        vec![Event {
                            time_ns: start + offset + 1,
                            name: "exception".into(),
                            attributes: vec![(
                                "exception.message".into(),
                                AttrValue::Str(format!("failed {}", r(1000)).into()),
                            )],
                        }]
                    } else {
                        vec![]
                    },
                    links: if r(8) == 0 {
                        vec![Link {
                            trace_id: [7; 16],
                            span_id: [9; 8],
                            attributes: vec![],
                        }]
                    } else {
                        vec![]
                    },
                    origin: origins[r(origins.len() as u64) as usize].clone(),
                });
            }
            spans
        })
        .collect()
}
