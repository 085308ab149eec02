//! `ballast bench handoff --driver qemu`: the cost of ballast's handoff over a bare QEMU
//! live migration. In one run: a few bare QMP migrations of the demo VM
//! ([`bench_qmp_migrate`]: `migrate` to `completed`, no agent), a few bare incoming
//! launches (`prepare_incoming`: a paused QEMU listening for the stream), then the same
//! VM moved back and forth by two in-process agents on the qemu driver (real sled, real
//! QUIC + TLS on loopback), each move timed from the admin `MoveVm` call to the source's
//! commit point. Every QEMU process is killed when the run ends, also on error.

use super::super::admin_client::AdminClient;
use super::super::runtime::Agent;
use super::{agent_config, free_port, percentile, settle, setup, BenchError, TempDir};
use crate::config::{AgentConfig, DriverKind};
use crate::driver::qemu::bench::bench_qmp_migrate;
use crate::driver::qemu::guest::{demo_spec, write_boot_image};
use crate::driver::qemu::{QemuConfig, QemuDriver};
use crate::driver::Driver;
use ballast_gossip::{create_ca, issue_admin_cert, issue_node_cert, save_cert_bundle};
use ballast_store::{LoadFactors, NodeId, VmId, VmSpec};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a VM runs before it is migrated (bare and handoff alike).
const WARMUP: Duration = Duration::from_millis(300);

/// Interval of the driver's `query-migrate` polls in this bench, in milliseconds (the
/// default, 50 ms, would add up to that much to every handoff's `migrate_out`).
pub const BENCH_POLL_MS: u64 = 5;

/// The agents' reconciliation interval in this bench, in milliseconds (below
/// [`WARMUP`]).
const RECONCILE_MS: u64 = 100;

/// How to run the qemu handoff benchmark.
#[derive(Clone, Debug)]
pub struct QemuHandoffBenchOptions {
    /// Moves timed (and bare migrations / launches timed, each).
    pub moves: usize,
    /// Memory of the VM, in MiB.
    pub memory_mib: u64,
    /// The QEMU settings (binary, accel, downtime, bandwidth...); `state_dir` and
    /// `port_range` are replaced by the bench's own.
    pub qemu: QemuConfig,
}

impl Default for QemuHandoffBenchOptions {
    fn default() -> Self {
        let mut qemu = QemuConfig::default();
        qemu.timeouts.poll_ms = BENCH_POLL_MS;
        Self {
            moves: 5,
            memory_mib: 128,
            qemu,
        }
    }
}

/// The figures (medians over `moves` samples each).
#[derive(Clone, Debug, Serialize)]
pub struct QemuHandoffBenchReport {
    /// The driver benchmarked (`qemu`).
    pub driver: &'static str,
    /// Whether `/dev/kvm` was usable (else TCG).
    pub kvm: bool,
    /// Memory of the VM, MiB.
    pub memory_mib: u64,
    /// Moves timed (all committed unless `aborted` says otherwise).
    pub moves: usize,
    /// Median bare QMP migration, `migrate` to `completed`, ms.
    pub qmp_migrate_ms: f64,
    /// Median of QEMU's own downtime of the bare migrations, ms.
    pub qmp_downtime_ms: f64,
    /// Median bare launch of an incoming copy (`prepare_incoming`), ms.
    pub qemu_prepare_ms: f64,
    /// Median handoff, admin `MoveVm` to the source's commit point, ms.
    pub handoff_ms: f64,
    /// Slowest handoff, ms.
    pub handoff_max_ms: f64,
    /// `handoff_ms / qmp_migrate_ms`.
    pub ratio: f64,
    /// `handoff_ms - qmp_migrate_ms`.
    pub added_ms: f64,
    /// `handoff_ms / (qemu_prepare_ms + qmp_migrate_ms)`: the agent's share over what
    /// QEMU itself needs for a migration to a freshly started destination.
    pub ratio_with_prepare: f64,
    /// The driver's migration poll interval used, ms.
    pub poll_ms: u64,
    /// Moves that aborted (should be 0).
    pub aborted: usize,
}

/// Kills every QEMU process under the given state directories when dropped.
struct KillQemu(Vec<PathBuf>);

impl Drop for KillQemu {
    fn drop(&mut self) {
        for d in &self.0 {
            QemuDriver::kill_all_in(d);
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn run_err<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Run(e.to_string())
}

/// Ports of a side (`i` = 0, 1 or 2), below the usual ephemeral range.
fn ports_of(i: u16) -> [u16; 2] {
    let base = 24_000 + (std::process::id() % 200) as u16 * 30 + 10 * i;
    [base, base + 9]
}

fn qemu_side(opts: &QemuHandoffBenchOptions, state_dir: PathBuf, side: u16) -> QemuConfig {
    QemuConfig {
        state_dir,
        port_range: ports_of(side),
        ..opts.qemu.clone()
    }
}

/// Runs the benchmark (inside a tokio runtime).
pub async fn bench_handoff_qemu(
    opts: QemuHandoffBenchOptions,
) -> Result<QemuHandoffBenchReport, BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "ballast-qb-{}-{}",
        std::process::id(),
        super::super::shared::Shared::unix_ms()
    ));
    std::fs::create_dir_all(&dir).map_err(setup)?;
    let _cleanup = TempDir(dir.clone());
    let states = [dir.join("a/q"), dir.join("b/q"), dir.join("bare")];
    let _kill = KillQemu(states.to_vec());
    let image = dir.join("boot.img");
    write_boot_image(&image).map_err(setup)?;
    let mut spec = demo_spec(&image, opts.memory_mib);
    spec.target = Some(LoadFactors {
        cpu: 0.5,
        io: 0.0,
        mem: 0.0,
    });
    let n = opts.moves.max(1);

    let bare_cfg = qemu_side(&opts, states[2].clone(), 2);
    let (mut qmp_ms, mut downtime) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = bench_qmp_migrate(&bare_cfg, &spec, WARMUP)
            .await
            .map_err(run_err)?;
        qmp_ms.push(t.qmp_migrate_ms);
        downtime.push(t.downtime_ms.map_or(0.0, |d| d as f64));
    }
    let prepare_ms = bare_prepares(&bare_cfg, &spec, n).await?;

    let (handoffs, aborted) = agent_moves(&opts, &dir, &states, &spec, n).await?;
    let (qmp, prep, handoff) = (median(qmp_ms), median(prepare_ms), median(handoffs.clone()));
    Ok(QemuHandoffBenchReport {
        driver: "qemu",
        kvm: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        memory_mib: opts.memory_mib,
        moves: handoffs.len(),
        qmp_migrate_ms: qmp,
        qmp_downtime_ms: median(downtime),
        qemu_prepare_ms: prep,
        handoff_ms: handoff,
        handoff_max_ms: handoffs.iter().copied().fold(0.0, f64::max),
        ratio: if qmp > 0.0 { handoff / qmp } else { 0.0 },
        added_ms: handoff - qmp,
        ratio_with_prepare: if qmp + prep > 0.0 {
            handoff / (qmp + prep)
        } else {
            0.0
        },
        poll_ms: opts.qemu.timeouts.poll_ms,
        aborted,
    })
}

/// Times `n` launches of a paused incoming copy (each cancelled again).
async fn bare_prepares(cfg: &QemuConfig, spec: &VmSpec, n: usize) -> Result<Vec<f64>, BenchError> {
    let driver = QemuDriver::new(cfg.clone()).map_err(setup)?;
    let vm = VmId::from("bench-prepare");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        driver.prepare_incoming(&vm, spec).await.map_err(run_err)?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        driver.cancel_incoming(&vm).await.map_err(run_err)?;
    }
    Ok(out)
}

fn qemu_agent_config(
    opts: &QemuHandoffBenchOptions,
    dir: &Path,
    id: &str,
    listen: SocketAddr,
    seed: SocketAddr,
    state_dir: &Path,
    side: u16,
) -> AgentConfig {
    let mut c = agent_config(dir, id, listen, seed, 1);
    c.driver.kind = DriverKind::Qemu;
    c.driver.qemu = qemu_side(opts, state_dir.to_path_buf(), side);
    // The qemu driver's `resume_incoming` can run before QEMU has left `inmigrate` (the
    // source sees `completed` first); reconciliation then resumes the copy. Run it often
    // enough that the VM runs again before the next move.
    c.reconcile.interval_ms = RECONCILE_MS;
    c
}

/// Starts two agents on the qemu driver, creates the VM on `a` and moves it back and
/// forth `n` times; the handoff durations (ms) and the aborted moves.
async fn agent_moves(
    opts: &QemuHandoffBenchOptions,
    dir: &Path,
    states: &[PathBuf; 3],
    spec: &VmSpec,
    n: usize,
) -> Result<(Vec<f64>, usize), BenchError> {
    let ca = create_ca("bench").map_err(setup)?;
    let admin = issue_admin_cert(&ca, "bench").map_err(setup)?;
    let (pa, pb) = (free_port()?, free_port()?);
    let mut agents = Vec::new();
    for (side, (id, listen, seed)) in [("a", pa, pb), ("b", pb, pa)].into_iter().enumerate() {
        let cert = issue_node_cert(&ca, id, &[]).map_err(setup)?;
        let cfg = qemu_agent_config(opts, dir, id, listen, seed, &states[side], side as u16);
        save_cert_bundle(&cert, &cfg.tls.cert, &cfg.tls.key, &cfg.tls.ca_cert).map_err(setup)?;
        match Agent::start(cfg).await {
            Ok(agent) => agents.push(agent),
            Err(e) => {
                for a in agents {
                    a.shutdown().await;
                }
                return Err(setup(e));
            }
        }
    }
    let result = moves(&admin, pa, pb, spec, n).await;
    for a in agents {
        a.shutdown().await;
    }
    result
}

async fn moves(
    admin: &ballast_gossip::CertBundle,
    pa: SocketAddr,
    pb: SocketAddr,
    spec: &VmSpec,
    n: usize,
) -> Result<(Vec<f64>, usize), BenchError> {
    let ca = AdminClient::connect(admin, pa).map_err(run_err)?;
    let cb = AdminClient::connect(admin, pb).map_err(run_err)?;
    let (a, b) = (NodeId::from("a"), NodeId::from("b"));
    super::wait_for_pair(&ca, &cb).await?;
    let vm = VmId::from("bench-vm");
    ca.create_vm(&vm, spec, Some(&a), false)
        .await
        .map_err(run_err)?;
    let mut on_a = true;
    let (mut times, mut aborted) = (Vec::with_capacity(n), 0);
    for _ in 0..n {
        tokio::time::sleep(WARMUP).await;
        let (client, to) = if on_a { (&ca, &b) } else { (&cb, &a) };
        let t = Instant::now();
        let (committed, _) = client.move_vm(&vm, to).await.map_err(run_err)?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if committed {
            times.push(ms);
            on_a = !on_a;
        } else {
            aborted += 1;
        }
        settle(&ca, &cb).await?;
    }
    Ok((times, aborted))
}
