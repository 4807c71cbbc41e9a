//! `floyd bench <what>`: benchmarks whose results go in docs/benchmarks.md.

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which benchmark.
    pub what: String,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    Err(super::CliError::not_built(&format!("bench {}", args.what)))
}
