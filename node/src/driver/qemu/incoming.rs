//! The destination side of a live migration: prepare a paused incoming copy, resume it
//! after the commit point, drop it on abort, tell whether it holds the whole VM.

use super::cmdline::{self, Launch};
use super::qmp;
use super::target::Target;
use super::vm_dir::{self, Role, VmDir, VmMeta};
use super::{export, ports, QemuDriver};
use crate::driver::{DriverError, MigrationTarget};
use ballast_store::{VmId, VmSpec};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long `resume_incoming` waits for an incoming copy still loading its last state.
const INCOMING_SETTLE: Duration = Duration::from_secs(3);
/// How often it looks meanwhile.
const INCOMING_POLL: Duration = Duration::from_millis(5);

impl QemuDriver {
    /// Ports held or about to be held by incoming VMs of this state directory.
    pub(super) fn ports_taken(&self) -> BTreeSet<u16> {
        let mut taken = self
            .reserved_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for dir in vm_dir::scan(&self.cfg.state_dir).unwrap_or_default() {
            if let Ok(Some(VmMeta {
                role: Role::Incoming { target },
                ..
            })) = dir.read_meta()
            {
                taken.extend(
                    Target::parse(&target)
                        .map(|t| t.ports())
                        .unwrap_or_default(),
                );
            }
        }
        taken
    }

    fn reserve(&self, port: u16, on: bool) {
        let mut r = self
            .reserved_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if on {
            r.insert(port);
        } else {
            r.remove(&port);
        }
    }

    pub(super) async fn prepare(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<MigrationTarget, DriverError> {
        let dir = self.dir(vm)?;
        let slot = self.slot(vm);
        let _op = slot.op.lock().await;
        if let Some(meta) = dir.read_meta()? {
            if Self::live_pid(&dir).is_some() {
                return match meta.role {
                    Role::Incoming { target } => Ok(MigrationTarget(target)),
                    Role::Running => Err(DriverError::BadState {
                        vm: vm.clone(),
                        reason: "the VM already runs on this host".into(),
                    }),
                };
            }
            self.terminate(vm, &dir, false).await?;
        }
        cmdline::validate(&self.cfg, spec)?;
        let copies = self.create_copies(vm, spec).await?;
        let offset: u32 = rand::random();
        let mut launched = false;
        for port in ports::candidates(self.cfg.port_range, &self.ports_taken(), offset) {
            if !ports::is_free(&self.cfg.migration_host, port) {
                continue;
            }
            self.reserve(port, true);
            let target = ports::uri(&self.cfg.migration_host, port);
            let mut meta = VmMeta::new(
                vm.clone(),
                spec.clone(),
                Role::Incoming {
                    target: target.clone(),
                },
            );
            meta.created_images = copies.iter().map(|(_, p)| p.clone()).collect();
            let r = self.listen(vm, &dir, &meta, &mut launched).await;
            let r = match r {
                Ok(()) if !copies.is_empty() => {
                    self.export_and_record(vm, &dir, meta, &copies, port).await
                }
                Ok(()) => Ok(target),
                Err(e) => Err(e),
            };
            self.reserve(port, false);
            match r {
                Ok(target) => {
                    tracing::info!(vm = %vm, target = %target, "incoming copy waits");
                    return Ok(MigrationTarget(target));
                }
                Err(DriverError::BadState { reason, .. }) => {
                    tracing::debug!(vm = %vm, port, reason = %reason, "port refused; trying another");
                }
                Err(e) => {
                    if self.terminate(vm, &dir, false).await.is_err() || !launched {
                        export::remove_images(copies.iter().map(|(_, p)| p));
                    }
                    return Err(e);
                }
            }
        }
        if self.terminate(vm, &dir, false).await.is_err() || !launched {
            export::remove_images(copies.iter().map(|(_, p)| p));
        }
        Err(DriverError::Io(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "no free migration port in {:?} on {}",
                self.cfg.port_range, self.cfg.migration_host
            ),
        )))
    }

    /// Exports `copies` of the paused copy listening on `port` and records the whole
    /// target in `vm.json`; returns it.
    async fn export_and_record(
        &self,
        vm: &VmId,
        dir: &VmDir,
        mut meta: VmMeta,
        copies: &[(usize, std::path::PathBuf)],
        port: u16,
    ) -> Result<String, DriverError> {
        let export = match self.export_copies(vm, dir, copies, port).await {
            Ok(e) => e,
            // Not a reason to try another memory port.
            Err(DriverError::BadState { reason, .. }) => return Err(DriverError::Protocol(reason)),
            Err(e) => return Err(e),
        };
        let Role::Incoming { target } = &meta.role else {
            return Err(DriverError::Protocol("export on a running VM".into()));
        };
        let full = Target {
            migration: target.clone(),
            disks: Some(export),
        }
        .render();
        meta.role = Role::Incoming {
            target: full.clone(),
        };
        dir.write_meta(&meta)?;
        Ok(full)
    }

    /// Launches the paused copy (first time) and makes it listen as `meta` says. A
    /// `BadState` error means QEMU refused the address: try another port.
    async fn listen(
        &self,
        vm: &VmId,
        dir: &VmDir,
        meta: &VmMeta,
        launched: &mut bool,
    ) -> Result<(), DriverError> {
        if *launched {
            dir.write_meta(meta)?;
        } else {
            self.launch(vm, dir, meta, Launch::Incoming).await?;
            *launched = true;
            // Keep the destination's disks inactive until `cont`, so that an abort after
            // the switchover can resume the source on shared storage.
            // `events`: `MIGRATION` events wake `resume_incoming`'s wait.
            let caps = ["late-block-activate", "events"]
                .into_iter()
                .map(|capability| qmp::CapabilityState {
                    capability,
                    state: true,
                })
                .collect();
            self.qmp(vm, dir, qmp::MigrateSetCapabilities { capabilities: caps })
                .await
                .map_err(|e| DriverError::Protocol(format!("late-block-activate: {e}")))?;
        }
        let Role::Incoming { target } = &meta.role else {
            return Err(DriverError::Protocol("listen on a running VM".into()));
        };
        self.qmp(
            vm,
            dir,
            qmp::MigrateIncoming {
                uri: target.clone(),
            },
        )
        .await
        .map(drop)
    }

    pub(super) async fn resume_in(&self, vm: &VmId) -> Result<(), DriverError> {
        let dir = self.dir(vm)?;
        let slot = self.slot(vm);
        let _op = slot.op.lock().await;
        let meta = dir
            .read_meta()?
            .ok_or_else(|| DriverError::NotFound(vm.clone()))?;
        if Self::live_pid(&dir).is_none() {
            return Err(DriverError::NotFound(vm.clone()));
        }
        let bad = |reason: &str| DriverError::BadState {
            vm: vm.clone(),
            reason: reason.to_owned(),
        };
        if meta.role == Role::Running {
            return match self.runstate(vm, &dir).await?.as_str() {
                "running" => Ok(()),
                _ => Err(bad("not an incoming copy and not running")),
            };
        }
        // The source may see "completed" a moment before this side has loaded the last
        // of the state: wait (bounded) until this side's incoming migration completes,
        // woken by its `MIGRATION` event. Not `cont` earlier: QEMU activates the disks
        // at `cont` even while still loading (autostart), which takes the image locks
        // from a source that may still run.
        let status = self
            .settled_incoming(vm, &dir, |s| {
                matches!(s, Some("completed" | "failed" | "cancelled"))
            })
            .await?;
        match status.as_deref() {
            // On a copy that already runs (resumed before a crash) `cont` does nothing.
            Some("completed") => {
                // Nothing may write into the disks once the VM runs.
                if !meta.created_images.is_empty() {
                    self.unexport(vm, &dir).await?;
                }
                self.qmp(vm, &dir, qmp::Cont {}).await?;
            }
            Some("failed" | "cancelled") => {
                return Err(bad("the incoming migration did not complete"))
            }
            _ => return Err(bad("the incoming copy has not received the VM's state")),
        }
        dir.write_meta(&VmMeta {
            role: Role::Running,
            // The images are the running VM's disks now, no longer a copy's.
            created_images: Vec::new(),
            ..meta
        })?;
        tracing::info!(vm = %vm, "incoming copy resumed");
        // After the VM runs (off the migration's critical path): ready to move on.
        if let Err(e) = self.tune_migration(vm, &dir).await {
            tracing::debug!(vm = %vm, error = %e, "migration settings not applied after resume");
        }
        Ok(())
    }

    pub(super) async fn cancel_in(&self, vm: &VmId) -> Result<(), DriverError> {
        let dir = self.dir(vm)?;
        let slot = self.slot(vm);
        let _op = slot.op.lock().await;
        let Some(meta) = dir.read_meta()? else {
            return Ok(());
        };
        if meta.role == Role::Running && Self::live_pid(&dir).is_some() {
            return Err(DriverError::BadState {
                vm: vm.clone(),
                reason: "the VM runs here; it is not an incoming copy".into(),
            });
        }
        self.terminate(vm, &dir, false).await?;
        tracing::info!(vm = %vm, "incoming copy dropped");
        Ok(())
    }

    pub(super) async fn incoming_done(&self, vm: &VmId) -> Result<bool, DriverError> {
        let dir = self.dir(vm)?;
        let Some(meta) = dir.read_meta()? else {
            return Ok(false);
        };
        if Self::live_pid(&dir).is_none() {
            return Ok(false);
        }
        if meta.role == Role::Running {
            return Ok(true);
        }
        // A stream still being loaded (the source may already have seen `completed`)
        // is waited for, bounded; one that has not begun (`setup`) is not complete.
        let status = self
            .settled_incoming(vm, &dir, |s| {
                matches!(
                    s,
                    Some("completed" | "none" | "setup" | "failed" | "cancelled") | None
                )
            })
            .await?;
        Ok(status.as_deref() == Some("completed"))
    }

    /// The incoming migration's status once `settled` says so, or the last one seen
    /// when [`INCOMING_SETTLE`] (at most the migration timeout) runs out. Woken by the
    /// copy's `MIGRATION` events, polled at most [`INCOMING_POLL`] apart.
    async fn settled_incoming(
        &self,
        vm: &VmId,
        dir: &VmDir,
        settled: impl Fn(Option<&str>) -> bool,
    ) -> Result<Option<String>, DriverError> {
        let deadline =
            tokio::time::Instant::now() + INCOMING_SETTLE.min(self.cfg.timeouts.migration());
        loop {
            let mut events = self.events(vm, dir).await?;
            let status = self.qmp(vm, dir, qmp::QueryMigrate {}).await?.status;
            if settled(status.as_deref()) || tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
            super::wait_event(&mut events, self.cfg.timeouts.poll().min(INCOMING_POLL)).await;
        }
    }
}
