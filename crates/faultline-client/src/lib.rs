//! The terminal commands that call a running faultline's HTTP API (`--api`, default
//! `http://127.0.0.1:16686`), for people who live in terminals and for CI:
//! `faultline query` and `faultline report` ([`query`]), `faultline assert` ([`assert`]), `faultline rules` ([`rules`]).
//! Each returns the process's exit code; the binary only parses the command line.

pub mod assert;
pub mod query;
pub mod rules;

/// What stops a command, said so the user knows what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);
