//! The bare copy of a VM's local disks for the yardstick of `ballast bench handoff
//! --driver qemu --storage local`: the QMP commands an operator types by hand around
//! `migrate` (after the destination exported its new images over NBD): on the source an
//! NBD client node and a `blockdev-mirror` per disk, poll until every job is ready; in
//! the memory migration's pause before the switchover (`pause-before-switchover`),
//! `block-job-cancel` (complete) each, poll until concluded, dismiss and delete the nodes;
//! after it the caller deletes the exports and stops the NBD server on the destination.
//! Polled every millisecond; none of the driver's bookkeeping.

use super::qmp_block as qb;
use super::target::DiskExport;
use super::vm_dir::VmDir;
use super::QemuDriver;
use crate::driver::DriverError;
use ballast_store::VmId;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Poll interval of `query-jobs`.
const POLL: Duration = Duration::from_millis(1);

fn job(index: usize) -> String {
    format!("bare-mirror-{index}")
}

/// Polls `query-jobs` until `done` holds for every bare mirror job (a job that failed is
/// an error), bounded by the migration timeout.
async fn wait_jobs(
    src: &QemuDriver,
    vm: &VmId,
    dir: &VmDir,
    count: usize,
    done: &str,
) -> Result<(), DriverError> {
    let deadline = Instant::now() + src.cfg.timeouts.migration();
    loop {
        let jobs: Vec<qb::JobInfo> = src
            .qmp(vm, dir, qb::QueryJobs {})
            .await?
            .into_iter()
            .filter(|j| j.id.starts_with("bare-mirror-"))
            .collect();
        if let Some(j) = jobs.iter().find(|j| j.error.is_some()) {
            return Err(DriverError::MigrationFailed {
                vm: vm.clone(),
                reason: format!("bare mirror {}: {:?}", j.id, j.error),
            });
        }
        if jobs.len() == count && jobs.iter().all(|j| j.status == done) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DriverError::Timeout(format!("bare mirrors not {done}")));
        }
        sleep(POLL).await;
    }
}

/// Starts a mirror of each of `disks` (spec index, file on the source) into `export` and
/// waits until all are ready.
pub(super) async fn mirror_until_ready(
    src: &QemuDriver,
    vm: &VmId,
    dir: &VmDir,
    disks: &[(usize, PathBuf)],
    export: &DiskExport,
) -> Result<(), DriverError> {
    let nodes = src.block_nodes(vm, dir).await?;
    let speed =
        (src.cfg.bandwidth_mbps > 0).then(|| src.cfg.bandwidth_mbps.saturating_mul(125_000));
    for (index, path) in disks {
        let add = qb::BlockdevAddNbd {
            driver: "nbd",
            node_name: job(*index),
            server: qb::NbdServer {
                kind: "inet",
                host: export.host.clone(),
                port: export.port.to_string(),
            },
            export: export.export_name(*index),
        };
        src.qmp(vm, dir, add).await?;
        let mirror = qb::BlockdevMirror {
            job_id: job(*index),
            device: super::export::node_of(&nodes, path)?,
            target: job(*index),
            sync: "full",
            speed,
            auto_dismiss: false,
        };
        src.qmp(vm, dir, mirror).await?;
    }
    wait_jobs(src, vm, dir, disks.len(), "ready").await
}

/// In the pause before the switchover: completes the mirrors and removes their jobs and
/// nodes on the source.
pub(super) async fn complete(
    s: &QemuDriver,
    vm: &VmId,
    sdir: &VmDir,
    disks: &[(usize, PathBuf)],
) -> Result<(), DriverError> {
    for (index, _) in disks {
        let cancel = qb::BlockJobCancel {
            device: job(*index),
            force: false,
        };
        s.qmp(vm, sdir, cancel).await?;
    }
    wait_jobs(s, vm, sdir, disks.len(), "concluded").await?;
    for (index, _) in disks {
        s.qmp(vm, sdir, qb::JobDismiss { id: job(*index) }).await?;
        s.qmp(
            vm,
            sdir,
            qb::BlockdevDel {
                node_name: job(*index),
            },
        )
        .await?;
    }
    Ok(())
}
