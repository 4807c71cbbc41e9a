//! Canary end to end on the local runtime: the real controller, `floyd
//! sample-app` processes, the load balancer and real HTTP load. The share of
//! requests each revision answers is measured per step; header-matched
//! requests reach the canary; a canary answering 500 to everything is
//! aborted by its successRate gate, rolled back and reverted in Git.

use crate::e2e::{LONG, Stack, free_port, git, next_revert, stack, wait_view, web_yaml};
use floyd::engine::{Command, Phase};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `web` (2 replicas) with a canary strategy and, optionally, a gate.
fn canary_yaml(version: &str, error_ratio: f64, port: u16, steps: &str, gates: &str) -> String {
    let yaml = web_yaml(version, false, port)
        .replace(
            &format!("\"--version\", \"{version}\"]"),
            &format!("\"--version\", \"{version}\", \"--error-ratio\", \"{error_ratio}\"]"),
        )
        .replace(
            "    type: RollingUpdate\n    rollingUpdate: { maxSurge: 1, maxUnavailable: 0 }\n",
            &format!(
                "    type: Canary\n    canary:\n      steps: {steps}\n      match:\n        - headers: {{ x-canary: \"true\" }}\n"
            ),
        )
        .replace(
            "  progressDeadlineSeconds: 4\n",
            &format!("{gates}  progressDeadlineSeconds: 60\n"),
        );
    assert!(
        yaml.contains("type: Canary") && yaml.contains("--error-ratio"),
        "{yaml}"
    );
    yaml
}

/// What the load clients saw, per epoch: answers by version, and failures.
#[derive(Default, Debug, Clone)]
struct Tally {
    versions: BTreeMap<String, u64>,
    failed: u64,
    /// Wall time of the first and the last failure.
    first_failure: Option<std::time::Instant>,
    last_failure: Option<std::time::Instant>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.versions.values().sum::<u64>() + self.failed
    }
}

/// Closed-loop HTTP clients on the service port. Requests are tallied under
/// the epoch current when they were sent; epoch 0 is not tallied.
struct Load {
    epoch: Arc<AtomicU64>,
    tallies: Arc<Mutex<BTreeMap<u64, Tally>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let epoch = Arc::new(AtomicU64::new(0));
        let tallies: Arc<Mutex<BTreeMap<u64, Tally>>> = Arc::default();
        let stop = CancellationToken::new();
        let tasks = (0..clients)
            .map(|_| {
                let (epoch, tallies, stop) = (epoch.clone(), tallies.clone(), stop.clone());
                tokio::spawn(async move {
                    let c = reqwest::Client::new();
                    while !stop.is_cancelled() {
                        let e = epoch.load(Ordering::SeqCst);
                        let r = c
                            .get(format!("http://127.0.0.1:{port}/"))
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await;
                        let version = match r {
                            Ok(r) if r.status().is_success() => r
                                .json::<serde_json::Value>()
                                .await
                                .ok()
                                .and_then(|v| v["version"].as_str().map(str::to_string)),
                            _ => None,
                        };
                        if e == 0 {
                            if version.is_none() {
                                // Nothing listens yet: do not spin.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            continue;
                        }
                        let mut t = tallies.lock().unwrap();
                        let t = t.entry(e).or_default();
                        match version {
                            Some(v) => *t.versions.entry(v).or_default() += 1,
                            None => {
                                let now = std::time::Instant::now();
                                t.failed += 1;
                                t.first_failure.get_or_insert(now);
                                t.last_failure = Some(now);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            epoch,
            tallies,
            stop,
            tasks,
        }
    }

    fn set_epoch(&self, e: u64) {
        self.epoch.store(e, Ordering::SeqCst);
    }

    fn tally(&self, e: u64) -> Tally {
        self.tallies
            .lock()
            .unwrap()
            .get(&e)
            .cloned()
            .unwrap_or_default()
    }

    /// Tallies epoch `e` until it holds at least `n` answers.
    async fn measure(&self, e: u64, n: u64) -> Tally {
        self.set_epoch(e);
        let deadline = tokio::time::Instant::now() + LONG;
        while self.tally(e).total() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {:?} in {LONG:?}",
                self.tally(e)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.set_epoch(0);
        // Requests sent in the epoch still land in it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.tally(e)
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Waits until web's canary sits in its indefinite pause at `weight`.
async fn paused_at(st: &Stack, weight: u32) {
    wait_view(&st.hub, &format!("canary paused at weight {weight}"), |v| {
        v.phase == Phase::AwaitingPromotion && v.canary.as_ref().is_some_and(|c| c.weight == weight)
    })
    .await;
    // The split is applied before the view is published; let clients settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Share of `tally` answered by `version`, in percent.
fn share(t: &Tally, version: &str) -> f64 {
    100.0 * t.versions.get(version).copied().unwrap_or(0) as f64 / t.total() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_traffic_share_per_step_and_header_matches_with_real_processes() {
    let port = free_port();
    let steps = "[{ setWeight: 10 }, { pause: {} }, { setWeight: 50 }, { pause: {} }]";
    let st = stack(
        &[("services/web.yaml", canary_yaml("v1", 0.0, port, steps, ""))],
        "web v1",
        Vec::new(),
    )
    .await;
    let load = Load::start(port, 4);
    // A first deployment has nothing to compare against: it rolls out in full.
    wait_view(&st.hub, "v1 Complete", |v| v.phase == Phase::Complete).await;
    // The whole canary run is tallied under epoch 9 (failures) and, per
    // step, epochs 1 and 2 (shares).
    load.set_epoch(9);
    st.push_web(&canary_yaml("v2", 0.0, port, steps, ""), "web v2");

    paused_at(&st, 10).await;
    let step1 = load.measure(1, 2_000).await;
    // Header-matched requests all go to the canary, whatever the weight.
    let c = reqwest::Client::new();
    let mut matched = BTreeMap::<String, u64>::new();
    for _ in 0..200 {
        let v: serde_json::Value = c
            .get(format!("http://127.0.0.1:{port}/"))
            .header("X-Canary", "true")
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        *matched
            .entry(v["version"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    load.set_epoch(9);
    st.hub
        .control("web", Command::Promote)
        .await
        .expect("promote");

    paused_at(&st, 50).await;
    let step2 = load.measure(2, 2_000).await;
    load.set_epoch(9);
    st.hub
        .control("web", Command::Promote)
        .await
        .expect("promote");
    let done = wait_view(&st.hub, "v2 Complete", |v| {
        v.phase == Phase::Complete && v.canary.is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = load.measure(3, 200).await;
    let transitions = load.tally(9);
    load.stop().await;
    eprintln!(
        "canary shares: setWeight 10: v2 {:.2}% of {} requests; setWeight 50: v2 {:.2}% of {}; header-matched: {matched:?}; failed: {} of {} requests over the whole run",
        share(&step1, "v2"),
        step1.total(),
        share(&step2, "v2"),
        step2.total(),
        step1.failed + step2.failed + after.failed + transitions.failed,
        step1.total() + step2.total() + after.total() + transitions.total(),
    );
    assert!(step1.total() >= 2_000 && step2.total() >= 2_000);
    assert!(
        (share(&step1, "v2") - 10.0).abs() <= 2.0,
        "setWeight 10: {step1:?}"
    );
    assert!(
        (share(&step2, "v2") - 50.0).abs() <= 2.0,
        "setWeight 50: {step2:?}"
    );
    assert_eq!(matched, BTreeMap::from([("v2".to_string(), 200)]));
    assert_eq!(share(&after, "v2"), 100.0, "{after:?}");
    assert_eq!(
        step1.failed + step2.failed + after.failed + transitions.failed,
        0,
        "a healthy canary run fails no request: {transitions:?}"
    );
    assert!(transitions.total() > 0);
    assert!(done.target_revision.is_some());
    st.finish().await;
}

/// A canary answering 500 to every request, at `setWeight: 5` with a
/// successRate gate: aborted (weight 0, canary scaled down), rolled back and
/// reverted in Git; only about 5 % of the requests sent while it served saw
/// an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_canary_at_5_percent_is_aborted_rolled_back_and_reverted() {
    let port = free_port();
    let steps = "[{ setWeight: 5 }, { pause: { duration: 5m } }, { setWeight: 50 }]";
    let gates = "  gates:\n    - successRate: { min: 0.9, window: 2s }\n";
    let st = stack(
        &[(
            "services/web.yaml",
            canary_yaml("v1", 0.0, port, steps, gates),
        )],
        "web v1",
        Vec::new(),
    )
    .await;
    let load = Load::start(port, 4);
    load.set_epoch(1);
    let v1 = wait_view(&st.hub, "v1 Complete", |v| v.phase == Phase::Complete).await;
    let rev1 = v1.target_revision.clone().expect("revision");
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.set_epoch(2);
    let mut events = st.hub.subscribe();
    let bad = st.push_web(
        &canary_yaml("v2", 1.0, port, steps, gates),
        "web v2 (all 500)",
    );
    let revert = next_revert(&mut events).await;
    load.set_epoch(3);
    assert_eq!(
        (revert.0, &revert.2),
        (true, &vec![bad.clone()]),
        "{revert:?}"
    );
    let back = wait_view(&st.hub, "back on v1", |v| {
        v.phase == Phase::Complete && v.current_revision.as_ref() == Some(&rev1)
    })
    .await;
    assert_eq!(back.target_revision.as_ref(), Some(&rev1));
    // Traffic after the revert: no error at all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = load.tally(2);
    let after = load.tally(3);
    let before = load.tally(1);
    load.stop().await;

    let failed = st
        .hub
        .history("web")
        .into_iter()
        .find(|e| e.to_revision != rev1 && !e.rollback)
        .expect("the failed canary in the history");
    assert!(
        failed
            .reason
            .contains("gate successRate failed: success rate"),
        "{failed:#?}"
    );
    git(&st.work, &["pull", "-q", "origin", "main"]);
    let msg = git(&st.work, &["log", "-1", "--format=%B"]);
    assert!(msg.contains(&format!("This reverts commit {bad}")), "{msg}");
    assert!(
        msg.contains("Floyd-Reason: gate successRate failed"),
        "{msg}"
    );

    let fraction = during.failed as f64 / during.total() as f64;
    let exposure = match (during.first_failure, during.last_failure) {
        (Some(a), Some(b)) => b.duration_since(a),
        _ => Duration::ZERO,
    };
    eprintln!(
        "bad canary: {} of {} requests failed ({:.2}%) between the push and the revert; errors seen for {:.1} s; {} of {} failed after the revert",
        during.failed,
        during.total(),
        fraction * 100.0,
        exposure.as_secs_f64(),
        after.failed,
        after.total()
    );
    assert!(
        during.failed > 0,
        "the canary served some requests: {during:?}"
    );
    assert!(
        fraction <= 0.06,
        "at most about 5 % of the requests may fail: {during:?}"
    );
    assert!(
        exposure <= Duration::from_secs(15),
        "aborted within a gate interval or so: errors for {exposure:?}"
    );
    assert_eq!(after.failed, 0, "{after:?}");
    assert!(after.total() > 0);
    assert_eq!(before.versions.get("v2"), None);
    st.finish().await;
}
