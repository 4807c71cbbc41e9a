//! One task per instance: get its GPUs, start the process, run its probes,
//! restart it with exponential backoff when it exits or fails liveness, and
//! when asked to stop: wait until the load balancer has no request in flight
//! to it, then SIGTERM, grace period, SIGKILL, and only then release its
//! port and GPUs.
//!
//! Must not: change desired counts or traffic (the engine's business via `apply`).

use super::Inner;
use super::gpu::{self, Holder};
use super::probe::{self, Thresholds};
use super::process::{self, Proc, StartSpec};
use crate::manifest::{HealthSpec, PortSpec, ServiceName};
use crate::runtime::InstancePhase;
use crate::time::Time;
use backon::BackoffBuilder;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A process that ran at least this long resets the restart backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// What starting an instance needs, copied out of the state under the lock.
struct Launch {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// A `valueFrom` reference that could not be read: the instance does
    /// not start (the message names the variable and the reference only).
    error: Option<String>,
    working_dir: Option<String>,
    log: PathBuf,
    grace: Duration,
}

enum GpuStep {
    Ready,
    Waiting,
    Gone,
}

enum Outcome {
    Exited(String),
    Restart(String),
    Stop,
}

fn env_name(port_name: &str) -> String {
    port_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Inner {
    /// Allocates the instance's GPUs if it needs some and has none yet.
    fn ensure_gpus(&self, service: &ServiceName, id: &str) -> GpuStep {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(svc) = st.services.get_mut(service) else {
            return GpuStep::Gone;
        };
        let Some(inst) = svc.instances.get(id) else {
            return GpuStep::Gone;
        };
        if inst.gpu.is_some() {
            return GpuStep::Ready;
        }
        let Some(req) = svc
            .rev(&inst.revision)
            .and_then(|r| r.template.resources.gpu.clone())
        else {
            return GpuStep::Ready;
        };
        let holder = Holder {
            service: service.to_string(),
            instance: id.to_string(),
        };
        let result = st.gpus.allocate(&req, holder);
        let Some(inst) = svc.instances.get_mut(id) else {
            return GpuStep::Gone;
        };
        match result {
            Ok(p) => {
                inst.gpu = Some(p);
                self.persist_locked(st);
                GpuStep::Ready
            }
            Err(reason) => {
                inst.reason = Some(reason);
                GpuStep::Waiting
            }
        }
    }

    fn launch(&self, service: &ServiceName, id: &str) -> Option<Launch> {
        let st = self.lock();
        let svc = st.services.get(service)?;
        let inst = svc.instances.get(id)?;
        let rev = svc.rev(&inst.revision)?;
        let t = &rev.template;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        if let Some(p) = inst.ports.get("") {
            env.insert("PORT".into(), p.to_string());
        }
        for (name, p) in &inst.ports {
            if !name.is_empty() {
                env.insert(format!("PORT_{}", env_name(name)), p.to_string());
            }
        }
        env.insert("FLOYD_BIN".into(), self.floyd_bin.clone());
        env.insert("FLOYD_SERVICE".into(), service.to_string());
        env.insert("FLOYD_REVISION".into(), inst.revision.to_string());
        env.insert("FLOYD_INSTANCE".into(), id.to_string());
        env.insert("FLOYD_LOCAL_STATE".into(), self.marker.clone());
        if let Some(p) = &inst.gpu {
            env.extend(gpu::placement_env(p));
        }
        // Template values may refer to the variables above (`${PORT}`).
        let base = env.clone();
        for (k, v) in &t.env {
            env.insert(k.clone(), process::expand(v, &base));
        }
        let mut error = None;
        for (k, source) in &t.env_from {
            match resolve(source) {
                Ok(v) => {
                    env.insert(k.clone(), v);
                }
                Err(e) => {
                    error.get_or_insert(format!("env {k}: {e}"));
                }
            }
        }
        Some(Launch {
            argv: t.command.clone(),
            env,
            error,
            working_dir: t.working_dir.clone(),
            log: super::log_path(
                &self.cfg.state_dir,
                service.as_str(),
                inst.revision.as_str(),
                id,
            ),
            grace: Duration::from_secs(u64::from(t.termination_grace_period_seconds)),
        })
    }

    /// Applies `f` to the instance record (if it still exists) and refreshes
    /// the service's routes when `f` says readiness changed.
    fn update<R>(
        &self,
        service: &ServiceName,
        id: &str,
        f: impl FnOnce(&mut super::state::Inst) -> (R, bool),
    ) -> Option<R> {
        let (r, routes) = {
            let mut st = self.lock();
            let inst = st.services.get_mut(service)?.instances.get_mut(id)?;
            let out = f(inst);
            if out.1 {
                // Readiness is persisted too: adopted instances keep serving
                // after a controller restart without waiting for a probe.
                self.persist_locked(&st);
            }
            out
        };
        if routes {
            self.refresh_routes(service);
            self.changes.mark(service);
        }
        Some(r)
    }

    fn health(&self, service: &ServiceName) -> (HealthSpec, Vec<PortSpec>) {
        let st = self.lock();
        st.services
            .get(service)
            .map(|s| (s.health.clone(), s.ports.clone()))
            .unwrap_or_default()
    }

    /// Removes a stopped instance and releases its port and GPUs.
    fn remove(&self, service: &ServiceName, id: &str) {
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            if let Some(svc) = st.services.get_mut(service) {
                svc.instances.remove(id);
            }
            st.gpus.release(&Holder {
                service: service.to_string(),
                instance: id.to_string(),
            });
            self.persist_locked(st);
        }
        self.refresh_routes(service);
        self.changes.mark(service);
        self.poke();
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.cfg.restart_backoff_min)
            .with_max_delay(self.cfg.restart_backoff_max)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }
}

/// The life of one instance. Returns when it has been stopped and removed,
/// or when the runtime is abandoned (the process keeps running).
pub(super) async fn supervise(
    inner: Arc<Inner>,
    service: ServiceName,
    id: String,
    adopt: Option<(i32, u64)>,
) {
    let Some(stop) = inner.update(&service, &id, |i| (i.stop.clone(), false)) else {
        return;
    };
    let mut backoff = inner.backoff();
    let mut proc: Option<Proc> = adopt.map(|(pid, start_time)| Proc::Adopted { pid, start_time });
    loop {
        let mut started_at = Instant::now();
        let mut start_error: Option<String> = None;
        if proc.is_none() {
            loop {
                match inner.ensure_gpus(&service, &id) {
                    GpuStep::Ready => break,
                    GpuStep::Gone => return,
                    GpuStep::Waiting => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => { inner.remove(&service, &id); return; }
                    _ = inner.abandon.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            let Some(l) = inner.launch(&service, &id) else {
                return;
            };
            let spec = StartSpec {
                argv: &l.argv,
                env: &l.env,
                working_dir: l.working_dir.as_deref(),
                log: &l.log,
            };
            let started = match l.error {
                Some(e) => Err(e),
                None => process::start(&spec).map_err(|e| e.to_string()),
            };
            match started {
                Ok(child) => {
                    let pid = child.id().map(|p| p as i32);
                    let start_time = pid.and_then(process::proc_stat).map(|s| s.1);
                    started_at = Instant::now();
                    {
                        let mut st = inner.lock();
                        if let Some(i) = st
                            .services
                            .get_mut(&service)
                            .and_then(|s| s.instances.get_mut(&id))
                        {
                            i.pid = pid;
                            i.start_time = start_time;
                            i.phase = InstancePhase::Running;
                            i.ready_since = None;
                            i.reason = Some("not ready yet".into());
                        }
                        // Recorded before anything else: a controller killed
                        // from here on adopts this process instead of orphaning it.
                        inner.persist_locked(&st);
                    }
                    proc = Some(Proc::Child(child));
                }
                Err(e) => start_error = Some(e),
            }
        }
        let outcome = match proc.as_mut() {
            Some(p) => {
                let (tx, mut rx) = mpsc::channel::<String>(1);
                let probe_stop = CancellationToken::new();
                let probes = tokio::spawn(probe_loop(
                    inner.clone(),
                    service.clone(),
                    id.clone(),
                    tx,
                    probe_stop.clone(),
                ));
                let o = tokio::select! {
                    how = p.wait() => Outcome::Exited(how),
                    Some(reason) = rx.recv() => Outcome::Restart(reason),
                    _ = stop.cancelled() => Outcome::Stop,
                    _ = inner.abandon.cancelled() => {
                        probe_stop.cancel();
                        return;
                    }
                };
                probe_stop.cancel();
                let _ = probes.await;
                o
            }
            None => Outcome::Exited(start_error.unwrap_or_else(|| "did not start".into())),
        };
        let grace = inner
            .launch(&service, &id)
            .map(|l| l.grace)
            .unwrap_or(Duration::from_secs(30));
        let how = match outcome {
            Outcome::Stop => {
                if let Some(mut p) = proc.take() {
                    drain(&inner, &service, &id, grace).await;
                    let how = p.terminate(grace).await;
                    tracing::debug!(%service, instance = %id, "stopped: {how}");
                }
                inner.remove(&service, &id);
                return;
            }
            Outcome::Restart(reason) => {
                inner.update(&service, &id, |i| {
                    i.ready_since = None;
                    ((), true)
                });
                if let Some(mut p) = proc.take() {
                    let how = p.terminate(grace).await;
                    format!("{reason}; {how}")
                } else {
                    reason
                }
            }
            Outcome::Exited(how) => how,
        };
        proc = None;
        if started_at.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = inner.backoff();
        }
        let delay = backoff.next().unwrap_or(inner.cfg.restart_backoff_max);
        inner.update(&service, &id, |i| {
            i.restarts = i.restarts.saturating_add(1);
            i.phase = InstancePhase::Pending;
            i.ready_since = None;
            i.pid = None;
            i.start_time = None;
            i.reason = Some(format!(
                "CrashLoopBackOff: {how} (restart {}, next in {} s)",
                i.restarts,
                fmt_secs(delay)
            ));
            i.last_exit = Some(how.clone());
            ((), true)
        });
        inner.persist();
        tracing::info!(%service, instance = %id, "instance {how}; restarting in {} s", fmt_secs(delay));
        tokio::select! {
            _ = stop.cancelled() => { inner.remove(&service, &id); return; }
            _ = inner.abandon.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.1}")
    }
}

/// Waits until no request is in flight to the instance, at most `limit`:
/// first until the dataplane has applied a route table without it, then
/// until its in-flight count is 0.
async fn drain(inner: &Inner, service: &ServiceName, id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let generation = inner.refresh_routes(service);
    if !inner.wait_applied(service, generation, limit).await {
        tracing::warn!(%service, instance = %id, "the dataplane did not apply the routes without this instance in time; stopping it anyway");
    }
    // A request may have picked this instance just before the route swap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    while inner.inflight(service, id).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sleeps `d` or until `stop`; false when stopped.
async fn nap(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Startup probe first; then readiness and liveness side by side. A failed
/// startup or liveness probe asks the supervisor (`restart`) to restart.
async fn probe_loop(
    inner: Arc<Inner>,
    service: ServiceName,
    id: String,
    restart: mpsc::Sender<String>,
    stop: CancellationToken,
) {
    let (health, declared) = inner.health(&service);
    let Some((ports, env, wd)) = inner
        .update(&service, &id, |i| (i.ports.clone(), false))
        .and_then(|ports| {
            inner
                .launch(&service, &id)
                .map(|l| (ports, l.env, l.working_dir))
        })
    else {
        return;
    };
    let target = probe::Target {
        ports: &ports,
        declared: &declared,
        env: &env,
        working_dir: wd.as_deref(),
    };
    let client = &inner.probe_client;
    if let Some(p) = &health.startup {
        if !nap(probe::initial_delay(p), &stop).await {
            return;
        }
        let mut t = Thresholds::default();
        loop {
            let r = probe::run(client, &p.action, probe::timeout(p), &target).await;
            let err = r.as_ref().err().cloned();
            match t.record(r.is_ok(), p) {
                Some(true) => break,
                Some(false) => {
                    let _ = restart
                        .send(format!(
                            "startup probe failed {} times: {}",
                            p.failure_threshold,
                            err.unwrap_or_default()
                        ))
                        .await;
                    return;
                }
                None => {}
            }
            if let Some(e) = err {
                inner.update(&service, &id, |i| {
                    i.reason = Some(format!("startup probe {e}"));
                    ((), false)
                });
            }
            if !nap(probe::period(p), &stop).await {
                return;
            }
        }
    }
    let readiness = async {
        let Some(p) = &health.readiness else {
            inner.update(&service, &id, |i| {
                i.reason = None;
                let changed = i.ready_since.is_none();
                if changed {
                    i.ready_since = Some(Time::now_wall());
                }
                ((), changed)
            });
            return;
        };
        if !nap(probe::initial_delay(p), &stop).await {
            return;
        }
        let mut t = Thresholds::default();
        loop {
            let r = probe::run(client, &p.action, probe::timeout(p), &target).await;
            let verdict = t.record(r.is_ok(), p);
            inner.update(&service, &id, |i| match (&r, verdict) {
                (Ok(()), Some(true)) => {
                    let changed = i.ready_since.is_none();
                    if changed {
                        i.ready_since = Some(Time::now_wall());
                    }
                    i.reason = None;
                    ((), changed)
                }
                (Err(e), Some(false)) => {
                    let changed = i.ready_since.is_some();
                    i.ready_since = None;
                    i.reason = Some(format!("readiness probe {e}"));
                    ((), changed)
                }
                (Err(e), None) if i.ready_since.is_none() => {
                    i.reason = Some(format!("readiness probe {e}"));
                    ((), false)
                }
                _ => ((), false),
            });
            if !nap(probe::period(p), &stop).await {
                return;
            }
        }
    };
    let liveness = async {
        let Some(p) = &health.liveness else {
            return;
        };
        if !nap(probe::initial_delay(p), &stop).await {
            return;
        }
        let mut t = Thresholds::default();
        loop {
            let r = probe::run(client, &p.action, probe::timeout(p), &target).await;
            if t.record(r.is_ok(), p) == Some(false) {
                let _ = restart
                    .send(format!(
                        "liveness probe failed {} times: {}",
                        p.failure_threshold,
                        r.err().unwrap_or_default()
                    ))
                    .await;
                return;
            }
            if !nap(probe::period(p), &stop).await {
                return;
            }
        }
    };
    tokio::join!(readiness, liveness);
}

/// The value of a `valueFrom` reference, read now. Errors name the
/// reference, never a value.
fn resolve(source: &crate::manifest::EnvSource) -> Result<String, String> {
    match source {
        crate::manifest::EnvSource::File(path) => std::fs::read_to_string(path)
            .map(|v| {
                let v = v.strip_suffix('\n').unwrap_or(&v);
                v.strip_suffix('\r').unwrap_or(v).to_string()
            })
            .map_err(|e| format!("cannot read valueFrom file {path}: {e}")),
        crate::manifest::EnvSource::Env(var) => std::env::var(var)
            .map_err(|_| format!("valueFrom env {var} is not set in the controller's environment")),
    }
}
