//! The destination's part of copying a VM's local disks: before the paused copy starts,
//! checks (the files are not another VM's, enough free space) and creates each copied
//! disk as an empty image of the source's format and virtual size; once it runs, serves
//! them writable over NBD on the migration address, under export names that hold a fresh
//! random token; at resume or drop, removes the exports and stops the server.

use super::disks::{self, CopyRecord};
use super::qmp_block as qb;
use super::target::DiskExport;
use super::vm_dir::{self, VmDir};
use super::{ports, QemuDriver};
use crate::driver::{disk_image, DriverError};
use ballast_store::{VmId, VmSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The QEMU-side id of disk `index`'s export.
fn export_id(index: usize) -> String {
    format!("ballast-export-{index}")
}

impl QemuDriver {
    /// The image files that the VMs of this state directory (other than `vm`) use.
    fn files_in_use(&self, vm: &VmId) -> Vec<PathBuf> {
        let mut used = Vec::new();
        for dir in vm_dir::scan(&self.cfg.state_dir).unwrap_or_default() {
            let Ok(Some(meta)) = dir.read_meta() else {
                continue;
            };
            if meta.vm == *vm || Self::live_pid(&dir).is_none() {
                continue;
            }
            for d in disks::plan(&self.cfg, &meta.spec).unwrap_or_default() {
                if let disks::Disk::Image { path, .. } = d {
                    used.push(path);
                }
            }
        }
        used
    }

    /// Creates the empty images of the disks `spec` records as copied; returns each
    /// disk's index and file. Refuses a file another VM of this host uses, and `NoRoom`
    /// when the filesystem lacks the space; creates nothing then.
    pub(super) async fn create_copies(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<Vec<(usize, PathBuf)>, DriverError> {
        let copies = disks::copies_of(spec)?;
        if copies.is_empty() {
            return Ok(Vec::new());
        }
        let in_use = self.files_in_use(vm);
        let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
        let mut files: Vec<(CopyRecord, PathBuf)> = Vec::new();
        for c in copies {
            let path = disks::path_of(&self.cfg, spec, c.index)
                .ok_or_else(|| DriverError::InvalidSpec(format!("no disk {}", c.index)))?;
            if in_use.contains(&path) {
                return Err(DriverError::BadState {
                    vm: vm.clone(),
                    reason: format!("disk file {} is used by another VM here", path.display()),
                });
            }
            let parent = path
                .parent()
                .unwrap_or(std::path::Path::new("/"))
                .to_owned();
            std::fs::create_dir_all(&parent)?;
            *need.entry(parent).or_default() +=
                disk_image::space_needed(c.format, c.capacity, c.allocation);
            files.push((c, path));
        }
        disk_image::check_space(vm, &need)?;
        let mut created = Vec::new();
        for (c, path) in files {
            if path.exists() {
                tracing::warn!(vm = %vm, path = %path.display(), "replacing a disk file no VM here uses (a stale copy)");
            }
            if let Err(e) =
                disk_image::create(&self.cfg.qemu_img, &path, c.format, c.capacity).await
            {
                remove_images(created.iter().map(|(_, p): &(usize, PathBuf)| p));
                return Err(e);
            }
            created.push((c.index, path));
        }
        Ok(created)
    }

    /// Starts the NBD server of `vm`'s paused copy on a free port of the migration range
    /// (not `avoid`) and exports each of `copies` writable. Returns what the source needs.
    pub(super) async fn export_copies(
        &self,
        vm: &VmId,
        dir: &VmDir,
        copies: &[(usize, PathBuf)],
        avoid: u16,
    ) -> Result<DiskExport, DriverError> {
        let nodes = self.block_nodes(vm, dir).await?;
        let mut taken = self.ports_taken();
        taken.insert(avoid);
        let mut port = None;
        for p in ports::candidates(self.cfg.port_range, &taken, rand::random()) {
            if !ports::is_free(&self.cfg.migration_host, p) {
                continue;
            }
            let addr = qb::SocketAddress {
                kind: "inet",
                data: qb::InetAddress {
                    host: self.cfg.migration_host.clone(),
                    port: p.to_string(),
                },
            };
            match self.qmp(vm, dir, qb::NbdServerStart { addr }).await {
                Ok(_) => {
                    port = Some(p);
                    break;
                }
                Err(DriverError::BadState { reason, .. }) => {
                    tracing::debug!(vm = %vm, port = p, reason = %reason, "NBD port refused; trying another");
                }
                Err(e) => return Err(e),
            }
        }
        let port = port.ok_or_else(|| {
            DriverError::Io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "no free port for the disk copy in {:?} on {}",
                    self.cfg.port_range, self.cfg.migration_host
                ),
            ))
        })?;
        let export = DiskExport {
            host: self.cfg.migration_host.clone(),
            port,
            token: format!("ballast-{:032x}", rand::random::<u128>()),
            indexes: copies.iter().map(|(i, _)| *i).collect(),
        };
        for (index, path) in copies {
            let node_name = node_of(&nodes, path)?;
            let add = qb::BlockExportAdd {
                kind: "nbd",
                id: export_id(*index),
                node_name,
                name: export.export_name(*index),
                writable: true,
            };
            self.qmp(vm, dir, add).await?;
        }
        tracing::info!(vm = %vm, port, disks = ?export.indexes, "local disks exported for the copy");
        Ok(export)
    }

    /// The top block node of each file `vm`'s QEMU has open, by file name.
    pub(super) async fn block_nodes(
        &self,
        vm: &VmId,
        dir: &VmDir,
    ) -> Result<BTreeMap<String, String>, DriverError> {
        Ok(self
            .qmp(vm, dir, qb::QueryBlock {})
            .await?
            .into_iter()
            .filter_map(|b| b.inserted)
            .map(|i| (i.file, i.node_name))
            .collect())
    }

    /// Removes `vm`'s disk exports (disconnecting any client) and stops its NBD server;
    /// what is already gone is fine.
    pub(super) async fn unexport(&self, vm: &VmId, dir: &VmDir) -> Result<(), DriverError> {
        for e in self.qmp(vm, dir, qb::QueryBlockExports {}).await? {
            if e.id.starts_with("ballast-export-") {
                let del = qb::BlockExportDel {
                    id: e.id,
                    mode: "hard",
                };
                self.qmp(vm, dir, del).await?;
            }
        }
        match self.qmp(vm, dir, qb::NbdServerStop {}).await {
            Ok(_) | Err(DriverError::BadState { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The node of `path` in a [`QemuDriver::block_nodes`] map.
pub(super) fn node_of(
    nodes: &BTreeMap<String, String>,
    path: &std::path::Path,
) -> Result<String, DriverError> {
    nodes
        .get(&path.to_string_lossy().into_owned())
        .cloned()
        .ok_or_else(|| {
            DriverError::Protocol(format!("QEMU has no block node for {}", path.display()))
        })
}

/// Deletes image files made for an incoming copy that is dropped; absent is fine.
pub(super) fn remove_images<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) {
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => {
                tracing::info!(path = %p.display(), "disk copy of a dropped incoming VM deleted")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot delete the disk copy of a dropped incoming VM")
            }
        }
    }
}
