//! One step of one service: observe, evaluate gates, ask the engine, apply
//! its actions, record transitions; on failure hand over to [`super::failure`].

use super::publish::{count_rollout, end_history, note_plan, publish};
use super::{Shared, Svc, failure, gates, policy};
use crate::engine::{self, Phase};
use crate::manifest::ServiceName;
use crate::time::Time;
use std::sync::Arc;
use std::time::Duration;

/// One step of one service at `now`.
pub(super) async fn step_service(
    sh: Arc<Shared>,
    name: ServiceName,
    mut svc: Svc,
    now: Time,
) -> (ServiceName, Svc) {
    let Some(mut rec) = svc.record.clone() else {
        return (name, svc);
    };
    if !rec.state.is_rollback
        && let Some(c) = &rec.commit
    {
        sh.runtime.note_commit(&name, &rec.state.target, &c.sha);
    }
    let mut observed = match sh.runtime.observe(&name, Some(&rec.spec), now).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(service = %name, error = %e, "observe failed; retrying");
            svc.wake_at = Some(now.plus(Duration::from_secs(2)));
            return (name, svc);
        }
    };
    sh.hub.note_drift(name.as_str(), &observed.drift);
    // Gates of the revision being rolled out, unless the runtime reports
    // them itself (the simulator does). A rollback's target passed them when
    // it completed.
    if observed.gates.is_empty()
        && !rec.spec.gates.is_empty()
        && !rec.state.is_rollback
        && !rec.state.phase.is_terminal()
    {
        let step = gates::Step {
            service: name.clone(),
            revision: rec.state.target.clone(),
            stable: rec.state.stable.clone(),
            phase: rec.state.phase.as_str().to_string(),
            since: rec
                .state
                .progress
                .promoted_at
                .unwrap_or(rec.state.started_at),
        };
        observed.gates = sh.gates.evaluate(&rec.spec, &observed, &step, now);
    }
    let before = rec.clone();
    // Settled rollouts are stepped too (the engine corrects drift); a failed
    // one is left as it is for a person or the next commit.
    let stepping = !matches!(rec.state.phase, Phase::Failed | Phase::Degraded);
    let mut status_revisions = None;
    let mut gates = observed.gates.clone();
    if stepping {
        // An autoscaled service: the runtime's autoscaler owns the count
        // (frozen while a rollout is in flight); the engine works with it.
        let settled = matches!(rec.state.phase, Phase::Complete | Phase::RolledBack);
        let mut spec = rec.spec.clone();
        match sh
            .runtime
            .autoscale(&name, &rec.spec, &rec.state.target, settled)
            .await
        {
            Ok(Some(n)) => spec.replicas = n,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "autoscaler apply failed; retrying");
                svc.wake_at = Some(now.plus(Duration::from_secs(2)));
                svc.record = Some(rec);
                return (name, svc);
            }
        }
        let d = engine::step(&spec, &observed, &rec.state, now);
        for ev in &d.events {
            tracing::info!(service = %name, revision = %rec.state.target, "{ev}");
        }
        if !d.actions.is_empty()
            && let Err(e) = sh.runtime.apply(&name, &spec, &d.actions).await
        {
            tracing::warn!(service = %name, error = %e, "runtime apply failed; retrying");
            rec.state.reason = format!("runtime: {e}");
            svc.wake_at = Some(now.plus(Duration::from_secs(1)));
            svc.record = Some(rec);
            return (name, svc);
        }
        rec.state = d.state;
        status_revisions = Some(d.status.revisions);
        gates = d.status.gates;
        if rec.state.phase.is_terminal() {
            svc.wake_at = d.wake_at;
        } else {
            // Keep rollouts moving even when the engine expects an event the
            // runtime does not deliver (instances becoming ready): a
            // runtime that reports changes steps the service at once, this
            // is the safety net.
            let poll = now.plus(sh.rollout_poll);
            svc.wake_at = Some(d.wake_at.map_or(poll, |w| w.min(poll)));
        }
    } else {
        svc.wake_at = None;
    }

    // Transitions.
    if before.state.phase != rec.state.phase || before.state.target != rec.state.target {
        let strategy = rec.spec.strategy_name().to_string();
        match rec.state.phase {
            Phase::Complete | Phase::RolledBack => {
                tracing::info!(service = %name, revision = %rec.state.target, rollback = rec.state.is_rollback, "rollout complete");
                let result = if rec.state.is_rollback {
                    Phase::RolledBack
                } else {
                    Phase::Complete
                };
                end_history(&sh, &name, &rec, now, result);
                count_rollout(&sh, &name, &strategy, result.as_str(), &rec, now);
                policy::on_complete(&mut rec);
                if let Some(d) = &rec.last_complete {
                    sh.write_applied(&name, d, now);
                }
            }
            Phase::Failed => {
                tracing::warn!(service = %name, revision = %rec.state.target, reason = %rec.state.reason, "rollout failed");
                // The failure is its own event: the rollback below may change the
                // phase again before this step ends.
                let _ = sh
                    .runtime
                    .record_event(
                        &name,
                        "Failed",
                        &format!(
                            "rollout to {} failed: {}",
                            rec.state.target, rec.state.reason
                        ),
                    )
                    .await;
                end_history(&sh, &name, &rec, now, Phase::Failed);
                count_rollout(&sh, &name, &strategy, "Failed", &rec, now);
                if !rec.failure_handled {
                    failure::handle_failure(&sh, &name, &mut svc, &mut rec, &observed, now).await;
                }
            }
            _ => {}
        }
    }
    if rec != before {
        svc.dirty = true;
    }
    if rec.state.phase != before.state.phase || rec.state.target != before.state.target {
        // Where the runtime's operators look (kube: a Kubernetes Event).
        let message = if rec.state.reason.is_empty() {
            format!(
                "rollout to {}: {}",
                rec.state.target,
                rec.state.phase.as_str()
            )
        } else {
            format!("rollout to {}: {}", rec.state.target, rec.state.reason)
        };
        if let Err(e) = sh
            .runtime
            .record_event(&name, rec.state.phase.as_str(), &message)
            .await
        {
            tracing::debug!(error = %e, "cannot record the rollout event in the runtime");
        }
    }
    note_plan(&sh, &name, &rec, &observed);
    publish(
        &sh,
        &name,
        &mut svc,
        &rec,
        &observed,
        status_revisions,
        gates,
        now,
    );
    svc.record = Some(rec);
    if svc.dirty {
        sh.persist_svc(&name, &mut svc);
    }
    (name, svc)
}
