//! Query parameters shared by the search endpoints: Go-style durations (`250ms`, `1.5s`,
//! `1h30m`, as Jaeger takes them), tag filters (`tag=key:value` repeated, or `tags` as a
//! JSON object, as Jaeger takes them), and RFC 3339 times (api_v3). Every error names the
//! parameter and says what a valid value looks like.

use serde_json::Value;

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `10us`, `10µs`, `5ns`) into
/// nanoseconds. A bare number is not accepted (as in Go), except `0`.
pub fn parse_go_duration(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?} is not a duration; write a number with a unit, for example 250ms, 1.5s or 2h (units: ns, us, ms, s, m, h)"
        )
    };
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let mut rest = t.trim_start_matches('+');
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
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
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(total.round() as u64)
}

/// The optional duration bounds `min_name` and `max_name` (Go durations), checked to be in
/// order; errors name the parameter.
pub fn duration_bounds(
    pairs: &[(String, String)],
    min_name: &str,
    max_name: &str,
) -> Result<(Option<u64>, Option<u64>), String> {
    let d = |name: &str| -> Result<Option<u64>, String> {
        get(pairs, name)
            .map(|v| parse_go_duration(v).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let (min, max) = (d(min_name)?, d(max_name)?);
    if let (Some(a), Some(b)) = (min, max)
        && a > b
    {
        return Err(format!("{min_name} is greater than {max_name}"));
    }
    Ok((min, max))
}

/// Default time limit of a search (`timeout` parameter).
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest `timeout` accepted.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The `timeout` parameter (Go duration; default [`DEFAULT_TIMEOUT`], at most
/// [`MAX_TIMEOUT`]): how long a search may run before it answers with what it found,
/// marked partial.
pub fn timeout(pairs: &[(String, String)]) -> Result<std::time::Duration, String> {
    match get(pairs, "timeout") {
        None => Ok(DEFAULT_TIMEOUT),
        Some(v) => {
            let ns = parse_go_duration(v).map_err(|e| format!("timeout: {e}"))?;
            let d = std::time::Duration::from_nanos(ns);
            if d > MAX_TIMEOUT {
                return Err(format!(
                    "timeout={v} is above the maximum of {} s",
                    MAX_TIMEOUT.as_secs()
                ));
            }
            Ok(d)
        }
    }
}

/// Collects tag filters from repeated `tag=key:value` and `tags={"key":"value"}` (JSON;
/// numbers and booleans are taken as their text).
pub fn parse_tags(pairs: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "tag" => {
                let Some((key, value)) = v.split_once(':') else {
                    return Err(format!(
                        "tag={v:?} is not key:value; write for example tag=http.status_code:500"
                    ));
                };
                if key.is_empty() {
                    return Err(format!("tag={v:?} has an empty key"));
                }
                out.push((key.to_string(), value.to_string()));
            }
            "tags" if !v.is_empty() => out.extend(json_tags("tags", v)?),
            _ => {}
        }
    }
    Ok(out)
}

/// Parses a JSON object of tag filters (`{"http.status_code":"500","retry":true}`).
pub fn json_tags(name: &str, v: &str) -> Result<Vec<(String, String)>, String> {
    let parsed: Value = serde_json::from_str(v).map_err(|e| {
        format!("{name}={v:?} is not a JSON object of tags ({e}); write for example {name}={{\"http.status_code\":\"500\"}}")
    })?;
    let Some(obj) = parsed.as_object() else {
        return Err(format!("{name}={v:?} must be a JSON object"));
    };
    obj.iter()
        .map(|(k, val)| {
            let text = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{name}: the value of {k:?} must be a string, number or boolean, not {other}"
                    ));
                }
            };
            Ok((k.clone(), text))
        })
        .collect()
}

/// Parses an RFC 3339 time (`2026-11-29T10:00:00.5Z`) into Unix nanoseconds.
pub fn parse_rfc3339(name: &str, v: &str) -> Result<u64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|e| {
        format!(
            "{name}={v:?} is not an RFC 3339 time ({e}); write for example 2026-11-29T10:00:00Z"
        )
    })?;
    let ns = t
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("{name}={v:?} is out of range"))?;
    u64::try_from(ns).map_err(|_| format!("{name}={v:?} is before 1970"))
}

/// The first value of parameter `name`, if present and non-empty.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Parses an optional whole number.
pub fn num(pairs: &[(String, String)], name: &str, what: &str) -> Result<Option<u64>, String> {
    match get(pairs, name) {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a whole number of {what}")),
    }
}

/// Now, Unix nanoseconds.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("250ms").unwrap(), 250_000_000);
        assert_eq!(parse_go_duration("1.5s").unwrap(), 1_500_000_000);
        assert_eq!(parse_go_duration("1h30m").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_go_duration("10us").unwrap(), 10_000);
        assert_eq!(parse_go_duration("10µs").unwrap(), 10_000);
        assert_eq!(parse_go_duration("7ns").unwrap(), 7);
        assert_eq!(parse_go_duration("0").unwrap(), 0);
        for bad in ["", "5", "ms", "1.5x", "-1s", "1s5", "s1"] {
            let e = parse_go_duration(bad).unwrap_err();
            assert!(e.contains("250ms"), "{bad}: {e}");
        }
    }

    #[test]
    fn tags_from_both_forms() {
        let p = vec![
            ("tag".to_string(), "http.status_code:500".to_string()),
            ("tag".to_string(), "url:http://x:1/y".to_string()),
            (
                "tags".to_string(),
                r#"{"retry":true,"n":3,"s":"v"}"#.to_string(),
            ),
        ];
        let mut t = parse_tags(&p).unwrap();
        t.sort();
        assert_eq!(
            t,
            vec![
                ("http.status_code".into(), "500".into()),
                ("n".into(), "3".into()),
                ("retry".into(), "true".into()),
                ("s".into(), "v".into()),
                ("url".into(), "http://x:1/y".into()),
            ]
        );
        assert!(
            parse_tags(&[("tag".into(), "novalue".into())])
                .unwrap_err()
                .contains("key:value")
        );
        assert!(
            parse_tags(&[("tags".into(), "[1]".into())])
                .unwrap_err()
                .contains("JSON object")
        );
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(
            parse_rfc3339("t", "1970-01-01T00:00:01.5Z").unwrap(),
            1_500_000_000
        );
        assert!(parse_rfc3339("t", "yesterday").unwrap_err().contains("t="));
    }
}
