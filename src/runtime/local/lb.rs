//! The local runtime's load balancer: one HTTP reverse proxy per service
//! port (and the blue-green preview port), built on axum (server side) and
//! hyper-util's client (upstream side).
//!
//! Owns: listening, picking a backend (round-robin or least-connections),
//! forwarding, counting responses per revision, and in-flight counts per
//! instance (so a draining instance is stopped only when idle).
//! Must not: decide which instances are routable; the runtime computes the
//! route table and swaps it in atomically ([`Lb::set_routes`]).

use crate::manifest::Revision;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastConnections,
}

/// Cumulative counters of one revision.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// A routable instance.
#[derive(Debug, Clone)]
pub struct Backend {
    pub instance: String,
    pub revision: Revision,
    /// Instance port per declared port name; `""` is the primary `PORT`.
    pub ports: BTreeMap<String, u16>,
    pub inflight: Arc<AtomicUsize>,
    pub counters: Arc<Counters>,
}

impl Backend {
    fn port_for(&self, name: &str) -> Option<u16> {
        self.ports.get(name).or_else(|| self.ports.get("")).copied()
    }
}

/// Who gets traffic. Swapped as a whole: a switch is atomic.
#[derive(Debug, Default)]
pub struct Routes {
    pub active: Vec<Backend>,
    pub preview: Vec<Backend>,
}

/// What a listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerKind {
    /// Declared port name the backend port is looked up by.
    pub port_name: String,
    pub preview: bool,
}

struct Listener {
    kind: ListenerKind,
    stop: CancellationToken,
}

/// The load balancer of one service.
pub struct Lb {
    service: String,
    routes: RwLock<Arc<Routes>>,
    listeners: Mutex<BTreeMap<u16, Listener>>,
    client: Client<HttpConnector, Body>,
    next: AtomicUsize,
    policy: LbPolicy,
}

#[derive(Clone)]
struct Route {
    lb: Arc<Lb>,
    kind: ListenerKind,
}

/// Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded.
const HOP_BY_HOP: &[header::HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

struct InflightGuard(Arc<AtomicUsize>);
impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lb {
    pub fn new(service: &str, policy: LbPolicy) -> Arc<Lb> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(http);
        Arc::new(Lb {
            service: service.to_string(),
            routes: RwLock::new(Arc::new(Routes::default())),
            listeners: Mutex::new(BTreeMap::new()),
            client,
            next: AtomicUsize::new(0),
            policy,
        })
    }

    /// Swaps the route table in one step.
    pub fn set_routes(&self, routes: Routes) {
        let mut w = self.routes.write().unwrap_or_else(|e| e.into_inner());
        *w = Arc::new(routes);
    }

    fn routes(&self) -> Arc<Routes> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ports currently listened on.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Makes the set of listeners match `want` (port → kind): closes the ones
    /// not wanted, opens new ones. Returns one message per port that could
    /// not be opened.
    pub async fn set_listeners(
        self: &Arc<Self>,
        bind: IpAddr,
        want: &BTreeMap<u16, ListenerKind>,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        {
            let mut ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            ls.retain(|port, l| {
                let keep = want.get(port) == Some(&l.kind);
                if !keep {
                    l.stop.cancel();
                }
                keep
            });
        }
        for (port, kind) in want {
            if self
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(port)
            {
                continue;
            }
            let addr = SocketAddr::new(bind, *port);
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!(
                        "load balancer cannot listen on {addr}: {e} (another process uses the port; free it or change spec.ports)"
                    ));
                    continue;
                }
            };
            let stop = CancellationToken::new();
            let app = axum::Router::new()
                .fallback(proxy)
                .with_state(Route {
                    lb: self.clone(),
                    kind: kind.clone(),
                })
                .into_make_service_with_connect_info::<SocketAddr>();
            let s = stop.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { s.cancelled().await })
                    .await;
            });
            self.listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    *port,
                    Listener {
                        kind: kind.clone(),
                        stop,
                    },
                );
        }
        errors
    }

    /// Closes every listener.
    pub fn close(&self) {
        let mut ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for l in ls.values() {
            l.stop.cancel();
        }
        ls.clear();
    }

    fn pick(&self, set: &[Backend], skip: &[String]) -> Option<Backend> {
        let candidates: Vec<&Backend> =
            set.iter().filter(|b| !skip.contains(&b.instance)).collect();
        if candidates.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let b = match self.policy {
            LbPolicy::RoundRobin => candidates[n % candidates.len()],
            LbPolicy::LeastConnections => {
                let start = n % candidates.len();
                // Rotate the start so ties spread round-robin.
                (0..candidates.len())
                    .map(|i| candidates[(start + i) % candidates.len()])
                    .min_by_key(|b| b.inflight.load(Ordering::Relaxed))?
            }
        };
        Some(b.clone())
    }
}

fn plain(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn proxy(
    State(route): State<Route>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    let lb = &route.lb;
    let (mut parts, body) = req.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    parts.headers.remove("keep-alive");
    parts.headers.remove("proxy-connection");
    let xff = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        parts.headers.insert("x-forwarded-for", v);
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    // A request without a body can be sent again to another instance when the
    // first one refused the connection (it just went away).
    let replayable = axum::body::HttpBody::size_hint(&body).exact() == Some(0);
    let mut body = Some(body);
    let mut tried: Vec<String> = Vec::new();
    let routes = lb.routes();
    let set = if route.kind.preview {
        &routes.preview
    } else {
        &routes.active
    };
    loop {
        let Some(backend) = lb.pick(set, &tried) else {
            if let Some(last) = tried.last() {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("floyd: instance {last} of service {} failed\n", lb.service),
                );
            }
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "floyd: no ready instance of service {}{}\n",
                    lb.service,
                    if route.kind.preview { " (preview)" } else { "" }
                ),
            );
        };
        let Some(port) = backend.port_for(&route.kind.port_name) else {
            tried.push(backend.instance.clone());
            continue;
        };
        let Ok(uri) = format!("http://127.0.0.1:{port}{path_and_query}").parse::<Uri>() else {
            return plain(
                StatusCode::BAD_REQUEST,
                "floyd: bad request target\n".into(),
            );
        };
        let b = match body.take() {
            Some(b) => b,
            None => Body::empty(),
        };
        let mut up = Request::from_parts(parts.clone(), b);
        *up.uri_mut() = uri;
        backend.inflight.fetch_add(1, Ordering::AcqRel);
        let guard = InflightGuard(backend.inflight.clone());
        backend.counters.requests.fetch_add(1, Ordering::Relaxed);
        match lb.client.request(up).await {
            Ok(resp) => {
                if resp.status().is_server_error() {
                    backend.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                let (mut rparts, rbody) = resp.into_parts();
                for h in HOP_BY_HOP {
                    rparts.headers.remove(h);
                }
                rparts.headers.remove("keep-alive");
                // The guard lives as long as the response body: an instance
                // is busy until its response has been streamed out.
                let body = rbody.map_frame(move |f| {
                    let _keep = &guard;
                    f
                });
                return Response::from_parts(rparts, Body::new(body));
            }
            Err(e) => {
                drop(guard);
                if e.is_connect() && replayable && tried.len() < 3 {
                    // Not sent: do not count it against the revision.
                    backend.counters.requests.fetch_sub(1, Ordering::Relaxed);
                    tried.push(backend.instance.clone());
                    continue;
                }
                backend.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(service = %lb.service, instance = %backend.instance, error = %e, "proxy error");
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "floyd: instance {} of service {} failed: {e}\n",
                        backend.instance, lb.service
                    ),
                );
            }
        }
    }
}
