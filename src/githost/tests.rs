use super::pr::{Completed, FollowUp, Route, content, follow_up, parse_branch, route};
use super::*;

type Inferred<'a> = Option<(HostKind, &'a str, &'a str)>;

#[test]
fn infer_only_where_unambiguous() {
    let cases: &[(&str, Inferred)] = &[
        (
            "https://github.com/acme/cfg.git",
            Some((HostKind::Github, "https://api.github.com", "acme/cfg")),
        ),
        (
            "https://x-access-token:tok@github.com/acme/cfg",
            Some((HostKind::Github, "https://api.github.com", "acme/cfg")),
        ),
        (
            "git@github.com:acme/cfg.git",
            Some((HostKind::Github, "https://api.github.com", "acme/cfg")),
        ),
        (
            "ssh://git@gitlab.com/group/sub/cfg.git",
            Some((
                HostKind::Gitlab,
                "https://gitlab.com/api/v4",
                "group/sub/cfg",
            )),
        ),
        ("https://git.example.com/acme/cfg.git", None),
        ("git://127.0.0.1:9418/cfg.git", None),
        ("/srv/git/cfg", None),
    ];
    for (url, want) in cases {
        let got = infer(url);
        let got = got.as_ref().map(|(k, a, p)| (*k, *a, p.as_str()));
        assert_eq!(got, *want, "{url}");
    }
}

fn args() -> HostArgs {
    HostArgs {
        status_aggregate_above: 20,
        ..HostArgs::default()
    }
}

#[test]
fn resolve_from_flags_and_url() {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("token");
    std::fs::write(&tf, "ghp_secret123\n").unwrap();
    // Nothing configured, nothing inferable: no host.
    assert!(
        HostConfig::resolve(&args(), "git://127.0.0.1/cfg.git")
            .unwrap()
            .is_none()
    );
    // github.com inferred; the token from the file.
    let c = HostConfig::resolve(
        &HostArgs {
            token_file: Some(tf.clone()),
            ..args()
        },
        "https://github.com/acme/cfg.git",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (c.kind, c.api.as_str(), c.repo.as_str()),
        (HostKind::Github, "https://api.github.com", "acme/cfg")
    );
    assert_eq!(c.token.expose(), "ghp_secret123");
    assert!(!format!("{c:?}").contains("ghp_secret123"), "Debug redacts");
    // A Gitea host needs its API URL.
    let e = HostConfig::resolve(
        &HostArgs {
            kind: Some(HostKind::Gitea),
            token_file: Some(tf.clone()),
            ..args()
        },
        "https://git.example.com/acme/cfg.git",
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("--git-host-api: "), "{e}");
    // Flags without a kind on an unknown host.
    let e = HostConfig::resolve(
        &HostArgs {
            api: Some("https://git.example.com/api/v1".into()),
            ..args()
        },
        "https://git.example.com/acme/cfg.git",
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("--git-host: "), "{e}");
    // No token.
    let e = HostConfig::resolve(&args(), "https://github.com/acme/cfg.git").unwrap_err();
    assert!(e.to_string().starts_with("--git-host-token-file: "), "{e}");
    // A bad repo path, a bad API URL, credentials in the API URL.
    let bad = |a: HostArgs| {
        HostConfig::resolve(&a, "git://127.0.0.1/cfg.git")
            .unwrap_err()
            .to_string()
    };
    let base = HostArgs {
        kind: Some(HostKind::Github),
        api: Some("http://127.0.0.1:1".into()),
        token: Some("t0ken-value".into()),
        ..args()
    };
    assert!(bad(base.clone()).starts_with("--git-host-repo: \"cfg\""));
    assert!(
        bad(HostArgs {
            repo: Some("acme/cfg/x".into()),
            ..base.clone()
        })
        .starts_with("--git-host-repo: ")
    );
    let e = bad(HostArgs {
        repo: Some("acme/cfg".into()),
        api: Some("https://u:pw@api.example.com".into()),
        ..base.clone()
    });
    assert!(
        e.starts_with("--git-host-api: ") && !e.contains("pw"),
        "{e}"
    );
    assert!(
        bad(HostArgs {
            repo: Some("acme/cfg".into()),
            api: Some("ftp://x".into()),
            ..base.clone()
        })
        .starts_with("--git-host-api: ")
    );
    // GitLab project paths may have groups.
    let c = HostConfig::resolve(
        &HostArgs {
            kind: Some(HostKind::Gitlab),
            repo: Some("g/sub/cfg".into()),
            ..base.clone()
        },
        "git://127.0.0.1/cfg.git",
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.repo, "g/sub/cfg");
    // An empty token file.
    std::fs::write(&tf, "\n").unwrap();
    let e = bad(HostArgs {
        repo: Some("acme/cfg".into()),
        token_file: Some(tf),
        ..base
    });
    assert!(e.contains("is empty"), "{e}");
    // pull-request without a host.
    let e = HostConfig::resolve(
        &HostArgs {
            via: RevertVia::PullRequest,
            ..args()
        },
        "git://127.0.0.1/cfg.git",
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("--revert-via: "), "{e}");
}

#[test]
fn token_redaction() {
    let t = Token::new("s3cr3t-token");
    assert_eq!(
        t.redact("bad credentials s3cr3t-token"),
        "bad credentials ***"
    );
    assert_eq!(format!("{t:?}"), "Token(<redacted>)");
}

#[test]
fn routes() {
    assert_eq!(
        route(None),
        Route::Push {
            propose_if_refused: false
        }
    );
    assert_eq!(
        route(Some(RevertVia::Push)),
        Route::Push {
            propose_if_refused: true
        }
    );
    assert_eq!(route(Some(RevertVia::PullRequest)), Route::Propose);
}

#[test]
fn pr_content_is_the_revert_message() {
    let msg = "Revert \"web: v3\"\n\nThis reverts commit abc.\n\nFloyd rolled back web.\n\nFloyd-Revert-Of: abc\n";
    let c = content(msg, "floyd/revert-abc-web", "main");
    assert_eq!(c.title, "Revert \"web: v3\"");
    assert_eq!(
        c.body,
        "This reverts commit abc.\n\nFloyd rolled back web.\n\nFloyd-Revert-Of: abc\n"
    );
    assert_eq!(c.labels, vec!["floyd", "revert"]);
    assert_eq!(
        (c.head.as_str(), c.base.as_str()),
        ("floyd/revert-abc-web", "main")
    );
}

#[test]
fn branch_names_round_trip() {
    let b = crate::source::revert_branch("0123456789abcdef0123", "web-api");
    assert_eq!(b, "floyd/revert-0123456789ab-web-api");
    assert_eq!(parse_branch(&b), Some(("0123456789ab", "web-api")));
    assert_eq!(parse_branch("floyd/revert-xyz-web"), None);
    assert_eq!(parse_branch("feature/x"), None);
}

#[test]
fn follow_up_table() {
    let c = |service, reverts_failed, descends, is_failed, rollback| Completed {
        service,
        reverts_failed,
        descends_from_failed: descends,
        is_failed,
        rollback,
    };
    let cases = [
        ("fixed forward", c("web", false, true, false, false), true),
        ("merged revert", c("web", true, true, false, false), false),
        (
            "the failed commit itself",
            c("web", false, true, true, false),
            false,
        ),
        ("a rollback", c("web", false, true, false, true), false),
        ("older commit", c("web", false, false, false, false), false),
        (
            "another service",
            c("api", false, true, false, false),
            false,
        ),
    ];
    for (what, completed, close) in cases {
        let got = follow_up("web", &completed, "c9");
        assert_eq!(matches!(got, FollowUp::Close(_)), close, "{what}");
    }
    let FollowUp::Close(comment) = follow_up("web", &c("web", false, true, false, false), "c9")
    else {
        unreachable!()
    };
    assert!(comment.contains("web completed at c9") && comment.contains("fixed forward"));
}
