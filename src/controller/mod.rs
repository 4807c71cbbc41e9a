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
pub mod policy;
mod publish;
mod step;
mod sync;

use crate::engine::{Command, Phase};
use crate::hub::{ControlRequest, HistoryEntry, Hub};
use crate::manifest::{self, Revision, ServiceName};
use crate::runtime::Runtime;
use crate::source::{self, GitSource};
use crate::store::{Applied, Desired, RevertRecord, RolloutRecord, Store};
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
            no_revert: false,
            author_name: "Floyd".into(),
            author_email: "floyd@localhost".into(),
            work_dir,
            prometheus_url: None,
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
}

impl Shared {
    /// A store write failed: say so (log, readiness) and let the caller retry.
    /// Persistence policy: a failure at start-up (reading what was stored)
    /// stops the controller; a write failure while running does not stop
    /// rollouts (the runtime keeps serving) but is never silent: `/readyz`
    /// reports it until a write succeeds again, and rollout records are
    /// re-written at every step of their service until one succeeds.
    fn store_failed(&self, what: &str, e: &crate::store::Error) {
        tracing::error!(error = %e, "cannot persist {what}; retrying");
        self.hub
            .set_persistence_error(Some(format!("cannot persist {what}: {e}")));
    }

    /// Persists a service's record (store + the runtime's copy); false when
    /// the store refused (the caller keeps it dirty and retries).
    fn persist_record(&self, name: &ServiceName, rec: &RolloutRecord) -> bool {
        let ok = match self.store.set_rollout(name.as_str(), rec) {
            Ok(()) => true,
            Err(e) => {
                self.store_failed(&format!("the rollout record of {name}"), &e);
                false
            }
        };
        let applied = rec.last_complete.as_ref().map(|d| Applied {
            commit: d.commit.sha.clone(),
            revision: d.revision.clone(),
            at: rec.state.last_progress_at,
        });
        match serde_json::to_string(&ClusterState {
            record: rec.clone(),
            applied,
        }) {
            Ok(json) => {
                // The receiver lives as long as the controller's run loop.
                let _ = self.cluster_state.send((name.clone(), json));
            }
            Err(e) => {
                tracing::error!(service = %name, error = %e, "cannot encode the rollout record")
            }
        }
        ok
    }

    /// Persists `svc`'s record when it changed; keeps it dirty on failure.
    fn persist_svc(&self, name: &ServiceName, svc: &mut Svc) {
        if let Some(rec) = &svc.record {
            svc.dirty = !self.persist_record(name, rec);
        } else {
            svc.dirty = false;
        }
    }

    /// The last Complete commit, also in the `applied` table (older readers).
    fn write_applied(&self, name: &ServiceName, d: &Desired, now: Time) {
        let a = Applied {
            commit: d.commit.sha.clone(),
            revision: d.revision.clone(),
            at: now,
        };
        if let Err(e) = self.store.set_applied(name.as_str(), &a) {
            self.store_failed(&format!("the last complete commit of {name}"), &e);
        }
    }

    fn write_history(&self, e: &HistoryEntry) {
        if let Err(err) = self.store.record_history(e) {
            self.store_failed("a history entry", &err);
        }
    }

    fn write_revert(&self, r: &RevertRecord) {
        if let Err(e) = self.store.record_revert(r) {
            self.store_failed("a revert record", &e);
        }
    }
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
        for (name, mut rec) in self.sh.store.rollouts()? {
            let Ok(name) = ServiceName::parse(&name) else {
                tracing::warn!(service = %name, "a stored rollout has an invalid service name; ignoring it");
                continue;
            };
            // Records written before `last_complete` existed: the applied table had it.
            if rec.last_complete.is_none()
                && let Some(a) = self.sh.store.applied(name.as_str())?
                && a.revision == rec.state.target
                && let Some(c) = &rec.commit
            {
                rec.last_complete = Some(Desired {
                    commit: crate::hub::CommitInfo {
                        sha: a.commit,
                        ..c.clone()
                    },
                    revision: a.revision,
                    spec: rec.spec.clone(),
                });
            }
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
            let mut record = state.record;
            if record.last_complete.is_none()
                && let Some(a) = state.applied
                && a.revision == record.state.target
                && let Some(c) = &record.commit
            {
                record.last_complete = Some(Desired {
                    commit: crate::hub::CommitInfo {
                        sha: a.commit,
                        ..c.clone()
                    },
                    revision: a.revision,
                    spec: record.spec.clone(),
                });
            }
            tracing::info!(service = %name, target = %record.state.target, "resumed from the runtime's state");
            let svc = self.services.entry(name.clone()).or_default();
            svc.record = Some(record);
            self.sh.persist_svc(&name, svc);
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
                let tip = self.sh.source.local_tip().ok().flatten().or(tip);
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
            return;
        }
        let batch: Vec<(ServiceName, Svc)> = std::mem::take(&mut self.queue)
            .into_iter()
            .filter_map(|n| self.services.remove(&n).map(|s| (n, s)))
            .collect();
        let sh = self.sh.clone();
        let results: Vec<(ServiceName, Svc, step::StepOutcome)> = futures::stream::iter(batch)
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
        for (n, s, out) in results {
            self.services.insert(n, s);
            if out.sync.is_some() {
                self.pending_sync = out.sync;
            }
        }
        if self.pending_sync.take().is_some() {
            // Render the revert right away: Git and the runtime agree again.
            // The mirror's tip, which holds every revert pushed this turn.
            let src = self.sh.source.clone();
            let tip = tokio::task::spawn_blocking(move || src.local_tip())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            if let Some(tip) = tip
                && self.synced.as_deref() != Some(tip.as_str())
            {
                Box::pin(self.sync(&tip)).await;
            }
            Box::pin(self.process()).await;
        }
        self.persist_dirty();
    }

    /// Re-writes every record whose last write failed (or never happened);
    /// readiness comes back once nothing is left to write.
    fn persist_dirty(&mut self) {
        let sh = self.sh.clone();
        let mut all_ok = true;
        for (name, svc) in self.services.iter_mut().filter(|(_, s)| s.dirty) {
            sh.persist_svc(name, svc);
            all_ok &= !svc.dirty;
        }
        // A write that works again (the synced commit, small and always
        // current) proves the store is back.
        if all_ok
            && sh.hub.persistence_error().is_some()
            && self
                .synced
                .as_deref()
                .is_none_or(|c| sh.store.set_synced_commit(c).is_ok())
        {
            tracing::info!("state store writable again");
            sh.hub.set_persistence_error(None);
        }
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
