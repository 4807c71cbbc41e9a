//! The `kube` runtime: one ReplicaSet per revision (`<service>-<revision>`),
//! a Service for active traffic and one for preview, readiness from Pod
//! conditions, GPU capacity from Nodes, server-side apply with field manager
//! `floyd`, Lease-based leader election ([`lease`]), rollout state kept in
//! the cluster ([`KubeRuntime::load_state`] / [`KubeRuntime::save_state`]).
//!
//! Owns: translating the engine's [`Action`]s into API calls and API objects
//! back into [`Observed`]. Must not: decide rollout steps (the engine does),
//! create Deployments (Floyd's engine is the rollout controller), or touch
//! objects that are not its own.
//!
//! # Ownership
//!
//! Every object carries `app.kubernetes.io/managed-by=floyd`,
//! `floyd.dev/instance=<install>` ([`KubeRuntime::with_instance`], the
//! chart's release name) and `floyd.dev/service=<service>`. Every list,
//! watch and selector names the install, so two installs in one namespace
//! never see each other's objects (nor prune them). Before every write or
//! delete of a named object the runtime reads it; when it exists and is not
//! this install's object for this service ([`objects::owner_of`]), the
//! action fails with [`Error::Foreign`] saying who owns it, and nothing is
//! written.
//!
//! Reads: pods, ReplicaSets and Services come from watch-fed caches of this
//! install's objects ([`KubeRuntime::with_pod_watch`],
//! [`KubeRuntime::with_object_watch`], kube-runtime watchers re-listed every
//! resync period; both on in [`KubeRuntime::from_env`]), from list and get
//! calls otherwise. The watches cost three long-lived connections and memory
//! for Floyd's objects, and make `observe` free of API round-trips; the calls
//! are simpler and always fresh but cost four requests per service and
//! observe. The controller re-observes every service on a timer, so either
//! converges. Writes always read their object from the API first (ownership).
//! GPU capacity lists Nodes and unfinished Pods on each observe of a GPU
//! service (they change outside Floyd, and a watch on every pod of the cluster
//! would cost more than it saves).
//!
//! # For the controller
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use floyd::manifest::{Revision, ServiceName};
//! use floyd::runtime::kube::KubeRuntime;
//! use tokio_util::sync::CancellationToken;
//!
//! // `floyd run --runtime kube --namespace apps` (FLOYD_NAMESPACE).
//! let rt = KubeRuntime::from_env(Some("apps"), "prod").await?; // FLOYD_INSTANCE
//!
//! // Leader election: only the leader steps rollouts; standbys serve /healthz.
//! let elector = std::sync::Arc::new(rt.leader_elector("floyd")); // FLOYD_LEASE_NAME
//! let stop = CancellationToken::new();
//! tokio::spawn({
//!     let (e, stop) = (elector.clone(), stop.clone());
//!     async move { e.run(stop).await } // releases the Lease when `stop` fires
//! });
//! let mut leading = elector.subscribe();
//! leading.wait_for(|l| *l).await?;
//!
//! // Before a revision's first CreateRevision: its commit, for the annotation.
//! let web = ServiceName::parse("web")?;
//! rt.set_commit(&web, &Revision::from("0123456789"), "9f1c2e...");
//!
//! // Durable state lives in the cluster (ConfigMap floyd-state-web).
//! if let Some(json) = rt.load_state(&web).await? { /* resume from it */ }
//! rt.save_state(&web, r#"{"rollout": null}"#).await?;
//! rt.record_event(&web, "RolloutFailed", "progress deadline exceeded").await?;
//! stop.cancel();
//! # Ok(()) }
//! ```

pub mod gateway;
pub mod lease;
pub mod objects;
pub mod observe;

use crate::manifest::{Revision, ServiceName, ServiceSpec, Strategy};
use crate::runtime::{self, Action, Observed};
use crate::time::Time;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Node, ObjectReference, Pod, Service};
use k8s_openapi::api::events::v1::Event as KEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use objects::{ANN_COMMIT, ANN_CREATED_AT, LABEL_SERVICE, RevisionMeta, STATE_KEY};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use lease::{LeaderElector, Leadership, LeaseConfig};

/// The field manager of every server-side apply Floyd sends.
pub const FIELD_MANAGER: &str = "floyd";

/// Errors of the kube runtime. Each names the object and the verb that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "kube: cannot build a client: {0} (set KUBECONFIG, or run in a pod with a service account)"
    )]
    Connect(String),
    #[error("kube: {verb} {kind} {namespace}/{name}: HTTP {code}: {message}")]
    Api {
        verb: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        code: u16,
        message: String,
    },
    #[error("kube: {verb} {kind} {namespace}/{name}: {message}")]
    Transport {
        verb: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("kube: service {service}: {message}")]
    Spec { service: String, message: String },
    #[error("kube: service {service}: name not usable in Kubernetes: {message}")]
    InvalidName { service: String, message: String },
    #[error("kube: service {service}: revision {revision} has no ReplicaSet {name}")]
    NoSuchRevision {
        service: String,
        revision: String,
        name: String,
    },
    #[error(
        "kube: service {service}: {kind} {namespace}/{name} already exists and is not this install's to change: it belongs to {owner}; rename the service, or delete or relabel that object"
    )]
    Foreign {
        service: String,
        kind: &'static str,
        namespace: String,
        name: String,
        owner: String,
    },
    #[error(
        "kube: {verb} {kind} {namespace}/{name}: not the leader (the Lease is held by another replica or could not be renewed in time); nothing was written"
    )]
    NotLeader {
        verb: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("kube: lease {namespace}/{name}: {message}")]
    Lease {
        namespace: String,
        name: String,
        message: String,
    },
}

impl Error {
    /// HTTP status of a failed API call.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<Error> for runtime::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::NoSuchRevision {
                service, revision, ..
            } => match ServiceName::parse(&service) {
                Ok(service) => runtime::Error::NoSuchRevision {
                    service,
                    revision: Revision(revision),
                },
                Err(_) => runtime::Error::Other(format!(
                    "service {service}: revision {revision} does not exist"
                )),
            },
            Error::Connect(_) | Error::Transport { .. } | Error::NotLeader { .. } => {
                runtime::Error::Unavailable(e.to_string())
            }
            Error::Foreign { ref service, .. } => match ServiceName::parse(service) {
                Ok(service) => runtime::Error::Apply {
                    service,
                    message: e.to_string(),
                },
                Err(_) => runtime::Error::Other(e.to_string()),
            },
            Error::Api { code, .. } if code >= 500 || code == 429 => {
                runtime::Error::Unavailable(e.to_string())
            }
            Error::Spec {
                ref service,
                ref message,
            }
            | Error::InvalidName {
                ref service,
                ref message,
            } => match ServiceName::parse(service) {
                Ok(service) => runtime::Error::Apply {
                    service,
                    message: message.clone(),
                },
                Err(_) => runtime::Error::Other(e.to_string()),
            },
            other => runtime::Error::Other(other.to_string()),
        }
    }
}

/// Wraps a kube client error with the verb and object it concerns.
fn api_err(
    verb: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    move |e| match e {
        kube::Error::Api(s) => Error::Api {
            verb,
            kind,
            namespace,
            name,
            code: s.code,
            message: s.message.clone(),
        },
        other => Error::Transport {
            verb,
            kind,
            namespace,
            name,
            message: other.to_string(),
        },
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Floyd on a Kubernetes cluster. Cheap to clone.
#[derive(Clone)]
pub struct KubeRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    namespace: String,
    /// The install identity (`floyd.dev/instance`) on every object.
    instance: String,
    field_manager: String,
    /// Who writes events and holds leases: the pod name in a cluster.
    identity: String,
    /// List pods of every namespace for GPU accounting (needs a ClusterRole
    /// that can list pods); otherwise only this namespace's pods count.
    cluster_gpu_view: bool,
    /// Label this namespace's Floyd objects that have no install identity
    /// (made by a Floyd from before identities) as this install's, once.
    adopt_unlabelled: bool,
    adopted: AtomicBool,
    pods: Option<Cache<Pod>>,
    /// Services whose pods the pod watch saw change (see [`runtime::Changes`]).
    changes: Arc<runtime::Changes>,
    /// This install's ReplicaSets and Services from watches
    /// ([`KubeRuntime::with_object_watch`]).
    replica_sets: Option<Cache<ReplicaSet>>,
    service_objects: Option<Cache<Service>>,
    /// Commits of revisions not yet created (see [`KubeRuntime::set_commit`]).
    commits: Mutex<HashMap<(ServiceName, Revision), String>>,
    /// Canary splits asked for (`Action::SetWeight`). Without a traffic
    /// router the weight is approximated by the ratio of ready pods: the
    /// active Service selects every revision.
    canary: Mutex<HashMap<ServiceName, runtime::CanarySplit>>,
    clock: fn() -> Time,
    event_seq: AtomicU64,
    /// Publish an Event per applied action (like the Deployment controller's
    /// "Scaled up replica set" events).
    action_events: bool,
    /// Leadership (from [`LeaderElector::subscribe`]): while `false`, every
    /// write fails with [`Error::NotLeader`] before reaching the API server.
    /// `None`: no election, always writes.
    leader: Option<lease::Leadership>,
    /// Drift reported and not corrected since: (service, kind, object, difference).
    drift_seen: Mutex<HashSet<DriftKey>>,
    /// Services known to have no HorizontalPodAutoscaler of Floyd's, so a
    /// service without `autoscaling` is not looked up on every step.
    no_autoscaler: Mutex<HashSet<ServiceName>>,
    /// Blue-green routing last applied (`Action::SetTraffic`) or seen on the
    /// live Services: what a deleted active or preview Service selected.
    routes: Mutex<HashMap<ServiceName, observe::Routing>>,
}

type DriftKey = (ServiceName, &'static str, String, String);

/// A watch-fed store of one kind of this install's objects.
struct Cache<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    index: Arc<std::sync::RwLock<Index<K>>>,
    synced: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Drop for Cache<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K> Cache<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// Starts watching `api` for objects matching `selector`, re-listed
    /// from scratch every `resync`; each changed or deleted object marks
    /// its service in `changes`. Needs a tokio runtime.
    fn start(
        api: Api<K>,
        selector: String,
        resync: Duration,
        changes: Option<Arc<runtime::Changes>>,
    ) -> Cache<K> {
        let index = Arc::new(std::sync::RwLock::new(Index::default()));
        let writer = index.clone();
        let synced = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_cache(
            api,
            writer,
            synced.clone(),
            resync,
            selector,
            changes,
        ))
        .abort_handle();
        Cache {
            index,
            synced,
            task,
        }
    }

    /// Reads the index, once the first list is in.
    fn read<T>(&self, f: impl FnOnce(&Index<K>) -> T) -> Option<T> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        Some(f(&index))
    }

    /// The objects of `service` (every object when `None`), once the first list is in.
    fn of_service(&self, service: Option<&ServiceName>) -> Option<Vec<K>> {
        self.read(|i| match service {
            Some(s) => i
                .by_service
                .get(s.as_str())
                .map(|objs| objs.values().map(|o| (**o).clone()).collect())
                .unwrap_or_default(),
            None => i
                .by_service
                .values()
                .flat_map(|objs| objs.values().map(|o| (**o).clone()))
                .collect(),
        })
    }

    /// The object named `name`, once the first list is in.
    fn by_name(&self, name: &str) -> Option<Option<K>> {
        self.read(|i| {
            i.service_of
                .get(name)
                .and_then(|s| i.by_service.get(s)?.get(name))
                .map(|o| (**o).clone())
        })
    }
}

/// A watch-fed view of one kind of this install's objects, indexed by the
/// `floyd.dev/service` label so that observing one service costs its own
/// objects, not a scan of every object of the install (1,000 services × 10
/// pods: docs/benchmarks.md).
struct Index<K> {
    /// Service label ("" when none) → object name → object.
    by_service: HashMap<String, std::collections::BTreeMap<String, Arc<K>>>,
    /// Object name → its service label.
    service_of: HashMap<String, String>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index {
            by_service: HashMap::new(),
            service_of: HashMap::new(),
        }
    }
}

impl<K: kube::Resource<DynamicType = ()>> Index<K> {
    fn insert(&mut self, obj: K) {
        let name = obj.meta().name.clone().unwrap_or_default();
        let service = obj
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE))
            .cloned()
            .unwrap_or_default();
        self.remove(&name);
        self.service_of.insert(name.clone(), service.clone());
        self.by_service
            .entry(service)
            .or_default()
            .insert(name, Arc::new(obj));
    }

    fn remove(&mut self, name: &str) {
        if let Some(service) = self.service_of.remove(name)
            && let Some(objs) = self.by_service.get_mut(&service)
        {
            objs.remove(name);
            if objs.is_empty() {
                self.by_service.remove(&service);
            }
        }
    }
}

impl KubeRuntime {
    /// A runtime for `namespace` over `client`, field manager `floyd`, pods read by list calls.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> KubeRuntime {
        KubeRuntime {
            inner: Arc::new(Inner {
                client,
                namespace: namespace.into(),
                instance: objects::DEFAULT_INSTANCE.to_string(),
                field_manager: FIELD_MANAGER.to_string(),
                identity: identity_from_env(),
                cluster_gpu_view: false,
                adopt_unlabelled: false,
                adopted: AtomicBool::new(false),
                pods: None,
                changes: Arc::new(runtime::Changes::new()),
                replica_sets: None,
                service_objects: None,
                commits: Mutex::new(HashMap::new()),
                canary: Mutex::new(HashMap::new()),
                clock: Time::now_wall,
                event_seq: AtomicU64::new(0),
                action_events: false,
                leader: None,
                drift_seen: Mutex::new(HashSet::new()),
                no_autoscaler: Mutex::new(HashSet::new()),
                routes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The controller's constructor: a client from `KUBECONFIG` or the
    /// in-cluster service account, the given namespace (or the client's
    /// default: the pod's own namespace in a cluster), install identity
    /// `instance`, and a pod watch re-listed every 5 minutes. Must be called
    /// inside a tokio runtime.
    pub async fn from_env(namespace: Option<&str>, instance: &str) -> Result<KubeRuntime, Error> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let ns = namespace
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| client.default_namespace().to_string());
        Ok(KubeRuntime::new(client, ns)
            .with_instance(instance)
            .with_action_events(true)
            .with_pod_watch(Duration::from_secs(300))
            .with_object_watch(Duration::from_secs(300)))
    }

    fn inner_mut(&mut self) -> &mut Inner {
        // Builders run before the runtime is shared; if it already is, the
        // clone keeps the settings of the original.
        if Arc::get_mut(&mut self.inner).is_none() {
            let i = &self.inner;
            self.inner = Arc::new(Inner {
                client: i.client.clone(),
                namespace: i.namespace.clone(),
                instance: i.instance.clone(),
                field_manager: i.field_manager.clone(),
                identity: i.identity.clone(),
                cluster_gpu_view: i.cluster_gpu_view,
                adopt_unlabelled: i.adopt_unlabelled,
                adopted: AtomicBool::new(false),
                pods: None,
                changes: Arc::new(runtime::Changes::new()),
                replica_sets: None,
                service_objects: None,
                commits: Mutex::new(HashMap::new()),
                canary: Mutex::new(HashMap::new()),
                clock: i.clock,
                event_seq: AtomicU64::new(0),
                action_events: i.action_events,
                leader: i.leader.clone(),
                drift_seen: Mutex::new(HashSet::new()),
                no_autoscaler: Mutex::new(HashSet::new()),
                routes: Mutex::new(HashMap::new()),
            });
        }
        Arc::get_mut(&mut self.inner).expect("just made unique")
    }

    /// The install identity (`floyd.dev/instance`, `--instance`): which
    /// objects are this install's. Set it before [`KubeRuntime::with_pod_watch`]
    /// (the watch selects by it). Check it with [`objects::check_instance`].
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.inner_mut().instance = instance.into();
        self
    }

    /// Writes only while `leader` holds (an elector's
    /// [`LeaderElector::leadership`]): a replica that lost the Lease or could
    /// not renew it within the renew deadline stops writing at once,
    /// whatever its controller is doing.
    #[must_use]
    pub fn with_leadership(mut self, leader: lease::Leadership) -> Self {
        self.inner_mut().leader = Some(leader);
        self
    }

    /// Who this controller is in events and leases.
    #[must_use]
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.inner_mut().identity = identity.into();
        self
    }

    /// Count GPU requests of pods in every namespace (needs `list pods`
    /// cluster-wide; the chart's `rbac.clusterWideGpuAccounting`).
    #[must_use]
    pub fn with_cluster_gpu_view(mut self, on: bool) -> Self {
        self.inner_mut().cluster_gpu_view = on;
        self
    }

    /// Adopt the Floyd objects of this namespace that carry no install
    /// identity (`app.kubernetes.io/managed-by=floyd` without
    /// `floyd.dev/instance`: made by a Floyd from before identities): before
    /// its first observation as leader, this install labels their
    /// ReplicaSets, pods, Services and state ConfigMaps with its own
    /// identity ([`KubeRuntime::adopt_unlabelled`]). Off by default: without
    /// it such objects are refused as not ours. Needs `patch` on pods (the
    /// chart's `adoptUnlabelled` grants it).
    #[must_use]
    pub fn with_adopt_unlabelled(mut self, on: bool) -> Self {
        self.inner_mut().adopt_unlabelled = on;
        self
    }

    /// Labels every object of this namespace that Floyd manages and that has
    /// no install identity with this install's (a JSON merge patch of
    /// `metadata.labels` only: specs and immutable selectors stay as they
    /// are). Returns `<kind>/<name>` of each object adopted. Only the leader
    /// writes.
    pub async fn adopt_unlabelled(&self) -> Result<Vec<String>, Error> {
        self.may_write("patch", "ReplicaSet", "(unlabelled)")?;
        let selector = objects::unlabelled_selector();
        let labels = serde_json::json!({(objects::LABEL_INSTANCE): self.instance()});
        let mut adopted = Vec::new();
        // Pods first: a Service that selects the install label must find
        // its pods labelled by then.
        adopt_all(&self.pod_api(), &selector, &labels, self, &mut adopted).await?;
        adopt_all(&self.rs_api(), &selector, &labels, self, &mut adopted).await?;
        adopt_all(&self.svc_api(), &selector, &labels, self, &mut adopted).await?;
        adopt_all(&self.cm_api(), &selector, &labels, self, &mut adopted).await?;
        Ok(adopted)
    }

    /// [`KubeRuntime::adopt_unlabelled`] once, when asked for and leading;
    /// a failure is logged and tried again at the next observation.
    async fn ensure_adopted(&self) {
        if !self.inner.adopt_unlabelled
            || self.inner.adopted.load(Ordering::Acquire)
            || self
                .may_write("patch", "ReplicaSet", "(unlabelled)")
                .is_err()
        {
            return;
        }
        match self.adopt_unlabelled().await {
            Ok(objects) => {
                self.inner.adopted.store(true, Ordering::Release);
                if !objects.is_empty() {
                    tracing::info!(install = %self.instance(), ?objects, "adopted Floyd objects without an install identity");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot adopt Floyd objects without an install identity; retrying")
            }
        }
    }

    /// Publish a Kubernetes Event for every action applied (`RevisionCreated`,
    /// `ScalingReplicaSet`, `InstanceDeleted`, `TrafficSwitched`,
    /// `RevisionDeleted`), best effort: a failed Event is logged, never fails
    /// the action. On in [`KubeRuntime::from_env`].
    #[must_use]
    pub fn with_action_events(mut self, on: bool) -> Self {
        self.inner_mut().action_events = on;
        self
    }

    /// The clock for timestamps Floyd writes (created-at annotations, events).
    #[must_use]
    pub fn with_clock(mut self, clock: fn() -> Time) -> Self {
        self.inner_mut().clock = clock;
        self
    }

    /// Feed pod reads from a watch of Floyd's pods (kube-runtime watcher),
    /// re-listed from scratch every `resync`. Until the first list is in,
    /// `observe` lists pods itself. Needs a tokio runtime.
    #[must_use]
    pub fn with_pod_watch(mut self, resync: Duration) -> Self {
        let api: Api<Pod> = Api::namespaced(self.inner.client.clone(), &self.inner.namespace);
        let selector = objects::managed_selector(&self.inner.instance);
        let changes = Some(self.inner.changes.clone());
        self.inner_mut().pods = Some(Cache::start(api, selector, resync, changes));
        self
    }

    /// Feed ReplicaSet and Service reads (observe, the list of services)
    /// from watches of this install's objects too, re-listed every `resync`:
    /// steady-state observation then costs no API requests at all (see
    /// docs/benchmarks.md). Until a first list is in, reads go to the API.
    /// Writes still read the object first (ownership), from the API.
    #[must_use]
    pub fn with_object_watch(mut self, resync: Duration) -> Self {
        let client = self.inner.client.clone();
        let ns = self.inner.namespace.clone();
        let selector = objects::managed_selector(&self.inner.instance);
        let inner = self.inner_mut();
        inner.replica_sets = Some(Cache::start(
            Api::namespaced(client.clone(), &ns),
            selector.clone(),
            resync,
            None,
        ));
        inner.service_objects = Some(Cache::start(
            Api::namespaced(client, &ns),
            selector,
            resync,
            None,
        ));
        self
    }

    /// This install's ReplicaSets of `service` (all of them when `None`).
    async fn replica_sets_of(
        &self,
        service: Option<&ServiceName>,
    ) -> Result<Vec<ReplicaSet>, Error> {
        if let Some(rss) = self
            .inner
            .replica_sets
            .as_ref()
            .and_then(|c| c.of_service(service))
        {
            return Ok(rss);
        }
        let sel = match service {
            Some(s) => objects::service_selector(self.instance(), s),
            None => objects::managed_selector(self.instance()),
        };
        Ok(self
            .rs_api()
            .list(&ListParams::default().labels(&sel))
            .await
            .map_err(api_err("list", "ReplicaSet", self.namespace(), &sel))?
            .items)
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }
    pub fn client(&self) -> &kube::Client {
        &self.inner.client
    }
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }
    /// The install identity (`floyd.dev/instance`).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }
    fn install(&self) -> objects::Install<'_> {
        objects::Install {
            namespace: &self.inner.namespace,
            instance: &self.inner.instance,
        }
    }

    /// Fails unless this replica may write (see [`KubeRuntime::with_leadership`]).
    fn may_write(&self, verb: &'static str, kind: &'static str, name: &str) -> Result<(), Error> {
        match &self.inner.leader {
            Some(l) if !l.holds() => Err(Error::NotLeader {
                verb,
                kind,
                namespace: self.namespace().to_string(),
                name: name.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Reads `name` and checks that it is this install's object for
    /// `service` (and `role`, for Services). `Ok(None)`: it does not exist.
    async fn read_owned<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        name: &str,
        service: &ServiceName,
        role: Option<&str>,
    ) -> Result<Option<K>, Error>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let obj = api
            .get_opt(name)
            .await
            .map_err(api_err("get", kind, self.namespace(), name))?;
        if let Some(o) = &obj
            && let objects::Owner::Foreign(owner) =
                objects::owner_of(o.meta(), self.instance(), service, role)
        {
            return Err(Error::Foreign {
                service: service.to_string(),
                kind,
                namespace: self.namespace().to_string(),
                name: name.to_string(),
                owner,
            });
        }
        Ok(obj)
    }

    /// Whether the pod watch has completed its first list.
    pub fn pod_cache_synced(&self) -> bool {
        self.inner
            .pods
            .as_ref()
            .is_some_and(|c| c.synced.load(Ordering::Acquire))
    }

    /// Whether the ReplicaSet and Service watches have completed their first list.
    pub fn object_cache_synced(&self) -> bool {
        let synced = |s: Option<&Arc<AtomicBool>>| s.is_some_and(|s| s.load(Ordering::Acquire));
        synced(self.inner.replica_sets.as_ref().map(|c| &c.synced))
            && synced(self.inner.service_objects.as_ref().map(|c| &c.synced))
    }

    /// Records the Git commit a revision comes from; written to the
    /// `floyd.dev/commit` annotation when the revision's ReplicaSet is created
    /// (the engine's `CreateRevision` carries no commit).
    pub fn set_commit(&self, service: &ServiceName, revision: &Revision, commit: &str) {
        if let Ok(mut m) = self.inner.commits.lock() {
            m.insert((service.clone(), revision.clone()), commit.to_string());
        }
    }

    /// The commit recorded on a revision's ReplicaSet, if any.
    pub async fn revision_commit(
        &self,
        service: &ServiceName,
        revision: &Revision,
    ) -> Result<Option<String>, Error> {
        let name = objects::replica_set_name(service, revision);
        let rs = self.rs_api().get_opt(&name).await.map_err(api_err(
            "get",
            "ReplicaSet",
            self.namespace(),
            &name,
        ))?;
        Ok(rs.and_then(|r| r.metadata.annotations?.get(ANN_COMMIT).cloned()))
    }

    fn rs_api(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.inner.client.clone(), &self.inner.namespace)
    }
    fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.inner.client.clone(), &self.inner.namespace)
    }
    fn svc_api(&self) -> Api<Service> {
        Api::namespaced(self.inner.client.clone(), &self.inner.namespace)
    }
    fn hpa_api(&self) -> Api<HorizontalPodAutoscaler> {
        Api::namespaced(self.inner.client.clone(), &self.inner.namespace)
    }
    fn cm_api(&self) -> Api<ConfigMap> {
        Api::namespaced(self.inner.client.clone(), &self.inner.namespace)
    }
    fn apply_params(&self) -> PatchParams {
        PatchParams::apply(&self.inner.field_manager).force()
    }

    /// [`runtime::Runtime::autoscale`]: Floyd's HorizontalPodAutoscaler
    /// `<service>` scales the ReplicaSet of `target` when `settled`; while a
    /// rollout is in flight it keeps the revision it scaled, with scaling
    /// disabled and the count the rollout works towards recorded on it
    /// ([`objects::ANN_FROZEN_REPLICAS`]). Without `spec.autoscaling` the
    /// HPA is removed.
    pub async fn autoscale_service(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        target: &Revision,
        settled: bool,
    ) -> Result<Option<u32>, Error> {
        let name = objects::autoscaler_name(service);
        let known_absent = |rt: &Self| {
            rt.inner
                .no_autoscaler
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(service)
        };
        let Some(a) = &spec.autoscaling else {
            if !known_absent(self) {
                // Once per service and process: an HPA left from an earlier
                // spec goes. Not being able to look (an install whose RBAC
                // predates autoscaling) must not stop a service that never
                // asked for one.
                if let Err(e) = self
                    .delete_owned(
                        &self.hpa_api(),
                        "HorizontalPodAutoscaler",
                        &name,
                        service,
                        None,
                    )
                    .await
                {
                    tracing::warn!(service = %service, error = %e, "cannot check for a HorizontalPodAutoscaler to remove");
                }
                self.inner
                    .no_autoscaler
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(service.clone());
            }
            return Ok(None);
        };
        self.inner
            .no_autoscaler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service);
        let live = self
            .read_owned(
                &self.hpa_api(),
                "HorizontalPodAutoscaler",
                &name,
                service,
                None,
            )
            .await?;
        let frozen = live
            .as_ref()
            .and_then(|h| h.metadata.annotations.as_ref())
            .and_then(|a| a.get(objects::ANN_FROZEN_REPLICAS))
            .and_then(|v| v.parse::<u32>().ok());
        let live_target = live
            .as_ref()
            .and_then(|h| h.spec.as_ref())
            .map(|s| s.scale_target_ref.name.clone());
        let desired_of = |rs_name: Option<String>| async move {
            let Some(rs_name) = rs_name else {
                return Ok::<_, Error>(None);
            };
            let rs = self.rs_api().get_opt(&rs_name).await.map_err(api_err(
                "get",
                "ReplicaSet",
                self.namespace(),
                &rs_name,
            ))?;
            Ok(rs.and_then(|r| r.spec?.replicas).map(|n| n.max(0) as u32))
        };
        let target_rs = objects::replica_set_name(service, target);
        let (want_target, want_frozen, count) = if settled {
            let target_desired = desired_of(Some(target_rs.clone())).await?;
            let n =
                objects::autoscaled_replicas(a, spec.replicas, true, frozen, target_desired, None);
            (target.clone(), None, n)
        } else if let Some(f) = frozen {
            // Frozen when the rollout began: keep it exactly as it is.
            return Ok(Some(a.clamp(f)));
        } else {
            let hpa_desired = desired_of(live_target.clone()).await?;
            let n = objects::autoscaled_replicas(a, spec.replicas, false, None, None, hpa_desired);
            // Keep scaling what it scaled (nothing live: the new revision).
            let keep = live_target
                .as_deref()
                .and_then(|t| t.strip_prefix(&format!("{service}-")))
                .map(|r| Revision(r.to_string()))
                .unwrap_or_else(|| target.clone());
            (keep, Some(n), n)
        };
        let want = objects::autoscaler(self.install(), service, a, &want_target, want_frozen);
        let unchanged = live.as_ref().is_some_and(|l| {
            l.spec == want.spec
                && frozen == want_frozen
                && l.metadata.labels.as_ref().is_some_and(|have| {
                    want.metadata
                        .labels
                        .iter()
                        .flatten()
                        .all(|(k, v)| have.get(k) == Some(v))
                })
        });
        if !unchanged {
            self.may_write("apply", "HorizontalPodAutoscaler", &name)?;
            self.hpa_api()
                .patch(&name, &self.apply_params(), &Patch::Apply(&want))
                .await
                .map_err(api_err(
                    "apply",
                    "HorizontalPodAutoscaler",
                    self.namespace(),
                    &name,
                ))?;
        }
        Ok(Some(count))
    }

    /// The state JSON saved for `service` (`floyd-state-<service>` ConfigMap,
    /// key `state.json`), or `None` when none was saved.
    pub async fn load_state(&self, service: &ServiceName) -> Result<Option<String>, Error> {
        let name = objects::state_config_map_name(service);
        let cm = self.cm_api().get_opt(&name).await.map_err(api_err(
            "get",
            "ConfigMap",
            self.namespace(),
            &name,
        ))?;
        Ok(cm.and_then(|c| c.data?.remove(STATE_KEY)))
    }

    /// Saves `json` as the state of `service` (server-side apply; the
    /// ConfigMap is created on first save). Only the leader should call it.
    pub async fn save_state(&self, service: &ServiceName, json: &str) -> Result<(), Error> {
        let name = objects::state_config_map_name(service);
        self.may_write("apply", "ConfigMap", &name)?;
        self.read_owned(&self.cm_api(), "ConfigMap", &name, service, None)
            .await?;
        let cm = objects::state_config_map(self.install(), service, json);
        self.cm_api()
            .patch(&name, &self.apply_params(), &Patch::Apply(&cm))
            .await
            .map_err(api_err("apply", "ConfigMap", self.namespace(), &name))?;
        Ok(())
    }

    /// Publishes a Kubernetes Event (`events.k8s.io/v1`) about `service`'s
    /// rollout, regarding its active Service. Reasons with Fail, Degraded,
    /// RolledBack, Abort or Error in them are Warnings, others Normal.
    pub async fn record_event(
        &self,
        service: &ServiceName,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        let now = (self.inner.clock)();
        let seq = self.inner.event_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{service}.{:x}{:04x}", now.as_millis(), seq & 0xffff);
        let ev = KEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace().to_string()),
                labels: Some(
                    [
                        (
                            objects::LABEL_MANAGED_BY.to_string(),
                            objects::MANAGED_BY.to_string(),
                        ),
                        (
                            objects::LABEL_INSTANCE.to_string(),
                            self.instance().to_string(),
                        ),
                        (LABEL_SERVICE.to_string(), service.to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(objects::jiff_time(now))),
            action: Some("Rollout".into()),
            reason: Some(objects::truncate(reason, 128)),
            note: Some(objects::truncate(message, 1024)),
            type_: Some(
                if objects::is_warning_reason(reason) {
                    "Warning"
                } else {
                    "Normal"
                }
                .into(),
            ),
            reporting_controller: Some("floyd.dev/controller".into()),
            reporting_instance: Some(objects::truncate(&self.inner.identity, 128)),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                name: Some(objects::active_service_name(service)),
                namespace: Some(self.namespace().to_string()),
                ..ObjectReference::default()
            }),
            ..KEvent::default()
        };
        self.may_write("create", "Event", &name)?;
        let api: Api<KEvent> = Api::namespaced(self.inner.client.clone(), self.namespace());
        api.create(&PostParams::default(), &ev)
            .await
            .map_err(api_err("create", "Event", self.namespace(), &name))?;
        Ok(())
    }

    /// A leader elector on Lease `lease_name` in this runtime's namespace,
    /// with this runtime's identity, install and default timings.
    pub fn leader_elector(&self, lease_name: &str) -> LeaderElector {
        self.leader_elector_with(LeaseConfig::new(lease_name, &self.inner.identity))
    }

    /// A leader elector with the given timings (its `instance` is this
    /// runtime's) in this runtime's namespace.
    pub fn leader_elector_with(&self, mut cfg: LeaseConfig) -> LeaderElector {
        cfg.instance = self.inner.instance.clone();
        LeaderElector::new(self.inner.client.clone(), self.namespace(), cfg)
    }

    async fn list_pods(&self, service: &ServiceName) -> Result<Vec<Pod>, Error> {
        let selector = objects::service_selector(self.instance(), service);
        // The cache holds only this install's pods (its watch selects
        // managed-by and instance).
        if let Some(pods) = self
            .inner
            .pods
            .as_ref()
            .and_then(|c| c.of_service(Some(service)))
        {
            return Ok(pods);
        }
        Ok(self
            .pod_api()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_err("list", "Pod", self.namespace(), &selector))?
            .items)
    }

    async fn gpu_capacity(
        &self,
        service: &ServiceName,
        req: &crate::manifest::GpuRequest,
    ) -> Result<runtime::GpuCapacity, Error> {
        let nodes: Api<Node> = Api::all(self.inner.client.clone());
        let nodes = nodes
            .list(&ListParams::default())
            .await
            .map_err(api_err("list", "Node", "", ""))?
            .items;
        let pods: Api<Pod> = if self.inner.cluster_gpu_view {
            Api::all(self.inner.client.clone())
        } else {
            self.pod_api()
        };
        let scope = if self.inner.cluster_gpu_view {
            ""
        } else {
            self.namespace()
        };
        let pods = pods
            .list(&ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"))
            .await
            .map_err(api_err("list", "Pod", scope, ""))?
            .items;
        Ok(observe::gpu_capacity(
            req,
            &nodes,
            &pods,
            self.instance(),
            service,
        ))
    }

    /// Finds what drifted from what Floyd applies ([`observe::drift`]),
    /// puts it back unless `spec.driftPolicy` is `report` (and only while
    /// allowed to write), and announces each drift the first time this
    /// process sees it with an Event (`DriftCorrected` / `DriftDetected`).
    /// A failed correction is reported as not corrected and retried at the
    /// next observation.
    async fn handle_drift(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        rss: &[ReplicaSet],
        active: Option<&Service>,
        preview: Option<&Service>,
    ) -> Vec<runtime::Drift> {
        let routing = {
            let mut routes = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
            let r = routes.entry(service.clone()).or_default();
            // What the live Services select is what was applied last (a
            // restarted Floyd learns it here before anyone deletes one).
            if let Some(a) = active.and_then(observe::selected_revision) {
                r.active = Some(a);
            }
            if let Some(p) = preview.and_then(observe::selected_revision) {
                r.preview = Some(p);
            }
            r.clone()
        };
        let findings = observe::drift(
            self.install(),
            service,
            spec,
            rss,
            active,
            preview,
            &routing,
        );
        let mut out = Vec::new();
        for f in findings {
            let correct = spec.drift_policy == crate::manifest::DriftPolicy::Correct
                && self.may_write("apply", f.kind, &f.object).is_ok();
            let corrected = correct
                && {
                    let result = match &f.fix {
                        observe::Fix::ReplicaSet(rs) => self
                            .rs_api()
                            .patch(&f.object, &self.apply_params(), &Patch::Apply(rs.as_ref()))
                            .await
                            .map(|_| ())
                            .map_err(api_err("apply", "ReplicaSet", self.namespace(), &f.object)),
                        // Through the ownership check: a Service recreated by
                        // someone else meanwhile is not taken over.
                        observe::Fix::Service(svc) => {
                            let preview = svc
                                .metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get(objects::ANN_ROLE))
                                .is_some_and(|r| r == "preview");
                            let revision = svc
                                .spec
                                .as_ref()
                                .and_then(|s| s.selector.as_ref())
                                .and_then(|s| s.get(objects::LABEL_REVISION))
                                .map(|r| Revision(r.clone()));
                            self.apply_service(service, spec, preview, revision.as_ref())
                                .await
                        }
                    };
                    match result {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(%service, object = %f.object, error = %e, "cannot correct drift");
                            false
                        }
                    }
                };
            let key = (service.clone(), f.kind, f.object.clone(), f.message.clone());
            let new = match self.inner.drift_seen.lock() {
                Ok(mut seen) => {
                    // A corrected drift is forgotten: the same edit again is new.
                    if corrected {
                        !seen.remove(&key)
                    } else {
                        seen.insert(key)
                    }
                }
                Err(_) => false,
            };
            if new {
                let (reason, verb) = if corrected {
                    ("DriftCorrected", "put back as applied")
                } else {
                    ("DriftDetected", "left as it is")
                };
                let note = format!("{} {}: {} ({verb})", f.kind, f.object, f.message);
                tracing::warn!(%service, kind = f.kind, object = %f.object, diff = %f.message, corrected, "drift");
                if let Err(e) = self.record_event(service, reason, &note).await {
                    tracing::warn!(%service, error = %e, "could not record an Event");
                }
            }
            out.push(runtime::Drift {
                kind: f.kind.to_string(),
                object: f.object,
                message: f.message,
                corrected,
                new,
            });
        }
        // Drift of this service that is gone (fixed by hand, or by Git) is forgotten.
        if let Ok(mut seen) = self.inner.drift_seen.lock() {
            seen.retain(|(s, kind, object, message)| {
                s != service
                    || out
                        .iter()
                        .any(|d| d.kind == *kind && d.object == *object && d.message == *message)
            });
        }
        out
    }

    async fn get_opt_service(&self, name: &str) -> Result<Option<Service>, Error> {
        // This install's Services only: another owner's object of that
        // name reads as absent here, and is refused when written.
        if let Some(svc) = self
            .inner
            .service_objects
            .as_ref()
            .and_then(|c| c.by_name(name))
        {
            return Ok(svc);
        }
        self.svc_api().get_opt(name).await.map_err(api_err(
            "get",
            "Service",
            self.namespace(),
            name,
        ))
    }

    async fn create_revision(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        revision: &Revision,
        template: &crate::manifest::InstanceTemplate,
    ) -> Result<(), Error> {
        let name = objects::replica_set_name(service, revision);
        let ns = self.namespace();
        self.may_write("apply", "ReplicaSet", &name)?;
        let with_service =
            !matches!(spec.strategy, Strategy::BlueGreen { .. }) && !spec.ports.is_empty();
        if with_service {
            // Refuse before writing anything: a revision whose Service
            // cannot be applied would be half a deployment.
            let svc = objects::active_service_name(service);
            self.read_owned(&self.svc_api(), "Service", &svc, service, Some("active"))
                .await?;
        }
        // Re-applying an existing revision keeps its replica count, creation
        // time and commit: CreateRevision must never scale anything.
        let existing = self
            .read_owned(&self.rs_api(), "ReplicaSet", &name, service, None)
            .await?;
        let ann = existing
            .as_ref()
            .and_then(|r| r.metadata.annotations.clone())
            .unwrap_or_default();
        let replicas = existing
            .as_ref()
            .and_then(|r| r.spec.as_ref()?.replicas)
            .unwrap_or(0)
            .max(0) as u32;
        let noted = self
            .inner
            .commits
            .lock()
            .ok()
            .and_then(|m| m.get(&(service.clone(), revision.clone())).cloned());
        // GPUs: an existing revision keeps how its pods ask for them; a new
        // one asks the way the nodes advertise this kind (MIG single/mixed,
        // time-slicing with or without renaming).
        let gpu = match (
            objects::GpuScheme::from_annotations(Some(&ann)),
            &template.resources.gpu,
        ) {
            (Some(s), _) => Some(s),
            (None, Some(req)) if existing.is_none() => {
                let nodes: Api<Node> = Api::all(self.inner.client.clone());
                let nodes = nodes
                    .list(&ListParams::default())
                    .await
                    .map_err(api_err("list", "Node", "", ""))?
                    .items;
                Some(observe::placement(req, &nodes))
            }
            _ => None,
        };
        let meta = RevisionMeta {
            created_at: ann
                .get(ANN_CREATED_AT)
                .and_then(|s| objects::parse_time(s))
                .unwrap_or_else(self.inner.clock),
            commit: noted.or_else(|| ann.get(ANN_COMMIT).cloned()),
            gpu,
        };
        let mut rs = objects::replica_set(
            self.install(),
            service,
            revision,
            spec,
            template,
            &meta,
            replicas,
        )?;
        objects::keep_selector(&mut rs, existing.as_ref());
        self.rs_api()
            .patch(&name, &self.apply_params(), &Patch::Apply(&rs))
            .await
            .map_err(api_err("apply", "ReplicaSet", ns, &name))?;
        // Rolling and Recreate: the Service selects every revision, so it can
        // exist from the first revision on. Blue-green waits for SetTraffic:
        // applying a service-wide selector there would mix revisions.
        if with_service {
            self.apply_service(service, spec, false, None).await?;
            self.ensure_stable_service(service, spec).await?;
        }
        Ok(())
    }

    async fn apply_service(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        preview: bool,
        revision: Option<&Revision>,
    ) -> Result<(), Error> {
        let obj = objects::service_object(self.install(), service, spec, preview, revision);
        let name = obj.metadata.name.clone().unwrap_or_default();
        self.may_write("apply", "Service", &name)?;
        let role = if preview { "preview" } else { "active" };
        self.read_owned(&self.svc_api(), "Service", &name, service, Some(role))
            .await?;
        self.svc_api()
            .patch(&name, &self.apply_params(), &Patch::Apply(&obj))
            .await
            .map_err(api_err("apply", "Service", self.namespace(), &name))?;
        Ok(())
    }

    async fn scale(
        &self,
        service: &ServiceName,
        revision: &Revision,
        replicas: u32,
    ) -> Result<(), Error> {
        let name = objects::replica_set_name(service, revision);
        self.may_write("apply", "ReplicaSet/scale", &name)?;
        if self
            .read_owned(&self.rs_api(), "ReplicaSet", &name, service, None)
            .await?
            .is_none()
        {
            return Err(Error::NoSuchRevision {
                service: service.to_string(),
                revision: revision.to_string(),
                name,
            });
        }
        self.scale_owned(service, revision, replicas).await
    }

    /// [`Self::scale`] of a ReplicaSet already checked to be this install's.
    async fn scale_owned(
        &self,
        service: &ServiceName,
        revision: &Revision,
        replicas: u32,
    ) -> Result<(), Error> {
        let name = objects::replica_set_name(service, revision);
        // Server-side apply on the scale subresource: Floyd owns exactly
        // spec.replicas and nothing else changes.
        let scale = serde_json::json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": self.namespace()},
            "spec": {"replicas": replicas},
        });
        match self
            .rs_api()
            .patch_scale(&name, &self.apply_params(), &Patch::Apply(&scale))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::NoSuchRevision {
                service: service.to_string(),
                revision: revision.to_string(),
                name,
            }),
            Err(e) => Err(api_err(
                "apply",
                "ReplicaSet/scale",
                self.namespace(),
                &name,
            )(e)),
        }
    }

    /// Deletes pod `pod` of `revision` and lowers the ReplicaSet's count by
    /// one, so that exactly that pod goes.
    ///
    /// Invariant: no pod of the ReplicaSet other than `pod` that existed
    /// before the call is deleted because of it, whatever the ReplicaSet
    /// controller does meanwhile. Hence the order:
    ///
    /// 1. The pod is deleted first (with its UID as precondition, so a
    ///    same-named newer pod is never hit). From then on it is terminating
    ///    and no longer one of the ReplicaSet's replicas.
    /// 2. The count is lowered. If the ReplicaSet controller noticed the
    ///    missing replica in between, it has created one replacement; that
    ///    pod is the newest and not ready, which the controller removes
    ///    first on the scale-down (unassigned < pending < not ready <
    ///    ready, newest first). If it had not noticed yet, the count already
    ///    matches and nothing else is removed.
    ///
    /// Lowering the count first instead (with a low `pod-deletion-cost`)
    /// lets the controller pick the victim: any not-ready pod ranks before
    /// the cost, and a controller whose cache has not seen the annotation
    /// yet picks by age, so a second pod would go.
    ///
    /// A pod that is already gone (or already terminating) is not an error:
    /// only the count is lowered.
    async fn delete_instance(
        &self,
        service: &ServiceName,
        revision: &Revision,
        pod: &str,
    ) -> Result<(), Error> {
        let ns = self.namespace();
        let rs_name = objects::replica_set_name(service, revision);
        self.may_write("delete", "Pod", pod)?;
        let rs = self
            .read_owned(&self.rs_api(), "ReplicaSet", &rs_name, service, None)
            .await?
            .ok_or_else(|| Error::NoSuchRevision {
                service: service.to_string(),
                revision: revision.to_string(),
                name: rs_name.clone(),
            })?;
        let replicas = rs.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
        let live = self
            .read_owned(&self.pod_api(), "Pod", pod, service, None)
            .await?;
        if let Some(p) = live
            && p.metadata.deletion_timestamp.is_none()
        {
            if p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(objects::LABEL_REVISION))
                .map(String::as_str)
                != Some(revision.as_str())
            {
                return Err(Error::Spec {
                    service: service.to_string(),
                    message: format!(
                        "pod {pod} is not an instance of revision {revision}; not deleted"
                    ),
                });
            }
            let mut dp = DeleteParams::default();
            if let Some(uid) = p.metadata.uid.clone() {
                dp = dp.preconditions(kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                });
            }
            match self.pod_api().delete(pod, &dp).await {
                Ok(_) => {}
                // Gone meanwhile, or replaced by a same-named pod (UID
                // precondition failed): the chosen pod is gone either way.
                Err(e)
                    if is_not_found(&e) || matches!(&e, kube::Error::Api(s) if s.code == 409) => {}
                Err(e) => return Err(api_err("delete", "Pod", ns, pod)(e)),
            }
        }
        self.scale_owned(service, revision, replicas.saturating_sub(1))
            .await
    }

    /// Deletes `name` when it exists and is this install's object for
    /// `service` (and `role`); absent is fine, foreign is [`Error::Foreign`].
    /// The UID read is the delete's precondition, so an object recreated
    /// by someone else in between is never deleted.
    async fn delete_owned<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        name: &str,
        service: &ServiceName,
        role: Option<&str>,
    ) -> Result<(), Error>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.may_write("delete", kind, name)?;
        let Some(obj) = self.read_owned(api, kind, name, service, role).await? else {
            return Ok(());
        };
        let mut dp = DeleteParams::background();
        if let Some(uid) = obj.meta().uid.clone() {
            dp = dp.preconditions(kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            });
        }
        match api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_err("delete", kind, self.namespace(), name)(e)),
        }
    }

    async fn apply_one(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        action: &Action,
    ) -> Result<(), Error> {
        tracing::debug!(%service, namespace = %self.namespace(), action = %describe(action), "kube apply");
        match action {
            Action::CreateRevision { revision, template } => {
                self.create_revision(service, spec, revision, template)
                    .await
            }
            Action::Scale { revision, replicas } => self.scale(service, revision, *replicas).await,
            Action::DeleteInstance { revision, instance } => {
                self.delete_instance(service, revision, instance).await
            }
            Action::SetWeight {
                canary,
                stable,
                weight,
            } => {
                self.inner
                    .canary
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        service.clone(),
                        runtime::CanarySplit {
                            canary: canary.clone(),
                            stable: stable.clone(),
                            weight: *weight,
                        },
                    );
                if let Some(route) = gateway::http_route(spec) {
                    // The route splits by weight; the active Service keeps
                    // selecting every revision for in-cluster clients.
                    self.route_weight(service, spec, route, canary, stable.as_ref(), *weight)
                        .await?;
                }
                if spec.ports.is_empty() {
                    return Ok(());
                }
                // No traffic router: every ready pod of every revision, so
                // the share follows the ratio of ready pods.
                self.apply_service(service, spec, false, None).await?;
                self.delete_owned(
                    &self.svc_api(),
                    "Service",
                    &objects::preview_service_name(service),
                    service,
                    Some("preview"),
                )
                .await
            }
            Action::SetTraffic { active, preview } => {
                self.inner
                    .canary
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(service);
                if spec.ports.is_empty() {
                    // A Service needs at least one port; nothing to route.
                    return Ok(());
                }
                self.apply_service(service, spec, false, active.as_ref())
                    .await?;
                self.inner
                    .routes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        service.clone(),
                        observe::Routing {
                            active: active.clone(),
                            preview: preview.clone(),
                        },
                    );
                match preview {
                    Some(p) => self.apply_service(service, spec, true, Some(p)).await?,
                    None => {
                        self.delete_owned(
                            &self.svc_api(),
                            "Service",
                            &objects::preview_service_name(service),
                            service,
                            Some("preview"),
                        )
                        .await?
                    }
                }
                // A settled canary behind an HTTPRoute: all of it to stable.
                if active.is_none()
                    && preview.is_none()
                    && let Some(route) = gateway::http_route(spec)
                {
                    self.route_settled(service, spec, route).await?;
                }
                Ok(())
            }
            Action::DeleteRevision { revision } => {
                self.delete_owned(
                    &self.rs_api(),
                    "ReplicaSet",
                    &objects::replica_set_name(service, revision),
                    service,
                    None,
                )
                .await
            }
        }
    }
}

/// A one-line description of an action for logs (no templates, no env values).
fn describe(action: &Action) -> String {
    match action {
        Action::CreateRevision { revision, .. } => format!("create revision {revision}"),
        Action::Scale { revision, replicas } => format!("scale {revision} to {replicas}"),
        Action::DeleteInstance { revision, instance } => {
            format!("delete instance {instance} of {revision}")
        }
        Action::SetTraffic { active, preview } => format!(
            "traffic active={} preview={}",
            active.as_ref().map_or("all", |r| r.as_str()),
            preview.as_ref().map_or("none", |r| r.as_str())
        ),
        Action::DeleteRevision { revision } => format!("delete revision {revision}"),
        Action::SetWeight { canary, weight, .. } => {
            format!("canary {canary} weight {weight}%")
        }
    }
}

/// The Event an applied action is announced with (reason, note).
fn action_event(service: &ServiceName, action: &Action) -> (&'static str, String) {
    match action {
        Action::CreateRevision { revision, .. } => (
            "RevisionCreated",
            format!(
                "Created revision {revision} (ReplicaSet {})",
                objects::replica_set_name(service, revision)
            ),
        ),
        Action::Scale { revision, replicas } => (
            "ScalingReplicaSet",
            format!(
                "Scaled replica set {} to {replicas}",
                objects::replica_set_name(service, revision)
            ),
        ),
        Action::DeleteInstance { revision, instance } => (
            "InstanceDeleted",
            format!("Deleted pod {instance} of revision {revision}"),
        ),
        Action::SetTraffic { active, preview } => (
            "TrafficSwitched",
            format!(
                "Service {service} routes to {}; preview: {}",
                active
                    .as_ref()
                    .map_or("every ready revision".to_string(), |r| format!(
                        "revision {r}"
                    )),
                preview
                    .as_ref()
                    .map_or("none".to_string(), |r| format!("revision {r}"))
            ),
        ),
        Action::SetWeight { canary, weight, .. } => (
            "CanaryWeight",
            format!(
                "Canary revision {canary} weight {weight}% (no traffic router: approximated by the ratio of ready pods)"
            ),
        ),
        Action::DeleteRevision { revision } => (
            "RevisionDeleted",
            format!(
                "Deleted ReplicaSet {} (revision history limit)",
                objects::replica_set_name(service, revision)
            ),
        ),
    }
}

/// The pod name (downward API `POD_NAME`), else `HOSTNAME`, else `floyd`.
pub fn identity_from_env() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "floyd".to_string())
}

/// Merge-patches `labels` into every object of `api` matching `selector`.
async fn adopt_all<K>(
    api: &Api<K>,
    selector: &str,
    labels: &serde_json::Value,
    rt: &KubeRuntime,
    adopted: &mut Vec<String>,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    let items = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(api_err("list", kind, rt.namespace(), selector))?
        .items;
    for item in items {
        let name = item.meta().name.clone().unwrap_or_default();
        // A whole object's identity and the labels, nothing else: the API
        // server merges it into what is there.
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": kind,
            "metadata": {"name": name, "labels": labels},
        });
        match api
            .patch(
                &name,
                &PatchParams {
                    field_manager: Some(rt.inner.field_manager.clone()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => adopted.push(format!("{kind}/{name}")),
            // Deleted meanwhile (a pod replaced by its ReplicaSet): nothing to adopt.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err("patch", kind, rt.namespace(), &name)(e)),
        }
    }
    Ok(())
}

/// Applies one watch event to the index (a list's objects go to `building`
/// until the list is complete).
fn apply_watch_event<K: kube::Resource<DynamicType = ()> + Clone>(
    index: &std::sync::RwLock<Index<K>>,
    building: &mut Option<Index<K>>,
    ev: &watcher::Event<K>,
) {
    let live = || index.write().unwrap_or_else(|e| e.into_inner());
    match ev {
        watcher::Event::Init => *building = Some(Index::default()),
        watcher::Event::InitApply(o) => building
            .get_or_insert_with(Index::default)
            .insert(o.clone()),
        watcher::Event::InitDone => {
            if let Some(fresh) = building.take() {
                *live() = fresh;
            }
        }
        watcher::Event::Apply(o) => live().insert(o.clone()),
        watcher::Event::Delete(o) => live().remove(o.meta().name.as_deref().unwrap_or_default()),
    }
}

async fn run_cache<K>(
    api: Api<K>,
    index: Arc<std::sync::RwLock<Index<K>>>,
    synced: Arc<AtomicBool>,
    resync: Duration,
    selector: String,
    changes: Option<Arc<runtime::Changes>>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    // A (re-)list builds a fresh index, swapped in whole at InitDone.
    let mut building: Option<Index<K>> = None;
    loop {
        let cfg = watcher::Config::default().labels(&selector);
        let stream = watcher(api.clone(), cfg).default_backoff();
        let deadline = tokio::time::sleep(resync);
        tokio::pin!(stream, deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        apply_watch_event(&index, &mut building, &ev);
                        if let (Some(c), watcher::Event::Apply(o) | watcher::Event::Delete(o)) =
                            (&changes, &ev)
                            && let Some(name) = o
                                .meta()
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(objects::LABEL_SERVICE))
                                .and_then(|n| ServiceName::parse(n).ok())
                        {
                            c.mark(&name);
                        }
                        if matches!(ev, watcher::Event::InitDone) {
                            synced.store(true, Ordering::Release);
                        }
                    }
                    // The backoff wrapper retries; the store keeps its last view.
                    Some(Err(e)) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
                    None => break,
                },
            }
        }
        // Dropping the stream ends the watch; the next one starts with a full
        // list (Init ... InitDone), which replaces the store atomically.
    }
}

#[async_trait::async_trait]
impl runtime::Runtime for KubeRuntime {
    fn name(&self) -> &'static str {
        "kube"
    }

    async fn autoscale(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        target: &Revision,
        settled: bool,
    ) -> Result<Option<u32>, runtime::Error> {
        Ok(self
            .autoscale_service(service, spec, target, settled)
            .await?)
    }

    async fn services(&self) -> Result<Vec<ServiceName>, runtime::Error> {
        self.ensure_adopted().await;
        let rss = self.replica_sets_of(None).await?;
        let names: BTreeSet<ServiceName> = rss
            .iter()
            .filter_map(|r| r.metadata.labels.as_ref()?.get(LABEL_SERVICE))
            .filter_map(|s| ServiceName::parse(s).ok())
            .collect();
        Ok(names.into_iter().collect())
    }

    async fn observe(
        &self,
        service: &ServiceName,
        spec: Option<&ServiceSpec>,
        _now: Time,
    ) -> Result<Observed, runtime::Error> {
        self.ensure_adopted().await;
        let rss = self.replica_sets_of(Some(service)).await?;
        let pods = self.list_pods(service).await?;
        let active = self
            .get_opt_service(&objects::active_service_name(service))
            .await?;
        let preview = self
            .get_opt_service(&objects::preview_service_name(service))
            .await?;
        let gpu_req = spec.and_then(|s| s.gpu());
        let gpu = match gpu_req {
            Some(req) => Some(self.gpu_capacity(service, req).await?),
            None => None,
        };
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let mut observed = observe::observed(
            service,
            &rss,
            &pod_refs,
            active.as_ref(),
            preview.as_ref(),
            gpu_req,
            gpu,
        );
        observed.canary = self
            .inner
            .canary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned();
        if let Some(spec) = spec {
            observed.drift = self
                .handle_drift(service, spec, &rss, active.as_ref(), preview.as_ref())
                .await;
        }
        Ok(observed)
    }

    async fn apply(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        actions: &[Action],
    ) -> Result<(), runtime::Error> {
        objects::check_service_name(service)?;
        for action in actions {
            self.apply_one(service, spec, action).await?;
            if self.inner.action_events {
                let (reason, mut message) = action_event(service, action);
                if let (Action::SetWeight { canary, weight, .. }, Some(route)) =
                    (action, gateway::http_route(spec))
                {
                    message = format!(
                        "Canary revision {canary} weight {weight}% (HTTPRoute {route}: Services {} and {})",
                        gateway::stable_service_name(service),
                        gateway::canary_service_name(service)
                    );
                }
                if let Err(e) = self.record_event(service, reason, &message).await {
                    tracing::warn!(%service, error = %e, "could not record an Event");
                }
            }
        }
        Ok(())
    }

    async fn load_state(&self, service: &ServiceName) -> Result<Option<String>, runtime::Error> {
        Ok(KubeRuntime::load_state(self, service).await?)
    }

    async fn save_state(&self, service: &ServiceName, json: &str) -> Result<(), runtime::Error> {
        Ok(KubeRuntime::save_state(self, service, json).await?)
    }

    async fn record_event(
        &self,
        service: &ServiceName,
        reason: &str,
        message: &str,
    ) -> Result<(), runtime::Error> {
        Ok(KubeRuntime::record_event(self, service, reason, message).await?)
    }

    fn changes(&self) -> Option<Arc<runtime::Changes>> {
        self.inner.pods.as_ref().map(|_| self.inner.changes.clone())
    }

    fn note_commit(&self, service: &ServiceName, revision: &Revision, commit: &str) {
        self.set_commit(service, revision, commit);
    }

    async fn delete_service(&self, service: &ServiceName) -> Result<(), runtime::Error> {
        let ns = self.namespace();
        let sel = objects::service_selector(self.instance(), service);
        let rss = self
            .rs_api()
            .list(&ListParams::default().labels(&sel))
            .await
            .map_err(api_err("list", "ReplicaSet", ns, &sel))?;
        for rs in rss.items {
            if let Some(name) = rs.metadata.name {
                self.delete_owned(&self.rs_api(), "ReplicaSet", &name, service, None)
                    .await?;
            }
        }
        let svc = self.svc_api();
        let active = objects::active_service_name(service);
        self.delete_owned(&svc, "Service", &active, service, Some("active"))
            .await?;
        let preview = objects::preview_service_name(service);
        self.delete_owned(&svc, "Service", &preview, service, Some("preview"))
            .await?;
        self.delete_role_services(service).await?;
        if !self
            .inner
            .no_autoscaler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(service)
        {
            // Best effort, as in `autoscale_service`.
            if let Err(e) = self
                .delete_owned(
                    &self.hpa_api(),
                    "HorizontalPodAutoscaler",
                    &objects::autoscaler_name(service),
                    service,
                    None,
                )
                .await
            {
                tracing::warn!(service = %service, error = %e, "cannot remove the HorizontalPodAutoscaler");
            }
        }
        self.delete_owned(
            &self.cm_api(),
            "ConfigMap",
            &objects::state_config_map_name(service),
            service,
            None,
        )
        .await?;
        Ok(())
    }
}
