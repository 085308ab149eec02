//! Disks of a libvirt VM as its spec records them, and the destination's part of copying
//! them: the checks before a migration starts (enough free space, read-only media and
//! block devices present, no domain of this host using the file) and the pre-creation of
//! each copied file disk with the source's format and virtual size (`qemu-img create`),
//! since libvirt does not create plain files for an incoming disk copy.

use super::config::LibvirtConfig;
use crate::driver::{disk_image, DriverError};
use ballast_store::{VmId, VmSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `driver_opts` key prefix of a disk's record: `libvirt.disk.<target>`.
const DISK_KEY: &str = "libvirt.disk.";

/// One disk of a VM as recorded in its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiskRecord {
    /// The guest device (`vda`).
    pub target: String,
    /// `file`, `block`, `network`, `volume`...
    pub kind: String,
    /// Image format (`qcow2`, `raw`).
    pub format: String,
    /// Virtual size, bytes (0 when unknown).
    pub capacity: u64,
    /// Bytes the image occupied on its host when recorded (0 when unknown).
    pub allocation: u64,
    /// Read-only media.
    pub readonly: bool,
    /// The file or device, for file and block disks.
    pub path: Option<PathBuf>,
}

impl DiskRecord {
    /// `kind:format:capacity:allocation:ro|rw:path` (the path last: it may hold colons).
    pub(crate) fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}",
            self.kind,
            self.format,
            self.capacity,
            self.allocation,
            if self.readonly { "ro" } else { "rw" },
            self.path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    }

    fn decode(target: &str, s: &str) -> Option<Self> {
        let mut it = s.splitn(6, ':');
        let kind = it.next()?.to_owned();
        let format = it.next()?.to_owned();
        let capacity = it.next()?.parse().ok()?;
        let allocation = it.next()?.parse().ok()?;
        let readonly = match it.next()? {
            "ro" => true,
            "rw" => false,
            _ => return None,
        };
        let path = it.next().filter(|p| !p.is_empty()).map(PathBuf::from);
        Some(Self {
            target: target.to_owned(),
            kind,
            format,
            capacity,
            allocation,
            readonly,
            path,
        })
    }

    /// Whether the migration copies this disk (a writable file or block disk that is not
    /// on shared storage).
    pub(crate) fn copied(&self, cfg: &LibvirtConfig) -> bool {
        !self.readonly
            && matches!(self.kind.as_str(), "file" | "block")
            && self.path.as_deref().is_some_and(|p| !cfg.is_shared(p))
    }
}

/// Writes `disks` into `opts`.
pub(crate) fn record_disks(opts: &mut BTreeMap<String, String>, disks: &[DiskRecord]) {
    opts.retain(|k, _| !k.starts_with(DISK_KEY));
    for d in disks {
        opts.insert(format!("{DISK_KEY}{}", d.target), d.encode());
    }
}

/// The disks a spec records; a malformed record is an error naming its key.
pub(crate) fn disks_of(spec: &VmSpec) -> Result<Vec<DiskRecord>, DriverError> {
    spec.driver_opts
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(DISK_KEY).map(|t| (k, t, v)))
        .map(|(k, t, v)| {
            DiskRecord::decode(t, v).ok_or_else(|| {
                DriverError::InvalidSpec(format!("{k} = {v:?} is not a disk record"))
            })
        })
        .collect()
}

/// Checks that this host can receive `vm`'s disks; `in_use` are the files the domains of
/// this host use. Returns the copied disks whose files must be created (absent now or a
/// stale copy no domain uses). Refusals say which disk and why; `NoRoom` for space.
pub(crate) fn check_destination(
    vm: &VmId,
    cfg: &LibvirtConfig,
    disks: &[DiskRecord],
    in_use: &[PathBuf],
) -> Result<Vec<DiskRecord>, DriverError> {
    let refuse = |reason: String| DriverError::BadState {
        vm: vm.clone(),
        reason,
    };
    let mut create = Vec::new();
    let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for d in disks {
        let Some(path) = d.path.as_deref() else {
            continue;
        };
        if !d.copied(cfg) {
            if matches!(d.kind.as_str(), "file" | "block") && !path.exists() {
                return Err(refuse(format!(
                    "disk {} ({}) is not copied (shared or read-only) but does not exist on this host",
                    d.target,
                    path.display()
                )));
            }
            continue;
        }
        if in_use.iter().any(|p| p == path) {
            return Err(refuse(format!(
                "disk {} ({}) is used by a domain of this host",
                d.target,
                path.display()
            )));
        }
        if d.kind == "block" {
            if !path.exists() {
                return Err(refuse(format!(
                    "block disk {} ({}) must be provisioned on the destination first",
                    d.target,
                    path.display()
                )));
            }
            continue;
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(refuse(format!(
                "directory {} of disk {} does not exist on this host",
                parent.display(),
                d.target
            )));
        }
        *need.entry(parent.to_owned()).or_default() +=
            disk_image::space_needed(&d.format, d.capacity, d.allocation);
        create.push(d.clone());
    }
    disk_image::check_space(vm, &need)?;
    Ok(create)
}

/// `qemu-img create -f FORMAT PATH CAPACITY` for each disk (replacing a stale file).
pub(crate) async fn precreate(
    cfg: &LibvirtConfig,
    disks: &[DiskRecord],
) -> Result<Vec<PathBuf>, DriverError> {
    let mut created = Vec::new();
    for d in disks {
        let Some(path) = d.path.as_deref() else {
            continue;
        };
        if d.capacity == 0 {
            return Err(DriverError::InvalidSpec(format!(
                "disk {}: virtual size unknown; re-adopt the VM on a host where it runs",
                d.target
            )));
        }
        if path.exists() {
            tracing::warn!(path = %path.display(), "replacing a disk file no domain of this host uses (a stale copy)");
        }
        disk_image::create(&cfg.qemu_img, path, &d.format, d.capacity).await?;
        created.push(path.to_owned());
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &Path, kind: &str, readonly: bool) -> DiskRecord {
        DiskRecord {
            target: "vda".into(),
            kind: kind.into(),
            format: "qcow2".into(),
            capacity: 64 << 20,
            allocation: 1 << 20,
            readonly,
            path: Some(path.to_owned()),
        }
    }

    #[test]
    fn records_round_trip_through_the_spec() {
        let d = DiskRecord {
            path: Some("/var/lib/a:b.qcow2".into()),
            ..disk(Path::new("/x"), "file", false)
        };
        let mut spec = VmSpec::default();
        record_disks(&mut spec.driver_opts, std::slice::from_ref(&d));
        assert_eq!(disks_of(&spec).unwrap(), vec![d]);
        spec.driver_opts
            .insert("libvirt.disk.vdb".into(), "file:qcow2:x".into());
        assert!(disks_of(&spec).is_err());
    }

    #[test]
    fn destination_checks() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmId::from("v");
        let mut cfg = LibvirtConfig::default();
        let local = dir.path().join("v.qcow2");
        let create = check_destination(&vm, &cfg, &[disk(&local, "file", false)], &[]).unwrap();
        assert_eq!(create.len(), 1);
        let used = check_destination(
            &vm,
            &cfg,
            &[disk(&local, "file", false)],
            std::slice::from_ref(&local),
        );
        assert!(
            matches!(used, Err(DriverError::BadState { .. })),
            "{used:?}"
        );
        let iso = dir.path().join("seed.iso");
        assert!(check_destination(&vm, &cfg, &[disk(&iso, "file", true)], &[]).is_err());
        std::fs::write(&iso, b"x").unwrap();
        assert!(
            check_destination(&vm, &cfg, &[disk(&iso, "file", true)], &[])
                .unwrap()
                .is_empty()
        );
        let nodir = dir.path().join("missing").join("v.qcow2");
        assert!(check_destination(&vm, &cfg, &[disk(&nodir, "file", false)], &[]).is_err());
        let huge = DiskRecord {
            format: "raw".into(),
            capacity: u64::MAX / 4,
            ..disk(&local, "file", false)
        };
        let r = check_destination(&vm, &cfg, &[huge], &[]);
        assert!(matches!(r, Err(DriverError::NoRoom(_))), "{r:?}");
        cfg.shared_paths = vec![dir.path().to_owned()];
        assert!(check_destination(&vm, &cfg, &[disk(&nodir, "file", false)], &[]).is_err());
        std::fs::write(&local, b"x").unwrap();
        assert!(
            check_destination(&vm, &cfg, &[disk(&local, "file", false)], &[])
                .unwrap()
                .is_empty()
        );
    }
}
