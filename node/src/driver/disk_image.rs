//! Disk image files on a destination host, shared by the drivers that copy disks during a
//! live migration (`libvirt`, `qemu` with local storage): the free-space check before a
//! copy starts and the creation of an empty image of the source's format and virtual size
//! (`qemu-img create`).

use crate::driver::DriverError;
use ballast_store::VmId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Free bytes kept beyond what the copies need.
pub(crate) const SPACE_MARGIN: u64 = 64 * 1024 * 1024;
/// Bound on one `qemu-img create`.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(60);

/// Free bytes (for unprivileged users) on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Result<u64, DriverError> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The bytes a copy of an image may need on the destination: a raw image its virtual
/// size, a sparse format what it occupied on the source (it grows as blocks arrive).
pub(crate) fn space_needed(format: &str, capacity: u64, allocation: u64) -> u64 {
    if format == "raw" {
        capacity.max(allocation)
    } else {
        allocation.max(capacity.min(allocation.saturating_mul(2)))
    }
}

/// Refuses (`NoRoom`, naming the directory and both figures) when a directory of `need`
/// has less free space than its copies need plus [`SPACE_MARGIN`].
pub(crate) fn check_space(vm: &VmId, need: &BTreeMap<PathBuf, u64>) -> Result<(), DriverError> {
    for (dir, &bytes) in need {
        let free = free_bytes(dir)?;
        if free < bytes.saturating_add(SPACE_MARGIN) {
            return Err(DriverError::NoRoom(format!(
                "VM {vm}: its disks need {bytes} bytes in {} but {free} are free",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// `qemu-img create -f FORMAT PATH CAPACITY` (replacing a stale file at `path`).
pub(crate) async fn create(
    qemu_img: &Path,
    path: &Path,
    format: &str,
    capacity: u64,
) -> Result<(), DriverError> {
    let mut cmd = tokio::process::Command::new(qemu_img);
    cmd.arg("create")
        .arg("-q")
        .args(["-f", format])
        .arg(path)
        .arg(capacity.to_string())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(QEMU_IMG_TIMEOUT, cmd.output())
        .await
        .map_err(|_| DriverError::Timeout(format!("qemu-img create {}", path.display())))??;
    if !out.status.success() {
        return Err(DriverError::Hypervisor {
            op: "qemu-img create",
            reason: format!(
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_needs_its_size_sparse_formats_what_they_hold() {
        assert_eq!(space_needed("raw", 100, 10), 100);
        assert_eq!(space_needed("qcow2", 100, 10), 20);
        assert_eq!(space_needed("qcow2", 100, 80), 100);
    }

    #[test]
    fn too_little_space_is_no_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vm = VmId::from("vm1");
        let mut need = BTreeMap::new();
        need.insert(dir.path().to_owned(), 1);
        assert!(check_space(&vm, &need).is_ok());
        need.insert(dir.path().to_owned(), u64::MAX / 2);
        assert!(matches!(
            check_space(&vm, &need),
            Err(DriverError::NoRoom(_))
        ));
    }
}
