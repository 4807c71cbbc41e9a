//! Persistence: the store and the runtime's copy of each service's record,
//! what start-up resumes from, and the policy for write failures.
//!
//! A store that cannot be read at start-up stops the controller. A write that
//! fails while running does not stop rollouts (the runtime keeps serving) but
//! is never silent: it is logged, `/readyz` reports it until a write succeeds
//! again, and rollout records stay dirty and are written again every turn.

use super::{Controller, Error, Shared, Svc};
use crate::hub::HistoryEntry;
use crate::manifest::ServiceName;
use crate::store::{Applied, Desired, RevertRecord, RolloutRecord};
use crate::time::Time;

/// What the controller mirrors into the runtime (kube: the cluster) so a
/// controller with an empty local store (a new pod, a failed-over standby)
/// resumes instead of starting over.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ClusterState {
    record: RolloutRecord,
    applied: Option<Applied>,
}

/// `last_complete` of a record written before the field existed, from the
/// `applied` entry of the same revision.
fn migrate(rec: &mut RolloutRecord, applied: Option<Applied>) {
    if rec.last_complete.is_none()
        && let Some(a) = applied
        && a.revision == rec.state.target
        && let Some(c) = &rec.commit
    {
        rec.last_complete = Some(Desired {
            commit: crate::hub::CommitInfo {
                sha: a.commit,
                ..c.clone()
            },
            revision: a.revision,
            spec: rec.spec.clone(),
        });
    }
}

impl Shared {
    /// A store write failed: say so (log, readiness) and let the caller retry.
    pub(super) fn store_failed(&self, what: &str, e: &crate::store::Error) {
        tracing::error!(error = %e, "cannot persist {what}; retrying");
        self.hub
            .set_persistence_error(Some(format!("cannot persist {what}: {e}")));
    }

    /// Persists a service's record (store + the runtime's copy); false when
    /// the store refused (the caller keeps it dirty and retries).
    pub(super) fn persist_record(&self, name: &ServiceName, rec: &RolloutRecord) -> bool {
        let ok = match self.store.set_rollout(name.as_str(), rec) {
            Ok(()) => true,
            Err(e) => {
                self.store_failed(&format!("the rollout record of {name}"), &e);
                false
            }
        };
        let applied = rec.last_complete.as_ref().map(|d| Applied {
            commit: d.commit.sha.clone(),
            revision: d.revision.clone(),
            at: rec.state.last_progress_at,
        });
        match serde_json::to_string(&ClusterState {
            record: rec.clone(),
            applied,
        }) {
            Ok(json) => {
                // The receiver lives as long as the controller's run loop.
                let _ = self.cluster_state.send((name.clone(), json));
            }
            Err(e) => {
                tracing::error!(service = %name, error = %e, "cannot encode the rollout record")
            }
        }
        ok
    }

    /// Persists `svc`'s record when it changed; keeps it dirty on failure.
    pub(super) fn persist_svc(&self, name: &ServiceName, svc: &mut Svc) {
        if let Some(rec) = &svc.record {
            svc.dirty = !self.persist_record(name, rec);
        } else {
            svc.dirty = false;
        }
    }

    /// The last Complete commit, also in the `applied` table (older readers).
    pub(super) fn write_applied(&self, name: &ServiceName, d: &Desired, now: Time) {
        let a = Applied {
            commit: d.commit.sha.clone(),
            revision: d.revision.clone(),
            at: now,
        };
        if let Err(e) = self.store.set_applied(name.as_str(), &a) {
            self.store_failed(&format!("the last complete commit of {name}"), &e);
        }
    }

    pub(super) fn write_history(&self, e: &HistoryEntry) {
        if let Err(err) = self.store.record_history(e) {
            self.store_failed("a history entry", &err);
        }
    }

    pub(super) fn write_revert(&self, r: &RevertRecord) {
        if let Err(e) = self.store.record_revert(r) {
            self.store_failed("a revert record", &e);
        }
    }
}

impl Controller {
    /// Loads what the store remembers: rollouts in flight resume where they were.
    pub(super) fn restore(&mut self) -> Result<(), Error> {
        for entry in self.sh.store.all_history()? {
            self.sh.hub.record_history(entry);
        }
        for (name, mut rec) in self.sh.store.rollouts()? {
            let Ok(name) = ServiceName::parse(&name) else {
                tracing::warn!(service = %name, "a stored rollout has an invalid service name; ignoring it");
                continue;
            };
            // Records written before `last_complete` existed: the applied table had it.
            migrate(&mut rec, self.sh.store.applied(name.as_str())?);
            let svc = self.services.entry(name.clone()).or_default();
            svc.record = Some(rec);
            self.queue.insert(name);
        }
        self.synced = self.sh.store.synced_commit()?;
        if let Some(sha) = self.sh.store.rendering()? {
            tracing::error!(commit = %sha, "the previous Floyd process died while rendering this commit; it is not rendered again");
            self.poisoned = Some(sha);
        }
        Ok(())
    }

    /// Services the runtime runs that the local store does not know: resume
    /// them from the state the runtime keeps (kube: ConfigMaps in the cluster).
    pub(super) async fn restore_from_runtime(&mut self) {
        let names = match self.sh.runtime.services().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the runtime's services to resume them");
                return;
            }
        };
        for name in names {
            if self.services.get(&name).is_some_and(|s| s.record.is_some()) {
                continue;
            }
            let json = match self.sh.runtime.load_state(&name).await {
                Ok(Some(j)) => j,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "cannot load the runtime's rollout state");
                    continue;
                }
            };
            let Ok(state) = serde_json::from_str::<ClusterState>(&json) else {
                tracing::warn!(service = %name, "the runtime's rollout state is not readable; starting over");
                continue;
            };
            let mut record = state.record;
            migrate(&mut record, state.applied);
            tracing::info!(service = %name, target = %record.state.target, "resumed from the runtime's state");
            let svc = self.services.entry(name.clone()).or_default();
            svc.record = Some(record);
            self.sh.persist_svc(&name, svc);
            self.queue.insert(name);
        }
    }

    /// Re-writes every record whose last write failed (or never happened);
    /// readiness comes back once nothing is left to write.
    pub(super) fn persist_dirty(&mut self) {
        let sh = self.sh.clone();
        let mut all_ok = true;
        for (name, svc) in self.services.iter_mut().filter(|(_, s)| s.dirty) {
            sh.persist_svc(name, svc);
            all_ok &= !svc.dirty;
        }
        // A write that works again (the synced commit, small and always
        // current) proves the store is back.
        if all_ok
            && sh.hub.persistence_error().is_some()
            && self
                .synced
                .as_deref()
                .is_none_or(|c| sh.store.set_synced_commit(c).is_ok())
        {
            tracing::info!("state store writable again");
            sh.hub.set_persistence_error(None);
        }
    }
}
