//! Rendering `services/*.yaml` through minijinja (strict undefined values),
//! and mapping positions in the rendered text back to the file the user
//! wrote, so YAML and validation errors still point at the right line.
//!
//! `${PORT}`-style references are not template syntax and pass through
//! untouched (the runtime expands them). `{{ service }}` and `{{ revision }}`
//! also pass through: gate queries use them, and the engine fills them in.

use super::Diagnostic;
use super::decode::{PosMap, closest};
use super::yaml::{Node, Pos, Value as YamlValue};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Fuel for one file: enough for any sane manifest, stops runaway loops.
const FUEL: u64 = 5_000_000;

/// One minijinja environment for a whole load (compiling settings once).
pub(crate) struct Renderer {
    env: Environment<'static>,
    ctx: Value,
    /// Top-level names under `values`, for "did you mean" hints.
    value_names: Vec<String>,
    environment: Option<String>,
}

impl Renderer {
    pub fn new(values: &Node, environment: Option<&str>) -> Renderer {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Block tags on their own line leave no empty line behind.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL));
        let value_names = match &values.value {
            YamlValue::Map(m) => m.iter().filter_map(|(k, _)| k.key_text()).collect(),
            _ => Vec::new(),
        };
        let ctx = minijinja::context! {
            values => to_value(values),
            environment => environment.unwrap_or(""),
            service => "{{ service }}",
            revision => "{{ revision }}",
        };
        Renderer {
            env,
            ctx,
            value_names,
            environment: environment.map(str::to_string),
        }
    }

    /// Whether `text` has anything for the template engine to do.
    pub fn needs_rendering(text: &str) -> bool {
        text.contains("{{") || text.contains("{%") || text.contains("{#")
    }

    pub fn render(&self, text: &str, file: &Path) -> Result<String, Diagnostic> {
        let name = file.to_string_lossy();
        self.env
            .template_from_named_str(&name, text)
            .and_then(|t| t.render(&self.ctx))
            .map_err(|e| self.diagnostic(&e, text, file))
    }

    fn diagnostic(&self, e: &minijinja::Error, text: &str, file: &Path) -> Diagnostic {
        let (line, column, snippet) = match e.range().filter(|r| r.end <= text.len()) {
            Some(r) => {
                // minijinja's span of an attribute lookup can start at the
                // dot (`.b.c`): widen it to the whole `values.b.c`.
                let mut start = r.start;
                while start > 0
                    && text[..start]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                {
                    start -= text[..start].chars().next_back().map_or(1, char::len_utf8);
                }
                let (l, c) = line_col(text, start);
                (
                    l,
                    c,
                    text.get(start..r.end).unwrap_or("").trim().to_string(),
                )
            }
            None => (e.line().unwrap_or(0), 0, String::new()),
        };
        let (message, hint) = match e.kind() {
            minijinja::ErrorKind::UndefinedError => {
                let what = if snippet.is_empty() {
                    "a value".to_string()
                } else {
                    format!("`{snippet}`")
                };
                let env = match &self.environment {
                    Some(n) => format!(" (environment {n})"),
                    None => String::new(),
                };
                let first = snippet
                    .strip_prefix("values.")
                    .and_then(|s| s.split('.').next())
                    .unwrap_or("");
                let names: Vec<&str> = self.value_names.iter().map(String::as_str).collect();
                let hint = match closest(first, &names) {
                    Some(c) if c != first => format!("did you mean `values.{c}`?"),
                    _ if snippet.starts_with("values.") => {
                        "define it under `values:` in floyd.yaml, or in the environment's values"
                            .into()
                    }
                    _ => "templates see `values`, `environment`, `service` and `revision`".into(),
                };
                (format!("template: {what} is undefined{env}"), Some(hint))
            }
            _ => {
                let detail = e
                    .detail()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.kind().to_string());
                (format!("template: {detail}"), None)
            }
        };
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            path: String::new(),
            message,
            hint,
        }
    }
}

/// 1-based line and character column of byte offset `at`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn to_value(n: &Node) -> Value {
    match &n.value {
        YamlValue::Null => Value::from(()),
        YamlValue::Bool(b) => Value::from(*b),
        YamlValue::Int(i) => Value::from(*i),
        YamlValue::Float(f) => Value::from(*f),
        YamlValue::Str(s) => Value::from(s.as_str()),
        YamlValue::Seq(items) => Value::from(items.iter().map(to_value).collect::<Vec<_>>()),
        YamlValue::Map(entries) => Value::from(
            entries
                .iter()
                .filter_map(|(k, v)| Some((k.key_text()?, to_value(v))))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// Maps positions in rendered text back to the template source.
///
/// Lines are aligned first: when the template has no block tags and
/// rendering kept the line count, line N is line N; otherwise each rendered
/// line is matched to the source line it most likely came from (exact text,
/// or same text around a `{{ }}`), searching forward from the previous match
/// and then backward (loop bodies repeat). Within a line, text before and
/// after the changed part maps exactly; a position inside the changed part
/// maps to where the `{{ }}` expression starts.
pub(crate) struct SourceMap {
    /// For each rendered line: (source line index, rendered line, source line).
    lines: Vec<(usize, String, String)>,
}

impl SourceMap {
    pub fn new(source: &str, rendered: &str) -> SourceMap {
        let src: Vec<&str> = source.split('\n').collect();
        let out: Vec<&str> = rendered.split('\n').collect();
        let simple = !source.contains("{%") && !source.contains("{#") && src.len() == out.len();
        let mut lines = Vec::with_capacity(out.len());
        let mut cursor = 0usize;
        for (i, o) in out.iter().enumerate() {
            let s = if simple {
                i
            } else {
                let k =
                    find_line(&src, o, cursor).unwrap_or(cursor.min(src.len().saturating_sub(1)));
                cursor = k + 1;
                k
            };
            lines.push((
                s,
                o.to_string(),
                src.get(s).copied().unwrap_or("").to_string(),
            ));
        }
        SourceMap { lines }
    }
}

fn similar(src: &str, out: &str) -> bool {
    if src == out {
        return true;
    }
    let Some(open) = src.find("{{") else {
        return false;
    };
    let prefix = &src[..open];
    let close = src.rfind("}}").map_or(src.len(), |c| c + 2);
    let suffix = &src[close.max(open)..];
    out.starts_with(prefix) && out.ends_with(suffix) && out.len() >= prefix.len() + suffix.len()
}

fn find_line(src: &[&str], out: &str, from: usize) -> Option<usize> {
    let from = from.min(src.len());
    (from..src.len())
        .find(|&k| similar(src[k], out))
        .or_else(|| (0..from).rev().find(|&k| similar(src[k], out)))
}

impl PosMap for SourceMap {
    fn map(&self, pos: Pos) -> Pos {
        let Some((s, out, src)) = pos.line.checked_sub(1).and_then(|i| self.lines.get(i)) else {
            return pos;
        };
        let line = s + 1;
        if out == src {
            return Pos { line, col: pos.col };
        }
        let o: Vec<char> = out.chars().collect();
        let sc: Vec<char> = src.chars().collect();
        let prefix = o.iter().zip(&sc).take_while(|(a, b)| a == b).count();
        let max_suffix = o.len().min(sc.len()) - prefix;
        let suffix = o
            .iter()
            .rev()
            .zip(sc.iter().rev())
            .take(max_suffix)
            .take_while(|(a, b)| a == b)
            .count();
        let c = pos.col.saturating_sub(1);
        let col = if c < prefix {
            c
        } else if c >= o.len().saturating_sub(suffix) {
            sc.len() - (o.len() - c)
        } else {
            prefix
        };
        Pos { line, col: col + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::yaml::parse_documents;

    fn renderer(values: &str) -> Renderer {
        Renderer::new(&parse_documents(values).unwrap().remove(0), Some("staging"))
    }

    #[test]
    fn renders_values_and_keeps_runtime_references() {
        let r = renderer("v: '1.2'\nn: 3\nm: { a: x }");
        let out = r
            .render(
                "a: {{ values.v }}\nb: {{ values.n }}\nc: ${PORT} {{ values.m.a }}\nq: {{ service }}/{{ revision }} {{ environment }}\n",
                Path::new("f.yaml"),
            )
            .unwrap();
        assert_eq!(
            out,
            "a: 1.2\nb: 3\nc: ${PORT} x\nq: {{ service }}/{{ revision }} staging\n"
        );
    }

    #[test]
    fn undefined_values_point_at_the_expression() {
        let r = renderer("replicas: 3");
        let d = r
            .render("a: 1\nb: {{ values.replica }}\n", Path::new("f.yaml"))
            .unwrap_err();
        assert_eq!(
            d.to_string(),
            "f.yaml:2:7: template: `values.replica` is undefined (environment staging) (hint: did you mean `values.replicas`?)"
        );
        let d = r
            .render("a: {{ values.m.x }}", Path::new("f.yaml"))
            .unwrap_err();
        assert_eq!((d.line, d.column), (1, 7), "{d}");
        let d = r
            .render("a:\n  b: {% if %}", Path::new("f.yaml"))
            .unwrap_err();
        assert_eq!(d.line, 2, "{d}");
        assert!(d.message.starts_with("template: "), "{d}");
    }

    #[test]
    fn runaway_templates_stop() {
        let r = renderer("a: 1");
        let d = r
            .render(
                "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
                Path::new("f.yaml"),
            )
            .unwrap_err();
        assert!(d.message.contains("fuel"), "{d}");
    }

    #[test]
    fn positions_map_back_through_expressions_and_blocks() {
        let src = "a: {{ values.x }}, tail\n";
        let map = SourceMap::new(src, "a: 7, tail\n");
        // Before, inside and after the rendered expression.
        assert_eq!(map.map(Pos { line: 1, col: 1 }), Pos { line: 1, col: 1 });
        assert_eq!(map.map(Pos { line: 1, col: 4 }), Pos { line: 1, col: 4 });
        assert_eq!(map.map(Pos { line: 1, col: 7 }), Pos { line: 1, col: 20 });

        let src = "a: 1\n{% if true %}\nb: {{ values.x }}\n{% endif %}\nc: 2\n";
        let out = "a: 1\nb: 7\nc: 2\n";
        let map = SourceMap::new(src, out);
        assert_eq!(map.map(Pos { line: 2, col: 4 }), Pos { line: 3, col: 4 });
        assert_eq!(map.map(Pos { line: 3, col: 1 }), Pos { line: 5, col: 1 });
    }
}
