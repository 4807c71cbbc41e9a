//! `floyd demo [--scenario]`: a newcomer's first run.
//!
//! Creates a scratch Git remote (a bare repository under `--dir`) seeded from
//! `examples-repo/`, starts the controller on the local runtime with the
//! dashboard (its logs go to `<dir>/floyd.log`, so they do not interleave
//! with the demo's own lines), and prints the exact `git` commands to push a
//! change.
//! `--scenario` then tells the whole story by itself: a healthy change rolls
//! out, a canary (`shop`) goes through its steps one by one with the traffic
//! share measured at each pause, a broken change (a revision that never
//! becomes ready) fails, is rolled back and reverted in Git; it exits 0 only
//! when all of that happened.

use super::run::{self, Args as RunArgs, Running};
use crate::engine::Phase;
use crate::hub::{Event, Hub, ServiceView};
use anyhow::{Context, anyhow, bail};
use git2::{Repository, RepositoryInitOptions, Signature};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Push a good change, a canary, then a broken one; show rollout, canary steps, rollback and revert; exit.
    #[arg(long)]
    pub scenario: bool,
    /// Scratch directory.
    #[arg(long, default_value = ".floyd-demo")]
    pub dir: PathBuf,
    /// Dashboard and API address.
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub listen: SocketAddr,
    /// The config to seed the remote with (default: `examples-repo/` of this checkout).
    #[arg(long)]
    pub examples: Option<PathBuf>,
}

/// The service the scenario changes, and its file.
const SERVICE: &str = "web";
const FILE: &str = "services/web.yaml";
/// The canary service of the scenario, and its file.
const CANARY: &str = "shop";
const CANARY_FILE: &str = "services/shop.yaml";
/// Requests the scenario sends through the canary's load balancer at each pause.
const SAMPLE_REQUESTS: u32 = 100;

pub fn run(args: Args, log_format: crate::telemetry::LogFormat) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(demo(args, log_format))
}

/// The file the controller's logs go to, under the demo directory.
pub const LOG_FILE: &str = "floyd.log";

/// The demo talks to a person on stdout; the controller's logs (info and
/// up, or what RUST_LOG says) go to `<dir>/floyd.log` so they do not
/// interleave with the story.
fn log_to_file(dir: &Path, log_format: crate::telemetry::LogFormat) -> anyhow::Result<PathBuf> {
    use tracing_subscriber::EnvFilter;
    let path = dir.join(LOG_FILE);
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create the log file {}", path.display()))?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file));
    let _ = match log_format {
        crate::telemetry::LogFormat::Text => builder.try_init(),
        crate::telemetry::LogFormat::Json => builder.json().try_init(),
    };
    Ok(path)
}

fn find_examples(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.join("services").is_dir() {
            return Ok(p.to_path_buf());
        }
        return Err(super::CliError::usage(format!(
            "--examples {}: no services/ directory there",
            p.display()
        )));
    }
    let mut candidates = vec![PathBuf::from("examples-repo")];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/floyd → the checkout's root.
        for anc in exe.ancestors().skip(1).take(4) {
            candidates.push(anc.join("examples-repo"));
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples-repo"));
    candidates
        .into_iter()
        .find(|c| c.join("services").is_dir())
        .ok_or_else(|| {
            super::CliError::usage(
                "cannot find examples-repo/: run `floyd demo` from the Floyd checkout or pass --examples <dir>",
            )
        })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// The scratch remote and a working clone to push from.
struct Scratch {
    remote: PathBuf,
    work: Repository,
}

impl Scratch {
    fn create(dir: &Path, examples: &Path) -> anyhow::Result<Scratch> {
        if dir.exists() {
            let looks_like_demo = dir.join("remote.git").exists()
                || std::fs::read_dir(dir)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
            if !looks_like_demo {
                return Err(super::CliError::usage(format!(
                    "--dir {}: exists and is not a Floyd demo directory; choose another --dir",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(dir).with_context(|| format!("cleaning {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let remote = dir.join("remote.git");
        let mut opts = RepositoryInitOptions::new();
        opts.bare(true).initial_head("main");
        Repository::init_opts(&remote, &opts).context("creating the scratch remote")?;
        let work_dir = dir.join("work");
        copy_dir(examples, &work_dir).with_context(|| format!("copying {}", examples.display()))?;
        let mut opts = RepositoryInitOptions::new();
        opts.initial_head("main");
        let work = Repository::init_opts(&work_dir, &opts)?;
        work.remote("origin", &remote.to_string_lossy())?;
        let s = Scratch { remote, work };
        s.commit_and_push("Initial config from examples-repo")?;
        Ok(s)
    }

    fn edit(&self, rel: &str, from: &str, to: &str) -> anyhow::Result<()> {
        let p = self.work.workdir().unwrap_or(Path::new(".")).join(rel);
        let text = std::fs::read_to_string(&p)?;
        if !text.contains(from) {
            bail!("{rel} does not contain {from:?}: examples-repo changed; update the demo");
        }
        std::fs::write(&p, text.replacen(from, to, 1))?;
        Ok(())
    }

    fn commit_and_push(&self, message: &str) -> anyhow::Result<String> {
        let repo = &self.work;
        let mut index = repo.index()?;
        index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
        index.write()?;
        let tree = repo.find_tree(index.write_tree()?)?;
        let sig = Signature::now("Demo User", "demo@localhost")?;
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
        let mut remote = repo.find_remote("origin")?;
        let mut rejected = None;
        {
            let mut cb = git2::RemoteCallbacks::new();
            cb.push_update_reference(|_, status| {
                rejected = status.map(str::to_string);
                Ok(())
            });
            let mut po = git2::PushOptions::new();
            po.remote_callbacks(cb);
            remote.push(&["refs/heads/main:refs/heads/main"], Some(&mut po))?;
        }
        if let Some(r) = rejected {
            bail!("push rejected: {r}");
        }
        Ok(oid.to_string())
    }

    /// `git log --oneline` of the remote, newest first.
    fn remote_log(&self, n: usize) -> anyhow::Result<Vec<(String, String)>> {
        let repo = Repository::open_bare(&self.remote)?;
        let mut walk = repo.revwalk()?;
        walk.push_ref("refs/heads/main")?;
        let mut out = Vec::new();
        for oid in walk.take(n) {
            let c = repo.find_commit(oid?)?;
            let msg = String::from_utf8_lossy(c.message_bytes()).into_owned();
            out.push((c.id().to_string(), msg));
        }
        Ok(out)
    }

    fn remote_file(&self, rev: &str, path: &str) -> anyhow::Result<String> {
        let repo = Repository::open_bare(&self.remote)?;
        let c = repo.find_commit(git2::Oid::from_str(rev)?)?;
        let e = c.tree()?.get_path(Path::new(path))?;
        let b = repo.find_blob(e.id())?;
        Ok(String::from_utf8_lossy(b.content()).into_owned())
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// Prints what happens, as it happens (rollouts, reverts, syncs).
fn spawn_printer(hub: &Arc<Hub>) -> tokio::task::JoinHandle<()> {
    let mut rx = hub.subscribe();
    tokio::spawn(async move {
        let mut last: std::collections::HashMap<String, (Phase, String)> = Default::default();
        loop {
            match rx.recv().await.map(Arc::unwrap_or_clone) {
                Ok(Event::Sync { commit }) => {
                    println!("  sync      {} {:?}", short(&commit.sha), commit.summary);
                }
                Ok(Event::Rollout { entry }) => {
                    let key = format!(
                        "{}/{}/{}",
                        entry.service, entry.to_revision, entry.started_at.0
                    );
                    let state = (entry.result, entry.reason.clone());
                    if last.get(&key) == Some(&state) {
                        continue;
                    }
                    last.insert(key, state);
                    let kind = if entry.rollback {
                        "rollback"
                    } else {
                        "rollout "
                    };
                    let from = entry
                        .from_revision
                        .as_ref()
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into());
                    let reason = if entry.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", entry.reason)
                    };
                    println!(
                        "  {kind}  {:<9} {from} → {}  {}{reason}",
                        entry.service,
                        entry.to_revision,
                        entry.result.as_str()
                    );
                }
                Ok(Event::Revert {
                    service,
                    commit,
                    ok,
                    message,
                    ..
                }) => {
                    if ok {
                        println!(
                            "  revert    {service}: pushed {} ({message})",
                            commit.as_deref().map(short).unwrap_or("?")
                        );
                    } else {
                        println!("  revert    {service}: not reverted: {message}");
                    }
                }
                Ok(Event::Service { .. }) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    })
}

async fn wait_view(
    hub: &Hub,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&ServiceView) -> bool,
) -> anyhow::Result<ServiceView> {
    wait_service(hub, SERVICE, what, timeout, cond).await
}

async fn wait_service(
    hub: &Hub,
    service: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&ServiceView) -> bool,
) -> anyhow::Result<ServiceView> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = hub.service(service)
            && cond(&v)
        {
            return Ok(v);
        }
        if Instant::now() > deadline {
            let now = hub
                .service(service)
                .map(|v| format!("{} ({})", v.phase.as_str(), v.reason))
                .unwrap_or_else(|| "not seen yet".into());
            bail!(
                "timed out after {}s waiting for {service}: {what}; it is {now}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn demo(args: Args, log_format: crate::telemetry::LogFormat) -> anyhow::Result<u8> {
    let examples = find_examples(args.examples.as_deref())?;
    let scratch = Scratch::create(&args.dir, &examples)?;
    let dir = scratch
        .remote
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let log_file = log_to_file(&dir, log_format)?;
    let mut run_args = RunArgs::new(scratch.remote.to_string_lossy(), dir.join("state"));
    run_args.listen = args.listen;
    run_args.poll_interval = Duration::from_secs(2);
    run_args.resync_interval = Duration::from_secs(5);
    let envs = crate::manifest::environments(&examples).unwrap_or_default();
    if envs.iter().any(|e| e == "demo") {
        run_args.environment = Some("demo".into());
    }
    let running = run::start(&run_args).await?;
    let url = format!("http://{}", running.addr);
    println!("Floyd demo");
    println!(
        "  config remote  {}  (seeded from {})",
        scratch.remote.display(),
        examples.display()
    );
    println!("  dashboard      {url}/");
    println!("  API            {url}/api/v1/services");
    if let Some(e) = &run_args.environment {
        println!("  environment    {e}");
    }
    println!("  controller log {}", log_file.display());
    println!();
    if !args.scenario {
        // The scenario pushes its own changes and exits: nothing to try by hand.
        println!("Push a change and watch it roll out:");
        println!(
            "  git clone {} floyd-config && cd floyd-config",
            scratch.remote.display()
        );
        println!("  sed -i 's/webVersion: \"1.4.2\"/webVersion: \"1.4.3\"/' floyd.yaml");
        println!("  git commit -am \"web: 1.4.3\" && git push");
        println!("  floyd watch web --server {url}");
        println!();
    }
    let printer = spawn_printer(&running.hub);
    let code = if args.scenario {
        match scenario(&running, &scratch).await {
            Ok(()) => {
                println!();
                println!(
                    "✓ scenario complete: rollout, canary, failure, rollback and revert all happened"
                );
                0
            }
            Err(e) => {
                println!();
                println!("✗ scenario failed: {e:#}");
                1
            }
        }
    } else {
        println!("Floyd is running. Stop it with Ctrl-C.");
        run::signal().await;
        0
    };
    printer.abort();
    println!("stopping (instances are stopped too)");
    running.shutdown().await?;
    Ok(code)
}

async fn scenario(running: &Running, scratch: &Scratch) -> anyhow::Result<()> {
    let hub = &running.hub;
    let initial = scratch
        .remote_log(1)?
        .first()
        .map(|(s, _)| s.clone())
        .ok_or_else(|| anyhow!("the scratch remote has no commit"))?;
    println!("1. Initial sync of examples-repo ({})", short(&initial));
    let v0 = wait_view(
        hub,
        "the initial rollout to complete",
        Duration::from_secs(120),
        |v| v.phase == Phase::Complete && v.commit.as_ref().is_some_and(|c| c.sha == initial),
    )
    .await?;
    let r0 = v0.target_revision.clone().unwrap_or_else(|| "?".into());

    println!("\n2. A healthy change: web 1.4.3");
    scratch.edit(FILE, "\"{{ values.webVersion }}\"", "\"1.4.3\"")?;
    let good = scratch.commit_and_push("web: 1.4.3")?;
    let v1 = wait_view(
        hub,
        "the healthy rollout to complete",
        Duration::from_secs(120),
        |v| v.phase == Phase::Complete && v.commit.as_ref().is_some_and(|c| c.sha == good),
    )
    .await?;
    let r1 = v1.target_revision.clone().unwrap_or_else(|| "?".into());
    if r1 == r0 {
        bail!("the healthy change did not produce a new revision ({r1})");
    }
    println!("   ✓ web runs revision {r1} from {}", short(&good));

    canary_act(hub, scratch).await?;

    println!("\n4. A broken change: web 1.5.0 never becomes ready");
    let mut events = hub.subscribe();
    scratch.edit(FILE, "\"1.4.3\"]", "\"1.5.0\", \"--never-ready\"]")?;
    let bad = scratch.commit_and_push("web: 1.5.0")?;
    wait_view(
        hub,
        "the broken rollout to start",
        Duration::from_secs(60),
        |v| v.commit.as_ref().is_some_and(|c| c.sha == bad),
    )
    .await?;
    let revert = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            match events.recv().await.map(Arc::unwrap_or_clone) {
                Ok(Event::Revert {
                    service,
                    commit,
                    ok,
                    message,
                    ..
                }) if service == SERVICE => {
                    return if ok {
                        commit.ok_or_else(|| anyhow!("revert event without a commit"))
                    } else {
                        Err(anyhow!("Floyd did not revert: {message}"))
                    };
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(anyhow!("event stream ended: {e}")),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no revert within 180 s of pushing the broken change"))??;
    let history = hub.history(SERVICE);
    let failed = history
        .iter()
        .find(|e| e.result == Phase::Failed && e.commit.as_ref().is_some_and(|c| c.sha == bad))
        .ok_or_else(|| anyhow!("the broken rollout was not recorded as Failed"))?;
    println!(
        "   ✓ rollout of {} failed: {}",
        failed.to_revision, failed.reason
    );
    if !history.iter().any(|e| e.rollback && e.to_revision == r1) {
        bail!("no rollback to {r1} was recorded");
    }
    println!("   ✓ rolled back to {r1}");
    let v2 = wait_view(
        hub,
        "to converge on the revert commit",
        Duration::from_secs(120),
        |v| {
            v.phase == Phase::Complete
                && v.commit.as_ref().is_some_and(|c| c.sha == revert)
                && v.target_revision.as_ref() == Some(&r1)
        },
    )
    .await?;
    println!(
        "   ✓ revert {} pushed; web is {} on {}",
        short(&revert),
        v2.phase.as_str(),
        r1
    );

    println!("\n5. The remote's history (git log):");
    let log = scratch.remote_log(5)?;
    for (sha, msg) in &log {
        println!("   {} {}", short(sha), msg.lines().next().unwrap_or(""));
    }
    let (top, msg) = log.first().ok_or_else(|| anyhow!("empty remote log"))?;
    if *top != revert {
        bail!(
            "the remote tip is {}, not the revert {}",
            short(top),
            short(&revert)
        );
    }
    println!("\n   The revert commit:");
    for l in msg.lines() {
        println!("   | {l}");
    }
    for needle in [
        format!("Floyd-Revert-Of: {bad}"),
        format!("Floyd-Service: {SERVICE}"),
        "Floyd-Reason: ".to_string(),
    ] {
        if !msg.contains(&needle) {
            bail!("the revert commit lacks {needle:?}");
        }
    }
    let good_file = scratch.remote_file(&good, FILE)?;
    if scratch.remote_file(&revert, FILE)? != good_file {
        bail!("{FILE} at the revert differs from the last good commit");
    }
    Ok(())
}

/// Act 3: a canary of `shop`, step by step. Prints each step as it begins
/// (with the weight in force), steps that finished between two looks
/// included, and at each timed pause the measured share of requests the
/// canary answered; returns once the canary is Complete.
async fn canary_act(hub: &Hub, scratch: &Scratch) -> anyhow::Result<()> {
    let work = scratch
        .work
        .workdir()
        .ok_or_else(|| anyhow!("the demo's working clone has no work tree"))?;
    let envs = crate::manifest::environments(work).unwrap_or_default();
    let env = envs.iter().any(|e| e == "demo").then_some("demo");
    let release = crate::manifest::load_release(work, env)
        .map_err(|e| anyhow!("examples-repo does not render: {e}"))?;
    let spec = release
        .service(CANARY)
        .map(|s| s.spec.clone())
        .ok_or_else(|| anyhow!("examples-repo has no {CANARY} service; update the demo"))?;
    let crate::manifest::Strategy::Canary { canary: params } = &spec.strategy else {
        bail!("{CANARY_FILE} is not a canary any more; update the demo");
    };
    let steps = &params.steps;
    let port = spec
        .ports
        .first()
        .map(|p| p.port)
        .ok_or_else(|| anyhow!("{CANARY_FILE} declares no port; update the demo"))?;
    let command = &spec.template.command;
    let stable_version = command
        .iter()
        .position(|a| a == "--version")
        .and_then(|i| command.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "the stable version".into());
    let before = hub
        .service(CANARY)
        .and_then(|v| v.current_revision)
        .map(|r| r.to_string())
        .unwrap_or_else(|| "?".into());

    let plan: Vec<String> = steps.iter().map(|s| s.describe()).collect();
    println!("\n3. A canary: shop 3.2.0 beside {stable_version} ({before})");
    println!("   steps: {}", plan.join(" → "));
    let mut events = hub.subscribe();
    scratch.edit(CANARY_FILE, "\"{{ values.shopVersion }}\"", "\"3.2.0\"")?;
    let sha = scratch.commit_and_push("shop: 3.2.0 (canary)")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building an HTTP client")?;

    // Steps printed so far (index of the next one to print), the last weight seen.
    let mut printed = 0usize;
    let mut weight = 0u32;
    let mut promoting_at = None::<u32>;
    let deadline = Instant::now() + Duration::from_secs(180);
    let view = loop {
        if Instant::now() > deadline {
            let now = hub
                .service(CANARY)
                .map(|v| format!("{} ({})", v.phase.as_str(), v.reason))
                .unwrap_or_else(|| "not seen yet".into());
            bail!("the canary of {CANARY} did not complete within 180 s; it is {now}");
        }
        // Every service event, or a look every 200 ms if events lag.
        match tokio::time::timeout(Duration::from_millis(200), events.recv())
            .await
            .map(|r| r.map(Arc::unwrap_or_clone))
        {
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                bail!("the controller's event stream ended")
            }
            Ok(Ok(Event::Service { service })) if service.name != CANARY => continue,
            Ok(Ok(Event::Service { .. })) | Ok(Err(_)) | Err(_) => {}
            Ok(Ok(_)) => continue,
        }
        let Some(v) = hub.service(CANARY) else {
            continue;
        };
        if v.commit.as_ref().is_none_or(|c| c.sha != sha) {
            continue;
        }
        match v.phase {
            Phase::Failed | Phase::Degraded | Phase::RolledBack => {
                bail!("the canary of {CANARY} {}: {}", v.phase.as_str(), v.reason)
            }
            _ => {}
        }
        // Steps that began (and maybe ended) since the last look.
        let (reached, now_weight) = match &v.canary {
            Some(c) => (c.step as usize, c.weight),
            None if v.phase == Phase::Complete => (steps.len(), 100),
            None => continue,
        };
        while printed <= reached.min(steps.len().saturating_sub(1)) && printed < steps.len() {
            let i = printed;
            let w = if i == reached {
                now_weight
            } else {
                params.weight_after(i)
            };
            weight = w;
            println!(
                "   canary    step {}/{}  {:<22} weight {w:>3}%",
                i + 1,
                steps.len(),
                steps[i].describe()
            );
            printed += 1;
            let timed_pause = matches!(
                &steps[i],
                crate::manifest::CanaryStep::Pause(p) if p.duration_seconds.is_some()
            );
            if i == reached && timed_pause {
                let share = sample(&client, port, SAMPLE_REQUESTS).await;
                println!("              {share}");
            }
        }
        if reached >= steps.len() && v.phase != Phase::Complete {
            if promoting_at != Some(now_weight) {
                println!(
                    "   canary    promoting               weight {now_weight:>3}%  {}",
                    v.reason.trim_start_matches("canary: ")
                );
                promoting_at = Some(now_weight);
            }
        } else if now_weight != weight && reached < steps.len() {
            println!("              weight {weight}% → {now_weight}%");
            weight = now_weight;
        }
        if v.phase == Phase::Complete {
            break v;
        }
    };
    let rev = view
        .target_revision
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "?".into());
    println!(
        "   ✓ canary complete: shop runs revision {rev} (3.2.0) at 100 % from {}",
        short(&sha)
    );
    Ok(())
}

/// Sends `n` requests through the canary's load balancer and says who answered.
async fn sample(client: &reqwest::Client, port: u16, n: u32) -> String {
    let url = format!("http://127.0.0.1:{port}/version");
    let mut by_version: std::collections::BTreeMap<String, u32> = Default::default();
    let mut failed = 0u32;
    for _ in 0..n {
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                let v = r.text().await.unwrap_or_default();
                *by_version.entry(v.trim().to_string()).or_default() += 1;
            }
            _ => failed += 1,
        }
    }
    let mut parts: Vec<String> = by_version
        .iter()
        .map(|(v, c)| format!("{c} answered by {v}"))
        .collect();
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    format!("traffic: {n} requests: {}", parts.join(", "))
}
