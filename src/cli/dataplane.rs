//! `floyd dataplane` (hidden): the load balancers of the local runtime as a
//! process of their own. `floyd run` starts, adopts and restarts it; it is
//! not meant to be run by hand. See `runtime::local::dataplane`.

use crate::runtime::local::LbPolicy;
use crate::runtime::local::dataplane::{self, Dataplane, Settings};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The controller's state directory (the socket is `<state-dir>/local/dataplane.sock`).
    #[arg(long, default_value = ".floyd")]
    pub state_dir: PathBuf,
    /// Address the load balancers listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub lb_bind: std::net::IpAddr,
    /// How the load balancers pick an instance.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub lb_policy: LbPolicy,
    /// Threads of the load balancers.
    #[arg(long, default_value_t = crate::runtime::local::LbThreads::default_count())]
    pub lb_threads: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
}

pub fn run(args: Args, log_format: crate::telemetry::LogFormat) -> anyhow::Result<u8> {
    crate::telemetry::init_logging(log_format);
    // The channel is light: one thread; the load balancers have their own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let dp = Dataplane::start(Settings {
            bind: args.lb_bind,
            policy: args.lb_policy,
            threads: args.lb_threads.max(1),
        })
        .context("cannot start the load balancer threads")?;
        let local = args.state_dir.join("local");
        let local = local.canonicalize().unwrap_or(local);
        dataplane::serve(dp, &dataplane::socket_path(&local), args.grace)
            .await
            .context("dataplane")?;
        Ok(0)
    })
}
