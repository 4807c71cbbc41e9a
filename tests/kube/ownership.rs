//! A shared cluster: two installs in one namespace, objects Floyd does not
//! own, deletions racing the ReplicaSet controller, and a leader whose
//! Lease calls hang. Every assertion is on the fake API server's request
//! log (who sent which write) or on the objects it holds.

use super::fake_api::{FakeApi, FakeNode, Logged};
use super::rollouts::validate_sent;
use super::support::*;
use floyd::manifest::{InstanceTemplate, ServiceName, ServiceSpec};
use floyd::runtime::kube::{KubeRuntime, LeaseConfig};
use floyd::runtime::{Action, Observed, Runtime};
use floyd::time::Time;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "apps";

/// A runtime of install `instance` whose requests the fake logs as `instance`'s.
fn install(fake: &FakeApi, instance: &str) -> KubeRuntime {
    KubeRuntime::new(fake.client_as(NS, instance), NS)
        .with_instance(instance)
        .with_identity(format!("floyd-{instance}-0"))
}

async fn wait_for(
    rt: &KubeRuntime,
    service: &ServiceName,
    spec: &ServiceSpec,
    what: &str,
    pred: impl Fn(&Observed) -> bool,
) -> Observed {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = rt
            .observe(service, Some(spec), Time::now_wall())
            .await
            .expect("observe");
        if pred(&o) {
            return o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last observed:\n{o:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the revision of `t`, scales it to `n`, waits until all are ready,
/// saves state and records an event: every kind of object Floyd writes.
async fn deploy(rt: &KubeRuntime, svc: &ServiceName, t: &InstanceTemplate, n: u32) -> ServiceSpec {
    let s = spec(n, t.clone());
    let r = rev(t);
    rt.apply(
        svc,
        &s,
        &[
            Action::CreateRevision {
                revision: r.clone(),
                template: t.clone(),
            },
            Action::Scale {
                revision: r.clone(),
                replicas: n,
            },
        ],
    )
    .await
    .expect("deploy");
    wait_for(rt, svc, &s, "all ready", |o| {
        o.revision(&r).is_some_and(|x| x.ready() == n)
    })
    .await;
    rt.save_state(svc, r#"{"rollout":null}"#)
        .await
        .expect("save state");
    rt.record_event(svc, "RolloutComplete", "done")
        .await
        .expect("event");
    s
}

/// The controller's prune: every service the runtime reports that is not in
/// `desired` is deleted.
async fn prune(rt: &KubeRuntime, desired: &[&ServiceName]) -> Vec<ServiceName> {
    let mut pruned = Vec::new();
    for s in rt.services().await.expect("services") {
        if !desired.contains(&&s) {
            rt.delete_service(&s).await.expect("prune");
            pruned.push(s);
        }
    }
    pruned
}

/// The object name a request addresses (`.../<resource>/<name>[/<sub>]`).
fn target(l: &Logged) -> Option<String> {
    let segs: Vec<&str> = l.path.trim_matches('/').split('/').collect();
    let i = segs.iter().position(|s| *s == "namespaces")?;
    segs.get(i + 3).map(|s| s.to_string())
}

/// Whether `name` is one of the objects of Floyd service `service`.
fn belongs_to(name: &str, service: &str) -> bool {
    name == service
        || name.starts_with(&format!("{service}-"))
        || name.starts_with(&format!("{service}."))
        || name == format!("floyd-state-{service}")
}

/// Objects (kind/name) of the fake cluster carrying `instance`'s label.
fn objects_of(fake: &FakeApi, instance: &str) -> BTreeSet<String> {
    ["replicasets", "pods", "services", "configmaps", "events"]
        .iter()
        .flat_map(|r| {
            fake.list(r)
                .into_iter()
                .filter(|o| o["metadata"]["labels"]["floyd.dev/instance"] == instance)
                .filter(|o| o["metadata"].get("deletionTimestamp").is_none())
                .map(move |o| format!("{r}/{}", o["metadata"]["name"].as_str().unwrap_or("")))
        })
        .collect()
}

#[tokio::test]
async fn two_installs_in_one_namespace_with_prune_never_touch_each_others_objects() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let (a, b) = (install(&fake, "a"), install(&fake, "b"));
    let (web, api) = (name("web"), name("api"));
    deploy(&a, &web, &template("ghcr.io/acme/web:1"), 2).await;
    deploy(&b, &api, &template("ghcr.io/acme/api:1"), 2).await;
    let b_objects = objects_of(&fake, "b");
    assert!(
        b_objects.len() >= 6,
        "B has a ReplicaSet, pods, a Service, state, an event: {b_objects:?}"
    );

    // Each install sees only its own services, so its prune leaves the
    // other's alone...
    assert_eq!(a.services().await.unwrap(), vec![web.clone()]);
    assert_eq!(b.services().await.unwrap(), vec![api.clone()]);
    assert!(prune(&a, &[&web]).await.is_empty());
    assert!(prune(&b, &[&api]).await.is_empty());
    // ...even when its Git repository removes everything.
    assert_eq!(prune(&a, &[]).await, vec![web.clone()]);
    let gone = wait_for(&a, &web, &spec(0, template("x")), "web pruned", |o| {
        o.revisions.is_empty()
    })
    .await;
    assert!(gone.active.is_none());
    assert!(fake.get("services", NS, "web").is_none());
    assert!(fake.get("configmaps", NS, "floyd-state-web").is_none());

    assert_eq!(
        objects_of(&fake, "b"),
        b_objects,
        "B's objects are untouched"
    );
    let log = fake.log();
    let foreign: Vec<&Logged> = log
        .iter()
        .filter(|l| l.is_write())
        .filter(|l| {
            let t = target(l).unwrap_or_default();
            (l.client == "a" && belongs_to(&t, "api")) || (l.client == "b" && belongs_to(&t, "web"))
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "writes to the other install's objects: {foreign:#?}"
    );
    // Every list of A named its install.
    for l in log.iter().filter(|l| l.client == "a" && l.method == "GET") {
        if l.query.contains("labelSelector") {
            assert!(
                l.query.contains("floyd.dev%2Finstance%3Da"),
                "unscoped list: {} {}?{}",
                l.method,
                l.path,
                l.query
            );
        }
    }
    validate_sent(&fake, "two installs");
}

fn foreign_service(name: &str, managed_by: Option<&str>, instance: Option<&str>) -> Value {
    let mut labels = serde_json::Map::new();
    if let Some(m) = managed_by {
        labels.insert("app.kubernetes.io/managed-by".into(), json!(m));
    }
    if let Some(i) = instance {
        labels.insert("floyd.dev/instance".into(), json!(i));
        labels.insert("floyd.dev/service".into(), json!(name));
    }
    json!({"metadata": {"name": name, "labels": labels, "annotations": {"floyd.dev/role": "active"}},
           "spec": {"selector": {"app": "theirs"}, "ports": [{"name": "http", "port": 80}]}})
}

#[tokio::test]
async fn a_foreign_service_named_like_a_floyd_service_is_refused_and_untouched() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let a = install(&fake, "a");
    // (service name, who owns the existing Service, words the error must have)
    let cases = [
        ("web", Some("Helm"), None, "managed by \"Helm\""),
        ("db", None, None, "not managed by Floyd"),
        ("cache", Some("floyd"), Some("b"), "Floyd install \"b\""),
    ];
    for (svc, managed_by, instance, owner) in cases {
        fake.insert("services", NS, foreign_service(svc, managed_by, instance));
        let before = fake.get("services", NS, svc).unwrap();
        let t = template("ghcr.io/acme/web:1");
        let s = spec(1, t.clone());
        let writes_before = fake.log().iter().filter(|l| l.is_write()).count();
        let err = a
            .apply(
                &name(svc),
                &s,
                &[Action::CreateRevision {
                    revision: rev(&t),
                    template: t.clone(),
                }],
            )
            .await
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains(&format!("Service {NS}/{svc}")) && err.contains(owner),
            "{svc}: {err}"
        );
        // Nothing written at all: not the Service, not even the ReplicaSet.
        let writes: Vec<Logged> = fake.log().into_iter().filter(|l| l.is_write()).collect();
        assert_eq!(
            writes.len(),
            writes_before,
            "{svc}: {:#?}",
            &writes[writes_before..]
        );
        assert_eq!(
            fake.get("services", NS, svc).unwrap(),
            before,
            "{svc} untouched"
        );
        // Prune and deletion leave it alone too.
        a.delete_service(&name(svc))
            .await
            .expect_err("not ours to delete");
        assert_eq!(fake.get("services", NS, svc).unwrap(), before);
    }
    // A blue-green preview Service name held by another service.
    fake.insert(
        "services",
        NS,
        foreign_service("shop-preview", Some("floyd"), Some("a")),
    );
    let t = template("ghcr.io/acme/shop:1");
    let s = blue_green(spec(1, t.clone()));
    let err = a
        .apply(
            &name("shop"),
            &s,
            &[Action::SetTraffic {
                active: None,
                preview: Some(rev(&t)),
            }],
        )
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("shop-preview") && err.contains("Floyd service"),
        "{err}"
    );
}

/// Pods of `rs` that are not terminating.
fn live_pods(fake: &FakeApi, rs: &str) -> BTreeSet<String> {
    fake.list("pods")
        .into_iter()
        .filter(|p| p["metadata"]["ownerReferences"][0]["name"] == rs)
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Pods of `rs` ever deleted (by anyone), from the watch log of the fake.
fn deleted_pods(fake: &FakeApi, before: &BTreeSet<String>) -> BTreeSet<String> {
    before
        .iter()
        .filter(|p| {
            fake.get("pods", NS, p)
                .is_none_or(|v| v["metadata"].get("deletionTimestamp").is_some())
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn deleting_a_chosen_pod_removes_exactly_that_pod() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let a = install(&fake, "a");
    let web = name("web");
    let t = template("ghcr.io/acme/web:1");
    let s = deploy(&a, &web, &t, 4).await;
    let r = rev(&t);
    let rs = format!("web-{r}");
    let delete = |pod: String| Action::DeleteInstance {
        revision: r.clone(),
        instance: pod,
    };
    // The oldest pod: the one the ReplicaSet controller would remove last.
    let oldest = |fake: &FakeApi| {
        let mut pods: Vec<Value> = fake
            .list("pods")
            .into_iter()
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .collect();
        pods.sort_by_key(|p| {
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .to_string()
        });
        pods[0]["metadata"]["name"].as_str().unwrap().to_string()
    };

    // 1. A ReplicaSet controller that does not run during the call.
    let before = live_pods(&fake, &rs);
    let chosen = oldest(&fake);
    fake.pause_replicaset_controller(true);
    a.apply(&web, &s, &[delete(chosen.clone())])
        .await
        .expect("delete");
    fake.pause_replicaset_controller(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        deleted_pods(&fake, &before),
        BTreeSet::from([chosen.clone()])
    );
    assert_eq!(
        fake.get("replicasets", NS, &rs).unwrap()["spec"]["replicas"],
        3
    );

    // 2. A controller running meanwhile (it may create a replacement and
    //    remove it again; never another existing pod).
    let before = live_pods(&fake, &rs);
    let chosen = oldest(&fake);
    a.apply(&web, &s, &[delete(chosen.clone())])
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        deleted_pods(&fake, &before),
        BTreeSet::from([chosen.clone()])
    );
    assert_eq!(live_pods(&fake, &rs).len(), 2);

    // 3. The pod is already gone (deleted by someone else): not an error,
    //    and only the count is lowered.
    let before = live_pods(&fake, &rs);
    let chosen = oldest(&fake);
    fake.pause_replicaset_controller(true);
    kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(fake.client_as(NS, "kubectl"), NS)
        .delete(&chosen, &Default::default())
        .await
        .expect("someone else deletes it");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(fake.get("pods", NS, &chosen).is_none(), "gone");
    a.apply(&web, &s, &[delete(chosen.clone())])
        .await
        .expect("a gone pod is not an error");
    fake.pause_replicaset_controller(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        deleted_pods(&fake, &before),
        BTreeSet::from([chosen.clone()])
    );
    assert_eq!(live_pods(&fake, &rs).len(), 1);
    assert_eq!(
        fake.get("replicasets", NS, &rs).unwrap()["spec"]["replicas"],
        1
    );
    validate_sent(&fake, "chosen pod");
}

#[tokio::test]
async fn a_leader_whose_lease_calls_hang_stops_writing_before_the_standby_takes_over() {
    let fake = FakeApi::start(vec![]).await;
    let cfg = |who: &str| {
        let mut c = LeaseConfig::new("floyd-leader", who);
        // A wide margin (lease - renew deadline) for a loaded machine.
        c.lease_duration = Duration::from_secs(4);
        c.renew_deadline = Duration::from_millis(1500);
        c.retry_period = Duration::from_millis(200);
        c
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    let mut electors = Vec::new();
    for who in ["a", "b"] {
        let rt = install(&fake, who).with_instance("shared");
        let el = Arc::new(rt.leader_elector_with(cfg(who)));
        let rt = rt.with_leadership(el.leadership());
        tokio::spawn({
            let (el, stop) = (el.clone(), stop.clone());
            async move { el.run(stop).await }
        });
        if who == "a" {
            let mut rx = el.subscribe();
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| *l))
                .await
                .expect("a leads")
                .unwrap();
        }
        // The controller's writes: as fast as it can while it believes it leads.
        writers.push(tokio::spawn({
            let stop = stop.clone();
            async move {
                let web = name("web");
                while !stop.is_cancelled() {
                    let _ = rt.save_state(&web, r#"{"rollout":null}"#).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
        electors.push(el);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(electors[0].is_leader() && !electors[1].is_leader());
    // The API server stops answering a's Lease calls (not its other calls).
    fake.hang(Some("a"), "/leases/");
    let mut rx = electors[1].subscribe();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|l| *l))
        .await
        .expect("b takes over")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.cancel();
    for w in writers {
        w.await.unwrap();
    }
    assert!(!electors[0].is_leader(), "a stepped down");

    let writes: Vec<Logged> = fake
        .log()
        .into_iter()
        .filter(|l| l.is_write() && l.path.contains("/configmaps/"))
        .collect();
    let last_a = writes
        .iter()
        .rposition(|l| l.client == "a")
        .expect("a wrote");
    let first_b = writes
        .iter()
        .position(|l| l.client == "b")
        .expect("b wrote");
    assert!(
        last_a < first_b,
        "interleaved writes: a's last at {last_a}, b's first at {first_b}"
    );
}

/// `kubectl set image rs/<rs> app=<image>` and `kubectl delete svc <svc>`,
/// as another client.
async fn hand_edit(fake: &FakeApi, rs: &str, image: &str, delete_service: Option<&str>) {
    hand_edit_in(fake, NS, rs, image, delete_service).await
}

async fn hand_edit_in(
    fake: &FakeApi,
    ns: &str,
    rs: &str,
    image: &str,
    delete_service: Option<&str>,
) {
    use kube::api::{Patch, PatchParams};
    let client = fake.client_as(ns, "kubectl");
    let rss: kube::Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        kube::Api::namespaced(client.clone(), ns);
    // A strategic merge patch changes only the image; the fake speaks JSON
    // merge patch, which replaces lists: send the whole list, image changed.
    let mut containers =
        fake.get("replicasets", ns, rs).unwrap()["spec"]["template"]["spec"]["containers"].clone();
    containers[0]["image"] = json!(image);
    rss.patch(
        rs,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": containers}}}})),
    )
    .await
    .expect("kubectl set image");
    if let Some(svc) = delete_service {
        let svcs: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(client, ns);
        svcs.delete(svc, &Default::default())
            .await
            .expect("kubectl delete svc");
    }
}

fn image_of(fake: &FakeApi, rs: &str) -> String {
    fake.get("replicasets", NS, rs).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn hand_edits_and_deleted_services_are_detected_corrected_or_only_reported() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let a = install(&fake, "a");
    let web = name("web");
    let t = template("ghcr.io/acme/web:1");
    let mut s = deploy(&a, &web, &t, 2).await;
    let rs = format!("web-{}", rev(&t));
    let o = a.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    assert!(
        o.drift.is_empty(),
        "no drift after a deploy: {:#?}",
        o.drift
    );

    // driftPolicy: correct (the default): reported once, put back at once.
    hand_edit(&fake, &rs, "ghcr.io/acme/evil:1", Some("web")).await;
    let o = a.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    let kinds: Vec<(&str, bool, bool)> = o
        .drift
        .iter()
        .map(|d| (d.kind.as_str(), d.corrected, d.new))
        .collect();
    assert_eq!(
        kinds,
        vec![("ReplicaSet", true, true), ("Service", true, true)]
    );
    assert!(
        o.drift[0].message.contains("containers[0]") && o.drift[0].message.contains("evil"),
        "{}",
        o.drift[0].message
    );
    assert_eq!(o.drift[1].message, "deleted");
    assert_eq!(image_of(&fake, &rs), "ghcr.io/acme/web:1");
    assert!(
        fake.get("services", NS, "web").is_some(),
        "Service recreated"
    );
    let o = a.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    assert!(o.drift.is_empty(), "corrected: {:#?}", o.drift);
    let reasons: Vec<String> = fake
        .list("events")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| *r == "DriftCorrected").count(),
        2,
        "{reasons:?}"
    );

    // driftPolicy: report: reported (every observation; new only once), left alone.
    s.drift_policy = floyd::manifest::DriftPolicy::Report;
    hand_edit(&fake, &rs, "ghcr.io/acme/evil:2", None).await;
    let writes_before = fake.log().iter().filter(|l| l.is_write()).count();
    for round in 0..2 {
        let o = a.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
        assert_eq!(o.drift.len(), 1, "{:#?}", o.drift);
        assert!(!o.drift[0].corrected);
        assert_eq!(o.drift[0].new, round == 0);
    }
    assert_eq!(image_of(&fake, &rs), "ghcr.io/acme/evil:2");
    let writes: Vec<Logged> = fake.log().into_iter().filter(|l| l.is_write()).collect();
    let after = &writes[writes_before..];
    assert!(
        after.len() == 1 && after[0].path.ends_with("/events"),
        "only the DriftDetected event is written: {after:#?}"
    );
    validate_sent(&fake, "drift");
}

/// Deletes a Service the way `kubectl delete svc` does.
async fn delete_svc(fake: &FakeApi, name: &str) {
    let svcs: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(fake.client_as(NS, "kubectl"), NS);
    svcs.delete(name, &Default::default())
        .await
        .expect("kubectl delete svc");
}

fn selects(fake: &FakeApi, name: &str) -> Option<String> {
    fake.get("services", NS, name).and_then(|s| {
        s["spec"]["selector"]["floyd.dev/revision"]
            .as_str()
            .map(str::to_string)
    })
}

/// A blue-green service's deleted active or preview Service comes back
/// selecting the revision it selected, also after a restart of Floyd, and is
/// only reported with `driftPolicy: report`.
#[tokio::test]
async fn a_deleted_blue_green_service_is_recreated_selecting_what_it_selected() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let a = install(&fake, "a");
    let web = name("web");
    let t1 = template("ghcr.io/acme/web:1");
    let t2 = template("ghcr.io/acme/web:2");
    let (r1, r2) = (rev(&t1), rev(&t2));
    let mut s = blue_green(spec(2, t1.clone()));
    let create = |t: &InstanceTemplate| Action::CreateRevision {
        revision: rev(t),
        template: t.clone(),
    };
    let scale = |t: &InstanceTemplate| Action::Scale {
        revision: rev(t),
        replicas: 2,
    };
    a.apply(
        &web,
        &s,
        &[
            create(&t1),
            scale(&t1),
            Action::SetTraffic {
                active: Some(r1.clone()),
                preview: None,
            },
        ],
    )
    .await
    .expect("deploy r1");
    let o = a.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    assert!(o.drift.is_empty(), "{:#?}", o.drift);

    // Settled: the active Service deleted by hand comes back on r1.
    delete_svc(&fake, "web").await;
    let o = a.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    let found: Vec<(&str, &str, &str, bool)> = o
        .drift
        .iter()
        .map(|d| {
            (
                d.kind.as_str(),
                d.object.as_str(),
                d.message.as_str(),
                d.corrected,
            )
        })
        .collect();
    assert_eq!(found, vec![("Service", "web", "deleted", true)]);
    assert_eq!(selects(&fake, "web").as_deref(), Some(r1.as_str()));

    // Mid-rollout: r2 on preview; the preview Service deleted comes back on r2.
    s.template = t2.clone();
    a.apply(
        &web,
        &s,
        &[
            create(&t2),
            scale(&t2),
            Action::SetTraffic {
                active: Some(r1.clone()),
                preview: Some(r2.clone()),
            },
        ],
    )
    .await
    .expect("preview r2");
    delete_svc(&fake, "web-preview").await;
    let o = a.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    assert!(
        o.drift
            .iter()
            .any(|d| d.object == "web-preview" && d.corrected),
        "{:#?}",
        o.drift
    );
    assert_eq!(selects(&fake, "web-preview").as_deref(), Some(r2.as_str()));
    assert_eq!(selects(&fake, "web").as_deref(), Some(r1.as_str()));

    // A restarted Floyd (nothing in memory) learns the routing from the live
    // Services, then puts back the active one on r1, not on the newer r2.
    let b = install(&fake, "a");
    let o = b.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    assert!(o.drift.is_empty(), "{:#?}", o.drift);
    delete_svc(&fake, "web").await;
    let o = b.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    assert!(
        o.drift.iter().any(|d| d.object == "web" && d.corrected),
        "{:#?}",
        o.drift
    );
    assert_eq!(selects(&fake, "web").as_deref(), Some(r1.as_str()));

    // driftPolicy: report: reported, left deleted.
    s.drift_policy = floyd::manifest::DriftPolicy::Report;
    delete_svc(&fake, "web-preview").await;
    let o = b.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    assert!(
        o.drift
            .iter()
            .any(|d| d.object == "web-preview" && d.message == "deleted" && !d.corrected),
        "{:#?}",
        o.drift
    );
    assert!(fake.get("services", NS, "web-preview").is_none());
    validate_sent(&fake, "blue-green drift");
}

#[tokio::test]
async fn revisions_from_before_install_identities_keep_their_immutable_selector() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let a = install(&fake, "a");
    let web = name("web");
    let t = template("ghcr.io/acme/web:1");
    let r = rev(&t);
    let s = spec(1, t.clone());
    // What an older Floyd made, then adopted with
    // `kubectl label rs ... floyd.dev/instance=a`: the selector has no install.
    let mut old = floyd::runtime::kube::objects::replica_set(
        floyd::runtime::kube::objects::Install {
            namespace: NS,
            instance: "a",
        },
        &web,
        &r,
        &s,
        &t,
        &floyd::runtime::kube::objects::RevisionMeta {
            created_at: Time(0),
            commit: None,
            gpu: None,
        },
        1,
    )
    .unwrap();
    let spec_mut = old.spec.as_mut().unwrap();
    let legacy = json!({"floyd.dev/service": "web", "floyd.dev/revision": r.as_str()});
    spec_mut.selector.match_labels = Some(serde_json::from_value(legacy.clone()).unwrap());
    spec_mut
        .template
        .as_mut()
        .unwrap()
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .remove("floyd.dev/instance");
    fake.insert("replicasets", NS, serde_json::to_value(&old).unwrap());
    let rs = format!("web-{r}");

    a.apply(
        &web,
        &s,
        &[Action::CreateRevision {
            revision: r.clone(),
            template: t.clone(),
        }],
    )
    .await
    .expect("re-applying an old revision keeps its selector");
    let live = fake.get("replicasets", NS, &rs).unwrap();
    assert_eq!(live["spec"]["selector"]["matchLabels"], legacy);
    // The template gains the install label (drift from what Floyd applies
    // now is corrected without touching the selector).
    let o = a.observe(&web, Some(&s), Time::now_wall()).await.unwrap();
    assert!(o.drift.iter().all(|d| d.corrected), "{:#?}", o.drift);
    let live = fake.get("replicasets", NS, &rs).unwrap();
    assert_eq!(live["spec"]["selector"]["matchLabels"], legacy);
    assert_eq!(
        live["spec"]["template"]["metadata"]["labels"]["floyd.dev/instance"],
        "a"
    );
}

/// Removes the install label from every stored object of `resource` that has `name_prefix`.
fn strip_instance(fake: &FakeApi, resource: &str, name_prefix: &str) -> usize {
    let mut n = 0;
    for mut obj in fake.list(resource) {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if !name.starts_with(name_prefix) {
            continue;
        }
        if let Some(labels) = obj["metadata"]["labels"].as_object_mut() {
            labels.remove("floyd.dev/instance");
        }
        fake.insert(resource, NS, obj);
        n += 1;
    }
    n
}

fn instance_label(fake: &FakeApi, resource: &str, name: &str) -> Option<String> {
    fake.get(resource, NS, name).and_then(|o| {
        o["metadata"]["labels"]["floyd.dev/instance"]
            .as_str()
            .map(str::to_string)
    })
}

/// Objects from a Floyd without install identities are refused as not
/// ours, unless the install is started with `--adopt-unlabelled`: then it
/// labels them (metadata only) before its first observation, and leaves
/// other installs' objects alone.
#[tokio::test]
async fn unlabelled_objects_are_adopted_only_when_asked_for() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let a = install(&fake, "a");
    let web = name("web");
    let t = template("ghcr.io/acme/web:1");
    let s = deploy(&a, &web, &t, 2).await;
    let rs = format!("web-{}", rev(&t));
    // Another install's object, which must stay untouched.
    let b = install(&fake, "b");
    let api = name("api");
    deploy(&b, &api, &template("ghcr.io/acme/api:1"), 1).await;
    drop((a, b));
    // What a Floyd from before identities left behind.
    fake.pause_replicaset_controller(true);
    assert_eq!(strip_instance(&fake, "replicasets", "web-"), 1);
    assert_eq!(strip_instance(&fake, "pods", "web-"), 2);
    assert_eq!(strip_instance(&fake, "services", "web"), 1);
    assert_eq!(strip_instance(&fake, "configmaps", "floyd-state-web"), 1);
    let pods: Vec<String> = fake
        .list("pods")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("web-"))
        .collect();

    // Without the flag: not seen as ours, nothing labelled.
    let plain = install(&fake, "a");
    let o = plain
        .observe(&web, Some(&s), Time::now_wall())
        .await
        .unwrap();
    assert!(o.revisions.is_empty(), "{o:#?}");
    assert_eq!(instance_label(&fake, "replicasets", &rs), None);
    drop(plain);

    let before = fake.log().len();
    let adopting = install(&fake, "a").with_adopt_unlabelled(true);
    let o = adopting
        .observe(&web, Some(&s), Time::now_wall())
        .await
        .unwrap();
    assert_eq!(
        o.revision(&rev(&t)).map(|r| r.ready()),
        Some(2),
        "the adopted revision and its pods are observed: {o:#?}"
    );
    for (resource, object) in [
        ("replicasets", rs.as_str()),
        ("services", "web"),
        ("configmaps", "floyd-state-web"),
    ]
    .into_iter()
    .chain(pods.iter().map(|p| ("pods", p.as_str())))
    {
        assert_eq!(
            instance_label(&fake, resource, object).as_deref(),
            Some("a"),
            "{resource}/{object} adopted"
        );
    }
    let writes: Vec<Logged> = fake.log()[before..]
        .iter()
        .filter(|l| l.is_write())
        .cloned()
        .collect();
    assert_eq!(
        writes.len(),
        3 + pods.len(),
        "one patch per object: {writes:#?}"
    );
    assert!(
        writes.iter().all(|w| w.method == "PATCH"
            && target(w).is_some_and(|n| n.starts_with("web") || n == "floyd-state-web")),
        "only the unlabelled objects are patched: {writes:#?}"
    );
    assert_eq!(
        instance_label(&fake, "services", "api").as_deref(),
        Some("b")
    );
    // Once: the next observation writes nothing.
    let n = fake.log().len();
    adopting
        .observe(&web, Some(&s), Time::now_wall())
        .await
        .unwrap();
    assert!(fake.log()[n..].iter().all(|l| !l.is_write()));
    fake.pause_replicaset_controller(false);
    validate_sent(&fake, "adopt");
}

/// The fake answers like a real API server where Floyd's correctness
/// depends on it; these pin that down so the other tests mean something.
#[tokio::test]
async fn the_fake_api_server_is_as_strict_as_a_real_one() {
    use k8s_openapi::api::core::v1::{Pod, Service};
    use kube::api::{ListParams, Patch, PatchParams};
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let client = fake.client_as(NS, "probe");
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), NS);
    let code = |e: kube::Error| match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    };
    // An apply that creates validates like a create: a Pod without spec is 422
    // (what the old deletion-cost apply to a gone pod ran into).
    let mark = json!({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "gone", "annotations": {"x": "1"}}});
    let e = pods
        .patch(
            "gone",
            &PatchParams::apply("floyd").force(),
            &Patch::Apply(&mark),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), 422);
    // Only the real field selectors.
    let e = pods
        .list(&ListParams::default().fields("spec.containers.image=x"))
        .await
        .unwrap_err();
    assert_eq!(code(e), 400);
    pods.list(&ListParams::default().fields("status.phase!=Failed,spec.nodeName=node-1"))
        .await
        .expect("real field selectors");
    // Set-based label selectors.
    let a = install(&fake, "a");
    deploy(&a, &name("web"), &template("ghcr.io/acme/web:1"), 1).await;
    let got = pods
        .list(
            &ListParams::default()
                .labels("floyd.dev/instance in (a,b),floyd.dev/service notin (api)"),
        )
        .await
        .unwrap();
    assert_eq!(got.items.len(), 1);
    // Second-precision timestamps; generation counts spec changes (the
    // ReplicaSet was applied at 0, then scaled).
    let rs = fake
        .list("replicasets")
        .into_iter()
        .find(|r| r["metadata"]["labels"]["floyd.dev/service"] == "web")
        .unwrap();
    let created = rs["metadata"]["creationTimestamp"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && !created.contains('.'),
        "{created}"
    );
    assert_eq!(rs["metadata"]["generation"], 2);
    assert_eq!(rs["status"]["observedGeneration"], 2);
    // A non-forced apply that conflicts with another manager's field is 409.
    let svcs: kube::Api<Service> = kube::Api::namespaced(client, NS);
    let other = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                       "spec": {"ports": [{"name": "http", "port": 9999}]}});
    let e = svcs
        .patch(
            "web",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), 409);
    assert_eq!(
        fake.get("services", NS, "web").unwrap()["spec"]["ports"][0]["port"],
        8080
    );
    // Injected 500s beyond the client's own retries reach Floyd as
    // "unavailable" (the controller retries), then it answers again.
    fake.inject("/replicasets", 500, 12);
    let e = a
        .observe(&name("web"), None, Time::now_wall())
        .await
        .unwrap_err();
    assert!(matches!(e, floyd::runtime::Error::Unavailable(_)), "{e}");
    let mut ok = false;
    for _ in 0..20 {
        if a.observe(&name("web"), None, Time::now_wall())
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "answers again once the faults are spent");
    fake.inject("/replicasets", 429, 1);
    // A single 429 (with Retry-After) is retried by the client itself.
    a.observe(&name("web"), None, Time::now_wall())
        .await
        .expect("a 429 is retried");
}

/// Every request the runtime makes for a whole service life (deploy,
/// observe with the pod watch, blue-green traffic, drift correction, a
/// chosen pod's deletion, history cleanup, the Lease, prune) is allowed by
/// the Role and ClusterRole the chart renders, and the check bites: the
/// cluster-wide GPU view needs `rbac.clusterWideGpuAccounting`.
#[tokio::test]
async fn everything_the_runtime_does_is_allowed_by_the_charts_rbac() {
    use super::chart::{one, render};
    use super::fake_api::Rbac;
    let Some(objs) = render("default-values.yaml", &[]) else {
        return;
    };
    let role = one(&objs, "Role");
    let ns = role["metadata"]["namespace"].as_str().unwrap().to_string();
    let fake = FakeApi::start(vec![FakeNode::gpu("gpu-1", "NVIDIA-A100-SXM4-80GB", 2)]).await;
    fake.authorize(Rbac {
        client: "floyd".into(),
        namespace: ns.clone(),
        role: role["rules"].as_array().unwrap().clone(),
        cluster_role: one(&objs, "ClusterRole")["rules"]
            .as_array()
            .unwrap()
            .clone(),
    });
    let rt = KubeRuntime::new(fake.client_as(&ns, "floyd"), &ns)
        .with_instance("floyd")
        .with_action_events(true)
        .with_pod_watch(Duration::from_secs(300));
    let el = rt.leader_elector("floyd");
    assert!(el.try_acquire_or_renew(Time::now_wall()).await.unwrap());
    let web = name("web");
    let t1 = template("ghcr.io/acme/web:1");
    let t2 = template("ghcr.io/acme/web:2");
    let (r1, r2) = (rev(&t1), rev(&t2));
    let s1 = blue_green(spec(2, t1.clone()));
    let s2 = blue_green(spec(2, t2.clone()));
    let step = |s: &ServiceSpec, actions: Vec<Action>| {
        let (rt, web, s) = (rt.clone(), web.clone(), s.clone());
        async move { rt.apply(&web, &s, &actions).await.expect("apply") }
    };
    step(
        &s1,
        vec![
            Action::CreateRevision {
                revision: r1.clone(),
                template: t1.clone(),
            },
            Action::Scale {
                revision: r1.clone(),
                replicas: 2,
            },
            Action::SetTraffic {
                active: Some(r1.clone()),
                preview: None,
            },
        ],
    )
    .await;
    step(
        &s2,
        vec![
            Action::CreateRevision {
                revision: r2.clone(),
                template: t2.clone(),
            },
            Action::Scale {
                revision: r2.clone(),
                replicas: 2,
            },
            Action::SetTraffic {
                active: Some(r1.clone()),
                preview: Some(r2.clone()),
            },
        ],
    )
    .await;
    wait_for(&rt, &web, &s2, "v2 ready", |o| {
        o.revision(&r2).is_some_and(|r| r.ready() == 2)
    })
    .await;
    step(
        &s2,
        vec![Action::SetTraffic {
            active: Some(r2.clone()),
            preview: None,
        }],
    )
    .await;
    hand_edit_in(
        &fake,
        &ns,
        &format!("web-{r2}"),
        "ghcr.io/acme/evil:1",
        None,
    )
    .await;
    let o = rt.observe(&web, Some(&s2), Time::now_wall()).await.unwrap();
    assert!(
        o.drift.iter().all(|d| d.corrected) && !o.drift.is_empty(),
        "{:#?}",
        o.drift
    );
    let pod = o.revision(&r1).unwrap().instances[0].id.clone();
    step(
        &s2,
        vec![
            Action::DeleteInstance {
                revision: r1.clone(),
                instance: pod,
            },
            Action::Scale {
                revision: r1.clone(),
                replicas: 0,
            },
        ],
    )
    .await;
    wait_for(&rt, &web, &s2, "v1 gone", |o| {
        o.revision(&r1).is_some_and(|r| r.instances.is_empty())
    })
    .await;
    step(
        &s2,
        vec![Action::DeleteRevision {
            revision: r1.clone(),
        }],
    )
    .await;
    rt.save_state(&web, "{}").await.unwrap();
    assert!(rt.load_state(&web).await.unwrap().is_some());
    // GPU accounting in the namespace: nodes (ClusterRole) and pods (Role).
    let gpu = spec(
        1,
        gpu_template("ghcr.io/acme/llm:1", "NVIDIA-A100-SXM4-80GB"),
    );
    rt.observe(&name("llm"), Some(&gpu), Time::now_wall())
        .await
        .unwrap();
    el.release(Time::now_wall()).await.unwrap();
    assert_eq!(rt.services().await.unwrap(), vec![web.clone()]);
    // Autoscaling: the HPA applied frozen, then settled, then removed.
    let mut auto = s2.clone();
    auto.autoscaling = Some(floyd::manifest::Autoscaling {
        min_replicas: 2,
        max_replicas: 4,
        target_cpu_utilization_percentage: Some(70),
        metric: None,
    });
    for settled in [false, true] {
        rt.autoscale(&web, &auto, &r2, settled)
            .await
            .expect("autoscale");
    }
    rt.autoscale(&web, &s2, &r2, true)
        .await
        .expect("autoscale off");
    rt.delete_service(&web).await.unwrap();
    assert!(fake.denied().is_empty(), "refused: {:#?}", fake.denied());
    assert!(
        fake.log()
            .iter()
            .any(|l| l.client == "floyd" && l.query.contains("watch=true")),
        "the pod watch ran under the Role"
    );

    // The cluster-wide GPU view is refused without clusterWideGpuAccounting.
    let wide = KubeRuntime::new(fake.client_as(&ns, "floyd"), &ns).with_cluster_gpu_view(true);
    let e = wide
        .observe(&name("llm"), Some(&gpu), Time::now_wall())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    assert!(
        fake.denied().iter().any(|d| d.starts_with("list /pods")),
        "{:?}",
        fake.denied()
    );
}

/// etcd compaction while the pod watch is open: the resumed watch gets
/// `410 Gone`, the watcher lists again, and observations from the cache
/// keep matching the cluster.
#[tokio::test]
async fn the_pod_cache_recovers_from_a_compacted_watch() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    // A long resync: recovery must come from the 410, not the timer.
    let watched = install(&fake, "a").with_pod_watch(Duration::from_secs(300));
    let web = name("web");
    let t = template("ghcr.io/acme/web:1");
    let r = rev(&t);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !watched.pod_cache_synced() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod watch never synced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = deploy(&watched, &web, &t, 2).await;
    let lists_before = fake
        .log()
        .iter()
        .filter(|l| l.path.ends_with("/pods") && !l.query.contains("watch=true"))
        .count();
    fake.compact();
    watched
        .apply(
            &web,
            &s,
            &[Action::Scale {
                revision: r.clone(),
                replicas: 3,
            }],
        )
        .await
        .unwrap();
    let o = wait_for(&watched, &web, &s, "3 ready, seen through the cache", |o| {
        o.revision(&r).is_some_and(|x| x.ready() == 3)
    })
    .await;
    let live = live_pods(&fake, &format!("web-{r}"));
    let seen: BTreeSet<String> = o
        .revision(&r)
        .unwrap()
        .instances
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(seen, live);
    let log = fake.log();
    let lists_after = log
        .iter()
        .filter(|l| l.path.ends_with("/pods") && !l.query.contains("watch=true"))
        .count();
    assert!(
        lists_after > lists_before,
        "the watcher listed again after 410"
    );
    assert!(
        log.iter().any(|l| l.query.contains("watch=true") && l.query.contains("allowWatchBookmarks=true")),
        "bookmarks asked for"
    );
}

/// GPUs held by another namespace's pods count against capacity only with
/// the cluster-wide view (the chart's `rbac.clusterWideGpuAccounting`,
/// `FLOYD_CLUSTER_GPU_ACCOUNTING`); without it Floyd sees its namespace.
#[tokio::test]
async fn gpus_held_in_other_namespaces_count_with_the_cluster_wide_view() {
    let fake = FakeApi::start(vec![FakeNode::gpu("gpu-1", "NVIDIA-A100-SXM4-80GB", 4)]).await;
    fake.insert(
        "pods",
        "ml-team",
        json!({"metadata": {"name": "trainer", "labels": {"app": "trainer"}},
               "spec": {"nodeName": "gpu-1", "containers": [{"name": "t", "image": "x",
                        "resources": {"limits": {"nvidia.com/gpu": "3"}}}]},
               "status": {"phase": "Running"}}),
    );
    let s = spec(
        1,
        gpu_template("ghcr.io/acme/llm:1", "NVIDIA-A100-SXM4-80GB"),
    );
    let llm = name("llm");
    let local = install(&fake, "a");
    let wide = install(&fake, "a").with_cluster_gpu_view(true);
    let g = local
        .observe(&llm, Some(&s), Time::now_wall())
        .await
        .unwrap()
        .gpu
        .unwrap();
    assert_eq!((g.exist, g.free), (4, 4), "namespace view: {g:?}");
    let g = wide
        .observe(&llm, Some(&s), Time::now_wall())
        .await
        .unwrap()
        .gpu
        .unwrap();
    assert_eq!((g.exist, g.free), (4, 1), "cluster view: {g:?}");
    let all_pods = fake
        .log()
        .into_iter()
        .filter(|l| l.path == "/api/v1/pods")
        .count();
    assert_eq!(all_pods, 1, "one cluster-wide pod list, by the wide view");
}

/// GPU nodes tainted as the GPU operator does: GPU pods tolerate the taint
/// and land there, other pods stay off.
#[tokio::test]
async fn gpu_pods_tolerate_the_gpu_taint_and_others_stay_off_gpu_nodes() {
    let fake = FakeApi::start(vec![
        FakeNode::gpu("gpu-1", "NVIDIA-A100-SXM4-80GB", 2).tainted(),
        FakeNode::cpu("cpu-1"),
    ])
    .await;
    let a = install(&fake, "a");
    deploy(
        &a,
        &name("llm"),
        &gpu_template("ghcr.io/acme/llm:1", "NVIDIA-A100-SXM4-80GB"),
        2,
    )
    .await;
    deploy(&a, &name("web"), &template("ghcr.io/acme/web:1"), 3).await;
    for p in fake.list("pods") {
        let service = p["metadata"]["labels"]["floyd.dev/service"]
            .as_str()
            .unwrap();
        let node = p["spec"]["nodeName"].as_str().unwrap();
        let want = if service == "llm" { "gpu-1" } else { "cpu-1" };
        assert_eq!(node, want, "{service}");
    }
    let node = fake.get("nodes", "", "gpu-1").unwrap();
    assert_eq!(node["spec"]["taints"][0]["key"], "nvidia.com/gpu");
    validate_sent(&fake, "tainted GPU nodes");
}

/// Steady-state cost of observing every service once per resync, in API
/// requests, with and without the watch caches of `floyd run`
/// (`with_pod_watch` + `with_object_watch`). Prints the numbers recorded in
/// docs/benchmarks.md.
#[tokio::test]
async fn steady_state_observation_from_watch_caches_costs_no_requests() {
    const SERVICES: usize = 40;
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let cached = install(&fake, "a")
        .with_pod_watch(Duration::from_secs(300))
        .with_object_watch(Duration::from_secs(300));
    let listed = KubeRuntime::new(fake.client_as(NS, "listed"), NS).with_instance("a");
    let t = template("ghcr.io/acme/web:1");
    let s = spec(1, t.clone());
    let names: Vec<ServiceName> = (0..SERVICES).map(|i| name(&format!("svc{i}"))).collect();
    for n in &names {
        listed
            .apply(
                n,
                &s,
                &[
                    Action::CreateRevision {
                        revision: rev(&t),
                        template: t.clone(),
                    },
                    Action::Scale {
                        revision: rev(&t),
                        replicas: 1,
                    },
                ],
            )
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(cached.pod_cache_synced() && cached.object_cache_synced()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "caches never synced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both see the same thing once the cluster settled.
    for n in &names {
        wait_for(&cached, n, &s, "ready through the caches", |o| {
            o.revision(&rev(&t)).is_some_and(|r| r.ready() == 1)
        })
        .await;
    }
    let count = |who: &str| fake.log().iter().filter(|l| l.client == who).count();
    for (who, rt) in [("a", &cached), ("listed", &listed)] {
        let before = count(who);
        let round = std::time::Instant::now();
        assert_eq!(rt.services().await.unwrap().len(), SERVICES);
        for n in &names {
            let o = rt.observe(n, Some(&s), Time::now_wall()).await.unwrap();
            assert_eq!(o.revision(&rev(&t)).map(|r| r.ready()), Some(1), "{who}");
            assert!(o.active.is_none() && o.drift.is_empty(), "{who}: {o:?}");
        }
        let requests = count(who) - before;
        eprintln!(
            "BENCH observe round, {SERVICES} services, {who}: {requests} requests, {:?}",
            round.elapsed()
        );
        if who == "a" {
            assert_eq!(requests, 0, "from the caches");
        } else {
            // A ReplicaSet list per service and for the list of services,
            // a pod list and two Service reads per service.
            assert_eq!(requests, 1 + 4 * SERVICES);
        }
    }
}

/// CPU time of the calling thread (user + system).
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    d(u.user_time()) + d(u.system_time())
}

/// Observation at scale (issue #15): `services` × `pods` from the watch
/// caches of `floyd run`, against the fake API server running on threads
/// of its own, so that the CPU measured is the controller side's alone
/// (this test's single-threaded runtime: the runtime's reads, the watch
/// streams and their decoding). Steady state: a round (list the services,
/// observe each) every `FLOYD_KUBE_SCALE_ROUND` for `FLOYD_KUBE_SCALE_WINDOW`,
/// as the controller does every `--resync-interval`. Size from
/// `FLOYD_KUBE_SCALE` (`<services>x<pods>`, default `100x2` in the suite;
/// docs/benchmarks.md has `1000x10`).
#[test]
fn observation_at_scale_from_watch_caches() {
    let size = std::env::var("FLOYD_KUBE_SCALE").unwrap_or_else(|_| "100x2".into());
    let (services, pods) = size
        .split_once('x')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<u32>().ok()?)))
        .expect("FLOYD_KUBE_SCALE=<services>x<pods>");
    let secs = |var: &str, default: f64| {
        Duration::from_secs_f64(
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    };
    let window = secs("FLOYD_KUBE_SCALE_WINDOW", 3.0);
    let every = secs("FLOYD_KUBE_SCALE_ROUND", 1.0);

    // The fake API server (and its simulated kubelet) on its own runtime.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fake = rt.block_on(FakeApi::start(vec![FakeNode::cpu("node-1")]));
        let fake = Arc::new(fake);
        tx.send(fake.clone()).unwrap();
        rt.block_on(std::future::pending::<()>());
    });
    let fake: Arc<FakeApi> = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let setup = KubeRuntime::new(fake.client_as(NS, "setup"), NS).with_instance("a");
        let t = template("ghcr.io/acme/web:1");
        let s = spec(pods, t.clone());
        let names: Vec<ServiceName> = (0..services).map(|i| name(&format!("svc{i}"))).collect();
        let started = std::time::Instant::now();
        for n in &names {
            setup
                .apply(
                    n,
                    &s,
                    &[
                        Action::CreateRevision {
                            revision: rev(&t),
                            template: t.clone(),
                        },
                        Action::Scale {
                            revision: rev(&t),
                            replicas: pods,
                        },
                    ],
                )
                .await
                .unwrap();
        }
        let want = services * pods as usize;
        let ready = || {
            fake.list("pods")
                .iter()
                .filter(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while ready() < want {
            assert!(std::time::Instant::now() < deadline, "{} of {want} pods ready", ready());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "BENCH scale {services}x{pods}: {want} pods ready after {:?}",
            started.elapsed()
        );

        let cached = install(&fake, "a")
            .with_pod_watch(Duration::from_secs(300))
            .with_object_watch(Duration::from_secs(300));
        let synced_at = std::time::Instant::now();
        while !(cached.pod_cache_synced() && cached.object_cache_synced()) {
            assert!(synced_at.elapsed() < Duration::from_secs(120), "caches never synced");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("BENCH scale {services}x{pods}: caches synced in {:?}", synced_at.elapsed());
        let count = |who: &str| fake.log().iter().filter(|l| l.client == who).count();
        let round = |rt: &KubeRuntime| {
            let rt = rt.clone();
            let names = names.clone();
            let s = s.clone();
            let t = t.clone();
            async move {
                let started = std::time::Instant::now();
                assert_eq!(rt.services().await.unwrap().len(), services);
                for n in &names {
                    let o = rt.observe(n, Some(&s), Time::now_wall()).await.unwrap();
                    assert_eq!(o.revision(&rev(&t)).map(|r| r.ready()), Some(pods));
                }
                started.elapsed()
            }
        };
        // A first round warms the caches' readers.
        round(&cached).await;

        let (requests0, cpu0, wall0) = (count("a"), thread_cpu(), std::time::Instant::now());
        let mut rounds = Vec::new();
        while wall0.elapsed() < window {
            let next = std::time::Instant::now() + every;
            rounds.push(round(&cached).await);
            tokio::time::sleep_until(next.into()).await;
        }
        let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed());
        let window_log: Vec<Logged> = fake
            .log()
            .into_iter()
            .filter(|l| l.client == "a")
            .skip(requests0)
            .collect();
        let requests = window_log.len();
        // Watches the client re-opens (their server-side timeout) are the
        // only requests; observing reads the caches.
        let reads: Vec<&Logged> = window_log
            .iter()
            .filter(|l| !l.query.contains("watch=true"))
            .collect();
        rounds.sort();
        let per_minute = requests as f64 * 60.0 / wall.as_secs_f64();
        let cpu_share = cpu.as_secs_f64() / wall.as_secs_f64();
        eprintln!(
            "BENCH scale {services}x{pods}: steady state over {wall:.1?}, a round every {every:?}: \
             {requests} API requests ({per_minute:.1}/min; {} of them other than a re-opened watch), \
             controller-side CPU {cpu:?} ({:.1} % of a core), round p50 {:?} max {:?} ({} rounds)",
            reads.len(),
            cpu_share * 100.0,
            rounds[rounds.len() / 2],
            rounds[rounds.len() - 1],
            rounds.len()
        );
        assert!(reads.is_empty(), "steady-state observation from the caches: {reads:#?}");

        // For comparison: observing without the caches (list calls), for
        // up to 40 services (the fake's list answers grow with the cluster).
        let listed = KubeRuntime::new(fake.client_as(NS, "listed"), NS).with_instance("a");
        let sample = &names[..names.len().min(40)];
        let (before, cpu0, started) = (count("listed"), thread_cpu(), std::time::Instant::now());
        for n in sample {
            let o = listed.observe(n, Some(&s), Time::now_wall()).await.unwrap();
            assert_eq!(o.revision(&rev(&t)).map(|r| r.ready()), Some(pods));
        }
        let requests = count("listed") - before;
        eprintln!(
            "BENCH scale {services}x{pods}: without caches, {} services observed with {requests} requests \
             ({:.0} per minute at one round per 10 s for all {services}), {:?}, CPU {:?}",
            sample.len(),
            requests as f64 / sample.len() as f64 * services as f64 * 6.0,
            started.elapsed(),
            thread_cpu() - cpu0
        );
        assert_eq!(requests, 4 * sample.len());
    });
}
