//! Notifications delivered to real HTTP receivers on 127.0.0.1.

use crate::fixture::*;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use floyd::engine::Phase;
use floyd::hub::{Event, Hub};
use floyd::manifest::{NotificationFormat, NotificationTarget};
use floyd::notifications::{DeliveryPolicy, Notifier};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What each receiver path got, in order, and how it answers: the first
/// `fail_first` requests of a path get `fail_code`.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<HashMap<String, Vec<serde_json::Value>>>>,
    attempts: Arc<Mutex<HashMap<String, usize>>>,
    rules: Arc<HashMap<String, (usize, u16)>>,
}

async fn receive(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> StatusCode {
    if path == "hang" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let n = {
        let mut a = r.attempts.lock().expect("attempts");
        let n = a.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    if let Some((fail_first, code)) = r.rules.get(&path)
        && n <= *fail_first
    {
        return StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    r.got
        .lock()
        .expect("got")
        .entry(path)
        .or_default()
        .push(body);
    StatusCode::OK
}

async fn start_receiver(rules: &[(&str, usize, u16)]) -> (Receiver, String) {
    let r = Receiver {
        rules: Arc::new(
            rules
                .iter()
                .map(|(p, n, c)| (p.to_string(), (*n, *c)))
                .collect(),
        ),
        ..Receiver::default()
    };
    let app = axum::Router::new()
        .route("/{path}", axum::routing::post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    (r, url)
}

fn target(url: String, format: NotificationFormat, events: &[&str]) -> NotificationTarget {
    NotificationTarget {
        url,
        format,
        events: events.iter().map(|s| s.to_string()).collect(),
    }
}

fn fast() -> DeliveryPolicy {
    DeliveryPolicy {
        timeout: Duration::from_secs(2),
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        retries: 3,
    }
}

fn play_failure(hub: &Hub) {
    let mut running = entry("web", Phase::Progressing, 100);
    running.ended_at = None;
    hub.record_history(running.clone());
    // The same entry updated (counts moved): not a second "started".
    hub.record_history(running);
    let mut failed = entry("web", Phase::Failed, 100);
    failed.reason = "progress deadline exceeded".into();
    hub.record_history(failed);
    hub.emit(Event::Revert {
        service: "web".into(),
        commit: Some("fedcba9876543210".into()),
        reverted: vec!["0123456789abcdef".into()],
        ok: true,
        message: "Revert \"bump to 1.4.2\"".into(),
    });
    let mut back = entry("web", Phase::Complete, 200);
    back.rollback = true;
    hub.record_history(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_generic_with_retries() {
    let (r, url) = start_receiver(&[("generic", 2, 503), ("rejects", 5, 400)]).await;
    let hub = Hub::new();
    let notifier = Arc::new(Notifier::with_policy(
        vec![
            target(format!("{url}/hang"), NotificationFormat::Slack, &[]),
            target(format!("{url}/slack"), NotificationFormat::Slack, &[]),
            target(
                format!("{url}/generic"),
                NotificationFormat::Generic,
                &["failed", "revertPushed"],
            ),
            target(
                format!("{url}/rejects"),
                NotificationFormat::Generic,
                &["failed"],
            ),
        ],
        fast(),
    ));
    let follower = notifier.follow(&hub);
    eventually("notifier subscribed", || hub.subscriber_count() == 1).await;
    play_failure(&hub);

    let got = |p: &str| {
        r.got
            .lock()
            .expect("got")
            .get(p)
            .cloned()
            .unwrap_or_default()
    };
    // A target that never answers does not hold back the others.
    eventually("slack got 4", || got("slack").len() == 4).await;
    eventually("generic got 2", || got("generic").len() == 2).await;
    let slack: Vec<String> = got("slack")
        .iter()
        .map(|b| b["text"].as_str().unwrap_or_default().to_string())
        .collect();
    // Delivery is concurrent per notification: compare as a set.
    let has = |needle: &str| slack.iter().any(|t| t.contains(needle));
    assert!(
        has(":rocket: *web* rollout started: `aaaaaaaaaa` → `bbbbbbbbbb`"),
        "{slack:?}"
    );
    assert!(
        has(":x: *web* rollout of `bbbbbbbbbb` failed: progress deadline exceeded"),
        "{slack:?}"
    );
    assert!(
        has(":leftwards_arrow_with_hook: *web* revert commit pushed: `fedcba9`"),
        "{slack:?}"
    );
    assert!(has(":rewind: *web* rolled back to"), "{slack:?}");
    assert!(
        got("slack")
            .iter()
            .all(|b| b.as_object().map(|o| o.len()) == Some(1))
    );

    let generic = got("generic");
    let events: Vec<&str> = generic.iter().filter_map(|b| b["event"].as_str()).collect();
    assert!(
        events.contains(&"failed") && events.contains(&"revertPushed"),
        "{events:?}"
    );
    let failed = generic
        .iter()
        .find(|b| b["event"] == "failed")
        .expect("failed body");
    assert_eq!(failed["service"], "web");
    assert_eq!(failed["reason"], "progress deadline exceeded");
    assert_eq!(
        failed["commit"]["sha"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    // 503 twice for the first delivery, then success: retried.
    let attempts = |p: &str| r.attempts.lock().expect("a").get(p).copied().unwrap_or(0);
    assert!(attempts("generic") >= 4, "attempts {}", attempts("generic"));
    // 400 is final: one attempt, no retries.
    eventually("rejects tried", || attempts("rejects") >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts("rejects"), 1);
    assert!(got("rejects").is_empty());
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_never_blocks_and_targets_can_change() {
    let (r, url) = start_receiver(&[]).await;
    let notifier = Notifier::with_policy(vec![], fast());
    let n = floyd::notifications::Notification::from_entry(&entry("web", Phase::Complete, 1))
        .expect("notification");
    // No targets: nothing is sent.
    notifier.send(n.clone());
    notifier.set_targets(vec![target(
        format!("{url}/a"),
        NotificationFormat::Generic,
        &[],
    )]);
    for _ in 0..3 {
        notifier.send(n.clone());
    }
    let got = || {
        r.got
            .lock()
            .expect("got")
            .get("a")
            .map(Vec::len)
            .unwrap_or(0)
    };
    eventually("3 deliveries", || got() == 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(got(), 3);
}
