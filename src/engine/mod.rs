//! The rollout engine: a pure, deterministic state machine deciding each step
//! of a rollout. `step(spec, observed, state, now) -> Decision`.
//!
//! Owns: RollingUpdate (Kubernetes Deployment arithmetic), Recreate,
//! BlueGreen, health gates, the progress deadline, GPU-aware surge, supersede
//! and pause, the rollback plan.
//! Must not: read a clock, do I/O, use randomness. Time is an argument.

pub mod instances;

use crate::manifest::{Revision, ServiceSpec};
use crate::runtime::{Action, GateResult, Observed};
use crate::time::Time;
use serde::{Deserialize, Serialize};

/// The phase of a service's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Moving towards the target revision.
    Progressing,
    /// Paused by a person (`floyd pause`); nothing moves until `resume`.
    Paused,
    /// Blue-green: new revision fully available and gated, waiting for `floyd promote`.
    AwaitingPromotion,
    /// Target reached: all instances of the target revision available, gates passed.
    Complete,
    /// The rollout failed; see the reason.
    Failed,
    /// Running, but not as Git says and Floyd will not fix it by itself
    /// (a revert's own rollout failed, a revert was impossible).
    Degraded,
    /// Rolled back to the last good revision after a failure.
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::AwaitingPromotion => "AwaitingPromotion",
            Phase::Complete => "Complete",
            Phase::Failed => "Failed",
            Phase::Degraded => "Degraded",
            Phase::RolledBack => "RolledBack",
        }
    }
    /// The rollout will not move by itself any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Complete | Phase::Failed | Phase::Degraded | Phase::RolledBack
        )
    }
}

/// A person's command for a rollout, fed in by the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Promote,
    Abort,
    Pause,
    Resume,
}

/// Durable per-service rollout state: what the engine remembers between
/// steps. Persisted by the controller (store / cluster annotations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The revision being rolled out.
    pub target: Revision,
    /// The last revision that completed (rollback target).
    pub stable: Option<Revision>,
    pub phase: Phase,
    pub reason: String,
    pub started_at: Time,
    /// Last time the rollout made progress (for progressDeadlineSeconds).
    pub last_progress_at: Time,
    /// This rollout is a rollback (of a failed one).
    pub is_rollback: bool,
    /// Commands not yet consumed (promote, abort, pause, resume).
    #[serde(default)]
    pub pending_commands: Vec<Command>,
    /// Strategy-specific memory (blue-green promotion time, progress marks, ...).
    #[serde(default)]
    pub progress: ProgressMarks,
}

/// What the engine remembers to detect progress and time phases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProgressMarks {
    /// Highest count of available target instances seen.
    pub target_available: u32,
    /// Number of gates seen passing.
    pub gates_passed: u32,
    /// Blue-green: when active traffic switched to the target.
    pub promoted_at: Option<Time>,
    /// Paused by a person.
    pub paused: bool,
}

impl RolloutState {
    /// A new rollout to `target`, from `stable` (the last completed revision).
    pub fn start(target: Revision, stable: Option<Revision>, now: Time) -> RolloutState {
        RolloutState {
            target,
            stable,
            phase: Phase::Progressing,
            reason: String::new(),
            started_at: now,
            last_progress_at: now,
            is_rollback: false,
            pending_commands: Vec::new(),
            progress: ProgressMarks::default(),
        }
    }
}

/// Per-revision counts for status and display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionCounts {
    pub revision: Revision,
    pub desired: u32,
    pub live: u32,
    pub ready: u32,
    pub available: u32,
    pub terminating: u32,
}

/// What a person sees of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    /// Human-readable: what is happening or what is stuck.
    pub reason: String,
    pub revisions: Vec<RevisionCounts>,
    pub gates: Vec<GateResult>,
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What the runtime must do now, in order.
    pub actions: Vec<Action>,
    /// The state to persist and pass to the next step.
    pub state: RolloutState,
    pub status: Status,
    /// Things that happened, for the event stream and logs.
    pub events: Vec<String>,
    /// Call `step` again no later than this, even without an event.
    pub wake_at: Option<Time>,
}

/// Decide the next step of the rollout of `state.target` (whose spec is
/// `spec`) given what the runtime observed at `now`.
pub fn step(spec: &ServiceSpec, observed: &Observed, state: &RolloutState, now: Time) -> Decision {
    let _ = (spec, observed, now);
    Decision {
        actions: Vec::new(),
        state: state.clone(),
        status: Status {
            phase: state.phase,
            reason: "engine not built yet".into(),
            revisions: Vec::new(),
            gates: Vec::new(),
        },
        events: Vec::new(),
        wake_at: None,
    }
}
