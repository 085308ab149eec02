//! Timing of a bare QMP live migration, the yardstick of `ballast bench handoff`: the
//! same VM size migrated by QEMU alone (start, prepare, `migrate`, poll until
//! `completed`), so that ballast's whole handoff can be reported as a ratio of it.

use super::vm_dir::VmDir;
use super::{qmp, QemuConfig, QemuDriver};
use crate::driver::{Driver, DriverError};
use ballast_store::{VmId, VmSpec};
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Poll interval of `query-migrate` while timing (finer than the driver's default).
const BENCH_POLL: Duration = Duration::from_millis(2);

/// What one bare QMP migration took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QmpMigrateTiming {
    /// Wall time from sending `migrate` to seeing `completed`, in milliseconds.
    pub qmp_migrate_ms: f64,
    /// QEMU's own `total-time` of the migration, in milliseconds.
    pub qemu_total_ms: Option<u64>,
    /// QEMU's measured downtime at the switchover, in milliseconds.
    pub downtime_ms: Option<u64>,
    /// RAM bytes sent.
    pub transferred_bytes: u64,
}

/// Kills the bench VMs when dropped, whatever happened.
struct Cleanup<'a>(&'a [std::path::PathBuf]);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for d in self.0 {
            QemuDriver::kill_all_in(d);
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Starts a VM of `spec` under `cfg.state_dir/bench-src`, lets it run for `warmup`,
/// prepares an incoming copy under `cfg.state_dir/bench-dst`, and times a bare QMP
/// migration between them (on `cfg.migration_host`, with `cfg`'s downtime limit and
/// bandwidth). Both QEMU processes are gone when it returns, also on error.
pub async fn bench_qmp_migrate(
    cfg: &QemuConfig,
    spec: &VmSpec,
    warmup: Duration,
) -> Result<QmpMigrateTiming, DriverError> {
    let dirs = [
        cfg.state_dir.join("bench-src"),
        cfg.state_dir.join("bench-dst"),
    ];
    let _cleanup = Cleanup(&dirs);
    let side = |d: &std::path::PathBuf| {
        QemuDriver::new(QemuConfig {
            state_dir: d.clone(),
            ..cfg.clone()
        })
    };
    let (src, dst) = (side(&dirs[0])?, side(&dirs[1])?);
    let vm = VmId::from("bench-qmp");
    src.start(&vm, spec).await?;
    sleep(warmup).await;
    let target = dst.prepare_incoming(&vm, spec).await?;
    let src_dir = VmDir::of(&dirs[0], &vm)?;
    let params = qmp::MigrateSetParameters {
        downtime_limit: Some(cfg.downtime_limit_ms),
        max_bandwidth: (cfg.bandwidth_mbps > 0).then(|| cfg.bandwidth_mbps.saturating_mul(125_000)),
    };
    src.qmp(&vm, &src_dir, params).await?;
    let deadline = Instant::now() + cfg.timeouts.migration();
    let t0 = Instant::now();
    src.qmp(&vm, &src_dir, qmp::Migrate { uri: target.0 })
        .await?;
    let info = loop {
        let info = src.qmp(&vm, &src_dir, qmp::QueryMigrate {}).await?;
        match info.status.as_deref() {
            Some("completed") => break info,
            Some("failed" | "cancelled") => {
                return Err(DriverError::MigrationFailed {
                    vm,
                    reason: info.error_desc.unwrap_or_else(|| "failed".into()),
                })
            }
            _ if Instant::now() >= deadline => {
                return Err(DriverError::Timeout("bench migration".into()));
            }
            _ => sleep(BENCH_POLL).await,
        }
    };
    let qmp_migrate_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let _ = dst.stop(&vm).await;
    let _ = src.stop(&vm).await;
    Ok(QmpMigrateTiming {
        qmp_migrate_ms,
        qemu_total_ms: info.total_time,
        downtime_ms: info.downtime,
        transferred_bytes: info.ram.map_or(0, |r| r.transferred),
    })
}
