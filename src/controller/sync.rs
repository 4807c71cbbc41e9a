//! Sync: a new commit of the tracked branch is rendered, diffed against what
//! runs, and each service's record is updated as [`policy::on_commit`]
//! decides (start, supersede, scale, adopt, Git agreeing again, prune).

use super::publish::{finish_history, start_history};
use super::{Controller, Error, policy};
use crate::diff::{self, Change};
use crate::engine::Phase;
use crate::hub::Event;
use crate::manifest::{self, Revision, ServiceName};
use crate::runtime::Observed;
use crate::telemetry::metrics::ResultLabel;
use crate::time::Time;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

impl Controller {
    /// Renders `sha`, diffs it against the runtime and starts rollouts.
    pub(super) async fn sync(&mut self, sha: &str) {
        let started = Instant::now();
        let span = tracing::info_span!("sync", commit = %&sha[..sha.len().min(12)]);
        let res = tracing::Instrument::instrument(self.sync_inner(sha), span).await;
        let m = &self.sh.hub.metrics;
        let result = if res.is_ok() { "ok" } else { "error" };
        m.sync_total
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        match res {
            Ok(()) => {
                m.sync_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.sh.hub.set_sync_error(None);
                self.render_revert = None;
            }
            Err(Error::Render { message, poisoned }) => {
                tracing::error!(commit = sha, error = %message, "the commit does not render; keeping the previous release");
                self.sh
                    .hub
                    .set_sync_error(Some(format!("commit {sha}: {message}")));
                self.synced = Some(sha.to_string());
                self.render_revert = match self.sh.store.synced_commit() {
                    // Git goes back to something that renders, unless asked not to.
                    Ok(Some(base)) if !self.sh.cfg.no_revert && base != sha => {
                        Some(super::render_revert::PendingRender::new(
                            sha,
                            &base,
                            &message,
                            poisoned,
                            crate::time::Time::now_wall(),
                        ))
                    }
                    _ => None,
                };
            }
            Err(e) => {
                tracing::error!(commit = sha, error = %e, "sync failed; keeping the previous release");
                self.sh
                    .hub
                    .set_sync_error(Some(format!("commit {sha}: {e}")));
                // Do not retry the same broken commit on every poll.
                self.synced = Some(sha.to_string());
            }
        }
    }

    async fn sync_inner(&mut self, sha: &str) -> Result<(), Error> {
        let sh = self.sh.clone();
        if self.poisoned.as_deref() == Some(sha) {
            return Err(Error::Render {
                message: format!(
                    "commit {sha} is not rendered again: the previous Floyd process died while rendering it (a manifest that exhausts memory?)"
                ),
                poisoned: true,
            });
        }
        // Crash-loop guard: a commit whose rendering kills the process is
        // found here at the next start-up and skipped.
        if let Err(e) = sh.store.set_rendering(Some(sha)) {
            sh.store_failed("the commit being rendered", &e);
        }
        let out = self.sync_rendering(sha).await;
        if let Err(e) = sh.store.set_rendering(None) {
            sh.store_failed("the commit being rendered", &e);
        }
        out
    }

    async fn sync_rendering(&mut self, sha: &str) -> Result<(), Error> {
        let sh = self.sh.clone();
        let (commit, message) = {
            let src = sh.source.clone();
            let s = sha.to_string();
            tokio::task::spawn_blocking(move || -> Result<_, Error> {
                Ok((src.commit_info(&s)?, src.commit_message(&s)?))
            })
            .await
            .map_err(|e| Error::Other(e.to_string()))??
        };
        let release = {
            let src = sh.source.clone();
            let s = sha.to_string();
            let sub = sh.cfg.path.clone();
            let env = sh.cfg.environment.clone();
            let mut renderer = self
                .renderer
                .take()
                .unwrap_or_else(|| manifest::tree::IncrementalRenderer::new(env.as_deref()));
            let (renderer, r) = tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let r = src.render(&s, sub.as_deref(), &mut renderer);
                let st = renderer.stats();
                tracing::debug!(
                    rendered = st.rendered,
                    reused = st.reused,
                    elapsed_ms = t.elapsed().as_secs_f64() * 1e3,
                    "rendered commit"
                );
                (renderer, r)
            })
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
            self.renderer = Some(renderer);
            r?.map_err(|e| Error::Render {
                message: e.to_string(),
                poisoned: false,
            })?
        };
        if let Some(n) = &self.notifier {
            n.set_targets(release.notifications.clone());
        }
        let now = Time::now_wall();
        tracing::info!(commit = %commit.sha, summary = %commit.summary, services = release.services.len(), "syncing commit");

        // Services Floyd already drives are represented by what it last asked
        // for (drift is the engine's business on the next step); only the
        // others are observed, so a commit in a repo of 1,000 services costs
        // one observe per unknown service, not 1,000.
        let mut names: BTreeSet<ServiceName> =
            release.services.iter().map(|s| s.name.clone()).collect();
        match sh.runtime.services().await {
            Ok(v) => names.extend(v),
            Err(e) => return Err(Error::Other(format!("runtime {}: {e}", sh.runtime.name()))),
        }
        let mut known: BTreeMap<ServiceName, Observed> = BTreeMap::new();
        names.retain(
            |n| match self.services.get(n).and_then(|s| s.record.as_ref()) {
                Some(rec) => {
                    known.insert(
                        n.clone(),
                        Observed {
                            revisions: vec![crate::runtime::ObservedRevision {
                                revision: rec.state.target.clone(),
                                created_at: rec.state.started_at,
                                desired: rec.spec.replicas,
                                instances: Vec::new(),
                                template: Default::default(),
                            }],
                            ..Observed::default()
                        },
                    );
                    false
                }
                None => true,
            },
        );
        let mut observed: BTreeMap<ServiceName, Observed> = futures::stream::iter(names)
            .map(|n| {
                let sh = sh.clone();
                let spec = release.service(n.as_str()).map(|s| s.spec.clone());
                async move {
                    let o = sh.runtime.observe(&n, spec.as_ref(), now).await;
                    (n, o)
                }
            })
            .buffer_unordered(sh.cfg.max_concurrent.max(1))
            .filter_map(|(n, o)| async move {
                match o {
                    Ok(o) => Some((n, o)),
                    Err(e) => {
                        tracing::warn!(service = %n, error = %e, "observe failed");
                        None
                    }
                }
            })
            .collect()
            .await;
        observed.extend(known);
        let last_target: BTreeMap<ServiceName, Revision> = self
            .services
            .iter()
            .filter_map(|(n, s)| {
                s.record
                    .as_ref()
                    .map(|r| (n.clone(), r.state.target.clone()))
            })
            .collect();
        let plan = diff::plan(&release, &observed, &last_target);
        sh.hub.emit(Event::Sync {
            commit: commit.clone(),
        });
        let base = sh.cfg.path.clone().unwrap_or_default();
        if !crate::source::revert_of(&message).is_empty() {
            tracing::info!(commit = %commit.sha, "a revert commit of Floyd's");
        }

        for (name, change) in plan {
            // Each rollout starts when it is planned, not when the sync began
            // (observing 1,000 services takes a while).
            let now = Time::now_wall();
            if matches!(change, Change::Delete) {
                self.prune(&name).await;
                continue;
            }
            let Some(git) = release.service(name.as_str()) else {
                continue;
            };
            let files: Vec<String> = git
                .file
                .as_ref()
                .map(|f| vec![base.join(f).to_string_lossy().into_owned()])
                .unwrap_or_default();
            let rendered = policy::Rendered {
                commit: &commit,
                revision: &git.revision,
                spec: &git.spec,
                files: &files,
            };
            let svc = self.services.entry(name.clone()).or_default();
            match policy::on_commit(svc.record.as_ref(), &rendered, &change, now) {
                policy::CommitDecision::Keep => {}
                policy::CommitDecision::Update(rec) => {
                    if rec.git_agrees && svc.record.as_ref().is_some_and(|p| !p.git_agrees) {
                        tracing::info!(service = %name, commit = %commit.sha, "Git agrees with what runs again");
                    }
                    svc.record = Some(*rec);
                    svc.dirty = true;
                    self.queue.insert(name);
                }
                policy::CommitDecision::Start { record, superseded } => {
                    if let Some(p) = &superseded {
                        tracing::info!(service = %name, from = %p.state.target, to = %record.state.target, "newer commit supersedes the in-flight rollout");
                        finish_history(
                            &sh,
                            &name,
                            p,
                            now,
                            Phase::Failed,
                            "superseded by a newer commit",
                        );
                    }
                    // A scale of the same revision is not a rollout of its own.
                    if record
                        .previous
                        .as_ref()
                        .is_none_or(|p| p.state.target != record.state.target)
                    {
                        start_history(&sh, &name, &record);
                    }
                    svc.wake_at = None;
                    svc.record = Some(*record);
                    svc.dirty = true;
                    self.queue.insert(name);
                }
            }
        }
        self.persist_dirty();
        self.synced = Some(sha.to_string());
        if let Err(e) = sh.store.set_synced_commit(sha) {
            self.sh.store_failed("the synced commit", &e);
        }
        sh.hub.set_synced();
        Ok(())
    }

    /// The service's files were removed from Git and `prune` is on.
    async fn prune(&mut self, name: &ServiceName) {
        let sh = self.sh.clone();
        tracing::info!(service = %name, "pruning: its files were removed from Git");
        if let Err(e) = sh.runtime.delete_service(name).await {
            tracing::warn!(service = %name, error = %e, "prune failed; will retry at the next sync");
            return;
        }
        if let Err(e) = sh.store.remove_service(name.as_str()) {
            sh.store_failed("removing a pruned service", &e);
        }
        sh.hub.remove_service(name.as_str());
        sh.gates.forget(name);
        self.services.remove(name);
        self.queue.remove(name);
    }
}
