//! The terminal commands that call a running faultline's HTTP API (`--api`, default
//! `http://127.0.0.1:16686`), for people who live in terminals and for CI:
//! `faultline query` and `faultline report` ([`query`]), `faultline assert` ([`assert`]), `faultline rules` ([`rules`]),
//! `faultline dlq replay` ([`dlq`]), `faultline experiment run|validate|cleanup` ([`experiment`]).
//! Each returns the process's exit code; the binary only parses the command line. With
//! tokens on, each sends `FAULTLINE_TOKEN` as `Authorization: Bearer` (a token with the
//! `read` scope; `admin` for `dlq replay`). With TLS on the server, `--api https://...`
//! checks its certificate against the Mozilla roots and the CAs in `FAULTLINE_CA_FILE`
//! (PEM; a private CA or a self-signed certificate).

pub mod assert;
pub mod dlq;
pub mod experiment;
pub mod query;
pub mod rules;

/// What stops a command, said so the user knows what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);
