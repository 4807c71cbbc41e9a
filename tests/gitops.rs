//! GitOps loop tests against real Git servers on 127.0.0.1: `git daemon`
//! with receive-pack and `git http-backend` behind an in-test HTTP bridge.

#[path = "gitops/support.rs"]
mod support;

#[path = "gitops/fake.rs"]
mod fake;

#[path = "gitops/harness.rs"]
mod harness;

#[path = "gitops/e2e.rs"]
mod e2e;

#[path = "gitops/policy_e2e.rs"]
mod policy_e2e;

#[path = "gitops/revert_facts.rs"]
mod revert_facts;

#[path = "gitops/fakehost.rs"]
mod fakehost;

#[path = "gitops/openapi.rs"]
mod openapi;

#[path = "gitops/githost.rs"]
mod githost;

use floyd::controller::policy::plan_revert;
use floyd::source::{Credentials, GitSource, RevertOutcome, RevertRequest, SourceConfig};
use support::{GitServer, Work};

const WEB_V1: &str = "web: v1\n";
const WEB_V2: &str = "web: v2\n";
const WEB_BAD: &str = "web: broken\n";

fn source(server: &GitServer, state: &std::path::Path) -> GitSource {
    GitSource::open(SourceConfig {
        url: server.url.clone(),
        branch: "main".into(),
        mirror: state.join("repo.git"),
        credentials: Credentials::default(),
    })
    .expect("mirror opens")
}

fn revert_req(service: &str, failed: &str, good: &str, files: &[&str]) -> RevertRequest {
    RevertRequest {
        service: service.into(),
        failed_commit: failed.into(),
        base: good.into(),
        files: files.iter().map(|s| s.to_string()).collect(),
        subdir: None,
        environment: None,
        failed_revision: "bbbbbbbbbb".into(),
        rolled_back_to: "aaaaaaaaaa".into(),
        reason: "progress deadline exceeded: 0 of 2 instances of bbbbbbbbbb became ready".into(),
        author_name: "Floyd".into(),
        author_email: "floyd@localhost".into(),
        render: None,
    }
}

/// Seeds: c0 (web v1 + api), returns (work, c0).
fn seed(server: &GitServer) -> (Work, String) {
    let w = Work::clone(&server.url);
    w.write("services/web.yaml", WEB_V1)
        .write("services/api.yaml", "api: v1\n");
    let c0 = w.commit("initial");
    w.push();
    (w, c0)
}

fn check_poll_fetch_export(server: GitServer) {
    let (w, c0) = seed(&server);
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    assert_eq!(src.local_tip().unwrap(), None);
    assert_eq!(src.remote_tip().unwrap(), c0);
    assert_eq!(src.poll().unwrap(), Some(c0.clone()), "first poll fetches");
    assert_eq!(src.poll().unwrap(), None, "nothing moved");
    w.write("services/web.yaml", WEB_V2);
    let c1 = w.commit("web: v2");
    w.push();
    assert_eq!(src.poll().unwrap(), Some(c1.clone()));
    assert_eq!(src.local_tip().unwrap(), Some(c1.clone()));
    let out = state.path().join("export");
    src.export(&c1, None, &out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("services/web.yaml")).unwrap(),
        WEB_V2
    );
    let sub = state.path().join("sub");
    src.export(&c0, Some(std::path::Path::new("services")), &sub)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(sub.join("web.yaml")).unwrap(),
        WEB_V1
    );
    let err = src
        .export(
            &c0,
            Some(std::path::Path::new("nope")),
            &state.path().join("x"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no directory nope"), "{err}");
    let info = src.commit_info(&c1).unwrap();
    assert_eq!(info.summary, "web: v2");
    assert_eq!(info.author, "Dev <dev@example.com>");
}

#[test]
fn daemon_poll_fetch_export() {
    check_poll_fetch_export(GitServer::daemon());
}

#[test]
fn http_backend_poll_fetch_export() {
    check_poll_fetch_export(GitServer::http());
}

fn check_revert_pushes_exact_commit(server: GitServer) {
    let (w, _c0) = seed(&server);
    w.write("services/web.yaml", WEB_V2);
    let good = w.commit("web: v2");
    w.write("services/api.yaml", "api: v2\n");
    let _unrelated = w.commit("api: v2");
    w.write("services/web.yaml", WEB_BAD);
    let bad = w.commit("web: break it");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    src.poll().unwrap();
    let out = src
        .revert(
            &revert_req("web", &bad, &good, &["services/web.yaml"]),
            plan_revert,
        )
        .unwrap();
    let RevertOutcome::Pushed {
        commit,
        reverted,
        attempts,
        ..
    } = out
    else {
        panic!("expected a pushed revert, got {out:?}");
    };
    assert_eq!(reverted, vec![bad.clone()]);
    assert_eq!(attempts, 1);
    assert_eq!(
        server.tip(),
        commit,
        "the remote branch moved to the revert"
    );
    assert_eq!(
        server.message(&commit),
        format!(
            "Revert \"web: break it\"\n\nThis reverts commit {bad}.\n\nFloyd rolled back web from revision bbbbbbbbbb to aaaaaaaaaa: progress deadline exceeded: 0 of 2 instances of bbbbbbbbbb became ready.\n\nFloyd-Revert-Of: {bad}\nFloyd-Service: web\nFloyd-Reason: progress deadline exceeded: 0 of 2 instances of bbbbbbbbbb became ready\n"
        )
    );
    assert_eq!(
        server.show(&format!("{commit}:services/web.yaml")) + "\n",
        WEB_V2
    );
    assert_eq!(
        server.show(&format!("{commit}:services/api.yaml")) + "\n",
        "api: v2\n",
        "unrelated change kept"
    );
    let author = support::git(
        &server.bare(),
        &["log", "-1", "--format=%an <%ae>|%cn <%ce>", &commit],
    );
    assert_eq!(author, "Floyd <floyd@localhost>|Floyd <floyd@localhost>");
    // The mirror already knows the revert: the next poll sees no change.
    assert_eq!(src.poll().unwrap(), None);
}

#[test]
fn daemon_revert_pushes_exact_commit() {
    check_revert_pushes_exact_commit(GitServer::daemon());
}

#[test]
fn http_backend_revert_pushes_exact_commit() {
    check_revert_pushes_exact_commit(GitServer::http());
}

#[test]
fn revert_of_several_commits_is_one_commit_newest_first() {
    let server = GitServer::daemon();
    let (w, good) = seed(&server);
    w.write("services/web.yaml", "web: v2\nreplicas: 3\n");
    let b1 = w.commit("web: v2");
    w.write("services/api.yaml", "api: v2\n");
    w.commit("api: v2");
    w.write("services/web.yaml", "web: v3\nreplicas: 3\n");
    let b2 = w.commit("web: v3");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    src.poll().unwrap();
    let out = src
        .revert(
            &revert_req("web", &b2, &good, &["services/web.yaml"]),
            plan_revert,
        )
        .unwrap();
    let RevertOutcome::Pushed {
        commit, reverted, ..
    } = out
    else {
        panic!("{out:?}");
    };
    assert_eq!(reverted, vec![b2.clone(), b1.clone()]);
    let msg = server.message(&commit);
    assert!(
        msg.starts_with(&format!(
            "Revert 2 commits that broke web\n\nThis reverts commit {b2}.\nThis reverts commit {b1}.\n\nFloyd rolled back web"
        )),
        "{msg}"
    );
    assert!(msg.ends_with(&format!(
        "Floyd-Revert-Of: {b2}\nFloyd-Revert-Of: {b1}\nFloyd-Service: web\nFloyd-Reason: progress deadline exceeded: 0 of 2 instances of bbbbbbbbbb became ready\n"
    )));
    assert_eq!(
        server.show(&format!("{commit}:services/web.yaml")) + "\n",
        WEB_V1
    );
    assert_eq!(
        server.show(&format!("{commit}:services/api.yaml")) + "\n",
        "api: v2\n"
    );
}

#[test]
fn racing_push_is_redone_on_the_new_tip() {
    let server = GitServer::daemon();
    let (w, _) = seed(&server);
    w.write("services/web.yaml", WEB_V2);
    let good = w.commit("web: v2");
    w.write("services/web.yaml", WEB_BAD);
    let bad = w.commit("web: break it");
    w.push();
    // Someone else's commit, on top of main, touching another service.
    w.write("services/api.yaml", "api: v3\n");
    let racer = w.commit("api: v3");
    w.push_to("racer");
    server.race_once_with("racer");

    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    src.poll().unwrap();
    let out = src
        .revert(
            &revert_req("web", &bad, &good, &["services/web.yaml"]),
            plan_revert,
        )
        .unwrap();
    let RevertOutcome::Pushed {
        commit, attempts, ..
    } = out
    else {
        panic!("{out:?}");
    };
    assert_eq!(attempts, 2, "first push rejected, redone on the new tip");
    let log = server.log();
    assert!(log[0].starts_with(&commit));
    assert!(
        log[1].starts_with(&racer),
        "the racing commit is kept, not overwritten: {log:?}"
    );
    assert_eq!(
        server.show(&format!("{commit}:services/web.yaml")) + "\n",
        WEB_V2
    );
    assert_eq!(
        server.show(&format!("{commit}:services/api.yaml")) + "\n",
        "api: v3\n"
    );
}

#[test]
fn racing_push_changing_the_same_service_means_no_revert() {
    let server = GitServer::daemon();
    let (w, _) = seed(&server);
    w.write("services/web.yaml", WEB_V2);
    let good = w.commit("web: v2");
    w.write("services/web.yaml", WEB_BAD);
    let bad = w.commit("web: break it");
    w.push();
    w.write("services/web.yaml", "web: fixed by a person\n");
    let fix = w.commit("web: fix");
    w.push_to("racer");
    server.race_once_with("racer");

    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    src.poll().unwrap();
    let out = src
        .revert(
            &revert_req("web", &bad, &good, &["services/web.yaml"]),
            plan_revert,
        )
        .unwrap();
    assert_eq!(
        out,
        RevertOutcome::ChangedSince {
            commits: vec![fix.clone()]
        }
    );
    assert_eq!(server.tip(), fix, "nothing pushed over the person's fix");
}

#[test]
fn nothing_to_revert_when_the_service_files_did_not_change() {
    let server = GitServer::daemon();
    let (w, good) = seed(&server);
    w.write("services/api.yaml", "api: v2\n");
    let other = w.commit("api: v2");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    src.poll().unwrap();
    let out = src
        .revert(
            &revert_req("web", &other, &good, &["services/web.yaml"]),
            plan_revert,
        )
        .unwrap();
    assert_eq!(out, RevertOutcome::NothingToRevert);
    assert_eq!(server.tip(), other);
}

#[test]
fn server_down_is_an_error_and_recovers() {
    let mut server = GitServer::daemon();
    let (w, c0) = seed(&server);
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    assert_eq!(src.poll().unwrap(), Some(c0));
    server.stop();
    let err = src.poll().unwrap_err();
    assert!(err.to_string().contains("git://127.0.0.1"), "{err}");
    server.start();
    w.write("services/web.yaml", WEB_V2);
    let c1 = w.commit("web: v2");
    w.push();
    assert_eq!(src.poll().unwrap(), Some(c1));
}

#[test]
fn credentials_never_appear_in_errors() {
    let state = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let src = GitSource::open(SourceConfig {
        url: format!("http://user:s3cr3t-token@127.0.0.1:{port}/cfg.git"),
        branch: "main".into(),
        mirror: state.path().join("repo.git"),
        credentials: Credentials::default(),
    })
    .unwrap();
    assert!(!format!("{src:?}").contains("s3cr3t"));
    let err = src.poll().unwrap_err().to_string();
    assert!(!err.contains("s3cr3t"), "{err}");
    assert!(err.contains("***@127.0.0.1"), "{err}");
}

mod process {
    //! The `floyd` binary itself: `demo --scenario` and `run` with SIGTERM.
    use super::support::{self, GitServer, Work};
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn floyd() -> Command {
        Command::new(env!("CARGO_BIN_EXE_floyd"))
    }

    /// Waits for the child up to `timeout`; kills it after that.
    fn wait_child(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn demo_scenario_tells_the_whole_story_and_exits_0() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = floyd()
            .args(["demo", "--scenario", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.path().join("demo"))
            .arg("--examples")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples-repo"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let code = wait_child(&mut child, Duration::from_secs(300));
        let stdout = reader.join().unwrap();
        let mut stderr = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
        for needle in [
            "dashboard      http://127.0.0.1:",
            "controller log ",
            "✓ web runs revision",
            // The canary act: every step, as it happens, with its weight.
            "3. A canary: shop 3.2.0",
            "canary    step 1/6  setWeight 10",
            "canary    step 2/6  pause 4s               weight  10%",
            "canary    step 3/6  analysis",
            "canary    step 4/6  setWeight 50",
            "canary    step 5/6  pause 4s               weight  50%",
            "canary    step 6/6  analysis",
            "traffic: 100 requests: ",
            "answered by 3.2.0",
            "✓ canary complete: shop runs revision",
            "✓ rollout of",
            "✓ rolled back to",
            "Revert \"web: 1.5.0\"",
            "| Floyd-Revert-Of: ",
            "| Floyd-Service: web",
            "✓ scenario complete",
        ] {
            assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
        }
        // The scenario pushes by itself and exits: no instructions to push by
        // hand; the controller's logs are in the file, not in the story.
        assert!(!stdout.contains("git clone "), "{stdout}");
        for level in [" INFO ", " WARN ", " ERROR "] {
            assert!(
                !stdout.contains(level) && !stderr.contains(level),
                "{stdout}{stderr}"
            );
        }
        let log =
            std::fs::read_to_string(dir.path().join("demo/floyd.log")).expect("demo/floyd.log");
        assert!(log.contains("floyd is running"), "{log}");
        assert!(
            stdout.contains(&format!(
                "controller log {}",
                dir.path()
                    .join("demo")
                    .canonicalize()
                    .unwrap()
                    .join("floyd.log")
                    .display()
            )),
            "{stdout}"
        );
    }

    #[test]
    fn run_serves_until_sigterm_then_stops_instances() {
        let server = GitServer::daemon();
        let port = support::free_port();
        let w = Work::clone(&server.url);
        w.write(
            "services/hello.yaml",
            &format!(
                "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: hello
spec:
  replicas: 1
  template:
    command: [\"${{FLOYD_BIN}}\", \"sample-app\", \"--version\", \"v1\"]
    terminationGracePeriodSeconds: 2
  ports:
    - {{ name: http, port: {port} }}
  health:
    readiness: {{ http: {{ path: /healthz, port: http }}, periodSeconds: 1 }}
  progressDeadlineSeconds: 30
"
            ),
        );
        w.commit("hello v1");
        w.push();
        let state = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", support::free_port());
        // Secrets that must never reach a log line.
        const WEBHOOK_SECRET: &str = "wh-secret-5d1e0c9a77";
        const API_TOKEN: &str = "api-token-8f3b2a6c41";
        let secret_file = state.path().join("webhook-secret");
        let token_file = state.path().join("api-token");
        std::fs::write(&secret_file, WEBHOOK_SECRET).unwrap();
        std::fs::write(&token_file, API_TOKEN).unwrap();
        let mut child = floyd()
            .env("RUST_LOG", "debug")
            .args([
                "run",
                "--repo",
                &server.url,
                "--listen",
                &listen,
                "--poll-interval",
                "1s",
                "--state-dir",
            ])
            .arg(state.path())
            .arg("--webhook-secret-file")
            .arg(&secret_file)
            .arg("--api-token-file")
            .arg(&token_file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let get = |path: &str| -> Option<String> {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(&listen).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(c, "GET {path} HTTP/1.0\r\nHost: {listen}\r\n\r\n").ok()?;
            let mut resp = String::new();
            c.read_to_string(&mut resp).ok()?;
            let (head, body) = resp.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.0 200")
                .then(|| body.to_string())
                .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
        };
        support::wait_for(
            "hello Complete via the API",
            Duration::from_secs(60),
            || get("/api/v1/services/hello").is_some_and(|b| b.contains("\"Complete\"")),
        );
        assert!(get("/readyz").is_some());
        // Requests that carry the secrets (a signed webhook, a bearer token,
        // and wrong ones), so any leak would show in the log below.
        let post = |path: &str, headers: &str, body: &str| -> String {
            use std::io::Write;
            let Ok(mut c) = std::net::TcpStream::connect(&listen) else {
                return String::new();
            };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                c,
                "POST {path} HTTP/1.0\r\nHost: {listen}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut resp = String::new();
            let _ = c.read_to_string(&mut resp);
            resp.lines().next().unwrap_or_default().to_string()
        };
        let body =
            r#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}"#;
        let sig = {
            use hmac::Mac;
            let mut m =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
            m.update(body.as_bytes());
            hex::encode(m.finalize().into_bytes())
        };
        let ok = post(
            "/hooks/github",
            &format!(
                "X-Hub-Signature-256: sha256={sig}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: d-1\r\n"
            ),
            body,
        );
        assert!(ok.contains(" 202"), "signed webhook accepted: {ok}");
        let bad = post(
            "/hooks/github",
            &format!(
                "X-Hub-Signature-256: sha256={}\r\nX-GitHub-Event: push\r\n",
                "0".repeat(64)
            ),
            body,
        );
        assert!(bad.contains(" 401"), "wrong signature refused: {bad}");
        let denied = post(
            "/api/v1/services/hello/pause",
            "Authorization: Bearer not-the-token\r\n",
            "",
        );
        assert!(denied.contains(" 401"), "wrong token refused: {denied}");
        let paused = post(
            "/api/v1/services/hello/pause",
            &format!("Authorization: Bearer {API_TOKEN}\r\n"),
            "",
        );
        assert!(
            !paused.contains(" 401"),
            "the right token is accepted: {paused}"
        );
        // The service answers through the local runtime's load balancer.
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "service port {port} serves"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let code = wait_child(&mut child, Duration::from_secs(30));
        let mut stderr = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        assert_eq!(code, Some(0), "clean shutdown; stderr:\n{stderr}");
        assert!(stderr.lines().count() > 5, "debug logging was on: {stderr}");
        for (i, line) in stderr.lines().enumerate() {
            assert!(
                !line.contains(WEBHOOK_SECRET) && !line.contains(API_TOKEN),
                "log line {i} leaks a secret: {line}"
            );
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "instances and load balancer stopped"
        );
        assert!(state.path().join("floyd.redb").exists(), "state persisted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_a_watched_local_repo_triggers_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    support::git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join("a.txt"), "1").unwrap();
    support::git(dir.path(), &["add", "-A"]);
    support::git(dir.path(), &["commit", "-q", "-m", "one"]);
    let hub = std::sync::Arc::new(floyd::hub::Hub::new());
    let mut triggers = hub.take_fetch_triggers().unwrap();
    let _watch = floyd::source::watch::watch_repo(
        dir.path(),
        hub.clone(),
        std::time::Duration::from_millis(100),
    )
    .unwrap();
    // Nothing happened yet: no trigger.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), triggers.recv())
            .await
            .is_err()
    );
    std::fs::write(dir.path().join("a.txt"), "2").unwrap();
    support::git(dir.path(), &["commit", "-q", "-am", "two"]);
    let t = tokio::time::timeout(std::time::Duration::from_secs(10), triggers.recv())
        .await
        .expect("a trigger within 10 s of the commit")
        .unwrap();
    assert_eq!(t.source, "watch");
    // Debounced: one commit, one trigger.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), triggers.recv())
            .await
            .is_err()
    );
}

/// Rendering a commit straight from the mirror, reusing unchanged files,
/// gives exactly what exporting it and loading the directory gives.
#[test]
fn incremental_render_matches_a_fresh_load_of_each_commit() {
    use floyd::manifest::tree::{IncrementalRenderer, RenderStats};
    let server = GitServer::daemon();
    let w = Work::clone(&server.url);
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    let svc = |name: &str, version: &str| {
        format!(
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: {{ name: {name} }}\nspec:\n  template:\n    command: [app, --version, \"{version}\"]\n"
        )
    };
    let templated = "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec:\n  replicas: {{ values.replicas }}\n  template:\n    command: [app, --version, \"{{ values.version }}\"]\n";
    let config = |replicas: u32| {
        format!(
            "values:\n  replicas: {replicas}\n  version: \"1.0\"\nenvironments:\n  prod:\n    values:\n      replicas: 5\n"
        )
    };
    let mut fresh_n = 0;
    let mut check = |sha: &str, inc: &mut IncrementalRenderer, env: Option<&str>| {
        fresh_n += 1;
        let dir = state.path().join(format!("fresh-{fresh_n}"));
        src.export(sha, None, &dir).unwrap();
        let fresh = floyd::manifest::load_release(&dir, env).map_err(|e| e.to_string());
        let got = src
            .render(sha, None, inc)
            .unwrap()
            .map_err(|e| e.to_string());
        assert_eq!(got, fresh, "commit {sha}");
        got
    };
    let (mut base, mut prod) = (
        IncrementalRenderer::new(None),
        IncrementalRenderer::new(Some("prod")),
    );

    w.write("floyd.yaml", &config(2))
        .write("services/web.yaml", templated)
        .write("services/api.yaml", &svc("api", "1"))
        .write("services/team/worker.yml", &svc("worker", "1"))
        .write("services/.draft.yaml", "not: [valid")
        .write("services/README.md", "docs");
    let c0 = w.commit("c0");
    w.push();
    src.poll().unwrap();
    let r = check(&c0, &mut base, None).unwrap();
    assert_eq!(r.services.len(), 3);
    assert_eq!(
        base.stats(),
        RenderStats {
            rendered: 3,
            reused: 0
        }
    );
    assert_eq!(
        check(&c0, &mut prod, Some("prod"))
            .unwrap()
            .service("web")
            .unwrap()
            .spec
            .replicas,
        5
    );

    // One plain file changes: only it is read again.
    w.write("services/api.yaml", &svc("api", "2"));
    let c1 = w.commit("c1");
    w.push();
    src.poll().unwrap();
    check(&c1, &mut base, None).unwrap();
    assert_eq!(
        base.stats(),
        RenderStats {
            rendered: 1,
            reused: 2
        }
    );
    check(&c1, &mut prod, Some("prod")).unwrap();

    // floyd.yaml changes: templated files render again, plain ones do not.
    w.write("floyd.yaml", &config(3));
    let c2 = w.commit("c2");
    w.push();
    src.poll().unwrap();
    let r = check(&c2, &mut base, None).unwrap();
    assert_eq!(r.service("web").unwrap().spec.replicas, 3);
    assert_eq!(
        base.stats(),
        RenderStats {
            rendered: 1,
            reused: 2
        }
    );

    // A broken file and a duplicate name: the same diagnostics either way.
    w.write(
        "services/api.yaml",
        "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: api }\nspec:\n  replicas: -1\n",
    )
    .write("services/team/dup.yaml", &svc("worker", "9"));
    let c3 = w.commit("c3");
    w.push();
    src.poll().unwrap();
    let err = check(&c3, &mut base, None).unwrap_err();
    assert!(err.contains("duplicate service name"), "{err}");
    assert!(err.contains("services/api.yaml:5:"), "{err}");

    // Fixed and the duplicate removed: the removed file is forgotten.
    w.write("services/api.yaml", &svc("api", "3"))
        .remove("services/team/dup.yaml");
    let c4 = w.commit("c4");
    w.push();
    src.poll().unwrap();
    assert_eq!(check(&c4, &mut base, None).unwrap().services.len(), 3);
    assert_eq!(
        base.stats(),
        RenderStats {
            rendered: 1,
            reused: 2
        }
    );

    // Going back to an older commit reuses what it can.
    check(&c0, &mut base, None).unwrap();

    // Every manifest gone: refused, like a fresh load.
    w.remove("services/web.yaml")
        .remove("services/api.yaml")
        .remove("services/team/worker.yml");
    let c5 = w.commit("c5");
    w.push();
    src.poll().unwrap();
    let err = check(&c5, &mut base, None).unwrap_err();
    assert!(err.contains("no *.yaml or *.yml manifests"), "{err}");
}

/// A symlinked manifest is read through the link inside the commit; a link
/// leading out of the repository is an error naming the file.
#[test]
fn render_follows_symlinks_inside_the_commit_only() {
    use floyd::manifest::tree::IncrementalRenderer;
    let server = GitServer::daemon();
    let w = Work::clone(&server.url);
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    w.write(
        "shared/api.yaml",
        "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: api }\nspec:\n  template:\n    command: [app]\n",
    );
    std::fs::create_dir_all(w.path().join("services")).unwrap();
    std::os::unix::fs::symlink("../shared/api.yaml", w.path().join("services/api.yaml")).unwrap();
    let c0 = w.commit("link");
    w.push();
    src.poll().unwrap();
    let mut inc = IncrementalRenderer::new(None);
    let r = src.render(&c0, None, &mut inc).unwrap().unwrap();
    assert_eq!(r.services.len(), 1);
    assert_eq!(r.services[0].name.as_str(), "api");

    std::os::unix::fs::symlink("../../../etc/passwd", w.path().join("services/evil.yaml")).unwrap();
    let c1 = w.commit("evil link");
    w.push();
    src.poll().unwrap();
    let err = src
        .render(&c1, None, &mut inc)
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("services/evil.yaml"), "{err}");
    assert!(err.contains("outside"), "{err}");
}

/// A webhook delivery retried after a controller restart is still a
/// duplicate: the ids live in the state directory's store.
#[test]
fn webhook_delivery_ids_survive_a_restart() {
    use floyd::hub::Hub;
    use floyd::store::Store;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    {
        let hub = Hub::new();
        hub.persist_deliveries(Arc::new(Store::open(dir.path()).unwrap()));
        assert!(hub.first_delivery("github:abc"));
        assert!(!hub.first_delivery("github:abc"));
    }
    let hub = Hub::new();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    hub.persist_deliveries(store.clone());
    assert!(!hub.first_delivery("github:abc"), "seen before the restart");
    assert!(hub.first_delivery("gitlab:abc"), "ids are per provider");
    // Without the store, a fresh hub knows nothing.
    assert!(Hub::new().first_delivery("github:abc"));
}

/// `--path`: the config repo is a directory of a bigger repository.
#[test]
fn render_reads_only_the_config_directory_given_by_path() {
    use floyd::manifest::tree::IncrementalRenderer;
    use std::path::Path;
    let server = GitServer::daemon();
    let w = Work::clone(&server.url);
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    let svc = |name: &str| {
        format!(
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: {{ name: {name} }}\nspec:\n  replicas: {{{{ values.n }}}}\n  template:\n    command: [app]\n"
        )
    };
    w.write("deploy/floyd.yaml", "values:\n  n: 3\n")
        .write("deploy/services/api.yaml", &svc("api"))
        .write("services/outside.yaml", "not even: [yaml")
        .write("src/main.rs", "fn main() {}\n");
    let c0 = w.commit("monorepo");
    w.push();
    src.poll().unwrap();
    let mut inc = IncrementalRenderer::new(None);
    let r = src
        .render(&c0, Some(Path::new("deploy")), &mut inc)
        .unwrap()
        .unwrap();
    assert_eq!(r.services.len(), 1);
    assert_eq!(r.services[0].spec.replicas, 3, "deploy/floyd.yaml's values");
    assert_eq!(
        r.services[0].file.as_deref(),
        Some(Path::new("services/api.yaml"))
    );
    let err = src
        .render(
            &c0,
            Some(Path::new("nope")),
            &mut IncrementalRenderer::new(None),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no directory nope (check --path)"), "{err}");
    let err = src
        .render(
            &c0,
            Some(Path::new("src/main.rs")),
            &mut IncrementalRenderer::new(None),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a directory"), "{err}");
}

#[path = "gitops/render_revert.rs"]
mod render_revert;
