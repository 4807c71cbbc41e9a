//! YAML to a positioned node tree.
//!
//! `serde-saphyr` parses the text (reporting line/column for syntax errors);
//! instead of deserialising straight into typed structs, which stops at the
//! first error, every document becomes a [`Node`] tree where each value keeps
//! its `Spanned` position. The decoder then walks the tree and collects every
//! problem at once, each with its own line, column and field path.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// A 1-based position in the text that was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

/// One YAML value with the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order (duplicate keys are rejected by the parser).
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What a user would call this kind of value, for "expected X, found Y".
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a key of a map, if it is a scalar usable as a name.
    pub fn key_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Deep merge: maps merge key by key (recursively), anything else in
    /// `over` replaces `self`. Used for environment values over base values.
    pub fn merge(&mut self, over: &Node) {
        match (&mut self.value, &over.value) {
            (Value::Map(base), Value::Map(top)) => {
                for (k, v) in top {
                    match base.iter_mut().find(|(bk, _)| bk.value == k.value) {
                        Some((_, bv)) => bv.merge(v),
                        None => base.push((k.clone(), v.clone())),
                    }
                }
            }
            _ => *self = over.clone(),
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Int(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Int(n.into()))
    }
    fn visit_i128<E>(self, n: i128) -> Result<Value, E> {
        Ok(Value::Int(n))
    }
    fn visit_u128<E: serde::de::Error>(self, n: u128) -> Result<Value, E> {
        i128::try_from(n)
            .map(Value::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Value::Float(n))
    }
    fn visit_char<E>(self, c: char) -> Result<Value, E> {
        Ok(Value::Str(c.to_string()))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s))
    }
    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Value, E> {
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| E::custom("binary value is not UTF-8 text"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

/// The value alone; [`Node`] wraps it in `Spanned` to get its position.
struct Bare(Value);

impl<'de> Deserialize<'de> for Bare {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bare, D::Error> {
        d.deserialize_any(ValueVisitor).map(Bare)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        let s = Spanned::<Bare>::deserialize(d)?;
        Ok(Node {
            value: s.value.0,
            pos: Pos {
                line: s.referenced.line() as usize,
                col: s.referenced.column() as usize,
            },
        })
    }
}

/// A YAML syntax (or structure) error with its position (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

fn options() -> serde_saphyr::Options {
    // YAML 1.2 scalars: `yes`/`no`/`on`/`off` stay strings (the "Norway
    // problem"), `010` stays a string instead of silently becoming 10.
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o.leading_zero_numbers_as_strings = true;
    o.emit_comments = false;
    o
}

/// Parses every document of `text`. Empty documents (`---` with nothing
/// after it) are dropped.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    match serde_saphyr::from_multiple_with_options::<Node>(text, options()) {
        Ok(docs) => Ok(docs
            .into_iter()
            .filter(|d| d.value != Value::Null)
            .collect()),
        Err(e) => Err(syntax_error(&e)),
    }
}

fn syntax_error(e: &serde_saphyr::Error) -> SyntaxError {
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line() as usize,
            col: l.column() as usize,
        })
        .unwrap_or_default();
    let mut message = e.without_snippet().to_string();
    // The library appends " at line L, column C"; the diagnostic already says where.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    let message = message
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
        .trim()
        .to_string();
    SyntaxError { pos, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_yaml_1_2() {
        let docs = parse_documents("a: [1, '2', 2.5, true, ~, 25%, yes, 010, 30s]\n").unwrap();
        let Value::Map(m) = &docs[0].value else {
            panic!("not a map")
        };
        let Value::Seq(items) = &m[0].1.value else {
            panic!("not a seq")
        };
        let kinds: Vec<_> = items.iter().map(|n| n.value.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                Value::Int(1),
                Value::Str("2".into()),
                Value::Float(2.5),
                Value::Bool(true),
                Value::Null,
                Value::Str("25%".into()),
                Value::Str("yes".into()),
                Value::Str("010".into()),
                Value::Str("30s".into()),
            ]
        );
        assert_eq!(items[1].pos, Pos { line: 1, col: 8 });
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 1 });
        assert!(e.message.contains("duplicate"), "{}", e.message);
        assert!(!e.message.contains("at line"), "{}", e.message);
    }

    #[test]
    fn merge_is_deep() {
        let mut a = parse_documents("x: {a: 1, b: {c: 2, d: 3}}")
            .unwrap()
            .remove(0);
        let b = parse_documents("x: {b: {d: 4}, e: 5}").unwrap().remove(0);
        a.merge(&b);
        let c = parse_documents("x: {a: 1, b: {c: 2, d: 4}, e: 5}")
            .unwrap()
            .remove(0);
        fn strip(n: &Node) -> String {
            match &n.value {
                Value::Map(m) => m
                    .iter()
                    .map(|(k, v)| format!("{}={}", strip(k), strip(v)))
                    .collect::<Vec<_>>()
                    .join(","),
                other => format!("{other:?}"),
            }
        }
        assert_eq!(strip(&a), strip(&c));
    }
}
