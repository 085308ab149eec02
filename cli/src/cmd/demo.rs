//! `ballast demo`: starts agent processes on loopback (sim driver, a temporary directory,
//! its own CA), creates the VMs on one node, shows balancing live (a bar per node), then
//! a summary: rounds, migrations, final max/mean, and whether every VM is still there.
//! Everything is stopped and removed at the end, also on Ctrl-C.

use crate::cmd::admin::block_on;
use crate::local_cluster::LocalCluster;
use crate::table::bar;
use anyhow::{bail, Context};
use ballast_node::agent::wire::NodeStatus;
use ballast_node::agent::AdminClient;
use ballast_node::config::AgentConfig;
use ballast_node::load::LoadMode;
use ballast_node::units::Millis;
use ballast_store::{LoadFactors, NodeId, VmId, VmSpec, VmState};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Bound on one admin call of the demo.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time between two redraws.
const TICK: Duration = Duration::from_millis(500);
/// Bound on waiting for the agents to see each other.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on waiting for migrations in flight to finish at the end.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Balanced, quiet and unchanged this long: the demo ends before its duration.
const QUIET_FOR: Duration = Duration::from_secs(5);
/// Max/mean counted as balanced for the early end.
const BALANCED_MAX_OVER_MEAN: f64 = 1.05;

/// Arguments of `ballast demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Agent processes to start.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=32))]
    agents: u32,
    /// VMs to create, all on the first agent.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=2000))]
    vms: u32,
    /// Seconds to let the cluster balance at most (it ends earlier once balanced and
    /// quiet for 5 s).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Seed of the VM sizes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print only a final JSON object.
    #[arg(long)]
    json: bool,
}

/// The final summary (`--json` prints exactly this).
#[derive(Debug, Serialize)]
struct Summary {
    agents: u32,
    vms: u32,
    rounds: u64,
    migrations: u64,
    final_max_over_mean: f64,
    vms_found: usize,
    seconds: f64,
}

/// The agents' settings for a fast demo: target loads (the VMs' reservations), short
/// rounds and migrations, and room for every VM on one host.
fn tune(cfg: &mut AgentConfig) {
    cfg.load.mode = LoadMode::Target;
    cfg.load.sample_interval = Millis::new(500);
    cfg.host.cpu_cores = 32.0;
    cfg.host.mem_bytes = 1024.0 * 1024.0 * 1024.0 * 1024.0;
    cfg.policy.threshold = 0.004;
    cfg.policy.min_gain = 0.002;
    cfg.policy.cooldown = Millis::new(3_000);
    cfg.balancing.round_interval = Millis::new(400);
    cfg.balancing.round_jitter = Millis::new(300);
    cfg.balancing.session_timeout = Millis::new(5_000);
    let four = std::num::NonZeroUsize::MIN.saturating_add(3);
    cfg.balancing.max_outgoing = four;
    cfg.balancing.max_incoming = four;
    cfg.gossip.interval = Millis::new(250);
    cfg.driver.sim.migration = Millis::new(50);
    cfg.reconcile.interval = Millis::new(2_000);
}

/// A VM of random size: 1-4 vCPUs, 1-8 GiB, using 25-100 % of its CPUs.
fn random_spec(rng: &mut StdRng) -> VmSpec {
    let vcpus: u32 = rng.random_range(1..=4);
    let memory_mib: u64 = 1024 << rng.random_range(0..=3u32);
    let target = LoadFactors {
        cpu: f64::from(vcpus) * rng.random_range(0.25..=1.0),
        io: rng.random_range(0.0..100.0e6),
        mem: (memory_mib * 1024 * 1024) as f64,
    };
    VmSpec {
        vcpus,
        memory_mib,
        target: Some(target),
        ..VmSpec::default()
    }
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    let agents = usize::try_from(args.agents)?;
    if !args.json {
        println!("Starting {agents} agents on loopback (sim driver, own CA)...");
    }
    let mut cluster = LocalCluster::start("ballast-demo", agents, tune)?;
    let result = block_on(async {
        tokio::select! {
            r = demo(&mut cluster, &args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; the demo cluster is stopped and removed"),
        }
    });
    cluster.stop();
    result
}

/// Clients of every node.
fn clients(cluster: &LocalCluster) -> anyhow::Result<Vec<(NodeId, AdminClient)>> {
    cluster
        .nodes()
        .into_iter()
        .map(|(n, addr)| {
            let c = AdminClient::connect_with_timeout(cluster.admin(), addr, CALL_TIMEOUT)?;
            Ok((n, c))
        })
        .collect()
}

/// Every node's status; a node that does not answer is left out.
async fn statuses(clients: &[(NodeId, AdminClient)]) -> BTreeMap<NodeId, NodeStatus> {
    let mut set = JoinSet::new();
    for (n, c) in clients {
        let (n, c) = (n.clone(), c.clone());
        set.spawn(async move { (n, c.status().await) });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((n, Ok(s))) = joined {
            out.insert(n, s);
        }
    }
    out
}

/// Max over mean of the nodes' loads (0 when there is no load).
fn max_over_mean(st: &BTreeMap<NodeId, NodeStatus>) -> f64 {
    let loads: Vec<f64> = st.values().map(|s| s.summary.load).collect();
    let mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    let max = loads.iter().copied().fold(0.0, f64::max);
    if mean > 0.0 {
        max / mean
    } else {
        0.0
    }
}

async fn demo(cluster: &mut LocalCluster, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let clients = clients(cluster)?;
    wait_for_membership(cluster, &clients).await?;
    let (first, first_client) = clients.first().context("no agents")?;
    if !args.json {
        println!(
            "Cluster up in {:.1}s; creating {} VMs on {first}...",
            started.elapsed().as_secs_f64(),
            args.vms
        );
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    for i in 0..args.vms {
        let vm = VmId::from(format!("vm-{:03}", i + 1));
        first_client
            .create_vm(&vm, &random_spec(&mut rng), Some(first), false)
            .await
            .with_context(|| format!("creating {vm}"))?;
    }
    let balancing_from = Instant::now();
    watch(cluster, &clients, args, balancing_from).await?;
    let summary = finish(&clients, args, started).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!();
        println!(
            "Done in {:.1}s: {} rounds, {} migrations, final max/mean {:.3}, {} of {} VMs found{}",
            summary.seconds,
            summary.rounds,
            summary.migrations,
            summary.final_max_over_mean,
            summary.vms_found,
            summary.vms,
            if summary.vms_found == args.vms as usize {
                " (none lost)"
            } else {
                ""
            }
        );
    }
    if summary.vms_found != args.vms as usize {
        bail!(
            "{} VM(s) missing from the schedules",
            args.vms as usize - summary.vms_found
        );
    }
    Ok(())
}

/// Waits until every agent answers and sees all the others.
async fn wait_for_membership(
    cluster: &mut LocalCluster,
    clients: &[(NodeId, AdminClient)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        cluster.check_alive()?;
        let st = statuses(clients).await;
        let joined =
            st.len() == clients.len() && st.values().all(|s| s.peers.len() + 1 >= clients.len());
        if joined {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the agents did not find each other within {}s ({} of {} answer)",
                JOIN_TIMEOUT.as_secs(),
                st.len(),
                clients.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Shows the nodes until the duration ends or the cluster is balanced and quiet.
async fn watch(
    cluster: &mut LocalCluster,
    clients: &[(NodeId, AdminClient)],
    args: &Args,
    from: Instant,
) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal() && !args.json;
    let mut drawn_lines = 0;
    let mut last_counts: Vec<u32> = Vec::new();
    let mut quiet_since = Instant::now();
    let mut last_line_at: Option<Instant> = None;
    while from.elapsed() < Duration::from_secs(args.duration) {
        cluster.check_alive()?;
        let st = statuses(clients).await;
        let counts: Vec<u32> = st.values().map(|s| s.summary.vm_count).collect();
        let in_flight: usize = st.values().map(|s| s.handoffs.len()).sum();
        let ratio = max_over_mean(&st);
        if counts != last_counts || in_flight > 0 || ratio > BALANCED_MAX_OVER_MEAN {
            quiet_since = Instant::now();
        }
        last_counts = counts;
        if tty {
            let frame = render(&st, from.elapsed(), args);
            if drawn_lines > 0 {
                print!("\x1b[{drawn_lines}A");
            }
            print!("{frame}");
            drawn_lines = frame.lines().count();
            let _ = std::io::stdout().flush();
        } else if !args.json && last_line_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            println!("{}", one_line(&st, from.elapsed()));
            last_line_at = Some(Instant::now());
        }
        if st.len() == clients.len() && quiet_since.elapsed() >= QUIET_FOR {
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    Ok(())
}

/// One frame: a bar per node and the cluster's figures.
fn render(st: &BTreeMap<NodeId, NodeStatus>, elapsed: Duration, args: &Args) -> String {
    let max_load = st.values().map(|s| s.summary.load).fold(1e-9, f64::max);
    let mut out = format!(
        "\x1b[2K balancing for {:>5.1}s (up to {}s)\n",
        elapsed.as_secs_f64(),
        args.duration
    );
    for (n, s) in st {
        out.push_str(&format!(
            "\x1b[2K {:<9} {} {:>6.3}  {:>3} VMs  {}\n",
            n.as_str(),
            bar(s.summary.load, max_load, 40),
            s.summary.load,
            s.summary.vm_count,
            if s.handoffs.is_empty() {
                String::new()
            } else {
                format!("⇄ {}", s.handoffs.len())
            }
        ));
    }
    let migrations: u64 = st.values().map(|s| s.counters.committed_out).sum();
    let rounds: u64 = st.values().map(|s| s.counters.rounds).sum();
    out.push_str(&format!(
        "\x1b[2K max/mean {:.3}   migrations {migrations}   rounds {rounds}\n",
        max_over_mean(st)
    ));
    out
}

/// One line for a log (when stdout is not a terminal).
fn one_line(st: &BTreeMap<NodeId, NodeStatus>, elapsed: Duration) -> String {
    let counts: Vec<String> = st
        .iter()
        .map(|(n, s)| format!("{n}={}", s.summary.vm_count))
        .collect();
    format!(
        "{:>5.1}s  max/mean {:.3}  {}",
        elapsed.as_secs_f64(),
        max_over_mean(st),
        counts.join(" ")
    )
}

/// Waits for migrations in flight, then counts the VMs in the schedules.
async fn finish(
    clients: &[(NodeId, AdminClient)],
    args: &Args,
    started: Instant,
) -> anyhow::Result<Summary> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut st = statuses(clients).await;
    while (st.len() < clients.len() || st.values().any(|s| !s.handoffs.is_empty()))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        st = statuses(clients).await;
    }
    let mut holders: BTreeMap<VmId, Vec<(NodeId, VmState)>> = BTreeMap::new();
    for (n, c) in clients {
        let entries = c
            .list_vms()
            .await
            .with_context(|| format!("listing the VMs of {n}"))?;
        for e in entries {
            holders.entry(e.vm).or_default().push((n.clone(), e.state));
        }
    }
    // A VM counts as found when exactly one node runs it, or it is between two nodes.
    let vms_found = holders
        .values()
        .filter(|h| {
            let running = h.iter().filter(|(_, s)| *s == VmState::Running).count();
            running == 1 || (running == 0 && h.len() == 2)
        })
        .count();
    Ok(Summary {
        agents: args.agents,
        vms: args.vms,
        rounds: st.values().map(|s| s.counters.rounds).sum(),
        migrations: st.values().map(|s| s.counters.committed_out).sum(),
        final_max_over_mean: max_over_mean(&st),
        vms_found,
        seconds: started.elapsed().as_secs_f64(),
    })
}
