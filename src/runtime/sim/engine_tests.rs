//! Engine behaviour tables, driven through the `sim` runtime (the engine
//! itself is pure; the sim only plays the instances). They live beside the
//! simulator so that `src/engine` depends on no runtime, not even in tests.

use crate::engine::*;
use crate::manifest::Revision;
use crate::manifest::{
    BlueGreenParams, Gate, GpuInventory, GpuRequest, GpuSharing, InstanceTemplate, IntOrPercent,
    OnNoData, RollingUpdateParams, ServiceName, ServiceSpec, Strategy,
};
use crate::model::{Action, Observed};
use crate::runtime::sim::Behaviour;
use crate::runtime::sim::scenario::{
    GateScript, Outcome, Scenario, ScriptCommand, ScriptEvent, Simulation, TemplateChange, Tick,
};
use crate::runtime::{GpuCapacity, Instance, InstancePhase, ObservedRevision};
use crate::time::Time;
use IntOrPercent::{Int, Percent};

fn spec(r: u32, surge: IntOrPercent, unavailable: IntOrPercent) -> ServiceSpec {
    let mut s = ServiceSpec::with_defaults(r, InstanceTemplate::command(["app"]));
    s.template.env.insert("VERSION".into(), "2".into());
    s.strategy = Strategy::RollingUpdate {
        rolling_update: RollingUpdateParams {
            max_surge: surge,
            max_unavailable: unavailable,
        },
    };
    s
}

fn blue_green(r: u32, auto: bool, delay: u32) -> ServiceSpec {
    let mut s = spec(r, Percent(25), Percent(25));
    s.strategy = Strategy::BlueGreen {
        blue_green: BlueGreenParams {
            preview_port: None,
            auto_promote: auto,
            scale_down_delay_seconds: delay,
        },
    };
    s
}

fn start() -> TemplateChange {
    TemplateChange {
        version: Some("1".into()),
        ..TemplateChange::default()
    }
}

fn startup(s: f64) -> Behaviour {
    Behaviour {
        startup_seconds: s,
        ..Behaviour::default()
    }
}

fn run(spec: ServiceSpec, scenario: Scenario) -> (Outcome, Vec<Tick>, Simulation) {
    let mut sim = Simulation::new(
        ServiceName::parse("web").unwrap(),
        spec,
        Some(&start()),
        &scenario,
    )
    .expect("valid scenario");
    let mut ticks = Vec::new();
    let out = sim.run(|t, _| ticks.push(t.clone()));
    (out, ticks, sim)
}

/// (t, start replicas, target replicas) at each tick, by label.
fn replicas_by_time(sim: &Simulation, ticks: &[Tick]) -> Vec<(f64, u32, u32)> {
    let find = |t: &Tick, label: &str| {
        t.revisions
            .iter()
            .find(|(r, _)| sim.label(r) == label)
            .map(|(_, c)| c.0)
            .unwrap_or(0)
    };
    ticks
        .iter()
        .map(|t| (t.t, find(t, "start"), find(t, "target")))
        .collect()
}

fn last_at(v: &[(f64, u32, u32)], t: f64) -> (u32, u32) {
    v.iter()
        .rev()
        .find(|x| x.0 <= t)
        .map(|x| (x.1, x.2))
        .unwrap_or((0, 0))
}

#[test]
fn worked_example_from_engine_md() {
    // R=10, maxSurge 3, maxUnavailable 2, new instances available 5 s after creation.
    let sc = Scenario {
        instances: startup(5.0),
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(spec(10, Int(3), Int(2)), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    let v = replicas_by_time(&sim, &ticks);
    // new 0→3, old 10→8, new 3→5 at t=0; (t=5) old 8→3, new 5→10; (t=10) old 3→0.
    assert_eq!(last_at(&v, 0.0), (8, 5));
    assert_eq!(last_at(&v, 5.0), (3, 10));
    assert_eq!(last_at(&v, 10.0), (0, 10));
    assert_eq!(out.t, 10.0);
}

#[test]
fn rolling_never_exceeds_surge_nor_drops_below_min_available() {
    for (r, s, u) in [
        (10, Int(3), Int(2)),
        (4, Percent(25), Int(0)),
        (7, Int(0), Percent(50)),
        (1, Percent(25), Percent(25)),
    ] {
        let sc = Scenario {
            instances: Behaviour {
                startup_seconds: 3.0,
                startup_jitter_seconds: 4.0,
                stop_seconds: 2.0,
                ..Behaviour::default()
            },
            seed: 9,
            ..Scenario::default()
        };
        let sp = spec(r, s, u);
        let (surge, unav) = rolling::fenceposts(s, u, r);
        let mut sim =
            Simulation::new(ServiceName::parse("web").unwrap(), sp, Some(&start()), &sc).unwrap();
        let out = sim.run(|t, _| {
            let live: u32 = t.revisions.values().map(|c| c.0).sum();
            let avail: u32 = t.revisions.values().map(|c| c.2).sum();
            assert!(
                live <= r + surge,
                "R={r}: {live} live > {r} + {surge} at t={}",
                t.t
            );
            assert!(
                avail + rolling::cap_unavailable(unav, r) >= r,
                "R={r}: only {avail} available at t={}",
                t.t
            );
        });
        assert_eq!(out.result, Phase::Complete, "R={r}: {}", out.reason);
    }
}

#[test]
fn recreate_waits_for_old_instances_to_stop() {
    let mut sp = spec(3, Int(1), Int(0));
    sp.strategy = Strategy::Recreate;
    let sc = Scenario {
        instances: Behaviour {
            startup_seconds: 2.0,
            stop_seconds: 7.0,
            ..Behaviour::default()
        },
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(sp, sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    let v = replicas_by_time(&sim, &ticks);
    assert_eq!(
        last_at(&v, 0.0),
        (0, 0),
        "old scaled to 0, new not yet created"
    );
    assert_eq!(last_at(&v, 6.9), (0, 0));
    assert_eq!(
        last_at(&v, 7.0),
        (0, 3),
        "new created once the old ones are gone"
    );
    assert_eq!(out.t, 9.0);
}

#[test]
fn blue_green_auto_promotes_then_scales_down_after_delay() {
    let sc = Scenario {
        instances: startup(4.0),
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(blue_green(3, true, 30), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    let v = replicas_by_time(&sim, &ticks);
    assert_eq!(last_at(&v, 0.0), (3, 3), "new beside old");
    assert_eq!(
        last_at(&v, 33.9),
        (3, 3),
        "old kept during the scale-down delay"
    );
    assert_eq!(last_at(&v, 34.0), (0, 3));
    let promoted = ticks
        .iter()
        .find(|t| t.events.iter().any(|e| e.contains("promoted")))
        .unwrap();
    assert_eq!(promoted.t, 4.0);
}

#[test]
fn blue_green_manual_waits_for_promote() {
    let sc = Scenario {
        instances: startup(2.0),
        events: vec![ScriptEvent {
            at: 50.0,
            command: Some(ScriptCommand::Promote),
            new_revision: None,
            replicas: None,
        }],
        ..Scenario::default()
    };
    let (out, ticks, _) = run(blue_green(2, false, 0), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    assert!(
        ticks
            .iter()
            .any(|t| t.phase == Phase::AwaitingPromotion && t.t == 2.0)
    );
    let promoted = ticks
        .iter()
        .find(|t| t.events.iter().any(|e| e.contains("promoted")))
        .unwrap();
    assert_eq!(promoted.t, 50.0);
}

#[test]
fn blue_green_abort_switches_back_and_rolls_back() {
    let sc = Scenario {
        instances: startup(2.0),
        events: vec![ScriptEvent {
            at: 10.0,
            command: Some(ScriptCommand::Abort),
            new_revision: None,
            replicas: None,
        }],
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(blue_green(2, true, 60), sc);
    assert_eq!(out.result, Phase::Failed);
    assert!(out.reason.contains("aborted by a person"), "{}", out.reason);
    assert!(
        out.reason.contains("rolled back to start"),
        "{}",
        out.reason
    );
    let abort = ticks
        .iter()
        .find(|t| {
            t.t == 10.0
                && t.events
                    .iter()
                    .any(|e| e.contains("switched active traffic back"))
        })
        .unwrap();
    assert!(abort.events.iter().any(|e| e.contains("aborted")));
    let v = replicas_by_time(&sim, &ticks);
    assert_eq!(last_at(&v, 10.0), (2, 0));
}

#[test]
fn blue_green_post_promotion_gate_failure_switches_back() {
    let mut sp = blue_green(2, true, 30);
    sp.gates = vec![Gate::Webhook {
        url: "http://127.0.0.1:1/g".into(),
        timeout_seconds: 5,
        on_no_data: OnNoData::Wait,
    }];
    let sc = Scenario {
        instances: startup(2.0),
        gates: vec![GateScript {
            pass: Some(0.0),
            fail: Some(12.0),
            reason: Some("error rate 7%".into()),
        }],
        ..Scenario::default()
    };
    let (out, ticks, _) = run(sp, sc);
    assert_eq!(out.result, Phase::Failed);
    assert!(
        out.reason
            .contains("post-promotion gate webhook failed: error rate 7%"),
        "{}",
        out.reason
    );
    let t = ticks
        .iter()
        .find(|t| {
            t.events
                .iter()
                .any(|e| e.contains("switched active traffic back"))
        })
        .unwrap();
    assert_eq!(t.t, 12.0);
}

#[test]
fn gates_pending_block_completion_but_do_not_fail() {
    let mut sp = spec(2, Int(1), Int(0));
    sp.gates = vec![Gate::Webhook {
        url: "http://127.0.0.1:1/g".into(),
        timeout_seconds: 5,
        on_no_data: OnNoData::Wait,
    }];
    let sc = Scenario {
        instances: startup(1.0),
        gates: vec![GateScript {
            pass: Some(100.0),
            fail: None,
            reason: None,
        }],
        ..Scenario::default()
    };
    let (out, _, _) = run(sp.clone(), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    assert_eq!(out.t, 100.0);
    // Never any data: the deadline fails it, naming the gate.
    sp.progress_deadline_seconds = 60;
    let sc = Scenario {
        instances: startup(1.0),
        gates: vec![GateScript::default()],
        ..Scenario::default()
    };
    let (out, _, _) = run(sp, sc);
    assert_eq!(out.result, Phase::Failed);
    assert!(
        out.reason
            .starts_with("gates pending for 60 s: webhook: no data yet"),
        "{}",
        out.reason
    );
}

#[test]
fn deadline_names_what_is_stuck_and_rolls_back() {
    let mut sp = spec(4, Int(1), Int(0));
    sp.progress_deadline_seconds = 600;
    let mut revisions = std::collections::BTreeMap::new();
    revisions.insert(
        "target".to_string(),
        Behaviour {
            startup_seconds: 1.0,
            never_ready: true,
            not_ready_reason: Some("readiness probe GET /healthz returned 503".into()),
            ..Behaviour::default()
        },
    );
    let sc = Scenario {
        instances: startup(1.0),
        revisions,
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(sp, sc);
    assert_eq!(out.result, Phase::Failed);
    assert!(
        out.reason.starts_with(
            "1 of 1 created instances not ready for 600 s; 3 not created yet: readiness probe GET /healthz returned 503"
        ),
        "{}",
        out.reason
    );
    assert!(
        out.reason.contains("; rolled back to start ("),
        "{}",
        out.reason
    );
    let v = replicas_by_time(&sim, &ticks);
    assert_eq!(v.last().map(|x| (x.1, x.2)), Some((4, 0)));
}

#[test]
fn no_rollback_when_disabled() {
    let mut sp = spec(2, Int(1), Int(0));
    sp.progress_deadline_seconds = 30;
    sp.on_failure.rollback = false;
    let mut revisions = std::collections::BTreeMap::new();
    revisions.insert(
        "target".to_string(),
        Behaviour {
            never_ready: true,
            ..Behaviour::default()
        },
    );
    let (out, _, _) = run(
        sp,
        Scenario {
            revisions,
            ..Scenario::default()
        },
    );
    assert_eq!(out.result, Phase::Failed);
    assert!(!out.reason.contains("rolled back"), "{}", out.reason);
}

fn gpu_spec(r: u32, per: u32, allow_in_place: bool) -> ServiceSpec {
    let mut sp = spec(r, Int(1), Int(0));
    sp.template.resources.gpu = Some(GpuRequest {
        count: per,
        product: Some("A100".into()),
        memory_mib: None,
        sharing: GpuSharing::Exclusive,
        allow_in_place,
    });
    sp
}

fn a100(n: u32) -> Vec<GpuInventory> {
    vec![GpuInventory {
        product: "A100".into(),
        memory_mib: None,
        count: n,
        time_sliced_replicas: None,
        mig: Default::default(),
    }]
}

#[test]
fn gpu_rollout_that_can_never_fit_fails_at_once() {
    let mut sp = gpu_spec(3, 2, true);
    sp.on_failure.rollback = false;
    // The start revision holds 6 GPUs of 6; the target needs 3 × 2 = 6: fits.
    let (out, _, _) = run(
        sp.clone(),
        Scenario {
            gpus: a100(6),
            instances: startup(1.0),
            ..Scenario::default()
        },
    );
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    sp.replicas = 4;
    let mut sim = Simulation::new(
        ServiceName::parse("web").unwrap(),
        sp,
        Some(&start()),
        &Scenario {
            gpus: a100(6),
            ..Scenario::default()
        },
    )
    .unwrap();
    let out = sim.run(|_, _| {});
    assert_eq!(out.result, Phase::Failed);
    assert_eq!(out.t, 0.0);
    assert!(
        out.reason.contains("needs 8 GPUs (A100), 6 exist"),
        "{}",
        out.reason
    );
}

#[test]
fn gpu_without_headroom_replaces_in_place() {
    let sc = Scenario {
        gpus: a100(4),
        instances: Behaviour {
            startup_seconds: 5.0,
            stop_seconds: 3.0,
            ..Behaviour::default()
        },
        ..Scenario::default()
    };
    let mut max_held = 0;
    let mut sim = Simulation::new(
        ServiceName::parse("web").unwrap(),
        gpu_spec(4, 1, true),
        Some(&start()),
        &sc,
    )
    .unwrap();
    let mut ticks = Vec::new();
    let out = sim.run(|t, w| {
        let (held, exist) = w.gpu_usage();
        assert!(held <= exist);
        max_held = max_held.max(held);
        ticks.push(t.clone());
    });
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    assert!(
        ticks
            .iter()
            .any(|t| t.events.iter().any(|e| e.contains("replacing in place")))
    );
    // Four waves of (stop 3 s + start 5 s).
    assert_eq!(out.t, 32.0);
    // Without allowInPlace it fails at once with the reason.
    let sc = Scenario {
        gpus: a100(4),
        ..Scenario::default()
    };
    let mut sp = gpu_spec(4, 1, false);
    sp.on_failure.rollback = false;
    let (out, _, _) = run(sp, sc);
    assert_eq!(out.result, Phase::Failed);
    assert_eq!(out.t, 0.0);
    assert!(
        out.reason.contains("gpu.allowInPlace is false"),
        "{}",
        out.reason
    );
}

#[test]
fn gpu_surge_uses_free_gpus_only() {
    // 4 running + 2 free: surge is 2 even though maxSurge is 3.
    let mut sp = gpu_spec(4, 1, true);
    sp.strategy = Strategy::RollingUpdate {
        rolling_update: RollingUpdateParams {
            max_surge: Int(3),
            max_unavailable: Int(0),
        },
    };
    let sc = Scenario {
        gpus: a100(6),
        instances: Behaviour {
            startup_seconds: 5.0,
            stop_seconds: 1.0,
            ..Behaviour::default()
        },
        ..Scenario::default()
    };
    let mut sim =
        Simulation::new(ServiceName::parse("web").unwrap(), sp, Some(&start()), &sc).unwrap();
    let out = sim.run(|t, w| {
        let live: u32 = t.revisions.values().map(|c| c.0).sum();
        assert!(live <= 6, "{live} instances but only 6 GPUs at t={}", t.t);
        assert!(w.gpu_usage().0 <= 6);
    });
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
}

#[test]
fn blue_green_without_twice_the_gpus_fails_preflight() {
    let mut sp = gpu_spec(3, 1, true);
    sp.strategy = blue_green(3, true, 0).strategy;
    sp.on_failure.rollback = false;
    let (out, _, _) = run(
        sp,
        Scenario {
            gpus: a100(5),
            ..Scenario::default()
        },
    );
    assert_eq!(out.result, Phase::Failed);
    assert!(
        out.reason.contains(
            "blue-green (2 × 3 instances × 1 during the switch) needs 6 GPUs (A100), 5 exist"
        ),
        "{}",
        out.reason
    );
}

#[test]
fn rollover_drains_the_half_done_revision() {
    let sc = Scenario {
        instances: startup(10.0),
        events: vec![ScriptEvent {
            at: 5.0,
            command: None,
            new_revision: Some(TemplateChange {
                name: Some("v3".into()),
                version: Some("3".into()),
                ..TemplateChange::default()
            }),
            replicas: None,
        }],
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(spec(4, Int(1), Int(1)), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    let last = ticks.last().unwrap();
    let by_label: std::collections::BTreeMap<String, u32> = last
        .revisions
        .iter()
        .map(|(r, c)| (sim.label(r), c.0))
        .collect();
    assert_eq!(by_label.get("v3"), Some(&4));
    assert_eq!(by_label.get("target").copied().unwrap_or(0), 0);
    assert_eq!(by_label.get("start").copied().unwrap_or(0), 0);
    assert!(
        ticks
            .iter()
            .any(|t| t.events.iter().any(|e| e.contains("supersedes target")))
    );
}

#[test]
fn replicas_change_mid_rollout_scales_proportionally() {
    let sc = Scenario {
        instances: startup(10.0),
        events: vec![ScriptEvent {
            at: 1.0,
            command: None,
            new_revision: None,
            replicas: Some(20),
        }],
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(spec(10, Int(3), Int(2)), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    // t=0: old 8, new 5 (13 = 10 + 3). t=1: 20 + 3 = 23 shared by size
    // (annotated 13): old round(8 × 23 / 13) = 14, new round(5 × 23 / 13) = 9.
    let v = replicas_by_time(&sim, &ticks);
    assert_eq!(last_at(&v, 1.0), (14, 9));
    let last = ticks.last().unwrap();
    assert_eq!(last.revisions.values().map(|c| c.0).sum::<u32>(), 20);
}

#[test]
fn pause_stops_and_resume_continues() {
    let sc = Scenario {
        instances: startup(5.0),
        events: vec![
            ScriptEvent {
                at: 1.0,
                command: Some(ScriptCommand::Pause),
                new_revision: None,
                replicas: None,
            },
            ScriptEvent {
                at: 1000.0,
                command: Some(ScriptCommand::Resume),
                new_revision: None,
                replicas: None,
            },
        ],
        ..Scenario::default()
    };
    let mut sp = spec(10, Int(3), Int(2));
    sp.progress_deadline_seconds = 60; // a pause does not count against it
    let (out, ticks, sim) = run(sp, sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    let v = replicas_by_time(&sim, &ticks);
    assert_eq!(last_at(&v, 999.0), (8, 5), "nothing moved while paused");
    assert_eq!(out.t, 1005.0);
    assert!(ticks.iter().any(|t| t.phase == Phase::Paused));
}

#[test]
fn crash_loop_fails_with_the_crash_reason() {
    let mut revisions = std::collections::BTreeMap::new();
    revisions.insert(
        "target".to_string(),
        Behaviour {
            startup_seconds: 1.0,
            crash_after_seconds: Some(3.0),
            crash_loop: true,
            ..Behaviour::default()
        },
    );
    let mut sp = spec(2, Int(1), Int(0));
    sp.min_ready_seconds = 10;
    sp.progress_deadline_seconds = 120;
    let (out, _, _) = run(
        sp,
        Scenario {
            instances: startup(1.0),
            revisions,
            ..Scenario::default()
        },
    );
    assert_eq!(out.result, Phase::Failed);
    assert!(out.reason.contains("CrashLoopBackOff"), "{}", out.reason);
    assert!(
        out.reason.contains("rolled back to start"),
        "{}",
        out.reason
    );
}

// ---- direct step tables ---------------------------------------------------

fn inst(id: &str, ready_since: Option<u64>) -> Instance {
    Instance {
        id: id.into(),
        phase: InstancePhase::Running,
        created_at: Time(0),
        ready_since: ready_since.map(Time::from_secs),
        restarts: 0,
        reason: None,
        gpus: vec![],
    }
}

fn orev(
    name: &str,
    created: u64,
    desired: u32,
    ready: &[Option<u64>],
    template: &InstanceTemplate,
) -> ObservedRevision {
    ObservedRevision {
        revision: Revision::from(name),
        created_at: Time::from_secs(created),
        desired,
        instances: ready
            .iter()
            .enumerate()
            .map(|(i, r)| inst(&format!("{name}-{i}"), *r))
            .collect(),
        template: template.clone(),
    }
}

#[test]
fn complete_and_unchanged_is_idempotent() {
    let sp = spec(2, Int(1), Int(0));
    let target = crate::manifest::revision_of(&sp.template);
    let observed = Observed {
        revisions: vec![ObservedRevision {
            revision: target.clone(),
            ..orev("x", 0, 2, &[Some(0), Some(0)], &sp.template)
        }],
        ..Observed::default()
    };
    let s0 = RolloutState::start(target.clone(), None, Time::from_secs(10));
    let d1 = step(&sp, &observed, &s0, Time::from_secs(10));
    assert_eq!(d1.state.phase, Phase::Complete);
    assert_eq!(d1.state.stable, Some(target.clone()));
    assert!(d1.actions.is_empty(), "{:?}", d1.actions);
    let d2 = step(&sp, &observed, &d1.state, Time::from_secs(20));
    assert!(d2.actions.is_empty());
    assert!(d2.events.is_empty());
    assert_eq!(d2.state.phase, Phase::Complete);
    // Drift: someone scaled it to 1 → back to 2.
    let mut drifted = observed.clone();
    drifted.revisions[0].desired = 1;
    let d3 = step(&sp, &drifted, &d2.state, Time::from_secs(30));
    assert_eq!(
        d3.actions,
        vec![Action::Scale {
            revision: target,
            replicas: 2
        }]
    );
    // Same inputs, same decision.
    assert_eq!(step(&sp, &drifted, &d2.state, Time::from_secs(30)), d3);
}

#[test]
fn history_limit_forgets_oldest_empty_revisions() {
    let mut sp = spec(1, Int(1), Int(0));
    sp.revision_history_limit = 2;
    let target = crate::manifest::revision_of(&sp.template);
    let t = sp.template.clone();
    let mut revisions: Vec<ObservedRevision> = (0..5)
        .map(|i| orev(&format!("old{i}"), i, 0, &[], &t))
        .collect();
    revisions.push(ObservedRevision {
        revision: target.clone(),
        ..orev("x", 10, 1, &[Some(0)], &t)
    });
    let observed = Observed {
        revisions,
        ..Observed::default()
    };
    let mut s = RolloutState::start(target, Some(Revision::from("old1")), Time::from_secs(20));
    s.phase = Phase::Complete;
    let d = step(&sp, &observed, &s, Time::from_secs(20));
    let deleted: Vec<String> = d
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteRevision { revision } => Some(revision.to_string()),
            _ => None,
        })
        .collect();
    // old1 is the stable one (never pruned); of old0, old2, old3, old4 keep the newest 2.
    assert_eq!(deleted, vec!["old0", "old2"]);
}

#[test]
fn target_without_template_fails_clearly() {
    let sp = spec(1, Int(1), Int(0));
    let s = RolloutState::start(Revision::from("deadbeef00"), None, Time(0));
    let d = step(&sp, &Observed::default(), &s, Time(0));
    assert_eq!(d.state.phase, Phase::Failed);
    assert!(
        d.state.reason.contains("nothing to create it from"),
        "{}",
        d.state.reason
    );
}

#[test]
fn new_service_is_created_from_the_spec() {
    let sp = spec(3, Percent(25), Percent(25));
    let target = crate::manifest::revision_of(&sp.template);
    let s = next_rollout(None, target.clone(), Time(0));
    let d = step(&sp, &Observed::default(), &s, Time(0));
    assert_eq!(
        d.actions,
        vec![
            Action::CreateRevision {
                revision: target.clone(),
                template: sp.template.clone()
            },
            Action::Scale {
                revision: target,
                replicas: 3
            },
        ]
    );
}

#[test]
fn rollback_contract() {
    let sp = spec(2, Int(1), Int(0));
    let mut failed =
        RolloutState::start(Revision::from("new"), Some(Revision::from("old")), Time(0));
    assert!(!should_roll_back(&sp, &failed));
    assert!(matches!(
        rollback(&failed, &Observed::default(), Time(0)),
        Err(RollbackError::NotFailed { .. })
    ));
    failed.phase = Phase::Failed;
    assert!(should_roll_back(&sp, &failed));
    assert_eq!(
        rollback(&failed, &Observed::default(), Time(0)),
        Err(RollbackError::StableGone {
            stable: Revision::from("old")
        })
    );
    let observed = Observed {
        revisions: vec![orev("old", 0, 0, &[], &sp.template)],
        ..Observed::default()
    };
    let rb = rollback(&failed, &observed, Time(5)).unwrap();
    assert_eq!(
        (rb.target.as_str(), rb.is_rollback, rb.phase),
        ("old", true, Phase::Progressing)
    );
    let mut rb_failed = rb.clone();
    rb_failed.phase = Phase::Failed;
    assert!(
        !should_roll_back(&sp, &rb_failed),
        "a failed rollback is not rolled back again"
    );
    let mut no_stable = failed.clone();
    no_stable.stable = None;
    assert!(matches!(
        rollback(&no_stable, &observed, Time(0)),
        Err(RollbackError::NoStableRevision { .. })
    ));
}

#[test]
fn next_rollout_table() {
    let rev = |s: &str| Revision::from(s);
    let mut complete = RolloutState::start(rev("b"), Some(rev("a")), Time(0));
    complete.phase = Phase::Complete;
    complete.stable = Some(rev("b"));
    let mut failed = RolloutState::start(rev("b"), Some(rev("a")), Time(0));
    failed.phase = Phase::Failed;
    let flight = RolloutState::start(rev("b"), Some(rev("a")), Time(0));
    // (previous, new target, expected stable, expected target)
    let cases: Vec<(Option<RolloutState>, &str, Option<&str>)> = vec![
        (None, "c", None),
        (Some(complete.clone()), "c", Some("b")),
        (Some(failed.clone()), "c", Some("a")),
        (Some(flight.clone()), "c", Some("a")),
    ];
    for (prev, t, stable) in cases {
        let s = next_rollout(prev.as_ref(), rev(t), Time(7));
        assert_eq!(s.target, rev(t));
        assert_eq!(
            s.stable,
            stable.map(rev),
            "prev {:?}",
            prev.map(|p| p.phase)
        );
        assert!(!s.is_rollback);
    }
    assert_eq!(
        next_rollout(Some(&failed), rev("b"), Time(7)),
        failed,
        "same revision: same state"
    );
}

#[test]
fn blue_green_rollback_keeps_traffic_on_the_good_revision() {
    let sp = blue_green(3, true, 30);
    let t = sp.template.clone();
    // The good revision is active with one instance still starting; the failed one is up.
    let observed = Observed {
        revisions: vec![
            orev("good", 0, 3, &[Some(0), Some(0), None], &t),
            orev("bad", 10, 3, &[None, None, None], &t),
        ],
        active: Some(Revision::from("good")),
        ..Observed::default()
    };
    let mut failed = RolloutState::start(
        Revision::from("bad"),
        Some(Revision::from("good")),
        Time::from_secs(10),
    );
    failed.phase = Phase::Failed;
    let rb = rollback(&failed, &observed, Time::from_secs(700)).unwrap();
    let d = step(&sp, &observed, &rb, Time::from_secs(700));
    assert!(
        !d.actions.iter().any(
            |a| matches!(a, Action::SetTraffic { active: Some(r), .. } if r.as_str() == "bad")
        ),
        "{:?}",
        d.actions
    );
    assert_eq!(d.state.phase, Phase::Progressing);
}

#[test]
fn abort_rolls_back_even_without_on_failure_rollback() {
    let mut sp = spec(4, Int(1), Int(0));
    sp.on_failure.rollback = false;
    let sc = Scenario {
        instances: startup(10.0),
        events: vec![ScriptEvent {
            at: 3.0,
            command: Some(ScriptCommand::Abort),
            new_revision: None,
            replicas: None,
        }],
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(sp, sc);
    assert_eq!(out.result, Phase::Failed);
    assert!(
        out.reason.contains("aborted by a person (floyd abort)"),
        "{}",
        out.reason
    );
    assert!(
        out.reason.contains("rolled back to start"),
        "{}",
        out.reason
    );
    let v = replicas_by_time(&sim, &ticks);
    assert_eq!(v.last().map(|x| (x.1, x.2)), Some((4, 0)));
}

#[test]
fn commands_in_terminal_phases_are_ignored_with_an_event() {
    let sp = spec(1, Int(1), Int(0));
    let target = crate::manifest::revision_of(&sp.template);
    let observed = Observed {
        revisions: vec![ObservedRevision {
            revision: target.clone(),
            ..orev("x", 0, 1, &[Some(0)], &sp.template)
        }],
        ..Observed::default()
    };
    let mut s = RolloutState::start(target, None, Time(0));
    s.phase = Phase::Complete;
    s.pending_commands = vec![Command::Pause, Command::Abort, Command::Promote];
    let d = step(&sp, &observed, &s, Time(0));
    assert_eq!(d.state.phase, Phase::Complete);
    assert!(d.state.pending_commands.is_empty());
    assert_eq!(d.events.len(), 3, "{:?}", d.events);
    assert!(d.events.iter().all(|e| e.contains("ignored")));
}

#[test]
fn deadline_with_nothing_created_and_nothing_old_blames_the_runtime() {
    let mut sp = spec(2, Int(1), Int(0));
    sp.progress_deadline_seconds = 30;
    sp.on_failure.rollback = false;
    let target = crate::manifest::revision_of(&sp.template);
    // The runtime says the new revision wants 2 but it has no instances, and
    // nothing old is running: nothing is in the way.
    let observed = Observed {
        revisions: vec![ObservedRevision {
            revision: target.clone(),
            ..orev("x", 0, 2, &[], &sp.template)
        }],
        ..Observed::default()
    };
    let mut s = RolloutState::start(target.clone(), None, Time::from_secs(0));
    for t in [0, 10, 20, 31] {
        s = step(&sp, &observed, &s, Time::from_secs(t)).state;
    }
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(
        s.reason,
        "2 of 2 new instances not created for 30 s: the runtime has not created them (check its events and logs)"
    );
    // With an old revision still holding its instances, it says so.
    let mut with_old = observed.clone();
    with_old
        .revisions
        .insert(0, orev("old", 0, 2, &[Some(0), Some(0)], &sp.template));
    let mut s = RolloutState::start(target, Some(Revision::from("old")), Time::from_secs(0));
    for t in [0, 10, 20, 31] {
        s = step(&sp, &with_old, &s, Time::from_secs(t)).state;
    }
    assert_eq!(s.phase, Phase::Failed);
    assert!(
        s.reason
            .contains("waiting for old instances to make room (2 running, 0 stopping)"),
        "{}",
        s.reason
    );
}

/// Regression (GitOps-correctness issue, sequence 6): with every GPU taken
/// and `allowInPlace: false` a new revision fails at once, marked infeasible;
/// the rollback to the start revision, whose instances were never touched,
/// is complete at once instead of failing on the same surge arithmetic.
#[test]
fn rollback_to_an_untouched_revision_without_free_gpus_completes_at_once() {
    let sp = gpu_spec(2, 1, false);
    let mut old_t = sp.template.clone();
    old_t.env.insert("VERSION".into(), "1".into());
    let cap = GpuCapacity {
        kind: "A100".into(),
        exist: 2,
        free: 0,
        held_by_service: 2,
    };
    let observed = Observed {
        revisions: vec![orev("old", 0, 2, &[Some(1), Some(1)], &old_t)],
        gpu: Some(cap.clone()),
        ..Observed::default()
    };
    let target = crate::manifest::revision_of(&sp.template);
    let state = RolloutState::start(
        target.clone(),
        Some(Revision::from("old")),
        Time::from_secs(100),
    );
    let d = step(&sp, &observed, &state, Time::from_secs(100));
    assert_eq!(d.state.phase, Phase::Failed, "{}", d.state.reason);
    assert!(
        d.state.reason.contains("allowInPlace is false"),
        "{}",
        d.state.reason
    );
    assert!(d.state.progress.infeasible, "nothing of it could be done");
    let rb = rollback(&d.state, &observed, Time::from_secs(100)).unwrap();
    // The runtime may now hold the new revision, created empty.
    let mut after = observed.clone();
    after
        .revisions
        .push(orev(target.as_str(), 100, 0, &[], &sp.template));
    let d2 = step(&sp, &after, &rb, Time::from_secs(100));
    assert_eq!(d2.state.phase, Phase::RolledBack, "{}", d2.state.reason);
    assert!(
        d2.actions
            .iter()
            .all(|a| !matches!(a, Action::CreateRevision { .. })),
        "{:?}",
        d2.actions
    );
}
// ---- Canary -------------------------------------------------------------------

use crate::manifest::{CanaryAnalysis, CanaryParams, CanaryPause, CanaryStep};

fn set_weight(w: u32) -> CanaryStep {
    CanaryStep::SetWeight(w)
}
fn pause(d: Option<u32>) -> CanaryStep {
    CanaryStep::Pause(CanaryPause {
        duration_seconds: d,
    })
}
fn analysis() -> CanaryStep {
    CanaryStep::Analysis(CanaryAnalysis {})
}

fn canary(r: u32, steps: Vec<CanaryStep>) -> ServiceSpec {
    let mut s = spec(r, Percent(25), Percent(25));
    s.strategy = Strategy::Canary {
        canary: CanaryParams {
            steps,
            matches: Vec::new(),
            mirror: false,
            traffic_routing: None,
        },
    };
    s
}

fn webhook_gate() -> Gate {
    Gate::Webhook {
        url: "http://127.0.0.1:1/g".into(),
        timeout_seconds: 5,
        on_no_data: OnNoData::Wait,
    }
}

fn command(at: f64, c: ScriptCommand) -> ScriptEvent {
    ScriptEvent {
        at,
        command: Some(c),
        new_revision: None,
        replicas: None,
    }
}

/// The weight the runtime routes by, last set at or before `t`.
fn weight_at(ticks: &[Tick], t: f64) -> Option<u32> {
    ticks.iter().rev().find(|x| x.t <= t).and_then(|x| x.weight)
}

/// The weight right after the first step at `t` (before a rollback at the same instant).
fn first_weight_at(ticks: &[Tick], t: f64) -> Option<u32> {
    ticks.iter().find(|x| x.t == t).and_then(|x| x.weight)
}

fn event_time(ticks: &[Tick], needle: &str) -> Option<f64> {
    ticks
        .iter()
        .find(|t| t.events.iter().any(|e| e.contains(needle)))
        .map(|t| t.t)
}

#[test]
fn canary_steps_weights_pause_analysis_and_promote() {
    let sc = Scenario {
        instances: startup(5.0),
        events: vec![command(200.0, ScriptCommand::Promote)],
        ..Scenario::default()
    };
    let steps = vec![
        set_weight(25),
        pause(Some(60)),
        set_weight(50),
        analysis(),
        pause(None),
    ];
    let (out, ticks, sim) = run(canary(4, steps), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    let v = replicas_by_time(&sim, &ticks);
    // t=0: one canary instance (ceil(25% × 4)), weight 0 until it is available.
    assert_eq!(last_at(&v, 0.0), (4, 1));
    assert_eq!(weight_at(&ticks, 0.0), Some(0));
    // t=5: available: weight 25, the 60 s pause starts.
    assert_eq!(weight_at(&ticks, 5.0), Some(25));
    assert_eq!(
        last_at(&v, 64.9),
        (4, 1),
        "the stable revision keeps its size"
    );
    // t=65: pause over, setWeight 50 needs 2 canary instances; t=70: weight 50.
    assert_eq!(last_at(&v, 65.0), (4, 2));
    assert_eq!(weight_at(&ticks, 69.9), Some(25));
    assert_eq!(weight_at(&ticks, 70.0), Some(50));
    // Analysis with no gates passes; the indefinite pause waits for a person.
    assert!(
        ticks
            .iter()
            .any(|t| t.t == 70.0 && t.phase == Phase::AwaitingPromotion)
    );
    assert_eq!(weight_at(&ticks, 199.0), Some(50));
    assert_eq!(last_at(&v, 199.0), (4, 2));
    // t=200 promote: canary grows to 4 while stable shrinks (surge 2, maxUnavailable 0).
    assert_eq!(last_at(&v, 200.0), (2, 4));
    assert_eq!(out.t, 205.0);
    let last = ticks.last().unwrap();
    assert_eq!(
        last.weight, None,
        "a finished canary leaves no split behind"
    );
    assert_eq!(last_at(&v, 205.0), (0, 4));
    // Never fewer than 4 available, never more than 4 + 2 instances.
    for t in &ticks {
        let live: u32 = t.revisions.values().map(|c| c.0).sum();
        assert!(live <= 6, "{live} instances at t={}", t.t);
    }
    let step = ticks
        .iter()
        .find(|t| t.t == 100.0 || t.phase == Phase::AwaitingPromotion)
        .and_then(|t| t.canary.clone())
        .unwrap();
    assert_eq!((step.step, step.steps, step.weight), (4, 5, 50));
    assert_eq!(step.current, "pause (until promoted)");
}

#[test]
fn canary_promote_skips_a_timed_pause() {
    let sc = Scenario {
        instances: startup(2.0),
        events: vec![command(20.0, ScriptCommand::Promote)],
        ..Scenario::default()
    };
    let (out, ticks, _) = run(canary(2, vec![set_weight(50), pause(Some(3600))]), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    assert!(out.t < 30.0, "completed at {}", out.t);
    assert_eq!(
        event_time(&ticks, "promoted by a person"),
        Some(20.0),
        "{ticks:#?}"
    );
}

#[test]
fn canary_one_promote_ends_one_pause() {
    let sc = Scenario {
        instances: startup(2.0),
        events: vec![
            command(10.0, ScriptCommand::Promote),
            command(50.0, ScriptCommand::Promote),
        ],
        ..Scenario::default()
    };
    let steps = vec![set_weight(50), pause(None), set_weight(50), pause(None)];
    let (out, ticks, _) = run(canary(2, steps), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    assert!(
        ticks
            .iter()
            .any(|t| t.t == 10.0 && t.phase == Phase::AwaitingPromotion),
        "the second pause waits: {ticks:#?}"
    );
    assert!(out.t >= 50.0, "{}", out.t);
}

#[test]
fn canary_promote_outside_a_pause_is_ignored_with_an_event() {
    let sc = Scenario {
        instances: startup(10.0),
        events: vec![command(2.0, ScriptCommand::Promote)],
        ..Scenario::default()
    };
    let (out, ticks, _) = run(canary(2, vec![set_weight(50), pause(Some(60))]), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    assert_eq!(event_time(&ticks, "promote ignored"), Some(2.0));
    assert!(out.t >= 70.0, "the pause still ran: {}", out.t);
}

#[test]
fn canary_abort_at_each_step_sets_weight_0_and_rolls_back() {
    // steps: setWeight 25 (t 0..5), pause 60s (t 5..65), analysis (gate
    // passes at t=100), pause until promoted (t 100..).
    for (at, step) in [
        (2.0, "setWeight"),
        (30.0, "pause 60s"),
        (80.0, "analysis"),
        (150.0, "until promoted"),
    ] {
        let mut sp = canary(
            4,
            vec![set_weight(25), pause(Some(60)), analysis(), pause(None)],
        );
        sp.gates = vec![webhook_gate()];
        let sc = Scenario {
            instances: startup(5.0),
            gates: vec![GateScript {
                pass: Some(100.0),
                fail: None,
                reason: None,
            }],
            events: vec![command(at, ScriptCommand::Abort)],
            ..Scenario::default()
        };
        let (out, ticks, sim) = run(sp, sc);
        assert_eq!(out.result, Phase::Failed, "abort during {step}");
        assert!(
            out.reason.contains("aborted by a person")
                && out.reason.contains("rolled back to start"),
            "abort during {step}: {}",
            out.reason
        );
        let tick = ticks.iter().find(|t| t.t == at).unwrap();
        let before = ticks.iter().rev().find(|t| t.t < at).unwrap();
        assert_eq!(
            tick.canary.as_ref().map(|c| c.current.as_str()),
            Some(
                before
                    .canary
                    .as_ref()
                    .map(|c| c.current.as_str())
                    .unwrap_or_default()
            ),
            "abort during {step}"
        );
        assert!(
            before
                .canary
                .as_ref()
                .is_some_and(|c| c.current.contains(step)),
            "abort during {step}: {:?}",
            before.canary
        );
        assert_eq!(
            tick.weight,
            Some(0),
            "abort during {step}: weight 0 at once"
        );
        assert_eq!(
            weight_at(&ticks, at),
            None,
            "abort during {step}: the rollback leaves no split once the canary is gone"
        );
        let v = replicas_by_time(&sim, &ticks);
        assert_eq!(last_at(&v, at), (4, 0), "abort during {step}");
        for t in &ticks {
            let start: u32 = t
                .revisions
                .iter()
                .filter(|(r, _)| sim.label(r) == "start")
                .map(|(_, c)| c.2)
                .sum();
            assert_eq!(start, 4, "the stable revision stays available (t={})", t.t);
        }
    }
}

#[test]
fn canary_failing_gate_aborts_at_once_with_weight_0() {
    let mut sp = canary(20, vec![set_weight(5), pause(Some(600))]);
    sp.gates = vec![webhook_gate()];
    let sc = Scenario {
        instances: startup(3.0),
        gates: vec![GateScript {
            pass: Some(4.0),
            fail: Some(40.0),
            reason: Some("success rate 0.0 < 0.99".into()),
        }],
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(sp, sc);
    assert_eq!(out.result, Phase::Failed);
    assert!(
        out.reason
            .contains("gate webhook failed: success rate 0.0 < 0.99")
            && out.reason.contains("rolled back to start"),
        "{}",
        out.reason
    );
    assert_eq!(weight_at(&ticks, 39.9), Some(5));
    assert_eq!(first_weight_at(&ticks, 40.0), Some(0));
    let v = replicas_by_time(&sim, &ticks);
    assert_eq!(
        last_at(&v, 39.9),
        (20, 1),
        "ceil(5% × 20) = 1 canary instance"
    );
    assert_eq!(last_at(&v, 40.0), (20, 0));
}

#[test]
fn canary_analysis_waits_for_fresh_gate_results_and_fails_on_failure() {
    // Passing gate: analysis at t=2 (after setWeight 50) needs a result from
    // this step on; the sim evaluates gates at every step, so it passes at once.
    let mut sp = canary(2, vec![set_weight(50), analysis()]);
    sp.gates = vec![webhook_gate()];
    let sc = Scenario {
        instances: startup(2.0),
        gates: vec![GateScript {
            pass: Some(30.0),
            fail: None,
            reason: None,
        }],
        ..Scenario::default()
    };
    let (out, ticks, _) = run(sp.clone(), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    assert_eq!(event_time(&ticks, "all 1 gate(s) passed"), Some(30.0));
    assert_eq!(weight_at(&ticks, 29.0), Some(50), "pending holds the step");
    // A failing gate during analysis.
    let sc = Scenario {
        instances: startup(2.0),
        gates: vec![GateScript {
            pass: None,
            fail: Some(10.0),
            reason: Some("p99 1.2 s".into()),
        }],
        ..Scenario::default()
    };
    let (out, ticks, _) = run(sp, sc);
    assert_eq!(out.result, Phase::Failed);
    assert!(out.reason.contains("p99 1.2 s"), "{}", out.reason);
    assert_eq!(first_weight_at(&ticks, 10.0), Some(0));
}

#[test]
fn canary_superseded_mid_way_restarts_the_steps_for_the_newer_revision() {
    let sc = Scenario {
        instances: startup(5.0),
        events: vec![ScriptEvent {
            at: 30.0,
            command: None,
            new_revision: Some(TemplateChange {
                name: Some("v3".into()),
                version: Some("3".into()),
                ..TemplateChange::default()
            }),
            replicas: None,
        }],
        ..Scenario::default()
    };
    let (out, ticks, sim) = run(canary(4, vec![set_weight(25), pause(Some(60))]), sc);
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    let count = |t: &Tick, label: &str| {
        t.revisions
            .iter()
            .filter(|(r, _)| sim.label(r) == label)
            .map(|(_, c)| c.0)
            .sum::<u32>()
    };
    let at30 = ticks.iter().rev().find(|t| t.t == 30.0).unwrap();
    assert_eq!(count(at30, "target"), 0, "the superseded canary drains");
    assert_eq!(count(at30, "v3"), 1);
    assert_eq!(count(at30, "start"), 4);
    assert_eq!(
        weight_at(&ticks, 30.0),
        Some(0),
        "the new canary starts at 0"
    );
    assert_eq!(weight_at(&ticks, 35.0), Some(25));
    // v3's pause runs from t=35; promotion from t=95 one instance at a time
    // (the surge is the largest step's 1 canary instance): done at t=110.
    assert_eq!(out.t, 110.0);
    let last = ticks.last().unwrap();
    assert_eq!(count(last, "v3"), 4);
    assert_eq!(count(last, "start") + count(last, "target"), 0);
}

#[test]
fn canary_gpu_infeasible_fails_at_once_with_the_arithmetic() {
    let mut sp = gpu_spec(4, 1, true);
    sp.strategy = canary(4, vec![set_weight(25), pause(Some(10))]).strategy;
    sp.on_failure.rollback = false;
    let (out, _, _) = run(
        sp.clone(),
        Scenario {
            gpus: a100(4),
            instances: startup(1.0),
            ..Scenario::default()
        },
    );
    assert_eq!(out.result, Phase::Failed);
    assert_eq!(out.t, 0.0);
    assert!(
        out.reason
            .contains("canary (4 stable + 1 canary instance(s) at weight 25%) × 1 needs 5 GPUs (A100), 4 exist"),
        "{}",
        out.reason
    );
    // One GPU more: it fits and never holds more than 5.
    let mut sim = Simulation::new(
        ServiceName::parse("web").unwrap(),
        sp,
        Some(&start()),
        &Scenario {
            gpus: a100(5),
            instances: startup(1.0),
            ..Scenario::default()
        },
    )
    .unwrap();
    let out = sim.run(|t, _| {
        let live: u32 = t.revisions.values().map(|c| c.0).sum();
        assert!(live <= 5, "{live} instances at t={}", t.t);
    });
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
}

#[test]
fn canary_first_deployment_rolls_out_in_full() {
    let sp = canary(3, vec![set_weight(10), pause(None)]);
    let mut sim = Simulation::new(
        ServiceName::parse("web").unwrap(),
        sp,
        None,
        &Scenario {
            instances: startup(1.0),
            ..Scenario::default()
        },
    )
    .unwrap();
    let mut weights = Vec::new();
    let out = sim.run(|t, _| weights.push(t.weight));
    assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    assert!(weights.iter().all(Option::is_none), "{weights:?}");
}

#[test]
fn canary_never_ready_fails_at_the_deadline_naming_the_canary() {
    let mut sp = canary(10, vec![set_weight(20), pause(None)]);
    sp.progress_deadline_seconds = 60;
    let mut revisions = std::collections::BTreeMap::new();
    revisions.insert(
        "target".to_string(),
        Behaviour {
            never_ready: true,
            not_ready_reason: Some("readiness probe GET /healthz returned 503".into()),
            ..Behaviour::default()
        },
    );
    let sc = Scenario {
        instances: startup(1.0),
        revisions,
        ..Scenario::default()
    };
    let (out, ticks, _) = run(sp, sc);
    assert_eq!(out.result, Phase::Failed);
    assert!(
        out.reason.contains(
            "2 of 2 created instances not ready for 60 s: readiness probe GET /healthz returned 503"
        ),
        "{}",
        out.reason
    );
    assert_eq!(first_weight_at(&ticks, 60.0), Some(0));
}

#[test]
fn canary_instances_follow_argo_rollouts_rounding() {
    for (w, r, want) in [
        (0, 4, 1),
        (5, 20, 1),
        (5, 21, 2),
        (25, 4, 1),
        (50, 4, 2),
        (33, 10, 4),
        (100, 7, 7),
        (10, 0, 0),
    ] {
        assert_eq!(canary_instances(w, r), want, "weight {w} replicas {r}");
    }
}
