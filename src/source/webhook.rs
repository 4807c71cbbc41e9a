//! Push webhooks: signature/token verification (constant time) and payload
//! parsing for GitHub, GitLab, Gitea/Forgejo, Bitbucket and a generic HMAC
//! form. The HTTP route lives in `server`; it calls [`verify`].

use axum::http::HeaderMap;

/// Which Git host sent the webhook (the path `/hooks/{provider}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Github,
    Gitlab,
    Gitea,
    Bitbucket,
    Generic,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "github" => Some(Provider::Github),
            "gitlab" => Some(Provider::Gitlab),
            "gitea" => Some(Provider::Gitea),
            "bitbucket" => Some(Provider::Bitbucket),
            "generic" => Some(Provider::Generic),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
            Provider::Generic => "generic",
        }
    }
}

/// A verified push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Full ref, e.g. `refs/heads/main`; `None` for a non-push event (ping).
    pub git_ref: Option<String>,
    /// The new tip, when the payload says.
    pub after: Option<String>,
    /// Delivery id header, for de-duplication.
    pub delivery: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// Bad or missing signature/token: HTTP 401. Never includes the secret.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Malformed payload: HTTP 400.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Verify `body` against `secret` per the provider's scheme, then parse the push.
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<Push, WebhookError> {
    let _ = (provider, headers, body, secret);
    Err(WebhookError::Unauthorized("webhooks not built yet".into()))
}
