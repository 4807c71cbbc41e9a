//! The validated, defaulted model of a Floyd release. Everything downstream of
//! `manifest` (diff, engine, runtimes, controller, API) works on these types;
//! only `manifest` knows the raw YAML forms and their positions.
//!
//! The serde form of these types is the *rendered* form printed by
//! `floyd render` (same field names as the YAML schema, defaults filled in).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A service name: a DNS-1123 label (lowercase alphanumerics and '-', 1-63
/// chars, starts and ends alphanumeric). Only `manifest` validation and
/// [`ServiceName::parse`] construct one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    /// Checks the DNS-1123 label rules; the error says what is wrong.
    pub fn parse(s: &str) -> Result<ServiceName, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > 63 {
            return Err(format!("must be at most 63 characters (has {})", s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "invalid character {c:?}: a DNS-1123 label has only lowercase letters, digits and '-'"
            ));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err("must start and end with a letter or digit".into());
        }
        Ok(ServiceName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ServiceName::parse(&s)
    }
}
impl From<ServiceName> for String {
    fn from(n: ServiceName) -> String {
        n.0
    }
}
impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A revision: the first 10 hex characters of sha256 over the canonical
/// (sorted-key JSON) form of an instance template. See `manifest::revision_of`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub String);

impl Revision {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl From<&str> for Revision {
    fn from(s: &str) -> Revision {
        Revision(s.to_string())
    }
}

/// A rendered release: every service of the config repo at one commit, for
/// one environment, plus the repo-wide settings of `floyd.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Release {
    pub services: Vec<Service>,
    /// Delete services whose files were removed (`floyd.yaml` `prune`, default true).
    #[serde(default = "yes")]
    pub prune: bool,
    /// Declared GPU inventory for the local runtime (`runtime.local.gpus`).
    #[serde(default)]
    pub gpus: Vec<GpuInventory>,
    /// Rollout notification targets (`notifications`).
    #[serde(default)]
    pub notifications: Vec<NotificationTarget>,
}

impl Release {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name.as_str() == name)
    }
}

fn yes() -> bool {
    true
}

/// One service of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: ServiceName,
    pub revision: Revision,
    pub spec: ServiceSpec,
    /// The file it came from, relative to the config repo root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// `spec` of a `kind: Service`, validated and with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    pub replicas: u32,
    /// A change here is a new revision (a rollout); anything else is not.
    pub template: InstanceTemplate,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub health: HealthSpec,
    /// Seconds an instance must be ready without interruption to count as available (default 0).
    #[serde(default)]
    pub min_ready_seconds: u32,
    /// No progress for this long fails the rollout (default 600).
    pub progress_deadline_seconds: u32,
    /// Old revisions kept (scaled to 0) for rollback (default 10).
    pub revision_history_limit: u32,
    pub strategy: Strategy,
    #[serde(default)]
    pub gates: Vec<Gate>,
    pub on_failure: OnFailure,
    /// What the runtime does when the live objects no longer match what
    /// Floyd applied (a hand edit, a deleted Service): `correct` (default)
    /// puts them back on the next resync, `report` only reports.
    #[serde(default, skip_serializing_if = "DriftPolicy::is_correct")]
    pub drift_policy: DriftPolicy,
    /// `spec.autoscaling`: a HorizontalPodAutoscaler owns the replica count
    /// (kube runtime); `replicas` is then only the first count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// `spec.autoscaling`: bounds and one target (CPU or a per-pod metric).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Average CPU utilisation of the pods, percent of their CPU request.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_cpu_utilization_percentage: Option<u32>,
    /// A per-pod custom metric (`Pods` metric of the custom metrics API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<PodsMetric>,
}

/// `spec.autoscaling.metric`: scale so the metric's per-pod average is `averageValue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodsMetric {
    pub name: String,
    /// A Kubernetes quantity (`100`, `500m`).
    pub average_value: String,
}

impl Autoscaling {
    /// `n` within the bounds.
    pub fn clamp(&self, n: u32) -> u32 {
        n.clamp(self.min_replicas, self.max_replicas.max(self.min_replicas))
    }
}

/// `spec.driftPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum DriftPolicy {
    /// Report the drift and put the objects back as Floyd applied them.
    #[default]
    Correct,
    /// Report the drift (event, API, metric), change nothing.
    Report,
}

impl DriftPolicy {
    pub fn is_correct(&self) -> bool {
        *self == DriftPolicy::Correct
    }
}

impl ServiceSpec {
    /// GPU request of one instance, if any.
    pub fn gpu(&self) -> Option<&GpuRequest> {
        self.template.resources.gpu.as_ref()
    }
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }
}

/// What one instance runs. Hashed into the revision. Serialised as in
/// manifests: `env` holds the literal values and, for the names in
/// `env_from`, `{valueFrom: ...}` references ([`TemplateRepr`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", into = "TemplateRepr", from = "TemplateRepr")]
pub struct InstanceTemplate {
    /// Container image (kube runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// argv (local runtime; in kube it overrides the image entrypoint). `${PORT}`
    /// and other `${VAR}` references are expanded by the runtime from the instance env.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    /// SIGTERM, then SIGKILL after this many seconds (default 30).
    pub termination_grace_period_seconds: u32,
    /// `kubernetes`: pod metadata and any PodSpec field, merged with the
    /// fields above by the kube runtime (see docs/manifest.md for the
    /// precedence). The local runtime does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Box<KubernetesPod>>,
    /// `env` entries whose value the local runtime reads when it starts an
    /// instance (a secret's file, the controller's environment): only the
    /// reference is in Git, the revision and the API.
    #[serde(skip)]
    pub env_from: BTreeMap<String, EnvSource>,
}

/// `env.NAME.valueFrom`: where the local runtime reads a value at instance start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvSource {
    /// The contents of this file (one trailing newline removed).
    File(String),
    /// This variable of the controller's own environment.
    Env(String),
}

/// The serialised (manifest) form of an [`InstanceTemplate`].
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, EnvValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(default)]
    resources: Resources,
    termination_grace_period_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kubernetes: Option<Box<KubernetesPod>>,
}

/// One `env` value: a literal (serialised as a plain string, as before
/// references existed) or a reference.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum EnvValue {
    Literal(String),
    From {
        #[serde(rename = "valueFrom")]
        value_from: EnvSource,
    },
}

impl From<InstanceTemplate> for TemplateRepr {
    fn from(t: InstanceTemplate) -> TemplateRepr {
        let mut env: BTreeMap<String, EnvValue> = t
            .env
            .into_iter()
            .map(|(k, v)| (k, EnvValue::Literal(v)))
            .collect();
        env.extend(
            t.env_from
                .into_iter()
                .map(|(k, v)| (k, EnvValue::From { value_from: v })),
        );
        TemplateRepr {
            image: t.image,
            command: t.command,
            env,
            working_dir: t.working_dir,
            resources: t.resources,
            termination_grace_period_seconds: t.termination_grace_period_seconds,
            kubernetes: t.kubernetes,
        }
    }
}

impl From<TemplateRepr> for InstanceTemplate {
    fn from(r: TemplateRepr) -> InstanceTemplate {
        let mut env = BTreeMap::new();
        let mut env_from = BTreeMap::new();
        for (k, v) in r.env {
            match v {
                EnvValue::Literal(s) => {
                    env.insert(k, s);
                }
                EnvValue::From { value_from } => {
                    env_from.insert(k, value_from);
                }
            }
        }
        InstanceTemplate {
            image: r.image,
            command: r.command,
            env,
            working_dir: r.working_dir,
            resources: r.resources,
            termination_grace_period_seconds: r.termination_grace_period_seconds,
            kubernetes: r.kubernetes,
            env_from,
        }
    }
}

/// `spec.template.kubernetes`: a pod template fragment, typed with the
/// Kubernetes API's own types. Hashed into the revision through its
/// canonical JSON, so the key order it was written in does not matter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesPod {
    #[serde(default, skip_serializing_if = "PodMetadata::is_empty")]
    pub metadata: PodMetadata,
    #[serde(default)]
    pub spec: k8s_openapi::api::core::v1::PodSpec,
}

/// `spec.template.kubernetes.metadata`: what a pod may carry besides
/// Floyd's own labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl PodMetadata {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Kubernetes quantity, e.g. "500m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Kubernetes quantity, e.g. "256Mi".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
}

/// GPUs one instance needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuRequest {
    /// Units per instance: whole GPUs (exclusive), slices (MIG) or slots (time-sliced). >= 1.
    pub count: u32,
    /// GPU product (e.g. `NVIDIA-A100-SXM4-80GB`); any product when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Minimum memory per GPU in MiB. Written `memoryMiB` as in manifests;
    /// `memoryMib` (what earlier versions stored) still reads.
    #[serde(
        default,
        rename = "memoryMiB",
        alias = "memoryMib",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_mib: Option<u64>,
    pub sharing: GpuSharing,
    /// When no GPU is free for a surge instance and maxUnavailable is 0, replace
    /// in place (remove one old, then create one new) instead of failing (default true).
    /// Not part of the revision hash.
    pub allow_in_place: bool,
}

/// How a GPU is shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum GpuSharing {
    /// Whole GPUs, one instance each.
    Exclusive,
    /// Time-slicing: each GPU offers `replicas` slots.
    TimeSliced,
    /// A MIG profile such as `1g.10gb`.
    Mig { profile: String },
}

/// A port the service exposes (the load-balanced port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortSpec {
    pub name: String,
    pub port: u16,
}

/// A probe's target port: a declared port name or a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HealthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
}

/// A kubelet-style probe. Defaults follow the kubelet: period 10, timeout 1,
/// success 1, failure 3, initial delay 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(flatten)]
    pub action: ProbeAction,
    pub initial_delay_seconds: u32,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    /// GET `path` on `port`; 2xx and 3xx succeed.
    Http { path: String, port: PortRef },
    /// TCP connect to `port`.
    Tcp { port: PortRef },
    /// Run argv (no shell); exit 0 succeeds.
    Exec { command: Vec<String> },
}

/// An int or a percentage of replicas (`3` or `"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(u32),
    #[serde(with = "percent")]
    Percent(u32),
}

mod percent {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(p: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{p}%"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_suffix('%')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a percentage")))
    }
}

/// Rollout strategy, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Strategy {
    RollingUpdate {
        #[serde(rename = "rollingUpdate")]
        rolling_update: RollingUpdateParams,
    },
    Recreate,
    BlueGreen {
        #[serde(rename = "blueGreen")]
        blue_green: BlueGreenParams,
    },
    Canary {
        canary: CanaryParams,
    },
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::RollingUpdate { .. } => "RollingUpdate",
            Strategy::Recreate => "Recreate",
            Strategy::BlueGreen { .. } => "BlueGreen",
            Strategy::Canary { .. } => "Canary",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdateParams {
    /// Default 25%.
    pub max_surge: IntOrPercent,
    /// Default 25%.
    pub max_unavailable: IntOrPercent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenParams {
    /// Port where the preview revision is served (local runtime load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_port: Option<u16>,
    /// Promote as soon as pre-promotion gates pass (default true); otherwise wait for `floyd promote`.
    pub auto_promote: bool,
    /// Post-promotion gates run this long before the old revision is removed (default 30).
    pub scale_down_delay_seconds: u32,
}

/// Canary: the new revision takes a growing share of the traffic, step by
/// step, with the gates checked throughout (see docs/engine.md "Canary").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryParams {
    /// In order; at least one. Weights never decrease.
    pub steps: Vec<CanaryStep>,
    /// Requests matching any of these always go to the canary (A/B routing).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<CanaryMatch>,
    /// Copy every request that goes to the stable revision to the canary
    /// too; the canary's answer is discarded (default false).
    #[serde(default)]
    pub mirror: bool,
    /// Kubernetes: the router that shifts traffic by weight. Without one the
    /// weight is approximated by the ratio of instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
}

impl CanaryParams {
    /// The weight in force once steps `..upto` are done (0 before the first `setWeight`).
    pub fn weight_after(&self, upto: usize) -> u32 {
        self.steps[..upto.min(self.steps.len())]
            .iter()
            .filter_map(|s| match s {
                CanaryStep::SetWeight(w) => Some(*w),
                _ => None,
            })
            .next_back()
            .unwrap_or(0)
    }
    /// The highest weight of any step.
    pub fn max_weight(&self) -> u32 {
        self.weight_after(self.steps.len())
    }
}

/// One canary step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CanaryStep {
    /// Send this percentage (0..=100) of the requests to the canary.
    SetWeight(u32),
    /// Wait this long, or (no duration) until `floyd promote`.
    Pause(CanaryPause),
    /// Wait until every gate passes with a result taken during this step; a failing gate aborts.
    Analysis(CanaryAnalysis),
}

impl CanaryStep {
    /// For status lines: `setWeight 5`, `pause 60s`, `pause (until promoted)`, `analysis`.
    pub fn describe(&self) -> String {
        match self {
            CanaryStep::SetWeight(w) => format!("setWeight {w}"),
            CanaryStep::Pause(CanaryPause {
                duration_seconds: Some(d),
            }) => format!("pause {d}s"),
            CanaryStep::Pause(_) => "pause (until promoted)".to_string(),
            CanaryStep::Analysis(_) => "analysis".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryPause {
    /// Seconds; None: until a person promotes. Written as `duration` (the
    /// manifest's name, so `floyd render` output validates).
    #[serde(
        default,
        rename = "duration",
        alias = "durationSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CanaryAnalysis {}

/// Requests whose headers all match (exact value; names case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryMatch {
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
}

/// How the Kubernetes runtime shifts canary traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// Gateway API: Floyd writes the backend weights of this HTTPRoute.
    #[serde(rename = "gatewayAPI")]
    pub gateway_api: GatewayApiRouting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    pub http_route: String,
}

/// A health gate. All must pass before each step completes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Gate {
    /// Share of non-5xx responses of the new revision over `window`.
    SuccessRate {
        min: f64,
        /// Seconds. Written `window` as in manifests (so `floyd render`
        /// output validates); `windowSeconds` (earlier versions) still reads.
        #[serde(rename = "window", alias = "windowSeconds")]
        window_seconds: u32,
        #[serde(rename = "onNoData")]
        on_no_data: OnNoData,
    },
    /// A Prometheus instant query; the scalar result must lie within [min, max].
    /// `{{ service }}` and `{{ revision }}` in the query are substituted.
    Prometheus {
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
        #[serde(rename = "onNoData")]
        on_no_data: OnNoData,
    },
    /// POST a JSON description of the step; 2xx passes, anything else fails.
    Webhook {
        url: String,
        #[serde(rename = "timeoutSeconds")]
        timeout_seconds: u32,
        #[serde(rename = "onNoData")]
        on_no_data: OnNoData,
    },
}

impl Gate {
    /// A stable display name: `successRate`, `prometheus`, `webhook`.
    pub fn kind(&self) -> &'static str {
        match self {
            Gate::SuccessRate { .. } => "successRate",
            Gate::Prometheus { .. } => "prometheus",
            Gate::Webhook { .. } => "webhook",
        }
    }
    pub fn on_no_data(&self) -> OnNoData {
        match self {
            Gate::SuccessRate { on_no_data, .. }
            | Gate::Prometheus { on_no_data, .. }
            | Gate::Webhook { on_no_data, .. } => *on_no_data,
        }
    }
}

/// What a gate with no data means (default `wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnNoData {
    #[default]
    Wait,
    Pass,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnFailure {
    /// Roll back to the last revision that completed (default true).
    pub rollback: bool,
    /// Push a `git revert` of the bad commits (default true).
    pub revert: bool,
}

impl Default for OnFailure {
    fn default() -> Self {
        OnFailure {
            rollback: true,
            revert: true,
        }
    }
}

/// One line of the declared GPU inventory (`floyd.yaml` `runtime.local.gpus`,
/// or `--gpus`): `count` GPUs of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInventory {
    pub product: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    pub count: u32,
    /// Time-slicing: each GPU offers this many slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_sliced_replicas: Option<u32>,
    /// MIG: slices per GPU, by profile (e.g. `{"1g.10gb": 7}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mig: BTreeMap<String, u32>,
}

/// A rollout notification target (`floyd.yaml` `notifications`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationTarget {
    pub url: String,
    /// `slack` (Slack-compatible `{"text": ...}`) or `generic` (full JSON event).
    pub format: NotificationFormat,
    /// Events to send; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationFormat {
    Slack,
    Generic,
}

impl ServiceSpec {
    /// A spec with every default applied (RollingUpdate 25%/25%, deadline 600 s,
    /// history 10, no probes, no gates). Handy for tests and simulations.
    pub fn with_defaults(replicas: u32, template: InstanceTemplate) -> ServiceSpec {
        ServiceSpec {
            replicas,
            template,
            ports: Vec::new(),
            health: HealthSpec::default(),
            min_ready_seconds: 0,
            progress_deadline_seconds: 600,
            revision_history_limit: 10,
            drift_policy: DriftPolicy::Correct,
            strategy: Strategy::RollingUpdate {
                rolling_update: RollingUpdateParams {
                    max_surge: IntOrPercent::Percent(25),
                    max_unavailable: IntOrPercent::Percent(25),
                },
            },
            gates: Vec::new(),
            on_failure: OnFailure::default(),
            autoscaling: None,
        }
    }
}

impl InstanceTemplate {
    /// A template that only runs `command`, with the default grace period.
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> InstanceTemplate {
        InstanceTemplate {
            command: argv.into_iter().map(Into::into).collect(),
            termination_grace_period_seconds: 30,
            ..InstanceTemplate::default()
        }
    }
}
