//! Receivers and outbox settings, read from the configuration file's `[notify]` table and
//! validated with errors that name the field:
//!
//! ```toml
//! [notify]
//! base_url = "https://faultline.example.com"  # prefix of trace links in messages
//!                                             #   (default: none, links are paths)
//! group_secs = 10        # wait this long after a transition for others to send with it
//!                        #   (0 to 600, default 10)
//! give_up_hours = 24     # stop retrying a message this old (1 to 720, default 24)
//!
//! [[notify.receivers]]
//! name = "ops-hook"      # letters, digits, '.', '_' and '-'; at most 64; unique
//! webhook = { url = "https://hooks.example.com/faultline", headers = { "x-team" = "ops" } }
//!
//! [[notify.receivers]]
//! name = "slack-ops"
//! slack = { url = "https://hooks.slack.com/services/T000/B000/XXXX" }
//!
//! [[notify.receivers]]
//! name = "oncall-mail"
//! smtp = { host = "smtp.example.com", port = 587, starttls = true,
//!          from = "faultline@example.com", to = ["oncall@example.com"],
//!          username = "faultline", password_env = "FAULTLINE_SMTP_PASSWORD" }
//! ```
//!
//! Each receiver has exactly one of `webhook`, `slack` and `smtp`. Passwords are never in
//! the file: `password_env` names the environment variable that holds one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Longest receiver name.
pub const MAX_NAME: usize = 64;
/// Most receivers.
pub const MAX_RECEIVERS: usize = 32;

/// The `[notify]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Prefix of the trace links in messages.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Seconds to wait after a transition for others to group with it.
    #[serde(default = "default_group")]
    pub group_secs: u64,
    /// Hours after which a message that could not be delivered is given up.
    #[serde(default = "default_give_up")]
    pub give_up_hours: u64,
    /// Where messages go.
    #[serde(default)]
    pub receivers: Vec<ReceiverDef>,
}

fn default_group() -> u64 {
    10
}

fn default_give_up() -> u64 {
    24
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            group_secs: default_group(),
            give_up_hours: default_give_up(),
            receivers: Vec::new(),
        }
    }
}

/// One receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverDef {
    /// Unique name.
    pub name: String,
    /// A webhook receiving JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// A Slack-compatible incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<Slack>,
    /// E-mail over SMTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<Smtp>,
}

/// A JSON webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A Slack-compatible incoming webhook (`{"text": ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slack {
    /// `http://` or `https://` URL.
    pub url: String,
}

/// An SMTP relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    /// Host name or address.
    pub host: String,
    /// Port (default 25).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// Upgrade the connection with STARTTLS (required when credentials are given).
    #[serde(default)]
    pub starttls: bool,
    /// The sender address.
    pub from: String,
    /// Recipient addresses.
    pub to: Vec<String>,
    /// User name for AUTH.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

fn default_smtp_port() -> u16 {
    25
}

/// What is wrong with the `[notify]` table, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("notify: {field}: {problem}")]
pub struct ConfigError {
    /// The field, e.g. `receivers[2].webhook.url`.
    pub field: String,
    /// What is wrong and what would do.
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

impl ReceiverDef {
    /// `webhook`, `slack` or `smtp`.
    pub fn kind(&self) -> &'static str {
        match (&self.webhook, &self.slack) {
            (Some(_), _) => "webhook",
            (None, Some(_)) => "slack",
            (None, None) => "smtp",
        }
    }

    /// Where it sends, for people: a URL without its path (Slack URLs hold a secret), or
    /// the relay and recipients.
    pub fn target(&self) -> String {
        let origin = |u: &str| -> String {
            let rest = u.split_once("://").map_or(u, |(_, r)| r);
            let host = rest.split('/').next().unwrap_or("");
            let scheme = u.split_once("://").map_or("", |(s, _)| s);
            format!("{scheme}://{host}/…")
        };
        match (&self.webhook, &self.slack, &self.smtp) {
            (Some(w), _, _) => origin(&w.url),
            (None, Some(s), _) => origin(&s.url),
            (None, None, Some(m)) => format!("{} via {}:{}", m.to.join(", "), m.host, m.port),
            (None, None, None) => String::new(),
        }
    }
}

fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| err(field, format!("{url:?} is not a URL ({e})")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(err(
                field,
                format!("{url:?}: use an http:// or https:// URL"),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(err(field, format!("{url:?} has no host")));
    }
    Ok(())
}

fn check_mailbox(field: &str, addr: &str) -> Result<(), ConfigError> {
    addr.parse::<lettre::message::Mailbox>()
        .map(drop)
        .map_err(|e| err(field, format!("{addr:?} is not an e-mail address ({e})")))
}

impl NotifyConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(b) = &self.base_url {
            check_url("base_url", b)?;
        }
        if self.group_secs > 600 {
            return Err(err("group_secs", "at most 600"));
        }
        if !(1..=720).contains(&self.give_up_hours) {
            return Err(err("give_up_hours", "from 1 to 720"));
        }
        if self.receivers.len() > MAX_RECEIVERS {
            return Err(err(
                "receivers",
                format!("at most {MAX_RECEIVERS} receivers"),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let at = |f: &str| format!("receivers[{i}].{f}");
            let name_ok = !r.name.is_empty()
                && r.name.len() <= MAX_NAME
                && r.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !name_ok {
                return Err(err(
                    at("name"),
                    format!(
                        "{:?}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-'",
                        r.name
                    ),
                ));
            }
            if !names.insert(r.name.as_str()) {
                return Err(err(at("name"), format!("{:?} is used twice", r.name)));
            }
            let kinds = usize::from(r.webhook.is_some())
                + usize::from(r.slack.is_some())
                + usize::from(r.smtp.is_some());
            if kinds != 1 {
                return Err(err(
                    format!("receivers[{i}]"),
                    "give exactly one of webhook, slack and smtp",
                ));
            }
            if let Some(w) = &r.webhook {
                check_url(&at("webhook.url"), &w.url)?;
                for k in w.headers.keys() {
                    if k.parse::<hyper::header::HeaderName>().is_err() {
                        return Err(err(
                            at("webhook.headers"),
                            format!("{k:?} is not a header name"),
                        ));
                    }
                }
            }
            if let Some(s) = &r.slack {
                check_url(&at("slack.url"), &s.url)?;
            }
            if let Some(m) = &r.smtp {
                if m.host.is_empty() {
                    return Err(err(at("smtp.host"), "give the SMTP relay's host"));
                }
                if m.port == 0 {
                    return Err(err(at("smtp.port"), "a port from 1 to 65535"));
                }
                check_mailbox(&at("smtp.from"), &m.from)?;
                if m.to.is_empty() {
                    return Err(err(at("smtp.to"), "give at least one recipient"));
                }
                for (j, t) in m.to.iter().enumerate() {
                    check_mailbox(&at(&format!("smtp.to[{j}]")), t)?;
                }
                if m.username.is_some() != m.password_env.is_some() {
                    return Err(err(
                        at("smtp.password_env"),
                        "give both username and password_env, or neither",
                    ));
                }
                if m.username.is_some() && !m.starttls {
                    return Err(err(
                        at("smtp.starttls"),
                        "credentials are sent only over STARTTLS; set starttls = true",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, String> {
        let c: NotifyConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn good_receivers_are_read_with_defaults() {
        let c = parse(
            "[[receivers]]\nname = \"a\"\nwebhook = { url = \"http://127.0.0.1:9/x\" }\n\
             [[receivers]]\nname = \"b\"\nsmtp = { host = \"127.0.0.1\", from = \"f@x.test\", to = [\"t@x.test\"] }\n",
        )
        .unwrap();
        assert_eq!((c.group_secs, c.give_up_hours), (10, 24));
        assert_eq!(c.receivers[1].smtp.as_ref().unwrap().port, 25);
        assert_eq!(c.receivers[0].kind(), "webhook");
        assert_eq!(c.receivers[0].target(), "http://127.0.0.1:9/…");
    }

    #[test]
    fn bad_receivers_are_refused_naming_the_field() {
        for (text, want) in [
            (
                "[[receivers]]\nname = \"a\"\n",
                "receivers[0]: give exactly one",
            ),
            (
                "[[receivers]]\nname = \"a b\"\nslack = { url = \"http://x/\" }\n",
                "receivers[0].name",
            ),
            (
                "[[receivers]]\nname = \"a\"\nslack = { url = \"ftp://x/\" }\n",
                "receivers[0].slack.url",
            ),
            (
                "[[receivers]]\nname = \"a\"\nwebhook = { url = \"http://x/\" }\n[[receivers]]\nname = \"a\"\nwebhook = { url = \"http://x/\" }\n",
                "receivers[1].name: \"a\" is used twice",
            ),
            (
                "[[receivers]]\nname = \"m\"\nsmtp = { host = \"h\", from = \"nobody\", to = [\"t@x.test\"] }\n",
                "receivers[0].smtp.from",
            ),
            (
                "[[receivers]]\nname = \"m\"\nsmtp = { host = \"h\", from = \"f@x.test\", to = [\"t@x.test\", \"bad\"] }\n",
                "receivers[0].smtp.to[1]",
            ),
            (
                "[[receivers]]\nname = \"m\"\nsmtp = { host = \"h\", from = \"f@x.test\", to = [\"t@x.test\"], username = \"u\", password_env = \"P\" }\n",
                "receivers[0].smtp.starttls",
            ),
            ("group_secs = 601\n", "group_secs"),
            ("give_up_hours = 0\n", "give_up_hours"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(
            parse("[[receivers]]\nname = \"a\"\nhook = 1\n")
                .unwrap_err()
                .contains("unknown field `hook`")
        );
    }
}
