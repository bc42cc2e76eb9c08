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
        "s" => AttrValue::Str(inner.as_str().unwrap_or_default().to_string()),
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
/// `serde_json::Value` maps per span was the largest cost of sealing a block.
pub(crate) fn write_json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
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
