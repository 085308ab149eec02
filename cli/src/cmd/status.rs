//! `ballast status [--watch]`: one row per node (state, load, VMs, capacity, last seen,
//! migrations in flight) and the cluster's max/mean load.
//!
//! "Last seen" is gossip's view: the freshest age, among the nodes that answered, of
//! the last gossip heard from a node (its heartbeat or a key advanced). A node that
//! answered but that no peer reports is `now`; one that neither answered nor appears in
//! any peer's view is `unreachable`.

use crate::admin_bundle::AdminArgs;
use crate::cmd::admin::{block_on, whole, Cluster};
use crate::cmd::rules;
use crate::table::{bar, bytes, new_table};
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

use ballast_node::report::status::{report_of, StatusReport};

/// The report of a cluster just reached.
pub fn report(cluster: &Cluster) -> StatusReport {
    report_of(&cluster.members)
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
    out.push_str(&rules::render(&r.rules));
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
            cluster.reach_all().await;
            let r = report(&cluster);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(whole(&r.missing)?);
            }
            if !args.watch {
                print!("{}", render(&r));
                return Ok(whole(&r.missing)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_node::report::status::NodeRow;

    fn row(node: &str, load: f64, heard_ms_ago: u64) -> NodeRow {
        NodeRow {
            node: node.to_owned(),
            addr: "127.0.0.1:7000".to_owned(),
            state: "active".to_owned(),
            load,
            vms: 2,
            cpu_capacity: 8.0,
            mem_capacity_bytes: 16e9,
            mem_free_bytes: 8e9,
            migrations_in_flight: 0,
            last_heard_ms_ago: Some(heard_ms_ago),
            last_seen: ballast_node::report::age(heard_ms_ago),
            error: None,
        }
    }

    #[test]
    fn the_table_shows_the_age() {
        let r = StatusReport {
            nodes: vec![row("a", 0.5, 430), row("b", 0.5, 12_345)],
            active_nodes: 2,
            total_vms: 4,
            max_load: 0.5,
            mean_load: 0.5,
            max_over_mean: 1.0,
            migrations_in_flight: 0,
            partial: false,
            missing: Vec::new(),
            rules: Default::default(),
        };
        let table = render(&r);
        assert!(table.contains("LAST SEEN"), "{table}");
        let line = |id: &str| {
            table
                .lines()
                .find(|l| l.contains(&format!(" {id} ")))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(line("a").contains("0.4s ago"), "{table}");
        assert!(line("b").contains("12s ago"), "{table}");
    }
}
