//! The simulated machine's GPUs: the same placement model as the local
//! runtime ([`crate::placement`]), built from the same [`GpuInventory`]
//! lines as `floyd.yaml`'s `runtime.local.gpus`, with holders named by the
//! simulator's service index and instance key.

use crate::manifest::{GpuInventory, GpuRequest};
use crate::model::GpuCapacity;
use crate::placement::{self, Holder};

/// Every GPU of the simulated machine(s).
#[derive(Debug, Clone, Default)]
pub struct GpuPool {
    pool: placement::GpuPool,
}

fn holder(service: usize, instance: u64) -> Holder {
    Holder {
        service: service.to_string(),
        instance: instance.to_string(),
    }
}

impl GpuPool {
    pub fn new(inventory: &[GpuInventory]) -> GpuPool {
        GpuPool {
            pool: placement::GpuPool::new(placement::devices_from_inventory(inventory)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pool.devices().is_empty()
    }

    /// What the runtime reports for one service's request.
    pub fn capacity(&self, req: &GpuRequest, service: usize) -> GpuCapacity {
        self.pool.capacity(req, &service.to_string())
    }

    /// Takes `req.count` free matching units for an instance; `None` (and
    /// nothing taken) when there are not enough.
    pub fn allocate(
        &mut self,
        req: &GpuRequest,
        service: usize,
        instance: u64,
    ) -> Option<Vec<String>> {
        self.pool
            .allocate(req, holder(service, instance))
            .ok()
            .map(|p| p.units)
    }

    /// Frees what an instance held.
    pub fn release(&mut self, service: usize, instance: u64) {
        self.pool.release(&holder(service, instance));
    }

    /// Units held by anyone.
    pub fn held(&self) -> usize {
        self.pool.held_units().len()
    }

    /// Devices that exist.
    pub fn len(&self) -> usize {
        self.pool.devices().len()
    }

    /// The shared pool (for tests comparing runtimes).
    pub fn placement(&self) -> &placement::GpuPool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::GpuSharing;
    use crate::manifest::ServiceName;
    use crate::runtime::kube::objects::{LABEL_INSTANCE, LABEL_SERVICE};
    use crate::runtime::kube::observe;
    use crate::runtime::local::gpu as local;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use proptest::prelude::*;
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

    fn line(product: &str, count: u32, slots: Option<u32>, mig: &[(&str, u32)]) -> GpuInventory {
        GpuInventory {
            product: product.into(),
            memory_mib: Some(81920),
            count,
            time_sliced_replicas: slots,
            mig: mig.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn a_device_is_offered_as_it_is_declared() {
        let pool = GpuPool::new(&[
            line("A100", 2, None, &[]),
            line("A100", 1, None, &[("1g.10gb", 7), ("3g.40gb", 1)]),
            line("T4", 2, Some(4), &[]),
        ]);
        let whole = pool.capacity(&req(1, Some("A100"), GpuSharing::Exclusive), 0);
        // The MIG device is not offered whole.
        assert_eq!(
            (whole.kind.as_str(), whole.exist, whole.free),
            ("A100", 2, 2)
        );
        let mig = |p: &str| GpuSharing::Mig { profile: p.into() };
        let slices = pool.capacity(&req(1, None, mig("1g.10gb")), 0);
        assert_eq!((slices.kind.as_str(), slices.exist), ("mig-1g.10gb", 7));
        let slots = pool.capacity(&req(1, Some("T4"), GpuSharing::TimeSliced), 0);
        assert_eq!((slots.kind.as_str(), slots.exist), ("T4 (time-sliced)", 8));
        // Time-sliced devices are not offered whole either.
        assert_eq!(
            pool.capacity(&req(1, Some("T4"), GpuSharing::Exclusive), 0)
                .exist,
            0
        );
        // Products match as nvidia-smi prints them too.
        assert_eq!(
            pool.capacity(&req(1, Some("a100"), GpuSharing::Exclusive), 0)
                .exist,
            2
        );
        let h100 = pool.capacity(&req(1, Some("H100"), GpuSharing::Exclusive), 0);
        assert_eq!(h100.exist, 0);
        // MIG profiles of one device coexist (MIG "mixed").
        let mut pool = pool;
        assert!(pool.allocate(&req(1, None, mig("3g.40gb")), 0, 1).is_some());
        assert_eq!(pool.capacity(&req(1, None, mig("1g.10gb")), 0).free, 7);
    }

    #[test]
    fn allocate_is_all_or_nothing_and_release_frees() {
        let mut pool = GpuPool::new(&[line("A100", 3, None, &[])]);
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

    fn inventory() -> impl Strategy<Value = Vec<GpuInventory>> {
        let one = (
            prop::sample::select(vec!["NVIDIA-A100-SXM4-80GB", "NVIDIA-L4", "Tesla-T4"]),
            prop::sample::select(vec![40960u64, 81920]),
            1u32..4,
            prop::option::of(1u32..5),
            prop::collection::btree_map(
                prop::sample::select(vec!["1g.10gb", "3g.40gb"]),
                1u32..8,
                0..3,
            ),
        )
            .prop_map(|(product, memory, count, slots, mig)| GpuInventory {
                product: product.to_string(),
                memory_mib: Some(memory),
                count,
                time_sliced_replicas: slots,
                mig: mig.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            });
        prop::collection::vec(one, 1..4)
    }

    /// The Kubernetes node standing for one inventory line, advertised as
    /// the NVIDIA device plugin and GPU feature discovery would, in one of
    /// the ways each sharing mode can be advertised (`how` picks).
    fn node_for(i: usize, line: &GpuInventory, how: u8) -> Node {
        let mut labels = serde_json::Map::new();
        let mut product = line.product.clone();
        let mut alloc = serde_json::Map::new();
        let n = line.count;
        if !line.mig.is_empty() {
            if line.mig.len() == 1 && how.is_multiple_of(2) {
                // MIG strategy `single`: nvidia.com/gpu are slices.
                let (p, k) = line.mig.iter().next().unwrap();
                product = format!("{product}-MIG-{p}");
                alloc.insert("nvidia.com/gpu".into(), (n * k).to_string().into());
            } else {
                for (p, k) in &line.mig {
                    alloc.insert(format!("nvidia.com/mig-{p}"), (n * k).to_string().into());
                }
            }
        } else if let Some(r) = line.time_sliced_replicas {
            let units = (n * r).to_string();
            labels.insert("nvidia.com/gpu.replicas".into(), r.to_string().into());
            match how % 3 {
                0 => {
                    alloc.insert("nvidia.com/gpu.shared".into(), units.into());
                }
                1 => {
                    product = format!("{product}-SHARED");
                    alloc.insert("nvidia.com/gpu".into(), units.into());
                }
                _ => {
                    labels.insert(
                        "nvidia.com/gpu.sharing-strategy".into(),
                        "time-slicing".into(),
                    );
                    alloc.insert("nvidia.com/gpu".into(), units.into());
                }
            }
        } else {
            alloc.insert("nvidia.com/gpu".into(), n.to_string().into());
        }
        labels.insert("nvidia.com/gpu.product".into(), product.into());
        let memory = line.memory_mib.unwrap_or(0).to_string();
        labels.insert("nvidia.com/gpu.memory".into(), memory.into());
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("node-{i}"), "labels": labels},
            "status": {"allocatable": alloc},
        }))
        .unwrap()
    }

    /// A pod of `service` (this install) bound to `node`, asking for
    /// `units` of `resource`.
    fn pod_on(name: &str, service: &str, node: &str, resource: &str, units: usize) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {LABEL_SERVICE: service, LABEL_INSTANCE: "a"}},
            "spec": {"nodeName": node, "containers": [{"name": "app",
                "resources": {"limits": {resource: units.to_string()}}}]},
            "status": {"phase": "Running"},
        }))
        .unwrap()
    }

    /// One step of demand: (service, take or release, count, product,
    /// sharing, memory).
    #[allow(clippy::type_complexity)]
    fn demand()
    -> impl Strategy<Value = Vec<(usize, bool, u32, Option<&'static str>, u8, Option<u64>)>> {
        prop::collection::vec(
            (
                0usize..3,
                prop::bool::weighted(0.7),
                1u32..3,
                prop::option::of(prop::sample::select(vec![
                    "NVIDIA-A100-SXM4-80GB",
                    "nvidia a100-sxm4-80gb",
                    "NVIDIA L4",
                    "Tesla-T4",
                ])),
                0u8..4,
                prop::option::of(prop::sample::select(vec![40960u64, 81920, 100_000])),
            ),
            1..40,
        )
    }

    fn sharing(k: u8) -> GpuSharing {
        match k {
            0 => GpuSharing::Exclusive,
            1 => GpuSharing::TimeSliced,
            2 => GpuSharing::Mig {
                profile: "1g.10gb".into(),
            },
            _ => GpuSharing::Mig {
                profile: "3g.40gb".into(),
            },
        }
    }

    proptest! {
        /// The simulator (`floyd simulate`, `floyd diff`'s predictions),
        /// the local runtime and the Kubernetes runtime's accounting agree
        /// on every demand sequence: the simulator and the local runtime
        /// place identically (the same units for each instance, the same
        /// refusals), and the Kubernetes runtime, given nodes advertising
        /// the same GPUs as the device plugin would and pods holding what
        /// was placed, reports the same capacity to the engine at every
        /// step.
        #[test]
        fn the_simulator_the_local_and_the_kube_runtime_place_identically(
            inv in inventory(),
            hows in prop::collection::vec(0u8..6, 4),
            steps in demand(),
        ) {
            let mut sim = GpuPool::new(&inv);
            // As the local runtime builds it (runtime/local: inventory → devices → pool).
            let mut loc = local::GpuPool::new(local::devices_from_inventory(&inv));
            let nodes: Vec<Node> = inv
                .iter()
                .enumerate()
                .map(|(i, l)| node_for(i, l, hows[i]))
                .collect();
            // Device index → the inventory line (node) it belongs to.
            let line_of: Vec<usize> = inv
                .iter()
                .enumerate()
                .flat_map(|(i, l)| std::iter::repeat_n(i, l.count as usize))
                .collect();
            let mut pods: Vec<(u64, Pod)> = Vec::new();
            let names = ["web", "api", "batch"];
            let services: Vec<ServiceName> =
                names.iter().map(|n| ServiceName::parse(n).unwrap()).collect();
            let mut live: Vec<(usize, u64)> = Vec::new();
            for (n, (svc, take, count, product, k, memory)) in steps.into_iter().enumerate() {
                let mut r = req(count, product, sharing(k));
                r.memory_mib = memory;
                if take || live.is_empty() {
                    let id = n as u64;
                    let a = sim.allocate(&r, svc, id);
                    let b = loc
                        .allocate(&r, local::Holder { service: names[svc].into(), instance: id.to_string() })
                        .ok()
                        .map(|p| p.units);
                    prop_assert_eq!(&a, &b, "step {} {:?}", n, r);
                    let Some(units) = a else { continue };
                    live.push((svc, id));
                    // What the scheduler would have bound: a pod per node
                    // asking for that node's units in the resource the
                    // Kubernetes runtime would put in the pod spec.
                    let mut per_node: BTreeMap<usize, usize> = BTreeMap::new();
                    for u in &units {
                        let dev: usize = u
                            .trim_start_matches("gpu")
                            .split('/')
                            .next()
                            .and_then(|d| d.parse().ok())
                            .unwrap();
                        *per_node.entry(line_of[dev]).or_default() += 1;
                    }
                    for (line, k) in per_node {
                        let scheme = observe::node_scheme(&nodes[line], &r);
                        prop_assert!(scheme.is_some(), "node-{} offers {:?}", line, r);
                        let resource = scheme.unwrap().resource;
                        let name = format!("{}-{id}-{line}", names[svc]);
                        let node = format!("node-{line}");
                        pods.push((id, pod_on(&name, names[svc], &node, &resource, k)));
                    }
                } else {
                    let (s, id) = live.remove(n % live.len());
                    sim.release(s, id);
                    loc.release(&local::Holder { service: names[s].into(), instance: id.to_string() });
                    // Finished pods free their GPUs as deleted ones do.
                    for (pid, p) in pods.iter_mut().filter(|(pid, _)| *pid == id) {
                        if pid.is_multiple_of(2) {
                            p.status.as_mut().unwrap().phase = Some("Succeeded".into());
                        }
                    }
                    pods.retain(|(pid, _)| *pid != id || pid.is_multiple_of(2));
                }
                let bound: Vec<Pod> = pods.iter().map(|(_, p)| p.clone()).collect();
                for (s, name) in names.iter().enumerate() {
                    let want = sim.capacity(&r, s);
                    prop_assert_eq!(&want, &loc.capacity(&r, name));
                    let kube = observe::gpu_capacity(&r, &nodes, &bound, "a", &services[s]);
                    prop_assert_eq!(&want, &kube, "step {} {:?} {}", n, r, name);
                }
            }
            prop_assert_eq!(sim.held(), loc.held_units().len());
        }
    }
}
