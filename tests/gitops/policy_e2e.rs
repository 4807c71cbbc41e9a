//! The GitOps policy end to end: a real Git server, the real controller,
//! manifests and engine, on the wall-clock fake runtime (with a GPU
//! inventory where the sequence needs one). Each test replays a user's
//! sequence of commits and checks the commits Floyd reverted, the tree it
//! left in Git and what runs.

use super::e2e::{Harness, Opts, service_yaml};
use super::fake::FakeRuntime;
use super::support::git;
use floyd::engine::Phase;
use floyd::hub::ServiceView;
use std::time::Duration;

/// A GPU service: one A100 per instance, rolling with maxSurge 1 /
/// maxUnavailable 0 (in-place replacement when no GPU is free).
fn gpu_yaml(version: &str, replicas: u32, ready_after_ms: u64) -> String {
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: web
spec:
  replicas: {replicas}
  template:
    command: [\"sample-app\", \"--version\", \"{version}\", \"--ready-after-ms={ready_after_ms}\"]
    resources:
      gpu: {{ count: 1, product: NVIDIA-A100-SXM4-80GB }}
  progressDeadlineSeconds: 8
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
"
    )
}

fn trailers(msg: &str, key: &str) -> Vec<String> {
    msg.lines()
        .filter_map(|l| l.strip_prefix(key))
        .map(|s| s.trim().to_string())
        .collect()
}

/// Commits on the remote whose message starts with `Revert`.
fn revert_commits(h: &Harness) -> Vec<String> {
    h.server
        .log()
        .iter()
        .filter(|l| l.contains(" Revert"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// The whole tree of `a` equals the whole tree of `b` on the remote.
fn same_tree(h: &Harness, a: &str, b: &str) -> bool {
    let tree = |c: &str| git(&h.server.bare(), &["rev-parse", &format!("{c}^{{tree}}")]);
    tree(a) == tree(b)
}

async fn gpu_harness(ready_after_ms: u64) -> (Harness, String) {
    let h = Harness::seeded(
        &[("services/web.yaml", gpu_yaml("v1", 2, ready_after_ms))],
        "web v1 on 2 GPUs",
        FakeRuntime::with_gpus(Duration::from_millis(100), 2),
        Opts::default(),
    )
    .await;
    let a = h.server.tip();
    h.wait_complete_at("web", &a).await;
    (h, a)
}

async fn wait_revert_converged(h: &Harness, bad: &str) -> ServiceView {
    h.wait_view(
        "Complete on a revert commit",
        "web",
        Duration::from_secs(40),
        |v| {
            v.phase == Phase::Complete
                && v.commit
                    .as_ref()
                    .is_some_and(|c| c.sha != bad && h.server.message(&c.sha).starts_with("Revert"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_only_scale_that_cannot_fit_is_reverted_not_its_predecessor() {
    let (h, _a) = gpu_harness(100).await;
    h.work.write("services/web.yaml", &gpu_yaml("v2", 2, 100));
    let b = h.work.commit("web: v2");
    h.work.push();
    let vb = h.wait_complete_at("web", &b).await;
    h.work.write("services/web.yaml", &gpu_yaml("v2", 3, 100));
    let c = h.work.commit("web: 3 replicas");
    h.work.push();
    let v = wait_revert_converged(&h, &c).await;
    let revert = v.commit.unwrap().sha;
    let msg = h.server.message(&revert);
    assert_eq!(trailers(&msg, "Floyd-Revert-Of:"), vec![c.clone()], "{msg}");
    assert_eq!(trailers(&msg, "Floyd-Service:"), vec!["web".to_string()]);
    let reason = trailers(&msg, "Floyd-Reason:").join("");
    assert!(reason.contains("needs 3 GPUs"), "{reason}");
    assert!(same_tree(&h, &revert, &b), "Git is back to B's tree");
    assert_eq!(
        revert_commits(&h),
        vec![revert.clone()],
        "exactly one revert"
    );
    assert_eq!(v.target_revision, vb.target_revision, "release 2 kept");
    assert_eq!(v.replicas, 2);
    assert_eq!(
        h.runtime.summary("web"),
        vec![(vb.target_revision.unwrap().to_string(), 2, 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_that_cannot_fit_during_a_rollout_reverts_the_scale_and_finishes_the_rollout() {
    let (h, _a) = gpu_harness(100).await;
    // v2 instances take 2 s to become ready: the rollout is in flight when C lands.
    h.work.write("services/web.yaml", &gpu_yaml("v2", 2, 2000));
    let b = h.work.commit("web: v2 (slow to start)");
    h.work.push();
    let vb = h
        .wait_view("rolling to B", "web", Duration::from_secs(20), |v| {
            v.phase == Phase::Progressing && v.commit.as_ref().is_some_and(|c| c.sha == b)
        })
        .await;
    h.work.write("services/web.yaml", &gpu_yaml("v2", 3, 2000));
    let c = h.work.commit("web: 3 replicas");
    h.work.push();
    let v = wait_revert_converged(&h, &c).await;
    let revert = v.commit.unwrap().sha;
    let msg = h.server.message(&revert);
    assert_eq!(trailers(&msg, "Floyd-Revert-Of:"), vec![c.clone()], "{msg}");
    assert!(msg.contains("needs 3 GPUs"), "{msg}");
    assert!(same_tree(&h, &revert, &b));
    assert_eq!(revert_commits(&h), vec![revert]);
    assert_eq!(
        v.target_revision, vb.target_revision,
        "the healthy release 2 finished rolling out"
    );
    let hist = h.hub.history("web");
    assert!(
        !hist.iter().any(|e| e.rollback),
        "nothing was rolled back: {hist:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_superseded_the_first_rollout_is_reverted() {
    let slow =
        service_yaml("web", "v1", false).replace("\"v1\"]", "\"v1\", \"--ready-after-ms=2500\"]");
    assert!(slow.contains("ready-after"), "{slow}");
    let h = Harness::seeded(
        &[(
            "services/web.yaml",
            slow.replace("progressDeadlineSeconds: 2", "progressDeadlineSeconds: 10"),
        )],
        "web: created",
        FakeRuntime::new(Duration::from_millis(100)),
        Opts::default(),
    )
    .await;
    let a = h.server.tip();
    h.wait_view(
        "first rollout in flight",
        "web",
        Duration::from_secs(20),
        |v| v.phase == Phase::Progressing && v.commit.as_ref().is_some_and(|c| c.sha == a),
    )
    .await;
    let b = h.push_web("v2", true, "web: v2 (never ready)");
    let v = h
        .wait_complete_beyond(
            "Complete on the revert of B",
            "web",
            &[&a, &b],
            Duration::from_secs(40),
        )
        .await;
    let revert = v.commit.unwrap().sha;
    let msg = h.server.message(&revert);
    assert_eq!(trailers(&msg, "Floyd-Revert-Of:"), vec![b], "{msg}");
    assert!(same_tree(&h, &revert, &a), "Git back to A");
    assert_eq!(revert_commits(&h), vec![revert]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_broken_by_one_commit_are_reverted_once_without_error() {
    let h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    h.wait_complete_at("api", &c0).await;
    h.work
        .write("services/web.yaml", &service_yaml("web", "v2", true))
        .write("services/api.yaml", &service_yaml("api", "v2", true));
    let bad = h.work.commit("web and api: v2 (never ready)");
    h.work.push();
    let mut reverts = Vec::new();
    for s in ["web", "api"] {
        let v = h
            .wait_complete_beyond(
                "Complete on a revert",
                s,
                &[&bad, &c0],
                Duration::from_secs(40),
            )
            .await;
        reverts.push(v.commit.unwrap().sha);
    }
    assert_eq!(reverts[0], reverts[1], "one revert commit for both");
    assert_eq!(
        revert_commits(&h),
        vec![reverts[0].clone()],
        "{:?}",
        h.server.log()
    );
    let msg = h.server.message(&reverts[0]);
    let mut services = trailers(&msg, "Floyd-Service:");
    services.sort();
    assert_eq!(
        services,
        vec!["api".to_string(), "web".to_string()],
        "{msg}"
    );
    assert_eq!(trailers(&msg, "Floyd-Revert-Of:"), vec![bad]);
    assert!(same_tree(&h, &reverts[0], &c0));
    let metrics = h.hub.metrics.encode();
    assert!(
        !metrics.contains("floyd_revert_commits_total{result=\"error\"} 1"),
        "{metrics}"
    );
    for s in ["web", "api"] {
        let v = h.hub.service(s).unwrap();
        assert_ne!(v.phase, Phase::Degraded, "{s}: {}", v.reason);
    }
}
