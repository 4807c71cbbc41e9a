//! The `local` runtime (the embedded default): instances are real processes
//! in their own process groups, probes are real HTTP/TCP/exec checks, a
//! built-in load balancer per service routes to ready instances, GPUs come
//! from `nvidia-smi` or a declared inventory. Restart-safe: what it runs is
//! persisted in the state directory and adopted again after a restart.
//!
//! Files: [`process`] (start, watch, stop, log rotation), [`probe`] (kubelet
//! probes), [`lb`] (reverse proxy), [`gpu`] (inventory, placement), [`state`]
//! (records and the state file), `supervisor` (one task per instance: start,
//! probe, restart with backoff, drain and stop).
//!
//! # Wiring it into a controller
//!
//! ```no_run
//! # async fn f() -> Result<(), floyd::runtime::Error> {
//! use floyd::runtime::local::{LocalConfig, LocalRuntime, parse_gpus_flag};
//! let mut cfg = LocalConfig::new(".floyd");          // the controller's --state-dir
//! cfg.gpus = parse_gpus_flag("NVIDIA-L4:2").unwrap(); // --gpus, or floyd.yaml runtime.local.gpus
//! cfg.leave_running = false;                          // --leave-running
//! let rt = LocalRuntime::start(cfg).await?;           // adopts what a previous run left
//! // ... use it as Arc<dyn Runtime>: observe / apply / delete_service ...
//! rt.shutdown().await;                                // on SIGINT/SIGTERM
//! # Ok(()) }
//! ```
//!
//! `start` adopts instances of a previous run (pid alive and start time
//! matching), cleans up dead ones and kills unrecorded leftovers. Dropping a
//! `LocalRuntime` without `shutdown` abandons its instances (they keep
//! running, as after `kill -9`), which is what the adoption tests rely on.
//!
//! Within a revision this runtime is the instance manager: it keeps the live
//! count at the desired count (slow-start creation, unready-first deletion),
//! restarts crashed instances with exponential backoff, and drains an
//! instance (out of the load balancer, in-flight requests finish) before
//! stopping it. It never decides a rollout step.
//!
//! Layout of `<state-dir>/local/`: `state.json`, `logs/<service>/<revision>/<instance>.log[.N]`.

pub mod dataplane;
pub mod gpu;
pub mod lb;
pub mod logtimes;
pub mod probe;
pub mod process;
pub mod state;
mod supervisor;

pub use dataplane::DataplaneMode;
pub use gpu::{GpuDevice, GpuError, parse_gpus_flag, parse_nvidia_smi};
pub use lb::{LbPolicy, LbThreads};

use crate::engine::instances::{pick_for_deletion, slow_start_batches};
use crate::manifest::{GpuInventory, Revision, ServiceName, ServiceSpec, Strategy};
use crate::runtime::{
    Action, CanarySplit, Error, Instance, InstancePhase, Observed, ObservedRevision,
    RevisionTraffic, Runtime,
};
use crate::time::Time;
use dataplane::{
    BackendConfig, CanaryConfig, Dataplane, ListenerConfig, Request, Response, ServiceConfig,
    ServiceStats, Settings, Supervised,
};
use state::{Inst, Rev, State, Svc};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the local runtime is set up. [`LocalConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The controller's state directory; the runtime uses `<state_dir>/local`.
    pub state_dir: PathBuf,
    /// Where load balancers listen (default 127.0.0.1).
    pub bind: IpAddr,
    /// Declared GPU inventory, used when `nvidia-smi` is absent.
    pub gpus: Vec<GpuInventory>,
    /// The `nvidia-smi` to run (default `nvidia-smi` on PATH); `None` skips detection.
    pub nvidia_smi: Option<PathBuf>,
    /// Leave instances running on [`LocalRuntime::shutdown`].
    pub leave_running: bool,
    /// `FLOYD_BIN` for instances (default: this executable).
    pub floyd_bin: Option<PathBuf>,
    pub lb_policy: LbPolicy,
    /// Threads of the load balancers (default [`LbThreads::default_count`]).
    pub lb_threads: usize,
    /// Rotate an instance log above this size (default 10 MiB).
    pub log_max_bytes: u64,
    /// Rotated files kept (default 3).
    pub log_keep: u32,
    /// First restart delay (default 1 s); doubles up to `restart_backoff_max`.
    pub restart_backoff_min: Duration,
    /// Longest restart delay (default 5 min, like the kubelet).
    pub restart_backoff_max: Duration,
    /// How often the instance manager reconciles (default 100 ms).
    pub tick: Duration,
    /// Where the load balancers run. [`LocalConfig::new`] says in-process
    /// (a library user need not ship the `floyd` binary); `floyd run`
    /// defaults to a process of their own (`--dataplane`).
    pub dataplane: DataplaneMode,
}

impl LocalConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> LocalConfig {
        LocalConfig {
            state_dir: state_dir.into(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            gpus: Vec::new(),
            nvidia_smi: Some(PathBuf::from("nvidia-smi")),
            leave_running: false,
            floyd_bin: None,
            lb_policy: LbPolicy::RoundRobin,
            lb_threads: LbThreads::default_count(),
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
            restart_backoff_min: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(300),
            tick: Duration::from_millis(100),
            dataplane: DataplaneMode::InProcess,
        }
    }

    /// `<state_dir>/local`.
    pub fn dir(&self) -> PathBuf {
        self.state_dir.join("local")
    }
}

/// The log file of an instance.
pub fn log_path(state_dir: &Path, service: &str, revision: &str, instance: &str) -> PathBuf {
    state_dir
        .join("local")
        .join("logs")
        .join(service)
        .join(revision)
        .join(format!("{instance}.log"))
}

/// The local runtime. See the module docs.
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: LocalConfig,
    dir: PathBuf,
    state_file: PathBuf,
    floyd_bin: String,
    /// `FLOYD_LOCAL_STATE` value given to instances: finds our leftovers.
    marker: String,
    state: Mutex<State>,
    /// The load balancers (in this process or their own).
    dp: Dp,
    /// Configuration pushes, one at a time, each computed when it is sent.
    push_lock: tokio::sync::Mutex<()>,
    /// Bumped by every route change ([`Inner::refresh_routes`]).
    route_gen: std::sync::atomic::AtomicU64,
    /// Services whose configuration the pusher sends next.
    dirty: Mutex<BTreeSet<ServiceName>>,
    push_wake: tokio::sync::Notify,
    /// Per service, the route generation the dataplane has applied.
    applied: Mutex<BTreeMap<ServiceName, u64>>,
    /// Per service, the ports its load balancer listened on at the last push.
    listening: Mutex<BTreeMap<ServiceName, Vec<u16>>>,
    probe_client: probe::ProbeClient,
    /// Cancelled when the runtime goes away: tasks stop, processes stay.
    abandon: CancellationToken,
    /// Set during shutdown: no new instances.
    stopping: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    tasks: tokio_util::task::TaskTracker,
    /// Readiness changes and removed instances, for the controller.
    pub(crate) changes: Arc<crate::runtime::Changes>,
}

/// The load balancers as the runtime reaches them.
enum Dp {
    InProcess(Arc<Dataplane>),
    Process(Box<Supervised>),
}

impl Dp {
    async fn request(&self, req: Request) -> Result<Response, String> {
        match self {
            Dp::InProcess(dp) => Ok(dp.handle(req).await),
            Dp::Process(p) => p.request(&req).await,
        }
    }
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        // Like `kill -9` of the controller: instances keep running; an
        // in-process data plane closes, a dataplane process keeps serving.
        self.inner.abandon.cancel();
        if let Dp::InProcess(dp) = &self.inner.dp {
            dp.close();
        }
    }
}

impl LocalRuntime {
    /// Loads the state directory, adopts live instances, cleans up dead ones,
    /// opens the load balancers and starts the instance manager.
    pub async fn start(cfg: LocalConfig) -> Result<LocalRuntime, Error> {
        let dir = cfg.dir();
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create state directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir = dir.canonicalize().unwrap_or(dir);
        let state_file = dir.join("state.json");
        let mut st = State::load(&state_file).map_err(|e| Error::Unavailable(e.to_string()))?;
        let (devices, source) = gpu::detect(cfg.nvidia_smi.as_deref(), &cfg.gpus);
        if !devices.is_empty() {
            tracing::info!(gpus = devices.len(), ?source, "local runtime GPU inventory");
        }
        st.gpus = gpu::GpuPool::new(devices);
        let floyd_bin = cfg
            .floyd_bin
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "floyd".into());
        let settings = Settings {
            bind: cfg.bind,
            policy: cfg.lb_policy,
            threads: cfg.lb_threads.max(1),
        };
        let dp = match cfg.dataplane {
            DataplaneMode::InProcess => Dp::InProcess(Dataplane::start(settings).map_err(|e| {
                Error::Unavailable(format!(
                    "cannot start {} load balancer thread(s): {e}",
                    cfg.lb_threads.max(1)
                ))
            })?),
            DataplaneMode::Process => {
                let p = Supervised::new(
                    &dir,
                    dir.parent().unwrap_or(&dir),
                    floyd_bin.clone(),
                    settings,
                )
                .map_err(Error::Unavailable)?;
                p.adopt_or_start()
                    .await
                    .map_err(|e| Error::Unavailable(format!("cannot start the dataplane: {e}")))?;
                Dp::Process(Box::new(p))
            }
        };
        let inner = Arc::new(Inner {
            dp,
            push_lock: tokio::sync::Mutex::new(()),
            route_gen: 0.into(),
            dirty: Mutex::new(BTreeSet::new()),
            push_wake: tokio::sync::Notify::new(),
            applied: Mutex::new(BTreeMap::new()),
            listening: Mutex::new(BTreeMap::new()),
            marker: dir.to_string_lossy().into_owned(),
            floyd_bin,
            state_file,
            dir,
            cfg,
            state: Mutex::new(State::default()),
            probe_client: probe::client(),
            abandon: CancellationToken::new(),
            stopping: false.into(),
            wake: tokio::sync::Notify::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            changes: Arc::new(crate::runtime::Changes::new()),
        });
        let adopted = adopt(&mut st, &inner.marker);
        let known: BTreeSet<i32> = adopted.iter().map(|a| a.2).collect();
        // Leftovers: started by a runtime on this state dir but not recorded
        // (killed between spawn and the state write). Nobody owns them: stop them.
        for pid in process::processes_with_marker(&inner.marker) {
            let pgid = process::proc_stat(pid).map(|s| s.2).unwrap_or(pid);
            if !known.contains(&pgid) && pid != std::process::id() as i32 {
                tracing::warn!(
                    pid,
                    "stopping unrecorded instance process left by a previous run"
                );
                process::kill_marked_group(pgid, &inner.marker);
            }
        }
        *inner.lock() = st;
        inner.persist();
        for (service, id, pid, start_time) in adopted {
            tracing::info!(%service, instance = %id, pid, "adopted instance");
            inner.spawn_supervisor(service, id, Some((pid, start_time)));
        }
        for e in inner.push_all().await {
            tracing::warn!("{e}");
        }
        let ticker = inner.clone();
        inner.tasks.spawn(async move { ticker.run_manager().await });
        let pusher = inner.clone();
        inner.tasks.spawn(async move { pusher.run_pusher().await });
        if matches!(inner.dp, Dp::Process(_)) {
            let watcher = inner.clone();
            inner
                .tasks
                .spawn(async move { watcher.watch_dataplane().await });
        }
        Ok(LocalRuntime { inner })
    }

    /// Stops every instance (drain, SIGTERM, grace, SIGKILL) unless
    /// `leave_running`, closes the load balancers and saves the state.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        if !inner.cfg.leave_running {
            {
                let mut st = inner.lock();
                for svc in st.services.values_mut() {
                    for i in svc.instances.values_mut() {
                        i.terminating = true;
                        i.stop.cancel();
                    }
                }
            }
            let names: Vec<ServiceName> = inner.lock().services.keys().cloned().collect();
            for n in &names {
                inner.refresh_routes(n);
            }
            // Supervisors remove instances as they stop; wait for all of them.
            let deadline = tokio::time::Instant::now() + inner.max_grace() + Duration::from_secs(5);
            while inner
                .lock()
                .services
                .values()
                .any(|s| !s.instances.is_empty())
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        inner.persist();
        inner.abandon.cancel();
        inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), inner.tasks.wait()).await;
        match &inner.dp {
            Dp::InProcess(dp) => dp.close(),
            // Left running with the instances it serves.
            Dp::Process(_) if inner.cfg.leave_running => {}
            Dp::Process(p) => p.stop().await,
        }
    }

    /// The pid of the dataplane process (none in-process).
    pub fn dataplane_pid(&self) -> Option<i32> {
        match &self.inner.dp {
            Dp::InProcess(_) => None,
            Dp::Process(p) => p.pid(),
        }
    }

    /// The state directory of this runtime (`<state-dir>/local`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// GPU devices known to the runtime.
    pub fn gpu_devices(&self) -> Vec<GpuDevice> {
        self.inner.lock().gpus.devices().to_vec()
    }

    /// GPU usage per product: (devices, units held). Feeds the
    /// `floyd_gpu_capacity` / `floyd_gpu_allocated` metrics.
    pub fn gpu_usage(&self) -> BTreeMap<String, (u32, u32)> {
        self.inner.lock().gpus.usage()
    }

    /// Pids of all instance processes (for tests and diagnostics).
    pub fn pids(&self) -> Vec<i32> {
        self.inner
            .lock()
            .services
            .values()
            .flat_map(|s| s.instances.values().filter_map(|i| i.pid))
            .collect()
    }

    /// Ports the load balancer of `service` listens on.
    pub fn lb_ports(&self, service: &ServiceName) -> Vec<u16> {
        self.inner
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// The assigned `PORT` of an instance.
    pub fn instance_port(&self, service: &ServiceName, instance: &str) -> Option<u16> {
        self.inner
            .lock()
            .services
            .get(service)?
            .instances
            .get(instance)?
            .ports
            .get("")
            .copied()
    }
}

/// Splits the loaded state into adoptable instances (returned) and dead ones
/// (removed). Adopted: the recorded pid is alive, started at the recorded
/// time, and carries this state directory's `marker`. Anything else is
/// forgotten; only processes with the marker are ever signalled, so a pid
/// or group id reused by another program (after a reboot) is left alone.
fn adopt(st: &mut State, marker: &str) -> Vec<(ServiceName, String, i32, u64)> {
    let mut adopted = Vec::new();
    let State { services, gpus } = st;
    for (name, svc) in services.iter_mut() {
        let mut dead = Vec::new();
        for (id, inst) in svc.instances.iter_mut() {
            match (inst.pid, inst.start_time) {
                (Some(pid), Some(start))
                    if process::alive(pid, start) && process::has_marker(pid, marker) =>
                {
                    let holder = gpu::Holder {
                        service: name.to_string(),
                        instance: id.clone(),
                    };
                    let units = inst
                        .gpu
                        .as_ref()
                        .map(|g| g.units.clone())
                        .unwrap_or_default();
                    let conflicts = gpus.claim(&units, &holder);
                    if !conflicts.is_empty() {
                        tracing::warn!(instance = %id, ?conflicts, "adopted instance holds GPU units that are held twice");
                    }
                    inst.phase = InstancePhase::Running;
                    if inst.terminating {
                        inst.stop.cancel();
                    }
                    adopted.push((name.clone(), id.clone(), pid, start));
                }
                (pid, _) => {
                    // Dead (or the pid is someone else's now): whatever is
                    // left of its process group that is ours goes too.
                    if let Some(pid) = pid {
                        if process::proc_stat(pid).is_some() {
                            tracing::warn!(service = %name, instance = %id, pid, "recorded pid is alive but not this state directory's instance (no FLOYD_LOCAL_STATE marker, or another start time): forgotten, not signalled");
                        }
                        process::kill_marked_group(pid, marker);
                    }
                    dead.push(id.clone());
                }
            }
        }
        for id in dead {
            tracing::info!(service = %name, instance = %id, "instance of a previous run is gone; it will be replaced");
            svc.instances.remove(&id);
        }
    }
    adopted
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn max_grace(&self) -> Duration {
        let st = self.lock();
        let secs = st
            .services
            .values()
            .flat_map(|s| s.revisions.iter())
            .map(|r| r.template.termination_grace_period_seconds)
            .max()
            .unwrap_or(30);
        Duration::from_secs(u64::from(secs) + 1)
    }

    /// Saves the state file; a failure is logged (the next change retries).
    pub(crate) fn persist(&self) {
        let st = self.lock();
        self.persist_locked(&st);
    }

    pub(crate) fn persist_locked(&self, st: &State) {
        if let Err(e) = st.save(&self.state_file) {
            tracing::error!("{e}");
        }
    }

    fn spawn_supervisor(
        self: &Arc<Self>,
        service: ServiceName,
        id: String,
        adopt: Option<(i32, u64)>,
    ) {
        let inner = self.clone();
        self.tasks
            .spawn(async move { supervisor::supervise(inner, service, id, adopt).await });
    }

    /// Wakes the instance manager now.
    pub(crate) fn poke(&self) {
        self.wake.notify_one();
    }

    async fn run_manager(self: Arc<Self>) {
        let mut last_rotation = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.abandon.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.tick) => {}
                _ = self.wake.notified() => {}
            }
            self.reconcile();
            if last_rotation.elapsed() >= Duration::from_secs(1) {
                last_rotation = tokio::time::Instant::now();
                self.rotate_logs();
            }
        }
    }

    fn logs_dir(&self, service: &ServiceName) -> PathBuf {
        self.cfg
            .state_dir
            .join("local")
            .join("logs")
            .join(service.as_str())
    }

    fn rotate_logs(&self) {
        let paths: Vec<PathBuf> = {
            let st = self.lock();
            st.services
                .iter()
                .flat_map(|(n, s)| {
                    s.instances.values().map(move |i| {
                        log_path(&self.cfg.state_dir, n.as_str(), i.revision.as_str(), &i.id)
                    })
                })
                .collect()
        };
        let now = crate::time::Time::now_wall().as_millis();
        for p in paths {
            // Before rotating, so every byte copied away has its time noted.
            if let Err(e) = logtimes::note(&p, now) {
                tracing::debug!(log = %p.display(), error = %e, "cannot note log times");
            }
            match process::rotate_if_needed(&p, self.cfg.log_max_bytes, self.cfg.log_keep) {
                Ok(true) => logtimes::rotated(&p, self.cfg.log_keep),
                Ok(false) => {}
                Err(e) => tracing::warn!(log = %p.display(), error = %e, "log rotation failed"),
            }
        }
    }

    /// The instance manager: make each revision's live count match its desired count.
    fn reconcile(self: &Arc<Self>) {
        let creating = !self.stopping.load(Ordering::SeqCst);
        let mut created: Vec<(ServiceName, String)> = Vec::new();
        let mut changed_routes: Vec<ServiceName> = Vec::new();
        let mut dirty = false;
        // Logs of forgotten revisions and deleted services go with them.
        let mut forgotten_logs: Vec<PathBuf> = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            let mut used_ports: BTreeSet<u16> = st
                .services
                .values()
                .flat_map(|s| s.instances.values().flat_map(|i| i.ports.values().copied()))
                .collect();
            used_ports.extend(
                st.services
                    .values()
                    .flat_map(|s| s.ports.iter().map(|p| p.port).chain(s.preview_port)),
            );
            let mut gone_services = Vec::new();
            for (name, svc) in st.services.iter_mut() {
                let mut stops = Vec::new();
                let mut to_create: Vec<(Revision, u32)> = Vec::new();
                for rev in &svc.revisions {
                    let insts: Vec<Instance> = svc
                        .instances
                        .values()
                        .filter(|i| i.revision == rev.revision)
                        .map(observed_instance)
                        .collect();
                    let live = insts
                        .iter()
                        .filter(|i| i.phase != InstancePhase::Terminating)
                        .count() as u32;
                    if live > rev.desired {
                        stops.extend(pick_for_deletion(&insts, rev.desired));
                    } else if live < rev.desired && creating && !svc.deleting {
                        to_create.push((rev.revision.clone(), rev.desired - live));
                    }
                }
                for id in stops {
                    if let Some(i) = svc.instances.get_mut(&id) {
                        i.terminating = true;
                        i.stop.cancel();
                        dirty = true;
                        changed_routes.push(name.clone());
                    }
                }
                for (revision, missing) in to_create {
                    'batches: for batch in slow_start_batches(missing) {
                        for _ in 0..batch {
                            match new_instance(name, svc, &revision, &mut used_ports) {
                                Ok(id) => {
                                    created.push((name.clone(), id));
                                    dirty = true;
                                }
                                Err(e) => {
                                    tracing::warn!(service = %name, %revision, "cannot create instance: {e}");
                                    break 'batches;
                                }
                            }
                        }
                    }
                }
                let instances = &svc.instances;
                let (keep, forgotten): (Vec<Rev>, Vec<Rev>) = std::mem::take(&mut svc.revisions)
                    .into_iter()
                    .partition(|r| {
                        !r.forget || instances.values().any(|i| i.revision == r.revision)
                    });
                svc.revisions = keep;
                for r in forgotten {
                    dirty = true;
                    forgotten_logs.push(self.logs_dir(name).join(r.revision.as_str()));
                }
                if svc.deleting && svc.instances.is_empty() {
                    gone_services.push(name.clone());
                }
            }
            for n in &gone_services {
                st.services.remove(n);
                forgotten_logs.push(self.logs_dir(n));
                dirty = true;
            }
            if dirty {
                self.persist_locked(st);
            }
            // Their load balancers are removed by the next push.
            changed_routes.extend(gone_services);
            // Under the lock (rare, small): whoever sees the service or
            // revision gone finds its logs gone too.
            for d in forgotten_logs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        changed_routes.dedup();
        for n in changed_routes {
            self.refresh_routes(&n);
        }
        for (service, id) in created {
            self.spawn_supervisor(service, id, None);
        }
    }

    /// Marks the service's load balancer configuration as changed; the
    /// pusher sends it. Returns the route generation that includes the change.
    pub(crate) fn refresh_routes(&self, service: &ServiceName) -> u64 {
        let generation = self.route_gen.fetch_add(1, Ordering::SeqCst) + 1;
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.clone());
        self.push_wake.notify_one();
        generation
    }

    /// Sends the service's configuration, computed now, to the dataplane.
    /// Returns why wanted ports could not be bound; Err when the dataplane
    /// cannot be reached.
    async fn push(&self, service: &ServiceName) -> Result<Vec<String>, String> {
        let _one_at_a_time = self.push_lock.lock().await;
        let generation = self.route_gen.load(Ordering::SeqCst);
        let config = {
            let st = self.lock();
            st.services.get(service).map(service_config)
        };
        let req = match config {
            Some(config) => Request::Apply {
                service: service.clone(),
                config,
            },
            None => Request::Remove {
                service: service.clone(),
            },
        };
        let errors = match self.dp.request(req).await? {
            Response::Applied { listening, errors } => {
                self.listening
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(service.clone(), listening);
                errors
            }
            Response::Done => {
                self.listening
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(service);
                Vec::new()
            }
            other => return Err(format!("unexpected answer from the dataplane: {other:?}")),
        };
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let a = applied.entry(service.clone()).or_default();
        *a = (*a).max(generation);
        Ok(errors
            .into_iter()
            .map(|e| format!("service {service}: {e}"))
            .collect())
    }

    /// Sends every service's configuration and removes the services the
    /// dataplane serves that the state does not know (a fresh or adopted
    /// dataplane). Returns the bind errors and push failures.
    async fn push_all(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut names: BTreeSet<ServiceName> = self.lock().services.keys().cloned().collect();
        match self.dp.request(Request::Stats { service: None }).await {
            Ok(Response::Stats { services }) => names.extend(services.into_keys()),
            Ok(_) => {}
            Err(e) => errors.push(format!("dataplane: {e}")),
        }
        for n in &names {
            match self.push(n).await {
                Ok(e) => errors.extend(e),
                Err(e) => {
                    errors.push(format!("service {n}: dataplane: {e}"));
                    self.refresh_routes(n);
                }
            }
        }
        errors
    }

    /// Sends changed configurations as they come; one that could not be
    /// sent (the dataplane is restarting) is sent again.
    async fn run_pusher(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.abandon.cancelled() => return,
                _ = self.push_wake.notified() => {}
            }
            let todo = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
            let mut failed = false;
            for n in todo {
                if let Err(e) = self.push(&n).await {
                    tracing::debug!(service = %n, "dataplane: {e}; will retry");
                    self.dirty
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(n);
                    failed = true;
                }
            }
            if failed {
                tokio::select! {
                    _ = self.abandon.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                self.push_wake.notify_one();
            }
        }
    }

    /// Starts the dataplane process again when it dies (its listeners are
    /// bound again and every service's configuration is sent).
    async fn watch_dataplane(self: Arc<Self>) {
        let Dp::Process(p) = &self.dp else {
            return;
        };
        loop {
            tokio::select! {
                _ = self.abandon.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if self.stopping.load(Ordering::SeqCst) || p.alive().await {
                continue;
            }
            tracing::warn!("the dataplane process is gone; starting it again");
            match p.start().await {
                Ok(()) => {
                    for e in self.push_all().await {
                        tracing::warn!("{e}");
                    }
                }
                Err(e) => tracing::error!("cannot restart the dataplane: {e}"),
            }
        }
    }

    /// Waits until the dataplane has applied route generation `generation`
    /// of the service, at most `limit`. False when it did not in time.
    async fn wait_applied(&self, service: &ServiceName, generation: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = self
                .applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(service)
                .is_some_and(|g| *g >= generation);
            if done {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Requests in flight to an instance (0 when the dataplane is unreachable:
    /// nothing goes through a dataplane that is down).
    async fn inflight(&self, service: &ServiceName, instance: &str) -> usize {
        match self
            .dp
            .request(Request::Inflight {
                service: service.clone(),
                instance: instance.to_string(),
            })
            .await
        {
            Ok(Response::Inflight { count }) => count,
            _ => 0,
        }
    }

    /// The dataplane's counters and problems for a service.
    async fn stats(&self, service: &ServiceName) -> Result<ServiceStats, String> {
        match self
            .dp
            .request(Request::Stats {
                service: Some(service.clone()),
            })
            .await?
        {
            Response::Stats { mut services } => Ok(services.remove(service).unwrap_or_default()),
            other => Err(format!("unexpected answer from the dataplane: {other:?}")),
        }
    }

    fn observe_locked(
        &self,
        st: &State,
        service: &ServiceName,
        spec: Option<&ServiceSpec>,
        stats: Result<ServiceStats, String>,
    ) -> Observed {
        let Some(svc) = st.services.get(service) else {
            return Observed::default();
        };
        let mut revisions: Vec<ObservedRevision> = svc
            .revisions
            .iter()
            .map(|r| ObservedRevision {
                revision: r.revision.clone(),
                created_at: r.created_at,
                desired: r.desired,
                instances: svc
                    .instances
                    .values()
                    .filter(|i| i.revision == r.revision)
                    .map(observed_instance)
                    .collect(),
                template: r.template.clone(),
            })
            .collect();
        revisions.sort_by_key(|r| r.created_at);
        let gpu_req = spec.and_then(|s| s.gpu().cloned()).or_else(|| {
            svc.revisions
                .last()
                .and_then(|r| r.template.resources.gpu.clone())
        });
        let gpu = gpu_req.map(|req| st.gpus.capacity(&req, service.as_str()));
        let (traffic, problems) = match stats {
            Ok(stats) => (
                stats
                    .traffic
                    .into_iter()
                    .filter(|(rev, _)| svc.rev(rev).is_some())
                    .map(|(revision, (requests, errors))| RevisionTraffic {
                        revision,
                        requests,
                        errors,
                    })
                    .collect(),
                stats.problems,
            ),
            Err(e) => (Vec::new(), vec![format!("load balancer: {e}")]),
        };
        Observed {
            revisions,
            active: svc.active.clone(),
            preview: svc.preview.clone(),
            gpu,
            gates: Vec::new(),
            traffic,
            canary: svc.canary.clone(),
            drift: Vec::new(),
            problems,
        }
    }
}

/// The load balancer configuration of a service: its listeners (none while
/// it is being deleted) and which ready instances get which traffic.
fn service_config(svc: &Svc) -> ServiceConfig {
    let mut c = ServiceConfig {
        revisions: svc.revisions.iter().map(|r| r.revision.clone()).collect(),
        ..ServiceConfig::default()
    };
    if svc.deleting {
        return c;
    }
    c.listeners = svc
        .ports
        .iter()
        .map(|p| ListenerConfig {
            port: p.port,
            port_name: p.name.clone(),
            preview: false,
        })
        .collect();
    if let Some(pp) = svc.preview_port {
        c.listeners.push(ListenerConfig {
            port: pp,
            port_name: svc
                .ports
                .first()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            preview: true,
        });
    }
    let ready = || {
        svc.instances.values().filter(|i| {
            !i.terminating && i.phase == InstancePhase::Running && i.ready_since.is_some()
        })
    };
    let backend = |i: &Inst| BackendConfig {
        instance: i.id.clone(),
        revision: i.revision.clone(),
        ports: i.ports.clone(),
    };
    let split = svc.canary.as_ref();
    let mut canary_backends = Vec::new();
    for i in ready() {
        let rev = &i.revision;
        if let Some(split) = split {
            if &split.canary == rev {
                canary_backends.push(backend(i));
            } else if split.stable.as_ref().is_none_or(|s| s == rev) {
                c.active.push(backend(i));
            }
        } else if svc.active.as_ref().is_none_or(|a| a == rev) {
            c.active.push(backend(i));
        }
        if svc.preview.as_ref() == Some(rev) {
            c.preview.push(backend(i));
        }
    }
    if let Some(split) = split {
        if split.stable.is_some() && c.active.is_empty() {
            // The stable revision has no ready instance: every other
            // ready revision serves the stable share.
            c.active = ready()
                .filter(|i| i.revision != split.canary)
                .map(backend)
                .collect();
        }
        let params = svc.canary_params.as_ref();
        c.canary = Some(CanaryConfig {
            backends: canary_backends,
            weight: split.weight,
            matches: params.map(|p| p.matches.clone()).unwrap_or_default(),
            mirror: params.is_some_and(|p| p.mirror),
        });
    }
    c
}

/// The trait view of an instance record.
fn observed_instance(i: &Inst) -> Instance {
    Instance {
        id: i.id.clone(),
        phase: if i.terminating {
            InstancePhase::Terminating
        } else {
            i.phase
        },
        created_at: i.created_at,
        ready_since: if i.phase == InstancePhase::Running {
            i.ready_since
        } else {
            None
        },
        restarts: i.restarts,
        reason: i.reason.clone(),
        gpus: i.gpu.as_ref().map(|g| g.units.clone()).unwrap_or_default(),
    }
}

/// A free loopback port not used by any instance or load balancer.
fn free_port(used: &BTreeSet<u16>) -> std::io::Result<u16> {
    for _ in 0..64 {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let p = l.local_addr()?.port();
        if !used.contains(&p) {
            return Ok(p);
        }
    }
    Err(std::io::Error::other("no free port found after 64 tries"))
}

/// `web-3f2a9-x7k2q`: service, revision prefix, random suffix (like a Pod name).
fn instance_id(
    service: &ServiceName,
    revision: &Revision,
    taken: &BTreeMap<String, Inst>,
) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let rev: String = revision.as_str().chars().take(5).collect();
    let mut rng = rand::rng();
    loop {
        let suffix: String = (0..5)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        let id = format!("{service}-{rev}-{suffix}");
        if !taken.contains_key(&id) {
            return id;
        }
    }
}

/// Creates the record of a new instance (ports assigned; GPUs and the
/// process come from its supervisor).
fn new_instance(
    name: &ServiceName,
    svc: &mut Svc,
    revision: &Revision,
    used_ports: &mut BTreeSet<u16>,
) -> Result<String, String> {
    let mut ports = BTreeMap::new();
    let primary = free_port(used_ports).map_err(|e| format!("no free port: {e}"))?;
    used_ports.insert(primary);
    ports.insert(String::new(), primary);
    for (k, p) in svc.ports.iter().enumerate() {
        let port = if k == 0 {
            primary
        } else {
            let q = free_port(used_ports).map_err(|e| format!("no free port: {e}"))?;
            used_ports.insert(q);
            q
        };
        ports.insert(p.name.clone(), port);
    }
    let id = instance_id(name, revision, &svc.instances);
    svc.instances.insert(
        id.clone(),
        Inst {
            id: id.clone(),
            revision: revision.clone(),
            created_at: Time::now_wall(),
            ports,
            gpu: None,
            pid: None,
            start_time: None,
            restarts: 0,
            terminating: false,
            ready_since: None,
            last_exit: None,
            phase: InstancePhase::Pending,
            reason: Some("starting".into()),
            stop: CancellationToken::new(),
        },
    );
    Ok(id)
}

fn preview_port(spec: &ServiceSpec) -> Option<u16> {
    match &spec.strategy {
        Strategy::BlueGreen { blue_green } => blue_green.preview_port,
        _ => None,
    }
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn services(&self) -> Result<Vec<ServiceName>, Error> {
        Ok(self
            .inner
            .lock()
            .services
            .iter()
            .filter(|(_, s)| !s.deleting)
            .map(|(n, _)| n.clone())
            .collect())
    }

    fn changes(&self) -> Option<Arc<crate::runtime::Changes>> {
        Some(self.inner.changes.clone())
    }

    async fn observe(
        &self,
        service: &ServiceName,
        spec: Option<&ServiceSpec>,
        _now: Time,
    ) -> Result<Observed, Error> {
        let stats = self.inner.stats(service).await;
        let st = self.inner.lock();
        Ok(self.inner.observe_locked(&st, service, spec, stats))
    }

    async fn apply(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        actions: &[Action],
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let mut errors: Vec<String> = Vec::new();
        {
            let mut st = inner.lock();
            let svc = st.services.entry(service.clone()).or_default();
            svc.deleting = false;
            svc.ports = spec.ports.clone();
            svc.preview_port = preview_port(spec);
            svc.canary_params = match &spec.strategy {
                Strategy::Canary { canary } => Some(canary.clone()),
                _ => None,
            };
            svc.health = spec.health.clone();
            for a in actions {
                match a {
                    Action::CreateRevision { revision, template } => match svc.rev_mut(revision) {
                        Some(r) => r.forget = false,
                        None => svc.revisions.push({
                            if template.kubernetes.is_some() {
                                // Pod fields (volumes, sidecars, Secret refs)
                                // mean nothing to a process; said once per revision.
                                tracing::warn!(
                                    %service, %revision,
                                    "spec.template.kubernetes is ignored by the local runtime (it applies to the kube runtime only)"
                                );
                            }
                            Rev {
                            revision: revision.clone(),
                            created_at: Time::now_wall(),
                            desired: 0,
                            template: template.clone(),
                            forget: false,
                        }
                        }),
                    },
                    Action::Scale { revision, replicas } => match svc.rev_mut(revision) {
                        Some(r) => {
                            r.desired = *replicas;
                            r.forget = false;
                        }
                        None => errors.push(format!(
                            "cannot scale revision {revision}: it does not exist (create it first)"
                        )),
                    },
                    Action::DeleteInstance { revision, instance } => {
                        let Some(i) = svc.instances.get_mut(instance) else {
                            errors.push(format!("instance {instance} does not exist"));
                            continue;
                        };
                        if !i.terminating {
                            i.terminating = true;
                            i.stop.cancel();
                            if let Some(r) = svc.rev_mut(revision) {
                                r.desired = r.desired.saturating_sub(1);
                            }
                        }
                    }
                    Action::SetTraffic { active, preview } => {
                        svc.active = active.clone();
                        svc.preview = preview.clone();
                        svc.canary = None;
                    }
                    Action::SetWeight {
                        canary,
                        stable,
                        weight,
                    } => {
                        svc.active = None;
                        svc.preview = None;
                        svc.canary = Some(CanarySplit {
                            canary: canary.clone(),
                            stable: stable.clone(),
                            weight: *weight,
                        });
                    }
                    Action::DeleteRevision { revision } => {
                        let has_instances = svc.instances.values().any(|i| &i.revision == revision);
                        if has_instances {
                            if let Some(r) = svc.rev_mut(revision) {
                                r.desired = 0;
                                r.forget = true;
                            }
                        } else {
                            svc.revisions.retain(|r| &r.revision != revision);
                            let _ = std::fs::remove_dir_all(
                                inner.logs_dir(service).join(revision.as_str()),
                            );
                        }
                    }
                }
            }
            inner.persist_locked(&st);
        }
        match inner.push(service).await {
            Ok(e) => errors.extend(e),
            Err(e) => {
                // Sent again by the pusher (the dataplane is being restarted).
                inner.refresh_routes(service);
                tracing::warn!(%service, "dataplane: {e}");
            }
        }
        inner.reconcile();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Apply {
                service: service.clone(),
                message: errors.join("; "),
            })
        }
    }

    async fn delete_service(&self, service: &ServiceName) -> Result<(), Error> {
        {
            let mut st = self.inner.lock();
            let Some(svc) = st.services.get_mut(service) else {
                return Ok(());
            };
            svc.deleting = true;
            for r in &mut svc.revisions {
                r.desired = 0;
                r.forget = true;
            }
            svc.active = None;
            svc.preview = None;
            svc.canary = None;
            self.inner.persist_locked(&st);
        }
        // Its configuration now has no listener: they close.
        if self.inner.push(service).await.is_err() {
            self.inner.refresh_routes(service);
        }
        self.inner.reconcile();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::PortSpec;

    fn inst(id: &str, rev: &str, ready: bool, terminating: bool) -> Inst {
        Inst {
            id: id.into(),
            revision: Revision(rev.into()),
            created_at: Time::from_millis(0),
            ports: [(String::new(), 9000)].into_iter().collect(),
            gpu: None,
            pid: Some(1),
            start_time: Some(1),
            restarts: 0,
            terminating,
            ready_since: ready.then(|| Time::from_millis(1)),
            last_exit: None,
            phase: InstancePhase::Running,
            reason: None,
            stop: CancellationToken::new(),
        }
    }

    /// a1 ready (r1), a2 unready (r1), a3 terminating (r1), b1 ready (r2).
    fn svc() -> Svc {
        let mut s = Svc {
            ports: vec![PortSpec {
                name: "http".into(),
                port: 8080,
            }],
            ..Svc::default()
        };
        for i in [
            inst("a1", "r1", true, false),
            inst("a2", "r1", false, false),
            inst("a3", "r1", true, true),
            inst("b1", "r2", true, false),
        ] {
            s.instances.insert(i.id.clone(), i);
        }
        s
    }

    fn ids(b: &[BackendConfig]) -> Vec<&str> {
        b.iter().map(|b| b.instance.as_str()).collect()
    }

    #[test]
    fn the_load_balancer_configuration_follows_readiness_and_traffic() {
        let r = |s: &str| Some(Revision(s.into()));
        // No traffic decision yet: every ready, non-terminating instance.
        let c = service_config(&svc());
        assert_eq!(ids(&c.active), ["a1", "b1"]);
        assert!(c.preview.is_empty() && c.canary.is_none());
        assert_eq!(c.listeners.len(), 1);
        // Blue-green: active r1, preview r2 on the preview port.
        let mut s = svc();
        s.active = r("r1");
        s.preview = r("r2");
        s.preview_port = Some(8081);
        let c = service_config(&s);
        assert_eq!(ids(&c.active), ["a1"]);
        assert_eq!(ids(&c.preview), ["b1"]);
        assert_eq!(
            c.listeners
                .iter()
                .map(|l| (l.port, l.preview))
                .collect::<Vec<_>>(),
            [(8080, false), (8081, true)]
        );
        // Canary split r2 over stable r1.
        let mut s = svc();
        s.canary = Some(CanarySplit {
            canary: Revision("r2".into()),
            stable: r("r1"),
            weight: 25,
        });
        let c = service_config(&s);
        assert_eq!(ids(&c.active), ["a1"]);
        let canary = c.canary.unwrap();
        assert_eq!((ids(&canary.backends), canary.weight), (vec!["b1"], 25));
        // The stable revision has no ready instance: other ready revisions serve its share.
        let mut s = svc();
        s.canary = Some(CanarySplit {
            canary: Revision("r2".into()),
            stable: r("r0"),
            weight: 25,
        });
        assert_eq!(ids(&service_config(&s).active), ["a1"]);
        // Being deleted: no listener, no route.
        let mut s = svc();
        s.deleting = true;
        let c = service_config(&s);
        assert!(c.listeners.is_empty() && c.active.is_empty());
    }
}
