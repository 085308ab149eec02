//! One simulated VM: its run state, its usage accounting and its part in migrations.
//!
//! The same type backs an in-process VM and the inside of a `ballast sim-vm` process;
//! both are driven through [`VmCore::handle`] with a [`VmRequest`], so the two modes
//! share every rule. Run records are written under the VM's lock, a `run` record before
//! the VM runs and a `pause`/`stop` record after it stopped (see [`super::runlog`]).

use super::migration::{self, Outcome};
use super::profile::{ProfileCursor, UsageProfile};
use super::runlog::{RunEvent, RunLog};
use super::wire::{VmReply, VmRequest, VmStatus};
use crate::driver::{DriverError, MigrationProgress, MigrationStatus, UsageSample, VmRunState};
use ballast_store::{VmId, VmSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// The longest a `WaitMigration` request waits for a change.
const WAIT_MIGRATION_MAX: Duration = Duration::from_secs(1);
/// How long `cancel_outgoing` waits for a migration task to notice its cancel flag.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Where the VM's guest stands.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Running { since: Instant },
    Paused,
    Incoming,
    Stopped,
}

/// The destination side of a migration, until the copy is resumed or dropped.
#[derive(Debug)]
struct IncomingCopy {
    target: String,
    complete: bool,
    listener: AbortHandle,
}

/// The source side of the last migration.
#[derive(Debug)]
struct Outgoing {
    status: MigrationStatus,
    target: Option<String>,
    progress: MigrationProgress,
    reason: Option<String>,
    cancel: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
    /// Which migration this is; a finishing task only reports to its own generation.
    generation: u64,
}

impl Default for Outgoing {
    fn default() -> Self {
        Self {
            generation: 0,
            status: MigrationStatus::None,
            target: None,
            progress: MigrationProgress::default(),
            reason: None,
            cancel: Arc::new(AtomicBool::new(false)),
            task: None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Guest run time accrued before the current `Running { since }`.
    run_ns: u64,
    /// Whether this copy ever ran (a `stop` record is only needed then).
    ran: bool,
    seed: u64,
    profile: UsageProfile,
    cursor: ProfileCursor,
    incoming: Option<IncomingCopy>,
    out: Outgoing,
}

impl Inner {
    fn run_ns_now(&self) -> u64 {
        match self.phase {
            Phase::Running { since } => {
                let d = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.run_ns.saturating_add(d)
            }
            _ => self.run_ns,
        }
    }

    fn run_state(&self) -> VmRunState {
        match self.phase {
            Phase::Running { .. } => VmRunState::Running,
            Phase::Paused => VmRunState::Paused,
            Phase::Incoming => VmRunState::Incoming,
            Phase::Stopped => VmRunState::Stopped,
        }
    }
}

/// One simulated VM.
#[derive(Debug)]
pub(crate) struct VmCore {
    vm: VmId,
    log: Arc<RunLog>,
    /// A std mutex: never held across an await. It is held across a run-log append (one
    /// write, + fsync for `run`) so that records and transitions happen in the same order.
    inner: Mutex<Inner>,
    /// Bumped after every change of the outgoing migration's status, so that a waiter
    /// (`SimDriver::migrate_out`) wakes at once instead of polling on a timer.
    out_changed: watch::Sender<u64>,
}

fn bad_state(vm: &VmId, reason: &str) -> DriverError {
    DriverError::BadState {
        vm: vm.clone(),
        reason: reason.to_owned(),
    }
}

impl VmCore {
    fn new(
        vm: &VmId,
        spec: &VmSpec,
        seed: u64,
        log: Arc<RunLog>,
        phase: Phase,
    ) -> Result<Self, DriverError> {
        let profile =
            UsageProfile::from_spec(spec).map_err(|e| DriverError::InvalidSpec(e.to_string()))?;
        let seed = profile.seed.unwrap_or(seed);
        let inner = Inner {
            phase,
            run_ns: 0,
            ran: false,
            seed,
            profile,
            cursor: ProfileCursor::new(profile, seed),
            incoming: None,
            out: Outgoing::default(),
        };
        Ok(Self {
            vm: vm.clone(),
            log,
            inner: Mutex::new(inner),
            out_changed: watch::Sender::new(0),
        })
    }

    /// Creates the VM and lets it run (its `run` record is durable first).
    pub(crate) fn start(
        vm: &VmId,
        spec: &VmSpec,
        seed: u64,
        log: Arc<RunLog>,
    ) -> Result<Arc<Self>, DriverError> {
        validate(spec)?;
        let core = Self::new(vm, spec, seed, log, Phase::Paused)?;
        {
            let mut g = core.lock();
            core.set_running(&mut g)?;
        }
        Ok(Arc::new(core))
    }

    /// Creates a paused incoming copy listening on a loopback TCP port for its state.
    /// Must be called within a tokio runtime (the listener is a task of it).
    pub(crate) async fn incoming(
        vm: &VmId,
        spec: &VmSpec,
        seed: u64,
        log: Arc<RunLog>,
    ) -> Result<Arc<Self>, DriverError> {
        validate(spec)?;
        let core = Arc::new(Self::new(vm, spec, seed, log, Phase::Incoming)?);
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let target = format!("tcp:{}", listener.local_addr()?);
        let task = tokio::spawn(migration::serve_incoming(Arc::clone(&core), listener));
        core.lock().incoming = Some(IncomingCopy {
            target,
            complete: false,
            listener: task.abort_handle(),
        });
        Ok(core)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM's id.
    pub(crate) fn vm(&self) -> &VmId {
        &self.vm
    }

    /// A receiver that sees every later change of the outgoing migration's status (it
    /// marks the current one seen: subscribe first, then read the status).
    pub(crate) fn watch_outgoing(&self) -> watch::Receiver<u64> {
        self.out_changed.subscribe()
    }

    fn outgoing_changed(&self) {
        self.out_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the VM is gone (its holder should forget it).
    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.lock().phase, Phase::Stopped)
    }

    /// The VM's state, as `list` reports it.
    pub(crate) fn status(&self, pid: u32) -> VmStatus {
        let g = self.lock();
        let target = g.incoming.as_ref().map(|i| i.target.clone());
        VmStatus {
            vm: self.vm.clone(),
            state: g.run_state(),
            target,
            pid,
        }
    }

    /// Cumulative usage now.
    pub(crate) fn usage(&self) -> UsageSample {
        let mut g = self.lock();
        let run_ns = g.run_ns_now();
        let c = g.cursor.at(run_ns);
        UsageSample {
            cpu_time_s: c.cpu_time_s,
            io_bytes: c.io_bytes,
            mem_bytes: c.mem_bytes,
        }
    }

    fn set_running(&self, g: &mut Inner) -> Result<(), DriverError> {
        if matches!(g.phase, Phase::Running { .. }) {
            return Ok(());
        }
        self.log.append(Some(&self.vm), RunEvent::Run)?;
        g.phase = Phase::Running {
            since: Instant::now(),
        };
        g.ran = true;
        tracing::info!(vm = %self.vm, "sim VM running");
        Ok(())
    }

    fn set_paused(&self, g: &mut Inner) {
        if !matches!(g.phase, Phase::Running { .. }) {
            return;
        }
        g.run_ns = g.run_ns_now();
        g.phase = Phase::Paused;
        if let Err(e) = self.log.append(Some(&self.vm), RunEvent::Pause) {
            // The recorded interval only gets longer: still a cover of the real one.
            tracing::error!(vm = %self.vm, error = %e, "run log: pause record lost");
        }
        tracing::info!(vm = %self.vm, "sim VM paused");
    }

    fn set_stopped(&self, g: &mut Inner) {
        if matches!(g.phase, Phase::Stopped) {
            return;
        }
        g.run_ns = g.run_ns_now();
        g.phase = Phase::Stopped;
        g.out.cancel.store(true, Ordering::SeqCst);
        if let Some(t) = g.out.task.take() {
            t.abort();
        }
        if let Some(inc) = g.incoming.take() {
            inc.listener.abort();
        }
        self.outgoing_changed();
        if g.ran {
            if let Err(e) = self.log.append(Some(&self.vm), RunEvent::Stop) {
                tracing::error!(vm = %self.vm, error = %e, "run log: stop record lost");
            }
        }
        tracing::info!(vm = %self.vm, "sim VM stopped");
    }

    /// Executes one request.
    /// A stopped VM answers `NotFound` to everything: it is gone, even if its process
    /// (or registry entry) lingers for a moment.
    pub(crate) async fn handle(self: &Arc<Self>, req: VmRequest, pid: u32) -> VmReply {
        if self.is_stopped() {
            return VmReply::from_error(&DriverError::NotFound(self.vm.clone()));
        }
        let r = match req {
            VmRequest::Info => {
                return VmReply::Info {
                    status: self.status(pid),
                }
            }
            VmRequest::Usage => {
                return VmReply::Usage {
                    sample: self.usage(),
                }
            }
            VmRequest::MigrationStatus => return self.migration_status(),
            VmRequest::WaitMigration { wait_ms } => return self.wait_migration(wait_ms).await,
            VmRequest::IncomingComplete => {
                let value = self.lock().incoming.as_ref().is_some_and(|i| i.complete);
                return VmReply::Bool { value };
            }
            VmRequest::ResumeIncoming => self.resume_incoming(),
            VmRequest::CancelOutgoing => self.cancel_outgoing().await,
            VmRequest::FinishOutgoing => self.finish_outgoing(),
            VmRequest::CancelIncoming => self.cancel_incoming(),
            VmRequest::Stop => {
                self.set_stopped(&mut self.lock());
                Ok(())
            }
            VmRequest::Migrate {
                target,
                duration_ms,
                fail,
            } => self.begin_migration(target, duration_ms, fail),
        };
        match r {
            Ok(()) => VmReply::Ok,
            Err(e) => VmReply::from_error(&e),
        }
    }

    /// The migration's status after its next change, or after `wait_ms` (at most
    /// [`WAIT_MIGRATION_MAX`]) while it stays active.
    async fn wait_migration(&self, wait_ms: u64) -> VmReply {
        // Subscribed before the status is read, so no change between the two is lost.
        let mut changed = self.watch_outgoing();
        if self.lock().out.status == MigrationStatus::Active {
            let wait = Duration::from_millis(wait_ms).min(WAIT_MIGRATION_MAX);
            let _ = tokio::time::timeout(wait, changed.changed()).await;
        }
        self.migration_status()
    }

    fn migration_status(&self) -> VmReply {
        let g = self.lock();
        VmReply::Migration {
            status: g.out.status,
            progress: g.out.progress,
            reason: g.out.reason.clone(),
        }
    }

    fn resume_incoming(&self) -> Result<(), DriverError> {
        let mut g = self.lock();
        let complete = g.incoming.as_ref().map(|i| i.complete);
        match (g.phase, complete) {
            (Phase::Running { .. }, _) => Ok(()),
            (Phase::Paused, Some(true)) => {
                self.set_running(&mut g)?;
                if let Some(inc) = g.incoming.take() {
                    inc.listener.abort();
                }
                Ok(())
            }
            (_, Some(_)) => Err(bad_state(
                &self.vm,
                "incoming copy has not received its state",
            )),
            (_, None) => Err(bad_state(&self.vm, "not an incoming copy")),
        }
    }

    fn finish_outgoing(&self) -> Result<(), DriverError> {
        let mut g = self.lock();
        if g.incoming.is_some() {
            return Err(bad_state(
                &self.vm,
                "an incoming copy is dropped by cancel_incoming",
            ));
        }
        if g.out.status == MigrationStatus::Active {
            return Err(bad_state(&self.vm, "migration still active"));
        }
        match g.phase {
            Phase::Running { .. } => {
                Err(bad_state(&self.vm, "still running: no switchover happened"))
            }
            _ => {
                self.set_stopped(&mut g);
                Ok(())
            }
        }
    }

    fn cancel_incoming(&self) -> Result<(), DriverError> {
        let mut g = self.lock();
        if g.incoming.is_none() {
            return Err(bad_state(
                &self.vm,
                "not an incoming copy (already resumed, or a source)",
            ));
        }
        self.set_stopped(&mut g);
        Ok(())
    }

    async fn cancel_outgoing(&self) -> Result<(), DriverError> {
        let task = {
            let mut g = self.lock();
            if g.incoming.is_some() {
                return Err(bad_state(
                    &self.vm,
                    "an incoming copy is not an outgoing one",
                ));
            }
            g.out.cancel.store(true, Ordering::SeqCst);
            g.out.task.take()
        };
        if let Some(mut task) = task {
            if tokio::time::timeout(CANCEL_WAIT, &mut task).await.is_err() {
                tracing::warn!(vm = %self.vm, "migration task ignored cancel; aborting it");
                task.abort();
            }
        }
        let mut g = self.lock();
        let generation = g.out.generation;
        g.out = Outgoing {
            generation,
            ..Outgoing::default()
        };
        let r = match g.phase {
            Phase::Paused => self.set_running(&mut g),
            Phase::Running { .. } => Ok(()),
            Phase::Incoming | Phase::Stopped => Err(DriverError::NotFound(self.vm.clone())),
        };
        drop(g);
        self.outgoing_changed();
        r
    }

    fn begin_migration(
        self: &Arc<Self>,
        target: String,
        duration_ms: u64,
        fail: bool,
    ) -> Result<(), DriverError> {
        let mut g = self.lock();
        if g.incoming.is_some() {
            return Err(bad_state(&self.vm, "an incoming copy cannot migrate out"));
        }
        let same_target = g.out.target.as_deref() == Some(target.as_str());
        match (g.out.status, g.phase) {
            (MigrationStatus::Active, _) if same_target => return Ok(()),
            (MigrationStatus::Active, _) => {
                return Err(bad_state(&self.vm, "another migration is active"))
            }
            (MigrationStatus::Completed, Phase::Paused) if same_target => return Ok(()),
            (_, Phase::Running { .. }) => {}
            _ => return Err(bad_state(&self.vm, "only a running VM can migrate out")),
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let generation = g.out.generation + 1;
        g.out = Outgoing {
            generation,
            status: MigrationStatus::Active,
            target: Some(target.clone()),
            progress: MigrationProgress::default(),
            reason: None,
            cancel: Arc::clone(&cancel),
            task: None,
        };
        let core = Arc::clone(self);
        let task = tokio::spawn(async move {
            let outcome = migration::run_outgoing(&core, &target, duration_ms, fail, &cancel).await;
            core.migration_done(generation, outcome);
        });
        g.out.task = Some(task);
        tracing::info!(vm = %self.vm, duration_ms, fail, "sim migration started");
        Ok(())
    }

    fn migration_done(&self, generation: u64, outcome: Outcome) {
        let mut g = self.lock();
        if g.out.generation != generation {
            return;
        }
        g.out.task = None;
        match outcome {
            Outcome::Completed => g.out.status = MigrationStatus::Completed,
            Outcome::Cancelled => g.out.status = MigrationStatus::None,
            Outcome::Failed(reason) => {
                tracing::warn!(vm = %self.vm, reason = %reason, "sim migration failed");
                g.out.status = MigrationStatus::Failed;
                g.out.reason = Some(reason);
            }
        }
        drop(g);
        self.outgoing_changed();
    }

    // ---- used by the migration tasks ----

    /// The VM's seed and memory size, sent ahead of its state.
    pub(crate) fn seed_and_mem(&self) -> (u64, u64) {
        let g = self.lock();
        (g.seed, g.profile.mem)
    }

    /// Records migration progress.
    pub(crate) fn set_progress(&self, progress: MigrationProgress) {
        self.lock().out.progress = progress;
    }

    /// Source switchover: pauses the running VM; returns its guest run time.
    pub(crate) fn switchover(&self) -> Result<u64, String> {
        let mut g = self.lock();
        match g.phase {
            Phase::Running { .. } => {
                self.set_paused(&mut g);
                Ok(g.run_ns)
            }
            _ => Err("VM no longer running at switchover".to_owned()),
        }
    }

    /// Destination: a source announced `vm` with `seed`; accept unless this copy cannot
    /// take it.
    pub(crate) fn accept_hello(&self, vm: &VmId, seed: u64) -> Result<(), String> {
        let mut g = self.lock();
        if vm != &self.vm {
            return Err(format!("this target waits for {}, not {vm}", self.vm));
        }
        if g.incoming.is_none() || !matches!(g.phase, Phase::Incoming | Phase::Paused) {
            return Err("not waiting for an incoming VM".to_owned());
        }
        g.seed = seed;
        g.cursor = ProfileCursor::new(g.profile, seed);
        Ok(())
    }

    /// Destination: the switchover happened; the copy is complete and stays paused.
    pub(crate) fn complete_incoming(&self, run_ns: u64) -> Result<(), String> {
        let mut g = self.lock();
        if !matches!(g.phase, Phase::Incoming | Phase::Paused) {
            return Err("copy no longer incoming".to_owned());
        }
        let Some(inc) = g.incoming.as_mut() else {
            return Err("not an incoming copy".to_owned());
        };
        inc.complete = true;
        g.run_ns = run_ns;
        g.phase = Phase::Paused;
        tracing::info!(vm = %self.vm, "sim incoming copy complete (paused)");
        Ok(())
    }
}

/// Refuses specs no hypervisor could run.
fn validate(spec: &VmSpec) -> Result<(), DriverError> {
    if spec.vcpus == 0 {
        return Err(DriverError::InvalidSpec("vcpus must be > 0".into()));
    }
    if spec.memory_mib == 0 {
        return Err(DriverError::InvalidSpec("memory_mib must be > 0".into()));
    }
    Ok(())
}
