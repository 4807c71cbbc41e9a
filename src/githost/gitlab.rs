//! GitLab REST API v4: merge requests, notes, commit statuses. The project
//! is addressed by its URL-encoded path (`group%2Fsub%2Fname`).

use super::client::{Client, HttpError};
use super::{CommitStatus, PrContent, PullRequest, StatusState, enc};
use reqwest::Method;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct MergeRequest {
    iid: u64,
    web_url: String,
    source_branch: String,
}

#[derive(Debug, Serialize)]
struct CreateMr<'a> {
    source_branch: &'a str,
    target_branch: &'a str,
    title: &'a str,
    description: &'a str,
    /// Comma-separated label names (GitLab creates missing ones).
    labels: String,
    remove_source_branch: bool,
}

#[derive(Debug, Serialize)]
struct UpdateMr<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_event: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Note<'a> {
    body: &'a str,
}

#[derive(Debug, Serialize)]
struct Status<'a> {
    state: &'a str,
    name: &'a str,
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
}

fn mr(m: MergeRequest) -> PullRequest {
    PullRequest {
        number: m.iid,
        url: m.web_url,
        head: m.source_branch,
    }
}

pub(super) async fn list_open_mrs(
    c: &Client,
    repo: &str,
    base: &str,
) -> Result<Vec<PullRequest>, HttpError> {
    let mrs: Vec<MergeRequest> = c
        .call::<(), _>(
            Method::GET,
            &format!(
                "/projects/{}/merge_requests?state=opened&target_branch={}&per_page=100",
                enc(repo),
                enc(base)
            ),
            None,
        )
        .await?;
    Ok(mrs.into_iter().map(mr).collect())
}

pub(super) async fn find_open_mr(
    c: &Client,
    repo: &str,
    head: &str,
    base: &str,
) -> Result<Option<PullRequest>, HttpError> {
    let mrs: Vec<MergeRequest> = c
        .call::<(), _>(
            Method::GET,
            &format!(
                "/projects/{}/merge_requests?state=opened&source_branch={}&target_branch={}",
                enc(repo),
                enc(head),
                enc(base)
            ),
            None,
        )
        .await?;
    Ok(mrs.into_iter().map(mr).find(|p| p.head == head))
}

pub(super) async fn create_mr(
    c: &Client,
    repo: &str,
    content: &PrContent,
) -> Result<PullRequest, HttpError> {
    let m: MergeRequest = c
        .call(
            Method::POST,
            &format!("/projects/{}/merge_requests", enc(repo)),
            Some(&CreateMr {
                source_branch: &content.head,
                target_branch: &content.base,
                title: &content.title,
                description: &content.body,
                labels: content.labels.join(","),
                remove_source_branch: true,
            }),
        )
        .await?;
    Ok(mr(m))
}

pub(super) async fn update_mr(
    c: &Client,
    repo: &str,
    iid: u64,
    content: &PrContent,
) -> Result<(), HttpError> {
    c.send(
        Method::PUT,
        &format!("/projects/{}/merge_requests/{iid}", enc(repo)),
        Some(&UpdateMr {
            title: Some(&content.title),
            description: Some(&content.body),
            state_event: None,
        }),
    )
    .await
}

pub(super) async fn close_mr(
    c: &Client,
    repo: &str,
    iid: u64,
    comment: &str,
) -> Result<(), HttpError> {
    c.send(
        Method::POST,
        &format!("/projects/{}/merge_requests/{iid}/notes", enc(repo)),
        Some(&Note { body: comment }),
    )
    .await?;
    c.send(
        Method::PUT,
        &format!("/projects/{}/merge_requests/{iid}", enc(repo)),
        Some(&UpdateMr {
            title: None,
            description: None,
            state_event: Some("close"),
        }),
    )
    .await
}

pub(super) async fn set_status(c: &Client, repo: &str, s: &CommitStatus) -> Result<(), HttpError> {
    let state = match s.state {
        StatusState::Pending => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failed",
    };
    let description = super::status::short(&s.description, 255);
    c.send(
        Method::POST,
        &format!("/projects/{}/statuses/{}", enc(repo), enc(&s.sha)),
        Some(&Status {
            state,
            name: &s.context,
            description: &description,
            target_url: s.target_url.as_deref(),
        }),
    )
    .await
}
