//! `POST /hooks/{provider}`: push webhooks → fetch triggers.
//!
//! The signature check and payload parsing are `source::webhook::verify`'s;
//! this route maps its answer to status codes, enforces the body limit,
//! drops repeated deliveries and counts `floyd_webhook_requests_total`.

use super::{ApiError, AppState};
use crate::hub::FetchTrigger;
use crate::source::webhook::{self, Provider, WebhookError};
use crate::telemetry::metrics::WebhookLabels;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;

#[derive(Serialize)]
struct Accepted {
    /// `accepted` (a fetch was triggered), `ignored` (other branch, ping) or `duplicate`.
    result: &'static str,
    message: String,
}

fn count(st: &AppState, provider: &str, result: &str) {
    st.hub
        .metrics
        .webhook_requests_total
        .get_or_create(&WebhookLabels {
            provider: provider.to_string(),
            result: result.to_string(),
        })
        .inc();
}

pub(crate) async fn webhook(
    State(st): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Unknown providers are not counted: the label would be unbounded.
    let Some(p) = Provider::parse(&provider) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown webhook provider {provider:?}: use github, gitlab, gitea, bitbucket or generic"
            ),
        )
        .into_response();
    };
    let name = p.as_str();
    let Some(secret) = st.config.webhook_secret.as_ref() else {
        count(&st, name, "disabled");
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "webhooks are disabled: start `floyd run` with --webhook-secret-file",
        )
        .into_response();
    };
    let bytes = match Limited::new(body, st.config.max_body_bytes).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                count(&st, name, "too_large");
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "webhook body is larger than {} bytes",
                        st.config.max_body_bytes
                    ),
                )
                .into_response();
            }
            count(&st, name, "malformed");
            return ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))
                .into_response();
        }
    };
    let push = match webhook::verify(p, &headers, &bytes, secret.expose().as_bytes()) {
        Ok(push) => push,
        Err(WebhookError::Unauthorized(why)) => {
            count(&st, name, "unauthorized");
            tracing::warn!(provider = name, reason = %why, "webhook refused");
            return ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthorized: {why}"))
                .into_response();
        }
        Err(WebhookError::Malformed(why)) => {
            count(&st, name, "malformed");
            return ApiError::new(StatusCode::BAD_REQUEST, format!("malformed: {why}"))
                .into_response();
        }
    };
    let tracked = format!("refs/heads/{}", st.config.branch);
    let (result, message) = match push.git_ref.as_deref() {
        None => ("ignored", "not a push event".to_string()),
        Some(r) if !push.is_for_branch(&st.config.branch) => {
            ("ignored", format!("push to {r}; Floyd tracks {tracked}"))
        }
        Some(_) => {
            let first = match &push.delivery {
                Some(id) => st.hub.first_delivery(&format!("{name}:{id}")),
                None => true,
            };
            if first {
                st.hub.trigger_fetch(FetchTrigger {
                    source: name.to_string(),
                    after: push.after.clone(),
                });
                tracing::info!(provider = name, after = ?push.after, "webhook push: fetch triggered");
                ("accepted", "fetch triggered".to_string())
            } else {
                ("duplicate", "delivery already seen".to_string())
            }
        }
    };
    count(&st, name, result);
    (StatusCode::ACCEPTED, Json(Accepted { result, message })).into_response()
}
