//! Benchmark: the GitOps loop. Results and the command to reproduce them are
//! in docs/benchmarks.md ("GitOps loop").
//!
//! 1. A poll with no change (`GitSource::poll`: connect + advertised refs,
//!    no fetch) against `git ls-remote` on the same `git daemon`, interleaved.
//! 2. Webhook accepted (HTTP 202 from `POST /hooks/github`) → the changed
//!    service's rollout started (its first engine step applied), in a config
//!    repo of 1,000 services.
//! 3. Rollout declared Failed → revert commit pushed (the `revert` event), same repo.
//!
//! Parts 2 and 3 run against `git daemon` and against smart HTTP
//! (`git http-backend`), the protocol GitHub and GitLab serve.
//!
//! `cargo bench --bench gitops -- [--quick] [--server daemon|http]`

#[path = "../tests/gitops/support.rs"]
mod support;

#[path = "../tests/gitops/fake.rs"]
mod fake;

use floyd::controller::{Config, Controller};
use floyd::engine::Phase;
use floyd::hub::{Event, Hub};
use floyd::source::webhook::sign;
use floyd::source::{Credentials, GitSource, SourceConfig};
use floyd::store::Store;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{GitServer, Work};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret";

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn service(i: usize, version: &str, never_ready: bool) -> String {
    let extra = if never_ready {
        ", \"--never-ready\""
    } else {
        ""
    };
    // A broken release fails fast (1 s); healthy ones have room for a slow
    // machine stepping 1,000 services.
    let deadline = if never_ready { 1 } else { 30 };
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: svc-{i:04}
spec:
  replicas: 1
  template:
    command: [\"app\", \"--version\", \"{version}\"{extra}]
  progressDeadlineSeconds: {deadline}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
"
    )
}

fn poll_vs_ls_remote(rounds: usize) {
    let server = GitServer::daemon();
    let w = Work::clone(&server.url);
    for i in 0..200 {
        w.write(
            &format!("services/svc-{i:04}.yaml"),
            &service(i, "v1", false),
        );
    }
    w.commit("200 services");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = GitSource::open(SourceConfig {
        url: server.url.clone(),
        branch: "main".into(),
        mirror: state.path().join("repo.git"),
        credentials: Credentials::default(),
    })
    .unwrap();
    src.poll().unwrap();
    let (mut poll, mut ls) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(src.poll().unwrap(), None);
        poll.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let out = Command::new("git")
            .args(["ls-remote", &server.url, "refs/heads/main"])
            .output()
            .unwrap();
        assert!(out.status.success());
        ls.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (pm, lm) = (pct(&mut poll, 0.5), pct(&mut ls, 0.5));
    println!(
        "## no-change poll vs git ls-remote ({rounds} rounds, interleaved, git daemon on 127.0.0.1)"
    );
    println!(
        "floyd poll      median {pm:.2} ms  p90 {:.2} ms",
        pct(&mut poll, 0.9)
    );
    println!(
        "git ls-remote   median {lm:.2} ms  p90 {:.2} ms",
        pct(&mut ls, 0.9)
    );
    println!("ratio (median)  {:.2}x", pm / lm);
}

async fn webhook_and_revert(server: GitServer, services: usize, rounds: usize, reverts: usize) {
    let label = if server.url.starts_with("git://") {
        "git daemon"
    } else {
        "smart HTTP: git http-backend behind the test bridge"
    };
    let w = Work::clone(&server.url);
    for i in 0..services {
        w.write(
            &format!("services/svc-{i:04}.yaml"),
            &service(i, "v1", false),
        );
    }
    w.commit("initial");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let hub = Arc::new(Hub::new());
    let runtime = Arc::new(fake::FakeRuntime::new(Duration::ZERO));
    let src = Arc::new(
        GitSource::open(SourceConfig {
            url: server.url.clone(),
            branch: "main".into(),
            mirror: state.path().join("repo.git"),
            credentials: Credentials::default(),
        })
        .unwrap(),
    );
    let store = Arc::new(Store::open(state.path()).unwrap());
    let mut cfg = Config::new();
    // Only webhooks move it; an hour-long poll never fires during the bench.
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.resync_interval = Duration::from_secs(3600);
    let stop = CancellationToken::new();
    let ctl = Controller::new(hub.clone(), runtime.clone(), src, store, cfg);
    let s = stop.clone();
    tokio::spawn(async move { ctl.run(async move { s.cancelled().await }).await });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let scfg = floyd::server::Config {
        webhook_secret: Some(floyd::server::Secret::new(SECRET)),
        branch: "main".into(),
        ..floyd::server::Config::default()
    };
    let s = stop.clone();
    let h2 = hub.clone();
    tokio::spawn(async move {
        floyd::server::serve(listener, h2, scfg, async move { s.cancelled().await }).await
    });

    let t0 = Instant::now();
    loop {
        let done = hub
            .services()
            .iter()
            .filter(|v| v.phase == Phase::Complete)
            .count();
        if done == services {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "initial sync stuck at {done}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "\n## {label}, {services} services: initial sync to all Complete in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::new();
    let hook = |sha: String, n: usize| {
        let body = serde_json::to_vec(&serde_json::json!({"ref": "refs/heads/main", "after": sha}))
            .unwrap();
        http.post(format!("{base}/hooks/github"))
            .header("content-type", "application/json")
            .header("x-github-delivery", format!("bench-{n}"))
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), &body))
            .body(body)
            .send()
    };
    let mut lat = Vec::new();
    for r in 0..rounds {
        let i = (r * 37) % services;
        let name = format!("svc-{i:04}");
        let before = hub.service(&name).and_then(|v| v.target_revision);
        w.write(
            &format!("services/{name}.yaml"),
            &service(i, &format!("v{}", r + 2), false),
        );
        let sha = w.commit(&format!("{name}: v{}", r + 2));
        w.push();
        let mut rx = hub.subscribe();
        let t = Instant::now();
        let resp = hook(sha, r).await.unwrap();
        assert_eq!(resp.status(), 202);
        loop {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .map(|r| r.map(std::sync::Arc::unwrap_or_clone))
            {
                Ok(Ok(Event::Service { service }))
                    if service.name == name && service.target_revision != before =>
                {
                    break;
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                other => panic!("no rollout start for {name}: {other:?}"),
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        // Let it finish before the next round.
        let t1 = Instant::now();
        while hub
            .service(&name)
            .is_none_or(|v| v.phase != Phase::Complete)
        {
            assert!(t1.elapsed() < Duration::from_secs(30));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!(
        "## webhook accepted → rollout started ({rounds} rounds, {services} services, {label})"
    );
    println!(
        "p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.9),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );

    let mut rev = Vec::new();
    for r in 0..reverts {
        let i = (r * 101 + 7) % services;
        let name = format!("svc-{i:04}");
        w.pull();
        w.write(
            &format!("services/{name}.yaml"),
            &service(i, "broken", true),
        );
        let sha = w.commit(&format!("{name}: broken"));
        w.push();
        let mut rx = hub.subscribe();
        hook(sha, 10_000 + r).await.unwrap();
        let mut failed_at = None;
        loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .map(|r| r.map(std::sync::Arc::unwrap_or_clone))
            {
                Ok(Ok(Event::Rollout { entry }))
                    if entry.service == name
                        && entry.result == Phase::Failed
                        && failed_at.is_none() =>
                {
                    failed_at = Some(Instant::now());
                }
                Ok(Ok(Event::Revert {
                    service, ok: true, ..
                })) if service == name => {
                    let f = failed_at.expect("revert after failure");
                    rev.push(f.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                Ok(Ok(Event::Revert {
                    service,
                    ok: false,
                    message,
                    ..
                })) if service == name => {
                    panic!("not reverted: {message}")
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                other => panic!("no revert for {name}: {other:?}"),
            }
        }
        // Converged on the revert before the next round.
        let t1 = Instant::now();
        while hub
            .service(&name)
            .is_none_or(|v| v.phase != Phase::Complete)
        {
            assert!(
                t1.elapsed() < Duration::from_secs(60),
                "{name} did not converge"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!(
        "## rollout Failed → revert commit pushed ({reverts} reverts, {services} services, {label})"
    );
    println!(
        "p50 {:.1} ms  max {:.1} ms",
        pct(&mut rev, 0.5),
        pct(&mut rev, 1.0)
    );
    stop.cancel();
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        floyd::telemetry::init_logging(floyd::telemetry::LogFormat::Text);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    // `cargo bench` passes --bench; anything else is ours.
    let (rounds, services, hooks, reverts) = if quick {
        (10, 100, 10, 2)
    } else {
        (50, 1000, 100, 5)
    };
    poll_vs_ls_remote(rounds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `--server daemon|http`: only one of the two Git servers.
    let only = std::env::args().skip_while(|a| a != "--server").nth(1);
    if only.as_deref() != Some("http") {
        rt.block_on(webhook_and_revert(
            GitServer::daemon(),
            services,
            hooks,
            reverts,
        ));
    }
    if only.as_deref() != Some("daemon") {
        rt.block_on(webhook_and_revert(
            GitServer::http(),
            services,
            hooks,
            reverts,
        ));
    }
}
