//! The fake-cluster scenarios against a real cluster (`KUBECONFIG`), in a
//! scratch namespace that is deleted afterwards. Ignored by default:
//! `cargo test --test kube cluster -- --ignored`.
//! Images: `registry.k8s.io/e2e-test-images/agnhost` (serves `/healthz` with
//! `netexec`; `fail` exits at once and crash-loops).

use super::rollouts::{Ctx, blue_green_switch, failing_then_rollback, rolling};
use super::support::template;
use floyd::manifest::InstanceTemplate;
use floyd::runtime::kube::KubeRuntime;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

fn agnhost(args: &[&str], marker: &str) -> InstanceTemplate {
    let mut t = template(AGNHOST);
    t.command = std::iter::once("/agnhost")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    // Different env = different revision, same image.
    t.env.insert("VERSION".into(), marker.into());
    t
}

fn ctx() -> Ctx {
    Ctx {
        v1: agnhost(&["netexec", "--http-port=${PORT}"], "1"),
        v2: agnhost(&["netexec", "--http-port=${PORT}"], "2"),
        bad: agnhost(&["fail"], "bad"),
        wait: Duration::from_secs(240),
    }
}

struct Scratch {
    rt: KubeRuntime,
    ns: String,
}

async fn scratch(tag: &str) -> Scratch {
    let client = kube::Client::try_default().await.expect("KUBECONFIG");
    let ns = format!("floyd-test-{tag}-{}", std::process::id() % 100_000);
    let nss: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    nss.create(&PostParams::default(), &obj)
        .await
        .expect("create namespace");
    Scratch {
        rt: KubeRuntime::new(client, &ns),
        ns,
    }
}

async fn cleanup(s: Scratch) {
    let nss: Api<Namespace> = Api::all(s.rt.client().clone());
    let _ = nss.delete(&s.ns, &DeleteParams::default()).await;
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn cluster_rolling_update() {
    let s = scratch("rolling").await;
    rolling(&s.rt, &ctx()).await;
    cleanup(s).await;
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn cluster_blue_green_switch() {
    let s = scratch("bg").await;
    blue_green_switch(&s.rt, &ctx()).await;
    cleanup(s).await;
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn cluster_failing_rollout_rolls_back() {
    let s = scratch("rollback").await;
    failing_then_rollback(&s.rt, &ctx()).await;
    cleanup(s).await;
}
