//! Leader election on a `coordination.k8s.io/v1` Lease, so the chart can run
//! two controller replicas: one leads (syncs and rolls out), the other stands
//! by (serves `/healthz`) and takes over once the lease has not been renewed
//! for its duration.
//!
//! Writes use the Lease's `resourceVersion` (optimistic concurrency: a
//! replace that lost a race gets 409 and changes nothing), never server-side
//! apply with force, which would let two candidates both "win".
//!
//! Expiry is judged on the local clock from when this candidate last saw the
//! lease record change (as client-go does), not from the `renewTime` written
//! by another machine, so clock skew between nodes cannot cause a takeover.
//!
//! Owns: the Lease object named in [`LeaseConfig`]. Must not: decide
//! anything about rollouts; the controller reads [`LeaderElector::is_leader`].

use super::Error;
use super::objects::{floyd_time, jiff_time};
use crate::time::Time;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Timings and names of one election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease object's name (the chart uses `<release>-floyd`... or `floyd-leader`).
    pub lease_name: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// A leader that has not renewed for this long may be replaced (default 15 s).
    pub lease_duration: Duration,
    /// How often the leader renews and a standby retries (default 5 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(lease_name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            lease_name: lease_name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(5),
        }
    }
}

/// What this candidate last saw of the lease record, and when (local clock).
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    holder: Option<String>,
    renew: Option<Time>,
    transitions: i32,
    at: Time,
}

/// One candidate in a Lease election.
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
    seen: Mutex<Option<Seen>>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, namespace: &str, cfg: LeaseConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            cfg,
            leader: watch::Sender::new(false),
            seen: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// Whether this candidate currently holds the lease.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Follows leadership changes (`true` = leading).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Lease {
            namespace: self.namespace.clone(),
            name: self.cfg.lease_name.clone(),
            message: message.into(),
        }
    }

    fn set_leader(&self, v: bool) {
        self.leader.send_if_modified(|cur| {
            let changed = *cur != v;
            *cur = v;
            changed
        });
    }

    fn lease_secs(&self) -> i32 {
        self.cfg.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    /// One round: create the lease, renew it, or take it over when its holder
    /// let it expire. Returns whether this candidate leads afterwards.
    /// `now` is the local clock (a parameter, so tests can move it).
    pub async fn try_acquire_or_renew(&self, now: Time) -> Result<bool, Error> {
        let name = self.cfg.lease_name.clone();
        let me = self.cfg.identity.clone();
        let current = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.err(format!("get: {e}")))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(
                        [(
                            super::objects::LABEL_MANAGED_BY.to_string(),
                            super::objects::MANAGED_BY.to_string(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(self.lease_secs()),
                    acquire_time: Some(MicroTime(jiff_time(now))),
                    renew_time: Some(MicroTime(jiff_time(now))),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.set_leader(true);
                    Ok(true)
                }
                // Another candidate created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    self.set_leader(false);
                    Ok(false)
                }
                Err(e) => Err(self.err(format!("create: {e}"))),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew = spec.renew_time.as_ref().map(|t| floyd_time(&t.0));
        let transitions = spec.lease_transitions.unwrap_or(0);
        let duration = Duration::from_secs(
            spec.lease_duration_seconds
                .unwrap_or(self.lease_secs())
                .max(1) as u64,
        );
        // When did the record last change, as we saw it?
        let observed_at = {
            let mut seen = self
                .seen
                .lock()
                .map_err(|_| self.err("state lock poisoned"))?;
            let same = seen.as_ref().is_some_and(|s| {
                s.holder == holder && s.renew == renew && s.transitions == transitions
            });
            if !same {
                *seen = Some(Seen {
                    holder: holder.clone(),
                    renew,
                    transitions,
                    at: now,
                });
            }
            seen.as_ref().map(|s| s.at).unwrap_or(now)
        };
        let mine = holder.as_deref() == Some(me.as_str());
        let expired = now.since(observed_at) >= duration;
        if !mine && holder.is_some() && !expired {
            self.set_leader(false);
            return Ok(false);
        }
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(me.clone());
        new_spec.lease_duration_seconds = Some(self.lease_secs());
        new_spec.renew_time = Some(MicroTime(jiff_time(now)));
        if !mine {
            new_spec.acquire_time = Some(MicroTime(jiff_time(now)));
            new_spec.lease_transitions = Some(transitions.saturating_add(1));
        }
        lease.spec = Some(new_spec);
        // `lease.metadata.resourceVersion` is the one we read: a replace
        // after someone else's write fails with 409.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.set_leader(true);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.set_leader(false);
                Ok(false)
            }
            Err(e) => Err(self.err(format!("replace: {e}"))),
        }
    }

    /// Gives the lease up (graceful shutdown) so a standby takes over at once
    /// instead of after the lease duration. Does nothing when not leading.
    pub async fn release(&self, now: Time) -> Result<(), Error> {
        if !self.is_leader() {
            return Ok(());
        }
        self.set_leader(false);
        let name = self.cfg.lease_name.clone();
        let Some(mut lease) = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.err(format!("get: {e}")))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff_time(now)));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours to release.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.err(format!("release: {e}"))),
        }
    }

    /// Runs the election until `shutdown`, then releases the lease. A leader
    /// that cannot renew for a whole lease duration steps down (another
    /// candidate may have taken over by then).
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut last_renewed: Option<Time> = None;
        loop {
            let now = Time::now_wall();
            match self.try_acquire_or_renew(now).await {
                Ok(true) => last_renewed = Some(now),
                Ok(false) => last_renewed = None,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    if last_renewed.is_some_and(|t| now.since(t) >= self.cfg.lease_duration) {
                        self.set_leader(false);
                        last_renewed = None;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
        if let Err(e) = self.release(Time::now_wall()).await {
            tracing::warn!(error = %e, "could not release the leader lease");
        }
    }
}
