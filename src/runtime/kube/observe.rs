//! Pure translation of what the API server reports (ReplicaSets, Pods,
//! Services, Nodes) into Floyd's [`Observed`]. No I/O: the runtime fetches
//! (or reflects) the objects and hands them here.

use super::objects::{
    ANN_COMMIT, ANN_CREATED_AT, ANN_TEMPLATE, GpuScheme, Install, LABEL_GPU_MEMORY,
    LABEL_GPU_PRODUCT, LABEL_INSTANCE, LABEL_REVISION, LABEL_SERVICE, RevisionMeta,
    active_service_name, floyd_time, gpu_resource, keep_selector, parse_time, preview_service_name,
    replica_set, service_object,
};
use crate::manifest::{
    GpuRequest, GpuSharing, InstanceTemplate, Revision, ServiceName, ServiceSpec, Strategy,
};
use crate::placement::{self, GpuDevice, GpuPool, Holder, normalize_product};
use crate::runtime::{GpuCapacity, Instance, InstancePhase, Observed, ObservedRevision};
use crate::time::Time;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Container waiting reasons that mean "this will not become ready by itself soon".
const STUCK_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

fn label<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Whether a pod still exists as far as resources are concerned (not
/// Succeeded/Failed). Terminating pods count: they hold their GPUs until gone.
pub fn is_unfinished(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Units of extended resource `resource` that `pod` asks for (limits, or
/// requests when only those are set; init containers count at their max,
/// as the scheduler does).
pub fn pod_resource_units(pod: &Pod, resource: &str) -> u32 {
    let Some(spec) = &pod.spec else { return 0 };
    let units = |r: &Option<k8s_openapi::api::core::v1::ResourceRequirements>| -> u32 {
        r.as_ref()
            .and_then(|r| {
                r.limits
                    .as_ref()
                    .and_then(|l| l.get(resource))
                    .or_else(|| r.requests.as_ref().and_then(|q| q.get(resource)))
            })
            .map(quantity_units)
            .unwrap_or(0)
    };
    let main: u32 = spec.containers.iter().map(|c| units(&c.resources)).sum();
    let init: u32 = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| units(&c.resources))
        .max()
        .unwrap_or(0);
    main.max(init)
}

/// Extended resources are integers; anything else counts as 0.
fn quantity_units(q: &Quantity) -> u32 {
    q.0.trim().parse().unwrap_or(0)
}

/// One pod as a Floyd instance.
pub fn instance_from_pod(pod: &Pod, gpu_resource: Option<&str>) -> Instance {
    let meta = &pod.metadata;
    let id = meta.name.clone().unwrap_or_default();
    let created_at = meta
        .creation_timestamp
        .as_ref()
        .map(|t| floyd_time(&t.0))
        .unwrap_or(Time::ZERO);
    let status = pod.status.as_ref();
    let phase_str = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let terminating = meta.deletion_timestamp.is_some();
    let phase = if terminating {
        InstancePhase::Terminating
    } else {
        match phase_str {
            "Running" => InstancePhase::Running,
            "Succeeded" | "Failed" => InstancePhase::Failed,
            _ => InstancePhase::Pending,
        }
    };
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let ready = conditions
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .cloned();
    let ready_since = match &ready {
        Some(c) if c.status == "True" && phase == InstancePhase::Running => Some(
            c.last_transition_time
                .as_ref()
                .map(|t| floyd_time(&t.0))
                .unwrap_or(created_at),
        ),
        _ => None,
    };
    let statuses = status.and_then(|s| s.container_statuses.as_ref());
    let restarts: u32 = statuses
        .map(|cs| cs.iter().map(|c| c.restart_count.max(0) as u32).sum())
        .unwrap_or(0);

    let mut reason = None;
    if terminating {
        reason = Some("terminating".to_string());
    } else if phase == InstancePhase::Failed {
        let r = status
            .and_then(|s| s.reason.clone())
            .unwrap_or_else(|| phase_str.to_string());
        let m = status.and_then(|s| s.message.clone()).unwrap_or_default();
        reason = Some(join(&r, &m));
    }
    if reason.is_none()
        && let Some(cs) = statuses
    {
        for c in cs {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            if let Some(w) = waiting
                && let Some(r) = w.reason.as_deref()
                && STUCK_REASONS.contains(&r)
            {
                let mut text = join(r, w.message.as_deref().unwrap_or(""));
                if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                    text.push_str(&format!(" (last exit code {})", t.exit_code));
                }
                reason = Some(text);
                break;
            }
        }
    }
    if reason.is_none()
        && let Some(c) = conditions.and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
    {
        reason = Some(join(
            c.reason.as_deref().unwrap_or("Unschedulable"),
            c.message.as_deref().unwrap_or(""),
        ));
    }
    if reason.is_none()
        && ready_since.is_none()
        && phase == InstancePhase::Running
        && let Some(c) = &ready
    {
        reason = Some(join(
            "not ready",
            c.message.as_deref().unwrap_or("readiness probe failing"),
        ));
    }

    let gpus = match (
        gpu_resource,
        pod.spec.as_ref().and_then(|s| s.node_name.as_ref()),
    ) {
        (Some(r), Some(node)) => (0..pod_resource_units(pod, r))
            .map(|i| format!("{node}/{r}#{i}"))
            .collect(),
        _ => Vec::new(),
    };
    Instance {
        id,
        phase,
        created_at,
        ready_since,
        restarts,
        reason,
        gpus,
    }
}

fn join(reason: &str, message: &str) -> String {
    if message.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}: {message}")
    }
}

/// One ReplicaSet and its pods. `None` when the ReplicaSet is not one of
/// Floyd's (no revision label or unreadable template annotation).
pub fn observed_revision(
    rs: &ReplicaSet,
    pods: &[&Pod],
    gpu_resource: Option<&str>,
) -> Option<ObservedRevision> {
    let revision = Revision(label(&rs.metadata, LABEL_REVISION)?.to_string());
    let ann = rs.metadata.annotations.as_ref();
    let created_at = ann
        .and_then(|a| a.get(ANN_CREATED_AT))
        .and_then(|s| parse_time(s))
        .or_else(|| {
            rs.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| floyd_time(&t.0))
        })
        .unwrap_or(Time::ZERO);
    let template: InstanceTemplate = ann
        .and_then(|a| a.get(ANN_TEMPLATE))
        .and_then(|s| serde_json::from_str(s).ok())?;
    let desired = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as u32;
    let mut instances: Vec<Instance> = pods
        .iter()
        .filter(|p| label(&p.metadata, LABEL_REVISION) == Some(revision.as_str()))
        // Finished pods are not replicas to the ReplicaSet controller (it
        // replaces them), so they are not instances either.
        .filter(|p| is_unfinished(p))
        .map(|p| instance_from_pod(p, gpu_resource))
        .collect();
    instances.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Some(ObservedRevision {
        revision,
        created_at,
        desired,
        instances,
        template,
    })
}

/// The revision a Service selects, if it selects one.
pub fn selected_revision(svc: &Service) -> Option<Revision> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()?
        .get(LABEL_REVISION)
        .map(|r| Revision(r.clone()))
}

/// Everything of one service, from the objects carrying its labels.
pub fn observed(
    service: &ServiceName,
    replica_sets: &[ReplicaSet],
    pods: &[&Pod],
    active: Option<&Service>,
    preview: Option<&Service>,
    gpu_request: Option<&GpuRequest>,
    gpu: Option<GpuCapacity>,
) -> Observed {
    let resource = gpu_request.map(gpu_resource);
    let mut revisions: Vec<ObservedRevision> = replica_sets
        .iter()
        .filter(|rs| label(&rs.metadata, LABEL_SERVICE) == Some(service.as_str()))
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .filter_map(|rs| {
            // The resource this revision's pods were created with.
            let recorded =
                GpuScheme::from_annotations(rs.metadata.annotations.as_ref()).map(|s| s.resource);
            observed_revision(rs, pods, recorded.as_deref().or(resource.as_deref()))
        })
        .collect();
    revisions.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.revision.cmp(&b.revision))
    });
    Observed {
        revisions,
        active: active.and_then(selected_revision),
        preview: preview.and_then(selected_revision),
        gpu,
        gates: Vec::new(),
        traffic: Vec::new(),
        ..Observed::default()
    }
}

/// GPU feature discovery's label: how many shared replicas each GPU offers
/// under time-slicing.
pub const LABEL_GPU_REPLICAS: &str = "nvidia.com/gpu.replicas";

/// A GFD product label split into the product and what was appended to it:
/// `NVIDIA-A100-SXM4-40GB-MIG-1g.5gb` (MIG `single`: the node's
/// `nvidia.com/gpu` are slices of that profile) or `Tesla-T4-SHARED`
/// (time-slicing: `nvidia.com/gpu` are shared replicas).
pub fn split_product(label: &str) -> (&str, Option<&str>, bool) {
    if let Some((base, profile)) = label.split_once("-MIG-") {
        return (base, Some(profile), false);
    }
    match label.strip_suffix("-SHARED") {
        Some(base) => (base, None, true),
        None => (label, None, false),
    }
}

/// GPU feature discovery's label naming how a node shares its GPUs
/// (device plugin ≥ 0.15): `time-slicing` means `nvidia.com/gpu` are
/// shared replicas even when the product label carries no `-SHARED`.
pub const LABEL_GPU_SHARING: &str = "nvidia.com/gpu.sharing-strategy";

/// One GPU resource a node advertises, as devices of the shared placement
/// model ([`crate::placement`]): Kubernetes GPUs are counted with the same
/// pool, matching rules and unit kinds as the simulator's and the local
/// runtime's, so `floyd simulate` and the Kubernetes runtime agree on what
/// fits.
#[derive(Debug, Clone)]
pub struct NodeOffer {
    /// `nvidia.com/gpu`, `nvidia.com/gpu.shared`, `nvidia.com/mig-<profile>`.
    pub resource: String,
    /// The kind of unit one of this resource is.
    pub sharing: GpuSharing,
    /// The devices standing for it (whole GPUs: one per unit; slots and
    /// slices: one device holding all of the node's units of the resource).
    pub devices: Vec<GpuDevice>,
}

/// What `node` advertises, in the placement model. Follows what the NVIDIA
/// device plugin advertises:
///
/// | unit | node advertises |
/// |---|---|
/// | whole GPU | `nvidia.com/gpu`, product without suffix, no time-slicing |
/// | MIG `<p>` slice | `nvidia.com/mig-<p>` (strategy `mixed`), or `nvidia.com/gpu` with product `…-MIG-<p>` (strategy `single`) |
/// | time-slice slot | `nvidia.com/gpu.shared` (`renameByDefault`), or `nvidia.com/gpu` with product `…-SHARED`, `nvidia.com/gpu.replicas` > 1 or `nvidia.com/gpu.sharing-strategy: time-slicing` |
///
/// A cordoned node offers nothing. Resources that may be requested in more
/// than one way come first in the order a request prefers them (renamed
/// and `mixed` before plain `nvidia.com/gpu`). Device indices start at
/// `*next` and advance it.
pub fn node_offers(node: &Node, next: &mut u32) -> Vec<NodeOffer> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        return Vec::new();
    }
    let labels = node.metadata.labels.as_ref();
    let product_label = labels
        .and_then(|l| l.get(LABEL_GPU_PRODUCT))
        .map(String::as_str)
        .unwrap_or("");
    let (base, mig_single, shared) = split_product(product_label);
    let memory_mib: Option<u64> = labels
        .and_then(|l| l.get(LABEL_GPU_MEMORY))
        .and_then(|m| m.parse().ok());
    let replicas: u32 = labels
        .and_then(|l| l.get(LABEL_GPU_REPLICAS))
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let time_slicing = shared
        || replicas > 1
        || labels
            .and_then(|l| l.get(LABEL_GPU_SHARING))
            .map(String::as_str)
            == Some("time-slicing");
    let product = normalize_product(base);
    let mut device = |slots: Option<u32>, mig: BTreeMap<String, u32>| {
        let d = GpuDevice {
            index: *next,
            uuid: None,
            product: product.clone(),
            memory_mib,
            time_sliced_replicas: slots,
            mig,
        };
        *next += 1;
        d
    };
    let mut out = Vec::new();
    let shared_units = node_allocatable(node, "nvidia.com/gpu.shared");
    if shared_units > 0 {
        out.push(NodeOffer {
            resource: "nvidia.com/gpu.shared".into(),
            sharing: GpuSharing::TimeSliced,
            devices: vec![device(Some(shared_units), BTreeMap::new())],
        });
    }
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    for (resource, q) in allocatable.into_iter().flatten() {
        let Some(profile) = resource.strip_prefix("nvidia.com/mig-") else {
            continue;
        };
        let units = quantity_units(q);
        if units > 0 {
            let slices = BTreeMap::from([(profile.to_string(), units)]);
            out.push(NodeOffer {
                resource: resource.clone(),
                sharing: GpuSharing::Mig {
                    profile: profile.to_string(),
                },
                devices: vec![device(None, slices)],
            });
        }
    }
    let gpus = node_allocatable(node, "nvidia.com/gpu");
    if gpus > 0 {
        let (sharing, devices) = match mig_single {
            Some(p) => (
                GpuSharing::Mig {
                    profile: p.to_string(),
                },
                vec![device(None, BTreeMap::from([(p.to_string(), gpus)]))],
            ),
            None if time_slicing => (
                GpuSharing::TimeSliced,
                vec![device(Some(gpus), BTreeMap::new())],
            ),
            None => (
                GpuSharing::Exclusive,
                (0..gpus).map(|_| device(None, BTreeMap::new())).collect(),
            ),
        };
        out.push(NodeOffer {
            resource: "nvidia.com/gpu".into(),
            sharing,
            devices,
        });
    }
    out
}

/// How `node` offers the kind of GPU `req` asks for, or `None` when it
/// does not offer it (other product, too little memory, cordoned, other
/// sharing): the first of [`node_offers`] with a device that
/// [`placement::offers`] the request.
pub fn node_scheme(node: &Node, req: &GpuRequest) -> Option<GpuScheme> {
    let offer = node_offers(node, &mut 0)
        .into_iter()
        .find(|o| o.devices.iter().any(|d| placement::offers(d, req)))?;
    let product_label = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_GPU_PRODUCT))
        .cloned()
        .unwrap_or_default();
    Some(GpuScheme {
        resource: offer.resource,
        product_label: req.product.as_ref().map(|_| product_label),
    })
}

fn node_allocatable(node: &Node, resource: &str) -> u32 {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(resource))
        .map(quantity_units)
        .unwrap_or(0)
}

/// How a new revision's pods should ask for `req`: the scheme of the
/// matching nodes with the most units (a pod names one resource; a cluster
/// mixing schemes for one product gets the larger part). Without matching
/// nodes, the request's defaults ([`gpu_resource`], the product as given).
pub fn placement(req: &GpuRequest, nodes: &[Node]) -> GpuScheme {
    let mut by_scheme: Vec<(GpuScheme, u32)> = Vec::new();
    for n in nodes {
        if let Some(s) = node_scheme(n, req) {
            let units = node_allocatable(n, &s.resource);
            match by_scheme.iter_mut().find(|(k, _)| *k == s) {
                Some((_, u)) => *u += units,
                None => by_scheme.push((s, units)),
            }
        }
    }
    by_scheme
        .into_iter()
        .max_by_key(|(_, u)| *u)
        .map(|(s, _)| s)
        .unwrap_or_else(|| GpuScheme {
            resource: gpu_resource(req),
            product_label: req.product.clone(),
        })
}

/// The cluster's GPUs as one placement pool: every node's offers
/// ([`node_offers`]), with the units that unfinished pods bound to a node
/// request marked as held (terminating pods included: they hold their GPUs
/// until the kubelet has stopped them). `pods` should be every pod that
/// can run on those nodes (the cluster-wide view); pods of other
/// namespaces that are not visible make `free` an over-estimate, which the
/// scheduler then corrects (the pod stays Pending/Unschedulable and Floyd
/// reports it). Units are held by the pod's service only for this
/// install's pods (`instance`); a same-named service of another install is
/// someone else's.
pub fn gpu_pool(nodes: &[Node], pods: &[Pod], instance: &str) -> GpuPool {
    let mut next = 0u32;
    let mut by_node: BTreeMap<&str, Vec<NodeOffer>> = BTreeMap::new();
    for n in nodes {
        if let Some(name) = n.metadata.name.as_deref() {
            by_node.insert(name, node_offers(n, &mut next));
        }
    }
    let mut pool = GpuPool::new(
        by_node
            .values()
            .flatten()
            .flat_map(|o| o.devices.iter().cloned())
            .collect(),
    );
    for p in pods.iter().filter(|p| is_unfinished(p)) {
        let Some(offers) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| by_node.get(n))
        else {
            continue;
        };
        let pod_name = p.metadata.name.as_deref().unwrap_or("");
        let service = match label(&p.metadata, LABEL_SERVICE) {
            Some(s) if label(&p.metadata, LABEL_INSTANCE) == Some(instance) => s.to_string(),
            // Not a service name (those are DNS labels): never matches one.
            _ => format!("other/{pod_name}"),
        };
        let holder = Holder {
            service,
            instance: pod_name.to_string(),
        };
        for o in offers {
            let units = pod_resource_units(p, &o.resource);
            if units > 0 {
                let devices: Vec<u32> = o.devices.iter().map(|d| d.index).collect();
                pool.hold_on(&devices, &o.sharing, units, &holder);
            }
        }
    }
    pool
}

/// GPU capacity for `req` as the engine sees it: [`gpu_pool`]'s answer,
/// the same [`GpuPool::capacity`] the simulator and the local runtime give.
pub fn gpu_capacity(
    req: &GpuRequest,
    nodes: &[Node],
    pods: &[Pod],
    instance: &str,
    service: &ServiceName,
) -> GpuCapacity {
    gpu_pool(nodes, pods, instance).capacity(req, service.as_str())
}

/// Where `expected` (what Floyd applies) is not found in `live`, as
/// `path: applied != live`. Fields only in `live` are not drift: the API
/// server fills in defaults (`imagePullPolicy`, `dnsPolicy`, ...), which is
/// why this compares field by field instead of hashing both. Lists must have
/// the same length (an added env var or container is drift); resource
/// quantities compare by value (`1000m` = `1`).
pub fn first_difference(expected: &Value, live: &Value, path: &str) -> Option<String> {
    let differ = || Some(format!("{path}: {expected} (applied) != {live} (live)"));
    match (expected, live) {
        (Value::Null, _) => None,
        (Value::Object(e), Value::Object(l)) => e.iter().find_map(|(k, ev)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match l.get(k) {
                Some(lv) => first_difference(ev, lv, &p),
                None if ev.is_null() => None,
                None => Some(format!("{p}: {ev} (applied) is missing (live)")),
            }
        }),
        (Value::Array(e), Value::Array(l)) => {
            if e.len() != l.len() {
                return Some(format!(
                    "{path}: {} item(s) applied, {} live",
                    e.len(),
                    l.len()
                ));
            }
            e.iter()
                .zip(l)
                .enumerate()
                .find_map(|(i, (ev, lv))| first_difference(ev, lv, &format!("{path}[{i}]")))
        }
        (Value::String(e), Value::String(l)) => {
            if e == l || quantity_value(e).is_some_and(|a| quantity_value(l) == Some(a)) {
                None
            } else {
                differ()
            }
        }
        (e, l) if e == l => None,
        _ => differ(),
    }
}

/// A Kubernetes quantity (`500m`, `64Mi`, `1.5`, `2e3`) in thousandths of
/// its unit, when `s` is one. Enough to tell the API server's canonical form
/// of a quantity from a different value.
fn quantity_value(s: &str) -> Option<i128> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some((num * mult * 1000.0).round() as i128)
}

/// Which revisions a blue-green service's Services select.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub active: Option<Revision>,
    pub preview: Option<Revision>,
}

/// The one revision of `service` with replicas, when exactly one has any.
fn only_scaled_revision(service: &ServiceName, replica_sets: &[ReplicaSet]) -> Option<Revision> {
    let mut scaled = replica_sets
        .iter()
        .filter(|rs| label(&rs.metadata, LABEL_SERVICE) == Some(service.as_str()))
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
        .filter_map(|rs| label(&rs.metadata, LABEL_REVISION).map(|r| Revision(r.to_string())));
    let first = scaled.next()?;
    scaled.next().is_none().then_some(first)
}

/// What to apply to put a drifted object back.
#[derive(Debug, Clone)]
pub enum Fix {
    ReplicaSet(Box<ReplicaSet>),
    Service(Box<Service>),
}

/// One drifted object and its fix.
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: &'static str,
    pub object: String,
    pub message: String,
    pub fix: Fix,
}

/// Compares the live ReplicaSets and Services of `service` with what Floyd
/// applies for `spec` (pod templates rebuilt from each revision's template
/// annotation; Service ports, selector keys and labels), and says what
/// drifted and how to put it back. A missing active Service of a service
/// with ports and revisions is drift too, and so is a missing blue-green
/// preview Service while one is routed: a blue-green Service is recreated
/// selecting the revision `routing` says it selected (or, unknown, the only
/// revision with replicas).
pub fn drift(
    install: Install<'_>,
    service: &ServiceName,
    spec: &ServiceSpec,
    replica_sets: &[ReplicaSet],
    active: Option<&Service>,
    preview: Option<&Service>,
    routing: &Routing,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for rs in replica_sets
        .iter()
        .filter(|rs| label(&rs.metadata, LABEL_SERVICE) == Some(service.as_str()))
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
    {
        let Some(revision) = label(&rs.metadata, LABEL_REVISION).map(|r| Revision(r.to_string()))
        else {
            continue;
        };
        let ann = rs.metadata.annotations.as_ref();
        let Some(template) = ann
            .and_then(|a| a.get(ANN_TEMPLATE))
            .and_then(|s| serde_json::from_str::<InstanceTemplate>(s).ok())
        else {
            continue;
        };
        let meta = RevisionMeta {
            created_at: ann
                .and_then(|a| a.get(ANN_CREATED_AT))
                .and_then(|s| parse_time(s))
                .unwrap_or(Time::ZERO),
            commit: ann.and_then(|a| a.get(ANN_COMMIT)).cloned(),
            gpu: GpuScheme::from_annotations(ann),
        };
        let replicas = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0)
            .max(0) as u32;
        let Ok(mut want) = replica_set(
            install, service, &revision, spec, &template, &meta, replicas,
        ) else {
            continue;
        };
        keep_selector(&mut want, Some(rs));
        let applied =
            serde_json::to_value(want.spec.as_ref().map(|s| &s.template)).unwrap_or(Value::Null);
        let live =
            serde_json::to_value(rs.spec.as_ref().map(|s| &s.template)).unwrap_or(Value::Null);
        if let Some(d) = first_difference(&applied, &live, "spec.template") {
            out.push(Finding {
                kind: "ReplicaSet",
                object: rs.metadata.name.clone().unwrap_or_default(),
                message: d,
                fix: Fix::ReplicaSet(Box::new(want)),
            });
        }
    }
    if spec.ports.is_empty() {
        return out;
    }
    let blue_green = matches!(spec.strategy, Strategy::BlueGreen { .. });
    for (live, is_preview) in [(active, false), (preview, true)] {
        let name = if is_preview {
            preview_service_name(service)
        } else {
            active_service_name(service)
        };
        match live {
            Some(live) => {
                let want = service_object(
                    install,
                    service,
                    spec,
                    is_preview,
                    selected_revision(live).as_ref(),
                );
                let e = json!({"metadata": {"labels": want.metadata.labels}, "spec": want.spec});
                let l = json!({"metadata": {"labels": live.metadata.labels}, "spec": live.spec});
                if let Some(d) = first_difference(&e, &l, "") {
                    out.push(Finding {
                        kind: "Service",
                        object: name,
                        message: d,
                        fix: Fix::Service(Box::new(want)),
                    });
                }
            }
            None if !is_preview && !blue_green && !replica_sets.is_empty() => out.push(Finding {
                kind: "Service",
                object: name,
                message: "deleted".to_string(),
                fix: Fix::Service(Box::new(service_object(
                    install, service, spec, false, None,
                ))),
            }),
            None if blue_green => {
                let selected = if is_preview {
                    routing.preview.clone()
                } else {
                    routing
                        .active
                        .clone()
                        .or_else(|| only_scaled_revision(service, replica_sets))
                };
                if let Some(revision) = selected {
                    out.push(Finding {
                        kind: "Service",
                        object: name,
                        message: "deleted".to_string(),
                        fix: Fix::Service(Box::new(service_object(
                            install,
                            service,
                            spec,
                            is_preview,
                            Some(&revision),
                        ))),
                    });
                }
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn base(name: &str) -> serde_json::Value {
        json!({
            "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z",
                          "labels": {"floyd.dev/instance": "a", "floyd.dev/service": "web", "floyd.dev/revision": "r1"}},
            "spec": {"containers": [{"name": "app", "image": "x",
                       "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        })
    }

    #[test]
    fn pod_states_become_instances() {
        let t0 = parse_time("2026-01-01T00:00:00Z").unwrap();
        let t5 = parse_time("2026-01-01T00:00:05Z").unwrap();
        // (status, deletion, want phase, want ready_since, reason contains)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            serde_json::Value,
            bool,
            InstancePhase,
            Option<Time>,
            Option<&str>,
        )> = vec![
            (
                json!({"phase": "Pending"}),
                false,
                InstancePhase::Pending,
                None,
                None,
            ),
            (
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}),
                false,
                InstancePhase::Pending,
                None,
                Some("Unschedulable: 0/2 nodes"),
            ),
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:05Z"}]}),
                false,
                InstancePhase::Running,
                Some(t5),
                None,
            ),
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False",
                    "message": "containers with unready status: [app]"}]}),
                false,
                InstancePhase::Running,
                None,
                Some("not ready: containers with unready status"),
            ),
            (
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"exitCode": 1}}}]}),
                false,
                InstancePhase::Running,
                None,
                Some("CrashLoopBackOff: back-off 40s (last exit code 1)"),
            ),
            (
                json!({"phase": "Pending", "containerStatuses": [{"name": "app", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}),
                false,
                InstancePhase::Pending,
                None,
                Some("ImagePullBackOff"),
            ),
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
                true,
                InstancePhase::Terminating,
                None,
                Some("terminating"),
            ),
            (
                json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}),
                false,
                InstancePhase::Failed,
                None,
                Some("Evicted: low on memory"),
            ),
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
                false,
                InstancePhase::Running,
                Some(t0),
                None,
            ),
        ];
        for (i, (status, deleting, phase, ready, reason)) in cases.into_iter().enumerate() {
            let mut v = base("p");
            v["status"] = status;
            if deleting {
                v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
            }
            let inst = instance_from_pod(&pod(v), None);
            assert_eq!(inst.phase, phase, "case {i}");
            assert_eq!(inst.ready_since, ready, "case {i}");
            match reason {
                Some(r) => assert!(
                    inst.reason.as_deref().unwrap_or("").contains(r),
                    "case {i}: {:?} lacks {r:?}",
                    inst.reason
                ),
                None => assert_eq!(inst.reason, None, "case {i}"),
            }
        }
    }

    #[test]
    fn restarts_sum_over_containers() {
        let mut v = base("p");
        v["status"] = json!({"phase": "Running", "containerStatuses": [
            {"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 2},
            {"name": "b", "image": "x", "imageID": "", "ready": true, "restartCount": 3}]});
        assert_eq!(instance_from_pod(&pod(v), None).restarts, 5);
    }

    fn node(name: &str, product: &str, gpus: u32) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": "81920"}},
            "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string(), "cpu": "8"}},
        }))
        .unwrap()
    }

    fn gpu_pod(name: &str, service: &str, node: Option<&str>, phase: &str, deleting: bool) -> Pod {
        let mut v = base(name);
        v["metadata"]["labels"]["floyd.dev/service"] = json!(service);
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        v["status"] = json!({"phase": phase});
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
        }
        pod(v)
    }

    #[test]
    fn gpu_capacity_subtracts_unfinished_and_terminating_pods_per_product() {
        let req = GpuRequest {
            count: 1,
            product: Some("A100".into()),
            memory_mib: None,
            sharing: GpuSharing::Exclusive,
            allow_in_place: true,
        };
        let nodes = vec![
            node("a1", "A100", 4),
            node("a2", "A100", 2),
            node("h1", "H100", 8),
        ];
        let pods = vec![
            gpu_pod("w1", "web", Some("a1"), "Running", false),
            gpu_pod("w2", "web", Some("a1"), "Running", true), // terminating: still holds
            gpu_pod("o1", "other", Some("a2"), "Running", false),
            gpu_pod("o2", "other", Some("h1"), "Running", false), // other product
            gpu_pod("done", "other", Some("a2"), "Succeeded", false), // finished: frees
            gpu_pod("pend", "web", None, "Pending", false),       // unscheduled: holds nothing
        ];
        let web = ServiceName::parse("web").unwrap();
        let c = gpu_capacity(&req, &nodes, &pods, "a", &web);
        assert_eq!(
            c,
            GpuCapacity {
                kind: "A100".into(),
                exist: 6,
                free: 3,
                held_by_service: 2
            }
        );
        let mut big = req.clone();
        big.memory_mib = Some(100_000);
        assert_eq!(gpu_capacity(&big, &nodes, &pods, "a", &web).exist, 0);
    }

    #[test]
    fn mig_slices_are_counted_by_their_own_resource() {
        let req = GpuRequest {
            count: 1,
            product: None,
            memory_mib: None,
            sharing: GpuSharing::Mig {
                profile: "1g.10gb".into(),
            },
            allow_in_place: true,
        };
        let n: Node = serde_json::from_value(json!({"metadata": {"name": "m"},
            "status": {"allocatable": {"nvidia.com/mig-1g.10gb": "7", "nvidia.com/gpu": "0"}}}))
        .unwrap();
        let mut v = base("p");
        v["spec"]["nodeName"] = json!("m");
        v["spec"]["containers"][0]["resources"] =
            json!({"limits": {"nvidia.com/mig-1g.10gb": "2"}});
        let c = gpu_capacity(
            &req,
            &[n],
            &[pod(v)],
            "a",
            &ServiceName::parse("web").unwrap(),
        );
        assert_eq!((c.exist, c.free, c.held_by_service), (7, 5, 2));
        assert_eq!(c.kind, "mig-1g.10gb");
    }

    #[test]
    fn drift_compares_what_floyd_applied_not_what_the_server_added() {
        // (applied, live, difference expected at)
        let cases = [
            (json!({"a": 1}), json!({"a": 1, "defaulted": "x"}), None),
            (
                json!({"image": "web:1"}),
                json!({"image": "web:2"}),
                Some("t.image"),
            ),
            (
                json!({"env": [{"n": 1}]}),
                json!({"env": [{"n": 1}, {"n": 2}]}),
                Some("t.env"),
            ),
            (json!({"cpu": "1000m"}), json!({"cpu": "1"}), None),
            (json!({"memory": "1Gi"}), json!({"memory": "1024Mi"}), None),
            (json!({"cpu": "500m"}), json!({"cpu": "1"}), Some("t.cpu")),
            (
                json!({"ports": [{"port": 80}]}),
                json!({"ports": [{"port": 81}]}),
                Some("t.ports[0].port"),
            ),
            (json!({"gone": {"x": 1}}), json!({}), Some("t.gone")),
        ];
        for (i, (applied, live, at)) in cases.into_iter().enumerate() {
            let d = first_difference(&applied, &live, "t");
            match at {
                None => assert_eq!(d, None, "case {i}"),
                Some(p) => assert!(
                    d.as_deref()
                        .is_some_and(|d| d.starts_with(&format!("{p}:"))),
                    "case {i}: {d:?}"
                ),
            }
        }
    }

    fn gfd_node(name: &str, product: &str, extra: &[(&str, &str)], alloc: &[(&str, u32)]) -> Node {
        let mut labels = serde_json::Map::new();
        labels.insert("nvidia.com/gpu.product".into(), json!(product));
        labels.insert("nvidia.com/gpu.memory".into(), json!("40960"));
        for (k, v) in extra {
            labels.insert(k.to_string(), json!(v));
        }
        let alloc: serde_json::Map<String, serde_json::Value> = alloc
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_string())))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                                      "status": {"allocatable": alloc}}))
        .unwrap()
    }

    fn req(sharing: GpuSharing, product: Option<&str>) -> GpuRequest {
        GpuRequest {
            count: 1,
            product: product.map(str::to_string),
            memory_mib: None,
            sharing,
            allow_in_place: true,
        }
    }

    /// A pod holding `n` of `resource` on `node`, of `namespace`'s `service`.
    fn holder(node: &str, resource: &str, n: u32, instance: &str, service: &str) -> Pod {
        pod(json!({
            "metadata": {"name": format!("{service}-x"), "namespace": "other",
                         "labels": {"floyd.dev/instance": instance, "floyd.dev/service": service}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x",
                     "resources": {"limits": {resource: n.to_string()}}}]},
            "status": {"phase": "Running"},
        }))
    }

    #[test]
    fn gpu_capacity_follows_how_nodes_advertise_gpus() {
        const A100: &str = "NVIDIA-A100-SXM4-40GB";
        let mig = || GpuSharing::Mig {
            profile: "1g.5gb".into(),
        };
        let nodes = vec![
            // Whole GPUs.
            gfd_node("whole", A100, &[], &[("nvidia.com/gpu", 4)]),
            // MIG single: nvidia.com/gpu are 1g.5gb slices, product suffixed.
            gfd_node(
                "mig-single",
                &format!("{A100}-MIG-1g.5gb"),
                &[("nvidia.com/mig.strategy", "single")],
                &[("nvidia.com/gpu", 7)],
            ),
            // MIG mixed: slices under their own resource, plain product.
            gfd_node(
                "mig-mixed",
                A100,
                &[("nvidia.com/mig.strategy", "mixed")],
                &[("nvidia.com/mig-1g.5gb", 14), ("nvidia.com/mig-3g.20gb", 2)],
            ),
            // Time-slicing without rename: nvidia.com/gpu are replicas.
            gfd_node(
                "ts-plain",
                &format!("{A100}-SHARED"),
                &[("nvidia.com/gpu.replicas", "4")],
                &[("nvidia.com/gpu", 8)],
            ),
            // Time-slicing with renameByDefault: nvidia.com/gpu.shared.
            gfd_node(
                "ts-renamed",
                A100,
                &[("nvidia.com/gpu.replicas", "4")],
                &[("nvidia.com/gpu.shared", 16)],
            ),
            gfd_node(
                "other-product",
                "NVIDIA-H100-80GB-HBM3",
                &[],
                &[("nvidia.com/gpu", 8)],
            ),
        ];
        // Another namespace's pods hold GPUs on these nodes (the cluster-wide view).
        let pods = vec![
            holder("whole", "nvidia.com/gpu", 1, "other", "x"),
            holder("whole", "nvidia.com/gpu", 1, "a", "web"),
            holder("mig-single", "nvidia.com/gpu", 2, "other", "x"),
            holder("mig-mixed", "nvidia.com/mig-1g.5gb", 3, "a", "web"),
            holder("ts-plain", "nvidia.com/gpu", 1, "other", "x"),
            holder("ts-renamed", "nvidia.com/gpu.shared", 5, "b", "web"),
        ];
        let web = ServiceName::parse("web").unwrap();
        // (request, want (exist, free, held), placement resource, product label)
        let cases = [
            (
                req(GpuSharing::Exclusive, Some(A100)),
                (4, 2, 1),
                "nvidia.com/gpu",
                Some(A100.to_string()),
            ),
            (
                req(mig(), Some(A100)),
                (21, 16, 3),
                "nvidia.com/mig-1g.5gb",
                Some(A100.to_string()),
            ),
            (req(mig(), None), (21, 16, 3), "nvidia.com/mig-1g.5gb", None),
            (
                req(GpuSharing::TimeSliced, Some(A100)),
                (24, 18, 0),
                "nvidia.com/gpu.shared",
                Some(A100.to_string()),
            ),
            (
                req(GpuSharing::Exclusive, None),
                (12, 10, 1),
                "nvidia.com/gpu",
                None,
            ),
        ];
        for (i, (r, (exist, free, held), resource, label)) in cases.into_iter().enumerate() {
            let c = gpu_capacity(&r, &nodes, &pods, "a", &web);
            assert_eq!(
                (c.exist, c.free, c.held_by_service),
                (exist, free, held),
                "case {i}: {c:?}"
            );
            let p = placement(&r, &nodes);
            assert_eq!(p.resource, resource, "case {i}");
            assert_eq!(p.product_label, label, "case {i}");
        }
        // A cluster with MIG single only: pods ask for nvidia.com/gpu on the
        // suffixed product, not for a nvidia.com/mig-* nothing offers.
        let single = vec![nodes[1].clone()];
        let p = placement(&req(mig(), Some(A100)), &single);
        assert_eq!(p.resource, "nvidia.com/gpu");
        assert_eq!(
            p.product_label.as_deref(),
            Some("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb")
        );
        // Time-slicing without rename only.
        let plain = vec![nodes[3].clone()];
        let p = placement(&req(GpuSharing::TimeSliced, Some(A100)), &plain);
        assert_eq!(p.resource, "nvidia.com/gpu");
        assert_eq!(
            p.product_label.as_deref(),
            Some("NVIDIA-A100-SXM4-40GB-SHARED")
        );
        // Nothing matching: the request's defaults.
        let p = placement(&req(mig(), Some("T4")), &nodes);
        assert_eq!(p.resource, "nvidia.com/mig-1g.5gb");
    }
}
