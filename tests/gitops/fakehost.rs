//! A fake Git host API on 127.0.0.1 (axum): GitHub, GitLab or Gitea
//! flavoured, keeping pull requests and statuses in memory and recording
//! every request (method, path with query, JSON body, when) for assertions
//! and for validation against GitHub's OpenAPI description.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use floyd::githost::HostKind;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const TOKEN: &str = "fake-host-token-5ec2e7";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub body: Value,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or(&self.uri)
    }
}

#[derive(Debug, Clone)]
pub struct FakePr {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub head: String,
    pub base: String,
    pub labels: Vec<String>,
    pub open: bool,
    pub comments: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FakeStatus {
    pub at: Instant,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: String,
}

#[derive(Default)]
pub struct State {
    pub requests: Vec<Recorded>,
    pub prs: Vec<FakePr>,
    pub statuses: Vec<FakeStatus>,
    /// Answer this many status requests with a rate-limit 403 (reset in
    /// `rate_limit_secs`).
    pub rate_limit_statuses: u32,
    pub rate_limit_secs: u64,
    pub rate_limited_at: Vec<Instant>,
}

pub struct FakeHost {
    pub kind: HostKind,
    pub url: String,
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeHost {
    pub async fn start(kind: HostKind) -> FakeHost {
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let st = st.clone();
                async move { handle(kind, &st, method, uri, headers, body) }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let base = match kind {
            HostKind::Github => "/api/v3",
            HostKind::Gitlab => "/api/v4",
            HostKind::Gitea => "/api/v1",
        };
        FakeHost {
            kind,
            url: format!("http://{addr}{base}"),
            state,
            task,
        }
    }

    pub fn config(&self, repo: &str) -> floyd::githost::HostConfig {
        floyd::githost::HostConfig {
            kind: self.kind,
            api: self.url.clone(),
            repo: repo.into(),
            token: floyd::githost::Token::new(TOKEN),
            via: floyd::githost::RevertVia::Push,
            public_url: None,
            status_aggregate_above: 20,
        }
    }

    pub fn host(&self, repo: &str) -> floyd::githost::GitHost {
        floyd::githost::GitHost::new(self.config(repo), std::time::Duration::from_secs(30)).unwrap()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
    pub fn prs(&self) -> Vec<FakePr> {
        self.state.lock().unwrap().prs.clone()
    }
    pub fn statuses(&self) -> Vec<FakeStatus> {
        self.state.lock().unwrap().statuses.clone()
    }
}

fn j(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3A", ":").replace("%2F", "/"))
    })
}

fn handle(
    kind: HostKind,
    st: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::String("<not json>".into()))
    };
    let mut s = st.lock().unwrap();
    s.requests.push(Recorded {
        method: method.to_string(),
        uri: uri.to_string(),
        body: body.clone(),
    });
    let auth_ok = match kind {
        HostKind::Github => {
            headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"))
                && headers.get("accept").and_then(|v| v.to_str().ok())
                    == Some("application/vnd.github+json")
        }
        HostKind::Gitlab => {
            headers.get("private-token").and_then(|v| v.to_str().ok()) == Some(TOKEN)
        }
        HostKind::Gitea => {
            headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("token {TOKEN}"))
        }
    };
    if !auth_ok {
        return j(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Bad credentials"}),
        );
    }
    let path = uri.path().to_string();
    let seg: Vec<&str> = path.trim_matches('/').split('/').skip(2).collect();
    let m = method.as_str();
    let pr_json = |p: &FakePr| match kind {
        HostKind::Gitlab => json!({
            "iid": p.number, "web_url": format!("http://fake/mr/{}", p.number),
            "source_branch": p.head, "target_branch": p.base,
            "state": if p.open { "opened" } else { "closed" },
        }),
        _ => json!({
            "number": p.number, "html_url": format!("http://fake/pull/{}", p.number),
            "head": {"ref": p.head}, "base": {"ref": p.base},
            "state": if p.open { "open" } else { "closed" },
        }),
    };
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    // Statuses, possibly rate limited.
    let status_sha = match kind {
        HostKind::Gitlab if seg.len() == 4 && seg[0] == "projects" && seg[2] == "statuses" => {
            Some(seg[3])
        }
        HostKind::Github | HostKind::Gitea
            if seg.len() == 5 && seg[0] == "repos" && seg[3] == "statuses" =>
        {
            Some(seg[4])
        }
        _ => None,
    };
    if let Some(sha) = status_sha
        && m == "POST"
    {
        if s.rate_limit_statuses > 0 {
            s.rate_limit_statuses -= 1;
            s.rate_limited_at.push(Instant::now());
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + s.rate_limit_secs;
            return (
                StatusCode::FORBIDDEN,
                [
                    ("x-ratelimit-remaining", "0".to_string()),
                    ("x-ratelimit-reset", reset.to_string()),
                ],
                axum::Json(json!({"message": "API rate limit exceeded"})),
            )
                .into_response();
        }
        let context = match kind {
            HostKind::Gitlab => str_of(&body, "name"),
            _ => str_of(&body, "context"),
        };
        s.statuses.push(FakeStatus {
            at: Instant::now(),
            sha: sha.to_string(),
            state: str_of(&body, "state"),
            context,
            description: str_of(&body, "description"),
        });
        return j(StatusCode::CREATED, json!({"id": s.statuses.len()}));
    }
    match (kind, m, seg.as_slice()) {
        // GitHub and Gitea pulls.
        (HostKind::Github | HostKind::Gitea, "GET", ["repos", _, _, "pulls"]) => {
            let head = query(&uri, "head")
                .map(|h| h.split_once(':').map(|x| x.1.to_string()).unwrap_or(h));
            let base = query(&uri, "base");
            let v: Vec<Value> = s
                .prs
                .iter()
                .filter(|p| p.open)
                .filter(|p| head.as_ref().is_none_or(|h| *h == p.head))
                .filter(|p| base.as_ref().is_none_or(|b| *b == p.base))
                .map(pr_json)
                .collect();
            j(StatusCode::OK, Value::Array(v))
        }
        (HostKind::Gitea, "GET", ["repos", _, _, "labels"]) => j(
            StatusCode::OK,
            json!([{"id": 1, "name": "floyd"}, {"id": 2, "name": "revert"}, {"id": 3, "name": "bug"}]),
        ),
        (HostKind::Github | HostKind::Gitea, "POST", ["repos", _, _, "pulls"]) => {
            let number = s.prs.len() as u64 + 1;
            let labels = body
                .get("labels")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_i64)
                        .map(|id| ["", "floyd", "revert", "bug"][id as usize].to_string())
                        .collect()
                })
                .unwrap_or_default();
            let p = FakePr {
                number,
                title: str_of(&body, "title"),
                body: str_of(&body, "body"),
                head: str_of(&body, "head"),
                base: str_of(&body, "base"),
                labels,
                open: true,
                comments: vec![],
            };
            let out = pr_json(&p);
            s.prs.push(p);
            j(StatusCode::CREATED, out)
        }
        (HostKind::Github | HostKind::Gitea, "PATCH", ["repos", _, _, "pulls", n]) => {
            let Some(p) = n.parse::<usize>().ok().and_then(|n| s.prs.get_mut(n - 1)) else {
                return j(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
            };
            if let Some(t) = body.get("title").and_then(Value::as_str) {
                p.title = t.into();
            }
            if let Some(t) = body.get("body").and_then(Value::as_str) {
                p.body = t.into();
            }
            if body.get("state").and_then(Value::as_str) == Some("closed") {
                p.open = false;
            }
            let out = pr_json(p);
            j(StatusCode::OK, out)
        }
        (HostKind::Github, "POST", ["repos", _, _, "issues", n, "labels"]) => {
            let Some(p) = n.parse::<usize>().ok().and_then(|n| s.prs.get_mut(n - 1)) else {
                return j(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
            };
            for l in body
                .get("labels")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                p.labels.push(l.as_str().unwrap_or("").to_string());
            }
            j(StatusCode::OK, json!([]))
        }
        (HostKind::Github | HostKind::Gitea, "POST", ["repos", _, _, "issues", n, "comments"]) => {
            let Some(p) = n.parse::<usize>().ok().and_then(|n| s.prs.get_mut(n - 1)) else {
                return j(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
            };
            p.comments.push(str_of(&body, "body"));
            j(StatusCode::CREATED, json!({"id": 1}))
        }
        // GitLab merge requests.
        (HostKind::Gitlab, "GET", ["projects", _, "merge_requests"]) => {
            let head = query(&uri, "source_branch");
            let base = query(&uri, "target_branch");
            let v: Vec<Value> = s
                .prs
                .iter()
                .filter(|p| p.open)
                .filter(|p| head.as_ref().is_none_or(|h| *h == p.head))
                .filter(|p| base.as_ref().is_none_or(|b| *b == p.base))
                .map(pr_json)
                .collect();
            j(StatusCode::OK, Value::Array(v))
        }
        (HostKind::Gitlab, "POST", ["projects", _, "merge_requests"]) => {
            let number = s.prs.len() as u64 + 1;
            let p = FakePr {
                number,
                title: str_of(&body, "title"),
                body: str_of(&body, "description"),
                head: str_of(&body, "source_branch"),
                base: str_of(&body, "target_branch"),
                labels: str_of(&body, "labels")
                    .split(',')
                    .map(str::to_string)
                    .collect(),
                open: true,
                comments: vec![],
            };
            let out = pr_json(&p);
            s.prs.push(p);
            j(StatusCode::CREATED, out)
        }
        (HostKind::Gitlab, "PUT", ["projects", _, "merge_requests", n]) => {
            let Some(p) = n.parse::<usize>().ok().and_then(|n| s.prs.get_mut(n - 1)) else {
                return j(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
            };
            if let Some(t) = body.get("title").and_then(Value::as_str) {
                p.title = t.into();
            }
            if let Some(t) = body.get("description").and_then(Value::as_str) {
                p.body = t.into();
            }
            if body.get("state_event").and_then(Value::as_str) == Some("close") {
                p.open = false;
            }
            let out = pr_json(p);
            j(StatusCode::OK, out)
        }
        (HostKind::Gitlab, "POST", ["projects", _, "merge_requests", n, "notes"]) => {
            let Some(p) = n.parse::<usize>().ok().and_then(|n| s.prs.get_mut(n - 1)) else {
                return j(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
            };
            p.comments.push(str_of(&body, "body"));
            j(StatusCode::CREATED, json!({"id": 1}))
        }
        _ => j(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
    }
}
