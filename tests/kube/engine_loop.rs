//! Whole rollouts decided by the real engine (`engine::step`) and carried out
//! by the kube runtime against the fake API server, following the engine's
//! controller contract: step, apply the actions, persist the state, roll back
//! a failed rollout. Each test checks what a user relies on: surge and
//! availability bounds (sampled at every step), traffic switching only to a
//! fully ready revision, GPU capacity never exceeded, a crash-looping
//! revision rolled back.

use super::fake_api::{Behavior, FakeApi, FakeNode};
use super::rollouts::validate_sent;
use super::support::*;
use floyd::engine::{self, Phase, RolloutState};
use floyd::manifest::{IntOrPercent, RollingUpdateParams, ServiceName, ServiceSpec, Strategy};
use floyd::runtime::kube::KubeRuntime;
use floyd::runtime::{Action, Observed, Runtime};
use floyd::time::Time;
use std::time::Duration;

/// What the loop saw at each step.
struct Trace {
    observed: Vec<Observed>,
    actions: Vec<Action>,
    final_state: RolloutState,
    rolled_back: bool,
}

/// Runs the controller contract for one service until the rollout is terminal.
async fn drive(
    rt: &KubeRuntime,
    service: &ServiceName,
    spec: &ServiceSpec,
    previous: Option<&RolloutState>,
) -> Trace {
    let target = rev(&spec.template);
    let mut state = engine::next_rollout(previous, target, Time::now_wall());
    let mut trace = Trace {
        observed: Vec::new(),
        actions: Vec::new(),
        final_state: state.clone(),
        rolled_back: false,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not end; state {state:#?}\nlast observed {:#?}",
            trace.observed.last()
        );
        let now = Time::now_wall();
        let observed = rt.observe(service, Some(spec), now).await.expect("observe");
        let d = engine::step(spec, &observed, &state, now);
        rt.apply(service, spec, &d.actions).await.expect("apply");
        // Persisted in the cluster, as the controller does.
        rt.save_state(service, &serde_json::to_string(&d.state).unwrap())
            .await
            .expect("save state");
        trace.actions.extend(d.actions.iter().cloned());
        trace.observed.push(observed.clone());
        state = d.state;
        if state.phase == Phase::Failed && engine::should_roll_back(spec, &state) {
            rt.record_event(service, "RolloutFailed", &state.reason)
                .await
                .expect("event");
            state = engine::rollback(&state, &observed, now).expect("a rollback target exists");
            trace.rolled_back = true;
            continue;
        }
        if state.phase.is_terminal() || state.phase == Phase::AwaitingPromotion {
            trace.final_state = state;
            return trace;
        }
        let wait = d
            .wake_at
            .map(|t| t.since(Time::now_wall()))
            .unwrap_or(Duration::from_millis(50))
            .clamp(Duration::from_millis(10), Duration::from_millis(50));
        tokio::time::sleep(wait).await;
    }
}

fn rolling_spec(
    replicas: u32,
    t: floyd::manifest::InstanceTemplate,
    surge: u32,
    unavailable: u32,
) -> ServiceSpec {
    let mut s = spec(replicas, t);
    s.strategy = Strategy::RollingUpdate {
        rolling_update: RollingUpdateParams {
            max_surge: IntOrPercent::Int(surge),
            max_unavailable: IntOrPercent::Int(unavailable),
        },
    };
    s
}

fn total_live(o: &Observed) -> u32 {
    o.revisions.iter().map(|r| r.live()).sum()
}
fn total_ready(o: &Observed) -> u32 {
    o.revisions.iter().map(|r| r.ready()).sum()
}

async fn first_rollout(rt: &KubeRuntime, svc: &ServiceName, s: &ServiceSpec) -> RolloutState {
    let t = drive(rt, svc, s, None).await;
    assert_eq!(t.final_state.phase, Phase::Complete, "{:#?}", t.final_state);
    t.final_state
}

#[tokio::test]
async fn engine_rolling_update_keeps_surge_and_availability_bounds() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let rt = KubeRuntime::new(fake.client("apps"), "apps");
    let web = name("web");
    let s1 = rolling_spec(4, template("ghcr.io/acme/web:1"), 1, 0);
    let done = first_rollout(&rt, &web, &s1).await;
    let s2 = rolling_spec(4, template("ghcr.io/acme/web:2"), 1, 0);
    let t = drive(&rt, &web, &s2, Some(&done)).await;
    assert_eq!(t.final_state.phase, Phase::Complete, "{:#?}", t.final_state);
    let (r1, r2) = (rev(&s1.template), rev(&s2.template));
    for o in &t.observed {
        assert!(
            total_live(o) <= 5,
            "maxSurge 1 over 4 replicas: {} live",
            total_live(o)
        );
        assert!(
            total_ready(o) >= 4,
            "maxUnavailable 0: {} ready",
            total_ready(o)
        );
    }
    let last = rt.observe(&web, Some(&s2), Time::now_wall()).await.unwrap();
    assert_eq!(
        last.revision(&r2).map(|r| (r.desired, r.ready())),
        Some((4, 4))
    );
    assert_eq!(
        last.revision(&r1).map(|r| r.desired),
        Some(0),
        "old revision kept at 0 for rollback"
    );
    // The controller can resume from what it saved in the cluster.
    let saved: RolloutState =
        serde_json::from_str(&rt.load_state(&web).await.unwrap().unwrap()).unwrap();
    assert_eq!(saved.target, r2);
    validate_sent(
        &fake,
        "engine_rolling_update_keeps_surge_and_availability_bounds",
    );
}

#[tokio::test]
async fn engine_blue_green_switches_only_to_a_fully_ready_revision() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let rt = KubeRuntime::new(fake.client("apps"), "apps");
    let web = name("web");
    let s1 = blue_green(spec(3, template("ghcr.io/acme/web:1")));
    let done = first_rollout(&rt, &web, &s1).await;
    let s2 = blue_green(spec(3, template("ghcr.io/acme/web:2")));
    let t = drive(&rt, &web, &s2, Some(&done)).await;
    assert_eq!(t.final_state.phase, Phase::Complete, "{:#?}", t.final_state);
    let r2 = rev(&s2.template);
    assert!(
        t.actions
            .iter()
            .any(|a| matches!(a, Action::SetTraffic { preview: Some(p), .. } if p == &r2)),
        "the new revision was previewed first: {:#?}",
        t.actions
    );
    // Every observation where the active Service selected r2 had r2 fully ready.
    for o in t.observed.iter().filter(|o| o.active.as_ref() == Some(&r2)) {
        assert_eq!(o.revision(&r2).map(|r| r.ready()), Some(3));
    }
    let svc = fake.get("services", "apps", "web").expect("active Service");
    assert_eq!(svc["spec"]["selector"]["floyd.dev/revision"], r2.0.as_str());
    validate_sent(
        &fake,
        "engine_blue_green_switches_only_to_a_fully_ready_revision",
    );
}

#[tokio::test]
async fn engine_gpu_rollout_never_exceeds_capacity() {
    let fake = FakeApi::start(vec![FakeNode::gpu("a100-1", "NVIDIA-A100-SXM4-80GB", 2)]).await;
    let rt = KubeRuntime::new(fake.client("apps"), "apps");
    let llm = name("llm");
    let s1 = rolling_spec(
        2,
        gpu_template("ghcr.io/acme/llm:1", "NVIDIA-A100-SXM4-80GB"),
        1,
        0,
    );
    let done = first_rollout(&rt, &llm, &s1).await;
    let s2 = rolling_spec(
        2,
        gpu_template("ghcr.io/acme/llm:2", "NVIDIA-A100-SXM4-80GB"),
        1,
        0,
    );
    let t = drive(&rt, &llm, &s2, Some(&done)).await;
    assert_eq!(t.final_state.phase, Phase::Complete, "{:#?}", t.final_state);
    for o in &t.observed {
        let g = o.gpu.as_ref().expect("GPU capacity observed");
        assert_eq!(g.exist, 2);
        assert!(g.held_by_service <= 2, "{g:?}");
    }
    let last = rt.observe(&llm, Some(&s2), Time::now_wall()).await.unwrap();
    assert_eq!(
        last.revision(&rev(&s2.template)).map(|r| r.ready()),
        Some(2)
    );
    validate_sent(&fake, "engine_gpu_rollout_never_exceeds_capacity");
}

#[tokio::test]
async fn engine_gpu_rollout_on_a_mig_single_cluster_completes() {
    // Three 1g.10gb slices advertised as plain nvidia.com/gpu (MIG single).
    let fake = FakeApi::start(vec![FakeNode::mig_single(
        "a100-mig",
        "NVIDIA-A100-SXM4-80GB",
        "1g.10gb",
        3,
    )])
    .await;
    let rt = KubeRuntime::new(fake.client("apps"), "apps");
    let llm = name("llm");
    let mig = |image: &str| {
        let mut t = gpu_template(image, "NVIDIA-A100-SXM4-80GB");
        t.resources.gpu.as_mut().unwrap().sharing = floyd::manifest::GpuSharing::Mig {
            profile: "1g.10gb".into(),
        };
        t
    };
    let s1 = rolling_spec(2, mig("ghcr.io/acme/llm:1"), 1, 0);
    let done = first_rollout(&rt, &llm, &s1).await;
    let s2 = rolling_spec(2, mig("ghcr.io/acme/llm:2"), 1, 0);
    let t = drive(&rt, &llm, &s2, Some(&done)).await;
    assert_eq!(t.final_state.phase, Phase::Complete, "{:#?}", t.final_state);
    for o in &t.observed {
        let g = o.gpu.as_ref().expect("GPU capacity observed");
        assert_eq!(g.exist, 3, "{g:?}");
        assert!(g.held_by_service <= 3, "{g:?}");
    }
    // The pods ask for what the node advertises, on the suffixed product.
    let rs = fake
        .get("replicasets", "apps", &format!("llm-{}", rev(&s2.template)))
        .unwrap();
    let pod = &rs["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    assert_eq!(
        pod["nodeSelector"]["nvidia.com/gpu.product"],
        "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"
    );
    let last = rt.observe(&llm, Some(&s2), Time::now_wall()).await.unwrap();
    assert_eq!(
        last.revision(&rev(&s2.template)).map(|r| r.ready()),
        Some(2)
    );
    validate_sent(
        &fake,
        "engine_gpu_rollout_on_a_mig_single_cluster_completes",
    );
}

#[tokio::test]
async fn engine_failing_rollout_rolls_back_on_the_cluster() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    fake.set_behavior("ghcr.io/acme/web:bad", Behavior::CrashLoop);
    let rt = KubeRuntime::new(fake.client("apps"), "apps");
    let web = name("web");
    let mut s1 = rolling_spec(2, template("ghcr.io/acme/web:1"), 1, 0);
    s1.progress_deadline_seconds = 2;
    let done = first_rollout(&rt, &web, &s1).await;
    let mut bad = rolling_spec(2, template("ghcr.io/acme/web:bad"), 1, 0);
    bad.progress_deadline_seconds = 2;
    let t = drive(&rt, &web, &bad, Some(&done)).await;
    assert!(t.rolled_back, "the failed rollout was rolled back");
    assert_eq!(
        t.final_state.phase,
        Phase::RolledBack,
        "{:#?}",
        t.final_state
    );
    let (r1, rb) = (rev(&s1.template), rev(&bad.template));
    // At some step the crash loop was visible to the engine.
    assert!(
        t.observed.iter().any(
            |o| o.revision(&rb).is_some_and(|r| r.instances.iter().any(|i| i
                .reason
                .as_deref()
                .is_some_and(|m| m.contains("CrashLoopBackOff"))))
        )
    );
    let last = rt
        .observe(&web, Some(&bad), Time::now_wall())
        .await
        .unwrap();
    assert_eq!(last.revision(&r1).map(|r| r.ready()), Some(2));
    assert_eq!(last.revision(&rb).map(|r| r.desired), Some(0));
    assert!(
        fake.list("events")
            .iter()
            .any(|e| e["reason"] == "RolloutFailed")
    );
    validate_sent(&fake, "engine_failing_rollout_rolls_back_on_the_cluster");
}
