//! What the fuzz targets share: a decoded request put through what intake does with it.

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
