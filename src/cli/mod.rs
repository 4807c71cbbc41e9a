//! The command line: clap definitions and one handler per subcommand (one
//! file each). `main.rs` only calls [`main`]. Every flag can also be set
//! from the environment (`FLOYD_*`), which is how the Helm chart configures Floyd.
//!
//! Exit codes everywhere (see [`EXIT_CODES`]): 0 success or nothing to
//! report, 1 the command's negative answer (diff has changes, watch saw the
//! rollout fail, status has unhealthy services), 2 usage or invalid input,
//! 3 cannot reach the server or the repository. The contract lists 0/1/2;
//! 3 is an extension so scripts can tell "no" from "could not ask".

pub mod client;
pub mod dataplane;
pub mod demo;
pub mod logs;
pub mod objdiff;
pub mod reference;
pub mod render;
pub mod run;
pub mod sample_app;
pub mod simulate;
pub mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The exit-code convention of every command, as `--help` prints it.
pub const EXIT_CODES: &str = "Exit codes: 0 success or nothing to report; 1 the command's negative answer \
(diff has changes, watch saw the rollout fail, status has unhealthy services); \
2 usage or invalid input; 3 cannot reach the server or the repository.";

/// Floyd: GitOps sync with its own progressive-delivery engine.
#[derive(Debug, Parser)]
#[command(
    name = "floyd",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = EXIT_CODES
)]
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
    #[command(
        after_help = "Exit codes: 0 clean shutdown; 1 the controller stopped on an \
        error; 2 invalid flags (e.g. --listen cannot bind, a secret file cannot be read)."
    )]
    Run(run::Args),
    /// Try Floyd in one command: a scratch Git remote, the controller, the dashboard.
    #[command(
        after_help = "Exit codes: 0 stopped with Ctrl-C, or --scenario behaved as told; \
        1 --scenario did not (what went wrong is printed); 2 invalid flags."
    )]
    Demo(demo::Args),
    /// Load, validate and render every environment of a config repo.
    #[command(
        after_help = "Exit codes: 0 valid; 2 invalid (every problem is printed as \
        file:line:col: field.path: message), or the directory cannot be read."
    )]
    Validate(validate::Args),
    /// Print the rendered release (services with revisions), or with
    /// --objects the Kubernetes objects the kube runtime applies for it.
    #[command(
        after_help = "Exit codes: 0 printed; 2 the config repo is invalid or the \
        environment unknown, or (--objects) a service cannot run on Kubernetes \
        (no image). The release output reads back with `floyd validate`; the \
        --objects output is what Floyd applies once each service's rollout has \
        completed (the ReplicaSet of its revision at spec.replicas, the Services, \
        the state ConfigMap without its data), for `kubectl apply --dry-run` or \
        `kubernetes-validate`."
    )]
    Render(render::Args),
    /// What a sync would change against the live state.
    ///
    /// Each rollout (and each new service) comes with its prediction: the
    /// strategy's waves, the duration with the start-up times the
    /// controller observed for the service (p50/p90; the probes' earliest
    /// when there is no history), GPUs at peak against free now, and
    /// "INFEASIBLE" with the arithmetic when it cannot fit. The engine runs
    /// on the simulator in virtual time; see GET /api/v1/services/{name}/plan.
    #[command(
        after_help = "Exit codes: 0 no changes; 1 a sync would change something; \
        2 invalid config repo or flags; 3 cannot reach the server."
    )]
    Diff(client::DiffArgs),
    /// Live state of every service.
    #[command(
        after_help = "Exit codes: 0 every service is healthy (or there is none yet); \
        1 a service is Failed or Degraded; 2 invalid flags; 3 cannot reach the server."
    )]
    Status(client::StatusArgs),
    /// Rollout history of a service.
    #[command(
        after_help = "Exit codes: 0 printed; 2 unknown service or invalid flags; \
        3 cannot reach the server."
    )]
    History(client::ReadArgs),
    /// Follow a rollout with progress bars until it ends.
    #[command(
        after_help = "Exit codes: 0 the rollout completed (or the service is settled \
        and Complete); 1 it ended Failed, RolledBack or Degraded; 2 unknown service or invalid \
        flags; 3 cannot reach the server, or lost it before the rollout ended."
    )]
    Watch(client::ReadArgs),
    /// Promote a blue-green rollout waiting for manual promotion.
    #[command(after_help = CONTROL_EXIT_CODES)]
    Promote(client::ControlArgs),
    /// Abort the in-flight rollout (back to the last good revision).
    #[command(after_help = CONTROL_EXIT_CODES)]
    Abort(client::ControlArgs),
    /// Pause the in-flight rollout.
    #[command(after_help = CONTROL_EXIT_CODES)]
    Pause(client::ControlArgs),
    /// Resume a paused rollout.
    #[command(after_help = CONTROL_EXIT_CODES)]
    Resume(client::ControlArgs),
    /// Run the engine on the simulated runtime in virtual time.
    #[command(
        after_help = "Exit codes: 0 every simulated rollout completed; 1 one failed; \
        2 an invalid file, flag or service; 3 the config repository cannot be opened."
    )]
    Simulate(simulate::Args),
    /// Show an instance's logs (local runtime).
    #[command(
        after_help = "Exit codes: 0 printed; 2 no logs for that service or revision \
        (unknown service, ambiguous revision prefix, or not the controller's --state-dir)."
    )]
    Logs(logs::Args),
    /// A small HTTP workload for demos and tests.
    #[command(
        after_help = "Exit codes: 0 stopped by SIGTERM or SIGINT; otherwise what \
        --exit-code says."
    )]
    SampleApp(sample_app::Args),
    /// Print this command-line reference as Markdown, or write man pages.
    #[command(after_help = "Exit codes: 0 written; 2 the --man directory cannot be created.")]
    Reference(reference::Args),
    /// The local runtime's load balancers as a process of their own; started by `floyd run`.
    #[command(hide = true)]
    Dataplane(dataplane::Args),
}

/// The exit codes of the manual controls, as their `--help` prints them.
const CONTROL_EXIT_CODES: &str = "Exit codes: 0 accepted; 1 refused (e.g. nothing to promote); \
    2 unknown service, missing or wrong token, invalid flags; 3 cannot reach the server, or the \
    controller is not running.";

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
    /// The server or the repository could not be reached: exit 3.
    pub fn unreachable(message: impl Into<String>) -> anyhow::Error {
        CliError {
            code: 3,
            message: message.into(),
        }
        .into()
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
        Command::Reference(a) => reference::run(a),
        Command::Dataplane(a) => dataplane::run(a, fmt),
    }
}
