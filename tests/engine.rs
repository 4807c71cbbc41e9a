//! Engine and simulation, end to end: `floyd simulate` (the real binary) on
//! every example scenario, bad input, and property tests of the engine on
//! the sim runtime over random specs and scenarios.

use floyd::engine::{self, Phase, RolloutState, rolling};
use floyd::manifest::{
    BlueGreenParams, GpuInventory, GpuRequest, GpuSharing, InstanceTemplate, IntOrPercent,
    RollingUpdateParams, ServiceName, ServiceSpec, Strategy as RolloutStrategy, revision_of,
};
use floyd::runtime::sim::Behaviour;
use floyd::runtime::sim::scenario::{Scenario, Simulation, TemplateChange};
use floyd::time::Time;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floyd"))
        .arg("simulate")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run floyd simulate")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Expected outcome of each example: (file, exit code, result, reason must contain, event must contain).
const EXAMPLES: &[(&str, i32, &str, &str, &str)] = &[
    (
        "canary.yaml",
        0,
        "Complete",
        "10 of 10 instances",
        "canary weight 25% → 50%",
    ),
    (
        "rolling-10.yaml",
        0,
        "Complete",
        "10 of 10 instances",
        "scaled old",
    ),
    (
        "blue-green.yaml",
        0,
        "Complete",
        "4 of 4 instances",
        "promoted",
    ),
    (
        "gpu-rolling.yaml",
        0,
        "Complete",
        "4 of 4 instances",
        "replacing in place",
    ),
    (
        "rollover.yaml",
        0,
        "Complete",
        "12 of 12 instances",
        "supersedes",
    ),
    (
        "failing-rollback.yaml",
        1,
        "Failed",
        "3 of 6 new instances not ready for 120 s: readiness probe GET /healthz returned 503; rolled back to start",
        "rolling back to",
    ),
];

#[test]
fn every_example_scenario_has_an_expected_outcome() {
    let dir = repo().join("examples-repo/simulations");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples-repo/simulations exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut known: Vec<String> = EXAMPLES.iter().map(|e| e.0.to_string()).collect();
    known.sort();
    assert_eq!(files, known, "add new scenarios to EXAMPLES");
}

#[test]
fn example_scenarios_behave_as_documented() {
    for &(file, code, result, reason, event) in EXAMPLES {
        let path = format!("examples-repo/simulations/{file}");
        let out = simulate(&[&path, "--json"]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = json_lines(&out);
        let last = lines.last().expect("a result line");
        assert_eq!(last["result"], result, "{file}: {last}");
        let got = last["reason"].as_str().unwrap_or_default();
        assert!(
            got.contains(reason),
            "{file}: reason {got:?} lacks {reason:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l["event"].as_str().is_some_and(|e| e.contains(event))),
            "{file}: no event containing {event:?}"
        );
        // Every timeline line has the contract's fields; time never goes back.
        let mut t = 0.0;
        for l in &lines[..lines.len() - 1] {
            let lt = l["t"].as_f64().expect("t");
            assert!(lt >= t, "{file}: time went back: {l}");
            t = lt;
            let revs = l["revision"].as_object().expect("revision map");
            for c in revs.values() {
                for k in ["replicas", "ready", "available"] {
                    assert!(c[k].is_u64(), "{file}: {k} missing in {l}");
                }
            }
            assert!(l["event"].is_string());
        }
        // The text timeline tells the same story.
        let text = simulate(&[&path]);
        assert_eq!(text.status.code(), Some(code));
        let s = String::from_utf8_lossy(&text.stdout);
        assert!(
            s.lines()
                .last()
                .is_some_and(|l| l.starts_with(&format!("result: {result}"))),
            "{file}: {s}"
        );
    }
}

#[test]
fn rolling_example_follows_the_worked_example() {
    let out = simulate(&["examples-repo/simulations/rolling-10.yaml", "--json"]);
    let lines = json_lines(&out);
    let labels = lines[0]["labels"]
        .as_object()
        .expect("labels on the first line")
        .clone();
    let rev = |name: &str| {
        labels
            .iter()
            .find(|(_, v)| *v == name)
            .map(|(k, _)| k.clone())
            .unwrap()
    };
    let (start, target) = (rev("start"), rev("target"));
    let at = |t: f64| {
        let l = lines
            .iter()
            .rev()
            .find(|l| l["t"].as_f64().is_some_and(|x| x <= t) && l.get("revision").is_some())
            .unwrap();
        (
            l["revision"][&start]["replicas"].as_u64(),
            l["revision"][&target]["replicas"].as_u64(),
        )
    };
    assert_eq!(at(0.0), (Some(8), Some(5)));
    assert_eq!(at(5.0), (Some(3), Some(10)));
    assert_eq!(at(10.0), (Some(0), Some(10)));
    assert_eq!(lines.last().unwrap()["t"], 10.0);
}

#[test]
fn bad_input_exits_2_with_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "service:\n  apiVersion: floyd.dev/v1\n  kind: Service\n  metadata: { name: web }\n  spec:\n    replicas: -1\n    template: { command: [\"./web\"] }\n",
            ":6:15: service.spec.replicas",
        ),
        (
            "service:\n  apiVersion: floyd.dev/v1\n  kind: Service\n  metadata: { name: web }\n  spec:\n    replicas: 1\n    template: { command: [\"./web\"] }\nscenario:\n  instances: { startupSecs: 5 }\n",
            ":9:16: unknown field `startupSecs`",
        ),
        (
            "service:\n  apiVersion: floyd.dev/v1\n  kind: Service\n  metadata: { name: web }\n  spec:\n    replicas: 1\n    template: { command: [\"./web\"] }\nscenario:\n  events: [{ at: 3 }]\n",
            "scenario.events[0]: give exactly one of",
        ),
        ("scenario: {}\n", "missing field `service`"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&f, text).unwrap();
        let out = simulate(&[f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(err.contains(want), "case {i}: {err:?} lacks {want:?}");
        assert!(out.stdout.is_empty(), "case {i}: nothing on stdout");
    }
    let out = simulate(&["/nonexistent/sim.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

// ---- properties ---------------------------------------------------------------

fn int_or_percent() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![
        (0u32..5).prop_map(IntOrPercent::Int),
        (0u32..=100).prop_map(IntOrPercent::Percent)
    ]
}

fn rolling_spec(r: u32, surge: IntOrPercent, unav: IntOrPercent, min_ready: u32) -> ServiceSpec {
    let mut s = ServiceSpec::with_defaults(r, InstanceTemplate::command(["app"]));
    s.template.env.insert("VERSION".into(), "2".into());
    s.min_ready_seconds = min_ready;
    s.progress_deadline_seconds = 300;
    s.strategy = RolloutStrategy::RollingUpdate {
        rolling_update: RollingUpdateParams {
            max_surge: surge,
            max_unavailable: unav,
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

fn behaviour() -> impl Strategy<Value = Behaviour> {
    (0u32..20, 0u32..10, 0u32..10).prop_map(|(s, j, stop)| Behaviour {
        startup_seconds: f64::from(s),
        startup_jitter_seconds: f64::from(j),
        stop_seconds: f64::from(stop),
        ..Behaviour::default()
    })
}

fn not_simulator_limit(reason: &str) -> bool {
    !reason.starts_with("simulation")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Total live instances never exceed replicas + maxSurge; available
    /// instances never drop below replicas − maxUnavailable when no instance
    /// fails by itself; the rollout completes.
    #[test]
    fn rolling_limits_hold(
        r in 1u32..25,
        surge in int_or_percent(),
        unav in int_or_percent(),
        min_ready in 0u32..10,
        b in behaviour(),
        seed in any::<u64>(),
    ) {
        prop_assume!(!(matches!(surge, IntOrPercent::Int(0) | IntOrPercent::Percent(0)) && matches!(unav, IntOrPercent::Int(0) | IntOrPercent::Percent(0))));
        let spec = rolling_spec(r, surge, unav, min_ready);
        let (s, u) = rolling::fenceposts(surge, unav, r);
        let u = rolling::cap_unavailable(u, r);
        let sc = Scenario { seed, instances: b, ..Scenario::default() };
        let mut sim = Simulation::new(ServiceName::parse("p").unwrap(), spec, Some(&start()), &sc).unwrap();
        let mut violations = Vec::new();
        let out = sim.run(|t, _| {
            let live: u32 = t.revisions.values().map(|c| c.0).sum();
            let avail: u32 = t.revisions.values().map(|c| c.2).sum();
            if live > r + s { violations.push(format!("t={} live {live} > {r}+{s}", t.t)); }
            if avail + u < r { violations.push(format!("t={} available {avail} < {r}-{u}", t.t)); }
        });
        prop_assert!(violations.is_empty(), "{:?}", violations);
        prop_assert_eq!(out.result, Phase::Complete, "{}", out.reason);
    }

    /// Every rollout ends Complete or Failed (never stalls), whatever the
    /// instances do: never ready, crash loops, gates without data.
    #[test]
    fn every_rollout_ends(
        r in 1u32..12,
        surge in int_or_percent(),
        unav in int_or_percent(),
        strategy in 0u8..3,
        never_ready in any::<bool>(),
        crash in proptest::option::of(1u32..60),
        crash_loop in any::<bool>(),
        b in behaviour(),
        seed in any::<u64>(),
    ) {
        prop_assume!(!(matches!(surge, IntOrPercent::Int(0) | IntOrPercent::Percent(0)) && matches!(unav, IntOrPercent::Int(0) | IntOrPercent::Percent(0))));
        let mut spec = rolling_spec(r, surge, unav, 3);
        spec.strategy = match strategy {
            0 => spec.strategy.clone(),
            1 => RolloutStrategy::Recreate,
            _ => RolloutStrategy::BlueGreen { blue_green: BlueGreenParams { preview_port: None, auto_promote: true, scale_down_delay_seconds: 10 } },
        };
        let mut target = b.clone();
        target.never_ready = never_ready;
        target.crash_after_seconds = crash.map(f64::from);
        target.crash_loop = crash_loop;
        let mut sc = Scenario { seed, instances: b, max_seconds: Some(100_000.0), ..Scenario::default() };
        sc.revisions.insert("target".into(), target);
        let mut sim = Simulation::new(ServiceName::parse("p").unwrap(), spec, Some(&start()), &sc).unwrap();
        let out = sim.run(|_, _| {});
        prop_assert!(matches!(out.result, Phase::Complete | Phase::Failed));
        prop_assert!(not_simulator_limit(&out.reason), "{}", out.reason);
        if never_ready {
            prop_assert_eq!(out.result, Phase::Failed);
        }
    }

    /// GPUs are never over-allocated and surge never exceeds what is free.
    #[test]
    fn gpus_never_over_allocated(
        r in 1u32..8,
        per in 1u32..3,
        spare in 0u32..4,
        surge in 0u32..4,
        allow_in_place in any::<bool>(),
        b in behaviour(),
        seed in any::<u64>(),
    ) {
        let mut spec = rolling_spec(r, IntOrPercent::Int(surge), IntOrPercent::Int(if surge == 0 { 1 } else { 0 }), 0);
        spec.template.resources.gpu = Some(GpuRequest { count: per, product: Some("A100".into()), memory_mib: None, sharing: GpuSharing::Exclusive, allow_in_place });
        let gpus = vec![GpuInventory { product: "A100".into(), memory_mib: None, count: r * per + spare, time_sliced_replicas: None, mig: Default::default() }];
        let sc = Scenario { seed, instances: b, gpus, ..Scenario::default() };
        let mut sim = Simulation::new(ServiceName::parse("p").unwrap(), spec, Some(&start()), &sc).unwrap();
        let mut bad = Vec::new();
        let out = sim.run(|t, w| {
            let (held, exist) = w.gpu_usage();
            if held > exist { bad.push(format!("t={} {held} > {exist}", t.t)); }
            let live: u32 = t.revisions.values().map(|c| c.0).sum();
            if live > r + spare / per + 1 { bad.push(format!("t={} {live} live instances", t.t)); }
        });
        prop_assert!(bad.is_empty(), "{:?}", bad);
        prop_assert!(not_simulator_limit(&out.reason), "{}", out.reason);
        if allow_in_place || spare >= per && surge > 0 {
            prop_assert_eq!(out.result, Phase::Complete, "{}", out.reason);
        }
    }

    /// Same inputs, same decision; same scenario, same timeline.
    #[test]
    fn deterministic(r in 1u32..20, b in behaviour(), seed in any::<u64>(), at in 0u64..40) {
        let spec = rolling_spec(r, IntOrPercent::Percent(25), IntOrPercent::Percent(25), 2);
        let sc = Scenario { seed, instances: b, ..Scenario::default() };
        let run = || {
            let mut sim = Simulation::new(ServiceName::parse("p").unwrap(), spec.clone(), Some(&start()), &sc).unwrap();
            let mut ticks = Vec::new();
            let out = sim.run(|t, _| ticks.push(t.clone()));
            (out, ticks)
        };
        prop_assert_eq!(run(), run());
        let mut sim = Simulation::new(ServiceName::parse("p").unwrap(), spec.clone(), Some(&start()), &sc).unwrap();
        sim.world.advance_to(Time::from_secs(at));
        let observed = sim.world.observe(&ServiceName::parse("p").unwrap(), Some(&spec));
        let state = RolloutState::start(revision_of(&spec.template), None, Time::ZERO);
        let now = sim.world.now();
        prop_assert_eq!(engine::step(&spec, &observed, &state, now), engine::step(&spec, &observed, &state, now));
    }
}

#[test]
fn examples_dir_is_where_the_docs_say() {
    assert!(Path::new(&repo().join("examples-repo/simulations/rolling-10.yaml")).exists());
}
