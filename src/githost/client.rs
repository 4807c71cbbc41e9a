//! One HTTP client for the host API: the provider's auth header (marked
//! sensitive), JSON in and out, retries as [`super::retry`] decides. Errors
//! carry the method, the path and a short excerpt of the answer, with the
//! token replaced by `***` should the host echo it.

use super::retry::{self, Answer, Retry};
use super::{HostKind, Token};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A failed host API call.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {path}: rate limited for {}s more; trying again later", wait.as_secs())]
    RateLimited {
        method: String,
        path: String,
        wait: Duration,
    },
    #[error("{method} {path}: {message}")]
    Transport {
        method: String,
        path: String,
        message: String,
    },
    #[error("{method} {path}: unexpected answer: {message}")]
    Decode {
        method: String,
        path: String,
        message: String,
    },
    #[error("git host client: {0}")]
    Setup(String),
}

/// The host API client (cheap to clone).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    api: String,
    token: Token,
    max_wait: Duration,
}

const EXCERPT: usize = 300;

impl Client {
    pub fn new(
        kind: HostKind,
        api: &str,
        token: Token,
        max_wait: Duration,
    ) -> Result<Client, HttpError> {
        let mut headers = HeaderMap::new();
        let (name, value) = match kind {
            HostKind::Github => ("authorization", format!("Bearer {}", token.expose())),
            HostKind::Gitlab => ("private-token", token.expose().to_string()),
            HostKind::Gitea => ("authorization", format!("token {}", token.expose())),
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            HttpError::Setup("the token holds characters not allowed in a header".into())
        })?;
        v.set_sensitive(true);
        headers.insert(name, v);
        if kind == HostKind::Github {
            headers.insert(
                "accept",
                HeaderValue::from_static("application/vnd.github+json"),
            );
            headers.insert(
                "x-github-api-version",
                HeaderValue::from_static("2022-11-28"),
            );
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("floyd/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HttpError::Setup(e.to_string()))?;
        Ok(Client {
            http,
            api: api.trim_end_matches('/').to_string(),
            token,
            max_wait,
        })
    }

    pub fn with_max_wait(mut self, max_wait: Duration) -> Client {
        self.max_wait = max_wait;
        self
    }

    /// Sends `body` (JSON) to `path` (below the API base, starting with `/`),
    /// retrying as [`retry::decide`] says; decodes a JSON answer.
    pub async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, HttpError> {
        let text = self.call_text(method.clone(), path, body).await?;
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        serde_json::from_str(text).map_err(|e| HttpError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    /// Like [`Client::call`], ignoring the answer's body.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), HttpError> {
        self.call_text(method, path, body).await.map(|_| ())
    }

    async fn call_text<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<String, HttpError> {
        let url = format!("{}{path}", self.api);
        let shown = path.split('?').next().unwrap_or(path).to_string();
        let m = method.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut rb = self.http.request(method.clone(), &url);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let (answer, outcome) = match rb.send().await {
                Ok(resp) => {
                    let h = |n: &str| {
                        resp.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let answer = Answer {
                        status: Some(resp.status().as_u16()),
                        retry_after: h("retry-after"),
                        ratelimit_remaining: h("x-ratelimit-remaining")
                            .or_else(|| h("ratelimit-remaining")),
                        ratelimit_reset: h("x-ratelimit-reset").or_else(|| h("ratelimit-reset")),
                    };
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(text);
                    }
                    let excerpt: String = text.chars().take(EXCERPT).collect();
                    (
                        answer,
                        HttpError::Status {
                            method: m.clone(),
                            path: shown.clone(),
                            status: status.as_u16(),
                            message: self.token.redact(excerpt.trim()),
                        },
                    )
                }
                Err(e) => (
                    Answer::default(),
                    HttpError::Transport {
                        method: m.clone(),
                        path: shown.clone(),
                        message: self
                            .token
                            .redact(&crate::source::redact_url(&e.to_string())),
                    },
                ),
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match retry::decide(&answer, attempt, now, self.max_wait) {
                Retry::No | Retry::GiveUp => return Err(outcome),
                Retry::RateLimited(wait) => {
                    return Err(HttpError::RateLimited {
                        method: m,
                        path: shown,
                        wait,
                    });
                }
                Retry::After(d) => {
                    tracing::info!(method = %m, path = %shown, error = %outcome, retry_in = ?d, "git host call failed; retrying");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
}
