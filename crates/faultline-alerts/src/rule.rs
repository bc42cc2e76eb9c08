//! Alert rule definitions and their validation, whose errors name the field. Read from
//! the configuration file:
//!
//! ```toml
//! [[alerts]]
//! name = "checkout-slow"          # letters, digits, '.', '_' and '-'; at most 64
//! service = "checkout"
//! operation = "POST /checkout"    # optional: the whole service's requests when absent
//! p99_above_ms = 800              # exactly one of p99_above_ms, error_rate_above
//! # error_rate_above = 0.05       #   (a share, 0 to 1) and no_spans = true
//! # no_spans = true
//! for_minutes = 5                 # 1 to 1440: every one of the last N whole minutes
//! ```
//!
//! For a whole service, p99 and error rate are of its requests (entry spans, as
//! `/api/v1/red` counts them); for an operation, of its spans.

use serde::{Deserialize, Serialize};

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Unique name.
    pub name: String,
    /// The service watched.
    pub service: String,
    /// One operation of it, or the service's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Fires when p99 latency is above this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_above_ms: Option<f64>,
    /// Fires when the error rate is above this share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_above: Option<f64>,
    /// Fires when no spans arrive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_spans: bool,
    /// Minutes the condition must hold (each of the last N whole minutes).
    pub for_minutes: u32,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// p99 above, in ms.
    P99Above(f64),
    /// Error rate above, a share.
    ErrorRateAbove(f64),
    /// No spans at all.
    NoSpans,
}

/// A rule that cannot be used: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert rule {rule:?}: {field}: {message}")]
pub struct RuleError {
    /// The rule's name (as given).
    pub rule: String,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl RuleDef {
    /// The rule's condition (after [`Self::validate`]).
    pub fn condition(&self) -> Condition {
        match (self.p99_above_ms, self.error_rate_above) {
            (Some(ms), _) => Condition::P99Above(ms),
            (None, Some(r)) => Condition::ErrorRateAbove(r),
            (None, None) => Condition::NoSpans,
        }
    }

    /// What the rule says, in words: `p99 of checkout POST /checkout above 800 ms for 5
    /// minutes`.
    pub fn describe(&self) -> String {
        let what = match &self.operation {
            Some(op) => format!("{} {op}", self.service),
            None => format!("{} requests", self.service),
        };
        let minutes = if self.for_minutes == 1 {
            "1 minute".to_string()
        } else {
            format!("{} minutes", self.for_minutes)
        };
        match self.condition() {
            Condition::P99Above(ms) => format!("p99 of {what} above {ms} ms for {minutes}"),
            Condition::ErrorRateAbove(r) => {
                format!("error rate of {what} above {:.2}% for {minutes}", r * 100.0)
            }
            Condition::NoSpans => format!("no spans from {what} for {minutes}"),
        }
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), RuleError> {
        let err = |field: &str, message: &str| RuleError {
            rule: self.name.clone(),
            field: field.into(),
            message: message.into(),
        };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(err(
                "name",
                "must be 1 to 64 letters, digits, '.', '_' or '-'",
            ));
        }
        if self.service.is_empty() {
            return Err(err("service", "is empty; name the service watched"));
        }
        if !(1..=1440).contains(&self.for_minutes) {
            return Err(err("for_minutes", "must be 1 to 1440"));
        }
        let given = usize::from(self.p99_above_ms.is_some())
            + usize::from(self.error_rate_above.is_some())
            + usize::from(self.no_spans);
        if given != 1 {
            return Err(err(
                "p99_above_ms",
                "give exactly one condition: p99_above_ms, error_rate_above or no_spans = true",
            ));
        }
        if let Some(ms) = self.p99_above_ms
            && !(ms.is_finite() && ms > 0.0)
        {
            return Err(err(
                "p99_above_ms",
                "must be a positive number of milliseconds",
            ));
        }
        if let Some(r) = self.error_rate_above
            && !(0.0..1.0).contains(&r)
        {
            return Err(err(
                "error_rate_above",
                "is a share from 0 to 1 (0.05 for 5%), below 1",
            ));
        }
        Ok(())
    }
}

/// [`check_all`], giving the list back when it passes.
pub fn checked(list: Vec<RuleDef>) -> Result<Vec<RuleDef>, RuleError> {
    check_all(&list).map(|()| list)
}

/// Checks a list of rules: each valid, each name once.
pub fn check_all(rules: &[RuleDef]) -> Result<(), RuleError> {
    let mut names = std::collections::HashSet::new();
    for r in rules {
        r.validate()?;
        if !names.insert(r.name.as_str()) {
            return Err(RuleError {
                rule: r.name.clone(),
                field: "name".into(),
                message: "is used by another rule; names are unique".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_rules_name_their_field() {
        let ok: RuleDef = toml::from_str(
            "name = \"slow\"\nservice = \"checkout\"\noperation = \"POST /checkout\"\np99_above_ms = 800\nfor_minutes = 5\n",
        )
        .unwrap();
        assert!(ok.validate().is_ok());
        assert_eq!(
            ok.describe(),
            "p99 of checkout POST /checkout above 800 ms for 5 minutes"
        );
        let field = |r: RuleDef| r.validate().unwrap_err().field;
        assert_eq!(
            field(RuleDef {
                for_minutes: 0,
                ..ok.clone()
            }),
            "for_minutes"
        );
        assert_eq!(
            field(RuleDef {
                no_spans: true,
                ..ok.clone()
            }),
            "p99_above_ms"
        );
        assert_eq!(
            field(RuleDef {
                p99_above_ms: None,
                error_rate_above: Some(5.0),
                ..ok.clone()
            }),
            "error_rate_above"
        );
        assert_eq!(
            field(RuleDef {
                service: String::new(),
                ..ok.clone()
            }),
            "service"
        );
        assert!(
            toml::from_str::<RuleDef>("name = \"x\"\nservice = \"s\"\nfor_minute = 1\n").is_err()
        );
        assert_eq!(check_all(&[ok.clone(), ok]).unwrap_err().field, "name");
    }
}
