//! [`ClickHouse`]: spans of WAL records inserted idempotently, traces read back by id.

use faultline_model::span::{Span, TraceId};

use crate::ChError;
use crate::client::{Client, Config};
use crate::rows::{
    ROLLUP_COLUMNS, RowReader, SPAN_COLUMNS, SPAN_READ_COLUMNS, decode_span, encode_rollup,
    encode_spans,
};

/// One rollup part of a chunk of WAL records (see `schema.rs`, version 2): what the
/// chunk's records up to `version` put in one minute of one service, or the minute's
/// dependency edges (`service` `None`).
#[derive(Debug, Clone)]
pub struct RollupPart {
    /// Unix minute.
    pub minute: u64,
    /// The service, or `None` for the minute's dependency edges.
    pub service: Option<String>,
    /// The chunk: its first WAL sequence number.
    pub chunk: u64,
    /// The last WAL record counted.
    pub version: u64,
    /// The cells, as `faultline_store::rollup::Rollups::encode` writes them.
    pub cells: Vec<u8>,
}

/// Traces read together at most: their ids and the time ranges of their services make
/// the statement, which ClickHouse limits to 256 KiB (`max_query_size`).
pub const TRACES_PER_READ: usize = 200;

/// Key ranges in one read at most: 18.16's analysis of an `OR` of key ranges grows
/// about with the square of their number (200 traces' 1,000 ranges: 3.8 s; the same
/// read without them: 18 ms), so close ranges of a service are merged down to this.
const MAX_KEY_RANGES: usize = 24;

/// Merges the (service, first start, last start) ranges: overlapping ones of a service,
/// then the two of a service with the smallest gap until at most `max` remain (or one
/// per service). Every span of the given ranges stays inside the result.
fn key_ranges(mut ranges: Vec<(String, u64, u64)>, max: usize) -> Vec<(String, u64, u64)> {
    ranges.sort();
    let mut merged: Vec<(String, u64, u64)> = Vec::with_capacity(ranges.len());
    for (service, lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if last.0 == service && lo <= last.2 => last.2 = last.2.max(hi),
            _ => merged.push((service, lo, hi)),
        }
    }
    while merged.len() > max {
        let closest = merged
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0].0 == w[1].0)
            .min_by_key(|(_, w)| w[1].1.saturating_sub(w[0].2))
            .map(|(i, _)| i);
        let Some(i) = closest else { break };
        let next = merged.remove(i + 1);
        merged[i].2 = merged[i].2.max(next.2);
    }
    merged
}

/// How long a trace a search read stays at hand for the read of its spans that follows.
const RECENT_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Traces kept at hand at most.
const RECENT_MAX: usize = 256;

/// Traces a search just read and checked, kept for the read of their spans that follows
/// it (a Jaeger search answer carries each trace's spans): without them every search
/// reads its traces twice.
#[derive(Debug, Default)]
struct Recent {
    traces: std::collections::VecDeque<(TraceId, std::time::Instant, Vec<Span>)>,
}

impl Recent {
    fn get(&self, id: &TraceId) -> Option<Vec<Span>> {
        self.traces
            .iter()
            .rev()
            .find(|(t, at, _)| t == id && at.elapsed() < RECENT_FOR)
            .map(|(_, _, spans)| spans.clone())
    }

    fn put(&mut self, id: TraceId, spans: Vec<Span>) {
        self.traces
            .push_back((id, std::time::Instant::now(), spans));
        while self.traces.len() > RECENT_MAX
            || self
                .traces
                .front()
                .is_some_and(|(_, at, _)| at.elapsed() >= RECENT_FOR)
        {
            self.traces.pop_front();
        }
    }
}

/// The ClickHouse backend of one faultline node.
#[derive(Debug, Clone)]
pub struct ClickHouse {
    client: Client,
    node: String,
    recent: std::sync::Arc<std::sync::Mutex<Recent>>,
}

impl ClickHouse {
    /// Connects to the server of `cfg` as node `node` (the name its spans are keyed by:
    /// stable across restarts, different on every node of a cluster) and brings the
    /// schema up to date.
    pub fn open(cfg: Config, node: &str) -> Result<Self, ChError> {
        let me = Self::connect(cfg, node)?;
        me.migrate()?;
        Ok(me)
    }

    /// [`Self::open`] without the migrations, which [`Self::migrate`] applies later
    /// (no request is made: a node starts while ClickHouse is away).
    pub fn connect(cfg: Config, node: &str) -> Result<Self, ChError> {
        if node.is_empty() {
            return Err(ChError::Config(
                "the node name is empty; give every node a stable name of its own".into(),
            ));
        }
        Ok(Self {
            client: Client::new(cfg)?,
            node: node.to_string(),
            recent: std::sync::Arc::default(),
        })
    }

    /// Brings the schema up to date (`schema::migrate`).
    pub fn migrate(&self) -> Result<u32, ChError> {
        crate::schema::migrate(&self.client)
    }

    /// The HTTP client (for statements this type does not wrap).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Inserts the spans of WAL records `(sequence, spans)` in one request. Inserting a
    /// record again (after a crash or a retry) adds nothing to any answer.
    pub fn insert(&self, records: &[(u64, &[Span])]) -> Result<(), ChError> {
        let mut rows = Vec::new();
        for (seq, spans) in records {
            encode_spans(&self.node, *seq, spans, &mut rows);
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.client.insert(
            &format!("INSERT INTO spans ({SPAN_COLUMNS}) FORMAT RowBinary"),
            &rows,
        )
    }

    /// Inserts rollup parts (see `schema.rs`, version 2) in one request; a part inserted
    /// again, or superseded by a higher version, counts once.
    pub fn insert_rollups(&self, parts: &[RollupPart]) -> Result<(), ChError> {
        let mut rows = Vec::new();
        for p in parts {
            encode_rollup(
                &mut rows,
                p.minute,
                p.service.as_deref(),
                &self.node,
                p.chunk,
                p.version,
                &p.cells,
            );
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.client.insert(
            &format!("INSERT INTO rollups ({ROLLUP_COLUMNS}) FORMAT RowBinary"),
            &rows,
        )
    }

    /// Records traces tail sampling dropped, `(trace id, decided at in Unix seconds)`
    /// (`schema.rs`, version 3); one sent again adds nothing to any answer.
    pub fn insert_dropped(&self, dropped: &[(TraceId, u64)]) -> Result<(), ChError> {
        let mut rows = Vec::with_capacity(dropped.len() * 40);
        for (id, at) in dropped {
            rows.extend_from_slice(id);
            rows.extend_from_slice(&u32::try_from(*at).unwrap_or(u32::MAX).to_le_bytes());
            crate::rows::string(&mut rows, self.node.as_bytes());
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.client.insert(
            "INSERT INTO dropped (trace_id, decided_at, node) FORMAT RowBinary",
            &rows,
        )
    }

    /// Which of `ids` tail sampling dropped, with when (Unix seconds).
    pub fn dropped_among(
        &self,
        ids: &[TraceId],
    ) -> Result<std::collections::HashMap<TraceId, u64>, ChError> {
        let mut out = std::collections::HashMap::new();
        for group in ids.chunks(TRACES_PER_READ) {
            let set = id_set(group);
            let body = self.client.query(&format!(
                "SELECT trace_id, max(decided_at) FROM dropped WHERE trace_id IN ({set}) \
                 GROUP BY trace_id FORMAT RowBinary"
            ))?;
            let mut r = RowReader::new(&body);
            while !r.is_empty() {
                let bad = || self.bad("the dropped traces", "a truncated row");
                let id = r
                    .fixed(16)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .ok_or_else(bad)?;
                let at = r.u32().ok_or_else(bad)?;
                out.insert(id, u64::from(at));
            }
        }
        Ok(out)
    }

    /// The spans of trace `id`, by start time (none when it is unknown).
    pub fn trace(&self, id: &TraceId) -> Result<Vec<Span>, ChError> {
        Ok(self
            .traces(std::slice::from_ref(id))?
            .pop()
            .unwrap_or_default())
    }

    /// The spans of each trace of `ids`, by start time, in the order asked: two reads
    /// for each [`TRACES_PER_READ`] of them, except the traces a search read and checked
    /// in the last two seconds (the same spans, unless more arrived meanwhile).
    pub fn traces(&self, ids: &[TraceId]) -> Result<Vec<Vec<Span>>, ChError> {
        let mut out: Vec<Option<Vec<Span>>> = match self.recent.lock() {
            Ok(recent) => ids.iter().map(|id| recent.get(id)).collect(),
            Err(_) => vec![None; ids.len()],
        };
        let missing: Vec<TraceId> = ids
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut read = Vec::with_capacity(missing.len());
        for group in missing.chunks(TRACES_PER_READ) {
            read.extend(self.read_traces(group)?);
        }
        let mut read = read.into_iter();
        for o in &mut out {
            if o.is_none() {
                *o = read.next();
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Keeps traces a search read and checked at hand for the read that follows it.
    pub(crate) fn remember(&self, traces: impl IntoIterator<Item = Vec<Span>>) {
        if let Ok(mut recent) = self.recent.lock() {
            for spans in traces {
                if let Some(first) = spans.first() {
                    recent.put(first.trace_id, spans);
                }
            }
        }
    }

    /// The spans of each trace of `ids`, read from ClickHouse (see [`Self::traces`]).
    pub(crate) fn read_traces(&self, ids: &[TraceId]) -> Result<Vec<Vec<Span>>, ChError> {
        let mut out = Vec::with_capacity(ids.len());
        for group in ids.chunks(TRACES_PER_READ) {
            out.extend(self.traces_together(group)?);
        }
        Ok(out)
    }

    fn traces_together(&self, ids: &[TraceId]) -> Result<Vec<Vec<Span>>, ChError> {
        let mut out = vec![Vec::new(); ids.len()];
        if ids.is_empty() {
            return Ok(out);
        }
        let set = id_set(ids);
        // Where their spans are: by service, their time range (the spans table's primary
        // key), so the read below touches only their granules.
        let at = self.client.query(&format!(
            "SELECT service, min(start_ns), max(start_ns) FROM trace_index \
             WHERE trace_id IN ({set}) GROUP BY trace_id, service FORMAT RowBinary"
        ))?;
        let mut r = RowReader::new(&at);
        let mut at_services: Vec<(String, u64, u64)> = Vec::new();
        while !r.is_empty() {
            let bad = || self.bad("the traces' services", "a truncated row");
            let service = r.string().ok_or_else(bad)?;
            let lo = r.u64().ok_or_else(bad)?;
            let hi = r.u64().ok_or_else(bad)?;
            at_services.push((String::from_utf8_lossy(service).into_owned(), lo, hi));
        }
        if at_services.is_empty() {
            return Ok(out);
        }
        let ranges: Vec<String> = key_ranges(at_services, MAX_KEY_RANGES)
            .into_iter()
            .map(|(service, lo, hi)| {
                format!(
                    "(service = {} AND start_ns BETWEEN {lo} AND {hi})",
                    quote(&service)
                )
            })
            .collect();
        // `LIMIT 1 BY` the row key rather than `FINAL`: the same answer (one row per span
        // however often it was inserted), but FINAL made 18.16 merge whole parts: 10 s
        // against 0.05 s for a 30-span trace among 250,000 spans not yet merged.
        // PREWHERE reads `otlp` only in granules that hold the traces' rows. The trace and
        // span ids are in the key too: a node that lost its data directory but kept its
        // name numbers its WAL records from the start again.
        let body = self.client.query(&format!(
            "SELECT {SPAN_READ_COLUMNS} FROM spans PREWHERE trace_id IN ({set}) WHERE {} \
             ORDER BY start_ns, span_id \
             LIMIT 1 BY node, wal_seq, span_idx, trace_id, span_id FORMAT RowBinary",
            ranges.join(" OR ")
        ))?;
        let mut r = RowReader::new(&body);
        let index: std::collections::HashMap<TraceId, usize> =
            ids.iter().enumerate().map(|(k, id)| (*id, k)).collect();
        while !r.is_empty() {
            let span = decode_span(&mut r).ok_or_else(|| {
                self.bad(
                    "the traces' spans",
                    "a row that is truncated or does not decode",
                )
            })?;
            if let Some(&k) = index.get(&span.trace_id) {
                out[k].push(span);
            }
        }
        // The same id asked twice gets its spans twice.
        for (k, id) in ids.iter().enumerate() {
            if let Some(&first) = index.get(id)
                && first != k
            {
                out[k] = out[first].clone();
            }
        }
        Ok(out)
    }

    /// The services that emitted spans, sorted.
    pub fn services(&self) -> Result<Vec<String>, ChError> {
        let body = self
            .client
            .query("SELECT DISTINCT service FROM spans ORDER BY service FORMAT RowBinary")?;
        let mut r = RowReader::new(&body);
        let mut out = Vec::new();
        while !r.is_empty() {
            let s = r
                .string()
                .ok_or_else(|| self.bad("the services", "a truncated row"))?;
            out.push(String::from_utf8_lossy(s).into_owned());
        }
        Ok(out)
    }

    /// Retention: drops, on this node's server, the day partitions of `spans`,
    /// `trace_index`, `rollups` and `dropped` (their local tables on a cluster) whose
    /// whole day (in the server's time zone, as the partitions have it) is before
    /// `cutoff_s` (Unix seconds), and returns the (table, day) dropped. Whole
    /// days only, so spans are kept up to a day past the cutoff. On a cluster each node
    /// drops on the server it is pointed at (a `Distributed` table cannot drop
    /// partitions), which every server has (see `schema.rs`).
    pub fn drop_days_before(&self, cutoff_s: u64) -> Result<Vec<(String, u32)>, ChError> {
        let local = |t: &str| match self.client.config().cluster {
            Some(_) => format!("{t}_local"),
            None => t.to_string(),
        };
        let tables = [
            local("spans"),
            local("trace_index"),
            local("rollups"),
            local("dropped"),
        ];
        let list = tables
            .iter()
            .map(|t| quote(t))
            .collect::<Vec<_>>()
            .join(", ");
        let text = self.client.query_text(&format!(
            "SELECT table, partition FROM system.parts \
             WHERE database = {} AND table IN ({list}) AND active \
             AND toUInt32(partition) < toYYYYMMDD(toDateTime({cutoff_s})) \
             GROUP BY table, partition ORDER BY partition, table",
            quote(&self.client.config().database)
        ))?;
        let mut dropped = Vec::new();
        for line in text.lines() {
            let (table, day) = line
                .split_once('\t')
                .and_then(|(t, d)| Some((t, d.parse::<u32>().ok()?)))
                .filter(|(t, _)| tables.iter().any(|x| x == t))
                .ok_or_else(|| self.bad("the partitions to drop", &format!("`{line}`")))?;
            self.client
                .query(&format!("ALTER TABLE {table} DROP PARTITION {day}"))?;
            dropped.push((table.to_string(), day));
        }
        Ok(dropped)
    }

    /// Spans stored, each counted once however often it was inserted (`FINAL`: it merges
    /// every part, so it is for tests and benchmarks, not for requests).
    pub fn span_count(&self) -> Result<u64, ChError> {
        let text = self.client.query_text("SELECT count() FROM spans FINAL")?;
        text.trim()
            .parse()
            .map_err(|_| self.bad("the span count", &format!("`{}`", text.trim())))
    }

    pub(crate) fn bad(&self, what: &str, reason: &str) -> ChError {
        ChError::BadAnswer {
            url: self.client.config().url.clone(),
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `ids` as a ClickHouse list of FixedString(16) values, for `IN (...)`.
fn id_set(ids: &[TraceId]) -> String {
    ids.iter()
        .map(|id| format!("unhex('{}')", faultline_model::hex(id)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` as a ClickHouse string literal.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_ranges_merge_within_a_service_closest_first() {
        let r = |s: &str, lo, hi| (s.to_string(), lo, hi);
        let got = super::key_ranges(
            vec![
                r("b", 100, 110),
                r("a", 0, 10),
                r("a", 5, 20),
                r("a", 50, 60),
                r("a", 1000, 1010),
                r("b", 130, 140),
            ],
            3,
        );
        assert_eq!(
            got,
            vec![r("a", 0, 60), r("a", 1000, 1010), r("b", 100, 140)]
        );
        // Never across services, whatever the limit.
        let got = super::key_ranges(vec![r("a", 0, 1), r("b", 0, 1), r("c", 0, 1)], 1);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(super::quote(r"it's a \ test"), r"'it\'s a \\ test'");
    }
}
