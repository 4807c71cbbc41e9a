//! RollingUpdate arithmetic, following the Kubernetes Deployment controller
//! step for step (`ResolveFenceposts`, `NewRSNewReplicas`,
//! `reconcileOldReplicaSets`, `cleanupUnhealthyReplicas`,
//! `scaleDownOldReplicaSetsForRollingUpdate`, proportional `scale`).
//!
//! Everything here works on desired/available counts of a [`Fleet`]; it never
//! looks at time or instances. The strategy driver in `engine/mod.rs` decides
//! *when* to call these; this file decides *how much*.

use super::fleet::Fleet;
use crate::manifest::IntOrPercent;

/// `maxSurge` rounds up, `maxUnavailable` rounds down (Kubernetes'
/// `GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: IntOrPercent, replicas: u32, round_up: bool) -> u32 {
    match v {
        IntOrPercent::Int(n) => n,
        IntOrPercent::Percent(p) => {
            let num = u64::from(replicas) * u64::from(p);
            let q = if round_up {
                num.div_ceil(100)
            } else {
                num / 100
            };
            u32::try_from(q).unwrap_or(u32::MAX)
        }
    }
}

/// `(surge, unavailable)` for `replicas`, with Kubernetes' fallback: both 0
/// means unavailable 1 (so a rollout can always move).
pub fn fenceposts(surge: IntOrPercent, unavailable: IntOrPercent, replicas: u32) -> (u32, u32) {
    let s = scaled_value(surge, replicas, true);
    let u = scaled_value(unavailable, replicas, false);
    if s == 0 && u == 0 { (0, 1) } else { (s, u) }
}

/// Kubernetes' `MaxUnavailable`: never more than the replicas, 0 when there are none.
pub fn cap_unavailable(unavailable: u32, replicas: u32) -> u32 {
    if replicas == 0 {
        0
    } else {
        unavailable.min(replicas)
    }
}

/// Kubernetes' `NewRSNewReplicas` for RollingUpdate: the new revision's
/// desired count after one scale-up, given the total desired over all
/// revisions. `max_total` is `replicas + surge` (possibly lowered by GPU capacity).
pub fn new_rs_new_replicas(
    replicas: u32,
    max_total: u32,
    total_desired: u32,
    new_desired: u32,
) -> u32 {
    if total_desired >= max_total {
        return new_desired;
    }
    let up = (max_total - total_desired).min(replicas.saturating_sub(new_desired));
    new_desired + up
}

/// One "reconcile new" sync: scales the new revision up (or down to
/// `replicas` when it is above). Returns true when it changed something.
pub fn reconcile_new(fleet: &mut Fleet, replicas: u32, max_total: u32) -> bool {
    let Some(n) = fleet.new else { return false };
    let desired = fleet.rs[n].desired;
    if desired == replicas {
        return false;
    }
    if desired > replicas {
        fleet.scale(n, replicas);
        return true;
    }
    let to = new_rs_new_replicas(replicas, max_total, fleet.total_desired(), desired);
    if to == desired {
        return false;
    }
    fleet.scale(n, to);
    true
}

/// One "reconcile old" sync (Kubernetes' `reconcileOldReplicaSets`): first
/// remove old instances that are not available, then available ones, never
/// letting availability drop below `replicas - unavailable`. Returns true
/// when it changed something.
pub fn reconcile_old(fleet: &mut Fleet, replicas: u32, unavailable: u32) -> bool {
    let old_desired: u64 = fleet.old().map(|i| u64::from(fleet.rs[i].desired)).sum();
    if old_desired == 0 {
        return false;
    }
    let min_available = i64::from(replicas) - i64::from(unavailable);
    let new_unavailable = fleet
        .new
        .map(|n| i64::from(fleet.rs[n].desired) - i64::from(fleet.rs[n].available))
        .unwrap_or(0)
        .max(0);
    let max_scale_down = i64::from(fleet.total_desired()) - min_available - new_unavailable;
    if max_scale_down <= 0 {
        return false;
    }
    let cleaned = cleanup_unhealthy(fleet, max_scale_down as u32);
    let scaled = scale_down_old_available(fleet, min_available);
    cleaned + scaled > 0
}

/// Kubernetes' `cleanupUnhealthyReplicas`: lower old revisions (oldest
/// first) by their unavailable count (desired − available), at most
/// `max_cleanup` in total. Returns how many were removed.
pub fn cleanup_unhealthy(fleet: &mut Fleet, max_cleanup: u32) -> u32 {
    let mut total = 0u32;
    let olds: Vec<usize> = fleet.old().collect();
    for i in olds {
        if total >= max_cleanup {
            break;
        }
        let rs = &fleet.rs[i];
        if rs.desired == 0 || rs.desired == rs.available {
            continue;
        }
        let n = (max_cleanup - total).min(rs.desired.saturating_sub(rs.available));
        let to = rs.desired - n;
        fleet.scale(i, to);
        total += n;
    }
    total
}

/// Kubernetes' `scaleDownOldReplicaSetsForRollingUpdate`: with the
/// availability over all revisions, remove old instances (oldest revision
/// first) down to `min_available`. Returns how many were removed.
pub fn scale_down_old_available(fleet: &mut Fleet, min_available: i64) -> u32 {
    let available = i64::from(fleet.total_available());
    if available <= min_available {
        return 0;
    }
    let budget = (available - min_available) as u64;
    let mut total = 0u64;
    let olds: Vec<usize> = fleet.old().collect();
    for i in olds {
        if total >= budget {
            break;
        }
        let d = fleet.rs[i].desired;
        if d == 0 {
            continue;
        }
        let n = u64::from(d).min(budget - total) as u32;
        fleet.scale(i, d - n);
        total += u64::from(n);
    }
    total as u32
}

/// Kubernetes' proportional scaling (`scale` in sync.go) when `replicas`
/// changed mid-rollout. `prev_max` is `replicas + surge` at the previous
/// step (Kubernetes keeps it in the `max-replicas` annotation); `surge` is
/// the current one. Returns true when it changed something.
pub fn proportional_scale(fleet: &mut Fleet, replicas: u32, surge: u32, prev_max: u32) -> bool {
    let active: Vec<usize> = (0..fleet.rs.len())
        .filter(|&i| fleet.rs[i].desired > 0)
        .collect();
    // One active revision (or none): it (or the newest) simply takes `replicas`.
    if active.len() <= 1 {
        let pick = active
            .first()
            .copied()
            .or(fleet.new)
            .or(fleet.rs.len().checked_sub(1));
        if let Some(i) = pick
            && fleet.rs[i].desired != replicas
        {
            fleet.scale(i, replicas);
            return true;
        }
        return false;
    }
    // The new revision is saturated: the old ones go.
    if let Some(n) = fleet.new {
        let rs = &fleet.rs[n];
        if rs.desired == replicas && rs.available >= replicas {
            let mut changed = false;
            for i in active {
                if i != n {
                    fleet.scale(i, 0);
                    changed = true;
                }
            }
            return changed;
        }
    }
    let allowed = if replicas > 0 {
        i64::from(replicas) + i64::from(surge)
    } else {
        0
    };
    let total: i64 = active.iter().map(|&i| i64::from(fleet.rs[i].desired)).sum();
    let to_add = allowed - total;
    if to_add == 0 {
        return false;
    }
    let mut order = active;
    // Scaling up favours the largest, then the newest; down the largest, then the oldest.
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&fleet.rs[a], &fleet.rs[b]);
        rb.desired.cmp(&ra.desired).then_with(|| {
            if to_add > 0 {
                rb.created_at.cmp(&ra.created_at)
            } else {
                ra.created_at.cmp(&rb.created_at)
            }
        })
    });
    let deployment_replicas = i64::from(replicas) + i64::from(surge);
    let annotated = if prev_max > 0 {
        i64::from(prev_max)
    } else {
        total
    };
    let mut added = 0i64;
    let mut sizes: Vec<i64> = Vec::with_capacity(order.len());
    for &i in &order {
        let d = i64::from(fleet.rs[i].desired);
        let p = proportion(d, replicas, deployment_replicas, annotated, to_add, added);
        sizes.push(d + p);
        added += p;
    }
    if let Some(first) = sizes.first_mut() {
        *first = (*first + to_add - added).max(0);
    }
    let mut changed = false;
    for (k, &i) in order.iter().enumerate() {
        let to = u32::try_from(sizes[k].max(0)).unwrap_or(u32::MAX);
        if to != fleet.rs[i].desired {
            fleet.scale(i, to);
            changed = true;
        }
    }
    changed
}

/// Kubernetes' `GetProportion` + `getReplicaSetFraction`.
fn proportion(
    desired: i64,
    replicas: u32,
    deployment_replicas: i64,
    annotated: i64,
    to_add: i64,
    added: i64,
) -> i64 {
    if desired == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if replicas == 0 {
        -desired
    } else if annotated == 0 {
        0
    } else {
        ((desired * deployment_replicas) as f64 / annotated as f64).round() as i64 - desired
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fleet::{Fleet, Rs};
    use crate::time::Time;
    use IntOrPercent::{Int, Percent};

    fn rs(name: &str, created: u64, desired: u32, available: u32) -> Rs {
        Rs::counts(name, Time(created), desired, available)
    }

    /// Kubernetes' deployment_util_test `TestResolveFenceposts` and friends.
    #[test]
    fn fencepost_table() {
        let cases: &[(IntOrPercent, IntOrPercent, u32, (u32, u32))] = &[
            (Int(0), Int(0), 10, (0, 1)),
            (Int(1), Int(0), 10, (1, 0)),
            (Int(0), Int(1), 10, (0, 1)),
            (Percent(25), Percent(25), 10, (3, 2)),
            (Percent(25), Percent(25), 4, (1, 1)),
            (Percent(25), Percent(25), 1, (1, 0)),
            (Percent(25), Percent(25), 0, (0, 1)),
            (Percent(10), Percent(10), 1, (1, 0)),
            (Percent(0), Percent(10), 5, (0, 1)),
            (Percent(50), Percent(50), 3, (2, 1)),
            (Percent(100), Percent(0), 7, (7, 0)),
            (Int(3), Int(2), 10, (3, 2)),
            (Percent(1), Percent(1), 99, (1, 0)),
            (Percent(1), Percent(1), 100, (1, 1)),
        ];
        for &(s, u, r, want) in cases {
            assert_eq!(
                fenceposts(s, u, r),
                want,
                "surge {s:?} unavailable {u:?} replicas {r}"
            );
        }
    }

    #[test]
    fn cap_unavailable_table() {
        for &(u, r, want) in &[(1u32, 0u32, 0u32), (5, 3, 3), (2, 10, 2), (0, 10, 0)] {
            assert_eq!(cap_unavailable(u, r), want, "unavailable {u} replicas {r}");
        }
    }

    /// Kubernetes' `TestNewRSNewReplicas`.
    #[test]
    fn new_rs_new_replicas_table() {
        // (replicas, surge, new desired, old desired, expected)
        let cases: &[(u32, u32, u32, u32, u32)] = &[
            (1, 1, 5, 5, 5),   // can not scale up: already above the total
            (6, 10, 2, 4, 6),  // scale up to replicas
            (10, 2, 0, 10, 2), // surge bounds it
            (10, 2, 0, 5, 7),
            (10, 2, 2, 10, 2), // surge saturated
            (10, 0, 0, 10, 0),
        ];
        for &(r, s, n, o, want) in cases {
            assert_eq!(
                new_rs_new_replicas(r, r + s, n + o, n),
                want,
                "R={r} surge={s} new={n} old={o}"
            );
        }
    }

    /// Kubernetes' `TestDeploymentController_reconcileNewReplicaSet` (the
    /// cases without pod-replacement policies).
    #[test]
    fn reconcile_new_table() {
        // (replicas, surge, old, new, expected new or None for "no scale")
        let cases: &[(u32, u32, u32, u32, Option<u32>)] = &[
            (10, 0, 10, 0, None),
            (10, 2, 10, 0, Some(2)),
            (10, 2, 5, 0, Some(7)),
            (10, 2, 10, 2, None),
            (10, 2, 2, 11, Some(10)),
        ];
        for &(r, s, o, n, want) in cases {
            let mut f = Fleet::from_rs(vec![rs("old", 1, o, o), rs("new", 2, n, 0)], Some(1));
            let changed = reconcile_new(&mut f, r, r + s);
            assert_eq!(changed, want.is_some(), "R={r} surge={s} old={o} new={n}");
            assert_eq!(f.rs[1].desired, want.unwrap_or(n));
        }
    }

    /// Kubernetes' `TestDeploymentController_reconcileOldReplicaSets` (maxSurge 0).
    #[test]
    #[allow(clippy::type_complexity)]
    fn reconcile_old_table() {
        // (replicas, unavailable (configured), old, new, old available, new available, expected old)
        let cases: &[(u32, u32, u32, u32, u32, u32, Option<u32>)] = &[
            (10, 0, 10, 0, 10, 0, Some(9)),
            (10, 2, 10, 0, 10, 0, Some(8)),
            (10, 2, 10, 0, 8, 0, Some(8)), // unhealthy ones cleaned up
            (10, 2, 10, 0, 9, 0, Some(8)), // 1 unhealthy cleaned, 1 ready removed
            (10, 2, 8, 2, 8, 0, None),     // new unavailable blocks it
        ];
        for &(r, u, o, n, oa, na, want) in cases {
            let (_, unav) = fenceposts(Int(0), Int(u), r);
            let mut f = Fleet::from_rs(vec![rs("old", 1, o, oa), rs("new", 2, n, na)], Some(1));
            let changed = reconcile_old(&mut f, r, cap_unavailable(unav, r));
            assert_eq!(changed, want.is_some(), "case {:?}", (r, u, o, n, oa, na));
            assert_eq!(f.rs[0].desired, want.unwrap_or(o));
        }
    }

    /// Kubernetes' `TestDeploymentController_cleanupUnhealthyReplicas`.
    #[test]
    fn cleanup_unhealthy_table() {
        // (old desired, available, max cleanup, expected removed)
        for &(o, a, max, want) in &[
            (10u32, 8u32, 1u32, 1u32),
            (10, 8, 3, 2),
            (10, 8, 0, 0),
            (10, 10, 3, 0),
        ] {
            let mut f = Fleet::from_rs(vec![rs("old", 1, o, a)], None);
            assert_eq!(
                cleanup_unhealthy(&mut f, max),
                want,
                "old {o} available {a} max {max}"
            );
            assert_eq!(f.rs[0].desired, o - want);
        }
    }

    /// Kubernetes' `TestScaleDownOldReplicaSets`-style cases: oldest first, bounded by availability.
    #[test]
    fn scale_down_old_oldest_first() {
        let mut f = Fleet::from_rs(
            vec![rs("v1", 1, 3, 3), rs("v2", 2, 4, 4), rs("v3", 3, 5, 5)],
            Some(2),
        );
        // 12 available, min 7 → remove 5, oldest first: v1 3→0, v2 4→2.
        assert_eq!(scale_down_old_available(&mut f, 7), 5);
        assert_eq!(
            (f.rs[0].desired, f.rs[1].desired, f.rs[2].desired),
            (0, 2, 5)
        );
    }

    /// Kubernetes' `TestScale` (sync_test.go): proportional scaling.
    #[test]
    fn proportional_scaling_table() {
        struct Case {
            name: &'static str,
            replicas: u32,
            surge: u32,
            prev_max: u32,
            new: Option<u32>,
            olds: &'static [u32],
            want_new: Option<u32>,
            want_olds: &'static [u32],
        }
        let cases = [
            Case {
                name: "10 -> 12",
                replicas: 12,
                surge: 0,
                prev_max: 10,
                new: Some(10),
                olds: &[],
                want_new: Some(12),
                want_olds: &[],
            },
            Case {
                name: "10 -> 5",
                replicas: 5,
                surge: 0,
                prev_max: 10,
                new: Some(10),
                olds: &[],
                want_new: Some(5),
                want_olds: &[],
            },
            Case {
                name: "5 -> 10",
                replicas: 10,
                surge: 0,
                prev_max: 5,
                new: Some(2),
                olds: &[3],
                want_new: Some(4),
                want_olds: &[6],
            },
            Case {
                name: "5 -> 3",
                replicas: 3,
                surge: 0,
                prev_max: 5,
                new: Some(2),
                olds: &[3],
                want_new: Some(1),
                want_olds: &[2],
            },
            Case {
                name: "9 -> 4",
                replicas: 4,
                surge: 0,
                prev_max: 9,
                new: Some(8),
                olds: &[1],
                want_new: Some(4),
                want_olds: &[0],
            },
            Case {
                name: "7 -> 10",
                replicas: 10,
                surge: 0,
                prev_max: 7,
                new: Some(2),
                olds: &[3, 2],
                want_new: Some(3),
                want_olds: &[4, 3],
            },
            Case {
                name: "13 -> 8",
                replicas: 8,
                surge: 0,
                prev_max: 13,
                new: Some(2),
                olds: &[8, 3],
                want_new: Some(1),
                want_olds: &[5, 2],
            },
            Case {
                name: "leftover 3 -> 4",
                replicas: 4,
                surge: 0,
                prev_max: 3,
                new: Some(1),
                olds: &[1, 1],
                want_new: Some(2),
                want_olds: &[1, 1],
            },
            Case {
                name: "leftover 3 -> 2",
                replicas: 2,
                surge: 0,
                prev_max: 3,
                new: Some(1),
                olds: &[1, 1],
                want_new: Some(1),
                want_olds: &[0, 1],
            },
            Case {
                name: "no new 4 -> 5",
                replicas: 5,
                surge: 0,
                prev_max: 4,
                new: None,
                olds: &[2, 2],
                want_new: None,
                want_olds: &[2, 3],
            },
            Case {
                name: "6 -> 0",
                replicas: 0,
                surge: 0,
                prev_max: 6,
                new: Some(3),
                olds: &[3],
                want_new: Some(0),
                want_olds: &[0],
            },
            Case {
                name: "surge 10 -> 20",
                replicas: 20,
                surge: 2,
                prev_max: 12,
                new: Some(6),
                olds: &[6],
                want_new: Some(11),
                want_olds: &[11],
            },
            Case {
                name: "surge and size 10 -> 50",
                replicas: 50,
                surge: 6,
                prev_max: 13,
                new: Some(5),
                olds: &[8],
                want_new: Some(22),
                want_olds: &[34],
            },
        ];
        for c in cases {
            let mut v: Vec<Rs> = c
                .olds
                .iter()
                .enumerate()
                .map(|(k, &d)| rs(&format!("old{k}"), k as u64 + 1, d, d))
                .collect();
            let new = c.new.map(|d| {
                v.push(rs("new", 100, d, 0));
                v.len() - 1
            });
            let mut f = Fleet::from_rs(v, new);
            proportional_scale(&mut f, c.replicas, c.surge, c.prev_max);
            let olds: Vec<u32> = (0..c.olds.len()).map(|i| f.rs[i].desired).collect();
            assert_eq!(olds, c.want_olds, "{}: olds", c.name);
            assert_eq!(new.map(|n| f.rs[n].desired), c.want_new, "{}: new", c.name);
        }
    }
}
