//! Benchmark: local. Results and the command to reproduce them are in docs/benchmarks.md.
//!
//! `cargo bench --bench local [-- --seconds 5 --rounds 3 --instances 100] [--lb-only] [--canary-only] [--readiness-only [--offsets N]] [--load T[,T...] [--connections N]] [--lb-threads N] [--pin] [--dataplane-process]`
//! (T: `direct`, `lb`, either followed by a path as in `lb/slow?ms=5`, or a URL)
//!
//! `--pin` (phase 3): the load balancer's threads (`floyd-lb`) on the last
//! CPU, the load generator and the instance on the others (`taskset`).
//!
//! `--dataplane-process`: the load balancers run in their own process
//! (`floyd dataplane`, as `floyd run` does by default) instead of threads of
//! this one; their CPU time is counted with this process's.
//!
//! `--lb-only` skips phases 1 and 2. `--load T` skips them too and, instead
//! of the side-by-side rounds, loads each target in turn for `--seconds` (to profile
//! with `perf record -p`, or to point the same load generator at another
//! proxy).
//!
//! 1. Controller RSS managing N `floyd sample-app` instances (first, so the
//!    load generator's memory does not count).
//! 2. Readiness detection latency: time from an instance's port opening
//!    (polled every 1 ms) to the runtime reporting it ready (HTTP probe,
//!    period 1 s), for `--offsets N` (default 20) port-open times spread
//!    evenly over the probe period; p50 and max. `--readiness-only` runs
//!    this phase alone.
//! 3. Load balancer vs direct: requests/s and latency percentiles at 64
//!    concurrent connections, alternating direct and LB rounds, loopback only,
//!    bounded by time. Also the CPU time per request of this process (load
//!    generator, plus the proxy in LB rounds) and of the instance process,
//!    from /proc: the LB's own cost per request is the difference.
//! 4. Canary routing cost, side by side in one run (`--canary-only` skips
//!    1-3): (a) the routing decision alone, ns per request, for plain
//!    round-robin, a weighted split (50 %), a weighted split with three
//!    header-match rules that do not match, and a header-matched request;
//!    (b) real requests through the LB to two instances (two revisions),
//!    alternating rounds of plain round-robin, weighted, and weighted with
//!    header matching: requests/s, latency and the proxy's CPU per request.

use bytes::Bytes;
use floyd::manifest::{
    CanaryMatch, CanaryParams, CanaryStep, HealthSpec, InstanceTemplate, PortRef, PortSpec, Probe,
    ProbeAction, Revision, ServiceName, ServiceSpec, Strategy,
};
use floyd::runtime::local::{LocalConfig, LocalRuntime};
use floyd::runtime::{Action, Runtime};
use floyd::time::Time;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Concurrent connections of the side-by-side rounds.
const CONNECTIONS: usize = 64;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(replicas: u32, lb_port: u16, period: u32) -> ServiceSpec {
    let t = InstanceTemplate::command([
        "${FLOYD_BIN}".to_string(),
        "sample-app".into(),
        "--version".into(),
        "bench".into(),
    ]);
    let mut s = ServiceSpec::with_defaults(replicas, t);
    s.ports = vec![PortSpec {
        name: "http".into(),
        port: lb_port,
    }];
    s.health = HealthSpec {
        readiness: Some(Probe {
            action: ProbeAction::Http {
                path: "/healthz".into(),
                port: PortRef::Name("http".into()),
            },
            initial_delay_seconds: 0,
            period_seconds: period,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }),
        ..HealthSpec::default()
    };
    s
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The dataplane process of the latest runtime started (`--dataplane-process`).
static DATAPLANE_PID: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn dataplane_pid() -> Option<String> {
    DATAPLANE_PID
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// CPU time of this process plus the dataplane process, if any.
fn cpu_self() -> (f64, f64) {
    let (u, k) = cpu_secs("self");
    match dataplane_pid() {
        Some(p) => {
            let (du, dk) = cpu_secs(&p);
            (u + du, k + dk)
        }
        None => (u, k),
    }
}

async fn start(dir: &std::path::Path) -> LocalRuntime {
    let mut cfg = LocalConfig::new(dir);
    if std::env::args().any(|a| a == "--dataplane-process") {
        cfg.dataplane = floyd::runtime::local::DataplaneMode::Process;
    }
    cfg.floyd_bin = Some(env!("CARGO_BIN_EXE_floyd").into());
    cfg.nvidia_smi = None;
    let threads = arg("--lb-threads", 0) as usize;
    if threads > 0 {
        cfg.lb_threads = threads;
    }
    let rt = LocalRuntime::start(cfg).await.expect("runtime starts");
    *DATAPLANE_PID.lock().unwrap_or_else(|e| e.into_inner()) =
        rt.dataplane_pid().map(|p| p.to_string());
    rt
}

/// Create revision `r` of `s` and scale it to `n` instances.
fn create_scaled(r: &Revision, s: &ServiceSpec, n: u32) -> Vec<Action> {
    vec![
        Action::CreateRevision {
            revision: r.clone(),
            template: s.template.clone(),
        },
        Action::Scale {
            revision: r.clone(),
            replicas: n,
        },
    ]
}

async fn bring_up(
    rt: &LocalRuntime,
    svc: &ServiceName,
    s: &ServiceSpec,
    n: u32,
    limit: Duration,
) -> bool {
    let r = Revision("bench00000".into());
    let acts = create_scaled(&r, s, n);
    if let Err(e) = rt.apply(svc, s, &acts).await {
        eprintln!("apply: {e}");
    }
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let o = rt
            .observe(svc, None, Time::now_wall())
            .await
            .unwrap_or_default();
        if o.revision(&r).is_some_and(|x| x.ready() == n) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

struct Round {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// CPU microseconds per request: this process (user, kernel), the
    /// instance process (user + kernel).
    cpu_self_us: (f64, f64),
    cpu_app_us: f64,
}

/// utime and stime of a process, in seconds.
fn cpu_secs(pid: &str) -> (f64, f64) {
    // /proc reports in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
    const TICKS: f64 = 100.0;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u / TICKS, k / TICKS))
        })
        .unwrap_or((0.0, 0.0))
}

async fn load(url: &str, secs: u64, app_pid: i32, connections: usize) -> Round {
    let app_pid = app_pid.to_string();
    let (self0, app0) = (cpu_self(), cpu_secs(&app_pid));
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(http);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, stop, url) = (client.clone(), stop.clone(), url.to_string());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(65536);
                let mut errors = 0u64;
                let uri: hyper::Uri = url.parse().expect("uri");
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let req = hyper::Request::get(uri.clone())
                        .body(Empty::new())
                        .expect("request");
                    match client.request(req).await {
                        Ok(r) => {
                            let ok = r.status().is_success();
                            let _ = r.into_body().collect().await;
                            if ok {
                                lat.push(t.elapsed().as_micros() as u64);
                            } else {
                                errors += 1;
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (self1, app1) = (cpu_self(), cpu_secs(&app_pid));
    let n = all.len().max(1) as f64;
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Round {
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
        cpu_self_us: ((self1.0 - self0.0) * 1e6 / n, (self1.1 - self0.1) * 1e6 / n),
        cpu_app_us: (app1.0 + app1.1 - app0.0 - app0.1) * 1e6 / n,
    }
}

/// `--pin`: the load balancer's threads on the last CPU; this process's
/// other threads (load generator, runtime) and the instance on the others.
/// On a 2-CPU machine this gives the proxy a core of its own, as it has on
/// any machine with cores to spare, instead of competing with the load
/// generator and the instance for two.
fn pin(app_pid: i32) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("--pin needs at least 2 CPUs");
        return;
    }
    let (lb_cpu, rest) = ((cpus - 1).to_string(), format!("0-{}", cpus - 2));
    let taskset = |args: &[&str]| {
        let ok = std::process::Command::new("taskset")
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("taskset {args:?} failed");
        }
    };
    let dp = dataplane_pid();
    let dataplane_tasks = dp
        .as_ref()
        .map(|p| format!("/proc/{p}/task"))
        .unwrap_or_else(|| "/proc/self/task".into());
    let tasks = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .chain(
            std::fs::read_dir(&dataplane_tasks)
                .into_iter()
                .filter(|_| dp.is_some()),
        )
        .flatten()
        .flatten();
    for t in tasks {
        let tid = t.file_name().to_string_lossy().to_string();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let cpu = if comm.trim() == "floyd-lb" {
            &lb_cpu
        } else {
            &rest
        };
        println!("pin: thread {tid} ({}) on CPU {cpu}", comm.trim());
        taskset(&["-pc", cpu, &tid]);
    }
    taskset(&["-apc", &rest, &app_pid.to_string()]);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = arg("--seconds", 5);
    let rounds = arg("--rounds", 3);
    let instances = arg("--instances", 100) as u32;
    // `--load direct[PATH]|lb[PATH]|URL`: only phase 3's set-up, then one
    // round of load on that target (the instance directly, the LB, or any
    // URL).
    let load_only = {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == "--load")
            .and_then(|i| args.get(i + 1).cloned())
    };
    let canary_only = std::env::args().any(|a| a == "--canary-only");
    // `--readiness-only`: phase 2 alone; `--offsets N` port-open offsets
    // spread evenly over the probe period (default 20).
    let readiness_only = std::env::args().any(|a| a == "--readiness-only");
    let offsets = arg("--offsets", 20).max(1);
    let lb_only = load_only.is_some() || canary_only || std::env::args().any(|a| a == "--lb-only");
    let dir = tempfile::tempdir().expect("tempdir");

    // 1. RSS with N instances.
    let base = rss_kib();
    if !lb_only && !readiness_only {
        let rt = start(&dir.path().join("rss")).await;
        let svc = ServiceName::parse("many").expect("name");
        let ok = bring_up(
            &rt,
            &svc,
            &spec(instances, free_port(), 2),
            instances,
            Duration::from_secs(180),
        )
        .await;
        // Let probes run a few periods at steady state.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let rss = rss_kib();
        println!(
            "rss: {instances} instances ready={ok}: controller RSS {:.1} MiB (before starting the runtime {:.1} MiB)",
            rss as f64 / 1024.0,
            base as f64 / 1024.0
        );
        rt.shutdown().await;
    }

    // 2. Readiness detection latency.
    if !lb_only || readiness_only {
        let rt = start(&dir.path().join("ready")).await;
        let mut lats = Vec::new();
        for k in 0..offsets {
            let svc = ServiceName::parse(&format!("ready{k}")).expect("name");
            let mut s = spec(1, free_port(), 1);
            // The port opens 1 s + k/N of a period after start: the offsets
            // cover the whole probe period evenly.
            s.template.command.extend([
                "--startup-delay".into(),
                format!("{:.3}", 1.0 + k as f64 / offsets as f64),
            ]);
            let r = Revision("ready00000".into());
            let acts = create_scaled(&r, &s, 1);
            if rt.apply(&svc, &s, &acts).await.is_err() {
                continue;
            }
            let mut port = None;
            let deadline = Instant::now() + Duration::from_secs(20);
            while port.is_none() && Instant::now() < deadline {
                let o = rt
                    .observe(&svc, None, Time::now_wall())
                    .await
                    .unwrap_or_default();
                port = o
                    .revision(&r)
                    .and_then(|x| x.instances.first())
                    .and_then(|i| rt.instance_port(&svc, &i.id));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let Some(port) = port else { continue };
            let mut opened = None;
            let mut detected = None;
            while detected.is_none() && Instant::now() < deadline {
                if opened.is_none()
                    && tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                {
                    opened = Some(Instant::now());
                }
                let o = rt
                    .observe(&svc, None, Time::now_wall())
                    .await
                    .unwrap_or_default();
                if o.revision(&r).is_some_and(|x| x.ready() == 1) {
                    detected = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if let (Some(o), Some(d)) = (opened, detected) {
                lats.push(d.saturating_duration_since(o).as_secs_f64() * 1000.0);
            }
        }
        lats.sort_by(|a, b| a.total_cmp(b));
        println!(
            "readiness: period 1 s, {} of {offsets} offsets measured, detection after the port opened (ms): {:?}; p50 {:.0} ms, max {:.0} ms (target <= 1050 ms)",
            lats.len(),
            lats.iter().map(|l| l.round() as u64).collect::<Vec<_>>(),
            lats.get(lats.len() / 2).copied().unwrap_or(f64::NAN),
            lats.last().copied().unwrap_or(f64::NAN)
        );
        rt.shutdown().await;
    }
    if readiness_only {
        return;
    }

    // 3. LB vs direct, side by side.
    if !canary_only {
        let rt = start(&dir.path().join("lb")).await;
        let svc = ServiceName::parse("lb").expect("name");
        let lb = free_port();
        if !bring_up(&rt, &svc, &spec(1, lb, 1), 1, Duration::from_secs(30)).await {
            eprintln!("instance did not become ready");
            return;
        }
        let o = rt
            .observe(&svc, None, Time::now_wall())
            .await
            .unwrap_or_default();
        let id = o.revisions[0].instances[0].id.clone();
        let direct_port = rt.instance_port(&svc, &id).unwrap_or(0);
        let app_pid = rt.pids().first().copied().unwrap_or(0);
        if std::env::args().any(|a| a == "--pin") {
            pin(app_pid);
        }
        if let Some(targets) = load_only.as_deref() {
            // For `perf record -p`: one long round per target, in order.
            let path = |p: &str| {
                if p.is_empty() {
                    "/".to_string()
                } else {
                    p.to_string()
                }
            };
            for target in targets.split(',') {
                let url = if let Some(p) = target.strip_prefix("direct") {
                    format!("http://127.0.0.1:{direct_port}{}", path(p))
                } else if let Some(p) = target.strip_prefix("lb") {
                    format!("http://127.0.0.1:{lb}{}", path(p))
                } else {
                    target.to_string()
                };
                let l = load(&url, secs, app_pid, arg("--connections", 64) as usize).await;
                println!(
                    "load {url}: {:.0} req/s p50 {} us p99 {} us errors {}; CPU us/request: this process {:.1} (kernel {:.1}), instance {:.1}",
                    l.rps,
                    l.p50_us,
                    l.p99_us,
                    l.errors,
                    l.cpu_self_us.0 + l.cpu_self_us.1,
                    l.cpu_self_us.1,
                    l.cpu_app_us
                );
            }
            rt.shutdown().await;
            return;
        }
        // "/" is CPU-bound on both sides (the worst case for a proxy on a
        // small machine); "/slow?ms=5" is a backend that takes 5 ms.
        for path in ["/", "/slow?ms=5"] {
            let direct_url = format!("http://127.0.0.1:{direct_port}{path}");
            let lb_url = format!("http://127.0.0.1:{lb}{path}");
            // Warm up both paths.
            let _ = load(&direct_url, 1, app_pid, CONNECTIONS).await;
            let _ = load(&lb_url, 1, app_pid, CONNECTIONS).await;
            let (mut d_rps, mut l_rps, mut d_p99, mut l_p99, mut d_p50, mut l_p50) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            let (mut cpu_proxy, mut cpu_proxy_kernel) = (vec![], vec![]);
            for i in 0..rounds {
                let d = load(&direct_url, secs, app_pid, CONNECTIONS).await;
                let l = load(&lb_url, secs, app_pid, CONNECTIONS).await;
                println!(
                    "GET {path} round {i}: direct {:.0} req/s p50 {} us p99 {} us errors {} | lb {:.0} req/s p50 {} us p99 {} us errors {}",
                    d.rps, d.p50_us, d.p99_us, d.errors, l.rps, l.p50_us, l.p99_us, l.errors
                );
                let (du, dk) = d.cpu_self_us;
                let (lu, lk) = l.cpu_self_us;
                println!(
                    "  CPU us/request: direct: load generator {:.1} (kernel {dk:.1}), instance {:.1} | lb: load generator + proxy {:.1} (kernel {lk:.1}), instance {:.1} => proxy ~{:.1} (kernel ~{:.1})",
                    du + dk,
                    d.cpu_app_us,
                    lu + lk,
                    l.cpu_app_us,
                    lu + lk - du - dk,
                    lk - dk
                );
                cpu_proxy.push(lu + lk - du - dk);
                cpu_proxy_kernel.push(lk - dk);
                d_rps.push(d.rps);
                l_rps.push(l.rps);
                d_p99.push(d.p99_us as f64);
                l_p99.push(l.p99_us as f64);
                d_p50.push(d.p50_us as f64);
                l_p50.push(l.p50_us as f64);
            }
            let (dr, lr) = (median(d_rps), median(l_rps));
            println!(
                "lb GET {path}: {CONNECTIONS} connections, median of {rounds} x {secs} s: direct {dr:.0} req/s, through LB {lr:.0} req/s = {:.0}% of direct; p50 {:.0} -> {:.0} us; p99 {:.0} -> {:.0} us (added {:.0} us)",
                100.0 * lr / dr,
                median(d_p50.clone()),
                median(l_p50.clone()),
                median(d_p99.clone()),
                median(l_p99.clone()),
                median(l_p99) - median(d_p99)
            );
            println!(
                "lb GET {path}: proxy CPU ~{:.1} us/request, of which ~{:.1} us in the kernel (medians)",
                median(cpu_proxy),
                median(cpu_proxy_kernel)
            );
        }
        rt.shutdown().await;
    }

    // 4. Canary routing cost.
    canary_cost(&dir.path().join("canary"), secs, rounds).await;
}

/// Three header rules, as a service with A/B routing might have.
fn canary_matches() -> Vec<CanaryMatch> {
    [
        ("x-canary", "true"),
        ("x-beta-user", "yes"),
        ("x-team", "checkout"),
    ]
    .into_iter()
    .map(|(k, v)| CanaryMatch {
        headers: std::collections::BTreeMap::from([(k.to_string(), v.to_string())]),
    })
    .collect()
}

async fn canary_cost(dir: &std::path::Path, secs: u64, rounds: u64) {
    use floyd::runtime::local::lb::{Backend, CanaryRoutes, Lb, LbPolicy, Routes};
    use hyper::header::{HeaderMap, HeaderValue};
    // (a) The decision alone.
    let (stable, canary) = (Revision("stable0000".into()), Revision("canary0000".into()));
    let backend = |id: &str, rev: &Revision| Backend {
        instance: id.into(),
        revision: rev.clone(),
        ports: std::collections::BTreeMap::from([(String::new(), 1)]),
        inflight: Arc::default(),
        counters: Arc::default(),
    };
    let lb = Lb::new(
        "bench",
        LbPolicy::RoundRobin,
        tokio::runtime::Handle::current(),
    );
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
        ("x-canary", "false"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    let mut matched = headers.clone();
    matched.insert("x-canary", HeaderValue::from_static("true"));
    let n = 5_000_000u64;
    // (name, split: weight and header rules, request headers)
    type Mode<'a> = (&'a str, Option<(u32, Vec<CanaryMatch>)>, &'a HeaderMap);
    let modes: [Mode; 4] = [
        ("round-robin (no split)", None, &headers),
        ("weighted 50%", Some((50, vec![])), &headers),
        (
            "weighted 50% + 3 header rules (no match)",
            Some((50, canary_matches())),
            &headers,
        ),
        (
            "header-matched request",
            Some((50, canary_matches())),
            &matched,
        ),
    ];
    let mut results: Vec<(&str, Vec<f64>, f64)> =
        modes.iter().map(|m| (m.0, vec![], 0.0)).collect();
    for _ in 0..rounds.max(3) {
        for (i, (_, split, h)) in modes.iter().enumerate() {
            let stable_set = vec![backend("s1", &stable), backend("s2", &stable)];
            let routes = match split {
                None => Routes {
                    active: [
                        stable_set,
                        vec![backend("c1", &canary), backend("c2", &canary)],
                    ]
                    .concat(),
                    ..Routes::default()
                },
                Some((w, m)) => Routes {
                    active: stable_set,
                    preview: vec![],
                    canary: Some(CanaryRoutes::new(
                        vec![backend("c1", &canary), backend("c2", &canary)],
                        *w,
                        m,
                        false,
                    )),
                },
            };
            lb.set_routes(routes);
            let t = Instant::now();
            let hits = lb.route_many(h, n, &canary);
            let ns = t.elapsed().as_nanos() as f64 / n as f64;
            results[i].1.push(ns);
            results[i].2 = hits as f64 * 100.0 / n as f64;
        }
    }
    let base = median(results[0].1.clone());
    for (name, ns, share) in results {
        let m = median(ns);
        println!(
            "canary decision: {name}: {m:.1} ns/request (+{:.1} ns vs round-robin), {share:.1}% to the canary revision (median of {} x {n})",
            m - base,
            rounds.max(3)
        );
    }

    // (b) Real requests through the LB, two instances of two revisions.
    let rt = start(dir).await;
    let svc = ServiceName::parse("canary").expect("name");
    let port = free_port();
    let mut s = spec(2, port, 1);
    let (r1, r2) = (Revision("bench00001".into()), Revision("bench00002".into()));
    let mut acts = create_scaled(&r1, &s, 1);
    acts.extend(create_scaled(&r2, &s, 1));
    if let Err(e) = rt.apply(&svc, &s, &acts).await {
        eprintln!("apply: {e}");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = rt
            .observe(&svc, None, Time::now_wall())
            .await
            .unwrap_or_default();
        if [&r1, &r2]
            .iter()
            .all(|r| o.revision(r).is_some_and(|x| x.ready() == 1))
        {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("instances did not become ready");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app_pids = rt.pids();
    let plain = s.clone();
    let weighted = {
        let mut w = s.clone();
        w.strategy = Strategy::Canary {
            canary: CanaryParams {
                steps: vec![CanaryStep::SetWeight(50)],
                matches: vec![],
                mirror: false,
                traffic_routing: None,
            },
        };
        w
    };
    let matching = {
        let mut w = weighted.clone();
        if let Strategy::Canary { canary } = &mut w.strategy {
            canary.matches = canary_matches();
        }
        w
    };
    let split = Action::SetWeight {
        canary: r2.clone(),
        stable: Some(r1.clone()),
        weight: 50,
    };
    let everyone = Action::SetTraffic {
        active: None,
        preview: None,
    };
    let url = format!("http://127.0.0.1:{port}/");
    let modes: [(&str, &ServiceSpec, &Action); 3] = [
        ("round-robin (no split)", &plain, &everyone),
        ("weighted 50%", &weighted, &split),
        ("weighted 50% + 3 header rules", &matching, &split),
    ];
    // Per mode: req/s, p50, p99, CPU per request, one entry per round.
    type Row = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut rows: Vec<Row> = modes.iter().map(|_| Default::default()).collect();
    // The instances' CPU is not the proxy's: count this process only.
    let _ = app_pids;
    for (_, sp, act) in &modes {
        s = (*sp).clone();
        let _ = rt.apply(&svc, &s, std::slice::from_ref(*act)).await;
        let _ = load(&url, 1, 0, CONNECTIONS).await;
    }
    for i in 0..rounds {
        for (k, (name, sp, act)) in modes.iter().enumerate() {
            let _ = rt.apply(&svc, sp, std::slice::from_ref(*act)).await;
            let l = load(&url, secs, 0, CONNECTIONS).await;
            println!(
                "canary GET / round {i}: {name}: {:.0} req/s p50 {} us p99 {} us errors {}; this process (load generator + proxy) {:.1} us CPU/request",
                l.rps,
                l.p50_us,
                l.p99_us,
                l.errors,
                l.cpu_self_us.0 + l.cpu_self_us.1
            );
            rows[k].0.push(l.rps);
            rows[k].1.push(l.p50_us as f64);
            rows[k].2.push(l.p99_us as f64);
            rows[k].3.push(l.cpu_self_us.0 + l.cpu_self_us.1);
        }
    }
    for ((name, _, _), (rps, p50, p99, cpu)) in modes.iter().zip(rows) {
        println!(
            "canary GET /: {name}: median of {rounds} x {secs} s, {CONNECTIONS} connections: {:.0} req/s, p50 {:.0} us, p99 {:.0} us, load generator + proxy {:.1} us CPU/request",
            median(rps),
            median(p50),
            median(p99),
            median(cpu)
        );
    }
    rt.shutdown().await;
}
