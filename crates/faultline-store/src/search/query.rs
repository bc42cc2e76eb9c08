//! The query vocabulary of search ([`TraceQuery`], [`SortOrder`]), trace summaries, and
//! which tags a span carries and how they compare as text.

use std::collections::HashSet;
use std::sync::Arc;

use faultline_model::span::{AttrValue, Span, SpanId, StatusCode, TraceId};

use super::{MAX_INDEXED_VALUE, MAX_TAGS};

/// How search results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Latest start first.
    #[default]
    Newest,
    /// Earliest start first.
    Oldest,
    /// Longest duration first.
    Longest,
    /// Shortest duration first.
    Shortest,
    /// A uniform random sample over the whole time range: ordered by a hash of the trace's
    /// start ([`sample_key`]), so the first `limit` are the same on every asking (a page
    /// that refreshes shows the same sample) and are spread over the range instead of
    /// being its newest.
    Sample,
}

impl SortOrder {
    /// Parses `newest`, `oldest`, `longest`/`duration`, `shortest`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "newest" | "start" | "start_desc" => Some(Self::Newest),
            "oldest" | "start_asc" => Some(Self::Oldest),
            "longest" | "duration" | "duration_desc" => Some(Self::Longest),
            "shortest" | "duration_asc" => Some(Self::Shortest),
            "sample" | "random" => Some(Self::Sample),
            _ => None,
        }
    }

    /// Larger is better.
    /// The sort key of a trace from `start_ns` to `end_ns`: larger comes first.
    pub fn key(self, start_ns: u64, end_ns: u64) -> u64 {
        let dur = end_ns.saturating_sub(start_ns);
        match self {
            Self::Newest => start_ns,
            Self::Oldest => u64::MAX - start_ns,
            Self::Longest => dur,
            Self::Shortest => u64::MAX - dur,
            Self::Sample => sample_key(start_ns),
        }
    }

    /// Its name in URLs and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Newest => "newest",
            Self::Oldest => "oldest",
            Self::Longest => "longest",
            Self::Shortest => "shortest",
            Self::Sample => "sample",
        }
    }
}

/// The order of a trace in a [`SortOrder::Sample`]: a hash (splitmix64's finalizer) of its
/// start in nanoseconds, whose low digits are as good as random and which the search has
/// at hand for every trace (hashing the trace id would cost a read of the block's id
/// index per trace: twice the time of a whole scan at 50M spans). Independent of duration,
/// errors and attributes, so the first `limit` are a uniform sample of the range.
pub fn sample_key(start_ns: u64) -> u64 {
    let mut z = start_ns.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A trace search.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// Only traces with spans of this service.
    pub service: Option<String>,
    /// Only traces with spans of this operation (of `service` when given).
    pub operation: Option<String>,
    /// Tags (key, value as text) that spans of the service must carry.
    pub tags: Vec<(String, String)>,
    /// Least duration of a matching span.
    pub min_duration_ns: Option<u64>,
    /// Greatest duration of a matching span.
    pub max_duration_ns: Option<u64>,
    /// Traces overlapping `[start_ns, end_ns]`.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// Only traces with at least one error span.
    pub errors_only: bool,
    /// Result order.
    pub sort: SortOrder,
    /// Most results.
    pub limit: usize,
    /// Stop searching sealed blocks after this long and answer with what was found, marked
    /// partial (`None`: no limit).
    pub time_limit: Option<std::time::Duration>,
}

impl TraceQuery {
    pub(crate) fn has_span_filter(&self) -> bool {
        self.service.is_some()
            || self.operation.is_some()
            || self.min_duration_ns.is_some()
            || self.max_duration_ns.is_some()
    }

    /// Bounds in whole microseconds (Jaeger's unit), inclusive.
    pub(crate) fn duration_bounds_us(&self) -> (u64, u64) {
        (
            self.min_duration_ns.map_or(0, |m| m.div_ceil(1000)),
            self.max_duration_ns.map_or(u64::MAX, |m| m / 1000),
        )
    }

    /// Whether a duration is within the bounds, compared in whole microseconds.
    fn duration_ok(&self, dur_ns: u64) -> bool {
        let (lo, hi) = self.duration_bounds_us();
        let us = (dur_ns / 1000).min(u64::from(u32::MAX));
        us >= lo && us <= hi
    }

    /// Whether a span satisfies the service, operation and duration filters.
    pub fn span_matches(&self, s: &Span) -> bool {
        self.service.as_deref().is_none_or(|v| s.service() == v)
            && self.operation.as_deref().is_none_or(|v| s.name == v)
            && self.duration_ok(s.duration_ns())
    }

    /// Whether a span is of the queried service (tags are looked for on these spans).
    fn service_matches(&self, s: &Span) -> bool {
        self.service.as_deref().is_none_or(|v| s.service() == v)
    }

    /// Exact check of a whole trace.
    pub fn trace_matches(&self, spans: &[&Span], summary: &TraceSummary) -> bool {
        summary.overlaps(self.start_ns, self.end_ns)
            && (!self.errors_only || summary.error_count > 0)
            && self.part_mask(spans) == self.full_mask()
    }

    /// Criteria a set of spans satisfies: bit 0 when a span passes the service, operation
    /// and duration filters (or there are none), bit `i + 1` when a span of the service
    /// carries tag `i`.
    ///
    /// One pass over the spans, ending once every criterion is met; the service is
    /// compared once per run of spans sharing a resource (a search of the head calls this
    /// for every trace there, hundreds of thousands of spans).
    pub(crate) fn part_mask(&self, spans: &[&Span]) -> u64 {
        let tags = &self.tags[..self.tags.len().min(MAX_TAGS)];
        let all = (1u64 << (tags.len() + 1)) - 1;
        let mut m = u64::from(!self.has_span_filter());
        let mut last: Option<(*const faultline_model::span::Origin, bool)> = None;
        for s in spans {
            let origin = Arc::as_ptr(&s.origin);
            let of_service = match last {
                Some((o, same)) if o == origin => same,
                _ => {
                    let same = self.service_matches(s);
                    last = Some((origin, same));
                    same
                }
            };
            if !of_service {
                continue;
            }
            if m & 1 == 0
                && self.operation.as_deref().is_none_or(|v| s.name == v)
                && self.duration_ok(s.duration_ns())
            {
                m |= 1;
            }
            for (i, (k, v)) in tags.iter().enumerate() {
                if m & (1 << (i + 1)) == 0 && span_has_tag(s, k, v) {
                    m |= 1 << (i + 1);
                }
            }
            if m == all {
                break;
            }
        }
        m
    }

    /// Every criterion satisfied.
    pub(crate) fn full_mask(&self) -> u64 {
        (1u64 << (self.tags.len().min(MAX_TAGS) + 1)) - 1
    }
}

/// What a trace looks like at a glance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSummary {
    /// Trace id.
    pub trace_id: TraceId,
    /// Earliest span start, Unix nanoseconds.
    pub start_ns: u64,
    /// Latest span end, Unix nanoseconds.
    pub end_ns: u64,
    /// Service of the root span (the earliest span without a parent), if there is one.
    pub root_service: Option<String>,
    /// Operation of the root span.
    pub root_name: Option<String>,
    /// Spans.
    pub span_count: u32,
    /// Spans with error status.
    pub error_count: u32,
    /// Spans whose parent is not in the trace.
    pub orphan_count: u32,
    /// Services with spans in the trace, sorted.
    pub services: Vec<String>,
}

impl TraceSummary {
    /// The summary of a trace from its spans (`None` when there are none).
    pub fn of(spans: &[Span]) -> Option<Self> {
        let refs: Vec<&Span> = spans.iter().collect();
        Self::of_refs(&refs)
    }

    /// [`TraceSummary::of`] over references.
    pub fn of_refs(spans: &[&Span]) -> Option<Self> {
        let first = *spans.first()?;
        let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
        let root = spans
            .iter()
            .filter(|s| s.parent_span_id.is_none())
            .min_by_key(|s| s.start_ns);
        let mut services: Vec<String> = spans.iter().map(|s| s.service().to_string()).collect();
        services.sort();
        services.dedup();
        Some(Self {
            trace_id: first.trace_id,
            start_ns: spans.iter().map(|s| s.start_ns).min().unwrap_or(0),
            end_ns: spans
                .iter()
                .map(|s| s.end_ns.max(s.start_ns))
                .max()
                .unwrap_or(0),
            root_service: root.map(|r| r.service().to_string()),
            root_name: root.map(|r| r.name.clone()),
            span_count: spans.len() as u32,
            error_count: spans.iter().filter(|s| s.is_error()).count() as u32,
            orphan_count: spans
                .iter()
                .filter(|s| s.parent_span_id.is_some_and(|p| !ids.contains(&p)))
                .count() as u32,
            services,
        })
    }

    /// Duration from the earliest start to the latest end.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// Whether the trace overlaps `[start_ns, end_ns]`.
    pub fn overlaps(&self, start_ns: u64, end_ns: u64) -> bool {
        self.start_ns <= end_ns && self.end_ns >= start_ns
    }
}

/// A searchable value, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Tag<'a> {
    /// An attribute value.
    Attr(&'a AttrValue),
    /// A string (the tags faultline adds).
    Str(&'a str),
    /// A boolean (`error=true`).
    Bool(bool),
}

/// Calls `f` with every searchable (key, value) of a span: see the module docs.
pub fn for_each_tag(s: &Span, mut f: impl FnMut(&str, Tag<'_>)) {
    for_each_span_tag(s, &mut f);
    for_each_origin_tag(&s.origin, &mut f);
}

/// The searchable tags of the span itself (not of its resource and scope).
pub(crate) fn for_each_span_tag<'s>(s: &'s Span, f: &mut impl FnMut(&'s str, Tag<'s>)) {
    for (k, v) in &s.attributes {
        f(k, Tag::Attr(v));
    }
    for_each_span_tag_but_attributes(s, f);
}

/// [`for_each_span_tag`] without the span's attributes: events, kind and status.
fn for_each_span_tag_but_attributes<'s>(s: &'s Span, f: &mut impl FnMut(&'s str, Tag<'s>)) {
    for e in &s.events {
        for (k, v) in &e.attributes {
            f(k, Tag::Attr(v));
        }
    }
    if s.kind != faultline_model::span::SpanKind::Unspecified {
        f("span.kind", Tag::Str(s.kind.as_str()));
    }
    match s.status {
        StatusCode::Error => {
            f("error", Tag::Bool(true));
            f("otel.status_code", Tag::Str("ERROR"));
            if !s.status_message.is_empty() {
                f("otel.status_description", Tag::Str(&s.status_message));
            }
        }
        StatusCode::Ok => f("otel.status_code", Tag::Str("OK")),
        StatusCode::Unset => {}
    }
}

/// The searchable tags of a resource and scope.
pub(crate) fn for_each_origin_tag(
    o: &faultline_model::span::Origin,
    f: &mut impl FnMut(&str, Tag<'_>),
) {
    for (k, v) in &o.resource {
        f(k, Tag::Attr(v));
    }
    if !o.scope_name.is_empty() {
        f("otel.scope.name", Tag::Str(&o.scope_name));
    }
    if !o.scope_version.is_empty() {
        f("otel.scope.version", Tag::Str(&o.scope_version));
    }
}

/// Whether a span carries the tag `key` with the text `value`.
pub fn span_has_tag(s: &Span, key: &str, value: &str) -> bool {
    // The span's own attributes first, where most searched tags are, stopping at the
    // first match; then the rest of what `for_each_tag` visits.
    if s.attributes
        .iter()
        .any(|(k, v)| k == key && value_text_eq(Tag::Attr(v), value))
    {
        return true;
    }
    let mut found = false;
    let mut rest = |k: &str, v: Tag<'_>| {
        if !found && k == key && value_text_eq(v, value) {
            found = true;
        }
    };
    for_each_span_tag_but_attributes(s, &mut rest);
    for_each_origin_tag(&s.origin, &mut rest);
    found
}

fn value_text_eq(v: Tag<'_>, text: &str) -> bool {
    match v {
        Tag::Attr(AttrValue::Str(s)) => s == text,
        Tag::Str(s) => s == text,
        Tag::Bool(b) => text == if b { "true" } else { "false" },
        // Without formatting the number unless the text is that number ("0503" is not
        // the text of 503, so equal numbers still compare as text).
        Tag::Attr(AttrValue::Int(i)) => text.parse::<i64>() == Ok(*i) && i.to_string() == text,
        Tag::Attr(other) => other.to_text() == text,
    }
}

/// Whether a value is indexed: [`indexed_text`] would give it a text (told without
/// reading a string's bytes or formatting a number).
pub(crate) fn is_indexed(v: Tag<'_>) -> bool {
    match v {
        Tag::Attr(AttrValue::Str(s)) => s.len() <= MAX_INDEXED_VALUE,
        Tag::Str(s) => s.len() <= MAX_INDEXED_VALUE,
        Tag::Attr(AttrValue::Int(_) | AttrValue::Bool(_)) | Tag::Bool(_) => true,
        Tag::Attr(_) => false,
    }
}

/// The text under which a value is indexed, or `None` when it is not indexed.
pub(crate) fn indexed_text(v: Tag<'_>) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let short = |s: &str| s.len() <= MAX_INDEXED_VALUE;
    match v {
        Tag::Attr(AttrValue::Str(s)) if short(s) => Some(Cow::Borrowed(s.as_str())),
        Tag::Str(s) if short(s) => Some(Cow::Borrowed(s)),
        Tag::Attr(AttrValue::Int(i)) => Some(Cow::Owned(i.to_string())),
        Tag::Attr(AttrValue::Bool(b)) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Tag::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod mask_tests {
    use super::*;
    use faultline_model::span::{Event, Origin, SpanKind};
    use proptest::prelude::*;

    /// The definitions before the one-pass forms: every tag visited, every span compared.
    fn reference_has_tag(s: &Span, key: &str, value: &str) -> bool {
        let mut found = false;
        for_each_tag(s, |k, v| {
            if !found && k == key && v_text(v) == value {
                found = true;
            }
        });
        found
    }

    /// `is_indexed` tells, without the text, what `indexed_text` gives a text to: every
    /// kind of value, and strings on both sides of the length limit.
    #[test]
    fn is_indexed_agrees_with_indexed_text() {
        let long = "x".repeat(MAX_INDEXED_VALUE + 1);
        let limit = "x".repeat(MAX_INDEXED_VALUE);
        let attrs = [
            AttrValue::Str(String::new().into()),
            AttrValue::Str(limit.as_str().into()),
            AttrValue::Str(long.as_str().into()),
            AttrValue::Int(-7),
            AttrValue::Bool(false),
            AttrValue::Double(1.5),
            AttrValue::Bytes(vec![1, 2]),
            AttrValue::Array(vec![AttrValue::Int(1)]),
            AttrValue::KvList(vec![("k".into(), AttrValue::Int(1))]),
        ];
        let mut tags: Vec<Tag<'_>> = attrs.iter().map(Tag::Attr).collect();
        tags.extend([
            Tag::Str(""),
            Tag::Str(&limit),
            Tag::Str(&long),
            Tag::Bool(true),
        ]);
        let mut indexed = 0;
        for v in tags {
            assert_eq!(is_indexed(v), indexed_text(v).is_some(), "{}", v_text(v));
            indexed += usize::from(is_indexed(v));
        }
        assert_eq!(indexed, 7, "the table holds both kinds");
    }

    fn v_text(v: Tag<'_>) -> String {
        match v {
            Tag::Attr(a) => a.to_text(),
            Tag::Str(s) => s.to_string(),
            Tag::Bool(b) => b.to_string(),
        }
    }

    fn reference_mask(q: &TraceQuery, spans: &[&Span]) -> u64 {
        let mut m = u64::from(!q.has_span_filter() || spans.iter().any(|s| q.span_matches(s)));
        for (i, (k, v)) in q.tags.iter().enumerate() {
            if spans
                .iter()
                .filter(|s| q.service_matches(s))
                .any(|s| reference_has_tag(s, k, v))
            {
                m |= 1 << (i + 1);
            }
        }
        m
    }

    const KEYS: [&str; 4] = ["region", "http.response.status_code", "user.id", "error"];
    const VALUES: [&str; 5] = ["eu", "503", "0503", "u1", "true"];

    fn value(i: u8) -> AttrValue {
        match i % 4 {
            0 => AttrValue::Str(VALUES[i as usize % VALUES.len()].into()),
            1 => AttrValue::Int(if i % 8 == 1 { 503 } else { i64::from(i) }),
            2 => AttrValue::Bool(i.is_multiple_of(2)),
            _ => AttrValue::Double(f64::from(i)),
        }
    }

    fn attrs(v: &[(u8, u8)]) -> Vec<(faultline_model::span::Key, AttrValue)> {
        v.iter()
            .map(|&(k, x)| (KEYS[k as usize % KEYS.len()].into(), value(x)))
            .collect()
    }

    proptest! {
        #[test]
        fn one_pass_masks_equal_the_reference(
            spans in prop::collection::vec(
                (0u8..3, 0u8..3, 0u64..300, prop::collection::vec((0u8..4, 0u8..16), 0..4),
                 prop::collection::vec((0u8..4, 0u8..16), 0..2), 0u8..3),
                0..12),
            service in prop::option::of(0u8..3),
            operation in prop::option::of(0u8..3),
            min in prop::option::of(0u64..300),
            tags in prop::collection::vec((0u8..4, 0u8..5), 0..3),
        ) {
            let origins: Vec<Arc<Origin>> = (0..3)
                .map(|i| Arc::new(Origin {
                    service: format!("svc{i}"),
                    resource: attrs(&[(0, i * 4)]),
                    scope_name: String::new(),
                    scope_version: String::new(),
                }))
                .collect();
            let built: Vec<Span> = spans
                .iter()
                .enumerate()
                .map(|(n, (o, op, dur, a, ev, status))| Span {
                    trace_id: [1; 16],
                    span_id: [n as u8; 8],
                    parent_span_id: None,
                    name: format!("op{op}"),
                    kind: if n % 2 == 0 { SpanKind::Server } else { SpanKind::Unspecified },
                    start_ns: 1_000,
                    end_ns: 1_000 + dur * 1_000_000,
                    status: match status { 0 => StatusCode::Unset, 1 => StatusCode::Ok, _ => StatusCode::Error },
                    status_message: String::new(),
                    attributes: attrs(a),
                    events: vec![Event { time_ns: 0, name: "e".into(), attributes: attrs(ev) }],
                    links: Vec::new(),
                    origin: origins[*o as usize].clone(),
                })
                .collect();
            let refs: Vec<&Span> = built.iter().collect();
            let q = TraceQuery {
                service: service.map(|s| format!("svc{s}")),
                operation: operation.map(|o| format!("op{o}")),
                min_duration_ns: min.map(|m| m * 1_000_000),
                tags: tags
                    .iter()
                    .map(|&(k, v)| (KEYS[k as usize].to_string(), VALUES[v as usize].to_string()))
                    .collect(),
                end_ns: u64::MAX,
                ..TraceQuery::default()
            };
            prop_assert_eq!(q.part_mask(&refs), reference_mask(&q, &refs));
            for s in &refs {
                for (k, v) in &q.tags {
                    prop_assert_eq!(span_has_tag(s, k, v), reference_has_tag(s, k, v));
                }
            }
        }
    }
}
