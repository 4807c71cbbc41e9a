//! Rollout notifications to webhook targets (`floyd.yaml` `notifications:`).
//!
//! Owns: turning rollout events into Slack-compatible (`{"text": ...}`) or
//! generic JSON bodies, delivery with retries and backoff, and never making a
//! rollout wait: [`Notifier::send`] only queues, a background task delivers.
//! Must not: log a target URL in full (Slack webhook URLs are credentials),
//! or block the caller.
//!
//! Two ways to feed it: call [`Notifier::send`] with a [`Notification`], or
//! let it follow the hub's event stream with [`Notifier::follow`]. Use one.

use crate::engine::Phase;
use crate::hub::{CommitInfo, Event, HistoryEntry, Hub};
use crate::manifest::Revision;
use crate::manifest::model::{NotificationFormat, NotificationTarget};
use crate::time::Time;
use backon::{ExponentialBuilder, Retryable};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Queued notifications beyond this are dropped (with a warning): a dead
/// target must not grow memory without bound.
const QUEUE: usize = 1024;
/// Deliveries in flight at once, over all targets. High enough that a few
/// dead targets (each holding a slot through its timeouts and retries) do not
/// hold back the live ones; bounded so a flood cannot spawn without limit.
const IN_FLIGHT: usize = 256;

/// What happened. The names (`as_str`) are what `notifications[].events` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NotificationKind {
    Started,
    Completed,
    Failed,
    RolledBack,
    Degraded,
    RevertPushed,
    RevertFailed,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 7] = [
        NotificationKind::Started,
        NotificationKind::Completed,
        NotificationKind::Failed,
        NotificationKind::RolledBack,
        NotificationKind::Degraded,
        NotificationKind::RevertPushed,
        NotificationKind::RevertFailed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Started => "started",
            NotificationKind::Completed => "completed",
            NotificationKind::Failed => "failed",
            NotificationKind::RolledBack => "rolledBack",
            NotificationKind::Degraded => "degraded",
            NotificationKind::RevertPushed => "revertPushed",
            NotificationKind::RevertFailed => "revertFailed",
        }
    }
    fn emoji(self) -> &'static str {
        match self {
            NotificationKind::Started => ":rocket:",
            NotificationKind::Completed => ":white_check_mark:",
            NotificationKind::Failed => ":x:",
            NotificationKind::RolledBack => ":rewind:",
            NotificationKind::Degraded => ":warning:",
            NotificationKind::RevertPushed => ":leftwards_arrow_with_hook:",
            NotificationKind::RevertFailed => ":warning:",
        }
    }
}

/// One rollout event for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(rename = "event")]
    pub kind: NotificationKind,
    pub service: String,
    /// The revision rolled out (or rolled back to).
    pub revision: Option<Revision>,
    pub from_revision: Option<Revision>,
    pub commit: Option<CommitInfo>,
    pub reason: String,
    pub revert_commit: Option<String>,
    pub at: Time,
}

impl Notification {
    /// One line for chat.
    pub fn text(&self) -> String {
        let rev = |r: &Option<Revision>| {
            r.as_ref()
                .map(|r| format!("`{r}`"))
                .unwrap_or_else(|| "(none)".into())
        };
        let mut s = format!("{} *{}* ", self.kind.emoji(), self.service);
        match self.kind {
            NotificationKind::Started => s.push_str(&format!(
                "rollout started: {} → {}",
                rev(&self.from_revision),
                rev(&self.revision)
            )),
            NotificationKind::Completed => {
                s.push_str(&format!("rollout complete: {}", rev(&self.revision)))
            }
            NotificationKind::Failed => {
                s.push_str(&format!("rollout of {} failed", rev(&self.revision)))
            }
            NotificationKind::RolledBack => {
                s.push_str(&format!("rolled back to {}", rev(&self.revision)))
            }
            NotificationKind::Degraded => s.push_str("is degraded"),
            NotificationKind::RevertPushed => s.push_str(&format!(
                "revert commit pushed{}",
                self.revert_commit
                    .as_deref()
                    .map(|c| format!(": `{}`", short(c)))
                    .unwrap_or_default()
            )),
            NotificationKind::RevertFailed => s.push_str("could not push the revert commit"),
        }
        if !self.reason.is_empty() {
            s.push_str(&format!(": {}", self.reason));
        }
        if let Some(c) = &self.commit {
            s.push_str(&format!(
                " (commit `{}` \"{}\" by {})",
                short(&c.sha),
                c.summary,
                c.author
            ));
        }
        s
    }

    /// The request body for a target format.
    pub fn body(&self, format: NotificationFormat) -> serde_json::Value {
        match format {
            NotificationFormat::Slack => serde_json::json!({ "text": self.text() }),
            NotificationFormat::Generic => {
                let mut v = serde_json::to_value(self).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("text".into(), self.text().into());
                }
                v
            }
        }
    }

    /// The notification a hub rollout entry stands for, if any.
    pub fn from_entry(entry: &HistoryEntry) -> Option<Notification> {
        let kind = match entry.result {
            Phase::Progressing => NotificationKind::Started,
            Phase::Complete if entry.rollback => NotificationKind::RolledBack,
            Phase::Complete => NotificationKind::Completed,
            Phase::RolledBack => NotificationKind::RolledBack,
            Phase::Failed => NotificationKind::Failed,
            Phase::Degraded => NotificationKind::Degraded,
            Phase::Paused | Phase::AwaitingPromotion => return None,
        };
        Some(Notification {
            kind,
            service: entry.service.clone(),
            revision: Some(entry.to_revision.clone()),
            from_revision: entry.from_revision.clone(),
            commit: entry.commit.clone(),
            reason: entry.reason.clone(),
            revert_commit: entry.revert_commit.clone(),
            at: entry.ended_at.unwrap_or(entry.started_at),
        })
    }
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// A target URL fit for logs: scheme, host and port only (the path of a
/// Slack or chat webhook is its credential).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}/…", u.scheme()),
            (Some(h), None) => format!("{}://{h}/…", u.scheme()),
            _ => "[unparseable url]".into(),
        },
        Err(_) => "[unparseable url]".into(),
    }
}

/// Delivery tuning (tests use short delays).
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    pub timeout: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub retries: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: Duration::from_secs(5),
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            retries: 5,
        }
    }
}

/// Sends notifications in the background. Cheap to share (`Arc`).
pub struct Notifier {
    tx: mpsc::Sender<(Notification, Vec<NotificationTarget>)>,
    targets: Arc<RwLock<Vec<NotificationTarget>>>,
}

impl Notifier {
    /// Starts the delivery task on the current tokio runtime.
    pub fn new(targets: Vec<NotificationTarget>) -> Notifier {
        Notifier::with_policy(targets, DeliveryPolicy::default())
    }

    pub fn with_policy(targets: Vec<NotificationTarget>, policy: DeliveryPolicy) -> Notifier {
        let (tx, rx) = mpsc::channel(QUEUE);
        let targets = Arc::new(RwLock::new(targets));
        tokio::spawn(deliver_loop(rx, policy));
        Notifier { tx, targets }
    }

    /// Replace the targets (each synced commit may change `floyd.yaml`).
    pub fn set_targets(&self, targets: Vec<NotificationTarget>) {
        if let Ok(mut t) = self.targets.write() {
            *t = targets;
        }
    }

    /// Queue a notification for the targets configured now; never waits.
    /// Dropped (with a warning) when the queue is full.
    pub fn send(&self, n: Notification) {
        let to: Vec<NotificationTarget> = match self.targets.read() {
            Ok(t) => t.iter().filter(|t| wants(t, n.kind)).cloned().collect(),
            Err(_) => return,
        };
        if to.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send((n, to)) {
            tracing::warn!(error = %e, "notification queue full or closed; notification dropped");
        }
    }

    /// Follows the hub's events and sends a notification for each rollout
    /// start and end and each revert, once each. Ends with the hub's stream.
    pub fn follow(self: &Arc<Self>, hub: &Hub) -> tokio::task::JoinHandle<()> {
        let mut rx = hub.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            let mut seen: HashSet<(String, Time, Revision, NotificationKind)> = HashSet::new();
            loop {
                let event = match rx.recv().await.map(Arc::unwrap_or_clone) {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "notifier lagged behind the event stream");
                        continue;
                    }
                    Err(_) => break,
                };
                let n = match &event {
                    Event::Rollout { entry } => {
                        let Some(n) = Notification::from_entry(entry) else {
                            continue;
                        };
                        // Entries are re-sent on every update; notify each kind once.
                        if seen.len() > 10_000 {
                            seen.clear();
                        }
                        if !seen.insert((
                            entry.service.clone(),
                            entry.started_at,
                            entry.to_revision.clone(),
                            n.kind,
                        )) {
                            continue;
                        }
                        n
                    }
                    Event::Revert {
                        service,
                        commit,
                        ok,
                        message,
                        ..
                    } => Notification {
                        kind: if *ok {
                            NotificationKind::RevertPushed
                        } else {
                            NotificationKind::RevertFailed
                        },
                        service: service.clone(),
                        revision: None,
                        from_revision: None,
                        commit: None,
                        reason: message.clone(),
                        revert_commit: commit.clone(),
                        at: Time::now_wall(),
                    },
                    _ => continue,
                };
                me.send(n);
            }
        })
    }
}

fn wants(target: &NotificationTarget, kind: NotificationKind) -> bool {
    target.events.is_empty() || target.events.iter().any(|e| e == kind.as_str())
}

async fn deliver_loop(
    mut rx: mpsc::Receiver<(Notification, Vec<NotificationTarget>)>,
    policy: DeliveryPolicy,
) {
    let client = match reqwest::Client::builder()
        .timeout(policy.timeout)
        .redirect(crate::net::same_origin_redirects())
        .user_agent(concat!("floyd/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the notification HTTP client; notifications are off");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some((n, to)) = rx.recv().await {
        for target in to {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let client = client.clone();
            let body = n.body(target.format);
            let policy = policy.clone();
            let kind = n.kind;
            tokio::spawn(async move {
                let _permit = permit;
                deliver(&client, &target, &body, &policy, kind).await;
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    /// Worth retrying: connection errors, timeouts, 429, 5xx.
    #[error("{0} (will retry)")]
    Transient(String),
    /// The target said no (4xx): retrying will not help.
    #[error("{0}")]
    Permanent(String),
}

async fn deliver(
    client: &reqwest::Client,
    target: &NotificationTarget,
    body: &serde_json::Value,
    policy: &DeliveryPolicy,
    kind: NotificationKind,
) {
    let where_ = redact_url(&target.url);
    let attempt = || async {
        let res = client
            .post(&target.url)
            .json(body)
            .send()
            .await
            // reqwest errors carry the full URL: strip it.
            .map_err(|e| SendError::Transient(e.without_url().to_string()))?;
        let code = res.status();
        if code.is_success() {
            Ok(())
        } else if code.is_server_error() || code.as_u16() == 429 {
            Err(SendError::Transient(format!("HTTP {code}")))
        } else {
            Err(SendError::Permanent(format!("HTTP {code}")))
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.retries)
        .with_jitter();
    let result = attempt
        .retry(backoff)
        .when(|e| matches!(e, SendError::Transient(_)))
        .notify(|e, after| {
            tracing::debug!(target_url = %where_, error = %e, retry_in = ?after, "notification failed; retrying");
        })
        .await;
    match result {
        Ok(()) => tracing::debug!(target_url = %where_, event = kind.as_str(), "notification sent"),
        Err(e) => {
            tracing::warn!(target_url = %where_, event = kind.as_str(), error = %e, "notification not delivered")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `floyd.yaml` accepts exactly the events Floyd sends.
    #[test]
    fn notification_events_are_the_kinds_floyd_sends() {
        let sent: Vec<&str> = NotificationKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(sent, crate::manifest::NOTIFICATION_EVENTS);
    }

    fn entry(result: Phase, rollback: bool) -> HistoryEntry {
        HistoryEntry {
            service: "web".into(),
            commit: Some(CommitInfo {
                sha: "0123456789abcdef".into(),
                summary: "bump web".into(),
                author: "Ada".into(),
                time: 0,
            }),
            from_revision: Some(Revision::from("aaaaaaaaaa")),
            to_revision: Revision::from("bbbbbbbbbb"),
            started_at: Time(1),
            ended_at: None,
            result,
            reason: String::new(),
            rollback,
            revert_commit: None,
        }
    }

    #[test]
    fn entry_kinds() {
        use NotificationKind::*;
        let table = [
            (Phase::Progressing, false, Some(Started)),
            (Phase::Complete, false, Some(Completed)),
            (Phase::Complete, true, Some(RolledBack)),
            (Phase::RolledBack, false, Some(RolledBack)),
            (Phase::Failed, false, Some(Failed)),
            (Phase::Degraded, false, Some(Degraded)),
            (Phase::Paused, false, None),
            (Phase::AwaitingPromotion, false, None),
        ];
        for (phase, rb, want) in table {
            assert_eq!(
                Notification::from_entry(&entry(phase, rb)).map(|n| n.kind),
                want,
                "{phase:?} rollback={rb}"
            );
        }
    }

    #[test]
    fn bodies() {
        let n = Notification::from_entry(&entry(Phase::Failed, false)).expect("failed");
        let slack = n.body(NotificationFormat::Slack);
        let text = slack["text"].as_str().expect("text");
        assert!(text.contains("*web*") && text.contains("failed") && text.contains("0123456"));
        assert_eq!(slack.as_object().map(|o| o.len()), Some(1));
        let g = n.body(NotificationFormat::Generic);
        assert_eq!(g["event"], "failed");
        assert_eq!(g["service"], "web");
        assert_eq!(g["revision"], "bbbbbbbbbb");
        assert_eq!(g["fromRevision"], "aaaaaaaaaa");
        assert_eq!(g["commit"]["sha"], "0123456789abcdef");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:9000/hook?token=abc"),
            "http://127.0.0.1:9000/…"
        );
        assert_eq!(redact_url("not a url"), "[unparseable url]");
    }

    #[test]
    fn event_filter() {
        let t = NotificationTarget {
            url: "http://x".into(),
            format: NotificationFormat::Slack,
            events: vec!["failed".into(), "revertPushed".into()],
        };
        assert!(wants(&t, NotificationKind::Failed));
        assert!(wants(&t, NotificationKind::RevertPushed));
        assert!(!wants(&t, NotificationKind::Started));
        let all = NotificationTarget {
            events: vec![],
            ..t
        };
        assert!(NotificationKind::ALL.iter().all(|k| wants(&all, *k)));
    }
}
