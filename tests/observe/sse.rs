//! `GET /api/v1/events`: server-sent events.

use crate::fixture::*;
use floyd::engine::Phase;
use floyd::hub::Event;
use futures::StreamExt;
use serde_json::Value;

/// A minimal SSE reader over a reqwest byte stream.
pub struct SseReader {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    pub async fn open(url: &str) -> SseReader {
        let res = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("open event stream");
        assert_eq!(res.status(), reqwest::StatusCode::OK);
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseReader {
            stream: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event as (name, data); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                let value = serde_json::from_str(&data).expect("event data is JSON");
                return Some((name, value));
            }
            let chunk = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("event within the test timeout")?;
            self.buf
                .push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        }
    }

    /// Skips to the next event with this name.
    pub async fn next_named(&mut self, want: &str) -> Value {
        loop {
            let (name, v) = self.next().await.expect("stream open");
            if name == want {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn every_change_is_an_event() {
    let s = Server::start().await;
    let mut sse = SseReader::open(&s.at("/api/v1/events")).await;
    let (name, _) = sse.next().await.expect("hello");
    assert_eq!(name, "hello");

    s.hub.set_service(view("web", Phase::Progressing));
    let ev = sse.next_named("service").await;
    assert_eq!(ev["type"], "service");
    assert_eq!(ev["service"]["name"], "web");
    assert_eq!(ev["service"]["phase"], "Progressing");

    // An instance count change is an event too.
    let mut v = view("web", Phase::Progressing);
    v.revisions[0].ready = 3;
    v.revisions[0].available = 3;
    s.hub.set_service(v.clone());
    let ev = sse.next_named("service").await;
    assert_eq!(ev["service"]["revisions"][0]["ready"], 3);

    s.hub.record_history(entry("web", Phase::Failed, 10));
    let ev = sse.next_named("rollout").await;
    assert_eq!(ev["entry"]["result"], "Failed");

    s.hub.emit(Event::Revert {
        service: "web".into(),
        commit: Some("fedcba98".into()),
        reverted: vec!["01234567".into()],
        ok: true,
        message: "pushed".into(),
    });
    let ev = sse.next_named("revert").await;
    assert_eq!(ev["commit"], "fedcba98");
    s.shutdown().await;
}

#[tokio::test]
async fn filter_by_service() {
    let s = Server::start().await;
    let mut sse = SseReader::open(&s.at("/api/v1/events?service=api")).await;
    assert_eq!(sse.next().await.map(|e| e.0).as_deref(), Some("hello"));
    s.hub.set_service(view("web", Phase::Progressing));
    s.hub.set_service(view("api", Phase::Failed));
    let ev = sse.next_named("service").await;
    assert_eq!(ev["service"]["name"], "api", "web's event leaked through");
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let s = Server::start().await;
    let mut a = SseReader::open(&s.at("/api/v1/events")).await;
    let mut b = SseReader::open(&s.at("/api/v1/events")).await;
    assert!(a.next().await.is_some() && b.next().await.is_some());
    // Must not hang waiting for the two endless streams.
    s.shutdown().await;
    assert!(
        a.next().await.is_none(),
        "stream a still open after shutdown"
    );
    assert!(
        b.next().await.is_none(),
        "stream b still open after shutdown"
    );
}
