//! One proxy: a listener, the connections it accepted, and the toxics of each direction
//! (a `watch` channel per direction that every open link follows).
//!
//! A connection dials the upstream in its own task (10 s limit, so a black-holed upstream
//! delays no other client); when the dial fails the client's connection is closed at once,
//! as Toxiproxy does. Stopping a proxy (disable, delete, a new listen or upstream) closes
//! its listener and every connection it holds.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::link::{self, Chain, End};
use crate::toxic::{Stream, Toxic};

/// How long a connection waits for its upstream.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of one proxy, kept across restarts of its listener.
#[derive(Debug, Default)]
pub struct Stats {
    pub upstream_bytes: AtomicU64,
    pub downstream_bytes: AtomicU64,
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    pub upstream_failures: AtomicU64,
}

struct Running {
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    /// A second handle on the listening socket, to close it at once on stop: aborting the
    /// accept task drops the listener only when the runtime next gets to it, and a client
    /// connecting right after a disable would still be accepted by the kernel.
    listening: Option<std::net::TcpListener>,
}

/// What a proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes, with Toxiproxy's toxics.
    Tcp,
    /// HTTP/1.1 requests, with HTTP faults and a span per request (`http.rs`).
    Http,
}

/// A proxy as the registry holds it.
pub struct Proxy {
    pub name: String,
    pub protocol: Protocol,
    sink: crate::http::SinkSlot,
    /// The address asked for, until the proxy is started; then the address bound.
    pub listen: String,
    pub upstream: String,
    pub toxics: Vec<(u64, Toxic)>,
    up: watch::Sender<Arc<Chain>>,
    down: watch::Sender<Arc<Chain>>,
    running: Option<Running>,
    pub stats: Arc<Stats>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves a listen address as Toxiproxy does (`localhost` to `127.0.0.1`, IPv4 first);
/// an empty one is loopback on a free port (Toxiproxy would listen on every interface).
pub fn resolve(listen: &str) -> Result<SocketAddr, String> {
    let listen = if listen.is_empty() {
        "127.0.0.1:0"
    } else {
        listen
    };
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| format!("listen tcp {listen}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("listen tcp {listen}: no address"))
}

impl Proxy {
    pub fn new(
        name: String,
        protocol: Protocol,
        listen: String,
        upstream: String,
        sink: crate::http::SinkSlot,
    ) -> Proxy {
        Proxy {
            name,
            protocol,
            sink,
            listen,
            upstream,
            toxics: Vec::new(),
            up: watch::Sender::new(Arc::new(Chain::default())),
            down: watch::Sender::new(Arc::new(Chain::default())),
            running: None,
            stats: Arc::new(Stats::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.running.is_some()
    }

    /// Binds the listen address and starts accepting. The error is Toxiproxy's 500 text.
    pub fn start(&mut self) -> Result<(), String> {
        if self.running.is_some() {
            return Ok(());
        }
        let addr = resolve(&self.listen)?;
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("listen tcp {addr}: {e}"))?;
        let listening = std_listener.try_clone().ok();
        let listener =
            TcpListener::from_std(std_listener).map_err(|e| format!("listen tcp {addr}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("listen tcp {addr}: {e}"))?;
        self.listen = bound.to_string();
        let (stop, stop_rx) = watch::channel(false);
        if self.protocol == Protocol::Http {
            let ctx = Arc::new(crate::http::HttpCtx {
                name: self.name.clone(),
                upstream: self.upstream.clone(),
                chain: self.down.subscribe(),
                sink: self.sink.clone(),
                client: crate::http::client(),
            });
            let (stats, name) = (self.stats.clone(), self.name.clone());
            let accept = tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((c, _)) => {
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(crate::http::connection(c, ctx.clone(), stop_rx.clone()));
                        }
                        Err(e) => {
                            tracing::warn!(proxy = %name, error = %e, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
            self.running = Some(Running {
                stop,
                accept,
                listening,
            });
            return Ok(());
        }
        let ctx = ConnCtx {
            upstream: self.upstream.clone(),
            up: self.up.subscribe(),
            down: self.down.subscribe(),
            stop: stop_rx,
            stats: self.stats.clone(),
            name: self.name.clone(),
        };
        let accept = tokio::spawn(accept_loop(listener, ctx));
        self.running = Some(Running {
            stop,
            accept,
            listening,
        });
        Ok(())
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            // shutdown(2) on a listening socket stops it listening now (Linux): new
            // connections are refused before this returns.
            if let Some(l) = &r.listening {
                let _ = rustix::net::shutdown(l, rustix::net::Shutdown::Both);
            }
            let _ = r.stop.send(true);
            r.accept.abort();
        }
    }

    /// Publishes the toxics to the open links of both directions.
    pub fn publish(&self) {
        for (stream, tx) in [
            (Stream::Upstream, &self.up),
            (Stream::Downstream, &self.down),
        ] {
            let toxics = self
                .toxics
                .iter()
                .filter(|(_, t)| t.stream == stream)
                .cloned()
                .collect();
            tx.send_replace(Arc::new(Chain { toxics }));
        }
    }

    /// Toxiproxy's order: upstream toxics first, then downstream, each in creation order.
    pub fn toxics_in_order(&self) -> Vec<&Toxic> {
        let mut out: Vec<&Toxic> = self
            .toxics
            .iter()
            .filter(|(_, t)| t.stream == Stream::Upstream)
            .map(|(_, t)| t)
            .collect();
        out.extend(
            self.toxics
                .iter()
                .filter(|(_, t)| t.stream == Stream::Downstream)
                .map(|(_, t)| t),
        );
        out
    }
}

#[derive(Clone)]
struct ConnCtx {
    upstream: String,
    up: watch::Receiver<Arc<Chain>>,
    down: watch::Receiver<Arc<Chain>>,
    stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
    name: String,
}

async fn accept_loop(listener: TcpListener, ctx: ConnCtx) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(client, ctx.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(proxy = %ctx.name, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Counts an open connection for as long as it lives.
struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(client: TcpStream, mut ctx: ConnCtx) {
    ctx.stats.open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(ctx.stats.clone());
    let dial = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(ctx.upstream.as_str()));
    let upstream = tokio::select! {
        r = dial => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                ctx.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(proxy = %ctx.name, upstream = %ctx.upstream, error = %e, "cannot reach the upstream; closing the client");
                return;
            }
            Err(_) => {
                ctx.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
        _ = ctx.stop.changed() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let stats = ctx.stats.clone();
    let reset = {
        let up = link::run(&mut cr, &mut uw, ctx.up.clone(), &stats.upstream_bytes);
        let down = link::run(&mut ur, &mut cw, ctx.down.clone(), &stats.downstream_bytes);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            if up_done && down_done {
                break false;
            }
            let ended = tokio::select! {
                r = &mut up, if !up_done => { up_done = true; r }
                r = &mut down, if !down_done => { down_done = true; r }
                _ = ctx.stop.changed() => break false,
            };
            match ended {
                Ok(End::Eof) => {}
                Ok(End::Reset) => break true,
                // A toxic's close, or an error, ends both directions.
                Ok(End::Close) | Err(_) => break false,
            }
        }
    };
    if reset {
        // SO_LINGER 0 makes the close send RST; the write halves must not send a FIN
        // first when they are dropped, so they leave the closing to the read halves.
        let _ = cr.as_ref().set_zero_linger();
        let _ = ur.as_ref().set_zero_linger();
        cw.forget();
        uw.forget();
    }
}
