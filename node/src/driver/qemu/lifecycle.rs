//! Start, stop, list, usage and adoption of QEMU VMs.

use super::cmdline::{self, Launch};
use super::vm_dir::{self, Role, VmDir, VmMeta};
use super::{process, procfs, run_state, QemuDriver};
use crate::driver::{DriverError, UsageSample, VmInfo, VmRunState};
use ballast_store::{VmId, VmSpec};

impl QemuDriver {
    /// Launches QEMU for `vm` in a fresh directory and returns its pid. On failure the
    /// directory is removed again.
    pub(super) async fn launch(
        &self,
        vm: &VmId,
        dir: &VmDir,
        meta: &VmMeta,
        launch: Launch,
    ) -> Result<u32, DriverError> {
        let args = cmdline::build(&self.cfg, self.kvm, dir, vm, &meta.spec, launch)?;
        dir.create_fresh()?;
        dir.write_meta(meta)?;
        let pid =
            match process::launch(&self.cfg.binary, &args, dir, self.cfg.timeouts.start()).await {
                Ok(pid) => pid,
                Err(e) => {
                    let _ = dir.remove();
                    return Err(e);
                }
            };
        if let Err(e) = dir.restrict_socket() {
            process::kill(pid, &dir.qmp).await;
            let _ = dir.remove();
            return Err(e.into());
        }
        tracing::info!(vm = %vm, pid, ?launch, "QEMU started");
        Ok(pid)
    }

    /// Cleans up a directory whose process is gone (crash, host reboot).
    async fn clean_dead(&self, vm: &VmId, dir: &VmDir) -> Result<(), DriverError> {
        tracing::info!(vm = %vm, "removing the state of a QEMU process that is gone");
        self.terminate(vm, dir, false).await
    }

    pub(super) async fn start_vm(&self, vm: &VmId, spec: &VmSpec) -> Result<(), DriverError> {
        let dir = self.dir(vm)?;
        let slot = self.slot(vm);
        let _op = slot.op.lock().await;
        if let Some(meta) = dir.read_meta()? {
            if Self::live_pid(&dir).is_some() {
                return match meta.role {
                    Role::Running => Ok(()),
                    Role::Incoming { .. } => Err(DriverError::BadState {
                        vm: vm.clone(),
                        reason: "an incoming copy is waiting here; resume or cancel it".into(),
                    }),
                };
            }
            self.clean_dead(vm, &dir).await?;
        }
        cmdline::validate(&self.cfg, spec)?;
        let meta = VmMeta::new(vm.clone(), spec.clone(), Role::Running);
        self.launch(vm, &dir, &meta, Launch::Run).await?;
        if let Err(e) = self.tune_migration(vm, &dir).await {
            // The VM runs; `migrate_out` tries again.
            tracing::warn!(vm = %vm, error = %e, "migration settings not applied at start");
        }
        Ok(())
    }

    pub(super) async fn stop_vm(&self, vm: &VmId) -> Result<(), DriverError> {
        let dir = self.dir(vm)?;
        let slot = self.slot(vm);
        let _op = slot.op.lock().await;
        self.terminate(vm, &dir, true).await?;
        tracing::info!(vm = %vm, "VM stopped");
        Ok(())
    }

    pub(super) fn usage_of(&self, vm: &VmId) -> Result<UsageSample, DriverError> {
        let dir = self.dir(vm)?;
        if dir.read_meta()?.is_none() {
            return Err(DriverError::NotFound(vm.clone()));
        }
        let pid = Self::live_pid(&dir).ok_or_else(|| DriverError::NotFound(vm.clone()))?;
        procfs::usage(pid).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DriverError::NotFound(vm.clone()),
            _ => DriverError::Io(e),
        })
    }

    /// The state of the VM in `dir`, asking QEMU; `None` for a directory with no record.
    async fn info_of(&self, dir: &VmDir) -> Result<Option<VmInfo>, DriverError> {
        let Some(meta) = dir.read_meta()? else {
            return Ok(None);
        };
        let vm = meta.vm;
        if Self::live_pid(dir).is_none() {
            return Ok(Some(VmInfo {
                vm,
                state: VmRunState::Stopped,
            }));
        }
        let state = match self.runstate(&vm, dir).await {
            Ok(s) => run_state(&s),
            Err(e) => {
                // One unresponsive QEMU must not hide the others: report what it is for.
                tracing::warn!(vm = %vm, error = %e, "QMP query-status failed");
                match meta.role {
                    Role::Running => VmRunState::Running,
                    Role::Incoming { .. } => VmRunState::Incoming,
                }
            }
        };
        Ok(Some(VmInfo { vm, state }))
    }

    pub(super) async fn list_vms(&self) -> Result<Vec<VmInfo>, DriverError> {
        let mut out = Vec::new();
        for dir in vm_dir::scan(&self.cfg.state_dir)? {
            match self.info_of(&dir).await {
                Ok(Some(info)) => out.push(info),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.dir.display(), error = %e, "unreadable VM directory")
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn adopt_all(&self) -> Result<Vec<VmInfo>, DriverError> {
        let mut adopted = Vec::new();
        for dir in vm_dir::scan(&self.cfg.state_dir)? {
            let Ok(Some(meta)) = dir.read_meta() else {
                continue;
            };
            let Some(pid) = Self::live_pid(&dir) else {
                continue;
            };
            self.drop_connection(&meta.vm).await;
            if let Some(info) = self.info_of(&dir).await? {
                tracing::info!(vm = %info.vm, pid, state = ?info.state, "adopted running QEMU");
                adopted.push(info);
            }
        }
        Ok(adopted)
    }
}
