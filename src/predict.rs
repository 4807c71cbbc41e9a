//! Predicted rollouts: what a rollout of one service will do before it
//! starts. The rendered spec is run through the real engine on the `sim`
//! runtime in virtual time (the same [`crate::runtime::sim::Simulation`]
//! that `floyd simulate` uses, so the same GPU placement and the same
//! arithmetic), with instances that become ready after the start-up time
//! the runtime has observed for the service (p50 and p90 of the last
//! instances' creation-to-ready times), or, without history, after what the
//! manifest's probes allow at the earliest.
//!
//! Pure: no I/O, no clock. The controller records the inputs
//! ([`PlanInputs`]) as it observes services; `floyd diff` and
//! `GET /api/v1/services/{name}/plan` call [`predict`].

use crate::engine::Phase;
use crate::manifest::{
    GpuInventory, GpuRequest, GpuSharing, InstanceTemplate, Revision, ServiceName, ServiceSpec,
};
use crate::model::GpuCapacity;
use crate::runtime::sim::Behaviour;
use crate::runtime::sim::scenario::{GateScript, Scenario, Simulation};
use serde::{Deserialize, Serialize};

/// Start-up samples kept per service (the most recent ones).
pub const SAMPLES_KEPT: usize = 64;

/// Instances created this close together count as one batch.
pub const BATCH_WINDOW_MS: u64 = 250;

/// How many instances a rollout of `spec` creates at once: a rolling
/// update's surge + unavailable (at least 1, at most the replicas); the
/// other strategies create every replica together.
pub fn wave_size(spec: &ServiceSpec) -> u32 {
    match &spec.strategy {
        crate::manifest::Strategy::RollingUpdate { rolling_update } => {
            let (s, u) = crate::engine::rolling::fenceposts(
                rolling_update.max_surge,
                rolling_update.max_unavailable,
                spec.replicas,
            );
            s.saturating_add(u).clamp(1, spec.replicas.max(1))
        }
        _ => spec.replicas.max(1),
    }
}

/// The samples to predict a wave of `wave` instances from: those taken in
/// batches no larger than twice the wave, or, when none is that small, in
/// the smallest batches seen; all of them when the batches are unknown.
/// Start-up on a loaded machine grows with how many start together.
pub fn comparable_samples(samples: &[f64], batches: &[u32], wave: u32) -> Vec<f64> {
    if batches.len() != samples.len() {
        return samples.to_vec();
    }
    let smallest = batches.iter().copied().min().unwrap_or(0);
    let limit = wave.saturating_mul(2).max(smallest);
    samples
        .iter()
        .zip(batches)
        .filter(|(_, b)| **b <= limit)
        .map(|(s, _)| *s)
        .collect()
}

/// For each instance creation time (ms), how many of them (itself
/// included) lie within [`BATCH_WINDOW_MS`] of it.
pub fn batches(created_ms: &[u64]) -> Vec<u32> {
    let mut sorted = created_ms.to_vec();
    sorted.sort_unstable();
    created_ms
        .iter()
        .map(|&t| {
            let lo = sorted.partition_point(|&x| x < t.saturating_sub(BATCH_WINDOW_MS));
            let hi = sorted.partition_point(|&x| x <= t.saturating_add(BATCH_WINDOW_MS));
            u32::try_from(hi - lo).unwrap_or(u32::MAX)
        })
        .collect()
}

/// What the runtime has observed of a service, as a prediction needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanInputs {
    /// The revision running now; `None` for a service the runtime does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CurrentRevision>,
    /// Seconds from an instance's creation to its first readiness, most
    /// recent last (instances that never restarted).
    #[serde(default)]
    pub startup_samples: Vec<f64>,
    /// For each sample, how many of the service's instances were created
    /// together with it (within [`BATCH_WINDOW_MS`], itself included): a
    /// burst of 100 new processes starts slower than a wave of 10 on the
    /// same machine. Empty when unknown (older servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_batches: Vec<u32>,
    /// GPU capacity for the service's GPU kind, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuCapacity>,
}

/// The running revision, as far as a prediction needs it (no template
/// contents: nothing of its environment leaves the controller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CurrentRevision {
    pub revision: Revision,
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
}

/// Start-up time of one instance, creation to ready, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    /// `observed` (from `samples` instances) or `probes` (no history: the
    /// earliest the manifest's probes can report ready).
    pub source: String,
    pub samples: usize,
    pub startup_p50_seconds: f64,
    pub startup_p90_seconds: f64,
}

/// One wave: the new revision scaled up (or, for a canary, its weight changed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    /// Seconds after the rollout starts (p50 start-up).
    pub at_seconds: f64,
    /// Instances asked of the new revision after this wave.
    pub new_desired: u32,
    /// Instances asked of every other revision at that moment.
    pub old_desired: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// What the engine said it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// GPUs the rollout needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuPlan {
    pub kind: String,
    /// Units per instance.
    pub per_instance: u32,
    /// Units the service holds at the rollout's peak (terminating instances included).
    pub peak: u32,
    /// Units the service holds now.
    pub held_now: u32,
    /// Units free now (held by nobody).
    pub free_now: u32,
    /// Units of this kind that exist.
    pub exist: u32,
}

/// What a rollout of one service is predicted to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prediction {
    pub service: String,
    pub strategy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_replicas: Option<u32>,
    pub to_replicas: u32,
    pub timing: Timing,
    pub waves: Vec<Wave>,
    /// Predicted duration with p50 (p90) start-up times; `None` when the
    /// rollout waits for a person (manual promotion) or cannot finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_p50_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_p90_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuPlan>,
    /// Why the rollout cannot fit or finish, with the arithmetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infeasible: Option<String>,
    /// What the prediction assumes, in words.
    pub assumes: String,
}

/// p50 and p90 (nearest rank) of `samples`; `None` when empty.
pub fn percentiles(samples: &[f64]) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = samples
        .iter()
        .copied()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[i - 1]
    };
    Some((rank(0.5), rank(0.9)))
}

/// Start-up time from history, or from the probes when there is none.
pub fn timing(spec: &ServiceSpec, samples: &[f64]) -> Timing {
    if let Some((p50, p90)) = percentiles(samples) {
        return Timing {
            source: "observed".into(),
            samples: samples.len(),
            startup_p50_seconds: p50,
            startup_p90_seconds: p90,
        };
    }
    // The earliest ready the probes allow: the startup probe's first
    // successes, then the readiness probe's; a process that is ready at
    // once passes at the first probe (p50), or one period later (p90).
    let first = |p: &crate::manifest::Probe| {
        f64::from(p.initial_delay_seconds)
            + f64::from(p.period_seconds.max(1)) * f64::from(p.success_threshold.max(1) - 1)
    };
    let startup = spec.health.startup.as_ref().map(first).unwrap_or(0.0);
    let (p50, p90) = match &spec.health.readiness {
        Some(r) => (
            startup + first(r),
            startup + first(r) + f64::from(r.period_seconds.max(1)),
        ),
        None => (startup, startup),
    };
    Timing {
        source: "probes".into(),
        samples: 0,
        startup_p50_seconds: p50,
        startup_p90_seconds: p90,
    }
}

/// The product the simulated inventory and requests use: the capacity's kind.
fn sim_request(req: &GpuRequest, kind: &str) -> GpuRequest {
    GpuRequest {
        count: req.count.max(1),
        product: Some(kind.to_string()),
        memory_mib: None,
        sharing: GpuSharing::Exclusive,
        allow_in_place: req.allow_in_place,
    }
}

struct Run {
    duration: Option<f64>,
    failed: Option<String>,
    waves: Vec<Wave>,
    peak: u32,
}

fn simulate(
    name: &ServiceName,
    spec: &ServiceSpec,
    start: Option<(InstanceTemplate, u32)>,
    gpus: &[GpuInventory],
    startup: f64,
) -> Run {
    let behaviour = Behaviour {
        // An instance ready in the instant it is created would wait for the
        // next event in the simulator: 1 ms is as good as none.
        startup_seconds: startup.max(0.001),
        ..Behaviour::default()
    };
    let scenario = Scenario {
        instances: behaviour,
        gpus: gpus.to_vec(),
        // Gates are assumed to pass as soon as they are asked.
        gates: spec
            .gates
            .iter()
            .map(|_| GateScript {
                pass: Some(0.0),
                ..GateScript::default()
            })
            .collect(),
        // A rollout that cannot finish in a day will not.
        max_seconds: Some(86_400.0),
        ..Scenario::default()
    };
    // The simulation starts the current revision at the new replica count;
    // a scale that comes with the rollout is shared out by the engine anyway.
    let start = start.map(|(t, _)| (t, "current".to_string()));
    let mut sim = match Simulation::from_start(name.clone(), spec.clone(), start, &scenario) {
        Ok(s) => s,
        Err(e) => {
            return Run {
                duration: None,
                failed: Some(e.to_string()),
                waves: Vec::new(),
                peak: 0,
            };
        }
    };
    let target = sim.state.target.clone();
    let mut waves = Vec::new();
    let mut last_new = 0u32;
    let mut last_weight = None;
    let mut peak = 0u32;
    let outcome = sim.run(|tick, world| {
        let o = world.observe(name, None);
        let new_desired = o.revision(&target).map(|r| r.desired).unwrap_or(0);
        let old_desired: u32 = o
            .revisions
            .iter()
            .filter(|r| r.revision != target)
            .map(|r| r.desired)
            .sum();
        peak = peak.max(world.gpu_usage().0 as u32);
        // A canary's waves are its weights; anything else's, the new
        // revision's scale-ups.
        let wave = match tick.weight {
            Some(_) => tick.weight != last_weight,
            None => new_desired > last_new,
        };
        if wave {
            waves.push(Wave {
                at_seconds: tick.t,
                new_desired,
                old_desired,
                weight: tick.weight,
                events: tick.events.clone(),
            });
        }
        last_new = new_desired;
        last_weight = tick.weight;
    });
    match outcome.result {
        Phase::Complete => Run {
            duration: Some(outcome.t),
            failed: None,
            waves,
            peak,
        },
        _ => Run {
            duration: None,
            failed: Some(outcome.reason),
            waves,
            peak,
        },
    }
}

/// Predicts the rollout of `spec` (rendered, revision `to`) over what runs
/// now (`inputs`).
pub fn predict(name: &ServiceName, spec: &ServiceSpec, inputs: &PlanInputs) -> Prediction {
    let samples = comparable_samples(
        &inputs.startup_samples,
        &inputs.startup_batches,
        wave_size(spec),
    );
    let timing = timing(spec, &samples);
    let mut sim_spec = spec.clone();
    let mut start = inputs.current.as_ref().map(|c| {
        let mut t = InstanceTemplate::command(["current"]);
        t.resources.gpu = c.gpu.clone();
        (t, c.replicas)
    });
    let mut inventory = Vec::new();
    let mut gpu_plan = None;
    let mut infeasible = None;
    if let Some(req) = spec.gpu() {
        let per = req.count.max(1);
        let need = per.saturating_mul(spec.replicas);
        match &inputs.gpu {
            Some(cap) => {
                let usable = cap.free.saturating_add(cap.held_by_service);
                inventory.push(GpuInventory {
                    product: cap.kind.clone(),
                    memory_mib: None,
                    count: usable,
                    time_sliced_replicas: None,
                    mig: Default::default(),
                });
                sim_spec.template.resources.gpu = Some(sim_request(req, &cap.kind));
                if let Some((t, _)) = start.as_mut() {
                    // The current revision holds units of the same kind only
                    // when it asks for the same thing.
                    t.resources.gpu = t
                        .resources
                        .gpu
                        .as_ref()
                        .filter(|g| g.product == req.product && g.sharing == req.sharing)
                        .map(|g| sim_request(g, &cap.kind));
                }
                if need > usable {
                    infeasible = Some(format!(
                        "needs {need} {kind} unit(s) ({} replicas × {per}); {} free + {} held by {name} = {usable} usable of {} that exist",
                        spec.replicas,
                        cap.free,
                        cap.held_by_service,
                        cap.exist,
                        kind = cap.kind,
                    ));
                }
                gpu_plan = Some(GpuPlan {
                    kind: cap.kind.clone(),
                    per_instance: per,
                    peak: 0,
                    held_now: cap.held_by_service,
                    free_now: cap.free,
                    exist: cap.exist,
                });
            }
            None => {
                // No capacity known (a new service): GPUs are not simulated.
                sim_spec.template.resources.gpu = None;
                if let Some((t, _)) = start.as_mut() {
                    t.resources.gpu = None;
                }
            }
        }
    }
    let p50 = simulate(
        name,
        &sim_spec,
        start.clone(),
        &inventory,
        timing.startup_p50_seconds,
    );
    let p90 = simulate(
        name,
        &sim_spec,
        start,
        &inventory,
        timing.startup_p90_seconds,
    );
    if let Some(g) = gpu_plan.as_mut() {
        g.peak = p50.peak.max(p90.peak);
    }
    if infeasible.is_none()
        && let Some(why) = &p50.failed
    {
        infeasible = Some(why.clone());
    }
    let mut assumes = format!(
        "instances ready {:.1} s (p50) / {:.1} s (p90) after creation ({})",
        timing.startup_p50_seconds,
        timing.startup_p90_seconds,
        if timing.source == "observed" {
            format!("observed, {} instance(s)", timing.samples)
        } else {
            "no history: the earliest the probes allow".to_string()
        }
    );
    if !spec.gates.is_empty() {
        assumes.push_str("; gates pass when asked");
    }
    if spec.gpu().is_some() && inputs.gpu.is_none() {
        assumes.push_str("; GPU capacity unknown (not simulated)");
    }
    Prediction {
        service: name.to_string(),
        strategy: spec.strategy_name().to_string(),
        from_replicas: inputs.current.as_ref().map(|c| c.replicas),
        to_replicas: spec.replicas,
        timing,
        waves: p50.waves,
        duration_p50_seconds: p50.duration,
        duration_p90_seconds: p90.duration,
        gpu: gpu_plan,
        infeasible,
        assumes,
    }
}

/// One line per prediction, for people (`floyd diff`).
pub fn describe(p: &Prediction) -> Vec<String> {
    let mut out = Vec::new();
    let dur = |d: Option<f64>| d.map_or("-".to_string(), |d| format!("{d:.1} s"));
    out.push(format!(
        "{} {} wave(s), about {} (p90 {}); {}",
        p.strategy,
        p.waves.len(),
        dur(p.duration_p50_seconds),
        dur(p.duration_p90_seconds),
        p.assumes
    ));
    let waves: Vec<String> = p
        .waves
        .iter()
        .map(|w| match w.weight {
            Some(wt) => format!("t={:.1}s weight {wt}%", w.at_seconds),
            None => format!(
                "t={:.1}s new {} old {}",
                w.at_seconds, w.new_desired, w.old_desired
            ),
        })
        .collect();
    if !waves.is_empty() {
        out.push(format!("waves: {}", waves.join(", ")));
    }
    if let Some(g) = &p.gpu {
        out.push(format!(
            "GPUs ({}): {} at peak ({} more than the {} held now), {} free now, {} exist",
            g.kind,
            g.peak,
            g.peak.saturating_sub(g.held_now),
            g.held_now,
            g.free_now,
            g.exist
        ));
    }
    if let Some(why) = &p.infeasible {
        out.push(format!("INFEASIBLE: {why}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{HealthSpec, IntOrPercent, PortRef, Probe, ProbeAction, Strategy};

    fn name() -> ServiceName {
        ServiceName::parse("web").unwrap()
    }

    fn rolling(replicas: u32, surge: u32, unavailable: u32) -> ServiceSpec {
        let mut s = ServiceSpec::with_defaults(replicas, InstanceTemplate::command(["v2"]));
        if let Strategy::RollingUpdate { rolling_update } = &mut s.strategy {
            rolling_update.max_surge = IntOrPercent::Int(surge);
            rolling_update.max_unavailable = IntOrPercent::Int(unavailable);
        }
        s
    }

    fn current(replicas: u32) -> Option<CurrentRevision> {
        Some(CurrentRevision {
            revision: Revision("cccccccccc".into()),
            replicas,
            gpu: None,
        })
    }

    /// Batches: instances created within 250 ms of each other count together.
    #[test]
    fn batches_count_instances_created_together() {
        for (created, want) in [
            (vec![], vec![]),
            (vec![1000], vec![1]),
            // A burst of three, then one alone 2 s later.
            (vec![1000, 1010, 1200, 3200], vec![3, 3, 3, 1]),
            // Chained: each within 250 ms of the next, not of all.
            (vec![0, 200, 400], vec![2, 3, 2]),
            // Order kept.
            (vec![5000, 0, 5100], vec![2, 1, 2]),
        ] {
            assert_eq!(batches(&created), want, "{created:?}");
        }
    }

    /// A wave predicts from samples taken in comparable batches: the burst
    /// of a first deployment (slow on a busy machine) does not set the pace
    /// of a rollout that starts a few instances at a time.
    #[test]
    fn comparable_samples_table() {
        let samples = [1.4, 1.5, 1.3, 1.0, 1.1];
        let burst = [100, 100, 100, 10, 10];
        for (what, batches, wave, want) in [
            ("no batches known: all", &[][..], 10, samples.to_vec()),
            (
                "wave of 10: the batches of 10",
                &burst[..],
                10,
                vec![1.0, 1.1],
            ),
            (
                "wave of 4: none ≤ 8, so the smallest batches (10)",
                &burst[..],
                4,
                vec![1.0, 1.1],
            ),
            (
                "wave of 50: the batches ≤ 100",
                &burst[..],
                50,
                samples.to_vec(),
            ),
            ("wave of 5: batches ≤ 10", &burst[..], 5, vec![1.0, 1.1]),
            ("lengths differ: all", &[10, 10][..], 10, samples.to_vec()),
        ] {
            assert_eq!(comparable_samples(&samples, batches, wave), want, "{what}");
        }
        let mut spec = rolling(100, 10, 10);
        assert_eq!(wave_size(&spec), 20);
        spec.strategy = crate::manifest::Strategy::Recreate;
        assert_eq!(wave_size(&spec), 100);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        for (samples, want) in [
            (vec![], None),
            (vec![2.0], Some((2.0, 2.0))),
            (vec![4.0, 1.0, 3.0, 2.0], Some((2.0, 4.0))),
            (
                (1..=10).map(f64::from).collect::<Vec<_>>(),
                Some((5.0, 9.0)),
            ),
            (vec![f64::NAN, -1.0, 3.0], Some((3.0, 3.0))),
        ] {
            assert_eq!(percentiles(&samples), want, "{samples:?}");
        }
    }

    #[test]
    fn timing_without_history_comes_from_the_probes() {
        let mut s = rolling(3, 1, 0);
        assert_eq!(
            (
                timing(&s, &[]).startup_p50_seconds,
                timing(&s, &[]).source.as_str()
            ),
            (0.0, "probes")
        );
        s.health = HealthSpec {
            readiness: Some(Probe {
                action: ProbeAction::Tcp {
                    port: PortRef::Number(80),
                },
                initial_delay_seconds: 3,
                period_seconds: 2,
                timeout_seconds: 1,
                success_threshold: 2,
                failure_threshold: 3,
            }),
            ..HealthSpec::default()
        };
        let t = timing(&s, &[]);
        assert_eq!((t.startup_p50_seconds, t.startup_p90_seconds), (5.0, 7.0));
        let t = timing(&s, &[1.0, 9.0, 2.0]);
        assert_eq!(
            (t.source.as_str(), t.samples, t.startup_p50_seconds),
            ("observed", 3, 2.0)
        );
    }

    /// Rolling updates: waves = ⌈R / (surge + unavailable)⌉ when old
    /// instances leave at once, each wave one start-up long.
    #[test]
    fn rolling_waves_and_duration_follow_the_arithmetic() {
        struct Case {
            replicas: u32,
            surge: u32,
            unavailable: u32,
            startup: f64,
            waves: usize,
            duration: f64,
        }
        for c in [
            Case {
                replicas: 3,
                surge: 1,
                unavailable: 0,
                startup: 2.0,
                waves: 3,
                duration: 6.0,
            },
            Case {
                replicas: 10,
                surge: 3,
                unavailable: 2,
                startup: 5.0,
                waves: 2,
                duration: 10.0,
            },
            Case {
                replicas: 4,
                surge: 4,
                unavailable: 0,
                startup: 1.5,
                waves: 1,
                duration: 1.5,
            },
        ] {
            let spec = rolling(c.replicas, c.surge, c.unavailable);
            let inputs = PlanInputs {
                current: current(c.replicas),
                startup_samples: vec![c.startup],
                startup_batches: vec![],
                gpu: None,
            };
            let p = predict(&name(), &spec, &inputs);
            assert_eq!(p.infeasible, None);
            assert_eq!(
                p.duration_p50_seconds,
                Some(c.duration),
                "R={} {}/{}: {:?}",
                c.replicas,
                c.surge,
                c.unavailable,
                p.waves
            );
            let first = p.waves.first().expect("a first wave");
            assert_eq!(first.at_seconds, 0.0);
            assert_eq!(p.waves.len(), c.waves, "{:?}", p.waves);
            assert_eq!(p.waves.last().unwrap().new_desired, c.replicas);
        }
    }

    #[test]
    fn p90_is_slower_than_p50_with_spread_samples() {
        let spec = rolling(4, 1, 0);
        let inputs = PlanInputs {
            current: current(4),
            startup_samples: vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 4.0],
            startup_batches: vec![],
            gpu: None,
        };
        let p = predict(&name(), &spec, &inputs);
        assert_eq!(p.duration_p50_seconds, Some(4.0));
        assert_eq!(p.duration_p90_seconds, Some(16.0));
    }

    fn gpu_spec(replicas: u32, per: u32) -> ServiceSpec {
        let mut s = rolling(replicas, 1, 0);
        s.template.resources.gpu = Some(GpuRequest {
            count: per,
            product: Some("A100".into()),
            memory_mib: None,
            sharing: GpuSharing::Exclusive,
            allow_in_place: true,
        });
        s
    }

    #[test]
    fn gpu_peak_and_infeasible_arithmetic() {
        let spec = gpu_spec(2, 1);
        let cur = |held: u32| {
            Some(CurrentRevision {
                revision: Revision("cccccccccc".into()),
                replicas: 2,
                gpu: spec.template.resources.gpu.clone().map(|mut g| {
                    g.count = held / 2;
                    g
                }),
            })
        };
        let cap = |exist, free, held| GpuCapacity {
            kind: "A100".into(),
            exist,
            free,
            held_by_service: held,
        };
        // One spare GPU: surge 1 fits, peak 3.
        let p = predict(
            &name(),
            &spec,
            &PlanInputs {
                current: cur(2),
                startup_samples: vec![1.0],
                startup_batches: vec![],
                gpu: Some(cap(4, 1, 2)),
            },
        );
        assert_eq!(p.infeasible, None);
        let g = p.gpu.unwrap();
        assert_eq!((g.peak, g.held_now, g.free_now), (3, 2, 1));
        assert!(p.duration_p50_seconds.is_some());
        // No spare GPU: replaced in place, never more than held.
        let p = predict(
            &name(),
            &spec,
            &PlanInputs {
                current: cur(2),
                startup_samples: vec![1.0],
                startup_batches: vec![],
                gpu: Some(cap(2, 0, 2)),
            },
        );
        assert_eq!(p.infeasible, None, "{:?}", p.waves);
        assert_eq!(p.gpu.unwrap().peak, 2);
        // 4 instances × 2 GPUs on 6 usable: infeasible, with the numbers.
        let big = gpu_spec(4, 2);
        let p = predict(
            &name(),
            &big,
            &PlanInputs {
                current: None,
                startup_samples: vec![],
                startup_batches: vec![],
                gpu: Some(cap(8, 6, 0)),
            },
        );
        let why = p.infeasible.clone().expect("infeasible");
        assert!(
            why.contains(
                "needs 8 A100 unit(s) (4 replicas × 2); 6 free + 0 held by web = 6 usable of 8"
            ),
            "{why}"
        );
        assert!(describe(&p).iter().any(|l| l.starts_with("INFEASIBLE: ")));
    }

    #[test]
    fn a_new_service_is_one_wave() {
        let spec = rolling(5, 1, 0);
        let p = predict(&name(), &spec, &PlanInputs::default());
        assert_eq!(p.from_replicas, None);
        assert_eq!(p.waves.len(), 1, "{:?}", p.waves);
        assert_eq!(p.waves[0].new_desired, 5);
        assert!(p.duration_p50_seconds.is_some_and(|d| d < 0.01), "{p:?}");
    }
}
