//! A rollout failed: carry out what [`policy::on_failure`] decides (roll
//! back, restore, or leave it), then revert in Git through the mirror's
//! single writer, re-planned by [`policy::plan_revert`] on every attempt.

use super::publish::{history_entry, start_history};
use super::{Shared, Svc, policy};
use crate::engine::Phase;
use crate::hub::Event;
use crate::manifest::ServiceName;
use crate::runtime::Observed;
use crate::source::{self, RevertOutcome, RevertRequest};
use crate::store::{RevertRecord, RolloutRecord};
use crate::telemetry::metrics::ResultLabel;
use crate::time::Time;
use std::sync::Arc;

/// Failed: roll back or restore, then revert in Git. Returns the revert
/// commit to sync (pushed now, or already on the branch).
pub(super) async fn handle_failure(
    sh: &Arc<Shared>,
    name: &ServiceName,
    svc: &mut Svc,
    rec: &mut RolloutRecord,
    observed: &Observed,
    now: Time,
) -> Option<String> {
    let failed = rec.clone();
    let reason = failed.state.reason.clone();
    let failed_is_floyd_revert = match &failed.commit {
        Some(c) => {
            let src = sh.source.clone();
            let s = c.sha.clone();
            let msg = tokio::task::spawn_blocking(move || src.commit_message(&s))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            !source::revert_of(&msg).is_empty()
        }
        None => false,
    };
    let plan = policy::on_failure(
        &failed,
        observed,
        policy::FailureOptions {
            no_revert: sh.cfg.no_revert,
            failed_is_floyd_revert,
        },
        now,
    );
    *rec = plan.record;
    let rolled_back_to = match &plan.restore {
        policy::Restore::Rollback { to } => {
            tracing::info!(service = %name, from = %failed.state.target, to = %to, "rolling back");
            start_history(sh, name, rec);
            svc.wake_at = Some(now);
            Some(to.to_string())
        }
        policy::Restore::Spec { replicas } => {
            tracing::info!(service = %name, replicas, "restoring the last complete desired state");
            svc.wake_at = Some(now);
            Some(format!("{} ({replicas} instances)", rec.state.target))
        }
        policy::Restore::Previous { commit } => {
            tracing::info!(service = %name, commit = commit.as_deref().unwrap_or("-"), target = %rec.state.target, "the new desired state can never fit; carrying on with the one before it");
            svc.wake_at = Some(now);
            Some(rec.state.target.to_string())
        }
        policy::Restore::None { why } => {
            if let Some(w) = why {
                tracing::warn!(service = %name, error = %w, "cannot roll back");
            }
            None
        }
    };
    sh.persist_record(name, rec);
    let (failed_commit, base) = match plan.revert {
        policy::RevertIntent::Skip => return None,
        policy::RevertIntent::Degrade(why) => {
            degrade(sh, name, rec, why);
            return None;
        }
        policy::RevertIntent::Revert { failed, base } => (failed, base),
    };
    let req = RevertRequest {
        service: name.to_string(),
        failed_commit: failed_commit.sha.clone(),
        base,
        files: failed.files.clone(),
        subdir: sh.cfg.path.clone(),
        environment: sh.cfg.environment.clone(),
        failed_revision: failed.state.target.to_string(),
        rolled_back_to: rolled_back_to
            .or(failed.state.stable.as_ref().map(|r| r.to_string()))
            .unwrap_or_else(|| "none".into()),
        reason: reason.clone(),
        author_name: sh.cfg.author_name.clone(),
        author_email: sh.cfg.author_email.clone(),
    };
    let (host, src) = (sh.cfg.git_host.clone(), sh.source.clone());
    let out = crate::githost::pr::revert(host, src, req.clone(), policy::plan_revert).await;
    let count = |r: &str| {
        sh.hub
            .metrics
            .revert_commits_total
            .get_or_create(&ResultLabel { result: r.into() })
            .inc();
    };
    match out {
        Ok(RevertOutcome::Pushed {
            commit: new,
            reverted,
            services,
            attempts,
        }) => {
            tracing::info!(service = %name, revert = %new, reverted = ?reverted, services = ?services, attempts, "revert commit pushed");
            count("pushed");
            rec.revert_commit = Some(new.clone());
            sh.persist_record(name, rec);
            // The failed rollout's history entry names the revert.
            let mut e = history_entry(name.as_str(), &failed);
            e.ended_at = Some(now);
            e.result = Phase::Failed;
            e.reason = reason.clone();
            e.revert_commit = Some(new.clone());
            sh.write_history(&e);
            sh.hub.record_history(e);
            let message = format!("reverted {} commit(s) that broke {name}", reverted.len());
            sh.write_revert(&RevertRecord {
                service: name.to_string(),
                failed_commit: failed_commit.sha.clone(),
                reverted: reverted.clone(),
                revert_commit: Some(new.clone()),
                ok: true,
                message: message.clone(),
                at: now,
            });
            sh.hub.emit(Event::Revert {
                service: name.to_string(),
                commit: Some(new.clone()),
                reverted,
                ok: true,
                message,
            });
            Some(new)
        }
        Ok(RevertOutcome::AlreadyReverted { by }) => {
            tracing::info!(service = %name, revert = %by, "the failed commit is already reverted on the branch");
            count("already");
            rec.revert_commit = Some(by.clone());
            sh.persist_record(name, rec);
            sh.hub.emit(Event::Revert {
                service: name.to_string(),
                commit: Some(by.clone()),
                reverted: vec![failed_commit.sha.clone()],
                ok: true,
                message: format!("commit {} was already reverted by {by}", failed_commit.sha),
            });
            Some(by)
        }
        Ok(RevertOutcome::NothingToRevert) => {
            count("skipped");
            degrade(
                sh,
                name,
                rec,
                format!(
                    "no commit since {} changed {name}; not reverting — fix it by hand",
                    req.base
                ),
            );
            None
        }
        Ok(RevertOutcome::ChangedSince { commits }) => {
            count("skipped");
            degrade(
                sh,
                name,
                rec,
                format!(
                    "{name} changed again after {} (in {}); not reverting over a newer change",
                    failed_commit.sha,
                    commits.join(", ")
                ),
            );
            None
        }
        Ok(RevertOutcome::Proposed { url, .. }) => {
            count("proposed");
            degrade(sh, name, rec, format!("revert waiting in PR {url}"));
            None
        }
        Ok(RevertOutcome::Refused { reason }) => {
            count("skipped");
            degrade(sh, name, rec, reason);
            None
        }
        Err(e) => {
            count("error");
            sh.write_revert(&RevertRecord {
                service: name.to_string(),
                failed_commit: failed_commit.sha.clone(),
                reverted: vec![],
                revert_commit: None,
                ok: false,
                message: e.to_string(),
                at: now,
            });
            degrade(sh, name, rec, format!("revert failed: {e}"));
            None
        }
    }
}

/// A person must act: the service shows Degraded with `why` once settled.
fn degrade(sh: &Shared, name: &ServiceName, rec: &mut RolloutRecord, why: String) {
    tracing::warn!(service = %name, "{why}");
    sh.hub.emit(Event::Revert {
        service: name.to_string(),
        commit: None,
        reverted: vec![],
        ok: false,
        message: why.clone(),
    });
    rec.degraded = Some(why);
    sh.persist_record(name, rec);
}
