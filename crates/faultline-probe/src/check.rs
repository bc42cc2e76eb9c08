//! One check of one probe: resolve the host, connect, (HTTPS) shake hands, (HTTP) send
//! the request with the probe's `traceparent`, wait for the first byte and read the body;
//! or (DNS) ask a server one question. Each phase is timed, and a failure said in words
//! with the phase it happened in. A check never outlives its timeout: on expiry it fails
//! with the phase it was in.
//!
//! HTTP is spoken with hyper's HTTP/1 client over a connection opened here, so each phase
//! is measured where it happens (a pooled client would hide DNS and connect). TLS is
//! rustls (ring provider) verifying against Mozilla's roots (webpki-roots) plus the
//! probe's `ca_file`; the earliest `notAfter` of the chain the server presents is kept
//! (`probe_ssl_earliest_cert_expiry`), and a chain expiring within
//! `tls_expiry_warning_days` passes with a warning. DNS messages are hickory-proto's,
//! sent over UDP (again over TCP when truncated) or TCP.
//!
//! Every target is held to the probe policy ([`Policy`]) before anything is sent to it:
//! the host as written, then every address it resolves to, the check connecting to the
//! very address judged (the first allowed; a name is resolved once per check, redirects
//! included, so it cannot be rebound to another address in between); a redirect's target
//! is judged before it is followed; an explicit DNS server is judged before it is asked
//! (the system's nameserver, which the probe does not choose, is not). A refusal fails
//! the check with the rule and how to allow it. A response body is read up to the
//! policy's `max_body_bytes`; a longer one fails the check.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use crate::def::{DnsTarget, HttpTarget, HttpUrl, TcpTarget};
use crate::policy::Policy;

/// A phase of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Name resolution.
    Dns,
    /// TCP connect.
    Connect,
    /// TLS handshake.
    Tls,
    /// Request sent until the response's status line and headers.
    FirstByte,
    /// The response body.
    Body,
}

impl Phase {
    /// Every phase, in the order a check goes through them.
    pub const ALL: [Self; 5] = [
        Self::Dns,
        Self::Connect,
        Self::Tls,
        Self::FirstByte,
        Self::Body,
    ];

    /// Its name in results, events and metrics (as blackbox_exporter's `phase` label,
    /// where it has one: `resolve`, `connect`, `processing`, `transfer`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "resolve",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::FirstByte => "processing",
            Self::Body => "transfer",
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Whether it passed.
    pub ok: bool,
    /// Each phase completed, in order, with its duration.
    pub phases: Vec<(Phase, Duration)>,
    /// Start to end.
    pub total: Duration,
    /// The final HTTP status, if a response came.
    pub status: Option<u16>,
    /// The address connected to.
    pub address: Option<SocketAddr>,
    /// Redirects followed.
    pub redirects: u8,
    /// Why it failed.
    pub error: Option<String>,
    /// The earliest expiry of the server's certificate chain (https), Unix seconds.
    pub cert_not_after: Option<i64>,
    /// Something to act on although the check passed (a certificate about to expire).
    pub warning: Option<String>,
}

/// Where a check is, so a timeout can say which phase it cut short.
#[derive(Default)]
struct Progress {
    outcome: Outcome,
    phase: Option<Phase>,
    phase_start: Option<Instant>,
}

impl Progress {
    fn begin(&mut self, p: Phase) {
        self.phase = Some(p);
        self.phase_start = Some(Instant::now());
    }

    fn end(&mut self) {
        if let (Some(p), Some(s)) = (self.phase.take(), self.phase_start.take()) {
            self.outcome.phases.push((p, s.elapsed()));
        }
    }
}

/// Runs `work` with `timeout`; fills in the total, and on expiry the phase cut short.
async fn timed(
    timeout: Duration,
    work: impl AsyncFnOnce(&mut Progress) -> Result<(), String>,
) -> Outcome {
    let started = Instant::now();
    let mut p = Progress::default();
    let result = tokio::time::timeout(timeout, work(&mut p)).await;
    let mut o = std::mem::take(&mut p.outcome);
    o.total = started.elapsed();
    match result {
        Ok(Ok(())) => o.ok = true,
        Ok(Err(e)) => o.error = Some(e),
        Err(_) => {
            o.error = Some(format!(
                "timed out after {:.1} s during {}",
                timeout.as_secs_f64(),
                p.phase.map_or("the check", Phase::as_str)
            ))
        }
    }
    o
}

/// Resolves `host:port` to the first of its addresses `policy` allows: the host is judged
/// as written first (a refused name is not even looked up), then each address.
async fn resolve(
    p: &mut Progress,
    policy: &Policy,
    host: &str,
    port: u16,
) -> Result<SocketAddr, String> {
    p.begin(Phase::Dns);
    policy
        .judge_host(host)
        .map_err(|r| format!("refused, not resolved or connected: {r}"))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut refused = None;
    for a in &addrs {
        match policy.judge_resolved(host, a.ip()) {
            Ok(()) => {
                p.end();
                return Ok(*a);
            }
            Err(r) => {
                refused.get_or_insert(r);
            }
        }
    }
    let Some(r) = refused else {
        return Err(format!("{host} resolves to no address"));
    };
    let all: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    Err(format!(
        "refused in resolve, not connected: {host} resolves to {}, none of them allowed; {r}",
        all.join(", ")
    ))
}

async fn connect(p: &mut Progress, addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    p.begin(Phase::Connect);
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    p.end();
    p.outcome.address = Some(addr);
    Ok(s)
}

/// A TCP connect check.
pub async fn tcp(t: &TcpTarget, timeout: Duration, policy: &Policy) -> Outcome {
    timed(timeout, async |p: &mut Progress| {
        let addr = resolve(p, policy, &t.host, t.port).await?;
        connect(p, addr).await.map(drop)
    })
    .await
}

/// An HTTP check sending `traceparent`.
pub async fn http(
    t: &HttpTarget,
    traceparent: &str,
    timeout: Duration,
    policy: &Policy,
) -> Outcome {
    timed(timeout, async |p: &mut Progress| {
        let first = HttpUrl::parse(&t.url)?;
        let mut url = first.clone();
        // Resolved once: redirects stay on this host, and go to this address.
        let ip = resolve(p, policy, &first.host, first.port).await?.ip();
        loop {
            let addr = SocketAddr::new(ip, url.port);
            let (status, location, body) = exchange(p, t, &url, addr, traceparent, policy).await?;
            p.outcome.status = Some(status);
            if (300..400).contains(&status)
                && let Some(loc) = location
                && t.expect_status.iter().all(|s| *s != status)
            {
                if p.outcome.redirects >= t.max_redirects {
                    return Err(format!(
                        "HTTP {status}: more than {} redirects",
                        t.max_redirects
                    ));
                }
                url = redirect(policy, &first, &url, status, &loc, ip)?;
                p.outcome.redirects += 1;
                continue;
            }
            verdict(t, status, &body)?;
            warn_expiry(p, t);
            return Ok(());
        }
    })
    .await
}

/// The URL a redirect from `url` leads to, if the probe may follow it: its target judged
/// by `policy` (the host as written, and the address it would be sent to), and on the
/// host and port the probe names (or the upgrade from http on 80 to https on 443).
fn redirect(
    policy: &Policy,
    first: &HttpUrl,
    url: &HttpUrl,
    status: u16,
    location: &str,
    ip: std::net::IpAddr,
) -> Result<HttpUrl, String> {
    let next = follow(url, location)?;
    let refused = |why: String| {
        format!("redirect refused, not followed: HTTP {status} to {location:?}; {why}")
    };
    policy
        .judge_host(&next.host)
        .map_err(|r| refused(r.to_string()))?;
    let upgrade = !first.tls && first.port == 80 && next.tls && next.port == 443;
    if next.host != first.host || (next.port != first.port && !upgrade) {
        return Err(refused(format!(
            "it leads to {}, which the probe does not name; probe that address itself",
            next.authority()
        )));
    }
    // The same host, so the address resolved for it; judged again in case the policy is
    // ever asked to follow another host.
    policy
        .judge_resolved(&next.host, ip)
        .map_err(|r| refused(r.to_string()))?;
    Ok(next)
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The warning for a chain expiring within `tls_expiry_warning_days`.
fn warn_expiry(p: &mut Progress, t: &HttpTarget) {
    let Some(not_after) = p.outcome.cert_not_after else {
        return;
    };
    let left = not_after - unix_now();
    if t.tls_expiry_warning_days > 0 && left < i64::from(t.tls_expiry_warning_days) * 86_400 {
        p.outcome.warning = Some(format!(
            "the certificate expires in {:.1} days, within the {}-day warning",
            left as f64 / 86_400.0,
            t.tls_expiry_warning_days
        ));
    }
}

/// Whether a final response passes.
fn verdict(t: &HttpTarget, status: u16, body: &[u8]) -> Result<(), String> {
    let status_ok = if t.expect_status.is_empty() {
        (200..400).contains(&status)
    } else {
        t.expect_status.contains(&status)
    };
    if !status_ok {
        let want = if t.expect_status.is_empty() {
            "2xx or 3xx".to_string()
        } else {
            format!("{:?}", t.expect_status)
        };
        return Err(format!("HTTP {status}, expected {want}"));
    }
    if let Some(want) = &t.expect_body {
        let text = String::from_utf8_lossy(body);
        if !text.contains(want.as_str()) {
            let shown: String = text.chars().take(80).collect();
            return Err(format!(
                "the body does not contain {want:?} (it starts {shown:?})"
            ));
        }
    }
    Ok(())
}

/// The URL a `Location` points to, relative to `base`.
fn follow(base: &HttpUrl, location: &str) -> Result<HttpUrl, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return HttpUrl::parse(location);
    }
    if location.starts_with("//") {
        // Another host, with this scheme.
        let scheme = if base.tls { "https:" } else { "http:" };
        return HttpUrl::parse(&format!("{scheme}{location}"));
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path.rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    Ok(HttpUrl {
        path,
        ..base.clone()
    })
}

/// One request and response on a fresh connection to `addr` (`url`'s host, resolved and
/// judged): (status, Location, body).
async fn exchange(
    p: &mut Progress,
    t: &HttpTarget,
    url: &HttpUrl,
    addr: SocketAddr,
    traceparent: &str,
    policy: &Policy,
) -> Result<(u16, Option<String>, Bytes), String> {
    let stream = connect(p, addr).await?;
    let io: Box<dyn Io> = if url.tls {
        Box::new(tls(p, stream, &url.host, t.ca_file.as_deref()).await?)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
    // The connection is driven beside the request; it ends when the exchange does.
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(t.method.as_str())
        .uri(url.path.as_str())
        .header(hyper::header::HOST, url.authority())
        .header("traceparent", traceparent)
        .header(hyper::header::USER_AGENT, "faultline-probe")
        .header(hyper::header::CONNECTION, "close");
    for (k, v) in &t.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(t.body.clone().unwrap_or_default())))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    p.begin(Phase::FirstByte);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("no HTTP response from {addr}: {e}"))?;
    p.end();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    p.begin(Phase::Body);
    let max = policy.max_body_bytes();
    let body = Limited::new(resp.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                format!(
                    "the response body is larger than {max} bytes, the most a probe reads; probe a smaller page or raise [probe_policy] max_body_bytes"
                )
            } else {
                format!("reading the response body failed: {e}")
            }
        })?
        .to_bytes();
    p.end();
    driver.abort();
    Ok((status, location, body))
}

/// A connection hyper can speak over: plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The TLS client configuration: Mozilla's roots and the CAs of `ca_file`.
async fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(f) = ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = tokio::fs::read(f)
            .await
            .map_err(|e| format!("cannot read http.ca_file {f}: {e}"))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("http.ca_file {f} is not PEM certificates: {e}"))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("http.ca_file {f} holds no usable CA certificate"));
        }
    }
    let mut c = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot set up TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// The TLS handshake, verifying the chain for `host`; keeps the chain's earliest expiry.
async fn tls(
    p: &mut Progress,
    stream: tokio::net::TcpStream,
    host: &str,
    ca_file: Option<&str>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config = tls_config(ca_file).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))?;
    p.begin(Phase::Tls);
    let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| tls_error(host, &e))?;
    p.end();
    p.outcome.cert_not_after = s.get_ref().1.peer_certificates().and_then(|chain| {
        chain
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
            .map(|(_, c)| c.validity().not_after.timestamp())
            .min()
    });
    Ok(s)
}

/// A failed handshake in words, with what to do for the usual causes.
fn tls_error(host: &str, e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "the certificate of {host} is not trusted (unknown issuer); give its CA in http.ca_file"
        ),
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => format!("the certificate of {host} has expired ({e})"),
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!("the certificate is not valid for {host} ({e})"),
        _ => format!("TLS handshake with {host} failed: {e}"),
    }
}

/// The first nameserver of /etc/resolv.conf.
async fn system_nameserver() -> Result<SocketAddr, String> {
    let text = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .map_err(|e| format!("no dns.server given and /etc/resolv.conf cannot be read: {e}"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| "no dns.server given and /etc/resolv.conf names no nameserver".into())
}

/// A DNS check: one question to one server, the answers matched against `expect`. A
/// server the probe names is judged by `policy` first; the system's is not (the probe
/// does not choose it, and every name any probe resolves is asked of it anyway).
pub async fn dns(t: &DnsTarget, timeout: Duration, policy: &Policy) -> Outcome {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    timed(timeout, async |p: &mut Progress| {
        let server = match t.server_addr()? {
            Some(a) => {
                policy
                    .judge_host(&a.ip().to_string())
                    .map_err(|r| format!("refused, nothing sent: dns.server {r}"))?;
                a
            }
            None => system_nameserver().await?,
        };
        let name = Name::from_ascii(&t.name).map_err(|e| format!("dns.name: {e}"))?;
        let rtype: RecordType = t
            .record_type
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| format!("dns.record_type {:?} is not a record type", t.record_type))?;
        let mut q = Message::query();
        q.add_query(Query::query(name, rtype));
        q.metadata.recursion_desired = true;
        let bytes = q
            .to_vec()
            .map_err(|e| format!("cannot encode the query: {e}"))?;
        p.begin(Phase::Dns);
        p.outcome.address = Some(server);
        let mut answer = if t.transport == "tcp" {
            dns_tcp(server, &bytes).await?
        } else {
            dns_udp(server, &bytes, q.metadata.id).await?
        };
        if answer.metadata.truncation && t.transport == "udp" {
            answer = dns_tcp(server, &bytes).await?;
        }
        p.end();
        if answer.metadata.id != q.metadata.id {
            return Err(format!("{server} answered another query (id mismatch)"));
        }
        if answer.metadata.response_code != ResponseCode::NoError {
            return Err(format!(
                "{server} answered {} for {} {}",
                answer.metadata.response_code, t.name, t.record_type
            ));
        }
        let got: Vec<String> = answer
            .answers
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r| r.data.to_string())
            .collect();
        if got.is_empty() {
            return Err(format!(
                "{server} has no {} record for {}",
                t.record_type, t.name
            ));
        }
        let norm = |s: &str| {
            s.trim()
                .trim_end_matches('.')
                .trim_matches('"')
                .to_ascii_lowercase()
        };
        if let Some(missing) = t
            .expect
            .iter()
            .find(|e| !got.iter().any(|g| norm(g) == norm(e)))
        {
            return Err(format!(
                "{} {} is {}, expected {missing}",
                t.name,
                t.record_type,
                got.join(", ")
            ));
        }
        Ok(())
    })
    .await
}

async fn dns_udp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
) -> Result<hickory_proto::op::Message, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    sock.connect(server)
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    sock.send(query)
        .await
        .map_err(|e| format!("cannot send to {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    // Datagrams that are not the answer (a late answer to an earlier query) are skipped.
    loop {
        let n = sock
            .recv(&mut buf)
            .await
            .map_err(|e| format!("no answer from {server}: {e}"))?;
        if let Ok(m) = hickory_proto::op::Message::from_vec(&buf[..n])
            && m.metadata.id == id
        {
            return Ok(m);
        }
    }
}

async fn dns_tcp(server: SocketAddr, query: &[u8]) -> Result<hickory_proto::op::Message, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| format!("cannot connect to {server}: {e}"))?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed)
        .await
        .map_err(|e| format!("cannot send to {server}: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .await
        .map_err(|e| format!("no answer from {server}: {e}"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| format!("the answer from {server} was cut short: {e}"))?;
    hickory_proto::op::Message::from_vec(&buf)
        .map_err(|e| format!("{server} sent an answer that is not DNS: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-shot HTTP server answering `response` to every connection; returns its port
    /// and the requests it saw.
    async fn server(
        response: &'static str,
        delay: Duration,
    ) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_millis(500), l.accept()).await
            {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
                tokio::time::sleep(delay).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
            seen
        });
        (port, h)
    }

    fn target(port: u16, path: &str) -> HttpTarget {
        HttpTarget {
            url: format!("http://127.0.0.1:{port}{path}"),
            method: "GET".into(),
            headers: BTreeMap::new(),
            body: None,
            expect_status: Vec::new(),
            expect_body: Some("ok".into()),
            max_redirects: 2,
            ca_file: None,
            tls_expiry_warning_days: 14,
        }
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[tokio::test]
    async fn verdicts_and_phases() {
        let (port, seen) = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Duration::ZERO,
        )
        .await;
        let o = http(
            &target(port, "/health"),
            TP,
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        let phases: Vec<Phase> = o.phases.iter().map(|p| p.0).collect();
        assert_eq!(
            phases,
            vec![Phase::Dns, Phase::Connect, Phase::FirstByte, Phase::Body]
        );
        assert_eq!(o.status, Some(200));
        let req = &seen.await.unwrap()[0];
        assert!(req.starts_with("GET /health HTTP/1.1"), "{req}");
        assert!(req.contains(&format!("traceparent: {TP}")), "{req}");

        let (port, _) = server(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nok",
            Duration::ZERO,
        )
        .await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        assert_eq!(o.error.as_deref(), Some("HTTP 503, expected 2xx or 3xx"));

        let (port, _) = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnope",
            Duration::ZERO,
        )
        .await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        assert!(o.error.unwrap().contains("does not contain \"ok\""));

        let (port, _) = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Duration::from_secs(2),
        )
        .await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_millis(300),
            &Policy::default(),
        )
        .await;
        assert_eq!(
            o.error.as_deref(),
            Some("timed out after 0.3 s during processing")
        );
        assert!(o.total < Duration::from_millis(600));

        let (port, _) = server(
            "HTTP/1.1 302 Found\r\nlocation: http://10.9.9.9/x\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        assert!(o.error.unwrap().contains("which the probe does not name"));
    }

    #[tokio::test]
    async fn a_closed_port_fails_in_connect() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let o = tcp(
            &TcpTarget {
                host: "127.0.0.1".into(),
                port,
            },
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        assert!(!o.ok);
        assert!(
            o.error
                .unwrap()
                .starts_with(&format!("cannot connect to 127.0.0.1:{port}"))
        );
        assert_eq!(o.phases.len(), 1, "resolved, not connected");
    }

    fn policy(deny: &[&str], max_body_bytes: Option<u64>) -> Policy {
        Policy::new(&crate::policy::PolicyConfig {
            deny: deny.iter().map(|s| s.to_string()).collect(),
            max_body_bytes,
            ..Default::default()
        })
        .unwrap()
    }

    /// A listener on `ip` that is never accepted from; `connected` says whether anything
    /// connected to it.
    fn witness(ip: &str) -> (std::net::TcpListener, u16) {
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    fn connected(l: &std::net::TcpListener) -> bool {
        l.accept().is_ok()
    }

    #[tokio::test]
    async fn redirects_to_refused_targets_are_not_followed() {
        let (port, seen) = server(
            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest/meta-data/\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        assert_eq!(
            o.error.as_deref(),
            Some(
                "redirect refused, not followed: HTTP 302 to \"http://169.254.169.254/latest/meta-data/\"; 169.254.169.254 is refused (built-in rule \"metadata\"): it is a cloud metadata address, through which a probe could read the host's cloud credentials; to probe it anyway, add \"169.254.169.254\" to [probe_policy] exempt"
            )
        );
        assert_eq!((o.status, o.redirects), (Some(302), 0));
        let connects = o.phases.iter().filter(|p| p.0 == Phase::Connect).count();
        assert_eq!(connects, 1, "only to the probe's own target: {o:?}");
        assert_eq!(seen.await.unwrap().len(), 1);

        // A scheme-relative Location names another host too.
        let (port, _) = server(
            "HTTP/1.1 301 Moved\r\nlocation: //[::ffff:169.254.169.254]/x\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        let e = o.error.unwrap();
        assert!(
            e.starts_with("redirect refused, not followed: HTTP 301"),
            "{e}"
        );
        assert!(
            e.contains(
                "(the IPv4 address 169.254.169.254) is refused (built-in rule \"metadata\")"
            ),
            "{e}"
        );

        // A denied address that is reachable: the redirect is refused and nothing
        // connects to it.
        let (w, wport) = witness("127.0.0.2");
        let response: &'static str = Box::leak(
            format!("HTTP/1.1 307 Temporary\r\nlocation: http://127.0.0.2:{wport}/\r\ncontent-length: 0\r\n\r\n")
                .into_boxed_str(),
        );
        let (port, _) = server(response, Duration::ZERO).await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_secs(2),
            &policy(&["127.0.0.2/32"], None),
        )
        .await;
        let e = o.error.unwrap();
        assert!(
            e.contains("127.0.0.2 is refused ([probe_policy] deny entry \"127.0.0.2/32\")"),
            "{e}"
        );
        assert!(
            !connected(&w),
            "the refused redirect target was connected to"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_refused_addresses_fails_in_resolve_without_connecting() {
        let (w, port) = witness("127.0.0.1");
        let deny_loopback = policy(&["127.0.0.0/8", "::1"], None);
        let o = tcp(
            &TcpTarget {
                host: "localhost".into(),
                port,
            },
            Duration::from_secs(2),
            &deny_loopback,
        )
        .await;
        let e = o.error.unwrap();
        assert!(
            e.starts_with("refused in resolve, not connected: localhost resolves to "),
            "{e}"
        );
        assert!(e.contains("none of them allowed"), "{e}");
        assert!(e.contains("is refused ([probe_policy] deny entry"), "{e}");
        assert!(o.phases.is_empty() && o.address.is_none(), "{:?}", o.phases);
        assert!(!connected(&w));

        // Allowed, the same probe connects to the address judged.
        let o = tcp(
            &TcpTarget {
                host: "127.0.0.1".into(),
                port,
            },
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.address, Some(SocketAddr::from(([127, 0, 0, 1], port))));
        assert!(connected(&w));

        // An HTTP probe of a refused name: not even resolved.
        let mut t = target(port, "/");
        t.url = "http://metadata.google.internal/computeMetadata/v1/".into();
        let o = http(&t, TP, Duration::from_secs(2), &Policy::default()).await;
        let e = o.error.unwrap();
        assert!(
            e.starts_with("refused, not resolved or connected: metadata.google.internal is refused (built-in rule \"metadata\")"),
            "{e}"
        );
        assert!(o.phases.is_empty());
    }

    #[tokio::test]
    async fn a_dns_server_the_probe_names_is_judged_before_it_is_asked() {
        let o = dns(
            &DnsTarget {
                name: "example.com".into(),
                record_type: "A".into(),
                server: Some("[::ffff:169.254.169.254]:53".into()),
                expect: Vec::new(),
                transport: "udp".into(),
            },
            Duration::from_secs(2),
            &Policy::default(),
        )
        .await;
        let e = o.error.unwrap();
        assert!(
            e.starts_with("refused, nothing sent: dns.server ::ffff:169.254.169.254 (the IPv4 address 169.254.169.254) is refused (built-in rule \"metadata\")"),
            "{e}"
        );
        assert!(o.address.is_none() && o.phases.is_empty());
    }

    #[tokio::test]
    async fn a_body_larger_than_the_bound_fails_the_check_saying_so() {
        let big: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\nok{}",
                "x".repeat(4998)
            )
            .into_boxed_str(),
        );
        let (port, _) = server(big, Duration::ZERO).await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_secs(2),
            &policy(&[], Some(4096)),
        )
        .await;
        assert_eq!(
            o.error.as_deref(),
            Some(
                "the response body is larger than 4096 bytes, the most a probe reads; probe a smaller page or raise [probe_policy] max_body_bytes"
            )
        );
        let (port, _) = server(big, Duration::ZERO).await;
        let o = http(
            &target(port, "/"),
            TP,
            Duration::from_secs(2),
            &policy(&[], Some(8192)),
        )
        .await;
        assert!(o.ok, "{o:?}");
    }
}
