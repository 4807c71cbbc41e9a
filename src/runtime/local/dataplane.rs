//! The data plane: the load balancers of every service, in a process of
//! their own (`floyd dataplane`, the default) so that a crash, `kill -9` or
//! upgrade of `floyd run` drops no request, or on threads of the controller
//! (`--dataplane in-process`).
//!
//! Owns: the listeners and route tables of all services ([`Dataplane`]); the
//! local channel the controller configures them through (a unix socket,
//! `<state-dir>/local/dataplane.sock`, mode 0600: one JSON [`Request`] per
//! line, one JSON [`Response`] per line); and the life of the dataplane
//! process as the controller sees it ([`Supervised`]): start it, adopt it
//! after a controller restart (recorded pid and start time plus the
//! `FLOYD_DATAPLANE_STATE` marker, as for instances), start it again when
//! it dies (its listeners are bound again), stop it on shutdown.
//!
//! Must not: decide routes. The runtime computes each service's whole
//! configuration ([`ServiceConfig`]) and sends it; the data plane applies it
//! as is, and only counts (requests and errors per revision, requests in
//! flight per instance) for the controller to read back.

use super::lb::{Backend, CanaryRoutes, Counters, Lb, LbPolicy, LbThreads, ListenerKind, Routes};
use super::process;
use crate::manifest::{CanaryMatch, Revision, ServiceName};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Version of the channel's messages. A dataplane speaking another one is
/// replaced (stopped, then started from the controller's binary).
pub const PROTOCOL: u32 = 1;

/// Environment variable marking a dataplane process as this state
/// directory's (its value is the `<state-dir>/local` path).
pub const MARKER_ENV: &str = "FLOYD_DATAPLANE_STATE";

/// One message (a line) on the channel is at most this long.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// How long one request to the dataplane process may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the dataplane runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DataplaneMode {
    /// A process of its own (`floyd dataplane`), supervised and adopted by
    /// the controller: traffic outlives the controller.
    #[default]
    Process,
    /// Threads of the controller process: traffic stops with it.
    InProcess,
}

/// What a dataplane is started with; a running one with other settings is
/// replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub bind: IpAddr,
    pub policy: LbPolicy,
    pub threads: usize,
}

/// The whole configuration of one service's load balancer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfig {
    pub listeners: Vec<ListenerConfig>,
    pub active: Vec<BackendConfig>,
    pub preview: Vec<BackendConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryConfig>,
    /// Revisions whose counters are kept (those of other revisions are dropped).
    pub revisions: Vec<Revision>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerConfig {
    pub port: u16,
    /// Declared port name the instance port is looked up by.
    pub port_name: String,
    pub preview: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendConfig {
    pub instance: String,
    pub revision: Revision,
    /// Instance port per declared port name; `""` is the primary `PORT`.
    pub ports: BTreeMap<String, u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryConfig {
    pub backends: Vec<BackendConfig>,
    pub weight: u32,
    pub matches: Vec<CanaryMatch>,
    pub mirror: bool,
}

/// A request on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Hello,
    /// Replaces the service's configuration (listeners opened and closed to match).
    Apply {
        service: ServiceName,
        config: ServiceConfig,
    },
    /// Closes the service's listeners and forgets it.
    Remove {
        service: ServiceName,
    },
    /// Counters and problems of one service, or of all.
    Stats {
        service: Option<ServiceName>,
    },
    /// Requests in flight to one instance.
    Inflight {
        service: ServiceName,
        instance: String,
    },
    /// Closes every listener, lets in-flight requests finish, exits.
    Shutdown,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Response {
    Hello {
        protocol: u32,
        version: String,
        pid: u32,
        settings: Settings,
    },
    Applied {
        listening: Vec<u16>,
        errors: Vec<String>,
    },
    Stats {
        services: BTreeMap<ServiceName, ServiceStats>,
    },
    Inflight {
        count: usize,
    },
    Done,
    Error {
        message: String,
    },
}

/// What the controller reads back about a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Cumulative (requests, errors) per revision since the dataplane started.
    pub traffic: BTreeMap<Revision, (u64, u64)>,
    /// Wanted ports that could not be bound, with why.
    pub problems: Vec<String>,
    pub listening: Vec<u16>,
}

/// One service as the dataplane serves it.
struct Served {
    lb: Arc<Lb>,
    want: BTreeMap<u16, ListenerKind>,
    inflight: HashMap<String, Arc<AtomicUsize>>,
    counters: BTreeMap<Revision, Arc<Counters>>,
}

/// The load balancers of every service, configured as a whole per service.
pub struct Dataplane {
    settings: Settings,
    threads: LbThreads,
    services: Mutex<BTreeMap<ServiceName, Served>>,
    closed: CancellationToken,
}

impl Dataplane {
    /// Starts the load balancers' threads and the task that binds again
    /// the ports that could not be bound (the process holding one may exit).
    pub fn start(settings: Settings) -> std::io::Result<Arc<Dataplane>> {
        let threads = LbThreads::start(settings.threads)?;
        let dp = Arc::new(Dataplane {
            settings,
            threads,
            services: Mutex::new(BTreeMap::new()),
            closed: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&dp);
        let closed = dp.closed.clone();
        dp.threads.handle().spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let Some(dp) = weak.upgrade() else { return };
                dp.retry_listeners().await;
            }
        });
        Ok(dp)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceName, Served>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Answers one request (`Shutdown` closes the listeners; the process exits).
    pub async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Hello => Response::Hello {
                protocol: PROTOCOL,
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                settings: self.settings.clone(),
            },
            Request::Apply { service, config } => {
                let (listening, errors) = self.apply(&service, config).await;
                Response::Applied { listening, errors }
            }
            Request::Remove { service } => {
                if let Some(s) = self.lock().remove(&service) {
                    s.lb.close();
                }
                Response::Done
            }
            Request::Stats { service } => Response::Stats {
                services: self.stats(service.as_ref()),
            },
            Request::Inflight { service, instance } => Response::Inflight {
                count: self.inflight(&service, &instance),
            },
            Request::Shutdown => {
                self.close();
                Response::Done
            }
        }
    }

    /// Swaps in the service's routes, then opens and closes listeners to
    /// match. Returns the ports listened on and why any wanted one is not.
    pub async fn apply(
        &self,
        service: &ServiceName,
        config: ServiceConfig,
    ) -> (Vec<u16>, Vec<String>) {
        let want: BTreeMap<u16, ListenerKind> = config
            .listeners
            .iter()
            .map(|l| {
                (
                    l.port,
                    ListenerKind {
                        port_name: l.port_name.clone(),
                        preview: l.preview,
                    },
                )
            })
            .collect();
        let lb = {
            let mut services = self.lock();
            let s = services.entry(service.clone()).or_insert_with(|| Served {
                lb: Lb::new(
                    service.as_str(),
                    self.settings.policy,
                    self.threads.handle(),
                ),
                want: BTreeMap::new(),
                inflight: HashMap::new(),
                counters: BTreeMap::new(),
            });
            s.want = want.clone();
            let routes = s.routes(config);
            s.lb.set_routes(routes);
            s.lb.clone()
        };
        let errors = lb.set_listeners(self.settings.bind, &want).await;
        (lb.ports(), errors)
    }

    fn stats(&self, only: Option<&ServiceName>) -> BTreeMap<ServiceName, ServiceStats> {
        self.lock()
            .iter()
            .filter(|(n, _)| only.is_none_or(|o| o == *n))
            .map(|(n, s)| {
                let traffic = s
                    .counters
                    .iter()
                    .map(|(r, c)| {
                        (
                            r.clone(),
                            (
                                c.requests.load(Ordering::Relaxed),
                                c.errors.load(Ordering::Relaxed),
                            ),
                        )
                    })
                    .collect();
                let stats = ServiceStats {
                    traffic,
                    problems: s.lb.bind_errors(),
                    listening: s.lb.ports(),
                };
                (n.clone(), stats)
            })
            .collect()
    }

    fn inflight(&self, service: &ServiceName, instance: &str) -> usize {
        self.lock()
            .get(service)
            .and_then(|s| s.inflight.get(instance))
            .map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// Requests in flight to any instance.
    fn inflight_total(&self) -> usize {
        self.lock()
            .values()
            .flat_map(|s| s.inflight.values())
            .map(|n| n.load(Ordering::Acquire))
            .sum()
    }

    async fn retry_listeners(&self) {
        let failing: Vec<(Arc<Lb>, BTreeMap<u16, ListenerKind>)> = self
            .lock()
            .values()
            .filter(|s| !s.lb.bind_errors().is_empty())
            .map(|s| (s.lb.clone(), s.want.clone()))
            .collect();
        for (lb, want) in failing {
            if lb.set_listeners(self.settings.bind, &want).await.is_empty() {
                tracing::info!("load balancer listening on every port again");
            }
        }
    }

    /// Closes every listener (connections finish their in-flight request).
    pub fn close(&self) {
        self.closed.cancel();
        for s in self.lock().values() {
            s.lb.close();
        }
    }
}

impl Served {
    /// The route table of `config`, with this service's in-flight and
    /// request counters attached; counters and in-flight counts of what left
    /// the configuration (and is idle) are dropped.
    fn routes(&mut self, config: ServiceConfig) -> Routes {
        let keep = config.revisions;
        let mut seen: Vec<String> = Vec::new();
        let mut used: Vec<Revision> = Vec::new();
        let mut backend = |b: BackendConfig| {
            seen.push(b.instance.clone());
            used.push(b.revision.clone());
            Backend {
                inflight: self.inflight.entry(b.instance.clone()).or_default().clone(),
                counters: self.counters.entry(b.revision.clone()).or_default().clone(),
                instance: b.instance,
                revision: b.revision,
                ports: b.ports,
            }
        };
        let active = config.active.into_iter().map(&mut backend).collect();
        let preview = config.preview.into_iter().map(&mut backend).collect();
        let canary = config.canary.map(|c| {
            let backends = c.backends.into_iter().map(&mut backend).collect();
            CanaryRoutes::new(backends, c.weight, &c.matches, c.mirror)
        });
        // Draining instances stay until idle (the supervisor asks for their count).
        self.inflight
            .retain(|id, n| seen.contains(id) || n.load(Ordering::Acquire) > 0);
        self.counters
            .retain(|r, _| keep.contains(r) || used.contains(r));
        Routes {
            active,
            preview,
            canary,
        }
    }
}

/// `<state-dir>/local/dataplane.sock`.
pub fn socket_path(local_dir: &Path) -> PathBuf {
    local_dir.join("dataplane.sock")
}

/// Unix socket paths are limited to 107 bytes; say so instead of failing obscurely.
fn check_socket_path(socket: &Path) -> Result<(), String> {
    let len = socket.as_os_str().len();
    if len > 107 {
        return Err(format!(
            "the dataplane's socket path {} is {len} bytes, over the 107 a unix socket allows; use a shorter --state-dir (or --dataplane in-process)",
            socket.display()
        ));
    }
    Ok(())
}

/// The `floyd dataplane` process: serves the channel on `socket` until a
/// `Shutdown` request, SIGTERM/SIGINT, or the socket file is removed or
/// replaced (its state directory is gone: nobody can configure it any more).
/// On the way out the listeners close and in-flight requests get up to
/// `grace` to finish.
pub async fn serve(dp: Arc<Dataplane>, socket: &Path, grace: Duration) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    check_socket_path(socket).map_err(std::io::Error::other)?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let ino = std::fs::metadata(socket)?.ino();
    let stop = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(socket = %socket.display(), settings = ?dp.settings(), "dataplane ready");
    loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((conn, _)) => {
                    tokio::spawn(answer(dp.clone(), conn, stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dataplane: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.cancelled() => {
                tracing::info!("dataplane: asked to stop");
                break;
            }
            _ = term.recv() => {
                tracing::info!("dataplane: SIGTERM");
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if std::fs::metadata(socket).map(|m| m.ino()).ok() != Some(ino) {
                    tracing::warn!(socket = %socket.display(), "dataplane: the socket was removed or replaced; exiting");
                    dp.close();
                    return Ok(());
                }
            }
        }
    }
    dp.close();
    let deadline = tokio::time::Instant::now() + grace;
    while dp.inflight_total() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if std::fs::metadata(socket).map(|m| m.ino()).ok() == Some(ino) {
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
}

/// Answers the requests of one connection, one line each.
async fn answer(dp: Arc<Dataplane>, conn: tokio::net::UnixStream, stop: CancellationToken) {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    loop {
        let line = match read_line(&mut r).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                let _ = write_msg(&mut w, &Response::Error { message: e }).await;
                return;
            }
        };
        let (resp, bye) = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => {
                let bye = req == Request::Shutdown;
                (dp.handle(req).await, bye)
            }
            Err(e) => (
                Response::Error {
                    message: format!("not a dataplane request (protocol {PROTOCOL}): {e}"),
                },
                false,
            ),
        };
        if write_msg(&mut w, &resp).await.is_err() {
            return;
        }
        if bye {
            stop.cancel();
            return;
        }
    }
}

/// One line (without its newline), at most [`MAX_MESSAGE`] bytes; `None` at the end.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let n = r
        .take(MAX_MESSAGE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_MESSAGE {
            format!("message over {MAX_MESSAGE} bytes")
        } else {
            "connection closed in the middle of a message".into()
        });
    }
    line.pop();
    Ok(Some(line))
}

async fn write_msg<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.flush().await
}

/// Sends one request to the dataplane listening on `socket`.
pub async fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let exchange = async {
        let mut conn = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
        write_msg(&mut conn, req)
            .await
            .map_err(|e| format!("send to {}: {e}", socket.display()))?;
        let mut r = BufReader::new(conn);
        let line = read_line(&mut r)
            .await?
            .ok_or_else(|| format!("{} closed without an answer", socket.display()))?;
        serde_json::from_slice::<Response>(&line).map_err(|e| {
            format!("the dataplane's answer is not understood (protocol {PROTOCOL}): {e}")
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(Response::Error { message })) => Err(format!("the dataplane refused: {message}")),
        Ok(r) => r,
        Err(_) => Err(format!(
            "the dataplane at {} did not answer within {REQUEST_TIMEOUT:?}",
            socket.display()
        )),
    }
}

/// The recorded dataplane process (`<state-dir>/local/dataplane.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: tells it from a recycled pid.
    pub start_time: u64,
}

/// What to do with a dataplane found running when the controller starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Same protocol and settings: keep it, traffic never stops.
    Adopt,
    /// Another protocol or other settings: stop it and start ours.
    Replace(String),
}

/// Decides about a running dataplane from its `Hello`.
pub fn judge(hello: &Response, want: &Settings) -> Found {
    match hello {
        Response::Hello {
            protocol, settings, ..
        } if *protocol == PROTOCOL && settings == want => Found::Adopt,
        Response::Hello {
            protocol,
            settings,
            version,
            ..
        } if *protocol != PROTOCOL => Found::Replace(format!(
            "it runs floyd {version} with protocol {protocol}, this controller speaks {PROTOCOL}; settings {settings:?}"
        )),
        Response::Hello { settings, .. } => Found::Replace(format!(
            "its settings {settings:?} differ from the wanted {want:?}"
        )),
        other => Found::Replace(format!("unexpected answer to hello: {other:?}")),
    }
}

/// The dataplane process seen from the controller: started, adopted,
/// restarted and stopped here.
pub struct Supervised {
    socket: PathBuf,
    record_file: PathBuf,
    log: PathBuf,
    marker: String,
    floyd_bin: String,
    state_dir: PathBuf,
    settings: Settings,
    /// The process we started (to reap it), or none when adopted.
    child: tokio::sync::Mutex<Option<tokio::process::Child>>,
    current: Mutex<Option<Record>>,
}

impl Supervised {
    /// `local_dir` is `<state-dir>/local` (also the marker), `state_dir` the
    /// controller's `--state-dir`.
    pub fn new(
        local_dir: &Path,
        state_dir: &Path,
        floyd_bin: String,
        settings: Settings,
    ) -> Result<Supervised, String> {
        let socket = socket_path(local_dir);
        check_socket_path(&socket)?;
        Ok(Supervised {
            socket,
            record_file: local_dir.join("dataplane.json"),
            log: local_dir.join("logs").join("dataplane.log"),
            marker: local_dir.to_string_lossy().into_owned(),
            floyd_bin,
            state_dir: state_dir.to_path_buf(),
            settings,
            child: tokio::sync::Mutex::new(None),
            current: Mutex::new(None),
        })
    }

    pub async fn request(&self, req: &Request) -> Result<Response, String> {
        call(&self.socket, req).await
    }

    /// The pid of the dataplane process, if one is known.
    pub fn pid(&self) -> Option<i32> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|r| r.pid)
    }

    fn ours(&self, r: &Record) -> bool {
        process::alive(r.pid, r.start_time) && process::has_env(r.pid, MARKER_ENV, &self.marker)
    }

    /// Whether the known dataplane process is alive (reaps it if it was our child).
    pub async fn alive(&self) -> bool {
        if let Some(c) = self.child.lock().await.as_mut() {
            let _ = c.try_wait();
        }
        let cur = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        cur.is_some_and(|r| self.ours(&r))
    }

    /// At controller start: adopts the recorded dataplane when it is ours
    /// and compatible, else starts one. Returns whether it was adopted.
    pub async fn adopt_or_start(&self) -> Result<bool, String> {
        let recorded: Option<Record> = std::fs::read(&self.record_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(r) = recorded {
            if self.ours(&r) {
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                match self.request(&Request::Hello).await {
                    Ok(hello) => match judge(&hello, &self.settings) {
                        Found::Adopt => {
                            tracing::info!(
                                pid = r.pid,
                                "adopted the running dataplane: traffic continues"
                            );
                            return Ok(true);
                        }
                        Found::Replace(why) => {
                            tracing::warn!(pid = r.pid, "replacing the running dataplane: {why}");
                        }
                    },
                    Err(e) => tracing::warn!(
                        pid = r.pid,
                        "replacing the running dataplane, which does not answer: {e}"
                    ),
                }
                self.stop().await;
            } else if process::proc_stat(r.pid).is_some() {
                tracing::warn!(
                    pid = r.pid,
                    "recorded dataplane pid is alive but not this state directory's dataplane: forgotten, not signalled"
                );
            }
        }
        // An unrecorded one of ours (killed between spawn and record) holds the ports.
        for pid in process::processes_with_env(MARKER_ENV, &self.marker) {
            tracing::warn!(
                pid,
                "stopping an unrecorded dataplane left by a previous run"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.start().await?;
        Ok(false)
    }

    /// Starts a dataplane process and waits until it answers.
    pub async fn start(&self) -> Result<(), String> {
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| format!("cannot open the dataplane log {}: {e}", self.log.display()))
        };
        let mut cmd = tokio::process::Command::new(&self.floyd_bin);
        cmd.arg("dataplane")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--lb-bind")
            .arg(self.settings.bind.to_string())
            .arg("--lb-policy")
            .arg(match self.settings.policy {
                LbPolicy::RoundRobin => "round-robin",
                LbPolicy::LeastConnections => "least-connections",
            })
            .arg("--lb-threads")
            .arg(self.settings.threads.to_string())
            .env_clear()
            .envs(process::pass_through_env())
            .env(MARKER_ENV, &self.marker)
            .stdin(std::process::Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            // Its own group: a Ctrl-C or a signal to the controller's group
            // does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start the dataplane ({} dataplane): {e}",
                self.floyd_bin
            )
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let start_time = process::proc_stat(pid).map(|s| s.1).unwrap_or(0);
        let record = Record { pid, start_time };
        // Recorded first: a controller killed from here on adopts it.
        if let Err(e) = write_record(&self.record_file, &record) {
            tracing::error!("{e}");
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.request(&Request::Hello).await {
                Ok(Response::Hello { .. }) => break,
                Ok(other) => return Err(format!("the new dataplane answered {other:?}")),
                Err(e) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(format!(
                            "the dataplane {}; see {}",
                            process::describe_exit(st),
                            self.log.display()
                        ));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        let _ = child.start_kill();
                        return Err(format!("the dataplane did not come up within 10 s: {e}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(pid, "dataplane started");
        *self.child.lock().await = Some(child);
        Ok(())
    }

    /// Stops the dataplane: `Shutdown` (listeners close, in-flight requests
    /// finish), then SIGKILL after 10 s. Only a process with our marker is signalled.
    pub async fn stop(&self) {
        let Some(r) = *self.current.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let _ = self.request(&Request::Shutdown).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.alive().await && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.ours(&r) {
            tracing::warn!(
                pid = r.pid,
                "the dataplane did not stop within 10 s: killed"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(r.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut c) = self.child.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.wait()).await;
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = std::fs::remove_file(&self.record_file);
    }
}

fn write_record(path: &Path, r: &Record) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot record the dataplane in {}: {e}", path.display());
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec(r).map_err(|e| err(std::io::Error::other(e)))?)
            .map_err(err)?;
        f.sync_data().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn settings() -> Settings {
        Settings {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            policy: LbPolicy::RoundRobin,
            threads: 1,
        }
    }

    fn hello(protocol: u32, settings: Settings) -> Response {
        Response::Hello {
            protocol,
            version: "0.0.0".into(),
            pid: 1,
            settings,
        }
    }

    #[test]
    fn a_running_dataplane_is_adopted_only_when_protocol_and_settings_match() {
        let want = settings();
        let other_policy = Settings {
            policy: LbPolicy::LeastConnections,
            ..settings()
        };
        let other_bind = Settings {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ..settings()
        };
        let more_threads = Settings {
            threads: 4,
            ..settings()
        };
        let cases = [
            (hello(PROTOCOL, want.clone()), true),
            (hello(PROTOCOL + 1, want.clone()), false),
            (hello(PROTOCOL, other_policy), false),
            (hello(PROTOCOL, other_bind), false),
            (hello(PROTOCOL, more_threads), false),
            (Response::Done, false),
        ];
        for (answer, adopt) in cases {
            let got = judge(&answer, &want);
            assert_eq!(got == Found::Adopt, adopt, "{answer:?}: {got:?}");
            if let Found::Replace(why) = got {
                assert!(!why.is_empty());
            }
        }
    }

    #[test]
    fn requests_and_answers_keep_their_wire_form() {
        // The wire form is what an older or newer dataplane reads: pinned here.
        let req = Request::Inflight {
            service: ServiceName::parse("web").unwrap(),
            instance: "web-1".into(),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"op":"inflight","service":"web","instance":"web-1"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        let text = serde_json::to_string(&hello(PROTOCOL, settings())).unwrap();
        assert!(
            text.starts_with(r#"{"answer":"hello","protocol":1,"#),
            "{text}"
        );
        assert!(text.contains(r#""policy":"round-robin""#), "{text}");
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn http_status(port: u16) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        use tokio::io::AsyncReadExt;
        s.read_to_string(&mut out).await.unwrap();
        out.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn the_channel_configures_listeners_reports_and_shuts_down() {
        let dir = tempfile::tempdir().unwrap();
        let socket = socket_path(dir.path());
        let dp = Dataplane::start(settings()).unwrap();
        let server = tokio::spawn({
            let socket = socket.clone();
            async move { serve(dp, &socket, Duration::from_secs(1)).await }
        });
        let mut up = false;
        for _ in 0..200 {
            if call(&socket, &Request::Hello).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(up, "the dataplane answers");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may configure it");

        let web = ServiceName::parse("web").unwrap();
        let port = free_port();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let config = ServiceConfig {
            listeners: [port, busy]
                .into_iter()
                .map(|p| ListenerConfig {
                    port: p,
                    port_name: "http".into(),
                    preview: false,
                })
                .collect(),
            revisions: vec![Revision("r1".into())],
            ..ServiceConfig::default()
        };
        let answer = call(
            &socket,
            &Request::Apply {
                service: web.clone(),
                config,
            },
        )
        .await
        .unwrap();
        let Response::Applied { listening, errors } = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(listening, vec![port]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains(&busy.to_string()), "{errors:?}");
        assert!(http_status(port).await.contains("503"), "no ready instance");
        let Response::Stats { services } = call(&socket, &Request::Stats { service: None })
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(services[&web].listening, vec![port]);
        assert_eq!(services[&web].problems.len(), 1);

        // Garbage and oversize lines get an error, not a crash.
        let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
        conn.write_all(b"{\"op\":\"launch-missiles\"}\n")
            .await
            .unwrap();
        let mut r = BufReader::new(conn);
        let line = read_line(&mut r).await.unwrap().unwrap();
        let answer: Response = serde_json::from_slice(&line).unwrap();
        assert!(
            matches!(&answer, Response::Error { message } if message.contains("not a dataplane request")),
            "{answer:?}"
        );

        assert_eq!(
            call(&socket, &Request::Shutdown).await.unwrap(),
            Response::Done
        );
        server.await.unwrap().unwrap();
        assert!(!socket.exists(), "the socket goes with it");
        let mut closed = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(closed, "the listener is closed");
    }

    #[tokio::test]
    async fn a_dataplane_whose_socket_was_removed_exits() {
        let dir = tempfile::tempdir().unwrap();
        let socket = socket_path(dir.path());
        let dp = Dataplane::start(settings()).unwrap();
        let server = tokio::spawn({
            let socket = socket.clone();
            async move { serve(dp, &socket, Duration::from_secs(1)).await }
        });
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::remove_file(&socket).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("exits within a few seconds")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_socket_path_too_long_for_unix_sockets_is_a_clear_error() {
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(120)));
        let e = check_socket_path(&socket_path(&long)).unwrap_err();
        assert!(e.contains("shorter --state-dir"), "{e}");
        assert!(check_socket_path(Path::new("/tmp/x/dataplane.sock")).is_ok());
    }
}
