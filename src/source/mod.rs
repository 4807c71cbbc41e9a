//! Git: clone/fetch (git2), the cheap "did the branch move" check, webhook
//! signature verification, local directory watch, and revert commit + push
//! with retry on non-fast-forward (never force-push).
//!
//! Owns the mirror clone in the state directory (`<state-dir>/repo.git`, a
//! bare repository with full history: shallow clones make reverts delete
//! files, so they are refused). Everything here is blocking (libgit2); the
//! controller calls it from `spawn_blocking`.
//!
//! Must not: decide what to revert (the controller says which service, which
//! commits are good) or print a URL's userinfo ([`redact_url`] everywhere).

pub mod propose;
pub mod revert;
pub mod signing;
pub mod watch;
pub mod webhook;

pub use propose::{Proposal, ProposeOutcome, revert_branch};
pub use revert::{
    CommitFact, GitWriter, RENDER_REVERT, RenderFailure, RevertFacts, RevertOutcome, RevertPlan,
    RevertRequest,
};

use crate::hub::CommitInfo;
use crate::manifest::tree::{IncrementalRenderer, TreeFile, TreeListing};
use crate::manifest::{self, Release};
use git2::{
    CertificateCheckStatus, Cred, CredentialType, Direction, FetchOptions, Oid, PushOptions,
    RemoteCallbacks, Repository,
};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of the Git source. Every message names the remote by its redacted URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("git remote {remote}: {message}")]
    Remote { remote: String, message: String },
    #[error("git remote {remote}: branch {branch:?} does not exist")]
    NoBranch { remote: String, branch: String },
    #[error("mirror {path}: {message}")]
    Mirror { path: PathBuf, message: String },
    #[error(
        "mirror {path} is a shallow clone; Floyd needs full history to revert safely (delete the directory and restart)"
    )]
    Shallow { path: PathBuf },
    #[error("export of commit {commit} to {path}: {message}")]
    Export {
        commit: String,
        path: PathBuf,
        message: String,
    },
    #[error("push to {remote} rejected for refs/heads/{branch}: {message}")]
    PushRejected {
        remote: String,
        branch: String,
        message: String,
        /// The remote moved (non-fast-forward): fetch, redo, retry.
        retryable: bool,
    },
    #[error("revert of {service}: {message}")]
    Revert { service: String, message: String },
    #[error("git: {0}")]
    Git(String),
    #[error(
        "git remote: no answer to the {what} within {seconds} s (the remote hangs or is very slow)"
    )]
    Timeout { what: &'static str, seconds: u64 },
    #[error("FLOYD_GIT_SIGNING_KEY {path}: {message}")]
    SigningKey { path: PathBuf, message: String },
}

impl Error {
    /// The remote refused the push for good (a protected branch, a
    /// pre-receive hook), not because the branch moved.
    pub fn refused_for_good(&self) -> bool {
        matches!(
            self,
            Error::PushRejected {
                retryable: false,
                ..
            }
        )
    }

    fn retryable_push(&self) -> bool {
        matches!(
            self,
            Error::PushRejected {
                retryable: true,
                ..
            }
        )
    }
}

/// Removes userinfo (user, password, token) from a URL for logs, errors and the API.
/// `https://tok@host/x` → `https://***@host/x`; `ssh://git@host/x` keeps the
/// plain user name (not a secret); scp-like `git@host:x` is left as is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let host = &authority[at + 1..];
    let keep_user = scheme.starts_with("ssh") && !userinfo.contains(':');
    if keep_user {
        format!("{scheme}://{userinfo}@{host}{path}")
    } else {
        format!("{scheme}://***@{host}{path}")
    }
}

/// Credentials for the remote. Never printed (Debug shows only what is set).
#[derive(Clone, Default)]
pub struct Credentials {
    /// HTTPS token (GitHub/GitLab/Gitea personal access token), sent as the password.
    pub token: Option<String>,
    /// User name for the token (default `x-access-token`, which GitHub, GitLab and Gitea accept).
    pub token_user: Option<String>,
    /// SSH private key file.
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file; when set, SSH host keys must match an entry.
    pub known_hosts: Option<PathBuf>,
    /// OpenSSH private key (unencrypted ed25519) that signs revert commits
    /// (git's `gpg.format=ssh`); see [`signing`].
    pub signing_key: Option<PathBuf>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ssh_key", &self.ssh_key)
            .field("known_hosts", &self.known_hosts)
            .field("signing_key", &self.signing_key)
            .finish()
    }
}

/// The environment variables [`Credentials::from_env`] reads (outside the
/// flags: credentials have no command-line form, so they never show in `ps`).
pub const CREDENTIAL_ENV: [&str; 6] = [
    ENV_GIT_TOKEN,
    ENV_GIT_TOKEN_FILE,
    ENV_GIT_USER,
    ENV_GIT_SSH_KEY,
    ENV_GIT_KNOWN_HOSTS,
    ENV_GIT_SIGNING_KEY,
];
const ENV_GIT_TOKEN: &str = "FLOYD_GIT_TOKEN";
const ENV_GIT_TOKEN_FILE: &str = "FLOYD_GIT_TOKEN_FILE";
const ENV_GIT_USER: &str = "FLOYD_GIT_USER";
const ENV_GIT_SSH_KEY: &str = "FLOYD_GIT_SSH_KEY";
const ENV_GIT_KNOWN_HOSTS: &str = "FLOYD_GIT_KNOWN_HOSTS";
const ENV_GIT_SIGNING_KEY: &str = "FLOYD_GIT_SIGNING_KEY";

impl Credentials {
    /// From the environment: `FLOYD_GIT_TOKEN` or `FLOYD_GIT_TOKEN_FILE`,
    /// `FLOYD_GIT_USER`, `FLOYD_GIT_SSH_KEY`, `FLOYD_GIT_KNOWN_HOSTS`,
    /// `FLOYD_GIT_SIGNING_KEY`.
    pub fn from_env() -> Result<Credentials, String> {
        let token = match (
            std::env::var(ENV_GIT_TOKEN).ok(),
            std::env::var_os(ENV_GIT_TOKEN_FILE),
        ) {
            (Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_string()),
            (_, Some(f)) => Some(
                std::fs::read_to_string(&f)
                    .map_err(|e| {
                        format!(
                            "FLOYD_GIT_TOKEN_FILE {}: cannot read: {e}",
                            Path::new(&f).display()
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        Ok(Credentials {
            token,
            token_user: std::env::var(ENV_GIT_USER).ok(),
            ssh_key: std::env::var_os(ENV_GIT_SSH_KEY).map(PathBuf::from),
            known_hosts: std::env::var_os(ENV_GIT_KNOWN_HOSTS).map(PathBuf::from),
            signing_key: std::env::var_os(ENV_GIT_SIGNING_KEY).map(PathBuf::from),
        })
    }
}

/// Where the config repo comes from.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// URL (https, ssh, scp-like, git, file) or a local path.
    pub url: String,
    pub branch: String,
    /// The bare mirror (created when missing).
    pub mirror: PathBuf,
    pub credentials: Credentials,
}

/// A new tip found by [`GitSource::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    pub commit: String,
}

/// The Git source: one remote, one branch, one bare mirror.
pub struct GitSource {
    cfg: SourceConfig,
    redacted: String,
    /// Fetches and pushes take turns (see [`revert::GitWriter`]).
    write_lock: std::sync::Mutex<()>,
    /// Signs revert commits when a signing key is configured.
    signer: Option<signing::Signer>,
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
const REVERT_REF: &str = "refs/floyd/revert";

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

    fn mirror_err(&self, e: impl fmt::Display) -> Error {
        Error::Mirror {
            path: self.cfg.mirror.clone(),
            message: e.to_string(),
        }
    }
    fn remote_err(&self, e: impl fmt::Display) -> Error {
        // libgit2 messages may quote the URL; strip userinfo from them too.
        let msg = e.to_string().replace(&self.cfg.url, &self.redacted);
        Error::Remote {
            remote: self.redacted.clone(),
            message: msg,
        }
    }
    fn repo(&self) -> Result<Repository, Error> {
        Repository::open_bare(&self.cfg.mirror).map_err(|e| self.mirror_err(e))
    }
    fn tracking_ref(&self) -> String {
        format!("{TRACKING_PREFIX}{}", self.cfg.branch)
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
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

    fn fetch_unlocked(&self) -> Result<String, Error> {
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
        let commit = find_commit(&repo, sha)?;
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
    fn push(&self, repo: &Repository, local_ref: &str) -> Result<(), Error> {
        self.push_to(repo, local_ref, &self.cfg.branch, false)
    }

    /// Pushes `local_ref` to `refs/heads/<branch>`; `force` only for Floyd's
    /// own `floyd/…` branches (see [`propose`]), never for the tracked one.
    fn push_to(
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

fn find_commit<'r>(repo: &'r Repository, sha: &str) -> Result<git2::Commit<'r>, Error> {
    let oid = Oid::from_str(sha).map_err(|e| Error::Git(format!("{sha:?}: {e}")))?;
    repo.find_commit(oid)
        .map_err(|e| Error::Git(format!("commit {sha}: {}", e.message())))
}

fn summary_of(c: &git2::Commit<'_>) -> String {
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

/// Lists `floyd.yaml` and the manifests under `services/` of `sha`'s tree
/// (under `subdir`), with the same rules as reading a directory: dot-files
/// skipped, nesting limited, symlinked files followed inside the tree,
/// symlinked directories not followed.
fn list_config_tree(
    repo: &Repository,
    sha: &str,
    subdir: Option<&Path>,
) -> Result<TreeListing, Error> {
    let err = |m: String| Error::Export {
        commit: sha.to_string(),
        path: subdir.map(Path::to_path_buf).unwrap_or_default(),
        message: m,
    };
    let commit = find_commit(repo, sha)?;
    let mut root = commit.tree().map_err(|e| err(e.to_string()))?;
    let sub = subdir.filter(|s| !s.as_os_str().is_empty() && *s != Path::new("."));
    if let Some(sub) = sub {
        let entry = root.get_path(sub).map_err(|_| {
            err(format!(
                "the commit has no directory {} (check --path)",
                sub.display()
            ))
        })?;
        root = repo
            .find_tree(entry.id())
            .map_err(|_| err(format!("{} is not a directory", sub.display())))?;
    }
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

fn blob_at(tree: &git2::Tree<'_>, path: &str) -> Option<Oid> {
    tree.get_path(Path::new(path)).ok().map(|e| e.id())
}

/// The revert commit message of CONTRACT.md ("Revert commits").
pub fn revert_message(
    services: &[String],
    reverted: &[String],
    summaries: &[String],
    failed_revision: &str,
    rolled_back_to: &str,
    reason: &str,
) -> String {
    let service = services.first().map(String::as_str).unwrap_or("");
    message_of_revert(
        services,
        reverted,
        summaries,
        service,
        &format!("Floyd rolled back {service} from revision {failed_revision} to {rolled_back_to}"),
        reason,
    )
}

/// The message of a revert of commits that made the branch stop rendering
/// (no rollout ran): the same format as [`revert_message`], with a sentence
/// saying which commit kept running; `services` are those whose rendered
/// spec differs from that commit's after the revert.
pub fn render_revert_message(
    services: &[String],
    reverted: &[String],
    summaries: &[String],
    kept: &str,
    reason: &str,
) -> String {
    message_of_revert(
        services,
        reverted,
        summaries,
        "rendering",
        &format!("Floyd kept commit {kept} running: the branch does not render"),
        reason,
    )
}

/// Title, one `This reverts commit` line per commit, `what happened:
/// reason.`, then the trailers (`Floyd-Revert-Of`, `Floyd-Service`,
/// `Floyd-Reason`). `broke` names what several reverted commits broke.
fn message_of_revert(
    services: &[String],
    reverted: &[String],
    summaries: &[String],
    broke: &str,
    what_happened: &str,
    reason: &str,
) -> String {
    let one_line: String = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = if reverted.len() == 1 {
        format!(
            "Revert \"{}\"",
            summaries.first().map(String::as_str).unwrap_or("")
        )
    } else {
        format!("Revert {} commits that broke {broke}", reverted.len())
    };
    let mut m = format!("{title}\n\n");
    for sha in reverted {
        m.push_str(&format!("This reverts commit {sha}.\n"));
    }
    let sentence_end = if one_line.ends_with('.') { "" } else { "." };
    m.push_str(&format!("\n{what_happened}: {one_line}{sentence_end}\n\n"));
    for sha in reverted {
        m.push_str(&format!("Floyd-Revert-Of: {sha}\n"));
    }
    for s in services {
        m.push_str(&format!("Floyd-Service: {s}\n"));
    }
    m.push_str(&format!("Floyd-Reason: {one_line}\n"));
    m
}

/// The shas named by `Floyd-Revert-Of:` trailers: non-empty for Floyd's own reverts.
pub fn revert_of(message: &str) -> Vec<String> {
    message
        .lines()
        .filter_map(|l| l.strip_prefix("Floyd-Revert-Of:"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Poll interval with ±10% jitter, so many controllers do not poll in step.
pub fn jittered(interval: Duration) -> Duration {
    use rand::Rng;
    let ms = interval.as_millis() as u64;
    let spread = ms / 10;
    if spread == 0 {
        return interval;
    }
    let j = rand::rng().random_range(0..=2 * spread);
    Duration::from_millis(ms - spread + j)
}

/// Whether `file` (OpenSSH known_hosts format) accepts `key` of type `kind`
/// for `host` on `port`: plain, wildcard (`*`, `?`) and negated (`!`) host
/// patterns, `[host]:port` entries, hashed entries (`|1|salt|hash`, as
/// `ssh-keygen -H` and `HashKnownHosts yes` write them), `@revoked` keys
/// (refused) and `@cert-authority` lines (skipped: certificates are not
/// supported).
fn known_hosts_match(
    file: &Path,
    host: &str,
    port: u16,
    kind: &str,
    key: &[u8],
) -> Result<bool, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("known_hosts {}: cannot read: {e}", file.display()))?;
    known_hosts_text_match(&text, host, port, kind, key)
        .map_err(|e| format!("known_hosts {}: {e}", file.display()))
}

fn known_hosts_text_match(
    text: &str,
    host: &str,
    port: u16,
    kind: &str,
    key: &[u8],
) -> Result<bool, String> {
    // The name OpenSSH looks up: `host`, or `[host]:port` off port 22.
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let mut found = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let mut first = parts.next();
        let marker = first.filter(|f| f.starts_with('@'));
        if marker.is_some() {
            first = parts.next();
        }
        let (Some(hosts), Some(k), Some(b64)) = (first, parts.next(), parts.next()) else {
            continue;
        };
        if k != kind || base64_decode(b64).as_deref() != Some(key) || !hosts_match(hosts, &name) {
            continue;
        }
        match marker {
            None => found = true,
            Some("@revoked") => return Err(format!("the {kind} host key of {name} is revoked")),
            Some(_) => {}
        }
    }
    Ok(found)
}

/// One known_hosts host field against `name`: a hashed entry, or
/// comma-separated patterns where a matching `!pattern` wins.
fn hosts_match(hosts: &str, name: &str) -> bool {
    if let Some(rest) = hosts.strip_prefix("|1|") {
        use hmac::Mac;
        let Some((salt, hash)) = rest.split_once('|') else {
            return false;
        };
        let (Some(salt), Some(hash)) = (base64_decode(salt), base64_decode(hash)) else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
            return false;
        };
        mac.update(name.as_bytes());
        return mac.verify_slice(&hash).is_ok();
    }
    let mut matched = false;
    for pattern in hosts.split(',') {
        match pattern.strip_prefix('!') {
            Some(neg) if glob_match(neg, name) => return false,
            Some(_) => {}
            None => matched |= glob_match(pattern, name),
        }
    }
    matched
}

/// OpenSSH host patterns: `*` any run of characters, `?` one; host names
/// compare without regard to case.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (
        pattern.to_ascii_lowercase().chars().collect(),
        name.to_ascii_lowercase().chars().collect(),
    );
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The SSH port of a remote URL (22 unless `ssh://host:port/...` says).
fn ssh_port(url: &str) -> u16 {
    url.strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("git+ssh://"))
        .or_else(|| url.strip_prefix("ssh+git://"))
        .and_then(|rest| {
            let authority = rest.split('/').next()?;
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (_, port) = host_port.rsplit_once(':')?;
            // `[::1]:2222`, not the colons inside an IPv6 literal.
            if host_port.starts_with('[') && !host_port.contains("]:") {
                return None;
            }
            port.parse().ok()
        })
        .unwrap_or(22)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_table() {
        for (input, want) in [
            (
                "https://github.com/acme/cfg.git",
                "https://github.com/acme/cfg.git",
            ),
            (
                "https://tok3n@github.com/acme/cfg.git",
                "https://***@github.com/acme/cfg.git",
            ),
            ("https://user:pa55@host:8443/x", "https://***@host:8443/x"),
            ("ssh://git@host/x.git", "ssh://git@host/x.git"),
            ("ssh://git:secret@host/x.git", "ssh://***@host/x.git"),
            ("git@github.com:acme/cfg.git", "git@github.com:acme/cfg.git"),
            ("/srv/git/cfg", "/srv/git/cfg"),
            ("http://a@b@host/p@q", "http://***@host/p@q"),
        ] {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn scp_like_detection() {
        assert!(is_scp_like("git@github.com:acme/cfg.git"));
        assert!(is_scp_like("host:cfg"));
        assert!(!is_scp_like("/abs/path"));
        assert!(!is_scp_like("./rel:odd/x"));
        assert!(!is_scp_like("https://h/x"));
        assert!(!is_scp_like("C:/repo"));
    }

    #[test]
    fn message_single_and_many() {
        let one = revert_message(
            &["web".into()],
            &["aaa".into()],
            &["web: v2".into()],
            "r2",
            "r1",
            "progress deadline exceeded:\n0 of 2 ready",
        );
        assert_eq!(
            one,
            "Revert \"web: v2\"\n\nThis reverts commit aaa.\n\nFloyd rolled back web from revision r2 to r1: progress deadline exceeded: 0 of 2 ready.\n\nFloyd-Revert-Of: aaa\nFloyd-Service: web\nFloyd-Reason: progress deadline exceeded: 0 of 2 ready\n"
        );
        let many = revert_message(
            &["web".into(), "api".into()],
            &["bbb".into(), "aaa".into()],
            &[],
            "r3",
            "r1",
            "x.",
        );
        assert!(many.ends_with("Floyd-Service: web\nFloyd-Service: api\nFloyd-Reason: x.\n"));
        assert!(many.starts_with("Revert 2 commits that broke web\n\nThis reverts commit bbb.\nThis reverts commit aaa.\n\n"));
        assert!(many.contains("to r1: x.\n"));
        assert_eq!(revert_of(&many), vec!["bbb".to_string(), "aaa".to_string()]);
        assert!(revert_of("Revert \"x\"\n\nThis reverts commit a.").is_empty());
    }

    /// Real `ssh-keygen -H` output for `git.example.com` and
    /// `[git.example.com]:2222` with one ed25519 key.
    const HASHED: &str = "|1|cj6Wq/RowfJfkGjQx6umBLqyeDc=|kyUA1a1M5TW7HayQXfKRycxlb/Y= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICMmxxZwjtKMdkt5yvXgr90ZcM1pLXgP6NTg+I4DYJ+G
|1|nGSj8/Y9b7SMv8WTCPUBrL+lyr4=|aa042ze4pdSUZX99BHluo1L2s9g= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICMmxxZwjtKMdkt5yvXgr90ZcM1pLXgP6NTg+I4DYJ+G
";
    const KEY_B64: &str = "AAAAC3NzaC1lZDI1NTE5AAAAICMmxxZwjtKMdkt5yvXgr90ZcM1pLXgP6NTg+I4DYJ+G";

    #[test]
    fn known_hosts_hashed_plain_patterns_ports_and_revoked() {
        let key = base64_decode(KEY_B64).unwrap();
        let other = {
            let mut k = key.clone();
            *k.last_mut().unwrap() ^= 1;
            k
        };
        let m = |text: &str, host: &str, port: u16, kind: &str, key: &[u8]| {
            known_hosts_text_match(text, host, port, kind, key)
        };
        // Hashed: the host on 22 and on 2222 each match their own line only.
        assert_eq!(
            m(HASHED, "git.example.com", 22, "ssh-ed25519", &key),
            Ok(true)
        );
        assert_eq!(
            m(HASHED, "git.example.com", 2222, "ssh-ed25519", &key),
            Ok(true)
        );
        assert_eq!(
            m(HASHED, "git.example.com", 2200, "ssh-ed25519", &key),
            Ok(false)
        );
        assert_eq!(
            m(HASHED, "git.example.org", 22, "ssh-ed25519", &key),
            Ok(false)
        );
        assert_eq!(
            m(HASHED, "git.example.com", 22, "ssh-ed25519", &other),
            Ok(false)
        );
        assert_eq!(m(HASHED, "git.example.com", 22, "ssh-rsa", &key), Ok(false));

        let plain = format!(
            "# comment\n\n*.example.com,!evil.example.com ssh-ed25519 {KEY_B64}\n[git.internal]:2222 ssh-ed25519 {KEY_B64}\n@cert-authority *.ca.example ssh-ed25519 {KEY_B64}\n"
        );
        assert_eq!(
            m(&plain, "Git.Example.com", 22, "ssh-ed25519", &key),
            Ok(true)
        );
        assert_eq!(
            m(&plain, "evil.example.com", 22, "ssh-ed25519", &key),
            Ok(false)
        );
        assert_eq!(
            m(&plain, "git.internal", 2222, "ssh-ed25519", &key),
            Ok(true)
        );
        assert_eq!(
            m(&plain, "git.internal", 22, "ssh-ed25519", &key),
            Ok(false),
            "port matters"
        );
        assert_eq!(
            m(&plain, "x.ca.example", 22, "ssh-ed25519", &key),
            Ok(false),
            "CA lines are not host keys"
        );

        let revoked = format!("{plain}@revoked * ssh-ed25519 {KEY_B64}\n");
        let err = m(&revoked, "git.example.com", 22, "ssh-ed25519", &key).unwrap_err();
        assert!(err.contains("revoked"), "{err}");
    }

    #[test]
    fn host_patterns_and_ssh_ports() {
        assert!(glob_match("*.example.com", "a.b.example.com"));
        assert!(glob_match("git?.example.com", "git1.example.com"));
        assert!(!glob_match("git?.example.com", "git.example.com"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a*c", "abd"));
        assert_eq!(ssh_port("ssh://git@host:2222/repo.git"), 2222);
        assert_eq!(ssh_port("ssh://host/repo.git"), 22);
        assert_eq!(ssh_port("git@host:org/repo.git"), 22);
        assert_eq!(ssh_port("ssh://git@[::1]:2200/r"), 2200);
        assert_eq!(ssh_port("ssh://git@[::1]/r"), 22);
    }

    #[test]
    fn base64_and_jitter() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("AAEC").unwrap(), vec![0, 1, 2]);
        assert!(base64_decode("a*b").is_none());
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(30));
            assert!(
                d >= Duration::from_secs(27) && d <= Duration::from_secs(33),
                "{d:?}"
            );
        }
    }
}
