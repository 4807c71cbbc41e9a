//! JSON API: shapes, status codes, token enforcement, errors.

use crate::fixture::*;
use floyd::engine::{Command, Phase};
use reqwest::StatusCode;
use serde_json::Value;

async fn json(res: reqwest::Response) -> (StatusCode, Value) {
    let code = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    (code, res.json().await.expect("json body"))
}

#[tokio::test]
async fn services_list_and_one_service() {
    let s = Server::start().await;
    s.hub.set_service(view("web", Phase::Progressing));
    s.hub.set_service(complete("api"));
    let c = client();

    let (code, body) = json(c.get(s.at("/api/v1/services")).send().await.expect("get")).await;
    assert_eq!(code, StatusCode::OK);
    let list = body["services"].as_array().expect("services array");
    let names: Vec<&str> = list.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["api", "web"]);

    let (code, web) = json(
        c.get(s.at("/api/v1/services/web"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(web["phase"], "Progressing");
    assert_eq!(web["strategy"], "RollingUpdate");
    assert_eq!(web["current_revision"], "aaaaaaaaaa");
    assert_eq!(web["target_revision"], "bbbbbbbbbb");
    assert_eq!(web["commit"]["summary"], "web: bump to 1.4.2");
    assert_eq!(web["revisions"][0]["revision"], "bbbbbbbbbb");
    assert_eq!(web["revisions"][0]["desired"], 4);
    assert_eq!(web["revisions"][0]["ready"], 2);
    assert_eq!(web["revisions"][1]["terminating"], 1);
    assert_eq!(web["gates"][0]["name"], "successRate");
    assert_eq!(web["gates"][0]["verdict"]["result"], "Pass");
    assert_eq!(web["gpu"]["kind"], "NVIDIA-A100-SXM4-80GB");
    assert_eq!(web["gpu"]["held_by_service"], 4);
    s.shutdown().await;
}

#[tokio::test]
async fn history_newest_first_with_limit() {
    let s = Server::start().await;
    s.hub.set_service(complete("web"));
    s.hub.record_history(entry("web", Phase::Complete, 100));
    let mut failed = entry("web", Phase::Failed, 200);
    failed.reason = "progress deadline exceeded".into();
    s.hub.record_history(failed);
    let mut rb = entry("web", Phase::Complete, 300);
    rb.rollback = true;
    rb.revert_commit = Some("fedcba9876543210fedcba9876543210fedcba98".into());
    s.hub.record_history(rb);
    let c = client();

    let (code, body) = json(
        c.get(s.at("/api/v1/services/web/history"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["service"], "web");
    let h = body["history"].as_array().expect("history");
    assert_eq!(h.len(), 3);
    assert_eq!(h[0]["rollback"], true);
    assert_eq!(
        h[0]["revert_commit"],
        "fedcba9876543210fedcba9876543210fedcba98"
    );
    assert_eq!(h[1]["result"], "Failed");
    assert_eq!(h[1]["reason"], "progress deadline exceeded");
    assert_eq!(h[2]["result"], "Complete");
    assert_eq!(h[2]["from_revision"], "aaaaaaaaaa");

    let (_, body) = json(
        c.get(s.at("/api/v1/services/web/history?limit=1"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(body["history"].as_array().map(Vec::len), Some(1));

    let (code, body) = json(
        c.get(s.at("/api/v1/services/web/history?limit=-3"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(body["status"], 400);
    assert!(body["error"].as_str().unwrap_or("").contains("limit"));
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_things_are_json_404s() {
    let s = Server::start().await;
    s.hub.set_service(complete("web"));
    let c = client();
    for path in [
        "/api/v1/services/nope",
        "/api/v1/services/nope/history",
        "/api/v1/nothing-here",
        "/favicon.ico",
    ] {
        let (code, body) = json(c.get(s.at(path)).send().await.expect("get")).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["status"], 404, "{path}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}"
        );
    }
    let (code, body) = json(
        c.delete(s.at("/api/v1/services"))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["status"], 405);
    s.shutdown().await;
}

#[tokio::test]
async fn controls_need_the_token() {
    let s = Server::start().await;
    s.hub.set_service(view("web", Phase::AwaitingPromotion));
    let c = client();
    let url = s.at("/api/v1/services/web/promote");

    let res = c.post(&url).send().await.expect("post");
    assert!(res.headers().contains_key("www-authenticate"));
    let (code, body) = json(res).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(body["status"], 401);

    let (code, body) = json(
        c.post(&url)
            .bearer_auth("wrong-token")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(!body.to_string().contains(TOKEN), "token echoed: {body}");
    assert!(
        s.commands.lock().expect("log").is_empty(),
        "a refused request reached the controller"
    );

    let (code, body) = json(c.post(&url).bearer_auth(TOKEN).send().await.expect("post")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["command"], "promote");
    assert_eq!(
        s.commands.lock().expect("log").as_slice(),
        [("web".to_string(), Command::Promote)]
    );
    assert_eq!(
        s.hub.service("web").map(|v| v.phase),
        Some(Phase::Progressing)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn controls_status_codes() {
    let s = Server::start().await;
    s.hub.set_service(view("web", Phase::Progressing));
    let c = client();
    let post = |path: &str| c.post(s.at(path)).bearer_auth(TOKEN).send();

    // Not awaiting promotion: the controller refuses → 409 with its reason.
    let (code, body) = json(post("/api/v1/services/web/promote").await.expect("post")).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap_or("").contains("Progressing"),
        "{body}"
    );
    let (code, _) = json(post("/api/v1/services/web/restart").await.expect("post")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = json(post("/api/v1/services/ghost/abort").await.expect("post")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let (code, _) = json(post("/api/v1/services/web/pause").await.expect("post")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(s.hub.service("web").map(|v| v.phase), Some(Phase::Paused));
    let (code, _) = json(post("/api/v1/services/web/resume").await.expect("post")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let (code, _) = json(post("/api/v1/services/web/abort").await.expect("post")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(
        s.hub.service("web").map(|v| v.phase),
        Some(Phase::RolledBack)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn controls_without_controller_are_503() {
    // A hub whose controller is gone (its command receiver dropped).
    let hub = std::sync::Arc::new(floyd::hub::Hub::new());
    drop(hub.take_commands());
    hub.set_service(view("web", Phase::Progressing));
    let app = floyd::server::router(hub, floyd::server::Config::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (code, body) = json(
        client()
            .post(format!("http://{addr}/api/v1/services/web/pause"))
            .header("content-type", "application/json")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn open_controls_without_token() {
    let s = Server::start_with(floyd::server::Config::default()).await;
    s.hub.set_service(view("web", Phase::Progressing));
    let (code, _) = json(
        client()
            .post(s.at("/api/v1/services/web/pause"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    s.shutdown().await;
}

/// What a web page in the operator's browser can send to a Floyd on
/// loopback without a token: a form POST (no JSON), a cross-origin fetch
/// (Origin of the page), a DNS-rebinding request (Host of the attacker's
/// name). Each is refused before the controller hears of it.
#[tokio::test]
async fn controls_without_token_refuse_cross_site_requests() {
    let s = Server::start_with(floyd::server::Config {
        allowed_origins: vec!["https://floyd.example.com".into()],
        ..floyd::server::Config::default()
    })
    .await;
    s.hub.set_service(view("web", Phase::Progressing));
    let url = s.at("/api/v1/services/web/pause");
    let own = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // (headers, expected status, words of the error)
    type Headers = Vec<(&'static str, String)>;
    let cases: Vec<(Headers, StatusCode, &str)> = vec![
        (
            vec![("content-type", "application/x-www-form-urlencoded".into())],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/json",
        ),
        (
            vec![
                ("content-type", "application/json".into()),
                ("origin", "https://evil.example".into()),
            ],
            StatusCode::FORBIDDEN,
            "Origin https://evil.example",
        ),
        (
            vec![
                ("content-type", "application/json".into()),
                ("host", "rebind.evil.example:9180".into()),
            ],
            StatusCode::FORBIDDEN,
            "Host \"rebind.evil.example:9180\"",
        ),
        // Same origin (the dashboard) and the allow-list pass (ACCEPTED
        // here: reached the controller).
        (
            vec![
                ("content-type", "application/json".into()),
                ("origin", format!("http://{own}")),
            ],
            StatusCode::ACCEPTED,
            "",
        ),
        (
            vec![
                ("content-type", "application/json; charset=utf-8".into()),
                ("host", "floyd.example.com".into()),
                ("origin", "https://floyd.example.com".into()),
            ],
            StatusCode::ACCEPTED,
            "",
        ),
    ];
    for (i, (headers, want, words)) in cases.into_iter().enumerate() {
        let mut req = client().post(&url).body("{}");
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let (code, body) = json(req.send().await.expect("post")).await;
        if want == StatusCode::ACCEPTED {
            // Reached the controller (which may refuse a second pause).
            assert!(
                code == StatusCode::ACCEPTED || code == StatusCode::CONFLICT,
                "case {i}: {code} {body}"
            );
            continue;
        }
        assert_eq!(code, want, "case {i}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains(words),
            "case {i}: {body}"
        );
    }
    s.shutdown().await;
}

/// With a token, a bearer-authenticated request needs no JSON body, but a
/// browser's cross-origin request is still refused.
#[tokio::test]
async fn controls_with_token_still_refuse_foreign_origins() {
    let s = Server::start_with(floyd::server::Config {
        api_token: Some(floyd::server::Secret::new("t0k")),
        ..floyd::server::Config::default()
    })
    .await;
    s.hub.set_service(view("web", Phase::Progressing));
    let url = s.at("/api/v1/services/web/pause");
    let (code, body) = json(
        client()
            .post(&url)
            .bearer_auth("t0k")
            .header("origin", "https://evil.example")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, body) = json(
        client()
            .post(&url)
            .bearer_auth("t0k")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn health_ready_info() {
    let s = Server::start().await;
    let c = client();
    let res = c.get(s.at("/healthz")).send().await.expect("healthz");
    assert_eq!(res.status(), StatusCode::OK);
    let (code, body) = json(c.get(s.at("/readyz")).send().await.expect("readyz")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    s.hub.set_synced();
    let (code, body) = json(c.get(s.at("/readyz")).send().await.expect("readyz")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["ready"], true);
    s.hub.set_git_reachable(false);
    let (code, body) = json(c.get(s.at("/readyz")).send().await.expect("readyz")).await;
    assert_eq!(code, StatusCode::OK, "git down must not make Floyd unready");
    assert_eq!(body["gitReachable"], false);

    let (_, info) = json(c.get(s.at("/api/v1/info")).send().await.expect("info")).await;
    assert_eq!(info["controlsRequireToken"], true);
    assert_eq!(info["webhooksEnabled"], true);
    assert!(!info.to_string().contains(TOKEN) && !info.to_string().contains(HOOK_SECRET));
    s.shutdown().await;
}

#[tokio::test]
async fn dashboard_is_self_contained() {
    let s = Server::start().await;
    let res = client().get(s.at("/")).send().await.expect("get /");
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = res.text().await.expect("html");
    assert!(html.contains("/api/v1/events"));
    // No external resources: every src/href is local or a fragment.
    for needle in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn"] {
        assert!(!html.contains(needle), "external reference {needle:?}");
    }
    s.shutdown().await;
}
