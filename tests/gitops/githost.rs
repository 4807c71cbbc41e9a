//! The Git host in the loop: a real Git remote whose `main` refuses pushes
//! (a `pre-receive` hook, as branch protection does), the real controller,
//! and the fake host API ([`super::fakehost`]); GitHub requests validated
//! against GitHub's OpenAPI description ([`super::openapi`]).

use super::e2e::{Harness, Opts, service_yaml};
use super::fake::FakeRuntime;
use super::fakehost::{FakeHost, Recorded};
use super::openapi::Spec;
use super::support::{self, GitServer};
use floyd::controller::policy::plan_revert;
use floyd::engine::Phase;
use floyd::githost::HostKind;
use floyd::source::{Credentials, GitSource, RevertOutcome, RevertRequest, SourceConfig};
use std::sync::Arc;
use std::time::Duration;

/// Makes `main` refuse pushes while `<bare>/protected` exists.
fn protect_main(server: &GitServer) {
    let hook = server.bare().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\nwhile read old new ref; do\n  if [ \"$ref\" = refs/heads/main ] && [ -f \"$GIT_DIR/protected\" ]; then\n    echo \"GH006: Protected branch update failed for refs/heads/main.\" >&2\n    exit 1\n  fi\ndone\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(server.bare().join("protected"), "").unwrap();
}

fn unprotect(server: &GitServer) {
    let _ = std::fs::remove_file(server.bare().join("protected"));
}

/// Every GitHub request Floyd sent is valid for GitHub's API.
fn validate_github(requests: &[Recorded]) -> usize {
    let Some(spec) = Spec::load() else { return 0 };
    for r in requests {
        let uri = r.uri.strip_prefix("/api/v3").unwrap_or(&r.uri);
        if let Err(e) = spec.check(&r.method, uri, &r.body) {
            panic!(
                "request not valid for GitHub's OpenAPI description: {e}\nbody: {}",
                r.body
            );
        }
    }
    requests.len()
}

fn remote_branch(server: &GitServer, branch: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args([
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}"),
        ])
        .current_dir(server.bare())
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_branch_revert_goes_through_one_pull_request_and_its_merge_is_not_reverted() {
    let fake = FakeHost::start(HostKind::Github).await;
    let host = fake.host("acme/cfg");
    let h = Harness::new(Opts {
        git_host: Some((host.clone(), false)),
        ..Opts::default()
    })
    .await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    let good = h.push_web("v2", false, "web: v2");
    let v2 = h.wait_complete_at("web", &good).await;
    let r2 = v2.target_revision.clone().unwrap();

    let bad = h.push_web("v3", true, "web: v3 (never ready)");
    protect_main(&h.server);
    let v = h
        .wait_view(
            "the revert waiting in a pull request",
            "web",
            Duration::from_secs(40),
            |v| v.reason.contains("revert waiting in PR"),
        )
        .await;
    assert!(
        v.reason.contains("revert waiting in PR http://fake/pull/1"),
        "{}",
        v.reason
    );
    assert!(!v.reason.contains("revert failed"), "{}", v.reason);
    // Rolled back all the same, and main still holds the bad commit.
    h.wait_view(
        "back on the good revision",
        "web",
        Duration::from_secs(20),
        |v| v.current_revision.as_ref() == Some(&r2),
    )
    .await;
    assert_eq!(h.runtime.summary("web"), vec![(r2.to_string(), 2, 2)]);
    assert_eq!(
        h.server.tip(),
        bad,
        "the protected branch was not pushed to"
    );

    // The revert commit is on floyd/revert-<short>-web, with the contract's message.
    let branch = format!("floyd/revert-{}-web", &bad[..12]);
    let revert = remote_branch(&h.server, &branch).expect("the revert branch is on the remote");
    let msg = h.server.message(&revert);
    assert!(
        msg.starts_with(&format!(
            "Revert \"web: v3 (never ready)\"\n\nThis reverts commit {bad}.\n\nFloyd rolled back web from revision "
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "\nFloyd-Revert-Of: {bad}\nFloyd-Service: web\nFloyd-Reason: "
        )),
        "{msg}"
    );
    assert_eq!(
        support::git(&h.server.bare(), &["rev-parse", &format!("{revert}^")]),
        bad,
        "built on the branch tip"
    );
    assert_eq!(
        h.server.show(&format!("{revert}:services/web.yaml")) + "\n",
        service_yaml("web", "v2", false)
    );
    // Exactly one pull request, the revert message as title and body.
    let prs = fake.prs();
    assert_eq!(prs.len(), 1, "{prs:#?}");
    let pr = &prs[0];
    assert_eq!(pr.title, "Revert \"web: v3 (never ready)\"");
    assert_eq!(
        pr.body,
        msg.split_once("\n\n").unwrap().1,
        "the body is the revert message's"
    );
    assert_eq!(
        (pr.head.as_str(), pr.base.as_str()),
        (branch.as_str(), "main")
    );
    assert_eq!(pr.labels, vec!["floyd", "revert"]);
    assert!(pr.open);

    // A second failure of the same commit (another controller, its own
    // mirror) proposes the same revert: the open pull request is updated,
    // the branch kept, no second pull request.
    let state2 = tempfile::tempdir().unwrap();
    let src2 = Arc::new(
        GitSource::open(SourceConfig {
            url: h.server.url.clone(),
            branch: "main".into(),
            mirror: state2.path().join("repo.git"),
            credentials: Credentials::default(),
        })
        .unwrap(),
    );
    let req = RevertRequest {
        service: "web".into(),
        failed_commit: bad.clone(),
        base: good.clone(),
        files: vec!["services/web.yaml".into()],
        subdir: None,
        environment: None,
        failed_revision: "x".into(),
        rolled_back_to: r2.to_string(),
        reason: "again".into(),
        author_name: "Floyd".into(),
        author_email: "floyd@localhost".into(),
        render: None,
    };
    let out = floyd::githost::pr::revert(Some(host.clone()), src2.clone(), req, plan_revert)
        .await
        .unwrap();
    let RevertOutcome::Proposed {
        url, branch: b2, ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (url.as_str(), b2.as_str()),
        ("http://fake/pull/1", branch.as_str())
    );
    assert_eq!(fake.prs().len(), 1, "no second pull request");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path().ends_with("/pulls/1")),
        "the open pull request was updated"
    );
    assert_eq!(
        remote_branch(&h.server, &branch).as_deref(),
        Some(revert.as_str()),
        "the same revert on the same tip is not pushed again"
    );

    // Merging the pull request (main moves to the revert commit): Floyd's
    // own revert, synced, not reverted again.
    support::git(
        &h.server.bare(),
        &["update-ref", "refs/heads/main", &revert],
    );
    let v = h.wait_complete_at("web", &revert).await;
    assert_eq!(v.target_revision.as_ref(), Some(&r2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.server.tip(), revert, "nothing pushed after the merge");
    assert_eq!(fake.prs().len(), 1);
    assert!(
        fake.prs()[0].comments.is_empty(),
        "a merged revert is not closed as fixed forward"
    );
    unprotect(&h.server);
    let n = validate_github(&fake.requests());
    eprintln!("{n} GitHub requests validated against the OpenAPI description");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_forward_closes_the_revert_pull_request_with_a_comment() {
    let fake = FakeHost::start(HostKind::Github).await;
    let mut cfg = fake.config("acme/cfg");
    cfg.via = floyd::githost::RevertVia::PullRequest;
    let host = floyd::githost::GitHost::new(cfg, Duration::from_secs(30)).unwrap();
    let h = Harness::new(Opts {
        git_host: Some((host, false)),
        ..Opts::default()
    })
    .await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    let bad = h.push_web("v2", true, "web: v2 (never ready)");
    h.wait_view(
        "the revert waiting in a pull request",
        "web",
        Duration::from_secs(40),
        |v| v.reason.contains("revert waiting in PR"),
    )
    .await;
    assert_eq!(
        h.server.tip(),
        bad,
        "revert.via pullRequest: no direct push"
    );
    assert_eq!(fake.prs().len(), 1);
    // A person fixes it forward on main.
    let fix = h.push_web("v3", false, "web: v3 (fixed)");
    h.wait_complete_at("web", &fix).await;
    support::wait_for("the pull request closed", Duration::from_secs(20), || {
        !fake.prs()[0].open
    });
    let pr = &fake.prs()[0];
    assert_eq!(pr.comments.len(), 1);
    assert!(
        pr.comments[0].contains(&format!("web completed at {fix}"))
            && pr.comments[0].contains("fixed forward"),
        "{}",
        pr.comments[0]
    );
    validate_github(&fake.requests());
}

fn two_services(version: &str, never_ready: bool) -> Vec<(&'static str, String)> {
    vec![
        (
            "services/web.yaml",
            service_yaml("web", version, never_ready),
        ),
        (
            "services/api.yaml",
            service_yaml("api", version, never_ready),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_statuses_pending_then_success_or_failure_and_rate_limits_do_not_block_rollouts() {
    let fake = FakeHost::start(HostKind::Github).await;
    {
        let mut s = fake.state.lock().unwrap();
        s.rate_limit_statuses = 1;
        s.rate_limit_secs = 3;
    }
    let h = Harness::seeded(
        &two_services("v1", false)
            .iter()
            .map(|(p, t)| (*p, t.clone()))
            .collect::<Vec<_>>(),
        "web and api v1",
        FakeRuntime::new(Duration::from_millis(100)),
        Opts {
            git_host: Some((fake.host("acme/cfg"), true)),
            ..Opts::default()
        },
    )
    .await;
    let c0 = h.server.tip();
    h.wait_complete_at("web", &c0).await;
    h.wait_complete_at("api", &c0).await;
    let rollouts_done = std::time::Instant::now();
    let seq = |sha: &str, ctx: &str| -> Vec<String> {
        fake.statuses()
            .iter()
            .filter(|s| s.sha == sha && s.context == ctx)
            .map(|s| s.state.clone())
            .collect()
    };
    support::wait_for("statuses of c0", Duration::from_secs(30), || {
        seq(&c0, "floyd/web").last().map(String::as_str) == Some("success")
            && seq(&c0, "floyd/api").last().map(String::as_str) == Some("success")
    });
    // The first status answer was a rate limit: retried after the reset,
    // and the rollouts did not wait for it.
    let limited = fake.state.lock().unwrap().rate_limited_at.clone();
    assert_eq!(limited.len(), 1);
    let first_ok = fake.statuses()[0].at;
    assert!(
        first_ok.duration_since(limited[0]) >= Duration::from_secs(1),
        "retried after the reset, not at once"
    );
    assert!(
        rollouts_done < first_ok,
        "both rollouts completed while the status waited for the rate limit"
    );
    // Waiting out the rate limit, a pending status superseded by success
    // was coalesced: the commit shows where it ended.
    for ctx in ["floyd/web", "floyd/api"] {
        assert_eq!(seq(&c0, ctx).last().unwrap(), "success", "{ctx} on c0");
    }
    // A good commit for both: pending, then success.
    for (p, t) in two_services("v2", false) {
        h.work.write(p, &t);
    }
    let good = h.work.commit("web and api v2");
    h.work.push();
    h.wait_complete_at("web", &good).await;
    h.wait_complete_at("api", &good).await;
    support::wait_for("success statuses", Duration::from_secs(30), || {
        seq(&good, "floyd/web").last().map(String::as_str) == Some("success")
            && seq(&good, "floyd/api").last().map(String::as_str) == Some("success")
    });
    for ctx in ["floyd/web", "floyd/api"] {
        assert_eq!(
            seq(&good, ctx),
            vec!["pending", "success"],
            "{ctx} on the good commit"
        );
    }
    // A broken commit for both: pending, then failure with the reason.
    for (p, t) in two_services("v3", true) {
        h.work.write(p, &t);
    }
    let bad = h.work.commit("web and api v3 (never ready)");
    h.work.push();
    support::wait_for("failure statuses", Duration::from_secs(40), || {
        seq(&bad, "floyd/web").last().map(String::as_str) == Some("failure")
            && seq(&bad, "floyd/api").last().map(String::as_str) == Some("failure")
    });
    for ctx in ["floyd/web", "floyd/api"] {
        assert_eq!(
            seq(&bad, ctx),
            vec!["pending", "failure"],
            "{ctx} on the bad commit"
        );
    }
    let failure = fake
        .statuses()
        .into_iter()
        .find(|s| s.sha == bad && s.state == "failure")
        .unwrap();
    assert!(
        failure.description.contains("not ready"),
        "the reason: {}",
        failure.description
    );
    h.wait_view("rolled back", "web", Duration::from_secs(30), |v| {
        v.phase != Phase::Progressing
    })
    .await;
    validate_github(&fake.requests());
}

/// GitLab and Gitea: the same operations in their own dialects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_and_gitea_pull_requests_and_statuses() {
    for kind in [HostKind::Gitlab, HostKind::Gitea] {
        let fake = FakeHost::start(kind).await;
        let host = fake.host("acme/cfg");
        let c = floyd::githost::pr::content(
            "Revert \"x\"\n\nThis reverts commit abc.\n",
            "floyd/revert-abcdef012345-web",
            "main",
        );
        let pr = floyd::githost::pr::open_or_update(&host, &c).await.unwrap();
        let again = floyd::githost::pr::open_or_update(&host, &c).await.unwrap();
        assert_eq!(pr, again, "{kind:?}: found, not duplicated");
        assert_eq!(fake.prs().len(), 1, "{kind:?}");
        let p = &fake.prs()[0];
        assert_eq!(p.title, "Revert \"x\"");
        assert_eq!(p.body, "This reverts commit abc.\n");
        assert_eq!(p.labels, vec!["floyd", "revert"], "{kind:?}");
        let open = host
            .list_open_prs(floyd::githost::pr::BRANCH_PREFIX, "main")
            .await
            .unwrap();
        assert_eq!(open.len(), 1);
        host.close_pr(pr.number, "fixed forward").await.unwrap();
        assert!(!fake.prs()[0].open && fake.prs()[0].comments == vec!["fixed forward"]);
        host.set_status(&floyd::githost::CommitStatus {
            sha: "0123456789012345678901234567890123456789".into(),
            state: floyd::githost::StatusState::Failure,
            context: "floyd/web".into(),
            description: "deadline".into(),
            target_url: None,
        })
        .await
        .unwrap();
        let s = &fake.statuses()[0];
        let want = if kind == HostKind::Gitlab {
            "failed"
        } else {
            "failure"
        };
        assert_eq!((s.state.as_str(), s.context.as_str()), (want, "floyd/web"));
        if kind == HostKind::Gitlab {
            assert!(
                fake.requests()[0].uri.contains("/projects/acme%2Fcfg/"),
                "{}",
                fake.requests()[0].uri
            );
        }
    }
}

/// A wrong token: the error says what failed and never shows the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_errors_never_show_the_token() {
    let fake = FakeHost::start(HostKind::Github).await;
    let mut cfg = fake.config("acme/cfg");
    cfg.token = floyd::githost::Token::new("wrong-token-value");
    let host = floyd::githost::GitHost::new(cfg, Duration::from_secs(30)).unwrap();
    let e = host
        .find_open_pr("floyd/revert-x-web", "main")
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("HTTP 401") && s.contains("GET /repos/acme/cfg/pulls"),
        "{s}"
    );
    assert!(!s.contains("wrong-token-value") && !format!("{e:?}").contains("wrong-token-value"));
}

/// A revert signed with an SSH key (in process, SSHSIG) is accepted by real
/// `git verify-commit` with the key in `gpg.ssh.allowedSignersFile`, and
/// refused when another key is the allowed one.
#[test]
fn signed_revert_passes_git_verify_commit() {
    let keys = tempfile::tempdir().unwrap();
    let keygen = |name: &str| {
        let p = keys.path().join(name);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "floyd", "-f"])
            .arg(&p)
            .output()
            .expect("ssh-keygen runs");
        assert!(out.status.success(), "{out:?}");
        let public = std::fs::read_to_string(p.with_extension("pub")).unwrap();
        (p, public.trim().to_string())
    };
    let (key, public) = keygen("floyd_signing");
    let (_, other_public) = keygen("someone_else");
    let server = GitServer::daemon();
    let w = super::support::Work::clone(&server.url);
    w.write("services/web.yaml", "web: v1\n");
    let good = w.commit("web: v1");
    w.write("services/web.yaml", "web: broken\n");
    let bad = w.commit("web: break it");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = GitSource::open(SourceConfig {
        url: server.url.clone(),
        branch: "main".into(),
        mirror: state.path().join("repo.git"),
        credentials: Credentials {
            signing_key: Some(key.clone()),
            ..Credentials::default()
        },
    })
    .unwrap();
    let req = RevertRequest {
        service: "web".into(),
        failed_commit: bad.clone(),
        base: good,
        files: vec!["services/web.yaml".into()],
        subdir: None,
        environment: None,
        failed_revision: "bbbbbbbbbb".into(),
        rolled_back_to: "aaaaaaaaaa".into(),
        reason: "broken".into(),
        author_name: "Floyd".into(),
        author_email: "floyd@localhost".into(),
        render: None,
    };
    let out = src.revert(&req, plan_revert).unwrap();
    let RevertOutcome::Pushed { commit, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(server.tip(), commit);
    let verify = |allowed: &str| {
        let f = keys.path().join("allowed_signers");
        std::fs::write(&f, format!("floyd@localhost {allowed}\n")).unwrap();
        std::process::Command::new("git")
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("gpg.ssh.allowedSignersFile={}", f.display()))
            .args(["verify-commit", "--raw", &commit])
            .current_dir(server.bare())
            .output()
            .unwrap()
    };
    let ok = verify(&public);
    assert!(
        ok.status.success(),
        "git verify-commit refused: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stderr).contains("Good \"git\" signature for floyd@localhost"),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !verify(&other_public).status.success(),
        "another allowed key does not verify it"
    );
    // The message is still the contract's.
    assert!(
        server
            .message(&commit)
            .starts_with("Revert \"web: break it\"\n")
    );
    // A key file that is not a key: a clear error naming the variable.
    std::fs::write(keys.path().join("junk"), "not a key").unwrap();
    let e = GitSource::open(SourceConfig {
        url: server.url.clone(),
        branch: "main".into(),
        mirror: state.path().join("repo2.git"),
        credentials: Credentials {
            signing_key: Some(keys.path().join("junk")),
            ..Credentials::default()
        },
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("FLOYD_GIT_SIGNING_KEY ") && e.contains("not an OpenSSH private key"),
        "{e}"
    );
}
