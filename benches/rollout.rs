//! Benchmark: rollouts through the real path. Results and the command to
//! reproduce them are in docs/benchmarks.md ("Rollouts through the
//! controller").
//!
//! The real `Controller` (Git source on a local bare repository, redb store
//! on disk, hub) steps each rollout on the runtime's change events, on:
//!
//! - `sim`: the simulated runtime on the wall clock (instances ready 0.5 s
//!   after creation, 0.5 s to stop);
//! - `local`: real `floyd sample-app` processes (port open 0.5 s after
//!   start, HTTP readiness probe every 1 s) behind the local load balancer.
//!
//! For the six rolling-update shapes of `benches/engine.rs` (start-up 0.5 s,
//! minReadySeconds at most 2 s so a runtime's run takes about a minute),
//! two pushes of a new version, one after the other, are each timed from the rollout's start to Complete (the
//! controller's own history entry) and divided by the theoretical minimum
//! waves × (start-up + minReadySeconds), waves = ⌈R / (surge + unavailable)⌉.
//! For `local` the start-up is the fastest creation-to-ready time of the
//! new instances (probe delay included), a lower bound for every wave: the
//! ratio is the controller's overhead plus the probe's jitter between
//! instances. The port opens half a probe period after start, so the probe
//! that sees it is the same for every instance (the 1 s probe): with the
//! port at 1 s, a few milliseconds of process start-up decided between the
//! 1 s and the 2 s probe, and instances of one rollout were ready after
//! 1 s or 2 s. Every 10 ms the bench observes the runtime and
//! checks surge (live ≤ R + surge) and unavailable (available ≥ R −
//! unavailable). Each rollout's prediction (`src/predict.rs`, from the
//! start-up times the controller observed so far) is printed next to its
//! actual duration: the 1st from the deployment alone (every replica
//! started at once), the 2nd also from the 1st rollout's waves.
//!
//! With `--steady`: instead, a real `floyd run` process (the release
//! binary: controller, store, hub, HTTP server, Git mirror) at steady state,
//! (a) on the local runtime with one service of 100 `floyd sample-app`
//! instances, (b) on the sim runtime with 1,000 services of 1 instance:
//! peak RSS (`VmHWM`), RSS now and CPU over 10 s once every service is
//! Complete.
//!
//! `cargo bench --bench rollout -- [--runtime sim|local] [--quick] [--steady]`
//! (`--quick`: R ≤ 10 shapes only)

use floyd::controller::{Config, Controller};
use floyd::engine::Phase;
use floyd::engine::rolling;
use floyd::hub::{FetchTrigger, Hub};
use floyd::manifest::{IntOrPercent, ServiceName};
use floyd::runtime::sim::{Behaviour, SimRuntime, SimWorld};
use floyd::runtime::{InstancePhase, Runtime};
use floyd::source::{Credentials, GitSource, SourceConfig};
use floyd::store::Store;
use floyd::time::Time;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Seconds from an instance's start to its port opening (sim: to ready).
const STARTUP: f64 = 0.5;

struct Shape {
    r: u32,
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    min_ready: u32,
}

fn shapes(quick: bool) -> Vec<Shape> {
    use IntOrPercent::{Int, Percent};
    let all = [
        (10, Int(3), Int(2), 0),
        (10, Percent(25), Percent(25), 2),
        (10, Int(1), Int(0), 0),
        (7, Int(2), Int(1), 2),
        (100, Percent(25), Percent(0), 1),
        (100, Percent(10), Percent(10), 0),
    ];
    all.into_iter()
        .filter(|s| !quick || s.0 <= 10)
        .map(|(r, surge, unavailable, min_ready)| Shape {
            r,
            surge,
            unavailable,
            min_ready,
        })
        .collect()
}

fn ip(v: IntOrPercent) -> String {
    match v {
        IntOrPercent::Int(n) => n.to_string(),
        IntOrPercent::Percent(p) => format!("\"{p}%\""),
    }
}

fn yaml(name: &str, s: &Shape, version: &str, port: u16) -> String {
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  replicas: {r}
  template:
    command: [\"${{FLOYD_BIN}}\", \"sample-app\", \"--version\", \"{version}\", \"--startup-delay\", \"{STARTUP}\"]
    terminationGracePeriodSeconds: 5
  ports:
    - {{ name: http, port: {port} }}
  health:
    readiness: {{ http: {{ path: /healthz, port: http }}, periodSeconds: 1, failureThreshold: 1 }}
  minReadySeconds: {min_ready}
  progressDeadlineSeconds: 300
  strategy:
    type: RollingUpdate
    rollingUpdate: {{ maxSurge: {surge}, maxUnavailable: {unavailable} }}
",
        r = s.r,
        min_ready = s.min_ready,
        surge = ip(s.surge),
        unavailable = ip(s.unavailable),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()
        .expect("git runs");
    if !out.status.success() && args.first() == Some(&"push") {
        let _ = Command::new("git")
            .args(["fetch", "-q"])
            .current_dir(dir)
            .status();
        let log = Command::new("git")
            .args(["log", "-3", "--format=%h %an%n%B", "origin/main"])
            .current_dir(dir)
            .output()
            .expect("git runs");
        eprintln!(
            "the remote's last commits:\n{}",
            String::from_utf8_lossy(&log.stdout)
        );
    }
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fastest creation-to-ready time: a lower bound for every wave.
fn fastest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::NAN, f64::min)
}

struct Repo {
    work: std::path::PathBuf,
}

impl Repo {
    fn push(&self, file: &str, text: Option<&str>, msg: &str) {
        let path = self.work.join("services").join(file);
        match text {
            Some(t) => std::fs::write(&path, t).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", msg]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
    }
}

async fn wait_complete(hub: &Hub, name: &str, not: Option<&str>, limit: Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(v) = hub.service(name)
            && v.phase == Phase::Complete
            && v.target_revision
                .as_ref()
                .is_some_and(|t| Some(t.as_str()) != not)
        {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "{name}: not Complete in {limit:?}: {:?}",
            hub.service(name).map(|v| (v.phase, v.reason))
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(kind: &str, quick: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote.git");
    std::fs::create_dir_all(&remote).unwrap();
    git(&remote, &["init", "--bare", "-q", "-b", "main"]);
    git(
        tmp.path(),
        &["clone", "-q", remote.to_str().unwrap(), "work"],
    );
    let repo = Repo {
        work: tmp.path().join("work"),
    };
    std::fs::create_dir_all(repo.work.join("services")).unwrap();
    // Each shape's service is removed after it ran, which leaves no
    // service: said on purpose (`allowEmpty`), with a (skipped) dot-file
    // keeping services/ in the tree; otherwise the branch stops rendering
    // and Floyd reverts the removal.
    std::fs::write(repo.work.join("services/.keep"), "").unwrap();
    std::fs::write(repo.work.join("floyd.yaml"), "allowEmpty: true\n").unwrap();
    repo.push("README", None, "empty");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut local = None;
    let runtime: Arc<dyn Runtime> = match kind {
        "sim" => {
            let mut w = SimWorld::new(&[], 0);
            w.start_at(Time::now_wall());
            w.set_default_behaviour(Behaviour {
                startup_seconds: STARTUP,
                stop_seconds: 0.5,
                ..Behaviour::default()
            });
            Arc::new(SimRuntime::new(w))
        }
        _ => {
            let mut c = floyd::runtime::local::LocalConfig::new(&state);
            c.floyd_bin = Some(env!("CARGO_BIN_EXE_floyd").into());
            c.nvidia_smi = None;
            let rt = Arc::new(floyd::runtime::local::LocalRuntime::start(c).await.unwrap());
            local = Some(rt.clone());
            rt
        }
    };
    let hub = Arc::new(Hub::new());
    let src = Arc::new(
        GitSource::open(SourceConfig {
            url: remote.to_str().unwrap().to_string(),
            branch: "main".into(),
            mirror: state.join("repo.git"),
            credentials: Credentials::default(),
        })
        .unwrap(),
    );
    let store = Arc::new(Store::open(&state).unwrap());
    let mut cfg = Config::new();
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.resync_interval = Duration::from_secs(60);
    let stop = CancellationToken::new();
    let ctl = Controller::new(hub.clone(), runtime.clone(), src, store, cfg);
    let ctl_task = {
        let s = stop.clone();
        tokio::spawn(async move { ctl.run(async move { s.cancelled().await }).await })
    };
    let trigger = || {
        hub.trigger_fetch(FetchTrigger {
            source: "bench".into(),
            after: None,
        })
    };
    println!("\n## {kind} runtime: rollout duration / theoretical minimum, through the controller");
    let mut worst: f64 = 0.0;
    // Prediction errors of each shape's first rollout (the history is the
    // deployment's burst) and second (the history holds a rollout's waves).
    let (mut worst_first, mut worst_pred): (f64, f64) = (0.0, 0.0);
    for (i, shape) in shapes(quick).iter().enumerate() {
        let name = format!("r{i}");
        let file = format!("{name}.yaml");
        let port = free_port();
        repo.push(&file, Some(&yaml(&name, shape, "v1", port)), "v1");
        trigger();
        wait_complete(&hub, &name, None, Duration::from_secs(300)).await;
        let mut v1 = hub.service(&name).unwrap().target_revision.unwrap();
        for (round, version) in ["v2", "v3"].into_iter().enumerate() {
            // The prediction, from what the controller observed so far.
            repo.push(&file, Some(&yaml(&name, shape, version, port)), version);
            let release = floyd::manifest::load_release(&repo.work, None).unwrap();
            let svc = release.service(&name).unwrap().clone();
            let plan = hub.plan(&name).unwrap();
            let inputs = floyd::predict::PlanInputs {
                current: Some(floyd::predict::CurrentRevision {
                    revision: v1.clone(),
                    replicas: shape.r,
                    gpu: None,
                }),
                startup_samples: if kind == "sim" {
                    vec![STARTUP]
                } else {
                    plan.samples.iter().map(|(_, s, _)| *s).collect()
                },
                startup_batches: if kind == "sim" {
                    vec![]
                } else {
                    plan.samples.iter().map(|(_, _, b)| *b).collect()
                },
                gpu: None,
            };
            let predicted = floyd::predict::predict(&svc.name, &svc.spec, &inputs);

            // Watch the limits while the controller rolls.
            let (s, u) = rolling::fenceposts(shape.surge, shape.unavailable, shape.r);
            let u = rolling::cap_unavailable(u, shape.r);
            let watching = Arc::new(AtomicBool::new(true));
            let violations = Arc::new(AtomicU32::new(0));
            let samples = Arc::new(AtomicU32::new(0));
            let watcher = {
                let (rt, watching, violations, samples) = (
                    runtime.clone(),
                    watching.clone(),
                    violations.clone(),
                    samples.clone(),
                );
                let sname = ServiceName::parse(&name).unwrap();
                let (r, min_ready) = (shape.r, shape.min_ready);
                tokio::spawn(async move {
                    let mut first = None;
                    while watching.load(Ordering::Acquire) {
                        let now = Time::now_wall();
                        if let Ok(o) = rt.observe(&sname, None, now).await {
                            let live: u32 = o.revisions.iter().map(|r| r.live()).sum();
                            let avail: u32 = o
                                .revisions
                                .iter()
                                .map(|r| r.available(min_ready, now))
                                .sum();
                            samples.fetch_add(1, Ordering::Relaxed);
                            if live > r + s || avail + u < r {
                                violations.fetch_add(1, Ordering::Relaxed);
                                first.get_or_insert(format!("live {live} available {avail}"));
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    first
                })
            };
            trigger();
            wait_complete(&hub, &name, Some(v1.as_str()), Duration::from_secs(600)).await;
            watching.store(false, Ordering::Release);
            let first_violation = watcher.await.unwrap();
            let h = hub
                .history(&name)
                .into_iter()
                .find(|h| h.result == Phase::Complete && h.from_revision.as_ref() == Some(&v1))
                .expect("a history entry of the rollout");
            let actual = h.ended_at.unwrap().since(h.started_at).as_secs_f64();
            // Start-up per wave: scripted (sim), or the fastest new instance (local).
            let startup = if kind == "sim" {
                STARTUP
            } else {
                let o = runtime
                    .observe(&ServiceName::parse(&name).unwrap(), None, Time::now_wall())
                    .await
                    .unwrap();
                fastest(
                    o.revisions
                        .iter()
                        .filter(|r| r.revision == h.to_revision)
                        .flat_map(|r| r.instances.iter())
                        .filter(|i| i.phase != InstancePhase::Terminating)
                        .filter_map(|i| Some(i.ready_since?.since(i.created_at).as_secs_f64()))
                        .collect(),
                )
            };
            let waves = shape.r.div_ceil(s + u);
            let minimum = f64::from(waves) * (startup + f64::from(shape.min_ready));
            let ratio = actual / minimum;
            worst = worst.max(ratio);
            let pred = predicted.duration_p50_seconds.unwrap_or(f64::NAN);
            let err = (pred - actual).abs() / actual;
            if round == 0 {
                worst_first = worst_first.max(err);
            } else {
                worst_pred = worst_pred.max(err);
            }
            println!(
                "  {} R={:<3} surge {s:<2} unavailable {u:<2} minReady {} s: {waves:>2} waves × {startup:.2} s start-up, minimum {minimum:>6.2} s, actual {actual:>6.2} s, ratio {ratio:.3}; predicted {pred:.2} s (p90 {:.2} s, {}): {:+.0} %; {} observations, limit violations {}",
                if round == 0 { "1st" } else { "2nd" },
                shape.r,
                shape.min_ready,
                predicted.duration_p90_seconds.unwrap_or(f64::NAN),
                predicted.timing.source,
                (pred - actual) / actual * 100.0,
                samples.load(Ordering::Relaxed),
                violations.load(Ordering::Relaxed),
            );
            assert!(ratio >= 1.0, "faster than the theoretical minimum?");
            assert_eq!(
                violations.load(Ordering::Relaxed),
                0,
                "surge/unavailable limit broken: {first_violation:?}"
            );
            v1 = h.to_revision.clone();
        }
        // Free the machine for the next shape.
        repo.push(&file, None, "remove");
        trigger();
        let t0 = Instant::now();
        let sname = ServiceName::parse(&name).unwrap();
        while runtime.services().await.is_ok_and(|s| s.contains(&sname))
            && t0.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let target = if kind == "sim" { 1.05 } else { 1.2 };
    println!("  worst ratio {worst:.3} (target ≤ {target})");
    println!(
        "  worst |predicted − actual| / actual: 2nd rollouts {:.0} % (target ≤ 20 %); 1st rollouts, predicted from the deployment's burst only, {:.0} %",
        worst_pred * 100.0,
        worst_first * 100.0
    );
    stop.cancel();
    let _ = ctl_task.await;
    if let Some(l) = local {
        l.shutdown().await;
    }
}

fn proc_kib(pid: u32, key: &str) -> f64 {
    proc_kib_in(pid, "status", key)
}

/// A `kB` field of `/proc/<pid>/<file>`.
fn proc_kib_in(pid: u32, file: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// utime + stime of `pid`, seconds.
fn proc_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// A real `floyd run` over a repo of `services` services, until all are
/// Complete, then 10 s of steady state.
async fn steady(label: &str, runtime: &str, services: usize, replicas: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote.git");
    std::fs::create_dir_all(&remote).unwrap();
    git(&remote, &["init", "--bare", "-q", "-b", "main"]);
    git(
        tmp.path(),
        &["clone", "-q", remote.to_str().unwrap(), "work"],
    );
    let repo = Repo {
        work: tmp.path().join("work"),
    };
    std::fs::create_dir_all(repo.work.join("services")).unwrap();
    let shape = Shape {
        r: replicas,
        surge: IntOrPercent::Percent(25),
        unavailable: IntOrPercent::Percent(25),
        min_ready: 0,
    };
    for i in 0..services {
        let text = yaml(&format!("s{i:04}"), &shape, "v1", 20000 + i as u16)
            .replace("periodSeconds: 1,", "periodSeconds: 2,")
            .replace(&format!(", \"--startup-delay\", \"{STARTUP}\""), "");
        std::fs::write(repo.work.join(format!("services/s{i:04}.yaml")), text).unwrap();
    }
    repo.push("README", None, "services");
    let port = free_port();
    let state = tmp.path().join("state");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args([
            "run",
            "--repo",
            remote.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--runtime",
            runtime,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        let done = match http
            .get(format!("http://127.0.0.1:{port}/api/v1/services"))
            .send()
            .await
        {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| {
                    v["services"]
                        .as_array()
                        .map(|a| a.iter().filter(|s| s["phase"] == "Complete").count())
                })
                .unwrap_or(0),
            Err(_) => 0,
        };
        if done == services {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "{label}: {done} of {services} Complete after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = t0.elapsed().as_secs_f64();
    // Let the first resyncs pass, then measure 10 s of steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, w0) = (proc_cpu(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = (proc_cpu(pid) - c0) / w0.elapsed().as_secs_f64() * 100.0;
    println!(
        "{label}: all Complete in {settled:.1} s; peak RSS (VmHWM) {:.1} MiB, RSS now {:.1} MiB (private: heap and stacks {:.1}; file pages of the binary and libraries {:.1}, shared with every process running them), PSS {:.1} MiB, {} threads; CPU at steady state {cpu:.1} % of a core (10 s)",
        proc_kib(pid, "VmHWM:") / 1024.0,
        proc_kib(pid, "VmRSS:") / 1024.0,
        proc_kib(pid, "RssAnon:") / 1024.0,
        proc_kib(pid, "RssFile:") / 1024.0,
        proc_kib_in(pid, "smaps_rollup", "Pss:") / 1024.0,
        proc_kib(pid, "Threads:"),
    );
    let _ = nix_term(pid);
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
}

fn nix_term(pid: u32) -> std::io::Result<()> {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|_| ())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if args.iter().any(|a| a == "--steady") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            steady(
                "floyd run, local runtime, 1 service × 100 sample-app instances",
                "local",
                1,
                100,
            )
            .await;
            steady(
                "floyd run, sim runtime, 1,000 services × 1 instance",
                "sim",
                1000,
                1,
            )
            .await;
        });
        return;
    }
    let only = args
        .iter()
        .position(|a| a == "--runtime")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for kind in ["sim", "local"] {
        if only.as_deref().is_none_or(|o| o == kind) {
            rt.block_on(run(kind, quick));
        }
    }
}
