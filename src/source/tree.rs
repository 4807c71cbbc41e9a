//! The config files of a commit's tree, listed with the rules of reading a
//! directory (dot-files skipped, nesting limited, symlinks followed only
//! inside the tree), and blobs read within a size limit.

use super::Error;
use super::mirror::find_commit;
use crate::manifest;
use crate::manifest::tree::{TreeFile, TreeListing};
use git2::{Oid, Repository};
use std::path::{Path, PathBuf};

/// The tree of commit `sha` under `subdir` (none, empty or `.`: the root);
/// a missing or non-directory `subdir` is an error made by `err`.
pub(super) fn commit_subtree<'r>(
    repo: &'r Repository,
    sha: &str,
    subdir: Option<&Path>,
    err: &dyn Fn(String) -> Error,
) -> Result<git2::Tree<'r>, Error> {
    let commit = find_commit(repo, sha)?;
    let mut tree = commit.tree().map_err(|e| err(e.to_string()))?;
    if let Some(sub) = subdir.filter(|s| !s.as_os_str().is_empty() && *s != Path::new(".")) {
        let entry = tree.get_path(sub).map_err(|_| {
            err(format!(
                "the commit has no directory {} (check --path)",
                sub.display()
            ))
        })?;
        tree = repo
            .find_tree(entry.id())
            .map_err(|_| err(format!("{} is not a directory", sub.display())))?;
    }
    Ok(tree)
}

/// Lists `floyd.yaml` and the manifests under `services/` of `sha`'s tree
/// (under `subdir`), with the same rules as reading a directory: dot-files
/// skipped, nesting limited, symlinked files followed inside the tree,
/// symlinked directories not followed.
pub(super) fn list_config_tree(
    repo: &Repository,
    sha: &str,
    subdir: Option<&Path>,
) -> Result<TreeListing, Error> {
    let err = |m: String| Error::Export {
        commit: sha.to_string(),
        path: subdir.map(Path::to_path_buf).unwrap_or_default(),
        message: m,
    };
    let root = commit_subtree(repo, sha, subdir, &err)?;
    let sub = subdir.filter(|s| !s.as_os_str().is_empty() && *s != Path::new("."));
    let mut out = TreeListing {
        label: match sub {
            Some(s) => format!("the repository's {}", s.display()),
            None => "the repository".into(),
        },
        ..TreeListing::default()
    };
    if let Some(e) = root.get_name(manifest::CONFIG_FILE) {
        match resolve_blob(repo, &root, Path::new(""), &e) {
            Ok(Some(id)) => {
                out.config = Some(TreeFile {
                    rel: PathBuf::from(manifest::CONFIG_FILE),
                    id: id.to_string(),
                })
            }
            Ok(None) | Err(_) => out.diags.push(tree_diag(
                Path::new(manifest::CONFIG_FILE),
                "not a file (a directory, a submodule or a symlink that leads nowhere in the commit)",
            )),
        }
    }
    if let Some(e) = root.get_name(manifest::SERVICES_DIR)
        && e.kind() == Some(git2::ObjectType::Tree)
    {
        out.services_dir = true;
        let tree = repo
            .find_tree(e.id())
            .map_err(|e| err(e.message().to_string()))?;
        list_services(
            repo,
            &root,
            &tree,
            Path::new(manifest::SERVICES_DIR),
            0,
            &mut out,
        );
    }
    Ok(out)
}

fn tree_diag(rel: &Path, message: &str) -> manifest::Diagnostic {
    manifest::Diagnostic {
        file: rel.to_path_buf(),
        line: 0,
        column: 0,
        path: String::new(),
        message: message.to_string(),
        hint: None,
    }
}

fn list_services(
    repo: &Repository,
    root: &git2::Tree<'_>,
    tree: &git2::Tree<'_>,
    rel: &Path,
    depth: usize,
    out: &mut TreeListing,
) {
    if depth > manifest::tree::MAX_SERVICES_DEPTH {
        out.diags.push(tree_diag(
            rel,
            &format!(
                "directories nested deeper than {} levels are not read",
                manifest::tree::MAX_SERVICES_DEPTH
            ),
        ));
        return;
    }
    for entry in tree.iter() {
        let Ok(name) = entry.name() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let child = rel.join(name);
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                if let Ok(t) = repo.find_tree(entry.id()) {
                    list_services(repo, root, &t, &child, depth + 1, out);
                }
            }
            Some(git2::ObjectType::Blob) if manifest::tree::is_manifest_name(name) => {
                match resolve_blob(repo, root, rel, &entry) {
                    Ok(Some(id)) => out.files.push(TreeFile {
                        rel: child,
                        id: id.to_string(),
                    }),
                    // A symlink to a directory: not followed, like on disk.
                    Ok(None) => {}
                    Err(m) => out.diags.push(tree_diag(&child, &m)),
                }
            }
            _ => {}
        }
    }
}

/// The blob a tree entry stands for: itself, or for a symlink the blob it
/// points to inside `root` (at most 8 links deep). `Ok(None)`: not a file.
fn resolve_blob(
    repo: &Repository,
    root: &git2::Tree<'_>,
    dir: &Path,
    entry: &git2::TreeEntry<'_>,
) -> Result<Option<Oid>, String> {
    const LINK: i32 = 0o120000;
    let (mut dir, mut id, mut mode, mut kind) = (
        dir.to_path_buf(),
        entry.id(),
        entry.filemode(),
        entry.kind(),
    );
    for _ in 0..8 {
        if kind != Some(git2::ObjectType::Blob) {
            return Ok(None);
        }
        if mode != LINK {
            return Ok(Some(id));
        }
        let odb = repo.odb().map_err(|e| e.message().to_string())?;
        let target = read_blob_within(repo, &odb, id, MAX_SYMLINK_BYTES)
            .map_err(|e| format!("symlink: {e}"))?;
        let target = String::from_utf8_lossy(&target).into_owned();
        // Resolve against the link's directory, staying inside the tree.
        let mut parts: Vec<String> = if target.starts_with('/') {
            return Err(format!(
                "symlink to an absolute path ({target}) is not followed"
            ));
        } else {
            dir.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        };
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(format!(
                            "symlink {target} leads outside the config directory"
                        ));
                    }
                }
                c => parts.push(c.to_string()),
            }
        }
        let path: PathBuf = parts.iter().collect();
        let e = root
            .get_path(&path)
            .map_err(|_| format!("symlink {target} leads to nothing in the commit"))?;
        dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (id, mode, kind) = (e.id(), e.filemode(), e.kind());
    }
    Err("too many levels of symlinks".into())
}

/// A symlink's target is a path: longer than this is not one.
const MAX_SYMLINK_BYTES: u64 = 4096;

/// A blob's bytes, refused from its object header (size only, nothing
/// inflated) when it is larger than `limit`: a 50 MiB blob in a commit costs
/// a header read, not 50 MiB of memory.
pub(super) fn read_blob_within(
    repo: &Repository,
    odb: &git2::Odb<'_>,
    oid: Oid,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let (size, _) = odb.read_header(oid).map_err(|e| e.message().to_string())?;
    if size as u64 > limit {
        return Err(format!(
            "file is {size} bytes; the limit is {limit} ({}); split it into several files",
            if limit >= 1024 * 1024 {
                format!("{} MiB", limit / (1024 * 1024))
            } else {
                format!("{limit} bytes")
            }
        ));
    }
    repo.find_blob(oid)
        .map(|b| b.content().to_vec())
        .map_err(|e| e.message().to_string())
}

pub(super) fn blob_at(tree: &git2::Tree<'_>, path: &str) -> Option<Oid> {
    tree.get_path(Path::new(path)).ok().map(|e| e.id())
}
