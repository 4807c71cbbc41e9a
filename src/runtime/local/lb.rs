//! The local runtime's load balancer: one HTTP reverse proxy per service
//! port (and the blue-green preview port). hyper serves the listener
//! (HTTP/1, and h2c through hyper-util's auto builder); upstream, each
//! instance port has a small pool of keep-alive HTTP/1 client connections
//! (hyper's connection API). An HTTP/1.1 upgrade (WebSocket) is forwarded
//! and, once the instance answers 101, tunnelled byte for byte.
//!
//! Owns: listening, picking a backend (round-robin or least-connections),
//! the canary split (by weight, exact per request; header matches; mirroring),
//! forwarding, counting responses per revision, and in-flight counts per
//! instance (so a draining instance is stopped only when idle).
//! Must not: decide which instances are routable; the runtime computes the
//! route table and swaps it in atomically ([`Lb::set_routes`]).
//!
//! The per-request path is kept lean because on a small machine the proxy
//! shares the CPUs with the clients and the instances: no router, no string
//! formatting or URI rebuilding (the request's own origin-form target goes
//! upstream as is), no boxed bodies, the route table is one `Arc` clone
//! under a read lock, and an instance's idle connections sit behind a lock
//! held only to pop or push one entry.

use crate::manifest::Revision;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How a backend is chosen.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
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

impl AsRef<Backend> for Backend {
    fn as_ref(&self) -> &Backend {
        self
    }
}

/// Who gets traffic. Swapped as a whole: a switch is atomic.
#[derive(Debug, Default)]
pub struct Routes {
    pub active: Vec<Backend>,
    pub preview: Vec<Backend>,
    /// A canary split of the active traffic; `active` is then the stable side.
    pub canary: Option<CanaryRoutes>,
}

/// The canary side of a split.
#[derive(Debug, Default)]
pub struct CanaryRoutes {
    pub backends: Vec<Backend>,
    /// Percent of the requests (header-matched ones aside) for the canary.
    pub weight: u32,
    /// A request matching every header of any one entry goes to the canary.
    pub matches: Vec<Vec<(HeaderName, HeaderValue)>>,
    /// Copy requests served by the stable side to the canary (answer discarded).
    pub mirror: bool,
}

impl CanaryRoutes {
    /// From the spec's `strategy.canary` (invalid header names or values,
    /// which validation rejects, are skipped).
    pub fn new(
        backends: Vec<Backend>,
        weight: u32,
        matches: &[crate::manifest::CanaryMatch],
        mirror: bool,
    ) -> CanaryRoutes {
        let matches = matches
            .iter()
            .map(|m| {
                m.headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            HeaderName::from_bytes(k.as_bytes()).ok()?,
                            HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect()
            })
            .collect();
        CanaryRoutes {
            backends,
            weight: weight.min(100),
            matches,
            mirror,
        }
    }
}

/// Whether the `k`-th weighted request (0-based) goes to the canary: exactly
/// `weight` of every 100 consecutive requests do, evenly interleaved (the
/// two-backend case of smooth weighted round-robin, as a pure function of
/// the sequence number: no lock, one atomic increment per request).
pub fn weighted_to_canary(k: u64, weight: u32) -> bool {
    let w = u64::from(weight.min(100));
    let k = k % 100;
    (k + 1) * w / 100 > k * w / 100
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

/// How long a new upstream connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle upstream connections older than this are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle upstream connections kept per instance port; enough for every
/// concurrent client of a busy service to find a warm one.
const MAX_IDLE_PER_PORT: usize = 1024;
/// Other instances tried for one request when connecting fails.
const MAX_RETRIES: usize = 3;

/// Idle keep-alive HTTP/1 connections to one instance port.
struct Pool {
    addr: SocketAddr,
    /// `Host` for a request that came without one.
    host: HeaderValue,
    /// Most recently used last (it is the warmest).
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    tx: SendRequest<Incoming>,
    since: Instant,
}

impl Pool {
    fn new(port: u16) -> Pool {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        Pool {
            addr,
            host: HeaderValue::from_str(&addr.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("127.0.0.1")),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A warm connection, if there is one that is still open.
    fn take(&self) -> Option<SendRequest<Incoming>> {
        loop {
            let idle = self.lock().pop()?;
            if !idle.tx.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.tx);
            }
        }
    }

    /// Returns a connection whose last response was read to the end.
    fn put(&self, tx: SendRequest<Incoming>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        // The oldest are at the bottom: a pool that shrinks does not keep
        // its expired connections forever.
        while idle
            .first()
            .is_some_and(|i| i.tx.is_closed() || now.duration_since(i.since) >= IDLE_TIMEOUT)
        {
            idle.remove(0);
        }
        if idle.len() < MAX_IDLE_PER_PORT {
            idle.push(Idle { tx, since: now });
        }
    }

    /// A new connection (`TCP_NODELAY`, HTTP/1 only).
    async fn connect(&self) -> Result<SendRequest<Incoming>, String> {
        let tcp =
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Err(format!("connect to {}: {e}", self.addr)),
                Err(_) => {
                    return Err(format!(
                        "connect to {}: timed out after {CONNECT_TIMEOUT:?}",
                        self.addr
                    ));
                }
            };
        // Small request/response exchanges: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        tokio::spawn(async move {
            // Upgrades (WebSocket): the connection is handed over after a 101.
            let _ = conn.with_upgrades().await;
        });
        Ok(tx)
    }
}

/// A routable instance with its upstream pools, by declared port name.
struct Target {
    backend: Backend,
    pools: Vec<(String, Arc<Pool>)>,
}

impl AsRef<Backend> for Target {
    fn as_ref(&self) -> &Backend {
        &self.backend
    }
}

impl Target {
    /// The pool of the named port, or of the primary `PORT`.
    fn pool_for(&self, name: &str) -> Option<&Arc<Pool>> {
        let find = |n: &str| self.pools.iter().find(|(k, _)| k == n).map(|(_, p)| p);
        find(name).or_else(|| find(""))
    }
}

/// [`Routes`] with each backend's pools attached.
#[derive(Default)]
struct Table {
    active: Vec<Target>,
    preview: Vec<Target>,
    canary: Option<CanaryTable>,
}

/// Idle connections for mirrored (body-less) requests, by instance address.
type MirrorPools = Arc<Mutex<HashMap<SocketAddr, Vec<SendRequest<Empty<Bytes>>>>>>;

/// The canary side of the table. A new weight starts its sequence at 0, so
/// the weight holds exactly from the switch on; a table swapped for another
/// reason (an instance became ready) continues the sequence.
struct CanaryTable {
    targets: Vec<Target>,
    weight: u32,
    matches: Vec<Vec<(HeaderName, HeaderValue)>>,
    mirror: bool,
    /// Weighted (not header-matched) requests so far.
    seq: AtomicU64,
    /// Idle connections for mirrored requests (body-less), by instance address.
    mirror_idle: MirrorPools,
}

impl CanaryTable {
    fn matches(&self, h: &hyper::HeaderMap) -> bool {
        self.matches.iter().any(|m| {
            !m.is_empty()
                && m.iter()
                    .all(|(name, want)| h.get_all(name).iter().any(|v| v == want))
        })
    }

    /// The side this request goes to: true for the canary.
    fn to_canary(&self, h: &hyper::HeaderMap) -> bool {
        if !self.matches.is_empty() && self.matches(h) {
            return true;
        }
        match self.weight {
            0 => false,
            100.. => true,
            w => weighted_to_canary(self.seq.fetch_add(1, Ordering::Relaxed), w),
        }
    }
}

/// The load balancer of one service.
pub struct Lb {
    service: String,
    routes: RwLock<Arc<Table>>,
    /// Pools by (instance, port) of the routed instances; an instance that
    /// leaves the table takes its idle connections with it.
    pools: Mutex<HashMap<(String, u16), Arc<Pool>>>,
    listeners: Mutex<BTreeMap<u16, Listener>>,
    /// Wanted ports that could not be bound, with why (reported through
    /// `Observed::problems` until a later attempt binds them).
    bind_errors: Mutex<BTreeMap<u16, String>>,
    next: AtomicUsize,
    policy: LbPolicy,
    /// Where listeners and connections run (the load balancers' threads).
    rt: tokio::runtime::Handle,
}

/// What one listener serves.
struct Route {
    lb: Arc<Lb>,
    kind: ListenerKind,
}

/// One client connection.
struct Conn {
    route: Arc<Route>,
    /// The client's address as an `X-Forwarded-For` value.
    peer: HeaderValue,
    peer_ip: IpAddr,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
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
    /// A load balancer whose listeners and connections run on `rt`.
    pub fn new(service: &str, policy: LbPolicy, rt: tokio::runtime::Handle) -> Arc<Lb> {
        Arc::new(Lb {
            service: service.to_string(),
            routes: RwLock::new(Arc::new(Table::default())),
            pools: Mutex::new(HashMap::new()),
            listeners: Mutex::new(BTreeMap::new()),
            bind_errors: Mutex::new(BTreeMap::new()),
            next: AtomicUsize::new(0),
            policy,
            rt,
        })
    }

    /// Swaps the route table in one step.
    pub fn set_routes(&self, routes: Routes) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: HashMap<(String, u16), Arc<Pool>> = HashMap::new();
        let mut target = |b: Backend| {
            let ps = b
                .ports
                .iter()
                .map(|(name, port)| {
                    let key = (b.instance.clone(), *port);
                    let pool = kept
                        .entry(key)
                        .or_insert_with_key(|k| {
                            pools
                                .get(k)
                                .cloned()
                                .unwrap_or_else(|| Arc::new(Pool::new(*port)))
                        })
                        .clone();
                    (name.clone(), pool)
                })
                .collect();
            Target {
                backend: b,
                pools: ps,
            }
        };
        // The same weight continues its sequence (instances coming and going
        // swap the table too); a new weight starts from 0.
        let previous = self.table();
        let carried = |w: u32| {
            previous
                .canary
                .as_ref()
                .filter(|c| c.weight == w)
                .map_or(0, |c| c.seq.load(Ordering::Relaxed))
        };
        let canary = routes.canary.map(|c| CanaryTable {
            targets: c.backends.into_iter().map(&mut target).collect(),
            seq: AtomicU64::new(carried(c.weight)),
            weight: c.weight,
            matches: c.matches,
            mirror: c.mirror,
            mirror_idle: previous
                .canary
                .as_ref()
                .map_or_else(Default::default, |p| p.mirror_idle.clone()),
        });
        let table = Table {
            active: routes.active.into_iter().map(&mut target).collect(),
            preview: routes.preview.into_iter().map(&mut target).collect(),
            canary,
        };
        *pools = kept;
        let mut w = self.routes.write().unwrap_or_else(|e| e.into_inner());
        *w = Arc::new(table);
    }

    fn table(&self) -> Arc<Table> {
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
        self.bind_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|port, _| want.contains_key(port));
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
            // Bound here (so the error is reported now), registered with the
            // load balancers' own I/O driver by `serve`.
            let listener = match std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => l,
                Err(e) => {
                    let msg = format!(
                        "load balancer cannot listen on {addr}: {e} (another process uses the port; free it or change spec.ports)"
                    );
                    errors.push(msg.clone());
                    self.bind_errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(*port, msg);
                    continue;
                }
            };
            self.bind_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(port);
            let stop = CancellationToken::new();
            let route = Arc::new(Route {
                lb: self.clone(),
                kind: kind.clone(),
            });
            self.rt.spawn(serve(listener, route, stop.clone()));
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

    /// Why each wanted port that is not listening could not be bound.
    pub fn bind_errors(&self) -> Vec<String> {
        self.bind_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Closes every listener.
    pub fn close(&self) {
        let mut ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for l in ls.values() {
            l.stop.cancel();
        }
        ls.clear();
    }

    /// Picks the index of a backend not in `skip`. No allocation: this runs
    /// per request.
    fn pick<B: AsRef<Backend>>(&self, set: &[B], skip: &[usize]) -> Option<usize> {
        let n = set.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // Rotating the start spreads ties (least-connections) round-robin.
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !skip.contains(i));
        match self.policy {
            LbPolicy::RoundRobin => candidates.into_iter().next(),
            LbPolicy::LeastConnections => {
                candidates.min_by_key(|i| set[*i].as_ref().inflight.load(Ordering::Relaxed))
            }
        }
    }
}

/// The load balancers' own threads (a tokio runtime of their own). The data
/// path never queues behind the controller's work (rendering, fetching,
/// probing), keeps its connections on few threads (fewer cross-thread
/// wake-ups per proxied request), and can be given cores of its own.
pub struct LbThreads {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl LbThreads {
    /// Threads named `floyd-lb`; `threads` is at least 1.
    pub fn start(threads: usize) -> std::io::Result<LbThreads> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("floyd-lb")
            .enable_all()
            .build()?;
        Ok(LbThreads {
            handle: rt.handle().clone(),
            rt: Some(rt),
        })
    }

    /// The default: a quarter of the CPUs (rounded up), at most 8. The rest
    /// is for the instances the load balancers send traffic to.
    pub fn default_count() -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        cpus.div_ceil(4).clamp(1, 8)
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

impl Drop for LbThreads {
    fn drop(&mut self) {
        // May run inside another runtime: do not block there.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Accepts until `stop`; then stops accepting (the port is free again),
/// lets each connection finish its in-flight request and closes it.
async fn serve(listener: std::net::TcpListener, route: Arc<Route>, stop: CancellationToken) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(port, error = %e, "load balancer: cannot watch the listening socket");
            return;
        }
    };
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                use std::io::ErrorKind::*;
                if !matches!(
                    e.kind(),
                    ConnectionRefused | ConnectionAborted | ConnectionReset
                ) {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "load balancer: accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                continue;
            }
        };
        // Small request/response exchanges: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let conn = Arc::new(Conn {
            route: route.clone(),
            peer: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            peer_ip: peer.ip(),
        });
        let svc = hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(proxy(&conn, req).await) }
        });
        let http = http.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = http.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
            tokio::pin!(c);
            tokio::select! {
                _ = c.as_mut() => return,
                _ = stop.cancelled() => {}
            }
            c.as_mut().graceful_shutdown();
            let _ = c.await;
        });
    }
}

/// The response body: an instance's, or the proxy's own short text.
enum ProxyBody {
    Upstream(Upstream),
    Full(Option<Bytes>),
}

/// A response body streaming from an instance. The instance counts as busy
/// until it is dropped; its connection goes back to the pool when the body
/// was read to the end (otherwise it is closed).
struct Upstream {
    body: Incoming,
    done: bool,
    conn: Option<(Arc<Pool>, SendRequest<Incoming>)>,
    _inflight: InflightGuard,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if (self.done || self.body.is_end_stream())
            && let Some((pool, tx)) = self.conn.take()
        {
            pool.put(tx);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(u) => {
                let f = ready!(Pin::new(&mut u.body).poll_frame(cx));
                if f.is_none() {
                    u.done = true;
                }
                Poll::Ready(f)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(u) => u.done || u.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(u) => u.body.size_hint(),
        }
    }
}

/// The answer when an instance failed the request: counted as its error.
fn bad_gateway(service: &str, backend: &Backend, e: &dyn std::fmt::Display) -> Response<ProxyBody> {
    backend.counters.errors.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(service = %service, instance = %backend.instance, error = %e, "proxy error");
    plain(
        StatusCode::BAD_GATEWAY,
        format!(
            "floyd: instance {} of service {service} failed: {e}\n",
            backend.instance
        ),
    )
}

fn plain(status: StatusCode, msg: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Full(Some(Bytes::from(msg))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The protocol an HTTP/1.1 client asks to switch to (`Connection: upgrade`
/// plus `Upgrade: <protocol>`, as WebSocket does).
fn upgrade_requested(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// After a 101 from the instance: the client's and the instance's
/// connections are joined byte for byte until either side closes. The
/// instance counts as busy meanwhile (draining waits for it, up to the
/// grace period).
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    instance: hyper::upgrade::OnUpgrade,
    inflight: InflightGuard,
    service: String,
) {
    tokio::spawn(async move {
        let _inflight = inflight;
        match tokio::try_join!(client, instance) {
            Ok((c, i)) => {
                let (mut c, mut i) = (TokioIo::new(c), TokioIo::new(i));
                let _ = tokio::io::copy_bidirectional(&mut c, &mut i).await;
            }
            Err(e) => {
                tracing::debug!(service = %service, error = %e, "upgrade failed");
            }
        }
    });
}

async fn proxy(conn: &Conn, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let lb = &*conn.route.lb;
    let kind = &conn.route.kind;
    let upgrade = upgrade_requested(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    h.remove(KEEP_ALIVE);
    h.remove(PROXY_CONNECTION);
    if let Some(proto) = &upgrade {
        // The one hop-by-hop exchange that must reach the instance.
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto.clone());
    }
    let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", conn.peer_ip)).ok(),
        None => Some(conn.peer.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    // The instance gets the origin-form target (`/path?query`); an
    // absolute-form one (h2c, proxy-style clients) keeps its authority as
    // the `Host`.
    if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_none() {
        if !h.contains_key(header::HOST)
            && let Some(a) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            h.insert(header::HOST, v);
        }
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    // The instance hop is HTTP/1.1 with keep-alive, whatever the client spoke.
    parts.version = Version::HTTP_11;
    let mut req = Request::from_parts(parts, body);

    let table = lb.table();
    let (set, mirror_to) = choose(&table, kind.preview, req.headers());
    if let Some(c) = mirror_to
        && upgrade.is_none()
        && req.body().is_end_stream()
    {
        mirror(lb, c, &kind.port_name, &req);
    }
    // Instances that failed this request (no allocation unless one does).
    let mut tried: Vec<usize> = Vec::new();
    // Pooled connections found closed on use; each is discarded, so this is
    // bounded, but a cap keeps a pathological case short.
    let mut stale = 0;
    loop {
        let Some(i) = lb.pick(set, &tried) else {
            if let Some(last) = tried.last() {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "floyd: instance {} of service {} failed\n",
                        set[*last].backend.instance, lb.service
                    ),
                );
            }
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "floyd: no ready instance of service {}{}\n",
                    lb.service,
                    if kind.preview { " (preview)" } else { "" }
                ),
            );
        };
        let target = &set[i];
        let backend = &target.backend;
        let Some(pool) = target.pool_for(&kind.port_name) else {
            tried.push(i);
            continue;
        };
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, pool.host.clone());
        }
        backend.inflight.fetch_add(1, Ordering::AcqRel);
        let guard = InflightGuard(backend.inflight.clone());
        backend.counters.requests.fetch_add(1, Ordering::Relaxed);
        // Not sent: do not count it against the revision.
        let uncount = || backend.counters.requests.fetch_sub(1, Ordering::Relaxed);
        let (mut tx, fresh) = match pool.take() {
            Some(tx) => (tx, false),
            None => match pool.connect().await {
                Ok(tx) => (tx, true),
                Err(e) => {
                    drop(guard);
                    // Nothing was sent: another instance can take it.
                    if tried.len() < MAX_RETRIES {
                        uncount();
                        tried.push(i);
                        continue;
                    }
                    return bad_gateway(&lb.service, backend, &e);
                }
            },
        };
        // A pooled connection whose previous exchange the connection task
        // has not finished yet: wait for it (it is ours alone). A fresh one
        // takes its first request right away.
        if !fresh && !tx.is_ready() && tx.ready().await.is_err() {
            drop(guard);
            uncount();
            stale += 1;
            continue;
        }
        match tx.try_send_request(req).await {
            Ok(mut resp) => {
                if resp.status().is_server_error() {
                    backend.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let (Some(client), Some(proto)) = (client_upgrade, &upgrade)
                {
                    // The instance connection leaves the pool for the tunnel.
                    let instance = hyper::upgrade::on(&mut resp);
                    tunnel(client, instance, guard, lb.service.clone());
                    let (mut rparts, _) = resp.into_parts();
                    for name in HOP_BY_HOP {
                        rparts.headers.remove(name);
                    }
                    rparts.headers.remove(KEEP_ALIVE);
                    rparts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    rparts.headers.insert(header::UPGRADE, proto.clone());
                    return Response::from_parts(rparts, ProxyBody::Full(None));
                }
                let (mut rparts, rbody) = resp.into_parts();
                for name in HOP_BY_HOP {
                    rparts.headers.remove(name);
                }
                rparts.headers.remove(KEEP_ALIVE);
                let body = Upstream {
                    body: rbody,
                    done: false,
                    conn: Some((pool.clone(), tx)),
                    _inflight: guard,
                };
                return Response::from_parts(rparts, ProxyBody::Upstream(body));
            }
            Err(mut e) => {
                drop(guard);
                if let Some(r) = e.take_message()
                    && stale < MAX_IDLE_PER_PORT
                {
                    // The connection closed before the request went out
                    // (the instance closed an idle connection): resend.
                    req = r;
                    uncount();
                    if fresh {
                        tried.push(i);
                    }
                    stale += 1;
                    continue;
                }
                return bad_gateway(&lb.service, backend, &e.into_error());
            }
        }
    }
}

/// The backends a request goes to (preview, stable or canary side), and the
/// canary table when a copy should be mirrored there. Per request: no
/// allocation, one atomic increment for a weighted split.
fn choose<'t>(
    table: &'t Table,
    preview: bool,
    headers: &hyper::HeaderMap,
) -> (&'t [Target], Option<&'t CanaryTable>) {
    if preview {
        return (&table.preview, None);
    }
    let Some(c) = &table.canary else {
        return (&table.active, None);
    };
    let to_canary = c.to_canary(headers);
    let (first, other) = if to_canary {
        (&c.targets[..], &table.active[..])
    } else {
        (&table.active[..], &c.targets[..])
    };
    let mirror = (!to_canary && c.mirror && !c.targets.is_empty()).then_some(c);
    // A side with no ready instance: the other one serves.
    (if first.is_empty() { other } else { first }, mirror)
}

impl Lb {
    /// Benchmarks: `n` routing decisions (side and instance, as a request
    /// with `headers` on the service port gets them; no mirroring, nothing
    /// sent); how many went to `revision`.
    #[doc(hidden)]
    pub fn route_many(&self, headers: &hyper::HeaderMap, n: u64, revision: &Revision) -> u64 {
        let mut hits = 0;
        for _ in 0..n {
            let table = self.table();
            let (set, _) = choose(&table, false, headers);
            if let Some(i) = self.pick(set, &[])
                && &set[i].backend.revision == revision
            {
                hits += 1;
            }
        }
        hits
    }
}

/// Mirrored requests in flight per canary instance beyond which more are
/// not mirrored (a slow canary must not pile up work in the proxy).
const MAX_MIRROR_INFLIGHT: usize = 64;

/// Sends a body-less copy of `req` to a canary instance and discards the
/// answer (counted for the canary's revision, so the gates see it).
fn mirror(lb: &Lb, c: &CanaryTable, port_name: &str, req: &Request<Incoming>) {
    let Some(i) = lb.pick(&c.targets, &[]) else {
        return;
    };
    let target = &c.targets[i];
    let backend = &target.backend;
    let Some(pool) = target.pool_for(port_name) else {
        return;
    };
    if backend.inflight.load(Ordering::Relaxed) >= MAX_MIRROR_INFLIGHT {
        return;
    }
    let mut copy = Request::new(Empty::<Bytes>::new());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = Version::HTTP_11;
    *copy.headers_mut() = req.headers().clone();
    if !copy.headers().contains_key(header::HOST) {
        copy.headers_mut().insert(header::HOST, pool.host.clone());
    }
    backend.inflight.fetch_add(1, Ordering::AcqRel);
    let guard = InflightGuard(backend.inflight.clone());
    let counters = backend.counters.clone();
    let addr = pool.addr;
    let idle = c.mirror_idle.clone();
    tokio::spawn(async move {
        let _guard = guard;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let pooled = idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&addr)
            .and_then(|v| v.pop());
        let tx = match pooled {
            Some(tx) if !tx.is_closed() => Ok(tx),
            _ => connect_plain(addr).await,
        };
        let Ok(mut tx) = tx else {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if tx.ready().await.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match tx.send_request(copy).await {
            Ok(resp) => {
                if resp.status().is_server_error() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                if resp.into_body().collect().await.is_ok() && !tx.is_closed() {
                    let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
                    let v = idle.entry(addr).or_default();
                    if v.len() < MAX_MIRROR_INFLIGHT {
                        v.push(tx);
                    }
                }
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// A new HTTP/1 connection for body-less requests (mirroring).
async fn connect_plain(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr}: timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, inflight: usize) -> Backend {
        Backend {
            instance: id.into(),
            revision: Revision("r".into()),
            ports: BTreeMap::new(),
            inflight: Arc::new(AtomicUsize::new(inflight)),
            counters: Arc::default(),
        }
    }

    fn ids(set: &[Backend], picks: impl IntoIterator<Item = usize>) -> Vec<String> {
        picks.into_iter().map(|i| set[i].instance.clone()).collect()
    }

    /// A load balancer that is never served (picking only).
    fn unserved(policy: LbPolicy) -> (tokio::runtime::Runtime, Arc<Lb>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let lb = Lb::new("s", policy, rt.handle().clone());
        (rt, lb)
    }

    #[test]
    fn round_robin_cycles_and_skips_tried() {
        let (_rt, lb) = unserved(LbPolicy::RoundRobin);
        let set = vec![backend("a", 0), backend("b", 0), backend("c", 0)];
        let picks = ids(&set, (0..6).map(|_| lb.pick(&set, &[]).unwrap()));
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        assert_eq!(ids(&set, lb.pick(&set, &[0, 1])), ["c"]);
        assert!(lb.pick(&set, &[0, 1, 2]).is_none());
        assert!(lb.pick::<Backend>(&[], &[]).is_none());
    }

    #[test]
    fn least_connections_prefers_idle_instances() {
        let (_rt, lb) = unserved(LbPolicy::LeastConnections);
        let set = vec![backend("busy", 5), backend("idle", 0), backend("some", 2)];
        for _ in 0..5 {
            assert_eq!(ids(&set, lb.pick(&set, &[])), ["idle"]);
        }
        let tie = vec![backend("a", 1), backend("b", 1)];
        let picks: std::collections::BTreeSet<String> = (0..4)
            .map(|_| tie[lb.pick(&tie, &[]).unwrap()].instance.clone())
            .collect();
        assert_eq!(picks.len(), 2, "ties spread");
    }

    use std::sync::atomic::AtomicUsize as Count;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers with what it received, one line per item,
    /// and counts the connections it accepted.
    pub(super) async fn echo() -> (u16, Arc<Count>) {
        let accepted = Arc::new(Count::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let a = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    use http_body_util::BodyExt;
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap_or("?").to_string())
                            .unwrap_or_else(|| "-".into())
                    };
                    let mut text = format!(
                        "{} {} {:?}\nhost={}\nxff={}\nproto={}\nkeep-alive={}\nproxy-connection={}\nte={}\nupgrade={}\n",
                        req.method(),
                        req.uri(),
                        req.version(),
                        h("host"),
                        h("x-forwarded-for"),
                        h("x-forwarded-proto"),
                        h("keep-alive"),
                        h("proxy-connection"),
                        h("te"),
                        h("upgrade"),
                    );
                    let status = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("status="))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(200);
                    let body = req.into_body().collect().await?.to_bytes();
                    text.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
                    let mut r = Response::new(http_body_util::Full::new(Bytes::from(text)));
                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                    r.headers_mut()
                        .insert("keep-alive", HeaderValue::from_static("timeout=5"));
                    Ok::<_, hyper::Error>(r)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (port, accepted)
    }

    pub(super) fn routed(id: &str, port: u16, counters: &Arc<Counters>) -> Backend {
        Backend {
            instance: id.into(),
            revision: Revision("r".into()),
            ports: BTreeMap::from([(String::new(), port)]),
            inflight: Arc::default(),
            counters: counters.clone(),
        }
    }

    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn listen(lb: &Arc<Lb>, preview: bool) -> u16 {
        let port = closed_port();
        let want = BTreeMap::from([(
            port,
            ListenerKind {
                port_name: "http".into(),
                preview,
            },
        )]);
        assert!(
            lb.set_listeners(IpAddr::V4(Ipv4Addr::LOCALHOST), &want)
                .await
                .is_empty()
        );
        port
    }

    /// A round-robin LB routing to `active`, listening on a free port.
    pub(super) async fn serving(active: Vec<Backend>) -> (Arc<Lb>, u16) {
        let lb = Lb::new("s", LbPolicy::RoundRobin, tokio::runtime::Handle::current());
        lb.set_routes(Routes {
            active,
            preview: vec![],
            canary: None,
        });
        let port = listen(&lb, false).await;
        (lb, port)
    }

    /// One raw HTTP/1.1 exchange on a new connection (`Connection: close`).
    pub(super) async fn raw(port: u16, head: &str, body: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let req = format!(
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn forwards_headers_target_and_body_and_strips_hop_by_hop() {
        let (up, _) = echo().await;
        let counters = Arc::new(Counters::default());
        let (lb, port) = serving(vec![routed("a", up, &counters)]).await;
        let out = raw(
            port,
            "POST /p/q?x=1&y=2 HTTP/1.1\r\nHost: web.test\r\nX-Forwarded-For: 10.0.0.1\r\nKeep-Alive: timeout=9\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket",
            "hello",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("POST /p/q?x=1&y=2 HTTP/1.1\n"), "{out}");
        for line in [
            "host=web.test",
            "xff=10.0.0.1, 127.0.0.1",
            "proto=http",
            "keep-alive=-",
            "proxy-connection=-",
            "te=-",
            "upgrade=-",
            "body=hello",
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} in {out}");
        }
        // The instance's own hop-by-hop header does not reach the client.
        assert!(
            !out.to_ascii_lowercase().contains("keep-alive: timeout=5"),
            "{out}"
        );
        // HTTP/1.0 without Host: the instance still gets one.
        let out = raw(port, "GET / HTTP/1.0", "").await;
        assert!(out.contains(&format!("host=127.0.0.1:{up}\n")), "{out}");
        assert!(out.contains("xff=127.0.0.1\n"), "{out}");
        assert_eq!(counters.requests.load(Ordering::SeqCst), 2);
        assert_eq!(counters.errors.load(Ordering::SeqCst), 0);
        lb.close();
    }

    #[tokio::test]
    async fn reuses_upstream_connections_and_counts_responses() {
        let (up, accepted) = echo().await;
        let counters = Arc::new(Counters::default());
        let b = routed("a", up, &counters);
        let inflight = b.inflight.clone();
        let (lb, port) = serving(vec![b]).await;
        // Sequential requests, each on a new client connection, including
        // bodiless answers (HEAD, 204): one upstream connection serves all.
        for (i, head) in [
            "GET / HTTP/1.1\r\nHost: x",
            "HEAD / HTTP/1.1\r\nHost: x",
            "GET /?status=204 HTTP/1.1\r\nHost: x",
            "GET /?status=503 HTTP/1.1\r\nHost: x",
            "GET /?status=404 HTTP/1.1\r\nHost: x",
            "GET / HTTP/1.1\r\nHost: x",
        ]
        .iter()
        .enumerate()
        {
            let out = raw(port, head, "").await;
            assert!(out.starts_with("HTTP/1.1 "), "{i}: {out}");
            // The connection goes back to the pool when the response ends.
            assert!(idle_soon(&inflight).await, "{i}: idle after the response");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one upstream connection"
        );
        assert_eq!(counters.requests.load(Ordering::SeqCst), 6);
        assert_eq!(counters.errors.load(Ordering::SeqCst), 1, "the 503 only");
        lb.close();
    }

    #[tokio::test]
    async fn connect_errors_go_to_another_instance_even_with_a_body() {
        let (up, _) = echo().await;
        let (dead, alive) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
        let (lb, port) = serving(vec![
            routed("dead", closed_port(), &dead),
            routed("ok", up, &alive),
        ])
        .await;
        for _ in 0..4 {
            let out = raw(port, "POST / HTTP/1.1\r\nHost: x", "payload").await;
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            assert!(out.contains("body=payload\n"), "{out}");
        }
        assert_eq!(
            dead.requests.load(Ordering::SeqCst),
            0,
            "not sent, not counted"
        );
        assert_eq!(dead.errors.load(Ordering::SeqCst), 0);
        assert_eq!(alive.requests.load(Ordering::SeqCst), 4);

        // Every instance refuses: 502 naming one; none ready: 503.
        lb.set_routes(Routes {
            active: vec![routed("gone", closed_port(), &dead)],
            preview: vec![],
            canary: None,
        });
        let out = raw(port, "GET / HTTP/1.1\r\nHost: x", "").await;
        assert!(out.starts_with("HTTP/1.1 502"), "{out}");
        assert!(out.contains("instance gone of service s failed"), "{out}");
        lb.set_routes(Routes::default());
        let out = raw(port, "GET / HTTP/1.1\r\nHost: x", "").await;
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(out.contains("no ready instance of service s\n"), "{out}");
        let preview = listen(&lb, true).await;
        let out = raw(preview, "GET / HTTP/1.1\r\nHost: x", "").await;
        assert!(
            out.contains("no ready instance of service s (preview)"),
            "{out}"
        );
        lb.close();
    }

    #[tokio::test]
    async fn h2c_clients_are_served_over_http1_upstream() {
        let (up, _) = echo().await;
        let counters = Arc::new(Counters::default());
        let (lb, port) = serving(vec![routed("a", up, &counters)]).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<http_body_util::Empty<Bytes>>();
        let uri: Uri = format!("http://127.0.0.1:{port}/h2?x=1").parse().unwrap();
        let resp = client.get(uri).await.unwrap();
        assert_eq!(resp.status(), 200);
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("GET /h2?x=1 HTTP/1.1\n"), "{text}");
        assert!(text.contains(&format!("host=127.0.0.1:{port}\n")), "{text}");
        lb.close();
    }

    #[tokio::test]
    async fn an_instance_closing_idle_connections_is_not_an_error() {
        // An upstream that closes each connection after one response.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        let counters = Arc::new(Counters::default());
        let (lb, port) = serving(vec![routed("a", up, &counters)]).await;
        for _ in 0..5 {
            let out = raw(port, "GET / HTTP/1.1\r\nHost: x", "").await;
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        }
        assert_eq!(counters.errors.load(Ordering::SeqCst), 0);
        lb.close();
    }
    /// Whether an instance's in-flight count drops to 0 within 2 s.
    async fn idle_soon(inflight: &AtomicUsize) -> bool {
        for _ in 0..200 {
            if inflight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// An upstream that accepts `Upgrade: shout` and then echoes bytes upper-cased.
    async fn shouting() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    let mut r = Response::new(http_body_util::Empty::<Bytes>::new());
                    if req.headers().get(header::UPGRADE).is_none() {
                        *r.status_mut() = StatusCode::BAD_REQUEST;
                        return Ok::<_, hyper::Error>(r);
                    }
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(on.await.unwrap());
                        let mut buf = [0u8; 64];
                        loop {
                            let n = io.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf[..n].make_ascii_uppercase();
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    r.headers_mut()
                        .insert(header::UPGRADE, HeaderValue::from_static("shout"));
                    Ok(r)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades(),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn upgraded_connections_are_tunnelled_and_keep_the_instance_busy() {
        let counters = Arc::new(Counters::default());
        let backend = routed("a", shouting().await, &counters);
        let inflight = backend.inflight.clone();
        let (lb, port) = serving(vec![backend]).await;
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.write_all(b"GET /chat HTTP/1.1\r\nHost: web.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: shout\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(tcp.read(&mut b).await.unwrap(), 1, "{head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: shout"), "{head}");
        assert!(head.contains("connection: upgrade"), "{head}");
        for word in ["hello", "again"] {
            tcp.write_all(word.as_bytes()).await.unwrap();
            let mut got = vec![0u8; word.len()];
            tcp.read_exact(&mut got).await.unwrap();
            assert_eq!(got, word.to_uppercase().as_bytes());
        }
        assert_eq!(inflight.load(Ordering::SeqCst), 1, "busy while tunnelled");
        assert_eq!(counters.requests.load(Ordering::SeqCst), 1);
        drop(tcp);
        assert!(idle_soon(&inflight).await, "idle once the client left");
        // Without `Connection: upgrade` the header is not forwarded.
        let out = raw(port, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: shout", "").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        lb.close();
    }
}

#[cfg(test)]
mod canary_tests {
    use super::tests::{echo, raw, routed, serving};
    use super::*;

    #[test]
    fn weighted_split_is_exact_and_even_for_every_weight() {
        for w in 0..=100u32 {
            // Exactly w of every 100 consecutive requests, from any start.
            for start in [0u64, 37, 99, 1_000_003] {
                let n = (start..start + 100)
                    .filter(|&k| weighted_to_canary(k, w))
                    .count();
                assert_eq!(n, w as usize, "weight {w} from {start}");
            }
            // Evenly spread: between two canary requests at most
            // ceil(100 / w) requests pass.
            if w > 0 {
                let hits: Vec<u64> = (0..300).filter(|&k| weighted_to_canary(k, w)).collect();
                let max_gap = hits.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(0);
                assert!(
                    max_gap <= u64::from(100u32.div_ceil(w)),
                    "weight {w}: gap {max_gap}"
                );
            }
        }
        assert!(!weighted_to_canary(5, 0));
        assert!(weighted_to_canary(5, 100));
    }

    fn split(
        stable: Vec<Backend>,
        canary: Vec<Backend>,
        weight: u32,
        matches: &[(&str, &str)],
        mirror: bool,
    ) -> Routes {
        let m = if matches.is_empty() {
            Vec::new()
        } else {
            vec![crate::manifest::CanaryMatch {
                headers: matches
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }]
        };
        Routes {
            active: stable,
            preview: vec![],
            canary: Some(CanaryRoutes::new(canary, weight, &m, mirror)),
        }
    }

    async fn wait_until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn canary_split_header_matches_mirror_and_empty_sides() {
        let (s_port, _) = echo().await;
        let (c_port, _) = echo().await;
        let (cs, cc) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
        let stable = || vec![routed("s1", s_port, &cs)];
        let canary = || vec![routed("c1", c_port, &cc)];
        let (lb, port) = serving(vec![]).await;
        let count = |c: &Counters| c.requests.load(Ordering::SeqCst);
        for w in [5u32, 25, 50, 100] {
            lb.set_routes(split(stable(), canary(), w, &[], false));
            let (s0, c0) = (count(&cs), count(&cc));
            for _ in 0..200 {
                let out = raw(port, "GET / HTTP/1.1\r\nHost: x", "").await;
                assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            }
            assert_eq!(count(&cc) - c0, 2 * w as u64, "weight {w}: exact share");
            assert_eq!(count(&cs) - s0, 200 - 2 * w as u64, "weight {w}");
        }
        // Header matches go to the canary whatever the weight (names are
        // case-insensitive, values exact); they do not shift the weighted count.
        lb.set_routes(split(stable(), canary(), 0, &[("x-canary", "true")], false));
        let (s0, c0) = (count(&cs), count(&cc));
        for _ in 0..30 {
            raw(port, "GET / HTTP/1.1\r\nHost: x\r\nX-Canary: true", "").await;
        }
        for _ in 0..10 {
            raw(port, "GET / HTTP/1.1\r\nHost: x\r\nX-Canary: TRUE", "").await;
        }
        assert_eq!(count(&cc) - c0, 30);
        assert_eq!(count(&cs) - s0, 10);
        // Mirror: stable answers, the canary sees a copy (answer discarded,
        // counted for its revision); requests with a body are not copied.
        lb.set_routes(split(stable(), canary(), 0, &[], true));
        let (s0, c0) = (count(&cs), count(&cc));
        for _ in 0..20 {
            let out = raw(port, "GET /?status=200 HTTP/1.1\r\nHost: x", "").await;
            assert!(out.contains("GET /?status=200"), "{out}");
        }
        raw(port, "POST / HTTP/1.1\r\nHost: x", "body").await;
        wait_until("20 mirrored requests", || count(&cc) - c0 == 20).await;
        assert_eq!(count(&cs) - s0, 21);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(&cc) - c0, 20, "the POST was not mirrored");
        // A mirrored 500 counts as the canary's error, not the client's.
        let e0 = cc.errors.load(Ordering::SeqCst);
        let out = raw(port, "GET /?status=500 HTTP/1.1\r\nHost: x", "").await;
        assert!(out.starts_with("HTTP/1.1 500"), "the stable answer: {out}");
        wait_until("the mirrored error", || {
            cc.errors.load(Ordering::SeqCst) == e0 + 1
        })
        .await;
        // A side with no ready instance: the other one serves (no 503).
        lb.set_routes(split(stable(), vec![], 100, &[("x-canary", "true")], true));
        let out = raw(port, "GET / HTTP/1.1\r\nHost: x\r\nX-Canary: true", "").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        lb.set_routes(split(vec![], canary(), 0, &[], false));
        let out = raw(port, "GET / HTTP/1.1\r\nHost: x", "").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn weight_changes_never_drop_in_flight_requests() {
        let (s_port, _) = echo().await;
        let (c_port, _) = echo().await;
        let (cs, cc) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
        let (lb, port) = serving(vec![]).await;
        lb.set_routes(split(
            vec![routed("s1", s_port, &cs)],
            vec![routed("c1", c_port, &cc)],
            0,
            &[],
            false,
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..4 {
            let stop = stop.clone();
            clients.push(tokio::spawn(async move {
                let (mut ok, mut bad) = (0u32, 0u32);
                while !stop.load(Ordering::SeqCst) {
                    let out = raw(port, "GET / HTTP/1.1\r\nHost: x", "").await;
                    if out.starts_with("HTTP/1.1 200") {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                }
                (ok, bad)
            }));
        }
        for w in [1u32, 5, 10, 25, 50, 75, 100, 0, 50] {
            lb.set_routes(split(
                vec![routed("s1", s_port, &cs)],
                vec![routed("c1", c_port, &cc)],
                w,
                &[],
                false,
            ));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        stop.store(true, Ordering::SeqCst);
        let (mut ok, mut bad) = (0, 0);
        for c in clients {
            let (o, b) = c.await.unwrap();
            ok += o;
            bad += b;
        }
        assert_eq!(bad, 0, "{ok} answered");
        assert!(ok > 20, "{ok}");
        assert!(cc.requests.load(Ordering::SeqCst) > 0);
    }
}
