//! Fixtures for the local runtime tests: a runtime on a temp state dir whose
//! instances run the real `floyd sample-app`, waits with timeouts, a bounded
//! load generator.

#![allow(dead_code)]

use floyd::manifest::{
    BlueGreenParams, HealthSpec, InstanceTemplate, PortRef, PortSpec, Probe, ProbeAction, Revision,
    ServiceName, ServiceSpec, Strategy,
};
use floyd::runtime::local::{LocalConfig, LocalRuntime};
use floyd::runtime::{Action, Observed, Runtime};
use floyd::time::Time;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const FLOYD: &str = env!("CARGO_BIN_EXE_floyd");

pub fn config(dir: &std::path::Path) -> LocalConfig {
    let mut c = LocalConfig::new(dir);
    c.floyd_bin = Some(FLOYD.into());
    c.nvidia_smi = None;
    c.tick = Duration::from_millis(50);
    c.restart_backoff_min = Duration::from_millis(200);
    c.restart_backoff_max = Duration::from_secs(2);
    // The whole suite can run against the dataplane process too.
    if std::env::var("FLOYD_TEST_DATAPLANE").as_deref() == Ok("process") {
        c.dataplane = floyd::runtime::local::DataplaneMode::Process;
    }
    c
}

pub async fn runtime(dir: &std::path::Path) -> LocalRuntime {
    LocalRuntime::start(config(dir))
        .await
        .expect("runtime starts")
}

pub fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

pub fn rev(s: &str) -> Revision {
    Revision(s.to_string())
}

/// `floyd sample-app <args>` with a short grace period.
pub fn sample(args: &[&str]) -> InstanceTemplate {
    let mut argv = vec!["${FLOYD_BIN}".to_string(), "sample-app".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut t = InstanceTemplate::command(argv);
    t.termination_grace_period_seconds = 5;
    t
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn http_probe(path: &str) -> Probe {
    probe(ProbeAction::Http {
        path: path.into(),
        port: PortRef::Name("http".into()),
    })
}

pub fn probe(action: ProbeAction) -> Probe {
    Probe {
        action,
        initial_delay_seconds: 0,
        period_seconds: 1,
        timeout_seconds: 1,
        success_threshold: 1,
        failure_threshold: 2,
    }
}

/// A spec with an `http` port on `lb_port` and an HTTP readiness probe on /healthz.
pub fn web_spec(replicas: u32, template: InstanceTemplate, lb_port: u16) -> ServiceSpec {
    let mut s = ServiceSpec::with_defaults(replicas, template);
    s.ports = vec![PortSpec {
        name: "http".into(),
        port: lb_port,
    }];
    s.health = HealthSpec {
        readiness: Some(http_probe("/healthz")),
        liveness: None,
        startup: None,
    };
    s
}

pub fn blue_green(mut s: ServiceSpec, preview: u16) -> ServiceSpec {
    s.strategy = Strategy::BlueGreen {
        blue_green: BlueGreenParams {
            preview_port: Some(preview),
            auto_promote: true,
            scale_down_delay_seconds: 0,
        },
    };
    s
}

pub fn create(r: &str, t: &InstanceTemplate, replicas: u32) -> Vec<Action> {
    vec![
        Action::CreateRevision {
            revision: rev(r),
            template: t.clone(),
        },
        Action::Scale {
            revision: rev(r),
            replicas,
        },
    ]
}

pub fn scale(r: &str, replicas: u32) -> Action {
    Action::Scale {
        revision: rev(r),
        replicas,
    }
}

pub async fn observe(rt: &LocalRuntime, svc: &ServiceName) -> Observed {
    rt.observe(svc, None, Time::now_wall()).await.unwrap()
}

/// Polls until `f(observed)` holds; panics with the last state after `secs`.
pub async fn wait_for(
    rt: &LocalRuntime,
    svc: &ServiceName,
    secs: u64,
    what: &str,
    f: impl Fn(&Observed) -> bool,
) -> Observed {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let o = observe(rt, svc).await;
        if f(&o) {
            return o;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}; last state: {o:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn ready(o: &Observed, r: &str) -> u32 {
    o.revision(&rev(r)).map(|x| x.ready()).unwrap_or(0)
}

pub fn total(o: &Observed, r: &str) -> usize {
    o.revision(&rev(r)).map(|x| x.instances.len()).unwrap_or(0)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

pub async fn get(url: &str) -> Result<(u16, String), String> {
    let r = client().get(url).send().await.map_err(|e| e.to_string())?;
    let st = r.status().as_u16();
    Ok((st, r.text().await.map_err(|e| e.to_string())?))
}

/// Body field `version` of `/` through a URL.
pub async fn version_at(url: &str) -> Option<String> {
    let (st, body) = get(url).await.ok()?;
    if st != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["version"].as_str()?.to_string())
}

/// A bounded load generator: `workers` loops of GET `url` until stopped or
/// `max` requests were sent. Counts failures (non-200 or transport errors)
/// and the versions seen.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    pub versions: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, workers: usize, max: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let versions = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let c = client();
        let handles = (0..workers)
            .map(|_| {
                let (stop, sent, failed, errors, versions, c, url) = (
                    stop.clone(),
                    sent.clone(),
                    failed.clone(),
                    errors.clone(),
                    versions.clone(),
                    c.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed)
                        && sent.fetch_add(1, Ordering::Relaxed) < max
                    {
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                let body = r.text().await.unwrap_or_default();
                                let v: serde_json::Value =
                                    serde_json::from_str(&body).unwrap_or_default();
                                let ver = v["version"].as_str().unwrap_or("?").to_string();
                                *versions.lock().unwrap().entry(ver).or_default() += 1;
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let st = r.status();
                                let body = r.text().await.unwrap_or_default();
                                errors.lock().unwrap().push(format!("{st}: {body}"));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(e.to_string());
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            errors,
            versions,
            handles,
        }
    }

    /// Stops and returns (requests done, failures).
    pub async fn finish(
        self,
    ) -> (
        u64,
        u64,
        Vec<String>,
        std::collections::BTreeMap<String, u64>,
    ) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
        }
        let versions = self.versions.lock().unwrap().clone();
        let done: u64 = versions.values().sum::<u64>() + self.failed.load(Ordering::Relaxed);
        (
            done,
            self.failed.load(Ordering::Relaxed),
            self.errors.lock().unwrap().clone(),
            versions,
        )
    }
}

/// Whether a process exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Pids of processes whose environment holds `FLOYD_LOCAL_STATE` under `dir`.
pub fn instance_processes(dir: &std::path::Path) -> Vec<i32> {
    let marker = dir
        .join("local")
        .canonicalize()
        .unwrap_or(dir.join("local"));
    floyd::runtime::local::process::processes_with_marker(&marker.to_string_lossy())
        .into_iter()
        .filter(|p| pid_alive(*p))
        .collect()
}

/// A runtime started with `cfg` running one ready `web` instance (v1)
/// behind its load balancer; returns the runtime and the LB port.
pub async fn one_ready_web(cfg: LocalConfig) -> (LocalRuntime, u16) {
    let rt = LocalRuntime::start(cfg).await.expect("runtime starts");
    let svc = name("web");
    let lb = free_port();
    let t = sample(&["--version", "v1"]);
    rt.apply(
        &svc,
        &web_spec(1, t.clone(), lb),
        &create("aaaaaaaaaa", &t, 1),
    )
    .await
    .expect("apply");
    wait_for(&rt, &svc, 20, "1 ready", |o| ready(o, "aaaaaaaaaa") == 1).await;
    (rt, lb)
}
