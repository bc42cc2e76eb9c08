//! Tokens: the token file's format, its parsing, and the constant-time lookup of a
//! presented token.
//!
//! A token is a secret string a client sends as `Authorization: Bearer TOKEN` (gRPC:
//! metadata `authorization: Bearer TOKEN`). faultline never stores the secret: the token
//! file holds its SHA-256, and a presented token is hashed and compared with every stored
//! hash in constant time (no early exit, so the time taken does not say which hash, or
//! how much of one, matched).
//!
//! The token file (`[auth] token_file`, `--token-file`, `FAULTLINE_TOKEN_FILE`) has one
//! token a line, three fields separated by spaces or tabs; `#` starts a comment and blank
//! lines are ignored:
//!
//! ```text
//! # NAME        SCOPES                HASH
//! ci-exporter   ingest                sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! grafana       read                  sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
//! ops-alice     read,admin,chaos,probes sha256:fd61a03af4f77d870fc21e05e7e80678095c92d808cfb3b5c279ee04c74aca13
//! ```
//!
//! - `NAME`: who the token is, 1 to 64 of `A-Z a-z 0-9 - _ . @`; the audit log and the
//!   log name it, so give each person and each system its own token. Names are unique.
//! - `SCOPES`: comma-separated, from `ingest`, `read`, `admin`, `chaos`, `probes`
//!   (`crate::routes` says which routes each opens).
//! - `HASH`: `sha256:` and the 64 hex digits of the token's SHA-256 (the prefix may be
//!   left out). Two lines may not hold the same hash.
//!
//! To make a line: `faultline token new NAME --scopes read,admin` prints a new random
//! token and its line; `faultline token hash NAME --scopes ingest` reads an existing token
//! on standard input and prints its line; or by hand,
//! `printf %s "$TOKEN" | sha256sum` gives the hex digits (no newline after the token).
//!
//! `FAULTLINE_TOKENS` holds lines in the same format, separated by newlines or `;`; its
//! tokens are added to the file's (read once, at start).

use std::sync::Arc;

use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::Scope;

/// Longest token name.
pub const MAX_NAME: usize = 64;

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope.
    pub const ALL: Scopes = Scopes(0b1_1111);

    /// The set of `scopes`.
    pub fn of(scopes: &[Scope]) -> Self {
        scopes.iter().fold(Scopes::default(), |acc, s| acc.with(*s))
    }

    /// The set holding `s` too.
    pub fn with(self, s: Scope) -> Self {
        Scopes(self.0 | s.bit())
    }

    /// Whether the set holds `s`.
    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    /// Parses `read,admin` (no spaces).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Scopes::default();
        for part in text.split(',') {
            let s = part.parse::<Scope>()?;
            out = out.with(s);
        }
        Ok(out)
    }
}

impl std::fmt::Display for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .iter()
            .filter(|s| self.contains(**s))
            .map(|s| s.as_str())
            .collect();
        f.write_str(&names.join(","))
    }
}

/// One token as stored: its name, its scopes and the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Who the token is.
    pub name: Arc<str>,
    /// What it may do.
    pub scopes: Scopes,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
}

/// Why a token file (or `FAULTLINE_TOKENS`) was refused: the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// The SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token file line for `token`.
pub fn line(name: &str, scopes: Scopes, token: &str) -> String {
    format!("{name} {scopes} sha256:{}", hex(&hash(token)))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hexd = text.strip_prefix("sha256:").unwrap_or(text);
    if hexd.len() != 64 || !hexd.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hexd[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses one line that is not blank or a comment.
fn parse_line(text: &str) -> Result<Entry, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [name, scopes, h] = fields[..] else {
        return Err(format!(
            "expected three fields, NAME SCOPES sha256:HASH, found {}",
            fields.len()
        ));
    };
    if !valid_name(name) {
        return Err(format!(
            "token name {name:?} must be 1 to {MAX_NAME} of A-Z a-z 0-9 - _ . @"
        ));
    }
    let scopes = Scopes::parse(scopes).map_err(|e| format!("token {name}: {e}"))?;
    let hash = parse_hash(h).ok_or_else(|| {
        format!(
            "token {name}: the hash must be sha256: and 64 hex digits (the token's SHA-256, never the token itself; `faultline token hash` makes the line)"
        )
    })?;
    Ok(Entry {
        name: name.into(),
        scopes,
        hash,
    })
}

/// The tokens in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

impl TokenSet {
    /// Parses a token file's text (or `FAULTLINE_TOKENS`, where `;` also ends a line).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut set = TokenSet::default();
        for (i, raw) in text.split(['\n', ';']).enumerate() {
            let l = raw.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            let e = parse_line(l).map_err(|message| ParseError {
                line: i + 1,
                message,
            })?;
            set.add(e).map_err(|message| ParseError {
                line: i + 1,
                message,
            })?;
        }
        Ok(set)
    }

    /// Adds a token; refused when its name or its hash is already there.
    pub fn add(&mut self, e: Entry) -> Result<(), String> {
        if self.entries.iter().any(|x| x.name == e.name) {
            return Err(format!(
                "token name {} is given twice; names say who acted, so each must be unique",
                e.name
            ));
        }
        if self.entries.iter().any(|x| x.hash == e.hash) {
            return Err(format!(
                "token {} has the same hash as another token; give each its own secret",
                e.name
            ));
        }
        self.entries.push(e);
        Ok(())
    }

    /// `self` with every token of `other` added.
    pub fn merged(&self, other: &TokenSet) -> Result<TokenSet, String> {
        let mut out = self.clone();
        for e in &other.entries {
            out.add(e.clone())?;
        }
        Ok(out)
    }

    /// How many tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The token whose hash is the presented token's. Every stored hash is compared, in
    /// constant time, whatever matches: the time taken depends on the number of tokens
    /// only.
    pub fn find(&self, presented: &str) -> Option<&Entry> {
        let h = hash(presented);
        let mut found = 0u32; // index + 1 of the match, 0 for none
        for (i, e) in self.entries.iter().enumerate() {
            let candidate = u32::try_from(i + 1).unwrap_or(u32::MAX);
            found = u32::conditional_select(&found, &candidate, e.hash.ct_eq(&h));
        }
        let idx = (found as usize).checked_sub(1)?;
        self.entries.get(idx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256() {
        // The SHA-256 test vector of "abc".
        assert_eq!(
            hex(&hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_file_parses_with_comments_blank_lines_and_either_hash_form() {
        let text = format!(
            "# tokens\n\n{}\n  ci.exporter\tingest\t{}   # the exporter\n",
            line("ops-alice", Scopes::parse("read,admin").unwrap(), "s3cret"),
            hex(&hash("other"))
        );
        let set = TokenSet::parse(&text).unwrap();
        assert_eq!(set.len(), 2);
        let alice = set.find("s3cret").unwrap();
        assert_eq!(&*alice.name, "ops-alice");
        assert!(alice.scopes.contains(Scope::Admin) && !alice.scopes.contains(Scope::Chaos));
        assert_eq!(alice.scopes.to_string(), "read,admin");
        assert_eq!(&*set.find("other").unwrap().name, "ci.exporter");
        // Semicolons separate lines in FAULTLINE_TOKENS.
        let env = format!(
            "{};{}",
            line("a", Scopes::ALL, "x"),
            line("b", Scopes::ALL, "y")
        );
        assert_eq!(TokenSet::parse(&env).unwrap().len(), 2);
    }

    #[test]
    fn bad_lines_are_refused_naming_the_line_and_the_fix() {
        let good = line("a", Scopes::ALL, "x");
        for (text, line_no, says) in [
            (format!("{good}\nb read"), 2, "three fields"),
            (
                "b wirte sha256:00".to_string(),
                1,
                "unknown scope \"wirte\"",
            ),
            ("b read s3cret".to_string(), 1, "never the token itself"),
            (format!("b/c read {}", hex(&hash("q"))), 1, "token name"),
            (
                format!("{good}\n{}", line("a", Scopes::ALL, "other")),
                2,
                "given twice",
            ),
            (
                format!("{good}\n{}", line("z", Scopes::ALL, "x")),
                2,
                "same hash",
            ),
        ] {
            let e = TokenSet::parse(&text).unwrap_err();
            assert_eq!(e.line, line_no, "{text}: {e}");
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn lookup_compares_every_hash_and_finds_only_the_exact_token() {
        let mut set = TokenSet::default();
        for i in 0..50 {
            set.add(Entry {
                name: format!("t{i}").into(),
                scopes: Scopes::ALL,
                hash: hash(&format!("token-{i}")),
            })
            .unwrap();
        }
        // First, middle and last entries are found; near misses are not.
        for i in [0, 25, 49] {
            assert_eq!(
                set.find(&format!("token-{i}")).map(|e| e.name.to_string()),
                Some(format!("t{i}"))
            );
        }
        for miss in ["token-50", "token-4x", "token-49 ", "", "TOKEN-1"] {
            assert!(set.find(miss).is_none(), "{miss:?}");
        }
        // The presented token is hashed, so its length does not shape the comparison:
        // a very long token is compared like any other.
        assert!(set.find(&"x".repeat(1 << 16)).is_none());
        assert!(TokenSet::default().find("token-1").is_none());
    }
}
