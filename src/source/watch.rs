//! Development mode: `--repo <local path>` is watched with notify; a change
//! of its refs (a commit, a reset, a fetch) triggers a fetch at once instead
//! of waiting for the poll. Events are debounced: a commit touches several
//! files under `.git` within milliseconds.
//!
//! Must not: read the repository itself (the source fetches as usual).

use crate::hub::{FetchTrigger, Hub};
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Keeps the watch alive; dropping it stops watching.
pub struct RepoWatch {
    _watcher: notify::RecommendedWatcher,
}

/// The git directory of a local repository (working tree or bare).
fn git_dir(repo: &Path) -> PathBuf {
    let dot_git = repo.join(".git");
    if dot_git.is_dir() {
        dot_git
    } else {
        repo.to_path_buf()
    }
}

/// Watches the refs of the repository at `repo` and asks the controller to
/// fetch (through the hub) after `debounce` of quiet.
pub fn watch_repo(repo: &Path, hub: Arc<Hub>, debounce: Duration) -> Result<RepoWatch, String> {
    let dir = git_dir(repo);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            // Reads (access events) are not changes.
            if !matches!(
                ev.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(_)
                    | notify::EventKind::Remove(_)
            ) {
                return;
            }
            // Object writes are noise; a commit always ends with a ref or HEAD update.
            let relevant = ev.paths.iter().any(|p| {
                let s = p.to_string_lossy();
                s.contains("/refs/") || s.ends_with("HEAD") || s.ends_with("packed-refs")
            });
            if relevant {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    for sub in ["refs", "HEAD", "packed-refs"] {
        let p = dir.join(sub);
        if p.exists() {
            let mode = if p.is_dir() {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            watcher
                .watch(&p, mode)
                .map_err(|e| format!("cannot watch {}: {e}", p.display()))?;
        }
    }
    // packed-refs may be created later; watching the git dir itself (not
    // recursively) sees that.
    let _ = watcher.watch(&dir, RecursiveMode::NonRecursive);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event arrived for `debounce`.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            hub.trigger_fetch(FetchTrigger {
                source: "watch".into(),
                after: None,
            });
        }
    });
    Ok(RepoWatch { _watcher: watcher })
}
