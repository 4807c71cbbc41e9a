//! A wall-clock in-memory runtime for controller tests: instances become
//! ready `ready_after` after creation (or `--ready-after-ms=N` in the
//! template's command), except when the command contains `--never-ready`.
//! With [`FakeRuntime::with_gpus`], GPU requests are counted against a fixed
//! number of whole GPUs like a real inventory. It manages instance counts like the real
//! instance manager (create the difference, delete the least useful first).

#![allow(dead_code)]

use floyd::engine::instances::pick_for_deletion;
use floyd::manifest::{InstanceTemplate, Revision, ServiceName, ServiceSpec};
use floyd::runtime::{
    Action, Error, GpuCapacity, Instance, InstancePhase, Observed, ObservedRevision, Runtime,
};
use floyd::time::Time;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Default)]
struct FakeService {
    revisions: Vec<ObservedRevision>,
    active: Option<Revision>,
    preview: Option<Revision>,
    canary: Option<floyd::runtime::CanarySplit>,
}

pub struct FakeRuntime {
    services: Mutex<BTreeMap<ServiceName, FakeService>>,
    ready_after: Duration,
    next_id: AtomicU64,
    /// `apply` calls seen (to tell "nothing happened" from "converged").
    pub applies: AtomicUsize,
    /// Rollout state the controller keeps in the runtime (like kube's ConfigMaps).
    pub states: Mutex<BTreeMap<ServiceName, String>>,
    /// Rollout events the controller recorded: (service, reason, message).
    pub events: Mutex<Vec<(String, String, String)>>,
    /// Commits the controller named for revisions: (service, revision, commit).
    pub commits: Mutex<Vec<(String, String, String)>>,
    /// Whole GPUs that exist (0: GPU requests are not accounted).
    gpus: u32,
    /// Runtime problems to report per service (`Observed::problems`).
    pub problems: Mutex<BTreeMap<String, Vec<String>>>,
}

impl FakeRuntime {
    pub fn new(ready_after: Duration) -> FakeRuntime {
        FakeRuntime {
            services: Mutex::new(BTreeMap::new()),
            ready_after,
            next_id: AtomicU64::new(1),
            applies: AtomicUsize::new(0),
            states: Mutex::new(BTreeMap::new()),
            events: Mutex::new(Vec::new()),
            commits: Mutex::new(Vec::new()),
            gpus: 0,
            problems: Mutex::new(BTreeMap::new()),
        }
    }

    /// A runtime with `gpus` whole GPUs shared by every service.
    pub fn with_gpus(ready_after: Duration, gpus: u32) -> FakeRuntime {
        FakeRuntime {
            gpus,
            ..FakeRuntime::new(ready_after)
        }
    }

    fn ready_after(&self, t: &InstanceTemplate) -> Duration {
        t.command
            .iter()
            .find_map(|a| a.strip_prefix("--ready-after-ms="))
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(self.ready_after)
    }

    /// GPUs held by live instances: (all services, this one).
    fn gpus_held(services: &BTreeMap<ServiceName, FakeService>, me: &ServiceName) -> (u32, u32) {
        let mut all = 0;
        let mut mine = 0;
        for (name, svc) in services {
            for r in &svc.revisions {
                let per = r.template.resources.gpu.as_ref().map_or(0, |g| g.count);
                let n = per * r.live();
                all += n;
                if name == me {
                    mine += n;
                }
            }
        }
        (all, mine)
    }

    fn never_ready(t: &InstanceTemplate) -> bool {
        t.command.iter().any(|a| a == "--never-ready")
    }

    fn refresh(&self, rev: &mut ObservedRevision, now: Time) {
        let never = Self::never_ready(&rev.template);
        let after = self.ready_after(&rev.template);
        for i in &mut rev.instances {
            if i.phase == InstancePhase::Pending || i.phase == InstancePhase::Running {
                i.phase = InstancePhase::Running;
                let ready_at = i.created_at.plus(after);
                if !never && now >= ready_at {
                    i.ready_since.get_or_insert(ready_at);
                } else if never {
                    i.reason = Some("readiness probe GET /healthz returned 503".into());
                }
            }
        }
    }

    fn scale(&self, rev: &mut ObservedRevision, replicas: u32, now: Time) {
        rev.desired = replicas;
        let live = rev.live();
        if live < replicas {
            for _ in live..replicas {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                rev.instances.push(Instance {
                    id: format!("{}-{id}", rev.revision),
                    phase: InstancePhase::Pending,
                    created_at: now,
                    ready_since: None,
                    restarts: 0,
                    reason: None,
                    gpus: vec![],
                });
            }
        } else if live > replicas {
            let gone = pick_for_deletion(&rev.instances, replicas);
            rev.instances.retain(|i| !gone.contains(&i.id));
        }
    }

    /// Revisions with live instances, for assertions: (revision, live, ready).
    pub fn summary(&self, service: &str) -> Vec<(String, u32, u32)> {
        let s = self.services.lock().unwrap();
        let Some(svc) = s.get(&ServiceName::parse(service).unwrap()) else {
            return vec![];
        };
        svc.revisions
            .iter()
            .filter(|r| r.live() > 0)
            .map(|r| (r.revision.to_string(), r.live(), r.ready()))
            .collect()
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn services(&self) -> Result<Vec<ServiceName>, Error> {
        Ok(self.services.lock().unwrap().keys().cloned().collect())
    }

    async fn observe(
        &self,
        service: &ServiceName,
        spec: Option<&ServiceSpec>,
        now: Time,
    ) -> Result<Observed, Error> {
        let mut s = self.services.lock().unwrap();
        let gpu = spec
            .and_then(|sp| sp.gpu())
            .filter(|_| self.gpus > 0)
            .map(|g| {
                let (all, mine) = Self::gpus_held(&s, service);
                GpuCapacity {
                    kind: g.product.clone().unwrap_or_else(|| "GPU".into()),
                    exist: self.gpus,
                    free: self.gpus.saturating_sub(all),
                    held_by_service: mine,
                }
            });
        let Some(svc) = s.get_mut(service) else {
            return Ok(Observed {
                gpu,
                ..Observed::default()
            });
        };
        for r in &mut svc.revisions {
            self.refresh(r, now);
        }
        let problems = self
            .problems
            .lock()
            .unwrap()
            .get(service.as_str())
            .cloned()
            .unwrap_or_default();
        Ok(Observed {
            revisions: svc.revisions.clone(),
            active: svc.active.clone(),
            preview: svc.preview.clone(),
            gpu,
            canary: svc.canary.clone(),
            problems,
            ..Observed::default()
        })
    }

    async fn apply(
        &self,
        service: &ServiceName,
        _spec: &ServiceSpec,
        actions: &[Action],
    ) -> Result<(), Error> {
        self.applies.fetch_add(1, Ordering::Relaxed);
        let now = Time::now_wall();
        let mut s = self.services.lock().unwrap();
        let svc = s.entry(service.clone()).or_default();
        for a in actions {
            match a {
                Action::CreateRevision { revision, template } => {
                    if svc.revisions.iter().all(|r| &r.revision != revision) {
                        svc.revisions.push(ObservedRevision {
                            revision: revision.clone(),
                            created_at: now,
                            desired: 0,
                            instances: vec![],
                            template: template.clone(),
                        });
                    }
                }
                Action::Scale { revision, replicas } => {
                    let Some(r) = svc.revisions.iter_mut().find(|r| &r.revision == revision) else {
                        return Err(Error::NoSuchRevision {
                            service: service.clone(),
                            revision: revision.clone(),
                        });
                    };
                    self.scale(r, *replicas, now);
                }
                Action::DeleteInstance { revision, instance } => {
                    if let Some(r) = svc.revisions.iter_mut().find(|r| &r.revision == revision) {
                        r.instances.retain(|i| &i.id != instance);
                        r.desired = r.desired.saturating_sub(1);
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
                    svc.canary = Some(floyd::runtime::CanarySplit {
                        canary: canary.clone(),
                        stable: stable.clone(),
                        weight: *weight,
                    });
                }
                Action::DeleteRevision { revision } => {
                    svc.revisions.retain(|r| &r.revision != revision);
                }
            }
        }
        Ok(())
    }

    async fn delete_service(&self, service: &ServiceName) -> Result<(), Error> {
        self.services.lock().unwrap().remove(service);
        self.states.lock().unwrap().remove(service);
        Ok(())
    }

    async fn load_state(&self, service: &ServiceName) -> Result<Option<String>, Error> {
        Ok(self.states.lock().unwrap().get(service).cloned())
    }

    async fn record_event(
        &self,
        service: &ServiceName,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        self.events.lock().unwrap().push((
            service.to_string(),
            reason.to_string(),
            message.to_string(),
        ));
        Ok(())
    }

    fn note_commit(&self, service: &ServiceName, revision: &Revision, commit: &str) {
        self.commits.lock().unwrap().push((
            service.to_string(),
            revision.to_string(),
            commit.to_string(),
        ));
    }

    async fn save_state(&self, service: &ServiceName, json: &str) -> Result<(), Error> {
        self.states
            .lock()
            .unwrap()
            .insert(service.clone(), json.to_string());
        Ok(())
    }
}

pub fn wait_secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
