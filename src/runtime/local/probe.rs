//! Probes of the local runtime, like the kubelet's: HTTP GET (2xx and 3xx
//! succeed), TCP connect, exec (argv, exit 0 succeeds, killed at the timeout),
//! and the threshold arithmetic (consecutive successes / failures).
//!
//! Must not: act on results. The instance supervisor decides what a failed
//! probe means (unready, restart).

use crate::manifest::{PortRef, PortSpec, Probe, ProbeAction};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::time::Duration;

/// HTTP client for probes: a fresh connection per probe, like the kubelet.
pub type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> ProbeClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(http)
}

/// What a probe needs to know about the instance.
pub struct Target<'a> {
    /// Instance port per declared port name; `""` is the primary `PORT`.
    pub ports: &'a BTreeMap<String, u16>,
    pub declared: &'a [PortSpec],
    pub env: &'a BTreeMap<String, String>,
    pub working_dir: Option<&'a str>,
}

impl Target<'_> {
    /// The instance port a probe's port refers to: a declared name, a declared
    /// service port number (mapped to the instance's port for it), or a literal port.
    pub fn resolve(&self, port: &PortRef) -> Result<u16, String> {
        match port {
            PortRef::Name(n) => self
                .ports
                .get(n)
                .copied()
                .ok_or_else(|| format!("port {n:?} is not declared in spec.ports")),
            PortRef::Number(p) => Ok(self
                .declared
                .iter()
                .find(|d| d.port == *p)
                .and_then(|d| self.ports.get(&d.name).copied())
                .unwrap_or(*p)),
        }
    }
}

/// A short description of the probe: `GET /healthz`, `TCP :http`, `exec [cat /tmp/ready]`.
pub fn describe(action: &ProbeAction) -> String {
    match action {
        ProbeAction::Http { path, .. } => format!("GET {path}"),
        ProbeAction::Tcp { port } => match port {
            PortRef::Name(n) => format!("TCP connect to port {n}"),
            PortRef::Number(p) => format!("TCP connect to port {p}"),
        },
        ProbeAction::Exec { command } => format!("exec {command:?}"),
    }
}

/// Runs a probe once. `Err` says what went wrong (without the probe kind).
pub async fn run(
    client: &ProbeClient,
    action: &ProbeAction,
    timeout: Duration,
    target: &Target<'_>,
) -> Result<(), String> {
    let what = describe(action);
    let fut = async {
        match action {
            ProbeAction::Http { path, port } => {
                let port = target.resolve(port)?;
                let path = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                };
                let uri = format!("http://127.0.0.1:{port}{path}");
                let req = hyper::Request::get(&uri)
                    .header("user-agent", "floyd-probe/1")
                    .body(Empty::new())
                    .map_err(|e| format!("{what}: bad request: {e}"))?;
                let resp = client.request(req).await.map_err(|e| {
                    if e.is_connect() {
                        format!("{what} on port {port}: connection refused")
                    } else {
                        format!("{what} on port {port}: {e}")
                    }
                })?;
                let st = resp.status();
                if st.is_success() || st.is_redirection() {
                    Ok(())
                } else {
                    Err(format!("{what} returned {}", st.as_u16()))
                }
            }
            ProbeAction::Tcp { port } => {
                let p = target.resolve(port)?;
                tokio::net::TcpStream::connect(("127.0.0.1", p))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{what} (127.0.0.1:{p}): {e}"))
            }
            ProbeAction::Exec { command } => {
                let argv: Vec<String> = command
                    .iter()
                    .map(|a| super::process::expand(a, target.env))
                    .collect();
                let Some(prog) = argv.first() else {
                    return Err("exec probe has an empty command".into());
                };
                let mut cmd = tokio::process::Command::new(prog);
                cmd.args(&argv[1..])
                    .envs(target.env)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true);
                if let Some(d) = target.working_dir {
                    cmd.current_dir(d);
                }
                let st = cmd
                    .status()
                    .await
                    .map_err(|e| format!("{what}: cannot start: {e}"))?;
                if st.success() {
                    Ok(())
                } else {
                    Err(format!("{what} {}", super::process::describe_exit(st)))
                }
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{what} timed out after {} s",
            timeout.as_secs_f64()
        )),
    }
}

/// Consecutive-result bookkeeping of one probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Thresholds {
    successes: u32,
    failures: u32,
}

impl Thresholds {
    /// Records a result; returns the new verdict when it changes the
    /// probe's state (`Some(true)` after `success_threshold` successes in a
    /// row, `Some(false)` after `failure_threshold` failures in a row).
    pub fn record(&mut self, ok: bool, probe: &Probe) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes == probe.success_threshold.max(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures == probe.failure_threshold.max(1)).then_some(false)
        }
    }
}

/// Probe timing in real units (seconds in the manifest).
pub fn period(p: &Probe) -> Duration {
    Duration::from_secs(u64::from(p.period_seconds.max(1)))
}
pub fn timeout(p: &Probe) -> Duration {
    Duration::from_secs(u64::from(p.timeout_seconds.max(1)))
}
pub fn initial_delay(p: &Probe) -> Duration {
    Duration::from_secs(u64::from(p.initial_delay_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: u32, failure: u32) -> Probe {
        Probe {
            action: ProbeAction::Tcp {
                port: PortRef::Number(1),
            },
            initial_delay_seconds: 0,
            period_seconds: 1,
            timeout_seconds: 1,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn threshold_table() {
        // (success_threshold, failure_threshold, results, verdict changes)
        type Case = (u32, u32, &'static [bool], &'static [Option<bool>]);
        let cases: &[Case] = &[
            (1, 3, &[true], &[Some(true)]),
            (
                1,
                3,
                &[false, false, false, false],
                &[None, None, Some(false), None],
            ),
            (
                2,
                1,
                &[true, false, true, true],
                &[None, Some(false), None, Some(true)],
            ),
            (
                1,
                2,
                &[false, true, false, false],
                &[None, Some(true), None, Some(false)],
            ),
            (0, 0, &[false, true], &[Some(false), Some(true)]),
        ];
        for (s, f, results, want) in cases {
            let p = probe(*s, *f);
            let mut t = Thresholds::default();
            let got: Vec<Option<bool>> = results.iter().map(|r| t.record(*r, &p)).collect();
            assert_eq!(&got, want, "s={s} f={f} {results:?}");
        }
    }

    #[test]
    fn port_resolution() {
        let ports: BTreeMap<String, u16> = [
            ("".to_string(), 4000),
            ("http".to_string(), 4000),
            ("admin".to_string(), 4001),
        ]
        .into_iter()
        .collect();
        let declared = vec![
            PortSpec {
                name: "http".into(),
                port: 8080,
            },
            PortSpec {
                name: "admin".into(),
                port: 9090,
            },
        ];
        let env = BTreeMap::new();
        let t = Target {
            ports: &ports,
            declared: &declared,
            env: &env,
            working_dir: None,
        };
        assert_eq!(t.resolve(&PortRef::Name("admin".into())), Ok(4001));
        assert_eq!(t.resolve(&PortRef::Number(8080)), Ok(4000));
        assert_eq!(t.resolve(&PortRef::Number(7)), Ok(7));
        assert!(
            t.resolve(&PortRef::Name("nope".into()))
                .unwrap_err()
                .contains("not declared")
        );
    }

    #[tokio::test]
    async fn closed_port_and_exec_failures_say_why() {
        let ports = BTreeMap::new();
        let env = BTreeMap::new();
        let t = Target {
            ports: &ports,
            declared: &[],
            env: &env,
            working_dir: None,
        };
        // Bind then drop: a port that is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = client();
        let http = ProbeAction::Http {
            path: "/healthz".into(),
            port: PortRef::Number(port),
        };
        let e = run(&c, &http, Duration::from_secs(1), &t)
            .await
            .unwrap_err();
        assert!(e.contains("GET /healthz") && e.contains("refused"), "{e}");
        let tcp = ProbeAction::Tcp {
            port: PortRef::Number(port),
        };
        assert!(run(&c, &tcp, Duration::from_secs(1), &t).await.is_err());
        let exec = ProbeAction::Exec {
            command: vec!["false".into()],
        };
        let e = run(&c, &exec, Duration::from_secs(1), &t)
            .await
            .unwrap_err();
        assert!(e.contains("exited with status 1"), "{e}");
        let slow = ProbeAction::Exec {
            command: vec!["sleep".into(), "5".into()],
        };
        let e = run(&c, &slow, Duration::from_secs(1), &t)
            .await
            .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        let ok = ProbeAction::Exec {
            command: vec!["true".into()],
        };
        assert!(run(&c, &ok, Duration::from_secs(1), &t).await.is_ok());
    }
}
