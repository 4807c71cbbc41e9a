//! `floyd render [<dir>] [--environment <name>] [-o yaml|json]`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config repository directory.
    #[arg(default_value = ".", env = "FLOYD_CONFIG_DIR")]
    pub dir: PathBuf,
    /// Environment from floyd.yaml to render.
    #[arg(long, short = 'e', env = "FLOYD_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', default_value = "yaml")]
    pub output: String,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let _ = args;
    Err(super::CliError::not_built("render"))
}
