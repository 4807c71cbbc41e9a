//! `floyd run`: the controller, until SIGINT/SIGTERM.
//!
//! Wires the parts together: telemetry, the state store, the Git source
//! (plus a filesystem watch for local repos), the runtime, the HTTP server
//! and the controller. Shutdown is graceful: the controller finishes its
//! current step and persists, the server drains, and (local runtime only)
//! instances are stopped unless `--leave-running`.

use crate::controller::{self, Controller};
use crate::hub::Hub;
use crate::manifest::GpuInventory;
use crate::runtime::Runtime;
use crate::runtime::local::{LocalConfig, LocalRuntime, parse_gpus_flag};
use crate::source::{self, GitSource, SourceConfig};
use crate::store::Store;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config repository: URL (https, ssh, git, file) or local path.
    #[arg(long, env = "FLOYD_REPO")]
    pub repo: String,
    /// Branch to track (and to push revert commits to).
    #[arg(long, env = "FLOYD_BRANCH", default_value = "main")]
    pub branch: String,
    /// Sub-directory of the repo holding floyd.yaml and services/.
    #[arg(long, env = "FLOYD_PATH")]
    pub path: Option<PathBuf>,
    /// Where instances run.
    #[arg(long, env = "FLOYD_RUNTIME", value_enum, default_value = "local")]
    pub runtime: RuntimeKind,
    /// Environment from floyd.yaml to render (default: the base values only).
    #[arg(long, env = "FLOYD_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Address of the HTTP server: dashboard, API, webhooks, /metrics.
    #[arg(long, env = "FLOYD_LISTEN", default_value = "127.0.0.1:9180")]
    pub listen: SocketAddr,
    /// Directory for Floyd's state: the store, the Git mirror, instance logs.
    #[arg(long, env = "FLOYD_STATE_DIR", default_value = ".floyd")]
    pub state_dir: PathBuf,
    /// Check the remote for new commits this often (webhooks trigger a check at once).
    #[arg(long, env = "FLOYD_POLL_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// File holding the shared secret that push webhooks are signed with.
    #[arg(long, env = "FLOYD_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// File holding a bearer token required by the manual controls
    /// (promote, abort, pause, resume); without it they are open.
    #[arg(long, env = "FLOYD_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// A fetch or revert push with no answer from the remote for this long is
    /// reported as failed (and retried later); the controller never waits on Git.
    #[arg(long, env = "FLOYD_GIT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub git_timeout: Duration,
    /// Roll back a failed rollout but push no revert commit to Git.
    #[arg(long, env = "FLOYD_NO_REVERT")]
    pub no_revert: bool,
    /// Author and committer of revert commits, `Name <email>`.
    #[arg(
        long,
        env = "FLOYD_GIT_AUTHOR",
        default_value = "Floyd <floyd@localhost>"
    )]
    pub git_author: String,
    /// Leave instances running on shutdown (local runtime).
    #[arg(long, env = "FLOYD_LEAVE_RUNNING")]
    pub leave_running: bool,
    /// Kubernetes namespace (kube runtime).
    #[arg(long, env = "FLOYD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Re-observe every service this often even without commits (drift).
    #[arg(long, env = "FLOYD_RESYNC_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// Services whose rollouts are stepped at the same time.
    #[arg(long, env = "FLOYD_MAX_CONCURRENT", default_value_t = 16)]
    pub max_concurrent: usize,
    /// Declared GPU inventory for the local runtime when nvidia-smi is absent,
    /// e.g. `NVIDIA-L4:2,NVIDIA-A100-SXM4-80GB:4` (default: floyd.yaml `runtime.local.gpus`).
    #[arg(long, env = "FLOYD_GPUS")]
    pub gpus: Option<String>,
    /// Threads of the local runtime's load balancers (default: a quarter of
    /// the CPUs, rounded up, at most 8).
    #[arg(long, env = "FLOYD_LB_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub lb_threads: Option<u16>,
    /// Address the local runtime's load balancers listen on (default
    /// 127.0.0.1; 0.0.0.0 or a LAN address serves other machines).
    #[arg(long, env = "FLOYD_LB_BIND", default_value = "127.0.0.1")]
    pub lb_bind: std::net::IpAddr,
    /// How the local runtime's load balancers pick an instance.
    #[arg(
        long,
        env = "FLOYD_LB_POLICY",
        value_enum,
        default_value = "round-robin"
    )]
    pub lb_policy: crate::runtime::local::LbPolicy,
    /// Where the local runtime's load balancers run: `process`, a
    /// `floyd dataplane` process that the controller starts, adopts after a
    /// restart and restarts if it dies, so traffic outlives a crash, kill or
    /// upgrade of `floyd run`; `in-process`, threads of `floyd run` (traffic
    /// stops with it).
    #[arg(long, env = "FLOYD_DATAPLANE", value_enum, default_value = "process")]
    pub dataplane: crate::runtime::local::DataplaneMode,
    /// Prometheus server (http or https URL) for `prometheus` gates that
    /// name no `address`.
    #[arg(long, env = "FLOYD_PROMETHEUS_URL", value_parser = prometheus_url)]
    pub prometheus_url: Option<String>,
    /// Install identity (kube runtime): the `floyd.dev/instance` label on
    /// every object; Floyd lists, changes and deletes only objects with it.
    /// The chart sets the release name.
    #[arg(long, env = "FLOYD_INSTANCE", default_value = crate::runtime::kube::objects::DEFAULT_INSTANCE, value_parser = instance_name)]
    pub instance: String,
    /// Name of the leader-election Lease (kube runtime).
    #[arg(long, env = "FLOYD_LEASE_NAME", default_value = "floyd-leader")]
    pub lease_name: String,
    /// A leader not renewing for this long may be replaced by a standby.
    #[arg(long, env = "FLOYD_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// A leader that cannot renew within this long stops acting (shorter
    /// than --lease-duration); also the deadline of each Lease call.
    #[arg(long, env = "FLOYD_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew_deadline: Duration,
    /// How often the leader renews and standbys retry.
    #[arg(long, env = "FLOYD_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_retry_period: Duration,
    /// Count GPUs held by pods of every namespace (needs the chart's
    /// `rbac.clusterWideGpuAccounting`: list pods cluster-wide).
    #[arg(long, env = "FLOYD_CLUSTER_GPU_ACCOUNTING")]
    pub cluster_gpu_accounting: bool,
    /// Kube runtime: adopt this namespace's Floyd objects that carry no
    /// install identity (made by a Floyd from before identities) by labelling
    /// them with --instance. Without it they are refused as not ours.
    #[arg(long, env = "FLOYD_ADOPT_UNLABELLED")]
    pub adopt_unlabelled: bool,
    /// Origins or hosts (comma-separated, e.g. `https://floyd.example.com`)
    /// whose web pages may send manual controls, besides this server itself.
    #[arg(long, env = "FLOYD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// The Git host's API for revert pull requests and commit statuses
    /// (default: inferred from --repo on github.com and gitlab.com).
    #[command(flatten)]
    pub git_host: GitHostArgs,
}

/// `--git-host*` flags (see docs/operations.md, "Protected branches").
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GitHostArgs {
    /// Kind of Git host: github (also GitHub Enterprise), gitlab, gitea (also Forgejo).
    #[arg(long = "git-host", env = "FLOYD_GIT_HOST", value_enum)]
    pub host_kind: Option<crate::githost::HostKind>,
    /// API base URL, e.g. https://ghe.example.com/api/v3 (default: the
    /// hosted service's for github and gitlab).
    #[arg(long = "git-host-api", env = "FLOYD_GIT_HOST_API")]
    pub host_api: Option<String>,
    /// File holding the host API token (or FLOYD_GIT_HOST_TOKEN).
    #[arg(long = "git-host-token-file", env = "FLOYD_GIT_HOST_TOKEN_FILE")]
    pub host_token_file: Option<PathBuf>,
    /// Repository on the host, `owner/name` (GitLab: the project path)
    /// (default: from --repo).
    #[arg(long = "git-host-repo", env = "FLOYD_GIT_HOST_REPO")]
    pub host_repo: Option<String>,
    /// How reverts reach the branch: push (a push refused by branch
    /// protection becomes a pull request) or always a pull request.
    #[arg(
        long = "revert-via",
        env = "FLOYD_REVERT_VIA",
        value_enum,
        default_value = "push"
    )]
    pub revert_via: crate::githost::RevertVia,
    /// Set commit statuses `floyd/<service>` on synced commits.
    #[arg(long = "git-host-statuses", env = "FLOYD_GIT_HOST_STATUSES")]
    pub host_statuses: bool,
    /// Above this many services in one commit, one aggregated `floyd` status.
    #[arg(long = "git-host-status-aggregate-above", env = "FLOYD_GIT_HOST_STATUS_AGGREGATE_ABOVE", default_value_t = crate::githost::status::DEFAULT_AGGREGATE_ABOVE)]
    pub status_aggregate_above: usize,
    /// Public URL of the dashboard, linked from commit statuses.
    #[arg(long = "public-url", env = "FLOYD_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl GitHostArgs {
    /// The host, resolved against the remote URL (`None`: none configured).
    pub fn resolve(&self, remote: &str) -> Result<Option<crate::githost::HostConfig>, String> {
        let args = crate::githost::HostArgs {
            kind: self.host_kind,
            api: self.host_api.clone(),
            token_file: self.host_token_file.clone(),
            token: std::env::var(GIT_HOST_TOKEN_ENV).ok(),
            repo: self.host_repo.clone(),
            via: self.revert_via,
            public_url: self.public_url.clone(),
            status_aggregate_above: self.status_aggregate_above,
        };
        crate::githost::HostConfig::resolve(&args, remote).map_err(|e| e.to_string())
    }
}

/// The Git host API token, read from the environment only (a flag would
/// show it in `ps`); `--git-host-token-file` is the file form.
pub const GIT_HOST_TOKEN_ENV: &str = "FLOYD_GIT_HOST_TOKEN";

/// Every environment variable `floyd run` reads: the `env` of its flags and
/// the global ones (clap's own metadata), and the credentials read from the
/// environment only. The chart test checks each `FLOYD_*` it sets is here.
pub fn environment_variables() -> std::collections::BTreeSet<String> {
    use clap::CommandFactory;
    let mut cmd = super::Cli::command();
    cmd.build();
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let run = cmd
        .find_subcommand("run")
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    globals
        .into_iter()
        .chain(run)
        .chain(crate::source::CREDENTIAL_ENV.iter().map(|s| s.to_string()))
        .chain([GIT_HOST_TOKEN_ENV.to_string()])
        .collect()
}

pub(crate) fn instance_name(s: &str) -> Result<String, String> {
    crate::runtime::kube::objects::check_instance(s).map(|()| s.to_string())
}

fn prometheus_url(s: &str) -> Result<String, String> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.to_string()),
        Ok(u) => Err(format!(
            "{} is not an http(s) URL; give e.g. http://prometheus:9090",
            crate::source::redact_url(u.as_str())
        )),
        Err(e) => Err(format!("not a URL ({e}); give e.g. http://prometheus:9090")),
    }
}

/// The runtimes `--runtime` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Processes on this machine, each behind a load balancer on its service port.
    Local,
    /// Kubernetes Deployments and Services (in-cluster or from the kubeconfig).
    Kube,
    /// Simulated instances on the wall clock: nothing runs; each instance is
    /// ready 1 s after it is created and stops in 0.5 s (benchmarks, dry runs
    /// of a config repo; GPUs from floyd.yaml's declared inventory).
    Sim,
}

impl Args {
    /// The defaults of every flag, for embedding (`floyd demo`, tests).
    pub fn new(repo: impl Into<String>, state_dir: impl Into<PathBuf>) -> Args {
        Args {
            repo: repo.into(),
            branch: "main".into(),
            path: None,
            runtime: RuntimeKind::Local,
            environment: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            state_dir: state_dir.into(),
            poll_interval: Duration::from_secs(30),
            git_timeout: Duration::from_secs(60),
            webhook_secret_file: None,
            api_token_file: None,
            no_revert: false,
            git_author: "Floyd <floyd@localhost>".into(),
            leave_running: false,
            namespace: "default".into(),
            resync_interval: Duration::from_secs(10),
            max_concurrent: 16,
            gpus: None,
            lb_threads: None,
            lb_bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            lb_policy: crate::runtime::local::LbPolicy::RoundRobin,
            dataplane: crate::runtime::local::DataplaneMode::Process,
            prometheus_url: None,
            instance: crate::runtime::kube::objects::DEFAULT_INSTANCE.into(),
            lease_name: "floyd-leader".into(),
            lease_duration: Duration::from_secs(15),
            lease_renew_deadline: Duration::from_secs(10),
            lease_retry_period: Duration::from_secs(2),
            cluster_gpu_accounting: false,
            adopt_unlabelled: false,
            allowed_origins: Vec::new(),
            git_host: GitHostArgs {
                status_aggregate_above: crate::githost::status::DEFAULT_AGGREGATE_ABOVE,
                ..GitHostArgs::default()
            },
        }
    }
}

/// A controller + server started in this process (for `run` and `demo`).
pub struct Running {
    pub hub: Arc<Hub>,
    pub addr: SocketAddr,
    pub runtime: Arc<dyn Runtime>,
    local: Option<Arc<LocalRuntime>>,
    stop: CancellationToken,
    /// Cancelled when the controller task ended, asked to or not.
    died: CancellationToken,
    controller: tokio::task::JoinHandle<Result<(), controller::Error>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _watch: Option<source::watch::RepoWatch>,
    leave_running: bool,
}

impl Running {
    /// Stops the controller (after its current step) and the server; then
    /// stops the local runtime's instances unless asked to leave them.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let c = self.controller.await;
        let _ = self.server.await;
        if let Some(local) = &self.local {
            if !self.leave_running {
                tracing::info!("stopping instances (use --leave-running to keep them)");
            }
            local.shutdown().await;
        }
        match c {
            Ok(r) => r.map_err(Into::into),
            Err(e) => Err(anyhow::anyhow!("controller task failed: {e}")),
        }
    }
}

/// The runtime named by `--runtime`, plus the local runtime's handle (for shutdown).
pub struct Built {
    pub runtime: Arc<dyn Runtime>,
    pub local: Option<Arc<LocalRuntime>>,
    /// Kubernetes: only the Lease holder syncs (several replicas may run).
    pub elector: Option<Arc<crate::runtime::kube::LeaderElector>>,
}

/// Builds the runtime named by `--runtime`. `gpus` is floyd.yaml's declared
/// inventory (used when `--gpus` is not given).
pub async fn make_runtime(args: &Args, gpus: Vec<GpuInventory>) -> anyhow::Result<Built> {
    match args.runtime {
        RuntimeKind::Local => {
            let mut cfg = LocalConfig::new(&args.state_dir);
            cfg.gpus = match &args.gpus {
                Some(g) => parse_gpus_flag(g)
                    .map_err(|e| super::CliError::usage(format!("--gpus: {e}")))?,
                None => gpus,
            };
            cfg.leave_running = args.leave_running;
            cfg.lb_policy = args.lb_policy;
            cfg.dataplane = args.dataplane;
            cfg.bind = args.lb_bind;
            if let Some(n) = args.lb_threads {
                cfg.lb_threads = n.into();
            }
            let local = Arc::new(LocalRuntime::start(cfg).await?);
            Ok(Built {
                runtime: local.clone(),
                local: Some(local),
                elector: None,
            })
        }
        RuntimeKind::Sim => {
            use crate::runtime::sim::{Behaviour, SimRuntime, SimWorld};
            let mut w = SimWorld::new(&gpus, 0);
            w.start_at(crate::time::Time::now_wall());
            w.set_default_behaviour(Behaviour {
                startup_seconds: 1.0,
                stop_seconds: 0.5,
                ..Behaviour::default()
            });
            Ok(Built {
                runtime: Arc::new(SimRuntime::new(w)),
                local: None,
                elector: None,
            })
        }
        RuntimeKind::Kube => {
            let mut lease = crate::runtime::kube::LeaseConfig::new(
                &args.lease_name,
                &crate::runtime::kube::identity_from_env(),
            );
            lease.lease_duration = args.lease_duration;
            lease.renew_deadline = args.lease_renew_deadline;
            lease.retry_period = args.lease_retry_period;
            lease.check().map_err(|e| {
                super::CliError::usage(format!(
                    "--lease-duration/--lease-renew-deadline/--lease-retry-period: {e}"
                ))
            })?;
            let kube =
                crate::runtime::kube::KubeRuntime::from_env(Some(&args.namespace), &args.instance)
                    .await?
                    .with_cluster_gpu_view(args.cluster_gpu_accounting)
                    .with_adopt_unlabelled(args.adopt_unlabelled);
            let elector = Arc::new(kube.leader_elector_with(lease));
            // Writes stop the moment leadership lapses, not when the
            // controller next looks.
            let kube = kube.with_leadership(elector.leadership());
            Ok(Built {
                runtime: Arc::new(kube),
                local: None,
                elector: Some(elector),
            })
        }
    }
}

/// floyd.yaml's GPU inventory at the branch tip, best effort (the runtime
/// needs it before the controller's first sync).
fn declared_gpus(args: &Args, src: &GitSource) -> Vec<GpuInventory> {
    let tip = match src.poll() {
        Ok(Some(t)) => t,
        _ => match src.local_tip() {
            Ok(Some(t)) => t,
            _ => return Vec::new(),
        },
    };
    let mut renderer = crate::manifest::tree::IncrementalRenderer::new(args.environment.as_deref());
    src.render(&tip, args.path.as_deref(), &mut renderer)
        .ok()
        .and_then(Result::ok)
        .map(|r| r.gpus)
        .unwrap_or_default()
}

/// Starts the runtime, the server and the controller in the current tokio runtime.
pub async fn start(args: &Args) -> anyhow::Result<Running> {
    let (author_name, author_email) =
        controller::parse_author(&args.git_author).map_err(super::CliError::usage)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("--state-dir {}", args.state_dir.display()))?;
    let store = Arc::new(Store::open(&args.state_dir)?);
    let credentials = source::Credentials::from_env().map_err(super::CliError::usage)?;
    let git_host = args
        .git_host
        .resolve(&args.repo)
        .map_err(super::CliError::usage)?
        .map(|c| crate::githost::GitHost::new(c, Duration::from_secs(30)))
        .transpose()
        .map_err(|e| super::CliError::usage(e.to_string()))?;
    let src = Arc::new(GitSource::open(SourceConfig {
        url: args.repo.clone(),
        branch: args.branch.clone(),
        mirror: args.state_dir.join("repo.git"),
        credentials,
    })?);
    let gpus =
        if matches!(args.runtime, RuntimeKind::Local | RuntimeKind::Sim) && args.gpus.is_none() {
            let s = src.clone();
            let a = Args {
                repo: String::new(),
                ..Args::new("", &args.state_dir)
            };
            let (path, env) = (args.path.clone(), args.environment.clone());
            tokio::task::spawn_blocking(move || {
                declared_gpus(
                    &Args {
                        path,
                        environment: env,
                        ..a
                    },
                    &s,
                )
            })
            .await
            .unwrap_or_default()
        } else {
            Vec::new()
        };
    let Built {
        runtime,
        local,
        elector,
    } = make_runtime(args, gpus).await?;
    let hub = Arc::new(Hub::new());
    hub.persist_deliveries(store.clone());
    // Delivery ids older than a week cannot come back as retries.
    let week_ago = crate::time::Time(
        crate::time::Time::now_wall()
            .as_millis()
            .saturating_sub(7 * 24 * 3600 * 1000),
    );
    if let Err(e) = store.prune_deliveries(week_ago) {
        tracing::warn!(error = %e, "cannot prune old webhook delivery ids");
    }

    let secret = |f: &std::path::Path, flag: &str| {
        crate::server::Secret::from_file(f)
            .map_err(|e| super::CliError::usage(format!("{flag}: {e}")))
    };
    let webhook_secret = match &args.webhook_secret_file {
        Some(f) => Some(secret(f, "--webhook-secret-file")?),
        None => None,
    };
    let api_token = match &args.api_token_file {
        Some(f) => Some(secret(f, "--api-token-file")?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            super::CliError::usage(format!("--listen {}: cannot bind: {e}", args.listen))
        })?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    if api_token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            listen = %addr,
            "manual controls (promote, abort, pause, resume) are open to anyone who can reach {addr}: set --api-token-file"
        );
    }
    let server_cfg = crate::server::Config {
        webhook_secret,
        branch: args.branch.clone(),
        api_token,
        allowed_origins: args.allowed_origins.clone(),
        ..crate::server::Config::default()
    };
    let server = {
        let stop = stop.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            crate::server::serve(
                listener,
                hub,
                server_cfg,
                async move { stop.cancelled().await },
            )
            .await
        })
    };

    let watch = match src.local_path() {
        Some(p) if p.exists() => {
            match source::watch::watch_repo(&p, hub.clone(), Duration::from_millis(200)) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "no filesystem watch; polling only");
                    None
                }
            }
        }
        _ => None,
    };

    if let Some(el) = elector {
        // Standby until the Lease is ours; the controller idles meanwhile.
        hub.set_leader(false);
        let mut rx = el.subscribe();
        let h = hub.clone();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                h.set_leader(*rx.borrow());
                tokio::select! {
                    _ = s.cancelled() => break,
                    r = rx.changed() => if r.is_err() { break },
                }
            }
        });
        let s = stop.clone();
        tokio::spawn(async move { el.run(s).await });
    }
    let mut cfg = controller::Config::new();
    cfg.path = args.path.clone();
    cfg.environment = args.environment.clone();
    cfg.poll_interval = args.poll_interval;
    cfg.resync_interval = args.resync_interval;
    cfg.max_concurrent = args.max_concurrent.max(1);
    cfg.no_revert = args.no_revert;
    cfg.prometheus_url = args.prometheus_url.clone();
    cfg.author_name = author_name;
    cfg.author_email = author_email;
    cfg.git_timeout = args.git_timeout;
    if let Some(h) = &git_host {
        tracing::info!(host = h.cfg.kind.as_str(), api = %h.cfg.api, repo = %h.cfg.repo, statuses = args.git_host.host_statuses, "git host configured");
        // Detached: ends when the hub's event channel closes.
        drop(crate::githost::status::follow(
            h.clone(),
            src.clone(),
            &hub,
            args.git_host.host_statuses,
            Duration::from_millis(100),
        ));
    }
    cfg.git_host = git_host;
    let ctl = Controller::new(hub.clone(), runtime.clone(), src.clone(), store, cfg);
    let died = CancellationToken::new();
    let controller = {
        let (stop, died, hub) = (stop.clone(), died.clone(), hub.clone());
        let fail_after = debug_fail_after();
        let inner = tokio::spawn(async move {
            if let Some(d) = fail_after {
                // Debug builds only: a controller task that dies, for the
                // fault suite (FLOYD_DEBUG_FAIL_CONTROLLER_AFTER).
                tokio::select! {
                    r = ctl.run(async move { stop.cancelled().await }) => r,
                    _ = tokio::time::sleep(d) => panic!("injected controller failure (FLOYD_DEBUG_FAIL_CONTROLLER_AFTER)"),
                }
            } else {
                ctl.run(async move { stop.cancelled().await }).await
            }
        });
        // However the controller task ends, liveness must say so; unless
        // asked to stop, the process then exits non-zero.
        tokio::spawn(async move {
            let r = match inner.await {
                Ok(r) => r,
                Err(e) => Err(controller::Error::Other(format!(
                    "controller task failed: {e}"
                ))),
            };
            hub.set_dead();
            died.cancel();
            r
        })
    };
    tracing::info!(
        remote = src.remote(),
        branch = %args.branch,
        runtime = runtime.name(),
        listen = %addr,
        "floyd is running"
    );
    Ok(Running {
        hub,
        addr,
        runtime,
        local,
        stop,
        died,
        controller,
        server,
        _watch: watch,
        leave_running: args.leave_running,
    })
}

/// `FLOYD_DEBUG_FAIL_CONTROLLER_AFTER` (debug builds only): kill the
/// controller task after this long, to test what a dead controller looks like.
fn debug_fail_after() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("FLOYD_DEBUG_FAIL_CONTROLLER_AFTER")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

pub fn run(args: Args, log_format: crate::telemetry::LogFormat) -> anyhow::Result<u8> {
    crate::telemetry::init_logging(log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let running = start(&args).await?;
        println!("floyd: dashboard and API on http://{}", running.addr);
        let died = running.died.clone();
        tokio::select! {
            _ = signal() => {
                tracing::info!("shutting down: finishing the current step");
                running.shutdown().await?;
                Ok(0)
            }
            _ = died.cancelled() => {
                // /healthz answers 503 from now on; give probes a moment to see it.
                tracing::error!("the controller stopped unexpectedly; exiting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                match running.shutdown().await {
                    Ok(()) => Err(anyhow::anyhow!("the controller stopped unexpectedly")),
                    Err(e) => Err(e.context("the controller stopped unexpectedly")),
                }
            }
        }
    })
}
