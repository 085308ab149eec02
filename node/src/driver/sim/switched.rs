//! The sim driver's mode that ends the source copy at the switchover (`source_copy =
//! "ended"`), as libvirt's peer-to-peer migration does: once a migration completes the
//! source copy is stopped at once, and a durable marker (`<state_dir>/switched/<vm>`)
//! remembers that it left by a completed migration, so that `migration_status` still
//! answers `Completed` and `cancel_outgoing` answers `SwitchedOver` — also after the agent
//! (or, in-process, the whole host) restarted. `finish_outgoing` removes the marker.

use crate::driver::vm_file::file_name;
use crate::driver::DriverError;
use ballast_store::VmId;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The markers of one host.
#[derive(Debug)]
pub(crate) struct SwitchedMarkers {
    dir: PathBuf,
}

impl SwitchedMarkers {
    /// The markers under `state_dir` (the directory is made on first write).
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("switched"),
        }
    }

    fn path(&self, vm: &VmId) -> PathBuf {
        self.dir.join(file_name(vm, "switched"))
    }

    /// Records, durably, that `vm` left this host by a completed migration.
    pub(crate) fn record(&self, vm: &VmId) -> Result<(), DriverError> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(vm);
        let mut f = std::fs::File::create(&path)?;
        f.write_all(vm.as_str().as_bytes())?;
        f.sync_all()?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Whether `vm` left this host by a completed migration not yet finished.
    pub(crate) fn contains(&self, vm: &VmId) -> bool {
        self.path(vm).exists()
    }

    /// Forgets `vm`'s marker (absent is fine).
    pub(crate) fn remove(&self, vm: &VmId) -> Result<(), DriverError> {
        match std::fs::remove_file(self.path(vm)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_survive_a_new_instance_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmId::from("vm/1 odd");
        let m = SwitchedMarkers::new(dir.path());
        assert!(!m.contains(&vm));
        m.record(&vm).unwrap();
        assert!(SwitchedMarkers::new(dir.path()).contains(&vm));
        m.remove(&vm).unwrap();
        assert!(!m.contains(&vm));
        m.remove(&vm).unwrap();
    }
}
