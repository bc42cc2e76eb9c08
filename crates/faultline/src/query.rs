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

/// GETs `url`: status, the `X-Faultline-Partial` reasons, and the JSON body.
fn get(url: &str) -> anyhow::Result<(u16, Option<String>, Value)> {
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
        let partial = resp
            .headers()
            .get("x-faultline-partial")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.context("cannot read the answer")?;
        let v = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the answer from {url} is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, partial, v))
    })
}

fn api_error(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .or(v["error"].as_str())
        .unwrap_or("unknown error")
        .to_string()
}

/// Runs `faultline query`.
pub fn run(cmd: QueryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QueryCommand::Trace { id, api, json } => {
            let url = format!("{}/api/v3/traces/{id}", api.trim_end_matches('/'));
            let (status, partial, v) = get(&url)?;
            if json {
                println!("{v}");
            }
            if status != 200 {
                eprintln!("faultline: {} (HTTP {status})", api_error(&v));
                return Ok(ExitCode::from(1));
            }
            if !json {
                let body = serde_json::to_vec(&v["result"]).unwrap_or_default();
                let req = faultline_model::otlp_json::decode(&body)
                    .with_context(|| format!("the answer from {url} is not OTLP JSON"))?;
                print!(
                    "{}",
                    render_trace(&id, &faultline_model::span::from_otlp(&req))
                );
                for r in partial.iter().flat_map(|p| p.split("; ")) {
                    println!("note: partial answer: {r}");
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
            let (status, _, v) = get(&url)?;
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

/// The trace as an indented tree in the waterfall's order (the UI's layout).
fn render_trace(id: &str, spans: &[faultline_model::span::Span]) -> String {
    let w = faultline_ui::waterfall::layout(spans);
    let mut out = format!(
        "trace {id} - {} spans, {:.3} ms\n",
        spans.len(),
        (w.t1 - w.t0) as f64 / 1e6
    );
    for row in &w.rows {
        let s = &spans[row.index];
        out.push_str(&format!(
            "{:>10.3} ms {:>10.3} ms  {}{} {}{}{}\n",
            (s.start_ns - w.t0) as f64 / 1e6,
            s.duration_ns() as f64 / 1e6,
            "  ".repeat(row.depth),
            s.service(),
            s.name,
            if s.is_error() { "  [error]" } else { "" },
            if row.orphan { "  [parent missing]" } else { "" },
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
        use faultline_model::span::{Origin, Span, SpanKind, StatusCode};
        let origin = |service: &str| {
            std::sync::Arc::new(Origin {
                service: service.into(),
                resource: Vec::new(),
                scope_name: String::new(),
                scope_version: String::new(),
            })
        };
        let span =
            |id: u8, parent: Option<u8>, name: &str, service: &str, at: u64, dur: u64| Span {
                trace_id: [0xab; 16],
                span_id: [id; 8],
                parent_span_id: parent.map(|p| [p; 8]),
                name: name.into(),
                kind: SpanKind::Server,
                start_ns: at * 1000,
                end_ns: (at + dur) * 1000,
                status: StatusCode::Unset,
                status_message: String::new(),
                attributes: Vec::new(),
                events: Vec::new(),
                links: Vec::new(),
                origin: origin(service),
            };
        let mut failing = span(2, Some(1), "SELECT", "db", 2000, 1000);
        failing.status = StatusCode::Error;
        let spans = vec![
            span(1, None, "GET /", "front", 1000, 5000),
            failing,
            span(3, Some(9), "late", "db", 3000, 10),
        ];
        let text = render_trace("ab", &spans);

        assert!(text.starts_with("trace ab - 3 spans, 5.000 ms"), "{text}");
        assert!(text.contains(" ms  front GET /\n"), "{text}");
        assert!(text.contains(" ms    db SELECT  [error]\n"), "{text}");
        assert!(text.contains("db late  [parent missing]"), "{text}");
        assert_eq!(encode("GET /cart?x"), "GET%20%2Fcart%3Fx");
    }
}
