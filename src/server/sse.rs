//! `GET /api/v1/events`: server-sent events from the hub's broadcast.
//!
//! Every hub event becomes one SSE event named after it (`service`,
//! `rollout`, `revert`, `sync`) with the event as JSON data. A client too slow
//! to keep up gets a `lagged` event (it should re-read `/api/v1/services`)
//! instead of blocking the controller: the broadcast never waits for readers.

use super::AppState;
use crate::hub::Event;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    /// Only events of this service (plus `sync` events, which concern all).
    service: Option<String>,
}

fn concerns(event: &Event, service: &str) -> bool {
    match event {
        Event::Service { service: v } => v.name == service,
        Event::Rollout { entry } => entry.service == service,
        Event::Revert { service: s, .. } => s == service,
        Event::Sync { .. } => true,
    }
}

pub(crate) async fn events(
    State(st): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut rx = st.hub.subscribe();
    let shutdown = st.shutdown.clone();
    let stream = async_stream::stream! {
        // Tell the client the subscription is live: anything it reads from
        // the API after this is at least as new as the stream.
        yield Ok(SseEvent::default().event("hello").data("{}"));
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = rx.recv() => next,
            };
            match next {
                Ok(event) => {
                    if let Some(s) = &q.service
                        && !concerns(&event, s)
                    {
                        continue;
                    }
                    match SseEvent::default().event(event.name()).json_data(&event) {
                        Ok(e) => yield Ok(e),
                        Err(e) => tracing::warn!(error = %e, "cannot encode event"),
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    yield Ok(SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{missed}}}")));
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
