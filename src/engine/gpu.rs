//! GPU arithmetic (Floyd's own rules, ENGINE.md "GPU rules"): whether a
//! rollout can ever fit, and how many instances the service may hold at
//! once without asking for GPUs that are not free.
//!
//! Inputs are request units (whole GPUs, MIG slices or time-slice slots of
//! the kind the runtime matched to the request): a terminating instance's
//! units are held, not free.

use crate::model::GpuCapacity;

/// What the GPU capacity allows for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuLimit {
    /// Most instances (desired over all revisions) the service may have:
    /// `(free + held) / per_instance − terminating instances`.
    pub max_total: u32,
    /// Instances the service could hold once nothing of it is terminating:
    /// `(free + held) / per_instance`. Above `replicas` there is room to surge.
    pub instances: u32,
}

/// Units needed and units that can be had, for messages.
fn units(n: u64, kind: &str) -> String {
    let word = if kind.starts_with("mig-") {
        "GPU slices"
    } else if kind.contains("time-sliced") {
        "GPU slots"
    } else {
        "GPUs"
    };
    format!("{n} {word} ({kind})")
}

fn can_have(cap: &GpuCapacity) -> u64 {
    u64::from(cap.free) + u64::from(cap.held_by_service)
}

fn shortfall(need: u64, cap: &GpuCapacity, what: &str) -> String {
    let have = can_have(cap);
    if u64::from(cap.exist) == have {
        format!(
            "{what} needs {}, {} exist",
            units(need, &cap.kind),
            cap.exist
        )
    } else {
        format!(
            "{what} needs {}, only {have} can be had ({} exist, {} free, {} held by this service)",
            units(need, &cap.kind),
            cap.exist,
            cap.free,
            cap.held_by_service
        )
    }
}

/// Preflight: can `replicas` instances of `per_instance` units ever run?
/// Blue-green needs both revisions at full size during the switch.
pub fn preflight(
    cap: &GpuCapacity,
    per_instance: u32,
    replicas: u32,
    blue_green: bool,
) -> Result<(), String> {
    let need = u64::from(per_instance) * u64::from(replicas);
    if can_have(cap) < need {
        let what = format!("{replicas} instances × {per_instance}");
        return Err(shortfall(need, cap, &what));
    }
    if blue_green && can_have(cap) < 2 * need {
        let what =
            format!("blue-green (2 × {replicas} instances × {per_instance} during the switch)");
        return Err(shortfall(2 * need, cap, &what));
    }
    Ok(())
}

/// Preflight for a canary: the stable revision stays at `replicas` while
/// up to `canary_peak` canary instances run beside it (the largest step,
/// and the surge of the final promotion).
pub fn preflight_canary(
    cap: &GpuCapacity,
    per_instance: u32,
    replicas: u32,
    canary_peak: u32,
    peak_weight: u32,
) -> Result<(), String> {
    let need = u64::from(per_instance) * (u64::from(replicas) + u64::from(canary_peak));
    if can_have(cap) < need {
        let what = format!(
            "canary ({replicas} stable + {canary_peak} canary instance(s) at weight {peak_weight}%) × {per_instance}"
        );
        return Err(shortfall(need, cap, &what));
    }
    Ok(())
}

/// How many instances the service may hold at once.
pub fn limit(cap: &GpuCapacity, per_instance: u32, terminating: u32) -> GpuLimit {
    let per = u64::from(per_instance.max(1));
    let instances = can_have(cap) / per;
    let max_total = instances.saturating_sub(u64::from(terminating));
    GpuLimit {
        max_total: u32::try_from(max_total).unwrap_or(u32::MAX),
        instances: u32::try_from(instances).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(kind: &str, exist: u32, free: u32, held: u32) -> GpuCapacity {
        GpuCapacity {
            kind: kind.into(),
            exist,
            free,
            held_by_service: held,
        }
    }

    #[test]
    fn preflight_table() {
        let a100 = "NVIDIA-A100-SXM4-80GB";
        // (capacity, per instance, replicas, blue-green, expected error)
        let cases: Vec<(GpuCapacity, u32, u32, bool, Option<&str>)> = vec![
            (
                cap(a100, 6, 6, 0),
                2,
                4,
                false,
                Some("4 instances × 2 needs 8 GPUs (NVIDIA-A100-SXM4-80GB), 6 exist"),
            ),
            (cap(a100, 8, 8, 0), 2, 4, false, None),
            (cap(a100, 8, 4, 4), 1, 4, false, None),
            (
                cap(a100, 8, 2, 4),
                1,
                8,
                false,
                Some(
                    "8 instances × 1 needs 8 GPUs (NVIDIA-A100-SXM4-80GB), only 6 can be had (8 exist, 2 free, 4 held by this service)",
                ),
            ),
            (cap(a100, 8, 4, 4), 1, 4, true, None),
            (
                cap(a100, 6, 2, 4),
                1,
                4,
                true,
                Some(
                    "blue-green (2 × 4 instances × 1 during the switch) needs 8 GPUs (NVIDIA-A100-SXM4-80GB), 6 exist",
                ),
            ),
            (
                cap("mig-1g.10gb", 14, 3, 0),
                1,
                4,
                false,
                Some(
                    "4 instances × 1 needs 4 GPU slices (mig-1g.10gb), only 3 can be had (14 exist, 3 free, 0 held by this service)",
                ),
            ),
            (cap("Tesla-T4 (time-sliced)", 8, 8, 0), 1, 4, true, None),
        ];
        for (c, per, r, bg, want) in cases {
            let got = preflight(&c, per, r, bg).err();
            assert_eq!(got.as_deref(), want, "{c:?} per {per} replicas {r} bg {bg}");
        }
    }

    #[test]
    fn canary_preflight_table() {
        let a100 = "NVIDIA-A100-SXM4-80GB";
        // (capacity, per instance, replicas, canary peak, weight, expected error)
        type Case<'a> = (GpuCapacity, u32, u32, u32, u32, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (cap(a100, 5, 1, 4), 1, 4, 1, 25, None),
            (
                cap(a100, 4, 0, 4),
                1,
                4,
                1,
                25,
                Some(
                    "canary (4 stable + 1 canary instance(s) at weight 25%) × 1 needs 5 GPUs (NVIDIA-A100-SXM4-80GB), 4 exist",
                ),
            ),
            (
                cap(a100, 8, 1, 4),
                1,
                4,
                2,
                50,
                Some(
                    "canary (4 stable + 2 canary instance(s) at weight 50%) × 1 needs 6 GPUs (NVIDIA-A100-SXM4-80GB), only 5 can be had (8 exist, 1 free, 4 held by this service)",
                ),
            ),
            (cap(a100, 12, 4, 8), 2, 4, 2, 50, None),
        ];
        for (c, per, r, peak, w, want) in cases {
            let got = preflight_canary(&c, per, r, peak, w).err();
            assert_eq!(
                got.as_deref(),
                want,
                "{c:?} per {per} replicas {r} peak {peak}"
            );
        }
    }

    #[test]
    fn limit_table() {
        // (capacity, per instance, terminating, expected max total)
        let cases = [
            (cap("g", 4, 0, 4), 1, 0, 4),
            (cap("g", 4, 0, 4), 1, 1, 3), // a terminating instance still holds its GPU
            (cap("g", 8, 2, 4), 1, 0, 6),
            (cap("g", 8, 3, 4), 2, 0, 3),
            (cap("g", 8, 0, 0), 2, 5, 0),
        ];
        for (c, per, term, want) in cases {
            assert_eq!(
                limit(&c, per, term).max_total,
                want,
                "{c:?} per {per} terminating {term}"
            );
        }
    }
}
