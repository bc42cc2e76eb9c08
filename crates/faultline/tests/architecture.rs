//! The architecture as the code has it, checked: the crate graph follows the flow of a
//! span, the binary stays wiring, no function grows past a screenful and a half, and
//! ARCHITECTURE.md names only paths that exist and numbers the code agrees with.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The workspace crates (directory names under `crates/`).
fn crates() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// The faultline crates in `[dependencies]` of a crate (dev-dependencies excluded).
fn deps(krate: &str) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml")).unwrap();
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("faultline") {
            let name = line
                .split(|c: char| c == '=' || c == '.' || c.is_whitespace())
                .next()
                .unwrap();
            out.insert(name.to_string());
        }
    }
    out
}

/// The stages of a span's flow, in order; each may depend on the shared model and on the
/// crates listed (always earlier in the flow, or the stage it writes into).
const ALLOWED: &[(&str, &[&str])] = &[
    ("faultline-model", &[]),
    ("faultline-wal", &[]),
    // Tokens, the route map and the audit log guard every listener: they know no stage.
    // The client's address for the audit log comes from TLS's accept loop (`Peer`).
    ("faultline-auth", &["faultline-tls"]),
    // TLS for every listener: certificates, reloading, the accept loop. Knows no stage.
    ("faultline-tls", &[]),
    // The sampling policy and arithmetic: used by the API (the sampling port) and, for
    // adjusted counts, by the stages that read spans.
    ("faultline-sampling", &["faultline-model"]),
    ("faultline-intake", &["faultline-model", "faultline-wal"]),
    // The pipeline writes into the embedded store, or ClickHouse (`clickhouse.rs`).
    (
        "faultline-pipeline",
        &[
            "faultline-model",
            "faultline-wal",
            "faultline-store",
            "faultline-clickhouse",
        ],
    ),
    ("faultline-store", &["faultline-model"]),
    // The ClickHouse backend, a second store beside the embedded one: it implements the
    // store's query trait and answers RED and search with the store's own rollup and
    // summary code, so both backends answer alike.
    (
        "faultline-clickhouse",
        &["faultline-model", "faultline-store"],
    ),
    // Probes call services from outside and hand their spans to a sink the binary
    // connects to intake: they know only the model.
    // The outbox knows nothing of where its transitions come from.
    ("faultline-notify", &[]),
    // The fault proxy sits beside the flow: it moves bytes between other services, keeps
    // its own state file (the WAL crate's `durable`) and makes spans of HTTP requests
    // (the model), which the binary hands to intake.
    // Experiments check trace assertions (the rules) as steady-state probes.
    (
        "faultline-chaos",
        &[
            "faultline-model",
            "faultline-wal",
            "faultline-rules",
            // Experiments call faultline and the proxy over https too.
            "faultline-tls",
        ],
    ),
    // Trace assertions are logic over spans; the API reads the spans for them.
    ("faultline-rules", &["faultline-model"]),
    // Continuous checks observe the store's spans (its observer hook) with the rules'
    // selectors, read whole traces for assertions and hand transitions to the outbox.
    (
        "faultline-checks",
        &[
            "faultline-model",
            "faultline-rules",
            "faultline-store",
            "faultline-notify",
        ],
    ),
    // Probes and alerts keep a state file, replaced durably with the WAL crate's
    // `durable` (they write no log records).
    (
        "faultline-probe",
        &["faultline-model", "faultline-wal", "faultline-notify"],
    ),
    // Alert rules read the store's rollups.
    (
        "faultline-alerts",
        &[
            "faultline-model",
            "faultline-wal",
            "faultline-store",
            "faultline-notify",
        ],
    ),
    (
        "faultline-api",
        &[
            "faultline-model",
            "faultline-store",
            "faultline-sampling",
            "faultline-probe",
            "faultline-alerts",
            "faultline-notify",
            "faultline-chaos",
            "faultline-rules",
            "faultline-checks",
            "faultline-auth",
        ],
    ),
    (
        "faultline-ui",
        &[
            "faultline-model",
            "faultline-store",
            "faultline-api",
            "faultline-probe",
            "faultline-alerts",
            "faultline-notify",
            "faultline-chaos",
            "faultline-checks",
            "faultline-auth",
            // The connection's `Peer`: whether the login cookie must be `Secure`.
            "faultline-tls",
        ],
    ),
    (
        "faultline-bench",
        &[
            "faultline-model",
            "faultline-store",
            "faultline-checks",
            // The ClickHouse backend's inserts and reads (`faultline-bench clickhouse`),
            // with the writer's rollup parts.
            "faultline-clickhouse",
            "faultline-pipeline",
            // The process's default TLS provider for its HTTP clients.
            "faultline-tls",
        ],
    ),
    // The terminal commands call the HTTP API and render with the UI's text views.
    (
        "faultline-client",
        &[
            "faultline-model",
            "faultline-ui",
            "faultline-rules",
            "faultline-checks",
            // https:// APIs: the client side of faultline-tls.
            "faultline-tls",
            // `faultline experiment`: runs experiment files against a running faultline.
            "faultline-chaos",
        ],
    ),
];

#[test]
fn the_crate_graph_follows_the_flow_of_a_span() {
    for krate in crates() {
        let got = deps(&krate);
        if krate == "faultline" {
            // The binary wires everything, except the benchmarks.
            assert!(
                !got.contains("faultline-bench"),
                "the server binary ships the product only"
            );
            continue;
        }
        let Some((_, allowed)) = ALLOWED.iter().find(|(k, _)| *k == krate) else {
            panic!(
                "crate {krate} is not in ALLOWED: say where it sits in the flow (and in ARCHITECTURE.md)"
            );
        };
        for d in &got {
            assert!(
                allowed.contains(&d.as_str()),
                "{krate} depends on {d}, against the flow (allowed: {allowed:?})"
            );
        }
        assert!(
            !got.contains("faultline-intake"),
            "{krate} depends on the receivers crate"
        );
    }
}

/// Lines of `text` before its test module (`#[cfg(test)]` followed by `mod`).
fn non_test(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(3)
        .position(|w| {
            w[0].trim() == "#[cfg(test)]"
                && (w[1].trim_start().starts_with("mod ") || w[2].trim_start().starts_with("mod "))
        })
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_binary_is_cli_configuration_and_wiring() {
    let mut files = Vec::new();
    rust_files(&root().join("crates/faultline/src"), &mut files);
    let lines: usize = files
        .iter()
        .map(|f| non_test(&std::fs::read_to_string(f).unwrap()).len())
        .sum();
    assert!(
        lines < 1500,
        "crates/faultline/src has {lines} non-test lines; behaviour belongs in a library crate"
    );
}

/// `unsafe` is denied in every crate (workspace lints); two files may allow it, each with
/// its measured reason in its module doc and a `// SAFETY:` comment on every block: the
/// allocator's option setter in the binary, and the store's cache prefetch hint.
#[test]
fn unsafe_code_is_allowed_in_two_places_only() {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    let allow = concat!("allow(", "unsafe_code)");
    let mut allowing: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains(allow))
        .map(|f| {
            f.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    allowing.sort();
    let places = [
        "crates/faultline-store/src/prefetch.rs",
        "crates/faultline/src/alloc.rs",
    ];
    assert_eq!(allowing, places);
    for place in places {
        let text = std::fs::read_to_string(root().join(place)).unwrap();
        assert_eq!(
            text.matches("unsafe {").count(),
            text.matches("// SAFETY:").count(),
            "every unsafe block in {place} says why it is sound"
        );
    }
}

#[test]
fn no_function_is_longer_than_150_lines() {
    let mut files = Vec::new();
    for k in crates() {
        rust_files(&root().join("crates").join(&k).join("src"), &mut files);
    }
    let mut long = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let lines = non_test(&text);
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "async fn ",
                "pub async fn ",
                "pub(crate) async fn ",
                "const fn ",
            ]
            .iter()
            .any(|p| t.starts_with(p));
            if !is_fn || t.ends_with(';') {
                continue;
            }
            let indent = &l[..l.len() - t.len()];
            let close = format!("{indent}}}");
            if let Some(n) = lines[i + 1..].iter().position(|x| **x == close)
                && n + 2 > 150
            {
                long.push(format!("{}:{} is {} lines", f.display(), i + 1, n + 2));
            }
        }
    }
    assert!(long.is_empty(), "split these: {long:#?}");
}

/// Backticked paths in ARCHITECTURE.md (`crates/...`, `scripts/...`, `tests/...`, or a
/// file name with an extension under a crate named just before).
fn named_paths(doc: &str) -> Vec<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            (s.starts_with("crates/") || s.starts_with("scripts/") || s.starts_with("docs/"))
                && !s.contains(' ')
                && !s.contains('*')
        })
        .map(|s| s.trim_end_matches(['.', ',', ':', ')']).to_string())
        .collect()
}

#[test]
fn architecture_md_names_only_paths_that_exist() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let paths = named_paths(&doc);
    assert!(
        paths.len() > 20,
        "ARCHITECTURE.md names too few paths: {paths:?}"
    );
    let missing: Vec<&String> = paths.iter().filter(|p| !root().join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn architecture_md_states_the_numbers_the_code_has() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let flat = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let expect = [
        format!(
            "more than {} s old",
            faultline_pipeline::DEFAULT_LIVE_FIRST_AFTER.as_secs()
        ),
        format!(
            "{} times the block size",
            faultline_pipeline::MAX_HEAD_FACTOR
        ),
        format!(
            "row groups of at most {} rows",
            faultline_store::block::ROW_GROUP_ROWS
        ),
        format!(
            "pages of at most {} rows",
            faultline_store::block::PAGE_ROWS
        ),
        "a block is four files".to_string(),
        format!(
            "fails processing {} times",
            faultline_pipeline::dlq::MAX_ATTEMPTS
        ),
        format!(
            "default {} traces, at most {}",
            faultline_api::params::DEFAULT_LIMIT,
            faultline_api::params::MAX_LIMIT
        ),
        format!(
            "more than {} records behind",
            faultline_pipeline::health::BEHIND_RECORDS
        ),
        format!(
            "{} spans per second by default",
            faultline_pipeline::DEFAULT_BACKLOG_RATE
        ),
    ];
    let missing: Vec<&String> = expect
        .iter()
        .filter(|e| !flat.contains(e.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not say (or no longer matches the code): {missing:#?}"
    );
}
