//! The cluster under test: N real `ballast agent` processes on loopback, each with its
//! own directory (certificates, config, sled store, sim driver state, logs), and the
//! process-level faults: SIGKILL of an agent, of a whole host (agent and its `sim-vm`
//! processes), SIGSTOP/SIGCONT, restart with a failpoint armed, and wiping a host.
//! Dropping the cluster kills every process it started, also when a run fails.

use ballast_gossip::{create_ca, issue_admin_cert, issue_node_cert, save_cert_bundle, CertBundle};
use ballast_node::config::AgentConfig;
use ballast_node::driver::sim::runlog::now_unix_ns;
use ballast_node::driver::sim::{HostCrash, RUNLOG_FILE};
use ballast_node::failpoints::FAILPOINTS_ENV;
use ballast_store::NodeId;
use rustix::process::{kill_process, Pid, Signal};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Name of the data directory of a node, and of what is left of it after a wipe.
const DATA: &str = "data";
const WIPED: &str = "data-wiped";

/// Setting up or driving the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Certificates could not be made or written. Nothing runs yet.
    #[error("certificates: {0}")]
    Pki(String),
    /// A file or directory could not be written or moved.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The agent binary could not be started. The node stays down.
    #[error("cannot start {bin}: {source}")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// One agent.
#[derive(Debug)]
pub struct Node {
    /// Its node id (`n1`, `n2`...).
    pub id: NodeId,
    /// Its QUIC address (one UDP socket for gossip and RPC).
    pub addr: SocketAddr,
    /// Its directory.
    pub dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    starts: u32,
    paused: bool,
    wiped: bool,
}

impl Node {
    /// The sim driver's state directory (run log, VM sockets).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(DATA).join("sim-state")
    }

    /// Whether its agent process is running (possibly paused).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether it was wiped (gone for good).
    pub fn is_wiped(&self) -> bool {
        self.wiped
    }
}

/// The cluster's processes and files.
pub struct Cluster {
    /// The agents.
    pub nodes: Vec<Node>,
    /// The admin certificate the harness calls with.
    pub admin: CertBundle,
    bin: PathBuf,
    /// Host crashes (for the I2 checker): every VM of the host stopped by then.
    pub crashes: Vec<HostCrash>,
}

fn free_udp_addr() -> Result<SocketAddr, ClusterError> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(io("bind a UDP port"))?;
    s.local_addr().map_err(io("local address"))
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
        let pki = |e: ballast_gossip::PkiError| ClusterError::Pki(e.to_string());
        let ca = create_ca("chaos").map_err(pki)?;
        let admin = issue_admin_cert(&ca, "chaos-harness").map_err(pki)?;
        let mut addrs = Vec::new();
        while addrs.len() < n {
            let a = free_udp_addr()?;
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = format!("n{}", i + 1);
            let dir = root.join(&id);
            std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
            let cert = issue_node_cert(&ca, &id, &[addr.ip()]).map_err(pki)?;
            let (cert_p, key_p, ca_p) = (
                dir.join("node.pem"),
                dir.join("node.key"),
                dir.join("ca.pem"),
            );
            save_cert_bundle(&cert, &cert_p, &key_p, &ca_p)
                .map_err(|e| ClusterError::Pki(e.to_string()))?;
            let mut cfg = AgentConfig::default();
            cfg.node.id = id.clone();
            cfg.node.cluster = "chaos".into();
            cfg.node.data_dir = dir.join(DATA);
            cfg.node.listen = *addr;
            cfg.node.seeds = addrs.iter().filter(|a| *a != addr).copied().collect();
            cfg.node.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            cfg.tls.ca_cert = ca_p;
            cfg.tls.cert = cert_p;
            cfg.tls.key = key_p;
            cfg.driver.sim.host = NodeId::from(id.as_str());
            cfg.driver.sim.seed = i as u64 + 1;
            cfg.driver.sim.state_dir = dir.join(DATA).join("sim-state");
            cfg.driver.sim.mode = ballast_node::driver::sim::SimMode::Process;
            cfg.driver.sim.vm_command = vec![bin.display().to_string(), "sim-vm".into()];
            tune(&mut cfg);
            let config = dir.join("agent.toml");
            std::fs::write(&config, cfg.to_toml()).map_err(io("write agent.toml"))?;
            nodes.push(Node {
                id: NodeId::from(id.as_str()),
                addr: *addr,
                dir,
                config,
                child: None,
                starts: 0,
                paused: false,
                wiped: false,
            });
        }
        Ok(Self {
            nodes,
            admin,
            bin,
            crashes: Vec::new(),
        })
    }

    /// Starts node `i`'s agent (on its existing store), with `failpoint` armed if given.
    pub fn start(&mut self, i: usize, failpoint: Option<&str>) -> Result<(), ClusterError> {
        let n = &mut self.nodes[i];
        if n.child.is_some() || n.wiped {
            return Ok(());
        }
        n.starts += 1;
        let log = std::fs::File::create(n.dir.join(format!("agent-{}.log", n.starts)))
            .map_err(io("agent log"))?;
        let child = Command::new(&self.bin)
            .args(["agent", "--config"])
            .arg(&n.config)
            .env(
                "BALLAST_LOG",
                std::env::var("BALLAST_CHAOS_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env(FAILPOINTS_ENV, failpoint.unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| ClusterError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// SIGKILLs node `i`'s agent and reaps it (its VM processes live on).
    pub fn kill_agent(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.paused = false;
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
        if let Some(pid) = self.pid(i) {
            if kill_process(pid, Signal::STOP).is_ok() {
                self.nodes[i].paused = true;
            }
        }
    }

    /// SIGCONTs node `i`'s agent.
    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.pid(i) {
            let _ = kill_process(pid, Signal::CONT);
        }
        self.nodes[i].paused = false;
    }

    fn pid(&self, i: usize) -> Option<Pid> {
        let id = self.nodes[i].child.as_ref()?.id();
        Pid::from_raw(i32::try_from(id).ok()?)
    }

    /// Every local UDP port node `i`'s agent holds now: its QUIC endpoint, and the
    /// sockets of RPC clients it made since (the agent renews its client on a fresh
    /// socket when a peer restarts). Read from `/proc/PID/fd` and `/proc/PID/net/udp`.
    pub fn udp_ports(&self, i: usize) -> Vec<u16> {
        let mut ports = vec![self.nodes[i].addr.port()];
        let Some(pid) = self.nodes[i].child.as_ref().map(Child::id) else {
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

    /// Whether node `i`'s agent has exited (a failpoint hit); reaps it.
    pub fn exited(&mut self, i: usize) -> bool {
        let n = &mut self.nodes[i];
        let Some(c) = n.child.as_mut() else {
            return true;
        };
        match c.try_wait() {
            Ok(Some(_)) => {
                n.child = None;
                true
            }
            _ => false,
        }
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
        let n = &self.nodes[i];
        let text = std::fs::read_to_string(n.dir.join(format!("agent-{}.log", n.starts)))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.kill_agent(i);
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
