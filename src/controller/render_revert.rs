//! A branch tip that does not render. Nothing of it is applied: what runs
//! stays on the last commit that synced. The error is reported (`/readyz`
//! `syncError`, the log), and, unless `--no-revert`, the commit that broke
//! rendering is reverted in Git like a failed rollout's: planned by
//! [`policy::plan_render_revert`], pushed only when the result renders, off
//! the loop, retried with backoff while the remote is unreachable.
//!
//! The pending revert lives in memory only: after a restart the same tip
//! fails to render again (or is the commit the previous process died
//! rendering) and the revert is planned afresh from Git.

use super::{Shared, failure, git, policy};
use crate::hub::Event;
use crate::source::{self, RENDER_REVERT, RenderFailure, RevertOutcome, RevertRequest};
use crate::store::RevertRecord;
use crate::telemetry::metrics::ResultLabel;
use crate::time::Time;

/// A revert of the commit that broke rendering, waiting to be pushed.
#[derive(Debug, Clone)]
pub(super) struct PendingRender {
    /// The branch tip that does not render.
    pub failed: String,
    /// The last commit that synced (what runs).
    pub base: String,
    /// Why the tip does not render.
    pub error: String,
    /// Commits never to render again (the previous process died rendering them).
    pub unrenderable: Vec<String>,
    pub attempts: u32,
    pub next_at: Time,
}

impl PendingRender {
    pub(super) fn new(
        failed: &str,
        base: &str,
        error: &str,
        poisoned: bool,
        now: Time,
    ) -> PendingRender {
        PendingRender {
            failed: failed.to_string(),
            base: base.to_string(),
            error: error.to_string(),
            unrenderable: if poisoned {
                vec![failed.to_string()]
            } else {
                Vec::new()
            },
            attempts: 0,
            next_at: now,
        }
    }

    pub(super) fn request(&self, sh: &Shared) -> RevertRequest {
        RevertRequest {
            service: RENDER_REVERT.to_string(),
            failed_commit: self.failed.clone(),
            base: self.base.clone(),
            files: Vec::new(),
            subdir: sh.cfg.path.clone(),
            environment: sh.cfg.environment.clone(),
            failed_revision: String::new(),
            rolled_back_to: String::new(),
            reason: self.error.clone(),
            author_name: sh.cfg.author_name.clone(),
            author_email: sh.cfg.author_email.clone(),
            render: Some(RenderFailure {
                error: self.error.clone(),
                unrenderable: self.unrenderable.clone(),
            }),
        }
    }
}

/// The planner the Git task runs for a render revert.
pub(super) const PLANNER: source::revert::Planner = policy::plan_render_revert;

/// A render revert attempt ended: settles or reschedules `pending` and
/// reports. Returns the commit to sync (the revert on the branch).
pub(super) fn finished(
    sh: &Shared,
    pending: &mut Option<PendingRender>,
    req: &RevertRequest,
    out: Result<RevertOutcome, source::Error>,
    now: Time,
) -> Option<String> {
    // A newer tip replaced the request meanwhile: its own plan decides.
    if pending
        .as_ref()
        .is_none_or(|p| p.failed != req.failed_commit)
    {
        return None;
    }
    let count = |r: &str| {
        sh.hub
            .metrics
            .revert_commits_total
            .get_or_create(&ResultLabel { result: r.into() })
            .inc();
    };
    let failed = req.failed_commit.clone();
    let report = |ok: bool, commit: Option<String>, reverted: Vec<String>, message: String| {
        if ok {
            tracing::info!(failed = %failed, revert = ?commit, "{message}");
        } else {
            tracing::warn!(failed = %failed, "{message}");
            sh.hub
                .set_sync_error(Some(format!("commit {failed}: {}; {message}", req.reason)));
        }
        sh.write_revert(&RevertRecord {
            service: String::new(),
            failed_commit: failed.clone(),
            reverted: reverted.clone(),
            revert_commit: commit.clone(),
            ok,
            message: message.clone(),
            at: now,
        });
        sh.hub.emit(Event::Revert {
            service: String::new(),
            commit,
            reverted,
            ok,
            message,
        });
    };
    match out {
        Err(e) if git::transient(&e) => {
            count("retry");
            if let Some(p) = pending.as_mut() {
                p.attempts += 1;
                let wait = failure::retry_after(p.attempts);
                p.next_at = now.plus(wait);
                tracing::warn!(failed = %failed, error = %e, attempts = p.attempts, retry_in = ?wait, "render revert not pushed; will try again");
            }
            None
        }
        Ok(RevertOutcome::Pushed {
            commit,
            reverted,
            services,
            ..
        }) => {
            *pending = None;
            count("pushed");
            let message = format!(
                "reverted {} commit(s) that broke rendering ({}); services it changes: {}",
                reverted.len(),
                reverted.join(", "),
                if services.is_empty() {
                    "none".to_string()
                } else {
                    services.join(", ")
                }
            );
            report(true, Some(commit.clone()), reverted, message);
            Some(commit)
        }
        Ok(RevertOutcome::AlreadyReverted { by }) => {
            *pending = None;
            count("already");
            let message = format!("commit {failed} was already reverted by {by}");
            report(true, Some(by.clone()), vec![failed.clone()], message);
            Some(by)
        }
        Ok(other) => {
            *pending = None;
            count(if matches!(other, RevertOutcome::Proposed { .. }) {
                "proposed"
            } else {
                "skipped"
            });
            let message = match other {
                RevertOutcome::NothingToRevert => format!(
                    "no commit since {} stopped the branch from rendering; not reverting",
                    req.base
                ),
                RevertOutcome::ChangedSince { commits } => format!(
                    "the branch moved after {failed} (to {}); not reverting",
                    commits.join(", ")
                ),
                RevertOutcome::Refused { reason } => format!("not reverted: {reason}"),
                RevertOutcome::Proposed { url, .. } => {
                    format!("the revert waits in pull request {url}")
                }
                RevertOutcome::Pushed { .. } | RevertOutcome::AlreadyReverted { .. } => {
                    unreachable!("handled above")
                }
            };
            report(false, None, vec![], message);
            None
        }
        Err(e) => {
            *pending = None;
            count("error");
            let message = match &e {
                source::Error::Revert { message, .. } => format!("not reverted: {message}"),
                _ => format!("not reverted: {e}"),
            };
            report(false, None, vec![], message);
            None
        }
    }
}
