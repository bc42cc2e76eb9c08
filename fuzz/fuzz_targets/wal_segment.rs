//! A WAL segment file as recovery scans it, each record's envelope and request decoded;
//! and the input read as one envelope.
#![no_main]

use faultline_model::envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    faultline_fuzz::wal_segment(data);
    if let Ok(env) = envelope::decode(data)
        && let Ok(req) = env.request()
    {
        faultline_fuzz::ingest_like(req);
    }
});
