//! Zipkin v2 JSON span lists, then what intake does with them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = faultline_model::zipkin::decode_v2_json(data) {
        faultline_fuzz::ingest_like(batch.request);
    }
});
