//! The `qemu` driver (docs/design.md §Drivers): one `qemu-system` process per VM, driven over QMP.
//!
//! Each VM lives in its own directory under the configured state directory (see
//! [`vm_dir`]); the QEMU process is daemonized so it outlives the agent, and a restarted
//! agent adopts it through its pid file and QMP socket instead of starting it twice.
//! Live migration: the destination is started paused with `-incoming defer` and
//! `late-block-activate` (so its disks stay inactive until `cont` and an aborted
//! migration can resume the source), then listens with `migrate-incoming`; the source
//! runs `migrate` and polls `query-migrate`.
//!
//! Files: [`config`] (the TOML section), `cmdline` (spec → arguments), [`guest`] (a tiny demo guest), `vm_dir` (state
//! layout), `procfs` (usage), `process` (launch/kill), `qmp` (QMP client), `ports`
//! (incoming ports), `lifecycle` (start/stop/list/usage/adopt), `incoming` (destination
//! side), `outgoing` (source side), [`bench`] (bare QMP migration timing).

pub mod bench;
mod bench_local;
mod cmdline;
pub mod config;
mod disks;
mod export;
pub mod guest;
mod incoming;
mod lifecycle;
mod mirror;
mod outgoing;
mod ports;
mod process;
mod procfs;
mod qmp;
mod qmp_block;
mod target;
mod vm_dir;

pub use cmdline::kvm_usable;
pub use config::{Accel, QemuConfig, QemuTimeouts};

use crate::driver::{
    Driver, DriverError, MigrationProgress, MigrationStatus, MigrationTarget, UsageSample, VmInfo,
    VmRunState,
};
use async_trait::async_trait;
use ballast_store::{VmId, VmSpec};
use qmp::{Qmp, QmpError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use vm_dir::{Role, VmDir, VmMeta};

/// Per-VM in-memory state of the driver.
#[derive(Default)]
struct VmSlot {
    /// Serializes lifecycle calls on one VM (start, stop, prepare, resume, cancel,
    /// finish); a tokio mutex because it is held across QMP calls. `migrate_out` holds it
    /// only for its checks, so `cancel_outgoing` can interrupt a running migration.
    op: tokio::sync::Mutex<()>,
    /// The cached QMP connection (QEMU serves one QMP client per socket); a tokio mutex
    /// because connecting happens while it is held.
    qmp: tokio::sync::Mutex<Option<Arc<Qmp>>>,
    /// Whether this QEMU has the migration parameters and `events` capability set by
    /// [`QemuDriver::tune_migration`]; a new slot (new process, restarted agent) has not.
    tuned: std::sync::atomic::AtomicBool,
}

/// The QEMU driver. Cheap to share behind an `Arc`; safe to call from many tasks.
pub struct QemuDriver {
    cfg: QemuConfig,
    /// Whether `/dev/kvm` opened read-write when the driver was made.
    kvm: bool,
    /// In-memory state per VM; a std mutex, never held across `.await`.
    slots: Mutex<HashMap<VmId, Arc<VmSlot>>>,
    /// Incoming ports this instance has picked but QEMU may not yet hold; never held
    /// across `.await`.
    reserved_ports: Mutex<std::collections::BTreeSet<u16>>,
}

impl QemuDriver {
    /// A driver for `cfg`. Creates the state directory (mode 0700); starts nothing: call
    /// [`Driver::adopt`] to take over VMs left running by a previous agent.
    pub fn new(cfg: QemuConfig) -> Result<Self, DriverError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.state_dir)?;
        if cfg.port_range[0] > cfg.port_range[1] || cfg.port_range[0] == 0 {
            return Err(DriverError::InvalidSpec(format!(
                "port_range {:?} is empty or starts at 0",
                cfg.port_range
            )));
        }
        if let Some([lo, hi]) = ports::ephemeral_range() {
            if cfg.port_range[0] <= hi && lo <= cfg.port_range[1] {
                tracing::warn!(port_range = ?cfg.port_range, ephemeral = ?[lo, hi],
                    "migration port_range overlaps the kernel's ephemeral ports: binds may fail and a \
                     migration to a dead local target may connect to itself");
            }
        }
        let kvm = cmdline::kvm_usable();
        tracing::info!(state_dir = %cfg.state_dir.display(), accel = ?cfg.accel, kvm, "qemu driver ready");
        Ok(Self {
            cfg,
            kvm,
            slots: Mutex::new(HashMap::new()),
            reserved_ports: Mutex::new(Default::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    /// Kills (SIGKILL) every QEMU process whose pid file lies under `state_dir` and whose
    /// command line names its QMP socket, and waits (bounded) until they are gone.
    /// Synchronous, for test teardown and `Drop` guards; returns how many were killed.
    pub fn kill_all_in(state_dir: &Path) -> usize {
        let Ok(dirs) = vm_dir::scan(state_dir) else {
            return 0;
        };
        let mut killed = 0;
        for d in dirs {
            if let Some(pid) = d.read_pid() {
                if process::alive(pid, &d.qmp) {
                    process::kill_blocking(pid, &d.qmp);
                    killed += 1;
                }
            }
        }
        killed
    }

    fn dir(&self, vm: &VmId) -> Result<VmDir, DriverError> {
        VmDir::of(&self.cfg.state_dir, vm)
    }

    fn slot(&self, vm: &VmId) -> Arc<VmSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(vm.clone()).or_default().clone()
    }

    fn forget_slot(&self, vm: &VmId) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(vm);
    }

    /// The pid of `dir`'s QEMU when it is alive.
    fn live_pid(dir: &VmDir) -> Option<u32> {
        dir.read_pid().filter(|&p| process::alive(p, &dir.qmp))
    }

    /// The QMP connection of `vm`, connecting (or reconnecting) as needed.
    async fn connection(&self, vm: &VmId, dir: &VmDir) -> Result<Arc<Qmp>, DriverError> {
        let slot = self.slot(vm);
        let mut cached = slot.qmp.lock().await;
        match cached.as_ref() {
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => {
                *cached = None;
                let c = Qmp::connect(&dir.qmp, self.cfg.timeouts.qmp())
                    .await
                    .map_err(|e| qmp_error(vm, e))?;
                let c = Arc::new(c);
                *cached = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// A receiver that changes whenever `vm`'s QEMU sends a QMP event, marked as seen:
    /// take it before a query, then [`wait_event`] after it, so no event is missed.
    async fn events(&self, vm: &VmId, dir: &VmDir) -> Result<watch::Receiver<u64>, DriverError> {
        let mut rx = self.connection(vm, dir).await?.events();
        rx.borrow_and_update();
        Ok(rx)
    }

    /// Runs one QMP command on `vm`, connecting (or reconnecting) as needed.
    async fn qmp<C>(&self, vm: &VmId, dir: &VmDir, cmd: C) -> Result<C::Ok, DriverError>
    where
        C: qapi::qmp::QmpCommand + 'static,
    {
        let slot = self.slot(vm);
        let conn = self.connection(vm, dir).await?;
        match conn.run(cmd).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.breaks_connection() {
                    let mut cached = slot.qmp.lock().await;
                    if cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                        *cached = None;
                    }
                }
                Err(qmp_error(vm, e))
            }
        }
    }

    /// Sets `vm`'s outgoing migration parameters (downtime limit, bandwidth) and turns
    /// on `MIGRATION` events, once per QEMU process, so a migration does not pay for it
    /// on its critical path. A refused `events` capability only costs the early wake-up.
    async fn tune_migration(&self, vm: &VmId, dir: &VmDir) -> Result<(), DriverError> {
        use std::sync::atomic::Ordering;
        let slot = self.slot(vm);
        if slot.tuned.load(Ordering::Acquire) {
            return Ok(());
        }
        let params = qmp::MigrateSetParameters {
            downtime_limit: Some(self.cfg.downtime_limit.get()),
            max_bandwidth: (self.cfg.bandwidth_mbps > 0)
                .then(|| self.cfg.bandwidth_mbps.saturating_mul(125_000)),
        };
        self.qmp(vm, dir, params).await?;
        if let Err(e) = self.qmp(vm, dir, outgoing::events_capability()).await {
            tracing::debug!(vm = %vm, error = %e, "migration events not enabled; polling only");
        }
        slot.tuned.store(true, Ordering::Release);
        Ok(())
    }

    /// QEMU's run state of `vm` (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    async fn runstate(&self, vm: &VmId, dir: &VmDir) -> Result<String, DriverError> {
        Ok(self.qmp(vm, dir, qmp::QueryStatus {}).await?.status)
    }

    /// Ends `vm`'s process (QMP `quit` when `graceful`, SIGKILL after the stop timeout or
    /// at once), then removes its directory and in-memory state.
    async fn terminate(&self, vm: &VmId, dir: &VmDir, graceful: bool) -> Result<(), DriverError> {
        let meta = dir.read_meta().ok().flatten();
        if let Some(pid) = Self::live_pid(dir) {
            if graceful {
                if let Err(e) = self.qmp(vm, dir, qmp::Quit {}).await {
                    tracing::debug!(vm = %vm, error = %e, "quit over QMP failed; killing");
                }
                if !process::wait_gone(pid, &dir.qmp, self.cfg.timeouts.stop()).await {
                    tracing::warn!(vm = %vm, pid, "QEMU ignored quit; killing");
                }
            }
            process::kill(pid, &dir.qmp).await;
        }
        self.drop_connection(vm).await;
        // An incoming copy's disk images go with it (a resumed copy's role is `Running`).
        if let Some(VmMeta {
            role: Role::Incoming { .. },
            created_images,
            ..
        }) = meta
        {
            export::remove_images(&created_images);
        }
        dir.remove()?;
        self.forget_slot(vm);
        Ok(())
    }

    async fn drop_connection(&self, vm: &VmId) {
        let slot = self.slot(vm);
        slot.qmp.lock().await.take();
    }
}

/// Waits until QEMU sends an event on `events`' connection (a state change) or `max`
/// passes, whichever is first; a closed connection waits `max`.
async fn wait_event(events: &mut watch::Receiver<u64>, max: std::time::Duration) {
    let changed = async {
        if events.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let _ = tokio::time::timeout(max, changed).await;
}

/// Maps a QMP failure on `vm` to the driver's error.
fn qmp_error(vm: &VmId, e: QmpError) -> DriverError {
    match e {
        QmpError::Timeout(_) => DriverError::Timeout(format!("VM {vm}: {e}")),
        QmpError::Io { ref source, .. } => {
            DriverError::Io(std::io::Error::new(source.kind(), format!("VM {vm}: {e}")))
        }
        QmpError::Refused { .. } => DriverError::BadState {
            vm: vm.clone(),
            reason: e.to_string(),
        },
    }
}

/// Maps a QEMU run state to the driver's view.
fn run_state(status: &str) -> VmRunState {
    match status {
        "running" => VmRunState::Running,
        "inmigrate" => VmRunState::Incoming,
        "shutdown" | "internal-error" | "io-error" | "guest-panicked" | "watchdog" => {
            VmRunState::Stopped
        }
        _ => VmRunState::Paused,
    }
}

#[async_trait]
impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn list(&self) -> Result<Vec<VmInfo>, DriverError> {
        self.list_vms().await
    }

    async fn start(&self, vm: &VmId, spec: &VmSpec) -> Result<(), DriverError> {
        self.start_vm(vm, spec).await
    }

    async fn stop(&self, vm: &VmId) -> Result<(), DriverError> {
        self.stop_vm(vm).await
    }

    async fn usage(&self, vm: &VmId) -> Result<UsageSample, DriverError> {
        self.usage_of(vm)
    }

    async fn prepare_incoming(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<MigrationTarget, DriverError> {
        self.prepare(vm, spec).await
    }

    async fn migrate_out(
        &self,
        vm: &VmId,
        target: &MigrationTarget,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError> {
        self.migrate(vm, target, progress).await
    }

    async fn migration_status(&self, vm: &VmId) -> Result<MigrationStatus, DriverError> {
        self.outgoing_status(vm).await
    }

    async fn cancel_outgoing(&self, vm: &VmId) -> Result<(), DriverError> {
        self.cancel_out(vm).await
    }

    async fn finish_outgoing(&self, vm: &VmId) -> Result<(), DriverError> {
        self.finish_out(vm).await
    }

    async fn resume_incoming(&self, vm: &VmId) -> Result<(), DriverError> {
        self.resume_in(vm).await
    }

    async fn cancel_incoming(&self, vm: &VmId) -> Result<(), DriverError> {
        self.cancel_in(vm).await
    }

    async fn incoming_complete(&self, vm: &VmId) -> Result<bool, DriverError> {
        self.incoming_done(vm).await
    }

    async fn adopt(&self) -> Result<Vec<VmInfo>, DriverError> {
        self.adopt_all().await
    }

    async fn current_spec(&self, vm: &VmId, spec: &VmSpec) -> Result<Option<VmSpec>, DriverError> {
        self.spec_with_copies(vm, spec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_states_map() {
        assert_eq!(run_state("running"), VmRunState::Running);
        assert_eq!(run_state("inmigrate"), VmRunState::Incoming);
        assert_eq!(run_state("postmigrate"), VmRunState::Paused);
        assert_eq!(run_state("paused"), VmRunState::Paused);
        assert_eq!(run_state("shutdown"), VmRunState::Stopped);
    }
}
