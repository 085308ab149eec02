//! `ballast cluster init`: a new cluster's CA, the admin bundle, and the first node's
//! certificate and config, in one directory (layout in `cluster_dir`).

use crate::admin_bundle::{AdminFile, KnownNode};
use crate::cluster_dir::{self, ClusterDir, NodePlan, WrittenNode};
use anyhow::{bail, Context};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `ballast cluster`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Create a cluster: its CA, an admin certificate and the first node's certificate
    /// and config.
    Init(InitArgs),
}

/// Arguments of `ballast cluster init`.
#[derive(clap::Args, Debug)]
struct InitArgs {
    /// The cluster's name (written in every certificate and node config).
    #[arg(long)]
    name: String,
    /// Directory to write into (created if missing; must not hold a cluster yet).
    #[arg(long)]
    dir: PathBuf,
    /// The first node's id.
    #[arg(long, default_value = "node-1", value_parser = cluster_dir::parse_name)]
    node: String,
    /// The address other nodes reach the first node at.
    #[arg(long, default_value = "127.0.0.1:7420", value_name = "HOST:PORT", value_parser = cluster_dir::parse_node_addr)]
    addr: SocketAddr,
    /// The address the first node binds [default: --addr].
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// The first node's HTTP server: metrics, API, web view (port 0: any free port;
    /// beyond loopback: HTTPS with a client certificate).
    #[arg(long, default_value = "127.0.0.1:9420", value_name = "IP:PORT", value_parser = cluster_dir::parse_metrics_listen)]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    driver: cluster_dir::DriverArgs,
    #[command(flatten)]
    cert: cluster_dir::CertArgs,
    /// The name in the admin certificate.
    #[arg(long, default_value = "admin", value_parser = cluster_dir::parse_name)]
    admin_name: String,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

/// What `cluster init` wrote.
#[derive(Serialize)]
struct InitReport {
    cluster: String,
    dir: PathBuf,
    ca_cert: PathBuf,
    admin_dir: PathBuf,
    node: WrittenNode,
}

/// Runs `ballast cluster ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Init(a) => init(a),
    }
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    let dir = ClusterDir {
        root: a.dir.clone(),
    };
    if dir.ca_key().exists() {
        bail!(
            "{} already holds a cluster CA; use another --dir, or `ballast node add` to add nodes",
            a.dir.display()
        );
    }
    for d in [a.dir.join(cluster_dir::CA_DIR), dir.admin_dir()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let ca = ballast_gossip::create_ca(&a.name)
        .with_context(|| format!("creating the CA of cluster {:?}", a.name))?;
    ballast_gossip::save_ca(&ca, &dir.ca_cert(), &dir.ca_key()).context("writing the CA")?;
    let admin =
        ballast_gossip::issue_admin_cert(&ca, &a.admin_name, ballast_gossip::AdminRole::Operator)
            .context("issuing the admin certificate")?;
    cluster_dir::save_bundle(&admin, &dir.admin_dir(), "admin")?;
    let plan = NodePlan {
        name: a.node.clone(),
        addr: a.addr,
        listen: a.listen,
        seeds: Vec::new(),
        metrics_listen: Some(a.metrics_listen),
        driver: a.driver,
        cert: a.cert,
    };
    let node = cluster_dir::write_node(&dir, &ca, &plan)?;
    let mut file = AdminFile::new(&a.name);
    file.upsert_node(KnownNode {
        name: a.node.clone(),
        addr: a.addr,
    });
    dir.save_admin_file(&file)?;
    let report = InitReport {
        cluster: a.name.clone(),
        dir: a.dir.clone(),
        ca_cert: dir.ca_cert(),
        admin_dir: dir.admin_dir(),
        node,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("Created cluster {:?} in {}", a.name, a.dir.display());
        println!(
            "  CA:            {}  (keep {} offline; `node add` needs it)",
            report.ca_cert.display(),
            dir.ca_key().display()
        );
        println!(
            "  admin bundle:  {}  (use with --admin DIR)",
            report.admin_dir.display()
        );
        println!(
            "  first node:    {} at {}: {}",
            report.node.name,
            report.node.addr,
            report.node.dir.display()
        );
        println!(
            "Next: copy {} to that host and run `ballast agent --config {}`.",
            report.node.dir.display(),
            cluster_dir::AGENT_FILE
        );
    }
    Ok(())
}
