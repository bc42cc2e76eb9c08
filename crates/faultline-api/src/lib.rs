//! The query API served on the HTTP port: Jaeger's v1 JSON API (`jaeger.rs`), Jaeger's
//! api_v3 over HTTP answering in OTLP JSON (`v3.rs`), and the native RED and trace summary
//! endpoints (`native.rs`), with the parameter parsing they share (`params.rs`); and the
//! sampling port's Jaeger remote sampling endpoint (`sampling.rs`); the tracing-health
//! report (`health_report.rs`); the audit log of control actions (`audit.rs`).
//!
//! **Architecture invariant:** the API layer knows nothing about file formats; it reads
//! through [`faultline_store::SpanStore`] and is the only layer that serialises JSON for
//! clients.
//!
//! **Invariant:** every answer says whether it is complete: the `X-Faultline-Partial`
//! header lists the reasons (blocks quarantined, WAL records not yet indexed), and Jaeger
//! answers carry the same in a `partial` field (ignored by Jaeger clients).

pub mod alerts;
pub mod assertions;
pub mod audit;
pub mod consistency;
pub mod error;
pub mod experiments;
pub mod gate;
pub mod health_report;
pub mod jaeger;
pub mod native;
pub mod ops;
pub mod params;
pub mod probes;
pub mod sampling;
pub mod status;
pub mod steady;
pub mod v3;

use std::sync::Arc;

use axum::Router;
use faultline_store::{Completeness, SpanStore};

pub use error::{ApiError, ErrorKind, PageFn, Shape, shaped};
pub use ops::{DeadLetters, Process, ReplayError, Replayed, StoreOnly};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The span store.
    pub store: Arc<dyn SpanStore>,
    /// The rest of the process: partial reasons, status, readiness, metrics, dead letters.
    pub process: Arc<dyn Process>,
    /// Recent answers of cheap, frequent queries, served when the store is slow.
    pub cache: Arc<QueryCache>,
    /// Every part's health over the last day (`status::sample_forever` fills it).
    pub history: Arc<status::History>,
    /// The synthetic probes, when this process runs them.
    pub probes: Option<faultline_probe::Probes>,
    /// The alert rules, when this process evaluates them.
    pub alerts: Option<faultline_alerts::Alerts>,
    /// The notification outbox, when this process sends notifications.
    pub outbox: Option<faultline_notify::Outbox>,
    /// Chaos experiment runs, when this process keeps them.
    pub experiments: Option<Arc<faultline_chaos::experiment::history::History>>,
    /// Consistency rules and continuous assertions, when this process evaluates them.
    pub checks: Option<Arc<faultline_checks::Checks>>,
    /// The tokens and the audit log, when this process checks them.
    pub auth: Option<faultline_auth::Auth>,
}

impl ApiState {
    /// `c` plus the process's reasons an answer about `range` may miss data.
    pub fn with_lag(&self, mut c: Completeness, range: Option<(u64, u64)>) -> Completeness {
        for r in self.process.partial_reasons(range) {
            if !c.reasons.contains(&r) {
                c.reasons.push(r);
            }
        }
        c
    }
}

/// Recent answers of service lists and RED queries, by query. When the store does not
/// answer such a query within `slow`, the cached answer (if younger than `max_age`) is
/// served instead, marked stale with its age, and the store's answer refreshes the cache
/// when it comes.
pub struct QueryCache {
    map: std::sync::Mutex<std::collections::HashMap<String, CacheEntry>>,
    /// How long a query may take before the cache answers.
    pub slow: std::time::Duration,
    /// Oldest answer the cache serves.
    pub max_age: std::time::Duration,
}

/// When an answer was stored, and the answer.
type CacheEntry = (std::time::Instant, Arc<dyn std::any::Any + Send + Sync>);

/// Most entries the cache keeps (the oldest go first).
const CACHE_ENTRIES: usize = 1024;

impl std::fmt::Debug for QueryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryCache")
            .field("slow", &self.slow)
            .finish_non_exhaustive()
    }
}

impl QueryCache {
    /// A cache answering after `slow` with answers up to `max_age` old.
    pub fn new(slow: std::time::Duration, max_age: std::time::Duration) -> Self {
        Self {
            map: std::sync::Mutex::new(std::collections::HashMap::new()),
            slow,
            max_age,
        }
    }

    fn put<T: Send + Sync + 'static>(&self, key: String, v: T) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= CACHE_ENTRIES
                && let Some(oldest) = m
                    .iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
            m.insert(key, (std::time::Instant::now(), Arc::new(v)));
        }
    }

    fn get<T: Clone + Send + Sync + 'static>(&self, key: &str) -> Option<(std::time::Duration, T)> {
        let m = self.map.lock().ok()?;
        let (t, v) = m.get(key)?;
        let age = t.elapsed();
        if age > self.max_age {
            return None;
        }
        v.downcast_ref::<T>().map(|v| (age, v.clone()))
    }
}

/// Like [`query`] for cheap, frequent queries: when the store takes longer than the
/// cache's `slow`, answers from the cache (marked stale with its age) if it can.
pub(crate) async fn query_cached<T: Clone + Send + Sync + 'static>(
    st: &ApiState,
    key: String,
    f: impl FnOnce(
        &dyn SpanStore,
    ) -> Result<(T, faultline_store::Completeness), faultline_store::StoreError>
    + Send
    + 'static,
) -> Result<(T, faultline_store::Completeness), ApiError> {
    let store = st.store.clone();
    let mut handle = tokio::task::spawn_blocking(move || f(store.as_ref()));
    let joined = match tokio::time::timeout(st.cache.slow, &mut handle).await {
        Ok(joined) => joined,
        Err(_) => {
            if let Some((age, (v, mut c))) =
                st.cache.get::<(T, faultline_store::Completeness)>(&key)
            {
                c.reasons.push(format!(
                    "stale: served from a cache {:.1} s old because the store did not answer within {} ms",
                    age.as_secs_f64(),
                    st.cache.slow.as_millis()
                ));
                // Refresh the cache when the store answers.
                let cache = st.cache.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(fresh)) = handle.await {
                        cache.put(key, fresh);
                    }
                });
                return Ok((v, c));
            }
            handle.await
        }
    };
    let v = joined??;
    st.cache.put(key, v.clone());
    Ok(v)
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// Runs a store query off the async executor (block reads are file I/O and can take
/// milliseconds), in no queue ([`gate::Lane::Other`]).
pub async fn query<T: Send + 'static>(
    st: &ApiState,
    f: impl FnOnce(&dyn SpanStore) -> Result<T, faultline_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    query_in(st, gate::Lane::Other, f).await
}

/// [`query`] in `lane` (`gate.rs`: interactive reads run on their own threads, one per
/// core).
pub async fn query_in<T: Send + 'static>(
    st: &ApiState,
    lane: gate::Lane,
    f: impl FnOnce(&dyn SpanStore) -> Result<T, faultline_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = st.store.clone();
    Ok(gate::run(lane, move || f(store.as_ref())).await??)
}

/// The answer for a trace id with no spans: not found, saying when tail sampling dropped
/// it (a decision, recorded) rather than leaving it unexplained.
pub fn trace_missing(dropped_at_s: Option<u64>, reasons: Vec<String>) -> ApiError {
    match dropped_at_s {
        Some(at) => ApiError::not_found(format!(
            "trace not found: tail sampling dropped it at {at} (Unix seconds) by the policy of its root service; its spans were counted in RED and dependencies before the decision (GET /api/v1/tail-sampling)"
        )),
        None => ApiError::not_found("trace not found"),
    }
    .with_partial(reasons)
}

/// Every API route (Jaeger v1, api_v3, native, status, operator routes), each area with
/// its error shape. The UI adds its pages and the fallback for unknown paths.
pub fn router() -> Router<ApiState> {
    shaped(jaeger::router(), Shape::Jaeger)
        .merge(shaped(v3::router(), Shape::V3))
        .merge(shaped(
            native::router()
                .merge(status::router())
                .merge(probes::router())
                .merge(alerts::router())
                .merge(ops::router())
                .merge(sampling::api_router())
                .merge(health_report::router())
                .merge(steady::router())
                .merge(experiments::router())
                .merge(assertions::router())
                .merge(consistency::router())
                .merge(audit::router()),
            Shape::Native,
        ))
}

/// A listener whose connections answer at once instead of waiting for Nagle's algorithm.
pub fn nodelay(
    l: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    l.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    })
}

/// Sets `X-Faultline-Partial` to the reasons an answer is incomplete (none: no header).
pub fn mark_partial(headers: &mut axum::http::HeaderMap, reasons: &[String]) {
    if reasons.is_empty() {
        return;
    }
    // Header values must be visible ASCII; reasons are ours, but be safe.
    let clean: String = reasons
        .join("; ")
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(v) = axum::http::HeaderValue::from_str(&clean) {
        headers.insert("x-faultline-partial", v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod cache_tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use faultline_model::span::{SpanKind, TraceId};
    use faultline_store::{
        Completeness, Dependency, RedPoint, StoreError, TraceAnswer, TraceQuery, TraceSummary,
    };

    use super::*;

    /// A store that answers services and RED after `delay_ms`.
    #[derive(Default)]
    struct SlowStore {
        delay_ms: AtomicU64,
        calls: AtomicU64,
    }

    impl SlowStore {
        fn wait(&self) -> u64 {
            std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
            self.calls.fetch_add(1, Ordering::SeqCst) + 1
        }
    }

    impl SpanStore for SlowStore {
        fn trace(&self, _: &TraceId) -> Result<TraceAnswer, StoreError> {
            Ok(TraceAnswer {
                spans: Vec::new(),
                completeness: Completeness::default(),
            })
        }
        fn services(&self) -> Result<(Vec<String>, Completeness), StoreError> {
            let n = self.wait();
            Ok((vec![format!("svc-{n}")], Completeness::default()))
        }
        fn operations(
            &self,
            _: &str,
        ) -> Result<(Vec<(String, SpanKind)>, Completeness), StoreError> {
            Ok((Vec::new(), Completeness::default()))
        }
        fn dependencies(
            &self,
            _: u64,
            _: u64,
        ) -> Result<(Vec<Dependency>, Completeness), StoreError> {
            Ok((Vec::new(), Completeness::default()))
        }
        fn red(
            &self,
            _: &str,
            _: Option<&str>,
            _: Option<SpanKind>,
            start_s: u64,
            _: u64,
            _: u64,
        ) -> Result<(Vec<RedPoint>, Completeness), StoreError> {
            let n = self.wait();
            Ok((
                vec![RedPoint {
                    start_s,
                    count: n,
                    errors: 0,
                    stored: n,
                    stored_errors: 0,
                    requests: n,
                    request_errors: 0,
                    stored_requests: n,
                    p50_ms: None,
                    p90_ms: None,
                    p99_ms: None,
                    mean_ms: None,
                    request_ms: None,
                }],
                Completeness::default(),
            ))
        }
        fn search(&self, _: &TraceQuery) -> Result<(Vec<TraceSummary>, Completeness), StoreError> {
            Ok((Vec::new(), Completeness::default()))
        }
        fn red_total(
            &self,
            _: &str,
            _: Option<&str>,
            _: Option<SpanKind>,
            start_s: u64,
            _: u64,
        ) -> Result<(RedPoint, Completeness), StoreError> {
            Ok((
                RedPoint {
                    start_s,
                    count: 0,
                    errors: 0,
                    stored: 0,
                    stored_errors: 0,
                    requests: 0,
                    request_errors: 0,
                    stored_requests: 0,
                    p50_ms: None,
                    p90_ms: None,
                    p99_ms: None,
                    mean_ms: None,
                    request_ms: None,
                },
                Completeness::default(),
            ))
        }
        fn latency_distribution(
            &self,
            _: &str,
            _: Option<&str>,
            _: u64,
            _: u64,
            bounds: &[f64],
        ) -> Result<(Vec<u64>, Completeness), StoreError> {
            Ok((vec![0; bounds.len() + 1], Completeness::default()))
        }
    }

    async fn get(app: &Router, uri: &str) -> (Option<String>, serde_json::Value) {
        let resp = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let partial = resp
            .headers()
            .get("x-faultline-partial")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (partial, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_store_is_answered_from_the_cache_marked_stale() {
        let store = Arc::new(SlowStore::default());
        let app = router().with_state(ApiState {
            store: store.clone(),
            process: Arc::new(StoreOnly),
            cache: Arc::new(QueryCache::new(
                Duration::from_millis(100),
                Duration::from_secs(60),
            )),
            history: Arc::default(),
            probes: None,
            alerts: None,
            outbox: None,
            experiments: None,
            checks: None,
            auth: None,
        });
        // Fast: fresh answers, which fill the cache.
        let (partial, v) = get(&app, "/api/services").await;
        assert_eq!((partial, v["data"][0].as_str()), (None, Some("svc-1")));
        let red = "/api/v1/red?service=a&start=600&end=4200";
        let (partial, v) = get(&app, red).await;
        assert_eq!((partial, v["points"][0]["count"].as_u64()), (None, Some(2)));

        // Slow: the cached answers come back at once, marked stale with their age.
        store.delay_ms.store(2_000, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let (partial, v) = get(&app, "/api/services").await;
        assert!(started.elapsed() < Duration::from_millis(1_000));
        assert_eq!(v["data"][0], "svc-1");
        assert!(partial.unwrap().contains("stale: served from a cache"));
        assert!(
            v["partial"]["reasons"][0]
                .as_str()
                .unwrap()
                .contains("stale")
        );
        // The same length of window, later: still served from the cache.
        let (partial, v) = get(&app, "/api/v1/red?service=a&start=660&end=4260").await;
        assert_eq!(v["points"][0]["count"], 2);
        assert_eq!(v["complete"], false);
        assert!(partial.unwrap().contains("stale"));
        // Nothing cached for this one: it waits for the store.
        let (partial, v) = get(&app, "/api/v1/red?service=b&start=0&end=60").await;
        assert!(partial.is_none() && v["points"][0]["count"].as_u64().unwrap() >= 3);
    }
}
