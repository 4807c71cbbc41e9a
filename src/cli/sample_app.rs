//! `floyd sample-app`: a small HTTP workload for demos and tests.
//!
//! `/` answers JSON with its version, service, revision and instance (and the
//! GPU assignment with `--gpu-echo`); `/healthz` is for probes; `/version`
//! is the bare version; `/slow?ms=N` answers after N ms (draining tests).
//! Behaviour flags: start-up delay (the port opens late), never ready,
//! unready after N s, crash after N s, an error ratio for `/`, ignoring
//! SIGTERM. On SIGTERM it stops accepting, finishes in-flight requests, exits 0.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
pub struct Args {
    /// Version it reports.
    #[arg(long = "version", env = "SAMPLE_VERSION", default_value = "v1")]
    pub app_version: String,
    /// Port to listen on (the local runtime sets PORT).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "SAMPLE_BIND", default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Seconds before it opens its port.
    #[arg(long, env = "SAMPLE_STARTUP_DELAY", default_value_t = 0.0)]
    pub startup_delay: f64,
    /// `/healthz` always answers 503.
    #[arg(long, env = "SAMPLE_NEVER_READY")]
    pub never_ready: bool,
    /// `/healthz` answers 503 from this many seconds after start.
    #[arg(long, env = "SAMPLE_UNREADY_AFTER")]
    pub unready_after: Option<f64>,
    /// Exit with `--exit-code` this many seconds after start.
    #[arg(long, env = "SAMPLE_CRASH_AFTER")]
    pub crash_after: Option<f64>,
    /// Exit status of the `--crash-after` exit.
    #[arg(long, env = "SAMPLE_EXIT_CODE", default_value_t = 1)]
    pub exit_code: u8,
    /// Share of `/` requests answered with 500 (0.0 - 1.0), spread evenly.
    #[arg(long, env = "SAMPLE_ERROR_RATIO", default_value_t = 0.0)]
    pub error_ratio: f64,
    /// Include the GPU assignment (CUDA_VISIBLE_DEVICES, ...) in `/` and print it at start.
    #[arg(long, env = "SAMPLE_GPU_ECHO")]
    pub gpu_echo: bool,
    /// Ignore SIGTERM (to test the SIGKILL after the grace period).
    #[arg(long, env = "SAMPLE_IGNORE_SIGTERM")]
    pub ignore_sigterm: bool,
    /// Print one line per request.
    #[arg(long, env = "SAMPLE_LOG_REQUESTS")]
    pub log_requests: bool,
}

struct App {
    args: Args,
    started: Instant,
    served: AtomicU64,
    info: serde_json::Value,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    if !(0.0..=1.0).contains(&args.error_ratio) {
        return Err(super::CliError::usage(format!(
            "--error-ratio must be between 0 and 1 (got {})",
            args.error_ratio
        )));
    }
    if args.startup_delay < 0.0 || !args.startup_delay.is_finite() {
        return Err(super::CliError::usage("--startup-delay must be >= 0"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

fn gpu_info() -> serde_json::Value {
    let get = |k: &str| std::env::var(k).ok();
    serde_json::json!({
        "cuda_visible_devices": get("CUDA_VISIBLE_DEVICES"),
        "nvidia_visible_devices": get("NVIDIA_VISIBLE_DEVICES"),
        "units": get("FLOYD_GPU_UNITS"),
    })
}

async fn serve(args: Args) -> anyhow::Result<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let started = Instant::now();
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let mut info = serde_json::json!({
        "version": args.app_version,
        "service": env("FLOYD_SERVICE"),
        "revision": env("FLOYD_REVISION"),
        "instance": env("FLOYD_INSTANCE"),
        "pid": std::process::id(),
        "port": args.port,
    });
    if args.gpu_echo {
        info["gpus"] = gpu_info();
        println!("sample-app gpus: {}", gpu_info());
    }
    let exit_code = args.exit_code;
    let crash_after = args.crash_after;
    let ignore_sigterm = args.ignore_sigterm;
    let delay = Duration::from_secs_f64(args.startup_delay);
    let addr = std::net::SocketAddr::new(args.bind, args.port);
    let version = args.app_version.clone();
    let app = Arc::new(App {
        args,
        started,
        served: AtomicU64::new(0),
        info,
    });
    let router = axum::Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route(
            "/version",
            get(|State(a): State<Arc<App>>| async move { a.args.app_version.clone() }),
        )
        .route("/slow", get(slow))
        .with_state(app);

    // Start-up delay: the port is not open yet, like a slow-starting server.
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = term.recv() => return Ok(0),
        _ = int.recv() => return Ok(0),
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sample-app: cannot listen on {addr}: {e}");
            return Ok(1);
        }
    };
    println!("sample-app {version} listening on {addr}");
    let shutdown = async move {
        let crash = async {
            match crash_after {
                Some(s) => {
                    let left =
                        Duration::from_secs_f64(s.max(0.0)).saturating_sub(started.elapsed());
                    tokio::time::sleep(left).await;
                    true
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(crash);
        loop {
            tokio::select! {
                _ = &mut crash => {
                    println!("sample-app: crashing as asked (--crash-after), exit {exit_code}");
                    std::process::exit(i32::from(exit_code));
                }
                _ = term.recv() => {
                    if ignore_sigterm {
                        println!("sample-app: ignoring SIGTERM (--ignore-sigterm)");
                        continue;
                    }
                    println!("sample-app: SIGTERM, finishing in-flight requests");
                    break;
                }
                _ = int.recv() => break,
            }
        }
    };
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    println!("sample-app: stopped");
    Ok(0)
}

async fn root(State(app): State<Arc<App>>) -> Response {
    let n = app.served.fetch_add(1, Ordering::Relaxed);
    let r = app.args.error_ratio;
    // Evenly spread: request n fails when the running error count steps up.
    let fail = r > 0.0 && ((n + 1) as f64 * r).floor() > (n as f64 * r).floor();
    if app.args.log_requests {
        println!("GET / -> {}", if fail { 500 } else { 200 });
    }
    if fail {
        let mut body = app.info.clone();
        body["error"] = "injected error (--error-ratio)".into();
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
    }
    axum::Json(app.info.clone()).into_response()
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    if app.args.never_ready {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "never ready (--never-ready)\n",
        )
            .into_response();
    }
    if let Some(s) = app.args.unready_after
        && app.started.elapsed().as_secs_f64() >= s
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "unready (--unready-after)\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn slow(State(app): State<Arc<App>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let ms: u64 = q
        .get("ms")
        .and_then(|m| m.parse().ok())
        .unwrap_or(100)
        .min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    axum::Json(app.info.clone()).into_response()
}
