//! The connection edge of the HTTP server: accepting, per-connection limits
//! and graceful shutdown, kept apart from the routes.
//!
//! What a hostile or broken client can hold is bounded here: a connection
//! that has not sent its whole request head within the header timeout is
//! closed (slowloris), at most `max_connections` are served at once (more
//! are answered `503` and closed at once, so a flood cannot exhaust file
//! descriptors or memory), and request bodies are capped for every route.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Limits on what one client, or all of them together, can hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client has to send a complete request head (request line and
    /// headers), for the first request of a connection and every later one.
    pub header_read_timeout: Duration,
    /// Connections served at once; more are refused with `503`.
    pub max_connections: usize,
    /// Request body bytes on any route (webhooks have their own, smaller
    /// or equal, limit with a clearer answer).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes: super::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// What a connection over the limit is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 44\r\n\r\ntoo many connections to floyd; retry later\r\n";

/// Serves `app` on `listener` under `limits` until `shutdown` resolves;
/// then stops accepting, calls `on_shutdown` (to end endless streams) and
/// waits for the requests in flight.
pub(crate) async fn serve_limited(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_shutdown: impl FnOnce(),
) -> std::io::Result<()> {
    let app = app.layer(tower_http::limit::RequestBodyLimitLayer::new(
        limits.max_body_bytes,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // HTTP/1 only (as before: no client of Floyd speaks cleartext HTTP/2).
    // hyper starts the header timer at accept, so a client that sends
    // nothing at all is cut off too; sniffing for HTTP/2 first would wait
    // on it without a limit.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // A fresh socket's send buffer takes the short answer at once;
            // nothing waits on a client that does not read it.
            let _ = stream.try_write(BUSY);
            tracing::debug!(
                max = limits.max_connections,
                "connection refused: too many connections"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    on_shutdown();
    graceful.shutdown().await;
    Ok(())
}
