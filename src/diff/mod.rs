//! Desired release vs observed state, per service: create, scale, new
//! revision (rollout), delete (prune), unchanged. Pure: no I/O, no clock.
//!
//! "Current" for a service is the revision the controller last aimed at
//! (its rollout target, from the store) when it has one, otherwise the
//! newest observed revision that still has instances: a restarted
//! controller adopting a runtime it did not start sees what runs.

use crate::manifest::{Release, Revision, ServiceName};
use crate::model::Observed;
use std::collections::BTreeMap;

/// What a sync must do for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The runtime has nothing of it: first rollout.
    Create {
        revision: Revision,
    },
    /// Same revision, different replica count.
    Scale {
        revision: Revision,
        from: u32,
        to: u32,
    },
    /// A new instance template: a rollout from `from` (if any) to `to`.
    NewRevision {
        from: Option<Revision>,
        to: Revision,
    },
    /// In the runtime but no longer in Git, and `prune` is on.
    Delete,
    /// In the runtime but no longer in Git, and `prune: false`: left alone.
    Orphan,
    Unchanged,
}

impl Change {
    pub fn as_str(&self) -> &'static str {
        match self {
            Change::Create { .. } => "create",
            Change::Scale { .. } => "scale",
            Change::NewRevision { .. } => "rollout",
            Change::Delete => "delete",
            Change::Orphan => "orphan",
            Change::Unchanged => "unchanged",
        }
    }
}

/// Plans a sync. `observed` holds every service the runtime runs (services
/// the runtime does not know may be missing); `last_target` is the revision
/// the controller last aimed at per service. The result is sorted by name.
pub fn plan(
    release: &Release,
    observed: &BTreeMap<ServiceName, Observed>,
    last_target: &BTreeMap<ServiceName, Revision>,
) -> Vec<(ServiceName, Change)> {
    let mut out: BTreeMap<ServiceName, Change> = BTreeMap::new();
    for svc in &release.services {
        let obs = observed.get(&svc.name);
        let has_any = obs.is_some_and(|o| !o.revisions.is_empty());
        let current = last_target
            .get(&svc.name)
            .cloned()
            .or_else(|| obs.and_then(newest_running));
        let change = match current {
            None if !has_any => Change::Create {
                revision: svc.revision.clone(),
            },
            None => Change::NewRevision {
                from: None,
                to: svc.revision.clone(),
            },
            Some(cur) if cur != svc.revision => Change::NewRevision {
                from: Some(cur),
                to: svc.revision.clone(),
            },
            Some(cur) => {
                let desired = obs
                    .and_then(|o| o.revision(&cur))
                    .map(|r| r.desired)
                    .unwrap_or(0);
                if !has_any {
                    // The controller remembers a target but the runtime lost
                    // everything (wiped, new cluster): start again.
                    Change::Create { revision: cur }
                } else if desired != svc.spec.replicas && svc.spec.autoscaling.is_none() {
                    // (An autoscaled service's count is its autoscaler's.)
                    Change::Scale {
                        revision: cur,
                        from: desired,
                        to: svc.spec.replicas,
                    }
                } else {
                    Change::Unchanged
                }
            }
        };
        out.insert(svc.name.clone(), change);
    }
    for (name, obs) in observed {
        if out.contains_key(name) || obs.revisions.is_empty() {
            continue;
        }
        out.insert(
            name.clone(),
            if release.prune {
                Change::Delete
            } else {
                Change::Orphan
            },
        );
    }
    out.into_iter().collect()
}

/// The newest revision that is asked to keep instances.
fn newest_running(o: &Observed) -> Option<Revision> {
    o.revisions
        .iter()
        .filter(|r| r.desired > 0)
        .max_by_key(|r| r.created_at)
        .map(|r| r.revision.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{InstanceTemplate, Service, ServiceSpec};
    use crate::model::ObservedRevision;
    use crate::time::Time;

    fn name(s: &str) -> ServiceName {
        ServiceName::parse(s).unwrap()
    }
    fn svc(n: &str, rev: &str, replicas: u32) -> Service {
        Service {
            name: name(n),
            revision: Revision(rev.into()),
            spec: ServiceSpec::with_defaults(replicas, InstanceTemplate::command(["x"])),
            file: None,
        }
    }
    fn obs(revs: &[(&str, u32, u64)]) -> Observed {
        Observed {
            revisions: revs
                .iter()
                .map(|(r, desired, created)| ObservedRevision {
                    revision: Revision((*r).into()),
                    created_at: Time(*created),
                    desired: *desired,
                    instances: vec![],
                    template: InstanceTemplate::default(),
                })
                .collect(),
            ..Observed::default()
        }
    }
    fn rev(s: &str) -> Revision {
        Revision(s.into())
    }

    #[test]
    fn table() {
        struct Case {
            what: &'static str,
            release: Vec<Service>,
            prune: bool,
            observed: Vec<(&'static str, Observed)>,
            last: Vec<(&'static str, &'static str)>,
            want: Vec<(&'static str, Change)>,
        }
        let cases = vec![
            Case {
                what: "new service",
                release: vec![svc("web", "a", 2)],
                prune: true,
                observed: vec![],
                last: vec![],
                want: vec![("web", Change::Create { revision: rev("a") })],
            },
            Case {
                what: "unchanged",
                release: vec![svc("web", "a", 2)],
                prune: true,
                observed: vec![("web", obs(&[("a", 2, 1)]))],
                last: vec![("web", "a")],
                want: vec![("web", Change::Unchanged)],
            },
            Case {
                what: "replicas only is a scale",
                release: vec![svc("web", "a", 5)],
                prune: true,
                observed: vec![("web", obs(&[("a", 2, 1)]))],
                last: vec![("web", "a")],
                want: vec![(
                    "web",
                    Change::Scale {
                        revision: rev("a"),
                        from: 2,
                        to: 5,
                    },
                )],
            },
            Case {
                what: "new template is a rollout from the last target",
                release: vec![svc("web", "b", 2)],
                prune: true,
                observed: vec![("web", obs(&[("a", 2, 1)]))],
                last: vec![("web", "a")],
                want: vec![(
                    "web",
                    Change::NewRevision {
                        from: Some(rev("a")),
                        to: rev("b"),
                    },
                )],
            },
            Case {
                what: "no memory: adopt the newest running revision",
                release: vec![svc("web", "c", 2)],
                prune: true,
                observed: vec![("web", obs(&[("a", 0, 1), ("b", 2, 2)]))],
                last: vec![],
                want: vec![(
                    "web",
                    Change::NewRevision {
                        from: Some(rev("b")),
                        to: rev("c"),
                    },
                )],
            },
            Case {
                what: "no memory, adopted revision equals Git",
                release: vec![svc("web", "b", 2)],
                prune: true,
                observed: vec![("web", obs(&[("a", 0, 1), ("b", 2, 2)]))],
                last: vec![],
                want: vec![("web", Change::Unchanged)],
            },
            Case {
                what: "in-flight rollout to the same target is unchanged",
                release: vec![svc("web", "b", 2)],
                prune: true,
                observed: vec![("web", obs(&[("a", 2, 1), ("b", 2, 2)]))],
                last: vec![("web", "b")],
                want: vec![("web", Change::Unchanged)],
            },
            Case {
                what: "runtime wiped: create again",
                release: vec![svc("web", "b", 2)],
                prune: true,
                observed: vec![],
                last: vec![("web", "b")],
                want: vec![("web", Change::Create { revision: rev("b") })],
            },
            Case {
                what: "removed from Git with prune",
                release: vec![svc("web", "a", 2)],
                prune: true,
                observed: vec![("web", obs(&[("a", 2, 1)])), ("old", obs(&[("z", 1, 1)]))],
                last: vec![("web", "a")],
                want: vec![("old", Change::Delete), ("web", Change::Unchanged)],
            },
            Case {
                what: "removed from Git without prune",
                release: vec![],
                prune: false,
                observed: vec![("old", obs(&[("z", 1, 1)])), ("gone", Observed::default())],
                last: vec![],
                want: vec![("old", Change::Orphan)],
            },
        ];
        for c in cases {
            let release = Release {
                services: c.release,
                prune: c.prune,
                ..Release::default()
            };
            let observed = c.observed.into_iter().map(|(n, o)| (name(n), o)).collect();
            let last = c.last.into_iter().map(|(n, r)| (name(n), rev(r))).collect();
            let got = plan(&release, &observed, &last);
            let want: Vec<_> = c.want.into_iter().map(|(n, ch)| (name(n), ch)).collect();
            assert_eq!(got, want, "{}", c.what);
        }
    }
}
