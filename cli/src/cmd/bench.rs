//! `ballast bench gossip|handoff`: benchmarks that print their figures, as a table or
//! as one JSON object (`--json`).

use anyhow::Context;
use ballast_gossip::{bench_gossip, GossipBenchOptions};
use ballast_node::agent::bench::qemu::{bench_handoff_qemu, QemuHandoffBenchOptions};
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
    /// Two in-process agents hand VMs back and forth. `--driver sim`: handoff latency
    /// and rate next to the bare durable work (3 flushed sled transactions + 2 loopback
    /// RPC round trips). `--driver qemu`: one demo VM (a boot sector, no OS image) moved
    /// back and forth, next to bare QMP migrations of the same VM in the same run.
    Handoff {
        /// The hypervisor driver: `sim` or `qemu`.
        #[arg(long, default_value = "sim")]
        driver: String,
        /// Handoffs timed one after another (default 200 with sim, 5 with qemu).
        #[arg(long)]
        count: Option<usize>,
        /// qemu: memory of the VM, in MiB.
        #[arg(long, default_value_t = 128)]
        memory_mib: u64,
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
    crate::logging::init(None);
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
            memory_mib,
            concurrency,
            json,
        } => match driver.as_str() {
            "sim" => {
                let d = HandoffBenchOptions::default();
                let opts = HandoffBenchOptions {
                    handoffs: count.unwrap_or(d.handoffs),
                    concurrency,
                    ..d
                };
                let report = rt
                    .block_on(bench_handoff(opts))
                    .context("handoff benchmark failed")?;
                print(&report, json)
            }
            "qemu" => {
                let d = QemuHandoffBenchOptions::default();
                let opts = QemuHandoffBenchOptions {
                    moves: count.unwrap_or(d.moves),
                    memory_mib,
                    ..d
                };
                let report = rt
                    .block_on(bench_handoff_qemu(opts))
                    .context("qemu handoff benchmark failed")?;
                print(&report, json)
            }
            other => anyhow::bail!("bench handoff: --driver sim or qemu (got {other:?})"),
        },
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
