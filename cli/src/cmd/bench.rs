//! `ballast bench gossip|handoff`: benchmarks that print their figures, as a table or
//! as one JSON object (`--json`).

use anyhow::Context;
use ballast_gossip::{bench_gossip, GossipBenchOptions};
use ballast_node::agent::bench::{bench_handoff, HandoffBenchOptions};

/// Arguments of `ballast bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

/// Which benchmark.
#[derive(clap::Subcommand, Debug)]
enum What {
    /// An in-process cluster of gossip endpoints (real QUIC + TLS on loopback):
    /// membership convergence, summary propagation, failure detection, traffic.
    Gossip {
        /// Endpoints in the cluster.
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// Gossip interval in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Two in-process agents hand VMs back and forth; handoff latency and rate next to
    /// the bare durable work (3 flushed sled transactions + 2 loopback RPC round trips).
    Handoff {
        /// The hypervisor driver (`sim`; `qemu` is not wired yet).
        #[arg(long, default_value = "sim")]
        driver: String,
        /// Handoffs timed one after another.
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Handoffs in flight in the throughput phase.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match args.what {
        What::Gossip {
            nodes,
            interval_ms,
            json,
        } => {
            let opts = GossipBenchOptions {
                nodes,
                interval_ms,
                ..GossipBenchOptions::default()
            };
            let report = rt
                .block_on(bench_gossip(opts))
                .context("gossip benchmark failed")?;
            print(&report, json)
        }
        What::Handoff {
            driver,
            count,
            concurrency,
            json,
        } => {
            anyhow::ensure!(
                driver == "sim",
                "bench handoff supports --driver sim only (got {driver:?})"
            );
            let opts = HandoffBenchOptions {
                handoffs: count,
                concurrency,
                ..HandoffBenchOptions::default()
            };
            let report = rt
                .block_on(bench_handoff(opts))
                .context("handoff benchmark failed")?;
            print(&report, json)
        }
    }
}

fn print<T: serde::Serialize>(report: &T, json: bool) -> anyhow::Result<()> {
    let value = serde_json::to_value(report).context("cannot encode the report")?;
    if json {
        println!("{value}");
        return Ok(());
    }
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            println!("{k:>24}  {v}");
        }
    }
    Ok(())
}
