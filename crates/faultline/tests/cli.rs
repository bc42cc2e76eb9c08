//! The command line: configuration precedence (file < environment < flags), clear errors
//! for bad configuration and busy ports, and the read-only `wal verify` / `wal dump`
//! operator tools.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, Ports, Server, http_get};

#[test]
fn config_file_env_and_flags_in_that_order() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("faultline.toml");
    // Which source should win, as (env set, flag set) -> the port the API must answer on.
    // Ports are picked free and released before faultline binds them, so another test's
    // client can take one in between: an attempt that fails with "Address already in use"
    // is retried on fresh ports, any other early exit fails with faultline's log.
    for (use_env, use_flag) in [(false, false), (true, false), (true, true)] {
        let mut answered = None;
        for _attempt in 0..5 {
            let (file_api, env_api, flag_api) = (
                common::free_port(),
                common::free_port(),
                common::free_port(),
            );
            let expect = if use_flag {
                flag_api
            } else if use_env {
                env_api
            } else {
                file_api
            };
            let p = Ports::new();
            std::fs::write(
                &cfg,
                format!(
                    "data_dir = \"{}\"\n[listen]\nhttp = \"127.0.0.1:{file_api}\"\notlp_grpc = \"127.0.0.1:{}\"\notlp_http = \"127.0.0.1:{}\"\nzipkin = \"127.0.0.1:{}\"\nsampling = \"127.0.0.1:{}\"\n[wal]\ndurability = \"os\"\n",
                    tmp.path().join("from-file").display(),
                    p.grpc,
                    p.http,
                    p.zipkin,
                    p.sampling
                ),
            )
            .unwrap();
            let log_path = tmp.path().join("serve.log");
            let mut c = Command::new(BIN);
            c.arg("serve")
                .arg("--config")
                .arg(&cfg)
                .stderr(std::fs::File::create(&log_path).unwrap());
            if use_env {
                c.env("FAULTLINE_HTTP", format!("127.0.0.1:{env_api}"));
            }
            if use_flag {
                c.args(["--http", &format!("127.0.0.1:{flag_api}")]);
            }
            let mut child = c.spawn().unwrap();
            let mut outcome = Err(String::new());
            for _ in 0..1500 {
                if http_get(expect, "/ready")
                    .map(|r| r.0 == 200)
                    .unwrap_or(false)
                {
                    outcome = Ok(());
                    break;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    outcome = Err(std::fs::read_to_string(&log_path).unwrap_or_default());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            match outcome {
                Ok(()) => {
                    answered = Some(expect);
                    break;
                }
                Err(log) if log.contains("Address already in use") => continue,
                Err(_) => panic!(
                    "API expected on port {expect} within 30 s (env {use_env}, flag {use_flag}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ),
            }
        }
        assert!(
            answered.is_some(),
            "no free ports after 5 attempts (env {use_env}, flag {use_flag})"
        );
    }
    assert!(
        tmp.path().join("from-file/wal").is_dir(),
        "data_dir from the file is used"
    );
}

#[test]
fn bad_config_and_busy_ports_fail_with_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[wal]\nmax_byte = 10\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml is not valid") && err.contains("max_byte"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--durability", "sometimes", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown durability mode \"sometimes\""));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let p = Ports::new();
    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("d"))
        .args(["--otlp-http", &format!("127.0.0.1:{port}")])
        .args([
            "--otlp-grpc",
            &format!("127.0.0.1:{}", p.grpc),
            "--zipkin",
            &format!("127.0.0.1:{}", p.zipkin),
            "--http",
            &format!("127.0.0.1:{}", p.api),
            "--sampling",
            &format!("127.0.0.1:{}", p.sampling),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot listen for OTLP/HTTP on 127.0.0.1:{port}"))
            && err.contains("--otlp-http"),
        "{err}"
    );
}

#[test]
fn wal_verify_and_dump_report_what_is_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, &[]);
    let summary = common::loadgen(&[
        "--endpoint",
        &server.http_url(),
        "--duration",
        "0.5",
        "--concurrency",
        "2",
        "--spans-per-request",
        "50",
    ])
    .wait();
    let requests = summary["requests_ok"].as_u64().unwrap();
    assert!(requests > 0, "{summary}");
    server.stop();

    let out = Command::new(BIN)
        .args(["wal", "verify"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{requests} records")) && text.ends_with("ok\n"),
        "{text}"
    );

    let out = Command::new(BIN)
        .args(["wal", "dump"])
        .arg(&data)
        .args(["--limit", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("1 ")
            && lines[0].contains("otlp-http-protobuf")
            && lines[0].contains("frontend"),
        "{text}"
    );

    // Corrupt the middle of a sealed-looking segment: verify says so and exits 1, and
    // leaves the file alone.
    let seg = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    // A second segment after it makes the first one sealed.
    std::fs::write(data.join("wal").join("00000000000099999999.wal"), b"").unwrap();
    let out = Command::new(BIN)
        .args(["wal", "verify"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("CORRUPT") && text.contains("checksum"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "verify changes nothing"
    );

    // Start-up quarantines it, reports it in /metrics, and serves.
    let server = Server::start(&data, &[]);
    let m = server.metrics();
    assert_eq!(
        common::metric(&m, "faultline_wal_quarantined_segments"),
        2.0,
        "{m}"
    );
    assert!(data.join("wal/quarantine").read_dir().unwrap().count() == 2);
}
