//! `faultline rules check`: one rule evaluated over stored spans, by the live engine's
//! logic (`state.rs`), so a rule can be tried before it is switched on.
//!
//! The spans come from store searches narrowed by each selector's service and operation
//! (when it names them by `=`), at most `max_traces` traces per side, newest first; a
//! search that hits the limit or its time limit makes the report `truncated`. Every key
//! is classified as live evaluation would classify it now: a pending key whose deadline
//! passed is missing (or orphan).

use std::collections::{BTreeMap, HashMap, HashSet};

use faultline_store::SpanStore;
use faultline_store::{SortOrder, TraceQuery};
use serde::Serialize;

use crate::ChecksError;
use crate::engine::KeyView;
use crate::rule::Rule;
use crate::state::{CLASSES, KeyRecord, SpanRef, classify, due};

/// Keys shown per class.
pub const EXAMPLES: usize = 20;
/// Traces read per store call.
const CHUNK: usize = 200;

/// What a rule finds over stored spans.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    pub rule: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub traces: usize,
    pub spans_first: u64,
    pub spans_then: u64,
    pub spans_unkeyed: u64,
    /// A search hit its limit or time limit: older spans were not read.
    pub truncated: bool,
    pub keys: BTreeMap<&'static str, u64>,
    pub violated: u64,
    /// Up to [`EXAMPLES`] keys per class (violations first).
    pub examples: BTreeMap<&'static str, Vec<KeyView>>,
}

/// Evaluates `rule` over the spans stored in `[start_ns, end_ns]`, classifying at
/// `now_ns`. Blocking (store reads).
pub fn check(
    rule: &Rule,
    store: &dyn SpanStore,
    start_ns: u64,
    end_ns: u64,
    now_ns: u64,
    max_traces: usize,
) -> Result<HistoryReport, ChecksError> {
    let store_err = |e: faultline_store::StoreError| ChecksError::Store(e.to_string());
    let mut ids = Vec::new();
    let mut seen_ids = HashSet::new();
    let mut truncated = false;
    for sel in [&rule.first, &rule.then] {
        let (service, operation) = sel.hints();
        let q = TraceQuery {
            service: service.map(str::to_string),
            operation: operation.map(str::to_string),
            start_ns,
            end_ns,
            sort: SortOrder::Newest,
            limit: max_traces,
            time_limit: Some(std::time::Duration::from_secs(60)),
            ..TraceQuery::default()
        };
        let (found, completeness) = store.search(&q).map_err(store_err)?;
        truncated |= found.len() >= max_traces || !completeness.is_complete();
        for t in found {
            if seen_ids.insert(t.trace_id) {
                ids.push(t.trace_id);
            }
        }
    }
    let mut report = HistoryReport {
        rule: rule.name().to_string(),
        start_ns,
        end_ns,
        traces: ids.len(),
        spans_first: 0,
        spans_then: 0,
        spans_unkeyed: 0,
        truncated,
        keys: BTreeMap::new(),
        violated: 0,
        examples: BTreeMap::new(),
    };
    let mut records: HashMap<String, KeyRecord> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        for answer in store.traces(chunk).map_err(store_err)? {
            for s in answer
                .spans
                .iter()
                .filter(|s| s.start_ns >= start_ns && s.start_ns <= end_ns)
            {
                let m = rule.sides(s);
                for (is_first, side) in [(true, m.first), (false, m.then)] {
                    match side {
                        None => {}
                        Some(None) => report.spans_unkeyed += 1,
                        Some(Some(key)) => {
                            if is_first {
                                report.spans_first += 1;
                            } else {
                                report.spans_then += 1;
                            }
                            records.entry(key).or_default().add(
                                is_first,
                                SpanRef {
                                    trace: s.trace_id,
                                    span: s.span_id,
                                    start_ns: s.start_ns,
                                },
                            );
                        }
                    }
                }
            }
        }
    }
    let mut sorted: Vec<(String, KeyRecord)> = records.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, mut rec) in sorted {
        if due(&rec, rule) <= now_ns {
            rec.expired = true;
        }
        let class = classify(&rec, rule);
        *report.keys.entry(class.name()).or_default() += 1;
        report.violated += u64::from(class.is_violation());
        let ex = report.examples.entry(class.name()).or_default();
        if ex.len() < EXAMPLES {
            ex.push(KeyView::new(rule, key, class, &rec));
        }
    }
    for c in CLASSES {
        report.keys.entry(c.name()).or_default();
    }
    Ok(report)
}
