//! The analysis behind "look here first": which traces of a service to open, and why.
//!
//! Everything here works on traces already read (spans grouped by trace) and knows nothing
//! about storage or HTML. A service page's questions are about the service, so most of it
//! looks at the service's own spans:
//!
//! - [`request_duration`]: how long the service took in a trace (its longest entry span);
//!   [`exemplars`]: traces nearest given p50, p90 and p99 durations (the service's request
//!   latency, or whole traces'), and the slowest;
//! - [`error_groups`]: traces grouped by the signature of the service's deepest error (its
//!   error span with no error span of its own below it): operation, exception type,
//!   exception message and status message with numbers and ids masked, HTTP status code,
//!   and the callee whose error it passed on, if any;
//! - [`outliers`]: traces whose span count or set of (service, operation) pairs differs
//!   sharply from the usual shape of traces with the same root operation;
//! - [`contrast`]: attribute values of the service's spans over-represented in selected
//!   traces (slow or failing) against a random sample, ranked by difference among those
//!   a two-proportion test finds significant.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use faultline_model::span::{AttrValue, Key, Span, TraceId};

/// How long `service` took in a trace: its longest entry span (SERVER or CONSUMER, or a
/// root), or, when it has none there, its longest span. `None` when it has no span there.
pub fn request_duration(spans: &[Span], service: &str) -> Option<u64> {
    let own = || spans.iter().filter(|s| s.service() == service);
    own()
        .filter(|s| faultline_store::rollup::is_entry(s))
        .map(Span::duration_ns)
        .max()
        .or_else(|| own().map(Span::duration_ns).max())
}

/// Which duration exemplars are chosen by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The service's request latency ([`request_duration`]).
    Request,
    /// The whole trace's duration ([`trace_duration`]).
    Trace,
}

/// A trace picked to represent part of the latency distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// What it stands for: `p50`, `p90`, `p99` or `slowest`.
    pub label: &'static str,
    /// The duration it was chosen to be near (none for `slowest`).
    pub target_ns: Option<u64>,
    /// Index of the trace in the pool.
    pub index: usize,
    /// Its duration by the chosen measure.
    pub duration_ns: u64,
}

/// For each of p50, p90 and p99 with a target duration, the trace of `pool` whose duration
/// (`durations`, by index; `None`: not measurable) is nearest it on a log scale, and the
/// longest trace as `slowest`.
pub fn exemplars(durations: &[Option<u64>], targets: [Option<u64>; 3]) -> Vec<Exemplar> {
    let known: Vec<(usize, u64)> = durations
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.map(|d| (i, d)))
        .collect();
    let mut out = Vec::new();
    if known.is_empty() {
        return out;
    }
    let ln = |ns: u64| (ns.max(1) as f64).ln();
    for (label, target) in ["p50", "p90", "p99"].into_iter().zip(targets) {
        let Some(t) = target else { continue };
        if let Some(&(index, duration_ns)) = known
            .iter()
            .min_by(|a, b| (ln(a.1) - ln(t)).abs().total_cmp(&(ln(b.1) - ln(t)).abs()))
        {
            out.push(Exemplar {
                label,
                target_ns: Some(t),
                index,
                duration_ns,
            });
        }
    }
    if let Some(&(index, duration_ns)) = known.iter().max_by_key(|(i, d)| (*d, usize::MAX - i)) {
        out.push(Exemplar {
            label: "slowest",
            target_ns: None,
            index,
            duration_ns,
        });
    }
    out
}

/// The p50, p90 and p99 of `durations` (nearest rank), or `None`s when it is empty.
pub fn quantiles(durations: &[u64]) -> [Option<u64>; 3] {
    let mut v = durations.to_vec();
    v.sort_unstable();
    let at = |q: f64| (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize]);
    [at(0.5), at(0.9), at(0.99)]
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
    /// When the error came from a callee: the deepest error below it in another service,
    /// as `service operation: exception type` (or its status message, masked).
    pub cause: Option<String>,
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

fn attr<'a>(attrs: &'a [(Key, AttrValue)], key: &str) -> Option<&'a AttrValue> {
    attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn text(v: Option<&AttrValue>) -> Option<String> {
    v.map(AttrValue::to_text).filter(|s| !s.is_empty())
}

/// The error span among `errors` that has no other of them as parent (the earliest such).
fn deepest<'a>(errors: &[&'a Span]) -> Option<&'a Span> {
    let parents: HashSet<_> = errors.iter().filter_map(|s| s.parent_span_id).collect();
    errors
        .iter()
        .filter(|s| !parents.contains(&s.span_id))
        .min_by_key(|s| (s.start_ns, s.span_id))
        .or_else(|| errors.first())
        .copied()
}

/// The signature of the deepest error of `service` in a trace (of the whole trace when
/// `service` is `None`), if it has an error span there.
pub fn signature(spans: &[Span], service: Option<&str>) -> Option<ErrorSignature> {
    let errors: Vec<&Span> = spans
        .iter()
        .filter(|s| s.is_error() && service.is_none_or(|v| s.service() == v))
        .collect();
    let deepest = deepest(&errors)?;
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
        cause: service.and_then(|_| cause_below(spans, deepest)),
    })
}

/// The deepest error of another service below `span` (its descendants), in words.
fn cause_below(spans: &[Span], span: &Span) -> Option<String> {
    let parent: HashMap<_, _> = spans
        .iter()
        .filter_map(|s| s.parent_span_id.map(|p| (s.span_id, p)))
        .collect();
    let below = |s: &Span| {
        let mut at = s.parent_span_id;
        // Bounded: a malformed trace may have a cycle of parents.
        for _ in 0..spans.len() {
            match at {
                Some(p) if p == span.span_id => return true,
                Some(p) => at = parent.get(&p).copied(),
                None => return false,
            }
        }
        false
    };
    let errors: Vec<&Span> = spans
        .iter()
        .filter(|s| s.is_error() && s.service() != span.service() && below(s))
        .collect();
    let d = deepest(&errors)?;
    let what = d
        .events
        .iter()
        .find(|e| e.name == "exception")
        .and_then(|e| text(attr(&e.attributes, "exception.type")))
        .or_else(|| Some(mask(&d.status_message)).filter(|m| !m.is_empty()))
        .unwrap_or_else(|| "error".to_string());
    Some(format!("{} {}: {what}", d.service(), d.name))
}

/// Groups failing traces by the [`signature`] of `service`'s errors (of the whole trace
/// when `None`), largest group first; traces without such an error are in no group.
pub fn error_groups(traces: &[&Vec<Span>], service: Option<&str>) -> Vec<ErrorGroup> {
    let mut groups: HashMap<ErrorSignature, (usize, TraceId, usize)> = HashMap::new();
    for (i, t) in traces.iter().enumerate() {
        let (Some(sig), Some(first)) = (signature(t, service), t.first()) else {
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
pub fn outliers(traces: &[&Vec<Span>]) -> Vec<Outlier> {
    let mut by_root: BTreeMap<String, Vec<&Vec<Span>>> = BTreeMap::new();
    for &t in traces {
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
    /// Share of the selected traces with a span of the service carrying it (0 to 1).
    pub selected: f64,
    /// Share of the baseline traces with one.
    pub baseline: f64,
}

/// Keys that identify rather than describe (never a cause).
fn is_identity_key(key: &str) -> bool {
    key.ends_with(".id") || key.ends_with("_id") || key == "service.name"
}

/// The (key, value) pairs of `service`'s spans in a trace: span attributes and resource.
fn trace_values(spans: &[Span], service: &str) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    let mut push = |k: &str, v: &AttrValue| {
        if is_identity_key(k) {
            return;
        }
        let text = match v {
            AttrValue::Str(s) if s.len() <= 128 => s.to_string(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            _ => return,
        };
        out.insert((k.to_string(), text));
    };
    let mut origins = Vec::new();
    for s in spans.iter().filter(|s| s.service() == service) {
        for (k, v) in &s.attributes {
            push(k, v);
        }
        if !origins.iter().any(|o| std::sync::Arc::ptr_eq(o, &s.origin)) {
            origins.push(s.origin.clone());
        }
    }
    for o in &origins {
        for (k, v) in &o.resource {
            push(k, v);
        }
    }
    out
}

/// Least selected traces carrying a value for it to be reported.
pub const MIN_SUPPORT: usize = 3;
/// Least two-proportion z score (selected share against baseline share) for a value to be
/// reported: about one chance in 700 that a value with no real difference passes.
pub const MIN_Z: f64 = 3.0;
/// Least difference of shares for a value of a near-unique key (one with at least 5
/// distinct values in the baseline and at least one per four traces carrying it: host
/// names, user ids): among so many values some pass the test by chance.
pub const NEAR_UNIQUE_DIFFERENCE: f64 = 0.5;

/// Attribute values of `service`'s spans present in a larger share of `selected` traces
/// than of `baseline` traces (a random sample of all), ranked by the difference of the
/// shares. Reported only with at least [`MIN_SUPPORT`] selected traces and 20% of them, a
/// z score of at least [`MIN_Z`], and for near-unique keys a difference of at least
/// [`NEAR_UNIQUE_DIFFERENCE`]; identity keys (`*.id`) never. At most `limit`.
pub fn contrast(
    selected: &[&Vec<Span>],
    baseline: &[&Vec<Span>],
    service: &str,
    limit: usize,
) -> Vec<Finding> {
    if selected.is_empty() || baseline.is_empty() {
        return Vec::new();
    }
    let mut sel: HashMap<(String, String), usize> = HashMap::new();
    for t in selected {
        for kv in trace_values(t, service) {
            *sel.entry(kv).or_default() += 1;
        }
    }
    let mut base: HashMap<(String, String), usize> = HashMap::new();
    // Per key: distinct values and traces carrying it, in the baseline.
    let mut keys: HashMap<String, (HashSet<String>, usize)> = HashMap::new();
    for t in baseline {
        for (k, v) in trace_values(t, service) {
            let e = keys.entry(k.clone()).or_default();
            e.1 += 1;
            e.0.insert(v.clone());
            let kv = (k, v);
            if sel.contains_key(&kv) {
                *base.entry(kv).or_default() += 1;
            }
        }
    }
    let near_unique = |k: &str| {
        keys.get(k)
            .is_some_and(|(values, n)| values.len() >= 5 && values.len() * 4 >= *n)
    };
    let (ns, nb) = (selected.len() as f64, baseline.len() as f64);
    let mut out: Vec<(Finding, f64)> = sel
        .into_iter()
        .filter_map(|((key, value), n)| {
            let m = base
                .get(&(key.clone(), value.clone()))
                .copied()
                .unwrap_or(0);
            let (s, b) = (n as f64 / ns, m as f64 / nb);
            let pooled = (n + m) as f64 / (ns + nb);
            let se = (pooled * (1.0 - pooled) * (1.0 / ns + 1.0 / nb)).sqrt();
            let z = if se > 0.0 { (s - b) / se } else { 0.0 };
            let keep = n >= MIN_SUPPORT
                && s >= 0.2
                && z >= MIN_Z
                && (!near_unique(&key) || s - b >= NEAR_UNIQUE_DIFFERENCE);
            keep.then_some((
                Finding {
                    key,
                    value,
                    selected: s,
                    baseline: b,
                },
                z,
            ))
        })
        .collect();
    out.sort_by(|(a, za), (b, zb)| {
        (b.selected - b.baseline)
            .total_cmp(&(a.selected - a.baseline))
            .then(zb.total_cmp(za))
            .then(a.key.cmp(&b.key))
            .then(a.value.cmp(&b.value))
    });
    out.truncate(limit);
    out.into_iter().map(|(f, _)| f).collect()
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
                .push(("request.id".into(), AttrValue::Str(format!("r{t}").into())));
            traces.push(vec![root, db]);
            if is_slow {
                slow.push(t as usize);
            }
        }
        let selected: Vec<&Vec<Span>> = slow.iter().map(|&i| &traces[i]).collect();
        let all: Vec<&Vec<Span>> = traces.iter().collect();
        let findings = contrast(&selected, &all, "db", 5);
        let top = &findings[0];
        assert_eq!(
            (top.key.as_str(), top.value.as_str()),
            ("db.pool", "exhausted"),
            "{findings:?}"
        );
        assert!((top.selected - 0.9).abs() < 1e-9);
        // 18 slow + 9 others of 200.
        assert!((top.baseline - 27.0 / 200.0).abs() < 1e-9);
        // The api's own spans: the evenly spread region and the mildly more common decoy
        // are noise, the request ids identities, and the db's attribute not the api's.
        let api = contrast(&selected, &all, "api", 5);
        assert!(api.is_empty(), "{api:?}");
    }

    #[test]
    fn near_unique_values_need_a_large_difference() {
        // 300 traces; the first 30 are slow. user.name and tenant.name have nearly a value
        // per trace; the slow ones share user "whale" 40% of the time (and one other trace
        // does), tenant "acme" 70% of the time (and 20 others do), and build "b-rare" 40% of
        // the time (2 others do).
        let mut traces = Vec::new();
        for t in 0..300u32 {
            let mut root = span(t, 1, None, "api", "GET /");
            let slow = t < 30;
            let user = if (slow && t < 12) || t == 100 {
                "whale".to_string()
            } else {
                format!("user-{}", t % 100)
            };
            let tenant = if (slow && t < 21) || (200..220).contains(&t) {
                "acme".to_string()
            } else {
                format!("tenant-{}", t % 80)
            };
            let build = if (slow && t % 5 < 2) || t == 100 || t == 200 {
                "b-rare"
            } else {
                "b-main"
            };
            for (k, v) in [
                ("user.name", user),
                ("tenant.name", tenant),
                ("build", build.into()),
            ] {
                root.attributes.push((k.into(), AttrValue::Str(v.into())));
            }
            traces.push(vec![root]);
        }
        let selected: Vec<&Vec<Span>> = traces[..30].iter().collect();
        let all: Vec<&Vec<Span>> = traces.iter().collect();
        let found = contrast(&selected, &all, "api", 10);
        let got: Vec<(&str, &str)> = found
            .iter()
            .map(|f| (f.key.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![("tenant.name", "acme"), ("build", "b-rare")],
            "user.name=whale differs by 0.36 only, too little for a near-unique key: {found:?}"
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
        let refs: Vec<&Vec<Span>> = traces.iter().collect();
        let groups = error_groups(&refs, None);
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
        // The api's own errors: its root span, caused by payment's exceptions.
        let api = error_groups(&refs, Some("api"));
        assert_eq!(api.len(), 2, "{api:#?}");
        assert_eq!(api[0].count, 4);
        assert_eq!(api[0].signature.service, "api");
        assert_eq!(api[0].signature.operation, "POST /checkout");
        assert_eq!(
            api[0].signature.cause.as_deref(),
            Some("payment Charge: TimeoutError")
        );
        assert_eq!(
            api[1].signature.cause.as_deref(),
            Some("payment Charge: CardDeclined")
        );
        assert!(error_groups(&refs, Some("auth")).is_empty());
        // An error of its own with no failing callee names no cause.
        let own = vec![Span {
            status: StatusCode::Error,
            status_message: "bad input".into(),
            ..span(9, 1, None, "api", "POST /checkout")
        }];
        let g = error_groups(&[&own], Some("api"));
        assert_eq!(g[0].signature.cause, None);
        assert_eq!(g[0].signature.status_message.as_deref(), Some("bad input"));
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
        let found = outliers(&traces.iter().collect::<Vec<_>>());
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

        let durations: Vec<Option<u64>> = (0..100u64)
            .map(|i| (i != 5).then_some((i + 1) * 1_000_000))
            .collect();
        let known: Vec<u64> = durations.iter().flatten().copied().collect();
        let q = quantiles(&known);
        assert_eq!(q, [Some(51_000_000), Some(90_000_000), Some(99_000_000)]);
        let e = exemplars(&durations, [q[0], Some(6_100_000), None]);
        let picked: Vec<(&str, u64)> = e
            .iter()
            .map(|e| (e.label, e.duration_ns / 1_000_000))
            .collect();
        // Nearest 6.1 ms is 7 ms, since trace 5 (6 ms) has no duration; no p99 target.
        assert_eq!(picked, vec![("p50", 51), ("p90", 7), ("slowest", 100)]);
        assert_eq!(e[2].index, 99);
        assert!(exemplars(&[None, None], q).is_empty());
    }

    #[test]
    fn request_duration_is_the_services_longest_entry_span() {
        let mut root = span(1, 1, None, "web", "GET /");
        root.end_ns = root.start_ns + 900;
        let mut server = span(1, 2, Some(1), "auth", "Check");
        server.end_ns = server.start_ns + 300;
        let mut client = Span {
            kind: SpanKind::Client,
            ..span(1, 3, Some(2), "auth", "SELECT")
        };
        client.end_ns = client.start_ns + 500;
        let t = vec![root, server, client];
        assert_eq!(request_duration(&t, "auth"), Some(300));
        assert_eq!(request_duration(&t, "web"), Some(900));
        assert_eq!(request_duration(&t, "db"), None);
        let only_client = vec![t[2].clone()];
        assert_eq!(request_duration(&only_client, "auth"), Some(500));
    }

    #[test]
    fn masking_keeps_words_and_hides_numbers_and_ids() {
        assert_eq!(mask("user 12345 not found"), "user # not found");
        assert_eq!(mask("key=9f8e7d6c5b4a missing"), "key=# missing");
        assert_eq!(mask("HTTP 503 from 10.0.0.7"), "HTTP # from #");
        assert_eq!(mask("v2 api"), "v2 api");
    }
}
