//! GPU placement, one model for every runtime: the simulator
//! (`floyd simulate`, predictions), the local runtime and the benchmarks
//! place GPU requests with this pool, and the Kubernetes runtime counts its
//! nodes' GPUs and its pods' holdings with it
//! (`runtime::kube::observe::gpu_pool`), so what `floyd simulate` and
//! `floyd diff` predict is what each runtime does. A property test
//! (`runtime::sim::gpu`) checks the three agree on random inventories and
//! demand. Pure bookkeeping: no I/O.
//!
//! A device is a physical (or declared) GPU, offered the way a Kubernetes
//! node with NVIDIA's device plugin advertises it: a device that declares
//! MIG profiles offers only MIG slices (`gpu0/mig-1g.10gb/2`; slices of
//! different profiles coexist, MIG "mixed"), one that declares
//! `timeSlicedReplicas` offers only time-slice slots (`gpu0/slot1`), any
//! other offers itself whole (`gpu0`) to exclusive requests. Products match after
//! normalisation (spaces to `-`) and without regard to case; memory matches
//! when the device has at least what is asked.

use crate::manifest::{GpuInventory, GpuRequest, GpuSharing};
use crate::model::GpuCapacity;
use std::collections::{BTreeMap, BTreeSet};

/// One physical (or declared) GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    pub index: u32,
    /// `GPU-…` from nvidia-smi; `None` for declared devices.
    pub uuid: Option<String>,
    /// Product name with spaces replaced by '-' (the GPU feature discovery label form).
    pub product: String,
    pub memory_mib: Option<u64>,
    pub time_sliced_replicas: Option<u32>,
    pub mig: BTreeMap<String, u32>,
}

/// Normalises a product name: nvidia-smi prints `NVIDIA A100-SXM4-80GB`,
/// labels and manifests say `NVIDIA-A100-SXM4-80GB`.
pub fn normalize_product(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join("-")
}

/// Devices of a declared inventory, numbered in order.
pub fn devices_from_inventory(inv: &[GpuInventory]) -> Vec<GpuDevice> {
    let mut out = Vec::new();
    for line in inv {
        for _ in 0..line.count {
            out.push(GpuDevice {
                index: out.len() as u32,
                uuid: None,
                product: normalize_product(&line.product),
                memory_mib: line.memory_mib,
                time_sliced_replicas: line.time_sliced_replicas,
                mig: line.mig.clone(),
            });
        }
    }
    out
}

/// How a GPU kind is named in messages and [`GpuCapacity::kind`] (the
/// Kubernetes runtime names a request without a product by its resource).
pub fn gpu_kind(req: &GpuRequest) -> String {
    match (&req.sharing, &req.product) {
        (GpuSharing::Mig { profile }, Some(p)) => format!("{p} mig-{profile}"),
        (GpuSharing::Mig { profile }, None) => format!("mig-{profile}"),
        (GpuSharing::TimeSliced, Some(p)) => format!("{p} (time-sliced)"),
        (GpuSharing::TimeSliced, None) => "any GPU (time-sliced)".to_string(),
        (GpuSharing::Exclusive, Some(p)) => p.clone(),
        (GpuSharing::Exclusive, None) => "any GPU".to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Whole,
    Slots,
    Mig,
}

/// Whether `dev` offers what `req` asks for: the product (normalised,
/// any case), at least the memory asked, and the sharing the device is
/// offered in (see [`GpuPool`]). Every runtime decides "does this GPU fit
/// this request" with this one function.
pub fn offers(dev: &GpuDevice, req: &GpuRequest) -> bool {
    let product_ok = req
        .product
        .as_deref()
        .is_none_or(|p| normalize_product(p).eq_ignore_ascii_case(&dev.product));
    let memory_ok = match (req.memory_mib, dev.memory_mib) {
        (Some(want), Some(have)) => have >= want,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let sharing_ok = match (&req.sharing, mode(dev)) {
        (GpuSharing::Exclusive, Mode::Whole) | (GpuSharing::TimeSliced, Mode::Slots) => true,
        (GpuSharing::Mig { profile }, Mode::Mig) => dev.mig.get(profile).is_some_and(|n| *n > 0),
        _ => false,
    };
    product_ok && memory_ok && sharing_ok
}

/// How a device is offered, by its declaration (as a Kubernetes node
/// advertises it): MIG slices when it declares MIG profiles, else
/// time-slice slots when it declares replicas, else whole.
fn mode(dev: &GpuDevice) -> Mode {
    if dev.mig.values().any(|n| *n > 0) {
        Mode::Mig
    } else if dev.time_sliced_replicas.is_some_and(|n| n > 0) {
        Mode::Slots
    } else {
        Mode::Whole
    }
}

/// Who holds a unit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub service: String,
    pub instance: String,
}

/// The GPU pool: devices plus who holds which unit.
#[derive(Debug, Clone, Default)]
pub struct GpuPool {
    devices: Vec<GpuDevice>,
    held: BTreeMap<String, Holder>,
}

/// What one instance got: unit ids and the device indices / uuids they are on.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub units: Vec<String>,
    pub devices: Vec<u32>,
    pub uuids: Vec<String>,
}

impl GpuPool {
    pub fn new(devices: Vec<GpuDevice>) -> GpuPool {
        GpuPool {
            devices,
            held: BTreeMap::new(),
        }
    }

    pub fn devices(&self) -> &[GpuDevice] {
        &self.devices
    }

    fn device_prefix(dev: &GpuDevice) -> String {
        format!("gpu{}", dev.index)
    }

    /// Whether any unit on the device is held.
    fn device_busy(&self, dev: &GpuDevice) -> bool {
        let whole = Self::device_prefix(dev);
        let sub = format!("{whole}/");
        self.held.keys().any(|k| k == &whole || k.starts_with(&sub))
    }

    /// All units of matching kind, with whether each is free.
    fn units(&self, req: &GpuRequest) -> Vec<(String, u32, bool)> {
        let mut out = Vec::new();
        for dev in self.devices.iter().filter(|d| offers(d, req)) {
            let base = Self::device_prefix(dev);
            match &req.sharing {
                GpuSharing::Exclusive => {
                    out.push((base.clone(), dev.index, !self.device_busy(dev)));
                }
                GpuSharing::TimeSliced | GpuSharing::Mig { .. } => {
                    // Unit ids are `{mode_prefix}{k}`.
                    let (n, mode_prefix) = match &req.sharing {
                        GpuSharing::Mig { profile } => (
                            dev.mig.get(profile).copied().unwrap_or(0),
                            format!("{base}/mig-{profile}/"),
                        ),
                        _ => (
                            dev.time_sliced_replicas.unwrap_or(0),
                            format!("{base}/slot"),
                        ),
                    };
                    // A device is offered in one mode only; MIG slices of
                    // different profiles coexist (MIG "mixed").
                    for k in 0..n {
                        let id = format!("{mode_prefix}{k}");
                        let free = !self.held.contains_key(&base) && !self.held.contains_key(&id);
                        out.push((id, dev.index, free));
                    }
                }
            }
        }
        out
    }

    /// The capacity view of a request for `service`.
    pub fn capacity(&self, req: &GpuRequest, service: &str) -> GpuCapacity {
        let units = self.units(req);
        let kind = gpu_kind(req);
        let held_by_service = self
            .held
            .iter()
            .filter(|(id, h)| h.service == service && units.iter().any(|(u, _, _)| u == *id))
            .count() as u32;
        GpuCapacity {
            kind,
            exist: units.len() as u32,
            free: units.iter().filter(|(_, _, f)| *f).count() as u32,
            held_by_service,
        }
    }

    /// Takes `req.count` free units for `holder`, or says why it cannot.
    /// All or nothing: never a partial allocation.
    pub fn allocate(&mut self, req: &GpuRequest, holder: Holder) -> Result<Placement, String> {
        let units = self.units(req);
        let free: Vec<&(String, u32, bool)> = units.iter().filter(|u| u.2).collect();
        if free.len() < req.count as usize {
            let cap = self.capacity(req, &holder.service);
            return Err(format!(
                "waiting for GPU: needs {} {} unit(s), {} of {} free",
                req.count, cap.kind, cap.free, cap.exist
            ));
        }
        let mut placement = Placement::default();
        for (id, dev, _) in free.into_iter().take(req.count as usize) {
            self.held.insert(id.clone(), holder.clone());
            placement.units.push(id.clone());
            if !placement.devices.contains(dev) {
                placement.devices.push(*dev);
                if let Some(u) = self
                    .devices
                    .iter()
                    .find(|d| d.index == *dev)
                    .and_then(|d| d.uuid.clone())
                {
                    placement.uuids.push(u);
                }
            }
        }
        Ok(placement)
    }

    /// Marks units as held (adoption after a restart). Units already held by
    /// someone else are reported, not taken twice.
    pub fn claim(&mut self, units: &[String], holder: &Holder) -> Vec<String> {
        let mut conflicts = Vec::new();
        for u in units {
            match self.held.get(u) {
                Some(h) if h != holder => conflicts.push(u.clone()),
                _ => {
                    self.held.insert(u.clone(), holder.clone());
                }
            }
        }
        conflicts
    }

    /// Marks up to `n` free units of the `sharing` kind on `devices` as held
    /// by `holder`, and says how many it took. This is how a runtime that
    /// does not place GPUs itself (Kubernetes: the scheduler and the device
    /// plugin do) records what its pods hold, so that [`GpuPool::capacity`]
    /// answers for it as for the runtimes that place.
    pub fn hold_on(
        &mut self,
        devices: &[u32],
        sharing: &GpuSharing,
        n: u32,
        holder: &Holder,
    ) -> u32 {
        let any = GpuRequest {
            count: n,
            product: None,
            memory_mib: None,
            sharing: sharing.clone(),
            allow_in_place: true,
        };
        let free: Vec<String> = self
            .units(&any)
            .into_iter()
            .filter(|(_, dev, free)| *free && devices.contains(dev))
            .map(|(id, _, _)| id)
            .take(n as usize)
            .collect();
        for id in &free {
            self.held.insert(id.clone(), holder.clone());
        }
        free.len() as u32
    }

    /// Releases every unit `holder` holds.
    pub fn release(&mut self, holder: &Holder) {
        self.held.retain(|_, h| h != holder);
    }

    /// Every held unit id.
    pub fn held_units(&self) -> BTreeSet<String> {
        self.held.keys().cloned().collect()
    }

    /// Per product: (devices, units held), for the `floyd_gpu_capacity` and
    /// `floyd_gpu_allocated` metrics.
    pub fn usage(&self) -> BTreeMap<String, (u32, u32)> {
        let mut out: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for d in &self.devices {
            let e = out.entry(d.product.clone()).or_default();
            e.0 += 1;
            let whole = Self::device_prefix(d);
            let sub = format!("{whole}/");
            e.1 += self
                .held
                .keys()
                .filter(|k| **k == whole || k.starts_with(&sub))
                .count() as u32;
        }
        out
    }
}
