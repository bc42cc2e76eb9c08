//! Adjusted counts: how many spans one stored span stands for, from the sampling decision
//! it carries. A span kept with probability p stands for 1/p spans; RED rollups and
//! dependency edges add adjusted counts instead of 1, so rates and error rates stay right
//! under any mix of sampling rates.
//!
//! Where the probability comes from, first match wins:
//!
//! 1. OpenTelemetry consistent probability sampling: the `th` sub-key of the `ot` entry
//!    of the span's W3C tracestate (kept as the `w3c.tracestate` attribute, as Jaeger
//!    does). `th` is the rejection threshold, 1 to 14 hex digits, right-padded with zeros
//!    to 56 bits: T = th · 16^(14 − len); the span was kept with probability
//!    (2^56 − T) / 2^56 (`th:0` keeps everything, `th:8` half, `th:fd70a4` one in a hundred).
//! 2. An explicit `SampleRate` attribute (Honeycomb's and Refinery's convention): kept one
//!    in N, N ≥ 1.
//! 3. Jaeger clients' `sampler.type` = `probabilistic` with `sampler.param` = p (Jaeger
//!    SDKs put these on the root span of a sampled trace).
//!
//! Anything else, or a malformed value (a threshold that is not hex, a rate below 1, a
//! probability outside (0, 1]), counts 1: the span stands for itself.

use crate::span::{AttrValue, Key};

/// The attribute that holds a span's W3C tracestate, when it had one.
pub const TRACESTATE_ATTR: &str = "w3c.tracestate";

/// 2^56: the range of OpenTelemetry's randomness values and thresholds.
const RANGE: f64 = 72_057_594_037_927_936.0;

/// The probability with which a span carrying `tracestate` was kept, from its `ot=th:`
/// threshold; `None` when it has no valid threshold.
pub fn tracestate_probability(tracestate: &str) -> Option<f64> {
    // list-members are comma separated, optional whitespace around them
    let ot = tracestate
        .split(',')
        .map(str::trim)
        .find_map(|m| m.strip_prefix("ot="))?;
    let th = ot.split(';').find_map(|kv| kv.strip_prefix("th:"))?;
    if th.is_empty() || th.len() > 14 || !th.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let t = u64::from_str_radix(th, 16).ok()? << (4 * (14 - th.len()));
    Some((RANGE - t as f64) / RANGE)
}

/// How many spans a span with these attributes stands for (see the module header).
pub fn adjusted_count(attributes: &[(Key, AttrValue)]) -> f64 {
    let mut sample_rate = None;
    let mut jaeger_type = None;
    let mut jaeger_param = None;
    for (k, v) in attributes {
        match k.as_str() {
            TRACESTATE_ATTR => {
                if let AttrValue::Str(s) = v
                    && let Some(p) = tracestate_probability(s)
                {
                    return 1.0 / p;
                }
            }
            "SampleRate" => sample_rate = number(v),
            "sampler.type" => jaeger_type = Some(v),
            "sampler.param" => jaeger_param = number(v),
            _ => {}
        }
    }
    if let Some(n) = sample_rate.filter(|n| n.is_finite() && *n >= 1.0) {
        return n;
    }
    if matches!(jaeger_type, Some(AttrValue::Str(t)) if t == "probabilistic")
        && let Some(p) = jaeger_param.filter(|p| *p > 0.0 && *p <= 1.0)
    {
        return 1.0 / p;
    }
    1.0
}

fn number(v: &AttrValue) -> Option<f64> {
    match v {
        AttrValue::Int(i) => Some(*i as f64),
        AttrValue::Double(d) => Some(*d),
        AttrValue::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, AttrValue)]) -> Vec<(Key, AttrValue)> {
        pairs
            .iter()
            .map(|(k, v)| (Key::new(k), v.clone()))
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn thresholds_from_the_specification() {
        // The OpenTelemetry specification's examples of th values and probabilities.
        for (ts, p) in [
            ("ot=th:0", 1.0),
            ("ot=th:8", 0.5),
            ("ot=th:c", 0.25),
            ("ot=th:e666", 0.100_006_103_515_625),
            ("ot=th:fd70a4", 0.009_999_990_463_256_836),
            ("ot=th:ffffffffffffff", 1.0 / RANGE),
        ] {
            let got = tracestate_probability(ts).unwrap();
            assert!(close(got, p), "{ts}: {got} != {p}");
        }
        // Among other vendors' entries and sub-keys, with spaces.
        let got = tracestate_probability("vendor=x:1, ot=rv:abcdefabcdef12;th:8 ,b=2").unwrap();
        assert!(close(got, 0.5));
    }

    #[test]
    fn malformed_thresholds_are_ignored() {
        for ts in [
            "",
            "ot=",
            "ot=rv:1234",
            "ot=th:",
            "ot=th:xyz",
            "ot=th:123456789abcdef0",
            "other=th:8",
        ] {
            assert_eq!(tracestate_probability(ts), None, "{ts}");
        }
    }

    #[test]
    fn adjusted_counts_from_every_source_in_order() {
        let ts = |s: &str| (TRACESTATE_ATTR, AttrValue::Str(s.into()));
        assert_eq!(adjusted_count(&[]), 1.0);
        assert!(close(adjusted_count(&attrs(&[ts("ot=th:c")])), 4.0));
        assert!(close(
            adjusted_count(&attrs(&[ts("ot=th:fd70a4")])),
            100.000_095_367_522_59
        ));
        assert_eq!(
            adjusted_count(&attrs(&[("SampleRate", AttrValue::Int(20))])),
            20.0
        );
        assert_eq!(
            adjusted_count(&attrs(&[
                ("sampler.type", AttrValue::Str("probabilistic".into())),
                ("sampler.param", AttrValue::Double(0.001)),
            ])),
            1000.0
        );
        // The tracestate wins over the others; a malformed one falls through to them.
        assert!(close(
            adjusted_count(&attrs(&[("SampleRate", AttrValue::Int(20)), ts("ot=th:8")])),
            2.0
        ));
        assert_eq!(
            adjusted_count(&attrs(&[
                ts("ot=th:zz"),
                ("SampleRate", AttrValue::Str("5".into()))
            ])),
            5.0
        );
        // Rate-limited Jaeger decisions and nonsense count once.
        for bad in [
            attrs(&[
                ("sampler.type", AttrValue::Str("ratelimiting".into())),
                ("sampler.param", AttrValue::Double(2.0)),
            ]),
            attrs(&[
                ("sampler.type", AttrValue::Str("probabilistic".into())),
                ("sampler.param", AttrValue::Double(0.0)),
            ]),
            attrs(&[("SampleRate", AttrValue::Double(0.5))]),
            attrs(&[("SampleRate", AttrValue::Double(f64::NAN))]),
        ] {
            assert_eq!(adjusted_count(&bad), 1.0, "{bad:?}");
        }
    }
}
