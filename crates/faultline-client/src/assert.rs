//! `faultline assert FILE (--trace ID | --service NAME [--operation OP] [--since 1h]
//! [--limit N])`: checks a trace assertion file (`faultline_rules::assertion`) over one
//! trace or every trace a search finds, through `POST /api/v1/assertions/run`. The file
//! is checked here first, so a bad selector is reported with its column before anything
//! is sent. Prints a report (each trace, each assertion, the spans that broke it, a link
//! to the trace), optionally JUnit XML, and exits 0 when everything held, 1 when an
//! assertion failed, 2 when nothing could be checked (a bad file, no trace found, an
//! error from the server).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::ClientError;
use crate::query::{api_error, post};

/// Flags of `faultline assert`.
#[derive(Debug, clap::Args)]
pub struct AssertArgs {
    /// The assertion file (JSON).
    pub file: PathBuf,
    /// Check this trace (hex id).
    #[arg(long, conflicts_with = "service")]
    pub trace: Option<String>,
    /// Check the traces of this service found over `--since`.
    #[arg(long)]
    pub service: Option<String>,
    /// Only traces with this operation of the service.
    #[arg(long, requires = "service")]
    pub operation: Option<String>,
    /// How far back to search, a duration such as 30m or 24h.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Most traces checked.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// Write JUnit XML here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Print the API's answer (JSON) instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Base URL of the faultline HTTP API (https: FAULTLINE_CA_FILE names a PEM CA to trust).
    #[arg(long, env = "FAULTLINE_API", default_value = "http://127.0.0.1:16686")]
    pub api: String,
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The readable report of an answer.
pub fn report(v: &Value, ui: &str) -> String {
    let mut out = String::new();
    for t in v["traces"].as_array().into_iter().flatten() {
        let id = t["traceId"].as_str().unwrap_or_default();
        let verdict = if t["pass"] == true { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "{verdict} trace {id}  {ui}/trace/{id}");
        for r in t["results"].as_array().into_iter().flatten() {
            let mark = if r["pass"] == true { "ok  " } else { "FAIL" };
            let _ = write!(
                out,
                "  {mark} {}: {}",
                r["name"].as_str().unwrap_or_default(),
                r["message"].as_str().unwrap_or_default()
            );
            let spans: Vec<&str> = r["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !spans.is_empty() {
                let _ = write!(out, " (spans {})", spans.join(", "));
            }
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "{} traces checked, {} failed",
        v["checked"], v["failed"]
    );
    out
}

/// JUnit XML: a test suite per trace, a test case per assertion.
pub fn junit(v: &Value) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for t in v["traces"].as_array().into_iter().flatten() {
        let results = t["results"].as_array().cloned().unwrap_or_default();
        let failures = results.iter().filter(|r| r["pass"] != true).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"trace {}\" tests=\"{}\" failures=\"{failures}\">",
            xml(t["traceId"].as_str().unwrap_or_default()),
            results.len()
        );
        for r in &results {
            let name = xml(r["name"].as_str().unwrap_or_default());
            if r["pass"] == true {
                let _ = writeln!(out, "    <testcase name=\"{name}\"/>");
            } else {
                let _ = writeln!(
                    out,
                    "    <testcase name=\"{name}\">\n      <failure message=\"{}\">spans: {}</failure>\n    </testcase>",
                    xml(r["message"].as_str().unwrap_or_default()),
                    xml(&r["spans"].to_string())
                );
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Runs `faultline assert`; the exit code.
pub fn run(a: AssertArgs) -> Result<u8, ClientError> {
    let text = std::fs::read_to_string(&a.file).map_err(|e| {
        ClientError(format!(
            "cannot read assertion file {}: {e}",
            a.file.display()
        ))
    })?;
    if let Err(e) = faultline_rules::AssertionFile::parse(&text) {
        eprintln!(
            "faultline: assertion file {} is not valid: {e}",
            a.file.display()
        );
        return Ok(2);
    }
    let assertions: Value = serde_json::from_str(&text).map_err(|e| ClientError(e.to_string()))?;
    let body = match (&a.trace, &a.service) {
        (Some(id), _) => json!({"assertions": assertions, "traceId": id}),
        (None, Some(s)) => json!({"assertions": assertions, "search": {
            "service": s, "operation": a.operation, "lookback": a.since, "limit": a.limit}}),
        (None, None) => {
            eprintln!(
                "faultline: say which traces to check: --trace ID, or --service NAME [--since 1h]"
            );
            return Ok(2);
        }
    };
    let api = a.api.trim_end_matches('/');
    let (status, v) = post(&format!("{api}/api/v1/assertions/run"), body.to_string())?;
    if status != 200 {
        eprintln!("faultline: {} (HTTP {status})", api_error(&v));
        return Ok(2);
    }
    if let Some(p) = &a.junit {
        std::fs::write(p, junit(&v))
            .map_err(|e| ClientError(format!("cannot write {}: {e}", p.display())))?;
    }
    match a.json {
        true => println!("{v}"),
        false => print!("{}", report(&v, api)),
    }
    if v["checked"] == 0 {
        eprintln!("faultline: no trace matched, so nothing was checked");
        return Ok(2);
    }
    Ok(if v["pass"] == true { 0 } else { 1 })
}
