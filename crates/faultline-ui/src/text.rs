//! The terminal's renderings of the same views (`faultline query`, `faultline report`):
//! a trace as an indented tree, a RED series as a table, the tracing-health report as a
//! list of findings. Pure functions of the API's answers.

use serde_json::Value;

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
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
pub fn trace(id: &str, spans: &[faultline_model::span::Span]) -> String {
    let w = crate::waterfall::layout(spans);
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

/// `GET /api/v1/red`'s answer as a table, one row per step.
pub fn red(v: &Value) -> String {
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

/// `GET /api/v1/tracing-health`'s answer as text: per service, each finding with its
/// count, trend and an example trace.
pub fn tracing_health(v: &Value) -> String {
    let mut out = format!(
        "tracing health since start (semantic conventions {})\n",
        v["semconvVersion"].as_str().unwrap_or("?")
    );
    let example = |t: &Value| {
        t["examples"][0]
            .as_str()
            .map(|e| format!("  e.g. trace {e}"))
            .unwrap_or_default()
    };
    let trend = |t: &Value| {
        let counts: Vec<String> = t["trend"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| b[1].to_string())
            .collect();
        if counts.is_empty() {
            String::new()
        } else {
            format!("  per 10 min: {}", counts.join(" "))
        }
    };
    let mut findings = 0;
    for s in v["services"].as_array().into_iter().flatten() {
        let name = s["service"].as_str().unwrap_or_default();
        let mut lines = Vec::new();
        let from = s["orphans"]["expectedParentFrom"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|f| !f.is_empty())
            .map(|f| format!(" (parent expected from {f})"))
            .unwrap_or_default();
        for (key, label) in [
            ("orphans", "orphan spans"),
            ("samplingBreaks", "sampling breaks"),
        ] {
            let t = &s[key];
            if t["count"].as_u64().unwrap_or(0) > 0 {
                lines.push(format!(
                    "{} {label}{from}{}{}",
                    t["count"],
                    trend(t),
                    example(t)
                ));
            }
        }
        for c in s["clocks"].as_array().into_iter().flatten() {
            lines.push(format!(
                "clock {} off by {:+.1} ms ({} calls, spread {:.1} ms)",
                c["host"].as_str().unwrap_or_default(),
                c["offsetMs"].as_f64().unwrap_or(0.0),
                c["samples"],
                c["spreadMs"].as_f64().unwrap_or(0.0)
            ));
        }
        for c in s["conventions"].as_array().into_iter().flatten() {
            lines.push(format!(
                "{} spans: {} {}: {}{}{}",
                c["count"],
                c["kind"].as_str().unwrap_or_default().replace('_', " "),
                c["attribute"].as_str().unwrap_or_default(),
                c["note"].as_str().unwrap_or_default(),
                trend(c),
                example(c)
            ));
        }
        if !lines.is_empty() {
            findings += lines.len();
            out.push_str(&format!("{name} ({} spans)\n", s["spans"]));
            for l in lines {
                out.push_str(&format!("  {l}\n"));
            }
        }
    }
    if findings == 0 {
        out.push_str("nothing found\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_tracing_health_report() {
        let v = serde_json::json!({"semconvVersion": "1.44.0", "services": [
            {"service": "legacy", "spans": 37,
             "orphans": {"count": 2, "trend": [[0, 2]], "examples": ["ab"], "expectedParentFrom": ["gateway"]},
             "samplingBreaks": {"count": 0, "trend": [], "examples": []},
             "clocks": [{"host": "api-1", "offsetMs": 2000.0, "samples": 40, "spreadMs": 1.0}],
             "conventions": [{"kind": "deprecated", "attribute": "http.status_code",
                "note": "Replaced by `http.response.status_code`.", "count": 37,
                "trend": [[0, 37]], "examples": ["cd"]}]},
            {"service": "fine", "spans": 5, "orphans": {"count": 0}, "samplingBreaks": {"count": 0},
             "clocks": [], "conventions": []}]});
        let text = tracing_health(&v);
        assert!(text.contains("semantic conventions 1.44.0"), "{text}");
        assert!(text.contains("legacy (37 spans)"), "{text}");
        assert!(
            text.contains(
                "2 orphan spans (parent expected from gateway)  per 10 min: 2  e.g. trace ab"
            ),
            "{text}"
        );
        assert!(
            text.contains("clock api-1 off by +2000.0 ms (40 calls, spread 1.0 ms)"),
            "{text}"
        );
        assert!(
            text.contains(
                "37 spans: deprecated http.status_code: Replaced by `http.response.status_code`."
            ),
            "{text}"
        );
        assert!(!text.contains("fine"), "{text}");
    }

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
        let text = trace("ab", &spans);

        assert!(text.starts_with("trace ab - 3 spans, 5.000 ms"), "{text}");
        assert!(text.contains(" ms  front GET /\n"), "{text}");
        assert!(text.contains(" ms    db SELECT  [error]\n"), "{text}");
        assert!(text.contains("db late  [parent missing]"), "{text}");
        assert_eq!(encode("GET /cart?x"), "GET%20%2Fcart%3Fx");
    }
}
