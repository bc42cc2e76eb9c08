//! A ClickHouse server for tests and benchmarks (feature `testing`): Debian's
//! `clickhouse-server` (or `FAULTLINE_CLICKHOUSE_SERVER`) started on free loopback ports
//! with its own data directory, killed and removed when dropped, and restartable on the
//! same ports and data (to take the server away under load and bring it back).
//!
//! Its configuration (`config.xml`, `users.xml` in the data directory) is the minimal one
//! `docs/clickhouse-groundwork.md` found to work on 18.16: loopback only, UTC, the
//! `default` user without a password from 127.0.0.1, and `old_parts_lifetime` of 10 s so a
//! dropped partition does not come back after a restart. Test code: it panics on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, http: u16) {
    let d = dir.display();
    let (tcp, inter) = (free_port(), free_port());
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
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let http = free_port();
            write_config(dir.path(), http);
            let mut s = Self {
                child: None,
                http,
                dir,
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("clickhouse-server did not start on loopback in three attempts");
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
