//! What the fuzz targets share with the fuzzing run of the test suite
//! (`crates/faultline/tests/fuzz_decoders.rs` includes this file): a decoded request put
//! through what intake does with it, and a WAL segment read as recovery reads it.

/// Validation and filtering with the default limits, conversion to spans and back.
pub fn ingest_like(mut req: faultline_model::ExportTraceServiceRequest) {
    let _ = faultline_model::validate::validate_and_filter(
        &mut req,
        &faultline_model::validate::Limits::default(),
    );
    let spans = faultline_model::span::from_otlp(&req);
    let _ = faultline_model::span::to_otlp(&spans);
    let _ = faultline_model::span::from_otlp_owned(req);
}

/// A WAL segment file as recovery scans it, each record's envelope and request decoded,
/// and records read at a few positions.
pub fn wal_segment(data: &[u8]) {
    use faultline_wal::format;
    let scan = format::scan_segment(data);
    assert!(scan.valid_len as usize <= data.len().max(format::SEGMENT_HEADER_LEN));
    for r in &scan.records {
        if let Ok(env) = faultline_model::envelope::decode(r.payload) {
            let _ = env.request();
        }
    }
    let _ = format::decode_segment_header(data);
    for pos in [0, data.len() / 2, data.len()] {
        let _ = format::decode_record_at(data, pos, 7);
    }
}
