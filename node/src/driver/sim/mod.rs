//! The `sim` driver (docs/design.md §Drivers): simulated VMs with synthetic usage, delayed
//! migrations with injected failures, and run records from which [`check_no_double_run`] proves I2.
//!
//! Files:
//! - [`config`]: [`SimConfig`] and [`SimMode`] (the agent's `[driver.sim]` section).
//! - [`profile`]: usage profiles from `VmSpec.driver_opts` / `spec.target` (pure).
//! - [`runlog`]: the per-host run log (`runlog.jsonl`), written before/after running.
//! - [`checker`]: the pure I2 checker over all hosts' run logs and crash facts.
//! - `core`: one simulated VM (both modes), `migration`: its TCP migration stream,
//!   `wire`: the line-JSON protocols, `inproc`: in-process hosts, `process`: the
//!   agent side of process mode, `vm_process`: the `ballast sim-vm` process.
//!
//! Modes: in-process VMs live in a process-wide registry keyed by state directory, so
//! re-creating the driver adopts them and killing the process kills them (a host
//! crash). In process mode every VM is a detached `ballast sim-vm` process that
//! outlives its agent. Either way a migration's target is `tcp:127.0.0.1:PORT`, served
//! by the destination's incoming copy, so any two sim hosts can migrate to each other.

pub mod checker;
pub mod config;
mod core;
mod inproc;
mod migration;
mod process;
pub mod profile;
pub mod runlog;
mod switched;
mod vm_process;
mod wire;

pub use checker::{check_no_double_run, running_intervals, HostCrash, RunInterval, Violation};
pub use config::{SimConfig, SimMode};
pub use runlog::{read_runlog, RunEvent, RunLogError, RunRecord, RUNLOG_FILE};
pub use vm_process::vm_process_main;

use self::core::VmCore;
use self::inproc::InProcHost;
use self::process::ProcHost;
use self::profile::{vm_seed, SplitMix64};
use self::switched::SwitchedMarkers;
use self::wire::{VmReply, VmRequest, VmStatus};
use super::{
    Driver, DriverError, MigrationProgress, MigrationStatus, MigrationTarget, UsageSample, VmInfo,
    VmRunState,
};
use async_trait::async_trait;
use ballast_core::handoff::SourceCopy;
use ballast_store::{VmId, VmSpec};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often `migrate_out` hears about progress. A change of the migration's status
/// answers its `WaitMigration` request at once.
const POLL: Duration = Duration::from_millis(10);
/// Slack on top of the configured migration time before `migrate_out` gives up.
const MIGRATE_SLACK: Duration = Duration::from_secs(90);

/// Failure injection state.
#[derive(Debug)]
struct Faults {
    rng: SplitMix64,
    fail_prob: f64,
    fail_next: u32,
    fail_next_starts: u32,
}

#[derive(Debug)]
enum Backend {
    InProcess(Arc<InProcHost>),
    Process(ProcHost),
}

/// One host's sim hypervisor.
#[derive(Debug)]
pub struct SimDriver {
    config: SimConfig,
    backend: Backend,
    /// A std mutex: only read-modify-write of the fault plan under it.
    faults: Mutex<Faults>,
    /// With `source_copy = "ended"`: the VMs that left by a completed migration.
    switched: Option<SwitchedMarkers>,
}

impl SimDriver {
    /// Opens the host's state directory (creating it) and, in-process, joins or creates
    /// the process's registry entry for it. Fails on an empty `host`.
    pub fn new(config: SimConfig) -> Result<Self, DriverError> {
        if config.host.as_str().is_empty() {
            return Err(DriverError::InvalidSpec(
                "sim driver: host must be set".into(),
            ));
        }
        let backend = match config.mode {
            SimMode::InProcess => {
                Backend::InProcess(inproc::host(&config.state_dir, &config.host)?)
            }
            SimMode::Process => Backend::Process(ProcHost::new(
                &config.state_dir,
                config.host.clone(),
                config.vm_command.clone(),
            )?),
        };
        let faults = Faults {
            rng: SplitMix64(config.seed ^ 0x5157_u64),
            fail_prob: config.fail_prob.get(),
            fail_next: config.fail_next,
            fail_next_starts: config.fail_next_starts,
        };
        let switched = (config.source_copy == SourceCopy::Ended)
            .then(|| SwitchedMarkers::new(&config.state_dir));
        Ok(Self {
            config,
            backend,
            faults: Mutex::new(faults),
            switched,
        })
    }

    /// The configuration it was made from.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// This host's run log.
    pub fn runlog_path(&self) -> PathBuf {
        self.config.state_dir.join(RUNLOG_FILE)
    }

    /// With `source_copy = "ended"`, after a completed switchover: records durably that
    /// `vm` left by migration, then stops its paused source copy (as libvirt undefines
    /// the source). A no-op in the default mode.
    async fn end_source_if_switched(&self, vm: &VmId) -> Result<(), DriverError> {
        let Some(markers) = &self.switched else {
            return Ok(());
        };
        markers.record(vm)?;
        self.call_unit_absent_ok(vm, VmRequest::FinishOutgoing)
            .await
    }

    /// Counts down `fail_next_starts`: an error for a VM that did start.
    fn injected_start_error(&self, vm: &VmId) -> Result<(), DriverError> {
        let mut f = self.faults();
        if f.fail_next_starts == 0 {
            return Ok(());
        }
        f.fail_next_starts -= 1;
        Err(DriverError::Protocol(format!(
            "injected: the answer to the start of {vm} was lost (it started)"
        )))
    }

    /// Makes the next `n` migrations out of this host fail before their switchover.
    pub fn fail_next_migrations(&self, n: u32) {
        self.faults().fail_next = n;
    }

    /// Sets the probability that a migration out of this host fails (clamped to [0, 1]).
    pub fn set_fail_prob(&self, p: f64) {
        self.faults().fail_prob = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    }

    /// The OS process of each VM this host holds: its own process in process mode, the
    /// agent's in-process. For harnesses that kill VM processes (a host crash in
    /// process mode) and for tests that must not leak processes.
    pub async fn vm_pids(&self) -> Result<Vec<(VmId, u32)>, DriverError> {
        let statuses = match &self.backend {
            Backend::InProcess(h) => h
                .all()
                .iter()
                .map(|c| c.status(std::process::id()))
                .collect(),
            Backend::Process(p) => p.scan().await?,
        };
        Ok(statuses.into_iter().map(|s| (s.vm, s.pid)).collect())
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the migration about to start is to fail.
    fn draw_failure(&self) -> bool {
        let mut f = self.faults();
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return true;
        }
        f.fail_prob > 0.0 && f.rng.next_f64() < f.fail_prob
    }

    /// One request to `vm`; `None` when this host holds no such VM (or only its
    /// stopped remains, which answer `NotFound`).
    async fn call(&self, vm: &VmId, req: VmRequest) -> Result<Option<VmReply>, DriverError> {
        let reply = self.call_raw(vm, req).await?;
        Ok(reply.filter(|r| !r.is_not_found()))
    }

    async fn call_raw(&self, vm: &VmId, req: VmRequest) -> Result<Option<VmReply>, DriverError> {
        match &self.backend {
            Backend::InProcess(h) => {
                let Some(core) = h.get(vm) else {
                    return Ok(None);
                };
                let reply = core.handle(req, std::process::id()).await;
                h.reap(&core);
                Ok(Some(reply))
            }
            Backend::Process(p) => p.call(vm, &req).await,
        }
    }

    async fn status(&self, vm: &VmId) -> Result<Option<VmStatus>, DriverError> {
        match self.call(vm, VmRequest::Info).await? {
            None => Ok(None),
            Some(VmReply::Info { status }) => Ok(Some(status)),
            Some(other) => Err(other.into_error(vm)),
        }
    }

    /// A request whose absent VM is fine (idempotent removals).
    async fn call_unit_absent_ok(&self, vm: &VmId, req: VmRequest) -> Result<(), DriverError> {
        self.call(vm, req)
            .await?
            .map_or(Ok(()), |r| r.into_unit(vm))
    }

    /// A request whose absent VM is `NotFound`.
    async fn call_unit(&self, vm: &VmId, req: VmRequest) -> Result<(), DriverError> {
        match self.call(vm, req).await? {
            None => Err(DriverError::NotFound(vm.clone())),
            Some(r) => r.into_unit(vm),
        }
    }

    async fn all(&self) -> Result<Vec<VmInfo>, DriverError> {
        let statuses = match &self.backend {
            Backend::InProcess(h) => h
                .all()
                .iter()
                .map(|c| c.status(std::process::id()))
                .collect(),
            Backend::Process(p) => p.scan().await?,
        };
        Ok(statuses
            .into_iter()
            .filter(|s| s.state != VmRunState::Stopped)
            .map(|s| VmInfo {
                vm: s.vm,
                state: s.state,
            })
            .collect())
    }

    fn seed_for(&self, vm: &VmId) -> u64 {
        vm_seed(self.config.seed, vm.as_str())
    }

    /// Creates `vm` (running, or an incoming copy); the caller checked it is absent.
    async fn create(
        &self,
        vm: &VmId,
        spec: &VmSpec,
        incoming: bool,
    ) -> Result<VmStatus, DriverError> {
        let seed = self.seed_for(vm);
        match &self.backend {
            Backend::InProcess(h) => {
                let core = if incoming {
                    VmCore::incoming(vm, spec, seed, Arc::clone(&h.log)).await?
                } else {
                    VmCore::start(vm, spec, seed, Arc::clone(&h.log))?
                };
                let status = core.status(std::process::id());
                h.insert(core);
                Ok(status)
            }
            Backend::Process(p) => {
                profile::UsageProfile::from_spec(spec)
                    .map_err(|e| DriverError::InvalidSpec(e.to_string()))?;
                p.spawn(vm, spec, seed, incoming).await
            }
        }
    }

    async fn create_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        match &self.backend {
            Backend::InProcess(h) => h.create.lock().await,
            Backend::Process(p) => p.create.lock().await,
        }
    }

    async fn poll_migration(
        &self,
        vm: &VmId,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError> {
        let limit = self
            .config
            .migration
            .duration()
            .saturating_add(MIGRATE_SLACK);
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = None;
        // The VM answers as soon as the status changes (or after POLL, for progress).
        // A VM process of an older build does not know `WaitMigration`: then poll,
        // quickly first (a short migration is done in a millisecond or two), backing off
        // to POLL.
        let mut waits = true;
        let mut pause = Duration::from_millis(1);
        loop {
            let req = if waits {
                VmRequest::WaitMigration {
                    wait_ms: u64::try_from(POLL.as_millis()).unwrap_or(10),
                }
            } else {
                VmRequest::MigrationStatus
            };
            let reply = match self.call(vm, req).await {
                Ok(reply) => reply,
                Err(e) if waits => {
                    tracing::debug!(vm = %vm, error = %e, "VM does not wait for migrations; polling");
                    waits = false;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let failed = |reason: String| DriverError::MigrationFailed {
                vm: vm.clone(),
                reason,
            };
            match reply {
                None => return Err(failed("VM stopped during the migration".into())),
                Some(VmReply::Migration {
                    status,
                    progress: p,
                    reason,
                }) => {
                    if last != Some(p) {
                        progress(p);
                        last = Some(p);
                    }
                    match status {
                        MigrationStatus::Completed => return Ok(()),
                        MigrationStatus::Active => {}
                        MigrationStatus::Failed => {
                            return Err(failed(reason.unwrap_or_else(|| "failed".into())))
                        }
                        MigrationStatus::None => return Err(failed("cancelled".into())),
                    }
                }
                Some(other) => return Err(other.into_error(vm)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DriverError::Timeout(format!(
                    "migration of {vm} still active"
                )));
            }
            if !waits {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(POLL);
            }
        }
    }
}

#[async_trait]
impl Driver for SimDriver {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn source_copy(&self) -> SourceCopy {
        self.config.source_copy
    }

    async fn list(&self) -> Result<Vec<VmInfo>, DriverError> {
        self.all().await
    }

    async fn start(&self, vm: &VmId, spec: &VmSpec) -> Result<(), DriverError> {
        let _creating = self.create_lock().await;
        match self.status(vm).await? {
            Some(s) if s.state == VmRunState::Running => Ok(()),
            Some(s) => Err(DriverError::BadState {
                vm: vm.clone(),
                reason: format!("this host holds a {:?} copy", s.state),
            }),
            None => {
                self.create(vm, spec, false).await?;
                self.injected_start_error(vm)
            }
        }
    }

    async fn stop(&self, vm: &VmId) -> Result<(), DriverError> {
        self.call_unit_absent_ok(vm, VmRequest::Stop).await
    }

    async fn usage(&self, vm: &VmId) -> Result<UsageSample, DriverError> {
        match self.call(vm, VmRequest::Usage).await? {
            None => Err(DriverError::NotFound(vm.clone())),
            Some(VmReply::Usage { sample }) => Ok(sample),
            Some(other) => Err(other.into_error(vm)),
        }
    }

    async fn prepare_incoming(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<MigrationTarget, DriverError> {
        let _creating = self.create_lock().await;
        let status = match self.status(vm).await? {
            Some(s) => s,
            None => self.create(vm, spec, true).await?,
        };
        status
            .target
            .map(MigrationTarget)
            .ok_or_else(|| DriverError::BadState {
                vm: vm.clone(),
                reason: format!("this host already holds a {:?} copy", status.state),
            })
    }

    async fn migrate_out(
        &self,
        vm: &VmId,
        target: &MigrationTarget,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError> {
        if self.status(vm).await?.is_none() {
            return Err(DriverError::NotFound(vm.clone()));
        }
        let req = VmRequest::Migrate {
            target: target.0.clone(),
            duration_ms: self.config.migration.get(),
            fail: self.draw_failure(),
        };
        self.call_unit(vm, req).await?;
        self.poll_migration(vm, progress).await?;
        self.end_source_if_switched(vm).await
    }

    async fn migration_status(&self, vm: &VmId) -> Result<MigrationStatus, DriverError> {
        let status = match self.call(vm, VmRequest::MigrationStatus).await? {
            None if self.switched.as_ref().is_some_and(|m| m.contains(vm)) => {
                MigrationStatus::Completed
            }
            None => MigrationStatus::None,
            Some(VmReply::Migration { status, .. }) => status,
            Some(other) => return Err(other.into_error(vm)),
        };
        if status == MigrationStatus::Completed {
            self.end_source_if_switched(vm).await?;
        }
        Ok(status)
    }

    async fn cancel_outgoing(&self, vm: &VmId) -> Result<(), DriverError> {
        if self.switched.is_none() {
            return self.call_unit(vm, VmRequest::CancelOutgoing).await;
        }
        if self.migration_status(vm).await? == MigrationStatus::Completed {
            return Err(DriverError::SwitchedOver(vm.clone()));
        }
        // Ended mode, no switchover recorded: a source copy that is gone was lost with
        // its host (a crash), not ended by a switchover. There is nothing left to
        // cancel; the abort gives the VM back to this node's schedule, which starts it
        // again, as with a kept source. (Failing here made the source retry forever.)
        self.call_unit_absent_ok(vm, VmRequest::CancelOutgoing)
            .await
    }

    async fn finish_outgoing(&self, vm: &VmId) -> Result<(), DriverError> {
        self.call_unit_absent_ok(vm, VmRequest::FinishOutgoing)
            .await?;
        match &self.switched {
            Some(m) => m.remove(vm),
            None => Ok(()),
        }
    }

    async fn resume_incoming(&self, vm: &VmId) -> Result<(), DriverError> {
        self.call_unit(vm, VmRequest::ResumeIncoming).await
    }

    async fn cancel_incoming(&self, vm: &VmId) -> Result<(), DriverError> {
        self.call_unit_absent_ok(vm, VmRequest::CancelIncoming)
            .await
    }

    async fn incoming_complete(&self, vm: &VmId) -> Result<bool, DriverError> {
        match self.call(vm, VmRequest::IncomingComplete).await? {
            None => Ok(false),
            Some(VmReply::Bool { value }) => Ok(value),
            Some(other) => Err(other.into_error(vm)),
        }
    }

    async fn adopt(&self) -> Result<Vec<VmInfo>, DriverError> {
        let vms = self.all().await?;
        tracing::info!(host = %self.config.host, count = vms.len(), "sim driver adopted VMs");
        Ok(vms)
    }
}
