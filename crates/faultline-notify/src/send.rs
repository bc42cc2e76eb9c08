//! One message to one receiver: what it says (a title and a line per transition, each with
//! its idempotency key and trace link) and how it goes — a JSON webhook, a Slack-compatible
//! webhook, or e-mail over SMTP. Every message carries its batch id as `Idempotency-Key`
//! (an HTTP header; for e-mail also the `Message-ID`), the same on every retry, so a
//! receiver that saw it before can drop the repeat.
//!
//! The JSON webhook's body:
//!
//! ```json
//! {"id": "BATCH", "title": "checkout-health is down",
//!  "events": [{"key": "probe/checkout-health/1740000000000/down", "kind": "probe",
//!              "subject": "checkout-health", "state": "down", "at": 1740000000000,
//!              "message": "HTTP 500, expected 200", "link": "https://.../trace/0af7..."}]}
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::Event;
use crate::config::{ReceiverDef, Smtp};

/// How long one delivery attempt may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// A message about some transitions.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Message {
    /// The batch id: the idempotency key of the message.
    pub id: String,
    pub title: String,
    pub events: Vec<Event>,
}

fn fmt_time(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, sec) = ((s / 3600) % 24, (s / 60) % 60, s % 60);
    format!("{h:02}:{m:02}:{sec:02} UTC")
}

impl Message {
    /// A message for `events` (at least one), links made absolute with `base_url`.
    pub(crate) fn new(id: String, mut events: Vec<Event>, base_url: Option<&str>) -> Self {
        if let Some(base) = base_url {
            for e in &mut events {
                if let Some(l) = &mut e.link
                    && l.starts_with('/')
                {
                    *l = format!("{}{l}", base.trim_end_matches('/'));
                }
            }
        }
        let title = match events.as_slice() {
            [one] => format!("{} {} {}", one.kind, one.subject, one.state_words()),
            many => {
                let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
                for e in many {
                    *counts.entry(e.state.as_str()).or_default() += 1;
                }
                let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
                let names: Vec<&str> = many.iter().take(5).map(|e| e.subject.as_str()).collect();
                let more = if many.len() > 5 {
                    format!(" and {} more", many.len() - 5)
                } else {
                    String::new()
                };
                format!("{}: {}{more}", parts.join(", "), names.join(", "))
            }
        };
        Self { id, title, events }
    }

    /// One line per transition, for people.
    pub(crate) fn lines(&self, slack: bool) -> Vec<String> {
        self.events
            .iter()
            .map(|e| {
                let link = match (&e.link, slack) {
                    (Some(l), true) => format!(" <{l}|trace>"),
                    (Some(l), false) => format!(" trace: {l}"),
                    (None, _) => String::new(),
                };
                format!(
                    "[{}] {} {} at {}: {}{link}",
                    e.state.to_uppercase(),
                    e.kind,
                    e.subject,
                    fmt_time(e.at),
                    e.message
                )
            })
            .collect()
    }
}

pub(crate) type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The HTTP(S) client every webhook shares: TLS by rustls with the ring provider and
/// Mozilla's roots (webpki-roots).
pub(crate) fn client() -> Result<Client, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot set up TLS for webhooks: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// Sends `msg` to `r`; `Err` says why it was not accepted.
pub(crate) async fn deliver(client: &Client, r: &ReceiverDef, msg: &Message) -> Result<(), String> {
    let work = async {
        match (&r.webhook, &r.slack, &r.smtp) {
            (Some(w), _, _) => {
                let body = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
                post(client, &w.url, &w.headers, &msg.id, body).await
            }
            (None, Some(s), _) => {
                let mut text = format!("*{}*", msg.title);
                for l in msg.lines(true) {
                    text.push('\n');
                    text.push_str(&l);
                }
                let body = serde_json::to_vec(&serde_json::json!({ "text": text }))
                    .map_err(|e| e.to_string())?;
                post(client, &s.url, &Default::default(), &msg.id, body).await
            }
            (None, None, Some(m)) => mail(m, msg).await,
            (None, None, None) => Err("the receiver has no transport".into()),
        }
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", TIMEOUT.as_secs())))
}

async fn post(
    client: &Client,
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
    id: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("faultline/", env!("CARGO_PKG_VERSION")),
        )
        .header("idempotency-key", id);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("POST failed: {}", chain(&e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    Err(format!("HTTP {}: {}", status.as_u16(), text.trim()))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn mail(m: &Smtp, msg: &Message) -> Result<(), String> {
    use lettre::message::header::{HeaderName, HeaderValue};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    let parse = |a: &str| {
        a.parse::<lettre::message::Mailbox>()
            .map_err(|e| format!("{a:?}: {e}"))
    };
    let mut b = lettre::Message::builder()
        .from(parse(&m.from)?)
        .subject(format!("[faultline] {}", msg.title))
        .message_id(Some(format!("<{}@faultline>", msg.id)))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Idempotency-Key"),
            msg.id.clone(),
        ));
    for t in &m.to {
        b = b.to(parse(t)?);
    }
    let email = b
        .body(msg.lines(false).join("\n") + "\n")
        .map_err(|e| format!("cannot build the e-mail: {e}"))?;
    let mut t = if m.starttls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&m.host)
            .map_err(|e| format!("{}: {e}", m.host))?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&m.host)
    }
    .port(m.port)
    .timeout(Some(TIMEOUT))
    .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
        "faultline".into(),
    ));
    if let (Some(u), Some(var)) = (&m.username, &m.password_env) {
        let pass = std::env::var(var).map_err(|_| {
            format!("the environment variable {var} (smtp.password_env) is not set")
        })?;
        t = t.credentials(lettre::transport::smtp::authentication::Credentials::new(
            u.clone(),
            pass,
        ));
    }
    t.build()
        .send(email)
        .await
        .map(drop)
        .map_err(|e| format!("SMTP {}:{}: {}", m.host, m.port, chain(&e)))
}
