//! The proxies by name, every change the Toxiproxy API can make to them, and their
//! durable state.
//!
//! State file (`proxies.json` in the directory given to [`Proxies::open`], replaced with
//! `faultline_wal::durable` after every change; JSON):
//! `{"version":1,"proxies":[{"name":"redis","listen":"127.0.0.1:26379","upstream":"127.0.0.1:6379","enabled":true,"toxics":[TOXIC...]}]}`
//! where `listen` is the address bound (a port 0 asked for is kept as the port it got)
//! and each TOXIC is Toxiproxy's toxic JSON.
//!
//! At start the proxies come back on their addresses and **every fault is removed**: the
//! toxics are dropped and disabled proxies enabled. A fault outliving the process that
//! added it (an experiment killed mid-run) would otherwise stay in place with nobody to
//! remove it; what was removed is logged and returned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::proxy::{Protocol, Proxy, resolve};
use crate::toxic::{Toxic, ToxicError};

/// A refused API call: Toxiproxy's status and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn proxy_not_found() -> ApiError {
        ApiError::new(404, "proxy not found")
    }
    fn toxic_not_found() -> ApiError {
        ApiError::new(404, "toxic not found")
    }
}

impl From<ToxicError> for ApiError {
    fn from(e: ToxicError) -> ApiError {
        ApiError::new(400, e.to_string())
    }
}

/// Failure to open the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the fault proxy's state {path}: {reason}; fix or remove the file")]
    Read { path: PathBuf, reason: String },
}

/// A proxy's fields as a create or update request gives them.
#[derive(Debug, Clone, Default)]
pub struct ProxyFields {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub enabled: Option<bool>,
    /// `tcp` (default) or `http` (faultline's own).
    pub protocol: Option<Protocol>,
}

impl ProxyFields {
    /// Reads the fields of a Toxiproxy proxy object; other keys (such as `toxics`) are
    /// ignored.
    pub fn parse(v: &Value) -> Result<ProxyFields, ApiError> {
        let obj = v.as_object().ok_or_else(|| {
            ApiError::new(
                400,
                format!("bad request body: a proxy is a JSON object, got {v}"),
            )
        })?;
        let text = |k: &str| -> Result<Option<String>, ApiError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(ApiError::new(
                    400,
                    format!("bad request body: {k} must be a string, got {other}"),
                )),
            }
        };
        let enabled = match obj.get("enabled") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(ApiError::new(
                    400,
                    format!("bad request body: enabled must be true or false, got {other}"),
                ));
            }
        };
        let protocol = match text("protocol")?.as_deref() {
            None | Some("tcp") => None,
            Some("http") => Some(Protocol::Http),
            Some(other) => {
                return Err(ApiError::new(
                    400,
                    format!("bad request body: protocol {other:?} is not tcp or http"),
                ));
            }
        };
        Ok(ProxyFields {
            protocol,
            name: text("name")?,
            listen: text("listen")?,
            upstream: text("upstream")?,
            enabled,
        })
    }
}

struct Inner {
    proxies: BTreeMap<String, Proxy>,
    /// Bumped by every change; the saver writes the newest.
    version: u64,
}

/// Every proxy, shared by the API handlers.
#[derive(Clone)]
pub struct Proxies {
    inner: Arc<Mutex<Inner>>,
    next_id: Arc<AtomicU64>,
    state: Option<PathBuf>,
    /// Serializes writes of the state file and remembers the version last written.
    saved: Arc<tokio::sync::Mutex<u64>>,
    /// Where HTTP proxies' spans go.
    sink: crate::http::SinkSlot,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies")
            .field("state", &self.state)
            .finish()
    }
}

/// What opening the state did: the faults found and removed, proxies that could not be
/// bound again (left disabled).
#[derive(Debug, Default)]
pub struct Restored {
    pub proxies: usize,
    pub removed_faults: Vec<String>,
    pub not_bound: Vec<String>,
}

/// The name of the state file in the directory given to [`Proxies::open`].
pub const STATE_FILE: &str = "proxies.json";

impl Proxies {
    /// Proxies kept only in memory (as Toxiproxy keeps them).
    pub fn in_memory() -> Proxies {
        Proxies {
            inner: Arc::new(Mutex::new(Inner {
                proxies: BTreeMap::new(),
                version: 0,
            })),
            next_id: Arc::new(AtomicU64::new(1)),
            state: None,
            saved: Arc::new(tokio::sync::Mutex::new(0)),
            sink: Arc::default(),
        }
    }

    /// Sends the spans of HTTP proxies' requests to `sink` from now on.
    pub fn set_span_sink(&self, sink: Arc<dyn crate::http::SpanSink>) {
        if let Ok(mut slot) = self.sink.write() {
            *slot = Some(sink);
        }
    }

    /// [`Self::set_span_sink`] with an async function, run on its own task per span.
    pub fn send_spans_to<F, Fut>(&self, f: F)
    where
        F: Fn(faultline_model::ExportTraceServiceRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.set_span_sink(Arc::new(move |r| {
            tokio::spawn(f(r));
        }));
    }

    fn new_proxy(&self, f: &ProxyFields, name: String, upstream: String) -> Proxy {
        let protocol = f.protocol.unwrap_or(Protocol::Tcp);
        let listen = f.listen.clone().unwrap_or_default();
        Proxy::new(name, protocol, listen, upstream, self.sink.clone())
    }

    /// Opens the state in `dir` (created if missing) and starts its proxies without their
    /// faults. Call inside a Tokio runtime.
    pub async fn open(dir: &Path) -> Result<(Proxies, Restored), StateError> {
        let path = dir.join(STATE_FILE);
        let read_err = |reason: String| StateError::Read {
            path: path.clone(),
            reason,
        };
        let text = {
            let path = path.clone();
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                match std::fs::read_to_string(&path) {
                    Ok(t) => Ok(Some(t)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| read_err(e.to_string()))?
            .map_err(|e: std::io::Error| read_err(e.to_string()))?
        };
        let mut proxies = Proxies::in_memory();
        proxies.state = Some(path.clone());
        let mut restored = Restored::default();
        if let Some(text) = text {
            let saved: Value = serde_json::from_str(&text).map_err(|e| read_err(e.to_string()))?;
            let list = saved["proxies"].as_array().cloned().unwrap_or_default();
            let mut g = proxies.lock();
            for p in list {
                let f = ProxyFields::parse(&p).map_err(|e| read_err(e.message))?;
                let (Some(name), Some(upstream)) = (f.name.clone(), f.upstream.clone()) else {
                    return Err(read_err("a proxy without name or upstream".into()));
                };
                let mut proxy = proxies.new_proxy(&f, name.clone(), upstream);
                for t in p["toxics"].as_array().into_iter().flatten() {
                    restored.removed_faults.push(format!(
                        "toxic {} ({}, {}) on proxy {name}",
                        t["name"].as_str().unwrap_or("?"),
                        t["type"].as_str().unwrap_or("?"),
                        t["stream"].as_str().unwrap_or("?"),
                    ));
                }
                if f.enabled == Some(false) {
                    restored
                        .removed_faults
                        .push(format!("proxy {name} was disabled (down)"));
                }
                if let Err(e) = proxy.start() {
                    tracing::error!(proxy = %name, error = %e, "cannot listen again; the proxy stays disabled until it is enabled through the API");
                    restored.not_bound.push(format!("{name}: {e}"));
                }
                restored.proxies += 1;
                g.proxies.insert(name, proxy);
            }
            g.version += 1;
        }
        for f in &restored.removed_faults {
            tracing::warn!(fault = %f, "removed a fault left by the previous run");
        }
        tracing::info!(
            proxies = restored.proxies,
            removed_faults = restored.removed_faults.len(),
            not_bound = restored.not_bound.len(),
            state = %path.display(),
            "fault proxy state restored"
        );
        proxies.persist().await;
        Ok((proxies, restored))
    }

    /// Creates the proxies of a JSON file holding an array, as `POST /populate` would
    /// (Toxiproxy's `-config`).
    pub async fn populate_file(&self, path: &Path) -> Result<(), String> {
        let what = |e: String| format!("proxy config {}: {e}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| what(e.to_string()))?;
        let list: Value = serde_json::from_str(&text).map_err(|e| what(e.to_string()))?;
        let r = self.populate(&list);
        self.persist().await;
        r.map(|_| ()).map_err(|(e, _)| what(e.message))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn changed(g: &mut Inner) {
        g.version += 1;
    }

    /// Writes the newest state durably (off the executor). A failure is logged: the
    /// proxies keep working, and the next change tries again.
    pub async fn persist(&self) {
        let Some(path) = self.state.clone() else {
            return;
        };
        let mut saved = self.saved.lock().await;
        let (version, bytes) = {
            let g = self.lock();
            (g.version, state_json(&g).to_string().into_bytes())
        };
        if version <= *saved && version != 0 {
            return;
        }
        let written = tokio::task::spawn_blocking(move || {
            faultline_wal::durable::replace_file(&path, &bytes)
        })
        .await;
        match written {
            Ok(Ok(())) => *saved = version,
            Ok(Err(e)) => tracing::error!(error = %e, "cannot save the fault proxy's state"),
            Err(e) => tracing::error!(error = %e, "cannot save the fault proxy's state"),
        }
    }

    /// Every proxy as Toxiproxy lists them: an object keyed by name.
    pub fn list(&self) -> Value {
        let g = self.lock();
        Value::Object(
            g.proxies
                .iter()
                .map(|(n, p)| (n.clone(), proxy_json(p)))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Result<Value, ApiError> {
        let g = self.lock();
        g.proxies
            .get(name)
            .map(proxy_json)
            .ok_or_else(ApiError::proxy_not_found)
    }

    /// Creates a proxy (Toxiproxy's `POST /proxies`).
    pub fn create(&self, f: ProxyFields) -> Result<Value, ApiError> {
        let name = f.name.clone().filter(|n| !n.is_empty());
        let name = name.ok_or_else(|| ApiError::new(400, "missing required field: name"))?;
        let upstream = f.upstream.clone().filter(|u| !u.is_empty());
        let upstream =
            upstream.ok_or_else(|| ApiError::new(400, "missing required field: upstream"))?;
        let mut g = self.lock();
        if g.proxies.contains_key(&name) {
            return Err(ApiError::new(409, "proxy already exists"));
        }
        let mut p = self.new_proxy(&f, name.clone(), upstream);
        if f.enabled.unwrap_or(true) {
            p.start().map_err(|e| ApiError::new(500, e))?;
        }
        let out = proxy_json(&p);
        g.proxies.insert(name, p);
        Self::changed(&mut g);
        Ok(out)
    }

    /// Updates listen, upstream or enabled; a new address or upstream restarts the proxy
    /// (dropping its connections).
    pub fn update(&self, name: &str, f: ProxyFields) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let p = g
            .proxies
            .get_mut(name)
            .ok_or_else(ApiError::proxy_not_found)?;
        let result = apply_update(p, f);
        let out = proxy_json(p);
        Self::changed(&mut g);
        result.map(|()| out)
    }

    pub fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut g = self.lock();
        g.proxies
            .remove(name)
            .ok_or_else(ApiError::proxy_not_found)?;
        Self::changed(&mut g);
        Ok(())
    }

    /// Creates or replaces proxies (Toxiproxy's `POST /populate`): a proxy whose address
    /// and upstream are unchanged is left as it is; proxies not listed are left alone.
    /// On failure the proxies handled before it stay, and are returned with the error.
    pub fn populate(&self, list: &Value) -> Result<Vec<Value>, (ApiError, Option<Vec<Value>>)> {
        let items = list.as_array().ok_or_else(|| {
            (
                ApiError::new(
                    400,
                    format!("bad request body: populate takes a JSON array of proxies, got {list}"),
                ),
                None,
            )
        })?;
        let mut fields = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let f = ProxyFields::parse(item).map_err(|e| (e, None))?;
            for (k, v) in [("name", &f.name), ("upstream", &f.upstream)] {
                if v.as_deref().is_none_or(str::is_empty) {
                    return Err((
                        ApiError::new(
                            400,
                            format!("missing required field: {k} at proxy {}", i + 1),
                        ),
                        None,
                    ));
                }
            }
            fields.push(f);
        }
        let mut g = self.lock();
        let mut done = Vec::new();
        for f in fields {
            let name = f.name.clone().unwrap_or_default();
            let upstream = f.upstream.clone().unwrap_or_default();
            if let Some(p) = g.proxies.get(&name)
                && p.upstream == upstream
                && same_listen(&p.listen, f.listen.as_deref().unwrap_or(""))
            {
                done.push(proxy_json(p));
                continue;
            }
            if let Some(mut old) = g.proxies.remove(&name) {
                old.stop();
            }
            let mut p = self.new_proxy(&f, name.clone(), upstream);
            let started = if f.enabled.unwrap_or(true) {
                p.start()
            } else {
                Ok(())
            };
            done.push(proxy_json(&p));
            g.proxies.insert(name, p);
            Self::changed(&mut g);
            if let Err(e) = started {
                done.pop();
                return Err((ApiError::new(500, e), Some(done)));
            }
        }
        Ok(done)
    }

    /// Enables every proxy and removes every toxic (Toxiproxy's `POST /reset`).
    pub fn reset(&self) -> Result<(), ApiError> {
        let mut g = self.lock();
        Self::changed(&mut g);
        for p in g.proxies.values_mut() {
            p.start().map_err(|e| ApiError::new(500, e))?;
            p.toxics.clear();
            p.publish();
        }
        Ok(())
    }

    pub fn toxics(&self, proxy: &str) -> Result<Value, ApiError> {
        let g = self.lock();
        let p = g.proxies.get(proxy).ok_or_else(ApiError::proxy_not_found)?;
        Ok(Value::Array(
            p.toxics_in_order().iter().map(|t| t.to_json()).collect(),
        ))
    }

    pub fn toxic(&self, proxy: &str, toxic: &str) -> Result<Value, ApiError> {
        let g = self.lock();
        let p = g.proxies.get(proxy).ok_or_else(ApiError::proxy_not_found)?;
        p.toxics
            .iter()
            .find(|(_, t)| t.name == toxic)
            .map(|(_, t)| t.to_json())
            .ok_or_else(ApiError::toxic_not_found)
    }

    /// Adds a toxic; it acts on open connections before this returns.
    pub fn add_toxic(&self, proxy: &str, body: &Value) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let p = g
            .proxies
            .get_mut(proxy)
            .ok_or_else(ApiError::proxy_not_found)?;
        let t = Toxic::parse(body)?;
        let http = p.protocol == Protocol::Http;
        if t.kind.is_http() && !http {
            return Err(ApiError::new(
                400,
                format!(
                    "{} is an HTTP fault: create the proxy with \"protocol\": \"http\"",
                    t.kind.type_name()
                ),
            ));
        }
        if http && !t.kind.is_http() {
            return Err(ApiError::new(
                400,
                format!(
                    "proxy {proxy} speaks HTTP: its faults are http_error, http_delay and http_abort, not {}",
                    t.kind.type_name()
                ),
            ));
        }
        if p.toxics.iter().any(|(_, x)| x.name == t.name) {
            return Err(ApiError::new(409, "toxic already exists"));
        }
        let out = t.to_json();
        p.toxics
            .push((self.next_id.fetch_add(1, Ordering::Relaxed), t));
        p.publish();
        Self::changed(&mut g);
        Ok(out)
    }

    /// Merges an update into a toxic (present attributes and toxicity change).
    pub fn update_toxic(&self, proxy: &str, toxic: &str, body: &Value) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let p = g
            .proxies
            .get_mut(proxy)
            .ok_or_else(ApiError::proxy_not_found)?;
        let slot = p
            .toxics
            .iter_mut()
            .find(|(_, t)| t.name == toxic)
            .ok_or_else(ApiError::toxic_not_found)?;
        let next = slot.1.update(body)?;
        let out = next.to_json();
        *slot = (self.next_id.fetch_add(1, Ordering::Relaxed), next);
        p.publish();
        Self::changed(&mut g);
        Ok(out)
    }

    pub fn remove_toxic(&self, proxy: &str, toxic: &str) -> Result<(), ApiError> {
        let mut g = self.lock();
        let p = g
            .proxies
            .get_mut(proxy)
            .ok_or_else(ApiError::proxy_not_found)?;
        let before = p.toxics.len();
        p.toxics.retain(|(_, t)| t.name != toxic);
        if p.toxics.len() == before {
            return Err(ApiError::toxic_not_found());
        }
        p.publish();
        Self::changed(&mut g);
        Ok(())
    }

    /// Prometheus text: per proxy, open connections, accepted connections, upstream
    /// dial failures, bytes per direction, toxics in place and whether it is enabled.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let g = self.lock();
        let mut out = String::new();
        let families: [(&str, &str, &str); 6] = [
            (
                "faultline_proxy_enabled",
                "gauge",
                "1 when the proxy listens.",
            ),
            (
                "faultline_proxy_connections",
                "gauge",
                "Connections open through the proxy.",
            ),
            (
                "faultline_proxy_accepted_total",
                "counter",
                "Connections accepted by the proxy.",
            ),
            (
                "faultline_proxy_upstream_failures_total",
                "counter",
                "Connections closed because the upstream could not be reached.",
            ),
            (
                "faultline_proxy_bytes_total",
                "counter",
                "Bytes delivered, by direction (upstream: client to server).",
            ),
            (
                "faultline_proxy_toxics",
                "gauge",
                "Toxics in place on the proxy.",
            ),
        ];
        for (name, kind, help) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (n, p) in &g.proxies {
                let s = &p.stats;
                let label = escape_label(n);
                let _ = match name {
                    "faultline_proxy_enabled" => {
                        writeln!(out, "{name}{{proxy=\"{label}\"}} {}", u8::from(p.enabled()))
                    }
                    "faultline_proxy_connections" => writeln!(
                        out,
                        "{name}{{proxy=\"{label}\"}} {}",
                        s.open.load(Ordering::Relaxed)
                    ),
                    "faultline_proxy_accepted_total" => writeln!(
                        out,
                        "{name}{{proxy=\"{label}\"}} {}",
                        s.accepted.load(Ordering::Relaxed)
                    ),
                    "faultline_proxy_upstream_failures_total" => writeln!(
                        out,
                        "{name}{{proxy=\"{label}\"}} {}",
                        s.upstream_failures.load(Ordering::Relaxed)
                    ),
                    "faultline_proxy_bytes_total" => writeln!(
                        out,
                        "{name}{{proxy=\"{label}\",direction=\"upstream\"}} {}\n{name}{{proxy=\"{label}\",direction=\"downstream\"}} {}",
                        s.upstream_bytes.load(Ordering::Relaxed),
                        s.downstream_bytes.load(Ordering::Relaxed)
                    ),
                    _ => writeln!(out, "{name}{{proxy=\"{label}\"}} {}", p.toxics.len()),
                };
            }
        }
        out
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Whether a listen address asked for is the one a proxy has (after resolving).
fn same_listen(current: &str, asked: &str) -> bool {
    match resolve(asked) {
        Ok(a) => a.to_string() == current,
        Err(_) => false,
    }
}

fn apply_update(p: &mut Proxy, f: ProxyFields) -> Result<(), ApiError> {
    let mut restart = false;
    if let Some(listen) = f.listen {
        let asked = resolve(&listen).map_err(|e| ApiError::new(500, e))?;
        if asked.to_string() != p.listen {
            p.listen = listen;
            restart = true;
        }
    }
    if let Some(upstream) = f.upstream.filter(|u| *u != p.upstream) {
        p.upstream = upstream;
        restart = true;
    }
    let enabled = f.enabled.unwrap_or(p.enabled());
    if restart || !enabled {
        p.stop();
    }
    if enabled {
        p.start().map_err(|e| ApiError::new(500, e))?;
    }
    Ok(())
}

/// Toxiproxy's JSON for a proxy.
fn proxy_json(p: &Proxy) -> Value {
    let mut v = json!({
        "name": p.name,
        "listen": p.listen,
        "upstream": p.upstream,
        "enabled": p.enabled(),
        "toxics": p.toxics_in_order().iter().map(|t| t.to_json()).collect::<Vec<_>>(),
    });
    if p.protocol == Protocol::Http {
        v["protocol"] = json!("http");
    }
    v
}

fn state_json(g: &Inner) -> Value {
    json!({
        "version": 1,
        "proxies": g.proxies.values().map(proxy_json).collect::<Vec<_>>(),
    })
}
