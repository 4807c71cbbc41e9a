//! The vocabulary between the pure engine and the effectful runtimes: what
//! a runtime observes of a service ([`Observed`]: revisions, instances,
//! traffic, GPU capacity, gate results) and what the engine asks of it
//! ([`Action`]). Plain data, no I/O: the engine depends on this module, and
//! so do the runtimes; the engine never depends on a runtime.

use crate::manifest::{InstanceTemplate, Revision};
use crate::time::Time;
use serde::{Deserialize, Serialize};

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
