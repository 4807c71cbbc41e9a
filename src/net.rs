//! Outbound HTTP that a hostile or broken endpoint cannot abuse: gate
//! webhooks, Prometheus queries and notifications go to URLs a commit
//! names, so the client follows redirects only within the same origin
//! (scheme, host and port) and bodies are read up to a cap.

use std::time::Duration;

/// Redirects followed within one origin.
const MAX_REDIRECTS: usize = 5;

/// Largest gate answer read (a Prometheus vector of a few series, a
/// webhook's short reason): larger ones are an error, not a memory cost.
pub const MAX_GATE_BODY_BYTES: usize = 1024 * 1024;

/// The redirect rule: same origin only, at most [`MAX_REDIRECTS`]. A gate
/// URL redirected to another host (an internal address, a metadata
/// service) is refused rather than followed with Floyd's request.
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if attempt.url().origin() != first.origin() {
            let to = attempt
                .url()
                .host_str()
                .unwrap_or("another origin")
                .to_string();
            attempt.error(format!(
                "redirect to another origin ({to}) refused; point the URL at its final address"
            ))
        } else {
            attempt.follow()
        }
    })
}

/// The client for gates (webhook and Prometheus): a connect timeout, the
/// same-origin redirect rule; per-request timeouts are the caller's.
pub fn gate_client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(same_origin_redirects())
        .user_agent(concat!("floyd/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Why a capped body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Read(String),
    #[error("answer is not valid JSON: {0}")]
    Json(String),
}

/// The body of `resp`, at most `limit` bytes: refused from its
/// `Content-Length` when it says more, and stopped as soon as a streamed
/// body crosses the limit.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url().to_string()))?
    {
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// [`read_capped`] parsed as JSON.
pub async fn json_capped<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    limit: usize,
) -> Result<T, BodyError> {
    let bytes = read_capped(resp, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| BodyError::Json(e.to_string()))
}

/// [`read_capped`] as text (invalid UTF-8 replaced).
pub async fn text_capped(resp: reqwest::Response, limit: usize) -> Result<String, BodyError> {
    let bytes = read_capped(resp, limit).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
