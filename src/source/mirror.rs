//! The mirror: one remote, one branch, one bare clone with full history;
//! fetch, the cheap "did the branch move" check, export and render of a
//! commit, push (never forced).

use super::known_hosts::{known_hosts_match, ssh_port};
use super::tree::{commit_subtree, list_config_tree, read_blob_within};
use super::{Error, SourceConfig, redact_url, signing};
use crate::hub::CommitInfo;
use crate::manifest::tree::{IncrementalRenderer, TreeFile};
use crate::manifest::{self, Release};
use git2::{
    CertificateCheckStatus, Cred, CredentialType, Direction, FetchOptions, Oid, PushOptions,
    RemoteCallbacks, Repository,
};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};

/// The Git source: one remote, one branch, one bare mirror.
pub struct GitSource {
    cfg: SourceConfig,
    redacted: String,
    /// Fetches and pushes take turns (see [`revert::GitWriter`]).
    pub(super) write_lock: std::sync::Mutex<()>,
    /// Signs revert commits when a signing key is configured.
    pub(super) signer: Option<signing::Signer>,
}

impl fmt::Debug for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitSource")
            .field("remote", &self.redacted)
            .field("branch", &self.cfg.branch)
            .finish()
    }
}

const TRACKING_PREFIX: &str = "refs/remotes/origin/";
pub(super) const REVERT_REF: &str = "refs/floyd/revert";

impl GitSource {
    /// Opens the mirror, creating it (empty, bare) when missing. Plain local
    /// paths are turned into absolute paths so libgit2 treats them as local remotes.
    pub fn open(mut cfg: SourceConfig) -> Result<GitSource, Error> {
        if !cfg.url.contains("://") && !is_scp_like(&cfg.url) {
            let p = Path::new(&cfg.url);
            if let Ok(abs) = std::fs::canonicalize(p) {
                cfg.url = abs.to_string_lossy().into_owned();
            }
        }
        let redacted = redact_url(&cfg.url);
        let signer = match &cfg.credentials.signing_key {
            Some(p) => Some(signing::Signer::load(p)?),
            None => None,
        };
        let src = GitSource {
            cfg,
            redacted,
            write_lock: std::sync::Mutex::new(()),
            signer,
        };
        let repo = match Repository::open_bare(&src.cfg.mirror) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&src.cfg.mirror).map_err(|e| src.mirror_err(e))?;
                Repository::init_bare(&src.cfg.mirror).map_err(|e| src.mirror_err(e))?
            }
        };
        if repo.is_shallow() {
            return Err(Error::Shallow {
                path: src.cfg.mirror.clone(),
            });
        }
        Ok(src)
    }

    pub fn remote(&self) -> &str {
        &self.redacted
    }
    pub fn branch(&self) -> &str {
        &self.cfg.branch
    }
    /// The URL as given (may hold credentials: never log it).
    pub fn url(&self) -> &str {
        &self.cfg.url
    }
    /// A plain local path remote (watchable with notify).
    pub fn local_path(&self) -> Option<PathBuf> {
        if self.cfg.url.contains("://") && !self.cfg.url.starts_with("file://") {
            return None;
        }
        if is_scp_like(&self.cfg.url) {
            return None;
        }
        Some(PathBuf::from(
            self.cfg
                .url
                .strip_prefix("file://")
                .unwrap_or(&self.cfg.url),
        ))
    }

    pub(super) fn mirror_err(&self, e: impl fmt::Display) -> Error {
        Error::Mirror {
            path: self.cfg.mirror.clone(),
            message: e.to_string(),
        }
    }
    pub(super) fn remote_err(&self, e: impl fmt::Display) -> Error {
        // libgit2 messages may quote the URL; strip userinfo from them too.
        let msg = e.to_string().replace(&self.cfg.url, &self.redacted);
        Error::Remote {
            remote: self.redacted.clone(),
            message: msg,
        }
    }
    pub(super) fn repo(&self) -> Result<Repository, Error> {
        Repository::open_bare(&self.cfg.mirror).map_err(|e| self.mirror_err(e))
    }
    pub(super) fn tracking_ref(&self) -> String {
        format!("{TRACKING_PREFIX}{}", self.cfg.branch)
    }

    pub(super) fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut cb = RemoteCallbacks::new();
        let creds = self.cfg.credentials.clone();
        let tries = Cell::new(0u32);
        cb.credentials(move |_url, user, allowed| {
            // libgit2 calls again after a rejected credential; stop instead of looping.
            tries.set(tries.get() + 1);
            if tries.get() > 4 {
                return Err(git2::Error::from_str(
                    "authentication failed (check FLOYD_GIT_TOKEN / FLOYD_GIT_SSH_KEY)",
                ));
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && let Some(t) = &creds.token
            {
                let u = creds.token_user.as_deref().unwrap_or("x-access-token");
                return Cred::userpass_plaintext(u, t);
            }
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user.unwrap_or("git"));
            }
            if allowed.contains(CredentialType::SSH_KEY) {
                let user = user.unwrap_or("git");
                if let Some(k) = &creds.ssh_key {
                    return Cred::ssh_key(user, None, k, None);
                }
                return Cred::ssh_key_from_agent(user);
            }
            Cred::default()
        });
        let known = self.cfg.credentials.known_hosts.clone();
        let port = ssh_port(&self.cfg.url);
        cb.certificate_check(move |cert, host| {
            let (Some(kh), Some(hk)) = (&known, cert.as_hostkey()) else {
                // TLS: libgit2's own verification stands.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let (Some(key), Some(kind)) = (hk.hostkey(), hk.hostkey_type()) else {
                return Err(git2::Error::from_str("SSH server sent no host key"));
            };
            match known_hosts_match(kh, host, port, kind.name(), key) {
                Ok(true) => Ok(CertificateCheckStatus::CertificateOk),
                Ok(false) => Err(git2::Error::from_str(&format!(
                    "SSH host key of {host} ({}) is not in {}",
                    kind.name(),
                    kh.display()
                ))),
                Err(e) => Err(git2::Error::from_str(&e)),
            }
        });
        cb
    }

    /// The remote's tip of the branch, at the cost of `git ls-remote`
    /// (connect + advertised refs; no objects transferred).
    pub fn remote_tip(&self) -> Result<String, Error> {
        let repo = self.repo()?;
        let mut remote = repo
            .remote_anonymous(&self.cfg.url)
            .map_err(|e| self.remote_err(e))?;
        let conn = remote
            .connect_auth(Direction::Fetch, Some(self.callbacks()), None)
            .map_err(|e| self.remote_err(e))?;
        let want = format!("refs/heads/{}", self.cfg.branch);
        let tip = conn
            .list()
            .map_err(|e| self.remote_err(e))?
            .iter()
            .find(|h| h.name() == want)
            .map(|h| h.oid().to_string());
        tip.ok_or_else(|| Error::NoBranch {
            remote: self.redacted.clone(),
            branch: self.cfg.branch.clone(),
        })
    }

    /// The mirror's copy of the branch tip, if fetched at least once.
    pub fn local_tip(&self) -> Result<Option<String>, Error> {
        let repo = self.repo()?;
        Ok(repo
            .refname_to_id(&self.tracking_ref())
            .ok()
            .map(|o| o.to_string()))
    }

    /// Fetches the branch (full history) into the mirror; returns the new
    /// tip. Takes the mirror's write lock (a revert may be pushing).
    pub fn fetch(&self) -> Result<String, Error> {
        self.writer().fetch()
    }

    pub(super) fn fetch_unlocked(&self) -> Result<String, Error> {
        let repo = self.repo()?;
        let mut remote = repo
            .remote_anonymous(&self.cfg.url)
            .map_err(|e| self.remote_err(e))?;
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(self.callbacks());
        fo.download_tags(git2::AutotagOption::None);
        let spec = format!("+refs/heads/{0}:{TRACKING_PREFIX}{0}", self.cfg.branch);
        remote
            .fetch(&[spec.as_str()], Some(&mut fo), None)
            .map_err(|e| self.remote_err(e))?;
        if repo.is_shallow() {
            return Err(Error::Shallow {
                path: self.cfg.mirror.clone(),
            });
        }
        self.local_tip()?.ok_or_else(|| Error::NoBranch {
            remote: self.redacted.clone(),
            branch: self.cfg.branch.clone(),
        })
    }

    /// One poll: ask for the remote tip; fetch only when it differs from the
    /// mirror's. Returns the new tip when it moved (or on the first poll).
    pub fn poll(&self) -> Result<Option<String>, Error> {
        let remote = self.remote_tip()?;
        let local = self.local_tip()?;
        if local.as_deref() == Some(remote.as_str()) {
            return Ok(None);
        }
        let tip = self.fetch()?;
        Ok(Some(tip))
    }

    /// Commit metadata for people.
    pub fn commit_info(&self, sha: &str) -> Result<CommitInfo, Error> {
        let repo = self.repo()?;
        let c = find_commit(&repo, sha)?;
        Ok(commit_info(&c))
    }

    /// The full message of a commit.
    pub fn commit_message(&self, sha: &str) -> Result<String, Error> {
        let repo = self.repo()?;
        let c = find_commit(&repo, sha)?;
        Ok(String::from_utf8_lossy(c.message_bytes()).into_owned())
    }

    /// Writes the tree of `sha` (only `subdir`, when given) into `dest`, which
    /// must not exist yet. The files of a commit, without a checkout.
    pub fn export(&self, sha: &str, subdir: Option<&Path>, dest: &Path) -> Result<(), Error> {
        let repo = self.repo()?;
        let err = |m: String| Error::Export {
            commit: sha.to_string(),
            path: dest.to_path_buf(),
            message: m,
        };
        let tree = commit_subtree(&repo, sha, subdir, &err)?;
        std::fs::create_dir_all(dest).map_err(|e| err(e.to_string()))?;
        let mut failure: Option<String> = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
            let Ok(name) = entry.name() else {
                return git2::TreeWalkResult::Skip;
            };
            // Tree paths from git cannot contain "..", but a hostile repo could
            // try; stay inside dest.
            if name == ".." || root.split('/').any(|c| c == "..") {
                return git2::TreeWalkResult::Skip;
            }
            let path = dest.join(root).join(name);
            let r = match entry.kind() {
                Some(git2::ObjectType::Tree) => {
                    std::fs::create_dir_all(&path).map_err(|e| e.to_string())
                }
                Some(git2::ObjectType::Blob) => repo
                    .find_blob(entry.id())
                    .map_err(|e| e.to_string())
                    .and_then(|b| std::fs::write(&path, b.content()).map_err(|e| e.to_string())),
                _ => Ok(()), // submodules and others: not config
            };
            match r {
                Ok(()) => git2::TreeWalkResult::Ok,
                Err(e) => {
                    failure = Some(format!("{}: {e}", path.display()));
                    git2::TreeWalkResult::Abort
                }
            }
        })
        .map_err(|e| err(failure.clone().unwrap_or_else(|| e.to_string())))?;
        match failure {
            Some(f) => Err(err(f)),
            None => Ok(()),
        }
    }

    /// Renders the config repo at commit `sha` (under `subdir`) straight
    /// from the mirror's objects, reading only the files `renderer` has not
    /// seen (by blob id). The outer error is Git's; the inner one the
    /// manifests'.
    pub fn render(
        &self,
        sha: &str,
        subdir: Option<&Path>,
        renderer: &mut IncrementalRenderer,
    ) -> Result<Result<Release, manifest::Error>, Error> {
        let repo = self.repo()?;
        let listing = list_config_tree(&repo, sha, subdir)?;
        let odb = repo.odb().map_err(|e| self.mirror_err(e))?;
        let mut read = |f: &TreeFile| -> Result<Vec<u8>, String> {
            let oid = Oid::from_str(&f.id).map_err(|e| e.to_string())?;
            read_blob_within(&repo, &odb, oid, manifest::MAX_FILE_BYTES)
        };
        Ok(renderer.render(&listing, &mut read))
    }

    /// Pushes `local_ref` to the branch (no `+`: never forced) and checks the
    /// server's per-ref status, which `push` alone does not report.
    pub(super) fn push(&self, repo: &Repository, local_ref: &str) -> Result<(), Error> {
        self.push_to(repo, local_ref, &self.cfg.branch, false)
    }

    /// Pushes `local_ref` to `refs/heads/<branch>`; `force` only for Floyd's
    /// own `floyd/…` branches (see [`propose`]), never for the tracked one.
    pub(super) fn push_to(
        &self,
        repo: &Repository,
        local_ref: &str,
        branch: &str,
        force: bool,
    ) -> Result<(), Error> {
        let force = force && branch != self.cfg.branch && branch.starts_with("floyd/");
        let mut remote = repo
            .remote_anonymous(&self.cfg.url)
            .map_err(|e| self.remote_err(e))?;
        let rejected: RefCell<Option<String>> = RefCell::new(None);
        let mut cb = self.callbacks();
        cb.push_update_reference(|_refname, status| {
            if let Some(s) = status {
                *rejected.borrow_mut() = Some(s.to_string());
            }
            Ok(())
        });
        let mut po = PushOptions::new();
        po.remote_callbacks(cb);
        let plus = if force { "+" } else { "" };
        let spec = format!("{plus}{local_ref}:refs/heads/{branch}");
        let rej = |message: String| {
            let m = message.to_lowercase();
            let retryable = m.contains("non-fast")
                || m.contains("fetch first")
                || m.contains("not present locally")
                || m.contains("stale")
                || m.contains("failed to update ref")
                || m.contains("failed to lock");
            Error::PushRejected {
                remote: self.redacted.clone(),
                branch: branch.to_string(),
                message,
                retryable,
            }
        };
        match remote.push(&[spec.as_str()], Some(&mut po)) {
            Ok(()) => {}
            Err(e) if e.code() == git2::ErrorCode::NotFastForward => {
                return Err(rej(format!("non-fast-forward: {}", e.message())));
            }
            Err(e) => {
                let msg = e.message().replace(&self.cfg.url, &self.redacted);
                let m = msg.to_lowercase();
                if m.contains("non-fast") || m.contains("not present locally") {
                    return Err(rej(msg));
                }
                return Err(self.remote_err(msg));
            }
        }
        drop(po);
        if let Some(msg) = rejected.into_inner() {
            return Err(rej(msg));
        }
        Ok(())
    }
}

fn is_scp_like(url: &str) -> bool {
    // user@host:path (no scheme, a colon before any slash, not a Windows drive).
    match (url.find(':'), url.find('/')) {
        (Some(c), s) => c > 1 && s.is_none_or(|s| c < s) && !url.contains("://"),
        _ => false,
    }
}

pub(super) fn find_commit<'r>(repo: &'r Repository, sha: &str) -> Result<git2::Commit<'r>, Error> {
    let oid = Oid::from_str(sha).map_err(|e| Error::Git(format!("{sha:?}: {e}")))?;
    repo.find_commit(oid)
        .map_err(|e| Error::Git(format!("commit {sha}: {}", e.message())))
}

pub(super) fn summary_of(c: &git2::Commit<'_>) -> String {
    c.summary_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

fn commit_info(c: &git2::Commit<'_>) -> CommitInfo {
    let a = c.author();
    CommitInfo {
        sha: c.id().to_string(),
        summary: summary_of(c),
        author: format!("{} <{}>", a.name().unwrap_or(""), a.email().unwrap_or("")),
        time: c.time().seconds(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scp_like_detection() {
        assert!(is_scp_like("git@github.com:acme/cfg.git"));
        assert!(is_scp_like("host:cfg"));
        assert!(!is_scp_like("/abs/path"));
        assert!(!is_scp_like("./rel:odd/x"));
        assert!(!is_scp_like("https://h/x"));
        assert!(!is_scp_like("C:/repo"));
    }
}
