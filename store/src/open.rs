//! Opening a store directory: first-time creation, sled's lock, the metadata check and a
//! full decode of every record, so that damage is found at start-up rather than later.
//!
//! Directory layout: `<dir>/sled/` is the sled database. A new store is built in
//! `<dir>/sled.init/` (metadata written and flushed) and then renamed to `<dir>/sled/`,
//! so a crash during the first start leaves either nothing or a complete store: a
//! `sled/` directory without metadata is always damage, never an interrupted creation.

use crate::codec::{decode, decode_epoch, decode_version, encode, transfer_key};
use crate::error::StoreError;
use crate::generation::{decode_generation, read_witness, META_GENERATION_KEY};
use crate::types::{NodeId, NodeMeta, ScheduleEntry, Transferred, VmId, VmState};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// sled's log file inside its directory.
const SLED_LOG_FILE: &str = "db";
/// The on-disk format this build writes and the newest it reads.
/// Format 1: ballast 0.1. Format 2: a VM spec carries placement rules (`migrate`).
pub const FORMAT_VERSION: u32 = 2;

/// The sled database inside the store directory.
const SLED_DIR: &str = "sled";
/// Where a new store is built before it is renamed into place.
const SLED_INIT_DIR: &str = "sled.init";
/// sled's cache limit; the store holds a few hundred small records.
const CACHE_BYTES_MAX: u64 = 32 * 1024 * 1024;
/// How often sled's background thread flushes writes that were not flushed by their call
/// (only load factors, see `Store::update_factors`).
const BACKGROUND_FLUSH_MS: u64 = 500;

/// Meta tree key of the format version (4 bytes, big endian), read before anything else.
pub(crate) const META_VERSION_KEY: &[u8] = b"format_version";
/// Meta tree key of the [`NodeMeta`] record.
pub(crate) const META_NODE_KEY: &[u8] = b"node";
/// Tree of metadata: format version, node record, write generation.
pub(crate) const TREE_META: &str = "meta";
/// Tree of schedule entries, keyed by VM id.
pub(crate) const TREE_SCHEDULE: &str = "schedule";
/// Tree of transfer records, keyed by VM id, 0xFF, epoch.
pub(crate) const TREE_TRANSFERS: &str = "transfers";
/// Tree of the highest epoch seen per VM, keyed by VM id.
pub(crate) const TREE_EPOCHS: &str = "epochs";
/// Tree of session history records, keyed by time (`history`); not part of any
/// transaction, unknown to (and ignored by) stores of format 1.
pub(crate) const TREE_HISTORY: &str = "history";
/// Tree of revoked node names' revocations (opaque bytes), keyed by node name; not part
/// of any transaction, ignored by stores of format 1.
pub(crate) const TREE_REVOCATIONS: &str = "revocations";

/// The open database and its trees.
pub(crate) struct Opened {
    pub(crate) db: sled::Db,
    pub(crate) schedule: sled::Tree,
    pub(crate) transfers: sled::Tree,
    pub(crate) epochs: sled::Tree,
    pub(crate) history: sled::Tree,
    pub(crate) revocations: sled::Tree,
    pub(crate) meta_tree: sled::Tree,
    pub(crate) meta: NodeMeta,
    /// sled's log file, opened to `fdatasync` it after each flush (see `Store::write`).
    pub(crate) log_file: fs::File,
}

/// Opens (creating on first use) the store in `dir` and checks that it is this node's.
pub(crate) fn open_dir(
    dir: &Path,
    cluster_id: &str,
    node_id: &NodeId,
) -> Result<Opened, StoreError> {
    let io = |e: std::io::Error| StoreError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    };
    fs::create_dir_all(dir).map_err(io)?;
    let live = dir.join(SLED_DIR);
    if !fs::exists(&live).map_err(io)? {
        let meta = NodeMeta {
            cluster_id: cluster_id.to_owned(),
            node_id: node_id.clone(),
            format_version: FORMAT_VERSION,
        };
        initialize(dir, &live, &meta)?;
    }
    let db = open_sled(dir, &live)?;
    let tree = |name: &str| {
        db.open_tree(name)
            .map_err(|e| corrupt(dir, format!("tree {name}: {e}")))
    };
    let meta_tree = tree(TREE_META)?;
    let log_path = live.join(SLED_LOG_FILE);
    let log_file = fs::File::open(&log_path).map_err(|e| StoreError::Io {
        path: log_path,
        source: e.into(),
    })?;
    let mut opened = Opened {
        log_file,
        schedule: tree(TREE_SCHEDULE)?,
        transfers: tree(TREE_TRANSFERS)?,
        epochs: tree(TREE_EPOCHS)?,
        history: tree(TREE_HISTORY)?,
        revocations: tree(TREE_REVOCATIONS)?,
        meta: read_meta(dir, &meta_tree)?,
        meta_tree,
        db,
    };
    check_owner(dir, &opened.meta, cluster_id, node_id)?;
    check_generation(dir, &opened.meta_tree)?;
    crate::migrate::upgrade(dir, &mut opened)?;
    check_records(dir, &opened)?;
    Ok(opened)
}

/// Builds a new store next to its final place and renames it in.
fn initialize(dir: &Path, live: &Path, meta: &NodeMeta) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    };
    let staging = dir.join(SLED_INIT_DIR);
    if fs::exists(&staging).map_err(io)? {
        tracing::warn!(path = %staging.display(), "removing a store left half-made by an interrupted first start");
        fs::remove_dir_all(&staging).map_err(io)?;
    }
    let db = open_sled(dir, &staging)?;
    let meta_tree = db
        .open_tree(TREE_META)
        .map_err(|e| corrupt(dir, e.to_string()))?;
    let record = encode(meta).map_err(|reason| corrupt(dir, reason))?;
    let written: Result<(), TransactionError<()>> = meta_tree.transaction(|tx| {
        tx.insert(META_VERSION_KEY, &FORMAT_VERSION.to_be_bytes()[..])?;
        tx.insert(META_NODE_KEY, record.as_slice())?;
        tx.insert(META_GENERATION_KEY, &0u64.to_be_bytes()[..])?;
        Ok::<(), ConflictableTransactionError<()>>(())
    });
    written.map_err(|e| StoreError::Io {
        path: dir.to_path_buf(),
        source: format!("writing the metadata: {e:?}").into(),
    })?;
    db.flush().map_err(|e| StoreError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    drop(meta_tree);
    drop(db);
    fs::rename(&staging, live).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    tracing::info!(path = %dir.display(), cluster = %meta.cluster_id, node = %meta.node_id, "created store");
    Ok(())
}

/// Opens sled at `path`, mapping its errors to the store's.
fn open_sled(dir: &Path, path: &Path) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES_MAX)
        .flush_every_ms(Some(BACKGROUND_FLUSH_MS))
        .open()
        .map_err(|e| map_open_error(dir, e))
}

fn map_open_error(dir: &Path, error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: dir.to_path_buf(),
            }
        }
        sled::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::QuotaExceeded
            ) =>
        {
            StoreError::Io {
                path: dir.to_path_buf(),
                source: e.into(),
            }
        }
        other => corrupt(dir, format!("sled cannot open the database: {other}")),
    }
}

pub(crate) fn corrupt(dir: &Path, reason: String) -> StoreError {
    StoreError::Corrupt {
        path: dir.to_path_buf(),
        reason,
    }
}

/// Reads the format version first (so a newer layout is reported as such, not as
/// damage), then the node record.
fn read_meta(dir: &Path, meta_tree: &sled::Tree) -> Result<NodeMeta, StoreError> {
    let read = |key: &[u8]| {
        meta_tree
            .get(key)
            .map_err(|e| corrupt(dir, format!("reading metadata: {e}")))
    };
    let version = read(META_VERSION_KEY)?
        .ok_or_else(|| corrupt(dir, "no format version in the metadata".to_owned()))?;
    let version = decode_version(&version).map_err(|r| corrupt(dir, r))?;
    if version > FORMAT_VERSION {
        return Err(StoreError::NewerFormat {
            path: dir.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let node = read(META_NODE_KEY)?
        .ok_or_else(|| corrupt(dir, "no node record in the metadata".to_owned()))?;
    let meta: NodeMeta = decode(&node).map_err(|r| corrupt(dir, format!("node record: {r}")))?;
    if meta.format_version != version {
        return Err(corrupt(
            dir,
            format!(
                "node record says format {} but the store says {version}",
                meta.format_version
            ),
        ));
    }
    Ok(meta)
}

/// Refuses a store whose sled state is older than the last flush it confirmed.
fn check_generation(dir: &Path, meta_tree: &sled::Tree) -> Result<(), StoreError> {
    let stored = meta_tree
        .get(META_GENERATION_KEY)
        .map_err(|e| corrupt(dir, format!("reading metadata: {e}")))?
        .ok_or_else(|| corrupt(dir, "no generation in the metadata".to_owned()))?;
    let generation = decode_generation(&stored).map_err(|r| corrupt(dir, r))?;
    let witnessed = read_witness(dir).map_err(|r| corrupt(dir, r))?;
    if generation < witnessed {
        return Err(corrupt(
            dir,
            format!(
                "the database is at write generation {generation} but generation {witnessed} \
                 was flushed before: sled lost flushed writes (damaged or truncated files)"
            ),
        ));
    }
    Ok(())
}

fn check_owner(
    dir: &Path,
    meta: &NodeMeta,
    cluster_id: &str,
    node_id: &NodeId,
) -> Result<(), StoreError> {
    let path = PathBuf::from(dir);
    if meta.cluster_id != cluster_id {
        return Err(StoreError::WrongCluster {
            path,
            expected: cluster_id.to_owned(),
            found: meta.cluster_id.clone(),
        });
    }
    if &meta.node_id != node_id {
        return Err(StoreError::WrongNode {
            path,
            expected: node_id.clone(),
            found: meta.node_id.clone(),
        });
    }
    Ok(())
}

/// Decodes every record and checks the invariants between trees: keys match records and
/// no epoch in use exceeds the VM's highest seen epoch.
fn check_records(dir: &Path, opened: &Opened) -> Result<(), StoreError> {
    let bad = |tree: &str, key: &[u8], reason: String| {
        corrupt(
            dir,
            format!(
                "tree {tree}, key {}: {reason}",
                String::from_utf8_lossy(key)
            ),
        )
    };
    let mut highest = BTreeMap::new();
    for item in opened.epochs.iter() {
        let (key, value) = item.map_err(|e| corrupt(dir, format!("reading epochs: {e}")))?;
        let vm = vm_from_key(&key).map_err(|r| bad(TREE_EPOCHS, &key, r))?;
        highest.insert(
            vm,
            decode_epoch(&value).map_err(|r| bad(TREE_EPOCHS, &key, r))?,
        );
    }
    let seen = |vm: &VmId| highest.get(vm).copied().unwrap_or(0);
    for item in opened.schedule.iter() {
        let (key, value) = item.map_err(|e| corrupt(dir, format!("reading schedule: {e}")))?;
        let entry: ScheduleEntry = decode(&value).map_err(|r| bad(TREE_SCHEDULE, &key, r))?;
        if entry.vm.as_str().as_bytes() != &key[..] {
            return Err(bad(
                TREE_SCHEDULE,
                &key,
                format!("holds the entry of {}", entry.vm),
            ));
        }
        let state_epoch = match entry.state {
            VmState::Running => entry.epoch,
            VmState::MigratingOut { epoch, .. } | VmState::Incoming { epoch, .. } => epoch,
        };
        if entry.epoch.max(state_epoch) > seen(&entry.vm) {
            return Err(bad(
                TREE_SCHEDULE,
                &key,
                "epoch above the highest recorded".to_owned(),
            ));
        }
    }
    for item in opened.transfers.iter() {
        let (key, value) = item.map_err(|e| corrupt(dir, format!("reading transfers: {e}")))?;
        let record: Transferred = decode(&value).map_err(|r| bad(TREE_TRANSFERS, &key, r))?;
        if transfer_key(&record.vm, record.epoch) != key[..] {
            return Err(bad(
                TREE_TRANSFERS,
                &key,
                "key does not match the record".to_owned(),
            ));
        }
        if record.epoch > seen(&record.vm) {
            return Err(bad(
                TREE_TRANSFERS,
                &key,
                "epoch above the highest recorded".to_owned(),
            ));
        }
    }
    Ok(())
}

fn vm_from_key(key: &[u8]) -> Result<VmId, String> {
    std::str::from_utf8(key)
        .map(VmId::from)
        .map_err(|_| "key is not a UTF-8 VM id".to_owned())
}
