//! Configuration of the `qemu` driver: the `[driver.qemu]` section of the agent's TOML.
//!
//! Every field has a default, so an empty section is valid; unknown keys are refused so a
//! typo does not silently fall back to a default.

use ballast_core::units::Millis;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Which accelerator QEMU uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when `/dev/kvm` can be opened read-write (with TCG as QEMU's own fallback),
    /// else TCG.
    #[default]
    Auto,
    /// KVM only; starting a VM fails where KVM is unusable.
    Kvm,
    /// TCG (software emulation) only; works everywhere.
    Tcg,
}

/// Timeouts of the QEMU driver, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuTimeouts {
    /// One QMP command (connect, greeting, reply).
    #[serde(alias = "qmp_ms")]
    pub qmp: Millis,
    /// Launching a QEMU process until its QMP socket listens.
    #[serde(alias = "start_ms")]
    pub start: Millis,
    /// A graceful `quit` before the process is killed.
    #[serde(alias = "stop_ms")]
    pub stop: Millis,
    /// A whole outgoing migration; past it the migration is cancelled.
    #[serde(alias = "migration_ms")]
    pub migration: Millis,
    /// Interval between two `query-migrate` polls during a migration.
    #[serde(alias = "poll_ms")]
    pub poll: Millis,
}

impl Default for QemuTimeouts {
    fn default() -> Self {
        Self {
            qmp: Millis::new(5_000),
            start: Millis::new(30_000),
            stop: Millis::new(10_000),
            migration: Millis::new(600_000),
            poll: Millis::new(50),
        }
    }
}

impl QemuTimeouts {
    /// [`Self::qmp_ms`] as a duration.
    pub fn qmp(&self) -> Duration {
        Duration::from_millis(self.qmp.get().max(1))
    }
    /// [`Self::start_ms`] as a duration.
    pub fn start(&self) -> Duration {
        Duration::from_millis(self.start.get().max(1))
    }
    /// [`Self::stop_ms`] as a duration.
    pub fn stop(&self) -> Duration {
        Duration::from_millis(self.stop.get().max(1))
    }
    /// [`Self::migration_ms`] as a duration.
    pub fn migration(&self) -> Duration {
        Duration::from_millis(self.migration.get().max(1))
    }
    /// [`Self::poll_ms`] as a duration.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll.get().max(1))
    }
}

/// The `qemu` driver's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuConfig {
    /// The QEMU system emulator to run (looked up in `PATH` when relative).
    pub binary: PathBuf,
    /// Where the driver keeps one directory per VM (QMP socket, pid file, spec). Must
    /// survive agent restarts: adoption reads it. Keep the path short: a QMP socket path
    /// must fit in 107 bytes.
    pub state_dir: PathBuf,
    /// The QEMU machine type (`-machine`), e.g. `pc` or `q35`. Source and destination of
    /// a migration must use the same.
    pub machine: String,
    /// The accelerator.
    pub accel: Accel,
    /// The address an incoming VM listens on for its migration stream; it is also the
    /// host part of the target the source connects to, so it must be reachable from
    /// the other hosts.
    pub migration_host: String,
    /// Inclusive range of TCP ports for incoming migrations, `[first, last]`.
    pub port_range: [u16; 2],
    /// Maximum downtime of a live migration (QMP `downtime-limit`), in milliseconds.
    #[serde(alias = "downtime_limit_ms")]
    pub downtime_limit: Millis,
    /// Bandwidth cap of a live migration in megabits per second, for the memory stream
    /// (QMP `max-bandwidth`) and for each local disk's copy (the mirror's `speed`); 0 keeps
    /// QEMU's default (no cap on disks).
    pub bandwidth_mbps: u64,
    /// Arguments appended to every VM's command line (before the spec's own).
    pub extra_args: Vec<String>,
    /// Bus of disks given as a bare path (`-drive if=...`): `virtio`, `ide`, `scsi`.
    pub disk_interface: String,
    /// Where this host keeps local disk images: a relative disk path in a spec names a
    /// file here (so one spec names the VM's disk on every host), and the destination of
    /// a move creates the copies of local disks here.
    pub image_dir: PathBuf,
    /// Path prefixes on storage every host shares. A VM's disk under one of them is opened
    /// in place by the destination; any other disk (and every relative path) is local
    /// and copied during a live migration. The default `["/"]` treats every absolute path
    /// as shared, as 0.1 did. A spec's `driver_opts.storage = "shared" | "local"` decides
    /// for all of that VM's disks.
    pub shared_paths: Vec<PathBuf>,
    /// Keep the source's copy of a moved local disk (renamed `<file>.moved-<unix ms>`)
    /// instead of deleting it once the destination holds the VM.
    pub keep_source_disks: bool,
    /// The `qemu-img` program, to create the destination's copy of a local disk.
    pub qemu_img: PathBuf,
    /// Timeouts.
    pub timeouts: QemuTimeouts,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            state_dir: PathBuf::from("/var/lib/ballast/qemu"),
            machine: "pc".to_owned(),
            accel: Accel::Auto,
            migration_host: "127.0.0.1".to_owned(),
            port_range: [30_100, 30_199],
            downtime_limit: Millis::new(300),
            bandwidth_mbps: 1_000,
            extra_args: Vec::new(),
            disk_interface: "virtio".to_owned(),
            image_dir: PathBuf::from("/var/lib/ballast/images"),
            shared_paths: vec![PathBuf::from("/")],
            keep_source_disks: false,
            qemu_img: PathBuf::from("qemu-img"),
            timeouts: QemuTimeouts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_defaults() {
        let c: QemuConfig = toml::from_str("").expect("parse");
        assert_eq!(c, QemuConfig::default());
    }

    #[test]
    fn fields_parse_and_unknown_keys_fail() {
        let c: QemuConfig =
            toml::from_str("accel = \"tcg\"\nport_range = [5000, 5010]\n[timeouts]\nqmp_ms = 7\n")
                .expect("parse");
        assert_eq!(c.accel, Accel::Tcg);
        assert_eq!(c.port_range, [5000, 5010]);
        assert_eq!(c.timeouts.qmp.get(), 7);
        assert_eq!(c.timeouts.poll.get(), QemuTimeouts::default().poll.get());
        assert!(toml::from_str::<QemuConfig>("acel = \"tcg\"").is_err());
        assert!(toml::from_str::<QemuConfig>("accel = \"xen\"").is_err());
    }
}
