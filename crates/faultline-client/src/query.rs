//! `faultline query trace ID`, `faultline query red SERVICE` and `faultline report
//! tracing`: the query API for people who live in terminals. Each calls a running
//! faultline's HTTP API (`--api`, default `http://127.0.0.1:16686`) and prints text
//! (rendered by `faultline_ui::text`); `--json` prints the API's answer as is.

use std::time::Duration;

use serde_json::Value;

use crate::ClientError;

/// Flags of `faultline query`.
#[derive(Debug, clap::Subcommand)]
pub enum QueryCommand {
    /// One trace as an indented tree: offset, duration, service, operation, errors.
    Trace {
        /// Trace id (hex).
        id: String,
        /// Base URL of the faultline HTTP API (https: FAULTLINE_CA_FILE names a PEM CA to trust).
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
        /// Base URL of the faultline HTTP API (https: FAULTLINE_CA_FILE names a PEM CA to trust).
        #[arg(long, env = "FAULTLINE_API", default_value = "http://127.0.0.1:16686")]
        api: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of `faultline report`.
#[derive(Debug, clap::Subcommand)]
pub enum ReportCommand {
    /// Per service: orphans, sampling breaks, skewed clocks, convention violations.
    Tracing {
        /// Base URL of the faultline HTTP API (https: FAULTLINE_CA_FILE names a PEM CA to trust).
        #[arg(long, env = "FAULTLINE_API", default_value = "http://127.0.0.1:16686")]
        api: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `faultline report`.
pub fn report(cmd: ReportCommand) -> Result<u8, ClientError> {
    let ReportCommand::Tracing { api, json } = cmd;
    let (status, _, v) = get(&format!(
        "{}/api/v1/tracing-health",
        api.trim_end_matches('/')
    ))?;
    if status != 200 {
        eprintln!("faultline: {} (HTTP {status})", api_error(&v));
        return Ok(1);
    }
    match json {
        true => println!("{v}"),
        false => print!("{}", faultline_ui::text::tracing_health(&v)),
    }
    Ok(0)
}

/// GETs `url`: status, the `X-Faultline-Partial` reasons, and the JSON body.
pub(crate) fn get(url: &str) -> Result<(u16, Option<String>, Value), ClientError> {
    call(url, None, Duration::from_secs(30))
}

/// POSTs a JSON `body` to `url`: status and the JSON answer.
pub(crate) fn post(url: &str, body: String) -> Result<(u16, Value), ClientError> {
    call(url, Some(body), Duration::from_secs(60)).map(|(status, _, v)| (status, v))
}

/// An error with its causes (reqwest's own message rarely says what failed).
fn causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        s.push_str(": ");
        s.push_str(&c.to_string());
        next = c.source();
    }
    s
}

/// One request (a GET, or a POST of a JSON body) on a runtime of its own.
fn call(
    url: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(u16, Option<String>, Value), ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        // https:// answers are checked against the Mozilla roots and FAULTLINE_CA_FILE.
        let tls = faultline_tls::client::from_env().map_err(|e| {
            ClientError(format!("{e} ({})", faultline_tls::client::CA_FILE_ENV))
        })?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| ClientError(format!("cannot build the HTTP client: {e}")))?;
        let mut req = match body {
            Some(b) => client
                .post(url)
                .header("content-type", "application/json")
                .body(b),
            None => client.get(url),
        };
        if let Ok(token) = std::env::var("FAULTLINE_TOKEN") {
            req = req.bearer_auth(token.trim());
        }
        let resp = req.send().await.map_err(|e| {
            ClientError(format!(
                "cannot reach {url}: {}; is faultline serving there? (--api; for https with a private CA set {})",
                causes(&e),
                faultline_tls::client::CA_FILE_ENV
            ))
        })?;
        let status = resp.status().as_u16();
        let partial = resp
            .headers()
            .get("x-faultline-partial")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError(format!("cannot read the answer: {e}")))?;
        let v = serde_json::from_slice(&bytes).map_err(|_| {
            ClientError(format!(
                "the answer from {url} is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            ))
        })?;
        Ok((status, partial, v))
    })
}

pub(crate) fn api_error(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .or(v["error"].as_str())
        .unwrap_or("unknown error")
        .to_string()
}

/// Runs `faultline query`.
pub fn run(cmd: QueryCommand) -> Result<u8, ClientError> {
    match cmd {
        QueryCommand::Trace { id, api, json } => {
            let url = format!("{}/api/v3/traces/{id}", api.trim_end_matches('/'));
            let (status, partial, v) = get(&url)?;
            if json {
                println!("{v}");
            }
            if status != 200 {
                eprintln!("faultline: {} (HTTP {status})", api_error(&v));
                return Ok(1);
            }
            if !json {
                let body = serde_json::to_vec(&v["result"]).unwrap_or_default();
                let req = faultline_model::otlp_json::decode(&body).map_err(|e| {
                    ClientError(format!("the answer from {url} is not OTLP JSON: {e}"))
                })?;
                print!(
                    "{}",
                    faultline_ui::text::trace(&id, &faultline_model::span::from_otlp(&req))
                );
                for r in partial.iter().flat_map(|p| p.split("; ")) {
                    println!("note: partial answer: {r}");
                }
            }
            Ok(0)
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
                faultline_ui::text::encode(&service)
            );
            if let Some(op) = &operation {
                url.push_str(&format!("&operation={}", faultline_ui::text::encode(op)));
            }
            let (status, _, v) = get(&url)?;
            if json {
                println!("{v}");
            }
            if status != 200 {
                eprintln!("faultline: {} (HTTP {status})", api_error(&v));
                return Ok(1);
            }
            if !json {
                print!("{}", faultline_ui::text::red(&v));
            }
            Ok(0)
        }
    }
}
