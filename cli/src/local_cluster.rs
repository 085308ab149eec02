//! The cluster of `ballast demo`: real agent processes on loopback, in a temporary
//! directory with their own CA, run by the local-cluster kit (each agent's port is held
//! by this process and handed over, never released). Certificates and configs are
//! written with the same code as `cluster init` / `node add`, each agent is
//! `ballast agent` of this very binary, and everything is stopped and removed when the
//! value is dropped.

use crate::cluster_dir::{self, ClusterDir, NodePlan};
use anyhow::{bail, Context};
use ballast_gossip::CertBundle;
use ballast_local_cluster::LocalCluster as Kit;
use ballast_node::config::AgentConfig;
use ballast_store::NodeId;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long a stopped agent gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Agents on loopback; stopped and deleted on drop.
pub struct LocalCluster {
    kit: Kit,
    dir: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Writes `count` node configs (tuned by `tune`) and starts one agent per node; the
    /// first node is every other node's seed.
    pub fn start(
        cluster: &str,
        count: usize,
        tune: impl Fn(&mut AgentConfig),
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("ballast-demo-")
            .tempdir()
            .context("creating the demo directory")?;
        let dir = ClusterDir {
            root: tmp.path().to_owned(),
        };
        let names: Vec<String> = (1..=count).map(|i| format!("agent-{i}")).collect();
        let exe = std::env::current_exe().context("finding this program")?;
        let kit = Kit::create(
            &tmp.path().join("run"),
            exe,
            cluster,
            "demo-admin",
            &names,
            |n| {
                let plan = NodePlan {
                    name: n.name.to_owned(),
                    addr: n.addr,
                    listen: None,
                    seeds: n
                        .addrs
                        .iter()
                        .take(1)
                        .filter(|a| **a != n.addr)
                        .copied()
                        .collect(),
                    metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                    driver: cluster_dir::DriverArgs::sim(),
                    cert: cluster_dir::CertArgs { valid_days: 365 },
                };
                let written =
                    cluster_dir::write_node(&dir, n.ca, &plan).map_err(|e| format!("{e:#}"))?;
                retune(&written.config, &tune).map_err(|e| format!("{e:#}"))?;
                Ok(written.config)
            },
        )?;
        let mut me = Self {
            kit,
            dir: Some(tmp),
        };
        for i in 0..count {
            me.kit
                .start(i, &[])
                .with_context(|| format!("starting agent {}", i + 1))?;
        }
        Ok(me)
    }

    /// The admin certificate of this cluster.
    pub fn admin(&self) -> &CertBundle {
        &self.kit.admin
    }

    /// The nodes and their addresses, in start order.
    pub fn nodes(&self) -> Vec<(NodeId, SocketAddr)> {
        let nodes = self.kit.nodes.iter();
        nodes
            .map(|n| (NodeId::from(n.name.as_str()), n.addr()))
            .collect()
    }

    /// Fails with the agent's last log lines if an agent has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for i in 0..self.kit.nodes.len() {
            if let Some(status) = self.kit.exited(i) {
                bail!(
                    "agent {} exited ({status}); its last log lines:\n{}",
                    self.kit.nodes[i].name,
                    self.kit.log_tail(i, 10)
                );
            }
        }
        Ok(())
    }

    /// Stops every agent (SIGTERM, then SIGKILL after a grace period) and removes the
    /// directory. Idempotent.
    pub fn stop(&mut self) {
        self.kit.stop_all(STOP_GRACE);
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Rewrites a written config with `tune` applied (the comments are kept for every key
/// by rendering the documented form again).
fn retune(path: &Path, tune: &impl Fn(&mut AgentConfig)) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut cfg = AgentConfig::from_toml_str(&text)?;
    tune(&mut cfg);
    cfg.validate()
        .context("the demo's config does not validate")?;
    let text = crate::config_doc::documented_toml(&cfg, "ballast demo agent")?;
    std::fs::write(path, text)?;
    Ok(())
}
