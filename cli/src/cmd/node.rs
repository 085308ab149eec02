//! `ballast node add` (a node's certificate and config, ready to copy to its host) and
//! `ballast node forget` (tell the cluster a node is gone for good).

use crate::admin_bundle::AdminArgs;
use crate::cluster_dir::{self, ClusterDir, NodePlan};
use crate::cmd::admin::Cluster;
use anyhow::Context;
use ballast_store::NodeId;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `ballast node`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Issue a node's certificate and write its config, ready to copy to that host.
    Add(AddArgs),
    /// Tell the live nodes that NODE is gone for good, so they resolve its handoffs
    /// alone (docs/design.md §Handoff). Only for a host that will never come back.
    Forget(ForgetArgs),
    /// Revoke NODE's name: every node refuses it from now on (handshakes, gossip), also
    /// after restarts. For a host whose key may be stolen; a replacement joins under a
    /// new name.
    Revoke(RevokeArgs),
    /// Issue a new certificate for NODE (same name, new key) in its node directory; copy
    /// node.pem and node.key to the host and restart its agent (its VMs keep running).
    Renew(RenewArgs),
}

/// Arguments of `ballast node add`.
#[derive(clap::Args, Debug)]
struct AddArgs {
    /// The node's id (a DNS label: letters, digits, '-').
    #[arg(value_parser = cluster_dir::parse_name)]
    name: String,
    /// The address other nodes reach it at.
    #[arg(long, value_name = "HOST:PORT", value_parser = cluster_dir::parse_node_addr)]
    addr: SocketAddr,
    /// A node to join through (repeatable) [default: every node in the admin bundle].
    #[arg(long = "seed", value_name = "HOST:PORT", value_parser = cluster_dir::parse_node_addr)]
    seeds: Vec<SocketAddr>,
    /// The cluster directory `ballast cluster init` wrote (it holds the CA).
    #[arg(long)]
    dir: PathBuf,
    /// The address the node binds [default: --addr].
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// The node's HTTP server: metrics, API, web view (port 0: any free port; beyond
    /// loopback: HTTPS with a client certificate).
    #[arg(long, default_value = "127.0.0.1:9420", value_name = "IP:PORT", value_parser = cluster_dir::parse_metrics_listen)]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    driver: cluster_dir::DriverArgs,
    #[command(flatten)]
    cert: cluster_dir::CertArgs,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ballast node forget`.
#[derive(clap::Args, Debug)]
struct ForgetArgs {
    /// The node that is gone.
    node: String,
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the nodes told as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ballast node renew`.
#[derive(clap::Args, Debug)]
struct RenewArgs {
    /// The node whose certificate to renew.
    #[arg(value_parser = cluster_dir::parse_name)]
    node: String,
    /// The cluster directory `ballast cluster init` wrote (it holds the CA).
    #[arg(long)]
    dir: PathBuf,
    #[command(flatten)]
    cert: cluster_dir::CertArgs,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ballast node revoke`.
#[derive(clap::Args, Debug)]
struct RevokeArgs {
    /// The node whose name to revoke.
    #[arg(value_parser = cluster_dir::parse_name)]
    node: String,
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the nodes told as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ballast node ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Add(a) => add(a),
        Cmd::Forget(a) => forget(a),
        Cmd::Revoke(a) => revoke(a),
        Cmd::Renew(a) => renew(a),
    }
}

fn add(a: AddArgs) -> anyhow::Result<()> {
    let dir = ClusterDir {
        root: a.dir.clone(),
    };
    let ca = dir.load_ca()?;
    let seeds = if a.seeds.is_empty() {
        dir.load_admin_file()?
            .map(|f| {
                f.nodes
                    .iter()
                    .filter(|n| n.name != a.name)
                    .map(|n| n.addr)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        a.seeds.clone()
    };
    let plan = NodePlan {
        name: a.name.clone(),
        addr: a.addr,
        listen: a.listen,
        seeds,
        metrics_listen: Some(a.metrics_listen),
        driver: a.driver,
        cert: a.cert,
    };
    let written = cluster_dir::write_node(&dir, &ca, &plan)?;
    let recorded = cluster_dir::record_node(&dir, &a.name, a.addr)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&written)?);
    } else {
        println!(
            "Node {} ({}) written to {}",
            written.name,
            written.addr,
            written.dir.display()
        );
        if plan.seeds.is_empty() {
            println!("  warning: no seeds; it will not find the cluster until one is added");
        } else {
            let s: Vec<String> = plan.seeds.iter().map(ToString::to_string).collect();
            println!("  seeds: {}", s.join(", "));
        }
        if recorded {
            println!("  added to {}", dir.admin_file().display());
        }
        println!(
            "Next: copy {} to that host and run `ballast agent --config {}`.",
            written.dir.display(),
            cluster_dir::AGENT_FILE
        );
    }
    Ok(())
}

fn forget(a: ForgetArgs) -> anyhow::Result<()> {
    let node = NodeId::from(a.node.as_str());
    crate::cmd::admin::block_on(async move {
        let cluster = Cluster::connect(&a.admin).await?;
        let told = cluster
            .forget_node(&node)
            .await
            .with_context(|| format!("forgetting node {node}"))?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "forgotten": node.0, "told": told })
            );
        } else {
            println!(
                "Node {node} forgotten by {} node(s): {}",
                told.len(),
                told.join(", ")
            );
        }
        Ok(())
    })
}

fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    let node = NodeId::from(a.node.as_str());
    crate::cmd::admin::block_on(async move {
        let cluster = Cluster::connect(&a.admin).await?;
        let told = cluster
            .revoke_node(&node)
            .await
            .with_context(|| format!("revoking node {node}"))?;
        if a.json {
            println!("{}", serde_json::json!({ "revoked": node.0, "told": told }));
        } else {
            println!(
                "Node {node} revoked: {} node(s) refuse it now ({}); gossip tells the others",
                told.len(),
                told.join(", ")
            );
        }
        Ok(())
    })
}

fn renew(a: RenewArgs) -> anyhow::Result<()> {
    let dir = ClusterDir {
        root: a.dir.clone(),
    };
    let ca = dir.load_ca()?;
    let node_dir = dir.node_dir(&a.node);
    let config = node_dir.join(cluster_dir::AGENT_FILE);
    if !config.exists() {
        anyhow::bail!(
            "{} does not exist: node {} was not added from this cluster directory",
            config.display(),
            a.node
        );
    }
    let cfg = ballast_node::config::AgentConfig::load(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let ip = cfg.node.advertise.unwrap_or(cfg.node.listen).ip();
    let validity = a.cert.validity();
    let cert = ballast_gossip::issue_node_cert_valid(&ca, &a.node, &[ip], validity)
        .with_context(|| format!("issuing the certificate of node {}", a.node))?;
    cluster_dir::save_bundle(&cert, &node_dir, "node")?;
    let until = validity.not_after_date();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "node": a.node, "dir": node_dir, "valid_until": until })
        );
    } else {
        println!(
            "Renewed the certificate of node {} (valid until {until}) in {}",
            a.node,
            node_dir.display()
        );
        println!(
            "Next: copy node.pem and node.key to that host and restart its agent; its VMs \
             keep running and stay in its schedule."
        );
    }
    Ok(())
}
