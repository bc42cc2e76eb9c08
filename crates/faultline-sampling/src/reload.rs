//! The policy in force, and its reload from the policy file without a restart.
//!
//! A watcher thread reads the file every interval (a second by default; reading a small
//! file is cheaper than trusting modification times, which miss a rewrite within the
//! same second). When the bytes changed it parses and validates them: a good policy
//! replaces the one in force at once; a bad one is refused, its reason kept for the
//! status page and logged once, and the last good policy stays in force. A policy file
//! that is bad at start-up stops the start: there is no last good policy to keep.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_model::health::{Component, Health};

use crate::policy::{Policy, PolicyError};

/// The policy in force, shared by the sampling endpoint and the status page.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    path: Option<PathBuf>,
    state: Arc<RwLock<State>>,
}

#[derive(Debug)]
struct State {
    policy: Arc<Policy>,
    /// The bytes the policy in force was read from, or the last refused bytes: a file
    /// is judged once per change.
    seen: Option<Vec<u8>>,
    generation: u64,
    loaded_at: SystemTime,
    last_error: Option<(SystemTime, String)>,
    reloads: u64,
    refusals: u64,
}

/// What the status page and the API say about the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyStatus {
    /// The policy file, or `None` when none is configured (every trace is kept).
    pub source: Option<PathBuf>,
    /// 1 for the policy read at start-up, +1 for every reload taken.
    pub generation: u64,
    /// When the policy in force was loaded, Unix seconds.
    pub loaded_unix_secs: u64,
    /// Why the newest version of the file was refused, if it was (cleared by a good one).
    pub last_error: Option<String>,
    /// When that refusal happened, Unix seconds.
    pub last_error_unix_secs: Option<u64>,
    /// Reloads taken since start.
    pub reloads: u64,
    /// Versions of the file refused since start.
    pub refusals: u64,
}

/// What one check of the file found.
#[derive(Debug, PartialEq)]
pub enum Check {
    /// No policy file is configured.
    NoFile,
    /// The file holds the bytes already judged.
    Unchanged,
    /// A new policy is in force.
    Reloaded,
    /// The file changed but was refused; the last good policy stays.
    Refused(String),
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PolicyHandle {
    /// A policy that never changes (no file configured).
    pub fn fixed(policy: Policy) -> Self {
        Self::new(policy, None, None)
    }

    /// Generation 1 of `policy`, read from `path` as `seen` (none: never reloaded).
    fn new(policy: Policy, path: Option<PathBuf>, seen: Option<Vec<u8>>) -> Self {
        Self {
            path,
            state: Arc::new(RwLock::new(State {
                policy: Arc::new(policy),
                seen,
                generation: 1,
                loaded_at: SystemTime::now(),
                last_error: None,
                reloads: 0,
                refusals: 0,
            })),
        }
    }

    /// Loads the policy file at `path`; an unreadable or invalid file is an error (at
    /// start-up there is no last good policy to fall back to).
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let bytes = crate::policy::read_file(path)?;
        let policy = parse_bytes(path, &bytes)?;
        Ok(Self::new(policy, Some(path.to_path_buf()), Some(bytes)))
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.read().policy.clone()
    }

    /// The policy's source, generation and last refusal.
    pub fn status(&self) -> PolicyStatus {
        let s = self.read();
        PolicyStatus {
            source: self.path.clone(),
            generation: s.generation,
            loaded_unix_secs: unix_secs(s.loaded_at),
            last_error: s.last_error.as_ref().map(|(_, m)| m.clone()),
            last_error_unix_secs: s.last_error.as_ref().map(|(t, _)| unix_secs(*t)),
            reloads: s.reloads,
            refusals: s.refusals,
        }
    }

    /// Reads the policy file once and takes or refuses what changed.
    pub fn check(&self) -> Check {
        let Some(path) = &self.path else {
            return Check::NoFile;
        };
        let read = crate::policy::read_file(path);
        let mut s = self.write();
        let outcome = match read {
            Err(e) => {
                let message = e.to_string();
                // A missing file is judged once, not every second.
                if s.last_error.as_ref().is_some_and(|(_, m)| *m == message) {
                    return Check::Unchanged;
                }
                s.seen = None;
                Err(message)
            }
            Ok(bytes) => {
                if s.seen.as_deref() == Some(bytes.as_slice()) {
                    return Check::Unchanged;
                }
                let parsed = parse_bytes(path, &bytes);
                s.seen = Some(bytes);
                parsed.map_err(|e| e.to_string())
            }
        };
        match outcome {
            Ok(policy) => {
                s.policy = Arc::new(policy);
                s.generation += 1;
                s.loaded_at = SystemTime::now();
                s.last_error = None;
                s.reloads += 1;
                tracing::info!(
                    path = %path.display(), generation = s.generation,
                    "sampling policy reloaded"
                );
                Check::Reloaded
            }
            Err(message) => {
                s.refusals += 1;
                s.last_error = Some((SystemTime::now(), message.clone()));
                tracing::warn!(
                    error = %message, generation = s.generation,
                    "sampling policy refused; the last good policy stays in force"
                );
                Check::Refused(message)
            }
        }
    }

    /// Starts a thread that checks the file every `every` until the returned watcher is
    /// dropped. Without a policy file no thread is started.
    pub fn watch(&self, every: Duration) -> std::io::Result<Watcher> {
        let (stop, stopped) = mpsc::channel::<()>();
        if self.path.is_none() {
            return Ok(Watcher { _stop: stop });
        }
        let handle = self.clone();
        std::thread::Builder::new()
            .name("sampling-policy".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    handle.check();
                }
            })?;
        Ok(Watcher { _stop: stop })
    }

    /// The `sampling policy` part of the status report: ok while the newest version of
    /// the file is in force; degraded while a refused version waits to be fixed (the last
    /// good policy is served meanwhile, which is not what the operator last wrote).
    pub fn health(&self) -> Component {
        let st = self.status();
        let source = st
            .source
            .as_ref()
            .map_or("no policy file: every trace is kept".to_string(), |p| {
                p.display().to_string()
            });
        let details = serde_json::json!({
            "source": st.source.as_ref().map(|p| p.display().to_string()),
            "generation": st.generation,
            "loaded_unix_secs": st.loaded_unix_secs,
            "reloads": st.reloads,
            "refusals": st.refusals,
            "last_error": st.last_error,
        });
        match &st.last_error {
            None => Component::new(
                "sampling policy",
                Health::Ok,
                format!("generation {} in force ({source})", st.generation),
            )
            .details(details),
            Some(why) => Component::new(
                "sampling policy",
                Health::Degraded,
                format!(
                    "the newest policy file was refused; generation {} stays in force: {why}",
                    st.generation
                ),
            )
            .action("fix the policy file; it is read again within a second of being saved")
            .details(details),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves a whole `State` (every write replaces
        // fields with complete values), so a poisoned lock is still usable.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Stops the watcher thread when dropped.
#[derive(Debug)]
pub struct Watcher {
    _stop: mpsc::Sender<()>,
}

fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Policy, PolicyError> {
    let text = std::str::from_utf8(bytes).map_err(|e| PolicyError::Parse {
        path: path.display().to_string(),
        message: format!("not UTF-8 text ({e})"),
    })?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    Policy::parse(text, json, &path.display().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::policy::StrategyKind;

    fn prob(h: &PolicyHandle, service: &str) -> StrategyKind {
        h.current().strategy_for(service).kind
    }

    #[test]
    fn good_changes_are_taken_bad_ones_refused_and_the_last_good_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let write = |t: &str| std::fs::write(&path, t).unwrap();
        write("[default_strategy]\ntype = \"probabilistic\"\nparam = 0.25\n");
        let h = PolicyHandle::from_file(&path).unwrap();
        assert_eq!(prob(&h, "a"), StrategyKind::Probabilistic(0.25));
        assert_eq!(h.check(), Check::Unchanged);

        write("[default_strategy]\ntype = \"probabilistic\"\nparam = 0.75\n");
        assert_eq!(h.check(), Check::Reloaded);
        assert_eq!(prob(&h, "a"), StrategyKind::Probabilistic(0.75));
        assert_eq!(h.status().generation, 2);

        write("[default_strategy]\ntype = \"probabilistic\"\nparam = 7\n");
        let Check::Refused(why) = h.check() else {
            panic!("a probability of 7 is refused")
        };
        assert!(why.contains("param 7 is not a probability"), "{why}");
        assert_eq!(prob(&h, "a"), StrategyKind::Probabilistic(0.75));
        // Judged once: the same bad bytes are not refused again every second.
        assert_eq!(h.check(), Check::Unchanged);
        let st = h.status();
        assert_eq!((st.generation, st.reloads, st.refusals), (2, 1, 1));
        assert!(st.last_error.unwrap().contains("param 7"));

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(h.check(), Check::Refused(m) if m.contains("cannot read")));
        assert_eq!(h.check(), Check::Unchanged);
        assert_eq!(prob(&h, "a"), StrategyKind::Probabilistic(0.75));

        write("[default_strategy]\ntype = \"ratelimiting\"\nparam = 3\n");
        assert_eq!(h.check(), Check::Reloaded);
        assert_eq!(prob(&h, "a"), StrategyKind::RateLimiting(3));
        let st = h.status();
        assert_eq!((st.generation, st.reloads, st.refusals), (3, 2, 2));
        assert_eq!(st.last_error, None, "a good policy clears the refusal");
    }

    #[test]
    fn a_bad_file_at_start_up_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(
            &path,
            "{\"default_strategy\": {\"type\": \"x\", \"param\": 1}}",
        )
        .unwrap();
        let err = PolicyHandle::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("unknown type \"x\""), "{err}");
    }

    #[test]
    fn the_watcher_picks_up_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "").unwrap();
        let h = PolicyHandle::from_file(&path).unwrap();
        let _w = h.watch(Duration::from_millis(20)).unwrap();
        std::fs::write(
            &path,
            "[default_strategy]\ntype = \"probabilistic\"\nparam = 0.5\n",
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while prob(&h, "a") != StrategyKind::Probabilistic(0.5) {
            assert!(std::time::Instant::now() < deadline, "not reloaded in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
