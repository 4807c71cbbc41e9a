//! Benchmark: manifests. Load + render + validate generated config repos
//! (1,000 services × 3 environments; 10,000 services) and report wall time
//! and peak memory. Results and the command to reproduce them are in
//! docs/benchmarks.md ("Manifests").
//!
//! `cargo bench --bench manifest` (release). `FLOYD_BENCH_RUNS=n` sets the
//! number of timed runs per case (default 15).

use floyd::manifest::{ConfigRepo, load_release};
use std::path::Path;
use std::time::{Duration, Instant};

const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];

/// A realistic service manifest: templated values, probes, a strategy,
/// gates on some, a GPU on every tenth.
fn service(i: usize) -> String {
    let strategy = match i % 3 {
        0 => "    type: RollingUpdate\n    rollingUpdate: { maxSurge: 25%, maxUnavailable: 0 }\n"
            .to_string(),
        1 => "    type: Recreate\n".to_string(),
        _ => format!(
            "    type: BlueGreen\n    blueGreen: {{ previewPort: {}, autoPromote: true, scaleDownDelaySeconds: 30s }}\n",
            30000 + i
        ),
    };
    let gpu = if i.is_multiple_of(10) {
        "      gpu: { count: 1, product: NVIDIA-A100-SXM4-80GB, sharing: exclusive }\n"
    } else {
        ""
    };
    // Service ports are unique across a release (previews: 30000 + i).
    let (http, metrics) = (10000 + i, 40000 + i);
    format!(
        r#"# Service {i}: generated for the manifest benchmark.
apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: svc-{i}
spec:
  replicas: {{{{ values.replicas }}}}
  template:
    image: "registry.example/team/svc-{i}:{{{{ values.tag }}}}"
    command: ["${{FLOYD_BIN}}", "sample-app", "--version", "{{{{ values.tag }}}}"]
    env:
      LOG_LEVEL: {{{{ values.logLevel }}}}
      REGION: {{{{ values.region }}}}
      SERVICE_INDEX: "{i}"
    resources:
      cpu: 250m
      memory: 128Mi
{gpu}    terminationGracePeriodSeconds: 10
  ports:
    - {{ name: http, port: {http} }}
    - {{ name: metrics, port: {metrics} }}
  health:
    readiness: {{ http: {{ path: /healthz, port: http }}, periodSeconds: 2, failureThreshold: 3 }}
    liveness: {{ tcp: {{ port: http }}, periodSeconds: 10 }}
  minReadySeconds: 5
  progressDeadlineSeconds: 300
  strategy:
{strategy}  gates:
    - successRate: {{ min: {{{{ values.minSuccess }}}}, window: 30s }}
  onFailure: {{ rollback: true, revert: true }}
"#
    )
}

fn generate(dir: &Path, services: usize) {
    std::fs::create_dir_all(dir.join("services")).expect("mkdir");
    std::fs::write(
        dir.join("floyd.yaml"),
        "values:\n  replicas: 2\n  tag: \"1.0.0\"\n  logLevel: info\n  region: eu-west-1\n  minSuccess: 0.99\n\
         environments:\n  dev: { values: { replicas: 1, logLevel: debug } }\n  staging: { values: { tag: \"1.1.0-rc1\" } }\n  prod: { values: { replicas: 6, minSuccess: 0.999 } }\n\
         runtime:\n  local:\n    gpus:\n      - { product: NVIDIA-A100-SXM4-80GB, memoryMiB: 81920, count: 8 }\n",
    )
    .expect("write floyd.yaml");
    for i in 0..services {
        std::fs::write(dir.join(format!("services/svc-{i}.yaml")), service(i))
            .expect("write service");
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system, all threads) of this process, from
/// /proc/self/stat, assuming the usual 100 ticks per second.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

struct Timing {
    min: Duration,
    median: Duration,
    max: Duration,
    /// Mean CPU time per run: what the work costs regardless of how busy
    /// the machine is (wall time on a shared machine includes waiting).
    cpu: Option<Duration>,
}

fn time<F: FnMut()>(runs: usize, mut f: F) -> Timing {
    f(); // warm the page cache
    let cpu_before = cpu_time();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    let cpu = match (cpu_before, cpu_time()) {
        (Some(a), Some(b)) => Some((b - a) / runs as u32),
        _ => None,
    };
    times.sort();
    Timing {
        min: times[0],
        median: times[times.len() / 2],
        max: times[times.len() - 1],
        cpu,
    }
}

fn report(what: &str, t: Timing) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<58} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   cpu/run {}",
        ms(t.median),
        ms(t.min),
        ms(t.max),
        t.cpu
            .map_or("n/a".to_string(), |c| format!("{:.0} ms", ms(c)))
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // `cargo test --benches` runs this binary with `--test`-style args; only
    // run the real thing under `cargo bench`.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let runs: usize = std::env::var("FLOYD_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let tmp = tempfile::tempdir().expect("tempdir");

    // 10,000 first, so the peak memory reported is this case's.
    let big = tmp.path().join("10k");
    generate(&big, 10_000);
    let base_rss = peak_rss_mib().unwrap_or(0.0);
    report(
        "10,000 services, one environment (load+render+validate)",
        time(runs.min(5), || {
            let r = load_release(&big, Some("prod")).expect("valid");
            assert_eq!(r.services.len(), 10_000);
        }),
    );
    if let Some(peak) = peak_rss_mib() {
        println!("10,000 services: peak RSS {peak:.1} MiB (before loading: {base_rss:.1} MiB)");
    }

    let small = tmp.path().join("1k");
    generate(&small, 1_000);
    report(
        "1,000 services, one environment (load+render+validate)",
        time(runs, || {
            let r = load_release(&small, Some("prod")).expect("valid");
            assert_eq!(r.services.len(), 1_000);
        }),
    );
    report(
        "1,000 services x 3 environments (read once, render each)",
        time(runs, || {
            let repo = ConfigRepo::read(&small).expect("readable");
            for env in ENVIRONMENTS {
                let r = repo.release(Some(env)).expect("valid");
                assert_eq!(r.services.len(), 1_000);
            }
        }),
    );
    println!(
        "cores available: {}, load average (1/5/15 min): {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );
}
