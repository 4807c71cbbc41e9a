//! Credentials for the remote, from the environment only (never flags, so
//! never in `ps`), and the URL redaction every message goes through.

use std::fmt;
use std::path::{Path, PathBuf};

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
}
