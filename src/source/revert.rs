//! Revert commits: the Git facts a revert is planned from (which commits
//! changed a service, first-parent ancestry, Floyd's own reverts), building
//! the revert commit and pushing it. One writer at a time: every fetch and
//! push of the mirror holds [`GitSource::writer`]'s lock, so two services
//! reverting at once take turns and the second sees the first's commit.
//!
//! Which commits to revert is decided by a pure planner the caller passes in
//! (the controller's GitOps policy); this module only gathers and carries out.

use super::mirror::{REVERT_REF, find_commit, summary_of};
use super::tree::{blob_at, list_config_tree, read_blob_within};
use super::{Error, GitSource, signing};
use crate::manifest::tree::{IncrementalRenderer, TreeFile};
use crate::manifest::{Release, Revision, ServiceSpec};
use backon::{BlockingRetryable, ExponentialBuilder};
use git2::{Oid, Repository};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::MutexGuard;
use std::time::Duration;

/// What a revert should undo.
#[derive(Debug, Clone)]
pub struct RevertRequest {
    pub service: String,
    /// The commit whose rollout failed.
    pub failed_commit: String,
    /// The last commit whose desired state of the service completed (or the
    /// commit the failed rollout's chain started from): reverts stop there.
    pub base: String,
    /// Repo-relative files that define the service.
    pub files: Vec<String>,
    /// Where the config lives in the repo (`--path`) and the environment, to
    /// render commits and tell which services a commit changes.
    pub subdir: Option<PathBuf>,
    pub environment: Option<String>,
    /// Revision that failed and revision rolled back to (for the message).
    pub failed_revision: String,
    pub rolled_back_to: String,
    pub reason: String,
    pub author_name: String,
    pub author_email: String,
    /// Set when the failure is that the branch does not render (no rollout
    /// failed): the revert must make it render again, or is not pushed.
    pub render: Option<RenderFailure>,
}

/// A branch tip that does not render, as a revert request carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenderFailure {
    /// The render error (file:line:col: field: message).
    pub error: String,
    /// Commits never to render again (the previous process died rendering
    /// them): they count as not rendering.
    pub unrenderable: Vec<String>,
}

/// The `service` of a render revert request: not a DNS-1123 label, so no
/// service (nor a revert pull request's branch for one) can be named so.
pub const RENDER_REVERT: &str = ".render";

/// One commit as the revert planner needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitFact {
    pub sha: String,
    /// Compared with its first parent, it changed the service (its files or
    /// its rendered desired state).
    pub changed_service: bool,
    /// Shas named by its `Floyd-Revert-Of:` trailers (one of Floyd's reverts).
    pub reverts: Vec<String>,
    /// Its manifests do not render (only gathered for render reverts).
    pub unrenderable: bool,
}

/// What Git says around a failed commit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevertFacts {
    /// The failed commit is the branch tip or an ancestor of it.
    pub failed_on_branch: bool,
    /// `base` is the failed commit or one of its ancestors.
    pub base_is_ancestor: bool,
    /// The first-parent history from the failed commit (included) back to
    /// `base` (excluded), newest first; `None` when walking first parents
    /// never reached `base`.
    pub chain: Option<Vec<CommitFact>>,
    /// Commits on the branch after the failed commit, newest first.
    pub since: Vec<CommitFact>,
}

/// What a revert attempt should do (the planner's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevertPlan {
    /// Revert these commits (newest first) in one commit.
    Revert(Vec<String>),
    /// A Floyd revert on the branch already undid the failed commit.
    AlreadyReverted { by: String },
    /// People changed the service after the failed commit: do not fight them.
    ChangedSince(Vec<String>),
    /// No commit in the range changed the service.
    NothingToRevert,
    /// A person must act (history rewritten, merge order): the reason says so.
    Refuse(String),
}

/// The planner: `(facts, failed sha, base sha) -> plan`.
pub type Planner = fn(&RevertFacts, &str, &str) -> RevertPlan;

/// What happened to a revert request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevertOutcome {
    /// Pushed: the new commit, the commits it reverts (newest first), the
    /// services whose rendered spec it changes (the failed one first).
    Pushed {
        commit: String,
        reverted: Vec<String>,
        services: Vec<String>,
        attempts: u32,
    },
    /// Already undone by this revert commit on the branch.
    AlreadyReverted { by: String },
    /// No commit since the base changed the service.
    NothingToRevert,
    /// The branch changed the service again after the failed commit: a
    /// person is on it; do not fight them.
    ChangedSince { commits: Vec<String> },
    /// Not reverted: a person must act (the reason says why).
    Refused { reason: String },
    /// The branch refuses direct pushes (or `--revert-via pull-request`):
    /// the revert commit is on `branch`, waiting in the pull request at `url`.
    Proposed {
        branch: String,
        commit: String,
        reverted: Vec<String>,
        url: String,
    },
}

/// Retries after a rejected push before giving up on a branch that keeps moving.
const MAX_RETRIES: usize = 6;
/// Commits walked at most looking for the base.
const MAX_WALK: usize = 10_000;

/// The mirror's single writer: fetches and pushes while holding it.
pub struct GitWriter<'a> {
    src: &'a GitSource,
    _guard: MutexGuard<'a, ()>,
}

impl GitSource {
    /// Takes the mirror's write lock (fetches and revert pushes take turns).
    pub fn writer(&self) -> GitWriter<'_> {
        let guard = self
            .write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        GitWriter {
            src: self,
            _guard: guard,
        }
    }

    /// Reverts what `planner` decides from the Git facts around
    /// `req.failed_commit`, in one commit on the branch tip, pushed as a
    /// fast-forward. A rejected push (the branch moved, a lock) is redone on
    /// the new tip with backoff, re-planned from fresh facts; never forced.
    pub fn revert(&self, req: &RevertRequest, planner: Planner) -> Result<RevertOutcome, Error> {
        let w = self.writer();
        let attempts = Cell::new(0u32);
        let once = || -> Result<RevertOutcome, Error> {
            attempts.set(attempts.get() + 1);
            let tip = w.fetch()?;
            let facts = w.revert_facts(req, &tip)?;
            Ok(match planner(&facts, &req.failed_commit, &req.base) {
                RevertPlan::Revert(commits) => {
                    let (commit, services) = w.push_revert(req, &tip, &commits)?;
                    RevertOutcome::Pushed {
                        commit,
                        reverted: commits,
                        services,
                        attempts: attempts.get(),
                    }
                }
                RevertPlan::AlreadyReverted { by } => RevertOutcome::AlreadyReverted { by },
                RevertPlan::ChangedSince(commits) => RevertOutcome::ChangedSince { commits },
                RevertPlan::NothingToRevert => RevertOutcome::NothingToRevert,
                RevertPlan::Refuse(reason) => RevertOutcome::Refused { reason },
            })
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(MAX_RETRIES)
            .with_jitter();
        once.retry(backoff)
            .sleep(std::thread::sleep)
            .when(Error::retryable_push)
            .notify(|e, d| {
                tracing::info!(service = %req.service, error = %e, retry_in = ?d, "revert push raced another push (or a lock); fetching, re-planning and redoing");
            })
            .call()
    }
}

impl GitWriter<'_> {
    /// Fetches the branch into the mirror (see [`GitSource::fetch`]).
    pub fn fetch(&self) -> Result<String, Error> {
        self.src.fetch_unlocked()
    }

    /// The facts the planner needs, read from the mirror at `tip`.
    pub fn revert_facts(&self, req: &RevertRequest, tip: &str) -> Result<RevertFacts, Error> {
        let repo = self.src.repo()?;
        let g = |e: git2::Error| Error::Git(e.message().to_string());
        let oid = |s: &str| Oid::from_str(s).map_err(|e| Error::Git(format!("{s:?}: {e}")));
        let (tip_oid, failed_oid, base_oid) =
            (oid(tip)?, oid(&req.failed_commit)?, oid(&req.base)?);
        let descends = |a: Oid, b: Oid| -> Result<bool, Error> {
            Ok(a == b || repo.graph_descendant_of(a, b).map_err(g)?)
        };
        let failed_on_branch = descends(tip_oid, failed_oid)?;
        let base_is_ancestor =
            repo.find_commit(base_oid).is_ok() && descends(failed_oid, base_oid)?;
        let mut judge = ServiceJudge::new(&repo, req);
        let mut chain = Vec::new();
        let mut reached = false;
        let mut at = Some(find_commit(&repo, &req.failed_commit)?);
        while let Some(c) = at {
            if c.id() == base_oid {
                reached = true;
                break;
            }
            if chain.len() >= MAX_WALK {
                break;
            }
            chain.push(judge.fact(&c)?);
            at = c.parent(0).ok();
        }
        let mut since = Vec::new();
        if failed_on_branch {
            let mut walk = repo.revwalk().map_err(g)?;
            walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)
                .map_err(g)?;
            walk.push(tip_oid).map_err(g)?;
            walk.hide(failed_oid).map_err(g)?;
            for o in walk.take(MAX_WALK) {
                let c = repo.find_commit(o.map_err(g)?).map_err(g)?;
                since.push(judge.fact(&c)?);
            }
        }
        Ok(RevertFacts {
            failed_on_branch,
            base_is_ancestor,
            chain: reached.then_some(chain),
            since,
        })
    }

    /// Builds the revert of `commits` (newest first) on `tip` and pushes it.
    /// Returns the new commit and the services its tree changes.
    pub fn push_revert(
        &self,
        req: &RevertRequest,
        tip: &str,
        commits: &[String],
    ) -> Result<(String, Vec<String>), Error> {
        let src = self.src;
        let repo = src.repo()?;
        let (new, services) = self.build_revert(req, tip, commits)?;
        let new = Oid::from_str(&new).map_err(|e| Error::Git(e.to_string()))?;
        // A local ref to push from (a previous attempt's value is replaced).
        repo.reference(REVERT_REF, new, true, "floyd: revert")
            .map_err(|e| src.mirror_err(e))?;
        src.push(&repo, REVERT_REF)?;
        // The remote now has it; move the tracking ref so the next poll sees no change.
        repo.reference(&src.tracking_ref(), new, true, "floyd: revert pushed")
            .map_err(|e| src.mirror_err(e))?;
        Ok((new.to_string(), services))
    }

    /// Builds the revert commit of `commits` (newest first) on `tip`, in the
    /// mirror's object store only (nothing references it yet). Returns the
    /// new commit and the services its tree changes.
    pub fn build_revert(
        &self,
        req: &RevertRequest,
        tip: &str,
        commits: &[String],
    ) -> Result<(String, Vec<String>), Error> {
        let src = self.src;
        let repo = src.repo()?;
        let rerr = |m: String| Error::Revert {
            service: req.service.clone(),
            message: m,
        };
        let tip_oid = Oid::from_str(tip).map_err(|e| rerr(e.to_string()))?;
        let sig = git2::Signature::now(&req.author_name, &req.author_email)
            .map_err(|e| rerr(format!("--git-author: {e}")))?;
        // Apply the reverts newest first, each on top of the previous result,
        // through throwaway commit objects (never referenced, so gc drops them).
        let mut ours = repo.find_commit(tip_oid).map_err(|e| rerr(e.to_string()))?;
        for sha in commits {
            let c = find_commit(&repo, sha)?;
            let mainline = if c.parent_count() > 1 { 1 } else { 0 };
            let mut index = repo
                .revert_commit(&c, &ours, mainline, None)
                .map_err(|e| rerr(format!("reverting {sha}: {e}")))?;
            if index.has_conflicts() {
                let paths: Vec<String> = index
                    .conflicts()
                    .map(|it| {
                        it.filter_map(Result::ok)
                            .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(rerr(format!(
                    "reverting {sha} conflicts with the branch tip in {}",
                    paths.join(", ")
                )));
            }
            let tree_oid = index
                .write_tree_to(&repo)
                .map_err(|e| rerr(e.to_string()))?;
            let tree = repo.find_tree(tree_oid).map_err(|e| rerr(e.to_string()))?;
            let tmp = repo
                .commit(
                    None,
                    &sig,
                    &sig,
                    "floyd: intermediate revert",
                    &tree,
                    &[&ours],
                )
                .map_err(|e| rerr(e.to_string()))?;
            ours = repo.find_commit(tmp).map_err(|e| rerr(e.to_string()))?;
        }
        let result = ours.id().to_string();
        if let Some(render) = &req.render {
            // A render revert is pushed only when it makes the branch render.
            let mut r = IncrementalRenderer::new(req.environment.as_deref());
            if let Err(e) = render_result(&repo, req, &mut r, &result) {
                return Err(Error::Revert {
                    service: req.service.clone(),
                    message: format!(
                        "reverting {} would not make the branch render either: {e}; fix the manifests by hand (the tip's error: {})",
                        commits.join(", "),
                        render.error
                    ),
                });
            }
        }
        // What the revert changes: against the tip, or, when the tip does not
        // render, against the last commit that synced.
        let before = if req.render.is_some() { &req.base } else { tip };
        let services = changed_services(&repo, req, before, &result);
        let summaries: Vec<String> = commits
            .iter()
            .map(|s| {
                find_commit(&repo, s)
                    .map(|c| summary_of(&c))
                    .unwrap_or_default()
            })
            .collect();
        let message = match &req.render {
            None => super::revert_message(
                &services,
                commits,
                &summaries,
                &req.failed_revision,
                &req.rolled_back_to,
                &req.reason,
            ),
            Some(_) => {
                super::render_revert_message(&services, commits, &summaries, &req.base, &req.reason)
            }
        };
        let tree = ours.tree().map_err(|e| rerr(e.to_string()))?;
        let tip_commit = repo.find_commit(tip_oid).map_err(|e| rerr(e.to_string()))?;
        let new = signing::commit(
            src.signer.as_ref(),
            &repo,
            &sig,
            &message,
            &tree,
            &[&tip_commit],
        )
        .map_err(rerr)?;
        Ok((new.to_string(), services))
    }
}

/// The rendered services of a commit, by name: (revision, spec, file).
type Rendered = BTreeMap<String, (Revision, ServiceSpec, Option<PathBuf>)>;

fn render_at(
    repo: &Repository,
    req: &RevertRequest,
    renderer: &mut IncrementalRenderer,
    sha: &str,
) -> Option<Rendered> {
    render_result(repo, req, renderer, sha).ok()
}

/// The services `sha` renders to, or why it does not render. A commit the
/// request marks as unrenderable is not rendered at all.
fn render_result(
    repo: &Repository,
    req: &RevertRequest,
    renderer: &mut IncrementalRenderer,
    sha: &str,
) -> Result<Rendered, String> {
    if let Some(r) = &req.render
        && r.unrenderable.iter().any(|s| s == sha)
    {
        return Err(format!(
            "commit {sha} is not rendered again (a Floyd process died rendering it)"
        ));
    }
    let listing = list_config_tree(repo, sha, req.subdir.as_deref()).map_err(|e| e.to_string())?;
    let odb = repo.odb().map_err(|e| e.message().to_string())?;
    // Sizes checked from the object header, as the sync's own render does.
    let mut read = |f: &TreeFile| -> Result<Vec<u8>, String> {
        let oid = Oid::from_str(&f.id).map_err(|e| e.to_string())?;
        read_blob_within(repo, &odb, oid, crate::manifest::MAX_FILE_BYTES)
    };
    let release: Release = renderer
        .render(&listing, &mut read)
        .map_err(|e| e.to_string())?;
    let base = req.subdir.clone().unwrap_or_default();
    Ok(release
        .services
        .into_iter()
        .map(|s| {
            let file = s.file.map(|f| base.join(f));
            (s.name.to_string(), (s.revision, s.spec, file))
        })
        .collect())
}

/// Services whose rendered desired state differs between two commits (the
/// failed service first, then by name). When either commit does not render,
/// only the failed service is named.
fn changed_services(
    repo: &Repository,
    req: &RevertRequest,
    before: &str,
    after: &str,
) -> Vec<String> {
    let mut r = IncrementalRenderer::new(req.environment.as_deref());
    let (Some(a), Some(b)) = (
        render_at(repo, req, &mut r, before),
        render_at(repo, req, &mut r, after),
    ) else {
        return if req.render.is_none() {
            vec![req.service.clone()]
        } else {
            Vec::new()
        };
    };
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    if req.render.is_none() {
        out.push(req.service.clone());
    }
    for n in names {
        let differs = match (a.get(n), b.get(n)) {
            (Some(x), Some(y)) => x.0 != y.0 || x.1 != y.1,
            (None, None) => false,
            _ => true,
        };
        if differs && *n != req.service {
            out.push(n.clone());
        }
    }
    out
}

/// Tells whether a commit changed one service, rendering each commit once.
struct ServiceJudge<'r> {
    repo: &'r Repository,
    req: &'r RevertRequest,
    renderer: IncrementalRenderer,
    rendered: HashMap<Oid, Option<Rendered>>,
}

impl<'r> ServiceJudge<'r> {
    fn new(repo: &'r Repository, req: &'r RevertRequest) -> Self {
        ServiceJudge {
            repo,
            req,
            renderer: IncrementalRenderer::new(req.environment.as_deref()),
            rendered: HashMap::new(),
        }
    }

    fn service_at(&mut self, oid: Oid) -> Option<(Revision, ServiceSpec, Option<PathBuf>)> {
        if !self.rendered.contains_key(&oid) {
            let r = render_at(self.repo, self.req, &mut self.renderer, &oid.to_string());
            self.rendered.insert(oid, r);
        }
        self.rendered
            .get(&oid)
            .and_then(Option::as_ref)
            .and_then(|m| m.get(&self.req.service).cloned())
    }

    fn fact(&mut self, c: &git2::Commit<'_>) -> Result<CommitFact, Error> {
        let g = |e: git2::Error| Error::Git(e.message().to_string());
        let parent = c.parent(0).ok();
        let mine = self.service_at(c.id());
        let theirs = parent.as_ref().and_then(|p| self.service_at(p.id()));
        // Files: the request's, and wherever either commit defines the service.
        let mut files: BTreeSet<String> = self.req.files.iter().cloned().collect();
        for f in [&mine, &theirs]
            .into_iter()
            .flatten()
            .filter_map(|s| s.2.as_ref())
        {
            files.insert(f.to_string_lossy().into_owned());
        }
        let tree = c.tree().map_err(g)?;
        let ptree = match &parent {
            Some(p) => Some(p.tree().map_err(g)?),
            None => None,
        };
        let files_changed = files
            .iter()
            .any(|f| blob_at(&tree, f) != ptree.as_ref().and_then(|t| blob_at(t, f)));
        let state_changed = match (&mine, &theirs) {
            (Some(a), Some(b)) => a.0 != b.0 || a.1 != b.1,
            (Some(_), None) | (None, Some(_)) => {
                // Appeared or disappeared: a change only when both commits render.
                self.rendered.get(&c.id()).is_some_and(Option::is_some)
                    && parent
                        .as_ref()
                        .is_some_and(|p| self.rendered.get(&p.id()).is_some_and(Option::is_some))
            }
            (None, None) => false,
        };
        let message = String::from_utf8_lossy(c.message_bytes()).into_owned();
        Ok(CommitFact {
            sha: c.id().to_string(),
            changed_service: files_changed || state_changed,
            reverts: super::revert_of(&message),
            unrenderable: self.rendered.get(&c.id()).is_some_and(Option::is_none),
        })
    }
}
