//! A rollout failed: carry out what [`policy::on_failure`] decides (roll
//! back, restore, or leave it) at once, and queue the revert; the loop's Git
//! worker pushes it (re-planned by [`policy::plan_revert`] on every attempt)
//! and [`revert_finished`] records the outcome. A remote that is down or
//! hangs delays the revert (retried with backoff), never the rollback.

use super::publish::start_history;
use super::{Shared, Svc, git, policy};
use crate::engine::Phase;
use crate::hub::Event;
use crate::manifest::ServiceName;
use crate::runtime::Observed;
use crate::source::{self, RevertOutcome, RevertRequest};
use crate::store::{PendingRevert, RevertRecord, RolloutRecord};
use crate::telemetry::metrics::ResultLabel;
use crate::time::Time;
use std::sync::Arc;
use std::time::Duration;

/// Failed: roll back or restore now; a revert is queued on the record
/// (`pending_revert`) for the loop's Git worker.
pub(super) async fn handle_failure(
    sh: &Arc<Shared>,
    name: &ServiceName,
    svc: &mut Svc,
    rec: &mut RolloutRecord,
    observed: &Observed,
    now: Time,
) {
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
    match plan.revert {
        policy::RevertIntent::Skip => {}
        policy::RevertIntent::Degrade(why) => degrade(sh, name, rec, why),
        policy::RevertIntent::Revert {
            failed: commit,
            base,
        } => {
            // Pushed by the loop's Git worker, off the loop (see `git.rs`).
            rec.pending_revert = Some(PendingRevert {
                failed: commit,
                base,
                failed_revision: failed.state.target.clone(),
                rolled_back_to: rolled_back_to
                    .or(failed.state.stable.as_ref().map(|r| r.to_string()))
                    .unwrap_or_else(|| "none".into()),
                reason,
                files: failed.files.clone(),
                attempts: 0,
                next_at: now,
                last_error: None,
            });
        }
    }
    sh.persist_record(name, rec);
}

/// The request for a pending revert of `name`.
pub(super) fn revert_request(sh: &Shared, name: &ServiceName, p: &PendingRevert) -> RevertRequest {
    RevertRequest {
        service: name.to_string(),
        failed_commit: p.failed.sha.clone(),
        base: p.base.clone(),
        files: p.files.clone(),
        subdir: sh.cfg.path.clone(),
        environment: sh.cfg.environment.clone(),
        failed_revision: p.failed_revision.to_string(),
        rolled_back_to: p.rolled_back_to.clone(),
        reason: p.reason.clone(),
        author_name: sh.cfg.author_name.clone(),
        author_email: sh.cfg.author_email.clone(),
        render: None,
    }
}

/// Wait before the next attempt after `attempts` failed ones: 2, 4, 8 … s,
/// at most 5 minutes.
pub(super) fn retry_after(attempts: u32) -> Duration {
    Duration::from_secs(2u64 << attempts.min(8)).min(Duration::from_secs(300))
}

/// A revert attempt for `name` ended. `svc` is the service (None: it was
/// pruned meanwhile). Returns the commit to sync (a revert on the branch).
pub(super) fn revert_finished(
    sh: &Shared,
    name: &ServiceName,
    svc: Option<&mut Svc>,
    req: &RevertRequest,
    out: Result<RevertOutcome, source::Error>,
    now: Time,
) -> Option<String> {
    // The record still waits for this revert (a newer desired state drops it).
    let mut rec = svc.and_then(|s| s.record.as_mut()).filter(|r| {
        r.pending_revert
            .as_ref()
            .is_some_and(|p| p.failed.sha == req.failed_commit)
    });
    let count = |r: &str| {
        sh.hub
            .metrics
            .revert_commits_total
            .get_or_create(&ResultLabel { result: r.into() })
            .inc();
    };
    let failed_sha = req.failed_commit.clone();
    // Anything but a transient error settles the revert (the loop persists
    // the record: it marks the service dirty).
    if let Some(r) = rec.as_deref_mut()
        && !matches!(&out, Err(e) if git::transient(e))
    {
        r.pending_revert = None;
    }
    match out {
        Ok(RevertOutcome::Pushed {
            commit: new,
            reverted,
            services,
            attempts,
        }) => {
            tracing::info!(service = %name, revert = %new, reverted = ?reverted, services = ?services, attempts, "revert commit pushed");
            count("pushed");
            if let Some(r) = rec {
                r.revert_commit = Some(new.clone());
            }
            // The failed rollout's history entry names the revert.
            if let Some(mut e) = sh.hub.history(name.as_str()).into_iter().rev().find(|e| {
                e.result == Phase::Failed
                    && !e.rollback
                    && e.commit.as_ref().is_some_and(|c| c.sha == failed_sha)
            }) {
                e.revert_commit = Some(new.clone());
                sh.write_history(&e);
                sh.hub.record_history(e);
            }
            let message = format!("reverted {} commit(s) that broke {name}", reverted.len());
            sh.write_revert(&RevertRecord {
                service: name.to_string(),
                failed_commit: failed_sha,
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
            if let Some(r) = rec {
                r.revert_commit = Some(by.clone());
            }
            sh.hub.emit(Event::Revert {
                service: name.to_string(),
                commit: Some(by.clone()),
                reverted: vec![failed_sha.clone()],
                ok: true,
                message: format!("commit {failed_sha} was already reverted by {by}"),
            });
            Some(by)
        }
        Ok(other) => {
            count(if matches!(other, RevertOutcome::Proposed { .. }) {
                "proposed"
            } else {
                "skipped"
            });
            let why = match other {
                RevertOutcome::NothingToRevert => format!(
                    "no commit since {} changed {name}; not reverting — fix it by hand",
                    req.base
                ),
                RevertOutcome::ChangedSince { commits } => format!(
                    "{name} changed again after {failed_sha} (in {}); not reverting over a newer change",
                    commits.join(", ")
                ),
                RevertOutcome::Refused { reason } => reason,
                RevertOutcome::Proposed { url, .. } => format!("revert waiting in PR {url}"),
                RevertOutcome::Pushed { .. } | RevertOutcome::AlreadyReverted { .. } => {
                    unreachable!("handled above")
                }
            };
            match rec {
                Some(r) => degrade(sh, name, r, why),
                None => tracing::warn!(service = %name, "{why}"),
            }
            None
        }
        Err(e) if git::transient(&e) => {
            count("retry");
            if let Some(r) = rec
                && let Some(p) = r.pending_revert.as_mut()
            {
                p.attempts += 1;
                let wait = retry_after(p.attempts);
                p.next_at = now.plus(wait);
                p.last_error = Some(e.to_string());
                tracing::warn!(service = %name, error = %e, attempts = p.attempts, retry_in = ?wait, "revert not pushed; will try again");
            }
            None
        }
        Err(e) => {
            count("error");
            sh.write_revert(&RevertRecord {
                service: name.to_string(),
                failed_commit: failed_sha,
                reverted: vec![],
                revert_commit: None,
                ok: false,
                message: e.to_string(),
                at: now,
            });
            match rec {
                Some(r) => {
                    let why = match &e {
                        source::Error::PushRejected { message, .. } => format!(
                            "the remote refused the revert push ({message}); if the branch is protected, revert commit {} by hand or through a pull request",
                            req.failed_commit
                        ),
                        _ => format!("revert failed: {e}"),
                    };
                    degrade(sh, name, r, why);
                }
                None => tracing::warn!(service = %name, error = %e, "revert failed"),
            }
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
