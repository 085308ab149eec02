//! The cluster under test: N real `ballast agent` processes on loopback, each with its
//! own directory (certificates, config, sled store, sim driver state, logs), and the
//! process-level faults: SIGKILL of an agent, of a whole host (agent and its `sim-vm`
//! processes), SIGSTOP/SIGCONT, restart with a failpoint armed, and wiping a host.
//! Dropping the cluster kills every process it started, also when a run fails.

use ballast_gossip::CertBundle;
use ballast_local_cluster::{write_node_certs, KitError, LocalCluster as Kit};
use ballast_node::config::AgentConfig;
use ballast_node::driver::sim::runlog::now_unix_ns;
use ballast_node::driver::sim::{HostCrash, RUNLOG_FILE};
use ballast_node::failpoints::FAILPOINTS_ENV;
use ballast_store::NodeId;
use rustix::process::{kill_process, Pid, Signal};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Name of the data directory of a node, and of what is left of it after a wipe.
const DATA: &str = "data";
const WIPED: &str = "data-wiped";

/// Setting up or driving the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The nodes could not be set up or an agent could not be started.
    #[error(transparent)]
    Kit(#[from] KitError),
    /// A file or directory could not be moved.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// One host: its agent's identity and files (the process is the kit's).
#[derive(Debug)]
pub struct Node {
    /// Its node id (`n1`, `n2`...).
    pub id: NodeId,
    /// Its QUIC address (one UDP socket for gossip and RPC, held by the kit).
    pub addr: SocketAddr,
    /// Its directory.
    pub dir: PathBuf,
    wiped: bool,
}

impl Node {
    /// The sim driver's state directory (run log, VM sockets).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(DATA).join("sim-state")
    }

    /// Whether it was wiped (gone for good).
    pub fn is_wiped(&self) -> bool {
        self.wiped
    }
}

/// The cluster's processes and files.
pub struct Cluster {
    /// The hosts.
    pub nodes: Vec<Node>,
    kit: Kit,
    /// Host crashes (for the I2 checker): every VM of the host stopped by then.
    pub crashes: Vec<HostCrash>,
}

impl Cluster {
    /// Writes a CA, certificates and configs for `n` agents under `root` (not started).
    /// `tune` adjusts each config (timings, planted bug...).
    pub fn create(
        root: &Path,
        n: usize,
        bin: PathBuf,
        tune: &dyn Fn(&mut AgentConfig),
    ) -> Result<Self, ClusterError> {
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let vm_command = vec![bin.display().to_string(), "sim-vm".into()];
        let kit = Kit::create(root, bin, "chaos", "chaos-harness", &names, |f| {
            let certs =
                write_node_certs(f.ca, f.name, f.addr.ip(), f.dir).map_err(|e| e.to_string())?;
            let mut cfg = AgentConfig::default();
            cfg.node.id = f.name.to_owned();
            cfg.node.cluster = "chaos".into();
            cfg.node.data_dir = f.dir.join(DATA);
            cfg.node.listen = f.addr;
            cfg.node.seeds = f.addrs.iter().filter(|a| **a != f.addr).copied().collect();
            cfg.node.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            cfg.tls.ca_cert = certs.ca;
            cfg.tls.cert = certs.cert;
            cfg.tls.key = certs.key;
            cfg.driver.sim.host = NodeId::from(f.name);
            cfg.driver.sim.seed = f.index as u64 + 1;
            cfg.driver.sim.state_dir = f.dir.join(DATA).join("sim-state");
            cfg.driver.sim.mode = ballast_node::driver::sim::SimMode::Process;
            cfg.driver.sim.vm_command = vm_command.clone();
            tune(&mut cfg);
            let config = f.dir.join("agent.toml");
            std::fs::write(&config, cfg.to_toml()).map_err(|e| e.to_string())?;
            Ok(config)
        })?;
        let nodes = kit
            .nodes
            .iter()
            .map(|s| Node {
                id: NodeId::from(s.name.as_str()),
                addr: s.addr(),
                dir: s.dir.clone(),
                wiped: false,
            })
            .collect();
        Ok(Self {
            nodes,
            kit,
            crashes: Vec::new(),
        })
    }

    /// The admin certificate the harness calls with.
    pub fn admin(&self) -> &CertBundle {
        &self.kit.admin
    }

    /// Whether node `i`'s agent process is running (possibly paused).
    pub fn is_up(&self, i: usize) -> bool {
        self.kit.nodes[i].is_up()
    }

    /// Whether node `i`'s agent is stopped with SIGSTOP.
    pub fn is_paused(&self, i: usize) -> bool {
        self.kit.nodes[i].is_paused()
    }

    /// Starts node `i`'s agent (on its existing store), with `failpoint` armed if given.
    pub fn start(&mut self, i: usize, failpoint: Option<&str>) -> Result<(), ClusterError> {
        if self.nodes[i].wiped {
            return Ok(());
        }
        let level = std::env::var("BALLAST_CHAOS_AGENT_LOG").unwrap_or_else(|_| "warn".into());
        let env: [(OsString, OsString); 2] = [
            ("BALLAST_LOG".into(), level.into()),
            (FAILPOINTS_ENV.into(), failpoint.unwrap_or("").into()),
        ];
        self.kit.start(i, &env)?;
        Ok(())
    }

    /// SIGKILLs node `i`'s agent and reaps it (its VM processes live on).
    pub fn kill_agent(&mut self, i: usize) {
        self.kit.kill(i);
    }

    /// SIGKILLs node `i`'s agent and every VM process of its host; records the crash.
    /// Returns how many VM processes were killed.
    pub fn kill_host(&mut self, i: usize) -> usize {
        self.kill_agent(i);
        let killed = kill_vm_processes(&self.nodes[i].state_dir());
        self.crashes.push(HostCrash {
            host: self.nodes[i].id.clone(),
            t_ns: now_unix_ns(),
        });
        killed
    }

    /// SIGSTOPs node `i`'s agent.
    pub fn pause(&mut self, i: usize) {
        self.kit.pause(i);
    }

    /// SIGCONTs node `i`'s agent.
    pub fn resume(&mut self, i: usize) {
        self.kit.resume(i);
    }

    /// Every local UDP port node `i`'s agent holds now: its QUIC endpoint, and the
    /// sockets of RPC clients it made since (the agent renews its client on a fresh
    /// socket when a peer restarts). Read from `/proc/PID/fd` and `/proc/PID/net/udp`.
    pub fn udp_ports(&self, i: usize) -> Vec<u16> {
        let mut ports = vec![self.nodes[i].addr.port()];
        let Some(pid) = self.kit.nodes[i].pid() else {
            return ports;
        };
        let mut inodes = std::collections::BTreeSet::new();
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                let link = std::fs::read_link(fd.path()).unwrap_or_default();
                let link = link.to_string_lossy();
                if let Some(ino) = link
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    inodes.insert(ino.to_owned());
                }
            }
        }
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (cols.get(1), cols.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) {
                continue;
            }
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let Some(p) = port.filter(|p| !ports.contains(p)) {
                ports.push(p);
            }
        }
        ports
    }

    /// Whether node `i`'s agent is down: it has exited (a failpoint hit; reaped then) or
    /// was never started or was killed.
    pub fn exited(&mut self, i: usize) -> bool {
        !self.kit.nodes[i].is_up() || self.kit.exited(i).is_some()
    }

    /// Destroys host `i` for good: kills its agent and VMs and moves its data away
    /// (its run log stays readable for the I2 check). Never started again.
    pub fn wipe(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill_host(i);
        let n = &mut self.nodes[i];
        n.wiped = true;
        std::fs::rename(n.dir.join(DATA), n.dir.join(WIPED)).map_err(io("wipe"))
    }

    /// The run logs of every host (including wiped ones).
    pub fn runlog_paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for d in [DATA, WIPED] {
                let p = n.dir.join(d).join("sim-state").join(RUNLOG_FILE);
                if p.exists() {
                    out.push(p);
                }
            }
        }
        out
    }

    /// The last lines of node `i`'s agent logs (for evidence).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.kit.log_tail(i, lines)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kit.kill(i);
            kill_vm_processes(&self.nodes[i].state_dir());
        }
    }
}

/// SIGKILLs every `sim-vm` process whose `--state-dir` is `state_dir`; returns how many.
pub fn kill_vm_processes(state_dir: &Path) -> usize {
    let want = state_dir.as_os_str().to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_vm = args.iter().any(|a| a == "sim-vm");
        let ours = args
            .windows(2)
            .any(|w| w[0] == "--state-dir" && w[1] == want);
        if is_vm && ours {
            if let Some(p) = Pid::from_raw(pid) {
                if kill_process(p, Signal::KILL).is_ok() {
                    killed.push(pid);
                }
            }
        }
    }
    wait_gone(&killed);
    killed.len()
}

/// Waits (bounded, 2 s) until each of `pids` is gone or a zombie: it runs no more.
fn wait_gone(pids: &[i32]) {
    for _ in 0..100 {
        let alive = pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
                .unwrap_or(false)
        });
        if !alive {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
