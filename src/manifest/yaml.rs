//! YAML to a positioned node tree.
//!
//! The parser of `serde-saphyr` (`granit-parser`, re-exported by it) turns
//! the text into events with positions (and line/column for syntax errors).
//! Instead of deserialising straight into typed structs, which stops at the
//! first error, every document becomes a [`Node`] tree where each value keeps
//! its position. The decoder then walks the tree and collects every problem
//! at once, each with its own line, column and field path.
//!
//! Building the tree from events directly (rather than through serde with
//! `Spanned<T>` per node) roughly halved the 10,000-service load time (see
//! docs/benchmarks.md); the YAML handling is the same parser's.

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span, Tag};
use std::collections::HashMap;

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

/// A YAML syntax (or structure) error with its position (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Nesting deeper than this is refused (protects the stack).
const MAX_DEPTH: usize = 64;
/// Nodes per file, counting alias expansions (stops "billion laughs").
const MAX_NODES: usize = 250_000;
/// Scalar text per file, counting every alias expansion in full: one long
/// anchored string aliased many times is few nodes but many bytes.
pub(crate) const MAX_EXPANDED_BYTES: usize = 8 * 1024 * 1024;

enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        /// `<<: *defaults` sources, applied at the end (explicit keys win).
        merges: Vec<Node>,
        pos: Pos,
        anchor: usize,
    },
}

/// Builds [`Node`] trees from parser events: anchors and aliases, merge
/// keys, duplicate-key detection, YAML 1.2 core-schema scalars.
struct Builder {
    stack: Vec<Frame>,
    /// Anchored nodes with their node count and scalar bytes.
    anchors: HashMap<usize, (Node, usize, usize)>,
    docs: Vec<Node>,
    nodes: usize,
    bytes: usize,
}

fn err(pos: Pos, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        pos,
        message: message.into(),
    }
}

/// Nodes and scalar bytes in `n`.
fn size(n: &Node) -> (usize, usize) {
    let add = |(a, b): (usize, usize), (c, d): (usize, usize)| (a + c, b + d);
    match &n.value {
        Value::Seq(items) => items.iter().map(size).fold((1, 0), add),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| add(size(k), size(v)))
            .fold((1, 0), add),
        Value::Str(s) => (1, s.len()),
        _ => (1, 0),
    }
}

impl Builder {
    /// Counts `nodes` more nodes and `bytes` more scalar text, refusing the
    /// file (at `pos`) before either budget is crossed.
    fn count(&mut self, nodes: usize, bytes: usize, pos: Pos) -> Result<(), SyntaxError> {
        self.nodes += nodes;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.nodes > MAX_NODES {
            return Err(err(
                pos,
                format!(
                    "more than {MAX_NODES} YAML nodes (aliases included); use fewer aliases or split the file"
                ),
            ));
        }
        if self.bytes > MAX_EXPANDED_BYTES {
            return Err(err(
                pos,
                format!(
                    "YAML expands to more than {} MiB ({MAX_EXPANDED_BYTES} bytes) of text, counting each alias in full; use fewer aliases of long values or split the file",
                    MAX_EXPANDED_BYTES / (1024 * 1024)
                ),
            ));
        }
        Ok(())
    }

    /// A finished node goes into its parent (or becomes a document).
    fn add(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            let (n, b) = size(&node);
            self.anchors.insert(anchor, (node.clone(), n, b));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                key,
                merges,
                ..
            }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    if k.value == Value::Str("<<".into()) {
                        merges.push(node);
                    } else if entries.iter().any(|(e, _)| e.value == k.value) {
                        let shown = k.key_text().unwrap_or_else(|| k.value.kind().to_string());
                        return Err(err(k.pos, format!("duplicate mapping key: {shown}")));
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
        Ok(())
    }

    fn event(&mut self, ev: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let pos = Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, text.len(), pos)?;
                let value = scalar(&text, style, tag.as_deref(), pos)?;
                self.add(Node { value, pos }, anchor)
            }
            Event::Alias(id) => {
                let Some(&(_, n, b)) = self.anchors.get(&id) else {
                    return Err(err(pos, "alias to an unknown anchor"));
                };
                // Counted before the copy is made.
                self.count(n, b, pos)?;
                let node = self.anchors[&id].0.clone();
                // Positions inside stay the anchor's; the alias itself points here.
                self.add(Node { pos, ..node }, 0)
            }
            Event::UnresolvedAlias(name) => Err(err(pos, format!("unknown anchor {name:?}"))),
            Event::SequenceStart(_, anchor, tag) => {
                collection_tag(tag.as_deref(), "seq", pos)?;
                self.open(
                    Frame::Seq {
                        items: Vec::new(),
                        pos,
                        anchor,
                    },
                    pos,
                )
            }
            Event::MappingStart(_, anchor, tag) => {
                collection_tag(tag.as_deref(), "map", pos)?;
                self.open(
                    Frame::Map {
                        entries: Vec::new(),
                        key: None,
                        merges: Vec::new(),
                        pos,
                        anchor,
                    },
                    pos,
                )
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { items, pos, anchor }) => (
                        Node {
                            value: Value::Seq(items),
                            pos,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        mut entries,
                        merges,
                        pos,
                        anchor,
                        ..
                    }) => {
                        for m in merges {
                            merge_into(&mut entries, m)?;
                        }
                        (
                            Node {
                                value: Value::Map(entries),
                                pos,
                            },
                            anchor,
                        )
                    }
                    None => return Err(err(pos, "unbalanced end of a collection")),
                };
                self.add(node, anchor)
            }
            Event::DocumentStart(..) => {
                // Anchors are per document.
                self.anchors.clear();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(err(pos, too_deep()));
        }
        self.count(1, 0, pos)?;
        self.stack.push(frame);
        Ok(())
    }
}

fn too_deep() -> String {
    format!("nesting deeper than {MAX_DEPTH} levels; flatten the structure")
}

/// `<<: *a` or `<<: [*a, *b]`: keys not already present are added, earlier
/// sources first.
fn merge_into(entries: &mut Vec<(Node, Node)>, source: Node) -> Result<(), SyntaxError> {
    let at = source.pos;
    let sources = match source.value {
        Value::Map(m) => vec![m],
        Value::Seq(items) => {
            let mut maps = Vec::new();
            for i in items {
                match i.value {
                    Value::Map(m) => maps.push(m),
                    _ => return Err(err(at, "a merge (<<) takes mappings only")),
                }
            }
            maps
        }
        _ => {
            return Err(err(
                at,
                "a merge (<<) takes a mapping or a list of mappings",
            ));
        }
    };
    for m in sources {
        for (k, v) in m {
            if !entries.iter().any(|(e, _)| e.value == k.value) {
                entries.push((k, v));
            }
        }
    }
    Ok(())
}

fn core_tag(tag: Option<&Tag>) -> Option<&str> {
    tag.and_then(|t| t.core_suffix())
}

fn collection_tag(tag: Option<&Tag>, want: &str, pos: Pos) -> Result<(), SyntaxError> {
    match tag {
        None => Ok(()),
        Some(t) if core_tag(Some(t)) == Some(want) => Ok(()),
        Some(t) => Err(err(pos, format!("unsupported tag {}", t.original()))),
    }
}

/// YAML 1.2 core schema for plain scalars; quoted and block scalars are strings.
/// Deliberately not YAML 1.1: `yes`/`no`/`on`/`off` stay strings (the
/// "Norway problem"), and so does `010` (not silently 10 or 8).
fn scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&Tag>,
    pos: Pos,
) -> Result<Value, SyntaxError> {
    if let Some(t) = tag {
        let Some(core) = core_tag(Some(t)) else {
            return Err(err(pos, format!("unsupported tag {}", t.original())));
        };
        let plain = plain_scalar(text);
        return match (core, plain) {
            ("str", _) => Ok(Value::Str(text.to_string())),
            ("null", v @ Value::Null)
            | ("bool", v @ Value::Bool(_))
            | ("int", v @ Value::Int(_))
            | ("float", v @ Value::Float(_)) => Ok(v),
            ("float", Value::Int(i)) => Ok(Value::Float(i as f64)),
            (other, _) => Err(err(pos, format!("{text:?} is not a valid !!{other}"))),
        };
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::Str(text.to_string()));
    }
    Ok(plain_scalar(text))
}

fn plain_scalar(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let bytes = text.as_bytes();
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // `010` would be 10 in YAML 1.2 and 8 in YAML 1.1: keep what was written.
        if digits.len() > 1 && digits.starts_with('0') {
            return Value::Str(text.to_string());
        }
        return match text.parse::<i128>() {
            Ok(i) => Value::Int(i),
            Err(_) => text
                .parse::<f64>()
                .map_or(Value::Str(text.to_string()), Value::Float),
        };
    }
    if let Some(h) = text.strip_prefix("0x")
        && !h.is_empty()
        && let Ok(i) = i128::from_str_radix(h, 16)
    {
        return Value::Int(i);
    }
    if let Some(o) = text.strip_prefix("0o")
        && !o.is_empty()
        && let Ok(i) = i128::from_str_radix(o, 8)
    {
        return Value::Int(i);
    }
    // [-+]? ( . digits | digits [ . digits* ] ) ( [eE] [-+]? digits )?
    let looks_float = {
        let mut i = usize::from(matches!(bytes.first(), Some(b'-' | b'+')));
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = i - int_start;
        let mut frac_digits = 0;
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
                frac_digits += 1;
            }
        }
        let mut ok = int_digits + frac_digits > 0;
        if ok && i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            i += 1;
            if i < bytes.len() && (bytes[i] == b'-' || bytes[i] == b'+') {
                i += 1;
            }
            let exp_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            ok = i > exp_start;
        }
        ok && i == bytes.len()
    };
    if looks_float && let Ok(f) = text.parse::<f64>() {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

/// Parses every document of `text`. Empty documents (`---` with nothing
/// after it) are dropped.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        docs: Vec::new(),
        nodes: 0,
        bytes: 0,
    };
    for item in Parser::new_from_str(text) {
        match item {
            Ok((ev, span)) => b.event(ev, span)?,
            Err(e) => {
                let m = e.marker();
                let pos = Pos {
                    line: m.line(),
                    col: m.col() + 1,
                };
                // The parser's own guard against deep flow collections
                // (it scans ahead of the events): the same limit for users.
                if e.info().contains("recursion limit") {
                    return Err(err(pos, too_deep()));
                }
                return Err(err(pos, e.info()));
            }
        }
    }
    Ok(b.docs
        .into_iter()
        .filter(|d| d.value != Value::Null)
        .collect())
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
    fn anchors_aliases_merge_keys_and_tags() {
        let d = parse_documents(
            "base: &b { a: 1, b: 2 }\nuse: { <<: *b, b: 3 }\nlist: [*b]\ns: !!str 10\nf: !!float 1\n",
        )
        .unwrap()
        .remove(0);
        let Value::Map(m) = &d.value else { panic!() };
        let get = |k: &str| {
            m.iter()
                .find(|(key, _)| key.as_str() == Some(k))
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let Value::Map(used) = get("use").value else {
            panic!()
        };
        let pairs: Vec<(String, Value)> = used
            .iter()
            .map(|(k, v)| (k.key_text().unwrap(), v.value.clone()))
            .collect();
        assert_eq!(
            pairs,
            vec![("b".into(), Value::Int(3)), ("a".into(), Value::Int(1))]
        );
        let Value::Seq(list) = get("list").value else {
            panic!()
        };
        assert_eq!(
            list[0].pos,
            Pos { line: 3, col: 8 },
            "an alias is where it is used"
        );
        assert_eq!(get("s").value, Value::Str("10".into()));
        assert_eq!(get("f").value, Value::Float(1.0));
    }

    #[test]
    fn hostile_yaml_is_refused_with_a_position() {
        for (text, want) in [
            ("a: *nope\n", "1:4: "),
            ("a: !custom x\n", "1:12: unsupported tag !custom"),
            ("a: !!int x\n", "1:10: \"x\" is not a valid !!int"),
            ("a: {b: 1, b: 2}\n", "1:11: duplicate mapping key: b"),
            (
                "a: &x [1]\nb: { <<: *x }\n",
                "2:10: a merge (<<) takes mappings only",
            ),
        ] {
            let e = parse_documents(text).unwrap_err();
            let got = format!("{}:{}: {}", e.pos.line, e.pos.col, e.message);
            assert!(got.starts_with(want), "{text:?}: {got}");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(
            parse_documents(&deep)
                .unwrap_err()
                .message
                .contains("nesting")
        );
        // Billion laughs: each level doubles; stopped by the node budget.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            bomb += &format!("a{i}: &a{i} [{}]\n", [prev.as_str(); 10].join(", "));
        }
        assert!(
            parse_documents(&bomb)
                .unwrap_err()
                .message
                .contains("nodes")
        );
    }

    /// Issue #14: one long anchored string aliased many times is few nodes
    /// but tens of GB once expanded; refused at the alias that crosses the
    /// byte budget, before any copy is made.
    #[test]
    fn a_long_string_aliased_many_times_is_refused_by_bytes() {
        let mut text = format!("a: &s {}\nb: [", "x".repeat(700_000));
        text += &"*s,".repeat(99_000);
        text += "*s]\n";
        assert!(text.len() < 1024 * 1024, "fits the file limit");
        let e = parse_documents(&text).unwrap_err();
        assert!(e.message.contains("expands to more than 8 MiB"), "{e:?}");
        // The anchor and 11 aliases make 8.4 MB: the 11th alias, on line 2.
        assert_eq!(
            e.pos,
            Pos {
                line: 2,
                col: 5 + 3 * 10
            }
        );
        // A few aliases of a short value are fine.
        let ok = parse_documents("a: &s hello\nb: [*s, *s, *s]\n").unwrap();
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn plain_scalars_table() {
        for (text, want) in [
            ("0", Value::Int(0)),
            ("-12", Value::Int(-12)),
            ("+7", Value::Int(7)),
            ("0x1f", Value::Int(31)),
            ("0o17", Value::Int(15)),
            ("007", Value::Str("007".into())),
            ("1.5", Value::Float(1.5)),
            (".5", Value::Float(0.5)),
            ("1e3", Value::Float(1000.0)),
            ("1.2.3", Value::Str("1.2.3".into())),
            ("1e", Value::Str("1e".into())),
            ("NULL", Value::Null),
            ("on", Value::Str("on".into())),
            ("True", Value::Bool(true)),
            ("30s", Value::Str("30s".into())),
            ("-", Value::Str("-".into())),
        ] {
            assert_eq!(plain_scalar(text), want, "{text}");
        }
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
