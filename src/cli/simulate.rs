//! `floyd simulate <file> [--json]`: the engine on the `sim` runtime in virtual time.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario file: a service spec, the starting revision, the scenario.
    pub file: PathBuf,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let _ = args;
    Err(super::CliError::not_built("simulate"))
}
