//! The JSON columns of a block: span, resource, event and link attributes as a JSON
//! object whose values are `{"s": string}`, `{"i": int}`, `{"d": double}` (`"NaN"`,
//! `"Infinity"` and `"-Infinity"` as strings), `{"b": bool}`, `{"x": hex bytes}`, `{"a":
//! [values]}` or `{"k": {object}}`, so types survive a round trip. Writing is hand-written
//! (building `serde_json::Value` maps per span was the largest cost of sealing); reading
//! goes through `serde_json`.

use serde_json::Value as Json;

use faultline_model::span::{AttrValue, Attributes, Key};

pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn value_from_json(v: &Json) -> AttrValue {
    let Some(obj) = v.as_object() else {
        return AttrValue::Empty;
    };
    let Some((tag, inner)) = obj.iter().next() else {
        return AttrValue::Empty;
    };
    match tag.as_str() {
        "s" => AttrValue::Str(inner.as_str().unwrap_or_default().into()),
        "i" => AttrValue::Int(inner.as_i64().unwrap_or_default()),
        "d" => AttrValue::Double(match inner.as_str() {
            Some("Infinity") => f64::INFINITY,
            Some("-Infinity") => f64::NEG_INFINITY,
            Some(_) => f64::NAN,
            None => inner.as_f64().unwrap_or(f64::NAN),
        }),
        "b" => AttrValue::Bool(inner.as_bool().unwrap_or_default()),
        "x" => AttrValue::Bytes(
            inner
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .chunks(2)
                .filter_map(|c| {
                    std::str::from_utf8(c)
                        .ok()
                        .and_then(|c| u8::from_str_radix(c, 16).ok())
                })
                .collect(),
        ),
        "a" => AttrValue::Array(
            inner
                .as_array()
                .map(|a| a.iter().map(value_from_json).collect())
                .unwrap_or_default(),
        ),
        "k" => AttrValue::KvList(attrs_from_json(inner)),
        _ => AttrValue::Empty,
    }
}

pub(crate) fn attrs_from_json(v: &Json) -> Attributes {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (Key::new(k), value_from_json(v)))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn attrs_str(attrs: &Attributes) -> String {
    let mut out = String::new();
    write_attrs(&mut out, attrs);
    out
}

/// Writes a JSON string literal. Hand-written (with [`write_attrs`]) because building
/// `serde_json::Value` maps per span was the largest cost of sealing a block. Leading runs
/// of eight bytes with nothing to escape are passed over a word at a time (the byte loop
/// alone was 1.6% of a replay's instructions).
pub(crate) fn write_json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    let mut clean = 0;
    while let Some(w) = s.as_bytes().get(clean..clean + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        if needs_escape(u64::from_le_bytes(word)) {
            break;
        }
        clean += 8;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate().skip(clean) {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether any of the eight bytes of `w` is a control character, `"` or `\\` (the bytes
/// [`write_json_str`] escapes): the word tests "some byte below n" and "some byte zero",
/// which are exact for "any", though not for which byte.
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    below_space | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) != 0
}

pub(crate) fn write_value(out: &mut String, v: &AttrValue) {
    use std::fmt::Write as _;
    match v {
        AttrValue::Str(s) => {
            out.push_str("{\"s\":");
            write_json_str(out, s);
            out.push('}');
        }
        AttrValue::Int(i) => {
            let _ = write!(out, "{{\"i\":{i}}}");
        }
        AttrValue::Double(d) if d.is_finite() => {
            let _ = write!(out, "{{\"d\":{d:?}}}");
        }
        AttrValue::Double(d) => {
            // JSON has no NaN or infinities: spelled as strings, read back by value_from_json.
            let name = if d.is_nan() {
                "NaN"
            } else if *d > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            };
            let _ = write!(out, "{{\"d\":\"{name}\"}}");
        }
        AttrValue::Bool(b) => {
            let _ = write!(out, "{{\"b\":{b}}}");
        }
        AttrValue::Bytes(b) => {
            out.push_str("{\"x\":\"");
            for x in b {
                let _ = write!(out, "{x:02x}");
            }
            out.push_str("\"}");
        }
        AttrValue::Array(a) => {
            out.push_str("{\"a\":[");
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, v);
            }
            out.push_str("]}");
        }
        AttrValue::KvList(kv) => {
            out.push_str("{\"k\":");
            write_attrs(out, kv);
            out.push('}');
        }
        AttrValue::Empty => out.push_str("{}"),
    }
}

/// Writes attributes as a JSON object (see the module doc for the value encoding).
pub(crate) fn write_attrs(out: &mut String, attrs: &Attributes) {
    write_attr_pairs(out, attrs.iter().map(|(k, v)| (k.as_str(), v)));
}

/// [`write_attrs`] over any key-value pairs.
pub(crate) fn write_attr_pairs<'a>(
    out: &mut String,
    attrs: impl Iterator<Item = (&'a str, &'a AttrValue)>,
) {
    out.push('{');
    for (i, (k, v)) in attrs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The byte-at-a-time writer this module had before words were checked.
    fn reference(s: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn every_byte_value_is_judged_in_every_position_of_a_word() {
        for b in 0u8..=0x7f {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = b;
                let w = u64::from_le_bytes(word);
                let escaped = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(needs_escape(w), escaped, "byte {b:#x} at {at}");
            }
        }
        // Bytes of multi-byte characters (0x80 and over) never need escaping.
        assert!(!needs_escape(u64::from_le_bytes(
            *b"\xc3\xa9\xe2\x82\xac\xff\x80\x9f"
        )));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The same literal as the byte loop, and JSON that reads back to the text.
        #[test]
        fn literals_match_the_byte_loop_and_read_back(
            s in "[a-z\"\\\\\n\r\t\u{1}\u{1f}\u{7f}\u{e9}\u{20ac} ]{0,40}",
        ) {
            let mut out = String::new();
            write_json_str(&mut out, &s);
            prop_assert_eq!(&out, &reference(&s));
            prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }
    }
}
