//! `spec.autoscaling` on the fake API server, following the controller's
//! step (`Runtime::autoscale`, then `engine::step` with the count it
//! returns, then `apply`): the HorizontalPodAutoscaler is created, owns the
//! replica count once a rollout completes (a resync does not put
//! `spec.replicas` back), is frozen during a rollout, and the new revision
//! comes up at the HPA's count; every body sent validates strictly.

use super::fake_api::{FakeApi, FakeNode};
use super::rollouts::validate_sent;
use super::support::*;
use floyd::engine::{self, Phase, RolloutState};
use floyd::manifest::{Autoscaling, ServiceName, ServiceSpec};
use floyd::runtime::kube::KubeRuntime;
use floyd::runtime::{Action, Runtime};
use floyd::time::Time;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

/// One controller step; returns the actions applied.
async fn step(
    rt: &KubeRuntime,
    service: &ServiceName,
    spec: &ServiceSpec,
    state: &mut RolloutState,
) -> Vec<Action> {
    let now = Time::now_wall();
    let observed = rt.observe(service, Some(spec), now).await.expect("observe");
    let settled = matches!(state.phase, Phase::Complete | Phase::RolledBack);
    let mut effective = spec.clone();
    if let Some(n) = rt
        .autoscale(service, spec, &state.target, settled)
        .await
        .expect("autoscale")
    {
        effective.replicas = n;
    }
    let d = engine::step(&effective, &observed, state, now);
    rt.apply(service, &effective, &d.actions)
        .await
        .expect("apply");
    *state = d.state;
    d.actions
}

/// Steps until the rollout completes (and once more, settled).
async fn roll(
    rt: &KubeRuntime,
    service: &ServiceName,
    spec: &ServiceSpec,
    state: &mut RolloutState,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while state.phase != Phase::Complete {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not end: {state:#?}"
        );
        step(rt, service, spec, state).await;
        assert_ne!(state.phase, Phase::Failed, "{state:#?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    step(rt, service, spec, state).await;
}

fn replicas(fake: &FakeApi, rs: &str) -> i64 {
    fake.get("replicasets", "apps", rs).expect(rs)["spec"]["replicas"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn hpa_owns_the_count_across_a_resync_and_a_rollout() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let rt = KubeRuntime::new(fake.client("apps"), "apps").with_identity("floyd-test-0");
    let web = name("web");
    let auto = Autoscaling {
        min_replicas: 2,
        max_replicas: 6,
        target_cpu_utilization_percentage: Some(60),
        metric: None,
    };
    let mut s1 = spec(1, template("ghcr.io/acme/web:1"));
    s1.autoscaling = Some(auto.clone());
    let r1 = rev(&s1.template);

    // First rollout: at least minReplicas, the HPA frozen until it completes.
    let mut state = engine::next_rollout(None, r1.clone(), Time::now_wall());
    step(&rt, &web, &s1, &mut state).await;
    let hpa = fake
        .get("horizontalpodautoscalers", "apps", "web")
        .expect("HPA created");
    assert_eq!(
        hpa["metadata"]["annotations"]["floyd.dev/frozen-replicas"],
        "2"
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleUp"]["selectPolicy"],
        "Disabled"
    );
    roll(&rt, &web, &s1, &mut state).await;
    let rs1 = format!("web-{r1}");
    assert_eq!(replicas(&fake, &rs1), 2);
    let hpa = fake.get("horizontalpodautoscalers", "apps", "web").unwrap();
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs1})
    );
    assert!(
        hpa["metadata"]["annotations"]["floyd.dev/frozen-replicas"].is_null(),
        "{hpa}"
    );
    assert!(
        hpa["spec"]["behavior"].is_null(),
        "scaling enabled once settled: {hpa}"
    );
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 6);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );

    // The HPA scales the ReplicaSet to 4; resyncs keep it (no reset to 1 or 2).
    let rs_api: Api<ReplicaSet> = Api::namespaced(fake.client_as("apps", "kubectl"), "apps");
    rs_api
        .patch(
            &rs1,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    for _ in 0..5 {
        let actions = step(&rt, &web, &s1, &mut state).await;
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Scale { .. })),
            "a resync scaled: {actions:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(replicas(&fake, &rs1), 4);

    // A rollout: the new revision comes up at the HPA's 4, the HPA frozen
    // on the old one meanwhile, then it scales the new one.
    let mut s2 = spec(1, template("ghcr.io/acme/web:2"));
    s2.autoscaling = Some(auto);
    let r2 = rev(&s2.template);
    let mut state2 = engine::next_rollout(Some(&state), r2.clone(), Time::now_wall());
    step(&rt, &web, &s2, &mut state2).await;
    let hpa = fake.get("horizontalpodautoscalers", "apps", "web").unwrap();
    assert_eq!(
        hpa["metadata"]["annotations"]["floyd.dev/frozen-replicas"],
        "4"
    );
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], rs1.as_str());
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"],
        "Disabled"
    );
    roll(&rt, &web, &s2, &mut state2).await;
    let rs2 = format!("web-{r2}");
    assert_eq!((replicas(&fake, &rs1), replicas(&fake, &rs2)), (0, 4));
    let hpa = fake.get("horizontalpodautoscalers", "apps", "web").unwrap();
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], rs2.as_str());
    assert!(hpa["metadata"]["annotations"]["floyd.dev/frozen-replicas"].is_null());

    // Autoscaling removed from the manifest: the HPA goes, Git's count returns.
    let mut s3 = s2.clone();
    s3.autoscaling = None;
    step(&rt, &web, &s3, &mut state2).await;
    assert!(
        fake.get("horizontalpodautoscalers", "apps", "web")
            .is_none()
    );
    step(&rt, &web, &s3, &mut state2).await;
    assert_eq!(replicas(&fake, &rs2), 1);

    validate_sent(&fake, "autoscaling");
}
