//! The GitOps policy as tables: each row replays a sequence of commits and
//! rollout outcomes through the real policy functions (`on_commit`,
//! `on_complete`, `on_failure`, `plan_revert`) against a toy Git history,
//! and checks what was rolled back, restored, reverted or left to a person.

use super::*;
use crate::engine::Command;
use crate::manifest::InstanceTemplate;
use crate::runtime::ObservedRevision;
use crate::source::CommitFact;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// One service's desired state in the toy repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct St {
    /// The instance template (a new one is a new revision).
    template: u8,
    replicas: u32,
    /// A setting that moves no instance (the progress deadline).
    deadline: u32,
}

const fn st(template: u8, replicas: u32) -> St {
    St {
        template,
        replicas,
        deadline: 600,
    }
}

fn spec_of(s: St) -> ServiceSpec {
    let mut spec = ServiceSpec::with_defaults(
        s.replicas,
        InstanceTemplate::command(["app", &format!("v{}", s.template)]),
    );
    spec.progress_deadline_seconds = s.deadline;
    spec
}

fn rev_of(s: St) -> Revision {
    crate::manifest::revision_of(&spec_of(s).template)
}

#[derive(Debug, Clone)]
struct ToyCommit {
    sha: String,
    parent: Option<usize>,
    tree: BTreeMap<&'static str, St>,
    reverts: Vec<String>,
}

/// What the driver saw happen, for the assertions.
#[derive(Debug, Clone, PartialEq)]
enum Happened {
    Reverted {
        service: &'static str,
        commits: Vec<String>,
        revert: String,
    },
    AlreadyReverted {
        service: &'static str,
        by: String,
    },
    Degraded {
        service: &'static str,
        why: String,
    },
    Restored {
        service: &'static str,
        how: Restore,
    },
}

/// A toy branch, the controller's records and a log of decisions.
#[derive(Default)]
struct World {
    commits: Vec<ToyCommit>,
    tip: Option<usize>,
    records: BTreeMap<&'static str, RolloutRecord>,
    log: Vec<Happened>,
    now: u64,
    no_revert: bool,
    /// Every revision ever seen, for the runtime's observation (rollbacks).
    seen: Vec<Revision>,
}

fn info(sha: &str) -> CommitInfo {
    CommitInfo {
        sha: sha.to_string(),
        summary: sha.to_string(),
        author: "A <a@x>".into(),
        time: 0,
    }
}

impl World {
    fn now(&mut self) -> Time {
        self.now += 1;
        Time(self.now * 1000)
    }
    fn idx(&self, sha: &str) -> usize {
        self.commits.iter().position(|c| c.sha == sha).unwrap()
    }
    fn tree(&self) -> BTreeMap<&'static str, St> {
        self.tip
            .map(|t| self.commits[t].tree.clone())
            .unwrap_or_default()
    }

    /// A person's commit on the branch: `set` services to a state (None: removed).
    fn commit(&mut self, sha: &str, set: &[(&'static str, Option<St>)]) {
        let mut tree = self.tree();
        for (s, v) in set {
            match v {
                Some(v) => tree.insert(s, *v),
                None => tree.remove(s),
            };
        }
        self.push(sha, tree, Vec::new());
        self.sync();
    }

    fn push(&mut self, sha: &str, tree: BTreeMap<&'static str, St>, reverts: Vec<String>) {
        self.commits.push(ToyCommit {
            sha: sha.to_string(),
            parent: self.tip,
            tree,
            reverts,
        });
        self.tip = Some(self.commits.len() - 1);
    }

    /// Force-push: the branch becomes `sha` on an unrelated root.
    fn rewrite(&mut self, sha: &str, set: &[(&'static str, St)]) {
        let tree = set.iter().map(|(s, v)| (*s, *v)).collect();
        self.tip = None;
        self.push(sha, tree, Vec::new());
        self.sync();
    }

    /// The controller syncs the tip: every service's record meets the commit.
    fn sync(&mut self) {
        let Some(t) = self.tip else { return };
        let c = self.commits[t].clone();
        let now = self.now();
        for (name, s) in &c.tree {
            let rev = rev_of(*s);
            if !self.seen.contains(&rev) {
                self.seen.push(rev.clone());
            }
            let spec = spec_of(*s);
            let files = vec![format!("services/{name}.yaml")];
            let ci = info(&c.sha);
            let r = Rendered {
                commit: &ci,
                revision: &rev,
                spec: &spec,
                files: &files,
            };
            let change = Change::Create {
                revision: rev.clone(),
            };
            match on_commit(self.records.get(name), &r, &change, now) {
                CommitDecision::Keep => {}
                CommitDecision::Update(rec) => {
                    self.records.insert(name, *rec);
                }
                CommitDecision::Start { record, .. } => {
                    self.records.insert(name, *record);
                }
            }
        }
    }

    /// The engine completed the service's current rollout.
    fn complete(&mut self, svc: &'static str) {
        let rec = self.records.get_mut(svc).unwrap();
        rec.state.phase = if rec.state.is_rollback {
            Phase::RolledBack
        } else {
            Phase::Complete
        };
        rec.state.stable = Some(rec.state.target.clone());
        on_complete(rec);
    }

    /// The engine failed these services' rollouts in one step (infeasible:
    /// at t=0, GPU arithmetic); their failures are handled in turn, then the
    /// tip is synced (as the controller does after a batch).
    fn fail_all(&mut self, svcs: &[(&'static str, bool)]) {
        for (svc, infeasible) in svcs {
            self.fail_one(svc, *infeasible);
        }
        self.sync();
    }

    fn fail(&mut self, svc: &'static str, infeasible: bool) {
        self.fail_all(&[(svc, infeasible)]);
    }

    fn fail_one(&mut self, svc: &'static str, infeasible: bool) {
        let now = self.now();
        let mut rec = self.records[svc].clone();
        rec.state.phase = Phase::Failed;
        rec.state.reason = if infeasible {
            "3 instances × 1 needs 3 GPUs (A100), 2 exist".into()
        } else {
            "progress deadline exceeded".into()
        };
        rec.state.progress.infeasible = infeasible;
        let observed = Observed {
            revisions: self
                .seen
                .iter()
                .map(|r| ObservedRevision {
                    revision: r.clone(),
                    created_at: Time(0),
                    desired: 0,
                    instances: vec![],
                    template: Default::default(),
                })
                .collect(),
            ..Observed::default()
        };
        let failed_is_floyd_revert = rec
            .commit
            .as_ref()
            .is_some_and(|c| !self.commits[self.idx(&c.sha)].reverts.is_empty());
        let plan = on_failure(
            &rec,
            &observed,
            FailureOptions {
                no_revert: self.no_revert,
                failed_is_floyd_revert,
            },
            now,
        );
        if !matches!(plan.restore, Restore::None { .. }) {
            self.log.push(Happened::Restored {
                service: svc,
                how: plan.restore.clone(),
            });
        }
        let mut record = plan.record;
        match plan.revert {
            RevertIntent::Skip => {}
            RevertIntent::Degrade(why) => self.log.push(Happened::Degraded { service: svc, why }),
            RevertIntent::Revert { failed, base } => {
                let facts = self.facts(svc, &failed.sha, &base);
                match plan_revert(&facts, &failed.sha, &base) {
                    RevertPlan::Revert(list) => {
                        let sha = format!("R{}", self.commits.len());
                        self.apply_revert(&sha, &list);
                        record.revert_commit = Some(sha.clone());
                        self.log.push(Happened::Reverted {
                            service: svc,
                            commits: list,
                            revert: sha,
                        });
                    }
                    RevertPlan::AlreadyReverted { by } => {
                        self.log
                            .push(Happened::AlreadyReverted { service: svc, by });
                    }
                    RevertPlan::ChangedSince(c) => {
                        let why = format!("changed again in {}", c.join(","));
                        record.degraded = Some(why.clone());
                        self.log.push(Happened::Degraded { service: svc, why });
                    }
                    RevertPlan::NothingToRevert => self.log.push(Happened::Degraded {
                        service: svc,
                        why: "nothing to revert".into(),
                    }),
                    RevertPlan::Refuse(why) => {
                        record.degraded = Some(why.clone());
                        self.log.push(Happened::Degraded { service: svc, why });
                    }
                }
            }
        }
        self.records.insert(svc, record);
    }

    fn changed(&self, i: usize, svc: &str) -> bool {
        let c = &self.commits[i];
        let before = c.parent.and_then(|p| self.commits[p].tree.get(svc));
        c.tree.get(svc) != before
    }

    fn fact(&self, i: usize, svc: &str) -> CommitFact {
        CommitFact {
            sha: self.commits[i].sha.clone(),
            changed_service: self.changed(i, svc),
            reverts: self.commits[i].reverts.clone(),
            unrenderable: false,
        }
    }

    /// What the source would gather.
    fn facts(&self, svc: &str, failed: &str, base: &str) -> RevertFacts {
        let (f, b) = (self.idx(failed), self.idx(base));
        let ancestors = |mut i: Option<usize>| {
            let mut v = Vec::new();
            while let Some(x) = i {
                v.push(x);
                i = self.commits[x].parent;
            }
            v
        };
        let from_tip = ancestors(self.tip);
        let from_failed = ancestors(Some(f));
        let failed_on_branch = from_tip.contains(&f);
        let base_is_ancestor = from_failed.contains(&b);
        let chain = base_is_ancestor.then(|| {
            from_failed
                .iter()
                .take_while(|&&x| x != b)
                .map(|&x| self.fact(x, svc))
                .collect()
        });
        let since = if failed_on_branch {
            from_tip
                .iter()
                .take_while(|&&x| x != f)
                .map(|&x| self.fact(x, svc))
                .collect()
        } else {
            vec![]
        };
        RevertFacts {
            failed_on_branch,
            base_is_ancestor,
            chain,
            since,
        }
    }

    /// A revert of `list` (newest first) on the tip, like `git revert`.
    fn apply_revert(&mut self, sha: &str, list: &[String]) {
        let mut tree = self.tree();
        for s in list {
            let c = &self.commits[self.idx(s)];
            let parent = c
                .parent
                .map(|p| self.commits[p].tree.clone())
                .unwrap_or_default();
            for name in c
                .tree
                .keys()
                .chain(parent.keys())
                .copied()
                .collect::<Vec<_>>()
            {
                if c.tree.get(name) != parent.get(name) {
                    match parent.get(name) {
                        Some(v) => tree.insert(name, *v),
                        None => tree.remove(name),
                    };
                }
            }
        }
        self.push(sha, tree, list.to_vec());
    }

    fn reverts(&self) -> Vec<(&'static str, Vec<String>)> {
        self.log
            .iter()
            .filter_map(|h| match h {
                Happened::Reverted {
                    service, commits, ..
                } => Some((*service, commits.clone())),
                _ => None,
            })
            .collect()
    }

    fn degraded(&self, svc: &str) -> Option<String> {
        self.log.iter().rev().find_map(|h| match h {
            Happened::Degraded { service, why } if *service == svc => Some(why.clone()),
            _ => None,
        })
    }

    fn tip_state(&self, svc: &str) -> Option<St> {
        self.tree().get(svc).copied()
    }

    fn rec(&self, svc: &str) -> &RolloutRecord {
        &self.records[svc]
    }

    fn last_complete(&self, svc: &str) -> Option<String> {
        self.rec(svc)
            .last_complete
            .as_ref()
            .map(|d| d.commit.sha.clone())
    }
}

fn v(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

const WEB: &str = "web";
const API: &str = "api";

#[test]
fn replicas_only_change_that_cannot_fit_after_complete_reverts_that_commit() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.commit("B", &[(WEB, Some(st(2, 2)))]);
    w.complete(WEB);
    assert_eq!(w.last_complete(WEB).as_deref(), Some("B"));
    w.commit("C", &[(WEB, Some(st(2, 3)))]);
    assert_eq!(
        w.rec(WEB).spec.replicas,
        3,
        "the scale is the new desired state"
    );
    w.fail(WEB, true);
    assert_eq!(w.reverts(), vec![(WEB, v(&["C"]))], "C is blamed, not B");
    assert_eq!(w.tip_state(WEB), Some(st(2, 2)));
    let rec = w.rec(WEB);
    assert_eq!(rec.spec.replicas, 2, "B's desired state carries on");
    assert_eq!(rec.state.phase, Phase::Complete);
    assert!(rec.git_agrees && rec.rejected.is_none(), "{rec:?}");
    assert_eq!(
        w.last_complete(WEB).as_deref(),
        Some("R3"),
        "the revert is the last complete commit now"
    );
}

#[test]
fn replicas_only_change_that_cannot_fit_during_a_rollout_keeps_the_rollout() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.commit("B", &[(WEB, Some(st(2, 2)))]);
    let b_target = w.rec(WEB).state.target.clone();
    w.commit("C", &[(WEB, Some(st(2, 3)))]);
    w.fail(WEB, true);
    assert_eq!(w.reverts(), vec![(WEB, v(&["C"]))]);
    let rec = w.rec(WEB);
    assert_eq!(rec.state.target, b_target, "release 2 is not thrown away");
    assert_eq!(rec.state.phase, Phase::Progressing);
    assert!(!rec.state.is_rollback);
    assert_eq!(rec.spec.replicas, 2);
    // B's rollout then completes: Git (the revert) and the runtime agree.
    w.complete(WEB);
    assert_eq!(w.last_complete(WEB).as_deref(), Some("R3"));
    assert_eq!(w.tip_state(WEB), Some(st(2, 2)));
}

#[test]
fn a_failure_that_superseded_the_first_rollout_is_reverted_to_the_creating_commit() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.commit("B", &[(WEB, Some(st(2, 2)))]);
    w.fail(WEB, false);
    assert_eq!(w.reverts(), vec![(WEB, v(&["B"]))]);
    assert_eq!(w.tip_state(WEB), Some(st(1, 2)), "Git back to A");
    let rec = w.rec(WEB);
    assert_eq!(rec.state.target, rev_of(st(1, 2)), "A's revision rolls out");
    assert_eq!(rec.state.phase, Phase::Progressing);
    w.complete(WEB);
    assert_eq!(w.last_complete(WEB).as_deref(), Some("R2"));
}

#[test]
fn a_failing_creating_commit_is_left_to_a_person() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.fail(WEB, false);
    assert!(w.reverts().is_empty());
    let why = w.degraded(WEB).unwrap();
    assert!(why.contains("commit A created the service"), "{why}");
    // Unrelated commits do not roll the failed state out again.
    w.commit("B", &[(API, Some(st(1, 1)))]);
    assert_eq!(w.rec(WEB).state.phase, Phase::Failed);
}

#[test]
fn rewritten_history_is_not_reverted() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.rewrite("X", &[(WEB, st(1, 2))]);
    w.commit("Y", &[(WEB, Some(st(3, 2)))]);
    w.fail(WEB, false);
    assert!(w.reverts().is_empty());
    let why = w.degraded(WEB).unwrap();
    assert!(why.contains("history was rewritten"), "{why}");
    assert!(w.rec(WEB).degraded.is_some());
    assert_eq!(w.tip_state(WEB), Some(st(3, 2)), "nothing pushed");
}

#[test]
fn two_services_broken_by_one_commit_end_in_one_revert() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2))), (API, Some(st(1, 2)))]);
    w.complete(WEB);
    w.complete(API);
    w.commit("B", &[(WEB, Some(st(2, 2))), (API, Some(st(2, 2)))]);
    w.fail_all(&[(WEB, false), (API, false)]);
    assert_eq!(w.reverts(), vec![(WEB, v(&["B"]))], "one revert");
    assert!(
        w.log.contains(&Happened::AlreadyReverted {
            service: API,
            by: "R2".into()
        }),
        "{:?}",
        w.log
    );
    assert_eq!(w.tip_state(API), Some(st(1, 2)));
    for s in [WEB, API] {
        w.complete(s);
        assert_eq!(w.last_complete(s).as_deref(), Some("R2"), "{s}");
        assert!(w.rec(s).git_agrees);
    }
}

#[test]
fn a_promote_queued_for_one_revision_is_not_carried_to_the_next() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.commit("B", &[(WEB, Some(st(2, 2)))]);
    w.records
        .get_mut(WEB)
        .unwrap()
        .state
        .pending_commands
        .push(Command::Promote);
    w.commit("C", &[(WEB, Some(st(3, 2)))]);
    let rec = w.rec(WEB);
    assert_eq!(rec.state.target, rev_of(st(3, 2)));
    assert!(rec.state.pending_commands.is_empty(), "{rec:?}");
}

#[test]
fn a_failing_floyd_revert_is_not_reverted_again() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    // A commit with Floyd's revert trailers that breaks web.
    w.push(
        "R",
        [(WEB, st(9, 2))].into_iter().collect(),
        v(&["0123456789abcdef"]),
    );
    w.sync();
    w.fail(WEB, false);
    assert!(w.reverts().is_empty(), "no revert of a revert");
    let why = w.degraded(WEB).unwrap();
    assert!(why.contains("not reverting again"), "{why}");
    assert!(
        w.log.iter().any(|h| matches!(
            h,
            Happened::Restored {
                how: Restore::Rollback { .. },
                ..
            }
        )),
        "still rolled back: {:?}",
        w.log
    );
    assert!(w.rec(WEB).degraded.is_some());
}

#[test]
fn a_fix_forward_before_the_revert_is_followed_not_fought() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.commit("B", &[(WEB, Some(st(2, 2)))]);
    // A person's fix lands before Floyd gets to revert.
    w.push("C", [(WEB, st(3, 2))].into_iter().collect(), vec![]);
    w.fail(WEB, false);
    assert!(w.reverts().is_empty());
    assert!(w.degraded(WEB).unwrap().contains("changed again in C"));
    // The sync of C rolls the fix out.
    let rec = w.rec(WEB);
    assert_eq!(rec.state.target, rev_of(st(3, 2)));
    assert_eq!(rec.state.phase, Phase::Progressing);
    assert!(rec.degraded.is_none());
}

#[test]
fn revert_disabled_rolls_back_and_holds_while_git_still_says_so() {
    let mut w = World {
        no_revert: true,
        ..World::default()
    };
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.commit("B", &[(WEB, Some(st(2, 2)))]);
    w.fail(WEB, false);
    assert!(w.reverts().is_empty());
    assert!(matches!(
        w.log[0],
        Happened::Restored {
            how: Restore::Rollback { .. },
            ..
        }
    ));
    let target = w.rec(WEB).state.target.clone();
    assert_eq!(target, rev_of(st(1, 2)));
    w.complete(WEB);
    // Another service's commit: web still renders B's bad state: held back.
    w.commit("C", &[(API, Some(st(1, 1)))]);
    assert_eq!(w.rec(WEB).state.target, target);
    assert_eq!(w.rec(WEB).state.phase, Phase::RolledBack);
    // A person reverts by hand: Git agrees again.
    w.commit("D", &[(WEB, Some(st(1, 2)))]);
    assert!(w.rec(WEB).git_agrees);
    assert_eq!(w.last_complete(WEB).as_deref(), Some("D"));
}

#[test]
fn a_pruned_service_stays_pruned_when_another_fails_later() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2))), (API, Some(st(1, 2)))]);
    w.complete(WEB);
    w.complete(API);
    w.commit("B", &[(API, None)]);
    w.commit("C", &[(WEB, Some(st(2, 2)))]);
    w.fail(WEB, false);
    assert_eq!(w.reverts(), vec![(WEB, v(&["C"]))], "B did not change web");
    assert_eq!(w.tip_state(API), None, "api stays removed");
    assert_eq!(w.tip_state(WEB), Some(st(1, 2)));
}

#[test]
fn a_commit_that_removes_one_service_and_breaks_another_is_reverted_whole() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2))), (API, Some(st(1, 2)))]);
    w.complete(WEB);
    w.complete(API);
    w.commit("B", &[(API, None), (WEB, Some(st(2, 2)))]);
    w.fail(WEB, false);
    assert_eq!(w.reverts(), vec![(WEB, v(&["B"]))]);
    assert_eq!(
        w.tip_state(API),
        Some(st(1, 2)),
        "git revert restores api too"
    );
}

#[test]
fn a_template_change_after_a_scale_rolls_back_to_the_scaled_state() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.commit("B", &[(WEB, Some(st(1, 3)))]);
    w.complete(WEB);
    assert_eq!(w.last_complete(WEB).as_deref(), Some("B"));
    w.commit("C", &[(WEB, Some(st(2, 3)))]);
    w.fail(WEB, false);
    assert_eq!(w.reverts(), vec![(WEB, v(&["C"]))]);
    let rec = w.rec(WEB);
    assert!(rec.state.is_rollback);
    assert_eq!(rec.state.target, rev_of(st(1, 3)));
    assert_eq!(rec.spec.replicas, 3, "B's replicas, not A's");
}

#[test]
fn a_superseding_failure_reverts_every_commit_since_the_last_complete_one() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.commit("B", &[(WEB, Some(st(2, 2)))]);
    w.commit("X", &[(API, Some(st(1, 1)))]);
    w.commit("C", &[(WEB, Some(st(3, 2)))]);
    w.fail(WEB, false);
    assert_eq!(
        w.reverts(),
        vec![(WEB, v(&["C", "B"]))],
        "newest first, X untouched"
    );
    assert_eq!(w.tip_state(WEB), Some(st(1, 2)));
    assert_eq!(w.tip_state(API), Some(st(1, 1)));
    assert_eq!(w.rec(WEB).state.target, rev_of(st(1, 2)));
}

#[test]
fn a_settings_only_change_completes_at_once_and_becomes_the_last_complete_commit() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    let mut s = st(1, 2);
    s.deadline = 30;
    w.commit("B", &[(WEB, Some(s))]);
    assert_eq!(w.rec(WEB).state.phase, Phase::Complete);
    assert_eq!(w.rec(WEB).spec.progress_deadline_seconds, 30);
    assert_eq!(w.last_complete(WEB).as_deref(), Some("B"));
}

#[test]
fn a_revert_and_what_it_reverted_cancel_out_in_a_later_revert() {
    let mut w = World::default();
    w.commit("A", &[(WEB, Some(st(1, 2)))]);
    w.complete(WEB);
    w.commit("B", &[(WEB, Some(st(2, 2)))]);
    w.commit("C", &[(WEB, Some(st(2, 3)))]);
    w.fail(WEB, true); // C reverted, B resumes
    let (_, first) = w.reverts()[0].clone();
    assert_eq!(first, v(&["C"]));
    // B then fails for real: B, C and C's revert since A. C and its revert
    // cancel out; only B is reverted.
    w.fail(WEB, false);
    assert_eq!(w.reverts()[1], (WEB, v(&["B"])), "{:?}", w.log);
    assert_eq!(w.tip_state(WEB), Some(st(1, 2)));
}

// ---- plan_revert on its own -------------------------------------------------

fn fact(sha: &str, changed: bool) -> CommitFact {
    CommitFact {
        sha: sha.into(),
        changed_service: changed,
        reverts: vec![],
        unrenderable: false,
    }
}

#[test]
fn plan_revert_table() {
    let ok = |chain: Vec<CommitFact>, since: Vec<CommitFact>| RevertFacts {
        failed_on_branch: true,
        base_is_ancestor: true,
        chain: Some(chain),
        since,
    };
    let floyd = |sha: &str, of: &[&str]| CommitFact {
        sha: sha.into(),
        changed_service: true,
        reverts: v(of),
        unrenderable: false,
    };
    type Row = (&'static str, RevertFacts, RevertPlan);
    let rows: Vec<Row> = vec![
        (
            "only commits that changed the service, newest first",
            ok(
                vec![fact("c", true), fact("x", false), fact("b", true)],
                vec![],
            ),
            RevertPlan::Revert(v(&["c", "b"])),
        ),
        (
            "nothing changed it",
            ok(vec![fact("c", false)], vec![]),
            RevertPlan::NothingToRevert,
        ),
        (
            "a person changed it after",
            ok(
                vec![fact("c", true)],
                vec![fact("d", false), fact("e", true)],
            ),
            RevertPlan::ChangedSince(v(&["e"])),
        ),
        (
            "already reverted by Floyd (another service's failure)",
            ok(vec![fact("c", true)], vec![floyd("r", &["c"])]),
            RevertPlan::AlreadyReverted { by: "r".into() },
        ),
        (
            "unrelated commits after are fine",
            ok(vec![fact("c", true)], vec![fact("d", false)]),
            RevertPlan::Revert(v(&["c"])),
        ),
        (
            "a revert and its commit cancel out",
            ok(
                vec![
                    fact("d", true),
                    floyd("r", &["c"]),
                    fact("c", true),
                    fact("b", true),
                ],
                vec![],
            ),
            RevertPlan::Revert(v(&["d", "b"])),
        ),
    ];
    for (what, facts, want) in rows {
        assert_eq!(plan_revert(&facts, "c", "a"), want, "{what}");
    }
    let rewritten = RevertFacts {
        failed_on_branch: true,
        base_is_ancestor: false,
        chain: None,
        since: vec![],
    };
    assert!(
        matches!(plan_revert(&rewritten, "c", "a"), RevertPlan::Refuse(m) if m.contains("history was rewritten"))
    );
    let gone = RevertFacts::default();
    assert!(
        matches!(plan_revert(&gone, "c", "a"), RevertPlan::Refuse(m) if m.contains("no longer on the branch"))
    );
    let side = RevertFacts {
        failed_on_branch: true,
        base_is_ancestor: true,
        chain: None,
        since: vec![],
    };
    assert!(
        matches!(plan_revert(&side, "c", "a"), RevertPlan::Refuse(m) if m.contains("first-parent"))
    );
}

// ---- property: reverts restore the base and touch nothing else ---------------

#[derive(Debug, Clone)]
enum Step {
    Commit(&'static str, St),
    Complete(&'static str),
    Fail(&'static str, bool),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let svc = prop_oneof![Just(WEB), Just(API)];
    let step = prop_oneof![
        3 => (svc.clone(), 1u8..4, 1u32..4).prop_map(|(s, t, r)| Step::Commit(s, st(t, r))),
        2 => svc.clone().prop_map(Step::Complete),
        2 => (svc, any::<bool>()).prop_map(|(s, i)| Step::Fail(s, i)),
    ];
    proptest::collection::vec(step, 1..24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn reverts_restore_the_base_and_never_touch_commits_that_did_not_change_the_service(
        seq in steps()
    ) {
        let mut w = World::default();
        let mut n = 0;
        for step in seq {
            match step {
                Step::Commit(s, state) => {
                    n += 1;
                    w.commit(&format!("c{n}"), &[(s, Some(state))]);
                }
                Step::Complete(s) => {
                    if w.records.get(s).is_some_and(|r| !r.state.phase.is_terminal()) {
                        w.complete(s);
                    }
                }
                Step::Fail(s, infeasible) => {
                    let Some(r) = w.records.get(s) else { continue };
                    if r.state.phase.is_terminal() {
                        continue;
                    }
                    // Infeasible only at t=0 of a new desired state.
                    let infeasible = infeasible && !r.state.is_rollback;
                    let before_log = w.log.len();
                    let failed = r.commit.clone().unwrap();
                    let base_expected = if infeasible && r.previous.is_some() {
                        r.previous.as_ref().unwrap().commit.clone().map(|c| c.sha)
                    } else {
                        r.last_complete.as_ref().map(|d| d.commit.sha.clone())
                            .or(r.created_by.as_ref().map(|c| c.sha.clone()))
                    };
                    let tip_before = w.tip.unwrap();
                    w.fail(s, infeasible);
                    for h in &w.log[before_log..] {
                        if let Happened::Reverted { service, commits, revert } = h {
                            let base = base_expected.clone().expect("a revert has a base");
                            prop_assert_ne!(&base, &failed.sha);
                            // Every reverted commit changed the failed service.
                            for c in commits {
                                prop_assert!(w.changed(w.idx(c), service), "{} did not change {}", c, service);
                            }
                            // The service is back to the base's state in the revert's tree.
                            let r = w.idx(revert);
                            let b = w.idx(&base);
                            prop_assert_eq!(
                                w.commits[r].tree.get(service),
                                w.commits[b].tree.get(service),
                                "after {:?}", w.log
                            );
                            // Only what the reverted commits changed moved.
                            for (name, st_after) in &w.commits[r].tree {
                                let touched = commits.iter().any(|c| w.changed(w.idx(c), name));
                                if !touched {
                                    prop_assert_eq!(Some(st_after), w.commits[tip_before].tree.get(name));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---- plan_render_revert -----------------------------------------------------

#[test]
fn plan_render_revert_table() {
    let c = |sha: &str, broken: bool| CommitFact {
        sha: sha.into(),
        unrenderable: broken,
        ..CommitFact::default()
    };
    let floyd = |sha: &str, broken: bool, of: &[&str]| CommitFact {
        sha: sha.into(),
        unrenderable: broken,
        reverts: v(of),
        ..CommitFact::default()
    };
    let facts = |chain: Option<Vec<CommitFact>>, since: Vec<CommitFact>| RevertFacts {
        failed_on_branch: true,
        base_is_ancestor: true,
        chain,
        since,
    };
    let refuse =
        |p: &RevertPlan, needle: &str| matches!(p, RevertPlan::Refuse(m) if m.contains(needle));
    type Row = (&'static str, RevertFacts, fn(&RevertPlan) -> bool);
    let rows: Vec<Row> = vec![
        (
            "one broken commit on the synced one: it is reverted",
            facts(Some(vec![c("d", true)]), vec![]),
            |p| *p == RevertPlan::Revert(v(&["d"])),
        ),
        (
            "a streak: the first broken commit, not the good work after it",
            facts(
                Some(vec![c("d", true), c("c", true), c("b", false)]),
                vec![],
            ),
            |p| *p == RevertPlan::Revert(v(&["c"])),
        ),
        (
            "broken, fixed, broken again: only the current streak counts",
            facts(
                Some(vec![c("e", true), c("d", false), c("c", true)]),
                vec![],
            ),
            |p| *p == RevertPlan::Revert(v(&["e"])),
        ),
        (
            "the tip renders now: nothing to revert",
            facts(Some(vec![c("d", false)]), vec![]),
            |p| *p == RevertPlan::NothingToRevert,
        ),
        (
            "a Floyd revert that does not render is never reverted",
            facts(Some(vec![floyd("r", true, &["d"]), c("d", false)]), vec![]),
            |p| matches!(p, RevertPlan::Refuse(m) if m.contains("Floyd revert")),
        ),
        (
            "already reverted by Floyd on the branch",
            facts(Some(vec![c("d", true)]), vec![floyd("r", false, &["d"])]),
            |p| *p == RevertPlan::AlreadyReverted { by: "r".into() },
        ),
        (
            "a person pushed after the broken tip: left to the next sync",
            facts(Some(vec![c("d", true)]), vec![c("e", true)]),
            |p| *p == RevertPlan::ChangedSince(v(&["e"])),
        ),
        (
            "the synced commit is not on the first-parent chain",
            facts(None, vec![]),
            |p| matches!(p, RevertPlan::Refuse(m) if m.contains("first-parent")),
        ),
    ];
    for (what, f, ok) in rows {
        let plan = plan_render_revert(&f, "d", "base");
        assert!(ok(&plan), "{what}: {plan:?}");
    }
    let rewritten = RevertFacts {
        failed_on_branch: false,
        ..RevertFacts::default()
    };
    assert!(refuse(
        &plan_render_revert(&rewritten, "d", "b"),
        "no longer on the branch"
    ));
    let not_ancestor = RevertFacts {
        failed_on_branch: true,
        base_is_ancestor: false,
        chain: Some(vec![c("d", true)]),
        since: vec![],
    };
    assert!(refuse(
        &plan_render_revert(&not_ancestor, "d", "b"),
        "rewritten"
    ));
}
