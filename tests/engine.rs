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
        "3 of 3 created instances not ready for 120 s; 3 not created yet: readiness probe GET /healthz returned 503; rolled back to start",
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
    // Revisions are keyed by label; the first line maps labels to revisions.
    let labels = lines[0]["labels"]
        .as_object()
        .expect("labels on the first line")
        .clone();
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["start", "target"]);
    assert!(
        labels
            .values()
            .all(|v| v.as_str().is_some_and(|r| r.len() == 10))
    );
    let (start, target) = ("start".to_string(), "target".to_string());
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

/// `floyd simulate` like the other commands (issue #20): several files or a
/// directory, `-o json` (and `--json`), revisions named by label in a stable
/// order, blue-green traffic shown, every error positioned with a hint.
#[test]
fn simulate_takes_files_and_directories_with_stable_labelled_columns() {
    let sims = "examples-repo/simulations";
    // A directory: every file, one result each; a failure makes it exit 1.
    let out = simulate(&[sims]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("== ")).collect();
    assert_eq!(headers.len(), EXAMPLES.len(), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("result: ")).count(),
        EXAMPLES.len()
    );
    // Several files that all complete: 0.
    let ok = [
        format!("{sims}/rolling-10.yaml"),
        format!("{sims}/blue-green.yaml"),
    ];
    let out = simulate(&[&ok[0], &ok[1], "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let lines = json_lines(&out);
    assert!(
        lines.iter().all(|l| l["file"].is_string()),
        "many files: each line says which"
    );
    // Columns: start before target on every line, in text and JSON alike.
    for (file, ..) in EXAMPLES {
        let path = format!("{sims}/{file}");
        let text = simulate(&[&path]);
        for l in String::from_utf8_lossy(&text.stdout)
            .lines()
            .filter(|l| l.starts_with("t="))
        {
            if let (Some(s), Some(t)) = (l.find(" start "), l.find(" target ")) {
                assert!(s < t, "{file}: {l}");
            }
        }
        let out = simulate(&[&path, "-o", "json"]);
        let lines = json_lines(&out);
        let labels = lines[0]["labels"].as_object().expect("labels").clone();
        let hashes: Vec<&str> = labels.values().filter_map(|v| v.as_str()).collect();
        for l in &lines {
            if let Some(revs) = l["revision"].as_object() {
                let keys: Vec<&String> = revs.keys().collect();
                assert!(keys.iter().all(|k| labels.contains_key(*k)), "{file}: {l}");
                if let (Some(s), Some(t)) = (
                    keys.iter().position(|k| *k == "start"),
                    keys.iter().position(|k| *k == "target"),
                ) {
                    assert!(s < t, "{file}: {l}");
                }
            }
            let event = l["event"].as_str().or(l["reason"].as_str()).unwrap_or("");
            assert!(
                !hashes.iter().any(|h| event.contains(h)),
                "{file}: hash in {l}"
            );
        }
        // --json is still accepted and means -o json.
        assert_eq!(simulate(&[&path, "--json"]).stdout, out.stdout);
    }
    // Blue-green: which revision is active and which is preview.
    let bg = simulate(&[&ok[1]]);
    let t = String::from_utf8_lossy(&bg.stdout);
    assert!(t.contains("active start  preview target"), "{t}");
    assert!(t.contains("active target  preview -"), "{t}");
    let lines = json_lines(&simulate(&[&ok[1], "-o", "json"]));
    assert_eq!(lines[0]["active"], "start");
    assert_eq!(lines[0]["preview"], "target");
}

#[test]
fn simulate_reports_every_problem_of_every_file_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let gated = "service:\n  apiVersion: floyd.dev/v1\n  kind: Service\n  metadata: { name: web }\n  spec:\n    replicas: 1\n    template: { command: [\"./web\"] }\nscenario:\n  gates:\n    - { pass: 10 }\n";
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, gated).unwrap();
    let b = dir.path().join("b.yaml");
    std::fs::write(
        &b,
        "service:\n  apiVersion: floyd.dev/v1\n  kind: Service\n  metadata: { name: web }\n  spec:\n    replicas: -1\n    template: { command: [\"./web\"], bogus: 1 }\n",
    )
    .unwrap();
    let out = simulate(&[dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let a = a.display();
    let b = b.display();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert_eq!(
        lines[0],
        format!(
            "{a}:9:3: scenario.gates: 1 scripted gate(s) but the service has 0 gate(s) (hint: give one entry per gate of service.spec.gates, in the same order (0), or leave scenario.gates out)"
        )
    );
    assert!(
        lines[1].starts_with(&format!("{b}:6:15: service.spec.replicas: ")),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{b}:7:37: service.spec.template.bogus: unknown field (hint: "
        )),
        "{err}"
    );
    assert!(lines[3].starts_with("error: 3 problem(s) in "), "{err}");
}

/// `floyd simulate <config-repo> --service web [--from <rev>]`: the start
/// is the service as rendered at `--from` (default HEAD~1).
#[test]
fn simulate_a_service_from_a_config_repo() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("config");
    let copy = |from: &Path, to: &Path| {
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    };
    std::fs::create_dir_all(repo.join("services")).unwrap();
    copy(&repo_root().join("examples-repo"), &repo);
    copy(
        &repo_root().join("examples-repo/services"),
        &repo.join("services"),
    );
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@localhost",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&repo)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "initial"]);
    let web = repo.join("services/web.yaml");
    let text = std::fs::read_to_string(&web).unwrap();
    std::fs::write(
        &web,
        text.replacen("\"{{ values.webVersion }}\"", "\"9.9.9\"", 1),
    )
    .unwrap();
    assert_ne!(
        std::fs::read_to_string(&web).unwrap(),
        text,
        "the edit changed web.yaml"
    );
    git(&["commit", "-qam", "web: 9.9.9"]);
    let r = repo.to_str().unwrap();

    let out = simulate(&[r, "--service", "web"]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{t}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.starts_with("simulating web ("), "{t}");
    assert!(
        t.contains("(HEAD~1, ") && t.contains("(the working tree)"),
        "{t}"
    );
    assert!(
        t.lines()
            .last()
            .is_some_and(|l| l.starts_with("result: Complete")),
        "{t}"
    );
    assert!(t.contains(" start ") && t.contains(" target "), "{t}");
    // The same revision at --from HEAD: nothing to roll out.
    let out = simulate(&[r, "--service", "web", "--from", "HEAD"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to roll out"));
    // A service the old commit lacks: a first deployment (no start column).
    let out = simulate(&[r, "--service", "api", "--from", "HEAD", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    // Bad input: 2; not a Git repository: 3.
    for (args, code, want) in [
        (vec![r, "--service", "nope"], 2, "defines no such service"),
        (
            vec![r, "--service", "web", "--from", "no-such-rev"],
            2,
            "--from \"no-such-rev\"",
        ),
        (vec![r, "--from", "HEAD"], 2, "--service"),
    ] {
        let out = simulate(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(plain.join("services")).unwrap();
    copy(
        &repo_root().join("examples-repo/services"),
        &plain.join("services"),
    );
    copy(&repo_root().join("examples-repo"), &plain);
    let out = simulate(&[plain.to_str().unwrap(), "--service", "web"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if Command::new("git")
        .args(["rev-parse"])
        .current_dir(&plain)
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("cannot open the Git repository"), "{err}");
    }
}

fn repo_root() -> PathBuf {
    repo()
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
