//! The simulated GPU inventory: whole GPUs, MIG slices and time-slice slots,
//! each a *unit* that one instance may hold. Built from the same
//! [`GpuInventory`] lines as `floyd.yaml`'s `runtime.local.gpus`.

use crate::manifest::{GpuInventory, GpuRequest, GpuSharing};
use crate::runtime::GpuCapacity;

#[derive(Debug, Clone, PartialEq, Eq)]
enum UnitKind {
    Whole,
    Mig(String),
    Slot,
}

#[derive(Debug, Clone)]
struct Unit {
    id: String,
    product: String,
    memory_mib: Option<u64>,
    kind: UnitKind,
    /// `(service index, instance id)` holding it.
    holder: Option<(usize, u64)>,
}

/// Every GPU unit of the simulated machine(s).
#[derive(Debug, Clone, Default)]
pub struct GpuPool {
    units: Vec<Unit>,
}

impl GpuPool {
    pub fn new(inventory: &[GpuInventory]) -> GpuPool {
        let mut units = Vec::new();
        for line in inventory {
            for g in 0..line.count {
                let gpu = format!("{}#{g}", line.product);
                let unit = |id: String, kind: UnitKind| Unit {
                    id,
                    product: line.product.clone(),
                    memory_mib: line.memory_mib,
                    kind,
                    holder: None,
                };
                if !line.mig.is_empty() {
                    for (profile, slices) in &line.mig {
                        for s in 0..*slices {
                            units.push(unit(
                                format!("{gpu}/mig-{profile}#{s}"),
                                UnitKind::Mig(profile.clone()),
                            ));
                        }
                    }
                } else if let Some(slots) = line.time_sliced_replicas {
                    for s in 0..slots {
                        units.push(unit(format!("{gpu}/slot{s}"), UnitKind::Slot));
                    }
                } else {
                    units.push(unit(gpu, UnitKind::Whole));
                }
            }
        }
        GpuPool { units }
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    fn matches(u: &Unit, req: &GpuRequest) -> bool {
        let kind = match (&req.sharing, &u.kind) {
            (GpuSharing::Exclusive, UnitKind::Whole) | (GpuSharing::TimeSliced, UnitKind::Slot) => {
                true
            }
            (GpuSharing::Mig { profile }, UnitKind::Mig(p)) => profile == p,
            _ => false,
        };
        kind && req.product.as_ref().is_none_or(|p| *p == u.product)
            && match (req.memory_mib, u.memory_mib) {
                (Some(want), Some(have)) => have >= want,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }

    /// What the runtime reports for one service's request.
    pub fn capacity(&self, req: &GpuRequest, service: usize) -> GpuCapacity {
        let mut exist = 0;
        let mut free = 0;
        let mut held = 0;
        for u in self.units.iter().filter(|u| Self::matches(u, req)) {
            exist += 1;
            match u.holder {
                None => free += 1,
                Some((s, _)) if s == service => held += 1,
                Some(_) => {}
            }
        }
        let product = req.product.clone().unwrap_or_else(|| "any GPU".to_string());
        let kind = match &req.sharing {
            GpuSharing::Exclusive => product,
            GpuSharing::Mig { profile } => format!("mig-{profile}"),
            GpuSharing::TimeSliced => format!("{product} (time-sliced)"),
        };
        GpuCapacity {
            kind,
            exist,
            free,
            held_by_service: held,
        }
    }

    /// Takes `req.count` free matching units for an instance; `None` (and
    /// nothing taken) when there are not enough.
    pub fn allocate(
        &mut self,
        req: &GpuRequest,
        service: usize,
        instance: u64,
    ) -> Option<Vec<String>> {
        let picks: Vec<usize> = self
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.holder.is_none() && Self::matches(u, req))
            .map(|(i, _)| i)
            .take(req.count as usize)
            .collect();
        if picks.len() < req.count as usize {
            return None;
        }
        Some(
            picks
                .into_iter()
                .map(|i| {
                    self.units[i].holder = Some((service, instance));
                    self.units[i].id.clone()
                })
                .collect(),
        )
    }

    /// Frees what an instance held.
    pub fn release(&mut self, service: usize, instance: u64) {
        for u in &mut self.units {
            if u.holder == Some((service, instance)) {
                u.holder = None;
            }
        }
    }

    /// Units held by anyone.
    pub fn held(&self) -> usize {
        self.units.iter().filter(|u| u.holder.is_some()).count()
    }
    /// Units that exist.
    pub fn len(&self) -> usize {
        self.units.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn req(count: u32, product: Option<&str>, sharing: GpuSharing) -> GpuRequest {
        GpuRequest {
            count,
            product: product.map(Into::into),
            memory_mib: None,
            sharing,
            allow_in_place: true,
        }
    }

    #[test]
    fn kinds_do_not_mix() {
        let mut mig = BTreeMap::new();
        mig.insert("1g.10gb".to_string(), 7);
        let pool = GpuPool::new(&[
            GpuInventory {
                product: "A100".into(),
                memory_mib: Some(81920),
                count: 2,
                time_sliced_replicas: None,
                mig: BTreeMap::new(),
            },
            GpuInventory {
                product: "A100".into(),
                memory_mib: Some(81920),
                count: 1,
                time_sliced_replicas: None,
                mig,
            },
            GpuInventory {
                product: "T4".into(),
                memory_mib: None,
                count: 2,
                time_sliced_replicas: Some(4),
                mig: BTreeMap::new(),
            },
        ]);
        let whole = pool.capacity(&req(1, Some("A100"), GpuSharing::Exclusive), 0);
        assert_eq!(
            (whole.kind.as_str(), whole.exist, whole.free),
            ("A100", 2, 2)
        );
        let slices = pool.capacity(
            &req(
                1,
                None,
                GpuSharing::Mig {
                    profile: "1g.10gb".into(),
                },
            ),
            0,
        );
        assert_eq!((slices.kind.as_str(), slices.exist), ("mig-1g.10gb", 7));
        let slots = pool.capacity(&req(1, Some("T4"), GpuSharing::TimeSliced), 0);
        assert_eq!((slots.kind.as_str(), slots.exist), ("T4 (time-sliced)", 8));
        let h100 = pool.capacity(&req(1, Some("H100"), GpuSharing::Exclusive), 0);
        assert_eq!(h100.exist, 0);
    }

    #[test]
    fn allocate_is_all_or_nothing_and_release_frees() {
        let mut pool = GpuPool::new(&[GpuInventory {
            product: "A100".into(),
            memory_mib: None,
            count: 3,
            time_sliced_replicas: None,
            mig: BTreeMap::new(),
        }]);
        let r2 = req(2, None, GpuSharing::Exclusive);
        assert_eq!(pool.allocate(&r2, 0, 1).map(|v| v.len()), Some(2));
        assert_eq!(pool.allocate(&r2, 0, 2), None);
        assert_eq!(pool.held(), 2);
        let c = pool.capacity(&r2, 0);
        assert_eq!((c.free, c.held_by_service), (1, 2));
        assert_eq!(pool.capacity(&r2, 1).held_by_service, 0);
        pool.release(0, 1);
        assert_eq!(pool.held(), 0);
    }
}
