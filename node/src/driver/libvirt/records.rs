//! The driver's own durable records, one small JSON file per VM under `state_dir`:
//! `incoming/<vm>.json` (this host reserved the VM as a migration destination: the target
//! it answered and the disk files it created) and `outgoing/<vm>.json` (this host started
//! migrating the VM away: the destination's libvirt URI, so that once libvirt has ended
//! the source domain the outcome can still be asked from the destination). Written with
//! fsync before the step that depends on them.

use crate::driver::vm_file::{file_name, vm_of_file};
use crate::driver::DriverError;
use ballast_store::VmId;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Most bytes a record may have (they are a few hundred).
const RECORD_MAX: u64 = 64 * 1024;

/// This host as the destination of `vm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IncomingRecord {
    /// The target answered to the source (returned again by a repeated prepare).
    pub target: String,
    /// Disk files this host created for the copy (removed if the move is cancelled).
    pub created: Vec<PathBuf>,
}

/// This host as the source of `vm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutgoingRecord {
    /// The destination's libvirtd (the target's `peer_uri`).
    pub peer_uri: String,
    /// This host's files of the disks the migration copies (removed after the commit
    /// with `remove_source_disks`).
    #[serde(default)]
    pub copied_files: Vec<PathBuf>,
}

/// One kind of record, in its directory.
#[derive(Debug)]
pub(crate) struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records in `state_dir/<kind>`.
    pub(crate) fn new(state_dir: &Path, kind: &str) -> Self {
        Self {
            dir: state_dir.join(kind),
        }
    }

    fn path(&self, vm: &VmId) -> PathBuf {
        self.dir.join(file_name(vm, "json"))
    }

    /// The record of `vm`, if any. A corrupt record is an error that names its file.
    pub(crate) fn get<T: DeserializeOwned>(&self, vm: &VmId) -> Result<Option<T>, DriverError> {
        let path = self.path(vm);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if meta.len() > RECORD_MAX {
            return Err(DriverError::Protocol(format!(
                "{}: record of {} bytes (most {RECORD_MAX})",
                path.display(),
                meta.len()
            )));
        }
        let bytes = std::fs::read(&path)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DriverError::Protocol(format!("{}: {e}", path.display())))
    }

    /// Writes the record of `vm` durably (temporary file, fsync, rename, fsync dir).
    pub(crate) fn put<T: Serialize>(&self, vm: &VmId, record: &T) -> Result<(), DriverError> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(vm);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(record)
            .map_err(|e| DriverError::Protocol(format!("record of {vm}: {e}")))?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Removes the record of `vm` (absent is fine).
    pub(crate) fn remove(&self, vm: &VmId) -> Result<(), DriverError> {
        match std::fs::remove_file(self.path(vm)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every VM with a record.
    pub(crate) fn vms(&self) -> Vec<VmId> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| vm_of_file(e.ok()?.file_name().to_str()?, "json"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_list_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::new(dir.path(), "incoming");
        let (a, b) = (VmId::from("web-1"), VmId::from("odd/name"));
        assert_eq!(r.get::<IncomingRecord>(&a).unwrap(), None);
        let rec = IncomingRecord {
            target: "t".into(),
            created: vec!["/x".into()],
        };
        r.put(&a, &rec).unwrap();
        r.put(&b, &rec).unwrap();
        assert_eq!(r.get::<IncomingRecord>(&a).unwrap(), Some(rec));
        let mut vms = r.vms();
        vms.sort();
        assert_eq!(vms, vec![b.clone(), a.clone()]);
        std::fs::write(r.path(&a), b"{not json").unwrap();
        assert!(r.get::<IncomingRecord>(&a).is_err());
        r.remove(&a).unwrap();
        r.remove(&a).unwrap();
        assert_eq!(r.vms(), vec![b]);
    }
}
