//! `ballast bench handoff --driver sim`: two real agents in this process (real sled
//! stores, real QUIC + TLS on loopback, the in-process sim driver with instant
//! migrations) hand VMs back and forth; each handoff is timed from the admin `MoveVm`
//! call to the source's commit point. In the same run, the bare durable work of a
//! handoff — three sled transactions with flush and two loopback RPC round trips — is
//! timed too, so the report can give the handoff's cost as a ratio of it.
//!
//! [`qemu`]: the same between two agents on the qemu driver, next to a bare QMP
//! migration of the same VM (`ballast bench handoff --driver qemu`); [`libvirt`]: the
//! same between two libvirt hosts, next to `virsh migrate` (`--driver libvirt`).

#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod qemu;

use super::admin_client::AdminClient;
use super::runtime::Agent;
use crate::config::{AgentConfig, DriverKind};
use crate::load::LoadMode;
use crate::units::Millis;
use ballast_gossip::{create_ca, issue_admin_cert, issue_node_cert, save_cert_bundle};
use ballast_store::{LoadFactors, NodeId, ScheduleEntry, Store, VmId, VmSpec, VmState};
use serde::Serialize;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How to run the handoff benchmark.
#[derive(Clone, Debug)]
pub struct HandoffBenchOptions {
    /// Handoffs timed one after another.
    pub handoffs: usize,
    /// VMs on the pair (moved round-robin).
    pub vms: usize,
    /// Handoffs run at once in the throughput phase (`max_outgoing` of each agent).
    pub concurrency: usize,
    /// Samples of the bare durable work.
    pub raw_samples: usize,
}

impl Default for HandoffBenchOptions {
    fn default() -> Self {
        Self {
            handoffs: 200,
            vms: 16,
            concurrency: 8,
            raw_samples: 200,
        }
    }
}

/// The figures.
#[derive(Clone, Debug, Serialize)]
pub struct HandoffBenchReport {
    /// Handoffs timed sequentially (all committed).
    pub handoffs: usize,
    /// Median handoff duration (start to the source's commit point), ms.
    pub p50_ms: f64,
    /// 90th percentile of the same, ms.
    pub p90_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
    /// Slowest of the same, ms.
    pub max_ms: f64,
    /// Sequential handoffs per second (one at a time, back to back).
    pub sequential_per_s: f64,
    /// Handoffs per second with `concurrency` in flight between the pair.
    pub per_s: f64,
    /// Handoffs in flight in the throughput phase.
    pub concurrency: usize,
    /// Median of the bare durable work: 3 sled transactions with flush + 2 loopback RPC
    /// round trips, ms.
    pub raw_p50_ms: f64,
    /// `p99_ms / raw_p50_ms`.
    pub ratio: f64,
    /// Handoffs that aborted (should be 0).
    pub aborted: usize,
}

/// A bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Setting up (files, certificates, agents) failed; nothing is left running.
    #[error("setup: {0}")]
    Setup(#[source] Cause),
    /// A call during the run failed; the agents were stopped.
    #[error("run: {0}")]
    Run(#[source] Cause),
}

/// What a bench step failed on (an error of any layer, or a sentence).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

fn setup(e: impl Into<Cause>) -> BenchError {
    BenchError::Setup(e.into())
}

/// A loopback UDP socket for an agent, bound here and handed to it (no port is
/// released and bound again), and its address.
fn bound_socket() -> Result<(UdpSocket, SocketAddr), BenchError> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(setup)?;
    let addr = socket.local_addr().map_err(setup)?;
    Ok((socket, addr))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Removes the bench directory when dropped.
struct TempDir(PathBuf);

impl TempDir {
    /// A new directory `<system temp>/<prefix>-<pid>-<unix ms>`.
    fn create(prefix: &str) -> Result<Self, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            super::unix_ms()
        ));
        std::fs::create_dir_all(&dir).map_err(setup)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn agent_config(
    dir: &Path,
    id: &str,
    listen: SocketAddr,
    seed: SocketAddr,
    concurrency: usize,
) -> AgentConfig {
    let mut c = AgentConfig::default();
    c.node.id = id.to_owned();
    c.node.cluster = "bench".into();
    c.node.data_dir = dir.join(id);
    c.node.listen = listen;
    c.node.seeds = vec![seed];
    c.node.metrics_listen = None;
    c.tls.ca_cert = dir.join(format!("{id}-ca.pem"));
    c.tls.cert = dir.join(format!("{id}.pem"));
    c.tls.key = dir.join(format!("{id}.key"));
    c.load.mode = LoadMode::Target;
    c.balancing.enabled = false;
    let limit = std::num::NonZeroUsize::new(concurrency).unwrap_or(std::num::NonZeroUsize::MIN);
    c.balancing.max_outgoing = limit;
    c.balancing.max_incoming = limit;
    c.gossip.interval = Millis::new(100);
    c.driver.kind = DriverKind::Sim;
    c.driver.sim.state_dir = dir.join(id).join("sim-state");
    c.driver.sim.migration = Millis::new(0);
    c.reconcile.interval = Millis::new(60_000);
    c
}

/// Runs the benchmark (inside a tokio runtime).
pub async fn bench_handoff(opts: HandoffBenchOptions) -> Result<HandoffBenchReport, BenchError> {
    let tmp = TempDir::create("ballast-bench")?;
    let dir = tmp.path().to_path_buf();
    let ca = create_ca("bench").map_err(setup)?;
    let admin =
        issue_admin_cert(&ca, "bench", ballast_gossip::AdminRole::Operator).map_err(setup)?;
    let ((sa, pa), (sb, pb)) = (bound_socket()?, bound_socket()?);
    let mut agents = Vec::new();
    for (id, socket, listen, seed) in [("a", sa, pa, pb), ("b", sb, pb, pa)] {
        let cert = issue_node_cert(&ca, id, &[]).map_err(setup)?;
        let cfg = agent_config(&dir, id, listen, seed, opts.concurrency.max(1));
        save_cert_bundle(&cert, &cfg.tls.cert, &cfg.tls.key, &cfg.tls.ca_cert).map_err(setup)?;
        agents.push(Agent::start_on(cfg, Some(socket)).await.map_err(setup)?);
    }
    let result = run(&opts, &admin, pa, pb, &dir).await;
    for a in agents {
        a.shutdown().await;
    }
    result
}

/// Waits (at most 30 s) until each of the two agents lists the other as a peer.
pub(super) async fn wait_for_pair(ca: &AdminClient, cb: &AdminClient) -> Result<(), BenchError> {
    let run_err = |e: super::AdminClientError| BenchError::Run(e.into());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sa = ca.status().await.map_err(run_err)?;
        let sb = cb.status().await.map_err(run_err)?;
        if !sa.peers.is_empty() && !sb.peers.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Run(
                "the two agents did not see each other".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(
    opts: &HandoffBenchOptions,
    admin: &ballast_gossip::CertBundle,
    pa: SocketAddr,
    pb: SocketAddr,
    dir: &Path,
) -> Result<HandoffBenchReport, BenchError> {
    let run_err = |e: super::AdminClientError| BenchError::Run(e.into());
    let ca = AdminClient::connect(admin, pa).map_err(run_err)?;
    let cb = AdminClient::connect(admin, pb).map_err(run_err)?;
    let (a, b) = (NodeId::from("a"), NodeId::from("b"));
    wait_for_pair(&ca, &cb).await?;
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 16,
        target: Some(LoadFactors {
            cpu: 0.1,
            io: 0.0,
            mem: 0.0,
        }),
        ..VmSpec::default()
    };
    let vms: Vec<VmId> = (0..opts.vms.max(1))
        .map(|i| VmId::from(format!("bench-{i}")))
        .collect();
    for vm in &vms {
        ca.create_vm(vm, &spec, Some(&a), false)
            .await
            .map_err(run_err)?;
    }
    // Where each VM is: true = on a.
    let mut on_a = vec![true; vms.len()];
    let mut times = Vec::with_capacity(opts.handoffs);
    let mut aborted = 0;
    let seq_start = Instant::now();
    for k in 0..opts.handoffs {
        let i = k % vms.len();
        let (client, to) = if on_a[i] { (&ca, &b) } else { (&cb, &a) };
        let t = Instant::now();
        let (committed, _) = client.move_vm(&vms[i], to).await.map_err(run_err)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if committed {
            on_a[i] = !on_a[i];
        } else {
            aborted += 1;
        }
        // The next move of this VM needs the previous one settled on both sides.
        settle(&ca, &cb).await?;
    }
    let sequential_s = seq_start.elapsed().as_secs_f64();
    let per_s = throughput(opts, &ca, &cb, &vms, &mut on_a, &a, &b).await?;
    let raw = raw_samples(opts.raw_samples.max(1), &cb, dir).await?;
    times.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    let raw_p50 = percentile(&raw, 0.5);
    Ok(HandoffBenchReport {
        handoffs: times.len(),
        p50_ms: p50,
        p90_ms: percentile(&times, 0.9),
        p99_ms: p99,
        max_ms: percentile(&times, 1.0),
        sequential_per_s: times.len() as f64 / sequential_s.max(1e-9),
        per_s,
        concurrency: opts.concurrency,
        raw_p50_ms: raw_p50,
        ratio: if raw_p50 > 0.0 { p99 / raw_p50 } else { 0.0 },
        aborted,
    })
}

/// Waits until neither side has a handoff in flight (settling records included).
async fn settle(ca: &AdminClient, cb: &AdminClient) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = ca.status().await.map_err(|e| BenchError::Run(e.into()))?;
        let b = cb.status().await.map_err(|e| BenchError::Run(e.into()))?;
        if a.handoffs.is_empty() && b.handoffs.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Run("handoffs did not settle".into()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Moves every VM across, `concurrency` at a time, a few times; handoffs per second.
async fn throughput(
    opts: &HandoffBenchOptions,
    ca: &AdminClient,
    cb: &AdminClient,
    vms: &[VmId],
    on_a: &mut [bool],
    a: &NodeId,
    b: &NodeId,
) -> Result<f64, BenchError> {
    let width = opts.concurrency.max(1).min(vms.len());
    let mut done = 0usize;
    let start = Instant::now();
    for _round in 0..4 {
        for chunk in (0..vms.len()).collect::<Vec<_>>().chunks(width) {
            let calls = chunk.iter().map(|&i| {
                let (client, to) = if on_a[i] { (ca, b) } else { (cb, a) };
                let (client, to, vm) = (client.clone(), to.clone(), vms[i].clone());
                async move { client.move_vm(&vm, &to).await }
            });
            let results = join_all(calls).await;
            for (&i, r) in chunk.iter().zip(results) {
                if let Ok((true, _)) = r {
                    on_a[i] = !on_a[i];
                    done += 1;
                }
            }
            settle(ca, cb).await?;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// Runs a set of futures as tasks and collects their outputs (in order).
async fn join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// The bare durable work of one handoff, timed `n` times: three flushed sled
/// transactions (begin, commit, forget on a scratch store in the same file system) and
/// two loopback RPC round trips to an agent.
async fn raw_samples(n: usize, rpc_peer: &AdminClient, dir: &Path) -> Result<Vec<f64>, BenchError> {
    let store_dir = dir.join("raw-store");
    let store =
        tokio::task::spawn_blocking(move || Store::open(&store_dir, "bench", &NodeId::from("raw")))
            .await
            .map_err(setup)?
            .map_err(setup)?;
    let store = std::sync::Arc::new(store);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let vm = VmId::from(format!("raw-{i}"));
        let entry = ScheduleEntry {
            vm: vm.clone(),
            spec: VmSpec::default(),
            factors: LoadFactors::default(),
            state: VmState::Running,
            epoch: 0,
            pinned: false,
            last_moved_unix_ms: None,
        };
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.create(&entry))
            .await
            .map_err(setup)?
            .map_err(setup)?;
        let t = Instant::now();
        let s = store.clone();
        let vm2 = vm.clone();
        tokio::task::spawn_blocking(move || {
            let to = NodeId::from("other");
            let _begun = s.begin_migrate_out(&vm2, &to, 1)?;
            let _committed = s.commit_migrate_out(&vm2, 1)?;
            s.forget_transfer(&vm2, 1)
        })
        .await
        .map_err(setup)?
        .map(|_forgotten| ())
        .map_err(setup)?;
        for _ in 0..2 {
            rpc_peer
                .recent_sessions()
                .await
                .map_err(|e| BenchError::Run(e.into()))?;
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}
