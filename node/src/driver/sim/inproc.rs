//! In-process hosts: the VMs of each state directory, kept in a process-wide registry
//! so that they outlive any one `SimDriver` (like QEMU processes outlive an agent
//! object) and die with the process (a host crash).

use super::core::VmCore;
use super::runlog::{RunEvent, RunLog};
use ballast_store::{NodeId, VmId};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The VMs of one in-process host.
#[derive(Debug)]
pub(crate) struct InProcHost {
    pub(crate) host: NodeId,
    pub(crate) log: Arc<RunLog>,
    /// A std mutex: only map operations happen under it, never an await.
    vms: Mutex<BTreeMap<VmId, Arc<VmCore>>>,
    /// Serializes creation of VMs (check-then-insert spans an await).
    pub(crate) create: tokio::sync::Mutex<()>,
}

/// Every in-process host of this process, by canonical state directory.
static HOSTS: OnceLock<Mutex<HashMap<PathBuf, Arc<InProcHost>>>> = OnceLock::new();

/// The in-process host of `state_dir`, created on first use. A first use in this
/// process writes a `boot` record: VMs the log shows running died with an earlier
/// process.
pub(crate) fn host(state_dir: &Path, host: &NodeId) -> std::io::Result<Arc<InProcHost>> {
    std::fs::create_dir_all(state_dir)?;
    let key = state_dir.canonicalize()?;
    let mut hosts = HOSTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(h) = hosts.get(&key) {
        if &h.host != host {
            let msg = format!("state dir {} belongs to host {}", key.display(), h.host);
            return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, msg));
        }
        return Ok(Arc::clone(h));
    }
    let log = Arc::new(RunLog::open(&key, host.clone())?);
    log.append(None, RunEvent::Boot)?;
    let h = Arc::new(InProcHost {
        host: host.clone(),
        log,
        vms: Mutex::new(BTreeMap::new()),
        create: tokio::sync::Mutex::new(()),
    });
    hosts.insert(key, Arc::clone(&h));
    Ok(h)
}

impl InProcHost {
    fn vms(&self) -> std::sync::MutexGuard<'_, BTreeMap<VmId, Arc<VmCore>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM, if this host holds it.
    pub(crate) fn get(&self, vm: &VmId) -> Option<Arc<VmCore>> {
        self.vms().get(vm).cloned()
    }

    /// Every VM this host holds.
    pub(crate) fn all(&self) -> Vec<Arc<VmCore>> {
        self.vms().values().cloned().collect()
    }

    /// Adds a VM (the caller holds `create` and checked it was absent).
    pub(crate) fn insert(&self, core: Arc<VmCore>) {
        self.vms().insert(core.vm().clone(), core);
    }

    /// Forgets `core` if it stopped and is still the one registered.
    pub(crate) fn reap(&self, core: &Arc<VmCore>) {
        if core.is_stopped() {
            let mut vms = self.vms();
            if vms.get(core.vm()).is_some_and(|c| Arc::ptr_eq(c, core)) {
                vms.remove(core.vm());
            }
        }
    }
}
