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
//! # Never two leaders
//!
//! As client-go's elector: every Lease call has a deadline, and a leader
//! that has not renewed successfully within `renew_deadline` (shorter than
//! `lease_duration`) of the start of its last successful renewal stops
//! leading, whether its calls fail or hang. A standby takes over only after
//! it has seen the record unchanged for `lease_duration`, which starts no
//! earlier than that renewal was sent. So the old leader has stopped at
//! least `lease_duration - renew_deadline` before a standby can lead
//! (assuming the two clocks run at the same rate, not that they agree).
//! [`LeaderElector::is_leader`] checks that deadline itself, so it turns
//! false on time even if the election task is starved, and
//! [`Leadership`] hands the same check to the runtime, which refuses writes
//! without it ([`super::KubeRuntime::with_leadership`]).
//!
//! Owns: the Lease object named in [`LeaseConfig`]. Must not: decide
//! anything about rollouts; the controller reads [`LeaderElector::is_leader`].

use super::Error;
use super::objects::{floyd_time, jiff_time};
use crate::time::Time;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Timings and names of one election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease object's name (the chart uses `<release>-floyd`... or `floyd-leader`).
    pub lease_name: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// Install identity, written as the Lease's `floyd.dev/instance` label.
    pub instance: String,
    /// A leader that has not renewed for this long may be replaced (default 15 s).
    pub lease_duration: Duration,
    /// A leader stops leading when it has not renewed within this long of
    /// its last successful renewal; also the deadline of every Lease call
    /// (default 10 s; must be shorter than `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby retries (default 2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(lease_name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            lease_name: lease_name.to_string(),
            identity: identity.to_string(),
            instance: super::objects::DEFAULT_INSTANCE.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the timings as client-go does: `lease_duration >
    /// renew_deadline > retry_period > 0`. The error names the settings.
    pub fn check(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("the lease retry period must be more than 0".into());
        }
        if self.renew_deadline <= self.retry_period {
            return Err(format!(
                "the lease renew deadline ({:?}) must be longer than the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?}): the old leader must stop before a standby may take over",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.lease_name.is_empty() {
            return Err("the lease name must not be empty".into());
        }
        Ok(())
    }
}

/// Whether a replica may act as the leader right now: the elector's flag
/// and its renew deadline, checked at the moment of asking. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    flag: watch::Receiver<bool>,
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Leading, and the last successful renewal is recent enough.
    pub fn holds(&self) -> bool {
        *self.flag.borrow()
            && self
                .valid_until
                .lock()
                .ok()
                .and_then(|v| *v)
                .is_some_and(|until| Instant::now() < until)
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
    /// Start of the last successful renewal + `renew_deadline`.
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, namespace: &str, cfg: LeaseConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            cfg,
            leader: watch::Sender::new(false),
            seen: Mutex::new(None),
            valid_until: Arc::new(Mutex::new(None)),
        }
    }

    /// The leadership check for the runtime's writes.
    pub fn leadership(&self) -> Leadership {
        Leadership {
            flag: self.leader.subscribe(),
            valid_until: self.valid_until.clone(),
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// Whether this candidate currently holds the lease and renewed it
    /// within the renew deadline.
    pub fn is_leader(&self) -> bool {
        self.leadership().holds()
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
        if !v && let Ok(mut u) = self.valid_until.lock() {
            *u = None;
        }
        self.leader.send_if_modified(|cur| {
            let changed = *cur != v;
            *cur = v;
            changed
        });
    }

    fn lease_secs(&self) -> i32 {
        self.cfg.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    /// One round with the deadline of [`Self::round`], starting now:
    /// create the lease, renew it, or take it over when its holder let it
    /// expire. Returns whether this candidate leads afterwards. `now` is the
    /// local wall clock (a parameter, so tests can move it).
    pub async fn try_acquire_or_renew(&self, now: Time) -> Result<bool, Error> {
        self.round(Instant::now(), now).await
    }

    /// The calls of one round, without deadline or leadership bookkeeping.
    async fn attempt(&self, now: Time) -> Result<bool, Error> {
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
                        [
                            (
                                super::objects::LABEL_MANAGED_BY.to_string(),
                                super::objects::MANAGED_BY.to_string(),
                            ),
                            (
                                super::objects::LABEL_INSTANCE.to_string(),
                                self.cfg.instance.clone(),
                            ),
                        ]
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
                Ok(_) => Ok(true),
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
            Ok(_) => Ok(true),
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

    /// One round with a deadline: [`Self::try_acquire_or_renew`] started at
    /// `started` (monotonic) and `now` (wall clock, written to the Lease).
    /// A success extends leadership to `started + renew_deadline`; a
    /// failure or a timeout leaves the deadline where it was, so a leader
    /// that cannot renew steps down on time.
    pub async fn round(&self, started: Instant, now: Time) -> Result<bool, Error> {
        let leading = self.is_leader();
        // A leader's call may not outlive its leadership; a standby's may
        // take a whole renew deadline.
        let limit = match self.valid_until.lock().ok().and_then(|v| *v) {
            Some(until) if leading => until.saturating_duration_since(started),
            _ => self.cfg.renew_deadline,
        };
        let result = match tokio::time::timeout(limit, self.attempt(now)).await {
            Ok(r) => r,
            Err(_) => Err(self.err(format!(
                "no answer within {limit:?} (renew deadline {:?})",
                self.cfg.renew_deadline
            ))),
        };
        match &result {
            Ok(true) => {
                if let Ok(mut u) = self.valid_until.lock() {
                    *u = Some(started + self.cfg.renew_deadline);
                }
                // Announce after the deadline is set: `holds()` is true now.
                self.leader.send_replace(true);
                if !self.is_leader() {
                    // The call took the whole deadline: leading has expired already.
                    self.set_leader(false);
                }
            }
            Ok(false) => self.set_leader(false),
            Err(_) => {
                if !self.is_leader() {
                    self.set_leader(false);
                }
            }
        }
        result
    }

    /// Runs the election until `shutdown`, then releases the lease. A
    /// leader that cannot renew within the renew deadline steps down (see
    /// the module docs); a standby retries every retry period.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let started = Instant::now();
            if let Err(e) = self.round(started, Time::now_wall()).await {
                tracing::warn!(error = %e, "leader election round failed");
            }
            // Wake up at the renew deadline too, to step down on time even
            // between rounds.
            let mut next = started + self.cfg.retry_period;
            if let Some(until) = self.valid_until.lock().ok().and_then(|v| *v)
                && until < next
            {
                next = until;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            if !self.is_leader() && *self.leader.borrow() {
                tracing::warn!(
                    lease = %self.cfg.lease_name,
                    "could not renew the leader lease within the renew deadline; stepping down"
                );
                self.set_leader(false);
            }
        }
        let release = tokio::time::timeout(self.cfg.renew_deadline, self.release(Time::now_wall()));
        match release.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader lease"),
            Err(_) => tracing::warn!("could not release the leader lease: no answer in time"),
        }
    }
}
