//! `ballast bench handoff --driver libvirt`: the cost of ballast's handoff over a bare
//! libvirt live migration between two libvirt hosts, in one run.
//!
//! - **ballast**: two in-process agents on the libvirt driver (real sled, real QUIC + TLS
//!   on loopback), one connected to each host, move a VM created with `vm create` back
//!   and forth; timed from the admin `MoveVm` call until the domain runs on the
//!   destination (its state read every 2 ms on a connection kept open).
//! - **bare** (`bare_p50_ms`): what an operator types, `virsh migrate` with the flags
//!   ballast uses (printed as `virsh_migrate`), then `virsh resume` on the destination
//!   (the flags leave it paused, as ballast's handoff does until it commits); timed from
//!   starting the first `virsh` until the second exits.
//! - **api** (`api_p50_ms`): the same two calls (`virDomainMigrateToURI3`,
//!   `virDomainResume`) made from this process on connections kept open: the bare cost
//!   without virsh's own start-up, the stricter baseline.
//!
//! One untimed migration of each kind first; then rounds, each a bare move, an api move
//! and a handoff, so that a change in the machine's load touches every figure alike.
//! The disks are on a directory both hosts see at the same path (`image_dir`, shared
//! storage: only memory is copied; the disk copy of local disks is measured by the
//! end-to-end test, docs/performance.md). Every domain the bench defined is destroyed
//! and undefined when it ends, also on error.

use super::super::admin_client::AdminClient;
use super::super::runtime::Agent;
use super::{agent_config, bound_socket, percentile, setup, BenchError, TempDir};
use crate::config::DriverKind;
use crate::driver::libvirt::{domain_xml, migrate_flags, LibvirtConfig};
use crate::driver::qemu::guest::boot_sector;
use crate::units::Millis;
use ballast_gossip::{create_ca, issue_admin_cert, issue_node_cert, save_cert_bundle};
use ballast_store::{NodeId, VmId, VmSpec};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::{DomainState, MigrateParameters};
use virt::enumutil::Enum;
use virt::sys;

/// The domain the bare migrations move.
const BARE_VM: &str = "ballast-bench-bare";
/// The VM the agents move.
const AGENT_VM: &str = "ballast-bench-vm";
/// How long a VM runs on a host before it is migrated again.
const WARMUP: Duration = Duration::from_millis(300);
/// How often the destination's domain state is read while a handoff runs.
const STATE_POLL: Duration = Duration::from_millis(2);
/// Bound on one migration (bare or handoff) until the domain runs on the destination.
const MOVE_BOUND: Duration = Duration::from_secs(120);

/// How to run the libvirt handoff benchmark.
#[derive(Clone, Debug)]
pub struct LibvirtHandoffBenchOptions {
    /// Moves timed of each kind.
    pub moves: usize,
    /// Memory of the VMs, MiB.
    pub memory_mib: u64,
    /// The two hosts' driver settings, as in their agents' `[driver.libvirt]` (`uri`,
    /// `peer_uri`, `migrate_uri`, `listen_address`, `bandwidth_mibps`, `tls`...).
    pub hosts: [LibvirtConfig; 2],
    /// A directory at the same path on both hosts for the VMs' disks (shared storage).
    /// `None`: a new directory under the system's temporary directory, which is shared
    /// only when both libvirt hosts run on this machine.
    pub image_dir: Option<PathBuf>,
}

/// The figures (medians over `moves` samples each), milliseconds of wall time, each to
/// the same end point: the domain runs on the destination.
#[derive(Clone, Debug, Serialize)]
pub struct LibvirtHandoffBenchReport {
    /// The driver benchmarked (`libvirt`).
    pub driver: &'static str,
    /// Memory of the VMs, MiB.
    pub memory_mib: u64,
    /// Moves timed of each kind.
    pub moves: usize,
    /// ballast: admin `MoveVm` call until the domain runs on the destination.
    pub p50_ms: f64,
    /// Slowest handoff.
    pub max_ms: f64,
    /// ballast: admin `MoveVm` call until it returned (the source's commit point).
    pub commit_p50_ms: f64,
    /// The baseline: `virsh migrate` (the command in `virsh_migrate`) + `virsh resume`.
    pub bare_p50_ms: f64,
    /// The same two calls from this process, without virsh's start-up.
    pub api_p50_ms: f64,
    /// `p50_ms / bare_p50_ms` (goal: at most 1.2).
    pub ratio: f64,
    /// `p50_ms - bare_p50_ms` (goal: at most 100).
    pub added_ms: f64,
    /// `p50_ms / api_p50_ms`.
    pub ratio_api: f64,
    /// `p50_ms - api_p50_ms`.
    pub added_api_ms: f64,
    /// The bare migration's command line (host a to host b).
    pub virsh_migrate: String,
    /// Handoffs that aborted (should be 0).
    pub aborted: usize,
    /// Every sample, in the order taken, ms rounded: handoffs, virsh, api.
    pub samples_ms: BenchSamples,
}

/// Every timed sample of a run, in the order taken (ms, rounded).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchSamples {
    /// Handoffs (to the domain running on the destination).
    pub handoff: Vec<u64>,
    /// `virsh migrate` + `virsh resume`.
    pub virsh: Vec<u64>,
    /// The same two calls from this process.
    pub api: Vec<u64>,
}

fn run_err(e: impl Into<super::Cause>) -> BenchError {
    BenchError::Run(e.into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The virsh options of the migration flags; an error names a flag virsh cannot express
/// here (the bare migration would not be the same migration).
fn virsh_options(flags: u32) -> Result<Vec<&'static str>, BenchError> {
    let known = [
        (sys::VIR_MIGRATE_LIVE, "--live"),
        (sys::VIR_MIGRATE_PEER2PEER, "--p2p"),
        (sys::VIR_MIGRATE_PERSIST_DEST, "--persistent"),
        (sys::VIR_MIGRATE_UNDEFINE_SOURCE, "--undefinesource"),
        (sys::VIR_MIGRATE_PAUSED, "--suspend"),
        (sys::VIR_MIGRATE_ABORT_ON_ERROR, "--abort-on-error"),
        (sys::VIR_MIGRATE_NON_SHARED_DISK, "--copy-storage-all"),
        (sys::VIR_MIGRATE_TLS, "--tls"),
        (sys::VIR_MIGRATE_UNSAFE, "--unsafe"),
    ];
    let mut left = flags;
    let mut out = Vec::new();
    for (bit, opt) in known {
        if flags & bit != 0 {
            out.push(opt);
            left &= !bit;
        }
    }
    if left != 0 {
        return Err(BenchError::Run(
            format!("migration flags {left:#x} have no virsh option here").into(),
        ));
    }
    Ok(out)
}

/// One migration's settings from host `from` to host `to`, as the driver makes them.
#[derive(Clone, Debug)]
struct Route {
    from_uri: String,
    to_uri: String,
    peer_uri: String,
    flags: u32,
    params: MigrateParameters,
}

impl Route {
    fn new(from: &LibvirtConfig, to: &LibvirtConfig) -> Result<Self, BenchError> {
        let peer_uri = to
            .peer_uri
            .clone()
            .ok_or_else(|| BenchError::Setup("every host needs driver.libvirt.peer_uri".into()))?;
        Ok(Self {
            from_uri: from.uri.clone(),
            to_uri: to.uri.clone(),
            peer_uri,
            flags: migrate_flags(from, false),
            params: MigrateParameters {
                uri: to.migrate_uri.clone(),
                listen_address: to.listen_address.clone(),
                bandwidth: (from.bandwidth_mibps > 0).then_some(from.bandwidth_mibps),
                ..MigrateParameters::default()
            },
        })
    }

    /// `virsh` arguments of this migration of `name`.
    fn virsh_migrate(&self, name: &str) -> Result<Vec<String>, BenchError> {
        let mut args: Vec<String> = vec!["-c".into(), self.from_uri.clone(), "migrate".into()];
        args.extend(virsh_options(self.flags)?.into_iter().map(String::from));
        if let Some(u) = &self.params.uri {
            args.extend(["--migrateuri".into(), u.clone()]);
        }
        if let Some(a) = &self.params.listen_address {
            args.extend(["--listen-address".into(), a.clone()]);
        }
        if let Some(b) = self.params.bandwidth {
            args.extend(["--bandwidth".into(), b.to_string()]);
        }
        args.extend([name.to_owned(), self.peer_uri.clone()]);
        Ok(args)
    }
}

/// Runs `virsh ARGS`; an error carries its stderr.
async fn virsh(args: &[String]) -> Result<(), BenchError> {
    let out = tokio::process::Command::new("virsh")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| run_err(format!("cannot run virsh: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(run_err(format!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The two hosts' connections, kept open for the run.
#[derive(Clone)]
struct Hosts {
    conns: Arc<[Connect; 2]>,
}

impl Hosts {
    async fn open(cfgs: &[LibvirtConfig; 2]) -> Result<Self, BenchError> {
        // libvirt prints every error on stderr by default; the bench reports its own.
        virt::error::clear_error_callback();
        let uris = [cfgs[0].uri.clone(), cfgs[1].uri.clone()];
        let conns = blocking(move || {
            Ok([
                Connect::open(Some(&uris[0]))?,
                Connect::open(Some(&uris[1]))?,
            ])
        })
        .await
        .map_err(setup)?;
        Ok(Self {
            conns: Arc::new(conns),
        })
    }

    /// Runs `f` on host `h`'s connection on the blocking pool.
    async fn on<T: Send + 'static>(
        &self,
        h: usize,
        f: impl FnOnce(&Connect) -> Result<T, virt::error::Error> + Send + 'static,
    ) -> Result<T, BenchError> {
        let conns = self.conns.clone();
        blocking(move || f(&conns[h])).await.map_err(run_err)
    }

    /// Whether host `h` has a domain `name` (in any state).
    async fn has(&self, h: usize, name: &'static str) -> Result<bool, BenchError> {
        self.on(h, move |c| Ok(c.lookup_domain_by_name(name).is_ok()))
            .await
    }

    /// Waits until domain `name` runs on host `h`; returns when it was first seen running.
    async fn wait_running(&self, h: usize, name: &'static str) -> Result<Instant, BenchError> {
        self.on(h, move |c| {
            let deadline = Instant::now() + MOVE_BOUND;
            loop {
                let running = c
                    .lookup_domain_by_name(name)
                    .and_then(|d| d.state())
                    .is_ok_and(|(s, _)| matches!(s, Enum::Known(DomainState::Running)));
                if running || Instant::now() > deadline {
                    return Ok((Instant::now(), running));
                }
                std::thread::sleep(STATE_POLL);
            }
        })
        .await
        .and_then(|(at, running)| {
            running
                .then_some(at)
                .ok_or_else(|| run_err(format!("{name} did not run on the destination in time")))
        })
    }

    /// Destroys and undefines domain `name` wherever it is (errors are ignored: cleanup).
    async fn remove(&self, name: &'static str) {
        for h in 0..2 {
            let _ = self
                .on(h, move |c| {
                    let d = c.lookup_domain_by_name(name)?;
                    if d.is_active()? {
                        d.destroy()?;
                    }
                    d.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM)
                })
                .await;
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, virt::error::Error> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("libvirt call panicked: {e}")),
    }
}

/// A spec that runs a boot-sector disk at `image` with `memory_mib` of memory.
fn spec_of(image: &Path, memory_mib: u64) -> VmSpec {
    VmSpec {
        vcpus: 1,
        memory_mib,
        disks: vec![image.display().to_string()],
        ..VmSpec::default()
    }
}

/// Writes a 1 MiB raw disk whose first sector is the demo guest's boot sector.
fn write_image(path: &Path) -> Result<(), BenchError> {
    let mut bytes = boot_sector().to_vec();
    bytes.resize(1 << 20, 0);
    std::fs::write(path, bytes).map_err(setup)
}

/// Runs the benchmark (inside a tokio runtime).
pub async fn bench_handoff_libvirt(
    opts: LibvirtHandoffBenchOptions,
) -> Result<LibvirtHandoffBenchReport, BenchError> {
    let tmp = TempDir::create("ballast-lb")?;
    let dir = tmp.path().to_path_buf();
    let image_dir = match &opts.image_dir {
        Some(d) => d.clone(),
        None => dir.join("images"),
    };
    std::fs::create_dir_all(&image_dir).map_err(setup)?;
    let images = [
        image_dir.join("bench-bare.img"),
        image_dir.join("bench-vm.img"),
    ];
    for i in &images {
        write_image(i)?;
    }
    let _images = RemoveFiles(images.to_vec());
    // Both hosts open the disks at the same path: shared storage, which libvirt does
    // not recognise in a temporary directory (hence `allow_unsafe`, on both sides).
    let hosts_cfg = opts.hosts.clone().map(|mut c| {
        c.shared_paths.push(image_dir.clone());
        c.allow_unsafe = true;
        c
    });
    let hosts = Hosts::open(&hosts_cfg).await?;
    for name in [BARE_VM, AGENT_VM] {
        for (h, cfg) in hosts_cfg.iter().enumerate() {
            if hosts.has(h, name).await? {
                return Err(BenchError::Setup(
                    format!(
                        "host {} already has a domain {name}: remove it first",
                        cfg.uri
                    )
                    .into(),
                ));
            }
        }
    }
    let routes = [
        Route::new(&hosts_cfg[0], &hosts_cfg[1])?,
        Route::new(&hosts_cfg[1], &hosts_cfg[0])?,
    ];
    let result = run(&opts, &hosts_cfg, &hosts, &routes, &images, &dir).await;
    hosts.remove(BARE_VM).await;
    hosts.remove(AGENT_VM).await;
    result
}

/// Removes files when dropped.
struct RemoveFiles(Vec<PathBuf>);

impl Drop for RemoveFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

async fn run(
    opts: &LibvirtHandoffBenchOptions,
    cfgs: &[LibvirtConfig; 2],
    hosts: &Hosts,
    routes: &[Route; 2],
    images: &[PathBuf; 2],
    dir: &Path,
) -> Result<LibvirtHandoffBenchReport, BenchError> {
    // The bare VM: defined and started on host a as an operator would.
    let xml = domain_xml::from_spec(
        &VmId::from(BARE_VM),
        &spec_of(&images[0], opts.memory_mib),
        crate::driver::qemu::kvm_usable(),
    );
    hosts
        .on(0, move |c| c.define_domain_xml(&xml)?.create().map(|_| ()))
        .await?;
    let mut bare_at = 0;
    let mut bare_move = async |via_virsh: bool| -> Result<f64, BenchError> {
        tokio::time::sleep(WARMUP).await;
        let route = routes[bare_at].clone();
        let to = 1 - bare_at;
        let t0 = Instant::now();
        if via_virsh {
            virsh(&route.virsh_migrate(BARE_VM)?).await?;
            virsh(&[
                "-c".into(),
                route.to_uri.clone(),
                "resume".into(),
                BARE_VM.into(),
            ])
            .await?;
        } else {
            let r = route.clone();
            hosts
                .on(bare_at, move |c| {
                    let d = c.lookup_domain_by_name(BARE_VM)?;
                    d.migrate_to_uri3(Some(&r.peer_uri), r.params.clone(), r.flags)
                })
                .await?;
            hosts
                .on(to, |c| {
                    c.lookup_domain_by_name(BARE_VM)?.resume().map(|_| ())
                })
                .await?;
        }
        let took = ms(t0.elapsed());
        bare_at = to;
        Ok(took)
    };
    bare_move(false).await?;

    let ca = create_ca("bench").map_err(setup)?;
    let admin =
        issue_admin_cert(&ca, "bench", ballast_gossip::AdminRole::Operator).map_err(setup)?;
    let ((sa, pa), (sb, pb)) = (bound_socket()?, bound_socket()?);
    let mut agents = Vec::new();
    for (side, (id, socket, listen, seed)) in [("a", sa, pa, pb), ("b", sb, pb, pa)]
        .into_iter()
        .enumerate()
    {
        let cert = issue_node_cert(&ca, id, &[]).map_err(setup)?;
        let mut cfg = agent_config(dir, id, listen, seed, 1);
        cfg.driver.kind = DriverKind::Libvirt;
        cfg.driver.libvirt = LibvirtConfig {
            state_dir: dir.join(id).join("libvirt-state"),
            ..cfgs[side].clone()
        };
        cfg.reconcile.interval = Millis::new(1_000);
        save_cert_bundle(&cert, &cfg.tls.cert, &cfg.tls.key, &cfg.tls.ca_cert).map_err(setup)?;
        match Agent::start_on(cfg, Some(socket)).await {
            Ok(a) => agents.push(a),
            Err(e) => {
                for a in agents {
                    a.shutdown().await;
                }
                return Err(setup(e));
            }
        }
    }
    let result = async {
        let clients = [
            AdminClient::connect(&admin, pa).map_err(run_err)?,
            AdminClient::connect(&admin, pb).map_err(run_err)?,
        ];
        super::wait_for_pair(&clients[0], &clients[1]).await?;
        let vm = VmId::from(AGENT_VM);
        let nodes = [NodeId::from("a"), NodeId::from("b")];
        clients[0]
            .create_vm(
                &vm,
                &spec_of(&images[1], opts.memory_mib),
                Some(&nodes[0]),
                false,
            )
            .await
            .map_err(run_err)?;
        hosts.wait_running(0, AGENT_VM).await?;
        let mut agent_at = 0;
        let mut handoff = async || -> Result<Option<(f64, f64)>, BenchError> {
            tokio::time::sleep(WARMUP).await;
            let to = 1 - agent_at;
            let t0 = Instant::now();
            let seen = {
                let hosts = hosts.clone();
                tokio::spawn(async move { hosts.wait_running(to, AGENT_VM).await })
            };
            let moved = clients[agent_at].move_vm(&vm, &nodes[to]).await;
            let commit = ms(t0.elapsed());
            match moved {
                Ok((true, _)) => {}
                Ok((false, _)) => {
                    seen.abort();
                    return Ok(None);
                }
                Err(e) => {
                    seen.abort();
                    return Err(run_err(e));
                }
            }
            let at = seen.await.map_err(run_err)??;
            agent_at = to;
            super::settle(&clients[0], &clients[1]).await?;
            Ok(Some((ms(at - t0), commit)))
        };
        // Untimed first of each kind.
        handoff().await?;
        bare_move(true).await?;
        let n = opts.moves.max(1);
        let (mut ours, mut commits, mut bare, mut api, mut aborted) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
        for _ in 0..n {
            bare.push(bare_move(true).await?);
            api.push(bare_move(false).await?);
            match handoff().await? {
                Some((to_run, commit)) => {
                    tracing::info!(to_run_ms = to_run, commit_ms = commit, "handoff sample");
                    ours.push(to_run);
                    commits.push(commit);
                }
                None => aborted += 1,
            }
        }
        let _ = clients[agent_at].delete_vm(&vm).await;
        Ok::<_, BenchError>((ours, commits, bare, api, aborted))
    }
    .await;
    for a in agents {
        a.shutdown().await;
    }
    let (ours, commits, bare, api, aborted) = result?;
    let rounded = |v: &[f64]| v.iter().map(|x| x.round() as u64).collect();
    let samples_ms = BenchSamples {
        handoff: rounded(&ours),
        virsh: rounded(&bare),
        api: rounded(&api),
    };
    let p50 = median(ours.clone());
    let (bare_p50, api_p50) = (median(bare), median(api));

    let ratio = |base: f64| if base > 0.0 { p50 / base } else { 0.0 };
    Ok(LibvirtHandoffBenchReport {
        driver: "libvirt",
        memory_mib: opts.memory_mib,
        moves: ours.len(),
        p50_ms: p50,
        max_ms: ours.iter().copied().fold(0.0, f64::max),
        commit_p50_ms: median(commits),
        bare_p50_ms: bare_p50,
        api_p50_ms: api_p50,
        ratio: ratio(bare_p50),
        added_ms: p50 - bare_p50,
        ratio_api: ratio(api_p50),
        added_api_ms: p50 - api_p50,
        virsh_migrate: format!("virsh {}", routes[0].virsh_migrate(BARE_VM)?.join(" ")),
        aborted,
        samples_ms,
    })
}
