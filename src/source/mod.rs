//! Git: clone/fetch (git2), the cheap "did the branch move" check, webhook
//! signature verification, local directory watch, and revert commit + push
//! with retry on non-fast-forward (never force-push).
//!
//! By concept: [`credentials`] (from the environment, URL redaction),
//! [`known_hosts`] (SSH host keys), [`mirror`] (the bare clone: fetch,
//! export, render, push), [`tree`] (a commit's config files), [`message`]
//! (revert commit messages), [`revert`] and [`propose`] (writing reverts),
//! [`signing`], [`watch`] (local directories), [`webhook`].
//!
//! Owns the mirror clone in the state directory (`<state-dir>/repo.git`, a
//! bare repository with full history: shallow clones make reverts delete
//! files, so they are refused). Everything here is blocking (libgit2); the
//! controller calls it from `spawn_blocking`.
//!
//! Must not: decide what to revert (the controller says which service, which
//! commits are good) or print a URL's userinfo ([`redact_url`] everywhere).

mod credentials;
mod known_hosts;
mod message;
mod mirror;
pub mod propose;
pub mod revert;
pub mod signing;
mod tree;
pub mod watch;
pub mod webhook;

pub use credentials::{CREDENTIAL_ENV, Credentials, redact_url};
pub use message::{render_revert_message, revert_message, revert_of};
pub use mirror::GitSource;
pub use propose::{Proposal, ProposeOutcome, revert_branch};
pub use revert::{
    CommitFact, GitWriter, RENDER_REVERT, RenderFailure, RevertFacts, RevertOutcome, RevertPlan,
    RevertRequest,
};

use std::path::PathBuf;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(30));
            assert!(
                d >= Duration::from_secs(27) && d <= Duration::from_secs(33),
                "{d:?}"
            );
        }
    }
}
