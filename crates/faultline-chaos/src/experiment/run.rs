//! Running an experiment: the hypothesis before, the method with its stop conditions
//! watched every second, every fault removed and the rollbacks run whatever happened,
//! the hypothesis after. Talks HTTP to faultline's API (`/api/v1/steady-state`) and to
//! the fault proxy's Toxiproxy API.
//!
//! The run log (`runs.json` in the state directory, replaced durably before each fault
//! is added and when a run ends; JSON:
//! `{"runs":[{"id":"9f2c...","experiment":"TITLE","proxyApi":"http://127.0.0.1:8474","startedUs":1700000000000000,"finished":false,"faults":[{"kind":"toxic","proxy":"pricing","name":"pricing-slow"},{"kind":"proxy-down","proxy":"inventory"}]}]}`)
//! lets the next run (or `faultline experiment cleanup`) remove the faults of a run that
//! was killed before it could.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Activity, Check, Experiment, parse_duration};

/// Where the run talks to and keeps its log.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// faultline's HTTP API, e.g. `http://127.0.0.1:16686`.
    pub faultline: String,
    /// The fault proxy's API, e.g. `http://127.0.0.1:8474`.
    pub proxy: String,
    /// Directory of the run log.
    pub state_dir: PathBuf,
    /// How often stop conditions are checked during the method.
    pub stop_every: Duration,
    /// Sent as `Authorization: Bearer` to faultline and the proxy API (tokens on: `read`
    /// and `chaos` scopes) [default: `FAULTLINE_TOKEN`].
    pub token: Option<String>,
    /// TLS for `https://` URLs [default: the Mozilla roots and `FAULTLINE_CA_FILE`'s CAs;
    /// scheduled runs trust the certificate their own process serves].
    pub tls: Option<faultline_tls::client::ClientConfig>,
}

impl RunOptions {
    /// Options with the base URLs given (a trailing `/` dropped) and stop conditions
    /// checked every second.
    pub fn new(faultline: &str, proxy: &str, state_dir: PathBuf) -> RunOptions {
        RunOptions {
            faultline: faultline.trim_end_matches('/').to_string(),
            proxy: proxy.trim_end_matches('/').to_string(),
            state_dir,
            stop_every: Duration::from_secs(1),
            token: std::env::var("FAULTLINE_TOKEN").ok(),
            tls: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The hypothesis held after the method.
    Held,
    /// It did not.
    Broken,
    /// The run stopped: the steady state did not hold before, a stop condition fired, or
    /// an activity failed.
    Aborted(String),
}

impl Outcome {
    /// `faultline experiment run`'s exit code: 0 held, 1 broken, 2 aborted.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Held => 0,
            Outcome::Broken => 1,
            Outcome::Aborted(_) => 2,
        }
    }
}

/// A steady-state check's result: the endpoint's answer.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub pass: bool,
    pub answer: Value,
    pub seconds: f64,
}

/// An activity's result.
#[derive(Debug, Clone)]
pub struct ActivityResult {
    pub name: String,
    pub kind: &'static str,
    pub ok: bool,
    pub output: Value,
    pub seconds: f64,
}

/// Everything a run did.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub id: String,
    pub outcome: Outcome,
    pub before: Vec<CheckResult>,
    pub after: Vec<CheckResult>,
    pub method: Vec<ActivityResult>,
    pub rollbacks: Vec<ActivityResult>,
    pub faults_removed: Vec<String>,
    pub cleaned_up: Vec<String>,
    pub started_us: u64,
    pub seconds: f64,
}

/// What stops a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start an HTTP client: {0}")]
    Client(String),
    #[error("cannot keep the run log {path}: {reason}")]
    Log { path: PathBuf, reason: String },
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A fault added by a run.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    Toxic { proxy: String, name: String },
    ProxyDown { proxy: String },
}

impl Fault {
    fn to_json(&self) -> Value {
        match self {
            Fault::Toxic { proxy, name } => json!({"kind": "toxic", "proxy": proxy, "name": name}),
            Fault::ProxyDown { proxy } => json!({"kind": "proxy-down", "proxy": proxy}),
        }
    }

    fn from_json(v: &Value) -> Option<Fault> {
        let proxy = v["proxy"].as_str()?.to_string();
        match v["kind"].as_str()? {
            "toxic" => Some(Fault::Toxic {
                proxy,
                name: v["name"].as_str()?.to_string(),
            }),
            "proxy-down" => Some(Fault::ProxyDown { proxy }),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Fault::Toxic { proxy, name } => format!("toxic {name} on proxy {proxy}"),
            Fault::ProxyDown { proxy } => format!("proxy {proxy} down"),
        }
    }
}

/// The run log (see the module's documentation). Its writes fsync: the async paths use
/// [`RunLog::update_off`] and [`RunLog::write_off`], which run them on the blocking pool.
#[derive(Clone)]
struct RunLog {
    path: PathBuf,
}

impl RunLog {
    fn open(dir: &Path) -> Result<RunLog, RunError> {
        std::fs::create_dir_all(dir).map_err(|e| RunError::Log {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(RunLog {
            path: dir.join("runs.json"),
        })
    }

    fn read(&self) -> Value {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({"runs": []}))
    }

    fn write(&self, mut v: Value) -> Result<(), RunError> {
        // Keep every unfinished run and the last 20 finished ones.
        if let Some(runs) = v["runs"].as_array_mut() {
            let finished: Vec<usize> = (0..runs.len())
                .filter(|i| runs[*i]["finished"] == true)
                .collect();
            let drop = finished.len().saturating_sub(20);
            let mut i = 0;
            runs.retain(|r| {
                let gone = r["finished"] == true && i < drop;
                if r["finished"] == true {
                    i += 1;
                }
                !gone
            });
        }
        faultline_wal::durable::replace_file(&self.path, v.to_string().as_bytes()).map_err(|e| {
            RunError::Log {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// [`Self::update`] on the blocking pool.
    async fn update_off(
        &self,
        id: &str,
        f: impl FnOnce(&mut Value) + Send + 'static,
    ) -> Result<(), RunError> {
        let (log, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || log.update(&id, f))
            .await
            .map_err(|e| self.join_err(e))?
    }

    /// [`Self::write`] on the blocking pool.
    async fn write_off(&self, v: Value) -> Result<(), RunError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.write(v))
            .await
            .map_err(|e| self.join_err(e))?
    }

    fn join_err(&self, e: tokio::task::JoinError) -> RunError {
        RunError::Log {
            path: self.path.clone(),
            reason: format!("the write was interrupted: {e}"),
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Value)) -> Result<(), RunError> {
        let mut v = self.read();
        if let Some(run) = v["runs"]
            .as_array_mut()
            .and_then(|runs| runs.iter_mut().find(|r| r["id"] == id))
        {
            f(run);
        }
        self.write(v)
    }
}

/// A run's HTTP side.
struct Http {
    client: reqwest::Client,
    opts: RunOptions,
}

impl Http {
    async fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self.client.request(m, url);
        if let Some(t) = &self.opts.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        Ok((status, text))
    }

    async fn check(&self, c: &Check) -> CheckResult {
        if let Some(a) = &c.assertions {
            return self.assertion_check(c, a).await;
        }
        let t0 = Instant::now();
        let url = format!("{}/api/v1/steady-state?{}", self.opts.faultline, c.query());
        let (pass, answer) = match self.call("GET", &url, None).await {
            Ok((status, text)) => {
                let v: Value = serde_json::from_str(&text).unwrap_or(json!({"error": text}));
                (status == 200, v)
            }
            Err(e) => (false, json!({"error": e})),
        };
        CheckResult {
            name: c.name.clone(),
            pass,
            answer,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }

    /// A check by trace assertions over the traces of the window. Its answer is the
    /// assertions' answer plus `violations` in the steady-state shape (the failing spans,
    /// the assertion's name as the operation) so the report and journal name them alike.
    async fn assertion_check(&self, c: &Check, assertions: &Value) -> CheckResult {
        let t0 = Instant::now();
        let url = format!("{}/api/v1/assertions/run", self.opts.faultline);
        let body = json!({"assertions": assertions, "search": {
            "service": c.service, "operation": c.operation, "lookback": c.window, "limit": 500}});
        let (pass, mut answer) = match self.call("POST", &url, Some(body.to_string())).await {
            Ok((status, text)) => {
                let v: Value = serde_json::from_str(&text).unwrap_or(json!({"error": text}));
                let pass = status == 200 && v["pass"] == true && v["checked"].as_u64() > Some(0);
                (pass, v)
            }
            Err(e) => (false, json!({"error": e})),
        };
        let mut violations = Vec::new();
        for t in answer["traces"].as_array().into_iter().flatten() {
            for r in t["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["pass"] != true)
            {
                for span in r["spans"].as_array().into_iter().flatten() {
                    violations.push(json!({"traceId": t["traceId"], "spanId": span,
                        "operation": r["name"], "durationMs": null, "error": false,
                        "reasons": [r["message"]]}));
                }
            }
        }
        violations.truncate(20);
        answer["violations"] = Value::Array(violations);
        CheckResult {
            name: c.name.clone(),
            pass,
            answer,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }

    async fn proxy_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.opts.proxy);
        let (status, text) = self.call(method, &url, body.map(|b| b.to_string())).await?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "the fault proxy answered {status} to {method} {path}: {}",
                text.trim()
            ));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn remove(&self, f: &Fault) -> Result<(), String> {
        match f {
            Fault::Toxic { proxy, name } => {
                match self
                    .proxy_call("DELETE", &format!("/proxies/{proxy}/toxics/{name}"), None)
                    .await
                {
                    // Already gone (removed by hand, or by a restart of the proxy).
                    Err(e) if e.contains(" 404 ") => Ok(()),
                    r => r.map(|_| ()),
                }
            }
            Fault::ProxyDown { proxy } => self
                .proxy_call(
                    "POST",
                    &format!("/proxies/{proxy}"),
                    Some(json!({"enabled": true})),
                )
                .await
                .map(|_| ()),
        }
    }
}

/// Sends a run's journal to faultline (`POST /api/v1/experiments/runs`), so the run shows
/// in its UI and resilience scores.
pub async fn report_run(opts: &RunOptions, journal: &Value) -> Result<(), String> {
    let http = Http {
        client: client(opts).map_err(|e| e.to_string())?,
        opts: opts.clone(),
    };
    let url = format!("{}/api/v1/experiments/runs", opts.faultline);
    match http.call("POST", &url, Some(journal.to_string())).await? {
        (201, _) => Ok(()),
        (status, body) => Err(format!("faultline answered {status}: {}", body.trim())),
    }
}

/// Removes the faults of runs in `state_dir` that did not finish; what was removed.
pub async fn cleanup(state_dir: &Path) -> Result<Vec<String>, RunError> {
    cleanup_as(&RunOptions::new("", "", state_dir.to_path_buf())).await
}

/// [`cleanup`] with `opts`' token and TLS.
async fn cleanup_as(opts: &RunOptions) -> Result<Vec<String>, RunError> {
    let state_dir = &opts.state_dir;
    let log = RunLog::open(state_dir)?;
    let client = client(opts)?;
    let v = log.read();
    let mut removed = Vec::new();
    for run in v["runs"].as_array().into_iter().flatten() {
        if run["finished"] == true {
            continue;
        }
        let id = run["id"].as_str().unwrap_or_default().to_string();
        let http = Http {
            client: client.clone(),
            opts: RunOptions {
                faultline: String::new(),
                proxy: run["proxyApi"].as_str().unwrap_or_default().to_string(),
                ..opts.clone()
            },
        };
        let mut all_gone = true;
        for f in run["faults"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Fault::from_json)
        {
            match http.remove(&f).await {
                Ok(()) => removed.push(format!("{} (left by interrupted run {id})", f.describe())),
                Err(e) => {
                    all_gone = false;
                    removed.push(format!("could not remove {}: {e}", f.describe()));
                }
            }
        }
        if all_gone {
            log.update_off(&id, |r| r["finished"] = json!(true)).await?;
        }
    }
    Ok(removed)
}

fn client(opts: &RunOptions) -> Result<reqwest::Client, RunError> {
    let tls = match &opts.tls {
        Some(c) => c.clone(),
        None => faultline_tls::client::from_env().map_err(|e| RunError::Client(e.to_string()))?,
    };
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| RunError::Client(e.to_string()))
}

/// Runs `e`; `progress` gets a line per step as it happens.
pub async fn run(
    e: &Experiment,
    opts: &RunOptions,
    mut progress: impl FnMut(&str),
) -> Result<RunResult, RunError> {
    let cleaned_up = cleanup_as(opts).await?;
    for c in &cleaned_up {
        progress(&format!("removed {c}"));
    }
    let log = RunLog::open(&opts.state_dir)?;
    let http = Http {
        client: client(opts)?,
        opts: opts.clone(),
    };
    let id = format!("{:016x}", rand::random::<u64>());
    let t0 = Instant::now();
    let started_us = now_us();
    let mut v = log.read();
    if let Some(runs) = v["runs"].as_array_mut() {
        runs.push(
            json!({"id": id, "experiment": e.title, "proxyApi": opts.proxy,
                         "startedUs": started_us, "finished": false, "faults": []}),
        );
    }
    log.write_off(v).await?;
    let mut result = RunResult {
        id: id.clone(),
        outcome: Outcome::Held,
        before: Vec::new(),
        after: Vec::new(),
        method: Vec::new(),
        rollbacks: Vec::new(),
        faults_removed: Vec::new(),
        cleaned_up,
        started_us,
        seconds: 0.0,
    };
    progress(&format!("steady state before: {}", e.hypothesis.title));
    for c in &e.hypothesis.checks {
        let r = http.check(c).await;
        progress(&format!(
            "  {} {}",
            c.name,
            if r.pass { "holds" } else { "DOES NOT HOLD" }
        ));
        result.before.push(r);
    }
    if let Some(bad) = result.before.iter().find(|r| !r.pass) {
        result.outcome = Outcome::Aborted(format!(
            "the steady state did not hold before the method ({}); nothing was injected",
            bad.name
        ));
    } else {
        result.outcome = method(e, &http, &log, &id, &mut result.method, &mut progress).await?;
    }
    // Faults come out whatever happened, then the file's own rollbacks. The run log is the
    // list: a fault is written there before it is added, so one whose activity a stop
    // condition interrupted mid-call comes out too (removing one already gone is fine).
    let logged: Vec<Fault> = log.read()["runs"]
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["id"] == id.as_str()))
        .and_then(|r| r["faults"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(Fault::from_json)
        .collect();
    for f in logged.iter().rev() {
        match http.remove(f).await {
            Ok(()) => result.faults_removed.push(f.describe()),
            Err(err) => result
                .faults_removed
                .push(format!("could not remove {}: {err}", f.describe())),
        }
        progress(&format!("removed {}", f.describe()));
    }
    for a in &e.rollbacks {
        let (r, _) = activity(a, &http, &log, &id).await?;
        progress(&format!(
            "rollback {} {}",
            a.name(),
            if r.ok { "ok" } else { "FAILED" }
        ));
        result.rollbacks.push(r);
    }
    if result.outcome == Outcome::Held {
        progress(&format!("steady state after: {}", e.hypothesis.title));
        for c in &e.hypothesis.checks {
            let r = http.check(c).await;
            progress(&format!(
                "  {} {}",
                c.name,
                if r.pass { "holds" } else { "DOES NOT HOLD" }
            ));
            result.after.push(r);
        }
        if result.after.iter().any(|r| !r.pass) {
            result.outcome = Outcome::Broken;
        }
    }
    let all_removed = !result
        .faults_removed
        .iter()
        .any(|f| f.starts_with("could not"));
    if all_removed {
        log.update_off(&id, |r| r["finished"] = json!(true)).await?;
    }
    result.seconds = t0.elapsed().as_secs_f64();
    Ok(result)
}

/// The method, watched by the stop conditions; the outcome so far.
async fn method(
    e: &Experiment,
    http: &Http,
    log: &RunLog,
    id: &str,
    out: &mut Vec<ActivityResult>,
    progress: &mut impl FnMut(&str),
) -> Result<Outcome, RunError> {
    for a in &e.method {
        progress(&format!("method: {} ({})", a.name(), a.kind()));
        let run = activity(a, http, log, id);
        tokio::pin!(run);
        let mut tick = tokio::time::interval(http.opts.stop_every);
        tick.tick().await;
        let done = loop {
            tokio::select! {
                r = &mut run => break r?,
                _ = tick.tick(), if !e.stop_conditions.is_empty() => {
                    for c in &e.stop_conditions {
                        let r = http.check(c).await;
                        if !r.pass {
                            progress(&format!("stop condition {} fired: aborting", c.name));
                            let mut stopped = ActivityResult {
                                name: a.name().to_string(), kind: a.kind(), ok: false,
                                output: json!({"stopCondition": c.name, "answer": r.answer}), seconds: 0.0,
                            };
                            stopped.output["stopped"] = json!(true);
                            out.push(stopped);
                            return Ok(Outcome::Aborted(format!("stop condition {} fired during {}", c.name, a.name())));
                        }
                    }
                }
            }
        };
        let (r, _) = done;
        let ok = r.ok;
        progress(&format!("  {}", if ok { "ok" } else { "FAILED" }));
        out.push(r);
        if !ok {
            return Ok(Outcome::Aborted(format!("activity {} failed", a.name())));
        }
    }
    Ok(Outcome::Held)
}

/// Runs one activity; a fault it added is recorded in the log before it is added.
async fn activity(
    a: &Activity,
    http: &Http,
    log: &RunLog,
    id: &str,
) -> Result<(ActivityResult, Option<Fault>), RunError> {
    let t0 = Instant::now();
    let mut fault = None;
    let result: Result<Value, String> = match a {
        Activity::Toxic {
            name,
            proxy,
            toxic,
            duration,
        } => {
            let mut body = toxic.clone();
            if body.get("name").is_none() {
                body["name"] = json!(name);
            }
            let f = Fault::Toxic {
                proxy: proxy.clone(),
                name: body["name"].as_str().unwrap_or(name).to_string(),
            };
            let logged = f.to_json();
            log.update_off(id, move |r| {
                if let Some(list) = r["faults"].as_array_mut() {
                    list.push(logged);
                }
            })
            .await?;
            let r = http
                .proxy_call("POST", &format!("/proxies/{proxy}/toxics"), Some(body))
                .await;
            match r {
                Ok(v) => for_a_while(http, f, duration.as_deref(), v, &mut fault).await,
                Err(e) => Err(e),
            }
        }
        Activity::ProxyDown {
            proxy, duration, ..
        } => {
            let f = Fault::ProxyDown {
                proxy: proxy.clone(),
            };
            let logged = f.to_json();
            log.update_off(id, move |r| {
                if let Some(list) = r["faults"].as_array_mut() {
                    list.push(logged);
                }
            })
            .await?;
            let r = http
                .proxy_call(
                    "POST",
                    &format!("/proxies/{proxy}"),
                    Some(json!({"enabled": false})),
                )
                .await;
            match r {
                Ok(v) => for_a_while(http, f, duration.as_deref(), v, &mut fault).await,
                Err(e) => Err(e),
            }
        }
        Activity::Wait { duration, .. } => {
            tokio::time::sleep(parse_duration(duration).unwrap_or_default()).await;
            Ok(Value::Null)
        }
        Activity::Http {
            url,
            method,
            body,
            count,
            rate,
            ..
        } => Ok(drive(http, method, url, body.as_deref(), *count, *rate).await),
    };
    let (ok, output) = match result {
        Ok(v) => (true, v),
        Err(e) => (false, json!({"error": e})),
    };
    Ok((
        ActivityResult {
            name: a.name().to_string(),
            kind: a.kind(),
            ok,
            output,
            seconds: t0.elapsed().as_secs_f64(),
        },
        fault,
    ))
}

/// A fault just added: with a duration, waits it out and removes it (then no fault is
/// left to the end of the method); without, hands it back in `fault`.
async fn for_a_while(
    http: &Http,
    f: Fault,
    duration: Option<&str>,
    added: Value,
    fault: &mut Option<Fault>,
) -> Result<Value, String> {
    let Some(d) = duration.and_then(parse_duration) else {
        *fault = Some(f);
        return Ok(added);
    };
    tokio::time::sleep(d).await;
    http.remove(&f).await?;
    Ok(json!({"added": added, "removedAfterSeconds": d.as_secs_f64()}))
}

/// Sends `count` requests, paced at `rate` per second; the statuses seen.
async fn drive(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<&str>,
    count: u64,
    rate: Option<f64>,
) -> Value {
    let mut by_status = serde_json::Map::new();
    let t0 = Instant::now();
    for i in 0..count {
        if let Some(r) = rate {
            let due = t0 + Duration::from_secs_f64(i as f64 / r);
            tokio::time::sleep_until(due.into()).await;
        }
        let key = match http.call(method, url, body.map(str::to_string)).await {
            Ok((s, _)) => s.to_string(),
            Err(_) => "error".to_string(),
        };
        let n = by_status.get(&key).and_then(Value::as_u64).unwrap_or(0);
        by_status.insert(key, json!(n + 1));
    }
    json!({"sent": count, "status": by_status})
}
