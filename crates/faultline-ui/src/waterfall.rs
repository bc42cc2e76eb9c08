//! The shape of a trace for the waterfall, computed apart from the page that draws it:
//! which span is whose child, the roots (spans without a parent in the trace: the real
//! root and orphans), the critical path, and the depth-first order in which rows are
//! drawn (children by start time).

use std::collections::{HashMap, HashSet};

use faultline_model::span::{Span, SpanId};

/// One row of the waterfall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Index of the span in the trace's spans.
    pub index: usize,
    /// Nesting depth (0 for roots and orphans).
    pub depth: usize,
    /// The parent it is drawn under, if any.
    pub parent: Option<SpanId>,
    /// Whether it has children in the trace.
    pub has_children: bool,
    /// Whether its parent is named but not in the trace.
    pub orphan: bool,
    /// Whether it is on the critical path.
    pub critical: bool,
}

/// A trace laid out for drawing.
#[derive(Debug, Clone)]
pub struct Waterfall {
    /// Rows in drawing order.
    pub rows: Vec<Row>,
    /// Earliest start (Unix ns).
    pub t0: u64,
    /// Latest end, at least `t0 + 1`.
    pub t1: u64,
}

/// Lays out `spans` (of one trace).
pub fn layout(spans: &[Span]) -> Waterfall {
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id {
            Some(p) if ids.contains(&p) => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.end_ns.max(s.start_ns))
        .max()
        .unwrap_or(t0)
        .max(t0 + 1);
    let critical = critical_path(spans, &children, &roots);
    let mut rows = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, usize, Option<SpanId>)> =
        roots.iter().rev().map(|&i| (i, 0, None)).collect();
    let mut seen = HashSet::new();
    while let Some((i, depth, parent)) = stack.pop() {
        let s = &spans[i];
        if !seen.insert(s.span_id) {
            continue;
        }
        let mut kids = children.get(&s.span_id).cloned().unwrap_or_default();
        let has_children = !kids.is_empty();
        kids.sort_by_key(|&k| std::cmp::Reverse(spans[k].start_ns));
        for k in kids {
            stack.push((k, depth + 1, Some(s.span_id)));
        }
        rows.push(Row {
            index: i,
            depth,
            parent,
            has_children,
            orphan: s.parent_span_id.is_some() && parent.is_none(),
            critical: critical.contains(&s.span_id),
        });
    }
    Waterfall { rows, t0, t1 }
}

/// Spans of the critical path: from each root, repeatedly the child that ends last.
fn critical_path(
    spans: &[Span],
    children: &HashMap<SpanId, Vec<usize>>,
    roots: &[usize],
) -> HashSet<SpanId> {
    let mut out = HashSet::new();
    let Some(&root) = roots.iter().max_by_key(|&&i| spans[i].end_ns) else {
        return out;
    };
    let mut cur = root;
    loop {
        out.insert(spans[cur].span_id);
        match children
            .get(&spans[cur].span_id)
            .and_then(|c| c.iter().copied().max_by_key(|&i| spans[i].end_ns))
        {
            Some(next) if !out.contains(&spans[next].span_id) => cur = next,
            _ => break,
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{Origin, SpanKind, StatusCode};

    use super::*;

    fn span(id: u8, parent: Option<u8>, start: u64, end: u64) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            name: format!("op{id}"),
            kind: SpanKind::Internal,
            start_ns: start,
            end_ns: end,
            status: StatusCode::Unset,
            status_message: String::new(),
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            origin: Arc::new(Origin {
                service: "s".into(),
                resource: Vec::new(),
                scope_name: String::new(),
                scope_version: String::new(),
            }),
        }
    }

    #[test]
    fn depth_first_by_start_with_orphans_and_the_critical_path() {
        // 1 ─┬─ 2 (ends at 50)
        //    └─ 3 (ends at 90) ── 4
        // 5's parent 9 is not in the trace.
        let spans = vec![
            span(3, Some(1), 20, 90),
            span(1, None, 0, 100),
            span(4, Some(3), 30, 80),
            span(2, Some(1), 10, 50),
            span(5, Some(9), 40, 60),
        ];
        let w = layout(&spans);
        let order: Vec<u8> = w.rows.iter().map(|r| spans[r.index].span_id[0]).collect();
        assert_eq!(order, vec![1, 2, 3, 4, 5]);
        let depth: Vec<usize> = w.rows.iter().map(|r| r.depth).collect();
        assert_eq!(depth, vec![0, 1, 1, 2, 0]);
        let critical: Vec<u8> = w
            .rows
            .iter()
            .filter(|r| r.critical)
            .map(|r| spans[r.index].span_id[0])
            .collect();
        assert_eq!(critical, vec![1, 3, 4]);
        assert!(w.rows[4].orphan && !w.rows[0].orphan);
        assert!(w.rows[0].has_children && !w.rows[1].has_children);
        assert_eq!((w.t0, w.t1), (0, 100));
    }
}
