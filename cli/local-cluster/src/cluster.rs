//! [`LocalCluster`]: the nodes of one cluster on this machine, each with its held port,
//! its directory and its config, started and stopped by index.

use crate::{log_tail, AgentProcess, HeldPort, KitError};
use ballast_gossip::{create_ca, issue_admin_cert, CaBundle, CertBundle};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a config writer gets for one node.
#[derive(Debug)]
pub struct NodeFiles<'a> {
    /// The node's position (0-based).
    pub index: usize,
    /// Its name (node id).
    pub name: &'a str,
    /// Its directory (created; its certificates and data go here).
    pub dir: &'a Path,
    /// Its address (the held port).
    pub addr: SocketAddr,
    /// Every node's address, in order (for seeds).
    pub addrs: &'a [SocketAddr],
    /// The cluster CA (for [`crate::write_node_certs`]).
    pub ca: &'a CaBundle,
}

/// One node.
#[derive(Debug)]
pub struct NodeSlot {
    /// Its name (node id).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// A command the agent runs under, its arguments first (empty: none). For example
    /// `nsenter -t PID -m --`, so that the agent sees a host's mount namespace.
    pub launcher: Vec<OsString>,
    port: HeldPort,
    process: Option<AgentProcess>,
    starts: u32,
}

impl NodeSlot {
    /// Its address (gossip, RPC, admin).
    pub fn addr(&self) -> SocketAddr {
        self.port.addr()
    }

    /// Whether its agent runs (possibly paused).
    pub fn is_up(&self) -> bool {
        self.process.is_some()
    }

    /// Whether its agent is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.process.as_ref().is_some_and(AgentProcess::is_paused)
    }

    /// How many times its agent was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The process id of its agent, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(AgentProcess::pid)
    }

    /// The log of its `start`-th agent (1-based).
    pub fn log_of(&self, start: u32) -> PathBuf {
        self.dir.join(format!("agent-{start}.log"))
    }
}

/// The nodes, their CA and an admin certificate. Every agent is killed when dropped.
#[derive(Debug)]
pub struct LocalCluster {
    bin: PathBuf,
    /// The cluster CA.
    pub ca: CaBundle,
    /// An admin certificate of the cluster.
    pub admin: CertBundle,
    /// The nodes, in order.
    pub nodes: Vec<NodeSlot>,
}

impl LocalCluster {
    /// Creates `root/NAME` for each of `names` with a held loopback port, a CA `cluster`
    /// and an admin certificate `admin_name`; `write_config` writes each node's config
    /// (and certificates) and returns its path. Nothing is started.
    pub fn create(
        root: &Path,
        bin: PathBuf,
        cluster: &str,
        admin_name: &str,
        names: &[String],
        mut write_config: impl FnMut(&NodeFiles<'_>) -> Result<PathBuf, String>,
    ) -> Result<Self, KitError> {
        let certs = |source| KitError::Certs {
            node: admin_name.to_owned(),
            source,
        };
        let ca = create_ca(cluster).map_err(certs)?;
        let admin = issue_admin_cert(&ca, admin_name, ballast_gossip::AdminRole::Operator)
            .map_err(certs)?;
        let ports = names
            .iter()
            .map(|_| HeldPort::loopback())
            .collect::<Result<Vec<_>, _>>()?;
        let addrs: Vec<SocketAddr> = ports.iter().map(HeldPort::addr).collect();
        let mut nodes = Vec::with_capacity(names.len());
        for (index, (name, port)) in names.iter().zip(ports).enumerate() {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).map_err(KitError::io("creating", &dir))?;
            let files = NodeFiles {
                index,
                name,
                dir: &dir,
                addr: port.addr(),
                addrs: &addrs,
                ca: &ca,
            };
            let config = write_config(&files).map_err(|reason| KitError::Config {
                node: name.clone(),
                reason,
            })?;
            nodes.push(NodeSlot {
                name: name.clone(),
                dir,
                config,
                launcher: Vec::new(),
                port,
                process: None,
                starts: 0,
            });
        }
        Ok(Self {
            bin,
            ca,
            admin,
            nodes,
        })
    }

    /// The agent binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Starts node `i`'s agent with `env` added to its environment, logging to a fresh
    /// `agent-N.log`; nothing if it runs.
    pub fn start(&mut self, i: usize, env: &[(OsString, OsString)]) -> Result<(), KitError> {
        let n = &mut self.nodes[i];
        if n.process.is_some() {
            return Ok(());
        }
        let log = n.log_of(n.starts + 1);
        let process = AgentProcess::start(&n.launcher, &self.bin, &n.config, &n.port, &log, env)?;
        n.starts += 1;
        n.process = Some(process);
        Ok(())
    }

    /// SIGKILLs node `i`'s agent and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.kill();
        }
    }

    /// Stops every agent: SIGTERM to all, then SIGKILL to those still running after
    /// `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        let mut running: Vec<AgentProcess> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.process.take())
            .collect();
        std::thread::scope(|s| {
            for p in &mut running {
                s.spawn(move || p.stop(grace));
            }
        });
    }

    /// SIGSTOPs node `i`'s agent.
    pub fn pause(&mut self, i: usize) -> bool {
        self.nodes[i]
            .process
            .as_mut()
            .is_some_and(AgentProcess::pause)
    }

    /// SIGCONTs node `i`'s agent.
    pub fn resume(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].process.as_mut() {
            p.resume();
        }
    }

    /// How node `i`'s agent exited, if it has (then it is reaped and counts as down).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let n = &mut self.nodes[i];
        let status = n.process.as_mut()?.exited()?;
        n.process = None;
        Some(status)
    }

    /// The last `lines` lines of node `i`'s latest agent log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let n = &self.nodes[i];
        log_tail(&n.log_of(n.starts.max(1)), lines)
    }

    /// Every agent log of node `i`, oldest first, concatenated.
    pub fn logs(&self, i: usize) -> String {
        let n = &self.nodes[i];
        (1..=n.starts)
            .filter_map(|k| std::fs::read_to_string(n.log_of(k)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
