//! API clients: `floyd status|history|watch|promote|abort|pause|resume|diff`.
//!
//! Thin HTTP clients of the JSON API (`docs/api.md`): they never read the
//! controller's state any other way. Errors are one line. Exit codes follow
//! the convention in `cli` (3: the server cannot be reached).
//!
//! - [`http`]: the HTTP client, its error mapping and exit codes;
//! - [`format`]: tables and cells for a person;
//! - [`read`]: `status`, `history` and the controls (`promote`, `abort`, ...);
//! - [`watch`]: `watch`, the event stream and its progress display;
//! - [`diff`]: `diff`, the live services through [`crate::diff::plan`], with predictions.

use std::path::PathBuf;

mod diff;
mod format;
mod http;
mod read;
#[cfg(test)]
mod tests;
mod watch;

pub use diff::diff;
pub use read::{control, history, status};
pub use watch::watch;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Floyd's API address (where `floyd run` listens).
    #[arg(long, env = "FLOYD_SERVER", default_value = "http://127.0.0.1:9180")]
    pub server: String,
    /// Output format.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value = "text",
        env = "FLOYD_OUTPUT"
    )]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A read-only command about one service.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Service name (`metadata.name`).
    pub service: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A manual control of one service's rollout.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Service name (`metadata.name`).
    pub service: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// File holding the bearer token the server was started with
    /// (`floyd run --api-token-file`); needed only when it was.
    #[arg(long, env = "FLOYD_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Config repository directory.
    #[arg(default_value = ".", env = "FLOYD_CONFIG_DIR")]
    pub dir: PathBuf,
    /// Environment from floyd.yaml to render.
    #[arg(long, short = 'e', env = "FLOYD_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Compare the Kubernetes objects Floyd would apply (`floyd render
    /// --objects`) with the cluster's, object by object, read with the
    /// kubeconfig (`KUBECONFIG`, else ~/.kube/config) instead of asking a
    /// Floyd server. Read-only.
    #[arg(long)]
    pub objects: bool,
    /// With --objects: the namespace Floyd deploys to.
    #[arg(long, env = "FLOYD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// With --objects: the install identity (`floyd run --instance`).
    #[arg(long, env = "FLOYD_INSTANCE", default_value = crate::runtime::kube::objects::DEFAULT_INSTANCE, value_parser = super::run::instance_name)]
    pub instance: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Output format of the API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables and lines for a person.
    Text,
    /// JSON, the API's shapes.
    Json,
}
