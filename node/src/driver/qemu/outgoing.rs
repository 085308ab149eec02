//! The source side of a live migration: `migrate` and `query-migrate` polling (woken
//! early by QEMU's `MIGRATION` events), status on recovery, `migrate_cancel`/`cont` on
//! abort, `quit` after the commit point.

use super::disks;
use super::mirror::DiskBytes;
use super::qmp::{self, MigrationInfo};
use super::target::Target;
use super::vm_dir::{MirrorMark, Role, VmMeta};
use super::QemuDriver;
use crate::driver::{DriverError, MigrationProgress, MigrationStatus, MigrationTarget};
use crate::failpoints::{self, DriverStep};
use ballast_store::VmId;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait between two looks at a VM in transition (events wake it earlier).
const TRANSITION_POLL: Duration = Duration::from_millis(10);

/// QEMU migration states in which a migration is still under way.
fn in_progress(status: &str) -> bool {
    !matches!(status, "none" | "completed" | "failed" | "cancelled")
}

/// The migration state in which QEMU waits, with `pause-before-switchover` on.
pub(crate) const PRE_SWITCHOVER: &str = "pre-switchover";

/// Turns a migration capability on or off.
fn capability(capability: &'static str, state: bool) -> qmp::MigrateSetCapabilities {
    qmp::MigrateSetCapabilities {
        capabilities: vec![qmp::CapabilityState { capability, state }],
    }
}

/// Turns on QEMU's `MIGRATION` events (one per migration state change).
pub(crate) fn events_capability() -> qmp::MigrateSetCapabilities {
    capability("events", true)
}

/// Turns QEMU's `pause-before-switchover` on (a VM with local disks) or off. With it on,
/// a migration whose memory is copied stops the guest and waits in `pre-switchover`,
/// before it sends the device state and releases the block devices, until
/// `migrate-continue`: the disk mirrors are completed in that pause, while nothing
/// writes to the disks and every block node is still active (libvirt's order).
/// Completing them after the switchover left a mirror running while QEMU released the
/// block nodes (docs/design.md, §Drivers).
pub(crate) fn pause_before_switchover(on: bool) -> qmp::MigrateSetCapabilities {
    capability("pause-before-switchover", on)
}

/// Lets a migration paused in `pre-switchover` go on.
pub(crate) fn continue_switchover() -> qmp::MigrateContinue {
    qmp::MigrateContinue {
        state: PRE_SWITCHOVER,
    }
}

/// Maps QEMU's migration state to the driver's.
fn status_of(info: &MigrationInfo) -> MigrationStatus {
    match info.status.as_deref().unwrap_or("none") {
        "none" | "cancelled" => MigrationStatus::None,
        "completed" => MigrationStatus::Completed,
        "failed" => MigrationStatus::Failed,
        _ => MigrationStatus::Active,
    }
}

fn progress_of(info: &MigrationInfo) -> MigrationProgress {
    let ram = info.ram.unwrap_or_default();
    MigrationProgress {
        transferred_bytes: ram.transferred,
        remaining_bytes: ram.remaining,
    }
}

impl QemuDriver {
    /// Checks that `vm` can migrate out now; returns an error that says why not.
    async fn check_migratable(&self, vm: &VmId) -> Result<super::VmDir, DriverError> {
        let dir = self.dir(vm)?;
        let slot = self.slot(vm);
        let _op = slot.op.lock().await;
        let meta = dir
            .read_meta()?
            .ok_or_else(|| DriverError::NotFound(vm.clone()))?;
        if Self::live_pid(&dir).is_none() {
            return Err(DriverError::NotFound(vm.clone()));
        }
        let bad = |reason: String| DriverError::BadState {
            vm: vm.clone(),
            reason,
        };
        if meta.role != Role::Running {
            return Err(bad("an incoming copy cannot migrate out".into()));
        }
        let state = self.runstate(vm, &dir).await?;
        if state != "running" && state != "paused" {
            return Err(bad(format!("cannot migrate a VM in state {state}")));
        }
        let mig = self.qmp(vm, &dir, qmp::QueryMigrate {}).await?;
        if mig.status.as_deref().is_some_and(in_progress) {
            return Err(bad("a migration is already under way".into()));
        }
        Ok(dir)
    }

    pub(super) async fn migrate(
        &self,
        vm: &VmId,
        target: &MigrationTarget,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError> {
        let started = Instant::now();
        let dir = self.check_migratable(vm).await?;
        let failed = |reason: String| DriverError::MigrationFailed {
            vm: vm.clone(),
            reason,
        };
        let Some(parsed) = Target::parse(&target.0) else {
            return Err(failed(format!(
                "refused target {:?}: not tcp:HOST:PORT[;nbd:HOST:PORT;export:TOKEN;disks:I,...]",
                target.0
            )));
        };
        let spec = dir
            .read_meta()?
            .ok_or_else(|| DriverError::NotFound(vm.clone()))?
            .spec;
        let plan = disks::plan(&self.cfg, &spec)?;
        let local = disks::local_disks(&plan);
        let local_paths: Vec<(usize, &std::path::Path)> =
            local.iter().map(|(i, p, _)| (*i, *p)).collect();
        let ours: Vec<usize> = local.iter().map(|(i, _, _)| *i).collect();
        let export = match (&parsed.disks, ours.is_empty()) {
            (None, true) => None,
            (Some(e), false) if e.indexes == ours => Some(e),
            (None, false) => {
                return Err(failed(format!(
                    "the destination offers no copy of the local disks {ours:?} \
                     (an agent without local-disk support, or the spec lacks their records)"
                )))
            }
            (Some(e), _) => {
                return Err(failed(format!(
                    "the destination exported disks {:?} but the local disks here are {ours:?}",
                    e.indexes
                )))
            }
        };
        self.tune_migration(vm, &dir).await?;
        self.qmp(vm, &dir, pause_before_switchover(export.is_some()))
            .await?;
        let mut disk = DiskBytes::default();
        if let Some(export) = export {
            let deadline = started + self.cfg.timeouts.migration();
            let copied = async {
                self.start_mirrors(vm, &dir, &local_paths, export).await?;
                self.wait_mirrors_ready(vm, &dir, local_paths.len(), deadline, progress)
                    .await
            }
            .await;
            match copied {
                Ok(bytes) => {
                    disk = bytes;
                    failpoints::driver_step(DriverStep::MirrorReady);
                }
                Err(e) => {
                    if let Err(e2) = self.abort_mirrors(vm, &dir).await {
                        tracing::warn!(vm = %vm, error = %e2, "disk mirrors not cleaned up after a failure");
                    }
                    return Err(e);
                }
            }
        }
        match self
            .qmp(
                vm,
                &dir,
                qmp::Migrate {
                    uri: parsed.migration.clone(),
                },
            )
            .await
        {
            Err(DriverError::BadState { reason, .. }) => return Err(failed(reason)),
            other => drop(other?),
        }
        tracing::info!(vm = %vm, target = %parsed.migration, "migration started");
        if export.is_some() {
            failpoints::driver_step(DriverStep::MemoryMigrating);
        }
        let with_disk = |p: MigrationProgress| {
            progress(MigrationProgress {
                transferred_bytes: p.transferred_bytes.saturating_add(disk.done),
                remaining_bytes: p.remaining_bytes,
            })
        };
        self.poll_migration(vm, &dir, started, &with_disk).await?;
        if export.is_some() {
            failpoints::driver_step(DriverStep::SwitchedOver);
            // Completed in the pause before the switchover; this only checks the record.
            self.complete_mirrors(vm, &dir).await?;
        }
        Ok(())
    }

    /// In the pause before the switchover (guest stopped, memory copied, devices not
    /// sent): completes the disk mirrors, so that the destination's disks equal the
    /// source's, then lets the migration go on.
    async fn switch_over_with_disks(
        &self,
        vm: &VmId,
        dir: &super::VmDir,
    ) -> Result<(), DriverError> {
        failpoints::driver_step(DriverStep::PausedBeforeSwitchover);
        self.complete_mirrors(vm, dir).await?;
        self.qmp(vm, dir, continue_switchover()).await?;
        tracing::debug!(vm = %vm, "disks copied; the switchover goes on");
        Ok(())
    }

    /// Polls `query-migrate` until the migration ends or the migration timeout passes
    /// (then it is cancelled).
    async fn poll_migration(
        &self,
        vm: &VmId,
        dir: &super::VmDir,
        started: Instant,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError> {
        let deadline = started + self.cfg.timeouts.migration();
        // Right after `migrate` QEMU may still say `none` while it connects; a `none`
        // that lasts this long means the migration never started.
        let none_deadline = Instant::now() + self.cfg.timeouts.qmp();
        // `migrate-continue` is sent once: QEMU may still say `pre-switchover` just after.
        let mut continued = false;
        loop {
            let mut events = self.events(vm, dir).await?;
            let info = self.qmp(vm, dir, qmp::QueryMigrate {}).await?;
            let status = info.status.clone().unwrap_or_else(|| "none".into());
            progress(progress_of(&info));
            match status.as_str() {
                PRE_SWITCHOVER if !continued => {
                    continued = true;
                    if let Err(e) = self.switch_over_with_disks(vm, dir).await {
                        if let Err(e2) = self.cancel_out(vm).await {
                            tracing::warn!(vm = %vm, error = %e2, "migration not cancelled after the disk copy failed");
                        }
                        return Err(e);
                    }
                }
                "completed" => {
                    tracing::info!(vm = %vm, total_ms = ?info.total_time, downtime_ms = ?info.downtime, "migration completed");
                    return Ok(());
                }
                "failed" | "cancelled" => {
                    let why = info.error_desc.unwrap_or_else(|| status.clone());
                    return Err(DriverError::MigrationFailed {
                        vm: vm.clone(),
                        reason: why,
                    });
                }
                "none" if Instant::now() >= none_deadline => {
                    return Err(DriverError::MigrationFailed {
                        vm: vm.clone(),
                        reason: "QEMU never started the migration".into(),
                    });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                self.cancel_out(vm).await?;
                return Err(DriverError::MigrationFailed {
                    vm: vm.clone(),
                    reason: format!(
                        "not done within {} ms; cancelled",
                        self.cfg.timeouts.migration.get()
                    ),
                });
            }
            super::wait_event(&mut events, self.cfg.timeouts.poll()).await;
        }
    }

    pub(super) async fn outgoing_status(&self, vm: &VmId) -> Result<MigrationStatus, DriverError> {
        let dir = self.dir(vm)?;
        if dir.read_meta()?.is_none() {
            return Ok(MigrationStatus::None);
        }
        if Self::live_pid(&dir).is_none() {
            return Err(DriverError::NotFound(vm.clone()));
        }
        let status = status_of(&self.qmp(vm, &dir, qmp::QueryMigrate {}).await?);
        if status != MigrationStatus::Completed {
            return Ok(status);
        }
        // Resumed after the switchover: an abort ran; the destination's copy is stale.
        if self.runstate(vm, &dir).await? == "running" {
            return Ok(MigrationStatus::Failed);
        }
        let spec = dir
            .read_meta()?
            .ok_or_else(|| DriverError::NotFound(vm.clone()))?
            .spec;
        if disks::local_disks(&disks::plan(&self.cfg, &spec)?).is_empty() {
            return Ok(status);
        }
        // Local disks: complete only once the destination holds them too.
        match self.complete_mirrors(vm, &dir).await {
            Ok(()) => Ok(MigrationStatus::Completed),
            Err(DriverError::MigrationFailed { reason, .. }) => {
                tracing::warn!(vm = %vm, reason = %reason, "memory moved but the disk copy did not complete");
                Ok(MigrationStatus::Failed)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits (bounded by the QMP timeout) while `check` says the VM is in transition.
    async fn wait_while(
        &self,
        vm: &VmId,
        dir: &super::VmDir,
        what: &str,
        mut check: impl FnMut(&str) -> bool,
        query: bool,
    ) -> Result<String, DriverError> {
        let deadline = Instant::now() + self.cfg.timeouts.qmp();
        loop {
            let mut events = self.events(vm, dir).await?;
            let s = if query {
                let info = self.qmp(vm, dir, qmp::QueryMigrate {}).await?;
                info.status.unwrap_or_else(|| "none".into())
            } else {
                self.runstate(vm, dir).await?
            };
            if !check(&s) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout(format!("VM {vm}: still {what} ({s})")));
            }
            super::wait_event(&mut events, TRANSITION_POLL).await;
        }
    }

    pub(super) async fn cancel_out(&self, vm: &VmId) -> Result<(), DriverError> {
        let dir = self.dir(vm)?;
        let meta = dir
            .read_meta()?
            .ok_or_else(|| DriverError::NotFound(vm.clone()))?;
        if Self::live_pid(&dir).is_none() {
            return Err(DriverError::NotFound(vm.clone()));
        }
        if meta.role != Role::Running {
            return Err(DriverError::BadState {
                vm: vm.clone(),
                reason: "an incoming copy has no outgoing migration".into(),
            });
        }
        let info = self.qmp(vm, &dir, qmp::QueryMigrate {}).await?;
        if info.status.as_deref().is_some_and(in_progress) {
            self.qmp(vm, &dir, qmp::MigrateCancel {}).await?;
            self.wait_while(vm, &dir, "migrating", in_progress, true)
                .await?;
        }
        let state = self
            .wait_while(vm, &dir, "switching over", |s| s == "finish-migrate", false)
            .await?;
        self.abort_mirrors(vm, &dir).await?;
        if matches!(state.as_str(), "postmigrate" | "paused") {
            self.qmp(vm, &dir, qmp::Cont {}).await?;
            tracing::info!(vm = %vm, "source resumed after an aborted migration");
        }
        Ok(())
    }

    /// After the commit point: deletes the source's files of the moved VM's local disks
    /// (renames them `<file>.moved-<unix ms>` with `keep_source_disks`). A disk whose copy
    /// is not recorded as completed is never deleted: it is kept, renamed, with a warning.
    fn retire_source_disks(&self, vm: &VmId, meta: &VmMeta) {
        let Ok(plan) = disks::plan(&self.cfg, &meta.spec) else {
            return;
        };
        let local = disks::local_disks(&plan);
        if local.is_empty() {
            return;
        }
        let complete = meta.mirror == MirrorMark::Completed;
        if !complete {
            tracing::warn!(vm = %vm, "the disk copy is not recorded as complete; keeping the source's disks");
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for (_, path, _) in local {
            let result = if self.cfg.keep_source_disks || !complete {
                let mut kept = path.as_os_str().to_owned();
                kept.push(format!(".moved-{stamp}"));
                std::fs::rename(path, &kept).map(|()| {
                    tracing::info!(vm = %vm, path = %path.display(), kept = %std::path::Path::new(&kept).display(), "source disk kept, renamed");
                })
            } else {
                std::fs::remove_file(path).map(|()| {
                    tracing::info!(vm = %vm, path = %path.display(), "source disk deleted: the destination holds the VM");
                })
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(vm = %vm, path = %path.display(), error = %e, "source disk not retired")
                }
            }
        }
    }

    pub(super) async fn finish_out(&self, vm: &VmId) -> Result<(), DriverError> {
        let dir = self.dir(vm)?;
        let slot = self.slot(vm);
        let _op = slot.op.lock().await;
        let Some(meta) = dir.read_meta()? else {
            return Ok(());
        };
        if Self::live_pid(&dir).is_some() {
            let info = self.qmp(vm, &dir, qmp::QueryMigrate {}).await?;
            let state = self.runstate(vm, &dir).await?;
            if info.status.as_deref() != Some("completed") && state != "postmigrate" {
                return Err(DriverError::BadState {
                    vm: vm.clone(),
                    reason: format!(
                        "no completed migration (state {state}); refusing to quit the only copy"
                    ),
                });
            }
        }
        self.retire_source_disks(vm, &meta);
        self.terminate(vm, &dir, true).await?;
        tracing::info!(vm = %vm, "source copy quit after the commit point");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let s = |x: &str| MigrationInfo {
            status: Some(x.into()),
            ..MigrationInfo::default()
        };
        assert_eq!(status_of(&MigrationInfo::default()), MigrationStatus::None);
        assert_eq!(status_of(&s("cancelled")), MigrationStatus::None);
        assert_eq!(status_of(&s("active")), MigrationStatus::Active);
        assert_eq!(status_of(&s("device")), MigrationStatus::Active);
        assert_eq!(status_of(&s("completed")), MigrationStatus::Completed);
        assert_eq!(status_of(&s("failed")), MigrationStatus::Failed);
        assert!(in_progress("setup") && !in_progress("failed"));
    }
}
