//! [`Incoming`]: a bound TCP listener whose connections come out ready to serve, TLS
//! handshakes done (when TLS is on), `TCP_NODELAY` set. One task accepts; each TLS
//! handshake runs in a task of its own, bounded in number and time, so a slow or hostile
//! client never holds up the others. It is an axum [`Listener`](axum::serve::Listener)
//! (the HTTP servers) and a stream of connections (tonic's `serve_with_incoming`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::{Role, Tls};

/// Handshakes in progress on one listener at most; more connections wait in the kernel's
/// backlog.
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshake failures are logged at most this often per listener (all are counted).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Whether the client presented a certificate our client CA issued.
    pub client_cert: bool,
}

/// A served connection: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connections accepted on one listener (see the module's documentation).
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<(Conn, Peer)>,
    local: SocketAddr,
    tls: bool,
}

impl Incoming {
    /// Starts accepting on `l` (on the current runtime); with `tls`, each connection's
    /// handshake uses the configuration for `role`. `name` labels the listener in logs and
    /// in `faultline_tls_handshake_failures_total`.
    pub fn new(
        l: TcpListener,
        tls: Option<&Tls>,
        role: Role,
        name: &'static str,
    ) -> io::Result<Self> {
        let local = l.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let tls_on = tls.is_some();
        let tls = tls.map(|t| Handshakes {
            tls: t.clone(),
            role,
            name,
            permits: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            last_warn: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        });
        tokio::spawn(accept_loop(l, tls, tx, name));
        Ok(Incoming {
            rx,
            local,
            tls: tls_on,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[derive(Clone)]
struct Handshakes {
    tls: Tls,
    role: Role,
    name: &'static str,
    permits: Arc<Semaphore>,
    last_warn: Arc<AtomicU64>,
    epoch: Instant,
}

impl Handshakes {
    fn start(&self, tcp: TcpStream, addr: SocketAddr, tx: mpsc::Sender<(Conn, Peer)>) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Too many at once: this one is dropped (counted) rather than queued forever.
            self.failed(addr, "too many TLS handshakes in progress");
            return;
        };
        let acceptor = TlsAcceptor::from(self.tls.config(self.role));
        let me = self.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            match r {
                Ok(Ok(s)) => {
                    let client_cert = s.get_ref().1.peer_certificates().is_some();
                    let peer = Peer {
                        addr,
                        tls: true,
                        client_cert,
                    };
                    let _ = tx.send((Conn::Tls(Box::new(s)), peer)).await;
                }
                Ok(Err(e)) => me.failed(addr, &e.to_string()),
                Err(_) => me.failed(addr, "the client did not finish the handshake within 10 s"),
            }
        });
    }

    fn failed(&self, addr: SocketAddr, why: &str) {
        self.tls.handshake_failed(self.name);
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.last_warn.load(Ordering::Relaxed);
        if (last == 0 || now >= last + WARN_EVERY.as_secs())
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                listener = self.name, client = %addr, error = why,
                "TLS handshake failed (a plaintext client, or a certificate the other side does not trust?); further failures are counted in faultline_tls_handshake_failures_total and logged at most every 10 s"
            );
        } else {
            tracing::debug!(listener = self.name, client = %addr, error = why, "TLS handshake failed");
        }
    }
}

async fn accept_loop(
    l: TcpListener,
    tls: Option<Handshakes>,
    tx: mpsc::Sender<(Conn, Peer)>,
    name: &'static str,
) {
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            _ = tx.closed() => return,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(listener = name, error = %e, "cannot accept connections; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match &tls {
            Some(h) => h.start(tcp, addr, tx.clone()),
            None => {
                let peer = Peer {
                    addr,
                    tls: false,
                    client_cert: false,
                };
                if tx.send((Conn::Plain(tcp), peer)).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task ended (it only does when this side is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            tls: self.tls,
            client_cert: false,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        *s.remote_addr()
    }
}

/// Tonic's incoming connections.
impl futures_core::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(|(c, _)| Ok(c)))
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = self.tcp();
        tonic::transport::server::TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(t) => t,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(t) => t.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
