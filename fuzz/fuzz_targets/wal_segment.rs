//! A WAL segment file as recovery scans it, each record's envelope and request decoded;
//! and the input read as one envelope.
#![no_main]

use faultline_model::envelope;
use faultline_wal::format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scan = format::scan_segment(data);
    assert!(scan.valid_len as usize <= data.len().max(format::SEGMENT_HEADER_LEN));
    for r in &scan.records {
        if let Ok(env) = envelope::decode(r.payload) {
            let _ = env.request();
        }
    }
    let _ = format::decode_segment_header(data);
    for pos in [0, data.len() / 2, data.len()] {
        let _ = format::decode_record_at(data, pos, 7);
    }
    if let Ok(env) = envelope::decode(data)
        && let Ok(req) = env.request()
    {
        faultline_fuzz::ingest_like(req);
    }
});
