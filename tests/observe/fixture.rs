//! A Floyd HTTP server on 127.0.0.1 over a hub filled by the test, and a
//! fake controller task answering manual commands the way the real one does
//! (it owns the rollout state; the server only forwards).

#![allow(dead_code)]

use floyd::engine::{Command, Phase, RevisionCounts};
use floyd::hub::{CommitInfo, HistoryEntry, Hub, ServiceView};
use floyd::manifest::Revision;
use floyd::runtime::{GateResult, GateVerdict, GpuCapacity};
use floyd::server::{self, Config, Secret};
use floyd::time::Time;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

pub const TOKEN: &str = "s3cret-api-token";
pub const HOOK_SECRET: &str = "whsec-abcdef";

/// Upper bound on any wait in these tests: nothing may hang.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Server {
    pub hub: Arc<Hub>,
    pub addr: SocketAddr,
    pub url: String,
    pub commands: Arc<Mutex<Vec<(String, Command)>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// A server with the API token and webhook secret set.
    pub async fn start() -> Server {
        Server::start_with(Config {
            api_token: Some(Secret::new(TOKEN)),
            webhook_secret: Some(Secret::new(HOOK_SECRET)),
            branch: "main".into(),
            max_body_bytes: 64 * 1024,
            allowed_origins: Vec::new(),
        })
        .await
    }

    pub async fn start_with(config: Config) -> Server {
        let hub = Arc::new(Hub::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, hub.clone(), config, async move {
            let _ = stopped.await;
        }));
        let commands = Arc::new(Mutex::new(Vec::new()));
        fake_controller(hub.clone(), commands.clone());
        Server {
            hub,
            addr,
            url: format!("http://{addr}"),
            commands,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Graceful shutdown; fails the test when it does not finish in time.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("server shut down in time")
                .expect("server task")
                .expect("serve result");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Answers commands like the controller: promote only while awaiting
/// promotion, pause only while progressing, resume only while paused,
/// abort while a rollout is in flight. Accepted commands change the view.
fn fake_controller(hub: Arc<Hub>, log: Arc<Mutex<Vec<(String, Command)>>>) {
    let Some(mut rx) = hub.take_commands() else {
        return;
    };
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            log.lock()
                .expect("log")
                .push((req.service.clone(), req.command));
            let Some(mut view) = hub.service(&req.service) else {
                let _ = req
                    .reply
                    .send(Err(format!("unknown service {}", req.service)));
                continue;
            };
            let answer = match (req.command, view.phase) {
                (Command::Promote, Phase::AwaitingPromotion) => {
                    view.phase = Phase::Progressing;
                    view.reason = "promoted by a person".into();
                    Ok(())
                }
                (Command::Pause, Phase::Progressing) => {
                    view.phase = Phase::Paused;
                    Ok(())
                }
                (Command::Resume, Phase::Paused) => {
                    view.phase = Phase::Progressing;
                    Ok(())
                }
                (Command::Abort, p) if !p.is_terminal() => {
                    view.phase = Phase::RolledBack;
                    view.reason = "aborted by a person".into();
                    Ok(())
                }
                (c, p) => Err(format!("cannot {c:?} a rollout that is {}", p.as_str())),
            };
            if answer.is_ok() {
                hub.set_service(view);
            }
            let _ = req.reply.send(answer);
        }
    });
}

pub fn rev(s: &str) -> Revision {
    Revision::from(s)
}

pub fn commit(sha: &str, summary: &str) -> CommitInfo {
    CommitInfo {
        sha: sha.into(),
        summary: summary.into(),
        author: "Ada Lovelace <ada@example.com>".into(),
        time: 1_790_000_000,
    }
}

pub fn counts(r: &str, desired: u32, ready: u32, terminating: u32) -> RevisionCounts {
    RevisionCounts {
        revision: rev(r),
        desired,
        live: ready + terminating,
        ready,
        available: ready,
        terminating,
    }
}

/// A service mid-rollout from `aaaaaaaaaa` to `bbbbbbbbbb`.
pub fn view(name: &str, phase: Phase) -> ServiceView {
    ServiceView {
        name: name.into(),
        strategy: "RollingUpdate".into(),
        replicas: 4,
        phase,
        reason: if phase == Phase::Progressing {
            "2 of 4 new instances available".into()
        } else {
            String::new()
        },
        current_revision: Some(rev("aaaaaaaaaa")),
        target_revision: Some(rev("bbbbbbbbbb")),
        commit: Some(commit(
            "0123456789abcdef0123456789abcdef01234567",
            &format!("{name}: bump to 1.4.2"),
        )),
        revisions: vec![counts("bbbbbbbbbb", 4, 2, 0), counts("aaaaaaaaaa", 2, 2, 1)],
        gates: vec![GateResult {
            name: "successRate".into(),
            verdict: GateVerdict::Pass,
            at: Time::from_secs(1_790_000_100),
        }],
        gpu: Some(GpuCapacity {
            kind: "NVIDIA-A100-SXM4-80GB".into(),
            exist: 8,
            free: 2,
            held_by_service: 4,
        }),
        active: None,
        preview: None,
        updated_at: Time::from_secs(1_790_000_100),
        canary: None,
        drift: Vec::new(),
    }
}

/// A finished rollout as the controller records it.
pub fn entry(service: &str, result: Phase, started: u64) -> HistoryEntry {
    HistoryEntry {
        service: service.into(),
        commit: Some(commit(
            "0123456789abcdef0123456789abcdef01234567",
            "bump to 1.4.2",
        )),
        from_revision: Some(rev("aaaaaaaaaa")),
        to_revision: rev("bbbbbbbbbb"),
        started_at: Time::from_secs(started),
        ended_at: Some(Time::from_secs(started + 42)),
        result,
        reason: String::new(),
        rollback: false,
        revert_commit: None,
    }
}

/// A complete service at `bbbbbbbbbb`.
pub fn complete(name: &str) -> ServiceView {
    let mut v = view(name, Phase::Complete);
    v.current_revision = Some(rev("bbbbbbbbbb"));
    v.revisions = vec![counts("bbbbbbbbbb", 4, 4, 0)];
    v
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("http client")
}

/// Waits until `cond` holds, polling; panics after [`WAIT`].
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
