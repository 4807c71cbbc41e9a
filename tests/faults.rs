//! The fault suite: what Floyd does when things break. Real Git servers,
//! real processes, loopback only; each scenario bounded in time.
//!
//! 1. A Git remote that accepts connections and never answers, then recovers.
//! 2. A push refused by a protected branch (a `pre-receive` hook).
//! 3. A branch force-pushed to unrelated history.
//! 4. A dead controller task (`floyd run` with an injected failure).
//! 5. Random `kill -9` of `floyd run` during rollouts under HTTP load.

#[path = "gitops/support.rs"]
mod support;

#[path = "gitops/fake.rs"]
mod fake;

#[path = "gitops/harness.rs"]
#[allow(dead_code)]
mod harness;

use floyd::engine::{Command, Phase};
use harness::{Harness, Opts, service_yaml};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::git;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of the Git server that can be made to hang: while
/// `hang` is set it accepts connections and never answers; cleared, it
/// forwards (and closes the connections it held, as a recovered network would).
struct Proxy {
    url: String,
    hang: Arc<AtomicBool>,
    held: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    async fn start(target_url: &str) -> Proxy {
        let target = target_url
            .strip_prefix("git://")
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_string();
        let path = target_url.splitn(4, '/').nth(3).unwrap().to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("git://{}/{path}", listener.local_addr().unwrap());
        let hang = Arc::new(AtomicBool::new(false));
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, k) = (hang.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if h.load(Ordering::SeqCst) {
                    k.lock().unwrap().push(client);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    let _ = client.shutdown().await;
                });
            }
        });
        Proxy { url, hang, held }
    }

    fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
        if !on {
            self.held.lock().unwrap().clear();
        }
    }

    fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

fn reverts_on(h: &Harness) -> Vec<String> {
    h.server
        .log()
        .into_iter()
        .filter(|l| l.contains(" Revert"))
        .collect()
}

/// Scenario 1: the remote hangs after a bad commit was fetched. The rollout
/// still fails and is rolled back during the outage, commands are answered,
/// the revert waits; after recovery it is pushed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_remote_delays_the_revert_but_not_the_rollback() {
    let mut h = Harness::new(Opts::default()).await;
    let proxy = Proxy::start(&h.server.url).await;
    h.stop().await;
    h.start(Opts {
        remote_url: Some(proxy.url.clone()),
        git_timeout: Some(Duration::from_secs(2)),
        ..Opts::default()
    });
    let c0 = h.server.tip();
    let v1 = h.wait_complete_at("web", &c0).await;
    let bad = h.push_web("v2", true, "web: v2 (never ready)");
    h.wait_view(
        "rolling to the bad commit",
        "web",
        Duration::from_secs(20),
        |v| v.commit.as_ref().is_some_and(|c| c.sha == bad),
    )
    .await;
    proxy.hang(true);
    let hung_at = Instant::now();
    // Rolled back while Git hangs (deadline 2 s).
    let v = h
        .wait_view(
            "rolled back during the outage",
            "web",
            Duration::from_secs(30),
            |v| v.phase == Phase::RolledBack,
        )
        .await;
    assert_eq!(v.target_revision, v1.target_revision);
    assert!(proxy.held() > 0, "Floyd did try the hung remote");
    assert!(reverts_on(&h).is_empty(), "nothing could be pushed yet");
    let v = h
        .wait_view(
            "the revert waits for Git",
            "web",
            Duration::from_secs(20),
            |v| v.reason.contains("is not pushed yet"),
        )
        .await;
    assert!(v.reason.contains(&bad[..12]), "{}", v.reason);
    // The loop answers commands while Git hangs.
    let t = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), h.hub.control("web", Command::Pause))
        .await
        .expect("the controller answers within 5 s while Git hangs");
    assert!(
        answer.is_err(),
        "web's rollback is over, nothing to pause: {answer:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    support::wait_for(
        "readiness says Git is down",
        Duration::from_secs(15),
        || !h.hub.git_reachable(),
    );
    // Recovery: the revert is pushed, once.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(hung_at.elapsed())).await;
    proxy.hang(false);
    let v = h
        .wait_complete_beyond(
            "Complete on the revert",
            "web",
            &[&bad, &c0],
            Duration::from_secs(60),
        )
        .await;
    let revert = v.commit.unwrap().sha;
    assert!(
        h.server
            .message(&revert)
            .contains(&format!("Floyd-Revert-Of: {bad}"))
    );
    assert_eq!(reverts_on(&h).len(), 1, "{:?}", h.server.log());
    assert!(h.hub.git_reachable());
}

/// Scenario 2: the branch is protected (a `pre-receive` hook refuses every
/// push). The rollback happens; the service says why the revert is missing;
/// Floyd does not retry a refusal (one push attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_branch_refuses_the_revert_once_and_the_service_says_why() {
    let h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    let v1 = h.wait_complete_at("web", &c0).await;
    let bad = h.push_web("v2", true, "web: v2 (never ready)");
    let count = h.server.root.path().join("pushes");
    let hook = h.server.bare().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho x >> {}\necho 'main is protected: open a pull request' >&2\nexit 1\n",
            count.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v = h
        .wait_view(
            "Degraded after the refused revert",
            "web",
            Duration::from_secs(40),
            |v| v.phase == Phase::Degraded,
        )
        .await;
    assert!(
        v.reason.contains("refused") && v.reason.contains("pre-receive hook declined"),
        "{}",
        v.reason
    );
    assert_eq!(v.current_revision, v1.target_revision, "rolled back");
    // No retry storm: a few more seconds, still one attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = std::fs::read_to_string(&count)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(
        attempts,
        1,
        "one push attempt for a refusal; {}",
        h.hub
            .metrics
            .encode()
            .lines()
            .filter(|l| l.contains("revert"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(h.server.tip(), bad);
}

/// Scenario 3: the branch is force-pushed to unrelated history that breaks
/// the service: no revert of foreign commits, a clear Degraded reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_to_unrelated_history_is_not_reverted() {
    let h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    h.wait_complete_at("api", &c0).await;
    git(
        &h.server.bare(),
        &["config", "receive.denyNonFastForwards", "false"],
    );
    let w = h.work.path();
    git(w, &["checkout", "-q", "--orphan", "rewritten"]);
    h.work
        .write("services/web.yaml", &service_yaml("web", "v9", true))
        .write("services/api.yaml", &service_yaml("api", "v1", false));
    let bad = h.work.commit("rewritten history");
    git(
        w,
        &["push", "-q", "--force", "origin", "HEAD:refs/heads/main"],
    );
    let v = h
        .wait_view("Degraded", "web", Duration::from_secs(40), |v| {
            v.phase == Phase::Degraded
        })
        .await;
    assert!(v.reason.contains("history was rewritten"), "{}", v.reason);
    assert_eq!(h.server.tip(), bad, "nothing pushed");
}

/// Scenario 4: a controller task that dies makes `/healthz` fail and
/// `floyd run` exit non-zero (debug builds take an injected failure).
#[test]
fn a_dead_controller_fails_liveness_and_exits_non_zero() {
    let server = support::GitServer::daemon();
    let w = support::Work::clone(&server.url);
    w.write("services/web.yaml", &service_yaml("web", "v1", false));
    w.commit("web");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args(["run", "--repo", &server.url, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state.path())
        .env("FLOYD_DEBUG_FAIL_CONTROLLER_AFTER", "2s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw = Vec::new();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if let Some(line) = out.lines().next() {
                saw.push(line.to_string());
            }
        }
        assert!(Instant::now() < deadline, "floyd run did not exit: {saw:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        saw.iter().any(|l| l.contains("200")),
        "alive first: {saw:?}"
    );
    assert!(
        saw.iter().any(|l| l.contains("503")),
        "then liveness fails: {saw:?}"
    );
    assert!(
        stderr.contains("controller stopped unexpectedly"),
        "{stderr}"
    );
}

/// Crash-loop guard: a commit whose rendering killed the previous process
/// (recorded as "being rendered" in the store) is not rendered again after
/// the restart; the previous release keeps running, the commit is reverted
/// in Git (without rendering it to plan the revert), and the next commit
/// syncs normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_killed_the_process_while_rendering_is_not_rendered_again_and_is_reverted() {
    let mut h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    h.stop().await;
    let killer = h.push_web("v2", false, "web: v2 (pretend it exhausts memory)");
    {
        let store = floyd::store::Store::open(h.state.path()).unwrap();
        store.set_rendering(Some(&killer)).unwrap();
    }
    h.start(Opts::default());
    // Not rendered again (rendered, v2 would be fine and nothing reverted):
    // it counts as not rendering, and is reverted back to c0's tree.
    support::wait_for(
        "the revert of the commit that killed the process is pushed",
        Duration::from_secs(30),
        || {
            h.server
                .message(&h.server.tip())
                .contains(&format!("Floyd-Revert-Of: {killer}"))
        },
    );
    let revert = h.server.tip();
    support::wait_for("the revert synced", Duration::from_secs(20), || {
        h.hub.sync_error().is_none()
    });
    let v = h.hub.service("web").unwrap();
    assert_eq!(
        v.commit.unwrap().sha,
        c0,
        "the previous release keeps running (the revert renders to it)"
    );
    assert_eq!(h.server.tip(), revert);
    let msg = h.server.message(&revert);
    assert!(msg.contains("died while rendering"), "{msg}");
    let tree = |c: &str| git(&h.server.bare(), &["rev-parse", &format!("{c}^{{tree}}")]);
    assert_eq!(
        tree(&revert),
        tree(&c0),
        "Git is back to the last good tree"
    );
    let before = h.hub.history("web");
    assert!(
        before
            .iter()
            .all(|e| e.commit.as_ref().is_none_or(|c| c.sha != killer)),
        "no rollout of the commit that killed the process: {before:#?}"
    );
    h.work.pull();
    let fix = h.push_web("v3", false, "web: v3");
    h.wait_complete_at("web", &fix).await;
    assert_eq!(h.hub.sync_error(), None);
}

/// A tmpfs of `mib` MiB mounted at a new directory, unmounted on drop.
/// None (with the reason printed) where mounting is not permitted.
struct Tmpfs(tempfile::TempDir);
impl Tmpfs {
    fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}); the disk-full scenario needs one",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir))
    }
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Fills the file system of `dir` until a write fails (ENOSPC).
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    p
}

/// Scenario: the state directory's disk fills up during a rollout. The
/// controller keeps serving (the rollout completes in the runtime), readiness
/// says why, and once space returns the record is written, readiness comes
/// back and a restart resumes from an intact store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_state_directory_is_survived() {
    let Some(fs) = Tmpfs::mount(16) else { return };
    let mut h = Harness::new(Opts::default()).await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    h.stop().await;
    // The state moves onto the small file system.
    let state = fs.path().join("state");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(h.state.path())
        .arg(&state)
        .status()
        .unwrap();
    assert!(cp.success());
    let opts = || Opts {
        state_dir: Some(state.clone()),
        ..Opts::default()
    };
    h.start(opts());
    h.wait_complete_at("web", &c0).await;
    // A slow rollout, in flight when the disk fills.
    let slow =
        service_yaml("web", "v2", false).replace("\"v2\"]", "\"v2\", \"--ready-after-ms=1500\"]");
    h.work.write("services/web.yaml", &slow);
    let v2 = h.work.commit("web: v2 (slow to start)");
    h.work.push();
    h.wait_view("rolling to v2", "web", Duration::from_secs(20), |v| {
        v.commit.as_ref().is_some_and(|c| c.sha == v2) && v.phase == Phase::Progressing
    })
    .await;
    let filler = fill(fs.path());
    support::wait_for(
        "readiness says the store cannot be written",
        Duration::from_secs(20),
        || h.hub.persistence_error().is_some(),
    );
    assert!(!h.hub.is_ready());
    let why = h.hub.persistence_error().unwrap();
    assert!(why.contains("cannot persist"), "{why}");
    // The controller keeps serving: the rollout completes in the runtime.
    h.wait_complete_at("web", &v2).await;
    // Space returns: the record is written, readiness comes back.
    std::fs::remove_file(&filler).unwrap();
    support::wait_for(
        "readiness back after space returns",
        Duration::from_secs(30),
        || h.hub.persistence_error().is_none() && h.hub.is_ready(),
    );
    // Nothing corrupted: a restart resumes from the store, Complete on v2.
    h.stop().await;
    h.start(opts());
    h.wait_complete_at("web", &v2).await;
    h.stop().await;
    let store = floyd::store::Store::open(&state).unwrap();
    let rec = store
        .rollouts()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "web")
        .unwrap()
        .1;
    assert_eq!(rec.commit.unwrap().sha, v2);
    assert_eq!(rec.state.phase, Phase::Complete);
}

// ---- Scenario 6: hostile manifests (issue #14) ----

/// The hostile manifests of scenario 6: file name under `services/`, its
/// bytes, and what the error about it must say.
fn hostile_manifests() -> Vec<(&'static str, String, &'static str)> {
    // 1 MiB: a 700 kB anchored string aliased ~99k times (tens of GB expanded).
    let mut aliases = format!("a: &s {}\nb: [", "x".repeat(700_000));
    aliases += &"*s,".repeat(99_000);
    aliases += "*s]\n";
    // 100 lines of a 100 MB string each.
    let template: String = (0..100)
        .map(|i| format!("k{i}: {{{{ \"x\" * 100000000 }}}}\n"))
        .collect();
    let deep = format!("a: {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
    vec![
        ("aliases.yaml", aliases, "expands to more than 8 MiB"),
        ("template.yaml", template, "string repetition"),
        // 50 MiB of text (compresses to almost nothing in Git).
        (
            "big.yaml",
            "# x\n".repeat(50 * 1024 * 1024 / 4),
            "the limit is 1048576",
        ),
        ("deep.yaml", deep, "nesting deeper than 64 levels"),
    ]
}

/// Peak RSS (KiB) of every child this test process has waited for: with
/// one test per process (nextest), the `floyd validate` runs of the test.
fn children_peak_rss_kib() -> i64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss()
}

/// `floyd validate` refuses each hostile manifest with an error naming the
/// file, in bounded memory; a symlink to a file outside the directory is
/// refused too (not read).
#[test]
fn hostile_manifests_are_refused_by_validate_naming_the_file_in_bounded_memory() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("outside.yaml"),
        service_yaml("leaked", "v1", false),
    )
    .unwrap();
    let mut cases: Vec<(&str, Option<String>, &str)> = hostile_manifests()
        .into_iter()
        .map(|(n, t, w)| (n, Some(t), w))
        .collect();
    cases.push(("link.yaml", None, "leads outside the config directory"));
    let mut peaks = Vec::new();
    for (name, text, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services");
        std::fs::create_dir_all(&services).unwrap();
        std::fs::write(services.join("web.yaml"), service_yaml("web", "v1", false)).unwrap();
        match text {
            Some(t) => std::fs::write(services.join(name), t).unwrap(),
            None => {
                std::os::unix::fs::symlink(outside.path().join("outside.yaml"), services.join(name))
                    .unwrap()
            }
        }
        let started = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_floyd"))
            .arg("validate")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("services/{name}")))
            .unwrap_or_else(|| panic!("{name} is named: {stderr}"));
        assert!(line.contains(want), "{name}: {line}");
        assert!(
            !stderr.contains("leaked"),
            "the linked file is not read: {stderr}"
        );
        peaks.push((name, children_peak_rss_kib(), started.elapsed()));
    }
    eprintln!("floyd validate, peak RSS so far after each case (KiB) and time: {peaks:?}");
    let peak = children_peak_rss_kib();
    assert!(
        peak < 100 * 1024,
        "peak RSS of floyd validate {peak} KiB: {peaks:?}"
    );
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A service the local runtime runs for real (`floyd sample-app`).
fn local_web(version: &str, port: u16) -> String {
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: web
spec:
  replicas: 1
  template:
    command: [\"${{FLOYD_BIN}}\", \"sample-app\", \"--version\", \"{version}\"]
    terminationGracePeriodSeconds: 2
  ports:
    - {{ name: http, port: {port} }}
  health:
    readiness: {{ http: {{ path: /healthz, port: http }}, periodSeconds: 1 }}
  progressDeadlineSeconds: 60
"
    )
}

/// `floyd run` given a commit full of hostile manifests (and a change to a
/// running service beside them) refuses the whole commit, says which files
/// and why, keeps running the last good release, and stays under 100 MiB.
#[test]
fn a_hostile_commit_leaves_floyd_run_on_the_last_good_release_in_bounded_memory() {
    let server = support::GitServer::daemon();
    let w = support::Work::clone(&server.url);
    let web_port = support::free_port();
    w.write("services/web.yaml", &local_web("v1", web_port));
    let good = w.commit("web v1");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("floyd.log");
    let port = support::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args(["run", "--repo", &server.url, "--poll-interval", "1s"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let child = FloydRun(child);
    let pid = child.0.id();
    let web = || -> Option<serde_json::Value> {
        let (code, body) = http_get(port, "/api/v1/services/web")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let complete_at =
        |v: &serde_json::Value, sha: &str| v["phase"] == "Complete" && v["commit"]["sha"] == sha;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !web().is_some_and(|v| complete_at(&v, &good)) {
        assert!(
            Instant::now() < deadline,
            "web Complete at {good}: {:?}",
            web()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    for (name, text, _) in hostile_manifests() {
        w.write(&format!("services/{name}"), &text);
    }
    std::os::unix::fs::symlink("../../outside.yaml", w.path().join("services/link.yaml")).unwrap();
    w.write("services/web.yaml", &local_web("v2", web_port));
    let bad = w.commit("hostile manifests beside web v2");
    w.push();

    let sync_errors = || {
        http_get(port, "/metrics").and_then(|(_, body)| {
            body.lines()
                .find(|l| l.starts_with("floyd_sync_total{result=\"error\"}"))
                .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sync_errors().unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the hostile commit {bad} is tried: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A few more polls: it is not retried into a crash loop, and web stays.
    std::thread::sleep(Duration::from_secs(3));
    let v = web().expect("floyd run still answers");
    assert!(
        complete_at(&v, &good),
        "still on the last good release: {v}"
    );
    let hwm = vm_hwm_kib(pid);
    eprintln!("floyd run peak RSS (VmHWM) after the hostile commit: {hwm} KiB");
    assert!(hwm < 100 * 1024, "floyd run peak RSS {hwm} KiB");
    let logs = std::fs::read_to_string(&log).unwrap();
    for (name, want) in hostile_manifests()
        .iter()
        .map(|(n, _, w)| (*n, *w))
        .chain([("link.yaml", "leads outside the config directory")])
    {
        assert!(
            logs.lines()
                .any(|l| l.contains(&format!("services/{name}")) && l.contains(want)),
            "the log names {name} ({want}): {logs}"
        );
    }
}

// ---- HTTP hardening (issue #14): slow clients, connection floods, bodies ----

/// A real server on loopback under `limits`; stops when the token is cancelled.
async fn limited_server(
    limits: floyd::server::conn::Limits,
) -> (u16, tokio_util::sync::CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(floyd::server::serve_with_limits(
        listener,
        Arc::new(floyd::hub::Hub::new()),
        floyd::server::Config::default(),
        limits,
        async move { s.cancelled().await },
    ));
    (port, stop)
}

/// Sends `request` and reads the answer until the server closes.
async fn exchange(port: u16, request: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the peer closes (Ok(0) or an error), returning when it did.
async fn closed_after(mut s: TcpStream, started: Instant) -> Duration {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after 30 s"),
        }
    }
}

/// A client that never finishes its request head (trickling a header byte
/// at a time, or sending nothing) is cut off at the header timeout, while
/// a normal client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let limits = floyd::server::conn::Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (port, _stop) = limited_server(limits).await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let silent_closed = tokio::spawn(closed_after(silent, started));
    // Trickle a never-ending header, one byte each 100 ms, from another task.
    let (mut rd, mut wr) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..300 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let answer = exchange(port, b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 "),
        "served meanwhile: {answer}"
    );
    let slow_closed = {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "the trickling client is cut off");
        started.elapsed()
    };
    trickle.abort();
    let silent_closed = silent_closed.await.unwrap();
    eprintln!("trickling client cut off after {slow_closed:?}, silent one after {silent_closed:?}");
    for d in [slow_closed, silent_closed] {
        assert!(
            d >= Duration::from_millis(900),
            "not before the timeout: {d:?}"
        );
        assert!(d < Duration::from_secs(15), "{d:?}");
    }
}

/// Connections over the limit are answered 503 and closed at once; when
/// the held ones go away, new clients are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_and_the_server_recovers() {
    let limits = floyd::server::conn::Limits {
        header_read_timeout: Duration::from_secs(60),
        max_connections: 4,
        ..Default::default()
    };
    let (port, _stop) = limited_server(limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // Give the server the time to accept all four.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = exchange(port, b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too many connections"), "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at once"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = exchange(port, b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n").await;
        if answer.starts_with("HTTP/1.0 ") && !answer.contains("too many connections") {
            break;
        }
        assert!(Instant::now() < deadline, "slots released: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every route caps request bodies, not only the webhooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_capped_on_every_route() {
    let limits = floyd::server::conn::Limits {
        max_body_bytes: 1024,
        ..Default::default()
    };
    let (port, _stop) = limited_server(limits).await;
    let body = "x".repeat(64 * 1024);
    for path in ["/api/v1/services/web/pause", "/hooks/github", "/nowhere"] {
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange(port, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.0 413"), "{path}: {answer}");
    }
}

/// A loopback HTTP server from an axum router; returns its port.
async fn http_server(app: axum::Router) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Gate clients follow redirects within one origin only, and read answers
/// up to a cap (declared or streamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_clients_refuse_cross_origin_redirects_and_huge_answers() {
    use axum::routing::get;
    use std::sync::atomic::AtomicUsize;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let other = http_server(axum::Router::new().route(
        "/",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async { "secret metadata" }
        }),
    ))
    .await;
    let big = || async {
        // 4 MiB streamed in chunks, no Content-Length.
        let chunks = futures::stream::iter(
            (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 64 * 1024]))),
        );
        axum::body::Body::from_stream(chunks)
    };
    let port = http_server(
        axum::Router::new()
            .route(
                "/away",
                get(move || async move {
                    axum::response::Redirect::temporary(&format!("http://localhost:{other}/"))
                }),
            )
            .route(
                "/here",
                get(|| async { axum::response::Redirect::temporary("/ok") }),
            )
            .route("/ok", get(|| async { "{\"ok\": true}" }))
            .route("/big", get(big))
            .route("/declared", get(|| async { vec![b'x'; 2 * 1024 * 1024] })),
    )
    .await;
    let client = floyd::net::gate_client(Duration::from_secs(5));
    let base = format!("http://127.0.0.1:{port}");

    let e = client.get(format!("{base}/away")).send().await.unwrap_err();
    let shown = format!("{e:#}");
    assert!(
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
            .contains("another origin")
            || shown.contains("another origin"),
        "{shown}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the other host is never asked"
    );

    let r = client.get(format!("{base}/here")).send().await.unwrap();
    let v: serde_json::Value = floyd::net::json_capped(r, 1024).await.unwrap();
    assert_eq!(v["ok"], true, "same-origin redirects are followed");

    for path in ["/big", "/declared"] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        let e = floyd::net::read_capped(r, floyd::net::MAX_GATE_BODY_BYTES)
            .await
            .unwrap_err();
        assert!(
            matches!(e, floyd::net::BodyError::TooLarge { .. }),
            "{path}: {e}"
        );
    }
}

// ---- Telemetry from the start (issue #14) ----

/// Text logs written to a pipe carry no ANSI colour codes, and `/metrics`
/// lists the revert and sync counters at 0 before anything happened.
#[test]
fn logs_to_a_pipe_are_plain_and_counters_start_at_zero() {
    use std::io::{BufRead, BufReader};
    let server = support::GitServer::daemon();
    let w = support::Work::clone(&server.url);
    w.write("services/web.yaml", &local_web("v1", support::free_port()));
    w.commit("web");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args(["run", "--repo", &server.url, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        // Read to the end (a closed pipe would fail floyd's own writes).
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Some((200, body)) = http_get(port, "/metrics") {
            break body;
        }
        assert!(Instant::now() < deadline, "floyd run serves /metrics");
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in [
        "floyd_revert_commits_total{result=\"pushed\"} 0",
        "floyd_revert_commits_total{result=\"error\"} 0",
        "floyd_webhook_requests_total{provider=\"github\",result=\"accepted\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().unwrap();
    assert!(!lines.is_empty(), "floyd run logs");
    for l in &lines {
        assert!(!l.contains('\u{1b}'), "no ANSI codes in a pipe: {l:?}");
    }
}

// ---- Scenario 5: kill -9 soak (issue #14) ----

/// A `floyd run` process that is stopped when dropped, also when a test
/// fails: SIGTERM first (a graceful stop takes its instances and dataplane
/// down; SIGKILL would leave them running, as it is meant to), then SIGKILL
/// if it is still there after 20 s.
struct FloydRun(std::process::Child);

impl Drop for FloydRun {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return; // already reaped: its pid may be someone else's now
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `web` (RollingUpdate, surge 1) or `api` (BlueGreen) run for real by the
/// local runtime, two replicas each.
fn soak_service(name: &str, version: &str, port: u16, preview: Option<u16>) -> String {
    let strategy = match preview {
        None => {
            "type: RollingUpdate\n    rollingUpdate: { maxSurge: 1, maxUnavailable: 0 }".to_string()
        }
        Some(p) => format!(
            "type: BlueGreen\n    blueGreen: {{ previewPort: {p}, scaleDownDelaySeconds: 1s }}"
        ),
    };
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  replicas: 2
  template:
    command: [\"${{FLOYD_BIN}}\", \"sample-app\", \"--version\", \"{version}\"]
    terminationGracePeriodSeconds: 5
  ports:
    - {{ name: http, port: {port} }}
  health:
    readiness: {{ http: {{ path: /healthz, port: http }}, periodSeconds: 1 }}
  progressDeadlineSeconds: 120
  strategy:
    {strategy}
"
    )
}

/// A `floyd run` (the default: a separate dataplane process) on a repo.
fn floyd_run(
    repo: &str,
    api: u16,
    state: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args(["run", "--repo", repo, "--poll-interval", "200ms"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{api}"))
        .arg("--state-dir")
        .arg(state)
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

/// Non-terminating instances per service in the local runtime's state file.
fn live_instances(
    state_file: &std::path::Path,
) -> Option<std::collections::BTreeMap<String, usize>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state_file).ok()?).ok()?;
    Some(
        v["services"]
            .as_object()?
            .iter()
            .map(|(name, s)| {
                let n = s["instances"].as_object().map_or(0, |is| {
                    is.values().filter(|i| i["terminating"] != true).count()
                });
                (name.clone(), n)
            })
            .collect(),
    )
}

/// HTTP/1.0 GET on a new connection: the status code, if any answer came.
fn status_of(port: u16) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {out:?}"))
}

/// Scenario 5: random `kill -9` of `floyd run` at random moments of rolling
/// and blue-green rollouts under HTTP load, each followed by a restart.
/// The dataplane process keeps serving: 0 failed requests; instances never
/// exceed replicas + surge (blue-green: both colours); every rollout
/// completes; nothing is orphaned. `FLOYD_FAULT_KILLS` sets the number of
/// kills (default 30).
#[test]
fn kill_9_soak_of_floyd_run_under_load_loses_no_request() {
    use rand::Rng;
    let kills: u32 = std::env::var("FLOYD_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let server = support::GitServer::daemon();
    let w = support::Work::clone(&server.url);
    let (web_port, api_port, preview) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let write_web = |v: u32| {
        w.write(
            "services/web.yaml",
            &soak_service("web", &format!("w{v}"), web_port, None),
        );
    };
    let write_api = |v: u32| {
        w.write(
            "services/api.yaml",
            &soak_service("api", &format!("a{v}"), api_port, Some(preview)),
        );
    };
    write_web(0);
    write_api(0);
    let first = w.commit("web and api");
    w.push();
    // The last commit that changed each service.
    let (mut web_tip, mut api_tip) = (first.clone(), first);
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let log = state.path().join("floyd.log");
    let port = support::free_port();
    let view = |name: &str| -> Option<serde_json::Value> {
        let (code, body) = http_get(port, &format!("/api/v1/services/{name}"))?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let complete_at = |name: &str, sha: &str| {
        view(name).is_some_and(|v| v["phase"] == "Complete" && v["commit"]["sha"] == sha)
    };
    let mut run = FloydRun(floyd_run(&server.url, port, &state_dir, &log));
    support::wait_for("web and api Complete", Duration::from_secs(60), || {
        complete_at("web", &web_tip) && complete_at("api", &api_tip)
    });

    // Load on both services and a sampler of the state file, until `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for p in [web_port, web_port, api_port, api_port] {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match status_of(p) {
                    Ok(200) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures
                        .lock()
                        .unwrap()
                        .push(format!("port {p}: {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    let state_file = state_dir.join("local/state.json");
    let peaks = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        usize,
    >::new()));
    let samples = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (stop, peaks, samples, state_file) = (
            stop.clone(),
            peaks.clone(),
            samples.clone(),
            state_file.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(live) = live_instances(&state_file) {
                    samples.fetch_add(1, Ordering::Relaxed);
                    let mut p = peaks.lock().unwrap();
                    for (s, n) in live {
                        let e = p.entry(s).or_default();
                        *e = (*e).max(n);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }

    let started = Instant::now();
    let mut rng = rand::rng();
    let mut dataplanes = std::collections::BTreeSet::new();
    let (mut web_rollouts, mut api_rollouts) = (0u32, 0u32);
    for k in 1..=kills {
        // A new version of web (a rolling update, often superseding one in
        // flight) or, every other time once its last rollout is done, of api
        // (blue-green; the engine keeps a superseded preview revision until
        // promotion, which is not what this scenario measures).
        if k % 2 == 0 {
            // Give the previous blue-green rollout (killed into as well) time to finish.
            let until = Instant::now() + Duration::from_secs(20);
            while !complete_at("api", &api_tip) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let tip = if k % 2 == 0 && complete_at("api", &api_tip) {
            api_rollouts += 1;
            write_api(api_rollouts);
            let tip = w.commit(&format!("api a{api_rollouts} (kill {k})"));
            api_tip = tip.clone();
            tip
        } else {
            web_rollouts += 1;
            write_web(web_rollouts);
            let tip = w.commit(&format!("web w{web_rollouts} (kill {k})"));
            web_tip = tip.clone();
            tip
        };
        let _ = tip;
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.push())) {
            // Someone else moved main: Floyd's log says what it pushed and why.
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = logs.lines().rev().take(80).collect();
            eprintln!(
                "floyd log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            std::panic::resume_unwind(e);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(200..2000)));
        let dp = std::fs::read(state_dir.join("local/dataplane.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["pid"].as_i64());
        dataplanes.insert(dp);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(run.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = run.0.wait();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        run = FloydRun(floyd_run(&server.url, port, &state_dir, &log));
        support::wait_for("floyd run answers again", Duration::from_secs(30), || {
            http_get(port, "/healthz").is_some()
        });
    }
    let kill_phase = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(complete_at("web", &web_tip) && complete_at("api", &api_tip)) {
        if Instant::now() > deadline {
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            panic!(
                "every rollout Complete at {web_tip} / {api_tip}: web {:?}\napi {:?}\nlog tail:\n{}",
                view("web"),
                view("api"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing orphaned: the instance processes are exactly the 4 recorded.
    let marker = state_dir.join("local").canonicalize().unwrap();
    let marker = marker.to_string_lossy();
    let recorded = || -> std::collections::BTreeSet<i64> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_file).unwrap_or_default())
                .unwrap_or_default();
        v["services"]
            .as_object()
            .into_iter()
            .flat_map(|s| s.values())
            .flat_map(|s| {
                s["instances"]
                    .as_object()
                    .into_iter()
                    .flat_map(|i| i.values())
            })
            .filter_map(|i| i["pid"].as_i64())
            .collect()
    };
    let running = || -> std::collections::BTreeSet<i64> {
        floyd::runtime::local::process::processes_with_marker(&marker)
            .into_iter()
            .map(i64::from)
            .collect()
    };
    support::wait_for(
        "4 instance processes, all recorded",
        Duration::from_secs(30),
        || {
            let r = running();
            r.len() == 4 && r == recorded()
        },
    );
    let dp_running =
        floyd::runtime::local::process::processes_with_env("FLOYD_DATAPLANE_STATE", &marker);
    assert_eq!(dp_running.len(), 1, "one dataplane: {dp_running:?}");
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::SeqCst);
    let peaks = peaks.lock().unwrap().clone();
    eprintln!(
        "kill -9 soak: {kills} kills in {kill_phase:?} ({web_rollouts} rolling, {api_rollouts} blue-green rollouts); {ok} requests answered 200, {} failed; \
         {} state samples, peak non-terminating instances {peaks:?}; dataplane pids seen {dataplanes:?}",
        failures.len(),
        samples.load(Ordering::SeqCst),
    );
    assert!(
        failures.is_empty(),
        "failed requests: {} e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 100, "{ok} requests");
    assert!(
        peaks.get("web").is_some_and(|n| *n <= 3),
        "web: replicas 2 + surge 1: {peaks:?}"
    );
    assert!(
        peaks.get("api").is_some_and(|n| *n <= 4),
        "api: 2 per colour: {peaks:?}"
    );
    assert_eq!(
        dataplanes.len(),
        1,
        "the same dataplane process throughout: {dataplanes:?}"
    );

    // A graceful stop takes everything down: instances and the dataplane.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = run.0.wait();
    support::wait_for("no process left", Duration::from_secs(20), || {
        running().is_empty()
            && floyd::runtime::local::process::processes_with_env("FLOYD_DATAPLANE_STATE", &marker)
                .is_empty()
    });
}
