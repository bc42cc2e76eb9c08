//! Eventual-consistency rules: "every span matching `first`, keyed by attribute `key`, is
//! followed by a span matching `then` with the same key within `within`".
//!
//! A rule as written (TOML in `[[consistency]]` of the configuration file, JSON in the API
//! and in `faultline rules check`):
//!
//! ```toml
//! [[consistency]]
//! name = "order-shipped"
//! first = '{ service = "orders" && name = "create order" }'
//! then = '{ service = "shipping" && name = "ship order" }'
//! key = "order.id"          # span attribute, else resource attribute, on both sides
//! # first_key / then_key name a different attribute on one side
//! within = "10m"            # how long B may take after A
//! at_most_one = true        # two Bs for one key are a violation (default false)
//! require_first = true      # a B whose key never had an A is a violation (default false)
//! grace = "30s"             # wait for late ingestion before declaring a violation
//! keep = "24h"              # how long a settled key is remembered (late duplicates)
//! notify = true             # violations and repairs go to the notification outbox
//! ```
//!
//! Selectors are the trace-assertion language of `faultline_rules::selector`, restricted
//! to one span (no `>` or `>>`: a rule sees spans as they arrive, not whole traces).

use std::time::Duration;

use faultline_model::span::{AttrValue, Key, Span};
use faultline_rules::Selector;
use serde::{Deserialize, Serialize};

/// Longest rule name.
pub const MAX_NAME: usize = 100;

/// A rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub name: String,
    pub first: String,
    pub then: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then_key: Option<String>,
    pub within: String,
    #[serde(default)]
    pub at_most_one: bool,
    #[serde(default)]
    pub require_first: bool,
    #[serde(default = "default_grace")]
    pub grace: String,
    #[serde(default = "default_keep")]
    pub keep: String,
    #[serde(default = "yes")]
    pub notify: bool,
}

fn default_grace() -> String {
    "30s".into()
}
fn default_keep() -> String {
    "24h".into()
}
fn yes() -> bool {
    true
}

/// A rule refused: the field and what is wrong (a selector error gives its column).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("consistency rule {rule:?}, field {field}: {message}")]
pub struct RuleError {
    pub rule: String,
    pub field: &'static str,
    pub message: String,
}

/// A checked rule, ready to match spans.
#[derive(Debug, Clone)]
pub struct Rule {
    pub def: RuleDef,
    pub first: Selector,
    pub then: Selector,
    pub first_key: String,
    pub then_key: String,
    pub within_ns: u64,
    pub grace_ns: u64,
    pub keep_ns: u64,
}

/// What [`Rule::sides`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub first: Option<Option<String>>,
    pub then: Option<Option<String>>,
}

impl Rule {
    /// Checks a definition.
    pub fn new(def: RuleDef) -> Result<Rule, RuleError> {
        let err = |field: &'static str, message: String| RuleError {
            rule: def.name.clone(),
            field,
            message,
        };
        if def.name.is_empty()
            || def.name.len() > MAX_NAME
            || !def
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err(
                "name",
                format!("1 to {MAX_NAME} characters of letters, digits, '-', '_' and '.'"),
            ));
        }
        let selector = |field: &'static str, text: &str| {
            let s = Selector::parse(text).map_err(|e| err(field, e.to_string()))?;
            if !s.is_single() {
                return Err(err(
                    field,
                    "a rule's selector looks at one span: `>` and `>>` need a whole trace (use a trace assertion for them)".into(),
                ));
            }
            Ok(s)
        };
        let first = selector("first", &def.first)?;
        let then = selector("then", &def.then)?;
        let key_of =
            |field: &'static str, side: &Option<String>| match side.as_ref().or(def.key.as_ref()) {
                Some(k) if !k.trim().is_empty() => Ok(k.trim().to_string()),
                _ => Err(err(
                    field,
                    "name the attribute that keys both sides: `key`, or `first_key` and `then_key`"
                        .into(),
                )),
            };
        let first_key = key_of("first_key", &def.first_key)?;
        let then_key = key_of("then_key", &def.then_key)?;
        let dur = |field: &'static str, text: &str, least: u64| {
            match faultline_model::duration::parse_ns(text) {
                Some(n) if n >= least => Ok(n),
                Some(_) => Err(err(field, format!("{text:?} is too short"))),
                None => Err(err(
                    field,
                    format!("{text:?} is not a duration such as \"30s\", \"10m\" or \"1h30m\""),
                )),
            }
        };
        let within_ns = dur("within", &def.within, 1)?;
        let grace_ns = dur("grace", &def.grace, 0)?;
        let keep_ns = dur("keep", &def.keep, 60_000_000_000)?;
        Ok(Rule {
            first,
            then,
            first_key,
            then_key,
            within_ns,
            grace_ns,
            keep_ns,
            def,
        })
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// Which sides `span` matches: for each side, `None` when it does not match, else
    /// its key (`None` inside when the span lacks the key attribute). A span may be both
    /// an A and a B.
    pub fn sides(&self, span: &Span) -> Matched {
        Matched {
            first: self
                .first
                .matches_span(span)
                .then(|| key_value(span, &self.first_key)),
            then: self
                .then
                .matches_span(span)
                .then(|| key_value(span, &self.then_key)),
        }
    }

    /// How long after `within` a pending key waits for ingestion to catch up.
    pub fn grace(&self) -> Duration {
        Duration::from_nanos(self.grace_ns)
    }
}

/// The key attribute's value as text: the span's attribute, else the resource's. Empty
/// when absent.
pub fn key_value(span: &Span, key: &str) -> Option<String> {
    let find = |attrs: &[(Key, AttrValue)]| {
        attrs.iter().find(|(k, _)| k == key).map(|(_, v)| match v {
            AttrValue::Str(s) => s.to_string(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Double(d) => d.to_string(),
            other => format!("{other:?}"),
        })
    };
    find(&span.attributes)
        .or_else(|| find(&span.origin.resource))
        .filter(|k| !k.is_empty())
}

/// Parses the rules of a JSON array or object, or of a TOML file's `[[consistency]]`
/// tables, checking each; names must be unique.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let defs: Vec<RuleDef> = if text.trim_start().starts_with(['{', '[']) {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("the rule file is not JSON: {e}"))?;
        let v = match v {
            serde_json::Value::Array(_) => v,
            serde_json::Value::Object(ref o) if o.contains_key("consistency") => {
                o["consistency"].clone()
            }
            other => serde_json::Value::Array(vec![other]),
        };
        serde_json::from_value(v).map_err(|e| format!("a rule is malformed: {e}"))?
    } else {
        return Err(
            "give the rules as JSON (one rule object, an array, or {\"consistency\": [...]}); the server's TOML configuration is read by `faultline serve`"
                .into(),
        );
    };
    check_all(defs)
}

/// Checks definitions and their names' uniqueness.
pub fn check_all(defs: Vec<RuleDef>) -> Result<Vec<Rule>, String> {
    let mut out: Vec<Rule> = Vec::with_capacity(defs.len());
    for d in defs {
        if out.iter().any(|r| r.name() == d.name) {
            return Err(format!(
                "consistency rule {:?} is defined twice; names must be unique",
                d.name
            ));
        }
        out.push(Rule::new(d).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn def(name: &str) -> RuleDef {
        RuleDef {
            name: name.into(),
            first: r#"{ service = "orders" && name = "create order" }"#.into(),
            then: r#"{ service = "shipping" && name = "ship order" }"#.into(),
            key: Some("order.id".into()),
            first_key: None,
            then_key: None,
            within: "10m".into(),
            at_most_one: true,
            require_first: true,
            grace: default_grace(),
            keep: default_keep(),
            notify: true,
        }
    }

    #[test]
    fn bad_rules_name_the_field_and_position() {
        type Change = Box<dyn Fn(&mut RuleDef)>;
        let table: Vec<(Change, &str, &str)> = vec![
            (Box::new(|d| d.name = "a b".into()), "name", "letters"),
            (
                Box::new(|d| d.first = "{ service = }".into()),
                "first",
                "column",
            ),
            (
                Box::new(|d| d.then = r#"{ service = "a" } > { }"#.into()),
                "then",
                "one span",
            ),
            (Box::new(|d| d.key = None), "first_key", "attribute"),
            (
                Box::new(|d| d.within = "ten minutes".into()),
                "within",
                "not a duration",
            ),
            (Box::new(|d| d.within = "0".into()), "within", "too short"),
            (Box::new(|d| d.keep = "10s".into()), "keep", "too short"),
        ];
        for (change, field, words) in table {
            let mut d = def("r");
            change(&mut d);
            let e = Rule::new(d).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(words), "{e}");
        }
        let ok = Rule::new(def("order-shipped")).unwrap();
        assert_eq!(ok.within_ns, 600_000_000_000);
        assert_eq!(ok.first_key, "order.id");
    }

    #[test]
    fn rule_files_in_json() {
        let one = serde_json::to_string(&def("a")).unwrap();
        assert_eq!(parse_rules(&one).unwrap().len(), 1);
        let two = format!("[{one}, {}]", serde_json::to_string(&def("b")).unwrap());
        assert_eq!(parse_rules(&two).unwrap().len(), 2);
        let twice = format!("[{one}, {one}]");
        assert!(parse_rules(&twice).unwrap_err().contains("defined twice"));
        assert!(parse_rules("name = 1").unwrap_err().contains("JSON"));
        let unknown = one.replace("\"within\"", "\"withn\"");
        assert!(parse_rules(&unknown).unwrap_err().contains("withn"));
    }
}
