//! Timing of a bare QMP live migration, the yardstick of `ballast bench handoff`: the
//! same VM migrated by QEMU alone, as an operator does it by hand — launch the
//! destination paused with `-incoming defer`, `migrate-incoming`, `migrate` on the
//! source, wait for `completed`, `cont` the destination — so that ballast's whole
//! handoff can be reported as a ratio of it.
//!
//! [`BareMigrations`] moves one VM back and forth between two state directories, as
//! the agents' handoffs do, so both start from a VM that has long finished booting.
//! Both the bare sequence and the agents' handoff are timed to the same end point: the
//! destination QEMU's `RESUME` event (the VM runs again), read with the event's own
//! timestamp from a second QMP monitor ([`EventTap`], added with [`tap_args`]), so the
//! figure does not depend on who is watching or how often.

use super::target::Target;
use super::vm_dir::{MirrorMark, VmDir};
use super::{bench_local, disks, outgoing, qmp, QemuConfig, QemuDriver};
use crate::driver::{Driver, DriverError};
use ballast_store::{VmId, VmSpec};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout, Instant};

/// Poll interval of `query-migrate` in the bare sequence.
const BENCH_POLL: Duration = Duration::from_millis(1);
/// Interval between two connection attempts of an [`EventTap`].
const TAP_RETRY: Duration = Duration::from_millis(1);
/// Longest QMP line an [`EventTap`] reads.
const TAP_LINE_MAX: u64 = 64 * 1024;
/// Most events an [`EventTap`] keeps while answering a command.
const TAP_KEPT_MAX: usize = 64;
/// Bound of each wait of the bare sequence for an event.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// What one bare QMP migration took. Every `*_ms` is wall time in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QmpMigrateTiming {
    /// The whole sequence: from launching the destination QEMU to the destination's
    /// `RESUME` event (the VM runs there). The baseline of `bench handoff --driver qemu`.
    pub total_ms: f64,
    /// Launching the paused destination until it listens (`prepare_incoming`: start
    /// with `-incoming defer`, capabilities, `migrate-incoming`).
    pub launch_ms: f64,
    /// `migrate-set-parameters` and `migrate` on the source until it reports
    /// `completed` (polled every 1 ms); with local disks from the first mirror command
    /// (ready, then the memory) until the mirrors completed and the exports are gone.
    pub migrate_ms: f64,
    /// From `completed` at the source to the destination's `RESUME` (`cont` sent).
    pub cont_ms: f64,
    /// How long the guest did not run: the source's `STOP` event (switchover) to the
    /// destination's `RESUME` event.
    pub guest_paused_ms: f64,
    /// QEMU's own `total-time` of the migration, in milliseconds.
    pub qemu_total_ms: Option<u64>,
    /// QEMU's measured downtime at the switchover, in milliseconds (it ends when the
    /// source has sent the last state, not when the destination runs).
    pub downtime_ms: Option<u64>,
    /// RAM bytes sent.
    pub transferred_bytes: u64,
}

/// Milliseconds from `a` to `b` (negative when `b` is earlier).
pub fn ms_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

/// QEMU arguments that add a second QMP monitor at `path`, for an [`EventTap`].
pub fn tap_args(path: &Path) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            path.to_string_lossy().replace(',', ",,")
        ),
    ]
}

/// A bare QMP connection to a second monitor of a VM, reading events with QEMU's own
/// timestamps. Bench and test use only.
pub struct EventTap {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Events read while waiting for a command's reply.
    kept: Vec<(String, SystemTime)>,
}

fn bad_data(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl EventTap {
    /// Connects to the monitor at `path` (retrying every millisecond while it does not
    /// accept yet, up to `within`) and leaves capability negotiation mode.
    pub async fn connect(path: &Path, within: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => sleep(TAP_RETRY).await,
            }
        };
        let (r, writer) = stream.into_split();
        let mut tap = Self {
            reader: BufReader::new(r),
            writer,
            kept: Vec::new(),
        };
        let left = deadline.saturating_duration_since(Instant::now()) + EVENT_WAIT;
        let greeting = tap.line(left).await?;
        if greeting.get("QMP").is_none() {
            return Err(bad_data(format!("not a QMP greeting: {greeting}")));
        }
        tap.execute("qmp_capabilities", left).await?;
        Ok(tap)
    }

    /// Reads one JSON line within `within`.
    async fn line(&mut self, within: Duration) -> io::Result<serde_json::Value> {
        let mut buf = Vec::new();
        let mut limited = (&mut self.reader).take(TAP_LINE_MAX);
        let n = timeout(within, limited.read_until(b'\n', &mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "QMP monitor silent"))??;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "QMP monitor closed",
            ));
        }
        serde_json::from_slice(&buf).map_err(|e| bad_data(format!("QMP line: {e}")))
    }

    /// The event name and timestamp of `v`, if it is an event.
    fn event_of(v: &serde_json::Value) -> Option<(String, SystemTime)> {
        let name = v.get("event")?.as_str()?.to_owned();
        let ts = v.get("timestamp")?;
        let secs = ts.get("seconds")?.as_u64()?;
        let micros = ts.get("microseconds")?.as_u64()?;
        let at = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
        Some((name, at))
    }

    /// Runs `command` (no arguments) and returns its `return` value; events read
    /// meanwhile are kept for [`Self::wait_for`].
    pub async fn execute(
        &mut self,
        command: &str,
        within: Duration,
    ) -> io::Result<serde_json::Value> {
        let mut line = serde_json::to_vec(&serde_json::json!({ "execute": command }))
            .map_err(|e| bad_data(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let deadline = Instant::now() + within;
        loop {
            let v = self
                .line(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(bad_data(format!("QMP {command} refused: {e}")));
            }
            if let Some(ev) = Self::event_of(&v) {
                if self.kept.len() < TAP_KEPT_MAX {
                    self.kept.push(ev);
                }
            }
        }
    }

    /// QEMU's run state (`query-status`).
    pub async fn status(&mut self, within: Duration) -> io::Result<String> {
        let r = self.execute("query-status", within).await?;
        r.get("status")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad_data(format!("query-status: {r}")))
    }

    /// Waits (up to `within`) for the event `name` and returns QEMU's timestamp of it.
    pub async fn wait_for(&mut self, name: &str, within: Duration) -> io::Result<SystemTime> {
        if let Some(i) = self.kept.iter().position(|(n, _)| n == name) {
            return Ok(self.kept.remove(i).1);
        }
        let deadline = Instant::now() + within;
        loop {
            let v = self
                .line(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if let Some((n, at)) = Self::event_of(&v) {
                if n == name {
                    return Ok(at);
                }
            }
        }
    }
}

/// Connects a tap to the monitor at `path` of a QEMU that is waiting for an incoming
/// migration (a leftover socket of an earlier QEMU is skipped), then waits for its
/// `RESUME`. For timing a migration's end from a task started before the destination
/// exists.
pub async fn incoming_resumed_at(path: PathBuf, within: Duration) -> io::Result<SystemTime> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut tap = EventTap::connect(&path, left).await?;
        if tap.status(left).await? == "inmigrate" {
            return tap
                .wait_for("RESUME", deadline.saturating_duration_since(Instant::now()))
                .await;
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no incoming QEMU at the monitor",
            ));
        }
        sleep(TAP_RETRY).await;
    }
}

/// Kills the bench VMs and removes their directories when dropped, whatever happened.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            QemuDriver::kill_all_in(d);
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn tap_error(e: io::Error) -> DriverError {
    DriverError::Protocol(format!("bench event monitor: {e}"))
}

/// Bare migrations of one VM back and forth between two state directories under
/// `cfg.state_dir` (`bench-0`, `bench-1`), as the agents' handoffs move theirs: the VM
/// boots once, then each [`Self::migrate`] times one bare sequence to the other side.
/// Every QEMU process is gone when it is dropped.
pub struct BareMigrations {
    cfg: QemuConfig,
    sides: [std::sync::Arc<QemuDriver>; 2],
    taps: [PathBuf; 2],
    vm: VmId,
    spec: VmSpec,
    /// The side the VM runs on.
    on: usize,
    _cleanup: Cleanup,
}

impl BareMigrations {
    /// Starts the VM of `spec` on the first side (with its event monitor).
    pub async fn start(cfg: &QemuConfig, spec: &VmSpec) -> Result<Self, DriverError> {
        let dirs = [cfg.state_dir.join("bench-0"), cfg.state_dir.join("bench-1")];
        let images = [Self::image_dir(cfg, 0), Self::image_dir(cfg, 1)];
        let cleanup = Cleanup(dirs.iter().chain(&images).cloned().collect());
        for d in &images {
            std::fs::create_dir_all(d)?;
        }
        let taps = [dirs[0].join("ev.sock"), dirs[1].join("ev.sock")];
        let side = |i: usize| {
            let mut extra_args = cfg.extra_args.clone();
            extra_args.extend(tap_args(&taps[i]));
            QemuDriver::new(QemuConfig {
                state_dir: dirs[i].clone(),
                image_dir: images[i].clone(),
                extra_args,
                ..cfg.clone()
            })
            .map(std::sync::Arc::new)
        };
        let sides = [side(0)?, side(1)?];
        let vm = VmId::from("bench-qmp");
        sides[0].start(&vm, spec).await?;
        Ok(Self {
            cfg: cfg.clone(),
            sides,
            taps,
            vm,
            spec: spec.clone(),
            on: 0,
            _cleanup: cleanup,
        })
    }

    /// Side `side`'s image directory (for a VM on local disks, whose relative disk paths
    /// name files there; the first side's must hold them before [`Self::start`]).
    pub fn image_dir(cfg: &QemuConfig, side: usize) -> PathBuf {
        cfg.state_dir.join(format!("img-{side}"))
    }

    /// Lets the VM run for `warmup`, then times the bare sequence to the other side:
    /// launch an incoming copy there, migrate (on `cfg.migration_host`, with `cfg`'s
    /// downtime limit and bandwidth), `cont` it. Afterwards (untimed) the copy is
    /// recorded as running and the old source quits.
    pub async fn migrate(&mut self, warmup: Duration) -> Result<QmpMigrateTiming, DriverError> {
        sleep(warmup).await;
        let (from, to) = (self.on, 1 - self.on);
        let (src, dst, vm, cfg) = (&self.sides[from], &self.sides[to], &self.vm, &self.cfg);
        let mut src_tap = EventTap::connect(&self.taps[from], EVENT_WAIT)
            .await
            .map_err(tap_error)?;
        let src_dir = VmDir::of(&src.config().state_dir, vm)?;
        let dst_dir = VmDir::of(&dst.config().state_dir, vm)?;

        let (w0, t0) = (SystemTime::now(), Instant::now());
        let resumed = tokio::spawn(incoming_resumed_at(self.taps[to].clone(), EVENT_WAIT));
        let result = async {
            // Local disks: what `qemu-img info` would tell (format, size) goes in the spec.
            let spec = src
                .current_spec(vm, &self.spec)
                .await?
                .unwrap_or_else(|| self.spec.clone());
            let local: Vec<(usize, PathBuf)> = disks::local_disks(&disks::plan(&src.cfg, &spec)?)
                .into_iter()
                .map(|(i, p, _)| (i, p.to_path_buf()))
                .collect();
            // In a task of its own, as the agents run their driver calls.
            let (d, v, sp) = (dst.clone(), vm.clone(), spec.clone());
            let target = tokio::spawn(async move { d.prepare_incoming(&v, &sp).await })
                .await
                .map_err(|e| DriverError::Protocol(format!("bench task: {e}")))??;
            let t1 = Instant::now();
            let target = Target::parse(&target.0)
                .ok_or_else(|| DriverError::Protocol(format!("bad target {}", target.0)))?;
            if let Some(export) = &target.disks {
                bench_local::mirror_until_ready(src, vm, &src_dir, &local, export).await?;
            }
            let params = qmp::MigrateSetParameters {
                downtime_limit: Some(cfg.downtime_limit.get()),
                max_bandwidth: (cfg.bandwidth_mbps > 0)
                    .then(|| cfg.bandwidth_mbps.saturating_mul(125_000)),
            };
            src.qmp(vm, &src_dir, params).await?;
            let copied = target.disks.is_some();
            src.qmp(vm, &src_dir, outgoing::pause_before_switchover(copied))
                .await?;
            let uri = target.migration.clone();
            src.qmp(vm, &src_dir, qmp::Migrate { uri }).await?;
            if copied {
                wait_status(src, vm, &src_dir, cfg, outgoing::PRE_SWITCHOVER).await?;
                bench_local::complete(src, vm, &src_dir, &local).await?;
                src.qmp(vm, &src_dir, outgoing::continue_switchover())
                    .await?;
            }
            let info = wait_status(src, vm, &src_dir, cfg, "completed").await?;
            if copied {
                dst.unexport(vm, &dst_dir).await?;
            }
            let (t2, w2) = (Instant::now(), SystemTime::now());
            dst.qmp(vm, &dst_dir, qmp::Cont {}).await?;
            Ok::<_, DriverError>((t1, t2, w2, info, spec, copied))
        }
        .await;
        let (t1, t2, w2, info, spec, copied) = match result {
            Ok(r) => r,
            Err(e) => {
                resumed.abort();
                return Err(e);
            }
        };
        let resume_at = resumed
            .await
            .map_err(|e| DriverError::Protocol(format!("bench event task: {e}")))?
            .map_err(tap_error)?;
        let stop_at = src_tap
            .wait_for("STOP", EVENT_WAIT)
            .await
            .map_err(tap_error)?;
        drop(src_tap);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let timing = QmpMigrateTiming {
            total_ms: ms_between(w0, resume_at),
            launch_ms: ms(t1 - t0),
            migrate_ms: ms(t2 - t1),
            cont_ms: ms_between(w2, resume_at),
            guest_paused_ms: ms_between(stop_at, resume_at),
            qemu_total_ms: info.total_time,
            downtime_ms: info.downtime,
            transferred_bytes: info.ram.map_or(0, |r| r.transferred),
        };
        // The copy runs already; this records it (and its migration settings), and the
        // source's disks go as after a handoff.
        if copied {
            src.set_mirror_mark(vm, &src_dir, MirrorMark::Completed)
                .await?;
        }
        self.spec = spec;
        dst.resume_incoming(vm).await?;
        src.finish_outgoing(vm).await?;
        self.on = to;
        Ok(timing)
    }

    /// Stops the VM (the drop guard kills whatever is left).
    pub async fn stop(self) {
        let _ = self.sides[self.on].stop(&self.vm).await;
    }
}

/// One bare migration of a freshly started VM of `spec`, after it ran for `warmup`
/// (see [`BareMigrations::migrate`]). Every QEMU process is gone when it returns.
pub async fn bench_qmp_migrate(
    cfg: &QemuConfig,
    spec: &VmSpec,
    warmup: Duration,
) -> Result<QmpMigrateTiming, DriverError> {
    let mut bare = BareMigrations::start(cfg, spec).await?;
    let t = bare.migrate(warmup).await;
    bare.stop().await;
    t
}

/// Polls the source's `query-migrate` until its status is `wanted` (bounded by the
/// migration timeout).
async fn wait_status(
    src: &QemuDriver,
    vm: &VmId,
    dir: &VmDir,
    cfg: &QemuConfig,
    wanted: &str,
) -> Result<qmp::MigrationInfo, DriverError> {
    let deadline = Instant::now() + cfg.timeouts.migration();
    loop {
        let info = src.qmp(vm, dir, qmp::QueryMigrate {}).await?;
        match info.status.as_deref() {
            Some(s) if s == wanted => return Ok(info),
            Some("failed" | "cancelled") => {
                return Err(DriverError::MigrationFailed {
                    vm: vm.clone(),
                    reason: info.error_desc.unwrap_or_else(|| "failed".into()),
                })
            }
            _ if Instant::now() >= deadline => {
                return Err(DriverError::Timeout("bench migration".into()));
            }
            _ => sleep(BENCH_POLL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_between_is_signed() {
        let a = UNIX_EPOCH + Duration::from_millis(1_000);
        let b = UNIX_EPOCH + Duration::from_micros(1_002_500);
        assert!((ms_between(a, b) - 2.5).abs() < 1e-9);
        assert!((ms_between(b, a) + 2.5).abs() < 1e-9);
    }

    #[test]
    fn events_carry_qemu_timestamps() {
        let v = serde_json::json!({
            "event": "RESUME",
            "timestamp": { "seconds": 1_700_000_000u64, "microseconds": 250u64 }
        });
        let (name, at) = EventTap::event_of(&v).expect("an event");
        assert_eq!(name, "RESUME");
        assert_eq!(
            at,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(250)
        );
        assert!(EventTap::event_of(&serde_json::json!({ "return": {} })).is_none());
    }

    #[test]
    fn tap_arguments_escape_commas() {
        assert_eq!(
            tap_args(Path::new("/s/a,b/ev.sock")),
            ["-qmp", "unix:/s/a,,b/ev.sock,server=on,wait=off"]
        );
    }
}
