//! The [`Store`] handle: opening, reads, the snapshot, and the one write path (a sled
//! transaction followed by a flush) that every mutating method goes through.

use crate::codec::{decode, decode_epoch, encode, encode_epoch, transfer_key, transfer_prefix};
use crate::error::StoreError;
use crate::generation::{decode_generation, write_witness, META_GENERATION_KEY};
use crate::open::{open_dir, FORMAT_VERSION};
use crate::types::{NodeId, NodeMeta, ScheduleEntry, Transferred, VmId};
use crate::validate;
use ballast_core::rules::{admit, Holdings};
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The durable state of one agent: its VM schedule, its handoff records and who it is.
///
/// Every mutating method is one sled transaction over the trees it touches, followed by
/// a flush to disk before it returns `Ok`: a caller never sees success for a change that
/// a crash could undo. (`update_factors` is the one documented exception: load factors are
/// soft state.) Refused transitions return a typed error and change nothing.
///
/// The store is synchronous (sled does blocking I/O); share it as `Arc<Store>` and call it
/// from a blocking context. Only one `Store` can have a directory open at a time.
pub struct Store {
    path: PathBuf,
    meta: NodeMeta,
    db: sled::Db,
    schedule: sled::Tree,
    transfers: sled::Tree,
    epochs: sled::Tree,
    history: sled::Tree,
    revocations: sled::Tree,
    meta_tree: sled::Tree,
    /// sled's log file. sled's own flush only `sync_file_range`s what it wrote: neither
    /// the file's new length nor the device's write cache is made durable. `write`
    /// `fdatasync`s this file after every flush, so a flushed write survives a power
    /// loss on any file system.
    log_file: std::fs::File,
    /// Held by every read and by every write until its flush has finished, so no reader
    /// of this handle ever sees a change that is not yet durable, and a snapshot is
    /// consistent. Guards no data; a std `Mutex` because the store is never used across
    /// an `.await`.
    gate: Mutex<()>,
    /// This host's tags, for the placement rules checked by `create` and
    /// `accept_incoming` (docs/design.md §Placement rules).
    tags: Mutex<Vec<String>>,
}

/// Everything a store holds, read at one instant (for the chaos harness and `status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreSnapshot {
    /// Who the store belongs to.
    pub meta: NodeMeta,
    /// The schedule, ordered by VM id.
    pub entries: Vec<ScheduleEntry>,
    /// Handoff records not yet forgotten, ordered by VM id then epoch.
    pub transfers: Vec<Transferred>,
    /// The highest epoch seen per VM (including VMs that left), ordered by VM id.
    pub highest_epochs: Vec<(VmId, u64)>,
}

/// A transaction result whose abort carries a [`StoreError`].
pub(crate) type TxResult<A> = Result<A, ConflictableTransactionError<StoreError>>;

/// The trees inside one transaction, with typed accessors.
pub(crate) struct Tx<'a> {
    schedule: &'a TransactionalTree,
    transfers: &'a TransactionalTree,
    epochs: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    path: &'a Path,
    /// Set by every insert or remove, so a transaction that changed nothing does not
    /// raise the write generation.
    dirty: Cell<bool>,
}

/// Aborts a transaction with `error`.
pub(crate) fn abort<A>(error: StoreError) -> TxResult<A> {
    Err(ConflictableTransactionError::Abort(error))
}

impl Tx<'_> {
    fn corrupt(&self, what: &str, reason: String) -> ConflictableTransactionError<StoreError> {
        ConflictableTransactionError::Abort(StoreError::Corrupt {
            path: self.path.to_path_buf(),
            reason: format!("{what}: {reason}"),
        })
    }

    fn invalid(vm: &VmId, reason: String) -> ConflictableTransactionError<StoreError> {
        ConflictableTransactionError::Abort(StoreError::InvalidInput {
            vm: vm.clone(),
            reason,
        })
    }

    /// The VM's entry, if any.
    pub(crate) fn entry(&self, vm: &VmId) -> TxResult<Option<ScheduleEntry>> {
        match self.schedule.get(vm.as_str().as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|r| self.corrupt(&format!("entry {vm}"), r)),
        }
    }

    /// The VM's entry, or `NotFound`.
    pub(crate) fn existing(&self, vm: &VmId) -> TxResult<ScheduleEntry> {
        match self.entry(vm)? {
            Some(entry) => Ok(entry),
            None => abort(StoreError::NotFound { vm: vm.clone() }),
        }
    }

    /// Writes an entry under its VM id.
    pub(crate) fn put_entry(&self, entry: &ScheduleEntry) -> TxResult<()> {
        let bytes = encode(entry).map_err(|r| Self::invalid(&entry.vm, r))?;
        self.schedule.insert(entry.vm.as_str().as_bytes(), bytes)?;
        self.dirty.set(true);
        Ok(())
    }

    /// Removes the VM's entry.
    pub(crate) fn remove_entry(&self, vm: &VmId) -> TxResult<()> {
        self.schedule.remove(vm.as_str().as_bytes())?;
        self.dirty.set(true);
        Ok(())
    }

    /// The highest epoch this store has seen for the VM (0 if none).
    pub(crate) fn highest_epoch(&self, vm: &VmId) -> TxResult<u64> {
        match self.epochs.get(vm.as_str().as_bytes())? {
            None => Ok(0),
            Some(bytes) => {
                decode_epoch(&bytes).map_err(|r| self.corrupt(&format!("epoch of {vm}"), r))
            }
        }
    }

    /// Raises the VM's highest seen epoch to `epoch` (never lowers it).
    pub(crate) fn see_epoch(&self, vm: &VmId, epoch: u64) -> TxResult<()> {
        if epoch > self.highest_epoch(vm)? {
            self.epochs
                .insert(vm.as_str().as_bytes(), &encode_epoch(epoch)[..])?;
            self.dirty.set(true);
        }
        Ok(())
    }

    /// The transfer record of `vm` under `epoch`, if kept.
    pub(crate) fn transfer(&self, vm: &VmId, epoch: u64) -> TxResult<Option<Transferred>> {
        match self.transfers.get(transfer_key(vm, epoch))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|r| self.corrupt(&format!("transfer {vm}"), r)),
        }
    }

    /// Writes a transfer record.
    pub(crate) fn put_transfer(&self, record: &Transferred) -> TxResult<()> {
        let bytes = encode(record).map_err(|r| Self::invalid(&record.vm, r))?;
        self.transfers
            .insert(transfer_key(&record.vm, record.epoch), bytes)?;
        self.dirty.set(true);
        Ok(())
    }

    /// Removes a transfer record; says whether it was there.
    pub(crate) fn remove_transfer(&self, vm: &VmId, epoch: u64) -> TxResult<bool> {
        let removed = self.transfers.remove(transfer_key(vm, epoch))?.is_some();
        self.dirty.set(self.dirty.get() || removed);
        Ok(removed)
    }

    /// Raises the write generation if this transaction changed anything; returns the new
    /// generation (`None` if nothing changed).
    fn bump_generation(&self) -> TxResult<Option<u64>> {
        if !self.dirty.get() {
            return Ok(None);
        }
        let current = match self.meta.get(META_GENERATION_KEY)? {
            Some(bytes) => decode_generation(&bytes).map_err(|r| self.corrupt("metadata", r))?,
            None => return Err(self.corrupt("metadata", "no generation".to_owned())),
        };
        let next = current.saturating_add(1);
        self.meta
            .insert(META_GENERATION_KEY, &next.to_be_bytes()[..])?;
        Ok(Some(next))
    }
}

/// Whether a write must reach the disk before the call returns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Flush before returning (every state change).
    Flush,
    /// Leave it to the next flush (sled's background flush or the next durable write).
    Deferred,
}

impl Store {
    /// Opens the store in `dir`, creating it (and its metadata) on first use.
    ///
    /// Later opens check the metadata: another cluster gives `WrongCluster`, another node
    /// `WrongNode`, a newer format `NewerFormat`; damaged files or records give `Corrupt`
    /// (every record is decoded and cross-checked here), a directory open elsewhere
    /// `Locked`. sled panics on some damaged files; such a panic is caught and reported as
    /// `Corrupt`. A locked directory is retried for about a second (a handle dropped in
    /// this process releases sled's lock a few milliseconds late) before `Locked`.
    pub fn open(dir: &Path, cluster_id: &str, node_id: &NodeId) -> Result<Store, StoreError> {
        if cluster_id.is_empty() || node_id.as_str().is_empty() {
            return Err(StoreError::InvalidInput {
                vm: VmId::from(""),
                reason: "cluster id and node id must not be empty".to_owned(),
            });
        }
        let mut attempt = 1;
        let opened = loop {
            match open_catching_panics(dir, cluster_id, node_id) {
                Err(StoreError::Locked { .. }) if attempt < LOCKED_ATTEMPTS_MAX => {
                    attempt += 1;
                    std::thread::sleep(LOCKED_RETRY_INTERVAL);
                }
                result => break result?,
            }
        };
        tracing::info!(path = %dir.display(), node = %node_id, format = FORMAT_VERSION, "opened store");
        Ok(Store {
            path: dir.to_path_buf(),
            meta: opened.meta,
            db: opened.db,
            schedule: opened.schedule,
            transfers: opened.transfers,
            epochs: opened.epochs,
            history: opened.history,
            revocations: opened.revocations,
            meta_tree: opened.meta_tree,
            log_file: opened.log_file,
            gate: Mutex::new(()),
            tags: Mutex::new(Vec::new()),
        })
    }

    /// Who this store belongs to.
    pub fn meta(&self) -> &NodeMeta {
        &self.meta
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The session history's tree (`history`).
    pub(crate) fn history_tree(&self) -> &sled::Tree {
        &self.history
    }

    /// The revocations' tree (`revocations`).
    pub(crate) fn revocations_tree(&self) -> &sled::Tree {
        &self.revocations
    }

    /// Makes a write outside the schedule durable: sled's flush, then its log file's
    /// `fdatasync`.
    pub(crate) fn flush_side(&self, op: &'static str) -> Result<(), StoreError> {
        let not_flushed = |source: crate::error::Cause| StoreError::NotFlushed { op, source };
        self.db.flush().map_err(|e| not_flushed(e.into()))?;
        self.log_file.sync_data().map_err(|e| not_flushed(e.into()))
    }

    /// Sets this host's tags, which the placement rules of new and incoming VMs are
    /// checked against.
    pub fn set_host_tags(&self, tags: Vec<String>) {
        *self.tags.lock().unwrap_or_else(|p| p.into_inner()) = tags;
    }

    /// What this host holds for the placement rules: its tags and its VMs with groups.
    pub fn holdings(&self) -> Result<Holdings, StoreError> {
        let _gate = self.gate();
        self.holdings_ungated()
    }

    fn holdings_ungated(&self) -> Result<Holdings, StoreError> {
        let entries = self.list_ungated()?;
        let tags = self.tags.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Holdings::of(
            &tags,
            entries.iter().map(|e| (&e.vm, &*e.spec.rules)),
        ))
    }

    /// Refuses `entry` here if it would break a hard placement rule, unless an operator
    /// forced it onto this node. Called under the gate, before the write that adds it.
    pub(crate) fn check_rules_ungated(&self, entry: &ScheduleEntry) -> Result<(), StoreError> {
        let rules = &entry.spec.rules;
        if rules.is_empty() || rules.forced_on.as_ref() == Some(&self.meta.node_id) {
            return Ok(());
        }
        admit(&entry.vm, rules, &self.holdings_ungated()?).map_err(|rule| StoreError::BreaksRule {
            vm: entry.vm.clone(),
            rule,
        })
    }

    fn gate(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a poisoned lock is as good as a clean one.
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_error(&self, what: &str, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!("{what}: {reason}"),
        }
    }

    /// The VM's entry, if this store holds one.
    pub fn get(&self, vm: &VmId) -> Result<Option<ScheduleEntry>, StoreError> {
        let _gate = self.gate();
        self.get_ungated(vm)
    }

    fn get_ungated(&self, vm: &VmId) -> Result<Option<ScheduleEntry>, StoreError> {
        let bytes = self
            .schedule
            .get(vm.as_str().as_bytes())
            .map_err(|e| self.read_error("schedule", e))?;
        bytes
            .map(|b| decode(&b).map_err(|r| self.read_error(&format!("entry {vm}"), r)))
            .transpose()
    }

    /// All schedule entries, ordered by VM id.
    pub fn list(&self) -> Result<Vec<ScheduleEntry>, StoreError> {
        let _gate = self.gate();
        self.list_ungated()
    }

    fn list_ungated(&self) -> Result<Vec<ScheduleEntry>, StoreError> {
        self.decode_all(&self.schedule, "schedule")
    }

    /// All transfer records not yet forgotten, ordered by VM id then epoch.
    pub fn transfers(&self) -> Result<Vec<Transferred>, StoreError> {
        let _gate = self.gate();
        self.decode_all(&self.transfers, "transfers")
    }

    /// The transfer records of one VM.
    pub(crate) fn transfers_of_ungated(&self, vm: &VmId) -> Result<Vec<Transferred>, StoreError> {
        let mut out = Vec::new();
        for item in self.transfers.scan_prefix(transfer_prefix(vm)) {
            let (_, value) = item.map_err(|e| self.read_error("transfers", e))?;
            out.push(decode(&value).map_err(|r| self.read_error(&format!("transfer of {vm}"), r))?);
        }
        Ok(out)
    }

    fn decode_all<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::with_capacity(tree.len());
        for item in tree.iter() {
            let (key, value) = item.map_err(|e| self.read_error(name, e))?;
            let record = decode(&value).map_err(|r| {
                self.read_error(&format!("{name} {}", String::from_utf8_lossy(&key)), r)
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// The highest epoch this store has ever seen for the VM (0 if none); it survives the
    /// VM leaving.
    pub fn highest_epoch(&self, vm: &VmId) -> Result<u64, StoreError> {
        let _gate = self.gate();
        self.highest_epoch_ungated(vm)
    }

    fn highest_epoch_ungated(&self, vm: &VmId) -> Result<u64, StoreError> {
        let bytes = self
            .epochs
            .get(vm.as_str().as_bytes())
            .map_err(|e| self.read_error("epochs", e))?;
        bytes.map_or(Ok(0), |b| {
            decode_epoch(&b).map_err(|r| self.read_error(&format!("epoch of {vm}"), r))
        })
    }

    /// The epoch to use for the VM's next move from here: one above the highest seen.
    pub fn next_epoch(&self, vm: &VmId) -> Result<u64, StoreError> {
        Ok(self.highest_epoch(vm)?.saturating_add(1))
    }

    /// Everything the store holds, read consistently (no write runs meanwhile).
    pub fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        let _gate = self.gate();
        let mut highest_epochs = Vec::with_capacity(self.epochs.len());
        for item in self.epochs.iter() {
            let (key, value) = item.map_err(|e| self.read_error("epochs", e))?;
            let vm = VmId::from(String::from_utf8_lossy(&key).into_owned());
            highest_epochs.push((
                vm,
                decode_epoch(&value).map_err(|r| self.read_error("epochs", r))?,
            ));
        }
        Ok(StoreSnapshot {
            meta: self.meta.clone(),
            entries: self.list_ungated()?,
            transfers: self.decode_all(&self.transfers, "transfers")?,
            highest_epochs,
        })
    }

    /// Runs `body` as one transaction over the schedule, transfers, epochs and meta trees
    /// (raising the write generation if anything changed), then flushes (unless
    /// `durability` says otherwise) and records the generation before returning. This is the only
    /// write path of the store. `pre` runs first under the same gate, for reads a sled
    /// transaction cannot do (prefix scans); no other write can run in between.
    pub(crate) fn write<P, A>(
        &self,
        op: &'static str,
        durability: Durability,
        pre: impl FnOnce(&Store) -> Result<P, StoreError>,
        body: impl Fn(&Tx<'_>, &P) -> TxResult<A>,
    ) -> Result<A, StoreError> {
        let _gate = self.gate();
        let prepared = pre(self)?;
        let trees = (
            &self.schedule,
            &self.transfers,
            &self.epochs,
            &self.meta_tree,
        );
        let result = trees.transaction(|(s, t, e, m)| {
            let tx = Tx {
                schedule: s,
                transfers: t,
                epochs: e,
                meta: m,
                path: &self.path,
                dirty: Cell::new(false),
            };
            let value = body(&tx, &prepared)?;
            let generation = match durability {
                Durability::Flush => tx.bump_generation()?,
                Durability::Deferred => None,
            };
            Ok((value, generation))
        });
        let (value, generation) = match result {
            Ok(done) => done,
            Err(TransactionError::Abort(error)) => return Err(error),
            Err(TransactionError::Storage(e)) => {
                return Err(StoreError::Storage {
                    op,
                    source: e.into(),
                });
            }
        };
        if durability == Durability::Flush {
            self.db.flush().map_err(|e| StoreError::NotFlushed {
                op,
                source: e.into(),
            })?;
            self.log_file
                .sync_data()
                .map_err(|e| StoreError::NotFlushed {
                    op,
                    source: e.into(),
                })?;
        }
        if let Some(generation) = generation {
            if let Err(e) = write_witness(&self.path, generation) {
                tracing::warn!(op, generation, error = %e, "could not record the write generation");
            }
        }
        Ok(value)
    }

    /// Checks the VM id and returns nothing: the usual `pre` of a write.
    pub(crate) fn check_vm(vm: &VmId) -> impl FnOnce(&Store) -> Result<(), StoreError> + '_ {
        move |_| validate::vm_id(vm)
    }
}

/// How often `open` tries a locked directory before it reports `Locked`. A `Store`
/// dropped in this process can keep sled's file (and its lock) open for a few
/// milliseconds, until sled's background I/O threads finish their last buffer writes.
const LOCKED_ATTEMPTS_MAX: u32 = 50;
/// The pause between two attempts on a locked directory (50 × 20 ms: about one second).
const LOCKED_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Opens the directory; a panic inside sled is reported as `Corrupt`.
fn open_catching_panics(
    dir: &Path,
    cluster_id: &str,
    node_id: &NodeId,
) -> Result<crate::open::Opened, StoreError> {
    panic::catch_unwind(AssertUnwindSafe(|| open_dir(dir, cluster_id, node_id))).unwrap_or_else(
        |payload| {
            Err(StoreError::Corrupt {
                path: dir.to_path_buf(),
                reason: format!(
                    "sled panicked while reading the store: {}",
                    panic_message(&*payload)
                ),
            })
        },
    )
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
