//! `ballast bench handoff --driver qemu`: the cost of ballast's handoff over a bare QEMU
//! live migration. In one run: `count` bare migrations of the demo VM done by hand over
//! QMP ([`BareMigrations`]: launch the destination with `-incoming defer`,
//! `migrate-incoming`, `migrate`, wait for `completed`, `cont`; no agent; one VM moved
//! back and forth, one untimed migration first), alternating with moves of another VM
//! back and forth by two in-process agents on the qemu driver (real sled, real QUIC +
//! TLS on loopback); both VMs run throughout. Both are timed to the same end point: the
//! destination QEMU's `RESUME` event (the VM runs there), read with QEMU's timestamp
//! from a second QMP monitor; a handoff's clock starts at the admin `MoveVm` call, a
//! bare sequence's when it launches the destination. Every QEMU process is killed when
//! the run ends, also on error.

use super::super::admin_client::AdminClient;
use super::super::runtime::Agent;
use super::{agent_config, bound_socket, percentile, settle, setup, BenchError, TempDir};
use crate::config::{AgentConfig, DriverKind};
use crate::driver::qemu::bench::{
    incoming_resumed_at, ms_between, tap_args, BareMigrations, EventTap, QmpMigrateTiming,
};
use crate::driver::qemu::guest::{
    demo_spec, disk_writer_counter, write_boot_image, write_disk_writer_image, COUNTER_BYTES,
};
use crate::driver::qemu::{QemuConfig, QemuDriver};
use crate::units::Millis;
use ballast_gossip::{create_ca, issue_admin_cert, issue_node_cert, save_cert_bundle};
use ballast_store::{LoadFactors, NodeId, VmId, VmSpec};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const MIB: u64 = 1024 * 1024;

/// How long a VM runs before it is migrated (bare and handoff alike).
const WARMUP: Duration = Duration::from_millis(300);

/// Interval of the driver's `query-migrate` polls in this bench, in milliseconds (the
/// default, 50 ms, would add up to that much to every handoff's `migrate_out`).
pub const BENCH_POLL_MS: u64 = 5;

/// The agents' reconciliation interval in this bench, in milliseconds (below
/// [`WARMUP`]).
const RECONCILE_MS: u64 = 100;

/// Bound of the waits for a QEMU event (the destination's `RESUME`, the source's `STOP`).
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// How to run the qemu handoff benchmark.
#[derive(Clone, Debug)]
pub struct QemuHandoffBenchOptions {
    /// Moves timed (and bare migrations / launches timed, each).
    pub moves: usize,
    /// Memory of the VM, in MiB.
    pub memory_mib: u64,
    /// The QEMU settings (binary, accel, downtime, bandwidth...); `state_dir`,
    /// `image_dir` and `port_range` are replaced by the bench's own.
    pub qemu: QemuConfig,
    /// `None`: the demo VM's disk is on storage both sides share; `Some`: the VM (the
    /// disk-writer guest) has a local disk of this size, copied by every move.
    pub local_disk: Option<LocalDisk>,
}

impl Default for QemuHandoffBenchOptions {
    fn default() -> Self {
        let mut qemu = QemuConfig::default();
        qemu.timeouts.poll = Millis::new(BENCH_POLL_MS);
        Self {
            moves: 5,
            memory_mib: 128,
            qemu,
            local_disk: None,
        }
    }
}

/// The figures (medians over `moves` samples each). Every `*_ms` is milliseconds of wall
/// time. End point of both the bare sequence and the handoff: the destination QEMU's
/// `RESUME` event, i.e. the VM runs on the destination.
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
    /// The baseline (median): a bare QMP migration as an operator does it by hand, from
    /// launching the destination QEMU (`-incoming defer`) to the destination's `RESUME`
    /// after `migrate-incoming`, `migrate`, `completed` and `cont` (with local disks:
    /// the destination's NBD exports, the mirrors until ready, then the memory, then
    /// the mirrors completed and the exports removed).
    pub bare_p50_ms: f64,
    /// Part of the baseline: launching the paused destination until it listens.
    pub qemu_launch_ms: f64,
    /// Part of the baseline: `migrate` on the source until it reports `completed`.
    pub qmp_migrate_only_ms: f64,
    /// Part of the baseline: from `completed` to the destination's `RESUME`.
    pub qmp_cont_ms: f64,
    /// Bare: how long the guest did not run (source `STOP` to destination `RESUME`).
    pub qmp_guest_paused_ms: f64,
    /// Bare: QEMU's own downtime figure (switchover until the last state is sent).
    pub qmp_downtime_ms: f64,
    /// The handoff (median): admin `MoveVm` call to the destination's `RESUME`.
    pub p50_ms: f64,
    /// Slowest handoff, ms.
    pub max_ms: f64,
    /// The handoff: admin `MoveVm` call to the source's commit point (`MoveVm` returns).
    pub handoff_commit_ms: f64,
    /// Handoff: how long the guest did not run (source `STOP` to destination `RESUME`).
    pub handoff_guest_paused_ms: f64,
    /// `p50_ms / bare_p50_ms` (goal: at most 1.2).
    pub ratio: f64,
    /// `p50_ms - bare_p50_ms` (goal: at most 50; 100 with local disks).
    pub added_ms: f64,
    /// `p50_ms / qmp_migrate_only_ms`: against the migration alone, as if the
    /// destination QEMU cost nothing to start.
    pub ratio_migrate_only: f64,
    /// The driver's migration poll interval used, ms (QMP events end the waits earlier).
    pub poll_ms: u64,
    /// Moves that aborted (should be 0).
    pub aborted: usize,
    /// `shared` (both sides open one image) or `local` (the disk is copied).
    pub storage: &'static str,
    /// Local disks: the disk's virtual size, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Local disks: MiB of data in it (the rest reads as zeros).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_data_mib: Option<u64>,
    /// Local disks: whether after every move the destination's disk equalled the
    /// source's at the switchover in every byte outside the guest's counter sector, with
    /// the destination's counter at or past the switchover's (no write lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_identical: Option<bool>,
}

/// A disk of the VM on local storage, copied by every move.
#[derive(Clone, Copy, Debug)]
pub struct LocalDisk {
    /// Virtual size, MiB.
    pub size_mib: u64,
    /// MiB of pseudo-random data written at its start.
    pub data_mib: u64,
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

fn run_err(e: impl Into<super::Cause>) -> BenchError {
    BenchError::Run(e.into())
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
    let tmp = TempDir::create("ballast-qb")?;
    let dir = tmp.path().to_path_buf();
    let states = [dir.join("a/q"), dir.join("b/q"), dir.join("bare")];
    let _kill = KillQemu(states.to_vec());
    let n = opts.moves.max(1);
    let bare_cfg = qemu_side(&opts, states[2].clone(), 2);
    let (spec, bare_spec) = match opts.local_disk {
        None => shared_specs(&dir, opts.memory_mib)?,
        Some(disk) => {
            let local =
                |image_dir: &Path, name: &str| local_spec(image_dir, name, disk, opts.memory_mib);
            let bare_dir = BareMigrations::image_dir(&bare_cfg, 0);
            (
                local(&image_dir_of(&states[0]), "bench")?,
                local(&bare_dir, "bench-bare")?,
            )
        }
    };

    // Bare sequences and handoffs alternate, one each per round, so a change in the
    // machine's load touches both figures alike; both VMs (the bare one and the
    // agents') run throughout, so each kind of sample shares the machine with the same
    // load. The bare VM moves back and forth like the agents' VM, after one untimed
    // migration (warm caches, a booted VM).
    let mut bare_vm = BareMigrations::start(&bare_cfg, &bare_spec)
        .await
        .map_err(run_err)?;
    if let Err(e) = bare_vm.migrate(WARMUP).await {
        bare_vm.stop().await;
        return Err(run_err(e));
    }
    let result = agent_moves(&opts, &dir, &states, &spec, n, &mut bare_vm).await;
    bare_vm.stop().await;
    let (moves, bare) = result?;
    for t in &bare {
        tracing::info!(
            total_ms = t.total_ms,
            launch_ms = t.launch_ms,
            migrate_ms = t.migrate_ms,
            cont_ms = t.cont_ms,
            guest_paused_ms = t.guest_paused_ms,
            "bare sample"
        );
    }
    let col = |f: fn(&QmpMigrateTiming) -> f64| median(bare.iter().map(f).collect());
    let qmp = col(|t| t.total_ms);
    let migrate_only = col(|t| t.migrate_ms);
    let handoff = median(moves.to_resume.clone());
    let ratio = |base: f64| if base > 0.0 { handoff / base } else { 0.0 };
    Ok(QemuHandoffBenchReport {
        driver: "qemu",
        kvm: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        memory_mib: opts.memory_mib,
        moves: moves.to_resume.len(),
        bare_p50_ms: qmp,
        qemu_launch_ms: col(|t| t.launch_ms),
        qmp_migrate_only_ms: migrate_only,
        qmp_cont_ms: col(|t| t.cont_ms),
        qmp_guest_paused_ms: col(|t| t.guest_paused_ms),
        qmp_downtime_ms: col(|t| t.downtime_ms.map_or(0.0, |d| d as f64)),
        p50_ms: handoff,
        max_ms: moves.to_resume.iter().copied().fold(0.0, f64::max),
        handoff_commit_ms: median(moves.to_commit),
        handoff_guest_paused_ms: median(moves.paused),
        ratio: ratio(qmp),
        added_ms: handoff - qmp,
        ratio_migrate_only: ratio(migrate_only),
        poll_ms: opts.qemu.timeouts.poll.get(),
        aborted: moves.aborted,
        storage: if opts.local_disk.is_some() {
            "local"
        } else {
            "shared"
        },
        disk_mib: opts.local_disk.map(|d| d.size_mib),
        disk_data_mib: opts.local_disk.map(|d| d.data_mib),
        disk_identical: opts.local_disk.map(|_| moves.disks_identical),
    })
}

/// The target load of the bench VMs.
fn bench_target() -> Option<LoadFactors> {
    Some(LoadFactors {
        cpu: 0.5,
        io: 0.0,
        mem: 0.0,
    })
}

/// The demo VM on an image both sides open, and the bare VM's (its own image: QEMU
/// locks a writable image against a second VM).
fn shared_specs(dir: &Path, memory_mib: u64) -> Result<(VmSpec, VmSpec), BenchError> {
    let spec = |name: &str| -> Result<VmSpec, BenchError> {
        let image = dir.join(name);
        write_boot_image(&image).map_err(setup)?;
        Ok(VmSpec {
            target: bench_target(),
            ..demo_spec(&image, memory_mib)
        })
    };
    Ok((spec("boot.img")?, spec("boot-bare.img")?))
}

/// The disk-writer VM on the local qcow2 disk `NAME.qcow2` made in `image_dir`.
fn local_spec(
    image_dir: &Path,
    name: &str,
    disk: LocalDisk,
    memory_mib: u64,
) -> Result<VmSpec, BenchError> {
    std::fs::create_dir_all(image_dir).map_err(setup)?;
    let raw = image_dir.join(format!("{name}.raw"));
    let file = format!("{name}.qcow2");
    write_disk_writer_image(&raw, disk.size_mib * MIB, disk.data_mib, 0xbe4c).map_err(setup)?;
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(image_dir.join(&file))
        .output()
        .map_err(setup)?;
    let _ = std::fs::remove_file(&raw);
    if !out.status.success() {
        return Err(setup(std::io::Error::other(format!(
            "qemu-img convert: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))));
    }
    let mut spec = VmSpec {
        vcpus: 1,
        memory_mib,
        disks: vec![file],
        target: bench_target(),
        ..VmSpec::default()
    };
    spec.driver_opts.insert("storage".into(), "local".into());
    Ok(spec)
}

/// The image directory of the agent whose driver state is `state_dir`.
fn image_dir_of(state_dir: &Path) -> PathBuf {
    state_dir.with_file_name("img")
}

/// The guest-visible bytes of the disk image at `path` (converted to raw).
fn disk_bytes(path: &Path) -> Result<Vec<u8>, BenchError> {
    let raw = path.with_extension("cmp.raw");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-U", "-q", "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .output()
        .map_err(run_err)?;
    if !out.status.success() {
        return Err(run_err(std::io::Error::other(format!(
            "qemu-img convert {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))));
    }
    let bytes = std::fs::read(&raw).map_err(run_err)?;
    let _ = std::fs::remove_file(&raw);
    Ok(bytes)
}

/// How the destination's disk compares with the source's copy kept at the switchover.
#[derive(Debug, PartialEq, Eq)]
enum DiskComparison {
    /// Every byte outside the guest's counter sector equal, and the destination's
    /// counter at or past the switchover's (the guest writes on after resuming there).
    Same,
    /// A byte outside the counter sector differs; the first such offset.
    DataDiffers { offset: usize },
    /// The destination's counter is behind the switchover's: a write was lost.
    CounterBehind {
        at_switchover: Option<u32>,
        destination: Option<u32>,
    },
    /// The source kept no copy (or several) at the switchover.
    NoKeptCopy,
}

/// Compares a disk kept at the switchover with the destination's. The counter sector
/// (LBA 1) is the guest's own: it writes the whole sector on every tick, so only its
/// counter's order is checked there (`None`, not written yet, comes first).
fn compare_disks(kept: &[u8], dest: &[u8]) -> DiskComparison {
    let sector = COUNTER_BYTES.start..COUNTER_BYTES.start + 512;
    let outside = |b: &[u8]| -> (Vec<u8>, usize) {
        let mut v = b.to_vec();
        if let Some(s) = v.get_mut(sector.clone()) {
            s.fill(0);
        }
        (v, b.len())
    };
    let ((k, klen), (d, dlen)) = (outside(kept), outside(dest));
    if let Some(offset) = k.iter().zip(&d).position(|(a, b)| a != b) {
        return DiskComparison::DataDiffers { offset };
    }
    if klen != dlen {
        return DiskComparison::DataDiffers {
            offset: klen.min(dlen),
        };
    }
    let (at_switchover, destination) = (disk_writer_counter(kept), disk_writer_counter(dest));
    if destination < at_switchover {
        return DiskComparison::CounterBehind {
            at_switchover,
            destination,
        };
    }
    DiskComparison::Same
}

/// How long the bench waits for the source to keep its disk after a commit (the source
/// retires it when it quits its copy, a step after the commit) and for the guest's first
/// write.
const DISK_WAIT: Duration = Duration::from_secs(30);

/// Waits (bounded by [`DISK_WAIT`]) until the disk-writer guest has written its
/// counter to the disk at `path`, so that every move carries the guest's writes.
async fn guest_wrote(path: &Path) -> Result<(), BenchError> {
    let deadline = Instant::now() + DISK_WAIT;
    while disk_writer_counter(&disk_bytes(path)?).is_none() {
        if Instant::now() >= deadline {
            return Err(run_err(std::io::Error::other(format!(
                "the guest wrote nothing to {} within {} s",
                path.display(),
                DISK_WAIT.as_secs()
            ))));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The source's disk files kept (renamed) in `dir` after a move.
fn kept_copies(dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    Ok(std::fs::read_dir(dir)
        .map_err(run_err)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".qcow2.moved-"))
        .collect())
}

/// After a committed move of the local-disk VM from `from` to `to`: how the disk on `to`
/// compares with the source's copy kept at the switchover (which is then deleted). Waits
/// (bounded) for the source to keep it: the commit returns before the source quits.
async fn same_disk(from: &Path, to: &Path) -> Result<DiskComparison, BenchError> {
    let deadline = Instant::now() + DISK_WAIT;
    let kept = loop {
        let mut kept = kept_copies(from)?;
        if kept.len() == 1 {
            break kept.remove(0);
        }
        if kept.len() > 1 || Instant::now() >= deadline {
            tracing::warn!(
                copies = kept.len(),
                "bench: the source kept no single copy of its disk"
            );
            return Ok(DiskComparison::NoKeptCopy);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (kept_bytes, dest_bytes) = (disk_bytes(&kept)?, disk_bytes(&to.join("bench.qcow2"))?);
    std::fs::remove_file(&kept).map_err(run_err)?;
    let comparison = compare_disks(&kept_bytes, &dest_bytes);
    tracing::info!(
        at_switchover = ?disk_writer_counter(&kept_bytes),
        destination = ?disk_writer_counter(&dest_bytes),
        "bench: the guest's disk counter"
    );
    if comparison != DiskComparison::Same {
        tracing::warn!(?comparison, "bench: the destination's disk differs");
    }
    Ok(comparison)
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
    c.driver.qemu.image_dir = image_dir_of(state_dir);
    // The source's disk is kept (renamed) so that the bench can compare it.
    c.driver.qemu.keep_source_disks = true;
    c.driver
        .qemu
        .extra_args
        .extend(tap_args(&tap_of(state_dir)));
    // Should a resume fail, reconciliation retries it before the next move.
    c.reconcile.interval = Millis::new(RECONCILE_MS);
    c
}

/// The second QMP monitor of the bench VM on a side (one VM per side at a time).
fn tap_of(state_dir: &Path) -> PathBuf {
    state_dir.join("ev.sock")
}

/// The timed moves (ms each) and the aborted ones.
struct Moves {
    /// `MoveVm` call to the destination's `RESUME`.
    to_resume: Vec<f64>,
    /// `MoveVm` call to its return (the source's commit point).
    to_commit: Vec<f64>,
    /// The source's `STOP` to the destination's `RESUME`.
    paused: Vec<f64>,
    /// Moves that aborted.
    aborted: usize,
    /// Local disks: every committed move left the destination's disk equal to the
    /// source's at the switchover.
    disks_identical: bool,
}

/// Starts two agents on the qemu driver, creates the VM on `a` and moves it back and
/// forth `n` times, each move after one timed migration of the bare VM.
async fn agent_moves(
    opts: &QemuHandoffBenchOptions,
    dir: &Path,
    states: &[PathBuf; 3],
    spec: &VmSpec,
    n: usize,
    bare: &mut BareMigrations,
) -> Result<(Moves, Vec<QmpMigrateTiming>), BenchError> {
    let ca = create_ca("bench").map_err(setup)?;
    let admin =
        issue_admin_cert(&ca, "bench", ballast_gossip::AdminRole::Operator).map_err(setup)?;
    let ((sa, pa), (sb, pb)) = (bound_socket()?, bound_socket()?);
    let mut agents = Vec::new();
    let sides = [("a", sa, pa, pb), ("b", sb, pb, pa)];
    for (side, (id, socket, listen, seed)) in sides.into_iter().enumerate() {
        let cert = issue_node_cert(&ca, id, &[]).map_err(setup)?;
        let cfg = qemu_agent_config(opts, dir, id, listen, seed, &states[side], side as u16);
        save_cert_bundle(&cert, &cfg.tls.cert, &cfg.tls.key, &cfg.tls.ca_cert).map_err(setup)?;
        match Agent::start_on(cfg, Some(socket)).await {
            Ok(agent) => agents.push(agent),
            Err(e) => {
                for a in agents {
                    a.shutdown().await;
                }
                return Err(setup(e));
            }
        }
    }
    let taps = [tap_of(&states[0]), tap_of(&states[1])];
    let images = [image_dir_of(&states[0]), image_dir_of(&states[1])];
    let result = moves(&admin, [pa, pb], [&taps, &images], spec, n, bare).await;
    for a in agents {
        a.shutdown().await;
    }
    result
}

async fn moves(
    admin: &ballast_gossip::CertBundle,
    [pa, pb]: [SocketAddr; 2],
    [taps, images]: [&[PathBuf; 2]; 2],
    spec: &VmSpec,
    n: usize,
    bare: &mut BareMigrations,
) -> Result<(Moves, Vec<QmpMigrateTiming>), BenchError> {
    let ca = AdminClient::connect(admin, pa).map_err(run_err)?;
    let cb = AdminClient::connect(admin, pb).map_err(run_err)?;
    let (a, b) = (NodeId::from("a"), NodeId::from("b"));
    super::wait_for_pair(&ca, &cb).await?;
    let vm = VmId::from("bench-vm");
    ca.create_vm(&vm, spec, Some(&a), false)
        .await
        .map_err(run_err)?;
    let mut on_a = true;
    let mut out = Moves {
        to_resume: Vec::with_capacity(n),
        to_commit: Vec::with_capacity(n),
        paused: Vec::with_capacity(n),
        aborted: 0,
        disks_identical: true,
    };
    let local = spec.driver_opts.get("storage").map(String::as_str) == Some("local");
    if local {
        guest_wrote(&images[0].join("bench.qcow2")).await?;
    }
    let mut bare_samples = Vec::with_capacity(n);
    for _ in 0..n {
        bare_samples.push(bare.migrate(WARMUP).await.map_err(run_err)?);
        tokio::time::sleep(WARMUP).await;
        let (client, to, [src_tap, dst_tap]) = if on_a {
            (&ca, &b, [&taps[0], &taps[1]])
        } else {
            (&cb, &a, [&taps[1], &taps[0]])
        };
        let mut src = EventTap::connect(src_tap, EVENT_WAIT)
            .await
            .map_err(run_err)?;
        let (w0, t0) = (SystemTime::now(), Instant::now());
        let resumed = tokio::spawn(incoming_resumed_at(dst_tap.clone(), EVENT_WAIT));
        let moved = client.move_vm(&vm, to).await;
        let commit_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let committed = match moved {
            Ok((c, _)) => c,
            Err(e) => {
                resumed.abort();
                return Err(run_err(e));
            }
        };
        if committed {
            let resume_at = resumed.await.map_err(run_err)?.map_err(run_err)?;
            let stop_at = src.wait_for("STOP", EVENT_WAIT).await.map_err(run_err)?;
            tracing::info!(
                to_resume_ms = ms_between(w0, resume_at),
                to_commit_ms = commit_ms,
                guest_paused_ms = ms_between(stop_at, resume_at),
                "handoff sample"
            );
            out.to_resume.push(ms_between(w0, resume_at));
            out.to_commit.push(commit_ms);
            out.paused.push(ms_between(stop_at, resume_at));
            if local {
                let (from, to) = if on_a { (0, 1) } else { (1, 0) };
                out.disks_identical &=
                    same_disk(&images[from], &images[to]).await? == DiskComparison::Same;
            }
            on_a = !on_a;
        } else {
            resumed.abort();
            out.aborted += 1;
        }
        settle(&ca, &cb).await?;
    }
    Ok((out, bare_samples))
}

#[cfg(test)]
mod tests {
    use super::{compare_disks, DiskComparison};

    /// A 4-sector disk whose counter sector holds `counter` (then "BL"), if written.
    fn disk(counter: Option<u32>) -> Vec<u8> {
        let mut d: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
        d[512..1024].fill(0);
        if let Some(c) = counter {
            d[512..516].copy_from_slice(&c.to_le_bytes());
            d[516..518].copy_from_slice(b"BL");
        }
        d
    }

    #[test]
    fn a_destination_that_wrote_on_is_the_same_disk() {
        assert_eq!(
            compare_disks(&disk(Some(7)), &disk(Some(9))),
            DiskComparison::Same
        );
        assert_eq!(
            compare_disks(&disk(Some(7)), &disk(Some(7))),
            DiskComparison::Same
        );
        // Not written yet at the switchover, written since on the destination.
        assert_eq!(
            compare_disks(&disk(None), &disk(Some(1))),
            DiskComparison::Same
        );
    }

    #[test]
    fn a_lost_write_or_a_changed_byte_is_reported() {
        assert_eq!(
            compare_disks(&disk(Some(9)), &disk(Some(7))),
            DiskComparison::CounterBehind {
                at_switchover: Some(9),
                destination: Some(7)
            }
        );
        assert_eq!(
            compare_disks(&disk(Some(9)), &disk(None)),
            DiskComparison::CounterBehind {
                at_switchover: Some(9),
                destination: None
            }
        );
        let mut changed = disk(Some(9));
        changed[1500] ^= 1;
        assert_eq!(
            compare_disks(&disk(Some(9)), &changed),
            DiskComparison::DataDiffers { offset: 1500 }
        );
        assert_eq!(
            compare_disks(&disk(Some(9)), &disk(Some(9))[..1536]),
            DiskComparison::DataDiffers { offset: 1536 }
        );
    }
}
