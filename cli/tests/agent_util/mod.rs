//! A local cluster of real `ballast agent` processes for the agent's integration tests:
//! a CA, node and admin certificates, one config per node (loopback ports, small
//! intervals, sim driver), start / SIGKILL / restart of each agent, admin clients, and
//! checks of I1 (each VM in exactly one schedule) and I2 (sim run logs). Every child
//! process is killed when the cluster is dropped, also when a test fails.

#![allow(dead_code)]

use ballast_gossip::{save_cert_bundle, CertBundle};
use ballast_local_cluster::{write_node_certs, LocalCluster as Kit};
use ballast_node::agent::wire::StoreView;
use ballast_node::agent::AdminClient;
use ballast_node::driver::sim::{check_no_double_run, read_runlog, RunRecord, RUNLOG_FILE};
use ballast_store::{NodeId, VmId, VmState};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// The whole driver part of the config (`[driver]` and its tables) instead of the
    /// sim driver's; `extra` then follows it.
    pub driver: Option<String>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        Self {
            cpu_cores: 16.0,
            balancing: true,
            sim_mode: "process",
            extra: String::new(),
            driver: None,
        }
    }
}

/// One agent.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// A cluster of agent processes in a temporary directory (the local-cluster kit holds
/// each node's port for the whole test and hands it to every start of its agent).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ca: ballast_gossip::CaBundle,
    pub admin: CertBundle,
    pub nodes: Vec<Node>,
    kit: Kit,
}

impl Cluster {
    /// Writes certificates and configs for `opts.len()` nodes named `n1`, `n2`...
    /// (not started).
    pub fn new(opts: &[NodeOpts]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = (1..=opts.len()).map(|i| format!("n{i}")).collect();
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_ballast"));
        let kit = Kit::create(dir.path(), bin, "test", "ops", &names, |f| {
            let (id, i, o) = (f.name, f.index, &opts[f.index]);
            write_node_certs(f.ca, id, f.addr.ip(), f.dir).map_err(|e| e.to_string())?;
            let seeds: Vec<String> = f
                .addrs
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
sample_interval = "200ms"

[policy]
cooldown = "0s"

[balancing]
round_interval = "300ms"
round_jitter = "150ms"
session_timeout = "3s"
enabled = {balancing}

[gossip]
interval = "100ms"
rpc_timeout = "3s"
connect_timeout = "2s"

[handoff]
prepare_retry = "300ms"
prepare_timeout = "3s"
commit_retry = "300ms"
query_interval = "300ms"
store_retry = "200ms"
migrate_timeout = "20s"

[reconcile]
interval = "1s"

{driver}
{extra}
"#,
                addr = f.addr,
                seeds = seeds.join(", "),
                cores = o.cpu_cores,
                balancing = o.balancing,
                driver = o.driver.clone().unwrap_or_else(|| format!(
                    "[driver]\nkind = \"sim\"\n\n[driver.sim]\nmigration = \"30ms\"\nmode = \"{}\"",
                    o.sim_mode
                )),
                extra = o.extra,
            );
            let config = f.dir.join("agent.toml");
            std::fs::write(&config, toml).map_err(|e| e.to_string())?;
            Ok(config)
        })
        .expect("set up the cluster");
        let nodes = kit
            .nodes
            .iter()
            .map(|n| Node {
                id: n.name.clone(),
                addr: n.addr(),
                dir: n.dir.clone(),
                config: n.config.clone(),
            })
            .collect();
        Self {
            dir,
            ca: kit.ca.clone(),
            admin: kit.admin.clone(),
            nodes,
            kit,
        }
    }

    /// Runs node `i`'s agent under `launcher` from its next start on (e.g. `nsenter -t PID
    /// -m --`: the agent then sees that process's mount namespace).
    pub fn set_launcher(&mut self, i: usize, launcher: Vec<std::ffi::OsString>) {
        self.kit.nodes[i].launcher = launcher;
    }

    /// Starts (or restarts) node `i`, with `failpoints` armed through the environment.
    pub fn start(&mut self, i: usize, failpoints: &str) {
        let env = [
            (
                "BALLAST_LOG".into(),
                "info,ballast_node::agent=debug".into(),
            ),
            ("BALLAST_FAILPOINTS".into(), failpoints.into()),
        ];
        self.kit.start(i, &env).expect("start agent");
    }

    /// Starts every node.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i, "");
        }
    }

    /// SIGKILLs node `i` and waits for it.
    pub fn kill(&mut self, i: usize) {
        self.kit.kill(i);
    }

    /// Whether node `i`'s process has exited, or was never started or killed (then it
    /// is reaped).
    pub fn exited(&mut self, i: usize) -> bool {
        !self.kit.nodes[i].is_up() || self.kit.exited(i).is_some()
    }

    /// An admin client of node `i`.
    pub fn admin(&self, i: usize) -> AdminClient {
        AdminClient::connect_with_timeout(&self.admin, self.nodes[i].addr, Duration::from_secs(20))
            .expect("admin client")
    }

    /// The agents' logs of node `i`, concatenated.
    pub fn logs(&self, i: usize) -> String {
        self.kit.logs(i)
    }

    /// The port of the metrics endpoint node `i`'s agent logged as listening on (its
    /// config says port 0: the log must give the port the OS chose).
    pub fn logged_metrics_port(&self, i: usize) -> Option<u16> {
        let logs = self.logs(i);
        let line = logs
            .lines()
            .find(|l| l.contains("metrics endpoint listening"))?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))?;
        addr.rsplit(':').next()?.parse().ok()
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
            for i in 0..self.nodes.len() {
                let state = if !self.kit.nodes[i].is_up() {
                    "not running (killed by the test or never started)".to_owned()
                } else {
                    match self.kit.exited(i) {
                        None => "running".to_owned(),
                        Some(status) => format!("EXITED by itself: {status}"),
                    }
                };
                eprintln!("---- {} agent process: {state}", self.nodes[i].id);
            }
            self.print_log_tails(60);
        }
        for i in 0..self.nodes.len() {
            self.kit.kill(i);
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

/// The side of a handoff that a failpoint kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The node the VM leaves.
    Source,
    /// The node the VM goes to.
    Destination,
}

/// A failpoint scenario of a move n1 → n2.
#[derive(Clone, Copy, Debug)]
pub struct FailpointCase {
    /// The failpoint (`before:OP`, `after-send:MSG`...).
    pub name: &'static str,
    /// The side armed with it.
    pub side: Side,
    /// Whether the migration must fail (the step is on the abort path).
    pub fail_migration: bool,
    /// Whether the step is on the path of the scenario, so the agent must die there.
    pub must_fire: bool,
}

const fn case(
    name: &'static str,
    side: Side,
    fail_migration: bool,
    must_fire: bool,
) -> FailpointCase {
    FailpointCase {
        name,
        side,
        fail_migration,
        must_fire,
    }
}

/// Every handoff failpoint, with the side and path on which it fires.
pub const FAILPOINT_CASES: &[FailpointCase] = &[
    case("before:begin_migrate_out", Side::Source, false, true),
    case("after:begin_migrate_out", Side::Source, false, true),
    case("before-send:prepare", Side::Source, false, true),
    case("after-send:prepare", Side::Source, false, true),
    case("before:commit_migrate_out", Side::Source, false, true),
    case("after:commit_migrate_out", Side::Source, false, true),
    case("before-send:commit", Side::Source, false, true),
    case("after-send:commit", Side::Source, false, true),
    case("before:forget_transfer", Side::Source, false, true),
    case("after:forget_transfer", Side::Source, false, true),
    case("before:abort_migrate_out", Side::Source, true, true),
    case("after:abort_migrate_out", Side::Source, true, true),
    case("before-send:abort", Side::Source, true, true),
    case("after-send:abort", Side::Source, true, true),
    case("before:accept_incoming", Side::Destination, false, true),
    case("after:accept_incoming", Side::Destination, false, true),
    case("before-send:prepared", Side::Destination, false, true),
    case("after-send:prepared", Side::Destination, false, true),
    case("before:promote_incoming", Side::Destination, false, true),
    case("after:promote_incoming", Side::Destination, false, true),
    case("before-send:commit_ack", Side::Destination, false, true),
    case("after-send:commit_ack", Side::Destination, false, true),
    case("before:drop_incoming", Side::Destination, true, true),
    case("after:drop_incoming", Side::Destination, true, true),
    case("before-send:query_outcome", Side::Destination, false, false),
    case("before-send:outcome", Side::Source, false, false),
];

/// The case of failpoint `name`; panics when there is none.
pub fn failpoint_case(name: &str) -> FailpointCase {
    *FAILPOINT_CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no failpoint case {name:?}"))
}
