//! The ClickHouse backend against a real ClickHouse server (Debian's `clickhouse-server`,
//! which `scripts/test` installs), started per test on loopback ports with its own data
//! directory: migrations, exact round trips of varied spans, idempotent re-inserts, and
//! the errors an operator sees.

#![allow(clippy::unwrap_used)]

use faultline_clickhouse::testing::{Server, rng, varied_traces as traces};
use faultline_clickhouse::{ChError, ClickHouse, Client, Config};
use faultline_model::span::Span;

#[test]
fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let server = Server::start();
    ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let client = Client::new(server.config("faultline")).unwrap();
    assert_eq!(
        faultline_clickhouse::schema::current(&client).unwrap(),
        faultline_clickhouse::schema::LATEST
    );
    // A second start (or a second node) finds the schema current and changes nothing.
    ClickHouse::open(server.config("faultline"), "node-b").unwrap();
    let tables = client
        .query_text("SELECT name FROM system.tables WHERE database = 'faultline' ORDER BY name")
        .unwrap();
    assert_eq!(
        tables.lines().collect::<Vec<_>>(),
        [
            "dropped",
            "faultline_schema",
            "rollups",
            "spans",
            "trace_index",
            "trace_index_mv"
        ]
    );
    // A newer faultline wrote version 99: this one refuses to start on it.
    client
        .query("INSERT INTO faultline_schema (version, name) VALUES (99, 'from the future')")
        .unwrap();
    let e = ClickHouse::open(server.config("faultline"), "node-a").unwrap_err();
    assert!(matches!(e, ChError::SchemaNewer { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade faultline"), "{e}");
    // Another database on the same server is separate.
    ClickHouse::open(server.config("other"), "node-a").unwrap();
    assert!(server.log().lines().count() < 1000);
}

#[test]
fn varied_spans_read_back_exactly_and_a_record_inserted_twice_answers_once() {
    let server = Server::start();
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let mut r = rng("clickhouse round trip");
    let traces = traces(&mut r, 120);
    // WAL records hold spans of several traces, in arrival order.
    let all: Vec<Span> = traces.iter().flatten().cloned().collect();
    let mut records: Vec<(u64, Vec<Span>)> = Vec::new();
    let mut rest = &all[..];
    let mut seq = 1000;
    while !rest.is_empty() {
        let n = (1 + r(40) as usize).min(rest.len());
        records.push((seq, rest[..n].to_vec()));
        rest = &rest[n..];
        seq += 1 + r(3);
    }
    // In batches of a few records, then some records again, as after a crash between
    // ClickHouse's acknowledgement and the WAL checkpoint.
    for batch in records.chunks(5) {
        let refs: Vec<(u64, &[Span])> = batch.iter().map(|(s, v)| (*s, v.as_slice())).collect();
        ch.insert(&refs).unwrap();
    }
    let again: Vec<(u64, &[Span])> = records
        .iter()
        .filter(|_| r(3) == 0)
        .map(|(s, v)| (*s, v.as_slice()))
        .collect();
    ch.insert(&again).unwrap();
    assert_eq!(ch.span_count().unwrap(), all.len() as u64);
    for t in &traces {
        let mut want = t.clone();
        want.sort_by_key(|a| (a.start_ns, a.span_id));
        let got = ch.trace(&t[0].trace_id).unwrap();
        assert_eq!(got, want, "trace {}", faultline_model::hex(&t[0].trace_id));
    }
    assert!(ch.trace(&[0xab; 16]).unwrap().is_empty());
    let mut services: Vec<String> = all.iter().map(|s| s.service().to_string()).collect();
    services.sort();
    services.dedup();
    assert_eq!(ch.services().unwrap(), services);
    // Another node's record of the same sequence number is a different record.
    ch.insert(&[(1000, &records[0].1[..1])]).unwrap();
    let other = ClickHouse::open(server.config("faultline"), "node-b").unwrap();
    other.insert(&[(1000, &records[0].1[..1])]).unwrap();
    assert_eq!(ch.span_count().unwrap(), all.len() as u64 + 1);
}

#[test]
fn errors_name_the_server_and_the_statement() {
    let server = Server::start();
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let e = ch
        .client()
        .query("SELECT * FROM no_such_table")
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ChError::Server { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.http))
            && text.contains("SELECT * FROM no_such_table")
            && text.contains("Code: 60"),
        "{text}"
    );
    // A server that is not there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = ClickHouse::open(
        Config::new(&format!("http://127.0.0.1:{port}"), "faultline"),
        "node-a",
    )
    .unwrap_err();
    assert!(matches!(e, ChError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn a_two_shard_cluster_spreads_spans_and_reads_them_through_either_server() {
    let shards = faultline_clickhouse::testing::cluster("two", 2);
    let config = |s: &Server| {
        let mut c = s.config("faultline");
        c.cluster = Some("two".into());
        c
    };
    // The first node's start makes its server's tables; the other shard has none yet,
    // and the check of every shard says so.
    let e = ClickHouse::open(config(&shards[0]), "node-a").unwrap_err();
    assert!(e.to_string().contains("cluster `two`"), "{e}");
    assert!(!e.is_permanent(), "{e}");
    let a = ClickHouse::connect(config(&shards[0]), "node-a").unwrap();
    let b = ClickHouse::open(config(&shards[1]), "node-b").unwrap();
    a.migrate().unwrap();
    let mut r = rng("clickhouse cluster");
    let traces = traces(&mut r, 60);
    let all: Vec<Span> = traces.iter().flatten().cloned().collect();
    let (first, second) = all.split_at(all.len() / 2);
    a.insert(&[(1, first)]).unwrap();
    b.insert(&[(1, second)]).unwrap();
    // Again, as after a crash between the insert and the checkpoint.
    a.insert(&[(1, first)]).unwrap();
    for ch in [&a, &b] {
        assert_eq!(ch.span_count().unwrap(), all.len() as u64);
        for t in &traces {
            let mut want = t.clone();
            want.sort_by_key(|s| (s.start_ns, s.span_id));
            assert_eq!(ch.trace(&t[0].trace_id).unwrap(), want);
        }
    }
    // Both shards hold some of them.
    for s in &shards {
        let local = Client::new(s.config("faultline"))
            .unwrap()
            .query_text("SELECT count() FROM spans_local")
            .unwrap();
        let n: u64 = local.trim().parse().unwrap();
        assert!(n > 0 && n < 2 * all.len() as u64, "{n}");
    }
    // Retention drops on each node's own server; together, everything.
    for ch in [&a, &b] {
        let tomorrow = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 86_400;
        let dropped = ch.drop_days_before(tomorrow).unwrap();
        assert!(
            dropped.iter().any(|(t, _)| t == "spans_local"),
            "{dropped:?}"
        );
    }
    assert_eq!(a.span_count().unwrap(), 0);
    // The layout is refused when it does not match the tables, or the cluster is unknown.
    let e = ClickHouse::open(shards[0].config("faultline"), "node-a").unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains("name that cluster"),
        "{e}"
    );
    let mut unknown = config(&shards[0]);
    unknown.cluster = Some("three".into());
    let e = ClickHouse::open(unknown, "node-a").unwrap_err();
    assert!(e.to_string().contains("no cluster `three`"), "{e}");
    ClickHouse::open(shards[0].config("single"), "node-a").unwrap();
    let mut spread = config(&shards[0]);
    spread.database = "single".into();
    let e = ClickHouse::open(spread, "node-a").unwrap_err();
    assert!(e.to_string().contains("one server's tables"), "{e}");
}

#[test]
fn retention_drops_whole_days_before_the_cutoff() {
    let server = Server::start();
    let ch = ClickHouse::open(server.config("faultline"), "node-a").unwrap();
    let mut r = rng("clickhouse retention");
    // Old traces (2025-11-24) and the same shapes moved to now.
    let old = traces(&mut r, 30);
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut new = traces(&mut r, 30);
    let shift =
        now_ns - 2 * 3_600_000_000_000 - new.iter().flatten().map(|s| s.start_ns).min().unwrap();
    for s in new.iter_mut().flatten() {
        s.start_ns += shift;
        s.end_ns += shift;
        for e in &mut s.events {
            e.time_ns += shift;
        }
    }
    let old_spans: Vec<Span> = old.iter().flatten().cloned().collect();
    let new_spans: Vec<Span> = new.iter().flatten().cloned().collect();
    ch.insert(&[(1, &old_spans), (2, &new_spans)]).unwrap();
    let part = |minute: u64| faultline_clickhouse::RollupPart {
        minute,
        service: Some("api".into()),
        chunk: 0,
        version: 2,
        cells: vec![1, 2, 3],
    };
    let (old_minute, new_minute) = (
        old_spans[0].start_ns / 60_000_000_000,
        new_spans[0].start_ns / 60_000_000_000,
    );
    ch.insert_rollups(&[part(old_minute), part(new_minute)])
        .unwrap();
    // Tail-sampling decisions of each day.
    let (old_id, new_id) = (old[1][0].trace_id, new[1][0].trace_id);
    ch.insert_dropped(&[(old_id, old_minute * 60), (new_id, new_minute * 60)])
        .unwrap();

    let day_s = 86_400;
    let dropped = ch
        .drop_days_before(now_ns / 1_000_000_000 - 2 * day_s)
        .unwrap();
    let mut tables: Vec<&str> = dropped.iter().map(|(t, _)| t.as_str()).collect();
    tables.sort();
    tables.dedup();
    assert_eq!(
        tables,
        ["dropped", "rollups", "spans", "trace_index"],
        "{dropped:?}"
    );
    assert!(
        dropped.iter().all(|(_, day)| *day == 20251124),
        "{dropped:?}"
    );
    assert_eq!(ch.span_count().unwrap(), new_spans.len() as u64);
    assert!(ch.trace(&old[0][0].trace_id).unwrap().is_empty());
    assert_eq!(ch.trace(&new[0][0].trace_id).unwrap().len(), new[0].len());
    let rollups = ch
        .client()
        .query_text("SELECT count() FROM rollups")
        .unwrap();
    assert_eq!(rollups.trim(), "1");
    let decided = ch.dropped_among(&[old_id, new_id]).unwrap();
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided.get(&new_id), Some(&(new_minute * 60)));
    // Nothing more to drop: the same call again drops nothing.
    assert!(
        ch.drop_days_before(now_ns / 1_000_000_000 - 2 * day_s)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn tls_to_clickhouse_with_a_ca_file_and_refusals_that_say_why() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test ClickHouse CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key) = (
        path("cert.pem", &leaf.pem()),
        path("key.pem", &key.serialize_pem()),
    );
    let ca_file = path("ca.pem", &ca_pem);
    let https = faultline_clickhouse::testing::free_port();
    let server = Server::start_with(&format!(
        "<https_port>{https}</https_port><openSSL><server>\
         <certificateFile>{}</certificateFile><privateKeyFile>{}</privateKeyFile>\
         <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>\
         </server></openSSL>",
        cert.display(),
        key.display()
    ));
    let mut cfg = Config::new(&format!("https://127.0.0.1:{https}"), "faultline");
    cfg.ca_file = Some(ca_file.clone());
    let ch = ClickHouse::open(cfg.clone(), "node-a").unwrap();
    let mut r = rng("clickhouse tls");
    let t = traces(&mut r, 3);
    let spans: Vec<Span> = t.iter().flatten().cloned().collect();
    ch.insert(&[(1, &spans)]).unwrap();
    assert_eq!(ch.span_count().unwrap(), spans.len() as u64);
    // The public roots do not trust the test CA: refused at the handshake, said so.
    let mut public = cfg.clone();
    public.ca_file = None;
    let e = ClickHouse::open(public, "node-a").unwrap_err();
    assert!(matches!(e, ChError::Unreachable { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // A CA file that holds no certificate, and one given for plain HTTP.
    let mut empty = cfg.clone();
    empty.ca_file = Some(path("empty.pem", "nothing here\n"));
    let e = Client::new(empty).unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
    let mut plain = server.config("faultline");
    plain.ca_file = Some(ca_file);
    let e = Client::new(plain).unwrap_err();
    assert!(e.to_string().contains("is not https://"), "{e}");
}

/// A stand-in for a ClickHouse server older than 18.16: every request is answered
/// `200 OK` with `version` as the body, as `SELECT version()` would be.
fn old_server(version: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 8192];
            let _ = conn.read(&mut buf);
            let body = format!("{version}\n");
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_server_older_than_18_16_is_refused_for_good_naming_both_versions() {
    for (version, refused) in [("18.14.1", true), ("1.1.54380", true), ("18.16.1", false)] {
        let port = old_server(version);
        let cfg = Config::new(&format!("http://127.0.0.1:{port}"), "faultline");
        let r = ClickHouse::open(cfg, "node-a");
        match (r, refused) {
            (Err(e), true) => {
                assert!(matches!(e, ChError::TooOld { .. }), "{version}: {e}");
                assert!(e.is_permanent(), "{version}: a refusal for good");
                let said = e.to_string();
                assert!(
                    said.contains(version) && said.contains("18.16"),
                    "{version}: {said}"
                );
            }
            // 18.16 passes the check; the stand-in then answers the statements that follow
            // with its version, which is no table: any error but TooOld.
            (Err(e), false) => assert!(!matches!(e, ChError::TooOld { .. }), "{e}"),
            (Ok(_), false) => {}
            (Ok(_), true) => panic!("{version} was accepted"),
        }
    }
}
