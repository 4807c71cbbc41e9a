//! Kube runtime and Helm chart tests (one test binary).
//!
//! - `scenarios`: tower-test mocks asserting the exact requests.
//! - `rollouts`: whole rollouts through `kube::Client` against a fake API
//!   server with a simulated controller-manager/scheduler/kubelet; every
//!   object sent is checked with `kubernetes-validate --strict`.
//! - `engine_loop`: the real `engine::step` loop driving the runtime against
//!   the fake API server (rolling, blue-green, GPU, failing → rollback).
//! - `gateway`: canary weights written to a Gateway API HTTPRoute.
//! - `cluster`: the same scenarios against a real cluster (`KUBECONFIG`),
//!   ignored by default.
//! - `chart`: `helm lint`, `helm template | kubernetes-validate`, RBAC scope.
//! - `ownership`: two installs in one namespace, foreign objects, deletions
//!   racing the ReplicaSet controller, a hung leader, drift, the fake's strictness.
//! - `binary`: `floyd run` with the chart's environment against the fake.
//! - `autoscaling`: the HorizontalPodAutoscaler across a rollout and a resync.
//! - `render`: `floyd render --objects` of the examples repo, validated.

#[path = "kube/autoscaling.rs"]
mod autoscaling;
#[path = "kube/binary.rs"]
mod binary;
#[path = "kube/chart.rs"]
mod chart;
#[path = "kube/cluster.rs"]
mod cluster;
#[path = "kube/engine_loop.rs"]
mod engine_loop;
#[path = "kube/fake_api.rs"]
mod fake_api;
#[path = "kube/gateway.rs"]
mod gateway;
#[path = "kube/ownership.rs"]
mod ownership;
#[path = "kube/render.rs"]
mod render;
#[path = "kube/rollouts.rs"]
mod rollouts;
#[path = "kube/scenarios.rs"]
mod scenarios;
#[path = "kube/support.rs"]
mod support;
#[path = "kube/validate.rs"]
mod validate;
