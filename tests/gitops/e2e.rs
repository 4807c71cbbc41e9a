//! The controller end to end: a real Git server, the real manifest loader
//! and engine, and a wall-clock in-memory runtime ([`super::fake`]).

pub use super::harness::{Harness, Opts, service_yaml};
use floyd::engine::Phase;
use floyd::hub::{Event, FetchTrigger, Hub};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_commit_completes_then_broken_commit_is_rolled_back_and_reverted() {
    let h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    let v1 = h.wait_complete_at("web", &c0).await;
    h.wait_complete_at("api", &c0).await;
    assert!(h.hub.is_ready());
    let r1 = v1.target_revision.clone().unwrap();

    let good = h.push_web("v2", false, "web: v2");
    let v2 = h.wait_complete_at("web", &good).await;
    let r2 = v2.target_revision.clone().unwrap();
    assert_ne!(r1, r2, "a template change is a new revision");
    assert_eq!(h.runtime.summary("web"), vec![(r2.to_string(), 2, 2)]);

    let mut events = h.hub.subscribe();
    let bad = h.push_web("v3", true, "web: v3 (never ready)");
    // Rolled back, reverted, and converged on the revert commit.
    let converged = h
        .wait_complete_beyond(
            "Complete on the revert commit",
            "web",
            &[&bad, &good],
            Duration::from_secs(40),
        )
        .await;
    assert_eq!(
        converged.target_revision.as_ref(),
        Some(&r2),
        "back on the last good revision"
    );
    let revert = converged.commit.clone().unwrap();
    assert_eq!(
        h.server.tip(),
        revert.sha,
        "the revert is on the remote branch"
    );
    let msg = h.server.message(&revert.sha);
    assert!(
        msg.starts_with("Revert \"web: v3 (never ready)\"\n\nThis reverts commit "),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("This reverts commit {bad}.\n")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "\nFloyd-Revert-Of: {bad}\nFloyd-Service: web\nFloyd-Reason: "
        )),
        "{msg}"
    );
    assert!(
        msg.contains("Floyd rolled back web from revision ")
            && msg.contains(&format!(" to {r2}: ")),
        "{msg}"
    );
    assert_eq!(
        h.server.show(&format!("{}:services/web.yaml", revert.sha)) + "\n",
        service_yaml("web", "v2", false)
    );
    assert_eq!(h.runtime.summary("web"), vec![(r2.to_string(), 2, 2)]);

    // History: the failed rollout names the revert; a rollback was recorded.
    let hist = h.hub.history("web");
    assert!(
        hist.iter().any(|e| e.result == Phase::Failed
            && e.commit.as_ref().is_some_and(|c| c.sha == bad)
            && e.revert_commit.as_deref() == Some(revert.sha.as_str())),
        "{hist:#?}"
    );
    assert!(
        hist.iter().any(|e| e.rollback && e.to_revision == r2),
        "{hist:#?}"
    );
    // The event stream saw the revert.
    let mut saw_revert = false;
    while let Ok(ev) = events.try_recv() {
        if let Event::Revert {
            ok: true,
            commit: Some(c),
            ..
        } = &*ev
        {
            saw_revert |= *c == revert.sha;
        }
    }
    assert!(saw_revert, "a revert event was emitted");
    // api was never touched.
    let api = h.hub.service("api").unwrap();
    assert_eq!(api.phase, Phase::Complete);
    assert_eq!(api.commit.unwrap().sha, c0);
    let metrics = h.hub.metrics.encode();
    assert!(
        metrics.contains("floyd_revert_commits_total{result=\"pushed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_service_changed_again_during_revert_is_degraded_not_reverted() {
    let h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    let mut events = h.hub.subscribe();
    let _bad = h.push_web("v2", true, "web: v2 (never ready)");
    // A person's fix of web lands just before Floyd pushes its revert.
    h.work
        .write("services/web.yaml", &service_yaml("web", "v2-fixed", false));
    let fix = h.work.commit("web: my own fix");
    h.work.push_to("racer");
    h.server.race_once_with("racer");
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        match tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .map(|r| r.map(std::sync::Arc::unwrap_or_clone))
        {
            Ok(Ok(Event::Revert {
                ok: false,
                message,
                service,
                ..
            })) if service == "web" => {
                break message;
            }
            Ok(Ok(Event::Revert {
                ok: true, commit, ..
            })) => {
                panic!("reverted over a person's fix: {commit:?}")
            }
            Ok(_) => continue,
            Err(_) => panic!("no revert decision within 30 s"),
        }
    };
    assert!(message.contains("changed again"), "{message}");
    assert!(message.contains(&fix), "{message}");
    // Floyd then follows Git: the person's fix rolls out.
    h.wait_complete_at("web", &fix).await;
    assert!(
        h.server.log().iter().all(|l| !l.contains("Revert")),
        "{:?}",
        h.server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_revert_commit_is_not_reverted_again() {
    let h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    // A commit that looks like Floyd's revert but breaks web.
    h.work
        .write("services/web.yaml", &service_yaml("web", "v9", true));
    let c = h.work.commit(
        "Revert \"something\"\n\nThis reverts commit 1111111111111111111111111111111111111111.\n\nFloyd-Revert-Of: 1111111111111111111111111111111111111111\nFloyd-Service: web\nFloyd-Reason: test\n",
    );
    h.work.push();
    let v = h
        .wait_view("Degraded", "web", Duration::from_secs(30), |v| {
            v.phase == Phase::Degraded
        })
        .await;
    assert!(v.reason.contains("not reverting again"), "{}", v.reason);
    assert_eq!(h.server.tip(), c, "nothing pushed");
}

/// A runtime problem (the local runtime: a load balancer port that cannot
/// be bound) makes a Complete service Degraded with the reason, in the
/// view the API, `floyd status` and the dashboard show and in
/// `floyd_rollout_phase`; it is Complete again once the problem is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_problem_makes_a_complete_service_degraded_until_it_clears() {
    let h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    let why = "load balancer cannot listen on 127.0.0.1:18080: Address in use (os error 98)";
    h.runtime
        .problems
        .lock()
        .unwrap()
        .insert("web".into(), vec![why.into()]);
    let v = h
        .wait_view("Degraded", "web", Duration::from_secs(30), |v| {
            v.phase == Phase::Degraded
        })
        .await;
    assert_eq!(v.reason, why);
    let metrics = h.hub.metrics.encode();
    assert!(
        metrics.contains("floyd_rollout_phase{service=\"web\",phase=\"Degraded\"} 1"),
        "{metrics}"
    );
    assert_eq!(h.hub.service("api").map(|v| v.phase), Some(Phase::Complete));
    h.runtime.problems.lock().unwrap().clear();
    h.wait_view("Complete again", "web", Duration::from_secs(30), |v| {
        v.phase == Phase::Complete
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_revert_flag_rolls_back_only() {
    let h = Harness::new(Opts {
        no_revert: true,
        ..Opts::default()
    })
    .await;
    let c0 = h.server.tip();
    let v1 = h.wait_complete_at("web", &c0).await;
    let bad = h.push_web("v2", true, "web: v2 (never ready)");
    let v = h
        .wait_view("RolledBack", "web", Duration::from_secs(30), |v| {
            v.phase == Phase::RolledBack
        })
        .await;
    assert_eq!(v.target_revision, v1.target_revision);
    assert_eq!(h.server.tip(), bad, "--no-revert pushes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_trigger_fetches_without_waiting_for_the_poll() {
    let h = Harness::new(Opts {
        poll: Duration::from_secs(3600),
        ..Opts::default()
    })
    .await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    let c1 = h.push_web("v2", false, "web: v2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.hub.service("web").unwrap().commit.unwrap().sha,
        c0,
        "an hour-long poll has not seen it yet"
    );
    h.hub.trigger_fetch(FetchTrigger {
        source: "github".into(),
        after: Some(c1.clone()),
    });
    h.wait_complete_at("web", &c1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_server_down_keeps_serving_and_recovers() {
    let mut h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    h.server.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.hub.git_reachable() {
        assert!(Instant::now() < deadline, "git_reachable never went false");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        h.hub.is_ready(),
        "still ready: it serves the last synced commit"
    );
    assert_eq!(h.hub.service("web").unwrap().phase, Phase::Complete);
    h.server.start();
    let c1 = h.push_web("v2", false, "web: v2");
    h.wait_complete_at("web", &c1).await;
    assert!(h.hub.git_reachable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_and_prune_deletes_removed_services() {
    let mut h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    h.wait_complete_at("api", &c0).await;
    let history_before = h.hub.history("web").len();
    h.stop().await;
    h.start(Opts::default());
    let v = h.wait_complete_at("web", &c0).await;
    assert_eq!(v.phase, Phase::Complete);
    assert_eq!(
        h.hub.history("web").len(),
        history_before,
        "a restarted controller resumes; it does not roll out again"
    );
    h.work.remove("services/api.yaml");
    h.work.commit("remove api");
    h.work.push();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.runtime.summary("api").is_empty() || h.hub.service("api").is_some() {
        assert!(Instant::now() < deadline, "api was not pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A controller whose local store is gone (a new pod, a failed-over standby)
/// resumes from the state it mirrored into the runtime (kube: ConfigMaps)
/// instead of rolling every service out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_resumes_from_the_runtime_state() {
    let mut h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    let v0 = h.wait_complete_at("web", &c0).await;
    h.wait_complete_at("api", &c0).await;
    h.stop().await;
    let rev0 = v0.target_revision.clone().unwrap().to_string();
    assert!(
        h.runtime
            .commits
            .lock()
            .unwrap()
            .iter()
            .any(|(s, r, c)| s == "web" && *r == rev0 && *c == c0),
        "the runtime is told which commit each revision comes from"
    );
    assert!(
        h.runtime
            .states
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.as_str() == "web"),
        "the controller mirrors its rollout state into the runtime"
    );
    // Lose the local store and mirror, keep the runtime.
    h.state = tempfile::tempdir().unwrap();
    h.start(Opts::default());
    let v = h.wait_complete_at("web", &c0).await;
    assert_eq!(v.phase, Phase::Complete);
    assert!(
        h.hub.history("web").is_empty(),
        "resumed from the runtime: no new rollout, got {:?}",
        h.hub.history("web")
    );
    // The last good commit came back too: a broken change is reverted to it.
    let bad = h.push_web("v2", true, "web: v2 (never ready)");
    h.wait_view(
        "RolledBack or reverted",
        "web",
        Duration::from_secs(30),
        |v| {
            v.phase == Phase::Complete
                && v.commit
                    .as_ref()
                    .is_some_and(|c| c.sha != bad && c.sha != c0)
        },
    )
    .await;
    let msg = h.server.message(&h.server.tip());
    assert!(msg.contains(&format!("Floyd-Revert-Of: {bad}")), "{msg}");
    // Phase changes reach the runtime's event stream (kube: Kubernetes Events).
    let events = h.runtime.events.lock().unwrap().clone();
    for phase in ["Progressing", "Failed"] {
        assert!(
            events.iter().any(|(s, r, _)| s == "web" && r == phase),
            "no {phase} event for web in {events:?}"
        );
    }
}

fn fetches(hub: &Hub) -> u64 {
    // Sum of floyd_git_fetch_total over its results.
    hub.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("floyd_git_fetch_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_through_the_server_fetch_once_per_delivery_and_readyz_tracks_git() {
    use floyd::source::webhook::sign;
    const SECRET: &str = "It's a Secret to Everybody";
    let mut h = Harness::new(Opts {
        poll: Duration::from_secs(3600),
        ..Opts::default()
    })
    .await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let cfg = floyd::server::Config {
        webhook_secret: Some(floyd::server::Secret::new(SECRET)),
        branch: "main".into(),
        api_token: None,
        max_body_bytes: 64 * 1024,
        allowed_origins: Vec::new(),
    };
    let s2 = stop.clone();
    let hub = h.hub.clone();
    tokio::spawn(async move {
        floyd::server::serve(listener, hub, cfg, async move { s2.cancelled().await })
            .await
            .unwrap()
    });
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>, sig: Option<String>, delivery: &str| {
        let mut r = http
            .post(format!("{base}/hooks/github"))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery);
        if let Some(s) = sig {
            r = r.header("x-hub-signature-256", s);
        }
        r.body(body).send()
    };

    let c1 = h.push_web("v2", false, "web: v2");
    let body =
        serde_json::to_vec(&serde_json::json!({"ref": "refs/heads/main", "after": c1})).unwrap();
    let good = sign(SECRET.as_bytes(), &body);
    let before = fetches(&h.hub);
    for (what, sig) in [
        ("wrong", Some(sign(b"not the secret", &body))),
        ("truncated", Some(good[..good.len() - 4].to_string())),
        ("missing", None),
    ] {
        let r = post(body.clone(), sig, what).await.unwrap();
        assert_eq!(r.status(), 401, "{what} signature");
    }
    let huge = vec![b' '; 65 * 1024];
    let r = post(huge.clone(), Some(sign(SECRET.as_bytes(), &huge)), "huge")
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let other =
        serde_json::to_vec(&serde_json::json!({"ref": "refs/heads/dev", "after": c1})).unwrap();
    let r = post(
        other.clone(),
        Some(sign(SECRET.as_bytes(), &other)),
        "dev-1",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fetches(&h.hub),
        before,
        "refused and other-branch webhooks fetch nothing"
    );

    let r = post(body.clone(), Some(good.clone()), "delivery-1")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    h.wait_complete_at("web", &c1).await;
    let r = post(body.clone(), Some(good.clone()), "delivery-1")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["result"], "duplicate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fetches(&h.hub), before + 1, "one fetch for one delivery");

    // Git down: still ready, git_reachable false; back: true again.
    let readyz = |base: String| async move {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    h.server.stop();
    let r = post(body.clone(), Some(good.clone()), "delivery-2")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = readyz(base.clone()).await;
        assert_eq!(code, 200, "unreachable Git does not make Floyd unready");
        if v["gitReachable"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never reported Git unreachable: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.server.start();
    let c2 = h.push_web("v3", false, "web: v3");
    let body =
        serde_json::to_vec(&serde_json::json!({"ref": "refs/heads/main", "after": c2})).unwrap();
    let r = post(
        body.clone(),
        Some(sign(SECRET.as_bytes(), &body)),
        "delivery-3",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    h.wait_complete_at("web", &c2).await;
    assert_eq!(readyz(base.clone()).await.1["gitReachable"], true);
    stop.cancel();
}

/// `floyd.yaml` `notifications` are followed from the commit that adds them:
/// a generic target receives the rollout's `started` and `completed` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_from_floyd_yaml_reach_their_target() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<serde_json::Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body.0);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    h.work.write(
        "floyd.yaml",
        &format!("notifications:\n  - {{ url: \"http://{addr}/hook\", format: generic }}\n"),
    );
    let c1 = h.push_web("v2", false, "web: v2, with notifications");
    h.wait_complete_at("web", &c1).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(e, s): &(String, String)| e == "completed" && s == "web")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(body)) => seen.push((
                body["event"].as_str().unwrap_or_default().to_string(),
                body["service"].as_str().unwrap_or_default().to_string(),
            )),
            _ => panic!("no `completed` notification for web within 20 s; got {seen:?}"),
        }
    }
    assert!(
        seen.iter().any(|(e, s)| e == "started" && s == "web"),
        "a `started` notification precedes `completed`: {seen:?}"
    );
}
