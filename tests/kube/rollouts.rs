//! Whole rollouts through `kube::Client` against the fake API server: the
//! runtime's actions create real (fake-cluster) pods, which the simulated
//! kubelet makes ready, crash or leave unschedulable. The scenario functions
//! only use the runtime, so `cluster.rs` runs them against a real cluster.

use super::fake_api::{Behavior, FakeApi, FakeNode};
use super::support::*;
use super::validate::validate_objects;
use floyd::manifest::{InstanceTemplate, Revision, ServiceName, ServiceSpec};
use floyd::runtime::kube::KubeRuntime;
use floyd::runtime::{Action, InstancePhase, Observed, Runtime};
use floyd::time::Time;
use pretty_assertions::assert_eq;
use serde_json::json;
use std::time::Duration;

/// What a scenario runs: three templates and how long to wait for a state.
pub struct Ctx {
    pub v1: InstanceTemplate,
    pub v2: InstanceTemplate,
    /// Never becomes ready (crash loop).
    pub bad: InstanceTemplate,
    pub wait: Duration,
}

impl Ctx {
    fn fake() -> Ctx {
        Ctx {
            v1: template("ghcr.io/acme/web:1"),
            v2: template("ghcr.io/acme/web:2"),
            bad: template("ghcr.io/acme/web:bad"),
            wait: Duration::from_secs(20),
        }
    }
}

/// Observes until `pred` holds; panics with the last observation after `ctx.wait`.
pub async fn wait_for(
    rt: &KubeRuntime,
    service: &ServiceName,
    spec: &ServiceSpec,
    ctx: &Ctx,
    what: &str,
    pred: impl Fn(&Observed) -> bool,
) -> Observed {
    let deadline = tokio::time::Instant::now() + ctx.wait;
    loop {
        let o = rt
            .observe(service, Some(spec), Time::now_wall())
            .await
            .expect("observe");
        if pred(&o) {
            return o;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}; last observed:\n{o:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counts(o: &Observed, r: &Revision) -> (u32, u32, u32) {
    o.revision(r)
        .map(|x| (x.desired, x.live(), x.ready()))
        .unwrap_or((0, 0, 0))
}

async fn apply(rt: &KubeRuntime, s: &ServiceName, spec: &ServiceSpec, actions: Vec<Action>) {
    rt.apply(s, spec, &actions).await.expect("apply");
}

/// Rolling update 3 → 3 with maxSurge 1: v1 up, then v2 replaces it step by step.
pub async fn rolling(rt: &KubeRuntime, ctx: &Ctx) {
    let web = name("web");
    let (r1, r2) = (rev(&ctx.v1), rev(&ctx.v2));
    let s1 = spec(3, ctx.v1.clone());
    rt.set_commit(&web, &r1, "1111111111111111111111111111111111111111");
    apply(
        rt,
        &web,
        &s1,
        vec![
            Action::CreateRevision {
                revision: r1.clone(),
                template: ctx.v1.clone(),
            },
            Action::SetTraffic {
                active: None,
                preview: None,
            },
            Action::Scale {
                revision: r1.clone(),
                replicas: 3,
            },
        ],
    )
    .await;
    wait_for(rt, &web, &s1, ctx, "v1 3/3 ready", |o| {
        counts(o, &r1) == (3, 3, 3)
    })
    .await;
    assert_eq!(
        rt.revision_commit(&web, &r1).await.unwrap().as_deref(),
        Some("1111111111111111111111111111111111111111")
    );

    let s2 = spec(3, ctx.v2.clone());
    apply(
        rt,
        &web,
        &s2,
        vec![
            Action::CreateRevision {
                revision: r2.clone(),
                template: ctx.v2.clone(),
            },
            Action::Scale {
                revision: r2.clone(),
                replicas: 1,
            },
        ],
    )
    .await;
    wait_for(rt, &web, &s2, ctx, "v2 1 ready", |o| counts(o, &r2).2 == 1).await;
    for (old, new) in [(2, 2), (1, 3), (0, 3)] {
        apply(
            rt,
            &web,
            &s2,
            vec![
                Action::Scale {
                    revision: r1.clone(),
                    replicas: old,
                },
                Action::Scale {
                    revision: r2.clone(),
                    replicas: new,
                },
            ],
        )
        .await;
        wait_for(
            rt,
            &web,
            &s2,
            ctx,
            &format!("v1 {old} / v2 {new} ready"),
            |o| counts(o, &r1) == (old, old, old) && counts(o, &r2) == (new, new, new),
        )
        .await;
    }
    let o = wait_for(rt, &web, &s2, ctx, "v1 pods gone", |o| {
        o.revision(&r1).is_some_and(|r| r.instances.is_empty())
    })
    .await;
    // Oldest first, the old revision kept at 0 for rollback, with its template.
    let revs: Vec<&Revision> = o.revisions.iter().map(|r| &r.revision).collect();
    assert_eq!(revs, vec![&r1, &r2]);
    assert_eq!(o.revision(&r1).unwrap().template, ctx.v1);
    assert_eq!(o.active, None, "rolling updates select by service only");
    assert_eq!(rt.services().await.unwrap(), vec![web.clone()]);

    // History limit: the old revision goes.
    apply(
        rt,
        &web,
        &s2,
        vec![Action::DeleteRevision {
            revision: r1.clone(),
        }],
    )
    .await;
    let o = wait_for(rt, &web, &s2, ctx, "v1 forgotten", |o| {
        o.revision(&r1).is_none()
    })
    .await;
    assert_eq!(counts(&o, &r2), (3, 3, 3));
}

/// Blue-green: v2 comes up behind the preview Service, then the active
/// Service switches to it and the preview goes.
pub async fn blue_green_switch(rt: &KubeRuntime, ctx: &Ctx) {
    let web = name("web");
    let (r1, r2) = (rev(&ctx.v1), rev(&ctx.v2));
    let s1 = blue_green(spec(2, ctx.v1.clone()));
    apply(
        rt,
        &web,
        &s1,
        vec![
            Action::CreateRevision {
                revision: r1.clone(),
                template: ctx.v1.clone(),
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
    wait_for(rt, &web, &s1, ctx, "v1 active 2/2", |o| {
        counts(o, &r1) == (2, 2, 2) && o.active.as_ref() == Some(&r1)
    })
    .await;
    let s2 = blue_green(spec(2, ctx.v2.clone()));
    apply(
        rt,
        &web,
        &s2,
        vec![
            Action::CreateRevision {
                revision: r2.clone(),
                template: ctx.v2.clone(),
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
    let o = wait_for(rt, &web, &s2, ctx, "v2 previewed 2/2", |o| {
        counts(o, &r2) == (2, 2, 2) && o.preview.as_ref() == Some(&r2)
    })
    .await;
    assert_eq!(
        o.active.as_ref(),
        Some(&r1),
        "active traffic stays on v1 during preview"
    );
    apply(
        rt,
        &web,
        &s2,
        vec![Action::SetTraffic {
            active: Some(r2.clone()),
            preview: None,
        }],
    )
    .await;
    let o = wait_for(rt, &web, &s2, ctx, "switched", |o| {
        o.active.as_ref() == Some(&r2)
    })
    .await;
    assert_eq!(o.preview, None);
    apply(
        rt,
        &web,
        &s2,
        vec![Action::Scale {
            revision: r1.clone(),
            replicas: 0,
        }],
    )
    .await;
    wait_for(rt, &web, &s2, ctx, "v1 scaled down", |o| {
        o.revision(&r1).is_some_and(|r| r.instances.is_empty())
    })
    .await;
}

/// A new revision crash-loops; the reason reaches the observation; rollback
/// scales the stable revision back and the bad one to 0; a restarted
/// controller finds the state it saved in the cluster.
pub async fn failing_then_rollback(rt: &KubeRuntime, ctx: &Ctx) -> KubeRuntime {
    let web = name("web");
    let (r1, rb) = (rev(&ctx.v1), rev(&ctx.bad));
    let s1 = spec(2, ctx.v1.clone());
    apply(
        rt,
        &web,
        &s1,
        vec![
            Action::CreateRevision {
                revision: r1.clone(),
                template: ctx.v1.clone(),
            },
            Action::Scale {
                revision: r1.clone(),
                replicas: 2,
            },
        ],
    )
    .await;
    wait_for(rt, &web, &s1, ctx, "v1 2/2", |o| {
        counts(o, &r1) == (2, 2, 2)
    })
    .await;
    let sb = spec(2, ctx.bad.clone());
    apply(
        rt,
        &web,
        &sb,
        vec![
            Action::CreateRevision {
                revision: rb.clone(),
                template: ctx.bad.clone(),
            },
            Action::Scale {
                revision: rb.clone(),
                replicas: 1,
            },
            Action::Scale {
                revision: r1.clone(),
                replicas: 1,
            },
        ],
    )
    .await;
    let o = wait_for(rt, &web, &sb, ctx, "bad pod crash-looping", |o| {
        o.revision(&rb).is_some_and(|r| {
            r.instances.iter().any(|i| {
                i.restarts >= 1
                    && i.reason
                        .as_deref()
                        .is_some_and(|m| m.contains("CrashLoopBackOff"))
            })
        })
    })
    .await;
    assert_eq!(o.revision(&rb).unwrap().ready(), 0);
    // Rollback (what the engine's rollback plan asks for).
    apply(
        rt,
        &web,
        &sb,
        vec![
            Action::Scale {
                revision: r1.clone(),
                replicas: 2,
            },
            Action::Scale {
                revision: rb.clone(),
                replicas: 0,
            },
        ],
    )
    .await;
    wait_for(rt, &web, &s1, ctx, "rolled back", |o| {
        counts(o, &r1) == (2, 2, 2) && o.revision(&rb).is_some_and(|r| r.instances.is_empty())
    })
    .await;
    rt.record_event(&web, "RolloutFailed", &format!("{rb}: CrashLoopBackOff"))
        .await
        .expect("event");
    rt.record_event(&web, "RolledBack", &format!("rolled back to {r1}"))
        .await
        .expect("event");
    let state = json!({"rollout": {"target": rb, "stable": r1, "phase": "RolledBack"},
                       "lastGood": r1, "reverts": [{"commit": "abc", "revertCommit": "def"}]})
    .to_string();
    rt.save_state(&web, &state).await.expect("save state");
    // A restarted controller (a new runtime on the same cluster) resumes from
    // it, through the Runtime trait as the controller holds it.
    let restarted = KubeRuntime::new(rt.client().clone(), rt.namespace());
    let as_runtime: &dyn Runtime = &restarted;
    assert_eq!(
        as_runtime.load_state(&web).await.unwrap().as_deref(),
        Some(state.as_str())
    );
    assert_eq!(restarted.load_state(&name("other")).await.unwrap(), None);
    let o = restarted
        .observe(&web, Some(&s1), Time::now_wall())
        .await
        .unwrap();
    assert_eq!(
        o.revision(&rb).map(|r| (r.desired, &r.template)),
        Some((0, &ctx.bad))
    );
    restarted
}

fn fake_rt(fake: &FakeApi) -> KubeRuntime {
    KubeRuntime::new(fake.client("apps"), "apps").with_identity("floyd-test-0")
}

/// Every body Floyd sent (not the test's own `kubectl` client), validated;
/// plus the Service shapes on the fake cluster.
pub fn validate_sent(fake: &FakeApi, label: &str) {
    let sent: Vec<_> = fake
        .sent()
        .into_iter()
        .filter(|s| s.client != "kubectl")
        .collect();
    for s in &sent {
        // The API server rejects a body whose name differs from the URL's.
        let segs: Vec<&str> = s.path.rsplit('/').collect();
        let url_name = if segs[0] == "scale" { segs[1] } else { segs[0] };
        if s.method != "POST" {
            assert_eq!(
                s.body["metadata"]["name"].as_str(),
                Some(url_name),
                "{} {}",
                s.method,
                s.path
            );
        }
        if s.method == "PATCH" {
            assert!(
                s.query.contains("fieldManager=floyd"),
                "{} {}?{}",
                s.method,
                s.path,
                s.query
            );
        }
    }
    let objects: Vec<serde_json::Value> = sent.into_iter().map(|s| s.body).collect();
    assert!(!objects.is_empty());
    for o in &objects {
        assert!(
            o["apiVersion"].is_string() && o["kind"].is_string(),
            "typed object: {o}"
        );
    }
    validate_objects(label, &objects);
}

#[tokio::test]
async fn rolling_update_on_the_fake_cluster() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let rt = fake_rt(&fake);
    rolling(&rt, &Ctx::fake()).await;
    let svc = fake.get("services", "apps", "web").expect("active Service");
    assert_eq!(
        svc["spec"]["selector"],
        json!({"floyd.dev/instance": "floyd", "floyd.dev/service": "web"})
    );
    // Every write was a server-side apply as `floyd`, forced, or a create.
    for r in fake.requests().iter().filter(|r| r.starts_with("PATCH")) {
        assert!(
            r.contains("fieldManager=floyd") && r.contains("force=true"),
            "{r}"
        );
    }
    validate_sent(&fake, "rolling");
    rt.delete_service(&name("web")).await.unwrap();
    assert!(fake.list("replicasets").is_empty());
    assert!(fake.get("services", "apps", "web").is_none());
    assert!(rt.services().await.unwrap().is_empty());
}

#[tokio::test]
async fn blue_green_switch_on_the_fake_cluster() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let rt = fake_rt(&fake).with_action_events(true);
    let ctx = Ctx::fake();
    blue_green_switch(&rt, &ctx).await;
    // Each action was announced, in order, as the Deployment controller does.
    let notes: Vec<String> = fake
        .list("events")
        .iter()
        .filter(|e| e["reason"] == "TrafficSwitched" || e["reason"] == "ScalingReplicaSet")
        .map(|e| e["note"].as_str().unwrap_or("").to_string())
        .collect();
    let (r1, r2) = (rev(&ctx.v1), rev(&ctx.v2));
    for want in [
        format!("Service web routes to revision {r1}; preview: revision {r2}"),
        format!("Service web routes to revision {r2}; preview: none"),
        format!("Scaled replica set web-{r1} to 0"),
    ] {
        assert!(notes.contains(&want), "{want:?} not in {notes:#?}");
    }
    assert!(fake.list("events").iter().all(|e| e["type"] == "Normal"));
    let svc = fake.get("services", "apps", "web").expect("active Service");
    assert_eq!(
        svc["spec"]["selector"]["floyd.dev/revision"],
        json!(rev(&ctx.v2).0)
    );
    assert!(fake.get("services", "apps", "web-preview").is_none());
    validate_sent(&fake, "blue-green");
}

#[tokio::test]
async fn failing_rollout_rolls_back_and_state_survives_a_restart() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    fake.set_behavior("ghcr.io/acme/web:bad", Behavior::CrashLoop);
    let rt = fake_rt(&fake);
    failing_then_rollback(&rt, &Ctx::fake()).await;
    let events = fake.list("events");
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(reasons, vec!["RolloutFailed", "RolledBack"]);
    assert!(events.iter().all(|e| e["type"] == "Warning"));
    validate_sent(&fake, "rollback");
}

#[tokio::test]
async fn gpu_constrained_rollout_replaces_in_place() {
    let fake = FakeApi::start(vec![
        FakeNode::gpu("a100-1", "NVIDIA-A100-SXM4-80GB", 2),
        FakeNode::gpu("h100-1", "NVIDIA-H100-80GB-HBM3", 4),
    ])
    .await;
    let rt = fake_rt(&fake);
    let ctx = Ctx::fake();
    let web = name("llm");
    let (t1, t2) = (
        gpu_template("ghcr.io/acme/llm:1", "NVIDIA-A100-SXM4-80GB"),
        gpu_template("ghcr.io/acme/llm:2", "NVIDIA-A100-SXM4-80GB"),
    );
    let (r1, r2) = (rev(&t1), rev(&t2));
    let s1 = spec(2, t1.clone());
    apply(
        &rt,
        &web,
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
        ],
    )
    .await;
    let o = wait_for(&rt, &web, &s1, &ctx, "v1 2/2 on GPUs", |o| {
        counts(o, &r1) == (2, 2, 2)
    })
    .await;
    let gpu = o.gpu.clone().expect("GPU capacity observed");
    assert_eq!(
        (gpu.kind.as_str(), gpu.exist, gpu.free, gpu.held_by_service),
        ("NVIDIA-A100-SXM4-80GB", 2, 0, 2)
    );
    assert!(
        o.revision(&r1)
            .unwrap()
            .instances
            .iter()
            .all(|i| i.gpus.len() == 1 && i.gpus[0].starts_with("a100-1/"))
    );

    // A surge pod cannot be placed: no A100 is free (the H100s do not count).
    let s2 = spec(2, t2.clone());
    apply(
        &rt,
        &web,
        &s2,
        vec![
            Action::CreateRevision {
                revision: r2.clone(),
                template: t2.clone(),
            },
            Action::Scale {
                revision: r2.clone(),
                replicas: 1,
            },
        ],
    )
    .await;
    let o = wait_for(&rt, &web, &s2, &ctx, "surge pod unschedulable", |o| {
        o.revision(&r2).is_some_and(|r| {
            r.instances.iter().any(|i| {
                i.phase == InstancePhase::Pending
                    && i.reason.as_deref().is_some_and(|m| {
                        m.contains("Unschedulable") && m.contains("Insufficient nvidia.com/gpu")
                    })
            })
        })
    })
    .await;
    assert_eq!(o.gpu.as_ref().map(|g| g.free), Some(0));

    // In-place replacement: remove one old instance; its GPU goes to the new one.
    for step in 0..2u32 {
        let o = rt.observe(&web, Some(&s2), Time::now_wall()).await.unwrap();
        let victim = o
            .revision(&r1)
            .unwrap()
            .instances
            .iter()
            .find(|i| i.phase != InstancePhase::Terminating)
            .expect("an old instance")
            .id
            .clone();
        let mut actions = vec![Action::DeleteInstance {
            revision: r1.clone(),
            instance: victim.clone(),
        }];
        if step == 1 {
            actions.push(Action::Scale {
                revision: r2.clone(),
                replicas: 2,
            });
        }
        apply(&rt, &web, &s2, actions).await;
        let want_new = step + 1;
        let o = wait_for(
            &rt,
            &web,
            &s2,
            &ctx,
            &format!("step {step}: {want_new} new ready"),
            |o| {
                counts(o, &r2).2 == want_new
                    && o.revision(&r1)
                        .is_some_and(|r| r.instances.iter().all(|i| i.id != victim))
            },
        )
        .await;
        assert_eq!(o.revision(&r1).unwrap().desired, 1 - step);
    }
    let o = wait_for(&rt, &web, &s2, &ctx, "done", |o| {
        counts(o, &r1) == (0, 0, 0)
    })
    .await;
    let gpu = o.gpu.expect("capacity");
    assert_eq!((gpu.exist, gpu.free, gpu.held_by_service), (2, 0, 2));
    validate_sent(&fake, "gpu");
}

#[tokio::test]
async fn image_pull_failures_are_reported_per_instance() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    fake.set_behavior("ghcr.io/acme/web:typo", Behavior::ImagePullBackOff);
    fake.set_behavior("ghcr.io/acme/web:hang", Behavior::NeverReady);
    let rt = fake_rt(&fake);
    let ctx = Ctx::fake();
    let web = name("web");
    for (image, want) in [
        ("ghcr.io/acme/web:typo", "ImagePullBackOff"),
        ("ghcr.io/acme/web:hang", "not ready"),
    ] {
        let t = template(image);
        let r = rev(&t);
        let s = spec(1, t.clone());
        apply(
            &rt,
            &web,
            &s,
            vec![
                Action::CreateRevision {
                    revision: r.clone(),
                    template: t,
                },
                Action::Scale {
                    revision: r.clone(),
                    replicas: 1,
                },
            ],
        )
        .await;
        wait_for(&rt, &web, &s, &ctx, want, |o| {
            o.revision(&r).is_some_and(|x| {
                x.instances
                    .iter()
                    .any(|i| i.reason.as_deref().is_some_and(|m| m.contains(want)))
            })
        })
        .await;
    }
}

#[tokio::test]
async fn pod_watch_cache_feeds_observe() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    // A short resync so the test also goes through a re-list.
    let watched = fake_rt(&fake).with_pod_watch(Duration::from_millis(300));
    let listed = fake_rt(&fake);
    let ctx = Ctx::fake();
    let web = name("web");
    let r1 = rev(&ctx.v1);
    let s1 = spec(2, ctx.v1.clone());
    let deadline = tokio::time::Instant::now() + ctx.wait;
    while !watched.pod_cache_synced() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod watch never synced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    apply(
        &watched,
        &web,
        &s1,
        vec![
            Action::CreateRevision {
                revision: r1.clone(),
                template: ctx.v1.clone(),
            },
            Action::Scale {
                revision: r1.clone(),
                replicas: 2,
            },
        ],
    )
    .await;
    let a = wait_for(&watched, &web, &s1, &ctx, "watched 2/2", |o| {
        counts(o, &r1) == (2, 2, 2)
    })
    .await;
    let b = wait_for(&listed, &web, &s1, &ctx, "listed 2/2", |o| {
        counts(o, &r1) == (2, 2, 2)
    })
    .await;
    let ids = |o: &Observed| {
        o.revision(&r1)
            .unwrap()
            .instances
            .iter()
            .map(|i| i.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    let watches = fake
        .requests()
        .iter()
        .filter(|r| r.contains("watch=true"))
        .count();
    assert!(watches >= 1, "the cache watched pods");
}

#[tokio::test]
async fn leader_election_on_the_fake_cluster() {
    use floyd::runtime::kube::{LeaderElector, LeaseConfig};
    let fake = FakeApi::start(vec![]).await;
    let a = LeaderElector::new(
        fake.client("apps"),
        "apps",
        LeaseConfig::new("floyd", "floyd-a"),
    );
    let b = LeaderElector::new(
        fake.client("apps"),
        "apps",
        LeaseConfig::new("floyd", "floyd-b"),
    );
    let t0 = Time(1_767_225_600_000);
    assert!(a.try_acquire_or_renew(t0).await.unwrap());
    assert!(!b.try_acquire_or_renew(t0).await.unwrap());
    assert!(a.try_acquire_or_renew(t0.add_secs(5)).await.unwrap());
    // b saw the record change at +6 s; a stops renewing (crashed).
    assert!(!b.try_acquire_or_renew(t0.add_secs(6)).await.unwrap());
    assert!(!b.try_acquire_or_renew(t0.add_secs(20)).await.unwrap());
    assert!(
        b.try_acquire_or_renew(t0.add_secs(21)).await.unwrap(),
        "takes over after 15 s unrenewed"
    );
    assert!(
        !a.try_acquire_or_renew(t0.add_secs(22)).await.unwrap(),
        "the old leader follows"
    );
    assert!(!a.is_leader());
    // Graceful handover: b releases, a takes over at once.
    b.release(t0.add_secs(23)).await.unwrap();
    assert!(a.try_acquire_or_renew(t0.add_secs(23)).await.unwrap());
    let lease = fake.get("leases", "apps", "floyd").expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "floyd-a");
    assert_eq!(lease["spec"]["leaseTransitions"], 2);
    validate_sent(&fake, "lease");
}

#[tokio::test]
async fn leader_elector_run_releases_on_shutdown() {
    use floyd::runtime::kube::{LeaderElector, LeaseConfig};
    let fake = FakeApi::start(vec![]).await;
    let mut cfg = LeaseConfig::new("floyd", "floyd-a");
    cfg.retry_period = Duration::from_millis(50);
    let a = std::sync::Arc::new(LeaderElector::new(fake.client("apps"), "apps", cfg));
    let mut rx = a.subscribe();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (a, stop) = (a.clone(), stop.clone());
        async move { a.run(stop).await }
    });
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| *l))
        .await
        .expect("leads")
        .unwrap();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run ends")
        .unwrap();
    let lease = fake.get("leases", "apps", "floyd").expect("lease");
    assert!(
        lease["spec"].get("holderIdentity").is_none(),
        "released: {lease}"
    );
}

#[tokio::test]
async fn bad_service_names_fail_before_any_request() {
    let fake = FakeApi::start(vec![]).await;
    let rt = fake_rt(&fake);
    let s = spec(1, template("x"));
    let err = rt
        .apply(
            &name("9lives"),
            &s,
            &[Action::Scale {
                revision: Revision::from("r"),
                replicas: 1,
            }],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("must start with a letter"), "{err}");
    assert!(fake.requests().is_empty());
}

/// A service with a `kubernetes` pod fragment (a Secret env, a ConfigMap
/// volume, a sidecar, tolerations): the fake API server receives the merged
/// pod template in the ReplicaSet, the pods come up from it, and every body
/// Floyd sent passes `kubernetes-validate --strict`.
#[tokio::test]
async fn pod_fragment_reaches_the_replica_set_merged() {
    let text = r#"apiVersion: floyd.dev/v1
kind: Service
metadata: { name: web }
spec:
  replicas: 2
  ports: [{ name: http, port: 8080 }]
  health: { readiness: { http: { path: /healthz, port: http } } }
  template:
    image: ghcr.io/acme/web:1
    env: { LOG_LEVEL: info }
    resources: { cpu: 100m, memory: 64Mi }
    kubernetes:
      metadata:
        labels: { team: payments }
        annotations: { example.com/owner: payments }
      spec:
        serviceAccountName: web
        tolerations:
          - { key: dedicated, operator: Equal, value: web, effect: NoSchedule }
        volumes:
          - name: config
            configMap: { name: web-config }
        containers:
          - name: app
            volumeMounts: [{ name: config, mountPath: /etc/web, readOnly: true }]
            env:
              - name: DB_PASSWORD
                valueFrom: { secretKeyRef: { name: db, key: password } }
          - name: log-shipper
            image: fluent/fluent-bit:3
            resources: { requests: { cpu: 10m, memory: 16Mi } }
"#;
    let svc = floyd::manifest::parse_service(text, std::path::Path::new("web.yaml")).unwrap();
    let (web, spec, r) = (svc.name.clone(), svc.spec.clone(), svc.revision.clone());
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let rt = fake_rt(&fake);
    let actions = vec![
        Action::CreateRevision {
            revision: r.clone(),
            template: spec.template.clone(),
        },
        Action::SetTraffic {
            active: None,
            preview: None,
        },
        Action::Scale {
            revision: r.clone(),
            replicas: 2,
        },
    ];
    apply(&rt, &web, &spec, actions).await;
    let ctx = Ctx::fake();
    wait_for(&rt, &web, &spec, &ctx, "2/2 ready", |o| {
        counts(o, &r) == (2, 2, 2)
    })
    .await;

    let rs = fake
        .get("replicasets", "apps", &format!("web-{r}"))
        .expect("the revision's ReplicaSet");
    let pod = &rs["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "payments");
    assert_eq!(pod["metadata"]["labels"]["floyd.dev/revision"], r.as_str());
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/owner"],
        "payments"
    );
    let p = &pod["spec"];
    assert_eq!(p["serviceAccountName"], "web");
    assert_eq!(
        p["tolerations"],
        json!([{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}])
    );
    assert_eq!(
        p["volumes"],
        json!([{"name": "config", "configMap": {"name": "web-config"}}])
    );
    let names: Vec<&str> = p["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "log-shipper"]);
    let app = &p["containers"][0];
    assert_eq!(app["image"], "ghcr.io/acme/web:1");
    assert_eq!(
        app["env"],
        json!([
            {"name": "PORT", "value": "8080"},
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        ])
    );
    assert_eq!(app["volumeMounts"][0]["mountPath"], "/etc/web");
    assert_eq!(app["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(p["containers"][1]["image"], "fluent/fluent-bit:3");
    // The pods the ReplicaSet controller made carry the same spec.
    let pods = fake.list("pods");
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert_eq!(pod["spec"]["containers"][1]["name"], "log-shipper");
        assert_eq!(pod["spec"]["serviceAccountName"], "web");
    }
    // What was applied is what a resync wants: no drift reported.
    let o = rt
        .observe(&web, Some(&spec), Time::now_wall())
        .await
        .unwrap();
    assert!(o.drift.is_empty(), "{:?}", o.drift);
    validate_sent(&fake, "pod fragment");
}
