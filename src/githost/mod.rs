//! The Git host's API (GitHub and GitHub Enterprise, GitLab, Gitea/Forgejo):
//! revert pull/merge requests for protected branches ([`pr`]) and commit
//! statuses ([`status`]).
//!
//! Owns the host configuration (`--git-host`, `--git-host-api`,
//! `--git-host-token-file`, `--git-host-repo`, or inferred from the remote
//! URL), the token (read once, never logged: [`Token`]'s `Debug` and every
//! error redact it), and one HTTP client with retries ([`client`], the retry
//! arithmetic in [`retry`], pure).
//!
//! Must not: decide whether to revert (the controller's policy does) or touch
//! the Git mirror (the source does; [`pr::revert`] only calls it).

pub mod client;
mod gitea;
mod github;
mod gitlab;
pub mod pr;
pub mod retry;
pub mod status;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use client::{Client, HttpError};

/// Which API the host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostKind {
    /// github.com or GitHub Enterprise Server (`--git-host-api https://ghe.example.com/api/v3`).
    Github,
    /// gitlab.com or a self-managed GitLab (`--git-host-api https://gitlab.example.com/api/v4`).
    Gitlab,
    /// Gitea or Forgejo (`--git-host-api https://git.example.com/api/v1`).
    Gitea,
}

impl HostKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::Github => "github",
            HostKind::Gitlab => "gitlab",
            HostKind::Gitea => "gitea",
        }
    }

    /// The public API base of the hosted service.
    fn default_api(self) -> Option<&'static str> {
        match self {
            HostKind::Github => Some("https://api.github.com"),
            HostKind::Gitlab => Some("https://gitlab.com/api/v4"),
            HostKind::Gitea => None,
        }
    }
}

/// How a revert reaches the tracked branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RevertVia {
    /// Push to the branch; a push refused by branch protection becomes a pull request.
    #[default]
    Push,
    /// Always through a pull/merge request.
    PullRequest,
}

/// The host token. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
    /// Replaces the token wherever it appears in `s` (for error texts).
    pub fn redact(&self, s: &str) -> String {
        if self.0.len() < 4 {
            return s.to_string();
        }
        s.replace(&self.0, "***")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Configuration errors, each naming the flag or variable to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        message: message.into(),
    }
}

/// What the command line (or environment) says about the host.
#[derive(Debug, Clone, Default)]
pub struct HostArgs {
    pub kind: Option<HostKind>,
    pub api: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `FLOYD_GIT_HOST_TOKEN` (the file wins when both are set).
    pub token: Option<String>,
    /// `owner/name` (GitLab: the project path, groups included).
    pub repo: Option<String>,
    pub via: RevertVia,
    /// Dashboard link in commit statuses.
    pub public_url: Option<String>,
    /// Above this many services in one commit, one aggregated status.
    pub status_aggregate_above: usize,
}

/// A configured host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub kind: HostKind,
    /// API base URL without a trailing slash.
    pub api: String,
    /// `owner/name` or the GitLab project path.
    pub repo: String,
    pub token: Token,
    pub via: RevertVia,
    pub public_url: Option<String>,
    pub status_aggregate_above: usize,
}

/// The host from the remote URL when it is unambiguous: `(kind, api, repo path)`.
/// `https://github.com/acme/cfg.git`, `git@github.com:acme/cfg.git`,
/// `ssh://git@gitlab.com/group/sub/cfg.git`.
pub fn infer(remote: &str) -> Option<(HostKind, &'static str, String)> {
    let (host, path) = host_and_path(remote)?;
    let kind = match host.to_ascii_lowercase().as_str() {
        "github.com" | "www.github.com" => HostKind::Github,
        "gitlab.com" | "www.gitlab.com" => HostKind::Gitlab,
        _ => return None,
    };
    Some((kind, kind.default_api()?, path))
}

/// The repository path of a remote URL (`owner/name`, no `.git`).
pub fn repo_path(remote: &str) -> Option<String> {
    host_and_path(remote).map(|(_, p)| p)
}

fn host_and_path(remote: &str) -> Option<(String, String)> {
    let (host, path) = if let Some((_, rest)) = remote.split_once("://") {
        let (authority, path) = rest.split_once('/')?;
        let host = authority.rsplit('@').next()?;
        let host = host.split(':').next()?;
        (host.to_string(), path.to_string())
    } else {
        // scp-like user@host:path
        let (authority, path) = remote.split_once(':')?;
        if authority.contains('/') {
            return None;
        }
        let host = authority.rsplit('@').next()?;
        (host.to_string(), path.to_string())
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).to_string();
    (!host.is_empty() && !path.is_empty()).then_some((host, path))
}

impl HostConfig {
    /// Resolves the host from flags and the remote URL. `Ok(None)`: no host
    /// configured and none inferable (Floyd works without one, pushing reverts).
    pub fn resolve(args: &HostArgs, remote: &str) -> Result<Option<HostConfig>, ConfigError> {
        let inferred = infer(remote);
        let kind = match (args.kind, &inferred) {
            (Some(k), _) => k,
            (None, Some((k, _, _))) => *k,
            (None, None) => {
                if args.api.is_some() || args.token_file.is_some() || args.repo.is_some() {
                    return Err(invalid(
                        "--git-host",
                        "the host kind cannot be told from the remote URL; give --git-host github|gitlab|gitea",
                    ));
                }
                if args.via == RevertVia::PullRequest {
                    return Err(invalid(
                        "--revert-via",
                        "pull-request needs a Git host: give --git-host, --git-host-api and --git-host-token-file",
                    ));
                }
                return Ok(None);
            }
        };
        let same_kind = inferred.as_ref().filter(|(k, _, _)| *k == kind);
        let api = match (&args.api, same_kind, kind.default_api()) {
            (Some(a), _, _) => a.clone(),
            (None, Some((_, a, _)), _) => a.to_string(),
            (None, None, Some(a)) => a.to_string(),
            (None, None, None) => {
                return Err(invalid(
                    "--git-host-api",
                    format!(
                        "a {} host needs its API URL, e.g. https://git.example.com/api/v1",
                        kind.as_str()
                    ),
                ));
            }
        };
        let api = check_api(&api)?;
        let repo = match (&args.repo, repo_path(remote)) {
            (Some(r), _) => r.trim_matches('/').to_string(),
            (None, Some(p)) => p,
            (None, None) => {
                return Err(invalid(
                    "--git-host-repo",
                    "cannot tell the repository from the remote URL; give owner/name",
                ));
            }
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let ok = match kind {
            HostKind::Github | HostKind::Gitea => parts.len() == 2,
            HostKind::Gitlab => parts.len() >= 2,
        } && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
        if !ok {
            return Err(invalid(
                "--git-host-repo",
                format!(
                    "{repo:?} is not a repository path; give owner/name{}",
                    if kind == HostKind::Gitlab {
                        " (or group/subgroup/name)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let token = match (&args.token_file, &args.token) {
            (Some(f), _) => read_token(f)?,
            (None, Some(t)) if !t.trim().is_empty() => Token::new(t.trim()),
            _ => {
                return Err(invalid(
                    "--git-host-token-file",
                    format!(
                        "a {} host needs a token (--git-host-token-file or FLOYD_GIT_HOST_TOKEN); see docs/operations.md, \"Protected branches\", for the scopes",
                        kind.as_str()
                    ),
                ));
            }
        };
        Ok(Some(HostConfig {
            kind,
            api,
            repo,
            token,
            via: args.via,
            public_url: args.public_url.clone(),
            status_aggregate_above: args.status_aggregate_above,
        }))
    }
}

fn check_api(api: &str) -> Result<String, ConfigError> {
    match reqwest::Url::parse(api) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                return Err(invalid(
                    "--git-host-api",
                    "the URL must not hold credentials; put the token in --git-host-token-file",
                ));
            }
            Ok(api.trim_end_matches('/').to_string())
        }
        _ => Err(invalid(
            "--git-host-api",
            format!(
                "{} is not an http(s) URL; give e.g. https://api.github.com",
                crate::source::redact_url(api)
            ),
        )),
    }
}

fn read_token(f: &Path) -> Result<Token, ConfigError> {
    let s = std::fs::read_to_string(f).map_err(|e| {
        invalid(
            "--git-host-token-file",
            format!("{}: cannot read: {e}", f.display()),
        )
    })?;
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(
            "--git-host-token-file",
            format!("{} is empty", f.display()),
        ));
    }
    if t.contains(char::is_whitespace) {
        return Err(invalid(
            "--git-host-token-file",
            format!(
                "{} holds more than one word; put only the token in it",
                f.display()
            ),
        ));
    }
    Ok(Token::new(t))
}

/// A pull/merge request as Floyd needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// GitHub/Gitea number, GitLab iid.
    pub number: u64,
    pub url: String,
    pub head: String,
}

/// What a revert pull request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrContent {
    pub title: String,
    pub body: String,
    pub head: String,
    pub base: String,
    pub labels: Vec<String>,
}

/// A commit status state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    Pending,
    Success,
    Failure,
}

/// One commit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub sha: String,
    pub state: StatusState,
    /// `floyd/<service>` or `floyd` (aggregated).
    pub context: String,
    pub description: String,
    pub target_url: Option<String>,
}

/// The host API: one client, one repository.
#[derive(Debug, Clone)]
pub struct GitHost {
    pub cfg: HostConfig,
    client: Client,
}

/// Errors talking to the host (the token is never in them).
pub type Error = HttpError;

impl GitHost {
    /// `max_wait`: the longest a call waits for a rate limit to reset before
    /// giving up with [`HttpError::RateLimited`].
    pub fn new(cfg: HostConfig, max_wait: Duration) -> Result<GitHost, Error> {
        let client = Client::new(cfg.kind, &cfg.api, cfg.token.clone(), max_wait)?;
        Ok(GitHost { cfg, client })
    }

    /// The same host with another rate-limit wait (the status task waits longer).
    pub fn with_max_wait(&self, max_wait: Duration) -> GitHost {
        let mut h = self.clone();
        h.client = h.client.with_max_wait(max_wait);
        h
    }

    /// The open pull request from `head` into `base`, if any.
    pub async fn find_open_pr(&self, head: &str, base: &str) -> Result<Option<PullRequest>, Error> {
        match self.cfg.kind {
            HostKind::Github => {
                github::find_open_pr(&self.client, &self.cfg.repo, head, base).await
            }
            HostKind::Gitlab => {
                gitlab::find_open_mr(&self.client, &self.cfg.repo, head, base).await
            }
            HostKind::Gitea => gitea::find_open_pr(&self.client, &self.cfg.repo, head, base).await,
        }
    }

    pub async fn create_pr(&self, c: &PrContent) -> Result<PullRequest, Error> {
        match self.cfg.kind {
            HostKind::Github => github::create_pr(&self.client, &self.cfg.repo, c).await,
            HostKind::Gitlab => gitlab::create_mr(&self.client, &self.cfg.repo, c).await,
            HostKind::Gitea => gitea::create_pr(&self.client, &self.cfg.repo, c).await,
        }
    }

    pub async fn update_pr(&self, number: u64, c: &PrContent) -> Result<(), Error> {
        match self.cfg.kind {
            HostKind::Github => github::update_pr(&self.client, &self.cfg.repo, number, c).await,
            HostKind::Gitlab => gitlab::update_mr(&self.client, &self.cfg.repo, number, c).await,
            HostKind::Gitea => gitea::update_pr(&self.client, &self.cfg.repo, number, c).await,
        }
    }

    /// Comments on the pull request, then closes it.
    pub async fn close_pr(&self, number: u64, comment: &str) -> Result<(), Error> {
        match self.cfg.kind {
            HostKind::Github => {
                github::close_pr(&self.client, &self.cfg.repo, number, comment).await
            }
            HostKind::Gitlab => {
                gitlab::close_mr(&self.client, &self.cfg.repo, number, comment).await
            }
            HostKind::Gitea => gitea::close_pr(&self.client, &self.cfg.repo, number, comment).await,
        }
    }

    /// Open pull requests whose head branch starts with `prefix`.
    pub async fn list_open_prs(&self, prefix: &str, base: &str) -> Result<Vec<PullRequest>, Error> {
        let all = match self.cfg.kind {
            HostKind::Github => github::list_open_prs(&self.client, &self.cfg.repo, base).await?,
            HostKind::Gitlab => gitlab::list_open_mrs(&self.client, &self.cfg.repo, base).await?,
            HostKind::Gitea => gitea::list_open_prs(&self.client, &self.cfg.repo, base).await?,
        };
        Ok(all
            .into_iter()
            .filter(|p| p.head.starts_with(prefix))
            .collect())
    }

    pub async fn set_status(&self, s: &CommitStatus) -> Result<(), Error> {
        match self.cfg.kind {
            HostKind::Github => github::set_status(&self.client, &self.cfg.repo, s).await,
            HostKind::Gitlab => gitlab::set_status(&self.client, &self.cfg.repo, s).await,
            HostKind::Gitea => gitea::set_status(&self.client, &self.cfg.repo, s).await,
        }
    }
}

/// Percent-encodes one path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
