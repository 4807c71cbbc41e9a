//! `floyd logs <service> [--revision r] [-f]`: instance logs of the local runtime.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub service: String,
    #[arg(long)]
    pub revision: Option<String>,
    /// Follow.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// State directory of the controller.
    #[arg(long, env = "FLOYD_STATE_DIR", default_value = ".floyd")]
    pub state_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let _ = args;
    Err(super::CliError::not_built("logs"))
}
