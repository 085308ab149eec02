//! `ballast agent --config FILE`: runs this host's agent until SIGINT or SIGTERM.
//! A configuration that cannot be used is reported with its file, line and field, and
//! the command exits with status 1.

use anyhow::Context;
use ballast_node::agent::run_agent;
use ballast_node::config::AgentConfig;
use std::path::PathBuf;

/// Arguments of `ballast agent`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The agent's configuration file (TOML).
    #[arg(long, env = "BALLAST_CONFIG")]
    config: PathBuf,
}

/// Runs the agent until it is stopped.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(&args.config)
        .with_context(|| format!("bad configuration {}", args.config.display()))?;
    crate::logging::init(Some("info"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        run_agent(cfg, stop_signal())
            .await
            .context("the agent could not start")
    })
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop signal received");
}
