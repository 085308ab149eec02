//! A cluster of real agent processes on loopback, in a temporary directory with its own
//! CA, for `ballast demo`: certificates and configs are written with the same code as
//! `cluster init` / `node add`, each agent is `ballast agent --config ...` of this very
//! binary, and everything is stopped and removed when the value is dropped.

use crate::cluster_dir::{self, ClusterDir, NodePlan};
use anyhow::{bail, Context};
use ballast_gossip::CertBundle;
use ballast_node::config::AgentConfig;
use ballast_store::NodeId;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped agent gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One agent process.
struct AgentProc {
    name: NodeId,
    child: Child,
    log: PathBuf,
}

/// Agents on loopback; stopped and deleted on drop.
pub struct LocalCluster {
    dir: Option<tempfile::TempDir>,
    agents: Vec<AgentProc>,
    /// The admin certificate of this cluster.
    pub admin: CertBundle,
    /// The nodes and their addresses, in start order.
    pub nodes: Vec<(NodeId, SocketAddr)>,
}

/// A free UDP port on loopback; the socket is held by the caller until every port is
/// chosen, so no two nodes get the same one.
fn free_udp_addr() -> anyhow::Result<(UdpSocket, SocketAddr)> {
    let sock = UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    let addr = sock.local_addr()?;
    Ok((sock, addr))
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
        let ca = ballast_gossip::create_ca(cluster)?;
        let admin = ballast_gossip::issue_admin_cert(&ca, "demo-admin")?;
        let mut nodes = Vec::with_capacity(count);
        let mut configs = Vec::with_capacity(count);
        let mut held = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("agent-{}", i + 1);
            let (sock, addr) = free_udp_addr()?;
            held.push(sock);
            let plan = NodePlan {
                name: name.clone(),
                addr,
                listen: None,
                seeds: nodes.first().map(|(_, a)| *a).into_iter().collect(),
                metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                driver: cluster_dir::DriverArgs::sim(),
            };
            let written = cluster_dir::write_node(&dir, &ca, &plan)?;
            retune(&written.config, &tune)?;
            nodes.push((NodeId::from(name), addr));
            configs.push(written.config);
        }
        drop(held);
        let mut me = Self {
            dir: Some(tmp),
            agents: Vec::with_capacity(count),
            admin,
            nodes,
        };
        let exe = std::env::current_exe().context("finding this program")?;
        for (i, config) in configs.iter().enumerate() {
            let log = config.with_file_name("agent.log");
            let out = std::fs::File::create(&log)?;
            let child = Command::new(&exe)
                .arg("agent")
                .arg("--config")
                .arg(config)
                .env_remove("BALLAST_CONFIG")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting agent {}", i + 1))?;
            me.agents.push(AgentProc {
                name: me.nodes[i].0.clone(),
                child,
                log,
            });
        }
        Ok(me)
    }

    /// Fails with the agent's last log lines if an agent has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for a in &mut self.agents {
            if let Some(status) = a.child.try_wait()? {
                let log = std::fs::read_to_string(&a.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "agent {} exited ({status}); its last log lines:\n{}",
                    a.name,
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// Stops every agent (SIGTERM, then SIGKILL after a grace period) and removes the
    /// directory. Idempotent.
    pub fn stop(&mut self) {
        for a in &self.agents {
            if let Ok(pid) = i32::try_from(a.child.id()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for a in &mut self.agents {
            loop {
                match a.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = a.child.kill();
                        let _ = a.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.agents.clear();
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
