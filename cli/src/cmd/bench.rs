//! `ballast bench gossip|handoff`: benchmarks that print their figures, as a table or
//! as one JSON object (`--json`).

use anyhow::Context;
use ballast_gossip::{bench_gossip, GossipBenchOptions};
use ballast_node::agent::bench::qemu::{bench_handoff_qemu, LocalDisk, QemuHandoffBenchOptions};
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
        /// Load changes timed for the propagation percentiles.
        #[arg(long, default_value_t = 20)]
        samples: usize,
        /// Delay between two nodes joining, ms (default: a twentieth of the interval).
        #[arg(long)]
        join_delay_ms: Option<u64>,
        /// Most nodes in one gossip digest; 0 lists every node.
        #[arg(long, default_value_t = ballast_gossip::GOSSIP_DIGEST_NODES_MAX)]
        digest_nodes: usize,
        /// Each endpoint's connection cache bound.
        #[arg(long, default_value_t = ballast_gossip::CACHED_CONNECTIONS_MAX)]
        conn_cache: usize,
        /// Failure detection by suspicion past the digest bound, with this hold in
        /// rounds (off by default; 12 is the designed value).
        #[arg(long)]
        suspicion_hold_rounds: Option<u32>,
        /// Bound on each phase (membership, one propagation, failure detection), seconds.
        #[arg(long, default_value_t = 60)]
        phase_timeout_s: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Two in-process agents hand VMs back and forth. `--driver sim`: handoff latency
    /// and rate next to the bare durable work (3 flushed sled transactions + 2 loopback
    /// RPC round trips). `--driver qemu`: one demo VM (a boot sector, no OS image) moved
    /// back and forth, next to bare QMP migrations of the same VM in the same run;
    /// `--storage local`: a VM writing its local disk, copied by every move, next to the
    /// same copy and migration done by hand over QMP.
    /// `--driver libvirt`: the same between two libvirt hosts (`--libvirt-config` twice),
    /// next to `virsh migrate` with the same flags in the same run.
    Handoff {
        /// The hypervisor driver: `sim`, `qemu` or `libvirt`.
        #[arg(long, default_value = "sim")]
        driver: String,
        /// Handoffs timed one after another (default 200 with sim, 5 with qemu and
        /// libvirt).
        #[arg(long)]
        count: Option<usize>,
        /// qemu, libvirt: memory of the VM, in MiB.
        #[arg(long, default_value_t = 128)]
        memory_mib: u64,
        /// libvirt: the two hosts' driver settings, each a TOML file holding a
        /// `[driver.libvirt]` section (an agent.toml will do) or that section's keys.
        #[arg(long, value_name = "FILE")]
        libvirt_config: Vec<std::path::PathBuf>,
        /// libvirt: a directory at the same path on both hosts for the VMs' disks
        /// (default: a new temporary directory, shared when both hosts run here).
        #[arg(long, value_name = "DIR")]
        image_dir: Option<std::path::PathBuf>,
        /// qemu: where the VM's disk lives: `shared` (one image both sides open) or
        /// `local` (a disk of `--disk-mib` copied by every move, next to the same copy
        /// done by hand over QMP).
        #[arg(long, default_value = "shared", value_parser = ["shared", "local"])]
        storage: String,
        /// qemu with `--storage local`: the disk's virtual size, MiB.
        #[arg(long, default_value_t = 256)]
        disk_mib: u64,
        /// qemu with `--storage local`: MiB of data written into the disk (the rest is
        /// unallocated).
        #[arg(long, default_value_t = 64)]
        disk_data_mib: u64,
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
            samples,
            join_delay_ms,
            digest_nodes,
            conn_cache,
            suspicion_hold_rounds,
            phase_timeout_s,
            json,
        } => {
            let opts = GossipBenchOptions {
                nodes,
                interval_ms,
                propagation_samples: samples,
                join_delay_ms,
                digest_nodes_max: (digest_nodes > 0).then_some(digest_nodes),
                cached_connections_max: conn_cache,
                suspicion_hold_rounds,
                phase_timeout_s,
                ..GossipBenchOptions::default()
            };
            let report = rt
                .block_on(bench_gossip(opts))
                .context("gossip benchmark failed")?;
            print(&report, json)
        }
        What::Handoff {
            driver, storage, ..
        } if storage == "local" && driver != "qemu" => {
            anyhow::bail!("bench handoff: --storage local is for --driver qemu (got {driver:?})")
        }
        What::Handoff {
            driver,
            count,
            memory_mib,
            libvirt_config,
            image_dir,
            storage,
            disk_mib,
            disk_data_mib,
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
                    local_disk: (storage == "local").then_some(LocalDisk {
                        size_mib: disk_mib,
                        data_mib: disk_data_mib.min(disk_mib),
                    }),
                    ..d
                };
                let report = rt
                    .block_on(bench_handoff_qemu(opts))
                    .context("qemu handoff benchmark failed")?;
                print(&report, json)
            }
            "libvirt" => {
                let report = rt.block_on(libvirt::bench(
                    count,
                    memory_mib,
                    &libvirt_config,
                    image_dir,
                ))?;
                print(&report, json)
            }
            other => {
                anyhow::bail!("bench handoff: --driver sim, qemu or libvirt (got {other:?})")
            }
        },
    }
}

#[cfg(feature = "libvirt")]
mod libvirt {
    use anyhow::Context;
    use ballast_node::agent::bench::libvirt::{
        bench_handoff_libvirt, LibvirtHandoffBenchOptions, LibvirtHandoffBenchReport,
    };
    use ballast_node::driver::libvirt::LibvirtConfig;
    use std::path::{Path, PathBuf};

    /// One host's settings from `path`: its `[driver.libvirt]` table, or the whole file.
    fn host_config(path: &Path) -> anyhow::Result<LibvirtConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
        let section = match table.get("driver").and_then(|d| d.get("libvirt")) {
            Some(s) => s.clone(),
            None => toml::Value::Table(table),
        };
        let cfg: LibvirtConfig = section
            .try_into()
            .with_context(|| format!("{}: bad [driver.libvirt] settings", path.display()))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub(super) async fn bench(
        count: Option<usize>,
        memory_mib: u64,
        configs: &[PathBuf],
        image_dir: Option<PathBuf>,
    ) -> anyhow::Result<LibvirtHandoffBenchReport> {
        let [a, b] = configs else {
            anyhow::bail!(
                "bench handoff --driver libvirt needs --libvirt-config twice, one per host \
                 (got {})",
                configs.len()
            );
        };
        let opts = LibvirtHandoffBenchOptions {
            moves: count.unwrap_or(5),
            memory_mib,
            hosts: [host_config(a)?, host_config(b)?],
            image_dir,
        };
        bench_handoff_libvirt(opts)
            .await
            .context("libvirt handoff benchmark failed")
    }
}

#[cfg(not(feature = "libvirt"))]
mod libvirt {
    use std::path::PathBuf;

    pub(super) async fn bench(
        _count: Option<usize>,
        _memory_mib: u64,
        _configs: &[PathBuf],
        _image_dir: Option<PathBuf>,
    ) -> anyhow::Result<ballast_node::agent::bench::HandoffBenchReport> {
        anyhow::bail!(
            "this ballast was built without the libvirt driver: build it with \
             `--features libvirt` (needs libvirt-dev and pkg-config)"
        )
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
