//! The local runtime with real processes (`floyd sample-app`) and real
//! sockets on 127.0.0.1, driven through the `Runtime` trait.

#[path = "local/support.rs"]
mod support;

use floyd::manifest::{HealthSpec, PortRef, ProbeAction};
use floyd::runtime::{Action, InstancePhase, Runtime};
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_start_get_ready_and_serve_through_the_lb() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("web");
    let lb = free_port();
    let t = sample(&["--version", "v1"]);
    let spec = web_spec(2, t.clone(), lb);
    rt.apply(&svc, &spec, &create("aaaaaaaaaa", &t, 2))
        .await
        .unwrap();
    let o = wait_for(&rt, &svc, 20, "2 ready", |o| ready(o, "aaaaaaaaaa") == 2).await;
    assert_eq!(rt.services().await.unwrap(), vec![svc.clone()]);
    let r = o.revision(&rev("aaaaaaaaaa")).unwrap();
    assert_eq!(r.desired, 2);
    assert!(
        r.instances
            .iter()
            .all(|i| i.phase == InstancePhase::Running && i.reason.is_none())
    );
    // Through the LB: answers JSON with the version and which instance served.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (st, body) = get(&format!("http://127.0.0.1:{lb}/")).await.unwrap();
        assert_eq!(st, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["version"], "v1");
        assert_eq!(v["service"], "web");
        seen.insert(v["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "round-robin reaches both instances: {seen:?}"
    );
    let o = observe(&rt, &svc).await;
    let traffic = o
        .traffic
        .iter()
        .find(|t| t.revision == rev("aaaaaaaaaa"))
        .unwrap();
    assert!(traffic.requests >= 6 && traffic.errors == 0, "{traffic:?}");
    // The instance environment: what Floyd sets plus a short pass-through
    // list, nothing else of the controller's (the test runner's CARGO_* vars).
    let pid = rt.pids()[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let keys: Vec<String> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            std::str::from_utf8(kv)
                .ok()?
                .split_once('=')
                .map(|(k, _)| k.to_string())
        })
        .collect();
    for want in [
        "PORT",
        "PORT_HTTP",
        "FLOYD_BIN",
        "FLOYD_SERVICE",
        "FLOYD_REVISION",
        "FLOYD_INSTANCE",
    ] {
        assert!(
            keys.iter().any(|k| k == want),
            "{want} missing from {keys:?}"
        );
    }
    assert!(
        !keys.iter().any(|k| k.starts_with("CARGO")),
        "controller env leaked: {keys:?}"
    );
    // Logs land in per-instance files.
    let id = &o.revisions[0].instances[0].id;
    let log = floyd::runtime::local::log_path(dir.path(), "web", "aaaaaaaaaa", id);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("listening on"), "{text}");
    rt.shutdown().await;
    assert!(instance_processes(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_exec_probes_gate_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // TCP: the port opens after a 1.5 s start-up delay.
    let tcp = name("tcp");
    let t = sample(&["--startup-delay", "1.5"]);
    let mut spec = web_spec(1, t.clone(), free_port());
    spec.health = HealthSpec {
        readiness: Some(probe(ProbeAction::Tcp {
            port: PortRef::Name("http".into()),
        })),
        ..HealthSpec::default()
    };
    rt.apply(&tcp, &spec, &create("t1", &t, 1)).await.unwrap();
    let o = wait_for(&rt, &tcp, 10, "tcp probe failing first", |o| {
        o.revisions[0]
            .instances
            .first()
            .and_then(|i| i.reason.clone())
            .is_some_and(|r| r.contains("readiness probe TCP"))
    })
    .await;
    assert_eq!(ready(&o, "t1"), 0);
    wait_for(&rt, &tcp, 15, "tcp ready", |o| ready(o, "t1") == 1).await;

    // Exec: ready once a file exists (argv, no shell; ${VAR} expanded from the instance env).
    let exec = name("exec");
    let flag = dir.path().join("ready-flag");
    let t = sample(&[]);
    let mut spec = web_spec(1, t.clone(), free_port());
    spec.health = HealthSpec {
        readiness: Some(probe(ProbeAction::Exec {
            command: vec![
                "test".into(),
                "-e".into(),
                flag.to_string_lossy().into_owned(),
            ],
        })),
        ..HealthSpec::default()
    };
    rt.apply(&exec, &spec, &create("e1", &t, 1)).await.unwrap();
    let o = wait_for(&rt, &exec, 10, "exec probe failing", |o| {
        o.revisions[0]
            .instances
            .first()
            .and_then(|i| i.reason.clone())
            .is_some_and(|r| r.contains("exited with status 1"))
    })
    .await;
    assert_eq!(ready(&o, "e1"), 0);
    std::fs::write(&flag, b"").unwrap();
    wait_for(&rt, &exec, 10, "exec ready", |o| ready(o, "e1") == 1).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_instance_restarts_with_backoff_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("crash");
    let t = sample(&["--crash-after", "0.2", "--exit-code", "3"]);
    let spec = web_spec(1, t.clone(), free_port());
    rt.apply(&svc, &spec, &create("c1", &t, 1)).await.unwrap();
    let o = wait_for(&rt, &svc, 20, "3 restarts", |o| {
        o.revisions[0]
            .instances
            .first()
            .is_some_and(|i| i.restarts >= 3)
    })
    .await;
    let i = &o.revisions[0].instances[0];
    let reason = i.reason.clone().unwrap_or_default();
    // Either backing off (reason says so) or just restarted (not ready yet).
    if i.phase == InstancePhase::Pending {
        assert!(
            reason.starts_with("CrashLoopBackOff: exited with status 3 (restart"),
            "{reason}"
        );
        assert!(reason.contains("next in"), "{reason}");
    }
    assert_eq!(o.revisions[0].ready(), 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_failure_restarts_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("live");
    let t = sample(&["--unready-after", "1"]);
    let mut spec = web_spec(1, t.clone(), free_port());
    spec.health.readiness = None;
    spec.health.liveness = Some(http_probe("/healthz"));
    rt.apply(&svc, &spec, &create("l1", &t, 1)).await.unwrap();
    let o = wait_for(&rt, &svc, 20, "a liveness restart", |o| {
        o.revisions[0]
            .instances
            .first()
            .is_some_and(|i| i.restarts >= 1)
    })
    .await;
    let i = &o.revisions[0].instances[0];
    if let Some(r) = &i.reason {
        assert!(
            r.contains("liveness probe failed") || r == "not ready yet",
            "{r}"
        );
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("stubborn");
    let mut t = sample(&["--ignore-sigterm"]);
    t.termination_grace_period_seconds = 1;
    let spec = web_spec(1, t.clone(), free_port());
    rt.apply(&svc, &spec, &create("s1", &t, 1)).await.unwrap();
    wait_for(&rt, &svc, 15, "ready", |o| ready(o, "s1") == 1).await;
    let pid = rt.pids()[0];
    let started = std::time::Instant::now();
    rt.apply(&svc, &spec, &[scale("s1", 0)]).await.unwrap();
    let o = wait_for(&rt, &svc, 10, "terminating", |o| {
        total(o, "s1") == 0 || o.revisions[0].terminating() == 1
    })
    .await;
    let _ = o;
    wait_for(&rt, &svc, 10, "gone", |o| total(o, "s1") == 0).await;
    // Killed after about the grace period, not the 5 s default of the fixture, and really gone.
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(!pid_alive(pid), "pid {pid} still alive");
    // The instance's log, not its `.log.times` notes beside it.
    let log = std::fs::read_dir(dir.path().join("local/logs/stubborn/s1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    assert!(
        std::fs::read_to_string(log)
            .unwrap()
            .contains("ignoring SIGTERM")
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_by_hand_under_load_has_zero_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("web");
    let lb = free_port();
    let v1 = sample(&["--version", "v1"]);
    let v2 = sample(&["--version", "v2"]);
    let spec = web_spec(3, v1.clone(), lb);
    rt.apply(&svc, &spec, &create("r1", &v1, 3)).await.unwrap();
    wait_for(&rt, &svc, 20, "v1 ready", |o| ready(o, "r1") == 3).await;
    let load = Load::start(format!("http://127.0.0.1:{lb}/"), 8, 20_000);
    let spec2 = web_spec(3, v2.clone(), lb);
    rt.apply(
        &svc,
        &spec2,
        &[Action::CreateRevision {
            revision: rev("r2"),
            template: v2.clone(),
        }],
    )
    .await
    .unwrap();
    // maxSurge 1, maxUnavailable 0, by hand.
    for step in 1..=3u32 {
        rt.apply(&svc, &spec2, &[scale("r2", step)]).await.unwrap();
        wait_for(&rt, &svc, 20, "new instance ready", |o| {
            ready(o, "r2") == step
        })
        .await;
        rt.apply(&svc, &spec2, &[scale("r1", 3 - step)])
            .await
            .unwrap();
        wait_for(&rt, &svc, 20, "old instance gone", |o| {
            total(o, "r1") == (3 - step) as usize
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done, failed, errors, versions) = load.finish().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(done > 200, "load generator ran: {done}");
    assert!(
        versions.get("v1").copied().unwrap_or(0) > 0
            && versions.get("v2").copied().unwrap_or(0) > 0,
        "{versions:?}"
    );
    rt.apply(
        &svc,
        &spec2,
        &[Action::DeleteRevision {
            revision: rev("r1"),
        }],
    )
    .await
    .unwrap();
    let o = observe(&rt, &svc).await;
    assert_eq!(o.revisions.len(), 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_preview_then_atomic_switch_and_broken_revision_gets_no_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("bg");
    let (lb, preview) = (free_port(), free_port());
    let blue = sample(&["--version", "blue"]);
    let green = sample(&["--version", "green"]);
    let broken = sample(&["--version", "broken", "--never-ready"]);
    let spec = blue_green(web_spec(2, blue.clone(), lb), preview);
    let mut acts = create("blue", &blue, 2);
    acts.push(Action::SetTraffic {
        active: Some(rev("blue")),
        preview: None,
    });
    rt.apply(&svc, &spec, &acts).await.unwrap();
    wait_for(&rt, &svc, 20, "blue ready", |o| ready(o, "blue") == 2).await;
    let active_url = format!("http://127.0.0.1:{lb}/");
    let preview_url = format!("http://127.0.0.1:{preview}/");
    assert_eq!(version_at(&active_url).await.as_deref(), Some("blue"));
    // No preview revision yet: 503 with a reason.
    let (st, body) = get(&preview_url).await.unwrap();
    assert_eq!(st, 503);
    assert!(body.contains("no ready instance"), "{body}");

    let load = Load::start(active_url.clone(), 6, 20_000);
    // A broken revision beside it: never ready, never routed.
    let mut acts = create("broken", &broken, 2);
    acts.push(Action::SetTraffic {
        active: Some(rev("blue")),
        preview: Some(rev("broken")),
    });
    rt.apply(&svc, &spec, &acts).await.unwrap();
    let o = wait_for(&rt, &svc, 20, "broken reason", |o| {
        o.revision(&rev("broken")).is_some_and(|r| {
            r.instances.iter().all(|i| {
                i.reason
                    .as_deref()
                    .is_some_and(|x| x.contains("returned 503"))
            }) && r.instances.len() == 2
        })
    })
    .await;
    assert!(
        o.revision(&rev("broken")).unwrap().instances[0]
            .reason
            .as_ref()
            .unwrap()
            .contains("readiness probe GET /healthz returned 503")
    );
    assert_eq!(get(&preview_url).await.unwrap().0, 503);
    rt.apply(
        &svc,
        &spec,
        &[
            scale("broken", 0),
            Action::SetTraffic {
                active: Some(rev("blue")),
                preview: None,
            },
        ],
    )
    .await
    .unwrap();

    // Green: preview first, then an atomic switch.
    let mut acts = create("green", &green, 2);
    acts.push(Action::SetTraffic {
        active: Some(rev("blue")),
        preview: Some(rev("green")),
    });
    rt.apply(&svc, &spec, &acts).await.unwrap();
    wait_for(&rt, &svc, 20, "green ready", |o| ready(o, "green") == 2).await;
    assert_eq!(version_at(&preview_url).await.as_deref(), Some("green"));
    assert_eq!(version_at(&active_url).await.as_deref(), Some("blue"));
    rt.apply(
        &svc,
        &spec,
        &[Action::SetTraffic {
            active: Some(rev("green")),
            preview: None,
        }],
    )
    .await
    .unwrap();
    // Switched: every request from now on is green.
    for _ in 0..10 {
        assert_eq!(version_at(&active_url).await.as_deref(), Some("green"));
    }
    rt.apply(&svc, &spec, &[scale("blue", 0)]).await.unwrap();
    wait_for(&rt, &svc, 20, "blue gone", |o| total(o, "blue") == 0).await;
    let (done, failed, errors, versions) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(done > 100);
    assert!(!versions.contains_key("broken"), "{versions:?}");
    assert!(
        versions.contains_key("green") && versions.contains_key("blue"),
        "{versions:?}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_scale_down_with_slow_requests_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("drain");
    let lb = free_port();
    let t = sample(&[]);
    let spec = web_spec(3, t.clone(), lb);
    rt.apply(&svc, &spec, &create("d1", &t, 3)).await.unwrap();
    wait_for(&rt, &svc, 20, "ready", |o| ready(o, "d1") == 3).await;
    // Requests that take 800 ms are in flight while two instances are removed.
    let load = Load::start(format!("http://127.0.0.1:{lb}/slow?ms=800"), 12, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.apply(&svc, &spec, &[scale("d1", 1)]).await.unwrap();
    wait_for(&rt, &svc, 20, "scaled down", |o| total(o, "d1") == 1).await;
    let (done, failed, errors, _) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(done >= 12);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_after_the_runtime_is_dropped_keeps_the_same_processes() {
    let dir = tempfile::tempdir().unwrap();
    let svc = name("adopt");
    let lb = free_port();
    let t = sample(&["--version", "v1"]);
    let spec = web_spec(2, t.clone(), lb);
    let pids_before = {
        let rt = runtime(dir.path()).await;
        rt.apply(&svc, &spec, &create("a1", &t, 2)).await.unwrap();
        wait_for(&rt, &svc, 20, "ready", |o| ready(o, "a1") == 2).await;
        let mut p = rt.pids();
        p.sort();
        p
        // Dropped without shutdown: like kill -9 of the controller.
    };
    assert!(pids_before.iter().all(|p| pid_alive(*p)));
    let rt = runtime(dir.path()).await;
    let mut pids_after = rt.pids();
    pids_after.sort();
    assert_eq!(
        pids_before, pids_after,
        "same processes adopted, none restarted"
    );
    let o = observe(&rt, &svc).await;
    assert_eq!(o.revision(&rev("a1")).unwrap().desired, 2);
    // Adopted instances keep serving through the re-opened LB.
    wait_for(&rt, &svc, 10, "ready after adoption", |o| {
        ready(o, "a1") == 2
    })
    .await;
    // The dropped runtime's listener may hold the port a moment longer; the
    // new runtime retries the bind every second until it is free.
    let mut version = None;
    for _ in 0..50 {
        version = version_at(&format!("http://127.0.0.1:{lb}/")).await;
        if version.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(version.as_deref(), Some("v1"));
    // An adopted instance that dies is noticed (polling /proc) and replaced.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids_after[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(&rt, &svc, 20, "dead adopted instance restarted", |o| {
        o.revision(&rev("a1"))
            .is_some_and(|r| r.instances.iter().any(|i| i.restarts >= 1) && r.ready() == 2)
    })
    .await;
    let mut procs = instance_processes(dir.path());
    procs.sort();
    let mut pids = rt.pids();
    pids.sort();
    assert_eq!(
        procs, pids,
        "no orphans: every instance process is a known instance"
    );
    rt.shutdown().await;
    assert!(
        instance_processes(dir.path()).is_empty(),
        "shutdown stops everything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_instances_of_a_previous_run_are_replaced_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let svc = name("dead");
    let t = sample(&[]);
    let spec = web_spec(1, t.clone(), free_port());
    let old = {
        let rt = runtime(dir.path()).await;
        rt.apply(&svc, &spec, &create("x1", &t, 1)).await.unwrap();
        wait_for(&rt, &svc, 20, "ready", |o| ready(o, "x1") == 1).await;
        rt.pids()[0]
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if !pid_alive(old) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rt = runtime(dir.path()).await;
    wait_for(&rt, &svc, 20, "replacement ready", |o| ready(o, "x1") == 1).await;
    assert!(!rt.pids().contains(&old));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // Command not found.
    let svc = name("nocmd");
    let t = floyd::manifest::InstanceTemplate::command(["/nonexistent/floyd-test-binary"]);
    let spec = web_spec(1, t.clone(), free_port());
    rt.apply(&svc, &spec, &create("n1", &t, 1)).await.unwrap();
    let o = wait_for(&rt, &svc, 10, "start failure reason", |o| {
        o.revisions[0]
            .instances
            .first()
            .and_then(|i| i.reason.clone())
            .is_some_and(|r| r.contains("CrashLoopBackOff"))
    })
    .await;
    let r = o.revisions[0].instances[0].reason.clone().unwrap();
    assert!(
        r.contains("cannot start") && r.contains("/nonexistent/floyd-test-binary"),
        "{r}"
    );

    // LB port in use: apply says which port and why; the instances still run.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let svc2 = name("busy");
    let t2 = sample(&[]);
    let spec2 = web_spec(1, t2.clone(), port);
    let e = rt
        .apply(&svc2, &spec2, &create("b1", &t2, 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("cannot listen"),
        "{e}"
    );
    wait_for(&rt, &svc2, 15, "instance ready anyway", |o| {
        ready(o, "b1") == 1
    })
    .await;

    // Instance port in use: the app cannot listen and crash-loops with its exit status.
    let svc3 = name("portclash");
    let mut t3 = sample(&["--port", &port.to_string()]);
    t3.env.insert("X".into(), "1".into());
    let spec3 = web_spec(1, t3.clone(), free_port());
    rt.apply(&svc3, &spec3, &create("p1", &t3, 1))
        .await
        .unwrap();
    wait_for(&rt, &svc3, 15, "crash loop", |o| {
        o.revisions[0]
            .instances
            .first()
            .and_then(|i| i.reason.clone())
            .is_some_and(|r| r.contains("exited with status 1"))
    })
    .await;

    // Probe to a closed port.
    let svc4 = name("closed");
    let t4 = sample(&[]);
    let mut spec4 = web_spec(1, t4.clone(), free_port());
    let closed = free_port();
    spec4.health.readiness = Some(probe(ProbeAction::Http {
        path: "/healthz".into(),
        port: PortRef::Number(closed),
    }));
    rt.apply(&svc4, &spec4, &create("c1", &t4, 1))
        .await
        .unwrap();
    let o = wait_for(&rt, &svc4, 10, "closed port reason", |o| {
        o.revisions[0]
            .instances
            .first()
            .and_then(|i| i.reason.clone())
            .is_some_and(|r| r.contains("refused"))
    })
    .await;
    assert!(
        o.revisions[0].instances[0]
            .reason
            .as_ref()
            .unwrap()
            .contains(&format!("port {closed}"))
    );
    // Scaling a revision that does not exist is an error, not a panic.
    assert!(rt.apply(&svc4, &spec4, &[scale("zzz", 1)]).await.is_err());
    drop(busy);
    rt.shutdown().await;
    assert!(instance_processes(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_rolling_update_never_holds_more_than_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.gpus = floyd::runtime::local::parse_gpus_flag("NVIDIA-A100-SXM4-80GB:4:81920").unwrap();
    let rt = floyd::runtime::local::LocalRuntime::start(cfg)
        .await
        .unwrap();
    let svc = name("gpu");
    let mk = |v: &str| {
        let mut t = sample(&["--version", v, "--gpu-echo"]);
        t.resources.gpu = Some(floyd::manifest::GpuRequest {
            count: 1,
            product: Some("NVIDIA-A100-SXM4-80GB".into()),
            memory_mib: Some(40000),
            sharing: floyd::manifest::GpuSharing::Exclusive,
            allow_in_place: true,
        });
        t
    };
    let (g1, g2) = (mk("g1"), mk("g2"));
    let lb = free_port();
    let spec = web_spec(4, g1.clone(), lb);
    rt.apply(&svc, &spec, &create("g1", &g1, 4)).await.unwrap();
    let o = wait_for(&rt, &svc, 25, "4 ready", |o| ready(o, "g1") == 4).await;
    let gpu = o.gpu.clone().unwrap();
    assert_eq!((gpu.exist, gpu.free, gpu.held_by_service), (4, 0, 4));
    let mut units: Vec<String> = o.revisions[0]
        .instances
        .iter()
        .flat_map(|i| i.gpus.clone())
        .collect();
    units.sort();
    units.dedup();
    assert_eq!(units.len(), 4, "each instance its own GPU");
    let (_, body) = get(&format!("http://127.0.0.1:{lb}/")).await.unwrap();
    assert!(body.contains("cuda_visible_devices"), "{body}");

    // Surge with no free GPU: the new instance waits (Pending, reason) instead of over-allocating.
    let spec2 = web_spec(4, g2.clone(), lb);
    rt.apply(&svc, &spec2, &create("g2", &g2, 1)).await.unwrap();
    let o = wait_for(&rt, &svc, 10, "pending for GPU", |o| {
        o.revision(&rev("g2")).is_some_and(|r| {
            r.instances
                .first()
                .and_then(|i| i.reason.clone())
                .is_some_and(|x| x.contains("waiting for GPU"))
        })
    })
    .await;
    assert_eq!(
        o.revision(&rev("g2")).unwrap().instances[0].phase,
        InstancePhase::Pending
    );
    // In place: remove one old, then the new one gets its GPU, and so on.
    let watcher = {
        let max_held = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let m = max_held.clone();
        let dir = dir.path().to_path_buf();
        let h = tokio::spawn(async move {
            // Watch the persisted state: GPU units held never exceed 4 and never repeat.
            for _ in 0..400 {
                if let Ok(s) = std::fs::read_to_string(dir.join("local/state.json"))
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&s)
                {
                    let mut held = Vec::new();
                    for svc in v["services"]
                        .as_object()
                        .into_iter()
                        .flat_map(|o| o.values())
                    {
                        for i in svc["instances"]
                            .as_object()
                            .into_iter()
                            .flat_map(|o| o.values())
                        {
                            for u in i["gpu"]["units"].as_array().into_iter().flatten() {
                                held.push(u.as_str().unwrap_or("").to_string());
                            }
                        }
                    }
                    let n = held.len();
                    held.sort();
                    held.dedup();
                    assert_eq!(held.len(), n, "a GPU unit held twice: {held:?}");
                    m.fetch_max(n as u32, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        (max_held, h)
    };
    for step in 1..=4u32 {
        rt.apply(&svc, &spec2, &[scale("g1", 4 - step)])
            .await
            .unwrap();
        wait_for(&rt, &svc, 25, "new GPU instance ready", |o| {
            ready(o, "g2") == step
        })
        .await;
        if step < 4 {
            rt.apply(&svc, &spec2, &[scale("g2", step + 1)])
                .await
                .unwrap();
        }
    }
    let o = wait_for(&rt, &svc, 10, "old gone", |o| total(o, "g1") == 0).await;
    assert_eq!(o.gpu.clone().unwrap().held_by_service, 4);
    watcher.1.abort();
    assert!(watcher.0.load(std::sync::atomic::Ordering::Relaxed) <= 4);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_sliced_and_mig_placement_and_fake_nvidia_smi() {
    let dir = tempfile::tempdir().unwrap();
    // A fake nvidia-smi printing recorded output.
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\ncat <<'EOF'\n0, GPU-6f5c2a31-0b8e-4f1e-9a52-1d3c5e7f9b20, NVIDIA L4, 23034 MiB\n1, GPU-0d8e7c6b-5a49-4382-b1c0-fedcba987654, NVIDIA L4, 23034 MiB\nEOF\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cfg = config(dir.path());
    cfg.nvidia_smi = Some(smi);
    cfg.gpus = vec![floyd::manifest::GpuInventory {
        product: "NVIDIA-L4".into(),
        memory_mib: None,
        count: 1,
        time_sliced_replicas: Some(2),
        mig: Default::default(),
    }];
    let rt = floyd::runtime::local::LocalRuntime::start(cfg)
        .await
        .unwrap();
    let devs = rt.gpu_devices();
    assert_eq!(devs.len(), 2, "from nvidia-smi, not the declared 1");
    assert_eq!(
        devs[1].uuid.as_deref(),
        Some("GPU-0d8e7c6b-5a49-4382-b1c0-fedcba987654")
    );
    let svc = name("ts");
    let mut t = sample(&["--gpu-echo"]);
    t.resources.gpu = Some(floyd::manifest::GpuRequest {
        count: 1,
        product: Some("NVIDIA L4".into()),
        memory_mib: None,
        sharing: floyd::manifest::GpuSharing::TimeSliced,
        allow_in_place: true,
    });
    let spec = web_spec(5, t.clone(), free_port());
    rt.apply(&svc, &spec, &create("ts1", &t, 5)).await.unwrap();
    let o = wait_for(&rt, &svc, 25, "4 of 5 ready (4 slots)", |o| {
        ready(o, "ts1") == 4
    })
    .await;
    let cap = o.gpu.clone().unwrap();
    assert_eq!((cap.exist, cap.free, cap.held_by_service), (4, 0, 4));
    let waiting = o.revisions[0]
        .instances
        .iter()
        .filter(|i| {
            i.reason
                .as_deref()
                .is_some_and(|r| r.contains("waiting for GPU"))
        })
        .count();
    assert_eq!(waiting, 1);
    let log_dir = dir.path().join("local/logs/ts/ts1");
    let mut nvidia_devices = String::new();
    for f in std::fs::read_dir(log_dir).unwrap() {
        nvidia_devices.push_str(&std::fs::read_to_string(f.unwrap().path()).unwrap());
    }
    assert!(nvidia_devices.contains("GPU-0d8e7c6b"), "{nvidia_devices}");
    rt.shutdown().await;

    // MIG from a declared inventory.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = config(dir2.path());
    let mut mig = std::collections::BTreeMap::new();
    mig.insert("1g.10gb".to_string(), 3);
    cfg.gpus = vec![floyd::manifest::GpuInventory {
        product: "NVIDIA-A100-SXM4-80GB".into(),
        memory_mib: Some(81920),
        count: 1,
        time_sliced_replicas: None,
        mig,
    }];
    let rt = floyd::runtime::local::LocalRuntime::start(cfg)
        .await
        .unwrap();
    let svc = name("mig");
    let mut t = sample(&[]);
    t.resources.gpu = Some(floyd::manifest::GpuRequest {
        count: 1,
        product: None,
        memory_mib: None,
        sharing: floyd::manifest::GpuSharing::Mig {
            profile: "1g.10gb".into(),
        },
        allow_in_place: true,
    });
    let spec = web_spec(3, t.clone(), free_port());
    rt.apply(&svc, &spec, &create("m1", &t, 3)).await.unwrap();
    let o = wait_for(&rt, &svc, 25, "3 MIG instances", |o| ready(o, "m1") == 3).await;
    let cap = o.gpu.clone().unwrap();
    assert_eq!(cap.kind, "mig-1g.10gb");
    assert_eq!((cap.exist, cap.free), (3, 0));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_and_floyd_logs_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.log_max_bytes = 2000;
    cfg.log_keep = 2;
    let rt = floyd::runtime::local::LocalRuntime::start(cfg)
        .await
        .unwrap();
    let svc = name("chatty");
    let lb = free_port();
    let t = sample(&["--log-requests"]);
    let spec = web_spec(1, t.clone(), lb);
    rt.apply(&svc, &spec, &create("k1", &t, 1)).await.unwrap();
    wait_for(&rt, &svc, 20, "ready", |o| ready(o, "k1") == 1).await;
    let c = client();
    for _ in 0..400 {
        c.get(format!("http://127.0.0.1:{lb}/"))
            .send()
            .await
            .unwrap();
    }
    let o = observe(&rt, &svc).await;
    let id = o.revisions[0].instances[0].id.clone();
    let log = floyd::runtime::local::log_path(dir.path(), "chatty", "k1", &id);
    let rotated = std::path::PathBuf::from(format!("{}.1", log.display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rotated.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated.exists(), "rotated file exists");
    assert!(!std::path::PathBuf::from(format!("{}.3", log.display())).exists());
    assert!(std::fs::metadata(&log).unwrap().len() < 20_000);
    let out = std::process::Command::new(FLOYD)
        .args(["logs", "chatty", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("[{id} k1] GET / -> 200")), "{text}");
    // -f follows: lines written after it started show up.
    let mut follow = std::process::Command::new(FLOYD)
        .args(["logs", "chatty", "-f", "--revision", "k1", "--state-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    while rx.try_recv().is_ok() {}
    c.get(format!("http://127.0.0.1:{lb}/"))
        .send()
        .await
        .unwrap();
    let line = rx.recv_timeout(Duration::from_secs(5));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        line.as_ref().is_ok_and(|l| l.contains("GET / -> 200")),
        "{line:?}"
    );
    let out = std::process::Command::new(FLOYD)
        .args(["logs", "nosuch", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_service_stops_everything_and_frees_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("gone");
    let lb = free_port();
    let t = sample(&[]);
    let spec = web_spec(2, t.clone(), lb);
    rt.apply(&svc, &spec, &create("z1", &t, 2)).await.unwrap();
    wait_for(&rt, &svc, 20, "ready", |o| ready(o, "z1") == 2).await;
    let pids = rt.pids();
    rt.delete_service(&svc).await.unwrap();
    assert!(rt.services().await.unwrap().is_empty());
    wait_for(&rt, &svc, 20, "deleted", |o| o.revisions.is_empty()).await;
    assert!(pids.iter().all(|p| !pid_alive(*p)));
    assert!(
        !dir.path().join("local/logs/gone").exists(),
        "logs go with the service"
    );
    // The LB port is free again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(std::net::TcpListener::bind(("127.0.0.1", lb)).is_ok());
    rt.shutdown().await;
}

/// Not a test on its own: the "controller" process of
/// `kill_9_of_the_controller_mid_rollout_then_adoption`. It runs a runtime on
/// `FLOYD_TEST_CHILD_DIR`, starts a rollout and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for the kill -9 test"]
async fn controller_child() {
    let Ok(dir) = std::env::var("FLOYD_TEST_CHILD_DIR") else {
        return;
    };
    let lb: u16 = std::env::var("FLOYD_TEST_CHILD_LB")
        .unwrap()
        .parse()
        .unwrap();
    let rt = runtime(std::path::Path::new(&dir)).await;
    let svc = name("web");
    let v1 = sample(&["--version", "v1"]);
    let v2 = sample(&["--version", "v2"]);
    rt.apply(&svc, &web_spec(3, v1.clone(), lb), &create("r1", &v1, 3))
        .await
        .unwrap();
    wait_for(&rt, &svc, 30, "v1 ready", |o| ready(o, "r1") == 3).await;
    let spec2 = web_spec(3, v2.clone(), lb);
    rt.apply(&svc, &spec2, &create("r2", &v2, 1)).await.unwrap();
    wait_for(&rt, &svc, 30, "first v2 ready", |o| ready(o, "r2") == 1).await;
    rt.apply(&svc, &spec2, &[scale("r1", 2)]).await.unwrap();
    wait_for(&rt, &svc, 30, "one v1 gone", |o| total(o, "r1") == 2).await;
    println!("MID-ROLLOUT");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_controller_mid_rollout_then_adoption() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let lb = free_port();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "controller_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLOYD_TEST_CHILD_DIR", dir.path())
        .env("FLOYD_TEST_CHILD_LB", lb.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("MID-ROLLOUT") {
                let _ = tx.send(());
            }
        }
    });
    let reached = rx.recv_timeout(Duration::from_secs(60));
    if reached.is_err() {
        let _ = child.kill();
        panic!("the controller child did not reach the middle of its rollout");
    }
    // Under load through the child's LB, then kill -9 the controller.
    let before = instance_processes(dir.path());
    assert_eq!(
        before.len(),
        3,
        "2 old + 1 new instance processes: {before:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    // The instances outlive the controller.
    assert!(before.iter().all(|p| pid_alive(*p)));

    let rt = runtime(dir.path()).await;
    let mut adopted = rt.pids();
    adopted.sort();
    let mut b = before.clone();
    b.sort();
    assert_eq!(adopted, b, "the same pids are adopted, nothing restarted");
    let svc = name("web");
    wait_for(&rt, &svc, 10, "adopted instances ready", |o| {
        ready(o, "r1") == 2 && ready(o, "r2") == 1
    })
    .await;
    // Resume the rollout under load: zero errors.
    let load = Load::start(format!("http://127.0.0.1:{lb}/"), 6, 20_000);
    let v2 = sample(&["--version", "v2"]);
    let spec2 = web_spec(3, v2, lb);
    for step in 2..=3u32 {
        rt.apply(&svc, &spec2, &[scale("r2", step)]).await.unwrap();
        wait_for(&rt, &svc, 20, "new ready", |o| ready(o, "r2") == step).await;
        rt.apply(&svc, &spec2, &[scale("r1", 3 - step)])
            .await
            .unwrap();
        wait_for(&rt, &svc, 20, "old gone", |o| {
            total(o, "r1") == (3 - step) as usize
        })
        .await;
    }
    let (done, failed, errors, versions) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(
        done > 50 && versions.contains_key("v2"),
        "{done} {versions:?}"
    );
    // Nothing orphaned: the process table holds exactly the 3 known instances.
    let mut procs = instance_processes(dir.path());
    procs.sort();
    let mut pids = rt.pids();
    pids.sort();
    assert_eq!(procs, pids);
    assert_eq!(pids.len(), 3);
    rt.shutdown().await;
    assert!(instance_processes(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_per_revision_for_the_success_rate_gate() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("flaky");
    let lb = free_port();
    let good = sample(&["--version", "good"]);
    let bad = sample(&["--version", "bad", "--error-ratio", "0.5"]);
    let spec = web_spec(1, good.clone(), lb);
    let mut acts = create("good", &good, 1);
    acts.extend(create("bad", &bad, 1));
    rt.apply(&svc, &spec, &acts).await.unwrap();
    wait_for(&rt, &svc, 20, "both ready", |o| {
        ready(o, "good") == 1 && ready(o, "bad") == 1
    })
    .await;
    let c = client();
    for _ in 0..40 {
        c.get(format!("http://127.0.0.1:{lb}/"))
            .send()
            .await
            .unwrap();
    }
    let o = observe(&rt, &svc).await;
    let t = |r: &str| {
        o.traffic
            .iter()
            .find(|t| t.revision == rev(r))
            .cloned()
            .unwrap()
    };
    assert_eq!((t("good").requests, t("good").errors), (20, 0));
    assert_eq!((t("bad").requests, t("bad").errors), (20, 10));
    rt.shutdown().await;
}

/// Runs the real engine against the runtime until the rollout settles, or
/// until `pause_when` holds (then returns early, mid-rollout).
async fn drive(
    rt: &floyd::runtime::local::LocalRuntime,
    svc: &floyd::manifest::ServiceName,
    spec: &floyd::manifest::ServiceSpec,
    mut state: floyd::engine::RolloutState,
    secs: u64,
    pause_when: impl Fn(&floyd::runtime::Observed) -> bool,
) -> floyd::engine::RolloutState {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = floyd::time::Time::now_wall();
        let observed = rt.observe(svc, Some(spec), now).await.unwrap();
        if pause_when(&observed) {
            return state;
        }
        let d = floyd::engine::step(spec, &observed, &state, now);
        if !d.actions.is_empty() {
            rt.apply(svc, spec, &d.actions).await.unwrap();
        }
        state = d.state;
        if state.phase.is_terminal() {
            return state;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout did not settle in {secs} s: {:?} {}; observed {observed:#?}",
            state.phase,
            state.reason
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_repo_web_rolls_with_the_real_engine_under_load_and_survives_a_controller_kill() {
    use floyd::engine::{Phase, RolloutState, next_rollout};
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples-repo");
    let release = floyd::manifest::load_release(&repo, None).expect("examples-repo loads");
    let web = release.service("web").expect("web service").clone();
    let mut spec = web.spec.clone();
    // The example's port may be in use by another test run: same spec, free port.
    let lb = free_port();
    spec.ports[0].port = lb;
    let svc = web.name.clone();
    let r1 = web.revision.clone();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{lb}/");

    let rt = runtime(dir.path()).await;
    let now = floyd::time::Time::now_wall();
    let state = drive(
        &rt,
        &svc,
        &spec,
        RolloutState::start(r1.clone(), None, now),
        60,
        |_| false,
    )
    .await;
    assert_eq!(state.phase, Phase::Complete, "{}", state.reason);
    assert_eq!(version_at(&url).await.as_deref(), Some("1.4.2"));

    // A new version under load: zero failed requests.
    let mut spec2 = spec.clone();
    spec2.template.command[3] = "1.4.3".into();
    let r2 = floyd::manifest::revision_of(&spec2.template);
    assert_ne!(r1, r2);
    let load = Load::start(url.clone(), 6, 50_000);
    let state = next_rollout(Some(&state), r2.clone(), floyd::time::Time::now_wall());
    // Mid-rollout: the first new instance is ready.
    let state = drive(&rt, &svc, &spec2, state, 60, |o| {
        o.revision(&r2).is_some_and(|r| r.ready() >= 1)
    })
    .await;
    assert_eq!(state.phase, Phase::Progressing);
    let (done, failed, errors, _) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(done > 20);
    let pids_before = {
        let mut p = rt.pids();
        p.sort();
        p
    };
    drop(rt); // as if the controller were killed

    let rt = runtime(dir.path()).await;
    let mut pids = rt.pids();
    pids.sort();
    assert_eq!(pids, pids_before, "adopted, not restarted");
    wait_for(&rt, &svc, 10, "adopted LB serving", |o| {
        o.revision(&r1).is_some_and(|r| r.ready() >= 2)
    })
    .await;
    let load = Load::start(url.clone(), 6, 50_000);
    let state = drive(&rt, &svc, &spec2, state, 90, |_| false).await;
    assert_eq!(state.phase, Phase::Complete, "{}", state.reason);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done, failed, errors, versions) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(done > 50 && versions.contains_key("1.4.3"), "{versions:?}");
    assert_eq!(version_at(&url).await.as_deref(), Some("1.4.3"));
    let o = observe(&rt, &svc).await;
    assert_eq!(o.revision(&r2).unwrap().ready(), 3);
    assert_eq!(o.revision(&r1).map(|r| r.instances.len()).unwrap_or(0), 0);
    let mut procs = instance_processes(dir.path());
    procs.sort();
    let mut pids = rt.pids();
    pids.sort();
    assert_eq!(procs, pids, "no orphans");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_service_rolled_by_the_real_engine_with_no_spare_gpu_completes_within_4_gpus() {
    use floyd::engine::{Phase, RolloutState, next_rollout};
    use floyd::manifest::{IntOrPercent, RollingUpdateParams, Strategy};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.gpus = floyd::runtime::local::parse_gpus_flag("NVIDIA-A100-SXM4-80GB:4").unwrap();
    let rt = floyd::runtime::local::LocalRuntime::start(cfg)
        .await
        .unwrap();
    let mk = |v: &str| {
        let mut t = sample(&["--version", v]);
        t.resources.gpu = Some(floyd::manifest::GpuRequest {
            count: 1,
            product: Some("NVIDIA-A100-SXM4-80GB".into()),
            memory_mib: None,
            sharing: floyd::manifest::GpuSharing::Exclusive,
            allow_in_place: true,
        });
        t
    };
    let svc = name("inference");
    let lb = free_port();
    let mut spec = web_spec(4, mk("a"), lb);
    spec.strategy = Strategy::RollingUpdate {
        rolling_update: RollingUpdateParams {
            max_surge: IntOrPercent::Int(1),
            max_unavailable: IntOrPercent::Int(0),
        },
    };
    let r1 = floyd::manifest::revision_of(&spec.template);
    let st = drive(
        &rt,
        &svc,
        &spec,
        RolloutState::start(r1, None, floyd::time::Time::now_wall()),
        60,
        |_| false,
    )
    .await;
    assert_eq!(st.phase, Phase::Complete, "{}", st.reason);
    let mut spec2 = spec.clone();
    spec2.template = mk("b");
    let r2 = floyd::manifest::revision_of(&spec2.template);
    let st = next_rollout(Some(&st), r2.clone(), floyd::time::Time::now_wall());
    // Never more than 4 units held, checked at every step of the engine.
    let max_held = std::sync::atomic::AtomicU32::new(0);
    let st = drive(&rt, &svc, &spec2, st, 120, |o| {
        let held: u32 = o
            .revisions
            .iter()
            .flat_map(|r| &r.instances)
            .map(|i| i.gpus.len() as u32)
            .sum();
        max_held.fetch_max(held, std::sync::atomic::Ordering::Relaxed);
        assert!(
            o.gpu
                .as_ref()
                .is_some_and(|g| g.held_by_service <= 4 && g.exist == 4)
        );
        false
    })
    .await;
    assert_eq!(st.phase, Phase::Complete, "{}", st.reason);
    assert!(max_held.load(std::sync::atomic::Ordering::Relaxed) <= 4);
    let o = observe(&rt, &svc).await;
    assert_eq!(o.revision(&r2).unwrap().ready(), 4);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_probe_gates_readiness_and_its_failure_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // Slow start: the startup probe holds readiness back until the port opens.
    let slow = name("slowstart");
    let t = sample(&["--startup-delay", "1.2"]);
    let mut spec = web_spec(1, t.clone(), free_port());
    let mut sp = http_probe("/healthz");
    sp.failure_threshold = 10;
    spec.health.startup = Some(sp);
    rt.apply(&slow, &spec, &create("s1", &t, 1)).await.unwrap();
    let o = wait_for(&rt, &slow, 10, "startup probe reason", |o| {
        o.revisions[0]
            .instances
            .first()
            .and_then(|i| i.reason.clone())
            .is_some_and(|r| r.starts_with("startup probe"))
    })
    .await;
    assert_eq!(ready(&o, "s1"), 0);
    let o = wait_for(&rt, &slow, 15, "ready after startup", |o| {
        ready(o, "s1") == 1
    })
    .await;
    assert_eq!(o.revisions[0].instances[0].restarts, 0);

    // Never starts within the threshold: restarted, with the reason.
    let never = name("neverstarts");
    let t = sample(&["--startup-delay", "30"]);
    let mut spec = web_spec(1, t.clone(), free_port());
    let mut sp = http_probe("/healthz");
    sp.failure_threshold = 2;
    spec.health.startup = Some(sp);
    rt.apply(&never, &spec, &create("n1", &t, 1)).await.unwrap();
    let o = wait_for(&rt, &never, 15, "restart after startup failures", |o| {
        o.revisions[0]
            .instances
            .first()
            .is_some_and(|i| i.restarts >= 1)
    })
    .await;
    let reason = o.revisions[0].instances[0]
        .reason
        .clone()
        .unwrap_or_default();
    assert!(reason.contains("startup probe"), "{reason}");
    rt.shutdown().await;
}

/// The load balancers run on threads of their own: a controller runtime that
/// is busy (here: its only thread blocked) does not hold up proxying.
#[tokio::test(flavor = "current_thread")]
async fn the_lb_serves_while_the_controller_runtime_is_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.lb_threads = 1;
    let (rt, lb) = one_ready_web(cfg).await;
    let (started, blocked_for) = (std::time::Instant::now(), Duration::from_millis(1500));
    let client = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut answers = Vec::new();
        for _ in 0..20 {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", lb)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let ok = out.starts_with("HTTP/1.1 200");
            answers.push((out, started.elapsed()));
            if !ok {
                break;
            }
        }
        answers
    });
    // Blocks the only thread of the runtime the controller (this test) runs on.
    std::thread::sleep(blocked_for);
    let answers = client.join().unwrap();
    assert_eq!(answers.len(), 20, "{answers:?}");
    for (out, at) in &answers {
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("\"version\":\"v1\""), "{out}");
        assert!(
            *at < blocked_for,
            "answered after {at:?}, once the controller's runtime was free again"
        );
    }
    rt.shutdown().await;
    assert!(instance_processes(dir.path()).is_empty());
}

/// `--lb-threads` and `--lb-policy` are checked before anything starts.
#[test]
fn bad_load_balancer_flags_are_usage_errors_naming_the_flag() {
    for (flags, want) in [
        (&["--lb-threads", "0"][..], "--lb-threads"),
        (&["--lb-threads", "many"][..], "--lb-threads"),
        (&["--lb-policy", "fastest"][..], "--lb-policy"),
        (&["--lb-bind", "localhost:80"][..], "--lb-bind"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(FLOYD)
            .args(["run", "--repo", "/nonexistent/repo", "--state-dir"])
            .arg(dir.path())
            .args(flags)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(want), "{flags:?}: {err}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{flags:?}: nothing is created before the flags are checked"
        );
    }
}

/// The load balancers listen on the configured address only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lb_listens_on_the_configured_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Also loopback on Linux (all of 127/8), but not 127.0.0.1.
    cfg.bind = "127.0.0.2".parse().unwrap();
    let (rt, lb) = one_ready_web(cfg).await;
    let (st, body) = get(&format!("http://127.0.0.2:{lb}/")).await.unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", lb)).is_err(),
        "nothing listens on 127.0.0.1:{lb}"
    );
    rt.shutdown().await;
}

/// Two services on one port (or another process holding it): the second
/// load balancer could not bind, one WARN line, and the service showed
/// Complete (issue #20). Now the runtime reports it through
/// `Observed::problems` until the port is free, and retries by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_is_reported_until_it_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("clash");
    let port = free_port();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let t = sample(&[]);
    let spec = web_spec(1, t.clone(), port);
    let err = rt
        .apply(&svc, &spec, &create("c1", &t, 1))
        .await
        .expect_err("the bind failure is an apply error too");
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    wait_for(&rt, &svc, 20, "ready", |o| ready(o, "c1") == 1).await;
    let o = observe(&rt, &svc).await;
    assert_eq!(o.problems.len(), 1, "{:?}", o.problems);
    assert!(
        o.problems[0].contains(&format!("load balancer cannot listen on 127.0.0.1:{port}")),
        "{:?}",
        o.problems
    );
    // What the controller shows: never Complete while the port is not served.
    let (phase, reason) = floyd::runtime::with_runtime_problems(
        floyd::engine::Phase::Complete,
        "1 of 1 instances available".into(),
        &o,
    );
    assert_eq!(phase, floyd::engine::Phase::Degraded);
    assert!(reason.contains("cannot listen on"), "{reason}");
    // The port comes free: the runtime binds it by itself and serves.
    drop(squatter);
    wait_for(&rt, &svc, 20, "problem cleared", |o| o.problems.is_empty()).await;
    let (st, _) = get(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    assert_eq!(st, 200);
    rt.shutdown().await;
}

/// `floyd logs` shows when each line was written (to about a second, from
/// the runtime's notes) and `--since` keeps the lines written since then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floyd_logs_timestamps_and_since() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("stamped");
    let lb = free_port();
    let t = sample(&["--log-requests"]);
    rt.apply(&svc, &web_spec(1, t.clone(), lb), &create("s1", &t, 1))
        .await
        .unwrap();
    wait_for(&rt, &svc, 20, "ready", |o| ready(o, "s1") == 1).await;
    let c = client();
    let before = std::time::SystemTime::now();
    c.get(format!("http://127.0.0.1:{lb}/"))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cutoff = before + Duration::from_millis(2500);
    for _ in 0..2 {
        c.get(format!("http://127.0.0.1:{lb}/"))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = std::time::SystemTime::now();
    let logs = |extra: &[String]| {
        let out = std::process::Command::new(FLOYD)
            .args(["logs", "stamped", "--state-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = logs(&[]);
    let stamps: Vec<std::time::SystemTime> = all
        .lines()
        .filter(|l| l.contains("GET / -> 200"))
        .map(|l| {
            let (t, _) = l.split_once(' ').unwrap();
            humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .collect();
    assert_eq!(stamps.len(), 3, "{all}");
    let (first, second) = (stamps[0], stamps[2]);
    // Whole seconds, so allow one either side.
    let sec = Duration::from_secs(1);
    assert!(first + sec >= before && first <= cutoff, "{all}");
    assert!(second + sec >= cutoff && second <= after + sec, "{all}");
    let since = logs(&[
        "--since".into(),
        humantime::format_rfc3339_millis(cutoff).to_string(),
    ]);
    assert_eq!(since.matches("GET / -> 200").count(), 2, "{since}");
    let plain = logs(&["--no-timestamps".into()]);
    assert!(plain.lines().all(|l| l.starts_with('[')), "{plain}");
    rt.shutdown().await;
}

/// Issue #14: after a reboot a recorded pid (or process group id) can belong
/// to any program. Adoption signals only processes carrying this state
/// directory's marker: a foreign process under a recorded pid (even with
/// the recorded start time) or a foreign group under a dead instance's
/// group id is forgotten, never killed, and the instances are replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_never_signals_a_foreign_process_reusing_a_recorded_pid() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let svc = name("reuse");
    let t = sample(&[]);
    let spec = web_spec(2, t.clone(), free_port());
    let old = {
        let rt = runtime(dir.path()).await;
        rt.apply(&svc, &spec, &create("r1", &t, 2)).await.unwrap();
        wait_for(&rt, &svc, 20, "ready", |o| ready(o, "r1") == 2).await;
        rt.pids()
        // Dropped without shutdown: like kill -9 of the controller.
    };
    for p in &old {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for _ in 0..200 {
        if old.iter().all(|p| !pid_alive(*p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two foreign programs, each leading its own process group.
    let mut foreign: Vec<std::process::Child> = (0..2)
        .map(|_| {
            std::process::Command::new("sleep")
                .arg("120")
                .process_group(0)
                .spawn()
                .unwrap()
        })
        .collect();
    let fpids: Vec<i32> = foreign.iter().map(|c| c.id() as i32).collect();
    // The state now records them as the instances: the first with its real
    // start time (alive, but without the marker), the second with a stale
    // one (a dead instance whose group id is now a foreign group's).
    let file = dir.path().join("local/state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let instances = state["services"]["reuse"]["instances"]
        .as_object_mut()
        .unwrap();
    assert_eq!(instances.len(), 2);
    for (i, inst) in instances.values_mut().enumerate() {
        inst["pid"] = fpids[i].into();
        if i == 0 {
            let (_, start, _) = floyd::runtime::local::process::proc_stat(fpids[0]).unwrap();
            inst["start_time"] = start.into();
        }
    }
    std::fs::write(&file, serde_json::to_vec(&state).unwrap()).unwrap();

    let rt = runtime(dir.path()).await;
    wait_for(&rt, &svc, 20, "replacements ready", |o| ready(o, "r1") == 2).await;
    for (c, p) in foreign.iter_mut().zip(&fpids) {
        assert!(
            c.try_wait().unwrap().is_none() && pid_alive(*p),
            "foreign process {p} still runs"
        );
        assert!(!rt.pids().contains(p), "{p} is not adopted");
    }
    rt.shutdown().await;
    for c in &mut foreign {
        assert!(c.try_wait().unwrap().is_none(), "shutdown leaves it alone");
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The dataplane process (`floyd dataplane`): traffic continues while no
/// controller runs; the next controller adopts the same process (no
/// restart, no dropped request); a dataplane killed with -9 is started
/// again and serves again; shutdown stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dataplane_process_outlives_the_controller_and_is_restarted_when_it_dies() {
    use floyd::runtime::local::{DataplaneMode, LocalRuntime};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dataplane = DataplaneMode::Process;
    let (rt, lb) = one_ready_web(cfg.clone()).await;
    let svc = name("web");
    let dp = rt.dataplane_pid().expect("a dataplane process");
    assert_ne!(dp, std::process::id() as i32);
    let url = format!("http://127.0.0.1:{lb}/");
    let load = Load::start(url.clone(), 4, 1_000_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Like kill -9 of the controller: nothing runs the runtime for a while.
    drop(rt);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(pid_alive(dp), "the dataplane outlives the controller");
    let rt = LocalRuntime::start(cfg.clone()).await.unwrap();
    assert_eq!(rt.dataplane_pid(), Some(dp), "adopted, not restarted");
    assert_eq!(rt.lb_ports(&svc), vec![lb]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done, failed, errors, _) = load.finish().await;
    assert_eq!(
        failed, 0,
        "no request lost across the controller's absence: {errors:?}"
    );
    assert!(done > 50, "{done}");
    // Traffic counters live in the dataplane: they kept counting.
    let o = observe(&rt, &svc).await;
    let counted: u64 = o.traffic.iter().map(|t| t.requests).sum();
    assert!(counted >= done, "{counted} counted, {done} done");

    // kill -9 of the dataplane: started again, listening again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dp),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut back = None;
    while started.elapsed() < Duration::from_secs(10) {
        if let Some(p) = rt.dataplane_pid()
            && p != dp
            && get(&url).await.is_ok_and(|(code, _)| code == 200)
        {
            back = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = back.expect("a new dataplane serves within 10 s");
    eprintln!(
        "dataplane killed: serving again after {:?}",
        started.elapsed()
    );
    rt.shutdown().await;
    assert!(!pid_alive(new), "shutdown stops the dataplane");
    assert!(instance_processes(dir.path()).is_empty());
}

/// A running dataplane started with other load balancer settings is
/// replaced by the next controller (stopped, a new one started), not adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataplane_with_other_settings_is_replaced_not_adopted() {
    use floyd::runtime::local::{DataplaneMode, LbPolicy, LocalRuntime};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dataplane = DataplaneMode::Process;
    let (rt, lb) = one_ready_web(cfg.clone()).await;
    let old = rt.dataplane_pid().unwrap();
    drop(rt);
    cfg.lb_policy = LbPolicy::LeastConnections;
    let rt = LocalRuntime::start(cfg).await.unwrap();
    let new = rt.dataplane_pid().unwrap();
    assert_ne!(new, old, "replaced");
    assert!(!pid_alive(old), "the old dataplane was stopped");
    let svc = name("web");
    wait_for(&rt, &svc, 10, "ready again", |o| {
        ready(o, "aaaaaaaaaa") == 1
    })
    .await;
    let url = format!("http://127.0.0.1:{lb}/");
    assert_eq!(get(&url).await.map(|r| r.0), Ok(200), "the new one serves");
    rt.shutdown().await;
    assert!(!pid_alive(new));
}

/// Every file under `dir`, read as text (lossy).
fn all_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

/// `env: { DB_PASSWORD: { valueFrom: { file: ... } } }`: the instance gets
/// the file's contents; the runtime's state, the instance logs, what is
/// observed and the revision hold only the reference. A file that cannot be
/// read keeps the instance from starting, with a reason naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_from_a_file_reaches_the_instance_and_nothing_else() {
    use floyd::manifest::{EnvSource, revision_of};
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-1f9a7c";
    let file = secrets.path().join("db-password");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let rt = runtime(dir.path()).await;
    let svc = name("db");
    let mut t = sample(&["--version", "v1", "--log-requests"]);
    t.env_from.insert(
        "DB_PASSWORD".into(),
        EnvSource::File(file.display().to_string()),
    );
    t.env_from
        .insert("FROM_ENV".into(), EnvSource::Env("PATH".into()));
    let spec = web_spec(1, t.clone(), free_port());
    rt.apply(&svc, &spec, &create("s1", &t, 1)).await.unwrap();
    let o = wait_for(&rt, &svc, 20, "1 ready", |o| ready(o, "s1") == 1).await;

    let pid = rt.pids()[0];
    let environ =
        String::from_utf8(std::fs::read(format!("/proc/{pid}/environ")).unwrap()).unwrap();
    let vars: Vec<&str> = environ.split('\0').collect();
    assert!(
        vars.contains(&format!("DB_PASSWORD={secret}").as_str()),
        "trailing newline removed"
    );
    let path = std::env::var("PATH").unwrap();
    assert!(vars.contains(&format!("FROM_ENV={path}").as_str()));

    // Only the reference anywhere Floyd writes or reports.
    let text = serde_json::to_string(&t).unwrap();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(!text.contains(secret));
    assert_ne!(revision_of(&t), {
        let mut plain = t.clone();
        plain.env_from.clear();
        revision_of(&plain)
    });
    assert!(!format!("{o:?}").contains(secret));
    rt.shutdown().await;
    let written = all_text(dir.path());
    assert!(!written.is_empty());
    assert!(!written.contains(secret), "the state dir holds the secret");

    // A missing file: no process, a reason that names the file.
    let dir2 = tempfile::tempdir().unwrap();
    let rt = runtime(dir2.path()).await;
    let mut bad = sample(&["--version", "v1"]);
    bad.env_from.insert(
        "DB_PASSWORD".into(),
        EnvSource::File(secrets.path().join("missing").display().to_string()),
    );
    let spec = web_spec(1, bad.clone(), free_port());
    rt.apply(&svc, &spec, &create("s2", &bad, 1)).await.unwrap();
    let o = wait_for(&rt, &svc, 20, "a reason", |o| {
        o.revisions[0]
            .instances
            .first()
            .and_then(|i| i.reason.as_deref())
            .is_some_and(|r| r.contains("valueFrom file"))
    })
    .await;
    let reason = o.revisions[0].instances[0].reason.clone().unwrap();
    assert!(
        reason.contains("env DB_PASSWORD: cannot read valueFrom file"),
        "{reason}"
    );
    assert!(rt.pids().is_empty());
    rt.shutdown().await;
}

fn git_in(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stepping_yaml(version: &str, port: u16) -> String {
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: web
spec:
  replicas: 3
  template:
    command: [\"${{FLOYD_BIN}}\", \"sample-app\", \"--version\", \"{version}\"]
    terminationGracePeriodSeconds: 2
  ports:
    - {{ name: http, port: {port} }}
  health:
    readiness: {{ http: {{ path: /healthz, port: http }}, periodSeconds: 1, failureThreshold: 1 }}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{ maxSurge: 1, maxUnavailable: 0 }}
"
    )
}

/// The real controller on the local runtime, with its re-observation timer
/// (and the drift resync) at 60 s: a rolling update of 3 instances that
/// waits for readiness 3 times (surge 1, unavailable 0) can only finish in
/// seconds if each step follows the prober's readiness event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_steps_on_readiness_events_not_on_its_timer() {
    use floyd::controller::{Config as CtlConfig, Controller};
    use floyd::engine::Phase;
    use floyd::hub::{FetchTrigger, Hub};
    use floyd::source::{Credentials, GitSource, SourceConfig};
    use floyd::store::Store;
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote.git");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&remote).unwrap();
    git_in(&remote, &["init", "--bare", "-q", "-b", "main"]);
    git_in(
        tmp.path(),
        &["clone", "-q", remote.to_str().unwrap(), "work"],
    );
    std::fs::create_dir_all(work.join("services")).unwrap();
    let port = free_port();
    std::fs::write(work.join("services/web.yaml"), stepping_yaml("v1", port)).unwrap();
    git_in(&work, &["add", "-A"]);
    git_in(&work, &["commit", "-q", "-m", "web v1"]);
    git_in(&work, &["push", "-q", "origin", "HEAD:main"]);

    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let runtime = Arc::new(
        floyd::runtime::local::LocalRuntime::start(config(&state))
            .await
            .unwrap(),
    );
    assert!(
        runtime.changes().is_some(),
        "the local runtime reports changes"
    );
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
    let mut cfg = CtlConfig::new();
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.resync_interval = Duration::from_secs(60);
    cfg.rollout_poll = Some(Duration::from_secs(60));
    let stop = tokio_util::sync::CancellationToken::new();
    let ctl = Controller::new(hub.clone(), runtime.clone(), src, store, cfg);
    let controller = {
        let stop = stop.clone();
        tokio::spawn(async move { ctl.run(async move { stop.cancelled().await }).await })
    };
    let wait_complete = |target: Option<String>| {
        let hub = hub.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(v) = hub.service("web")
                    && v.phase == Phase::Complete
                    && target
                        .as_ref()
                        .is_none_or(|t| v.target_revision.as_ref().map(|r| r.as_str()) != Some(t))
                {
                    return (std::time::Instant::now(), v);
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "not Complete in 30 s: {:?}",
                    hub.service("web").map(|v| (v.phase, v.reason))
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (_, v1) = wait_complete(None).await;
    let rev1 = v1.target_revision.clone().unwrap().as_str().to_string();

    std::fs::write(work.join("services/web.yaml"), stepping_yaml("v2", port)).unwrap();
    git_in(&work, &["commit", "-q", "-am", "web v2"]);
    git_in(&work, &["push", "-q", "origin", "HEAD:main"]);
    let started = std::time::Instant::now();
    hub.trigger_fetch(FetchTrigger {
        source: "test".into(),
        after: None,
    });
    let (done, v2) = wait_complete(Some(rev1.clone())).await;
    let took = done - started;
    assert_ne!(v2.target_revision.as_ref().unwrap().as_str(), rev1);
    // Three readiness waits of at most one probe period each, plus process
    // start-up and the old instances' exits; a timer-driven step would need
    // 3 × 60 s.
    assert!(
        took < Duration::from_secs(15),
        "rollout took {took:?} with a 60 s timer"
    );
    assert_eq!(
        version_at(&format!("http://127.0.0.1:{port}/"))
            .await
            .as_deref(),
        Some("v2")
    );
    stop.cancel();
    controller.await.unwrap().unwrap();
    runtime.shutdown().await;
}
