//! The real `floyd` binary against a fixture server.

use crate::fixture::*;
use floyd::engine::{Command, Phase};
use std::process::Output;

async fn floyd(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args(args)
        .env_remove("FLOYD_SERVER")
        .env_remove("FLOYD_API_TOKEN_FILE")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT, child)
        .await
        .expect("floyd finished in time")
        .expect("run floyd")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_table_and_json() {
    let s = Server::start().await;
    s.hub.set_service(view("web", Phase::Progressing));
    s.hub.set_service(complete("api"));
    let out = floyd(&["status", "--server", &s.url]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3, "{t}");
    for col in ["SERVICE", "PHASE", "REVISIONS", "READY", "COMMIT"] {
        assert!(lines[0].contains(col), "{t}");
    }
    assert!(
        lines[1].starts_with("api ") && lines[1].contains("Complete") && lines[1].contains("4/4")
    );
    assert!(lines[2].starts_with("web ") && lines[2].contains("aaaaaaaa → bbbbbbbb"));
    assert!(
        lines[2].contains("2/4") && lines[2].contains("0123456 web: bump to 1.4.2"),
        "{t}"
    );

    let out = floyd(&["status", "--server", &s.url, "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["services"][1]["name"], "web");

    // A failed service: exit 1.
    s.hub.set_service(view("pay", Phase::Failed));
    let out = floyd(&["status", "--server", &s.url]).await;
    assert_eq!(out.status.code(), Some(1));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_marks_reverts() {
    let s = Server::start().await;
    s.hub.set_service(complete("web"));
    let mut failed = entry("web", Phase::Failed, 100);
    failed.reason = "progress deadline exceeded".into();
    s.hub.record_history(failed);
    let mut rb = entry("web", Phase::Complete, 200);
    rb.rollback = true;
    rb.revert_commit = Some("fedcba9876543210".into());
    s.hub.record_history(rb);
    let out = floyd(&["history", "web", "--server", &s.url]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3, "{t}");
    assert!(lines[1].contains("rollback; revert fedcba9"), "{t}");
    assert!(lines[2].contains("Failed") && lines[2].contains("progress deadline exceeded"));
    assert!(lines[2].contains("42s"), "{t}");

    // An unknown service is invalid input: exit 2.
    let out = floyd(&["history", "nope", "--server", &s.url]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    s.shutdown().await;
}

/// Plays a rollout once `watch` has subscribed: 3/4, then 4/4 Complete
/// (or Failed).
async fn play(s: &Server, end: Phase) {
    let hub = s.hub.clone();
    eventually("watch subscribed", || hub.subscriber_count() >= 1).await;
    // Give the client time to read its snapshot after subscribing.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut v = view("web", Phase::Progressing);
    v.revisions[0].ready = 3;
    v.revisions[0].available = 3;
    v.revisions[0].live = 4;
    v.revisions[1].desired = 1;
    s.hub.set_service(v.clone());
    let mut last = if end == Phase::Complete {
        complete("web")
    } else {
        let mut f = v.clone();
        f.phase = end;
        f.reason = "readiness probe failed 3 times".into();
        f
    };
    last.name = "web".into();
    // An unrelated service's event must not confuse the watch.
    s.hub.set_service(view("other", Phase::Failed));
    s.hub.set_service(last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_until_complete_plain_lines() {
    let s = Server::start().await;
    s.hub.set_service(view("web", Phase::Progressing));
    let url = s.url.clone();
    let watch = tokio::spawn(async move { floyd(&["watch", "web", "--server", &url]).await });
    play(&s, Phase::Complete).await;
    let out = watch.await.expect("watch task");
    let t = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{t}{}", text(&out.stderr));
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines.len() >= 3, "{t}");
    assert!(
        lines[0].contains("web Progressing aaaaaaaa → bbbbbbbb [bbbbbbbb: 2/4 ready"),
        "{t}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("bbbbbbbb: 3/4 ready, 1 starting")),
        "{t}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("web Complete bbbbbbbb [bbbbbbbb: 4/4 ready]")),
        "{t}"
    );
    assert!(!t.contains("other"), "{t}");
    assert!(
        !t.contains('\u{1b}'),
        "escape codes when stdout is not a terminal: {t}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_failed_exits_1() {
    let s = Server::start().await;
    s.hub.set_service(view("web", Phase::Progressing));
    let url = s.url.clone();
    let watch = tokio::spawn(async move { floyd(&["watch", "web", "--server", &url]).await });
    play(&s, Phase::Failed).await;
    let out = watch.await.expect("watch task");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("Failed"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_abort_with_token_file() {
    let s = Server::start().await;
    s.hub.set_service(view("llm", Phase::AwaitingPromotion));
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    let tok = token.to_str().expect("utf-8 path");

    // No token: invalid input, exit 2.
    let out = floyd(&["promote", "llm", "--server", &s.url]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("401") && err.contains("--api-token-file"),
        "{err}"
    );

    let out = floyd(&[
        "promote",
        "llm",
        "--server",
        &s.url,
        "--api-token-file",
        tok,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "promote llm: accepted");

    let out = floyd(&[
        "abort",
        "llm",
        "--server",
        &s.url,
        "--api-token-file",
        tok,
        "-o",
        "json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["command"], "abort");
    // Already rolled back: the controller refuses, the CLI says why.
    let out = floyd(&["pause", "llm", "--server", &s.url, "--api-token-file", tok]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("409"), "{}", text(&out.stderr));
    assert_eq!(
        s.commands.lock().expect("log").clone(),
        vec![
            ("llm".to_string(), Command::Promote),
            ("llm".to_string(), Command::Abort),
            ("llm".to_string(), Command::Pause)
        ]
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_one_line_exit_3() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let examples = examples_repo();
    for args in [
        vec!["status", "--server", &url],
        vec!["history", "web", "--server", &url],
        vec!["watch", "web", "--server", &url],
        vec!["abort", "web", "--server", &url],
        vec!["diff", &examples, "--server", &url],
    ] {
        let out = floyd(&args).await;
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("cannot reach Floyd at"), "{err}");
    }
    let out = floyd(&["status", "--server", &url, "-o", "yaml"]).await;
    assert_eq!(out.status.code(), Some(2));
}

fn examples_repo() -> String {
    format!("{}/examples-repo", env!("CARGO_MANIFEST_DIR"))
}

/// The live view of a service exactly as `release` renders it.
fn settled(s: &floyd::manifest::Service) -> floyd::hub::ServiceView {
    let mut v = complete(s.name.as_str());
    v.replicas = s.spec.replicas;
    v.current_revision = Some(s.revision.clone());
    v.target_revision = Some(s.revision.clone());
    v.revisions = vec![counts(
        s.revision.as_str(),
        s.spec.replicas,
        s.spec.replicas,
        0,
    )];
    v
}

/// One convention for every command (issue #20): 0 success or nothing to
/// report, 1 the negative answer, 2 usage or invalid input, 3 the server
/// cannot be reached. Each command's `--help` says what its codes mean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_per_command() {
    let s = Server::start().await;
    let ex = examples_repo();
    let down = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        format!("http://127.0.0.1:{port}")
    };
    let bad = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(bad.path().join("services")).expect("dir");
    std::fs::write(
        bad.path().join("services/x.yaml"),
        "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: x }\nspec: { replicas: -1, template: { command: [x] } }\n",
    )
    .expect("write");
    let bad = bad.path().to_str().expect("utf-8").to_string();

    let code = |out: Output| out.status.code();
    // status: 0 healthy / none, 1 unhealthy, 2 usage, 3 unreachable.
    assert_eq!(code(floyd(&["status", "--server", &s.url]).await), Some(0));
    // diff: changes against an empty server.
    assert_eq!(
        code(floyd(&["diff", &ex, "--server", &s.url]).await),
        Some(1)
    );
    let release = floyd::manifest::load_release(std::path::Path::new(&ex), None).expect("examples");
    for svc in &release.services {
        s.hub.set_service(settled(svc));
    }
    let out = floyd(&["diff", &ex, "--server", &s.url]).await;
    assert_eq!(code(out), Some(0));
    assert_eq!(
        code(floyd(&["diff", &bad, "--server", &s.url]).await),
        Some(2)
    );
    assert_eq!(code(floyd(&["status", "--server", &s.url]).await), Some(0));
    s.hub.set_service(view("pay", Phase::Degraded));
    assert_eq!(code(floyd(&["status", "--server", &s.url]).await), Some(1));
    assert_eq!(
        code(floyd(&["status", "--server", &s.url, "-o", "yaml"]).await),
        Some(2)
    );
    assert_eq!(
        code(floyd(&["status", "--server", "localhost"]).await),
        Some(2)
    );
    assert_eq!(code(floyd(&["status", "--server", &down]).await), Some(3));
    // watch: a settled Complete service is nothing to wait for; unknown: 2.
    assert_eq!(
        code(floyd(&["watch", "web", "--server", &s.url]).await),
        Some(0)
    );
    assert_eq!(
        code(floyd(&["watch", "pay", "--server", &s.url]).await),
        Some(1)
    );
    assert_eq!(
        code(floyd(&["watch", "nope", "--server", &s.url]).await),
        Some(2)
    );
    assert_eq!(
        code(floyd(&["watch", "web", "--server", &down]).await),
        Some(3)
    );
    assert_eq!(
        code(floyd(&["history", "web", "--server", &s.url]).await),
        Some(0)
    );
    assert_eq!(
        code(floyd(&["history", "web", "--server", &down]).await),
        Some(3)
    );
    // Manual controls: refused 1, unknown service or no token 2.
    let tok_dir = tempfile::tempdir().expect("tmp");
    let tok = tok_dir.path().join("token");
    std::fs::write(&tok, TOKEN).expect("token");
    let tok = tok.to_str().expect("utf-8");
    let control = |svc: &'static str| {
        let url = s.url.clone();
        let tok = tok.to_string();
        async move { floyd(&["pause", svc, "--server", &url, "--api-token-file", &tok]).await }
    };
    assert_eq!(code(control("web").await), Some(1));
    assert_eq!(code(control("nope").await), Some(2));
    assert_eq!(
        code(floyd(&["pause", "web", "--server", &s.url]).await),
        Some(2)
    );
    assert_eq!(
        code(floyd(&["pause", "web", "--server", &down, "--api-token-file", tok]).await),
        Some(3)
    );
    // Read-only commands do not take a token.
    assert_eq!(
        code(
            floyd(&[
                "status",
                "--server",
                &s.url,
                "--api-token-file",
                "/dev/null"
            ])
            .await
        ),
        Some(2)
    );
    // Offline commands.
    assert_eq!(code(floyd(&["validate", &ex]).await), Some(0));
    assert_eq!(code(floyd(&["validate", &bad]).await), Some(2));
    assert_eq!(code(floyd(&["render", &ex]).await), Some(0));
    assert_eq!(code(floyd(&["render", &bad]).await), Some(2));
    let sims = format!("{ex}/simulations");
    assert_eq!(
        code(floyd(&["simulate", &format!("{sims}/rolling-10.yaml")]).await),
        Some(0)
    );
    assert_eq!(
        code(floyd(&["simulate", &format!("{sims}/failing-rollback.yaml")]).await),
        Some(1)
    );
    assert_eq!(
        code(floyd(&["simulate", &format!("{bad}/services/x.yaml")]).await),
        Some(2)
    );
    assert_eq!(
        code(floyd(&["logs", "web", "--state-dir", &bad]).await),
        Some(2)
    );
    assert_eq!(code(floyd(&["reference"]).await), Some(0));
    assert_eq!(code(floyd(&["no-such-command"]).await), Some(2));
    assert_eq!(code(floyd(&["--help"]).await), Some(0));
    // Every command's --help states its exit codes.
    let out = floyd(&["--help"]).await;
    assert!(
        words(&out.stdout).contains("3 cannot reach the server or the repository"),
        "{}",
        text(&out.stdout)
    );
    for cmd in [
        "run",
        "demo",
        "validate",
        "render",
        "diff",
        "status",
        "history",
        "watch",
        "promote",
        "abort",
        "pause",
        "resume",
        "simulate",
        "logs",
        "sample-app",
        "reference",
    ] {
        let out = floyd(&[cmd, "--help"]).await;
        assert_eq!(code(out.clone()), Some(0), "{cmd}");
        assert!(
            words(&out.stdout).contains("Exit codes: 0 "),
            "{cmd} --help: {}",
            text(&out.stdout)
        );
    }
    s.shutdown().await;
}

/// docs/cli.md is what `floyd reference` prints (regenerate it with
/// `cargo run -- reference > docs/cli.md`), and man pages render.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reference_is_up_to_date() {
    let out = floyd(&["reference"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let path = format!("{}/docs/cli.md", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("FLOYD_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &out.stdout).expect("write docs/cli.md");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == text(&out.stdout),
        "docs/cli.md is out of date: run `cargo run -- reference > docs/cli.md` (or FLOYD_UPDATE_DOCS=1 cargo nextest run --test observe cli_reference)"
    );
    let man = tempfile::tempdir().expect("tmp");
    let out = floyd(&["reference", "--man", man.path().to_str().expect("utf-8")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = std::fs::read_to_string(man.path().join("floyd-run.1")).expect("floyd-run.1");
    assert!(
        run.contains(".TH floyd-run") && run.contains("state\\-dir"),
        "{run}"
    );
    assert!(man.path().join("floyd.1").exists());
    assert!(
        !man.path().join("floyd-bench.1").exists(),
        "hidden commands get no page"
    );
}

/// The text with every run of whitespace as one space (help output wraps).
fn words(b: &[u8]) -> String {
    text(b).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `floyd diff` predicts each rollout of the examples repo from what the
/// controller observed (start-up samples, GPU capacity), and says so when a
/// rollout cannot fit; `GET /api/v1/services/{name}/plan` gives the same
/// prediction for the synced commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_predicts_each_rollout_of_the_examples_repo() {
    use floyd::manifest::Revision;
    use floyd::runtime::GpuCapacity;
    let s = Server::start().await;
    let ex = examples_repo();
    let release = floyd::manifest::load_release(std::path::Path::new(&ex), None).expect("examples");
    let old = Revision("0000000000".into());
    let samples = || {
        [("i1", 1.5), ("i2", 2.5), ("i3", 3.0)]
            .map(|(i, s)| (i.to_string(), s, 1))
            .into_iter()
    };
    let cap = |exist, free, held| GpuCapacity {
        kind: "NVIDIA-A100-SXM4-80GB".into(),
        exist,
        free,
        held_by_service: held,
    };
    for svc in &release.services {
        let mut v = settled(svc);
        v.current_revision = Some(old.clone());
        v.target_revision = Some(old.clone());
        s.hub.set_service(v);
        let gpu = svc.spec.gpu().map(|_| cap(4, 2, 2));
        s.hub
            .note_plan(svc.name.as_str(), &svc.spec, &old, None, gpu, samples());
    }
    let out = floyd(&["diff", &ex, "--server", &s.url, "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let changes = v["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), release.services.len());
    for ch in changes {
        let name = ch["service"].as_str().unwrap();
        let svc = release.service(name).unwrap();
        let p = &ch["prediction"];
        assert_eq!(ch["change"], "rollout", "{name}");
        assert_eq!(p["timing"]["source"], "observed", "{name}");
        assert_eq!(p["timing"]["samples"], 3, "{name}");
        assert_eq!(p["timing"]["startupP50Seconds"], 2.5, "{name}");
        assert!(p["infeasible"].is_null(), "{name}: {p}");
        let p50 = p["durationP50Seconds"].as_f64().expect("p50");
        let p90 = p["durationP90Seconds"].as_f64().expect("p90");
        // At least one start-up plus minReadySeconds; slower start-ups
        // never make it faster.
        let floor = 2.5 + f64::from(svc.spec.min_ready_seconds);
        assert!(p50 >= floor && p90 >= p50, "{name}: {p50} {p90}");
        let waves = p["waves"].as_array().expect("waves");
        assert!(!waves.is_empty(), "{name}");
        if svc.spec.strategy_name() != "Canary" {
            assert_eq!(
                waves.last().unwrap()["newDesired"],
                svc.spec.replicas,
                "{name}: {waves:?}"
            );
        }
        match name {
            // Two 20 s pauses between the canary's steps.
            "shop" => assert!(p50 >= 40.0, "{p50}"),
            "inference" => {
                let g = &p["gpu"];
                assert_eq!(
                    (g["freeNow"].as_u64(), g["heldNow"].as_u64()),
                    (Some(2), Some(2))
                );
                let peak = g["peak"].as_u64().unwrap();
                assert!((2..=4).contains(&peak), "{g}");
            }
            _ => assert!(p["gpu"].is_null(), "{name}"),
        }
    }
    let out = floyd(&["diff", &ex, "--server", &s.url]).await;
    let t = text(&out.stdout);
    assert_eq!(
        t.matches("wave(s), about").count(),
        release.services.len(),
        "{t}"
    );

    // No GPU to spare and fewer than the service needs: infeasible, with the numbers.
    let inference = release.service("inference").unwrap();
    s.hub.note_plan(
        "inference",
        &inference.spec,
        &old,
        None,
        Some(cap(1, 0, 1)),
        samples(),
    );
    let out = floyd(&["diff", &ex, "--server", &s.url]).await;
    let t = text(&out.stdout);
    let replicas = inference.spec.replicas;
    assert!(
        t.contains(&format!(
            "INFEASIBLE: needs {replicas} NVIDIA-A100-SXM4-80GB unit(s) ({replicas} replicas × 1); 0 free + 1 held by inference = 1 usable of 1 that exist"
        )),
        "{t}"
    );

    // The API: the prediction for the synced commit, and the inputs.
    let plan: serde_json::Value = reqwest::get(format!("{}/api/v1/services/web/plan", s.url))
        .await
        .expect("plan")
        .json()
        .await
        .expect("json");
    assert_eq!(plan["service"], "web");
    assert_eq!(plan["targetRevision"], "0000000000");
    assert!(
        plan["prediction"]["durationP50Seconds"].as_f64().is_some(),
        "{plan}"
    );
    assert_eq!(
        plan["inputs"]["startupSamples"].as_array().map(Vec::len),
        Some(3)
    );
    let missing = reqwest::get(format!("{}/api/v1/services/nope/plan", s.url))
        .await
        .expect("plan");
    assert_eq!(missing.status(), 404);
    s.shutdown().await;
}
