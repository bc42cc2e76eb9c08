//! The HTTP client of the ClickHouse backend: one server's HTTP interface (port 8123 by
//! default), statements as POST bodies, inserts as RowBinary bodies with the statement in
//! `?query=`, answers read whole within a bound.
//!
//! Settings that differ between ClickHouse versions go as URL parameters on every
//! request, the same on 18.16 and on current servers: `database` (the configured one),
//! `output_format_json_quote_64bit_integers=0` and `input_format_skip_unknown_fields=0`.
//! Credentials go as HTTP basic authentication, never in the URL (servers log URLs).
//! An `https://` URL speaks TLS (rustls, ring) to ClickHouse's `https_port`, trusting the
//! certificates of `ca_file` when given, else the web PKI roots.
//!
//! An answer is an error when its status is not 200, or when it is 200 but its body is
//! a ClickHouse exception (`Code: NNN, e.displayText() = DB::Exception: …` on 18.16,
//! `Code: NNN. DB::Exception: …` on current servers): a query that fails after the server
//! started streaming its answer still answers 200.

use std::io::Read;
use std::time::Duration;

use base64::Engine;

use crate::ChError;

/// Where the ClickHouse server is and how to log in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP interface, `http://HOST:PORT` (no path).
    pub url: String,
    /// The database that holds faultline's tables (made when missing).
    pub database: String,
    /// The user (`default` when empty).
    pub user: String,
    /// The password (none when empty).
    pub password: String,
    /// How long one request may take, connection and answer together.
    pub timeout: Duration,
    /// The largest answer read, in bytes.
    pub max_answer_bytes: u64,
    /// The cluster (of the server's `remote_servers`) whose shards hold the tables, if
    /// any: the tables are then `Distributed` over it (`schema.rs`) and inserts wait for
    /// every shard (`insert_distributed_sync=1`).
    pub cluster: Option<String>,
    /// With an `https://` URL, the PEM file of the certificate authorities to trust
    /// (`None`: the public web PKI roots).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Config {
    /// A server at `url` with faultline's tables in `database`, as the `default` user.
    pub fn new(url: &str, database: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            database: database.to_string(),
            user: String::new(),
            password: String::new(),
            timeout: Duration::from_secs(30),
            max_answer_bytes: 512 << 20,
            cluster: None,
            ca_file: None,
        }
    }

    fn check(&self) -> Result<(), ChError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ChError::Config(format!(
                "url `{}` is not an http:// or https:// address of ClickHouse's HTTP interface (port 8123 by default)",
                self.url
            )));
        }
        if self.ca_file.is_some() && !self.url.starts_with("https://") {
            return Err(ChError::Config(format!(
                "ca_file is set but url `{}` is not https://; use ClickHouse's https_port, or drop ca_file",
                self.url
            )));
        }
        if !identifier(&self.database) {
            return Err(ChError::Config(format!(
                "database `{}` is not a plain identifier (letters, digits and _, not starting with a digit)",
                self.database
            )));
        }
        if let Some(c) = &self.cluster
            && !identifier(c)
        {
            return Err(ChError::Config(format!(
                "cluster `{c}` is not a plain identifier (letters, digits and _, not starting with a digit); name a cluster of the server's remote_servers"
            )));
        }
        Ok(())
    }
}

/// Letters, digits and `_`, not starting with a digit: safe in a statement unquoted.
fn identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// TLS to ClickHouse (an `https://` URL): rustls, trusting `ca_file`'s certificates
/// when given, else the web PKI roots.
fn tls(cfg: &Config) -> Result<ureq::tls::TlsConfig, ChError> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
    let builder = TlsConfig::builder().provider(TlsProvider::Rustls);
    let Some(path) = &cfg.ca_file else {
        return Ok(builder.root_certs(RootCerts::WebPki).build());
    };
    let bad = |why: String| {
        ChError::Config(format!(
            "ca_file {}: {why}; give a PEM file of the certificate authorities that signed ClickHouse's certificate",
            path.display()
        ))
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| bad(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(builder
        .root_certs(RootCerts::new_with_certs(&certs))
        .build())
}

/// A client of one ClickHouse server (cheap to clone; connections are pooled).
#[derive(Clone)]
pub struct Client {
    cfg: Config,
    agent: ureq::Agent,
    auth: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.cfg.url)
            .field("database", &self.cfg.database)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `cfg` (no request is made).
    pub fn new(cfg: Config) -> Result<Self, ChError> {
        cfg.check()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .tls_config(tls(&cfg)?)
            .build()
            .into();
        let auth = (!cfg.user.is_empty() || !cfg.password.is_empty()).then(|| {
            let user = if cfg.user.is_empty() {
                "default"
            } else {
                &cfg.user
            };
            let pair = format!("{user}:{}", cfg.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Self { cfg, agent, auth })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Runs `sql` (a statement, or a query with its `FORMAT`) in the configured database
    /// and returns the answer's body.
    pub fn query(&self, sql: &str) -> Result<Vec<u8>, ChError> {
        self.post(None, sql.as_bytes(), &summary(sql), true)
    }

    /// Runs `sql` without selecting the database (to make it).
    pub fn query_server(&self, sql: &str) -> Result<Vec<u8>, ChError> {
        self.post(None, sql.as_bytes(), &summary(sql), false)
    }

    /// Like [`Client::query`], the answer as text.
    pub fn query_text(&self, sql: &str) -> Result<String, ChError> {
        let body = self.query(sql)?;
        String::from_utf8(body).map_err(|e| ChError::BadAnswer {
            url: self.cfg.url.clone(),
            what: summary(sql),
            reason: e.to_string(),
        })
    }

    /// Sends `rows` for `insert` (an `INSERT INTO … FORMAT RowBinary` statement).
    pub fn insert(&self, insert: &str, rows: &[u8]) -> Result<(), ChError> {
        self.post(Some(insert), rows, &summary(insert), true)
            .map(drop)
    }

    fn post(
        &self,
        query: Option<&str>,
        body: &[u8],
        what: &str,
        in_database: bool,
    ) -> Result<Vec<u8>, ChError> {
        let mut req = self
            .agent
            .post(format!("{}/", self.cfg.url))
            .query("output_format_json_quote_64bit_integers", "0")
            .query("input_format_skip_unknown_fields", "0");
        if in_database {
            req = req.query("database", &self.cfg.database);
        }
        if let Some(q) = query {
            req = req.query("query", q);
            // Acknowledged only once every shard has its rows (else the server queues
            // them on its disk and answers at once).
            if self.cfg.cluster.is_some() {
                req = req.query("insert_distributed_sync", "1");
            }
        }
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let unreachable = |e: String| ChError::Unreachable {
            url: self.cfg.url.clone(),
            reason: e,
        };
        let resp = req.send(body).map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let mut out = Vec::new();
        resp.into_body()
            .into_reader()
            .take(self.cfg.max_answer_bytes + 1)
            .read_to_end(&mut out)
            .map_err(|e| unreachable(format!("reading the answer to {what}: {e}")))?;
        if out.len() as u64 > self.cfg.max_answer_bytes {
            return Err(ChError::BadAnswer {
                url: self.cfg.url.clone(),
                what: what.to_string(),
                reason: format!(
                    "the answer is over {} bytes; narrow the query",
                    self.cfg.max_answer_bytes
                ),
            });
        }
        let thrown = exception(&out);
        if status != 200 || thrown.is_some() {
            let message = thrown.unwrap_or_else(|| {
                format!(
                    "HTTP {status}: {}",
                    first_line(&String::from_utf8_lossy(&out))
                )
            });
            return Err(ChError::Server {
                url: self.cfg.url.clone(),
                what: what.to_string(),
                message,
            });
        }
        Ok(out)
    }
}

/// The first 80 characters of a statement, on one line, to name it in errors.
fn summary(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(80) {
        Some((i, _)) => format!("`{}…`", &one[..i]),
        None => format!("`{one}`"),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

/// The exception in an answer's body, if it is one: its first line, from `Code:` (the
/// stack trace that follows on 18.16 is left out).
fn exception(body: &[u8]) -> Option<String> {
    // An exception is text appended to whatever rows were streamed before the query
    // failed (RowBinary rows are not UTF-8, hence the lossy reading). Only the last 4 KiB
    // are looked at, and only `Code: ` followed on its line by DB::Exception counts.
    let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(4096)..]);
    tail.match_indices("Code: ").find_map(|(at, _)| {
        let line = tail[at..].lines().next().unwrap_or_default().trim_end();
        line.contains("DB::Exception").then(|| line.to_string())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_of_both_versions_are_found_and_rows_are_not() {
        let old = b"Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist., e.what() = DB::Exception\n\n0. stack\n";
        assert_eq!(
            exception(old).as_deref(),
            Some(
                "Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist., e.what() = DB::Exception"
            )
        );
        // After RowBinary rows (not UTF-8) streamed before the query failed.
        let mut rows = vec![0xff, 0xfe, 0x80, 0x10];
        rows.extend_from_slice(old);
        assert!(exception(&rows).unwrap().starts_with("Code: 60, "));
        let new = b"Code: 60. DB::Exception: Unknown table expression identifier 'x'. (UNKNOWN_TABLE) (version 26.9.2.1)\n";
        assert!(
            exception(new)
                .unwrap()
                .starts_with("Code: 60. DB::Exception")
        );
        assert_eq!(exception(b"1\n2\n"), None);
        // A row that mentions the words is data, not an exception, unless `Code: ` is
        // followed on its line by DB::Exception.
        assert_eq!(exception(b"span named Code: 1\n"), None);
    }

    #[test]
    fn configurations_that_cannot_work_are_refused_with_the_field() {
        let mut c = Config::new("localhost:8123", "faultline");
        assert!(
            Client::new(c.clone())
                .unwrap_err()
                .to_string()
                .contains("url")
        );
        c.url = "http://127.0.0.1:8123".into();
        c.database = "fault-line".into();
        assert!(
            Client::new(c.clone())
                .unwrap_err()
                .to_string()
                .contains("database `fault-line`")
        );
        c.database = "faultline".into();
        assert!(Client::new(c.clone()).is_ok());
        c.cluster = Some("two shards".into());
        assert!(
            Client::new(c)
                .unwrap_err()
                .to_string()
                .contains("cluster `two shards`")
        );
    }

    #[test]
    fn statements_are_summarised_on_one_line() {
        assert_eq!(summary("SELECT\n  1"), "`SELECT 1`");
    }
}
