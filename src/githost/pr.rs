//! Reverts through a pull/merge request. The decisions are pure
//! ([`route`], [`content`], [`follow_up`]); [`revert`] and [`Follower`]
//! carry them out: the Git side through the source's single writer, the
//! host side through [`GitHost`].
//!
//! One pull request per failed commit and service: its head branch is
//! [`revert_branch`]`(failed, service)`, so a second proposal of the same
//! revert finds the open one and updates it. When it is merged, the revert
//! commit (with its `Floyd-Revert-Of:` trailers) reaches the branch and the
//! normal path sees Floyd's own revert; when the service completes on a
//! later commit that descends from the failed one (fixed forward), the pull
//! request is closed with a comment.

use super::{GitHost, PrContent, PullRequest, RevertVia};
use crate::source::{
    self, GitSource, ProposeOutcome, RevertOutcome, RevertRequest, revert::Planner,
};
use std::sync::Arc;

/// Labels every revert pull request carries.
pub const LABELS: [&str; 2] = ["floyd", "revert"];
/// Head branches of revert pull requests start with this.
pub const BRANCH_PREFIX: &str = "floyd/revert-";

/// How to carry out a revert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Push to the tracked branch (the host, if any, only helps when refused).
    Push { propose_if_refused: bool },
    /// Propose on a branch and open a pull request.
    Propose,
}

/// Which way a revert goes, from the configuration.
pub fn route(via: Option<RevertVia>) -> Route {
    match via {
        None => Route::Push {
            propose_if_refused: false,
        },
        Some(RevertVia::Push) => Route::Push {
            propose_if_refused: true,
        },
        Some(RevertVia::PullRequest) => Route::Propose,
    }
}

/// The pull request of a proposed revert: the revert message's first line
/// as title, the rest (the contract's body and trailers, so a squash merge
/// keeps them) as body.
pub fn content(message: &str, head: &str, base: &str) -> PrContent {
    let (title, body) = message.split_once('\n').unwrap_or((message, ""));
    PrContent {
        title: title.trim().to_string(),
        body: body.trim_start_matches('\n').to_string(),
        head: head.to_string(),
        base: base.to_string(),
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
    }
}

/// The service a revert branch is for and the short sha it names.
pub fn parse_branch(head: &str) -> Option<(&str, &str)> {
    let rest = head.strip_prefix(BRANCH_PREFIX)?;
    let (short, service) = rest.split_once('-')?;
    (short.len() >= 7 && short.chars().all(|c| c.is_ascii_hexdigit()) && !service.is_empty())
        .then_some((short, service))
}

/// What a service completing at a commit means for an open revert PR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed<'a> {
    pub service: &'a str,
    /// The commit is a Floyd revert naming the failed commit (the PR, merged).
    pub reverts_failed: bool,
    /// The commit is the failed one or descends from it.
    pub descends_from_failed: bool,
    /// It was the failed commit itself.
    pub is_failed: bool,
    /// A rollback completing (not a new desired state).
    pub rollback: bool,
}

/// What to do with an open revert pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    Keep,
    /// Fixed forward: close with this comment.
    Close(String),
}

pub fn follow_up(pr_service: &str, c: &Completed<'_>, commit: &str) -> FollowUp {
    if c.service != pr_service
        || c.rollback
        || c.reverts_failed
        || c.is_failed
        || !c.descends_from_failed
    {
        return FollowUp::Keep;
    }
    FollowUp::Close(format!(
        "Floyd: {} completed at {commit}, a later commit than the one this pull request reverts, so the failure was fixed forward; closing this revert.",
        c.service
    ))
}

/// Reverts `req`: pushed to the branch, or proposed through a pull request
/// when the route says so or the branch refuses the push for good.
pub async fn revert(
    host: Option<GitHost>,
    src: Arc<GitSource>,
    req: RevertRequest,
    planner: Planner,
) -> Result<RevertOutcome, source::Error> {
    let r = route(host.as_ref().map(|h| h.cfg.via));
    if let Route::Push { propose_if_refused } = r {
        let (s, q) = (src.clone(), req.clone());
        let out = tokio::task::spawn_blocking(move || s.revert(&q, planner))
            .await
            .map_err(|e| source::Error::Git(e.to_string()))
            .and_then(|r| r);
        match out {
            Err(e) if propose_if_refused && e.refused_for_good() => {
                tracing::info!(service = %req.service, error = %e, "the branch refuses the revert push; proposing it through a pull request");
            }
            other => return other,
        }
    }
    let Some(host) = host else {
        return Err(source::Error::Git("no git host configured".into()));
    };
    let (s, q) = (src.clone(), req.clone());
    let proposed = tokio::task::spawn_blocking(move || s.propose_revert(&q, planner))
        .await
        .map_err(|e| source::Error::Git(e.to_string()))??;
    let p = match proposed {
        ProposeOutcome::Proposed(p) => p,
        ProposeOutcome::NotNeeded(o) => return Ok(o),
    };
    let c = content(&p.message, &p.branch, src.branch());
    let pr = open_or_update(&host, &c)
        .await
        .map_err(|e| source::Error::Revert {
            service: req.service.clone(),
            message: format!(
                "the revert is on branch {} but the pull request failed: {e}",
                p.branch
            ),
        })?;
    Ok(RevertOutcome::Proposed {
        branch: p.branch,
        commit: p.commit,
        reverted: p.reverted,
        url: pr.url,
    })
}

/// The open pull request for `c.head`, updated; or a new one.
pub async fn open_or_update(host: &GitHost, c: &PrContent) -> Result<PullRequest, super::Error> {
    match host.find_open_pr(&c.head, &c.base).await? {
        Some(pr) => {
            host.update_pr(pr.number, c).await?;
            tracing::info!(pr = %pr.url, "revert pull request updated");
            Ok(pr)
        }
        None => {
            let pr = host.create_pr(c).await?;
            tracing::info!(pr = %pr.url, "revert pull request opened");
            Ok(pr)
        }
    }
}

/// Closes open revert pull requests whose service completed on a later
/// commit (fixed forward). Fed by [`super::status::follow`].
pub struct Follower {
    pub host: GitHost,
    pub src: Arc<GitSource>,
    /// Open revert pull requests, as last listed.
    open: Vec<PullRequest>,
    listed: bool,
}

impl Follower {
    pub fn new(host: GitHost, src: Arc<GitSource>) -> Follower {
        Follower {
            host,
            src,
            open: Vec::new(),
            listed: false,
        }
    }

    /// Lists the open revert pull requests again (at start, after a revert).
    pub fn forget_listing(&mut self) {
        self.listed = false;
    }

    /// `service` completed at `commit` (not a rollback).
    pub async fn completed(&mut self, service: &str, commit: &str, rollback: bool) {
        if !self.listed {
            match self
                .host
                .list_open_prs(BRANCH_PREFIX, self.src.branch())
                .await
            {
                Ok(v) => {
                    self.open = v;
                    self.listed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list open revert pull requests");
                    return;
                }
            }
        }
        let mine: Vec<PullRequest> = self
            .open
            .iter()
            .filter(|p| parse_branch(&p.head).is_some_and(|(_, s)| s == service))
            .cloned()
            .collect();
        for pr in mine {
            let Some((short, _)) = parse_branch(&pr.head) else {
                continue;
            };
            let (src, short_s, commit_s) =
                (self.src.clone(), short.to_string(), commit.to_string());
            let facts = tokio::task::spawn_blocking(move || {
                let failed = src.resolve(&short_s).ok()?;
                let msg = src.commit_message(&commit_s).ok()?;
                let reverts = source::revert_of(&msg);
                Some((
                    failed.clone(),
                    reverts.contains(&failed),
                    src.descends_from(&commit_s, &failed).unwrap_or(false),
                ))
            })
            .await
            .ok()
            .flatten();
            let Some((failed, reverts_failed, descends)) = facts else {
                continue;
            };
            let c = Completed {
                service,
                reverts_failed,
                descends_from_failed: descends,
                is_failed: failed == commit,
                rollback,
            };
            if let FollowUp::Close(comment) = follow_up(service, &c, commit) {
                match self.host.close_pr(pr.number, &comment).await {
                    Ok(()) => {
                        tracing::info!(pr = %pr.url, service, commit, "fixed forward; revert pull request closed");
                        self.open.retain(|p| p.number != pr.number);
                    }
                    Err(e) => {
                        tracing::warn!(pr = %pr.url, error = %e, "cannot close the revert pull request")
                    }
                }
            } else if reverts_failed {
                // Merged: the host closed it.
                self.open.retain(|p| p.number != pr.number);
            }
        }
    }
}
