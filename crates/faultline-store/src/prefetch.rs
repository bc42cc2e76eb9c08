//! Software prefetch of a span's scattered parts, for a seal's passes over a head in trace
//! order. A head's spans sit in memory in arrival order, each with a score of separately
//! allocated strings (name, attribute values); a seal visits them sorted by trace, so
//! nearly every part it reads is a cache miss, waited for one after the other (copies into
//! Arrow builders were a fifth of the server's CPU in a catch-up, BENCHMARKS.md). Asking
//! for the parts of the rows a few ahead lets those misses overlap. Used by the shape
//! grouping and the Parquet writer (`block/writer.rs`) and by both loops of the index
//! thread (`search/postings.rs`, the light rows). The one `unsafe` of this crate: the
//! prefetch instruction, which is a hint.

use faultline_model::span::{AttrValue, Span};

/// Asks the CPU to start loading the cache line holding `p` into every cache level.
#[inline(always)]
fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache: it reads nothing into the program, never
    // faults (any address, even a dangling one, is allowed) and changes no state the
    // program can observe. SSE, which it belongs to, is part of every x86_64 CPU.
    #[allow(unsafe_code)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The lines of `len` bytes at `p`, at most `max` of them.
#[inline(always)]
fn lines(p: *const u8, len: usize, max: usize) {
    for i in (0..len.min(max * 64)).step_by(64) {
        line(p.wrapping_add(i));
    }
}

/// First stage, furthest ahead: the span itself.
#[inline(always)]
pub(crate) fn span(s: &Span) {
    let p = (s as *const Span).cast::<u8>();
    lines(p, std::mem::size_of::<Span>(), 4);
}

/// Second stage: what the span points to directly (its name and its attribute list).
/// Reads the span, so it should have been asked for with [`span`] a few rows before.
#[inline(always)]
pub(crate) fn parts(s: &Span) {
    line(s.name.as_ptr());
    lines(
        s.attributes.as_ptr().cast(),
        std::mem::size_of_val(s.attributes.as_slice()),
        24,
    );
}

/// Last stage: the attribute values' texts. Reads the attribute list, so it should have
/// been asked for with [`parts`] a few rows before.
#[inline(always)]
pub(crate) fn values(s: &Span) {
    for (_, v) in &s.attributes {
        // A short text is held inline, in the attribute list itself.
        if let AttrValue::Str(t) = v
            && t.is_heap_allocated()
        {
            lines(t.as_ptr(), t.len(), 2);
        }
    }
}

/// How much of a span a loop reads beyond the span itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reach {
    /// Its name and attribute list (keys, value types, numbers).
    Parts,
    /// Also its attribute values' texts.
    Values,
}

/// Prefetches in stages for a loop over `rows` at row `i`: with [`Reach::Values`] the span
/// 12 rows ahead, the parts of the one 8 ahead and the values of the one 4 ahead; with
/// [`Reach::Parts`] the span 8 rows ahead and the parts of the one 4 ahead. Far enough
/// ahead for a miss to be served before the row is reached, near enough for the lines to
/// still be in cache then.
#[inline(always)]
pub(crate) fn ahead(rows: &[&Span], i: usize, reach: Reach) {
    match reach {
        Reach::Values => {
            if let Some(s) = rows.get(i + 12) {
                span(s);
            }
            if let Some(s) = rows.get(i + 8) {
                parts(s);
            }
            if let Some(s) = rows.get(i + 4) {
                values(s);
            }
        }
        Reach::Parts => {
            if let Some(s) = rows.get(i + 8) {
                span(s);
            }
            if let Some(s) = rows.get(i + 4) {
                parts(s);
            }
        }
    }
}

/// The elements of `items`, at most `max` lines of them (a slice of a larger array read
/// out of order, as a span's hashed tags are).
#[inline(always)]
pub(crate) fn slice<T>(items: &[T], max: usize) {
    lines(items.as_ptr().cast(), std::mem::size_of_val(items), max);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::{AttrValue, Origin, Span, SpanKind, StatusCode};

    use super::*;

    fn span(name: &str, attributes: Vec<(&str, AttrValue)>) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: name.into(),
            kind: SpanKind::Server,
            start_ns: 1,
            end_ns: 2,
            status: StatusCode::Unset,
            status_message: String::new(),
            attributes: attributes.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            events: Vec::new(),
            links: Vec::new(),
            origin: Arc::new(Origin::default()),
        }
    }

    /// Every row of short and empty lists and past their ends, at both reaches, with empty
    /// names, no attributes, long texts and values of every type: the stages look rows up
    /// with `get`, so a loop's last rows (nothing 4, 8 or 12 ahead) do not panic.
    #[test]
    fn prefetching_any_row_of_any_list_is_harmless() {
        let long = "x".repeat(10_000);
        let spans = [
            span("", Vec::new()),
            span(
                "GET /",
                vec![
                    ("a", AttrValue::Str(long.as_str().into())),
                    ("b", AttrValue::Int(1)),
                    ("c", AttrValue::Str(String::new().into())),
                    ("d", AttrValue::Array(vec![AttrValue::Bool(true)])),
                ],
            ),
            span(&long, vec![("e", AttrValue::Double(0.5)); 300]),
        ];
        let rows: Vec<&Span> = spans.iter().cycle().take(40).collect();
        for n in [0, 1, 3, 13, rows.len()] {
            for i in 0..n + 20 {
                ahead(&rows[..n], i, Reach::Values);
                ahead(&rows[..n], i, Reach::Parts);
            }
        }
        slice::<u64>(&[], 4);
        slice(&[1u64; 100], 4);
    }
}
