//! A local cluster of real `ballast agent` processes for the agent's integration tests:
//! a CA, node and admin certificates, one config per node (loopback ports, small
//! intervals, sim driver), start / SIGKILL / restart of each agent, admin clients, and
//! checks of I1 (each VM in exactly one schedule) and I2 (sim run logs). Every child
//! process is killed when the cluster is dropped, also when a test fails.

#![allow(dead_code)]

use ballast_gossip::{create_ca, issue_admin_cert, issue_node_cert, save_cert_bundle, CertBundle};
use ballast_node::agent::wire::StoreView;
use ballast_node::agent::AdminClient;
use ballast_node::driver::sim::{check_no_double_run, read_runlog, RunRecord, RUNLOG_FILE};
use ballast_store::{NodeId, VmId, VmState};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Knobs of one node's config.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    /// CPU cores of the host.
    pub cpu_cores: f64,
    /// Whether rounds run.
    pub balancing: bool,
    /// `in_process` or `process`.
    pub sim_mode: &'static str,
    /// Extra TOML appended to the config.
    pub extra: String,
}

impl Default for NodeOpts {
    fn default() -> Self {
        Self {
            cpu_cores: 16.0,
            balancing: true,
            sim_mode: "process",
            extra: String::new(),
        }
    }
}

/// One agent.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub starts: u32,
}

/// A cluster of agent processes in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ca: ballast_gossip::CaBundle,
    pub admin: CertBundle,
    pub nodes: Vec<Node>,
}

fn free_udp_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    s.local_addr().expect("local addr")
}

impl Cluster {
    /// Writes certificates and configs for `opts.len()` nodes named `n1`, `n2`...
    /// (not started).
    pub fn new(opts: &[NodeOpts]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = create_ca("test").expect("ca");
        let admin = issue_admin_cert(&ca, "ops").expect("admin cert");
        let addrs: Vec<SocketAddr> = opts.iter().map(|_| free_udp_port()).collect();
        let mut nodes = Vec::new();
        for (i, o) in opts.iter().enumerate() {
            let id = format!("n{}", i + 1);
            let ndir = dir.path().join(&id);
            std::fs::create_dir_all(&ndir).expect("node dir");
            let cert =
                issue_node_cert(&ca, &id, &["127.0.0.1".parse().expect("ip")]).expect("node cert");
            save_cert_bundle(
                &cert,
                &ndir.join("node.pem"),
                &ndir.join("node.key"),
                &ndir.join("ca.pem"),
            )
            .expect("save cert");
            let seeds: Vec<String> = addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| format!("\"{a}\""))
                .collect();
            let toml = format!(
                r#"[node]
id = "{id}"
cluster = "test"
data_dir = "data"
listen = "{addr}"
seeds = [{seeds}]
metrics_listen = "127.0.0.1:0"

[host]
cpu_cores = {cores}

[load]
mode = "target"
sample_interval_ms = 200

[policy]
cooldown_ms = 0

[balancing]
round_interval_ms = 300
round_jitter_ms = 150
session_timeout_ms = 3000
enabled = {balancing}

[gossip]
interval_ms = 100
rpc_timeout_ms = 3000
connect_timeout_ms = 2000

[handoff]
prepare_retry_ms = 300
prepare_timeout_ms = 3000
commit_retry_ms = 300
query_interval_ms = 300
store_retry_ms = 200
migrate_timeout_ms = 20000

[reconcile]
interval_ms = 1000

[driver]
kind = "sim"

[driver.sim]
migration_ms = 30
mode = "{mode}"
{extra}
"#,
                addr = addrs[i],
                seeds = seeds.join(", "),
                cores = o.cpu_cores,
                balancing = o.balancing,
                mode = o.sim_mode,
                extra = o.extra,
            );
            let config = ndir.join("agent.toml");
            std::fs::write(&config, toml).expect("write config");
            nodes.push(Node {
                id,
                addr: addrs[i],
                dir: ndir,
                config,
                child: None,
                starts: 0,
            });
        }
        Self {
            dir,
            ca,
            admin,
            nodes,
        }
    }

    /// Starts (or restarts) node `i`, with `failpoints` armed through the environment.
    pub fn start(&mut self, i: usize, failpoints: &str) {
        let n = &mut self.nodes[i];
        n.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join(format!("agent-{}.log", n.starts)))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(["agent", "--config"])
            .arg(&n.config)
            .env("BALLAST_LOG", "info,ballast_node::agent=debug")
            .env("BALLAST_FAILPOINTS", failpoints)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        n.child = Some(child);
    }

    /// Starts every node.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i, "");
        }
    }

    /// SIGKILLs node `i` and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether node `i`'s process has exited (then it is reaped).
    pub fn exited(&mut self, i: usize) -> bool {
        let Some(c) = self.nodes[i].child.as_mut() else {
            return true;
        };
        match c.try_wait() {
            Ok(Some(_)) => {
                self.nodes[i].child = None;
                true
            }
            _ => false,
        }
    }

    /// An admin client of node `i`.
    pub fn admin(&self, i: usize) -> AdminClient {
        AdminClient::connect_with_timeout(&self.admin, self.nodes[i].addr, Duration::from_secs(20))
            .expect("admin client")
    }

    /// The agents' logs of node `i`, concatenated.
    pub fn logs(&self, i: usize) -> String {
        let n = &self.nodes[i];
        (1..=n.starts)
            .filter_map(|k| std::fs::read_to_string(n.dir.join(format!("agent-{k}.log"))).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Prints the last `lines` lines of every node's agent logs to stderr: what a failed
    /// test leaves behind to explain itself (the temporary directory is removed).
    pub fn print_log_tails(&self, lines: usize) {
        for i in 0..self.nodes.len() {
            let logs = self.logs(i);
            let all: Vec<&str> = logs.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            eprintln!(
                "---- {} agent log, last {} of {} lines ----\n{}",
                self.nodes[i].id,
                tail.len(),
                all.len(),
                tail.join("\n")
            );
        }
    }

    /// Writes an admin bundle for the CLI (`--admin DIR`): the CA, the admin certificate
    /// and an `admin.toml` naming every node. Returns the directory.
    pub fn write_admin_bundle(&self) -> PathBuf {
        let dir = self.dir.path().join("ballast-admin");
        std::fs::create_dir_all(&dir).expect("bundle dir");
        save_cert_bundle(
            &self.admin,
            &dir.join("admin.pem"),
            &dir.join("admin.key"),
            &dir.join("ca.pem"),
        )
        .expect("save admin cert");
        let mut toml =
            "cluster = \"test\"\nca_cert = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n"
                .to_owned();
        for n in &self.nodes {
            toml.push_str(&format!(
                "\n[[nodes]]\nname = \"{}\"\naddr = \"{}\"\n",
                n.id, n.addr
            ));
        }
        std::fs::write(dir.join("admin.toml"), toml).expect("write admin.toml");
        dir
    }

    /// The sim run records of every node.
    pub fn run_records(&self) -> Vec<RunRecord> {
        let mut all = Vec::new();
        for n in &self.nodes {
            let p = n.dir.join("data").join("sim-state").join(RUNLOG_FILE);
            if p.exists() {
                all.extend(read_runlog(&p).expect("runlog"));
            }
        }
        all
    }

    /// Asserts I2 over the run logs (process mode: VMs survive agent kills).
    pub fn assert_no_double_run(&self) {
        let v = check_no_double_run(&self.run_records(), &[]);
        assert!(v.is_empty(), "double runs: {v:?}");
    }

    /// Snapshots of all nodes (None for a node that does not answer).
    pub async fn snapshots(&self) -> Vec<Option<StoreView>> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            out.push(self.admin(i).snapshot().await.ok());
        }
        out
    }

    /// Waits until every node answers `status` and sees all others as peers.
    pub async fn wait_membership(&self, bound: Duration) {
        let want = self.nodes.len() - 1;
        wait_until(bound, "full membership", || async {
            for i in 0..self.nodes.len() {
                match self.admin(i).status().await {
                    Ok(s) if s.peers.len() == want => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &mut self.nodes {
                let state = match n.child.as_mut().map(Child::try_wait) {
                    None => "not running (killed by the test or never started)".to_owned(),
                    Some(Ok(None)) => "running".to_owned(),
                    Some(Ok(Some(status))) => format!("EXITED by itself: {status}"),
                    Some(Err(e)) => format!("unknown: {e}"),
                };
                eprintln!("---- {} agent process: {state}", n.id);
            }
            self.print_log_tails(60);
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Rewrites `key = old` to `key = new` in a node's config (the shared template has no
/// knob for it); panics when the line is not there.
pub fn set_in_config(path: &Path, old: &str, new: &str) {
    let text = std::fs::read_to_string(path).expect("read config");
    assert!(text.contains(old), "{old:?} not in {}", path.display());
    std::fs::write(path, text.replacen(old, new, 1)).expect("write config");
}

/// Polls `check` every 100 ms until it holds; panics after `bound`.
pub async fn wait_until<F, Fut>(bound: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < bound, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where each VM is held, over all answering nodes: `vm -> [(node, state, epoch)]`.
pub fn holders(snaps: &[Option<StoreView>]) -> BTreeMap<VmId, Vec<(usize, VmState, u64)>> {
    let mut out: BTreeMap<VmId, Vec<(usize, VmState, u64)>> = BTreeMap::new();
    for (i, s) in snaps.iter().enumerate() {
        for e in s.iter().flat_map(|s| s.entries.iter()) {
            out.entry(e.vm.clone())
                .or_default()
                .push((i, e.state.clone(), e.epoch));
        }
    }
    out
}

/// True when every node answered, no handoff record remains, and each of `vms` is
/// `Running` in exactly one schedule (I1, resolved).
pub fn all_resolved(snaps: &[Option<StoreView>], vms: &[VmId]) -> bool {
    if snaps.iter().any(|s| s.is_none()) {
        return false;
    }
    if snaps.iter().flatten().any(|s| !s.transfers.is_empty()) {
        return false;
    }
    let h = holders(snaps);
    vms.iter().all(|vm| {
        h.get(vm)
            .is_some_and(|v| v.len() == 1 && v[0].1 == VmState::Running)
    }) && h.len() == vms.len()
}

/// A spec whose target load is `cpu` reference cores (and little memory).
pub fn spec(cpu: f64) -> ballast_store::VmSpec {
    ballast_store::VmSpec {
        vcpus: 1,
        memory_mib: 64,
        target: Some(ballast_store::LoadFactors {
            cpu,
            io: 0.0,
            mem: 0.0,
        }),
        driver_opts: BTreeMap::from([("cpu".to_owned(), format!("{cpu}"))]),
        ..Default::default()
    }
}

/// Node id `i` as a `NodeId`.
pub fn nid(c: &Cluster, i: usize) -> NodeId {
    NodeId::from(c.nodes[i].id.as_str())
}

/// Runs `f` on a 2-thread runtime with an overall bound.
pub fn run_bounded<Fut: Future<Output = ()>>(bound: Duration, f: Fut) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(bound, f)
            .await
            .expect("test exceeded its bound");
    });
}

/// The data directory of node `i`.
pub fn data_dir(c: &Cluster, i: usize) -> &Path {
    &c.nodes[i].dir
}
