//! Runtimes: where instances actually run. The [`Runtime`] trait (observe,
//! apply) and its backends: [`local`] (the embedded default: real processes,
//! probes, a load balancer), [`kube`] (Kubernetes ReplicaSets and Services),
//! [`sim`] (a virtual clock, for tests, `floyd simulate` and benchmarks).
//!
//! A runtime executes what the engine decided; it never decides a rollout
//! step itself. Within one revision it is the *instance manager*: it makes
//! the live instance count match the desired count, creating in slow-start
//! batches and deleting not-ready instances first (see
//! [`crate::engine::instances`]), like Kubernetes' ReplicaSet controller.

pub mod kube;
pub mod local;
pub mod sim;

use crate::manifest::{InstanceTemplate, Revision, ServiceName, ServiceSpec};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// What a runtime sees of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Observed {
    /// Every revision the runtime holds for the service, oldest first
    /// (including revisions scaled to 0 kept for rollback).
    pub revisions: Vec<ObservedRevision>,
    /// Revision receiving active (load-balanced) traffic. For rolling updates
    /// traffic goes to every ready instance and this is `None`.
    pub active: Option<Revision>,
    /// Revision receiving preview traffic (blue-green).
    pub preview: Option<Revision>,
    /// GPU capacity for this service's GPU request; `None` when it needs no GPU.
    pub gpu: Option<GpuCapacity>,
    /// Results of the configured gates for the target revision, in spec order.
    /// Filled by the controller (gates are evaluated outside the engine).
    #[serde(default)]
    pub gates: Vec<GateResult>,
    /// Cumulative traffic counters per revision (load balancer), for the
    /// `successRate` gate.
    #[serde(default)]
    pub traffic: Vec<RevisionTraffic>,
    /// Live objects that no longer match what Floyd applied (kube: a hand
    /// edit of a ReplicaSet's pod template or of a Service, a deleted
    /// Service), found by this observation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    /// The canary split in force (the last [`Action::SetWeight`]); `None`
    /// when traffic is not split by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySplit>,
    /// What keeps the service from serving although its rollout may be done,
    /// one sentence each (the local runtime: a load balancer port that cannot
    /// be bound). See [`with_runtime_problems`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A canary traffic split: `weight` percent of the requests to the ready
/// instances of `canary`, the rest to those of `stable` (every other
/// revision when `stable` is `None` or has no ready instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanarySplit {
    pub canary: Revision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<Revision>,
    /// Percent, 0..=100.
    pub weight: u32,
}

/// One object that drifted from what Floyd applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// `ReplicaSet` or `Service`.
    pub kind: String,
    /// The object's name.
    pub object: String,
    /// What differs, e.g. `spec.template.spec.containers[0].image: "web:1" (applied) != "web:evil" (live)`.
    pub message: String,
    /// Put back as applied during this observation (`driftPolicy: correct`).
    pub corrected: bool,
    /// First seen by this process (not reported before): counted once in
    /// `floyd_drift_total`.
    #[serde(default)]
    pub new: bool,
}

/// The phase and reason to show for a service whose runtime reports
/// `problems`: a rollout that is done (Complete, RolledBack) is Degraded with
/// the problems as its reason, never Complete; one in progress keeps its
/// phase and gets the problems appended; Failed and Degraded stay as they are.
pub fn with_runtime_problems(
    phase: crate::engine::Phase,
    reason: String,
    observed: &Observed,
) -> (crate::engine::Phase, String) {
    use crate::engine::Phase;
    if observed.problems.is_empty() {
        return (phase, reason);
    }
    let problems = observed.problems.join("; ");
    match phase {
        Phase::Complete | Phase::RolledBack => (Phase::Degraded, problems),
        Phase::Failed | Phase::Degraded => (phase, reason),
        _ if reason.is_empty() => (phase, problems),
        _ => (phase, format!("{reason}; {problems}")),
    }
}

impl Observed {
    pub fn revision(&self, rev: &Revision) -> Option<&ObservedRevision> {
        self.revisions.iter().find(|r| &r.revision == rev)
    }
}

/// One revision (instance set) of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedRevision {
    pub revision: Revision,
    /// When the runtime first created this revision (orders revisions: oldest first).
    pub created_at: Time,
    /// Instances the runtime was asked to keep.
    pub desired: u32,
    /// Live and terminating instances.
    pub instances: Vec<Instance>,
    /// The template, so a revision can be scaled up again (rollback).
    pub template: InstanceTemplate,
}

impl ObservedRevision {
    /// Instances that exist and are not terminating.
    pub fn live(&self) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.phase != InstancePhase::Terminating)
            .count() as u32
    }
    /// Terminating instances (still holding ports and GPUs).
    pub fn terminating(&self) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.phase == InstancePhase::Terminating)
            .count() as u32
    }
    /// Ready, non-terminating instances.
    pub fn ready(&self) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.phase != InstancePhase::Terminating && i.ready_since.is_some())
            .count() as u32
    }
    /// Instances ready continuously for at least `min_ready_seconds` at `now`.
    pub fn available(&self, min_ready_seconds: u32, now: Time) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.is_available(min_ready_seconds, now))
            .count() as u32
    }
}

/// One instance (a process, a pod, a simulated instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub phase: InstancePhase,
    pub created_at: Time,
    /// Since when it has been ready without interruption; `None` when not ready.
    pub ready_since: Option<Time>,
    pub restarts: u32,
    /// Why it is not ready / not running, in words a person can act on
    /// (e.g. "readiness probe GET /healthz returned 503", "CrashLoopBackOff: exit status 1").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// GPU units it holds (device ids, slice ids, slot ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
}

impl Instance {
    pub fn is_available(&self, min_ready_seconds: u32, now: Time) -> bool {
        self.phase != InstancePhase::Terminating
            && self.ready_since.is_some_and(|t| {
                now.since(t).as_millis() as u64 >= u64::from(min_ready_seconds) * 1000
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstancePhase {
    /// Created, not running yet (scheduling, pulling, starting, backing off).
    Pending,
    /// Running (ready or not: see `ready_since`).
    Running,
    /// Stopping; still holds its port and GPUs.
    Terminating,
    /// Exited and will not be restarted by itself.
    Failed,
}

/// GPU capacity as it concerns one service's request, in request units
/// (whole GPUs, MIG slices or time-slice slots of the matching kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuCapacity {
    /// What kind, for messages: "NVIDIA-A100-SXM4-80GB", "mig-1g.10gb", ...
    pub kind: String,
    /// Units of this kind that exist.
    pub exist: u32,
    /// Units held by nobody (a terminating instance's units are not free).
    pub free: u32,
    /// Units held by this service's instances (any revision, terminating included).
    pub held_by_service: u32,
}

/// Result of one configured gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// Gate kind and index, e.g. `successRate`, `prometheus[1]`.
    pub name: String,
    pub verdict: GateVerdict,
    /// When it was evaluated.
    pub at: Time,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason")]
pub enum GateVerdict {
    Pass,
    Fail(String),
    /// No data yet; blocks progress but does not fail (unless `onNoData` says so).
    Pending(String),
}

/// Cumulative load-balancer counters for one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionTraffic {
    pub revision: Revision,
    pub requests: u64,
    /// 5xx responses and failed proxy attempts.
    pub errors: u64,
}

/// What the engine asks a runtime to do. A runtime applies them in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[expect(
    clippy::large_enum_variant,
    reason = "a step yields a handful of actions; boxing the template would only add noise at 40 call sites"
)]
pub enum Action {
    /// Make the revision exist (with 0 instances) so it can be scaled.
    CreateRevision {
        revision: Revision,
        template: InstanceTemplate,
    },
    /// Set the desired instance count of a revision.
    Scale { revision: Revision, replicas: u32 },
    /// Delete one specific instance now and lower the revision's desired count
    /// by one (GPU in-place replacement, cleanup of a stuck instance).
    DeleteInstance {
        revision: Revision,
        instance: String,
    },
    /// Route active and preview traffic (atomic switch). `active: None` means
    /// every ready instance of every revision (rolling updates).
    SetTraffic {
        active: Option<Revision>,
        preview: Option<Revision>,
    },
    /// Forget a revision that has no instances (revision history limit).
    DeleteRevision { revision: Revision },
    /// Canary: split active traffic by weight (atomic, in-flight requests
    /// finish where they are). `SetTraffic` replaces a split. Header
    /// matches and mirroring come from the spec's `strategy.canary`.
    SetWeight {
        canary: Revision,
        stable: Option<Revision>,
        /// Percent of the requests for the canary, 0..=100.
        weight: u32,
    },
}

/// Services whose instances changed by themselves (became ready or
/// unready, crashed, finished terminating), as a runtime reports them to
/// the controller so a rollout steps on the event instead of on a timer.
/// Marks coalesce: a service marked ten times before the controller looks
/// is stepped once.
#[derive(Debug, Default)]
pub struct Changes {
    pending: Mutex<BTreeSet<ServiceName>>,
    wake: tokio::sync::Notify,
}

impl Changes {
    pub fn new() -> Changes {
        Changes::default()
    }

    /// Records that `service`'s instances changed.
    pub fn mark(&self, service: &ServiceName) {
        let fresh = match self.pending.lock() {
            Ok(mut p) => p.insert(service.clone()),
            Err(_) => return,
        };
        if fresh {
            // A stored permit if nobody waits: the next `next` returns at once.
            self.wake.notify_one();
        }
    }

    /// The services marked since the last call, waiting for at least one.
    pub async fn next(&self) -> BTreeSet<ServiceName> {
        loop {
            let taken = match self.pending.lock() {
                Ok(mut p) => std::mem::take(&mut *p),
                Err(_) => BTreeSet::new(),
            };
            if !taken.is_empty() {
                return taken;
            }
            self.wake.notified().await;
        }
    }

    /// The services marked since the last call, without waiting.
    pub fn take(&self) -> BTreeSet<ServiceName> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// Errors of a runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("service {service}: revision {revision} does not exist")]
    NoSuchRevision {
        service: ServiceName,
        revision: Revision,
    },
    #[error("service {service}: {message}")]
    Apply {
        service: ServiceName,
        message: String,
    },
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

/// A place where services run. Implementations: [`local::LocalRuntime`],
/// [`kube::KubeRuntime`], [`sim::SimRuntime`].
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Short name (`local`, `kube`, `sim`).
    fn name(&self) -> &'static str;

    /// The services this runtime currently runs (for prune and adoption).
    async fn services(&self) -> Result<Vec<ServiceName>, Error>;

    /// Current state of one service. A service the runtime does not know is
    /// observed as `Observed::default()` (no revisions).
    async fn observe(
        &self,
        service: &ServiceName,
        spec: Option<&ServiceSpec>,
        now: Time,
    ) -> Result<Observed, Error>;

    /// Carry out the engine's actions for `service`, whose current spec
    /// (ports, probes, blue-green preview port) is `spec`.
    async fn apply(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        actions: &[Action],
    ) -> Result<(), Error>;

    /// Where the runtime reports instance changes as they happen (see
    /// [`Changes`]); `None` when it does not, and the controller then
    /// re-observes a rollout in progress every second.
    fn changes(&self) -> Option<std::sync::Arc<Changes>> {
        None
    }

    /// Remove everything of a service (prune).
    async fn delete_service(&self, service: &ServiceName) -> Result<(), Error>;

    /// Durable per-service controller state kept where the service runs
    /// (kube: ConfigMap `floyd-state-<service>`), so a restarted or
    /// failed-over controller resumes from there. Default: the runtime keeps
    /// none (`None`); the controller's own store is the record.
    async fn load_state(&self, service: &ServiceName) -> Result<Option<String>, Error> {
        let _ = service;
        Ok(None)
    }

    /// Saves what [`Runtime::load_state`] returns. Default: does nothing.
    async fn save_state(&self, service: &ServiceName, json: &str) -> Result<(), Error> {
        let _ = (service, json);
        Ok(())
    }

    /// Autoscaling (`spec.autoscaling`): makes the runtime's autoscaler
    /// scale `target` (the revision the service runs or rolls out to; it is
    /// frozen while a rollout is in flight, `settled` false) and returns the
    /// replica count the engine must use instead of `spec.replicas`; removes
    /// the autoscaler when the spec has none. Default (local, sim): no
    /// autoscaler, `None` (the engine uses `spec.replicas`).
    async fn autoscale(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        target: &Revision,
        settled: bool,
    ) -> Result<Option<u32>, Error> {
        let _ = (service, spec, target, settled);
        Ok(None)
    }

    /// Announces a rollout event where the runtime's operators look (kube:
    /// a Kubernetes Event regarding the service). Default: does nothing.
    async fn record_event(
        &self,
        service: &ServiceName,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        let _ = (service, reason, message);
        Ok(())
    }

    /// The Git commit a revision comes from, told before the engine creates
    /// it, so the runtime can record it with the revision (kube: the
    /// `floyd.dev/commit` annotation on the ReplicaSet). Default: ignored.
    fn note_commit(&self, service: &ServiceName, revision: &Revision, commit: &str) {
        let _ = (service, revision, commit);
    }
}

#[cfg(test)]
mod tests {
    use super::{Changes, Observed, with_runtime_problems};

    #[tokio::test]
    async fn changes_coalesce_and_wake_a_later_waiter() {
        let c = std::sync::Arc::new(Changes::new());
        let a = crate::manifest::ServiceName::parse("a").unwrap();
        let b = crate::manifest::ServiceName::parse("b").unwrap();
        c.mark(&a);
        c.mark(&a);
        c.mark(&b);
        assert_eq!(c.next().await.len(), 2);
        assert!(c.take().is_empty());
        // Marked while nobody waits, then awaited: not lost.
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.next().await }
        });
        tokio::task::yield_now().await;
        c.mark(&b);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![b]);
    }
    use crate::engine::Phase;

    #[test]
    fn runtime_problems_are_never_complete() {
        let bad = Observed {
            problems: vec!["load balancer cannot listen on 127.0.0.1:8080".into()],
            ..Observed::default()
        };
        let p = "load balancer cannot listen on 127.0.0.1:8080";
        for (phase, reason, want_phase, want_reason) in [
            (Phase::Complete, "done", Phase::Degraded, p.to_string()),
            (
                Phase::RolledBack,
                "rolled back",
                Phase::Degraded,
                p.to_string(),
            ),
            (
                Phase::Progressing,
                "rolling",
                Phase::Progressing,
                format!("rolling; {p}"),
            ),
            (Phase::Progressing, "", Phase::Progressing, p.to_string()),
            (
                Phase::Failed,
                "deadline",
                Phase::Failed,
                "deadline".to_string(),
            ),
            (
                Phase::Degraded,
                "revert failed",
                Phase::Degraded,
                "revert failed".to_string(),
            ),
        ] {
            assert_eq!(
                with_runtime_problems(phase, reason.into(), &bad),
                (want_phase, want_reason),
                "{phase:?}"
            );
        }
        assert_eq!(
            with_runtime_problems(Phase::Complete, "done".into(), &Observed::default()),
            (Phase::Complete, "done".to_string())
        );
    }
}
