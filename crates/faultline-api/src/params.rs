//! Query parameters every API shares, and the one way to build a trace search.
//!
//! Values: Go-style durations (`250ms`, `1.5s`, `1h30m`, as Jaeger takes them), tag filters
//! (`tag=key:value` repeated, or `tags` as a JSON object, as Jaeger takes them), RFC 3339
//! times (api_v3), whole numbers. Every error is an [`ApiError::bad_parameter`] that names
//! the parameter and says what a valid value looks like.
//!
//! [`TraceQueryBuilder`] is the single vocabulary for searches: Jaeger v1, api_v3, the
//! summaries endpoint and the UI map their own parameter names onto it, so they share one
//! default and one maximum `limit` ([`DEFAULT_LIMIT`], [`MAX_LIMIT`]; `limit=0` means the
//! default everywhere), one tag limit and one time limit.

use std::time::Duration;

use serde_json::Value;

use faultline_store::search::MAX_TAGS;
use faultline_store::{SortOrder, TraceQuery};

use crate::ApiError;

/// Traces a search returns when it does not say (or says `0`).
pub const DEFAULT_LIMIT: usize = 20;
/// Most traces one search returns.
pub const MAX_LIMIT: usize = 1500;
/// Default time limit of a search (`timeout` parameter).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`) into nanoseconds
/// ([`faultline_model::duration::parse_ns`]).
pub fn parse_go_duration(s: &str) -> Option<u64> {
    faultline_model::duration::parse_ns(s)
}

/// Parameter `name`'s value `v` as a Go duration in nanoseconds.
pub fn go_duration(name: &str, v: &str) -> Result<u64, ApiError> {
    parse_go_duration(v).ok_or_else(|| {
        ApiError::bad_parameter(
            name,
            format!(
                "{name}={v:?} is not a duration; write a number with a unit, for example 250ms, 1.5s or 2h (units: ns, us, ms, s, m, h)"
            ),
        )
    })
}

/// The optional duration bounds `min_name` and `max_name` (Go durations), checked to be in
/// order.
pub fn duration_bounds(
    pairs: &[(String, String)],
    min_name: &str,
    max_name: &str,
) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let d = |name: &str| get(pairs, name).map(|v| go_duration(name, v)).transpose();
    let (min, max) = (d(min_name)?, d(max_name)?);
    if let (Some(a), Some(b)) = (min, max)
        && a > b
    {
        return Err(ApiError::bad_parameter(
            min_name,
            format!("{min_name} is greater than {max_name}"),
        ));
    }
    Ok((min, max))
}

/// The `timeout` parameter (Go duration; default [`DEFAULT_TIMEOUT`], at most
/// [`MAX_TIMEOUT`]): how long a search may run before it answers with what it found,
/// marked partial.
pub fn timeout(pairs: &[(String, String)]) -> Result<Duration, ApiError> {
    match get(pairs, "timeout") {
        None => Ok(DEFAULT_TIMEOUT),
        Some(v) => {
            let d = Duration::from_nanos(go_duration("timeout", v)?);
            if d > MAX_TIMEOUT {
                return Err(ApiError::bad_parameter(
                    "timeout",
                    format!(
                        "timeout={v} is above the maximum of {} s",
                        MAX_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(d)
        }
    }
}

/// Collects tag filters from repeated `tag=key:value` and `tags={"key":"value"}` (JSON;
/// numbers and booleans are taken as their text).
pub fn parse_tags(pairs: &[(String, String)]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "tag" => {
                let Some((key, value)) = v.split_once(':') else {
                    return Err(ApiError::bad_parameter(
                        "tag",
                        format!(
                            "tag={v:?} is not key:value; write for example tag=http.status_code:500"
                        ),
                    ));
                };
                if key.is_empty() {
                    return Err(ApiError::bad_parameter(
                        "tag",
                        format!("tag={v:?} has an empty key"),
                    ));
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
pub fn json_tags(name: &str, v: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |msg: String| ApiError::bad_parameter(name, msg);
    let parsed: Value = serde_json::from_str(v).map_err(|e| {
        bad(format!(
            "{name}={v:?} is not a JSON object of tags ({e}); write for example {name}={{\"http.status_code\":\"500\"}}"
        ))
    })?;
    let Some(obj) = parsed.as_object() else {
        return Err(bad(format!("{name}={v:?} must be a JSON object")));
    };
    obj.iter()
        .map(|(k, val)| {
            let text = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(bad(format!(
                        "{name}: the value of {k:?} must be a string, number or boolean, not {other}"
                    )));
                }
            };
            Ok((k.clone(), text))
        })
        .collect()
}

/// Parses an RFC 3339 time (`2026-11-29T10:00:00.5Z`) into Unix nanoseconds.
pub fn parse_rfc3339(name: &str, v: &str) -> Result<u64, ApiError> {
    let bad = |msg: String| ApiError::bad_parameter(name, msg);
    let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|e| {
        bad(format!(
            "{name}={v:?} is not an RFC 3339 time ({e}); write for example 2026-11-29T10:00:00Z"
        ))
    })?;
    let ns = t
        .timestamp_nanos_opt()
        .ok_or_else(|| bad(format!("{name}={v:?} is out of range")))?;
    u64::try_from(ns).map_err(|_| bad(format!("{name}={v:?} is before 1970")))
}

/// The first value of parameter `name`, if present and non-empty.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Parses an optional whole number of `what` (the unit, for the message).
pub fn num(pairs: &[(String, String)], name: &str, what: &str) -> Result<Option<u64>, ApiError> {
    match get(pairs, name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_parameter(
                name,
                format!("{name}={v:?} is not a whole number of {what}"),
            )
        }),
    }
}

/// Now, Unix nanoseconds.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Builds a [`TraceQuery`] with the checks and defaults every API shares. Setters that
/// check take the name the caller's API gives the parameter, for the error message.
#[derive(Debug, Clone)]
pub struct TraceQueryBuilder {
    q: TraceQuery,
}

impl TraceQueryBuilder {
    /// A search over `start_ns..=end_ns` (Unix ns) with the defaults: every service,
    /// newest first, [`DEFAULT_LIMIT`] traces, [`DEFAULT_TIMEOUT`].
    pub fn new(
        (start_name, start_ns): (&str, u64),
        (end_name, end_ns): (&str, u64),
    ) -> Result<Self, ApiError> {
        if start_ns > end_ns {
            return Err(ApiError::bad_parameter(
                start_name,
                format!("{start_name} is after {end_name}"),
            ));
        }
        Ok(Self {
            q: TraceQuery {
                start_ns,
                end_ns,
                limit: DEFAULT_LIMIT,
                time_limit: Some(DEFAULT_TIMEOUT),
                ..TraceQuery::default()
            },
        })
    }

    /// Only traces with a span of this service.
    #[must_use]
    pub fn service(mut self, s: Option<&str>) -> Self {
        self.q.service = s.map(str::to_string);
        self
    }

    /// Only traces with a span of this operation (of the service, if one is given).
    #[must_use]
    pub fn operation(mut self, s: Option<&str>) -> Self {
        self.q.operation = s.map(str::to_string);
        self
    }

    /// Tags every matching trace carries (at most [`MAX_TAGS`]); `name` is the parameter
    /// they came from.
    pub fn tags(mut self, name: &str, tags: Vec<(String, String)>) -> Result<Self, ApiError> {
        if tags.len() > MAX_TAGS {
            return Err(ApiError::bad_parameter(
                name,
                format!("{} tags given; at most {MAX_TAGS} per search", tags.len()),
            ));
        }
        self.q.tags = tags;
        Ok(self)
    }

    /// Duration bounds in nanoseconds (checked by [`duration_bounds`]).
    #[must_use]
    pub fn durations(mut self, (min, max): (Option<u64>, Option<u64>)) -> Self {
        self.q.min_duration_ns = min;
        self.q.max_duration_ns = max;
        self
    }

    /// Only traces with an error span.
    #[must_use]
    pub fn errors_only(mut self, yes: bool) -> Self {
        self.q.errors_only = yes;
        self
    }

    /// The order of the answer.
    #[must_use]
    pub fn sort(mut self, s: SortOrder) -> Self {
        self.q.sort = s;
        self
    }

    /// The number of traces: `None` or `0` is [`DEFAULT_LIMIT`], more than [`MAX_LIMIT`]
    /// is an error naming `name`.
    pub fn limit(mut self, name: &str, n: Option<u64>) -> Result<Self, ApiError> {
        self.q.limit = match n {
            None | Some(0) => DEFAULT_LIMIT,
            Some(n) if n > MAX_LIMIT as u64 => {
                return Err(ApiError::bad_parameter(
                    name,
                    format!("{name}={n} is above the maximum of {MAX_LIMIT}"),
                ));
            }
            Some(n) => n as usize,
        };
        Ok(self)
    }

    /// How long the search may run before answering what it found, marked partial.
    #[must_use]
    pub fn time_limit(mut self, d: Duration) -> Self {
        self.q.time_limit = Some(d);
        self
    }

    /// The query.
    pub fn build(self) -> TraceQuery {
        self.q
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("10us"), Some(10_000));
        assert_eq!(parse_go_duration("10µs"), Some(10_000));
        assert_eq!(parse_go_duration("7ns"), Some(7));
        assert_eq!(parse_go_duration("0"), Some(0));
        for bad in ["", "5", "ms", "1.5x", "-1s", "1s5", "s1"] {
            let e = go_duration("minDuration", bad).unwrap_err();
            assert!(e.message().contains("250ms"), "{bad}: {e}");
            assert_eq!(e.parameter(), Some("minDuration"));
        }
    }

    #[test]
    fn tags_from_both_forms() {
        let p = pairs(&[
            ("tag", "http.status_code:500"),
            ("tag", "url:http://x:1/y"),
            ("tags", r#"{"retry":true,"n":3,"s":"v"}"#),
        ]);
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
        let e = parse_tags(&pairs(&[("tag", "novalue")])).unwrap_err();
        assert!(e.message().contains("key:value"));
        let e = parse_tags(&pairs(&[("tags", "[1]")])).unwrap_err();
        assert!(e.message().contains("JSON object") && e.parameter() == Some("tags"));
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(
            parse_rfc3339("t", "1970-01-01T00:00:01.5Z").unwrap(),
            1_500_000_000
        );
        assert!(
            parse_rfc3339("t", "yesterday")
                .unwrap_err()
                .message()
                .contains("t=")
        );
    }

    #[test]
    fn one_default_and_one_maximum_limit() {
        let b = || TraceQueryBuilder::new(("start", 0), ("end", 10)).unwrap();
        assert_eq!(b().build().limit, DEFAULT_LIMIT);
        assert_eq!(
            b().limit("limit", Some(0)).unwrap().build().limit,
            DEFAULT_LIMIT
        );
        assert_eq!(b().limit("limit", Some(7)).unwrap().build().limit, 7);
        let max = MAX_LIMIT as u64;
        assert_eq!(
            b().limit("limit", Some(max)).unwrap().build().limit,
            MAX_LIMIT
        );
        let e = b().limit("query.num_traces", Some(max + 1)).unwrap_err();
        assert_eq!(e.parameter(), Some("query.num_traces"));
        let many = (0..=MAX_TAGS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(b().tags("tags", many).is_err());
        let e = TraceQueryBuilder::new(("start", 11), ("end", 10)).unwrap_err();
        assert_eq!(e.parameter(), Some("start"));
    }
}
