//! The command line: clap definitions and one handler per subcommand (one
//! file each). `main.rs` only calls [`main`]. Every flag can also be set
//! from the environment (`FLOYD_*`), which is how the Helm chart configures Floyd.
//!
//! Exit codes everywhere: 0 success, 1 the operation ran and failed (rollout
//! failed, diff found changes, server unreachable), 2 bad input or usage.

pub mod bench;
pub mod client;
pub mod demo;
pub mod logs;
pub mod render;
pub mod run;
pub mod sample_app;
pub mod simulate;
pub mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Floyd: GitOps sync with its own progressive-delivery engine.
#[derive(Debug, Parser)]
#[command(name = "floyd", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format: `text` for a terminal, `json` for log collectors.
    #[arg(long, global = true, env = "FLOYD_LOG_FORMAT", default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the controller until SIGINT/SIGTERM.
    Run(run::Args),
    /// Try Floyd in one command: a scratch Git remote, the controller, the dashboard.
    Demo(demo::Args),
    /// Load, validate and render every environment of a config repo.
    Validate(validate::Args),
    /// Print the rendered release (services with revisions).
    Render(render::Args),
    /// What a sync would change against the live state.
    Diff(client::DiffArgs),
    /// Live state of every service.
    Status(client::StatusArgs),
    /// Rollout history of a service.
    History(client::ServiceArgs),
    /// Follow a rollout with progress bars until it ends.
    Watch(client::ServiceArgs),
    /// Promote a blue-green rollout waiting for manual promotion.
    Promote(client::ServiceArgs),
    /// Abort the in-flight rollout (back to the last good revision).
    Abort(client::ServiceArgs),
    /// Pause the in-flight rollout.
    Pause(client::ServiceArgs),
    /// Resume a paused rollout.
    Resume(client::ServiceArgs),
    /// Run the engine on the simulated runtime in virtual time.
    Simulate(simulate::Args),
    /// Show an instance's logs (local runtime).
    Logs(logs::Args),
    /// A small HTTP workload for demos and tests.
    SampleApp(sample_app::Args),
    /// Benchmarks (results go in docs/benchmarks.md).
    Bench(bench::Args),
}

/// An error carrying its exit code. Anything else that reaches `main` exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// Bad input or usage: exit 2.
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        CliError {
            code: 2,
            message: message.into(),
        }
        .into()
    }
    /// The operation ran and failed: exit 1.
    pub fn failed(message: impl Into<String>) -> anyhow::Error {
        CliError {
            code: 1,
            message: message.into(),
        }
        .into()
    }
    /// A subcommand that exists in the contract but is not built yet: exit 2.
    pub fn not_built(what: &str) -> anyhow::Error {
        Self::usage(format!("`floyd {what}` is not built yet in this version"))
    }
}

/// Parse, run, map the result to an exit code. Errors go to stderr, one line each.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.downcast_ref::<CliError>().map(|c| c.code).unwrap_or(1);
            for line in format!("{e:#}").lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(code)
        }
    }
}

/// Runs one subcommand; returns the exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let fmt = cli.log_format;
    match cli.command {
        Command::Run(a) => run::run(a, fmt),
        Command::Demo(a) => demo::run(a, fmt),
        Command::Validate(a) => validate::run(a),
        Command::Render(a) => render::run(a),
        Command::Diff(a) => client::diff(a),
        Command::Status(a) => client::status(a),
        Command::History(a) => client::history(a),
        Command::Watch(a) => client::watch(a),
        Command::Promote(a) => client::control(a, crate::engine::Command::Promote),
        Command::Abort(a) => client::control(a, crate::engine::Command::Abort),
        Command::Pause(a) => client::control(a, crate::engine::Command::Pause),
        Command::Resume(a) => client::control(a, crate::engine::Command::Resume),
        Command::Simulate(a) => simulate::run(a),
        Command::Logs(a) => logs::run(a),
        Command::SampleApp(a) => sample_app::run(a),
        Command::Bench(a) => bench::run(a),
    }
}
