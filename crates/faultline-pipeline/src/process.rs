//! One WAL record into the store: decode the envelope and its OTLP body into flat spans,
//! ingest them; on failure retry with backoff, and after [`MAX_ATTEMPTS`] move the record
//! to the dead letters (durably, before the pipeline moves past it).

use std::sync::atomic::Ordering;

use faultline_model::envelope::{self, EnvelopeError};
use faultline_store::StoreError;

use crate::Shared;
use crate::dlq::{DeadLetter, MAX_ATTEMPTS};

/// Why a record could not be processed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    /// The payload is not an intake envelope or its body not OTLP (it passed the WAL's
    /// checksum, so this is a bug or a format of another version).
    #[error("undecodable record: {0}")]
    Undecodable(#[from] EnvelopeError),
    /// The store refused the spans.
    #[error("the store refused the record: {0}")]
    Store(#[from] StoreError),
}

/// Decodes one record and hands its spans to the store.
fn process(sh: &Shared, seq: u64, payload: &[u8]) -> Result<(), ProcessError> {
    let spans = envelope::decode(payload)?.spans()?;
    let n = spans.len() as u64;
    sh.store.ingest(seq, spans)?;
    sh.stats.spans.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Spans in a record, from its envelope header (0 if it has none).
pub(crate) fn record_spans(payload: &[u8]) -> u64 {
    envelope::decode(payload)
        .map(|e| u64::from(e.spans))
        .unwrap_or(0)
}

/// Processes a record, retrying with backoff; after [`MAX_ATTEMPTS`] failures the record
/// becomes a dead letter, written durably before this returns (the WAL may be truncated
/// past the record once the store moves on). Gives up only when the pipeline stops.
pub(crate) fn process_or_dead_letter(sh: &Shared, seq: u64, payload: &[u8]) {
    sh.stats.records.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    for attempt in 1..=MAX_ATTEMPTS {
        match process(sh, seq, payload) {
            Ok(()) => {
                // In the head now: reads find its spans there.
                sh.opts.pending.remove(seq);
                return;
            }
            Err(e) => {
                tracing::warn!(seq, attempt, error = %e, "processing a WAL record failed");
                last = Some(e);
                if attempt < MAX_ATTEMPTS {
                    std::thread::sleep(sh.opts.retry_backoff * 4u32.pow(attempt - 1));
                }
            }
        }
    }
    let undecodable = matches!(last, Some(ProcessError::Undecodable(_)));
    let letter = DeadLetter {
        seq,
        time_ns: (sh.opts.clock)(),
        attempts: MAX_ATTEMPTS,
        reason: last.map(|e| e.to_string()).unwrap_or_default(),
        payload: payload.to_vec(),
    };
    loop {
        match letter.write(&sh.opts.dlq_dir) {
            Ok(path) => {
                tracing::error!(seq, file = %path.display(), reason = %letter.reason, "moved a WAL record to the dead letters (`faultline dlq list`)");
                break;
            }
            Err(e) => {
                tracing::error!(seq, error = %e, dir = %sh.opts.dlq_dir.display(), "cannot write a dead letter; retrying in 1 s");
                if sh.stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
    sh.stats
        .undecodable
        .fetch_add(u64::from(undecodable), Ordering::Relaxed);
    sh.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
    sh.opts.pending.remove(seq);
    // Let the store's position move past the record.
    if let Err(e) = sh.store.ingest(seq, Vec::new()) {
        tracing::error!(seq, error = %e, "cannot move the store past a dead letter");
    }
}
