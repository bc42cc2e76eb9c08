//! The Arrow schema of a block (the column table is in the module doc of `block`), and the
//! choice of promoted attribute columns: keys on at least 1% of a block's spans with one
//! scalar type throughout, up to [`MAX_PROMOTED`], each in a nullable `attr.KEY` column
//! (a large block judged on a sample of its spans, [`PROMOTION_SAMPLE`]).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

use faultline_model::span::{AttrValue, Span};

use super::FastMap;

/// The Arrow schema of a block.
pub fn schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
        Field::new("parent_row_delta", DataType::Int32, true),
        s("service"),
        s("name"),
        Field::new("kind", DataType::Int32, false),
        Field::new("trace_start_unix_nano", DataType::Int64, false),
        Field::new("start_offset_nano", DataType::Int64, false),
        Field::new("duration_nano", DataType::Int64, false),
        Field::new("status_code", DataType::Int32, false),
        s("status_message"),
        s("attributes"),
        // One resource serves many spans: an Arrow dictionary of its JSON (see `writer.rs`).
        Field::new(
            "resource_attributes",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
        s("scope_name"),
        s("scope_version"),
        s("events"),
        s("links"),
        // Format 5: the spans each row stands for (`faultline_model::sampling`).
        Field::new("adjusted_count", DataType::Float64, false),
        // Format 6: nanoseconds added to this span's times to correct its clock's skew, as
        // estimated when the block was written (`crate::skew`); 0 for nearly every span.
        Field::new("clock_shift_nano", DataType::Int64, false),
    ]))
}

/// The type of a promoted attribute column (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Promo {
    Str,
    Int,
    Double,
    Bool,
}

impl Promo {
    pub(crate) fn of(v: &AttrValue) -> Option<Self> {
        match v {
            AttrValue::Str(_) => Some(Self::Str),
            AttrValue::Int(_) => Some(Self::Int),
            AttrValue::Double(_) => Some(Self::Double),
            AttrValue::Bool(_) => Some(Self::Bool),
            _ => None,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Self::Str => DataType::Utf8,
            Self::Int => DataType::Int64,
            Self::Double => DataType::Float64,
            Self::Bool => DataType::Boolean,
        }
    }
}

/// Prefix of promoted attribute columns.
pub(crate) const ATTR_PREFIX: &str = "attr.";
/// Most attribute keys promoted to their own columns in one block.
pub const MAX_PROMOTED: usize = 32;

/// Spans [`choose_promoted`] looks at, at most (about; every n-th span of a larger block).
pub(crate) const PROMOTION_SAMPLE: usize = 16 * 1024;

/// The attribute keys of `spans` that get their own column: those on at least 1% of the
/// spans with one scalar type throughout, the most frequent [`MAX_PROMOTED`], by name.
///
/// A block of more than [`PROMOTION_SAMPLE`] spans is judged by every n-th span: reading
/// every key of a 250,000-span head was a tenth of a seal's time (cold strings compared
/// one by one), and the choice only shapes the file. A key chosen on the sample whose
/// value is another type on some span, or a second time on one span, is written in that
/// span's attribute JSON, as any value the column cannot hold.
pub(crate) fn choose_promoted(spans: &[&Span]) -> Vec<(String, Promo)> {
    let stride = spans.len().div_ceil(PROMOTION_SAMPLE).max(1);
    let sampled = spans.len().div_ceil(stride);
    // Keys are numbered through a map, but a span mostly repeats the keys of the span
    // before it in the same order (a block's spans are sorted by trace, its traces by
    // shape): each key is compared with the key at its place in the previous span first
    // and looked up only when they differ. The map lookup per attribute was a sixth of
    // the sealer's time.
    let mut number: FastMap<&str, usize> = FastMap::default();
    let mut stats: Vec<(&str, usize, Option<Promo>)> = Vec::new();
    let mut last: Vec<(&str, usize)> = Vec::new();
    for s in spans.iter().step_by(stride) {
        for (i, (k, v)) in s.attributes.iter().enumerate() {
            let n = match last.get(i) {
                Some(&(lk, n)) if lk == k.as_str() => n,
                _ => {
                    let n = *number.entry(k.as_str()).or_insert_with(|| {
                        stats.push((k.as_str(), 0, Promo::of(v)));
                        stats.len() - 1
                    });
                    match last.get_mut(i) {
                        Some(l) => *l = (k.as_str(), n),
                        None => last.push((k.as_str(), n)),
                    }
                    n
                }
            };
            let e = &mut stats[n];
            e.1 += 1;
            if e.2 != Promo::of(v) {
                e.2 = None;
            }
        }
    }
    let least = sampled.div_ceil(100).max(1);
    let mut keys: Vec<(&str, usize, Promo)> = stats
        .into_iter()
        .filter_map(|(k, n, p)| Some((k, n, p?)))
        .filter(|&(_, n, _)| n >= least)
        .collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    keys.truncate(MAX_PROMOTED);
    let mut out: Vec<(String, Promo)> = keys
        .into_iter()
        .map(|(k, _, p)| (k.to_string(), p))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The Arrow schema of a block with `promoted` attribute columns.
pub(crate) fn block_schema(promoted: &[(String, Promo)]) -> SchemaRef {
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if !promoted.is_empty() {
        // Spans of one shape share their key list: an Arrow dictionary (see `writer.rs`).
        fields.push(Field::new(
            "attribute_keys",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ));
        for (k, p) in promoted {
            fields.push(Field::new(format!("{ATTR_PREFIX}{k}"), p.data_type(), true));
        }
    }
    Arc::new(Schema::new(fields))
}
