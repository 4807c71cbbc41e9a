//! Scripted simulations: a service spec, the revision running before the
//! rollout, per-revision instance behaviour, a GPU inventory, gate results
//! and timed events (commands, a new revision, a replicas change). The
//! driver runs the engine on a [`SimWorld`] in virtual time the way the
//! controller would (step, apply, roll back on failure) and reports every
//! state change. Used by `floyd simulate`, tests and benchmarks.

use super::{Behaviour, SimWorld, counts};
use crate::engine::{self, Command, Phase, RolloutState};
use crate::manifest::{
    GpuInventory, InstanceTemplate, Revision, ServiceName, ServiceSpec, revision_of,
};
use crate::runtime::{GateResult, GateVerdict};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Changes to the spec's template that make another revision (the one
/// running before the rollout, or a later commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateChange {
    /// Names the revision in `scenario.revisions` and in the timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Merged over the spec's env.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Shortcut for `env: { VERSION: ... }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl TemplateChange {
    pub fn apply(&self, base: &InstanceTemplate) -> InstanceTemplate {
        let mut t = base.clone();
        if let Some(i) = &self.image {
            t.image = Some(i.clone());
        }
        if let Some(c) = &self.command {
            t.command = c.clone();
        }
        for (k, v) in &self.env {
            t.env.insert(k.clone(), v.clone());
        }
        if let Some(v) = &self.version {
            t.env.insert("VERSION".into(), v.clone());
        }
        t
    }
}

/// A scripted gate: pending (no data) until `pass` or `fail` seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GateScript {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<f64>,
    /// Why it fails (default "scripted failure").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptCommand {
    Promote,
    Abort,
    Pause,
    Resume,
}

/// Something that happens at `at` seconds: exactly one of `command`,
/// `newRevision`, `replicas`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScriptEvent {
    pub at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<ScriptCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_revision: Option<TemplateChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// `scenario:` of a simulation file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    /// Seed for start-up jitter (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Give up (Failed) after this many simulated seconds (default 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seconds: Option<f64>,
    /// Behaviour of every revision without its own entry.
    #[serde(default)]
    pub instances: Behaviour,
    /// Behaviour by revision: `start`, `target`, or a `newRevision` name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revisions: BTreeMap<String, Behaviour>,
    /// The GPU inventory (empty: GPUs are not simulated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuInventory>,
    /// One per configured gate, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateScript>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<ScriptEvent>,
}

/// A scenario that does not make sense, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario.events[{index}]: give exactly one of `command`, `newRevision`, `replicas`")]
    EventShape { index: usize },
    #[error("scenario.events[{index}].at: must be a number of seconds >= 0")]
    EventTime { index: usize },
    #[error(
        "scenario.revisions.{name}: no revision is called {name:?} (use `start`, `target` or a newRevision name)"
    )]
    UnknownRevision { name: String },
    #[error("scenario.gates: {got} scripted gate(s) but the service has {want} gate(s)")]
    GateCount { got: usize, want: usize },
}

/// Per revision: (replicas, ready, available).
pub type RevisionCounts = BTreeMap<Revision, (u32, u32, u32)>;

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tick {
    /// Seconds since the rollout started.
    pub t: f64,
    /// Per revision: (replicas, ready, available).
    pub revisions: BTreeMap<Revision, (u32, u32, u32)>,
    pub events: Vec<String>,
    pub phase: Phase,
    pub reason: String,
    /// Canary: the weight the runtime routes by (percent for the canary),
    /// `None` when traffic is not split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Canary: the step in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<engine::CanaryStatus>,
}

/// How a simulation ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub t: f64,
    /// `Complete` or `Failed` (a rollout that was rolled back failed).
    pub result: Phase,
    pub reason: String,
    /// Engine steps taken.
    pub steps: u64,
}

/// A running simulation of one service's rollout.
pub struct Simulation {
    pub world: SimWorld,
    pub name: ServiceName,
    pub spec: ServiceSpec,
    pub state: RolloutState,
    /// Virtual time of t = 0.
    pub origin: Time,
    /// Human names of revisions (`start`, `target`, newRevision names).
    pub labels: BTreeMap<Revision, String>,
    events: Vec<ScriptEvent>,
    next_event: usize,
    gates: Vec<GateScript>,
    behaviours: BTreeMap<String, Behaviour>,
    max: Time,
    failure: Option<String>,
}

fn ms(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1000.0).round() as u64
    } else {
        0
    }
}

impl Simulation {
    /// Sets up the world: `start` (if any) running `spec.replicas` available
    /// instances, and a rollout to the spec's template.
    pub fn new(
        name: ServiceName,
        spec: ServiceSpec,
        start: Option<&TemplateChange>,
        scenario: &Scenario,
    ) -> Result<Simulation, ScenarioError> {
        let start = start.map(|c| {
            (
                c.apply(&spec.template),
                c.name.clone().unwrap_or_else(|| "start".into()),
            )
        });
        Self::from_start(name, spec, start, scenario)
    }

    /// Like [`Simulation::new`] with the starting revision's whole template
    /// and its label (a config repo at an earlier commit, for instance).
    pub fn from_start(
        name: ServiceName,
        spec: ServiceSpec,
        start: Option<(InstanceTemplate, String)>,
        scenario: &Scenario,
    ) -> Result<Simulation, ScenarioError> {
        for (index, e) in scenario.events.iter().enumerate() {
            let n = usize::from(e.command.is_some())
                + usize::from(e.new_revision.is_some())
                + usize::from(e.replicas.is_some());
            if n != 1 {
                return Err(ScenarioError::EventShape { index });
            }
            if !(e.at.is_finite() && e.at >= 0.0) {
                return Err(ScenarioError::EventTime { index });
            }
        }
        if !scenario.gates.is_empty() && scenario.gates.len() != spec.gates.len() {
            return Err(ScenarioError::GateCount {
                got: scenario.gates.len(),
                want: spec.gates.len(),
            });
        }
        let mut known: Vec<String> = vec!["start".into(), "target".into()];
        known.extend(
            scenario
                .events
                .iter()
                .filter_map(|e| e.new_revision.as_ref().and_then(|n| n.name.clone())),
        );
        if let Some(bad) = scenario.revisions.keys().find(|k| !known.contains(k)) {
            return Err(ScenarioError::UnknownRevision { name: bad.clone() });
        }
        let mut world = SimWorld::new(&scenario.gpus, scenario.seed);
        world.set_default_behaviour(scenario.instances.clone());
        let target = revision_of(&spec.template);
        let mut labels = BTreeMap::new();
        let mut stable = None;
        if let Some((t, label)) = start {
            let rev = revision_of(&t);
            labels.insert(rev.clone(), label);
            if let Some(b) = scenario.revisions.get("start") {
                world.set_behaviour(&name, &rev, b.clone());
            }
            world.seed_revision(&name, &rev, &t, spec.replicas);
            stable = Some(rev);
        }
        labels
            .entry(target.clone())
            .or_insert_with(|| "target".into());
        if let Some(b) = scenario.revisions.get("target") {
            world.set_behaviour(&name, &target, b.clone());
        }
        // Start instances are available when the rollout starts.
        let origin = Time::from_secs(u64::from(spec.min_ready_seconds));
        world.advance_to(origin);
        let mut events = scenario.events.clone();
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        // Name the later revisions up front, so every line of the timeline can.
        let mut template = spec.template.clone();
        for (i, e) in events.iter().enumerate() {
            if let Some(change) = &e.new_revision {
                template = change.apply(&template);
                let label = change
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("rev{}", i + 1));
                labels.entry(revision_of(&template)).or_insert(label);
            }
        }
        let state = RolloutState::start(target, stable, origin);
        let max = origin.plus(std::time::Duration::from_millis(ms(scenario
            .max_seconds
            .unwrap_or(86_400.0))));
        Ok(Simulation {
            world,
            name,
            spec,
            state,
            origin,
            labels,
            events,
            next_event: 0,
            gates: scenario.gates.clone(),
            behaviours: scenario.revisions.clone(),
            max,
            failure: None,
        })
    }

    fn rel(&self, t: Time) -> f64 {
        t.since(self.origin).as_secs_f64()
    }

    fn abs(&self, s: f64) -> Time {
        self.origin.plus(std::time::Duration::from_millis(ms(s)))
    }

    /// The label of a revision, or the revision itself.
    pub fn label(&self, r: &Revision) -> String {
        self.labels.get(r).cloned().unwrap_or_else(|| r.to_string())
    }

    fn gate_results(&self, now: Time) -> Vec<GateResult> {
        let t = self.rel(now);
        self.gates
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let verdict = if g.fail.is_some_and(|f| f <= t) {
                    GateVerdict::Fail(
                        g.reason
                            .clone()
                            .unwrap_or_else(|| "scripted failure".into()),
                    )
                } else if g.pass.is_some_and(|p| p <= t) {
                    GateVerdict::Pass
                } else {
                    GateVerdict::Pending("no data yet".into())
                };
                GateResult {
                    name: crate::engine::gates::gate_name(&self.spec.gates, i),
                    verdict,
                    at: now,
                }
            })
            .collect()
    }

    fn next_gate_change(&self, now: Time) -> Option<Time> {
        self.gates
            .iter()
            .flat_map(|g| [g.pass, g.fail])
            .flatten()
            .map(|s| self.abs(s))
            .filter(|&t| t > now)
            .min()
    }

    /// Applies scripted events due at `now`; returns what happened.
    fn script(&mut self, now: Time) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = self.events.get(self.next_event).cloned() {
            if self.abs(e.at) > now {
                break;
            }
            self.next_event += 1;
            if let Some(c) = e.command {
                let cmd = match c {
                    ScriptCommand::Promote => Command::Promote,
                    ScriptCommand::Abort => Command::Abort,
                    ScriptCommand::Pause => Command::Pause,
                    ScriptCommand::Resume => Command::Resume,
                };
                self.state.pending_commands.push(cmd);
                out.push(format!("command: {}", format!("{c:?}").to_lowercase()));
            }
            if let Some(n) = e.replicas {
                out.push(format!("replicas {} → {n}", self.spec.replicas));
                self.spec.replicas = n;
            }
            if let Some(change) = &e.new_revision {
                self.spec.template = change.apply(&self.spec.template);
                let rev = revision_of(&self.spec.template);
                let label = change
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("rev{}", self.next_event));
                if let Some(b) = self.behaviours.get(&label) {
                    self.world.set_behaviour(&self.name, &rev, b.clone());
                }
                self.labels.entry(rev.clone()).or_insert(label.clone());
                out.push(format!(
                    "new revision {label} ({rev}) supersedes {}",
                    self.label(&self.state.target)
                ));
                self.state = engine::next_rollout(Some(&self.state), rev, now);
            }
        }
        out
    }

    /// Runs to the end. `on_tick` sees every state change and the world.
    pub fn run(&mut self, mut on_tick: impl FnMut(&Tick, &SimWorld)) -> Outcome {
        let mut steps = 0u64;
        let mut last: Option<(RevisionCounts, Phase, Option<u32>)> = None;
        let mut same_instant = 0u32;
        loop {
            let now = self.world.now();
            let mut events = self.script(now);
            let mut observed = self.world.observe(&self.name, Some(&self.spec));
            observed.gates = self.gate_results(now);
            let d = engine::step(&self.spec, &observed, &self.state, now);
            steps += 1;
            let applied = self.world.apply(&self.name, &d.actions);
            events.extend(d.events.iter().cloned());
            if let Err(e) = applied {
                events.push(format!("runtime error: {e}"));
            }
            self.state = d.state;
            let mut end: Option<(Phase, String)> = None;
            let mut restep = !d.actions.is_empty();
            let shown_phase = self.state.phase;
            let shown_reason = self.state.reason.clone();
            let shown_canary = d.status.canary.clone();
            if self.state.phase == Phase::Failed {
                let spec = &self.spec;
                if engine::should_roll_back(spec, &self.state) {
                    match engine::rollback(&self.state, &observed, now) {
                        Ok(next) => {
                            events.push(format!("rolling back to {}", next.target));
                            self.failure = Some(self.state.reason.clone());
                            self.state = next;
                            restep = true;
                        }
                        Err(e) => {
                            end = Some((Phase::Failed, format!("{}; {e}", self.state.reason)))
                        }
                    }
                } else {
                    let reason = match &self.failure {
                        Some(f) if self.state.is_rollback => {
                            format!("{f}; the rollback failed too: {}", self.state.reason)
                        }
                        _ => self.state.reason.clone(),
                    };
                    end = Some((Phase::Failed, reason));
                }
            } else if self.state.phase == Phase::RolledBack {
                let f = self.failure.clone().unwrap_or_default();
                end = Some((
                    Phase::Failed,
                    format!(
                        "{f}; rolled back to {} ({})",
                        self.label(&self.state.target),
                        self.state.target
                    ),
                ));
            } else if self.state.phase == Phase::Complete && self.next_event >= self.events.len() {
                end = Some((Phase::Complete, self.state.reason.clone()));
            }
            let observed_after = self.world.observe(&self.name, None);
            let c = counts(&observed_after, self.spec.min_ready_seconds, now);
            let weight = self.world.canary_split(&self.name).map(|c| c.weight);
            let changed = last
                .as_ref()
                .is_none_or(|(lc, lp, lw)| *lc != c || *lp != self.state.phase || *lw != weight);
            if changed || !events.is_empty() {
                let tick = Tick {
                    t: self.rel(now),
                    revisions: c.clone(),
                    events,
                    phase: shown_phase,
                    reason: shown_reason,
                    weight,
                    canary: shown_canary,
                };
                on_tick(&tick, &self.world);
                last = Some((c, shown_phase, weight));
            }
            if let Some((result, reason)) = end {
                return Outcome {
                    t: self.rel(now),
                    result,
                    reason,
                    steps,
                };
            }
            // Actions change what the next step sees: look again at once,
            // a few times at most (the engine reaches a fixpoint quickly).
            if restep && same_instant < 8 {
                same_instant += 1;
                continue;
            }
            same_instant = 0;
            let next_script = self.events.get(self.next_event).map(|e| self.abs(e.at));
            let next = [
                self.world.next_event(),
                d.wake_at,
                next_script,
                self.next_gate_change(now),
            ]
            .into_iter()
            .flatten()
            .filter(|&t| t > now)
            .min();
            match next {
                Some(t) if t <= self.max => self.world.advance_to(t),
                Some(_) => {
                    return Outcome {
                        t: self.rel(self.max),
                        result: Phase::Failed,
                        reason: format!(
                            "simulation stopped after {} s (scenario.maxSeconds): {}",
                            self.rel(self.max),
                            self.state.reason
                        ),
                        steps,
                    };
                }
                None => {
                    return Outcome {
                        t: self.rel(now),
                        result: Phase::Failed,
                        reason: format!(
                            "simulation stalled: nothing will change any more ({})",
                            self.state.reason
                        ),
                        steps,
                    };
                }
            }
        }
    }
}
