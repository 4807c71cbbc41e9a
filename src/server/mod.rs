//! HTTP: webhooks, `/healthz`, `/readyz`, `/metrics`, the JSON API,
//! server-sent events and the dashboard page. The one HTTP server of Floyd.
//!
//! Owns: routing, status codes, JSON error bodies, bearer-token checks for
//! manual controls, body limits, the SSE fan-out, the embedded dashboard and
//! the webhook → fetch-trigger mapping.
//! Must not: decide anything about rollouts. It reads the [`Hub`], forwards
//! manual commands to the controller through it and reports its answer.

mod api;
pub mod conn;
mod hooks;
pub mod notify;
mod sse;

use crate::hub::Hub;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use notify::{Notification, NotificationKind, Notifier};

/// Default limit for webhook bodies (GitHub caps payloads at 25 MB but a push
/// payload with its 20 commits is a few hundred KB at most).
pub const DEFAULT_MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// A secret string (API token, webhook secret). `Debug` and `Display` print
/// `[redacted]` so that it cannot leak into logs, errors or API answers.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// Reads a secret file; surrounding whitespace (the usual trailing
    /// newline of `echo token > file`) is dropped.
    pub fn from_file(path: &Path) -> Result<Secret, Error> {
        let raw = std::fs::read_to_string(path).map_err(|e| Error::ReadSecret {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let value = raw.trim();
        if value.is_empty() {
            return Err(Error::EmptySecret {
                path: path.to_path_buf(),
            });
        }
        Ok(Secret(value.to_string()))
    }
    /// The secret itself, for the one place that must compare or sign with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time equality (hashing first so the length does not leak either).
    pub fn matches(&self, candidate: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(candidate.as_bytes());
        a.ct_eq(&b).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What the server needs to know beyond the hub.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared secret for `/hooks/{provider}`; webhooks are refused (404) without one.
    pub webhook_secret: Option<Secret>,
    /// The tracked branch: pushes to other branches are accepted and ignored.
    pub branch: String,
    /// Bearer token for manual controls; `None` leaves them open (loopback only!).
    pub api_token: Option<Secret>,
    /// Largest accepted webhook body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Origins (`https://floyd.example.com`) or hosts (`floyd.example.com`,
    /// with `:port` when not the default) allowed in the `Origin` and `Host`
    /// headers of manual controls, besides this server's own address
    /// (`--allowed-origins`). See [`check_control_origin`].
    pub allowed_origins: Vec<String>,
}

/// Whether a manual control (`POST /api/v1/services/{name}/{command}`)
/// may come from where it says it comes from: protection for an operator's
/// browser against other web pages (cross-site requests, DNS rebinding).
///
/// - `Origin` (sent by browsers), when present, must be this server itself
///   (the same host and port as `Host`) or in `allowed`.
/// - Without a bearer token (`authenticated` false), `Host` must be an IP
///   address (what a rebinding page cannot produce), `localhost`, or in
///   `allowed`, and the body must be declared `application/json`: a web page
///   can only send that cross-origin after a CORS preflight, which Floyd
///   never grants.
///
/// Returns the status and the message to answer with when refused.
pub fn check_control_origin(
    headers: &axum::http::HeaderMap,
    allowed: &[String],
    authenticated: bool,
) -> Result<(), (StatusCode, String)> {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let host = get(header::HOST).unwrap_or("").trim().to_ascii_lowercase();
    let listed = |hostport: &str| {
        allowed.iter().any(|a| {
            let a = a.trim().trim_end_matches('/').to_ascii_lowercase();
            let a = a
                .split_once("://")
                .map_or(a.as_str(), |(_, rest)| rest)
                .to_string();
            a == hostport
        })
    };
    if let Some(origin) = get(header::ORIGIN) {
        let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let o_host = o.split_once("://").map_or(o.as_str(), |(_, rest)| rest);
        if o_host != host && !listed(o_host) {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "Origin {origin} is not this server ({host}); manual controls from other web pages are refused (allow it with --allowed-origins)"
                ),
            ));
        }
    }
    if authenticated {
        return Ok(());
    }
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host.as_str(),
    };
    let ip = name.trim_start_matches('[').trim_end_matches(']');
    if !(ip.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || listed(&host)) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} is not an address of this server; without --api-token-file manual controls are accepted only for an IP address, localhost or --allowed-origins"
            ),
        ));
    }
    let json = get(header::CONTENT_TYPE).is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "manual controls need `Content-Type: application/json` (or `Authorization: Bearer <token>` with --api-token-file)".to_string(),
        ));
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Config {
        Config {
            webhook_secret: None,
            branch: "main".to_string(),
            api_token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            allowed_origins: Vec::new(),
        }
    }
}

/// Errors of the server's edges (secrets, serving).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot read secret file: {reason}", path.display())]
    ReadSecret { path: PathBuf, reason: String },
    #[error("{}: secret file is empty; put the token or secret in it", path.display())]
    EmptySecret { path: PathBuf },
}

/// Shared state of every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// Cancelled on shutdown so that endless SSE streams end and the
    /// graceful shutdown does not wait for them forever.
    pub shutdown: CancellationToken,
    /// `/api/v1/services` serialised, under the hub version it was made at:
    /// polling clients (dashboards, `floyd status`, scrapers) between two
    /// changes cost a clone of the bytes, not a serialisation.
    pub services_json: Arc<std::sync::Mutex<Option<(u64, bytes::Bytes)>>>,
}

/// The router with every route; for tests and embedding. SSE streams of this
/// router end only when their clients go away (use [`serve`] for shutdown).
pub fn router(hub: Arc<Hub>, config: Config) -> Router {
    router_with(AppState {
        hub,
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
        services_json: Arc::default(),
    })
}

fn router_with(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hooks/{provider}", post(hooks::webhook))
        .route("/api/v1/info", get(api::info))
        .route("/api/v1/services", get(api::services))
        .route("/api/v1/services/{name}", get(api::service))
        .route("/api/v1/services/{name}/history", get(api::history))
        .route("/api/v1/services/{name}/plan", get(api::plan))
        .route("/api/v1/services/{name}/{command}", post(api::control))
        .route("/api/v1/events", get(sse::events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Request spans at debug level: method, path, status, latency.
        // Headers (Authorization, signatures) are never recorded.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    // The path only: a query string may carry a pasted token.
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
                },
            ),
        )
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting, ends the SSE
/// streams and waits for in-flight requests. Connections are limited as
/// [`conn::Limits::default`] says, with twice `config.max_body_bytes` for
/// bodies on every route.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = conn::Limits {
        // Above the webhook limit, so that webhooks a little over it get
        // their own clearer answer (and count as `too_large`); anything
        // larger is refused before the route sees it.
        max_body_bytes: config.max_body_bytes.saturating_mul(2),
        ..conn::Limits::default()
    };
    serve_with_limits(listener, hub, config, limits, shutdown).await
}

/// [`serve`] under explicit connection limits.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    config: Config,
    limits: conn::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = CancellationToken::new();
    let app = router_with(AppState {
        hub,
        config: Arc::new(config),
        shutdown: token.clone(),
        services_json: Arc::default(),
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP server listening (dashboard, API, metrics, webhooks)");
    }
    conn::serve_limited(listener, app, limits, shutdown, move || token.cancel()).await
}

/// A JSON error: `{"error": "...", "status": N}`.
#[derive(Debug, Serialize)]
pub(crate) struct ApiError {
    #[serde(skip)]
    code: StatusCode,
    error: String,
    status: u16,
}

impl ApiError {
    pub fn new(code: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            code,
            error: error.into(),
            status: code.as_u16(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code;
        let mut res = (code, axum::Json(self)).into_response();
        if code == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"floyd\""),
            );
        }
        res
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page is self-contained: nothing but this origin, no CDN.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// The controller loop turns at least every resync interval (10 s by
/// default); one that has not turned for this long is stuck or dead.
pub const LIVENESS_STALE: std::time::Duration = std::time::Duration::from_secs(120);

/// Liveness: the process answers and the controller loop (when one runs)
/// turned within [`LIVENESS_STALE`]. A stuck or dead loop answers 503, so
/// a supervisor (kubelet, systemd) restarts Floyd.
async fn healthz(axum::extract::State(st): axum::extract::State<AppState>) -> Response {
    match st.hub.last_beat() {
        Some(t) if crate::time::Time::now_wall().since(t) > LIVENESS_STALE => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "controller loop stalled: last turn {} s ago\n",
                crate::time::Time::now_wall().since(t).as_secs()
            ),
        )
            .into_response(),
        _ => "ok\n".into_response(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Readiness {
    ready: bool,
    leader: bool,
    git_reachable: bool,
    /// Why the state store cannot be written (absent when it can).
    #[serde(skip_serializing_if = "Option::is_none")]
    persistence_error: Option<String>,
    /// Why the branch's tip could not be synced (the previous release is
    /// served meanwhile; absent when it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_error: Option<String>,
}

/// Ready once the first sync is done (or as a standby replica). Git being
/// unreachable does not make Floyd unready: it keeps serving what it knows.
async fn readyz(axum::extract::State(st): axum::extract::State<AppState>) -> Response {
    let body = Readiness {
        ready: st.hub.is_ready(),
        leader: st.hub.is_leader(),
        git_reachable: st.hub.git_reachable(),
        persistence_error: st.hub.persistence_error(),
        sync_error: st.hub.sync_error(),
    };
    let code = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// What `prometheus-client`'s text encoder produces.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(axum::extract::State(st): axum::extract::State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        st.hub.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        let c = Config {
            webhook_secret: Some(Secret::new("whsec-1")),
            api_token: Some(Secret::new("tok-2")),
            ..Config::default()
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("whsec-1") && !dbg.contains("tok-2"), "{dbg}");
    }

    #[test]
    fn secret_matches_only_itself() {
        let s = Secret::new("abc");
        assert!(s.matches("abc"));
        for other in ["", "ab", "abcd", "ABC", "abc "] {
            assert!(!s.matches(other), "{other:?}");
        }
    }

    #[test]
    fn secret_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        std::fs::write(&p, "t0ken\n").expect("write");
        assert_eq!(Secret::from_file(&p).expect("read").expose(), "t0ken");
        std::fs::write(&p, " \n").expect("write");
        let e = Secret::from_file(&p).expect_err("empty");
        assert!(e.to_string().contains("empty"), "{e}");
        let e = Secret::from_file(&dir.path().join("missing")).expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
