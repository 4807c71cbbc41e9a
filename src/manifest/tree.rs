//! Rendering a config repo straight from a version-control tree, commit
//! after commit, without writing it to disk.
//!
//! The Git source lists a commit's `floyd.yaml` and `services/` manifests
//! with their blob ids ([`TreeListing`]); [`IncrementalRenderer`] reads and
//! renders only the files whose id changed since the previous commit (every
//! templated file when `floyd.yaml` changed), and reuses the rest. Its result
//! is exactly what [`ConfigRepo::read`](super::ConfigRepo::read) +
//! [`release`](super::ConfigRepo::release) give for the same files: a commit
//! that changes one manifest in a repo of 1,000 costs one file's render.

use super::load::{
    CONFIG_FILE, Config, FileResult, assemble, check_text, file_diag, parse_config, render_all,
    services_dir_diags,
};
use super::template::Renderer;
use super::{Diagnostic, Error, Release};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One file as a tree lists it: its path relative to the config repo's
/// root and an id that changes whenever its bytes do (a Git blob id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    pub rel: PathBuf,
    pub id: String,
}

/// What a tree holds of a config repo: names and ids only; bytes are read
/// on demand.
#[derive(Debug, Clone, Default)]
pub struct TreeListing {
    /// `floyd.yaml`, when the tree has one.
    pub config: Option<TreeFile>,
    /// Whether `services/` exists as a directory.
    pub services_dir: bool,
    /// Every `*.yaml`/`*.yml` under `services/` (dot-files and directories
    /// skipped, nesting limited like [`ConfigRepo::read`](super::ConfigRepo::read)).
    pub files: Vec<TreeFile>,
    /// Problems found while listing (too deep, a symlink, ...).
    pub diags: Vec<Diagnostic>,
    /// How hints name the repo (`--path`, or the remote).
    pub label: String,
}

/// Whether `name` is a manifest file name under `services/`.
pub fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// How deep `services/` may nest.
pub const MAX_SERVICES_DEPTH: usize = super::load::MAX_DEPTH;

struct CachedFile {
    id: String,
    /// Whether the text has template tags (its result depends on values).
    templated: bool,
    result: FileResult,
}

/// What the last [`IncrementalRenderer::render`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderStats {
    /// Files read and rendered.
    pub rendered: usize,
    /// Files whose previous result was reused.
    pub reused: usize,
}

/// Renders successive trees of one config repo for one environment,
/// remembering each file's result by its id.
pub struct IncrementalRenderer {
    environment: Option<String>,
    /// `floyd.yaml`'s id (None: absent), what it parsed to and its problems.
    config: Option<(Option<String>, Config, Vec<Diagnostic>)>,
    files: HashMap<PathBuf, CachedFile>,
    stats: RenderStats,
}

impl IncrementalRenderer {
    pub fn new(environment: Option<&str>) -> IncrementalRenderer {
        IncrementalRenderer {
            environment: environment.map(str::to_string),
            config: None,
            files: HashMap::new(),
            stats: RenderStats::default(),
        }
    }

    /// What the last render read and what it reused.
    pub fn stats(&self) -> RenderStats {
        self.stats
    }

    /// Renders and validates the release of `tree`. `read` returns a file's
    /// bytes (or why it cannot); it is called only for files whose id is new.
    pub fn render(
        &mut self,
        tree: &TreeListing,
        read: &mut dyn FnMut(&TreeFile) -> Result<Vec<u8>, String>,
    ) -> Result<Release, Error> {
        let config_id = tree.config.as_ref().map(|f| f.id.clone());
        let config_changed = self
            .config
            .as_ref()
            .is_none_or(|(id, _, _)| *id != config_id);
        if config_changed {
            let mut diags = Vec::new();
            let config = match &tree.config {
                None => Config::absent(),
                Some(f) => match read(f) {
                    Ok(bytes) => match check_text(&bytes, Path::new(CONFIG_FILE), &mut diags) {
                        Some(text) => parse_config(&text, Path::new(CONFIG_FILE), &mut diags),
                        None => Config::absent(),
                    },
                    Err(e) => {
                        diags.push(file_diag(
                            Path::new(CONFIG_FILE),
                            0,
                            0,
                            format!("cannot read: {e}"),
                            None,
                        ));
                        Config::absent()
                    }
                },
            };
            self.config = Some((config_id, config, diags));
            // Templated files render differently now.
            self.files.retain(|_, c| !c.templated);
        }
        let Some((_, config, config_diags)) = &self.config else {
            unreachable!("set above");
        };
        let values = config.values_for(self.environment.as_deref())?;

        let mut sorted: Vec<&TreeFile> = tree.files.iter().collect();
        sorted.sort_by(|a, b| a.rel.cmp(&b.rel));
        sorted.dedup_by(|a, b| a.rel == b.rel);
        let mut stats = RenderStats::default();
        let mut to_render: Vec<(PathBuf, String)> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for f in &sorted {
            if self.files.get(&f.rel).is_some_and(|c| c.id == f.id) {
                stats.reused += 1;
                continue;
            }
            stats.rendered += 1;
            let mut diags = Vec::new();
            let text = match read(f) {
                Ok(bytes) => check_text(&bytes, &f.rel, &mut diags),
                Err(e) => {
                    diags.push(file_diag(&f.rel, 0, 0, format!("cannot read: {e}"), None));
                    None
                }
            };
            match text {
                Some(t) => {
                    to_render.push((f.rel.clone(), t));
                    ids.push(f.id.clone());
                }
                None => {
                    self.files.insert(
                        f.rel.clone(),
                        CachedFile {
                            id: f.id.clone(),
                            templated: false,
                            result: FileResult {
                                services: Vec::new(),
                                diags,
                            },
                        },
                    );
                }
            }
        }
        if !to_render.is_empty() {
            let renderer = Renderer::new(&values, self.environment.as_deref());
            let results = render_all(&to_render, &renderer);
            for (((rel, text), id), result) in to_render.into_iter().zip(ids).zip(results) {
                self.files.insert(
                    rel,
                    CachedFile {
                        id,
                        templated: Renderer::needs_rendering(&text),
                        result,
                    },
                );
            }
        }
        // Files gone from the tree are forgotten.
        if self.files.len() > sorted.len() {
            let keep: std::collections::HashSet<&Path> =
                sorted.iter().map(|f| f.rel.as_path()).collect();
            self.files.retain(|rel, _| keep.contains(rel.as_path()));
        }
        self.stats = stats;

        let mut diags = config_diags.clone();
        diags.extend(tree.diags.iter().cloned());
        services_dir_diags(
            &tree.label,
            tree.services_dir,
            sorted.is_empty(),
            config.allow_empty,
            &mut diags,
        );
        let files = &self.files;
        assemble(
            diags,
            sorted
                .iter()
                .filter_map(|f| files.get(&f.rel).map(|c| (f.rel.as_path(), &c.result))),
            config,
        )
    }
}
