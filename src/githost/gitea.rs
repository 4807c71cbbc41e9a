//! Gitea and Forgejo REST API v1: pulls, issue comments, labels (by id),
//! commit statuses.

use super::client::{Client, HttpError};
use super::{CommitStatus, PrContent, PullRequest, StatusState, enc};
use reqwest::Method;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct Pull {
    number: u64,
    html_url: String,
    head: Ref,
    base: Ref,
}

#[derive(Debug, Deserialize)]
struct Ref {
    #[serde(rename = "ref")]
    name: String,
}

#[derive(Debug, Deserialize)]
struct Label {
    id: i64,
    name: String,
}

#[derive(Debug, Serialize)]
struct CreatePull<'a> {
    head: &'a str,
    base: &'a str,
    title: &'a str,
    body: &'a str,
    /// Label ids (Gitea takes ids, not names): the repository's labels
    /// with the wanted names; missing ones are left out.
    labels: Vec<i64>,
}

#[derive(Debug, Serialize)]
struct EditPull<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Comment<'a> {
    body: &'a str,
}

#[derive(Debug, Serialize)]
struct Status<'a> {
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    description: &'a str,
    context: &'a str,
}

fn owner_name(repo: &str) -> (String, String) {
    let (o, n) = repo.split_once('/').unwrap_or((repo, ""));
    (enc(o), enc(n))
}

pub(super) async fn list_open_prs(
    c: &Client,
    repo: &str,
    base: &str,
) -> Result<Vec<PullRequest>, HttpError> {
    let (o, n) = owner_name(repo);
    let pulls: Vec<Pull> = c
        .call::<(), _>(
            Method::GET,
            &format!("/repos/{o}/{n}/pulls?state=open&limit=50"),
            None,
        )
        .await?;
    Ok(pulls
        .into_iter()
        .filter(|p| p.base.name == base)
        .map(|p| PullRequest {
            number: p.number,
            url: p.html_url,
            head: p.head.name,
        })
        .collect())
}

pub(super) async fn find_open_pr(
    c: &Client,
    repo: &str,
    head: &str,
    base: &str,
) -> Result<Option<PullRequest>, HttpError> {
    Ok(list_open_prs(c, repo, base)
        .await?
        .into_iter()
        .find(|p| p.head == head))
}

pub(super) async fn create_pr(
    c: &Client,
    repo: &str,
    content: &PrContent,
) -> Result<PullRequest, HttpError> {
    let (o, n) = owner_name(repo);
    let labels: Vec<Label> = c
        .call::<(), _>(Method::GET, &format!("/repos/{o}/{n}/labels"), None)
        .await?;
    let ids = labels
        .into_iter()
        .filter(|l| content.labels.contains(&l.name))
        .map(|l| l.id)
        .collect();
    let p: Pull = c
        .call(
            Method::POST,
            &format!("/repos/{o}/{n}/pulls"),
            Some(&CreatePull {
                head: &content.head,
                base: &content.base,
                title: &content.title,
                body: &content.body,
                labels: ids,
            }),
        )
        .await?;
    Ok(PullRequest {
        number: p.number,
        url: p.html_url,
        head: p.head.name,
    })
}

pub(super) async fn update_pr(
    c: &Client,
    repo: &str,
    number: u64,
    content: &PrContent,
) -> Result<(), HttpError> {
    let (o, n) = owner_name(repo);
    c.send(
        Method::PATCH,
        &format!("/repos/{o}/{n}/pulls/{number}"),
        Some(&EditPull {
            title: Some(&content.title),
            body: Some(&content.body),
            state: None,
        }),
    )
    .await
}

pub(super) async fn close_pr(
    c: &Client,
    repo: &str,
    number: u64,
    comment: &str,
) -> Result<(), HttpError> {
    let (o, n) = owner_name(repo);
    c.send(
        Method::POST,
        &format!("/repos/{o}/{n}/issues/{number}/comments"),
        Some(&Comment { body: comment }),
    )
    .await?;
    c.send(
        Method::PATCH,
        &format!("/repos/{o}/{n}/pulls/{number}"),
        Some(&EditPull {
            title: None,
            body: None,
            state: Some("closed"),
        }),
    )
    .await
}

pub(super) async fn set_status(c: &Client, repo: &str, s: &CommitStatus) -> Result<(), HttpError> {
    let (o, n) = owner_name(repo);
    let state = match s.state {
        StatusState::Pending => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
    };
    let description = super::status::short(&s.description, 255);
    c.send(
        Method::POST,
        &format!("/repos/{o}/{n}/statuses/{}", enc(&s.sha)),
        Some(&Status {
            state,
            target_url: s.target_url.as_deref(),
            description: &description,
            context: &s.context,
        }),
    )
    .await
}
