//! Experiments as files: a steady-state hypothesis checked on faultline's own span data,
//! a method of faults, waits and HTTP load, stop conditions watched while the method
//! runs, and rollbacks that always run. `faultline experiment run FILE` runs one
//! (`run.rs`) and reports it (`report.rs`: text, a JSON journal, JUnit XML).
//!
//! File format (JSON, in Chaos Toolkit's shape where it fits; unknown keys are errors):
//!
//! ```json
//! {"title": "The product page stays fast when pricing times out",
//!  "description": "...", "service": "frontend", "severity": 3,
//!  "steady-state-hypothesis": {"title": "...", "checks": [
//!     {"name": "product-page", "service": "frontend", "operation": "GET /product",
//!      "window": "10s", "maxErrorRate": 0.01, "maxP99": "300ms", "minRequests": 20}]},
//!  "method": [
//!     {"type": "toxic", "name": "pricing-slow", "proxy": "pricing",
//!      "toxic": {"type": "latency", "attributes": {"latency": 2000}}},
//!     {"type": "proxy-down", "name": "inventory-down", "proxy": "inventory",
//!      "duration": "10s"},
//!     {"type": "http", "name": "drive", "url": "http://127.0.0.1:8080/product",
//!      "count": 100, "rate": 20},
//!     {"type": "wait", "name": "let-it-settle", "duration": "12s"}],
//!  "stop-conditions": [{"name": "too-many-errors", "service": "frontend",
//!      "window": "5s", "maxErrorRate": 0.5, "minRequests": 0}],
//!  "rollbacks": [{"type": "http", "name": "flush-cache", "url": "...", "method": "POST"}]}
//! ```
//!
//! A check is a call of `/api/v1/steady-state` with its bounds (see faultline-api's
//! `steady.rs`); it holds when that answers 200. A check with `assertions` (an assertion
//! file's JSON) instead runs them over every trace of its service (and operation) in the
//! window (`/api/v1/assertions/run`); it holds when at least one trace was checked and
//! all passed, and the spans that failed an assertion are named as violations. A fault (`toxic`, `proxy-down`) with a
//! `duration` is removed after it (the activity lasts that long); every fault the method
//! added is removed again after the method whatever happened, before the file's own
//! rollbacks; a fault is written to the run log before it is added, so a run killed in
//! the middle has its faults removed by the next `faultline experiment run` or
//! `faultline experiment cleanup` (and by the proxy's own restart).
//!
//! `serve` runs experiments on a schedule (`schedule.rs`) and keeps every run's journal
//! (`history.rs`, with the resilience score per service).
//! `severity` (1 to 5, default 1) weighs the experiment in a service's resilience score.

pub mod history;
pub mod report;
pub mod run;
pub mod schedule;

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// An experiment file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// The service the experiment is about (for the resilience score).
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default = "one")]
    pub severity: u8,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(rename = "steady-state-hypothesis")]
    pub hypothesis: Hypothesis,
    pub method: Vec<Activity>,
    #[serde(default, rename = "stop-conditions")]
    pub stop_conditions: Vec<Check>,
    #[serde(default)]
    pub rollbacks: Vec<Activity>,
}

fn one() -> u8 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hypothesis {
    pub title: String,
    pub checks: Vec<Check>,
}

/// A steady-state check: bounds on a service's requests over a window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    pub service: String,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default = "default_window")]
    pub window: String,
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    #[serde(default)]
    pub max_p99: Option<String>,
    #[serde(default)]
    pub min_rate: Option<f64>,
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Trace assertions (an assertion file's JSON, `faultline_rules::assertion`) that every
    /// trace of the service (and operation) in the window must pass, instead of bounds.
    #[serde(default)]
    pub assertions: Option<Value>,
}

fn default_window() -> String {
    "1m".into()
}

/// One step of a method or of the rollbacks.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Activity {
    /// Adds a toxic (Toxiproxy's JSON) to a proxy of the fault proxy.
    Toxic {
        name: String,
        proxy: String,
        toxic: Value,
        /// Remove it after this long (the activity waits); none: at the end of the method.
        #[serde(default)]
        duration: Option<String>,
    },
    /// Disables a proxy (connections refused) until the method ends, or for `duration`.
    ProxyDown {
        name: String,
        proxy: String,
        #[serde(default)]
        duration: Option<String>,
    },
    /// Sends `count` requests at `rate` per second (default: one request).
    Http {
        name: String,
        url: String,
        #[serde(default = "get")]
        method: String,
        #[serde(default)]
        body: Option<String>,
        #[serde(default = "one_u64")]
        count: u64,
        #[serde(default)]
        rate: Option<f64>,
    },
    /// Waits.
    Wait { name: String, duration: String },
}

fn get() -> String {
    "GET".into()
}

fn one_u64() -> u64 {
    1
}

impl Activity {
    pub fn name(&self) -> &str {
        match self {
            Activity::Toxic { name, .. }
            | Activity::ProxyDown { name, .. }
            | Activity::Http { name, .. }
            | Activity::Wait { name, .. } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Activity::Toxic { .. } => "toxic",
            Activity::ProxyDown { .. } => "proxy-down",
            Activity::Http { .. } => "http",
            Activity::Wait { .. } => "wait",
        }
    }
}

/// An experiment file that cannot be run, with the place and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("cannot read experiment {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("experiment {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

/// Parses a Go-style duration: `500ms`, `10s`, `2m`, `1h`, `1m30s`
/// ([`faultline_model::duration::parse`]).
pub fn parse_duration(s: &str) -> Option<Duration> {
    faultline_model::duration::parse(s)
}

impl Check {
    fn validate(&self, at: &str) -> Result<(), String> {
        if self.name.is_empty() || self.service.is_empty() {
            return Err(format!("{at}: name and service must not be empty"));
        }
        if parse_duration(&self.window).is_none_or(|d| d.is_zero()) {
            return Err(format!(
                "{at}.window: {:?} is not a duration such as \"10s\" or \"1m\"",
                self.window
            ));
        }
        if let Some(p) = &self.max_p99
            && parse_duration(p).is_none()
        {
            return Err(format!(
                "{at}.maxP99: {p:?} is not a duration such as \"300ms\""
            ));
        }
        if let Some(r) = self.max_error_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!("{at}.maxErrorRate: {r} is not between 0 and 1"));
        }
        if let Some(a) = &self.assertions {
            let bounds = self.max_error_rate.is_some()
                || self.max_p99.is_some()
                || self.min_rate.is_some()
                || self.min_requests.is_some();
            if bounds {
                return Err(format!(
                    "{at}: a check has bounds (maxErrorRate, maxP99, minRate, minRequests) or assertions, not both; make two checks"
                ));
            }
            faultline_rules::AssertionFile::parse(&a.to_string())
                .map_err(|e| format!("{at}.assertions: {e}"))?;
        }
        Ok(())
    }

    /// The steady-state endpoint's query string for this check.
    pub fn query(&self) -> String {
        let mut q = vec![
            ("service", self.service.clone()),
            ("window", self.window.clone()),
        ];
        if let Some(o) = &self.operation {
            q.push(("operation", o.clone()));
        }
        if let Some(r) = self.max_error_rate {
            q.push(("maxErrorRate", r.to_string()));
        }
        if let Some(p) = &self.max_p99 {
            q.push(("maxP99", p.clone()));
        }
        if let Some(r) = self.min_rate {
            q.push(("minRate", r.to_string()));
        }
        if let Some(n) = self.min_requests {
            q.push(("minRequests", n.to_string()));
        }
        q.iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Experiment {
    /// Reads and checks an experiment file.
    pub fn load(path: &std::path::Path) -> Result<Experiment, ExperimentError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ExperimentError::Read {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| ExperimentError::Invalid { path: p, reason })
    }

    /// Parses and checks an experiment; the error names the field.
    pub fn parse(text: &str) -> Result<Experiment, String> {
        let e: Experiment = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if e.hypothesis.checks.is_empty() {
            return Err("steady-state-hypothesis.checks: at least one check is needed".into());
        }
        if !(1..=5).contains(&e.severity) {
            return Err(format!("severity: {} is not from 1 to 5", e.severity));
        }
        for (i, c) in e.hypothesis.checks.iter().enumerate() {
            c.validate(&format!("steady-state-hypothesis.checks[{i}]"))?;
        }
        for (i, c) in e.stop_conditions.iter().enumerate() {
            c.validate(&format!("stop-conditions[{i}]"))?;
        }
        for (list, acts) in [("method", &e.method), ("rollbacks", &e.rollbacks)] {
            for (i, a) in acts.iter().enumerate() {
                validate_activity(a, &format!("{list}[{i}]"))?;
            }
        }
        if e.method.is_empty() {
            return Err("method: at least one activity is needed".into());
        }
        Ok(e)
    }
}

/// What `faultline experiment run` does: loads `path`, runs it with `opts` printing
/// progress and then the report to `out`, writes the journal (and JUnit XML) where asked;
/// the exit code (0 held, 1 broken, 2 aborted or invalid).
pub async fn run_file(
    path: &std::path::Path,
    opts: &run::RunOptions,
    journal: Option<&std::path::Path>,
    junit: Option<&std::path::Path>,
    out: &mut (impl std::io::Write + Send),
) -> Result<u8, String> {
    let e = match Experiment::load(path) {
        Ok(e) => e,
        Err(err) => {
            let _ = writeln!(out, "faultline: {err}");
            return Ok(2);
        }
    };
    let result = run::run(&e, opts, |line| {
        let _ = writeln!(out, "  .. {line}");
    })
    .await
    .map_err(|err| err.to_string())?;
    let _ = write!(out, "\n{}", report::text(&e, &result, &opts.faultline));
    let write = |p: &std::path::Path, text: String| {
        std::fs::write(p, text).map_err(|err| format!("cannot write {}: {err}", p.display()))
    };
    let j = report::journal(&e, &result);
    if let Some(p) = journal {
        write(p, format!("{j:#}\n"))?;
    }
    match run::report_run(opts, &j).await {
        Ok(()) => {
            let _ = writeln!(out, "Recorded in faultline: {}/experiments", opts.faultline);
        }
        Err(err) => {
            let _ = writeln!(
                out,
                "Not recorded in faultline ({err}); the journal is complete"
            );
        }
    }
    if let Some(p) = junit {
        write(p, report::junit(&e, &result, &opts.faultline))?;
    }
    Ok(result.outcome.exit_code())
}

fn check_duration(d: Option<&str>, at: &str) -> Result<(), String> {
    match d {
        Some(d) if parse_duration(d).is_none() => Err(format!(
            "{at}.duration: {d:?} is not a duration such as \"10s\""
        )),
        _ => Ok(()),
    }
}

fn validate_activity(a: &Activity, at: &str) -> Result<(), String> {
    if a.name().is_empty() {
        return Err(format!("{at}.name must not be empty"));
    }
    match a {
        Activity::Toxic {
            proxy,
            toxic,
            duration,
            ..
        } => {
            if proxy.is_empty() {
                return Err(format!("{at}.proxy must name a proxy"));
            }
            crate::toxic::Toxic::parse(toxic).map_err(|e| format!("{at}.toxic: {e}"))?;
            check_duration(duration.as_deref(), at)?;
        }
        Activity::ProxyDown {
            proxy, duration, ..
        } => {
            if proxy.is_empty() {
                return Err(format!("{at}.proxy must name a proxy"));
            }
            check_duration(duration.as_deref(), at)?;
        }
        Activity::Http {
            url, method, rate, ..
        } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{at}.url: {url:?} must start with http:// or https://"
                ));
            }
            if !["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"].contains(&method.as_str()) {
                return Err(format!("{at}.method: {method:?} is not an HTTP method"));
            }
            if rate.is_some_and(|r| r <= 0.0) {
                return Err(format!("{at}.rate must be above 0 requests per second"));
            }
        }
        Activity::Wait { duration, .. } if parse_duration(duration).is_none() => {
            return Err(format!(
                "{at}.duration: {duration:?} is not a duration such as \"12s\""
            ));
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"title": "t", "steady-state-hypothesis": {"title": "h", "checks": [
        {"name": "c", "service": "frontend", "operation": "GET /product", "window": "10s",
         "maxErrorRate": 0.01, "maxP99": "300ms"}]},
        "method": [{"type": "toxic", "name": "slow", "proxy": "pricing",
                    "toxic": {"type": "latency", "attributes": {"latency": 100}}},
                   {"type": "wait", "name": "w", "duration": "1m30s"}]}"#;

    #[test]
    fn a_good_file_parses_and_its_check_becomes_a_query() {
        let e = Experiment::parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.severity, 1);
        assert_eq!(
            e.hypothesis.checks[0].query(),
            "service=frontend&window=10s&operation=GET%20%2Fproduct&maxErrorRate=0.01&maxP99=300ms"
        );
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("ten"), None);
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let cases = [
            (
                GOOD.replace("\"maxP99\"", "\"maxP98\""),
                "unknown field `maxP98`",
            ),
            (
                GOOD.replace("\"10s\"", "\"soon\""),
                "steady-state-hypothesis.checks[0].window: \"soon\"",
            ),
            (
                GOOD.replace("\"latency\", \"attr", "\"gremlin\", \"attr"),
                "method[0].toxic: invalid toxic type",
            ),
            (
                GOOD.replace("\"1m30s\"", "\"later\""),
                "method[1].duration: \"later\"",
            ),
            (
                GOOD.replace("\"type\": \"wait\"", "\"type\": \"sleep\""),
                "unknown variant `sleep`",
            ),
            (
                GOOD.replace("0.01", "1.5"),
                "maxErrorRate: 1.5 is not between 0 and 1",
            ),
            (
                GOOD.replace("\"title\": \"t\",", ""),
                "missing field `title`",
            ),
            (
                GOOD.replace("\"toxic\": {", "\"duration\": \"soon\", \"toxic\": {"),
                "method[0].duration: \"soon\"",
            ),
            (
                GOOD.replace(
                    "\"maxP99\": \"300ms\"",
                    "\"assertions\": {\"assertions\": [{\"name\": \"x\", \"select\": \"{ nam = 1 }\"}]}",
                ),
                "steady-state-hypothesis.checks[0]: a check has bounds",
            ),
            (
                GOOD.replace(
                    "\"maxErrorRate\": 0.01, \"maxP99\": \"300ms\"",
                    "\"assertions\": {\"assertions\": [{\"name\": \"x\", \"select\": \"{ nam = 1 }\"}]}",
                ),
                "steady-state-hypothesis.checks[0].assertions: assertions[0] (x).select: selector",
            ),
        ];
        for (text, want) in cases {
            let got = Experiment::parse(&text).err().unwrap_or_default();
            assert!(got.contains(want), "{want:?} not in {got:?}");
        }
    }
}
