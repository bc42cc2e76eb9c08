//! Clock skew: how far each (service, host) clock is off, estimated from many calls, and
//! the read-time correction of spans that fall outside their parent because of it.
//!
//! **Samples.** Each CLIENT → SERVER parent/child pair between two clocks (different
//! services, or hosts) gives one sample when the store matches them (`store/head.rs`, as
//! it finds dependency edges): the child's midpoint minus the parent's. With clocks that
//! agree and a network that takes as long there as back, a server's span sits in the
//! middle of its client's, so the sample is about 0; a server whose clock is 2 s fast
//! gives about +2 s. The last [`SAMPLES_PER_PAIR`] samples of each (parent clock, child
//! clock) pair are kept in memory, for at most [`MAX_PAIRS`] pairs (the least recently
//! fed goes first); they are not written to disk (after a restart, estimates come back as
//! calls arrive).
//!
//! **Estimates.** A clock's offset is the median, over every sample of calls into it, of
//! the sample plus the calling clock's own offset (so a call from a skewed caller is not
//! blamed on the callee); clocks that nobody calls are the reference (offset 0). The
//! estimates are refined a few times so chains of calls settle. The median ignores
//! outliers (a slow network leg, a retried call) as long as fewer than half the calls are
//! odd. An estimate needs [`MIN_SAMPLES`] samples, and must stand out of their spread:
//! at least [`MIN_OFFSET_NS`] and at least [`MIN_SIGNAL`] times the median absolute
//! deviation of the samples. A clock whose servers do not sit in the middle of their
//! clients' spans (asynchronous work, a timeout) scatters its samples and gets no
//! estimate, rather than a wrong one. A call whose server span is longer than its
//! client's (by more than 1 ms of timer noise plus a thousandth of the call for clocks
//! slewed by NTP) gives no sample at all: a synchronous call's server works within its
//! client's span whatever the clocks, so such a pair is asynchronous work or a client
//! that gave up, and its midpoints would lean one way (a server that outlasts its client
//! has its midpoint late) and make a clock look ahead.
//!
//! **Messages.** A PRODUCER → CONSUMER pair between two clocks gives a message sample: the
//! consumer's start minus the producer's end. A message is consumed after it is sent, so
//! the sample is the queueing time plus the consumer clock's offset, and only a clock that
//! is behind can be told apart: when the median of the messages into a clock (that no
//! call reaches) is negative, its consumers mostly start before their producers ended, and
//! that median is its estimate, short of the true offset by the median queueing time (a
//! lower bound). A clock ahead looks like a slow queue and gets no estimate from messages.
//!
//! **Correction** ([`correct`]): walking a trace from its roots, a span that falls outside
//! its parent (starts before it or ends after it) and whose clock has an estimate is moved
//! back by that estimate, together with every descendant on the same clock (they share its
//! error). A span that fits is never moved. Each move is reported with its amount and
//! basis, so the UI can mark it and the Jaeger API can warn on the span. Sealing stores
//! each span's shift (the block column `clock_shift_nano`, see [`shifts`]), so the search
//! index's trace start, end and duration are the corrected ones.
//!
//! **Across restarts** the estimates last computed are kept in `clock-offsets.json` in the
//! store directory ([`OFFSETS_FILE`], written after each seal when they changed, replaced
//! atomically): a JSON object `{"version": 2, "clocks": [{"service", "host", "offset_ns",
//! "samples", "spread_ns", "callers"}]}`. Version 1 files come from builds that also
//! sampled calls whose server outlasts its client; their estimates may lean late and
//! could stand forever for a clock whose calls now give no sample, so they are dropped
//! (logged) and the estimates come back as calls arrive. After a restart a restored
//! estimate stands for its clock until calls into that clock arrive again; from then on
//! only the new samples count. An unreadable file is logged and ignored (estimates come
//! back as calls arrive).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use faultline_model::health::human_duration;
use faultline_model::span::{Origin, Span, SpanKind};

/// Samples kept per (parent clock, child clock) pair.
pub const SAMPLES_PER_PAIR: usize = 256;

/// Clock pairs kept at most: hosts come and go (a pod per deploy), so the pair whose
/// newest sample is oldest is forgotten when a new pair would exceed this.
pub const MAX_PAIRS: usize = 10_000;

/// Samples a clock's estimate needs.
pub const MIN_SAMPLES: usize = 5;

/// Offsets smaller than this are not estimated (the noise of one machine's timers).
pub const MIN_OFFSET_NS: i64 = 1_000_000;

/// An estimate must be this many times the samples' median absolute deviation.
pub const MIN_SIGNAL: i64 = 3;

/// A clock: a service on a host (`host.name`, else `host.id`, else none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Clock {
    /// The service.
    pub service: String,
    /// The host, empty when the resource names none.
    pub host: String,
}

impl Clock {
    /// The clock of `span`.
    pub fn of(span: &Span) -> Self {
        let host = ["host.name", "host.id"]
            .iter()
            .find_map(|k| {
                span.origin
                    .resource
                    .iter()
                    .find(|(rk, _)| rk == k)
                    .map(|(_, v)| v.to_text())
            })
            .unwrap_or_default();
        Self {
            service: span.service().to_string(),
            host,
        }
    }

    /// Whether two spans are on the same clock, without building either: spans of one
    /// resource are, and otherwise their services and hosts are compared.
    fn same(a: &Span, b: &Span) -> bool {
        Arc::ptr_eq(&a.origin, &b.origin) || (a.service() == b.service() && host(a) == host(b))
    }

    /// `service` or `service@host`.
    pub fn label(&self) -> String {
        if self.host.is_empty() {
            self.service.clone()
        } else {
            format!("{}@{}", self.service, self.host)
        }
    }
}

/// The host attribute of a span's resource (`host.name`, else `host.id`).
fn host(s: &Span) -> Option<&faultline_model::span::AttrValue> {
    ["host.name", "host.id"].iter().find_map(|k| {
        s.origin
            .resource
            .iter()
            .find(|(rk, _)| rk == k)
            .map(|(_, v)| v)
    })
}

/// One clock's estimated offset.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Offset {
    /// How far the clock is ahead (positive) or behind, in nanoseconds.
    pub offset_ns: i64,
    /// Samples behind the estimate.
    pub samples: usize,
    /// Their median absolute deviation from the estimate, in nanoseconds.
    pub spread_ns: i64,
    /// The calling clocks the samples came from.
    pub callers: Vec<String>,
    /// Whether it was restored from [`OFFSETS_FILE`] (no call into the clock since start).
    #[serde(default, skip_serializing)]
    pub restored: bool,
    /// Whether it rests on producer/consumer messages rather than calls (a lower bound:
    /// see the module header).
    #[serde(default)]
    pub messages: bool,
}

/// Every clock's estimate.
pub type Estimates = HashMap<Clock, Offset>;

/// What a sample comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// A client/server call: the child's midpoint minus the parent's.
    Call,
    /// A producer/consumer message: the consumer's start minus the producer's end.
    Message,
}

/// One sample: from a parent/child pair, the clocks, the difference, and its kind.
pub type Sample = (Clock, Clock, i64, Via);

/// How much longer than its client's (`client_ns`) a server span may be and still count
/// as a synchronous call: timer noise ([`MIN_OFFSET_NS`]) plus a thousandth of the call, for
/// two clocks slewed by NTP in opposite directions (up to 500 ppm each).
fn overrun_allowed(client_ns: u64) -> u64 {
    MIN_OFFSET_NS
        .unsigned_abs()
        .saturating_add(client_ns / 1_000)
}

/// The sample a parent/child pair gives, if it is a call or a message between two clocks.
pub fn sample(parent: &Span, child: &Span) -> Option<Sample> {
    let via = match (parent.kind, child.kind) {
        (SpanKind::Client, SpanKind::Server) => Via::Call,
        (SpanKind::Producer, SpanKind::Consumer) => Via::Message,
        _ => return None,
    };
    let (p, c) = (Clock::of(parent), Clock::of(child));
    if p == c {
        return None;
    }
    let delta = match via {
        Via::Call => {
            // A synchronous call's server works within its client's span whatever the
            // clocks, so it cannot take longer. A server span longer than its client's
            // (beyond timer noise) is asynchronous work or a client that gave up (a
            // timeout, a cancel): its midpoint says nothing about the clocks.
            let took = |s: &Span| s.end_ns.saturating_sub(s.start_ns);
            let client = took(parent);
            if took(child) > client.saturating_add(overrun_allowed(client)) {
                return None;
            }
            let mid = |s: &Span| (i128::from(s.start_ns) + i128::from(s.end_ns)) / 2;
            i64::try_from(mid(child) - mid(parent)).ok()?
        }
        Via::Message => {
            i64::try_from(i128::from(child.start_ns) - i128::from(parent.end_ns)).ok()?
        }
    };
    Some((p, c, delta, via))
}

/// The samples of every clock pair, and the estimates last computed from them.
#[derive(Debug, Default)]
pub struct SkewSamples {
    pairs: crate::block::FastMap<(Clock, Clock, Via), Ring>,
    /// Samples observed since start: each ring remembers when it was last fed.
    observed: u64,
    /// Estimates are recomputed at most every [`ESTIMATE_EVERY`]: trace reads ask for
    /// them every time.
    cached: std::sync::Mutex<Option<(std::time::Instant, Arc<Estimates>)>>,
    /// Estimates read from [`OFFSETS_FILE`] at start.
    restored: Estimates,
}

/// One clock pair's recent samples.
#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<i64>,
    /// [`SkewSamples::observed`] when it was last fed.
    fed: u64,
}

/// How old the estimates a trace read uses may be.
pub const ESTIMATE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl SkewSamples {
    /// Keeps `s`, forgetting the pair's oldest sample beyond [`SAMPLES_PER_PAIR`], and the
    /// least recently fed pair beyond [`MAX_PAIRS`].
    pub fn observe(&mut self, (parent, child, delta, via): Sample) {
        self.observed += 1;
        let key = (parent, child, via);
        if !self.pairs.contains_key(&key) && self.pairs.len() >= MAX_PAIRS {
            let stale = self
                .pairs
                .iter()
                .min_by_key(|(_, r)| r.fed)
                .map(|(k, _)| k.clone());
            if let Some(stale) = stale {
                self.pairs.remove(&stale);
            }
        }
        let ring = self.pairs.entry(key).or_default();
        ring.fed = self.observed;
        if ring.samples.len() == SAMPLES_PER_PAIR {
            ring.samples.pop_front();
        }
        ring.samples.push_back(delta);
    }

    /// Takes the estimates of a previous run: each stands until calls into its clock
    /// arrive.
    pub fn restore(&mut self, estimates: Estimates) {
        self.restored = estimates
            .into_iter()
            .map(|(c, o)| {
                (
                    c,
                    Offset {
                        restored: true,
                        ..o
                    },
                )
            })
            .collect();
    }

    /// Clock pairs with samples.
    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    /// [`Self::estimates`], at most [`ESTIMATE_EVERY`] old.
    pub fn current(&self) -> Arc<Estimates> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, est)) = cached.as_ref()
            && at.elapsed() < ESTIMATE_EVERY
        {
            return est.clone();
        }
        let est = Arc::new(self.estimates());
        *cached = Some((std::time::Instant::now(), est.clone()));
        est
    }

    /// Every clock's offset (see the module header).
    pub fn estimates(&self) -> Estimates {
        let mut into: HashMap<&Clock, Vec<(&Clock, &VecDeque<i64>)>> = HashMap::new();
        let mut messages: HashMap<&Clock, Vec<(&Clock, &VecDeque<i64>)>> = HashMap::new();
        for ((p, c, via), ring) in &self.pairs {
            match via {
                Via::Call => into.entry(c).or_default().push((p, &ring.samples)),
                Via::Message => messages.entry(c).or_default().push((p, &ring.samples)),
            }
        }
        let mut est: HashMap<&Clock, (i64, i64)> = HashMap::new();
        let mut values = Vec::new();
        let mut deviations = Vec::new();
        // A chain of n calls settles in n rounds; deeper chains are rare.
        for _ in 0..6 {
            let mut next = HashMap::with_capacity(into.len());
            for (child, edges) in &into {
                values.clear();
                for (parent, ring) in edges {
                    let base = est.get(parent).map_or(0, |e| e.0);
                    values.extend(ring.iter().map(|d| d.saturating_add(base)));
                }
                if values.len() < MIN_SAMPLES {
                    continue;
                }
                let mid = values.len() / 2;
                let m = *values.select_nth_unstable(mid).1;
                deviations.clear();
                deviations.extend(values.iter().map(|v| v.abs_diff(m)));
                let mad = *deviations.select_nth_unstable(mid).1;
                let mad = i64::try_from(mad).unwrap_or(i64::MAX);
                if m.abs() >= MIN_OFFSET_NS && m.abs() >= mad.saturating_mul(MIN_SIGNAL) {
                    next.insert(*child, (m, mad));
                }
            }
            if next == est {
                break;
            }
            est = next;
        }
        // Messages, into clocks no call reaches: only a clock behind shows.
        let mut behind: HashMap<&Clock, (i64, i64)> = HashMap::new();
        for (child, edges) in &messages {
            if into.contains_key(child) {
                continue;
            }
            values.clear();
            for (parent, ring) in edges {
                let base = est.get(parent).map_or(0, |e| e.0);
                values.extend(ring.iter().map(|d| d.saturating_add(base)));
            }
            if values.len() < MIN_SAMPLES {
                continue;
            }
            let mid = values.len() / 2;
            let m = *values.select_nth_unstable(mid).1;
            deviations.clear();
            deviations.extend(values.iter().map(|v| v.abs_diff(m)));
            let mad = *deviations.select_nth_unstable(mid).1;
            let mad = i64::try_from(mad).unwrap_or(i64::MAX);
            if m <= -MIN_OFFSET_NS && m.abs() >= mad.saturating_mul(MIN_SIGNAL) {
                behind.insert(*child, (m, mad));
            }
        }
        let restored = self
            .restored
            .iter()
            .filter(|(c, _)| !into.contains_key(c) && !messages.contains_key(c))
            .map(|(c, o)| (c.clone(), o.clone()));
        let by_message = behind.into_iter().map(|(clock, (offset_ns, spread_ns))| {
            let edges = &messages[clock];
            let mut callers: Vec<String> = edges.iter().map(|(p, _)| p.label()).collect();
            callers.sort();
            callers.dedup();
            (
                clock.clone(),
                Offset {
                    offset_ns,
                    samples: edges.iter().map(|(_, r)| r.len()).sum(),
                    spread_ns,
                    callers,
                    restored: false,
                    messages: true,
                },
            )
        });
        est.into_iter()
            .map(|(clock, (offset_ns, spread_ns))| {
                let edges = &into[clock];
                let mut callers: Vec<String> = edges.iter().map(|(p, _)| p.label()).collect();
                callers.sort();
                callers.dedup();
                (
                    clock.clone(),
                    Offset {
                        offset_ns,
                        samples: edges.iter().map(|(_, r)| r.len()).sum(),
                        spread_ns,
                        callers,
                        restored: false,
                        messages: false,
                    },
                )
            })
            .chain(by_message)
            .chain(restored)
            .collect()
    }
}

/// The file keeping the estimates across restarts (format in the module header).
pub const OFFSETS_FILE: &str = "clock-offsets.json";

/// The version of [`OFFSETS_FILE`] this build writes and reads.
const OFFSETS_VERSION: u32 = 2;

#[derive(serde::Serialize, serde::Deserialize)]
struct OffsetsFile {
    version: u32,
    clocks: Vec<ClockOffset>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ClockOffset {
    service: String,
    host: String,
    #[serde(flatten)]
    offset: Offset,
}

/// Writes `estimates` to [`OFFSETS_FILE`] in `dir` (temporary file, then rename).
pub fn save(dir: &std::path::Path, estimates: &Estimates) -> Result<(), crate::StoreError> {
    let mut clocks: Vec<ClockOffset> = estimates
        .iter()
        .map(|(c, o)| ClockOffset {
            service: c.service.clone(),
            host: c.host.clone(),
            offset: o.clone(),
        })
        .collect();
    clocks.sort_by(|a, b| (&a.service, &a.host).cmp(&(&b.service, &b.host)));
    let body = serde_json::to_vec_pretty(&OffsetsFile {
        version: OFFSETS_VERSION,
        clocks,
    })
    .map_err(|e| crate::StoreError::Encode(e.to_string()))?;
    let path = dir.join(OFFSETS_FILE);
    let tmp = dir.join(format!("{OFFSETS_FILE}.tmp"));
    let io = |op: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| crate::StoreError::Io { op, path, source }
    };
    std::fs::write(&tmp, body).map_err(io("write clock offsets", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename clock offsets", &tmp))
}

/// Reads [`OFFSETS_FILE`] in `dir`: empty when there is none; an error names the file and
/// what is wrong with it.
pub fn load(dir: &std::path::Path) -> Result<Estimates, String> {
    let path = dir.join(OFFSETS_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Estimates::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let f: OffsetsFile = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a clock-offsets file: {e}", path.display()))?;
    if f.version == 1 {
        tracing::info!(
            file = %path.display(),
            "clock-skew estimates of an older build (version 1, which also counted calls whose server outlasts its client) are not restored; they come back as calls arrive"
        );
        return Ok(Estimates::new());
    }
    if f.version != OFFSETS_VERSION {
        return Err(format!(
            "{} has version {}, this build reads version {OFFSETS_VERSION}",
            path.display(),
            f.version
        ));
    }
    Ok(f.clocks
        .into_iter()
        .map(|c| {
            (
                Clock {
                    service: c.service,
                    host: c.host,
                },
                c.offset,
            )
        })
        .collect())
}

/// A span moved by [`correct`].
#[derive(Debug, Clone, PartialEq)]
pub struct Adjustment {
    /// Its index in the spans given to [`correct`].
    pub index: usize,
    /// Nanoseconds added to its start and end (negative: moved earlier).
    pub shift_ns: i64,
    /// Why, for people: the estimate and what it rests on.
    pub basis: String,
}

/// Moves the spans of one trace that fall outside their parent by their clock's estimate
/// (see the module header); returns what moved. Spans keep their order.
pub fn correct(spans: &mut [Span], estimates: &Estimates) -> Vec<Adjustment> {
    // Most traces touch no skewed clock: a set lookup per span, not a walk of the trace.
    if spans.len() < 2 || !may_move(spans.iter(), &skewed_services(estimates)) {
        return Vec::new();
    }
    let (shift, moved) = {
        let refs: Vec<&Span> = spans.iter().collect();
        plan(&refs, &mut Offsets::new(estimates), true)
    };
    for (s, d) in spans.iter_mut().zip(&shift) {
        if *d != 0 {
            s.start_ns = shifted(s.start_ns, *d);
            s.end_ns = shifted(s.end_ns, *d);
            for e in &mut s.events {
                e.time_ns = shifted(e.time_ns, *d);
            }
        }
    }
    moved
}

/// The shift [`correct`] would give each span of one trace (0: not moved), without moving
/// anything: sealing stores it beside each span (`clock_shift_nano`) so trace summaries
/// and durations in the search index are the corrected ones.
pub fn shifts(spans: &[&Span], estimates: &Estimates) -> Vec<i64> {
    shifts_with(spans, &mut Offsets::new(estimates))
}

/// [`shifts`] with the clocks' offsets looked up through `offsets`, which many traces
/// can share (a seal's).
pub fn shifts_with<'s>(spans: &[&'s Span], offsets: &mut Offsets<'_, 's>) -> Vec<i64> {
    if offsets.estimates.is_empty() || spans.len() < 2 {
        return vec![0; spans.len()];
    }
    plan(spans, offsets, false).0
}

/// The estimated offset of each span's clock, worked out once per resource. The spans of
/// one request share their resource (`Origin`), so a seal finds the clock of a request's
/// resource once instead of building a [`Clock`] (two new strings, the resource's host
/// looked up) for every span outside its parent: with one skewed service on varied
/// traffic that was 2.5% of a replay's CPU samples, a sixth of the sealer thread's work
/// before the block is written. Borrowing the spans for `'s` keeps their resources alive,
/// so a resource's address names it for as long as the cache lives.
pub struct Offsets<'e, 's> {
    estimates: &'e Estimates,
    by_origin: HashMap<*const Origin, Option<&'e Offset>, foldhash::fast::FixedState>,
    spans: std::marker::PhantomData<&'s Span>,
}

impl<'e, 's> Offsets<'e, 's> {
    /// Nothing looked up yet.
    pub fn new(estimates: &'e Estimates) -> Self {
        Self {
            estimates,
            by_origin: HashMap::default(),
            spans: std::marker::PhantomData,
        }
    }

    /// The estimate of `span`'s clock, if there is one.
    pub fn of(&mut self, span: &'s Span) -> Option<&'e Offset> {
        let estimates = self.estimates;
        *self
            .by_origin
            .entry(Arc::as_ptr(&span.origin))
            .or_insert_with(|| estimates.get(&Clock::of(span)))
    }

    /// Whether a span of `spans` is on a clock with an estimate: only then can
    /// [`shifts_with`] move any of them (a span moves by its own clock's estimate or with
    /// a parent that did).
    pub fn any(&mut self, spans: &[&'s Span]) -> bool {
        !self.estimates.is_empty() && spans.iter().any(|s| self.of(s).is_some())
    }
}

/// Whether a trace with `spans` may need moving: one of them is of a service with an
/// estimated clock. Cheap, so that traces of well-behaved services skip [`plan`].
pub fn may_move<'a>(
    spans: impl IntoIterator<Item = &'a Span>,
    skewed: &std::collections::HashSet<&str>,
) -> bool {
    !skewed.is_empty() && spans.into_iter().any(|s| skewed.contains(s.service()))
}

/// The services of the clocks in `estimates`.
pub fn skewed_services(estimates: &Estimates) -> std::collections::HashSet<&str> {
    estimates.keys().map(|c| c.service.as_str()).collect()
}

/// Each span's shift and, with `explain`, the adjustments behind them (see the module
/// header); without, no adjustment is described (sealing needs only the shifts).
fn plan<'s>(
    spans: &[&'s Span],
    offsets: &mut Offsets<'_, 's>,
    explain: bool,
) -> (Vec<i64>, Vec<Adjustment>) {
    let estimates = offsets.estimates;
    let mut shift = vec![0i64; spans.len()];
    if estimates.is_empty() || spans.len() < 2 {
        return (shift, Vec::new());
    }
    let tree = Tree::of(spans);
    let mut moved = Vec::new();
    let mut visited = vec![false; spans.len()];
    // Breadth first from the roots: a parent's shift is final before its children's.
    let mut queue: VecDeque<usize> = tree.roots.iter().copied().collect();
    while let Some(p) = queue.pop_front() {
        if std::mem::replace(&mut visited[p], true) {
            continue;
        }
        let (ps, pe) = (
            shifted(spans[p].start_ns, shift[p]),
            shifted(spans[p].end_ns, shift[p]),
        );
        for &c in tree.children(p) {
            // Same clock: share the parent's shift.
            if Clock::same(spans[c], spans[p]) {
                shift[c] = shift[p];
            } else {
                let (cs, ce) = (spans[c].start_ns, spans[c].end_ns);
                let outside = cs < ps || ce > pe;
                if let Some(o) = outside.then(|| offsets.of(spans[c])).flatten() {
                    shift[c] = -o.offset_ns;
                    if !explain {
                        queue.push_back(c);
                        continue;
                    }
                    let clock = Clock::of(spans[c]);
                    moved.push(Adjustment {
                        index: c,
                        shift_ns: -o.offset_ns,
                        basis: format!(
                            "clock of {} is {} {} (median of {} {} from {}, spread {}{})",
                            clock.label(),
                            human_duration(o.offset_ns.unsigned_abs()),
                            if o.offset_ns > 0 { "ahead" } else { "behind" },
                            o.samples,
                            if o.messages {
                                "producer/consumer messages, consumers starting before their producers; at least this much"
                            } else {
                                "client/server calls"
                            },
                            o.callers.join(", "),
                            human_duration(o.spread_ns.unsigned_abs()),
                            if o.restored { "; estimated before the last restart" } else { "" }
                        ),
                    });
                }
            }
            queue.push_back(c);
        }
    }
    if !explain {
        return (shift, moved);
    }
    // Descendants that moved with their span are reported too, as moved by their clock.
    for (i, d) in shift.iter().enumerate() {
        if *d != 0 && !moved.iter().any(|a| a.index == i) {
            moved.push(Adjustment {
                index: i,
                shift_ns: *d,
                basis: format!(
                    "moved with its parent on the same clock ({})",
                    Clock::of(spans[i]).label()
                ),
            });
        }
    }
    moved.sort_by_key(|a| a.index);
    (shift, moved)
}

/// The parent-child structure of one trace's spans, built with few allocations: [`plan`]
/// runs for every trace a search of the head looks at, and for every trace a seal writes.
struct Tree {
    /// Spans whose parent is not among them (or is themselves), in order.
    roots: Vec<usize>,
    /// `kids[first[p]..first[p + 1]]` are the children of span `p`, in order.
    first: Vec<usize>,
    kids: Vec<usize>,
}

/// Traces up to this many spans find parents by a linear scan instead of a hash map.
const SCAN_PARENTS_UP_TO: usize = 48;

impl Tree {
    fn of(spans: &[&Span]) -> Self {
        let n = spans.len();
        // When span ids repeat, the last span with an id is the parent, as a map from id
        // to index built in order would say.
        let parent: Vec<Option<usize>> = if n <= SCAN_PARENTS_UP_TO {
            spans
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let p = s.parent_span_id?;
                    spans
                        .iter()
                        .rposition(|x| x.span_id == p)
                        .filter(|&p| p != i)
                })
                .collect()
        } else {
            let index: HashMap<[u8; 8], usize> = spans
                .iter()
                .enumerate()
                .map(|(i, s)| (s.span_id, i))
                .collect();
            spans
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let p = s.parent_span_id?;
                    index.get(&p).copied().filter(|&p| p != i)
                })
                .collect()
        };
        let mut first = vec![0usize; n + 1];
        for p in parent.iter().flatten() {
            first[p + 1] += 1;
        }
        for i in 0..n {
            first[i + 1] += first[i];
        }
        let mut fill = first.clone();
        let mut kids = vec![0usize; first[n]];
        let mut roots = Vec::new();
        for (i, p) in parent.iter().enumerate() {
            match p {
                Some(p) => {
                    kids[fill[*p]] = i;
                    fill[*p] += 1;
                }
                None => roots.push(i),
            }
        }
        Self { roots, first, kids }
    }

    fn children(&self, p: usize) -> &[usize] {
        &self.kids[self.first[p]..self.first[p + 1]]
    }
}

fn shifted(t: u64, d: i64) -> u64 {
    t.saturating_add_signed(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{AttrValue, Origin, StatusCode};

    use super::*;

    const MS: u64 = 1_000_000;

    fn origin(service: &str, host: &str) -> Arc<Origin> {
        Arc::new(Origin {
            service: service.into(),
            resource: vec![("host.name".into(), AttrValue::Str(host.into()))],
            scope_name: String::new(),
            scope_version: String::new(),
        })
    }

    fn span(
        id: u8,
        parent: Option<u8>,
        kind: SpanKind,
        o: &Arc<Origin>,
        start: u64,
        end: u64,
    ) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            name: format!("op{id}"),
            kind,
            start_ns: start,
            end_ns: end,
            status: StatusCode::Unset,
            status_message: String::new(),
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            origin: o.clone(),
        }
    }

    /// A frontend calls api (2 s fast); api calls db on two hosts, one 300 ms fast.
    fn trace(base: u64, jitter: u64) -> Vec<Span> {
        let fe = origin("frontend", "fe-1");
        let api = origin("api", "api-1");
        let db1 = origin("db", "db-1");
        let db2 = origin("db", "db-2");
        let skew_api = 2_000 * MS;
        let skew_db2 = 300 * MS;
        vec![
            span(1, None, SpanKind::Server, &fe, base, base + 100 * MS),
            span(
                2,
                Some(1),
                SpanKind::Client,
                &fe,
                base + 10 * MS,
                base + 60 * MS,
            ),
            span(
                3,
                Some(2),
                SpanKind::Server,
                &api,
                base + 12 * MS + jitter + skew_api,
                base + 58 * MS + jitter + skew_api,
            ),
            span(
                4,
                Some(3),
                SpanKind::Client,
                &api,
                base + 20 * MS + skew_api,
                base + 30 * MS + skew_api,
            ),
            span(
                5,
                Some(4),
                SpanKind::Server,
                &db1,
                base + 21 * MS,
                base + 29 * MS,
            ),
            span(
                6,
                Some(3),
                SpanKind::Client,
                &api,
                base + 35 * MS + skew_api,
                base + 50 * MS + skew_api,
            ),
            span(
                7,
                Some(6),
                SpanKind::Server,
                &db2,
                base + 36 * MS + skew_db2,
                base + 49 * MS + skew_db2,
            ),
            span(
                8,
                Some(7),
                SpanKind::Internal,
                &db2,
                base + 40 * MS + skew_db2,
                base + 45 * MS + skew_db2,
            ),
        ]
    }

    fn samples_of(traces: &[Vec<Span>]) -> SkewSamples {
        let mut s = SkewSamples::default();
        for t in traces {
            for c in t {
                if let Some(p) = t.iter().find(|p| Some(p.span_id) == c.parent_span_id)
                    && let Some(x) = sample(p, c)
                {
                    s.observe(x);
                }
            }
        }
        s
    }

    #[test]
    fn planted_offsets_are_found_through_a_skewed_caller() {
        // Odd calls (a slow leg) on one in five: the median ignores them.
        let traces: Vec<Vec<Span>> = (0..50)
            .map(|i| {
                trace(
                    1_000_000_000_000 + i * 1_000 * MS,
                    if i % 5 == 0 { 30 * MS } else { 0 },
                )
            })
            .collect();
        let est = samples_of(&traces).estimates();
        let get = |svc: &str, host: &str| {
            est[&Clock {
                service: svc.into(),
                host: host.into(),
            }]
                .offset_ns
        };
        assert!(
            (get("api", "api-1") - 2_000 * MS as i64).abs() < 1_000_000,
            "{est:?}"
        );
        // db-1's clock is right: no estimate (it would be 0).
        assert!(
            !est.contains_key(&Clock {
                service: "db".into(),
                host: "db-1".into()
            }),
            "{est:?}"
        );
        assert!(
            (get("db", "db-2") - 300 * MS as i64).abs() < 1_000_000,
            "{est:?}"
        );
        assert!(!est.contains_key(&Clock {
            service: "frontend".into(),
            host: "fe-1".into()
        }));
    }

    /// A seal looks the clocks' offsets up once per resource for the whole block: with
    /// resources shared across traces, each trace gets the shifts it gets on its own, and
    /// a trace whose spans are all on unestimated clocks is passed over even though one
    /// of its services has a skewed host (db on db-1 while db-2 is 300 ms fast).
    #[test]
    fn offsets_shared_by_a_block_are_per_resource() {
        let traces: Vec<Vec<Span>> = (0..20)
            .map(|i| trace(1_000_000_000_000 + i * 1_000 * MS, 0))
            .collect();
        let est = samples_of(&traces).estimates();
        let mut shared: Vec<(String, Arc<Origin>)> = Vec::new();
        let mut block: Vec<Vec<Span>> = (0..30)
            .map(|i| trace(5_000_000_000_000 + i * 1_000 * MS, 0))
            .collect();
        for s in block.iter_mut().flatten() {
            let label = Clock::of(s).label();
            match shared.iter().find(|(l, _)| *l == label) {
                Some((_, o)) => s.origin = o.clone(),
                None => shared.push((label, s.origin.clone())),
            }
        }
        assert_eq!(shared.len(), 4, "frontend, api, and db on two hosts");
        let mut offsets = Offsets::new(&est);
        for t in &block {
            let refs: Vec<&Span> = t.iter().collect();
            assert!(offsets.any(&refs));
            let alone = shifts(&refs, &est);
            let moved: Vec<usize> = (0..alone.len()).filter(|&i| alone[i] != 0).collect();
            assert_eq!(moved, [2, 3, 5, 6, 7]);
            assert_eq!(shifts_with(&refs, &mut offsets), alone);
        }
        let unestimated: Vec<&Span> = block[0]
            .iter()
            .filter(|s| ["frontend@fe-1", "db@db-1"].contains(&Clock::of(s).label().as_str()))
            .collect();
        assert_eq!(unestimated.len(), 3);
        assert!(may_move(
            unestimated.iter().copied(),
            &skewed_services(&est)
        ));
        assert!(!offsets.any(&unestimated));
        assert_eq!(shifts_with(&unestimated, &mut offsets), [0, 0, 0]);
    }

    #[test]
    fn spans_outside_their_parent_move_with_their_clock_and_fitting_ones_stay() {
        let traces: Vec<Vec<Span>> = (0..20)
            .map(|i| trace(1_000_000_000_000 + i * 1_000 * MS, 0))
            .collect();
        let est = samples_of(&traces).estimates();
        let mut t = trace(5_000_000_000_000, 0);
        let before = t.clone();
        let moved = correct(&mut t, &est);
        let idx: Vec<usize> = moved.iter().map(|a| a.index).collect();
        // api's server span is outside its client: moved with its two client children;
        // db-1 then fits its (moved) parent and stays; db-2 is 300 ms out and moves with
        // its internal child.
        assert_eq!(idx, [2, 3, 5, 6, 7], "{moved:?}");
        assert!(
            moved[0].basis.contains("api@api-1 is 2.00 s ahead"),
            "{}",
            moved[0].basis
        );
        assert!(
            moved[0].basis.contains("from frontend@fe-1"),
            "{}",
            moved[0].basis
        );
        assert!(moved[1].basis.contains("same clock"));
        for (a, b) in t.iter().zip(&before) {
            if !idx.contains(&t.iter().position(|x| x.span_id == a.span_id).unwrap()) {
                assert_eq!((a.start_ns, a.end_ns), (b.start_ns, b.end_ns));
            }
        }
        // Every child now lies within its parent.
        for c in &t {
            if let Some(p) = t.iter().find(|p| Some(p.span_id) == c.parent_span_id) {
                assert!(
                    c.start_ns >= p.start_ns && c.end_ns <= p.end_ns,
                    "{} in {}",
                    c.name,
                    p.name
                );
            }
        }
        // A trace that already fits is left alone, whatever the estimates.
        let mut fitting = vec![t[0].clone(), t[1].clone(), t[2].clone()];
        assert!(correct(&mut fitting, &est).is_empty());
    }

    #[test]
    fn scattered_samples_make_no_estimate() {
        // Servers placed anywhere inside their clients' spans: no clock is off.
        let fe = origin("frontend", "fe-1");
        let api = origin("api", "api-1");
        let mut s = SkewSamples::default();
        for i in 0..200u64 {
            let base = 1_000_000_000_000 + i * 1_000 * MS;
            let c = span(1, None, SpanKind::Client, &fe, base, base + 100 * MS);
            let offset = (i * 37 % 90) * MS;
            let srv = span(
                2,
                Some(1),
                SpanKind::Server,
                &api,
                base + offset,
                base + offset + 10 * MS,
            );
            s.observe(sample(&c, &srv).unwrap());
        }
        assert!(s.estimates().is_empty(), "{:?}", s.estimates());
    }

    #[test]
    fn servers_that_outlast_their_clients_make_no_estimate() {
        // Clocks agree; api's servers start 2 ms into their client's span and run 10-60%
        // longer than it (the client timed out, or answered before the work was done).
        // Their midpoints all lean late: 7-32 ms, which a median would call api's offset.
        let fe = origin("frontend", "fe-1");
        let api = origin("api", "api-1");
        let mut s = SkewSamples::default();
        let mut taken = 0;
        for i in 0..200u64 {
            let base = 1_000_000_000_000 + i * 1_000 * MS;
            let c = span(1, None, SpanKind::Client, &fe, base, base + 100 * MS);
            let took = (110 + i * 7 % 51) * MS;
            let srv = span(
                2,
                Some(1),
                SpanKind::Server,
                &api,
                base + 2 * MS,
                base + 2 * MS + took,
            );
            if let Some(x) = sample(&c, &srv) {
                s.observe(x);
                taken += 1;
            }
        }
        assert_eq!(taken, 0, "an outlasting server gave a sample");
        assert!(s.estimates().is_empty(), "{:?}", s.estimates());
        // A server up to timer noise longer than its client is still a call (the same pair
        // with its server 0.5 ms longer), and a skewed one that fits still counts.
        let c = span(1, None, SpanKind::Client, &fe, 0, 100 * MS);
        let noisy = span(
            2,
            Some(1),
            SpanKind::Server,
            &api,
            MS / 4,
            100 * MS + MS / 4 + MS / 2,
        );
        assert!(sample(&c, &noisy).is_some());
        let ahead = span(2, Some(1), SpanKind::Server, &api, 505 * MS, 595 * MS);
        assert_eq!(sample(&c, &ahead).map(|x| x.2), Some(500 * MS as i64));
        // A 10 s call may overrun by 1 ms plus a thousandth (NTP slewing): 10.5 ms counts,
        // 11.5 ms does not.
        let long = span(1, None, SpanKind::Client, &fe, 0, 10_000 * MS);
        let srv = |over: u64| span(2, Some(1), SpanKind::Server, &api, 0, 10_000 * MS + over);
        assert!(sample(&long, &srv(10 * MS + MS / 2)).is_some());
        assert!(sample(&long, &srv(11 * MS + MS / 2)).is_none());
    }

    #[test]
    fn offsets_files_of_version_1_are_dropped_and_unknown_versions_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(OFFSETS_FILE);
        let body = |v: u32| {
            format!(
                r#"{{"version": {v}, "clocks": [{{"service": "api", "host": "api-1", "offset_ns": 19500000, "samples": 200, "spread_ns": 6500000, "callers": ["frontend@fe-1"]}}]}}"#
            )
        };
        std::fs::write(&file, body(OFFSETS_VERSION)).unwrap();
        assert_eq!(
            load(dir.path()).unwrap().len(),
            1,
            "this build's version is read"
        );
        std::fs::write(&file, body(1)).unwrap();
        assert!(load(dir.path()).unwrap().is_empty(), "version 1 is dropped");
        std::fs::write(&file, body(OFFSETS_VERSION + 1)).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains("this build reads version 2"), "{err}");
    }

    #[test]
    fn pairs_are_bounded_and_the_stalest_goes() {
        let mut s = SkewSamples::default();
        let clock = |i: usize| Clock {
            service: "svc".into(),
            host: format!("pod-{i}"),
        };
        let root = Clock {
            service: "gw".into(),
            host: "gw-1".into(),
        };
        for i in 0..MAX_PAIRS + 50 {
            s.observe((root.clone(), clock(i), 1, Via::Call));
            // pod-0 keeps being called: it is never the stalest.
            s.observe((root.clone(), clock(0), 1, Via::Call));
        }
        assert_eq!(s.pairs(), MAX_PAIRS);
        assert!(s.pairs.contains_key(&(root.clone(), clock(0), Via::Call)));
        assert!(!s.pairs.contains_key(&(root.clone(), clock(1), Via::Call)));
        assert!(
            s.pairs
                .contains_key(&(root, clock(MAX_PAIRS + 49), Via::Call))
        );
    }

    #[test]
    fn too_few_samples_make_no_estimate() {
        let est = samples_of(&[trace(1_000_000_000_000, 0)]).estimates();
        assert!(est.is_empty(), "{est:?}");
    }

    #[test]
    fn estimates_survive_a_restart_until_new_calls_replace_them() {
        let traces: Vec<Vec<Span>> = (0..20)
            .map(|i| trace(1_000_000_000_000 + i * 1_000 * MS, 0))
            .collect();
        let est = samples_of(&traces).estimates();
        let dir = tempfile::tempdir().unwrap();
        assert!(
            load(dir.path()).unwrap().is_empty(),
            "no file: no estimates"
        );
        save(dir.path(), &est).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded, est);
        // Restored: moves the same spans, and says the estimate is from before.
        let mut after = SkewSamples::default();
        after.restore(loaded);
        let restored = after.estimates();
        let mut t = trace(1_000_000_000_000, 0);
        let moved = correct(&mut t, &restored);
        let mut live = trace(1_000_000_000_000, 0);
        let want: Vec<(usize, i64)> = correct(&mut live, &est)
            .iter()
            .map(|a| (a.index, a.shift_ns))
            .collect();
        let got: Vec<(usize, i64)> = moved.iter().map(|a| (a.index, a.shift_ns)).collect();
        assert_eq!(got, want);
        assert!(!got.is_empty());
        assert!(
            moved[0].basis.contains("before the last restart"),
            "{moved:?}"
        );
        // Calls into api with a right clock replace its restored estimate; db-2's stays.
        for i in 0..10 {
            let mut t = trace(2_000_000_000_000 + i * 1_000 * MS, 0);
            for s in &mut t {
                if s.service() == "api" {
                    s.start_ns -= 2_000 * MS;
                    s.end_ns -= 2_000 * MS;
                }
            }
            for c in &t {
                if let Some(p) = t.iter().find(|p| Some(p.span_id) == c.parent_span_id)
                    && let Some(x) = sample(p, c)
                    && x.1.service == "api"
                {
                    after.observe(x);
                }
            }
        }
        let now = after.estimates();
        assert!(!now.keys().any(|c| c.service == "api"), "{now:?}");
        assert!(now.keys().any(|c| c.host == "db-2"), "{now:?}");
        // Damaged files are refused with the file named.
        std::fs::write(dir.path().join(OFFSETS_FILE), b"{not json").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains(OFFSETS_FILE), "{err}");
    }

    #[test]
    fn shifts_match_the_correction_and_skip_traces_of_right_clocks() {
        let traces: Vec<Vec<Span>> = (0..20)
            .map(|i| trace(1_000_000_000_000 + i * 1_000 * MS, 0))
            .collect();
        let est = samples_of(&traces).estimates();
        let t = trace(1_000_000_000_000, 0);
        let refs: Vec<&Span> = t.iter().collect();
        let shifts = shifts(&refs, &est);
        let mut moved = t.clone();
        correct(&mut moved, &est);
        for ((s, m), d) in t.iter().zip(&moved).zip(&shifts) {
            assert_eq!(s.start_ns.saturating_add_signed(*d), m.start_ns);
        }
        assert!(shifts.iter().any(|d| *d != 0));
        let skewed = skewed_services(&est);
        assert!(may_move(&t, &skewed));
        let right: Vec<Span> = t
            .iter()
            .filter(|s| s.service() == "frontend")
            .cloned()
            .collect();
        assert!(!may_move(&right, &skewed));
        assert!(!may_move(&t, &std::collections::HashSet::new()));
    }

    /// A producer on `orders@o-1` and its consumer on `billing@b-1` (clock `skew` off),
    /// queued 5-50 ms.
    fn message(i: u64, skew: i64) -> Vec<Span> {
        let (p, c) = (origin("orders", "o-1"), origin("billing", "b-1"));
        let base = 1_000_000_000_000 + i * 1_000 * MS;
        let queued = (5 + (i * 7919) % 46) * MS;
        let start = (base + 10 * MS + queued).saturating_add_signed(skew);
        vec![
            span(1, None, SpanKind::Producer, &p, base, base + 10 * MS),
            span(2, Some(1), SpanKind::Consumer, &c, start, start + 20 * MS),
        ]
    }

    #[test]
    fn messages_show_a_clock_behind_and_never_invent_one_ahead() {
        let behind: Vec<Vec<Span>> = (0..40).map(|i| message(i, -300 * MS as i64)).collect();
        let est = samples_of(&behind).estimates();
        let o = &est[&Clock {
            service: "billing".into(),
            host: "b-1".into(),
        }];
        // The median includes the queueing time: a lower bound within 10% here.
        assert!(o.messages && o.offset_ns < 0, "{o:?}");
        assert!(
            (o.offset_ns + 300 * MS as i64).abs() <= 30 * MS as i64,
            "{o:?}"
        );
        let mut t = message(99, -300 * MS as i64);
        let moved = correct(&mut t, &est);
        assert_eq!(moved.len(), 1);
        assert!(
            moved[0].basis.contains("producer/consumer messages"),
            "{moved:?}"
        );
        assert_eq!(moved[0].shift_ns, -o.offset_ns);
        // Within the queueing spread of its producer's end, not 300 ms before it.
        assert!(t[1].start_ns + 50 * MS >= t[0].end_ns, "{t:?}");
        // A clock ahead is indistinguishable from a slow queue: no estimate.
        let ahead: Vec<Vec<Span>> = (0..40).map(|i| message(i, 2_000 * MS as i64)).collect();
        assert!(samples_of(&ahead).estimates().is_empty());
        // Right clocks: nothing.
        let right: Vec<Vec<Span>> = (0..40).map(|i| message(i, 0)).collect();
        assert!(samples_of(&right).estimates().is_empty());
    }

    proptest::proptest! {
        /// The tree `plan` walks is the one a map from span id to index gives (the last
        /// span with an id wins), for small traces (scanned) and large ones (mapped),
        /// with repeated ids, self-parents and missing parents.
        #[test]
        fn the_tree_is_the_one_a_map_gives(
            links in proptest::collection::vec((0u8..80, proptest::option::of(0u8..90)), 1..120)
        ) {
            let o = origin("svc", "h");
            let spans: Vec<Span> = links
                .iter()
                .map(|&(id, parent)| span(id, parent, SpanKind::Internal, &o, 0, 1))
                .collect();
            let refs: Vec<&Span> = spans.iter().collect();
            let index: HashMap<[u8; 8], usize> =
                refs.iter().enumerate().map(|(i, s)| (s.span_id, i)).collect();
            let mut children: Vec<Vec<usize>> = vec![Vec::new(); refs.len()];
            let mut roots = Vec::new();
            for (i, s) in refs.iter().enumerate() {
                match s.parent_span_id.and_then(|p| index.get(&p)) {
                    Some(&p) if p != i => children[p].push(i),
                    _ => roots.push(i),
                }
            }
            let tree = Tree::of(&refs);
            proptest::prop_assert_eq!(&tree.roots, &roots);
            for (p, c) in children.iter().enumerate() {
                proptest::prop_assert_eq!(tree.children(p), c.as_slice());
            }
        }
    }
}
