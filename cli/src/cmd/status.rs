//! `ballast status [--watch]`: one row per node (state, load, VMs, capacity, last seen,
//! migrations in flight) and the cluster's max/mean load.

use crate::admin_bundle::AdminArgs;
use crate::cmd::admin::{block_on, Cluster, Member};
use crate::table::{bar, bytes, new_table};
use ballast_gossip::NodeRunState;
use serde::Serialize;
use std::time::Duration;

/// Arguments of `ballast status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Redraw every --interval seconds until Ctrl-C.
    #[arg(long, conflicts_with = "json")]
    watch: bool,
    /// Seconds between two redraws with --watch.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// One node in `status --json`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    /// The node id.
    pub node: String,
    /// Its RPC address.
    pub addr: String,
    /// `active`, `draining` or `unreachable`.
    pub state: String,
    /// Its load (sum of its VMs' loads; ~1 is full).
    pub load: f64,
    /// VMs in its schedule.
    pub vms: u32,
    /// CPU capacity in reference cores.
    pub cpu_capacity: f64,
    /// Memory capacity in bytes.
    pub mem_capacity_bytes: f64,
    /// Free memory in bytes.
    pub mem_free_bytes: f64,
    /// Handoffs in flight on this node.
    pub migrations_in_flight: usize,
    /// `now` when it answered this call, else `unreachable` (the gossip view does not
    /// say when a peer was last heard from).
    pub last_seen: String,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The whole `status --json` object.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// One row per node, by id.
    pub nodes: Vec<NodeRow>,
    /// Nodes that answered and are active.
    pub active_nodes: usize,
    /// Sum of the VM counts of the nodes that answered.
    pub total_vms: u64,
    /// Largest load among active nodes.
    pub max_load: f64,
    /// Mean load of active nodes.
    pub mean_load: f64,
    /// `max_load / mean_load` (1 is perfect balance; 0 when there is no load).
    pub max_over_mean: f64,
    /// Handoffs in flight in the cluster.
    pub migrations_in_flight: usize,
}

/// The row of one member.
fn row(m: &Member) -> NodeRow {
    match &m.status {
        Some(s) => NodeRow {
            node: m.node.to_string(),
            addr: m.addr.to_string(),
            state: match (s.draining, s.summary.state) {
                (true, _) | (_, NodeRunState::Draining) => "draining",
                _ => "active",
            }
            .to_owned(),
            load: s.summary.load,
            vms: s.summary.vm_count,
            cpu_capacity: s.summary.cpu_capacity,
            mem_capacity_bytes: s.summary.mem_capacity,
            mem_free_bytes: s.summary.mem_free,
            migrations_in_flight: s.handoffs.len(),
            last_seen: "now".to_owned(),
            error: None,
        },
        None => NodeRow {
            node: m.node.to_string(),
            addr: m.addr.to_string(),
            state: "unreachable".to_owned(),
            load: 0.0,
            vms: 0,
            cpu_capacity: 0.0,
            mem_capacity_bytes: 0.0,
            mem_free_bytes: 0.0,
            migrations_in_flight: 0,
            last_seen: "unreachable".to_owned(),
            error: m.error.clone(),
        },
    }
}

/// The report of a cluster just reached.
pub fn report(cluster: &Cluster) -> StatusReport {
    let nodes: Vec<NodeRow> = cluster.members.values().map(row).collect();
    let active: Vec<&NodeRow> = nodes.iter().filter(|n| n.state == "active").collect();
    let max_load = active.iter().map(|n| n.load).fold(0.0, f64::max);
    let mean_load = if active.is_empty() {
        0.0
    } else {
        active.iter().map(|n| n.load).sum::<f64>() / active.len() as f64
    };
    StatusReport {
        active_nodes: active.len(),
        total_vms: nodes.iter().map(|n| u64::from(n.vms)).sum(),
        max_load,
        mean_load,
        max_over_mean: if mean_load > 0.0 {
            max_load / mean_load
        } else {
            0.0
        },
        migrations_in_flight: nodes.iter().map(|n| n.migrations_in_flight).sum(),
        nodes,
    }
}

/// The report as a table for people.
pub fn render(r: &StatusReport) -> String {
    let mut t = new_table(
        &[
            "NODE",
            "STATE",
            "LOAD",
            "",
            "VMS",
            "CPU",
            "MEM FREE/TOTAL",
            "MIGRATING",
            "LAST SEEN",
        ],
        &[2, 4, 5, 7],
    );
    let scale = r.max_load.max(1e-9);
    for n in &r.nodes {
        t.add_row(vec![
            n.node.clone(),
            n.state.clone(),
            format!("{:.3}", n.load),
            bar(n.load, scale, 20),
            n.vms.to_string(),
            format!("{:.0}", n.cpu_capacity),
            format!(
                "{} / {}",
                bytes(n.mem_free_bytes),
                bytes(n.mem_capacity_bytes)
            ),
            n.migrations_in_flight.to_string(),
            n.last_seen.clone(),
        ]);
    }
    let mut out = t.to_string();
    out.push_str(&format!(
        "\n{} active node(s), {} VM(s), load max {:.3} / mean {:.3} = {:.3}, {} migration(s) in flight\n",
        r.active_nodes, r.total_vms, r.max_load, r.mean_load, r.max_over_mean, r.migrations_in_flight
    ));
    for n in r.nodes.iter().filter(|n| n.error.is_some()) {
        out.push_str(&format!(
            "{}: {}\n",
            n.node,
            n.error.as_deref().unwrap_or_default()
        ));
    }
    out
}

/// Runs `ballast status`.
pub fn run(args: Args) -> anyhow::Result<()> {
    block_on(async move {
        loop {
            let mut cluster = Cluster::connect(&args.admin).await?;
            cluster.probe_known().await;
            let r = report(&cluster);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            if !args.watch {
                print!("{}", render(&r));
                return Ok(());
            }
            // Clear the screen and redraw from the top.
            print!("\x1b[2J\x1b[H{}", render(&r));
            println!("(every {}s, Ctrl-C to stop)", args.interval);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(args.interval)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}
