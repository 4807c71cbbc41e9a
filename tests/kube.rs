//! Kube runtime and Helm chart tests (one test binary).
//!
//! - `scenarios`: tower-test mocks asserting the exact requests.
//! - `rollouts`: whole rollouts through `kube::Client` against a fake API
//!   server with a simulated controller-manager/scheduler/kubelet; every
//!   object sent is checked with `kubernetes-validate --strict`.
//! - `cluster`: the same scenarios against a real cluster (`KUBECONFIG`),
//!   ignored by default.
//! - `chart`: `helm lint`, `helm template | kubernetes-validate`, RBAC scope.

#[path = "kube/chart.rs"]
mod chart;
#[path = "kube/cluster.rs"]
mod cluster;
#[path = "kube/fake_api.rs"]
mod fake_api;
#[path = "kube/rollouts.rs"]
mod rollouts;
#[path = "kube/scenarios.rs"]
mod scenarios;
#[path = "kube/support.rs"]
mod support;
#[path = "kube/validate.rs"]
mod validate;
