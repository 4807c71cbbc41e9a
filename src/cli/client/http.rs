//! The API client: one small single-threaded runtime, one-line errors, exit
//! codes by status.

use super::{Output, ServerArgs};
use crate::cli::CliError;
use crate::hub::ServiceView;
use crate::server::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// An API client over a small single-threaded runtime.
pub(super) struct Client {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
    pub(super) output: Output,
    pub(super) token: Option<Secret>,
    pub(super) rt: tokio::runtime::Runtime,
}

#[derive(serde::Deserialize)]
pub(super) struct ErrorBody {
    error: String,
}

impl Client {
    pub(super) fn new(
        a: &ServerArgs,
        token_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Client> {
        let output = a.output;
        let token = match token_file {
            Some(p) => Some(Secret::from_file(p).map_err(|e| CliError::usage(e.to_string()))?),
            None => None,
        };
        let base = a.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "--server {base:?}: give a URL such as http://127.0.0.1:9180"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("floyd-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build HTTP client: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::failed(format!("cannot start runtime: {e}")))?;
        Ok(Client {
            base,
            http,
            output,
            token,
            rt,
        })
    }

    pub(super) fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        let why = if e.is_connect() {
            "connection refused or host unreachable".to_string()
        } else if e.is_timeout() {
            "timed out".to_string()
        } else {
            e.without_url_ref()
        };
        CliError::unreachable(format!(
            "cannot reach Floyd at {}: {why} (is `floyd run` running? set --server or FLOYD_SERVER)",
            self.base
        ))
    }

    pub(super) async fn check(&self, res: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let code = res.status();
        if code.is_success() {
            return Ok(res);
        }
        let text = res.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| text.trim().to_string());
        let hint = if code == reqwest::StatusCode::UNAUTHORIZED {
            " (pass --api-token-file or set FLOYD_API_TOKEN_FILE)"
        } else {
            ""
        };
        let msg = format!("{}: {msg}{hint}", code.as_u16());
        Err(match status_exit_code(code) {
            1 => CliError::failed(msg),
            2 => CliError::usage(msg),
            _ => CliError::unreachable(msg),
        })
    }

    pub(super) async fn get_async<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let res = self.check(res).await?;
        res.json()
            .await
            .map_err(|e| CliError::unreachable(format!("unexpected answer from {path}: {e}")))
    }

    pub(super) fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.rt.block_on(self.get_async(path))
    }

    pub(super) fn print_json<T: Serialize>(&self, v: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

/// The exit code for an API error status: the request was wrong (unknown
/// service, missing token) 2; refused as asked (nothing to promote) 1; the
/// server could not serve it (controller not running, timeout) 3.
pub(super) fn status_exit_code(code: reqwest::StatusCode) -> u8 {
    if code == reqwest::StatusCode::CONFLICT {
        1
    } else if code.is_client_error() {
        2
    } else {
        3
    }
}

pub(super) trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}
impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        // Our URLs carry no credentials, but keep messages short and uniform.
        let mut s = self.to_string();
        if let Some(u) = self.url() {
            s = s.replace(&format!(" for url ({u})"), "");
        }
        s
    }
}

#[derive(serde::Deserialize, Serialize)]
pub(super) struct ServiceList {
    pub(super) services: Vec<ServiceView>,
}

pub(super) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
