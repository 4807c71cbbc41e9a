//! Secrets never reach a log line: every line logged by this test binary
//! (all tests share the process-wide subscriber installed here) is scanned
//! for the API token, the webhook secret and a notification URL's secret path.

use crate::fixture::*;
use floyd::engine::Phase;
use floyd::manifest::{NotificationFormat, NotificationTarget};
use floyd::notifications::{DeliveryPolicy, Notifier};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a JSON subscriber at TRACE level writing to a buffer.
pub fn captured() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured::default();
        let w = c.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || w.clone())
            .try_init();
        c
    })
    .clone()
}

const NOTIFY_PATH_SECRET: &str = "T0000-B0000-notify-path-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_logged() {
    let logs = captured();
    let s = Server::start().await;
    s.hub.set_service(view("web", Phase::Progressing));
    let c = client();
    // Wrong and right tokens, in every place a token travels.
    for t in ["wrong", TOKEN] {
        let _ = c
            .post(s.at("/api/v1/services/web/pause"))
            .bearer_auth(t)
            .send()
            .await
            .expect("post");
    }
    // Query strings are not logged (people paste tokens into URLs).
    let _ = c
        .get(s.at(&format!("/api/v1/services?token={TOKEN}")))
        .send()
        .await
        .expect("get");
    // Webhooks with bad signatures (the secret is the HMAC key: never logged).
    for provider in ["github", "gitlab", "generic"] {
        let _ = c
            .post(s.at(&format!("/hooks/{provider}")))
            .header("x-gitlab-token", "not-the-secret")
            .header("x-hub-signature-256", "sha256=00")
            .body(r#"{"ref":"refs/heads/main"}"#)
            .send()
            .await
            .expect("post");
    }
    // A notification target that fails: its URL is logged redacted.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let n = Notifier::with_policy(
        vec![NotificationTarget {
            url: format!("http://{dead}/services/{NOTIFY_PATH_SECRET}"),
            format: NotificationFormat::Slack,
            events: vec![],
        }],
        DeliveryPolicy {
            timeout: Duration::from_millis(500),
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
            retries: 1,
        },
    );
    n.send(
        floyd::notifications::Notification::from_entry(&entry("web", Phase::Failed, 1)).expect("n"),
    );
    let text = || String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    eventually("the failed notification was logged", || {
        text().contains("notification not delivered")
    })
    .await;
    s.shutdown().await;

    let all = text();
    let lines: Vec<&str> = all.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/api/v1/services/web/pause")),
        "request logging is not captured; the scan below would prove nothing"
    );
    for (i, line) in lines.iter().enumerate() {
        for secret in [TOKEN, HOOK_SECRET, NOTIFY_PATH_SECRET] {
            assert!(
                !line.contains(secret),
                "log line {i} contains a secret ({} chars):\n{line}",
                secret.len()
            );
        }
    }
}
