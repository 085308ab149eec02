//! The destination side: reserve (checks, disk pre-creation, target), resume the paused
//! domain after the commit, drop it (and the disks this host created) after an abort.

use super::disks::{check_destination, disks_of, precreate};
use super::domains::{self};
use super::records::IncomingRecord;
use super::target::LibvirtTarget;
use super::LibvirtDriver;
use crate::driver::{DriverError, MigrationTarget, VmRunState};
use ballast_store::{VmId, VmSpec};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use virt::sys;

impl LibvirtDriver {
    pub(super) async fn prepare(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<MigrationTarget, DriverError> {
        let _defining = self.defining.lock().await;
        if let Some(r) = self.incoming.get::<IncomingRecord>(vm)? {
            return Ok(MigrationTarget(r.target));
        }
        let peer_uri = self.cfg.peer_uri.clone().ok_or_else(|| {
            DriverError::InvalidSpec(
                "driver.libvirt.peer_uri is not set: this host cannot receive VMs".into(),
            )
        })?;
        let all = domains::all(&self.libvirtd).await?;
        if all.iter().any(|v| v.desc.name == vm.as_str()) {
            return Err(DriverError::BadState {
                vm: vm.clone(),
                reason: "a domain of that name is already defined on this host".into(),
            });
        }
        let in_use: Vec<PathBuf> = all
            .iter()
            .flat_map(|v| v.desc.disks.iter().filter_map(|d| d.file.clone()))
            .collect();
        let disks = disks_of(spec)?;
        let to_create = check_destination(vm, &self.cfg, &disks, &in_use)?;
        let migrate_uri = self.migrate_uri_for(vm)?;
        let target = LibvirtTarget {
            peer_uri,
            migrate_uri,
            listen_address: self.cfg.listen_address.clone(),
        }
        .encode();
        // The record first: if the agent dies during the creation, a cancel still knows
        // which files were meant to be this VM's copies.
        let mut record = IncomingRecord {
            target: target.0.clone(),
            created: to_create.iter().filter_map(|d| d.path.clone()).collect(),
        };
        self.incoming.put(vm, &record)?;
        match precreate(&self.cfg, &to_create).await {
            Ok(created) => {
                record.created = created;
                self.incoming.put(vm, &record)?;
            }
            Err(e) => {
                remove_files(&record.created);
                self.incoming.remove(vm)?;
                return Err(e);
            }
        }
        tracing::info!(vm = %vm, disks = to_create.len(), answer = %target.0, "libvirt: reserved as migration destination");
        Ok(target)
    }

    /// The migrate URI of a new incoming VM: with `port_range`, on a port that no other
    /// reservation of this host holds and that is free now; else the configured URI
    /// (libvirt's port). The disk copy's port is libvirt's (qemu.conf's range): libvirt
    /// 9 kept a `disks_port` it was given reserved after the migration, and refused it
    /// for the next one ("Failed to reserve port").
    fn migrate_uri_for(&self, vm: &VmId) -> Result<Option<String>, DriverError> {
        let (Some([first, last]), Some(uri)) = (self.cfg.port_range, &self.cfg.migrate_uri) else {
            return Ok(self.cfg.migrate_uri.clone());
        };
        let mut held = Vec::new();
        for other in self.incoming.vms().into_iter().filter(|v| v != vm) {
            if let Some(r) = self.incoming.get::<IncomingRecord>(&other)? {
                if let Ok(t) = LibvirtTarget::decode(&MigrationTarget(r.target)) {
                    held.extend(t.port());
                }
            }
        }
        let ip: IpAddr = self
            .cfg
            .listen_address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        (first..=last)
            .filter(|p| !held.contains(p))
            .find(|p| TcpListener::bind((ip, *p)).is_ok())
            .map(|p| Some(format!("{uri}:{p}")))
            .ok_or_else(|| {
                DriverError::NoRoom(format!(
                    "no free port in driver.libvirt.port_range [{first}, {last}] for {vm} \
                     ({} held by other incoming VMs)",
                    held.len()
                ))
            })
    }

    pub(super) async fn resume_in(&self, vm: &VmId) -> Result<(), DriverError> {
        let Some(v) = self.managed(vm).await? else {
            return Err(DriverError::BadState {
                vm: vm.clone(),
                reason: "no domain here: the incoming copy has not received its state".into(),
            });
        };
        match v.run_state() {
            VmRunState::Running => {}
            VmRunState::Paused => {
                domains::with_domain(&self.libvirtd, vm, "resume domain", |d| d.resume()).await?;
                tracing::info!(vm = %vm, "libvirt: incoming domain resumed");
            }
            s => {
                return Err(DriverError::BadState {
                    vm: vm.clone(),
                    reason: format!("cannot resume a domain that is {s:?}"),
                })
            }
        }
        self.incoming.remove(vm)?;
        self.stats.invalidate().await;
        Ok(())
    }

    pub(super) async fn cancel_in(&self, vm: &VmId) -> Result<(), DriverError> {
        let record = self.incoming.get::<IncomingRecord>(vm)?;
        if let Some(v) = domains::view(&self.libvirtd, vm.as_str()).await? {
            if record.is_none() && v.desc.managed_as.as_ref() != Some(vm) {
                return Ok(()); // not ours: nothing of this host's incoming copy remains
            }
            if v.running() {
                return Err(DriverError::BadState {
                    vm: vm.clone(),
                    reason: "the domain runs here: a running copy is never dropped".into(),
                });
            }
            let r = domains::with_domain(&self.libvirtd, vm, "drop incoming domain", |d| {
                if d.is_active()? {
                    d.destroy()?;
                }
                if d.is_persistent()? {
                    d.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM)?;
                }
                Ok(())
            })
            .await;
            match r {
                Ok(()) | Err(DriverError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(r) = record {
            remove_files(&r.created);
        }
        self.incoming.remove(vm)?;
        Ok(())
    }

    /// A paused domain with no job under way holds the whole VM (libvirt defines it here
    /// only when the migration's last phase succeeded).
    pub(super) async fn incoming_done(&self, vm: &VmId) -> Result<bool, DriverError> {
        Ok(self
            .managed(vm)
            .await?
            .is_some_and(|v| v.run_state() == VmRunState::Paused))
    }
}

fn remove_files(paths: &[PathBuf]) {
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => {
                tracing::info!(path = %p.display(), "removed the disk created for a cancelled move")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a disk created for a cancelled move")
            }
        }
    }
}
