//! API clients: `floyd status|history|watch|promote|abort|pause|resume|diff`.
//!
//! Thin HTTP clients of the JSON API (`docs/api.md`): they never read the
//! controller's state any other way. Errors are one line. Exit codes follow
//! the convention in `cli` (3: the server cannot be reached).

use super::CliError;
use crate::engine::{Command, Phase};
use crate::hub::{HistoryEntry, ServiceView};
use crate::manifest::Release;
use crate::server::Secret;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Floyd's API address (where `floyd run` listens).
    #[arg(long, env = "FLOYD_SERVER", default_value = "http://127.0.0.1:9180")]
    pub server: String,
    /// Output format.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value = "text",
        env = "FLOYD_OUTPUT"
    )]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A read-only command about one service.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Service name (`metadata.name`).
    pub service: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A manual control of one service's rollout.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Service name (`metadata.name`).
    pub service: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// File holding the bearer token the server was started with
    /// (`floyd run --api-token-file`); needed only when it was.
    #[arg(long, env = "FLOYD_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Config repository directory.
    #[arg(default_value = ".", env = "FLOYD_CONFIG_DIR")]
    pub dir: PathBuf,
    /// Environment from floyd.yaml to render.
    #[arg(long, short = 'e', env = "FLOYD_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Compare the Kubernetes objects Floyd would apply (`floyd render
    /// --objects`) with the cluster's, object by object, read with the
    /// kubeconfig (`KUBECONFIG`, else ~/.kube/config) instead of asking a
    /// Floyd server. Read-only.
    #[arg(long)]
    pub objects: bool,
    /// With --objects: the namespace Floyd deploys to.
    #[arg(long, env = "FLOYD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// With --objects: the install identity (`floyd run --instance`).
    #[arg(long, env = "FLOYD_INSTANCE", default_value = crate::runtime::kube::objects::DEFAULT_INSTANCE, value_parser = super::run::instance_name)]
    pub instance: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Output format of the API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables and lines for a person.
    Text,
    /// JSON, the API's shapes.
    Json,
}

/// An API client over a small single-threaded runtime.
struct Client {
    base: String,
    http: reqwest::Client,
    output: Output,
    token: Option<Secret>,
    rt: tokio::runtime::Runtime,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

impl Client {
    fn new(a: &ServerArgs, token_file: Option<&std::path::Path>) -> anyhow::Result<Client> {
        let output = a.output;
        let token = match token_file {
            Some(p) => Some(Secret::from_file(p).map_err(|e| CliError::usage(e.to_string()))?),
            None => None,
        };
        let base = a.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "--server {base:?}: give a URL such as http://127.0.0.1:9180"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("floyd-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build HTTP client: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::failed(format!("cannot start runtime: {e}")))?;
        Ok(Client {
            base,
            http,
            output,
            token,
            rt,
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        let why = if e.is_connect() {
            "connection refused or host unreachable".to_string()
        } else if e.is_timeout() {
            "timed out".to_string()
        } else {
            e.without_url_ref()
        };
        CliError::unreachable(format!(
            "cannot reach Floyd at {}: {why} (is `floyd run` running? set --server or FLOYD_SERVER)",
            self.base
        ))
    }

    async fn check(&self, res: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let code = res.status();
        if code.is_success() {
            return Ok(res);
        }
        let text = res.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| text.trim().to_string());
        let hint = if code == reqwest::StatusCode::UNAUTHORIZED {
            " (pass --api-token-file or set FLOYD_API_TOKEN_FILE)"
        } else {
            ""
        };
        let msg = format!("{}: {msg}{hint}", code.as_u16());
        Err(match status_exit_code(code) {
            1 => CliError::failed(msg),
            2 => CliError::usage(msg),
            _ => CliError::unreachable(msg),
        })
    }

    async fn get_async<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let res = self.check(res).await?;
        res.json()
            .await
            .map_err(|e| CliError::unreachable(format!("unexpected answer from {path}: {e}")))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.rt.block_on(self.get_async(path))
    }

    fn print_json<T: Serialize>(&self, v: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

/// The exit code for an API error status: the request was wrong (unknown
/// service, missing token) 2; refused as asked (nothing to promote) 1; the
/// server could not serve it (controller not running, timeout) 3.
fn status_exit_code(code: reqwest::StatusCode) -> u8 {
    if code == reqwest::StatusCode::CONFLICT {
        1
    } else if code.is_client_error() {
        2
    } else {
        3
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}
impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        // Our URLs carry no credentials, but keep messages short and uniform.
        let mut s = self.to_string();
        if let Some(u) = self.url() {
            s = s.replace(&format!(" for url ({u})"), "");
        }
        s
    }
}

#[derive(serde::Deserialize, Serialize)]
struct ServiceList {
    services: Vec<ServiceView>,
}

#[derive(serde::Deserialize, Serialize)]
struct History {
    service: String,
    history: Vec<HistoryEntry>,
}

fn short(s: &str) -> &str {
    s.get(..8).unwrap_or(s)
}

fn rev_str(r: Option<&crate::manifest::Revision>) -> String {
    r.map(|r| short(r.as_str()).to_string())
        .unwrap_or_else(|| "-".into())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `aaaaaaaa → bbbbbbbb` while rolling, one revision when settled.
fn revisions_cell(v: &ServiceView) -> String {
    match (&v.current_revision, &v.target_revision) {
        (Some(c), Some(t)) if c != t => format!("{} → {}", short(c.as_str()), short(t.as_str())),
        (c, t) => rev_str(t.as_ref().or(c.as_ref())),
    }
}

/// A canary's step and weight: `step 2/6 pause 60s, weight 5%`.
pub fn canary_cell(c: &crate::engine::CanaryStatus) -> String {
    if c.step >= c.steps {
        format!("promoting, weight {}%", c.weight)
    } else {
        format!(
            "step {}/{} {}, weight {}%",
            c.step + 1,
            c.steps,
            c.current,
            c.weight
        )
    }
}

/// The strategy, with a canary's step and weight.
fn strategy_cell(v: &ServiceView) -> String {
    match &v.canary {
        Some(c) => format!("{} ({})", v.strategy, canary_cell(c)),
        None => v.strategy.clone(),
    }
}

/// Ready instances of the target revision / replicas wanted.
fn ready_cell(v: &ServiceView) -> String {
    let ready = v
        .target_revision
        .as_ref()
        .and_then(|t| v.revisions.iter().find(|r| &r.revision == t))
        .map(|r| r.ready)
        .unwrap_or(0);
    format!("{ready}/{}", v.replicas)
}

/// A plain table: columns padded to their widest cell (by chars).
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// The `floyd status` table.
pub fn status_table(services: &[ServiceView]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.phase.as_str().to_string(),
                strategy_cell(v),
                revisions_cell(v),
                ready_cell(v),
                v.commit
                    .as_ref()
                    .map(|c| {
                        format!(
                            "{} {}",
                            short(&c.sha).get(..7).unwrap_or(""),
                            truncate(&c.summary, 50)
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "PHASE",
            "STRATEGY",
            "REVISIONS",
            "READY",
            "COMMIT",
        ],
        &rows,
    )
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

fn when(t: crate::time::Time) -> String {
    let st = std::time::UNIX_EPOCH + Duration::from_millis(t.as_millis());
    humantime::format_rfc3339_seconds(st).to_string()
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

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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

// ---------- watch ----------

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
fn exit_for(p: Phase) -> u8 {
    u8::from(p != Phase::Complete)
}

/// Progress display: indicatif bars on a terminal, plain lines otherwise.
enum Display {
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

// ---------- diff ----------

/// What a sync would do to one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub service: String,
    /// `added`, `removed`, `rollout`, `scale`, `rollout+scale`, `orphaned` (removed but prune is off).
    pub change: String,
    pub from_revision: Option<String>,
    pub to_revision: Option<String>,
    pub from_replicas: Option<u32>,
    pub to_replicas: Option<u32>,
    /// GPU units the desired service holds in total (replicas × per instance).
    pub gpu_units: Option<u32>,
    pub gpu_product: Option<String>,
    /// The predicted rollout (added and rolled-out services), see [`crate::predict`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<crate::predict::Prediction>,
}

/// Compares a rendered release with the live services. Pure.
pub fn plan_diff(release: &Release, live: &[ServiceView]) -> Vec<Change> {
    let mut out = Vec::new();
    for s in &release.services {
        let name = s.name.as_str();
        let gpu = s.spec.template.resources.gpu.as_ref();
        let gpu_units = gpu.map(|g| g.count.saturating_mul(s.spec.replicas));
        let gpu_product = gpu.map(|g| g.product.clone().unwrap_or_else(|| "any".into()));
        let to_rev = Some(s.revision.as_str().to_string());
        match live.iter().find(|v| v.name == name) {
            None => out.push(Change {
                service: name.to_string(),
                change: "added".into(),
                from_revision: None,
                to_revision: to_rev,
                from_replicas: None,
                to_replicas: Some(s.spec.replicas),
                gpu_units,
                gpu_product,
                prediction: None,
            }),
            Some(v) => {
                let live_rev = v.target_revision.as_ref().or(v.current_revision.as_ref());
                let rolled = live_rev.map(|r| r.as_str()) != Some(s.revision.as_str());
                let scaled = v.replicas != s.spec.replicas;
                let change = match (rolled, scaled) {
                    (false, false) => continue,
                    (true, false) => "rollout",
                    (false, true) => "scale",
                    (true, true) => "rollout+scale",
                };
                out.push(Change {
                    service: name.to_string(),
                    change: change.into(),
                    from_revision: live_rev.map(|r| r.as_str().to_string()),
                    to_revision: to_rev,
                    from_replicas: Some(v.replicas),
                    to_replicas: Some(s.spec.replicas),
                    gpu_units,
                    gpu_product,
                    prediction: None,
                });
            }
        }
    }
    for v in live {
        if release.service(&v.name).is_none() {
            out.push(Change {
                service: v.name.clone(),
                change: if release.prune { "removed" } else { "orphaned" }.into(),
                from_revision: v
                    .target_revision
                    .as_ref()
                    .or(v.current_revision.as_ref())
                    .map(|r| r.as_str().to_string()),
                to_revision: None,
                from_replicas: Some(v.replicas),
                to_replicas: None,
                gpu_units: None,
                gpu_product: None,
                prediction: None,
            });
        }
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

/// The part of `GET /api/v1/services/{name}/plan` that `floyd diff` uses.
#[derive(serde::Deserialize)]
struct PlanResponse {
    inputs: crate::predict::PlanInputs,
}

fn change_line(c: &Change) -> String {
    let sign = match c.change.as_str() {
        "added" => "+",
        "removed" => "-",
        "orphaned" => "!",
        _ => "~",
    };
    let revs = match (&c.from_revision, &c.to_revision) {
        (Some(f), Some(t)) if f != t => format!("revision {} → {}", short(f), short(t)),
        (None, Some(t)) => format!("revision {}", short(t)),
        (Some(f), None) => format!("revision {}", short(f)),
        _ => String::new(),
    };
    let reps = match (c.from_replicas, c.to_replicas) {
        (Some(f), Some(t)) if f != t => format!("replicas {f} → {t}"),
        (None, Some(t)) => format!("{t} replicas"),
        (Some(f), None) => format!("{f} replicas"),
        (Some(f), Some(_)) => format!("{f} replicas"),
        _ => String::new(),
    };
    let gpu = match (c.gpu_units, &c.gpu_product) {
        (Some(n), Some(p)) => format!("needs {n} GPU unit(s) of {p}"),
        _ => String::new(),
    };
    let what = match c.change.as_str() {
        "orphaned" => "removed from Git, left running (prune: false)".to_string(),
        other => other.to_string(),
    };
    [format!("{sign} {}", c.service), what, revs, reps, gpu]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("  ")
}

pub fn diff(a: DiffArgs) -> anyhow::Result<u8> {
    if a.objects {
        let release = crate::manifest::load_release(&a.dir, a.environment.as_deref())
            .map_err(|e| CliError::usage(e.to_string()))?;
        return super::objdiff::run(
            &release,
            &a.namespace,
            &a.instance,
            a.server.output == Output::Json,
        );
    }
    let c = Client::new(&a.server, None)?;
    let release = crate::manifest::load_release(&a.dir, a.environment.as_deref())
        .map_err(|e| CliError::usage(e.to_string()))?;
    let live: ServiceList = c.get("/api/v1/services")?;
    let mut changes = plan_diff(&release, &live.services);
    for ch in changes.iter_mut() {
        let Some(svc) = release.service(&ch.service) else {
            continue;
        };
        if !matches!(ch.change.as_str(), "added" | "rollout" | "rollout+scale") {
            continue;
        }
        // What the controller has seen of the service (start-up times, GPU
        // capacity); a new service, or a server without the endpoint: none.
        let inputs = if ch.change == "added" {
            crate::predict::PlanInputs::default()
        } else {
            c.get::<PlanResponse>(&format!("/api/v1/services/{}/plan", ch.service))
                .map(|p| p.inputs)
                .unwrap_or_default()
        };
        ch.prediction = Some(crate::predict::predict(&svc.name, &svc.spec, &inputs));
    }
    if c.output == Output::Json {
        c.print_json(&serde_json::json!({ "changes": changes }))?;
    } else if changes.is_empty() {
        println!("no changes: the live state matches {}", a.dir.display());
    } else {
        for ch in &changes {
            println!("{}", change_line(ch));
            for l in ch.prediction.iter().flat_map(crate::predict::describe) {
                println!("    {l}");
            }
        }
    }
    Ok(u8::from(!changes.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RevisionCounts;
    use crate::manifest::{InstanceTemplate, Revision, Service, ServiceName, ServiceSpec};
    use crate::time::Time;

    fn live(name: &str, rev: &str, replicas: u32) -> ServiceView {
        ServiceView {
            name: name.into(),
            strategy: "RollingUpdate".into(),
            replicas,
            phase: Phase::Complete,
            reason: String::new(),
            current_revision: Some(Revision::from(rev)),
            target_revision: Some(Revision::from(rev)),
            commit: None,
            revisions: vec![RevisionCounts {
                revision: Revision::from(rev),
                desired: replicas,
                live: replicas,
                ready: replicas,
                available: replicas,
                terminating: 0,
            }],
            gates: vec![],
            gpu: None,
            active: None,
            preview: None,
            updated_at: Time::ZERO,
            canary: None,
            drift: Vec::new(),
        }
    }

    fn desired(name: &str, rev: &str, replicas: u32) -> Service {
        Service {
            name: ServiceName::parse(name).expect("name"),
            revision: Revision::from(rev),
            spec: ServiceSpec::with_defaults(replicas, InstanceTemplate::default()),
            file: None,
        }
    }

    #[test]
    fn diff_table() {
        let release = Release {
            services: vec![
                desired("same", "r1", 2),
                desired("rolled", "r2", 2),
                desired("scaled", "r1", 5),
                desired("both", "r9", 1),
                desired("new", "r3", 3),
            ],
            prune: true,
            ..Release::default()
        };
        let live_now = vec![
            live("same", "r1", 2),
            live("rolled", "r1", 2),
            live("scaled", "r1", 2),
            live("both", "r1", 2),
            live("gone", "r1", 1),
        ];
        let got: Vec<(String, String)> = plan_diff(&release, &live_now)
            .into_iter()
            .map(|c| (c.service, c.change))
            .collect();
        let want: Vec<(String, String)> = [
            ("both", "rollout+scale"),
            ("gone", "removed"),
            ("new", "added"),
            ("rolled", "rollout"),
            ("scaled", "scale"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);

        let keep = Release {
            prune: false,
            ..release
        };
        let gone = plan_diff(&keep, &live_now)
            .into_iter()
            .find(|c| c.service == "gone")
            .expect("gone");
        assert_eq!(gone.change, "orphaned");
    }

    #[test]
    fn diff_counts_gpu_units() {
        let mut s = desired("llm", "r1", 3);
        s.spec.template.resources.gpu = Some(crate::manifest::GpuRequest {
            count: 2,
            product: Some("NVIDIA-A100-SXM4-80GB".into()),
            memory_mib: None,
            sharing: crate::manifest::GpuSharing::Exclusive,
            allow_in_place: true,
        });
        let release = Release {
            services: vec![s],
            ..Release::default()
        };
        let c = &plan_diff(&release, &[])[0];
        assert_eq!(c.gpu_units, Some(6));
        assert!(change_line(c).contains("needs 6 GPU unit(s) of NVIDIA-A100-SXM4-80GB"));
    }

    #[test]
    fn sse_parser_handles_split_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: service\ndata: {\"a\"").is_empty());
        let got = p.feed(b":1}\n\n: keep-alive\n\nevent: x\r\ndata: 2\r\n\r\n");
        assert_eq!(
            got,
            vec![
                ("service".to_string(), "{\"a\":1}".to_string()),
                ("x".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn canary_step_and_weight_in_status_and_watch() {
        let mut v = live("shop", "bbbbbbbbbb", 4);
        v.strategy = "Canary".into();
        v.phase = Phase::Progressing;
        v.canary = Some(crate::engine::CanaryStatus {
            step: 1,
            steps: 6,
            current: "pause 60s".into(),
            weight: 5,
        });
        let t = status_table(std::slice::from_ref(&v));
        assert!(t.contains("Canary (step 2/6 pause 60s, weight 5%)"), "{t}");
        assert!(
            watch_line(&v).contains(" canary step 2/6 pause 60s, weight 5%"),
            "{}",
            watch_line(&v)
        );
        v.canary = Some(crate::engine::CanaryStatus {
            step: 6,
            steps: 6,
            current: "promoting".into(),
            weight: 60,
        });
        assert!(watch_line(&v).contains("canary promoting, weight 60%"));
    }

    #[test]
    fn status_table_columns() {
        let mut v = live("web", "aaaaaaaaaa", 4);
        v.phase = Phase::Progressing;
        v.target_revision = Some(Revision::from("bbbbbbbbbb"));
        v.revisions.insert(
            0,
            RevisionCounts {
                revision: Revision::from("bbbbbbbbbb"),
                desired: 4,
                live: 3,
                ready: 1,
                available: 1,
                terminating: 0,
            },
        );
        let t = status_table(&[v.clone()]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SERVICE"));
        assert!(lines[1].contains("Progressing"));
        assert!(lines[1].contains("aaaaaaaa → bbbbbbbb"));
        assert!(lines[1].contains("1/4"));
        let w = watch_line(&v);
        assert!(w.contains("bbbbbbbb: 1/4 ready, 2 starting"), "{w}");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_for(Phase::Complete), 0);
        for p in [Phase::Failed, Phase::Degraded, Phase::RolledBack] {
            assert_eq!(exit_for(p), 1, "{p:?}");
        }
    }
}
