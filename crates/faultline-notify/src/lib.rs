//! The notification outbox: every probe incident and alert transition ([`Event`]) is
//! written to a durable log (`log.rs`) before anything is sent, then delivered to each
//! receiver configured when it was enqueued (`config.rs`: JSON webhooks, Slack-compatible
//! webhooks, e-mail over SMTP; `send.rs` renders and sends).
//!
//! Guarantees, and how:
//! - **Never lost.** An event counts once its record is synced; a message is formed (its
//!   batch record synced) before its first attempt and retried with exponential backoff
//!   (1 s doubling to 5 min, ±20% jitter) until the receiver accepts it or
//!   `give_up_hours` pass; after a restart unsent messages are retried.
//! - **One message per transition and receiver.** An event's key is its idempotency key
//!   (`probe/checkout/1740000000000/down`): enqueueing a key already known does nothing,
//!   so a source may re-offer its transitions after a crash (probes and alerts do, at
//!   start) without sending any twice. A message's batch id is random, fixed before the
//!   first attempt and sent with every attempt (`Idempotency-Key`, and the e-mail's
//!   `Message-ID`); the only repeat possible is a message re-sent because the process
//!   died after the receiver accepted it and before `sent` was synced, and it carries the
//!   same id.
//! - **Bursts grouped.** A receiver's message waits `group_secs` after its oldest unsent
//!   transition and then holds every transition waiting for it (at most [`MAX_BATCH`]):
//!   ten probes failing together make one message.
//! - **Off the executor.** Appends (each an fdatasync) run on the blocking pool; one task
//!   per receiver sends, so a receiver that hangs (10 s timeout per attempt) delays no
//!   other.
//!
//! Keys are remembered for [`KEEP_DAYS`] days, longer than any source re-offers.

pub mod config;
mod log;
mod send;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use config::{ConfigError, NotifyConfig, ReceiverDef};
use log::Rec;

/// Most transitions in one message.
pub const MAX_BATCH: usize = 100;
/// Days a delivered event (and so its key) is remembered.
pub const KEEP_DAYS: u64 = 31;
/// Most events remembered; beyond it the oldest delivered ones are forgotten at start.
pub const MAX_EVENTS: usize = 100_000;
const DAY_MS: u64 = 86_400_000;

/// A transition to tell people about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The idempotency key: the same transition always has the same key.
    pub key: String,
    /// `probe` or `alert`.
    pub kind: String,
    /// The probe's or rule's name.
    pub subject: String,
    /// `down`, `up`, `firing` or `resolved`.
    pub state: String,
    /// When it happened, Unix milliseconds.
    pub at: u64,
    /// What happened, in words.
    pub message: String,
    /// A trace to open, as a path of the UI (`/trace/ID`) or a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Event {
    fn state_words(&self) -> &str {
        match self.state.as_str() {
            "down" => "is down",
            "up" => "is up again",
            "firing" => "is firing",
            "resolved" => "resolved",
            other => other,
        }
    }
}

/// Why the outbox could not do something.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The log could not be read or written.
    #[error("{op} the outbox log {}: {source}", path.display())]
    Log {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error("{0}")]
    Tls(String),
}

/// Where one event stands with one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its group to form.
    Pending,
    /// In a message not yet accepted (being sent, or waiting to retry).
    Sending,
    /// The receiver accepted it.
    Sent,
    /// Retried for `give_up_hours` without success.
    GaveUp,
    /// The receiver is no longer configured.
    Dropped,
}

/// One event's delivery to one receiver.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The receiver.
    pub receiver: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// The message (batch) it is in, if formed: its idempotency key.
    pub batch: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was accepted, Unix ms.
    pub sent_at: Option<u64>,
    /// When the next attempt is due, Unix ms.
    pub next_attempt_at: Option<u64>,
}

/// An event and its deliveries.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// When it was enqueued, Unix ms.
    pub enqueued_at: u64,
    /// One per receiver it is for.
    pub deliveries: Vec<Delivery>,
}

/// A receiver and its counts.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverView {
    /// The name.
    pub name: String,
    /// `webhook`, `slack` or `smtp`.
    pub kind: &'static str,
    /// Where it sends (no secrets).
    pub target: String,
    /// Events waiting (pending or sending).
    pub waiting: u64,
    /// Messages accepted since start.
    pub sent: u64,
    /// Attempts failed since start.
    pub failed_attempts: u64,
    /// Messages given up since start.
    pub gave_up: u64,
    /// The last failure, if the newest attempt failed.
    pub last_error: Option<String>,
}

struct EventState {
    event: Event,
    enqueued: u64,
    to: Vec<String>,
    /// Receiver -> batch id.
    batches: BTreeMap<String, String>,
}

#[derive(Clone)]
struct Batch {
    receiver: String,
    keys: Vec<String>,
    created: u64,
    attempts: u32,
    last_error: Option<String>,
    next_at: u64,
    sent_at: Option<u64>,
    gave_up: bool,
}

#[derive(Default, Clone)]
struct Counts {
    sent: u64,
    failed: u64,
    gave_up: u64,
    last_error: Option<String>,
}

struct State {
    since: u64,
    events: BTreeMap<String, EventState>,
    /// Keys in enqueue order.
    order: VecDeque<String>,
    batches: BTreeMap<String, Batch>,
    counts: BTreeMap<String, Counts>,
}

struct Inner {
    cfg: NotifyConfig,
    state: Mutex<State>,
    /// Held while appending; taken before `state` whenever both are.
    log: Mutex<log::Appender>,
    path: PathBuf,
    wake: tokio::sync::Notify,
}

/// The outbox.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("receivers", &self.inner.cfg.receivers.len())
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Exponential backoff with jitter: 1 s doubling to 5 min, ±20%.
fn backoff(attempts: u32) -> Duration {
    let base = 1000u64
        .saturating_mul(1 << attempts.saturating_sub(1).min(9))
        .min(300_000);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    Duration::from_millis((base as f64 * jitter) as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is applied whole after its record is synced, so a
    // poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn apply(&mut self, r: &Rec) {
        match r {
            Rec::Open { at } => self.since = *at,
            Rec::Event { at, to, event } => {
                if !self.events.contains_key(&event.key) {
                    self.order.push_back(event.key.clone());
                    self.events.insert(
                        event.key.clone(),
                        EventState {
                            event: event.clone(),
                            enqueued: *at,
                            to: to.clone(),
                            batches: BTreeMap::new(),
                        },
                    );
                }
            }
            Rec::Batch {
                at,
                id,
                receiver,
                keys,
            } => {
                for k in keys {
                    if let Some(e) = self.events.get_mut(k) {
                        e.batches.insert(receiver.clone(), id.clone());
                    }
                }
                self.batches.insert(
                    id.clone(),
                    Batch {
                        receiver: receiver.clone(),
                        keys: keys.clone(),
                        created: *at,
                        attempts: 0,
                        last_error: None,
                        next_at: 0,
                        sent_at: None,
                        gave_up: false,
                    },
                );
            }
            Rec::Failed { at, id, error } => {
                if let Some(b) = self.batches.get_mut(id) {
                    b.attempts += 1;
                    b.last_error = Some(error.clone());
                    b.next_at = at + backoff(b.attempts).as_millis() as u64;
                }
            }
            Rec::Sent { at, id } => {
                if let Some(b) = self.batches.get_mut(id) {
                    b.attempts += 1;
                    b.sent_at = Some(*at);
                }
            }
            Rec::GaveUp { id, error, .. } => {
                if let Some(b) = self.batches.get_mut(id) {
                    b.gave_up = true;
                    b.last_error = Some(error.clone());
                }
            }
        }
    }

    /// Whether `b` needs nothing more.
    fn done(b: &Batch) -> bool {
        b.sent_at.is_some() || b.gave_up
    }

    /// The records that rebuild this state, without events older than `KEEP_DAYS`
    /// whose deliveries are all done, and beyond `MAX_EVENTS` the oldest done ones.
    fn compacted(&self, now: u64, receivers: &[String]) -> Vec<Rec> {
        let finished = |e: &EventState| {
            e.to.iter().all(|r| {
                !receivers.contains(r)
                    || e.batches
                        .get(r)
                        .and_then(|id| self.batches.get(id))
                        .is_some_and(Self::done)
            })
        };
        let mut keep: Vec<&String> = self
            .order
            .iter()
            .filter(|k| {
                self.events
                    .get(*k)
                    .is_some_and(|e| !finished(e) || e.enqueued + KEEP_DAYS * DAY_MS >= now)
            })
            .collect();
        let excess = keep.len().saturating_sub(MAX_EVENTS);
        if excess > 0 {
            let mut dropped = 0;
            keep.retain(|k| {
                if dropped < excess && self.events.get(*k).is_some_and(finished) {
                    dropped += 1;
                    false
                } else {
                    true
                }
            });
        }
        let kept: std::collections::BTreeSet<&String> = keep.iter().copied().collect();
        let mut out = vec![Rec::Open { at: self.since }];
        for k in &keep {
            if let Some(e) = self.events.get(*k) {
                out.push(Rec::Event {
                    at: e.enqueued,
                    to: e.to.clone(),
                    event: e.event.clone(),
                });
            }
        }
        for (id, b) in &self.batches {
            let keys: Vec<String> = b
                .keys
                .iter()
                .filter(|k| kept.contains(k))
                .cloned()
                .collect();
            if keys.is_empty() {
                continue;
            }
            out.push(Rec::Batch {
                at: b.created,
                id: id.clone(),
                receiver: b.receiver.clone(),
                keys,
            });
            // Attempts before the last are history; the last failure sets the backoff.
            if let Some(at) = b.sent_at {
                out.push(Rec::Sent { at, id: id.clone() });
            } else if b.gave_up {
                out.push(Rec::GaveUp {
                    at: now,
                    id: id.clone(),
                    error: b.last_error.clone().unwrap_or_default(),
                });
            } else if let Some(e) = &b.last_error {
                out.push(Rec::Failed {
                    at: now,
                    id: id.clone(),
                    error: e.clone(),
                });
            }
        }
        out
    }
}

/// What a receiver's task does next.
enum Next {
    Wait(Duration),
    Form(Vec<String>),
    Attempt(String),
}

impl Outbox {
    /// Opens `DATA_DIR/outbox.log` (creating it) for `cfg`'s receivers. Blocking; call
    /// [`Outbox::start`] to deliver.
    pub fn open(data_dir: &Path, cfg: NotifyConfig) -> Result<Self, NotifyError> {
        cfg.validate()?;
        let path = data_dir.join("outbox.log");
        let fail = |op, source| NotifyError::Log {
            op,
            path: path.clone(),
            source,
        };
        let (records, valid, torn) = log::read(&path).map_err(|e| fail("cannot read", e))?;
        if torn {
            tracing::warn!(
                "the outbox log {} ended in a torn record (a crash mid-append); it was cut off",
                path.display()
            );
        }
        let mut appender = log::Appender::open(&path, valid).map_err(|e| fail("cannot open", e))?;
        let now = now_ms();
        let mut state = State {
            since: now,
            events: BTreeMap::new(),
            order: VecDeque::new(),
            batches: BTreeMap::new(),
            counts: BTreeMap::new(),
        };
        if records.is_empty() {
            appender
                .append(&Rec::Open { at: now })
                .map_err(|e| fail("cannot write", e))?;
        }
        for r in &records {
            state.apply(r);
        }
        let names: Vec<String> = cfg.receivers.iter().map(|r| r.name.clone()).collect();
        let compact = state.compacted(now, &names);
        if records.len() > 2 * compact.len() + 1000 {
            appender
                .rewrite(&compact)
                .map_err(|e| fail("cannot rewrite", e))?;
            state.events.clear();
            state.order.clear();
            state.batches.clear();
            for r in &compact {
                state.apply(r);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(state),
                log: Mutex::new(appender),
                path,
                wake: tokio::sync::Notify::new(),
            }),
        })
    }

    /// When the outbox was created, Unix ms: sources re-offer only transitions after it
    /// (a new outbox does not send old history).
    pub fn since_ms(&self) -> u64 {
        lock(&self.inner.state).since
    }

    /// Enqueues `event` for every receiver, durably; `false` if its key was known (then
    /// nothing changes). Blocking (an fdatasync).
    pub fn enqueue(&self, event: Event) -> Result<bool, NotifyError> {
        let mut log = lock(&self.inner.log);
        if lock(&self.inner.state).events.contains_key(&event.key) {
            return Ok(false);
        }
        let rec = Rec::Event {
            at: now_ms(),
            to: self
                .inner
                .cfg
                .receivers
                .iter()
                .map(|r| r.name.clone())
                .collect(),
            event,
        };
        log.append(&rec).map_err(|e| NotifyError::Log {
            op: "cannot append to",
            path: self.inner.path.clone(),
            source: e,
        })?;
        lock(&self.inner.state).apply(&rec);
        drop(log);
        self.inner.wake.notify_waiters();
        Ok(true)
    }

    /// Appends `rec` on the blocking pool, then applies it.
    async fn record(&self, rec: Rec) -> Result<(), NotifyError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = lock(&me.inner.log);
            log.append(&rec).map_err(|e| NotifyError::Log {
                op: "cannot append to",
                path: me.inner.path.clone(),
                source: e,
            })?;
            lock(&me.inner.state).apply(&rec);
            Ok(())
        })
        .await
        .map_err(|e| NotifyError::Log {
            op: "cannot append to",
            path: self.inner.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    /// Starts one delivery task per receiver on the current Tokio runtime.
    pub fn start(&self) -> Result<(), NotifyError> {
        let client = send::client().map_err(NotifyError::Tls)?;
        for r in &self.inner.cfg.receivers {
            tokio::spawn(self.clone().deliver_loop(r.clone(), client.clone()));
        }
        Ok(())
    }

    fn next(&self, receiver: &str, now: u64) -> Next {
        let st = lock(&self.inner.state);
        let open = st
            .batches
            .iter()
            .filter(|(_, b)| b.receiver == receiver && !State::done(b))
            .min_by_key(|(_, b)| b.created);
        if let Some((id, b)) = open {
            return if b.next_at <= now {
                Next::Attempt(id.clone())
            } else {
                Next::Wait(Duration::from_millis(b.next_at - now))
            };
        }
        let waiting: Vec<(&String, u64)> = st
            .order
            .iter()
            .filter_map(|k| st.events.get(k).map(|e| (k, e)))
            .filter(|(_, e)| {
                e.to.iter().any(|t| t == receiver) && !e.batches.contains_key(receiver)
            })
            .map(|(k, e)| (k, e.enqueued))
            .collect();
        let Some((_, oldest)) = waiting.first() else {
            return Next::Wait(Duration::from_secs(60));
        };
        let due = oldest + self.inner.cfg.group_secs * 1000;
        if due > now {
            return Next::Wait(Duration::from_millis(due - now));
        }
        Next::Form(
            waiting
                .iter()
                .take(MAX_BATCH)
                .map(|(k, _)| (*k).clone())
                .collect(),
        )
    }

    async fn deliver_loop(self, r: ReceiverDef, client: send::Client) {
        loop {
            // Registered before looking, so an enqueue in between still wakes this task.
            let wake = self.inner.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let step = match self.next(&r.name, now_ms()) {
                Next::Wait(d) => {
                    let _ = tokio::time::timeout(d.min(Duration::from_secs(5)), wake).await;
                    Ok(())
                }
                Next::Form(keys) => {
                    let id = format!("{:032x}", rand::random::<u128>());
                    self.record(Rec::Batch {
                        at: now_ms(),
                        id,
                        receiver: r.name.clone(),
                        keys,
                    })
                    .await
                }
                Next::Attempt(id) => self.attempt(&r, &client, id).await,
            };
            if let Err(e) = step {
                // The log cannot be written: nothing can be promised, so wait and retry.
                tracing::error!(receiver = %r.name, "notification outbox: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }

    async fn attempt(
        &self,
        r: &ReceiverDef,
        client: &send::Client,
        id: String,
    ) -> Result<(), NotifyError> {
        let (events, created) = {
            let st = lock(&self.inner.state);
            let Some(b) = st.batches.get(&id) else {
                return Ok(());
            };
            let events: Vec<Event> = b
                .keys
                .iter()
                .filter_map(|k| st.events.get(k).map(|e| e.event.clone()))
                .collect();
            (events, b.created)
        };
        let msg = send::Message::new(id.clone(), events, self.inner.cfg.base_url.as_deref());
        let result = send::deliver(client, r, &msg).await;
        let at = now_ms();
        let give_up = at.saturating_sub(created) > self.inner.cfg.give_up_hours * 3_600_000;
        let rec = match &result {
            Ok(()) => Rec::Sent { at, id },
            Err(e) if give_up => Rec::GaveUp {
                at,
                id,
                error: e.clone(),
            },
            Err(e) => Rec::Failed {
                at,
                id,
                error: e.clone(),
            },
        };
        {
            let mut st = lock(&self.inner.state);
            let c = st.counts.entry(r.name.clone()).or_default();
            match &result {
                Ok(()) => {
                    c.sent += 1;
                    c.last_error = None;
                }
                Err(e) => {
                    c.failed += 1;
                    c.gave_up += u64::from(give_up);
                    c.last_error = Some(e.clone());
                    tracing::warn!(receiver = %r.name, "a notification was not delivered: {e}");
                }
            }
        }
        self.record(rec).await
    }

    /// The newest `limit` events with their deliveries, newest first.
    pub fn events(&self, limit: usize) -> Vec<EventView> {
        let st = lock(&self.inner.state);
        let configured = |n: &str| self.inner.cfg.receivers.iter().any(|r| r.name == n);
        st.order
            .iter()
            .rev()
            .filter_map(|k| st.events.get(k))
            .take(limit)
            .map(|e| EventView {
                event: e.event.clone(),
                enqueued_at: e.enqueued,
                deliveries: e
                    .to
                    .iter()
                    .map(|to| {
                        let b = e
                            .batches
                            .get(to)
                            .and_then(|id| st.batches.get(id).map(|b| (id, b)));
                        let state = match b {
                            Some((_, b)) if b.sent_at.is_some() => DeliveryState::Sent,
                            Some((_, b)) if b.gave_up => DeliveryState::GaveUp,
                            _ if !configured(to) => DeliveryState::Dropped,
                            Some(_) => DeliveryState::Sending,
                            None => DeliveryState::Pending,
                        };
                        Delivery {
                            receiver: to.clone(),
                            state,
                            batch: b.map(|(id, _)| id.clone()),
                            attempts: b.map_or(0, |(_, b)| b.attempts),
                            last_error: b.and_then(|(_, b)| b.last_error.clone()),
                            sent_at: b.and_then(|(_, b)| b.sent_at),
                            next_attempt_at: b
                                .filter(|(_, b)| !State::done(b) && b.attempts > 0)
                                .map(|(_, b)| b.next_at),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every receiver with its counts.
    pub fn receivers(&self) -> Vec<ReceiverView> {
        let st = lock(&self.inner.state);
        // One pass over the events for every receiver.
        let mut waiting: BTreeMap<&str, u64> = BTreeMap::new();
        for e in st.events.values() {
            for to in &e.to {
                let done = e
                    .batches
                    .get(to)
                    .and_then(|id| st.batches.get(id))
                    .is_some_and(State::done);
                if !done {
                    *waiting.entry(to.as_str()).or_default() += 1;
                }
            }
        }
        self.inner
            .cfg
            .receivers
            .iter()
            .map(|r| {
                let waiting = waiting.get(r.name.as_str()).copied().unwrap_or(0);
                let c = st.counts.get(&r.name).cloned().unwrap_or_default();
                ReceiverView {
                    name: r.name.clone(),
                    kind: r.kind(),
                    target: r.target(),
                    waiting,
                    sent: c.sent,
                    failed_attempts: c.failed,
                    gave_up: c.gave_up,
                    last_error: c.last_error,
                }
            })
            .collect()
    }

    /// The outbox's metrics in the Prometheus text format, labelled `receiver`.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let rs = self.receivers();
        let mut out = String::new();
        for (name, help, kind, f) in [
            (
                "faultline_notifications_waiting",
                "Transitions not yet accepted by the receiver.",
                "gauge",
                (|r: &ReceiverView| r.waiting) as fn(&ReceiverView) -> u64,
            ),
            (
                "faultline_notifications_sent_total",
                "Messages the receiver accepted since start.",
                "counter",
                |r| r.sent,
            ),
            (
                "faultline_notifications_failed_attempts_total",
                "Delivery attempts that failed since start.",
                "counter",
                |r| r.failed_attempts,
            ),
            (
                "faultline_notifications_gave_up_total",
                "Messages given up after give_up_hours since start.",
                "counter",
                |r| r.gave_up,
            ),
        ] {
            // OpenMetrics names a counter's family without its `_total` suffix.
            let family = name.strip_suffix("_total").unwrap_or(name);
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
            for r in &rs {
                let _ = writeln!(out, "{name}{{receiver=\"{}\"}} {}", r.name, f(r));
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(key: &str) -> Event {
        Event {
            key: key.into(),
            kind: "probe".into(),
            subject: key.into(),
            state: "down".into(),
            at: 1_740_000_000_000,
            message: "HTTP 500, expected 200".into(),
            link: Some("/trace/00".into()),
        }
    }

    fn cfg(url: &str, group_secs: u64) -> NotifyConfig {
        NotifyConfig {
            group_secs,
            receivers: vec![ReceiverDef {
                name: "hook".into(),
                webhook: Some(config::Webhook {
                    url: url.into(),
                    headers: BTreeMap::new(),
                }),
                slack: None,
                smtp: None,
            }],
            ..NotifyConfig::default()
        }
    }

    #[test]
    fn a_known_key_is_not_enqueued_twice_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), cfg("http://127.0.0.1:9/", 10)).unwrap();
        let since = o.since_ms();
        assert!(o.enqueue(event("a")).unwrap());
        assert!(!o.enqueue(event("a")).unwrap());
        drop(o);
        let o = Outbox::open(dir.path(), cfg("http://127.0.0.1:9/", 10)).unwrap();
        assert_eq!(o.since_ms(), since, "creation time kept");
        assert!(!o.enqueue(event("a")).unwrap());
        assert!(o.enqueue(event("b")).unwrap());
        let ev = o.events(10);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event.key, "b", "newest first");
        assert_eq!(ev[0].deliveries[0].state, DeliveryState::Pending);
        assert_eq!(o.receivers()[0].waiting, 2);
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        for (n, lo, hi) in [
            (1, 800, 1200),
            (2, 1600, 2400),
            (5, 12_800, 19_200),
            (30, 240_000, 360_000),
        ] {
            let d = backoff(n).as_millis() as u64;
            assert!((lo..=hi).contains(&d), "attempt {n}: {d} ms");
        }
    }

    #[test]
    fn compaction_forgets_old_delivered_events_only() {
        let to = vec!["hook".to_string()];
        let now = 100 * DAY_MS;
        let mut st2 = State {
            since: 5,
            events: BTreeMap::new(),
            order: VecDeque::new(),
            batches: BTreeMap::new(),
            counts: BTreeMap::new(),
        };
        for r in [
            Rec::Event {
                at: 1,
                to: to.clone(),
                event: event("old-sent"),
            },
            Rec::Event {
                at: 2,
                to: to.clone(),
                event: event("old-unsent"),
            },
            Rec::Event {
                at: now - 1,
                to: to.clone(),
                event: event("new-sent"),
            },
            Rec::Batch {
                at: 3,
                id: "b1".into(),
                receiver: "hook".into(),
                keys: vec!["old-sent".into()],
            },
            Rec::Sent {
                at: 4,
                id: "b1".into(),
            },
            Rec::Batch {
                at: 3,
                id: "b2".into(),
                receiver: "hook".into(),
                keys: vec!["old-unsent".into()],
            },
            Rec::Failed {
                at: 5,
                id: "b2".into(),
                error: "HTTP 503".into(),
            },
            Rec::Batch {
                at: now,
                id: "b3".into(),
                receiver: "hook".into(),
                keys: vec!["new-sent".into()],
            },
            Rec::Sent {
                at: now,
                id: "b3".into(),
            },
        ] {
            st2.apply(&r);
        }
        let recs = st2.compacted(now, &to);
        let mut again = State {
            since: 0,
            events: BTreeMap::new(),
            order: VecDeque::new(),
            batches: BTreeMap::new(),
            counts: BTreeMap::new(),
        };
        for r in &recs {
            again.apply(r);
        }
        assert_eq!(again.since, 5);
        let keys: Vec<&String> = again.order.iter().collect();
        assert_eq!(keys, vec!["old-unsent", "new-sent"]);
        let b2 = &again.batches["b2"];
        assert_eq!(
            (b2.sent_at, b2.last_error.as_deref()),
            (None, Some("HTTP 503"))
        );
        assert!(again.batches["b3"].sent_at.is_some());
        assert!(!again.batches.contains_key("b1"));
    }

    /// A tiny HTTP receiver: answers 503 to the first `fail` requests, then 200; sends
    /// each request's idempotency key and body on `tx`.
    async fn receiver(
        fail: usize,
        tx: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    ) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let k = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((h, b)) = text.split_once("\r\n\r\n") {
                        let len: usize = h
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if b.len() >= len {
                            break (h.to_string(), b.to_string());
                        }
                    }
                };
                let key = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("idempotency-key: ")
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                n += 1;
                let status = if n <= fail {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = tx.send((key, body));
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        port
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_is_one_message_retried_with_the_same_key_until_accepted() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let port = receiver(1, tx).await;
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(&format!("http://127.0.0.1:{port}/hook"), 1);
        c.base_url = Some("https://fl.example".into());
        let o = Outbox::open(dir.path(), c).unwrap();
        o.start().unwrap();
        for k in ["a", "b", "c"] {
            assert!(o.enqueue(event(k)).unwrap());
        }
        let (k1, b1) = rx.recv().await.unwrap();
        let (k2, b2) = rx.recv().await.unwrap();
        assert_eq!(
            (k1.len(), &k1),
            (32, &k2),
            "the retry carries the first attempt's key"
        );
        assert_eq!(b1, b2);
        let v: serde_json::Value = serde_json::from_str(&b1).unwrap();
        let keys: Vec<&str> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["a", "b", "c"], "one message for the burst");
        assert_eq!(v["title"], "3 down: a, b, c");
        assert_eq!(v["events"][0]["link"], "https://fl.example/trace/00");
        // Accepted: every delivery is sent, after two attempts.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let ev = o.events(10);
            if ev
                .iter()
                .all(|e| e.deliveries[0].state == DeliveryState::Sent)
            {
                assert_eq!(ev[0].deliveries[0].attempts, 2);
                assert_eq!(ev[0].deliveries[0].batch.as_deref(), Some(k1.as_str()));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{ev:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = &o.receivers()[0];
        assert_eq!((r.sent, r.failed_attempts, r.waiting), (1, 1, 0));
        assert!(
            o.metrics_text()
                .contains("faultline_notifications_sent_total{receiver=\"hook\"} 1")
        );
        assert!(rx.try_recv().is_err(), "nothing sent twice");
    }
}
