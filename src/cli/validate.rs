//! `floyd validate [<dir>]`: load + validate + render every environment.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config repository directory.
    #[arg(default_value = ".", env = "FLOYD_CONFIG_DIR")]
    pub dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let _ = args;
    Err(super::CliError::not_built("validate"))
}
