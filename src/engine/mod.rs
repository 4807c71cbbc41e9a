//! The rollout engine: a pure, deterministic state machine deciding each step
//! of a rollout. `step(spec, observed, state, now) -> Decision`.
//!
//! Owns: RollingUpdate (Kubernetes Deployment arithmetic, [`rolling`]),
//! Recreate, BlueGreen, Canary (steps, weights), health gates ([`gates`]), the progress deadline,
//! GPU-aware surge ([`gpu`]), supersede and pause, the rollback plan.
//! Must not: read a clock, do I/O, use randomness. Time is an argument.
//!
//! # Contract for the controller
//!
//! Per service the controller keeps one [`RolloutState`] (persisted) and, on
//! every event (new commit, instance change, command, `wake_at` reached):
//!
//! 1. **Start / supersede.** When Git gives a revision `rev` for the service,
//!    `state = engine::next_rollout(previous.as_ref(), rev, now)`. With no
//!    previous state this starts a rollout with no stable revision (an
//!    existing, fully available `rev` completes at the first step). When a
//!    rollout is in flight (Progressing, Paused, AwaitingPromotion) the same
//!    state continues with `target = rev`: the half-rolled revision becomes
//!    an old one and drains like any other (rollover); `stable` is kept. A
//!    finished rollout (Complete, RolledBack, Failed, Degraded) is followed
//!    by a fresh one whose `stable` is the last revision that completed. The
//!    same `rev` again returns the previous state unchanged, and so does the
//!    revision a rollback (in flight or RolledBack) rolled back from: a bad
//!    revision still in Git is not rolled out again until Git changes.
//! 2. **Commands.** Push `Command`s onto `state.pending_commands`; the next
//!    `step` consumes them (Pause/Resume at any phase, Promote for
//!    blue-green and a canary's pause, Abort fails the rollout with
//!    `progress.aborted` set; a canary's weight goes to 0 at once).
//! 3. **Step.** `d = engine::step(&spec, &observed, &state, now)` with the
//!    *current* spec (from Git) and `observed.gates` filled in spec order for
//!    `state.target`. Apply `d.actions` in order, persist `d.state`, publish
//!    `d.status` / `d.events`, and call `step` again at `d.wake_at` at the
//!    latest. With nothing changed a settled rollout returns no actions; it
//!    corrects drift (desired counts, traffic) when something did change.
//! 4. **Rollback.** When `d.state.phase == Phase::Failed` and
//!    [`should_roll_back`]`(&spec, &d.state)` is true, call
//!    [`rollback`]`(&d.state, &observed, now)`: it returns a fresh
//!    `RolloutState` with `target = stable`, `is_rollback = true`. Keep
//!    stepping it with the same current spec: the engine takes the rollback
//!    target's template from `observed.revisions[..].template` (the runtime
//!    keeps old revisions, scaled to 0, up to `revisionHistoryLimit`, and the
//!    engine never prunes the stable revision); every other setting (replicas,
//!    strategy, limits, deadline) is the current spec's. Rolling: the failed
//!    revision is an old one, instances of the stable revision still up count
//!    at once. Blue-green: the failing step already switched active traffic
//!    back; the rollback promotes at once and skips the scale-down delay.
//!    Configured gates are skipped for a rollback (the target passed them when
//!    it completed). The rollback ends `Phase::RolledBack` (success: record
//!    the failed rollout as rolled back, revert in Git) or `Phase::Failed`
//!    with `is_rollback` set (mark the service Degraded; `should_roll_back`
//!    is false for it, so there is no loop).
//! 5. **Revert.** Independent of the engine: `spec.on_failure.revert`.
pub mod fleet;
pub mod gates;
pub mod gpu;
pub mod instances;
pub mod rolling;
mod rollout;

pub use rollout::{canary_instances, canary_status};

use crate::manifest::{Revision, ServiceSpec};
use crate::model::{Action, GateResult, Observed};
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
    /// Blue-green: a person asked to promote (`floyd promote`).
    #[serde(default)]
    pub promote_requested: bool,
    /// Blue-green: when the old revision was scaled to 0 after promotion.
    #[serde(default)]
    pub scaled_down_at: Option<Time>,
    /// The rollout was aborted by a person (`floyd abort`): roll back even
    /// when `onFailure.rollback` is false.
    #[serde(default)]
    pub aborted: bool,
    /// `replicas` at the previous step, to detect a scaling event mid-rollout
    /// (Kubernetes keeps this in the `desired-replicas` annotation).
    #[serde(default)]
    pub last_replicas: Option<u32>,
    /// GPU in-place replacement is in use (recorded once as an event).
    #[serde(default)]
    pub gpu_in_place: bool,
    /// A rollback: the failed revision it rolls back from.
    #[serde(default)]
    pub rolled_back_from: Option<Revision>,
    /// The rollout failed because its desired state can never fit as things
    /// are (GPU arithmetic), before anything of it was changed: the
    /// controller restores the desired state it replaced.
    #[serde(default)]
    pub infeasible: bool,
    /// Canary: steps done (the index of the step in progress).
    #[serde(default)]
    pub canary_step: u32,
    /// Canary: when the step in progress began.
    #[serde(default)]
    pub step_started_at: Option<Time>,
    /// Canary: the weight decided (percent of requests for the canary).
    #[serde(default)]
    pub canary_weight: u32,
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
    /// Canary rollouts: the step and weight (absent for other strategies,
    /// rollbacks and finished canaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// Where a canary rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// Steps done; equal to `steps` while the canary is being promoted.
    pub step: u32,
    pub steps: u32,
    /// The step in progress: `setWeight 25`, `pause 60s`, `pause (until
    /// promoted)`, `analysis`, or `promoting` after the last step.
    pub current: String,
    /// Percent of the requests going to the canary.
    pub weight: u32,
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
/// `spec`) given what the runtime observed at `now`. Pure: the same
/// arguments give the same decision.
pub fn step(spec: &ServiceSpec, observed: &Observed, state: &RolloutState, now: Time) -> Decision {
    let mut cx = rollout::Cx::new(spec, observed, state, now);
    cx.commands();
    if cx.phase().is_terminal() {
        cx.settled();
    } else if cx.is_paused() {
        cx.paused();
    } else {
        cx.progressing();
    }
    cx.finish()
}

/// Whether the controller should start a rollback for this (failed) state:
/// the rollout failed, it is not itself a rollback, a revision completed
/// before, and the spec asks for it (`onFailure.rollback`) or a person aborted.
pub fn should_roll_back(spec: &ServiceSpec, state: &RolloutState) -> bool {
    state.phase == Phase::Failed
        && !state.is_rollback
        && state.stable.as_ref().is_some_and(|s| *s != state.target)
        && (spec.on_failure.rollback || state.progress.aborted)
}

/// Why a rollback cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("rollout of {target} is {phase}, not Failed: nothing to roll back")]
    NotFailed {
        target: Revision,
        phase: &'static str,
    },
    #[error(
        "no revision completed before {target}: nothing to roll back to (fix the commit or revert it in Git)"
    )]
    NoStableRevision { target: Revision },
    #[error(
        "the last good revision {stable} is no longer kept by the runtime (revision history): roll forward with a fix in Git"
    )]
    StableGone { stable: Revision },
}

/// The rollback rollout for a failed `state`: target = the last revision
/// that completed, as its own rollout (`is_rollback`), obeying the same
/// limits. See the module doc for the contract.
pub fn rollback(
    state: &RolloutState,
    observed: &Observed,
    now: Time,
) -> Result<RolloutState, RollbackError> {
    if state.phase != Phase::Failed {
        return Err(RollbackError::NotFailed {
            target: state.target.clone(),
            phase: state.phase.as_str(),
        });
    }
    let stable = match &state.stable {
        Some(s) if *s != state.target => s.clone(),
        _ => {
            return Err(RollbackError::NoStableRevision {
                target: state.target.clone(),
            });
        }
    };
    if observed.revision(&stable).is_none() {
        return Err(RollbackError::StableGone { stable });
    }
    let mut next = RolloutState::start(stable.clone(), Some(stable), now);
    next.is_rollback = true;
    next.reason = format!("rolling back from {}: {}", state.target, state.reason);
    next.progress.last_replicas = state.progress.last_replicas;
    next.progress.rolled_back_from = Some(state.target.clone());
    Ok(next)
}

/// The rollout state for Git's revision `target`, given the previous state
/// (supersede, or a fresh rollout after a finished one). See the module doc.
pub fn next_rollout(previous: Option<&RolloutState>, target: Revision, now: Time) -> RolloutState {
    let Some(prev) = previous else {
        return RolloutState::start(target, None, now);
    };
    if prev.target == target {
        return prev.clone();
    }
    if prev.is_rollback && prev.progress.rolled_back_from.as_ref() == Some(&target) {
        // Git still names the revision that was just rolled back: keep the
        // rollback (a revert or a fix in Git moves on).
        return prev.clone();
    }
    match prev.phase {
        Phase::Progressing | Phase::Paused | Phase::AwaitingPromotion => {
            // Supersede: the half-rolled revision drains as an old one.
            let mut s = prev.clone();
            s.target = target;
            s.phase = if prev.progress.paused {
                Phase::Paused
            } else {
                Phase::Progressing
            };
            s.reason = format!("superseded {}", prev.target);
            s.started_at = now;
            s.last_progress_at = now;
            s.is_rollback = false;
            s.progress = ProgressMarks {
                paused: prev.progress.paused,
                last_replicas: prev.progress.last_replicas,
                ..ProgressMarks::default()
            };
            // Commands belong to the rollout they were given for: a promote
            // meant for the superseded revision must not promote this one.
            // (A pause is the service's, kept above.)
            s.pending_commands.clear();
            s
        }
        Phase::Complete | Phase::RolledBack => {
            let stable = prev.stable.clone().or_else(|| Some(prev.target.clone()));
            let mut s = RolloutState::start(target, stable, now);
            s.progress.last_replicas = prev.progress.last_replicas;
            s
        }
        Phase::Failed | Phase::Degraded => {
            let mut s = RolloutState::start(target, prev.stable.clone(), now);
            s.progress.last_replicas = prev.progress.last_replicas;
            s
        }
    }
}

/// The phase and reason to show for a service whose runtime reports
/// `problems`: a rollout that is done (Complete, RolledBack) is Degraded with
/// the problems as its reason, never Complete; one in progress keeps its
/// phase and gets the problems appended; Failed and Degraded stay as they are.
pub fn with_runtime_problems(
    phase: crate::engine::Phase,
    reason: String,
    observed: &crate::model::Observed,
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
