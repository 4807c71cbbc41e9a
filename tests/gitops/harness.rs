//! The controller harness shared by the GitOps tests and the fault suite: a
//! real Git server seeded with services, the real controller on the
//! wall-clock fake runtime ([`super::fake`]), and waits on its views.

use super::fake::FakeRuntime;
use super::support::{GitServer, Work};
use floyd::controller::{Config, Controller};
use floyd::engine::Phase;
use floyd::hub::{Hub, ServiceView};
use floyd::source::{Credentials, GitSource, SourceConfig};
use floyd::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub fn service_yaml(name: &str, version: &str, never_ready: bool) -> String {
    let extra = if never_ready {
        ", \"--never-ready\""
    } else {
        ""
    };
    format!(
        "apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  replicas: 2
  template:
    command: [\"sample-app\", \"--version\", \"{version}\"{extra}]
  progressDeadlineSeconds: 2
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
"
    )
}

pub struct Harness {
    pub server: GitServer,
    pub work: Work,
    pub state: tempfile::TempDir,
    pub hub: Arc<Hub>,
    pub runtime: Arc<FakeRuntime>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Opts {
    pub poll: Duration,
    pub no_revert: bool,
    /// The remote as the controller sees it (default: the server's URL).
    pub remote_url: Option<String>,
    /// `Config::git_timeout` (default: the controller's).
    pub git_timeout: Option<Duration>,
    /// The state directory (store, mirror) instead of the harness's own.
    pub state_dir: Option<std::path::PathBuf>,
    /// A Git host API (revert pull requests; statuses when the flag is set).
    pub git_host: Option<(floyd::githost::GitHost, bool)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            poll: Duration::from_millis(200),
            no_revert: false,
            remote_url: None,
            git_timeout: None,
            state_dir: None,
            git_host: None,
        }
    }
}

impl Harness {
    /// A server seeded with `web` v1 and `api` v1, and a running controller.
    pub async fn new(opts: Opts) -> Harness {
        Harness::seeded(
            &[
                ("services/web.yaml", service_yaml("web", "v1", false)),
                ("services/api.yaml", service_yaml("api", "v1", false)),
            ],
            "initial: web and api v1",
            FakeRuntime::new(Duration::from_millis(100)),
            opts,
        )
        .await
    }

    /// A server seeded with `files` in one commit, and a running controller
    /// on `runtime`.
    pub async fn seeded(
        files: &[(&str, String)],
        message: &str,
        runtime: FakeRuntime,
        opts: Opts,
    ) -> Harness {
        let server = GitServer::daemon();
        let work = Work::clone(&server.url);
        for (path, text) in files {
            work.write(path, text);
        }
        work.commit(message);
        work.push();
        let state = tempfile::tempdir().unwrap();
        let runtime = Arc::new(runtime);
        let mut h = Harness {
            server,
            work,
            state,
            hub: Arc::new(Hub::new()),
            runtime,
            stop: CancellationToken::new(),
            task: None,
        };
        h.start(opts);
        h
    }

    pub fn start(&mut self, opts: Opts) {
        self.hub = Arc::new(Hub::new());
        self.stop = CancellationToken::new();
        let state = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| self.state.path().to_path_buf());
        let src = Arc::new(
            GitSource::open(SourceConfig {
                url: opts
                    .remote_url
                    .clone()
                    .unwrap_or_else(|| self.server.url.clone()),
                branch: "main".into(),
                mirror: state.join("repo.git"),
                credentials: Credentials::default(),
            })
            .unwrap(),
        );
        let store = Arc::new(Store::open(&state).unwrap());
        let mut cfg = Config::new();
        cfg.poll_interval = opts.poll;
        cfg.resync_interval = Duration::from_millis(500);
        cfg.no_revert = opts.no_revert;
        if let Some(t) = opts.git_timeout {
            cfg.git_timeout = t;
        }
        if let Some((host, statuses)) = opts.git_host {
            drop(floyd::githost::status::follow(
                host.clone(),
                src.clone(),
                &self.hub,
                statuses,
                Duration::from_millis(20),
            ));
            cfg.git_host = Some(host);
        }
        let ctl = Controller::new(self.hub.clone(), self.runtime.clone(), src, store, cfg);
        let stop = self.stop.clone();
        self.task = Some(tokio::spawn(async move {
            ctl.run(async move { stop.cancelled().await })
                .await
                .expect("controller runs");
        }));
    }

    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("controller stops within 10 s")
                .unwrap();
        }
    }

    pub async fn wait_view(
        &self,
        what: &str,
        service: &str,
        timeout: Duration,
        cond: impl Fn(&ServiceView) -> bool,
    ) -> ServiceView {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.hub.service(service)
                && cond(&v)
            {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {service}: {what}; last view: {:#?}",
                    self.hub.service(service)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `service` is Complete on a commit other than `not` (a
    /// revert Floyd pushed, typically); returns the view.
    pub async fn wait_complete_beyond(
        &self,
        what: &str,
        service: &str,
        not: &[&str],
        timeout: Duration,
    ) -> ServiceView {
        self.wait_view(what, service, timeout, |v| {
            v.phase == Phase::Complete
                && v.commit
                    .as_ref()
                    .is_some_and(|c| !not.contains(&c.sha.as_str()))
        })
        .await
    }

    /// Waits until `service` is Complete on the revision rendered from `commit`.
    pub async fn wait_complete_at(&self, service: &str, commit: &str) -> ServiceView {
        self.wait_view(
            &format!("Complete at commit {commit}"),
            service,
            Duration::from_secs(30),
            |v| v.phase == Phase::Complete && v.commit.as_ref().is_some_and(|c| c.sha == commit),
        )
        .await
    }

    pub fn push_web(&self, version: &str, never_ready: bool, msg: &str) -> String {
        self.work.write(
            "services/web.yaml",
            &service_yaml("web", version, never_ready),
        );
        let c = self.work.commit(msg);
        self.work.push();
        c
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
