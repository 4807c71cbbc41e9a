//! GitHub (and GitHub Enterprise Server) REST API, version 2022-11-28:
//! pulls, issue labels and comments, commit statuses. Request and answer
//! shapes are typed; the fields follow GitHub's OpenAPI description (the
//! tests check every request against it).

use super::client::{Client, HttpError};
use super::{CommitStatus, PrContent, PullRequest, StatusState, enc};
use reqwest::Method;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct Pull {
    number: u64,
    html_url: String,
    head: Ref,
}

#[derive(Debug, Deserialize)]
struct Ref {
    #[serde(rename = "ref")]
    name: String,
}

#[derive(Debug, Serialize)]
struct CreatePull<'a> {
    title: &'a str,
    head: &'a str,
    base: &'a str,
    body: &'a str,
    maintainer_can_modify: bool,
}

#[derive(Debug, Serialize)]
struct UpdatePull<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Labels<'a> {
    labels: &'a [String],
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

fn pr(p: Pull) -> PullRequest {
    PullRequest {
        number: p.number,
        url: p.html_url,
        head: p.head.name,
    }
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
            &format!(
                "/repos/{o}/{n}/pulls?state=open&base={}&per_page=100",
                enc(base)
            ),
            None,
        )
        .await?;
    Ok(pulls.into_iter().map(pr).collect())
}

pub(super) async fn find_open_pr(
    c: &Client,
    repo: &str,
    head: &str,
    base: &str,
) -> Result<Option<PullRequest>, HttpError> {
    let (o, n) = owner_name(repo);
    let pulls: Vec<Pull> = c
        .call::<(), _>(
            Method::GET,
            &format!(
                "/repos/{o}/{n}/pulls?state=open&head={}&base={}",
                enc(&format!("{}:{head}", repo.split('/').next().unwrap_or(""))),
                enc(base)
            ),
            None,
        )
        .await?;
    Ok(pulls.into_iter().map(pr).find(|p| p.head == head))
}

pub(super) async fn create_pr(
    c: &Client,
    repo: &str,
    content: &PrContent,
) -> Result<PullRequest, HttpError> {
    let (o, n) = owner_name(repo);
    let p: Pull = c
        .call(
            Method::POST,
            &format!("/repos/{o}/{n}/pulls"),
            Some(&CreatePull {
                title: &content.title,
                head: &content.head,
                base: &content.base,
                body: &content.body,
                maintainer_can_modify: true,
            }),
        )
        .await?;
    if !content.labels.is_empty() {
        c.send(
            Method::POST,
            &format!("/repos/{o}/{n}/issues/{}/labels", p.number),
            Some(&Labels {
                labels: &content.labels,
            }),
        )
        .await?;
    }
    Ok(pr(p))
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
        Some(&UpdatePull {
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
        Some(&UpdatePull {
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
    let description = super::status::short(&s.description, 140);
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
