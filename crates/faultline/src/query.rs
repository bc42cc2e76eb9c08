//! `faultline query trace ID` and `faultline query red SERVICE`: the query API for people
//! who live in terminals. Both call a running faultline's HTTP API (`--api`, default
//! `http://127.0.0.1:16686`) and print text; `--json` prints the API's answer as is.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// Flags of `faultline query`.
#[derive(Debug, clap::Subcommand)]
pub enum QueryCommand {
    /// One trace as an indented tree: offset, duration, service, operation, errors.
    Trace {
        /// Trace id (hex).
        id: String,
        /// Base URL of the faultline HTTP API.
        #[arg(long, env = "FAULTLINE_API", default_value = "http://127.0.0.1:16686")]
        api: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rate, errors and latency of a service per step.
    Red {
        /// Service name.
        service: String,
        /// Only this operation.
        #[arg(long)]
        operation: Option<String>,
        /// Window ending now, in seconds.
        #[arg(long, default_value_t = 3600)]
        since: u64,
        /// Step in seconds (a multiple of 60).
        #[arg(long, default_value_t = 300)]
        step: u64,
        /// Base URL of the faultline HTTP API.
        #[arg(long, env = "FAULTLINE_API", default_value = "http://127.0.0.1:16686")]
        api: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

fn get(url: &str) -> anyhow::Result<(u16, Value)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        let resp =
            client.get(url).send().await.with_context(|| {
                format!("cannot reach {url}; is faultline serving there? (--api)")
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.context("cannot read the answer")?;
        let v = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the answer from {url} is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, v))
    })
}

fn api_error(v: &Value) -> String {
    v["errors"][0]["msg"]
        .as_str()
        .or(v["error"].as_str())
        .unwrap_or("unknown error")
        .to_string()
}

/// Runs `faultline query`.
pub fn run(cmd: QueryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QueryCommand::Trace { id, api, json } => {
            let (status, v) = get(&format!("{}/api/traces/{id}", api.trim_end_matches('/')))?;
            if json {
                println!("{v}");
            }
            if status != 200 {
                eprintln!("faultline: {} (HTTP {status})", api_error(&v));
                return Ok(ExitCode::from(1));
            }
            if !json {
                print!("{}", render_trace(&v["data"][0]));
                if let Some(reasons) = v["partial"]["reasons"].as_array() {
                    for r in reasons {
                        println!("note: partial answer: {}", r.as_str().unwrap_or_default());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        QueryCommand::Red {
            service,
            operation,
            since,
            step,
            api,
            json,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let end = (now / 60 + 1) * 60;
            let start = end.saturating_sub(since);
            let mut url = format!(
                "{}/api/v1/red?service={}&start={start}&end={end}&step={step}",
                api.trim_end_matches('/'),
                encode(&service)
            );
            if let Some(op) = &operation {
                url.push_str(&format!("&operation={}", encode(op)));
            }
            let (status, v) = get(&url)?;
            if json {
                println!("{v}");
            }
            if status != 200 {
                eprintln!("faultline: {} (HTTP {status})", api_error(&v));
                return Ok(ExitCode::from(1));
            }
            if !json {
                print!("{}", render_red(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn render_trace(t: &Value) -> String {
    let empty = Vec::new();
    let spans = t["spans"].as_array().unwrap_or(&empty);
    let start0 = spans
        .iter()
        .filter_map(|s| s["startTime"].as_u64())
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .filter_map(|s| Some(s["startTime"].as_u64()? + s["duration"].as_u64()?))
        .max()
        .unwrap_or(start0);
    let ids: std::collections::HashSet<&str> =
        spans.iter().filter_map(|s| s["spanID"].as_str()).collect();
    let parent_of = |s: &Value| -> Option<String> {
        s["references"]
            .as_array()?
            .iter()
            .find(|r| r["refType"] == "CHILD_OF")
            .and_then(|r| r["spanID"].as_str())
            .map(String::from)
    };
    let mut out = format!(
        "trace {} - {} spans, {:.3} ms\n",
        t["traceID"].as_str().unwrap_or_default(),
        spans.len(),
        (end - start0) as f64 / 1000.0
    );
    // Roots: no parent, or a parent that is not in the trace (marked as orphans).
    let mut order: Vec<(usize, &Value, bool)> = Vec::new();
    fn walk<'a>(
        spans: &'a [Value],
        parent: &str,
        depth: usize,
        parent_of: &dyn Fn(&Value) -> Option<String>,
        out: &mut Vec<(usize, &'a Value, bool)>,
    ) {
        for s in spans
            .iter()
            .filter(|s| parent_of(s).as_deref() == Some(parent))
        {
            out.push((depth, s, false));
            if let Some(id) = s["spanID"].as_str() {
                walk(spans, id, depth + 1, parent_of, out);
            }
        }
    }
    for s in spans {
        let p = parent_of(s);
        let orphan = p.as_deref().is_some_and(|p| !ids.contains(p));
        if p.is_none() || orphan {
            order.push((0, s, orphan));
            if let Some(id) = s["spanID"].as_str() {
                walk(spans, id, 1, &parent_of, &mut order);
            }
        }
    }
    for (depth, s, orphan) in order {
        let service = t["processes"][s["processID"].as_str().unwrap_or_default()]["serviceName"]
            .as_str()
            .unwrap_or("?");
        let error = s["tags"].as_array().is_some_and(|tags| {
            tags.iter()
                .any(|t| t["key"] == "error" && t["value"] == true)
        });
        out.push_str(&format!(
            "{:>10.3} ms {:>10.3} ms  {}{} {}{}{}\n",
            (s["startTime"].as_u64().unwrap_or(start0) - start0) as f64 / 1000.0,
            s["duration"].as_u64().unwrap_or(0) as f64 / 1000.0,
            "  ".repeat(depth),
            service,
            s["operationName"].as_str().unwrap_or_default(),
            if error { "  [error]" } else { "" },
            if orphan { "  [parent missing]" } else { "" },
        ));
    }
    out
}

fn render_red(v: &Value) -> String {
    let mut out = format!(
        "{}{}: {} s steps\n{:<20} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
        v["service"].as_str().unwrap_or_default(),
        v["operation"]
            .as_str()
            .map(|o| format!(" / {o}"))
            .unwrap_or_default(),
        v["step"],
        "start (UTC)",
        "req/s",
        "errors",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms"
    );
    let ms = |x: &Value| {
        x.as_f64()
            .map(|f| format!("{f:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    for p in v["points"].as_array().into_iter().flatten() {
        let start = p["start"].as_u64().unwrap_or(0);
        let (h, m) = ((start / 3600) % 24, (start / 60) % 60);
        out.push_str(&format!(
            "{:<20} {:>8.2} {:>7.1}% {:>9} {:>9} {:>9} {:>9}\n",
            format!("day {} {h:02}:{m:02}", start / 86_400),
            p["ratePerSecond"].as_f64().unwrap_or(0.0),
            p["errorRate"].as_f64().unwrap_or(0.0) * 100.0,
            ms(&p["p50Ms"]),
            ms(&p["p90Ms"]),
            ms(&p["p99Ms"]),
            ms(&p["meanMs"]),
        ));
    }
    if v["complete"] == false {
        for r in v["partialReasons"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "note: partial answer: {}\n",
                r.as_str().unwrap_or_default()
            ));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_tree_with_orphans_and_errors() {
        let t = serde_json::json!({
            "traceID": "ab",
            "processes": {"p1": {"serviceName": "front"}, "p2": {"serviceName": "db"}},
            "spans": [
                {"spanID": "1", "operationName": "GET /", "startTime": 1000, "duration": 5000, "processID": "p1", "references": [], "tags": []},
                {"spanID": "2", "operationName": "SELECT", "startTime": 2000, "duration": 1000, "processID": "p2",
                 "references": [{"refType": "CHILD_OF", "spanID": "1"}], "tags": [{"key": "error", "value": true}]},
                {"spanID": "3", "operationName": "late", "startTime": 3000, "duration": 10, "processID": "p2",
                 "references": [{"refType": "CHILD_OF", "spanID": "9"}], "tags": []}
            ]
        });
        let text = render_trace(&t);
        assert!(text.starts_with("trace ab - 3 spans, 5.000 ms"), "{text}");
        assert!(text.contains(" ms  front GET /\n"), "{text}");
        assert!(text.contains(" ms    db SELECT  [error]\n"), "{text}");
        assert!(text.contains("db late  [parent missing]"), "{text}");
        assert_eq!(encode("GET /cart?x"), "GET%20%2Fcart%3Fx");
    }
}
