//! Durations as people write them in configuration, query parameters, selectors and
//! rules: Go's syntax (`300ms`, `1.5h`, `2h45m`, `10us`, `10µs`, `5ns`), one parser for
//! every place that reads one.

/// Parses a Go duration into nanoseconds. A bare number is refused (as in Go), except
/// `0`; so are negative and overflowing values.
pub fn parse_ns(s: &str) -> Option<u64> {
    let t = s.trim();
    if t == "0" {
        return Some(0);
    }
    if t.is_empty() || t.starts_with('-') {
        return None;
    }
    let mut rest = t.trim_start_matches('+');
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(total.round() as u64)
}

/// [`parse_ns`] as a [`std::time::Duration`].
pub fn parse(s: &str) -> Option<std::time::Duration> {
    parse_ns(s).map(std::time::Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let table = [
            ("0", Some(0)),
            ("300ms", Some(300_000_000)),
            ("1.5h", Some(5_400_000_000_000)),
            ("2h45m", Some(9_900_000_000_000)),
            ("10us", Some(10_000)),
            ("10µs", Some(10_000)),
            ("5ns", Some(5)),
            ("1m30s", Some(90_000_000_000)),
            (" 2s ", Some(2_000_000_000)),
            ("", None),
            ("10", None),
            ("-1s", None),
            ("1d", None),
            ("ms", None),
            ("1e400h", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_ns(text), want, "{text:?}");
        }
    }
}
