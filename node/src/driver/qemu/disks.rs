//! Where a VM's disks live on this host, and which of them a live migration copies.
//!
//! A spec's `disks` entry is one of:
//! - a relative path: a file under this host's `image_dir` (the same spec names the VM's
//!   disk on every host); always local unless the spec says `storage = "shared"`;
//! - an absolute path: shared when it lies under one of `shared_paths`, else local;
//! - a complete `-drive` option string (holds `=`): passed to QEMU as is, never copied.
//!
//! `driver_opts.storage = "shared" | "local"` decides for all of a VM's disks. Before a
//! move the source records each disk it will copy as `qemu.disk.<index>` =
//! `FORMAT:VIRTUAL_BYTES:ALLOCATED_BYTES` (see [`record_copies`]); the destination creates
//! exactly those, so both sides agree whatever their own `shared_paths` say.

use super::config::QemuConfig;
use crate::driver::DriverError;
use ballast_store::VmSpec;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The spec's `driver_opts` key that decides where all of a VM's disks live.
pub(crate) const STORAGE_KEY: &str = "storage";
/// The `driver_opts` key prefix of a copied disk's record: `qemu.disk.<index>`.
const COPY_KEY: &str = "qemu.disk.";

/// Where a VM's disks live, as its spec says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Storage {
    /// Every host opens the same files.
    Shared,
    /// Each host has its own copy; a live migration copies the disks.
    Local,
}

/// One disk of a VM on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Disk {
    /// An image file.
    Image {
        /// The file on this host.
        path: PathBuf,
        /// `qcow2` (the file name ends in `.qcow2`) or `raw`.
        format: &'static str,
        /// Copied by a live migration.
        local: bool,
    },
    /// A complete `-drive` option string.
    Drive(String),
}

/// A copied disk as the source recorded it before the move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CopyRecord {
    /// The disk's index in the spec's `disks`.
    pub(crate) index: usize,
    /// `qcow2` or `raw`.
    pub(crate) format: &'static str,
    /// Virtual size in bytes.
    pub(crate) capacity: u64,
    /// Bytes the image occupied on the source.
    pub(crate) allocation: u64,
}

fn format_of(path: &Path) -> &'static str {
    if path.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    }
}

/// The spec's storage choice, if it makes one.
pub(crate) fn storage_of(spec: &VmSpec) -> Result<Option<Storage>, DriverError> {
    match spec.driver_opts.get(STORAGE_KEY).map(String::as_str) {
        None => Ok(None),
        Some("shared") => Ok(Some(Storage::Shared)),
        Some("local") => Ok(Some(Storage::Local)),
        Some(other) => Err(DriverError::InvalidSpec(format!(
            "driver_opts.storage must be \"shared\" or \"local\", got {other:?}"
        ))),
    }
}

/// The spec's disks on this host, in spec order.
pub(crate) fn plan(cfg: &QemuConfig, spec: &VmSpec) -> Result<Vec<Disk>, DriverError> {
    let storage = storage_of(spec)?;
    spec.disks
        .iter()
        .map(|entry| {
            if entry.contains('=') {
                if storage == Some(Storage::Local) {
                    return Err(DriverError::InvalidSpec(format!(
                        "disk {entry:?} is a -drive option string, which storage = \"local\" \
                         cannot copy: give the image's path"
                    )));
                }
                return Ok(Disk::Drive(entry.clone()));
            }
            let given = Path::new(entry);
            let (path, default_local) = if given.is_absolute() {
                let shared = cfg.shared_paths.iter().any(|p| given.starts_with(p));
                (given.to_owned(), !shared)
            } else {
                if !given
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
                {
                    return Err(DriverError::InvalidSpec(format!(
                        "disk {entry:?}: a relative path must stay under image_dir (no `..`)"
                    )));
                }
                (cfg.image_dir.join(given), true)
            };
            let local = match storage {
                Some(Storage::Local) => true,
                Some(Storage::Shared) => false,
                None => default_local,
            };
            Ok(Disk::Image {
                format: format_of(&path),
                path,
                local,
            })
        })
        .collect()
}

/// The local (copied) disks of a plan: index, path and format.
pub(crate) fn local_disks(plan: &[Disk]) -> Vec<(usize, &Path, &'static str)> {
    plan.iter()
        .enumerate()
        .filter_map(|(i, d)| match d {
            Disk::Image {
                path,
                format,
                local: true,
            } => Some((i, path.as_path(), *format)),
            _ => None,
        })
        .collect()
}

/// Writes the records of the disks a move will copy into `opts` (replacing older ones).
pub(crate) fn record_copies(opts: &mut BTreeMap<String, String>, copies: &[CopyRecord]) {
    opts.retain(|k, _| !k.starts_with(COPY_KEY));
    for c in copies {
        opts.insert(
            format!("{COPY_KEY}{}", c.index),
            format!("{}:{}:{}", c.format, c.capacity, c.allocation),
        );
    }
}

/// The disks the source recorded as copied, by index; a malformed record or one naming a
/// disk the spec does not have as an image path is an error naming its key.
pub(crate) fn copies_of(spec: &VmSpec) -> Result<Vec<CopyRecord>, DriverError> {
    let mut out = Vec::new();
    for (k, v) in &spec.driver_opts {
        let Some(index) = k.strip_prefix(COPY_KEY) else {
            continue;
        };
        let bad = || DriverError::InvalidSpec(format!("{k} = {v:?} is not a disk copy record"));
        let index: usize = index.parse().map_err(|_| bad())?;
        let mut it = v.split(':');
        let format = match it.next() {
            Some("qcow2") => "qcow2",
            Some("raw") => "raw",
            _ => return Err(bad()),
        };
        let capacity: u64 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let allocation: u64 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        if it.next().is_some() || capacity == 0 {
            return Err(bad());
        }
        match spec.disks.get(index) {
            Some(d) if !d.contains('=') => {}
            _ => return Err(bad()),
        }
        out.push(CopyRecord {
            index,
            format,
            capacity,
            allocation,
        });
    }
    out.sort_by_key(|c| c.index);
    Ok(out)
}

/// The path of `spec`'s disk `index` on this host (for a copied disk).
pub(crate) fn path_of(cfg: &QemuConfig, spec: &VmSpec, index: usize) -> Option<PathBuf> {
    let entry = spec.disks.get(index)?;
    let given = Path::new(entry);
    Some(if given.is_absolute() {
        given.to_owned()
    } else {
        cfg.image_dir.join(given)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QemuConfig {
        QemuConfig {
            image_dir: PathBuf::from("/img"),
            shared_paths: vec![PathBuf::from("/nfs")],
            ..QemuConfig::default()
        }
    }

    fn spec(disks: &[&str]) -> VmSpec {
        VmSpec {
            disks: disks.iter().map(|d| (*d).to_owned()).collect(),
            ..VmSpec::default()
        }
    }

    #[test]
    fn paths_decide_unless_the_spec_does() {
        let s = spec(&["vm1.qcow2", "/nfs/a.raw", "/srv/b.img", "file=/x,if=ide"]);
        let p = plan(&cfg(), &s).expect("plan");
        assert_eq!(
            p[0],
            Disk::Image {
                path: "/img/vm1.qcow2".into(),
                format: "qcow2",
                local: true
            }
        );
        assert!(matches!(p[1], Disk::Image { local: false, .. }));
        assert!(matches!(
            p[2],
            Disk::Image {
                local: true,
                format: "raw",
                ..
            }
        ));
        assert!(matches!(p[3], Disk::Drive(_)));
        assert_eq!(
            local_disks(&p).iter().map(|d| d.0).collect::<Vec<_>>(),
            [0, 2]
        );
        let mut shared = spec(&["vm1.qcow2", "/srv/b.img"]);
        shared
            .driver_opts
            .insert(STORAGE_KEY.into(), "shared".into());
        assert!(local_disks(&plan(&cfg(), &shared).expect("plan")).is_empty());
        // The default config: every absolute path is shared, as in 0.1.
        let p = plan(&QemuConfig::default(), &spec(&["/srv/b.img", "b.img"])).expect("plan");
        assert_eq!(local_disks(&p).len(), 1);
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(plan(&cfg(), &spec(&["../etc/passwd"])).is_err());
        let mut s = spec(&["file=/x,if=ide"]);
        s.driver_opts.insert(STORAGE_KEY.into(), "local".into());
        assert!(plan(&cfg(), &s).is_err());
        s.driver_opts.insert(STORAGE_KEY.into(), "nfs".into());
        assert!(plan(&cfg(), &s).is_err());
    }

    #[test]
    fn copy_records_round_trip_and_malformed_ones_fail() {
        let mut s = spec(&["a.qcow2", "b.raw"]);
        let copies = [CopyRecord {
            index: 1,
            format: "raw",
            capacity: 4096,
            allocation: 512,
        }];
        record_copies(&mut s.driver_opts, &copies);
        assert_eq!(copies_of(&s).expect("records"), copies);
        record_copies(&mut s.driver_opts, &[]);
        assert!(copies_of(&s).expect("records").is_empty());
        for bad in ["raw:1", "vmdk:1:1", "raw:0:0", "raw:x:1", "raw:1:1:1"] {
            s.driver_opts.insert("qemu.disk.0".into(), bad.into());
            assert!(copies_of(&s).is_err(), "{bad}");
        }
        s.driver_opts.insert("qemu.disk.0".into(), "raw:1:1".into());
        assert!(copies_of(&s).is_ok());
        s.driver_opts.insert("qemu.disk.7".into(), "raw:1:1".into());
        assert!(copies_of(&s).is_err(), "no disk 7");
    }
}
