//! Reading a store written by an older build: format 1 (ballast 0.1) had no placement
//! rules in a VM's spec. Opening such a store rewrites every schedule entry in the
//! current layout (empty rules) and the format version, in one transaction, flushed
//! before the store is used.

use crate::codec::{decode, encode};
use crate::open::{corrupt, Opened, FORMAT_VERSION, META_NODE_KEY, META_VERSION_KEY};
use crate::types::{LoadFactors, ScheduleEntry, VmId, VmSpec, VmState};
use crate::StoreError;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::collections::BTreeMap;
use std::path::Path;

/// A VM spec as format 1 wrote it.
#[derive(Serialize, Deserialize)]
pub(crate) struct VmSpecV1 {
    pub(crate) vcpus: u32,
    pub(crate) memory_mib: u64,
    pub(crate) target: Option<LoadFactors>,
    pub(crate) disks: Vec<String>,
    pub(crate) extra_args: Vec<String>,
    pub(crate) driver_opts: BTreeMap<String, String>,
}

/// A schedule entry as format 1 wrote it.
#[derive(Serialize, Deserialize)]
pub(crate) struct ScheduleEntryV1 {
    pub(crate) vm: VmId,
    pub(crate) spec: VmSpecV1,
    pub(crate) factors: LoadFactors,
    pub(crate) state: VmState,
    pub(crate) epoch: u64,
    pub(crate) pinned: bool,
    pub(crate) last_moved_unix_ms: Option<u64>,
}

impl From<ScheduleEntryV1> for ScheduleEntry {
    fn from(e: ScheduleEntryV1) -> Self {
        Self {
            vm: e.vm,
            spec: VmSpec {
                vcpus: e.spec.vcpus,
                memory_mib: e.spec.memory_mib,
                target: e.spec.target,
                disks: e.spec.disks,
                extra_args: e.spec.extra_args,
                driver_opts: e.spec.driver_opts,
                rules: Default::default(),
            },
            factors: e.factors,
            state: e.state,
            epoch: e.epoch,
            pinned: e.pinned,
            last_moved_unix_ms: e.last_moved_unix_ms,
        }
    }
}

/// Brings a store of an older format to [`FORMAT_VERSION`]; a no-op for a current one.
pub(crate) fn upgrade(dir: &Path, opened: &mut Opened) -> Result<(), StoreError> {
    let from = opened.meta.format_version;
    if from == FORMAT_VERSION {
        return Ok(());
    }
    let mut rewritten = Vec::new();
    for item in opened.schedule.iter() {
        let (key, bytes) = item.map_err(|e| corrupt(dir, format!("reading the schedule: {e}")))?;
        let old: ScheduleEntryV1 = decode(&bytes)
            .map_err(|r| corrupt(dir, format!("format {from} schedule entry {key:?}: {r}")))?;
        let entry = ScheduleEntry::from(old);
        let new = encode(&entry).map_err(|r| corrupt(dir, r))?;
        rewritten.push((key, new));
    }
    let mut meta = opened.meta.clone();
    meta.format_version = FORMAT_VERSION;
    let meta_bytes = encode(&meta).map_err(|r| corrupt(dir, r))?;
    let result: Result<(), TransactionError<()>> = (&opened.schedule, &opened.meta_tree)
        .transaction(|(s, m)| {
            for (key, value) in &rewritten {
                s.insert(key, value.as_slice())?;
            }
            m.insert(META_VERSION_KEY, &FORMAT_VERSION.to_be_bytes()[..])?;
            m.insert(META_NODE_KEY, meta_bytes.as_slice())?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
    result.map_err(|e| corrupt(dir, format!("upgrading from format {from}: {e:?}")))?;
    opened.db.flush().map_err(|e| StoreError::NotFlushed {
        op: "upgrade",
        source: e.into(),
    })?;
    tracing::info!(path = %dir.display(), from, to = FORMAT_VERSION, entries = rewritten.len(), "upgraded the store's format");
    opened.meta = meta;
    Ok(())
}
