//! Issue #14: a commit that does not render is reverted (when an earlier
//! commit synced), so Git goes back to something Floyd can run; what runs is
//! never touched by the broken commit. Real Git server, real controller.

use super::e2e::{Harness, Opts, service_yaml};
use super::support::git;
use floyd::engine::Phase;
use floyd::hub::Event;
use std::time::{Duration, Instant};

/// A web manifest that does not decode (`replicas` is not a number).
const BROKEN_WEB: &str = "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: web
spec:
  replicas: many
  template:
    command: [\"sample-app\"]
";

/// An api manifest that does not decode (unknown field).
const BROKEN_API: &str = "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: api
spec:
  replicas: 2
  replicaz: 3
  template:
    command: [\"sample-app\"]
";

fn trailers(msg: &str, key: &str) -> Vec<String> {
    msg.lines()
        .filter_map(|l| l.strip_prefix(key))
        .map(|s| s.trim().to_string())
        .collect()
}

/// Commits on the remote whose message starts with `Revert`.
fn revert_commits(h: &Harness) -> Vec<String> {
    h.server
        .log()
        .iter()
        .filter(|l| l.contains(" Revert"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// Waits for the first `Revert` event of the hub (pushed or not).
async fn next_revert_event(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
    timeout: Duration,
) -> (Option<String>, Vec<String>, bool, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv())
            .await
            .map(|r| r.map(std::sync::Arc::unwrap_or_clone))
        {
            Ok(Ok(Event::Revert {
                commit,
                reverted,
                ok,
                message,
                ..
            })) => return (commit, reverted, ok, message),
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("hub closed: {e}"),
            Err(_) => panic!("no revert event within {timeout:?}"),
        }
    }
}

/// B breaks web's manifest; C, pushed with it, changes api and renders on
/// its own. Only B is reverted (the first commit of the failing streak):
/// web stays on A's release, api rolls out C's change from the revert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_does_not_render_is_reverted_and_later_good_work_is_kept() {
    let h = Harness::new(Opts::default()).await;
    let a = h.server.tip();
    let web_a = h.wait_complete_at("web", &a).await;
    h.wait_complete_at("api", &a).await;
    let mut events = h.hub.subscribe();

    h.work.write("services/web.yaml", BROKEN_WEB);
    let b = h.work.commit("web: scale to many");
    h.work
        .write("services/api.yaml", &service_yaml("api", "v2", false));
    let c = h.work.commit("api: v2");
    h.work.push();

    let (commit, reverted, ok, message) =
        next_revert_event(&mut events, Duration::from_secs(30)).await;
    assert!(ok, "revert pushed: {message}");
    assert_eq!(
        reverted,
        vec![b.clone()],
        "only the commit that broke rendering"
    );
    let revert = commit.expect("the revert commit");
    assert_eq!(h.server.tip(), revert, "pushed to the branch");
    let msg = h.server.message(&revert);
    assert!(msg.starts_with("Revert \"web: scale to many\""), "{msg}");
    assert_eq!(trailers(&msg, "Floyd-Revert-Of:"), vec![b.clone()], "{msg}");
    let reason = trailers(&msg, "Floyd-Reason:").join("");
    assert!(
        reason.contains("services/web.yaml") && reason.contains("replicas"),
        "the reason names the file and field: {reason}"
    );
    // Git: web back to A, api keeps C's change.
    let bare = h.server.bare();
    let blob = |rev: &str, p: &str| git(&bare, &["rev-parse", &format!("{rev}:{p}")]);
    assert_eq!(
        blob(&revert, "services/web.yaml"),
        blob(&a, "services/web.yaml")
    );
    assert_eq!(
        blob(&revert, "services/api.yaml"),
        blob(&c, "services/api.yaml")
    );
    // What runs: api rolls out v2 from the revert commit; web never moved.
    let api = h
        .wait_view(
            "api Complete on the revert",
            "api",
            Duration::from_secs(30),
            |v| v.phase == Phase::Complete && v.commit.as_ref().is_some_and(|x| x.sha == revert),
        )
        .await;
    assert_ne!(api.commit.unwrap().sha, a);
    let web = h.hub.service("web").unwrap();
    assert_eq!(web.target_revision, web_a.target_revision, "web untouched");
    assert_eq!(revert_commits(&h), vec![revert], "exactly one revert");
    assert_eq!(h.hub.sync_error(), None, "the revert synced");
}

/// B breaks web and C breaks api independently: reverting B would not make
/// the branch render, so nothing is pushed; the error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_that_would_not_render_either_is_not_pushed() {
    let h = Harness::new(Opts::default()).await;
    let a = h.server.tip();
    h.wait_complete_at("web", &a).await;
    let mut events = h.hub.subscribe();
    h.work.write("services/web.yaml", BROKEN_WEB);
    h.work.commit("web: scale to many");
    h.work.write("services/api.yaml", BROKEN_API);
    let c = h.work.commit("api: typo");
    h.work.push();
    let (commit, _reverted, ok, message) =
        next_revert_event(&mut events, Duration::from_secs(30)).await;
    assert!(!ok, "not reverted: {message}");
    assert_eq!(commit, None);
    assert!(
        message.contains("services/api.yaml"),
        "says what still fails: {message}"
    );
    assert_eq!(h.server.tip(), c, "nothing pushed");
    assert!(revert_commits(&h).is_empty());
    let err = h.hub.sync_error().expect("the sync error is reported");
    assert!(err.contains(&c), "{err}");
}

/// With `--no-revert`, a commit that does not render is reported only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_revert_a_commit_that_does_not_render_is_only_reported() {
    let h = Harness::new(Opts {
        no_revert: true,
        ..Opts::default()
    })
    .await;
    let a = h.server.tip();
    h.wait_complete_at("web", &a).await;
    h.work.write("services/web.yaml", BROKEN_WEB);
    let b = h.work.commit("web: scale to many");
    h.work.push();
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.hub.sync_error().is_none_or(|e| !e.contains(&b)) {
        assert!(Instant::now() < deadline, "the sync error is reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A later good commit syncs as usual (nothing was pending on B).
    let c = h.push_web("v2", false, "web: v2, fixed");
    h.wait_complete_at("web", &c).await;
    assert!(revert_commits(&h).is_empty());
}
