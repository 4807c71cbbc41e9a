//! The `sim` runtime: the [`super::Runtime`] trait over a virtual clock and
//! scripted instance behaviour (start-up time, readiness failures, crash
//! loops, termination grace, GPU inventory), deterministic for a seed.
//!
//! [`SimWorld`] is the synchronous core used by `floyd simulate`, tests and
//! benchmarks: [`SimWorld::observe`], [`SimWorld::apply`],
//! [`SimWorld::next_event`] and [`SimWorld::advance_to`] (which jumps from
//! one instance event to the next, so thousands of simulated seconds take
//! milliseconds). [`SimRuntime`] wraps it for the async trait. Within a
//! revision the world is the instance manager (slow-start creation,
//! least-useful-first deletion, from [`crate::engine::instances`]).
//!
//! Must not: decide rollout steps (that is the engine's job) or read the
//! wall clock.

mod gpu;
pub mod scenario;

#[cfg(test)]
mod engine_tests;

pub use gpu::GpuPool;

use super::{
    Action, CanarySplit, Error, GpuCapacity, Instance, InstancePhase, Observed, ObservedRevision,
    Runtime,
};
use crate::engine::instances;
use crate::manifest::{GpuInventory, InstanceTemplate, Revision, ServiceName, ServiceSpec};
use crate::time::Time;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Mutex;

/// Scripted behaviour of a revision's instances (all times in seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Behaviour {
    /// From creation (or restart) to ready.
    #[serde(default)]
    pub startup_seconds: f64,
    /// Up to this much extra start-up time, drawn per instance from the seed.
    #[serde(default)]
    pub startup_jitter_seconds: f64,
    /// Runs but never passes its readiness probe.
    #[serde(default)]
    pub never_ready: bool,
    /// What a never-ready instance reports (default: a failing readiness probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    /// Crashes this long after becoming ready (restarted with back-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_after_seconds: Option<f64>,
    /// Crashes again after every restart (otherwise only once).
    #[serde(default)]
    pub crash_loop: bool,
    /// From the stop signal to exit (it holds its GPUs and port meanwhile).
    #[serde(default)]
    pub stop_seconds: f64,
}

fn secs(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1000.0).round() as u64
    } else {
        0
    }
}

#[derive(Debug, Clone)]
struct SimInstance {
    key: u64,
    view: Instance,
    /// Becomes running (and ready unless never-ready) at this time.
    start_at: Option<Time>,
    crash_at: Option<Time>,
    /// Leaves after termination at this time.
    gone_at: Option<Time>,
}

impl SimInstance {
    fn next_timer(&self) -> Option<Time> {
        [self.start_at, self.crash_at, self.gone_at]
            .into_iter()
            .flatten()
            .min()
    }
}

#[derive(Debug, Clone)]
struct SimRevision {
    revision: Revision,
    created_at: Time,
    desired: u32,
    template: InstanceTemplate,
    instances: Vec<SimInstance>,
}

#[derive(Debug, Clone)]
struct SimService {
    name: ServiceName,
    revisions: Vec<SimRevision>,
    active: Option<Revision>,
    preview: Option<Revision>,
    /// The canary split in force.
    canary: Option<CanarySplit>,
    /// The timer this service is queued under (to drop stale heap entries).
    queued: Option<Time>,
    /// Could not create an instance for lack of GPUs: retry when one frees.
    waiting_for_gpu: bool,
}

/// The simulated world: services, instances, GPUs, a virtual clock.
#[derive(Debug)]
pub struct SimWorld {
    now: Time,
    rng: StdRng,
    services: Vec<SimService>,
    index: HashMap<ServiceName, usize>,
    gpus: GpuPool,
    behaviours: HashMap<(usize, Revision), Behaviour>,
    default_behaviour: Behaviour,
    timers: BinaryHeap<Reverse<(Time, usize)>>,
    next_key: u64,
    /// Instance events processed (for benchmarks).
    pub events_processed: u64,
    /// Services whose instances changed by themselves since [`SimWorld::take_dirty`].
    dirty: Vec<usize>,
    /// Services that failed to create an instance for lack of GPUs.
    gpu_waiters: Vec<usize>,
}

impl SimWorld {
    /// An empty world at time 0 with a GPU inventory and a seed.
    pub fn new(gpus: &[GpuInventory], seed: u64) -> SimWorld {
        SimWorld {
            now: Time::ZERO,
            rng: StdRng::seed_from_u64(seed),
            services: Vec::new(),
            index: HashMap::new(),
            gpus: GpuPool::new(gpus),
            behaviours: HashMap::new(),
            default_behaviour: Behaviour::default(),
            timers: BinaryHeap::new(),
            next_key: 1,
            events_processed: 0,
            dirty: Vec::new(),
            gpu_waiters: Vec::new(),
        }
    }

    pub fn now(&self) -> Time {
        self.now
    }

    /// Behaviour of revisions without their own.
    pub fn set_default_behaviour(&mut self, b: Behaviour) {
        self.default_behaviour = b;
    }

    /// Behaviour of one revision's instances (created from now on).
    pub fn set_behaviour(&mut self, service: &ServiceName, revision: &Revision, b: Behaviour) {
        let s = self.service_index(service);
        self.behaviours.insert((s, revision.clone()), b);
    }

    fn service_index(&mut self, name: &ServiceName) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.services.push(SimService {
            name: name.clone(),
            revisions: Vec::new(),
            active: None,
            canary: None,
            preview: None,
            queued: None,
            waiting_for_gpu: false,
        });
        let i = self.services.len() - 1;
        self.index.insert(name.clone(), i);
        i
    }

    /// A revision already running `replicas` ready instances (the state
    /// before a rollout), ready since now.
    pub fn seed_revision(
        &mut self,
        service: &ServiceName,
        revision: &Revision,
        template: &InstanceTemplate,
        replicas: u32,
    ) {
        let s = self.service_index(service);
        self.apply_one(
            s,
            &Action::CreateRevision {
                revision: revision.clone(),
                template: template.clone(),
            },
        );
        let now = self.now;
        let gpu = template.resources.gpu.clone();
        let r = self.services[s]
            .revisions
            .iter()
            .position(|r| &r.revision == revision)
            .unwrap_or(0);
        self.services[s].revisions[r].desired = replicas;
        for _ in 0..replicas {
            let key = self.next_key;
            self.next_key += 1;
            let gpus = match &gpu {
                Some(req) => self.gpus.allocate(req, s, key).unwrap_or_default(),
                None => Vec::new(),
            };
            self.services[s].revisions[r].instances.push(SimInstance {
                key,
                view: Instance {
                    id: format!("{}-{}-{key}", service, revision),
                    phase: InstancePhase::Running,
                    created_at: now,
                    ready_since: Some(now),
                    restarts: 0,
                    reason: None,
                    gpus,
                },
                start_at: None,
                crash_at: None,
                gone_at: None,
            });
        }
    }

    /// What the runtime sees of a service at the current virtual time.
    pub fn observe(&self, service: &ServiceName, spec: Option<&ServiceSpec>) -> Observed {
        let Some(&s) = self.index.get(service) else {
            return Observed::default();
        };
        let svc = &self.services[s];
        let gpu: Option<GpuCapacity> = spec
            .and_then(|sp| sp.gpu())
            .filter(|_| !self.gpus.is_empty())
            .map(|req| self.gpus.capacity(req, s));
        Observed {
            revisions: svc
                .revisions
                .iter()
                .map(|r| ObservedRevision {
                    revision: r.revision.clone(),
                    created_at: r.created_at,
                    desired: r.desired,
                    instances: r.instances.iter().map(|i| i.view.clone()).collect(),
                    template: r.template.clone(),
                })
                .collect(),
            active: svc.active.clone(),
            preview: svc.preview.clone(),
            gpu,
            gates: Vec::new(),
            traffic: Vec::new(),
            canary: svc.canary.clone(),
            ..Observed::default()
        }
    }

    /// The canary split of a service, if its traffic is split by weight.
    pub fn canary_split(&self, service: &ServiceName) -> Option<&CanarySplit> {
        let &s = self.index.get(service)?;
        self.services[s].canary.as_ref()
    }

    /// Carries out the engine's actions at the current virtual time.
    pub fn apply(&mut self, service: &ServiceName, actions: &[Action]) -> Result<(), Error> {
        let s = self.service_index(service);
        for a in actions {
            match a {
                Action::Scale { revision, .. } | Action::DeleteInstance { revision, .. }
                    if !self.services[s]
                        .revisions
                        .iter()
                        .any(|r| &r.revision == revision) =>
                {
                    return Err(Error::NoSuchRevision {
                        service: service.clone(),
                        revision: revision.clone(),
                    });
                }
                _ => self.apply_one(s, a),
            }
        }
        self.reconcile(s);
        Ok(())
    }

    fn apply_one(&mut self, s: usize, a: &Action) {
        let now = self.now;
        match a {
            Action::CreateRevision { revision, template } => {
                let svc = &mut self.services[s];
                if !svc.revisions.iter().any(|r| &r.revision == revision) {
                    svc.revisions.push(SimRevision {
                        revision: revision.clone(),
                        created_at: now,
                        desired: 0,
                        template: template.clone(),
                        instances: Vec::new(),
                    });
                }
            }
            Action::Scale { revision, replicas } => {
                if let Some(r) = self.services[s]
                    .revisions
                    .iter_mut()
                    .find(|r| &r.revision == revision)
                {
                    r.desired = *replicas;
                }
            }
            Action::DeleteInstance { revision, instance } => {
                let idx = self.services[s]
                    .revisions
                    .iter()
                    .position(|r| &r.revision == revision);
                if let Some(r) = idx {
                    let rev = &mut self.services[s].revisions[r];
                    rev.desired = rev.desired.saturating_sub(1);
                    if let Some(pos) = rev.instances.iter().position(|i| &i.view.id == instance) {
                        self.terminate(s, r, pos);
                    }
                }
            }
            Action::SetTraffic { active, preview } => {
                self.services[s].active = active.clone();
                self.services[s].preview = preview.clone();
                self.services[s].canary = None;
            }
            Action::SetWeight {
                canary,
                stable,
                weight,
            } => {
                let svc = &mut self.services[s];
                svc.active = None;
                svc.preview = None;
                svc.canary = Some(CanarySplit {
                    canary: canary.clone(),
                    stable: stable.clone(),
                    weight: *weight,
                });
            }
            Action::DeleteRevision { revision } => {
                self.services[s]
                    .revisions
                    .retain(|r| &r.revision != revision || !r.instances.is_empty());
            }
        }
    }

    fn behaviour(&self, s: usize, revision: &Revision) -> Behaviour {
        self.behaviours
            .get(&(s, revision.clone()))
            .cloned()
            .unwrap_or_else(|| self.default_behaviour.clone())
    }

    /// Stops instance `pos` of revision `r` (grace period from its behaviour).
    fn terminate(&mut self, s: usize, r: usize, pos: usize) {
        let rev = self.services[s].revisions[r].revision.clone();
        let b = self.behaviour(s, &rev);
        let stop = secs(b.stop_seconds);
        let now = self.now;
        let inst = &mut self.services[s].revisions[r].instances[pos];
        if inst.view.phase == InstancePhase::Terminating {
            return;
        }
        inst.view.phase = InstancePhase::Terminating;
        inst.view.ready_since = None;
        inst.start_at = None;
        inst.crash_at = None;
        if stop == 0 {
            let key = inst.key;
            self.services[s].revisions[r].instances.remove(pos);
            self.gpus.release(s, key);
            self.gpu_freed();
        } else {
            inst.gone_at = Some(Time(now.0 + stop));
        }
    }

    /// The instance manager: make every revision's live count match its
    /// desired count (slow-start creation, least useful deleted first).
    fn reconcile(&mut self, s: usize) {
        self.services[s].waiting_for_gpu = false;
        for r in 0..self.services[s].revisions.len() {
            let rev = &self.services[s].revisions[r];
            let live = rev
                .instances
                .iter()
                .filter(|i| i.view.phase != InstancePhase::Terminating)
                .count() as u32;
            if live > rev.desired {
                let views: Vec<Instance> = rev.instances.iter().map(|i| i.view.clone()).collect();
                for id in instances::pick_for_deletion(&views, rev.desired) {
                    if let Some(pos) = self.services[s].revisions[r]
                        .instances
                        .iter()
                        .position(|i| i.view.id == id)
                    {
                        self.terminate(s, r, pos);
                    }
                }
            } else if live < rev.desired {
                'batches: for batch in instances::slow_start_batches(rev.desired - live) {
                    for _ in 0..batch {
                        if !self.create_instance(s, r) {
                            self.services[s].waiting_for_gpu = true;
                            self.gpu_waiters.push(s);
                            break 'batches;
                        }
                    }
                }
            }
        }
        self.requeue(s);
    }

    /// Creates one instance; false when its GPUs cannot be had (a failed creation).
    fn create_instance(&mut self, s: usize, r: usize) -> bool {
        let key = self.next_key;
        let rev = &self.services[s].revisions[r];
        let gpus = match &rev.template.resources.gpu {
            Some(req) if !self.gpus.is_empty() => {
                let req = req.clone();
                match self.gpus.allocate(&req, s, key) {
                    Some(g) => g,
                    None => return false,
                }
            }
            _ => Vec::new(),
        };
        self.next_key += 1;
        let revision = rev.revision.clone();
        let b = self.behaviour(s, &revision);
        let jitter = secs(b.startup_jitter_seconds);
        let extra = if jitter > 0 {
            self.rng.random_range(0..=jitter)
        } else {
            0
        };
        let now = self.now;
        let name = &self.services[s].name;
        let id = format!("{name}-{revision}-{key}");
        self.services[s].revisions[r].instances.push(SimInstance {
            key,
            view: Instance {
                id,
                phase: InstancePhase::Pending,
                created_at: now,
                ready_since: None,
                restarts: 0,
                reason: None,
                gpus,
            },
            start_at: Some(Time(now.0 + secs(b.startup_seconds) + extra)),
            crash_at: None,
            gone_at: None,
        });
        true
    }

    fn gpu_freed(&mut self) {
        if self.gpu_waiters.is_empty() {
            return;
        }
        // Revisions that could not get GPUs try again at once.
        let mut waiting = std::mem::take(&mut self.gpu_waiters);
        waiting.sort_unstable();
        waiting.dedup();
        for i in waiting {
            if self.services[i].waiting_for_gpu {
                self.services[i].waiting_for_gpu = false;
                self.queue_at(i, self.now);
            }
        }
    }

    fn queue_at(&mut self, s: usize, t: Time) {
        let svc = &mut self.services[s];
        if svc.queued.is_none_or(|q| t < q) {
            svc.queued = Some(t);
            self.timers.push(Reverse((t, s)));
        }
    }

    fn requeue(&mut self, s: usize) {
        let next = self.services[s]
            .revisions
            .iter()
            .flat_map(|r| r.instances.iter())
            .filter_map(SimInstance::next_timer)
            .min();
        if let Some(t) = next {
            self.queue_at(s, t);
        }
    }

    /// When something will next change by itself, if ever.
    pub fn next_event(&mut self) -> Option<Time> {
        while let Some(Reverse((t, s))) = self.timers.peek().copied() {
            if self.services[s].queued == Some(t) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Moves the clock to `t`, processing every instance event on the way.
    pub fn advance_to(&mut self, t: Time) {
        while let Some(next) = self.next_event() {
            if next > t {
                break;
            }
            let Some(Reverse((at, s))) = self.timers.pop() else {
                break;
            };
            self.services[s].queued = None;
            self.now = self.now.max(at);
            self.fire(s);
        }
        self.now = self.now.max(t);
    }

    /// Processes service `s`'s instance timers due now.
    fn fire(&mut self, s: usize) {
        self.dirty.push(s);
        let now = self.now;
        let mut freed = false;
        for r in 0..self.services[s].revisions.len() {
            let due = self.services[s].revisions[r]
                .instances
                .iter()
                .any(|i| i.next_timer().is_some_and(|t| t <= now));
            if !due {
                continue;
            }
            let revision = self.services[s].revisions[r].revision.clone();
            let b = self.behaviour(s, &revision);
            let mut gone = Vec::new();
            for (pos, inst) in self.services[s].revisions[r]
                .instances
                .iter_mut()
                .enumerate()
            {
                if inst.gone_at.is_some_and(|g| g <= now) {
                    gone.push(pos);
                    continue;
                }
                if inst.crash_at.is_some_and(|c| c <= now) {
                    self.events_processed += 1;
                    inst.crash_at = None;
                    inst.view.restarts += 1;
                    inst.view.ready_since = None;
                    inst.view.phase = InstancePhase::Pending;
                    let k = inst.view.restarts.min(6);
                    let backoff = (10u64 << (k - 1)).min(300);
                    inst.view.reason = Some(format!(
                        "CrashLoopBackOff: exited with status 1 after {} s (restart {}, back-off {backoff} s)",
                        b.crash_after_seconds.unwrap_or(0.0),
                        inst.view.restarts
                    ));
                    inst.start_at = Some(Time(now.0 + backoff * 1000 + secs(b.startup_seconds)));
                    continue;
                }
                if inst.start_at.is_some_and(|st| st <= now) {
                    self.events_processed += 1;
                    inst.start_at = None;
                    inst.view.phase = InstancePhase::Running;
                    if b.never_ready {
                        inst.view.reason = Some(b.not_ready_reason.clone().unwrap_or_else(|| {
                            "readiness probe failed (scripted never-ready)".to_string()
                        }));
                    } else {
                        inst.view.ready_since = Some(now);
                        inst.view.reason = None;
                        let crash = b
                            .crash_after_seconds
                            .filter(|_| b.crash_loop || inst.view.restarts == 0);
                        if let Some(c) = crash {
                            inst.crash_at = Some(Time(now.0 + secs(c).max(1)));
                        }
                    }
                }
            }
            for pos in gone.into_iter().rev() {
                self.events_processed += 1;
                let key = self.services[s].revisions[r].instances[pos].key;
                self.services[s].revisions[r].instances.remove(pos);
                self.gpus.release(s, key);
                freed = true;
            }
        }
        self.reconcile(s);
        if freed {
            self.gpu_freed();
        }
    }

    /// Services whose instances changed by themselves since the last call
    /// (indices into [`SimWorld::service_names`]; may repeat), so a driver
    /// of many services steps only those.
    pub fn take_dirty(&mut self) -> Vec<usize> {
        let mut d = std::mem::take(&mut self.dirty);
        d.sort_unstable();
        d.dedup();
        d
    }

    /// Every service name, in creation order.
    pub fn service_names(&self) -> Vec<ServiceName> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }

    /// Removes a service and frees what it held.
    pub fn delete_service(&mut self, service: &ServiceName) {
        if let Some(&s) = self.index.get(service) {
            let keys: Vec<u64> = self.services[s]
                .revisions
                .iter()
                .flat_map(|r| r.instances.iter().map(|i| i.key))
                .collect();
            for k in keys {
                self.gpus.release(s, k);
            }
            self.services[s].revisions.clear();
            self.services[s].active = None;
            self.services[s].preview = None;
            self.services[s].canary = None;
            self.gpu_freed();
        }
    }

    /// GPU units held by anyone, and units that exist (for invariant checks).
    pub fn gpu_usage(&self) -> (usize, usize) {
        (self.gpus.held(), self.gpus.len())
    }
}

/// [`SimWorld`] behind the async [`Runtime`] trait, on the wall clock:
/// `observe(.., now)` advances the virtual clock to `now` first, and (inside
/// a tokio runtime) a timer advances it at the world's next instance event
/// and reports the services that changed through [`Runtime::changes`], as
/// the local runtime's prober does.
#[derive(Debug)]
pub struct SimRuntime {
    shared: std::sync::Arc<SimShared>,
}

#[derive(Debug)]
struct SimShared {
    world: Mutex<SimWorld>,
    changes: std::sync::Arc<super::Changes>,
    /// The instant the running timer task fires at, if one runs.
    timer: Mutex<Option<Time>>,
}

impl SimWorld {
    /// Moves a fresh world's clock to `t` (a world that follows the wall clock).
    pub fn start_at(&mut self, t: Time) {
        self.now = self.now.max(t);
    }
}

impl SimRuntime {
    pub fn new(world: SimWorld) -> SimRuntime {
        SimRuntime {
            shared: std::sync::Arc::new(SimShared {
                world: Mutex::new(world),
                changes: std::sync::Arc::new(super::Changes::new()),
                timer: Mutex::new(None),
            }),
        }
    }

    /// Runs `f` on the world (to script behaviour or read the clock).
    pub fn with_world<R>(&self, f: impl FnOnce(&mut SimWorld) -> R) -> Result<R, Error> {
        let r = self.shared.with_world(f)?;
        SimShared::schedule(&self.shared);
        Ok(r)
    }
}

impl SimShared {
    fn with_world<R>(&self, f: impl FnOnce(&mut SimWorld) -> R) -> Result<R, Error> {
        let mut w = self
            .world
            .lock()
            .map_err(|_| Error::Unavailable("sim world lock poisoned".into()))?;
        Ok(f(&mut w))
    }

    /// Starts a timer for the world's next instance event unless one runs
    /// for that instant or earlier. Outside a tokio runtime: nothing (the
    /// driver advances the clock itself).
    fn schedule(this: &std::sync::Arc<SimShared>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(Some(next)) = this.with_world(|w| w.next_event()) else {
            return;
        };
        {
            let Ok(mut t) = this.timer.lock() else {
                return;
            };
            if t.is_some_and(|t| t <= next) {
                return;
            }
            *t = Some(next);
        }
        let me = std::sync::Arc::downgrade(this);
        handle.spawn(async move {
            let wait = next.since(Time::now_wall());
            tokio::time::sleep(wait).await;
            let Some(this) = me.upgrade() else { return };
            if let Ok(mut t) = this.timer.lock()
                && *t == Some(next)
            {
                *t = None;
            }
            let changed = this
                .with_world(|w| {
                    w.advance_to(Time::now_wall().max(next));
                    let names = w.service_names();
                    w.take_dirty()
                        .into_iter()
                        .filter_map(|i| names.get(i).cloned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for n in &changed {
                this.changes.mark(n);
            }
            SimShared::schedule(&this);
        });
    }
}

#[async_trait::async_trait]
impl Runtime for SimRuntime {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn changes(&self) -> Option<std::sync::Arc<super::Changes>> {
        Some(self.shared.changes.clone())
    }

    async fn services(&self) -> Result<Vec<ServiceName>, Error> {
        self.shared.with_world(|w| {
            w.services
                .iter()
                .filter(|s| !s.revisions.is_empty())
                .map(|s| s.name.clone())
                .collect()
        })
    }

    async fn observe(
        &self,
        service: &ServiceName,
        spec: Option<&ServiceSpec>,
        now: Time,
    ) -> Result<Observed, Error> {
        self.with_world(|w| {
            w.advance_to(now);
            w.observe(service, spec)
        })
    }

    async fn apply(
        &self,
        service: &ServiceName,
        _spec: &ServiceSpec,
        actions: &[Action],
    ) -> Result<(), Error> {
        self.with_world(|w| w.apply(service, actions))?
    }

    async fn delete_service(&self, service: &ServiceName) -> Result<(), Error> {
        self.with_world(|w| w.delete_service(service))
    }
}

/// Revision counts of one service, by revision (for timelines).
pub fn counts(
    observed: &Observed,
    min_ready_seconds: u32,
    now: Time,
) -> BTreeMap<Revision, (u32, u32, u32)> {
    observed
        .revisions
        .iter()
        .map(|r| {
            (
                r.revision.clone(),
                (r.live(), r.ready(), r.available(min_ready_seconds, now)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> ServiceName {
        ServiceName::parse("web").unwrap()
    }

    fn gpu_template() -> InstanceTemplate {
        let mut t = InstanceTemplate::command(["serve"]);
        t.resources.gpu = Some(crate::manifest::GpuRequest {
            count: 1,
            product: None,
            memory_mib: None,
            sharing: crate::manifest::GpuSharing::Exclusive,
            allow_in_place: true,
        });
        t
    }

    /// On the wall clock, the runtime reports an instance becoming ready
    /// when it happens, without anyone observing.
    #[tokio::test]
    async fn sim_runtime_reports_readiness_on_the_wall_clock() {
        let mut w = SimWorld::new(&[], 0);
        w.start_at(Time::now_wall());
        w.set_default_behaviour(Behaviour {
            startup_seconds: 0.3,
            ..Behaviour::default()
        });
        let rt = SimRuntime::new(w);
        let changes = rt.changes().expect("sim reports changes");
        let r = Revision("aaaaaaaaaa".into());
        let t = InstanceTemplate::command(["serve"]);
        let spec = ServiceSpec::with_defaults(1, t.clone());
        let started = std::time::Instant::now();
        rt.apply(
            &name(),
            &spec,
            &[
                Action::CreateRevision {
                    revision: r.clone(),
                    template: t,
                },
                Action::Scale {
                    revision: r.clone(),
                    replicas: 1,
                },
            ],
        )
        .await
        .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), changes.next())
            .await
            .expect("a change within 5 s");
        let waited = started.elapsed();
        assert!(got.contains(&name()), "{got:?}");
        assert!(
            waited >= std::time::Duration::from_millis(250),
            "not before start-up: {waited:?}"
        );
        let o = rt.observe(&name(), None, Time::now_wall()).await.unwrap();
        assert_eq!(o.revision(&r).unwrap().ready(), 1);
    }

    #[test]
    fn terminating_instances_hold_gpus_until_gone() {
        let inv = [GpuInventory {
            product: "A100".into(),
            memory_mib: None,
            count: 2,
            time_sliced_replicas: None,
            mig: Default::default(),
        }];
        let mut w = SimWorld::new(&inv, 1);
        let (a, b) = (Revision::from("a"), Revision::from("b"));
        w.set_default_behaviour(Behaviour {
            startup_seconds: 1.0,
            stop_seconds: 5.0,
            ..Behaviour::default()
        });
        w.seed_revision(&name(), &a, &gpu_template(), 2);
        assert_eq!(w.gpu_usage(), (2, 2));
        let create_b = Action::CreateRevision {
            revision: b.clone(),
            template: gpu_template(),
        };
        w.apply(
            &name(),
            &[
                create_b,
                Action::Scale {
                    revision: a.clone(),
                    replicas: 1,
                },
                Action::Scale {
                    revision: b.clone(),
                    replicas: 1,
                },
            ],
        )
        .unwrap();
        // The new instance cannot be created: the stopping one still holds its GPU.
        let o = w.observe(&name(), None);
        assert_eq!(o.revision(&a).unwrap().terminating(), 1);
        assert_eq!(o.revision(&b).unwrap().instances.len(), 0);
        assert_eq!(w.next_event(), Some(Time::from_secs(5)));
        w.advance_to(Time::from_secs(5));
        let o = w.observe(&name(), None);
        assert_eq!(o.revision(&a).unwrap().instances.len(), 1);
        assert_eq!(
            o.revision(&b).unwrap().instances.len(),
            1,
            "created once the GPU was free"
        );
        assert_eq!(w.take_dirty(), vec![0]);
        w.advance_to(Time::from_secs(6));
        assert_eq!(w.observe(&name(), None).revision(&b).unwrap().ready(), 1);
    }

    #[test]
    fn crash_loop_backs_off_and_reports_why() {
        let mut w = SimWorld::new(&[], 1);
        let a = Revision::from("a");
        w.set_behaviour(
            &name(),
            &a,
            Behaviour {
                startup_seconds: 2.0,
                crash_after_seconds: Some(3.0),
                crash_loop: true,
                ..Behaviour::default()
            },
        );
        w.apply(
            &name(),
            &[
                Action::CreateRevision {
                    revision: a.clone(),
                    template: InstanceTemplate::command(["x"]),
                },
                Action::Scale {
                    revision: a.clone(),
                    replicas: 1,
                },
            ],
        )
        .unwrap();
        // ready at 2, crash at 5, back-off 10 s + start-up 2 → ready at 17, crash at 20, back-off 20 s…
        let ready = |w: &SimWorld| w.observe(&name(), None).revisions[0].instances[0].ready_since;
        w.advance_to(Time::from_secs(2));
        assert_eq!(ready(&w), Some(Time::from_secs(2)));
        w.advance_to(Time::from_secs(5));
        let o = w.observe(&name(), None);
        let i = &o.revisions[0].instances[0];
        assert_eq!((i.ready_since, i.restarts), (None, 1));
        assert!(
            i.reason
                .as_deref()
                .unwrap_or("")
                .starts_with("CrashLoopBackOff")
        );
        w.advance_to(Time::from_secs(17));
        assert_eq!(ready(&w), Some(Time::from_secs(17)));
        w.advance_to(Time::from_secs(20));
        assert_eq!(ready(&w), None);
        w.advance_to(Time::from_secs(41));
        assert_eq!(ready(&w), None);
        w.advance_to(Time::from_secs(42));
        assert_eq!(ready(&w), Some(Time::from_secs(42)));
    }

    #[test]
    fn same_seed_same_world() {
        let run = |seed| {
            let mut w = SimWorld::new(&[], seed);
            w.set_default_behaviour(Behaviour {
                startup_seconds: 1.0,
                startup_jitter_seconds: 10.0,
                ..Behaviour::default()
            });
            let a = Revision::from("a");
            w.apply(
                &name(),
                &[
                    Action::CreateRevision {
                        revision: a.clone(),
                        template: InstanceTemplate::command(["x"]),
                    },
                    Action::Scale {
                        revision: a,
                        replicas: 5,
                    },
                ],
            )
            .unwrap();
            w.advance_to(Time::from_secs(100));
            w.observe(&name(), None)
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[tokio::test]
    async fn runtime_trait_advances_the_virtual_clock() {
        let rt = SimRuntime::new(SimWorld::new(&[], 0));
        rt.with_world(|w| {
            w.set_default_behaviour(Behaviour {
                startup_seconds: 3.0,
                ..Behaviour::default()
            })
        })
        .unwrap();
        let spec = ServiceSpec::with_defaults(2, InstanceTemplate::command(["x"]));
        let a = Revision::from("a");
        let err = rt
            .apply(
                &name(),
                &spec,
                &[Action::Scale {
                    revision: a.clone(),
                    replicas: 1,
                }],
            )
            .await;
        assert!(matches!(err, Err(Error::NoSuchRevision { .. })));
        rt.apply(
            &name(),
            &spec,
            &[
                Action::CreateRevision {
                    revision: a.clone(),
                    template: spec.template.clone(),
                },
                Action::Scale {
                    revision: a.clone(),
                    replicas: 2,
                },
                Action::SetTraffic {
                    active: Some(a.clone()),
                    preview: None,
                },
            ],
        )
        .await
        .unwrap();
        assert_eq!(rt.services().await.unwrap(), vec![name()]);
        let o = rt
            .observe(&name(), Some(&spec), Time::from_secs(1))
            .await
            .unwrap();
        assert_eq!((o.revisions[0].live(), o.revisions[0].ready()), (2, 0));
        assert_eq!(o.active, Some(a.clone()));
        let o = rt
            .observe(&name(), Some(&spec), Time::from_secs(3))
            .await
            .unwrap();
        assert_eq!(o.revisions[0].ready(), 2);
        rt.delete_service(&name()).await.unwrap();
        assert!(rt.services().await.unwrap().is_empty());
        assert_eq!(
            rt.observe(&name(), None, Time::from_secs(4))
                .await
                .unwrap()
                .revisions
                .len(),
            0
        );
    }
}
