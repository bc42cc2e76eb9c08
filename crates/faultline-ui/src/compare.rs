//! The structural difference of two traces, as Jaeger's compare view shows it: each span
//! is placed on its path of (service, operation) pairs from its root, and for every path
//! the two traces' span counts, total durations and errors are set side by side. Paths in
//! one trace only come first, then those whose counts differ, then by how much their
//! durations differ. Knows nothing about storage or HTML.

use std::collections::{BTreeMap, HashMap};

use faultline_model::span::Span;

/// One path's spans in one trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStat {
    /// Spans on the path.
    pub count: u32,
    /// Their durations summed, nanoseconds.
    pub total_ns: u64,
    /// Those with error status.
    pub errors: u32,
}

/// One path in both traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDiff {
    /// The (service, operation) pairs from the root, outermost first.
    pub path: Vec<(String, String)>,
    /// In the first trace.
    pub a: PathStat,
    /// In the second trace.
    pub b: PathStat,
}

impl PathDiff {
    /// How the second trace differs on this path: `only-a`, `only-b`, `more`, `fewer`,
    /// `slower`, `faster` (total duration off by 10% and 1 ms or more) or `same`.
    pub fn kind(&self) -> &'static str {
        let (a, b) = (&self.a, &self.b);
        if b.count == 0 {
            "only-a"
        } else if a.count == 0 {
            "only-b"
        } else if b.count > a.count {
            "more"
        } else if b.count < a.count {
            "fewer"
        } else {
            let diff = b.total_ns.abs_diff(a.total_ns);
            let off = diff >= 1_000_000 && diff as f64 >= 0.1 * a.total_ns.max(1) as f64;
            match (off, b.total_ns > a.total_ns) {
                (false, _) => "same",
                (true, true) => "slower",
                (true, false) => "faster",
            }
        }
    }
}

/// The paths of one trace and their figures.
fn paths(spans: &[Span]) -> BTreeMap<Vec<(String, String)>, PathStat> {
    let index: HashMap<[u8; 8], usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id, i))
        .collect();
    let mut memo: Vec<Option<Vec<(String, String)>>> = vec![None; spans.len()];
    let mut out: BTreeMap<Vec<(String, String)>, PathStat> = BTreeMap::new();
    for i in 0..spans.len() {
        // Walk up to a span whose path is known (or a root), then fill in downwards; a
        // cycle of parent ids (bad data) stops the walk.
        let mut chain = vec![i];
        while let Some(&top) = chain.last() {
            if memo[top].is_some() || chain.len() > spans.len() {
                break;
            }
            match spans[top].parent_span_id.and_then(|p| index.get(&p)) {
                Some(&p) if !chain.contains(&p) => chain.push(p),
                _ => break,
            }
        }
        let mut path: Vec<(String, String)> = chain
            .last()
            .and_then(|&top| memo[top].clone())
            .unwrap_or_default();
        let start = if chain.last().is_some_and(|&top| memo[top].is_some()) {
            chain.len() - 1
        } else {
            chain.len()
        };
        for &k in chain[..start].iter().rev() {
            path.push((spans[k].service().to_string(), spans[k].name.clone()));
            memo[k] = Some(path.clone());
        }
        if let Some(p) = memo[i].clone() {
            let stat = out.entry(p).or_default();
            stat.count += 1;
            stat.total_ns += spans[i].duration_ns();
            stat.errors += u32::from(spans[i].is_error());
        }
    }
    out
}

/// Every path of either trace with both traces' figures, most different first.
pub fn compare(a: &[Span], b: &[Span]) -> Vec<PathDiff> {
    let (pa, pb) = (paths(a), paths(b));
    let mut keys: Vec<&Vec<(String, String)>> = pa.keys().chain(pb.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out: Vec<PathDiff> = keys
        .into_iter()
        .map(|k| PathDiff {
            path: k.clone(),
            a: pa.get(k).copied().unwrap_or_default(),
            b: pb.get(k).copied().unwrap_or_default(),
        })
        .collect();
    let rank = |d: &PathDiff| match d.kind() {
        "only-a" | "only-b" => 0,
        "more" | "fewer" => 1,
        "slower" | "faster" => 2,
        _ => 3,
    };
    out.sort_by(|x, y| {
        rank(x)
            .cmp(&rank(y))
            .then(
                y.b.total_ns
                    .abs_diff(y.a.total_ns)
                    .cmp(&x.b.total_ns.abs_diff(x.a.total_ns)),
            )
            .then(x.path.cmp(&y.path))
    });
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{Origin, SpanKind, StatusCode};

    use super::*;

    fn span(id: u8, parent: Option<u8>, service: &str, name: &str, ms: u64) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            name: name.into(),
            kind: SpanKind::Internal,
            start_ns: 1_000,
            end_ns: 1_000 + ms * 1_000_000,
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

    #[test]
    fn paths_present_in_one_only_come_first_then_counts_then_durations() {
        let a = vec![
            span(1, None, "fe", "GET /", 100),
            span(2, Some(1), "api", "order", 60),
            span(3, Some(2), "db", "SELECT", 10),
            span(4, Some(1), "cache", "get", 2),
        ];
        let b = vec![
            span(1, None, "fe", "GET /", 400),
            span(2, Some(1), "api", "order", 350),
            span(3, Some(2), "db", "SELECT", 10),
            span(5, Some(2), "db", "SELECT", 300),
            span(6, Some(2), "db", "UPDATE", 5),
        ];
        let d = compare(&a, &b);
        let kinds: Vec<(&str, String)> = d
            .iter()
            .map(|p| {
                (
                    p.kind(),
                    p.path
                        .iter()
                        .map(|(s, o)| format!("{s} {o}"))
                        .collect::<Vec<_>>()
                        .join(" > "),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("only-b", "fe GET / > api order > db UPDATE".to_string()),
                ("only-a", "fe GET / > cache get".to_string()),
                ("more", "fe GET / > api order > db SELECT".to_string()),
                ("slower", "fe GET /".to_string()),
                ("slower", "fe GET / > api order".to_string()),
            ],
            "{d:?}"
        );
        let select = &d[2];
        assert_eq!((select.a.count, select.b.count), (1, 2));
        assert_eq!(select.b.total_ns, 310_000_000);
    }

    #[test]
    fn orphans_start_their_own_path_and_cycles_do_not_hang() {
        let a = vec![
            span(2, Some(9), "api", "order", 5),
            span(3, Some(4), "x", "a", 1),
            span(4, Some(3), "x", "b", 1),
        ];
        let d = compare(&a, &a);
        assert!(d.iter().all(|p| p.kind() == "same"), "{d:?}");
        assert!(
            d.iter()
                .any(|p| p.path == vec![("api".to_string(), "order".to_string())])
        );
        assert_eq!(d.iter().map(|p| p.a.count).sum::<u32>(), 3);
    }
}
