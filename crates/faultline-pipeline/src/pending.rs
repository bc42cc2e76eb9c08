//! Trace reads that see acknowledged spans before the store indexed them: [`WithPending`]
//! wraps what the API reads and adds, to a trace by id, the spans of the WAL records
//! `faultline_model::pending::PendingTraces` names for it.
//!
//! Indexing can fall behind intake (a burst faster than sealing, a backlog replayed after
//! a restart, `index_rate`); without this a trace acknowledged in that time answers 404
//! until indexing reaches it. A read takes the pending records first and the store's
//! answer second, so a record indexed in between is found in the store (and its spans
//! dropped from the pending part as repeats, by span id, as the store drops a span found
//! in two places); a record truncated in between was durable in the store first.
//!
//! Only reads by trace id look here: search, RED and the service lists see a span once
//! it is indexed.
//!
//! After a restart the backlog thread notes the records committed before it, which takes
//! a moment for a large backlog; until it has, a trace read waits for it (at most
//! [`SCAN_WAIT`]) rather than answer 404 for a trace that was acknowledged.

use std::collections::HashMap;
use std::sync::Arc;

use faultline_model::envelope;
use faultline_model::pending::{PendingTraces, RecordAt};
use faultline_model::span::{Span, TraceId};
use faultline_store::rollup::{Dependency, RedPoint};
use faultline_store::search::{TraceQuery, TraceSummary};
use faultline_store::{Completeness, SpanStore, StoreError, TraceAnswer};
use faultline_wal::Wal;

/// The longest a trace read waits for the start's backlog to be noted.
const SCAN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The reads of `inner`, with trace reads completed from the WAL (see the module doc).
pub struct WithPending {
    inner: Arc<dyn SpanStore>,
    wal: Wal,
    pending: Arc<PendingTraces>,
}

impl WithPending {
    /// `inner`'s reads, with trace reads completed from `wal` where `pending` says.
    pub fn wrap(
        inner: Arc<dyn SpanStore>,
        wal: Wal,
        pending: Arc<PendingTraces>,
    ) -> Arc<dyn SpanStore> {
        Arc::new(Self {
            inner,
            wal,
            pending,
        })
    }

    /// The spans of each of `ids` in the pending records, read once per record.
    fn pending_spans(&self, ids: &[TraceId]) -> Vec<Vec<Span>> {
        let started = std::time::Instant::now();
        while self.pending.scanning() && started.elapsed() < SCAN_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut out: Vec<Vec<Span>> = vec![Vec::new(); ids.len()];
        let mut by_record: HashMap<RecordAt, Vec<usize>> = HashMap::new();
        for (k, id) in ids.iter().enumerate() {
            for at in self.pending.records(id) {
                by_record.entry(at).or_default().push(k);
            }
        }
        let mut records: Vec<_> = by_record.into_iter().collect();
        records.sort_unstable_by_key(|(at, _)| at.seq);
        for (at, ks) in records {
            let wanted: Vec<TraceId> = ks.iter().map(|&k| ids[k]).collect();
            match self.read(at, &wanted) {
                Ok(spans) => {
                    for s in spans {
                        // Every answer asking for the trace (ids may repeat).
                        for (i, &k) in ks.iter().enumerate() {
                            if wanted[i] == s.trace_id {
                                out[k].push(s.clone());
                            }
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(seq = at.seq, error = %why, "cannot read a record not yet indexed; its traces answer without it until it is");
                }
            }
        }
        out
    }

    /// The spans of traces `wanted` in record `at` (none once its segment is gone).
    fn read(&self, at: RecordAt, wanted: &[TraceId]) -> Result<Vec<Span>, String> {
        let Some(rec) = self
            .wal
            .read_record(at.seq, at.segment, at.offset)
            .map_err(|e| e.to_string())?
        else {
            return Ok(Vec::new());
        };
        // Only the wanted traces' spans are decoded (a record holds hundreds).
        envelope::decode(&rec.payload)
            .and_then(|e| e.spans_where(&|id| wanted.contains(id)))
            .map_err(|e| e.to_string())
    }
}

/// `answer` with `extra` spans added, in start order, each span id once.
fn merge(mut answer: TraceAnswer, extra: Vec<Span>) -> TraceAnswer {
    if extra.is_empty() {
        return answer;
    }
    answer.spans.extend(extra);
    answer.spans.sort_by_key(|s| s.start_ns);
    let mut seen = std::collections::HashSet::new();
    answer.spans.retain(|s| seen.insert(s.span_id));
    answer
}

impl WithPending {
    /// `answer` completed with the pending spans `extra` of trace `id`, unless tail
    /// sampling dropped the trace (asked only when there are pending spans: on ClickHouse
    /// it is a query): its spans must not come back from the WAL.
    fn complete(&self, id: &TraceId, answer: TraceAnswer, extra: Vec<Span>) -> TraceAnswer {
        if extra.is_empty() || self.inner.dropped_by_policy(id).is_some() {
            return answer;
        }
        merge(answer, extra)
    }
}

impl SpanStore for WithPending {
    fn trace(&self, trace_id: &TraceId) -> Result<TraceAnswer, StoreError> {
        let mut extra = self.pending_spans(std::slice::from_ref(trace_id));
        let answer = self.inner.trace(trace_id)?;
        Ok(self.complete(trace_id, answer, extra.pop().unwrap_or_default()))
    }

    fn traces(&self, ids: &[TraceId]) -> Result<Vec<TraceAnswer>, StoreError> {
        let extra = self.pending_spans(ids);
        let answers = self.inner.traces(ids)?;
        Ok(ids
            .iter()
            .zip(answers)
            .zip(extra)
            .map(|((id, a), e)| self.complete(id, a, e))
            .collect())
    }

    fn services(&self) -> Result<(Vec<String>, Completeness), StoreError> {
        self.inner.services()
    }

    fn operations(
        &self,
        service: &str,
    ) -> Result<(Vec<(String, faultline_model::span::SpanKind)>, Completeness), StoreError> {
        self.inner.operations(service)
    }

    fn dependencies(
        &self,
        start_s: u64,
        end_s: u64,
    ) -> Result<(Vec<Dependency>, Completeness), StoreError> {
        self.inner.dependencies(start_s, end_s)
    }

    fn red(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<faultline_model::span::SpanKind>,
        start_s: u64,
        end_s: u64,
        step_s: u64,
    ) -> Result<(Vec<RedPoint>, Completeness), StoreError> {
        self.inner
            .red(service, operation, kind, start_s, end_s, step_s)
    }

    fn search(&self, q: &TraceQuery) -> Result<(Vec<TraceSummary>, Completeness), StoreError> {
        self.inner.search(q)
    }

    fn red_total(
        &self,
        service: &str,
        operation: Option<&str>,
        kind: Option<faultline_model::span::SpanKind>,
        start_s: u64,
        end_s: u64,
    ) -> Result<(RedPoint, Completeness), StoreError> {
        self.inner
            .red_total(service, operation, kind, start_s, end_s)
    }

    fn latency_distribution(
        &self,
        service: &str,
        operation: Option<&str>,
        start_s: u64,
        end_s: u64,
        bounds_ms: &[f64],
    ) -> Result<(Vec<u64>, Completeness), StoreError> {
        self.inner
            .latency_distribution(service, operation, start_s, end_s, bounds_ms)
    }

    fn clock_offsets(&self) -> Arc<faultline_store::skew::Estimates> {
        self.inner.clock_offsets()
    }

    fn tracing_health(&self) -> Result<faultline_store::quality::TracingHealth, StoreError> {
        self.inner.tracing_health()
    }

    fn tail_sampling(&self) -> Result<faultline_store::tail::TailReport, StoreError> {
        self.inner.tail_sampling()
    }

    fn dropped_by_policy(&self, id: &TraceId) -> Option<u64> {
        self.inner.dropped_by_policy(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use faultline_model::ExportTraceServiceRequest;
    use faultline_model::envelope::Protocol;
    use faultline_model::otlp::trace::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
    use faultline_model::span::from_otlp_owned;
    use faultline_store::{Store, StoreOptions};
    use faultline_wal::sim::SimFs;
    use faultline_wal::{NoopObserver, WalOptions};

    use super::*;

    /// A request with spans `ids` of trace `trace`, and of another trace.
    fn request(trace: u8, ids: &[u8]) -> Vec<u8> {
        let span = |t: u8, id: u8| OtlpSpan {
            trace_id: vec![t; 16],
            span_id: vec![id; 8],
            name: format!("op{id}"),
            start_time_unix_nano: 1_000 + u64::from(id),
            end_time_unix_nano: 2_000 + u64::from(id),
            ..OtlpSpan::default()
        };
        let mut spans: Vec<OtlpSpan> = ids.iter().map(|&id| span(trace, id)).collect();
        spans.push(span(trace + 100, 99));
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        envelope::encode_request(Protocol::OtlpHttpProtobuf, ids.len() as u32 + 1, &req)
    }

    /// A trace exported in three batches (as an SDK does): one indexed, two still in the
    /// WAL, one of them repeating a span (a retried export). The read answers the union,
    /// each span once, in start order; and only the store's part once a record's segment
    /// is gone.
    #[test]
    fn a_trace_is_the_store_part_and_the_pending_records() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(StoreOptions::new(dir.path())).unwrap();
        let store = Arc::new(store);
        let (wal, _) = Wal::open_with(
            Arc::new(SimFs::default()),
            Path::new("/wal"),
            WalOptions::default(),
            Arc::new(NoopObserver),
        )
        .unwrap();
        let pending = Arc::new(PendingTraces::default());
        let mut acks = Vec::new();
        for ids in [&[1u8, 2][..], &[3, 4], &[4, 5]] {
            let payload = request(7, ids);
            let ack = wal.append_blocking(payload.clone()).unwrap();
            let at = RecordAt {
                seq: ack.seq,
                segment: ack.segment,
                offset: ack.offset,
            };
            let env = envelope::decode(&payload).unwrap();
            pending.add(at, env.trace_ids().unwrap());
            acks.push((ack.seq, payload));
        }
        // The first batch is indexed.
        let (seq, payload) = &acks[0];
        let req = envelope::decode(payload).unwrap().request().unwrap();
        store.ingest(*seq, from_otlp_owned(req)).unwrap();
        pending.remove(*seq);
        let reads = WithPending::wrap(store.clone(), wal.clone(), pending.clone());
        let ids = |a: &TraceAnswer| -> Vec<u8> { a.spans.iter().map(|s| s.span_id[0]).collect() };
        assert_eq!(ids(&reads.trace(&[7; 16]).unwrap()), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            ids(&store.trace(&[7; 16]).unwrap()),
            vec![1, 2],
            "the store alone"
        );
        let both = reads.traces(&[[107; 16], [7; 16], [9; 16]]).unwrap();
        assert_eq!(
            ids(&both[0]),
            vec![99],
            "the same span in three batches, once"
        );
        assert_eq!(ids(&both[1]), vec![1, 2, 3, 4, 5]);
        assert!(both[2].spans.is_empty());
        // A record noted at a wrong place is left out (logged), not an error of the read.
        let ack = wal.append_blocking(request(8, &[1])).unwrap();
        let wrong = RecordAt {
            seq: ack.seq,
            segment: ack.segment,
            offset: ack.offset + 3,
        };
        assert!(
            wal.read_record(wrong.seq, wrong.segment, wrong.offset)
                .is_err()
        );
        pending.add(wrong, [[7; 16]]);
        assert_eq!(ids(&reads.trace(&[7; 16]).unwrap()), vec![1, 2, 3, 4, 5]);
    }

    /// A trace tail sampling dropped does not come back from its pending records (on
    /// ClickHouse records stay pending until sent, after the decision may be made).
    #[test]
    fn a_dropped_trace_is_not_completed_from_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            tail: Some(faultline_store::tail::TailPolicy {
                enabled: true,
                wait_secs: 0,
                keep_slower_than_p99: false,
                rest_traces_per_second: 0.0,
                ..faultline_store::tail::TailPolicy::default()
            }),
            ..StoreOptions::new(dir.path())
        };
        let (store, _) = Store::open(opts).unwrap();
        let store = Arc::new(store);
        let (wal, _) = Wal::open_with(
            Arc::new(SimFs::default()),
            Path::new("/wal"),
            WalOptions::default(),
            Arc::new(NoopObserver),
        )
        .unwrap();
        let pending = Arc::new(PendingTraces::default());
        // Trace 7's first record is indexed, sealed and dropped (no error, no budget).
        let first = request(7, &[1, 2]);
        let ack = wal.append_blocking(first.clone()).unwrap();
        let req = envelope::decode(&first).unwrap().request().unwrap();
        store.ingest(ack.seq, from_otlp_owned(req)).unwrap();
        store.seal().unwrap().unwrap();
        let now_s = 2_000_000_000;
        assert!(store.tail_sample(now_s).unwrap().unwrap().dropped > 0);
        assert!(store.dropped_by_policy(&[7; 16]).is_some());
        // Its later spans, and a trace the store never saw, are pending in the WAL.
        for later in [request(7, &[3]), request(8, &[5])] {
            let ack = wal.append_blocking(later.clone()).unwrap();
            let at = RecordAt {
                seq: ack.seq,
                segment: ack.segment,
                offset: ack.offset,
            };
            pending.add(at, envelope::decode(&later).unwrap().trace_ids().unwrap());
        }
        let reads = WithPending::wrap(store.clone(), wal.clone(), pending.clone());
        assert!(reads.trace(&[7; 16]).unwrap().spans.is_empty());
        let both = reads.traces(&[[7; 16], [8; 16]]).unwrap();
        assert!(both[0].spans.is_empty());
        assert_eq!(
            both[1].spans.len(),
            1,
            "a trace not dropped is read from the WAL"
        );
    }
}
