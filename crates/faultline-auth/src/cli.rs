//! `faultline token new|hash`: lines for the token file (format in [`crate::tokens`]).
//!
//! `faultline token new NAME --scopes read,admin` makes a random token (32 bytes from the
//! system's generator, as `flt_` and 64 hex digits) and prints it on the first line, to
//! give to the client, and the token file line on the second. `faultline token hash NAME
//! --scopes ingest` reads a token that exists already from standard input (one line) and
//! prints its line. The secret itself is never written anywhere by faultline.

use std::io::{BufRead, Write};

use crate::AuthError;
use crate::tokens::{Scopes, TokenSet, hex, line};

/// `faultline token ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a new random token: prints the token, then its line for the token file.
    New(LineArgs),
    /// Print the token file line of a token read from standard input.
    Hash(LineArgs),
}

/// The name and scopes of a line.
#[derive(Debug, clap::Args)]
pub struct LineArgs {
    /// Who the token is (the audit log names it): 1 to 64 of A-Z a-z 0-9 - _ . @
    name: String,
    /// Comma-separated scopes: ingest, read, admin, chaos, probes.
    #[arg(long, required = true)]
    scopes: String,
}

/// A new random token.
pub fn random_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random generator failed".to_string())?;
    Ok(format!("flt_{}", hex(&bytes)))
}

fn checked_line(a: &LineArgs, token: &str) -> Result<String, AuthError> {
    let invalid = |message: String| AuthError::Invalid {
        what: "the token's name or scopes".into(),
        message,
    };
    let scopes = Scopes::parse(&a.scopes).map_err(invalid)?;
    let l = line(&a.name, scopes, token);
    // The line must read back as written (a bad name is refused here, not at start-up).
    TokenSet::parse(&l).map_err(|e| invalid(e.message))?;
    Ok(l)
}

/// Runs `faultline token`, reading from `input` and printing to `out`; the exit code.
pub fn run(
    cmd: TokenCommand,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<u8, AuthError> {
    let io = |e: std::io::Error| AuthError::Io(format!("cannot write the answer: {e}"));
    match cmd {
        TokenCommand::New(a) => {
            let token = random_token().map_err(AuthError::Io)?;
            let l = checked_line(&a, &token)?;
            writeln!(out, "{token}\n{l}").map_err(io)?;
        }
        TokenCommand::Hash(a) => {
            let mut token = String::new();
            input.read_line(&mut token).map_err(|e| {
                AuthError::Io(format!("cannot read the token from standard input: {e}"))
            })?;
            let token = token.trim_end_matches(['\r', '\n']);
            if token.is_empty() {
                return Err(AuthError::Io(
                    "no token on standard input; pipe it in: printf %s \"$TOKEN\" | faultline token hash NAME --scopes ingest".into(),
                ));
            }
            writeln!(out, "{}", checked_line(&a, token)?).map_err(io)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(name: &str, scopes: &str) -> LineArgs {
        LineArgs {
            name: name.into(),
            scopes: scopes.into(),
        }
    }

    #[test]
    fn new_prints_a_token_whose_line_finds_it() {
        let mut out = Vec::new();
        run(
            TokenCommand::New(args("ops", "read,admin")),
            &mut &b""[..],
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let (token, l) = (lines.next().unwrap(), lines.next().unwrap());
        assert!(token.starts_with("flt_") && token.len() == 68, "{token}");
        assert!(!l.contains(token), "the line holds the hash, not the token");
        let set = TokenSet::parse(l).unwrap();
        assert_eq!(&*set.find(token).unwrap().name, "ops");
        let other = random_token().unwrap();
        assert_ne!(other, token);
    }

    #[test]
    fn hash_reads_the_token_from_stdin() {
        let mut out = Vec::new();
        run(
            TokenCommand::Hash(args("ci", "ingest")),
            &mut &b"abc\n"[..],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ci ingest sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
        );
        let e = run(
            TokenCommand::Hash(args("ci", "ingest")),
            &mut &b""[..],
            &mut Vec::new(),
        );
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("no token on standard input")
        );
        let e = run(
            TokenCommand::New(args("a/b", "read")),
            &mut &b""[..],
            &mut Vec::new(),
        );
        assert!(e.unwrap_err().to_string().contains("token name"));
        let e = run(
            TokenCommand::New(args("a", "write")),
            &mut &b""[..],
            &mut Vec::new(),
        );
        assert!(e.unwrap_err().to_string().contains("unknown scope"));
    }
}
