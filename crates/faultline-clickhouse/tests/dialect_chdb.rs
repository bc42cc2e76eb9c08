//! One SQL dialect on Debian's ClickHouse 18.16 and on current ClickHouse: chDB
//! (ClickHouse 26.x in process, from PyPI, in the test venv) behind
//! `tests/clients/chdb_http.py`, a shim of ClickHouse's HTTP interface, so this crate's
//! client runs unchanged against both. The same migrations, inserts (some twice) and
//! every kind of read run on each, and every answer must be the same; the cluster
//! layout's statements are accepted by current ClickHouse too.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline_clickhouse::testing::{Server, rng, varied_traces};
use faultline_clickhouse::{ClickHouse, Config, RollupPart};
use faultline_model::span::Span;
use faultline_store::rollup::RollupBuilder;
use faultline_store::{SortOrder, SpanStore, TraceQuery};

/// The Python interpreter of the test venv (set up by `scripts/test`, with chDB).
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FAULTLINE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python test environment: run ./scripts/test (it creates .venv with chDB), or set FAULTLINE_TEST_PYTHON"
    );
    venv
}

/// The shim over chDB, killed when dropped.
struct Shim {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shim {
    /// Starts the shim; `remote_servers` (XML) goes into chDB's configuration.
    fn start(remote_servers: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/chdb_http.py");
        let mut cmd = Command::new(python());
        cmd.arg(script).arg(&port_file);
        if let Some(xml) = remote_servers {
            let config = dir.path().join("config.xml");
            std::fs::write(&config, format!("<clickhouse>{xml}</clickhouse>")).unwrap();
            cmd.arg("--config-file").arg(config);
        }
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let mut child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let started = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse().unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
                panic!(
                    "the chDB shim exited with {status} (is chdb in the venv? scripts/test installs it): {log}"
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the chDB shim did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn config(&self, database: &str) -> Config {
        Config::new(&format!("http://127.0.0.1:{}", self.port), database)
    }
}

/// The rollup parts of `records`, as the writer makes them for one chunk.
fn rollup_parts(records: &[(u64, Vec<Span>)]) -> Vec<RollupPart> {
    let mut b = RollupBuilder::default();
    for (_, spans) in records {
        for s in spans {
            b.push(s);
        }
    }
    let version = records.last().map_or(0, |r| r.0);
    b.rollups()
        .parts()
        .into_iter()
        .map(|(minute, service, part)| RollupPart {
            minute,
            service,
            chunk: 0,
            version,
            cells: part.encode(),
        })
        .collect()
}

/// Every kind of write and read this crate makes, on server `cfg`; the answers as text.
fn scenario(cfg: Config, traces: &[Vec<Span>], records: &[(u64, Vec<Span>)]) -> Vec<String> {
    let ch = ClickHouse::open(cfg, "node-a").unwrap();
    for batch in records.chunks(7) {
        let refs: Vec<(u64, &[Span])> = batch.iter().map(|(s, v)| (*s, v.as_slice())).collect();
        ch.insert(&refs).unwrap();
    }
    // Some again, as after a crash between the insert and the checkpoint.
    let again: Vec<(u64, &[Span])> = records
        .iter()
        .step_by(3)
        .map(|(s, v)| (*s, v.as_slice()))
        .collect();
    ch.insert(&again).unwrap();
    let parts = rollup_parts(records);
    ch.insert_rollups(&parts).unwrap();
    // A smaller version of the same parts, as after a crash: it changes nothing.
    let older = rollup_parts(&records[..records.len() / 2]);
    ch.insert_rollups(&older).unwrap();

    let mut out = vec![format!("spans {}", ch.span_count().unwrap())];
    let ids: Vec<_> = traces.iter().map(|t| t[0].trace_id).collect();
    for (t, got) in traces.iter().zip(ch.traces(&ids).unwrap()) {
        let mut want = t.clone();
        want.sort_by_key(|s| (s.start_ns, s.span_id));
        assert_eq!(got, want, "trace {}", faultline_model::hex(&t[0].trace_id));
    }
    out.push(format!("traces {}", ids.len()));
    // Tail sampling dropped every third trace (half the decisions sent twice, as after a
    // restart): trace reads and the searches below leave them out.
    let dropped: Vec<_> = ids
        .iter()
        .step_by(3)
        .map(|id| (*id, 1_764_000_000 + u64::from(id[15])))
        .collect();
    ch.insert_dropped(&dropped).unwrap();
    ch.insert_dropped(&dropped[..dropped.len() / 2]).unwrap();
    let gone: Vec<bool> = SpanStore::traces(&ch, &ids)
        .unwrap()
        .iter()
        .map(|a| a.spans.is_empty())
        .collect();
    assert_eq!(gone, (0..ids.len()).map(|i| i % 3 == 0).collect::<Vec<_>>());
    out.push(format!(
        "dropped {:?} {:?}",
        SpanStore::dropped_by_policy(&ch, &ids[0]),
        SpanStore::dropped_by_policy(&ch, &ids[1])
    ));
    let services = ch.services().unwrap();
    out.push(format!("services {services:?}"));
    let (first, last) = (
        traces.iter().flatten().map(|s| s.start_ns).min().unwrap(),
        traces.iter().flatten().map(|s| s.end_ns).max().unwrap(),
    );
    let (start_s, end_s) = (first / 1_000_000_000, last / 1_000_000_000 + 1);
    for s in &services {
        out.push(format!("operations {s}: {:?}", ch.operations(s).unwrap()));
        out.push(format!(
            "red {s}: {:?}",
            SpanStore::red(&ch, s, None, None, start_s, end_s, 600).unwrap()
        ));
        out.push(format!(
            "red total {s}: {:?}",
            SpanStore::red_total(&ch, s, Some("op-3"), None, start_s, end_s).unwrap()
        ));
        out.push(format!(
            "distribution {s}: {:?}",
            SpanStore::latency_distribution(&ch, s, None, start_s, end_s, &[1.0, 100.0, 1000.0])
                .unwrap()
        ));
    }
    out.push(format!(
        "dependencies {:?}",
        SpanStore::dependencies(&ch, start_s, end_s).unwrap()
    ));
    let base = TraceQuery {
        start_ns: first,
        end_ns: last,
        limit: 20,
        ..TraceQuery::default()
    };
    let queries = [
        TraceQuery {
            service: Some("pay'ments".into()),
            ..base.clone()
        },
        TraceQuery {
            service: Some("api".into()),
            operation: Some("op-7".into()),
            min_duration_ns: Some(100_000_000),
            sort: SortOrder::Longest,
            ..base.clone()
        },
        TraceQuery {
            tags: vec![("error".into(), "true".into())],
            sort: SortOrder::Oldest,
            ..base.clone()
        },
        TraceQuery {
            service: Some("db\\proxy".into()),
            tags: vec![("cached".into(), "true".into())],
            max_duration_ns: Some(900_000_000),
            sort: SortOrder::Shortest,
            ..base.clone()
        },
        TraceQuery {
            tags: vec![("host.name".into(), "host-6".into())],
            sort: SortOrder::Sample,
            ..base.clone()
        },
        TraceQuery {
            tags: vec![("otel.status_description".into(), "boom".into())],
            errors_only: true,
            ..base.clone()
        },
        TraceQuery {
            tags: vec![("span.kind".into(), "client".into())],
            limit: 5,
            ..base.clone()
        },
    ];
    for q in &queries {
        let (found, c) = SpanStore::search(&ch, q).unwrap();
        assert!(c.is_complete(), "{q:?}: {c:?}");
        assert!(
            found
                .iter()
                .all(|s| !dropped.iter().any(|d| d.0 == s.trace_id)),
            "{q:?} found a dropped trace"
        );
        out.push(format!("search {q:?}: {found:?}"));
    }
    // Retention last: every day before 2100 goes, from every table.
    let mut gone = ch.drop_days_before(4_102_444_800).unwrap();
    gone.sort();
    out.push(format!("retention {gone:?}"));
    out.push(format!(
        "spans after retention {}",
        ch.span_count().unwrap()
    ));
    out
}

#[test]
fn the_same_statements_answer_the_same_on_18_16_and_current_clickhouse() {
    let shim = Shim::start(None);
    let old = Server::start();
    let mut r = rng("clickhouse dialect");
    let traces = varied_traces(&mut r, 150);
    let mut records: Vec<(u64, Vec<Span>)> = Vec::new();
    let all: Vec<Span> = traces.iter().flatten().cloned().collect();
    for (k, chunk) in all.chunks(17).enumerate() {
        records.push((k as u64, chunk.to_vec()));
    }
    let current = scenario(shim.config("fl"), &traces, &records);
    let debian = scenario(old.config("fl"), &traces, &records);
    assert_eq!(current[0], format!("spans {}", all.len()));
    assert!(
        current
            .iter()
            .any(|l| l.starts_with("search") && l.contains("TraceSummary")),
        "no search found anything: {current:#?}"
    );
    for (a, b) in current.iter().zip(&debian) {
        // Exactly, floats too: the rollup code sums in a fixed order.
        assert_eq!(a, b, "current ClickHouse and 18.16 answer differently");
    }
    assert_eq!(current.len(), debian.len());
    let n = current.len();
    assert!(
        current[n - 2].contains("\"spans\"") && current[n - 2].contains("\"dropped\""),
        "retention dropped: {}",
        current[n - 2]
    );
    assert_eq!(current[n - 1], "spans after retention 0");
}

#[test]
fn current_clickhouse_accepts_the_cluster_layout() {
    // chDB has no network listener: its cluster names a shard nobody serves, so the
    // statements are made and the check through every shard is what fails, naming it.
    let xml = "<remote_servers><two><shard><replica><host>127.0.0.1</host><port>1</port>\
               </replica></shard></two></remote_servers>";
    let shim = Shim::start(Some(xml));
    let mut cfg = shim.config("spread");
    cfg.cluster = Some("two".into());
    let e = ClickHouse::open(cfg.clone(), "node-a").unwrap_err();
    assert!(
        e.to_string()
            .contains("a read of every shard of cluster `two`"),
        "{e}"
    );
    let client = faultline_clickhouse::Client::new(cfg).unwrap();
    let tables = client
        .query_text(
            "SELECT name, engine FROM system.tables WHERE database = 'spread' ORDER BY name",
        )
        .unwrap();
    let tables: Vec<&str> = tables.lines().collect();
    assert_eq!(
        tables,
        [
            "dropped\tDistributed",
            "dropped_local\tReplacingMergeTree",
            "faultline_schema\tMergeTree",
            "rollups\tDistributed",
            "rollups_local\tReplacingMergeTree",
            "spans\tDistributed",
            "spans_local\tReplacingMergeTree",
            "trace_index\tDistributed",
            "trace_index_local\tMergeTree",
            "trace_index_mv\tMaterializedView",
        ]
    );
}
