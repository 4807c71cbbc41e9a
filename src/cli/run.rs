//! `floyd run`: the controller, until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config repository: URL (https, ssh, git, file) or local path.
    #[arg(long, env = "FLOYD_REPO")]
    pub repo: String,
    #[arg(long, env = "FLOYD_BRANCH", default_value = "main")]
    pub branch: String,
    /// Sub-directory of the repo holding floyd.yaml and services/.
    #[arg(long, env = "FLOYD_PATH")]
    pub path: Option<PathBuf>,
    #[arg(long, env = "FLOYD_RUNTIME", default_value = "local")]
    pub runtime: String,
    #[arg(long, env = "FLOYD_ENVIRONMENT")]
    pub environment: Option<String>,
    #[arg(long, env = "FLOYD_LISTEN", default_value = "127.0.0.1:9180")]
    pub listen: SocketAddr,
    #[arg(long, env = "FLOYD_STATE_DIR", default_value = ".floyd")]
    pub state_dir: PathBuf,
    #[arg(long, env = "FLOYD_POLL_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    #[arg(long, env = "FLOYD_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    #[arg(long, env = "FLOYD_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    #[arg(long, env = "FLOYD_NO_REVERT")]
    pub no_revert: bool,
    #[arg(
        long,
        env = "FLOYD_GIT_AUTHOR",
        default_value = "Floyd <floyd@localhost>"
    )]
    pub git_author: String,
    /// Leave instances running on shutdown (local runtime).
    #[arg(long, env = "FLOYD_LEAVE_RUNNING")]
    pub leave_running: bool,
}

pub fn run(args: Args, log_format: crate::telemetry::LogFormat) -> anyhow::Result<u8> {
    let _ = (args, log_format);
    Err(super::CliError::not_built("run"))
}
