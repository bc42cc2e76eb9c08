//! [`SelectorIndex`]: which of many one-span selectors can match a span, found by the
//! service they require, so a span is tried only against the selectors of its own service
//! (and those that name none). The checks match every ingested span against every rule's
//! and assertion's selector; with ten rules over ten services this turns thirty selector
//! evaluations per span into about three.

use std::collections::HashMap;

use faultline_model::span::Span;

use crate::selector::Selector;

/// Selectors grouped by the service their first group requires (see
/// [`Selector::hints`]). Positions are those of the slice it was built from.
#[derive(Debug, Clone, Default)]
pub struct SelectorIndex {
    by_service: HashMap<String, Vec<usize>>,
    any: Vec<usize>,
}

impl SelectorIndex {
    /// Indexes `selectors` (their positions are what [`Self::candidates`] gives back).
    pub fn new<'a>(selectors: impl IntoIterator<Item = &'a Selector>) -> SelectorIndex {
        let mut ix = SelectorIndex::default();
        for (i, s) in selectors.into_iter().enumerate() {
            match s.hints().0 {
                Some(service) => ix.by_service.entry(service.to_owned()).or_default().push(i),
                None => ix.any.push(i),
            }
        }
        ix
    }

    /// Positions of the selectors that may match `span` (its service's, then those that
    /// name none): every selector that does not rule it out by its service. The caller
    /// still asks each one. No allocation: this runs for every ingested span.
    pub fn candidates<'a>(&'a self, span: &Span) -> impl Iterator<Item = usize> + 'a {
        let own = self
            .by_service
            .get(span.service())
            .map_or(&[][..], Vec::as_slice);
        own.iter().chain(&self.any).copied()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn span(service: &str, name: &str) -> Span {
        use faultline_model::span::{Origin, SpanKind, StatusCode};
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
            attributes: vec![],
            events: vec![],
            links: vec![],
            origin: std::sync::Arc::new(Origin {
                service: service.into(),
                ..Origin::default()
            }),
        }
    }

    #[test]
    fn candidates_are_exactly_the_selectors_that_can_match() {
        let texts = [
            r#"{ service = "a" && name = "x" }"#,
            r#"{ name = "x" }"#,
            r#"{ service = "b" }"#,
            r#"{ service = "a" || service = "b" }"#,
            r#"{ service != "a" }"#,
            r#"{ service = "a" }"#,
        ];
        let sels: Vec<Selector> = texts.iter().map(|t| Selector::parse(t).unwrap()).collect();
        let ix = SelectorIndex::new(&sels);
        for service in ["a", "b", "c"] {
            for name in ["x", "y"] {
                let s = span(service, name);
                let mut cands: Vec<usize> = ix.candidates(&s).collect();
                cands.sort_unstable();
                // No selector outside the candidates matches (the index never hides one).
                for (i, sel) in sels.iter().enumerate() {
                    if sel.matches_span(&s) {
                        assert!(
                            cands.contains(&i),
                            "{} missed for {service}/{name}",
                            texts[i]
                        );
                    }
                }
                assert!(cands.windows(2).all(|w| w[0] < w[1]), "no position twice");
            }
        }
        let sorted = |s: &Span| {
            let mut v: Vec<usize> = ix.candidates(s).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(&span("a", "x")), vec![0, 1, 3, 4, 5]);
        assert_eq!(sorted(&span("c", "x")), vec![1, 3, 4]);
        let only = SelectorIndex::new(&sels[..1]);
        assert_eq!(only.candidates(&span("b", "x")).count(), 0);
    }
}
