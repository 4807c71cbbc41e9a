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
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fuel for one file: enough for any sane manifest, stops runaway loops.
const FUEL: u64 = 5_000_000;
/// Rendered text one file may produce: a manifest is hand-sized YAML, and
/// the parser after rendering should never see more than this.
pub const MAX_RENDERED_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Rendered text all the files of one render (one commit, one environment)
/// may produce together.
pub const MAX_RENDERED_TOTAL_BYTES: usize = 32 * 1024 * 1024;

/// One minijinja environment for a whole load (compiling settings once).
pub(crate) struct Renderer {
    env: Environment<'static>,
    ctx: Value,
    /// Top-level names under `values`, for "did you mean" hints.
    value_names: Vec<String>,
    environment: Option<String>,
    /// Bytes the files rendered so far (by any worker) may still produce.
    budget: AtomicUsize,
}

/// Which output cap a render ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    File,
    Total,
}

/// The writer a template renders into: stops (with an I/O error minijinja
/// passes back) at the first write that would cross the per-file cap or
/// the shared per-render budget, before copying it.
struct CappedOutput<'a> {
    buf: Vec<u8>,
    budget: &'a AtomicUsize,
    hit: Option<Cap>,
}

impl std::io::Write for CappedOutput<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        if self.buf.len() + n > MAX_RENDERED_FILE_BYTES {
            self.hit = Some(Cap::File);
            return Err(std::io::Error::other("rendered output too large"));
        }
        let took = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            });
        if took.is_err() {
            self.hit = Some(Cap::Total);
            return Err(std::io::Error::other("rendered output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
            budget: AtomicUsize::new(MAX_RENDERED_TOTAL_BYTES),
        }
    }

    /// Whether `text` has anything for the template engine to do.
    pub fn needs_rendering(text: &str) -> bool {
        text.contains("{{") || text.contains("{%") || text.contains("{#")
    }

    pub fn render(&self, text: &str, file: &Path) -> Result<String, Diagnostic> {
        if let Some(at) = find_string_repetition(text) {
            let (line, column) = line_col(text, at);
            return Err(Diagnostic {
                file: file.to_path_buf(),
                line,
                column,
                path: String::new(),
                message: "template: `*` next to a string literal or a bracketed expression is refused (string repetition can build gigabytes of text before anything renders)".into(),
                hint: Some("multiply plain values and numbers only, e.g. `{{ values.replicas * 2 }}`".into()),
            });
        }
        let name = file.to_string_lossy();
        let mut out = CappedOutput {
            buf: Vec::new(),
            budget: &self.budget,
            hit: None,
        };
        let result = self
            .env
            .template_from_named_str(&name, text)
            .and_then(|t| t.render_captured_to(&self.ctx, &mut out).map(drop));
        if let Some(cap) = out.hit {
            // minijinja knows the line of the expression whose output crossed it.
            let line = result.as_ref().err().and_then(minijinja::Error::line);
            return Err(cap_diagnostic(cap, line, file, out.buf.len()));
        }
        result.map_err(|e| self.diagnostic(&e, text, file))?;
        String::from_utf8(out.buf).map_err(|_| Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            path: String::new(),
            message: "template: rendered text is not UTF-8".into(),
            hint: None,
        })
    }

    fn diagnostic(&self, e: &minijinja::Error, text: &str, file: &Path) -> Diagnostic {
        let (line, column, snippet) = match e
            .range()
            .filter(|r| r.end <= text.len() && text.is_char_boundary(r.start))
        {
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

/// The error for a render stopped by an output cap: which cap, at which
/// source line (when minijinja says), and what to do.
fn cap_diagnostic(cap: Cap, line: Option<usize>, file: &Path, written: usize) -> Diagnostic {
    let message = match cap {
        Cap::File => format!(
            "template: rendered output exceeds {} MiB ({MAX_RENDERED_FILE_BYTES} bytes) for this file",
            MAX_RENDERED_FILE_BYTES / (1024 * 1024)
        ),
        Cap::Total => format!(
            "template: the manifests of this commit render to more than {} MiB ({MAX_RENDERED_TOTAL_BYTES} bytes) in all; this file crossed the limit after {written} bytes",
            MAX_RENDERED_TOTAL_BYTES / (1024 * 1024)
        ),
    };
    Diagnostic {
        file: file.to_path_buf(),
        line: line.unwrap_or(0),
        column: usize::from(line.is_some()),
        path: String::new(),
        message,
        hint: Some(
            "a manifest renders to hand-sized YAML: check loops, `range(...)` and string repetition (`\"x\" * n`) in the template".into(),
        ),
    }
}

/// Where a `*` (not `**`) inside a `{{ }}` or `{% %}` tag has a string
/// literal, a parenthesis or a bracket on either side.
///
/// minijinja folds constant expressions while compiling, so
/// `{{ "x" * 100000000 }}` costs 100 MB per occurrence before a byte is
/// rendered, out of reach of the output caps: 100 such lines took 9.4 GiB.
/// Repetition of a constant needs a literal or a bracketed expression next
/// to the `*`; a plain `values.a * 2` does not, and stays allowed (a string
/// repeated from values is built at render time, one at a time, and its
/// output is capped).
fn find_string_repetition(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(open) = text[i..].find(['{']).map(|k| i + k) {
        let close = match bytes.get(open + 1) {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            _ => {
                i = open + 1;
                continue;
            }
        };
        let start = open + 2;
        let end = text[start..].find(close).map_or(text.len(), |k| start + k);
        let mut k = start;
        // The last significant character before k, outside strings.
        let mut prev: u8 = b' ';
        while k < end {
            let c = bytes[k];
            match c {
                b'"' | b'\'' => {
                    // Skip the literal; its closing quote becomes `prev`.
                    k += 1;
                    while k < end && bytes[k] != c {
                        k += if bytes[k] == b'\\' { 2 } else { 1 };
                    }
                    prev = c;
                }
                b'*' if bytes.get(k + 1) == Some(&b'*') => {
                    prev = b'*';
                    k += 1;
                }
                b'*' => {
                    let next = text[k + 1..end].trim_start().bytes().next().unwrap_or(b' ');
                    if matches!(prev, b'"' | b'\'' | b')' | b']')
                        || matches!(next, b'"' | b'\'' | b'(' | b'[')
                    {
                        return Some(k);
                    }
                    prev = c;
                }
                c if c.is_ascii_whitespace() => {}
                c => prev = c,
            }
            k += 1;
        }
        i = end;
    }
    None
}

/// 1-based line and character column of byte offset `at`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
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

/// How far from the previous match a rendered line is looked for: bounds the
/// work on huge loop outputs (a miss falls back to the previous line).
const SEARCH_WINDOW: usize = 256;

fn find_line(src: &[&str], out: &str, from: usize) -> Option<usize> {
    let from = from.min(src.len());
    (from..src.len().min(from + SEARCH_WINDOW))
        .find(|&k| similar(src[k], out))
        .or_else(|| {
            (from.saturating_sub(SEARCH_WINDOW)..from)
                .rev()
                .find(|&k| similar(src[k], out))
        })
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
        } else if c >= o.len() {
            // Past the end of the line (an error at end of input).
            sc.len() + (c - o.len())
        } else if c >= o.len() - suffix {
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

    /// Issue #14: constant string repetition is refused before compiling
    /// (minijinja folds it at compile time, out of reach of output caps).
    #[test]
    fn constant_string_repetition_is_refused_before_compiling() {
        let r = renderer("a: 1\nn: 3\ns: ab");
        for (text, at) in [
            ("a: 1\nb: {{ \"x\" * 100000000 }}\n", (2, 11)),
            ("b: {{ 100000000*'x' }}\n", (1, 16)),
            ("b: {{ (\"x\" ~ \"y\") * (10000 * 10000) }}\n", (1, 19)),
            ("{% set s = ['x'] * 100000000 %}\n", (1, 18)),
        ] {
            let d = r.render(text, Path::new("services/bomb.yaml")).unwrap_err();
            assert_eq!((d.line, d.column), at, "{text}: {d}");
            assert!(d.message.contains("string repetition"), "{d}");
        }
        // Numbers from values, powers and `*` in plain text stay allowed.
        let out = r
            .render(
                "a: {{ values.n * 2 }} {{ 2 ** 3 }} {{ values.s * values.n }} \"*\" * 3\n",
                Path::new("f.yaml"),
            )
            .unwrap();
        assert_eq!(out, "a: 6 8 ababab \"*\" * 3\n");
    }

    /// Issue #14: output is capped per file and per render (all files).
    #[test]
    fn template_bombs_stop_at_the_output_caps() {
        let r = renderer("a: 1\nx: x\nbig: 100000000");
        let d = r
            .render(
                "a: 1\nb: {{ values.x * values.big }}\n",
                Path::new("services/bomb.yaml"),
            )
            .unwrap_err();
        let shown = d.to_string();
        assert!(shown.starts_with("services/bomb.yaml:"), "{shown}");
        assert!(shown.contains("exceeds 4 MiB"), "{shown}");
        assert!(shown.contains("string repetition"), "{shown}");

        // Each file under its own cap, together over the render's.
        let r = renderer("x: x\nn: 3000000");
        let three_mib = "a: {{ values.x * values.n }}\n";
        let mut failed = None;
        for i in 0..12 {
            let f = format!("services/f{i}.yaml");
            if let Err(d) = r.render(three_mib, Path::new(&f)) {
                failed = Some((i, d));
                break;
            }
        }
        let (i, d) = failed.expect("the render budget stops it");
        assert_eq!(i, 11, "32 MiB / 3 MB: the 12th file crosses");
        assert!(d.message.contains("in all"), "{d}");
        assert_eq!(d.file, Path::new("services/f11.yaml"));
    }

    #[test]
    fn positions_map_back_through_expressions_and_blocks() {
        let src = "a: {{ values.x }}, tail\n";
        let map = SourceMap::new(src, "a: 7, tail\n");
        // Before, inside and after the rendered expression.
        assert_eq!(map.map(Pos { line: 1, col: 1 }), Pos { line: 1, col: 1 });
        assert_eq!(map.map(Pos { line: 1, col: 4 }), Pos { line: 1, col: 4 });
        assert_eq!(map.map(Pos { line: 1, col: 7 }), Pos { line: 1, col: 20 });

        assert_eq!(map.map(Pos { line: 1, col: 30 }), Pos { line: 1, col: 43 });

        let src = "a: 1\n{% if true %}\nb: {{ values.x }}\n{% endif %}\nc: 2\n";
        let out = "a: 1\nb: 7\nc: 2\n";
        let map = SourceMap::new(src, out);
        assert_eq!(map.map(Pos { line: 2, col: 4 }), Pos { line: 3, col: 4 });
        assert_eq!(map.map(Pos { line: 3, col: 1 }), Pos { line: 5, col: 1 });

        // Loop bodies: every repetition maps to the body's line.
        let src = "items:\n{% for i in [1, 2, 3] %}\n  - {{ i }}\n{% endfor %}\nbad: x\n";
        let r = renderer("a: 1");
        let out = r.render(src, Path::new("f.yaml")).unwrap();
        assert_eq!(out, "items:\n  - 1\n  - 2\n  - 3\nbad: x\n");
        let map = SourceMap::new(src, &out);
        for line in 2..=4 {
            assert_eq!(map.map(Pos { line, col: 5 }).line, 3);
        }
        assert_eq!(map.map(Pos { line: 5, col: 6 }), Pos { line: 5, col: 6 });
    }
}
