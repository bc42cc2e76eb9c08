//! OTLP/protobuf export requests as intake reads them: decoded, validated and filtered,
//! converted to spans and back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = faultline_model::ExportTraceServiceRequest::decode(data) {
        faultline_fuzz::ingest_like(req);
    }
});
