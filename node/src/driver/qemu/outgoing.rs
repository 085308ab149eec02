//! The source side of a live migration: `migrate` and `query-migrate` polling (woken
//! early by QEMU's `MIGRATION` events), status on recovery, `migrate_cancel`/`cont` on
//! abort, `quit` after the commit point.

use super::qmp::{self, MigrationInfo};
use super::vm_dir::Role;
use super::QemuDriver;
use crate::driver::{DriverError, MigrationProgress, MigrationStatus, MigrationTarget};
use ballast_store::VmId;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait between two looks at a VM in transition (events wake it earlier).
const TRANSITION_POLL: Duration = Duration::from_millis(10);

/// QEMU migration states in which a migration is still under way.
fn in_progress(status: &str) -> bool {
    !matches!(status, "none" | "completed" | "failed" | "cancelled")
}

/// Turns on QEMU's `MIGRATION` events (one per migration state change).
pub(crate) fn events_capability() -> qmp::MigrateSetCapabilities {
    qmp::MigrateSetCapabilities {
        capabilities: vec![qmp::CapabilityState {
            capability: "events",
            state: true,
        }],
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

/// Whether `t` is a `tcp:HOST:PORT` URI. Targets come from the peer, and QEMU would
/// also accept `exec:` (a shell command), so nothing else is let through.
pub(crate) fn valid_target(t: &str) -> bool {
    let Some(rest) = t.strip_prefix("tcp:") else {
        return false;
    };
    let Some((host, port)) = rest.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
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
        let dir = self.check_migratable(vm).await?;
        let failed = |reason: String| DriverError::MigrationFailed {
            vm: vm.clone(),
            reason,
        };
        if !valid_target(&target.0) {
            return Err(failed(format!(
                "refused target {:?}: not tcp:HOST:PORT",
                target.0
            )));
        }
        self.tune_migration(vm, &dir).await?;
        match self
            .qmp(
                vm,
                &dir,
                qmp::Migrate {
                    uri: target.0.clone(),
                },
            )
            .await
        {
            Err(DriverError::BadState { reason, .. }) => return Err(failed(reason)),
            other => drop(other?),
        }
        tracing::info!(vm = %vm, target = %target.0, "migration started");
        self.poll_migration(vm, &dir, progress).await
    }

    /// Polls `query-migrate` until the migration ends or the migration timeout passes
    /// (then it is cancelled).
    async fn poll_migration(
        &self,
        vm: &VmId,
        dir: &super::VmDir,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError> {
        let started = Instant::now();
        let deadline = started + self.cfg.timeouts.migration();
        // Right after `migrate` QEMU may still say `none` while it connects; a `none`
        // that lasts this long means the migration never started.
        let none_deadline = started + self.cfg.timeouts.qmp();
        loop {
            let mut events = self.events(vm, dir).await?;
            let info = self.qmp(vm, dir, qmp::QueryMigrate {}).await?;
            let status = info.status.clone().unwrap_or_else(|| "none".into());
            progress(progress_of(&info));
            match status.as_str() {
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
        Ok(status_of(&self.qmp(vm, &dir, qmp::QueryMigrate {}).await?))
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
        if matches!(state.as_str(), "postmigrate" | "paused") {
            self.qmp(vm, &dir, qmp::Cont {}).await?;
            tracing::info!(vm = %vm, "source resumed after an aborted migration");
        }
        Ok(())
    }

    pub(super) async fn finish_out(&self, vm: &VmId) -> Result<(), DriverError> {
        let dir = self.dir(vm)?;
        let slot = self.slot(vm);
        let _op = slot.op.lock().await;
        if dir.read_meta()?.is_none() {
            return Ok(());
        }
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
        self.terminate(vm, &dir, true).await?;
        tracing::info!(vm = %vm, "source copy quit after the commit point");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(valid_target("tcp:127.0.0.1:4444"));
        assert!(valid_target("tcp:[::1]:4444"));
        assert!(valid_target("tcp:host-a.example:1"));
        assert!(!valid_target("exec:rm -rf /"));
        assert!(!valid_target("tcp:127.0.0.1:0"));
        assert!(!valid_target("tcp:127.0.0.1:99999"));
        assert!(!valid_target("tcp::4444"));
        assert!(!valid_target("tcp:a b:1"));
        assert!(!valid_target("unix:/x"));
    }

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
