//! Pure builders: Floyd's model → the Kubernetes objects Floyd applies
//! (ReplicaSet per revision, active and preview Services, the state
//! ConfigMap, Events). No I/O here: every function takes data and returns
//! an object, so the exact shape is unit-tested without an API server.

use super::Error;
use crate::manifest::{
    GpuRequest, GpuSharing, InstanceTemplate, MAIN_CONTAINER, PortRef, Probe, ProbeAction,
    Revision, ServiceName, ServiceSpec,
};
use crate::time::Time;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, Container, ContainerPort, EnvVar, ExecAction, HTTPGetAction, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec,
    Probe as KProbe, ResourceRequirements, Service, ServicePort, ServiceSpec as KServiceSpec,
    TCPSocketAction, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// `app.kubernetes.io/name=<service>` on everything Floyd makes.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/managed-by=floyd`: how Floyd finds (and garbage-collects) its objects.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "floyd";
/// `floyd.dev/instance=<install>`: which Floyd install owns the object
/// (`--instance`, the chart's release name). Floyd lists, changes and
/// deletes only objects carrying its own.
pub const LABEL_INSTANCE: &str = "floyd.dev/instance";
/// The install identity when `--instance` is not given.
pub const DEFAULT_INSTANCE: &str = "floyd";
pub const LABEL_SERVICE: &str = "floyd.dev/service";
pub const LABEL_REVISION: &str = "floyd.dev/revision";
/// ReplicaSet annotations: what a restarted controller needs to resume.
pub const ANN_REVISION: &str = "floyd.dev/revision";
pub const ANN_COMMIT: &str = "floyd.dev/commit";
pub const ANN_CREATED_AT: &str = "floyd.dev/created-at";
/// The instance template as JSON, so an old revision can be scaled up again
/// exactly as it was (rollback) even after its spec left Git.
pub const ANN_TEMPLATE: &str = "floyd.dev/template";
/// Role of a Service Floyd made: `active` or `preview`.
pub const ANN_ROLE: &str = "floyd.dev/role";
/// Read by the ReplicaSet controller when it picks pods to remove on a
/// scale-down: the lowest cost goes first.
pub const ANN_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Toleration key of the NVIDIA device plugin's usual GPU node taint.
pub const GPU_TAINT: &str = "nvidia.com/gpu";
/// GPU feature discovery's product label.
pub const LABEL_GPU_PRODUCT: &str = "nvidia.com/gpu.product";
/// GPU feature discovery's per-GPU memory label (MiB).
pub const LABEL_GPU_MEMORY: &str = "nvidia.com/gpu.memory";
/// ReplicaSet annotations: the GPU resource its pods request and the
/// product label they select, chosen from the nodes when the revision was
/// created ([`GpuScheme`]), so re-applying it never changes them.
pub const ANN_GPU_RESOURCE: &str = "floyd.dev/gpu-resource";
pub const ANN_GPU_PRODUCT_LABEL: &str = "floyd.dev/gpu-product-label";
/// The ConfigMap key holding a service's state JSON.
pub const STATE_KEY: &str = "state.json";

/// `<service>-<revision>`.
pub fn replica_set_name(service: &ServiceName, revision: &Revision) -> String {
    format!("{service}-{revision}")
}
/// The active-traffic Service: `<service>`.
pub fn active_service_name(service: &ServiceName) -> String {
    service.as_str().to_string()
}
/// The blue-green preview Service: `<service>-preview`.
pub fn preview_service_name(service: &ServiceName) -> String {
    format!("{service}-preview")
}
/// `floyd-state-<service>`.
pub fn state_config_map_name(service: &ServiceName) -> String {
    format!("floyd-state-{service}")
}
/// Label selector for everything of one service of one install.
pub fn service_selector(instance: &str, service: &ServiceName) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={instance},{LABEL_SERVICE}={service}")
}
/// Label selector for everything one Floyd install manages.
pub fn managed_selector(instance: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={instance}")
}

/// Floyd's objects without any install identity (from before identities).
pub fn unlabelled_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},!{LABEL_INSTANCE}")
}

/// Checks an install identity (`--instance`): it is a label value, so at
/// most 63 characters of `[A-Za-z0-9-_.]`, starting and ending with a letter
/// or digit. The error says what is wrong; the caller names the flag.
pub fn check_instance(instance: &str) -> Result<(), String> {
    if instance.is_empty() {
        return Err("must not be empty (it names this install: use the Helm release name)".into());
    }
    if instance.len() > 63 {
        return Err(format!(
            "{instance:?} is {} characters; a label value has at most 63",
            instance.len()
        ));
    }
    if let Some(c) = instance
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{instance:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(instance.chars().next()) || !edge(instance.chars().last()) {
        return Err(format!(
            "{instance:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Who owns an object Floyd is about to write or delete, judged from its
/// labels. Only [`Owner::Ours`] may be changed or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This install, this service (and role, for Services).
    Ours,
    /// Someone else; the text says who, for the error message.
    Foreign(String),
}

/// Whose object `meta` is, for install `instance`, Floyd service `service`
/// and (Services only) role `role` (`active`/`preview`).
pub fn owner_of(
    meta: &ObjectMeta,
    instance: &str,
    service: &ServiceName,
    role: Option<&str>,
) -> Owner {
    let labels = meta.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    match get(LABEL_MANAGED_BY) {
        Some(MANAGED_BY) => {}
        Some(other) => {
            return Owner::Foreign(format!("managed by {other:?} ({LABEL_MANAGED_BY}={other})"));
        }
        None => {
            return Owner::Foreign(format!(
                "not managed by Floyd (no {LABEL_MANAGED_BY} label)"
            ));
        }
    }
    match get(LABEL_INSTANCE) {
        Some(i) if i == instance => {}
        Some(i) => return Owner::Foreign(format!("Floyd install {i:?} ({LABEL_INSTANCE}={i})")),
        None => {
            return Owner::Foreign(format!(
                "Floyd without an install identity (no {LABEL_INSTANCE} label); to adopt it, label it {LABEL_INSTANCE}={instance}"
            ));
        }
    }
    match get(LABEL_SERVICE) {
        Some(s) if s == service.as_str() => {}
        other => {
            return Owner::Foreign(format!(
                "Floyd service {:?} of this install",
                other.unwrap_or("")
            ));
        }
    }
    if let Some(want) = role {
        let have = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_ROLE))
            .map(String::as_str);
        if have != Some(want) {
            return Owner::Foreign(format!(
                "the {} Service of Floyd service {service}, not its {want} Service",
                have.unwrap_or("unknown")
            ));
        }
    }
    Owner::Ours
}

pub use crate::manifest::reserved_name_conflict;

/// Checks that a Floyd service name also fits Kubernetes' stricter rules for
/// Service objects (DNS-1035: starts with a letter; `<name>-preview` at most
/// 63 characters), so a bad name fails with a message instead of a 422.
pub fn check_service_name(service: &ServiceName) -> Result<(), Error> {
    let s = service.as_str();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(Error::InvalidName {
            service: s.to_string(),
            message:
                "a Kubernetes Service name must start with a letter (DNS-1035); rename the service"
                    .into(),
        });
    }
    let preview = preview_service_name(service);
    if preview.len() > 63 {
        return Err(Error::InvalidName {
            service: s.to_string(),
            message: format!(
                "the preview Service name {preview:?} would be {} characters (max 63); use a service name of at most 55 characters",
                preview.len()
            ),
        });
    }
    Ok(())
}

/// Where Floyd's objects go and whose they are: the namespace and the
/// install identity ([`LABEL_INSTANCE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Install<'a> {
    pub namespace: &'a str,
    pub instance: &'a str,
}

/// The labels on every object Floyd makes for `service`.
pub fn base_labels(instance: &str, service: &ServiceName) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), service.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_SERVICE.to_string(), service.to_string()),
    ])
}

fn revision_labels(
    instance: &str,
    service: &ServiceName,
    revision: &Revision,
) -> BTreeMap<String, String> {
    let mut l = base_labels(instance, service);
    l.insert(LABEL_REVISION.to_string(), revision.to_string());
    l
}

/// RFC 3339 with milliseconds, as Kubernetes writes times.
pub fn format_time(t: Time) -> String {
    match k8s_openapi::jiff::Timestamp::from_millisecond(t.as_millis() as i64) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Parses [`format_time`]'s output (or any RFC 3339 time).
pub fn parse_time(s: &str) -> Option<Time> {
    let ts: k8s_openapi::jiff::Timestamp = s.parse().ok()?;
    u64::try_from(ts.as_millisecond()).ok().map(Time)
}

pub fn jiff_time(t: Time) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_millisecond(t.as_millis() as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

pub fn floyd_time(ts: &k8s_openapi::jiff::Timestamp) -> Time {
    Time(u64::try_from(ts.as_millisecond()).unwrap_or(0))
}

/// How a cluster's nodes offer the GPUs a request asks for, as the NVIDIA
/// device plugin and GPU feature discovery advertise them (see
/// `observe::node_scheme`): the extended resource a pod requests and the
/// exact `nvidia.com/gpu.product` value it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuScheme {
    /// `nvidia.com/gpu`, `nvidia.com/gpu.shared`, `nvidia.com/mig-<profile>`.
    pub resource: String,
    /// The product label with GFD's suffixes (`-MIG-1g.10gb`, `-SHARED`);
    /// `None` when the request names no product.
    pub product_label: Option<String>,
}

impl GpuScheme {
    /// The scheme recorded on a ReplicaSet, if any.
    pub fn from_annotations(ann: Option<&BTreeMap<String, String>>) -> Option<GpuScheme> {
        let ann = ann?;
        Some(GpuScheme {
            resource: ann.get(ANN_GPU_RESOURCE)?.clone(),
            product_label: ann.get(ANN_GPU_PRODUCT_LABEL).cloned(),
        })
    }
}

/// The extended resource a GPU request asks for when nothing is known about
/// the nodes (the device plugin's defaults: MIG `mixed`, time-slicing with
/// `renameByDefault`).
pub fn gpu_resource(gpu: &GpuRequest) -> String {
    match &gpu.sharing {
        GpuSharing::Exclusive => "nvidia.com/gpu".to_string(),
        // The device plugin's `renameByDefault` time-slicing advertises the
        // shared replicas under their own name, so shared and exclusive pods
        // never land on each other's GPUs.
        GpuSharing::TimeSliced => "nvidia.com/gpu.shared".to_string(),
        GpuSharing::Mig { profile } => format!("nvidia.com/mig-{profile}"),
    }
}

/// `${VAR}` (Floyd's syntax, shared with the local runtime) → `$(VAR)`,
/// which the kubelet expands from the container's env.
pub fn kube_arg(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j)
                if j > 0
                    && after[..j]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                out.push_str("$(");
                out.push_str(&after[..j]);
                out.push(')');
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn port_ref(spec: &ServiceSpec, p: &PortRef) -> IntOrString {
    match p {
        PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
        // A named port resolves against the container's port names, which
        // carry the declared names (see `container_ports`).
        PortRef::Name(name) => match spec.ports.iter().find(|d| &d.name == name) {
            // Names too long for a container port are not on the container:
            // use the number they stand for.
            Some(d) if container_port_name(name).is_none() => IntOrString::Int(i32::from(d.port)),
            _ => IntOrString::String(name.clone()),
        },
    }
}

/// Translates a Floyd probe. `single_success`: liveness and startup probes
/// must have successThreshold 1 (the API server rejects anything else).
fn probe(spec: &ServiceSpec, p: &Probe, single_success: bool) -> KProbe {
    let mut k = KProbe {
        initial_delay_seconds: Some(p.initial_delay_seconds as i32),
        period_seconds: Some(p.period_seconds.max(1) as i32),
        timeout_seconds: Some(p.timeout_seconds.max(1) as i32),
        success_threshold: Some(if single_success {
            1
        } else {
            p.success_threshold.max(1) as i32
        }),
        failure_threshold: Some(p.failure_threshold.max(1) as i32),
        ..KProbe::default()
    };
    match &p.action {
        ProbeAction::Http { path, port } => {
            k.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: port_ref(spec, port),
                ..HTTPGetAction::default()
            })
        }
        ProbeAction::Tcp { port } => {
            k.tcp_socket = Some(TCPSocketAction {
                port: port_ref(spec, port),
                ..TCPSocketAction::default()
            })
        }
        ProbeAction::Exec { command } => {
            k.exec = Some(ExecAction {
                command: Some(command.clone()),
            })
        }
    }
    k
}

/// Container port names must be IANA service names (at most 15 characters);
/// longer declared names are dropped from the container port (the Service
/// still carries them) rather than rejected by the API server.
fn container_port_name(name: &str) -> Option<String> {
    (!name.is_empty() && name.len() <= 15).then(|| name.to_string())
}

/// The pod template of one revision.
pub fn pod_template(
    instance: &str,
    service: &ServiceName,
    revision: &Revision,
    spec: &ServiceSpec,
    template: &InstanceTemplate,
    gpu_scheme: Option<&GpuScheme>,
) -> Result<PodTemplateSpec, Error> {
    let image = template.image.clone().ok_or_else(|| Error::Spec {
        service: service.to_string(),
        message: "spec.template.image is required by the kube runtime (the container image to run)"
            .into(),
    })?;
    if let Some(name) = template.env_from.keys().next() {
        return Err(Error::Spec {
            service: service.to_string(),
            message: format!(
                "spec.template.env.{name}: valueFrom file/env is resolved by the local runtime only; on Kubernetes use a Secret: spec.template.kubernetes.spec.containers[name: app].env[].valueFrom.secretKeyRef"
            ),
        });
    }
    let mut env: Vec<EnvVar> = Vec::new();
    if let Some(first) = spec.ports.first()
        && !template.env.contains_key("PORT")
    {
        env.push(EnvVar {
            name: "PORT".into(),
            value: Some(first.port.to_string()),
            ..EnvVar::default()
        });
    }
    env.extend(template.env.iter().map(|(k, v)| EnvVar {
        name: k.clone(),
        value: Some(v.clone()),
        ..EnvVar::default()
    }));
    let ports: Vec<ContainerPort> = spec
        .ports
        .iter()
        .map(|p| ContainerPort {
            container_port: i32::from(p.port),
            name: container_port_name(&p.name),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();

    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &template.resources.cpu {
        // CPU: a request only; a CPU limit throttles latency-sensitive
        // services without protecting anything the request does not.
        requests.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(mem) = &template.resources.memory {
        requests.insert("memory".to_string(), Quantity(mem.clone()));
        limits.insert("memory".to_string(), Quantity(mem.clone()));
    }
    let mut node_selector = BTreeMap::new();
    let mut tolerations = Vec::new();
    let mut affinity = None;
    if let Some(gpu) = &template.resources.gpu {
        // Extended resources go in limits (requests default to them).
        let resource = gpu_scheme.map_or_else(|| gpu_resource(gpu), |s| s.resource.clone());
        limits.insert(resource, Quantity(gpu.count.to_string()));
        let product = gpu_scheme
            .and_then(|s| s.product_label.clone())
            .or_else(|| gpu.product.clone());
        if let Some(product) = product {
            node_selector.insert(LABEL_GPU_PRODUCT.to_string(), product);
        }
        tolerations.push(Toleration {
            key: Some(GPU_TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
        if let Some(mib) = gpu.memory_mib {
            affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: LABEL_GPU_MEMORY.into(),
                                operator: "Gt".into(),
                                values: Some(vec![mib.saturating_sub(1).to_string()]),
                            }]),
                            ..NodeSelectorTerm::default()
                        }],
                    }),
                    ..NodeAffinity::default()
                }),
                ..Affinity::default()
            });
        }
    }
    let resources = (!requests.is_empty() || !limits.is_empty()).then(|| ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    });

    let floyd = Container {
        name: MAIN_CONTAINER.into(),
        image: Some(image),
        command: (!template.command.is_empty())
            .then(|| template.command.iter().map(|a| kube_arg(a)).collect()),
        env: (!env.is_empty()).then_some(env),
        working_dir: template.working_dir.clone(),
        ports: (!ports.is_empty()).then_some(ports),
        resources,
        readiness_probe: spec
            .health
            .readiness
            .as_ref()
            .map(|p| probe(spec, p, false)),
        liveness_probe: spec.health.liveness.as_ref().map(|p| probe(spec, p, true)),
        startup_probe: spec.health.startup.as_ref().map(|p| probe(spec, p, true)),
        ..Container::default()
    };
    let floyd_spec = PodSpec {
        containers: vec![floyd],
        termination_grace_period_seconds: Some(i64::from(
            template.termination_grace_period_seconds,
        )),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        affinity,
        ..PodSpec::default()
    };
    let (spec, mut labels, annotations) = match template.kubernetes.as_deref() {
        Some(k) => (
            merge_pod_spec(k.spec.clone(), floyd_spec),
            k.metadata.labels.clone(),
            k.metadata.annotations.clone(),
        ),
        None => (floyd_spec, BTreeMap::new(), BTreeMap::new()),
    };
    // Floyd's labels win: the ReplicaSet's selector and the Services need them.
    labels.extend(revision_labels(instance, service, revision));
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    })
}

/// Merges the pod spec Floyd derives from its own fields (`floyd`: one
/// container, [`MAIN_CONTAINER`], and the pod fields GPUs need) into the
/// manifest's `kubernetes.spec` fragment (`base`). The precedence:
///
/// - the main container: the fragment's container of that name (if any) is
///   the base; every field Floyd sets (image, command, workingDir, ports,
///   probes) replaces it; env is Floyd's (`PORT` and `env`) followed by the
///   fragment's (the decoder refuses a name in both); resource requests and
///   limits merge key by key, Floyd's keys winning. It is the first container.
/// - other containers (sidecars) and init containers pass through, in order.
/// - nodeSelector merges key by key (Floyd's GPU product label wins);
///   tolerations are the fragment's plus Floyd's GPU toleration; a GPU
///   memory node affinity is added to every required node selector term of
///   the fragment (both must hold); terminationGracePeriodSeconds is Floyd's.
/// - every other pod field is the fragment's.
pub fn merge_pod_spec(mut base: PodSpec, floyd: PodSpec) -> PodSpec {
    let mut floyd = floyd;
    let main = floyd.containers.pop().unwrap_or_default();
    let at = base
        .containers
        .iter()
        .position(|c| c.name == MAIN_CONTAINER);
    let mut c = at.map(|i| base.containers.remove(i)).unwrap_or_default();
    c.name = main.name;
    c.image = main.image.or(c.image);
    c.command = main.command.or(c.command);
    c.working_dir = main.working_dir.or(c.working_dir);
    c.ports = main.ports.or(c.ports);
    c.readiness_probe = main.readiness_probe.or(c.readiness_probe);
    c.liveness_probe = main.liveness_probe.or(c.liveness_probe);
    c.startup_probe = main.startup_probe.or(c.startup_probe);
    let mut env = main.env.unwrap_or_default();
    env.extend(c.env.take().unwrap_or_default());
    c.env = (!env.is_empty()).then_some(env);
    if let Some(r) = main.resources {
        let mut have = c.resources.take().unwrap_or_default();
        for (mine, theirs) in [
            (r.requests, &mut have.requests),
            (r.limits, &mut have.limits),
        ] {
            if let Some(mine) = mine {
                theirs.get_or_insert_with(BTreeMap::new).extend(mine);
            }
        }
        c.resources = Some(have);
    }
    base.containers.insert(0, c);

    base.termination_grace_period_seconds = floyd.termination_grace_period_seconds;
    if let Some(sel) = floyd.node_selector {
        base.node_selector
            .get_or_insert_with(BTreeMap::new)
            .extend(sel);
    }
    if let Some(tol) = floyd.tolerations {
        let have = base.tolerations.get_or_insert_with(Vec::new);
        for t in tol {
            if !have.contains(&t) {
                have.push(t);
            }
        }
    }
    if let Some(required) = floyd
        .affinity
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
    {
        let want: Vec<NodeSelectorRequirement> = required
            .node_selector_terms
            .into_iter()
            .flat_map(|t| t.match_expressions.unwrap_or_default())
            .collect();
        let na = base
            .affinity
            .get_or_insert_with(Affinity::default)
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        let sel = na
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(NodeSelector::default);
        if sel.node_selector_terms.is_empty() {
            sel.node_selector_terms.push(NodeSelectorTerm::default());
        }
        for term in &mut sel.node_selector_terms {
            term.match_expressions
                .get_or_insert_with(Vec::new)
                .extend(want.iter().cloned());
        }
    }
    base
}

/// What a ReplicaSet records about its revision (annotations).
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionMeta {
    pub created_at: Time,
    pub commit: Option<String>,
    /// How the pods request their GPUs (none: the request's defaults).
    pub gpu: Option<GpuScheme>,
}

/// The ReplicaSet of one revision with `replicas` pods.
pub fn replica_set(
    install: Install<'_>,
    service: &ServiceName,
    revision: &Revision,
    spec: &ServiceSpec,
    template: &InstanceTemplate,
    meta: &RevisionMeta,
    replicas: u32,
) -> Result<ReplicaSet, Error> {
    let template_json = serde_json::to_string(template).map_err(|e| Error::Spec {
        service: service.to_string(),
        message: format!("cannot encode the instance template: {e}"),
    })?;
    let mut annotations = BTreeMap::from([
        (ANN_REVISION.to_string(), revision.to_string()),
        (ANN_CREATED_AT.to_string(), format_time(meta.created_at)),
        (ANN_TEMPLATE.to_string(), template_json),
    ]);
    if let Some(c) = &meta.commit {
        annotations.insert(ANN_COMMIT.to_string(), c.clone());
    }
    if let Some(g) = &meta.gpu {
        annotations.insert(ANN_GPU_RESOURCE.to_string(), g.resource.clone());
        if let Some(p) = &g.product_label {
            annotations.insert(ANN_GPU_PRODUCT_LABEL.to_string(), p.clone());
        }
    }
    // The install is part of the selector: another install's pods never
    // count as this ReplicaSet's replicas.
    let selector = BTreeMap::from([
        (LABEL_INSTANCE.to_string(), install.instance.to_string()),
        (LABEL_SERVICE.to_string(), service.to_string()),
        (LABEL_REVISION.to_string(), revision.to_string()),
    ]);
    Ok(ReplicaSet {
        metadata: ObjectMeta {
            name: Some(replica_set_name(service, revision)),
            namespace: Some(install.namespace.to_string()),
            labels: Some(revision_labels(install.instance, service, revision)),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas.min(i32::MAX as u32) as i32),
            min_ready_seconds: (spec.min_ready_seconds > 0)
                .then_some(spec.min_ready_seconds.min(i32::MAX as u32) as i32),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: Some(pod_template(
                install.instance,
                service,
                revision,
                spec,
                template,
                meta.gpu.as_ref(),
            )?),
        }),
        status: None,
    })
}

/// A ReplicaSet's selector is immutable: re-applying one that exists keeps
/// the live selector (a revision created before install identities selects
/// its pods without `floyd.dev/instance`).
pub fn keep_selector(rs: &mut ReplicaSet, live: Option<&ReplicaSet>) {
    if let (Some(spec), Some(sel)) = (
        rs.spec.as_mut(),
        live.and_then(|l| l.spec.as_ref())
            .map(|s| s.selector.clone()),
    ) && sel.match_labels.is_some()
    {
        spec.selector = sel;
    }
}

/// A Service routing to `revision` (or to every revision of the service when `None`).
pub fn service_object(
    install: Install<'_>,
    service: &ServiceName,
    spec: &ServiceSpec,
    preview: bool,
    revision: Option<&Revision>,
) -> Service {
    let (name, role) = if preview {
        (preview_service_name(service), "preview")
    } else {
        (active_service_name(service), "active")
    };
    routed_service(install, service, spec, name, role, revision)
}

/// A Service named `name` with Floyd's `role` annotation, selecting the pods
/// of `revision` (every revision of the service when `None`), on the
/// service's ports.
pub fn routed_service(
    install: Install<'_>,
    service: &ServiceName,
    spec: &ServiceSpec,
    name: String,
    role: &str,
    revision: Option<&Revision>,
) -> Service {
    let mut selector = BTreeMap::from([
        (LABEL_INSTANCE.to_string(), install.instance.to_string()),
        (LABEL_SERVICE.to_string(), service.to_string()),
    ]);
    if let Some(r) = revision {
        selector.insert(LABEL_REVISION.to_string(), r.to_string());
    }
    Service {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(install.namespace.to_string()),
            labels: Some(base_labels(install.instance, service)),
            annotations: Some(BTreeMap::from([(ANN_ROLE.to_string(), role.to_string())])),
            ..ObjectMeta::default()
        },
        spec: Some(KServiceSpec {
            selector: Some(selector),
            ports: Some(
                spec.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: i32::from(p.port),
                        target_port: Some(IntOrString::Int(i32::from(p.port))),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..KServiceSpec::default()
        }),
        status: None,
    }
}

/// The ConfigMap holding one service's state JSON.
pub fn state_config_map(install: Install<'_>, service: &ServiceName, json: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(state_config_map_name(service)),
            namespace: Some(install.namespace.to_string()),
            labels: Some(base_labels(install.instance, service)),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(STATE_KEY.to_string(), json.to_string())])),
        ..ConfigMap::default()
    }
}

/// Set on Floyd's HorizontalPodAutoscaler while a rollout is in flight: the
/// replica count the rollout works towards (the HPA's count when it began).
/// The HPA's scaling is disabled meanwhile.
pub const ANN_FROZEN_REPLICAS: &str = "floyd.dev/frozen-replicas";

/// The HorizontalPodAutoscaler of a service: `<service>`.
pub fn autoscaler_name(service: &ServiceName) -> String {
    service.as_str().to_string()
}

/// The `autoscaling/v2` HorizontalPodAutoscaler of `service`, scaling the
/// ReplicaSet of `revision` within the manifest's bounds on its target.
/// `frozen`: a rollout is in flight towards that many replicas; scaling is
/// disabled both ways (the HPA keeps its metrics) until it completes.
pub fn autoscaler(
    install: Install<'_>,
    service: &ServiceName,
    a: &crate::manifest::Autoscaling,
    revision: &Revision,
    frozen: Option<u32>,
) -> k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler {
    use k8s_openapi::api::autoscaling::v2::{
        CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
        HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
        MetricTarget, PodsMetricSource, ResourceMetricSource,
    };
    let metric = match (&a.metric, a.target_cpu_utilization_percentage) {
        (Some(m), _) => MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: m.name.clone(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(m.average_value.clone())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
        (None, cpu) => MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(cpu.unwrap_or(80).min(i32::MAX as u32) as i32),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
    };
    let disabled = || HPAScalingRules {
        select_policy: Some("Disabled".into()),
        ..HPAScalingRules::default()
    };
    let mut annotations = BTreeMap::new();
    if let Some(n) = frozen {
        annotations.insert(ANN_FROZEN_REPLICAS.to_string(), n.to_string());
    }
    HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(autoscaler_name(service)),
            namespace: Some(install.namespace.to_string()),
            labels: Some(base_labels(install.instance, service)),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "ReplicaSet".into(),
                name: replica_set_name(service, revision),
            },
            min_replicas: Some(a.min_replicas.min(i32::MAX as u32) as i32),
            max_replicas: a.max_replicas.min(i32::MAX as u32) as i32,
            metrics: Some(vec![metric]),
            behavior: frozen.map(|_| HorizontalPodAutoscalerBehavior {
                scale_up: Some(disabled()),
                scale_down: Some(disabled()),
            }),
        }),
        status: None,
    }
}

/// The replica count a rollout of an autoscaled service works with, and
/// whether Floyd's HPA must be (re)applied, from what is live:
/// `settled`: no rollout in flight (the HPA owns the count: it is the
/// count of the target's ReplicaSet, `target_desired`); otherwise the count
/// frozen on the HPA when the rollout began (`frozen`), or, when it begins
/// now, the count of the revision the HPA scaled until now (`hpa_desired`).
/// With nothing live yet, `replicas` (the manifest's first count). Always
/// within the bounds.
pub fn autoscaled_replicas(
    a: &crate::manifest::Autoscaling,
    replicas: u32,
    settled: bool,
    frozen: Option<u32>,
    target_desired: Option<u32>,
    hpa_desired: Option<u32>,
) -> u32 {
    let n = if settled {
        target_desired
            .filter(|n| *n > 0)
            .or(frozen)
            .or(hpa_desired.filter(|n| *n > 0))
    } else {
        frozen.or(hpa_desired.filter(|n| *n > 0))
    };
    a.clamp(n.unwrap_or(replicas))
}

/// Every object Floyd applies for `service` once a rollout of `revision`
/// (the release's revision of `spec`) has completed, in apply order: the
/// revision's ReplicaSet at `spec.replicas`, the active Service (when the
/// service has ports; a blue-green one selects the revision, others every
/// revision), the stable Service of a canary routed through an HTTPRoute,
/// the HorizontalPodAutoscaler of an autoscaled service, and the state ConfigMap (without its data, which Floyd writes as
/// rollouts progress). `floyd render --objects` prints these; the runtime
/// applies the same builders.
pub fn settled_objects(
    install: Install<'_>,
    service: &ServiceName,
    revision: &Revision,
    spec: &ServiceSpec,
    meta: &RevisionMeta,
) -> Result<Vec<serde_json::Value>, Error> {
    check_service_name(service)?;
    let json = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| Error::Spec {
            service: service.to_string(),
            message: format!("cannot encode an object: {e}"),
        })
    };
    let rs = replica_set(
        install,
        service,
        revision,
        spec,
        &spec.template,
        meta,
        // An autoscaled service starts within its bounds.
        spec.autoscaling
            .as_ref()
            .map_or(spec.replicas, |a| a.clamp(spec.replicas)),
    )?;
    let mut out = vec![json(serde_json::to_value(&rs))?];
    if !spec.ports.is_empty() {
        let blue_green = matches!(spec.strategy, crate::manifest::Strategy::BlueGreen { .. });
        let active = service_object(
            install,
            service,
            spec,
            false,
            blue_green.then_some(revision),
        );
        out.push(json(serde_json::to_value(&active))?);
        if super::gateway::http_route(spec).is_some() {
            let stable = super::gateway::role_service(install, service, spec, "stable", None);
            out.push(json(serde_json::to_value(&stable))?);
        }
    }
    if let Some(a) = &spec.autoscaling {
        let hpa = autoscaler(install, service, a, revision, None);
        out.push(json(serde_json::to_value(&hpa))?);
    }
    let mut cm = state_config_map(install, service, "");
    cm.data = None;
    out.push(json(serde_json::to_value(&cm))?);
    Ok(out)
}

/// Whether an event reason describes something a person should look at.
pub fn is_warning_reason(reason: &str) -> bool {
    [
        "Fail",
        "Degraded",
        "RolledBack",
        "Rollback",
        "Abort",
        "Error",
        "DriftDetected",
    ]
    .iter()
    .any(|w| reason.contains(w))
}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{HealthSpec, PortSpec, Resources};

    fn svc(s: &str) -> ServiceName {
        ServiceName::parse(s).unwrap()
    }

    const INSTALL: Install<'static> = Install {
        namespace: "d",
        instance: "a",
    };

    /// The merge precedence of docs/manifest.md: Floyd's fields win for the
    /// main container and the GPU scheduling fields; everything else in the
    /// fragment passes through.
    #[test]
    fn floyd_fields_win_and_the_fragment_passes_through() {
        let text = r#"apiVersion: floyd.dev/v1
kind: Service
metadata: { name: web }
spec:
  ports: [{ name: http, port: 8080 }]
  health: { readiness: { http: { path: /healthz, port: http } } }
  template:
    image: ghcr.io/acme/web:2
    command: [./web]
    env: { LOG: info }
    resources:
      memory: 256Mi
      gpu: { count: 1, product: NVIDIA-A100-SXM4-80GB, memoryMiB: 81920 }
    terminationGracePeriodSeconds: 45
    kubernetes:
      metadata:
        labels: { team: payments, floyd.dev/revision: forged }
        annotations: { sidecar.istio.io/inject: "false" }
      spec:
        serviceAccountName: web
        nodeSelector: { disktype: ssd, nvidia.com/gpu.product: Tesla-T4 }
        tolerations: [{ key: dedicated, operator: Equal, value: web, effect: NoSchedule }]
        affinity:
          nodeAffinity:
            requiredDuringSchedulingIgnoredDuringExecution:
              nodeSelectorTerms:
                - matchExpressions: [{ key: zone, operator: In, values: [a, b] }]
          podAntiAffinity:
            preferredDuringSchedulingIgnoredDuringExecution:
              - weight: 1
                podAffinityTerm: { topologyKey: kubernetes.io/hostname }
        containers:
          - name: shipper
            image: fluent/fluent-bit:3
          - name: app
            image: not-this:1
            args: [--verbose]
            workingDir: /not-this
            volumeMounts: [{ name: config, mountPath: /etc/web }]
            env:
              - name: DB_PASSWORD
                valueFrom: { secretKeyRef: { name: db, key: password } }
            resources:
              requests: { memory: 1Gi, cpu: 250m }
              limits: { cpu: "2" }
        volumes: [{ name: config, configMap: { name: web-config } }]
"#;
        let s = crate::manifest::parse_service(text, std::path::Path::new("web.yaml")).unwrap();
        let t = &s.spec.template;
        let pod = pod_template("a", &s.name, &s.revision, &s.spec, t, None).unwrap();
        let meta = pod.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels[LABEL_REVISION], s.revision.as_str());
        assert_eq!(labels[LABEL_INSTANCE], "a");
        assert_eq!(
            meta.annotations.unwrap()["sidecar.istio.io/inject"],
            "false"
        );
        let spec = pod.spec.unwrap();
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "shipper"]);
        let app = &spec.containers[0];
        assert_eq!(app.image.as_deref(), Some("ghcr.io/acme/web:2"));
        assert_eq!(app.command, Some(vec!["./web".to_string()]));
        assert_eq!(app.args, Some(vec!["--verbose".to_string()]));
        assert_eq!(
            app.working_dir.as_deref(),
            Some("/not-this"),
            "Floyd sets none"
        );
        assert_eq!(
            app.volume_mounts.as_ref().unwrap()[0].mount_path,
            "/etc/web"
        );
        assert!(app.readiness_probe.is_some());
        let env: Vec<(&str, bool)> = app
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value_from.is_some()))
            .collect();
        assert_eq!(
            env,
            [("PORT", false), ("LOG", false), ("DB_PASSWORD", true)]
        );
        let r = app.resources.as_ref().unwrap();
        let q = |m: &Option<BTreeMap<String, Quantity>>, k: &str| {
            m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
        };
        assert_eq!(q(&r.requests, "memory").as_deref(), Some("256Mi"));
        assert_eq!(q(&r.requests, "cpu").as_deref(), Some("250m"));
        assert_eq!(q(&r.limits, "cpu").as_deref(), Some("2"));
        assert_eq!(q(&r.limits, "memory").as_deref(), Some("256Mi"));
        assert_eq!(q(&r.limits, "nvidia.com/gpu").as_deref(), Some("1"));
        assert_eq!(
            spec.containers[1].image.as_deref(),
            Some("fluent/fluent-bit:3")
        );

        assert_eq!(spec.termination_grace_period_seconds, Some(45));
        assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        let sel = spec.node_selector.unwrap();
        assert_eq!(sel["disktype"], "ssd");
        assert_eq!(sel[LABEL_GPU_PRODUCT], "NVIDIA-A100-SXM4-80GB");
        let tol: Vec<&str> = spec
            .tolerations
            .iter()
            .flatten()
            .filter_map(|t| t.key.as_deref())
            .collect();
        assert_eq!(tol, ["dedicated", GPU_TAINT]);
        let aff = spec.affinity.unwrap();
        assert!(aff.pod_anti_affinity.is_some());
        let terms = aff
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let keys: Vec<&str> = terms[0]
            .match_expressions
            .iter()
            .flatten()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(keys, ["zone", LABEL_GPU_MEMORY], "both must hold");
        assert_eq!(spec.volumes.unwrap()[0].name, "config");
    }

    #[test]
    fn local_secret_references_are_refused_with_what_to_use() {
        let mut t = InstanceTemplate::command(["./web"]);
        t.image = Some("x:1".into());
        t.env_from.insert(
            "DB".into(),
            crate::manifest::EnvSource::File("/run/secrets/db".into()),
        );
        let spec = ServiceSpec::with_defaults(1, t.clone());
        let e = pod_template("a", &svc("web"), &Revision("r".into()), &spec, &t, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.template.env.DB") && e.contains("secretKeyRef"),
            "{e}"
        );
    }

    #[test]
    fn without_a_fragment_the_pod_is_floyds_alone() {
        let mut t = InstanceTemplate::command(["./web"]);
        t.image = Some("x:1".into());
        let spec = ServiceSpec::with_defaults(1, t.clone());
        let r = Revision("abc".into());
        let plain = pod_template("a", &svc("web"), &r, &spec, &t, None).unwrap();
        t.kubernetes = Some(Box::default());
        let empty = pod_template("a", &svc("web"), &r, &spec, &t, None).unwrap();
        assert_eq!(plain, empty, "an empty fragment adds nothing");
        let spec = plain.spec.unwrap();
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].name, MAIN_CONTAINER);
        assert!(plain.metadata.unwrap().annotations.is_none());
    }

    /// Who decides the count of an autoscaled service, and when.
    #[test]
    fn autoscaled_replicas_follow_the_hpa_within_bounds() {
        let a = crate::manifest::Autoscaling {
            min_replicas: 2,
            max_replicas: 6,
            target_cpu_utilization_percentage: Some(70),
            metric: None,
        };
        // (manifest replicas, settled, frozen, target RS, HPA's RS) -> count
        for (replicas, settled, frozen, target, hpa, want) in [
            (1, false, None, None, None, 2), // nothing live: the manifest's, clamped up
            (9, false, None, None, None, 6), // ... clamped down
            (3, false, None, None, None, 3), // ... as written
            (3, false, None, None, Some(5), 5), // a rollout begins: the HPA's count
            (3, false, Some(4), None, Some(1), 4), // in flight: the frozen count
            (3, true, None, Some(5), None, 5), // settled: the HPA's (the target RS)
            (3, true, Some(4), Some(0), None, 4), // just completed, not yet scaled
            (3, true, None, Some(0), None, 3), // settled, nothing anywhere
            (3, true, None, Some(50), None, 6), // never beyond the bounds
        ] {
            assert_eq!(
                autoscaled_replicas(&a, replicas, settled, frozen, target, hpa),
                want,
                "{replicas} {settled} {frozen:?} {target:?} {hpa:?}"
            );
        }
    }

    #[test]
    fn autoscaler_targets_the_revision_and_freezes_during_a_rollout() {
        let a = crate::manifest::Autoscaling {
            min_replicas: 1,
            max_replicas: 3,
            target_cpu_utilization_percentage: None,
            metric: Some(crate::manifest::PodsMetric {
                name: "http_requests_per_second".into(),
                average_value: "100".into(),
            }),
        };
        let r = Revision("abc".into());
        let h = serde_json::to_value(autoscaler(INSTALL, &svc("web"), &a, &r, None)).unwrap();
        assert_eq!(h["apiVersion"], "autoscaling/v2");
        assert_eq!(h["spec"]["scaleTargetRef"]["name"], "web-abc");
        assert_eq!(h["spec"]["metrics"][0]["type"], "Pods");
        assert_eq!(
            h["spec"]["metrics"][0]["pods"]["target"]["averageValue"],
            "100"
        );
        assert!(h["spec"].get("behavior").is_none());
        let f = serde_json::to_value(autoscaler(INSTALL, &svc("web"), &a, &r, Some(2))).unwrap();
        assert_eq!(f["metadata"]["annotations"][ANN_FROZEN_REPLICAS], "2");
        assert_eq!(f["spec"]["behavior"]["scaleUp"]["selectPolicy"], "Disabled");
        assert_eq!(
            f["spec"]["behavior"]["scaleDown"]["selectPolicy"],
            "Disabled"
        );
    }

    #[test]
    fn kube_arg_translates_floyd_variables() {
        for (input, want) in [
            ("--port=${PORT}", "--port=$(PORT)"),
            ("${A}${B_2}", "$(A)$(B_2)"),
            ("plain", "plain"),
            ("${}", "${}"),
            ("${not closed", "${not closed"),
            ("${a-b}", "${a-b}"),
            ("$(ALREADY)", "$(ALREADY)"),
        ] {
            assert_eq!(kube_arg(input), want, "input {input:?}");
        }
    }

    #[test]
    fn gpu_resource_names_follow_the_device_plugin() {
        let mut g = GpuRequest {
            count: 2,
            product: None,
            memory_mib: None,
            sharing: GpuSharing::Exclusive,
            allow_in_place: true,
        };
        assert_eq!(gpu_resource(&g), "nvidia.com/gpu");
        g.sharing = GpuSharing::TimeSliced;
        assert_eq!(gpu_resource(&g), "nvidia.com/gpu.shared");
        g.sharing = GpuSharing::Mig {
            profile: "1g.10gb".into(),
        };
        assert_eq!(gpu_resource(&g), "nvidia.com/mig-1g.10gb");
    }

    #[test]
    fn times_round_trip_in_rfc3339() {
        for ms in [0u64, 1, 1_700_000_000_123, 4_102_444_800_000] {
            let s = format_time(Time(ms));
            assert!(s.ends_with('Z'), "{s}");
            assert_eq!(parse_time(&s), Some(Time(ms)), "{s}");
        }
        assert_eq!(parse_time("not a time"), None);
    }

    #[test]
    fn service_names_that_kubernetes_rejects_are_reported() {
        assert!(check_service_name(&svc("web")).is_ok());
        let e = check_service_name(&svc("9web")).unwrap_err().to_string();
        assert!(e.contains("start with a letter"), "{e}");
        let long = "a".repeat(56);
        let e = check_service_name(&svc(&long)).unwrap_err().to_string();
        assert!(e.contains("at most 55"), "{e}");
        assert!(check_service_name(&svc(&"a".repeat(55))).is_ok());
    }

    #[test]
    fn replica_set_carries_labels_annotations_and_gpu_scheduling() {
        let mut spec = ServiceSpec::with_defaults(
            3,
            InstanceTemplate {
                image: Some("ghcr.io/acme/web:1".into()),
                command: vec!["./web".into(), "--port".into(), "${PORT}".into()],
                resources: Resources {
                    cpu: Some("500m".into()),
                    memory: Some("256Mi".into()),
                    gpu: Some(GpuRequest {
                        count: 1,
                        product: Some("NVIDIA-A100-SXM4-80GB".into()),
                        memory_mib: Some(81920),
                        sharing: GpuSharing::Exclusive,
                        allow_in_place: true,
                    }),
                },
                termination_grace_period_seconds: 45,
                ..InstanceTemplate::default()
            },
        );
        spec.ports = vec![PortSpec {
            name: "http".into(),
            port: 8080,
        }];
        spec.health = HealthSpec {
            readiness: Some(Probe {
                action: ProbeAction::Http {
                    path: "/healthz".into(),
                    port: PortRef::Name("http".into()),
                },
                initial_delay_seconds: 0,
                period_seconds: 2,
                timeout_seconds: 1,
                success_threshold: 2,
                failure_threshold: 3,
            }),
            liveness: Some(Probe {
                action: ProbeAction::Tcp {
                    port: PortRef::Number(8080),
                },
                initial_delay_seconds: 5,
                period_seconds: 10,
                timeout_seconds: 1,
                success_threshold: 3,
                failure_threshold: 3,
            }),
            startup: None,
        };
        let rev = Revision::from("abcdef0123");
        let rs = replica_set(
            Install {
                namespace: "apps",
                instance: "prod",
            },
            &svc("web"),
            &rev,
            &spec,
            &spec.template,
            &RevisionMeta {
                created_at: Time(1_700_000_000_000),
                commit: Some("c0ffee".into()),
                gpu: None,
            },
            0,
        )
        .unwrap();
        let v = serde_json::to_value(&rs).unwrap();
        assert_eq!(v["metadata"]["name"], "web-abcdef0123");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "floyd"
        );
        assert_eq!(v["metadata"]["labels"]["floyd.dev/revision"], "abcdef0123");
        assert_eq!(v["metadata"]["labels"]["floyd.dev/instance"], "prod");
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"]["floyd.dev/instance"],
            "prod"
        );
        assert_eq!(v["metadata"]["annotations"]["floyd.dev/commit"], "c0ffee");
        assert_eq!(
            v["metadata"]["annotations"]["floyd.dev/created-at"],
            "2023-11-14T22:13:20.000Z"
        );
        let tpl: InstanceTemplate = serde_json::from_str(
            v["metadata"]["annotations"]["floyd.dev/template"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(tpl, spec.template);
        assert_eq!(v["spec"]["replicas"], 0);
        assert_eq!(
            v["spec"]["selector"]["matchLabels"],
            serde_json::json!({"floyd.dev/instance": "prod", "floyd.dev/service": "web", "floyd.dev/revision": "abcdef0123"})
        );
        let pod = &v["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(
            c["command"],
            serde_json::json!(["./web", "--port", "$(PORT)"])
        );
        assert_eq!(
            c["env"][0],
            serde_json::json!({"name": "PORT", "value": "8080"})
        );
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
        assert_eq!(c["readinessProbe"]["successThreshold"], 2);
        // The API server only accepts successThreshold 1 on liveness probes.
        assert_eq!(c["livenessProbe"]["successThreshold"], 1);
        assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], 8080);
        assert_eq!(pod["terminationGracePeriodSeconds"], 45);
        assert_eq!(
            pod["nodeSelector"]["nvidia.com/gpu.product"],
            "NVIDIA-A100-SXM4-80GB"
        );
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        assert_eq!(
            pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchExpressions"][0]["values"][0],
            "81919"
        );
    }

    #[test]
    fn replica_set_without_image_is_an_error_that_says_what_to_add() {
        let spec = ServiceSpec::with_defaults(1, InstanceTemplate::command(["./x"]));
        let e = replica_set(
            INSTALL,
            &svc("web"),
            &Revision::from("r"),
            &spec,
            &spec.template,
            &RevisionMeta {
                created_at: Time(0),
                commit: None,
                gpu: None,
            },
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("spec.template.image"), "{e}");
    }

    #[test]
    fn services_select_by_revision_only_when_asked() {
        let spec = ServiceSpec::with_defaults(1, InstanceTemplate::default());
        let all =
            serde_json::to_value(service_object(INSTALL, &svc("web"), &spec, false, None)).unwrap();
        assert_eq!(
            all["spec"]["selector"],
            serde_json::json!({"floyd.dev/instance": "a", "floyd.dev/service": "web"})
        );
        let rev = Revision::from("r1");
        let p = serde_json::to_value(service_object(
            INSTALL,
            &svc("web"),
            &spec,
            true,
            Some(&rev),
        ))
        .unwrap();
        assert_eq!(p["metadata"]["name"], "web-preview");
        assert_eq!(p["spec"]["selector"]["floyd.dev/revision"], "r1");
    }

    fn meta(labels: &[(&str, &str)], role: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            annotations: role.map(|r| BTreeMap::from([(ANN_ROLE.to_string(), r.to_string())])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_objects_of_this_install_service_and_role_are_ours() {
        let web = svc("web");
        let ours = [
            (LABEL_MANAGED_BY, "floyd"),
            (LABEL_INSTANCE, "a"),
            (LABEL_SERVICE, "web"),
        ];
        assert_eq!(owner_of(&meta(&ours, None), "a", &web, None), Owner::Ours);
        assert_eq!(
            owner_of(&meta(&ours, Some("active")), "a", &web, Some("active")),
            Owner::Ours
        );
        // (labels, role on the object, role wanted, text the reason must contain)
        type Labels<'a> = Vec<(&'a str, &'a str)>;
        let cases: Vec<(Labels, Option<&str>, Option<&str>, &str)> = vec![
            (vec![], None, None, "not managed by Floyd"),
            (
                vec![(LABEL_MANAGED_BY, "Helm")],
                None,
                None,
                "managed by \"Helm\"",
            ),
            (
                vec![
                    (LABEL_MANAGED_BY, "floyd"),
                    (LABEL_INSTANCE, "b"),
                    (LABEL_SERVICE, "web"),
                ],
                None,
                None,
                "Floyd install \"b\"",
            ),
            (
                vec![(LABEL_MANAGED_BY, "floyd"), (LABEL_SERVICE, "web")],
                None,
                None,
                "label it floyd.dev/instance=a",
            ),
            (
                vec![
                    (LABEL_MANAGED_BY, "floyd"),
                    (LABEL_INSTANCE, "a"),
                    (LABEL_SERVICE, "api"),
                ],
                None,
                None,
                "Floyd service \"api\"",
            ),
            (
                ours.to_vec(),
                Some("active"),
                Some("preview"),
                "not its preview Service",
            ),
        ];
        for (i, (labels, role, want_role, reason)) in cases.into_iter().enumerate() {
            match owner_of(&meta(&labels, role), "a", &web, want_role) {
                Owner::Foreign(r) => {
                    assert!(r.contains(reason), "case {i}: {r:?} lacks {reason:?}")
                }
                Owner::Ours => panic!("case {i}: foreign object taken as ours"),
            }
        }
    }

    #[test]
    fn service_names_colliding_with_generated_or_cluster_names_are_reserved() {
        let names = [
            "web",
            "web-preview",
            "api",
            "kubernetes",
            "floyd-state-x",
            "db-preview",
            "api-stable",
            "api-canary",
            "db-canary",
        ];
        let got: Vec<(&str, bool)> = names
            .iter()
            .map(|n| {
                (
                    *n,
                    reserved_name_conflict(n, names.iter().copied()).is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("web", false),
                ("web-preview", true),
                ("api", false),
                ("kubernetes", true),
                ("floyd-state-x", true),
                // No service "db": nothing generates this name.
                ("db-preview", false),
                ("api-stable", true),
                ("api-canary", true),
                ("db-canary", false),
            ]
        );
        let e = reserved_name_conflict("web-preview", names.iter().copied()).unwrap();
        assert!(
            e.contains("preview Service") && e.contains("\"web\""),
            "{e}"
        );
    }

    #[test]
    fn install_identities_are_label_values() {
        for ok in ["floyd", "prod-eu.1", "a", &"x".repeat(63)] {
            assert!(check_instance(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("-a", "start and end"),
            ("a b", "contains ' '"),
            (&"x".repeat(64) as &str, "at most 63"),
        ] {
            let e = check_instance(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
