//! The sampling policy: which share of traces each service's SDK keeps, per service and
//! per operation, as Jaeger's remote sampling protocol describes it.
//!
//! ## File format
//!
//! A policy file is TOML, or JSON when its name ends in `.json` (then it is Jaeger's own
//! strategies file, so a Jaeger or OpenTelemetry Collector policy moves over unchanged).
//! Both have the same keys:
//!
//! ```toml
//! # What a service without its own entry gets. Without this table: keep every trace.
//! [default_strategy]
//! type = "probabilistic"        # keep this share of traces, by trace id
//! param = 0.1                   # a probability from 0 to 1
//! # Per operation (span name), for every service whose strategy is probabilistic and
//! # that does not name the operation itself.
//! operation_strategies = [
//!   { operation = "GET /health", type = "probabilistic", param = 0.0 },
//! ]
//!
//! [[service_strategies]]
//! service = "checkout"
//! type = "probabilistic"
//! param = 0.5
//! operation_strategies = [
//!   { operation = "PlaceOrder", type = "probabilistic", param = 1.0 },
//! ]
//!
//! [[service_strategies]]
//! service = "search"
//! type = "ratelimiting"         # at most this many traces per second, per SDK
//! param = 20                    # a whole number from 0 to 1,000,000
//! ```
//!
//! Unknown keys, unknown types, probabilities outside 0..=1, fractional or negative rates,
//! a service named twice and per-operation strategies under a rate-limited service (which
//! Jaeger's SDKs would ignore) are refused with a message that says where. Operation
//! strategies are probabilistic only, as in Jaeger.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// Largest rate a rate-limiting strategy may ask for (Jaeger's field is an int32; no SDK
/// should take more than this many traces per second from one process).
pub const MAX_TRACES_PER_SECOND: f64 = 1_000_000.0;

/// Largest policy file read (a policy is a few kilobytes; anything near this is a wrong
/// path, and the watcher reads the file every second).
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Reads the policy file at `path`, refusing one over [`MAX_POLICY_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, PolicyError> {
    let shown = || path.display().to_string();
    let len = std::fs::metadata(path)
        .map_err(|source| PolicyError::Read {
            path: shown(),
            source,
        })?
        .len();
    if len > MAX_POLICY_BYTES {
        return Err(PolicyError::Invalid {
            path: shown(),
            message: format!(
                "the file is {len} bytes, over the {MAX_POLICY_BYTES}-byte limit for a policy; is this the right file?"
            ),
        });
    }
    std::fs::read(path).map_err(|source| PolicyError::Read {
        path: shown(),
        source,
    })
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read sampling policy {path}: {source}; check the path and its permissions")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or JSON of the policy's shape.
    #[error("sampling policy {path} does not parse: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (it names the line and the key).
        message: String,
    },
    /// The file parses but a value is not allowed.
    #[error("sampling policy {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and where.
        message: String,
    },
}

/// How a service's (or an operation's) traces are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StrategyKind {
    /// Keep this share of traces, decided on the trace id.
    Probabilistic(f64),
    /// Keep at most this many traces per second, per SDK.
    RateLimiting(u32),
}

/// One operation's probability within a service's strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationStrategy {
    /// The operation (span name).
    pub operation: String,
    /// The share of its traces kept.
    pub probability: f64,
}

/// What one service's SDKs are told.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategy {
    /// The service's own strategy.
    pub kind: StrategyKind,
    /// Per-operation probabilities (empty unless `kind` is probabilistic).
    pub operations: Vec<OperationStrategy>,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    default: Strategy,
    services: Vec<(String, Strategy)>,
}

impl Default for Policy {
    /// Keep every trace: what faultline serves until a policy file says otherwise.
    fn default() -> Self {
        Self {
            default: Strategy {
                kind: StrategyKind::Probabilistic(1.0),
                operations: Vec::new(),
            },
            services: Vec::new(),
        }
    }
}

/// The file's shape (see the module header).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    #[serde(default)]
    default_strategy: Option<EntryRepr>,
    #[serde(default)]
    service_strategies: Vec<ServiceRepr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRepr {
    #[serde(rename = "type")]
    kind: String,
    param: f64,
    #[serde(default)]
    operation_strategies: Vec<OperationRepr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceRepr {
    service: String,
    #[serde(rename = "type")]
    kind: String,
    param: f64,
    #[serde(default)]
    operation_strategies: Vec<OperationRepr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationRepr {
    operation: String,
    #[serde(rename = "type")]
    kind: String,
    param: f64,
}

impl Policy {
    /// Reads and validates the policy file at `path` (JSON if its name ends in `.json`,
    /// else TOML).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let bytes = read_file(path)?;
        let text = String::from_utf8(bytes).map_err(|e| PolicyError::Parse {
            path: shown.clone(),
            message: format!("not UTF-8 text ({e})"),
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Self::parse(&text, json, &shown)
    }

    /// Parses and validates a policy; `json` selects Jaeger's JSON over TOML; `path` only
    /// names the source in errors.
    pub fn parse(text: &str, json: bool, path: &str) -> Result<Self, PolicyError> {
        let repr: FileRepr = if json {
            serde_json::from_str(text).map_err(|e| PolicyError::Parse {
                path: path.to_string(),
                message: e.to_string(),
            })?
        } else {
            toml::from_str(text).map_err(|e| PolicyError::Parse {
                path: path.to_string(),
                message: e.to_string().trim_end().to_string(),
            })?
        };
        let invalid = |message: String| PolicyError::Invalid {
            path: path.to_string(),
            message,
        };
        let default = match repr.default_strategy {
            Some(e) => entry(
                "default_strategy",
                &e.kind,
                e.param,
                &e.operation_strategies,
            )
            .map_err(invalid)?,
            None => Policy::default().default,
        };
        let mut seen = HashSet::new();
        let mut services = Vec::with_capacity(repr.service_strategies.len());
        for (i, s) in repr.service_strategies.iter().enumerate() {
            let at = format!("service_strategies[{i}] ({:?})", s.service);
            if s.service.trim().is_empty() {
                return Err(invalid(format!(
                    "service_strategies[{i}] has an empty service name; name the service as its SDK reports service.name"
                )));
            }
            if !seen.insert(s.service.as_str()) {
                return Err(invalid(format!(
                    "{at} names a service already given a strategy above; keep one entry per service"
                )));
            }
            let strategy =
                entry(&at, &s.kind, s.param, &s.operation_strategies).map_err(invalid)?;
            services.push((s.service.clone(), strategy));
        }
        Ok(Self { default, services })
    }

    /// The strategy `service`'s SDKs are told: its own entry, or the default; a
    /// probabilistic service also gets the default's operation strategies for operations
    /// it does not name.
    pub fn strategy_for(&self, service: &str) -> Strategy {
        let Some((_, own)) = self.services.iter().find(|(name, _)| name == service) else {
            return self.default.clone();
        };
        let mut out = own.clone();
        if matches!(out.kind, StrategyKind::Probabilistic(_)) {
            for op in &self.default.operations {
                if !out.operations.iter().any(|o| o.operation == op.operation) {
                    out.operations.push(op.clone());
                }
            }
        }
        out
    }

    /// The services with their own entry, in file order.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|(name, _)| name.as_str())
    }

    /// The default strategy.
    pub fn default_strategy(&self) -> &Strategy {
        &self.default
    }
}

/// Validates one entry; the error names `at`.
fn entry(at: &str, kind: &str, param: f64, ops: &[OperationRepr]) -> Result<Strategy, String> {
    let kind = match kind {
        "probabilistic" => StrategyKind::Probabilistic(probability(at, param)?),
        "ratelimiting" => {
            if !(param.is_finite() && (0.0..=MAX_TRACES_PER_SECOND).contains(&param))
                || param.fract() != 0.0
            {
                return Err(format!(
                    "{at}: param {param} is not a rate; a ratelimiting strategy takes a whole number of traces per second from 0 to 1000000"
                ));
            }
            // In range and whole (checked above), so the conversion is exact.
            StrategyKind::RateLimiting(param as u32)
        }
        other => {
            return Err(format!(
                "{at}: unknown type {other:?}; use \"probabilistic\" or \"ratelimiting\""
            ));
        }
    };
    if matches!(kind, StrategyKind::RateLimiting(_)) && !ops.is_empty() {
        return Err(format!(
            "{at}: operation_strategies need a probabilistic strategy (Jaeger's SDKs apply them only then); make the service probabilistic or drop its operation strategies"
        ));
    }
    let mut operations = Vec::with_capacity(ops.len());
    for (j, op) in ops.iter().enumerate() {
        let op_at = format!("{at}.operation_strategies[{j}] ({:?})", op.operation);
        if op.operation.is_empty() {
            return Err(format!(
                "{at}.operation_strategies[{j}] has an empty operation; name the span name it applies to"
            ));
        }
        if op.kind != "probabilistic" {
            return Err(format!(
                "{op_at}: type {:?} is not supported per operation; use \"probabilistic\"",
                op.kind
            ));
        }
        if operations
            .iter()
            .any(|o: &OperationStrategy| o.operation == op.operation)
        {
            return Err(format!("{op_at}: the operation is named twice"));
        }
        operations.push(OperationStrategy {
            operation: op.operation.clone(),
            probability: probability(&op_at, op.param)?,
        });
    }
    Ok(Strategy { kind, operations })
}

fn probability(at: &str, p: f64) -> Result<f64, String> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!(
            "{at}: param {p} is not a probability; a probabilistic strategy takes a number from 0 to 1 (0.1 keeps one trace in ten)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[default_strategy]
type = "probabilistic"
param = 0.1
operation_strategies = [
  { operation = "GET /health", type = "probabilistic", param = 0.0 },
  { operation = "PlaceOrder", type = "probabilistic", param = 0.3 },
]

[[service_strategies]]
service = "checkout"
type = "probabilistic"
param = 0.5
operation_strategies = [{ operation = "PlaceOrder", type = "probabilistic", param = 1.0 }]

[[service_strategies]]
service = "search"
type = "ratelimiting"
param = 20
"#;

    #[test]
    fn services_get_their_own_strategy_and_the_defaults_operations() {
        let p = Policy::parse(TOML, false, "p.toml").unwrap();
        let checkout = p.strategy_for("checkout");
        assert_eq!(checkout.kind, StrategyKind::Probabilistic(0.5));
        assert_eq!(
            checkout.operations,
            vec![
                OperationStrategy {
                    operation: "PlaceOrder".into(),
                    probability: 1.0
                },
                OperationStrategy {
                    operation: "GET /health".into(),
                    probability: 0.0
                },
            ]
        );
        let search = p.strategy_for("search");
        assert_eq!(search.kind, StrategyKind::RateLimiting(20));
        assert!(search.operations.is_empty());
        let other = p.strategy_for("anything-else");
        assert_eq!(other.kind, StrategyKind::Probabilistic(0.1));
        assert_eq!(other.operations.len(), 2);
        assert_eq!(p.services().collect::<Vec<_>>(), ["checkout", "search"]);
    }

    #[test]
    fn jaegers_strategies_file_reads_the_same() {
        let json = r#"{
          "service_strategies": [
            {"service": "checkout", "type": "probabilistic", "param": 0.5,
             "operation_strategies": [{"operation": "PlaceOrder", "type": "probabilistic", "param": 1.0}]},
            {"service": "search", "type": "ratelimiting", "param": 20}
          ],
          "default_strategy": {"type": "probabilistic", "param": 0.1,
            "operation_strategies": [
              {"operation": "GET /health", "type": "probabilistic", "param": 0.0},
              {"operation": "PlaceOrder", "type": "probabilistic", "param": 0.3}]}
        }"#;
        assert_eq!(
            Policy::parse(json, true, "p.json").unwrap(),
            Policy::parse(TOML, false, "p.toml").unwrap()
        );
    }

    #[test]
    fn without_a_file_every_trace_is_kept() {
        let p = Policy::default();
        assert_eq!(p.strategy_for("x").kind, StrategyKind::Probabilistic(1.0));
        let empty = Policy::parse("", false, "empty.toml").unwrap();
        assert_eq!(empty, p);
    }

    #[test]
    fn bad_policies_are_refused_saying_where() {
        let cases = [
            (
                "[default_strategy]\ntype = \"probabilistic\"\nparam = 1.5\n",
                "default_strategy: param 1.5 is not a probability",
            ),
            (
                "[[service_strategies]]\nservice = \"a\"\ntype = \"sometimes\"\nparam = 1\n",
                "service_strategies[0] (\"a\"): unknown type \"sometimes\"",
            ),
            (
                "[[service_strategies]]\nservice = \"a\"\ntype = \"ratelimiting\"\nparam = 2.5\n",
                "param 2.5 is not a rate",
            ),
            (
                "[[service_strategies]]\nservice = \"a\"\ntype = \"ratelimiting\"\nparam = -1\n",
                "param -1 is not a rate",
            ),
            (
                "[[service_strategies]]\nservice = \"a\"\ntype = \"probabilistic\"\nparam = 1\n[[service_strategies]]\nservice = \"a\"\ntype = \"probabilistic\"\nparam = 0.5\n",
                "service_strategies[1] (\"a\") names a service already given a strategy",
            ),
            (
                "[[service_strategies]]\nservice = \"a\"\ntype = \"ratelimiting\"\nparam = 5\noperation_strategies = [{ operation = \"x\", type = \"probabilistic\", param = 0.5 }]\n",
                "operation_strategies need a probabilistic strategy",
            ),
            (
                "[[service_strategies]]\nservice = \"a\"\ntype = \"probabilistic\"\nparam = 1\noperation_strategies = [{ operation = \"x\", type = \"ratelimiting\", param = 5 }]\n",
                "operation_strategies[0] (\"x\"): type \"ratelimiting\" is not supported per operation",
            ),
            (
                "[[service_strategies]]\nservice = \"\"\ntype = \"probabilistic\"\nparam = 1\n",
                "service_strategies[0] has an empty service name",
            ),
            (
                "[default_strategy]\ntype = \"probabilistic\"\nparm = 0.5\n",
                "does not parse",
            ),
            ("[[service_strategies]\n", "does not parse"),
        ];
        for (text, want) in cases {
            let err = Policy::parse(text, false, "p.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            assert!(err.contains("p.toml"), "{err:?} names the file");
        }
        let err = Policy::parse("{\"default_strategy\": 3}", true, "p.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.json does not parse"), "{err}");
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        std::fs::write(&path, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        let err = Policy::load(&path).unwrap_err().to_string();
        assert!(err.contains("over the 1048576-byte limit"), "{err}");
    }

    #[test]
    fn a_missing_file_says_which() {
        let err = Policy::load(Path::new("/nonexistent/policy.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/policy.toml"), "{err}");
    }
}
