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

use ballast_node::report::status::{report_of, ForgedReport, StatusReport};

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
    out.push_str(&render_forged(&r.forged_gossip));
    for p in &r.incompatible {
        out.push_str(&format!(
            "Left alone: {} at {} speaks protocol {}..{}, this build {}..{} (another release: see \"Upgrading\" in docs/operations.md)\n",
            p.node,
            p.addr,
            p.min,
            p.max,
            ballast_gossip::PROTOCOL_MIN,
            ballast_gossip::PROTOCOL_VERSION
        ));
    }
    for c in &r.certs_expiring {
        let when = if c.days_left < 0 {
            format!("expired on {}", c.date)
        } else {
            format!("expires in {} day(s), on {}", c.days_left, c.date)
        };
        out.push_str(&format!(
            "Certificate of {} {when}: `ballast node renew {} --dir DIR`, copy the files to the host, restart its agent\n",
            c.node, c.node
        ));
    }
    for row in &r.revoked {
        out.push_str(&format!(
            "Revoked: {} ({}), refused by {}\n",
            row.node,
            ballast_node::report::age(ballast_node::agent::unix_ms().saturating_sub(row.unix_ms)),
            row.refused_by.join(", ")
        ));
    }
    for n in r.nodes.iter().filter(|n| n.error.is_some()) {
        out.push_str(&format!(
            "{}: {}\n",
            n.node,
            n.error.as_deref().unwrap_or_default()
        ));
    }
    out
}

/// Most forged states listed; the total counts them all.
const FORGED_SHOWN: usize = 5;

/// The forged gossip the nodes refused, if any.
fn render_forged(f: &ForgedReport) -> String {
    if f.total == 0 && f.recent.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "Forged gossip refused: {} state(s) that do not verify against their node's own signature \
         (another node relays made-up state; check its certificate)\n",
        f.total
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for row in f.recent.iter().take(FORGED_SHOWN) {
        out.push_str(&format!(
            "  {} refused state of {}: {} ({})\n",
            row.seen_by,
            row.node,
            row.reason,
            ballast_node::report::age(now.saturating_sub(row.unix_ms))
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
            forged_gossip: Default::default(),
            incompatible: vec![ballast_gossip::IncompatiblePeer {
                node: "old".into(),
                addr: "127.0.0.1:7009".parse().expect("addr"),
                min: 3,
                max: 3,
            }],
            certs_expiring: vec![ballast_node::report::status::CertExpiry {
                node: "b".into(),
                expires_unix: 0,
                date: "2027-01-01".into(),
                days_left: 12,
            }],
            revoked: vec![ballast_node::report::status::RevokedRow {
                node: "c".into(),
                unix_ms: ballast_node::agent::unix_ms() - 30_000,
                refused_by: vec!["a".into(), "b".into()],
            }],
        };
        let table = render(&r);
        assert!(table.contains("LAST SEEN"), "{table}");
        assert!(!table.contains("Forged"), "{table}");
        assert!(
            table.contains(
                "Left alone: old at 127.0.0.1:7009 speaks protocol 3..3, this build 1..2"
            ),
            "{table}"
        );
        assert!(
            table.contains("Revoked: c (30s ago), refused by a, b"),
            "{table}"
        );
        assert!(
            table.contains("Certificate of b expires in 12 day(s), on 2027-01-01: `ballast node renew b --dir DIR`"),
            "{table}"
        );
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

    #[test]
    fn forged_gossip_is_shown_with_who_refused_it() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let f = ForgedReport {
            total: 3,
            recent: vec![ballast_node::report::status::ForgedRow {
                seen_by: "a".into(),
                node: "b".into(),
                reason: "the signature does not match its values".into(),
                unix_ms: now - 12_000,
            }],
        };
        let text = render_forged(&f);
        assert!(text.contains("Forged gossip refused: 3 state(s)"), "{text}");
        assert!(
            text.contains(
                "a refused state of b: the signature does not match its values (12s ago)"
            ),
            "{text}"
        );
    }
}
