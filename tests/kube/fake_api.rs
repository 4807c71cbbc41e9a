//! A fake Kubernetes API server over loopback HTTP, just big enough for
//! Floyd: get, list (label and field selectors), watch, create, replace,
//! server-side apply (including the `scale` subresource) and delete for
//! replicasets, pods, services, configmaps, nodes, leases and events, and
//! Gateway API httproutes (get, apply, JSON Patch).
//!
//! A simulated controller-manager, scheduler and kubelet make it behave like a
//! cluster: ReplicaSets get pods (removal ranked as the ReplicaSet controller
//! does: unscheduled, pending, not ready, lowest `pod-deletion-cost`, newest
//! first), pods are bound to nodes with enough free extended resources (GPUs)
//! or marked Unschedulable, and become Ready after a delay, never, or crash
//! loop, by image. Deleted pods terminate after a delay and hold their GPUs
//! meanwhile.
//!
//! Server-side apply is emulated for one manager per object: fields the
//! manager applied before and left out now are removed, the rest is merged.
//! Every body a client sends (create, replace, apply) is recorded so tests can
//! check it with `kubernetes-validate`, and every request is logged with the
//! client that sent it (header [`CLIENT_HEADER`], see [`FakeApi::client_as`]).
//!
//! Faults for tests: [`FakeApi::hang`] makes matching requests never answer
//! (a hung API server or network), [`FakeApi::pause_replicaset_controller`]
//! delays the ReplicaSet controller.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// What a container of a given image does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behavior {
    /// Ready this long after the pod is bound to a node.
    ReadyAfter(Duration),
    /// Runs, never passes its readiness probe.
    NeverReady,
    /// Exits over and over (CrashLoopBackOff, restarts count up).
    CrashLoop,
    /// The image cannot be pulled.
    ImagePullBackOff,
}

/// A node of the fake cluster.
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Extended resources, e.g. `nvidia.com/gpu` → 2.
    pub allocatable: BTreeMap<String, u32>,
    /// `NoSchedule` taint keys: only pods tolerating them are placed here.
    pub taints: Vec<String>,
}

impl FakeNode {
    pub fn cpu(name: &str) -> FakeNode {
        FakeNode {
            name: name.into(),
            labels: BTreeMap::new(),
            allocatable: BTreeMap::new(),
            taints: Vec::new(),
        }
    }
    pub fn gpu(name: &str, product: &str, gpus: u32) -> FakeNode {
        FakeNode {
            name: name.into(),
            labels: BTreeMap::from([
                ("nvidia.com/gpu.product".into(), product.into()),
                ("nvidia.com/gpu.memory".into(), "81920".into()),
            ]),
            allocatable: BTreeMap::from([("nvidia.com/gpu".into(), gpus)]),
            taints: Vec::new(),
        }
    }
}

/// The rules of a Role (in `namespace`) and a ClusterRole, as RBAC reads
/// them: `{apiGroups, resources, verbs}` each.
#[derive(Debug, Clone)]
pub struct Rbac {
    /// Whose requests are checked ([`CLIENT_HEADER`]); others pass.
    pub client: String,
    pub namespace: String,
    pub role: Vec<Value>,
    pub cluster_role: Vec<Value>,
}

fn grants(rules: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    let has = |r: &Value, k: &str, want: &str| {
        r[k].as_array()
            .is_some_and(|a| a.iter().any(|x| x == want || x == "*"))
    };
    rules.iter().any(|r| {
        has(r, "apiGroups", group) && has(r, "resources", resource) && has(r, "verbs", verb)
    })
}

/// The header naming the client in the request log.
pub const CLIENT_HEADER: &str = "x-fake-client";

impl FakeNode {
    /// The same node with the GPU operator's usual `nvidia.com/gpu:NoSchedule` taint.
    pub fn tainted(mut self) -> FakeNode {
        self.taints.push("nvidia.com/gpu".into());
        self
    }

    /// A node under the GPU Operator's MIG `single` strategy: its
    /// `nvidia.com/gpu` are `slices` MIG slices of `profile`, and GFD's
    /// product label carries the `-MIG-<profile>` suffix.
    pub fn mig_single(name: &str, product: &str, profile: &str, slices: u32) -> FakeNode {
        FakeNode {
            name: name.into(),
            labels: BTreeMap::from([
                (
                    "nvidia.com/gpu.product".into(),
                    format!("{product}-MIG-{profile}"),
                ),
                ("nvidia.com/gpu.memory".into(), "81920".into()),
                ("nvidia.com/mig.strategy".into(), "single".into()),
            ]),
            allocatable: BTreeMap::from([("nvidia.com/gpu".into(), slices)]),
            taints: Vec::new(),
        }
    }
}

/// One request, as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The [`CLIENT_HEADER`] value ("" when absent).
    pub client: String,
    pub method: String,
    pub path: String,
    pub query: String,
}

impl Logged {
    /// Whether it changes something (create, replace, patch, delete).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// One request a client sent with a body.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The [`CLIENT_HEADER`] value ("" when absent).
    pub client: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

type Key = (String, String, String); // (resource, namespace, name)

struct Db {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    /// Last applied configuration per (object, manager, subresource).
    applied: HashMap<(Key, String, String), Value>,
    /// (resourceVersion, event type, key, object) for watches.
    log: Vec<(u64, &'static str, Key, Value)>,
    sent: Vec<Sent>,
    requests: Vec<String>,
    logged: Vec<Logged>,
    /// (client or any, path fragment): requests that never get an answer.
    hangs: Vec<(Option<String>, String)>,
    /// (path fragment, status, answers left): injected failures.
    faults: Vec<(String, u16, u32)>,
    /// Watches from a resourceVersion below this get `410 Gone` (etcd
    /// compaction, see [`FakeApi::compact`]).
    compacted: u64,
    /// Bumped to end every open watch.
    watch_epoch: u64,
    /// Permissions (see [`FakeApi::authorize`]); `None`: everything allowed.
    rbac: Option<Rbac>,
    /// Requests refused for lack of permission (`verb group/resource ns`).
    denied: Vec<String>,
    replicaset_controller_paused: bool,
    // Kubelet timing, by pod key.
    bound_at: HashMap<Key, Instant>,
    deleted_at: HashMap<Key, Instant>,
    last_crash: HashMap<Key, Instant>,
    behaviors: HashMap<String, Behavior>,
    default_behavior: Behavior,
    terminate_after: Duration,
    nodes: Vec<FakeNode>,
}

struct Shared {
    db: Mutex<Db>,
    changed: watch::Sender<u64>,
}

/// A running fake API server. Dropping it stops the server and the simulation.
pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Now, as the API server writes `metav1.Time` (creation and deletion
/// timestamps, condition transitions): whole seconds.
fn now_rfc3339() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    k8s_openapi::jiff::Timestamp::from_second(s)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// (apiVersion, kind, namespaced) of a resource.
fn resource_info(group: &str, resource: &str) -> Option<(&'static str, &'static str, bool)> {
    Some(match (group, resource) {
        ("apps", "replicasets") => ("apps/v1", "ReplicaSet", true),
        ("", "pods") => ("v1", "Pod", true),
        ("", "services") => ("v1", "Service", true),
        ("", "configmaps") => ("v1", "ConfigMap", true),
        ("autoscaling", "horizontalpodautoscalers") => {
            ("autoscaling/v2", "HorizontalPodAutoscaler", true)
        }
        ("", "events") => ("v1", "Event", true),
        ("events.k8s.io", "events") => ("events.k8s.io/v1", "Event", true),
        ("", "nodes") => ("v1", "Node", false),
        ("coordination.k8s.io", "leases") => ("coordination.k8s.io/v1", "Lease", true),
        ("gateway.networking.k8s.io", "httproutes") => {
            ("gateway.networking.k8s.io/v1", "HTTPRoute", true)
        }
        _ => return None,
    })
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn labels_of(v: &Value) -> Map<String, Value> {
    v["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// Splits a selector on the commas between requirements (not those inside
/// `in (a,b)` sets).
fn requirements(selector: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(selector[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(selector[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

/// Label selectors as the API server reads them: `k=v`, `k==v`, `k!=v`,
/// `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated (AND).
fn label_match(selector: &str, labels: &Map<String, Value>) -> bool {
    requirements(selector).into_iter().all(|t| {
        let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        let set = |rest: &str| -> Vec<String> {
            rest.trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .map(|v| v.trim().to_string())
                .collect()
        };
        if let Some((k, rest)) = t.split_once(" notin ") {
            get(k).is_none_or(|v| !set(rest).iter().any(|s| s == v))
        } else if let Some((k, rest)) = t.split_once(" in ") {
            get(k).is_some_and(|v| set(rest).iter().any(|s| s == v))
        } else if let Some((k, v)) = t.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = t.strip_prefix('!') {
            !labels.contains_key(k.trim())
        } else {
            labels.contains_key(t)
        }
    })
}

/// The field selectors a resource supports (the API server answers 400 for others).
fn supported_field(resource: &str, field: &str) -> bool {
    matches!(field, "metadata.name" | "metadata.namespace")
        || match resource {
            "pods" => matches!(
                field,
                "spec.nodeName"
                    | "spec.restartPolicy"
                    | "spec.schedulerName"
                    | "spec.serviceAccountName"
                    | "spec.hostNetwork"
                    | "status.phase"
                    | "status.podIP"
                    | "status.nominatedNodeName"
            ),
            "events" => {
                field.starts_with("involvedObject.")
                    || matches!(field, "reason" | "type" | "source")
            }
            "replicasets" => field == "status.replicas",
            "nodes" => field == "spec.unschedulable",
            _ => false,
        }
}

/// The first field of `selector` that `resource` does not support.
fn unsupported_field(resource: &str, selector: &str) -> Option<String> {
    selector
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.split(['=', '!']).next().unwrap_or("").trim().to_string())
        .find(|f| !supported_field(resource, f))
}

/// A leaf `path` set in both `a` and `b` to different values.
fn conflict(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.iter().find_map(|(k, v)| {
            y.get(k)
                .and_then(|w| conflict(v, w, &format!("{path}.{k}")))
        }),
        (x, y) if x != y => Some(path.trim_start_matches('.').to_string()),
        _ => None,
    }
}

fn field_match(selector: &str, obj: &Value) -> bool {
    selector
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .all(|t| {
            let t = t.trim();
            let (path, want, neg) = if let Some((k, v)) = t.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (k, v, false)
            } else {
                return true;
            };
            let have = get_path(obj, path).and_then(Value::as_str).unwrap_or("");
            (have == want) != neg
        })
}

/// RFC 6902 JSON Patch with the operations a controller uses (`test`,
/// `replace`, `add`, `remove`); the first failing operation fails it all.
fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops.as_array().ok_or("a JSON Patch is an array")?;
    let mut out = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        let path = op["path"].as_str().ok_or(format!("op {i}: no path"))?;
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or(format!("op {i}: bad path {path:?}"))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match op["op"].as_str() {
            Some("test") => {
                if out.pointer(path) != Some(&op["value"]) {
                    return Err(format!("op {i}: test of {path} failed"));
                }
            }
            Some("replace") => {
                let t = out
                    .pointer_mut(path)
                    .ok_or(format!("op {i}: {path} does not exist"))?;
                *t = op["value"].clone();
            }
            Some(kind @ ("add" | "remove")) => {
                let p = out
                    .pointer_mut(parent)
                    .ok_or(format!("op {i}: {parent} does not exist"))?;
                match (p, kind) {
                    (Value::Object(m), "add") => {
                        m.insert(last, op["value"].clone());
                    }
                    (Value::Object(m), _) => {
                        m.remove(&last)
                            .ok_or(format!("op {i}: {path} does not exist"))?;
                    }
                    (Value::Array(a), k) => {
                        let idx = if last == "-" {
                            a.len()
                        } else {
                            last.parse::<usize>()
                                .map_err(|_| format!("op {i}: bad index in {path}"))?
                        };
                        if k == "add" && idx <= a.len() {
                            a.insert(idx, op["value"].clone());
                        } else if k == "remove" && idx < a.len() {
                            a.remove(idx);
                        } else {
                            return Err(format!("op {i}: index out of range in {path}"));
                        }
                    }
                    _ => return Err(format!("op {i}: {parent} is not a container")),
                }
            }
            other => return Err(format!("op {i}: op {other:?} not supported")),
        }
    }
    Ok(out)
}

fn merge(live: &mut Value, patch: &Value) {
    match (live, patch) {
        (Value::Object(l), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    l.remove(k);
                } else {
                    merge(l.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (l, p) => *l = p.clone(),
    }
}

/// Server-side apply for one manager: what it applied before and leaves out
/// now is removed.
fn remove_stale(live: &mut Value, prev: &Value, now: &Value) {
    if let (Value::Object(l), Value::Object(p)) = (live, prev) {
        for (k, pv) in p {
            match now.get(k) {
                None => {
                    l.remove(k);
                }
                Some(nv) => {
                    if let Some(lv) = l.get_mut(k) {
                        remove_stale(lv, pv, nv);
                    }
                }
            }
        }
    }
}

fn query_map(q: &str) -> HashMap<String, String> {
    url_decode_pairs(q).into_iter().collect()
}

fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct(k), pct(v))
        })
        .collect()
}

fn pct(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Db {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn put(&mut self, key: Key, mut obj: Value, ev: &'static str) -> Value {
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        // `generation` counts changes of the spec, as on a real server.
        if let Some(old) = self.objects.get(&key)
            && old.get("spec") != obj.get("spec")
        {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        self.objects.insert(key.clone(), obj.clone());
        self.log.push((rv, ev, key, obj.clone()));
        obj
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.log.push((rv, "DELETED", key.clone(), obj.clone()));
        self.applied.retain(|(k, _, _), _| k != key);
        Some(obj)
    }

    fn new_object(&mut self, key: &Key, api_version: &str, kind: &str, body: &Value) -> Value {
        self.uid += 1;
        let mut obj = body.clone();
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["name"] = json!(key.2);
        if !key.1.is_empty() {
            obj["metadata"]["namespace"] = json!(key.1);
        }
        obj["metadata"]["uid"] = json!(format!("uid-{}", self.uid));
        obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        obj["metadata"]["generation"] = json!(1);
        if kind == "ReplicaSet" {
            obj["status"] = json!({"replicas": 0});
            if obj["spec"].get("replicas").is_none() {
                obj["spec"]["replicas"] = json!(1);
            }
        }
        obj
    }

    /// Minimal admission: what a real API server would refuse outright.
    fn admit(&self, kind: &str, obj: &Value) -> Result<(), String> {
        match kind {
            "ReplicaSet" => {
                let sel = obj["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let tl = obj["spec"]["template"]["metadata"]["labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                if sel.is_empty() || sel.iter().any(|(k, v)| tl.get(k) != Some(v)) {
                    return Err("spec.template.metadata.labels: `selector` does not match template `labels`".into());
                }
                if obj["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                {
                    return Err("spec.template.spec.containers: Required value".into());
                }
                Ok(())
            }
            "Service" => {
                if obj["spec"]["ports"].as_array().is_none_or(Vec::is_empty) {
                    return Err("spec.ports: Required value".into());
                }
                Ok(())
            }
            // What an apply that creates a Pod (say, an annotation patch to a
            // pod that is gone) runs into.
            "Pod" => {
                if obj["spec"]["containers"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                {
                    return Err("spec.containers: Required value".into());
                }
                Ok(())
            }
            "HTTPRoute" => check_http_route(obj),
            _ => Ok(()),
        }
    }
}

struct Route {
    group: String,
    resource: String,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Route {
        group: group.to_string(),
        resource: resource.to_string(),
        namespace,
        name,
        sub,
    })
}

impl FakeApi {
    /// Starts the server and the simulation on 127.0.0.1.
    pub async fn start(nodes: Vec<FakeNode>) -> FakeApi {
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            db: Mutex::new(Db {
                rv: 1,
                uid: 0,
                objects: BTreeMap::new(),
                applied: HashMap::new(),
                log: Vec::new(),
                sent: Vec::new(),
                requests: Vec::new(),
                logged: Vec::new(),
                hangs: Vec::new(),
                faults: Vec::new(),
                rbac: None,
                denied: Vec::new(),
                compacted: 0,
                watch_epoch: 0,
                replicaset_controller_paused: false,
                bound_at: HashMap::new(),
                deleted_at: HashMap::new(),
                last_crash: HashMap::new(),
                behaviors: HashMap::new(),
                default_behavior: Behavior::ReadyAfter(Duration::from_millis(100)),
                terminate_after: Duration::from_millis(150),
                nodes: nodes.clone(),
            }),
            changed,
        });
        {
            let mut db = shared.db.lock().unwrap();
            for n in &nodes {
                let key = ("nodes".to_string(), String::new(), n.name.clone());
                let alloc: Map<String, Value> = n
                    .allocatable
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v.to_string())))
                    .chain([
                        ("cpu".to_string(), json!("8")),
                        ("pods".to_string(), json!("110")),
                    ])
                    .collect();
                let taints: Vec<Value> = n
                    .taints
                    .iter()
                    .map(|t| json!({"key": t, "effect": "NoSchedule"}))
                    .collect();
                let body = json!({"metadata": {"labels": n.labels}, "spec": {"taints": taints},
                                  "status": {"allocatable": alloc, "capacity": alloc}});
                let obj = db.new_object(&key, "v1", "Node", &body);
                db.put(key, obj, "ADDED");
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let sim_shared = shared.clone();
        let sim = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let rv = {
                    let mut db = sim_shared.db.lock().unwrap();
                    simulate(&mut db);
                    db.rv
                };
                sim_shared.changed.send_replace(rv);
            }
        });
        FakeApi {
            addr,
            shared,
            tasks: vec![server, sim],
        }
    }

    /// A `kube::Client` talking plain HTTP to this server.
    pub fn client(&self, namespace: &str) -> kube::Client {
        self.client_as(namespace, "")
    }

    /// A client whose requests are logged as `who`'s.
    pub fn client_as(&self, namespace: &str, who: &str) -> kube::Client {
        let url: axum::http::Uri = format!("http://{}", self.addr).parse().unwrap();
        let mut cfg = kube::Config::new(url);
        cfg.default_namespace = namespace.to_string();
        cfg.read_timeout = Some(Duration::from_secs(30));
        if !who.is_empty() {
            cfg.headers.push((
                axum::http::HeaderName::from_static(CLIENT_HEADER),
                axum::http::HeaderValue::from_str(who).unwrap(),
            ));
        }
        kube::Client::try_from(cfg).unwrap()
    }

    /// Every request with its client, in order of arrival.
    pub fn log(&self) -> Vec<Logged> {
        self.shared.db.lock().unwrap().logged.clone()
    }

    /// Requests of `client` (any client when `None`) whose path contains
    /// `path_fragment` are logged and then never answered.
    pub fn hang(&self, client: Option<&str>, path_fragment: &str) {
        self.shared
            .db
            .lock()
            .unwrap()
            .hangs
            .push((client.map(str::to_string), path_fragment.to_string()));
    }

    /// The next `times` requests whose path contains `path_fragment` are
    /// answered `code` (429 with `Retry-After`, 500, ...) without effect.
    pub fn inject(&self, path_fragment: &str, code: u16, times: u32) {
        self.shared
            .db
            .lock()
            .unwrap()
            .faults
            .push((path_fragment.to_string(), code, times));
    }

    /// etcd compaction: the history so far is gone, open watches end, and a
    /// watch resumed from an older resourceVersion gets `410 Gone` (the
    /// client must list again).
    pub fn compact(&self) {
        let mut db = self.shared.db.lock().unwrap();
        // A change no watch has seen, so every resumed watch is too old.
        let rv = db.bump();
        db.compacted = rv;
        db.watch_epoch += 1;
        drop(db);
        self.shared.changed.send_replace(rv);
    }

    /// Answers 403 to every request the rules do not grant (RBAC as the
    /// API server applies it to Floyd's ServiceAccount).
    pub fn authorize(&self, rbac: Rbac) {
        self.shared.db.lock().unwrap().rbac = Some(rbac);
    }

    /// Requests refused with 403 so far (`verb group/resource namespace`).
    pub fn denied(&self) -> Vec<String> {
        self.shared.db.lock().unwrap().denied.clone()
    }

    /// Stops (or restarts) the simulated ReplicaSet controller: replica
    /// counts are not reconciled while it is paused.
    pub fn pause_replicaset_controller(&self, paused: bool) {
        self.shared.db.lock().unwrap().replicaset_controller_paused = paused;
    }

    /// Stores `obj` as if someone else had created it (kind and apiVersion
    /// filled in from `resource`).
    pub fn insert(&self, resource: &str, namespace: &str, obj: Value) {
        let mut db = self.shared.db.lock().unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let (kind, api_version) = match resource {
            "replicasets" => ("ReplicaSet", "apps/v1"),
            "services" => ("Service", "v1"),
            "configmaps" => ("ConfigMap", "v1"),
            "pods" => ("Pod", "v1"),
            "leases" => ("Lease", "coordination.k8s.io/v1"),
            "httproutes" => ("HTTPRoute", "gateway.networking.k8s.io/v1"),
            other => panic!("insert: resource {other} not supported"),
        };
        let key = (resource.to_string(), namespace.to_string(), name);
        let obj = db.new_object(&key, api_version, kind, &obj);
        db.put(key, obj, "ADDED");
    }

    pub fn set_behavior(&self, image: &str, b: Behavior) {
        self.shared
            .db
            .lock()
            .unwrap()
            .behaviors
            .insert(image.to_string(), b);
    }

    /// Every body clients sent (create, replace, apply), in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.db.lock().unwrap().sent.clone()
    }

    /// Every request line (`METHOD path?query`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.db.lock().unwrap().requests.clone()
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .db
            .lock()
            .unwrap()
            .objects
            .get(&(
                resource.to_string(),
                namespace.to_string(),
                name.to_string(),
            ))
            .cloned()
    }

    pub fn list(&self, resource: &str) -> Vec<Value> {
        self.shared
            .db
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let client = req
        .headers()
        .get(CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes: Bytes = match axum::body::to_bytes(req.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(e) => return status(400, "BadRequest", e.to_string()),
    };
    let q = query_map(&query);
    let Some(route) = parse_route(&path) else {
        return status(404, "NotFound", format!("no route {path}"));
    };
    let Some((api_version, kind, namespaced)) = resource_info(&route.group, &route.resource) else {
        return status(
            404,
            "NotFound",
            format!("resource {} not served", route.resource),
        );
    };
    if namespaced && route.name.is_some() && route.namespace.is_empty() {
        return status(
            404,
            "NotFound",
            "namespaced resource needs a namespace".into(),
        );
    }
    let body: Option<Value> = if bytes.is_empty() {
        None
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => return status(400, "BadRequest", format!("body is not JSON: {e}")),
        }
    };
    let hung = {
        let mut db = shared.db.lock().unwrap();
        db.logged.push(Logged {
            client: client.clone(),
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
        });
        db.hangs.iter().any(|(c, frag)| {
            c.as_ref().is_none_or(|c| *c == client) && path.contains(frag.as_str())
        })
    };
    if hung {
        // A hung server: the client's own deadline is the only way out.
        std::future::pending::<()>().await;
    }
    let fault = {
        let mut db = shared.db.lock().unwrap();
        db.faults
            .iter_mut()
            .find(|(frag, _, left)| *left > 0 && path.contains(frag.as_str()))
            .map(|f| {
                f.2 -= 1;
                f.1
            })
    };
    if let Some(code) = fault {
        let reason = match code {
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "Injected",
        };
        let mut r = status(code, reason, format!("injected {code} for {path}"));
        if code == 429 {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        return r;
    }
    {
        let mut db = shared.db.lock().unwrap();
        db.requests.push(format!("{method} {path}?{query}"));
        if let Some(b) = &body
            && method != Method::DELETE
        {
            db.sent.push(Sent {
                client: client.clone(),
                method: method.to_string(),
                path: path.clone(),
                query: query.clone(),
                body: b.clone(),
            });
        }
    }

    {
        let mut db = shared.db.lock().unwrap();
        if let Some(rbac) = db.rbac.clone().filter(|r| r.client == client) {
            let verb = match (&method, &route.name) {
                (&Method::GET, None)
                    if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) =>
                {
                    "watch"
                }
                (&Method::GET, None) => "list",
                (&Method::GET, Some(_)) => "get",
                (&Method::POST, _) => "create",
                (&Method::PUT, _) => "update",
                (&Method::PATCH, _) => "patch",
                (&Method::DELETE, _) => "delete",
                _ => "unknown",
            };
            let resource = match &route.sub {
                Some(sub) => format!("{}/{sub}", route.resource),
                None => route.resource.clone(),
            };
            let in_role_ns = !route.namespace.is_empty() && route.namespace == rbac.namespace;
            let ok = grants(&rbac.cluster_role, &route.group, &resource, verb)
                || (in_role_ns && grants(&rbac.role, &route.group, &resource, verb));
            if !ok {
                let what = format!("{verb} {}/{resource} {}", route.group, route.namespace);
                db.denied.push(what);
                return status(
                    403,
                    "Forbidden",
                    format!(
                        "{resource} is forbidden: User \"system:serviceaccount:floyd-system:floyd\" cannot {verb} resource \"{resource}\" in API group \"{}\"{}",
                        route.group,
                        if route.namespace.is_empty() {
                            " at the cluster scope".to_string()
                        } else {
                            format!(" in the namespace \"{}\"", route.namespace)
                        }
                    ),
                );
            }
        }
    }
    if let Some(fs) = q.get("fieldSelector")
        && let Some(f) = unsupported_field(&route.resource, fs)
    {
        return status(
            400,
            "BadRequest",
            format!(
                "\"{f}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\" and the resource's own"
            ),
        );
    }

    // Watch: a stream of JSON lines.
    if method == Method::GET
        && route.name.is_none()
        && matches!(q.get("watch").map(String::as_str), Some("true" | "1"))
    {
        return watch_response(shared, route, q, api_version, kind);
    }

    let resp = {
        let mut db = shared.db.lock().unwrap();
        serve(
            &mut db,
            &method,
            &route,
            &q,
            &content_type,
            body,
            api_version,
            kind,
        )
    };
    let rv = shared.db.lock().unwrap().rv;
    shared.changed.send_replace(rv);
    resp
}

#[allow(clippy::too_many_arguments)]
fn serve(
    db: &mut Db,
    method: &Method,
    route: &Route,
    q: &HashMap<String, String>,
    content_type: &str,
    body: Option<Value>,
    api_version: &str,
    kind: &str,
) -> Response {
    let key = |name: &str| {
        (
            route.resource.clone(),
            route.namespace.clone(),
            name.to_string(),
        )
    };
    match (method.clone(), &route.name, &route.sub) {
        (Method::GET, None, None) => {
            let ls = q.get("labelSelector").cloned().unwrap_or_default();
            let fs = q.get("fieldSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = db
                .objects
                .iter()
                .filter(|(k, _)| {
                    k.0 == route.resource && (route.namespace.is_empty() || k.1 == route.namespace)
                })
                .filter(|(_, v)| label_match(&ls, &labels_of(v)) && field_match(&fs, v))
                .map(|(_, v)| v.clone())
                .collect();
            ok(
                StatusCode::OK,
                &json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                        "metadata": {"resourceVersion": db.rv.to_string()}, "items": items}),
            )
        }
        (Method::GET, Some(name), None) => match db.objects.get(&key(name)) {
            Some(v) => ok(StatusCode::OK, v),
            None => status(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", route.resource),
            ),
        },
        (Method::GET, Some(name), Some(sub)) if sub == "scale" => {
            match db.objects.get(&key(name)) {
                Some(v) => ok(StatusCode::OK, &scale_of(v)),
                None => status(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", route.resource),
                ),
            }
        }
        (Method::POST, None, None) => {
            let Some(body) = body else {
                return status(400, "BadRequest", "no body".into());
            };
            let Some(name) = body["metadata"]["name"].as_str().map(str::to_string) else {
                return status(422, "Invalid", "metadata.name: Required value".into());
            };
            let k = key(&name);
            if db.objects.contains_key(&k) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", route.resource),
                );
            }
            if let Err(m) = db.admit(kind, &body) {
                return status(422, "Invalid", m);
            }
            let obj = db.new_object(&k, api_version, kind, &body);
            let obj = db.put(k, obj, "ADDED");
            ok(StatusCode::CREATED, &obj)
        }
        (Method::PUT, Some(name), None) => {
            let Some(body) = body else {
                return status(400, "BadRequest", "no body".into());
            };
            let k = key(name);
            let Some(live) = db.objects.get(&k).cloned() else {
                return status(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", route.resource),
                );
            };
            let want = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
            if want != live["metadata"]["resourceVersion"].as_str().unwrap_or("") {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        route.resource
                    ),
                );
            }
            let mut obj = body.clone();
            obj["metadata"]["uid"] = live["metadata"]["uid"].clone();
            obj["metadata"]["creationTimestamp"] = live["metadata"]["creationTimestamp"].clone();
            obj["apiVersion"] = json!(api_version);
            obj["kind"] = json!(kind);
            let obj = db.put(k, obj, "MODIFIED");
            ok(StatusCode::OK, &obj)
        }
        (Method::PATCH, Some(name), sub) => {
            let Some(body) = body else {
                return status(400, "BadRequest", "no body".into());
            };
            let k = key(name);
            let is_apply = content_type.starts_with("application/apply-patch");
            let manager = q.get("fieldManager").cloned().unwrap_or_default();
            if is_apply && manager.is_empty() {
                return status(400, "BadRequest", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into());
            }
            if is_apply && q.get("force").map(String::as_str) != Some("true") {
                // Without force, a field another manager applied with a
                // different value is a conflict (409), as on a real server.
                let others = db
                    .applied
                    .iter()
                    .filter(|((k2, m, sub2), _)| {
                        *k2 == k && *m != manager && *sub2 == sub.clone().unwrap_or_default()
                    })
                    .find_map(|((_, m, _), prev)| {
                        conflict(&body, prev, "").map(|f| (m.clone(), f))
                    });
                if let Some((m, f)) = others {
                    return status(
                        409,
                        "Conflict",
                        format!("Apply failed with 1 conflict: conflict with \"{m}\": .{f}"),
                    );
                }
            }
            match sub.as_deref() {
                Some("scale") => {
                    let Some(live) = db.objects.get(&k).cloned() else {
                        return status(
                            404,
                            "NotFound",
                            format!("{} \"{name}\" not found", route.resource),
                        );
                    };
                    let Some(n) = body["spec"]["replicas"].as_i64() else {
                        return status(422, "Invalid", "spec.replicas: Required value".into());
                    };
                    let mut obj = live;
                    obj["spec"]["replicas"] = json!(n);
                    let obj = db.put(k, obj, "MODIFIED");
                    ok(StatusCode::OK, &scale_of(&obj))
                }
                Some(other) => status(404, "NotFound", format!("subresource {other} not served")),
                None => {
                    let live = db.objects.get(&k).cloned();
                    let applied_key = (k.clone(), manager.clone(), String::new());
                    let (obj, created) = match live {
                        None if is_apply => (db.new_object(&k, api_version, kind, &body), true),
                        None => {
                            return status(
                                404,
                                "NotFound",
                                format!("{} \"{name}\" not found", route.resource),
                            );
                        }
                        Some(live) if content_type.starts_with("application/json-patch+json") => {
                            match json_patch(&live, &body) {
                                Ok(v) => (v, false),
                                Err(m) => {
                                    return status(
                                        422,
                                        "Invalid",
                                        format!("the JSON patch of {name} failed: {m}"),
                                    );
                                }
                            }
                        }
                        Some(mut live) => {
                            let selector = live["spec"]["selector"].clone();
                            if is_apply && let Some(prev) = db.applied.get(&applied_key) {
                                remove_stale(&mut live, prev, &body);
                            }
                            merge(&mut live, &body);
                            if kind == "ReplicaSet" && live["spec"]["selector"] != selector {
                                return status(
                                    422,
                                    "Invalid",
                                    format!(
                                        "ReplicaSet.apps \"{name}\" is invalid: spec.selector: Invalid value: {}: field is immutable",
                                        live["spec"]["selector"]
                                    ),
                                );
                            }
                            (live, false)
                        }
                    };
                    if let Err(m) = db.admit(kind, &obj) {
                        return status(422, "Invalid", m);
                    }
                    if is_apply {
                        db.applied.insert(applied_key, body);
                    }
                    let obj = db.put(k, obj, if created { "ADDED" } else { "MODIFIED" });
                    ok(
                        if created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        },
                        &obj,
                    )
                }
            }
        }
        (Method::DELETE, Some(name), None) => {
            let k = key(name);
            let Some(live) = db.objects.get(&k).cloned() else {
                return status(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", route.resource),
                );
            };
            if let Some(uid) = body
                .as_ref()
                .and_then(|b| b["preconditions"]["uid"].as_str())
                && live["metadata"]["uid"].as_str() != Some(uid)
            {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        live["metadata"]["uid"].as_str().unwrap_or("")
                    ),
                );
            }
            if kind == "Pod" {
                let obj = mark_deleted(db, &k, live);
                return ok(StatusCode::OK, &obj);
            }
            if kind == "ReplicaSet" {
                // Garbage collection of the pods it owns (background propagation).
                let uid = live["metadata"]["uid"].clone();
                let owned: Vec<(Key, Value)> = db
                    .objects
                    .iter()
                    .filter(|(pk, p)| {
                        pk.0 == "pods" && p["metadata"]["ownerReferences"][0]["uid"] == uid
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (pk, p) in owned {
                    if p["metadata"].get("deletionTimestamp").is_none() {
                        mark_deleted(db, &pk, p);
                    }
                }
            }
            let obj = db.remove(&k).unwrap_or(live);
            ok(StatusCode::OK, &obj)
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} not supported here"),
        ),
    }
}

fn mark_deleted(db: &mut Db, k: &Key, mut live: Value) -> Value {
    if live["metadata"].get("deletionTimestamp").is_some() {
        return live;
    }
    live["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    live["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    db.deleted_at.insert(k.clone(), Instant::now());
    db.put(k.clone(), live, "MODIFIED")
}

fn scale_of(rs: &Value) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
           "metadata": {"name": rs["metadata"]["name"], "namespace": rs["metadata"]["namespace"],
                        "resourceVersion": rs["metadata"]["resourceVersion"]},
           "spec": {"replicas": rs["spec"]["replicas"]},
           "status": {"replicas": rs["status"]["replicas"].as_i64().unwrap_or(0)}})
}

fn watch_response(
    shared: Arc<Shared>,
    route: Route,
    q: HashMap<String, String>,
    api_version: &'static str,
    kind: &'static str,
) -> Response {
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ls = q.get("labelSelector").cloned().unwrap_or_default();
    let fs = q.get("fieldSelector").cloned().unwrap_or_default();
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(290u64);
    let mut rx = shared.changed.subscribe();
    let stream = async_stream::stream! {
        let end = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last = from;
        let (epoch, too_old) = {
            let db = shared.db.lock().unwrap();
            (db.watch_epoch, from > 0 && from < db.compacted)
        };
        if too_old {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {from}")}});
            yield Ok::<_, std::io::Error>(Bytes::from(format!("{gone}\n")));
            return;
        }
        loop {
            let batch: Vec<String> = {
                let db = shared.db.lock().unwrap();
                if db.watch_epoch != epoch {
                    break;
                }
                let mut out: Vec<String> = db.log.iter()
                    .filter(|(rv, _, k, _)| *rv > last && k.0 == route.resource
                        && (route.namespace.is_empty() || k.1 == route.namespace))
                    .filter(|(_, _, _, v)| label_match(&ls, &labels_of(v)) && field_match(&fs, v))
                    .map(|(_, t, _, v)| format!("{}\n", json!({"type": t, "object": v})))
                    .collect();
                if bookmarks && db.rv > last {
                    // Where the watch is, so a resumed one need not go back further.
                    out.push(format!("{}\n", json!({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": db.rv.to_string()}}})));
                }
                last = db.rv;
                out
            };
            for line in batch {
                yield Ok::<_, std::io::Error>(Bytes::from(line));
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(end) => break,
            }
        }
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn ext_requests(pod: &Value) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, v) in c["resources"]["limits"].as_object().into_iter().flatten() {
            if k.contains('/') {
                let n: u32 = v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                *out.entry(k.clone()).or_default() += n;
            }
        }
    }
    out
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Pods a ReplicaSet owns that count as replicas (not terminating, not finished).
/// Every stored pod (a range of the ordered map, not a scan of everything).
fn all_pods(db: &Db) -> impl Iterator<Item = (&Key, &Value)> {
    db.objects
        .range(("pods".to_string(), String::new(), String::new())..)
        .take_while(|(k, _)| k.0 == "pods")
}

/// Pods that are not terminating or finished, by their owner's uid: built
/// once per round so the simulation stays linear in the number of pods.
fn live_pods_by_owner(db: &Db) -> HashMap<String, Vec<Key>> {
    let mut out: HashMap<String, Vec<Key>> = HashMap::new();
    for (k, p) in all_pods(db) {
        if p["metadata"].get("deletionTimestamp").is_none()
            && !matches!(p["status"]["phase"].as_str(), Some("Failed" | "Succeeded"))
            && let Some(uid) = p["metadata"]["ownerReferences"][0]["uid"].as_str()
        {
            out.entry(uid.to_string()).or_default().push(k.clone());
        }
    }
    out
}

/// One round of controller-manager, scheduler and kubelet.
fn simulate(db: &mut Db) {
    let now = Instant::now();
    // Kubelet: finish terminating pods.
    let gone: Vec<Key> = db
        .deleted_at
        .iter()
        .filter(|(_, t)| now.duration_since(**t) >= db.terminate_after)
        .map(|(k, _)| k.clone())
        .collect();
    for k in gone {
        db.deleted_at.remove(&k);
        db.bound_at.remove(&k);
        db.remove(&k);
    }

    // ReplicaSet controller.
    let paused = db.replicaset_controller_paused;
    let rss: Vec<(Key, String, usize, i64)> = db
        .objects
        .range(("replicasets".to_string(), String::new(), String::new())..)
        .take_while(|(k, _)| k.0 == "replicasets")
        .filter(|_| !paused)
        .map(|(k, rs)| {
            (
                k.clone(),
                rs["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                rs["spec"]["replicas"].as_i64().unwrap_or(0).max(0) as usize,
                rs["metadata"]["generation"].as_i64().unwrap_or(1),
            )
        })
        .collect();
    let mut by_owner = live_pods_by_owner(db);
    for (rk, uid, desired, generation) in rss {
        let mut keys = by_owner.remove(&uid).unwrap_or_default();
        if keys.len() < desired {
            let rs = db.objects.get(&rk).cloned().unwrap_or(Value::Null);
            for _ in keys.len()..desired {
                db.uid += 1;
                let name = format!("{}-{:05x}", rk.2, db.uid);
                let k = ("pods".to_string(), rk.1.clone(), name.clone());
                let tpl = &rs["spec"]["template"];
                let body = json!({
                    "metadata": {"labels": tpl["metadata"]["labels"],
                                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                    "name": rk.2, "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
                    "spec": tpl["spec"],
                    "status": {"phase": "Pending"},
                });
                let obj = db.new_object(&k, "v1", "Pod", &body);
                db.put(k.clone(), obj, "ADDED");
                keys.push(k);
            }
        }
        // Scale-down, with the ReplicaSet controller's ranking: unassigned <
        // assigned, pending < running, not ready < ready, lower deletion cost
        // first, newer first.
        if keys.len() > desired {
            let mut pods: Vec<(Key, Value)> = keys
                .iter()
                .filter_map(|k| Some((k.clone(), db.objects.get(k)?.clone())))
                .collect();
            pods.sort_by_key(|(_, p)| {
                let assigned = p["spec"]["nodeName"].is_string();
                let running = p["status"]["phase"] == "Running";
                let cost: i64 =
                    p["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                let created = p["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                (
                    assigned,
                    running,
                    is_ready(p),
                    cost,
                    std::cmp::Reverse(created),
                )
            });
            let extra = pods.len() - desired;
            let rest = pods.split_off(extra);
            for (k, p) in pods {
                mark_deleted(db, &k, p);
            }
            keys = rest.into_iter().map(|(k, _)| k).collect();
        }
        // Status, of the pods not terminating.
        let ready = keys
            .iter()
            .filter(|k| db.objects.get(*k).is_some_and(is_ready))
            .count();
        let st = json!({"replicas": keys.len(), "readyReplicas": ready, "availableReplicas": ready,
                        "observedGeneration": generation});
        if let Some(cur) = db.objects.get(&rk)
            && cur["status"] != st
        {
            let mut obj = cur.clone();
            obj["status"] = st;
            db.put(rk.clone(), obj, "MODIFIED");
        }
    }

    // Scheduler.
    let pending: Vec<(Key, Value)> = all_pods(db)
        .filter(|(_, p)| {
            !p["spec"]["nodeName"].is_string() && p["metadata"].get("deletionTimestamp").is_none()
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Extended resources in use per node, once per round (and as pods bind).
    let mut in_use: HashMap<String, BTreeMap<String, u32>> = HashMap::new();
    if !pending.is_empty() {
        for (_, q) in all_pods(db) {
            if let Some(node) = q["spec"]["nodeName"].as_str()
                && !matches!(q["status"]["phase"].as_str(), Some("Failed" | "Succeeded"))
            {
                let acc = in_use.entry(node.to_string()).or_default();
                for (r, c) in ext_requests(q) {
                    *acc.entry(r).or_default() += c;
                }
            }
        }
    }
    for (k, mut p) in pending {
        let need = ext_requests(&p);
        let selector: BTreeMap<String, String> = p["spec"]["nodeSelector"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(a, b)| (a.clone(), b.as_str().unwrap_or("").to_string()))
            .collect();
        let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
        let mut chosen = None;
        let tolerated: Vec<String> = p["spec"]["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["operator"] == "Exists" || t["operator"].is_null())
            .filter_map(|t| t["key"].as_str().map(str::to_string))
            .collect();
        for n in &db.nodes {
            if let Some(t) = n.taints.iter().find(|t| !tolerated.contains(t)) {
                *reasons
                    .entry(format!("node(s) had untolerated taint {{{t}: }}"))
                    .or_default() += 1;
                continue;
            }
            if selector.iter().any(|(a, b)| n.labels.get(a) != Some(b)) {
                *reasons
                    .entry("node(s) didn't match Pod's node affinity/selector".into())
                    .or_default() += 1;
                continue;
            }
            let used = in_use.get(&n.name).cloned().unwrap_or_default();
            let short = need.iter().find(|(r, c)| {
                n.allocatable.get(*r).copied().unwrap_or(0)
                    < used.get(*r).copied().unwrap_or(0) + **c
            });
            match short {
                Some((r, _)) => *reasons.entry(format!("Insufficient {r}")).or_default() += 1,
                None => {
                    chosen = Some(n.name.clone());
                    break;
                }
            }
        }
        match chosen {
            Some(node) => {
                let acc = in_use.entry(node.clone()).or_default();
                for (r, c) in &need {
                    *acc.entry(r.clone()).or_default() += c;
                }
                p["spec"]["nodeName"] = json!(node);
                p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True",
                                                     "lastTransitionTime": now_rfc3339()}]);
                db.bound_at.insert(k.clone(), now);
                db.put(k, p, "MODIFIED");
            }
            None => {
                let msg = format!(
                    "0/{} nodes are available: {}.",
                    db.nodes.len(),
                    reasons
                        .iter()
                        .map(|(r, c)| format!("{c} {r}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let cond = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                   "message": msg, "lastTransitionTime": now_rfc3339()}]);
                if p["status"]["conditions"][0]["message"] != cond[0]["message"] {
                    p["status"]["conditions"] = cond;
                    db.put(k, p, "MODIFIED");
                }
            }
        }
    }

    // Kubelet: start containers.
    let bound: Vec<(Key, Instant)> = db.bound_at.iter().map(|(k, t)| (k.clone(), *t)).collect();
    for (k, at) in bound {
        let Some(cur) = db.objects.get(&k) else {
            db.bound_at.remove(&k);
            continue;
        };
        if cur["metadata"].get("deletionTimestamp").is_some() {
            continue;
        }
        let image = cur["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let behavior = db
            .behaviors
            .get(&image)
            .copied()
            .unwrap_or(db.default_behavior);
        // Settled pods cost a lookup, not a copy (10,000 of them every round).
        if matches!(behavior, Behavior::ReadyAfter(_)) && is_ready(cur) {
            continue;
        }
        let mut p = cur.clone();
        let cstatus = |ready: bool, restarts: u64, state: Value, last: Value| {
            json!([{"name": "app", "image": image, "imageID": "", "ready": ready,
                    "restartCount": restarts, "started": ready, "state": state, "lastState": last}])
        };
        let scheduled = p["status"]["conditions"][0].clone();
        let new_status = match behavior {
            Behavior::ReadyAfter(d) => {
                if now.duration_since(at) < d || is_ready(&p) {
                    continue;
                }
                let t = now_rfc3339();
                json!({"phase": "Running", "startTime": t,
                       "conditions": [scheduled, {"type": "Ready", "status": "True", "lastTransitionTime": t}],
                       "containerStatuses": cstatus(true, 0, json!({"running": {"startedAt": t}}), json!({}))})
            }
            Behavior::NeverReady => {
                if p["status"]["phase"] == "Running" {
                    continue;
                }
                let t = now_rfc3339();
                json!({"phase": "Running", "startTime": t,
                       "conditions": [scheduled, {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                       "message": "containers with unready status: [app]", "lastTransitionTime": t}],
                       "containerStatuses": cstatus(false, 0, json!({"running": {"startedAt": t}}), json!({}))})
            }
            Behavior::CrashLoop => {
                let last = db.last_crash.get(&k).copied();
                if last.is_some_and(|l| now.duration_since(l) < Duration::from_millis(200)) {
                    continue;
                }
                db.last_crash.insert(k.clone(), now);
                let restarts = p["status"]["containerStatuses"][0]["restartCount"]
                    .as_u64()
                    .map_or(0, |r| r + 1);
                json!({"phase": "Running",
                       "conditions": [scheduled, {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                       "message": "containers with unready status: [app]"}],
                       "containerStatuses": cstatus(false, restarts,
                            json!({"waiting": {"reason": "CrashLoopBackOff",
                                               "message": "back-off 10s restarting failed container=app"}}),
                            json!({"terminated": {"exitCode": 1, "reason": "Error"}}))})
            }
            Behavior::ImagePullBackOff => {
                if p["status"]["containerStatuses"].is_array() {
                    continue;
                }
                json!({"phase": "Pending", "conditions": [scheduled],
                       "containerStatuses": cstatus(false, 0,
                            json!({"waiting": {"reason": "ImagePullBackOff",
                                               "message": format!("Back-off pulling image \"{image}\"")}}),
                            json!({}))})
            }
        };
        p["status"] = new_status;
        db.put(k, p, "MODIFIED");
    }
}

/// The structure the Gateway API's HTTPRoute CRD schema (v1, standard
/// channel) demands of what Floyd writes: at most 16 rules, at most 16
/// backendRefs per rule, each with a name of 1..=253 characters, a port in
/// 1..=65535 for a Service, and a weight in 0..=1000000. (The full schema
/// check is `validate::validate_http_routes`, in the tests.)
pub fn check_http_route(obj: &Value) -> Result<(), String> {
    let rules = obj["spec"]["rules"].as_array().cloned().unwrap_or_default();
    if rules.len() > 16 {
        return Err("spec.rules: Too many: must have at most 16 items".into());
    }
    for (i, r) in rules.iter().enumerate() {
        let refs = match &r["backendRefs"] {
            Value::Null => continue,
            Value::Array(a) => a,
            _ => return Err(format!("spec.rules[{i}].backendRefs: must be an array")),
        };
        if refs.len() > 16 {
            return Err(format!(
                "spec.rules[{i}].backendRefs: Too many: must have at most 16 items"
            ));
        }
        for (j, b) in refs.iter().enumerate() {
            let at = format!("spec.rules[{i}].backendRefs[{j}]");
            let Some(b) = b.as_object() else {
                return Err(format!("{at}: must be an object"));
            };
            for k in b.keys() {
                if ![
                    "group",
                    "kind",
                    "name",
                    "namespace",
                    "port",
                    "weight",
                    "filters",
                ]
                .contains(&k.as_str())
                {
                    return Err(format!("{at}.{k}: unknown field"));
                }
            }
            let name = b.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() || name.len() > 253 {
                return Err(format!("{at}.name: Required value (1..=253 characters)"));
            }
            let kind = b.get("kind").and_then(Value::as_str).unwrap_or("Service");
            match b.get("port") {
                None if kind == "Service" => {
                    return Err(format!("{at}: Must have port for Service reference"));
                }
                Some(p) if !p.as_i64().is_some_and(|p| (1..=65535).contains(&p)) => {
                    return Err(format!("{at}.port: must be an integer in 1..=65535"));
                }
                _ => {}
            }
            if let Some(w) = b.get("weight")
                && !w.as_i64().is_some_and(|w| (0..=1_000_000).contains(&w))
            {
                return Err(format!("{at}.weight: must be an integer in 0..=1000000"));
            }
        }
    }
    Ok(())
}
