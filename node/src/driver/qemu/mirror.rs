//! The source's part of copying a VM's local disks: an NBD client node per disk pointing
//! at the destination's export and a `blockdev-mirror` job (sync full) into it; the
//! memory migration starts once every mirror is ready (in step, guest writes going to
//! both), and in its pause before the switchover (guest stopped, block nodes still
//! active) each mirror is completed (`block-job-cancel` of a ready job: the destination
//! holds a point-in-time copy of the stopped source). On
//! abort every job is abandoned and its node removed; the source's own images are only
//! ever read.
//!
//! Jobs and nodes are named `ballast-mirror-<index>`, so that a restarted agent finds
//! them in QEMU; `vm.json` records how far the copy got ([`MirrorMark`]).

use super::disks;
use super::qmp_block as qb;
use super::target::DiskExport;
use super::vm_dir::{MirrorMark, VmDir};
use super::QemuDriver;
use crate::driver::{DriverError, MigrationProgress};
use ballast_store::{VmId, VmSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// The prefix of ballast's mirror jobs and NBD client nodes.
const PREFIX: &str = "ballast-mirror-";
/// Longest wait between two looks at the jobs (their events wake it earlier).
const JOB_POLL: Duration = Duration::from_millis(50);

fn name(index: usize) -> String {
    format!("{PREFIX}{index}")
}

/// What the mirrors of a migration have copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct DiskBytes {
    /// Bytes copied.
    pub(super) done: u64,
    /// Bytes to copy in all (grows while the guest writes).
    pub(super) total: u64,
}

impl QemuDriver {
    pub(super) async fn set_mirror_mark(
        &self,
        vm: &VmId,
        dir: &VmDir,
        mark: MirrorMark,
    ) -> Result<(), DriverError> {
        let mut meta = dir
            .read_meta()?
            .ok_or_else(|| DriverError::NotFound(vm.clone()))?;
        if meta.mirror != mark {
            meta.mirror = mark;
            dir.write_meta(&meta)?;
        }
        Ok(())
    }

    /// ballast's mirror jobs on `vm`'s QEMU.
    async fn mirror_jobs(&self, vm: &VmId, dir: &VmDir) -> Result<Vec<qb::JobInfo>, DriverError> {
        Ok(self
            .qmp(vm, dir, qb::QueryJobs {})
            .await?
            .into_iter()
            .filter(|j| j.id.starts_with(PREFIX))
            .collect())
    }

    /// `spec` with a record of each disk a move of `vm` would copy (format, virtual size
    /// and allocation as the running QEMU reports them), when that differs from `spec`.
    pub(super) async fn spec_with_copies(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<Option<VmSpec>, DriverError> {
        let plan = disks::plan(&self.cfg, spec)?;
        let local = disks::local_disks(&plan);
        let mut records = Vec::new();
        if !local.is_empty() {
            let dir = self.dir(vm)?;
            if Self::live_pid(&dir).is_none() {
                return Err(DriverError::NotFound(vm.clone()));
            }
            let images: BTreeMap<String, qb::ImageInfo> = self
                .qmp(vm, &dir, qb::QueryBlock {})
                .await?
                .into_iter()
                .filter_map(|b| b.inserted)
                .map(|i| (i.file, i.image))
                .collect();
            for (index, path, format) in local {
                let image = images
                    .get(&path.to_string_lossy().into_owned())
                    .ok_or_else(|| DriverError::BadState {
                        vm: vm.clone(),
                        reason: format!("its QEMU does not have {} open", path.display()),
                    })?;
                records.push(disks::CopyRecord {
                    index,
                    format,
                    capacity: image.virtual_size,
                    allocation: image.actual_size,
                });
            }
        }
        let mut fresh = spec.clone();
        disks::record_copies(&mut fresh.driver_opts, &records);
        Ok((fresh != *spec).then_some(fresh))
    }

    /// Starts a mirror of each of `local` (spec index, file) into `export`.
    pub(super) async fn start_mirrors(
        &self,
        vm: &VmId,
        dir: &VmDir,
        local: &[(usize, &Path)],
        export: &DiskExport,
    ) -> Result<(), DriverError> {
        let nodes = self.block_nodes(vm, dir).await?;
        self.set_mirror_mark(vm, dir, MirrorMark::Started).await?;
        let speed =
            (self.cfg.bandwidth_mbps > 0).then(|| self.cfg.bandwidth_mbps.saturating_mul(125_000));
        for (index, path) in local {
            let device = super::export::node_of(&nodes, path)?;
            let add = qb::BlockdevAddNbd {
                driver: "nbd",
                node_name: name(*index),
                server: qb::NbdServer {
                    kind: "inet",
                    host: export
                        .host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port: export.port.to_string(),
                },
                export: export.export_name(*index),
            };
            self.qmp(vm, dir, add).await?;
            let mirror = qb::BlockdevMirror {
                job_id: name(*index),
                device,
                target: name(*index),
                sync: "full",
                speed,
                auto_dismiss: false,
            };
            self.qmp(vm, dir, mirror).await?;
        }
        tracing::info!(vm = %vm, disks = local.len(), "disk mirrors started");
        crate::failpoints::driver_step(crate::failpoints::DriverStep::MirrorRunning);
        Ok(())
    }

    /// Waits until every mirror is ready (source and destination in step), reporting
    /// the bytes copied; fails when a job ends (its error, e.g. the destination's disk is
    /// full) or `deadline` passes. Returns the bytes copied.
    pub(super) async fn wait_mirrors_ready(
        &self,
        vm: &VmId,
        dir: &VmDir,
        count: usize,
        deadline: Instant,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<DiskBytes, DriverError> {
        let failed = |reason: String| DriverError::MigrationFailed {
            vm: vm.clone(),
            reason,
        };
        loop {
            let mut events = self.events(vm, dir).await?;
            let jobs = self.mirror_jobs(vm, dir).await?;
            if jobs.len() != count {
                return Err(failed(format!(
                    "{} of {count} disk mirrors exist",
                    jobs.len()
                )));
            }
            let bytes = DiskBytes {
                done: jobs.iter().map(|j| j.current_progress).sum(),
                total: jobs.iter().map(|j| j.total_progress).sum(),
            };
            progress(MigrationProgress {
                transferred_bytes: bytes.done,
                remaining_bytes: bytes.total.saturating_sub(bytes.done),
            });
            if let Some(j) = jobs
                .iter()
                .find(|j| j.status == "concluded" || j.status == "aborting")
            {
                let why = j
                    .error
                    .clone()
                    .unwrap_or_else(|| "ended before it was ready".into());
                return Err(failed(format!("disk mirror {} failed: {why}", j.id)));
            }
            if jobs.iter().all(|j| j.status == "ready") {
                tracing::info!(vm = %vm, bytes = bytes.done, "disk mirrors ready");
                return Ok(bytes);
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "disk mirrors not ready within {} ms ({} of {} bytes)",
                    self.cfg.timeouts.migration.get(),
                    bytes.done,
                    bytes.total
                )));
            }
            super::wait_event(&mut events, JOB_POLL).await;
        }
    }

    /// With the source stopped (in the pause before the switchover): completes every
    /// mirror, so that the destination's disks equal the source's now, and records it;
    /// then removes the jobs and NBD nodes. Idempotent (a recorded completion is not done
    /// again).
    pub(super) async fn complete_mirrors(&self, vm: &VmId, dir: &VmDir) -> Result<(), DriverError> {
        let meta = dir
            .read_meta()?
            .ok_or_else(|| DriverError::NotFound(vm.clone()))?;
        let failed = |reason: String| DriverError::MigrationFailed {
            vm: vm.clone(),
            reason,
        };
        match meta.mirror {
            MirrorMark::Completed => return Ok(()),
            MirrorMark::Idle => {
                return Err(failed(
                    "no disk mirror was started or it was cancelled".into(),
                ))
            }
            MirrorMark::Started => {}
        }
        let jobs = self.mirror_jobs(vm, dir).await?;
        if jobs.is_empty() {
            return Err(failed("the disk mirrors are gone".into()));
        }
        for j in &jobs {
            if j.status == "ready" {
                let cancel = qb::BlockJobCancel {
                    device: j.id.clone(),
                    force: false,
                };
                self.qmp(vm, dir, cancel).await?;
            } else if j.status != "concluded" && j.status != "waiting" && j.status != "pending" {
                return Err(failed(format!(
                    "disk mirror {} is {}, not ready",
                    j.id, j.status
                )));
            }
        }
        let deadline = Instant::now() + self.cfg.timeouts.migration();
        loop {
            let mut events = self.events(vm, dir).await?;
            let jobs = self.mirror_jobs(vm, dir).await?;
            if let Some(j) = jobs.iter().find(|j| j.error.is_some()) {
                return Err(failed(format!(
                    "disk mirror {} failed at the switchover: {}",
                    j.id,
                    j.error.clone().unwrap_or_default()
                )));
            }
            if jobs.iter().all(|j| j.status == "concluded") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(failed("disk mirrors did not complete".into()));
            }
            super::wait_event(&mut events, JOB_POLL).await;
        }
        self.set_mirror_mark(vm, dir, MirrorMark::Completed).await?;
        tracing::info!(vm = %vm, "disk mirrors completed: the destination holds the disks");
        if let Err(e) = self.remove_mirrors(vm, dir).await {
            tracing::debug!(vm = %vm, error = %e, "mirror jobs or nodes not removed");
        }
        Ok(())
    }

    /// Abandons every mirror (the destination's copy becomes useless; the source's disks
    /// were only read) and removes the jobs and NBD nodes. Idempotent.
    pub(super) async fn abort_mirrors(&self, vm: &VmId, dir: &VmDir) -> Result<(), DriverError> {
        if dir
            .read_meta()?
            .is_some_and(|m| m.mirror != MirrorMark::Idle)
        {
            self.set_mirror_mark(vm, dir, MirrorMark::Idle).await?;
        }
        let jobs = self.mirror_jobs(vm, dir).await?;
        for j in &jobs {
            if j.status != "concluded" && j.status != "null" && j.status != "aborting" {
                let cancel = qb::BlockJobCancel {
                    device: j.id.clone(),
                    force: true,
                };
                if let Err(e) = self.qmp(vm, dir, cancel).await {
                    tracing::debug!(vm = %vm, job = %j.id, error = %e, "mirror cancel refused");
                }
            }
        }
        let deadline = Instant::now() + self.cfg.timeouts.qmp();
        loop {
            let mut events = self.events(vm, dir).await?;
            let jobs = self.mirror_jobs(vm, dir).await?;
            if jobs
                .iter()
                .all(|j| j.status == "concluded" || j.status == "null")
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout(format!(
                    "VM {vm}: disk mirrors still ending"
                )));
            }
            super::wait_event(&mut events, JOB_POLL).await;
        }
        if !jobs.is_empty() {
            tracing::info!(vm = %vm, jobs = jobs.len(), "disk mirrors abandoned; the source keeps its own disks");
        }
        self.remove_mirrors(vm, dir).await
    }

    /// Dismisses ballast's concluded mirror jobs and deletes its NBD client nodes.
    async fn remove_mirrors(&self, vm: &VmId, dir: &VmDir) -> Result<(), DriverError> {
        for j in self.mirror_jobs(vm, dir).await? {
            if j.status == "concluded" {
                self.qmp(vm, dir, qb::JobDismiss { id: j.id }).await?;
            }
        }
        let nodes = self
            .qmp(vm, dir, qb::QueryNamedBlockNodes { flat: true })
            .await?;
        for n in nodes {
            if n.node_name.starts_with(PREFIX) {
                self.qmp(
                    vm,
                    dir,
                    qb::BlockdevDel {
                        node_name: n.node_name,
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
}
