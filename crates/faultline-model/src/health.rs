//! The vocabulary of faultline's status report: how healthy a part is, and what an
//! operator sees about it. Each stage judges its own parts with its own rules (intake:
//! `wal`, `disk`, `memory`, `lanes`; the pipeline: `indexing`, `backlog`, `sealing`,
//! `dead letters`; the store: `store`); the API only orders and serializes them
//! (`GET /api/v1/status`, the status page).

use serde_json::Value;

/// How healthy a part is. Ordered: the worst part decides the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Working as intended.
    Ok,
    /// Working with less than everything (behind, partial, near a limit).
    Degraded,
    /// Not working; intake or queries are refused because of it.
    Failed,
}

impl Health {
    /// `ok`, `degraded` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

/// One part of faultline as the status report shows it.
#[derive(Debug, Clone)]
pub struct Component {
    /// Short name (`wal`, `disk`, `indexing`, `sealing`, `store`, ...).
    pub name: &'static str,
    /// Its health.
    pub health: Health,
    /// One line saying what is going on.
    pub summary: String,
    /// What an operator can do about it, when it is not healthy.
    pub action: Option<String>,
    /// Its figures, as a JSON object (the API passes it through unchanged).
    pub details: Value,
}

impl Component {
    /// A part with no action to take.
    pub fn new(name: &'static str, health: Health, summary: impl Into<String>) -> Self {
        Self {
            name,
            health,
            summary: summary.into(),
            action: None,
            details: Value::Null,
        }
    }

    /// Sets the operator action.
    #[must_use]
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Sets the figures.
    #[must_use]
    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

/// `n` and `word`, with an `s` when `n` is not 1 (`1 block`, `3 blocks`).
pub fn plural(n: impl Into<u64>, word: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A duration in nanoseconds as `850 µs`, `12.3 ms`, `1.24 s` (the UI's, the status
/// report's and the clock-skew notes' format).
pub fn human_duration(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ns < 1_000_000 {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// Bytes as `512 B`, `512.5 KiB`, `3.9 GiB`.
pub fn human_bytes(n: u64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(524_800), "512.5 KiB");
        assert_eq!(human_bytes(4 << 30), "4.0 GiB");
    }

    #[test]
    fn health_orders_from_ok_to_failed() {
        assert!(Health::Ok < Health::Degraded && Health::Degraded < Health::Failed);
        let c = Component::new("wal", Health::Degraded, "x").action("y");
        assert_eq!(
            (c.health.as_str(), c.action.as_deref()),
            ("degraded", Some("y"))
        );
    }
}
