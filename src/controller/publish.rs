//! What people see of a service: the hub's view (API, dashboard, events),
//! history entries, metrics and instance gauges. Nothing here decides.

use super::{Shared, Svc};
use crate::engine::{Phase, RevisionCounts};
use crate::hub::{HistoryEntry, ServiceView};
use crate::manifest::ServiceName;
use crate::runtime::{InstancePhase, Observed};
use crate::store::RolloutRecord;
use crate::telemetry::metrics::{
    InstanceLabels, ProductLabel, RevisionLabels, RolloutLabels, StrategyLabel,
};
use crate::time::Time;
use std::collections::BTreeMap;

pub(super) fn history_entry(name: &str, rec: &RolloutRecord) -> HistoryEntry {
    HistoryEntry {
        service: name.to_string(),
        commit: rec.commit.clone(),
        from_revision: rec.from_revision.clone(),
        to_revision: rec.state.target.clone(),
        started_at: rec.state.started_at,
        ended_at: None,
        result: Phase::Progressing,
        reason: String::new(),
        rollback: rec.state.is_rollback,
        revert_commit: rec.revert_commit.clone(),
    }
}

pub(super) fn start_history(sh: &Shared, name: &ServiceName, rec: &RolloutRecord) {
    let e = history_entry(name.as_str(), rec);
    sh.write_history(&e);
    sh.hub.record_history(e);
}

pub(super) fn finish_history(
    sh: &Shared,
    name: &ServiceName,
    rec: &RolloutRecord,
    now: Time,
    result: Phase,
    reason: &str,
) {
    let mut e = history_entry(name.as_str(), rec);
    e.ended_at = Some(now);
    e.result = result;
    e.reason = reason.to_string();
    sh.write_history(&e);
    sh.hub.record_history(e);
}

pub(super) fn count_rollout(
    sh: &Shared,
    name: &ServiceName,
    strategy: &str,
    result: &str,
    rec: &RolloutRecord,
    now: Time,
) {
    sh.hub
        .metrics
        .rollout_total
        .get_or_create(&RolloutLabels {
            service: name.to_string(),
            strategy: strategy.to_string(),
            result: result.to_string(),
        })
        .inc();
    sh.hub
        .metrics
        .rollout_duration_seconds
        .get_or_create(&StrategyLabel {
            strategy: strategy.to_string(),
        })
        .observe(now.since(rec.state.started_at).as_secs_f64());
}

pub(super) fn end_history(
    sh: &Shared,
    name: &ServiceName,
    rec: &RolloutRecord,
    now: Time,
    result: Phase,
) {
    finish_history(sh, name, rec, now, result, &rec.state.reason);
}

/// Records what a prediction of this service's rollouts needs: the
/// rendered spec, the revision rolled from, GPU capacity, and how long
/// its instances took from creation to ready (those that never restarted).
pub(super) fn note_plan(sh: &Shared, name: &ServiceName, rec: &RolloutRecord, observed: &Observed) {
    let from = rec
        .from_revision
        .as_ref()
        .filter(|r| **r != rec.state.target)
        .map(|r| crate::predict::CurrentRevision {
            revision: r.clone(),
            replicas: rec.spec.replicas,
            gpu: observed
                .revision(r)
                .and_then(|o| o.template.resources.gpu.clone()),
        });
    let all: Vec<_> = observed
        .revisions
        .iter()
        .flat_map(|r| r.instances.iter())
        .collect();
    let created: Vec<u64> = all.iter().map(|i| i.created_at.as_millis()).collect();
    let batches = crate::predict::batches(&created);
    let samples = all
        .iter()
        .zip(batches)
        .filter(|(i, _)| i.restarts == 0 && i.phase != InstancePhase::Terminating)
        .filter_map(|(i, batch)| {
            let ready = i.ready_since?;
            (ready >= i.created_at)
                .then(|| (i.id.clone(), ready.since(i.created_at).as_secs_f64(), batch))
        });
    sh.hub.note_plan(
        name.as_str(),
        &rec.spec,
        &rec.state.target,
        from,
        observed.gpu.clone(),
        samples,
    );
}

/// Updates the hub's view, metrics and gauges of one service.
#[allow(clippy::too_many_arguments)]
pub(super) fn publish(
    sh: &Shared,
    name: &ServiceName,
    svc: &mut Svc,
    rec: &RolloutRecord,
    observed: &Observed,
    revisions: Option<Vec<RevisionCounts>>,
    gates: Vec<crate::runtime::GateResult>,
    now: Time,
) {
    let revisions = revisions
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| counts(observed, rec.spec.min_ready_seconds, now));
    let mut phase = rec.state.phase;
    let mut reason = rec.state.reason.clone();
    if rec.state.is_rollback && matches!(phase, Phase::Complete | Phase::RolledBack) {
        let from = rec
            .from_revision
            .as_ref()
            .map(|r| r.as_str())
            .unwrap_or("?");
        if rec.git_agrees {
            // The revert landed: Git and the runtime agree again.
            phase = Phase::Complete;
            reason = format!(
                "rolled back from {from}; Git reverted to it in {}",
                rec.commit.as_ref().map(|c| c.sha.as_str()).unwrap_or("?")
            );
        } else {
            phase = Phase::RolledBack;
            reason = format!("rolled back from {from}");
        }
    }
    if let Some(p) = &rec.pending_revert {
        // The rollback is done or under way; Git is what waits.
        reason = match &p.last_error {
            Some(err) => format!(
                "{reason}; the revert of {} is not pushed yet: {} attempt(s) failed ({err}); trying again",
                short(&p.failed.sha),
                p.attempts
            ),
            None => format!(
                "{reason}; the revert of {} is not pushed yet",
                short(&p.failed.sha)
            ),
        };
    }
    if let Some(d) = &rec.degraded
        && phase.is_terminal()
    {
        phase = Phase::Degraded;
        reason = d.clone();
    }
    // A runtime problem (a load balancer port not bound) is never Complete.
    (phase, reason) = crate::engine::with_runtime_problems(phase, reason, observed);
    let current = if matches!(rec.state.phase, Phase::Complete | Phase::RolledBack) {
        Some(rec.state.target.clone())
    } else {
        rec.state.stable.clone()
    };
    sh.hub.set_service(ServiceView {
        name: name.to_string(),
        strategy: rec.spec.strategy_name().to_string(),
        replicas: rec.spec.replicas,
        phase,
        reason,
        current_revision: current,
        target_revision: Some(rec.state.target.clone()),
        commit: rec.commit.clone(),
        revisions: revisions.clone(),
        gates,
        gpu: observed.gpu.clone(),
        active: observed.active.clone(),
        preview: observed.preview.clone(),
        updated_at: now,
        canary: crate::hub::canary_view(&rec.spec, &rec.state),
        drift: observed.drift.clone(),
    });
    let mut labels = Vec::new();
    for r in &observed.revisions {
        let (mut ready, mut starting, mut terminating) = (0i64, 0i64, 0i64);
        for i in &r.instances {
            match (i.phase, i.ready_since.is_some()) {
                (InstancePhase::Terminating, _) => terminating += 1,
                (_, true) => ready += 1,
                _ => starting += 1,
            }
        }
        for (state, v) in [
            ("ready", ready),
            ("starting", starting),
            ("terminating", terminating),
        ] {
            let l = InstanceLabels {
                service: name.to_string(),
                revision: r.revision.to_string(),
                state: state.into(),
            };
            sh.hub.metrics.instances.get_or_create(&l).set(v);
            labels.push(l);
        }
    }
    for old in &svc.gauges {
        if !labels.contains(old) {
            sh.hub.metrics.instances.remove(old);
        }
    }
    svc.gauges = labels;
    let mut seen = BTreeMap::new();
    for t in &observed.traffic {
        let l = RevisionLabels {
            service: name.to_string(),
            revision: t.revision.to_string(),
        };
        let (r0, e0) = svc.traffic_seen.get(&t.revision).copied().unwrap_or((0, 0));
        // Counters that went down started over: all of the new count is new.
        let added = |now: u64, before: u64| if now >= before { now - before } else { now };
        let m = &sh.hub.metrics;
        m.lb_requests_total
            .get_or_create(&l)
            .inc_by(added(t.requests, r0));
        m.lb_errors_total
            .get_or_create(&l)
            .inc_by(added(t.errors, e0));
        seen.insert(t.revision.clone(), (t.requests, t.errors));
    }
    for old in svc.traffic_seen.keys().filter(|r| !seen.contains_key(*r)) {
        let l = RevisionLabels {
            service: name.to_string(),
            revision: old.to_string(),
        };
        sh.hub.metrics.lb_requests_total.remove(&l);
        sh.hub.metrics.lb_errors_total.remove(&l);
    }
    svc.traffic_seen = seen;
    if let Some(g) = &observed.gpu {
        let p = ProductLabel {
            product: g.kind.clone(),
        };
        sh.hub
            .metrics
            .gpu_capacity
            .get_or_create(&p)
            .set(i64::from(g.exist));
        sh.hub
            .metrics
            .gpu_allocated
            .get_or_create(&p)
            .set(i64::from(g.exist.saturating_sub(g.free)));
    }
}

fn counts(o: &Observed, min_ready: u32, now: Time) -> Vec<RevisionCounts> {
    o.revisions
        .iter()
        .map(|r| RevisionCounts {
            revision: r.revision.clone(),
            desired: r.desired,
            live: r.live(),
            ready: r.ready(),
            available: r.available(min_ready, now),
            terminating: r.terminating(),
        })
        .collect()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
