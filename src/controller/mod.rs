//! The loop: source events → render → diff → engine → runtime; per-service
//! work queue with de-duplication; periodic requeue for drift; rollback and
//! revert trigger. The one place that carries out what the engine decides.
//!
//! One task owns the controller state. Each turn it (1) looks at the remote
//! when the poll timer fired or a webhook/watch asked, (2) syncs a new commit
//! (export its tree, render, diff, start or supersede rollouts), (3) steps
//! every queued service, at most `max_concurrent` at a time. A service is
//! queued at most once (a set), when its rollout started, when the engine's
//! `wake_at` passed, when a command arrived, and every `resync` for drift.
//!
//! Failure of a rollout: roll back to the last completed revision (a normal
//! rollout with `is_rollback`), then revert the commits that broke the
//! service in Git (see [`crate::source::GitSource::revert`]) unless the
//! failing commit is itself a Floyd revert (loop guard: Degraded instead).
//!
//! Must not: decide rollout steps (the engine does), talk to Git outside
//! `spawn_blocking` (libgit2 blocks).

mod gates;

use crate::diff::{self, Change};
use crate::engine::{self, Command, Phase, RevisionCounts, RolloutState};
use crate::hub::{ControlRequest, Event, HistoryEntry, Hub, ServiceView};
use crate::manifest::{self, Release, Revision, Service, ServiceName};
use crate::runtime::{InstancePhase, Observed, Runtime};
use crate::source::{self, GitSource, RevertOutcome, RevertRequest};
use crate::store::{Applied, RevertRecord, RolloutRecord, Store};
use crate::telemetry::metrics::{
    InstanceLabels, ProductLabel, ResultLabel, RevisionLabels, RolloutLabels, StrategyLabel,
};
use crate::time::Time;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors that stop the controller (everything else is retried and reported).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Source(#[from] crate::source::Error),
    #[error("controller: {0}")]
    Other(String),
}

/// How the controller behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sub-directory of the repo holding floyd.yaml and services/.
    pub path: Option<PathBuf>,
    pub environment: Option<String>,
    pub poll_interval: Duration,
    /// Re-observe every service this often even without events (drift).
    pub resync_interval: Duration,
    /// Rollouts of different services stepped at the same time.
    pub max_concurrent: usize,
    pub no_revert: bool,
    pub author_name: String,
    pub author_email: String,
    /// Scratch space for the controller (commits are rendered from the
    /// mirror's objects, in memory, not exported here).
    pub work_dir: PathBuf,
    /// Prometheus server for `prometheus` gates that name no `address`.
    pub prometheus_url: Option<String>,
}

impl Config {
    pub fn new(work_dir: PathBuf) -> Config {
        Config {
            path: None,
            environment: None,
            poll_interval: Duration::from_secs(30),
            resync_interval: Duration::from_secs(10),
            max_concurrent: 16,
            no_revert: false,
            author_name: "Floyd".into(),
            author_email: "floyd@localhost".into(),
            work_dir,
            prometheus_url: None,
        }
    }
}

/// Parses `--git-author` (`Name <email>`).
pub fn parse_author(s: &str) -> Result<(String, String), String> {
    let s = s.trim();
    match (s.find('<'), s.rfind('>')) {
        (Some(l), Some(r)) if l < r && r == s.len() - 1 => {
            let name = s[..l].trim();
            let email = s[l + 1..r].trim();
            if name.is_empty() || email.is_empty() {
                return Err(format!("--git-author {s:?}: expected `Name <email>`"));
            }
            Ok((name.to_string(), email.to_string()))
        }
        _ => Err(format!("--git-author {s:?}: expected `Name <email>`")),
    }
}

/// What the controller shares with its concurrent service steps.
struct Shared {
    hub: Arc<Hub>,
    runtime: Arc<dyn Runtime>,
    source: Arc<GitSource>,
    store: Arc<Store>,
    cfg: Config,
    /// Rollout records to mirror into the runtime's own state (kube: a
    /// ConfigMap per service), written in order by one task started in `run`.
    cluster_state: tokio::sync::mpsc::UnboundedSender<(ServiceName, String)>,
    /// Evaluates `spec.gates` for runtimes that do not (local, kube).
    gates: gates::GateRunner,
}

/// What the controller mirrors into the runtime (kube: the cluster) so a
/// controller with an empty local store (a new pod, a failed-over standby)
/// resumes instead of starting over.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ClusterState {
    record: RolloutRecord,
    applied: Option<crate::store::Applied>,
}

/// One service as the controller tracks it.
#[derive(Debug, Clone, Default)]
struct Svc {
    /// The service as Git defines it at the synced commit (None: not in Git).
    git: Option<Service>,
    record: Option<RolloutRecord>,
    wake_at: Option<Time>,
    /// Instance gauges set last time (to zero the ones that disappear).
    gauges: Vec<InstanceLabels>,
    /// The runtime's traffic counters per revision as last seen (the
    /// metrics count what they added since).
    traffic_seen: BTreeMap<Revision, (u64, u64)>,
}

/// The GitOps controller. Build with [`Controller::new`], then [`Controller::run`].
pub struct Controller {
    sh: Arc<Shared>,
    services: BTreeMap<ServiceName, Svc>,
    queue: BTreeSet<ServiceName>,
    synced: Option<String>,
    release: Option<Release>,
    last_resync: Time,
    fetch_failures: u32,
    /// A commit to sync now (a revert we just pushed).
    pending_sync: Option<String>,
    /// Rollout notifications (`floyd.yaml` `notifications`), started by `run`.
    notifier: Option<Arc<crate::server::notify::Notifier>>,
    cluster_state_rx: Option<tokio::sync::mpsc::UnboundedReceiver<(ServiceName, String)>>,
    /// Each manifest's last render, by blob id: a commit re-renders only the
    /// files it changed. Lent to the blocking task while it renders.
    renderer: Option<manifest::tree::IncrementalRenderer>,
}

impl Controller {
    pub fn new(
        hub: Arc<Hub>,
        runtime: Arc<dyn Runtime>,
        source: Arc<GitSource>,
        store: Arc<Store>,
        cfg: Config,
    ) -> Controller {
        let (cluster_state, cluster_state_rx) = tokio::sync::mpsc::unbounded_channel();
        Controller {
            sh: Arc::new(Shared {
                gates: gates::GateRunner::new(cfg.prometheus_url.clone()),
                hub,
                runtime,
                source,
                store,
                cfg,
                cluster_state,
            }),
            services: BTreeMap::new(),
            queue: BTreeSet::new(),
            synced: None,
            release: None,
            last_resync: Time::ZERO,
            fetch_failures: 0,
            renderer: None,
            pending_sync: None,
            notifier: None,
            cluster_state_rx: Some(cluster_state_rx),
        }
    }

    /// Loads what the store remembers: rollouts in flight resume where they were.
    fn restore(&mut self) -> Result<(), Error> {
        for entry in self.sh.store.all_history()? {
            self.sh.hub.record_history(entry);
        }
        for (name, rec) in self.sh.store.rollouts()? {
            let Ok(name) = ServiceName::parse(&name) else {
                continue;
            };
            let svc = self.services.entry(name.clone()).or_default();
            svc.record = Some(rec);
            self.queue.insert(name);
        }
        self.synced = self.sh.store.synced_commit()?;
        Ok(())
    }

    /// Services the runtime runs that the local store does not know: resume
    /// them from the state the runtime keeps (kube: ConfigMaps in the cluster).
    async fn restore_from_runtime(&mut self) {
        let names = match self.sh.runtime.services().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the runtime's services to resume them");
                return;
            }
        };
        for name in names {
            if self.services.get(&name).is_some_and(|s| s.record.is_some()) {
                continue;
            }
            let json = match self.sh.runtime.load_state(&name).await {
                Ok(Some(j)) => j,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "cannot load the runtime's rollout state");
                    continue;
                }
            };
            let Ok(state) = serde_json::from_str::<ClusterState>(&json) else {
                tracing::warn!(service = %name, "the runtime's rollout state is not readable; starting over");
                continue;
            };
            if let Some(applied) = &state.applied
                && self
                    .sh
                    .store
                    .applied(name.as_str())
                    .ok()
                    .flatten()
                    .is_none()
            {
                let _ = self.sh.store.set_applied(name.as_str(), applied);
            }
            let _ = self.sh.store.set_rollout(name.as_str(), &state.record);
            tracing::info!(service = %name, target = %state.record.state.target, "resumed from the runtime's state");
            self.services.entry(name.clone()).or_default().record = Some(state.record);
            self.queue.insert(name);
        }
    }

    /// Runs until `shutdown` resolves; then finishes the current step and returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        self.restore()?;
        if let Some(mut rx) = self.cluster_state_rx.take() {
            let rt = self.sh.runtime.clone();
            tokio::spawn(async move {
                while let Some((name, json)) = rx.recv().await {
                    if let Err(e) = rt.save_state(&name, &json).await {
                        tracing::warn!(service = %name, error = %e, "cannot save rollout state in the runtime");
                    }
                }
            });
        }
        self.restore_from_runtime().await;
        // Notifications follow the hub's events; targets come with each synced commit.
        let notifier = Arc::new(crate::server::notify::Notifier::new(Vec::new()));
        let _follow = notifier.follow(&self.sh.hub);
        self.notifier = Some(notifier);
        let mut triggers = self.sh.hub.take_fetch_triggers();
        let mut commands = self.sh.hub.take_commands();
        tokio::pin!(shutdown);
        let mut resumed = false;
        let mut next_poll = Instant::now();
        loop {
            if !self.sh.hub.is_leader() {
                // A standby replica: serve the API, touch nothing.
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
            if !resumed {
                resumed = true;
                // The synced commit may be ahead of a mirror that was wiped; render what
                // the mirror has first so services resume, then poll.
                if let Some(sha) = self.synced.clone()
                    && self.sh.source.local_tip().ok().flatten().is_some()
                {
                    self.synced = None;
                    self.sync(&sha).await;
                }
            }
            let mut fetch_now = false;
            // A webhook says the branch moved: fetch at once, without asking
            // for the tip first (one round trip less).
            let mut announced = false;
            if Instant::now() >= next_poll {
                fetch_now = true;
            }
            if !fetch_now {
                let sleep_until = self.next_wake(next_poll);
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    Some(t) = recv_opt(&mut triggers) => {
                        tracing::debug!(source = %t.source, "fetch requested");
                        // Several webhooks at once make one fetch.
                        if let Some(rx) = triggers.as_mut() {
                            while rx.try_recv().is_ok() {}
                        }
                        fetch_now = true;
                        announced = t.after.is_some();
                    }
                    Some(cmd) = recv_opt(&mut commands) => self.command(cmd).await,
                    _ = tokio::time::sleep_until(sleep_until.into()) => {}
                }
            }
            if fetch_now {
                let ok = self.check_remote(announced).await;
                let interval = self.sh.cfg.poll_interval;
                next_poll = Instant::now()
                    + if ok {
                        source::jittered(interval)
                    } else {
                        // Back off while the remote is down: 1, 2, 4, 8 × interval, at most 5 min.
                        (interval * 2u32.pow(self.fetch_failures.min(3)))
                            .min(Duration::from_secs(300).max(interval))
                    };
            }
            if let Some(sha) = self.pending_sync.take() {
                self.sync(&sha).await;
            }
            self.process().await;
        }
        tracing::info!("controller stopping; state is persisted");
        Ok(())
    }

    fn next_wake(&self, next_poll: Instant) -> Instant {
        let now = Time::now_wall();
        let mut at = next_poll;
        let resync = self.last_resync.plus(self.sh.cfg.resync_interval);
        for t in self
            .services
            .values()
            .filter_map(|s| s.wake_at)
            .chain(std::iter::once(resync))
        {
            let d = t.since(now);
            let i = Instant::now() + d;
            if i < at {
                at = i;
            }
        }
        at
    }

    /// Polls (ls-remote, then fetch if moved; `fetch` straight away when a
    /// webhook announced a new tip); syncs a new tip. False when the remote
    /// could not be reached.
    async fn check_remote(&mut self, fetch: bool) -> bool {
        let src = self.sh.source.clone();
        let started = Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            if fetch {
                let before = src.local_tip()?;
                let tip = src.fetch()?;
                Ok((before.as_deref() != Some(tip.as_str())).then_some(tip))
            } else {
                src.poll()
            }
        })
        .await;
        self.sh
            .hub
            .metrics
            .git_fetch_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        let res = match res {
            Ok(r) => r,
            Err(e) => Err(source::Error::Git(format!("fetch task failed: {e}"))),
        };
        match res {
            Ok(tip) => {
                self.sh
                    .hub
                    .metrics
                    .git_fetch_total
                    .get_or_create(&ResultLabel {
                        result: if tip.is_some() {
                            "changed"
                        } else {
                            "unchanged"
                        }
                        .into(),
                    })
                    .inc();
                if self.fetch_failures > 0 {
                    tracing::info!(
                        remote = self.sh.source.remote(),
                        "git remote reachable again"
                    );
                }
                self.fetch_failures = 0;
                self.sh.hub.set_git_reachable(true);
                // The mirror's tip, not only what this poll fetched: a revert
                // attempt may have fetched a newer tip already.
                let _ = tip;
                let tip = self.sh.source.local_tip().ok().flatten();
                if let Some(t) = tip
                    && self.synced.as_deref() != Some(t.as_str())
                {
                    self.sync(&t).await;
                }
                true
            }
            Err(e) => {
                self.fetch_failures += 1;
                self.sh
                    .hub
                    .metrics
                    .git_fetch_total
                    .get_or_create(&ResultLabel {
                        result: "error".into(),
                    })
                    .inc();
                self.sh.hub.set_git_reachable(false);
                tracing::warn!(error = %e, failures = self.fetch_failures, "git remote check failed; serving the last synced commit");
                false
            }
        }
    }

    /// Renders `sha`, diffs it against the runtime and starts rollouts.
    async fn sync(&mut self, sha: &str) {
        let started = Instant::now();
        let span = tracing::info_span!("sync", commit = %&sha[..sha.len().min(12)]);
        match tracing::Instrument::instrument(self.sync_inner(sha), span).await {
            Ok(()) => {
                self.sh
                    .hub
                    .metrics
                    .sync_total
                    .get_or_create(&ResultLabel {
                        result: "ok".into(),
                    })
                    .inc();
                self.sh
                    .hub
                    .metrics
                    .sync_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                self.sh
                    .hub
                    .metrics
                    .sync_total
                    .get_or_create(&ResultLabel {
                        result: "error".into(),
                    })
                    .inc();
                tracing::error!(commit = sha, error = %e, "sync failed; keeping the previous release");
                // Do not retry the same broken commit on every poll.
                self.synced = Some(sha.to_string());
            }
        }
    }

    async fn sync_inner(&mut self, sha: &str) -> Result<(), Error> {
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
            r?.map_err(|e| Error::Other(format!("commit {sha}: {e}")))?
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
        let is_revert_commit = !source::revert_of(&message).is_empty();

        for (name, change) in plan {
            // Each rollout starts when it is planned, not when the sync began
            // (observing 1,000 services takes a while).
            let now = Time::now_wall();
            let git = release.service(name.as_str());
            let files: Vec<String> = git
                .and_then(|s| s.file.as_ref())
                .map(|f| vec![base.join(f).to_string_lossy().into_owned()])
                .unwrap_or_default();
            let svc = self.services.entry(name.clone()).or_default();
            // Untouched services cost a comparison per commit, not a copy.
            if svc.git.as_ref() != git {
                svc.git = git.cloned();
            }
            match (&change, git) {
                (Change::Delete, _) => {
                    tracing::info!(service = %name, "pruning: its files were removed from Git");
                    if let Err(e) = sh.runtime.delete_service(&name).await {
                        tracing::warn!(service = %name, error = %e, "prune failed; will retry at the next sync");
                        continue;
                    }
                    let _ = sh.store.remove_service(name.as_str());
                    sh.hub.remove_service(name.as_str());
                    sh.gates.forget(&name);
                    self.services.remove(&name);
                    self.queue.remove(&name);
                }
                (Change::Orphan, _) | (_, None) => {}
                (
                    Change::Create { revision } | Change::NewRevision { to: revision, .. },
                    Some(g),
                ) => {
                    let prev = svc.record.take();
                    // The engine's contract: an in-flight rollout is superseded
                    // (same state, new target), a finished one is followed by a
                    // fresh rollout from the last revision that completed.
                    let state = match &prev {
                        Some(p) => engine::next_rollout(Some(&p.state), revision.clone(), now),
                        None => {
                            // Adopting what the runtime runs: its revision is the stable one.
                            let from = match &change {
                                Change::NewRevision { from, .. } => from.clone(),
                                _ => None,
                            };
                            RolloutState::start(revision.clone(), from, now)
                        }
                    };
                    let stable = state.stable.clone();
                    if let Some(p) = &prev
                        && !p.state.phase.is_terminal()
                    {
                        tracing::info!(service = %name, from = %p.state.target, to = %revision, "newer commit supersedes the in-flight rollout");
                        finish_history(
                            &sh,
                            &name,
                            p,
                            now,
                            Phase::Failed,
                            "superseded by a newer commit",
                        );
                    }
                    let rec = RolloutRecord {
                        state,
                        spec: g.spec.clone(),
                        commit: Some(commit.clone()),
                        from_revision: prev.as_ref().map(|p| p.state.target.clone()).or(stable),
                        failure_handled: false,
                        revert_commit: None,
                        files,
                        degraded: None,
                        git_agrees: false,
                    };
                    svc.wake_at = None;
                    start_history(&sh, &name, &rec);
                    persist(&sh, &name, &rec);
                    svc.record = Some(rec);
                    self.queue.insert(name);
                }
                (Change::Scale { .. }, Some(g)) => {
                    if let Some(rec) = svc.record.as_mut() {
                        rec.spec.replicas = g.spec.replicas;
                        if rec.state.phase == Phase::Complete {
                            rec.state.phase = Phase::Progressing;
                            rec.state.last_progress_at = now;
                        }
                        persist(&sh, &name, rec);
                    } else {
                        let mut st =
                            RolloutState::start(g.revision.clone(), Some(g.revision.clone()), now);
                        st.phase = Phase::Progressing;
                        let rec = RolloutRecord {
                            state: st,
                            spec: g.spec.clone(),
                            commit: Some(commit.clone()),
                            from_revision: Some(g.revision.clone()),
                            failure_handled: false,
                            revert_commit: None,
                            files,
                            degraded: None,
                            git_agrees: false,
                        };
                        persist(&sh, &name, &rec);
                        svc.record = Some(rec);
                    }
                    self.queue.insert(name);
                }
                (Change::Unchanged, Some(g)) => {
                    match svc.record.as_mut() {
                        Some(rec) => {
                            let mut changed = false;
                            // Same template; other fields (probes, gates,
                            // deadlines) follow Git unless a rollback owns the spec.
                            if !rec.state.is_rollback || rec.git_agrees {
                                let replicas = rec.spec.replicas;
                                rec.spec.replicas = g.spec.replicas;
                                if rec.spec != g.spec {
                                    rec.spec = g.spec.clone();
                                    changed = true;
                                }
                                rec.spec.replicas = replicas;
                            }
                            if !files.is_empty() && rec.files != files {
                                rec.files = files;
                                changed = true;
                            }
                            if rec.state.is_rollback
                                && !rec.git_agrees
                                && rec.state.target == g.revision
                            {
                                // Git agrees with the rollback again (our revert,
                                // or a person's fix): converged.
                                if is_revert_commit
                                    || rec.commit.as_ref().map(|c| &c.sha) != Some(&commit.sha)
                                {
                                    tracing::info!(service = %name, commit = %commit.sha, "Git agrees with the rolled-back revision again");
                                    changed = true;
                                    rec.git_agrees = true;
                                    rec.spec = g.spec.clone();
                                    rec.commit = Some(commit.clone());
                                    rec.degraded = None;
                                    if matches!(
                                        rec.state.phase,
                                        Phase::Complete | Phase::RolledBack
                                    ) {
                                        let _ = sh.store.set_applied(
                                            name.as_str(),
                                            &Applied {
                                                commit: commit.sha.clone(),
                                                revision: g.revision.clone(),
                                                at: now,
                                            },
                                        );
                                    }
                                }
                            }
                            // Untouched services cost nothing per commit.
                            if changed {
                                persist(&sh, &name, rec);
                                self.queue.insert(name.clone());
                            }
                        }
                        None => {
                            // Adopted: already running what Git says.
                            let mut st = RolloutState::start(
                                g.revision.clone(),
                                Some(g.revision.clone()),
                                now,
                            );
                            st.phase = Phase::Complete;
                            let rec = RolloutRecord {
                                state: st,
                                spec: g.spec.clone(),
                                commit: Some(commit.clone()),
                                from_revision: None,
                                failure_handled: false,
                                revert_commit: None,
                                files,
                                degraded: None,
                                git_agrees: false,
                            };
                            persist(&sh, &name, &rec);
                            if sh.store.applied(name.as_str()).ok().flatten().is_none() {
                                let _ = sh.store.set_applied(
                                    name.as_str(),
                                    &Applied {
                                        commit: commit.sha.clone(),
                                        revision: g.revision.clone(),
                                        at: now,
                                    },
                                );
                            }
                            svc.record = Some(rec);
                            self.queue.insert(name);
                        }
                    }
                }
            }
        }
        self.release = Some(release);
        self.synced = Some(sha.to_string());
        let _ = sh.store.set_synced_commit(sha);
        sh.hub.set_synced();
        Ok(())
    }

    async fn command(&mut self, req: ControlRequest) {
        let ControlRequest {
            service,
            command,
            reply,
        } = req;
        let answer = (|| {
            let name =
                ServiceName::parse(&service).map_err(|e| format!("service {service:?}: {e}"))?;
            let svc = self
                .services
                .get_mut(&name)
                .ok_or_else(|| format!("no service named {service}"))?;
            let rec = svc
                .record
                .as_mut()
                .ok_or_else(|| format!("service {service} has no rollout"))?;
            let allowed = match command {
                Command::Resume => rec.state.phase == Phase::Paused || rec.state.progress.paused,
                _ => !rec.state.phase.is_terminal(),
            };
            if !allowed {
                return Err(format!(
                    "service {service}: nothing to {} (rollout is {})",
                    format!("{command:?}").to_lowercase(),
                    rec.state.phase.as_str()
                ));
            }
            rec.state.pending_commands.push(command);
            persist(&self.sh, &name, rec);
            self.queue.insert(name);
            Ok(())
        })();
        let _ = reply.send(answer);
        self.process().await;
    }

    /// Steps every queued (and due) service, `max_concurrent` at a time.
    async fn process(&mut self) {
        let now = Time::now_wall();
        if now.since(self.last_resync) >= self.sh.cfg.resync_interval {
            self.last_resync = now;
            self.queue.extend(self.services.keys().cloned());
        }
        for (n, s) in &self.services {
            if s.wake_at.is_some_and(|w| w <= now) {
                self.queue.insert(n.clone());
            }
        }
        if self.queue.is_empty() {
            return;
        }
        let batch: Vec<(ServiceName, Svc)> = std::mem::take(&mut self.queue)
            .into_iter()
            .filter_map(|n| self.services.remove(&n).map(|s| (n, s)))
            .collect();
        let sh = self.sh.clone();
        let results: Vec<(ServiceName, Svc, Option<String>)> = futures::stream::iter(batch)
            .map(|(n, s)| {
                // One span per rollout step: every log line of it names the
                // service and the revision being rolled out.
                let span = tracing::info_span!(
                    "rollout",
                    service = %n,
                    revision = s
                        .record
                        .as_ref()
                        .map(|r| r.state.target.as_str())
                        .unwrap_or("-")
                );
                tracing::Instrument::instrument(step_service(sh.clone(), n, s), span)
            })
            .buffer_unordered(self.sh.cfg.max_concurrent.max(1))
            .collect()
            .await;
        for (n, s, sync) in results {
            self.services.insert(n, s);
            if sync.is_some() {
                self.pending_sync = sync;
            }
        }
        if let Some(sha) = self.pending_sync.take() {
            // Render the revert right away: Git and the runtime agree again.
            Box::pin(self.sync(&sha)).await;
            Box::pin(self.process()).await;
        }
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

fn persist(sh: &Shared, name: &ServiceName, rec: &RolloutRecord) {
    if let Err(e) = sh.store.set_rollout(name.as_str(), rec) {
        tracing::error!(service = %name, error = %e, "cannot persist rollout state");
    }
    let applied = sh.store.applied(name.as_str()).ok().flatten();
    if let Ok(json) = serde_json::to_string(&ClusterState {
        record: rec.clone(),
        applied,
    }) {
        let _ = sh.cluster_state.send((name.clone(), json));
    }
}

fn history_entry(name: &str, rec: &RolloutRecord) -> HistoryEntry {
    HistoryEntry {
        service: name.to_string(),
        commit: rec.commit.clone(),
        from_revision: rec.from_revision.clone(),
        to_revision: rec.state.target.clone(),
        started_at: rec.state.started_at,
        ended_at: None,
        result: Phase::Progressing,
        reason: String::new(),
        rollback: rec.state.is_rollback,
        revert_commit: rec.revert_commit.clone(),
    }
}

fn start_history(sh: &Shared, name: &ServiceName, rec: &RolloutRecord) {
    let e = history_entry(name.as_str(), rec);
    let _ = sh.store.record_history(&e);
    sh.hub.record_history(e);
}

fn finish_history(
    sh: &Shared,
    name: &ServiceName,
    rec: &RolloutRecord,
    now: Time,
    result: Phase,
    reason: &str,
) {
    let mut e = history_entry(name.as_str(), rec);
    e.ended_at = Some(now);
    e.result = result;
    e.reason = reason.to_string();
    let _ = sh.store.record_history(&e);
    sh.hub.record_history(e);
}

/// One step of one service: observe, engine, apply, report; on failure,
/// rollback and revert. Returns a commit to sync (a pushed revert).
async fn step_service(
    sh: Arc<Shared>,
    name: ServiceName,
    mut svc: Svc,
) -> (ServiceName, Svc, Option<String>) {
    let mut sync = None;
    let now = Time::now_wall();
    let Some(mut rec) = svc.record.clone() else {
        return (name, svc, None);
    };
    if !rec.state.is_rollback
        && let Some(c) = &rec.commit
    {
        sh.runtime.note_commit(&name, &rec.state.target, &c.sha);
    }
    let mut observed = match sh.runtime.observe(&name, Some(&rec.spec), now).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(service = %name, error = %e, "observe failed; retrying");
            svc.wake_at = Some(now.plus(Duration::from_secs(2)));
            return (name, svc, None);
        }
    };
    // Gates of the revision being rolled out, unless the runtime reports
    // them itself (the simulator does). A rollback's target passed them when
    // it completed.
    if observed.gates.is_empty()
        && !rec.spec.gates.is_empty()
        && !rec.state.is_rollback
        && !rec.state.phase.is_terminal()
    {
        let step = gates::Step {
            service: name.clone(),
            revision: rec.state.target.clone(),
            stable: rec.state.stable.clone(),
            phase: rec.state.phase.as_str().to_string(),
            since: rec
                .state
                .progress
                .promoted_at
                .unwrap_or(rec.state.started_at),
        };
        observed.gates = sh.gates.evaluate(&rec.spec, &observed, &step, now);
    }
    let before = rec.state.clone();
    // Settled rollouts are stepped too (the engine corrects drift); a failed
    // one is left as it is for a person or the next commit.
    let stepping = !matches!(rec.state.phase, Phase::Failed | Phase::Degraded);
    let mut status_revisions = None;
    let mut gates = observed.gates.clone();
    if stepping {
        let d = engine::step(&rec.spec, &observed, &rec.state, now);
        for ev in &d.events {
            tracing::info!(service = %name, revision = %rec.state.target, "{ev}");
        }
        if !d.actions.is_empty()
            && let Err(e) = sh.runtime.apply(&name, &rec.spec, &d.actions).await
        {
            tracing::warn!(service = %name, error = %e, "runtime apply failed; retrying");
            rec.state.reason = format!("runtime: {e}");
            svc.wake_at = Some(now.plus(Duration::from_secs(1)));
            svc.record = Some(rec);
            return (name, svc, None);
        }
        rec.state = d.state;
        status_revisions = Some(d.status.revisions);
        gates = d.status.gates;
        svc.wake_at = d
            .wake_at
            .or_else(|| (!rec.state.phase.is_terminal()).then(|| now.plus(Duration::from_secs(1))));
        if !rec.state.phase.is_terminal() {
            // Keep rollouts moving even when the engine expects an event the
            // runtime does not deliver (instances becoming ready).
            svc.wake_at = svc.wake_at.map(|w| w.min(now.plus(Duration::from_secs(1))));
        }
    } else {
        svc.wake_at = None;
    }

    // Transitions.
    if before.phase != rec.state.phase || before.target != rec.state.target {
        let strategy = rec.spec.strategy_name().to_string();
        match rec.state.phase {
            Phase::Complete | Phase::RolledBack => {
                tracing::info!(service = %name, revision = %rec.state.target, rollback = rec.state.is_rollback, "rollout complete");
                let result = if rec.state.is_rollback {
                    Phase::RolledBack
                } else {
                    Phase::Complete
                };
                end_history(&sh, &name, &rec, now, result);
                count_rollout(&sh, &name, &strategy, result.as_str(), &rec, now);
                if (!rec.state.is_rollback || rec.git_agrees)
                    && let Some(c) = &rec.commit
                {
                    let _ = sh.store.set_applied(
                        name.as_str(),
                        &Applied {
                            commit: c.sha.clone(),
                            revision: rec.state.target.clone(),
                            at: now,
                        },
                    );
                }
            }
            Phase::Failed => {
                tracing::warn!(service = %name, revision = %rec.state.target, reason = %rec.state.reason, "rollout failed");
                // The failure is its own event: the rollback below may change the
                // phase again before this step ends.
                let _ = sh
                    .runtime
                    .record_event(
                        &name,
                        "Failed",
                        &format!(
                            "rollout to {} failed: {}",
                            rec.state.target, rec.state.reason
                        ),
                    )
                    .await;
                end_history(&sh, &name, &rec, now, Phase::Failed);
                count_rollout(&sh, &name, &strategy, "Failed", &rec, now);
                if !rec.failure_handled {
                    rec.failure_handled = true;
                    sync = handle_failure(&sh, &name, &mut svc, &mut rec, &observed, now).await;
                }
            }
            _ => {}
        }
    }
    if rec.state != before {
        persist(&sh, &name, &rec);
    }
    if rec.state.phase != before.phase || rec.state.target != before.target {
        // Where the runtime's operators look (kube: a Kubernetes Event).
        let message = if rec.state.reason.is_empty() {
            format!(
                "rollout to {}: {}",
                rec.state.target,
                rec.state.phase.as_str()
            )
        } else {
            format!("rollout to {}: {}", rec.state.target, rec.state.reason)
        };
        if let Err(e) = sh
            .runtime
            .record_event(&name, rec.state.phase.as_str(), &message)
            .await
        {
            tracing::debug!(error = %e, "cannot record the rollout event in the runtime");
        }
    }
    publish(
        &sh,
        &name,
        &mut svc,
        &rec,
        &observed,
        status_revisions,
        gates,
        now,
    );
    svc.record = Some(rec);
    (name, svc, sync)
}

fn count_rollout(
    sh: &Shared,
    name: &ServiceName,
    strategy: &str,
    result: &str,
    rec: &RolloutRecord,
    now: Time,
) {
    sh.hub
        .metrics
        .rollout_total
        .get_or_create(&RolloutLabels {
            service: name.to_string(),
            strategy: strategy.to_string(),
            result: result.to_string(),
        })
        .inc();
    sh.hub
        .metrics
        .rollout_duration_seconds
        .get_or_create(&StrategyLabel {
            strategy: strategy.to_string(),
        })
        .observe(now.since(rec.state.started_at).as_secs_f64());
}

fn end_history(sh: &Shared, name: &ServiceName, rec: &RolloutRecord, now: Time, result: Phase) {
    finish_history(sh, name, rec, now, result, &rec.state.reason);
}

/// Failed: roll back (when allowed and possible), then revert in Git (when
/// allowed, and not a revert itself). Returns the revert commit to sync.
async fn handle_failure(
    sh: &Arc<Shared>,
    name: &ServiceName,
    svc: &mut Svc,
    rec: &mut RolloutRecord,
    observed: &Observed,
    now: Time,
) -> Option<String> {
    let failed = rec.clone();
    let reason = failed.state.reason.clone();
    let mut rolled_back_to: Option<Revision> = None;
    if failed.state.is_rollback {
        // The rollback itself failed: nothing safe is left to try.
        rec.degraded = Some(format!(
            "the rollback to {} failed: {reason}; fix the service by hand",
            failed.state.target
        ));
        sh.hub.emit(Event::Revert {
            service: name.to_string(),
            commit: None,
            reverted: vec![],
            ok: false,
            message: rec.degraded.clone().unwrap_or_default(),
        });
        return None;
    }
    if engine::should_roll_back(&failed.spec, &failed.state) {
        match engine::rollback(&failed.state, observed, now) {
            Ok(st) => {
                let stable = st.target.clone();
                // The engine takes the stable template from the runtime; every
                // other setting stays the current spec's.
                *rec = RolloutRecord {
                    state: st,
                    spec: failed.spec.clone(),
                    commit: failed.commit.clone(),
                    from_revision: Some(failed.state.target.clone()),
                    failure_handled: true,
                    revert_commit: None,
                    files: failed.files.clone(),
                    degraded: None,
                    git_agrees: false,
                };
                tracing::info!(service = %name, from = %failed.state.target, to = %stable, "rolling back");
                start_history(sh, name, rec);
                persist(sh, name, rec);
                svc.wake_at = Some(now);
                rolled_back_to = Some(stable);
            }
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "cannot roll back");
            }
        }
    }

    if !failed.spec.on_failure.revert || sh.cfg.no_revert {
        return None;
    }
    let commit = failed.commit.clone()?;
    let msg = {
        let src = sh.source.clone();
        let s = commit.sha.clone();
        tokio::task::spawn_blocking(move || src.commit_message(&s))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let degrade = |why: String| -> Option<String> {
        tracing::warn!(service = %name, "{why}");
        sh.hub.emit(Event::Revert {
            service: name.to_string(),
            commit: None,
            reverted: vec![],
            ok: false,
            message: why.clone(),
        });
        Some(why)
    };
    if !source::revert_of(&msg).is_empty() {
        rec.degraded = degrade(format!(
            "the rollout of Floyd's own revert commit {} failed ({reason}); not reverting again — fix the service by hand",
            commit.sha
        ));
        return None;
    }
    let last_good = match sh.store.applied(name.as_str()) {
        Ok(Some(a)) if a.commit != commit.sha => a.commit,
        _ => {
            rec.degraded = degrade(format!(
                "no earlier commit of {name} completed, so there is nothing to revert to; fix commit {} by hand",
                commit.sha
            ));
            return None;
        }
    };
    let req = RevertRequest {
        service: name.to_string(),
        failed_commit: commit.sha.clone(),
        last_good,
        files: failed.files.clone(),
        failed_revision: failed.state.target.to_string(),
        rolled_back_to: rolled_back_to
            .clone()
            .or(failed.state.stable.clone())
            .map(|r| r.to_string())
            .unwrap_or_else(|| "none".into()),
        reason: reason.clone(),
        author_name: sh.cfg.author_name.clone(),
        author_email: sh.cfg.author_email.clone(),
    };
    let src = sh.source.clone();
    let mut req2 = req.clone();
    // floyd.yaml's values shape every service: when no commit touched the
    // service's own files, the change that broke it came from there.
    let shared = sh
        .cfg
        .path
        .clone()
        .unwrap_or_default()
        .join("floyd.yaml")
        .to_string_lossy()
        .into_owned();
    let out = tokio::task::spawn_blocking(move || match src.revert(&req2) {
        Ok(RevertOutcome::NothingToRevert) => {
            req2.files = vec![shared];
            src.revert(&req2)
        }
        other => other,
    })
    .await
    .map_err(|e| source::Error::Git(e.to_string()))
    .and_then(|r| r);
    let result_label = |r: &str| ResultLabel { result: r.into() };
    match out {
        Ok(RevertOutcome::Pushed {
            commit: new,
            reverted,
            attempts,
        }) => {
            tracing::info!(service = %name, revert = %new, reverted = ?reverted, attempts, "revert commit pushed");
            sh.hub
                .metrics
                .revert_commits_total
                .get_or_create(&result_label("pushed"))
                .inc();
            rec.revert_commit = Some(new.clone());
            persist(sh, name, rec);
            // The failed rollout's history entry names the revert.
            let mut e = history_entry(name.as_str(), &failed);
            e.ended_at = Some(now);
            e.result = Phase::Failed;
            e.reason = reason.clone();
            e.revert_commit = Some(new.clone());
            let _ = sh.store.record_history(&e);
            sh.hub.record_history(e);
            let message = format!("reverted {} commit(s) that broke {name}", reverted.len());
            let _ = sh.store.record_revert(&RevertRecord {
                service: name.to_string(),
                failed_commit: commit.sha.clone(),
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
        Ok(RevertOutcome::NothingToRevert) => {
            sh.hub
                .metrics
                .revert_commits_total
                .get_or_create(&result_label("skipped"))
                .inc();
            rec.degraded = degrade(format!(
                "no commit since the last good one changed {} or floyd.yaml; not reverting",
                req.files.join(", ")
            ));
            None
        }
        Ok(RevertOutcome::ChangedSince { commits }) => {
            sh.hub
                .metrics
                .revert_commits_total
                .get_or_create(&result_label("skipped"))
                .inc();
            rec.degraded = degrade(format!(
                "{} changed again after {} (in {}); not reverting over a newer change",
                req.files.join(", "),
                commit.sha,
                commits.join(", ")
            ));
            None
        }
        Err(e) => {
            sh.hub
                .metrics
                .revert_commits_total
                .get_or_create(&result_label("error"))
                .inc();
            let _ = sh.store.record_revert(&RevertRecord {
                service: name.to_string(),
                failed_commit: commit.sha.clone(),
                reverted: vec![],
                revert_commit: None,
                ok: false,
                message: e.to_string(),
                at: now,
            });
            rec.degraded = degrade(format!("revert failed: {e}"));
            None
        }
    }
}

/// Updates the hub's view, metrics and gauges of one service.
#[allow(clippy::too_many_arguments)]
fn publish(
    sh: &Shared,
    name: &ServiceName,
    svc: &mut Svc,
    rec: &RolloutRecord,
    observed: &Observed,
    revisions: Option<Vec<RevisionCounts>>,
    gates: Vec<crate::runtime::GateResult>,
    now: Time,
) {
    let revisions = revisions
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| counts(observed, rec.spec.min_ready_seconds, now));
    let mut phase = rec.state.phase;
    let mut reason = rec.state.reason.clone();
    if rec.state.is_rollback && matches!(phase, Phase::Complete | Phase::RolledBack) {
        let from = rec
            .from_revision
            .as_ref()
            .map(|r| r.as_str())
            .unwrap_or("?");
        if rec.git_agrees {
            // The revert landed: Git and the runtime agree again.
            phase = Phase::Complete;
            reason = format!(
                "rolled back from {from}; Git reverted to it in {}",
                rec.commit.as_ref().map(|c| c.sha.as_str()).unwrap_or("?")
            );
        } else {
            phase = Phase::RolledBack;
            reason = format!("rolled back from {from}");
        }
    }
    if let Some(d) = &rec.degraded
        && phase.is_terminal()
    {
        phase = Phase::Degraded;
        reason = d.clone();
    }
    // Issue #20: a runtime problem (LB port not bound) is never Complete.
    (phase, reason) = crate::runtime::with_runtime_problems(phase, reason, observed);
    let current = if matches!(rec.state.phase, Phase::Complete | Phase::RolledBack) {
        Some(rec.state.target.clone())
    } else {
        rec.state.stable.clone()
    };
    sh.hub.set_service(ServiceView {
        name: name.to_string(),
        strategy: rec.spec.strategy_name().to_string(),
        replicas: rec.spec.replicas,
        phase,
        reason,
        current_revision: current,
        target_revision: Some(rec.state.target.clone()),
        commit: rec.commit.clone(),
        revisions: revisions.clone(),
        gates,
        gpu: observed.gpu.clone(),
        active: observed.active.clone(),
        preview: observed.preview.clone(),
        updated_at: now,
    });
    let mut labels = Vec::new();
    for r in &observed.revisions {
        let (mut ready, mut starting, mut terminating) = (0i64, 0i64, 0i64);
        for i in &r.instances {
            match (i.phase, i.ready_since.is_some()) {
                (InstancePhase::Terminating, _) => terminating += 1,
                (_, true) => ready += 1,
                _ => starting += 1,
            }
        }
        for (state, v) in [
            ("ready", ready),
            ("starting", starting),
            ("terminating", terminating),
        ] {
            let l = InstanceLabels {
                service: name.to_string(),
                revision: r.revision.to_string(),
                state: state.into(),
            };
            sh.hub.metrics.instances.get_or_create(&l).set(v);
            labels.push(l);
        }
    }
    for old in &svc.gauges {
        if !labels.contains(old) {
            sh.hub.metrics.instances.remove(old);
        }
    }
    svc.gauges = labels;
    let mut seen = BTreeMap::new();
    for t in &observed.traffic {
        let l = RevisionLabels {
            service: name.to_string(),
            revision: t.revision.to_string(),
        };
        let (r0, e0) = svc.traffic_seen.get(&t.revision).copied().unwrap_or((0, 0));
        // Counters that went down started over: all of the new count is new.
        let added = |now: u64, before: u64| if now >= before { now - before } else { now };
        let m = &sh.hub.metrics;
        m.lb_requests_total
            .get_or_create(&l)
            .inc_by(added(t.requests, r0));
        m.lb_errors_total
            .get_or_create(&l)
            .inc_by(added(t.errors, e0));
        seen.insert(t.revision.clone(), (t.requests, t.errors));
    }
    for old in svc.traffic_seen.keys().filter(|r| !seen.contains_key(*r)) {
        let l = RevisionLabels {
            service: name.to_string(),
            revision: old.to_string(),
        };
        sh.hub.metrics.lb_requests_total.remove(&l);
        sh.hub.metrics.lb_errors_total.remove(&l);
    }
    svc.traffic_seen = seen;
    if let Some(g) = &observed.gpu {
        let p = ProductLabel {
            product: g.kind.clone(),
        };
        sh.hub
            .metrics
            .gpu_capacity
            .get_or_create(&p)
            .set(i64::from(g.exist));
        sh.hub
            .metrics
            .gpu_allocated
            .get_or_create(&p)
            .set(i64::from(g.exist.saturating_sub(g.free)));
    }
}

fn counts(o: &Observed, min_ready: u32, now: Time) -> Vec<RevisionCounts> {
    o.revisions
        .iter()
        .map(|r| RevisionCounts {
            revision: r.revision.clone(),
            desired: r.desired,
            live: r.live(),
            ready: r.ready(),
            available: r.available(min_ready, now),
            terminating: r.terminating(),
        })
        .collect()
}
