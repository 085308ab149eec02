//! The source side: the peer-to-peer migration (`virDomainMigrateToURI3`) with progress
//! from the job info, and what is known afterwards. libvirt ends the source domain when
//! the migration completes, so once it is gone the outcome is asked from the destination
//! (its libvirtd, from the outgoing record): holding the domain means completed.

use super::config::LibvirtConfig;
use super::connection::Libvirtd;
use super::domains;
use super::ffi::abort_job;
use super::records::OutgoingRecord;
use super::target::LibvirtTarget;
use super::LibvirtDriver;
use crate::driver::{DriverError, MigrationProgress, MigrationStatus, MigrationTarget, VmRunState};
use ballast_store::VmId;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;
use virt::domain::MigrateParameters;
use virt::sys;

/// How often a running migration's job info is read for progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How often a cancelled migration is looked at until its job is gone.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The flags of every migration this driver starts (`copy_disks`: some disk is not on
/// shared storage and is copied): the source is ended when it completes, the
/// destination stays paused until the handoff commits.
pub(crate) fn migrate_flags(cfg: &LibvirtConfig, copy_disks: bool) -> u32 {
    let mut flags = sys::VIR_MIGRATE_LIVE
        | sys::VIR_MIGRATE_PEER2PEER
        | sys::VIR_MIGRATE_PERSIST_DEST
        | sys::VIR_MIGRATE_UNDEFINE_SOURCE
        | sys::VIR_MIGRATE_PAUSED
        | sys::VIR_MIGRATE_ABORT_ON_ERROR;
    if copy_disks {
        flags |= sys::VIR_MIGRATE_NON_SHARED_DISK;
    }
    if cfg.tls {
        flags |= sys::VIR_MIGRATE_TLS;
    }
    if cfg.allow_unsafe {
        flags |= sys::VIR_MIGRATE_UNSAFE;
    }
    flags
}

impl LibvirtDriver {
    pub(super) async fn migrate(
        &self,
        vm: &VmId,
        target: &MigrationTarget,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError> {
        let v = self
            .managed(vm)
            .await?
            .ok_or_else(|| DriverError::NotFound(vm.clone()))?;
        let t = LibvirtTarget::decode(target)?;
        let bad = |reason: String| DriverError::BadState {
            vm: vm.clone(),
            reason,
        };
        if v.job_active {
            return Err(bad("a migration is already under way".into()));
        }
        if !matches!(v.run_state(), VmRunState::Running | VmRunState::Paused) {
            return Err(bad(format!(
                "cannot migrate a domain that is {:?}",
                v.run_state()
            )));
        }
        let copied_disks: Vec<_> = v
            .desc
            .disks
            .iter()
            .filter(|d| {
                !d.readonly
                    && matches!(d.kind.as_str(), "file" | "block")
                    && d.file.as_deref().is_some_and(|p| !self.cfg.is_shared(p))
            })
            .collect();
        let copied: Vec<String> = copied_disks.iter().map(|d| d.target.clone()).collect();
        let copied_files: Vec<PathBuf> = copied_disks
            .iter()
            .filter(|d| d.kind == "file")
            .filter_map(|d| d.file.clone())
            .collect();
        let flags = migrate_flags(&self.cfg, !copied.is_empty());
        let params = MigrateParameters {
            uri: t.migrate_uri.clone(),
            listen_address: t.listen_address.clone(),
            migrate_disks: copied,
            bandwidth: (self.cfg.bandwidth_mibps > 0).then_some(self.cfg.bandwidth_mibps),
            ..MigrateParameters::default()
        };
        // Durable before the call: after the call libvirt may have ended the source, and
        // only this record says where the VM went.
        self.outgoing.put(
            vm,
            &OutgoingRecord {
                peer_uri: t.peer_uri.clone(),
                copied_files,
            },
        )?;
        let name = vm.as_str().to_owned();
        let peer = t.peer_uri.clone();
        let call = self
            .libvirtd
            .call_once_within(self.cfg.migrate_timeout.duration(), move |c| {
                let d = c.lookup_domain_by_name(&name)?;
                d.migrate_to_uri3(Some(&peer), params.clone(), flags)
            });
        tokio::pin!(call);
        let started = Instant::now();
        let result = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    if let Ok(p) = self.job_progress(vm).await {
                        progress(p);
                    }
                }
            }
        };
        self.stats.invalidate().await;
        match result {
            Ok(()) => {
                tracing::info!(vm = %vm, ms = started.elapsed().as_millis() as u64, "libvirt: migration completed; the source domain is gone");
                Ok(())
            }
            Err(e) => Err(DriverError::MigrationFailed {
                vm: vm.clone(),
                reason: e.into_driver("migrate").to_string(),
            }),
        }
    }

    /// The job's progress now.
    async fn job_progress(&self, vm: &VmId) -> Result<MigrationProgress, DriverError> {
        domains::with_domain(&self.libvirtd, vm, "job info", |d| d.job_info())
            .await
            .map(|j| MigrationProgress {
                transferred_bytes: j.data_processed.unwrap_or(0),
                remaining_bytes: j.data_remaining.unwrap_or(0),
            })
    }

    /// Whether the destination of `vm`'s last outgoing migration holds the domain.
    /// `None` when this host never started one (no record).
    async fn went_to_peer(&self, vm: &VmId) -> Result<Option<bool>, DriverError> {
        let Some(r) = self.outgoing.get::<OutgoingRecord>(vm)? else {
            return Ok(None);
        };
        let peer = Libvirtd::new(r.peer_uri.clone(), self.cfg.call_timeout.duration());
        match domains::view(&peer, vm.as_str()).await {
            Ok(v) => Ok(Some(v.is_some())),
            Err(e) => Err(DriverError::Unavailable(format!(
                "cannot ask the destination {} whether it holds {vm}: {e}",
                r.peer_uri
            ))),
        }
    }

    pub(super) async fn outgoing_status(&self, vm: &VmId) -> Result<MigrationStatus, DriverError> {
        if let Some(v) = self.managed(vm).await? {
            return Ok(if v.job_active {
                MigrationStatus::Active
            } else {
                MigrationStatus::None
            });
        }
        Ok(match self.went_to_peer(vm).await? {
            Some(true) => MigrationStatus::Completed,
            _ => MigrationStatus::None,
        })
    }

    pub(super) async fn cancel_out(&self, vm: &VmId) -> Result<(), DriverError> {
        let deadline = Instant::now() + self.cfg.call_timeout.duration();
        loop {
            let Some(v) = self.managed(vm).await? else {
                return match self.went_to_peer(vm).await? {
                    Some(true) => Err(DriverError::SwitchedOver(vm.clone())),
                    Some(false) => {
                        tracing::warn!(vm = %vm, "libvirt: the domain is on neither host (undefined outside ballast?)");
                        Ok(())
                    }
                    None => Ok(()),
                };
            };
            if v.job_active {
                let r = domains::with_domain(&self.libvirtd, vm, "abort job", abort_job).await;
                if let Err(e) = r {
                    tracing::debug!(vm = %vm, error = %e, "abort job");
                }
                if Instant::now() >= deadline {
                    return Err(DriverError::Timeout(format!(
                        "the migration of {vm} did not stop"
                    )));
                }
                tokio::time::sleep(CANCEL_POLL).await;
                continue;
            }
            if v.run_state() == VmRunState::Paused {
                domains::with_domain(&self.libvirtd, vm, "resume domain", |d| d.resume()).await?;
                tracing::info!(vm = %vm, "libvirt: migration cancelled; the source runs again");
            }
            self.outgoing.remove(vm)?;
            return Ok(());
        }
    }

    /// With `remove_source_disks`, deletes this host's files of the disks that the
    /// committed migration of `vm` copied, once the destination is seen holding the
    /// domain (else they stay, with a warning; errors are logged: the move stands).
    async fn remove_copied_files(&self, vm: &VmId) -> Result<(), DriverError> {
        if !self.cfg.remove_source_disks {
            return Ok(());
        }
        let Some(r) = self.outgoing.get::<OutgoingRecord>(vm)? else {
            return Ok(());
        };
        match self.went_to_peer(vm).await {
            Ok(Some(true)) => {}
            other => {
                tracing::warn!(vm = %vm, seen = ?other, "libvirt: the destination was not seen holding the VM; the source's disk files are kept");
                return Ok(());
            }
        }
        for f in &r.copied_files {
            match std::fs::remove_file(f) {
                Ok(()) => {
                    tracing::info!(vm = %vm, path = %f.display(), "libvirt: removed the source's copy of a moved disk")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(vm = %vm, path = %f.display(), error = %e, "libvirt: cannot remove the source's copy of a moved disk")
                }
            }
        }
        Ok(())
    }

    pub(super) async fn finish_out(&self, vm: &VmId) -> Result<(), DriverError> {
        if let Some(v) = self.managed(vm).await? {
            if v.running() || self.went_to_peer(vm).await? != Some(true) {
                return Err(DriverError::BadState {
                    vm: vm.clone(),
                    reason: "the source domain still holds the VM".into(),
                });
            }
            // A paused leftover of a completed migration (libvirt could not end it).
            domains::with_domain(&self.libvirtd, vm, "end source domain", |d| {
                if d.is_active()? {
                    d.destroy()?;
                }
                if d.is_persistent()? {
                    d.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM)?;
                }
                Ok(())
            })
            .await?;
        }
        self.remove_copied_files(vm).await?;
        self.outgoing.remove(vm)
    }
}
