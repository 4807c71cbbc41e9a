//! Push webhooks: signature/token verification (constant time) and payload
//! parsing for GitHub, GitLab, Gitea/Forgejo, Bitbucket and a generic HMAC
//! form. The HTTP route lives in `server`; it calls [`verify`].
//!
//! Schemes (the secret is the same file, `--webhook-secret-file`):
//!
//! | provider | header | value |
//! |---|---|---|
//! | GitHub | `X-Hub-Signature-256` | `sha256=` + hex HMAC-SHA256 of the raw body |
//! | GitLab | `X-Gitlab-Token` | the secret itself (compared in constant time) |
//! | Gitea / Forgejo | `X-Gitea-Signature` (or `X-Forgejo-Signature`) | hex HMAC-SHA256, no prefix; checked before the GitHub header Gitea also sends |
//! | Bitbucket | `X-Hub-Signature` | `sha256=` + hex HMAC-SHA256 |
//! | generic | `X-Floyd-Signature` | `sha256=` + hex HMAC-SHA256 of the raw body |
//!
//! For the generic form, the body is JSON `{"ref": "refs/heads/main", "after": "<sha>"}`
//! (both optional) and the delivery id is `X-Floyd-Delivery`.
//!
//! Must not: log or return the secret or the received signature.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

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
            "gitea" | "forgejo" => Some(Provider::Gitea),
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

impl Push {
    /// Whether this push moved `branch` (a short name like `main` or a full ref).
    pub fn is_for_branch(&self, branch: &str) -> bool {
        match &self.git_ref {
            Some(r) => r == branch || r.strip_prefix("refs/heads/").is_some_and(|b| b == branch),
            None => false,
        }
    }
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

type HmacSha256 = Hmac<Sha256>;

/// Verify `body` against `secret` per the provider's scheme, then parse the push.
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<Push, WebhookError> {
    if secret.is_empty() {
        // An empty secret would make every HMAC forgeable by anyone who knows that.
        return Err(WebhookError::Unauthorized(
            "no webhook secret is configured (--webhook-secret-file)".into(),
        ));
    }
    match provider {
        Provider::Github => check_hmac(
            headers,
            "x-hub-signature-256",
            Some("sha256="),
            body,
            secret,
        )?,
        Provider::Bitbucket => {
            check_hmac(headers, "x-hub-signature", Some("sha256="), body, secret)?
        }
        Provider::Generic => {
            check_hmac(headers, "x-floyd-signature", Some("sha256="), body, secret)?
        }
        Provider::Gitea => {
            // Gitea and Forgejo also send GitHub's headers; their own come first.
            if headers.contains_key("x-gitea-signature") {
                check_hmac(headers, "x-gitea-signature", None, body, secret)?
            } else if headers.contains_key("x-forgejo-signature") {
                check_hmac(headers, "x-forgejo-signature", None, body, secret)?
            } else {
                check_hmac(
                    headers,
                    "x-hub-signature-256",
                    Some("sha256="),
                    body,
                    secret,
                )?
            }
        }
        Provider::Gitlab => {
            let token = header(headers, "x-gitlab-token").ok_or_else(|| {
                WebhookError::Unauthorized("missing X-Gitlab-Token header".into())
            })?;
            // ct_eq on unequal lengths returns false without leaking the secret's bytes.
            if !bool::from(token.as_bytes().ct_eq(secret)) {
                return Err(WebhookError::Unauthorized(
                    "X-Gitlab-Token does not match the configured secret".into(),
                ));
            }
        }
    }
    let mut push = parse_payload(provider, headers, body)?;
    push.delivery = delivery_id(provider, headers);
    Ok(push)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn check_hmac(
    headers: &HeaderMap,
    name: &str,
    prefix: Option<&str>,
    body: &[u8],
    secret: &[u8],
) -> Result<(), WebhookError> {
    let display = display_header(name);
    let value = header(headers, name)
        .ok_or_else(|| WebhookError::Unauthorized(format!("missing {display} header")))?;
    let hex_part = match prefix {
        Some(p) => value.strip_prefix(p).ok_or_else(|| {
            WebhookError::Unauthorized(format!("{display} must start with {p:?}"))
        })?,
        None => value.strip_prefix("sha256=").unwrap_or(value),
    };
    let sig = hex::decode(hex_part)
        .map_err(|_| WebhookError::Unauthorized(format!("{display} is not hex")))?;
    let mut mac = HmacSha256::new_from_slice(secret)
        .map_err(|_| WebhookError::Unauthorized("unusable webhook secret".into()))?;
    mac.update(body);
    // verify_slice is constant time and rejects truncated signatures (length must be 32).
    mac.verify_slice(&sig).map_err(|_| {
        WebhookError::Unauthorized(format!(
            "{display} does not match the body (check the webhook secret)"
        ))
    })
}

fn display_header(name: &str) -> &'static str {
    match name {
        "x-hub-signature-256" => "X-Hub-Signature-256",
        "x-hub-signature" => "X-Hub-Signature",
        "x-gitea-signature" => "X-Gitea-Signature",
        "x-forgejo-signature" => "X-Forgejo-Signature",
        "x-floyd-signature" => "X-Floyd-Signature",
        _ => "signature",
    }
}

fn delivery_id(provider: Provider, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match provider {
        Provider::Github => &["x-github-delivery"],
        Provider::Gitea => &[
            "x-gitea-delivery",
            "x-forgejo-delivery",
            "x-github-delivery",
        ],
        Provider::Gitlab => &["x-gitlab-event-uuid", "idempotency-key", "x-request-id"],
        Provider::Bitbucket => &["x-request-uuid", "x-hook-uuid"],
        Provider::Generic => &["x-floyd-delivery", "x-request-id"],
    };
    names
        .iter()
        .find_map(|n| header(headers, n))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn parse_payload(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Push, WebhookError> {
    let empty = Push {
        git_ref: None,
        after: None,
        delivery: None,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(empty);
    }
    if header(headers, "content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        return Err(WebhookError::Malformed(
            "form-encoded payloads are not supported: set the webhook's content type to application/json".into(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        WebhookError::Malformed(format!(
            "body is not JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if !v.is_object() {
        return Err(WebhookError::Malformed("body is not a JSON object".into()));
    }
    let s = |x: &serde_json::Value| x.as_str().map(str::to_string);
    match provider {
        Provider::Bitbucket => {
            // push.changes[].new: {type: "branch", name: "main", target: {hash}}
            let change = v
                .pointer("/push/changes")
                .and_then(|c| c.as_array())
                .and_then(|c| {
                    c.iter()
                        .find(|c| c.get("new").is_some_and(|n| !n.is_null()))
                });
            Ok(match change {
                Some(c) => Push {
                    git_ref: c
                        .pointer("/new/name")
                        .and_then(|n| n.as_str())
                        .filter(|_| c.pointer("/new/type").and_then(|t| t.as_str()) != Some("tag"))
                        .map(|n| format!("refs/heads/{n}")),
                    after: c.pointer("/new/target/hash").and_then(s),
                    delivery: None,
                },
                None => empty,
            })
        }
        _ => Ok(Push {
            git_ref: v.get("ref").and_then(s),
            after: v
                .get("after")
                .and_then(s)
                .or_else(|| v.get("checkout_sha").and_then(s)),
            delivery: None,
        }),
    }
}

/// `sha256=<hex>` HMAC of `body` under `secret`: what a sender puts in
/// `X-Hub-Signature-256` / `X-Floyd-Signature`. For tests, benches and scripts.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// The metrics are initialised for every provider, by the names the
    /// webhook paths parse to.
    #[test]
    fn metrics_know_every_provider_by_its_name() {
        for p in crate::telemetry::metrics::WEBHOOK_PROVIDERS {
            let parsed = Provider::parse(p).map(|x| x.as_str());
            assert_eq!(parsed, Some(*p));
        }
    }

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const DOC_SIG: &str = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn github_documentation_vector() {
        assert_eq!(sign(SECRET, b"Hello, World!"), format!("sha256={DOC_SIG}"));
        let headers = h(&[("x-hub-signature-256", &format!("sha256={DOC_SIG}"))]);
        // Not JSON, but the signature check comes first; the body then fails to parse.
        assert!(matches!(
            verify(Provider::Github, &headers, b"Hello, World!", SECRET),
            Err(WebhookError::Malformed(_))
        ));
        // One flipped bit is a 401.
        let mut bad = DOC_SIG.to_string();
        bad.replace_range(0..1, "8");
        let headers = h(&[("x-hub-signature-256", &format!("sha256={bad}"))]);
        assert!(matches!(
            verify(Provider::Github, &headers, b"Hello, World!", SECRET),
            Err(WebhookError::Unauthorized(_))
        ));
    }

    #[test]
    fn signatures_table() {
        let body = br#"{"ref":"refs/heads/main","after":"abc123"}"#;
        let good = sign(SECRET, body);
        let good_hex = good.trim_start_matches("sha256=").to_string();
        let truncated = good[..good.len() - 2].to_string();
        let wrong = sign(b"other", body);
        let cases: Vec<(Provider, HeaderMap, bool)> = vec![
            (Provider::Github, h(&[("x-hub-signature-256", &good)]), true),
            (
                Provider::Github,
                h(&[("x-hub-signature-256", &wrong)]),
                false,
            ),
            (
                Provider::Github,
                h(&[("x-hub-signature-256", &truncated)]),
                false,
            ),
            (
                Provider::Github,
                h(&[("x-hub-signature-256", &good_hex)]),
                false,
            ),
            (
                Provider::Github,
                h(&[("x-hub-signature-256", "sha256=zz")]),
                false,
            ),
            (Provider::Github, h(&[]), false),
            (Provider::Github, h(&[("x-hub-signature", &good)]), false),
            (Provider::Bitbucket, h(&[("x-hub-signature", &good)]), true),
            (
                Provider::Bitbucket,
                h(&[("x-hub-signature", &wrong)]),
                false,
            ),
            (Provider::Generic, h(&[("x-floyd-signature", &good)]), true),
            (
                Provider::Generic,
                h(&[("x-floyd-signature", &truncated)]),
                false,
            ),
            (
                Provider::Gitea,
                h(&[("x-gitea-signature", &good_hex)]),
                true,
            ),
            (
                Provider::Gitea,
                h(&[("x-forgejo-signature", &good_hex)]),
                true,
            ),
            // Gitea's own header wins over the GitHub one it also sends.
            (
                Provider::Gitea,
                h(&[
                    ("x-gitea-signature", &wrong[7..]),
                    ("x-hub-signature-256", &good),
                ]),
                false,
            ),
            (Provider::Gitea, h(&[("x-hub-signature-256", &good)]), true),
            (
                Provider::Gitlab,
                h(&[("x-gitlab-token", "It's a Secret to Everybody")]),
                true,
            ),
            (
                Provider::Gitlab,
                h(&[("x-gitlab-token", "It's a Secret")]),
                false,
            ),
            (Provider::Gitlab, h(&[("x-gitlab-token", "")]), false),
            (Provider::Gitlab, h(&[]), false),
        ];
        for (i, (p, headers, ok)) in cases.into_iter().enumerate() {
            let r = verify(p, &headers, body, SECRET);
            assert_eq!(r.is_ok(), ok, "case {i} {p:?}: {r:?}");
            if let Err(e) = r {
                assert!(matches!(e, WebhookError::Unauthorized(_)), "case {i}: {e}");
                assert!(!e.to_string().contains("Secret"), "case {i} leaks: {e}");
            }
        }
    }

    #[test]
    fn empty_secret_is_refused() {
        let body = b"{}";
        let headers = h(&[("x-hub-signature-256", &sign(b"", body))]);
        assert!(matches!(
            verify(Provider::Github, &headers, body, b""),
            Err(WebhookError::Unauthorized(_))
        ));
    }

    #[test]
    fn payloads_parse() {
        let body = br#"{"ref":"refs/heads/dev","after":"0123abcd","repository":{}}"#;
        let headers = h(&[
            ("x-hub-signature-256", &sign(SECRET, body)),
            ("x-github-delivery", "d-1"),
        ]);
        let p = verify(Provider::Github, &headers, body, SECRET).unwrap();
        assert_eq!(p.git_ref.as_deref(), Some("refs/heads/dev"));
        assert_eq!(p.after.as_deref(), Some("0123abcd"));
        assert_eq!(p.delivery.as_deref(), Some("d-1"));
        assert!(p.is_for_branch("dev"));
        assert!(!p.is_for_branch("main"));

        let bb = br#"{"push":{"changes":[{"old":null,"new":{"type":"branch","name":"main","target":{"hash":"feed"}}}]}}"#;
        let headers = h(&[
            ("x-hub-signature", &sign(SECRET, bb)),
            ("x-request-uuid", "u-9"),
        ]);
        let p = verify(Provider::Bitbucket, &headers, bb, SECRET).unwrap();
        assert_eq!(p.git_ref.as_deref(), Some("refs/heads/main"));
        assert_eq!(p.after.as_deref(), Some("feed"));
        assert_eq!(p.delivery.as_deref(), Some("u-9"));

        let gl = br#"{"object_kind":"push","ref":"refs/heads/main","checkout_sha":"c0ffee"}"#;
        let headers = h(&[
            ("x-gitlab-token", "It's a Secret to Everybody"),
            ("x-gitlab-event-uuid", "e-1"),
        ]);
        let p = verify(Provider::Gitlab, &headers, gl, SECRET).unwrap();
        assert_eq!(p.after.as_deref(), Some("c0ffee"));
        assert_eq!(p.delivery.as_deref(), Some("e-1"));

        // A ping has no ref.
        let ping = br#"{"zen":"Keep it logically awesome."}"#;
        let headers = h(&[("x-hub-signature-256", &sign(SECRET, ping))]);
        let p = verify(Provider::Github, &headers, ping, SECRET).unwrap();
        assert_eq!(p.git_ref, None);
        assert!(!p.is_for_branch("main"));
    }

    #[test]
    fn malformed_bodies_are_400_after_a_good_signature() {
        for body in [&b"{not json"[..], b"[1,2]", b"\"x\""] {
            let headers = h(&[("x-floyd-signature", &sign(SECRET, body))]);
            assert!(matches!(
                verify(Provider::Generic, &headers, body, SECRET),
                Err(WebhookError::Malformed(_))
            ));
        }
        // A bad signature on a malformed body is still 401 (never parse unauthenticated input).
        let headers = h(&[("x-floyd-signature", &sign(b"x", b"{"))]);
        assert!(matches!(
            verify(Provider::Generic, &headers, b"{", SECRET),
            Err(WebhookError::Unauthorized(_))
        ));
    }
}
