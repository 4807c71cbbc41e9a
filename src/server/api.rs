//! `/api/v1/...`: JSON state and manual controls.

use super::{ApiError, AppState};
use crate::engine::Command;
use crate::hub::{HistoryEntry, ServiceView};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a manual command waits for the controller's answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Info {
    version: &'static str,
    /// Manual controls need `Authorization: Bearer <token>`.
    controls_require_token: bool,
    webhooks_enabled: bool,
    branch: String,
    ready: bool,
    leader: bool,
    git_reachable: bool,
}

pub(crate) async fn info(State(st): State<AppState>) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION"),
        controls_require_token: st.config.api_token.is_some(),
        webhooks_enabled: st.config.webhook_secret.is_some(),
        branch: st.config.branch.clone(),
        ready: st.hub.is_ready(),
        leader: st.hub.is_leader(),
        git_reachable: st.hub.git_reachable(),
    })
}

#[derive(Serialize)]
pub(crate) struct ServiceList {
    services: Vec<ServiceView>,
}

pub(crate) async fn services(State(st): State<AppState>) -> Response {
    // Read the version before the snapshot: the snapshot is at least that
    // new, so a cached body is never older than its key says.
    let version = st.hub.version();
    let cached = st.services_json.lock().ok().and_then(|c| {
        c.as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, b)| b.clone())
    });
    let body = match cached {
        Some(b) => b,
        None => {
            let list = ServiceList {
                services: st.hub.services(),
            };
            match serde_json::to_vec(&list) {
                Ok(b) => {
                    let b = bytes::Bytes::from(b);
                    if let Ok(mut c) = st.services_json.lock() {
                        *c = Some((version, b.clone()));
                    }
                    b
                }
                Err(e) => {
                    return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        .into_response();
                }
            }
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(crate) async fn service(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    st.hub
        .service(&name)
        .map(Json)
        .ok_or_else(|| unknown_service(&name))
}

/// `GET /api/v1/services/{name}/plan`: the predicted rollout of the spec
/// rendered from the synced commit (from the revision it started from),
/// and the inputs for predicting a rollout from what runs now (`floyd diff`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Plan {
    service: String,
    target_revision: crate::manifest::Revision,
    prediction: crate::predict::Prediction,
    /// For a rollout that starts from the target revision (what runs once
    /// this rollout is done).
    inputs: crate::predict::PlanInputs,
}

pub(crate) async fn plan(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Plan>, ApiError> {
    let rec = st.hub.plan(&name).ok_or_else(|| unknown_service(&name))?;
    let service = crate::manifest::ServiceName::parse(&name).map_err(|_| unknown_service(&name))?;
    let samples: Vec<f64> = rec.samples.iter().map(|(_, s, _)| *s).collect();
    let batches: Vec<u32> = rec.samples.iter().map(|(_, _, b)| *b).collect();
    let from_here = crate::predict::PlanInputs {
        current: rec.from.clone(),
        startup_samples: samples.clone(),
        startup_batches: batches.clone(),
        gpu: rec.gpu.clone(),
    };
    let target_revision = rec.target.clone();
    let inputs = crate::predict::PlanInputs {
        current: Some(crate::predict::CurrentRevision {
            revision: rec.target.clone(),
            replicas: rec.spec.replicas,
            gpu: rec.spec.gpu().cloned(),
        }),
        startup_samples: samples,
        startup_batches: batches,
        gpu: rec.gpu.clone(),
    };
    // Simulating a large service takes milliseconds, off the async threads.
    let prediction = tokio::task::spawn_blocking(move || {
        crate::predict::predict(&service, &rec.spec, &from_here)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(Plan {
        service: name,
        target_revision,
        prediction,
        inputs,
    }))
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    limit: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct History {
    service: String,
    /// Newest first.
    history: Vec<HistoryEntry>,
}

pub(crate) async fn history(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => usize::MAX,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("query parameter limit={s:?} is not a non-negative integer"),
            )
        })?,
    };
    let mut history = st.hub.history(&name);
    // A deleted (pruned) service keeps its history; only a name never seen is unknown.
    if history.is_empty() && st.hub.service(&name).is_none() {
        return Err(unknown_service(&name));
    }
    history.truncate(limit);
    Ok(Json(History {
        service: name,
        history,
    }))
}

#[derive(Serialize)]
pub(crate) struct ControlAccepted {
    service: String,
    command: &'static str,
    accepted: bool,
}

pub(crate) fn parse_command(s: &str) -> Option<(Command, &'static str)> {
    match s {
        "promote" => Some((Command::Promote, "promote")),
        "abort" => Some((Command::Abort, "abort")),
        "pause" => Some((Command::Pause, "pause")),
        "resume" => Some((Command::Resume, "resume")),
        _ => None,
    }
}

/// `POST /api/v1/services/{name}/{promote,abort,pause,resume}`.
/// Order of checks: token (401), origin, host and content type (403, 415;
/// [`super::check_control_origin`]), command (400), service (404), then the
/// controller's answer (409 refused, 503 not running, 504 no answer).
pub(crate) async fn control(
    State(st): State<AppState>,
    Path((name, command)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<ControlAccepted>), ApiError> {
    if let Some(token) = &st.config.api_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match given {
            None => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "manual controls need `Authorization: Bearer <token>` (the token of --api-token-file)",
                ));
            }
            Some(t) if !token.matches(t) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the bearer token does not match --api-token-file",
                ));
            }
            Some(_) => {}
        }
    }
    super::check_control_origin(
        &headers,
        &st.config.allowed_origins,
        st.config.api_token.is_some(),
    )
    .map_err(|(code, message)| ApiError::new(code, message))?;
    let Some((cmd, cmd_name)) = parse_command(&command) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown command {command:?}: use promote, abort, pause or resume"),
        ));
    };
    if st.hub.service(&name).is_none() {
        return Err(unknown_service(&name));
    }
    match tokio::time::timeout(CONTROL_TIMEOUT, st.hub.control(&name, cmd)).await {
        Ok(Ok(())) => {
            tracing::info!(service = %name, command = cmd_name, "manual command accepted");
            Ok((
                StatusCode::ACCEPTED,
                Json(ControlAccepted {
                    service: name,
                    command: cmd_name,
                    accepted: true,
                }),
            ))
        }
        Ok(Err(reason))
            if reason == "the controller is not running"
                || reason == "the controller did not answer" =>
        {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason))
        }
        Ok(Err(reason)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{cmd_name} {name}: {reason}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the controller did not answer {cmd_name} {name} within {}s",
                CONTROL_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn unknown_service(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no service named {name:?}; GET /api/v1/services lists them"),
    )
}
