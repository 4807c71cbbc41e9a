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

mod failure;
mod gates;
mod git;
mod persist;
pub mod policy;
mod publish;
mod render_revert;
mod step;
mod sync;

use crate::engine::{Command, Phase};
use crate::hub::{ControlRequest, Hub};
use crate::manifest::{self, Revision, ServiceName};
use crate::runtime::Runtime;
use crate::source::{self, GitSource};
use crate::store::{RolloutRecord, Store};
use crate::telemetry::metrics::{InstanceLabels, ResultLabel};
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
    /// The commit does not render (or is not rendered again: `poisoned`).
    #[error("{message}")]
    Render { message: String, poisoned: bool },
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
    /// How often a rollout in progress is re-observed without an event.
    /// `None`: every second when the runtime reports no instance changes
    /// ([`crate::runtime::Runtime::changes`]), every 5 s when it does (a
    /// safety net; steps follow the runtime's events within milliseconds).
    pub rollout_poll: Option<Duration>,
    pub no_revert: bool,
    pub author_name: String,
    pub author_email: String,
    /// Scratch space for the controller (commits are rendered from the
    /// mirror's objects, in memory, not exported here).
    pub work_dir: PathBuf,
    /// Prometheus server for `prometheus` gates that name no `address`.
    pub prometheus_url: Option<String>,
    /// A fetch or revert push that takes longer is reported as failed (the
    /// loop never waits for Git; see `controller/git.rs`).
    pub git_timeout: Duration,
    /// The Git host's API: reverts refused by a protected branch go through
    /// a pull request (see [`crate::githost::pr::revert`]).
    pub git_host: Option<crate::githost::GitHost>,
}

impl Config {
    pub fn new(work_dir: PathBuf) -> Config {
        Config {
            path: None,
            environment: None,
            poll_interval: Duration::from_secs(30),
            resync_interval: Duration::from_secs(10),
            max_concurrent: 16,
            rollout_poll: None,
            no_revert: false,
            author_name: "Floyd".into(),
            author_email: "floyd@localhost".into(),
            work_dir,
            prometheus_url: None,
            git_timeout: Duration::from_secs(60),
            git_host: None,
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
    /// See [`Config::rollout_poll`], resolved for this runtime.
    rollout_poll: Duration,
}

/// One service as the controller tracks it.
#[derive(Debug, Clone, Default)]
struct Svc {
    record: Option<RolloutRecord>,
    /// The record changed since it was last persisted (or persisting failed).
    dirty: bool,
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
    last_resync: Time,
    fetch_failures: u32,
    /// A commit to sync now (a revert we just pushed).
    pending_sync: Option<String>,
    /// Fetches and revert pushes, off the loop.
    git: git::GitWorker,
    git_rx: Option<tokio::sync::mpsc::UnboundedReceiver<git::GitDone>>,
    /// When to look at the remote next.
    next_poll: Instant,
    /// A fetch was asked for while another Git operation ran (`true`: the
    /// webhook named the new tip, fetch without asking first).
    fetch_wanted: Option<bool>,
    /// A commit the previous process died rendering (never rendered again).
    poisoned: Option<String>,
    /// The revert of the commit that broke rendering, waiting to be pushed.
    render_revert: Option<render_revert::PendingRender>,
    /// A Git operation was started and its [`git::GitDone`] not handled yet
    /// (the worker's own `busy` clears a moment before the event arrives).
    git_in_flight: bool,
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
        let (git, git_rx) = git::GitWorker::new(cfg.git_timeout);
        let rollout_poll = cfg.rollout_poll.unwrap_or(if runtime.changes().is_some() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(1)
        });
        Controller {
            git,
            git_rx: Some(git_rx),
            next_poll: Instant::now(),
            fetch_wanted: None,
            git_in_flight: false,
            poisoned: None,
            render_revert: None,
            sh: Arc::new(Shared {
                gates: gates::GateRunner::new(cfg.prometheus_url.clone()),
                rollout_poll,
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
            last_resync: Time::ZERO,
            fetch_failures: 0,
            renderer: None,
            pending_sync: None,
            notifier: None,
            cluster_state_rx: Some(cluster_state_rx),
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
        let mut git_done = self.git_rx.take();
        let changes = self.sh.runtime.changes();
        tokio::pin!(shutdown);
        let mut resumed = false;
        self.next_poll = Instant::now();
        loop {
            self.sh.hub.beat(Time::now_wall());
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
            if Instant::now() >= self.next_poll {
                self.want_fetch(false);
            }
            let sleep_until = self.next_wake(self.next_poll);
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = recv_opt(&mut git_done) => self.git_done(done).await,
                Some(t) = recv_opt(&mut triggers) => {
                    tracing::debug!(source = %t.source, "fetch requested");
                    // Several webhooks at once make one fetch. A webhook that
                    // names the new tip: fetch at once, without asking for
                    // the tip first (one round trip less).
                    let mut announced = t.after.is_some();
                    if let Some(rx) = triggers.as_mut() {
                        while let Ok(t) = rx.try_recv() {
                            announced |= t.after.is_some();
                        }
                    }
                    self.want_fetch(announced);
                }
                Some(cmd) = recv_opt(&mut commands) => self.command(cmd).await,
                changed = next_changes(changes.as_deref()) => {
                    // Instances changed by themselves (ready, unready,
                    // gone): step those services now, not at the next tick.
                    for n in changed {
                        if self.services.get(&n).is_some_and(|s| s.record.is_some()) {
                            self.queue.insert(n);
                        }
                    }
                }
                _ = tokio::time::sleep_until(sleep_until.into()) => {}
            }
            if let Some(sha) = self.pending_sync.take() {
                self.sync(&sha).await;
            }
            self.process().await;
        }
        tracing::info!("controller stopping; state is persisted");
        Ok(())
    }

    /// Starts a fetch now, or as soon as the running Git operation ends.
    fn want_fetch(&mut self, announced: bool) {
        let announced = announced || self.fetch_wanted.unwrap_or(false);
        if !self.git_in_flight && self.git.start_fetch(self.sh.source.clone(), announced) {
            self.git_in_flight = true;
            self.fetch_wanted = None;
            // The next poll is planned when this one ends.
            self.next_poll = Instant::now() + Duration::from_secs(24 * 3600);
        } else {
            self.fetch_wanted = Some(announced);
        }
    }

    /// A Git operation ended: record it, sync a new tip, start what waited.
    async fn git_done(&mut self, done: git::GitDone) {
        self.git_in_flight = false;
        match done {
            git::GitDone::Fetched { result, elapsed } => {
                let ok = self.fetched(result, elapsed).await;
                let interval = self.sh.cfg.poll_interval;
                self.next_poll = Instant::now()
                    + if ok {
                        source::jittered(interval)
                    } else {
                        // Back off while the remote is down: 1, 2, 4, 8 × interval, at most 5 min.
                        (interval * 2u32.pow(self.fetch_failures.min(3)))
                            .min(Duration::from_secs(300).max(interval))
                    };
            }
            git::GitDone::Reverted {
                service,
                req,
                result,
            } => {
                let now = Time::now_wall();
                if let Err(e) = &result
                    && git::transient(e)
                {
                    self.sh.hub.set_git_reachable(false);
                }
                let sync = failure::revert_finished(
                    &self.sh,
                    &service,
                    self.services.get_mut(&service),
                    &req,
                    result,
                    now,
                );
                if let Some(svc) = self.services.get_mut(&service) {
                    svc.dirty |= svc.record.is_some();
                }
                self.queue.insert(service);
                if sync.is_some() {
                    self.sh.hub.set_git_reachable(true);
                    self.sync_mirror_tip().await;
                }
            }
            git::GitDone::RenderReverted { req, result } => {
                let now = Time::now_wall();
                if let Err(e) = &result
                    && git::transient(e)
                {
                    self.sh.hub.set_git_reachable(false);
                }
                let sync =
                    render_revert::finished(&self.sh, &mut self.render_revert, &req, result, now);
                if sync.is_some() {
                    self.sh.hub.set_git_reachable(true);
                    self.sync_mirror_tip().await;
                }
            }
        }
        if let Some(announced) = self.fetch_wanted {
            self.fetch_wanted = None;
            self.want_fetch(announced);
        }
    }

    /// Syncs the mirror's tip when it is not what was synced last (a revert
    /// just pushed moved it).
    async fn sync_mirror_tip(&mut self) {
        let src = self.sh.source.clone();
        let tip = tokio::task::spawn_blocking(move || src.local_tip())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        if let Some(tip) = tip
            && self.synced.as_deref() != Some(tip.as_str())
        {
            self.sync(&tip).await;
        }
    }

    /// Starts the revert of the first service whose revert is due, unless a
    /// Git operation runs (reverts take turns with fetches).
    fn start_due_revert(&mut self, now: Time) {
        // Only the leader writes to Git (a standby, or a leader whose lease
        // lapsed, leaves the revert to whoever leads).
        if self.git_in_flight || self.git.busy() || !self.sh.hub.is_leader() {
            return;
        }
        let due = self.services.iter().find_map(|(n, s)| {
            let p = s.record.as_ref()?.pending_revert.as_ref()?;
            (p.next_at <= now).then(|| (n.clone(), failure::revert_request(&self.sh, n, p)))
        });
        if let Some((name, req)) = due {
            tracing::info!(service = %name, failed = %req.failed_commit, "pushing the revert");
            self.git_in_flight = self.git.start_revert(
                self.sh.source.clone(),
                self.sh.cfg.git_host.clone(),
                name,
                req,
            );
            return;
        }
        if let Some(p) = &self.render_revert
            && p.next_at <= now
        {
            let req = p.request(&self.sh);
            tracing::info!(failed = %req.failed_commit, base = %req.base, "reverting the commit that broke rendering");
            self.git_in_flight = self.git.start_planned_revert(
                self.sh.source.clone(),
                self.sh.cfg.git_host.clone(),
                req,
                render_revert::PLANNER,
                |req, result| git::GitDone::RenderReverted {
                    req: Box::new(req),
                    result,
                },
            );
        }
    }

    fn next_wake(&self, next_poll: Instant) -> Instant {
        let now = Time::now_wall();
        let mut at = next_poll;
        let resync = self.last_resync.plus(self.sh.cfg.resync_interval);
        let reverts = self.services.values().filter_map(|s| {
            s.record
                .as_ref()?
                .pending_revert
                .as_ref()
                .map(|p| p.next_at)
                .filter(|_| !self.git_in_flight && !self.git.busy())
        });
        let render_revert = self
            .render_revert
            .as_ref()
            .map(|p| p.next_at)
            .filter(|_| !self.git_in_flight && !self.git.busy());
        let reverts = reverts.chain(render_revert);
        for t in self
            .services
            .values()
            .filter_map(|s| s.wake_at)
            .chain(reverts)
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

    /// A poll or fetch ended: metrics, Git readiness, and a sync of the new
    /// tip. False when the remote could not be reached.
    async fn fetched(
        &mut self,
        res: Result<Option<String>, source::Error>,
        elapsed: Duration,
    ) -> bool {
        self.sh
            .hub
            .metrics
            .git_fetch_duration_seconds
            .observe(elapsed.as_secs_f64());
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
                self.sync_mirror_tip().await;
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
            svc.dirty = true;
            self.sh.persist_svc(&name, svc);
            self.queue.insert(name);
            Ok(())
        })();
        // The requester may have given up (timeout); the answer is then moot.
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
            self.start_due_revert(now);
            return;
        }
        let batch: Vec<(ServiceName, Svc)> = std::mem::take(&mut self.queue)
            .into_iter()
            .filter_map(|n| self.services.remove(&n).map(|s| (n, s)))
            .collect();
        let sh = self.sh.clone();
        let results: Vec<(ServiceName, Svc)> = futures::stream::iter(batch)
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
                tracing::Instrument::instrument(step::step_service(sh.clone(), n, s, now), span)
            })
            .buffer_unordered(self.sh.cfg.max_concurrent.max(1))
            .collect()
            .await;
        for (n, s) in results {
            self.services.insert(n, s);
        }
        self.start_due_revert(now);
        self.persist_dirty();
    }
}

async fn next_changes(changes: Option<&crate::runtime::Changes>) -> BTreeSet<ServiceName> {
    match changes {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
