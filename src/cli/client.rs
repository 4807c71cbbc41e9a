//! API clients: `floyd status|history|watch|promote|abort|pause|resume|diff`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Floyd's API address.
    #[arg(long, env = "FLOYD_SERVER", default_value = "http://127.0.0.1:9180")]
    pub server: String,
    /// Output format: `text` or `json`.
    #[arg(long, short = 'o', default_value = "text")]
    pub output: String,
    /// Bearer token file for manual controls.
    #[arg(long, env = "FLOYD_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    pub service: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    #[arg(long, short = 'e', env = "FLOYD_ENVIRONMENT")]
    pub environment: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub fn status(a: StatusArgs) -> anyhow::Result<u8> {
    let _ = a;
    Err(super::CliError::not_built("status"))
}
pub fn history(a: ServiceArgs) -> anyhow::Result<u8> {
    let _ = a;
    Err(super::CliError::not_built("history"))
}
pub fn watch(a: ServiceArgs) -> anyhow::Result<u8> {
    let _ = a;
    Err(super::CliError::not_built("watch"))
}
pub fn control(a: ServiceArgs, c: crate::engine::Command) -> anyhow::Result<u8> {
    let _ = a;
    Err(super::CliError::not_built(&format!("{c:?}").to_lowercase()))
}
pub fn diff(a: DiffArgs) -> anyhow::Result<u8> {
    let _ = a;
    Err(super::CliError::not_built("diff"))
}
