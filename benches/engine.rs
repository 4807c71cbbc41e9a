//! Benchmark: engine and simulation. Results and the command to reproduce
//! them are in docs/benchmarks.md ("Engine and simulation").
//!
//!   cargo bench --bench engine
//!
//! 1. `engine::step` for one service with 1,000 instances across 3 revisions.
//! 2. 10,000 services × 10 replicas rolling to a new revision on one
//!    `SimWorld` in virtual time (wall time, peak memory).
//! 3. A rolling update's virtual duration over the theoretical minimum
//!    (waves × (start-up + minReadySeconds)) for several configurations.

use floyd::engine::{self, Phase, RolloutState, rolling};
use floyd::manifest::{
    InstanceTemplate, IntOrPercent, Revision, RollingUpdateParams, ServiceName, ServiceSpec,
    Strategy, revision_of,
};
use floyd::runtime::sim::scenario::{Scenario, Simulation, TemplateChange};
use floyd::runtime::sim::{Behaviour, SimWorld};
use floyd::runtime::{Instance, InstancePhase, Observed, ObservedRevision};
use floyd::time::Time;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

fn spec(r: u32, surge: IntOrPercent, unavailable: IntOrPercent, min_ready: u32) -> ServiceSpec {
    let mut s =
        ServiceSpec::with_defaults(r, InstanceTemplate::command(["app", "--port", "${PORT}"]));
    s.template.env.insert("VERSION".into(), "2".into());
    s.min_ready_seconds = min_ready;
    s.strategy = Strategy::RollingUpdate {
        rolling_update: RollingUpdateParams {
            max_surge: surge,
            max_unavailable: unavailable,
        },
    };
    s
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system) of this process so far, from /proc/self/stat.
fn cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses).
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // Clock ticks; 100 per second on Linux.
    Some((utime + stime) / 100.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_step() {
    let sp = spec(
        1000,
        IntOrPercent::Percent(25),
        IntOrPercent::Percent(25),
        10,
    );
    let target = revision_of(&sp.template);
    let now = Time::from_secs(1000);
    let mk = |rev: &Revision, created: u64, n: usize, ready: fn(usize) -> Option<u64>| {
        ObservedRevision {
            revision: rev.clone(),
            created_at: Time::from_secs(created),
            desired: n as u32,
            instances: (0..n)
                .map(|i| Instance {
                    id: format!("web-{rev}-{i}"),
                    phase: InstancePhase::Running,
                    created_at: Time::from_secs(created),
                    ready_since: ready(i).map(Time::from_secs),
                    restarts: 0,
                    reason: None,
                    gpus: vec![],
                })
                .collect(),
            template: sp.template.clone(),
        }
    };
    let observed = Observed {
        revisions: vec![
            mk(&Revision::from("old1aaaaaa"), 0, 250, |_| Some(10)),
            mk(&Revision::from("old2bbbbbb"), 100, 400, |_| Some(200)),
            // The target: a mix of available, ready-not-yet-available and starting.
            mk(&target, 900, 350, |i| match i % 3 {
                0 => Some(950),
                1 => Some(995),
                _ => None,
            }),
        ],
        ..Observed::default()
    };
    let state = RolloutState::start(
        target,
        Some(Revision::from("old2bbbbbb")),
        Time::from_secs(900),
    );
    let d = engine::step(&sp, &observed, &state, now);
    assert_eq!(d.state.phase, Phase::Progressing);
    // Warm up, then batches of 100 steps.
    for _ in 0..2000 {
        std::hint::black_box(engine::step(&sp, &observed, &state, now));
    }
    let mut per_step = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(engine::step(
                std::hint::black_box(&sp),
                std::hint::black_box(&observed),
                &state,
                now,
            ));
        }
        per_step.push(t.elapsed().as_secs_f64() / 100.0 * 1e6);
    }
    let med = median(&mut per_step);
    let p90 = per_step[per_step.len() * 9 / 10];
    println!(
        "step, 1,000 instances across 3 revisions: median {med:.2} µs, p90 {p90:.2} µs (target < 20 µs)"
    );
}

fn bench_many_services(n: usize, replicas: u32) {
    let sp = spec(
        replicas,
        IntOrPercent::Percent(25),
        IntOrPercent::Percent(25),
        0,
    );
    let mut old_t = sp.template.clone();
    old_t.env.insert("VERSION".into(), "1".into());
    let old = revision_of(&old_t);
    let target = revision_of(&sp.template);
    let t0 = Instant::now();
    let mut world = SimWorld::new(&[], 42);
    world.set_default_behaviour(Behaviour {
        startup_seconds: 5.0,
        startup_jitter_seconds: 5.0,
        stop_seconds: 2.0,
        ..Behaviour::default()
    });
    let names: Vec<ServiceName> = (0..n)
        .map(|i| ServiceName::parse(&format!("svc-{i}")).expect("valid name"))
        .collect();
    for name in &names {
        world.seed_revision(name, &old, &old_t, replicas);
    }
    let mut states: Vec<RolloutState> = (0..n)
        .map(|_| RolloutState::start(target.clone(), Some(old.clone()), Time::ZERO))
        .collect();
    let setup = t0.elapsed();
    let t1 = Instant::now();
    let cpu0 = cpu_secs();
    let mut wakes: BinaryHeap<Reverse<(Time, usize)>> = BinaryHeap::new();
    let mut due: Vec<usize> = (0..n).collect();
    let mut done = 0usize;
    let mut steps = 0u64;
    let mut finished = vec![false; n];
    // Like the controller: a service is stepped when its instances change
    // (the world reports it) or when the engine asked to be woken up.
    while done < n {
        let now = world.now();
        for &s in &due {
            if finished[s] {
                continue;
            }
            let observed = world.observe(&names[s], Some(&sp));
            let d = engine::step(&sp, &observed, &states[s], now);
            steps += 1;
            if let Err(e) = world.apply(&names[s], &d.actions) {
                panic!("apply failed: {e}");
            }
            if let Some(w) = d.wake_at {
                wakes.push(Reverse((w, s)));
            }
            states[s] = d.state;
            match states[s].phase {
                Phase::Complete => {
                    finished[s] = true;
                    done += 1;
                }
                Phase::Progressing => {}
                other => panic!("service {s} ended {other:?}: {}", states[s].reason),
            }
        }
        let next = [world.next_event(), wakes.peek().map(|w| w.0.0)]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else {
            panic!("stalled with {done} of {n} complete");
        };
        world.advance_to(next);
        due = world.take_dirty();
        while let Some(Reverse((t, s))) = wakes.peek().copied() {
            if t > next {
                break;
            }
            wakes.pop();
            due.push(s);
        }
        due.sort_unstable();
        due.dedup();
    }
    let run = t1.elapsed();
    let cpu = match (cpu0, cpu_secs()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    println!(
        "{n} services × {replicas} replicas rolling (25%/25%, start-up 5-10 s, stop 2 s): {:.3} s wall ({:.3} s setup + {:.3} s rollout, rollout CPU {cpu:.2} s), {:.0} virtual s, {steps} steps, {} instance events, peak RSS {:.0} MiB (targets < 2 s, < 500 MB)",
        (setup + run).as_secs_f64(),
        setup.as_secs_f64(),
        run.as_secs_f64(),
        world.now().as_secs_f64(),
        world.events_processed,
        peak_rss_mib().unwrap_or(f64::NAN),
    );
}

fn bench_ratio() {
    use IntOrPercent::{Int, Percent};
    let cases = [
        (10, Int(3), Int(2), 5.0, 0),
        (10, Percent(25), Percent(25), 5.0, 10),
        (10, Int(1), Int(0), 5.0, 0),
        (7, Int(2), Int(1), 3.0, 2),
        (100, Percent(25), Percent(0), 20.0, 5),
        (100, Percent(10), Percent(10), 8.0, 0),
    ];
    println!(
        "rolling update: virtual duration / theoretical minimum (waves × (start-up + minReadySeconds)):"
    );
    let mut worst: f64 = 0.0;
    for (r, surge, unav, startup, min_ready) in cases {
        let (s, u) = rolling::fenceposts(surge, unav, r);
        let u = rolling::cap_unavailable(u, r);
        let waves = r.div_ceil(s + u);
        let minimum = f64::from(waves) * (startup + f64::from(min_ready));
        let sc = Scenario {
            instances: Behaviour {
                startup_seconds: startup,
                stop_seconds: 2.0,
                ..Behaviour::default()
            },
            ..Scenario::default()
        };
        let start = TemplateChange {
            version: Some("1".into()),
            ..TemplateChange::default()
        };
        let mut sim = Simulation::new(
            ServiceName::parse("web").expect("valid"),
            spec(r, surge, unav, min_ready),
            Some(&start),
            &sc,
        )
        .expect("valid scenario");
        let out = sim.run(|_, _| {});
        assert_eq!(out.result, Phase::Complete, "{}", out.reason);
        let ratio = out.t / minimum;
        worst = worst.max(ratio);
        println!(
            "  R={r:<3} surge {s:<2} unavailable {u:<2} start-up {startup:>4} s minReady {min_ready:>2} s: {waves:>3} waves, minimum {minimum:>6.1} s, simulated {:>6.1} s, ratio {ratio:.3}",
            out.t
        );
    }
    println!("  worst ratio {worst:.3} (target ≤ 1.05)");
}

fn main() {
    bench_step();
    bench_many_services(10_000, 10);
    bench_ratio();
}
