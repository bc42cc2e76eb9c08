//! The analysis behind "look here first": which traces of a service to open, and why.
//!
//! Everything here works on traces already read (spans grouped by trace) and knows nothing
//! about storage or HTML:
//!
//! - [`representatives`]: traces nearest the p50, p90 and p99 durations, and the slowest;
//! - [`error_groups`]: traces grouped by the signature of their deepest error (the error
//!   span with no error span below it): service, exception type, exception message and
//!   status message with numbers and ids masked, and HTTP status code;
//! - [`outliers`]: traces whose span count or set of (service, operation) pairs differs
//!   sharply from the usual shape of traces with the same root operation;
//! - [`contrast`]: attribute values over-represented in selected traces (slow or failing)
//!   against all traces, with both percentages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use faultline_model::span::{AttrValue, Span, TraceId};
use faultline_store::TraceSummary;

/// A trace picked to represent part of the latency distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Representative {
    /// What it stands for: `p50`, `p90`, `p99` or `slowest`.
    pub label: &'static str,
    /// The trace.
    pub summary: TraceSummary,
}

/// The traces whose durations are nearest p50, p90 and p99 of `traces`, and the slowest.
pub fn representatives(traces: &[TraceSummary]) -> Vec<Representative> {
    if traces.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<&TraceSummary> = traces.iter().collect();
    sorted.sort_by_key(|t| (t.duration_ns(), t.trace_id));
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    [
        ("p50", at(0.5)),
        ("p90", at(0.9)),
        ("p99", at(0.99)),
        ("slowest", at(1.0)),
    ]
    .into_iter()
    .map(|(label, s)| Representative {
        label,
        summary: s.clone(),
    })
    .collect()
}

/// What identifies a kind of failure.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ErrorSignature {
    /// Service of the failing span.
    pub service: String,
    /// Operation of the failing span.
    pub operation: String,
    /// `exception.type` of its exception event, if any.
    pub exception_type: Option<String>,
    /// `exception.message`, numbers and hex ids masked.
    pub exception_message: Option<String>,
    /// Status message, masked the same way.
    pub status_message: Option<String>,
    /// `http.response.status_code` (or `http.status_code`).
    pub http_status: Option<i64>,
}

/// Traces failing the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorGroup {
    /// The shared signature.
    pub signature: ErrorSignature,
    /// Traces in the group.
    pub count: usize,
    /// One of them (the first seen).
    pub example: TraceId,
}

/// Replaces runs of digits and long hex or id-like tokens with `#`, so messages that differ
/// only in ids, counts or durations group together.
pub fn mask(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for token in text.split_inclusive(|c: char| c.is_whitespace() || ",;:()[]{}\"'=/".contains(c)) {
        let (word, sep) = match token.char_indices().last() {
            Some((i, c)) if c.is_whitespace() || ",;:()[]{}\"'=/".contains(c) => token.split_at(i),
            _ => (token, ""),
        };
        let digits = word.chars().filter(char::is_ascii_digit).count();
        let hexish = word.len() >= 8 && word.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if hexish
            || (digits > 0 && digits * 2 > word.chars().filter(|c| c.is_alphanumeric()).count())
        {
            out.push('#');
        } else {
            out.push_str(word);
        }
        out.push_str(sep);
    }
    out
}

fn attr<'a>(attrs: &'a [(String, AttrValue)], key: &str) -> Option<&'a AttrValue> {
    attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn text(v: Option<&AttrValue>) -> Option<String> {
    v.map(AttrValue::to_text).filter(|s| !s.is_empty())
}

/// The signature of a trace's deepest error, if it has an error span.
pub fn signature(spans: &[Span]) -> Option<ErrorSignature> {
    let errors: Vec<&Span> = spans.iter().filter(|s| s.is_error()).collect();
    if errors.is_empty() {
        return None;
    }
    let error_parents: HashSet<_> = errors.iter().filter_map(|s| s.parent_span_id).collect();
    // Deepest: an error span that no other error span has as parent; the earliest of those.
    let deepest = errors
        .iter()
        .filter(|s| !error_parents.contains(&s.span_id))
        .min_by_key(|s| (s.start_ns, s.span_id))
        .or_else(|| errors.first())?;
    let exception = deepest.events.iter().find(|e| e.name == "exception");
    let http_status = ["http.response.status_code", "http.status_code"]
        .iter()
        .find_map(|k| match attr(&deepest.attributes, k) {
            Some(AttrValue::Int(i)) => Some(*i),
            Some(AttrValue::Str(s)) => s.parse().ok(),
            _ => None,
        });
    Some(ErrorSignature {
        service: deepest.service().to_string(),
        operation: deepest.name.clone(),
        exception_type: exception.and_then(|e| text(attr(&e.attributes, "exception.type"))),
        exception_message: exception
            .and_then(|e| text(attr(&e.attributes, "exception.message")))
            .map(|m| mask(&m)),
        status_message: Some(mask(&deepest.status_message)).filter(|m| !m.is_empty()),
        http_status,
    })
}

/// Groups failing traces by [`signature`], largest group first.
pub fn error_groups(traces: &[Vec<Span>]) -> Vec<ErrorGroup> {
    let mut groups: HashMap<ErrorSignature, (usize, TraceId, usize)> = HashMap::new();
    for (i, t) in traces.iter().enumerate() {
        let (Some(sig), Some(first)) = (signature(t), t.first()) else {
            continue;
        };
        let g = groups.entry(sig).or_insert((0, first.trace_id, i));
        g.0 += 1;
    }
    let mut out: Vec<(ErrorGroup, usize)> = groups
        .into_iter()
        .map(|(signature, (count, example, first))| {
            (
                ErrorGroup {
                    signature,
                    count,
                    example,
                },
                first,
            )
        })
        .collect();
    out.sort_by(|a, b| b.0.count.cmp(&a.0.count).then(a.1.cmp(&b.1)));
    out.into_iter().map(|(g, _)| g).collect()
}

/// A trace whose shape is unusual for its root operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    /// The trace.
    pub trace_id: TraceId,
    /// Its root operation.
    pub root: String,
    /// What is unusual, in words.
    pub reason: String,
}

/// Traces whose span count is at least 3 times (or at most a third of) the median of
/// traces with the same root operation, or that have (service, operation) pairs that at
/// most 5% of those traces have. Groups of fewer than 5 traces are not judged.
pub fn outliers(traces: &[Vec<Span>]) -> Vec<Outlier> {
    let mut by_root: BTreeMap<String, Vec<&Vec<Span>>> = BTreeMap::new();
    for t in traces {
        let root = t
            .iter()
            .filter(|s| s.parent_span_id.is_none())
            .min_by_key(|s| s.start_ns)
            .map(|r| format!("{} {}", r.service(), r.name))
            .unwrap_or_else(|| "(no root)".to_string());
        by_root.entry(root).or_default().push(t);
    }
    let mut out = Vec::new();
    for (root, group) in by_root {
        if group.len() < 5 {
            continue;
        }
        let mut counts: Vec<usize> = group.iter().map(|t| t.len()).collect();
        counts.sort_unstable();
        let median = counts[counts.len() / 2].max(1);
        let mut freq: HashMap<(String, String), usize> = HashMap::new();
        let shapes: Vec<BTreeSet<(String, String)>> = group
            .iter()
            .map(|t| {
                t.iter()
                    .map(|s| (s.service().to_string(), s.name.clone()))
                    .collect()
            })
            .collect();
        for shape in &shapes {
            for p in shape {
                *freq.entry(p.clone()).or_default() += 1;
            }
        }
        let rare = (group.len() as f64 * 0.05).floor() as usize;
        for (t, shape) in group.iter().zip(&shapes) {
            let Some(first) = t.first() else { continue };
            let n = t.len();
            let mut reasons = Vec::new();
            if n >= median * 3 {
                reasons.push(format!("{n} spans where {median} is usual"));
            } else if n * 3 <= median {
                reasons.push(format!("only {n} spans where {median} is usual"));
            }
            let unusual: Vec<String> = shape
                .iter()
                .filter(|p| freq.get(*p).copied().unwrap_or(0) <= rare.max(1))
                .map(|(s, o)| format!("{s} {o}"))
                .collect();
            if !unusual.is_empty() {
                reasons.push(format!("calls seldom seen here: {}", unusual.join(", ")));
            }
            if !reasons.is_empty() {
                out.push(Outlier {
                    trace_id: first.trace_id,
                    root: root.clone(),
                    reason: reasons.join("; "),
                });
            }
        }
    }
    out
}

/// An attribute value over-represented in the selected traces.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Attribute key.
    pub key: String,
    /// Its value, as text.
    pub value: String,
    /// Share of the selected traces with a span carrying it (0 to 1).
    pub selected: f64,
    /// Share of all traces with a span carrying it.
    pub baseline: f64,
}

/// Keys that identify rather than describe (never a cause).
fn is_identity_key(key: &str) -> bool {
    key.ends_with(".id") || key.ends_with("_id") || key == "service.name"
}

fn trace_values(spans: &[Span]) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    let mut push = |k: &str, v: &AttrValue| {
        if is_identity_key(k) {
            return;
        }
        let text = match v {
            AttrValue::Str(s) if s.len() <= 128 => s.clone(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            _ => return,
        };
        out.insert((k.to_string(), text));
    };
    for s in spans {
        for (k, v) in &s.attributes {
            push(k, v);
        }
        for (k, v) in &s.origin.resource {
            push(k, v);
        }
    }
    out
}

/// Attribute values present in a larger share of `selected` traces than of `all` traces,
/// ranked by the difference of the shares (then by the ratio); values in fewer than 20% of
/// the selected traces are left out, as are identity keys (`*.id`). At most `limit`.
pub fn contrast(selected: &[&Vec<Span>], all: &[Vec<Span>], limit: usize) -> Vec<Finding> {
    if selected.is_empty() || all.is_empty() {
        return Vec::new();
    }
    let mut sel: HashMap<(String, String), usize> = HashMap::new();
    for t in selected {
        for kv in trace_values(t) {
            *sel.entry(kv).or_default() += 1;
        }
    }
    let mut base: HashMap<(String, String), usize> = HashMap::new();
    for t in all {
        for kv in trace_values(t) {
            if sel.contains_key(&kv) {
                *base.entry(kv).or_default() += 1;
            }
        }
    }
    let (ns, nb) = (selected.len() as f64, all.len() as f64);
    let mut out: Vec<Finding> = sel
        .into_iter()
        .filter_map(|((key, value), n)| {
            let s = n as f64 / ns;
            let b = base
                .get(&(key.clone(), value.clone()))
                .copied()
                .unwrap_or(0) as f64
                / nb;
            (s >= 0.2 && s > b).then_some(Finding {
                key,
                value,
                selected: s,
                baseline: b,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (b.selected - b.baseline)
            .total_cmp(&(a.selected - a.baseline))
            .then(
                (b.selected / b.baseline.max(1e-9)).total_cmp(&(a.selected / a.baseline.max(1e-9))),
            )
            .then(a.key.cmp(&b.key))
            .then(a.value.cmp(&b.value))
    });
    out.truncate(limit);
    out
}

/// A trace's duration: earliest start to latest end of its spans.
pub fn trace_duration(t: &[Span]) -> u64 {
    let start = t.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = t
        .iter()
        .map(|s| s.end_ns.max(s.start_ns))
        .max()
        .unwrap_or(0);
    end.saturating_sub(start)
}

/// The slowest tenth of `traces` (at least one) and the failing ones, to contrast with all.
pub fn slow_and_failing(traces: &[Vec<Span>]) -> (Vec<&Vec<Span>>, Vec<&Vec<Span>>) {
    let mut by_dur: Vec<&Vec<Span>> = traces.iter().collect();
    by_dur.sort_by_key(|t| std::cmp::Reverse(trace_duration(t)));
    by_dur.truncate(traces.len().div_ceil(10));
    let failing = traces
        .iter()
        .filter(|t| t.iter().any(Span::is_error))
        .collect();
    (by_dur, failing)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{Event, Origin, SpanKind, StatusCode};

    use super::*;

    fn span(trace: u32, id: u8, parent: Option<u8>, service: &str, name: &str) -> Span {
        let mut tid = [0u8; 16];
        tid[12..].copy_from_slice(&trace.to_be_bytes());
        Span {
            trace_id: tid,
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            name: name.into(),
            kind: SpanKind::Server,
            start_ns: 1_000 + u64::from(id),
            end_ns: 2_000 + u64::from(id),
            status: StatusCode::Unset,
            status_message: String::new(),
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            origin: Arc::new(Origin {
                service: service.into(),
                ..Origin::default()
            }),
        }
    }

    /// A deterministic pseudo-random sequence (no test dependency needed).
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn a_planted_cause_ranks_first() {
        // 200 traces; the 20 slow ones carry db.pool=exhausted 90% of the time, the others 5%.
        // Noise: region spread evenly, and a decoy mildly more common in slow traces.
        let mut rng = 42u64;
        let mut traces = Vec::new();
        let mut slow = Vec::new();
        for t in 0..200u32 {
            let is_slow = t < 20;
            let mut root = span(t, 1, None, "api", "GET /cart");
            let mut db = span(t, 2, Some(1), "db", "query");
            root.end_ns = root.start_ns + if is_slow { 1_000_000_000 } else { 20_000_000 };
            let planted = if is_slow { t < 18 } else { t % 20 == 0 };
            if planted {
                db.attributes
                    .push(("db.pool".into(), AttrValue::Str("exhausted".into())));
            } else {
                db.attributes
                    .push(("db.pool".into(), AttrValue::Str("ok".into())));
            }
            let region =
                ["eu-west", "us-east", "ap-south", "us-west"][(lcg(&mut rng) % 4) as usize];
            root.attributes
                .push(("region".into(), AttrValue::Str(region.into())));
            let decoy = lcg(&mut rng) % 100 < if is_slow { 45 } else { 30 };
            root.attributes
                .push(("cache.hit".into(), AttrValue::Bool(decoy)));
            root.attributes
                .push(("request.id".into(), AttrValue::Str(format!("r{t}"))));
            traces.push(vec![root, db]);
            if is_slow {
                slow.push(t as usize);
            }
        }
        let selected: Vec<&Vec<Span>> = slow.iter().map(|&i| &traces[i]).collect();
        let findings = contrast(&selected, &traces, 5);
        let top = &findings[0];
        assert_eq!(
            (top.key.as_str(), top.value.as_str()),
            ("db.pool", "exhausted"),
            "{findings:?}"
        );
        assert!((top.selected - 0.9).abs() < 1e-9);
        // 18 slow + 9 others of 200.
        assert!((top.baseline - 27.0 / 200.0).abs() < 1e-9);
        assert!(
            findings.iter().all(|f| f.key != "request.id"),
            "identity keys are never causes"
        );
    }

    #[test]
    #[allow(clippy::vec_init_then_push)]
    fn error_groups_put_the_same_exception_together_and_different_ones_apart() {
        let failing = |t: u32, exc: &str, msg: &str, status: i64| {
            let root = Span {
                status: StatusCode::Error,
                ..span(t, 1, None, "api", "POST /checkout")
            };
            let mut pay = Span {
                status: StatusCode::Error,
                status_message: msg.to_string(),
                ..span(t, 2, Some(1), "payment", "Charge")
            };
            pay.attributes
                .push(("http.response.status_code".into(), AttrValue::Int(status)));
            pay.events.push(Event {
                time_ns: 1_500,
                name: "exception".into(),
                attributes: vec![
                    ("exception.type".into(), AttrValue::Str(exc.into())),
                    ("exception.message".into(), AttrValue::Str(msg.into())),
                ],
            });
            vec![root, pay]
        };
        let mut traces = Vec::new();
        // Same exception, messages differing only in numbers: one group of 3.
        traces.push(failing(
            1,
            "TimeoutError",
            "upstream timed out after 2000 ms",
            504,
        ));
        traces.push(failing(
            2,
            "TimeoutError",
            "upstream timed out after 2113 ms",
            504,
        ));
        traces.push(failing(
            3,
            "TimeoutError",
            "upstream timed out after 1999 ms",
            504,
        ));
        // A different exception, and the same type with a different status: apart.
        traces.push(failing(4, "CardDeclined", "card 4242 declined", 402));
        traces.push(failing(
            5,
            "TimeoutError",
            "upstream timed out after 2000 ms",
            503,
        ));
        // A healthy trace is in no group.
        traces.push(vec![span(6, 1, None, "api", "GET /")]);
        let groups = error_groups(&traces);
        assert_eq!(groups.len(), 3, "{groups:#?}");
        assert_eq!(groups[0].count, 3);
        assert_eq!(
            groups[0].signature.exception_type.as_deref(),
            Some("TimeoutError")
        );
        assert_eq!(
            groups[0].signature.service, "payment",
            "the deepest error, not the root"
        );
        assert_eq!(
            groups[0].signature.exception_message.as_deref(),
            Some("upstream timed out after # ms")
        );
        assert_eq!(groups[0].example, traces[0][0].trace_id);
        assert_eq!(groups[1].count + groups[2].count, 2);
        assert!(
            groups[1..]
                .iter()
                .any(|g| g.signature.http_status == Some(402))
        );
        assert!(
            groups[1..]
                .iter()
                .any(|g| g.signature.http_status == Some(503))
        );
    }

    #[test]
    fn outliers_and_representatives() {
        let mut traces = Vec::new();
        for t in 0..20u32 {
            let mut v = vec![span(t, 1, None, "api", "GET /")];
            for i in 2..6u8 {
                v.push(span(t, i, Some(1), "db", "query"));
            }
            traces.push(v);
        }
        // One trace fans out into 40 spans; another calls a service nobody else calls.
        for i in 6..46u8 {
            traces[3].push(span(3, i, Some(1), "db", "query"));
        }
        traces[7].push(span(7, 9, Some(1), "legacy", "SOAP call"));
        let found = outliers(&traces);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found
                .iter()
                .any(|o| o.trace_id == traces[3][0].trace_id && o.reason.contains("45 spans"))
        );
        assert!(
            found
                .iter()
                .any(|o| o.trace_id == traces[7][0].trace_id
                    && o.reason.contains("legacy SOAP call"))
        );

        let summaries: Vec<TraceSummary> = (0..100u64)
            .map(|i| TraceSummary {
                trace_id: [i as u8; 16],
                start_ns: 0,
                end_ns: (i + 1) * 1_000_000,
                root_service: None,
                root_name: None,
                span_count: 1,
                error_count: 0,
                orphan_count: 0,
                services: Vec::new(),
            })
            .collect();
        let r = representatives(&summaries);
        let ms: Vec<u64> = r
            .iter()
            .map(|r| r.summary.duration_ns() / 1_000_000)
            .collect();
        assert_eq!(ms, vec![51, 90, 99, 100]);
    }

    #[test]
    fn masking_keeps_words_and_hides_numbers_and_ids() {
        assert_eq!(mask("user 12345 not found"), "user # not found");
        assert_eq!(mask("key=9f8e7d6c5b4a missing"), "key=# missing");
        assert_eq!(mask("HTTP 503 from 10.0.0.7"), "HTTP # from #");
        assert_eq!(mask("v2 api"), "v2 api");
    }
}
