//! Floyd release manifests: the `kind: Service` schema and `floyd.yaml`,
//! loading with precise positions (file:line:col + field path), validation
//! (every error collected), rendering (values, environments) and revisions.
//!
//! Reads files only; never talks to Git, runtimes or the network.

mod decode;
mod load;
pub mod model;
mod pod;
mod revision;
mod template;
pub mod tree;
mod yaml;

pub use load::{
    CONFIG_FILE, ConfigRepo, MAX_FILE_BYTES, NOTIFICATION_EVENTS, SERVICES_DIR,
    reserved_name_conflict,
};

pub use model::*;
pub use pod::MAIN_CONTAINER;
pub use revision::revision_of;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a config repo, printed as `file:line:col: field.path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Path as the user gave it (relative to the config dir when possible).
    pub file: PathBuf,
    /// 1-based; 0 when unknown (e.g. a file-level error).
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub column: usize,
    /// Field path such as `spec.strategy.rollingUpdate.maxSurge`; empty for file-level errors.
    pub path: String,
    pub message: String,
    /// What to do about it, when there is something useful to say.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Errors of loading and rendering a config repo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config repo is invalid; every problem found is listed.
    #[error("{} problem(s) in the config repository:\n{}", .0.len(), .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    /// The directory could not be read at all.
    #[error("cannot read config repository {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--environment` names an environment `floyd.yaml` does not define.
    #[error("unknown environment {name:?}; floyd.yaml defines: {known}")]
    UnknownEnvironment { name: String, known: String },
}

/// Loads, renders and validates the config repo at `dir` for `environment`
/// (none: the base values only).
pub fn load_release(dir: &Path, environment: Option<&str>) -> Result<Release, Error> {
    ConfigRepo::read(dir)?.release(environment)
}

/// The environments `floyd.yaml` at `dir` defines (empty when it has none).
pub fn environments(dir: &Path) -> Result<Vec<String>, Error> {
    Ok(ConfigRepo::read(dir)?.environments())
}

/// Parses, defaults and validates one `kind: Service` YAML document (no
/// templating; `{{ values.* }}` and `{% %}` are errors here). `file` names it
/// in diagnostics. Used by `floyd simulate` files and tests.
pub fn parse_service(text: &str, file: &Path) -> Result<Service, Error> {
    let mut diags = Vec::new();
    let service = parse_service_into(text, file, &mut diags);
    match service {
        Some(s) if diags.is_empty() => Ok(s),
        _ => {
            sort_diagnostics(&mut diags);
            Err(Error::Invalid(diags))
        }
    }
}

fn parse_service_into(text: &str, file: &Path, diags: &mut Vec<Diagnostic>) -> Option<Service> {
    let file_diag = |line, column, message: String, hint: Option<String>| Diagnostic {
        file: file.to_path_buf(),
        line,
        column,
        path: String::new(),
        message,
        hint,
    };
    if let Some((line, col)) = find_template_syntax(text) {
        diags.push(file_diag(
            line,
            col,
            "template syntax is not rendered here".into(),
            Some("only files under services/ of a config repo are rendered with values".into()),
        ));
        return None;
    }
    let docs = match yaml::parse_documents(text) {
        Ok(d) => d,
        Err(e) => {
            diags.push(file_diag(e.pos.line, e.pos.col, e.message, None));
            return None;
        }
    };
    let doc = match docs.as_slice() {
        [] => {
            diags.push(file_diag(1, 1, "no YAML document in the file".into(), None));
            return None;
        }
        [doc] => doc,
        [_, second, ..] => {
            diags.push(file_diag(
                second.pos.line,
                second.pos.col,
                format!("expected one document, found {}", docs.len()),
                None,
            ));
            return None;
        }
    };
    let mut cx = decode::Ctx {
        file,
        map: &decode::Identity,
        diags,
    };
    let d = decode::service(&mut cx, doc)?;
    Some(Service {
        revision: revision_of(&d.spec.template),
        name: d.name,
        spec: d.spec,
        file: Some(file.to_path_buf()),
    })
}

/// Where the field at `path` is written in the YAML `text` (1-based line
/// and column): `path` is dotted, with `[i]` for list items, e.g.
/// `scenario.events[0].at`. A path that does not resolve all the way gives
/// the position of its deepest part that does; `None` when the text is not
/// YAML. For files whose other errors come from elsewhere (`floyd simulate`).
pub fn yaml_position(text: &str, path: &str) -> Option<(usize, usize)> {
    let docs = yaml::parse_documents(text).ok()?;
    let mut node = docs.first()?;
    let mut pos = node.pos;
    let segments = path
        .split('.')
        .flat_map(|s| s.split('['))
        .filter(|s| !s.is_empty());
    for seg in segments {
        let next = match (&node.value, seg.strip_suffix(']')) {
            (yaml::Value::Seq(items), Some(i)) => i
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .map(|n| (n.pos, n)),
            (yaml::Value::Map(entries), None) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(seg))
                .map(|(k, v)| (k.pos, v)),
            _ => None,
        };
        match next {
            Some((p, n)) => {
                pos = p;
                node = n;
            }
            None => break,
        }
    }
    Some((pos.line, pos.col))
}

/// File order, then position: the order a person reads the files in.
fn sort_diagnostics(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
}

/// Where `{{ values.` or `{%` first occurs (1-based line and column), if anywhere.
fn find_template_syntax(text: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let at = [l.find("{{ values."), l.find("{{values."), l.find("{%")]
            .into_iter()
            .flatten()
            .min()?;
        Some((i + 1, l[..at].chars().count() + 1))
    })
}

#[cfg(test)]
mod tests;
