//! `ballast bench gossip|handoff`: benchmarks that print their figures (being written).

/// Arguments of `ballast bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to measure.
    what: String,
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("benchmark {:?} is not built yet", args.what)
}
