//! Commit statuses: `floyd/<service>` on every synced commit (pending while
//! rolling out, success on Complete, failure with the reason), or one
//! aggregated `floyd` status when a commit touches more services than
//! configured. [`StatusBook`] decides (pure); [`follow`] carries it out in
//! background tasks fed by the hub's event channel, so a slow or
//! rate-limited host never holds up a rollout: statuses of the same commit
//! and context are coalesced while they wait, and calls are spaced.

use super::pr::Follower;
use super::{CommitStatus, GitHost, StatusState};
use crate::engine::Phase;
use crate::hub::{Event, HistoryEntry, Hub};
use crate::source::GitSource;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Commits remembered (older ones get no more statuses).
const COMMITS_KEPT: usize = 64;
/// Default of `--git-host-status-aggregate-above`.
pub const DEFAULT_AGGREGATE_ABOVE: usize = 20;

/// Cuts `s` to at most `max` characters (hosts limit descriptions).
pub fn short(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        return one;
    }
    let mut out: String = one.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[derive(Debug, Default)]
struct CommitBook {
    /// service → (state, description)
    services: BTreeMap<String, (StatusState, String)>,
    /// context → what was last decided for it
    sent: BTreeMap<String, (StatusState, String)>,
}

/// What statuses each commit should show.
#[derive(Debug)]
pub struct StatusBook {
    aggregate_above: usize,
    public_url: Option<String>,
    commits: BTreeMap<String, CommitBook>,
    order: VecDeque<String>,
}

impl StatusBook {
    pub fn new(aggregate_above: usize, public_url: Option<String>) -> StatusBook {
        StatusBook {
            aggregate_above,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            commits: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A rollout started, changed or ended: the statuses to set now.
    pub fn observe(&mut self, e: &HistoryEntry) -> Vec<CommitStatus> {
        // A rollback is not the commit's own rollout: its status stays failed.
        let Some(commit) = e.commit.as_ref().filter(|_| !e.rollback) else {
            return vec![];
        };
        let (state, description) = match e.result {
            Phase::Progressing | Phase::Paused | Phase::AwaitingPromotion => (
                StatusState::Pending,
                format!("rolling out revision {}", e.to_revision),
            ),
            Phase::Complete => (
                StatusState::Success,
                format!("revision {} is Complete", e.to_revision),
            ),
            Phase::Failed | Phase::Degraded | Phase::RolledBack => (
                StatusState::Failure,
                if e.reason.is_empty() {
                    format!("revision {} failed", e.to_revision)
                } else {
                    e.reason.clone()
                },
            ),
        };
        let sha = commit.sha.clone();
        if !self.commits.contains_key(&sha) {
            self.order.push_back(sha.clone());
            if self.order.len() > COMMITS_KEPT
                && let Some(old) = self.order.pop_front()
            {
                self.commits.remove(&old);
            }
        }
        let book = self.commits.entry(sha.clone()).or_default();
        book.services
            .insert(e.service.clone(), (state, description.clone()));
        let (context, state, description, link) = if book.services.len() > self.aggregate_above {
            let count = |s: StatusState| book.services.values().filter(|v| v.0 == s).count();
            let (ok, pending, failed) = (
                count(StatusState::Success),
                count(StatusState::Pending),
                count(StatusState::Failure),
            );
            let state = if failed > 0 {
                StatusState::Failure
            } else if pending > 0 {
                StatusState::Pending
            } else {
                StatusState::Success
            };
            (
                "floyd".to_string(),
                state,
                format!(
                    "{} services: {ok} complete, {pending} rolling out, {failed} failed",
                    book.services.len()
                ),
                self.public_url.clone(),
            )
        } else {
            (
                format!("floyd/{}", e.service),
                state,
                description,
                self.public_url
                    .as_ref()
                    .map(|u| format!("{u}/#service={}", e.service)),
            )
        };
        if book.sent.get(&context) == Some(&(state, description.clone())) {
            return vec![];
        }
        book.sent
            .insert(context.clone(), (state, description.clone()));
        vec![CommitStatus {
            sha,
            state,
            context,
            description,
            target_url: link,
        }]
    }
}

/// Statuses waiting to be sent: the newest per (commit, context), in order.
#[derive(Default)]
struct Outbox {
    order: VecDeque<(String, String)>,
    latest: BTreeMap<(String, String), CommitStatus>,
}

impl Outbox {
    fn put(&mut self, s: CommitStatus) {
        let key = (s.sha.clone(), s.context.clone());
        if self.latest.insert(key.clone(), s).is_none() {
            self.order.push_back(key);
        }
    }
    fn take(&mut self) -> Option<CommitStatus> {
        let key = self.order.pop_front()?;
        self.latest.remove(&key)
    }
}

/// Starts the background tasks: commit statuses (when `statuses`) and the
/// revert pull requests' follow-up, both fed by the hub's events. Calls are
/// at least `spacing` apart; a rate limit is waited out in the task.
pub fn follow(
    host: GitHost,
    src: Arc<GitSource>,
    hub: &Hub,
    statuses: bool,
    spacing: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut rx = hub.subscribe();
    let host = host.with_max_wait(Duration::from_secs(3600));
    let outbox = Arc::new(Mutex::new(Outbox::default()));
    let ready = Arc::new(Notify::new());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<FollowMsg>();
    let sender = {
        let (host, outbox, ready) = (host.clone(), outbox.clone(), ready.clone());
        tokio::spawn(async move {
            loop {
                let next = outbox.lock().expect("outbox lock").take();
                let Some(s) = next else {
                    ready.notified().await;
                    continue;
                };
                if let Err(e) = host.set_status(&s).await {
                    tracing::warn!(commit = %s.sha, context = %s.context, error = %e, "cannot set the commit status");
                }
                tokio::time::sleep(spacing).await;
            }
        })
    };
    let follower = {
        let mut f = Follower::new(host.clone(), src);
        tokio::spawn(async move {
            while let Some(m) = done_rx.recv().await {
                match m {
                    FollowMsg::Completed {
                        service,
                        commit,
                        rollback,
                    } => f.completed(&service, &commit, rollback).await,
                    FollowMsg::Reverted => f.forget_listing(),
                }
            }
        })
    };
    let mut book = StatusBook::new(host.cfg.status_aggregate_above, host.cfg.public_url.clone());
    tokio::spawn(async move {
        loop {
            match rx.recv().await.map(Arc::unwrap_or_clone) {
                Ok(Event::Rollout { entry }) => {
                    if statuses {
                        let out = book.observe(&entry);
                        if !out.is_empty() {
                            let mut ob = outbox.lock().expect("outbox lock");
                            for s in out {
                                ob.put(s);
                            }
                            drop(ob);
                            ready.notify_one();
                        }
                    }
                    if entry.result == Phase::Complete
                        && let Some(c) = &entry.commit
                    {
                        let _ = done_tx.send(FollowMsg::Completed {
                            service: entry.service.clone(),
                            commit: c.sha.clone(),
                            rollback: entry.rollback,
                        });
                    }
                }
                Ok(Event::Revert { .. }) => {
                    let _ = done_tx.send(FollowMsg::Reverted);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "git host follower fell behind the event stream");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        sender.abort();
        follower.abort();
    })
}

enum FollowMsg {
    Completed {
        service: String,
        commit: String,
        rollback: bool,
    },
    Reverted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::CommitInfo;
    use crate::manifest::Revision;

    fn entry(
        service: &str,
        sha: &str,
        result: Phase,
        rollback: bool,
        reason: &str,
    ) -> HistoryEntry {
        HistoryEntry {
            service: service.into(),
            commit: Some(CommitInfo {
                sha: sha.into(),
                summary: "s".into(),
                author: "a".into(),
                time: 0,
            }),
            from_revision: None,
            to_revision: Revision::from("abcdef0123"),
            started_at: crate::time::Time::from_millis(0),
            ended_at: None,
            result,
            reason: reason.into(),
            rollback,
            revert_commit: None,
        }
    }

    fn brief(v: Vec<CommitStatus>) -> Vec<(String, StatusState, String)> {
        v.into_iter()
            .map(|s| (s.context, s.state, s.description))
            .collect()
    }

    #[test]
    fn per_service_pending_then_success_or_failure_deduplicated() {
        let mut b = StatusBook::new(20, Some("https://floyd.example.com/".into()));
        let p = b.observe(&entry("web", "c1", Phase::Progressing, false, ""));
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].target_url.as_deref(),
            Some("https://floyd.example.com/#service=web")
        );
        assert_eq!(
            brief(p),
            vec![(
                "floyd/web".into(),
                StatusState::Pending,
                "rolling out revision abcdef0123".into()
            )]
        );
        assert!(
            b.observe(&entry("web", "c1", Phase::Progressing, false, ""))
                .is_empty(),
            "same status, not sent twice"
        );
        assert_eq!(
            brief(b.observe(&entry("api", "c1", Phase::Progressing, false, "")))[0].0,
            "floyd/api"
        );
        assert_eq!(
            brief(b.observe(&entry("web", "c1", Phase::Complete, false, ""))),
            vec![(
                "floyd/web".into(),
                StatusState::Success,
                "revision abcdef0123 is Complete".into()
            )]
        );
        assert_eq!(
            brief(b.observe(&entry(
                "api",
                "c1",
                Phase::Failed,
                false,
                "deadline exceeded"
            ))),
            vec![(
                "floyd/api".into(),
                StatusState::Failure,
                "deadline exceeded".into()
            )]
        );
        assert!(
            b.observe(&entry("api", "c1", Phase::Complete, true, ""))
                .is_empty(),
            "the rollback's completion does not turn the failed commit green"
        );
    }

    #[test]
    fn above_the_count_one_aggregated_status() {
        let mut b = StatusBook::new(2, None);
        b.observe(&entry("a", "c", Phase::Progressing, false, ""));
        b.observe(&entry("b", "c", Phase::Progressing, false, ""));
        let s = brief(b.observe(&entry("c", "c", Phase::Progressing, false, "")));
        assert_eq!(
            s,
            vec![(
                "floyd".into(),
                StatusState::Pending,
                "3 services: 0 complete, 3 rolling out, 0 failed".into()
            )]
        );
        b.observe(&entry("a", "c", Phase::Complete, false, ""));
        b.observe(&entry("b", "c", Phase::Complete, false, ""));
        let s = brief(b.observe(&entry("c", "c", Phase::Complete, false, "")));
        assert_eq!(s[0].1, StatusState::Success);
        let s = brief(b.observe(&entry("a", "c", Phase::Failed, false, "x")));
        assert_eq!(
            s,
            vec![(
                "floyd".into(),
                StatusState::Failure,
                "3 services: 2 complete, 0 rolling out, 1 failed".into()
            )]
        );
    }

    #[test]
    fn outbox_keeps_the_newest_per_context_in_first_order() {
        let mut o = Outbox::default();
        let s = |ctx: &str, state| CommitStatus {
            sha: "c".into(),
            state,
            context: ctx.into(),
            description: String::new(),
            target_url: None,
        };
        o.put(s("floyd/a", StatusState::Pending));
        o.put(s("floyd/b", StatusState::Pending));
        o.put(s("floyd/a", StatusState::Success));
        assert_eq!(o.take().unwrap().state, StatusState::Success);
        assert_eq!(o.take().unwrap().context, "floyd/b");
        assert!(o.take().is_none());
    }

    #[test]
    fn short_cuts_and_joins_lines() {
        assert_eq!(short("a\n  b", 10), "a b");
        assert_eq!(short("abcdefghij", 5), "abcd…");
    }
}
