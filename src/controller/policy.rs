//! The controller's GitOps policy, as pure functions: what a new commit
//! means for a service's rollout record, what a failed rollout goes back to
//! and which commits it reverts, and which commits a revert undoes given
//! what Git says. No I/O, no clock: the loop gathers the inputs (records,
//! rendered services, Git facts, `now`) and carries out the decisions.
//!
//! The rules (docs/architecture.md, "GitOps policy"):
//! - A service's desired state is per commit: revision *and* replicas and
//!   every other field. `last_complete` is the last commit whose whole
//!   desired state reached Complete.
//! - A failed rollout goes back to the last Complete desired state (the
//!   engine's rollback for a new revision; a restore of the spec for a
//!   same-revision change) and reverts every commit after it, on the
//!   first-parent history, that changed the service.
//! - A desired state that can never fit (GPU arithmetic, at t=0) restores the
//!   desired state it replaced, even one still rolling out, and reverts only
//!   the commits after that one.
//! - Nothing completed and the failed commit created the service: a person
//!   decides (Degraded, the commit named). A Floyd revert that fails is not
//!   reverted again. History rewritten under the last Complete commit: a
//!   person decides.
//! - A desired state that failed is not applied again while Git still
//!   renders it (`rejected`); Git moving on (a revert, a fix) clears it.

use crate::diff::Change;
use crate::engine::{self, Phase, RolloutState};
use crate::hub::CommitInfo;
use crate::manifest::{Revision, ServiceSpec};
use crate::runtime::Observed;
use crate::source::{RevertFacts, RevertPlan};
use crate::store::RolloutRecord;
use crate::time::Time;

/// What Git's commit says about one service.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered<'a> {
    pub commit: &'a CommitInfo,
    pub revision: &'a Revision,
    pub spec: &'a ServiceSpec,
    /// Repo-relative files that define the service.
    pub files: &'a [String],
}

/// What to do with one service's record at a new commit.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitDecision {
    /// Nothing changes.
    Keep,
    /// The record changes without a new rollout (files, settings that do not
    /// move instances, Git agreeing again): persist and step it.
    Update(Box<RolloutRecord>),
    /// A new desired state: a rollout (start, supersede or scale). `superseded`
    /// is the in-flight rollout it replaced, for the history.
    Start {
        record: Box<RolloutRecord>,
        superseded: Option<Box<RolloutRecord>>,
    },
}

/// A record that remembers `rec` as the desired state it replaced (one level).
fn snapshot(rec: &RolloutRecord) -> Box<RolloutRecord> {
    let mut p = rec.clone();
    p.previous = None;
    Box::new(p)
}

/// The record for a new desired state that follows `prev`.
fn follow(
    prev: &RolloutRecord,
    state: RolloutState,
    r: &Rendered<'_>,
    from_revision: Option<Revision>,
) -> RolloutRecord {
    let mut rec = RolloutRecord::new(
        state,
        r.spec.clone(),
        Some(r.commit.clone()),
        r.files.to_vec(),
    );
    rec.from_revision = from_revision;
    rec.last_complete = prev.last_complete.clone();
    rec.created_by = prev.created_by.clone();
    rec.previous = Some(snapshot(prev));
    rec
}

/// A new commit renders `r` for a service. `prev` is the service's record
/// (None: Floyd has not driven it yet), `change` what `diff::plan` found
/// against the runtime (used only when there is no record), `now` the time.
pub fn on_commit(
    prev: Option<&RolloutRecord>,
    r: &Rendered<'_>,
    change: &Change,
    now: Time,
) -> CommitDecision {
    let Some(prev) = prev else {
        return first_sight(r, change, now);
    };
    // Git still renders the desired state that failed: keep what runs.
    if prev
        .rejected
        .as_ref()
        .is_some_and(|d| d.same_state(r.revision, r.spec))
    {
        return keep_or_files(prev, r);
    }
    let same_revision = *r.revision == prev.state.target;
    if same_revision && *r.spec == prev.spec {
        if prev.rejected.is_some() {
            // Git agrees with what runs again (our revert, or a person's).
            let mut rec = prev.clone();
            rec.rejected = None;
            rec.git_agrees = true;
            rec.degraded = None;
            rec.commit = Some(r.commit.clone());
            rec.files = r.files.to_vec();
            if matches!(rec.state.phase, Phase::Complete | Phase::RolledBack) {
                rec.last_complete = rec.desired();
                rec.previous = None;
            }
            return CommitDecision::Update(Box::new(rec));
        }
        return keep_or_files(prev, r);
    }
    let settled = matches!(prev.state.phase, Phase::Complete | Phase::RolledBack);
    let in_flight = !prev.state.phase.is_terminal();
    if same_revision && r.spec.replicas == prev.spec.replicas && (settled || in_flight) {
        // Settings that move no instance (probes, gates, deadlines): the
        // running rollout (or settled state) takes them over.
        let mut rec = prev.clone();
        rec.spec = r.spec.clone();
        rec.commit = Some(r.commit.clone());
        rec.files = r.files.to_vec();
        rec.rejected = None;
        rec.degraded = None;
        rec.git_agrees = false;
        if settled {
            rec.last_complete = rec.desired();
            rec.previous = None;
        } else {
            rec.previous = Some(snapshot(prev));
        }
        return CommitDecision::Update(Box::new(rec));
    }
    if same_revision && (settled || in_flight) {
        // Replicas (maybe with other settings): a scale of the same revision.
        let mut state = prev.state.clone();
        if settled {
            state.phase = Phase::Progressing;
            state.is_rollback = false;
            state.started_at = now;
            state.last_progress_at = now;
            state.reason = format!("scaling to {} instances", r.spec.replicas);
            state.progress.rolled_back_from = None;
            state.progress.infeasible = false;
        }
        let rec = follow(prev, state, r, Some(prev.state.target.clone()));
        return CommitDecision::Start {
            record: Box::new(rec),
            superseded: None,
        };
    }
    // A new revision (or anything after a failed or degraded rollout).
    let state = engine::next_rollout(Some(&prev.state), r.revision.clone(), now);
    if state == prev.state && !same_revision {
        // The engine keeps a rollback while Git names the revision it left.
        return keep_or_files(prev, r);
    }
    let state = if state == prev.state {
        // Same revision after a failure: a fresh rollout of the new spec.
        RolloutState::start(r.revision.clone(), prev.state.stable.clone(), now)
    } else {
        state
    };
    let superseded = in_flight.then(|| snapshot(prev));
    let from = Some(prev.state.target.clone()).or(state.stable.clone());
    let rec = follow(prev, state, r, from);
    CommitDecision::Start {
        record: Box::new(rec),
        superseded,
    }
}

fn keep_or_files(prev: &RolloutRecord, r: &Rendered<'_>) -> CommitDecision {
    if !r.files.is_empty() && prev.files != r.files {
        let mut rec = prev.clone();
        rec.files = r.files.to_vec();
        return CommitDecision::Update(Box::new(rec));
    }
    CommitDecision::Keep
}

/// A service Floyd has no record of.
fn first_sight(r: &Rendered<'_>, change: &Change, now: Time) -> CommitDecision {
    let commit = Some(r.commit.clone());
    let files = r.files.to_vec();
    let rec = match change {
        Change::Create { .. } => {
            let mut rec = RolloutRecord::new(
                RolloutState::start(r.revision.clone(), None, now),
                r.spec.clone(),
                commit,
                files,
            );
            rec.created_by = Some(r.commit.clone());
            rec
        }
        Change::NewRevision { from, .. } => {
            // The runtime runs `from` (a store that was lost): it is the stable one.
            RolloutRecord::new(
                RolloutState::start(r.revision.clone(), from.clone(), now),
                r.spec.clone(),
                commit,
                files,
            )
        }
        Change::Scale { .. } => {
            let mut st = RolloutState::start(r.revision.clone(), Some(r.revision.clone()), now);
            st.phase = Phase::Progressing;
            RolloutRecord::new(st, r.spec.clone(), commit, files)
        }
        Change::Unchanged => {
            // Adopted: already running what Git says.
            let mut st = RolloutState::start(r.revision.clone(), Some(r.revision.clone()), now);
            st.phase = Phase::Complete;
            let mut rec = RolloutRecord::new(st, r.spec.clone(), commit, files);
            rec.from_revision = None;
            rec.last_complete = rec.desired();
            return CommitDecision::Update(Box::new(rec));
        }
        Change::Delete | Change::Orphan => return CommitDecision::Keep,
    };
    CommitDecision::Start {
        record: Box::new(rec),
        superseded: None,
    }
}

/// A rollout (or scale) reached Complete / RolledBack: the record's desired
/// state is the last Complete one when Git holds it.
pub fn on_complete(rec: &mut RolloutRecord) {
    if rec.rejected.is_none() && (!rec.state.is_rollback || rec.git_agrees) {
        rec.last_complete = rec.desired();
        rec.created_by = None;
    }
    rec.previous = None;
}

/// What the controller must do about a failed rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct FailurePlan {
    /// The record from now on (a rollback, a restored desired state, or the
    /// failed one with `rejected` set).
    pub record: RolloutRecord,
    /// How it got there, for logs and history.
    pub restore: Restore,
    pub revert: RevertIntent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Restore {
    /// The engine's rollback to the last completed revision.
    Rollback { to: Revision },
    /// The same revision, back to the last Complete spec (replicas, ...).
    Spec { replicas: u32 },
    /// The desired state this one replaced (it could never fit).
    Previous { commit: Option<String> },
    /// Nothing to go back to (or not allowed): the failed state stays.
    None { why: Option<String> },
}

/// Whether and how far back to revert in Git.
#[derive(Debug, Clone, PartialEq)]
pub enum RevertIntent {
    /// Revert the commits after `base` up to `failed` that changed the service.
    Revert { failed: CommitInfo, base: String },
    /// A person must act: the reason says why and what.
    Degrade(String),
    /// Not asked to (onFailure.revert false, --no-revert, or no commit).
    Skip,
}

/// Options that shape the failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureOptions {
    /// `--no-revert`.
    pub no_revert: bool,
    /// The failed desired state's commit is one of Floyd's own reverts.
    pub failed_is_floyd_revert: bool,
}

/// The rollout in `failed` (phase Failed) ended: plan the way back.
pub fn on_failure(
    failed: &RolloutRecord,
    observed: &Observed,
    opts: FailureOptions,
    now: Time,
) -> FailurePlan {
    let reason = failed.state.reason.clone();
    if failed.state.is_rollback {
        let mut record = failed.clone();
        record.failure_handled = true;
        let why = format!(
            "the rollback to {} failed: {reason}; fix the service by hand",
            failed.state.target
        );
        record.degraded = Some(why.clone());
        return FailurePlan {
            record,
            restore: Restore::None { why: None },
            revert: RevertIntent::Degrade(why),
        };
    }
    let rejected = failed.desired();
    let mut base: Option<String> = failed.last_complete.as_ref().map(|d| d.commit.sha.clone());
    let (mut record, restore) = if failed.state.progress.infeasible
        && let Some(prev) = &failed.previous
    {
        // It could never fit and nothing of it was done: the desired state it
        // replaced carries on (even a rollout still in flight).
        let mut rec = (**prev).clone();
        rec.state.last_progress_at = now;
        if !rec.state.phase.is_terminal() {
            rec.state.reason =
                format!("resumed: the newer desired state could never fit ({reason})");
        }
        rec.last_complete = failed.last_complete.clone();
        base = prev.commit.as_ref().map(|c| c.sha.clone());
        let commit = prev.commit.as_ref().map(|c| c.sha.clone());
        (rec, Restore::Previous { commit })
    } else if engine::should_roll_back(&failed.spec, &failed.state) {
        match engine::rollback(&failed.state, observed, now) {
            Ok(st) => {
                let to = st.target.clone();
                // Every setting of the last Complete desired state, when it is
                // the revision rolled back to; else the current ones.
                let spec = failed
                    .last_complete
                    .as_ref()
                    .filter(|d| d.revision == to)
                    .map(|d| d.spec.clone())
                    .unwrap_or_else(|| failed.spec.clone());
                let mut rec =
                    RolloutRecord::new(st, spec, failed.commit.clone(), failed.files.clone());
                rec.from_revision = Some(failed.state.target.clone());
                rec.last_complete = failed.last_complete.clone();
                rec.created_by = failed.created_by.clone();
                (rec, Restore::Rollback { to })
            }
            Err(e) => (
                failed.clone(),
                Restore::None {
                    why: Some(e.to_string()),
                },
            ),
        }
    } else if let Some(lc) = failed
        .last_complete
        .as_ref()
        .filter(|d| d.revision == failed.state.target && d.spec != failed.spec)
        .filter(|_| failed.spec.on_failure.rollback || failed.state.progress.aborted)
    {
        // Same revision, other settings (replicas): back to the last Complete ones.
        let mut st = RolloutState::start(lc.revision.clone(), Some(lc.revision.clone()), now);
        st.is_rollback = true;
        st.reason = format!("restoring {} instances: {reason}", lc.spec.replicas);
        st.progress.last_replicas = failed.state.progress.last_replicas;
        let mut rec = RolloutRecord::new(
            st,
            lc.spec.clone(),
            failed.commit.clone(),
            failed.files.clone(),
        );
        rec.from_revision = Some(failed.state.target.clone());
        rec.last_complete = failed.last_complete.clone();
        (
            rec,
            Restore::Spec {
                replicas: lc.spec.replicas,
            },
        )
    } else {
        (failed.clone(), Restore::None { why: None })
    };
    record.failure_handled = true;
    record.rejected = rejected;
    record.git_agrees = false;
    record.revert_commit = None;
    record.degraded = None;

    let revert = match &failed.commit {
        _ if !failed.spec.on_failure.revert || opts.no_revert => RevertIntent::Skip,
        None => RevertIntent::Skip,
        // A Floyd revert that started this rollout: reverting it would bring
        // the broken commit back (loop guard). One that only confirmed a
        // restored state (`git_agrees`) did not start it.
        Some(c) if opts.failed_is_floyd_revert && !failed.git_agrees => {
            RevertIntent::Degrade(format!(
                "the rollout of Floyd's own revert commit {} failed ({reason}); not reverting again — fix the service by hand",
                c.sha
            ))
        }
        Some(c) => {
            let base = base.or_else(|| {
                failed
                    .created_by
                    .as_ref()
                    .filter(|cb| cb.sha != c.sha)
                    .map(|cb| cb.sha.clone())
            });
            match base {
                Some(b) if b != c.sha => RevertIntent::Revert {
                    failed: c.clone(),
                    base: b,
                },
                _ if failed.created_by.as_ref().is_some_and(|cb| cb.sha == c.sha) => {
                    RevertIntent::Degrade(format!(
                        "commit {} created the service and nothing of it completed, so there is nothing to revert to; fix or revert commit {} by hand",
                        c.sha, c.sha
                    ))
                }
                _ => RevertIntent::Degrade(format!(
                    "no earlier commit of the service completed under Floyd, so there is nothing to revert to; fix or revert commit {} by hand",
                    c.sha
                )),
            }
        }
    };
    if let RevertIntent::Degrade(why) = &revert {
        record.degraded = Some(why.clone());
    }
    FailurePlan {
        record,
        restore,
        revert,
    }
}

// ---- revert planning --------------------------------------------------------

/// Which commits to revert, from the facts Git gave. `failed` and `base` are
/// the shas of the failed and last Complete commits.
pub fn plan_revert(facts: &RevertFacts, failed: &str, base: &str) -> RevertPlan {
    if !facts.failed_on_branch {
        return RevertPlan::Refuse(format!(
            "commit {failed} is no longer on the branch (history was rewritten); not reverting — check the branch and push a fix"
        ));
    }
    // Later commits: one of Floyd's reverts that undid the failed commit
    // already, or a person's change (fix forward).
    let mut by_person = Vec::new();
    for c in &facts.since {
        if c.reverts.iter().any(|s| s == failed) {
            return RevertPlan::AlreadyReverted { by: c.sha.clone() };
        }
        if c.changed_service {
            by_person.push(c.sha.clone());
        }
    }
    if !by_person.is_empty() {
        return RevertPlan::ChangedSince(by_person);
    }
    if !facts.base_is_ancestor {
        return RevertPlan::Refuse(format!(
            "the last good commit {base} is not an ancestor of {failed}: the history was rewritten (force-push or squash), so reverting could undo unrelated changes; fix the branch by hand"
        ));
    }
    let Some(chain) = &facts.chain else {
        return RevertPlan::Refuse(format!(
            "the last good commit {base} is not on the first-parent history of {failed} (a merge brought it in from the side); revert by hand"
        ));
    };
    // A Floyd revert in the range and the commits it reverted cancel out.
    let in_chain = |s: &String| chain.iter().any(|c| c.sha == *s);
    let mut cancelled: Vec<&str> = Vec::new();
    for c in chain {
        if !c.reverts.is_empty() && c.reverts.iter().all(in_chain) {
            cancelled.push(&c.sha);
            cancelled.extend(c.reverts.iter().map(String::as_str));
        }
    }
    let list: Vec<String> = chain
        .iter()
        .filter(|c| c.changed_service && !cancelled.contains(&c.sha.as_str()))
        .map(|c| c.sha.clone())
        .collect();
    if list.is_empty() {
        RevertPlan::NothingToRevert
    } else {
        RevertPlan::Revert(list)
    }
}

/// Which commit to revert when the branch tip `failed` does not render and
/// `base` is the last commit that synced. The commits since `base` that do
/// not render form a streak ending at the tip; its first commit is what broke
/// rendering, and only it is reverted (later commits in the streak may be
/// good work that fails only because of it). Whoever carries the plan out
/// pushes it only when the result renders.
pub fn plan_render_revert(facts: &RevertFacts, failed: &str, base: &str) -> RevertPlan {
    if !facts.failed_on_branch {
        return RevertPlan::Refuse(format!(
            "commit {failed} is no longer on the branch (history was rewritten); not reverting"
        ));
    }
    if let Some(by) = facts
        .since
        .iter()
        .find(|c| c.reverts.iter().any(|s| s == failed))
    {
        return RevertPlan::AlreadyReverted { by: by.sha.clone() };
    }
    if !facts.since.is_empty() {
        // Someone pushed after the broken tip: the newer tip is synced (and,
        // if it does not render either, judged) on its own.
        return RevertPlan::ChangedSince(facts.since.iter().map(|c| c.sha.clone()).collect());
    }
    if !facts.base_is_ancestor {
        return RevertPlan::Refuse(format!(
            "the last synced commit {base} is not an ancestor of {failed}: the history was rewritten, so reverting could undo unrelated changes; fix the branch by hand"
        ));
    }
    let Some(chain) = &facts.chain else {
        return RevertPlan::Refuse(format!(
            "the last synced commit {base} is not on the first-parent history of {failed} (a merge brought it in from the side); revert by hand"
        ));
    };
    let streak: Vec<_> = chain.iter().take_while(|c| c.unrenderable).collect();
    let Some(first) = streak.last() else {
        return RevertPlan::NothingToRevert;
    };
    if !first.reverts.is_empty() {
        return RevertPlan::Refuse(format!(
            "the first commit that does not render, {}, is a Floyd revert: not reverting a revert; fix the manifests by hand",
            first.sha
        ));
    }
    RevertPlan::Revert(vec![first.sha.clone()])
}

#[cfg(test)]
mod tests;
