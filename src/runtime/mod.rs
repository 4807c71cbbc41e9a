//! Runtimes: where instances actually run. The [`Runtime`] trait (observe,
//! apply) and its backends: [`local`] (the embedded default: real processes,
//! probes, a load balancer), [`kube`] (Kubernetes ReplicaSets and Services),
//! [`sim`] (a virtual clock, for tests, `floyd simulate` and benchmarks).
//!
//! A runtime executes what the engine decided; it never decides a rollout
//! step itself. Within one revision it is the *instance manager*: it makes
//! the live instance count match the desired count, creating in slow-start
//! batches and deleting not-ready instances first (see
//! [`crate::engine::instances`]), like Kubernetes' ReplicaSet controller.

pub mod kube;
pub mod local;
pub mod sim;

use crate::manifest::{Revision, ServiceName, ServiceSpec};
use crate::time::Time;
use std::collections::BTreeSet;
use std::sync::Mutex;

pub use crate::engine::with_runtime_problems;
pub use crate::model::{
    Action, CanarySplit, Drift, GateResult, GateVerdict, GpuCapacity, Instance, InstancePhase,
    Observed, ObservedRevision, RevisionTraffic,
};

/// Services whose instances changed by themselves (became ready or
/// unready, crashed, finished terminating), as a runtime reports them to
/// the controller so a rollout steps on the event instead of on a timer.
/// Marks coalesce: a service marked ten times before the controller looks
/// is stepped once.
#[derive(Debug, Default)]
pub struct Changes {
    pending: Mutex<BTreeSet<ServiceName>>,
    wake: tokio::sync::Notify,
}

impl Changes {
    pub fn new() -> Changes {
        Changes::default()
    }

    /// Records that `service`'s instances changed.
    pub fn mark(&self, service: &ServiceName) {
        let fresh = match self.pending.lock() {
            Ok(mut p) => p.insert(service.clone()),
            Err(_) => return,
        };
        if fresh {
            // A stored permit if nobody waits: the next `next` returns at once.
            self.wake.notify_one();
        }
    }

    /// The services marked since the last call, waiting for at least one.
    pub async fn next(&self) -> BTreeSet<ServiceName> {
        loop {
            let taken = match self.pending.lock() {
                Ok(mut p) => std::mem::take(&mut *p),
                Err(_) => BTreeSet::new(),
            };
            if !taken.is_empty() {
                return taken;
            }
            self.wake.notified().await;
        }
    }

    /// The services marked since the last call, without waiting.
    pub fn take(&self) -> BTreeSet<ServiceName> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// Errors of a runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("service {service}: revision {revision} does not exist")]
    NoSuchRevision {
        service: ServiceName,
        revision: Revision,
    },
    #[error("service {service}: {message}")]
    Apply {
        service: ServiceName,
        message: String,
    },
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

/// A place where services run. Implementations: [`local::LocalRuntime`],
/// [`kube::KubeRuntime`], [`sim::SimRuntime`].
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Short name (`local`, `kube`, `sim`).
    fn name(&self) -> &'static str;

    /// The services this runtime currently runs (for prune and adoption).
    async fn services(&self) -> Result<Vec<ServiceName>, Error>;

    /// Current state of one service. A service the runtime does not know is
    /// observed as `Observed::default()` (no revisions).
    async fn observe(
        &self,
        service: &ServiceName,
        spec: Option<&ServiceSpec>,
        now: Time,
    ) -> Result<Observed, Error>;

    /// Carry out the engine's actions for `service`, whose current spec
    /// (ports, probes, blue-green preview port) is `spec`.
    async fn apply(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        actions: &[Action],
    ) -> Result<(), Error>;

    /// Where the runtime reports instance changes as they happen (see
    /// [`Changes`]); `None` when it does not, and the controller then
    /// re-observes a rollout in progress every second.
    fn changes(&self) -> Option<std::sync::Arc<Changes>> {
        None
    }

    /// Remove everything of a service (prune).
    async fn delete_service(&self, service: &ServiceName) -> Result<(), Error>;

    /// Durable per-service controller state kept where the service runs
    /// (kube: ConfigMap `floyd-state-<service>`), so a restarted or
    /// failed-over controller resumes from there. Default: the runtime keeps
    /// none (`None`); the controller's own store is the record.
    async fn load_state(&self, service: &ServiceName) -> Result<Option<String>, Error> {
        let _ = service;
        Ok(None)
    }

    /// Saves what [`Runtime::load_state`] returns. Default: does nothing.
    async fn save_state(&self, service: &ServiceName, json: &str) -> Result<(), Error> {
        let _ = (service, json);
        Ok(())
    }

    /// Autoscaling (`spec.autoscaling`): makes the runtime's autoscaler
    /// scale `target` (the revision the service runs or rolls out to; it is
    /// frozen while a rollout is in flight, `settled` false) and returns the
    /// replica count the engine must use instead of `spec.replicas`; removes
    /// the autoscaler when the spec has none. Default (local, sim): no
    /// autoscaler, `None` (the engine uses `spec.replicas`).
    async fn autoscale(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        target: &Revision,
        settled: bool,
    ) -> Result<Option<u32>, Error> {
        let _ = (service, spec, target, settled);
        Ok(None)
    }

    /// Announces a rollout event where the runtime's operators look (kube:
    /// a Kubernetes Event regarding the service). Default: does nothing.
    async fn record_event(
        &self,
        service: &ServiceName,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        let _ = (service, reason, message);
        Ok(())
    }

    /// The Git commit a revision comes from, told before the engine creates
    /// it, so the runtime can record it with the revision (kube: the
    /// `floyd.dev/commit` annotation on the ReplicaSet). Default: ignored.
    fn note_commit(&self, service: &ServiceName, revision: &Revision, commit: &str) {
        let _ = (service, revision, commit);
    }
}

#[cfg(test)]
mod tests {
    use super::{Changes, Observed, with_runtime_problems};

    #[tokio::test]
    async fn changes_coalesce_and_wake_a_later_waiter() {
        let c = std::sync::Arc::new(Changes::new());
        let a = crate::manifest::ServiceName::parse("a").unwrap();
        let b = crate::manifest::ServiceName::parse("b").unwrap();
        c.mark(&a);
        c.mark(&a);
        c.mark(&b);
        assert_eq!(c.next().await.len(), 2);
        assert!(c.take().is_empty());
        // Marked while nobody waits, then awaited: not lost.
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.next().await }
        });
        tokio::task::yield_now().await;
        c.mark(&b);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![b]);
    }
    use crate::engine::Phase;

    #[test]
    fn runtime_problems_are_never_complete() {
        let bad = Observed {
            problems: vec!["load balancer cannot listen on 127.0.0.1:8080".into()],
            ..Observed::default()
        };
        let p = "load balancer cannot listen on 127.0.0.1:8080";
        for (phase, reason, want_phase, want_reason) in [
            (Phase::Complete, "done", Phase::Degraded, p.to_string()),
            (
                Phase::RolledBack,
                "rolled back",
                Phase::Degraded,
                p.to_string(),
            ),
            (
                Phase::Progressing,
                "rolling",
                Phase::Progressing,
                format!("rolling; {p}"),
            ),
            (Phase::Progressing, "", Phase::Progressing, p.to_string()),
            (
                Phase::Failed,
                "deadline",
                Phase::Failed,
                "deadline".to_string(),
            ),
            (
                Phase::Degraded,
                "revert failed",
                Phase::Degraded,
                "revert failed".to_string(),
            ),
        ] {
            assert_eq!(
                with_runtime_problems(phase, reason.into(), &bad),
                (want_phase, want_reason),
                "{phase:?}"
            );
        }
        assert_eq!(
            with_runtime_problems(Phase::Complete, "done".into(), &Observed::default()),
            (Phase::Complete, "done".to_string())
        );
    }
}
