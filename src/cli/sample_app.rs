//! `floyd sample-app`: a small HTTP workload for demos and tests.

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let _ = args;
    Err(super::CliError::not_built("sample-app"))
}
