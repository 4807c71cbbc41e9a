//! Canary (docs/engine.md "Canary"): the target revision runs beside the
//! stable one, which stays at full size until the end; the steps raise the
//! share of requests the canary gets (`setWeight`), wait (`pause`) or
//! check the gates (`analysis`). Gates are checked throughout; a failing
//! gate, a missed deadline or `floyd abort` sets the weight to 0 at once and
//! scales the canary to 0 (see `Cx::fail`). After the last step the canary
//! is promoted: it grows to `replicas` while the stable revision shrinks,
//! never holding more instances than the largest step did, and the weight
//! follows the share of available instances up to 100.

use super::super::gates;
use super::super::rolling;
use super::{Cx, GATE_RECHECK_MS, MAX_SYNCS};
use crate::engine::{CanaryStatus, Phase, RolloutState};
use crate::manifest::{CanaryParams, CanaryStep, IntOrPercent, Revision, ServiceSpec, Strategy};
use crate::model::{Action, CanarySplit};

/// Canary instances for `weight` percent of `replicas` (Argo Rollouts
/// without a traffic router: `ceil(replicas × weight / 100)`), and at least
/// one: header-matched and mirrored requests, and the gates, need one.
pub fn canary_instances(weight: u32, replicas: u32) -> u32 {
    if replicas == 0 {
        return 0;
    }
    let n = (u64::from(weight.min(100)) * u64::from(replicas)).div_ceil(100);
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// Where a canary rollout stands (`Status.canary`, the API's service view):
/// `None` for other strategies, rollbacks and finished canaries.
pub fn canary_status(spec: &ServiceSpec, state: &RolloutState) -> Option<CanaryStatus> {
    let Strategy::Canary { canary: p } = &spec.strategy else {
        return None;
    };
    if state.is_rollback || matches!(state.phase, Phase::Complete | Phase::RolledBack) {
        return None;
    }
    let step = state.progress.canary_step;
    let steps = u32::try_from(p.steps.len()).unwrap_or(u32::MAX);
    let current = match p.steps.get(step as usize) {
        Some(s) => s.describe(),
        None => "promoting".into(),
    };
    Some(CanaryStatus {
        step: step.min(steps),
        steps,
        current,
        weight: state.progress.canary_weight,
    })
}

impl Cx<'_> {
    pub(super) fn is_canary(&self) -> bool {
        matches!(self.spec.strategy, crate::manifest::Strategy::Canary { .. })
    }

    fn canary_params(&self) -> Option<&CanaryParams> {
        match &self.spec.strategy {
            crate::manifest::Strategy::Canary { canary } => Some(canary),
            _ => None,
        }
    }

    /// The revision the canary is compared against: the last one that
    /// completed, while it still has (or is meant to have) instances.
    pub(super) fn canary_stable(&self) -> Option<usize> {
        let stable = self.state.stable.as_ref()?;
        if stable == self.target() {
            return None;
        }
        self.fleet.rs.iter().position(|r| {
            &r.revision == stable && (r.desired > 0 || r.live > 0 || r.terminating > 0)
        })
    }

    /// Whether this step runs the canary steps (not a rollback, a stable
    /// revision to compare against, something to run).
    pub(super) fn canary_in_steps(&self) -> bool {
        self.is_canary()
            && !self.state.is_rollback
            && self.replicas() > 0
            && self.canary_stable().is_some()
    }

    /// GPU preflight for a canary: `replicas` stable plus the peak canary.
    pub(super) fn canary_gpu_need(&self) -> Option<(u32, u32)> {
        let p = self.canary_params()?;
        if !self.canary_in_steps() {
            return None;
        }
        let w = p.max_weight();
        Some((canary_instances(w, self.replicas()), w))
    }

    /// Routes `weight` percent to the target unless the runtime already does.
    pub(super) fn ensure_weight(
        &mut self,
        canary: Revision,
        stable: Option<Revision>,
        weight: u32,
    ) {
        let want = CanarySplit {
            canary,
            stable,
            weight,
        };
        let already = self.observed.canary.as_ref() == Some(&want)
            && self.observed.active.is_none()
            && self.observed.preview.is_none();
        self.traffic = if already {
            None
        } else {
            Some(Action::SetWeight {
                canary: want.canary,
                stable: want.stable,
                weight: want.weight,
            })
        };
    }

    fn set_weight(&mut self, weight: u32) {
        let before = self.state.progress.canary_weight;
        if before != weight {
            self.state.progress.canary_weight = weight;
            self.event(format!("canary weight {before}% → {weight}%"));
        }
    }

    /// A failing canary: weight 0 at once, the canary scaled to 0.
    pub(super) fn canary_abort(&mut self) {
        let Some(s) = self.canary_stable() else {
            return;
        };
        let stable = self.fleet.rs[s].revision.clone();
        self.set_weight(0);
        self.ensure_weight(self.target().clone(), Some(stable), 0);
        let n = self.n();
        if self.fleet.rs[n].desired > 0 {
            self.fleet.scale(n, 0);
        }
    }

    /// One canary step; true when the rollout is done.
    pub(super) fn canary(&mut self) -> bool {
        let Some(p) = self.canary_params().cloned() else {
            return false;
        };
        if self.state.is_rollback {
            return self.canary_rollback();
        }
        let Some(s) = self.canary_stable().filter(|_| self.replicas() > 0) else {
            // Nothing to compare against (a first deployment): in full.
            let done = self.rolling(IntOrPercent::Percent(25), IntOrPercent::Int(0));
            if !self.state.phase.is_terminal() && !done {
                self.state.reason = format!(
                    "canary: no stable revision to compare against, rolling out in full: {}",
                    self.state.reason
                );
            }
            return done;
        };
        let r = self.replicas();
        let target = self.target().clone();
        let stable = self.fleet.rs[s].revision.clone();
        let n = self.n();
        if self.state.progress.step_started_at.is_none() {
            self.state.progress.step_started_at = Some(self.now);
        }
        // Superseded canaries (neither stable nor target) drain at once.
        let olds: Vec<usize> = self.fleet.old().filter(|&i| i != s).collect();
        for i in olds {
            if self.fleet.rs[i].desired > 0 {
                self.fleet.scale(i, 0);
            }
        }
        // Gates run throughout, on the canary's own traffic.
        self.evaluate_gates(self.state.started_at);
        if let Some(f) = self.gates.failed.clone() {
            self.fail(f);
            return false;
        }
        let steps = p.steps.len();
        let gpu_max = self.gpu_limit().map(|l| l.max_total);
        // One `floyd promote` ends one pause.
        let mut promote = std::mem::take(&mut self.state.progress.promote_requested);
        let mut promote_used = false;
        let mut waiting = String::new();
        while (self.state.progress.canary_step as usize) < steps {
            let i = self.state.progress.canary_step as usize;
            // The stable revision keeps its full size during the steps.
            if self.fleet.rs[s].desired != r {
                self.fleet.scale(s, r);
            }
            let step = p.steps[i].clone();
            let started = self.state.progress.step_started_at.unwrap_or(self.now);
            let at = format!("canary step {}/{steps} ({})", i + 1, step.describe());
            let weight = match &step {
                CanaryStep::SetWeight(w) => *w,
                _ => self.state.progress.canary_weight,
            };
            let mut want = canary_instances(weight, r);
            if let Some(max) = gpu_max {
                want = want.min(max.saturating_sub(self.fleet.rs[s].desired));
            }
            if self.fleet.rs[n].desired != want {
                self.fleet.scale(n, want);
            }
            match &step {
                CanaryStep::SetWeight(w) => {
                    let avail = self.fleet.rs[n].available;
                    let need = canary_instances(*w, r);
                    if avail < need {
                        waiting = format!(
                            "{at}: {avail} of {need} canary instance(s) available, weight {}%",
                            self.state.progress.canary_weight
                        );
                        break;
                    }
                    self.set_weight(*w);
                }
                CanaryStep::Pause(pause) => {
                    if promote {
                        promote = false;
                        promote_used = true;
                        self.event(format!("{at}: promoted by a person"));
                    } else if let Some(d) = pause.duration_seconds {
                        let until = started.add_secs(u64::from(d));
                        if self.now < until {
                            self.wake_at(until);
                            // Waiting by design is not lack of progress.
                            self.progressed();
                            waiting = format!(
                                "{at}: weight {}%, {} s left",
                                self.state.progress.canary_weight,
                                until.since(self.now).as_secs()
                            );
                            break;
                        }
                    } else {
                        if self.state.phase != Phase::AwaitingPromotion {
                            self.state.phase = Phase::AwaitingPromotion;
                            self.progressed();
                            self.event(format!(
                                "{at}: weight {}%, waiting for `floyd promote`",
                                self.state.progress.canary_weight
                            ));
                        }
                        waiting = format!(
                            "{at}: weight {}%, waiting for `floyd promote`",
                            self.state.progress.canary_weight
                        );
                        break;
                    }
                }
                CanaryStep::Analysis(_) => {
                    let g = gates::evaluate(&self.spec.gates, &self.observed.gates, started);
                    if let Some(f) = g.failed {
                        self.fail(format!("{at}: {f}"));
                        return false;
                    }
                    if !g.pending.is_empty() {
                        self.wake_at(
                            self.now
                                .plus(std::time::Duration::from_millis(GATE_RECHECK_MS)),
                        );
                        waiting = format!(
                            "{at}: weight {}%, gates pending: {}",
                            self.state.progress.canary_weight,
                            g.pending.join("; ")
                        );
                        break;
                    }
                    if self.spec.gates.is_empty() {
                        self.event(format!("{at}: no gates configured, nothing to analyse"));
                    } else {
                        self.event(format!("{at}: all {} gate(s) passed", g.passed));
                    }
                }
            }
            // The step is done.
            self.state.progress.canary_step += 1;
            self.state.progress.step_started_at = Some(self.now);
            self.state.phase = Phase::Progressing;
            self.progressed();
            self.event(format!("{at} done"));
        }
        if promote && !promote_used {
            // Not at a pause: nothing to promote.
            let i = self.state.progress.canary_step as usize;
            let what = p.steps.get(i).map_or("promoting".into(), |s| s.describe());
            self.event(format!(
                "promote ignored: the canary is at step {}/{steps} ({what}), not a pause",
                (i + 1).min(steps)
            ));
        }
        if (self.state.progress.canary_step as usize) < steps {
            let w = self.state.progress.canary_weight;
            self.ensure_weight(target, Some(stable), w);
            self.state.reason = format!("canary: {waiting}");
            return false;
        }
        self.canary_promote(&p, s, target, stable)
    }

    /// After the last step: the canary grows to `replicas` while the stable
    /// revision shrinks (Kubernetes' rolling arithmetic with maxUnavailable
    /// 0 and a surge of the largest step's canary count); the weight follows
    /// the share of available instances, never below the last step's.
    fn canary_promote(
        &mut self,
        p: &CanaryParams,
        s: usize,
        target: Revision,
        stable: Revision,
    ) -> bool {
        let r = self.replicas();
        let n = self.n();
        let mut max_total = r.saturating_add(canary_instances(p.max_weight(), r));
        if let Some(l) = self.gpu_limit() {
            max_total = max_total.min(l.max_total);
        }
        for _ in 0..MAX_SYNCS {
            if rolling::reconcile_new(&mut self.fleet, r, max_total) {
                continue;
            }
            if !rolling::reconcile_old(&mut self.fleet, r, 0) {
                break;
            }
        }
        let avail = self.fleet.rs[n].available;
        let stable_avail = self.fleet.rs[s].available;
        let old_live = self.fleet.old_live();
        let share = if old_live == 0 {
            100
        } else if avail + stable_avail == 0 {
            0
        } else {
            u32::try_from(u64::from(avail) * 100 / u64::from(avail + stable_avail)).unwrap_or(100)
        };
        let w = share.max(p.weight_after(p.steps.len()));
        self.set_weight(w);
        self.ensure_weight(target.clone(), Some(stable), w);
        let rs = &self.fleet.rs[n];
        let (desired, live) = (rs.desired, rs.live);
        self.state.reason = format!(
            "canary: promoting {target}: {avail} of {r} available, weight {w}%, {old_live} stable instance(s) left"
        );
        let done = desired == r && live == r && avail >= r && old_live == 0;
        // All of the traffic goes to the canary before the rollout settles:
        // a traffic router (the kube runtime's HTTPRoute) then moves its
        // stable backend over to the new revision with no request left on
        // the old one; without this step it would jump from the last
        // share straight to the settled routing.
        let routed_full = self
            .observed
            .canary
            .as_ref()
            .is_some_and(|c| c.canary == target && c.weight == 100);
        if done && !routed_full {
            self.state.reason = format!(
                "canary: promoting {target}: {avail} of {r} available, weight 100%, settling next"
            );
            self.wake_at(
                self.now
                    .plus(std::time::Duration::from_millis(GATE_RECHECK_MS)),
            );
            return false;
        }
        if done && !self.gates.all_passed() {
            self.state.reason = format!(
                "canary: {avail} of {r} available; waiting for gates: {}",
                self.gates.pending.join("; ")
            );
            return false;
        }
        done
    }

    /// A rollback under a canary spec: the stable revision (usually still at
    /// full size) takes over; the failed canary stays out of traffic until
    /// its instances are gone.
    fn canary_rollback(&mut self) -> bool {
        let done = self.rolling(IntOrPercent::Percent(25), IntOrPercent::Int(0));
        if let Some(from) = self.state.progress.rolled_back_from.clone()
            && self
                .fleet
                .rs
                .iter()
                .any(|r| r.revision == from && r.live + r.terminating > 0)
        {
            let target = self.target().clone();
            self.ensure_weight(from, Some(target), 0);
        }
        done
    }

    /// The status line of a canary in its steps.
    pub(super) fn canary_status(&self) -> Option<CanaryStatus> {
        canary_status(self.spec, &self.state)
    }

    /// For the deadline message: canary instances the current step needs.
    pub(super) fn canary_want(&self) -> Option<u32> {
        let p = self.canary_params()?;
        if !self.canary_in_steps() {
            return None;
        }
        let i = self.state.progress.canary_step as usize;
        let w = match p.steps.get(i)? {
            CanaryStep::SetWeight(w) => *w,
            _ => self.state.progress.canary_weight,
        };
        Some(canary_instances(w, self.replicas()))
    }
}
