//! `tower_test::mock::pair` scenarios: the exact requests (method, path,
//! query, body) the kube runtime sends for each step, answered by a script.

use super::support::*;
use floyd::manifest::{InstanceTemplate, Revision, ServiceSpec};
use floyd::runtime::kube::{KubeRuntime, LeaderElector, LeaseConfig};
use floyd::runtime::{Action, GpuCapacity, InstancePhase, Runtime};
use floyd::time::Time;
use http_body_util::BodyExt;
use hyper::{Request, Response};
use kube::client::Body;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use std::time::Duration;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and the scripted answer.
struct Expect {
    method: &'static str,
    uri: String,
    body: Option<Value>,
    status: u16,
    /// `None`: echo the request body back (what apply/create return).
    response: Option<Value>,
}

fn expect(method: &'static str, uri: &str) -> Expect {
    Expect {
        method,
        uri: uri.to_string(),
        body: None,
        status: 200,
        response: None,
    }
}

impl Expect {
    fn body(mut self, b: Value) -> Self {
        self.body = Some(b);
        self
    }
    fn reply(mut self, status: u16, v: Value) -> Self {
        self.status = status;
        self.response = Some(v);
        self
    }
    fn not_found(self) -> Self {
        self.reply(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }
}

const CLOCK: fn() -> Time = || Time(1_700_000_000_000);
const CLOCK_TEXT: &str = "2023-11-14T22:13:20.000Z";

fn runtime() -> (KubeRuntime, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "apps");
    let rt = KubeRuntime::new(client, "apps")
        .with_clock(CLOCK)
        .with_identity("floyd-0");
    (rt, handle)
}

/// Answers `script` in order, asserting each request; then checks every
/// object sent with `kubernetes-validate --strict`.
async fn serve(mut handle: Handle, script: Vec<Expect>) {
    let mut objects = Vec::new();
    for (i, e) in script.into_iter().enumerate() {
        let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("step {i}: no request for {} {}", e.method, e.uri))
            .unwrap_or_else(|| panic!("step {i}: client gone before {} {}", e.method, e.uri));
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        assert_eq!(
            (method.as_str(), uri.as_str()),
            (e.method, e.uri.as_str()),
            "step {i}"
        );
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let body: Option<Value> = if bytes.is_empty() || e.method == "GET" {
            None
        } else {
            Some(serde_json::from_slice(&bytes).unwrap())
        };
        if let Some(want) = &e.body {
            assert_eq!(
                body.as_ref(),
                Some(want),
                "step {i}: body of {} {}",
                e.method,
                e.uri
            );
        }
        if let Some(b) = body.as_ref().filter(|b| b.get("kind").is_some()) {
            objects.push(b.clone());
        }
        let reply =
            e.response.clone().or(body).unwrap_or_else(
                || json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        send.send_response(
            Response::builder()
                .status(e.status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    // Blocking, but every request of the scenario is answered by now.
    tokio::task::spawn_blocking(move || {
        super::validate::validate_objects("tower scenario", &objects)
    })
    .await
    .expect("validation ran");
}

const RS: &str = "/apis/apps/v1/namespaces/apps/replicasets";
const SVC: &str = "/api/v1/namespaces/apps/services";
const APPLY: &str = "?&force=true&fieldManager=floyd";

fn r1() -> Revision {
    Revision::from("1111111111")
}
fn r2() -> Revision {
    Revision::from("2222222222")
}

fn scale_body(name: &str, n: u32) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
           "metadata": {"name": name, "namespace": "apps"}, "spec": {"replicas": n}})
}

fn service_body(name: &str, role: &str, revision: Option<&str>) -> Value {
    let mut selector = json!({"floyd.dev/instance": "floyd", "floyd.dev/service": "web"});
    if let Some(r) = revision {
        selector["floyd.dev/revision"] = json!(r);
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "apps",
                     "labels": {"app.kubernetes.io/managed-by": "floyd", "app.kubernetes.io/name": "web",
                                "floyd.dev/instance": "floyd", "floyd.dev/service": "web"},
                     "annotations": {"floyd.dev/role": role}},
        "spec": {"selector": selector,
                 "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]},
    })
}

fn rs_body(t: &InstanceTemplate, revision: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": format!("web-{revision}"), "namespace": "apps",
            "labels": {"app.kubernetes.io/managed-by": "floyd", "app.kubernetes.io/name": "web",
                       "floyd.dev/instance": "floyd", "floyd.dev/service": "web", "floyd.dev/revision": revision},
            "annotations": {"floyd.dev/revision": revision, "floyd.dev/created-at": CLOCK_TEXT,
                            "floyd.dev/commit": "c0ffee",
                            "floyd.dev/template": serde_json::to_string(t).unwrap()},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"floyd.dev/instance": "floyd", "floyd.dev/service": "web",
                                         "floyd.dev/revision": revision}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/managed-by": "floyd", "app.kubernetes.io/name": "web",
                                        "floyd.dev/instance": "floyd", "floyd.dev/service": "web",
                                        "floyd.dev/revision": revision}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "app",
                        "image": "ghcr.io/acme/web:1",
                        "env": [{"name": "PORT", "value": "8080"}, {"name": "LOG_LEVEL", "value": "info"}],
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "64Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                           "initialDelaySeconds": 0, "periodSeconds": 2, "timeoutSeconds": 1,
                                           "successThreshold": 1, "failureThreshold": 3},
                    }],
                },
            },
        },
    })
}

async fn run_apply(
    rt: KubeRuntime,
    handle: Handle,
    spec: ServiceSpec,
    actions: Vec<Action>,
    script: Vec<Expect>,
) {
    let server = tokio::spawn(serve(handle, script));
    let result = rt.apply(&name("web"), &spec, &actions).await;
    server.await.expect("script ran to the end");
    result.expect("apply succeeded");
}

#[tokio::test]
async fn first_deploy_applies_the_replica_set_the_service_and_scales() {
    let (rt, handle) = runtime();
    let t = template("ghcr.io/acme/web:1");
    rt.set_commit(&name("web"), &r1(), "c0ffee");
    let actions = vec![
        Action::CreateRevision {
            revision: r1(),
            template: t.clone(),
        },
        Action::SetTraffic {
            active: None,
            preview: None,
        },
        Action::Scale {
            revision: r1(),
            replicas: 3,
        },
    ];
    // Every write is preceded by a read of the object it writes (ownership).
    let script = vec![
        expect("GET", &format!("{SVC}/web")).not_found(),
        expect("GET", &format!("{RS}/web-1111111111")).not_found(),
        expect("PATCH", &format!("{RS}/web-1111111111{APPLY}")).body(rs_body(&t, "1111111111", 0)),
        expect("GET", &format!("{SVC}/web")).not_found(),
        expect("PATCH", &format!("{SVC}/web{APPLY}")).body(service_body("web", "active", None)),
        expect("GET", &format!("{SVC}/web")).reply(200, service_body("web", "active", None)),
        expect("PATCH", &format!("{SVC}/web{APPLY}")).body(service_body("web", "active", None)),
        // No preview Service: nothing to delete, no DELETE sent.
        expect("GET", &format!("{SVC}/web-preview")).not_found(),
        expect("GET", &format!("{RS}/web-1111111111")).reply(200, rs_body(&t, "1111111111", 0)),
        expect("PATCH", &format!("{RS}/web-1111111111/scale{APPLY}"))
            .body(scale_body("web-1111111111", 3)),
    ];
    run_apply(rt, handle, spec(3, t), actions, script).await;
}

#[tokio::test]
async fn create_revision_of_an_existing_replica_set_keeps_its_count_and_creation_time() {
    let (rt, handle) = runtime();
    let t = template("ghcr.io/acme/web:1");
    let mut live = rs_body(&t, "1111111111", 4);
    live["metadata"]["annotations"]["floyd.dev/created-at"] = json!("2023-01-01T00:00:00.000Z");
    let mut want = rs_body(&t, "1111111111", 4);
    want["metadata"]["annotations"]["floyd.dev/created-at"] = json!("2023-01-01T00:00:00.000Z");
    let script = vec![
        expect("GET", &format!("{SVC}/web")).reply(200, service_body("web", "active", None)),
        expect("GET", &format!("{RS}/web-1111111111")).reply(200, live),
        expect("PATCH", &format!("{RS}/web-1111111111{APPLY}")).body(want),
        expect("GET", &format!("{SVC}/web")).reply(200, service_body("web", "active", None)),
        expect("PATCH", &format!("{SVC}/web{APPLY}")),
    ];
    let actions = vec![Action::CreateRevision {
        revision: r1(),
        template: t.clone(),
    }];
    run_apply(rt, handle, spec(4, t), actions, script).await;
}

#[tokio::test]
async fn rolling_step_scales_new_up_then_old_down_by_scale_subresource() {
    let (rt, handle) = runtime();
    let actions = vec![
        Action::Scale {
            revision: r2(),
            replicas: 2,
        },
        Action::Scale {
            revision: r1(),
            replicas: 2,
        },
    ];
    let t = template("ghcr.io/acme/web:1");
    let script = vec![
        expect("GET", &format!("{RS}/web-2222222222")).reply(200, rs_body(&t, "2222222222", 1)),
        expect("PATCH", &format!("{RS}/web-2222222222/scale{APPLY}"))
            .body(scale_body("web-2222222222", 2)),
        expect("GET", &format!("{RS}/web-1111111111")).reply(200, rs_body(&t, "1111111111", 3)),
        expect("PATCH", &format!("{RS}/web-1111111111/scale{APPLY}"))
            .body(scale_body("web-1111111111", 2)),
    ];
    run_apply(rt, handle, spec(4, t.clone()), actions, script).await;
}

#[tokio::test]
async fn scaling_a_missing_revision_is_no_such_revision() {
    let (rt, handle) = runtime();
    let server = tokio::spawn(serve(
        handle,
        vec![expect("GET", &format!("{RS}/web-2222222222")).not_found()],
    ));
    let err = rt
        .apply(
            &name("web"),
            &spec(1, template("x")),
            &[Action::Scale {
                revision: r2(),
                replicas: 1,
            }],
        )
        .await
        .unwrap_err();
    server.await.unwrap();
    assert!(
        matches!(err, floyd::runtime::Error::NoSuchRevision { ref revision, .. } if revision == &r2()),
        "{err}"
    );
}

#[tokio::test]
async fn blue_green_preview_then_switch_moves_selectors_and_drops_the_preview() {
    let (rt, handle) = runtime();
    let s = blue_green(spec(3, template("ghcr.io/acme/web:1")));
    let actions = vec![
        Action::SetTraffic {
            active: Some(r1()),
            preview: Some(r2()),
        },
        Action::SetTraffic {
            active: Some(r2()),
            preview: None,
        },
    ];
    let mut live_preview = service_body("web-preview", "preview", Some("2222222222"));
    live_preview["metadata"]["uid"] = json!("uid-preview");
    let script = vec![
        expect("GET", &format!("{SVC}/web")).not_found(),
        expect("PATCH", &format!("{SVC}/web{APPLY}")).body(service_body(
            "web",
            "active",
            Some("1111111111"),
        )),
        expect("GET", &format!("{SVC}/web-preview")).not_found(),
        expect("PATCH", &format!("{SVC}/web-preview{APPLY}")).body(service_body(
            "web-preview",
            "preview",
            Some("2222222222"),
        )),
        expect("GET", &format!("{SVC}/web"))
            .reply(200, service_body("web", "active", Some("1111111111"))),
        expect("PATCH", &format!("{SVC}/web{APPLY}")).body(service_body(
            "web",
            "active",
            Some("2222222222"),
        )),
        expect("GET", &format!("{SVC}/web-preview")).reply(200, live_preview),
        // Deleted only as the object read: its UID is the precondition.
        expect("DELETE", &format!("{SVC}/web-preview?")).body(
            json!({"propagationPolicy": "Background", "preconditions": {"uid": "uid-preview"}}),
        ),
    ];
    run_apply(rt, handle, s, actions, script).await;
}

#[tokio::test]
async fn blue_green_create_revision_leaves_the_active_service_alone() {
    let (rt, handle) = runtime();
    let t = template("ghcr.io/acme/web:1");
    let s = blue_green(spec(3, t.clone()));
    let t2 = t.clone();
    let script = vec![
        expect("GET", &format!("{RS}/web-2222222222")).not_found(),
        expect("PATCH", &format!("{RS}/web-2222222222{APPLY}")),
        // No Service read or write follows: the next requests are the scale.
        expect("GET", &format!("{RS}/web-2222222222")).reply(200, rs_body(&t2, "2222222222", 0)),
        expect("PATCH", &format!("{RS}/web-2222222222/scale{APPLY}")),
    ];
    let actions = vec![
        Action::CreateRevision {
            revision: r2(),
            template: t,
        },
        Action::Scale {
            revision: r2(),
            replicas: 3,
        },
    ];
    run_apply(rt, handle, s, actions, script).await;
}

#[tokio::test]
async fn rollback_scales_stable_up_bad_down_records_an_event_and_saves_state() {
    let (rt, handle) = runtime();
    let t = template("ghcr.io/acme/web:1");
    let script = vec![
        expect("GET", &format!("{RS}/web-1111111111")).reply(200, rs_body(&t, "1111111111", 0)),
        expect("PATCH", &format!("{RS}/web-1111111111/scale{APPLY}")).body(scale_body("web-1111111111", 3)),
        expect("GET", &format!("{RS}/web-2222222222")).reply(200, rs_body(&t, "2222222222", 3)),
        expect("PATCH", &format!("{RS}/web-2222222222/scale{APPLY}")).body(scale_body("web-2222222222", 0)),
        expect("POST", "/apis/events.k8s.io/v1/namespaces/apps/events?").body(json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.18bcfe568000000", "namespace": "apps",
                         "labels": {"app.kubernetes.io/managed-by": "floyd", "floyd.dev/instance": "floyd",
                                    "floyd.dev/service": "web"}},
            "eventTime": "2023-11-14T22:13:20.000000Z",
            "action": "Rollout", "reason": "RolledBack",
            "note": "rolled back to 1111111111: 2222222222 did not become ready",
            "type": "Warning",
            "reportingController": "floyd.dev/controller", "reportingInstance": "floyd-0",
            "regarding": {"apiVersion": "v1", "kind": "Service", "name": "web", "namespace": "apps"},
        })).reply(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "x"},
                               "eventTime": "2023-11-14T22:13:20.000000Z"})),
        expect("GET", "/api/v1/namespaces/apps/configmaps/floyd-state-web").not_found(),
        expect("PATCH", &format!("/api/v1/namespaces/apps/configmaps/floyd-state-web{APPLY}")).body(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "floyd-state-web", "namespace": "apps",
                         "labels": {"app.kubernetes.io/managed-by": "floyd", "app.kubernetes.io/name": "web",
                                    "floyd.dev/instance": "floyd", "floyd.dev/service": "web"}},
            "data": {"state.json": "{\"phase\":\"RolledBack\"}"},
        })),
    ];
    let server = tokio::spawn(serve(handle, script));
    let web = name("web");
    rt.apply(
        &web,
        &spec(3, t),
        &[
            Action::Scale {
                revision: r1(),
                replicas: 3,
            },
            Action::Scale {
                revision: r2(),
                replicas: 0,
            },
        ],
    )
    .await
    .unwrap();
    rt.record_event(
        &web,
        "RolledBack",
        "rolled back to 1111111111: 2222222222 did not become ready",
    )
    .await
    .unwrap();
    rt.save_state(&web, "{\"phase\":\"RolledBack\"}")
        .await
        .unwrap();
    server.await.unwrap();
}

fn pod_body(name: &str, revision: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"),
                        "labels": {"app.kubernetes.io/managed-by": "floyd", "floyd.dev/instance": "floyd",
                                   "floyd.dev/service": "web", "floyd.dev/revision": revision}}})
}

#[tokio::test]
async fn delete_instance_deletes_the_pod_first_then_lowers_the_count() {
    let (rt, handle) = runtime();
    let t = template("ghcr.io/acme/web:1");
    let pod = "web-1111111111-abcde";
    let script = vec![
        expect("GET", &format!("{RS}/web-1111111111")).reply(200, rs_body(&t, "1111111111", 3)),
        expect("GET", &format!("/api/v1/namespaces/apps/pods/{pod}"))
            .reply(200, pod_body(pod, "1111111111")),
        // The pod read, by UID: a same-named newer pod is never deleted.
        expect("DELETE", &format!("/api/v1/namespaces/apps/pods/{pod}?"))
            .body(json!({"preconditions": {"uid": format!("uid-{pod}")}}))
            .reply(200, pod_body(pod, "1111111111")),
        expect("PATCH", &format!("{RS}/web-1111111111/scale{APPLY}"))
            .body(scale_body("web-1111111111", 2)),
    ];
    let actions = vec![Action::DeleteInstance {
        revision: r1(),
        instance: pod.into(),
    }];
    run_apply(rt, handle, spec(3, t), actions, script).await;
}

#[tokio::test]
async fn delete_instance_of_a_gone_pod_only_lowers_the_count() {
    let (rt, handle) = runtime();
    let t = template("ghcr.io/acme/web:1");
    let pod = "web-1111111111-abcde";
    let script = vec![
        expect("GET", &format!("{RS}/web-1111111111")).reply(200, rs_body(&t, "1111111111", 3)),
        expect("GET", &format!("/api/v1/namespaces/apps/pods/{pod}")).not_found(),
        expect("PATCH", &format!("{RS}/web-1111111111/scale{APPLY}"))
            .body(scale_body("web-1111111111", 2)),
    ];
    let actions = vec![Action::DeleteInstance {
        revision: r1(),
        instance: pod.into(),
    }];
    run_apply(rt, handle, spec(3, t), actions, script).await;
}

#[tokio::test]
async fn gpu_capacity_is_read_from_nodes_and_unfinished_pods() {
    let (rt, handle) = runtime();
    let t = gpu_template("ghcr.io/acme/llm:1", "NVIDIA-A100-SXM4-80GB");
    let mut rs = rs_body(&template("ghcr.io/acme/web:1"), "1111111111", 2);
    rs["metadata"]["annotations"]["floyd.dev/template"] = json!(serde_json::to_string(&t).unwrap());
    let pod = |n: &str, node: &str, deleting: bool| {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": n, "namespace": "apps", "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {"floyd.dev/instance": "floyd", "floyd.dev/service": "web",
                                    "floyd.dev/revision": "1111111111"}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x",
                      "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                        "lastTransitionTime": "2026-01-01T00:00:10Z"}]},
        });
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
        }
        p
    };
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"},
                      "items": [pod("web-1111111111-a", "gpu-1", false), pod("web-1111111111-b", "gpu-1", true)]});
    let nodes = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "9"}, "items": [
        {"metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
         "status": {"allocatable": {"nvidia.com/gpu": "4"}}},
        {"metadata": {"name": "gpu-2", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
         "status": {"allocatable": {"nvidia.com/gpu": "8"}}},
    ]});
    let sel = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dfloyd%2Cfloyd.dev%2Finstance%3Dfloyd%2Cfloyd.dev%2Fservice%3Dweb";
    let script = vec![
        expect("GET", &format!("{RS}?&{sel}")).reply(
            200,
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {}, "items": [rs]}),
        ),
        expect("GET", &format!("/api/v1/namespaces/apps/pods?&{sel}")).reply(200, pods.clone()),
        expect("GET", &format!("{SVC}/web")).not_found(),
        expect("GET", &format!("{SVC}/web-preview")).not_found(),
        expect("GET", "/api/v1/nodes?").reply(200, nodes),
        expect(
            "GET",
            "/api/v1/namespaces/apps/pods?&fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed",
        )
        .reply(200, pods),
    ];
    let server = tokio::spawn(serve(handle, script));
    let s = spec(2, t);
    let observed = rt.observe(&name("web"), Some(&s), Time(0)).await.unwrap();
    server.await.unwrap();
    assert_eq!(
        observed.gpu,
        Some(GpuCapacity {
            kind: "NVIDIA-A100-SXM4-80GB".into(),
            exist: 4,
            free: 2,
            held_by_service: 2
        })
    );
    let r = observed.revision(&r1()).expect("revision observed");
    assert_eq!(r.desired, 2);
    assert_eq!(r.template, s.template);
    let phases: Vec<InstancePhase> = r.instances.iter().map(|i| i.phase).collect();
    assert_eq!(
        phases,
        vec![InstancePhase::Running, InstancePhase::Terminating]
    );
    assert_eq!(r.ready(), 1);
    assert_eq!(
        r.instances[0].gpus,
        vec!["gpu-1/nvidia.com/gpu#0".to_string()]
    );
}

fn lease_json(holder: &str, rv: &str, renew: &str, transitions: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "floyd-leader", "namespace": "apps", "resourceVersion": rv},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": renew,
                    "leaseTransitions": transitions}})
}

#[tokio::test]
async fn leader_election_creates_renews_respects_and_takes_over_the_lease() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "apps");
    let me = LeaderElector::new(client, "apps", LeaseConfig::new("floyd-leader", "floyd-1"));
    let lease = "/apis/coordination.k8s.io/v1/namespaces/apps/leases/floyd-leader";
    let t0 = Time(1_767_225_600_000); // 2026-01-01T00:00:00Z
    let script = vec![
        // 1. No lease yet: create it.
        expect("GET", lease).not_found(),
        expect("POST", "/apis/coordination.k8s.io/v1/namespaces/apps/leases?").body(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "floyd-leader", "namespace": "apps",
                         "labels": {"app.kubernetes.io/managed-by": "floyd", "floyd.dev/instance": "floyd"}},
            "spec": {"holderIdentity": "floyd-1", "leaseDurationSeconds": 15,
                     "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z",
                     "leaseTransitions": 0}})),
        // 2. Ours: renew with the resourceVersion read (optimistic lock).
        expect("GET", lease).reply(200, lease_json("floyd-1", "5", "2026-01-01T00:00:00.000000Z", 0)),
        expect("PUT", &format!("{lease}?")).body(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "floyd-leader", "namespace": "apps", "resourceVersion": "5"},
            "spec": {"holderIdentity": "floyd-1", "leaseDurationSeconds": 15,
                     "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:05.000000Z",
                     "leaseTransitions": 0}})),
        // 3. Someone else took it (we lost a race): fresh, so we follow. No write.
        expect("GET", lease).reply(200, lease_json("floyd-2", "7", "2026-01-01T00:00:09.000000Z", 1)),
        // 4. Same record 10 s later: not expired yet. No write.
        expect("GET", lease).reply(200, lease_json("floyd-2", "7", "2026-01-01T00:00:09.000000Z", 1)),
        // 5. Same record 16 s after we first saw it: expired, take over.
        expect("GET", lease).reply(200, lease_json("floyd-2", "7", "2026-01-01T00:00:09.000000Z", 1)),
        expect("PUT", &format!("{lease}?")).body(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "floyd-leader", "namespace": "apps", "resourceVersion": "7"},
            "spec": {"holderIdentity": "floyd-1", "leaseDurationSeconds": 15,
                     "acquireTime": "2026-01-01T00:00:26.000000Z", "renewTime": "2026-01-01T00:00:26.000000Z",
                     "leaseTransitions": 2}})),
        // 6. Shutdown: release so a standby need not wait.
        expect("GET", lease).reply(200, lease_json("floyd-1", "8", "2026-01-01T00:00:26.000000Z", 2)),
        expect("PUT", &format!("{lease}?")).body(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "floyd-leader", "namespace": "apps", "resourceVersion": "8"},
            "spec": {"leaseDurationSeconds": 1,
                     "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:27.000000Z",
                     "leaseTransitions": 2}})),
    ];
    let server = tokio::spawn(serve(handle, script));
    let mut rx = me.subscribe();
    assert!(me.try_acquire_or_renew(t0).await.unwrap());
    assert!(*rx.borrow_and_update());
    assert!(me.try_acquire_or_renew(t0.add_secs(5)).await.unwrap());
    assert!(!me.try_acquire_or_renew(t0.add_secs(10)).await.unwrap());
    assert!(!me.is_leader());
    assert!(rx.has_changed().unwrap());
    assert!(!me.try_acquire_or_renew(t0.add_secs(20)).await.unwrap());
    assert!(me.try_acquire_or_renew(t0.add_secs(26)).await.unwrap());
    assert!(me.is_leader());
    me.release(t0.add_secs(27)).await.unwrap();
    assert!(!me.is_leader());
    server.await.unwrap();
}
