//! The selector language: which spans of a trace an assertion is about. Modelled on
//! Grafana Tempo's TraceQL, which many users know, and kept small:
//!
//! ```text
//! selector   := group ( (">" | ">>") group )*    a > b: spans matching b whose parent
//!                                                matches a; a >> b: whose ancestor does
//! group      := "{" [ or ] "}"                   {} matches every span
//! or         := and ( "||" and )*
//! and        := unary ( "&&" unary )*
//! unary      := "!" unary | "(" or ")" | field op value
//! field      := service | name | kind | status | duration
//!             | .ATTRIBUTE (a span attribute, e.g. .http.route)
//!             | resource.ATTRIBUTE
//! op         := = | != | =~ | !~ | < | <= | > | >=  (=~ matches a glob: * any run, ? one)
//! value      := "string" | number | duration (250ms, 1.5s, 2m) | true | false
//!             | server | client | internal | producer | consumer | unspecified  (kind)
//!             | ok | error | unset  (status)
//! ```
//!
//! Examples: `{ service = "checkout" && name = "POST /pay" }`,
//! `{ kind = server && .http.response.status_code >= 500 }`,
//! `{ service = "frontend" } >> { status = error }`, `{ duration > 250ms }`.
//!
//! A comparison with an attribute the span lacks is false (so `!=` on a missing
//! attribute is false too: write `!(.a = "x")` for "not x or missing").

use faultline_model::span::{AttrValue, Key, Span, SpanKind, StatusCode};

/// A selector that could not be parsed: where and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("selector {text:?}: {message} at column {column}\n  {text}\n  {caret}^")]
pub struct SelectorError {
    pub text: String,
    pub column: usize,
    pub message: String,
    caret: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Service,
    Name,
    Kind,
    Status,
    Duration,
    Attr(String),
    Resource(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Glob,
    NotGlob,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Num(f64),
    /// Nanoseconds.
    Dur(u64),
    Bool(bool),
    Word(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    All,
    Cmp(Field, Op, Value),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rel {
    Child,
    Descendant,
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    first: Expr,
    rest: Vec<(Rel, Expr)>,
    text: String,
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

const KINDS: [(&str, SpanKind); 6] = [
    ("unspecified", SpanKind::Unspecified),
    ("internal", SpanKind::Internal),
    ("server", SpanKind::Server),
    ("client", SpanKind::Client),
    ("producer", SpanKind::Producer),
    ("consumer", SpanKind::Consumer),
];
const STATUSES: [(&str, StatusCode); 3] = [
    ("unset", StatusCode::Unset),
    ("ok", StatusCode::Ok),
    ("error", StatusCode::Error),
];

impl<'a> Parser<'a> {
    fn err(&self, message: impl Into<String>) -> SelectorError {
        let column = self.text[..self.pos].chars().count() + 1;
        SelectorError {
            text: self.text.to_string(),
            column,
            message: message.into(),
            caret: " ".repeat(column - 1),
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str, what: &str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.err(format!("expected {what}")))
        }
    }

    fn word(&mut self) -> String {
        self.skip_ws();
        let w: String = self
            .rest()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
            .collect();
        self.pos += w.len();
        w
    }

    fn selector(&mut self) -> Result<Selector, SelectorError> {
        let first = self.group()?;
        let mut rest = Vec::new();
        loop {
            let rel = if self.eat(">>") {
                Rel::Descendant
            } else if self.eat(">") {
                Rel::Child
            } else {
                break;
            };
            rest.push((rel, self.group()?));
        }
        self.skip_ws();
        if !self.rest().is_empty() {
            return Err(self.err("expected > or >> between groups, or the end"));
        }
        Ok(Selector {
            first,
            rest,
            text: self.text.to_string(),
        })
    }

    fn group(&mut self) -> Result<Expr, SelectorError> {
        self.expect("{", "{ to open a group of conditions")?;
        if self.eat("}") {
            return Ok(Expr::All);
        }
        let e = self.or()?;
        self.expect("}", "}, && or ||")?;
        Ok(e)
    }

    fn or(&mut self) -> Result<Expr, SelectorError> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, SelectorError> {
        let mut e = self.unary()?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, SelectorError> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.or()?;
            self.expect(")", ")")?;
            return Ok(e);
        }
        let field = self.field()?;
        let op = self.op()?;
        let value = self.value(&field)?;
        Ok(Expr::Cmp(field, op, value))
    }

    fn field(&mut self) -> Result<Field, SelectorError> {
        self.skip_ws();
        let start = self.pos;
        let w = self.word();
        Ok(match w.as_str() {
            "service" => Field::Service,
            "name" => Field::Name,
            "kind" => Field::Kind,
            "status" => Field::Status,
            "duration" => Field::Duration,
            w if w.starts_with('.') && w.len() > 1 => Field::Attr(w[1..].to_string()),
            w if w.starts_with("resource.") && w.len() > 9 => Field::Resource(w[9..].to_string()),
            _ => {
                self.pos = start;
                return Err(self.err(
                    "expected a field: service, name, kind, status, duration, .attribute or resource.attribute",
                ));
            }
        })
    }

    fn op(&mut self) -> Result<Op, SelectorError> {
        for (tok, op) in [
            ("=~", Op::Glob),
            ("!~", Op::NotGlob),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("=", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ] {
            if self.eat(tok) {
                return Ok(op);
            }
        }
        Err(self.err("expected an operator: = != =~ !~ < <= > >="))
    }

    fn value(&mut self, field: &Field) -> Result<Value, SelectorError> {
        self.skip_ws();
        let start = self.pos;
        if self.eat("\"") {
            let mut out = String::new();
            let mut chars = self.rest().char_indices();
            loop {
                match chars.next() {
                    None => {
                        self.pos = start;
                        return Err(self.err("unterminated string: expected a closing \""));
                    }
                    Some((i, '"')) => {
                        self.pos += i + 1;
                        return Ok(Value::Str(out));
                    }
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => out.push(c),
                        None => continue,
                    },
                    Some((_, c)) => out.push(c),
                }
            }
        }
        let w = self.word();
        if w.is_empty() {
            return Err(self.err("expected a value: \"text\", a number, a duration, true or false"));
        }
        let bad = |p: &mut Self, msg: String| {
            p.pos = start;
            Err(p.err(msg))
        };
        match field {
            Field::Kind if !KINDS.iter().any(|(k, _)| *k == w) => {
                return bad(
                    self,
                    format!(
                        "expected a span kind (server, client, internal, producer, consumer, unspecified), not {w:?}"
                    ),
                );
            }
            Field::Status if !STATUSES.iter().any(|(k, _)| *k == w) => {
                return bad(
                    self,
                    format!("expected a status (ok, error, unset), not {w:?}"),
                );
            }
            Field::Kind | Field::Status => return Ok(Value::Word(w)),
            _ => {}
        }
        if let Some(d) = parse_duration(&w) {
            return Ok(Value::Dur(d));
        }
        if let Ok(n) = w.parse::<f64>() {
            return Ok(match field {
                // A bare number compared with a duration is in milliseconds.
                Field::Duration => Value::Dur((n * 1e6) as u64),
                _ => Value::Num(n),
            });
        }
        match w.as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => bad(
                self,
                format!(
                    "expected a value: \"text\" (in quotes), a number, a duration, true or false, not {w:?}"
                ),
            ),
        }
    }
}

/// `250ms`, `1.5s`, `2m`, `10us`, `100ns` in nanoseconds.
fn parse_duration(s: &str) -> Option<u64> {
    faultline_model::duration::parse_ns(s)
}

/// Glob match: `*` any run of characters, `?` one.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn attr<'s>(attrs: &'s [(Key, AttrValue)], key: &str) -> Option<&'s AttrValue> {
    attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn compare_text(a: &str, op: Op, b: &str) -> bool {
    match op {
        Op::Eq => a == b,
        Op::Ne => a != b,
        Op::Glob => glob(b, a),
        Op::NotGlob => !glob(b, a),
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
    }
}

fn compare_num(a: f64, op: Op, b: f64) -> bool {
    match op {
        Op::Eq | Op::Glob => a == b,
        Op::Ne | Op::NotGlob => a != b,
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
    }
}

fn compare_attr(v: &AttrValue, op: Op, want: &Value) -> bool {
    match (v, want) {
        (AttrValue::Str(s), Value::Str(w)) => compare_text(s, op, w),
        (AttrValue::Int(i), Value::Num(n)) => compare_num(*i as f64, op, *n),
        (AttrValue::Double(d), Value::Num(n)) => compare_num(*d, op, *n),
        (AttrValue::Bool(b), Value::Bool(w)) => {
            compare_num(f64::from(u8::from(*b)), op, f64::from(u8::from(*w)))
        }
        // A number given as text or the reverse: compare as text.
        (AttrValue::Int(i), Value::Str(w)) => compare_text(&i.to_string(), op, w),
        (AttrValue::Str(s), Value::Num(n)) => {
            s.parse::<f64>().is_ok_and(|x| compare_num(x, op, *n))
        }
        _ => false,
    }
}

fn matches(e: &Expr, s: &Span) -> bool {
    match e {
        Expr::All => true,
        Expr::Not(x) => !matches(x, s),
        Expr::And(a, b) => matches(a, s) && matches(b, s),
        Expr::Or(a, b) => matches(a, s) || matches(b, s),
        Expr::Cmp(field, op, want) => match (field, want) {
            (Field::Service, Value::Str(w)) => compare_text(s.service(), *op, w),
            (Field::Name, Value::Str(w)) => compare_text(&s.name, *op, w),
            (Field::Kind, Value::Word(w)) => {
                let k = KINDS
                    .iter()
                    .find(|(n, _)| *n == w.as_str())
                    .map(|(_, k)| *k);
                compare_num(f64::from(u8::from(k == Some(s.kind))), *op, 1.0)
            }
            (Field::Status, Value::Word(w)) => {
                let st = STATUSES
                    .iter()
                    .find(|(n, _)| *n == w.as_str())
                    .map(|(_, k)| *k);
                compare_num(f64::from(u8::from(st == Some(s.status))), *op, 1.0)
            }
            (Field::Duration, Value::Dur(d)) => compare_num(s.duration_ns() as f64, *op, *d as f64),
            (Field::Attr(k), w) => attr(&s.attributes, k).is_some_and(|v| compare_attr(v, *op, w)),
            (Field::Resource(k), w) => {
                attr(&s.origin.resource, k).is_some_and(|v| compare_attr(v, *op, w))
            }
            _ => false,
        },
    }
}

impl Selector {
    /// Parses a selector; the error gives the column and what was expected.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        Parser { text, pos: 0 }.selector()
    }

    /// The selector as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the selector looks at one span alone (no `>` or `>>`), so that
    /// [`Self::matches_span`] decides it.
    pub fn is_single(&self) -> bool {
        self.rest.is_empty()
    }

    /// Whether one span matches the selector's first group (the whole selector when
    /// [`Self::is_single`]).
    pub fn matches_span(&self, span: &Span) -> bool {
        matches(&self.first, span)
    }

    /// The service and operation name a span must have to match the first group, when it
    /// requires them by `=` at its top level (`{service = "a" && name = "b" && ...}`): a
    /// store search can narrow on them.
    pub fn hints(&self) -> (Option<&str>, Option<&str>) {
        fn walk<'e>(e: &'e Expr, out: &mut (Option<&'e str>, Option<&'e str>)) {
            match e {
                Expr::And(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Expr::Cmp(Field::Service, Op::Eq, Value::Str(v)) => out.0 = Some(v),
                Expr::Cmp(Field::Name, Op::Eq, Value::Str(v)) => out.1 = Some(v),
                _ => {}
            }
        }
        let mut out = (None, None);
        walk(&self.first, &mut out);
        out
    }

    /// Indexes into `spans` of the spans selected, in the order given.
    pub fn select(&self, spans: &[Span]) -> Vec<usize> {
        let mut current: Vec<usize> = (0..spans.len())
            .filter(|i| matches(&self.first, &spans[*i]))
            .collect();
        for (rel, expr) in &self.rest {
            let chosen: std::collections::HashSet<[u8; 8]> =
                current.iter().map(|i| spans[*i].span_id).collect();
            let by_id: std::collections::HashMap<[u8; 8], usize> = spans
                .iter()
                .enumerate()
                .map(|(i, s)| (s.span_id, i))
                .collect();
            current = (0..spans.len())
                .filter(|i| matches(expr, &spans[*i]))
                .filter(|i| {
                    let mut parent = spans[*i].parent_span_id;
                    let mut hops = 0;
                    while let Some(p) = parent {
                        if chosen.contains(&p) {
                            return true;
                        }
                        if *rel == Rel::Child || hops > spans.len() {
                            return false;
                        }
                        hops += 1;
                        parent = by_id.get(&p).and_then(|j| spans[*j].parent_span_id);
                    }
                    false
                })
                .collect();
        }
        current
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod single_tests {
    use super::*;

    #[test]
    fn hints_take_top_level_equalities_only() {
        let s = Selector::parse(r#"{ service = "orders" && name = "create" && .x > 1 }"#).unwrap();
        assert_eq!(s.hints(), (Some("orders"), Some("create")));
        assert!(s.is_single());
        let s = Selector::parse(r#"{ service = "a" || name = "b" }"#).unwrap();
        assert_eq!(s.hints(), (None, None));
        let s = Selector::parse(r#"{ service != "a" }"#).unwrap();
        assert_eq!(s.hints(), (None, None));
        let s = Selector::parse(r#"{ service = "a" } > { name = "b" }"#).unwrap();
        assert!(!s.is_single());
        assert_eq!(s.hints(), (Some("a"), None));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use faultline_model::span::Origin;

    use super::*;

    fn span(
        id: u8,
        parent: Option<u8>,
        service: &str,
        name: &str,
        kind: SpanKind,
        ms: u64,
    ) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            name: name.into(),
            kind,
            start_ns: 1_000_000_000,
            end_ns: 1_000_000_000 + ms * 1_000_000,
            status: if name.contains("fail") {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: String::new(),
            attributes: vec![
                (
                    "http.response.status_code".into(),
                    AttrValue::Int(if name.contains("fail") { 503 } else { 200 }),
                ),
                (
                    "http.route".into(),
                    AttrValue::Str(format!("/{name}").into()),
                ),
            ],
            events: vec![],
            links: vec![],
            origin: Arc::new(Origin {
                service: service.into(),
                resource: vec![(
                    "deployment.environment".into(),
                    AttrValue::Str("prod".into()),
                )],
                ..Origin::default()
            }),
        }
    }

    fn trace() -> Vec<Span> {
        vec![
            span(1, None, "frontend", "GET /product", SpanKind::Server, 300),
            span(2, Some(1), "frontend", "GET /stock", SpanKind::Client, 20),
            span(3, Some(2), "inventory", "stock", SpanKind::Server, 15),
            span(4, Some(1), "frontend", "GET /price", SpanKind::Client, 250),
            span(5, Some(4), "pricing", "price-fail", SpanKind::Server, 240),
            span(6, Some(5), "pricing", "db", SpanKind::Client, 5),
        ]
    }

    fn ids(sel: &str) -> Vec<u8> {
        let s = Selector::parse(sel).unwrap_or_else(|e| panic!("{e}"));
        s.select(&trace())
            .iter()
            .map(|i| trace()[*i].span_id[0])
            .collect()
    }

    #[test]
    fn selects_by_fields_attributes_and_relations() {
        assert_eq!(ids("{}"), [1, 2, 3, 4, 5, 6]);
        assert_eq!(ids(r#"{ service = "pricing" }"#), [5, 6]);
        assert_eq!(ids(r#"{ kind = server && duration > 100ms }"#), [1, 5]);
        assert_eq!(ids(r#"{ status = error }"#), [5]);
        assert_eq!(ids(r#"{ .http.response.status_code >= 500 }"#), [5]);
        assert_eq!(
            ids(r#"{ name =~ "GET /*" && !(name = "GET /stock") }"#),
            [1, 4]
        );
        assert_eq!(
            ids(r#"{ resource.deployment.environment = "prod" && service != "frontend" }"#),
            [3, 5, 6]
        );
        assert_eq!(
            ids(r#"{ service = "frontend" } > { kind = server }"#),
            [3, 5]
        );
        assert_eq!(
            ids(r#"{ name = "GET /product" } >> { service = "pricing" }"#),
            [5, 6]
        );
        assert_eq!(
            ids(r#"{ name = "GET /product" } > { } > { kind = server }"#),
            [3, 5]
        );
        assert_eq!(
            ids(r#"{ .missing = "x" || .missing != "x" }"#),
            Vec::<u8>::new()
        );
        assert_eq!(
            ids(r#"{ duration < 16 }"#),
            [3, 6],
            "a bare number is milliseconds"
        );
    }

    #[test]
    fn bad_selectors_say_where_and_what_was_expected() {
        for (text, column, want) in [
            ("service = \"a\"", 1, "expected { to open a group"),
            ("{ service = \"a\" && }", 20, "expected a field"),
            ("{ servce = \"a\" }", 3, "expected a field"),
            ("{ service == \"a\" }", 12, "expected a value"),
            ("{ service = \"a }", 13, "unterminated string"),
            ("{ kind = sever }", 10, "expected a span kind"),
            (
                "{ name = GET }",
                10,
                "expected a value: \"text\" (in quotes)",
            ),
            ("{ } { }", 5, "expected > or >> between groups"),
            ("{ name = \"a\"", 13, "expected }, && or ||"),
        ] {
            let e = Selector::parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} parsed"));
            assert_eq!(
                (e.column, e.message.contains(want)),
                (column, true),
                "{text}: {e}"
            );
        }
        let e = Selector::parse("{ servce = 1 }")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.ends_with("  { servce = 1 }\n    ^"), "{e}");
    }
}
