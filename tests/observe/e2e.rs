//! End to end with the real parts: a bare Git remote, the real controller,
//! the local runtime running `floyd sample-app` processes, and the server.
//! One good rollout (triggered by a signed GitHub webhook) and one broken
//! one (rolled back and reverted), watched through the API, SSE, `/metrics`
//! and the `floyd` binary.

use crate::fixture::{HOOK_SECRET, TOKEN, WAIT};
use crate::metrics::{CONTRACT, parse};
use crate::sse::SseReader;
use floyd::controller::{Config as CtlConfig, Controller};
use floyd::hub::Hub;
use floyd::manifest::GpuInventory;
use floyd::runtime::Runtime;
use floyd::runtime::local::{LocalConfig, LocalRuntime};
use floyd::server::{self, Config, Secret};
use floyd::source::{Credentials, GitSource, SourceConfig};
use floyd::store::Store;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rollouts of real processes take seconds; this bounds every wait here.
pub(crate) const LONG: Duration = Duration::from_secs(90);

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
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
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

pub(crate) fn web_yaml(version: &str, broken: bool, port: u16) -> String {
    let extra = if broken { ", \"--never-ready\"" } else { "" };
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: web
spec:
  replicas: 2
  template:
    command: [\"${{FLOYD_BIN}}\", \"sample-app\", \"--version\", \"{version}\"{extra}]
    terminationGracePeriodSeconds: 2
  ports:
    - {{ name: http, port: {port} }}
  health:
    readiness: {{ http: {{ path: /healthz, port: http }}, periodSeconds: 1, failureThreshold: 1 }}
  progressDeadlineSeconds: 4
  strategy:
    type: RollingUpdate
    rollingUpdate: {{ maxSurge: 1, maxUnavailable: 0 }}
  onFailure: {{ rollback: true, revert: true }}
"
    )
}

fn llm_yaml(port: u16) -> String {
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: llm
spec:
  replicas: 1
  template:
    command: [\"${{FLOYD_BIN}}\", \"sample-app\", \"--version\", \"m1\", \"--gpu-echo\"]
    terminationGracePeriodSeconds: 2
    resources:
      gpu: {{ count: 1, product: NVIDIA-A100-SXM4-80GB, sharing: exclusive }}
  ports:
    - {{ name: http, port: {port} }}
  health:
    readiness: {{ http: {{ path: /healthz, port: http }}, periodSeconds: 1 }}
"
    )
}

fn sign(body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("hmac key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn get(c: &reqwest::Client, url: &str) -> Value {
    c.get(url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

async fn wait_phase(
    c: &reqwest::Client,
    base: &str,
    svc: &str,
    rev: Option<&str>,
    phase: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let r = c.get(format!("{base}/api/v1/services/{svc}")).send().await;
        if let Ok(r) = r
            && r.status().is_success()
            && let Ok(v) = r.json::<Value>().await
            && v["phase"] == phase
            && rev.is_none_or(|rev| v["target_revision"] == rev)
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {svc} {phase} {rev:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A bare remote seeded with `files` in one commit, a clone to change it,
/// and the controller on the local runtime, wired like `floyd run`.
pub(crate) struct Stack {
    _tmp: tempfile::TempDir,
    pub(crate) work: std::path::PathBuf,
    runtime: Arc<LocalRuntime>,
    pub(crate) hub: Arc<Hub>,
    stop: CancellationToken,
    controller: tokio::task::JoinHandle<Result<(), floyd::controller::Error>>,
}

pub(crate) async fn stack(
    files: &[(&str, String)],
    message: &str,
    gpus: Vec<GpuInventory>,
) -> Stack {
    let tmp = tempfile::tempdir().expect("tmp");
    let remote = tmp.path().join("remote.git");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&remote).expect("mkdir");
    git(&remote, &["init", "--bare", "-q", "-b", "main"]);
    git(
        tmp.path(),
        &["clone", "-q", remote.to_str().expect("utf-8"), "work"],
    );
    std::fs::create_dir_all(work.join("services")).expect("mkdir");
    for (path, text) in files {
        std::fs::write(work.join(path), text).expect("write");
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", message]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);

    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    let mut lc = LocalConfig::new(&state);
    lc.floyd_bin = Some(env!("CARGO_BIN_EXE_floyd").into());
    lc.nvidia_smi = None;
    lc.tick = Duration::from_millis(50);
    lc.gpus = gpus;
    let runtime = Arc::new(LocalRuntime::start(lc).await.expect("local runtime"));
    let hub = Arc::new(Hub::new());
    let src = Arc::new(
        GitSource::open(SourceConfig {
            url: remote.to_str().expect("utf-8").to_string(),
            branch: "main".into(),
            mirror: state.join("repo.git"),
            credentials: Credentials::default(),
        })
        .expect("git source"),
    );
    let store = Arc::new(Store::open(&state).expect("store"));
    let mut cfg = CtlConfig::new();
    // Long poll: later commits arrive through webhooks.
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.resync_interval = Duration::from_millis(500);
    let stop = CancellationToken::new();
    let ctl = Controller::new(hub.clone(), runtime.clone(), src, store, cfg);
    let controller = {
        let stop = stop.clone();
        tokio::spawn(async move { ctl.run(async move { stop.cancelled().await }).await })
    };
    Stack {
        _tmp: tmp,
        work,
        runtime,
        hub,
        stop,
        controller,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_rollback_revert_seen_through_every_window() {
    let (web_port, llm_port) = (free_port(), free_port());
    let Stack {
        _tmp,
        work,
        runtime,
        hub,
        stop,
        controller,
    } = stack(
        &[
            ("services/web.yaml", web_yaml("v1", false, web_port)),
            ("services/llm.yaml", llm_yaml(llm_port)),
        ],
        "web v1 and llm",
        vec![GpuInventory {
            product: "NVIDIA-A100-SXM4-80GB".into(),
            memory_mib: Some(81920),
            count: 2,
            time_sliced_replicas: None,
            mig: Default::default(),
        }],
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = {
        let stop = stop.clone();
        tokio::spawn(server::serve(
            listener,
            hub.clone(),
            Config {
                webhook_secret: Some(Secret::new(HOOK_SECRET)),
                api_token: Some(Secret::new(TOKEN)),
                ..Config::default()
            },
            async move { stop.cancelled().await },
        ))
    };
    let c = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client");

    // First sync: both services Complete.
    let v1 = wait_phase(&c, &base, "web", None, "Complete").await;
    let llm = wait_phase(&c, &base, "llm", None, "Complete").await;
    assert_eq!(llm["gpu"]["kind"], "NVIDIA-A100-SXM4-80GB");
    assert_eq!(llm["gpu"]["held_by_service"], 1);
    let rev1 = v1["target_revision"].as_str().expect("rev").to_string();
    assert_eq!(v1["commit"]["summary"], "web v1 and llm");
    let ready = c
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);

    // A good change, announced by a signed GitHub webhook.
    let mut sse = SseReader::open(&format!("{base}/api/v1/events?service=web")).await;
    std::fs::write(
        work.join("services/web.yaml"),
        web_yaml("v2", false, web_port),
    )
    .expect("write");
    git(&work, &["commit", "-q", "-am", "web v2"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let sha2 = git(&work, &["rev-parse", "HEAD"]);
    let body = serde_json::json!({"ref": "refs/heads/main", "after": sha2}).to_string();
    for expect in ["accepted", "duplicate"] {
        let res = c
            .post(format!("{base}/hooks/github"))
            .header("x-github-event", "push")
            .header("x-github-delivery", "delivery-1")
            .header("x-hub-signature-256", sign(body.as_bytes()))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("webhook");
        assert_eq!(res.status(), 202);
        let b: Value = res.json().await.expect("json");
        assert_eq!(b["result"], expect);
    }
    // A push to another branch is accepted and ignored.
    let other = serde_json::json!({"ref": "refs/heads/feature", "after": sha2}).to_string();
    let res = c
        .post(format!("{base}/hooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "delivery-2")
        .header("x-hub-signature-256", sign(other.as_bytes()))
        .body(other)
        .send()
        .await
        .expect("webhook");
    let b: Value = res.json().await.expect("json");
    assert_eq!(b["result"], "ignored");

    // SSE shows the rollout moving: Progressing with two revisions, then Complete.
    let mut saw_two_revisions = false;
    let rev2 = loop {
        let ev = tokio::time::timeout(LONG, sse.next_named("service"))
            .await
            .expect("service events");
        let s = &ev["service"];
        if s["phase"] == "Progressing" && s["revisions"].as_array().is_some_and(|r| r.len() == 2) {
            saw_two_revisions = true;
        }
        if s["phase"] == "Complete" && s["target_revision"] != rev1.as_str() {
            assert_eq!(s["commit"]["sha"], sha2.as_str());
            break s["target_revision"].as_str().expect("rev").to_string();
        }
    };
    assert!(
        saw_two_revisions,
        "never saw old and new revision side by side"
    );

    // `floyd status` with the real binary.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args(["status", "--server", &base])
        .output()
        .await
        .expect("floyd status");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("web ")
            && l.contains("Complete")
            && l.contains("2/2")
            && l.contains("web v2")),
        "{table}"
    );

    // A broken change: fails, rolls back, Floyd pushes a revert commit.
    std::fs::write(
        work.join("services/web.yaml"),
        web_yaml("v3", true, web_port),
    )
    .expect("write");
    git(&work, &["commit", "-q", "-am", "web v3 (broken)"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let body =
        serde_json::json!({"ref": "refs/heads/main", "after": git(&work, &["rev-parse", "HEAD"])})
            .to_string();
    let res = c
        .post(format!("{base}/hooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "delivery-3")
        .header("x-hub-signature-256", sign(body.as_bytes()))
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(res.status(), 202);
    let revert = tokio::time::timeout(LONG, sse.next_named("revert"))
        .await
        .expect("revert event");
    assert_eq!(revert["ok"], true, "{revert}");
    let back = wait_phase(&c, &base, "web", Some(&rev2), "Complete").await;
    assert_eq!(back["current_revision"], rev2.as_str());

    let h = get(&c, &format!("{base}/api/v1/services/web/history")).await;
    let h = h["history"].as_array().expect("history").clone();
    assert!(
        h.iter()
            .any(|e| e["result"] == "Failed" || e["result"] == "RolledBack"),
        "{h:?}"
    );
    assert!(
        h.iter().any(|e| e["revert_commit"].is_string()),
        "no history entry names the revert commit: {h:?}"
    );

    // Every contract metric, read back with a real parser.
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let scrape = parse(&text);
    let missing: Vec<&str> = CONTRACT
        .iter()
        .copied()
        .filter(|m| !scrape.samples.iter().any(|s| s.metric == *m))
        .collect();
    assert!(
        missing.is_empty(),
        "missing after the story: {missing:?}\n{text}"
    );

    stop.cancel();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("serve");
    tokio::time::timeout(WAIT, controller)
        .await
        .expect("controller stops")
        .expect("controller task")
        .expect("controller");
    runtime.shutdown().await;
}

/// `web` behind the load balancer with a success-rate gate: the share of
/// non-5xx responses of the new revision over 2 s must be at least 90 %.
fn gated_web_yaml(version: &str, error_ratio: f64, port: u16) -> String {
    let yaml = web_yaml(version, false, port);
    let gated = yaml
        .replace(
            &format!("\"--version\", \"{version}\"]"),
            &format!("\"--version\", \"{version}\", \"--error-ratio\", \"{error_ratio}\"]"),
        )
        .replace(
            "  progressDeadlineSeconds: 4\n",
            "  gates:\n    - successRate: { min: 0.9, window: 2s }\n  progressDeadlineSeconds: 20\n",
        );
    assert!(
        gated.contains("--error-ratio") && gated.contains("successRate"),
        "{gated}"
    );
    gated
}

pub(crate) async fn wait_view(
    hub: &Hub,
    what: &str,
    cond: impl Fn(&floyd::hub::ServiceView) -> bool,
) -> floyd::hub::ServiceView {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        if let Some(v) = hub.service("web")
            && cond(&v)
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for web: {what}; last view: {:#?}",
            hub.service("web")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Stack {
    /// Commits `services/web.yaml`, pushes it and tells the controller
    /// (as a webhook would); returns the commit.
    pub(crate) fn push_web(&self, yaml: &str, message: &str) -> String {
        std::fs::write(self.work.join("services/web.yaml"), yaml).expect("write");
        git(&self.work, &["commit", "-q", "-am", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        let sha = git(&self.work, &["rev-parse", "HEAD"]);
        self.hub.trigger_fetch(floyd::hub::FetchTrigger {
            source: "test".into(),
            after: Some(sha.clone()),
        });
        sha
    }

    /// The history entry of web's failed rollout away from `good`.
    fn failed_rollout(&self, good: &floyd::manifest::Revision) -> floyd::hub::HistoryEntry {
        let failed = self
            .hub
            .history("web")
            .into_iter()
            .find(|e| &e.to_revision != good && !e.rollback)
            .expect("the failed rollout in the history");
        assert!(
            matches!(
                failed.result,
                floyd::engine::Phase::Failed | floyd::engine::Phase::RolledBack
            ),
            "{failed:#?}"
        );
        failed
    }

    /// Pushes `yaml` (a v2 answering 5xx to half its requests) and waits
    /// until it failed its successRate gate and was reverted; returns the
    /// reverted commit.
    async fn erroring_v2_is_reverted(
        &self,
        yaml: &str,
        good: &floyd::manifest::Revision,
    ) -> String {
        let mut events = self.hub.subscribe();
        let bad = self.push_web(yaml, "web v2 (erroring)");
        let revert = next_revert(&mut events).await;
        assert_eq!(
            (revert.0, &revert.2),
            (true, &vec![bad.clone()]),
            "{revert:?}"
        );
        let failed = self.failed_rollout(good);
        assert!(
            failed
                .reason
                .contains("gate successRate failed: success rate"),
            "{failed:#?}"
        );
        bad
    }

    pub(crate) async fn finish(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.controller)
            .await
            .expect("controller stops")
            .expect("controller task")
            .expect("controller");
        self.runtime.shutdown().await;
    }
}

/// The next revert event: (pushed, revert commit, reverted commits).
pub(crate) async fn next_revert(
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<floyd::hub::Event>>,
) -> (bool, Option<String>, Vec<String>) {
    loop {
        match tokio::time::timeout(LONG, events.recv())
            .await
            .map(|r| r.map(std::sync::Arc::unwrap_or_clone))
        {
            Ok(Ok(floyd::hub::Event::Revert {
                ok,
                commit,
                reverted,
                ..
            })) => return (ok, commit, reverted),
            Ok(_) => continue,
            Err(_) => panic!("no revert event within {LONG:?}"),
        }
    }
}

/// The load balancer's counts decide: a revision answering 5xx to half its
/// requests fails the successRate gate under real traffic, is rolled back and
/// reverted in Git; a healthy one passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn success_rate_gate_fails_an_erroring_revision_under_traffic() {
    let port = free_port();
    let st = stack(
        &[("services/web.yaml", gated_web_yaml("v1", 0.0, port))],
        "web v1",
        Vec::new(),
    )
    .await;
    // Steady traffic through the load balancer from the start.
    let load_stop = CancellationToken::new();
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = load_stop.clone();
            tokio::spawn(async move {
                let c = reqwest::Client::new();
                while !stop.is_cancelled() {
                    let _ = c.get(format!("http://127.0.0.1:{port}/")).send().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    let v1 = wait_view(&st.hub, "v1 Complete", |v| {
        v.phase == floyd::engine::Phase::Complete
    })
    .await;
    let rev1 = v1.target_revision.clone().expect("revision");
    assert!(
        v1.gates
            .iter()
            .any(|g| g.name == "successRate" && g.verdict == floyd::runtime::GateVerdict::Pass),
        "{:?}",
        v1.gates
    );

    // v2 answers 500 to half of `/`: its probes pass, its traffic does not.
    // Rolled back to v1 and reverted in Git.
    let bad = st
        .erroring_v2_is_reverted(&gated_web_yaml("v2", 0.5, port), &rev1)
        .await;
    git(&st.work, &["pull", "-q", "origin", "main"]);
    let msg = git(&st.work, &["log", "-1", "--format=%B"]);
    assert!(msg.contains(&format!("This reverts commit {bad}")), "{msg}");
    assert!(
        msg.contains("Floyd-Reason: gate successRate failed: success rate"),
        "{msg}"
    );
    let back = wait_view(&st.hub, "back on v1", |v| {
        v.phase == floyd::engine::Phase::Complete && v.current_revision.as_ref() == Some(&rev1)
    })
    .await;
    assert_eq!(back.target_revision, Some(rev1.clone()));
    // The load balancer's counts per revision, as /metrics shows them.
    let scrape = parse(&st.hub.metrics.encode());
    let value = |metric: &str, revision: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.labels.get("service") == Some("web")
                    && s.labels.get("revision") == Some(revision)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {metric} for {revision}"))
    };
    let rev2 = st.failed_rollout(&rev1).to_revision.to_string();
    let (ok_requests, ok_errors) = (
        value("floyd_lb_requests_total", rev1.as_str()),
        value("floyd_lb_errors_total", rev1.as_str()),
    );
    let (bad_requests, bad_errors) = (
        value("floyd_lb_requests_total", &rev2),
        value("floyd_lb_errors_total", &rev2),
    );
    assert!(
        ok_requests > 100.0 && ok_errors == 0.0,
        "v1: {ok_requests} {ok_errors}"
    );
    assert!(
        bad_requests > 10.0 && bad_errors > bad_requests * 0.2 && bad_errors < bad_requests * 0.8,
        "v2 answers 500 to about half: {bad_requests} {bad_errors}"
    );

    load_stop.cancel();
    for l in load {
        let _ = l.await;
    }
    st.finish().await;
}

/// Blue-green: the new revision's pre-promotion success-rate gate is measured
/// on preview traffic only. An erroring revision is never promoted: users of
/// the active port see no error at all, and Git is reverted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_gate_on_preview_traffic_keeps_errors_off_the_active_port() {
    let (port, preview) = (free_port(), free_port());
    let yaml = |version: &str, error_ratio: f64| {
        gated_web_yaml(version, error_ratio, port).replace(
            "    type: RollingUpdate\n    rollingUpdate: { maxSurge: 1, maxUnavailable: 0 }\n",
            &format!(
                "    type: BlueGreen\n    blueGreen: {{ previewPort: {preview}, scaleDownDelaySeconds: 3s }}\n"
            ),
        )
    };
    assert!(yaml("v1", 0.0).contains("BlueGreen"));
    let st = stack(
        &[("services/web.yaml", yaml("v1", 0.0))],
        "web v1",
        Vec::new(),
    )
    .await;
    // Traffic on both ports; errors counted per port once v1 is up.
    let load_stop = CancellationToken::new();
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = [port, port, preview, preview]
        .into_iter()
        .map(|p| {
            let (stop, counting) = (load_stop.clone(), counting.clone());
            tokio::spawn(async move {
                let c = reqwest::Client::new();
                let (mut ok, mut bad) = (0u64, 0u64);
                while !stop.is_cancelled() {
                    let r = c.get(format!("http://127.0.0.1:{p}/")).send().await;
                    if counting.load(std::sync::atomic::Ordering::Relaxed) {
                        // Errors the instance answered (the sample app's 500),
                        // not the load balancer's 503 of an empty preview port.
                        match r {
                            Ok(r) if r.status().is_success() => ok += 1,
                            Ok(r) if r.status() == 503 && p == preview => {}
                            _ => bad += 1,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (p, ok, bad)
            })
        })
        .collect();

    let v1 = wait_view(&st.hub, "v1 Complete", |v| {
        v.phase == floyd::engine::Phase::Complete
    })
    .await;
    let rev1 = v1.target_revision.clone().expect("revision");
    counting.store(true, std::sync::atomic::Ordering::Relaxed);

    st.erroring_v2_is_reverted(&yaml("v2", 0.5), &rev1).await;
    wait_view(&st.hub, "back on v1", |v| {
        v.phase == floyd::engine::Phase::Complete && v.active.as_ref() == Some(&rev1)
    })
    .await;

    load_stop.cancel();
    let mut per_port = std::collections::BTreeMap::new();
    for l in load {
        let (p, ok, bad) = l.await.expect("load task");
        let e: &mut (u64, u64) = per_port.entry(p).or_default();
        e.0 += ok;
        e.1 += bad;
    }
    let (active_ok, active_bad) = per_port[&port];
    let (_, preview_bad) = per_port[&preview];
    assert!(active_ok > 100, "{per_port:?}");
    assert_eq!(
        active_bad, 0,
        "users of the active port saw errors: {per_port:?}"
    );
    assert!(
        preview_bad > 0,
        "the preview port served v2's errors: {per_port:?}"
    );

    st.finish().await;
}

/// `web` with one A100 per instance (the local runtime's declared inventory).
fn gpu_web_yaml(version: &str, replicas: u32, port: u16) -> String {
    let yaml = web_yaml(version, false, port)
        .replace("  replicas: 2\n", &format!("  replicas: {replicas}\n"))
        .replace(
            "    terminationGracePeriodSeconds: 2\n",
            "    terminationGracePeriodSeconds: 2\n    resources:\n      gpu: { count: 1, product: NVIDIA-A100-SXM4-80GB }\n",
        )
        .replace("progressDeadlineSeconds: 4", "progressDeadlineSeconds: 20");
    assert!(
        yaml.contains("gpu:") && yaml.contains(&format!("replicas: {replicas}")),
        "{yaml}"
    );
    yaml
}

/// Ids of web's instances the local runtime runs now.
async fn instance_ids(runtime: &LocalRuntime) -> Vec<String> {
    let web = floyd::manifest::ServiceName::parse("web").unwrap();
    let o = runtime
        .observe(&web, None, floyd::time::Time::now_wall())
        .await
        .unwrap();
    o.revisions
        .iter()
        .flat_map(|r| r.instances.iter().map(|i| i.id.clone()))
        .collect()
}

/// The GitOps-correctness sequence 1 with real processes and a real remote:
/// B completes on the 2 declared GPUs; C asks for 3 replicas. C fails at
/// once with the GPU arithmetic and is the commit reverted (not B); Git is
/// back to B's tree with exactly one revert commit; B's two instances were
/// never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicas_only_gpu_scale_that_cannot_fit_reverts_that_commit_on_the_local_runtime() {
    let port = free_port();
    let st = stack(
        &[("services/web.yaml", gpu_web_yaml("v1", 2, port))],
        "web v1 on 2 GPUs",
        vec![GpuInventory {
            product: "NVIDIA-A100-SXM4-80GB".into(),
            memory_mib: Some(81920),
            count: 2,
            time_sliced_replicas: None,
            mig: Default::default(),
        }],
    )
    .await;
    wait_view(&st.hub, "v1 Complete", |v| {
        v.phase == floyd::engine::Phase::Complete
    })
    .await;
    let b = st.push_web(&gpu_web_yaml("v2", 2, port), "web: v2");
    let vb = wait_view(&st.hub, "B Complete", |v| {
        v.phase == floyd::engine::Phase::Complete && v.commit.as_ref().is_some_and(|c| c.sha == b)
    })
    .await;
    let ids_before = instance_ids(&st.runtime).await;
    let mut events = st.hub.subscribe();
    let c = st.push_web(&gpu_web_yaml("v2", 3, port), "web: 3 replicas");
    let (pushed, revert, reverted) = next_revert(&mut events).await;
    assert!(pushed);
    assert_eq!(reverted, vec![c.clone()], "C is the bad commit, not B");
    let revert = revert.unwrap();
    let remote = st.work.join("../remote.git");
    let msg = git(&remote, &["log", "-1", "--format=%B", &revert]);
    assert!(msg.contains(&format!("Floyd-Revert-Of: {c}")), "{msg}");
    assert!(msg.contains("Floyd-Service: web"), "{msg}");
    assert!(msg.contains("needs 3 GPUs"), "{msg}");
    assert_eq!(
        git(&remote, &["rev-parse", &format!("{revert}^{{tree}}")]),
        git(&remote, &["rev-parse", &format!("{b}^{{tree}}")]),
        "Git is back to B's tree"
    );
    let log = git(&remote, &["log", "--format=%s", "main"]);
    assert_eq!(
        log.lines().filter(|l| l.starts_with("Revert")).count(),
        1,
        "{log}"
    );
    let v = wait_view(&st.hub, "Complete on the revert", |v| {
        v.phase == floyd::engine::Phase::Complete
            && v.commit.as_ref().is_some_and(|x| x.sha == revert)
    })
    .await;
    assert_eq!(v.target_revision, vb.target_revision);
    let ids_after = instance_ids(&st.runtime).await;
    assert_eq!(ids_after, ids_before, "B's instances were never touched");
    st.finish().await;
}
