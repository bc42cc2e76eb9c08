//! A run, reported three ways: readable text naming the checks' numbers and the spans
//! that broke the hypothesis (with links to their traces), the journal (JSON: everything
//! the run did and every answer it got), and JUnit XML for CI (a test case per check
//! before and after and per activity; a broken check is a failure, an aborted run an
//! error).

use std::fmt::Write;

use serde_json::{Value, json};

use super::Experiment;
use super::run::{ActivityResult, CheckResult, Outcome, RunResult};

fn measured(answer: &Value) -> String {
    let m = &answer["measured"];
    let mut parts = Vec::new();
    for c in answer["checks"].as_array().into_iter().flatten() {
        let name = c["check"].as_str().unwrap_or("?");
        let value = c["measured"]
            .as_f64()
            .map_or("none".to_string(), |x| format!("{x:.3}"));
        let op = if name.starts_with("max") { "<=" } else { ">=" };
        let verdict = if c["pass"] == true { "" } else { "  BROKEN" };
        parts.push(format!("{name}: {value} {op} {}{verdict}", c["bound"]));
    }
    if parts.is_empty() && answer.get("checked").is_some() {
        return format!(
            "trace assertions: {} traces checked, {} failed",
            answer["checked"], answer["failed"]
        );
    }
    if parts.is_empty() {
        return answer["error"]
            .as_str()
            .map_or_else(|| answer.to_string(), str::to_string);
    }
    format!(
        "{} ({} requests, p99 {} ms)",
        parts.join(", "),
        m["requests"],
        m["p99Ms"]
            .as_f64()
            .map_or("-".to_string(), |x| format!("{x:.1}"))
    )
}

fn checks(out: &mut String, title: &str, list: &[CheckResult], ui: &str) {
    let _ = writeln!(out, "{title}");
    for c in list {
        let verdict = if c.pass { "holds" } else { "DOES NOT HOLD" };
        let _ = writeln!(out, "  {} {verdict}: {}", c.name, measured(&c.answer));
        for v in c.answer["violations"].as_array().into_iter().flatten() {
            let trace = v["traceId"].as_str().unwrap_or_default();
            let took = v["durationMs"]
                .as_f64()
                .map(|ms| format!(" {ms:.1} ms"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    span {} {}{took}{} ({}) trace {ui}/trace/{trace}",
                v["spanId"].as_str().unwrap_or_default(),
                v["operation"].as_str().unwrap_or_default(),
                if v["error"] == true { " error" } else { "" },
                v["reasons"]
                    .as_array()
                    .map(|r| r
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
            );
        }
    }
}

/// The readable report; `ui` is faultline's base URL for trace links.
pub fn text(e: &Experiment, r: &RunResult, ui: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Experiment: {}  (run {}, {:.1} s)",
        e.title, r.id, r.seconds
    );
    for c in &r.cleaned_up {
        let _ = writeln!(out, "Removed before the run: {c}");
    }
    checks(&mut out, "Steady state before the method:", &r.before, ui);
    if !r.method.is_empty() {
        let _ = writeln!(out, "Method:");
        for a in &r.method {
            activity_line(&mut out, a);
        }
    }
    for f in &r.faults_removed {
        let _ = writeln!(out, "Fault removed: {f}");
    }
    if !r.rollbacks.is_empty() {
        let _ = writeln!(out, "Rollbacks:");
        for a in &r.rollbacks {
            activity_line(&mut out, a);
        }
    }
    if !r.after.is_empty() {
        checks(&mut out, "Steady state after the method:", &r.after, ui);
    }
    let verdict = match &r.outcome {
        Outcome::Held => "the hypothesis held".to_string(),
        Outcome::Broken => "the hypothesis was BROKEN".to_string(),
        Outcome::Aborted(why) => format!("ABORTED: {why}"),
    };
    let _ = writeln!(out, "Verdict: {verdict} (exit {})", r.outcome.exit_code());
    out
}

fn activity_line(out: &mut String, a: &ActivityResult) {
    let status = if a.ok { "ok" } else { "FAILED" };
    let detail = match a.output.get("error").and_then(Value::as_str) {
        Some(e) => format!(": {e}"),
        None if a.output.get("status").is_some() => format!(": {}", a.output["status"]),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  {} ({}) {status} in {:.2} s{detail}",
        a.name, a.kind, a.seconds
    );
}

/// The journal: everything the run did, as JSON.
pub fn journal(e: &Experiment, r: &RunResult) -> Value {
    let check = |c: &CheckResult| json!({"name": c.name, "pass": c.pass, "seconds": c.seconds, "answer": c.answer});
    let act = |a: &ActivityResult| json!({"name": a.name, "type": a.kind, "ok": a.ok, "seconds": a.seconds, "output": a.output});
    let (status, deviated, reason) = match &r.outcome {
        Outcome::Held => ("completed", false, None),
        Outcome::Broken => ("completed", true, None),
        Outcome::Aborted(why) => ("aborted", false, Some(why.clone())),
    };
    json!({
        "run": r.id,
        "experiment": {"title": e.title, "description": e.description, "service": e.service,
                       "severity": e.severity, "tags": e.tags},
        "startedUs": r.started_us,
        "seconds": r.seconds,
        "status": status,
        "deviated": deviated,
        "abortReason": reason,
        "exitCode": r.outcome.exit_code(),
        "removedBeforeRun": r.cleaned_up,
        "steadyStates": {"before": r.before.iter().map(check).collect::<Vec<_>>(),
                         "after": r.after.iter().map(check).collect::<Vec<_>>()},
        "method": r.method.iter().map(act).collect::<Vec<_>>(),
        "faultsRemoved": r.faults_removed,
        "rollbacks": r.rollbacks.iter().map(act).collect::<Vec<_>>(),
        "tracesTouched": traces(r),
    })
}

/// Trace ids named by any check.
fn traces(r: &RunResult) -> Vec<String> {
    let mut ids: Vec<String> = r
        .before
        .iter()
        .chain(&r.after)
        .flat_map(|c| {
            c.answer["violations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v["traceId"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JUnit XML: one test case per check (before, after) and per activity.
pub fn junit(e: &Experiment, r: &RunResult, ui: &str) -> String {
    let mut cases = String::new();
    let (mut failures, mut errors, mut n) = (0, 0, 0);
    for (class, list) in [
        ("steady-state.before", &r.before),
        ("steady-state.after", &r.after),
    ] {
        for c in list {
            n += 1;
            let _ = write!(
                cases,
                "    <testcase classname=\"{class}\" name=\"{}\" time=\"{:.3}\"",
                xml(&c.name),
                c.seconds
            );
            if c.pass {
                cases.push_str("/>\n");
            } else {
                failures += 1;
                let mut detail = String::new();
                checks(&mut detail, "", std::slice::from_ref(c), ui);
                let _ = write!(
                    cases,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    xml(&measured(&c.answer)),
                    xml(detail.trim())
                );
            }
        }
    }
    for (class, list) in [("method", &r.method), ("rollbacks", &r.rollbacks)] {
        for a in list {
            n += 1;
            let _ = write!(
                cases,
                "    <testcase classname=\"{class}\" name=\"{}\" time=\"{:.3}\"",
                xml(&a.name),
                a.seconds
            );
            if a.ok {
                cases.push_str("/>\n");
            } else {
                errors += 1;
                let _ = write!(
                    cases,
                    ">\n      <error message=\"{}\"/>\n    </testcase>\n",
                    xml(&a.output.to_string())
                );
            }
        }
    }
    if let Outcome::Aborted(why) = &r.outcome {
        n += 1;
        errors += 1;
        let _ = writeln!(
            cases,
            "    <testcase classname=\"experiment\" name=\"run\">\n      <error message=\"{}\"/>\n    </testcase>",
            xml(why)
        );
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"{}\" tests=\"{n}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{:.3}\">\n{cases}  </testsuite>\n</testsuites>\n",
        xml(&e.title),
        r.seconds
    )
}
