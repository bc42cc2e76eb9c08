//! OTLP/JSON export requests, then what intake does with them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = faultline_model::otlp_json::decode(data) {
        faultline_fuzz::ingest_like(req);
    }
});
