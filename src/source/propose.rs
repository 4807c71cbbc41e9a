//! Reverts proposed on a branch of their own (`floyd/revert-<short-sha>-<service>`)
//! for a tracked branch that refuses direct pushes (branch protection): the
//! same revert commit [`GitSource::revert`] would push, on the same tip, but
//! pushed to Floyd's branch for a pull request to carry. Idempotent: when
//! the branch already holds the revert of the same commits on the current
//! tip, nothing is pushed; when the tip moved, the branch is replaced (a
//! forced push, allowed only for `floyd/` branches, never the tracked one).

use super::mirror::find_commit;
use super::revert::Planner;
use super::{Error, GitSource, RevertOutcome, RevertPlan, RevertRequest};
use git2::{Direction, FetchOptions, Oid};

const PROPOSE_REF: &str = "refs/floyd/propose";
const PROPOSED_PREFIX: &str = "refs/floyd/proposed/";

/// The branch a revert of `failed` for `service` is proposed on.
pub fn revert_branch(failed: &str, service: &str) -> String {
    let short = &failed[..failed.len().min(12)];
    format!("floyd/revert-{short}-{service}")
}

/// A revert waiting on its branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub branch: String,
    /// The revert commit at the branch's tip.
    pub commit: String,
    /// The commits it reverts, newest first.
    pub reverted: Vec<String>,
    /// Its full message (the contract's revert message).
    pub message: String,
    /// Pushed now (false: the branch already held it).
    pub pushed: bool,
}

/// What [`GitSource::propose_revert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeOutcome {
    Proposed(Proposal),
    /// The planner said not to revert (already reverted, changed since, ...).
    NotNeeded(RevertOutcome),
}

impl GitSource {
    /// Plans the revert of `req` like [`GitSource::revert`] and puts the
    /// revert commit on [`revert_branch`] instead of the tracked branch.
    pub fn propose_revert(
        &self,
        req: &RevertRequest,
        planner: Planner,
    ) -> Result<ProposeOutcome, Error> {
        let w = self.writer();
        let tip = w.fetch()?;
        let facts = w.revert_facts(req, &tip)?;
        let commits = match planner(&facts, &req.failed_commit, &req.base) {
            RevertPlan::Revert(c) => c,
            RevertPlan::AlreadyReverted { by } => {
                return Ok(ProposeOutcome::NotNeeded(RevertOutcome::AlreadyReverted {
                    by,
                }));
            }
            RevertPlan::ChangedSince(commits) => {
                return Ok(ProposeOutcome::NotNeeded(RevertOutcome::ChangedSince {
                    commits,
                }));
            }
            RevertPlan::NothingToRevert => {
                return Ok(ProposeOutcome::NotNeeded(RevertOutcome::NothingToRevert));
            }
            RevertPlan::Refuse(reason) => {
                return Ok(ProposeOutcome::NotNeeded(RevertOutcome::Refused { reason }));
            }
        };
        let branch = revert_branch(&req.failed_commit, &req.service);
        let repo = self.repo()?;
        if let Some(existing) = self.fetch_branch(&branch)? {
            let c = find_commit(&repo, &existing.to_string())?;
            let message = String::from_utf8_lossy(c.message_bytes()).into_owned();
            let on_tip = c.parent_id(0).ok().map(|p| p.to_string()) == Some(tip.clone());
            if on_tip && super::revert_of(&message) == commits {
                return Ok(ProposeOutcome::Proposed(Proposal {
                    branch,
                    commit: existing.to_string(),
                    reverted: commits,
                    message,
                    pushed: false,
                }));
            }
        }
        let (new, _services) = w.build_revert(req, &tip, &commits)?;
        let oid = Oid::from_str(&new).map_err(|e| Error::Git(e.to_string()))?;
        repo.reference(PROPOSE_REF, oid, true, "floyd: proposed revert")
            .map_err(|e| self.mirror_err(e))?;
        self.push_to(&repo, PROPOSE_REF, &branch, true)?;
        let message = self.commit_message(&new)?;
        Ok(ProposeOutcome::Proposed(Proposal {
            branch,
            commit: new,
            reverted: commits,
            message,
            pushed: true,
        }))
    }

    /// Whether `commit` is `ancestor` or descends from it (both must be in
    /// the mirror; unknown commits are "no").
    pub fn descends_from(&self, commit: &str, ancestor: &str) -> Result<bool, Error> {
        let repo = self.repo()?;
        let (Ok(a), Ok(b)) = (Oid::from_str(commit), Oid::from_str(ancestor)) else {
            return Ok(false);
        };
        if a == b {
            return Ok(true);
        }
        Ok(repo.graph_descendant_of(a, b).unwrap_or(false))
    }

    /// The full sha of a commit named by a prefix of its sha.
    pub fn resolve(&self, short: &str) -> Result<String, Error> {
        let repo = self.repo()?;
        let obj = repo
            .revparse_single(short)
            .map_err(|e| Error::Git(format!("commit {short}: {}", e.message())))?;
        Ok(obj.id().to_string())
    }

    /// Fetches `refs/heads/<branch>` into the mirror when the remote has it.
    fn fetch_branch(&self, branch: &str) -> Result<Option<Oid>, Error> {
        let repo = self.repo()?;
        let mut remote = repo
            .remote_anonymous(self.url())
            .map_err(|e| self.remote_err(e))?;
        let want = format!("refs/heads/{branch}");
        let found = {
            let conn = remote
                .connect_auth(Direction::Fetch, Some(self.callbacks()), None)
                .map_err(|e| self.remote_err(e))?;
            conn.list()
                .map_err(|e| self.remote_err(e))?
                .iter()
                .any(|h| h.name() == want)
        };
        if !found {
            return Ok(None);
        }
        let local = format!("{PROPOSED_PREFIX}{branch}");
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(self.callbacks());
        fo.download_tags(git2::AutotagOption::None);
        let spec = format!("+{want}:{local}");
        remote
            .fetch(&[spec.as_str()], Some(&mut fo), None)
            .map_err(|e| self.remote_err(e))?;
        Ok(repo.refname_to_id(&local).ok())
    }
}
