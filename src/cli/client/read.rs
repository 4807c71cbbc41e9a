//! `floyd status`, `floyd history` and the controls (`promote`, `abort`,
//! `pause`, `resume`).

use super::format::{rev_str, short, status_table, table, truncate, when};
use super::http::{Client, ServiceList, urlencode};
use super::{ControlArgs, Output, ReadArgs, StatusArgs};
use crate::cli::CliError;
use crate::engine::{Command, Phase};
use crate::hub::HistoryEntry;
use serde::Serialize;
use std::time::Duration;

#[derive(serde::Deserialize, Serialize)]
pub(super) struct History {
    service: String,
    history: Vec<HistoryEntry>,
}

pub fn status(a: StatusArgs) -> anyhow::Result<u8> {
    let c = Client::new(&a.server, None)?;
    let list: ServiceList = c.get("/api/v1/services")?;
    if c.output == Output::Json {
        c.print_json(&list)?;
    } else if list.services.is_empty() {
        println!("no services yet (has the first sync happened? see `floyd run` logs)");
    } else {
        print!("{}", status_table(&list.services));
    }
    // A failed or degraded service makes `status` say so in its exit code.
    let bad = list
        .services
        .iter()
        .any(|v| matches!(v.phase, Phase::Failed | Phase::Degraded));
    Ok(u8::from(bad))
}

pub fn history(a: ReadArgs) -> anyhow::Result<u8> {
    let c = Client::new(&a.server, None)?;
    let h: History = c.get(&format!(
        "/api/v1/services/{}/history",
        urlencode(&a.service)
    ))?;
    if c.output == Output::Json {
        c.print_json(&h)?;
        return Ok(0);
    }
    if h.history.is_empty() {
        println!("{}: no rollouts yet", h.service);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = h
        .history
        .iter()
        .map(|e| {
            let mut note = Vec::new();
            if e.rollback {
                note.push("rollback".to_string());
            }
            if let Some(r) = &e.revert_commit {
                note.push(format!("revert {}", r.get(..7).unwrap_or(r)));
            }
            if !e.reason.is_empty() {
                note.push(truncate(&e.reason, 60));
            }
            vec![
                when(e.started_at),
                e.ended_at
                    .map(|end| format!("{}s", end.since(e.started_at).as_secs()))
                    .unwrap_or_else(|| "running".into()),
                e.result.as_str().to_string(),
                format!(
                    "{} → {}",
                    rev_str(e.from_revision.as_ref()),
                    short(e.to_revision.as_str())
                ),
                e.commit
                    .as_ref()
                    .map(|c| {
                        format!(
                            "{} {}",
                            c.sha.get(..7).unwrap_or(&c.sha),
                            truncate(&c.summary, 40)
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
                note.join("; "),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["STARTED", "TOOK", "RESULT", "REVISIONS", "COMMIT", "NOTE"],
            &rows
        )
    );
    Ok(0)
}

pub fn control(a: ControlArgs, cmd: Command) -> anyhow::Result<u8> {
    let c = Client::new(&a.server, a.api_token_file.as_deref())?;
    let verb = match cmd {
        Command::Promote => "promote",
        Command::Abort => "abort",
        Command::Pause => "pause",
        Command::Resume => "resume",
    };
    let url = format!(
        "{}/api/v1/services/{}/{verb}",
        c.base,
        urlencode(&a.service)
    );
    let body: serde_json::Value = c.rt.block_on(async {
        // A JSON body: what the server asks of controls sent without a token.
        let mut req = c
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body("{}")
            .timeout(Duration::from_secs(20));
        if let Some(t) = &c.token {
            req = req.bearer_auth(t.expose());
        }
        let res = req.send().await.map_err(|e| c.unreachable(&e))?;
        let res = c.check(res).await?;
        res.json::<serde_json::Value>()
            .await
            .map_err(|e| CliError::unreachable(format!("unexpected answer: {e}")))
    })?;
    if c.output == Output::Json {
        c.print_json(&body)?;
    } else {
        println!("{verb} {}: accepted", a.service);
    }
    Ok(0)
}
