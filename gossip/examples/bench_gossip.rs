//! Runs `bench_gossip` and prints the report as JSON.
//!
//! `cargo run -p ballast-gossip --example bench_gossip -- [--nodes N] [--interval-ms MS]
//! [--phi X] [--samples K] [--window-s S] [--join-delay-ms MS] [--digest-nodes D (0: all)]
//! [--conn-cache C]`

use ballast_gossip::{bench_gossip, GossipBenchOptions};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut opts = GossipBenchOptions::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            anyhow::bail!("flags take a value: {pair:?}");
        };
        match flag.as_str() {
            "--nodes" => opts.nodes = value.parse()?,
            "--interval-ms" => opts.interval_ms = value.parse()?,
            "--phi" => opts.phi_threshold = value.parse()?,
            "--samples" => opts.propagation_samples = value.parse()?,
            "--window-s" => opts.traffic_window_s = value.parse()?,
            "--join-delay-ms" => opts.join_delay_ms = Some(value.parse()?),
            "--digest-nodes" => {
                opts.digest_nodes_max = Some(value.parse()?).filter(|d: &usize| *d > 0)
            }
            "--conn-cache" => opts.cached_connections_max = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(bench_gossip(opts))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
