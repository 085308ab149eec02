//! `ballast agent --config FILE`: runs the agent (being written).

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
    anyhow::bail!("the agent is not built yet (config {})", args.config.display())
}
