//! [`SpanStore`] over ClickHouse: what the query API and the UI ask, answered from the
//! `spans` and `rollups` tables.
//!
//! - Traces by id: `trace_index` says where their spans are, then one read of `spans`
//!   for all of them ([`ClickHouse::traces`]).
//! - Services and operations: `spans`, grouped.
//! - RED series and totals, latency distributions, dependencies: the `rollups` parts of
//!   the minutes asked (the newest version of each), merged and answered by the embedded
//!   store's own rollup code, so both backends count, weigh and estimate quantiles alike.
//! - Search: candidate traces are chosen in SQL from the spans of the asked service that
//!   overlap the time range: the service, operation and duration filters exactly, each
//!   tag by a test that may pass too much but never too little (a string attribute's
//!   value exactly; any other place a tag can live, by its key as protobuf encodes it
//!   in the `otlp` column, or its value for the status message and the scope). Candidates come in pages, ordered by the sort over their matching spans;
//!   their whole traces are then read and checked exactly as the embedded store checks
//!   them, and the answer is ordered by the whole traces; the traces found stay at hand
//!   for two seconds, for the read of their spans that follows. Traces touching a
//!   service whose clock is estimated off are corrected before the check, with the
//!   estimates of this node's own store ([`WithLocal`]). At most
//!   [`MAX_VERIFY_TRACES`] candidates are read; an answer that stopped there is marked
//!   partial.

use std::collections::BTreeSet;

use faultline_model::span::{Span, SpanKind, TraceId};
use faultline_store::rollup::{Dependency, RedPoint, Rollups};
use faultline_store::search::{MAX_TAGS, MAX_VERIFY_TRACES};
use faultline_store::skew::{self, Estimates};
use faultline_store::store::{Completeness, SpanStore, TraceAnswer};
use faultline_store::{SortOrder, StoreError, TraceQuery, TraceSummary};

use crate::ChError;
use crate::rows::RowReader;
use crate::store::{ClickHouse, quote};

/// Candidates read per page of a search, at least and at most.
const PAGE: (usize, usize) = (16, 1_000);

fn store_err(e: ChError) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Unix minutes of `[start_s, end_s)`, inclusive.
fn minutes(start_s: u64, end_s: u64) -> (u64, u64) {
    (start_s / 60, end_s.saturating_sub(1) / 60)
}

impl ClickHouse {
    /// The rollup parts of `service` (or the dependency edges, `None`) in the minutes
    /// `first..=last`, the newest version of each, merged in key order.
    pub fn rollups(
        &self,
        service: Option<&str>,
        first: u64,
        last: u64,
    ) -> Result<Rollups, ChError> {
        let which = match service {
            Some(s) => format!("edges = 0 AND service = {}", quote(s)),
            None => "edges = 1".to_string(),
        };
        let body = self.client().query(&format!(
            "SELECT argMax(cells, version) FROM rollups \
             WHERE {which} AND minute >= {first} AND minute <= {last} \
             GROUP BY minute, node, chunk ORDER BY minute, node, chunk FORMAT RowBinary"
        ))?;
        let mut r = RowReader::new(&body);
        let mut all = Rollups::default();
        while !r.is_empty() {
            let cells = r
                .string()
                .ok_or_else(|| self.bad("the rollups", "a truncated row"))?;
            let part = Rollups::decode(cells)
                .map_err(|reason| self.bad("the rollups", &format!("a part that {reason}")))?;
            all.merge(&part);
        }
        Ok(all)
    }

    /// The operations of `service` with their span kinds, sorted.
    pub fn operations(&self, service: &str) -> Result<Vec<(String, SpanKind)>, ChError> {
        let body = self.client().query(&format!(
            "SELECT name, kind FROM spans WHERE service = {} GROUP BY name, kind \
             FORMAT RowBinary",
            quote(service)
        ))?;
        let mut r = RowReader::new(&body);
        let mut out = BTreeSet::new();
        while !r.is_empty() {
            let bad = || self.bad("the operations", "a truncated row");
            let name = String::from_utf8_lossy(r.string().ok_or_else(bad)?).into_owned();
            let kind = r.u8().ok_or_else(bad)?;
            out.insert((name, kind));
        }
        Ok(out
            .into_iter()
            .map(|(n, k)| (n, SpanKind::from_i32(i32::from(k))))
            .collect())
    }

    /// One page of search candidates: trace ids, best first by the sort over the spans
    /// that matched (see the module doc).
    fn candidates(
        &self,
        q: &TraceQuery,
        page: usize,
        offset: usize,
    ) -> Result<Vec<TraceId>, ChError> {
        let mut filter = vec![format!(
            "start_ns <= {} AND start_ns + duration_ns >= {}",
            q.end_ns, q.start_ns
        )];
        if let Some(s) = &q.service {
            filter.push(format!("service = {}", quote(s)));
        }
        let mut having = Vec::new();
        let mut span = Vec::new();
        if let Some(op) = &q.operation {
            span.push(format!("name = {}", quote(op)));
        }
        // Whole microseconds, as the embedded store compares them.
        if let Some(m) = q.min_duration_ns {
            span.push(format!("intDiv(duration_ns, 1000) >= {}", m.div_ceil(1000)));
        }
        if let Some(m) = q.max_duration_ns {
            span.push(format!("intDiv(duration_ns, 1000) <= {}", m / 1000));
        }
        if !span.is_empty() {
            having.push(format!("max({}) = 1", span.join(" AND ")));
        }
        for (k, v) in q.tags.iter().take(MAX_TAGS) {
            having.push(format!("max({}) = 1", tag_test(k, v)));
        }
        // With a service, the rows are its spans only, and an error elsewhere counts.
        if q.errors_only && q.service.is_none() {
            having.push("max(status = 2) = 1".to_string());
        }
        let order = match q.sort {
            SortOrder::Newest => "min(start_ns) DESC",
            SortOrder::Oldest => "min(start_ns) ASC",
            SortOrder::Longest => "max(start_ns + duration_ns) - min(start_ns) DESC",
            SortOrder::Shortest => "max(start_ns + duration_ns) - min(start_ns) ASC",
            SortOrder::Sample => "sipHash64(trace_id)",
        };
        let having = if having.is_empty() {
            String::new()
        } else {
            format!(" HAVING {}", having.join(" AND "))
        };
        let body = self.client().query(&format!(
            "SELECT trace_id FROM spans WHERE {} GROUP BY trace_id{having} \
             ORDER BY {order}, trace_id LIMIT {offset}, {page} FORMAT RowBinary",
            filter.join(" AND ")
        ))?;
        let mut r = RowReader::new(&body);
        let mut out = Vec::new();
        while !r.is_empty() {
            let id = r
                .fixed(16)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .ok_or_else(|| self.bad("the search candidates", "a truncated row"))?;
            out.push(id);
        }
        Ok(out)
    }

    /// Summaries of the traces matching `q` (see the module doc), and whether the
    /// candidates ran out before the verification budget did.
    pub fn search(&self, q: &TraceQuery) -> Result<(Vec<TraceSummary>, Completeness), ChError> {
        self.search_corrected(q, &Estimates::default())
    }

    /// [`Self::search`] with clock skew corrected: a trace with a span of a service in
    /// `estimates` is moved as the trace view moves it ([`skew::correct`]) before it is
    /// checked and summarized, so durations, sorting and the duration filters see the
    /// corrected trace, as the embedded store's summaries do. The spans kept at hand for
    /// the read that follows stay as stored (the trace view corrects them itself).
    pub fn search_corrected(
        &self,
        q: &TraceQuery,
        estimates: &Estimates,
    ) -> Result<(Vec<TraceSummary>, Completeness), ChError> {
        let skewed = skew::skewed_services(estimates);
        let mut found = Vec::new();
        let mut completeness = Completeness::default();
        if q.limit == 0 {
            return Ok((Vec::new(), completeness));
        }
        // Candidates pass every filter but a tag found only in `otlp`: few fail the check.
        let page = (q.limit + q.limit / 2).clamp(PAGE.0, PAGE.1);
        let mut offset = 0;
        let started = std::time::Instant::now();
        while found.len() < q.limit {
            if let Some(limit) = q.time_limit
                && started.elapsed() >= limit
            {
                completeness.reasons.push(format!(
                    "the search stopped at its time limit of {} ms after checking {offset} candidate traces; narrow the time range or add filters",
                    limit.as_millis()
                ));
                break;
            }
            if offset >= MAX_VERIFY_TRACES {
                completeness.reasons.push(format!(
                    "search stopped after checking {MAX_VERIFY_TRACES} candidate traces; narrow the query"
                ));
                break;
            }
            let ids = self.candidates(q, page, offset)?;
            offset += ids.len();
            // Traces tail sampling dropped are not answered (as on the embedded store).
            let dropped = self.dropped_among(&ids)?;
            for spans in self.read_traces(&ids)? {
                if spans
                    .first()
                    .is_some_and(|s| dropped.contains_key(&s.trace_id))
                {
                    continue;
                }
                let moved;
                let seen = if skew::may_move(spans.iter(), &skewed) {
                    let mut m = spans.clone();
                    skew::correct(&mut m, estimates);
                    moved = m;
                    &moved
                } else {
                    &spans
                };
                let Some(summary) = TraceSummary::of(seen) else {
                    continue;
                };
                let refs: Vec<&Span> = seen.iter().collect();
                if q.trace_matches(&refs, &summary) {
                    found.push((summary, spans));
                }
            }
            if ids.len() < page {
                break;
            }
        }
        found.sort_by_key(|(s, _)| std::cmp::Reverse(q.sort.key(s.start_ns, s.end_ns)));
        found.truncate(q.limit);
        let (summaries, spans): (Vec<_>, Vec<_>) = found.into_iter().unzip();
        self.remember(spans);
        Ok((summaries, completeness))
    }
}

/// A SQL test of one span for tag `key` = `value` that passes every span carrying it
/// (and may pass some that do not; the exact check comes after).
fn tag_test(key: &str, value: &str) -> String {
    let (k, v) = (quote(key), quote(value));
    // Attribute types (rows.rs): 0 string, 1 int, 3 bool compare as text; 2 double and
    // 255 (kept in `otlp`) are let through.
    let mut any = vec![
        format!(
            "arrayExists((k, v, t) -> k = {k} AND (v = {v} OR t = 2 OR t = 255), \
             attr_keys, attr_values, attr_types)"
        ),
        // Events, resource and scope attributes live in `otlp`, each key as a KeyValue's
        // field 1: tag, length, bytes (so `region` does not match `cloud.region`).
        format!("position(otlp, {}) > 0", proto_literal(Some(0x0A), key)),
    ];
    match (key, value) {
        // Tags made of what is not an attribute: the status message and the scope are
        // in `otlp` without their tag's key, so look for the value's bytes.
        ("otel.status_description" | "otel.scope.name" | "otel.scope.version", _) => {
            any.push(format!(
                "position(otlp, {}) > 0",
                proto_literal(None, value)
            ));
        }
        ("error", "true") | ("otel.status_code", "ERROR") => any.push("status = 2".into()),
        ("otel.status_code", "OK") => any.push("status = 1".into()),
        ("span.kind", kind) => {
            if let Some(code) = [
                SpanKind::Internal,
                SpanKind::Server,
                SpanKind::Client,
                SpanKind::Producer,
                SpanKind::Consumer,
            ]
            .into_iter()
            .find(|k| k.as_str() == kind)
            {
                any.push(format!("kind = {}", code as u8));
            }
        }
        _ => {}
    }
    format!("({})", any.join(" OR "))
}

/// A ClickHouse string literal of `s` as protobuf encodes a string field: the field's
/// tag byte (when given), the length as a varint, the bytes; unprintable bytes as `\xHH`.
fn proto_literal(tag: Option<u8>, s: &str) -> String {
    let mut bytes: Vec<u8> = tag.into_iter().collect();
    faultline_store::varint::put(s.len() as u64, &mut bytes);
    bytes.extend_from_slice(s.as_bytes());
    let mut out = String::from("'");
    for b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02X}")),
        }
    }
    out.push('\'');
    out
}

impl ClickHouse {
    /// The spans of each trace of `ids` ([`ClickHouse::traces`]), none for a trace tail
    /// sampling dropped (its spans stay stored until retention; the answer is the
    /// embedded store's).
    pub fn kept_traces(&self, ids: &[TraceId]) -> Result<Vec<Vec<Span>>, ChError> {
        let mut traces = self.traces(ids)?;
        let found: Vec<TraceId> = ids
            .iter()
            .zip(&traces)
            .filter(|(_, t)| !t.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if found.is_empty() {
            return Ok(traces);
        }
        let dropped = self.dropped_among(&found)?;
        for (id, t) in ids.iter().zip(&mut traces) {
            if dropped.contains_key(id) {
                t.clear();
            }
        }
        Ok(traces)
    }
}

impl SpanStore for ClickHouse {
    fn trace(&self, trace_id: &TraceId) -> Result<TraceAnswer, StoreError> {
        let mut all = SpanStore::traces(self, std::slice::from_ref(trace_id))?;
        all.pop()
            .ok_or_else(|| StoreError::Backend("no answer for the trace asked".into()))
    }

    fn traces(&self, ids: &[TraceId]) -> Result<Vec<TraceAnswer>, StoreError> {
        Ok(self
            .kept_traces(ids)
            .map_err(store_err)?
            .into_iter()
            .map(|spans| TraceAnswer {
                spans,
                completeness: Completeness::default(),
            })
            .collect())
    }

    fn dropped_by_policy(&self, id: &TraceId) -> Option<u64> {
        match self.dropped_among(std::slice::from_ref(id)) {
            Ok(d) => d.get(id).copied(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the tail-sampling decisions");
                None
            }
        }
    }

    fn services(&self) -> Result<(Vec<String>, Completeness), StoreError> {
        Ok((
            ClickHouse::services(self).map_err(store_err)?,
            Completeness::default(),
        ))
    }

    fn operations(
        &self,
        service: &str,
    ) -> Result<(Vec<(String, SpanKind)>, Completeness), StoreError> {
        Ok((
            ClickHouse::operations(self, service).map_err(store_err)?,
            Completeness::default(),
        ))
    }

    fn dependencies(
        &self,
        start_s: u64,
        end_s: u64,
    ) -> Result<(Vec<Dependency>, Completeness), StoreError> {
        let (first, last) = minutes(start_s, end_s);
        let r = self.rollups(None, first, last).map_err(store_err)?;
        Ok((r.dependencies(start_s, end_s), Completeness::default()))
    }

    fn red(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
        step_s: u64,
    ) -> Result<(Vec<RedPoint>, Completeness), StoreError> {
        let (first, last) = minutes(start_s, end_s);
        let r = self
            .rollups(Some(service), first, last)
            .map_err(store_err)?;
        Ok((
            r.series(service, operation, kind, start_s, end_s, step_s),
            Completeness::default(),
        ))
    }

    fn search(&self, q: &TraceQuery) -> Result<(Vec<TraceSummary>, Completeness), StoreError> {
        ClickHouse::search(self, q).map_err(store_err)
    }

    fn red_total(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
    ) -> Result<(RedPoint, Completeness), StoreError> {
        let (first, last) = minutes(start_s, end_s);
        let r = self
            .rollups(Some(service), first, last)
            .map_err(store_err)?;
        Ok((
            r.total(service, operation, kind, start_s, end_s),
            Completeness::default(),
        ))
    }

    fn latency_distribution(
        &self,
        service: &str,
        operation: Option<&str>,
        start_s: u64,
        end_s: u64,
        bounds_ms: &[f64],
    ) -> Result<(Vec<u64>, Completeness), StoreError> {
        let (first, last) = minutes(start_s, end_s);
        let r = self
            .rollups(Some(service), first, last)
            .map_err(store_err)?;
        Ok((
            r.distribution(service, operation, start_s, end_s, bounds_ms),
            Completeness::default(),
        ))
    }
}

/// What a node with `storage = "clickhouse"` answers from: ClickHouse for what every
/// node shares (spans, services, operations, RED, dependencies, search), and the node's
/// own embedded store for what it computes from its spans as they arrive (clock offsets,
/// tracing health, tail sampling).
///
/// While ClickHouse cannot be read (the server or a shard away, a table missing), each
/// shared read is answered from the node's own store instead, marked partial: it holds
/// only the spans this node received, not the other nodes'.
pub struct WithLocal {
    /// The shared store.
    pub ch: ClickHouse,
    /// This node's store.
    pub local: std::sync::Arc<dyn SpanStore>,
}

impl WithLocal {
    /// What a node reads (its API, its alerts): ClickHouse over `local` when `ch` is
    /// given (`storage = "clickhouse"`), else `local` alone.
    pub fn reads(
        ch: Option<&ClickHouse>,
        local: std::sync::Arc<dyn SpanStore>,
    ) -> std::sync::Arc<dyn SpanStore> {
        match ch {
            Some(ch) => std::sync::Arc::new(WithLocal {
                ch: ch.clone(),
                local,
            }),
            None => local,
        }
    }

    /// `shared`'s answer, or when ClickHouse failed, `local`'s marked partial.
    fn or_local<T>(
        &self,
        shared: Result<(T, Completeness), StoreError>,
        local: impl FnOnce(&dyn SpanStore) -> Result<(T, Completeness), StoreError>,
    ) -> Result<(T, Completeness), StoreError> {
        match shared {
            Err(StoreError::Backend(why)) => {
                warn_fallback(&why);
                let (answer, mut c) = local(self.local.as_ref())?;
                c.reasons.push(self.away_reason(&why));
                Ok((answer, c))
            }
            other => other,
        }
    }

    fn away_reason(&self, why: &str) -> String {
        let why: String = why.chars().take(300).collect();
        format!(
            "{FALLBACK} ({why}); answered from the spans this node received itself, without other nodes' spans"
        )
    }

    fn traces_or_local(&self, ids: &[TraceId]) -> Result<Vec<TraceAnswer>, StoreError> {
        match SpanStore::traces(&self.ch, ids) {
            // Decisions this node made and its writer has not sent yet count too.
            Ok(mut answers) => {
                for (id, a) in ids.iter().zip(&mut answers) {
                    if !a.spans.is_empty() && self.local.dropped_by_policy(id).is_some() {
                        a.spans.clear();
                    }
                }
                Ok(answers)
            }
            Err(StoreError::Backend(why)) => {
                warn_fallback(&why);
                let reason = self.away_reason(&why);
                let mut answers = self.local.traces(ids)?;
                for a in &mut answers {
                    a.completeness.reasons.push(reason.clone());
                }
                Ok(answers)
            }
            other => other,
        }
    }
}

/// Logs that reads fall back to the node's own store, at most once every 10 s.
fn warn_fallback(why: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(error = %why, "{FALLBACK}: answers are partial, from this node's own spans");
    }
}

/// What the log says when reads fall back to the node's own store.
pub const FALLBACK: &str = "ClickHouse cannot be read";

impl SpanStore for WithLocal {
    fn trace(&self, trace_id: &TraceId) -> Result<TraceAnswer, StoreError> {
        self.traces_or_local(std::slice::from_ref(trace_id))?
            .pop()
            .ok_or_else(|| StoreError::Backend("no answer for the trace asked".into()))
    }

    fn traces(&self, ids: &[TraceId]) -> Result<Vec<TraceAnswer>, StoreError> {
        self.traces_or_local(ids)
    }

    fn services(&self) -> Result<(Vec<String>, Completeness), StoreError> {
        self.or_local(SpanStore::services(&self.ch), |l| l.services())
    }

    fn operations(
        &self,
        service: &str,
    ) -> Result<(Vec<(String, SpanKind)>, Completeness), StoreError> {
        self.or_local(SpanStore::operations(&self.ch, service), |l| {
            l.operations(service)
        })
    }

    fn dependencies(
        &self,
        start_s: u64,
        end_s: u64,
    ) -> Result<(Vec<Dependency>, Completeness), StoreError> {
        self.or_local(SpanStore::dependencies(&self.ch, start_s, end_s), |l| {
            l.dependencies(start_s, end_s)
        })
    }

    fn red(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
        step_s: u64,
    ) -> Result<(Vec<RedPoint>, Completeness), StoreError> {
        let shared = SpanStore::red(&self.ch, service, operation, kind, start_s, end_s, step_s);
        self.or_local(shared, |l| {
            l.red(service, operation, kind, start_s, end_s, step_s)
        })
    }

    fn search(&self, q: &TraceQuery) -> Result<(Vec<TraceSummary>, Completeness), StoreError> {
        let estimates = self.local.clock_offsets();
        let shared = self.ch.search_corrected(q, &estimates).map_err(store_err);
        self.or_local(shared, |l| l.search(q))
    }

    fn red_total(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<SpanKind>,
        start_s: u64,
        end_s: u64,
    ) -> Result<(RedPoint, Completeness), StoreError> {
        let shared = SpanStore::red_total(&self.ch, service, operation, kind, start_s, end_s);
        self.or_local(shared, |l| {
            l.red_total(service, operation, kind, start_s, end_s)
        })
    }

    fn latency_distribution(
        &self,
        service: &str,
        operation: Option<&str>,
        start_s: u64,
        end_s: u64,
        bounds_ms: &[f64],
    ) -> Result<(Vec<u64>, Completeness), StoreError> {
        let shared = SpanStore::latency_distribution(
            &self.ch, service, operation, start_s, end_s, bounds_ms,
        );
        self.or_local(shared, |l| {
            l.latency_distribution(service, operation, start_s, end_s, bounds_ms)
        })
    }

    fn clock_offsets(&self) -> std::sync::Arc<faultline_store::skew::Estimates> {
        self.local.clock_offsets()
    }

    fn tracing_health(&self) -> Result<faultline_store::quality::TracingHealth, StoreError> {
        self.local.tracing_health()
    }

    fn tail_sampling(&self) -> Result<faultline_store::tail::TailReport, StoreError> {
        self.local.tail_sampling()
    }

    fn dropped_by_policy(&self, id: &TraceId) -> Option<u64> {
        self.local
            .dropped_by_policy(id)
            .or_else(|| self.ch.dropped_by_policy(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_tests_quote_and_add_the_columns_a_tag_can_live_in() {
        let t = tag_test("region", "eu-'west");
        assert!(t.contains(r"v = 'eu-\'west'"), "{t}");
        assert!(t.contains(r"position(otlp, '\x0A\x06region') > 0"), "{t}");
        assert!(!t.contains("status"), "{t}");
        assert!(tag_test("error", "true").contains("status = 2"));
        let t = tag_test("otel.status_description", "boom");
        assert!(t.contains(r"position(otlp, '\x04boom') > 0"), "{t}");
        assert!(tag_test("span.kind", "server").contains("kind = 2"));
        assert!(!tag_test("span.kind", "nonsense").contains("kind ="));
    }

    #[test]
    fn protobuf_literals_escape_and_prefix_the_length() {
        assert_eq!(proto_literal(Some(0x0A), "a'b"), r"'\x0A\x03a\'b'");
        let long = "k".repeat(200);
        assert!(proto_literal(None, &long).starts_with(r"'\xC8\x01kk"));
        assert_eq!(proto_literal(None, "é"), r"'\x02\xC3\xA9'");
    }

    #[test]
    fn minutes_cover_the_half_open_range() {
        assert_eq!(minutes(120, 180), (2, 2));
        assert_eq!(minutes(120, 181), (2, 3));
        assert_eq!(minutes(0, 0), (0, 0));
    }
}
