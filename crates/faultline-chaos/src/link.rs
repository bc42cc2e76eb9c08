//! One direction of one proxied connection: read a chunk from one socket, pass it through
//! the toxics of that direction, write what comes out to the other socket.
//!
//! A link is one task-local event loop, no extra tasks or channels: chunks read are
//! scheduled as pieces with a due time in a queue (per-chunk latency counts from the
//! chunk's arrival, so a stream is not delayed cumulatively), and the loop waits for
//! whichever comes first: the proxy's toxics changing, the next piece falling due, a
//! toxic's deadline (idle timeout, reset), or more data (only while less than
//! [`MAX_QUEUED`] bytes wait, so a slowed direction pushes back on its sender). With no
//! toxic and nothing queued a chunk is written straight from the read buffer.
//!
//! Toxic changes reach open connections: each toxic's toxicity is drawn per link when the
//! link starts or the toxic is added or updated, and data stalled by a toxic that is
//! removed is sent at once. Removing a `timeout` toxic closes the connection (its data was
//! discarded, so the stream cannot be resumed). Unlike Toxiproxy, an end of stream is
//! passed on as a half-close (the other direction goes on until it ends too), and
//! `reset_peer` resets every connection it acts on, including those open before it was
//! added.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::toxic::{Kind, Toxic};

/// Bytes a link holds in its queue before it stops reading.
pub const MAX_QUEUED: usize = 4 << 20;

/// Size of a read.
const CHUNK: usize = 32 << 10;

/// A direction's toxics as the proxy holds them; `id` changes when a toxic is updated.
#[derive(Debug, Default)]
pub struct Chain {
    pub toxics: Vec<(u64, Toxic)>,
}

/// How a link ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The source ended and everything was delivered; the destination was half-closed.
    Eof,
    /// A toxic closed the connection (timeout, limit_data, down).
    Close,
    /// A toxic reset the connection: the caller closes both sockets with RST.
    Reset,
}

struct Piece {
    due: Instant,
    data: Bytes,
}

/// A toxic as one link applies it.
struct Applied {
    id: u64,
    toxic: Toxic,
    /// The toxicity draw of this link.
    on: bool,
}

struct State {
    toxics: Vec<Applied>,
    queue: VecDeque<Piece>,
    queued: usize,
    /// When the bandwidth toxic next lets a byte through.
    bw_free: Instant,
    /// Bytes passed per limit_data toxic (by name: an update keeps the count).
    limit_counts: HashMap<String, u64>,
    /// The timeout toxic closes the connection at this time (restarted by each chunk).
    idle_close: Option<Instant>,
    /// The reset_peer toxic resets the connection at this time.
    reset_at: Option<Instant>,
    /// Close once the queue is empty (limit_data reached).
    close_when_sent: bool,
    eof: bool,
    /// After an end of stream, do not pass it on before this time (slow_close).
    finish_at: Option<Instant>,
}

/// A time far enough away to mean "never" (a stalled bandwidth of 0).
fn far(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 86_400)
}

impl State {
    fn new() -> State {
        let now = Instant::now();
        State {
            toxics: Vec::new(),
            queue: VecDeque::new(),
            queued: 0,
            bw_free: now,
            limit_counts: HashMap::new(),
            idle_close: None,
            reset_at: None,
            close_when_sent: false,
            eof: false,
            finish_at: None,
        }
    }

    fn passthrough(&self) -> bool {
        self.queue.is_empty() && !self.toxics.iter().any(|a| a.on)
    }

    fn active(&self) -> impl Iterator<Item = &Toxic> {
        self.toxics.iter().filter(|a| a.on).map(|a| &a.toxic)
    }

    /// Takes a new chain: draws toxicity for new and updated toxics, starts their timers,
    /// releases stalled data. Returns an end when the change closes the connection.
    fn rechain(&mut self, chain: &Chain, now: Instant) -> Option<End> {
        let mut next = Vec::with_capacity(chain.toxics.len());
        for (id, t) in &chain.toxics {
            let old = self.toxics.iter().find(|a| a.id == *id);
            let on = match old {
                Some(a) => a.on,
                None => rand::random::<f32>() < t.toxicity,
            };
            next.push(Applied {
                id: *id,
                toxic: t.clone(),
                on,
            });
            if old.is_none() && on {
                match t.kind {
                    Kind::Down => return Some(End::Close),
                    Kind::Timeout { timeout } if timeout > 0 => {
                        self.idle_close = Some(now + Duration::from_millis(timeout));
                    }
                    _ => {}
                }
            }
            if old.is_none() && matches!(t.kind, Kind::LimitData { .. }) {
                // A toxic added afresh (not an update of one with the same name) counts anew.
                if !self.toxics.iter().any(|a| a.toxic.name == t.name) {
                    self.limit_counts.remove(&t.name);
                }
            }
        }
        for gone in self
            .toxics
            .iter()
            .filter(|a| !chain.toxics.iter().any(|(_, t)| t.name == a.toxic.name))
        {
            if matches!(gone.toxic.kind, Kind::Timeout { .. }) {
                return Some(End::Close);
            }
        }
        self.toxics = next;
        if !self
            .active()
            .any(|t| matches!(t.kind, Kind::Timeout { timeout } if timeout > 0))
        {
            self.idle_close = None;
        }
        if !self
            .active()
            .any(|t| matches!(t.kind, Kind::ResetPeer { .. }))
        {
            self.reset_at = None;
        }
        if !self
            .active()
            .any(|t| matches!(t.kind, Kind::Bandwidth { rate: 0 }))
        {
            let limit = far(now) - Duration::from_secs(86_400);
            for p in self.queue.iter_mut().filter(|p| p.due > limit) {
                p.due = now;
            }
            self.bw_free = self.bw_free.min(now);
        }
        None
    }

    /// Passes a chunk read at `now` through the active toxics into the queue.
    fn on_chunk(&mut self, data: Bytes, now: Instant) {
        let mut pieces = vec![Piece { due: now, data }];
        let toxics: Vec<Toxic> = self.active().cloned().collect();
        for t in &toxics {
            match t.kind {
                Kind::Latency { latency, jitter } => {
                    for p in &mut pieces {
                        p.due += jittered(latency, jitter);
                    }
                }
                Kind::Bandwidth { rate } => pieces = self.bandwidth(pieces, rate, now),
                Kind::Slicer {
                    average_size,
                    size_variation,
                    delay,
                } => pieces = slice(pieces, average_size, size_variation, delay),
                Kind::LimitData { bytes } => {
                    let count = self.limit_counts.entry(t.name.clone()).or_insert(0);
                    let mut kept = Vec::new();
                    for mut p in pieces {
                        let left = bytes.saturating_sub(*count) as usize;
                        if p.data.len() >= left {
                            p.data.truncate(left);
                            *count = bytes;
                            self.close_when_sent = true;
                            if !p.data.is_empty() {
                                kept.push(p);
                            }
                            break;
                        }
                        *count += p.data.len() as u64;
                        kept.push(p);
                    }
                    pieces = kept;
                }
                Kind::Timeout { timeout } => {
                    pieces.clear();
                    if timeout > 0 {
                        self.idle_close = Some(now + Duration::from_millis(timeout));
                    }
                }
                Kind::ResetPeer { timeout } => {
                    pieces.clear();
                    self.reset_at
                        .get_or_insert(now + Duration::from_millis(timeout));
                }
                Kind::SlowClose { .. } | Kind::Noop | Kind::Down => {}
                // HTTP faults act in `http.rs`; a TCP link passes data by.
                Kind::HttpError { .. } | Kind::HttpDelay { .. } | Kind::HttpAbort { .. } => {}
            }
        }
        // A chunk waits behind the one before it, keeping its pieces' spacing (a slicer's
        // delays, a bandwidth's pace): clamping each piece alone would send the rest of a
        // chunk at once once it fell behind.
        let mut last = self.queue.back().map_or(now, |p| p.due);
        let shift = pieces
            .first()
            .map_or(Duration::ZERO, |f| last.saturating_duration_since(f.due));
        for mut p in pieces {
            p.due = (p.due + shift).max(last);
            last = p.due;
            self.queued += p.data.len();
            self.queue.push_back(p);
        }
    }

    /// Paces pieces at `rate` KB/s (1 KB = 1000 bytes) in slices of at most 100 ms.
    fn bandwidth(&mut self, pieces: Vec<Piece>, rate: u64, now: Instant) -> Vec<Piece> {
        if rate == 0 {
            return pieces
                .into_iter()
                .map(|p| Piece {
                    due: far(now),
                    data: p.data,
                })
                .collect();
        }
        let slice = (rate * 100).max(1) as usize;
        let mut out = Vec::new();
        for p in pieces {
            let mut data = p.data;
            while !data.is_empty() {
                let part = data.split_to(slice.min(data.len()));
                let start = self.bw_free.max(p.due);
                // Each byte costs 1/rate ms.
                let cost = Duration::from_nanos(part.len() as u64 * 1_000_000 / rate);
                self.bw_free = start + cost;
                out.push(Piece {
                    due: self.bw_free,
                    data: part,
                });
            }
        }
        out
    }

    fn on_eof(&mut self, now: Instant) -> Option<End> {
        self.eof = true;
        let toxics: Vec<Toxic> = self.active().cloned().collect();
        for t in toxics {
            match t.kind {
                Kind::Timeout { .. } => return Some(End::Close),
                Kind::ResetPeer { timeout } => {
                    self.reset_at
                        .get_or_insert(now + Duration::from_millis(timeout));
                }
                Kind::SlowClose { delay } => {
                    self.finish_at = Some(now + Duration::from_millis(delay));
                }
                _ => {}
            }
        }
        None
    }

    /// The next time a toxic acts without data: reset, idle close, or a delayed end.
    fn deadline(&self) -> Option<Instant> {
        [self.reset_at, self.idle_close, self.finish_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// `latency` ms plus a uniform draw in [-jitter, +jitter] ms, at least 0.
fn jittered(latency: u64, jitter: u64) -> Duration {
    let ms = if jitter == 0 {
        latency as i64
    } else {
        let j = jitter as i64;
        latency as i64 + rand::random_range(-j..=j)
    };
    Duration::from_millis(ms.max(0) as u64)
}

/// Cuts each piece into slices of about `average` bytes (± `variation`), `delay` µs apart.
fn slice(pieces: Vec<Piece>, average: u64, variation: u64, delay: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    for p in pieces {
        let mut due = p.due;
        let mut data = p.data;
        while !data.is_empty() {
            let size = if variation == 0 {
                average
            } else {
                let v = variation as i64;
                (average as i64 + rand::random_range(-v..=v)).max(1) as u64
            };
            let part = data.split_to((size as usize).min(data.len()));
            out.push(Piece { due, data: part });
            due += Duration::from_micros(delay);
        }
    }
    out
}

/// Runs one direction until it ends. `bytes` counts what was delivered.
pub async fn run(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut chain: watch::Receiver<Arc<Chain>>,
    bytes: &AtomicU64,
) -> std::io::Result<End> {
    let mut st = State::new();
    let first = chain.borrow_and_update().clone();
    if let Some(end) = st.rechain(&first, Instant::now()) {
        return Ok(end);
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let now = Instant::now();
        if st.queue.is_empty() {
            if st.close_when_sent {
                return Ok(End::Close);
            }
            if st.eof && st.finish_at.is_none_or(|f| f <= now) && st.reset_at.is_none() {
                let _ = to.shutdown().await;
                return Ok(End::Eof);
            }
        }
        let due = st.queue.front().map(|p| p.due);
        let deadline = st.deadline();
        let can_read = !st.eof && !st.close_when_sent && st.queued < MAX_QUEUED;
        tokio::select! {
            biased;
            changed = chain.changed() => {
                if changed.is_err() {
                    return Ok(End::Close);
                }
                let c = chain.borrow_and_update().clone();
                if let Some(end) = st.rechain(&c, Instant::now()) {
                    return Ok(end);
                }
            }
            _ = sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => {
                let now = Instant::now();
                if st.reset_at.is_some_and(|r| r <= now) {
                    return Ok(End::Reset);
                }
                if st.idle_close.is_some_and(|c| c <= now) {
                    return Ok(End::Close);
                }
                if st.finish_at.is_some_and(|f| f <= now) {
                    st.finish_at = None;
                }
            }
            _ = sleep_until(due.unwrap_or(now)), if due.is_some() => {
                if let Some(p) = st.queue.pop_front() {
                    st.queued -= p.data.len();
                    to.write_all(&p.data).await?;
                    bytes.fetch_add(p.data.len() as u64, Ordering::Relaxed);
                }
            }
            r = from.read(&mut buf), if can_read => {
                match r? {
                    0 => {
                        if let Some(end) = st.on_eof(Instant::now()) {
                            return Ok(end);
                        }
                    }
                    n if st.passthrough() => {
                        to.write_all(&buf[..n]).await?;
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    n => st.on_chunk(Bytes::copy_from_slice(&buf[..n]), Instant::now()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toxic::Stream;

    fn toxic(kind: Kind) -> Toxic {
        Toxic {
            name: kind.type_name().into(),
            kind,
            stream: Stream::Downstream,
            toxicity: 1.0,
            route: Default::default(),
        }
    }

    fn chain(toxics: Vec<Toxic>) -> Chain {
        Chain {
            toxics: toxics
                .into_iter()
                .enumerate()
                .map(|(i, t)| (i as u64, t))
                .collect(),
        }
    }

    #[test]
    fn latency_counts_from_each_chunks_arrival() {
        let mut st = State::new();
        let t0 = Instant::now();
        st.rechain(
            &chain(vec![toxic(Kind::Latency {
                latency: 100,
                jitter: 0,
            })]),
            t0,
        );
        st.on_chunk(Bytes::from_static(b"a"), t0);
        st.on_chunk(Bytes::from_static(b"b"), t0 + Duration::from_millis(10));
        let dues: Vec<Duration> = st.queue.iter().map(|p| p.due - t0).collect();
        assert_eq!(
            dues,
            [Duration::from_millis(100), Duration::from_millis(110)]
        );
    }

    #[test]
    fn a_chunk_behind_another_keeps_its_pieces_spacing() {
        let mut st = State::new();
        let t0 = Instant::now();
        st.rechain(
            &chain(vec![toxic(Kind::Slicer {
                average_size: 2,
                size_variation: 0,
                delay: 1000,
            })]),
            t0,
        );
        // Two chunks read at once: the second's pieces follow the first's, 1 ms apart.
        st.on_chunk(Bytes::from_static(b"aaaa"), t0);
        st.on_chunk(Bytes::from_static(b"bbbb"), t0);
        let dues: Vec<Duration> = st.queue.iter().map(|p| p.due - t0).collect();
        assert_eq!(
            dues,
            [0, 1, 1, 2].map(Duration::from_millis).to_vec(),
            "{dues:?}"
        );
    }

    #[test]
    fn bandwidth_paces_and_zero_stalls_until_removed() {
        let mut st = State::new();
        let t0 = Instant::now();
        st.rechain(&chain(vec![toxic(Kind::Bandwidth { rate: 10 })]), t0);
        // 10 KB/s: 2,500 bytes in slices of 1,000 (100 ms each), 250 ms in all.
        st.on_chunk(Bytes::from(vec![0u8; 2500]), t0);
        let dues: Vec<Duration> = st.queue.iter().map(|p| p.due - t0).collect();
        assert_eq!(
            dues,
            [100, 200, 250].map(Duration::from_millis).to_vec(),
            "{dues:?}"
        );
        let mut st = State::new();
        st.rechain(&chain(vec![toxic(Kind::Bandwidth { rate: 0 })]), t0);
        st.on_chunk(Bytes::from_static(b"held"), t0);
        assert!(st.queue[0].due > t0 + Duration::from_secs(86_400));
        st.rechain(&chain(vec![]), t0 + Duration::from_secs(1));
        assert_eq!(st.queue[0].due, t0 + Duration::from_secs(1));
    }

    #[test]
    fn limit_data_truncates_and_closes_and_keeps_its_count_across_updates() {
        let mut st = State::new();
        let t0 = Instant::now();
        let limit = |bytes| toxic(Kind::LimitData { bytes });
        st.rechain(&chain(vec![limit(10)]), t0);
        st.on_chunk(Bytes::from_static(b"123456"), t0);
        assert!(!st.close_when_sent);
        // An update (new id, same name) keeps the 6 bytes counted.
        st.rechain(
            &Chain {
                toxics: vec![(7, limit(8))],
            },
            t0,
        );
        st.on_chunk(Bytes::from_static(b"abcdef"), t0);
        let sent: Vec<&[u8]> = st.queue.iter().map(|p| &p.data[..]).collect();
        assert_eq!(sent, [&b"123456"[..], &b"ab"[..]]);
        assert!(st.close_when_sent);
    }

    #[test]
    fn timeout_discards_and_its_removal_closes() {
        let mut st = State::new();
        let t0 = Instant::now();
        st.rechain(&chain(vec![toxic(Kind::Timeout { timeout: 50 })]), t0);
        assert_eq!(st.idle_close, Some(t0 + Duration::from_millis(50)));
        st.on_chunk(Bytes::from_static(b"lost"), t0 + Duration::from_millis(20));
        assert!(st.queue.is_empty());
        assert_eq!(st.idle_close, Some(t0 + Duration::from_millis(70)));
        assert_eq!(st.rechain(&chain(vec![]), t0), Some(End::Close));
    }

    #[test]
    fn slicer_cuts_into_delayed_pieces_and_toxicity_zero_never_acts() {
        let mut st = State::new();
        let t0 = Instant::now();
        st.rechain(
            &chain(vec![toxic(Kind::Slicer {
                average_size: 4,
                size_variation: 0,
                delay: 1000,
            })]),
            t0,
        );
        st.on_chunk(Bytes::from_static(b"0123456789"), t0);
        let got: Vec<(Duration, &[u8])> =
            st.queue.iter().map(|p| (p.due - t0, &p.data[..])).collect();
        assert_eq!(
            got,
            [
                (Duration::ZERO, &b"0123"[..]),
                (Duration::from_millis(1), &b"4567"[..]),
                (Duration::from_millis(2), &b"89"[..]),
            ]
        );
        let mut st = State::new();
        let mut down = toxic(Kind::Down);
        down.toxicity = 0.0;
        assert_eq!(st.rechain(&chain(vec![down.clone()]), t0), None);
        assert!(st.passthrough());
        down.toxicity = 1.0;
        let mut st = State::new();
        assert_eq!(st.rechain(&chain(vec![down]), t0), Some(End::Close));
    }
}
