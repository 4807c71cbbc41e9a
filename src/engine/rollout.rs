//! One `step`: commands, then the strategy (RollingUpdate, Recreate,
//! BlueGreen), gates, progress and the deadline, then status and wake-up.
//! Everything is computed from the arguments; nothing is read from outside.

use super::fleet::{Fleet, Rs};
use super::gates::{self, GateSummary};
use super::{Command, Decision, Phase, RevisionCounts, RolloutState, Status, gpu, rolling};
use crate::manifest::{InstanceTemplate, Revision, ServiceSpec, Strategy};
use crate::model::{Action, InstancePhase, Observed};
use crate::time::Time;
use std::collections::BTreeMap;

mod canary;
pub use canary::{canary_instances, canary_status};

/// Most Kubernetes-style syncs run within one step; each moves at least one
/// instance, so this only guards against a bug looping forever.
const MAX_SYNCS: usize = 64;

/// How often a pending gate is looked at again when nothing else happens.
const GATE_RECHECK_MS: u64 = 5_000;

pub(super) struct Cx<'a> {
    spec: &'a ServiceSpec,
    observed: &'a Observed,
    now: Time,
    state: RolloutState,
    fleet: Fleet,
    /// `CreateRevision` for the target, when the runtime does not have it.
    create: Option<Action>,
    traffic: Option<Action>,
    deletes: Vec<Action>,
    events: Vec<String>,
    wake: Option<Time>,
    gates: GateSummary,
    /// Counts as observed, in the runtime's order (for the status).
    observed_counts: Vec<RevisionCounts>,
    /// When the next ready instance becomes available (minReadySeconds).
    next_available: Option<Time>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(
        spec: &'a ServiceSpec,
        observed: &'a Observed,
        state: &RolloutState,
        now: Time,
    ) -> Cx<'a> {
        let mut next_available = None;
        let mut rs: Vec<Rs> = observed
            .revisions
            .iter()
            .map(|o| {
                Rs::from_observed_with_wake(o, spec.min_ready_seconds, now, &mut next_available)
            })
            .collect();
        let observed_counts: Vec<RevisionCounts> = rs
            .iter()
            .map(|r| RevisionCounts {
                revision: r.revision.clone(),
                desired: r.desired,
                live: r.live,
                ready: r.ready,
                available: r.available,
                terminating: r.terminating,
            })
            .collect();
        // Oldest first; a stable sort keeps the runtime's order for equal times.
        rs.sort_by_key(|r| r.created_at);
        let mut new = rs.iter().position(|r| r.revision == state.target);
        if new.is_none() {
            rs.push(Rs {
                revision: state.target.clone(),
                created_at: now,
                desired: 0,
                live: 0,
                ready: 0,
                available: 0,
                terminating: 0,
                observed_desired: 0,
                exists: false,
            });
            new = Some(rs.len() - 1);
        }
        Cx {
            spec,
            observed,
            now,
            state: state.clone(),
            fleet: Fleet::from_rs(rs, new),
            create: None,
            traffic: None,
            deletes: Vec::new(),
            events: Vec::new(),
            wake: None,
            gates: GateSummary::default(),
            observed_counts,
            next_available,
        }
    }

    fn n(&self) -> usize {
        // `new` is always set by `Cx::new`.
        self.fleet.new.unwrap_or(0)
    }
    fn new_rs(&self) -> &Rs {
        &self.fleet.rs[self.n()]
    }
    fn replicas(&self) -> u32 {
        self.spec.replicas
    }
    fn target(&self) -> &Revision {
        &self.state.target
    }
    fn is_blue_green(&self) -> bool {
        matches!(self.spec.strategy, Strategy::BlueGreen { .. })
    }

    fn event(&mut self, e: impl Into<String>) {
        self.events.push(e.into());
    }
    fn wake_at(&mut self, t: Time) {
        if t > self.now {
            self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
        }
    }
    fn progressed(&mut self) {
        self.state.last_progress_at = self.now;
    }

    // ---- commands -------------------------------------------------------

    pub(super) fn commands(&mut self) {
        let cmds = std::mem::take(&mut self.state.pending_commands);
        for c in cmds {
            let terminal = self.state.phase.is_terminal();
            match c {
                Command::Pause if terminal => self.event(format!(
                    "pause ignored: the rollout is {}",
                    self.state.phase.as_str()
                )),
                Command::Pause => {
                    if !self.state.progress.paused {
                        self.state.progress.paused = true;
                        self.event("paused by a person");
                    }
                }
                Command::Resume => {
                    if self.state.progress.paused {
                        self.state.progress.paused = false;
                        if self.state.phase == Phase::Paused {
                            self.state.phase = Phase::Progressing;
                        }
                        // The deadline does not run while paused.
                        self.progressed();
                        self.event("resumed by a person");
                    }
                }
                Command::Promote if terminal || !(self.is_blue_green() || self.is_canary()) => self
                    .event(format!(
                        "promote ignored: nothing waits for promotion ({} rollout, {})",
                        self.spec.strategy_name(),
                        self.state.phase.as_str()
                    )),
                Command::Promote => {
                    self.state.progress.promote_requested = true;
                    self.event("promotion requested by a person");
                }
                Command::Abort if terminal => self.event(format!(
                    "abort ignored: the rollout is {}",
                    self.state.phase.as_str()
                )),
                Command::Abort => {
                    self.state.progress.aborted = true;
                    self.state.progress.paused = false;
                    self.fail("aborted by a person (floyd abort)".to_string());
                }
            }
        }
    }

    // ---- terminal phases --------------------------------------------------

    /// Complete / RolledBack: keep the world as decided (drift correction),
    /// prune history. Failed / Degraded: hold still.
    pub(super) fn settled(&mut self) {
        if !matches!(self.state.phase, Phase::Complete | Phase::RolledBack) {
            return;
        }
        if !self.ensure_target_exists() {
            return;
        }
        let r = self.replicas();
        let n = self.n();
        if self.fleet.rs[n].desired != r {
            self.fleet.scale(n, r);
            self.event(format!("scaled {} to {r} replicas", self.target()));
        }
        let olds: Vec<usize> = self.fleet.old().collect();
        for i in olds {
            if self.fleet.rs[i].desired > 0 {
                self.fleet.scale(i, 0);
            }
        }
        self.ensure_settled_traffic();
        self.prune_history();
        let rs = self.new_rs();
        self.state.reason = if rs.available < r {
            format!("{} of {r} instances available", rs.available)
        } else {
            format!("{r} of {r} instances of {} available", self.target())
        };
    }

    pub(super) fn paused(&mut self) {
        self.state.phase = Phase::Paused;
        self.state.reason = "paused by a person; `floyd resume` continues".into();
    }

    // ---- progressing ------------------------------------------------------

    pub(super) fn progressing(&mut self) {
        if self.state.phase != Phase::AwaitingPromotion {
            self.state.phase = Phase::Progressing;
        }
        if !self.ensure_target_exists() {
            return;
        }
        if let Err(reason) = self.gpu_preflight() {
            self.state.progress.infeasible = true;
            self.fail(reason);
            return;
        }
        let done = match &self.spec.strategy {
            Strategy::RollingUpdate { rolling_update } => {
                let p = *rolling_update;
                self.rolling(p.max_surge, p.max_unavailable)
            }
            Strategy::Recreate => self.recreate(),
            Strategy::BlueGreen { blue_green } => {
                let (auto, delay) = (blue_green.auto_promote, blue_green.scale_down_delay_seconds);
                self.blue_green(auto, delay)
            }
            Strategy::Canary { .. } => self.canary(),
        };
        if self.state.phase.is_terminal() {
            return;
        }
        // Progress: more target instances available than ever before.
        let avail = self.new_rs().available;
        if avail > self.state.progress.target_available {
            self.state.progress.target_available = avail;
            self.progressed();
        }
        if done {
            self.complete();
            return;
        }
        if self.state.phase == Phase::AwaitingPromotion {
            // Waiting for a person is not lack of progress.
            return;
        }
        let deadline = u64::from(self.spec.progress_deadline_seconds);
        let due = self.state.last_progress_at.add_secs(deadline);
        if self.now >= due {
            let reason = self.stuck_reason(deadline);
            self.fail(reason);
        } else {
            self.wake_at(due);
        }
    }

    /// The target revision exists in the runtime, or is created now. False
    /// when it cannot be (the rollout has failed).
    fn ensure_target_exists(&mut self) -> bool {
        let n = self.n();
        if self.fleet.rs[n].exists || self.create.is_some() {
            return true;
        }
        match self.target_template() {
            Some(t) => {
                self.create = Some(Action::CreateRevision {
                    revision: self.target().clone(),
                    template: t,
                });
                self.event(format!("created revision {}", self.target()));
                true
            }
            None => {
                let reason = format!(
                    "revision {} is not known to the runtime and the spec's template is revision {}: nothing to create it from",
                    self.target(),
                    crate::manifest::revision_of(&self.spec.template)
                );
                self.fail(reason);
                false
            }
        }
    }

    /// The target's template: the runtime's copy (a rollback target), else the spec's.
    fn target_template(&self) -> Option<InstanceTemplate> {
        if let Some(o) = self.observed.revision(self.target()) {
            return Some(o.template.clone());
        }
        (crate::manifest::revision_of(&self.spec.template) == *self.target())
            .then(|| self.spec.template.clone())
    }

    /// GPU units one target instance needs.
    fn gpu_per_instance(&self) -> Option<u32> {
        let from_observed = self
            .observed
            .revision(self.target())
            .and_then(|o| o.template.resources.gpu.as_ref().map(|g| g.count));
        from_observed.or(self.spec.gpu().map(|g| g.count))
    }

    fn gpu_preflight(&self) -> Result<(), String> {
        match (self.gpu_per_instance(), &self.observed.gpu) {
            (Some(per), Some(cap)) => match self.canary_gpu_need() {
                Some((peak, weight)) => {
                    gpu::preflight_canary(cap, per, self.replicas(), peak, weight)
                }
                None => gpu::preflight(cap, per, self.replicas(), self.is_blue_green()),
            },
            _ => Ok(()),
        }
    }

    fn gpu_limit(&self) -> Option<gpu::GpuLimit> {
        match (self.gpu_per_instance(), &self.observed.gpu) {
            (Some(per), Some(cap)) => Some(gpu::limit(cap, per, self.fleet.total_terminating())),
            _ => None,
        }
    }

    fn evaluate_gates(&mut self, since: Time) {
        self.gates = if self.state.is_rollback {
            // The rollback target already passed its gates when it completed.
            GateSummary::default()
        } else {
            gates::evaluate(&self.spec.gates, &self.observed.gates, since)
        };
        if self.gates.passed > self.state.progress.gates_passed {
            self.state.progress.gates_passed = self.gates.passed;
            self.progressed();
        }
        if !self.gates.pending.is_empty() {
            self.wake_at(
                self.now
                    .plus(std::time::Duration::from_millis(GATE_RECHECK_MS)),
            );
        }
    }

    // ---- RollingUpdate ------------------------------------------------------

    fn rolling(
        &mut self,
        max_surge: crate::manifest::IntOrPercent,
        max_unavailable: crate::manifest::IntOrPercent,
    ) -> bool {
        let r = self.replicas();
        let (surge, mut unavailable) = rolling::fenceposts(max_surge, max_unavailable, r);
        let mut max_total = r.saturating_add(surge);
        if let Some(limit) = self.gpu_limit() {
            // Terminating instances hold GPUs for a while: that only delays a
            // surge. No headroom even without them means it can never happen.
            max_total = max_total.min(limit.max_total);
            // A target already at full size (a rollback to untouched
            // instances) needs no surge: only old instances go.
            let to_create = r.saturating_sub(self.new_rs().live);
            if surge > 0 && limit.instances <= r && unavailable == 0 && to_create > 0 {
                let allow = self.spec.gpu().is_none_or(|g| g.allow_in_place);
                let kind = self
                    .observed
                    .gpu
                    .as_ref()
                    .map(|c| c.kind.clone())
                    .unwrap_or_default();
                if !allow {
                    self.state.progress.infeasible = self.state.progress.target_available == 0;
                    self.fail(format!(
                        "no free GPU ({kind}) for a surge instance, maxUnavailable is 0 and gpu.allowInPlace is false: free a GPU or allow in-place replacement"
                    ));
                    return false;
                }
                unavailable = 1;
                if !self.state.progress.gpu_in_place {
                    self.state.progress.gpu_in_place = true;
                    self.event(format!(
                        "no free GPU ({kind}) for a surge instance: replacing in place, one instance at a time (gpu.allowInPlace)"
                    ));
                }
            }
        }
        let unavailable = rolling::cap_unavailable(unavailable, r);
        self.ensure_traffic(None, None);
        if let Some(prev) = self.state.progress.last_replicas
            && prev != r
        {
            let prev_max = prev.saturating_add(rolling::scaled_value(max_surge, prev, true));
            let eff_surge = max_total.saturating_sub(r);
            if rolling::proportional_scale(&mut self.fleet, r, eff_surge, prev_max) {
                self.event(format!(
                    "replicas changed {prev} → {r}: scaled revisions proportionally"
                ));
            }
        }
        for _ in 0..MAX_SYNCS {
            if rolling::reconcile_new(&mut self.fleet, r, max_total) {
                continue;
            }
            if !rolling::reconcile_old(&mut self.fleet, r, unavailable) {
                break;
            }
        }
        self.evaluate_gates(self.state.started_at);
        if let Some(f) = self.gates.failed.clone() {
            self.fail(f);
            return false;
        }
        let rs = self.new_rs();
        let (avail, live, desired) = (rs.available, rs.live, rs.desired);
        let old_live = self.fleet.old_live();
        self.state.reason = format!(
            "rolling to {}: {avail} of {r} available, {old_live} old instance(s) left",
            self.target()
        );
        let done = desired == r && live == r && avail >= r && old_live == 0;
        if done && !self.gates.all_passed() {
            self.state.reason = format!(
                "{avail} of {r} available; waiting for gates: {}",
                self.gates.pending.join("; ")
            );
            return false;
        }
        done
    }

    // ---- Recreate -----------------------------------------------------------

    fn recreate(&mut self) -> bool {
        let r = self.replicas();
        self.ensure_traffic(None, None);
        let olds: Vec<usize> = self.fleet.old().collect();
        for i in olds {
            if self.fleet.rs[i].desired > 0 {
                self.fleet.scale(i, 0);
            }
        }
        let left = self.fleet.old_instances();
        if left > 0 {
            self.state.reason = format!(
                "recreate: waiting for {left} old instance(s) to stop (they hold ports and GPUs)"
            );
            return false;
        }
        let n = self.n();
        if self.fleet.rs[n].desired != r {
            self.fleet.scale(n, r);
        }
        self.evaluate_gates(self.state.started_at);
        if let Some(f) = self.gates.failed.clone() {
            self.fail(f);
            return false;
        }
        let rs = self.new_rs();
        let (avail, live) = (rs.available, rs.live);
        self.state.reason = format!(
            "recreate: {avail} of {r} instances of {} available",
            self.target()
        );
        let done = live == r && avail >= r;
        if done && !self.gates.all_passed() {
            self.state.reason = format!(
                "{avail} of {r} available; waiting for gates: {}",
                self.gates.pending.join("; ")
            );
            return false;
        }
        done
    }

    // ---- BlueGreen ------------------------------------------------------------

    /// The revision serving active traffic before promotion (blue).
    fn blue(&self) -> Option<usize> {
        let target = self.target();
        let by_rev = |rev: &Revision| {
            self.fleet
                .rs
                .iter()
                .position(|r| &r.revision == rev && &r.revision != target && r.live > 0)
        };
        if let Some(i) = self.observed.active.as_ref().and_then(by_rev) {
            return Some(i);
        }
        if let Some(i) = self.state.stable.as_ref().and_then(by_rev) {
            return Some(i);
        }
        self.fleet
            .old()
            .filter(|&i| self.fleet.rs[i].live > 0)
            .max_by_key(|&i| (self.fleet.rs[i].live, self.fleet.rs[i].created_at))
    }

    fn blue_green(&mut self, auto_promote: bool, delay_s: u32) -> bool {
        let r = self.replicas();
        let n = self.n();
        let blue = self.blue();
        let target = self.target().clone();
        let Some(promoted_at) = self.state.progress.promoted_at else {
            if self.fleet.rs[n].desired != r {
                self.fleet.scale(n, r);
            }
            let blue_rev = blue.map(|b| self.fleet.rs[b].revision.clone());
            if self.observed.active.as_ref() == Some(&target) {
                // Already serving (a rollback to the revision traffic was
                // switched back to): keep it active while it fills up.
                self.ensure_traffic(Some(target.clone()), None);
            } else {
                self.ensure_traffic(blue_rev.clone(), Some(target.clone()));
            }
            self.evaluate_gates(self.state.started_at);
            let rs = self.new_rs();
            let (avail, live) = (rs.available, rs.live);
            if avail < r || live != r {
                self.state.reason = format!(
                    "blue-green: bringing up {target} beside the active revision: {avail} of {r} available (preview traffic only)"
                );
                return false;
            }
            if let Some(f) = self.gates.failed.clone() {
                self.fail(format!("pre-promotion {f}"));
                return false;
            }
            if !self.gates.all_passed() {
                self.state.reason = format!(
                    "blue-green: {target} fully available; pre-promotion gates pending: {}",
                    self.gates.pending.join("; ")
                );
                return false;
            }
            let manual = !auto_promote
                && !self.state.progress.promote_requested
                && !self.state.is_rollback
                && blue_rev.is_some();
            if manual {
                if self.state.phase != Phase::AwaitingPromotion {
                    self.state.phase = Phase::AwaitingPromotion;
                    self.progressed();
                    self.event(format!(
                        "{target} is ready and gated: waiting for `floyd promote`"
                    ));
                }
                self.state.reason = format!(
                    "blue-green: {target} fully available and gated; waiting for `floyd promote`"
                );
                return false;
            }
            self.state.phase = Phase::Progressing;
            self.state.progress.promoted_at = Some(self.now);
            self.progressed();
            self.set_traffic(Some(target.clone()), None);
            self.event(format!("promoted {target}: active traffic switched"));
            // Post-promotion gates start from the switch.
            return self.after_promotion(self.now, delay_s);
        };
        self.after_promotion(promoted_at, delay_s)
    }

    fn after_promotion(&mut self, promoted_at: Time, delay_s: u32) -> bool {
        let r = self.replicas();
        let target = self.target().clone();
        self.ensure_traffic(Some(target.clone()), None);
        self.evaluate_gates(promoted_at);
        if let Some(f) = self.gates.failed.clone() {
            self.fail(format!("post-promotion {f}"));
            return false;
        }
        let delay = if self.state.is_rollback { 0 } else { delay_s };
        let scale_down_at = promoted_at.add_secs(u64::from(delay));
        if self.state.progress.scaled_down_at.is_none() {
            if self.now < scale_down_at {
                self.wake_at(scale_down_at);
                self.state.reason = format!(
                    "blue-green: {target} active; post-promotion gates run until the old revision is removed in {} s",
                    scale_down_at.since(self.now).as_secs()
                );
                return false;
            }
            if !self.gates.all_passed() {
                self.state.reason = format!(
                    "blue-green: {target} active; post-promotion gates pending: {}",
                    self.gates.pending.join("; ")
                );
                return false;
            }
            self.state.progress.scaled_down_at = Some(self.now);
            self.progressed();
            self.event("post-promotion gates passed: removing the old revision");
        }
        let olds: Vec<usize> = self.fleet.old().collect();
        for i in olds {
            if self.fleet.rs[i].desired > 0 {
                self.fleet.scale(i, 0);
            }
        }
        let n = self.n();
        if self.fleet.rs[n].desired != r {
            self.fleet.scale(n, r);
        }
        let old_live = self.fleet.old_live();
        let avail = self.new_rs().available;
        self.state.reason = format!(
            "blue-green: {target} active, {avail} of {r} available; {old_live} old instance(s) stopping"
        );
        old_live == 0 && avail >= r
    }

    // ---- traffic --------------------------------------------------------------

    fn set_traffic(&mut self, active: Option<Revision>, preview: Option<Revision>) {
        self.traffic = Some(Action::SetTraffic { active, preview });
    }

    /// Routes traffic as wanted unless the runtime already does.
    fn ensure_traffic(&mut self, active: Option<Revision>, preview: Option<Revision>) {
        if let Some(Action::SetTraffic {
            active: a,
            preview: p,
        }) = &self.traffic
            && *a == active
            && *p == preview
        {
            return;
        }
        if self.observed.active != active
            || self.observed.preview != preview
            || self.observed.canary.is_some()
        {
            self.set_traffic(active, preview);
        } else {
            self.traffic = None;
        }
    }

    fn ensure_settled_traffic(&mut self) {
        if self.is_blue_green() {
            self.ensure_traffic(Some(self.target().clone()), None);
        } else {
            self.ensure_traffic(None, None);
        }
    }

    // ---- outcomes -------------------------------------------------------------

    fn complete(&mut self) {
        let r = self.replicas();
        self.state.phase = if self.state.is_rollback {
            Phase::RolledBack
        } else {
            Phase::Complete
        };
        self.state.stable = Some(self.target().clone());
        self.progressed();
        self.state.reason = if self.state.is_rollback {
            format!(
                "rolled back to {}: {r} of {r} instances available",
                self.target()
            )
        } else {
            format!("{r} of {r} instances of {} available", self.target())
        };
        let what = if self.state.is_rollback {
            "rollback"
        } else {
            "rollout"
        };
        self.event(format!("{what} to {} complete", self.target()));
        self.ensure_settled_traffic();
        self.prune_history();
    }

    /// The rollout failed. Blue-green switches active traffic back at once
    /// when the old revision still runs; an abort also scales the new one to 0.
    pub(super) fn fail(&mut self, reason: String) {
        self.state.phase = Phase::Failed;
        self.state.progress.paused = false;
        self.event(format!("rollout of {} failed: {reason}", self.target()));
        self.state.reason = reason;
        if self.is_blue_green()
            && let Some(b) = self.blue()
        {
            let blue = self.fleet.rs[b].revision.clone();
            if self.observed.active.as_ref() != Some(&blue) {
                self.event(format!("switched active traffic back to {blue}"));
            }
            self.ensure_traffic(Some(blue), None);
            let n = self.n();
            if self.state.progress.aborted && self.fleet.rs[n].desired > 0 {
                self.fleet.scale(n, 0);
            }
        }
        if self.is_canary() && !self.state.is_rollback {
            self.canary_abort();
        }
    }

    /// Why nothing moved for `deadline` seconds, in words a person can act on.
    fn stuck_reason(&self, deadline: u64) -> String {
        let r = self.canary_want().unwrap_or(self.replicas());
        let rs = self.new_rs();
        if rs.available < r {
            let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
            let mut not_ready = 0u32;
            let mut starting = 0u32;
            let mut created = 0u32;
            if let Some(o) = self.observed.revision(self.target()) {
                for i in &o.instances {
                    if i.phase != InstancePhase::Terminating {
                        created += 1;
                    }
                    if i.phase == InstancePhase::Terminating || i.ready_since.is_some() {
                        continue;
                    }
                    if i.phase == InstancePhase::Pending && i.reason.is_none() {
                        starting += 1;
                    } else {
                        not_ready += 1;
                    }
                    let why = i.reason.clone().unwrap_or_else(|| match i.phase {
                        InstancePhase::Pending => "still starting".to_string(),
                        InstancePhase::Failed => "exited".to_string(),
                        _ => "readiness probe not passing".to_string(),
                    });
                    *reasons.entry(why).or_default() += 1;
                }
            }
            let missing = rs.desired.saturating_sub(rs.live) + r.saturating_sub(rs.desired);
            let top = reasons
                .iter()
                .max_by_key(|(why, n)| (**n, std::cmp::Reverse((*why).clone())))
                .map(|(why, _)| why.clone());
            if not_ready + starting > 0 {
                let top = top.unwrap_or_default();
                let word = if not_ready > 0 {
                    "not ready"
                } else {
                    "not started"
                };
                // Count what exists: "3 of 6 new instances not ready" read
                // as if 6 had been created when only 3 were.
                let not_created = if missing > 0 {
                    format!("; {missing} not created yet")
                } else {
                    String::new()
                };
                return format!(
                    "{} of {created} created instances {word} for {deadline} s{not_created}: {top}",
                    not_ready + starting
                );
            }
            if missing > 0 {
                let why = match &self.observed.gpu {
                    Some(c) => format!(
                        "waiting for capacity ({}: {} free, {} terminating instance(s) still hold theirs)",
                        c.kind,
                        c.free,
                        self.fleet.total_terminating()
                    ),
                    None => match (self.fleet.old_live(), self.fleet.total_terminating()) {
                        (0, 0) => "the runtime has not created them (check its events and logs)"
                            .to_string(),
                        (live, stopping) => format!(
                            "waiting for old instances to make room ({live} running, {stopping} stopping)"
                        ),
                    },
                };
                return format!(
                    "{missing} of {r} new instances not created for {deadline} s: {why}"
                );
            }
            return format!(
                "{} of {r} new instances ready but not available (minReadySeconds {}) for {deadline} s",
                r - rs.available,
                self.spec.min_ready_seconds
            );
        }
        if !self.gates.pending.is_empty() {
            return format!(
                "gates pending for {deadline} s: {}",
                self.gates.pending.join("; ")
            );
        }
        format!(
            "no progress for {deadline} s: {} old instance(s) still running",
            self.fleet.old_live()
        )
    }

    /// Revision history limit: forget the oldest empty old revisions beyond
    /// `revisionHistoryLimit` (never the target or the stable one).
    fn prune_history(&mut self) {
        let limit = self.spec.revision_history_limit as usize;
        let stable = self.state.stable.clone();
        let empty: Vec<usize> = self
            .fleet
            .old()
            .filter(|&i| {
                let r = &self.fleet.rs[i];
                r.exists
                    && r.desired == 0
                    && r.live == 0
                    && r.terminating == 0
                    && Some(&r.revision) != stable.as_ref()
            })
            .collect();
        if empty.len() > limit {
            for &i in &empty[..empty.len() - limit] {
                let rev = self.fleet.rs[i].revision.clone();
                self.event(format!(
                    "forgot revision {rev} (revisionHistoryLimit {limit})"
                ));
                self.deletes.push(Action::DeleteRevision { revision: rev });
            }
        }
    }

    // ---- the decision -----------------------------------------------------------

    pub(super) fn finish(mut self) -> Decision {
        let live_phase = !self.state.phase.is_terminal() && !self.state.progress.paused;
        if live_phase || matches!(self.state.phase, Phase::Complete | Phase::RolledBack) {
            // Instances becoming available change counts by themselves.
            if let Some(t) = self.next_available {
                self.wake_at(t);
            }
        }
        self.state.progress.last_replicas = Some(self.spec.replicas);
        let mut actions = Vec::new();
        actions.extend(self.create.take());
        actions.extend(self.traffic.take());
        for &i in &self.fleet.touched {
            let rs = &self.fleet.rs[i];
            if rs.desired != rs.observed_desired || !rs.exists {
                actions.push(Action::Scale {
                    revision: rs.revision.clone(),
                    replicas: rs.desired,
                });
            }
        }
        for &i in &self.fleet.touched {
            let rs = &self.fleet.rs[i];
            if rs.desired != rs.observed_desired {
                self.events.push(format!(
                    "scaled {} {} from {} to {}",
                    if Some(i) == self.fleet.new {
                        "new"
                    } else {
                        "old"
                    },
                    rs.revision,
                    rs.observed_desired,
                    rs.desired
                ));
            }
        }
        actions.append(&mut self.deletes);
        // Counts as observed (before this step's actions).
        let mut revisions = std::mem::take(&mut self.observed_counts);
        if self.observed.revision(&self.state.target).is_none() {
            revisions.push(RevisionCounts {
                revision: self.state.target.clone(),
                desired: 0,
                live: 0,
                ready: 0,
                available: 0,
                terminating: 0,
            });
        }
        let status = Status {
            phase: self.state.phase,
            reason: self.state.reason.clone(),
            revisions,
            gates: self.observed.gates.clone(),
            canary: self.canary_status(),
        };
        Decision {
            actions,
            state: self.state,
            status,
            events: self.events,
            wake_at: self.wake,
        }
    }
}

impl Cx<'_> {
    pub(super) fn phase(&self) -> Phase {
        self.state.phase
    }
    pub(super) fn is_paused(&self) -> bool {
        self.state.progress.paused
    }
}
