//! `floyd watch`: the service's events as they come (server-sent events),
//! as bars on a terminal, lines otherwise, or JSON; the exit code says how
//! the rollout ended.

use super::format::{canary_cell, revisions_cell, short};
use super::http::{Client, urlencode};
use super::{Output, ReadArgs};
use crate::cli::CliError;
use crate::engine::Phase;
use crate::hub::ServiceView;
use futures::StreamExt;
use std::io::IsTerminal;
use std::time::Duration;

/// One line describing a service's rollout, for non-terminal output.
pub fn watch_line(v: &ServiceView) -> String {
    let mut s = format!("{} {} {}", v.name, v.phase.as_str(), revisions_cell(v));
    let revs: Vec<String> = v
        .revisions
        .iter()
        .map(|r| {
            let starting = r.live.saturating_sub(r.ready + r.terminating);
            let mut t = format!(
                "{}: {}/{} ready",
                short(r.revision.as_str()),
                r.ready,
                r.desired
            );
            if starting > 0 {
                t.push_str(&format!(", {starting} starting"));
            }
            if r.terminating > 0 {
                t.push_str(&format!(", {} terminating", r.terminating));
            }
            t
        })
        .collect();
    if !revs.is_empty() {
        s.push_str(&format!(" [{}]", revs.join("; ")));
    }
    if let Some(c) = &v.canary {
        s.push_str(&format!(" canary {}", canary_cell(c)));
    }
    if !v.reason.is_empty() {
        s.push_str(&format!(": {}", v.reason));
    }
    s
}

/// Exit code for a settled phase: 0 Complete, 1 anything else.
pub(super) fn exit_for(p: Phase) -> u8 {
    u8::from(p != Phase::Complete)
}

/// Progress display: indicatif bars on a terminal, plain lines otherwise.
pub(super) enum Display {
    Bars {
        multi: indicatif::MultiProgress,
        head: indicatif::ProgressBar,
        bars: Vec<(String, indicatif::ProgressBar)>,
    },
    Lines {
        last: String,
    },
    Json,
}

impl Display {
    fn new(output: Output) -> Display {
        if output == Output::Json {
            return Display::Json;
        }
        if std::io::stdout().is_terminal() {
            let multi = indicatif::MultiProgress::new();
            let head = multi.add(indicatif::ProgressBar::new_spinner());
            head.enable_steady_tick(Duration::from_millis(120));
            Display::Bars {
                multi,
                head,
                bars: Vec::new(),
            }
        } else {
            Display::Lines {
                last: String::new(),
            }
        }
    }

    fn show(&mut self, v: &ServiceView) {
        match self {
            Display::Json => {
                if let Ok(s) = serde_json::to_string(v) {
                    println!("{s}");
                }
            }
            Display::Lines { last } => {
                let line = watch_line(v);
                if &line != last {
                    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                    println!("{t} {line}");
                    *last = line;
                }
            }
            Display::Bars { multi, head, bars } => {
                head.set_message(format!(
                    "{} {} {}{}{}",
                    v.name,
                    v.phase.as_str(),
                    revisions_cell(v),
                    v.canary
                        .as_ref()
                        .map(|c| format!(" canary {}", canary_cell(c)))
                        .unwrap_or_default(),
                    if v.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", v.reason)
                    }
                ));
                let style = indicatif::ProgressStyle::with_template(
                    "  {prefix:10} [{bar:40.green/white}] {pos}/{len} ready {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("█▉ ");
                for r in &v.revisions {
                    let name = r.revision.as_str().to_string();
                    let bar = match bars.iter().find(|(n, _)| *n == name) {
                        Some((_, b)) => b.clone(),
                        None => {
                            let b = multi.add(indicatif::ProgressBar::new(0));
                            b.set_style(style.clone());
                            b.set_prefix(short(&name).to_string());
                            bars.push((name.clone(), b.clone()));
                            b
                        }
                    };
                    bar.set_length(u64::from(r.desired.max(r.ready)));
                    bar.set_position(u64::from(r.ready));
                    let starting = r.live.saturating_sub(r.ready + r.terminating);
                    let mut m = Vec::new();
                    if Some(&r.revision) == v.target_revision.as_ref() {
                        m.push("target".to_string());
                    }
                    if starting > 0 {
                        m.push(format!("{starting} starting"));
                    }
                    if r.terminating > 0 {
                        m.push(format!("{} terminating", r.terminating));
                    }
                    bar.set_message(m.join(", "));
                }
            }
        }
    }

    fn finish(&mut self, v: &ServiceView) {
        if let Display::Bars { head, bars, .. } = self {
            for (_, b) in bars.iter() {
                b.finish();
            }
            head.finish_with_message(format!(
                "{} {} {}{}",
                v.name,
                v.phase.as_str(),
                revisions_cell(v),
                if v.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", v.reason)
                }
            ));
        }
    }
}

/// Incremental `text/event-stream` parser: feed bytes, take (event, data).
#[derive(Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        // Normalise CRLF so one splitter works for every server.
        if self.buf.contains('\r') {
            self.buf = self.buf.replace("\r\n", "\n");
        }
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut name = "message".to_string();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if !data.is_empty() {
                out.push((name, data.join("\n")));
            }
        }
        out
    }
}

pub fn watch(a: ReadArgs) -> anyhow::Result<u8> {
    let c = Client::new(&a.server, None)?;
    let name = a.service.clone();
    c.rt.block_on(async {
        // Subscribe first so nothing between the snapshot and the stream is lost.
        let res = c
            .http
            .get(format!(
                "{}/api/v1/events?service={}",
                c.base,
                urlencode(&name)
            ))
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| c.unreachable(&e))?;
        let res = c.check(res).await?;
        let mut stream = res.bytes_stream();
        let mut view: ServiceView = c
            .get_async(&format!("/api/v1/services/{}", urlencode(&name)))
            .await?;
        let mut display = Display::new(c.output);
        display.show(&view);
        if view.phase.is_terminal() {
            display.finish(&view);
            return Ok(exit_for(view.phase));
        }
        let mut parser = SseParser::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                CliError::unreachable(format!("lost the event stream from {}: {e}", c.base))
            })?;
            for (event, data) in parser.feed(&chunk) {
                match event.as_str() {
                    "service" => {
                        if let Ok(crate::hub::Event::Service { service }) =
                            serde_json::from_str(&data)
                            && service.name == name
                        {
                            view = service;
                        }
                    }
                    "lagged" => {
                        view = c
                            .get_async(&format!("/api/v1/services/{}", urlencode(&name)))
                            .await?;
                    }
                    _ => continue,
                }
                display.show(&view);
                if view.phase.is_terminal() {
                    display.finish(&view);
                    return Ok(exit_for(view.phase));
                }
            }
        }
        Err(CliError::unreachable(format!(
            "the event stream from {} ended before the rollout of {name} did",
            c.base
        )))
    })
}
