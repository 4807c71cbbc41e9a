//! GPU inventory for the local runtime.
//!
//! Owns: reading the inventory (`nvidia-smi` output or the declared
//! inventory of `floyd.yaml` / `--gpus`) and the environment an instance
//! gets for its placement. Placement itself (matching a request to free
//! units, who holds what) is [`crate::placement`], shared with the
//! simulator. Must not: start or stop processes. A unit is released only
//! when the instance supervisor says the process has exited.

use crate::manifest::GpuInventory;
pub use crate::placement::{
    GpuDevice, GpuPool, Holder, Placement, devices_from_inventory, normalize_product,
};
use std::collections::BTreeMap;
use std::path::Path;

/// Errors of inventory parsing.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GpuError {
    #[error("nvidia-smi output line {line}: {message} (line was {text:?})")]
    NvidiaSmi {
        line: usize,
        text: String,
        message: String,
    },
    #[error(
        "--gpus entry {entry:?}: {message} (expected PRODUCT:COUNT[:MEMORY_MIB], e.g. NVIDIA-A100-SXM4-80GB:4:81920)"
    )]
    Flag { entry: String, message: String },
}

/// Parses `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader`.
/// Tolerates blank lines, a header line, `[N/A]` memory and `MiB` suffixes.
pub fn parse_nvidia_smi(out: &str) -> Result<Vec<GpuDevice>, GpuError> {
    let mut devices = Vec::new();
    for (n, raw) in out.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("index") {
            continue;
        }
        let err = |message: &str| GpuError::NvidiaSmi {
            line: n + 1,
            text: line.to_string(),
            message: message.to_string(),
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 4 {
            return Err(err(
                "expected 4 comma-separated fields: index, uuid, name, memory.total",
            ));
        }
        let index: u32 = fields[0]
            .parse()
            .map_err(|_| err("index is not a number"))?;
        // A name could in theory contain a comma: everything between uuid and memory is the name.
        let name = fields[2..fields.len() - 1].join(",");
        let mem = fields[fields.len() - 1];
        let memory_mib = mem.trim_end_matches("MiB").trim().parse::<u64>().ok();
        if name.is_empty() {
            return Err(err("empty GPU name"));
        }
        devices.push(GpuDevice {
            index,
            uuid: Some(fields[1].to_string()).filter(|u| !u.is_empty()),
            product: normalize_product(&name),
            memory_mib,
            time_sliced_replicas: None,
            mig: BTreeMap::new(),
        });
    }
    Ok(devices)
}

/// Parses a `--gpus` flag: `PRODUCT:COUNT[:MEMORY_MIB]` entries separated by commas.
pub fn parse_gpus_flag(s: &str) -> Result<Vec<GpuInventory>, GpuError> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let err = |message: &str| GpuError::Flag {
            entry: entry.to_string(),
            message: message.to_string(),
        };
        let parts: Vec<&str> = entry.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(err("wrong number of ':'-separated parts"));
        }
        if parts[0].is_empty() {
            return Err(err("empty product"));
        }
        let count: u32 = parts[1]
            .parse()
            .map_err(|_| err("COUNT is not a whole number"))?;
        let memory_mib = match parts.get(2) {
            Some(m) => Some(
                m.trim_end_matches("MiB")
                    .parse::<u64>()
                    .map_err(|_| err("MEMORY_MIB is not a whole number"))?,
            ),
            None => None,
        };
        out.push(GpuInventory {
            product: normalize_product(parts[0]),
            memory_mib,
            count,
            time_sliced_replicas: None,
            mig: BTreeMap::new(),
        });
    }
    Ok(out)
}

/// Where the inventory came from, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventorySource {
    NvidiaSmi,
    Declared,
}

/// Runs `nvidia-smi` (when given and present) and falls back to the
/// declared inventory. Sharing settings (time-slicing, MIG) of a declared line
/// apply to detected devices of the same product.
pub fn detect(
    nvidia_smi: Option<&Path>,
    declared: &[GpuInventory],
) -> (Vec<GpuDevice>, InventorySource) {
    if let Some(cmd) = nvidia_smi {
        let out = std::process::Command::new(cmd)
            .args([
                "--query-gpu=index,uuid,name,memory.total",
                "--format=csv,noheader",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            match parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout)) {
                Ok(mut devs) if !devs.is_empty() => {
                    for d in &mut devs {
                        if let Some(line) = declared
                            .iter()
                            .find(|l| normalize_product(&l.product) == d.product)
                        {
                            d.time_sliced_replicas = line.time_sliced_replicas;
                            d.mig = line.mig.clone();
                        }
                    }
                    return (devs, InventorySource::NvidiaSmi);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring unparsable nvidia-smi output"),
            }
        }
    }
    (devices_from_inventory(declared), InventorySource::Declared)
}

/// Environment variables for a placement.
pub fn placement_env(p: &Placement) -> Vec<(String, String)> {
    if p.units.is_empty() {
        return Vec::new();
    }
    let devices = p
        .devices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let nvidia = if p.uuids.len() == p.devices.len() {
        p.uuids.join(",")
    } else {
        devices.clone()
    };
    vec![
        ("CUDA_VISIBLE_DEVICES".into(), devices),
        ("NVIDIA_VISIBLE_DEVICES".into(), nvidia),
        ("FLOYD_GPU_UNITS".into(), p.units.join(",")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{GpuRequest, GpuSharing};

    // Recorded from an 8×A100 machine and a mixed workstation.
    const A100_OUT: &str = "0, GPU-1c3c8a0e-6f2b-5a5b-9f34-2f8f0f4e5d11, NVIDIA A100-SXM4-80GB, 81920 MiB\n\
1, GPU-9d2e3c4f-1a2b-3c4d-5e6f-7a8b9c0d1e2f, NVIDIA A100-SXM4-80GB, 81920 MiB\n";
    const MIXED_OUT: &str =
        "\n0, GPU-aaaa, NVIDIA GeForce RTX 4090, 24564 MiB\r\n1, GPU-bbbb, NVIDIA L4, [N/A]\n";

    fn req(count: u32, product: Option<&str>, sharing: GpuSharing) -> GpuRequest {
        GpuRequest {
            count,
            product: product.map(String::from),
            memory_mib: None,
            sharing,
            allow_in_place: true,
        }
    }

    fn holder(i: &str) -> Holder {
        Holder {
            service: "svc".into(),
            instance: i.into(),
        }
    }

    #[test]
    fn parses_recorded_nvidia_smi_output() {
        let d = parse_nvidia_smi(A100_OUT).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].product, "NVIDIA-A100-SXM4-80GB");
        assert_eq!(d[1].memory_mib, Some(81920));
        assert_eq!(
            d[1].uuid.as_deref(),
            Some("GPU-9d2e3c4f-1a2b-3c4d-5e6f-7a8b9c0d1e2f")
        );
        let m = parse_nvidia_smi(MIXED_OUT).unwrap();
        assert_eq!(m[0].product, "NVIDIA-GeForce-RTX-4090");
        assert_eq!(m[1].memory_mib, None);
    }

    #[test]
    fn bad_nvidia_smi_lines_say_where() {
        let e = parse_nvidia_smi("0, GPU-a, X, 1 MiB\nfoo\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse_nvidia_smi("x, GPU-a, X, 1 MiB").is_err());
    }

    #[test]
    fn gpus_flag_table() {
        type Want = Option<Vec<(&'static str, u32, Option<u64>)>>;
        let cases: &[(&str, Want)] = &[
            (
                "NVIDIA-A100-SXM4-80GB:4,NVIDIA-L4:2",
                Some(vec![
                    ("NVIDIA-A100-SXM4-80GB", 4, None),
                    ("NVIDIA-L4", 2, None),
                ]),
            ),
            (
                "NVIDIA-L4:1:23034",
                Some(vec![("NVIDIA-L4", 1, Some(23034))]),
            ),
            ("", Some(vec![])),
            ("NVIDIA-L4", None),
            ("NVIDIA-L4:x", None),
            (":2", None),
            ("a:1:2:3", None),
        ];
        for (input, want) in cases {
            let got = parse_gpus_flag(input);
            match want {
                Some(w) => {
                    let g = got.unwrap();
                    let g: Vec<_> = g
                        .iter()
                        .map(|i| (i.product.as_str(), i.count, i.memory_mib))
                        .collect();
                    assert_eq!(&g, w, "{input}");
                }
                None => assert!(got.is_err(), "{input} should fail"),
            }
        }
    }

    #[test]
    fn exclusive_never_over_allocates_and_frees_on_release() {
        let inv = parse_gpus_flag("A100:2,L4:1").unwrap();
        let mut pool = GpuPool::new(devices_from_inventory(&inv));
        let r = req(1, Some("A100"), GpuSharing::Exclusive);
        let a = pool.allocate(&r, holder("a")).unwrap();
        let b = pool.allocate(&r, holder("b")).unwrap();
        assert_ne!(a.units, b.units);
        let e = pool.allocate(&r, holder("c")).unwrap_err();
        assert!(e.contains("0 of 2 free"), "{e}");
        let cap = pool.capacity(&r, "svc");
        assert_eq!((cap.exist, cap.free, cap.held_by_service), (2, 0, 2));
        assert_eq!(pool.usage()["A100"], (2, 2));
        assert_eq!(pool.usage()["L4"], (1, 0));
        pool.release(&holder("a"));
        assert_eq!(pool.capacity(&r, "svc").free, 1);
        // All or nothing: two GPUs when only one is free fails and takes nothing.
        assert!(
            pool.allocate(&req(2, Some("A100"), GpuSharing::Exclusive), holder("d"))
                .is_err()
        );
        assert_eq!(pool.capacity(&r, "svc").free, 1);
    }

    #[test]
    fn memory_and_product_must_match() {
        let inv = parse_gpus_flag("NVIDIA-L4:1:23034").unwrap();
        let mut pool = GpuPool::new(devices_from_inventory(&inv));
        let mut r = req(1, Some("NVIDIA L4"), GpuSharing::Exclusive);
        r.memory_mib = Some(40000);
        assert_eq!(pool.capacity(&r, "svc").exist, 0);
        r.memory_mib = Some(20000);
        assert!(pool.allocate(&r, holder("a")).is_ok());
    }

    #[test]
    fn a_device_is_offered_only_in_the_mode_it_declares() {
        let mut inv = parse_gpus_flag("A100:1,A100:1").unwrap();
        inv[0].time_sliced_replicas = Some(3);
        inv[1].mig.insert("1g.10gb".into(), 7);
        // Declaring both: MIG wins, as on a node whose GPU is partitioned.
        inv[1].time_sliced_replicas = Some(2);
        let mut pool = GpuPool::new(devices_from_inventory(&inv));
        let ts = req(1, None, GpuSharing::TimeSliced);
        let mig = req(
            1,
            None,
            GpuSharing::Mig {
                profile: "1g.10gb".into(),
            },
        );
        let whole = req(1, None, GpuSharing::Exclusive);
        assert_eq!(pool.capacity(&ts, "svc").exist, 3);
        assert_eq!(pool.capacity(&mig, "svc").exist, 7);
        // Neither device is offered whole.
        assert_eq!(pool.capacity(&whole, "svc").exist, 0);
        for i in 0..3 {
            pool.allocate(&ts, holder(&format!("t{i}"))).unwrap();
        }
        assert!(pool.allocate(&ts, holder("t3")).is_err());
        // The slots in use take nothing from the MIG device.
        assert_eq!(pool.capacity(&mig, "svc").free, 7);
        let p = pool.allocate(&mig, holder("m")).unwrap();
        assert_eq!(p.units, vec!["gpu1/mig-1g.10gb/0".to_string()]);
        assert_eq!(pool.capacity(&mig, "svc").free, 6);
    }

    #[test]
    fn claim_reports_conflicts() {
        let mut pool = GpuPool::new(devices_from_inventory(&parse_gpus_flag("A:2").unwrap()));
        assert!(pool.claim(&["gpu0".into()], &holder("a")).is_empty());
        assert_eq!(
            pool.claim(&["gpu0".into()], &holder("b")),
            vec!["gpu0".to_string()]
        );
    }

    #[test]
    fn env_lists_devices_and_uuids() {
        let mut pool = GpuPool::new(parse_nvidia_smi(A100_OUT).unwrap());
        let p = pool
            .allocate(&req(2, None, GpuSharing::Exclusive), holder("a"))
            .unwrap();
        let env: BTreeMap<_, _> = placement_env(&p).into_iter().collect();
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0,1");
        assert!(env["NVIDIA_VISIBLE_DEVICES"].starts_with("GPU-1c3c"));
    }
}
