//! `ballast vm adopt NAME…|--all --node NODE`: the VMs a host's hypervisor already runs
//! (libvirt domains defined with virsh, virt-manager, ...) enter that node's schedule.

use crate::cmd::admin::{explain, Cluster};
use anyhow::Context;
use std::time::Duration;

/// Bound on an adopt call (the driver reads every domain and its disks).
const ADOPT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Arguments of `ballast vm adopt`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["names", "all"])))]
pub struct AdoptArgs {
    /// The node whose hypervisor runs the VMs.
    #[arg(long)]
    node: String,
    /// The hypervisor's names of the VMs (libvirt domain names); each becomes a VM id.
    names: Vec<String>,
    /// Every running or defined VM of that hypervisor.
    #[arg(long)]
    all: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ballast vm adopt`.
pub async fn run_adopt(cluster: &Cluster, a: AdoptArgs) -> anyhow::Result<()> {
    let member = cluster.member(&a.node)?;
    let client = cluster.client(member.addr, ADOPT_CALL_TIMEOUT)?;
    let names = if a.all { Vec::new() } else { a.names };
    let adopted = client
        .adopt_vms(&names)
        .await
        .map_err(|e| explain(e, member.addr, &cluster.bundle_path))
        .with_context(|| format!("adopting VMs on {}", a.node))?;
    if a.json {
        let ids: Vec<&str> = adopted.iter().map(|v| v.as_str()).collect();
        println!("{}", serde_json::json!({ "node": a.node, "adopted": ids }));
    } else if adopted.is_empty() {
        println!("no VM to adopt on {}", a.node);
    } else {
        for vm in &adopted {
            println!("VM {vm} adopted on {}", a.node);
        }
    }
    Ok(())
}
