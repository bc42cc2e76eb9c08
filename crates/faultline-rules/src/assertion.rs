//! Assertion files and their evaluation over one trace.
//!
//! Format (JSON; unknown keys are errors):
//!
//! ```json
//! {"name": "checkout flow", "assertions": [
//!   {"name": "one payment", "select": "{ name = \"POST /pay\" }", "count": 1},
//!   {"name": "payment under the frontend",
//!    "select": "{ service = \"frontend\" } >> { service = \"payment\" }", "minCount": 1},
//!   {"name": "fast database", "select": "{ .db.system = \"postgresql\" }", "maxDuration": "50ms"},
//!   {"name": "no server errors", "select": "{ kind = server }", "status": "unset",
//!    "attribute": {"key": "http.response.status_code", "min": 200, "max": 499}},
//!   {"name": "stock before price", "select": "{ name = \"GET /stock\" }",
//!    "before": "{ name = \"GET /price\" }"}]}
//! ```
//!
//! Each assertion selects spans (`selector.rs`) and checks them: `count`, `minCount`,
//! `maxCount` (how many were selected; with no check at all, `minCount` 1 is implied);
//! `minDuration`, `maxDuration`, `status` (`ok`, `error`, `unset`) and `attribute` (`key`
//! with `equals`, or `min`/`max` for numbers, or `exists`) hold for every selected span;
//! `before` (a selector): every selected span ends before the first span it selects
//! starts. A failure names the spans that broke it.

use faultline_model::span::{AttrValue, Span, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::selector::Selector;

/// An assertion file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    name: String,
    assertions: Vec<Def>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Def {
    name: String,
    select: String,
    count: Option<u64>,
    min_count: Option<u64>,
    max_count: Option<u64>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    status: Option<String>,
    attribute: Option<AttrCheck>,
    before: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttrCheck {
    key: String,
    equals: Option<Value>,
    min: Option<f64>,
    max: Option<f64>,
    exists: Option<bool>,
}

/// One assertion, checked and compiled.
#[derive(Debug, Clone)]
pub struct Assertion {
    pub name: String,
    select: Selector,
    count: (Option<u64>, Option<u64>),
    duration: (Option<u64>, Option<u64>),
    status: Option<StatusCode>,
    attribute: Option<AttrCheck>,
    before: Option<Selector>,
}

/// A checked assertion file.
#[derive(Debug, Clone)]
pub struct AssertionFile {
    pub name: String,
    pub assertions: Vec<Assertion>,
}

/// One assertion's result on one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub pass: bool,
    /// What was expected and what was found.
    pub message: String,
    /// How many spans the selector chose.
    pub selected: usize,
    /// The spans that broke it (at most 10).
    pub spans: Vec<[u8; 8]>,
}

fn duration_ns(s: &str) -> Option<u64> {
    faultline_model::duration::parse_ns(s)
}

impl AssertionFile {
    /// Parses and checks a file; the error names the assertion and field (and, for a
    /// selector, the column and what was expected).
    pub fn parse(text: &str) -> Result<AssertionFile, String> {
        let f: FileDef = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if f.assertions.is_empty() {
            return Err("assertions: at least one assertion is needed".into());
        }
        let mut out = Vec::new();
        for (i, d) in f.assertions.into_iter().enumerate() {
            let at = format!("assertions[{i}] ({})", d.name);
            let select = Selector::parse(&d.select).map_err(|e| format!("{at}.select: {e}"))?;
            let before = d
                .before
                .as_deref()
                .map(Selector::parse)
                .transpose()
                .map_err(|e| format!("{at}.before: {e}"))?;
            let dur = |v: &Option<String>, field: &str| -> Result<Option<u64>, String> {
                v.as_deref()
                    .map(|s| {
                        duration_ns(s).ok_or_else(|| {
                            format!("{at}.{field}: {s:?} is not a duration such as \"50ms\"")
                        })
                    })
                    .transpose()
            };
            let status = match d.status.as_deref() {
                None => None,
                Some("ok") => Some(StatusCode::Ok),
                Some("error") => Some(StatusCode::Error),
                Some("unset") => Some(StatusCode::Unset),
                Some(other) => {
                    return Err(format!("{at}.status: {other:?} is not ok, error or unset"));
                }
            };
            if let Some(a) = &d.attribute
                && a.equals.is_none()
                && a.min.is_none()
                && a.max.is_none()
                && a.exists.is_none()
            {
                return Err(format!("{at}.attribute: give equals, min, max or exists"));
            }
            let mut count = (d.min_count, d.max_count);
            if let Some(c) = d.count {
                count = (Some(c), Some(c));
            }
            let nothing = count == (None, None)
                && d.min_duration.is_none()
                && d.max_duration.is_none()
                && status.is_none()
                && d.attribute.is_none()
                && before.is_none();
            if nothing {
                count.0 = Some(1);
            }
            out.push(Assertion {
                duration: (
                    dur(&d.min_duration, "minDuration")?,
                    dur(&d.max_duration, "maxDuration")?,
                ),
                name: d.name,
                select,
                count,
                status,
                attribute: d.attribute,
                before,
            });
        }
        Ok(AssertionFile {
            name: f.name,
            assertions: out,
        })
    }
}

fn attr_holds(c: &AttrCheck, s: &Span) -> bool {
    let v = s
        .attributes
        .iter()
        .find(|(k, _)| *k == c.key)
        .map(|(_, v)| v);
    if let Some(e) = c.exists {
        return v.is_some() == e;
    }
    let Some(v) = v else { return false };
    let num = match v {
        AttrValue::Int(i) => Some(*i as f64),
        AttrValue::Double(d) => Some(*d),
        AttrValue::Str(s) => s.parse().ok(),
        _ => None,
    };
    if let Some(want) = &c.equals {
        let same = match (v, want) {
            (AttrValue::Str(s), Value::String(w)) => s == w,
            (AttrValue::Bool(b), Value::Bool(w)) => b == w,
            (_, Value::Number(n)) => num.is_some() && num == n.as_f64(),
            _ => false,
        };
        if !same {
            return false;
        }
    }
    c.min.is_none_or(|m| num.is_some_and(|x| x >= m))
        && c.max.is_none_or(|m| num.is_some_and(|x| x <= m))
}

/// Checks every assertion of `file` over one trace's spans.
pub fn check_trace(file: &AssertionFile, spans: &[Span]) -> Vec<Outcome> {
    file.assertions
        .iter()
        .map(|a| check_one(a, spans))
        .collect()
}

fn check_one(a: &Assertion, spans: &[Span]) -> Outcome {
    let chosen: Vec<&Span> = a
        .select
        .select(spans)
        .into_iter()
        .map(|i| &spans[i])
        .collect();
    let n = chosen.len() as u64;
    let mut problems: Vec<String> = Vec::new();
    let mut bad: Vec<[u8; 8]> = Vec::new();
    match a.count {
        (Some(lo), Some(hi)) if lo == hi && n != lo => {
            problems.push(format!("expected {lo} spans, found {n}"));
            // Too many: the spans selected are the ones to look at.
            if n > lo {
                bad.extend(chosen.iter().map(|s| s.span_id));
            }
        }
        (Some(lo), _) if n < lo => {
            problems.push(format!("expected at least {lo} spans, found {n}"))
        }
        (_, Some(hi)) if n > hi => {
            problems.push(format!("expected at most {hi} spans, found {n}"));
            bad.extend(chosen.iter().map(|s| s.span_id));
        }
        _ => {}
    }
    let before = a.before.as_ref().map(|b| {
        let first = b.select(spans).into_iter().map(|i| spans[i].start_ns).min();
        (b, first)
    });
    {
        let mut every = |what: String, holds: &dyn Fn(&Span) -> bool| {
            let failing: Vec<&&Span> = chosen.iter().filter(|s| !holds(s)).collect();
            if !failing.is_empty() {
                problems.push(format!("{} of {n} spans {what}", failing.len()));
                bad.extend(failing.iter().map(|s| s.span_id));
            }
        };
        if let Some(max) = a.duration.1 {
            every(format!("longer than {} ms", max as f64 / 1e6), &|s| {
                s.duration_ns() <= max
            });
        }
        if let Some(min) = a.duration.0 {
            every(format!("shorter than {} ms", min as f64 / 1e6), &|s| {
                s.duration_ns() >= min
            });
        }
        if let Some(st) = a.status {
            every(format!("with another status than {st:?}"), &|s| {
                s.status == st
            });
        }
        if let Some(c) = &a.attribute {
            every(format!("failing the check of attribute {}", c.key), &|s| {
                attr_holds(c, s)
            });
        }
        if let Some((b, Some(t))) = before {
            every(
                format!("ending after the first {} starts", b.text()),
                &|s| s.end_ns <= t,
            );
        }
    }
    if let Some((b, None)) = before {
        problems.push(format!("no span matches before {:?}", b.text()));
    }
    bad.dedup();
    bad.truncate(10);
    Outcome {
        name: a.name.clone(),
        pass: problems.is_empty(),
        message: if problems.is_empty() {
            format!("{n} spans selected; every check holds")
        } else {
            problems.join("; ")
        },
        selected: chosen.len(),
        spans: bad,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{Origin, SpanKind};

    use super::*;

    fn span(id: u8, parent: Option<u8>, name: &str, start_ms: u64, ms: u64, error: bool) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            name: name.into(),
            kind: if parent.is_none() {
                SpanKind::Server
            } else {
                SpanKind::Client
            },
            start_ns: start_ms * 1_000_000,
            end_ns: (start_ms + ms) * 1_000_000,
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: String::new(),
            attributes: vec![(
                "http.response.status_code".into(),
                AttrValue::Int(if error { 503 } else { 200 }),
            )],
            events: vec![],
            links: vec![],
            origin: Arc::new(Origin {
                service: "frontend".into(),
                ..Origin::default()
            }),
        }
    }

    const FILE: &str = r#"{"name": "product", "assertions": [
        {"name": "one stock call", "select": "{ name = \"GET /stock\" }", "count": 1},
        {"name": "price fast", "select": "{ name = \"GET /price\" }", "maxDuration": "100ms"},
        {"name": "no errors", "select": "{ }", "status": "unset",
         "attribute": {"key": "http.response.status_code", "min": 200, "max": 499}},
        {"name": "stock before price", "select": "{ name = \"GET /stock\" }", "before": "{ name = \"GET /price\" }"},
        {"name": "has a root", "select": "{ kind = server }"}]}"#;

    #[test]
    fn a_good_trace_passes_and_a_bad_one_names_its_spans() {
        let f = AssertionFile::parse(FILE).unwrap_or_else(|e| panic!("{e}"));
        let good = vec![
            span(1, None, "GET /product", 0, 100, false),
            span(2, Some(1), "GET /stock", 1, 10, false),
            span(3, Some(1), "GET /price", 12, 50, false),
        ];
        assert!(
            check_trace(&f, &good).iter().all(|o| o.pass),
            "{:?}",
            check_trace(&f, &good)
        );
        let bad = vec![
            span(1, None, "GET /product", 0, 400, false),
            span(2, Some(1), "GET /stock", 1, 10, false),
            span(4, Some(1), "GET /stock", 2, 30, false),
            span(3, Some(1), "GET /price", 20, 300, true),
        ];
        let out = check_trace(&f, &bad);
        let by = |n: &str| {
            out.iter()
                .find(|o| o.name == n)
                .cloned()
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(by("one stock call").message, "expected 1 spans, found 2");
        assert_eq!(by("price fast").spans, vec![[3; 8]]);
        assert!(
            by("no errors")
                .message
                .contains("1 of 4 spans with another status"),
            "{:?}",
            by("no errors")
        );
        assert_eq!(
            by("stock before price").spans,
            vec![[4; 8]],
            "ends at 32 ms, after price starts at 20"
        );
        assert!(by("has a root").pass);
    }

    #[test]
    fn bad_files_name_the_assertion_and_field() {
        for (text, want) in [
            (r#"{"assertions": []}"#, "at least one assertion"),
            (
                r#"{"assertions": [{"name": "a", "select": "{ nam = 1 }"}]}"#,
                "assertions[0] (a).select: selector",
            ),
            (
                r#"{"assertions": [{"name": "a", "select": "{}", "maxDuration": "fast"}]}"#,
                "assertions[0] (a).maxDuration: \"fast\"",
            ),
            (
                r#"{"assertions": [{"name": "a", "select": "{}", "status": "bad"}]}"#,
                "is not ok, error or unset",
            ),
            (
                r#"{"assertions": [{"name": "a", "select": "{}", "attribute": {"key": "k"}}]}"#,
                "give equals, min, max or exists",
            ),
            (
                r#"{"assertions": [{"name": "a", "select": "{}", "cont": 1}]}"#,
                "unknown field `cont`",
            ),
        ] {
            let e = AssertionFile::parse(text).err().unwrap_or_default();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
