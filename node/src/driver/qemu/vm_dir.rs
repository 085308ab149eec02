//! The on-disk layout of the driver's state directory: one directory per VM.
//!
//! ```text
//! <state_dir>/<vm-dir>/vm.json    what the driver knows (spec, role, incoming target)
//! <state_dir>/<vm-dir>/qmp.sock   the VM's QMP socket (mode 0600, directory 0700)
//! <state_dir>/<vm-dir>/qemu.pid   written by QEMU (`-pidfile`)
//! ```
//!
//! `<vm-dir>` is the VM id when it is a plain name, else `x-` and its hex bytes, so any
//! id maps to exactly one directory. Files are replaced atomically (write, then rename),
//! so a crash leaves either the old or the new `vm.json`.

use crate::driver::DriverError;
use ballast_store::{VmId, VmSpec};
use serde::{Deserialize, Serialize};
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The version of the `vm.json` format.
const META_VERSION: u32 = 1;

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 107;

/// What a VM directory holds a VM for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Role {
    /// A VM started here (or an incoming copy that was resumed).
    Running,
    /// An incoming copy waiting for (or holding) migrated state, listening on `target`.
    Incoming {
        /// The migration target handed to the source (`tcp:HOST:PORT`).
        target: String,
    },
}

/// The contents of `vm.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct VmMeta {
    /// Format version, [`META_VERSION`].
    pub(crate) version: u32,
    /// The VM.
    pub(crate) vm: VmId,
    /// The spec it was started from.
    pub(crate) spec: VmSpec,
    /// Why it is here.
    pub(crate) role: Role,
    /// Destination: the image files made for this incoming copy's local disks, deleted
    /// when the copy is dropped (never once it runs).
    #[serde(default)]
    pub(crate) created_images: Vec<PathBuf>,
    /// Source: how far the copy of the local disks got in the current migration.
    #[serde(default)]
    pub(crate) mirror: MirrorMark,
}

/// How far the source's copy of a VM's local disks got (`vm.json`), read with QEMU's own
/// state when the agent recovers a migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MirrorMark {
    /// No copy under way (never started, or cancelled).
    #[default]
    Idle,
    /// Mirror jobs were started to the destination's exports.
    Started,
    /// Every mirror completed after the switchover: the destination's disks equal the
    /// source's at the moment the source stopped.
    Completed,
}

impl VmMeta {
    /// A current-format record.
    pub(crate) fn new(vm: VmId, spec: VmSpec, role: Role) -> Self {
        Self {
            version: META_VERSION,
            vm,
            spec,
            role,
            created_images: Vec::new(),
            mirror: MirrorMark::Idle,
        }
    }
}

/// The paths of one VM's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VmDir {
    /// The directory.
    pub(crate) dir: PathBuf,
    /// `vm.json`.
    pub(crate) meta: PathBuf,
    /// The QMP socket.
    pub(crate) qmp: PathBuf,
    /// QEMU's pid file.
    pub(crate) pid: PathBuf,
}

/// The directory name of `vm`: the id itself when it is a plain name, else `x-<hex>`.
pub(crate) fn dir_name(vm: &VmId) -> String {
    let s = vm.as_str();
    let plain = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && !s.starts_with("x-")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if plain {
        s.to_owned()
    } else {
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}")
    }
}

impl VmDir {
    /// The directory of `vm` under `state_dir`; fails when its socket path would be too
    /// long for the kernel.
    pub(crate) fn of(state_dir: &Path, vm: &VmId) -> Result<Self, DriverError> {
        Self::at(state_dir.join(dir_name(vm)))
    }

    /// The paths under an existing directory `dir`.
    pub(crate) fn at(dir: PathBuf) -> Result<Self, DriverError> {
        let qmp = dir.join("qmp.sock");
        if qmp.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(DriverError::InvalidSpec(format!(
                "QMP socket path {} is longer than {SOCKET_PATH_MAX} bytes: shorten state_dir or the VM id",
                qmp.display()
            )));
        }
        Ok(Self {
            meta: dir.join("vm.json"),
            pid: dir.join("qemu.pid"),
            qmp,
            dir,
        })
    }

    /// Creates the directory (mode 0700), removing leftovers of an earlier VM.
    pub(crate) fn create_fresh(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
    }

    /// Removes the directory; absent is Ok.
    pub(crate) fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Writes `vm.json` atomically.
    pub(crate) fn write_meta(&self, meta: &VmMeta) -> io::Result<()> {
        let tmp = self.dir.join("vm.json.tmp");
        let bytes = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.meta)
    }

    /// Reads `vm.json`; `Ok(None)` when the VM has no directory.
    pub(crate) fn read_meta(&self) -> Result<Option<VmMeta>, DriverError> {
        let bytes = match std::fs::read(&self.meta) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta: VmMeta = serde_json::from_slice(&bytes).map_err(|e| {
            DriverError::Protocol(format!("{} is unreadable: {e}", self.meta.display()))
        })?;
        if meta.version != META_VERSION {
            return Err(DriverError::Protocol(format!(
                "{} has format version {}, expected {META_VERSION}",
                self.meta.display(),
                meta.version
            )));
        }
        Ok(Some(meta))
    }

    /// The pid QEMU wrote, if the file exists and holds a number.
    pub(crate) fn read_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(&self.pid).ok()?;
        text.trim().parse().ok().filter(|&p| p > 1)
    }

    /// Restricts the QMP socket to its owner (mode 0600).
    pub(crate) fn restrict_socket(&self) -> io::Result<()> {
        std::fs::set_permissions(&self.qmp, std::fs::Permissions::from_mode(0o600))
    }
}

/// Every VM directory under `state_dir` (an absent state dir holds none).
pub(crate) fn scan(state_dir: &Path) -> io::Result<Vec<VmDir>> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if let Ok(d) = VmDir::at(entry.path()) {
                dirs.push(d);
            }
        }
    }
    dirs.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_map_to_themselves_others_to_hex() {
        assert_eq!(dir_name(&VmId::from("web-1.a_b")), "web-1.a_b");
        assert_eq!(dir_name(&VmId::from("../etc")), "x-2e2e2f657463");
        assert_eq!(dir_name(&VmId::from("a/b")), "x-612f62");
        assert_eq!(dir_name(&VmId::from("")), "x-");
        // An id that looks like an encoded one is encoded too, so names never collide.
        assert_eq!(dir_name(&VmId::from("x-61")), "x-782d3631");
    }

    #[test]
    fn meta_round_trips_and_long_paths_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = VmDir::of(tmp.path(), &VmId::from("vm1")).expect("dir");
        assert_eq!(d.read_meta().expect("read"), None);
        d.create_fresh().expect("create");
        let meta = VmMeta::new(
            VmId::from("vm1"),
            VmSpec::default(),
            Role::Incoming {
                target: "tcp:127.0.0.1:1".into(),
            },
        );
        d.write_meta(&meta).expect("write");
        assert_eq!(d.read_meta().expect("read"), Some(meta));
        std::fs::write(&d.meta, b"{not json").expect("write junk");
        assert!(matches!(d.read_meta(), Err(DriverError::Protocol(_))));
        let long = VmId::from("v".repeat(64).as_str());
        let deep = tmp.path().join("d".repeat(60));
        assert!(matches!(
            VmDir::of(&deep, &long),
            Err(DriverError::InvalidSpec(_))
        ));
    }
}
