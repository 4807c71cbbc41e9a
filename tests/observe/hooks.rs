//! `POST /hooks/{provider}`: status codes the route owns (the signature
//! schemes themselves are `source::webhook`'s and tested there).

use crate::fixture::*;
use floyd::server::Config;
use reqwest::StatusCode;

#[tokio::test]
async fn unknown_provider_is_404() {
    let s = Server::start().await;
    let res = client()
        .post(s.at("/hooks/sourcehut"))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = res.json().await.expect("json");
    assert!(body["error"].as_str().unwrap_or("").contains("github"));
    s.shutdown().await;
}

#[tokio::test]
async fn without_a_secret_webhooks_are_off() {
    let s = Server::start_with(Config::default()).await;
    let res = client()
        .post(s.at("/hooks/github"))
        .header("x-github-event", "push")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = res.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("--webhook-secret-file")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let s = Server::start().await; // 64 KiB limit
    let res = client()
        .post(s.at("/hooks/github"))
        .header("x-github-event", "push")
        .body(vec![b' '; 65 * 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        s.hub
            .metrics
            .encode()
            .contains("floyd_webhook_requests_total{provider=\"github\",result=\"too_large\"} 1")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn bad_signature_is_401_and_triggers_nothing() {
    let s = Server::start().await;
    let mut triggers = s.hub.take_fetch_triggers().expect("trigger receiver");
    let res = client()
        .post(s.at("/hooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-1")
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .header("content-type", "application/json")
        .body(r#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body = res.text().await.expect("body");
    assert!(!body.contains(HOOK_SECRET), "secret echoed: {body}");
    assert!(
        triggers.try_recv().is_err(),
        "a refused webhook triggered a fetch"
    );
    assert!(
        s.hub.metrics.encode().contains(
            "floyd_webhook_requests_total{provider=\"github\",result=\"unauthorized\"} 1"
        )
    );
    s.shutdown().await;
}
