//! Which commits a revert undoes, decided from real Git histories: values in
//! `floyd.yaml` that change one service's render and not another's, merge
//! commits on the first-parent history, and a last good commit that only a
//! merge's second parent reaches. Real `git daemon`, real manifests, the
//! source's fact gathering and the controller's pure planner.

use super::support::{GitServer, Work, git};
use floyd::controller::policy::plan_revert;
use floyd::source::{Credentials, GitSource, RevertOutcome, RevertRequest, SourceConfig};

fn svc(name: &str, value: &str) -> String {
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  replicas: 1
  template:
    command: [\"sample-app\", \"--version\", \"{{{{ values.{value} }}}}\"]
"
    )
}

fn values(web: &str, api: &str) -> String {
    format!("values:\n  webVersion: {web}\n  apiVersion: {api}\n")
}

fn source(server: &GitServer, state: &std::path::Path) -> GitSource {
    let src = GitSource::open(SourceConfig {
        url: server.url.clone(),
        branch: "main".into(),
        mirror: state.join("repo.git"),
        credentials: Credentials::default(),
    })
    .expect("mirror opens");
    src.fetch().expect("fetch");
    src
}

fn req(failed: &str, base: &str) -> RevertRequest {
    RevertRequest {
        service: "web".into(),
        failed_commit: failed.into(),
        base: base.into(),
        files: vec!["services/web.yaml".into()],
        subdir: None,
        environment: None,
        failed_revision: "bbbbbbbbbb".into(),
        rolled_back_to: "aaaaaaaaaa".into(),
        reason: "progress deadline exceeded".into(),
        author_name: "Floyd".into(),
        author_email: "floyd@localhost".into(),
        render: None,
    }
}

/// c0: web and api read their versions from floyd.yaml.
fn seed(server: &GitServer) -> (Work, String) {
    let w = Work::clone(&server.url);
    w.write("floyd.yaml", &values("v1", "v1"))
        .write("services/web.yaml", &svc("web", "webVersion"))
        .write("services/api.yaml", &svc("api", "apiVersion"));
    let c0 = w.commit("initial");
    w.push();
    (w, c0)
}

#[test]
fn a_floyd_yaml_value_counts_only_for_the_services_it_renders_into() {
    let server = GitServer::daemon();
    let (w, c0) = seed(&server);
    w.write("floyd.yaml", &values("v1", "v2"));
    let api_change = w.commit("api: v2 (floyd.yaml)");
    w.write("floyd.yaml", &values("v3", "v2"));
    let bad = w.commit("web: v3 (floyd.yaml)");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    let out = src.revert(&req(&bad, &c0), plan_revert).unwrap();
    let RevertOutcome::Pushed {
        commit,
        reverted,
        services,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        reverted,
        vec![bad.clone()],
        "{api_change} did not change web"
    );
    assert_eq!(
        services,
        vec!["web".to_string()],
        "the revert changes web only"
    );
    assert_eq!(
        server.show(&format!("{commit}:floyd.yaml")) + "\n",
        values("v1", "v2"),
        "api's change is kept"
    );
}

#[test]
fn a_revert_of_a_commit_that_changed_two_services_names_both() {
    let server = GitServer::daemon();
    let (w, c0) = seed(&server);
    w.write("floyd.yaml", &values("v2", "v2"));
    let bad = w.commit("web and api: v2");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    let out = src.revert(&req(&bad, &c0), plan_revert).unwrap();
    let RevertOutcome::Pushed {
        commit, services, ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(services, vec!["web".to_string(), "api".to_string()]);
    let msg = server.message(&commit);
    assert!(
        msg.contains("Floyd-Service: web\nFloyd-Service: api\nFloyd-Reason: "),
        "{msg}"
    );
}

#[test]
fn a_merge_that_broke_the_service_is_reverted_against_its_first_parent() {
    let server = GitServer::daemon();
    let (w, c0) = seed(&server);
    git(w.path(), &["checkout", "-q", "-b", "feature"]);
    w.write("floyd.yaml", &values("v2", "v1"));
    w.commit("web: v2 on a branch");
    git(w.path(), &["checkout", "-q", "main"]);
    w.write(
        "services/api.yaml",
        &svc("api", "apiVersion").replace("replicas: 1", "replicas: 2"),
    );
    let api = w.commit("api: 2 replicas");
    git(
        w.path(),
        &["merge", "-q", "--no-ff", "-m", "Merge feature", "feature"],
    );
    let merge = git(w.path(), &["rev-parse", "HEAD"]);
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    let out = src.revert(&req(&merge, &c0), plan_revert).unwrap();
    let RevertOutcome::Pushed {
        commit, reverted, ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(reverted, vec![merge], "{api} did not change web");
    assert_eq!(
        server.show(&format!("{commit}:floyd.yaml")) + "\n",
        values("v1", "v1")
    );
    assert!(
        server
            .show(&format!("{commit}:services/api.yaml"))
            .contains("replicas: 2"),
        "api's change on the first-parent line is kept"
    );
}

#[test]
fn a_last_good_commit_reached_only_through_a_second_parent_is_left_to_a_person() {
    let server = GitServer::daemon();
    let (w, c0) = seed(&server);
    // Main moves to `good` (a fast-forward), where Floyd completed.
    w.write("floyd.yaml", &values("v2", "v1"));
    let good = w.commit("web: v2");
    w.push();
    // Someone's branch from c0 merges main in (main as the second parent)
    // and is pushed as main (a fast-forward from good).
    git(w.path(), &["checkout", "-q", "-b", "side", &c0]);
    w.write(
        "services/api.yaml",
        &svc("api", "apiVersion").replace("replicas: 1", "replicas: 2"),
    );
    w.commit("api: 2 replicas");
    git(
        w.path(),
        &[
            "merge",
            "-q",
            "--no-ff",
            "-m",
            "Merge main into side",
            "main",
        ],
    );
    w.write("floyd.yaml", &values("v3", "v1"));
    let bad = w.commit("web: v3");
    w.push();
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    let out = src.revert(&req(&bad, &good), plan_revert).unwrap();
    let RevertOutcome::Refused { reason } = out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("first-parent"), "{reason}");
    assert_eq!(server.tip(), bad, "nothing pushed");
}

#[test]
fn a_force_push_to_unrelated_history_is_not_reverted() {
    let server = GitServer::daemon();
    let (w, c0) = seed(&server);
    // The branch is replaced by an unrelated history.
    git(
        &server.bare(),
        &["config", "receive.denyNonFastForwards", "false"],
    );
    git(w.path(), &["checkout", "-q", "--orphan", "rewritten"]);
    w.write("floyd.yaml", &values("v9", "v1"));
    let bad = w.commit("rewritten: web v9");
    git(
        w.path(),
        &["push", "-q", "--force", "origin", "HEAD:refs/heads/main"],
    );
    let state = tempfile::tempdir().unwrap();
    let src = source(&server, state.path());
    let out = src.revert(&req(&bad, &c0), plan_revert).unwrap();
    let RevertOutcome::Refused { reason } = out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("history was rewritten"), "{reason}");
    assert_eq!(server.tip(), bad);
}
