//! The hub: what the controller (the one writer) shares with the HTTP server
//! and the CLI's API (readers): the live view of every service, recent
//! history, the event stream, manual commands and fetch triggers.
//!
//! It holds data and channels only; it decides nothing.

use crate::engine::{CanaryStatus, Command, Phase, RevisionCounts, RolloutState};
use crate::manifest::Revision;
use crate::model::{GateResult, GpuCapacity};
use crate::telemetry::Metrics;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

/// A Git commit as people see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    pub sha: String,
    pub summary: String,
    pub author: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
}

/// The live state of one service (`GET /api/v1/services/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub strategy: String,
    pub replicas: u32,
    pub phase: Phase,
    pub reason: String,
    /// The last revision that completed.
    pub current_revision: Option<Revision>,
    /// The revision being rolled out (equal to current when Complete).
    pub target_revision: Option<Revision>,
    /// The commit the target revision came from.
    pub commit: Option<CommitInfo>,
    pub revisions: Vec<RevisionCounts>,
    pub gates: Vec<GateResult>,
    pub gpu: Option<GpuCapacity>,
    /// Revision receiving active traffic (blue-green), if any.
    pub active: Option<Revision>,
    pub preview: Option<Revision>,
    pub updated_at: Time,
    /// Live objects that differ from what Floyd applied, as last observed
    /// (see `spec.driftPolicy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<crate::model::Drift>,
    /// Canary rollouts: the step in progress and the weight (see [`canary_view`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// The canary part of a service view: step and weight of an in-flight (or
/// just failed: weight 0) canary, `None` otherwise. The controller's
/// `publish` fills `ServiceView::canary` with it.
pub fn canary_view(
    spec: &crate::manifest::ServiceSpec,
    state: &RolloutState,
) -> Option<CanaryStatus> {
    crate::engine::canary_status(spec, state)
}

/// One finished or running rollout (`GET /api/v1/services/{name}/history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub service: String,
    pub commit: Option<CommitInfo>,
    pub from_revision: Option<Revision>,
    pub to_revision: Revision,
    pub started_at: Time,
    pub ended_at: Option<Time>,
    /// Progressing while running; Complete, Failed, RolledBack, Degraded after.
    pub result: Phase,
    pub reason: String,
    /// This rollout was a rollback of a failed one.
    pub rollback: bool,
    /// The revert commit pushed for this failure, if any.
    pub revert_commit: Option<String>,
}

/// What `GET /api/v1/events` streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    /// A service's phase or instance counts changed.
    Service { service: ServiceView },
    /// A rollout started, ended or changed.
    Rollout { entry: HistoryEntry },
    /// A revert commit was pushed (or failed to be).
    Revert {
        service: String,
        commit: Option<String>,
        reverted: Vec<String>,
        ok: bool,
        message: String,
    },
    /// A new commit was synced.
    Sync { commit: CommitInfo },
}

impl Event {
    /// SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Service { .. } => "service",
            Event::Rollout { .. } => "rollout",
            Event::Revert { .. } => "revert",
            Event::Sync { .. } => "sync",
        }
    }
}

/// A manual command from the API, answered by the controller.
#[derive(Debug)]
pub struct ControlRequest {
    pub service: String,
    pub command: Command,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Why the controller should look at the remote now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTrigger {
    /// `github`, `gitlab`, ..., `poll`, `watch`.
    pub source: String,
    /// The commit the webhook announced, if it said.
    pub after: Option<String>,
}

const HISTORY_KEEP: usize = 50;
const DELIVERIES_KEEP: usize = 4096;

/// What predicting a service's rollouts needs, as the controller last saw it.
#[derive(Debug, Clone)]
pub struct PlanRecord {
    /// The spec rendered from the synced commit.
    pub spec: crate::manifest::ServiceSpec,
    pub target: Revision,
    /// The revision the rollout to `target` started from.
    pub from: Option<crate::predict::CurrentRevision>,
    pub gpu: Option<GpuCapacity>,
    /// Start-up samples: (instance, seconds from creation to ready, how
    /// many instances were created with it, see [`crate::predict::batches`]).
    pub samples: VecDeque<(String, f64, u32)>,
}

/// Where webhook delivery ids outlive the process (the state store
/// implements it): a trait here so the hub does not depend on the store,
/// which depends on the hub's record types.
pub trait DeliveryLog: Send + Sync {
    /// Records `id` at `now`; `Ok(false)` when it was recorded before.
    fn first_delivery(&self, id: &str, now: crate::time::Time) -> Result<bool, String>;
}

/// Shared between the controller and the server. Create one with [`Hub::new`]
/// and pass `Arc<Hub>` around.
pub struct Hub {
    services: RwLock<BTreeMap<String, ServiceView>>,
    /// What a rollout prediction needs, per service (see [`PlanRecord`]).
    plans: RwLock<BTreeMap<String, PlanRecord>>,
    history: RwLock<BTreeMap<String, VecDeque<HistoryEntry>>>,
    /// Events behind an `Arc`: a slot of the channel is a pointer, not an
    /// `Event` (4,096 slots of a `ServiceView` each were 1.7 MiB resident
    /// from the start), and every subscriber shares one copy.
    events: broadcast::Sender<Arc<Event>>,
    commands: mpsc::UnboundedSender<ControlRequest>,
    commands_rx: Mutex<Option<mpsc::UnboundedReceiver<ControlRequest>>>,
    fetch_tx: mpsc::UnboundedSender<FetchTrigger>,
    fetch_rx: Mutex<Option<mpsc::UnboundedReceiver<FetchTrigger>>>,
    /// Wakes the controller when a fetch trigger arrives.
    pub fetch_notify: Notify,
    deliveries: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Where delivery ids outlive a restart (set by `floyd run`).
    delivery_log: std::sync::OnceLock<std::sync::Arc<dyn DeliveryLog>>,
    synced_once: AtomicBool,
    git_reachable: AtomicBool,
    leader: AtomicBool,
    /// Why the state store cannot be written (None: it can).
    persistence: Mutex<Option<String>>,
    /// Why the last commit could not be synced (None: it was).
    sync_error: Mutex<Option<String>>,
    /// The controller loop's last turn, ms since the epoch (0: never ran).
    heartbeat: AtomicU64,
    /// Bumped on every change of the service views (cache key for readers).
    version: AtomicU64,
    pub metrics: Metrics,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        let (events, _) = broadcast::channel(4096);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (fetch_tx, fetch_rx) = mpsc::unbounded_channel();
        Hub {
            services: RwLock::new(BTreeMap::new()),
            plans: RwLock::new(BTreeMap::new()),
            history: RwLock::new(BTreeMap::new()),
            events,
            commands,
            commands_rx: Mutex::new(Some(commands_rx)),
            fetch_tx,
            fetch_rx: Mutex::new(Some(fetch_rx)),
            fetch_notify: Notify::new(),
            deliveries: Mutex::new((HashSet::new(), VecDeque::new())),
            delivery_log: std::sync::OnceLock::new(),
            synced_once: AtomicBool::new(false),
            git_reachable: AtomicBool::new(true),
            leader: AtomicBool::new(true),
            persistence: Mutex::new(None),
            heartbeat: AtomicU64::new(0),
            sync_error: Mutex::new(None),
            version: AtomicU64::new(0),
            metrics: Metrics::new(),
        }
    }

    // ---- readers (server, API) ----

    pub fn services(&self) -> Vec<ServiceView> {
        self.services
            .read()
            .expect("hub lock")
            .values()
            .cloned()
            .collect()
    }
    pub fn service(&self, name: &str) -> Option<ServiceView> {
        self.services.read().expect("hub lock").get(name).cloned()
    }
    /// What the controller last recorded for predicting `name`'s rollouts.
    pub fn plan(&self, name: &str) -> Option<PlanRecord> {
        self.plans.read().expect("hub lock").get(name).cloned()
    }
    /// Newest first.
    pub fn history(&self, name: &str) -> Vec<HistoryEntry> {
        self.history
            .read()
            .expect("hub lock")
            .get(name)
            .map(|h| h.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
    /// Changes whenever a service view is set (with a change) or removed:
    /// readers may cache what they derive from [`Hub::services`] under it.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
    /// How many event subscribers (SSE clients, notifier) are attached now.
    pub fn subscriber_count(&self) -> usize {
        self.events.receiver_count()
    }
    /// Ask the controller to run a manual command; waits for its answer.
    pub async fn control(&self, service: &str, command: Command) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(ControlRequest {
                service: service.to_string(),
                command,
                reply,
            })
            .map_err(|_| "the controller is not running".to_string())?;
        rx.await
            .map_err(|_| "the controller did not answer".to_string())?
    }
    /// Ask the controller to look at the remote now (webhook, watch).
    pub fn trigger_fetch(&self, trigger: FetchTrigger) {
        let _ = self.fetch_tx.send(trigger);
        self.fetch_notify.notify_one();
    }
    /// Keeps webhook delivery ids in `store` too, so a delivery retried
    /// across a controller restart still triggers one fetch.
    pub fn persist_deliveries(&self, store: std::sync::Arc<dyn DeliveryLog>) {
        let _ = self.delivery_log.set(store);
    }
    /// Records a webhook delivery id; false when it was seen before (by this
    /// process, or before a restart when [`Hub::persist_deliveries`] was set).
    pub fn first_delivery(&self, id: &str) -> bool {
        let mut d = self.deliveries.lock().expect("hub lock");
        if d.0.contains(id) {
            return false;
        }
        let first = match self.delivery_log.get() {
            None => true,
            Some(store) => store
                .first_delivery(id, crate::time::Time::now_wall())
                // The store failing must not lose a push: treat it as new.
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot record webhook delivery id");
                    true
                }),
        };
        d.0.insert(id.to_string());
        d.1.push_back(id.to_string());
        if d.1.len() > DELIVERIES_KEEP
            && let Some(old) = d.1.pop_front()
        {
            d.0.remove(&old);
        }
        first
    }
    /// `/readyz`: the first sync is done (or this replica is a standby) and
    /// the state store can be written.
    pub fn is_ready(&self) -> bool {
        (self.synced_once.load(Ordering::Relaxed) || !self.is_leader())
            && self.persistence_error().is_none()
    }
    /// Why the state store cannot be written, if it cannot.
    pub fn persistence_error(&self) -> Option<String> {
        self.persistence.lock().expect("hub lock").clone()
    }
    pub fn git_reachable(&self) -> bool {
        self.git_reachable.load(Ordering::Relaxed)
    }
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    // ---- the writer (controller) ----

    /// Take the command receiver (once, by the controller).
    pub fn take_commands(&self) -> Option<mpsc::UnboundedReceiver<ControlRequest>> {
        self.commands_rx.lock().expect("hub lock").take()
    }
    /// Take the fetch-trigger receiver (once, by the controller).
    pub fn take_fetch_triggers(&self) -> Option<mpsc::UnboundedReceiver<FetchTrigger>> {
        self.fetch_rx.lock().expect("hub lock").take()
    }
    /// Replace a service's view; emits a `service` event when it changed
    /// (ignoring `updated_at`).
    pub fn set_service(&self, view: ServiceView) {
        let changed = {
            let mut s = self.services.write().expect("hub lock");
            let changed = match s.get(&view.name) {
                Some(old) => {
                    let mut a = old.clone();
                    a.updated_at = view.updated_at;
                    a != view
                }
                None => true,
            };
            s.insert(view.name.clone(), view.clone());
            // Bumped under the write lock, so a reader that saw this version
            // reads at least this state.
            self.version.fetch_add(1, Ordering::AcqRel);
            changed
        };
        // Every known service has the gauge, at 0 without a canary in flight.
        let weight = view
            .canary
            .as_ref()
            .filter(|_| !view.phase.is_terminal())
            .map_or(0, |c| c.weight);
        self.metrics.set_canary_weight(&view.name, weight);
        if changed {
            self.metrics.set_phase(&view.name, view.phase);
            let _ = self.events.send(Arc::new(Event::Service { service: view }));
        }
    }
    /// Counts drift seen for the first time in `floyd_drift_total`.
    pub fn note_drift(&self, service: &str, drift: &[crate::model::Drift]) {
        for d in drift.iter().filter(|d| d.new) {
            self.metrics
                .drift_total
                .get_or_create(&crate::telemetry::metrics::DriftLabels {
                    service: service.to_string(),
                    kind: d.kind.clone(),
                })
                .inc();
        }
    }
    /// Records the rendered spec, the revision rolled from, GPU capacity,
    /// and start-up samples `(instance, seconds, batch)` (an instance counted once;
    /// the newest [`crate::predict::SAMPLES_KEPT`] kept).
    pub fn note_plan(
        &self,
        name: &str,
        spec: &crate::manifest::ServiceSpec,
        target: &Revision,
        from: Option<crate::predict::CurrentRevision>,
        gpu: Option<GpuCapacity>,
        samples: impl IntoIterator<Item = (String, f64, u32)>,
    ) {
        let mut plans = self.plans.write().expect("hub lock");
        let p = plans.entry(name.to_string()).or_insert_with(|| PlanRecord {
            spec: spec.clone(),
            target: target.clone(),
            from: None,
            gpu: None,
            samples: VecDeque::new(),
        });
        if p.target != *target || p.spec != *spec {
            p.spec = spec.clone();
            p.target = target.clone();
        }
        p.from = from;
        p.gpu = gpu;
        for (id, secs, batch) in samples {
            if p.samples.iter().any(|(i, _, _)| *i == id) {
                continue;
            }
            p.samples.push_back((id, secs, batch));
            if p.samples.len() > crate::predict::SAMPLES_KEPT {
                p.samples.pop_front();
            }
        }
    }
    pub fn remove_service(&self, name: &str) {
        self.plans.write().expect("hub lock").remove(name);
        let mut s = self.services.write().expect("hub lock");
        s.remove(name);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
    /// Add or update (same service + started_at + to_revision) a history entry.
    pub fn record_history(&self, entry: HistoryEntry) {
        {
            let mut h = self.history.write().expect("hub lock");
            let list = h.entry(entry.service.clone()).or_default();
            match list
                .iter_mut()
                .find(|e| e.started_at == entry.started_at && e.to_revision == entry.to_revision)
            {
                Some(e) => *e = entry.clone(),
                None => {
                    list.push_back(entry.clone());
                    if list.len() > HISTORY_KEEP {
                        list.pop_front();
                    }
                }
            }
        }
        let _ = self.events.send(Arc::new(Event::Rollout { entry }));
    }
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(Arc::new(event));
    }
    pub fn set_synced(&self) {
        self.synced_once.store(true, Ordering::Relaxed);
    }
    /// Why the tip of the branch could not be synced (Floyd serves the
    /// previous release meanwhile).
    pub fn sync_error(&self) -> Option<String> {
        self.sync_error.lock().expect("hub lock").clone()
    }
    pub fn set_sync_error(&self, why: Option<String>) {
        *self.sync_error.lock().expect("hub lock") = why;
    }
    /// The controller loop is alive at `now` (every turn of it calls this).
    pub fn beat(&self, now: crate::time::Time) {
        self.heartbeat.store(now.0.max(1), Ordering::Relaxed);
    }
    /// When the controller loop last turned (None: no controller ran yet).
    pub fn last_beat(&self) -> Option<crate::time::Time> {
        match self.heartbeat.load(Ordering::Relaxed) {
            0 => None,
            t => Some(crate::time::Time(t)),
        }
    }
    /// The controller loop stopped for good (its task ended): liveness fails.
    pub fn set_dead(&self) {
        self.heartbeat.store(1, Ordering::Relaxed);
    }
    pub fn set_persistence_error(&self, why: Option<String>) {
        *self.persistence.lock().expect("hub lock") = why;
    }
    pub fn set_git_reachable(&self, ok: bool) {
        self.git_reachable.store(ok, Ordering::Relaxed);
    }
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }
}
