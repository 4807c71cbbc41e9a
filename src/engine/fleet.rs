//! The engine's working copy of a service's revisions: counts only, oldest
//! first, with the target marked. Strategy code scales revisions here; the
//! fleet records the resulting `Scale` actions and models what a scale-down
//! does to availability (the runtime removes unavailable instances first),
//! so several Kubernetes-style syncs can run within one `step`.

use crate::manifest::Revision;
use crate::model::{InstancePhase, ObservedRevision};
use crate::time::Time;

/// Counts of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rs {
    pub revision: Revision,
    pub created_at: Time,
    pub desired: u32,
    pub live: u32,
    pub ready: u32,
    pub available: u32,
    pub terminating: u32,
    /// Desired count as observed (before this step).
    pub observed_desired: u32,
    /// The runtime already has it (no `CreateRevision` needed).
    pub exists: bool,
}

impl Rs {
    pub fn from_observed(o: &ObservedRevision, min_ready_seconds: u32, now: Time) -> Rs {
        Self::from_observed_with_wake(o, min_ready_seconds, now, &mut None)
    }

    /// Like [`Rs::from_observed`], also lowering `next_available` to the
    /// earliest time a ready instance becomes available after `now`.
    pub fn from_observed_with_wake(
        o: &ObservedRevision,
        min_ready_seconds: u32,
        now: Time,
        next_available: &mut Option<Time>,
    ) -> Rs {
        let min_ready_ms = u64::from(min_ready_seconds) * 1000;
        let mut live = 0;
        let mut ready = 0;
        let mut available = 0;
        let mut terminating = 0;
        for i in &o.instances {
            if i.phase == InstancePhase::Terminating {
                terminating += 1;
                continue;
            }
            live += 1;
            if let Some(since) = i.ready_since {
                ready += 1;
                let at = Time(since.0.saturating_add(min_ready_ms));
                if at <= now {
                    available += 1;
                } else if next_available.is_none_or(|n| at < n) {
                    *next_available = Some(at);
                }
            }
        }
        Rs {
            revision: o.revision.clone(),
            created_at: o.created_at,
            desired: o.desired,
            live,
            ready,
            available,
            terminating,
            observed_desired: o.desired,
            exists: true,
        }
    }

    /// A revision with `desired` instances of which `available` are available
    /// (all live). For tables.
    pub fn counts(name: &str, created_at: Time, desired: u32, available: u32) -> Rs {
        Rs {
            revision: Revision::from(name),
            created_at,
            desired,
            live: desired,
            ready: available,
            available,
            terminating: 0,
            observed_desired: desired,
            exists: true,
        }
    }
}

/// All revisions of a service, oldest first, and which one is the target.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub rs: Vec<Rs>,
    /// Index of the target ("new") revision, when known.
    pub new: Option<usize>,
    /// Indices scaled during this step, in the order they were first scaled.
    pub touched: Vec<usize>,
}

impl Fleet {
    pub fn from_rs(rs: Vec<Rs>, new: Option<usize>) -> Fleet {
        Fleet {
            rs,
            new,
            touched: Vec::new(),
        }
    }

    /// Old revisions (every one but the target), oldest first.
    pub fn old(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rs.len()).filter(move |&i| Some(i) != self.new)
    }

    pub fn total_desired(&self) -> u32 {
        self.rs.iter().map(|r| r.desired).sum()
    }

    pub fn total_available(&self) -> u32 {
        self.rs.iter().map(|r| r.available).sum()
    }

    pub fn total_terminating(&self) -> u32 {
        self.rs.iter().map(|r| r.terminating).sum()
    }

    pub fn new_rs(&self) -> Option<&Rs> {
        self.new.map(|n| &self.rs[n])
    }

    /// Sets revision `i`'s desired count. A scale-down is modelled the way
    /// the instance manager does it: unavailable instances go first.
    pub fn scale(&mut self, i: usize, to: u32) {
        let rs = &mut self.rs[i];
        if rs.desired == to {
            return;
        }
        if to < rs.live {
            let removed = rs.live - to;
            let unavailable = rs.live - rs.available;
            let not_ready = rs.live - rs.ready;
            rs.available -= removed.saturating_sub(unavailable).min(rs.available);
            rs.ready -= removed.saturating_sub(not_ready).min(rs.ready);
            rs.live = to;
            rs.terminating += removed;
        }
        rs.desired = to;
        if !self.touched.contains(&i) {
            self.touched.push(i);
        }
    }

    /// Old revisions that still have live or terminating instances.
    pub fn old_instances(&self) -> u32 {
        self.old()
            .map(|i| self.rs[i].live + self.rs[i].terminating)
            .sum()
    }

    pub fn old_live(&self) -> u32 {
        self.old().map(|i| self.rs[i].live).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_down_removes_unavailable_first() {
        let mut r = Rs::counts("a", Time(0), 5, 3);
        r.ready = 4;
        let mut f = Fleet::from_rs(vec![r], None);
        f.scale(0, 3); // removes the 2 unavailable (1 not ready, 1 ready but not yet available)
        assert_eq!(
            (
                f.rs[0].live,
                f.rs[0].available,
                f.rs[0].ready,
                f.rs[0].terminating
            ),
            (3, 3, 3, 2)
        );
        f.scale(0, 1);
        assert_eq!(
            (f.rs[0].live, f.rs[0].available, f.rs[0].terminating),
            (1, 1, 4)
        );
        assert_eq!(f.touched, vec![0]);
    }
}
