//! `ballast demo`: a local cluster of agent processes on the sim driver (being written).

/// Arguments of `ballast demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Agent processes to start.
    #[arg(long, default_value_t = 5)]
    agents: u32,
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not built yet ({} agents)", args.agents)
}
