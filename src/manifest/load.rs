//! Reading a config repository: `floyd.yaml` (values, environments, repo
//! settings) and every `*.yaml`/`*.yml` under `services/`, then rendering a
//! [`Release`] for one environment. Files are read once; each environment
//! renders from the texts in memory.

use super::decode::{self, Ctx, Identity, PosMap};
use super::template::{Renderer, SourceMap, line_col};
use super::yaml::{self, Node, Pos, Value};
use super::{Diagnostic, Error, revision_of, sort_diagnostics};
use crate::manifest::model::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files larger than this are refused: a manifest is hand-written text.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// `services/` nesting deeper than this is refused (and stops symlink loops).
pub(super) const MAX_DEPTH: usize = 16;
/// The repo-wide settings file.
pub const CONFIG_FILE: &str = "floyd.yaml";
/// The directory holding `kind: Service` manifests.
pub const SERVICES_DIR: &str = "services";

/// A config repository read into memory: render it for any environment.
#[derive(Debug, Clone)]
pub struct ConfigRepo {
    /// Problems found while reading (unreadable, empty, not UTF-8, too big,
    /// a broken `floyd.yaml`): part of every environment's result.
    read_diags: Vec<Diagnostic>,
    config: Config,
    /// `services/` files that could be read, relative to the repo root.
    files: Vec<(PathBuf, String)>,
}

#[derive(Debug, Clone)]
pub(super) struct Config {
    values: Node,
    environments: BTreeMap<String, Node>,
    pub(super) prune: bool,
    /// Allow a release with no services (Argo CD's `allowEmpty`).
    pub(super) allow_empty: bool,
    gpus: Vec<GpuInventory>,
    notifications: Vec<NotificationTarget>,
}

impl Config {
    /// What `floyd.yaml` says when it is absent.
    pub(super) fn absent() -> Config {
        Config {
            values: empty_map(),
            environments: BTreeMap::new(),
            prune: true,
            allow_empty: false,
            gpus: Vec::new(),
            notifications: Vec::new(),
        }
    }

    pub(super) fn environment_names(&self) -> Vec<String> {
        self.environments.keys().cloned().collect()
    }

    /// The values templates see: the base values with `environment`'s merged in.
    pub(super) fn values_for(&self, environment: Option<&str>) -> Result<Node, Error> {
        let mut values = self.values.clone();
        if let Some(name) = environment {
            let Some(env_values) = self.environments.get(name) else {
                let known = self.environment_names();
                return Err(Error::UnknownEnvironment {
                    name: name.to_string(),
                    known: if known.is_empty() {
                        "(none)".into()
                    } else {
                        known.join(", ")
                    },
                });
            };
            values.merge(env_values);
        }
        Ok(values)
    }
}

/// The problems of a missing or empty `services/` directory; `label` names
/// the repo in the hint.
pub(super) fn services_dir_diags(
    label: &str,
    exists: bool,
    empty: bool,
    allow_empty: bool,
    diags: &mut Vec<Diagnostic>,
) {
    if !exists {
        diags.push(file_diag(
            Path::new(SERVICES_DIR),
            0,
            0,
            "no services/ directory".into(),
            Some(format!(
                "put kind: Service manifests in {label}/services/*.yaml"
            )),
        ));
    } else if empty && !allow_empty {
        // An empty release would make the controller delete every
        // service (with prune); that is almost always a wrong --path or
        // a bad merge, so it must be asked for.
        diags.push(file_diag(
            Path::new(SERVICES_DIR),
            0,
            0,
            "no *.yaml or *.yml manifests under services/".into(),
            Some("an empty release removes every service; set `allowEmpty: true` in floyd.yaml if that is intended".into()),
        ));
    }
}

fn empty_map() -> Node {
    Node {
        value: Value::Map(Vec::new()),
        pos: Pos { line: 1, col: 1 },
    }
}

impl ConfigRepo {
    /// Reads `floyd.yaml` (optional) and every manifest under `services/`.
    /// Fails only when `dir` itself cannot be read; problems in files are
    /// reported by [`ConfigRepo::release`].
    pub fn read(dir: &Path) -> Result<ConfigRepo, Error> {
        let meta = std::fs::metadata(dir).map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(Error::Read {
                path: dir.to_path_buf(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let mut diags = Vec::new();
        let config_path = Path::new(CONFIG_FILE);
        let config = match read_text(dir, config_path, &mut diags, true) {
            Some(text) => parse_config(&text, config_path, &mut diags),
            None => Config::absent(),
        };
        let services = dir.join(SERVICES_DIR);
        let mut rels = Vec::new();
        let exists = services.is_dir();
        if exists {
            walk(dir, Path::new(SERVICES_DIR), 0, &mut rels, &mut diags);
        }
        rels.sort();
        services_dir_diags(
            &dir.display().to_string(),
            exists,
            rels.is_empty(),
            config.allow_empty,
            &mut diags,
        );
        let files = rels
            .into_iter()
            .filter_map(|rel| read_text(dir, &rel, &mut diags, false).map(|t| (rel, t)))
            .collect();
        Ok(ConfigRepo {
            read_diags: diags,
            config,
            files,
        })
    }

    /// The environments `floyd.yaml` defines, sorted.
    pub fn environments(&self) -> Vec<String> {
        self.config.environment_names()
    }

    /// Renders and validates the release for `environment` (none: base values only).
    pub fn release(&self, environment: Option<&str>) -> Result<Release, Error> {
        let values = self.config.values_for(environment)?;
        let renderer = Renderer::new(&values, environment);
        let results = render_all(&self.files, &renderer);
        assemble(
            self.read_diags.clone(),
            self.files
                .iter()
                .map(|(rel, _)| rel.as_path())
                .zip(results.iter()),
            &self.config,
        )
    }
}

/// Merges per-file results into a release: duplicate names are errors, and
/// any problem anywhere fails the whole release (nothing applies halfway).
pub(super) fn assemble<'a>(
    mut diags: Vec<Diagnostic>,
    results: impl Iterator<Item = (&'a Path, &'a FileResult)>,
    config: &Config,
) -> Result<Release, Error> {
    let mut services: Vec<Service> = Vec::new();
    // name → (file, mapped position) of its first definition.
    let mut seen: BTreeMap<ServiceName, (PathBuf, Pos)> = BTreeMap::new();
    // port → the first service claiming it, with where.
    let mut ports: BTreeMap<u16, (ServiceName, PathBuf, &Claim)> = BTreeMap::new();
    for (rel, result) in results {
        diags.extend(result.diags.iter().cloned());
        for (service, name_pos, claims) in &result.services {
            if let Some((first_file, first_pos)) = seen.get(&service.name) {
                diags.push(Diagnostic {
                    file: rel.to_path_buf(),
                    line: name_pos.line,
                    column: name_pos.col,
                    path: "metadata.name".into(),
                    message: format!(
                        "duplicate service name {:?}: also defined at {}:{}:{}",
                        service.name.as_str(),
                        first_file.display(),
                        first_pos.line,
                        first_pos.col
                    ),
                    hint: Some("each service is defined by exactly one manifest".into()),
                });
                continue;
            }
            seen.insert(service.name.clone(), (rel.to_path_buf(), *name_pos));
            for claim in claims {
                match ports.get(&claim.port) {
                    Some((other, other_file, first)) => diags.push(port_conflict(
                        rel,
                        &service.name,
                        claim,
                        other,
                        other_file,
                        first,
                    )),
                    None => {
                        ports.insert(claim.port, (service.name.clone(), rel.to_path_buf(), claim));
                    }
                }
            }
            services.push(service.clone());
        }
    }
    // Names that collide with objects Floyd generates or the cluster owns
    // (see `runtime::kube::objects::reserved_name_conflict`).
    for (name, (file, pos)) in &seen {
        let all = seen.keys().map(ServiceName::as_str);
        if let Some(message) = reserved_name_conflict(name.as_str(), all) {
            diags.push(Diagnostic {
                file: file.clone(),
                line: pos.line,
                column: pos.col,
                path: "metadata.name".into(),
                message,
                hint: Some(
                    "Floyd names a blue-green preview Service <name>-preview and state ConfigMaps floyd-state-<name>".into(),
                ),
            });
        }
    }
    if !diags.is_empty() {
        sort_diagnostics(&mut diags);
        return Err(Error::Invalid(diags));
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Release {
        services,
        prune: config.prune,
        gpus: config.gpus.clone(),
        notifications: config.notifications.clone(),
    })
}

/// What one file yields: its services (with where each name is written and
/// the ports each one claims) and its problems.
#[derive(Debug, Clone, Default)]
pub(super) struct FileResult {
    pub(super) services: Vec<(Service, Pos, Vec<Claim>)>,
    pub(super) diags: Vec<Diagnostic>,
}

/// A port a service's load balancer listens on (a service port or a
/// blue-green preview port): two services cannot both hold one, on any
/// runtime that binds it. Kept with where the manifest writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Claim {
    pub(super) port: u16,
    /// Field path, e.g. `spec.ports[0].port`.
    pub(super) path: String,
    /// Position in the user's file (already mapped through templates).
    pub(super) pos: Pos,
}

/// The ports `spec` claims, positioned through the document they were decoded from.
fn claims(spec: &ServiceSpec, doc: &Node, map: &dyn PosMap) -> Vec<Claim> {
    let at = |path: &[&str], fallback: Pos| -> Pos {
        let mut n = doc;
        for seg in path {
            let next = match (&n.value, seg.parse::<usize>()) {
                (Value::Seq(items), Ok(i)) => items.get(i),
                (Value::Map(entries), _) => entries
                    .iter()
                    .find(|(k, _)| k.as_str() == Some(seg))
                    .map(|(_, v)| v),
                _ => None,
            };
            match next {
                Some(v) => n = v,
                None => return map.map(fallback),
            }
        }
        map.map(n.pos)
    };
    let mut out: Vec<Claim> = spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let idx = i.to_string();
            Claim {
                port: p.port,
                path: format!("spec.ports[{i}].port"),
                pos: at(&["spec", "ports", &idx, "port"], doc.pos),
            }
        })
        .collect();
    if let Strategy::BlueGreen { blue_green } = &spec.strategy
        && let Some(port) = blue_green.preview_port
    {
        out.push(Claim {
            port,
            path: "spec.strategy.blueGreen.previewPort".into(),
            pos: at(&["spec", "strategy", "blueGreen", "previewPort"], doc.pos),
        });
    }
    out
}

/// The diagnostic for `claim` of `service` (in `file`) on a port that
/// `other` already holds at `first` (in `other_file`).
fn port_conflict(
    file: &Path,
    service: &ServiceName,
    claim: &Claim,
    other: &ServiceName,
    other_file: &Path,
    first: &Claim,
) -> Diagnostic {
    let whose = if other == service {
        "this service".to_string()
    } else {
        format!("service {:?}", other.as_str())
    };
    Diagnostic {
        file: file.to_path_buf(),
        line: claim.pos.line,
        column: claim.pos.col,
        path: claim.path.clone(),
        message: format!(
            "port {} of service {:?} is also used by {whose} at {}:{}:{} ({})",
            claim.port,
            service.as_str(),
            other_file.display(),
            first.pos.line,
            first.pos.col,
            first.path
        ),
        hint: Some(
            "each service port and previewPort must be unique across all services: its load balancer binds it".into(),
        ),
    }
}

/// Files per worker below which threads cost more than they save.
const MIN_FILES_PER_WORKER: usize = 64;

/// Renders and decodes every file, in parallel when there are enough files
/// for it to pay; results come back in file order.
pub(super) fn render_all(files: &[(PathBuf, String)], renderer: &Renderer) -> Vec<FileResult> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(files.len() / MIN_FILES_PER_WORKER)
        .max(1);
    if workers == 1 {
        return files
            .iter()
            .map(|(rel, text)| load_file(rel, text, renderer))
            .collect();
    }
    let chunk = files.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(rel, text)| load_file(rel, text, renderer))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(files.chunks(chunk))
            .flat_map(|(h, part)| {
                // A worker panicking would be a bug; report it against its
                // files rather than taking the caller down.
                h.join().unwrap_or_else(|_| {
                    part.iter()
                        .map(|(rel, _)| FileResult {
                            services: Vec::new(),
                            diags: vec![file_diag(
                                rel,
                                0,
                                0,
                                "internal error while loading this file".into(),
                                None,
                            )],
                        })
                        .collect()
                })
            })
            .collect()
    })
}

fn load_file(rel: &Path, text: &str, renderer: &Renderer) -> FileResult {
    let mut out = FileResult::default();
    let rendered;
    let source_map;
    let (yaml_text, map): (&str, &dyn PosMap) = if Renderer::needs_rendering(text) {
        match renderer.render(text, rel) {
            Ok(r) => rendered = r,
            Err(d) => {
                out.diags.push(d);
                return out;
            }
        }
        source_map = SourceMap::new(text, &rendered);
        (&rendered, &source_map)
    } else {
        (text, &Identity)
    };
    let docs = match yaml::parse_documents(yaml_text) {
        Ok(d) => d,
        Err(e) => {
            let p = map.map(e.pos);
            out.diags
                .push(file_diag(rel, p.line, p.col, e.message, None));
            return out;
        }
    };
    if docs.is_empty() {
        out.diags.push(file_diag(
            rel,
            1,
            1,
            "no YAML document in the file".into(),
            Some("add a kind: Service manifest, or delete the file".into()),
        ));
        return out;
    }
    for doc in &docs {
        let mut cx = Ctx {
            file: rel,
            map,
            diags: &mut out.diags,
        };
        let Some(d) = decode::service(&mut cx, doc) else {
            continue;
        };
        let name_pos = map.map(d.name_pos);
        let claims = claims(&d.spec, doc, map);
        out.services.push((
            Service {
                revision: revision_of(&d.spec.template),
                name: d.name,
                spec: d.spec,
                file: Some(rel.to_path_buf()),
            },
            name_pos,
            claims,
        ));
    }
    out
}

pub(super) fn file_diag(
    file: &Path,
    line: usize,
    column: usize,
    message: String,
    hint: Option<String>,
) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line,
        column,
        path: String::new(),
        message,
        hint,
    }
}

fn walk(
    root: &Path,
    rel: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    diags: &mut Vec<Diagnostic>,
) {
    if depth > MAX_DEPTH {
        diags.push(file_diag(
            rel,
            0,
            0,
            format!("directories nested deeper than {MAX_DEPTH} levels are not read"),
            None,
        ));
        return;
    }
    let entries = match std::fs::read_dir(root.join(rel)) {
        Ok(e) => e,
        Err(e) => {
            diags.push(file_diag(
                rel,
                0,
                0,
                format!("cannot read directory: {e}"),
                None,
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Editor backups, `.git`, `.DS_Store`...
        if name.starts_with('.') {
            continue;
        }
        let child = rel.join(&*name);
        // Symlinked directories are not followed (no loops, nothing outside
        // the repo by accident); symlinked files are read.
        let is_real_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_real_dir {
            walk(root, &child, depth + 1, out, diags);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            if root.join(&child).is_file() {
                out.push(child);
            } else if entry.file_type().is_ok_and(|t| t.is_symlink())
                && std::fs::metadata(root.join(&child)).is_err()
            {
                // Like a commit's tree: a manifest link to nothing is reported,
                // not silently skipped.
                let target = std::fs::read_link(root.join(&child))
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                diags.push(file_diag(
                    &child,
                    0,
                    0,
                    format!("symlink {target} leads to nothing"),
                    Some("fix the link or delete it".into()),
                ));
            }
        }
    }
}

/// Reads one file as text, reporting what makes it unusable. `optional`:
/// a missing file is not a problem.
fn read_text(
    root: &Path,
    rel: &Path,
    diags: &mut Vec<Diagnostic>,
    optional: bool,
) -> Option<String> {
    let path = root.join(rel);
    if let Err(message) = inside_root(root, &path) {
        diags.push(file_diag(
            rel,
            0,
            0,
            message,
            Some("copy the file into the config repository instead of linking to it".into()),
        ));
        return None;
    }
    let size = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            diags.push(file_diag(rel, 0, 0, format!("cannot read: {e}"), None));
            return None;
        }
    };
    if size > MAX_FILE_BYTES {
        diags.push(file_diag(
            rel,
            0,
            0,
            format!("file is {size} bytes; the limit is {MAX_FILE_BYTES} (1 MiB)"),
            Some("split it into several files".into()),
        ));
        return None;
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            diags.push(file_diag(rel, 0, 0, format!("cannot read: {e}"), None));
            return None;
        }
    };
    let text = check_text(&bytes, rel, diags)?;
    Some(text)
}

/// A symlinked file is read only when it resolves inside `root`, as the Git
/// source does for a commit's tree: a config repo cannot pull in files from
/// elsewhere on the machine (`/etc/...`, another user's secrets).
fn inside_root(root: &Path, path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // missing: reported by the read itself
    };
    if !meta.file_type().is_symlink() {
        return Ok(());
    }
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    let (Ok(root), Ok(real)) = (root.canonicalize(), path.canonicalize()) else {
        return Err(format!("symlink {target} leads to nothing"));
    };
    if real.starts_with(&root) {
        Ok(())
    } else {
        Err(format!(
            "symlink {target} leads outside the config directory"
        ))
    }
}

/// UTF-8 (a BOM is dropped), not empty, within the size limit.
pub(crate) fn check_text(bytes: &[u8], rel: &Path, diags: &mut Vec<Diagnostic>) -> Option<String> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        diags.push(file_diag(
            rel,
            0,
            0,
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES} (1 MiB)",
                bytes.len()
            ),
            Some("split it into several files".into()),
        ));
        return None;
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("");
            let (line, col) = line_col(valid, valid.len());
            diags.push(file_diag(
                rel,
                line,
                col,
                format!(
                    "not UTF-8 text (invalid byte 0x{:02x})",
                    bytes[e.valid_up_to()]
                ),
                Some("save the file as UTF-8".into()),
            ));
            return None;
        }
    };
    if text.trim().is_empty() {
        diags.push(file_diag(
            rel,
            1,
            1,
            "file is empty".into(),
            Some("add a manifest, or delete the file".into()),
        ));
        return None;
    }
    Some(text.to_string())
}

const CONFIG_FIELDS: &[&str] = &[
    "values",
    "environments",
    "prune",
    "allowEmpty",
    "runtime",
    "notifications",
];

/// Parses `floyd.yaml`; problems go to `diags`, and whatever is valid is kept
/// so service files can still be checked.
pub(super) fn parse_config(text: &str, file: &Path, diags: &mut Vec<Diagnostic>) -> Config {
    let mut config = Config::absent();
    let docs = match yaml::parse_documents(text) {
        Ok(d) => d,
        Err(e) => {
            diags.push(file_diag(file, e.pos.line, e.pos.col, e.message, None));
            return config;
        }
    };
    let doc = match docs.as_slice() {
        [doc] => doc,
        [] => return config,
        [_, second, ..] => {
            diags.push(file_diag(
                file,
                second.pos.line,
                second.pos.col,
                format!("expected one document, found {}", docs.len()),
                None,
            ));
            return config;
        }
    };
    let mut cx = Ctx {
        file,
        map: &Identity,
        diags,
    };
    let Some(o) = cx.obj(doc, "", CONFIG_FIELDS) else {
        return config;
    };
    if let Some(n) = o.get("values") {
        if matches!(n.value, Value::Map(_)) {
            config.values = n.clone();
        } else {
            cx.err(
                n.pos,
                "values",
                format!("expected a mapping, found {}", n.value.kind()),
            );
        }
    }
    if let Some(n) = o.get("environments") {
        config.environments = environments(&mut cx, n);
    }
    if let Some(n) = o.get("prune")
        && let Some(b) = cx.boolean(n, "prune")
    {
        config.prune = b;
    }
    if let Some(n) = o.get("allowEmpty")
        && let Some(b) = cx.boolean(n, "allowEmpty")
    {
        config.allow_empty = b;
    }
    if let Some(n) = o.get("runtime")
        && let Some(ro) = cx.obj(n, "runtime", &["local"])
        && let Some(l) = ro.get("local")
        && let Some(lo) = cx.obj(l, "runtime.local", &["gpus"])
        && let Some(g) = lo.get("gpus")
    {
        config.gpus = gpus(&mut cx, g, "runtime.local.gpus");
    }
    if let Some(n) = o.get("notifications") {
        config.notifications = notifications(&mut cx, n, "notifications");
    }
    config
}

fn environments(cx: &mut Ctx<'_>, n: &Node) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let Value::Map(entries) = &n.value else {
        cx.err(
            n.pos,
            "environments",
            format!(
                "expected a mapping of name: {{ values: ... }}, found {}",
                n.value.kind()
            ),
        );
        return out;
    };
    for (k, v) in entries {
        let Some(name) = k.key_text() else {
            cx.err(k.pos, "environments", "environment names must be strings");
            continue;
        };
        let path = format!("environments.{name}");
        if let Err(e) = ServiceName::parse(&name) {
            cx.err_hint(
                k.pos,
                &path,
                format!("invalid environment name {name:?}: {e}"),
                "use a DNS-1123 label such as `staging` or `prod`",
            );
            continue;
        }
        let values = if v.value == Value::Null {
            empty_map()
        } else {
            match cx.obj(v, &path, &["values"]) {
                Some(eo) => match eo.get("values") {
                    Some(vals) if matches!(vals.value, Value::Map(_)) => vals.clone(),
                    Some(vals) => {
                        cx.err(
                            vals.pos,
                            &eo.at("values"),
                            format!("expected a mapping, found {}", vals.value.kind()),
                        );
                        empty_map()
                    }
                    None => empty_map(),
                },
                None => empty_map(),
            }
        };
        out.insert(name, values);
    }
    out
}

fn gpus(cx: &mut Ctx<'_>, n: &Node, path: &str) -> Vec<GpuInventory> {
    let mut out: Vec<GpuInventory> = Vec::new();
    let Some(items) = cx.list(n, path) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(o) = cx.obj(
            item,
            &ip,
            &["product", "memoryMiB", "count", "timeSlicedReplicas", "mig"],
        ) else {
            continue;
        };
        let before = cx.diags.len();
        let product = cx
            .required(&o, "product")
            .and_then(|p| cx.nonempty_string(p, &o.at("product")));
        let count = cx
            .required(&o, "count")
            .and_then(|c| cx.u32_in(c, &o.at("count"), 1, 1024));
        let memory_mib = o
            .get("memoryMiB")
            .and_then(|m| cx.int(m, &o.at("memoryMiB"), 1, u32::MAX.into()))
            .and_then(|m| u64::try_from(m).ok());
        let time_sliced = o
            .get("timeSlicedReplicas")
            .and_then(|t| cx.u32_in(t, &o.at("timeSlicedReplicas"), 1, 64));
        let mut mig = BTreeMap::new();
        if let Some(m) = o.get("mig") {
            mig = mig_slices(cx, m, &o.at("mig"));
        }
        if time_sliced.is_some() && !mig.is_empty() {
            let pos = o.get("mig").map_or(o.pos, |m| m.pos);
            cx.err(
                pos,
                &o.at("mig"),
                "a GPU is either MIG-partitioned or time-sliced, not both",
            );
        }
        if let Some(p) = &product
            && out.iter().any(|g| &g.product == p)
        {
            let pos = o.get("product").map_or(o.pos, |m| m.pos);
            cx.err_hint(
                pos,
                &o.at("product"),
                format!("{p} is listed twice"),
                "give one line per product with the total count",
            );
        }
        if cx.diags.len() > before {
            continue;
        }
        if let (Some(product), Some(count)) = (product, count) {
            out.push(GpuInventory {
                product,
                memory_mib,
                count,
                time_sliced_replicas: time_sliced,
                mig,
            });
        }
    }
    out
}

fn mig_slices(cx: &mut Ctx<'_>, n: &Node, path: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Value::Map(entries) = &n.value else {
        cx.err_hint(
            n.pos,
            path,
            format!("expected a mapping, found {}", n.value.kind()),
            "e.g. mig: { 1g.10gb: 7 }",
        );
        return out;
    };
    for (k, v) in entries {
        let Some(profile) = k.key_text() else {
            cx.err(k.pos, path, "profile names must be strings");
            continue;
        };
        let p = decode::join(path, &profile);
        if !decode::is_mig_profile(&profile) {
            cx.err_hint(
                k.pos,
                &p,
                format!("invalid MIG profile {profile:?}"),
                "use an NVIDIA profile name such as 1g.10gb or 3g.40gb",
            );
            continue;
        }
        if let Some(c) = cx.u32_in(v, &p, 1, 7) {
            out.insert(profile, c);
        }
    }
    out
}

/// The events a notification target can ask for (the kinds
/// `server::notify` sends; a test keeps the two lists equal).
pub const NOTIFICATION_EVENTS: &[&str] = &[
    "started",
    "completed",
    "failed",
    "rolledBack",
    "degraded",
    "revertPushed",
    "revertFailed",
];

/// The known event a mistyped one most likely means: the same name in
/// another case or with `-`/`_` (`rolled-back`), a name it contains
/// (`rollout-failed`), or a close spelling.
fn event_like(word: &str) -> Option<&'static str> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let w = norm(word);
    NOTIFICATION_EVENTS
        .iter()
        .find(|k| norm(k) == w)
        .or_else(|| NOTIFICATION_EVENTS.iter().find(|k| w.contains(&norm(k))))
        .copied()
        .or_else(|| decode::closest(word, NOTIFICATION_EVENTS))
}

fn notifications(cx: &mut Ctx<'_>, n: &Node, path: &str) -> Vec<NotificationTarget> {
    let mut out = Vec::new();
    let Some(items) = cx.list(n, path) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(o) = cx.obj(item, &ip, &["url", "format", "events"]) else {
            continue;
        };
        let url = cx
            .required(&o, "url")
            .and_then(|u| notification_url(cx, u, &o.at("url")));
        let format = match o.get("format") {
            None => Some(NotificationFormat::Generic),
            Some(f) => cx
                .string(f, &o.at("format"))
                .and_then(|s| match s.as_str() {
                    "slack" => Some(NotificationFormat::Slack),
                    "generic" => Some(NotificationFormat::Generic),
                    _ => {
                        cx.err_hint(
                            f.pos,
                            &o.at("format"),
                            format!("unknown format {s:?}"),
                            "use slack or generic",
                        );
                        None
                    }
                }),
        };
        let events = o
            .get("events")
            .and_then(|e| {
                let list = cx.string_list(e, &o.at("events"))?;
                let items = match &e.value {
                    Value::Seq(items) => items.as_slice(),
                    _ => &[],
                };
                let mut ok = true;
                for (j, (name, node)) in list.iter().zip(items).enumerate() {
                    if NOTIFICATION_EVENTS.contains(&name.as_str()) {
                        continue;
                    }
                    ok = false;
                    let p = format!("{}[{j}]", o.at("events"));
                    let hint = match event_like(name) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("known events: {}", NOTIFICATION_EVENTS.join(", ")),
                    };
                    cx.err_hint(node.pos, &p, format!("unknown event {name:?}"), hint);
                }
                ok.then_some(list)
            })
            .unwrap_or_default();
        if let (Some(url), Some(format)) = (url, format) {
            out.push(NotificationTarget {
                url,
                format,
                events,
            });
        }
    }
    out
}

fn notification_url(cx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<String> {
    let s = cx.nonempty_string(n, path)?;
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        // Not echoed: webhook URLs often embed a token.
        cx.err_hint(
            n.pos,
            path,
            "must be an http:// or https:// URL",
            "e.g. https://hooks.slack.com/services/...",
        );
        return None;
    }
    Some(s)
}

/// Service names Floyd refuses because a Kubernetes object it generates, or
/// one the cluster owns, would have the same name. `names` are every
/// service of the release; returns the reason for `name`, if any.
///
/// - `kubernetes`: the API server's own Service in `default`.
/// - `<other>-preview`: the blue-green preview Service of service `<other>`.
/// - `floyd-state-...`: the prefix of Floyd's state ConfigMaps.
pub fn reserved_name_conflict<'a>(
    name: &str,
    names: impl Iterator<Item = &'a str>,
) -> Option<String> {
    if name == "kubernetes" {
        return Some(
            "\"kubernetes\" is reserved: it is the API server's own Service in namespace default; rename the service".into(),
        );
    }
    if name.starts_with("floyd-state-") {
        return Some(
            "names starting with \"floyd-state-\" are reserved for Floyd's state ConfigMaps; rename the service".into(),
        );
    }
    // Services Floyd generates for another service: the blue-green preview,
    // and the stable/canary Services of a canary routed through an HTTPRoute.
    let names: Vec<&str> = names.collect();
    for (suffix, what) in [
        ("-preview", "preview Service"),
        ("-stable", "stable Service (canary trafficRouting)"),
        ("-canary", "canary Service (canary trafficRouting)"),
    ] {
        if let Some(base) = name.strip_suffix(suffix)
            && names.contains(&base)
        {
            return Some(format!(
                "{name:?} is the name of the {what} Floyd makes for service {base:?}; rename one of them"
            ));
        }
    }
    None
}
