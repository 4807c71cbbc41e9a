//! `floyd demo [--scenario]`: a newcomer's first run.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Push a good change, then a broken one; show rollout, rollback and revert; exit.
    #[arg(long)]
    pub scenario: bool,
    /// Scratch directory.
    #[arg(long, default_value = ".floyd-demo")]
    pub dir: PathBuf,
}

pub fn run(args: Args, log_format: crate::telemetry::LogFormat) -> anyhow::Result<u8> {
    let _ = (args, log_format);
    Err(super::CliError::not_built("demo"))
}
